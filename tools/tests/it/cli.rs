//! End-to-end tests of the `realm-db` binary, with the default MiniLM encoder
//! (`REALM_DB_MODEL`) and corpora of a few passages.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};

use assert_cmd::Command;
use predicates::prelude::*;
use realm_db::retriever::eval::normalize_answer;
use tempfile::TempDir;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_realm-db");

pub(crate) const CORPUS: &str = r#"{"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France, on the river Seine."}
{"id": "oslo", "title": "Oslo", "text": "Oslo is the capital and most populous city of Norway."}
{"id": "everest", "title": "Mount Everest", "text": "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."}
{"id": 42, "title": "Photosynthesis", "text": "Photosynthesis is the process by which green plants turn sunlight, water and carbon dioxide into sugar.", "meta": {"topic": "biology"}}
{"id": "dna", "title": "DNA", "text": "Deoxyribonucleic acid (DNA) is the molecule that carries the genetic instructions of all known organisms."}
{"id": "pacific", "title": "Pacific Ocean", "text": "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions."}
"#;

/// A command for the binary, with the shell history kept out of the user's home.
pub(crate) fn realm(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("REALM_DB_HISTORY", home.join("history"))
        .env("NO_COLOR", "1");
    cmd
}

/// A temporary directory holding `db` (initialized, the corpus ingested) and `corpus.jsonl`.
pub(crate) struct Fixture {
    tmp: TempDir,
}

impl Fixture {
    pub(crate) fn empty() -> Fixture {
        Fixture {
            tmp: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub(crate) fn new() -> Fixture {
        let f = Fixture::empty();
        f.write("corpus.jsonl", CORPUS);
        f.cmd().args(["init"]).arg(f.db()).assert().success();
        f.cmd()
            .arg("ingest")
            .arg(f.db())
            .arg(f.path("corpus.jsonl"))
            .assert()
            .success()
            .stdout(predicate::str::contains(
                "6 inserted, 0 duplicate, 0 rejected",
            ));
        f
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.path("db")
    }

    pub(crate) fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).expect("writing a test input");
        path
    }

    pub(crate) fn cmd(&self) -> Command {
        realm(self.tmp.path())
    }

    /// Runs `realm-db ARGS... ` successfully and returns stdout.
    pub(crate) fn run(&self, args: &[&str]) -> String {
        succeeds(self.cmd().args(args))
    }

    /// Runs `realm-db ARGS...`, expects a user error (exit status 1) and returns its line.
    pub(crate) fn user_error<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        fails(self.cmd().args(args), 1)
    }

    /// `search DB QUERY --json ...` parsed.
    pub(crate) fn search_json(&self, query: &str, extra: &[&str]) -> Vec<serde_json::Value> {
        let db = self.db();
        let mut args = vec!["search", db.to_str().expect("UTF-8 path"), query, "--json"];
        args.extend_from_slice(extra);
        json_lines(&self.run(&args))
    }
}

pub(crate) fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Runs `cmd` successfully and returns its stdout.
pub(crate) fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().clone();
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `cmd`, expects exit status `code` and one error line on stderr, and returns the line.
pub(crate) fn fails(cmd: &mut Command, code: i32) -> String {
    let out = cmd.assert().code(code).get_output().clone();
    assert_one_line_error(&out.stderr)
}

/// Asserts that a failed command wrote exactly one line, `error: ...`, to stderr.
fn assert_one_line_error(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    lines[0].to_string()
}

#[test]
fn ingest_keeps_good_lines_lists_bad_ones_and_reports_duplicates() {
    let f = Fixture::empty();
    f.cmd().arg("init").arg(f.db()).assert().success().stdout(
        predicate::str::contains("with generation 1")
            .and(predicate::str::contains("384 dimensions")),
    );
    let long = "x".repeat((1 << 20) + 1);
    let input = format!(
        "{}{}\n{}\n{}\n{}\n{}\n",
        CORPUS,
        r#"{"id": "broken", "title": "Broken" "text": "no comma"}"#,
        r#"{"id": "notext", "title": "No text"}"#,
        r#"{"id": "blank", "title": "Blank", "text": "   "}"#,
        r#"{"id": "numtext", "text": 17}"#,
        format_args!(r#"{{"id": "long", "text": "{long}"}}"#),
    );
    let file = f.write("mixed.jsonl", &input);
    let stdout = succeeds(f.cmd().arg("ingest").arg(f.db()).arg(&file));
    assert!(
        stdout.contains("6 inserted, 0 duplicate, 5 rejected"),
        "{stdout}"
    );
    for (line, reason) in [
        (7, "not valid JSON"),
        (8, "\"text\" field is missing"),
        (9, "text is empty"),
        (10, "must be a string, but it is a number"),
        (11, "over the limit"),
    ] {
        let expected = format!("mixed.jsonl:{line}: ");
        let listed = stdout
            .lines()
            .find(|l| l.contains(&expected))
            .unwrap_or_else(|| panic!("line {line} is not listed in:\n{stdout}"));
        assert!(listed.contains(reason), "{listed}");
    }

    // Records with ids are idempotent: ingesting again only finds duplicates.
    let again = f.run(&[
        "ingest",
        f.db().to_str().expect("UTF-8 path"),
        file.to_str().expect("UTF-8 path"),
        "--json",
    ]);
    let records = json_lines(&again);
    let summary = records.last().expect("a summary line");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["inserted"], 0);
    assert_eq!(summary["duplicate"], 6);
    assert_eq!(summary["rejected"], 5);
    let rejected: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "rejected")
        .map(|r| r["line"].as_u64().expect("a line number"))
        .collect();
    assert_eq!(rejected, [7, 8, 9, 10, 11]);
}

