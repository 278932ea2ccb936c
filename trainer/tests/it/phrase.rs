//! Phrase training (DensePhrases §4) on the towns' world: trained from the towns' question
//! and answer pairs, a tiny phrase encoder answers them by phrase retrieval far better
//! than before; the run publishes its phrase generation; a stopped run resumes
//! bit-identically; pairs without answer strings are refused. On the painters' world,
//! self-supervised cloze examples alone (no question-answer pair) raise phrase exact match.
//! Distillation pulls the phrase model's start and end distributions toward a reader's.

use realm_retriever::Retriever;
use realm_retriever::phrase::PhraseEncoder;
use realm_storage::Dtype;
use realm_testing_torch::{
    build_phrases_f32, env_or, global_rng_lock, indexed_retriever, painters, phrase_exact_match,
    pick, qa, reader_config, tiny_phrase_encoder, tiny_reader, towns, towns_retriever, train,
};
use realm_trainer::{Error, Event, Mode, PHRASE_NOTE, TrainConfig, Trainer};

fn phrase_encoder(seed: i64) -> PhraseEncoder {
    tiny_phrase_encoder(16, seed)
}

fn config(seed: u64, steps: u64, run: &str) -> TrainConfig {
    TrainConfig {
        mode: Mode::Phrase,
        steps,
        batch: 8,
        lr: 1e-3,
        // Every passage of the world is a candidate.
        candidates: 32,
        hard_negatives: 1,
        prebatch: 1,
        seed,
        checkpoint_every: 0,
        run: run.to_owned(),
        ..TrainConfig::default()
    }
}

/// Measured on CPU with 150 steps (`PHRASE_SEED` picks the seed, `PHRASE_STEPS` the steps
/// and `PHRASE_LR` the learning rate): phrase exact match rose from 0 to 1.0, 0.94 and 0.875
/// for seeds 0, 1 and 2 (with the query heads on `[CLS]` instead of the mean of the
/// question's tokens it stayed at 0.03: every question got one passage's answer). The
/// default seed, deterministic on the CPU, must rise by half the questions.
#[test]
fn phrase_training_raises_phrase_exact_match_and_publishes_its_generation() {
    let _rng = global_rng_lock();
    let seed: u64 = env_or("PHRASE_SEED", 0);
    let steps: u64 = env_or("PHRASE_STEPS", 150);
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let untrained = phrase_encoder(seed as i64);
    let first = build_phrases_f32(&retriever, &untrained);
    let before = phrase_exact_match(&retriever, &questions);
    let mut cfg = config(seed, steps, "phrase");
    cfg.lr = env_or("PHRASE_LR", cfg.lr);
    let mut trainer = Trainer::new_with_phrase_encoder(
        retriever.clone(),
        cfg,
        questions.clone(),
        Vec::new(),
        untrained,
    )
    .unwrap();
    // Every answer is in its own town's passage, which every question retrieves.
    assert_eq!(trainer.examples(), 32);
    assert_eq!(trainer.dropped_examples(), 0);
    let (report, events) = train(&mut trainer, None);
    assert_eq!(report.final_step, steps);
    let skipped: usize = pick!(events, Event::PhraseBatch { skipped, .. } => *skipped)
        .into_iter()
        .sum();
    assert_eq!(skipped, 0, "every answer is a phrase of its passage");
    let losses = pick!(events, Event::Step { loss, .. } => *loss);
    let (head, tail) = (&losses[..10], &losses[losses.len() - 10..]);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    assert!(mean(tail) < mean(head), "the loss fell: {losses:?}");

    // The run published a phrase generation built by the trained encoder.
    let published = report
        .phrase_generation
        .expect("a published phrase generation");
    assert_ne!(published, first);
    let db = retriever.db();
    assert_eq!(db.current_phrase_generation().unwrap(), Some(published));
    let spec = db.phrase_generation(published).unwrap().spec;
    let trained = trainer
        .phrase_encoder()
        .expect("the trained phrase encoder");
    assert_eq!(spec.encoder_checkpoint_id, trained.fingerprint().unwrap());
    assert_eq!(
        spec.dtype,
        Dtype::F32,
        "the dtype of the previous generation"
    );
    assert!(spec.note.starts_with(PHRASE_NOTE), "{:?}", spec.note);
    let builds = pick!(events, Event::PhraseBuild { done, total } => (*done, *total));
    assert_eq!(builds.last(), Some(&(32, 32)));
    assert_eq!(
        pick!(events, Event::PhrasesPublished { generation, .. } => *generation),
        vec![published]
    );

    let after = phrase_exact_match(&retriever, &questions);
    eprintln!("seed {seed}, {steps} steps: phrase exact match {before} -> {after}");
    assert!(
        after >= before + 0.5,
        "phrase exact match rose only from {before} to {after}"
    );
}

fn resume_run(retriever: &Retriever, stop_at: Option<u64>) -> (u64, String, Option<u64>) {
    let (_, questions) = towns();
    let mut cfg = config(3, 6, "resume");
    cfg.checkpoint_every = 2;
    cfg.prebatch = 2;
    let mut trainer = Trainer::new_with_phrase_encoder(
        retriever.clone(),
        cfg,
        questions,
        Vec::new(),
        phrase_encoder(3),
    )
    .unwrap();
    let (report, _) = train(&mut trainer, stop_at);
    (
        report.final_step,
        trainer.phrase_encoder().unwrap().fingerprint().unwrap(),
        report.phrase_generation,
    )
}

