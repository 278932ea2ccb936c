//! `realm-db ingest`: stream passages from files into the database, embedding them with the
//! current generation's document encoder; with `--upsert`, changed passages replace the
//! stored ones.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use realm_db::{InsertOutcome, NewPassage, Retriever, StorageError};
use serde_json::json;

use super::{Env, say};
use crate::cli::IngestArgs;
use crate::error::user;
use crate::ingest::{Format, RecordReader};
use crate::open;
use crate::progress;

/// A rejected input line.
#[derive(Debug)]
struct Rejected {
    file: String,
    line: u64,
    reason: String,
}

/// What an ingest did.
#[derive(Debug, Default)]
struct Summary {
    inserted: u64,
    updated: u64,
    duplicate: u64,
    rejected: Vec<Rejected>,
}

/// A batch of valid records waiting to be written.
#[derive(Debug, Default)]
struct Batch {
    passages: Vec<NewPassage>,
    lines: Vec<u64>,
    /// The batch's external ids: an upsert batch holds each at most once, so a later line
    /// with the same id goes into the next batch and updates the earlier one.
    external_ids: HashSet<String>,
}

impl Batch {
    fn repeats(&self, passage: &NewPassage) -> bool {
        passage
            .external_id
            .as_ref()
            .is_some_and(|ext| self.external_ids.contains(ext))
    }

    fn push(&mut self, passage: NewPassage, line: u64) {
        if let Some(ext) = &passage.external_id {
            self.external_ids.insert(ext.clone());
        }
        self.passages.push(passage);
        self.lines.push(line);
    }

    fn clear(&mut self) {
        self.passages.clear();
        self.lines.clear();
        self.external_ids.clear();
    }
}

/// One input file, opened before anything is written.
#[derive(Debug)]
struct Input {
    path: PathBuf,
    file: File,
    len: u64,
    format: Format,
}

fn open_inputs(files: &[PathBuf]) -> Result<Vec<Input>> {
    files
        .iter()
        .map(|path| {
            let fail = |e: std::io::Error| {
                user(format!(
                    "cannot read the input file {}: {e}",
                    path.display()
                ))
            };
            let file = File::open(path).map_err(fail)?;
            let meta = file.metadata().map_err(fail)?;
            if meta.is_dir() {
                return Err(user(format!(
                    "the input {} is a directory; pass the files in it instead",
                    path.display()
                )));
            }
            Ok(Input {
                path: path.clone(),
                file,
                len: meta.len(),
                format: Format::for_path(path),
            })
        })
        .collect()
}

