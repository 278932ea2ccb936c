//! A BERT encoder (the `BertModel` of Hugging Face transformers, without the pooler) on
//! `tch::nn`.
//!
//! Variable names follow the Hugging Face safetensors keys exactly
//! (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...),
//! so a [`BertModel`] built on the root of a [`tch::nn::VarStore`] can be filled from a
//! `model.safetensors` file whose keys carry no `bert.` prefix, and one built on
//! `root / "bert"` from a file whose keys do.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::random::{SplitMix64, variable_seed};

/// The activation of the feed-forward block, as named by `hidden_act` in `config.json`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum HiddenAct {
    /// The exact GELU, `x · Φ(x)` with the error function (`"gelu"`).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (`"gelu_new"`, also spelled `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// The rectifier (`"relu"`).
    #[serde(rename = "relu")]
    Relu,
}

impl HiddenAct {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            HiddenAct::Gelu => xs.gelu("none"),
            HiddenAct::GeluTanh => xs.gelu("tanh"),
            HiddenAct::Relu => xs.relu(),
        }
    }
}

/// The hyper-parameters of a BERT encoder, read from a Hugging Face `config.json`.
///
/// Keys of `config.json` that are not fields here are ignored; missing keys take the
/// defaults of `transformers.BertConfig` (except `vocab_size`, which is required).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    /// The number of token ids.
    pub vocab_size: i64,
    /// The width of the hidden states, H.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: i64,
    /// The number of transformer layers.
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: i64,
    /// The number of attention heads; H must be a multiple of it.
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: i64,
    /// The width of the feed-forward block.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: i64,
    /// The number of positions, hence the longest sequence.
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: i64,
    /// The number of token types (segments).
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: i64,
    /// The epsilon of every LayerNorm.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The activation of the feed-forward block.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// The padding token, whose word embedding starts at zero.
    #[serde(default)]
    pub pad_token_id: i64,
    /// The dropout probability of the embeddings and of each block's output.
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    /// The dropout probability of the attention weights.
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    /// The standard deviation of the normal initialization of matrices.
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    /// The kind of position embeddings; only `"absolute"` is supported.
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
}

mod defaults {
    pub(super) fn hidden_size() -> i64 {
        768
    }
    pub(super) fn num_hidden_layers() -> i64 {
        12
    }
    pub(super) fn num_attention_heads() -> i64 {
        12
    }
    pub(super) fn intermediate_size() -> i64 {
        3072
    }
    pub(super) fn max_position_embeddings() -> i64 {
        512
    }
    pub(super) fn type_vocab_size() -> i64 {
        2
    }
    pub(super) fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub(super) fn dropout() -> f64 {
        0.1
    }
    pub(super) fn initializer_range() -> f64 {
        0.02
    }
    pub(super) fn position_embedding_type() -> String {
        "absolute".to_owned()
    }
}

