//! The trainer crate's error type.

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The retriever (encoders, search, building generations) reported an error.
    #[error("the retriever reported an error: {0}")]
    Retriever(#[from] realm_retriever::Error),

    /// The store reported an error.
    #[error("the store reported an error: {0}")]
    Storage(#[from] realm_storage::Error),

    /// The reader reported an error.
    #[error("the reader reported an error: {0}")]
    Reader(#[from] realm_reader::Error),

    /// A reader checkpoint id names no stored reader.
    #[error("the database holds no reader checkpoint {id:?}")]
    UnknownReader { id: String },

    /// libtorch reported an error during a training step.
    #[error("libtorch reported an error: {0}")]
    Torch(#[from] tch::TchError),

    /// A setting of the training configuration cannot be honored (a batch of 0, a learning
    /// rate that is not a positive number, ...).
    #[error("the training configuration is invalid: {reason}")]
    Config { reason: String },

    /// A training mode name is not one of `query-side`, `dual`, `ict` or `qa`.
    #[error("{name:?} is not a training mode; use query-side, dual, ict, qa or realm")]
    UnknownMode { name: String },

    /// The database has no current generation, so there are no encoders to start from.
    #[error(
        "the database has no current generation, so there is no encoder to train; build a generation first"
    )]
    NoGeneration,

    /// Distant supervision found no positive passage for any training question.
    #[error(
        "no training example has a positive passage among the top {candidates} retrieved passages (all {examples} examples were dropped); raise the number of candidates or check the answers"
    )]
    NoPositives { examples: usize, candidates: usize },

    /// There is nothing to train on (no questions given, or too few passages for ICT).
    #[error("there is nothing to train on: {reason}")]
    NoData { reason: String },

    /// A trainer state blob exists but cannot be used to resume.
    #[error("the trainer state blob {blob:?} is corrupt: {reason}")]
    CorruptState { blob: String, reason: String },

    /// The index-builder thread of a dual or ICT run panicked.
    #[error("the index-builder thread panicked while building a generation")]
    BuilderPanicked,
}

/// The trainer crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
