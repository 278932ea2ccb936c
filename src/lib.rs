//! # realm-db
//!
//! An embedded, on-disk vector database with a learned REALM retriever built in.
//!
//! * **Store** ([`Db`]): passages and versioned embedding *generations* in RocksDB. Exactly
//!   one generation is current; publishing a new one is atomic; a [`Snapshot`] pins the
//!   generation it started on, so readers never block and never mix generations.
//! * **Retriever** ([`Retriever`], feature `torch`, on by default): a BERT encoder on
//!   libtorch, generations built from it, and exact inner-product top-k over a pinned
//!   generation held on the device (CUDA when present), with p(z|x).
//!
//! ```
//! use realm_db::{Db, Encoder, NewPassage, Retriever};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let retriever = Retriever::new(Db::create(dir.path())?, Default::default());
//! retriever.ingest(&[
//!     NewPassage::new("Paris", "Paris is the capital and largest city of France."),
//!     NewPassage::new("Oslo", "Oslo is the capital and most populous city of Norway."),
//! ])?;
//! let encoder = Encoder::load(&realm_db::default_model_dir()?, Default::default())?;
//! retriever.build_generation(&encoder, Default::default())?; // embed + publish atomically
//! let snapshot = retriever.snapshot()?; // pins the generation
//! let hits = snapshot.search("What is the capital of Norway?", 1)?;
//! assert_eq!(hits[0].title, "Oslo");
//! # Ok(()) }
//! ```
//!
//! The crates behind it are re-exported whole as [`storage`], [`retriever`], [`reader`] and
//! [`trainer`].

pub use realm_storage as storage;
pub use realm_storage::Bm25Params;
pub use realm_storage::{
    Db, DbBuilder, Dtype, GenerationId, GenerationInfo, GenerationManifest, GenerationSpec,
    GenerationState, GenerationWriter, IndexWriter, InsertOutcome, NewPassage, Options, Passage,
    PassageId, Provenance, Snapshot,
};

#[cfg(feature = "torch")]
pub use realm_reader as reader;
#[cfg(feature = "torch")]
pub use realm_retriever as retriever;
#[cfg(feature = "torch")]
pub use realm_retriever::{
    BuildOptions, Codes, Compute, Device, Encoder, EncoderConfig, Hit, HybridOptions, IndexInfo,
    IvfConfig, Progress, Retriever, RetrieverOptions, SearchMode, SearchOptions, SearchSnapshot,
    default_model_dir, default_nprobe,
};
#[cfg(feature = "torch")]
pub use realm_trainer as trainer;

/// The error of the retriever, which wraps storage errors.
#[cfg(feature = "torch")]
pub use realm_retriever::Error;
/// The error of the storage layer (without the `torch` feature, every error).
pub use realm_storage::Error as StorageError;

/// The README's code blocks, compiled and run as doctests.
#[cfg(all(doctest, feature = "torch"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
