//! The text encoder: tokenizer + BERT + pooling (+ projection), with inference batching,
//! self-describing checkpoints, and a content fingerprint.
//!
//! Two kinds of encoder share this type:
//!
//! - the sentence-transformers baseline ([`Encoder::load`] on a folder such as
//!   all-MiniLM-L6-v2): mean pooling over non-padding tokens, then L2 normalization;
//! - REALM's learned retriever: `Embed(x) = W · BERT_CLS(x)`, [`Pooling::Cls`] with a learned
//!   projection (see [`EncoderHead::realm`]).
//!
//! A checkpoint ([`Encoder::to_checkpoint_bytes`]) holds everything needed to rebuild the
//! encoder without the model folder: the BERT config, the head, the maximum length, the
//! tokenizer JSON, and all weights in safetensors layout.

use std::fmt;
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tokenizers::{EncodeInput, Encoding, Tokenizer};

use crate::backbone::{BertParts, BertSetup};
pub use crate::batch::TokenBatch;
use crate::bert::{BertConfig, BertModel};
pub use crate::checkpoint::checkpoint_fingerprint;
use crate::checkpoint::{
    Checkpoint, CheckpointKind, CheckpointParts, FormatError, check_bert_weights, write_checkpoint,
};
use crate::error::{Error, Result};
use crate::model_folder::ModelFolder;
pub use crate::tokenizer::load_tokenizer;
use crate::tokenizer::tokenizer_error;
use crate::weights::{TensorFile, load_exact, reinitialize, to_safetensors};

/// How the per-token hidden states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the hidden states of the non-padding tokens (sentence-transformers),
    /// L2-normalized when `normalize` is true.
    Mean { normalize: bool },
    /// The hidden state of the first token, `[CLS]` (REALM).
    Cls,
}

/// How a `(title, body)` document becomes the encoder's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocFormat {
    /// `title + " " + body` as one sequence (what the sentence-transformers baseline used).
    #[default]
    Joined,
    /// `[CLS] title [SEP] body [SEP]` with token type ids 0 and 1 (REALM).
    Pair,
}

/// Everything on top of BERT that shapes the output vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderHead {
    /// How token states are pooled.
    pub pooling: Pooling,
    /// When set, a learned `nn::Linear` (with bias) maps the pooled vector, of size
    /// `hidden_size`, to this many dimensions. It is applied after pooling and before any
    /// normalization. Its variables are named `projection.weight` and `projection.bias`.
    pub projection_dim: Option<i64>,
    /// How documents are fed to the encoder by [`Encoder::encode_docs`].
    pub doc_format: DocFormat,
}

impl EncoderHead {
    /// The sentence-transformers head: mean pooling, no projection, joined documents.
    pub fn mean(normalize: bool) -> EncoderHead {
        EncoderHead {
            pooling: Pooling::Mean { normalize },
            projection_dim: None,
            doc_format: DocFormat::Joined,
        }
    }

    /// REALM's head: `[CLS]` pooling, an optional learned projection (REALM uses 128),
    /// title/body pairs.
    pub fn realm(projection_dim: Option<i64>) -> EncoderHead {
        EncoderHead {
            pooling: Pooling::Cls,
            projection_dim,
            doc_format: DocFormat::Pair,
        }
    }
}

/// Runtime settings of an [`Encoder`]; none of them changes the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// The maximum sequence length in tokens, special tokens included; longer inputs are
    /// truncated. `0` (the default) means "the model's own limit": `max_seq_length` from
    /// `sentence_bert_config.json`, else `max_position_embeddings` (for a checkpoint: the
    /// length it was saved with). After construction, [`Encoder::config`] holds the
    /// resolved value.
    pub max_len: usize,
    /// How many sequences [`Encoder::encode`] runs through the network at once.
    pub batch_size: usize,
    /// Where the weights live and the computation runs.
    pub device: Device,
    /// When set, the number of intra-op threads libtorch uses (a process-wide setting).
    pub threads: Option<i32>,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            max_len: 0,
            batch_size: 64,
            device: Device::Cpu,
            threads: None,
        }
    }
}

