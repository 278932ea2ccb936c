//! The cost of a follower's new snapshot while a writer ingests: catching up one handle's
//! views (what a follower does) against opening a fresh follower for every snapshot (what
//! followers did before they caught up), in the same process, on the same database, under
//! the same writer load.
//!
//! `cargo bench -p realm-storage --bench follower` (options: `--passages N` already stored,
//! `--snapshots R` per arm, `--dim D`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::arg;
use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};

fn passage(i: u64) -> NewPassage {
    NewPassage::new(
        format!("Article {i}"),
        format!("passage {i} about rivers, empires and glaciers"),
    )
}

fn vector(i: u64, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| ((i as usize * 31 + j) % 97) as f32 / 97.0)
        .collect()
}

/// Times `take` `rounds` times; returns the median and the mean in milliseconds.
fn time(rounds: usize, mut take: impl FnMut()) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            take();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms.iter().sum::<f64>() / ms.len() as f64)
}

fn main() {
    let n = arg("--passages", 20_000) as u64;
    let rounds = arg("--snapshots", 40);
    let dim = arg("--dim", 384);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::create(dir.path()).expect("create");
    for from in (0..n).step_by(1000) {
        let batch: Vec<NewPassage> = (from..(from + 1000).min(n)).map(passage).collect();
        db.insert(&batch).expect("insert");
    }
    let mut w = db
        .begin_generation(GenerationSpec::new("bench", dim as u32, Dtype::F32))
        .expect("begin");
    let ids = w.missing().expect("missing");
    let values: Vec<f32> = ids.iter().flat_map(|&i| vector(i, dim)).collect();
    w.write(&ids, &values).expect("write");
    let generation = w.commit().expect("commit");

    // The writer: 50 passages with their vectors every 5 ms, until both arms are done.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, db) = (stop.clone(), written.clone(), db.clone());
        std::thread::spawn(move || {
            let mut next = n;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<NewPassage> = (next..next + 50).map(passage).collect();
                let rows: Vec<Vec<f32>> = (next..next + 50).map(|i| vector(i, dim)).collect();
                let rows: Vec<Option<&[f32]>> = rows.iter().map(|r| Some(r.as_slice())).collect();
                db.insert_with_vectors(&batch, generation, &rows)
                    .expect("ingest");
                next += 50;
                written.fetch_add(50, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let reopen = time(rounds, || {
        let follower = Db::open_read_only(dir.path()).expect("open");
        let snapshot = follower.snapshot().expect("snapshot");
        snapshot.passage_count().expect("count");
    });
    let follower = Db::open_read_only(dir.path()).expect("open");
    let catch_up = time(rounds, || {
        let snapshot = follower.snapshot().expect("snapshot");
        snapshot.passage_count().expect("count");
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    println!(
        "follower snapshot while a writer ingests ({n} passages stored, {} ingested meanwhile, dim {dim}, {rounds} snapshots per arm):",
        written.load(Ordering::Relaxed)
    );
    println!(
        "  reopen per snapshot (baseline): median {:.2} ms, mean {:.2} ms",
        reopen.0, reopen.1
    );
    println!(
        "  catch-up (one follower):        median {:.2} ms, mean {:.2} ms",
        catch_up.0, catch_up.1
    );
    println!(
        "  speed-up: {:.1}x at the median, {:.1}x on the mean",
        reopen.0 / catch_up.0,
        reopen.1 / catch_up.1
    );
}
