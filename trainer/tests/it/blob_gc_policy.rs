//! Blob garbage collection's roots, on synthetic blobs and hand-written trainer states: what
//! generations, `reader/current` and each kind of state keep, what `keep_runs` drops, and
//! that an unreadable state or current-reader record keeps everything it might name.

use std::collections::BTreeSet;

use realm_storage::{Db, Dtype, GenerationSpec, NewPassage, Provenance};
use realm_testing_torch::global_rng_lock;
use realm_trainer::state::{STATE_FORMAT, TrainerState};
use realm_trainer::{BlobGcOptions, Mode, TrainConfig, collect_blobs};

/// A database whose current generation was built by `encoder/gen2` and queries through
/// `encoder/q2`; the generation before it, built by `encoder/gen1`, is collected.
fn database(dir: &std::path::Path) -> Db {
    let db = Db::create(dir).unwrap();
    let ids = db
        .insert(&[NewPassage::new("Oslo", "Oslo is in Norway.")])
        .unwrap();
    let id = ids[0].id();
    for checkpoint in ["gen1", "gen2"] {
        let spec = GenerationSpec::new(checkpoint, 2, Dtype::F32).with_provenance(Provenance {
            checkpoint_id: Some(checkpoint.to_owned()),
            ..Provenance::default()
        });
        let mut writer = db.begin_generation(spec).unwrap();
        writer.write(&[id], &[0.6, 0.8]).unwrap();
        let generation = writer.commit().unwrap();
        db.attach_query_encoder(generation, &checkpoint.replace("gen", "q"), "v1")
            .unwrap();
    }
    db.gc(0).unwrap();
    db
}

struct Run<'a> {
    name: &'a str,
    finished: bool,
    saved_ms: Option<u64>,
    query: &'a str,
    document: Option<&'a str>,
    reader: Option<&'a str>,
    slot: char,
}

fn put_state(db: &Db, run: &Run<'_>) {
    let mode = if run.reader.is_some() {
        Mode::Qa
    } else {
        Mode::Dual
    };
    let state = TrainerState {
        format: STATE_FORMAT,
        mode,
        step: 4,
        finished: run.finished,
        config: TrainConfig {
            mode,
            run: run.name.to_owned(),
            ..TrainConfig::default()
        },
        generation: 2,
        query_checkpoint: run.query.to_owned(),
        document_checkpoint: run.document.map(str::to_owned),
        optimizer_blob: format!("trainer/{}/optimizer-{}", run.name, run.slot),
        reader_checkpoint: run.reader.map(str::to_owned),
        phrase_checkpoint: None,
        phrase_threshold: None,
        phrase_generation: None,
        saved_ms: run.saved_ms,
    };
    db.put_blob(&format!("trainer/{}/state", run.name), &state.to_bytes())
        .unwrap();
}

fn put_all(db: &Db, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        db.put_blob(name, &vec![7u8; 10 + i]).unwrap();
    }
}

