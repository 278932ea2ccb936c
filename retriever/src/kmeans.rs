//! Spherical k-means for the coarse quantizer of an IVF index, on the compute device.
//!
//! Rows are assigned to the centroid with the largest inner product (the rule searches
//! probe by), and each centroid is the normalized mean of its rows. A centroid left empty
//! is moved onto a random row of the largest cluster, as FAISS does.

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::random::SplitMix64;

/// Rows scored against the centroids per step, bounding the `[rows, nlist]` score block.
const ASSIGN_CHUNK_BYTES: i64 = 64 << 20;

/// k-means settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KMeans {
    pub(crate) clusters: usize,
    pub(crate) iterations: usize,
    pub(crate) seed: u64,
    pub(crate) device: Device,
}

impl KMeans {
    /// Trains centroids on `rows` (`[n, dim]` f32 values, row-major, n ≥ clusters) and
    /// returns them as `[clusters × dim]` values.
    pub(crate) fn train(&self, rows: &[f32], dim: usize) -> Result<Vec<f32>> {
        let n = rows.len() / dim.max(1);
        let k = self.clusters.min(n).max(1);
        let mut rng = SplitMix64::new(self.seed);
        tch::no_grad(|| -> Result<Vec<f32>> {
            let x = Tensor::f_from_slice(rows)?
                .f_view([n as i64, dim as i64])?
                .f_to_device(self.device)?;
            let mut order: Vec<i64> = (0..n as i64).collect();
            for i in (1..order.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            let init = Tensor::f_from_slice(&order[..k])?.f_to_device(self.device)?;
            let mut centroids = normalized(&x.f_index_select(0, &init)?)?;
            for _ in 0..self.iterations {
                let assign = assign(&x, &centroids)?;
                let sums = Tensor::f_zeros([k as i64, dim as i64], (Kind::Float, self.device))?
                    .f_index_add(0, &assign, &x)?;
                let counts: Vec<i64> = Vec::try_from(
                    &assign
                        .f_bincount::<&Tensor>(None, k as i64)?
                        .f_to_device(Device::Cpu)?,
                )?;
                let mut next = normalized(&sums)?;
                let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
                if !empty.is_empty() {
                    let largest = (0..k).max_by_key(|&c| counts[c]).unwrap_or(0) as i64;
                    let members: Vec<i64> = Vec::try_from(
                        &assign
                            .f_eq(largest)?
                            .f_nonzero()?
                            .f_view([-1])?
                            .f_to_device(Device::Cpu)?,
                    )?;
                    for c in empty {
                        let row = members
                            .get((rng.next_u64() % members.len().max(1) as u64) as usize)
                            .copied()
                            .unwrap_or(0);
                        let jitter: Vec<f32> =
                            (0..dim).map(|_| (rng.normal() * 1e-3) as f32).collect();
                        let noise = Tensor::f_from_slice(&jitter)?
                            .f_to_device(self.device)?
                            .f_add(&x.f_get(row)?)?;
                        let noise = normalized(&noise.f_unsqueeze(0)?)?;
                        next = next.f_index_copy(
                            0,
                            &Tensor::f_from_slice(&[c as i64])?.f_to_device(self.device)?,
                            &noise,
                        )?;
                    }
                }
                centroids = next;
            }
            Ok(Vec::try_from(
                &centroids
                    .f_to_device(Device::Cpu)?
                    .f_contiguous()?
                    .f_view([-1])?,
            )?)
        })
    }
}

/// Rows scaled to unit length (a zero row stays zero).
fn normalized(t: &Tensor) -> Result<Tensor> {
    let norms = t
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(t.f_div(&norms)?)
}

/// The list of each row of `x` (`[n, dim]` on the centroids' device): the centroid with the
/// largest inner product. Scored in chunks that bound the score block's memory.
pub(crate) fn assign(x: &Tensor, centroids: &Tensor) -> Result<Tensor> {
    let n = x.size()[0];
    let k = centroids.size()[0].max(1);
    let chunk = (ASSIGN_CHUNK_BYTES / (4 * k)).max(1024);
    let ct = centroids.f_tr()?;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let scores = x.f_narrow(0, start, len)?.f_matmul(&ct)?;
        parts.push(scores.f_argmax(1, false)?);
        start += len;
    }
    if parts.is_empty() {
        return Ok(Tensor::f_zeros([0], (Kind::Int64, x.device()))?);
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}
