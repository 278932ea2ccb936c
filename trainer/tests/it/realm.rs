//! REALM MLM pre-training with salient-span masking, a tiny random query tower, document
//! tower and reader and the real MiniLM tokenizer (CPU). Each masked fact of the synthetic
//! corpus appears only in another passage (the sentence's own passage is never retrieved),
//! so only retrieval can recover it. Each test holds the global RNG lock, so that no other
//! test draws from libtorch's global generator (dropout) while it runs.

use realm_reader::store::current_reader;
use realm_reader::{Reader, ReaderConfig};
use realm_retriever::Retriever;
use realm_retriever::bert::BertConfig;
use realm_storage::NewPassage;
use realm_testing_torch::{
    global_rng_lock, indexed_retriever, pick, reader_config, tiny_bert, tiny_reader, tokenizer,
    train,
};
use realm_trainer::{Event, Mode, TrainConfig, Trainer};

const PLACES: [(&str, &str); 8] = [
    ("Zorblat", "London"),
    ("Quimbo", "Paris"),
    ("Frelkin", "Berlin"),
    ("Vastrop", "Madrid"),
    ("Glimmar", "Rome"),
    ("Drovnik", "Vienna"),
    ("Pelquor", "Cairo"),
    ("Skavitz", "Tokyo"),
];

/// A small reader that can learn to read a passage within a test's budget: BERT's tiny
/// configuration drops 10% of 32 dimensions and never learns to copy from the passage.
fn reading_reader(seed: i64) -> Reader {
    let bert = BertConfig {
        hidden_size: 64,
        num_attention_heads: 4,
        intermediate_size: 128,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..tiny_bert()
    };
    Reader::random(bert, tokenizer(), reader_config(64), seed).expect("a small reader builds")
}

/// Two passages per place, each stating the place's capital: a masked capital (or place)
/// in one is recoverable only from the other.
fn setup(dir: &std::path::Path) -> Retriever {
    let mut passages = Vec::new();
    for (i, (place, capital)) in PLACES.iter().enumerate() {
        passages.push(
            NewPassage::new(
                *place,
                format!("It is a land. The capital of {place} is {capital}."),
            )
            .with_external_id(format!("a{i}")),
        );
        passages.push(
            NewPassage::new(
                *capital,
                format!("Many roads lead there. The capital of {place} is {capital}."),
            )
            .with_external_id(format!("b{i}")),
        );
    }
    indexed_retriever(dir, &passages, 0)
}

/// A REALM trainer (no labels) with `reader`.
fn new_trainer(
    retriever: &Retriever,
    cfg: TrainConfig,
    reader: Reader,
) -> realm_trainer::Result<Trainer> {
    Trainer::new_with_reader(retriever.clone(), cfg, Vec::new(), Vec::new(), Some(reader))
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        mode: Mode::Realm,
        steps,
        batch: 8,
        lr: 1e-5,
        reader_lr: 3e-3,
        reader_passages: 15,
        refresh_every: 1000,
        checkpoint_every: 0,
        run: "realm".to_owned(),
        ..TrainConfig::default()
    }
}

/// Held-out sentences (not in the corpus; no passage excluded) naming each capital.
fn held_out() -> Vec<String> {
    PLACES
        .iter()
        .map(|(place, capital)| format!("The capital of {place} is {capital}."))
        .collect()
}

