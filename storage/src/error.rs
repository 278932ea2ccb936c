//! The storage crate's one error type.

use std::path::PathBuf;

use crate::{GenerationId, GenerationState, PassageId};

/// Everything that can go wrong in the store.
///
/// Every variant says what happened in a full sentence, and errors about files name the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `open` found no database at the path, and the options did not ask to create one.
    #[error(
        "no realm-db database exists at {path}; create one first (for example with `Db::create`)"
    )]
    NotFound { path: PathBuf },

    /// `create` found an existing database at the path.
    #[error("a realm-db database already exists at {path}; open it instead of creating it")]
    AlreadyExists { path: PathBuf },

    /// The directory holds a RocksDB database that realm-db did not create.
    #[error(
        "the directory {path} holds a database that realm-db did not write (its format record is missing)"
    )]
    NotARealmDb { path: PathBuf },

    /// The database was written by a newer (or unknown) version of realm-db.
    #[error(
        "the database at {path} has on-disk format version {found}, but this build of realm-db reads only version {supported}"
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// Another process (or another handle in this process) holds the write lock.
    #[error(
        "the database at {path} is already open for writing by another handle or process; open it as a read-only follower instead"
    )]
    Locked { path: PathBuf },

    /// RocksDB reported an error.
    #[error("storage operation failed on the database at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    /// A file-system operation outside RocksDB failed.
    #[error("I/O failed at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A stored record failed its checksum or could not be decoded.
    #[error("stored data is corrupted: {what} failed its checksum or could not be decoded")]
    Corrupt { what: String },

    /// A passage in an insert batch was rejected; nothing of the batch was written.
    #[error(
        "passage {index} of the batch was rejected, and nothing of the batch was written: {reason}"
    )]
    InvalidPassage { index: usize, reason: String },

    /// No passage has this id (it never existed, or it was deleted).
    #[error("no passage has id {0}")]
    UnknownPassage(PassageId),

    /// No generation has this id (it never existed, or it was collected).
    #[error("no generation has id {0}; it never existed or was garbage-collected")]
    UnknownGeneration(GenerationId),

    /// The generation spec is unusable.
    #[error("the generation spec is invalid: {reason}")]
    InvalidSpec { reason: String },

    /// Phrase rows are malformed (lengths, order, non-finite values) or do not fit their
    /// passage's text.
    #[error("the phrase rows are invalid: {reason}")]
    InvalidPhraseRows { reason: String },

    /// Vectors did not have the generation's dimension.
    #[error(
        "generation {generation} stores {expected}-dimensional vectors, but {values} values were given for {ids} passages"
    )]
    DimensionMismatch {
        generation: GenerationId,
        expected: usize,
        values: usize,
        ids: usize,
    },

    /// A vector held NaN or an infinity.
    #[error(
        "row {row} of the vectors holds a non-finite value (NaN or infinity) at position {position}"
    )]
    NonFinite { row: usize, position: usize },

    /// The generation's state forbids writing.
    #[error("generation {generation} is {state} and its vectors cannot be written")]
    NotWritable {
        generation: GenerationId,
        state: GenerationState,
    },

    /// The passage already has a vector in this generation.
    #[error(
        "passage {passage} already has a vector in generation {generation}; vectors are immutable once written"
    )]
    DuplicateVector {
        generation: GenerationId,
        passage: PassageId,
    },

    /// The passage already has phrase rows in this phrase generation.
    #[error(
        "passage {passage} already has phrase rows in phrase generation {generation}; phrase rows are immutable once written"
    )]
    DuplicatePhraseRows {
        generation: GenerationId,
        passage: PassageId,
    },

    /// Commit found passages without a vector in the new generation.
    #[error(
        "generation {generation} cannot be committed: {missing} visible passages have no vector in it (first few: {first:?}); write them and commit again"
    )]
    CoverageGap {
        generation: GenerationId,
        missing: usize,
        first: Vec<PassageId>,
    },

    /// Only committed or retained (retired) generations can be pinned.
    #[error("generation {generation} is {state} and cannot be pinned by a snapshot")]
    NotPinnable {
        generation: GenerationId,
        state: GenerationState,
    },

    /// The current generation changed between embedding and writing.
    #[error(
        "the current generation changed from {expected} to {found:?} while the batch was being prepared; retry it"
    )]
    GenerationChanged {
        expected: GenerationId,
        found: Option<GenerationId>,
    },

    /// The operation needs a current generation, and none has been published.
    #[error("the database has no current generation yet; build and commit one first")]
    NoCurrentGeneration,

    /// The operation needs a current phrase generation, and none has been published.
    #[error("the database has no current phrase generation yet; build and commit one first")]
    NoPhraseGeneration,

    /// A write was attempted through a read-only follower.
    #[error(
        "this handle is a read-only follower of {path}; writes must go through the process that holds it for writing"
    )]
    ReadOnly { path: PathBuf },

    /// A named blob (an encoder checkpoint, trainer state) does not exist.
    #[error("no stored blob is named {name:?}")]
    UnknownBlob { name: String },

    /// A blob name holds the NUL character, which separates names from chunk numbers in keys.
    #[error("the blob name {name:?} holds the NUL character, which blob names cannot hold")]
    InvalidBlobName { name: String },

    /// Lexical search found no usable BM25 index: a read-only follower of a database that no
    /// writer of this version has opened yet, a snapshot taken while the index was being
    /// rebuilt, or an index built by another analyzer.
    #[error(
        "lexical search is unavailable on the database at {path}: {reason}; open the database as the writer (which builds the index) or call `Db::rebuild_lexical_index`"
    )]
    LexicalIndexUnavailable { path: PathBuf, reason: String },

    /// BM25 parameters out of range.
    #[error(
        "BM25 parameters must be finite with k1 >= 0 and b between 0 and 1, but k1 = {k1} and b = {b} were given"
    )]
    InvalidBm25Params { k1: f32, b: f32 },

    /// An approximate index's parameters or entries do not fit its generation.
    #[error("the approximate index is invalid: {reason}")]
    InvalidIndex { reason: String },

    /// No such index version.
    #[error("generation {generation} has no approximate index version {version}")]
    UnknownIndex {
        generation: GenerationId,
        version: u32,
    },
}

