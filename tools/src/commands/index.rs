//! `realm-db index`: add an approximate (IVF) index to a generation as its next index
//! version. Snapshots taken before it is published keep searching as they did.

use std::io::Write;

use anyhow::Result;
use realm_db::Progress;
use serde_json::json;

use super::{Env, ivf_config, say};
use crate::cli::IndexArgs;
use crate::error::user;
use crate::open;
use crate::output::{human_bytes, json_line};
use crate::progress;

pub fn run(args: &IndexArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_writer(&args.dir, env.retriever_options()?)?;
    let db = retriever.db();
    let generation = match args.generation.or(db.current_generation()?) {
        Some(g) => g,
        None => {
            return Err(user(format!(
                "the database at {} has no generation to index yet; build one with `realm-db reindex`",
                args.dir.display()
            )));
        }
    };
    let manifest = db.generation(generation)?;
    let bar = progress::bar(
        manifest.vector_count,
        "indexing [{bar:24}] {pos}/{len} ({per_sec}, {eta})",
    );
    let mut on_progress = |p: Progress| {
        bar.set_length(p.total.max(p.done));
        bar.set_position(p.done);
    };
    let start = std::time::Instant::now();
    let config = ivf_config(args.nlist, args.codes);
    let info = retriever.build_index(generation, &config, Some(&mut on_progress))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let code_bytes = info.entries * (u64::from(manifest.spec.dim) + 8);
    if args.json {
        return json_line(
            out,
            &json!({
                "generation": generation,
                "index_version": info.version,
                "nlist": info.nlist,
                "codes": info.codes.to_string(),
                "entries": info.entries,
                "seconds": seconds,
                "list_bytes": code_bytes,
            }),
        );
    }
    say(
        out,
        format_args!(
            "Published index {} of generation {generation}: IVF, {} lists, {} codes, {} entries ({} of lists) in {seconds:.1} s.",
            info.version,
            info.nlist,
            info.codes,
            info.entries,
            human_bytes(code_bytes)
        ),
    )
}
