//! The database's GC lock, `<db>/readers/gc.lock`: an advisory file lock that orders what
//! readers read against what the writer deletes, across processes.
//!
//! - Taken **shared** by a handle while it pins a generation (`db/pin_files.rs`), and by a
//!   follower's RocksDB instance while it opens or catches up (`rocks.rs`): RocksDB reads the
//!   writer's MANIFEST first and lists its write-ahead logs after, and a log deleted in
//!   between would vanish from the follower's view with everything in it.
//! - Taken **exclusively** by GC while it reads the pin files and writes its deletes, by the
//!   writer while it opens, and by the writer whenever it deletes obsolete RocksDB files
//!   (table files and logs), which it does nowhere else.
//!
//! The lock is `flock`-style: it belongs to one open file, so two files of the same process
//! exclude each other as two processes do, and the kernel releases it when a process dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folder of pin files and of the lock, under the database folder.
pub(crate) const READERS_DIR: &str = "readers";
const GC_LOCK: &str = "gc.lock";

/// The lock file of a database, opened (and created where it can be).
pub(crate) struct GcLock {
    file: File,
    path: PathBuf,
}

impl GcLock {
    /// Opens the lock of the database at `db_path`, creating `readers/` and the file where
    /// the folder can be written. `None` where neither can be had: read-only media without
    /// the file, where no writer has ever run and none can run, so there is nothing to order.
    pub(crate) fn open(db_path: &Path) -> Result<Option<GcLock>> {
        let dir = db_path.join(READERS_DIR);
        let path = dir.join(GC_LOCK);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if unwritable(&e) => {}
            Err(e) => {
                return Err(Error::Io {
                    path: dir.clone(),
                    source: e,
                });
            }
        }
        let writable = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let file = match writable {
            Ok(file) => file,
            // Another user's database, or read-only media: a read-only descriptor locks too.
            Err(e) if unwritable(&e) => match File::open(&path) {
                Ok(file) => file,
                Err(e) if unwritable(&e) || e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            },
            Err(e) => return Err(io(e)),
        };
        Ok(Some(GcLock { file, path }))
    }

    /// Waits for the lock, shared.
    pub(crate) fn shared(&self) -> Result<GcGuard<'_>> {
        self.file.lock_shared().map_err(|e| self.io(e))?;
        Ok(GcGuard(&self.file))
    }

    /// Waits for the lock, exclusively.
    pub(crate) fn exclusive(&self) -> Result<GcGuard<'_>> {
        self.file.lock().map_err(|e| self.io(e))?;
        Ok(GcGuard(&self.file))
    }

    /// The lock exclusively if no one holds it now.
    pub(crate) fn try_exclusive(&self) -> Result<Option<GcGuard<'_>>> {
        match self.file.try_lock() {
            Ok(()) => Ok(Some(GcGuard(&self.file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(self.io(e)),
        }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// A held GC lock, released on drop.
pub(crate) struct GcGuard<'a>(&'a File);

impl Drop for GcGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Whether an I/O error says the folder or file cannot be written here.
pub(crate) fn unwritable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_files_of_one_process_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a = GcLock::open(dir.path()).unwrap().unwrap();
        let b = GcLock::open(dir.path()).unwrap().unwrap();
        let shared = a.shared().unwrap();
        assert!(b.try_exclusive().unwrap().is_none());
        drop(shared);
        let held = b.try_exclusive().unwrap();
        assert!(held.is_some());
        assert!(a.try_exclusive().unwrap().is_none());
        drop(held);
        assert!(a.try_exclusive().unwrap().is_some());
    }
}
