//! The in-database query path: exact MIPS against a brute-force oracle, deterministic ties,
//! the per-generation matrix cache, incremental ingestion and checkpoints stored in the DB.

use proptest::prelude::*;
use realm_retriever::{BuildOptions, Compute, Error, Retriever, RetrieverOptions};
use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};
use realm_testing_torch::{FACTS, cpu_options, facts, temp_db, tiny_encoder};
use tch::Tensor;

/// Writes `vectors` (one row per live passage, in id order, inserting passages as needed) as
/// a committed generation without an encoder.
fn generation_from(db: &Db, dim: usize, vectors: &[Vec<f32>]) -> u64 {
    let existing = db.snapshot().unwrap().passage_count().unwrap() as usize;
    if existing < vectors.len() {
        let batch: Vec<NewPassage> = (existing..vectors.len())
            .map(|i| NewPassage::new(format!("p{i}"), format!("passage {i}")))
            .collect();
        db.insert(&batch).unwrap();
    }
    let mut w = db
        .begin_generation(GenerationSpec::new("raw", dim as u32, Dtype::F32))
        .unwrap();
    let ids = w.missing().unwrap();
    assert_eq!(ids.len(), vectors.len(), "one vector per live passage");
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    // Several small blocks, so that the matrix is assembled across blocks.
    for (chunk_ids, chunk) in ids.chunks(5).zip(flat.chunks(5 * dim)) {
        w.write(chunk_ids, chunk).unwrap();
    }
    w.commit().unwrap()
}

/// Brute force: scores in f64, sorted by score descending then id ascending.
fn oracle(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<(u64, f32)> {
    let mut scored: Vec<(u64, f64)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s: f64 = v
                .iter()
                .zip(query)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            (i as u64, s)
        })
        .collect();
    scored.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored.into_iter().map(|(i, s)| (i, s as f32)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Small integer coordinates make exact ties common; the ranking must still equal the
    /// oracle's, ties broken by passage id.
    #[test]
    fn top_k_equals_brute_force(
        dim in 1usize..6,
        rows in 1usize..40,
        k in 1usize..12,
        chunk in 0usize..8,
        nq in prop_oneof![Just(1usize), Just(3), Just(9)],
        half in any::<bool>(),
        host_scan in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 5) as f32 - 2.0
        };
        let vectors: Vec<Vec<f32>> = (0..rows).map(|_| (0..dim).map(|_| next()).collect()).collect();
        // 1 and 3 queries take the host scan, 9 the chunked GEMM path.
        let queries: Vec<Vec<f32>> = (0..nq).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let (_dir, db) = temp_db();
        generation_from(&db, dim, &vectors);
        // Chunks of 1..7 rows put ties on chunk edges; 0 is the automatic size.
        // Small integers are exact in f16 too, so f16 must match the oracle exactly.
        let compute = if half { Compute::F16 } else { Compute::F32 };
        // host_scan off takes the device-tensor path that CUDA uses, here on the CPU.
        let options = RetrieverOptions { score_chunk_rows: chunk, compute, host_scan, ..cpu_options() };
        let retriever = Retriever::new(db, options);
        let snap = retriever.snapshot().unwrap();
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let q = Tensor::from_slice(&flat).view([nq as i64, dim as i64]);
        let got = snap.top_k(&q, k).unwrap();
        for (query, row) in queries.iter().zip(got) {
            prop_assert_eq!(row, oracle(&vectors, query, k));
        }
    }
}

#[test]
fn hits_carry_passages_probabilities_and_generation() {
    let (_dir, db) = temp_db();
    let vectors = vec![
        vec![1.0, 0.0],
        vec![0.0, 1.0],
        vec![0.7, 0.7],
        vec![-1.0, 0.0],
    ];
    let g = generation_from(&db, 2, &vectors);
    let retriever = Retriever::new(db, cpu_options());
    let snap = retriever.snapshot().unwrap();
    let hits = snap
        .search_vectors(&Tensor::from_slice(&[1.0f32, 0.1]).view([1, 2]), 3)
        .unwrap()
        .remove(0);
    assert_eq!(
        hits.iter().map(|h| h.passage_id).collect::<Vec<_>>(),
        vec![0, 2, 1]
    );
    assert_eq!(hits[0].rank, 1);
    assert_eq!(hits[0].title, "p0");
    assert_eq!(hits[0].generation, g);
    let total: f32 = hits.iter().map(|h| h.prob).sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(hits[0].prob > hits[1].prob && hits[1].prob > hits[2].prob);
    // k beyond the corpus returns every passage; a wrong query dimension is an error.
    let all = snap
        .top_k(&Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]), 99)
        .unwrap();
    assert_eq!(all[0].len(), 4);
    let err = snap
        .top_k(&Tensor::from_slice(&[1.0f32, 0.0, 0.0]).view([1, 3]), 2)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    // A generation without an encoder cannot embed text, and says so.
    assert!(matches!(
        snap.search("text", 2),
        Err(Error::NoEncoder { .. })
    ));
}

