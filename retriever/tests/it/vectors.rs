//! What a trainer reads from a pinned generation: the stored vectors of chosen passages
//! (`SearchSnapshot::vectors_of`) and the exact top-k for its own query vectors
//! (`SearchSnapshot::top_k`), ties broken by passage id.

use realm_retriever::{Compute, Device, EncoderConfig, Error, Retriever, RetrieverOptions};
use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};
use tch::{Kind, Tensor};

/// CPU settings: host rows scanned directly, or (`host_scan` off) the device-tensor path
/// that CUDA takes, in small chunks so that candidates cross chunk boundaries.
pub(crate) fn cpu_options(host_scan: bool) -> RetrieverOptions {
    RetrieverOptions {
        encoder: EncoderConfig {
            device: Device::Cpu,
            ..EncoderConfig::default()
        },
        compute: Compute::F32,
        score_chunk_rows: if host_scan { 0 } else { 3 },
        host_scan,
        ..RetrieverOptions::default()
    }
}

/// Inserts one passage per vector and commits them as a generation without an encoder,
/// written in descending id order and in blocks of two, so that matrix rows are neither in
/// id order nor in one block. Returns the passage ids, in the order of `vectors`.
fn store(db: &Db, vectors: &[Vec<f32>]) -> Vec<u64> {
    let batch: Vec<NewPassage> = (0..vectors.len())
        .map(|i| NewPassage::new(format!("p{i}"), format!("passage {i}")))
        .collect();
    let ids: Vec<u64> = db.insert(&batch).unwrap().iter().map(|o| o.id()).collect();
    let dim = vectors[0].len();
    let mut writer = db
        .begin_generation(GenerationSpec::new("raw", dim as u32, Dtype::F32))
        .unwrap();
    let order: Vec<usize> = (0..vectors.len()).rev().collect();
    for part in order.chunks(2) {
        let part_ids: Vec<u64> = part.iter().map(|&i| ids[i]).collect();
        let values: Vec<f32> = part.iter().flat_map(|&i| vectors[i].clone()).collect();
        writer.write(&part_ids, &values).unwrap();
    }
    writer.commit().unwrap();
    ids
}

/// A tensor's values, row-major.
fn values(t: &Tensor) -> Vec<f32> {
    Vec::try_from(&t.contiguous().view(-1)).unwrap()
}

/// `vectors_of` against the storage snapshot's own rows for `ids`, in order.
fn assert_rows_match_storage(snapshot: &realm_retriever::SearchSnapshot, ids: &[u64]) {
    let stored = snapshot.storage().vectors().unwrap();
    let dim = stored.dim;
    let expected: Vec<f32> = ids
        .iter()
        .flat_map(|id| {
            let row = stored.ids.iter().position(|x| x == id).unwrap();
            stored.values[row * dim..(row + 1) * dim].to_vec()
        })
        .collect();
    let got = snapshot.vectors_of(ids).unwrap();
    assert_eq!(got.size(), vec![ids.len() as i64, dim as i64]);
    assert_eq!(got.kind(), Kind::Float);
    assert_eq!(got.device(), Device::Cpu);
    assert!(!got.requires_grad());
    assert_eq!(values(&got), expected);
}

#[test]
fn vectors_of_returns_the_stored_rows_in_the_order_asked() {
    for host_scan in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path()).unwrap();
        let vectors: Vec<Vec<f32>> = (0..7)
            .map(|i| vec![i as f32, 0.5 - i as f32, (i * i) as f32 / 3.0])
            .collect();
        let ids = store(&db, &vectors);
        let retriever = Retriever::new(db.clone(), cpu_options(host_scan));
        let snapshot = retriever.snapshot().unwrap();

        let asked = [ids[4], ids[0], ids[6], ids[4], ids[2]];
        assert_rows_match_storage(&snapshot, &asked);
        assert_rows_match_storage(&snapshot, &ids);
        assert_eq!(snapshot.vectors_of(&[]).unwrap().size(), vec![0, 3]);

        // A passage ingested with its vector later: a new snapshot extends the matrix and
        // sees the row.
        let late = db
            .insert_with_vectors(
                &[NewPassage::new("late", "late text")],
                snapshot.generation_id().unwrap(),
                &[Some(&[9.0, 8.0, 7.0])],
            )
            .unwrap()[0]
            .id();
        let later = retriever.snapshot().unwrap();
        assert_rows_match_storage(&later, &[late, ids[1]]);
        assert_eq!(values(&later.vectors_of(&[late]).unwrap()), [9.0, 8.0, 7.0]);
    }
}