#[test]
fn search_ranks_the_obvious_passage_first_in_table_and_json() {
    let f = Fixture::new();
    let db = f.db();
    let table = f.run(&[
        "search",
        db.to_str().expect("UTF-8 path"),
        "What is the capital of Norway?",
        "-k",
        "3",
    ]);
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    for column in ["rank", "id", "score", "prob", "gen", "title", "snippet"] {
        assert!(header.contains(column), "{header}");
    }
    let first = lines.next().expect("a first hit");
    assert!(first.contains("Oslo"), "{table}");
    assert_eq!(lines.count(), 2);

    let hits = f.search_json("which ocean is the largest", &["-k", "2"]);
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["rank"], 1);
    assert_eq!(hits[0]["title"], "Pacific Ocean");
    assert_eq!(hits[0]["external_id"], "pacific");
    assert_eq!(hits[0]["generation"], 1);
    assert!(
        hits[0]["snippet"]
            .as_str()
            .expect("a snippet")
            .starts_with("The Pacific")
    );
    let (s0, s1) = (
        hits[0]["score"].as_f64().expect("a score"),
        hits[1]["score"].as_f64().expect("a score"),
    );
    assert!(s0 >= s1);
    let p: f64 = hits
        .iter()
        .map(|h| h["prob"].as_f64().expect("a prob"))
        .sum();
    assert!((p - 1.0).abs() < 1e-4, "probabilities sum to {p}");
}

#[test]
fn tsv_and_plain_text_files_are_ingested() {
    let f = Fixture::empty();
    f.cmd().arg("init").arg(f.db()).assert().success();
    let tsv = f.write(
        "facts.tsv",
        "id\ttitle\ttext\nnile\tNile\tThe Nile is a major river flowing north through Africa into the Mediterranean.\nAmazon\tThe Amazon rainforest covers much of the Amazon basin in South America.\nonly one column\n",
    );
    let sentence = "The violin is a wooden string instrument played with a bow. ";
    let text = f.write(
        "violin.txt",
        &format!("{}\n\n{}\n", sentence.repeat(12), sentence.repeat(4)),
    );
    let out = f.run(&[
        "ingest",
        f.db().to_str().expect("UTF-8 path"),
        tsv.to_str().expect("UTF-8 path"),
        text.to_str().expect("UTF-8 path"),
    ]);
    // Two TSV rows, and 16 sentences of 11 words: passages of 99 and 77 words.
    assert!(
        out.contains("Ingested 2 files: 4 inserted, 0 duplicate, 1 rejected."),
        "{out}"
    );
    assert!(
        out.contains("facts.tsv:4: The line has 1 tab-separated columns"),
        "{out}"
    );
    let hits = f.search_json("a river in Africa", &["-k", "1"]);
    assert_eq!(hits[0]["title"], "Nile");
    assert_eq!(hits[0]["external_id"], "nile");
    let hits = f.search_json("string instrument played with a bow", &["-k", "1"]);
    assert_eq!(hits[0]["title"], "violin");
}

#[test]
fn reindex_time_travel_and_gc() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let out = f.run(&["reindex", db, "--note", "second build"]);
    assert!(out.starts_with("Published generation 2:"), "{out}");

    let generations = json_lines(&f.run(&["generations", db, "--json"]));
    assert_eq!(generations.len(), 2);
    assert_eq!(generations[0]["id"], 1);
    assert_eq!(generations[0]["state"], "retired");
    assert_eq!(generations[0]["current"], false);
    assert_eq!(generations[1]["id"], 2);
    assert_eq!(generations[1]["state"], "committed");
    assert_eq!(generations[1]["current"], true);
    assert_eq!(generations[1]["parent"], 1);
    assert_eq!(generations[1]["note"], "second build");
    assert_eq!(generations[1]["vectors"], 6);
    let table = f.run(&["generations", db]);
    let current = table
        .lines()
        .find(|l| l.starts_with('*'))
        .expect("a current marker");
    assert!(
        current.contains("committed") && current.contains("second build"),
        "{table}"
    );

    // Time travel: the retired generation is still searchable.
    let old = f.search_json("highest mountain", &["-k", "1", "--generation", "1"]);
    assert_eq!(old[0]["generation"], 1);
    assert_eq!(old[0]["title"], "Mount Everest");
    let new = f.search_json("highest mountain", &["-k", "1"]);
    assert_eq!(new[0]["generation"], 2);

    // The default keeps one retired generation; --keep 0 collects it.
    let kept = f.run(&["gc", db]);
    assert!(kept.contains("Collected no generations."), "{kept}");
    let report = json_lines(&f.run(&["gc", db, "--keep", "0", "--json"]));
    assert_eq!(report[0]["collected"], serde_json::json!([1]));
    let line = fails(
        f.cmd()
            .args(["search", db, "highest mountain", "--generation", "1"]),
        1,
    );
    assert!(line.contains("no generation has id 1"), "{line}");
    f.cmd().args(["check", db]).assert().success();
}

