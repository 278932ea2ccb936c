//! What a snapshot reads of approximate indexes and of single rows: the index version it
//! sees, its lists, and the stored rows of chosen passages (for exact re-scoring).

use std::collections::BTreeMap;

use crate::codec::{self, pair_key};
use crate::error::{Error, Result};
use crate::ivf::{self, IndexInfo, IndexState, IvfParams};
use crate::rocks::{Cf, Reader};
use crate::snapshot::Snapshot;
use crate::{GenerationId, PassageId};

/// One inverted list as a snapshot sees it: passage ids and their codes, `dim` bytes each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IvfList {
    pub ids: Vec<PassageId>,
    pub codes: Vec<u8>,
}

impl Snapshot {
    /// The newest published index of the pinned generation as of this snapshot, if any.
    /// An index published after the snapshot was taken is not seen.
    pub fn index(&self) -> Result<Option<IndexInfo>> {
        let Some(manifest) = self.generation() else {
            return Ok(None);
        };
        Ok(ivf::read_infos(&self.rs, manifest.id)?
            .into_iter()
            .rfind(|i| i.state == IndexState::Ready))
    }

    /// Every published index version of the pinned generation this snapshot sees.
    pub fn indexes(&self) -> Result<Vec<IndexInfo>> {
        let Some(manifest) = self.generation() else {
            return Ok(Vec::new());
        };
        Ok(ivf::read_infos(&self.rs, manifest.id)?
            .into_iter()
            .filter(|i| i.state == IndexState::Ready)
            .collect())
    }

    fn ready_index(&self, version: u32) -> Result<(GenerationId, IndexInfo)> {
        let generation = self.pinned()?.id;
        let info = ivf::read_info(&self.rs, generation, version)?;
        if info.state != IndexState::Ready {
            return Err(Error::UnknownIndex {
                generation,
                version,
            });
        }
        Ok((generation, info))
    }

    /// The centroids and quantizer of index `version` of the pinned generation.
    pub fn index_params(&self, version: u32) -> Result<IvfParams> {
        let (generation, _) = self.ready_index(version)?;
        ivf::read_params(&self.rs, generation, version)
    }

    /// One list of index `version`, entries in passage id order (rows of passages deleted
    /// since included; see [`Snapshot::deleted_vectors`]).
    pub fn index_list(&self, version: u32, list: u32) -> Result<IvfList> {
        let (generation, _) = self.ready_index(version)?;
        let dim = self.pinned()?.spec.dim as usize;
        let mut out = IvfList::default();
        ivf::scan_entries(
            &self.rs,
            generation,
            version,
            Some(list),
            dim,
            |_, id, code| {
                out.ids.push(id);
                out.codes.extend_from_slice(code);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Every list of index `version`, in list order: one sequential pass over its entries.
    pub fn index_lists(&self, version: u32) -> Result<Vec<IvfList>> {
        let (generation, info) = self.ready_index(version)?;
        let dim = self.pinned()?.spec.dim as usize;
        let mut lists = vec![IvfList::default(); info.nlist as usize];
        ivf::scan_entries(
            &self.rs,
            generation,
            version,
            None,
            dim,
            |list, id, code| {
                let slot = lists.get_mut(list as usize).ok_or_else(|| Error::Corrupt {
                what: format!(
                    "the IVF entry of passage {id} in list {list} of index {version} of generation {generation} (only {} lists)",
                    info.nlist
                ),
            })?;
                slot.ids.push(id);
                slot.codes.extend_from_slice(code);
                Ok(())
            },
        )?;
        Ok(lists)
    }

    /// The number of entries in each list of index `version` (keys only are compared).
    pub fn index_list_sizes(&self, version: u32) -> Result<Vec<u64>> {
        let (generation, info) = self.ready_index(version)?;
        let mut sizes = vec![0u64; info.nlist as usize];
        let prefix = ivf::list_prefix(generation, version, None);
        for entry in self.rs.scan(Cf::IvfLists, &prefix, &[]) {
            let (key, _) = entry?;
            let (list, _) = ivf::split_entry_key(&key)?;
            if let Some(n) = sizes.get_mut(list as usize) {
                *n += 1;
            }
        }
        Ok(sizes)
    }

    /// The stored rows of `ids` in the pinned generation, in that order (`None` for an id
    /// without a row the snapshot sees). Each vector block is read once, however many of
    /// the ids it holds: this reads only the blocks of the requested rows.
    pub fn vectors_of(&self, ids: &[PassageId]) -> Result<Vec<Option<Vec<f32>>>> {
        let m = self.pinned()?;
        let dim = m.spec.dim as usize;
        let mut by_block: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            if let Some(bytes) = self.rs.get(Cf::VectorIndex, &pair_key(m.id, id))? {
                let block =
                    codec::decode_u64(&bytes, &|| format!("the index entry of passage {id}"))?;
                by_block.entry(block).or_default().push(i);
            }
        }
        let mut out = vec![None; ids.len()];
        let mut values = Vec::new();
        for (block, wanted) in by_block {
            let bytes = self
                .rs
                .get(Cf::Vectors, &pair_key(m.id, block))?
                .ok_or_else(|| Error::Corrupt {
                    what: format!("vector block {block} of generation {} (missing)", m.id),
                })?;
            values.clear();
            let rows = codec::decode_block(&bytes, dim, m.id, block, &mut values)?;
            for i in wanted {
                if let Some(r) = rows.ids.iter().position(|&x| x == ids[i]) {
                    out[i] = Some(values[r * dim..(r + 1) * dim].to_vec());
                }
            }
        }
        Ok(out)
    }
}
