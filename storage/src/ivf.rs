//! Approximate (IVF) indexes of generations: their records, the 8-bit scalar quantizer, the
//! assignment of a row to its list, and the staging of list entries into a write batch.
//!
//! An index version belongs to one generation. It holds coarse centroids and one inverted
//! list per centroid; a list entry is a passage id and its row's SQ8 code. The index covers
//! the rows of blocks `0..covered_blocks` of its generation; once it is caught up, every row
//! written to the generation gets its entry in the same write batch (see `docs/format.md`).

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::{Error, Result};
use crate::rocks::{Batch, Cf, Reader};
use crate::{GenerationId, GenerationManifest, PassageId};

/// The largest number of lists an index may have.
pub const MAX_NLIST: u32 = 1 << 20;

const RECORD_HEADER: u8 = 0;
const RECORD_PARAMS: u8 = 1;

/// How list entries encode their rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codes {
    /// One byte per dimension: `value ≈ min[d] + step[d] · code`.
    Sq8,
}

impl std::fmt::Display for Codes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codes::Sq8 => "sq8",
        })
    }
}

/// An 8-bit scalar quantizer with a range per dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sq8 {
    /// The value of code 0, per dimension.
    pub min: Vec<f32>,
    /// The value of one code step, per dimension (positive).
    pub step: Vec<f32>,
}

impl Sq8 {
    /// The quantizer whose per-dimension range is that of `rows` (row-major, `dim` each).
    pub fn fit(rows: &[f32], dim: usize) -> Self {
        let mut min = vec![f32::INFINITY; dim];
        let mut max = vec![f32::NEG_INFINITY; dim];
        for row in rows.chunks_exact(dim.max(1)) {
            for (d, &v) in row.iter().enumerate() {
                min[d] = min[d].min(v);
                max[d] = max[d].max(v);
            }
        }
        let step = min
            .iter_mut()
            .zip(&max)
            .map(|(lo, &hi)| {
                if !lo.is_finite() {
                    *lo = 0.0;
                }
                let range = if hi.is_finite() { hi - *lo } else { 0.0 };
                if range > 0.0 {
                    range / 255.0
                } else {
                    f32::MIN_POSITIVE.max(lo.abs() * 1e-7).max(1e-12)
                }
            })
            .collect();
        Sq8 { min, step }
    }

    /// Appends the code of `row` to `out`; values outside the range are clamped.
    pub fn encode(&self, row: &[f32], out: &mut Vec<u8>) {
        out.extend(row.iter().enumerate().map(|(d, &v)| {
            let c = ((v - self.min[d]) / self.step[d]).round();
            c.clamp(0.0, 255.0) as u8
        }));
    }

    /// The absolute error of coding `row`, per dimension: at most half a step inside the
    /// range, plus the distance to the range outside it.
    pub fn error(&self, row: &[f32], out: &mut [f32]) {
        for (d, &v) in row.iter().enumerate() {
            let hi = self.min[d] + 255.0 * self.step[d];
            let outside = (self.min[d] - v).max(v - hi).max(0.0);
            out[d] = out[d].max(0.5 * self.step[d] + outside);
        }
    }

    /// The row a code stands for.
    pub fn decode(&self, code: &[u8]) -> Vec<f32> {
        code.iter()
            .enumerate()
            .map(|(d, &c)| self.min[d] + self.step[d] * f32::from(c))
            .collect()
    }
}

/// An index's trained, immutable part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IvfParams {
    pub dim: u32,
    pub nlist: u32,
    /// `[nlist × dim]`, row-major. A row belongs to the list whose centroid has the largest
    /// inner product with it (the lowest list number on a tie).
    pub centroids: Vec<f32>,
    pub quantizer: Sq8,
}

impl IvfParams {
    /// Checks the shapes and values against a generation of dimension `dim`.
    pub fn check(&self, dim: u32) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidIndex { reason });
        if self.dim != dim {
            return bad(format!(
                "the index is {}-dimensional, but the generation stores {dim}-dimensional vectors",
                self.dim
            ));
        }
        if self.nlist == 0 || self.nlist > MAX_NLIST {
            return bad(format!(
                "the number of lists must be between 1 and {MAX_NLIST}, not {}",
                self.nlist
            ));
        }
        let d = dim as usize;
        if self.centroids.len() != self.nlist as usize * d {
            return bad(format!(
                "{} centroid values were given for {} lists of dimension {d}",
                self.centroids.len(),
                self.nlist
            ));
        }
        if self.quantizer.min.len() != d || self.quantizer.step.len() != d {
            return bad(format!("the quantizer's ranges are not {d}-dimensional"));
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !finite(&self.centroids) || !finite(&self.quantizer.min) {
            return bad("a centroid or quantizer value is not finite".into());
        }
        if !self
            .quantizer
            .step
            .iter()
            .all(|s| s.is_finite() && *s > 0.0)
        {
            return bad("a quantizer step is not a positive finite number".into());
        }
        Ok(())
    }

    /// The list of `row`: the centroid with the largest inner product, the lowest on a tie.
    pub fn nearest_list(&self, row: &[f32]) -> u32 {
        let dim = self.dim as usize;
        let mut best = (f32::NEG_INFINITY, 0u32);
        for (list, c) in self.centroids.chunks_exact(dim).enumerate() {
            let s: f32 = c.iter().zip(row).map(|(a, b)| a * b).sum();
            if s > best.0 {
                best = (s, list as u32);
            }
        }
        best.1
    }
}

