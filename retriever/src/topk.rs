//! Exact top-k selection over a generation matrix.
//!
//! Every path ranks by score descending and then passage id ascending, so ties come out in
//! a deterministic order whatever the chunking, threading or device. [`HostScan`] scans host
//! rows with all cores, each keeping bounded heaps; [`GemmScan`] scores chunks of a matrix
//! tensor by GEMM and brings back only the rows that can enter a query's top-k.

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::kernels::dot;
use crate::matrix::HostRows;

/// One query's ranked `(passage id, score)` pairs, best first.
pub(crate) type Ranked = Vec<(u64, f32)>;

/// Exact top-k by scanning host rows with all cores, each keeping a bounded heap.
pub(crate) struct HostScan<'a> {
    pub(crate) rows: &'a HostRows,
    pub(crate) dim: usize,
    /// Rows visible to the snapshot.
    pub(crate) len: usize,
    /// The passage id of each row.
    pub(crate) ids: &'a [u64],
    /// Rows excluded from ranking (passages deleted before the snapshot).
    pub(crate) dead: Option<&'a [bool]>,
}

/// Exact top-k by chunked GEMM over a matrix tensor on its device.
pub(crate) struct GemmScan<'a> {
    /// The matrix, `[rows, dim]`.
    pub(crate) matrix: &'a Tensor,
    /// Rows visible to the snapshot.
    pub(crate) len: usize,
    /// The passage id of each row.
    pub(crate) ids: &'a [u64],
    /// Rows excluded from ranking, a bool tensor on the matrix's device.
    pub(crate) dead: Option<&'a Tensor>,
    /// Rows scored per step.
    pub(crate) chunk_rows: usize,
}

/// A scored row, ordered so that greater is better: higher score, then lower passage id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) score: f32,
    pub(crate) id: u64,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        by_rank(&(other.id, other.score), &(self.id, self.score))
    }
}

/// The order of a ranking, best first: higher score, then lower passage id. −0 and +0 are
/// the same score (a dot product may give either), so their tie goes to the id as well.
pub(crate) fn by_rank(a: &(u64, f32), b: &(u64, f32)) -> std::cmp::Ordering {
    (b.1 + 0.0).total_cmp(&(a.1 + 0.0)).then(a.0.cmp(&b.0))
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The best `k` candidates seen so far, under [`Candidate`]'s order.
pub(crate) struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Candidate>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn offer(&mut self, c: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(c));
        } else if self.heap.peek().is_some_and(|worst| c > worst.0) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(c));
        }
    }

    /// Whether a candidate scoring `score` could enter (ties at the bar are kept, to be
    /// ordered by id).
    pub(crate) fn would_take(&self, score: f32) -> bool {
        !self.is_full() || score >= self.threshold()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.heap.len() >= self.k
    }

    /// The k-th best score (the bar a new candidate must reach).
    pub(crate) fn threshold(&self) -> f32 {
        self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score)
    }

    pub(crate) fn into_candidates(self) -> impl Iterator<Item = Candidate> {
        self.heap.into_iter().map(|std::cmp::Reverse(c)| c)
    }

    /// Best first, as `(passage id, score)`.
    pub(crate) fn into_sorted(self) -> Vec<(u64, f32)> {
        let mut all: Vec<Candidate> = self.into_candidates().collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter().map(|c| (c.id, c.score)).collect()
    }
}