/// Spawns `cmd` with piped standard streams and reads its first line of output, so that it
/// has started (opened the database) when this returns.
pub(crate) fn spawn_to_first_line(
    cmd: &mut std::process::Command,
) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning realm-db");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout
        .read_line(&mut first)
        .expect("reading the first line");
    (child, stdout, first)
}

/// Spawns `realm-db shell DIR` and waits for its banner, so the database is open when this
/// returns.
pub(crate) fn spawn_shell(f: &Fixture) -> (Child, BufReader<ChildStdout>, String) {
    let (child, stdout, banner) = spawn_to_first_line(
        std::process::Command::new(BIN)
            .arg("shell")
            .arg(f.db())
            .env("REALM_DB_HISTORY", f.path("history")),
    );
    assert!(banner.starts_with("realm-db shell on"), "{banner}");
    (child, stdout, banner)
}

#[test]
fn a_shell_never_holds_the_database_and_sees_what_others_write() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let (mut child, shell_out, banner) = spawn_shell(&f);
    assert!(banner.contains("read-only"), "{banner}");

    // Reading commands run beside the shell, and so do writing ones: the shell takes no lock.
    let hits = f.search_json("capital of Norway", &["-k", "1"]);
    assert_eq!(hits[0]["title"], "Oslo");
    f.write(
        "more.jsonl",
        r#"{"id": "nile", "title": "Nile", "text": "The Nile is a major river of northeastern Africa."}"#,
    );
    f.run(&[
        "ingest",
        db,
        f.path("more.jsonl").to_str().expect("UTF-8 path"),
    ]);
    let stats = json_lines(&f.run(&["stats", db, "--json"]));
    assert_eq!(stats[0]["passages"], 7);
    assert!(stats[0]["folder_bytes"].as_u64().expect("folder bytes") > 0);
    f.cmd().args(["generations", db]).assert().success();
    f.cmd().args(["check", db]).assert().success();

    // The shell sees the new passage once it refreshes.
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(
        stdin,
        ".refresh
.k 1
longest river in Africa
.quit"
    )
    .expect("writing to the shell");
    drop(stdin);
    let mut rest = String::new();
    for line in shell_out.lines() {
        rest.push_str(&line.expect("shell output"));
        rest.push('\n');
    }
    assert!(child.wait().expect("the shell exits").success());
    assert!(rest.contains("with 7 passages"), "{rest}");
    assert!(rest.contains("Nile"), "{rest}");
}

#[test]
fn shell_follower_is_told_about_a_newer_generation_and_refreshes() {
    let f = Fixture::new();
    // This test process holds the database for writing; the shell becomes a follower.
    let retriever = realm_db::Retriever::new(
        realm_db::Db::open(f.db()).expect("opening the database"),
        realm_db::RetrieverOptions::default(),
    );
    let (mut child, shell_out, banner) = spawn_shell(&f);
    assert!(
        banner.contains("generation 1") && banner.contains("read-only"),
        "{banner}"
    );

    let manifest = retriever
        .db()
        .generation(1)
        .expect("generation 1's manifest");
    let encoder = retriever
        .document_encoder(&manifest)
        .expect("the stored encoder");
    let published = retriever
        .build_generation(&encoder, Default::default())
        .expect("publishing generation 2");
    assert_eq!(published, 2);

    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(
        stdin,
        ".k 1\n.json on\nlargest ocean\nlargest ocean\n.refresh\nlargest ocean\n.use 1\n.k 2\nlargest ocean\n.generations\n.quit"
    )
    .expect("writing to the shell");
    drop(stdin);
    let output: Vec<String> = shell_out
        .lines()
        .collect::<Result<_, _>>()
        .expect("shell output");
    let mut errors = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut errors)
        .expect("shell errors");
    assert!(child.wait().expect("the shell exits").success());
    let text = format!("{}\nstderr:\n{errors}", output.join("\n"));
    let notes: Vec<&String> = output
        .iter()
        .filter(|l| l.contains("generation 2 has been published"))
        .collect();
    assert_eq!(notes.len(), 1, "told once:\n{text}");
    assert!(notes[0].contains(".refresh"), "{text}");
    let hits: Vec<serde_json::Value> = output
        .iter()
        .filter(|l| l.starts_with('{') && l.contains("\"rank\""))
        .map(|l| serde_json::from_str(l).expect("a JSON hit"))
        .collect();
    let generations: Vec<u64> = hits
        .iter()
        .map(|h| h["generation"].as_u64().expect("a generation"))
        .collect();
    // Two queries on the pinned generation 1, one after .refresh on 2, then two hits on 1.
    assert_eq!(generations[..3], [1, 1, 2], "{text}");
    assert_eq!(generations[3..], [1, 1], "{text}");
    assert!(
        hits.iter()
            .all(|h| h["rank"] != 1 || h["title"] == "Pacific Ocean"),
        "{text}"
    );
    assert!(text.contains("Now on generation 2"), "{text}");
    assert!(text.contains("Pinned generation 1 (time travel"), "{text}");
}

