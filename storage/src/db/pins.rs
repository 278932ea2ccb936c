//! Snapshots' pins on generations, and the garbage collection of retired generations that
//! nothing pins.

use super::{Db, read_current, read_manifest, read_manifests};
use crate::codec::u64_key;
use crate::error::{Error, Result};
use crate::generation;
use crate::rocks::{Cf, SnapshotReader};
use crate::snapshot::Snapshot;
use crate::{GenerationId, GenerationManifest, GenerationState};

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

impl Db {
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
}
