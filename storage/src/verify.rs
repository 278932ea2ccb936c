//! A full integrity check of the store, for `realm-db check` and for crash tests.

use std::collections::{BTreeMap, HashSet};

use crate::codec::{self, decode_u64, pair_second};
use crate::db::{Db, META_PASSAGE_COUNT, read_current, read_manifests, read_meta_u64};
use crate::error::Result;
use crate::rocks::{Cf, Reader};
use crate::{GenerationManifest, GenerationState};

/// What [`Db::verify`] found. The store is sound when `problems` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub passages: u64,
    pub generations: usize,
    pub blocks: u64,
    pub rows: u64,
    /// Every violated invariant, as a sentence.
    pub problems: Vec<String>,
}

impl Db {
    /// Reads every record and checks the invariants in `docs/format.md`: checksums, the
    /// passage count, one committed current generation, no leftover building generation
    /// (on a writer), no vector data of unknown generations, blocks `0..blocks` present, and
    /// manifests' row counts equal to their index and tombstones.
    pub fn verify(&self) -> Result<IntegrityReport> {
        let rocks = self.rocks();
        let r: &dyn Reader = &*rocks;
        let mut report = IntegrityReport::default();
        let mut problem = |s: String| report.problems.push(s);
        let mut passages = HashSet::new();
        for entry in r.scan(Cf::Passages, &[], &[]) {
            let (key, value) = entry?;
            match decode_u64(&key, &|| "a passage key".into()) {
                Ok(id) => {
                    if let Err(e) = crate::db::decode_passage(id, &value) {
                        problem(e.to_string());
                    }
                    passages.insert(id);
                }
                Err(e) => problem(e.to_string()),
            }
        }
        let counted = read_meta_u64(r, META_PASSAGE_COUNT)?.unwrap_or(0);
        if counted != passages.len() as u64 {
            problem(format!(
                "the passage count says {counted}, but {} passages are stored",
                passages.len()
            ));
        }
        let manifests: BTreeMap<u64, GenerationManifest> =
            read_manifests(r)?.into_iter().map(|m| (m.id, m)).collect();
        let current = read_current(r)?;
        let committed: Vec<u64> = manifests
            .values()
            .filter(|m| m.state == GenerationState::Committed)
            .map(|m| m.id)
            .collect();
        match current {
            Some(c) if committed != [c] => problem(format!(
                "the current generation is {c}, but the committed generations are {committed:?}"
            )),
            None if !committed.is_empty() => problem(format!(
                "no generation is current, but generations {committed:?} are committed"
            )),
            _ => {}
        }
        for m in manifests.values() {
            if m.state == GenerationState::Building && !self.is_follower() {
                problem(format!("generation {} is still building after open", m.id));
            }
        }
        let mut blocks_seen: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rows_seen: BTreeMap<u64, u64> = BTreeMap::new();
        for entry in r.scan(Cf::Vectors, &[], &[]) {
            let (key, value) = entry?;
            let generation = decode_u64(&key[..8.min(key.len())], &|| "a vector key".into())?;
            let Some(m) = manifests.get(&generation) else {
                problem(format!(
                    "vector data of unknown generation {generation} is left"
                ));
                continue;
            };
            let block = pair_second(&key, &|| "a vector key".into())?;
            let mut values = Vec::new();
            match codec::decode_block(&value, m.spec.dim as usize, generation, block, &mut values) {
                Ok(rows) => {
                    *rows_seen.entry(generation).or_default() += rows.ids.len() as u64;
                    *blocks_seen.entry(generation).or_default() += 1;
                    report.blocks += 1;
                    report.rows += rows.ids.len() as u64;
                }
                Err(e) => problem(e.to_string()),
            }
        }
        let mut index_entries: BTreeMap<u64, u64> = BTreeMap::new();
        for (cf, what) in [(Cf::VectorIndex, "index"), (Cf::Tombstones, "tombstone")] {
            for entry in r.scan(cf, &[], &[]) {
                let (key, _) = entry?;
                let generation = decode_u64(&key[..8.min(key.len())], &|| "an index key".into())?;
                if !manifests.contains_key(&generation) {
                    problem(format!(
                        "{what} entries of unknown generation {generation} are left"
                    ));
                } else if cf == Cf::VectorIndex {
                    *index_entries.entry(generation).or_default() += 1;
                }
            }
        }
        for m in manifests.values() {
            let blocks = blocks_seen.get(&m.id).copied().unwrap_or(0);
            let rows = rows_seen.get(&m.id).copied().unwrap_or(0);
            let index = index_entries.get(&m.id).copied().unwrap_or(0);
            if blocks != m.blocks || rows != m.vector_count {
                problem(format!(
                    "generation {} records {} blocks and {} rows, but {blocks} blocks with {rows} rows are stored",
                    m.id, m.blocks, m.vector_count
                ));
            }
            if index != m.live_vectors() {
                problem(format!(
                    "generation {} records {} live rows, but its index has {index} entries",
                    m.id,
                    m.live_vectors()
                ));
            }
        }
        report.passages = passages.len() as u64;
        report.generations = manifests.len();
        Ok(report)
    }
}
