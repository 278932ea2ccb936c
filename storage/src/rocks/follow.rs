//! Following the writer without seeing a torn database.
//!
//! **File deletions.** A follower opens and catches up by reading the writer's MANIFEST and
//! then listing and replaying its write-ahead logs. A log the writer deleted in between (its
//! contents flushed to a table file the follower's MANIFEST read predates) would vanish from
//! the follower's view, with every write in it: a published generation without its vectors,
//! or a database without its format record. So the writer opens with RocksDB's file deletions
//! disabled and deletes obsolete files (table files and logs) only in *purges*, under the
//! database's GC lock held exclusively, while followers open and catch up under it shared
//! (see `gc_lock.rs`). A purge follows a write at most once a second, and every flush, GC and
//! close.
//!
//! **Catching up.** a follower replays new log records only while the writer's MANIFEST is
//! unchanged; after a flush or compaction it opens a fresh instance (see [`Rocks::catch_up`]).

use std::path::Path;
use std::time::{Duration, Instant};

use rocksdb::Options;

use super::{Cf, Rocks, Role, descriptors};
use crate::error::Result;
use crate::gc_lock::GcLock;

/// The least time between two purges that follow writes.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Which MANIFEST file `CURRENT` names, and its length: RocksDB appends to it whenever a
/// flush or compaction changes the table files, and starts a new one now and then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ManifestMark {
    name: String,
    len: u64,
}

impl ManifestMark {
    /// `None` where `CURRENT` or the MANIFEST cannot be read (never equal to another mark).
    pub(super) fn read(db_path: &Path) -> Option<ManifestMark> {
        let current = std::fs::read_to_string(db_path.join("CURRENT")).ok()?;
        let name = current.trim_end().to_string();
        let len = std::fs::metadata(db_path.join(&name)).ok()?.len();
        Some(ManifestMark { name, len })
    }
}

impl Drop for Rocks {
    fn drop(&mut self) {
        // Leave the folder tidy; what a follower's lock holds off now, the next open purges.
        if let Role::Writer { gc_lock, .. } = &self.role {
            for _ in 0..20 {
                if let Ok(Some(_guard)) = gc_lock.try_exclusive() {
                    let _ = self.delete_obsolete_files();
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Rocks {
    /// A follower replays what the writer has written to its write-ahead logs since this
    /// instance opened or last caught up; a writer does nothing. Returns false when only a
    /// fresh instance can show everything:
    /// - the writer has flushed or compacted since this instance opened (its MANIFEST
    ///   changed). RocksDB's catch-up would apply those table-file changes, and a secondary
    ///   instance that does keeps memtables that then shadow or hide the writer's newer
    ///   writes (a `current` record without its manifest, a generation without its rows),
    ///   where a fresh instance reads the files and logs as they are;
    /// - the database has gained a column family since this instance opened.
    pub(crate) fn catch_up(&self) -> Result<bool> {
        let Role::Follower {
            gc_lock,
            lacks_families,
            manifest,
        } = &self.role
        else {
            return Ok(true);
        };
        if *lacks_families {
            let families =
                rocksdb::DB::list_cf(&Options::default(), &self.path).map_err(|e| self.err(e))?;
            let ours = |name: &String| Cf::ALL.iter().any(|cf| cf.name() == name);
            if families
                .iter()
                .any(|name| ours(name) && self.db.cf_handle(name).is_none())
            {
                return Ok(false);
            }
        }
        let _guard = gc_lock.as_ref().map(GcLock::shared).transpose()?;
        let unchanged = || manifest.is_some() && ManifestMark::read(&self.path) == *manifest;
        if !unchanged() {
            return Ok(false);
        }
        match self.db.try_catch_up_with_primary() {
            // A flush that finished meanwhile may have been applied: start afresh.
            Ok(()) => Ok(unchanged()),
            Err(e) if is_missing_file(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// A writer deletes the files RocksDB no longer needs, waiting for followers that are
    /// opening or catching up; a follower does nothing.
    pub(crate) fn purge_obsolete_files(&self) -> Result<()> {
        let Role::Writer { gc_lock, .. } = &self.role else {
            return Ok(());
        };
        let _guard = gc_lock.exclusive()?;
        self.delete_obsolete_files()
    }

    /// After a write: a purge, if none ran for [`PURGE_EVERY`] and no one holds the GC lock
    /// (a follower opening, a pin being taken, GC in this or another handle); otherwise the
    /// files wait for a later one. Never blocks.
    pub(super) fn purge_if_due(&self) {
        let Role::Writer {
            gc_lock,
            last_purge,
        } = &self.role
        else {
            return;
        };
        let mut last = last_purge.lock();
        if last.elapsed() < PURGE_EVERY {
            return;
        }
        if let Ok(Some(_guard)) = gc_lock.try_exclusive() {
            // Both calls only count (RocksDB returns OK); a failure delays deletions.
            let _ = self.delete_obsolete_files();
            *last = Instant::now();
        }
    }

    /// Lets RocksDB delete obsolete files (it does so before returning), then stops it again.
    /// Callers hold the GC lock exclusively.
    fn delete_obsolete_files(&self) -> Result<()> {
        self.db.enable_file_deletions().map_err(|e| self.err(e))?;
        self.db.disable_file_deletions().map_err(|e| self.err(e))
    }
}

/// Opens a secondary instance, with its own files in `secondary`. A database written by an
/// older format may lack newer column families; a follower cannot create them, so it opens
/// those that exist and reads the others as empty (the flag says whether any is missing).
/// The writer may delete a table file between our reading its MANIFEST and opening the file
/// (a finished compaction); that race surfaces as a missing file, and a fresh attempt reads
/// the newer MANIFEST.
pub(super) fn open_secondary(
    opts: &Options,
    path: &Path,
    secondary: &Path,
) -> std::result::Result<(rocksdb::DB, bool), rocksdb::Error> {
    let mut attempt = 0u32;
    loop {
        let opened = rocksdb::DB::list_cf(opts, path).and_then(|existing| {
            let present: Vec<_> = descriptors()
                .filter(|d| existing.iter().any(|name| name == d.name()))
                .collect();
            let lacks = present.len() < Cf::ALL.len();
            rocksdb::DB::open_cf_descriptors_as_secondary(opts, path, secondary, present)
                .map(|db| (db, lacks))
        });
        match opened {
            Err(e) if attempt < 8 && is_missing_file(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn is_missing_file(e: &rocksdb::Error) -> bool {
    e.to_string().contains("No such file")
}
