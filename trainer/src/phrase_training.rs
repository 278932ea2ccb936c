//! Phrase training (DensePhrases §4): the phrase encoder learns from question-answer pairs
//! by distant supervision. The pinned generation's query tower retrieves each question's top
//! `candidates` passages once, at the start; those that contain an answer are its positives,
//! the others its hard negatives. Each step reads, per question, one positive (chosen from
//! the seed and the step) and `hard_negatives` hard negatives. Every phrase of an answer's
//! text in the positive is a gold phrase ([`PhraseTargets`]). The question's q_start scores
//! every word start of every passage of the batch (in-batch negatives) and the gold starts
//! of the previous `prebatch` batches (pre-batch negatives, re-encoded without gradient by
//! the current weights, so a resumed run draws what an uninterrupted one draws); the loss is
//! −log of the softmax mass on the question's gold starts, and likewise for ends. The filter
//! head learns, by binary cross-entropy over the word boundaries of every passage read,
//! which tokens start and end a gold phrase. At the end the trained encoder builds a new
//! phrase generation and publishes it.
//!
//! With `phrase_spans` > 0, self-supervised cloze examples join the QA pairs (DensePhrases
//! trains on questions generated from the corpus; these need no generator): a corpus
//! sentence with a salient span masked is the question, the span its answer, and the other
//! retrieved passages that hold the span (never the sentence's own) its positives.
//!
//! With `distill` > 0, the loss adds distillation from the database's current reader
//! (DensePhrases' third loss, `distillation.rs`): the KL divergence from the reader's start
//! and end distributions over each question's positive passage to the phrase model's.

use rand::RngCore;
use realm_retriever::Progress;
use realm_retriever::eval::{AnswerMatcher, QaExample};
use realm_retriever::phrase::{PhraseBuildOptions, PhraseSearchOptions, PhraseTargets};
use realm_storage::{Dtype, Passage};
use tch::{Kind, Reduction, Tensor};

use crate::context::Context;
use crate::distillation::{Teacher, kl_divergence};
use crate::error::{Error, Result};
use crate::sampling::{SALT_PHRASES, batch_indices, rng};
use crate::span_pretraining::span_examples;
use crate::supervision::{Supervised, Supervision, with_answer_strings};
use crate::towers::PhraseTower;

/// The note of phrase generations published by phrase training.
pub const PHRASE_NOTE: &str = "phrase training";

/// What one phrase training step did.
pub(crate) struct PhraseStep {
    /// The mean loss (NaN, with no update, when no question of the batch had a gold phrase).
    pub loss: f64,
    pub questions: usize,
    /// Questions with no gold phrase in the positive read (an answer cut off by the token
    /// limit, or longer than the phrase limit).
    pub skipped: usize,
    /// With a teacher: the mean KL divergence from the reader's start and end distributions
    /// to the phrase model's over the positives read (before the update).
    pub distillation: Option<f64>,
}

/// The state of a phrase training run.
pub(crate) struct PhraseTraining {
    pub tower: PhraseTower,
    pub supervision: Supervision,
    /// Questions dropped: without an answer string, or without a retrieved positive.
    pub dropped: usize,
    /// The reader distilled from, when `distill` is above 0.
    teacher: Option<Teacher>,
}

/// The passages of a batch, encoded with their phrase targets.
struct Encoded {
    /// Start and end vectors, `[passages × tokens, dim]`.
    start: Tensor,
    end: Tensor,
    /// Filter logits, `[passages × tokens, 2]`.
    filter: Tensor,
    targets: Vec<PhraseTargets>,
    /// The padded length of every passage's tokens.
    tokens: usize,
}

impl PhraseTraining {
    /// Keeps the pairs with an answer string and supervises them against the pinned
    /// generation, then adds up to `phrase_spans` cloze examples; an error when none is
    /// left (cloze examples alone need no pair).
    pub(crate) fn new(
        ctx: &Context,
        tower: PhraseTower,
        train: Vec<QaExample>,
    ) -> Result<PhraseTraining> {
        let given = train.len();
        let with_answers = with_answer_strings(ctx, train)?;
        // Cloze examples alone need no question-answer pair.
        let mut supervision = if with_answers.is_empty() && ctx.config.phrase_spans > 0 {
            Supervision {
                examples: Vec::new(),
                dropped: 0,
            }
        } else {
            Supervision::new(ctx, &with_answers)?
        };
        if ctx.config.phrase_spans > 0 {
            supervision.examples.extend(cloze_examples(ctx)?);
        }
        Ok(PhraseTraining {
            teacher: Teacher::load(ctx)?,
            tower,
            dropped: given - with_answers.len() + supervision.dropped,
            supervision,
        })
    }

