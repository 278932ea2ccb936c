//! Searching a pinned generation.
//!
//! A [`SearchSnapshot`] pins a storage snapshot and searches it: tokenize → query encoder →
//! exact inner-product top-k over the pinned generation's device matrix → [`Hit`]s with
//! scores and p(z|x). Small batches on a CPU matrix held as host rows are scanned directly;
//! everything else is scored by chunked GEMM on the matrix's device. Both paths rank the same
//! way (score descending, then passage id ascending).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use realm_storage::{GenerationId, Snapshot};
use tch::{Device, Kind, Tensor};

use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::ivf_search::{IvfScan, RowSource, SearchOptions, default_nprobe};
use crate::matrix::{DeviceMatrix, HostRows, ReadOnlyTensor};
use crate::retriever::Retriever;
use crate::topk::{StreamScan, softmax};
use realm_storage::ivf::IndexInfo;

/// One retrieved passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// 1-based rank.
    pub rank: usize,
    /// The passage's id in the store.
    pub passage_id: u64,
    /// The passage's title.
    pub title: String,
    /// The passage's text.
    pub text: String,
    /// The ranking score: the inner product of query and passage vectors for a dense
    /// search; see [`crate::SearchMode`] for the other modes.
    pub score: f32,
    /// p(z|x) over the returned candidates: the softmax of the scores for dense and BM25
    /// searches, the fused scores normalized to sum to 1 for hybrid ones.
    pub prob: f32,
    /// The generation that was searched.
    pub generation: GenerationId,
}

/// The pinned generation's matrix as one snapshot sees it.
pub(crate) struct SearchState {
    pub(crate) matrix: Arc<DeviceMatrix>,
    /// Rows visible to the snapshot.
    pub(crate) rows: usize,
    /// Rows of passages deleted before the snapshot, excluded from ranking.
    pub(crate) dead: Option<ReadOnlyTensor>,
    pub(crate) dead_host: Option<Vec<bool>>,
    /// Rows visible and not deleted.
    pub(crate) live: usize,
}

impl SearchState {
    /// The row of passage `id`'s vector if the snapshot sees one (not deleted, not pending).
    pub(crate) fn live_row(&self, id: u64) -> Option<usize> {
        self.matrix
            .row_of(id)
            .filter(|&r| r < self.rows && !self.dead_host.as_ref().is_some_and(|dead| dead[r]))
    }
}

/// A pinned, searchable snapshot: every search through it uses the same generation and
/// passage set.
pub struct SearchSnapshot {
    retriever: Retriever,
    snapshot: Snapshot,
    state: Mutex<Option<Arc<SearchState>>>,
    /// Passages deleted since their rows were written, as an index search filters them.
    deleted: Mutex<Option<Arc<HashSet<u64>>>>,
    /// The pinned generation's index as the snapshot sees it (read once: it cannot change).
    index: Mutex<Option<Option<IndexInfo>>>,
    options: Mutex<SearchOptions>,
}

impl std::fmt::Debug for SearchSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchSnapshot")
            .field("generation", &self.snapshot.generation_id())
            .finish()
    }
}

impl SearchSnapshot {
    /// Searches `snapshot` with `retriever`'s encoders and matrices.
    pub(crate) fn new(retriever: Retriever, snapshot: Snapshot) -> Self {
        SearchSnapshot {
            retriever,
            snapshot,
            state: Mutex::new(None),
            deleted: Mutex::new(None),
            index: Mutex::new(None),
            options: Mutex::new(SearchOptions::default()),
        }
    }

