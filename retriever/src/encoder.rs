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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tokenizers::{
    EncodeInput, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::bert::{BertConfig, BertModel};
use crate::error::{Error, Result};

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

/// A tokenized, padded batch on the encoder's device. All three tensors are [B, T] int64,
/// `T` being the longest sequence in the batch (dynamic padding).
#[derive(Debug)]
pub struct TokenBatch {
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// 0 for the first segment, 1 for the second (only [`DocFormat::Pair`] documents).
    pub token_type_ids: Tensor,
}

impl TokenBatch {
    /// The number of sequences, B.
    pub fn len(&self) -> usize {
        self.input_ids.size().first().map_or(0, |&b| b as usize)
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The padded length, T.
    pub fn seq_len(&self) -> usize {
        self.input_ids.size().get(1).map_or(0, |&t| t as usize)
    }

    /// A copy of the batch on `device`.
    pub fn to_device(&self, device: Device) -> TokenBatch {
        TokenBatch {
            input_ids: self.input_ids.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
            token_type_ids: self.token_type_ids.to_device(device),
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

const CHECKPOINT_MAGIC: &[u8; 8] = b"REALMENC";
const CHECKPOINT_VERSION: u32 = 1;

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
        encoder.reinitialize(seed, |_| true)?;
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
        let sections = CheckpointSections::parse(bytes)?;
        let header: CheckpointHeader =
            serde_json::from_slice(sections.header).map_err(|e| Error::Checkpoint {
                reason: format!("its header is not valid JSON of the expected shape ({e})"),
            })?;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => Tokenizer::from_bytes(sections.tokenizer).map_err(|e| Error::Checkpoint {
                reason: format!("its tokenizer JSON cannot be parsed ({e})"),
            })?,
        };
        let file = SafeTensors::parse(sections.weights).map_err(|reason| Error::Checkpoint {
            reason: format!("its weights section is malformed: {reason}"),
        })?;
        header.bert.validate().map_err(|reason| Error::Checkpoint {
            reason: format!("its BERT configuration is invalid: {reason}"),
        })?;
        // Refuse before allocating: every parameter takes at least two bytes.
        let needed = parameter_count(&header.bert, &header.head).saturating_mul(2);
        if needed > sections.weights.len() as u128 {
            return Err(Error::Checkpoint {
                reason: format!(
                    "its configuration needs at least {needed} bytes of weights but the weights section has {}",
                    sections.weights.len()
                ),
            });
        }
        let encoder = Self::build(
            header.bert,
            tokenizer,
            header.head,
            cfg,
            header.max_len,
            Some(header.pad_id),
        )?;
        let vars = encoder.vs.variables();
        if let Some(extra) = file.names().find(|name| !vars.contains_key(*name)) {
            return Err(Error::Checkpoint {
                reason: format!("it holds a tensor {extra:?} that this encoder does not have"),
            });
        }
        for (name, var) in &vars {
            let Some(src) = file.tensor(name).map_err(|reason| Error::Checkpoint {
                reason: format!("its tensor {name:?} is unusable: {reason}"),
            })?
            else {
                return Err(Error::Checkpoint {
                    reason: format!("it has no tensor {name:?}"),
                });
            };
            copy_into(var, &src).map_err(|reason| Error::Checkpoint {
                reason: format!("its tensor {name:?} does not fit: {reason}"),
            })?;
        }
        Ok(encoder)
    }

    /// Serializes the encoder: `b"REALMENC"`, a little-endian u32 format version, then three
    /// sections, each a little-endian u64 length followed by its bytes: a JSON header (BERT
    /// config, head, max length, pad id), the tokenizer JSON, and the weights as a
    /// safetensors file with names sorted. Equal weights and settings give equal bytes.
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let header = CheckpointHeader {
            bert: self.bert_config.clone(),
            head: self.head,
            max_len: self.cfg.max_len,
            pad_id: self.pad_id,
        };
        let header = serde_json::to_vec(&header).map_err(|e| Error::Checkpoint {
            reason: format!("its header could not be serialized ({e})"),
        })?;
        let tokenizer = self.tokenizer.to_string(false).map_err(tokenizer_error)?;
        let weights = self.weights_safetensors()?;
        let total = 12 + 24 + header.len() + tokenizer.len() + weights.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        for section in [&header[..], tokenizer.as_bytes(), &weights[..]] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        Ok(out)
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
        let ModelFolder {
            root,
            bert,
            tokenizer,
            max_seq_length,
            ..
        } = folder;
        let default_max_len = max_seq_length
            .unwrap_or_else(|| usize::try_from(bert.max_position_embeddings).unwrap_or(0));
        let encoder = Self::build(bert, tokenizer, head, cfg, default_max_len, None)?;
        encoder.reinitialize(seed, |name| name.starts_with("projection."))?;
        let weights_path = root.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|source| Error::Io {
            path: weights_path.clone(),
            source,
        })?;
        let model_file = |reason: String| Error::ModelFile {
            path: weights_path.clone(),
            reason,
        };
        let file = SafeTensors::parse(&bytes).map_err(|reason| {
            model_file(format!("it is not a valid safetensors file: {reason}"))
        })?;
        for (name, var) in encoder.vs.variables() {
            if name.starts_with("projection.") {
                continue;
            }
            let mut found = None;
            for candidate in hf_name_candidates(&name) {
                if let Some(t) = file.tensor(&candidate).map_err(|reason| {
                    model_file(format!("its tensor {candidate:?} is unusable: {reason}"))
                })? {
                    found = Some(t);
                    break;
                }
            }
            let Some(src) = found else {
                return Err(model_file(format!(
                    "it has no tensor for the variable {name:?} (also tried a \"bert.\" prefix)"
                )));
            };
            copy_into(&var, &src).map_err(|reason| {
                model_file(format!("its tensor for {name:?} does not fit: {reason}"))
            })?;
        }
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
        bert_config
            .validate()
            .map_err(|reason| invalid(format!("the BERT configuration is invalid: {reason}")))?;
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
        if let Device::Cuda(index) = cfg.device {
            let available = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if index >= available {
                return Err(invalid(format!(
                    "CUDA device {index} was requested, but libtorch sees {available} CUDA device(s)"
                )));
            }
        }

        let max_len = if cfg.max_len == 0 {
            default_max_len
        } else {
            cfg.max_len
        };
        let max_positions = usize::try_from(bert_config.max_position_embeddings).unwrap_or(0);
        if max_len > max_positions {
            return Err(invalid(format!(
                "the maximum length {max_len} exceeds the model's {max_positions} positions"
            )));
        }
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if max_len <= special {
            return Err(invalid(format!(
                "the maximum length {max_len} leaves no room beside the {special} special tokens of a pair"
            )));
        }
        cfg.max_len = max_len;
        if head.doc_format == DocFormat::Pair && bert_config.type_vocab_size < 2 {
            return Err(invalid(format!(
                "title/body pairs need two token types, but the model has {}",
                bert_config.type_vocab_size
            )));
        }

        let vocab = tokenizer.get_vocab_size(true);
        if i64::try_from(vocab).map_or(true, |v| v > bert_config.vocab_size) {
            return Err(invalid(format!(
                "the tokenizer has {vocab} tokens but the model's vocabulary holds only {}",
                bert_config.vocab_size
            )));
        }
        let pad_id = pad_id
            .or_else(|| tokenizer.get_padding().map(|p| i64::from(p.pad_id)))
            .or_else(|| tokenizer.token_to_id("[PAD]").map(i64::from))
            .unwrap_or(bert_config.pad_token_id);
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
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(tokenizer_error)?;

        let vs = nn::VarStore::new(cfg.device);
        let root = vs.root();
        let bert = BertModel::new(&root, &bert_config);
        let projection = head.projection_dim.map(|dim| {
            let lc = nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: bert_config.initializer_range,
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            };
            nn::linear(&root / "projection", bert_config.hidden_size, dim, lc)
        });
        Ok(Encoder {
            vs,
            network: Mutex::new(Network { bert, projection }),
            bert_config,
            head,
            tokenizer,
            pad_id,
            cfg,
        })
    }

    /// Overwrites the variables selected by `select` with BERT's initialization drawn from a
    /// generator seeded by `seed` and the variable's name.
    fn reinitialize(&self, seed: i64, select: impl Fn(&str) -> bool) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| select(name))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let size = var.size();
            let numel: usize = size.iter().map(|&d| d as usize).product();
            let values = crate::bert::initial_values(&self.bert_config, &name, numel, seed);
            let src = Tensor::from_slice(&values).view(size.as_slice());
            tch::no_grad(|| var.f_copy_(&src))?;
        }
        Ok(())
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
        let rows = encodings.len();
        let cols = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        if cols == 0 {
            return Err(Error::InvalidInput {
                reason: "the tokenizer produced no tokens for any input of the batch".to_owned(),
            });
        }
        let mut ids = vec![self.pad_id; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        let mut types = vec![0i64; rows * cols];
        for (row, encoding) in encodings.iter().enumerate() {
            let start = row * cols;
            let tokens = encoding
                .get_ids()
                .iter()
                .zip(encoding.get_type_ids())
                .zip(encoding.get_attention_mask());
            for (col, ((&id, &type_id), &m)) in tokens.enumerate() {
                ids[start + col] = i64::from(id);
                types[start + col] = i64::from(type_id);
                mask[start + col] = i64::from(m);
            }
        }
        let device = self.device();
        let shape = [rows as i64, cols as i64];
        let tensor = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?
                .f_view(shape)?
                .f_to_device(device)?)
        };
        Ok(TokenBatch {
            input_ids: tensor(&ids)?,
            attention_mask: tensor(&mask)?,
            token_type_ids: tensor(&types)?,
        })
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

    /// All variables as a safetensors file, names sorted.
    fn weights_safetensors(&self) -> Result<Vec<u8>> {
        let vars = self.vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut entries = BTreeMap::new();
        let mut data = Vec::new();
        for name in names {
            let var = &vars[name];
            let tensor = var.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
            let kind = tensor.f_kind()?;
            let dtype = dtype_name(kind).ok_or_else(|| Error::Checkpoint {
                reason: format!("the variable {name:?} has the unsupported kind {kind:?}"),
            })?;
            let numel = tensor.numel();
            let start = data.len();
            let end = start + numel * kind.elt_size_in_bytes();
            data.resize(end, 0u8);
            tensor.f_copy_data_u8(&mut data[start..end], numel)?;
            let shape = tensor.size().iter().map(|&d| d as usize).collect();
            entries.insert(
                name.clone(),
                TensorEntry {
                    dtype: dtype.to_owned(),
                    shape,
                    data_offsets: [start, end],
                },
            );
        }
        let mut header = serde_json::to_vec(&entries).map_err(|e| Error::Checkpoint {
            reason: format!("the weights header could not be serialized ({e})"),
        })?;
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + header.len() + data.len());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        Ok(out)
    }
}

