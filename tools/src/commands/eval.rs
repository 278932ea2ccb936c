//! `realm-db eval`: DPR-style top-k retrieval accuracy of one or more retrieval modes on
//! the same snapshot and questions, as a table, JSON lines or a plot.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use realm_db::retriever::eval::{
    AnswerMatcher, QaExample, TopKAccuracy, normalize_answer, read_qa_file,
    read_qa_file_skipping_bad_lines,
};
use realm_db::{SearchMode, SearchSnapshot};
use serde::Serialize;

use super::phrase_eval::PhraseEval;
use super::rankings::{RankedPassage, Ranking, RankingsHeader, write_rankings};
use super::reader_eval::ReaderEval;
use super::search::{pin_for, query_encoder_version};
use super::{Env, say};
use crate::cli::{EvalArgs, ModeArg};
use crate::error::user;
use crate::open;
use crate::output::{Align, Table, json_line};
use crate::plot::{Series, plot_accuracy};
use crate::progress;

/// The largest k a plot shows (the curve of accuracy against k runs from 1 to this).
const PLOT_MAX_K: usize = 100;

/// One evaluated system.
struct SystemResult {
    mode: SearchMode,
    accuracy: TopKAccuracy,
    /// Seconds spent retrieving (encoding included), not matching answers.
    retrieval_seconds: f64,
    /// Each question's ranking, when `--rankings` asks for them.
    rankings: Vec<Ranking>,
}

/// A system's figures as a JSON line.
#[derive(Debug, Serialize)]
struct SystemJson<'a> {
    system: &'a str,
    qa: String,
    generation: Option<u64>,
    /// The query-encoder version dense retrieval used (`null`: the generation's document
    /// encoder).
    query_encoder: Option<u32>,
    questions: usize,
    in_corpus_questions: Option<usize>,
    /// k → fraction of all questions with a matching passage in the top k.
    accuracy: Vec<(usize, f64)>,
    /// k → the same over the `in_corpus` questions.
    in_corpus_accuracy: Option<Vec<(usize, f64)>>,
    retrieval_seconds: f64,
    questions_per_second: f64,
    /// Question lines skipped as unusable (`--skip-bad-lines`).
    skipped_lines: usize,
    /// Answer patterns that could not be compiled, which match nothing.
    bad_patterns: usize,
}

/// What the evaluation left out of the question file, each named in a warning.
#[derive(Debug, Default, Clone, Copy)]
struct LeftOut {
    skipped_lines: usize,
    bad_patterns: usize,
}

/// Prints a warning on standard error (the results go to standard output).
fn warn(message: impl std::fmt::Display) {
    eprintln!("warning: {message}");
}

