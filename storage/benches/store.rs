//! Storage figures: ingest throughput (no embedding), generation write and load throughput,
//! and disk bytes per stored vector against 4·d.
//!
//! `cargo bench -p realm-storage --bench store` (options: `--passages N --dim D`).

use std::time::Instant;

mod common;

use common::arg;
use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};

fn main() {
    let n = arg("--passages", 100_000);
    let dim = arg("--dim", 384);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::create(dir.path()).expect("create");

    // A deterministic pseudo-random text of about 60 words per passage.
    let words = [
        "river",
        "empire",
        "quantum",
        "protein",
        "orchestra",
        "glacier",
        "senate",
        "algebra",
        "harbor",
        "novel",
        "volcano",
        "enzyme",
        "dynasty",
        "satellite",
        "theorem",
        "cathedral",
    ];
    let passage = |i: usize| {
        let text: Vec<&str> = (0..60)
            .map(|j| words[(i * 7 + j * 13) % words.len()])
            .collect();
        NewPassage::new(format!("Article {i}"), text.join(" ")).with_external_id(format!("doc-{i}"))
    };

    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<NewPassage> = chunk.iter().map(|&i| passage(i)).collect();
        db.insert(&batch).expect("insert");
    }
    let ingest = start.elapsed().as_secs_f64();
    println!(
        "ingest: {n} passages in {ingest:.2} s = {:.0} passages/s (no embedding, batches of 1000)",
        n as f64 / ingest
    );

    for dtype in [Dtype::F32, Dtype::F16] {
        let mut w = db
            .begin_generation(GenerationSpec::new("bench", dim as u32, dtype))
            .expect("begin");
        let ids: Vec<u64> = (0..n as u64).collect();
        let start = Instant::now();
        for chunk in ids.chunks(1024) {
            let values: Vec<f32> = chunk
                .iter()
                .flat_map(|&id| (0..dim).map(move |j| ((id as usize * 31 + j) % 97) as f32 / 97.0))
                .collect();
            w.write(chunk, &values).expect("write");
        }
        let generation = w.commit().expect("commit");
        let write = start.elapsed().as_secs_f64();
        // Collect the previous generation so the disk figure counts this one only.
        db.gc(0).expect("gc");
        let bytes = (n * dim * 4) as f64;
        println!(
            "generation {generation} ({dtype}): wrote {n} x {dim} in {write:.2} s = {:.2} GB/s of f32 input",
            bytes / write / 1e9
        );
        let snap = db.snapshot().expect("snapshot");
        let start = Instant::now();
        let matrix = snap.vectors().expect("load");
        let load = start.elapsed().as_secs_f64();
        assert_eq!(matrix.rows(), n);
        println!(
            "generation {generation} ({dtype}): loaded {} rows in {load:.3} s = {:.2} GB/s of f32 output",
            matrix.rows(),
            bytes / load / 1e9
        );
        drop(snap);
        let stats = db.stats().expect("stats");
        let vector_bytes = stats.disk_bytes["vectors"] + stats.disk_bytes["vector_index"];
        println!(
            "generation {generation} ({dtype}): {:.1} disk bytes per vector (blocks + index) vs 4·d = {}; ratio {:.3}",
            vector_bytes as f64 / n as f64,
            4 * dim,
            vector_bytes as f64 / n as f64 / (4 * dim) as f64
        );
    }
}