#[test]
fn user_errors_exit_1_with_one_line() {
    let f = Fixture::empty();
    let missing = f.path("nowhere");
    let missing = missing.to_str().expect("UTF-8 path");
    for args in [
        vec!["search", missing, "anything"],
        vec!["generations", missing],
        vec!["stats", missing],
        vec!["check", missing],
        vec!["ingest", missing, "no-such-file.jsonl"],
        vec!["frobnicate"],
        vec!["search"],
        vec!["search", missing, "q", "-k", "zero"],
        vec!["embed", missing, "--model", missing],
        vec!["init", missing, "--model", missing],
    ] {
        let line = f.user_error(&args);
        assert!(line.ends_with('.'), "{args:?}: {line}");
    }
    let out = f
        .cmd()
        .args(["search", missing, "q"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("realm-db init"));
    // The bad --model left nothing behind.
    assert!(!Path::new(missing).exists());
    f.cmd().arg("--help").assert().success();
}

#[test]
fn user_errors_on_an_existing_database_exit_1() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    for args in [
        vec!["init", db],
        vec!["search", db, "q", "--generation", "7"],
        vec!["export", db, "--generation", "7"],
    ] {
        f.user_error(&args);
    }
    // An empty or blank query is a user error, not a search.
    for query in ["", " \t "] {
        let line = f.user_error(&["search", db, query]);
        assert!(line.contains("the query is empty"), "{line}");
    }
    let line = f.user_error(&["ask", db, "  "]);
    assert!(line.contains("the question is empty"), "{line}");
    let line = fails(
        f.cmd()
            .args(["ingest", db, "missing.jsonl"])
            .current_dir(f.tmp.path()),
        1,
    );
    assert!(line.contains("missing.jsonl"), "{line}");
}

#[test]
fn check_stats_and_export_on_a_healthy_database() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    f.cmd()
        .args(["check", db])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "is sound: 6 passages, 1 generation",
        ));
    let check = json_lines(&f.run(&["check", db, "--json"]));
    assert_eq!(check[0]["problems"], serde_json::json!([]));

    let stats = json_lines(&f.run(&["stats", db, "--json"]));
    assert_eq!(stats[0]["passages"], 6);
    assert_eq!(stats[0]["current_generation"], 1);
    assert_eq!(stats[0]["generations"], 1);
    assert_eq!(stats[0]["pending"], 0);
    // A reader does not flush: table-file figures are as of the writer's last flush, and the
    // folder figure counts everything on disk, the write-ahead log included.
    assert!(stats[0]["disk_bytes"]["vectors"].as_u64().is_some());
    assert!(stats[0]["folder_bytes"].as_u64().expect("bytes") > 0);
    let table = f.run(&["stats", db]);
    assert!(table.contains("disk bytes: passages"), "{table}");

    let exported = json_lines(&f.run(&["export", db, "--vectors"]));
    assert_eq!(exported.len(), 6);
    let photo = exported
        .iter()
        .find(|p| p["external_id"] == "42")
        .expect("the passage with numeric id 42");
    assert_eq!(photo["title"], "Photosynthesis");
    assert_eq!(photo["meta"], serde_json::json!({"topic": "biology"}));
    for passage in &exported {
        let v = passage["embedding"].as_array().expect("an embedding");
        assert_eq!(v.len(), 384);
    }
    let plain = json_lines(&f.run(&["export", db]));
    assert!(plain.iter().all(|p| p.get("embedding").is_none()));
}

/// The `embedding` array of a JSON line.
fn embedding(line: &serde_json::Value) -> Vec<f64> {
    line["embedding"]
        .as_array()
        .expect("an embedding")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

#[test]
fn embed_writes_384_dimensional_vectors() {
    let f = Fixture::new();
    let db = f.db();
    let texts = "What is the capital of Norway?\nphotosynthesis\n";
    let from_db = json_lines(&succeeds(f.cmd().arg("embed").arg(&db).write_stdin(texts)));
    let from_model = json_lines(&succeeds(f.cmd().arg("embed").write_stdin(texts)));
    assert_eq!(from_db.len(), 2);
    assert_eq!(from_db[0]["text"], "What is the capital of Norway?");
    for (a, b) in from_db.iter().zip(&from_model) {
        let (a, b) = (embedding(a), embedding(b));
        assert_eq!(a.len(), 384);
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-3,
            "MiniLM vectors are normalized: {norm}"
        );
        // The database's stored encoder is the default model.
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-5, "{diff}");
    }
}

