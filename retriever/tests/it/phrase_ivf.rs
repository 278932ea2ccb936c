//! The approximate phrase index (IVF with 8-bit codes over starts and ends): probing every
//! list equals exact phrase search, fewer lists still return real phrases with exact scores,
//! and bad settings are refused.

use proptest::prelude::*;
use realm_retriever::Error;
use realm_retriever::phrase::{
    PhraseIndex, PhraseIvfConfig, PhraseQuery, PhraseRows, PhraseSearchOptions,
};
use realm_retriever::random::SplitMix64;
use tch::Device;

use crate::phrases::{all_phrases, hit_key as key, random_passages, random_query, random_rows};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Probing every list re-scores exactly whatever could be among the best starts and
    /// ends, so it returns what the exact scans return: with sides as large as the index,
    /// the brute force over every phrase; with small sides, the exact two-sided search.
    /// Probing fewer lists still returns real phrases with their exact scores, and a batch
    /// answers each query as a search of it alone does.
    #[test]
    fn probing_every_list_equals_exact_phrase_search(
        seed in any::<u64>(),
        dim in 1usize..6,
        sizes in proptest::collection::vec(0usize..16, 1..6),
        nlist in 1usize..6,
        max_words in 1usize..5,
        side_k in 1usize..6,
        k in 1usize..8,
    ) {
        let mut rng = SplitMix64::new(seed);
        let passages = random_passages(&mut rng, dim, &sizes);
        let query = random_query(&mut rng, dim);
        let other = random_query(&mut rng, dim);
        let mut index = PhraseIndex::build(dim, passages.clone(), Device::Cpu).unwrap();
        prop_assume!(index.start_count().min(index.end_count()) >= nlist);
        index
            .build_ivf(&PhraseIvfConfig { nlist, seed, ..PhraseIvfConfig::default() })
            .unwrap();
        prop_assert_eq!(index.ivf_lists(), Some(nlist));
        let oracle = all_phrases(&passages, &query, max_words);

        let every = index.token_count();
        let all = PhraseSearchOptions { k, max_words, side_k: every, nprobe: Some(nlist) };
        let hits = index.search(&query, &all).unwrap();
        let expected: Vec<(u64, u32, u32)> = oracle.iter().take(k).map(|o| (o.0, o.1, o.2)).collect();
        prop_assert_eq!(hits.iter().map(key).collect::<Vec<_>>(), expected);

        let small = PhraseSearchOptions { k, max_words, side_k, nprobe: Some(nlist) };
        let exact = PhraseSearchOptions { nprobe: None, ..small };
        let hits = index.search(&query, &small).unwrap();
        let exact_hits = index.search(&query, &exact).unwrap();
        prop_assert_eq!(
            hits.iter().map(key).collect::<Vec<_>>(),
            exact_hits.iter().map(key).collect::<Vec<_>>()
        );

        let few = PhraseSearchOptions { nprobe: Some(1), ..small };
        let hits = index.search(&query, &few).unwrap();
        for hit in &hits {
            let o = oracle.iter().find(|o| (o.0, o.1, o.2) == key(hit));
            prop_assert!(o.is_some(), "the hit {:?} is not a phrase", hit);
            prop_assert!((hit.score - o.unwrap().3).abs() <= 1e-5 * (1.0 + hit.score.abs()));
        }
        let batch = index
            .search_batch(&[query.clone(), other.clone(), query.clone()], &few)
            .unwrap();
        prop_assert_eq!(&batch[0], &hits);
        prop_assert_eq!(&batch[1], &index.search(&other, &few).unwrap());
        prop_assert_eq!(&batch[2], &hits);
    }
}

/// On clustered rows (many passages, each phrase near one of a few topics), probing an
/// eighth of the lists finds nearly every phrase the exact search finds.
#[test]
fn probing_a_few_lists_keeps_most_of_the_exact_results_on_clustered_rows() {
    let (dim, topics) = (16, 24);
    let mut rng = SplitMix64::new(3);
    let centers: Vec<Vec<f32>> = (0..topics)
        .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
        .collect();
    let passages: Vec<(u64, PhraseRows)> = (0..400u64)
        .map(|p| {
            let rows = random_rows(&mut rng, dim, 12);
            let center = &centers[(p as usize) % topics];
            let shift = |values: &[f32]| -> Vec<f32> {
                values
                    .chunks(dim)
                    .flat_map(|v| v.iter().zip(center).map(|(x, c)| 0.3 * x + 2.0 * c))
                    .collect()
            };
            let rows = PhraseRows::new(
                dim,
                rows.tokens().to_vec(),
                shift(rows.start_values()),
                shift(rows.end_values()),
            )
            .unwrap();
            (p, rows)
        })
        .collect();
    let mut index = PhraseIndex::build(dim, passages, Device::Cpu).unwrap();
    index
        .build_ivf(&PhraseIvfConfig {
            nlist: 32,
            ..PhraseIvfConfig::default()
        })
        .unwrap();
    let exact = PhraseSearchOptions {
        k: 10,
        side_k: 64,
        ..PhraseSearchOptions::default()
    };
    let probing = PhraseSearchOptions {
        nprobe: Some(4),
        ..exact
    };
    let (mut found, mut total) = (0, 0);
    for q in 0..40 {
        let center = &centers[q % topics];
        let mut vector = || -> Vec<f32> {
            center
                .iter()
                .map(|c| c + 0.5 * rng.normal() as f32)
                .collect()
        };
        let query = PhraseQuery {
            start: vector(),
            end: vector(),
        };
        let keys = |options: &PhraseSearchOptions| -> Vec<_> {
            index
                .search(&query, options)
                .unwrap()
                .iter()
                .map(key)
                .collect()
        };
        let (truth, got) = (keys(&exact), keys(&probing));
        total += truth.len();
        found += truth.iter().filter(|t| got.contains(t)).count();
    }
    let recall = found as f64 / total as f64;
    assert!(
        recall >= 0.9,
        "recall@10 of probing 4 of 32 lists: {recall}"
    );
}

#[test]
fn probing_is_refused_without_an_index_or_with_no_list_and_building_needs_enough_rows() {
    let mut rng = SplitMix64::new(1);
    let passages = vec![(1, random_rows(&mut rng, 2, 6))];
    let mut index = PhraseIndex::build(2, passages, Device::Cpu).unwrap();
    let query = PhraseQuery {
        start: vec![1.0, 0.0],
        end: vec![0.0, 1.0],
    };
    let probing = PhraseSearchOptions {
        nprobe: Some(2),
        ..PhraseSearchOptions::default()
    };
    let err = index.search(&query, &probing).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("was not built"),
        "{err}"
    );
    assert_eq!(index.ivf_lists(), None);

    let too_many = PhraseIvfConfig {
        nlist: index.token_count() + 1,
        ..PhraseIvfConfig::default()
    };
    let err = index.build_ivf(&too_many).unwrap_err();
    assert!(
        err.to_string().contains("needs at least as many rows"),
        "{err}"
    );

    index
        .build_ivf(&PhraseIvfConfig {
            nlist: 1,
            ..PhraseIvfConfig::default()
        })
        .unwrap();
    let err = index
        .search(
            &query,
            &PhraseSearchOptions {
                nprobe: Some(0),
                ..probing
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("at least 1 list"), "{err}");
    assert!(!index.search(&query, &probing).unwrap().is_empty());
}