#[test]
fn matrices_are_cached_per_generation_and_extended_on_ingest() {
    for host_scan in [true, false] {
        cache_and_extension(RetrieverOptions {
            host_scan,
            ..cpu_options()
        });
    }
}

fn cache_and_extension(options: RetrieverOptions) {
    let (_dir, db) = temp_db();
    let g1 = generation_from(&db, 2, &[vec![1.0, 0.0], vec![0.0, 1.0]]);
    let retriever = Retriever::new(db.clone(), options);
    let q = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]);

    let s1 = retriever.snapshot().unwrap();
    s1.top_k(&q, 1).unwrap();
    assert_eq!(retriever.matrix_loads(), 1);
    // A second snapshot of the same generation reuses the resident matrix.
    let s2 = retriever.snapshot().unwrap();
    s2.top_k(&q, 1).unwrap();
    assert_eq!(retriever.matrix_loads(), 1);
    drop(s2);

    // Incremental ingestion: a new passage with a row in the current generation.
    let out = db
        .insert_with_vectors(
            &[NewPassage::new("new", "new text")],
            g1,
            &[Some(&[5.0, 5.0])],
        )
        .unwrap();
    let s3 = retriever.snapshot().unwrap();
    assert_eq!(s3.top_k(&q, 1).unwrap()[0][0].0, out[0].id());
    assert_eq!(retriever.matrix_loads(), 2, "the matrix is extended once");
    // The older snapshot still ranks without the new row.
    assert_eq!(s1.top_k(&q, 3).unwrap()[0].len(), 2);

    // Deleted passages leave the results of later snapshots only.
    db.delete(&[out[0].id()]).unwrap();
    let s4 = retriever.snapshot().unwrap();
    assert!(
        s4.top_k(&q, 3).unwrap()[0]
            .iter()
            .all(|(id, _)| *id != out[0].id())
    );
    assert_eq!(s3.top_k(&q, 1).unwrap()[0][0].0, out[0].id());

    // Publish generation 2: new snapshots use it; s1 keeps generation 1.
    let g2 = generation_from(&db, 2, &[vec![-1.0, 0.0], vec![0.0, -1.0], vec![0.0, 0.0]]);
    let s5 = retriever.snapshot().unwrap();
    assert_eq!(s5.generation_id(), Some(g2));
    // Live passages are 0, 1 and 3 (2 was deleted); 3 has the vector [0, 0].
    assert_eq!(s5.top_k(&q, 1).unwrap()[0][0].0, 3);
    assert_eq!(s1.generation_id(), Some(g1));
    assert_eq!(s1.top_k(&q, 1).unwrap()[0][0].0, 0);
    let loads = retriever.matrix_loads();
    // While s1 lives, time travel to generation 1 shares its matrix...
    let travel = retriever.snapshot_at(g1).unwrap();
    travel.top_k(&q, 1).unwrap();
    assert_eq!(retriever.matrix_loads(), loads);
    drop(travel);
    // ...and once every user of generation 1 is gone, its matrix is freed: a later
    // time-travel search has to load it again.
    drop((s1, s3, s4));
    let travel = retriever.snapshot_at(g1).unwrap();
    travel.top_k(&q, 1).unwrap();
    assert_eq!(retriever.matrix_loads(), loads + 1);
}