/// The mechanics on a small world the reader can memorize (every held-out sentence is also a
/// training sentence, so retrieval cannot beat the null document here; see
/// `realm_retrieval_beats_the_null_document_on_held_out_articles` for that claim): the loss
/// and the held-out likelihood improve, a utility is reported per step, a generation is
/// published and the reader becomes current.
#[test]
fn realm_training_runs_and_reports_utility() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let retriever = setup(dir.path());
    let steps = 120;
    let mut trainer =
        new_trainer(&retriever, config(steps), tiny_reader(1, reader_config(64))).unwrap();
    assert_eq!(trainer.examples(), 16);
    let held = held_out();
    let sentences: Vec<(u64, &str)> = held.iter().map(|s| (u64::MAX, s.as_str())).collect();
    let (before_with, before_null, n) = trainer
        .realm_log_likelihood(&sentences, 7)
        .unwrap()
        .unwrap();
    assert_eq!(n, 8);
    let (report, events) = train(&mut trainer, None);
    let (with, null, _) = trainer
        .realm_log_likelihood(&sentences, 7)
        .unwrap()
        .unwrap();
    let utilities: Vec<f64> = pick!(events, Event::RealmBatch { utility, .. } => *utility);
    let losses: Vec<f64> = pick!(events, Event::Step { loss, .. } => *loss);
    eprintln!(
        "before: with {before_with:.3} null {before_null:.3}; after: with {with:.3} null {null:.3}; \
         loss {:.3} -> {:.3}; utility {:.3} -> {:.3}",
        losses[0],
        losses[losses.len() - 1],
        utilities[0],
        utilities[utilities.len() - 1]
    );
    assert_eq!(utilities.len() as u64, steps);
    assert!(utilities.iter().all(|u| u.is_finite()));
    assert!(losses[losses.len() - 1] < losses[0] / 2.0, "{losses:?}");
    assert!(with > before_with + 5.0, "{before_with} -> {with}");
    assert!(null.is_finite());
    // The run publishes a final generation and makes its reader current.
    assert_eq!(report.generations_published.len(), 1);
    let (id, _) = current_reader(&retriever, ReaderConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!(Some(id), report.reader_checkpoint);
}

#[test]
fn realm_run_stops_and_resumes() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let retriever = setup(dir.path());
    let cfg = TrainConfig {
        reader_passages: 3,
        refresh_every: 2,
        ..config(4)
    };
    let mut first =
        new_trainer(&retriever, cfg.clone(), tiny_reader(1, reader_config(64))).unwrap();
    let (report, _) = train(&mut first, Some(3));
    assert_eq!(report.final_step, 3);
    assert_eq!(report.reader_checkpoint, None);
    drop(first);
    let mut second = new_trainer(&retriever, cfg, tiny_reader(2, reader_config(64))).unwrap();
    let (report, events) = train(&mut second, None);
    assert!(matches!(events[0], Event::Resumed { step: 3 }));
    assert_eq!(report.steps_run, 1);
    assert!(report.reader_checkpoint.is_some());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RealmBatch { step: 4, .. }))
    );
}

/// A world of made-up places, two passages each (same title, the article), each stating the
/// place's founding year; `held_out` of the articles are held out of training.
fn founding_world(dir: &std::path::Path, places: usize) -> Retriever {
    let syllables = ["ka", "lo", "mi", "ru", "ze", "pa", "ti", "vo"];
    let mut passages = Vec::new();
    for i in 0..places {
        let name = format!(
            "{}{}{}",
            syllables[i % 8],
            syllables[(i / 8) % 8],
            syllables[(i / 64) % 8]
        );
        let place = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        let year = 1850 + (i * 7919 + 13) % 170;
        for (j, lead) in ["It is a land.", "Many roads lead there."]
            .iter()
            .enumerate()
        {
            passages.push(
                NewPassage::new(
                    place.as_str(),
                    format!("{lead} {place} was founded in {year}."),
                )
                .with_external_id(format!("{i}-{j}")),
            );
        }
    }
    indexed_retriever(dir, &passages, 0)
}

