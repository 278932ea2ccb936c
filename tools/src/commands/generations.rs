//! `realm-db generations`: the generations not yet collected.

use std::io::Write;

use anyhow::Result;
use realm_db::storage::ivf::IndexState;
use realm_db::{Db, GenerationInfo, IndexInfo};
use serde_json::json;

use super::Env;
use crate::cli::GenerationsArgs;
use crate::open;
use crate::output::{Align, Table, human_time, json_line, rfc3339, short_hash, truncate};

pub fn run(args: &GenerationsArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    write_generations(retriever.db(), args.json, out)
}

/// Writes every generation as a table or as JSON lines. `pinned` counts this process's
/// snapshots only (followers in other processes do not register pins).
pub(crate) fn write_generations(db: &Db, json: bool, out: &mut dyn Write) -> Result<()> {
    let generations = db.generations()?;
    if json {
        for g in &generations {
            json_line(out, &generation_json(g, &db.indexes(g.manifest.id)?))?;
        }
        return Ok(());
    }
    if generations.is_empty() {
        return crate::commands::say(out, "The database has no generations yet.");
    }
    let mut table = Table::new(&[
        ("", Align::Left),
        ("id", Align::Right),
        ("state", Align::Left),
        ("created", Align::Left),
        ("model", Align::Left),
        ("dim", Align::Right),
        ("vectors", Align::Right),
        ("readers", Align::Right),
        ("index", Align::Left),
        ("step", Align::Right),
        ("parent", Align::Right),
        ("note", Align::Left),
    ]);
    for g in &generations {
        let m = &g.manifest;
        let p = &m.spec.provenance;
        let index = db
            .indexes(m.id)?
            .into_iter()
            .rfind(|i| i.state == IndexState::Ready)
            .map_or_else(
                || "-".into(),
                |i| format!("ivf v{} ({})", i.version, i.nlist),
            );
        table.row(vec![
            if g.current { "*" } else { "" }.to_string(),
            m.id.to_string(),
            m.state.to_string(),
            human_time(m.created_ms),
            short_hash(&m.spec.model_fingerprint),
            format!(
                "{}{}",
                m.spec.dim,
                if m.spec.dtype == realm_db::Dtype::F16 {
                    " f16"
                } else {
                    ""
                }
            ),
            m.live_vectors().to_string(),
            readers(g).to_string(),
            index,
            p.training_step
                .map_or_else(|| "-".into(), |s| s.to_string()),
            p.parent.map_or_else(|| "-".into(), |s| s.to_string()),
            truncate(&p.note, 48),
        ]);
    }
    table.write(out)
}

/// Live handles (this one and those of other processes) with a snapshot of the generation.
fn readers(g: &GenerationInfo) -> usize {
    g.pinned_elsewhere + usize::from(g.pins > 0)
}

fn generation_json(g: &GenerationInfo, indexes: &[IndexInfo]) -> serde_json::Value {
    let m = &g.manifest;
    let p = &m.spec.provenance;
    json!({
        "id": m.id,
        "state": m.state.to_string(),
        "current": g.current,
        "created": rfc3339(m.created_ms),
        "created_ms": m.created_ms,
        "committed_ms": m.committed_ms,
        "retired_ms": m.retired_ms,
        "model_fingerprint": m.spec.model_fingerprint,
        "dim": m.spec.dim,
        "dtype": m.spec.dtype.to_string(),
        "vectors": m.live_vectors(),
        "dead_vectors": m.dead_vectors,
        "pinned": g.pins,
        "readers": readers(g),
        "training_step": p.training_step,
        "checkpoint_id": p.checkpoint_id,
        "parent": p.parent,
        "note": p.note,
        "query_encoders": m.query_encoders.iter().map(|q| json!({
            "version": q.version,
            "checkpoint_id": q.checkpoint_id,
            "attached_ms": q.attached_ms,
            "note": q.note,
        })).collect::<Vec<_>>(),
        "indexes": indexes.iter().map(|i| json!({
            "version": i.version,
            "kind": "ivf",
            "state": format!("{:?}", i.state).to_lowercase(),
            "nlist": i.nlist,
            "codes": i.codes.to_string(),
            "entries": i.entries,
            "note": i.note,
        })).collect::<Vec<_>>(),
    })
}
