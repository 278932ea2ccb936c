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

impl Error {
    /// Whether the error is the user's to fix: a bad argument, a question without
    /// passages, or a reader id that names no stored reader. The other errors are internal: a bug or a failure of the environment
    /// (libtorch, the tokenizer, a stored checkpoint, a damaged `reader/current`). Retriever
    /// and store errors are classified by their own `is_user_error`.
    ///
    /// The match has no wildcard arm, so a new variant does not compile until it is classified.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Retriever(e) => e.is_user_error(),
            Error::Storage(e) => e.is_user_error(),
            Error::InvalidInput { .. } | Error::NoPassages | Error::UnknownReader { .. } => true,
            Error::CorruptCurrentReader { .. } => false,
            // The store rejects empty passages, so no stored passage leads here.
            Error::NoCandidate { .. } => false,
            Error::Torch(_) | Error::Tokenizer { .. } | Error::Checkpoint { .. } => false,
        }
    }
}

/// The reader crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's kind (true: user), written again independently of
    /// [`Error::is_user_error`]; exhaustive, so a new variant must be listed here too.
    fn expected_user_error(e: &Error) -> bool {
        match e {
            Error::Retriever(e) => e.is_user_error(),
            Error::Storage(e) => e.is_user_error(),
            Error::UnknownReader { .. } => true,
            Error::CorruptCurrentReader { .. } => false,
            Error::Torch(_) => false,
            Error::Tokenizer { .. } => false,
            Error::Checkpoint { .. } => false,
            Error::InvalidInput { .. } => true,
            Error::NoPassages => true,
            Error::NoCandidate { .. } => false,
        }
    }

    /// The number of arms of `expected_user_error`: one sample of each variant is needed.
    const VARIANTS: usize = 10;

    fn one_of_each() -> Vec<Error> {
        vec![
            Error::Retriever(realm_retriever::Error::InvalidInput {
                reason: "the batch is empty".into(),
            }),
            Error::Storage(realm_storage::Error::NoCurrentGeneration),
            Error::UnknownReader { id: "abc".into() },
            Error::CorruptCurrentReader {
                reason: "it is not UTF-8 text".into(),
            },
            Error::Torch(tch::TchError::Torch("out of memory".into())),
            tokenizer_error("the vocabulary is empty"),
            Error::Checkpoint {
                reason: "it is truncated".into(),
            },
            Error::InvalidInput {
                reason: "the question is empty".into(),
            },
            Error::NoPassages,
            Error::NoCandidate { passages: 2 },
        ]
    }

    realm_testing_torch::error_variants_test!(one_of_each(), VARIANTS, expected_user_error);

    #[test]
    fn retriever_errors_keep_their_kind() {
        let checkpoint = realm_retriever::Error::Checkpoint {
            reason: "it is truncated".into(),
        };
        let no_generation =
            realm_retriever::Error::Storage(realm_storage::Error::NoCurrentGeneration);
        assert!(!Error::Retriever(checkpoint).is_user_error());
        assert!(Error::Retriever(no_generation).is_user_error());
    }
}
