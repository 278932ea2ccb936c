//! ICT pre-training runs without labels and publishes a generation.

use realm_testing_torch::{env_or, global_rng_lock, pick, towns_retriever, train};
use realm_trainer::{Event, ICT_NOTE, Mode, TrainConfig, Trainer};

#[test]
fn ict_training_runs_and_publishes() {
    let _rng = global_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 3);
    let first = retriever.db().current_generation().unwrap().unwrap();
    let steps = env_or("ICT_STEPS", 40);
    let config = TrainConfig {
        mode: Mode::Ict,
        steps,
        batch: 8,
        lr: env_or("ICT_LR", 1e-3),
        checkpoint_every: 0,
        run: "ict".to_owned(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(retriever.clone(), config, Vec::new(), Vec::new()).unwrap();
    assert_eq!(trainer.examples(), 32);
    let (report, events) = train(&mut trainer, None);
    let losses = pick!(events, Event::Step { loss, .. } => *loss);
    let published = pick!(events, Event::Published { generation, .. } => *generation);
    let quarter = losses.len() / 4;
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (early, late) = (
        mean(&losses[..quarter]),
        mean(&losses[losses.len() - quarter..]),
    );
    println!("ICT loss: first quarter {early:.4}, last quarter {late:.4}");
    assert!(late < early, "loss went from {early} to {late}");
    assert_eq!(published.len(), 1);
    assert_eq!(report.generations_published, published);
    let current = retriever.db().current_generation().unwrap().unwrap();
    assert!(current > first);
    assert_eq!(published, vec![current]);
    let manifest = retriever.db().generation(current).unwrap();
    assert_eq!(manifest.spec.provenance.note, ICT_NOTE);
    assert_eq!(manifest.spec.provenance.training_step, Some(steps));
}
