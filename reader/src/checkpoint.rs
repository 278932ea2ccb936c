//! Reader checkpoints: the framing of [`realm_retriever::checkpoint`] with the magic
//! `b"REALMRDR"`. Version 2 (written) holds the weights as a safetensors file; version 1
//! (still read) held them as a list of little-endian f32 tensors.

use std::collections::HashMap;

use realm_retriever::bert::BertConfig;
use realm_retriever::checkpoint::{
    Checkpoint, CheckpointKind, CheckpointParts, FormatError, write_checkpoint,
};
use realm_retriever::weights::{TensorFile, load_exact, load_named, to_safetensors};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::reader::{Reader, ReaderConfig};
use crate::spans::SpanNormalization;

/// Reader checkpoints: version 1 (legacy f32 weights) is read, version 2 (safetensors
/// weights) is read and written.
const READER_CHECKPOINT: CheckpointKind = CheckpointKind {
    magic: b"REALMRDR",
    name: "reader",
    versions: &[1, 2],
};

/// The JSON header of a reader checkpoint.
#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    bert: BertConfig,
    pad_id: i64,
    /// Absent from checkpoints written before it existed: 1.
    #[serde(default = "unit_scale")]
    retrieval_scale: f64,
    /// Absent from checkpoints written before it existed, and written only when it is not
    /// per passage, so that those checkpoints re-save to their own bytes: per passage.
    #[serde(default, skip_serializing_if = "is_per_passage")]
    span_normalization: SpanNormalization,
}

fn unit_scale() -> f64 {
    1.0
}

fn is_per_passage(normalization: &SpanNormalization) -> bool {
    *normalization == SpanNormalization::Passage
}

impl Reader {
    /// Serializes the reader: `b"REALMRDR"`, a little-endian u32 format version (2), then
    /// three sections, each a little-endian u64 length followed by its bytes: a JSON header
    /// (BERT config, pad id, retrieval scale, span normalization), the tokenizer JSON, and the weights as a
    /// safetensors file. Runtime settings ([`ReaderConfig`]) are not part of it. Equal
    /// weights give equal bytes.
    pub fn to_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let header = CheckpointHeader {
            bert: self.bert_config.clone(),
            pad_id: self.pad_id,
            retrieval_scale: self.retrieval_scale,
            span_normalization: self.span_normalization,
        };
        let weights = to_safetensors(&self.vs).map_err(Error::from_format)?;
        write_checkpoint(CheckpointParts {
            kind: &READER_CHECKPOINT,
            header: &header,
            tokenizer: &self.tokenizer,
            weights: &weights,
        })
        .map_err(Error::from_format)
    }

    /// Rebuilds a reader from [`Reader::to_checkpoint_bytes`] (format version 2) or from a
    /// version-1 checkpoint, with the runtime settings `cfg`.
    pub fn from_checkpoint_bytes(bytes: &[u8], cfg: ReaderConfig) -> Result<Reader> {
        let checkpoint =
            Checkpoint::parse(bytes, &READER_CHECKPOINT).map_err(Error::from_format)?;
        let header: CheckpointHeader = checkpoint.header().map_err(Error::from_format)?;
        header.bert.validate().map_err(|reason| Error::Checkpoint {
            reason: FormatError::Config { reason }.to_string(),
        })?;
        let tokenizer = checkpoint.tokenizer().map_err(Error::from_format)?;
        let weights = match checkpoint.version {
            1 => Weights::Legacy(legacy_weights(checkpoint.weights).map_err(Error::from_format)?),
            _ => Weights::File(TensorFile::parse(checkpoint.weights).map_err(Error::from_format)?),
        };
        let mut reader = Self::build(header.bert, tokenizer, cfg, Some(header.pad_id))?;
        reader
            .set_retrieval_scale(header.retrieval_scale)
            .map_err(|_| Error::Checkpoint {
                reason: format!(
                    "its retrieval scale {} is not a positive number",
                    header.retrieval_scale
                ),
            })?;
        reader.set_span_normalization(header.span_normalization);
        match weights {
            Weights::Legacy(weights) => load_legacy(&reader, &weights),
            Weights::File(file) => load_exact(&reader.vs, &file),
        }
        .map_err(Error::from_format)?;
        Ok(reader)
    }
}

/// The parsed weights section of a checkpoint, by format version.
enum Weights<'a> {
    /// Version 1: named f32 tensors.
    Legacy(HashMap<String, Tensor>),
    /// Version 2: a safetensors file.
    File(TensorFile<'a>),
}

impl Error {
    /// A checkpoint or weights error as the reader's error: libtorch failures stay
    /// [`Error::Torch`], the rest is [`Error::Checkpoint`].
    pub(crate) fn from_format(e: FormatError) -> Error {
        e.into_torch()
            .map_or_else(|reason| Error::Checkpoint { reason }, Error::Torch)
    }
}

/// Fills every variable of the reader from version-1 weights.
fn load_legacy(reader: &Reader, weights: &HashMap<String, Tensor>) -> Result<(), FormatError> {
    let names: Vec<&str> = weights.keys().map(String::as_str).collect();
    load_named(&reader.vs, &names, |name| {
        Ok(weights.get(name).map(Tensor::shallow_clone))
    })
}

/// Parses the weights section of a version-1 reader checkpoint: per tensor a u32 name
/// length, the UTF-8 name, a u32 rank, that many u64 dimensions, then the little-endian f32
/// values, all integers little-endian.
fn legacy_weights(bytes: &[u8]) -> Result<HashMap<String, Tensor>, FormatError> {
    let fail = |reason| FormatError::LegacyWeights { reason };
    let mut weights = HashMap::new();
    let mut w = Cursor { bytes, at: 0 };
    while w.at < w.bytes.len() {
        let name_len = w.u32().ok_or(fail("it ends inside a weight name"))?;
        let name = w
            .take(name_len as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(fail("a weight name is truncated or not UTF-8"))?
            .to_owned();
        let rank = w.u32().ok_or(fail("it ends inside a weight rank"))?;
        let mut size = Vec::new();
        for _ in 0..rank.min(8) {
            size.push(
                w.u64()
                    .and_then(|d| i64::try_from(d).ok())
                    .ok_or(fail("it ends inside a weight shape"))?,
            );
        }
        let numel = size
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
            .and_then(|n| n.checked_mul(4))
            .ok_or(fail("a weight shape overflows"))?;
        let data = w
            .take(numel)
            .ok_or(fail("it ends inside a weight's values"))?;
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let tensor = Tensor::f_from_slice(&values)
            .and_then(|t| t.f_view(size.as_slice()))
            .map_err(|source| FormatError::Torch {
                name: name.clone(),
                source,
            })?;
        weights.insert(name, tensor);
    }
    Ok(weights)
}

/// A byte reader over a legacy weights section.
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
        self.take(4)?.first_chunk().copied().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.first_chunk().copied().map(u64::from_le_bytes)
    }
}
