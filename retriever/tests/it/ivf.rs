//! Approximate (IVF) indexes through the public API: every list probed with re-scoring is
//! exact search (a proptest against a brute-force oracle, with ingestion, deletes and
//! reopening), an index published after a snapshot is invisible to it, recall holds after
//! ingesting into an indexed generation, and the larger-than-memory paths (lists read per
//! search, rows read from the store, exact search streamed) rank as the in-memory ones do.

use std::collections::HashSet;

use proptest::prelude::*;
use realm_retriever::{IvfConfig, Retriever, RetrieverOptions, SearchOptions};
use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};
use tch::Tensor;

/// The CPU settings of `vectors` (host scan, or the device-tensor path CUDA takes) with a
/// memory budget: 0 reads lists and rows from the store per search.
fn options(host_scan: bool, memory_budget_bytes: usize) -> RetrieverOptions {
    RetrieverOptions {
        memory_budget_bytes,
        ..crate::vectors::cpu_options(host_scan)
    }
}

fn config(nlist: usize) -> IvfConfig {
    IvfConfig {
        nlist,
        ..IvfConfig::default()
    }
}

/// Passages with these vectors, committed as one generation in blocks of three.
fn store(db: &Db, vectors: &[Vec<f32>]) -> Vec<u64> {
    let batch: Vec<NewPassage> = (0..vectors.len())
        .map(|i| NewPassage::new(format!("p{i}"), format!("passage {i}")))
        .collect();
    let ids: Vec<u64> = db.insert(&batch).unwrap().iter().map(|o| o.id()).collect();
    let dim = vectors[0].len();
    let mut writer = db
        .begin_generation(GenerationSpec::new("raw", dim as u32, Dtype::F32))
        .unwrap();
    for (part, rows) in ids.chunks(3).zip(vectors.chunks(3)) {
        writer.write(part, &rows.concat()).unwrap();
    }
    writer.commit().unwrap();
    ids
}

/// Inserts passages with their rows in the current generation (ingestion).
fn ingest(db: &Db, vectors: &[Vec<f32>]) -> Vec<u64> {
    let generation = db.current_generation().unwrap().unwrap();
    let batch: Vec<NewPassage> = (0..vectors.len())
        .map(|i| NewPassage::new("more", format!("ingested {i}")))
        .collect();
    let rows: Vec<Option<&[f32]>> = vectors.iter().map(|v| Some(v.as_slice())).collect();
    db.insert_with_vectors(&batch, generation, &rows)
        .unwrap()
        .iter()
        .map(|o| o.id())
        .collect()
}

