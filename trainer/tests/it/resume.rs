//! A run stopped at a checkpoint and resumed ends with the same weights as an uninterrupted
//! one (CPU, same seed). Holds the global RNG lock, so that no other test draws from
//! libtorch's global generator (dropout) while it runs.

use realm_testing_torch::{global_rng_lock, pick, towns_retriever, train};
use realm_trainer::{Event, Mode, TrainConfig, Trainer};

fn config(seed: u64) -> TrainConfig {
    TrainConfig {
        mode: Mode::QuerySide,
        steps: 12,
        batch: 8,
        lr: 1e-3,
        seed,
        candidates: 40,
        hard_negatives: 2,
        prebatch: 2,
        checkpoint_every: 4,
        run: "resume".to_owned(),
        ..TrainConfig::default()
    }
}

/// Runs to the end; returns the query tower's fingerprint and the attached checkpoint id.
fn uninterrupted(seed: u64) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let mut trainer = Trainer::new(retriever.clone(), config(seed), questions, Vec::new()).unwrap();
    let (report, _) = train(&mut trainer, None);
    assert_eq!(report.final_step, 12);
    let generation = retriever.db().current_generation().unwrap().unwrap();
    let manifest = retriever.db().generation(generation).unwrap();
    (
        trainer.query_encoder().fingerprint().unwrap(),
        manifest.query_encoder().unwrap().checkpoint_id.clone(),
    )
}

#[test]
fn a_stopped_run_resumes_from_its_checkpoint() {
    let _rng = global_rng_lock();
    let (a, a_attached) = uninterrupted(5);
    assert_eq!(a, a_attached);
    // Same seed, fresh database: identical weights.
    assert_eq!(uninterrupted(5).0, a);
    // Another seed: other weights.
    assert_ne!(uninterrupted(6).0, a);

    let dir = tempfile::tempdir().unwrap();
    let (retriever, questions) = towns_retriever(dir.path(), 0);
    let k = 4;
    let mut trainer =
        Trainer::new(retriever.clone(), config(5), questions.clone(), Vec::new()).unwrap();
    let (report, events) = train(&mut trainer, Some(k));
    let checkpoints: Vec<u64> = pick!(events, Event::Checkpoint { step } => *step);
    assert_eq!((report.steps_run, report.final_step), (k, k));
    assert_eq!(report.query_encoder_version, None);
    assert_eq!(checkpoints, vec![k]);
    assert!(retriever.db().has_blob("trainer/resume/state").unwrap());
    // Stopping attached nothing.
    let generation = retriever.db().current_generation().unwrap().unwrap();
    assert!(
        retriever
            .db()
            .generation(generation)
            .unwrap()
            .query_encoder()
            .is_none()
    );
    drop(trainer);

    // A new trainer on the same database resumes at step k and finishes.
    let mut resumed = Trainer::new(retriever.clone(), config(5), questions, Vec::new()).unwrap();
    assert_eq!(resumed.step(), k);
    let (report, events) = train(&mut resumed, None);
    assert_eq!(events[0], Event::Resumed { step: k });
    assert!(matches!(
        events[1],
        Event::Started {
            start_step: 4,
            steps: 12,
            ..
        }
    ));
    assert_eq!((report.steps_run, report.final_step), (12 - k, 12));
    let b = resumed.query_encoder().fingerprint().unwrap();
    assert_eq!(
        b, a,
        "the resumed run's weights differ from the uninterrupted run's"
    );
    let manifest = retriever.db().generation(generation).unwrap();
    assert_eq!(manifest.query_encoder().unwrap().checkpoint_id, a);
}
