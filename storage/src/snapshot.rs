//! Snapshots: a pinned generation plus a RocksDB snapshot of the passages.

use std::collections::HashSet;

use crate::codec::{self, pair_key, u64_key};
use crate::db::{
    Db, META_PASSAGE_COUNT, decode_passage, read_current, read_meta_u64, read_passage,
};
use crate::error::{Error, Result};
use crate::generation::missing_in;
use crate::lexical::{self, Bm25Params};
use crate::rocks::{Cf, Reader, SnapshotReader};
use crate::{GenerationId, GenerationManifest, Passage, PassageId};

/// A consistent, unchanging view: one pinned generation and the passage set as of the moment
/// the snapshot was taken. Everything read through it stays the same for as long as it
/// lives, whatever is inserted, deleted, published or collected meanwhile. Dropping it
/// releases the pin.
#[derive(Debug)]
pub struct Snapshot {
    db: Db,
    pub(crate) rs: SnapshotReader,
    manifest: Option<GenerationManifest>,
}

/// Vectors read from a generation: row `i` of `values` (`dim` floats) belongs to `ids[i]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VectorMatrix {
    pub generation: GenerationId,
    pub dim: usize,
    pub ids: Vec<PassageId>,
    pub values: Vec<f32>,
    /// Blocks `0..blocks_read` of the generation are reflected.
    pub blocks_read: u64,
    /// Rows of each block read, in block order.
    pub block_sizes: Vec<usize>,
}

impl VectorMatrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// Passages in id order, as of a snapshot.
pub struct PassageIter<'a> {
    inner: Box<dyn Iterator<Item = Result<Passage>> + 'a>,
}

impl std::fmt::Debug for PassageIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassageIter")
    }
}

