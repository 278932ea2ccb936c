//! Blob garbage collection after real training runs (tiny towers, CPU): superseded encoder
//! checkpoints, readers and optimizer slots go, while every stored generation still loads
//! its encoders, the current reader still loads, and an unfinished run still resumes. Each
//! test holds the global RNG lock, so that no other test draws from libtorch's global
//! generator (dropout) while it runs.

use std::collections::BTreeSet;

use realm_reader::store::{CURRENT_READER_BLOB, current_reader};
use realm_retriever::eval::QaExample;
use realm_retriever::phrase::{PHRASE_ENCODER_BLOB_PREFIX, PhraseBuildOptions};
use realm_retriever::{ENCODER_BLOB_PREFIX, Retriever};
use realm_storage::Db;
use realm_testing_torch::{
    cpu_options, global_rng_lock, reader_config, tiny_phrase_encoder, tiny_reader, towns_retriever,
    train,
};
use realm_trainer::state::TrainerState;
use realm_trainer::{BlobGcOptions, Event, Mode, TrainConfig, Trainer, collect_blobs};

/// The readers' token limit.
const MAX_LEN: usize = 96;

fn names(db: &Db) -> BTreeSet<String> {
    db.blobs().unwrap().into_iter().map(|b| b.name).collect()
}

fn total_bytes(db: &Db) -> u64 {
    db.blobs().unwrap().iter().map(|b| b.bytes).sum()
}

fn under<'a>(names: &'a BTreeSet<String>, prefix: &str) -> BTreeSet<&'a str> {
    names
        .iter()
        .filter(|n| n.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

fn state(db: &Db, run: &str) -> TrainerState {
    let blob = realm_trainer::state::state_blob(run);
    TrainerState::parse(&db.get_blob(&blob).unwrap(), &blob).unwrap()
}

/// The encoder blobs that the stored generations name.
fn generation_encoders(db: &Db) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for info in db.generations().unwrap() {
        let m = info.manifest;
        out.extend(m.spec.provenance.checkpoint_id.clone());
        out.extend(m.query_encoders.iter().map(|q| q.checkpoint_id.clone()));
    }
    out.into_iter()
        .map(|id| format!("{ENCODER_BLOB_PREFIX}{id}"))
        .collect()
}

fn qa_config(steps: u64, run: &str) -> TrainConfig {
    TrainConfig {
        mode: Mode::Qa,
        steps,
        batch: 8,
        lr: 1e-3,
        reader_lr: 1e-3,
        reader_passages: 4,
        seed: 3,
        checkpoint_every: 2,
        run: run.to_owned(),
        ..TrainConfig::default()
    }
}

fn qa_trainer(retriever: &Retriever, questions: &[QaExample], steps: u64) -> Trainer {
    Trainer::new_with_reader(
        retriever.clone(),
        qa_config(steps, "qa"),
        questions.to_vec(),
        Vec::new(),
        Some(tiny_reader(3, reader_config(MAX_LEN))),
    )
    .unwrap()
}

/// A fresh retriever (no cached encoders) loads the current generation's query encoder,
/// every stored generation's encoders and the current reader, and searches.
fn assert_everything_loads(db: &Db, question: &str) {
    let fresh = Retriever::new(db.clone(), cpu_options());
    for info in db.generations().unwrap() {
        fresh.document_encoder(&info.manifest).unwrap();
        fresh.query_encoder(&info.manifest).unwrap();
    }
    let hits = fresh.snapshot().unwrap().search(question, 5).unwrap();
    assert_eq!(hits.len(), 5);
    let (id, reader) = current_reader(&fresh, reader_config(MAX_LEN))
        .unwrap()
        .expect("a current reader");
    assert_eq!(reader.fingerprint().unwrap(), id);
}

