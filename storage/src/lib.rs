//! # realm-storage
//!
//! The on-disk store of realm-db: passages and versioned embedding *generations* in one
//! RocksDB instance, with MVCC snapshots. It has no libtorch dependency.
//!
//! * A **generation** is every passage's vector as produced by one encoder checkpoint.
//!   [`Db::begin_generation`] returns a [`GenerationWriter`]; [`GenerationWriter::commit`]
//!   publishes it with one atomic write that also retires the previous current generation.
//! * A **snapshot** ([`Db::snapshot`]) pins the current generation together with a RocksDB
//!   snapshot of the passages, so everything read through it stays the same while it lives.
//! * Passages are inserted idempotently by external id ([`Db::insert`]); [`Db::upsert`]
//!   replaces a passage whose external id is stored with other content, in one atomic write
//!   that removes the old passage (its postings and rows) and stores the new content under a
//!   new passage id ([`InsertOutcome::Updated`]).
//! * One handle writes ([`Db::open`] takes the writer's lock); any number of **followers**
//!   ([`Db::open_read_only`]), in any process, read without a lock and catch up with the
//!   writer at each new snapshot. Every handle's pins are registered where every process's
//!   GC sees them; the pins of a process that died do not count.
//! * [`Db::gc`] collects retired generations that no live snapshot (in any process) pins,
//!   beyond a `keep` count.
//! * Named **blobs** hold encoder checkpoints, readers and trainer state: [`Db::put_blob`],
//!   [`Db::get_blob`], [`Db::blobs`] (names and lengths, from the headers alone) and
//!   [`Db::delete_blobs`] (which reclaims their space); `realm_trainer::collect_blobs`
//!   decides which ones are garbage.
//! * A **lexical (BM25) index** ([`lexical`]) is updated in the same write batch as every
//!   passage insert and delete, so [`Snapshot::bm25_search`] scores exactly the passages the
//!   snapshot sees.
//! * A **phrase generation** stores every passage's [`phrase_rows::PhraseRows`] (the
//!   start/end vectors of a phrase encoder, DensePhrases-style) with the same lifecycle:
//!   [`Db::begin_phrase_generation`] returns a [`PhraseGenerationWriter`] whose commit makes
//!   it the current phrase generation, [`Db::phrase_snapshot`] pins it, [`Db::gc`] collects
//!   retired ones.
//!
//! ```
//! use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};
//!
//! # fn main() -> Result<(), realm_storage::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::create(dir.path())?;
//! let ids = db.insert(&[NewPassage::new("Paris", "Paris is the capital of France.")])?;
//! let id = ids[0].id();
//!
//! let mut writer = db.begin_generation(GenerationSpec::new("toy-encoder", 2, Dtype::F32))?;
//! writer.write(&[id], &[0.6, 0.8])?;
//! let generation = writer.commit()?;
//!
//! let snapshot = db.snapshot()?;
//! assert_eq!(snapshot.generation_id(), Some(generation));
//! let matrix = snapshot.vectors()?;
//! assert_eq!(matrix.ids, vec![id]);
//! assert_eq!(snapshot.get(id)?.unwrap().title, "Paris");
//!
//! // A reader (here in the same process; usually another one) follows the writer.
//! let follower = Db::open_read_only(dir.path())?;
//! assert_eq!(follower.snapshot()?.generation_id(), Some(generation));
//! # Ok(()) }
//! ```

mod codec;
mod db;
mod error;
mod gc_lock;
mod generation;
pub mod ivf;
pub mod lexical;
mod phrase_generation;
pub mod phrase_rows;
mod phrase_snapshot;
mod porter2;
mod rocks;
mod snapshot;
mod snapshot_index;
mod validation;
mod verify;

use serde::{Deserialize, Serialize};

pub use db::{
    BlobInfo, Db, DbBuilder, DbStats, GcReport, IndexWriter, InsertOutcome, Options, PinHolders,
    RowBlocks,
};
pub use error::{Error, Result};
pub use generation::GenerationWriter;
pub use lexical::Bm25Params;
pub use phrase_generation::{
    PhraseGenerationInfo, PhraseGenerationSpec, PhraseGenerationWriter, PhraseManifest,
};
pub use phrase_snapshot::PhraseSnapshot;
pub use snapshot::{PassageIter, Snapshot, VectorMatrix};
pub use snapshot_index::IvfList;
pub use validation::{
    DEFAULT_MAX_META_BYTES, DEFAULT_MAX_TEXT_BYTES, DEFAULT_MAX_TITLE_BYTES, InvalidPassage,
    MAX_EXTERNAL_ID_BYTES, PassageLimits, validate_passage,
};
pub use verify::IntegrityReport;

/// The on-disk format version this build reads and writes. See `docs/format.md`.
pub const FORMAT_VERSION: u32 = 5;

/// A passage's stable id, assigned by the database on insert and never reused.
pub type PassageId = u64;
/// A generation's id, assigned in increasing order by [`Db::begin_generation`] and
/// [`Db::begin_phrase_generation`] (one counter: an id names one generation of either kind).
pub type GenerationId = u64;

/// A passage to insert.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPassage {
    /// A caller-chosen unique key. Inserting a passage whose external id already exists is a
    /// no-op that reports the existing id, so re-ingesting the same data is idempotent;
    /// [`Db::upsert`] replaces the stored passage instead when its content differs.
    pub external_id: Option<String>,
    pub title: String,
    pub text: String,
    /// Free-form metadata (any JSON value).
    pub meta: serde_json::Value,
}

