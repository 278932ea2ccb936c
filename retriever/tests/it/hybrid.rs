//! Retrieval modes over one snapshot: BM25 and hybrid (reciprocal rank fusion) rankings
//! against independently computed expectations, and their consistency with snapshots.

use std::collections::HashMap;

use realm_retriever::{HybridOptions, Retriever, SearchMode};
use realm_storage::{Bm25Params, NewPassage};
use realm_testing_torch::{FACTS, facts, indexed_retriever};

/// [`FACTS`] with a first generation of a tiny random encoder.
fn retriever(dir: &std::path::Path) -> Retriever {
    indexed_retriever(dir, &facts(FACTS.len()), 11)
}

/// Weighted RRF computed from scratch.
fn expected_fusion(
    dense: &[(u64, f32)],
    sparse: &[(u64, f32)],
    w: f32,
    c: f32,
    k: usize,
) -> Vec<u64> {
    let mut score: HashMap<u64, f32> = HashMap::new();
    for (i, (id, _)) in dense.iter().enumerate() {
        *score.entry(*id).or_default() += w / (c + i as f32 + 1.0);
    }
    for (i, (id, _)) in sparse.iter().enumerate() {
        *score.entry(*id).or_default() += (1.0 - w) / (c + i as f32 + 1.0);
    }
    let mut all: Vec<(u64, f32)> = score.into_iter().collect();
    all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    all.into_iter().take(k).map(|(id, _)| id).collect()
}

#[test]
fn hybrid_fuses_the_dense_and_bm25_rankings_of_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let retriever = retriever(&dir.path().join("db"));
    let snap = retriever.snapshot().unwrap();
    let bm25 = Bm25Params::default();
    for query in ["volcano in sicily", "starch enzyme", "china dynasty 618"] {
        let dense = &snap.rank_batch(&[query], 100, SearchMode::Dense).unwrap()[0];
        let sparse = &snap
            .rank_batch(&[query], 100, SearchMode::Bm25(bm25))
            .unwrap()[0];
        assert_eq!(dense.len(), FACTS.len());
        assert!(
            !sparse.is_empty() && sparse.len() < FACTS.len(),
            "{query}: {sparse:?}"
        );
        for w in [0.0f32, 0.3, 0.5, 1.0] {
            let options = HybridOptions {
                dense_weight: w,
                ..HybridOptions::default()
            };
            let hybrid = &snap
                .rank_batch(&[query], 5, SearchMode::Hybrid(options))
                .unwrap()[0];
            let ids: Vec<u64> = hybrid.iter().map(|(id, _)| *id).collect();
            assert_eq!(
                ids,
                expected_fusion(dense, sparse, w, 60.0, 5),
                "{query} w={w}"
            );
        }
        // Weight 1 is the dense ranking.
        let only_dense = HybridOptions {
            dense_weight: 1.0,
            ..HybridOptions::default()
        };
        let fused = &snap
            .rank_batch(&[query], 8, SearchMode::Hybrid(only_dense))
            .unwrap()[0];
        let fused_ids: Vec<u64> = fused.iter().map(|(id, _)| *id).collect();
        let dense_ids: Vec<u64> = dense.iter().map(|(id, _)| *id).collect();
        assert_eq!(fused_ids, dense_ids);
    }
    // Hits carry probabilities that sum to one in every mode.
    for mode in ["dense", "bm25", "hybrid"] {
        let mode: SearchMode = mode.parse().unwrap();
        let hits = snap.search_with("volcano", 3, mode).unwrap();
        assert!(!hits.is_empty());
        let p: f32 = hits.iter().map(|h| h.prob).sum();
        assert!((p - 1.0).abs() < 1e-4, "{}: {p}", mode.name());
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn bm25_and_hybrid_results_follow_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let retriever = retriever(&dir.path().join("db"));
    let hybrid = SearchMode::Hybrid(HybridOptions::default());
    let bm25 = SearchMode::Bm25(Bm25Params::default());
    let old = retriever.snapshot().unwrap();
    let before_bm25 = old.rank_batch(&["zanzibar volcano"], 10, bm25).unwrap();
    let before_hybrid = old.rank_batch(&["zanzibar volcano"], 10, hybrid).unwrap();

    // A new passage with a rare term, and a deleted one.
    let added = retriever
        .ingest(&[NewPassage::new(
            "Zanzibar",
            "Zanzibar is an archipelago off the coast of East Africa, with no volcano.",
        )])
        .unwrap()[0]
        .id();
    retriever.db().delete(&[0]).unwrap();

    // The old snapshot sees exactly what it saw.
    assert_eq!(
        old.rank_batch(&["zanzibar volcano"], 10, bm25).unwrap(),
        before_bm25
    );
    assert_eq!(
        old.rank_batch(&["zanzibar volcano"], 10, hybrid).unwrap(),
        before_hybrid
    );
    assert!(before_bm25[0].iter().any(|(id, _)| *id == 0));

    // A new one sees the insert and not the deleted passage.
    let new = retriever.snapshot().unwrap();
    let now = &new.rank_batch(&["zanzibar volcano"], 10, bm25).unwrap()[0];
    assert_eq!(now[0].0, added, "{now:?}");
    assert!(now.iter().all(|(id, _)| *id != 0));
    let fused = &new.rank_batch(&["zanzibar volcano"], 10, hybrid).unwrap()[0];
    assert!(fused.iter().any(|(id, _)| *id == added));
    assert!(fused.iter().all(|(id, _)| *id != 0));
}
