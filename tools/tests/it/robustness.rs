//! What a user meets with real data: answer patterns that cannot be compiled or that
//! escape accented letters, malformed question lines (`eval --skip-bad-lines`), rejected
//! input lines (`ingest --strict`); and `--version`.

use predicates::prelude::*;

use crate::cli::{Fixture, fails, json_lines, realm, succeeds};

/// Runs `eval DB --qa QA -k 6 ARGS...` (six passages: every question sees them all) and
/// returns (stdout, stderr).
fn eval(f: &Fixture, qa: &str, args: &[&str]) -> (String, String) {
    let out = f
        .cmd()
        .arg("eval")
        .arg(f.db())
        .arg("--qa")
        .arg(f.path(qa))
        .args(["-k", "6"])
        .args(args)
        .assert()
        .success()
        .get_output()
        .clone();
    (
        String::from_utf8(out.stdout).expect("UTF-8 output"),
        String::from_utf8(out.stderr).expect("UTF-8 output"),
    )
}

/// The fraction of questions with a hit in the top 6 of a system's JSON line.
fn at6(system: &serde_json::Value) -> f64 {
    let point = &system["accuracy"][0];
    assert_eq!(point[0], 6, "{system}");
    point[1].as_f64().expect("a fraction")
}

#[test]
fn eval_continues_past_an_uncompilable_pattern_and_counts_it() {
    let f = Fixture::new();
    f.write(
        "qa.jsonl",
        r#"{"question": "what is the capital of norway", "answers": ["Oslo"]}
{"question": "which river flows through paris", "answer_patterns": ["Seine(", "(?<=the )Seine"], "answers": ["Seine"]}
{"question": "what is the highest mountain", "answer_patterns": ["Mount\\s+Everest"]}
"#,
    );
    let (stdout, stderr) = eval(&f, "qa.jsonl", &["--json", "--compare", "bm25"]);
    let systems = json_lines(&stdout);
    assert_eq!(systems.len(), 2, "{stdout}");
    for s in &systems {
        assert_eq!(s["questions"], 3, "{s}");
        assert_eq!(s["bad_patterns"], 2, "{s}");
        assert_eq!(s["skipped_lines"], 0, "{s}");
        // The Seine question's patterns match nothing (its plain answer is not used); the
        // other two are found.
        assert!((at6(s) - 2.0 / 3.0).abs() < 1e-9, "{s}");
    }
    // One warning per pattern, naming the line, however many systems are evaluated.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    for (w, pattern) in warnings.iter().zip(["Seine(", "(?<=the )Seine"]) {
        assert!(w.contains("line 2 of") && w.contains(pattern), "{w}");
        assert!(w.ends_with("it matches nothing."), "{w}");
    }
    let (table, _) = eval(&f, "qa.jsonl", &[]);
    assert!(
        table.contains("2 answer patterns that cannot be compiled (matching nothing)"),
        "{table}"
    );
}

#[test]
fn eval_matches_patterns_with_escaped_accented_letters() {
    let f = Fixture::new();
    f.write(
        "more.jsonl",
        r#"{"id": "snezka", "title": "Sněžka", "text": "Sněžka is the highest mountain of the Czech Republic."}
"#,
    );
    f.run(&[
        "ingest",
        f.db().to_str().expect("UTF-8 path"),
        f.path("more.jsonl").to_str().expect("UTF-8 path"),
    ]);
    // CuratedTREC's pattern as written, and the same pattern NFD-normalized.
    f.write(
        "qa.jsonl",
        "{\"question\": \"highest czech mountain\", \"answer_patterns\": [\"Sn\\\\ě\\\\žka\"]}\n\
         {\"question\": \"highest czech mountain\", \"answer_patterns\": [\"Sn\\\\e\u{30c}\\\\z\u{30c}ka\"]}\n",
    );
    let (stdout, stderr) = eval(&f, "qa.jsonl", &["--json", "-k", "7"]);
    assert!(!stderr.contains("warning"), "{stderr}");
    let system = &json_lines(&stdout)[0];
    assert_eq!(system["questions"], 2, "{system}");
    assert_eq!(system["bad_patterns"], 0, "{system}");
    let at7 = &system["accuracy"][1];
    assert_eq!(at7[0], 7, "{system}");
    assert!(
        (at7[1].as_f64().expect("a fraction") - 1.0).abs() < 1e-9,
        "{system}"
    );
}

#[test]
fn eval_skips_malformed_lines_only_when_asked() {
    let f = Fixture::new();
    f.write(
        "qa.jsonl",
        r#"{"question": "what is the capital of norway", "answers": ["Oslo"]}
{"question": "which river flows through paris", "answers": ["Seine"]
{"question": "what is the highest mountain", "answers": ["Everest"]}
{"question": "no answers"}
"#,
    );
    // Without the flag: exit 1, naming the first bad line.
    let line = fails(
        f.cmd()
            .arg("eval")
            .arg(f.db())
            .arg("--qa")
            .arg(f.path("qa.jsonl")),
        1,
    );
    assert!(line.contains("line 2 "), "{line}");
    // With it: the good lines are evaluated, the bad ones named and counted.
    let (stdout, stderr) = eval(&f, "qa.jsonl", &["--json", "--skip-bad-lines"]);
    let system = &json_lines(&stdout)[0];
    assert_eq!(system["questions"], 2, "{system}");
    assert_eq!(system["skipped_lines"], 2, "{system}");
    assert!((at6(system) - 1.0).abs() < 1e-9, "{system}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].contains("line 2 of the question file"),
        "{stderr}"
    );
    assert!(
        warnings[1].contains("line 4 of the question file"),
        "{stderr}"
    );
    let (table, _) = eval(&f, "qa.jsonl", &["--skip-bad-lines"]);
    assert!(table.contains("2 bad question lines skipped"), "{table}");
}

#[test]
fn ingest_strict_exits_1_when_a_line_is_rejected() {
    let f = Fixture::empty();
    f.cmd().arg("init").arg(f.db()).assert().success();
    let file = f.write(
        "mixed.jsonl",
        "{\"id\": \"a\", \"text\": \"Oslo is the capital of Norway.\"}\n{\"id\": \"b\"}\n",
    );
    // --strict: the good line is still ingested and the summary printed, then exit 1.
    let out = f
        .cmd()
        .arg("ingest")
        .arg(f.db())
        .arg(&file)
        .arg("--strict")
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "1 inserted, 0 duplicate, 1 rejected",
        ))
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: 1 input line was rejected (--strict)"),
        "{stderr}"
    );
    // The default: the same report, exit 0.
    let stdout = succeeds(f.cmd().arg("ingest").arg(f.db()).arg(&file));
    assert!(
        stdout.contains("0 inserted, 1 duplicate, 1 rejected"),
        "{stdout}"
    );
    // --strict with nothing rejected: exit 0.
    let good = f.write(
        "good.jsonl",
        "{\"id\": \"c\", \"text\": \"Paris is in France.\"}\n",
    );
    succeeds(f.cmd().arg("ingest").arg(f.db()).arg(&good).arg("--strict"));
}

#[test]
fn version_names_the_on_disk_format() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    for flag in ["--version", "-V"] {
        let stdout = succeeds(realm(tmp.path()).arg(flag));
        assert_eq!(
            stdout.trim(),
            format!(
                "realm-db {} (on-disk format {})",
                env!("CARGO_PKG_VERSION"),
                realm_db::storage::FORMAT_VERSION
            ),
        );
    }
}
