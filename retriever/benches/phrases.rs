//! Phrase search (DensePhrases' two-sided search) exactly and through the approximate phrase
//! index, against the naive baseline, in one run.
//!
//! With `--db DIR`, the rows are the current phrase generation of that database and the
//! queries are its query encoder's encodings of the questions of `--qa FILE` (JSONL with a
//! `question` field, default `../shared/data/nq-open-dev.jsonl`). Without it, the rows are
//! synthetic: passages of tokens whose vectors lie near one of a few hundred topics, and
//! queries near a topic. Ground truth is the exact two-sided search (`side_k` best starts and
//! ends, every phrase they form scored exactly).
//!
//! Prints the index's training time and bytes per row, then phrase recall@10 against
//! questions/s at batch 1 and 64 for exact search, the approximate index over several nprobe
//! values, and the naive baseline: one libtorch matmul + topk over the starts and one over the
//! ends (the side scans alone, without forming phrases), with ratios against it; `--plot`
//! draws recall against questions/s.
//!
//! `cargo bench -p realm-retriever --bench phrases -- [--db DIR] [--qa FILE]
//!  [--queries 400] [--batch1 100] [--tokens 300000] [--nlist 0] [--plot phrases.png]`

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

mod common;

use common::{arg, naive_top_k, num, register_font};
use plotters::prelude::*;
use realm_retriever::phrase::{
    PhraseHit, PhraseIndex, PhraseIvfConfig, PhraseQuery, PhraseRows, PhraseSearchOptions,
    PhraseToken,
};
use realm_retriever::random::SplitMix64;
use realm_retriever::{Retriever, RetrieverOptions};
use realm_storage::Db;
use tch::{Device, Tensor};

const K: usize = 10;
const NPROBES: &[usize] = &[1, 2, 4, 8, 16, 32, 64];

struct Point {
    system: String,
    batch: usize,
    qps: f64,
    recall: f64,
}

/// The rows and queries of the run: `(dim, rows, queries)`.
type Data = (usize, Vec<(u64, PhraseRows)>, Vec<PhraseQuery>);

fn from_database(dir: &Path, questions: usize) -> Data {
    let db = Db::open_read_only(dir).expect("open the database");
    let retriever = Retriever::new(db, RetrieverOptions::default());
    let searcher = retriever.phrase_searcher().expect("a phrase generation");
    let rows = searcher.snapshot().all_rows().expect("phrase rows");
    let qa = arg("--qa").unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/nq-open-dev.jsonl"
        )
        .into()
    });
    let file = std::fs::File::open(&qa).expect("the question file");
    let texts: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            Some(v.get("question")?.as_str()?.to_owned())
        })
        .take(questions)
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let queries = searcher
        .query_encoder()
        .encode_queries(&refs)
        .expect("encode the questions");
    (searcher.index().dim(), rows, queries)
}

fn synthetic(tokens: usize, questions: usize) -> Data {
    let (dim, topics, per_passage) = (192, 400, 80);
    let mut rng = SplitMix64::new(11);
    let mut normal = |scale: f32| -> Vec<f32> {
        (0..dim)
            .map(|_| scale * rng.normal() as f32 / (dim as f32).sqrt())
            .collect()
    };
    let centers: Vec<Vec<f32>> = (0..topics).map(|_| normal(1.0)).collect();
    let mut rows = Vec::new();
    for p in 0..tokens.div_ceil(per_passage) {
        let center = &centers[p % topics];
        let (mut list, mut start, mut end) = (Vec::new(), Vec::new(), Vec::new());
        for t in 0..per_passage as u32 {
            list.push(PhraseToken {
                position: t,
                word: t,
                start_byte: 4 * t,
                end_byte: 4 * t + 3,
                starts: true,
                ends: true,
            });
            for out in [&mut start, &mut end] {
                out.extend(normal(0.6).iter().zip(center).map(|(x, c)| x + c));
            }
        }
        rows.push((
            p as u64,
            PhraseRows::new(dim, list, start, end).expect("rows"),
        ));
    }
    let queries = (0..questions)
        .map(|q| {
            let center = &centers[(q * 7) % topics];
            let mut near = || -> Vec<f32> {
                normal(0.5)
                    .iter()
                    .zip(center)
                    .map(|(x, c)| 4.0 * (x + c))
                    .collect()
            };
            PhraseQuery {
                start: near(),
                end: near(),
            }
        })
        .collect();
    (dim, rows, queries)
}

/// Questions/s of `search` over `queries` in batches of `batch`, and its results.
fn timed(
    queries: &[PhraseQuery],
    batch: usize,
    search: impl Fn(&[PhraseQuery]) -> Vec<Vec<PhraseHit>>,
) -> (f64, Vec<Vec<PhraseHit>>) {
    let started = Instant::now();
    let mut out = Vec::with_capacity(queries.len());
    for part in queries.chunks(batch) {
        out.extend(search(part));
    }
    (queries.len() as f64 / started.elapsed().as_secs_f64(), out)
}

fn recall(truth: &[Vec<PhraseHit>], got: &[Vec<PhraseHit>]) -> f64 {
    let key = |h: &PhraseHit| (h.passage, h.start_position, h.end_position);
    let (mut found, mut total) = (0usize, 0usize);
    for (t, g) in truth.iter().zip(got) {
        let g: Vec<_> = g.iter().map(key).collect();
        total += t.len();
        found += t.iter().filter(|h| g.contains(&key(h))).count();
    }
    found as f64 / total.max(1) as f64
}