/// A text encoder: tokenizer, BERT, pooling, optional projection. It owns its
/// [`nn::VarStore`]; train it through [`Encoder::var_store`] and [`Encoder::forward_t`].
///
/// The type is `Send` and `Sync`: the network sits behind a mutex (libtorch tensors are only
/// `Send`), so concurrent calls to [`Encoder::forward_t`] and [`Encoder::encode`] take turns
/// for the forward passes (each of which uses libtorch's intra-op threads).
pub struct Encoder {
    vs: nn::VarStore,
    network: Mutex<Network>,
    bert_config: BertConfig,
    head: EncoderHead,
    tokenizer: Tokenizer,
    pad_id: i64,
    cfg: EncoderConfig,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("bert_config", &self.bert_config)
            .field("head", &self.head)
            .field("config", &self.cfg)
            .field("dim", &self.dim())
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

/// The modules of an [`Encoder`].
#[derive(Debug)]
struct Network {
    bert: BertModel,
    projection: Option<nn::Linear>,
}

/// Encoder checkpoints: `b"REALMENC"`, format version 1 (weights in safetensors layout).
const ENCODER_CHECKPOINT: CheckpointKind = CheckpointKind {
    magic: b"REALMENC",
    name: "encoder",
    versions: &[1],
};

/// The JSON header of a checkpoint.
#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    bert: BertConfig,
    head: EncoderHead,
    max_len: usize,
    pad_id: i64,
}

impl Encoder {
    /// Loads a Hugging Face / sentence-transformers model folder: `config.json`,
    /// `model.safetensors`, `tokenizer.json`, and when present `modules.json`,
    /// the pooling module's `config.json`, and `sentence_bert_config.json`.
    ///
    /// The head comes from `modules.json` (mean or `[CLS]` pooling, normalized when a
    /// `Normalize` module is listed; mean pooling without normalization when there is no
    /// `modules.json`); documents are [`DocFormat::Joined`]. The tokenizer's own padding is
    /// disabled and its truncation is set to the resolved `max_len`.
    pub fn load(model_dir: &Path, cfg: EncoderConfig) -> Result<Encoder> {
        let folder = ModelFolder::read(model_dir)?;
        let head = folder.head;
        Self::from_folder(folder, head, cfg, 0)
    }

    /// Loads the BERT weights and tokenizer of a model folder (as [`Encoder::load`]) under
    /// a different head, e.g. [`EncoderHead::realm`] to start a REALM retriever from a
    /// pre-trained BERT. A projection, if the head has one, is initialized from `seed`.
    pub fn load_with_head(
        model_dir: &Path,
        head: EncoderHead,
        cfg: EncoderConfig,
        seed: i64,
    ) -> Result<Encoder> {
        let folder = ModelFolder::read(model_dir)?;
        Self::from_folder(folder, head, cfg, seed)
    }

    /// A randomly initialized encoder (BERT's initialization, deterministic in `seed` and
    /// independent of libtorch's global generator and of the device), for tests with
    /// [`BertConfig::tiny`]. The tokenizer's vocabulary must fit in `bert.vocab_size`.
    pub fn random(
        bert: BertConfig,
        tokenizer: Tokenizer,
        head: EncoderHead,
        cfg: EncoderConfig,
        seed: i64,
    ) -> Result<Encoder> {
        let default_max_len = usize::try_from(bert.max_position_embeddings).unwrap_or(0);
        let encoder = Self::build(bert, tokenizer, head, cfg, default_max_len, None)?;
        reinitialize(&encoder.vs, &encoder.bert_config, seed, |_| true)
            .map_err(checkpoint_error)?;
        Ok(encoder)
    }