    /// The questions of `step` with the positive each reads: `(example, passage id)`.
    fn batch_of(&self, ctx: &Context, step: u64) -> Vec<(usize, u64)> {
        let examples = &self.supervision.examples;
        let mut pick = rng(ctx.config.seed, SALT_PHRASES, step);
        batch_indices(ctx.config.seed, examples.len(), ctx.batch, step)
            .into_iter()
            .map(|i| {
                let positives = &examples[i].positives;
                let p = positives[(pick.next_u64() % positives.len() as u64) as usize];
                (i, p)
            })
            .collect()
    }

    /// The pinned snapshot's passage `id`.
    fn passage(ctx: &Context, id: u64) -> Result<Passage> {
        ctx.search.storage().get(id)?.ok_or_else(|| Error::NoData {
            reason: format!("passage {id}, retrieved from the pinned generation, is gone"),
        })
    }

    /// Encodes `passages`, the first of which are read for `answers` (one list each), with
    /// gradient and dropout when `train`.
    fn encode(&self, passages: &[Passage], answers: &[&[String]], train: bool) -> Result<Encoded> {
        let encoder = &self.tower.encoder;
        let docs: Vec<(&str, &str)> = passages
            .iter()
            .map(|p| (p.title.as_str(), p.text.as_str()))
            .collect();
        let (batch, encodings) = encoder.tokenize_passages(&docs)?;
        let max_words = PhraseSearchOptions::default().max_words;
        let targets = encodings
            .iter()
            .zip(&docs)
            .enumerate()
            .map(|(p, (encoding, (_, text)))| {
                let answers = answers.get(p).copied().unwrap_or(&[]);
                PhraseTargets::new(encoding, text, answers, max_words)
            })
            .collect();
        let outputs = encoder.passage_forward_t(&batch, train);
        let size = outputs.start.size();
        let (rows, dim) = (size[0] * size[1], size[2]);
        Ok(Encoded {
            start: outputs.start.reshape([rows, dim]),
            end: outputs.end.reshape([rows, dim]),
            filter: outputs.filter.reshape([rows, 2]),
            targets,
            tokens: size[1] as usize,
        })
    }

