//! The checkpoint framing shared by the encoder and the reader, and checkpoint ids.
//!
//! A checkpoint is 8 magic bytes naming its kind (`b"REALMENC"`, `b"REALMRDR"`,
//! `b"REALMPHR"` for the phrase encoder), a
//! little-endian u32 format version, then three sections, each a little-endian u64 length
//! followed by that many bytes: a JSON header (the kind's own fields), the tokenizer JSON,
//! and the weights (a safetensors file, see [`crate::weights`]). Nothing may follow the
//! last section. A checkpoint's id is the hex SHA-256 of its bytes
//! ([`checkpoint_fingerprint`]). Each kind documents its header fields where it writes them.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

/// Why checkpoint bytes cannot be read or written. Each message is a clause about the
/// checkpoint ("it ...", "its ..."), completing the caller's "the checkpoint cannot be
/// read: ".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not start with the kind's magic.
    #[error("it does not start with the realm-db {kind} magic bytes")]
    Magic { kind: &'static str },

    /// The bytes end before the format version.
    #[error("it ends before its format version")]
    NoVersion,

    /// The format version is not one this build reads.
    #[error("it has format version {found}, but this build reads only version(s) {supported:?}")]
    Version {
        found: u32,
        supported: &'static [u32],
    },

    /// The bytes end before a section's length.
    #[error("it ends before the length of its {section} section")]
    NoLength { section: &'static str },

    /// A section claims more bytes than remain.
    #[error("its {section} section claims {claimed} bytes but only {left} remain")]
    Truncated {
        section: &'static str,
        claimed: u64,
        left: usize,
    },

    /// Bytes follow the last section.
    #[error("it has {count} unexpected bytes after its last section")]
    Trailing { count: usize },

    /// The header is not JSON of the kind's shape, or could not be serialized.
    #[error("its header is not valid JSON of the expected shape ({reason})")]
    Header { reason: String },

    /// The tokenizer JSON cannot be parsed or serialized.
    #[error("its tokenizer JSON cannot be used ({reason})")]
    Tokenizer { reason: String },

    /// The header's BERT configuration fails validation.
    #[error("its BERT configuration is invalid: {reason}")]
    Config { reason: String },

    /// The configuration needs more weight bytes than the checkpoint holds.
    #[error(
        "its configuration needs at least {needed} bytes of weights but the weights section has {available}"
    )]
    TooSmall { needed: u128, available: usize },

    /// The weights section is not a valid safetensors file.
    #[error("its weights are not a valid safetensors file ({0})")]
    Safetensors(#[from] safetensors::SafeTensorError),

    /// A tensor's element type has no counterpart on the other side (libtorch or
    /// safetensors).
    #[error("its tensor {name:?} has the unsupported element type {dtype}")]
    Dtype { name: String, dtype: String },

    /// A tensor's shape differs from the variable it should fill.
    #[error("its tensor {name:?} has shape {found:?} but the variable's is {expected:?}")]
    Shape {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },

    /// A variable of the model has no tensor.
    #[error("it has no tensor {name:?}")]
    Missing { name: String },

    /// A tensor names no variable of the model.
    #[error("it holds a tensor {name:?} that the model does not have")]
    Extra { name: String },

    /// A legacy weights section is malformed.
    #[error("its weights section is malformed: {reason}")]
    LegacyWeights { reason: &'static str },

    /// libtorch failed while converting a tensor.
    #[error("libtorch failed on its tensor {name:?} ({source})")]
    Torch {
        name: String,
        #[source]
        source: tch::TchError,
    },
}

impl FormatError {
    /// Splits off libtorch failures, which callers report as their own libtorch errors:
    /// `Ok` with libtorch's error for [`FormatError::Torch`], else `Err` with this error's
    /// message (a reason for the caller's checkpoint error).
    pub fn into_torch(self) -> Result<tch::TchError, String> {
        match self {
            FormatError::Torch { source, .. } => Ok(source),
            other => Err(other.to_string()),
        }
    }
}

/// A kind of checkpoint: its magic bytes and the format versions this build reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointKind {
    /// The first 8 bytes of every checkpoint of this kind.
    pub magic: &'static [u8; 8],
    /// The kind's name in messages ("encoder", "reader").
    pub name: &'static str,
    /// The versions [`Checkpoint::parse`] accepts; the last one is the one written.
    pub versions: &'static [u32],
}

impl CheckpointKind {
    /// The format version this build writes.
    pub fn current_version(&self) -> u32 {
        self.versions.last().copied().unwrap_or(1)
    }
}

