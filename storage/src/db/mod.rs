//! The database handle: opening (with crash recovery and format upgrades), the handle's
//! accessors and figures. Each other concern of [`Db`] has its own module.

mod blobs;
mod follower;
mod generations;
mod ivf_index;
mod lexical_index;
mod passages;
mod phrase_generations;
mod pin_files;
mod pins;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::codec::{self, u64_key};
use crate::error::{Error, Result};
use crate::generation;
use crate::lexical;
use crate::rocks::{Cf, OpenMode, Reader, Rocks};
use crate::validation::{
    DEFAULT_MAX_META_BYTES, DEFAULT_MAX_TEXT_BYTES, DEFAULT_MAX_TITLE_BYTES, PassageLimits,
};
use crate::{FORMAT_VERSION, GenerationId, GenerationState};

pub use blobs::BlobInfo;
pub(crate) use generations::{read_current, read_manifest, read_manifests};
pub use ivf_index::{IndexWriter, RowBlocks};
pub use passages::InsertOutcome;
pub(crate) use passages::{decode_passage, read_passage};
pub(crate) use phrase_generations::{
    read_phrase_current, read_phrase_ids, read_phrase_manifest, read_phrase_manifests,
};
pub use pin_files::PinHolders;
pub use pins::GcReport;

pub(crate) const META_FORMAT: &[u8] = b"format_version";
pub(crate) const META_NEXT_PASSAGE: &[u8] = b"next_passage_id";
pub(crate) const META_NEXT_GENERATION: &[u8] = b"next_generation_id";
pub(crate) const META_CURRENT: &[u8] = b"current_generation";
pub(crate) const META_PASSAGE_COUNT: &[u8] = b"passage_count";
pub(crate) const META_CURRENT_PHRASE: &[u8] = b"current_phrase_generation";

/// The format before the lexical index: a writer upgrades it on open.
const FORMAT_VERSION_1: u32 = 1;
/// The format before approximate indexes: the same records without the IVF column families,
/// which a writer's open creates.
const FORMAT_VERSION_2: u32 = 2;
/// The format before phrase generations: the same records without the phrase column families,
/// which a writer's open creates.
const FORMAT_VERSION_3: u32 = 3;
/// The format before query-encoder versions on phrase generations: phrase manifests without
/// `query_encoders`, which every read still decodes (as an empty list).
const FORMAT_VERSION_4: u32 = 4;

/// Tunables of an open database.
#[derive(Clone, Debug)]
pub struct Options {
    /// Create the database when the directory holds none (default: false for `open`).
    pub create_if_missing: bool,
    /// Fail if a database already exists (set by `create`).
    pub error_if_exists: bool,
    /// Open as a read-only follower: it never takes the writer's lock, so it opens whether or
    /// not another handle (in this process or another) writes, and catches up with that
    /// writer at every new snapshot.
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
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_title_bytes: DEFAULT_MAX_TITLE_BYTES,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            block_rows: 1024,
        }
    }
}

impl Options {
    /// The size limits passages must respect under these options.
    pub fn passage_limits(&self) -> PassageLimits {
        PassageLimits {
            max_text_bytes: self.max_text_bytes,
            max_title_bytes: self.max_title_bytes,
            max_meta_bytes: self.max_meta_bytes,
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

/// Figures about a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbStats {
    /// The on-disk format version recorded in the database.
    pub format_version: u32,
    pub passages: u64,
    pub current_generation: Option<GenerationId>,
    pub generations: usize,
    /// The current phrase generation, if one was committed.
    pub current_phrase_generation: Option<GenerationId>,
    /// Phrase generations not yet collected, every state.
    pub phrase_generations: usize,
    /// Live SST bytes per column family (after a flush, for a writer; as of the writer's
    /// last flush, for a follower).
    pub disk_bytes: BTreeMap<&'static str, u64>,
    /// Bytes of every file in the database folder: table files, the write-ahead log,
    /// manifests and pin files. What the database costs on disk.
    pub folder_bytes: u64,
}

pub(crate) struct Inner {
    /// The writer's instance, or a follower's tip (see `follower.rs`).
    rocks: RwLock<Arc<Rocks>>,
    /// A follower's view instances, which its snapshots read (see `follower.rs`).
    views: Mutex<Vec<Arc<Rocks>>>,
    pub(crate) options: Options,
    /// Serializes read-modify-write sequences (id counters, manifests, coverage checks).
    pub(crate) write_lock: Mutex<()>,
    /// This handle's pins, registered where every process's GC sees them.
    pub(crate) pins: pin_files::PinRegistry,
}

/// An open realm-db database. Cheap to clone; clones share one RocksDB instance.
///
/// One handle opens a database for writing at a time ([`Db::open`], which takes the writer's
/// lock). Any number of handles, in any processes, may open it as read-only followers
/// ([`Db::open_read_only`]) whether or not a writer exists: they never block the writer, and
/// the generations their snapshots pin are safe from every process's GC.
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

    /// Opens an existing database for writing; fails with [`Error::Locked`] while another
    /// handle holds it for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path.as_ref(), Options::default())
    }

