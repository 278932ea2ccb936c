//! `realm-db export`: every passage as JSON lines, from one snapshot.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use realm_db::storage::VectorMatrix;
use serde::Serialize;

use super::Env;
use crate::cli::ExportArgs;
use crate::open;
use crate::output::json_line;

#[derive(Debug, Serialize)]
struct Exported<'a> {
    id: u64,
    external_id: Option<&'a str>,
    title: &'a str,
    text: &'a str,
    meta: &'a serde_json::Value,
    /// Present only with `--vectors`; `null` for a passage still pending in the generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Option<&'a [f32]>>,
}

pub fn run(args: &ExportArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let db = retriever.db();
    let snapshot = match args.generation {
        Some(g) => db.snapshot_at(g)?,
        None => db.snapshot()?,
    };
    // Every vector of the pinned generation, read through the same snapshot as the passages.
    let vectors: Option<(VectorMatrix, HashMap<u64, usize>)> =
        match (args.vectors, snapshot.generation_id()) {
            (true, Some(_)) => {
                let matrix = snapshot.vectors()?;
                let rows = matrix
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(row, &id)| (id, row))
                    .collect();
                Some((matrix, rows))
            }
            _ => None,
        };
    for passage in snapshot.passages() {
        let passage = passage?;
        let embedding = args.vectors.then(|| {
            vectors
                .as_ref()
                .and_then(|(matrix, rows)| rows.get(&passage.id).map(|&row| matrix.row(row)))
        });
        json_line(
            out,
            &Exported {
                id: passage.id,
                external_id: passage.external_id.as_deref(),
                title: &passage.title,
                text: &passage.text,
                meta: &passage.meta,
                embedding,
            },
        )?;
    }
    Ok(())
}
