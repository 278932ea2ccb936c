//! `realm-db delete`: delete passages by external id or passage id, in one atomic write.
//! Snapshots taken before (a shell's, another search's) keep seeing them.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};

use anyhow::Result;
use serde_json::json;

use super::{Env, say};
use crate::cli::DeleteArgs;
use crate::error::user;
use crate::open;
use crate::output::json_line;

pub fn run(args: &DeleteArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_writer(&args.dir, env.retriever_options()?)?;
    let db = retriever.db();
    let mut external: Vec<String> = args.id.clone();
    if let Some(path) = &args.ids_from {
        let file = std::fs::File::open(path)
            .map_err(|e| user(format!("cannot read the id list {}: {e}", path.display())))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| {
                user(format!(
                    "line {} of {} cannot be read: {e}",
                    n + 1,
                    path.display()
                ))
            })?;
            let id = line.trim();
            if !id.is_empty() {
                external.push(id.to_string());
            }
        }
    }
    if external.is_empty() && args.passage.is_empty() {
        return Err(user(
            "name the passages to delete with --id, --ids-from or --passage",
        ));
    }
    // Every name is resolved before anything is deleted: one unknown name deletes nothing.
    let snapshot = db.snapshot()?;
    let mut ids = BTreeSet::new();
    for ext in &external {
        match snapshot.get_by_external_id(ext)? {
            Some(p) => {
                ids.insert(p.id);
            }
            None => {
                return Err(user(format!(
                    "no passage has the external id {ext:?}; nothing was deleted"
                )));
            }
        }
    }
    for &id in &args.passage {
        if snapshot.get(id)?.is_none() {
            return Err(user(format!(
                "no passage has the id {id}; nothing was deleted"
            )));
        }
        ids.insert(id);
    }
    drop(snapshot);
    let ids: Vec<u64> = ids.into_iter().collect();
    let deleted = db.delete(&ids)?;
    if args.json {
        return json_line(out, &json!({ "deleted": deleted, "ids": ids }));
    }
    let noun = if deleted == 1 { "passage" } else { "passages" };
    say(
        out,
        format_args!(
            "Deleted {deleted} {noun} in one write; snapshots taken before still see them."
        ),
    )
}
