//! Self-supervised span pre-training of the reader. Every corpus sentence with a salient span
//! ([`crate::masking`], REALM's heuristic) gives one example: one of its salient spans
//! (chosen from the seed) is replaced by `[MASK]`, and the masked sentence is the question.
//! The frozen query tower retrieves the top `candidates` passages of the pinned generation
//! once, at the start of the run; those other than the sentence's own passage that contain
//! the span (as whole words, the QA matching rule) are the example's positives, the others
//! its hard negatives. Each step reads, per example, one positive and the `reader_passages`
//! − 1 best-ranked negatives, and minimizes the reader's QA loss with the span's text as
//! the answer. The target is the span's position in another passage, so the reader learns
//! extraction directly, with no labels. Only the reader trains.

use rand::RngCore;
use realm_retriever::eval::AnswerMatcher;
use tch::{Kind, Tensor};

use crate::context::{Context, INFERENCE_BATCH};
use crate::error::{Error, Result};
use crate::masking::salient_spans;
use crate::sampling::{SALT_SPANS, batch_indices, rng};
use crate::towers::ReaderTower;
use realm_retriever::sentences::sentences;

/// The text that stands for the masked span in an example's question.
pub const SPAN_MASK: &str = "[MASK]";

/// One self-supervised span example.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanExample {
    /// The passage the sentence comes from; it is never among the passages read.
    pub source: u64,
    /// The sentence with the span replaced by [`SPAN_MASK`].
    pub question: String,
    /// The span's text, the answer to find.
    pub answer: String,
    /// Retrieved passages other than `source` that contain `answer`, best first, with
    /// their retrieval scores.
    pub positives: Vec<(u64, f32)>,
    /// The best-ranked retrieved passages that do not contain it (at most
    /// `reader_passages` − 1), best first, with their retrieval scores.
    pub negatives: Vec<(u64, f32)>,
}

/// What one span pre-training step did.
pub(crate) struct SpanStep {
    /// The mean loss (NaN, with no update, when no example of the batch could be read).
    pub loss: f64,
    pub sentences: usize,
    /// Examples whose span the reader could not match in the positive passage.
    pub skipped: usize,
}

/// The state of a span pre-training run.
pub(crate) struct SpanPretraining {
    pub reader: ReaderTower,
    pub examples: Vec<SpanExample>,
    /// Masked sentences dropped because no other retrieved passage contains their span.
    pub dropped: usize,
}

/// A masked sentence before retrieval.
struct Masked {
    source: u64,
    question: String,
    answer: String,
}

/// Span examples of the pinned generation's passages (see [`span_examples`]).
pub(crate) struct SpanExamples {
    pub examples: Vec<SpanExample>,
    /// Masked sentences without a positive.
    pub dropped: usize,
}