/// The number of scalar parameters of BERT plus the head (saturating, for untrusted configs).
fn parameter_count(bert: &BertConfig, head: &EncoderHead) -> u128 {
    let n = |v: i64| u128::try_from(v).unwrap_or(0);
    let sum = |xs: &[u128]| xs.iter().fold(0u128, |a, &x| a.saturating_add(x));
    let (h, i) = (n(bert.hidden_size), n(bert.intermediate_size));
    let embeddings = sum(&[
        n(bert.vocab_size).saturating_mul(h),
        n(bert.max_position_embeddings).saturating_mul(h),
        n(bert.type_vocab_size).saturating_mul(h),
        h.saturating_mul(2),
    ]);
    // Q, K, V and attention output (weights and biases), two LayerNorms, the feed-forward.
    let layer = sum(&[
        h.saturating_mul(h).saturating_mul(4),
        h.saturating_mul(4),
        h.saturating_mul(4),
        h.saturating_mul(i).saturating_mul(2),
        i,
        h,
    ]);
    let projection = head
        .projection_dim
        .map_or(0, |d| n(d).saturating_mul(h).saturating_add(n(d)));
    sum(&[
        embeddings,
        layer.saturating_mul(n(bert.num_hidden_layers)),
        projection,
    ])
}

/// The hex SHA-256 of checkpoint bytes, as [`Encoder::fingerprint`] computes it.
pub fn checkpoint_fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a `tokenizer.json` file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Tokenizer::from_bytes(&bytes).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        reason: format!("it is not a valid tokenizer.json ({e})"),
    })
}