#[test]
fn build_ingest_and_reopen_without_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let texts = &FACTS[..4];
    let encoder = tiny_encoder(7);
    let generation;
    {
        let db = Db::create(&path).unwrap();
        let retriever = Retriever::new(db.clone(), cpu_options());
        // Before any generation exists, ingest stores passages as pending.
        retriever.ingest(&facts(4)).unwrap();
        assert_eq!(db.snapshot().unwrap().pending().unwrap().len(), 4);
        let mut seen = Vec::new();
        let mut progress = |p: realm_retriever::Progress| seen.push(p.done);
        generation = retriever
            .build_generation(
                &encoder,
                BuildOptions {
                    progress: Some(&mut progress),
                    ..BuildOptions::default()
                },
            )
            .unwrap();
        assert_eq!(seen.last(), Some(&4));
        let snap = retriever.snapshot().unwrap();
        assert!(snap.storage().pending().unwrap().is_empty());
        // The stored vector equals a fresh embedding of the same document.
        let expected = encoder.encode_docs(&[(texts[2].0, texts[2].1)]).unwrap();
        let stored = snap.storage().vector(2).unwrap().unwrap();
        let stored = Tensor::from_slice(&stored).view([1, -1]);
        assert!(f64::try_from((expected - stored).abs().max()).unwrap() < 1e-6);
        // Identical text gives the identical (normalized) vector: the top hit.
        let hits = snap
            .search(&format!("{} {}", texts[1].0, texts[1].1), 2)
            .unwrap();
        assert_eq!(hits[0].passage_id, 1);
        assert!((hits[0].score - 1.0).abs() < 1e-4);
        // Incremental ingestion embeds with the generation's encoder: searchable at once.
        let fresh = NewPassage::new(
            "Glacier",
            "The Aletsch Glacier is the largest glacier in the Alps.",
        )
        .with_external_id("glacier");
        let out = retriever.ingest(std::slice::from_ref(&fresh)).unwrap();
        let again = retriever.ingest(std::slice::from_ref(&fresh)).unwrap();
        assert_eq!(
            out[0].id(),
            again[0].id(),
            "re-ingesting an external id is idempotent"
        );
        let snap = retriever.snapshot().unwrap();
        assert_eq!(snap.generation_id(), Some(generation), "no rebuild");
        assert!(snap.storage().pending().unwrap().is_empty());
        let hits = snap
            .search(&format!("{} {}", fresh.title, fresh.text), 1)
            .unwrap();
        assert_eq!(hits[0].passage_id, out[0].id());
    }
    // Reopen: the encoder comes from the checkpoint stored in the database.
    let db = Db::open(&path).unwrap();
    let manifest = db.generation(generation).unwrap();
    assert_eq!(
        manifest.spec.provenance.checkpoint_id.as_deref(),
        Some(encoder.fingerprint().unwrap().as_str())
    );
    let retriever = Retriever::new(db, cpu_options());
    let hits = retriever
        .snapshot()
        .unwrap()
        .search(&format!("{} {}", texts[3].0, texts[3].1), 1)
        .unwrap();
    assert_eq!(hits[0].passage_id, 3);
}

#[test]
fn a_build_survives_passages_deleted_while_it_runs() {
    let (_dir, db) = temp_db();
    let batch: Vec<NewPassage> = (0..6)
        .map(|i| NewPassage::new(format!("t{i}"), format!("passage number {i}")))
        .collect();
    db.insert(&batch).unwrap();
    let options = RetrieverOptions {
        build_batch: 2,
        ..cpu_options()
    };
    let retriever = Retriever::new(db.clone(), options);
    // After the first batch is written, delete a passage of the third batch (4) and add one.
    let mut deleted = false;
    let mut progress = |_: realm_retriever::Progress| {
        if !deleted {
            deleted = true;
            db.delete(&[4]).unwrap();
            db.insert(&[NewPassage::new("late", "inserted during the build")])
                .unwrap();
        }
    };
    let generation = retriever
        .build_generation(
            &tiny_encoder(3),
            BuildOptions {
                progress: Some(&mut progress),
                ..BuildOptions::default()
            },
        )
        .unwrap();
    let snap = retriever.snapshot().unwrap();
    assert_eq!(snap.generation_id(), Some(generation));
    assert!(snap.storage().pending().unwrap().is_empty());
    let ids = snap.storage().vectors().unwrap().ids;
    assert_eq!(
        ids.len(),
        6,
        "5 original passages and the late one: {ids:?}"
    );
    assert!(!ids.contains(&4));
    assert!(retriever.db().verify().unwrap().problems.is_empty());
}

#[test]
fn a_generation_can_be_published_with_its_own_query_tower() {
    let dir = tempfile::tempdir().unwrap();
    let retriever = Retriever::new(Db::create(dir.path().join("db")).unwrap(), cpu_options());
    retriever
        .ingest(&[NewPassage::new(
            "Etna",
            "Mount Etna is a volcano in Sicily.",
        )])
        .unwrap();
    let (docs, queries) = (tiny_encoder(1), tiny_encoder(2));
    retriever
        .build_generation(
            &docs,
            BuildOptions {
                query_encoder: Some(&queries),
                ..BuildOptions::default()
            },
        )
        .unwrap();
    let snap = retriever.snapshot().unwrap();
    let manifest = snap.storage().generation().unwrap().clone();
    assert_eq!(manifest.query_encoders.len(), 1);
    assert_eq!(
        snap.query_encoder().unwrap().fingerprint().unwrap(),
        queries.fingerprint().unwrap()
    );
    assert_eq!(
        retriever
            .document_encoder(&manifest)
            .unwrap()
            .fingerprint()
            .unwrap(),
        docs.fingerprint().unwrap()
    );
    // The query tower embeds queries: the search score is its vector · the stored row.
    let q = queries.encode(&["volcano"]).unwrap();
    let row = snap.storage().vector(0).unwrap().unwrap();
    let expected: f32 = Vec::<f32>::try_from(&q.view(-1))
        .unwrap()
        .iter()
        .zip(&row)
        .map(|(a, b)| a * b)
        .sum();
    let hit = &snap.search("volcano", 1).unwrap()[0];
    assert!((hit.score - expected).abs() < 1e-5);
}
