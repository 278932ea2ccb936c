//! Tokenizer set-up shared by the encoder and the reader: reading `tokenizer.json`, the
//! padding id, and truncation at a model's maximum length.

use std::path::Path;

use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::bert::BertConfig;
use crate::error::{Error, Result};

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

/// The id that pads batches: the tokenizer's own padding id, else the id of `[PAD]`, else
/// the model's `pad_token_id`.
pub fn default_pad_id(tokenizer: &Tokenizer, bert: &BertConfig) -> i64 {
    tokenizer
        .get_padding()
        .map(|p| i64::from(p.pad_id))
        .or_else(|| tokenizer.token_to_id("[PAD]").map(i64::from))
        .unwrap_or(bert.pad_token_id)
}

/// How many special tokens the tokenizer adds around a pair of sequences.
pub fn pair_special_tokens(tokenizer: &Tokenizer) -> usize {
    tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(true))
}

/// Turns the tokenizer's own padding off (batches are padded by the model) and truncates
/// inputs to `max_len` tokens, special tokens included (longest sequence first).
pub fn configure_truncation(tokenizer: &mut Tokenizer, max_len: usize) -> Result<()> {
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(tokenizer_error)?;
    Ok(())
}

/// A lower-casing BERT WordPiece tokenizer over `vocab` (ids in order), built in code and
/// shaped like the `tokenizer.json` of BERT models: the BERT normalizer and pre-tokenizer,
/// `##` continuations, and the `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` templates. `vocab`
/// must hold `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`, which become special tokens.
/// Meant for tiny models in tests and fixtures.
pub fn bert_wordpiece(vocab: &[&str]) -> Result<Tokenizer> {
    let id = |token: &str| {
        vocab
            .iter()
            .position(|t| *t == token)
            .ok_or_else(|| Error::Tokenizer {
                reason: format!("the vocabulary has no {token} token"),
            })
    };
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut added = Vec::with_capacity(special.len());
    for token in special {
        added.push(
            serde_json::json!({"id": id(token)?, "special": true, "content": token,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}),
        );
    }
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), i.into()))
        .collect();
    let special_token =
        |name: &str, t: u32| serde_json::json!({"SpecialToken": {"id": name, "type_id": t}});
    let sequence = |name: &str, t: u32| serde_json::json!({"Sequence": {"id": name, "type_id": t}});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [special_token("[CLS]", 0), sequence("A", 0), special_token("[SEP]", 0)],
            "pair": [special_token("[CLS]", 0), sequence("A", 0), special_token("[SEP]", 0),
                sequence("B", 1), special_token("[SEP]", 1)],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]",
            "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
            "vocab": ids}
    });
    Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(tokenizer_error)
}

pub(crate) fn tokenizer_error(e: tokenizers::Error) -> Error {
    Error::Tokenizer {
        reason: e.to_string(),
    }
}
