//! Exact MIPS over a loaded matrix, and the choice of its path by measurement.
//!
//! Which path is fastest depends on the host more than on the data: the host scan is
//! memory-bound and wins when few queries share one pass over the rows, GEMM wins when the
//! batch makes the work compute-bound, and where the cross-over lies, and which chunk size
//! suits the caches, varies with the cores, the cache sizes, the SIMD width and libtorch's
//! BLAS. So on the CPU the first search of a *shape* (a batch-size class and a matrix-size
//! class) times every applicable path on its own queries and keeps the fastest for the
//! process; later searches of that shape go straight to it. Every path returns the same
//! ranking (score, then passage id), so the choice changes only the speed.

use std::collections::HashMap;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::kernels::dot;
use crate::matrix::{DeviceMatrix, HostRows};
use crate::search::{SearchSnapshot, SearchState};
use crate::topk::{GemmScan, HostScan};

/// Rounds of the first search of a shape, each running every candidate path once, and the
/// time after which no further round starts (at least two always run).
const CALIBRATION_ROUNDS: usize = 4;
const CALIBRATION_BUDGET: std::time::Duration = std::time::Duration::from_millis(300);

/// Batches above this size never take the host scan (it scores row by row).
const HOST_SCAN_MAX_BATCH: usize = 16;

/// One way to run an exact search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExactPath {
    /// All cores stream the host rows, fused with the top-k.
    HostScan,
    /// GEMM over chunks of this many rows, then the rows that can enter the top-k.
    Gemm { chunk_rows: usize },
}

impl std::fmt::Display for ExactPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExactPath::HostScan => f.write_str("host scan"),
            ExactPath::Gemm { chunk_rows } => write!(f, "GEMM in chunks of {chunk_rows} rows"),
        }
    }
}

/// A search shape: powers of two of the batch size and of the matrix rows, and the dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExactShape {
    pub batch_class: u32,
    pub rows_class: u32,
    pub half: bool,
}

/// The path chosen for each shape measured so far in this process.
pub(crate) type ExactPlans = HashMap<ExactShape, ExactPath>;

impl SearchSnapshot {
    /// Exact MIPS over the pinned generation's matrix on the device; `queries` is `[B, dim]`.
    pub(crate) fn top_k_exact(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        let state = self.state()?;
        let matrix = &state.matrix;
        // `top_k_with` checked the shape against the generation.
        let batch = queries.size()[0] as usize;
        let k = k.min(state.live);
        if k == 0 || batch == 0 {
            return Ok(vec![Vec::new(); batch]);
        }
        let options = self.retriever().options();
        let candidates = candidates(&state, batch, options.score_chunk_rows);
        if candidates.len() == 1 {
            return run(&state, candidates[0], queries, k);
        }
        let shape = ExactShape {
            batch_class: batch.next_power_of_two().trailing_zeros(),
            rows_class: state.rows.next_power_of_two().trailing_zeros(),
            half: matrix.tensor.kind() == Kind::Half,
        };
        let chosen = self
            .retriever()
            .inner
            .exact_plans
            .lock()
            .get(&shape)
            .copied();
        if let Some(path) = chosen {
            return run(&state, path, queries, k);
        }
        // One untimed run warms the caches; then each path runs in turn, a few rounds while
        // they stay cheap, and keeps its fastest time.
        let mut result = run(&state, candidates[0], queries, k)?;
        let mut best_times = vec![std::time::Duration::MAX; candidates.len()];
        let budget = Instant::now();
        for round in 0..CALIBRATION_ROUNDS {
            for (i, &path) in candidates.iter().enumerate() {
                let start = Instant::now();
                result = run(&state, path, queries, k)?;
                best_times[i] = best_times[i].min(start.elapsed());
            }
            if round > 0 && budget.elapsed() > CALIBRATION_BUDGET {
                break;
            }
        }
        let best = candidates
            .iter()
            .zip(&best_times)
            .min_by_key(|(_, t)| **t)
            .map_or(candidates[0], |(p, _)| *p);
        self.retriever()
            .inner
            .exact_plans
            .lock()
            .insert(shape, best);
        Ok(result)
    }
}