fn tokenizer_error(e: tokenizers::Error) -> Error {
    Error::Tokenizer {
        reason: e.to_string(),
    }
}

/// The names under which a Hugging Face checkpoint may store the variable `name`.
fn hf_name_candidates(name: &str) -> Vec<String> {
    let mut names = vec![name.to_owned()];
    if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
        names.push(format!("{stem}LayerNorm.gamma"));
    } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
        names.push(format!("{stem}LayerNorm.beta"));
    }
    let prefixed: Vec<String> = names.iter().map(|n| format!("bert.{n}")).collect();
    names.extend(prefixed);
    names
}

/// Copies `src` into the variable `var` (converting the element kind and device).
fn copy_into(var: &Tensor, src: &Tensor) -> std::result::Result<(), String> {
    if var.size() != src.size() {
        return Err(format!(
            "its shape is {:?} but the variable's is {:?}",
            src.size(),
            var.size()
        ));
    }
    let mut dst = var.shallow_clone();
    tch::no_grad(|| dst.f_copy_(src)).map_err(|e| e.to_string())
}

/// What a sentence-transformers / Hugging Face model folder provides.
struct ModelFolder {
    /// The folder holding `config.json`, `model.safetensors` and `tokenizer.json`.
    root: PathBuf,
    bert: BertConfig,
    head: EncoderHead,
    max_seq_length: Option<usize>,
    tokenizer: Tokenizer,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

impl ModelFolder {
    fn read(dir: &Path) -> Result<ModelFolder> {
        let modules_path = dir.join("modules.json");
        let modules: Option<Vec<ModuleEntry>> = read_json_if_present(&modules_path)?;
        let (root, head) = match modules {
            None => (dir.to_path_buf(), EncoderHead::mean(false)),
            Some(modules) => Self::head_from_modules(dir, &modules_path, &modules)?,
        };
        let bert = BertConfig::from_file(&root.join("config.json"))?;
        let sbert_path = root.join("sentence_bert_config.json");
        let sbert: Option<SentenceBertFile> = read_json_if_present(&sbert_path)?;
        if sbert.as_ref().is_some_and(|s| s.do_lower_case) {
            return Err(Error::ModelFile {
                path: sbert_path,
                reason:
                    "do_lower_case is true, and lower-casing outside the tokenizer is not supported"
                        .to_owned(),
            });
        }
        let tokenizer = load_tokenizer(&root.join("tokenizer.json"))?;
        Ok(ModelFolder {
            root,
            bert,
            head,
            max_seq_length: sbert.and_then(|s| s.max_seq_length),
            tokenizer,
        })
    }