pub fn run(args: &IngestArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let inputs = open_inputs(&args.files)?;
    let retriever = open::open_writer(&args.dir, env.retriever_options()?)?;
    let total: u64 = inputs.iter().map(|i| i.len).sum();
    let bar = progress::bar(total, "{msg:16!} [{bar:24}] {bytes}/{total_bytes} ({eta})");
    let mut summary = Summary::default();
    let mut done_bytes = 0u64;
    for input in inputs {
        let name = input.path.display().to_string();
        bar.set_message(display_name(&input.path));
        let title = input
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = input
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut reader = RecordReader::new(
            BufReader::new(input.file),
            input.format,
            &title,
            &source,
            realm_db::storage::PassageLimits::default(),
        );
        let mut batch = Batch::default();
        while let Some(item) = reader.next() {
            let item = item.map_err(|e| {
                user(format!(
                    "reading {name} failed after line {}: {e}",
                    reader.line()
                ))
            })?;
            match item {
                Ok(record) => {
                    if args.upsert && batch.repeats(&record.passage) {
                        write_batch(&retriever, args.upsert, &mut batch, &name, &mut summary)?;
                    }
                    batch.push(record.passage, record.line);
                }
                Err(rejection) => summary.rejected.push(Rejected {
                    file: name.clone(),
                    line: rejection.line,
                    reason: rejection.reason,
                }),
            }
            if batch.passages.len() >= args.batch as usize {
                write_batch(&retriever, args.upsert, &mut batch, &name, &mut summary)?;
                bar.set_position(done_bytes + reader.bytes_read());
            }
        }
        write_batch(&retriever, args.upsert, &mut batch, &name, &mut summary)?;
        done_bytes += input.len;
        bar.set_position(done_bytes);
    }
    bar.finish_and_clear();
    report(args, &retriever, &summary, out)?;
    if args.strict && !summary.rejected.is_empty() {
        let n = summary.rejected.len();
        return Err(user(format!(
            "{n} input {} rejected (--strict); the others were ingested",
            if n == 1 { "line was" } else { "lines were" }
        )));
    }
    Ok(())
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Writes a batch (an upsert with `upsert`); a passage the store rejects is reported and the
/// rest retried.
fn write_batch(
    retriever: &Retriever,
    upsert: bool,
    batch: &mut Batch,
    file: &str,
    summary: &mut Summary,
) -> Result<()> {
    while !batch.passages.is_empty() {
        let written = if upsert {
            retriever.upsert(&batch.passages)
        } else {
            retriever.ingest(&batch.passages)
        };
        match written {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome {
                        InsertOutcome::Inserted(_) => summary.inserted += 1,
                        InsertOutcome::Updated { .. } => summary.updated += 1,
                        InsertOutcome::Duplicate(_) => summary.duplicate += 1,
                    }
                }
                batch.clear();
            }
            Err(realm_db::Error::Storage(StorageError::InvalidPassage { index, reason }))
                if index < batch.passages.len() =>
            {
                let passage = batch.passages.remove(index);
                if let Some(ext) = &passage.external_id {
                    batch.external_ids.remove(ext);
                }
                let line = batch.lines.remove(index);
                summary.rejected.push(Rejected {
                    file: file.to_string(),
                    line,
                    reason: format!("The store rejected the passage: {reason}."),
                });
            }
            Err(e) => {
                let first = batch.lines.first().copied().unwrap_or(0);
                let last = batch.lines.last().copied().unwrap_or(0);
                return Err(anyhow::Error::new(e).context(format!(
                    "writing the passages of {file} lines {first} to {last} failed"
                )));
            }
        }
    }
    Ok(())
}

fn report(
    args: &IngestArgs,
    retriever: &Retriever,
    summary: &Summary,
    out: &mut dyn Write,
) -> Result<()> {
    let pending =
        retriever.db().current_generation()?.is_none() && summary.inserted + summary.updated > 0;
    if args.json {
        for r in &summary.rejected {
            crate::output::json_line(
                out,
                &json!({"type": "rejected", "file": r.file, "line": r.line, "reason": r.reason}),
            )?;
        }
        return crate::output::json_line(
            out,
            &json!({
                "type": "summary",
                "files": args.files.len(),
                "inserted": summary.inserted,
                "updated": summary.updated,
                "duplicate": summary.duplicate,
                "rejected": summary.rejected.len(),
                "pending": pending,
            }),
        );
    }
    // Without --upsert nothing is ever updated, and the line stays as it always was.
    let updated = if args.upsert {
        format!(" {} updated,", summary.updated)
    } else {
        String::new()
    };
    say(
        out,
        format_args!(
            "Ingested {} {}: {} inserted,{updated} {} duplicate, {} rejected.",
            args.files.len(),
            if args.files.len() == 1 {
                "file"
            } else {
                "files"
            },
            summary.inserted,
            summary.duplicate,
            summary.rejected.len()
        ),
    )?;
    if !summary.rejected.is_empty() {
        say(out, "Rejected lines:")?;
        for r in &summary.rejected {
            say(out, format_args!("  {}:{}: {}", r.file, r.line, r.reason))?;
        }
    }
    if pending {
        say(
            out,
            format_args!(
                "The database has no generation yet, so the new passages are pending; run `realm-db reindex {} --checkpoint MODEL` to embed them.",
                args.dir.display()
            ),
        )?;
    }
    Ok(())
}
