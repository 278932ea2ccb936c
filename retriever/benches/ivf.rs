//! Approximate search against exact search, the naive baseline and FAISS, on data that
//! behaves like real embeddings, in one run.
//!
//! Base vectors are deterministic mixtures of two or three MiniLM passage embeddings of
//! `../shared/data/corpus.jsonl` plus small noise, normalized; queries are the MiniLM
//! embeddings of the `nq-open-dev` questions. Ground truth is realm-db's exact search.
//! Prints build times, bytes per vector, and recall@10 against QPS at batch 1 and 64 for
//! realm-db's IVF (SQ8 codes, exact re-scoring) over several nprobe values, next to FAISS
//! `IndexIVFFlat`, `IndexIVFScalarQuantizer` (SQ8) and `IndexHNSWFlat` (`pip install
//! faiss-cpu numpy`), exact search and one libtorch matmul + topk; then draws the curves.
//!
//! `cargo bench -p realm-retriever --bench ivf -- [--n 1000000] [--nlist 1024]
//!  [--queries 1000] [--batch1 200] [--data ../shared/data] [--plot ivf.png] [--cache DIR]
//!  [--no-faiss] [--no-accuracy] [--cached]` (`--nlist 0` takes the default list count;
//!  `--cached` reads the embeddings from the cache alone, without the model or the data)
//!
//! Embeddings are cached under `--cache`, by default `$CARGO_TARGET_DIR/ivf-bench`.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod common;

use common::{Mixtures, arg, database, flag, num, read_f32, register_font, write_f32};
use plotters::prelude::*;
use realm_retriever::{
    Compute, Device, Encoder, EncoderConfig, IvfConfig, Retriever, RetrieverOptions, SearchOptions,
    default_model_dir,
};
use realm_storage::{Db, Dtype, GenerationSpec, NewPassage};
use tch::Tensor;

const K: usize = 10;
const NPROBES: &[usize] = &[1, 2, 4, 8, 16, 32, 64, 128];
const EFS: &[usize] = &[16, 32, 64, 128, 256];

/// One measured point of a curve.
#[derive(Clone, Debug)]
struct Point {
    system: String,
    param: usize,
    batch: usize,
    qps: f64,
    recall: f64,
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = arg("--cache") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("cache dir");
        return dir;
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let dir = target.join("ivf-bench");
    std::fs::create_dir_all(&dir).expect("cache dir");
    dir
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(file)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("a line")).expect("JSON"))
        .collect()
}

/// MiniLM embeddings of `texts` (title, text), cached in `name`.
fn embeddings(encoder: &Encoder, docs: &[(String, String)], name: &str) -> Vec<f32> {
    let path = cache_dir().join(name);
    if let Some(v) = read_f32(&path).filter(|v| v.len() == docs.len() * encoder.dim() as usize) {
        return v;
    }
    let start = Instant::now();
    let mut out = Vec::with_capacity(docs.len() * encoder.dim() as usize);
    for (i, part) in docs.chunks(64).enumerate() {
        let pairs: Vec<(&str, &str)> = part.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let t = tch::no_grad(|| {
            if pairs.iter().all(|(t, _)| t.is_empty()) {
                let texts: Vec<&str> = pairs.iter().map(|(_, b)| *b).collect();
                encoder.encode(&texts)
            } else {
                encoder.encode_docs(&pairs)
            }
        })
        .expect("encode");
        out.extend(realm_retriever::tensor_rows(&t).expect("rows"));
        if i % 20 == 0 {
            eprint!("\r  embedding {name}: {}/{}", (i + 1) * 64, docs.len());
        }
    }
    eprintln!(
        "\r  embedded {} texts for {name} in {:.0} s",
        docs.len(),
        start.elapsed().as_secs_f64()
    );
    write_f32(&path, &out);
    out
}

fn recall(truth: &[Vec<(u64, f32)>], got: &[Vec<(u64, f32)>]) -> f64 {
    let mut found = 0;
    for (t, g) in truth.iter().zip(got) {
        let t: HashSet<u64> = t.iter().map(|(id, _)| *id).collect();
        found += g.iter().filter(|(id, _)| t.contains(id)).count();
    }
    found as f64 / (K * truth.len()) as f64
}

