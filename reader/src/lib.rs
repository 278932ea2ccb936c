//! # realm-reader
//!
//! The knowledge-augmented reader of realm-db: REALM's span-extraction encoder,
//! marginalized over the passages the retriever returns.
//!
//! What is built:
//!
//! * [`Reader`]: a BERT over `[CLS] x [SEP] z [SEP]` (question `x` with token type 0,
//!   passage body `z` with token type 1), loaded from the same pretrained model folder as
//!   the retriever ([`Reader::load`]) or randomly initialized for tests ([`Reader::random`]);
//! * a **span head** scoring every word-aligned span of up to
//!   [`ReaderConfig::max_span_tokens`] tokens inside the passage with an MLP over
//!   `[h_start; h_end]`, normalized per passage into log p(s|z,x) ([`Reader::span_scores`]);
//! * an **MLM head** (Linear, GELU, LayerNorm, then the product with the word-embedding
//!   matrix, tied, plus a bias) ([`Reader::mlm_logits`]);
//! * answering: p(y|x) = Σ_z p(z|x) · p(y|z,x), where p(y|z,x) sums p(s|z,x) over the spans
//!   of z whose normalized text (SQuAD's `normalize_answer`) equals y's, or the
//!   max-over-passages max_z p(z|x) · p(y|z,x) ([`Marginalization`]); candidates are at
//!   most [`AnswerOptions::max_answer_words`] words, never stop words or punctuation alone,
//!   and not the question's own words unless nothing else is left; the best
//!   [`AnswerOptions::top_answers`] distinct answers come back as alternatives. Span text is
//!   copied from the passage through the tokenizer's offsets, never detokenized
//!   ([`Reader::answer_with`], [`Reader::answer_from_scores`] for given span scores, [`ask`]
//!   and [`ask_with`] to retrieve and answer in one call);
//! * REALM's fine-tuning loss −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x), with gradient into
//!   both the reader and (through `log p(z|x)`) the query tower ([`Reader::qa_loss`]);
//! * REALM's masked-LM scoring log p(y|z,x) of a masked sentence read with each retrieved
//!   passage or the null document ([`Reader::mlm_log_likelihoods`]), which the trainer's
//!   REALM pre-training marginalizes;
//! * self-describing checkpoints (weights, tokenizer, and the inverse temperature of p(z|x)
//!   the reader was trained with, [`Reader::retrieval_scale`]) and a content fingerprint.
//!
//! * readers stored in the database ([`store`]): checkpoints under `reader/<id>` and the
//!   current reader named by `reader/current`.
//!
//! Open-QA fine-tuning and REALM pre-training run through `realm-trainer`, which stores the
//! readers it trains with [`store`]; `realm-db ask` loads the current one and calls [`ask`].

mod answer;
mod candidates;
mod checkpoint;
mod error;
mod mlm;
mod reader;
mod spans;
pub mod store;

pub use answer::{Alternative, Answer, Evidence};
pub use candidates::{AnswerOptions, Marginalization};
pub use error::{Error, Result};
pub use mlm::SentenceTokens;
pub use reader::{Reader, ReaderConfig};
pub use spans::{PassageSpans, Span, SpanNormalization, SpanScores};

/// Retrieves the top `k` passages for `question` from `snapshot` (dense search) and answers
/// from them with [`AnswerOptions::default`]; see [`ask_with`].
pub fn ask(
    reader: &Reader,
    snapshot: &realm_retriever::SearchSnapshot,
    question: &str,
    k: usize,
) -> Result<(Answer, u64)> {
    ask_with(reader, snapshot, question, k, &AnswerOptions::default())
}

/// Retrieves the top `k` passages for `question` from `snapshot` (dense search) and answers
/// from them ([`Reader::answer_with`]), with p(z|x) the softmax of the inner products times
/// the reader's [`Reader::retrieval_scale`]; also returns the generation that was searched.
pub fn ask_with(
    reader: &Reader,
    snapshot: &realm_retriever::SearchSnapshot,
    question: &str,
    k: usize,
    options: &AnswerOptions,
) -> Result<(Answer, u64)> {
    let hits = snapshot.search(question, k)?;
    let Some(generation) = hits.first().map(|h| h.generation) else {
        return Err(Error::NoPassages);
    };
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    let p_z = reader.passage_probs(&scores);
    let passages: Vec<(u64, &str, &str, f32)> = hits
        .iter()
        .zip(p_z)
        .map(|(h, p)| (h.passage_id, h.title.as_str(), h.text.as_str(), p))
        .collect();
    Ok((
        reader.answer_with(question, &passages, options)?,
        generation,
    ))
}