/// The exact top-k by brute force: score descending, then id ascending. Scores are summed
/// from +0, so a row of −0 products ties with +0 and the tie goes to the lower id.
fn oracle(rows: &[(u64, Vec<f32>)], q: &[f32], k: usize) -> Vec<(u64, f32)> {
    let mut scored: Vec<(u64, f32)> = rows
        .iter()
        .map(|(id, v)| (*id, v.iter().zip(q).fold(0.0, |s, (a, b)| s + a * b)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

fn query(q: &[f32]) -> Tensor {
    Tensor::from_slice(q).view([1, q.len() as i64])
}

/// Values on a grid of eighths, so every inner product is exact in f32 and ties are common.
fn grid_vector(dim: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((-8i32..=8).prop_map(|v| v as f32 / 8.0), dim)
}

#[derive(Clone, Debug)]
enum Op {
    Ingest(Vec<Vec<f32>>),
    Delete(usize),
    Index(usize),
    Reopen,
}

fn op(dim: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(grid_vector(dim), 1..6).prop_map(Op::Ingest),
        2 => any::<usize>().prop_map(Op::Delete),
        1 => (1usize..6).prop_map(Op::Index),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn probing_every_list_with_rescoring_is_exact_search(
        (initial, ops, queries) in (2usize..6).prop_flat_map(|dim| (
            prop::collection::vec(grid_vector(dim), 6..40),
            prop::collection::vec(op(dim), 1..8),
            prop::collection::vec(grid_vector(dim), 1..4),
        )),
        k in 1usize..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::create(dir.path()).unwrap();
        let ids = store(&db, &initial);
        let mut live: Vec<(u64, Vec<f32>)> = ids.into_iter().zip(initial.iter().cloned()).collect();
        let mut nlist = 3.min(live.len());
        Retriever::new(db.clone(), options(true, 8 << 30))
            .build_index(db.current_generation().unwrap().unwrap(), &config(nlist), None)
            .unwrap();
        for op in ops {
            match op {
                Op::Ingest(rows) => {
                    let new = ingest(&db, &rows);
                    live.extend(new.into_iter().zip(rows));
                }
                Op::Delete(i) if live.len() > 1 => {
                    let (id, _) = live.remove(i % live.len());
                    db.delete(&[id]).unwrap();
                }
                Op::Delete(_) => {}
                Op::Index(n) => {
                    let generation = db.current_generation().unwrap().unwrap();
                    let rows = db.generation(generation).unwrap().vector_count as usize;
                    nlist = n.min(rows);
                    Retriever::new(db.clone(), options(true, 8 << 30))
                        .build_index(generation, &config(nlist), None)
                        .unwrap();
                }
                Op::Reopen => {
                    drop(db);
                    db = Db::open(dir.path()).unwrap();
                }
            }
        }
        let report = db.verify().unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Every path: lists in memory or read per search, rows from the matrix (host or
        // device tensor) or from the store.
        for (host_scan, budget) in [(true, 8usize << 30), (false, 8 << 30), (true, 0)] {
            let retriever = Retriever::new(db.clone(), options(host_scan, budget));
            let snapshot = retriever.snapshot().unwrap();
            let info = snapshot.storage().index().unwrap().expect("an index");
            let all = SearchOptions::probing(info.nlist as usize);
            for q in &queries {
                let expected = oracle(&live, q, k);
                let got = snapshot.top_k_with(&query(q), k, &all).unwrap().remove(0);
                prop_assert_eq!(&got, &expected, "index path, host_scan {}, budget {}", host_scan, budget);
                // Codes alone rank approximately, but never return a deleted passage.
                let codes_only = SearchOptions { rescore: false, ..all.clone() };
                let approx = snapshot.top_k_with(&query(q), k, &codes_only).unwrap().remove(0);
                prop_assert!(
                    approx.iter().all(|(id, _)| live.iter().any(|(l, _)| l == id)),
                    "a deleted passage came back: {:?}", approx
                );
                let exact = snapshot.top_k_with(&query(q), k, &SearchOptions::exact()).unwrap().remove(0);
                prop_assert_eq!(&exact, &expected, "exact path, host_scan {}, budget {}", host_scan, budget);
            }
        }
    }
}

/// Clustered vectors: `n` rows around `centers` random directions, deterministic.
fn clustered(n: usize, dim: usize, centers: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = realm_retriever::random::SplitMix64::new(seed);
    let middles: Vec<Vec<f32>> = (0..centers)
        .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &middles[(rng.next_u64() as usize + i) % centers];
            let v: Vec<f32> = c.iter().map(|x| x + 0.6 * rng.normal() as f32).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn recall(
    retriever: &Retriever,
    live: &[(u64, Vec<f32>)],
    queries: &[Vec<f32>],
    nprobe: usize,
) -> f64 {
    let snapshot = retriever.snapshot().unwrap();
    let options = SearchOptions::probing(nprobe);
    let mut found = 0;
    for q in queries {
        let truth: HashSet<u64> = oracle(live, q, 10).into_iter().map(|(id, _)| id).collect();
        let got = snapshot
            .top_k_with(&query(q), 10, &options)
            .unwrap()
            .remove(0);
        found += got.iter().filter(|(id, _)| truth.contains(id)).count();
    }
    found as f64 / (10 * queries.len()) as f64
}

#[test]
fn recall_holds_after_ingesting_a_fifth_more_into_an_indexed_generation() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    let dim = 16;
    // One draw, so that base rows, ingested rows and queries share the same clusters.
    let mut rows = clustered(3650, dim, 40, 1);
    let queries = rows.split_off(3600);
    let more = rows.split_off(3000);
    let ids = store(&db, &rows);
    let retriever = Retriever::new(db.clone(), options(true, 8 << 30));
    let info = retriever
        .build_index(db.current_generation().unwrap().unwrap(), &config(32), None)
        .unwrap();
    assert_eq!(info.entries, 3000);
    let mut live: Vec<(u64, Vec<f32>)> = ids.into_iter().zip(rows).collect();
    let before = recall(&retriever, &live, &queries, 4);
    let new = ingest(&db, &more);
    live.extend(new.into_iter().zip(more));
    let snapshot = retriever.snapshot().unwrap();
    let info = snapshot.storage().index().unwrap().unwrap();
    assert_eq!(info.entries, 3600, "every ingested row has its entry");
    let after = recall(&retriever, &live, &queries, 4);
    assert!(before >= 0.8, "recall@10 with 4 of 32 lists is {before}");
    assert!(
        after >= before - 0.05,
        "recall fell from {before} to {after}"
    );
    assert!(db.verify().unwrap().problems.is_empty());
}

#[test]
fn an_index_published_after_a_snapshot_is_invisible_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    let rows = clustered(200, 8, 5, 4);
    store(&db, &rows);
    let retriever = Retriever::new(db.clone(), options(true, 8 << 30));
    let before = retriever.snapshot().unwrap();
    let generation = db.current_generation().unwrap().unwrap();
    let first = retriever.build_index(generation, &config(4), None).unwrap();
    let middle = retriever.snapshot().unwrap();
    let second = retriever.build_index(generation, &config(8), None).unwrap();
    let after = retriever.snapshot().unwrap();
    assert_eq!(before.storage().index().unwrap(), None);
    assert_eq!(
        middle.storage().index().unwrap().map(|i| i.version),
        Some(first.version)
    );
    assert_eq!(
        after
            .storage()
            .index()
            .unwrap()
            .map(|i| (i.version, i.nlist)),
        Some((second.version, 8))
    );
    // Asking the snapshot without an index for an index search falls back to exact search.
    let q = query(&rows[0]);
    let exact = before.top_k_with(&q, 5, &SearchOptions::exact()).unwrap();
    assert_eq!(
        before
            .top_k_with(&q, 5, &SearchOptions::probing(1))
            .unwrap(),
        exact
    );
}

#[test]
fn small_generations_are_searched_exactly_unless_an_index_search_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    let mut rows = clustered(420, 8, 20, 5);
    let queries = rows.split_off(400);
    store(&db, &rows);
    let retriever = Retriever::new(db.clone(), options(true, 8 << 30));
    retriever
        .build_index(db.current_generation().unwrap().unwrap(), &config(20), None)
        .unwrap();
    let snapshot = retriever.snapshot().unwrap();
    let no_rescore = SearchOptions {
        rescore: false,
        ..SearchOptions::probing(1)
    };
    let mut differs = false;
    for q in queries {
        let exact = snapshot
            .top_k_with(&query(&q), 10, &SearchOptions::exact())
            .unwrap();
        // 400 rows are below the default threshold: the default options search exactly.
        assert_eq!(snapshot.top_k(&query(&q), 10).unwrap(), exact);
        differs |= snapshot.top_k_with(&query(&q), 10, &no_rescore).unwrap() != exact;
    }
    assert!(differs, "one list and codes alone never changed a ranking");
}

#[test]
fn building_an_index_validates_its_list_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    store(&db, &clustered(10, 4, 2, 7));
    let retriever = Retriever::new(db.clone(), options(true, 8 << 30));
    let generation = db.current_generation().unwrap().unwrap();
    let err = retriever
        .build_index(generation, &config(11), None)
        .unwrap_err();
    assert!(err.to_string().contains("11 lists"), "{err}");
    assert!(db.indexes(generation).unwrap().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Rows that differ by less than a code step: codes alone cannot rank them, so the
    /// re-scoring must go as deep as the error bound says, not only as deep as k.
    #[test]
    fn near_duplicates_are_ranked_exactly_by_bounded_rescoring(
        noise in prop::collection::vec(prop::collection::vec(-8i32..=8, 4), 40..90),
        query in grid_vector(4),
        k in 1usize..25,
    ) {
        let centers = [[0.5f32, -0.25, 0.75, 0.0], [-0.5, 0.5, 0.25, 0.5]];
        // Values on a grid of 1/1024 (exact products with the query's eighths).
        let rows: Vec<Vec<f32>> = noise
            .iter()
            .enumerate()
            .map(|(i, n)| {
                centers[i % 2]
                    .iter()
                    .zip(n)
                    .map(|(c, d)| c + *d as f32 / 1024.0)
                    .collect()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path()).unwrap();
        let ids = store(&db, &rows);
        Retriever::new(db.clone(), options(true, 8 << 30))
            .build_index(db.current_generation().unwrap().unwrap(), &config(2), None)
            .unwrap();
        let live: Vec<(u64, Vec<f32>)> = ids.into_iter().zip(rows).collect();
        // Codes scored on the host, and on the device-tensor path CUDA takes.
        for host_scan in [true, false] {
            let snapshot = Retriever::new(db.clone(), options(host_scan, 8 << 30)).snapshot().unwrap();
            let got = snapshot
                .top_k_with(&self::query(&query), k, &SearchOptions::probing(2))
                .unwrap()
                .remove(0);
            prop_assert_eq!(got, oracle(&live, &query, k), "host_scan {}", host_scan);
        }
        // One list probed: both paths re-score exactly the rows of that list.
        let one: Vec<_> = [true, false]
            .into_iter()
            .map(|host_scan| {
                Retriever::new(db.clone(), options(host_scan, 8 << 30))
                    .snapshot()
                    .unwrap()
                    .top_k_with(&self::query(&query), k, &SearchOptions::probing(1))
                    .unwrap()
            })
            .collect();
        prop_assert_eq!(&one[0], &one[1]);
    }
}
