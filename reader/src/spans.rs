//! Span scoring: the word-aligned spans of each passage of a `[CLS] x [SEP] z [SEP]` pair
//! and their log p(s|z,x) under the span head.

use realm_retriever::encoder::TokenBatch;
use tch::nn::Module;
use tch::{Kind, Tensor};
use tokenizers::Encoding;

use crate::error::{Error, Result, tokenizer_error};
use crate::reader::Reader;

/// One candidate answer span of a passage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Byte offset (on a char boundary) of the span's first character in the passage text.
    pub start_byte: usize,
    /// Byte offset one past the span's last character in the passage text.
    pub end_byte: usize,
    /// Position of the span's first token in the `[CLS] x [SEP] z [SEP]` sequence.
    pub start_token: usize,
    /// Position of the span's last token (inclusive) in the sequence.
    pub end_token: usize,
}

impl Span {
    /// The span's text, copied from the passage it was computed for.
    pub fn text<'a>(&self, passage: &'a str) -> &'a str {
        passage.get(self.start_byte..self.end_byte).unwrap_or("")
    }
}

/// How span scores become probabilities across the passages of one question.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SpanNormalization {
    /// REALM: a softmax over each passage's spans, p(s|z,x), weighted by the retriever's
    /// p(z|x). Every passage offers a full unit of probability, whether or not it holds an
    /// answer.
    #[default]
    Passage,
    /// DPR: one softmax over the spans of all passages together, each span's score plus
    /// log p(z|x), p(s,z|x) ∝ p(z|x) · exp(score). A passage that holds no answer can give
    /// all its spans low scores, so the reader learns which passage to read, and hard
    /// negatives train it.
    Joint,
}

impl SpanNormalization {
    /// The name used on the command line and in checkpoints: `passage` or `joint`.
    pub fn name(self) -> &'static str {
        match self {
            SpanNormalization::Passage => "passage",
            SpanNormalization::Joint => "joint",
        }
    }
}

impl std::str::FromStr for SpanNormalization {
    type Err = Error;

    fn from_str(s: &str) -> Result<SpanNormalization> {
        match s {
            "passage" => Ok(SpanNormalization::Passage),
            "joint" => Ok(SpanNormalization::Joint),
            other => Err(Error::InvalidInput {
                reason: format!(
                    "the span normalization {other:?} is unknown; it is \"passage\" or \"joint\""
                ),
            }),
        }
    }
}

/// The spans of one passage and their log p(s|z,x).
#[derive(Debug)]
pub struct PassageSpans {
    /// Every span of up to `max_span_tokens` tokens inside the passage's tokens that starts
    /// at the first sub-word of a word and ends at the last sub-word of a word.
    pub spans: Vec<Span>,
    /// log p(s|z,x), a [spans.len()] float tensor (log-softmax over this passage's spans);
    /// it carries gradient when computed with gradients enabled.
    pub log_probs: Tensor,
    /// The span head's raw scores, a [spans.len()] float tensor: `log_probs` before the
    /// per-passage softmax, for a normalization across passages
    /// ([`SpanNormalization::Joint`]).
    pub logits: Tensor,
    /// The first and one-past-last token positions of the passage in the sequence.
    pub passage_tokens: (usize, usize),
}

/// Span log-probabilities of several passages for one question.
#[derive(Debug)]
pub struct SpanScores {
    /// One entry per passage, in the order given.
    pub passages: Vec<PassageSpans>,
}

impl SpanScores {
    /// Per passage, the log-probability of each of its spans under `normalization`, with
    /// `log_p_z` the [k] log p(z|x) of the k passages: log p(z|x) + log p(s|z,x)
    /// ([`SpanNormalization::Passage`]), or the log-softmax over every span of every
    /// passage of score + log p(z|x) ([`SpanNormalization::Joint`]). Either way the
    /// probabilities of all spans sum to 1 (to Σ p(z|x) for passages with spans). Gradients
    /// flow into both the span scores and `log_p_z`.
    pub fn log_probs_with(
        &self,
        log_p_z: &Tensor,
        normalization: SpanNormalization,
    ) -> Result<Vec<Tensor>> {
        if log_p_z.size() != [self.passages.len() as i64] {
            return Err(Error::InvalidInput {
                reason: format!(
                    "log p(z|x) has shape {:?}, but span scores hold {} passages",
                    log_p_z.size(),
                    self.passages.len()
                ),
            });
        }
        let per_passage = |z: usize, t: &Tensor| -> Result<Tensor> {
            Ok(t.f_add(&log_p_z.f_get(z as i64)?.f_to_kind(Kind::Float)?)?)
        };
        match normalization {
            SpanNormalization::Passage => self
                .passages
                .iter()
                .enumerate()
                .map(|(z, p)| per_passage(z, &p.log_probs))
                .collect(),
            SpanNormalization::Joint => {
                let shifted: Vec<Tensor> = self
                    .passages
                    .iter()
                    .enumerate()
                    .map(|(z, p)| per_passage(z, &p.logits))
                    .collect::<Result<_>>()?;
                let all = Tensor::f_cat(&shifted, 0)?.f_log_softmax(0, Kind::Float)?;
                let mut out = Vec::with_capacity(shifted.len());
                let mut offset = 0i64;
                for t in &shifted {
                    let n = t.size()[0];
                    out.push(all.f_narrow(0, offset, n)?);
                    offset += n;
                }
                Ok(out)
            }
        }
    }
}