#[test]
fn a_damaged_database_is_an_internal_error() {
    let f = Fixture::empty();
    let dir = f.path("damaged");
    std::fs::create_dir(&dir).expect("a directory");
    // RocksDB's CURRENT names a MANIFEST that does not exist.
    std::fs::write(dir.join("CURRENT"), "MANIFEST-000099\n").expect("writing CURRENT");
    let line = fails(f.cmd().arg("stats").arg(&dir), 2);
    assert!(line.contains("MANIFEST-000099"), "{line}");
}

#[test]
fn bm25_and_hybrid_search_modes() {
    let f = Fixture::new();
    // "Seine" appears in one passage only: BM25 must put it first.
    let hits = f.search_json("seine river", &["--mode", "bm25", "-k", "5"]);
    assert_eq!(
        hits.len(),
        1,
        "only one passage mentions the Seine: {hits:?}"
    );
    assert_eq!(hits[0]["title"], "Paris");
    assert!(hits[0]["score"].as_f64().expect("a score") > 0.0);
    assert!((hits[0]["prob"].as_f64().expect("a prob") - 1.0).abs() < 1e-6);

    let hybrid = f.search_json(
        "capital of Norway",
        &["--mode", "hybrid", "-k", "3", "--hybrid-weight", "0.7"],
    );
    assert_eq!(hybrid.len(), 3);
    assert_eq!(hybrid[0]["title"], "Oslo");
    let p: f64 = hybrid
        .iter()
        .map(|h| h["prob"].as_f64().expect("a prob"))
        .sum();
    assert!((p - 1.0).abs() < 1e-4, "hybrid probabilities sum to {p}");

    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let line = f.user_error(&[
        "search",
        db,
        "x",
        "--mode",
        "hybrid",
        "--hybrid-weight",
        "2",
    ]);
    assert!(line.contains("between 0 and 1"), "{line}");
}

#[test]
fn eval_reports_top_k_accuracy_for_each_mode_and_plots() {
    let f = Fixture::new();
    // Answers: strings (normalized, whole tokens), a regex, and one unanswerable question.
    let qa = f.write(
        "qa.jsonl",
        r#"{"question": "what is the capital of norway", "answers": ["Oslo"], "in_corpus": true}
{"question": "which river flows through paris", "answers": ["the Seine"], "in_corpus": true}
{"question": "what is the highest mountain", "answer_patterns": ["Mount\\s+Everest"], "answers": [], "in_corpus": true}
{"question": "who wrote hamlet", "answers": ["Shakespeare"], "in_corpus": false}
"#,
    );
    let db = f.db();
    let plot = f.path("acc.png");
    let out = f.run(&[
        "eval",
        db.to_str().expect("UTF-8 path"),
        "--qa",
        qa.to_str().expect("UTF-8 path"),
        "-k",
        "1,5",
        "--compare",
        "bm25,hybrid",
        "--json",
        "--plot",
        plot.to_str().expect("UTF-8 path"),
    ]);
    let systems = json_lines(&out);
    let names: Vec<&str> = systems
        .iter()
        .map(|s| s["system"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["dense", "bm25", "hybrid"]);
    for s in &systems {
        assert_eq!(s["questions"], 4);
        assert_eq!(s["in_corpus_questions"], 3);
        assert_eq!(s["generation"], 1);
        // k = 5 over six passages: every answerable question is a hit, Hamlet never is.
        let at5 = &s["accuracy"][1];
        assert_eq!(at5[0], 5);
        assert!(
            (at5[1].as_f64().expect("a fraction") - 0.75).abs() < 1e-9,
            "{s}"
        );
        let ic5 = &s["in_corpus_accuracy"][1];
        assert!(
            (ic5[1].as_f64().expect("a fraction") - 1.0).abs() < 1e-9,
            "{s}"
        );
    }
    // Dense top-1 finds all three (these questions are easy for MiniLM).
    assert!((systems[0]["accuracy"][0][1].as_f64().expect("a fraction") - 0.75).abs() < 1e-9);
    // No query-encoder version is attached: queries use the document encoder.
    assert_eq!(systems[0]["query_encoder"], serde_json::Value::Null);
    let png = std::fs::read(&plot).expect("the plot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG file");

    // The table names every system and k.
    let table = f.run(&[
        "eval",
        db.to_str().expect("UTF-8 path"),
        "--qa",
        qa.to_str().expect("UTF-8 path"),
        "-k",
        "1,5",
        "--compare",
        "bm25",
    ]);
    assert!(
        table.contains("4 questions") && table.contains("(3 in corpus)"),
        "{table}"
    );
    assert!(
        table.contains("top-1") && table.contains("top-5"),
        "{table}"
    );
    assert!(table.contains("75.0 / 100.0"), "{table}");

    // --rankings: a header, then each question's top passages with their answer flags, by
    // the --mode system only (dense here, not the compared BM25), whatever the largest k.
    let rankings = f.path("rankings.jsonl");
    f.run(&[
        "eval",
        db.to_str().expect("UTF-8 path"),
        "--qa",
        qa.to_str().expect("UTF-8 path"),
        "-k",
        "1",
        "--compare",
        "bm25",
        "--rankings",
        rankings.to_str().expect("UTF-8 path"),
        "--rankings-k",
        "3",
    ]);
    let lines = json_lines(&std::fs::read_to_string(&rankings).expect("the rankings"));
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["system"], "dense");
    assert_eq!(lines[0]["generation"], 1);
    assert_eq!(lines[1]["line"], 1);
    assert_eq!(lines[1]["question"], "what is the capital of norway");
    assert_eq!(lines[1]["first_match"], 1);
    let top = lines[1]["top"].as_array().expect("the top passages");
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["title"], "Oslo");
    assert_eq!(top[0]["answer"], true);
    assert!(top[0]["id"].is_u64());
    // Hamlet has no answer anywhere; first_match looks no further than the largest k.
    assert_eq!(lines[4]["first_match"], serde_json::Value::Null);
    assert!(
        lines[4]["top"]
            .as_array()
            .expect("top")
            .iter()
            .all(|p| p["answer"] == false)
    );
    for l in &lines[1..] {
        let first = l["first_match"].as_u64();
        assert!(first.is_none() || first == Some(1), "{l}");
    }
    // --rankings-k needs --rankings.
    f.user_error(&[
        "eval",
        db.to_str().expect("UTF-8 path"),
        "--qa",
        qa.to_str().expect("UTF-8 path"),
        "--rankings-k",
        "3",
    ]);

    // A malformed QA line is a user error that names the line.
    let bad = f.write(
        "bad.jsonl",
        "{\"question\": \"x\", \"answers\": [\"y\"]}\nnot json\n",
    );
    let bad = bad.to_str().expect("UTF-8 path");
    let line = f.user_error(&["eval", db.to_str().expect("UTF-8 path"), "--qa", bad]);
    assert!(line.contains("line 2"), "{line}");
}

