//! Running a trainer while recording its events.

use realm_trainer::{Control, Event, TrainReport, Trainer};

/// Runs `trainer` to the end, or stops it after step `stop_after`; returns the report and
/// every event, in order.
pub fn train(trainer: &mut Trainer, stop_after: Option<u64>) -> (TrainReport, Vec<Event>) {
    let mut events = Vec::new();
    let report = trainer
        .run(&mut |e| {
            events.push(e.clone());
            match e {
                Event::Step { step, .. } if Some(*step) == stop_after => Control::Stop,
                _ => Control::Continue,
            }
        })
        .expect("the training run");
    (report, events)
}

/// The values that `events` (a `Vec<Event>` or slice) carry in events matching a pattern,
/// in order: `pick!(events, Event::Step { loss, .. } => *loss)` is every step's loss.
#[macro_export]
macro_rules! pick {
    ($events:expr, $pattern:pat => $value:expr) => {
        $events
            .iter()
            .filter_map(|e| match e {
                $pattern => Some($value),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}