    /// The gold (start, end) vectors of the previous `prebatch` batches, encoded by the
    /// current weights without gradient, with the passage each comes from.
    fn prebatch(&self, ctx: &Context, step: u64) -> Result<Option<(Tensor, Tensor, Vec<u64>)>> {
        let examples = &self.supervision.examples;
        let mut passages = Vec::new();
        let mut answers: Vec<&[String]> = Vec::new();
        for back in 1..=ctx.config.prebatch as u64 {
            if step <= back {
                break;
            }
            for (i, id) in self.batch_of(ctx, step - back) {
                passages.push(Self::passage(ctx, id)?);
                answers.push(&examples[i].answers);
            }
        }
        if passages.is_empty() {
            return Ok(None);
        }
        let encoded = tch::no_grad(|| self.encode(&passages, &answers, false))?;
        let t = encoded.tokens;
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut ids = Vec::new();
        for (p, targets) in encoded.targets.iter().enumerate() {
            if let Some(&(s, e)) = targets.answers.first() {
                starts.push((p * t + s) as i64);
                ends.push((p * t + e) as i64);
                ids.push(passages[p].id);
            }
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let device = ctx.device();
        let pick = |rows: &Tensor, at: &[i64]| {
            rows.index_select(0, &Tensor::from_slice(at).to_device(device))
                .detach()
        };
        Ok(Some((
            pick(&encoded.start, &starts),
            pick(&encoded.end, &ends),
            ids,
        )))
    }

    /// One step of the start, end and filter losses; see the module documentation.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<PhraseStep> {
        let examples = &self.supervision.examples;
        let rows = self.batch_of(ctx, step);
        let mut passages = Vec::with_capacity(rows.len() * (1 + ctx.config.hard_negatives));
        for &(_, id) in &rows {
            passages.push(Self::passage(ctx, id)?);
        }
        for &(i, _) in &rows {
            for &id in examples[i].negatives.iter().take(ctx.config.hard_negatives) {
                passages.push(Self::passage(ctx, id)?);
            }
        }
        let answers: Vec<&[String]> = rows
            .iter()
            .map(|&(i, _)| examples[i].answers.as_slice())
            .collect();
        let prebatch = self.prebatch(ctx, step)?;
        ctx.seed_dropout(step);
        let encoded = self.encode(&passages, &answers, true)?;
        let (b, t) = (rows.len(), encoded.tokens);
        let columns = passages.len() * t;
        let keep: Vec<i64> = (0..b)
            .filter(|&r| !encoded.targets[r].answers.is_empty())
            .map(|r| r as i64)
            .collect();
        let skipped = b - keep.len();
        if keep.is_empty() {
            self.tower.opt.zero_grad();
            return Ok(PhraseStep {
                loss: f64::NAN,
                questions: b,
                skipped,
                distillation: None,
            });
        }
        let device = ctx.device();
        let questions: Vec<&str> = rows
            .iter()
            .map(|&(i, _)| examples[i].question.as_str())
            .collect();
        let encoder = &self.tower.encoder;
        let (q_start, q_end) =
            encoder.query_forward_t(&encoder.tokenize_queries(&questions)?, true);
        let mut losses = Vec::with_capacity(2);
        let mut filters = Vec::with_capacity(2);
        for side in [Side::Start, Side::End] {
            let mut valid = vec![false; columns];
            let mut gold = vec![false; b * columns];
            let mut own = vec![0f32; columns];
            for (p, targets) in encoded.targets.iter().enumerate() {
                for &i in side.positions(targets) {
                    valid[p * t + i] = true;
                }
                if p >= b {
                    continue;
                }
                for &pair in &targets.answers {
                    let i = p * t + side.of(pair);
                    own[i] = 1.0;
                    // The same passage read by two questions holds the gold of both.
                    for (r, &(_, id)) in rows.iter().enumerate() {
                        if id == passages[p].id && encoded.targets[r].answers.contains(&pair) {
                            gold[r * columns + i] = true;
                        }
                    }
                }
            }
            let (q, vectors) = match side {
                Side::Start => (&q_start, &encoded.start),
                Side::End => (&q_end, &encoded.end),
            };
            let invalid = Tensor::from_slice(&valid)
                .logical_not()
                .view([1, columns as i64])
                .to_device(device);
            let mut logits = q
                .matmul(&vectors.tr())
                .masked_fill(&invalid, f64::NEG_INFINITY);
            let mut gold = Tensor::from_slice(&gold)
                .view([b as i64, columns as i64])
                .to_device(device);
            if let Some((starts, ends, ids)) = &prebatch {
                let previous = match side {
                    Side::Start => starts,
                    Side::End => ends,
                };
                let same: Vec<bool> = rows
                    .iter()
                    .flat_map(|&(_, id)| ids.iter().map(move |&p| p == id))
                    .collect();
                let same = Tensor::from_slice(&same)
                    .view([b as i64, ids.len() as i64])
                    .to_device(device);
                let extra = q
                    .matmul(&previous.tr())
                    .masked_fill(&same, f64::NEG_INFINITY);
                logits = Tensor::cat(&[logits, extra], 1);
                gold = Tensor::cat(&[gold, same.zeros_like()], 1);
            }
            let all = logits.logsumexp([1], false);
            let positive = logits
                .masked_fill(&gold.logical_not(), f64::NEG_INFINITY)
                .logsumexp([1], false);
            let keep = Tensor::from_slice(&keep).to_device(device);
            losses.push((all - positive).index_select(0, &keep).mean(Kind::Float));
            let at: Vec<i64> = (0..columns as i64).filter(|&i| valid[i as usize]).collect();
            let at = Tensor::from_slice(&at).to_device(device);
            let predicted = encoded.filter.select(1, side as i64).index_select(0, &at);
            let target = Tensor::from_slice(&own)
                .to_device(device)
                .index_select(0, &at);
            filters.push(predicted.binary_cross_entropy_with_logits::<Tensor>(
                &target,
                None,
                None,
                Reduction::Mean,
            ));
        }
        let mut loss = (&losses[0] + &losses[1]) / 2.0 + (&filters[0] + &filters[1]) / 2.0;
        let mut distillation = None;
        if let Some(teacher) = &self.teacher {
            let read: Vec<(&str, &str)> = (0..b)
                .map(|r| (questions[r], passages[r].text.as_str()))
                .collect();
            if let Some(kl) = distillation_loss(teacher, &read, &encoded, &q_start, &q_end)? {
                distillation = Some(kl.double_value(&[]));
                loss += kl * teacher.weight();
            }
        }
        loss.backward();
        let value = loss.double_value(&[]);
        self.tower.step(ctx.lr(step));
        // The query tower does not train here; its gradient is never computed.
        ctx.query.opt.zero_grad();
        Ok(PhraseStep {
            loss: value,
            questions: b,
            skipped,
            distillation,
        })
    }