/// Questions answerable from `CORPUS`.
pub(crate) const QA: &str = r#"{"question": "what is the capital of norway", "answers": ["Oslo"]}
{"question": "which river flows through paris", "answers": ["Seine"]}
{"question": "what is the highest mountain on earth", "answers": ["Mount Everest"]}
{"question": "how do plants turn sunlight into sugar", "answers": ["photosynthesis"]}
{"question": "which molecule carries genetic instructions", "answers": ["deoxyribonucleic acid"]}
{"question": "what is the largest ocean", "answers": ["Pacific Ocean"]}
"#;

pub(crate) fn events(stdout: &str) -> Vec<serde_json::Value> {
    json_lines(stdout)
}

pub(crate) fn named<'a>(events: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

#[test]
fn train_query_side_attaches_a_query_encoder_and_plots_its_curve() {
    let f = Fixture::new();
    let qa = f.write("qa.jsonl", QA);
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let qa = qa.to_str().expect("UTF-8 path");
    let curve = f.path("curve.png");
    // Before training, queries go through the generation's document encoder.
    let hits = f.search_json("capital of Norway", &["-k", "1"]);
    assert_eq!(hits[0]["query_encoder"], serde_json::Value::Null);
    let out = f.run(&[
        "train",
        db,
        "--mode",
        "query-side",
        "--qa",
        qa,
        "--eval",
        qa,
        "--steps",
        "4",
        "--batch",
        "2",
        "--candidates",
        "6",
        "--checkpoint-every",
        "2",
        "--json",
        "--plot",
        curve.to_str().expect("UTF-8 path"),
    ]);
    let events = events(&out);
    assert_eq!(named(&events, "started").len(), 1, "{out}");
    assert_eq!(named(&events, "step").len(), 4, "{out}");
    let evals = named(&events, "eval");
    assert!(evals.len() >= 2, "an evaluation before and after: {out}");
    assert_eq!(evals[0]["questions"], 6);
    let checkpoints: Vec<u64> = named(&events, "checkpoint")
        .iter()
        .map(|e| e["step"].as_u64().expect("a step"))
        .collect();
    assert!(
        checkpoints.contains(&2) && checkpoints.contains(&4),
        "{out}"
    );
    let attached = named(&events, "query_encoder_attached");
    assert_eq!(attached.len(), 1, "{out}");
    assert_eq!(attached[0]["generation"], 1);
    assert_eq!(attached[0]["version"], 1);
    assert!(
        named(&events, "published").is_empty(),
        "query-side publishes no generation"
    );
    assert!(
        std::fs::read(&curve)
            .expect("the curve")
            .starts_with(b"\x89PNG")
    );
    // The same generation still answers, through the new query tower.
    let hits = f.search_json("capital of Norway", &["-k", "1"]);
    assert_eq!(hits[0]["generation"], 1);
    assert_eq!(hits[0]["query_encoder"], 1);
    assert_eq!(hits[0]["title"], "Oslo");
    // Eval names the query-encoder version it used, in JSON and in the table.
    let systems = json_lines(&f.run(&["eval", db, "--qa", qa, "-k", "1", "--json"]));
    assert_eq!(systems[0]["query_encoder"], 1);
    let table = f.run(&["eval", db, "--qa", qa, "-k", "1"]);
    assert!(table.contains("generation 1 (query encoder v1)"), "{table}");

    // Query-side and dual training need labels.
    let line = f.user_error(&["train", db, "--mode", "dual", "--steps", "1"]);
    assert!(line.contains("--qa"), "{line}");
}

