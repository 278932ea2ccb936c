//! The phrase encoder (DensePhrases §3): BERT over `[CLS] title [SEP] text [SEP]`, a start
//! head and an end head on every token, a filter head, and query heads on the question's
//! `[CLS]`. Its checkpoints are self-describing like the encoder's.

use std::fmt;
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tokenizers::{EncodeInput, Encoding, Tokenizer};

use super::words::word_boundary_tokens;
use super::{PhraseRows, PhraseToken};
use crate::backbone::{BertParts, BertSetup};
use crate::batch::TokenBatch;
use crate::bert::{BertConfig, BertModel};
use crate::checkpoint::{
    Checkpoint, CheckpointKind, CheckpointParts, FormatError, check_bert_weights,
    checkpoint_fingerprint, write_checkpoint,
};
use crate::encoder::checkpoint_error;
use crate::error::{Error, Result};
use crate::model_folder::ModelFolder;
use crate::tokenizer::tokenizer_error;
use crate::weights::{TensorFile, copy_into, load_exact, reinitialize, to_safetensors};

/// Runtime settings of a [`PhraseEncoder`]; none of them changes the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseEncoderConfig {
    /// The maximum length of `[CLS] title [SEP] text [SEP]` in tokens (0: the model's
    /// maximum). Text beyond it is not indexed.
    pub max_len: usize,
    /// A token is stored as a phrase start when its start-filter probability is at least
    /// this (and as an end likewise); 0 keeps every word boundary. The filter head of an
    /// untrained encoder gives every token 0.5.
    pub filter_threshold: f64,
    /// How many passages or questions run through BERT at once.
    pub batch_size: usize,
    /// Where the weights live and the computation runs.
    pub device: Device,
}

impl Default for PhraseEncoderConfig {
    fn default() -> Self {
        PhraseEncoderConfig {
            max_len: 256,
            filter_threshold: 0.0,
            batch_size: 32,
            device: Device::Cpu,
        }
    }
}

/// The query side of a phrase search: a start vector and an end vector.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseQuery {
    /// Scores phrase starts: q_start · s_i.
    pub start: Vec<f32>,
    /// Scores phrase ends: q_end · e_j.
    pub end: Vec<f32>,
}

/// What the phrase side of the network gives for a batch of passages.
#[derive(Debug)]
pub struct PhraseOutputs {
    /// Start vectors, `[batch, tokens, dim]`.
    pub start: Tensor,
    /// End vectors, `[batch, tokens, dim]`.
    pub end: Tensor,
    /// Filter logits, `[batch, tokens, 2]`: whether a token starts (0) or ends (1) an answer.
    pub filter: Tensor,
}

/// The modules of a [`PhraseEncoder`].
#[derive(Debug)]
struct Network {
    bert: BertModel,
    start: nn::Linear,
    end: nn::Linear,
    filter: nn::Linear,
    query_start: nn::Linear,
    query_end: nn::Linear,
}

/// Phrase encoder checkpoints: `b"REALMPHR"`, format version 1.
const PHRASE_CHECKPOINT: CheckpointKind = CheckpointKind {
    magic: b"REALMPHR",
    name: "phrase encoder",
    versions: &[1],
};

/// How a question's token states become the input of the query heads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryPooling {
    /// The `[CLS]` state (DensePhrases'; checkpoints written before pooling was recorded).
    #[default]
    Cls,
    /// The mean of the question's token states, the pooling sentence-transformers models
    /// such as MiniLM are trained with (every new phrase encoder's).
    Mean,
}

/// The JSON header of a phrase encoder checkpoint.
#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    bert: BertConfig,
    dim: i64,
    max_len: usize,
    pad_id: i64,
    /// Absent from checkpoints written before it was recorded: `[CLS]`.
    #[serde(default)]
    query_pooling: QueryPooling,
}

