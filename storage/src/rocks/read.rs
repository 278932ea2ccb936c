//! Reads: the [`Reader`] trait that read logic is written against once, and its
//! implementations for the live database, a writer's RocksDB snapshot, and a follower's view.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::{Cf, Rocks};
use crate::error::Result;

fn scan_options(prefix: &[u8], start: &[u8]) -> (ReadOptions, Vec<u8>) {
    let mut opts = ReadOptions::default();
    if let Some(upper) = prefix_successor(prefix) {
        opts.set_iterate_upper_bound(upper);
    }
    let from = if start > prefix {
        start.to_vec()
    } else {
        prefix.to_vec()
    };
    (opts, from)
}

/// The smallest key greater than every key starting with `prefix`, if one exists.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

type RawSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot that owns a handle to its database, so it can live as long as needed.
    pub(crate) struct RocksSnapshot {
        owner: Arc<Rocks>,
        #[covariant]
        dependent: RawSnapshot,
    }
);

impl std::fmt::Debug for RocksSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksSnapshot")
            .field("path", &self.borrow_owner().path)
            .finish()
    }
}

/// A consistent read view: a RocksDB snapshot of the writer's instance, or a follower's
/// secondary instance that nothing catches up while the view lives (see `db/follower.rs`).
#[derive(Debug)]
pub(crate) enum SnapshotReader {
    Live(RocksSnapshot),
    Frozen(Arc<Rocks>),
}

impl SnapshotReader {
    pub(crate) fn take(rocks: Arc<Rocks>) -> Self {
        if rocks.is_follower() {
            SnapshotReader::Frozen(rocks)
        } else {
            SnapshotReader::Live(RocksSnapshot::new(rocks, |rocks| rocks.db.snapshot()))
        }
    }
}

impl Reader for SnapshotReader {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            SnapshotReader::Live(s) => s.get(cf, key),
            SnapshotReader::Frozen(r) => r.get(cf, key),
        }
    }

    fn scan<'a>(
        &'a self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        match self {
            SnapshotReader::Live(s) => s.scan(cf, prefix, start),
            SnapshotReader::Frozen(r) => r.scan(cf, prefix, start),
        }
    }
}

/// A key/value entry as scanned.
pub(crate) type Entry = (Box<[u8]>, Box<[u8]>);

/// Reads, either of the live database or of a snapshot, so that read logic is written once.
pub(crate) trait Reader {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// All entries whose key starts with `prefix`, in key order, from `start` (inclusive) on.
    fn scan<'a>(
        &'a self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a>;
}

/// A follower reads a column family its database lacks (see [`Rocks::open`]) as empty.
impl Reader for Rocks {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(handle) = self.cf_if_present(cf) else {
            return Ok(None);
        };
        self.db.get_cf(handle, key).map_err(|e| self.err(e))
    }

    fn scan<'a>(
        &'a self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        let Some(handle) = self.cf_if_present(cf) else {
            return Box::new(std::iter::empty());
        };
        let (opts, mode_key) = scan_options(prefix, start);
        let iter = self.db.iterator_cf_opt(
            handle,
            opts,
            IteratorMode::From(&mode_key, Direction::Forward),
        );
        Box::new(iter.map(move |item| item.map_err(|e| self.err(e))))
    }
}

impl Reader for RocksSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let rocks = self.borrow_owner();
        self.borrow_dependent()
            .get_cf(rocks.cf(cf), key)
            .map_err(|e| rocks.err(e))
    }

    fn scan<'a>(
        &'a self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
    ) -> Box<dyn Iterator<Item = Result<Entry>> + 'a> {
        let rocks = self.borrow_owner();
        let (opts, mode_key) = scan_options(prefix, start);
        let iter = self.borrow_dependent().iterator_cf_opt(
            rocks.cf(cf),
            opts,
            IteratorMode::From(&mode_key, Direction::Forward),
        );
        Box::new(iter.map(move |item| item.map_err(|e| rocks.err(e))))
    }
}