    /// Rebuilds an encoder from [`Encoder::to_checkpoint_bytes`]. With `tokenizer` `None`
    /// the tokenizer stored in the checkpoint is used. `cfg.max_len == 0` keeps the
    /// checkpoint's maximum length.
    pub fn from_checkpoint_bytes(
        bytes: &[u8],
        tokenizer: Option<Tokenizer>,
        cfg: EncoderConfig,
    ) -> Result<Encoder> {
        let checkpoint = Checkpoint::parse(bytes, &ENCODER_CHECKPOINT).map_err(checkpoint_error)?;
        let header: CheckpointHeader = checkpoint.header().map_err(checkpoint_error)?;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => checkpoint.tokenizer().map_err(checkpoint_error)?,
        };
        let file = TensorFile::parse(checkpoint.weights).map_err(checkpoint_error)?;
        check_bert_weights(
            &header.bert,
            parameter_count(&header.bert, &header.head),
            checkpoint.weights,
        )
        .map_err(checkpoint_error)?;
        let encoder = Self::build(
            header.bert,
            tokenizer,
            header.head,
            cfg,
            header.max_len,
            Some(header.pad_id),
        )?;
        load_exact(&encoder.vs, &file).map_err(checkpoint_error)?;
        Ok(encoder)
    }

    /// Serializes the encoder: `b"REALMENC"`, a little-endian u32 format version (1), then
    /// three sections, each a little-endian u64 length followed by its bytes: a JSON header
    /// (BERT config, head, max length, pad id), the tokenizer JSON, and the weights as a
    /// safetensors file (see [`crate::checkpoint`]). Equal weights and settings give equal
    /// bytes.
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let header = CheckpointHeader {
            bert: self.bert_config.clone(),
            head: self.head,
            max_len: self.cfg.max_len,
            pad_id: self.pad_id,
        };
        let weights = to_safetensors(&self.vs).map_err(checkpoint_error)?;
        write_checkpoint(CheckpointParts {
            kind: &ENCODER_CHECKPOINT,
            header: &header,
            tokenizer: &self.tokenizer,
            weights: &weights,
        })
        .map_err(checkpoint_error)
    }

    /// The hex SHA-256 of [`Encoder::to_checkpoint_bytes`]: equal weights and settings give
    /// equal fingerprints. Use [`checkpoint_fingerprint`] when the bytes are at hand.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(checkpoint_fingerprint(&self.to_checkpoint_bytes()?))
    }

    /// Tokenizes texts into one padded batch on the encoder's device. An empty list is an
    /// error.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch> {
        let encodings = self.encode_texts(texts)?;
        self.batch_from(&encodings.iter().collect::<Vec<_>>())
    }

    /// Tokenizes `(title, body)` documents according to the head's [`DocFormat`] into one
    /// padded batch on the encoder's device. An empty list is an error.
    pub fn tokenize_docs(&self, docs: &[(&str, &str)]) -> Result<TokenBatch> {
        let encodings = self.encode_doc_inputs(docs)?;
        self.batch_from(&encodings.iter().collect::<Vec<_>>())
    }

    /// Runs BERT, pooling, projection and normalization on a batch: [B, D], with autograd
    /// (wrap in `tch::no_grad` for inference). Dropout is active when `train` is true.
    pub fn forward_t(&self, batch: &TokenBatch, train: bool) -> Tensor {
        let device = self.device();
        let input_ids = batch.input_ids.to_device(device);
        let mask = batch.attention_mask.to_device(device);
        let token_types = batch.token_type_ids.to_device(device);
        let network = self.network.lock();
        let hidden = network
            .bert
            .forward_t(&input_ids, &mask, Some(&token_types), train);
        let pooled = match self.head.pooling {
            Pooling::Mean { .. } => {
                let weights = mask.unsqueeze(-1).to_kind(hidden.kind());
                let summed = (&hidden * &weights).sum_dim_intlist(1, false, None::<Kind>);
                let counts = weights
                    .sum_dim_intlist(1, false, None::<Kind>)
                    .clamp_min(1e-9);
                summed / counts
            }
            Pooling::Cls => hidden.select(1, 0),
        };
        let projected = match &network.projection {
            Some(projection) => projection.forward(&pooled),
            None => pooled,
        };
        match self.head.pooling {
            Pooling::Mean { normalize: true } => {
                let norms = projected.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
                projected / norms
            }
            _ => projected,
        }
    }

    /// Embeds texts for inference: [N, D] float32 on the CPU, row `i` for `texts[i]`.
    /// Inputs are sorted by token length and run `batch_size` at a time, without autograd
    /// and without dropout. An empty list gives a [0, D] tensor.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor> {
        if texts.is_empty() {
            return Ok(self.empty_output());
        }
        let encodings = self.encode_texts(texts)?;
        self.run_bucketed(&encodings)
    }

    /// Embeds `(title, body)` documents (formatted per the head's [`DocFormat`]) like
    /// [`Encoder::encode`].
    pub fn encode_docs(&self, docs: &[(&str, &str)]) -> Result<Tensor> {
        if docs.is_empty() {
            return Ok(self.empty_output());
        }
        let encodings = self.encode_doc_inputs(docs)?;
        self.run_bucketed(&encodings)
    }

    /// The output dimension D: the projection's size, else BERT's hidden size.
    pub fn dim(&self) -> i64 {
        self.head
            .projection_dim
            .unwrap_or(self.bert_config.hidden_size)
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The variables (BERT's under their Hugging Face names, the projection's under
    /// `projection.`).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The variables, mutably (to freeze, unfreeze, or change precision).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Runs `f` on the BERT network (under the encoder's lock: calling the encoder's own
    /// forward passes inside `f` deadlocks).
    pub fn with_bert<R>(&self, f: impl FnOnce(&BertModel) -> R) -> R {
        f(&self.network.lock().bert)
    }

    /// The word-embedding matrix, [vocab_size, hidden_size]: a handle on the variable itself
    /// (same storage, same gradient), e.g. for a tied MLM output layer.
    pub fn word_embeddings(&self) -> Tensor {
        self.network.lock().bert.word_embeddings().shallow_clone()
    }

    /// The BERT configuration.
    pub fn bert_config(&self) -> &BertConfig {
        &self.bert_config
    }

    /// The pooling, projection and document format.
    pub fn head(&self) -> &EncoderHead {
        &self.head
    }

    /// The runtime settings, with `max_len` resolved.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The maximum sequence length in tokens, special tokens included.
    pub fn max_len(&self) -> usize {
        self.cfg.max_len
    }

    /// The tokenizer (padding disabled, truncation at [`Encoder::max_len`]).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The id used to pad batches.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    fn from_folder(
        folder: ModelFolder,
        head: EncoderHead,
        cfg: EncoderConfig,
        seed: i64,
    ) -> Result<Encoder> {
        let default_max_len = folder
            .max_seq_length
            .unwrap_or_else(|| usize::try_from(folder.bert.max_position_embeddings).unwrap_or(0));
        let (bert, tokenizer) = (folder.bert.clone(), folder.tokenizer.clone());
        let encoder = Self::build(bert, tokenizer, head, cfg, default_max_len, None)?;
        reinitialize(&encoder.vs, &encoder.bert_config, seed, |name| {
            name.starts_with("projection.")
        })
        .map_err(checkpoint_error)?;
        folder.load_weights(&encoder.vs, |name| {
            (!name.starts_with("projection.")).then_some(name)
        })?;
        Ok(encoder)
    }

    /// Validates the settings, prepares the tokenizer, and creates the variables.
    fn build(
        bert_config: BertConfig,
        tokenizer: Tokenizer,
        head: EncoderHead,
        mut cfg: EncoderConfig,
        default_max_len: usize,
        pad_id: Option<i64>,
    ) -> Result<Encoder> {
        let invalid = |reason: String| Error::InvalidInput { reason };
        if let Some(dim) = head.projection_dim
            && dim <= 0
        {
            return Err(invalid(format!(
                "the projection dimension must be positive, but it is {dim}"
            )));
        }
        if cfg.batch_size == 0 {
            return Err(invalid("the batch size must be at least 1".to_owned()));
        }
        if let Some(threads) = cfg.threads {
            if threads < 1 {
                return Err(invalid(format!(
                    "the thread count must be at least 1, but it is {threads}"
                )));
            }
            tch::set_num_threads(threads);
        }
        cfg.max_len = if cfg.max_len == 0 {
            default_max_len
        } else {
            cfg.max_len
        };
        let parts = BertParts::build(BertSetup {
            config: bert_config,
            tokenizer,
            device: cfg.device,
            max_len: cfg.max_len,
            reserved_tokens: 0,
            pairs: (head.doc_format == DocFormat::Pair).then_some("title/body pairs"),
            pad_id,
            scope: None,
        })?;
        let projection = head.projection_dim.map(|dim| {
            crate::bert::linear(
                &parts.vs.root() / "projection",
                parts.config.hidden_size,
                dim,
                &parts.config,
            )
        });
        Ok(Encoder {
            vs: parts.vs,
            network: Mutex::new(Network {
                bert: parts.bert,
                projection,
            }),
            bert_config: parts.config,
            head,
            tokenizer: parts.tokenizer,
            pad_id: parts.pad_id,
            cfg,
        })
    }

    fn encode_texts(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(tokenizer_error)
    }

    fn encode_doc_inputs(&self, docs: &[(&str, &str)]) -> Result<Vec<Encoding>> {
        let inputs: Vec<EncodeInput<'_>> = match self.head.doc_format {
            DocFormat::Joined => docs
                .iter()
                .map(|(title, body)| format!("{title} {body}").into())
                .collect(),
            DocFormat::Pair => docs
                .iter()
                .map(|&(title, body)| (title, body).into())
                .collect(),
        };
        self.tokenizer
            .encode_batch(inputs, true)
            .map_err(tokenizer_error)
    }

    /// Pads encodings into a batch on the encoder's device.
    fn batch_from(&self, encodings: &[&Encoding]) -> Result<TokenBatch> {
        if encodings.is_empty() {
            return Err(Error::InvalidInput {
                reason: "an empty batch cannot be tokenized".to_owned(),
            });
        }
        if encodings.iter().all(|e| e.is_empty()) {
            return Err(Error::InvalidInput {
                reason: "the tokenizer produced no tokens for any input of the batch".to_owned(),
            });
        }
        TokenBatch::from_encodings(encodings, self.pad_id, self.device())
    }

    /// Runs encodings through the network sorted by length, `batch_size` at a time, and
    /// returns the rows in the original order on the CPU.
    fn run_bucketed(&self, encodings: &[Encoding]) -> Result<Tensor> {
        let n = encodings.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let mut parts = Vec::with_capacity(n.div_ceil(self.cfg.batch_size));
        tch::no_grad(|| -> Result<()> {
            for chunk in order.chunks(self.cfg.batch_size) {
                let refs: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
                let batch = self.batch_from(&refs)?;
                let out = self
                    .forward_t(&batch, false)
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?;
                parts.push(out);
            }
            Ok(())
        })?;
        let sorted = Tensor::f_cat(&parts, 0)?;
        let mut inverse = vec![0i64; n];
        for (position, &original) in order.iter().enumerate() {
            inverse[original] = position as i64;
        }
        Ok(sorted.f_index_select(0, &Tensor::f_from_slice(&inverse)?)?)
    }

    fn empty_output(&self) -> Tensor {
        Tensor::zeros([0, self.dim()], (Kind::Float, Device::Cpu))
    }
}

/// The number of scalar parameters of BERT plus the head (saturating, for untrusted configs).
fn parameter_count(bert: &BertConfig, head: &EncoderHead) -> u128 {
    let h = u128::try_from(bert.hidden_size).unwrap_or(0);
    let projection = head.projection_dim.map_or(0, |d| {
        let d = u128::try_from(d).unwrap_or(0);
        d.saturating_mul(h).saturating_add(d)
    });
    bert.parameter_count().saturating_add(projection)
}

/// A checkpoint or weights error as the retriever's error: libtorch failures stay
/// [`Error::Torch`], the rest is [`Error::Checkpoint`].
pub(crate) fn checkpoint_error(e: FormatError) -> Error {
    e.into_torch()
        .map_or_else(|reason| Error::Checkpoint { reason }, Error::Torch)
}
