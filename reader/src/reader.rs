//! The knowledge-augmented encoder: BERT over `[CLS] x [SEP] z [SEP]`, a span head, and a
//! tied MLM head. Span scoring is in `spans`, answering and the QA loss in `answer`,
//! checkpoints in `checkpoint`, MLM scoring in `mlm`.

use std::fmt;
use std::path::Path;

use realm_retriever::backbone::{BertParts, BertSetup};
use realm_retriever::bert::{self, BertConfig, BertModel};
use realm_retriever::checkpoint::checkpoint_fingerprint;
use realm_retriever::model_folder::ModelFolder;
use realm_retriever::weights::reinitialize;
use tch::nn::{self, Module};
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::spans::SpanNormalization;

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

/// The modules of a [`Reader`].
#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) bert: BertModel,
    pub(crate) span_dense: nn::Linear,
    pub(crate) span_out: nn::Linear,
    mlm_dense: nn::Linear,
    mlm_layer_norm: nn::LayerNorm,
    mlm_bias: Tensor,
}

/// REALM's knowledge-augmented encoder with a span head and a tied MLM head. It owns its
/// [`nn::VarStore`]: BERT under `bert.`, the span head under `span_head.`, the MLM head
/// under `mlm.` (its output projection is the word-embedding matrix itself).
pub struct Reader {
    pub(crate) vs: nn::VarStore,
    pub(crate) net: Network,
    pub(crate) bert_config: BertConfig,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) pad_id: i64,
    pub(crate) cfg: ReaderConfig,
    /// The inverse temperature of p(z|x) the reader was trained with.
    pub(crate) retrieval_scale: f64,
    /// How span scores were normalized across passages in training, and so at answer time.
    pub(crate) span_normalization: SpanNormalization,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("bert_config", &self.bert_config)
            .field("config", &self.cfg)
            .field("pad_id", &self.pad_id)
            .field("retrieval_scale", &self.retrieval_scale)
            .field("span_normalization", &self.span_normalization)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Loads a Hugging Face / sentence-transformers BERT folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`) as the reader's BERT; the span and MLM heads
    /// are initialized from `seed` (the MLM output projection is the pretrained
    /// word-embedding matrix).
    pub fn load(model_dir: &Path, cfg: ReaderConfig, seed: i64) -> Result<Reader> {
        let folder = ModelFolder::read(model_dir)?;
        let reader = Self::build(folder.bert.clone(), folder.tokenizer.clone(), cfg, None)?;
        reader.initialize(seed, |name| !name.starts_with("bert."))?;
        folder.load_weights(&reader.vs, |name| name.strip_prefix("bert."))?;
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
        let reader = Self::build(bert, tokenizer, cfg, None)?;
        reader.initialize(seed, |_| true)?;
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

    /// How span scores are normalized across passages ([`SpanNormalization`]), in the QA loss
    /// and when answering; saved in checkpoints ([`SpanNormalization::Passage`] for readers
    /// stored before it existed).
    pub fn span_normalization(&self) -> SpanNormalization {
        self.span_normalization
    }

    /// Sets the span normalization (the trainer records the one it trains with).
    pub fn set_span_normalization(&mut self, normalization: SpanNormalization) {
        self.span_normalization = normalization;
    }

    /// p(z|x) over retrieved passages from their inner-product `scores`: the softmax of
    /// `retrieval_scale · score`, as the reader saw it in training.
    pub fn passage_probs(&self, scores: &[f32]) -> Vec<f32> {
        let scale = self.retrieval_scale as f32;
        let scaled: Vec<f32> = scores.iter().map(|&s| s * scale).collect();
        realm_retriever::softmax(&scaled)
    }

    /// The hex SHA-256 of [`Reader::to_checkpoint_bytes`]: the reader's checkpoint id.
    pub fn fingerprint(&self) -> Result<String> {
        Ok(checkpoint_fingerprint(&self.to_checkpoint_bytes()?))
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

    /// The configuration of the reader's BERT.
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

    /// Validates settings, configures the tokenizer, and creates the variables. `pad_id`
    /// `None` takes the tokenizer's padding id.
    pub(crate) fn build(
        bert_config: BertConfig,
        tokenizer: Tokenizer,
        cfg: ReaderConfig,
        pad_id: Option<i64>,
    ) -> Result<Reader> {
        let invalid = |reason: &str| Error::InvalidInput {
            reason: reason.to_owned(),
        };
        if cfg.max_span_tokens == 0 {
            return Err(invalid("the longest span must be at least 1 token"));
        }
        if cfg.top_spans_per_passage == 0 {
            return Err(invalid("at least one span per passage must be a candidate"));
        }
        let parts = BertParts::build(BertSetup {
            config: bert_config,
            tokenizer,
            device: cfg.device,
            max_len: cfg.max_len,
            reserved_tokens: 1,
            pairs: Some("question/passage pairs"),
            pad_id,
            scope: Some("bert"),
        })
        .map_err(Error::from_setup)?;
        let root = parts.vs.root();
        let config = &parts.config;
        let h = config.hidden_size;
        let span_root = &root / "span_head";
        let mlm_root = &root / "mlm";
        let net = Network {
            bert: parts.bert,
            span_dense: bert::linear(&span_root / "dense", 2 * h, h, config),
            span_out: bert::linear(&span_root / "out", h, 1, config),
            mlm_dense: bert::linear(&mlm_root / "transform" / "dense", h, h, config),
            mlm_layer_norm: bert::layer_norm(&mlm_root / "transform" / "LayerNorm", config),
            mlm_bias: mlm_root.zeros("bias", &[config.vocab_size]),
        };
        Ok(Reader {
            vs: parts.vs,
            net,
            bert_config: parts.config,
            tokenizer: parts.tokenizer,
            pad_id: parts.pad_id,
            cfg,
            retrieval_scale: 1.0,
            span_normalization: SpanNormalization::Passage,
        })
    }

    /// Overwrites the selected variables with BERT's initialization from a generator seeded
    /// by `seed` and the variable's name (unit LayerNorm gains, zero biases, normal matrices).
    fn initialize(&self, seed: i64, select: impl Fn(&str) -> bool) -> Result<()> {
        reinitialize(&self.vs, &self.bert_config, seed, select).map_err(Error::from_format)
    }
}

impl Error {
    /// An error of the shared BERT set-up as the reader's: invalid settings stay
    /// [`Error::InvalidInput`], tokenizer failures [`Error::Tokenizer`], libtorch failures
    /// [`Error::Torch`].
    fn from_setup(e: realm_retriever::Error) -> Error {
        match e {
            realm_retriever::Error::InvalidInput { reason } => Error::InvalidInput { reason },
            realm_retriever::Error::Tokenizer { reason } => Error::Tokenizer { reason },
            realm_retriever::Error::Torch(source) => Error::Torch(source),
            other => Error::Retriever(other),
        }
    }
}