pub fn run(args: &EvalArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let mut ks: Vec<usize> = args.k.iter().map(|&k| k as usize).collect();
    ks.sort_unstable();
    ks.dedup();
    let (examples, matchers, left_out) = read_questions(args)?;

    let mut modes: Vec<ModeArg> = vec![args.retrieval.mode];
    for m in &args.compare {
        if !modes.contains(m) {
            modes.push(*m);
        }
    }
    let modes: Vec<SearchMode> = modes
        .into_iter()
        .map(|m| args.retrieval.mode_of(m))
        .collect();
    // A generation is needed unless every mode is BM25.
    let pin_mode = modes
        .iter()
        .copied()
        .find(|m| !matches!(m, SearchMode::Bm25(_)))
        .unwrap_or(modes[0]);

    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let snapshot = pin_for(&retriever, args.generation, pin_mode)?;
    snapshot.set_search_options(args.retrieval.index.options());
    let max_k =
        ks.last()
            .copied()
            .unwrap_or(1)
            .max(if args.plot.is_some() { PLOT_MAX_K } else { 1 });

    let mut evaluation = Evaluation {
        snapshot: &snapshot,
        examples: &examples,
        matchers: &matchers,
        max_k,
        batch: args.batch as usize,
        keep: if args.rankings.is_some() {
            args.rankings_k as usize
        } else {
            0
        },
        texts: PassageTexts::default(),
    };
    let results = modes
        .into_iter()
        .enumerate()
        .map(|(i, mode)| {
            // Only the `--mode` system's rankings are written.
            if i == 1 {
                evaluation.keep = 0;
            }
            evaluation.run(mode)
        })
        .collect::<Result<Vec<_>>>()?;
    let query_encoder = query_encoder_version(&snapshot);
    if let Some(path) = &args.rankings {
        let header = RankingsHeader {
            system: results[0].mode.name(),
            qa: args.qa.display().to_string(),
            generation: snapshot.generation_id(),
            query_encoder,
        };
        write_rankings(path, &header, &results[0].rankings)?;
    }

    let exact_match = if args.em {
        let setup = ReaderEval {
            passages: args.reader_k as usize,
            mode: args.retrieval.mode(),
            options: args.answer.options(),
        };
        Some(setup.run(&retriever, &snapshot, &examples, &matchers)?)
    } else {
        None
    };

    let phrases = if args.phrases {
        let searcher = args.phrase.searcher(&retriever)?;
        let setup = PhraseEval {
            options: args.phrase.options(),
            ks: ks.clone(),
            unit: args.unit.unit(),
            batch: args.batch as usize,
        };
        Some(setup.run(&searcher, &examples, &matchers)?)
    } else {
        None
    };

    let qa = args.qa.display().to_string();
    if let Some(em) = &exact_match {
        if args.json {
            json_line(out, em)?;
        } else {
            say(out, em.summary())?;
        }
    }
    if let Some(figures) = &phrases {
        if args.json {
            json_line(out, figures)?;
        } else {
            say(out, figures.summary())?;
        }
    }
    if args.json {
        for r in &results {
            let ic = r.accuracy.in_corpus_questions();
            json_line(
                out,
                &SystemJson {
                    system: r.mode.name(),
                    qa: qa.clone(),
                    generation: snapshot.generation_id(),
                    query_encoder,
                    questions: r.accuracy.questions(),
                    in_corpus_questions: ic,
                    accuracy: ks.iter().map(|&k| (k, r.accuracy.accuracy(k))).collect(),
                    in_corpus_accuracy: ic.map(|_| {
                        ks.iter()
                            .map(|&k| (k, r.accuracy.in_corpus_accuracy(k).unwrap_or(0.0)))
                            .collect()
                    }),
                    retrieval_seconds: r.retrieval_seconds,
                    questions_per_second: r.accuracy.questions() as f64
                        / r.retrieval_seconds.max(1e-9),
                    skipped_lines: left_out.skipped_lines,
                    bad_patterns: left_out.bad_patterns,
                },
            )?;
        }
    } else {
        write_table(
            &results,
            &ks,
            &qa,
            (snapshot.generation_id(), query_encoder),
            out,
        )?;
        write_left_out(left_out, out)?;
    }

    if let Some(path) = &args.plot {
        let curve_k = max_k.min(PLOT_MAX_K.max(ks.last().copied().unwrap_or(1)));
        let mut series = Vec::new();
        for r in &results {
            series.push(Series {
                name: format!("{} (all)", r.mode.name()),
                points: r.accuracy.curve(curve_k),
            });
        }
        for r in &results {
            if r.accuracy.in_corpus_questions().is_some() {
                series.push(Series {
                    name: format!("{} (in corpus)", r.mode.name()),
                    points: (1..=curve_k)
                        .map(|k| (k, r.accuracy.in_corpus_accuracy(k).unwrap_or(0.0)))
                        .collect(),
                });
            }
        }
        let file = args
            .qa
            .file_name()
            .map_or_else(|| qa.clone(), |f| f.to_string_lossy().into_owned());
        let title = match snapshot.generation_id() {
            Some(g) => format!("Top-k retrieval accuracy, {file}, generation {g}"),
            None => format!("Top-k retrieval accuracy, {file}"),
        };
        plot_accuracy(path, &title, &series)?;
        if !args.json {
            say(out, format_args!("Wrote the plot to {}.", path.display()))?;
        }
    }
    Ok(())
}

/// The questions to evaluate and their matchers. A line that cannot be used stops the
/// run, or with `--skip-bad-lines` is skipped; a pattern that cannot be compiled matches
/// nothing. Each is named in one warning.
fn read_questions(args: &EvalArgs) -> Result<(Vec<QaExample>, Vec<AnswerMatcher>, LeftOut)> {
    let mut left_out = LeftOut::default();
    let mut examples = if args.skip_bad_lines {
        let (examples, skipped) = read_qa_file_skipping_bad_lines(&args.qa)?;
        for e in &skipped {
            warn(format_args!("{e}; skipped it."));
        }
        left_out.skipped_lines = skipped.len();
        examples
    } else {
        read_qa_file(&args.qa)?
    };
    examples.truncate(args.limit.unwrap_or(usize::MAX));
    if examples.is_empty() {
        return Err(user(format!(
            "{} holds no questions to evaluate",
            args.qa.display()
        )));
    }
    let matchers = examples
        .iter()
        .map(|example| {
            let (matcher, bad) = AnswerMatcher::lenient(example);
            for e in &bad {
                warn(format_args!(
                    "line {} of {}: {e}; it matches nothing.",
                    example.line,
                    args.qa.display()
                ));
            }
            left_out.bad_patterns += bad.len();
            matcher
        })
        .collect();
    Ok((examples, matchers, left_out))
}

/// The summary's last line: what was left out of the question file, when anything was.
fn write_left_out(left_out: LeftOut, out: &mut dyn Write) -> Result<()> {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut parts = Vec::new();
    if left_out.skipped_lines > 0 {
        parts.push(format!(
            "{} skipped",
            plural(
                left_out.skipped_lines,
                "bad question line",
                "bad question lines"
            )
        ));
    }
    if left_out.bad_patterns > 0 {
        parts.push(format!(
            "{} that cannot be compiled (matching nothing)",
            plural(left_out.bad_patterns, "answer pattern", "answer patterns")
        ));
    }
    if parts.is_empty() {
        return Ok(());
    }
    say(out, format_args!("Left out: {}.", parts.join("; ")))
}

