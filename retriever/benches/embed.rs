//! Embedding throughput of the document encoder on the real corpus (`title + " " + text`,
//! max length 256, batch 64), side by side in one run with sentence-transformers on the same
//! passages (Python; needs `torch==2.11.0` and `sentence-transformers`, e.g. in a venv named
//! by `$REALM_ST_PYTHON`).
//!
//! `cargo bench -p realm-retriever --bench embed -- [--corpus PATH] [--passages N]`

use std::io::BufRead;
use std::time::Instant;

use realm_retriever::{Encoder, EncoderConfig, default_model_dir};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let corpus = arg("--corpus").unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/corpus.jsonl"
        )
        .to_string()
    });
    let n: usize = arg("--passages")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let file = std::fs::File::open(&corpus).unwrap_or_else(|e| panic!("{corpus}: {e}"));
    let mut docs: Vec<(String, String)> = Vec::new();
    for line in std::io::BufReader::new(file).lines().take(n) {
        let r: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        docs.push((
            r["title"].as_str().unwrap_or_default().into(),
            r["text"].as_str().unwrap_or_default().into(),
        ));
    }
    let model = default_model_dir().expect("the default model");
    let cfg = EncoderConfig {
        batch_size: 64,
        threads: Some(2),
        ..EncoderConfig::default()
    };
    let encoder = Encoder::load(&model, cfg).expect("encoder");
    let pairs: Vec<(&str, &str)> = docs.iter().map(|(t, x)| (t.as_str(), x.as_str())).collect();
    let _warm = encoder
        .encode_docs(&pairs[..8.min(pairs.len())])
        .expect("warm-up");
    let start = Instant::now();
    let out = encoder.encode_docs(&pairs).expect("encode");
    let secs = start.elapsed().as_secs_f64();
    let ours = docs.len() as f64 / secs;
    println!(
        "realm-db: {} passages ({:?}) in {secs:.1} s = {ours:.1} passages/s (max length {}, batch 64, 2 threads)",
        docs.len(),
        out.size(),
        encoder.max_len()
    );
    let python = std::env::var("REALM_ST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/st_embed.py");
    let st = std::process::Command::new(python)
        .arg(script)
        .arg(&model)
        .arg(&corpus)
        .arg(n.to_string())
        .arg("64")
        .output();
    match st {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let rate: Option<f64> = text
                .split("rate=")
                .nth(1)
                .and_then(|r| r.trim().parse().ok());
            print!("{text}");
            if let Some(rate) = rate {
                println!(
                    "ratio realm-db / sentence-transformers: {:.2}x",
                    ours / rate
                );
            }
        }
        Ok(o) => println!(
            "sentence-transformers: not run ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Err(e) => println!("sentence-transformers: not run ({e})"),
    }
}