/// Masks one salient span (chosen from the seed) of every sentence of the pinned
/// generation's passages and retrieves each masked sentence's top `candidates` passages
/// with the frozen query tower: those other than its own that contain the span are its
/// positives, and the best-ranked others (at most `negatives_kept`) its hard negatives.
/// Sentences without a positive are dropped; an error when none keeps one. Span
/// pre-training reads them; phrase training mixes them with its QA pairs.
pub(crate) fn span_examples(ctx: &Context, negatives_kept: usize) -> Result<SpanExamples> {
    let seed = ctx.config.seed;
    let mut masked = Vec::new();
    for p in ctx.search.storage().passages() {
        let p = p?;
        for sentence in sentences(&p.text) {
            let spans = salient_spans(sentence);
            if spans.is_empty() {
                continue;
            }
            let n = masked.len() as u64;
            let pick = (rng(seed, SALT_SPANS, n).next_u64() % spans.len() as u64) as usize;
            let (a, b) = spans[pick];
            masked.push(Masked {
                source: p.id,
                question: format!("{}{SPAN_MASK}{}", &sentence[..a], &sentence[b..]),
                answer: sentence[a..b].to_owned(),
            });
        }
    }
    let sentences_found = masked.len();
    let mut examples = Vec::new();
    let mut dropped = 0;
    for chunk in masked.chunks(INFERENCE_BATCH) {
        let questions: Vec<&str> = chunk.iter().map(|m| m.question.as_str()).collect();
        let queries = ctx.query.encoder.encode(&questions)?;
        let ranked = ctx.search.top_k(&queries, ctx.config.candidates + 1)?;
        for (m, row) in chunk.iter().zip(ranked) {
            let matcher = AnswerMatcher::from_answers(&[m.answer.as_str()]);
            let mut positives = Vec::new();
            let mut negatives = Vec::new();
            for (id, score) in row.into_iter().filter(|&(id, _)| id != m.source) {
                let Some(passage) = ctx.search.storage().get(id)? else {
                    continue;
                };
                if matcher.matches(&passage.text) {
                    positives.push((id, score));
                } else if negatives.len() < negatives_kept {
                    negatives.push((id, score));
                }
            }
            if positives.is_empty() {
                dropped += 1;
                continue;
            }
            examples.push(SpanExample {
                source: m.source,
                question: m.question.clone(),
                answer: m.answer.clone(),
                positives,
                negatives,
            });
        }
    }
    if examples.is_empty() {
        return Err(Error::NoData {
            reason: format!(
                "span examples need masked sentences whose span another retrieved passage contains, and none of the {sentences_found} sentences with a salient span has one among its top {} passages",
                ctx.config.candidates
            ),
        });
    }
    Ok(SpanExamples { examples, dropped })
}

impl SpanPretraining {
    /// Span examples with `reader_passages` − 1 hard negatives each ([`span_examples`]).
    pub(crate) fn new(ctx: &Context, reader: ReaderTower) -> Result<SpanPretraining> {
        let negatives_kept = ctx.config.reader_passages.saturating_sub(1);
        let SpanExamples { examples, dropped } = span_examples(ctx, negatives_kept)?;
        Ok(SpanPretraining {
            reader,
            examples,
            dropped,
        })
    }

    /// Reads one positive (chosen from the seed and the step) and the hard negatives of each
    /// example of the batch, and minimizes the reader's QA loss with the span as the answer;
    /// p(z|x) is the softmax of the frozen retrieval scores times `scale`.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<SpanStep> {
        let seed = ctx.config.seed;
        let idx = batch_indices(seed, self.examples.len(), ctx.batch, step);
        let mut pick = rng(seed, SALT_SPANS, u64::MAX - step);
        ctx.seed_dropout(step);
        let reader = &self.reader.reader;
        let mut losses = Vec::with_capacity(idx.len());
        for &i in &idx {
            let example = &self.examples[i];
            let positive =
                example.positives[(pick.next_u64() % example.positives.len() as u64) as usize];
            let chosen: Vec<(u64, f32)> = std::iter::once(positive)
                .chain(example.negatives.iter().copied())
                .collect();
            let passages = ctx.passages(chosen.iter().map(|&(id, _)| id))?;
            if passages.len() != chosen.len() {
                continue;
            }
            let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
            let scores: Vec<f32> = chosen.iter().map(|&(_, s)| s).collect();
            let log_p_z = (Tensor::from_slice(&scores) * ctx.config.scale)
                .log_softmax(0, Kind::Float)
                .to_device(ctx.device());
            if let Some(loss) = reader.qa_loss(
                &example.question,
                &texts,
                &log_p_z,
                std::slice::from_ref(&example.answer),
                true,
            )? {
                losses.push(loss);
            }
        }
        let skipped = idx.len() - losses.len();
        if losses.is_empty() {
            self.reader.opt.zero_grad();
            return Ok(SpanStep {
                loss: f64::NAN,
                sentences: idx.len(),
                skipped,
            });
        }
        let loss = Tensor::stack(&losses, 0).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        self.reader.step(ctx.reader_lr(step));
        // The query tower does not train here; its gradient is never computed.
        ctx.query.opt.zero_grad();
        Ok(SpanStep {
            loss: value,
            sentences: idx.len(),
            skipped,
        })
    }
}
