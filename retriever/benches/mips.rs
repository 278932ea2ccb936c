//! Exact top-k MIPS through the public query path, side by side in one run (measured in
//! alternation, median time per round) with:
//! the memory-bandwidth bound measured on this machine, plain libtorch (one matmul + topk),
//! FAISS `IndexFlatIP` (Python, `pip install faiss-cpu numpy`), and f16 storage (with its
//! recall@k against exact f32).
//!
//! `cargo bench -p realm-retriever --bench mips -- [--sizes 100000,1000000] [--dim 384] [--k 10]`

use std::time::Instant;

use realm_retriever::{Compute, Device, EncoderConfig, Retriever, RetrieverOptions};
use tch::Tensor;

mod common;

use common::arg;

/// Deterministic uniform values in [-1, 1).
fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Read bandwidth of a plain multi-threaded sum over `data`, best of 3, in bytes/s.
fn bandwidth(data: &[f32]) -> f64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(data.len().div_ceil(threads))
                .map(|part| {
                    s.spawn(move || {
                        let mut acc = [0f32; 16];
                        for c in part.chunks_exact(16) {
                            for i in 0..16 {
                                acc[i] += c[i];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max(std::mem::size_of_val(data) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// QPS of each contender, measured in alternation (round r runs them in a rotated order),
/// from the median time per round: host noise hits all of them alike.
fn race(batch: usize, rounds: usize, contenders: &mut [&mut dyn FnMut(usize)]) -> Vec<f64> {
    for f in contenders.iter_mut() {
        f(0); // warm-up (and matrix load, and the first search's path measurement)
    }
    let n = contenders.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for r in 0..rounds {
        for i in 0..n {
            let c = (i + r) % n;
            let start = Instant::now();
            contenders[c](r + 1);
            times[c].push(start.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            batch as f64 / t[t.len() / 2]
        })
        .collect()
}

fn options(compute: Compute) -> RetrieverOptions {
    RetrieverOptions {
        encoder: EncoderConfig {
            device: Device::cuda_if_available(),
            ..EncoderConfig::default()
        },
        compute,
        ..RetrieverOptions::default()
    }
}

fn main() {
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let dim: usize = arg("--dim").and_then(|s| s.parse().ok()).unwrap_or(384);
    let k: usize = arg("--k").and_then(|s| s.parse().ok()).unwrap_or(10);
    println!(
        "mips: exact top-{k}, {dim}-d, device {:?}, {} libtorch threads",
        Device::cuda_if_available(),
        tch::get_num_threads()
    );
    let queries = random_values(64 * 8 * dim, 99);
    for n in sizes {
        let values = random_values(n * dim, n as u64);
        let bytes = (n * dim * 4) as f64;
        let bw = bandwidth(&values);
        let bound = bw / bytes;
        println!(
            "\n{n} x {dim}: read bandwidth {:.1} GB/s, so the f32 bandwidth bound is {bound:.2} QPS at batch 1",
            bw / 1e9
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let start = Instant::now();
        let (db, _) = common::database(dir.path(), &values, dim);
        println!(
            "  built the database in {:.1} s",
            start.elapsed().as_secs_f64()
        );

        let qt = |batch: usize, r: usize| {
            let off = (r * batch * dim) % (queries.len() - batch * dim + 1);
            Tensor::from_slice(&queries[off..off + batch * dim]).view([batch as i64, dim as i64])
        };
        let exact = Retriever::new(db.clone(), options(Compute::F32));
        let snap = exact.snapshot().expect("snapshot");
        // The baseline's matrix lives where ours does (the GPU when there is one), and its
        // results come back to the host as ours do.
        let device = Device::cuda_if_available();
        let plain = Tensor::from_slice(&values)
            .view([n as i64, dim as i64])
            .to_device(device);
        let half = Retriever::new(db.clone(), options(Compute::F16));
        let half_snap = half.snapshot().expect("snapshot");
        let mut rows = Vec::new();
        // About 3 s of each contender per batch size.
        let per_query = n as f64 * dim as f64 * 4.0 / 15e9;
        for batch in [1usize, 64] {
            let rounds = ((3.0 / (per_query * batch as f64).max(1e-4)) as usize).clamp(5, 400);
            let mut ours = |r: usize| {
                std::hint::black_box(snap.top_k(&qt(batch, r), k).expect("search"));
            };
            let mut torch = |r: usize| {
                std::hint::black_box(common::naive_top_k(&plain, &qt(batch, r), k));
            };
            let mut f16 = |r: usize| {
                std::hint::black_box(half_snap.top_k(&qt(batch, r), k).expect("search"));
            };
            let q = race(batch, rounds, &mut [&mut ours, &mut torch, &mut f16]);
            rows.push((batch, q[0], q[1], q[2]));
        }
        // f16 recall@k against exact f32 on 256 queries.
        let q = Tensor::from_slice(&queries[..256 * dim]).view([256, dim as i64]);
        let truth = snap.top_k(&q, k).expect("search");
        let approx = half_snap.top_k(&q, k).expect("search");
        let mut found = 0usize;
        for (t, a) in truth.iter().zip(&approx) {
            found += a
                .iter()
                .filter(|(id, _)| t.iter().any(|(x, _)| x == id))
                .count();
        }
        let recall = found as f64 / (256 * k) as f64;

        let faiss = run_faiss(&values, &queries, dim, k);
        for (batch, ours, torch, f16) in rows {
            let mut line = format!(
                "  batch {batch:>2}: realm-db {ours:>7.2} QPS | libtorch matmul+topk {torch:>7.2} ({:.2}x) | f16 {f16:>7.2} ({:.2}x)",
                ours / torch,
                f16 / ours
            );
            if let Some(f) = faiss.iter().find(|(b, _)| *b == batch).map(|(_, q)| *q) {
                line += &format!(" | faiss IndexFlatIP {f:>7.2} ({:.2}x)", ours / f);
            }
            if batch == 1 {
                line += &format!(
                    " | bandwidth bound {bound:.2} (realm-db at {:.0}%, f16 at {:.0}% of the f32 bound)",
                    100.0 * ours / bound,
                    100.0 * f16 / bound
                );
            }
            println!("{line}");
        }
        println!("  f16 recall@{k} against exact f32: {recall:.4}");
        for (shape, path) in exact.exact_paths() {
            println!(
                "  measured fastest for batch class 2^{} of 2^{} rows{}: {path}",
                shape.batch_class,
                shape.rows_class,
                if shape.half { " (f16)" } else { "" }
            );
        }
    }
}

/// Runs FAISS on the same data in a Python subprocess; empty if FAISS is unavailable.
fn run_faiss(values: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<(usize, f64)> {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(_) => return Vec::new(),
    };
    let write = |name: &str, data: &[f32]| {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).map(|_| path)
    };
    let (Ok(m), Ok(q)) = (write("m.f32", values), write("q.f32", queries)) else {
        return Vec::new();
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faiss_flat.py");
    let out = std::process::Command::new("python3")
        .args([script, &m.to_string_lossy(), &q.to_string_lossy()])
        .arg(dim.to_string())
        .arg(k.to_string())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let b = l
                    .split("batch=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                let q = l.split("qps=").nth(1)?.trim().parse().ok()?;
                Some((b, q))
            })
            .collect(),
        _ => {
            println!("  faiss: not run (python3 with faiss-cpu and numpy is needed)");
            Vec::new()
        }
    }
}