#[test]
fn gc_collects_superseded_checkpoints_and_keeps_what_is_named() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let db = retriever.db().clone();
    // Dual training publishes a generation per refresh and checkpoints both towers.
    let dual = TrainConfig {
        mode: Mode::Dual,
        steps: 6,
        batch: 8,
        lr: 1e-3,
        refresh_every: 2,
        candidates: 8,
        checkpoint_every: 2,
        run: "dual".to_owned(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(retriever.clone(), dual, questions.clone(), Vec::new()).unwrap();
    let (report, _) = train(&mut trainer, None);
    assert!(report.generations_published.len() >= 2, "{report:?}");
    drop(trainer);
    // QA stores a reader at each checkpoint and makes the last one current.
    let (report, _) = train(&mut qa_trainer(&retriever, &questions, 4), None);
    assert_eq!(report.final_step, 4);
    db.put_blob("notes/x", b"the user's").unwrap();
    db.put_blob("trainer/qa/notes", b"not a trainer blob")
        .unwrap();

    let before = names(&db);
    let bytes_before = total_bytes(&db);
    let readers_before = under(&before, "reader/").len();
    let generations = db.gc(0).unwrap();
    assert!(!generations.collected.is_empty());
    let report = collect_blobs(&db, &BlobGcOptions::default()).unwrap();
    let after = names(&db);
    let bytes_after = total_bytes(&db);
    eprintln!(
        "{} blobs of {bytes_before} bytes before, {} of {bytes_after} after ({} collected, {} bytes freed)",
        before.len(),
        after.len(),
        report.collected.len(),
        report.bytes_freed()
    );
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    assert!(report.bytes_freed() > 0);
    assert_eq!(bytes_after + report.bytes_freed(), bytes_before);
    assert_eq!(report.bytes_kept, bytes_after);
    let collected: BTreeSet<String> = report.collected.iter().map(|b| b.name.clone()).collect();
    assert_eq!(
        collected,
        before.difference(&after).cloned().collect::<BTreeSet<_>>()
    );

    // Exactly the encoders that a generation or a (finished, kept) state names remain.
    let (dual_state, qa_state) = (state(&db, "dual"), state(&db, "qa"));
    let mut named = generation_encoders(&db);
    for s in [&dual_state, &qa_state] {
        named.insert(format!("{ENCODER_BLOB_PREFIX}{}", s.query_checkpoint));
        named.extend(
            s.document_checkpoint
                .iter()
                .map(|id| format!("{ENCODER_BLOB_PREFIX}{id}")),
        );
    }
    let encoders_after: BTreeSet<String> = under(&after, ENCODER_BLOB_PREFIX)
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(encoders_after, named);
    assert!(under(&before, ENCODER_BLOB_PREFIX).len() > named.len());
    // The current reader and the one the QA state names (the same) remain; the reader of
    // step 2 is gone.
    let current = String::from_utf8(db.get_blob(CURRENT_READER_BLOB).unwrap()).unwrap();
    assert_eq!(
        qa_state.reader_checkpoint.as_deref(),
        Some(current.as_str())
    );
    let readers: BTreeSet<String> = [CURRENT_READER_BLOB.to_owned(), format!("reader/{current}")]
        .into_iter()
        .collect();
    let readers_after: BTreeSet<String> = under(&after, "reader/")
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(readers_after, readers);
    assert_eq!(readers_before, 3);
    // Finished runs keep their states but no optimizer slot; other blobs stay.
    for kept in [
        "trainer/dual/state",
        "trainer/qa/state",
        "trainer/qa/notes",
        "notes/x",
    ] {
        assert!(after.contains(kept), "{kept}");
    }
    assert!(under(&after, "trainer/dual/optimizer").is_empty());
    assert!(under(&after, "trainer/qa/optimizer").is_empty());
    assert_everything_loads(&db, &questions[0].question);
    // A second collection finds nothing.
    let again = collect_blobs(&db, &BlobGcOptions::default()).unwrap();
    assert!(again.collected.is_empty(), "{:?}", again.collected);

    // keep_runs: the most recently saved finished run keeps its state.
    assert!(dual_state.saved_ms <= qa_state.saved_ms && dual_state.saved_ms.is_some());
    let one = collect_blobs(&db, &BlobGcOptions { keep_runs: Some(1) }).unwrap();
    assert!(one.collected.iter().any(|b| b.name == "trainer/dual/state"));
    assert!(db.has_blob("trainer/qa/state").unwrap());
    let none = collect_blobs(&db, &BlobGcOptions { keep_runs: Some(0) }).unwrap();
    assert!(none.collected.iter().any(|b| b.name == "trainer/qa/state"));
    let left = names(&db);
    assert!(
        under(&left, "trainer/")
            .iter()
            .eq(["trainer/qa/notes"].iter())
    );
    assert!(left.contains("notes/x"));
    for name in generation_encoders(&db) {
        assert!(left.contains(&name), "{name}");
    }
    assert_everything_loads(&db, &questions[0].question);
}

#[test]
fn an_unfinished_run_keeps_its_checkpoint_and_resumes_after_gc() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let db = retriever.db().clone();
    // Checkpoints at steps 2 (slot a) and 4 (slot b); stopped after step 4.
    let mut trainer = qa_trainer(&retriever, &questions, 6);
    let (report, _) = train(&mut trainer, Some(4));
    assert_eq!(report.final_step, 4);
    drop(trainer);
    let stopped = state(&db, "qa");
    assert!(!stopped.finished);
    assert_eq!(stopped.optimizer_blob, "trainer/qa/optimizer-b");

    let before = names(&db);
    db.gc(0).unwrap();
    let report = collect_blobs(&db, &BlobGcOptions { keep_runs: Some(0) }).unwrap();
    // Collected: the superseded optimizer slot, and step 2's query tower and reader.
    let collected: Vec<&str> = report.collected.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(collected.len(), 3, "{collected:?}");
    assert!(collected.contains(&"trainer/qa/optimizer-a"));
    assert_eq!(
        collected
            .iter()
            .filter(|n| n.starts_with(ENCODER_BLOB_PREFIX))
            .count(),
        1
    );
    assert_eq!(
        collected
            .iter()
            .filter(|n| n.starts_with("reader/"))
            .count(),
        1
    );
    let after = names(&db);
    assert_eq!(before.len(), after.len() + 3);
    for kept in [
        "trainer/qa/state".to_owned(),
        stopped.optimizer_blob.clone(),
        format!("{ENCODER_BLOB_PREFIX}{}", stopped.query_checkpoint),
        format!("reader/{}", stopped.reader_checkpoint.clone().unwrap()),
    ] {
        assert!(after.contains(&kept), "{kept}");
    }

    // A new trainer resumes from the checkpoint and finishes.
    let mut resumed = qa_trainer(&retriever, &questions, 6);
    assert_eq!(resumed.step(), 4);
    let (report, events) = train(&mut resumed, None);
    assert_eq!(events[0], Event::Resumed { step: 4 });
    assert_eq!(report.final_step, 6);
    drop(resumed);
    // Finished now: both optimizer slots go; keep_runs = 0 collects the state too.
    assert!(state(&db, "qa").finished);
    collect_blobs(&db, &BlobGcOptions::default()).unwrap();
    assert!(under(&names(&db), "trainer/qa/optimizer").is_empty());
    assert!(db.has_blob("trainer/qa/state").unwrap());
    let report = collect_blobs(&db, &BlobGcOptions { keep_runs: Some(0) }).unwrap();
    assert!(
        report
            .collected
            .iter()
            .any(|b| b.name == "trainer/qa/state")
    );
    assert_everything_loads(&db, &questions[0].question);
}