/// Spawns a short dual training run that publishes a generation every 2 steps, with JSON
/// events, and waits for its first event (`started`), so it holds the database on return.
pub(crate) fn spawn_dual_trainer(
    f: &Fixture,
    qa: &Path,
) -> (Child, BufReader<ChildStdout>, String) {
    let (child, stdout, first) = spawn_to_first_line(
        std::process::Command::new(BIN)
            .arg("train")
            .arg(f.db())
            .args(["--mode", "dual", "--qa"])
            .arg(qa)
            .args(["--steps", "6", "--batch", "2", "--candidates", "3"])
            .args(["--refresh-every", "2", "--json"]),
    );
    assert!(first.contains("\"started\""), "{first}");
    (child, stdout, first)
}

#[test]
fn dual_training_publishes_generations_that_a_follower_searches() {
    let f = Fixture::new();
    let qa = f.write("qa.jsonl", QA);
    // Once the trainer reports, it holds the database; searches never need its lock.
    let (mut child, mut stdout, first) = spawn_dual_trainer(&f, &qa);
    let mut seen = std::collections::BTreeSet::new();
    let mut searches = 0;
    while child.try_wait().expect("polling the trainer").is_none() {
        let out = f
            .cmd()
            .args(["search"])
            .arg(f.db())
            .args(["capital of Norway", "--json", "-k", "2"])
            .output()
            .expect("running search");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        searches += 1;
        for hit in json_lines(&String::from_utf8_lossy(&out.stdout)) {
            seen.insert(hit["generation"].as_u64().expect("a generation"));
        }
    }
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .expect("the trainer's events");
    let status = child.wait().expect("the trainer's exit");
    assert!(status.success(), "the trainer failed");
    let events = events(&(first + &rest));
    let published = named(&events, "published");
    assert!(published.len() >= 2, "{events:?}");
    assert!(
        searches >= 1,
        "no search ran while the trainer held the database"
    );
    assert!(!seen.is_empty());
    // Every published generation is listed, the last one current.
    let generations = json_lines(&f.run(&[
        "generations",
        f.db().to_str().expect("UTF-8 path"),
        "--json",
    ]));
    let last = published.last().expect("a publication")["generation"].clone();
    assert!(generations.len() > published.len(), "{generations:?}");
    let hits = f.search_json("capital of Norway", &["-k", "1"]);
    assert_eq!(hits[0]["generation"], last);
}

#[test]
fn a_killed_training_run_resumes_from_its_last_checkpoint() {
    let f = Fixture::new();
    let qa = f.write("qa.jsonl", QA);
    let args = |cmd: &mut std::process::Command| {
        cmd.arg("train")
            .arg(f.db())
            .args(["--mode", "query-side", "--qa"])
            .arg(&qa)
            .args(["--steps", "12", "--batch", "2", "--candidates", "6"])
            .args(["--checkpoint-every", "2", "--json"]);
    };
    let mut first = std::process::Command::new(BIN);
    args(&mut first);
    let mut child = first
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the trainer");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).expect("an event") > 0,
            "no checkpoint came"
        );
        if line.contains("\"checkpoint\"") {
            break;
        }
    }
    // SIGKILL: no chance to write anything more.
    child.kill().expect("killing the trainer");
    child.wait().expect("reaping the trainer");

    let mut second = std::process::Command::new(BIN);
    args(&mut second);
    let out = second.output().expect("rerunning the trainer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&String::from_utf8_lossy(&out.stdout));
    let resumed = named(&events, "resumed");
    assert_eq!(resumed.len(), 1, "{events:?}");
    let from = resumed[0]["step"].as_u64().expect("a step");
    assert!(
        from >= 2 && from.is_multiple_of(2),
        "resumed from step {from}"
    );
    let steps = named(&events, "step");
    assert_eq!(
        steps.len() as u64,
        12 - from,
        "only the remaining steps run"
    );
    assert_eq!(named(&events, "query_encoder_attached").len(), 1);
    f.cmd().args(["check"]).arg(f.db()).assert().success();
}

