//! `realm-db init`: create a database and build generation 1.

use std::io::Write;

use anyhow::Result;
use realm_db::{BuildOptions, Db, Provenance, Retriever};
use serde_json::json;

use super::{Env, say};
use crate::cli::InitArgs;
use crate::error::user;
use crate::open;
use crate::output::{json_line, short_hash};

pub fn run(args: &InitArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    if args.dir.join("CURRENT").exists() {
        return Err(user(format!(
            "a realm-db database already exists at {}; ingest into it or pick another directory",
            args.dir.display()
        )));
    }
    let options = env.retriever_options()?;
    let model = match &args.model {
        Some(path) => path.clone(),
        None => open::default_model()?,
    };
    // Load the encoder before creating anything, so a bad model leaves no half-made database.
    let encoder = open::load_encoder(&model, options.encoder.clone())?;
    let retriever = Retriever::new(Db::create(&args.dir)?, options);
    let build = BuildOptions {
        provenance: Provenance {
            note: format!("init from {}", model.display()),
            ..Provenance::default()
        },
        dtype: args.dtype.into(),
        progress: None,
        query_encoder: None,
        index: args.index.config(),
    };
    let generation = retriever.build_generation(&encoder, build)?;
    let manifest = retriever.db().generation(generation)?;
    if args.json {
        return json_line(
            out,
            &json!({
                "generation": generation,
                "model_fingerprint": manifest.spec.model_fingerprint,
                "dim": manifest.spec.dim,
                "dtype": manifest.spec.dtype.to_string(),
                "vectors": manifest.live_vectors(),
            }),
        );
    }
    say(
        out,
        format_args!(
            "Created the database at {} with generation {generation} (encoder {}, {} dimensions, {}).",
            args.dir.display(),
            short_hash(&manifest.spec.model_fingerprint),
            manifest.spec.dim,
            manifest.spec.dtype
        ),
    )
}
