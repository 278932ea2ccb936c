//! Query-side fine-tuning raises retrieval accuracy without changing the generation.

use realm_retriever::eval::AnswerMatcher;
use realm_testing_torch::{global_rng_lock, qa, towns_retriever, train};
use realm_trainer::{Event, Mode, QUERY_SIDE_NOTE, TrainConfig, Trainer};

#[test]
fn query_side_training_raises_top1_accuracy() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let before = retriever.snapshot().unwrap();
    let generation = before.generation_id().unwrap();
    let old_query = before.query_encoder().unwrap().fingerprint().unwrap();
    let config = TrainConfig {
        mode: Mode::QuerySide,
        steps: 60,
        batch: 8,
        lr: 1e-3,
        seed: 0,
        // At least the corpus size: every question has its positive among the candidates.
        candidates: 40,
        checkpoint_every: 0,
        run: "qs".to_owned(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(
        retriever.clone(),
        config,
        questions.clone(),
        questions.clone(),
    )
    .unwrap();
    assert_eq!(trainer.examples(), questions.len());
    assert_eq!(trainer.dropped_examples(), 0);
    let (report, events) = train(&mut trainer, None);
    let (first, last) = (report.first_eval.unwrap(), report.last_eval.unwrap());
    println!("top-1/5/20 before {first:?}, after {last:?}");
    // Measured over seeds 0..3: top-1 from 0.03–0.56 to 1.0 (smallest gain 0.44).
    assert!(
        last.0 >= 0.9 && last.0 - first.0 >= 0.4,
        "top-1 went from {} to {}",
        first.0,
        last.0
    );
    assert_eq!(report.steps_run, 60);
    assert_eq!(report.final_step, 60);
    assert_eq!(report.generation, generation);
    assert!(report.generations_published.is_empty());
    let steps = events
        .iter()
        .filter(
            |e| matches!(e, Event::Step { generation: g, staleness: 0, .. } if *g == generation),
        )
        .count();
    assert_eq!(steps, 60);
    assert!(matches!(
        events.first(),
        Some(Event::Started {
            start_step: 0,
            steps: 60,
            ..
        })
    ));

    // The generation is unchanged; a query-encoder version was attached to it.
    let version = report
        .query_encoder_version
        .expect("a version was attached");
    assert!(events.contains(&Event::QueryEncoderAttached {
        generation,
        version
    }));
    let db = retriever.db();
    assert_eq!(db.current_generation().unwrap(), Some(generation));
    let manifest = db.generation(generation).unwrap();
    let attached = manifest.query_encoder().unwrap();
    assert_eq!(attached.version, version);
    assert!(attached.note.starts_with(QUERY_SIDE_NOTE));
    let trained = trainer.query_encoder().fingerprint().unwrap();
    assert_eq!(attached.checkpoint_id, trained);
    assert_ne!(trained, old_query);

    // Searches now use the trained tower and reach the accuracy the trainer measured.
    let after = retriever.snapshot().unwrap();
    assert_eq!(after.generation_id(), Some(generation));
    assert_eq!(
        after.query_encoder().unwrap().fingerprint().unwrap(),
        trained
    );
    let mut correct = 0;
    for q in &questions {
        let hits = after.search(&q.question, 1).unwrap();
        if AnswerMatcher::new(q).unwrap().matches(&hits[0].text) {
            correct += 1;
        }
    }
    assert_eq!(correct as f64 / questions.len() as f64, last.0);
    // The snapshot taken before still queries with the old tower.
    assert_eq!(
        before.query_encoder().unwrap().fingerprint().unwrap(),
        old_query
    );

    // The run finished: a new trainer of the same run starts afresh, from the trained tower.
    let again = Trainer::new(
        retriever.clone(),
        TrainConfig {
            mode: Mode::QuerySide,
            steps: 1,
            candidates: 40,
            run: "qs".to_owned(),
            ..TrainConfig::default()
        },
        questions.clone(),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(again.step(), 0);
    assert_eq!(again.query_encoder().fingerprint().unwrap(), trained);
}

#[test]
fn bad_configs_and_unusable_data_are_refused() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 1);
    let zero_batch = TrainConfig {
        batch: 0,
        ..TrainConfig::default()
    };
    let err =
        Trainer::new(retriever.clone(), zero_batch, questions.clone(), Vec::new()).unwrap_err();
    assert!(matches!(err, realm_trainer::Error::Config { .. }), "{err}");
    // No question's answer occurs in the corpus.
    let hopeless = vec![qa(
        1,
        "which crop is farmed in zorblat",
        &["blue bananas"],
        &[],
    )];
    let err = Trainer::new(
        retriever.clone(),
        TrainConfig::default(),
        hopeless,
        Vec::new(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            realm_trainer::Error::NoPositives {
                examples: 1,
                candidates: 20
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("no training example has a positive passage")
    );
    // A corrupt state blob is named.
    retriever
        .db()
        .put_blob("trainer/default/state", b"{not json")
        .unwrap();
    let err = Trainer::new(retriever, TrainConfig::default(), questions, Vec::new()).unwrap_err();
    assert!(
        matches!(&err, realm_trainer::Error::CorruptState { blob, .. } if blob == "trainer/default/state"),
        "{err}"
    );
    assert_eq!("ict".parse::<Mode>().unwrap(), Mode::Ict);
    assert_eq!("query-side".parse::<Mode>().unwrap().name(), "query-side");
    assert!("mlm".parse::<Mode>().is_err());
}