    /// The storage snapshot (passages, pending, vectors).
    pub fn storage(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The pinned generation.
    pub fn generation_id(&self) -> Option<GenerationId> {
        self.snapshot.generation_id()
    }

    /// The retriever this snapshot searches with.
    pub(crate) fn retriever(&self) -> &Retriever {
        &self.retriever
    }

    /// Moves forward to the current generation.
    pub fn refresh(&mut self) -> Result<()> {
        self.snapshot.refresh()?;
        *self.state.lock() = None;
        *self.deleted.lock() = None;
        *self.index.lock() = None;
        Ok(())
    }

    /// The query encoder used by [`SearchSnapshot::search`].
    pub fn query_encoder(&self) -> Result<Arc<Encoder>> {
        let manifest = self
            .snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        self.retriever.query_encoder(manifest)
    }

    pub(crate) fn state(&self) -> Result<Arc<SearchState>> {
        let mut guard = self.state.lock();
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let matrix = self.retriever.matrix_for(&self.snapshot)?;
        let manifest = self
            .snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        let rows = matrix.rows_for(manifest.blocks);
        let deleted = self.snapshot.deleted_vectors()?;
        let (dead, dead_host) = if deleted.is_empty() {
            (None, None)
        } else {
            let mask: Vec<bool> = matrix.ids[..rows]
                .iter()
                .map(|id| deleted.contains(id))
                .collect();
            let tensor = Tensor::from_slice(&mask).to_device(matrix.tensor.device());
            (Some(ReadOnlyTensor(tensor)), Some(mask))
        };
        let live = rows
            - dead_host
                .as_ref()
                .map_or(0, |d| d.iter().filter(|&&x| x).count());
        let state = Arc::new(SearchState {
            matrix,
            rows,
            dead,
            dead_host,
            live,
        });
        *guard = Some(state.clone());
        Ok(state)
    }

    /// Top-k passages for one query text.
    pub fn search(&self, text: &str, k: usize) -> Result<Vec<Hit>> {
        Ok(self.search_batch(&[text], k)?.pop().unwrap_or_default())
    }

    /// Top-k passages for each query text.
    pub fn search_batch(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encoder = self.query_encoder()?;
        let queries = tch::no_grad(|| encoder.encode(texts))?;
        self.search_vectors(&queries, k)
    }

    /// Top-k passages for query vectors `[B, D]`.
    pub fn search_vectors(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<Hit>>> {
        self.top_k(queries, k)?
            .into_iter()
            .map(|row| {
                let probs = softmax(&row.iter().map(|(_, s)| *s).collect::<Vec<_>>());
                self.hits(row, probs)
            })
            .collect()
    }

    /// Hits for ranked `(passage id, score)` pairs with their probabilities, passages read
    /// through the snapshot.
    pub(crate) fn hits(&self, ranked: Vec<(u64, f32)>, probs: Vec<f32>) -> Result<Vec<Hit>> {
        let generation = self.generation_id().unwrap_or_default();
        let mut hits = Vec::with_capacity(ranked.len());
        for (rank, ((id, score), prob)) in ranked.into_iter().zip(probs).enumerate() {
            let passage = self
                .snapshot
                .get(id)?
                .ok_or(Error::Storage(realm_storage::Error::UnknownPassage(id)))?;
            hits.push(Hit {
                rank: rank + 1,
                passage_id: id,
                title: passage.title,
                text: passage.text,
                score,
                prob,
                generation,
            });
        }
        Ok(hits)
    }

    /// The pinned generation's stored vectors of `ids`, in that order, as one f32
    /// `[ids.len(), dim]` tensor on the retriever's device (no gradient). Errors if an id has
    /// no row in the generation as this snapshot sees it: unknown, pending, or deleted, like
    /// the rows [`Snapshot::vectors`] leaves out. With [`crate::Compute::F16`] the rows are
    /// the f16 values the searches score, widened to f32.
    pub fn vectors_of(&self, ids: &[u64]) -> Result<Tensor> {
        let state = self.state()?;
        let rows = ids
            .iter()
            .map(|&id| {
                state.live_row(id).map(|r| r as i64).ok_or_else(|| Error::InvalidInput {
                    reason: format!(
                        "passage {id} has no vector in generation {} as this snapshot sees it (it is unknown, pending or deleted)",
                        state.matrix.generation
                    ),
                })
            })
            .collect::<Result<Vec<i64>>>()?;
        let matrix = &state.matrix.tensor;
        tch::no_grad(|| -> Result<Tensor> {
            let index = Tensor::f_from_slice(&rows)?.f_to_device(matrix.device())?;
            // `index_select` copies, so the result never aliases the matrix's host rows.
            Ok(matrix.f_index_select(0, &index)?.f_to_kind(Kind::Float)?)
        })
    }

    /// MIPS ranked as the snapshot's [`SearchOptions`] say: for each query row, the `k` best
    /// `(passage id, score)` pairs, by score descending and then passage id ascending (a
    /// deterministic order for ties). `queries` is `[B, dim]` on any device and of any float
    /// kind; this is the top-k to call with query vectors computed outside the retriever (a
    /// trainer's query tower, for one).
    pub fn top_k(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        let options = self.options.lock().clone();
        self.top_k_with(queries, k, &options)
    }

    /// How this snapshot's searches rank (exactly, or through an index), for every search
    /// made through it: dense, hybrid, and the top-k of trainers and evaluations.
    pub fn set_search_options(&self, options: SearchOptions) {
        *self.options.lock() = options;
    }

    /// The options its searches use.
    pub fn search_options(&self) -> SearchOptions {
        self.options.lock().clone()
    }

    /// [`SearchSnapshot::top_k`] ranked as `options` say: exactly, or through the pinned
    /// generation's approximate index when it has one (see [`SearchOptions`]).
    pub fn top_k_with(
        &self,
        queries: &Tensor,
        k: usize,
        options: &SearchOptions,
    ) -> Result<Vec<Vec<(u64, f32)>>> {
        let manifest = self
            .snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        let dim = manifest.spec.dim as i64;
        let qsize = queries.size();
        if qsize.len() != 2 || qsize[1] != dim {
            return Err(Error::InvalidInput {
                reason: format!(
                    "query vectors have shape {qsize:?}, but generation {} stores {dim}-dimensional vectors",
                    manifest.id
                ),
            });
        }
        let index = if options.exact {
            None
        } else {
            self.index_info()?
        };
        let fits = self.matrix_fits();
        let on_gpu = fits && self.retriever.options().encoder.device.is_cuda();
        match index {
            Some(info) if options.uses_index(true, manifest.live_vectors(), on_gpu) => {
                self.top_k_index(queries, k, options, &info, fits)
            }
            _ if fits => self.top_k_exact(queries, k),
            _ => {
                let deleted = self.deleted_ids()?;
                StreamScan {
                    snapshot: &self.snapshot,
                    deleted: &deleted,
                }
                .top_k(&host_queries(queries)?, k)
            }
        }
    }

    /// Whether the pinned generation's matrix fits the retriever's memory budget.
    fn matrix_fits(&self) -> bool {
        let Some(m) = self.snapshot.generation() else {
            return true;
        };
        let bytes = match self.retriever.options().compute {
            crate::Compute::F32 => 4,
            crate::Compute::F16 => 2,
        };
        (m.vector_count as usize).saturating_mul(m.spec.dim as usize * bytes)
            <= self.retriever.options().memory_budget_bytes
    }

    /// The index searches may use, read through the snapshot on first use.
    fn index_info(&self) -> Result<Option<IndexInfo>> {
        let mut guard = self.index.lock();
        if let Some(info) = guard.as_ref() {
            return Ok(info.clone());
        }
        let info = self.snapshot.index()?;
        *guard = Some(info.clone());
        Ok(info)
    }

    fn deleted_ids(&self) -> Result<Arc<HashSet<u64>>> {
        let mut guard = self.deleted.lock();
        if let Some(d) = guard.as_ref() {
            return Ok(d.clone());
        }
        let d = Arc::new(self.snapshot.deleted_vectors()?);
        *guard = Some(d.clone());
        Ok(d)
    }

    fn top_k_index(
        &self,
        queries: &Tensor,
        k: usize,
        options: &SearchOptions,
        info: &IndexInfo,
        matrix_fits: bool,
    ) -> Result<Vec<Vec<(u64, f32)>>> {
        let index = self.retriever.loaded_index(&self.snapshot, info)?;
        let deleted = self.deleted_ids()?;
        let scan = IvfScan {
            index: &index,
            snapshot: &self.snapshot,
            deleted: &deleted,
            nprobe: options
                .nprobe
                .unwrap_or_else(|| default_nprobe(index.nlist)),
            rescore: options.rescore,
            max_rescore: options.max_rescore,
        };
        let q = host_queries(queries)?;
        if matrix_fits && options.rescore {
            let state = self.state()?;
            scan.top_k(&q, k, &MatrixRows(&state))
        } else {
            scan.top_k(&q, k, &StoreRows(&self.snapshot))
        }
    }

    /// Device memory of the pinned generation's matrix, once loaded.
    pub fn matrix_bytes(&self) -> Result<usize> {
        Ok(self.state()?.matrix.bytes())
    }

    /// Passage ids deleted since their rows were written (excluded from results).
    pub fn deleted(&self) -> Result<HashSet<u64>> {
        Ok(self.snapshot.deleted_vectors()?)
    }
}

/// Query vectors as row-major f32 values on the host.
fn host_queries(queries: &Tensor) -> Result<Vec<f32>> {
    let q = queries
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    Ok(Vec::try_from(&q.view(-1))?)
}

/// Re-scoring rows from the loaded matrix.
struct MatrixRows<'a>(&'a SearchState);

impl RowSource for MatrixRows<'_> {
    fn rows(&self, ids: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        let state = self.0;
        let matrix = &state.matrix;
        let dim = matrix.dim;
        if let Some(host) = &matrix.host {
            return Ok(ids
                .iter()
                .map(|&id| {
                    state.live_row(id).map(|r| match host {
                        HostRows::F32(v) => v[r * dim..(r + 1) * dim].to_vec(),
                        HostRows::F16(v) => v[r * dim..(r + 1) * dim]
                            .iter()
                            .map(|x| x.to_f32())
                            .collect(),
                    })
                })
                .collect());
        }
        let rows: Vec<Option<usize>> = ids.iter().map(|&id| state.live_row(id)).collect();
        let present: Vec<i64> = rows.iter().flatten().map(|&r| r as i64).collect();
        let values: Vec<f32> = tch::no_grad(|| -> Result<Vec<f32>> {
            let index = Tensor::f_from_slice(&present)?.f_to_device(matrix.tensor.device())?;
            crate::matrix::tensor_rows(&matrix.tensor.f_index_select(0, &index)?)
        })?;
        let mut next = 0;
        Ok(rows
            .into_iter()
            .map(|r| {
                r.map(|_| {
                    next += 1;
                    values[(next - 1) * dim..next * dim].to_vec()
                })
            })
            .collect())
    }
}

/// Re-scoring rows read from the store: only the blocks holding them.
struct StoreRows<'a>(&'a Snapshot);

impl RowSource for StoreRows<'_> {
    fn rows(&self, ids: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        Ok(self.0.vectors_of(ids)?)
    }
}
