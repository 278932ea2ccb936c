//! `realm-db reindex`: build and publish a new generation.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use realm_db::{BuildOptions, Dtype, Progress, Provenance};
use serde_json::json;

use super::{Env, say};
use crate::cli::ReindexArgs;
use crate::error::user;
use crate::open;
use crate::output::{json_line, short_hash};
use crate::progress;

pub fn run(args: &ReindexArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let options = env.retriever_options()?;
    let encoder_config = options.encoder.clone();
    let retriever = open::open_writer(&args.dir, options)?;
    let current = match retriever.db().current_generation()? {
        Some(id) => Some(retriever.db().generation(id)?),
        None => None,
    };
    let (encoder, default_note) = match (&args.checkpoint, &current) {
        (Some(path), _) => (
            Arc::new(open::load_encoder(path, encoder_config)?),
            format!("reindex with {}", path.display()),
        ),
        (None, Some(manifest)) => (
            retriever.document_encoder(manifest)?,
            format!("reindex with the encoder of generation {}", manifest.id),
        ),
        (None, None) => {
            return Err(user(format!(
                "the database at {} has no generation whose encoder could be reused; pass --checkpoint with a model folder or checkpoint file",
                args.dir.display()
            )));
        }
    };
    // Reindexing with the current document encoder keeps the current query tower (a trained
    // one, after query-side or dual training); a new checkpoint brings its own.
    let query_encoder = match (&args.checkpoint, &current) {
        (None, Some(manifest)) if manifest.query_encoder().is_some() => {
            Some(retriever.query_encoder(manifest)?)
        }
        _ => None,
    };
    let dtype = match (args.dtype, &current) {
        (Some(d), _) => d.into(),
        (None, Some(m)) => m.spec.dtype,
        (None, None) => Dtype::F32,
    };
    let total = retriever.db().snapshot()?.passage_count()?;
    let bar = progress::bar(total, "embedding [{bar:24}] {pos}/{len} ({per_sec}, {eta})");
    let mut on_progress = |p: Progress| {
        bar.set_length(p.total.max(p.done));
        bar.set_position(p.done);
    };
    let build = BuildOptions {
        provenance: Provenance {
            note: args.note.clone().unwrap_or(default_note),
            ..Provenance::default()
        },
        dtype,
        progress: Some(&mut on_progress),
        query_encoder: query_encoder.as_deref(),
        index: args.index.config(),
    };
    let generation = retriever.build_generation(&encoder, build)?;
    bar.finish_and_clear();
    let manifest = retriever.db().generation(generation)?;
    if args.json {
        return json_line(
            out,
            &json!({
                "generation": generation,
                "parent": manifest.spec.provenance.parent,
                "vectors": manifest.live_vectors(),
                "model_fingerprint": manifest.spec.model_fingerprint,
                "dim": manifest.spec.dim,
                "dtype": manifest.spec.dtype.to_string(),
            }),
        );
    }
    say(
        out,
        format_args!(
            "Published generation {generation}: {} passages embedded with encoder {} ({} dimensions, {}).",
            manifest.live_vectors(),
            short_hash(&manifest.spec.model_fingerprint),
            manifest.spec.dim,
            manifest.spec.dtype
        ),
    )
}