    fn head_from_modules(
        dir: &Path,
        modules_path: &Path,
        modules: &[ModuleEntry],
    ) -> Result<(PathBuf, EncoderHead)> {
        let unsupported = |reason: String| Error::ModelFile {
            path: modules_path.to_path_buf(),
            reason,
        };
        let mut root = None;
        let mut pooling = None;
        let mut normalize = false;
        for module in modules {
            let kind = module.kind.rsplit('.').next().unwrap_or_default();
            match kind {
                "Transformer" => root = Some(dir.join(&module.path)),
                "Pooling" => {
                    let path = dir.join(&module.path).join("config.json");
                    let file: PoolingFile = read_json(&path)?;
                    pooling = Some(pooling_from_file(&file).ok_or_else(|| Error::ModelFile {
                        path: path.clone(),
                        reason: "only a single mean or [CLS] pooling mode is supported".to_owned(),
                    })?);
                }
                "Normalize" => normalize = true,
                _ => {
                    return Err(unsupported(format!(
                        "the module type {:?} is not supported (only Transformer, Pooling and Normalize are)",
                        module.kind
                    )));
                }
            }
        }
        let root = root.ok_or_else(|| unsupported("it lists no Transformer module".to_owned()))?;
        let pooling =
            pooling.ok_or_else(|| unsupported("it lists no Pooling module".to_owned()))?;
        let pooling = match pooling {
            Pooling::Mean { .. } => Pooling::Mean { normalize },
            Pooling::Cls if normalize => {
                return Err(unsupported(
                    "a Normalize module after [CLS] pooling is not supported".to_owned(),
                ));
            }
            Pooling::Cls => Pooling::Cls,
        };
        let head = EncoderHead {
            pooling,
            projection_dim: None,
            doc_format: DocFormat::Joined,
        };
        Ok((root, head))
    }
}

fn pooling_from_file(file: &PoolingFile) -> Option<Pooling> {
    let others = file.pooling_mode_max_tokens
        || file.pooling_mode_mean_sqrt_len_tokens
        || file.pooling_mode_weightedmean_tokens
        || file.pooling_mode_lasttoken;
    match (
        file.pooling_mode_mean_tokens,
        file.pooling_mode_cls_token,
        others,
    ) {
        (true, false, false) => Some(Pooling::Mean { normalize: false }),
        (false, true, false) => Some(Pooling::Cls),
        _ => None,
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        reason: format!("its JSON does not have the expected shape ({e})"),
    })
}

