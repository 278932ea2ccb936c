//! The [`Trainer`]: it starts or resumes a run in one of the eight modes, drives the training
//! loop (events, evaluation, index refresh, checkpoints) and ends the run (attaching the
//! query tower to a generation or a phrase generation, publishing a generation or a phrase
//! generation, storing the reader). What
//! a step does lives in the mode's own module; what a run knows of its mode, in
//! `mode_state.rs`.

use std::fmt;
use std::time::Instant;

use realm_reader::Reader;
use realm_retriever::eval::QaExample;
use realm_retriever::phrase::PhraseEncoder;
use realm_retriever::{Encoder, Retriever};

use crate::adamw::AdamW;
use crate::builder::{Builder, Published, RefreshRequest};
use crate::checkpoint::{self, Resume, TowerCheckpoints};
use crate::config::{Control, Event, Mode, TrainConfig, TrainReport};
use crate::context::Context;
use crate::dual::Dual;
use crate::error::{Error, Result};
use crate::evaluation::EvalSet;
use crate::ict::Ict;
use crate::mode_state::{Given, ModeState};
use crate::phrase_query_side::PhraseQuerySide;
use crate::phrase_training::PhraseTraining;
use crate::qa::{Qa, exact_match};
use crate::query_side::QuerySide;
use crate::realm::Realm;
use crate::span_pretraining::{SpanExample, SpanPretraining};
use crate::state::TrainerState;
use crate::towers::{PhraseTower, ReaderTower, Tower};

/// Passes events to the caller's callback and remembers a request to stop.
struct Emitter<'a> {
    callback: &'a mut dyn FnMut(&Event) -> Control,
    stop: bool,
}

impl Emitter<'_> {
    fn emit(&mut self, event: Event) {
        if (self.callback)(&event) == Control::Stop {
            self.stop = true;
        }
    }
}

/// A training run on a live database; see the crate documentation for the modes.
pub struct Trainer {
    ctx: Context,
    mode: ModeState,
    /// Held-out questions.
    eval: EvalSet,
    /// The step the weights are at.
    step: u64,
    /// The step this trainer resumed from, until announced.
    resumed: Option<u64>,
    /// The optimizer slot the last checkpoint wrote.
    slot: char,
}

