//! The database handle: opening, passages, generations' bookkeeping, pins and GC.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::codec::{self, decode, encode, pair_key, u64_key};
use crate::error::{Error, Result};
use crate::generation::{self, GenerationWriter};
use crate::lexical::{self, DocTerms};
use crate::rocks::{Cf, OpenMode, Reader, Rocks, SnapshotReader};
use crate::snapshot::Snapshot;
use crate::{
    FORMAT_VERSION, GenerationId, GenerationInfo, GenerationManifest, GenerationSpec,
    GenerationState, NewPassage, Passage, PassageId, QueryEncoderVersion, now_ms,
};

pub(crate) const META_FORMAT: &[u8] = b"format_version";
pub(crate) const META_NEXT_PASSAGE: &[u8] = b"next_passage_id";
pub(crate) const META_NEXT_GENERATION: &[u8] = b"next_generation_id";
pub(crate) const META_CURRENT: &[u8] = b"current_generation";
pub(crate) const META_PASSAGE_COUNT: &[u8] = b"passage_count";

/// The format before the lexical index: a writer upgrades it on open.
const FORMAT_VERSION_1: u32 = 1;
/// Passages whose postings a rebuild stages in one write batch.
const REBUILD_BATCH_PASSAGES: usize = 2048;

const BLOB_CHUNK: usize = 1 << 20;
const BLOB_HEADER_CHUNK: u32 = u32::MAX;

/// Tunables of an open database.
#[derive(Clone, Debug)]
pub struct Options {
    /// Create the database when the directory holds none (default: false for `open`).
    pub create_if_missing: bool,
    /// Fail if a database already exists (set by `create`).
    pub error_if_exists: bool,
    /// Open as a read-only follower of a database another handle holds for writing.
    pub follower: bool,
    /// fsync every write, not only publishes (default: false; a killed process still keeps
    /// every acknowledged write, a power loss may lose the last unsynced ones).
    pub sync_all_writes: bool,
    /// Largest accepted passage text, in bytes.
    pub max_text_bytes: usize,
    /// Largest accepted title, in bytes.
    pub max_title_bytes: usize,
    /// Largest accepted metadata, in bytes of JSON.
    pub max_meta_bytes: usize,
    /// Rows per stored vector block.
    pub block_rows: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: false,
            error_if_exists: false,
            follower: false,
            sync_all_writes: false,
            max_text_bytes: 1 << 20,
            max_title_bytes: 4096,
            max_meta_bytes: 64 * 1024,
            block_rows: 1024,
        }
    }
}

/// Builds a [`Db`] with non-default [`Options`].
#[derive(Clone, Debug)]
pub struct DbBuilder {
    path: PathBuf,
    options: Options,
}

impl DbBuilder {
    /// Creates the database if the directory holds none.
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.options.create_if_missing = yes;
        self
    }

    /// Opens as a read-only follower (see [`Options::follower`]).
    pub fn follower(mut self, yes: bool) -> Self {
        self.options.follower = yes;
        self
    }

    /// Sets every option at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Opens the database.
    pub fn open(self) -> Result<Db> {
        Db::open_with(&self.path, self.options)
    }
}

/// What happened to one passage of an insert batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored under a new id.
    Inserted(PassageId),
    /// Its external id was already stored (or repeated earlier in the batch); nothing written.
    Duplicate(PassageId),
}

impl InsertOutcome {
    /// The passage's id, new or existing.
    pub fn id(self) -> PassageId {
        match self {
            InsertOutcome::Inserted(id) | InsertOutcome::Duplicate(id) => id,
        }
    }
}

/// What [`Db::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Generations deleted.
    pub collected: Vec<GenerationId>,
    /// Retired generations kept because a snapshot pins them.
    pub pinned: Vec<GenerationId>,
    /// Retired generations kept by the `keep` policy.
    pub retained: Vec<GenerationId>,
}

/// Figures about a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbStats {
    pub passages: u64,
    pub current_generation: Option<GenerationId>,
    pub generations: usize,
    /// Live SST bytes per column family (after a flush, for a writer).
    pub disk_bytes: BTreeMap<&'static str, u64>,
}

/// The stored form of a passage.
#[derive(Serialize, Deserialize)]
struct PassageRecord {
    external_id: Option<String>,
    title: String,
    text: String,
    /// Metadata as JSON text (bincode cannot carry `serde_json::Value` directly).
    meta: String,
}

