//! Self-supervised span pre-training of the reader on the painters' world: the masked
//! sentences point at real occurrences of their span in other passages, never at their own;
//! pre-training alone, with no question-answer pair, raises the reader's exact match on
//! questions about that world; a stopped run resumes bit-identically.

use realm_reader::store::current_reader;
use realm_reader::{Reader, SpanNormalization};
use realm_retriever::Retriever;
use realm_retriever::eval::{AnswerMatcher, normalize_answer};
use realm_storage::NewPassage;
use realm_testing_torch::{
    env_or, global_rng_lock, indexed_retriever, painters, pick, reader_config, tiny_reader, train,
};
use realm_trainer::{Event, Mode, SPAN_MASK, TrainConfig, Trainer};

/// The readers' token limit.
const MAX_LEN: usize = 96;

fn config(seed: u64, steps: u64, run: &str) -> TrainConfig {
    TrainConfig {
        mode: Mode::Spans,
        steps,
        batch: 8,
        reader_lr: 1e-3,
        reader_passages: 4,
        // Every passage of the world is a candidate.
        candidates: 32,
        seed,
        checkpoint_every: 0,
        run: run.to_owned(),
        ..TrainConfig::default()
    }
}

fn painters_retriever(dir: &std::path::Path) -> (Retriever, Vec<NewPassage>) {
    let (passages, _) = painters();
    (indexed_retriever(dir, &passages, 0), passages)
}

/// Exact match of `reader` on the painters' questions, each read from the painter's own
/// "lived in" passage and three other painters' (p(z|x) uniform).
fn exact_match(reader: &Reader, passages: &[NewPassage]) -> f64 {
    let (_, questions) = painters();
    let lived: Vec<&str> = passages
        .iter()
        .step_by(2)
        .map(|p| p.text.as_str())
        .collect();
    let mut correct = 0;
    for (i, q) in questions.iter().enumerate() {
        let read: Vec<(u64, &str, &str, f32)> = (0..4)
            .map(|j| {
                let k = (i + 5 * j) % lived.len();
                (k as u64, "", lived[k], 0.25)
            })
            .collect();
        let answer = reader.answer(&q.question, &read).expect("an answer");
        correct += usize::from(normalize_answer(&answer.text) == normalize_answer(&q.answers[0]));
    }
    correct as f64 / questions.len() as f64
}

#[test]
fn span_examples_point_at_real_occurrences_in_other_passages() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = painters_retriever(dir.path());
    let trainer = Trainer::new_with_reader(
        retriever.clone(),
        config(0, 1, "spans"),
        Vec::new(),
        Vec::new(),
        Some(tiny_reader(0, reader_config(MAX_LEN))),
    )
    .unwrap();
    let examples = trainer.span_examples();
    // Every passage is one sentence with two names, and the other passage of its painter
    // holds both, so every passage gives an example.
    assert_eq!(examples.len(), 32);
    assert_eq!(trainer.dropped_examples(), 0);
    let db = retriever.db().snapshot().unwrap();
    let mut sources: Vec<u64> = examples.iter().map(|e| e.source).collect();
    sources.sort_unstable();
    sources.dedup();
    assert_eq!(sources.len(), 32, "one example per passage");
    for e in examples {
        let source = db.get(e.source).unwrap().expect("the source passage");
        // The question is the source sentence with the span masked.
        assert_eq!(
            e.question.replacen(SPAN_MASK, &e.answer, 1),
            source.text,
            "{e:?}"
        );
        assert!(!e.question.contains(&e.answer), "{e:?}");
        let matcher = AnswerMatcher::from_answers(&[e.answer.as_str()]);
        assert!(!e.positives.is_empty());
        for &(id, _) in &e.positives {
            assert_ne!(id, e.source, "the source passage is never read");
            let text = db.get(id).unwrap().unwrap().text;
            assert!(text.contains(&e.answer), "{:?} not in {text:?}", e.answer);
            assert!(matcher.matches(&text));
        }
        // The only other passage naming this painter or town is the pair's other one.
        assert_eq!(e.positives.len(), 1, "{e:?}");
        assert_eq!(e.negatives.len(), 3);
        for &(id, _) in &e.negatives {
            assert_ne!(id, e.source);
            assert!(!db.get(id).unwrap().unwrap().text.contains(&e.answer));
        }
    }
    // Both names of a passage get masked somewhere: the spans are not all of one kind.
    let towns = examples
        .iter()
        .filter(|e| e.question.contains("town of [MASK]"))
        .count();
    assert!((1..32).contains(&towns), "{towns} of 32 mask the town");
}

/// Measured on CPU with 60 steps (`SPANS_SEED` picks the seed, default 0; `SPANS_STEPS` and
/// `SPANS_K` the steps and passages read): exact match rose from 0 to 0.3125 and 0.25 for
/// seeds 0 and 1 and 0.125 for seed 2 (reading 2 passages instead of 4 for 100 steps: 0.1875
/// for seed 0); the default seed, deterministic on the CPU, must rise by
/// 3 questions in 16.
#[test]
fn span_pretraining_raises_exact_match_without_labels() {
    let _rng = global_rng_lock();
    let seed: u64 = env_or("SPANS_SEED", 0);
    let dir = tempfile::tempdir().unwrap();
    let (retriever, passages) = painters_retriever(dir.path());
    let reader = tiny_reader(seed as i64, reader_config(MAX_LEN));
    let before = exact_match(&reader, &passages);
    let steps = env_or("SPANS_STEPS", 60);
    let mut cfg = config(seed, steps, "spans");
    cfg.reader_passages = env_or("SPANS_K", 4);
    let mut trainer =
        Trainer::new_with_reader(retriever.clone(), cfg, Vec::new(), Vec::new(), Some(reader))
            .unwrap();
    let (report, events) = train(&mut trainer, None);
    assert_eq!(report.final_step, steps);
    let skipped: usize = pick!(events, Event::SpanBatch { skipped, .. } => *skipped)
        .into_iter()
        .sum();
    assert_eq!(skipped, 0);
    let (_, trained) = current_reader(&retriever, reader_config(MAX_LEN))
        .unwrap()
        .expect("the trained reader is current");
    assert_eq!(trained.span_normalization(), SpanNormalization::Joint);
    let after = exact_match(&trained, &passages);
    eprintln!("seed {seed}: exact match {before} -> {after}");
    assert!(
        after >= before + 0.18,
        "exact match rose only from {before} to {after}"
    );
}

fn resume_run(retriever: &Retriever, stop_at: Option<u64>) -> (u64, String) {
    let mut cfg = config(5, 6, "resume");
    cfg.checkpoint_every = 3;
    let mut trainer = Trainer::new_with_reader(
        retriever.clone(),
        cfg,
        Vec::new(),
        Vec::new(),
        Some(tiny_reader(5, reader_config(MAX_LEN))),
    )
    .unwrap();
    let (report, _) = train(&mut trainer, stop_at);
    (
        report.final_step,
        trainer.reader().unwrap().fingerprint().unwrap(),
    )
}

#[test]
fn span_run_resumes_bit_identically() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = painters_retriever(dir.path());
    let (step, straight) = resume_run(&retriever, None);
    assert_eq!(step, 6);
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = painters_retriever(dir.path());
    let (step, stopped) = resume_run(&retriever, Some(3));
    assert_eq!(step, 3);
    assert_ne!(stopped, straight);
    let (step, resumed) = resume_run(&retriever, None);
    assert_eq!(step, 6);
    assert_eq!(resumed, straight, "the resumed reader differs");
}