    /// Opens an existing database for reading only, as a follower: it takes no lock, and
    /// sees what a writer (if any) has written as of each new snapshot.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Db> {
        Db::builder(path).follower(true).open()
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
                views: Mutex::new(Vec::new()),
                options,
                write_lock: Mutex::new(()),
                pins: pin_files::PinRegistry::new(path),
            }),
        };
        match db.rocks().get(Cf::Meta, META_FORMAT)? {
            None if !exists => db.initialize()?,
            // A create cut short (the process died after RocksDB made its files, before the
            // format record): nothing was ever written, so a writer finishes the create.
            None if !db.is_follower() && db.rocks().is_empty()? => db.initialize()?,
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
                // Versions 2 and 3 lack only column families, which a follower reads as empty.
                // Version 4's phrase manifests lack only query-encoder versions, and every
                // read decodes that layout too.
                let known = [
                    FORMAT_VERSION,
                    FORMAT_VERSION_4,
                    FORMAT_VERSION_3,
                    FORMAT_VERSION_2,
                    FORMAT_VERSION_1,
                ];
                if !known.contains(&found) {
                    return Err(Error::UnsupportedFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
        }
        if !db.is_follower() {
            db.upgrade_format()?;
            db.discard_unfinished_generations()?;
            db.discard_unfinished_phrase_generations()?;
            db.discard_unfinished_indexes()?;
            db.ensure_lexical_index()?;
        }
        Ok(db)
    }

    /// Test hook, not part of the API: leaves at `path` what a process killed inside
    /// [`Db::create`] leaves, RocksDB's files without any record.
    #[doc(hidden)]
    #[cfg(feature = "testing")]
    pub fn testing_interrupted_create(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Rocks::open(path, OpenMode::Writer { create: true }).map(drop)
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

    /// Versions 2 and 3 lack only column families (the IVF ones, the phrase ones), which
    /// opening as the writer created, and version 4 lacks only query-encoder versions in
    /// phrase manifests, whose old layout stays readable (a manifest is rewritten in the new
    /// one when it changes): recording the current version completes the upgrade.
    fn upgrade_format(&self) -> Result<()> {
        let rocks = self.rocks();
        let found = read_meta_u64(&*rocks, META_FORMAT)?;
        let upgradable = [FORMAT_VERSION_2, FORMAT_VERSION_3, FORMAT_VERSION_4].map(u64::from);
        if found.is_some_and(|v| upgradable.contains(&v)) {
            let mut batch = rocks.batch();
            batch.put(Cf::Meta, META_FORMAT, &u64_key(u64::from(FORMAT_VERSION)));
            rocks.write(batch, true)?;
        }
        Ok(())
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
        let format = read_meta_u64(&*rocks, META_FORMAT)?.unwrap_or(0);
        Ok(DbStats {
            format_version: u32::try_from(format).unwrap_or(u32::MAX),
            passages: read_meta_u64(&*rocks, META_PASSAGE_COUNT)?.unwrap_or(0),
            current_generation: read_current(&*rocks)?,
            generations: read_manifests(&*rocks)?.len(),
            current_phrase_generation: read_phrase_current(&*rocks)?,
            phrase_generations: read_phrase_manifests(&*rocks)?.len(),
            disk_bytes,
            folder_bytes: folder_bytes(rocks.path())?,
        })
    }
}

/// Bytes of the files under `dir`, recursively. A file removed while it is walked (the
/// writer deleting an obsolete table file) counts as gone.
fn folder_bytes(dir: &Path) -> Result<u64> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => total += folder_bytes(&entry.path())?,
            Ok(meta) => total += meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(total)
}

pub(crate) fn read_meta_u64(r: &dyn Reader, key: &[u8]) -> Result<Option<u64>> {
    match r.get(Cf::Meta, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(codec::decode_u64(&bytes, &|| {
            format!("meta record {}", String::from_utf8_lossy(key))
        })?)),
    }
}