fn collected(db: &Db, keep_runs: Option<usize>) -> BTreeSet<String> {
    let report = collect_blobs(db, &BlobGcOptions { keep_runs }).unwrap();
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    report.collected.into_iter().map(|b| b.name).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn roots_keep_what_generations_the_current_reader_and_states_name() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    put_all(
        &db,
        &[
            "encoder/gen1",
            "encoder/q1",
            "encoder/gen2",
            "encoder/q2",
            "encoder/stale",
            "encoder/u-query",
            "encoder/shared",
            "encoder/new-query",
            "encoder/old-query",
            "reader/cur",
            "reader/stale",
            "reader/u-reader",
            "trainer/u/optimizer-a",
            "trainer/u/optimizer-b",
            "trainer/u/notes",
            "trainer/new/optimizer-a",
            "trainer/old/optimizer-b",
            "trainer/orphan/optimizer-a",
            "notes/x",
            "readme",
        ],
    );
    db.put_blob("reader/current", b"cur\n").unwrap();
    // Unfinished: keeps its state, slot b and its towers (one shared with a finished run).
    put_state(
        &db,
        &Run {
            name: "u",
            finished: false,
            saved_ms: Some(1),
            query: "u-query",
            document: Some("shared"),
            reader: Some("u-reader"),
            slot: 'b',
        },
    );
    // Finished: the newer one saved at 2000 ms, the older one before saved times existed.
    put_state(
        &db,
        &Run {
            name: "new",
            finished: true,
            saved_ms: Some(2000),
            query: "new-query",
            document: None,
            reader: None,
            slot: 'a',
        },
    );
    put_state(
        &db,
        &Run {
            name: "old",
            finished: true,
            saved_ms: None,
            query: "old-query",
            document: Some("shared"),
            reader: None,
            slot: 'b',
        },
    );
    let bytes_before: u64 = db.blobs().unwrap().iter().map(|b| b.bytes).sum();

    let report = collect_blobs(&db, &BlobGcOptions::default()).unwrap();
    let names: BTreeSet<String> = report.collected.iter().map(|b| b.name.clone()).collect();
    assert_eq!(
        names,
        set(&[
            "encoder/gen1",
            "encoder/q1",
            "encoder/stale",
            "reader/stale",
            "trainer/u/optimizer-a",
            "trainer/new/optimizer-a",
            "trainer/old/optimizer-b",
            "trainer/orphan/optimizer-a",
        ])
    );
    // Lengths come from the blobs' headers: 10 + the blob's position in `put_all`.
    let stale = report.collected.iter().find(|b| b.name == "encoder/stale");
    assert_eq!(stale.map(|b| b.bytes), Some(14));
    assert_eq!(report.bytes_freed() + report.bytes_kept, bytes_before);
    for name in &names {
        assert!(!db.has_blob(name).unwrap(), "{name}");
    }

    // The older finished run goes first; a tower another state names stays.
    assert_eq!(
        collected(&db, Some(1)),
        set(&["trainer/old/state", "encoder/old-query"])
    );
    assert_eq!(
        collected(&db, Some(0)),
        set(&["trainer/new/state", "encoder/new-query"])
    );
    let left: BTreeSet<String> = db.blobs().unwrap().into_iter().map(|b| b.name).collect();
    assert_eq!(
        left,
        set(&[
            "encoder/gen2",
            "encoder/q2",
            "encoder/u-query",
            "encoder/shared",
            "notes/x",
            "reader/cur",
            "reader/current",
            "reader/u-reader",
            "readme",
            "trainer/u/notes",
            "trainer/u/optimizer-b",
            "trainer/u/state",
        ])
    );
    assert_eq!(collected(&db, Some(0)), BTreeSet::new());

    // Only the writer collects.
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert!(matches!(
        collect_blobs(&follower, &BlobGcOptions::default()),
        Err(realm_trainer::Error::Storage(
            realm_storage::Error::ReadOnly { .. }
        ))
    ));
}

#[test]
fn what_cannot_be_read_keeps_everything_it_might_name() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    put_all(
        &db,
        &[
            "encoder/stale",
            "reader/stale",
            "trainer/bad/optimizer-a",
            "trainer/bad/optimizer-b",
            "trainer/good/optimizer-a",
        ],
    );
    db.put_blob("trainer/bad/state", b"{\"format\": 1, \"step\": ")
        .unwrap();
    db.put_blob("reader/current", &[0xff, 0xfe]).unwrap();
    put_state(
        &db,
        &Run {
            name: "good",
            finished: true,
            saved_ms: Some(5),
            query: "good-query",
            document: None,
            reader: None,
            slot: 'a',
        },
    );
    db.put_blob("encoder/good-query", b"weights").unwrap();

    // The readable run's superseded slot and, with keep_runs = 0, its state go; no encoder
    // or reader does, nor any blob of the unreadable run.
    let report = collect_blobs(&db, &BlobGcOptions { keep_runs: Some(0) }).unwrap();
    let names: BTreeSet<String> = report.collected.iter().map(|b| b.name.clone()).collect();
    assert_eq!(
        names,
        set(&["trainer/good/optimizer-a", "trainer/good/state"])
    );
    let unreadable: Vec<&str> = report.unreadable.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(unreadable, ["reader/current", "trainer/bad/state"]);
    assert!(
        report.unreadable[1]
            .reason
            .contains("not trainer-state JSON"),
        "{:?}",
        report.unreadable
    );
    for kept in [
        "encoder/stale",
        "encoder/good-query",
        "reader/stale",
        "trainer/bad/state",
        "trainer/bad/optimizer-a",
        "trainer/bad/optimizer-b",
    ] {
        assert!(db.has_blob(kept).unwrap(), "{kept}");
    }
}
