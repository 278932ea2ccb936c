//! Followers: handles of a database that another handle (usually another process) writes.
//!
//! A follower reads through RocksDB secondary instances. One, the *tip*, serves live reads
//! (the current generation, blobs, figures) and catches up with the writer whenever asked.
//! Snapshots read through *view* instances: a view is caught up when a snapshot takes it and
//! then left alone while any snapshot uses it, so everything read through the snapshot stays
//! as it was (a secondary instance has no RocksDB snapshots of its own, and its table files
//! stay open, so the writer's compactions cannot pull them away). A new snapshot takes a view
//! that no snapshot uses, catching it up (cheap: it replays only what is new), and opens
//! another instance only when every view is in use.

use std::sync::Arc;

use super::Db;
use crate::error::Result;
use crate::rocks::{OpenMode, Rocks, SnapshotReader};

/// Idle views kept open for the next snapshots; more are closed.
const IDLE_VIEWS: usize = 2;

impl Db {
    /// A follower catches up with everything the writer has acknowledged so far (snapshots
    /// taken before keep their view); a writer does nothing.
    pub fn catch_up(&self) -> Result<()> {
        if !self.is_follower() {
            return Ok(());
        }
        let tip = self.rocks();
        if !tip.catch_up()? {
            let fresh = Rocks::open(&self.path(), OpenMode::Follower)?;
            *self.inner.rocks.write() = Arc::new(fresh);
        }
        Ok(())
    }

    /// A consistent read view as of now: the writer's RocksDB snapshot, or a follower's
    /// view instance, caught up.
    pub(crate) fn view(&self) -> Result<SnapshotReader> {
        if !self.is_follower() {
            return Ok(SnapshotReader::take(self.rocks()));
        }
        let mut views = self.inner.views.lock();
        // Under this lock, only `views` can hand out clones of a view: one with no other
        // holder is used by no snapshot.
        let idle = views.iter().position(|v| Arc::strong_count(v) == 1);
        let chosen = match idle {
            Some(i) if views[i].catch_up()? => i,
            Some(i) => {
                views[i] = Arc::new(Rocks::open(&self.path(), OpenMode::Follower)?);
                i
            }
            None => {
                views.push(Arc::new(Rocks::open(&self.path(), OpenMode::Follower)?));
                views.len() - 1
            }
        };
        let view = views[chosen].clone();
        let mut spare = 0;
        views.retain(|v| {
            let idle = Arc::strong_count(v) == 1;
            spare += usize::from(idle);
            !idle || spare <= IDLE_VIEWS
        });
        Ok(SnapshotReader::take(view))
    }

    /// How many view instances a follower has open (for tests of their reuse).
    #[doc(hidden)]
    #[cfg(feature = "testing")]
    pub fn testing_follower_views(&self) -> usize {
        self.inner.views.lock().len()
    }
}