/// A 4-step phrase run over every town.
fn phrase_config(run: &str, checkpoint_every: u64) -> TrainConfig {
    TrainConfig {
        mode: Mode::Phrase,
        steps: 4,
        batch: 8,
        lr: 1e-3,
        candidates: 32,
        checkpoint_every,
        run: run.to_owned(),
        ..TrainConfig::default()
    }
}

#[test]
fn gc_collects_unnamed_phrase_encoders_and_keeps_those_of_phrase_generations_and_runs() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let first = tiny_phrase_encoder(8, 1);
    let first_generation = retriever
        .build_phrase_generation(&first, PhraseBuildOptions::default())
        .unwrap();
    let orphan = retriever
        .store_phrase_encoder(&tiny_phrase_encoder(8, 2))
        .unwrap();
    let mut trainer = Trainer::new_with_phrase_encoder(
        retriever.clone(),
        phrase_config("phrase", 1),
        questions,
        Vec::new(),
        tiny_phrase_encoder(8, 3),
    )
    .unwrap();
    let (report, _) = train(&mut trainer, None);
    let published = report
        .phrase_generation
        .expect("a published phrase generation");
    let trained = trainer.phrase_encoder().unwrap().fingerprint().unwrap();
    let db = retriever.db();
    assert_eq!(
        state(db, "phrase").phrase_checkpoint.as_deref(),
        Some(trained.as_str())
    );
    let phrase_blob = |id: &str| format!("{PHRASE_ENCODER_BLOB_PREFIX}{id}");
    let before: BTreeSet<String> = under(&names(db), PHRASE_ENCODER_BLOB_PREFIX)
        .into_iter()
        .map(str::to_owned)
        .collect();
    // The first encoder, the orphan, and the checkpoints of steps 1 to 3 and 4.
    assert_eq!(before.len(), 6, "{before:?}");

    let gc = collect_blobs(db, &BlobGcOptions::default()).unwrap();
    let after: BTreeSet<String> = under(&names(db), PHRASE_ENCODER_BLOB_PREFIX)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let kept: BTreeSet<String> = [
        phrase_blob(&first.fingerprint().unwrap()),
        phrase_blob(&trained),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        after, kept,
        "the encoders of the phrase generations and of the run"
    );
    let collected: BTreeSet<&str> = gc.collected.iter().map(|b| b.name.as_str()).collect();
    assert!(collected.contains(phrase_blob(&orphan).as_str()));
    assert_eq!(
        before.difference(&after).count(),
        4,
        "the orphan and three superseded checkpoints"
    );
    // A stopped run keeps the phrase encoder its state names, and resumes after gc.
    let (_, questions) = realm_testing_torch::towns();
    let paused = |stop: Option<u64>| {
        let mut trainer = Trainer::new_with_phrase_encoder(
            retriever.clone(),
            phrase_config("paused", 0),
            questions.clone(),
            Vec::new(),
            tiny_phrase_encoder(8, 4),
        )
        .unwrap();
        train(&mut trainer, stop).0
    };
    assert_eq!(paused(Some(2)).final_step, 2);
    let named = state(db, "paused").phrase_checkpoint.unwrap();
    collect_blobs(db, &BlobGcOptions::default()).unwrap();
    assert!(
        db.has_blob(&phrase_blob(&named)).unwrap(),
        "a stopped run's encoder went"
    );
    assert_eq!(paused(None).final_step, 4);

    // Both phrase generations, the retired one too, still load and search.
    for generation in [first_generation, published] {
        let searcher = retriever.phrase_searcher_at(generation).unwrap();
        assert!(
            !searcher
                .search("which crop is farmed in quimbo", &Default::default())
                .unwrap()
                .is_empty()
        );
    }
}
