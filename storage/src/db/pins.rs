//! Snapshots' pins on generations, and the garbage collection of retired generations that
//! nothing pins.

use std::collections::BTreeMap;

use super::{Db, PinHolders, read_current, read_manifest, read_manifests};
use crate::codec::u64_key;
use crate::error::{Error, Result};
use crate::generation;
use crate::rocks::Cf;
use crate::snapshot::Snapshot;
use crate::{GenerationId, GenerationManifest, GenerationState};

/// What [`Db::gc`] did. Each list is newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Generations deleted.
    pub collected: Vec<GenerationId>,
    /// Retired generations kept because a live snapshot pins them (in any process).
    pub pinned: Vec<GenerationId>,
    /// Retired generations kept by the `keep` policy.
    pub retained: Vec<GenerationId>,
    /// Phrase generations deleted.
    pub phrase_collected: Vec<GenerationId>,
    /// Retired phrase generations kept because a live phrase snapshot pins them.
    pub phrase_pinned: Vec<GenerationId>,
    /// Retired phrase generations kept by the `keep` policy.
    pub phrase_retained: Vec<GenerationId>,
}

impl Db {
    /// Pins the current generation and the passage set as they are now. The pin is
    /// registered where every process's GC sees it (see `pin_files.rs`).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let (rs, manifest) = self.inner.pins.pin(|| {
            let rs = self.view()?;
            let manifest = match read_current(&rs)? {
                Some(id) => Some(read_manifest(&rs, id)?),
                None => None,
            };
            let id = manifest.as_ref().map(|m| m.id);
            Ok(((rs, manifest), id))
        })?;
        Ok(Snapshot::new(self.clone(), rs, manifest))
    }

    /// Pins a retained older generation (time travel), with the passage set as it is now.
    pub fn snapshot_at(&self, generation: GenerationId) -> Result<Snapshot> {
        let (rs, manifest) = self.inner.pins.pin(|| {
            let rs = self.view()?;
            let manifest = read_manifest(&rs, generation)?;
            if manifest.state == GenerationState::Building {
                return Err(Error::NotPinnable {
                    generation,
                    state: manifest.state,
                });
            }
            Ok(((rs, manifest), Some(generation)))
        })?;
        Ok(Snapshot::new(self.clone(), rs, Some(manifest)))
    }

    pub(crate) fn unpin(&self, generation: GenerationId) {
        self.inner.pins.unpin(generation);
    }

    /// Which generations live snapshots pin: this handle's, and those of every other live
    /// handle (other processes included).
    pub fn pins(&self) -> Result<BTreeMap<GenerationId, PinHolders>> {
        self.inner.pins.holders()
    }

    /// Collects retired generations that no live snapshot pins (in this process or any
    /// other), keeping the `keep` most recently created retired ones for time travel, and
    /// reclaims their space. The current generation is never collected. A snapshot that a
    /// killed process held no longer pins anything. Phrase generations are collected by the
    /// same rules, with `keep` counted among retired phrase generations alone.
    pub fn gc(&self, keep: usize) -> Result<GcReport> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let report = self.inner.pins.exclusive(|pins| {
            let mut retired: Vec<GenerationManifest> = read_manifests(&*rocks)?
                .into_iter()
                .filter(|m| m.state == GenerationState::Retired)
                .collect();
            retired.sort_by_key(|m| std::cmp::Reverse(m.id));
            let mut report = GcReport::default();
            let mut wb = rocks.batch();
            for (rank, manifest) in retired.iter().enumerate() {
                if pins.get(&manifest.id).is_some_and(PinHolders::any) {
                    report.pinned.push(manifest.id);
                } else if rank < keep {
                    report.retained.push(manifest.id);
                } else {
                    generation::delete_generation_data(&mut wb, manifest.id);
                    report.collected.push(manifest.id);
                }
            }
            super::phrase_generations::stage_phrase_gc(&*rocks, &mut wb, pins, keep, &mut report)?;
            if !report.collected.is_empty() || !report.phrase_collected.is_empty() {
                rocks.write(wb, true)?;
            }
            Ok(report)
        })?;
        for &id in &report.collected {
            let from = u64_key(id);
            let to = u64_key(id + 1);
            for cf in [Cf::Vectors, Cf::VectorIndex, Cf::Tombstones] {
                rocks.compact(cf, &from, &to);
            }
        }
        for &id in &report.phrase_collected {
            rocks.compact(Cf::PhraseRows, &u64_key(id), &u64_key(id + 1));
        }
        rocks.purge_obsolete_files()?;
        Ok(report)
    }
}