/// The sections of a checkpoint, borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint<'a> {
    /// The format version.
    pub version: u32,
    /// The JSON header.
    pub header: &'a [u8],
    /// The tokenizer JSON.
    pub tokenizer: &'a [u8],
    /// The weights (a safetensors file from version 1 of the encoder and version 2 of the
    /// reader on).
    pub weights: &'a [u8],
}

impl<'a> Checkpoint<'a> {
    /// Splits checkpoint bytes of `kind` into their sections, checking the magic, the
    /// version and the section lengths.
    pub fn parse(bytes: &'a [u8], kind: &CheckpointKind) -> Result<Checkpoint<'a>, FormatError> {
        let rest = bytes
            .strip_prefix(kind.magic)
            .ok_or(FormatError::Magic { kind: kind.name })?;
        let (version, mut rest) = rest
            .split_first_chunk::<4>()
            .ok_or(FormatError::NoVersion)?;
        let version = u32::from_le_bytes(*version);
        if !kind.versions.contains(&version) {
            return Err(FormatError::Version {
                found: version,
                supported: kind.versions,
            });
        }
        let mut sections = [&[][..]; 3];
        for (slot, section) in sections.iter_mut().zip(["header", "tokenizer", "weights"]) {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .ok_or(FormatError::NoLength { section })?;
            let claimed = u64::from_le_bytes(*len);
            let len = usize::try_from(claimed).unwrap_or(usize::MAX);
            if len > tail.len() {
                return Err(FormatError::Truncated {
                    section,
                    claimed,
                    left: tail.len(),
                });
            }
            (*slot, rest) = tail.split_at(len);
        }
        if !rest.is_empty() {
            return Err(FormatError::Trailing { count: rest.len() });
        }
        let [header, tokenizer, weights] = sections;
        Ok(Checkpoint {
            version,
            header,
            tokenizer,
            weights,
        })
    }

    /// The header, parsed as `T`.
    pub fn header<T: DeserializeOwned>(&self) -> Result<T, FormatError> {
        serde_json::from_slice(self.header).map_err(|e| FormatError::Header {
            reason: e.to_string(),
        })
    }

    /// The tokenizer, parsed.
    pub fn tokenizer(&self) -> Result<Tokenizer, FormatError> {
        Tokenizer::from_bytes(self.tokenizer).map_err(|e| FormatError::Tokenizer {
            reason: e.to_string(),
        })
    }
}

/// The sections of a checkpoint to write.
#[derive(Debug)]
pub struct CheckpointParts<'a, H> {
    /// The kind; its current version is written.
    pub kind: &'a CheckpointKind,
    /// The header, serialized as JSON.
    pub header: &'a H,
    /// The tokenizer, serialized as compact JSON.
    pub tokenizer: &'a Tokenizer,
    /// The weights section, e.g. from [`crate::weights::to_safetensors`].
    pub weights: &'a [u8],
}

/// Frames a checkpoint: magic, current version, header, tokenizer and weights sections.
pub fn write_checkpoint<H: Serialize>(
    parts: CheckpointParts<'_, H>,
) -> Result<Vec<u8>, FormatError> {
    let header = serde_json::to_vec(parts.header).map_err(|e| FormatError::Header {
        reason: e.to_string(),
    })?;
    let tokenizer = parts
        .tokenizer
        .to_string(false)
        .map_err(|e| FormatError::Tokenizer {
            reason: e.to_string(),
        })?;
    let sections = [&header[..], tokenizer.as_bytes(), parts.weights];
    let total = 12 + sections.iter().map(|s| 8 + s.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(parts.kind.magic);
    out.extend_from_slice(&parts.kind.current_version().to_le_bytes());
    for section in sections {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    Ok(out)
}

/// The hex SHA-256 of checkpoint bytes: the checkpoint's id.
pub fn checkpoint_fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a BERT checkpoint before anything is allocated: its configuration validates, and
/// its weights section holds at least two bytes for each of `parameters` (BERT's and the
/// heads').
pub fn check_bert_weights(
    bert: &crate::bert::BertConfig,
    parameters: u128,
    weights: &[u8],
) -> Result<(), FormatError> {
    bert.validate()
        .map_err(|reason| FormatError::Config { reason })?;
    let needed = parameters.saturating_mul(2);
    if needed > weights.len() as u128 {
        return Err(FormatError::TooSmall {
            needed,
            available: weights.len(),
        });
    }
    Ok(())
}