/// The paths that apply: a fixed chunk size or a device tensor leave one.
fn candidates(state: &SearchState, batch: usize, fixed_chunk: usize) -> Vec<ExactPath> {
    let matrix = &state.matrix;
    if fixed_chunk > 0 {
        return vec![ExactPath::Gemm {
            chunk_rows: fixed_chunk,
        }];
    }
    if matrix.tensor.device() != Device::Cpu {
        // A device tensor (CUDA): one GEMM over the whole matrix.
        return vec![ExactPath::Gemm {
            chunk_rows: state.rows.max(1),
        }];
    }
    let mut paths = Vec::new();
    if matrix.host.is_some() && batch <= HOST_SCAN_MAX_BATCH {
        paths.push(ExactPath::HostScan);
    }
    let cached = cache_sized_chunk(batch, matrix);
    paths.push(ExactPath::Gemm { chunk_rows: cached });
    for chunk in [cached * 8, state.rows.max(1)] {
        if chunk < state.rows && !paths.contains(&ExactPath::Gemm { chunk_rows: chunk }) {
            paths.push(ExactPath::Gemm { chunk_rows: chunk });
        }
    }
    let whole = ExactPath::Gemm {
        chunk_rows: state.rows.max(1),
    };
    if !paths.contains(&whole) {
        paths.push(whole);
    }
    paths
}

/// Rows per chunk so that the `[batch, chunk]` score block and, for f16, the widened chunk
/// stay around the size of a last-level cache.
fn cache_sized_chunk(batch: usize, matrix: &DeviceMatrix) -> usize {
    let dim = matrix.dim.max(1);
    let budget = 8 << 20; // bytes
    let per_row = 4 * batch
        + if matrix.tensor.kind() == Kind::Half {
            4 * dim
        } else {
            0
        };
    (budget / per_row.max(1)).clamp(1024, 1 << 20)
}

/// Runs `path`, then gives the winners their scores from the one host kernel, so that the
/// scores (and the order of candidates within float rounding of each other) do not depend on
/// which path was measured fastest.
fn run(
    state: &SearchState,
    path: ExactPath,
    queries: &Tensor,
    k: usize,
) -> Result<Vec<Vec<(u64, f32)>>> {
    let mut result = run_path(state, path, queries, k)?;
    let matrix = &state.matrix;
    let (Some(host), ExactPath::Gemm { .. }) = (&matrix.host, path) else {
        return Ok(result);
    };
    let q = queries
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let q: Vec<f32> = Vec::try_from(&q.view(-1))?;
    let dim = matrix.dim;
    let mut widened = vec![0f32; dim];
    for (b, row) in result.iter_mut().enumerate() {
        let query = &q[b * dim..(b + 1) * dim];
        for (id, score) in row.iter_mut() {
            if let Some(r) = state.live_row(*id) {
                *score = match host {
                    HostRows::F32(v) => dot(query, &v[r * dim..(r + 1) * dim]),
                    HostRows::F16(v) => {
                        use half::slice::HalfFloatSliceExt;
                        v[r * dim..(r + 1) * dim].convert_to_f32_slice(&mut widened);
                        dot(query, &widened)
                    }
                };
            }
        }
        row.sort_by(crate::topk::by_rank);
    }
    Ok(result)
}

fn run_path(
    state: &SearchState,
    path: ExactPath,
    queries: &Tensor,
    k: usize,
) -> Result<Vec<Vec<(u64, f32)>>> {
    let matrix = &state.matrix;
    match (path, &matrix.host) {
        (ExactPath::HostScan, Some(host)) => {
            let q = queries
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let q: Vec<f32> = Vec::try_from(&q.view(-1))?;
            Ok(HostScan {
                rows: host,
                dim: matrix.dim,
                len: state.rows,
                ids: &matrix.ids,
                dead: state.dead_host.as_deref(),
            }
            .top_k(&q, k))
        }
        (ExactPath::Gemm { chunk_rows }, _) => GemmScan {
            matrix: &matrix.tensor,
            len: state.rows,
            ids: &matrix.ids,
            dead: state.dead.as_deref(),
            chunk_rows,
        }
        .top_k(queries, k),
        // Only a matrix with host rows offers the host scan.
        (ExactPath::HostScan, None) => run_path(
            state,
            ExactPath::Gemm {
                chunk_rows: state.rows.max(1),
            },
            queries,
            k,
        ),
    }
}