/// Passage texts read through the snapshot and answer-normalized, each once.
#[derive(Default)]
struct PassageTexts {
    /// Passage id → (title, text, normalized text).
    texts: HashMap<u64, (String, String, String)>,
}

impl PassageTexts {
    fn get(&mut self, snapshot: &SearchSnapshot, id: u64) -> Result<&(String, String, String)> {
        match self.texts.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let passage = snapshot.storage().get(id)?.ok_or_else(|| {
                    anyhow::anyhow!("passage {id} was ranked but is not in the pinned snapshot")
                })?;
                let normalized = normalize_answer(&passage.text);
                Ok(e.insert((passage.title, passage.text, normalized)))
            }
        }
    }
}

/// Questions to run through retrieval modes on one snapshot.
struct Evaluation<'a> {
    snapshot: &'a SearchSnapshot,
    examples: &'a [QaExample],
    matchers: &'a [AnswerMatcher],
    /// Passages retrieved per question.
    max_k: usize,
    /// Questions per retrieval call.
    batch: usize,
    /// Passages kept per question for `--rankings` (0: no rankings).
    keep: usize,
    texts: PassageTexts,
}

impl Evaluation<'_> {
    fn run(&mut self, mode: SearchMode) -> Result<SystemResult> {
        let (snapshot, examples, matchers, max_k, batch, keep) = (
            self.snapshot,
            self.examples,
            self.matchers,
            self.max_k,
            self.batch,
            self.keep,
        );
        let texts = &mut self.texts;
        let bar = progress::bar(
            examples.len() as u64,
            &format!(
                "{:>6} {{bar:40}} {{pos}}/{{len}} questions {{per_sec}} eta {{eta}}",
                mode.name()
            ),
        );
        let mut accuracy = TopKAccuracy::new();
        let mut retrieval_seconds = 0.0;
        let mut rankings = Vec::new();
        for (chunk, chunk_matchers) in examples.chunks(batch).zip(matchers.chunks(batch)) {
            let questions: Vec<&str> = chunk.iter().map(|e| e.question.as_str()).collect();
            let started = Instant::now();
            let ranked = snapshot.rank_batch(&questions, max_k.max(keep), mode)?;
            retrieval_seconds += started.elapsed().as_secs_f64();
            for ((example, matcher), ranking) in chunk.iter().zip(chunk_matchers).zip(ranked) {
                let mut first = None;
                let mut top = Vec::with_capacity(keep);
                for (rank, (id, _)) in ranking.iter().enumerate() {
                    if rank >= keep && (first.is_some() || rank >= max_k) {
                        break;
                    }
                    let (title, raw, normalized) = texts.get(snapshot, *id)?;
                    let answer = matcher.matches_normalized(normalized, raw);
                    if rank < keep {
                        top.push(RankedPassage {
                            id: *id,
                            title: title.clone(),
                            answer,
                        });
                    }
                    if answer && first.is_none() && rank < max_k {
                        first = Some(rank);
                    }
                }
                accuracy.add(first, example.in_corpus);
                if keep > 0 {
                    rankings.push(Ranking {
                        line: example.line,
                        question: example.question.clone(),
                        first_match: first.map(|r| r + 1),
                        top,
                    });
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(SystemResult {
            mode,
            accuracy,
            retrieval_seconds,
            rankings,
        })
    }
}

fn write_table(
    results: &[SystemResult],
    ks: &[usize],
    qa: &str,
    (generation, query_encoder): (Option<u64>, Option<u32>),
    out: &mut dyn Write,
) -> Result<()> {
    let Some(first) = results.first() else {
        return Ok(());
    };
    let in_corpus = first.accuracy.in_corpus_questions();
    let query_encoder =
        query_encoder.map_or_else(String::new, |v| format!(" (query encoder v{v})"));
    let generation =
        generation.map_or_else(String::new, |g| format!(", generation {g}{query_encoder}"));
    match in_corpus {
        Some(n) => say(
            out,
            format_args!(
                "{} questions from {qa} ({n} in corpus){generation}. Top-k retrieval accuracy in %, all / in-corpus questions:",
                first.accuracy.questions()
            ),
        )?,
        None => say(
            out,
            format_args!(
                "{} questions from {qa}{generation}. Top-k retrieval accuracy in %:",
                first.accuracy.questions()
            ),
        )?,
    }
    let headers: Vec<String> = std::iter::once("system".to_string())
        .chain(ks.iter().map(|k| format!("top-{k}")))
        .chain(std::iter::once("questions/s".to_string()))
        .collect();
    let columns: Vec<(&str, Align)> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), if i == 0 { Align::Left } else { Align::Right }))
        .collect();
    let mut table = Table::new(&columns);
    for r in results {
        let mut row = vec![r.mode.name().to_string()];
        for &k in ks {
            let all = 100.0 * r.accuracy.accuracy(k);
            row.push(match r.accuracy.in_corpus_accuracy(k) {
                Some(ic) => format!("{all:.1} / {:.1}", 100.0 * ic),
                None => format!("{all:.1}"),
            });
        }
        row.push(format!(
            "{:.0}",
            r.accuracy.questions() as f64 / r.retrieval_seconds.max(1e-9)
        ));
        table.row(row);
    }
    table.write(out)
}