/// DensePhrases' phrase encoder: one BERT; every text token of a passage gets a start
/// vector and an end vector (linear heads of `dim` outputs on the last hidden layer) and
/// two filter logits; a question gets q_start and q_end from its pooled states (the mean
/// of its tokens' for a new encoder, [`QueryPooling`]) through two more heads. A new encoder's start and end heads copy the first and the last `dim` hidden
/// units (the halves of the hidden state when `dim` is half of it) and its query heads the
/// same, so the untrained model scores a phrase by hidden-state similarity.
///
/// Variables: BERT under `bert.`, heads under `phrase.start`, `phrase.end`,
/// `phrase.filter`, `query.start`, `query.end`. `Send` and `Sync` like the encoder.
pub struct PhraseEncoder {
    vs: nn::VarStore,
    network: Mutex<Network>,
    bert_config: BertConfig,
    tokenizer: Tokenizer,
    pad_id: i64,
    dim: i64,
    query_pooling: QueryPooling,
    cfg: PhraseEncoderConfig,
}

impl fmt::Debug for PhraseEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhraseEncoder")
            .field("bert_config", &self.bert_config)
            .field("dim", &self.dim)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl PhraseEncoder {
    /// Loads the BERT weights and tokenizer of a Hugging Face / sentence-transformers folder
    /// and adds new heads of `dim` outputs per side (`None`: half the hidden size, so the
    /// new heads copy the two halves of the hidden state; see the type's documentation).
    pub fn load(
        model_dir: &Path,
        dim: Option<i64>,
        cfg: PhraseEncoderConfig,
    ) -> Result<PhraseEncoder> {
        let folder = ModelFolder::read(model_dir)?;
        let dim = dim.unwrap_or(folder.bert.hidden_size / 2);
        let encoder = Self::build(
            folder.bert.clone(),
            folder.tokenizer.clone(),
            dim,
            cfg,
            None,
            QueryPooling::Mean,
        )?;
        folder.load_weights(&encoder.vs, |name| name.strip_prefix("bert."))?;
        encoder.initialize_heads()?;
        Ok(encoder)
    }

    /// A randomly initialized BERT (deterministic in `seed`) with new heads, for tests with
    /// [`BertConfig::tiny`].
    pub fn random(
        bert: BertConfig,
        tokenizer: Tokenizer,
        dim: i64,
        cfg: PhraseEncoderConfig,
        seed: i64,
    ) -> Result<PhraseEncoder> {
        let encoder = Self::build(bert, tokenizer, dim, cfg, None, QueryPooling::Mean)?;
        reinitialize(&encoder.vs, &encoder.bert_config, seed, |name| {
            name.starts_with("bert.")
        })
        .map_err(checkpoint_error)?;
        encoder.initialize_heads()?;
        Ok(encoder)
    }

    /// Rebuilds a phrase encoder from [`PhraseEncoder::to_checkpoint_bytes`].
    /// `cfg.max_len == 0` keeps the checkpoint's maximum length.
    pub fn from_checkpoint_bytes(bytes: &[u8], cfg: PhraseEncoderConfig) -> Result<PhraseEncoder> {
        let checkpoint = Checkpoint::parse(bytes, &PHRASE_CHECKPOINT).map_err(checkpoint_error)?;
        let header: CheckpointHeader = checkpoint.header().map_err(checkpoint_error)?;
        let tokenizer = checkpoint.tokenizer().map_err(checkpoint_error)?;
        let file = TensorFile::parse(checkpoint.weights).map_err(checkpoint_error)?;
        check_bert_weights(
            &header.bert,
            header.bert.parameter_count(),
            checkpoint.weights,
        )
        .map_err(checkpoint_error)?;
        let cfg = PhraseEncoderConfig {
            max_len: if cfg.max_len == 0 {
                header.max_len
            } else {
                cfg.max_len
            },
            ..cfg
        };
        let encoder = Self::build(
            header.bert,
            tokenizer,
            header.dim,
            cfg,
            Some(header.pad_id),
            header.query_pooling,
        )?;
        load_exact(&encoder.vs, &file).map_err(checkpoint_error)?;
        Ok(encoder)
    }

    /// Serializes the encoder: `b"REALMPHR"`, format version 1, then the JSON header (BERT
    /// config, `dim`, maximum length, padding id), the tokenizer and the weights (see
    /// [`crate::checkpoint`]). Equal weights and settings give equal bytes.
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let header = CheckpointHeader {
            bert: self.bert_config.clone(),
            dim: self.dim,
            max_len: self.cfg.max_len,
            pad_id: self.pad_id,
            query_pooling: self.query_pooling,
        };
        let weights = to_safetensors(&self.vs).map_err(checkpoint_error)?;
        write_checkpoint(CheckpointParts {
            kind: &PHRASE_CHECKPOINT,
            header: &header,
            tokenizer: &self.tokenizer,
            weights: &weights,
        })
        .map_err(checkpoint_error)
    }

    /// The hex SHA-256 of the checkpoint bytes.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(checkpoint_fingerprint(&self.to_checkpoint_bytes()?))
    }

    /// The size of each start and end vector.
    pub fn dim(&self) -> usize {
        self.dim as usize
    }

    /// The runtime settings.
    pub fn config(&self) -> &PhraseEncoderConfig {
        &self.cfg
    }

    /// Changes the filter threshold (what [`PhraseEncoder::encode_passages`] keeps).
    pub fn set_filter_threshold(&mut self, threshold: f64) -> Result<()> {
        check_threshold(threshold)?;
        self.cfg.filter_threshold = threshold;
        Ok(())
    }

    /// The variables, for training.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The variables, for optimizers and loading.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Tokenizes `(title, text)` passages as `[CLS] title [SEP] text [SEP]` into one padded
    /// batch, with each passage's encoding (whose sequence 1 is the text).
    pub fn tokenize_passages(
        &self,
        passages: &[(&str, &str)],
    ) -> Result<(TokenBatch, Vec<Encoding>)> {
        let inputs: Vec<EncodeInput<'_>> = passages
            .iter()
            .map(|&(title, text)| (title, text).into())
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(tokenizer_error)?;
        let batch = self.batch_from(&encodings.iter().collect::<Vec<_>>())?;
        Ok((batch, encodings))
    }

    /// Tokenizes questions into one padded batch.
    pub fn tokenize_queries(&self, questions: &[&str]) -> Result<TokenBatch> {
        let encodings = self
            .tokenizer
            .encode_batch(questions.to_vec(), true)
            .map_err(tokenizer_error)?;
        self.batch_from(&encodings.iter().collect::<Vec<_>>())
    }

    /// The phrase side on a batch of passages, with autograd (dropout when `train`).
    pub fn passage_forward_t(&self, batch: &TokenBatch, train: bool) -> PhraseOutputs {
        let network = self.network.lock();
        let hidden = self.hidden(&network.bert, batch, train);
        PhraseOutputs {
            start: network.start.forward(&hidden),
            end: network.end.forward(&hidden),
            filter: network.filter.forward(&hidden),
        }
    }

    /// The query side on a batch of questions: (q_start, q_end), each `[batch, dim]`, with
    /// autograd. The heads read the pooled question ([`QueryPooling`]).
    pub fn query_forward_t(&self, batch: &TokenBatch, train: bool) -> (Tensor, Tensor) {
        let network = self.network.lock();
        let hidden = self.hidden(&network.bert, batch, train);
        let pooled = match self.query_pooling {
            QueryPooling::Cls => hidden.select(1, 0),
            QueryPooling::Mean => {
                let weights = batch
                    .attention_mask
                    .to_device(self.cfg.device)
                    .unsqueeze(-1)
                    .to_kind(hidden.kind());
                let summed = (&hidden * &weights).sum_dim_intlist(1, false, None::<Kind>);
                summed
                    / weights
                        .sum_dim_intlist(1, false, None::<Kind>)
                        .clamp_min(1.0)
            }
        };
        (
            network.query_start.forward(&pooled),
            network.query_end.forward(&pooled),
        )
    }

    /// How the query heads pool the question's token states.
    pub fn query_pooling(&self) -> QueryPooling {
        self.query_pooling
    }

    /// Encodes passages into their phrase rows, without autograd: the word-boundary tokens
    /// of each text (up to the maximum length) whose filter probability reaches the
    /// threshold, with their start and end vectors. Row `i` belongs to `passages[i]`; a
    /// passage whose text has no tokens, or none kept, gets empty rows.
    pub fn encode_passages(&self, passages: &[(&str, &str)]) -> Result<Vec<PhraseRows>> {
        let mut out: Vec<Option<PhraseRows>> = vec![None; passages.len()];
        let mut order: Vec<usize> = (0..passages.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(passages[i].0.len() + passages[i].1.len()));
        tch::no_grad(|| -> Result<()> {
            for chunk in order.chunks(self.cfg.batch_size) {
                let docs: Vec<(&str, &str)> = chunk.iter().map(|&i| passages[i]).collect();
                let (batch, encodings) = self.tokenize_passages(&docs)?;
                let outputs = self.passage_forward_t(&batch, false);
                let host = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)
                };
                let start = host(&outputs.start)?;
                let end = host(&outputs.end)?;
                let filter = host(&outputs.filter.sigmoid())?;
                for (row, (&i, encoding)) in chunk.iter().zip(&encodings).enumerate() {
                    let b = row as i64;
                    out[i] =
                        Some(self.rows_of(encoding, [&start.get(b), &end.get(b), &filter.get(b)])?);
                }
            }
            Ok(())
        })?;
        Ok(out
            .into_iter()
            .map(|rows| rows.expect("every passage was encoded"))
            .collect())
    }

    /// Encodes questions into their phrase queries, without autograd.
    pub fn encode_queries(&self, questions: &[&str]) -> Result<Vec<PhraseQuery>> {
        let mut out = Vec::with_capacity(questions.len());
        tch::no_grad(|| -> Result<()> {
            for chunk in questions.chunks(self.cfg.batch_size) {
                let batch = self.tokenize_queries(chunk)?;
                let (start, end) = self.query_forward_t(&batch, false);
                let start = host_rows(&start)?;
                let end = host_rows(&end)?;
                out.extend(
                    start
                        .into_iter()
                        .zip(end)
                        .map(|(start, end)| PhraseQuery { start, end }),
                );
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The phrase rows of one encoding from its `[tokens, dim]` start and end vectors and
    /// `[tokens, 2]` filter probabilities.
    fn rows_of(
        &self,
        encoding: &Encoding,
        [start, end, filter]: [&Tensor; 3],
    ) -> Result<PhraseRows> {
        let threshold = self.cfg.filter_threshold;
        let probabilities = Vec::<f32>::try_from(filter.f_contiguous()?.f_view([-1])?)?;
        let probability = |i: usize, side: usize| f64::from(probabilities[2 * i + side]);
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        for (i, token) in word_boundary_tokens(encoding, 1) {
            let starts = token.starts && probability(i, 0) >= threshold;
            let ends = token.ends && probability(i, 1) >= threshold;
            if starts || ends {
                tokens.push(PhraseToken {
                    starts,
                    ends,
                    ..token
                });
                positions.push(i as i64);
            }
        }
        if tokens.is_empty() {
            return Ok(PhraseRows::empty(self.dim())?);
        }
        let index = Tensor::f_from_slice(&positions)?;
        let values = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.f_index_select(0, &index)?.f_contiguous()?.f_view([-1])?,
            )?)
        };
        Ok(PhraseRows::new(
            self.dim(),
            tokens,
            values(start)?,
            values(end)?,
        )?)
    }

    fn hidden(&self, bert: &BertModel, batch: &TokenBatch, train: bool) -> Tensor {
        let device = self.cfg.device;
        bert.forward_t(
            &batch.input_ids.to_device(device),
            &batch.attention_mask.to_device(device),
            Some(&batch.token_type_ids.to_device(device)),
            train,
        )
    }

    fn batch_from(&self, encodings: &[&Encoding]) -> Result<TokenBatch> {
        if encodings.is_empty() {
            return Err(Error::InvalidInput {
                reason: "an empty batch cannot be tokenized".to_owned(),
            });
        }
        TokenBatch::from_encodings(encodings, self.pad_id, self.cfg.device)
    }

    /// Start and end heads copy the first and last `dim` hidden units, query heads the
    /// same; the filter head starts at zero (probability 0.5 everywhere).
    fn initialize_heads(&self) -> Result<()> {
        let hidden = self.bert_config.hidden_size;
        let dim = self.dim;
        let slice = |offset: i64| -> Result<Tensor> {
            let eye = Tensor::f_eye(hidden, (Kind::Float, Device::Cpu))?;
            Ok(eye.f_narrow(0, offset, dim)?)
        };
        let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let mut values = vec![
            ("phrase.filter.weight".to_owned(), zeros(&[2, hidden])),
            ("phrase.filter.bias".to_owned(), zeros(&[2])),
        ];
        for (head, offset) in [
            ("phrase.start", 0),
            ("phrase.end", hidden - dim),
            ("query.start", 0),
            ("query.end", hidden - dim),
        ] {
            values.push((format!("{head}.weight"), slice(offset)?));
            values.push((format!("{head}.bias"), zeros(&[dim])));
        }
        let variables = self.vs.variables();
        for (name, value) in values {
            let var = variables
                .get(&name)
                .ok_or_else(|| checkpoint_error(FormatError::Missing { name: name.clone() }))?;
            copy_into(&name, var, &value).map_err(checkpoint_error)?;
        }
        Ok(())
    }

    /// Validates the settings, prepares the tokenizer, and creates the variables.
    fn build(
        bert_config: BertConfig,
        tokenizer: Tokenizer,
        dim: i64,
        mut cfg: PhraseEncoderConfig,
        pad_id: Option<i64>,
        query_pooling: QueryPooling,
    ) -> Result<PhraseEncoder> {
        let invalid = |reason: String| Error::InvalidInput { reason };
        if dim < 1 || dim > bert_config.hidden_size {
            return Err(invalid(format!(
                "the phrase vector size must be between 1 and the hidden size {}, not {dim}",
                bert_config.hidden_size
            )));
        }
        if cfg.batch_size == 0 {
            return Err(invalid("the batch size must be at least 1".to_owned()));
        }
        check_threshold(cfg.filter_threshold)?;
        if cfg.max_len == 0 {
            cfg.max_len = usize::try_from(bert_config.max_position_embeddings).unwrap_or(0);
        }
        let parts = BertParts::build(BertSetup {
            config: bert_config,
            tokenizer,
            device: cfg.device,
            max_len: cfg.max_len,
            reserved_tokens: 1,
            pairs: Some("title/text pairs"),
            pad_id,
            scope: Some("bert"),
        })?;
        let root = parts.vs.root();
        let (phrase, query) = (&root / "phrase", &root / "query");
        let hidden = parts.config.hidden_size;
        let head = |path: nn::Path, out: i64| crate::bert::linear(path, hidden, out, &parts.config);
        let network = Network {
            start: head(&phrase / "start", dim),
            end: head(&phrase / "end", dim),
            filter: head(&phrase / "filter", 2),
            query_start: head(&query / "start", dim),
            query_end: head(&query / "end", dim),
            bert: parts.bert,
        };
        Ok(PhraseEncoder {
            vs: parts.vs,
            network: Mutex::new(network),
            bert_config: parts.config,
            tokenizer: parts.tokenizer,
            pad_id: parts.pad_id,
            dim,
            query_pooling,
            cfg,
        })
    }
}

fn check_threshold(threshold: f64) -> Result<()> {
    if threshold.is_finite() && threshold >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            reason: format!(
                "the filter threshold must be a probability of at least 0, not {threshold}"
            ),
        })
    }
}

/// The rows of a `[n, dim]` tensor as host vectors.
fn host_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
    let dim = t.size()[1] as usize;
    let values = Vec::<f32>::try_from(t.f_contiguous()?.f_view([-1])?)?;
    Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}
