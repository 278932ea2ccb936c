//! Phrase arguments: what a phrase search returns (`search --unit`), how phrases are searched
//! (`ask --phrases`, `eval --phrases`), and `realm-db phrases`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::DtypeArg;

/// What a phrase search returns (`search --unit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnitArg {
    Phrase,
    /// The sentence a phrase starts in.
    Sentence,
    Passage,
    /// The passages that share a title.
    Document,
}

/// How phrases are searched (`ask --phrases`, `eval --phrases`).
#[derive(Debug, Args)]
pub struct PhraseSearchArgs {
    /// Phrases retrieved per question; answers pool them.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub phrase_k: u32,
    /// The longest phrase, in words.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_phrase_words: u32,
    /// How many of the best starts and of the best ends are extended into phrases.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub side_k: u32,
    /// Find the best starts and ends through an approximate index (IVF with 8-bit codes,
    /// trained over the phrase generation as it loads), probing this many lists per side;
    /// without it every start and end is scanned exactly.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub phrase_nprobe: Option<u32>,
    /// Search a retained older phrase generation instead of the current one.
    #[arg(long)]
    pub phrase_generation: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PhrasesArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Build and publish a new phrase generation (retiring the current one); without it,
    /// list the phrase generations.
    #[arg(long)]
    pub build: bool,
    /// The model folder the phrase encoder starts from (default: the MiniLM that
    /// scripts/setup.sh installs, or $REALM_DB_MODEL).
    #[arg(long, requires = "build")]
    pub model: Option<PathBuf>,
    /// Rebuild with the phrase encoder of the current phrase generation (a trained one,
    /// say, with another --filter-threshold or --dtype) instead of a model folder.
    #[arg(long, requires = "build", conflicts_with_all = ["model", "dim"])]
    pub from_current: bool,
    /// The size of each start and end vector (default: half the model's hidden size, the
    /// halves of its hidden state).
    #[arg(long, requires = "build", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub dim: Option<u32>,
    /// Store a token as a phrase start (end) only when the filter head gives it at least
    /// this probability; 0 keeps every word boundary.
    #[arg(long, requires = "build", default_value_t = 0.0)]
    pub filter_threshold: f64,
    /// The element type of stored start and end vectors.
    #[arg(long, value_enum, requires = "build", default_value_t = DtypeArg::F16)]
    pub dtype: DtypeArg,
    /// Passages encoded per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Print one JSON object (per generation when listing).
    #[arg(long)]
    pub json: bool,
}
