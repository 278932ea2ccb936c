//! The retriever crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the retriever: loading a model folder, tokenizing,
/// running the network, reading a checkpoint, or talking to the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("an I/O operation on {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file of a model folder exists but its content is unusable (bad JSON, a missing or
    /// misshapen weight, an unsupported setting).
    #[error("the model file {path} cannot be used: {reason}")]
    ModelFile { path: PathBuf, reason: String },

    /// The tokenizer could not be built, configured, serialized, or run.
    #[error("the tokenizer failed: {reason}")]
    Tokenizer { reason: String },

    /// An encoder checkpoint is truncated, corrupt, or from an unsupported format version.
    #[error("the encoder checkpoint cannot be read: {reason}")]
    Checkpoint { reason: String },

    /// libtorch reported an error.
    #[error("libtorch reported an error: {0}")]
    Torch(#[from] tch::TchError),

    /// The caller passed an argument that cannot be honored (an empty batch, a length
    /// beyond the model's position table, a zero batch size).
    #[error("the input is invalid: {reason}")]
    InvalidInput { reason: String },

    /// A generation records no encoder checkpoint, so text cannot be embedded for it.
    #[error(
        "generation {generation} records no encoder checkpoint, so text cannot be embedded for it; search it with vectors or build a generation from an encoder"
    )]
    NoEncoder { generation: u64 },

    /// Concurrent changes kept an operation from completing.
    #[error(
        "the operation did not complete because the database kept changing ({reason}); retry it"
    )]
    Busy { reason: String },

    /// A line of a question file (JSON Lines) is not a usable question: not JSON, no
    /// question, no answers, or a field of the wrong type.
    #[error("line {line} of the question file {path} cannot be used: {reason}")]
    QaFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A question line given on its own (not read from a file) is not a usable question;
    /// [`crate::eval::read_qa_file`] reports [`Error::QaFile`] instead, with the path.
    #[error("question line {line} cannot be used: {reason}")]
    QaLine { line: usize, reason: String },

    /// An answer pattern of a question is not a usable regular expression.
    #[error("the answer pattern {pattern:?} cannot be used: {reason}")]
    AnswerPattern { pattern: String, reason: String },

    /// The storage layer reported an error.
    #[error("the store reported an error: {0}")]
    Storage(#[from] realm_storage::Error),
}

/// The retriever crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