/// Whether an index version may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IndexState {
    /// Being written: invisible to searches; discarded on open after a crash.
    Building,
    /// Published: searches of its generation may use it.
    Ready,
}

/// An index version's header, rewritten whenever entries are added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexInfo {
    pub generation: GenerationId,
    /// 1, 2, … within the generation; searches use the newest ready one.
    pub version: u32,
    pub state: IndexState,
    pub nlist: u32,
    pub codes: Codes,
    /// Blocks `0..covered_blocks` of the generation have their entries in the lists.
    pub covered_blocks: u64,
    /// List entries written (rows of deleted passages included).
    pub entries: u64,
    /// The largest coding error per dimension over every entry (see [`Sq8::error`]).
    pub max_error: Vec<f32>,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub published_ms: Option<u64>,
    /// Entries when it was published: how far ingestion has moved it since.
    pub published_entries: u64,
    pub note: String,
}

impl IndexInfo {
    /// Whether the index has drifted from what it was trained on enough that rebuilding it
    /// would likely pay: its lists hold 50% more rows than at publication, or their sizes
    /// are uneven (`imbalance`, FAISS's factor `nlist · Σ nᵢ² / (Σ nᵢ)²`, above 3).
    pub fn rebuild_suggested(&self, imbalance: f64) -> bool {
        self.entries * 2 > self.published_entries * 3 || imbalance > 3.0
    }
}

/// FAISS's imbalance factor of list sizes: 1 when all lists are equal, `nlist` when one
/// list holds everything.
pub fn imbalance(sizes: &[u64]) -> f64 {
    let total: f64 = sizes.iter().map(|&n| n as f64).sum();
    if total == 0.0 {
        return 1.0;
    }
    let squares: f64 = sizes.iter().map(|&n| (n as f64) * (n as f64)).sum();
    sizes.len() as f64 * squares / (total * total)
}

/// Key of an index record: generation, version, record kind.
pub(crate) fn record_key(generation: GenerationId, version: u32, kind: u8) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    key[8..12].copy_from_slice(&version.to_be_bytes());
    key[12] = kind;
    key
}

/// Key prefix of an index version's entries, or of one of its lists.
pub(crate) fn list_prefix(generation: GenerationId, version: u32, list: Option<u32>) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(&version.to_be_bytes());
    if let Some(list) = list {
        key.extend_from_slice(&list.to_be_bytes());
    }
    key
}

