//! The knowledge-augmented encoder: BERT over `[CLS] x [SEP] z [SEP]`, a span head, and a
//! tied MLM head.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use realm_retriever::bert::{BertConfig, BertModel};
use realm_retriever::eval::normalize_answer;
use realm_retriever::{Encoder, EncoderConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tokenizers::{
    Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result, tokenizer_error};

/// Runtime settings of a [`Reader`]; none of them changes the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ReaderConfig {
    /// The maximum length of `[CLS] x [SEP] z [SEP]` in tokens; longer pairs are truncated
    /// (longest sequence first).
    pub max_len: usize,
    /// The longest span, in tokens, the span head scores.
    pub max_span_tokens: usize,
    /// How many of each passage's best spans become answer candidates in [`Reader::answer`].
    pub top_spans_per_passage: usize,
    /// Where the weights live and the computation runs.
    pub device: Device,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            max_len: 256,
            max_span_tokens: 10,
            top_spans_per_passage: 5,
            device: Device::Cpu,
        }
    }
}

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

/// The spans of one passage and their log p(s|z,x).
#[derive(Debug)]
pub struct PassageSpans {
    /// Every span of up to `max_span_tokens` tokens inside the passage's tokens that starts
    /// at the first sub-word of a word and ends at the last sub-word of a word.
    pub spans: Vec<Span>,
    /// log p(s|z,x), a [spans.len()] float tensor (log-softmax over this passage's spans);
    /// it carries gradient when computed with gradients enabled.
    pub log_probs: Tensor,
    /// The first and one-past-last token positions of the passage in the sequence.
    pub passage_tokens: (usize, usize),
}

/// Span log-probabilities of several passages for one question.
#[derive(Debug)]
pub struct SpanScores {
    /// One entry per passage, in the order given.
    pub passages: Vec<PassageSpans>,
}

/// The answer to a question, marginalized over the retrieved passages.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The answer text, copied from a passage.
    pub text: String,
    /// p(y|x) = Σ_z p(z|x) · p(y|z,x).
    pub prob: f64,
    /// One entry per passage, in the order given.
    pub evidence: Vec<Evidence>,
}

/// What one passage contributes to an [`Answer`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub passage_id: u64,
    pub title: String,
    /// p(z|x) as given.
    pub p_z: f64,
    /// The passage's most probable span (None when the passage holds no span).
    pub span: Option<String>,
    /// p(best span|z,x).
    pub span_prob: f64,
    /// p(y|z,x) for the returned answer y: the sum of p(s|z,x) over the spans of this
    /// passage whose normalized text equals y's.
    pub p_answer_given_z: f64,
}

/// The modules of a [`Reader`].
#[derive(Debug)]
struct Network {
    bert: BertModel,
    span_dense: nn::Linear,
    span_out: nn::Linear,
    mlm_dense: nn::Linear,
    mlm_layer_norm: nn::LayerNorm,
    mlm_bias: Tensor,
}

/// REALM's knowledge-augmented encoder with a span head and a tied MLM head. It owns its
/// [`nn::VarStore`]: BERT under `bert.`, the span head under `span_head.`, the MLM head
/// under `mlm.` (its output projection is the word-embedding matrix itself).
pub struct Reader {
    vs: nn::VarStore,
    net: Network,
    bert_config: BertConfig,
    tokenizer: Tokenizer,
    pad_id: i64,
    cfg: ReaderConfig,
    /// The inverse temperature of p(z|x) the reader was trained with.
    retrieval_scale: f64,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("bert_config", &self.bert_config)
            .field("config", &self.cfg)
            .field("pad_id", &self.pad_id)
            .field("retrieval_scale", &self.retrieval_scale)
            .finish_non_exhaustive()
    }
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"REALMRDR";
const CHECKPOINT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    bert: BertConfig,
    pad_id: i64,
    /// Absent from checkpoints written before it existed: 1.
    #[serde(default = "unit_scale")]
    retrieval_scale: f64,
}

