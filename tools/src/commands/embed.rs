//! `realm-db embed`: embed lines of stdin with a database's query encoder or a model.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::Result;
use realm_db::Encoder;
use serde::Serialize;

use super::Env;
use crate::cli::EmbedArgs;
use crate::error::user;
use crate::open;
use crate::output::json_line;

#[derive(Debug, Serialize)]
struct Embedded<'a> {
    text: &'a str,
    embedding: &'a [f32],
}

fn encoder(args: &EmbedArgs, env: &Env) -> Result<Arc<Encoder>> {
    let options = env.retriever_options()?;
    if let Some(dir) = &args.dir {
        let retriever = open::open_reader(dir, options)?;
        let current = retriever.db().current_generation()?.ok_or_else(|| {
            user(format!(
                "the database at {} has no generation yet, so it has no query encoder; pass --model instead",
                dir.display()
            ))
        })?;
        let manifest = retriever.db().generation(current)?;
        return Ok(retriever.query_encoder(&manifest)?);
    }
    let model = match &args.model {
        Some(path) => path.clone(),
        None => open::default_model()?,
    };
    Ok(Arc::new(open::load_encoder(&model, options.encoder)?))
}

pub fn run(args: &EmbedArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let encoder = encoder(args, env)?;
    let dim = encoder.dim() as usize;
    let stdin = std::io::stdin();
    let mut lines: Vec<String> = Vec::new();
    let flush = |lines: &mut Vec<String>, out: &mut dyn Write| -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
        let values = realm_db::retriever::tensor_rows(&encoder.encode(&texts)?)?;
        for (i, text) in texts.iter().enumerate() {
            json_line(
                out,
                &Embedded {
                    text,
                    embedding: &values[i * dim..(i + 1) * dim],
                },
            )?;
        }
        lines.clear();
        Ok(())
    };
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| {
            user(format!(
                "standard input line {} cannot be read: {e}",
                number + 1
            ))
        })?;
        lines.push(line.trim_end_matches('\r').to_string());
        if lines.len() >= args.batch as usize {
            flush(&mut lines, out)?;
        }
    }
    flush(&mut lines, out)
}