impl Iterator for PassageIter<'_> {
    type Item = Result<Passage>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl Snapshot {
    pub(crate) fn new(db: Db, rs: SnapshotReader, manifest: Option<GenerationManifest>) -> Self {
        Snapshot { db, rs, manifest }
    }

    /// The database this snapshot reads.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The pinned generation's id; `None` before any generation was committed.
    pub fn generation_id(&self) -> Option<GenerationId> {
        self.manifest.as_ref().map(|m| m.id)
    }

    /// The pinned generation's manifest as of the snapshot.
    pub fn generation(&self) -> Option<&GenerationManifest> {
        self.manifest.as_ref()
    }

    pub(crate) fn pinned(&self) -> Result<&GenerationManifest> {
        self.manifest.as_ref().ok_or(Error::NoCurrentGeneration)
    }

    /// Whether a newer generation has been published since this snapshot was taken.
    pub fn is_stale(&self) -> Result<bool> {
        self.db.catch_up()?;
        Ok(self.db.current_generation()? != self.generation_id())
    }

    /// Moves this snapshot forward to the current generation and passage set.
    pub fn refresh(&mut self) -> Result<()> {
        *self = self.db.snapshot()?;
        Ok(())
    }

    /// A passage by id, if it is visible in this snapshot.
    pub fn get(&self, id: PassageId) -> Result<Option<Passage>> {
        read_passage(&self.rs, id)
    }

    /// A passage by its external id.
    pub fn get_by_external_id(&self, external_id: &str) -> Result<Option<Passage>> {
        match self.rs.get(Cf::ExternalIds, external_id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => {
                let id = codec::decode_u64(&bytes, &|| format!("external id {external_id:?}"))?;
                self.get(id)
            }
        }
    }

    /// Every visible passage, in id order.
    pub fn passages(&self) -> PassageIter<'_> {
        PassageIter {
            inner: Box::new(self.rs.scan(Cf::Passages, &[], &[]).map(|entry| {
                let (key, value) = entry?;
                let id = codec::decode_u64(&key, &|| "a passage key".into())?;
                decode_passage(id, &value)
            })),
        }
    }

    /// The number of visible passages.
    pub fn passage_count(&self) -> Result<u64> {
        Ok(read_meta_u64(&self.rs, META_PASSAGE_COUNT)?.unwrap_or(0))
    }

    /// Visible passages without a vector in the pinned generation (ingested but not yet
    /// embedded). Before any generation exists, every passage is pending.
    pub fn pending(&self) -> Result<Vec<PassageId>> {
        match &self.manifest {
            Some(m) => missing_in(&self.rs, m.id),
            None => self
                .rs
                .scan(Cf::Passages, &[], &[])
                .map(|e| e.and_then(|(k, _)| codec::decode_u64(&k, &|| "a passage key".into())))
                .collect(),
        }
    }

    /// The vectors of every visible passage in the pinned generation, in storage order.
    pub fn vectors(&self) -> Result<VectorMatrix> {
        let mut matrix = self.vector_blocks(0)?;
        let dead = self.deleted_vectors()?;
        if !dead.is_empty() {
            let dim = matrix.dim;
            let mut keep_ids = Vec::with_capacity(matrix.ids.len());
            let mut keep_values = Vec::with_capacity(matrix.values.len());
            for (i, id) in matrix.ids.iter().enumerate() {
                if !dead.contains(id) {
                    keep_ids.push(*id);
                    keep_values.extend_from_slice(&matrix.values[i * dim..(i + 1) * dim]);
                }
            }
            matrix.ids = keep_ids;
            matrix.values = keep_values;
        }
        Ok(matrix)
    }

    /// Raw rows of blocks `from_block..` of the pinned generation, including rows of deleted
    /// passages (see [`Snapshot::deleted_vectors`]). Lets a cache extend a matrix it loaded
    /// from an older snapshot of the same generation instead of reloading it.
    pub fn vector_blocks(&self, from_block: u64) -> Result<VectorMatrix> {
        let m = self.pinned()?;
        let dim = m.spec.dim as usize;
        let mut matrix = VectorMatrix {
            generation: m.id,
            dim,
            ids: Vec::new(),
            values: Vec::with_capacity(
                (m.vector_count as usize).saturating_sub(from_block as usize) * dim,
            ),
            blocks_read: m.blocks,
            block_sizes: Vec::new(),
        };
        let prefix = u64_key(m.id);
        let start = pair_key(m.id, from_block);
        let mut expected = from_block;
        for entry in self.rs.scan(Cf::Vectors, &prefix, &start) {
            let (key, value) = entry?;
            let block =
                codec::pair_second(&key, &|| format!("a vector key of generation {}", m.id))?;
            if block >= m.blocks {
                break;
            }
            if block != expected {
                return Err(Error::Corrupt {
                    what: format!("vector block {expected} of generation {} (missing)", m.id),
                });
            }
            expected += 1;
            let rows = codec::decode_block(&value, dim, m.id, block, &mut matrix.values)?;
            matrix.block_sizes.push(rows.ids.len());
            matrix.ids.extend(rows.ids);
        }
        if expected < m.blocks {
            return Err(Error::Corrupt {
                what: format!("vector block {expected} of generation {} (missing)", m.id),
            });
        }
        Ok(matrix)
    }

    /// Passages deleted since their row was written to the pinned generation.
    pub fn deleted_vectors(&self) -> Result<HashSet<PassageId>> {
        let m = self.pinned()?;
        self.rs
            .scan(Cf::Tombstones, &u64_key(m.id), &[])
            .map(|e| {
                e.and_then(|(k, _)| {
                    codec::pair_second(&k, &|| format!("a tombstone of generation {}", m.id))
                })
            })
            .collect()
    }

    /// One passage's vector in the pinned generation.
    pub fn vector(&self, id: PassageId) -> Result<Option<Vec<f32>>> {
        Ok(self.vectors_of(&[id])?.pop().flatten())
    }

    /// Lexical search: the `k` visible passages with the highest BM25 score for `query`
    /// (Lucene's variant, as `bm25s` `method="lucene"` computes it), best first, ties broken
    /// by ascending passage id. Only passages that contain at least one query term are
    /// returned, so `k = usize::MAX` returns every match. A query with no terms (empty, or
    /// only stop words and single characters) returns an empty list. The query and the
    /// passages (`title + " " + text`) are analyzed by [`lexical::analyze`]; a query term
    /// counts as often as it occurs, and terms no passage contains add nothing.
    ///
    /// The statistics (passage count, average length, document frequencies) are those of this
    /// snapshot, so its scores never change. Fails with [`Error::LexicalIndexUnavailable`] on
    /// a follower of a database no writer of this version has opened yet, or while the index
    /// is being rebuilt.
    pub fn bm25_search(
        &self,
        query: &str,
        k: usize,
        params: Bm25Params,
    ) -> Result<Vec<(PassageId, f32)>> {
        if let Some(reason) = lexical::unavailable_reason(&self.rs)? {
            return Err(Error::LexicalIndexUnavailable {
                path: self.db.path(),
                reason,
            });
        }
        lexical::search(&self.rs, query, k, params)
    }

    /// The current generation id as of this snapshot (equal to the pinned one unless this
    /// snapshot was taken with [`Db::snapshot_at`]).
    pub fn current_generation_at_snapshot(&self) -> Result<Option<GenerationId>> {
        read_current(&self.rs)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(m) = &self.manifest {
            self.db.unpin(m.id);
        }
    }
}