#[test]
fn qa_training_stores_a_reader_that_ask_and_eval_em_use() {
    let f = Fixture::new();
    let qa = f.write("qa.jsonl", QA);
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let qa = qa.to_str().expect("UTF-8 path");
    // Without a reader, `ask` says how to get one.
    let line = f.user_error(&["ask", db, "what is the capital of norway"]);
    assert!(line.contains("--mode qa"), "{line}");

    let out = f.run(&[
        "train",
        db,
        "--mode",
        "qa",
        "--qa",
        qa,
        "--steps",
        "3",
        "--batch",
        "2",
        "--reader-passages",
        "2",
        "--candidates",
        "6",
        "--json",
    ]);
    let events = events(&out);
    assert_eq!(named(&events, "reader_stored").len(), 1, "{out}");
    assert_eq!(named(&events, "query_encoder_attached").len(), 1, "{out}");

    let answer: serde_json::Value = serde_json::from_str(
        f.run(&[
            "ask",
            db,
            "what is the capital of norway",
            "-k",
            "3",
            "--json",
        ])
        .trim(),
    )
    .expect("one JSON object");
    let evidence = answer["evidence"].as_array().expect("evidence");
    assert_eq!(evidence.len(), 3);
    assert_eq!(answer["generation"], 1);
    let prob = answer["prob"].as_f64().expect("p(y|x)");
    assert!((0.0..=1.0 + 1e-6).contains(&prob), "{answer}");
    // p(y|x) is the marginal over the evidence. Training normalizes span scores jointly
    // over the passages by default, so each passage holds p(y,z|x).
    assert_eq!(answer["span_normalization"], "joint");
    let marginal: f64 = evidence
        .iter()
        .map(|e| e["p_answer_given_z"].as_f64().expect("p"))
        .sum();
    assert!((marginal - prob).abs() < 1e-4, "{answer}");
    let text = answer["answer"].as_str().expect("an answer");
    assert!(!text.is_empty());
    assert!(
        CORPUS.contains(text),
        "the answer is copied from a passage: {answer}"
    );
    assert_eq!(answer["marginalization"], "sum");
    // The top three distinct answers, best first, the first being the answer.
    let alternatives = answer["alternatives"].as_array().expect("alternatives");
    assert!((1..=3).contains(&alternatives.len()), "{answer}");
    assert_eq!(alternatives[0]["answer"], text);
    let probs: Vec<f64> = alternatives
        .iter()
        .map(|a| a["prob"].as_f64().expect("a probability"))
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{answer}");
    assert!(probs.iter().sum::<f64>() <= 1.0 + 1e-6, "{answer}");
    // The flags reach the reader: one-word answers, combined by their best passage.
    let short: serde_json::Value = serde_json::from_str(
        f.run(&[
            "ask",
            db,
            "what is the capital of norway",
            "-k",
            "3",
            "--max-answer-words",
            "1",
            "--marginalize",
            "max",
            "--keep-question-words",
            "--span-normalization",
            "passage",
            "--json",
        ])
        .trim(),
    )
    .expect("one JSON object");
    assert_eq!(short["marginalization"], "max");
    // Per passage, the answer's score is its best passage's p(z|x) p(y|z,x).
    assert_eq!(short["span_normalization"], "passage");
    let best = short["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .map(|e| e["p_z"].as_f64().expect("p_z") * e["p_answer_given_z"].as_f64().expect("p"))
        .fold(0.0, f64::max);
    assert!(
        (best - short["prob"].as_f64().expect("a score")).abs() < 1e-4,
        "{short}"
    );
    for a in short["alternatives"].as_array().expect("alternatives") {
        let normalized = normalize_answer(a["answer"].as_str().expect("an answer"));
        assert_eq!(normalized.split(' ').count(), 1, "{short}");
    }
    let table = f.run(&["ask", db, "what is the capital of norway", "-k", "3"]);
    assert!(
        table.contains(&format!("1  {:.3}  {text}", probs[0])),
        "{table}"
    );

    let report = json_lines(&f.run(&[
        "eval",
        db,
        "--qa",
        qa,
        "--em",
        "--reader-k",
        "2",
        "-k",
        "1,5",
        "--json",
    ]));
    let reader = report
        .iter()
        .find(|r| r["system"] == "reader")
        .expect("a reader line");
    assert_eq!(reader["questions"], 6);
    let em = reader["em"].as_f64().expect("em");
    assert!((0.0..=1.0).contains(&em));
    // Token F1 credits every exact match fully, and partial answers in part.
    let f1 = reader["f1"].as_f64().expect("f1");
    assert!(f1 >= em - 1e-9 && f1 <= 1.0, "{reader}");
    assert_eq!(reader["drop_question_words"], true);
}

#[test]
fn realm_training_reports_held_out_utility() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let line = f.user_error(&["train", db, "--mode", "realm", "--held-out", "1"]);
    assert!(line.contains("held-out fraction"), "{line}");
    let out = f.run(&[
        "train",
        db,
        "--mode",
        "realm",
        "--steps",
        "2",
        "--batch",
        "2",
        "--reader-passages",
        "2",
        "--held-out",
        "0.5",
        "--json",
    ]);
    let events = events(&out);
    let held = named(&events, "realm_held_out");
    // At the start and at the end, on the same held-out sentences.
    assert_eq!(held.len(), 2, "{out}");
    for h in &held {
        assert!(h["sentences"].as_u64().expect("sentences") > 0, "{out}");
        let with = h["with_retrieval"].as_f64().expect("with_retrieval");
        let null = h["null_only"].as_f64().expect("null_only");
        let utility = h["utility"].as_f64().expect("utility");
        assert!((utility - (with - null)).abs() < 1e-9, "{out}");
    }
    assert_eq!(held[0]["sentences"], held[1]["sentences"]);
    assert_eq!(named(&events, "realm_batch").len(), 2, "{out}");
    assert_eq!(named(&events, "reader_stored").len(), 1, "{out}");
}