fn main() {
    let n = num("--n", 1_000_000);
    let nlist = num("--nlist", 1024);
    let nq = num("--queries", 1000);
    let batch1 = num("--batch1", 200);
    let data = PathBuf::from(
        arg("--data")
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data").into()),
    );
    let plot = arg("--plot").unwrap_or_else(|| "ivf-recall-qps.png".into());
    let device = Device::cuda_if_available();
    println!(
        "ivf: {n} vectors, nlist {nlist}, {nq} queries (batch 1 on the first {batch1}), top-{K}, device {device:?}, {} libtorch threads",
        tch::get_num_threads()
    );

    // `--cached`: the embeddings come from the cache alone (no model, no data folder), for a
    // machine that has neither, such as a GPU lease; accuracy needs both and is skipped.
    let cached = flag("--cached");
    let (encoder, corpus, dim, passages, queries) = if cached {
        let read = |name: &str| {
            let path = cache_dir().join(name);
            read_f32(&path).unwrap_or_else(|| panic!("--cached: {} is missing", path.display()))
        };
        let dim = num("--dim", 384);
        let queries = read(&format!("questions-{nq}.f32"));
        (None, Vec::new(), dim, read("corpus.f32"), queries)
    } else {
        let encoder = Encoder::load(
            &default_model_dir().expect("the MiniLM model folder (scripts/setup.sh)"),
            EncoderConfig {
                device,
                ..EncoderConfig::default()
            },
        )
        .expect("encoder");
        let dim = encoder.dim() as usize;
        let corpus: Vec<(String, String)> = json_lines(&data.join("corpus.jsonl"))
            .iter()
            .map(|v| {
                (
                    v["title"].as_str().unwrap_or("").to_string(),
                    v["text"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let questions: Vec<(String, String)> = json_lines(&data.join("nq-open-dev.jsonl"))
            .iter()
            .take(nq)
            .map(|v| {
                (
                    String::new(),
                    v["question"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let passages = embeddings(&encoder, &corpus, "corpus.f32");
        let queries = embeddings(&encoder, &questions, &format!("questions-{nq}.f32"));
        (Some(encoder), corpus, dim, passages, queries)
    };
    let nq = queries.len() / dim;
    let base = Mixtures::new(&passages, dim).next_rows(n);

    // The database: one generation of f32 rows.
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let (db, _) = database(dir.path(), &base, dim);
    println!(
        "  stored {n} rows in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let options = RetrieverOptions {
        encoder: EncoderConfig {
            device,
            ..EncoderConfig::default()
        },
        compute: Compute::F32,
        ..RetrieverOptions::default()
    };
    let retriever = Retriever::new(db.clone(), options);
    let snap = retriever.snapshot().expect("snapshot");
    let qt = |from: usize, len: usize| {
        Tensor::from_slice(&queries[from * dim..(from + len) * dim]).view([len as i64, dim as i64])
    };
    let exact = SearchOptions::exact();
    // Warm-up: the matrix loads, and the first search of each shape measures the exact paths.
    snap.top_k_with(&qt(0, 1), K, &exact).expect("warm-up");
    snap.top_k_with(&qt(0, 64.min(nq)), K, &exact)
        .expect("warm-up");
    // Ground truth, and exact search at batch 64.
    let start = Instant::now();
    let mut truth = Vec::new();
    for from in (0..nq).step_by(64) {
        truth.extend(
            snap.top_k_with(&qt(from, 64.min(nq - from)), K, &exact)
                .expect("exact"),
        );
    }
    let exact64 = nq as f64 / start.elapsed().as_secs_f64();
    let exact1 = {
        let m = batch1.min(50);
        let start = Instant::now();
        for i in 0..m {
            std::hint::black_box(snap.top_k_with(&qt(i, 1), K, &exact).expect("exact"));
        }
        m as f64 / start.elapsed().as_secs_f64()
    };
    // The baseline's matrix lives on the search device, and its results come back to the host.
    let plain = Tensor::from_slice(&base)
        .view([n as i64, dim as i64])
        .to_device(device);
    let naive = |batch: usize, count: usize| {
        let start = Instant::now();
        let mut done = 0;
        while done < count {
            let len = batch.min(nq - (done % nq)).min(count - done);
            std::hint::black_box(common::naive_top_k(&plain, &qt(done % nq, len), K));
            done += len;
        }
        count as f64 / start.elapsed().as_secs_f64()
    };
    let naive1 = naive(1, batch1.min(50));
    let naive64 = naive(64, nq);
    println!(
        "  exact search: batch 1 {exact1:.1} QPS ({:.2}x the naive matmul+topk at {naive1:.1}), batch 64 {exact64:.1} QPS ({:.2}x naive at {naive64:.1})",
        exact1 / naive1,
        exact64 / naive64
    );
    drop(plain);

    // realm-db IVF.
    let start = Instant::now();
    let info = retriever
        .build_index(
            db.current_generation().expect("current").expect("one"),
            &IvfConfig {
                nlist,
                ..IvfConfig::default()
            },
            None,
        )
        .expect("index");
    let build = start.elapsed().as_secs_f64();
    let stats = db.stats().expect("stats");
    let list_bytes = stats.disk_bytes.get("ivf_lists").copied().unwrap_or(0);
    println!(
        "  realm-db IVF: built in {build:.1} s ({} lists, {} entries); ivf_lists holds {:.1} bytes per vector on disk ({:.2} x d; {} bytes of code + 24 of key per entry)",
        info.nlist,
        info.entries,
        list_bytes as f64 / n as f64,
        list_bytes as f64 / n as f64 / dim as f64,
        dim
    );
    let snap = retriever.snapshot().expect("snapshot");
    let mut points = Vec::new();
    let default = realm_retriever::default_nprobe(info.nlist as usize);
    let mut nprobes: Vec<usize> = NPROBES
        .iter()
        .copied()
        .filter(|&p| p <= info.nlist as usize)
        .collect();
    if !nprobes.contains(&default) {
        nprobes.push(default);
        nprobes.sort_unstable();
    }
    println!("  default nprobe for {} lists: {default}", info.nlist);
    for &nprobe in &nprobes {
        let o = SearchOptions::probing(nprobe);
        snap.top_k_with(&qt(0, 1), K, &o).expect("warm-up");
        let start = Instant::now();
        let mut got1 = Vec::new();
        for i in 0..batch1.min(nq) {
            got1.extend(snap.top_k_with(&qt(i, 1), K, &o).expect("ivf"));
        }
        let qps1 = got1.len() as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut got = Vec::new();
        for from in (0..nq).step_by(64) {
            got.extend(
                snap.top_k_with(&qt(from, 64.min(nq - from)), K, &o)
                    .expect("ivf"),
            );
        }
        let qps64 = nq as f64 / start.elapsed().as_secs_f64();
        let r = recall(&truth, &got);
        for (batch, qps) in [(1, qps1), (64, qps64)] {
            points.push(Point {
                system: "realm-db IVF-SQ8 + re-scoring".into(),
                param: nprobe,
                batch,
                qps,
                recall: r,
            });
        }
    }

    // FAISS on the same vectors.
    let faiss = if flag("--no-faiss") {
        Vec::new()
    } else {
        run_faiss(
            &base,
            &queries,
            &truth,
            dim,
            info.nlist as usize,
            batch1.min(nq),
        )
    };
    let mut builds = vec![("realm-db IVF-SQ8".to_string(), build, (dim + 8) as f64)];
    for v in &faiss {
        if let Some(b) = v["build_s"].as_f64() {
            builds.push((
                v["index"].as_str().unwrap_or("?").to_string(),
                b,
                v["bytes_per_vector"].as_f64().unwrap_or(0.0),
            ));
        } else {
            points.push(Point {
                system: v["index"].as_str().unwrap_or("?").to_string(),
                param: v["param"].as_u64().unwrap_or(0) as usize,
                batch: v["batch"].as_u64().unwrap_or(0) as usize,
                qps: v["qps"].as_f64().unwrap_or(0.0),
                recall: v["recall"].as_f64().unwrap_or(0.0),
            });
        }
    }

    println!(
        "\n  build times and bytes per vector (codes and ids; rows for re-scoring not counted):"
    );
    for (name, secs, bytes) in &builds {
        println!(
            "    {name:<24} {secs:>8.1} s  {bytes:>6.0} B/vector ({:.2} x d)  ({:.2}x realm-db's time)",
            bytes / dim as f64,
            secs / build
        );
    }
    println!("\n  recall@{K} and QPS (param = nprobe, or efSearch for HNSW):");
    println!(
        "    {:<30} {:>6} {:>6} {:>9} {:>10} {:>12}",
        "system", "param", "batch", "recall", "QPS", "x exact"
    );
    for p in &points {
        let base = if p.batch == 1 { exact1 } else { exact64 };
        println!(
            "    {:<30} {:>6} {:>6} {:>9.4} {:>10.1} {:>11.1}x",
            p.system,
            p.param,
            p.batch,
            p.recall,
            p.qps,
            p.qps / base
        );
    }
    println!(
        "    {:<30} {:>6} {:>6} {:>9.4} {:>10.1} {:>11.1}x",
        "realm-db exact", "-", 1, 1.0, exact1, 1.0
    );
    println!(
        "    {:<30} {:>6} {:>6} {:>9.4} {:>10.1} {:>11.1}x",
        "realm-db exact", "-", 64, 1.0, exact64, 1.0
    );

    // The goals, at recall@10 >= 0.95 and batch 1.
    let best_at = |system: &str, batch: usize| {
        points
            .iter()
            .filter(|p| p.system.starts_with(system) && p.batch == batch && p.recall >= 0.95)
            .map(|p| p.qps)
            .fold(None, |a: Option<f64>, q| Some(a.map_or(q, |a| a.max(q))))
    };
    let ours = best_at("realm-db IVF", 1);
    let flat = best_at("faiss IVFFlat", 1);
    let sq8 = best_at("faiss IVFSQ8", 1);
    println!("\n  at recall@{K} >= 0.95, batch 1:");
    match ours {
        Some(q) => {
            println!(
                "    realm-db IVF: {q:.1} QPS = {:.1}x exact search (goal >= 10x)",
                q / exact1
            );
            if let Some(f) = flat {
                println!(
                    "    vs faiss IVFFlat {f:.1} QPS: {:.2}x (goal >= 1x)",
                    q / f
                );
            }
            if let Some(f) = sq8 {
                println!("    vs faiss IVFSQ8 {f:.1} QPS: {:.2}x", q / f);
            }
        }
        None => println!("    realm-db IVF never reached it"),
    }
    if let Some((_, faiss_build, _)) = builds.iter().find(|(n, _, _)| n == "faiss IVFFlat") {
        println!(
            "  build time: realm-db {build:.1} s = {:.2}x faiss IVFFlat's {faiss_build:.1} s (goal <= 1.5x)",
            build / faiss_build
        );
    }
    draw(&plot, &points, exact1, exact64);
    println!("  wrote {plot}");
    if let Some(encoder) = encoder.as_ref().filter(|_| !flag("--no-accuracy")) {
        accuracy(encoder, &data, &corpus, &passages);
    }
}

/// Top-k retrieval accuracy on every nq-open-dev question over the real corpus: exact
/// search against the IVF index with its default nprobe (forced: the corpus is below the
/// size where the index is used by default).
fn accuracy(encoder: &Encoder, data: &Path, corpus: &[(String, String)], passages: &[f32]) {
    use realm_retriever::eval::{AnswerMatcher, TopKAccuracy, read_qa_file};
    let dim = encoder.dim() as usize;
    let examples = read_qa_file(&data.join("nq-open-dev.jsonl")).expect("nq-open-dev");
    let questions: Vec<(String, String)> = examples
        .iter()
        .map(|e| (String::new(), e.question.clone()))
        .collect();
    let queries = embeddings(encoder, &questions, "nq-open-dev-all.f32");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::create(dir.path()).expect("create");
    let batch: Vec<NewPassage> = corpus
        .iter()
        .map(|(t, x)| NewPassage::new(t.clone(), x.clone()))
        .collect();
    let ids: Vec<u64> = db
        .insert(&batch)
        .expect("insert")
        .iter()
        .map(|o| o.id())
        .collect();
    let mut w = db
        .begin_generation(GenerationSpec::new("minilm", dim as u32, Dtype::F32))
        .expect("begin");
    w.write(&ids, passages).expect("write");
    let generation = w.commit().expect("commit");
    let retriever = Retriever::new(db, RetrieverOptions::default());
    let info = retriever
        .build_index(generation, &IvfConfig::default(), None)
        .expect("index");
    let snap = retriever.snapshot().expect("snapshot");
    let nprobe = realm_retriever::default_nprobe(info.nlist as usize);
    let q = Tensor::from_slice(&queries).view([examples.len() as i64, dim as i64]);
    let mut rows = Vec::new();
    for (name, options) in [
        ("exact".to_string(), SearchOptions::exact()),
        (
            format!("IVF, {} lists, nprobe {nprobe}", info.nlist),
            SearchOptions::probing(nprobe),
        ),
    ] {
        let ranked = snap.top_k_with(&q, 100, &options).expect("search");
        let mut acc = TopKAccuracy::new();
        for (example, hits) in examples.iter().zip(&ranked) {
            let matcher = AnswerMatcher::new(example).expect("answers");
            let first = hits
                .iter()
                .position(|(id, _)| matcher.matches(&corpus[*id as usize].1));
            acc.add(first, example.in_corpus);
        }
        rows.push((name, acc));
    }
    println!(
        "\n  nq-open-dev ({} questions), top-k accuracy over the 12,371-passage corpus (all / in-corpus):",
        examples.len()
    );
    for (name, acc) in &rows {
        let cell = |k| {
            format!(
                "{:.1} / {}",
                100.0 * acc.accuracy(k),
                acc.in_corpus_accuracy(k)
                    .map_or("-".into(), |a| format!("{:.1}", 100.0 * a))
            )
        };
        println!(
            "    {name:<32} top-1 {}  top-5 {}  top-20 {}  top-100 {}",
            cell(1),
            cell(5),
            cell(20),
            cell(100)
        );
    }
    let diff = 100.0 * (rows[1].1.accuracy(20) - rows[0].1.accuracy(20));
    println!("    IVF minus exact at top-20: {diff:+.2} points (goal: within 0.5)");
}

fn run_faiss(
    base: &[f32],
    queries: &[f32],
    truth: &[Vec<(u64, f32)>],
    dim: usize,
    nlist: usize,
    batch1: usize,
) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (b, q, t) = (
        dir.path().join("b.f32"),
        dir.path().join("q.f32"),
        dir.path().join("t.u64"),
    );
    write_f32(&b, base);
    write_f32(&q, queries);
    let ids: Vec<u8> = truth
        .iter()
        .flat_map(|row| (0..K).map(move |i| row.get(i).map_or(u64::MAX, |(id, _)| *id)))
        .flat_map(|id| id.to_le_bytes())
        .collect();
    std::fs::write(&t, ids).expect("write truth");
    let list = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let nprobes: Vec<usize> = NPROBES.iter().copied().filter(|&p| p <= nlist).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faiss_ivf.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([&b, &q, &t])
        .args([
            dim.to_string(),
            K.to_string(),
            nlist.to_string(),
            list(&nprobes),
            list(EFS),
            batch1.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        _ => {
            println!("  faiss: not run (python3 with faiss-cpu and numpy is needed)");
            Vec::new()
        }
    }
}

/// Recall@10 against QPS (log scale), one panel per batch size.
fn draw(path: &str, points: &[Point], exact1: f64, exact64: f64) {
    if !register_font() {
        println!("  no plot: no TrueType font found (set REALM_DB_FONT)");
        return;
    }
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let panels = root.split_evenly((1, 2));
    let mut systems: Vec<String> = points.iter().map(|p| p.system.clone()).collect();
    systems.dedup();
    systems.sort();
    systems.dedup();
    for (panel, (batch, exact)) in panels.iter().zip([(1usize, exact1), (64, exact64)]) {
        let pts: Vec<&Point> = points.iter().filter(|p| p.batch == batch).collect();
        let max_qps = pts.iter().map(|p| p.qps).fold(exact * 2.0, f64::max) * 1.5;
        let min_qps = pts.iter().map(|p| p.qps).fold(exact, f64::min) * 0.7;
        let min_recall = pts.iter().map(|p| p.recall).fold(1.0, f64::min).min(0.8) - 0.02;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("recall@{K} vs QPS, batch {batch}"),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(min_recall..1.005f64, (min_qps..max_qps).log_scale())
            .expect("chart");
        chart
            .configure_mesh()
            .x_desc(format!("recall@{K}"))
            .y_desc("queries per second")
            .draw()
            .expect("mesh");
        for (i, system) in systems.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut line: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| &p.system == system)
                .map(|p| (p.recall, p.qps))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .expect("line")
                .label(system.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    line.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .expect("points");
        }
        chart
            .draw_series(std::iter::once(Cross::new(
                (1.0, exact),
                6,
                BLACK.stroke_width(2),
            )))
            .expect("exact")
            .label("realm-db exact")
            .legend(|(x, y)| Cross::new((x + 9, y), 5, BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .expect("legend");
    }
    root.present().expect("write the plot");
}