/// The tokenized `[CLS] x [SEP] z [SEP]` pairs of one question.
pub(crate) struct PairBatch {
    tokens: TokenBatch,
    /// Per passage: the spans and the passage's token range.
    pub(crate) spans: Vec<(Vec<Span>, (usize, usize))>,
    seq_len: usize,
}

impl Reader {
    /// Span log-probabilities of passages for one question: log p(s|z,x) over the spans of
    /// each passage (`train` turns dropout on; gradients flow unless disabled by the caller).
    pub fn span_scores(
        &self,
        question: &str,
        passages: &[&str],
        train: bool,
    ) -> Result<SpanScores> {
        if passages.is_empty() {
            return Err(Error::NoPassages);
        }
        let batch = self.tokenize_pairs(question, passages)?;
        self.score_batch(batch, train)
    }

    /// Runs a tokenized batch through BERT and the span head.
    pub(crate) fn score_batch(&self, batch: PairBatch, train: bool) -> Result<SpanScores> {
        let hidden = self.net.bert.forward_t(
            &batch.tokens.input_ids,
            &batch.tokens.attention_mask,
            Some(&batch.tokens.token_type_ids),
            train,
        );
        let h = self.bert_config.hidden_size;
        let flat = hidden.f_reshape([-1, h])?;
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for (row, (spans, _)) in batch.spans.iter().enumerate() {
            let base = (row * batch.seq_len) as i64;
            for s in spans {
                starts.push(base + s.start_token as i64);
                ends.push(base + s.end_token as i64);
            }
        }
        let device = self.cfg.device;
        let scores = if starts.is_empty() {
            Tensor::f_zeros([0], (Kind::Float, device))?
        } else {
            let idx =
                |v: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_to_device(device)?) };
            let pair = Tensor::f_cat(
                &[
                    flat.f_index_select(0, &idx(&starts)?)?,
                    flat.f_index_select(0, &idx(&ends)?)?,
                ],
                1,
            )?;
            let inner = self.net.span_dense.forward(&pair).f_relu()?;
            self.net.span_out.forward(&inner).f_squeeze_dim(-1)?
        };
        let mut out = Vec::with_capacity(batch.spans.len());
        let mut offset = 0i64;
        for (spans, range) in batch.spans {
            let n = spans.len() as i64;
            let logits = scores.f_narrow(0, offset, n)?;
            let log_probs = logits.f_log_softmax(0, Kind::Float)?;
            offset += n;
            out.push(PassageSpans {
                spans,
                log_probs,
                logits,
                passage_tokens: range,
            });
        }
        Ok(SpanScores { passages: out })
    }

    /// Tokenizes `[CLS] question [SEP] passage [SEP]` for every passage into one padded
    /// batch and lists each passage's spans.
    pub(crate) fn tokenize_pairs(&self, question: &str, passages: &[&str]) -> Result<PairBatch> {
        let inputs: Vec<tokenizers::EncodeInput<'_>> =
            passages.iter().map(|&p| (question, p).into()).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(tokenizer_error)?;
        let cols = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        if cols == 0 {
            return Err(Error::InvalidInput {
                reason: "the tokenizer produced no tokens for any question/passage pair".to_owned(),
            });
        }
        let refs: Vec<&Encoding> = encodings.iter().collect();
        let tokens = TokenBatch::from_encodings(&refs, self.pad_id, self.cfg.device)?;
        let spans = encodings
            .iter()
            .zip(passages)
            .map(|(encoding, passage)| self.passage_spans(encoding, passage))
            .collect();
        Ok(PairBatch {
            tokens,
            spans,
            seq_len: cols,
        })
    }

    /// The spans of the passage (second sequence) of one pair encoding: up to
    /// `max_span_tokens` tokens, word-aligned, with their byte offsets in the passage.
    fn passage_spans(&self, encoding: &Encoding, passage: &str) -> (Vec<Span>, (usize, usize)) {
        let sequence_ids = encoding.get_sequence_ids();
        let positions: Vec<usize> = sequence_ids
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Some(1))
            .map(|(i, _)| i)
            .collect();
        let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
            return (Vec::new(), (0, 0));
        };
        let offsets = encoding.get_offsets();
        let words = encoding.get_word_ids();
        let word = |i: usize| words.get(i).copied().flatten();
        let starts_word = |i: usize| i == first || word(i).is_none() || word(i) != word(i - 1);
        let ends_word = |i: usize| i == last || word(i).is_none() || word(i) != word(i + 1);
        let mut spans = Vec::new();
        for a in first..=last {
            if !starts_word(a) {
                continue;
            }
            let limit = (a + self.cfg.max_span_tokens - 1).min(last);
            for b in a..=limit {
                if !ends_word(b) {
                    continue;
                }
                let (start_byte, end_byte) = (offsets[a].0, offsets[b].1);
                if start_byte < end_byte && passage.get(start_byte..end_byte).is_some() {
                    spans.push(Span {
                        start_byte,
                        end_byte,
                        start_token: a,
                        end_token: b,
                    });
                }
            }
        }
        (spans, (first, last + 1))
    }
}