/// Held-out articles: their sentences are never trained on, and their retrieval utility is
/// reported at each evaluation with the same masks every time.
#[test]
fn realm_holds_out_whole_articles_and_scores_them() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let retriever = founding_world(dir.path(), 40);
    let cfg = TrainConfig {
        held_out: 0.25,
        eval_every: 3,
        reader_passages: 2,
        ..config(6)
    };
    for bad in [1.0, -0.1, f64::NAN] {
        let err = new_trainer(
            &retriever,
            TrainConfig {
                held_out: bad,
                ..cfg.clone()
            },
            tiny_reader(1, reader_config(64)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("held-out fraction"), "{err}");
    }
    let mut trainer =
        new_trainer(&retriever, cfg.clone(), tiny_reader(1, reader_config(64))).unwrap();
    let held: Vec<(u64, String)> = trainer
        .held_out_sentences()
        .into_iter()
        .map(|(id, s)| (id, s.to_owned()))
        .collect();
    // Whole articles: both passages of a held-out place, and nothing else.
    assert!(!held.is_empty() && held.len() < 40, "{held:?}");
    assert_eq!(held.len() % 2, 0);
    assert_eq!(trainer.examples() + held.len(), 80);
    let snapshot = retriever.snapshot().unwrap();
    let titles: std::collections::BTreeSet<String> = held
        .iter()
        .map(|(id, _)| snapshot.storage().get(*id).unwrap().unwrap().title)
        .collect();
    assert_eq!(titles.len() * 2, held.len());
    // The split depends only on the titles and the seed.
    let again = new_trainer(
        &retriever,
        TrainConfig {
            run: "again".to_owned(),
            ..cfg.clone()
        },
        tiny_reader(1, reader_config(64)),
    )
    .unwrap();
    assert_eq!(again.held_out_sentences().len(), held.len());
    drop(again);
    let (_, events) = train(&mut trainer, None);
    let reports = pick!(
        events,
        Event::RealmHeldOut { step, sentences, with_retrieval, null_only, utility }
            => (*step, *sentences, *with_retrieval, *null_only, *utility)
    );
    let trained = pick!(events, Event::RealmBatch { sentences, .. } => *sentences);
    assert_eq!(
        reports.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 3, 6],
        "{reports:?}"
    );
    for &(_, sentences, with, null, utility) in &reports {
        assert_eq!(sentences, held.len());
        assert!(with.is_finite() && null.is_finite() && with < 0.0 && null < 0.0);
        assert!((utility - (with - null)).abs() < 1e-9);
    }
    assert_eq!(trained, vec![8; 6]);
    // Scoring is deterministic: the trainer's own held-out score equals the last report.
    let sentences: Vec<(u64, &str)> = held.iter().map(|(id, s)| (*id, s.as_str())).collect();
    let (with, null, n) = trainer
        .realm_log_likelihood(&sentences, cfg.seed)
        .unwrap()
        .unwrap();
    assert_eq!(n, held.len());
    let last = reports.last().unwrap();
    assert!((with - last.2).abs() < 1e-6 && (null - last.3).abs() < 1e-6);
}

/// REALM's claim on a synthetic world where every held-out fact is stated only in other
/// passages of its own (never trained on) article: after pre-training, MLM with retrieval
/// beats the same model reading only the null document on the held-out masks. 1,000 places,
/// 10% of the articles held out (196 sentences), one retrieved passage (k = 1) plus the null
/// document, the small dropout-free reader; measured margins: +0.01 nats at step 400, +0.13
/// at 600, +0.30 at 800, +0.64 at 1,000.
#[test]
fn realm_retrieval_beats_the_null_document_on_held_out_articles() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let retriever = founding_world(dir.path(), 1000);
    let cfg = TrainConfig {
        held_out: 0.1,
        reader_passages: 1,
        reader_lr: 1e-3,
        ..config(1000)
    };
    let mut trainer = new_trainer(&retriever, cfg, reading_reader(1)).unwrap();
    let (_, events) = train(&mut trainer, None);
    let reports = pick!(
        events,
        Event::RealmHeldOut { with_retrieval, null_only, .. } => (*with_retrieval, *null_only)
    );
    let (first, last) = (reports[0], reports[reports.len() - 1]);
    eprintln!("held-out log p(y|x) (with retrieval, null only): {first:?} -> {last:?}");
    assert!(last.0 > first.0 + 2.0, "{reports:?}");
    assert!(
        last.0 > last.1 + 0.3,
        "retrieval must beat the null document on held-out masks: {reports:?}"
    );
}