#[test]
fn vectors_of_rejects_ids_without_a_row_in_the_snapshot() {
    for host_scan in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path()).unwrap();
        let ids = store(&db, &[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]]);
        let retriever = Retriever::new(db.clone(), cpu_options(host_scan));
        let generation = db.current_generation().unwrap().unwrap();
        // Pinned before the ingest below, searched (and so given its matrix) after it.
        let early = retriever.snapshot().unwrap();

        let unknown = 1_000_000;
        let pending = db
            .insert(&[NewPassage::new("pending", "no vector")])
            .unwrap()[0]
            .id();
        let late = db
            .insert_with_vectors(
                &[NewPassage::new("late", "late text")],
                generation,
                &[Some(&[2.0, 2.0])],
            )
            .unwrap()[0]
            .id();
        db.delete(&[ids[1]]).unwrap();
        let now = retriever.snapshot().unwrap();
        assert_rows_match_storage(&now, &[late, ids[0]]);

        let rejected = |snapshot: &realm_retriever::SearchSnapshot, id: u64| match snapshot
            .vectors_of(&[ids[0], id])
        {
            Err(Error::InvalidInput { reason }) => {
                assert!(reason.contains(&format!("passage {id} ")), "{reason}");
            }
            other => panic!("passage {id}: expected InvalidInput, got {other:?}"),
        };
        rejected(&now, unknown);
        rejected(&now, pending);
        rejected(&now, ids[1]);
        // The early snapshot shares the extended matrix but not the rows it cannot see.
        rejected(&early, late);
        assert_rows_match_storage(&early, &[ids[1], ids[0]]);
    }
}

#[test]
fn top_k_orders_tied_passages_by_id() {
    // Passages 1, 3, 4 and 6 have the same vector, the best for the query; 0 is next; the
    // rest score lower. Rows are stored in descending id order, so an unstable or row-order
    // selection would return the ties the other way round.
    let best = vec![1.0, 2.0];
    let vectors = vec![
        vec![1.0, 1.5],
        best.clone(),
        vec![0.0, 1.0],
        best.clone(),
        best.clone(),
        vec![-1.0, 0.0],
        best,
    ];
    for host_scan in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path()).unwrap();
        let ids = store(&db, &vectors);
        let retriever = Retriever::new(db.clone(), cpu_options(host_scan));
        let snapshot = retriever.snapshot().unwrap();
        // 1 query takes the host scan when it is on, 6 queries the chunked GEMM.
        for batch in [1usize, 6] {
            let queries = Tensor::from_slice(&[1.0f32, 1.0].repeat(batch)).view([batch as i64, 2]);
            let tied = [ids[1], ids[3], ids[4], ids[6]];
            for k in 1..=5 {
                let ranked = snapshot.top_k(&queries, k).unwrap();
                assert_eq!(ranked.len(), batch);
                let mut expected: Vec<(u64, f32)> =
                    tied.iter().take(k).map(|&id| (id, 3.0)).collect();
                if k == 5 {
                    expected.push((ids[0], 2.5));
                }
                for row in ranked {
                    assert_eq!(row, expected, "k {k}, batch {batch}, host_scan {host_scan}");
                }
            }
        }
    }
}

/// The first exact search of a shape measures the applicable paths and keeps the fastest;
/// whichever it keeps, every search of that shape returns the same ranking and scores.
#[test]
fn the_exact_path_is_measured_once_per_shape_and_never_changes_results() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    let vectors: Vec<Vec<f32>> = (0..300)
        .map(|i| {
            (0..8)
                .map(|d| ((i * 7 + d * 13) % 17) as f32 / 16.0 - 0.5)
                .collect()
        })
        .collect();
    store(&db, &vectors);
    let retriever = Retriever::new(db, cpu_options(true));
    let snapshot = retriever.snapshot().unwrap();
    assert!(retriever.exact_paths().is_empty());
    for batch in [1usize, 8] {
        let q: Vec<f32> = (0..batch * 8)
            .map(|i| ((i * 5) % 11) as f32 / 10.0 - 0.5)
            .collect();
        let q = Tensor::from_slice(&q).view([batch as i64, 8]);
        let first = snapshot.top_k(&q, 7).unwrap();
        for _ in 0..3 {
            assert_eq!(snapshot.top_k(&q, 7).unwrap(), first);
        }
    }
    let shapes: Vec<u32> = retriever
        .exact_paths()
        .iter()
        .map(|(s, _)| s.batch_class)
        .collect();
    assert_eq!(shapes, vec![0, 3], "{:?}", retriever.exact_paths());
}