impl GemmScan<'_> {
    /// For each row of `queries` (`[B, dim]`, any device and float kind), the `k` best
    /// `(passage id, score)` pairs, best first. `k` must not exceed the live rows.
    pub(crate) fn top_k(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        if self.chunk_rows >= self.len
            && let Some(found) = self.top_k_whole(queries, k)?
        {
            return Ok(found);
        }
        self.top_k_chunked(queries, k)
    }

    /// One GEMM over every row and one top-k of `k + 1`, the naive baseline's work and no
    /// more: when the `(k+1)`-th score is below the k-th in every row, no tie crosses the
    /// cut and the first k are the answer (ties inside it ordered by id here). `None` when a
    /// tie crosses it (then the chunked path keeps every tied row), or on f16 CPU rows.
    fn top_k_whole(&self, queries: &Tensor, k: usize) -> Result<Option<Vec<Ranked>>> {
        let device = self.matrix.device();
        if device == Device::Cpu && self.matrix.kind() == Kind::Half {
            return Ok(None);
        }
        tch::no_grad(|| {
            let q = queries.to_device(device).to_kind(self.matrix.kind());
            let m = self.matrix.narrow(0, 0, self.len as i64);
            let mut scores = q.matmul(&m.tr()).to_kind(Kind::Float);
            if let Some(dead) = self.dead {
                let dead = dead.narrow(0, 0, self.len as i64);
                scores = scores.masked_fill(&dead.unsqueeze(0), f64::NEG_INFINITY);
            }
            let take = (k + 1).min(self.len);
            let (values, indices) = scores.topk(take as i64, -1, true, true);
            let values: Vec<f32> =
                Vec::try_from(&values.to_device(Device::Cpu).contiguous().view(-1))?;
            let indices: Vec<i64> =
                Vec::try_from(&indices.to_device(Device::Cpu).contiguous().view(-1))?;
            let mut out = Vec::with_capacity(values.len() / take.max(1));
            for (vals, idx) in values.chunks(take).zip(indices.chunks(take)) {
                if take > k && vals[k] >= vals[k - 1] {
                    return Ok(None);
                }
                let mut row: Vec<(u64, f32)> = vals[..k]
                    .iter()
                    .zip(&idx[..k])
                    .map(|(&score, &i)| (self.ids[i as usize], score))
                    .collect();
                row.sort_by(by_rank);
                out.push(row);
            }
            Ok(Some(out))
        })
    }

    fn top_k_chunked(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        let batch = queries.size().first().copied().unwrap_or(0) as usize;
        let mut heaps: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        tch::no_grad(|| -> Result<()> {
            let device = self.matrix.device();
            let on_cpu_f16 = device == Device::Cpu && self.matrix.kind() == Kind::Half;
            let compute_kind = if on_cpu_f16 {
                Kind::Float
            } else {
                self.matrix.kind()
            };
            let q = queries.to_device(device).to_kind(compute_kind);
            let mut start = 0usize;
            while start < self.len {
                let len = self.chunk_rows.min(self.len - start);
                let mut m = self.matrix.narrow(0, start as i64, len as i64);
                if on_cpu_f16 {
                    // CPUs have no fast half GEMM: widen one cache-sized chunk at a time.
                    m = m.to_kind(Kind::Float);
                }
                // Within chunks, [chunk, B] = M·qᵀ: a tall-skinny GEMM over row-major M, which
                // BLAS runs faster than q·Mᵀ; its transpose is the [B, chunk] score block. One
                // chunk over everything is q·Mᵀ, contiguous for the top-k that follows.
                let mut scores = if len == self.len && start == 0 {
                    q.matmul(&m.tr()).to_kind(Kind::Float)
                } else {
                    m.matmul(&q.tr()).to_kind(Kind::Float).tr()
                };
                if let Some(dead) = self.dead {
                    let dead = dead.narrow(0, start as i64, len as i64);
                    scores = scores.masked_fill(&dead.unsqueeze(0), f64::NEG_INFINITY);
                }
                // A row can enter a query's top-k only if it scores at least the query's
                // current k-th best. Until every heap is full, the chunk's own k-th best
                // stands in. Ties at the threshold are kept and ordered by id in the heap.
                let threshold = if heaps.iter().all(TopK::is_full) {
                    let t: Vec<f32> = heaps.iter().map(TopK::threshold).collect();
                    Tensor::from_slice(&t)
                        .view([batch as i64, 1])
                        .to_device(device)
                } else {
                    let kc = k.min(len) as i64;
                    let (values, _) = scores.topk(kc, -1, true, false);
                    values.narrow(1, kc - 1, 1)
                };
                // Stored rows are finite, so only masked (dead) rows score -inf.
                let hits = if self.dead.is_some() {
                    scores.ge_tensor(&threshold).logical_and(&scores.isfinite())
                } else {
                    scores.ge_tensor(&threshold)
                };
                let nz = hits.nonzero();
                let (rows, cols) = (nz.select(1, 0), nz.select(1, 1));
                let picked = scores.index(&[Some(&rows), Some(&cols)]);
                let rows: Vec<i64> = Vec::try_from(&rows.to_device(Device::Cpu).contiguous())?;
                let cols: Vec<i64> = Vec::try_from(&cols.to_device(Device::Cpu).contiguous())?;
                let picked: Vec<f32> = Vec::try_from(&picked.to_device(Device::Cpu))?;
                for ((b, c), score) in rows.into_iter().zip(cols).zip(picked) {
                    heaps[b as usize].offer(Candidate {
                        score,
                        id: self.ids[start + c as usize],
                    });
                }
                start += len;
            }
            Ok(())
        })?;
        Ok(heaps.into_iter().map(TopK::into_sorted).collect())
    }
}

