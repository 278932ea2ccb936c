//! A generation larger than the memory budget: 10M × 384 f16 rows by default (7.7 GB),
//! searched through its IVF index with the lists read per search and the re-scored rows
//! read from the store, and exactly by streaming its blocks.
//!
//! `cargo bench -p realm-retriever --bench large -- --dir DIR [--n 10000000] [--nlist 1024]
//!  [--queries 100] [--budget-mb 1024] [--cache DIR]`
//!
//! The first run builds the database in DIR (vectors made as in the `ivf` bench, from the
//! cached MiniLM embeddings it wrote: run it first, with the same `--cache`); later runs
//! reuse it. The search runs in a child process, so its peak RSS (VmHWM) is the search's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use realm_retriever::{
    Compute, Device, EncoderConfig, IvfConfig, Retriever, RetrieverOptions, SearchOptions,
};
use realm_storage::{Db, Dtype, GenerationSpec};

mod common;

use common::{Mixtures, arg, num};
use tch::Tensor;

const K: usize = 10;
const DIM: usize = 384;
const CHUNK: usize = 100_000;

fn cached(path: &Path) -> Vec<f32> {
    common::read_f32(path).unwrap_or_else(|| {
        panic!(
            "{} is missing: run the ivf bench first with the same --cache",
            path.display()
        )
    })
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn options(budget: usize) -> RetrieverOptions {
    RetrieverOptions {
        encoder: EncoderConfig {
            device: Device::cuda_if_available(),
            ..EncoderConfig::default()
        },
        compute: Compute::F16,
        memory_budget_bytes: budget,
        ..RetrieverOptions::default()
    }
}

fn build(dir: &Path, n: usize, nlist: usize, passages: &[f32]) {
    let start = Instant::now();
    // Small blocks: re-scoring reads whole blocks, one per candidate.
    let db = Db::builder(dir)
        .options(realm_storage::Options {
            block_rows: 64,
            ..realm_storage::Options::default()
        })
        .create_if_missing(true)
        .open()
        .expect("create");
    let mut writer = db
        .begin_generation(GenerationSpec::new("large", DIM as u32, Dtype::F16))
        .expect("begin");
    let mut mixtures = Mixtures::new(passages, DIM);
    for from in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - from);
        common::insert_rows(&db, &mut writer, &mixtures.next_rows(len), DIM);
        eprint!(
            "\r  stored {} rows ({:.0} s)",
            from + len,
            start.elapsed().as_secs_f64()
        );
    }
    let generation = writer.commit().expect("commit");
    eprintln!();
    println!(
        "  stored {n} rows in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let retriever = Retriever::new(db, options(1 << 30));
    let start = Instant::now();
    let mut last = Instant::now();
    let mut progress = |p: realm_retriever::Progress| {
        if last.elapsed().as_secs() >= 10 {
            eprint!("\r  indexed {}/{}", p.done, p.total);
            last = Instant::now();
        }
    };
    let info = retriever
        .build_index(
            generation,
            &IvfConfig {
                nlist,
                ..IvfConfig::default()
            },
            Some(&mut progress),
        )
        .expect("index");
    eprintln!();
    println!(
        "  built the IVF index ({} lists, {} entries) in {:.0} s; peak RSS of the build {:.0} MB",
        info.nlist,
        info.entries,
        start.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
}

fn search(dir: &Path, queries: &[f32], budget: usize) {
    let db = Db::open(dir).expect("open");
    let manifest = db
        .generation(db.current_generation().expect("current").expect("one"))
        .expect("manifest");
    let retriever = Retriever::new(db, options(budget));
    let snap = retriever.snapshot().expect("snapshot");
    let nq = queries.len() / DIM;
    let qt = |from: usize, len: usize| {
        Tensor::from_slice(&queries[from * DIM..(from + len) * DIM]).view([len as i64, DIM as i64])
    };
    println!(
        "  {} rows of {} x {}, {:.1} GB of rows; memory budget {} MB",
        manifest.vector_count,
        manifest.spec.dim,
        manifest.spec.dtype,
        manifest.vector_count as f64 * DIM as f64 * 2.0 / 1e9,
        budget >> 20
    );
    let start = Instant::now();
    let truth = snap
        .top_k_with(&qt(0, nq), K, &SearchOptions::exact())
        .expect("exact");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  exact search, streamed: {nq} queries in one pass in {secs:.0} s ({:.2} QPS); peak RSS so far {:.0} MB",
        nq as f64 / secs,
        peak_rss_mb()
    );
    for nprobe in [8, 16, 32, 64] {
        let o = SearchOptions::probing(nprobe);
        let start = Instant::now();
        let mut found = 0;
        for (i, t) in truth.iter().enumerate() {
            let got = snap.top_k_with(&qt(i, 1), K, &o).expect("ivf").remove(0);
            let t: HashSet<u64> = t.iter().map(|(id, _)| *id).collect();
            found += got.iter().filter(|(id, _)| t.contains(id)).count();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "  IVF nprobe {nprobe:>3}, batch 1: recall@{K} {:.4}, {:.1} QPS; peak RSS so far {:.0} MB",
            found as f64 / (K * nq) as f64,
            nq as f64 / secs,
            peak_rss_mb()
        );
    }
    println!("  peak RSS of the search process: {:.0} MB", peak_rss_mb());
}

fn main() {
    let dir = PathBuf::from(arg("--dir").expect("--dir DIR"));
    let n = num("--n", 10_000_000);
    let nlist = num("--nlist", 1024);
    let nq = num("--queries", 100);
    let budget = num("--budget-mb", 1024) << 20;
    let cache = PathBuf::from(arg("--cache").unwrap_or_else(|| {
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()) + "/ivf-bench"
    }));
    let queries = cached(&cache.join("questions-1000.f32"));
    let queries = &queries[..nq.min(queries.len() / DIM) * DIM];
    if common::flag("--search-only") {
        search(&dir, queries, budget);
        return;
    }
    if !dir.join("CURRENT").exists() {
        let passages = cached(&cache.join("corpus.f32"));
        build(&dir, n, nlist, &passages);
    }
    println!("  size on disk: {:.2} GB", dir_bytes(&dir) as f64 / 1e9);
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(std::env::args().skip(1))
        .arg("--search-only")
        .status()
        .expect("the search process");
    assert!(status.success());
}
