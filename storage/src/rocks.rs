//! The one module that talks to RocksDB.
//!
//! It owns the column-family names, their options, opening (as the writer or as a
//! follower: a RocksDB secondary instance that catches up with the writer), and the small
//! read/write vocabulary the rest of the crate uses:
//! point reads, bounded prefix scans, write batches, range deletes and snapshots.
//! No other module imports `rocksdb`. `follow.rs` keeps followers' views whole (the writer's
//! file deletions, catching up); `read.rs` holds the reads.

mod follow;
mod read;

use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, IteratorMode,
    Options, WriteOptions,
};

use crate::error::{Error, Result};
use crate::gc_lock::GcLock;
use follow::{ManifestMark, open_secondary};
pub(crate) use read::{Entry, Reader, SnapshotReader, prefix_successor};

/// The writer's write-ahead logs, at most, before it flushes to drop the oldest.
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

/// Column families, one per kind of record. See `docs/format.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cf {
    /// Format version, id counters, the current generation.
    Meta,
    /// Passage id (u64 BE) → passage record.
    Passages,
    /// External id (UTF-8) → passage id (u64 BE).
    ExternalIds,
    /// Generation id (u64 BE) → manifest.
    Generations,
    /// Generation id ++ block number (u64 BE each) → vector block.
    Vectors,
    /// Generation id ++ passage id → block number: which passages a generation covers.
    VectorIndex,
    /// Generation id ++ passage id → empty: rows of deleted passages, skipped when loading.
    Tombstones,
    /// Blob name ++ 0x00 ++ chunk number → chunk: encoder checkpoints, readers, trainer state.
    Blobs,
    /// Term (UTF-8) ++ 0x00 ++ passage id (u64 BE) → tf and passage length: BM25 postings.
    LexicalPostings,
    /// Generation id ++ index version (u32 BE) ++ record kind → IVF index header or params.
    IvfIndexes,
    /// Generation id ++ index version ++ list (u32 BE) ++ passage id → the row's SQ8 code.
    IvfLists,
    /// Phrase generation id (u64 BE) → phrase manifest.
    PhraseGenerations,
    /// Phrase generation id ++ passage id → the passage's phrase-row record.
    PhraseRows,
}

impl Cf {
    pub(crate) const ALL: [Cf; 13] = [
        Cf::Meta,
        Cf::Passages,
        Cf::ExternalIds,
        Cf::Generations,
        Cf::Vectors,
        Cf::VectorIndex,
        Cf::Tombstones,
        Cf::Blobs,
        Cf::LexicalPostings,
        Cf::IvfIndexes,
        Cf::IvfLists,
        Cf::PhraseGenerations,
        Cf::PhraseRows,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Passages => "passages",
            Cf::ExternalIds => "external_ids",
            Cf::Generations => "generations",
            Cf::Vectors => "vectors",
            Cf::VectorIndex => "vector_index",
            Cf::Tombstones => "vector_tombstones",
            Cf::Blobs => "blobs",
            Cf::LexicalPostings => "lexical_postings",
            Cf::IvfIndexes => "ivf_indexes",
            Cf::IvfLists => "ivf_lists",
            Cf::PhraseGenerations => "phrase_generations",
            Cf::PhraseRows => "phrase_rows",
        }
    }

    fn options(self) -> Options {
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        match self {
            // Float vectors (phrase rows are mostly vectors) and checkpoints do not compress;
            // large blocks make scans sequential.
            Cf::Vectors | Cf::Blobs | Cf::IvfIndexes | Cf::PhraseRows => {
                opts.set_compression_type(DBCompressionType::None);
                table.set_block_size(64 * 1024);
                opts.set_enable_blob_files(false);
            }
            // A search reads whole lists, one prefix scan each: sequential, and codes of
            // real embeddings compress little.
            Cf::IvfLists => {
                opts.set_compression_type(DBCompressionType::None);
                table.set_block_size(64 * 1024);
            }
            Cf::Passages => {
                opts.set_compression_type(DBCompressionType::Lz4);
                table.set_bloom_filter(10.0, false);
            }
            // Read only by prefix scans, one per query term: larger blocks make long posting
            // lists sequential reads and compress the repeated term prefixes better; a bloom
            // filter would never be consulted.
            Cf::LexicalPostings => {
                opts.set_compression_type(DBCompressionType::Lz4);
                table.set_block_size(16 * 1024);
            }
            _ => {
                opts.set_compression_type(DBCompressionType::Lz4);
            }
        }
        opts.set_block_based_table_factory(&table);
        opts
    }
}

/// How to open the RocksDB instance.
pub(crate) enum OpenMode {
    /// The single writer; creates the database when `create` is set.
    Writer { create: bool },
    /// A follower: a RocksDB secondary instance. It is a frozen view of the database as of
    /// opening (WAL included) until [`Rocks::catch_up`] replays what the writer wrote since.
    Follower,
}