impl fmt::Debug for Trainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.ctx.config)
            .field("generation", &self.ctx.search.generation_id())
            .field("step", &self.step)
            .field("examples", &self.mode.examples())
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Prepares a run: loads or copies the towers, and for query-side and dual runs applies
    /// distant supervision to `train` (QA pairs whose top-`candidates` passages contain no
    /// answer are dropped; an error if none remains). `train` is ignored for ICT and REALM,
    /// which sample the database's passages. `eval` holds held-out questions for
    /// [`Event::Eval`] (may be empty).
    ///
    /// When the database holds an unfinished checkpoint of run `config.run` in the same
    /// mode, the run resumes from it ([`Event::Resumed`]); a finished run, or one of another
    /// mode, starts afresh from the current generation.
    ///
    /// QA runs use the examples' answer strings (examples with only answer patterns are
    /// dropped) and a fresh run starts from the database's current reader, or else from a
    /// reader loaded from `config.reader_model` (default: the default model folder).
    pub fn new(
        retriever: Retriever,
        config: TrainConfig,
        train: Vec<QaExample>,
        eval: Vec<QaExample>,
    ) -> Result<Trainer> {
        Trainer::new_with_reader(retriever, config, train, eval, None)
    }

    /// [`Trainer::new`], where a QA or REALM run that starts afresh begins from `reader`
    /// instead of the current or a loaded reader (tests use a tiny random one). A resumed
    /// run loads its checkpointed reader's weights with `reader`'s runtime settings.
    /// Ignored by the other modes.
    pub fn new_with_reader(
        retriever: Retriever,
        config: TrainConfig,
        train: Vec<QaExample>,
        eval: Vec<QaExample>,
        reader: Option<Reader>,
    ) -> Result<Trainer> {
        let given = Given {
            reader,
            ..Given::default()
        };
        Trainer::start(retriever, config, train, eval, given)
    }

    /// [`Trainer::new`], where a phrase run that starts afresh begins from `encoder` instead
    /// of the current phrase generation's encoder or one loaded from a model folder (tests
    /// use a tiny random one). Ignored by the other modes and by a resumed run.
    pub fn new_with_phrase_encoder(
        retriever: Retriever,
        config: TrainConfig,
        train: Vec<QaExample>,
        eval: Vec<QaExample>,
        encoder: PhraseEncoder,
    ) -> Result<Trainer> {
        let given = Given {
            phrase_encoder: Some(encoder),
            ..Given::default()
        };
        Trainer::start(retriever, config, train, eval, given)
    }

    fn start(
        retriever: Retriever,
        config: TrainConfig,
        train: Vec<QaExample>,
        eval: Vec<QaExample>,
        given: Given,
    ) -> Result<Trainer> {
        config.validate()?;
        let db = retriever.db().clone();
        let resume = Resume::find(&db, &config)?;
        let search = match (&resume, config.mode) {
            (
                Some(r),
                Mode::QuerySide | Mode::Qa | Mode::Spans | Mode::Phrase | Mode::PhraseQuery,
            ) => retriever.snapshot_at(r.state.generation)?,
            _ => retriever.snapshot()?,
        };
        let manifest = search
            .storage()
            .generation()
            .cloned()
            .ok_or(Error::NoGeneration)?;
        let query = match &resume {
            Some(r) => Tower::stored(&r.state.query_checkpoint, &retriever)?,
            None => Tower::copy_of(&*retriever.query_encoder(&manifest)?, &retriever)?,
        };
        let document = || match &resume {
            Some(r) => Tower::stored(r.document_checkpoint()?, &retriever),
            None => Tower::copy_of(&*retriever.document_encoder(&manifest)?, &retriever),
        };
        let resumed_state = resume.as_ref().map(|r| (&r.state, r.blob.as_str()));
        let start_reader = |given| ReaderTower::start(&retriever, &config, resumed_state, given);
        let mut ctx = Context {
            retriever: retriever.clone(),
            config: config.clone(),
            search,
            query,
            batch: 0,
        };
        let mut mode = match config.mode {
            Mode::QuerySide => ModeState::QuerySide(Box::new(QuerySide::new(&ctx, &train)?)),
            Mode::Dual => ModeState::Dual(Box::new(Dual::new(&ctx, document()?, &train)?)),
            Mode::Ict => ModeState::Ict(Box::new(Ict::new(&ctx, document()?)?)),
            Mode::Qa => ModeState::Qa(Box::new(Qa::new(start_reader(given.reader)?, train)?)),
            Mode::Spans => ModeState::Spans(Box::new(SpanPretraining::new(
                &ctx,
                start_reader(given.reader)?,
            )?)),
            Mode::Realm => {
                let reader = start_reader(given.reader)?;
                ModeState::Realm(Box::new(Realm::new(&ctx, document()?, reader)?))
            }
            Mode::Phrase => {
                let tower =
                    PhraseTower::start(&retriever, &config, resumed_state, given.phrase_encoder)?;
                ModeState::Phrase(Box::new(PhraseTraining::new(&ctx, tower, train)?))
            }
            Mode::PhraseQuery => {
                ModeState::PhraseQuery(Box::new(PhraseQuerySide::new(&ctx, resumed_state, train)?))
            }
        };
        if let Some(r) = &resume {
            let mut towers = mode.optimizers_mut();
            towers.push(("query", &mut ctx.query.opt));
            r.restore_optimizers(&db, towers)?;
        }
        ctx.batch = config.batch.min(mode.examples());
        Ok(Trainer {
            eval: EvalSet::new(&eval)?,
            step: resume.as_ref().map_or(0, |r| r.state.step),
            resumed: resume.as_ref().map(|r| r.state.step),
            slot: resume.as_ref().map_or('b', Resume::slot),
            ctx,
            mode,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.ctx.config
    }

    /// The step the weights are at.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Usable examples: QA pairs with a positive passage (QA: with an answer string; REALM:
    /// sentences with a salient span), or passages for ICT.
    pub fn examples(&self) -> usize {
        self.mode.examples()
    }

    /// Training questions dropped because no retrieved passage contained an answer (QA:
    /// because they have no answer string).
    pub fn dropped_examples(&self) -> usize {
        self.mode.dropped()
    }

    /// The query tower being trained.
    pub fn query_encoder(&self) -> &Encoder {
        &self.ctx.query.encoder
    }

    /// The document tower being trained (dual, ICT, REALM).
    pub fn document_encoder(&self) -> Option<&Encoder> {
        self.mode.document().map(|t| &t.encoder)
    }

    /// The reader being trained (QA, REALM).
    pub fn reader(&self) -> Option<&Reader> {
        self.mode.reader().map(|r| &r.reader)
    }

    /// The phrase encoder being trained (phrase; phrase query-side, where only its question
    /// side trains).
    pub fn phrase_encoder(&self) -> Option<&PhraseEncoder> {
        self.mode.phrase().map(|p| &p.encoder)
    }

    /// Runs to `config.steps`, reporting progress to `on_event`; returning
    /// [`Control::Stop`] from it ends the run after the current step with a checkpoint
    /// (resume it with a new [`Trainer::new`] on the same database and run name).
    ///
    /// At the end of a complete run, query-side and QA training attach the query tower to
    /// the pinned generation; dual, ICT and REALM training publish a generation built with
    /// the final towers; QA and REALM store the reader and make it current.
    pub fn run(&mut self, on_event: &mut dyn FnMut(&Event) -> Control) -> Result<TrainReport> {
        let started = Instant::now();
        let mut em = Emitter {
            callback: on_event,
            stop: false,
        };
        if let Some(step) = self.resumed.take() {
            em.emit(Event::Resumed { step });
        }
        em.emit(Event::Started {
            mode: self.ctx.config.mode.name().to_owned(),
            start_step: self.step,
            steps: self.ctx.config.steps,
            examples: self.examples(),
            generation: self.ctx.generation(),
        });
        let mut report = TrainReport {
            steps_run: 0,
            final_step: self.step,
            generation: self.ctx.generation(),
            query_encoder_version: None,
            reader_checkpoint: None,
            qa_skipped: 0,
            first_eval: None,
            last_eval: None,
            generations_published: Vec::new(),
            phrase_generation: None,
            seconds: 0.0,
        };
        report.first_eval = self.eval_event(&mut em)?;
        let mut builder = self
            .mode
            .builder_note()
            .map(|note| Builder::spawn(self.ctx.retriever.clone(), note));
        let start_step = self.step;
        let steps = self.ctx.config.steps;
        while self.step < steps && !em.stop {
            if let Some(b) = &builder {
                self.take_published(b.poll(), &mut em, &mut report)?;
            }
            let step = self.step + 1;
            self.train_step(step, &mut em, &mut report)?;
            let last = step >= steps;
            if self.mode.refreshes()
                && step.is_multiple_of(self.ctx.config.refresh_every)
                && !last
                && !em.stop
                && let Some(b) = &builder
            {
                b.request(self.refresh_request(step)?);
            }
            let eval_every = self.ctx.config.eval_every;
            if eval_every > 0 && step.is_multiple_of(eval_every) && !last {
                self.eval_event(&mut em)?;
            }
            let checkpoint_every = self.ctx.config.checkpoint_every;
            if checkpoint_every > 0 && step.is_multiple_of(checkpoint_every) && !last && !em.stop {
                self.checkpoint(false, &mut em)?;
            }
        }
        report.steps_run = self.step - start_step;
        let finished = self.step >= steps;
        if let Some(b) = builder.as_mut() {
            if finished {
                b.request(self.refresh_request(self.step)?);
            } else {
                b.cancel_pending();
            }
            let results = b.finish()?;
            self.take_published(results, &mut em, &mut report)?;
        }
        drop(builder);
        self.finish(finished, &mut em, &mut report)?;
        report.last_eval = self.eval_event(&mut em)?;
        report.final_step = self.step;
        report.generation = self.ctx.generation();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Runs the mode's step `step` and reports it.
    fn train_step(
        &mut self,
        step: u64,
        em: &mut Emitter<'_>,
        report: &mut TrainReport,
    ) -> Result<()> {
        let t0 = Instant::now();
        let ctx = &mut self.ctx;
        let mut after = None;
        let loss = match &mut self.mode {
            ModeState::QuerySide(m) => m.step(ctx, step)?,
            ModeState::Dual(m) => m.step(ctx, step)?,
            ModeState::Ict(m) => m.step(ctx, step)?,
            ModeState::Qa(m) => {
                let done = m.step(ctx, step)?;
                report.qa_skipped += done.skipped as u64;
                em.emit(Event::QaBatch {
                    step,
                    questions: done.questions,
                    skipped: done.skipped,
                });
                done.loss
            }
            ModeState::Spans(m) => {
                let done = m.step(ctx, step)?;
                after = Some(Event::SpanBatch {
                    step,
                    sentences: done.sentences,
                    skipped: done.skipped,
                });
                done.loss
            }
            ModeState::Phrase(m) => {
                let done = m.step(ctx, step)?;
                after = Some(Event::PhraseBatch {
                    step,
                    questions: done.questions,
                    skipped: done.skipped,
                    distillation: done.distillation,
                });
                done.loss
            }
            ModeState::PhraseQuery(m) => {
                let done = m.step(ctx, step)?;
                after = Some(Event::PhraseQueryBatch {
                    step,
                    questions: done.questions,
                    skipped: done.skipped,
                });
                done.loss
            }
            ModeState::Realm(m) => {
                let done = m.step(ctx, step)?;
                after = Some(Event::RealmBatch {
                    step,
                    sentences: done.sentences,
                    utility: done.utility,
                });
                done.loss
            }
        };
        self.step = step;
        let staleness = if self.mode.refreshes() {
            step.saturating_sub(self.ctx.weights_step())
        } else {
            0
        };
        em.emit(Event::Step {
            step,
            loss,
            generation: self.ctx.generation(),
            staleness,
            seconds: t0.elapsed().as_secs_f64(),
        });
        if let Some(event) = after {
            em.emit(event);
        }
        Ok(())
    }

    /// Ends the run with a last checkpoint. A complete query-side or QA run attaches the
    /// query tower, a complete phrase query-side run attaches its encoder to its phrase
    /// generation, and a complete phrase run publishes a phrase generation, and only then
    /// marks its state finished, so a run killed in between resumes at its last step and
    /// attaches or publishes then; a complete QA or REALM run stores its reader and makes it
    /// current.
    fn finish(
        &mut self,
        finished: bool,
        em: &mut Emitter<'_>,
        report: &mut TrainReport,
    ) -> Result<()> {
        let attach = self.mode.attach_note().filter(|_| finished);
        let publish_phrases = finished && matches!(self.mode, ModeState::Phrase(_));
        let attach_phrases = finished && matches!(self.mode, ModeState::PhraseQuery(_));
        let marks_later = attach.is_some() || publish_phrases || attach_phrases;
        let mut state = self.checkpoint(finished && !marks_later, em)?;
        if let Some(note) = attach {
            let (generation, version) = self.attach_query_encoder(note)?;
            report.query_encoder_version = Some(version);
            em.emit(Event::QueryEncoderAttached {
                generation,
                version,
            });
        }
        if finished && let Some(r) = self.mode.reader() {
            let id = realm_reader::store::store_reader(&self.ctx.retriever, &r.reader)?;
            realm_reader::store::set_current_reader(&self.ctx.retriever, &id)?;
            report.reader_checkpoint = Some(id.clone());
            em.emit(Event::ReaderStored { checkpoint: id });
        }
        if publish_phrases && let ModeState::Phrase(m) = &self.mode {
            let started = Instant::now();
            let generation = m.publish(&self.ctx, self.step, &mut |p| {
                em.emit(Event::PhraseBuild {
                    done: p.done,
                    total: p.total,
                });
            })?;
            report.phrase_generation = Some(generation);
            em.emit(Event::PhrasesPublished {
                generation,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        if attach_phrases && let ModeState::PhraseQuery(m) = &self.mode {
            let (generation, version) = m.attach(&self.ctx, self.step)?;
            report.query_encoder_version = Some(version);
            em.emit(Event::PhraseQueryEncoderAttached {
                generation,
                version,
            });
        }
        if marks_later {
            state.finished = true;
            checkpoint::put_state(&self.ctx, &mut state)?;
        }
        Ok(())
    }

    /// Handles builder results: announces each published generation and moves to the
    /// current one.
    fn take_published(
        &mut self,
        results: Vec<Result<Published>>,
        em: &mut Emitter<'_>,
        report: &mut TrainReport,
    ) -> Result<()> {
        let mut moved = false;
        for result in results {
            let published = result?;
            report.generations_published.push(published.generation);
            em.emit(Event::Published {
                generation: published.generation,
                weights_step: published.weights_step,
                seconds: published.seconds,
            });
            moved = true;
        }
        if moved {
            self.ctx.search = self.ctx.retriever.snapshot()?;
        }
        Ok(())
    }

    /// Both towers' checkpoints for the index builder.
    fn refresh_request(&self, step: u64) -> Result<RefreshRequest> {
        let document = self
            .mode
            .document()
            .map(|d| d.encoder.to_checkpoint_bytes())
            .transpose()?
            .unwrap_or_default();
        Ok(RefreshRequest {
            query: self.ctx.query.encoder.to_checkpoint_bytes()?,
            document,
            step,
        })
    }

    /// Evaluates: REALM's held-out utility, retrieval accuracy ([`Event::Eval`]) and QA's
    /// exact match, each when the run has what it needs.
    fn eval_event(&self, em: &mut Emitter<'_>) -> Result<Option<(f64, f64, f64)>> {
        if let ModeState::Realm(m) = &self.mode
            && let Some(score) = m.held_out_score(&self.ctx)?
        {
            em.emit(Event::RealmHeldOut {
                step: self.step,
                sentences: score.sentences,
                with_retrieval: score.with_retrieval,
                null_only: score.null_only,
                utility: score.with_retrieval - score.null_only,
            });
        }
        if let ModeState::PhraseQuery(m) = &self.mode
            && let Some(exact) = m.exact_match(&self.eval)?
        {
            em.emit(Event::PhraseExactMatch {
                step: self.step,
                questions: exact.questions,
                em: exact.em,
                in_corpus_em: exact.in_corpus_em,
            });
        }
        // Phrase training leaves the passage query tower as it is.
        if matches!(self.mode, ModeState::Phrase(_) | ModeState::PhraseQuery(_)) {
            return Ok(None);
        }
        let Some(accuracy) = self.eval.accuracy(&self.ctx)? else {
            return Ok(None);
        };
        em.emit(Event::Eval {
            step: self.step,
            generation: self.ctx.generation(),
            questions: accuracy.questions,
            top1: accuracy.top1,
            top5: accuracy.top5,
            top20: accuracy.top20,
        });
        let reader = match &self.mode {
            ModeState::Qa(m) => Some(&m.reader.reader),
            ModeState::Spans(m) => Some(&m.reader.reader),
            _ => None,
        };
        if let Some(reader) = reader
            && let Some(exact) = exact_match(&self.ctx, reader, &self.eval)?
        {
            em.emit(Event::ExactMatch {
                step: self.step,
                questions: exact.questions,
                em: exact.em,
                in_corpus_em: exact.in_corpus_em,
            });
        }
        Ok(Some((accuracy.top1, accuracy.top5, accuracy.top20)))
    }

    /// REALM: the mean over `sentences` ((source passage id, sentence) pairs; one salient
    /// span of each is masked, chosen from `seed`) of log p(y|x) with retrieval and of
    /// log p(y|x) with only the null document, with the current towers and reader
    /// (no dropout, no gradient), and the number of sentences scored. `None` when no
    /// sentence has a salient span, or outside REALM mode.
    pub fn realm_log_likelihood(
        &self,
        sentences: &[(u64, &str)],
        seed: u64,
    ) -> Result<Option<(f64, f64, usize)>> {
        let ModeState::Realm(m) = &self.mode else {
            return Ok(None);
        };
        Ok(m.log_likelihood(&self.ctx, sentences, seed)?
            .map(|s| (s.with_retrieval, s.null_only, s.sentences)))
    }

    /// Span pre-training: the masked sentences it trains on; empty in the other modes.
    pub fn span_examples(&self) -> &[SpanExample] {
        match &self.mode {
            ModeState::Spans(m) => &m.examples,
            _ => &[],
        }
    }

    /// REALM: the held-out sentences (at most [`crate::REALM_HELD_OUT_SCORED`] of them), each
    /// `(source passage id, sentence)`; empty outside REALM mode.
    pub fn held_out_sentences(&self) -> Vec<(u64, &str)> {
        match &self.mode {
            ModeState::Realm(m) => m.held_out_sentences(),
            _ => Vec::new(),
        }
    }

    /// Stores the towers and the optimizer state, then the state blob naming them.
    fn checkpoint(&mut self, finished: bool, em: &mut Emitter<'_>) -> Result<TrainerState> {
        let retriever = &self.ctx.retriever;
        let towers = TowerCheckpoints {
            document: self
                .mode
                .document()
                .map(|d| retriever.store_encoder(&d.encoder))
                .transpose()?,
            reader: self
                .mode
                .reader()
                .map(|r| realm_reader::store::store_reader(retriever, &r.reader))
                .transpose()?,
            phrase: self
                .mode
                .phrase()
                .map(|p| -> Result<(String, f64)> {
                    let id = retriever.store_phrase_encoder(&p.encoder)?;
                    Ok((id, p.encoder.config().filter_threshold))
                })
                .transpose()?,
            phrase_generation: self.mode.phrase_generation(),
        };
        let mut optimizers: Vec<(&str, &AdamW)> = vec![("query", &self.ctx.query.opt)];
        optimizers.extend(self.mode.document().map(|d| ("document", &d.opt)));
        optimizers.extend(self.mode.reader().map(|r| ("reader", &r.opt)));
        optimizers.extend(self.mode.phrase().map(|p| ("phrase", &p.opt)));
        let (state, slot) = checkpoint::write(
            &self.ctx,
            self.step,
            self.slot,
            finished,
            towers,
            &optimizers,
        )?;
        self.slot = slot;
        em.emit(Event::Checkpoint { step: self.step });
        Ok(state)
    }

    /// Attaches the query tower to the pinned generation, unless its last version already
    /// is this tower (a run that was killed right after attaching).
    fn attach_query_encoder(&self, label: &str) -> Result<(u64, u32)> {
        let ctx = &self.ctx;
        let generation = ctx.generation();
        let id = ctx.retriever.store_encoder(&ctx.query.encoder)?;
        let db = ctx.retriever.db();
        if let Some(last) = db.generation(generation)?.query_encoder()
            && last.checkpoint_id == id
        {
            return Ok((generation, last.version));
        }
        let note = format!(
            "{label} (run {:?}, {} steps, seed {})",
            ctx.config.run, self.step, ctx.config.seed
        );
        let version = db.attach_query_encoder(generation, &id, &note)?;
        Ok((generation, version))
    }
}
