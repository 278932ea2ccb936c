//! `realm-db phrases`: build and publish a phrase generation (DensePhrases), or list the
//! phrase generations; and `ask --phrases`, which answers from one without a reader.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use realm_db::Retriever;
use realm_db::retriever::phrase::{
    PhraseAnswer, PhraseBuildOptions, PhraseEncoder, PhraseEncoderConfig, PhraseIvfConfig,
    PhraseSearchOptions, PhraseSearcher,
};
use serde::Serialize;

use super::{Env, say};
use crate::cli::{AskArgs, PhraseSearchArgs, PhrasesArgs};
use crate::error::user;
use crate::open;
use crate::output::{Align, Table, human_bytes, json_line, rfc3339, short_hash, truncate};
use crate::progress;

impl PhraseSearchArgs {
    /// The search options of this command line, `k` phrases.
    pub fn options(&self) -> PhraseSearchOptions {
        PhraseSearchOptions {
            k: self.phrase_k as usize,
            max_words: self.max_phrase_words as usize,
            side_k: self.side_k as usize,
            nprobe: self.phrase_nprobe.map(|n| n as usize),
        }
    }

    /// Pins the phrase generation asked for (the current one by default) and loads it, with
    /// its approximate index when `--phrase-nprobe` asks for one.
    pub fn searcher(&self, retriever: &Retriever) -> Result<PhraseSearcher> {
        let mut searcher = open_searcher(retriever, self.phrase_generation)?;
        if self.phrase_nprobe.is_some() {
            eprintln!("{}", train_phrase_ivf(&mut searcher)?);
        }
        Ok(searcher)
    }
}

/// Trains the approximate phrase index of a loaded searcher, with a spinner, and says how
/// many lists it has and how long it took.
pub(crate) fn train_phrase_ivf(searcher: &mut PhraseSearcher) -> Result<String> {
    let spinner = progress::spinner("training the approximate phrase index");
    let started = Instant::now();
    searcher.build_ivf(&PhraseIvfConfig::default())?;
    spinner.finish_and_clear();
    Ok(format!(
        "Approximate phrase index: {} lists per side over {} stored tokens, trained in {:.1} s.",
        searcher.index().ivf_lists().unwrap_or(0),
        searcher.index().token_count(),
        started.elapsed().as_secs_f64()
    ))
}

/// Pins `generation` (the current phrase generation by default) and loads it; a database
/// without one is a user error that names the command that builds it.
pub(crate) fn open_searcher(
    retriever: &Retriever,
    generation: Option<u64>,
) -> Result<PhraseSearcher> {
    let searcher = match generation {
        Some(generation) => retriever.phrase_searcher_at(generation),
        None => retriever.phrase_searcher(),
    };
    searcher.map_err(|e| match e {
        realm_db::Error::Storage(realm_db::StorageError::NoPhraseGeneration) => {
            let dir = retriever.db().path().display().to_string();
            user(format!(
                "the database at {dir} has no phrase generation yet; build one with `realm-db phrases {dir} --build`"
            ))
        }
        other => other.into(),
    })
}

/// A built phrase generation's figures.
#[derive(Debug, Serialize)]
struct BuildJson {
    generation: u64,
    passages: u64,
    stored_tokens: u64,
    starts: usize,
    ends: usize,
    dim: u32,
    dtype: &'static str,
    filter_threshold: f64,
    bytes_per_passage: f64,
    seconds: f64,
}

/// One phrase generation in a listing.
#[derive(Debug, Serialize)]
struct GenerationJson<'a> {
    generation: u64,
    state: String,
    current: bool,
    pins: usize,
    encoder: &'a str,
    /// The newest query-encoder version (phrase query-side training) and its checkpoint;
    /// `null` when questions are encoded by `encoder`.
    query_encoder_version: Option<u32>,
    query_encoder: Option<&'a str>,
    dim: u32,
    passages_written: u64,
    tokens_written: u64,
    filter_threshold: f64,
    note: &'a str,
    created_ms: u64,
}