fn unit_scale() -> f64 {
    1.0
}

/// The tokenized `[CLS] x [SEP] z [SEP]` pairs of one question.
struct PairBatch {
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor,
    /// Per passage: the spans and the passage's token range.
    spans: Vec<(Vec<Span>, (usize, usize))>,
    seq_len: usize,
}

impl Reader {
    /// Loads a Hugging Face / sentence-transformers BERT folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`) as the reader's BERT; the span and MLM heads
    /// are initialized from `seed` (the MLM output projection is the pretrained
    /// word-embedding matrix).
    pub fn load(model_dir: &Path, cfg: ReaderConfig, seed: i64) -> Result<Reader> {
        let encoder = Encoder::load(
            model_dir,
            EncoderConfig {
                device: Device::Cpu,
                ..EncoderConfig::default()
            },
        )?;
        let bert_config = encoder.bert_config().clone();
        let pad_id = encoder.pad_id();
        let reader = Self::build(bert_config, encoder.tokenizer().clone(), cfg, pad_id)?;
        reader.initialize(seed, |name| !name.starts_with("bert."))?;
        let source = encoder.var_store().variables();
        for (name, var) in reader.vs.variables() {
            let Some(stem) = name.strip_prefix("bert.") else {
                continue;
            };
            let src = source.get(stem).ok_or_else(|| Error::InvalidInput {
                reason: format!(
                    "the model folder {} provides no weight for the reader variable {name:?}",
                    model_dir.display()
                ),
            })?;
            copy_into(&name, &var, src)?;
        }
        Ok(reader)
    }

    /// A randomly initialized reader (BERT's initialization, deterministic in `seed` and
    /// independent of libtorch's global generator), for tests with [`BertConfig::tiny`].
    pub fn random(
        bert: BertConfig,
        tokenizer: Tokenizer,
        cfg: ReaderConfig,
        seed: i64,
    ) -> Result<Reader> {
        let pad_id = tokenizer
            .get_padding()
            .map(|p| i64::from(p.pad_id))
            .or_else(|| tokenizer.token_to_id("[PAD]").map(i64::from))
            .unwrap_or(bert.pad_token_id);
        let reader = Self::build(bert, tokenizer, cfg, pad_id)?;
        reader.initialize(seed, |_| true)?;
        Ok(reader)
    }

