//! `realm-db search`: top-k retrieval from the current or a retained generation.

use std::io::Write;

use anyhow::Result;
use realm_db::{Hit, Retriever, SearchMode, SearchSnapshot};
use serde::Serialize;

use super::{Env, say};
use crate::cli::SearchArgs;
use crate::error::user;
use crate::open;
use crate::output::{Align, Table, json_line, snippet, truncate};

/// Characters of passage text shown with each hit.
pub(crate) const SNIPPET_CHARS: usize = 100;

pub fn run(args: &SearchArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    if args.query.trim().is_empty() {
        return Err(user("the query is empty; give the text to search for"));
    }
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    if let Some(unit) = super::phrase_search::unit_of(args) {
        return super::phrase_search::search(&retriever, args, unit, out);
    }
    let mode = args.retrieval.mode();
    let snapshot = pin_for(&retriever, args.generation, mode)?;
    snapshot.set_search_options(args.retrieval.index.options());
    let hits = snapshot.search_with(&args.query, args.k as usize, mode)?;
    write_hits(&snapshot, &hits, args.json, out)
}

/// Pins the current generation, or `generation` (time travel). BM25 needs no generation;
/// the other modes do.
pub(crate) fn pin_for(
    retriever: &Retriever,
    generation: Option<u64>,
    mode: SearchMode,
) -> Result<SearchSnapshot> {
    match (mode, generation) {
        (SearchMode::Bm25(_), None) => Ok(retriever.snapshot()?),
        _ => pin(retriever, generation),
    }
}

/// Pins the current generation, or `generation` (time travel); a database without any
/// generation is a user error.
pub(crate) fn pin(retriever: &Retriever, generation: Option<u64>) -> Result<SearchSnapshot> {
    let snapshot = match generation {
        Some(g) => retriever.snapshot_at(g)?,
        None => retriever.snapshot()?,
    };
    if snapshot.generation_id().is_none() {
        return Err(user(format!(
            "the database at {} has no generation to search yet; build one with `realm-db reindex {} --checkpoint MODEL`",
            retriever.db().path().display(),
            retriever.db().path().display()
        )));
    }
    Ok(snapshot)
}

/// The version of the query encoder a dense search of `snapshot` uses: its generation's
/// newest attached query-encoder version, or `None` when queries go through the document
/// encoder (or there is no generation).
pub(crate) fn query_encoder_version(snapshot: &SearchSnapshot) -> Option<u32> {
    snapshot
        .storage()
        .generation()
        .and_then(|m| m.query_encoder())
        .map(|q| q.version)
}

/// A hit as a JSON line.
#[derive(Debug, Serialize)]
struct HitJson<'a> {
    rank: usize,
    id: u64,
    external_id: Option<&'a str>,
    title: &'a str,
    score: f32,
    prob: f32,
    generation: u64,
    /// The query-encoder version of the generation that encoded the query (`null`: its
    /// document encoder, or no encoder at all in BM25 mode).
    query_encoder: Option<u32>,
    snippet: String,
}

/// Writes hits as a table or as JSON lines.
pub(crate) fn write_hits(
    snapshot: &SearchSnapshot,
    hits: &[Hit],
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if json {
        let query_encoder = query_encoder_version(snapshot);
        for hit in hits {
            let external_id = snapshot
                .storage()
                .get(hit.passage_id)?
                .and_then(|p| p.external_id);
            json_line(
                out,
                &HitJson {
                    rank: hit.rank,
                    id: hit.passage_id,
                    external_id: external_id.as_deref(),
                    title: &hit.title,
                    score: hit.score,
                    prob: hit.prob,
                    generation: hit.generation,
                    query_encoder,
                    snippet: snippet(&hit.text, SNIPPET_CHARS),
                },
            )?;
        }
        return Ok(());
    }
    if hits.is_empty() {
        return say(out, "No passages found.");
    }
    let mut table = Table::new(&[
        ("rank", Align::Right),
        ("id", Align::Right),
        ("score", Align::Right),
        ("prob", Align::Right),
        ("gen", Align::Right),
        ("title", Align::Left),
        ("snippet", Align::Left),
    ]);
    for hit in hits {
        table.row(vec![
            hit.rank.to_string(),
            hit.passage_id.to_string(),
            format!("{:.4}", hit.score),
            format!("{:.3}", hit.prob),
            hit.generation.to_string(),
            truncate(&hit.title, 32),
            snippet(&hit.text, SNIPPET_CHARS),
        ]);
    }
    table.write(out)
}