#[test]
fn phrase_run_resumes_bit_identically() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 1);
    let (step, straight, published) = resume_run(&retriever, None);
    assert_eq!(step, 6);
    assert!(published.is_some());
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 1);
    let (step, stopped, published) = resume_run(&retriever, Some(3));
    assert_eq!(step, 3);
    assert_eq!(published, None, "a stopped run publishes nothing");
    assert_eq!(retriever.db().current_phrase_generation().unwrap(), None);
    assert_ne!(stopped, straight);
    let (step, resumed, published) = resume_run(&retriever, None);
    assert_eq!(step, 6);
    assert_eq!(resumed, straight, "the resumed phrase encoder differs");
    let spec = retriever
        .db()
        .phrase_generation(published.expect("published at the end"))
        .unwrap()
        .spec;
    assert_eq!(spec.encoder_checkpoint_id, resumed);
}

#[test]
fn phrase_training_refuses_pairs_without_answer_strings() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 0);
    let patterns_only = vec![qa(1, "which crop is farmed in quimbo", &[], &["beans?"])];
    let err = Trainer::new_with_phrase_encoder(
        retriever,
        config(0, 1, "patterns"),
        patterns_only,
        Vec::new(),
        phrase_encoder(0),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoData { .. }), "{err}");
    assert!(err.to_string().contains("answer strings"), "{err}");
}

/// Measured on CPU (`PHRASE_SPANS_SEED`, `PHRASE_SPANS_STEPS`): seed 0 rose from 0 to 0.56
/// in 100 steps; the default seed, deterministic on the CPU, must rise by 6 questions in 16.
#[test]
fn cloze_examples_alone_raise_phrase_exact_match() {
    let _rng = global_rng_lock();
    let seed: u64 = env_or("PHRASE_SPANS_SEED", 0);
    let steps: u64 = env_or("PHRASE_SPANS_STEPS", 100);
    let dir = tempfile::tempdir().unwrap();
    let (passages, questions) = painters();
    let retriever = indexed_retriever(dir.path(), &passages, 0);
    let untrained = phrase_encoder(seed as i64);
    build_phrases_f32(&retriever, &untrained);
    let before = phrase_exact_match(&retriever, &questions);
    let mut cfg = config(seed, steps, "cloze");
    cfg.phrase_spans = 1000;
    let mut trainer =
        Trainer::new_with_phrase_encoder(retriever.clone(), cfg, Vec::new(), Vec::new(), untrained)
            .unwrap();
    // Every passage is one sentence whose masked name the pair's other passage holds.
    assert_eq!(
        trainer.examples(),
        32,
        "one cloze example per passage, none of them a QA pair"
    );
    let (report, events) = train(&mut trainer, None);
    assert!(report.phrase_generation.is_some());
    let skipped: usize = pick!(events, Event::PhraseBatch { skipped, .. } => *skipped)
        .into_iter()
        .sum();
    assert_eq!(skipped, 0, "every masked span is a phrase of its positive");
    let after = phrase_exact_match(&retriever, &questions);
    eprintln!(
        "seed {seed}, {steps} steps of cloze examples: phrase exact match {before} -> {after}"
    );
    assert!(
        after >= before + 0.37,
        "phrase exact match rose only from {before} to {after}"
    );
}

/// The mean distillation divergence of the last 10 steps of a phrase run on the towns'
/// world with a tiny random reader as the teacher, at distillation weight `weight`.
fn distilled_divergence(weight: f64, steps: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let teacher = tiny_reader(7, reader_config(64));
    let id = realm_reader::store::store_reader(&retriever, &teacher).unwrap();
    realm_reader::store::set_current_reader(&retriever, &id).unwrap();
    let mut cfg = config(0, steps, "distill");
    cfg.distill = weight;
    let mut trainer =
        Trainer::new_with_phrase_encoder(retriever, cfg, questions, Vec::new(), phrase_encoder(0))
            .unwrap();
    let (_, events) = train(&mut trainer, None);
    let divergences: Vec<f64> = pick!(events, Event::PhraseBatch { distillation, .. } => distillation.expect("a divergence"));
    assert_eq!(divergences.len() as u64, steps);
    let tail = &divergences[divergences.len() - 10..];
    tail.iter().sum::<f64>() / tail.len() as f64
}

/// Measured on CPU with 40 steps: a mean KL of 0.64 with distillation (weight 1), 5.5
/// without; the divergence must at least halve. A weight of 1e-9 trains as without
/// distillation but still reports the divergence.
#[test]
fn distillation_pulls_the_phrase_model_toward_the_reader() {
    let _rng = global_rng_lock();
    let steps: u64 = env_or("DISTILL_STEPS", 40);
    let with = distilled_divergence(1.0, steps);
    let without = distilled_divergence(1e-9, steps);
    eprintln!("{steps} steps: KL from the reader {with} with distillation, {without} without");
    assert!(
        with < 0.5 * without,
        "distillation left the divergence at {with} (without: {without})"
    );
}

#[test]
fn distillation_needs_a_current_reader() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let mut cfg = config(0, 1, "distill");
    cfg.distill = 0.5;
    let err =
        Trainer::new_with_phrase_encoder(retriever, cfg, questions, Vec::new(), phrase_encoder(0))
            .unwrap_err();
    assert!(matches!(err, Error::NoData { .. }), "{err}");
    assert!(err.to_string().contains("current reader"), "{err}");
}
