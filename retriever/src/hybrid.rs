//! Retrieval modes: dense (the learned retriever), BM25 (the lexical index the store keeps
//! with the passages) and a hybrid of both by weighted reciprocal rank fusion.
//!
//! All three read one [`SearchSnapshot`], so a hybrid search fuses a dense ranking and a
//! BM25 ranking of exactly the same passage set.

use std::collections::HashMap;
use std::str::FromStr;

use realm_storage::Bm25Params;

use crate::error::{Error, Result};
use crate::search::{Hit, SearchSnapshot};
use crate::topk::softmax;

/// How a search ranks passages.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum SearchMode {
    /// Exact inner product of the query encoder's vector with the pinned generation.
    #[default]
    Dense,
    /// BM25 over the lexical index (Lucene variant; see [`Bm25Params`]).
    Bm25(Bm25Params),
    /// Both, fused by weighted reciprocal rank fusion.
    Hybrid(HybridOptions),
}

/// Settings of hybrid retrieval: weighted reciprocal rank fusion (Cormack et al., 2009).
///
/// A passage ranked `r_d` (1-based) by the dense retriever and `r_s` by BM25 scores
/// `w / (c + r_d) + (1 − w) / (c + r_s)`, where `w` is [`HybridOptions::dense_weight`], `c`
/// is [`HybridOptions::rrf_k`], and a ranking the passage is absent from (beyond `depth`)
/// contributes nothing. Ties are broken by passage id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HybridOptions {
    /// Weight of the dense ranking in `[0, 1]`; BM25 gets `1 − dense_weight`.
    pub dense_weight: f32,
    /// The RRF constant `c`; 60 is the customary value.
    pub rrf_k: f32,
    /// Candidates taken from each ranking before fusion (at least `k`).
    pub depth: usize,
    /// Parameters of the BM25 side.
    pub bm25: Bm25Params,
}

impl Default for HybridOptions {
    fn default() -> Self {
        HybridOptions {
            dense_weight: 0.5,
            rrf_k: 60.0,
            depth: 1000,
            bm25: Bm25Params::default(),
        }
    }
}

impl HybridOptions {
    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.dense_weight) {
            return Err(Error::InvalidInput {
                reason: format!(
                    "the hybrid dense weight must be between 0 and 1, but it is {}",
                    self.dense_weight
                ),
            });
        }
        if !(self.rrf_k.is_finite() && self.rrf_k >= 0.0) {
            return Err(Error::InvalidInput {
                reason: format!(
                    "the reciprocal rank fusion constant must be a finite number of at least 0, but it is {}",
                    self.rrf_k
                ),
            });
        }
        Ok(())
    }
}

impl SearchMode {
    /// The mode's name as the shell writes it: `dense`, `bm25` or `hybrid`.
    pub fn name(&self) -> &'static str {
        match self {
            SearchMode::Dense => "dense",
            SearchMode::Bm25(_) => "bm25",
            SearchMode::Hybrid(_) => "hybrid",
        }
    }
}

impl FromStr for SearchMode {
    type Err = Error;

    /// `dense`, `bm25` or `hybrid`, with default parameters.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dense" => Ok(SearchMode::Dense),
            "bm25" => Ok(SearchMode::Bm25(Bm25Params::default())),
            "hybrid" => Ok(SearchMode::Hybrid(HybridOptions::default())),
            other => Err(Error::InvalidInput {
                reason: format!("{other:?} is not a retrieval mode; use dense, bm25 or hybrid"),
            }),
        }
    }
}

/// Fuses rankings (best first) by weighted reciprocal rank fusion and returns the best `k`
/// `(passage id, fused score)` pairs, by score descending and then passage id ascending.
pub fn reciprocal_rank_fusion(
    rankings: &[(&[(u64, f32)], f32)],
    rrf_k: f32,
    k: usize,
) -> Vec<(u64, f32)> {
    let mut fused: HashMap<u64, f32> = HashMap::new();
    for (ranking, weight) in rankings {
        for (rank, (id, _)) in ranking.iter().enumerate() {
            *fused.entry(*id).or_insert(0.0) += weight / (rrf_k + (rank + 1) as f32);
        }
    }
    let mut out: Vec<(u64, f32)> = fused.into_iter().collect();
    out.sort_by(crate::topk::by_rank);
    out.truncate(k);
    out
}