fn entry_key(generation: GenerationId, version: u32, list: u32, id: PassageId) -> Vec<u8> {
    let mut key = list_prefix(generation, version, Some(list));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Splits an entry key into list and passage id.
pub(crate) fn split_entry_key(key: &[u8]) -> Result<(u32, PassageId)> {
    if key.len() != 24 {
        return Err(Error::Corrupt {
            what: format!("an IVF list key of {} bytes", key.len()),
        });
    }
    let list = u32::from_be_bytes(key[12..16].try_into().expect("4 bytes"));
    let id = u64::from_be_bytes(key[16..24].try_into().expect("8 bytes"));
    Ok((list, id))
}

/// Every index version of `generation` (any state), oldest first.
pub(crate) fn read_infos(r: &dyn Reader, generation: GenerationId) -> Result<Vec<IndexInfo>> {
    let mut out = Vec::new();
    for entry in r.scan(Cf::IvfIndexes, &generation.to_be_bytes(), &[]) {
        let (key, value) = entry?;
        if key.len() == 13 && key[12] == RECORD_HEADER {
            out.push(decode(&value, &|| {
                format!("the header of an IVF index of generation {generation}")
            })?);
        }
    }
    Ok(out)
}

/// The index version's header.
pub(crate) fn read_info(
    r: &dyn Reader,
    generation: GenerationId,
    version: u32,
) -> Result<IndexInfo> {
    match r.get(
        Cf::IvfIndexes,
        &record_key(generation, version, RECORD_HEADER),
    )? {
        Some(bytes) => decode(&bytes, &|| {
            format!("the header of IVF index {version} of generation {generation}")
        }),
        None => Err(Error::UnknownIndex {
            generation,
            version,
        }),
    }
}

/// The index version's centroids and quantizer.
pub(crate) fn read_params(
    r: &dyn Reader,
    generation: GenerationId,
    version: u32,
) -> Result<IvfParams> {
    match r.get(
        Cf::IvfIndexes,
        &record_key(generation, version, RECORD_PARAMS),
    )? {
        Some(bytes) => decode(&bytes, &|| {
            format!("the centroids of IVF index {version} of generation {generation}")
        }),
        None => Err(Error::Corrupt {
            what: format!(
                "the centroids of IVF index {version} of generation {generation} (missing)"
            ),
        }),
    }
}

pub(crate) fn stage_info(wb: &mut Batch<'_>, info: &IndexInfo) {
    wb.put(
        Cf::IvfIndexes,
        &record_key(info.generation, info.version, RECORD_HEADER),
        &encode(info),
    );
}

pub(crate) fn stage_params(
    wb: &mut Batch<'_>,
    generation: GenerationId,
    version: u32,
    p: &IvfParams,
) {
    wb.put(
        Cf::IvfIndexes,
        &record_key(generation, version, RECORD_PARAMS),
        &encode(p),
    );
}

/// Adds list entries for rows (`ids`, `values` row-major) to `wb`, updating `info`. `lists`
/// names each row's list, or is `None` to assign them here.
pub(crate) fn stage_entries(
    wb: &mut Batch<'_>,
    info: &mut IndexInfo,
    params: &IvfParams,
    ids: &[PassageId],
    values: &[f32],
    lists: Option<&[u32]>,
) {
    let dim = params.dim as usize;
    let mut code = Vec::with_capacity(dim);
    if info.max_error.len() != dim {
        info.max_error = vec![0.0; dim];
    }
    for (i, (&id, row)) in ids.iter().zip(values.chunks_exact(dim)).enumerate() {
        let list = match lists {
            Some(lists) => lists[i],
            None => params.nearest_list(row),
        };
        code.clear();
        params.quantizer.encode(row, &mut code);
        params.quantizer.error(row, &mut info.max_error);
        wb.put(
            Cf::IvfLists,
            &entry_key(info.generation, info.version, list, id),
            &code,
        );
        info.entries += 1;
    }
}

/// Gives freshly staged rows (the blocks from `first_block` on, just added to `manifest`)
/// their entries in every index of the generation that was caught up with its rows, in the
/// same batch.
pub(crate) fn stage_new_rows(
    r: &dyn Reader,
    wb: &mut Batch<'_>,
    manifest: &GenerationManifest,
    first_block: u64,
    ids: &[PassageId],
    values: &[f32],
) -> Result<()> {
    for mut info in read_infos(r, manifest.id)? {
        if info.covered_blocks != first_block {
            // Not caught up: its writer adds these rows' entries itself.
            continue;
        }
        let params = read_params(r, manifest.id, info.version)?;
        stage_entries(wb, &mut info, &params, ids, values, None);
        info.covered_blocks = manifest.blocks;
        stage_info(wb, &info);
    }
    Ok(())
}

/// Deletes every index record and entry of `generation`.
pub(crate) fn delete_generation_indexes(wb: &mut Batch<'_>, generation: GenerationId) {
    let prefix = generation.to_be_bytes();
    wb.delete_prefix(Cf::IvfIndexes, &prefix);
    wb.delete_prefix(Cf::IvfLists, &prefix);
}

/// Deletes one index version's records and entries.
pub(crate) fn delete_index(wb: &mut Batch<'_>, generation: GenerationId, version: u32) {
    let prefix = list_prefix(generation, version, None);
    wb.delete_prefix(Cf::IvfIndexes, &prefix);
    wb.delete_prefix(Cf::IvfLists, &prefix);
}

/// Every entry of index `version` of `generation` (of one list, when `list` is given), in key
/// order, as `r` sees it: `f` gets each entry's list, passage id and `dim`-byte code. A key or
/// code of the wrong size is [`Error::Corrupt`].
pub(crate) fn scan_entries(
    r: &dyn Reader,
    generation: GenerationId,
    version: u32,
    list: Option<u32>,
    dim: usize,
    mut f: impl FnMut(u32, PassageId, &[u8]) -> Result<()>,
) -> Result<()> {
    for entry in r.scan(Cf::IvfLists, &list_prefix(generation, version, list), &[]) {
        let (key, value) = entry?;
        let (list, id) = split_entry_key(&key)?;
        if value.len() != dim {
            return Err(Error::Corrupt {
                what: format!(
                    "the IVF entry of passage {id} in list {list} of index {version} of generation {generation}"
                ),
            });
        }
        f(list, id, &value)?;
    }
    Ok(())
}

/// Checks an entry value's length (for `verify`).
pub(crate) fn entry_problem(key: &[u8], value: &[u8], dim: usize) -> Option<String> {
    match split_entry_key(key) {
        Err(e) => Some(e.to_string()),
        Ok((list, id)) if value.len() != dim => Some(format!(
            "the IVF entry of passage {id} in list {list} holds {} code bytes, not {dim}",
            value.len()
        )),
        Ok(_) => None,
    }
}
