//! `realm-db train`: trains the retriever on the live database. Readers keep searching (as
//! followers, from other processes) and see each generation or query encoder as it is
//! published.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use realm_db::retriever::eval::read_qa_file;
use realm_db::trainer::{Control, Event, Mode, TrainConfig, Trainer};

use super::{Env, say};
use crate::cli::{TrainArgs, TrainModeArg};
use crate::error::user;
use crate::open;
use crate::output::json_line;
use crate::plot::{TrainingCurves, plot_training};
use crate::progress;

impl From<TrainModeArg> for Mode {
    fn from(m: TrainModeArg) -> Self {
        match m {
            TrainModeArg::QuerySide => Mode::QuerySide,
            TrainModeArg::Dual => Mode::Dual,
            TrainModeArg::Ict => Mode::Ict,
            TrainModeArg::Qa => Mode::Qa,
            TrainModeArg::Spans => Mode::Spans,
            TrainModeArg::Realm => Mode::Realm,
            TrainModeArg::Phrase => Mode::Phrase,
            TrainModeArg::PhraseQuery => Mode::PhraseQuery,
        }
    }
}

pub fn run(args: &TrainArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let mode = Mode::from(args.mode);
    let train = match (&args.qa, args.mode) {
        (Some(path), _) => read_qa_file(path)?,
        (None, TrainModeArg::Ict | TrainModeArg::Spans | TrainModeArg::Realm) => Vec::new(),
        (None, _) => {
            return Err(user(format!(
                "--mode {} learns from question-answer pairs; pass them with --qa FILE",
                mode.name()
            )));
        }
    };
    let eval = match &args.eval {
        Some(path) => read_qa_file(path)?,
        None => Vec::new(),
    };
    let retriever = open::open_writer(&args.dir, env.retriever_options()?)?;
    let config = TrainConfig {
        mode,
        steps: args.steps,
        batch: args.batch as usize,
        lr: args.lr,
        refresh_every: args.refresh_every,
        seed: args.seed,
        candidates: args.candidates,
        hard_negatives: args.hard_negatives,
        prebatch: args.prebatch,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        run: args.run.clone(),
        scale: args.scale,
        reader_lr: args.reader_lr,
        reader_passages: args.reader_passages,
        reader_model: args.reader_model.clone(),
        held_out: args.held_out,
        span_normalization: args.span_normalization.into(),
        phrase_spans: args.phrase_spans,
        distill: args.distill,
    };
    let mut trainer = Trainer::new(retriever, config, train, eval)?;

    // Ctrl-C stops after the current step, with a checkpoint to resume from.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A handler that cannot be installed (another one exists) only costs the graceful
        // stop; the run itself is unaffected.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let bar = progress::bar(
        args.steps,
        "train [{bar:30}] {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
    );
    let mut failure: Option<anyhow::Error> = None;
    let mut curves = TrainingCurves::default();
    let mut on_event = |event: &Event| -> Control {
        record(event, &mut curves);
        // Lines go out as they happen (a follower or a log reader watches them).
        let written = if args.json {
            bar.suspend(|| json_line(out, event))
        } else {
            describe(event, &bar, out)
        }
        .and_then(|()| Ok(out.flush()?));
        if let Err(e) = written {
            failure.get_or_insert(e);
            return Control::Stop;
        }
        if interrupted.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let report = trainer.run(&mut on_event);
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    let report = report?;
    if let Some(path) = &args.plot {
        let rates = match mode {
            Mode::Spans => format!("reader lr {}", args.reader_lr),
            Mode::Qa | Mode::Realm => format!("lr {}, reader lr {}", args.lr, args.reader_lr),
            _ => format!("lr {}", args.lr),
        };
        let title = format!(
            "realm-db train --mode {} ({} steps, batch {}, {rates})",
            mode.name(),
            report.final_step,
            args.batch,
        );
        plot_training(path, &title, &curves)?;
        if !args.json {
            say(
                out,
                format_args!("Wrote the training curve to {}.", path.display()),
            )?;
        }
    }
    if args.json {
        return Ok(());
    }
    if report.final_step < args.steps {
        say(
            out,
            format_args!(
                "Stopped at step {} of {}; run the same command again to resume from the checkpoint.",
                report.final_step, args.steps
            ),
        )?;
    }
    let what = match (report.query_encoder_version, report.phrase_generation) {
        (Some(v), _) if mode == Mode::PhraseQuery => format!(
            "generation {} and a phrase generation with query-encoder version {v}",
            report.generation
        ),
        (Some(v), _) => format!(
            "generation {} with query-encoder version {v}",
            report.generation
        ),
        (None, Some(phrases)) => format!(
            "generation {} and phrase generation {phrases}",
            report.generation
        ),
        (None, None) => format!("generation {}", report.generation),
    };
    say(
        out,
        format_args!(
            "Trained {} steps in {:.1} s; the database now serves {what}.",
            report.steps_run, report.seconds
        ),
    )?;
    if let (Some(first), Some(last)) = (report.first_eval, report.last_eval) {
        say(
            out,
            format_args!(
                "Eval top-1/5/20: {:.1} / {:.1} / {:.1} % before, {:.1} / {:.1} / {:.1} % after.",
                100.0 * first.0,
                100.0 * first.1,
                100.0 * first.2,
                100.0 * last.0,
                100.0 * last.1,
                100.0 * last.2
            ),
        )?;
    }
    Ok(())
}