impl BertConfig {
    /// A small configuration for fast tests: hidden size 32, 2 layers, 2 heads,
    /// intermediate size 64, 512 positions, 2 token types.
    pub fn tiny(vocab_size: i64) -> BertConfig {
        BertConfig {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 64,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: HiddenAct::Gelu,
            pad_token_id: 0,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            initializer_range: 0.02,
            position_embedding_type: "absolute".to_owned(),
        }
    }

    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| Error::ModelFile {
            path: path.to_path_buf(),
            reason: format!("it is not a valid BERT config.json ({e})"),
        })?;
        cfg.validate().map_err(|reason| Error::ModelFile {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Checks that the sizes are positive and consistent; the error is a sentence
    /// describing the first problem found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(format!("{name} must be positive, but it is {value}"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.pad_token_id < 0 || self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "pad_token_id {} is outside the vocabulary of {} tokens",
                self.pad_token_id, self.vocab_size
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must lie in [0, 1), but it is {p}"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(format!(
                "layer_norm_eps must be positive, but it is {}",
                self.layer_norm_eps
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\" is)",
                self.position_embedding_type
            ));
        }
        Ok(())
    }

    /// The number of scalar parameters of the encoder (embeddings and layers, no pooler),
    /// saturating, so that untrusted configurations can be sized before allocating.
    pub fn parameter_count(&self) -> u128 {
        let n = |v: i64| u128::try_from(v).unwrap_or(0);
        let sum = |xs: &[u128]| xs.iter().fold(0u128, |a, &x| a.saturating_add(x));
        let (h, i) = (n(self.hidden_size), n(self.intermediate_size));
        let embeddings = sum(&[
            n(self.vocab_size).saturating_mul(h),
            n(self.max_position_embeddings).saturating_mul(h),
            n(self.type_vocab_size).saturating_mul(h),
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
        embeddings.saturating_add(layer.saturating_mul(n(self.num_hidden_layers)))
    }

    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// A linear layer (with bias) under `vs` with BERT's initialization: normal weights with
/// standard deviation `initializer_range`, zero bias.
pub fn linear(vs: nn::Path, in_dim: i64, out_dim: i64, cfg: &BertConfig) -> nn::Linear {
    let lc = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(vs, in_dim, out_dim, lc)
}

/// A LayerNorm over `hidden_size` features under `vs`, with `layer_norm_eps`, unit gain
/// and zero bias.
pub fn layer_norm(vs: nn::Path, cfg: &BertConfig) -> nn::LayerNorm {
    let lc = nn::LayerNormConfig {
        eps: cfg.layer_norm_eps,
        ..Default::default()
    };
    nn::layer_norm(vs, vec![cfg.hidden_size], lc)
}

fn embedding(vs: nn::Path, num: i64, cfg: &BertConfig, padding_idx: i64) -> nn::Embedding {
    let ec = nn::EmbeddingConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        },
        padding_idx,
        ..Default::default()
    };
    nn::embedding(vs, num, cfg.hidden_size, ec)
}

#[derive(Debug)]
struct BertEmbeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl BertEmbeddings {
    fn new(vs: nn::Path, cfg: &BertConfig) -> Self {
        BertEmbeddings {
            word_embeddings: embedding(
                &vs / "word_embeddings",
                cfg.vocab_size,
                cfg,
                cfg.pad_token_id,
            ),
            position_embeddings: embedding(
                &vs / "position_embeddings",
                cfg.max_position_embeddings,
                cfg,
                -1,
            ),
            token_type_embeddings: embedding(
                &vs / "token_type_embeddings",
                cfg.type_vocab_size,
                cfg,
                -1,
            ),
            layer_norm: layer_norm(&vs / "LayerNorm", cfg),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let seq_len = input_ids.size().last().copied().unwrap_or(0);
        let positions = Tensor::arange(seq_len, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let words = self.word_embeddings.forward(input_ids);
        let types = match token_type_ids {
            Some(t) => self.token_type_embeddings.forward(t),
            None => self.token_type_embeddings.forward(&input_ids.zeros_like()),
        };
        let xs = words + self.position_embeddings.forward(&positions) + types;
        self.layer_norm.forward(&xs).dropout(self.dropout, train)
    }
}

#[derive(Debug)]
struct BertLayer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attention_output: nn::Linear,
    attention_layer_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_layer_norm: nn::LayerNorm,
    num_heads: i64,
    head_dim: i64,
    hidden_act: HiddenAct,
    hidden_dropout: f64,
    attention_dropout: f64,
}

impl BertLayer {
    fn new(vs: nn::Path, cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        let attention = &vs / "attention";
        let self_attention = &attention / "self";
        let attention_out = &attention / "output";
        BertLayer {
            query: linear(&self_attention / "query", h, h, cfg),
            key: linear(&self_attention / "key", h, h, cfg),
            value: linear(&self_attention / "value", h, h, cfg),
            attention_output: linear(&attention_out / "dense", h, h, cfg),
            attention_layer_norm: layer_norm(&attention_out / "LayerNorm", cfg),
            intermediate: linear(
                &vs / "intermediate" / "dense",
                h,
                cfg.intermediate_size,
                cfg,
            ),
            output: linear(&vs / "output" / "dense", cfg.intermediate_size, h, cfg),
            output_layer_norm: layer_norm(&vs / "output" / "LayerNorm", cfg),
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            hidden_act: cfg.hidden_act,
            hidden_dropout: cfg.hidden_dropout_prob,
            attention_dropout: cfg.attention_probs_dropout_prob,
        }
    }