#[derive(Serialize, Deserialize)]
struct BlobHeader {
    len: u64,
    chunks: u32,
    crc: u32,
}

pub(crate) struct Inner {
    /// The instance; a follower swaps in a fresh read-only one when it catches up.
    rocks: RwLock<Arc<Rocks>>,
    pub(crate) options: Options,
    /// Serializes read-modify-write sequences (id counters, manifests, coverage checks).
    pub(crate) write_lock: Mutex<()>,
    /// Live snapshots per generation, in this process.
    pub(crate) pins: Mutex<HashMap<GenerationId, usize>>,
}

/// An open realm-db database. Cheap to clone; clones share one RocksDB instance.
///
/// One process opens a database for writing at a time; others may open it as read-only
/// followers ([`DbBuilder::follower`]).
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path())
            .field("follower", &self.is_follower())
            .finish()
    }
}

impl Db {
    /// Creates a new database; fails if one exists at `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Db> {
        let options = Options {
            create_if_missing: true,
            error_if_exists: true,
            ..Options::default()
        };
        Db::open_with(path.as_ref(), options)
    }

    /// Opens an existing database for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path.as_ref(), Options::default())
    }

    /// Starts building a handle with options.
    pub fn builder(path: impl AsRef<Path>) -> DbBuilder {
        DbBuilder {
            path: path.as_ref().to_path_buf(),
            options: Options::default(),
        }
    }

    fn open_with(path: &Path, options: Options) -> Result<Db> {
        let exists = path.join("CURRENT").exists();
        if exists && options.error_if_exists {
            return Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        if !exists && (options.follower || !options.create_if_missing) {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            });
        }
        let rocks = if options.follower {
            Rocks::open(path, OpenMode::Follower)?
        } else {
            if !exists {
                std::fs::create_dir_all(path).map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Rocks::open(path, OpenMode::Writer { create: true })?
        };
        let db = Db {
            inner: Arc::new(Inner {
                rocks: RwLock::new(Arc::new(rocks)),
                options,
                write_lock: Mutex::new(()),
                pins: Mutex::new(HashMap::new()),
            }),
        };
        match db.rocks().get(Cf::Meta, META_FORMAT)? {
            None if !exists => db.initialize()?,
            None => {
                return Err(Error::NotARealmDb {
                    path: path.to_path_buf(),
                });
            }
            Some(bytes) => {
                let found = codec::decode_u64(&bytes, &|| "the format version record".into())?;
                let found = u32::try_from(found).unwrap_or(u32::MAX);
                // Version 1 lacks only the lexical index: a writer builds it below, and a
                // follower reads everything else and reports lexical search as unavailable.
                if found != FORMAT_VERSION && found != FORMAT_VERSION_1 {
                    return Err(Error::UnsupportedFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
        }
        if !db.is_follower() {
            db.discard_unfinished_generations()?;
            db.ensure_lexical_index()?;
        }
        Ok(db)
    }

    fn initialize(&self) -> Result<()> {
        let rocks = self.rocks();
        let mut batch = rocks.batch();
        batch.put(Cf::Meta, META_FORMAT, &u64_key(u64::from(FORMAT_VERSION)));
        batch.put(Cf::Meta, META_NEXT_PASSAGE, &u64_key(0));
        batch.put(Cf::Meta, META_NEXT_GENERATION, &u64_key(1));
        batch.put(Cf::Meta, META_PASSAGE_COUNT, &u64_key(0));
        batch.put(Cf::Meta, lexical::META_DOCS, &u64_key(0));
        batch.put(Cf::Meta, lexical::META_TOKENS, &u64_key(0));
        batch.put(
            Cf::Meta,
            lexical::META_ANALYZER,
            lexical::ANALYZER_VERSION.as_bytes(),
        );
        rocks.write(batch, true)
    }

    /// On a writer's open: upgrades a version-1 database (which has no lexical index) and
    /// repairs an index that is missing (an interrupted rebuild) or was built by another
    /// analyzer. A current database costs two point reads.
    fn ensure_lexical_index(&self) -> Result<()> {
        let rocks = self.rocks();
        let format = read_meta_u64(&*rocks, META_FORMAT)?;
        let current = format == Some(u64::from(FORMAT_VERSION))
            && lexical::unavailable_reason(&*rocks)?.is_none();
        if !current {
            let _guard = self.inner.write_lock.lock();
            self.rebuild_lexical_locked()?;
        }
        Ok(())
    }

    /// Rebuilds the lexical (BM25) index from every stored passage and returns how many were
    /// indexed. Inserts and deletes wait until it finishes. It writes in bounded batches:
    /// snapshots taken before it keep their index, and lexical search through snapshots taken
    /// while it runs fails with [`Error::LexicalIndexUnavailable`]. A rebuild cut short (a
    /// crash) is redone by the next writer's open.
    pub fn rebuild_lexical_index(&self) -> Result<u64> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        self.rebuild_lexical_locked()
    }

    /// Test hook, not part of the API: makes the closed database at `path` look as if it had
    /// been written by format version 1 (no lexical index and no `lexical_postings` column
    /// family), so that tests can exercise the upgrade on open.
    #[doc(hidden)]
    pub fn testing_downgrade_to_format_1(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        {
            let rocks = Rocks::open(path, OpenMode::Writer { create: false })?;
            let mut wb = rocks.batch();
            wb.delete(Cf::Meta, lexical::META_ANALYZER);
            wb.delete(Cf::Meta, lexical::META_DOCS);
            wb.delete(Cf::Meta, lexical::META_TOKENS);
            wb.put(Cf::Meta, META_FORMAT, &u64_key(u64::from(FORMAT_VERSION_1)));
            rocks.write(wb, true)?;
        }
        crate::rocks::drop_column_family(path, Cf::LexicalPostings)
    }

    /// Test hook, not part of the API: records `version` as the analyzer that built the
    /// lexical index, or with `None` removes the record, as an older build or an interrupted
    /// rebuild would leave it.
    #[doc(hidden)]
    pub fn testing_set_lexical_analyzer(&self, version: Option<&str>) -> Result<()> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        match version {
            Some(v) => wb.put(Cf::Meta, lexical::META_ANALYZER, v.as_bytes()),
            None => wb.delete(Cf::Meta, lexical::META_ANALYZER),
        }
        rocks.write(wb, true)
    }

    /// The rebuild; the caller holds the write lock. The first batch removes the analyzer
    /// record and every posting, so until the last batch (which writes the totals, the
    /// analyzer record and the current format version, fsynced) the index reads as missing.
    fn rebuild_lexical_locked(&self) -> Result<u64> {
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        wb.delete(Cf::Meta, lexical::META_ANALYZER);
        wb.delete(Cf::Meta, lexical::META_DOCS);
        wb.delete(Cf::Meta, lexical::META_TOKENS);
        // Every posting key starts with a UTF-8 term, whose bytes are never 0xFF.
        wb.delete_prefix(Cf::LexicalPostings, &[]);
        rocks.write(wb, false)?;
        // Nothing writes passages while the write lock is held; the snapshot only makes the
        // scan independent of the postings written meanwhile.
        let view = SnapshotReader::take(rocks.clone());
        let mut docs = 0u64;
        let mut tokens = 0u64;
        let mut wb = rocks.batch();
        let mut staged = 0usize;
        for entry in view.scan(Cf::Passages, &[], &[]) {
            let (key, value) = entry?;
            let id = codec::decode_u64(&key, &|| "a passage key".into())?;
            let passage = decode_passage(id, &value)?;
            let terms = DocTerms::of(&passage.title, &passage.text);
            terms.stage_insert(&mut wb, id);
            docs += 1;
            tokens += u64::from(terms.len);
            staged += 1;
            if staged == REBUILD_BATCH_PASSAGES {
                rocks.write(std::mem::replace(&mut wb, rocks.batch()), false)?;
                staged = 0;
            }
        }
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(docs));
        wb.put(Cf::Meta, lexical::META_TOKENS, &u64_key(tokens));
        wb.put(
            Cf::Meta,
            lexical::META_ANALYZER,
            lexical::ANALYZER_VERSION.as_bytes(),
        );
        wb.put(Cf::Meta, META_FORMAT, &u64_key(u64::from(FORMAT_VERSION)));
        rocks.write(wb, true)?;
        Ok(docs)
    }

    /// Crash recovery: a generation still `building` at open was interrupted; remove it.
    fn discard_unfinished_generations(&self) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut batch = rocks.batch();
        let mut any = false;
        for manifest in read_manifests(&*rocks)? {
            if manifest.state == GenerationState::Building {
                generation::delete_generation_data(&mut batch, manifest.id);
                any = true;
            }
        }
        if any {
            rocks.write(batch, true)?;
        }
        Ok(())
    }

    pub(crate) fn rocks(&self) -> Arc<Rocks> {
        self.inner.rocks.read().clone()
    }

    /// The database directory.
    pub fn path(&self) -> PathBuf {
        self.rocks().path().to_path_buf()
    }

    /// Whether this handle is a read-only follower.
    pub fn is_follower(&self) -> bool {
        self.inner.options.follower
    }

    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.is_follower() {
            return Err(Error::ReadOnly { path: self.path() });
        }
        Ok(())
    }

    /// A follower catches up with everything the writer has acknowledged so far (it opens a
    /// fresh read-only view; snapshots taken before keep theirs); a writer does nothing.
    pub fn catch_up(&self) -> Result<()> {
        if self.is_follower() {
            let fresh = Rocks::open(&self.path(), OpenMode::Follower)?;
            *self.inner.rocks.write() = Arc::new(fresh);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- passages

    /// Inserts a batch of passages atomically (all or nothing) and returns one outcome per
    /// passage, in order. Passages inserted this way have no vector in the current generation
    /// until one is written ([`Db::put_vectors`]); until then snapshots report them as pending.
    pub fn insert(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>> {
        self.insert_inner(batch, None)
    }

    /// Inserts passages and, in the same atomic write, their vectors in the current
    /// generation `generation`, so they become searchable with no pending window.
    /// `rows[i]` is passage `i`'s vector; a passage inserted without one (`None`, say because
    /// the caller expected it to be a duplicate) is pending. Rows of duplicates are ignored.
    /// Fails with [`Error::GenerationChanged`] if `generation` is no longer current.
    pub fn insert_with_vectors(
        &self,
        batch: &[NewPassage],
        generation: GenerationId,
        rows: &[Option<&[f32]>],
    ) -> Result<Vec<InsertOutcome>> {
        if rows.len() != batch.len() {
            return Err(Error::InvalidPassage {
                index: rows.len().min(batch.len()),
                reason: format!(
                    "{} passages came with {} vector rows",
                    batch.len(),
                    rows.len()
                ),
            });
        }
        self.insert_inner(batch, Some((generation, rows)))
    }

    fn insert_inner(
        &self,
        batch: &[NewPassage],
        vectors: Option<(GenerationId, &[Option<&[f32]>])>,
    ) -> Result<Vec<InsertOutcome>> {
        self.check_writable()?;
        let records = batch
            .iter()
            .enumerate()
            .map(|(index, p)| self.validate_passage(index, p))
            .collect::<Result<Vec<_>>>()?;
        // Analysis is the costly part of indexing; it needs no lock.
        let analyzed: Vec<DocTerms> = batch
            .iter()
            .map(|p| DocTerms::of(&p.title, &p.text))
            .collect();
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = match vectors {
            None => None,
            Some((generation, rows)) => {
                let current = read_current(&*rocks)?;
                if current != Some(generation) {
                    return Err(Error::GenerationChanged {
                        expected: generation,
                        found: current,
                    });
                }
                let manifest = read_manifest(&*rocks, generation)?;
                for (i, row) in rows.iter().enumerate() {
                    if let Some(row) = row {
                        generation::check_rows(&manifest, 1, row).map_err(|e| match e {
                            Error::NonFinite { position, .. } => {
                                Error::NonFinite { row: i, position }
                            }
                            other => other,
                        })?;
                    }
                }
                Some(manifest)
            }
        };
        let mut next = read_meta_u64(&*rocks, META_NEXT_PASSAGE)?.unwrap_or(0);
        let mut count = read_meta_u64(&*rocks, META_PASSAGE_COUNT)?.unwrap_or(0);
        let (mut lexical_docs, mut lexical_tokens) = lexical::read_totals(&*rocks)?;
        let mut wb = rocks.batch();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut seen: HashMap<&str, PassageId> = HashMap::new();
        let mut new_ids: Vec<PassageId> = Vec::new();
        let mut new_values: Vec<f32> = Vec::new();
        for (index, ((passage, record), terms)) in
            batch.iter().zip(&records).zip(&analyzed).enumerate()
        {
            if let Some(ext) = passage.external_id.as_deref() {
                if let Some(&id) = seen.get(ext) {
                    outcomes.push(InsertOutcome::Duplicate(id));
                    continue;
                }
                if let Some(bytes) = rocks.get(Cf::ExternalIds, ext.as_bytes())? {
                    let id = codec::decode_u64(&bytes, &|| format!("external id {ext:?}"))?;
                    outcomes.push(InsertOutcome::Duplicate(id));
                    continue;
                }
            }
            let id = next;
            next += 1;
            count += 1;
            wb.put(Cf::Passages, &u64_key(id), record);
            terms.stage_insert(&mut wb, id);
            lexical_docs += 1;
            lexical_tokens += u64::from(terms.len);
            if let Some(ext) = passage.external_id.as_deref() {
                wb.put(Cf::ExternalIds, ext.as_bytes(), &u64_key(id));
                seen.insert(ext, id);
            }
            outcomes.push(InsertOutcome::Inserted(id));
            if let Some(Some(row)) = vectors.map(|(_, rows)| rows[index]) {
                new_ids.push(id);
                new_values.extend_from_slice(row);
            }
        }
        wb.put(Cf::Meta, META_NEXT_PASSAGE, &u64_key(next));
        wb.put(Cf::Meta, META_PASSAGE_COUNT, &u64_key(count));
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(lexical_docs));
        wb.put(Cf::Meta, lexical::META_TOKENS, &u64_key(lexical_tokens));
        if let Some(manifest) = manifest.as_mut()
            && !new_ids.is_empty()
        {
            let block_rows = self.options().block_rows;
            generation::stage_rows(&mut wb, manifest, &new_ids, &new_values, block_rows);
            wb.put(Cf::Generations, &u64_key(manifest.id), &encode(&*manifest));
        }
        rocks.write(wb, self.options().sync_all_writes)?;
        Ok(outcomes)
    }

    fn validate_passage(&self, index: usize, p: &NewPassage) -> Result<Vec<u8>> {
        let reject = |reason: String| Error::InvalidPassage { index, reason };
        let opts = self.options();
        if p.text.trim().is_empty() {
            return Err(reject("its text is empty".into()));
        }
        if p.text.len() > opts.max_text_bytes {
            return Err(reject(format!(
                "its text is {} bytes, over the limit of {} bytes",
                p.text.len(),
                opts.max_text_bytes
            )));
        }
        if p.title.len() > opts.max_title_bytes {
            return Err(reject(format!(
                "its title is {} bytes, over the limit of {} bytes",
                p.title.len(),
                opts.max_title_bytes
            )));
        }
        if let Some(ext) = &p.external_id
            && (ext.is_empty() || ext.len() > 1024)
        {
            return Err(reject(
                "its external id must be between 1 and 1024 bytes long".into(),
            ));
        }
        let meta = serde_json::to_string(&p.meta).map_err(|e| reject(e.to_string()))?;
        if meta.len() > opts.max_meta_bytes {
            return Err(reject(format!(
                "its metadata is {} bytes of JSON, over the limit of {} bytes",
                meta.len(),
                opts.max_meta_bytes
            )));
        }
        Ok(encode(&PassageRecord {
            external_id: p.external_id.clone(),
            title: p.title.clone(),
            text: p.text.clone(),
            meta,
        }))
    }

    /// Deletes passages atomically. An unknown id fails the whole call with
    /// [`Error::UnknownPassage`] and deletes nothing. Held snapshots still see the passages.
    pub fn delete(&self, ids: &[PassageId]) -> Result<usize> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifests: Vec<GenerationManifest> = read_manifests(&*rocks)?;
        let mut count = read_meta_u64(&*rocks, META_PASSAGE_COUNT)?.unwrap_or(0);
        let (mut lexical_docs, mut lexical_tokens) = lexical::read_totals(&*rocks)?;
        let mut wb = rocks.batch();
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for &id in &unique {
            let passage = read_passage(&*rocks, id)?.ok_or(Error::UnknownPassage(id))?;
            wb.delete(Cf::Passages, &u64_key(id));
            if let Some(ext) = &passage.external_id {
                wb.delete(Cf::ExternalIds, ext.as_bytes());
            }
            // The writer's index is always built by this analyzer (open rebuilds it
            // otherwise), so re-analyzing names exactly the passage's postings.
            let terms = DocTerms::of(&passage.title, &passage.text);
            terms.stage_delete(&mut wb, id);
            lexical_docs = lexical_docs.saturating_sub(1);
            lexical_tokens = lexical_tokens.saturating_sub(u64::from(terms.len));
            for manifest in manifests.iter_mut() {
                let key = pair_key(manifest.id, id);
                if rocks.get(Cf::VectorIndex, &key)?.is_some() {
                    wb.delete(Cf::VectorIndex, &key);
                    wb.put(Cf::Tombstones, &key, &[]);
                    manifest.dead_vectors += 1;
                }
            }
            count -= 1;
        }
        for manifest in &manifests {
            wb.put(Cf::Generations, &u64_key(manifest.id), &encode(manifest));
        }
        wb.put(Cf::Meta, META_PASSAGE_COUNT, &u64_key(count));
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(lexical_docs));
        wb.put(Cf::Meta, lexical::META_TOKENS, &u64_key(lexical_tokens));
        rocks.write(wb, self.options().sync_all_writes)?;
        Ok(unique.len())
    }

    // ------------------------------------------------------------- generations

    /// Starts a new generation. It stays invisible until [`GenerationWriter::commit`].
    pub fn begin_generation(&self, spec: GenerationSpec) -> Result<GenerationWriter> {
        GenerationWriter::begin(self.clone(), spec)
    }

    /// Writes vectors of pending passages into the current generation `generation`
    /// (incremental ingestion). Passages that already have a vector there are rejected with
    /// [`Error::DuplicateVector`]: committed vectors are immutable.
    pub fn put_vectors(
        &self,
        generation: GenerationId,
        ids: &[PassageId],
        vectors: &[f32],
    ) -> Result<()> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = read_manifest(&*rocks, generation)?;
        if manifest.state != GenerationState::Committed {
            return Err(Error::NotWritable {
                generation,
                state: manifest.state,
            });
        }
        self.write_rows_locked(&mut manifest, ids, vectors)
    }

    /// Validates and writes rows into a generation; the caller holds the write lock.
    pub(crate) fn write_rows_locked(
        &self,
        manifest: &mut GenerationManifest,
        ids: &[PassageId],
        vectors: &[f32],
    ) -> Result<()> {
        let rocks = self.rocks();
        generation::check_rows(manifest, ids.len(), vectors)?;
        let mut unique = std::collections::HashSet::with_capacity(ids.len());
        for &id in ids {
            if rocks.get(Cf::Passages, &u64_key(id))?.is_none() {
                return Err(Error::UnknownPassage(id));
            }
            if !unique.insert(id)
                || rocks
                    .get(Cf::VectorIndex, &pair_key(manifest.id, id))?
                    .is_some()
            {
                return Err(Error::DuplicateVector {
                    generation: manifest.id,
                    passage: id,
                });
            }
        }
        let mut wb = rocks.batch();
        generation::stage_rows(&mut wb, manifest, ids, vectors, self.options().block_rows);
        wb.put(Cf::Generations, &u64_key(manifest.id), &encode(&*manifest));
        rocks.write(wb, self.options().sync_all_writes)
    }

    /// Attaches a query-encoder version to the current generation `generation` and returns
    /// its version number. The document vectors stay as they are.
    pub fn attach_query_encoder(
        &self,
        generation: GenerationId,
        checkpoint_id: &str,
        note: &str,
    ) -> Result<u32> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = read_manifest(&*rocks, generation)?;
        if manifest.state != GenerationState::Committed {
            return Err(Error::NotWritable {
                generation,
                state: manifest.state,
            });
        }
        let version = manifest.query_encoders.last().map_or(1, |q| q.version + 1);
        manifest.query_encoders.push(QueryEncoderVersion {
            version,
            checkpoint_id: checkpoint_id.to_string(),
            attached_ms: now_ms(),
            note: note.to_string(),
        });
        let mut wb = rocks.batch();
        wb.put(Cf::Generations, &u64_key(generation), &encode(&manifest));
        rocks.write(wb, true)?;
        Ok(version)
    }

    /// The current generation's id, if one was ever committed.
    pub fn current_generation(&self) -> Result<Option<GenerationId>> {
        read_current(&*self.rocks())
    }

    /// One generation's manifest.
    pub fn generation(&self, id: GenerationId) -> Result<GenerationManifest> {
        read_manifest(&*self.rocks(), id)
    }

    /// Every generation not yet collected, oldest first.
    pub fn generations(&self) -> Result<Vec<GenerationInfo>> {
        let rocks = self.rocks();
        let current = read_current(&*rocks)?;
        let pins = self.inner.pins.lock().clone();
        Ok(read_manifests(&*rocks)?
            .into_iter()
            .map(|manifest| GenerationInfo {
                current: Some(manifest.id) == current,
                pins: pins.get(&manifest.id).copied().unwrap_or(0),
                manifest,
            })
            .collect())
    }

    // --------------------------------------------------------------- snapshots

    /// Pins the current generation and the passage set as they are now.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.catch_up()?;
        let mut pins = self.inner.pins.lock();
        let rs = SnapshotReader::take(self.rocks());
        let manifest = match read_current(&rs)? {
            Some(id) => Some(read_manifest(&rs, id)?),
            None => None,
        };
        if let Some(m) = &manifest {
            *pins.entry(m.id).or_default() += 1;
        }
        Ok(Snapshot::new(self.clone(), rs, manifest))
    }

    /// Pins a retained older generation (time travel), with the passage set as it is now.
    pub fn snapshot_at(&self, generation: GenerationId) -> Result<Snapshot> {
        self.catch_up()?;
        let mut pins = self.inner.pins.lock();
        let rs = SnapshotReader::take(self.rocks());
        let manifest = read_manifest(&rs, generation)?;
        if manifest.state == GenerationState::Building {
            return Err(Error::NotPinnable {
                generation,
                state: manifest.state,
            });
        }
        *pins.entry(generation).or_default() += 1;
        Ok(Snapshot::new(self.clone(), rs, Some(manifest)))
    }

    pub(crate) fn unpin(&self, generation: GenerationId) {
        let mut pins = self.inner.pins.lock();
        if let Some(n) = pins.get_mut(&generation) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&generation);
            }
        }
    }

    // ---------------------------------------------------------------------- gc

    /// Collects retired generations that no snapshot in this process pins, keeping the
    /// `keep` most recently created retired ones for time travel, and reclaims their space.
    /// The current generation is never collected. Followers in other processes do not pin:
    /// keep a margin with `keep` if they read old generations.
    pub fn gc(&self, keep: usize) -> Result<GcReport> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let pins = self.inner.pins.lock();
        let rocks = self.rocks();
        let mut retired: Vec<GenerationManifest> = read_manifests(&*rocks)?
            .into_iter()
            .filter(|m| m.state == GenerationState::Retired)
            .collect();
        retired.sort_by_key(|m| std::cmp::Reverse(m.id));
        let mut report = GcReport::default();
        let mut wb = rocks.batch();
        for (rank, manifest) in retired.iter().enumerate() {
            if pins.get(&manifest.id).copied().unwrap_or(0) > 0 {
                report.pinned.push(manifest.id);
            } else if rank < keep {
                report.retained.push(manifest.id);
            } else {
                generation::delete_generation_data(&mut wb, manifest.id);
                report.collected.push(manifest.id);
            }
        }
        if report.collected.is_empty() {
            return Ok(report);
        }
        rocks.write(wb, true)?;
        drop(pins);
        for &id in &report.collected {
            let from = u64_key(id);
            let to = u64_key(id + 1);
            for cf in [Cf::Vectors, Cf::VectorIndex, Cf::Tombstones] {
                rocks.compact(cf, &from, &to);
            }
        }
        Ok(report)
    }

    // ------------------------------------------------------------------- blobs

    /// Stores a named blob (an encoder checkpoint, trainer state), replacing any old value.
    pub fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        let prefix = blob_prefix(name);
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        wb.delete_prefix(Cf::Blobs, &prefix);
        let chunks = bytes.chunks(BLOB_CHUNK);
        let header = BlobHeader {
            len: bytes.len() as u64,
            chunks: chunks.len() as u32,
            crc: crc32fast::hash(bytes),
        };
        for (i, chunk) in chunks.enumerate() {
            wb.put(
                Cf::Blobs,
                &blob_key(&prefix, i as u32),
                &codec::seal(chunk.to_vec()),
            );
        }
        wb.put(
            Cf::Blobs,
            &blob_key(&prefix, BLOB_HEADER_CHUNK),
            &encode(&header),
        );
        rocks.write(wb, true)
    }

    /// Reads a named blob.
    pub fn get_blob(&self, name: &str) -> Result<Vec<u8>> {
        let rocks = self.rocks();
        let prefix = blob_prefix(name);
        let what = || format!("blob {name:?}");
        let header: BlobHeader =
            match rocks.get(Cf::Blobs, &blob_key(&prefix, BLOB_HEADER_CHUNK))? {
                Some(bytes) => decode(&bytes, &what)?,
                None => {
                    return Err(Error::UnknownBlob {
                        name: name.to_string(),
                    });
                }
            };
        let mut out = Vec::with_capacity(header.len as usize);
        for i in 0..header.chunks {
            let bytes = rocks
                .get(Cf::Blobs, &blob_key(&prefix, i))?
                .ok_or_else(|| Error::Corrupt { what: what() })?;
            out.extend_from_slice(codec::unseal(&bytes, &what)?);
        }
        if out.len() as u64 != header.len || crc32fast::hash(&out) != header.crc {
            return Err(Error::Corrupt { what: what() });
        }
        Ok(out)
    }

    /// Whether a named blob exists.
    pub fn has_blob(&self, name: &str) -> Result<bool> {
        let key = blob_key(&blob_prefix(name), BLOB_HEADER_CHUNK);
        Ok(self.rocks().get(Cf::Blobs, &key)?.is_some())
    }

    // ------------------------------------------------------------------- stats

    /// Counts and disk usage.
    pub fn stats(&self) -> Result<DbStats> {
        let rocks = self.rocks();
        if !self.is_follower() {
            rocks.flush()?;
        }
        let mut disk_bytes = BTreeMap::new();
        for cf in Cf::ALL {
            disk_bytes.insert(cf.name(), rocks.disk_bytes(cf)?);
        }
        Ok(DbStats {
            passages: read_meta_u64(&*rocks, META_PASSAGE_COUNT)?.unwrap_or(0),
            current_generation: read_current(&*rocks)?,
            generations: read_manifests(&*rocks)?.len(),
            disk_bytes,
        })
    }
}

