//! What the search benches share: command-line lookups, f32 files, synthetic embedding-like
//! vectors, and a database holding one generation of given rows.

#![allow(dead_code)] // each bench uses its own part

use std::path::Path;

use realm_retriever::random::SplitMix64;
use realm_storage::{Db, Dtype, GenerationId, GenerationSpec, NewPassage};

/// The naive baseline of every search bench: one libtorch matmul of `queries` against the
/// whole matrix `plain` on its device, one top-k, and the results copied to the host (as
/// realm-db's searches return theirs).
pub fn naive_top_k(plain: &tch::Tensor, queries: &tch::Tensor, k: usize) -> (Vec<f32>, Vec<i64>) {
    let host = tch::Device::Cpu;
    let q = queries.to_device(plain.device());
    let scores = tch::no_grad(|| q.matmul(&plain.tr()));
    let (values, indices) = scores.topk(k as i64, -1, true, true);
    let values = Vec::try_from(values.to_device(host).view(-1)).expect("scores");
    let indices = Vec::try_from(indices.to_device(host).view(-1)).expect("indices");
    (values, indices)
}

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A number after `name`, or `default`.
pub fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Whether `flag` is on the command line.
pub fn flag(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}

pub fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write");
}

pub fn read_f32(path: &Path) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    )
}

/// A deterministic stream of unit vectors that behave like real embeddings: each is one
/// passage vector, plus one or two others mixed in more weakly, plus small noise. The
/// corpus's topics stay recognizable instead of averaging out.
pub struct Mixtures<'a> {
    passages: &'a [f32],
    dim: usize,
    rng: SplitMix64,
}

impl<'a> Mixtures<'a> {
    pub fn new(passages: &'a [f32], dim: usize) -> Self {
        Mixtures {
            passages,
            dim,
            rng: SplitMix64::new(2026),
        }
    }

    /// The next `n` vectors, row-major.
    pub fn next_rows(&mut self, n: usize) -> Vec<f32> {
        let (dim, rng) = (self.dim, &mut self.rng);
        let count = self.passages.len() / dim;
        let mut out = Vec::with_capacity(n * dim);
        let mut v = vec![0f32; dim];
        for _ in 0..n {
            v.iter_mut().for_each(|x| *x = 0.0);
            let parts = 2 + (rng.next_u64() % 2) as usize;
            for part in 0..parts {
                let p = (rng.next_u64() % count as u64) as usize;
                let w = if part == 0 {
                    1.0
                } else {
                    0.15 + 0.35 * rng.uniform() as f32
                };
                for (x, y) in v.iter_mut().zip(&self.passages[p * dim..(p + 1) * dim]) {
                    *x += w * y;
                }
            }
            for x in v.iter_mut() {
                *x += 0.02 * rng.normal() as f32;
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            out.extend(v.iter().map(|x| x / norm));
        }
        out
    }
}

/// Inserts `ids_from..ids_from + rows / dim` placeholder passages and writes `rows` for them
/// into `writer`, 4,096 rows per write.
pub fn insert_rows(
    db: &Db,
    writer: &mut realm_storage::GenerationWriter,
    rows: &[f32],
    dim: usize,
) {
    let n = rows.len() / dim;
    let mut done = 0;
    while done < n {
        let len = 20_000.min(n - done);
        let batch: Vec<NewPassage> = (0..len)
            .map(|i| NewPassage::new("", format!("p{}", done + i)))
            .collect();
        let ids: Vec<u64> = db
            .insert(&batch)
            .expect("insert")
            .iter()
            .map(|o| o.id())
            .collect();
        for (i, c) in ids
            .chunks(4096)
            .zip(rows[done * dim..(done + len) * dim].chunks(4096 * dim))
        {
            writer.write(i, c).expect("write");
        }
        done += len;
    }
}

/// A database at `dir` holding one committed f32 generation of `rows`.
pub fn database(dir: &Path, rows: &[f32], dim: usize) -> (Db, GenerationId) {
    let db = Db::create(dir).expect("create");
    let mut w = db
        .begin_generation(GenerationSpec::new("bench", dim as u32, Dtype::F32))
        .expect("begin");
    insert_rows(&db, &mut w, rows, dim);
    let generation = w.commit().expect("commit");
    (db, generation)
}

/// Registers DejaVu Sans (or `$REALM_DB_FONT`) for plotters' text, as `realm-db` does.
pub fn register_font() -> bool {
    let candidates = std::env::var("REALM_DB_FONT")
        .map(|p| vec![p])
        .unwrap_or_else(|_| {
            vec![
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
                "/usr/share/fonts/dejavu/DejaVuSans.ttf".into(),
                "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
            ]
        });
    candidates.iter().any(|p| match std::fs::read(p) {
        Ok(bytes) => plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .is_ok(),
        Err(_) => false,
    })
}