impl NewPassage {
    /// A passage with a title and text, no external id and no metadata.
    pub fn new(title: impl Into<String>, text: impl Into<String>) -> Self {
        NewPassage {
            external_id: None,
            title: title.into(),
            text: text.into(),
            meta: serde_json::Value::Null,
        }
    }

    /// Sets the external id.
    pub fn with_external_id(mut self, id: impl Into<String>) -> Self {
        self.external_id = Some(id.into());
        self
    }

    /// Sets the metadata.
    pub fn with_meta(mut self, meta: serde_json::Value) -> Self {
        self.meta = meta;
        self
    }
}

/// A stored passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    pub id: PassageId,
    pub external_id: Option<String>,
    pub title: String,
    pub text: String,
    pub meta: serde_json::Value,
}

impl Passage {
    /// Whether `new` carries this passage's title, text and metadata, so that
    /// [`Db::upsert`] would report it as a duplicate rather than update it.
    pub fn has_content_of(&self, new: &NewPassage) -> bool {
        self.title == new.title && self.text == new.text && self.meta == new.meta
    }
}

/// The element type a generation stores its vectors in. Reads always return `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    F32,
    /// IEEE half precision: half the disk and load bytes, about 3 significant digits.
    F16,
}

impl Dtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(Dtype::F32),
            1 => Some(Dtype::F16),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        })
    }
}

/// Where a generation came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The training step whose weights produced the vectors, if a trainer built it.
    pub training_step: Option<u64>,
    /// The id (content hash) of the encoder checkpoint.
    pub checkpoint_id: Option<String>,
    /// The generation that was current when this one was started.
    pub parent: Option<GenerationId>,
    /// Free-form text.
    pub note: String,
}

/// What a new generation holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// A content hash (or other fingerprint) of the document encoder's weights.
    pub model_fingerprint: String,
    /// Vector dimension.
    pub dim: u32,
    pub dtype: Dtype,
    pub provenance: Provenance,
}

impl GenerationSpec {
    /// A spec with empty provenance.
    pub fn new(model_fingerprint: impl Into<String>, dim: u32, dtype: Dtype) -> Self {
        GenerationSpec {
            model_fingerprint: model_fingerprint.into(),
            dim,
            dtype,
            provenance: Provenance::default(),
        }
    }

    /// Sets the provenance.
    pub fn with_provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = provenance;
        self
    }
}

/// A generation's place in its lifecycle: `building → committed → retired → (collected)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GenerationState {
    /// Being written; invisible to readers; discarded on open after a crash.
    Building,
    /// Published: the one current generation.
    Committed,
    /// Superseded by a newer commit; kept while pinned or retained by the `keep` policy.
    Retired,
}

impl std::fmt::Display for GenerationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GenerationState::Building => "building",
            GenerationState::Committed => "committed",
            GenerationState::Retired => "retired",
        })
    }
}

/// A query-encoder version attached to a generation (query-side fine-tuning changes only the
/// query tower, so the document vectors stay valid).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryEncoderVersion {
    /// 1, 2, … within the generation; the highest is the one queries use by default.
    pub version: u32,
    /// The content hash of the query-encoder checkpoint (a blob name).
    pub checkpoint_id: String,
    pub attached_ms: u64,
    pub note: String,
}

impl QueryEncoderVersion {
    /// Appends the next version (the last one's plus 1, else 1), attached now, to `versions`
    /// and returns its number.
    pub(crate) fn append(
        versions: &mut Vec<QueryEncoderVersion>,
        checkpoint_id: &str,
        note: &str,
    ) -> u32 {
        let version = versions.last().map_or(1, |q| q.version + 1);
        versions.push(QueryEncoderVersion {
            version,
            checkpoint_id: checkpoint_id.to_string(),
            attached_ms: now_ms(),
            note: note.to_string(),
        });
        version
    }
}

/// A generation's manifest, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationManifest {
    pub id: GenerationId,
    pub state: GenerationState,
    pub spec: GenerationSpec,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub committed_ms: Option<u64>,
    pub retired_ms: Option<u64>,
    /// Rows written, including rows of passages deleted since.
    pub vector_count: u64,
    /// Rows of deleted passages (skipped when loading).
    pub dead_vectors: u64,
    /// Vector blocks written; block numbers are `0..blocks`.
    pub blocks: u64,
    /// Query-encoder versions, oldest first.
    pub query_encoders: Vec<QueryEncoderVersion>,
}

impl GenerationManifest {
    /// Rows of passages that still exist.
    pub fn live_vectors(&self) -> u64 {
        self.vector_count - self.dead_vectors
    }

    /// The newest attached query encoder, if any.
    pub fn query_encoder(&self) -> Option<&QueryEncoderVersion> {
        self.query_encoders.last()
    }
}

/// A generation as listed by [`Db::generations`].
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationInfo {
    pub manifest: GenerationManifest,
    /// Whether this is the current generation.
    pub current: bool,
    /// Live snapshots of this handle that pin it.
    pub pins: usize,
    /// Other live handles (other processes, usually) with a snapshot that pins it.
    pub pinned_elsewhere: usize,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