impl Error {
    /// Whether the error is the user's to fix: bad input, a wrong argument, a missing, locked
    /// or foreign database, an unknown id. The other errors are internal: a bug, a damaged
    /// store, or a failure of the environment (I/O, RocksDB).
    ///
    /// The match has no wildcard arm, so a new variant does not compile until it is classified.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::NotFound { .. }
            | Error::AlreadyExists { .. }
            | Error::NotARealmDb { .. }
            | Error::UnsupportedFormat { .. }
            | Error::Locked { .. }
            | Error::InvalidPassage { .. }
            | Error::UnknownPassage(_)
            | Error::UnknownGeneration(_)
            | Error::NotPinnable { .. }
            // Concurrent writers moved the current generation: retrying is the fix.
            | Error::GenerationChanged { .. }
            | Error::NoCurrentGeneration
            | Error::NoPhraseGeneration
            | Error::ReadOnly { .. }
            // A follower of a database whose lexical index no writer has built yet.
            | Error::LexicalIndexUnavailable { .. }
            | Error::InvalidBm25Params { .. }
            | Error::InvalidBlobName { .. }
            // A list count or index version given by the user.
            | Error::InvalidIndex { .. }
            | Error::UnknownIndex { .. } => true,
            Error::Rocks { .. }
            | Error::Io { .. }
            | Error::Corrupt { .. }
            // The layers above build specs, vectors and coverage; a bad one is their bug.
            | Error::InvalidSpec { .. }
            | Error::InvalidPhraseRows { .. }
            | Error::DimensionMismatch { .. }
            | Error::NonFinite { .. }
            | Error::NotWritable { .. }
            | Error::DuplicateVector { .. }
            | Error::DuplicatePhraseRows { .. }
            | Error::CoverageGap { .. }
            // A blob the database's own records name (a stored encoder) is missing.
            | Error::UnknownBlob { .. } => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's kind (true: user), written again independently of
    /// [`Error::is_user_error`]; exhaustive, so a new variant must be listed here too.
    fn expected_user_error(e: &Error) -> bool {
        match e {
            Error::NotFound { .. } => true,
            Error::AlreadyExists { .. } => true,
            Error::NotARealmDb { .. } => true,
            Error::UnsupportedFormat { .. } => true,
            Error::Locked { .. } => true,
            Error::Rocks { .. } => false,
            Error::Io { .. } => false,
            Error::Corrupt { .. } => false,
            Error::InvalidPassage { .. } => true,
            Error::UnknownPassage(_) => true,
            Error::UnknownGeneration(_) => true,
            Error::InvalidSpec { .. } => false,
            Error::InvalidPhraseRows { .. } => false,
            Error::DimensionMismatch { .. } => false,
            Error::NonFinite { .. } => false,
            Error::NotWritable { .. } => false,
            Error::DuplicateVector { .. } => false,
            Error::DuplicatePhraseRows { .. } => false,
            Error::CoverageGap { .. } => false,
            Error::NotPinnable { .. } => true,
            Error::GenerationChanged { .. } => true,
            Error::NoCurrentGeneration => true,
            Error::NoPhraseGeneration => true,
            Error::ReadOnly { .. } => true,
            Error::UnknownBlob { .. } => false,
            Error::InvalidBlobName { .. } => true,
            Error::LexicalIndexUnavailable { .. } => true,
            Error::InvalidBm25Params { .. } => true,
            Error::InvalidIndex { .. } => true,
            Error::UnknownIndex { .. } => true,
        }
    }