/// The side vectors of `rows` that may start (end) a phrase, as one `[n, dim]` matrix.
fn side_matrix(dim: usize, rows: &[(u64, PhraseRows)], starts: bool) -> Tensor {
    let mut values = Vec::new();
    for (_, r) in rows {
        for (i, token) in r.tokens().iter().enumerate() {
            if (starts && token.starts) || (!starts && token.ends) {
                let v = if starts {
                    r.start_vector(i)
                } else {
                    r.end_vector(i)
                };
                values.extend_from_slice(v);
            }
        }
    }
    Tensor::from_slice(&values).view([-1, dim as i64])
}

fn main() {
    tch::set_num_threads(
        std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(1),
    );
    let questions = num("--queries", 400);
    let batch1 = num("--batch1", 100).min(questions);
    let (dim, rows, queries) = match arg("--db") {
        Some(dir) => from_database(Path::new(&dir), questions),
        None => synthetic(num("--tokens", 300_000), questions),
    };
    let naive_starts = side_matrix(dim, &rows, true);
    let naive_ends = side_matrix(dim, &rows, false);
    let mut index = PhraseIndex::build(dim, rows, Device::Cpu).expect("index");
    println!(
        "phrase rows: {} passages, {} tokens ({} starts, {} ends), dim {dim}; {} queries",
        index.passage_count(),
        index.token_count(),
        index.start_count(),
        index.end_count(),
        queries.len()
    );
    let started = Instant::now();
    let config = PhraseIvfConfig {
        nlist: num("--nlist", 0),
        ..PhraseIvfConfig::default()
    };
    index.build_ivf(&config).expect("approximate index");
    let nlist = index.ivf_lists().unwrap_or(0);
    println!(
        "approximate index: {nlist} lists per side, trained and filled in {:.1} s; {} code bytes + 4 id bytes per row (exact rows: {} bytes)",
        started.elapsed().as_secs_f64(),
        dim,
        4 * dim
    );

    let exact = PhraseSearchOptions {
        k: K,
        ..PhraseSearchOptions::default()
    };
    let search = |opts: PhraseSearchOptions| {
        let index = &index;
        move |part: &[PhraseQuery]| index.search_batch(part, &opts).expect("search")
    };
    let naive = |part: &[PhraseQuery]| {
        let values = |side: fn(&PhraseQuery) -> &Vec<f32>| {
            let flat: Vec<f32> = part.iter().flat_map(|q| side(q).iter().copied()).collect();
            Tensor::from_slice(&flat).view([part.len() as i64, dim as i64])
        };
        let side_k = exact.side_k.min(naive_starts.size()[0] as usize);
        naive_top_k(&naive_starts, &values(|q| &q.start), side_k);
        naive_top_k(&naive_ends, &values(|q| &q.end), side_k);
        Vec::new()
    };
    // Warm-up.
    search(exact)(&queries[..1.min(queries.len())]);
    let mut points = Vec::new();
    for batch in [1, 64] {
        let measured = if batch == 1 {
            &queries[..batch1]
        } else {
            &queries[..]
        };
        let (naive_qps, _) = timed(measured, batch, naive);
        let (exact_qps, exact_hits) = timed(measured, batch, search(exact));
        println!("\nbatch {batch} ({} queries)", measured.len());
        println!(
            "  {:<22} {:>10} {:>9} {:>10}",
            "system", "q/s", "recall", "× naive"
        );
        println!(
            "  {:<22} {naive_qps:>10.1} {:>9} {:>10.2}",
            "naive (side scans)", "-", 1.0
        );
        println!(
            "  {:<22} {exact_qps:>10.1} {:>9.3} {:>10.2}",
            "exact",
            1.0,
            exact_qps / naive_qps
        );
        points.push(Point {
            system: "exact".into(),
            batch,
            qps: exact_qps,
            recall: 1.0,
        });
        for &nprobe in NPROBES.iter().filter(|&&n| n <= nlist) {
            let opts = PhraseSearchOptions {
                nprobe: Some(nprobe),
                ..exact
            };
            let (qps, hits) = timed(measured, batch, search(opts));
            let r = recall(&exact_hits, &hits);
            println!(
                "  {:<22} {qps:>10.1} {r:>9.3} {:>10.2}",
                format!("ivf nprobe {nprobe}"),
                qps / naive_qps
            );
            points.push(Point {
                system: format!("ivf nprobe {nprobe}"),
                batch,
                qps,
                recall: r,
            });
        }
    }
    if let Some(path) = arg("--plot") {
        if register_font() {
            plot(&path, &points).expect("plot");
            println!("\nplot: {path}");
        } else {
            println!("\nno plot: no TrueType font found (set REALM_DB_FONT)");
        }
    }
}

fn plot(path: &str, points: &[Point]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_qps = points.iter().map(|p| p.qps).fold(1.0, f64::max) * 1.2;
    let min_recall = points.iter().map(|p| p.recall).fold(1.0, f64::min).min(0.9) - 0.02;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "phrase search: recall@10 against questions/s",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((1.0..max_qps).log_scale(), min_recall..1.01)?;
    chart
        .configure_mesh()
        .x_desc("questions/s (log)")
        .y_desc("phrase recall@10 vs exact")
        .draw()?;
    for (batch, color) in [(1, BLUE), (64, RED)] {
        let ivf: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.batch == batch && p.system != "exact")
            .map(|p| (p.qps, p.recall))
            .collect();
        chart
            .draw_series(LineSeries::new(ivf.clone(), color))?
            .label(format!("approximate index, batch {batch}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(ivf.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        if let Some(e) = points
            .iter()
            .find(|p| p.batch == batch && p.system == "exact")
        {
            chart
                .draw_series(std::iter::once(TriangleMarker::new(
                    (e.qps, 1.0),
                    7,
                    color.filled(),
                )))?
                .label(format!("exact, batch {batch}"))
                .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, color.filled()));
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
