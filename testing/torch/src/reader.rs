//! The tiny random reader.

use realm_reader::{Reader, ReaderConfig};

use crate::{tiny_bert, tokenizer};

/// [`ReaderConfig::default`] with at most `max_len` tokens per question and passage.
pub fn reader_config(max_len: usize) -> ReaderConfig {
    ReaderConfig {
        max_len,
        ..ReaderConfig::default()
    }
}

/// A tiny randomly initialized reader ([`crate::tiny_bert`], real WordPiece tokenizer) with
/// the runtime settings `cfg`; equal seeds give equal weights.
pub fn tiny_reader(seed: i64, cfg: ReaderConfig) -> Reader {
    Reader::random(tiny_bert(), tokenizer(), cfg, seed).expect("a tiny reader builds")
}