    /// The number of arms of `expected_user_error`: one sample of each variant is needed.
    const VARIANTS: usize = 30;

    fn one_of_each() -> Vec<Error> {
        let path = PathBuf::from("/data/db");
        let state = GenerationState::Retired;
        vec![
            Error::NotFound { path: path.clone() },
            Error::AlreadyExists { path: path.clone() },
            Error::NotARealmDb { path: path.clone() },
            Error::UnsupportedFormat {
                path: path.clone(),
                found: 9,
                supported: 2,
            },
            Error::Locked { path: path.clone() },
            Error::Rocks {
                path: path.clone(),
                source: crate::rocks::sample_error(),
            },
            Error::Io {
                path: path.clone(),
                source: std::io::Error::other("disk full"),
            },
            Error::Corrupt {
                what: "passage 3".into(),
            },
            Error::InvalidPassage {
                index: 1,
                reason: crate::InvalidPassage::EmptyText.to_string(),
            },
            Error::UnknownPassage(3),
            Error::UnknownGeneration(4),
            Error::InvalidSpec {
                reason: "the dimension is 0".into(),
            },
            Error::InvalidPhraseRows {
                reason: "stored token 0 covers no bytes (3..3)".into(),
            },
            Error::DimensionMismatch {
                generation: 1,
                expected: 4,
                values: 6,
                ids: 2,
            },
            Error::NonFinite {
                row: 0,
                position: 2,
            },
            Error::NotWritable {
                generation: 1,
                state,
            },
            Error::DuplicateVector {
                generation: 1,
                passage: 2,
            },
            Error::DuplicatePhraseRows {
                generation: 3,
                passage: 2,
            },
            Error::CoverageGap {
                generation: 2,
                missing: 1,
                first: vec![5],
            },
            Error::NotPinnable {
                generation: 2,
                state: GenerationState::Building,
            },
            Error::GenerationChanged {
                expected: 1,
                found: Some(2),
            },
            Error::NoCurrentGeneration,
            Error::NoPhraseGeneration,
            Error::ReadOnly { path: path.clone() },
            Error::UnknownBlob {
                name: "encoder".into(),
            },
            Error::InvalidBlobName {
                name: "notes\0x".into(),
            },
            Error::LexicalIndexUnavailable {
                path,
                reason: "the index is being rebuilt".into(),
            },
            Error::InvalidBm25Params { k1: -1.0, b: 2.0 },
            Error::InvalidIndex {
                reason: "the number of lists must be between 1 and 1048576, not 0".into(),
            },
            Error::UnknownIndex {
                generation: 2,
                version: 3,
            },
        ]
    }

    realm_testing::error_variants_test!(one_of_each(), VARIANTS, expected_user_error);
}
