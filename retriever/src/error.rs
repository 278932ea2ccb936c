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

impl Error {
    /// Whether the error is the user's to fix: a bad argument, model folder or question file,
    /// a generation without an encoder, a database that kept changing. The other errors are
    /// internal: a bug or a failure of the environment (I/O, libtorch, the tokenizer, a stored
    /// checkpoint). A storage error is classified by [`realm_storage::Error::is_user_error`].
    ///
    /// The match has no wildcard arm, so a new variant does not compile until it is classified.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_user_error(),
            Error::ModelFile { .. }
            | Error::InvalidInput { .. }
            | Error::NoEncoder { .. }
            // Concurrent changes: retrying is the fix.
            | Error::Busy { .. }
            | Error::QaFile { .. }
            | Error::QaLine { .. }
            | Error::AnswerPattern { .. } => true,
            Error::Io { .. } | Error::Tokenizer { .. } | Error::Checkpoint { .. } | Error::Torch(_) => {
                false
            }
        }
    }
}

/// The retriever crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's kind (true: user), written again independently of
    /// [`Error::is_user_error`]; exhaustive, so a new variant must be listed here too.
    fn expected_user_error(e: &Error) -> bool {
        match e {
            Error::Io { .. } => false,
            Error::ModelFile { .. } => true,
            Error::Tokenizer { .. } => false,
            Error::Checkpoint { .. } => false,
            Error::Torch(_) => false,
            Error::InvalidInput { .. } => true,
            Error::NoEncoder { .. } => true,
            Error::Busy { .. } => true,
            Error::QaFile { .. } => true,
            Error::QaLine { .. } => true,
            Error::AnswerPattern { .. } => true,
            Error::Storage(e) => e.is_user_error(),
        }
    }

    /// The number of arms of `expected_user_error`: one sample of each variant is needed.
    const VARIANTS: usize = 12;

    fn one_of_each() -> Vec<Error> {
        let path = PathBuf::from("/data/model");
        vec![
            Error::Io {
                path: path.clone(),
                source: std::io::Error::other("disk full"),
            },
            Error::ModelFile {
                path: path.clone(),
                reason: "the weight pooler.dense.weight is missing".into(),
            },
            Error::Tokenizer {
                reason: "the vocabulary is empty".into(),
            },
            Error::Checkpoint {
                reason: "it is truncated".into(),
            },
            Error::Torch(tch::TchError::Torch("out of memory".into())),
            Error::InvalidInput {
                reason: "the batch is empty".into(),
            },
            Error::NoEncoder { generation: 2 },
            Error::Busy {
                reason: "the current generation changed three times".into(),
            },
            Error::QaFile {
                path: path.clone(),
                line: 3,
                reason: "it has no answers".into(),
            },
            Error::QaLine {
                line: 3,
                reason: "it is not JSON".into(),
            },
            Error::AnswerPattern {
                pattern: "(".into(),
                reason: "the group is not closed".into(),
            },
            Error::Storage(realm_storage::Error::Locked { path }),
        ]
    }

    realm_testing_torch::error_variants_test!(one_of_each(), VARIANTS, expected_user_error);

    #[test]
    fn storage_errors_keep_their_kind() {
        let kinds = [
            realm_storage::Error::NoCurrentGeneration,
            realm_storage::Error::Corrupt {
                what: "passage 3".into(),
            },
        ]
        .map(|e| Error::Storage(e).is_user_error());
        assert_eq!(kinds, [true, false]);
    }
}
