//! One module per command group; [`run`] dispatches.

use std::io::Write;

use anyhow::Result;
use realm_db::reader::{AnswerOptions, Marginalization, SpanNormalization};
use realm_db::{
    Bm25Params, Codes, HybridOptions, IvfConfig, RetrieverOptions, SearchMode, SearchOptions,
};

use crate::cli::{
    AnswerArgs, Cli, CodesArg, Command, DeviceArg, DtypeArg, IndexBuildArgs, IndexKindArg,
    IndexSearchArgs, MarginalizeArg, ModeArg, RetrievalArgs, SpanNormalizationArg,
};
use crate::open;

mod ask;
mod delete;
mod embed;
mod eval;
mod export;
mod generations;
mod index;
mod ingest;
mod init;
mod maintenance;
mod phrase_eval;
mod phrase_search;
mod phrases;
mod rankings;
mod reader_eval;
mod reindex;
mod search;
mod shell;
mod train;

/// Settings shared by every command.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    pub device: DeviceArg,
}

impl Env {
    /// Retriever settings for the chosen device.
    pub fn retriever_options(&self) -> Result<RetrieverOptions> {
        open::retriever_options(self.device)
    }
}

impl RetrievalArgs {
    /// The search mode `mode` with this command line's parameters.
    pub fn mode_of(&self, mode: ModeArg) -> SearchMode {
        let bm25 = Bm25Params {
            k1: self.bm25_k1,
            b: self.bm25_b,
        };
        match mode {
            ModeArg::Dense => SearchMode::Dense,
            ModeArg::Bm25 => SearchMode::Bm25(bm25),
            ModeArg::Hybrid => SearchMode::Hybrid(HybridOptions {
                dense_weight: self.hybrid_weight,
                rrf_k: self.rrf_k,
                bm25,
                ..HybridOptions::default()
            }),
        }
    }

    /// The chosen search mode.
    pub fn mode(&self) -> SearchMode {
        self.mode_of(self.mode)
    }
}

impl AnswerArgs {
    /// The reader's answer options these flags ask for (the top 3 answers listed).
    pub fn options(&self) -> AnswerOptions {
        AnswerOptions {
            max_answer_words: self.max_answer_words as usize,
            drop_question_words: !self.keep_question_words,
            marginalization: match self.marginalize {
                MarginalizeArg::Sum => Marginalization::Sum,
                MarginalizeArg::Max => Marginalization::Max,
            },
            span_normalization: self.span_normalization.map(SpanNormalization::from),
            ..AnswerOptions::default()
        }
    }
}

impl From<SpanNormalizationArg> for SpanNormalization {
    fn from(arg: SpanNormalizationArg) -> Self {
        match arg {
            SpanNormalizationArg::Passage => SpanNormalization::Passage,
            SpanNormalizationArg::Joint => SpanNormalization::Joint,
        }
    }
}

impl IndexSearchArgs {
    /// The search options these flags ask for.
    pub fn options(&self) -> SearchOptions {
        match (self.exact, self.nprobe) {
            (true, _) => SearchOptions::exact(),
            (false, Some(n)) => SearchOptions::probing(n as usize),
            (false, None) => SearchOptions::default(),
        }
    }
}

impl IndexBuildArgs {
    /// The index to build into a new generation, if any.
    pub fn config(&self) -> Option<IvfConfig> {
        self.index
            .map(|IndexKindArg::Ivf| ivf_config(self.nlist, self.codes))
    }
}

/// An IVF configuration from command-line values.
pub fn ivf_config(nlist: Option<u32>, codes: CodesArg) -> IvfConfig {
    IvfConfig {
        nlist: nlist.map_or(0, |n| n as usize),
        codes: match codes {
            CodesArg::Sq8 => Codes::Sq8,
        },
        ..IvfConfig::default()
    }
}

impl From<DtypeArg> for realm_db::Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => realm_db::Dtype::F32,
            DtypeArg::F16 => realm_db::Dtype::F16,
        }
    }
}

/// Runs a parsed command line, writing results to stdout.
pub fn run(cli: Cli) -> Result<()> {
    let env = Env {
        device: cli.global.device,
    };
    if let Command::Shell(args) = &cli.command {
        return shell::run(args, &env);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::Init(args) => init::run(args, &env, &mut out),
        Command::Ingest(args) => ingest::run(args, &env, &mut out),
        Command::Search(args) => search::run(args, &env, &mut out),
        Command::Delete(args) => delete::run(args, &env, &mut out),
        Command::Generations(args) => generations::run(args, &env, &mut out),
        Command::Embed(args) => embed::run(args, &env, &mut out),
        Command::Gc(args) => maintenance::gc(args, &env, &mut out),
        Command::Stats(args) => maintenance::stats(args, &env, &mut out),
        Command::Corpus(args) => corpus(args, &mut out),
        Command::Reindex(args) => reindex::run(args, &env, &mut out),
        Command::Index(args) => index::run(args, &env, &mut out),
        Command::Export(args) => export::run(args, &env, &mut out),
        Command::Check(args) => maintenance::check(args, &env, &mut out),
        Command::Eval(args) => eval::run(args, &env, &mut out),
        Command::Train(args) => train::run(args, &env, &mut out),
        Command::Ask(args) => ask::run(args, &env, &mut out),
        Command::Phrases(args) => phrases::run(args, &env, &mut out),
        Command::Shell(_) => Ok(()),
    };
    // Print what was produced before any error message.
    let flushed = out.flush();
    result?;
    flushed?;
    Ok(())
}

/// Writes a line to `out` (a helper that keeps `?` on io errors short).
pub(crate) fn say(out: &mut dyn Write, line: impl std::fmt::Display) -> Result<()> {
    writeln!(out, "{line}")?;
    Ok(())
}

/// `realm-db corpus`: splits the summaries into passages.
fn corpus(args: &crate::cli::CorpusArgs, out: &mut impl Write) -> Result<()> {
    let json = std::fs::read_to_string(&args.summaries).map_err(|e| {
        crate::error::user(format!("cannot read {}: {e}", args.summaries.display()))
    })?;
    let mut passages = crate::corpus::split_articles(&json)?;
    passages.truncate(args.limit.unwrap_or(usize::MAX));
    crate::corpus::write_jsonl(&passages, &args.out)?;
    writeln!(
        out,
        "wrote {} passages to {}",
        passages.len(),
        args.out.display()
    )?;
    Ok(())
}