    /// Serializes the reader: `b"REALMRDR"`, a little-endian u32 format version, then three
    /// sections, each a little-endian u64 length followed by its bytes: a JSON header (BERT
    /// config, pad id), the tokenizer JSON, and the weights (names sorted; per variable a
    /// u32 name length, the name, a u32 rank, u64 dimensions, little-endian f32 values).
    /// Runtime settings ([`ReaderConfig`]) are not part of it. Equal weights give equal bytes.
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let header = serde_json::to_vec(&CheckpointHeader {
            bert: self.bert_config.clone(),
            pad_id: self.pad_id,
            retrieval_scale: self.retrieval_scale,
        })
        .map_err(|e| Error::Checkpoint {
            reason: format!("its header could not be serialized ({e})"),
        })?;
        let tokenizer = self.tokenizer.to_string(false).map_err(tokenizer_error)?;
        let vars: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let mut weights = Vec::new();
        for (name, var) in &vars {
            let tensor = var
                .f_detach()?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?;
            let values = Vec::<f32>::try_from(&tensor.f_flatten(0, -1)?)?;
            let size = tensor.size();
            weights.extend_from_slice(&(name.len() as u32).to_le_bytes());
            weights.extend_from_slice(name.as_bytes());
            weights.extend_from_slice(&(size.len() as u32).to_le_bytes());
            for d in size {
                weights.extend_from_slice(&(d as u64).to_le_bytes());
            }
            for v in values {
                weights.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(36 + header.len() + tokenizer.len() + weights.len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        for section in [&header[..], tokenizer.as_bytes(), &weights[..]] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        Ok(out)
    }

    /// Rebuilds a reader from [`Reader::to_checkpoint_bytes`] with the runtime settings `cfg`.
    pub fn from_checkpoint_bytes(bytes: &[u8], cfg: ReaderConfig) -> Result<Reader> {
        let fail = |reason: &str| Error::Checkpoint {
            reason: reason.to_owned(),
        };
        let mut cursor = Cursor { bytes, at: 0 };
        if cursor.take(8) != Some(&CHECKPOINT_MAGIC[..]) {
            return Err(fail(
                "it does not start with the realm-db reader magic bytes",
            ));
        }
        let version = cursor
            .u32()
            .ok_or_else(|| fail("it ends inside its version"))?;
        if version != CHECKPOINT_VERSION {
            return Err(Error::Checkpoint {
                reason: format!(
                    "its format version is {version}, but only {CHECKPOINT_VERSION} is supported"
                ),
            });
        }
        let mut sections = Vec::with_capacity(3);
        for _ in 0..3 {
            let len = cursor
                .u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| fail("it ends inside a section length"))?;
            sections.push(
                cursor
                    .take(len)
                    .ok_or_else(|| fail("a section is longer than the bytes left"))?,
            );
        }
        if cursor.at != bytes.len() {
            return Err(fail("it has bytes after its last section"));
        }
        let header: CheckpointHeader =
            serde_json::from_slice(sections[0]).map_err(|e| Error::Checkpoint {
                reason: format!("its header is not valid JSON of the expected shape ({e})"),
            })?;
        header.bert.validate().map_err(|reason| Error::Checkpoint {
            reason: format!("its BERT configuration is invalid: {reason}"),
        })?;
        let tokenizer = Tokenizer::from_bytes(sections[1]).map_err(|e| Error::Checkpoint {
            reason: format!("its tokenizer JSON cannot be parsed ({e})"),
        })?;
        let mut weights = HashMap::new();
        let mut w = Cursor {
            bytes: sections[2],
            at: 0,
        };
        while w.at < w.bytes.len() {
            let name_len = w
                .u32()
                .ok_or_else(|| fail("it ends inside a weight name"))?;
            let name = w
                .take(name_len as usize)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| fail("a weight name is truncated or not UTF-8"))?
                .to_owned();
            let rank = w
                .u32()
                .ok_or_else(|| fail("it ends inside a weight rank"))?;
            let mut size = Vec::new();
            for _ in 0..rank.min(8) {
                size.push(
                    w.u64()
                        .and_then(|d| i64::try_from(d).ok())
                        .ok_or_else(|| fail("it ends inside a weight shape"))?,
                );
            }
            let numel = size
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
                .and_then(|n| n.checked_mul(4))
                .ok_or_else(|| fail("a weight shape overflows"))?;
            let data = w
                .take(numel)
                .ok_or_else(|| fail("it ends inside a weight's values"))?;
            let values: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            weights.insert(
                name,
                Tensor::f_from_slice(&values)?.f_view(size.as_slice())?,
            );
        }
        let mut reader = Self::build(header.bert, tokenizer, cfg, header.pad_id)?;
        reader
            .set_retrieval_scale(header.retrieval_scale)
            .map_err(|_| Error::Checkpoint {
                reason: format!(
                    "its retrieval scale {} is not a positive number",
                    header.retrieval_scale
                ),
            })?;
        let vars = reader.vs.variables();
        if let Some(extra) = weights.keys().find(|name| !vars.contains_key(*name)) {
            return Err(Error::Checkpoint {
                reason: format!("it holds a tensor {extra:?} that this reader does not have"),
            });
        }
        for (name, var) in &vars {
            let src = weights.get(name).ok_or_else(|| Error::Checkpoint {
                reason: format!("it has no tensor {name:?}"),
            })?;
            copy_into(name, var, src).map_err(|e| Error::Checkpoint {
                reason: e.to_string(),
            })?;
        }
        Ok(reader)
    }

