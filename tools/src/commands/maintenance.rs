//! `realm-db gc`, `realm-db stats` and `realm-db check`.

use std::io::Write;

use anyhow::Result;
use realm_db::trainer::{BlobGcOptions, BlobGcReport, collect_blobs};
use serde_json::json;

use super::{Env, say};
use crate::cli::{CheckArgs, GcArgs, StatsArgs};
use crate::error::user;
use crate::open;
use crate::output::{Align, Table, human_bytes, json_line};

/// Ids as `1, 2, 3`, or `none`.
fn id_list(ids: &[u64]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `1 passage`, `2 passages`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn gc(args: &GcArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_writer(&args.dir, env.retriever_options()?)?;
    let db = retriever.db();
    // Generations first: the encoders of the generations collected become garbage too.
    let report = db.gc(args.keep)?;
    let options = BlobGcOptions {
        keep_runs: args.keep_runs,
    };
    let blobs = collect_blobs(db, &options)?;
    if args.json {
        return json_line(
            out,
            &json!({
                "collected": report.collected,
                "retained": report.retained,
                "pinned": report.pinned,
                "phrase_collected": report.phrase_collected,
                "phrase_retained": report.phrase_retained,
                "phrase_pinned": report.phrase_pinned,
                "keep": args.keep,
                "keep_runs": args.keep_runs,
                "blobs_collected": blobs.collected.iter().map(|b| &b.name).collect::<Vec<_>>(),
                "blob_bytes_freed": blobs.bytes_freed(),
                "blob_bytes_kept": blobs.bytes_kept,
                "blobs_unreadable": blobs
                    .unreadable
                    .iter()
                    .map(|u| json!({"name": u.name, "reason": u.reason}))
                    .collect::<Vec<_>>(),
            }),
        );
    }
    if report.collected.is_empty() {
        say(out, "Collected no generations.")?;
    } else {
        say(
            out,
            format_args!("Collected generations {}.", id_list(&report.collected)),
        )?;
    }
    say(
        out,
        format_args!(
            "Kept retired generations {} (the newest {} by --keep); pinned by a live reader (in any process): {}.",
            id_list(&report.retained),
            args.keep,
            id_list(&report.pinned)
        ),
    )?;
    let phrases = [
        &report.phrase_collected,
        &report.phrase_retained,
        &report.phrase_pinned,
    ];
    if phrases.iter().any(|list| !list.is_empty()) {
        say(
            out,
            format_args!(
                "Phrase generations: collected {}; kept by --keep {}; pinned by a live reader {}.",
                id_list(&report.phrase_collected),
                id_list(&report.phrase_retained),
                id_list(&report.phrase_pinned)
            ),
        )?;
    }
    say_blobs(&blobs, out)
}

/// The blob part of `gc`'s report.
fn say_blobs(blobs: &BlobGcReport, out: &mut dyn Write) -> Result<()> {
    if blobs.collected.is_empty() {
        say(out, "Collected no blobs.")?;
    } else {
        say(
            out,
            format_args!(
                "Collected {}, freeing {}:",
                plural(blobs.collected.len() as u64, "blob"),
                human_bytes(blobs.bytes_freed())
            ),
        )?;
        for blob in &blobs.collected {
            say(
                out,
                format_args!("  {} ({})", blob.name, human_bytes(blob.bytes)),
            )?;
        }
    }
    say(
        out,
        format_args!("Kept {} of blobs.", human_bytes(blobs.bytes_kept)),
    )?;
    for unreadable in &blobs.unreadable {
        say(
            out,
            format_args!(
                "Kept the unreadable blob {} and every encoder, phrase encoder and reader it might name: {}.",
                unreadable.name, unreadable.reason
            ),
        )?;
    }
    Ok(())
}

pub fn stats(args: &StatsArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let db = retriever.db();
    let snapshot = db.snapshot()?;
    let index = match snapshot.index()? {
        Some(info) => {
            let sizes = snapshot.index_list_sizes(info.version)?;
            Some((info, sizes))
        }
        None => None,
    };
    let (stats, pending, blobs) = (db.stats()?, snapshot.pending()?.len(), db.blobs()?);
    let blob_bytes: u64 = blobs.iter().map(|b| b.bytes).sum();
    let index = index.map(|(info, sizes)| IndexSummary::new(info, &sizes));
    let total: u64 = stats.disk_bytes.values().sum();
    if args.json {
        return json_line(
            out,
            &json!({
                "format_version": stats.format_version,
                "passages": stats.passages,
                "current_generation": stats.current_generation,
                "generations": stats.generations,
                "current_phrase_generation": stats.current_phrase_generation,
                "phrase_generations": stats.phrase_generations,
                "pending": pending,
                "blobs": blobs.len(),
                "blob_bytes": blob_bytes,
                "disk_bytes": stats.disk_bytes,
                "disk_bytes_total": total,
                "folder_bytes": stats.folder_bytes,
                "index": index.as_ref().map(IndexSummary::json),
            }),
        );
    }
    let mut table = Table::new(&[("", Align::Left), ("", Align::Right), ("", Align::Left)]);
    let row = |table: &mut Table, name: &str, value: String, note: String| {
        table.row(vec![name.to_string(), value, note]);
    };
    row(
        &mut table,
        "passages",
        stats.passages.to_string(),
        String::new(),
    );
    row(
        &mut table,
        "current generation",
        stats
            .current_generation
            .map_or_else(|| "none".into(), |g| g.to_string()),
        String::new(),
    );
    row(
        &mut table,
        "generations",
        stats.generations.to_string(),
        String::new(),
    );
    if stats.phrase_generations > 0 {
        row(
            &mut table,
            "phrase generations",
            stats.phrase_generations.to_string(),
            stats
                .current_phrase_generation
                .map_or_else(|| "none current".into(), |g| format!("current: {g}")),
        );
    }
    row(
        &mut table,
        "pending",
        pending.to_string(),
        "(passages without a vector in the current generation)".into(),
    );
    row(
        &mut table,
        "blobs",
        blobs.len().to_string(),
        "(encoder, phrase encoder and reader checkpoints, trainer state, your blobs)".into(),
    );
    row(
        &mut table,
        "blob bytes",
        blob_bytes.to_string(),
        format!("({})", human_bytes(blob_bytes)),
    );
    for (cf, bytes) in &stats.disk_bytes {
        row(
            &mut table,
            &format!("disk bytes: {cf}"),
            bytes.to_string(),
            format!("({})", human_bytes(*bytes)),
        );
    }
    row(
        &mut table,
        "disk bytes: total",
        total.to_string(),
        format!("({})", human_bytes(total)),
    );
    row(
        &mut table,
        "disk bytes: folder",
        stats.folder_bytes.to_string(),
        format!("({})", human_bytes(stats.folder_bytes)),
    );
    if let Some(index) = &index {
        row(
            &mut table,
            "index",
            format!("IVF v{}", index.info.version),
            format!(
                "({} lists, {} codes, {} entries)",
                index.info.nlist, index.info.codes, index.info.entries
            ),
        );
        row(
            &mut table,
            "index list sizes",
            format!("{}/{:.1}/{}", index.min, index.mean, index.max),
            format!("(min/mean/max; imbalance {:.2})", index.imbalance),
        );
    }
    table.write(out)?;
    if index.as_ref().is_some_and(|i| i.rebuild_suggested) {
        say(
            out,
            "Suggestion: the index has drifted (its lists grew by half or became uneven); `realm-db index DIR --ivf` builds a fresh version.",
        )?;
    }
    say(
        out,
        "(Column-family figures are table files as of the writer's last flush; the folder figure is every file on disk, its log included.)",
    )?;
    Ok(())
}

/// The current generation's index as `stats` shows it.
struct IndexSummary {
    info: realm_db::IndexInfo,
    min: u64,
    max: u64,
    mean: f64,
    imbalance: f64,
    rebuild_suggested: bool,
}

impl IndexSummary {
    fn new(info: realm_db::IndexInfo, sizes: &[u64]) -> Self {
        let imbalance = realm_db::storage::ivf::imbalance(sizes);
        IndexSummary {
            min: sizes.iter().copied().min().unwrap_or(0),
            max: sizes.iter().copied().max().unwrap_or(0),
            mean: sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64,
            rebuild_suggested: info.rebuild_suggested(imbalance),
            imbalance,
            info,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "kind": "ivf",
            "version": self.info.version,
            "nlist": self.info.nlist,
            "codes": self.info.codes.to_string(),
            "entries": self.info.entries,
            "entries_at_publication": self.info.published_entries,
            "list_size_min": self.min,
            "list_size_mean": self.mean,
            "list_size_max": self.max,
            "imbalance": self.imbalance,
            "rebuild_suggested": self.rebuild_suggested,
        })
    }
}

pub fn check(args: &CheckArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let report = retriever.db().verify()?;
    if args.json {
        json_line(
            out,
            &json!({
                "passages": report.passages,
                "generations": report.generations,
                "blocks": report.blocks,
                "rows": report.rows,
                "phrase_generations": report.phrase_generations,
                "phrase_records": report.phrase_records,
                "problems": report.problems,
            }),
        )?;
    } else if report.problems.is_empty() {
        say(
            out,
            format_args!(
                "The database at {} is sound: {}, {}, {} holding {}{}.",
                args.dir.display(),
                plural(report.passages, "passage"),
                plural(report.generations as u64, "generation"),
                plural(report.blocks, "vector block"),
                plural(report.rows, "row"),
                if report.phrase_generations > 0 {
                    format!(
                        ", {} with {}",
                        plural(report.phrase_generations as u64, "phrase generation"),
                        plural(report.phrase_records, "row record")
                    )
                } else {
                    String::new()
                }
            ),
        )?;
    } else {
        for problem in &report.problems {
            say(out, format_args!("problem: {problem}"))?;
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(user(format!(
            "the integrity check of {} found {} problem{}",
            args.dir.display(),
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        )))
    }
}