/// An open RocksDB instance with realm-db's column families.
pub(crate) struct Rocks {
    db: rocksdb::DB,
    path: PathBuf,
    role: Role,
}

/// What the instance is, with what only that kind of instance holds.
enum Role {
    /// The writer: its file deletions are disabled but in purges (see the module docs).
    Writer {
        gc_lock: GcLock,
        /// When the last purge that followed a write ran.
        last_purge: Mutex<Instant>,
    },
    /// A follower: opens and catches up under the GC lock, shared (`None` on read-only
    /// media, where no writer runs).
    Follower {
        gc_lock: Option<GcLock>,
        /// The database has gained a column family since this instance opened (a writer
        /// upgraded an older format): catching up cannot add it, only a fresh instance can.
        lacks_families: bool,
        /// The writer's MANIFEST as this instance last read it in full: opening, or catching
        /// up while it did not change (see [`Rocks::catch_up`]).
        manifest: Option<ManifestMark>,
    },
}

impl std::fmt::Debug for Rocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rocks")
            .field("path", &self.path)
            .field("follower", &self.is_follower())
            .finish()
    }
}

impl Rocks {
    pub(crate) fn open(path: &Path, mode: OpenMode) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_background_jobs(2);
        match mode {
            OpenMode::Writer { create } => {
                opts.create_if_missing(create);
                // Bounds the write-ahead logs a follower replays when it opens: past this,
                // RocksDB flushes the column families that hold the oldest log (a rarely
                // written one, like `meta`, would otherwise keep every log since alive).
                opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
                let gc_lock = GcLock::open(path)?.ok_or_else(|| Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::ErrorKind::PermissionDenied.into(),
                })?;
                // Opening deletes obsolete files and may flush recovered logs: no follower
                // may be reading the file lists meanwhile.
                let db = {
                    let _guard = gc_lock.exclusive()?;
                    let db = rocksdb::DB::open_cf_descriptors(&opts, path, descriptors())
                        .map_err(|source| classify_open_error(path, source))?;
                    db.disable_file_deletions()
                        .map_err(|source| classify_open_error(path, source))?;
                    db
                };
                Ok(Rocks {
                    db,
                    path: path.to_path_buf(),
                    role: Role::Writer {
                        gc_lock,
                        last_purge: Mutex::new(Instant::now()),
                    },
                })
            }
            OpenMode::Follower => {
                // Every table file is opened with its version and stays open, so files the
                // writer compacts away remain readable until this instance catches up (RocksDB
                // requires this setting of secondary instances).
                opts.set_max_open_files(-1);
                // A secondary instance needs a folder of its own for its info log. It is
                // removed as soon as the instance is open (the open log file lives on
                // unlinked, and the log never rolls over to a new file), so a killed follower
                // leaves nothing behind.
                opts.set_max_log_file_size(0);
                opts.set_log_file_time_to_roll(0);
                opts.set_log_level(rocksdb::LogLevel::Warn);
                let dir = tempfile::Builder::new()
                    .prefix("realm-db-follower-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                let gc_lock = GcLock::open(path)?;
                let (opened, manifest) = {
                    let _guard = gc_lock.as_ref().map(GcLock::shared).transpose()?;
                    let manifest = ManifestMark::read(path);
                    (open_secondary(&opts, path, dir.path()), manifest)
                };
                let removed = dir.close();
                let (db, lacks_families) =
                    opened.map_err(|source| classify_open_error(path, source))?;
                removed.map_err(|source| Error::Io {
                    path: std::env::temp_dir(),
                    source,
                })?;
                Ok(Rocks {
                    db,
                    path: path.to_path_buf(),
                    role: Role::Follower {
                        gc_lock,
                        lacks_families,
                        manifest,
                    },
                })
            }
        }
    }

    /// Whether this is a follower's (secondary) instance.
    pub(crate) fn is_follower(&self) -> bool {
        matches!(self.role, Role::Follower { .. })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // A writer opens (creating if needed) every entry of `Cf::ALL`; only a follower of an
        // older database can lack one, and followers never write.
        self.cf_if_present(cf)
            .unwrap_or_else(|| panic!("column family {} is opened with the database", cf.name()))
    }

    fn cf_if_present(&self, cf: Cf) -> Option<&ColumnFamily> {
        self.db.cf_handle(cf.name())
    }

    fn err(&self, source: rocksdb::Error) -> Error {
        Error::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch {
            rocks: self,
            inner: rocksdb::WriteBatch::default(),
        }
    }

    pub(crate) fn write(&self, batch: Batch<'_>, sync: bool) -> Result<()> {
        if self.is_follower() {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .write_opt(batch.inner, &opts)
            .map_err(|e| self.err(e))?;
        self.purge_if_due();
        Ok(())
    }

    /// Asks RocksDB to compact `[from, to)` so that deleted data frees its disk space.
    pub(crate) fn compact(&self, cf: Cf, from: &[u8], to: &[u8]) {
        self.db.compact_range_cf(self.cf(cf), Some(from), Some(to));
    }

    /// Flushes memtables to SST files and purges the logs they obsolete (used before
    /// measuring disk usage).
    pub(crate) fn flush(&self) -> Result<()> {
        for cf in Cf::ALL {
            if let Some(handle) = self.cf_if_present(cf) {
                self.db.flush_cf(handle).map_err(|e| self.err(e))?;
            }
        }
        self.purge_obsolete_files()
    }

    /// Whether the database holds no key at all, in any column family (the default one
    /// included): RocksDB's files exist, but nothing was ever written.
    pub(crate) fn is_empty(&self) -> Result<bool> {
        let mut first = vec![self.db.iterator(IteratorMode::Start).next()];
        for cf in Cf::ALL {
            if let Some(handle) = self.cf_if_present(cf) {
                first.push(self.db.iterator_cf(handle, IteratorMode::Start).next());
            }
        }
        match first.into_iter().flatten().next() {
            Some(item) => item.map(|_| false).map_err(|e| self.err(e)),
            None => Ok(true),
        }
    }

    /// Walks `cf` backwards, skipping: the first entry is the last one of the column family,
    /// and after each entry with key `k` the next is the greatest entry whose key is strictly
    /// below `below(k)` (when `below(k)` is not below `k`, simply the entry before `k`). One
    /// iterator serves the walk, so it reads one consistent view; entries skipped over are
    /// never read. A follower reads a column family its database lacks as empty.
    pub(crate) fn scan_back_skipping(
        &self,
        cf: Cf,
        mut below: impl FnMut(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<Entry>> {
        let Some(handle) = self.cf_if_present(cf) else {
            return Ok(Vec::new());
        };
        let mut iter = self.db.raw_iterator_cf(handle);
        iter.seek_to_last();
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let key: Box<[u8]> = key.into();
            out.push((key.clone(), value.into()));
            let target = below(&key);
            if target.as_slice() < key.as_ref() {
                iter.seek_for_prev(&target);
                if iter.key() == Some(target.as_slice()) {
                    iter.prev();
                }
            } else {
                iter.prev();
            }
        }
        iter.status().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Bytes of live SST files in one column family.
    pub(crate) fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        let Some(handle) = self.cf_if_present(cf) else {
            return Ok(0);
        };
        let value = self
            .db
            .property_int_value_cf(handle, "rocksdb.live-sst-files-size")
            .map_err(|e| self.err(e))?;
        Ok(value.unwrap_or(0))
    }
}

/// Drops column families from a closed database, as if it had been written by a format that
/// predates them. Only for tests of format upgrades.
#[cfg(feature = "testing")]
pub(crate) fn drop_column_families(path: &Path, cfs: &[Cf]) -> Result<()> {
    let mut opts = Options::default();
    opts.create_missing_column_families(true);
    let mut db = rocksdb::DB::open_cf_descriptors(&opts, path, descriptors())
        .map_err(|source| classify_open_error(path, source))?;
    for cf in cfs {
        db.drop_cf(cf.name()).map_err(|source| Error::Rocks {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

fn descriptors() -> impl Iterator<Item = ColumnFamilyDescriptor> {
    Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options()))
}

/// A genuine RocksDB error (opening a database under a regular file), for tests of the
/// error type, which cannot build one.
#[cfg(test)]
pub(crate) fn sample_error() -> rocksdb::Error {
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut opts = Options::default();
    opts.create_if_missing(true);
    match rocksdb::DB::open(&opts, file.path().join("db")) {
        Ok(_) => panic!("RocksDB opened a database under a regular file"),
        Err(e) => e,
    }
}

fn classify_open_error(path: &Path, source: rocksdb::Error) -> Error {
    let text = source.to_string();
    if text.contains("lock") || text.contains("LOCK") {
        Error::Locked {
            path: path.to_path_buf(),
        }
    } else if text.contains("does not exist") {
        Error::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        Error::Rocks {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A group of writes applied atomically by [`Rocks::write`].
pub(crate) struct Batch<'a> {
    rocks: &'a Rocks,
    inner: rocksdb::WriteBatch,
}

impl Batch<'_> {
    pub(crate) fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(self.rocks.cf(cf), key, value);
    }

    pub(crate) fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(self.rocks.cf(cf), key);
    }

    /// Deletes every key that starts with `prefix`.
    pub(crate) fn delete_prefix(&mut self, cf: Cf, prefix: &[u8]) {
        let upper = prefix_successor(prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1]);
        self.inner
            .delete_range_cf(self.rocks.cf(cf), prefix, upper.as_slice());
    }
}