    /// Builds a phrase generation with the trained encoder and publishes it, unless the
    /// current phrase generation already is this encoder's (a run killed right after
    /// publishing). Returns the generation.
    pub(crate) fn publish(
        &self,
        ctx: &Context,
        step: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<u64> {
        let retriever = &ctx.retriever;
        let encoder = &self.tower.encoder;
        let db = retriever.db();
        let mut dtype = Dtype::F16;
        if let Some(current) = db.current_phrase_generation()? {
            let spec = db.phrase_generation(current)?.spec;
            if spec.encoder_checkpoint_id == encoder.fingerprint()? {
                return Ok(current);
            }
            dtype = spec.dtype;
        }
        let note = format!(
            "{PHRASE_NOTE} (run {:?}, {step} steps, seed {})",
            ctx.config.run, ctx.config.seed
        );
        Ok(retriever.build_phrase_generation(
            encoder,
            PhraseBuildOptions {
                dtype,
                note,
                progress: Some(progress),
                ..PhraseBuildOptions::default()
            },
        )?)
    }
}

/// The mean over `read` (question, positive passage text; the first passages of `encoded`)
/// of the KL divergence from the teacher's start and end distributions to the phrase
/// model's over the passage's words, the two sides averaged; `None` when the teacher puts no
/// mass on any word of any of them.
fn distillation_loss(
    teacher: &Teacher,
    read: &[(&str, &str)],
    encoded: &Encoded,
    q_start: &Tensor,
    q_end: &Tensor,
) -> Result<Option<Tensor>> {
    let t = encoded.tokens;
    let device = q_start.device();
    let mut divergences = Vec::with_capacity(read.len());
    for (r, &(question, text)) in read.iter().enumerate() {
        let targets = &encoded.targets[r];
        let Some(p) = teacher.targets(question, text, &targets.start_bytes, &targets.end_bytes)?
        else {
            continue;
        };
        let mut sides = Vec::with_capacity(2);
        for (probabilities, positions, vectors, q) in [
            (&p.start, &targets.starts, &encoded.start, q_start),
            (&p.end, &targets.ends, &encoded.end, q_end),
        ] {
            let at: Vec<i64> = positions.iter().map(|&i| (r * t + i) as i64).collect();
            let rows = vectors.index_select(0, &Tensor::from_slice(&at).to_device(device));
            let logits = rows.matmul(&q.get(r as i64));
            sides.push(kl_divergence(probabilities, &logits)?);
        }
        divergences.push((&sides[0] + &sides[1]) / 2.0);
    }
    if divergences.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::stack(&divergences, 0).mean(Kind::Float)))
}

/// At most `phrase_spans` span examples (evenly spaced among all of them), as supervised
/// questions whose answer is the masked span.
fn cloze_examples(ctx: &Context) -> Result<Vec<Supervised>> {
    let all = span_examples(ctx, ctx.config.hard_negatives)?.examples;
    let wanted = ctx.config.phrase_spans.min(all.len());
    let every = all.len() as f64 / wanted.max(1) as f64;
    Ok((0..wanted)
        .map(|i| &all[(i as f64 * every) as usize])
        .map(|e| Supervised {
            question: e.question.clone(),
            answers: vec![e.answer.clone()],
            matcher: AnswerMatcher::from_answers(&[e.answer.as_str()]),
            positives: e.positives.iter().map(|&(id, _)| id).collect(),
            negatives: e.negatives.iter().map(|&(id, _)| id).collect(),
        })
        .collect())
}

/// The two sides of a phrase.
#[derive(Clone, Copy)]
enum Side {
    Start = 0,
    End = 1,
}

impl Side {
    fn positions(self, targets: &PhraseTargets) -> &[usize] {
        match self {
            Side::Start => &targets.starts,
            Side::End => &targets.ends,
        }
    }

    fn of(self, (start, end): (usize, usize)) -> usize {
        match self {
            Side::Start => start,
            Side::End => end,
        }
    }
}
