//! Several processes on one database at once: a shell opened first does not stop a trainer,
//! and sees every generation it publishes; a follower's searches stay consistent while a
//! writer ingests, publishes and collects.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, ChildStdout};

use super::cli::{Fixture, QA, events, named, spawn_dual_trainer, spawn_shell};

/// Sends `command` to the shell, then `.k 1` as a fence, and returns the lines the shell
/// printed before the fence's answer.
fn ask_shell(
    stdin: &mut ChildStdin,
    stdout: &mut BufReader<ChildStdout>,
    command: &str,
) -> Vec<String> {
    writeln!(stdin, "{command}\n.k 1").expect("writing to the shell");
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).expect("reading the shell");
        assert!(n > 0, "the shell ended; it printed {lines:?}");
        if line.starts_with("Queries now return 1 passage") {
            return lines;
        }
        lines.push(line.trim_end().to_owned());
    }
}

#[test]
fn a_shell_opened_first_sees_every_generation_a_trainer_publishes() {
    let f = Fixture::new();
    let qa = f.write("qa.jsonl", QA);
    let (mut shell, mut shell_out, banner) = spawn_shell(&f);
    assert!(banner.contains("generation 1"), "{banner}");
    let mut shell_in = shell.stdin.take().expect("piped stdin");

    let (mut trainer, mut trainer_out, first) = spawn_dual_trainer(&f, &qa);
    let mut lines = first.clone();
    let mut pinned = Vec::new();
    loop {
        let mut line = String::new();
        if trainer_out
            .read_line(&mut line)
            .expect("the trainer's events")
            == 0
        {
            break;
        }
        lines.push_str(&line);
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
        if event["event"] == "published" {
            // While the trainer runs on, the shell pins what it just published.
            let g = event["generation"].as_u64().expect("a generation");
            let said = ask_shell(&mut shell_in, &mut shell_out, &format!(".use {g}"));
            assert!(
                said.iter()
                    .any(|l| l.starts_with(&format!("Pinned generation {g}"))),
                "{said:?}"
            );
            pinned.push(g);
        }
    }
    let mut errors = String::new();
    let _ = trainer
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut errors));
    assert!(
        trainer.wait().expect("the trainer exits").success(),
        "{errors}"
    );
    let published: Vec<u64> = named(&events(&lines), "published")
        .iter()
        .map(|e| e["generation"].as_u64().expect("a generation"))
        .collect();
    assert!(published.len() >= 2, "{lines}");
    assert_eq!(pinned, published);

    let said = ask_shell(&mut shell_in, &mut shell_out, ".refresh");
    let last = published.last().expect("a publication");
    assert!(
        said.iter()
            .any(|l| l.starts_with(&format!("Now on generation {last} "))),
        "{said:?}"
    );
    writeln!(shell_in, ".quit").expect("writing to the shell");
    assert!(shell.wait().expect("the shell exits").success());
}

#[test]
fn a_thousand_follower_searches_stay_consistent_while_a_writer_ingests_and_publishes() {
    const SEARCHES: usize = 1000;
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let (mut shell, shell_out, _) = spawn_shell(&f);
    let mut shell_in = shell.stdin.take().expect("piped stdin");
    let mut shell_err = shell.stderr.take().expect("piped stderr");
    // Every search from a new snapshot: refresh, then search, a thousand times.
    let feeder = std::thread::spawn(move || {
        writeln!(shell_in, ".json on\n.k 3").expect("writing to the shell");
        for i in 0..SEARCHES {
            let query = ["capital city", "highest mountain", "ocean", "river"][i % 4];
            writeln!(shell_in, ".refresh\n{query}").expect("writing to the shell");
        }
        writeln!(shell_in, ".quit").expect("writing to the shell");
    });
    let reader = std::thread::spawn(move || {
        shell_out
            .lines()
            .collect::<Result<Vec<String>, _>>()
            .expect("shell output")
    });

    // The writer: ingests, publishes a new generation and collects, until the shell is done.
    let mut rounds = 0;
    while !reader.is_finished() {
        rounds += 1;
        let file = f.write(
            &format!("round-{rounds}.jsonl"),
            &format!(
                r#"{{"id": "r{rounds}", "title": "River {rounds}", "text": "River number {rounds} flows into the sea."}}"#
            ),
        );
        f.run(&["ingest", db, file.to_str().expect("UTF-8 path")]);
        f.run(&["reindex", db]);
        f.run(&["gc", db, "--keep", "0"]);
    }
    feeder.join().expect("the feeder");
    let output = reader.join().expect("the reader");
    let mut errors = String::new();
    shell_err
        .read_to_string(&mut errors)
        .expect("the shell's errors");
    assert!(shell.wait().expect("the shell exits").success());
    assert!(errors.trim().is_empty(), "the shell reported: {errors}");

    // Each refresh names the generation its snapshot pins; every hit after it comes from it.
    let mut current: Option<u64> = None;
    let mut searched = 0;
    let mut generations = std::collections::BTreeSet::new();
    for line in &output {
        if let Some(rest) = line.strip_prefix("Now on generation ") {
            let g: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|g| g.parse().ok())
                .expect("a generation id");
            current = Some(g);
            generations.insert(g);
            searched += 1;
        } else if line.starts_with('{') && line.contains("\"rank\"") {
            let hit: serde_json::Value = serde_json::from_str(line).expect("a JSON hit");
            assert_eq!(hit["generation"].as_u64(), current, "{line}");
        }
    }
    assert_eq!(searched, SEARCHES);
    assert!(rounds >= 2, "the writer ran {rounds} rounds");
    assert!(
        generations.len() >= 2,
        "the shell saw the writer's publishes: {generations:?}"
    );
}