fn blob_prefix(name: &str) -> Vec<u8> {
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn blob_key(prefix: &[u8], chunk: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

// ------------------------------------------------------------ shared reads

pub(crate) fn read_meta_u64(r: &dyn Reader, key: &[u8]) -> Result<Option<u64>> {
    match r.get(Cf::Meta, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(codec::decode_u64(&bytes, &|| {
            format!("meta record {}", String::from_utf8_lossy(key))
        })?)),
    }
}

pub(crate) fn read_current(r: &dyn Reader) -> Result<Option<GenerationId>> {
    read_meta_u64(r, META_CURRENT)
}

pub(crate) fn read_manifest(r: &dyn Reader, id: GenerationId) -> Result<GenerationManifest> {
    match r.get(Cf::Generations, &u64_key(id))? {
        Some(bytes) => decode(&bytes, &|| format!("the manifest of generation {id}")),
        None => Err(Error::UnknownGeneration(id)),
    }
}

pub(crate) fn read_manifests(r: &dyn Reader) -> Result<Vec<GenerationManifest>> {
    r.scan(Cf::Generations, &[], &[])
        .map(|entry| {
            let (key, value) = entry?;
            decode(&value, &|| {
                format!("the manifest stored under key {:?}", key.as_ref())
            })
        })
        .collect()
}

pub(crate) fn decode_passage(id: PassageId, bytes: &[u8]) -> Result<Passage> {
    let what = || format!("passage {id}");
    let record: PassageRecord = decode(bytes, &what)?;
    let meta = serde_json::from_str(&record.meta).map_err(|_| Error::Corrupt { what: what() })?;
    Ok(Passage {
        id,
        external_id: record.external_id,
        title: record.title,
        text: record.text,
        meta,
    })
}

pub(crate) fn read_passage(r: &dyn Reader, id: PassageId) -> Result<Option<Passage>> {
    match r.get(Cf::Passages, &u64_key(id))? {
        Some(bytes) => decode_passage(id, &bytes).map(Some),
        None => Ok(None),
    }
}
