//! Dual training publishes generations from a builder thread while searches run; every
//! search result comes from exactly one generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use realm_testing_torch::{global_rng_lock, pick, towns_retriever, train};
use realm_trainer::{DUAL_NOTE, Event, Mode, TrainConfig, Trainer};

#[test]
fn dual_training_publishes_generations_while_searches_run() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 2);
    let first = retriever.db().current_generation().unwrap().unwrap();
    // An indexed generation: every refresh publishes its successor with an index alike.
    let nlist = realm_retriever::IvfConfig {
        nlist: 2,
        ..Default::default()
    };
    retriever.build_index(first, &nlist, None).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|t| {
            let retriever = retriever.clone();
            let done = done.clone();
            let questions: Vec<String> = questions.iter().map(|q| q.question.clone()).collect();
            std::thread::spawn(move || {
                let mut checked = 0usize;
                let mut generations = std::collections::BTreeSet::new();
                let mut i = t;
                while !done.load(Ordering::SeqCst) || checked == 0 {
                    let snapshot = retriever.snapshot().unwrap();
                    let generation = snapshot.generation_id().unwrap();
                    generations.insert(generation);
                    let q = &questions[i % questions.len()];
                    i += 1;
                    let hits = snapshot.search(q, 5).unwrap();
                    assert_eq!(hits.len(), 5);
                    let encoder = snapshot.query_encoder().unwrap();
                    let qv: Vec<f32> =
                        Vec::try_from(encoder.encode(&[q.as_str()]).unwrap().view(-1)).unwrap();
                    for hit in hits {
                        assert_eq!(hit.generation, generation);
                        let dv = snapshot.storage().vector(hit.passage_id).unwrap().unwrap();
                        let dot: f32 = qv.iter().zip(&dv).map(|(a, b)| a * b).sum();
                        assert!(
                            (dot - hit.score).abs() < 1e-4,
                            "generation {generation}: score {} but q·d = {dot}",
                            hit.score
                        );
                        checked += 1;
                    }
                }
                (checked, generations)
            })
        })
        .collect();

    let config = TrainConfig {
        mode: Mode::Dual,
        steps: 8,
        batch: 8,
        lr: 1e-3,
        refresh_every: 2,
        candidates: 8,
        checkpoint_every: 4,
        run: "dual".to_owned(),
        ..TrainConfig::default()
    };
    let mut trainer =
        Trainer::new(retriever.clone(), config, questions.clone(), questions).unwrap();
    let (report, events) = train(&mut trainer, None);
    done.store(true, Ordering::SeqCst);
    let mut seen = std::collections::BTreeSet::new();
    for s in searchers {
        let (checked, generations) = s.join().unwrap();
        assert!(checked > 0);
        seen.extend(generations);
    }

    println!(
        "published {:?}, searches saw {seen:?}",
        report.generations_published
    );
    assert!(report.generations_published.len() >= 2, "{report:?}");
    let published = pick!(
        events,
        Event::Published { generation, weights_step, .. } => (*generation, *weights_step)
    );
    assert_eq!(
        published.iter().map(|p| p.0).collect::<Vec<_>>(),
        report.generations_published
    );
    // The first refresh (step 2) found the builder idle; the last one holds the final
    // weights.
    assert_eq!(published[0].1, 2);
    assert_eq!(published.last().unwrap().1, 8);
    assert!(published.iter().all(|(g, _)| *g > first));
    // Steps report staleness against the generation in use.
    for e in &events {
        if let Event::Step {
            step,
            generation,
            staleness,
            ..
        } = e
        {
            let weights = published
                .iter()
                .find(|(g, _)| g == generation)
                .map_or(0, |p| p.1);
            assert_eq!(*staleness, step - weights);
        }
    }

    let db = retriever.db();
    for &g in &report.generations_published {
        let indexes = db.indexes(g).unwrap();
        assert_eq!(indexes.len(), 1, "generation {g}: {indexes:?}");
        assert_eq!(indexes[0].nlist, 2);
        assert_eq!(indexes[0].entries, db.generation(g).unwrap().vector_count);
    }
    assert!(db.verify().unwrap().problems.is_empty());
    // The current generation holds the final towers.
    let current = db.current_generation().unwrap().unwrap();
    assert_eq!(Some(&current), report.generations_published.last());
    assert_eq!(report.generation, current);
    let manifest = db.generation(current).unwrap();
    assert_eq!(manifest.spec.provenance.training_step, Some(8));
    assert_eq!(manifest.spec.provenance.note, DUAL_NOTE);
    assert_eq!(
        manifest.spec.provenance.checkpoint_id.as_deref(),
        Some(
            trainer
                .document_encoder()
                .unwrap()
                .fingerprint()
                .unwrap()
                .as_str()
        )
    );
    assert_eq!(
        manifest.query_encoder().unwrap().checkpoint_id,
        trainer.query_encoder().fingerprint().unwrap()
    );
    assert!(report.last_eval.is_some());
}
