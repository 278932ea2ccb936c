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

    /// libtorch reported an error during a training step.
    #[error("libtorch reported an error: {0}")]
    Torch(#[from] tch::TchError),

    /// A setting of the training configuration cannot be honored (a batch of 0, a learning
    /// rate that is not a positive number, ...).
    #[error("the training configuration is invalid: {reason}")]
    Config { reason: String },

    /// A training mode name is not one of `query-side`, `dual`, `ict`, `qa` or `realm`.
    #[error(
        "there is no training mode {name:?}; use query-side, dual, ict, qa, spans, realm or phrase"
    )]
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

impl Error {
    /// Whether the error is the user's to fix: a bad configuration or mode, a database without a generation, nothing (or nothing usable) to train on. The
    /// other errors are internal: a bug, a damaged trainer state, or a failure of the
    /// environment (libtorch, a panicked thread). Errors of the retriever, the store and the
    /// reader are classified by their own `is_user_error`.
    ///
    /// The match has no wildcard arm, so a new variant does not compile until it is classified.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Retriever(e) => e.is_user_error(),
            Error::Storage(e) => e.is_user_error(),
            Error::Reader(e) => e.is_user_error(),
            Error::Config { .. }
            | Error::UnknownMode { .. }
            | Error::NoGeneration
            | Error::NoPositives { .. }
            | Error::NoData { .. } => true,
            Error::Torch(_) | Error::CorruptState { .. } | Error::BuilderPanicked => false,
        }
    }
}

/// The trainer crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's kind (true: user), written again independently of
    /// [`Error::is_user_error`]; exhaustive, so a new variant must be listed here too.
    fn expected_user_error(e: &Error) -> bool {
        match e {
            Error::Retriever(e) => e.is_user_error(),
            Error::Storage(e) => e.is_user_error(),
            Error::Reader(e) => e.is_user_error(),
            Error::Torch(_) => false,
            Error::Config { .. } => true,
            Error::UnknownMode { .. } => true,
            Error::NoGeneration => true,
            Error::NoPositives { .. } => true,
            Error::NoData { .. } => true,
            Error::CorruptState { .. } => false,
            Error::BuilderPanicked => false,
        }
    }

    /// The number of arms of `expected_user_error`: one sample of each variant is needed.
    const VARIANTS: usize = 11;

    fn one_of_each() -> Vec<Error> {
        vec![
            Error::Retriever(realm_retriever::Error::Tokenizer {
                reason: "the vocabulary is empty".into(),
            }),
            Error::Storage(realm_storage::Error::UnknownGeneration(4)),
            Error::Reader(realm_reader::Error::NoPassages),
            Error::Torch(tch::TchError::Torch("out of memory".into())),
            Error::Config {
                reason: "the batch size is 0".into(),
            },
            Error::UnknownMode {
                name: "sideways".into(),
            },
            Error::NoGeneration,
            Error::NoPositives {
                examples: 10,
                candidates: 5,
            },
            Error::NoData {
                reason: "no question was given".into(),
            },
            Error::CorruptState {
                blob: "trainer-state".into(),
                reason: "it is truncated".into(),
            },
            Error::BuilderPanicked,
        ]
    }

    realm_testing_torch::error_variants_test!(one_of_each(), VARIANTS, expected_user_error);

    #[test]
    fn wrapped_errors_keep_their_kind() {
        let corrupt = realm_storage::Error::Corrupt {
            what: "passage 3".into(),
        };
        let no_generation =
            realm_retriever::Error::Storage(realm_storage::Error::NoCurrentGeneration);
        let kinds = [
            Error::Storage(corrupt).is_user_error(),
            Error::Reader(realm_reader::Error::Retriever(no_generation)).is_user_error(),
        ];
        assert_eq!(kinds, [false, true]);
    }
}
