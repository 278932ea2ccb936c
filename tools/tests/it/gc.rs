//! `realm-db gc` collects blobs after the generations: a training run's superseded encoder
//! checkpoint and its optimizer slots go, and `stats` shows the blob bytes shrink by what
//! `gc` reports as freed.

use crate::cli::{Fixture, QA, json_lines};

fn blob_figures(f: &Fixture, db: &str) -> (u64, u64) {
    let stats = json_lines(&f.run(&["stats", db, "--json"]));
    let count = stats[0]["blobs"].as_u64().expect("a blob count");
    let bytes = stats[0]["blob_bytes"].as_u64().expect("blob bytes");
    (count, bytes)
}

fn names(report: &serde_json::Value) -> Vec<&str> {
    report["blobs_collected"]
        .as_array()
        .expect("a list of collected blobs")
        .iter()
        .map(|n| n.as_str().expect("a blob name"))
        .collect()
}

#[test]
fn gc_collects_the_blobs_a_finished_training_run_left_behind() {
    let f = Fixture::new();
    let qa = f.write("qa.jsonl", QA);
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    // The generation's encoder is the only blob, and nothing can be collected.
    let (count, encoder_bytes) = blob_figures(&f, db);
    assert_eq!(count, 1);
    assert!(encoder_bytes > 1 << 20, "{encoder_bytes}");
    let report = json_lines(&f.run(&["gc", db, "--json"]));
    assert_eq!(report[0]["blob_bytes_freed"], 0);
    assert_eq!(report[0]["blob_bytes_kept"], encoder_bytes);

    // Checkpoints at steps 1 and 2: step 1's query tower is superseded by step 2's, which
    // is attached to the generation; the finished run needs neither optimizer slot.
    f.run(&[
        "train",
        db,
        "--mode",
        "query-side",
        "--qa",
        qa.to_str().expect("UTF-8 path"),
        "--steps",
        "2",
        "--batch",
        "2",
        "--candidates",
        "6",
        "--checkpoint-every",
        "1",
        "--json",
    ]);
    let (count, before) = blob_figures(&f, db);
    assert_eq!(
        count, 6,
        "two encoders trained, the state and two optimizer slots"
    );
    let report = json_lines(&f.run(&["gc", db, "--json"]));
    let freed = report[0]["blob_bytes_freed"].as_u64().expect("bytes freed");
    let collected = names(&report[0]);
    assert_eq!(collected.len(), 3, "{collected:?}");
    assert!(collected.contains(&"trainer/default/optimizer-a"));
    assert!(collected.contains(&"trainer/default/optimizer-b"));
    assert!(collected.iter().any(|n| n.starts_with("encoder/")));
    assert!(freed > 1 << 20, "{freed}");
    let (count, after) = blob_figures(&f, db);
    assert_eq!((count, after), (3, before - freed));
    assert_eq!(report[0]["blob_bytes_kept"], after);

    // The attached tower still answers; --keep-runs 0 drops the finished run's state.
    let hits = f.search_json("capital of Norway", &["-k", "1"]);
    assert_eq!(hits[0]["query_encoder"], 1);
    let text = f.run(&["gc", db, "--keep-runs", "0"]);
    assert!(
        text.contains("Collected 1 blob, freeing") && text.contains("trainer/default/state"),
        "{text}"
    );
    let text = f.run(&["gc", db]);
    assert!(text.contains("Collected no blobs."), "{text}");
    let table = f.run(&["stats", db]);
    assert!(table.contains("blob bytes"), "{table}");
    f.cmd().args(["check", db]).assert().success();
}