    /// The inverse temperature of p(z|x) this reader was trained with (1 for a reader that
    /// was not trained with retrieval): p(z|x) = softmax over the retrieved passages of
    /// `retrieval_scale` times the inner-product scores. Saved in checkpoints.
    pub fn retrieval_scale(&self) -> f64 {
        self.retrieval_scale
    }

    /// Sets the inverse temperature of p(z|x) (the trainer records its `scale` here).
    pub fn set_retrieval_scale(&mut self, scale: f64) -> Result<()> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidInput {
                reason: format!("the retrieval scale must be a positive number, not {scale}"),
            });
        }
        self.retrieval_scale = scale;
        Ok(())
    }

    /// p(z|x) over retrieved passages from their inner-product `scores`: the softmax of
    /// `retrieval_scale · score`, as the reader saw it in training.
    pub fn passage_probs(&self, scores: &[f32]) -> Vec<f32> {
        let scale = self.retrieval_scale as f32;
        let scaled: Vec<f32> = scores.iter().map(|&s| s * scale).collect();
        realm_retriever::softmax(&scaled)
    }

    /// The hex SHA-256 of [`Reader::to_checkpoint_bytes`].
    pub fn fingerprint(&self) -> Result<String> {
        let digest = Sha256::digest(self.to_checkpoint_bytes()?);
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The reader's variables (to train them).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The reader's variables, mutably (to freeze or move them).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The runtime settings.
    pub fn config(&self) -> &ReaderConfig {
        &self.cfg
    }

    /// The BERT configuration.
    pub fn bert_config(&self) -> &BertConfig {
        &self.bert_config
    }

    /// The tokenizer (truncation set to `max_len`, no padding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The word-embedding matrix [V, H], which is also the MLM head's output projection.
    pub fn word_embeddings(&self) -> Tensor {
        self.net.bert.word_embeddings().shallow_clone()
    }

    /// MLM logits [B, T, V]: transform (Linear, GELU, LayerNorm) of BERT's hidden states,
    /// then the product with the transposed word-embedding matrix plus a bias.
    pub fn mlm_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        train: bool,
    ) -> Tensor {
        let hidden =
            self.net
                .bert
                .forward_t(input_ids, attention_mask, Some(token_type_ids), train);
        let transformed = self
            .net
            .mlm_layer_norm
            .forward(&self.net.mlm_dense.forward(&hidden).gelu("none"));
        transformed.matmul(&self.net.bert.word_embeddings().tr()) + &self.net.mlm_bias
    }

    /// [`Reader::mlm_logits`] at the sequence positions `positions` only ([M] int64):
    /// logits [B, M, V], without running the MLM head over the other positions.
    pub fn mlm_logits_at(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Tensor {
        let hidden = self
            .net
            .bert
            .forward_t(input_ids, attention_mask, Some(token_type_ids), train)
            .index_select(1, positions);
        let transformed = self
            .net
            .mlm_layer_norm
            .forward(&self.net.mlm_dense.forward(&hidden).gelu("none"));
        transformed.matmul(&self.net.bert.word_embeddings().tr()) + &self.net.mlm_bias
    }

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
    fn score_batch(&self, batch: PairBatch, train: bool) -> Result<SpanScores> {
        let hidden = self.net.bert.forward_t(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
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
            let log_probs = scores
                .f_narrow(0, offset, n)?
                .f_log_softmax(0, Kind::Float)?;
            offset += n;
            out.push(PassageSpans {
                spans,
                log_probs,
                passage_tokens: range,
            });
        }
        Ok(SpanScores { passages: out })
    }

    /// p(y|x) and the best answer from retrieved passages `(id, title, text, p(z|x))`
    /// (no gradient, dropout off).
    ///
    /// Candidates are the `top_spans_per_passage` best spans of each passage, grouped by
    /// normalized text; each candidate's p(y|x) sums p(z|x) · p(s|z,x) over every span of
    /// every passage whose normalized text matches, and the most probable candidate wins
    /// (ties: the one met first, passages in the order given, spans best first).
    pub fn answer(&self, question: &str, passages: &[(u64, &str, &str, f32)]) -> Result<Answer> {
        if passages.is_empty() {
            return Err(Error::NoPassages);
        }
        for &(id, _, _, p) in passages {
            if !p.is_finite() || p < 0.0 {
                return Err(Error::InvalidInput {
                    reason: format!(
                        "p(z|x) of passage {id} is {p}, not a finite non-negative number"
                    ),
                });
            }
        }
        let texts: Vec<&str> = passages.iter().map(|p| p.2).collect();
        let scores = tch::no_grad(|| self.span_scores(question, &texts, false))?;
        // Per passage: normalized text -> Σ p(s|z,x), the spans best first, their probs.
        let mut by_text: Vec<HashMap<String, f64>> = Vec::with_capacity(passages.len());
        let mut ranked: Vec<Vec<(usize, f64)>> = Vec::with_capacity(passages.len());
        for (spans, text) in scores.passages.iter().zip(&texts) {
            let log_probs = Vec::<f32>::try_from(&spans.log_probs.f_to_device(Device::Cpu)?)?;
            let mut sums: HashMap<String, f64> = HashMap::new();
            let mut order: Vec<(usize, f64)> = Vec::with_capacity(log_probs.len());
            for (i, (span, &lp)) in spans.spans.iter().zip(&log_probs).enumerate() {
                let p = f64::from(lp).exp();
                order.push((i, p));
                let key = normalize_answer(span.text(text));
                if !key.is_empty() {
                    *sums.entry(key).or_insert(0.0) += p;
                }
            }
            order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            by_text.push(sums);
            ranked.push(order);
        }
        let marginal = |key: &str| -> f64 {
            passages
                .iter()
                .zip(&by_text)
                .map(|(p, sums)| f64::from(p.3) * sums.get(key).copied().unwrap_or(0.0).min(1.0))
                .sum()
        };
        let mut best: Option<(String, String, f64)> = None;
        let mut seen: HashSet<String> = HashSet::new();
        for (z, order) in ranked.iter().enumerate() {
            let spans = &scores.passages[z].spans;
            for &(i, _) in order.iter().take(self.cfg.top_spans_per_passage) {
                let raw = spans[i].text(texts[z]);
                let key = normalize_answer(raw);
                if key.is_empty() || !seen.insert(key.clone()) {
                    continue;
                }
                let prob = marginal(&key);
                if best.as_ref().is_none_or(|b| prob > b.2) {
                    best = Some((raw.to_owned(), key, prob));
                }
            }
        }
        let Some((text, key, prob)) = best else {
            return Err(Error::NoCandidate {
                passages: passages.len(),
            });
        };
        let evidence = passages
            .iter()
            .enumerate()
            .map(|(z, &(passage_id, title, body, p_z))| {
                let top = ranked[z].first();
                Evidence {
                    passage_id,
                    title: title.to_owned(),
                    p_z: f64::from(p_z),
                    span: top.map(|&(i, _)| scores.passages[z].spans[i].text(body).to_owned()),
                    span_prob: top.map_or(0.0, |&(_, p)| p),
                    p_answer_given_z: by_text[z].get(&key).copied().unwrap_or(0.0).min(1.0),
                }
            })
            .collect();
        Ok(Answer {
            text,
            prob,
            evidence,
        })
    }

    /// REALM's fine-tuning loss for one question,
    /// −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x), where S(z,y) holds the spans of z whose
    /// normalized text equals that of one of `answers`. `log_p_z` is a [k] tensor of
    /// log p(z|x) for the k passages (it may carry gradient from the query tower). `None`
    /// when no span of any passage matches any answer.
    pub fn qa_loss(
        &self,
        question: &str,
        passages: &[&str],
        log_p_z: &Tensor,
        answers: &[String],
        train: bool,
    ) -> Result<Option<Tensor>> {
        if passages.is_empty() {
            return Err(Error::NoPassages);
        }
        if log_p_z.size() != [passages.len() as i64] {
            return Err(Error::InvalidInput {
                reason: format!(
                    "log p(z|x) has shape {:?}, but {} passages were given",
                    log_p_z.size(),
                    passages.len()
                ),
            });
        }
        let targets: Vec<String> = answers
            .iter()
            .map(|a| normalize_answer(a))
            .filter(|a| !a.is_empty())
            .collect();
        if targets.is_empty() {
            return Ok(None);
        }
        let batch = self.tokenize_pairs(question, passages)?;
        let matching: Vec<Vec<i64>> = batch
            .spans
            .iter()
            .zip(passages)
            .map(|((spans, _), text)| {
                spans
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| targets.contains(&normalize_answer(s.text(text))))
                    .map(|(i, _)| i as i64)
                    .collect()
            })
            .collect();
        if matching.iter().all(Vec::is_empty) {
            return Ok(None);
        }
        let scores = self.score_batch(batch, train)?;
        let log_p_z = log_p_z
            .f_to_device(self.cfg.device)?
            .f_to_kind(Kind::Float)?;
        let mut terms = Vec::new();
        for (z, (spans, hits)) in scores.passages.iter().zip(&matching).enumerate() {
            if hits.is_empty() {
                continue;
            }
            let idx = Tensor::f_from_slice(hits)?.f_to_device(self.cfg.device)?;
            let log_p_y = spans
                .log_probs
                .f_index_select(0, &idx)?
                .f_logsumexp(&[0i64][..], false)?;
            terms.push(log_p_y + log_p_z.f_get(z as i64)?);
        }
        let total = Tensor::f_stack(&terms, 0)?.f_logsumexp(&[0i64][..], false)?;
        Ok(Some(total.f_neg()?))
    }

    /// Validates settings, configures the tokenizer, and creates the variables.
    fn build(
        bert_config: BertConfig,
        tokenizer: Tokenizer,
        cfg: ReaderConfig,
        pad_id: i64,
    ) -> Result<Reader> {
        let invalid = |reason: String| Error::InvalidInput { reason };
        bert_config
            .validate()
            .map_err(|reason| invalid(format!("the BERT configuration is invalid: {reason}")))?;
        if bert_config.type_vocab_size < 2 {
            return Err(invalid(format!(
                "question/passage pairs need two token types, but the model has {}",
                bert_config.type_vocab_size
            )));
        }
        let max_positions = usize::try_from(bert_config.max_position_embeddings).unwrap_or(0);
        if cfg.max_len > max_positions {
            return Err(invalid(format!(
                "the maximum length {} exceeds the model's {max_positions} positions",
                cfg.max_len
            )));
        }
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if cfg.max_len <= special + 1 {
            return Err(invalid(format!(
                "the maximum length {} leaves no room beside the {special} special tokens of a pair",
                cfg.max_len
            )));
        }
        if cfg.max_span_tokens == 0 {
            return Err(invalid(
                "the longest span must be at least 1 token".to_owned(),
            ));
        }
        if cfg.top_spans_per_passage == 0 {
            return Err(invalid(
                "at least one span per passage must be a candidate".to_owned(),
            ));
        }
        if let Device::Cuda(index) = cfg.device {
            let available = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if index >= available {
                return Err(invalid(format!(
                    "CUDA device {index} was requested, but libtorch sees {available} CUDA device(s)"
                )));
            }
        }
        let vocab = tokenizer.get_vocab_size(true);
        if i64::try_from(vocab).map_or(true, |v| v > bert_config.vocab_size) {
            return Err(invalid(format!(
                "the tokenizer has {vocab} tokens but the model's vocabulary holds only {}",
                bert_config.vocab_size
            )));
        }
        if pad_id < 0 || pad_id >= bert_config.vocab_size {
            return Err(invalid(format!(
                "the padding id {pad_id} is outside the model's vocabulary"
            )));
        }
        let mut tokenizer = tokenizer;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: cfg.max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(tokenizer_error)?;

        let vs = nn::VarStore::new(cfg.device);
        let root = vs.root();
        let h = bert_config.hidden_size;
        let lc = nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: bert_config.initializer_range,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let bert = BertModel::new(&(&root / "bert"), &bert_config);
        let span_root = &root / "span_head";
        let mlm_root = &root / "mlm";
        let net = Network {
            bert,
            span_dense: nn::linear(&span_root / "dense", 2 * h, h, lc),
            span_out: nn::linear(&span_root / "out", h, 1, lc),
            mlm_dense: nn::linear(&mlm_root / "transform" / "dense", h, h, lc),
            mlm_layer_norm: nn::layer_norm(
                &mlm_root / "transform" / "LayerNorm",
                vec![h],
                nn::LayerNormConfig {
                    eps: bert_config.layer_norm_eps,
                    ..Default::default()
                },
            ),
            mlm_bias: mlm_root.zeros("bias", &[bert_config.vocab_size]),
        };
        Ok(Reader {
            vs,
            net,
            bert_config,
            tokenizer,
            pad_id,
            cfg,
            retrieval_scale: 1.0,
        })
    }

    /// Overwrites the selected variables with BERT's initialization from a generator seeded
    /// by `seed` and the variable's name (unit LayerNorm gains, zero biases, normal matrices).
    fn initialize(&self, seed: i64, select: impl Fn(&str) -> bool) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| select(name))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in vars {
            let size = var.size();
            let numel: usize = size.iter().map(|&d| d as usize).product();
            let values =
                realm_retriever::bert::initial_values(&self.bert_config, &name, numel, seed);
            let src = Tensor::f_from_slice(&values)?.f_view(size.as_slice())?;
            copy_into(&name, &var, &src)?;
        }
        Ok(())
    }

    /// Tokenizes `[CLS] question [SEP] passage [SEP]` for every passage into one padded
    /// batch and lists each passage's spans.
    fn tokenize_pairs(&self, question: &str, passages: &[&str]) -> Result<PairBatch> {
        let inputs: Vec<tokenizers::EncodeInput<'_>> =
            passages.iter().map(|&p| (question, p).into()).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(tokenizer_error)?;
        let rows = encodings.len();
        let cols = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        if cols == 0 {
            return Err(Error::InvalidInput {
                reason: "the tokenizer produced no tokens for any question/passage pair".to_owned(),
            });
        }
        let mut ids = vec![self.pad_id; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        let mut types = vec![0i64; rows * cols];
        let mut spans = Vec::with_capacity(rows);
        for (row, (encoding, passage)) in encodings.iter().zip(passages).enumerate() {
            let start = row * cols;
            for (col, ((&id, &m), &t)) in encoding
                .get_ids()
                .iter()
                .zip(encoding.get_attention_mask())
                .zip(encoding.get_type_ids())
                .enumerate()
            {
                ids[start + col] = i64::from(id);
                mask[start + col] = i64::from(m);
                types[start + col] = i64::from(t);
            }
            spans.push(self.passage_spans(encoding, passage));
        }
        let device = self.cfg.device;
        let shape = [rows as i64, cols as i64];
        let tensor = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?
                .f_view(shape)?
                .f_to_device(device)?)
        };
        Ok(PairBatch {
            input_ids: tensor(&ids)?,
            attention_mask: tensor(&mask)?,
            token_type_ids: tensor(&types)?,
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

/// Copies `src` into the variable `var` (converting the kind and device) without gradient.
fn copy_into(name: &str, var: &Tensor, src: &Tensor) -> Result<()> {
    if var.size() != src.size() {
        return Err(Error::InvalidInput {
            reason: format!(
                "the weight for {name:?} has shape {:?} but the variable's is {:?}",
                src.size(),
                var.size()
            ),
        });
    }
    let mut dst = var.shallow_clone();
    tch::no_grad(|| dst.f_copy_(src))?;
    Ok(())
}

/// A byte reader over a checkpoint.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}
