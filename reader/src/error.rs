//! The reader crate's error type.

/// Everything that can go wrong in the reader: loading a model, tokenizing, running the
/// network, reading a checkpoint, or retrieving passages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The retriever (model folder loading, search) reported an error.
    #[error("the retriever reported an error: {0}")]
    Retriever(#[from] realm_retriever::Error),

    /// The store (reader blobs) reported an error.
    #[error("the store reported an error: {0}")]
    Storage(#[from] realm_storage::Error),

    /// A reader checkpoint id names no stored reader.
    #[error("the database holds no reader checkpoint {id:?}")]
    UnknownReader { id: String },

    /// The blob `reader/current` exists but does not name a stored reader.
    #[error("the blob \"reader/current\" is corrupt: {reason}")]
    CorruptCurrentReader { reason: String },

    /// libtorch reported an error.
    #[error("libtorch reported an error: {0}")]
    Torch(#[from] tch::TchError),

    /// The tokenizer could not be configured, serialized, or run.
    #[error("the tokenizer failed: {reason}")]
    Tokenizer { reason: String },

    /// A reader checkpoint is truncated, corrupt, or from an unsupported format version.
    #[error("the reader checkpoint cannot be read: {reason}")]
    Checkpoint { reason: String },

    /// The caller passed an argument that cannot be honored.
    #[error("the input is invalid: {reason}")]
    InvalidInput { reason: String },

    /// A question was to be answered from an empty list of passages.
    #[error("no passage was given, so the question cannot be answered")]
    NoPassages,

    /// None of the passages holds a span that could be an answer (they are all empty).
    #[error("none of the {passages} passages holds a span that could be an answer")]
    NoCandidate { passages: usize },
}

/// The reader crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        reason: e.to_string(),
    }
}
