//! Approximate indexes on the handle: starting an index version of a generation, the writer
//! that fills and publishes it, and reading a generation's rows block by block.

use super::{Db, read_manifest};
use crate::codec::{self, pair_key};
use crate::error::{Error, Result};
use crate::ivf::{self, IndexInfo, IndexState, IvfParams};
use crate::rocks::{Cf, Reader};
use crate::{GenerationId, GenerationState, PassageId, now_ms};

/// Rows of consecutive vector blocks of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct RowBlocks {
    pub generation: GenerationId,
    pub dim: usize,
    /// The first block read.
    pub first_block: u64,
    /// One past the last block read.
    pub end_block: u64,
    /// The passage id of each row (rows of deleted passages included).
    pub ids: Vec<PassageId>,
    /// Row-major f32 values, `ids.len() × dim`.
    pub values: Vec<f32>,
}

impl Db {
    /// Rows of blocks `from_block..from_block + max_blocks` (fewer at the end) of any
    /// generation not yet collected, building ones included, as the database is now.
    /// An index builder samples and encodes a generation with it.
    pub fn read_blocks(
        &self,
        generation: GenerationId,
        from_block: u64,
        max_blocks: u64,
    ) -> Result<RowBlocks> {
        let rocks = self.rocks();
        let manifest = read_manifest(&*rocks, generation)?;
        read_blocks_in(&*rocks, &manifest, from_block, max_blocks)
    }

    /// Starts index version `n + 1` of `generation` (building or committed) with trained
    /// `params`. The index is invisible until [`IndexWriter::publish`]; dropping the writer
    /// before that discards it.
    pub fn begin_index(
        &self,
        generation: GenerationId,
        params: IvfParams,
        note: &str,
    ) -> Result<IndexWriter> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let manifest = read_manifest(&*rocks, generation)?;
        if manifest.state == GenerationState::Retired {
            return Err(Error::NotWritable {
                generation,
                state: manifest.state,
            });
        }
        params.check(manifest.spec.dim)?;
        let version = ivf::read_infos(&*rocks, generation)?
            .last()
            .map_or(1, |i| i.version + 1);
        let info = IndexInfo {
            generation,
            version,
            state: IndexState::Building,
            nlist: params.nlist,
            codes: ivf::Codes::Sq8,
            covered_blocks: 0,
            entries: 0,
            max_error: vec![0.0; params.dim as usize],
            created_ms: now_ms(),
            published_ms: None,
            published_entries: 0,
            note: note.to_string(),
        };
        let mut wb = rocks.batch();
        ivf::stage_params(&mut wb, generation, version, &params);
        ivf::stage_info(&mut wb, &info);
        rocks.write(wb, false)?;
        Ok(IndexWriter {
            db: self.clone(),
            generation,
            version,
            params,
            finished: false,
        })
    }

    /// Every index version of `generation`, building ones included, oldest first.
    pub fn indexes(&self, generation: GenerationId) -> Result<Vec<IndexInfo>> {
        ivf::read_infos(&*self.rocks(), generation)
    }

    /// Crash recovery: an index still building at open was interrupted; remove it.
    pub(super) fn discard_unfinished_indexes(&self) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        let mut any = false;
        for manifest in super::read_manifests(&*rocks)? {
            for info in ivf::read_infos(&*rocks, manifest.id)? {
                if info.state == IndexState::Building {
                    ivf::delete_index(&mut wb, manifest.id, info.version);
                    any = true;
                }
            }
        }
        if any {
            rocks.write(wb, true)?;
        }
        Ok(())
    }
}

/// Fills one index version: [`next_rows`](Self::next_rows) hands out the rows it does not
/// cover yet, [`write`](Self::write) adds their entries, [`publish`](Self::publish) makes it
/// visible. Rows written to the generation after it has caught up get their entries in the
/// same write as the rows, so a published index always covers its generation.
#[derive(Debug)]
pub struct IndexWriter {
    db: Db,
    generation: GenerationId,
    version: u32,
    params: IvfParams,
    finished: bool,
}

impl IndexWriter {
    /// The index version this writer fills.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The generation it indexes.
    pub fn generation(&self) -> GenerationId {
        self.generation
    }

    /// The trained parameters.
    pub fn params(&self) -> &IvfParams {
        &self.params
    }

    /// The header as written so far.
    pub fn info(&self) -> Result<IndexInfo> {
        ivf::read_info(&*self.db.rocks(), self.generation, self.version)
    }

    /// Up to `max_blocks` blocks of rows the index does not cover yet, or `None` when it
    /// covers every row written so far.
    pub fn next_rows(&self, max_blocks: u64) -> Result<Option<RowBlocks>> {
        let rocks = self.db.rocks();
        let info = ivf::read_info(&*rocks, self.generation, self.version)?;
        let manifest = read_manifest(&*rocks, self.generation)?;
        if info.covered_blocks >= manifest.blocks {
            return Ok(None);
        }
        read_blocks_in(&*rocks, &manifest, info.covered_blocks, max_blocks).map(Some)
    }