impl SearchSnapshot {
    /// The best `k` `(passage id, score)` pairs for each query in `mode`, best first, ties
    /// broken by passage id. Dense and hybrid modes need a pinned generation; BM25 does not.
    pub fn rank_batch(
        &self,
        texts: &[&str],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Vec<(u64, f32)>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        match mode {
            SearchMode::Dense => self.rank_dense(texts, k),
            SearchMode::Bm25(params) => texts
                .iter()
                .map(|t| Ok(self.storage().bm25_search(t, k, params)?))
                .collect(),
            SearchMode::Hybrid(options) => {
                options.validate()?;
                let depth = options.depth.max(k);
                let dense = self.rank_dense(texts, depth)?;
                dense
                    .iter()
                    .zip(texts)
                    .map(|(dense, text)| {
                        let sparse = self.storage().bm25_search(text, depth, options.bm25)?;
                        Ok(reciprocal_rank_fusion(
                            &[
                                (dense.as_slice(), options.dense_weight),
                                (sparse.as_slice(), 1.0 - options.dense_weight),
                            ],
                            options.rrf_k,
                            k,
                        ))
                    })
                    .collect()
            }
        }
    }

    fn rank_dense(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        let encoder = self.query_encoder()?;
        let queries = tch::no_grad(|| encoder.encode(texts))?;
        self.top_k(&queries, k)
    }

    /// Top-k passages for each query text in `mode`, with p(z|x) over the returned
    /// candidates (see [`Hit::prob`]).
    pub fn search_batch_with(
        &self,
        texts: &[&str],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Vec<Hit>>> {
        self.rank_batch(texts, k, mode)?
            .into_iter()
            .map(|ranked| {
                let scores: Vec<f32> = ranked.iter().map(|(_, s)| *s).collect();
                let probs = match mode {
                    SearchMode::Hybrid(_) => {
                        let sum: f32 = scores.iter().sum();
                        scores.iter().map(|s| s / sum).collect()
                    }
                    SearchMode::Dense | SearchMode::Bm25(_) => softmax(&scores),
                };
                self.hits(ranked, probs)
            })
            .collect()
    }

    /// Top-k passages for one query text in `mode`.
    pub fn search_with(&self, text: &str, k: usize, mode: SearchMode) -> Result<Vec<Hit>> {
        Ok(self
            .search_batch_with(&[text], k, mode)?
            .pop()
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_weights_ranks_and_breaks_ties_by_id() {
        let dense = [(1, 0.9), (2, 0.8), (3, 0.7)];
        let sparse = [(3, 12.0), (4, 11.0)];
        let fused = reciprocal_rank_fusion(&[(&dense, 0.5), (&sparse, 0.5)], 60.0, 10);
        let expect = |id: u64| match id {
            1 => 0.5 / 61.0,
            2 => 0.5 / 62.0,
            3 => 0.5 / 63.0 + 0.5 / 61.0,
            4 => 0.5 / 62.0,
            _ => unreachable!(),
        };
        let ids: Vec<u64> = fused.iter().map(|(id, _)| *id).collect();
        // 3 is in both lists; 2 and 4 tie and are ordered by id.
        assert_eq!(ids, vec![3, 1, 2, 4]);
        for (id, score) in fused {
            assert!((score - expect(id)).abs() < 1e-7, "{id}: {score}");
        }
    }

    #[test]
    fn fusion_with_weight_one_is_the_dense_ranking() {
        let dense = [(5, 0.1), (2, 0.05)];
        let sparse = [(9, 3.0), (2, 2.0)];
        let fused = reciprocal_rank_fusion(&[(&dense, 1.0), (&sparse, 0.0)], 60.0, 2);
        assert_eq!(fused.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [5, 2]);
    }

    #[test]
    fn modes_parse_and_reject_unknown_names() {
        assert_eq!("dense".parse::<SearchMode>().unwrap(), SearchMode::Dense);
        assert_eq!("BM25".parse::<SearchMode>().unwrap().name(), "bm25");
        assert_eq!("hybrid".parse::<SearchMode>().unwrap().name(), "hybrid");
        assert!("sparse".parse::<SearchMode>().is_err());
        let bad = HybridOptions {
            dense_weight: 1.5,
            ..HybridOptions::default()
        };
        assert!(bad.validate().is_err());
    }
}