impl HostScan<'_> {
    /// For each query (row-major f32 values, `dim` per query), the `k` best
    /// `(passage id, score)` pairs, best first.
    pub(crate) fn top_k(&self, queries: &[f32], k: usize) -> Vec<Vec<(u64, f32)>> {
        let batch = queries.len() / self.dim.max(1);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.len.div_ceil(threads).max(1);
        let partial: Vec<Vec<TopK>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.len)
                .step_by(per)
                .map(|start| {
                    let end = (start + per).min(self.len);
                    s.spawn(move || self.scan(queries, batch, start..end, k))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut merged: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        for part in partial {
            for (into, from) in merged.iter_mut().zip(part) {
                from.into_candidates().for_each(|c| into.offer(c));
            }
        }
        merged.into_iter().map(TopK::into_sorted).collect()
    }

    fn scan(
        &self,
        queries: &[f32],
        batch: usize,
        range: std::ops::Range<usize>,
        k: usize,
    ) -> Vec<TopK> {
        let dim = self.dim;
        let mut heaps: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        let mut widened = vec![0f32; dim];
        for r in range {
            if self.dead.is_some_and(|d| d[r]) {
                continue;
            }
            let row: &[f32] = match self.rows {
                HostRows::F32(v) => &v[r * dim..(r + 1) * dim],
                HostRows::F16(v) => {
                    use half::slice::HalfFloatSliceExt;
                    v[r * dim..(r + 1) * dim].convert_to_f32_slice(&mut widened);
                    &widened
                }
            };
            for (b, heap) in heaps.iter_mut().enumerate() {
                heap.offer(Candidate {
                    score: dot(row, &queries[b * dim..(b + 1) * dim]),
                    id: self.ids[r],
                });
            }
        }
        heaps
    }
}

/// The softmax of `scores` (max-shifted): the p(z|x) a dense search reports for its hits.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Blocks a [`StreamScan`] reads per step.
const STREAM_BLOCKS: u64 = 64;

/// Exact top-k of a generation too large to load: its blocks are read a few at a time
/// from the store and scanned on the host, so memory stays bounded by one step's rows.
pub(crate) struct StreamScan<'a> {
    pub(crate) snapshot: &'a realm_storage::Snapshot,
    /// Passages deleted before the snapshot, excluded from ranking.
    pub(crate) deleted: &'a std::collections::HashSet<u64>,
}

impl StreamScan<'_> {
    /// For each query (row-major f32), the `k` best `(passage id, score)` pairs.
    pub(crate) fn top_k(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        let Some(manifest) = self.snapshot.generation() else {
            return Ok(Vec::new());
        };
        let dim = manifest.spec.dim as usize;
        let batch = queries.len() / dim.max(1);
        let mut heaps: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        let mut block = 0;
        while block < manifest.blocks {
            let step = STREAM_BLOCKS.min(manifest.blocks - block);
            let rows = self.snapshot.db().read_blocks(manifest.id, block, step)?;
            for (r, &id) in rows.ids.iter().enumerate() {
                if self.deleted.contains(&id) {
                    continue;
                }
                let row = &rows.values[r * dim..(r + 1) * dim];
                for (b, heap) in heaps.iter_mut().enumerate() {
                    let score = dot(row, &queries[b * dim..(b + 1) * dim]);
                    if heap.would_take(score) {
                        heap.offer(Candidate { score, id });
                    }
                }
            }
            block += step;
        }
        Ok(heaps.into_iter().map(TopK::into_sorted).collect())
    }
}