pub fn run(args: &PhrasesArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    if args.build {
        build(args, env, out)
    } else {
        list(args, env, out)
    }
}

fn build(args: &PhrasesArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    if !(args.filter_threshold.is_finite() && args.filter_threshold >= 0.0) {
        return Err(user(format!(
            "--filter-threshold must be a probability of at least 0, not {}",
            args.filter_threshold
        )));
    }
    let options = env.retriever_options()?;
    let device = options.encoder.device;
    let retriever = open::open_writer(&args.dir, options)?;
    let config = PhraseEncoderConfig {
        filter_threshold: args.filter_threshold,
        batch_size: args.batch as usize,
        device,
        ..PhraseEncoderConfig::default()
    };
    let (encoder, source) = if args.from_current {
        let Some(current) = retriever.db().current_phrase_generation()? else {
            return Err(user(
                "--from-current rebuilds the current phrase generation, and the database has none; build one with --model first"
                    .to_owned(),
            ));
        };
        let spec = retriever.db().phrase_generation(current)?.spec;
        let config = PhraseEncoderConfig {
            max_len: 0,
            ..config
        };
        let encoder = retriever.load_phrase_encoder(&spec.encoder_checkpoint_id, config)?;
        (
            encoder,
            format!("the encoder of phrase generation {current}"),
        )
    } else {
        let model = match &args.model {
            Some(path) => path.clone(),
            None => open::default_model()?,
        };
        let encoder = PhraseEncoder::load(&model, args.dim.map(i64::from), config)?;
        (encoder, model.display().to_string())
    };
    let total = retriever.db().snapshot()?.passage_count()?;
    let bar = progress::bar(
        total,
        "phrases {bar:40} {pos}/{len} passages {per_sec} eta {eta}",
    );
    let started = Instant::now();
    let mut report = |p: realm_db::Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let generation = retriever.build_phrase_generation(
        &encoder,
        PhraseBuildOptions {
            dtype: realm_db::Dtype::from(args.dtype),
            batch: args.batch as usize,
            note: format!("built from {source}"),
            progress: Some(&mut report),
        },
    )?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let manifest = retriever.db().phrase_generation(generation)?;
    let searcher = retriever.phrase_searcher_at(generation)?;
    let index = searcher.index();
    let value_bytes = realm_db::Dtype::from(args.dtype).bytes() as f64;
    // Two vectors per stored token plus its 18 bytes of position, word, offsets and flags.
    let bytes =
        manifest.tokens_written as f64 * (2.0 * f64::from(manifest.spec.dim) * value_bytes + 18.0);
    let json = BuildJson {
        generation,
        passages: manifest.passages_written,
        stored_tokens: manifest.tokens_written,
        starts: index.start_count(),
        ends: index.end_count(),
        dim: manifest.spec.dim,
        dtype: match args.dtype {
            crate::cli::DtypeArg::F32 => "f32",
            crate::cli::DtypeArg::F16 => "f16",
        },
        filter_threshold: manifest.spec.filter_threshold,
        bytes_per_passage: bytes / manifest.passages_written.max(1) as f64,
        seconds,
    };
    if args.json {
        return json_line(out, &json);
    }
    say(
        out,
        format_args!(
            "Published phrase generation {generation}: {} passages, {} stored tokens ({} starts, {} ends), \
             {}-dimensional {} vectors, about {} per passage, in {:.1} s.",
            json.passages,
            json.stored_tokens,
            json.starts,
            json.ends,
            json.dim,
            json.dtype,
            human_bytes(json.bytes_per_passage as u64),
            seconds
        ),
    )
}

