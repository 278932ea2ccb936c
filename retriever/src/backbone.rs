//! Building the BERT that an encoder or a reader stands on: the checks their settings
//! share, the tokenizer set-up, and the var store with the BERT variables.

use tch::{Device, nn};
use tokenizers::Tokenizer;

use crate::bert::{BertConfig, BertModel};
use crate::error::{Error, Result};
use crate::tokenizer::{configure_truncation, default_pad_id, pair_special_tokens};

/// What a BERT-based model is built from.
#[derive(Debug)]
pub struct BertSetup {
    /// The BERT hyper-parameters; they are validated.
    pub config: BertConfig,
    /// The tokenizer; its padding is turned off and it truncates at `max_len`.
    pub tokenizer: Tokenizer,
    /// Where the variables live.
    pub device: Device,
    /// The maximum sequence length in tokens, special tokens included.
    pub max_len: usize,
    /// How many tokens beside the special tokens of a pair `max_len` must leave room for,
    /// beyond the first.
    pub reserved_tokens: usize,
    /// When the model reads pairs with two token types, what they are (for the message
    /// when the model has fewer): "title/body pairs", "question/passage pairs".
    pub pairs: Option<&'static str>,
    /// The padding id; `None` takes the tokenizer's (see
    /// [`crate::tokenizer::default_pad_id`]).
    pub pad_id: Option<i64>,
    /// The path of BERT's variables in the var store (`None`: its root).
    pub scope: Option<&'static str>,
}

/// A built BERT with its var store, configured tokenizer and padding id; the model adds
/// its own heads under `vs`.
#[derive(Debug)]
pub struct BertParts {
    /// The variables, BERT's under their Hugging Face names (below the scope).
    pub vs: nn::VarStore,
    /// The network.
    pub bert: BertModel,
    /// The validated configuration.
    pub config: BertConfig,
    /// The tokenizer, padding off, truncating at the maximum length.
    pub tokenizer: Tokenizer,
    /// The padding id, inside the vocabulary.
    pub pad_id: i64,
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput { reason }
}

/// Checks that `device` exists: CUDA devices must be visible to libtorch.
pub fn check_device(device: Device) -> Result<()> {
    if let Device::Cuda(index) = device {
        let available = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if index >= available {
            return Err(invalid(format!(
                "CUDA device {index} was requested, but libtorch sees {available} CUDA device(s)"
            )));
        }
    }
    Ok(())
}

impl BertParts {
    /// Validates the setup (configuration, device, maximum length against the position
    /// table and the special tokens, token types, vocabulary and padding id), configures
    /// the tokenizer, and creates the BERT variables. Invalid settings are
    /// [`Error::InvalidInput`].
    pub fn build(setup: BertSetup) -> Result<BertParts> {
        let BertSetup {
            config,
            mut tokenizer,
            device,
            max_len,
            reserved_tokens,
            pairs,
            pad_id,
            scope,
        } = setup;
        config
            .validate()
            .map_err(|reason| invalid(format!("the BERT configuration is invalid: {reason}")))?;
        check_device(device)?;
        let max_positions = usize::try_from(config.max_position_embeddings).unwrap_or(0);
        if max_len > max_positions {
            return Err(invalid(format!(
                "the maximum length {max_len} exceeds the model's {max_positions} positions"
            )));
        }
        let special = pair_special_tokens(&tokenizer);
        if max_len <= special + reserved_tokens {
            return Err(invalid(format!(
                "the maximum length {max_len} leaves no room beside the {special} special tokens of a pair"
            )));
        }
        if let Some(pairs) = pairs
            && config.type_vocab_size < 2
        {
            return Err(invalid(format!(
                "{pairs} need two token types, but the model has {}",
                config.type_vocab_size
            )));
        }
        let vocab = tokenizer.get_vocab_size(true);
        if i64::try_from(vocab).map_or(true, |v| v > config.vocab_size) {
            return Err(invalid(format!(
                "the tokenizer has {vocab} tokens but the model's vocabulary holds only {}",
                config.vocab_size
            )));
        }
        let pad_id = pad_id.unwrap_or_else(|| default_pad_id(&tokenizer, &config));
        if pad_id < 0 || pad_id >= config.vocab_size {
            return Err(invalid(format!(
                "the padding id {pad_id} is outside the model's vocabulary"
            )));
        }
        configure_truncation(&mut tokenizer, max_len)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let bert = match scope {
            Some(scope) => BertModel::new(&(&root / scope), &config),
            None => BertModel::new(&root, &config),
        };
        Ok(BertParts {
            vs,
            bert,
            config,
            tokenizer,
            pad_id,
        })
    }
}