/// Keeps what the training plot draws.
fn record(event: &Event, curves: &mut TrainingCurves) {
    match event {
        Event::Step { step, loss, .. } => curves.loss.push((*step, *loss)),
        Event::Eval {
            step,
            top1,
            top5,
            top20,
            ..
        } => curves.accuracy.push((*step, *top1, *top5, *top20)),
        Event::PhraseExactMatch {
            step,
            em,
            in_corpus_em,
            ..
        } => curves.exact_match.push((*step, *em, *in_corpus_em)),
        Event::Published { weights_step, .. } => curves.refreshes.push(*weights_step),
        _ => {}
    }
}

/// Shows one event: steps move the bar, everything else is a line above it.
fn describe(event: &Event, bar: &indicatif::ProgressBar, out: &mut dyn Write) -> Result<()> {
    let line = match event {
        Event::Step {
            step,
            loss,
            generation,
            staleness,
            ..
        } => {
            bar.set_position(*step);
            bar.set_message(format!(
                "loss {loss:.4}, generation {generation}, staleness {staleness}"
            ));
            return Ok(());
        }
        Event::Started {
            start_step,
            steps,
            examples,
            generation,
            ..
        } => {
            bar.set_position(*start_step);
            format!(
                "Training from step {start_step} to {steps} on {examples} examples, generation {generation}."
            )
        }
        Event::Resumed { step } => format!("Resuming from the checkpoint of step {step}."),
        Event::Eval {
            step,
            generation,
            questions,
            top1,
            top5,
            top20,
        } => format!(
            "step {step}: eval on {questions} questions, generation {generation}: top-1 {:.1}%, top-5 {:.1}%, top-20 {:.1}%",
            100.0 * top1,
            100.0 * top5,
            100.0 * top20
        ),
        Event::Published {
            generation,
            weights_step,
            seconds,
        } => format!(
            "Published generation {generation} (weights of step {weights_step}, built in {seconds:.1} s)."
        ),
        Event::QueryEncoderAttached {
            generation,
            version,
        } => format!("Attached query-encoder version {version} to generation {generation}."),
        Event::RealmBatch { step, utility, .. } => {
            bar.set_message(format!(
                "step {step}: retrieval utility {utility:.3} nats (log p(y|x) with retrieval minus with the null document)"
            ));
            return Ok(());
        }
        Event::RealmHeldOut {
            step,
            sentences,
            with_retrieval,
            null_only,
            utility,
        } => format!(
            "step {step}: held-out masked sentences ({sentences}): log p(y|x) {with_retrieval:.3} with retrieval, {null_only:.3} with the null document only, utility {utility:+.3} nats"
        ),
        Event::SpanBatch {
            step,
            sentences,
            skipped,
        } if *skipped > 0 => {
            bar.set_message(format!(
                "step {step}: {skipped} of {sentences} masked sentences had no readable span"
            ));
            return Ok(());
        }
        Event::PhraseBatch {
            step,
            distillation: Some(kl),
            ..
        } => {
            bar.set_message(format!(
                "step {step}: KL divergence from the reader's start and end distributions {kl:.4}"
            ));
            return Ok(());
        }
        Event::PhraseBatch {
            step,
            questions,
            skipped,
            ..
        } if *skipped > 0 => {
            bar.set_message(format!(
                "step {step}: {skipped} of {questions} questions had no answer phrase in the passage read"
            ));
            return Ok(());
        }
        Event::PhraseBuild { done, total } => {
            bar.set_message(format!(
                "building the phrase generation: {done} of {total} passages"
            ));
            return Ok(());
        }
        Event::PhraseQueryBatch {
            step,
            questions,
            skipped,
        } if *skipped > 0 => {
            bar.set_message(format!(
                "step {step}: {skipped} of {questions} questions retrieved no answer phrase"
            ));
            return Ok(());
        }
        Event::PhraseExactMatch {
            step,
            questions,
            em,
            in_corpus_em,
        } => format!(
            "step {step}: phrase exact match on {questions} questions: {:.1}%{}",
            100.0 * em,
            in_corpus_em.map_or_else(String::new, |ic| format!(" ({:.1}% in corpus)", 100.0 * ic))
        ),
        Event::PhraseQueryEncoderAttached {
            generation,
            version,
        } => format!("Attached query-encoder version {version} to phrase generation {generation}."),
        Event::PhrasesPublished {
            generation,
            seconds,
        } => format!(
            "Published phrase generation {generation} (built by the trained phrase encoder in {seconds:.1} s)."
        ),
        Event::Checkpoint { step } => format!("Checkpoint at step {step}."),
        Event::ExactMatch {
            step,
            questions,
            em,
            in_corpus_em,
        } => format!(
            "step {step}: reader exact match on {questions} questions: {:.1}%{}",
            100.0 * em,
            in_corpus_em.map_or_else(String::new, |ic| format!(" ({:.1}% in corpus)", 100.0 * ic))
        ),
        Event::ReaderStored { checkpoint } => format!(
            "Stored the reader ({}) as the database's current reader.",
            crate::output::short_hash(checkpoint)
        ),
        _ => return Ok(()),
    };
    bar.suspend(|| say(out, line))
}