fn list(args: &PhrasesArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let generations = retriever.db().phrase_generations()?;
    if args.json {
        for info in &generations {
            let m = &info.manifest;
            json_line(
                out,
                &GenerationJson {
                    generation: m.id,
                    state: m.state.to_string(),
                    current: info.current,
                    pins: info.pins,
                    encoder: &m.spec.encoder_checkpoint_id,
                    query_encoder_version: m.query_encoder().map(|q| q.version),
                    query_encoder: m.query_encoder().map(|q| q.checkpoint_id.as_str()),
                    dim: m.spec.dim,
                    passages_written: m.passages_written,
                    tokens_written: m.tokens_written,
                    filter_threshold: m.spec.filter_threshold,
                    note: &m.spec.note,
                    created_ms: m.created_ms,
                },
            )?;
        }
        return Ok(());
    }
    if generations.is_empty() {
        let dir = args.dir.display();
        return say(
            out,
            format_args!("No phrase generations; build one with `realm-db phrases {dir} --build`."),
        );
    }
    let mut table = Table::new(&[
        ("generation", Align::Right),
        ("state", Align::Left),
        ("passages", Align::Right),
        ("tokens", Align::Right),
        ("dim", Align::Right),
        ("encoder", Align::Left),
        ("query encoder", Align::Left),
        ("created", Align::Left),
    ]);
    for info in &generations {
        let m = &info.manifest;
        let state = if info.current {
            format!("{} (current)", m.state)
        } else {
            m.state.to_string()
        };
        table.row(vec![
            m.id.to_string(),
            state,
            m.passages_written.to_string(),
            m.tokens_written.to_string(),
            m.spec.dim.to_string(),
            short_hash(&m.spec.encoder_checkpoint_id),
            m.query_encoder().map_or_else(
                || "(its encoder)".to_owned(),
                |q| format!("v{} {}", q.version, short_hash(&q.checkpoint_id)),
            ),
            rfc3339(m.created_ms),
        ]);
    }
    table.write(out)
}

/// One answer of `ask --phrases --json`.
#[derive(Debug, Serialize)]
struct PhraseAnswerJson<'a> {
    answer: &'a str,
    prob: f64,
    score: f32,
    passage: u64,
    title: String,
}

/// `ask --phrases --json`.
#[derive(Debug, Serialize)]
struct AskJson<'a> {
    question: &'a str,
    answer: Option<&'a str>,
    prob: f64,
    phrase_generation: u64,
    answers: Vec<PhraseAnswerJson<'a>>,
}

/// `realm-db ask --phrases`: the best answers among the retrieved phrases.
pub fn ask(args: &AskArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let searcher = args.phrase.searcher(&retriever)?;
    let answers = searcher.answers(&args.question, &args.phrase.options())?;
    let title = |a: &PhraseAnswer| -> Result<String> {
        Ok(searcher
            .snapshot()
            .passage(a.best.passage)?
            .map(|p| p.title)
            .unwrap_or_default())
    };
    if args.json {
        let mut list = Vec::new();
        for a in answers.iter().take(3) {
            list.push(PhraseAnswerJson {
                answer: &a.text,
                prob: a.probability,
                score: a.best.score,
                passage: a.best.passage,
                title: title(a)?,
            });
        }
        return json_line(
            out,
            &AskJson {
                question: &args.question,
                answer: answers.first().map(|a| a.text.as_str()),
                prob: answers.first().map_or(0.0, |a| a.probability),
                phrase_generation: searcher.generation(),
                answers: list,
            },
        );
    }
    let Some(best) = answers.first() else {
        return say(
            out,
            format_args!(
                "No answer: none of the {} retrieved phrases has any text once normalized.",
                args.phrase.phrase_k
            ),
        );
    };
    say(
        out,
        format_args!(
            "{}  (p = {:.3} over the top {} phrases, phrase generation {})",
            best.text,
            best.probability,
            args.phrase.phrase_k,
            searcher.generation()
        ),
    )?;
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("p", Align::Right),
        ("answer", Align::Left),
        ("passage", Align::Right),
        ("title", Align::Left),
    ]);
    for (i, a) in answers.iter().take(3).enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            format!("{:.3}", a.probability),
            truncate(&a.text, 40),
            a.best.passage.to_string(),
            truncate(&title(a)?, 40),
        ]);
    }
    table.write(out)
}