    /// `xs`: [B, T, H]; `mask`: boolean [B, 1, 1, T], true where a key may be attended to.
    fn forward_t(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, t, h) = match xs.size()[..] {
            [b, t, h] => (b, t, h),
            ref other => panic!("BertLayer expects [batch, seq, hidden] input, got {other:?}"),
        };
        let heads = |lin: &nn::Linear| {
            lin.forward(xs)
                .view([b, t, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let (q, k, v) = (heads(&self.query), heads(&self.key), heads(&self.value));
        let p = if train { self.attention_dropout } else { 0.0 };
        let context =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, None, false)
                .transpose(1, 2)
                .reshape([b, t, h]);
        let attended = self
            .attention_output
            .forward(&context)
            .dropout(self.hidden_dropout, train);
        let xs = self.attention_layer_norm.forward(&(attended + xs));
        let inner = self.hidden_act.apply(&self.intermediate.forward(&xs));
        let out = self
            .output
            .forward(&inner)
            .dropout(self.hidden_dropout, train);
        self.output_layer_norm.forward(&(out + xs))
    }
}

/// A BERT encoder: embeddings followed by `num_hidden_layers` post-LayerNorm transformer
/// layers. The pooler of the Hugging Face model is not part of it (mean pooling and REALM's
/// `[CLS]` projection do not use it); its weights in a checkpoint are ignored.
#[derive(Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    config: BertConfig,
}

impl BertModel {
    /// Creates the variables under `vs` with Hugging Face names and BERT's initialization
    /// (normal with `initializer_range` for matrices, zero biases, unit LayerNorm gains).
    ///
    /// # Panics
    ///
    /// If `cfg` fails [`BertConfig::validate`]; validate configs that come from outside
    /// first ([`BertConfig::from_file`] does).
    pub fn new(vs: &nn::Path, cfg: &BertConfig) -> Self {
        if let Err(reason) = cfg.validate() {
            panic!("BertModel::new was given an invalid BertConfig: {reason}");
        }
        let embeddings = BertEmbeddings::new(vs / "embeddings", cfg);
        let layer_root = vs / "encoder" / "layer";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(&layer_root / i, cfg))
            .collect();
        BertModel {
            embeddings,
            layers,
            config: cfg.clone(),
        }
    }

    /// Runs the encoder.
    ///
    /// `input_ids` and `attention_mask` are [B, T] integer tensors (mask 1 for real tokens,
    /// 0 for padding); `token_type_ids` defaults to all zeros. Dropout is active only when
    /// `train` is true. Returns the last hidden states, [B, T, H].
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let size = input_ids.size();
        let (b, t) = match size[..] {
            [b, t] => (b, t),
            ref other => panic!("BertModel expects [batch, seq] input ids, got {other:?}"),
        };
        let mask = attention_mask.to_kind(Kind::Bool).view([b, 1, 1, t]);
        let mut xs = self.embeddings.forward_t(input_ids, token_type_ids, train);
        for layer in &self.layers {
            xs = layer.forward_t(&xs, &mask, train);
        }
        xs
    }

    /// The word-embedding matrix, [vocab_size, hidden_size] (for a tied MLM output layer).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word_embeddings.ws
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }
}

/// BERT's initialization of one variable, deterministic in `seed` and the variable's name
/// (independent of libtorch's global generator and of the device): unit LayerNorm gains,
/// zero biases, and normal(0, `initializer_range`) matrices with the padding token's
/// embedding row zeroed.
pub fn initial_values(config: &BertConfig, name: &str, numel: usize, seed: i64) -> Vec<f32> {
    if name.ends_with("LayerNorm.weight") {
        return vec![1.0; numel];
    }
    if name.ends_with("bias") {
        return vec![0.0; numel];
    }
    let mut rng = SplitMix64::new(variable_seed(seed, name));
    let stdev = config.initializer_range;
    let mut values: Vec<f32> = (0..numel).map(|_| (rng.normal() * stdev) as f32).collect();
    if name.ends_with("word_embeddings.weight") {
        let hidden = config.hidden_size as usize;
        let pad = config.pad_token_id as usize;
        if let Some(row) = values.get_mut(pad * hidden..(pad + 1) * hidden) {
            row.fill(0.0);
        }
    }
    values
}