fn read_json_if_present<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::metadata(path) {
        Ok(_) => read_json(path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The three sections of a checkpoint, borrowed from its bytes.
struct CheckpointSections<'a> {
    header: &'a [u8],
    tokenizer: &'a [u8],
    weights: &'a [u8],
}

impl<'a> CheckpointSections<'a> {
    fn parse(bytes: &'a [u8]) -> Result<CheckpointSections<'a>> {
        let fail = |reason: &str| Error::Checkpoint {
            reason: reason.to_owned(),
        };
        let rest = bytes
            .strip_prefix(CHECKPOINT_MAGIC)
            .ok_or_else(|| fail("it does not start with the realm-db encoder magic bytes"))?;
        let (version, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| fail("it ends before its format version"))?;
        let version = u32::from_le_bytes(*version);
        if version != CHECKPOINT_VERSION {
            return Err(Error::Checkpoint {
                reason: format!(
                    "it has format version {version}, but this build reads only version {CHECKPOINT_VERSION}"
                ),
            });
        }
        let mut rest = rest;
        let mut sections = [&[][..]; 3];
        for (slot, name) in sections.iter_mut().zip(["header", "tokenizer", "weights"]) {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| Error::Checkpoint {
                    reason: format!("it ends before the length of its {name} section"),
                })?;
            let len = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX);
            if len > tail.len() {
                return Err(Error::Checkpoint {
                    reason: format!(
                        "its {name} section claims {len} bytes but only {} remain",
                        tail.len()
                    ),
                });
            }
            let (section, tail) = tail.split_at(len);
            *slot = section;
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::Checkpoint {
                reason: format!(
                    "it has {} unexpected bytes after its last section",
                    rest.len()
                ),
            });
        }
        let [header, tokenizer, weights] = sections;
        Ok(CheckpointSections {
            header,
            tokenizer,
            weights,
        })
    }
}

/// One entry of a safetensors header.
#[derive(Serialize, Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// A parsed safetensors buffer (little-endian data, as the format specifies).
struct SafeTensors<'a> {
    entries: HashMap<String, TensorEntry>,
    data: &'a [u8],
}

impl<'a> SafeTensors<'a> {
    fn parse(bytes: &'a [u8]) -> std::result::Result<SafeTensors<'a>, String> {
        let (len, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or("it is shorter than its 8-byte header length")?;
        let len = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX);
        if len > rest.len() {
            return Err(format!(
                "its header claims {len} bytes but only {} remain",
                rest.len()
            ));
        }
        let (header, data) = rest.split_at(len);
        let raw: HashMap<String, serde_json::Value> =
            serde_json::from_slice(header).map_err(|e| format!("its header is not JSON ({e})"))?;
        let mut entries = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            if name == "__metadata__" {
                continue;
            }
            let entry: TensorEntry = serde_json::from_value(value)
                .map_err(|e| format!("its header entry for {name:?} is malformed ({e})"))?;
            entries.insert(name, entry);
        }
        Ok(SafeTensors { entries, data })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensor `name` on the CPU, `Ok(None)` if the file has no such tensor.
    fn tensor(&self, name: &str) -> std::result::Result<Option<Tensor>, String> {
        let Some(entry) = self.entries.get(name) else {
            return Ok(None);
        };
        let kind = kind_of_dtype(&entry.dtype)
            .ok_or_else(|| format!("its dtype {:?} is not supported", entry.dtype))?;
        let [start, end] = entry.data_offsets;
        let bytes = self
            .data
            .get(start..end)
            .ok_or_else(|| format!("its data offsets {start}..{end} lie outside the file"))?;
        let numel = entry
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or("its shape overflows")?;
        if numel.checked_mul(kind.elt_size_in_bytes()) != Some(bytes.len()) {
            return Err(format!(
                "its shape {:?} of {} needs a different byte count than its {} bytes",
                entry.shape,
                entry.dtype,
                bytes.len()
            ));
        }
        let shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
        Tensor::f_from_data_size(bytes, &shape, kind)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

fn kind_of_dtype(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F64" => Kind::Double,
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Double => "F64",
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}
