//! Approximate side scans for phrase search (DensePhrases' compressed index): an IVF index
//! with 8-bit scalar codes over the start vectors that may begin a phrase, and one over the
//! end vectors that may finish one.
//!
//! A side scan probes the lists whose centroids score best against the query's start (end)
//! vector, scores their codes, then re-scores the best candidates exactly from the stored
//! vectors, best code first, until the next code cannot reach the k-th exact score (every
//! code's score is within `ε = Σ|q_d|·err_d` of its exact score). The starts (ends) it
//! returns are then the exact top-k of the probed lists unless the re-scoring cap cut it
//! short; with every list probed, phrase search through the index equals exact search.
//!
//! The index is trained when a [`super::PhraseIndex`] is loaded (k-means on a sample of
//! each side, the quantizer fitted on the same sample), so it always covers exactly the
//! loaded rows.

use realm_storage::ivf::Sq8;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::ivf_search::{best_lists, code_error_bound};
use crate::kernels::{dot, dot_u8};
use crate::kmeans::{self, KMeans};
use crate::random::SplitMix64;
use crate::topk::{Candidate, TopK};

/// Re-scoring cap per side scan: `max(MIN, k · PER_K)` candidates.
const RESCORE_MIN: usize = 64;
const RESCORE_PER_K: usize = 8;

/// How the approximate phrase index is trained.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseIvfConfig {
    /// Inverted lists per side; 0 picks about √rows of the larger side.
    pub nlist: usize,
    /// k-means training rows per list (the sample is capped at the rows there are).
    pub train_per_list: usize,
    /// k-means iterations.
    pub iterations: usize,
    /// Seed of the training samples and of k-means.
    pub seed: u64,
}

impl Default for PhraseIvfConfig {
    fn default() -> Self {
        PhraseIvfConfig {
            nlist: 0,
            train_per_list: 32,
            iterations: 8,
            seed: 0x1f5,
        }
    }
}

impl PhraseIvfConfig {
    /// The list count for a side of `rows` rows: the configured one, or about √rows (the
    /// index is trained as a searcher loads, so its training time counts: on 300k rows per
    /// side, √rows lists reach the recall of 2·√rows at the same questions/s in half the
    /// training time; see the `phrases` bench).
    pub fn lists_for(&self, rows: usize) -> usize {
        if self.nlist > 0 {
            return self.nlist;
        }
        ((rows as f64).sqrt().round() as usize).clamp(1, 65_536)
    }
}

/// One side's IVF index: centroids, quantizer, and the lists' entries (the tokens of the
/// side and their codes), list after list.
#[derive(Debug)]
pub(super) struct SideIvf {
    dim: usize,
    nlist: usize,
    centroids: Vec<f32>,
    quantizer: Sq8,
    /// The largest coding error of each dimension over the side's rows.
    max_error: Vec<f32>,
    /// `offsets[l]..offsets[l + 1]`: the entries of list `l`.
    offsets: Vec<usize>,
    /// The token of each entry.
    tokens: Vec<u32>,
    /// `[entries × dim]` codes.
    codes: Vec<u8>,
}

impl SideIvf {
    /// Trains and fills the index of a side whose rows are `matrix` (`[n, dim]`, f32, on the
    /// compute device), row `r` being token `tokens[r]`; `vector(g)` gives token `g`'s
    /// values on the host.
    pub(super) fn build<'a>(
        matrix: &Tensor,
        tokens: &[u32],
        vector: impl Fn(usize) -> &'a [f32],
        nlist: usize,
        config: &PhraseIvfConfig,
    ) -> Result<SideIvf> {
        let size = matrix.size();
        let (n, dim) = (size[0] as usize, size[1] as usize);
        if nlist == 0 || nlist > n {
            return Err(Error::InvalidInput {
                reason: format!(
                    "an approximate phrase index of {nlist} lists needs at least as many rows per side, but a side has {n}"
                ),
            });
        }
        let device = matrix.device();
        let mut rng = SplitMix64::new(config.seed);
        let want = nlist.saturating_mul(config.train_per_list.max(1)).min(n);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut sample = Vec::with_capacity(want * dim);
        for &r in &order[..want] {
            sample.extend_from_slice(vector(tokens[r] as usize));
        }
        let centroids = KMeans {
            clusters: nlist,
            iterations: config.iterations,
            seed: rng.next_u64(),
            device,
        }
        .train(&sample, dim)?;
        let quantizer = Sq8::fit(&sample, dim);
        let lists: Vec<i64> = tch::no_grad(|| -> Result<Vec<i64>> {
            let c = Tensor::f_from_slice(&centroids)?
                .f_view([nlist as i64, dim as i64])?
                .f_to_device(device)?;
            Ok(Vec::try_from(
                &kmeans::assign(matrix, &c)?.f_to_device(Device::Cpu)?,
            )?)
        })?;
        let mut counts = vec![0usize; nlist];
        for &l in &lists {
            counts[l as usize] += 1;
        }
        let mut offsets = Vec::with_capacity(nlist + 1);
        offsets.push(0);
        for c in &counts {
            offsets.push(offsets.last().copied().unwrap_or(0) + c);
        }
        let mut next = offsets[..nlist].to_vec();
        let mut entries = vec![0u32; n];
        for (r, &l) in lists.iter().enumerate() {
            entries[next[l as usize]] = tokens[r];
            next[l as usize] += 1;
        }
        let mut codes = Vec::with_capacity(n * dim);
        let mut max_error = vec![0f32; dim];
        for &g in &entries {
            let values = vector(g as usize);
            quantizer.encode(values, &mut codes);
            quantizer.error(values, &mut max_error);
        }
        Ok(SideIvf {
            dim,
            nlist,
            centroids,
            quantizer,
            max_error,
            offsets,
            tokens: entries,
            codes,
        })
    }

    /// The number of lists.
    pub(super) fn nlist(&self) -> usize {
        self.nlist
    }

    /// The `k` best tokens for `q` among the `nprobe` best lists, by exact score (`vector(g)`
    /// gives token `g`'s values), best first.
    pub(super) fn top<'a>(
        &self,
        q: &[f32],
        k: usize,
        nprobe: usize,
        vector: impl Fn(usize) -> &'a [f32],
    ) -> Vec<usize> {
        let dim = self.dim;
        // score(code) = q·min + Σ (q_d · step_d) · code_d
        let folded: Vec<f32> = q
            .iter()
            .zip(&self.quantizer.step)
            .map(|(a, s)| a * s)
            .collect();
        let bias = dot(q, &self.quantizer.min);
        let cap = RESCORE_MIN.max(RESCORE_PER_K * k).max(k);
        let mut best = TopK::new(cap);
        for l in best_lists(&self.centroids, dim, q, nprobe) {
            for e in self.offsets[l]..self.offsets[l + 1] {
                let score = bias + dot_u8(&folded, &self.codes[e * dim..(e + 1) * dim]);
                if best.would_take(score) {
                    best.offer(Candidate {
                        score,
                        id: u64::from(self.tokens[e]),
                    });
                }
            }
        }
        let eps = code_error_bound(q, &self.max_error, bias);
        let mut exact = TopK::new(k);
        for (g, code_score) in best.into_sorted() {
            if exact.is_full() && code_score + eps < exact.threshold() {
                break;
            }
            exact.offer(Candidate {
                score: dot(q, vector(g as usize)),
                id: g,
            });
        }
        exact
            .into_sorted()
            .into_iter()
            .map(|(g, _)| g as usize)
            .collect()
    }
}
