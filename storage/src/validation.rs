//! The rules a passage must follow to be stored: the one place they are written.
//!
//! [`Db::insert`](crate::Db::insert) applies them to every passage of a batch, and an
//! ingester can apply them up front ([`validate_passage`]) to report a bad record on its own
//! instead of failing a whole batch.

use crate::NewPassage;

/// The longest accepted external id, in bytes. Fixed: it is not an [`Options`](crate::Options)
/// setting, because external ids are keys of the on-disk format.
pub const MAX_EXTERNAL_ID_BYTES: usize = 1024;
/// The default largest passage text, in bytes ([`Options::max_text_bytes`](crate::Options)).
pub const DEFAULT_MAX_TEXT_BYTES: usize = 1 << 20;
/// The default largest title, in bytes ([`Options::max_title_bytes`](crate::Options)).
pub const DEFAULT_MAX_TITLE_BYTES: usize = 4096;
/// The default largest metadata, in bytes of JSON ([`Options::max_meta_bytes`](crate::Options)).
pub const DEFAULT_MAX_META_BYTES: usize = 64 * 1024;

/// The size limits a passage must respect; [`Default`] gives the store's defaults, and
/// [`Options::passage_limits`](crate::Options::passage_limits) those of a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassageLimits {
    /// Largest accepted passage text, in bytes.
    pub max_text_bytes: usize,
    /// Largest accepted title, in bytes.
    pub max_title_bytes: usize,
    /// Largest accepted metadata, in bytes of JSON.
    pub max_meta_bytes: usize,
}

impl Default for PassageLimits {
    fn default() -> Self {
        PassageLimits {
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_title_bytes: DEFAULT_MAX_TITLE_BYTES,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
        }
    }
}

/// Why a passage cannot be stored. Each message is a sentence about the passage, in the
/// style of the crate's errors (lowercase, no final period).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPassage {
    /// The text is empty or only white space.
    #[error("the text is empty")]
    EmptyText,

    /// The text is longer than [`PassageLimits::max_text_bytes`].
    #[error("the text is {bytes} bytes long, over the limit of {limit} bytes")]
    TextTooLong { bytes: usize, limit: usize },

    /// The title is longer than [`PassageLimits::max_title_bytes`].
    #[error("the title is {bytes} bytes long, over the limit of {limit} bytes")]
    TitleTooLong { bytes: usize, limit: usize },

    /// The external id is the empty string.
    #[error("the external id is empty")]
    EmptyExternalId,

    /// The external id is longer than [`MAX_EXTERNAL_ID_BYTES`].
    #[error("the external id is {bytes} bytes long, over the limit of {limit} bytes")]
    ExternalIdTooLong { bytes: usize, limit: usize },

    /// The metadata's JSON is longer than [`PassageLimits::max_meta_bytes`].
    #[error("the metadata is {bytes} bytes of JSON, over the limit of {limit} bytes")]
    MetaTooLarge { bytes: usize, limit: usize },
}

/// Checks a passage against the rules the store enforces on insert.
pub fn validate_passage(
    passage: &NewPassage,
    limits: &PassageLimits,
) -> Result<(), InvalidPassage> {
    check_passage(passage, limits).map(drop)
}

/// [`validate_passage`], returning the metadata's JSON text (which the store keeps).
pub(crate) fn check_passage(
    passage: &NewPassage,
    limits: &PassageLimits,
) -> Result<String, InvalidPassage> {
    if passage.text.trim().is_empty() {
        return Err(InvalidPassage::EmptyText);
    }
    if passage.text.len() > limits.max_text_bytes {
        return Err(InvalidPassage::TextTooLong {
            bytes: passage.text.len(),
            limit: limits.max_text_bytes,
        });
    }
    if passage.title.len() > limits.max_title_bytes {
        return Err(InvalidPassage::TitleTooLong {
            bytes: passage.title.len(),
            limit: limits.max_title_bytes,
        });
    }
    if let Some(id) = &passage.external_id {
        if id.is_empty() {
            return Err(InvalidPassage::EmptyExternalId);
        }
        if id.len() > MAX_EXTERNAL_ID_BYTES {
            return Err(InvalidPassage::ExternalIdTooLong {
                bytes: id.len(),
                limit: MAX_EXTERNAL_ID_BYTES,
            });
        }
    }
    // Serializing a `serde_json::Value` cannot fail: its map keys are strings.
    let meta = passage.meta.to_string();
    if meta.len() > limits.max_meta_bytes {
        return Err(InvalidPassage::MetaTooLarge {
            bytes: meta.len(),
            limit: limits.max_meta_bytes,
        });
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_rejects_with_a_sentence() {
        let limits = PassageLimits {
            max_text_bytes: 8,
            max_title_bytes: 4,
            max_meta_bytes: 16,
        };
        let ok = || NewPassage::new("t", "text");
        let long_id = "i".repeat(MAX_EXTERNAL_ID_BYTES + 1);
        let cases = [
            (NewPassage::new("t", " \n "), InvalidPassage::EmptyText),
            (
                NewPassage::new("t", "123456789"),
                InvalidPassage::TextTooLong { bytes: 9, limit: 8 },
            ),
            (
                NewPassage::new("title", "text"),
                InvalidPassage::TitleTooLong { bytes: 5, limit: 4 },
            ),
            (ok().with_external_id(""), InvalidPassage::EmptyExternalId),
            (
                ok().with_external_id(long_id.as_str()),
                InvalidPassage::ExternalIdTooLong {
                    bytes: MAX_EXTERNAL_ID_BYTES + 1,
                    limit: MAX_EXTERNAL_ID_BYTES,
                },
            ),
            (
                ok().with_meta(serde_json::json!({"key": "a long value"})),
                InvalidPassage::MetaTooLarge {
                    bytes: 22,
                    limit: 16,
                },
            ),
        ];
        for (passage, expected) in cases {
            let err = validate_passage(&passage, &limits).unwrap_err();
            assert_eq!(err, expected);
            let message = err.to_string();
            assert!(message.starts_with("the "), "{message}");
            assert!(!message.ends_with(['.', '\n', ' ']), "{message}");
        }
        let boundary = ok().with_external_id("i".repeat(MAX_EXTERNAL_ID_BYTES));
        assert_eq!(validate_passage(&boundary, &limits), Ok(()));
        assert_eq!(check_passage(&ok(), &limits).as_deref(), Ok("null"));
    }

    #[test]
    fn default_limits_are_the_options_defaults() {
        assert_eq!(
            crate::Options::default().passage_limits(),
            PassageLimits::default()
        );
    }
}