    /// Adds entries for `rows` (from [`next_rows`](Self::next_rows)), row `i` into list
    /// `lists[i]`. The rows must start where the index's coverage ends.
    pub fn write(&mut self, rows: &RowBlocks, lists: &[u32]) -> Result<()> {
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        let mut info = self.check_open(&*rocks)?;
        let bad = |reason: String| Err(Error::InvalidIndex { reason });
        if rows.generation != self.generation || rows.first_block != info.covered_blocks {
            return bad(format!(
                "rows of generation {} from block {} were given, but index {} of generation {} covers blocks 0..{}",
                rows.generation,
                rows.first_block,
                self.version,
                self.generation,
                info.covered_blocks
            ));
        }
        if lists.len() != rows.ids.len() || rows.values.len() != rows.ids.len() * rows.dim {
            return bad(format!(
                "{} rows came with {} lists and {} values",
                rows.ids.len(),
                lists.len(),
                rows.values.len()
            ));
        }
        if let Some(list) = lists.iter().find(|&&l| l >= self.params.nlist) {
            return bad(format!(
                "list {list} does not exist; the index has {} lists",
                self.params.nlist
            ));
        }
        let mut wb = rocks.batch();
        ivf::stage_entries(
            &mut wb,
            &mut info,
            &self.params,
            &rows.ids,
            &rows.values,
            Some(lists),
        );
        info.covered_blocks = rows.end_block;
        ivf::stage_info(&mut wb, &info);
        rocks.write(wb, false)
    }

    /// Publishes the index: from now on new snapshots of its generation search it, and
    /// snapshots taken before do not see it. Fails while rows are uncovered.
    pub fn publish(&mut self) -> Result<IndexInfo> {
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        let mut info = self.check_open(&*rocks)?;
        let manifest = read_manifest(&*rocks, self.generation)?;
        if info.covered_blocks != manifest.blocks {
            return Err(Error::InvalidIndex {
                reason: format!(
                    "index {} of generation {} covers blocks 0..{} of {}; write the rest first",
                    self.version, self.generation, info.covered_blocks, manifest.blocks
                ),
            });
        }
        info.state = IndexState::Ready;
        info.published_ms = Some(now_ms());
        info.published_entries = info.entries;
        let mut wb = rocks.batch();
        ivf::stage_info(&mut wb, &info);
        rocks.write(wb, true)?;
        self.finished = true;
        Ok(info)
    }

    fn check_open(&self, rocks: &dyn Reader) -> Result<IndexInfo> {
        let info = ivf::read_info(rocks, self.generation, self.version)?;
        if self.finished || info.state != IndexState::Building {
            return Err(Error::InvalidIndex {
                reason: format!(
                    "index {} of generation {} is no longer being built",
                    self.version, self.generation
                ),
            });
        }
        Ok(info)
    }

    fn abort_inner(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        let mut wb = rocks.batch();
        ivf::delete_index(&mut wb, self.generation, self.version);
        rocks.write(wb, false)
    }

    /// Discards the index.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        // An error here leaves a building index, which the next open discards.
        let _ = self.abort_inner();
    }
}

/// Rows of blocks `from..from + max` (capped at the manifest's blocks) of a generation.
fn read_blocks_in(
    r: &dyn Reader,
    manifest: &crate::GenerationManifest,
    from: u64,
    max: u64,
) -> Result<RowBlocks> {
    let dim = manifest.spec.dim as usize;
    let end = from.saturating_add(max.max(1)).min(manifest.blocks);
    let mut rows = RowBlocks {
        generation: manifest.id,
        dim,
        first_block: from,
        end_block: end.max(from),
        ids: Vec::new(),
        values: Vec::new(),
    };
    for block in from..end {
        let bytes = r
            .get(Cf::Vectors, &pair_key(manifest.id, block))?
            .ok_or_else(|| Error::Corrupt {
                what: format!(
                    "vector block {block} of generation {} (missing)",
                    manifest.id
                ),
            })?;
        let decoded = codec::decode_block(&bytes, dim, manifest.id, block, &mut rows.values)?;
        rows.ids.extend(decoded.ids);
    }
    Ok(rows)
}

#[cfg(feature = "testing")]
impl Db {
    /// Test hook, not part of the API: deletes the first entry of index `version` of
    /// `generation` behind the header's back and returns its passage id.
    #[doc(hidden)]
    pub fn testing_remove_index_entry(
        &self,
        generation: GenerationId,
        version: u32,
    ) -> Result<Option<PassageId>> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let prefix = ivf::list_prefix(generation, version, None);
        let first = rocks.scan(Cf::IvfLists, &prefix, &[]).next().transpose()?;
        let Some((key, _)) = first else {
            return Ok(None);
        };
        let mut wb = rocks.batch();
        wb.delete(Cf::IvfLists, &key);
        rocks.write(wb, true)?;
        Ok(Some(ivf::split_entry_key(&key)?.1))
    }

    /// Test hook, not part of the API: records `version` as the database's format version,
    /// as a build of that version would have left it.
    #[doc(hidden)]
    pub fn testing_set_format_version(&self, version: u32) -> Result<()> {
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        wb.put(
            Cf::Meta,
            super::META_FORMAT,
            &crate::codec::u64_key(u64::from(version)),
        );
        rocks.write(wb, true)
    }
}
