//! Builds a realm-db database from a JSONL passage corpus with the default MiniLM encoder and
//! answers example questions through the public API, reporting ingest and embedding rates.
//!
//! `cargo run --release --example corpus -- --corpus ../shared/data/corpus.jsonl [--limit N]
//!  [--db DIR] [--question "..."]...`

use std::io::BufRead;
use std::time::Instant;

use realm_db::{BuildOptions, Db, Encoder, NewPassage, Progress, Retriever};

const QUESTIONS: [&str; 4] = [
    "who wrote the theory of general relativity",
    "what is the largest ocean on earth",
    "when did the roman empire fall",
    "what does DNA stand for",
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let corpus = arg(&args, "--corpus").ok_or("--corpus PATH is required")?;
    let limit: usize = arg(&args, "--limit").map_or(Ok(usize::MAX), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let db_dir = arg(&args, "--db").map_or_else(|| tmp.path().join("db"), Into::into);
    let mut questions: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--question")
        .filter_map(|(i, _)| args.get(i + 1).cloned())
        .collect();
    if questions.is_empty() {
        questions = QUESTIONS.iter().map(|q| q.to_string()).collect();
    }

    let retriever = Retriever::new(Db::create(&db_dir)?, Default::default());
    let start = Instant::now();
    let mut batch = Vec::new();
    let mut count = 0usize;
    for line in std::io::BufReader::new(std::fs::File::open(&corpus)?).lines() {
        if count == limit {
            break;
        }
        let record: serde_json::Value = serde_json::from_str(&line?)?;
        let field = |k: &str| record[k].as_str().unwrap_or_default().to_string();
        batch.push(
            NewPassage::new(field("title"), field("text"))
                .with_external_id(record["id"].to_string())
                .with_meta(serde_json::json!({ "topic": field("topic") })),
        );
        count += 1;
        if batch.len() == 1000 {
            retriever.ingest(&batch)?;
            batch.clear();
        }
    }
    retriever.ingest(&batch)?;
    let ingest = start.elapsed().as_secs_f64();
    println!(
        "stored {count} passages in {ingest:.1} s ({:.0} passages/s, not yet embedded)",
        count as f64 / ingest
    );

    let encoder = Encoder::load(&realm_db::default_model_dir()?, Default::default())?;
    println!(
        "encoder: all-MiniLM-L6-v2, max length {}, batch {}, {} threads, device {:?}",
        encoder.max_len(),
        encoder.config().batch_size,
        tch::get_num_threads(),
        encoder.device()
    );
    let start = Instant::now();
    let mut last_tenth = 0;
    let mut progress = |p: Progress| {
        let tenth = (p.done * 10 / p.total.max(1)) as usize;
        if tenth > last_tenth {
            last_tenth = tenth;
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "  embedded {}/{} ({:.1} passages/s)",
                p.done,
                p.total,
                p.done as f64 / secs
            );
        }
    };
    let generation = retriever.build_generation(
        &encoder,
        BuildOptions {
            progress: Some(&mut progress),
            ..BuildOptions::default()
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "generation {generation}: embedded and published {count} passages in {secs:.1} s = {:.1} passages/s",
        count as f64 / secs
    );

    let snapshot = retriever.snapshot()?;
    for question in &questions {
        let start = Instant::now();
        let hits = snapshot.search(question, 3)?;
        println!(
            "\nQ: {question}   ({:.0} ms, generation {generation})",
            start.elapsed().as_secs_f64() * 1e3
        );
        for hit in hits {
            let snippet: String = hit.text.chars().take(110).collect();
            println!(
                "  {}. [{:.3} p={:.2}] {} — {snippet}…",
                hit.rank, hit.score, hit.prob, hit.title
            );
        }
    }
    Ok(())
}
