//! `realm-db train`: the training modes and their options.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::SpanNormalizationArg;

/// A training mode on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrainModeArg {
    /// Fine-tune the query tower only; the current generation stays valid and gets a new
    /// query-encoder version.
    QuerySide,
    /// Train both towers; an index builder publishes new generations while training goes on.
    Dual,
    /// The Inverse Cloze Task on the database's own passages (no labels); publishes a
    /// generation built with the trained towers.
    Ict,
    /// Open-QA fine-tuning (REALM §3.4): the reader and the query tower learn from answer
    /// strings found in retrieved passages; the document index stays frozen.
    Qa,
    /// Self-supervised span pre-training of the reader: masked salient spans of corpus
    /// sentences are found in other retrieved passages; no labels; only the reader trains.
    Spans,
    /// REALM's masked-language-model pre-training with retrieval (salient spans masked, a
    /// null document, the source passage excluded, asynchronous index refresh); no labels.
    Realm,
    /// DensePhrases' phrase-encoder training: answer phrases found in retrieved passages
    /// train the start, end and filter heads (in-batch and pre-batch negatives); publishes a
    /// phrase generation built with the trained encoder.
    Phrase,
    /// DensePhrases' query-side fine-tuning: the current phrase generation stays frozen and
    /// only the question side of its phrase encoder trains, on the answer phrases among each
    /// question's top --candidates retrieved phrases; attaches a query-encoder version to
    /// the phrase generation.
    PhraseQuery,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The database directory.
    pub dir: PathBuf,
    /// The training mode.
    #[arg(long, value_enum)]
    pub mode: TrainModeArg,
    /// Training questions as JSONL (`{"question", "answers"}` or `"answer_patterns"`);
    /// required for query-side, dual and qa (ICT and realm train on the passages).
    #[arg(long)]
    pub qa: Option<PathBuf>,
    /// Held-out questions for periodic top-1/5/20 accuracy lines.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// Questions per step.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Dual and realm: hand the towers to the index builder every R steps.
    #[arg(long, value_name = "R", default_value_t = 50)]
    pub refresh_every: u64,
    /// Seed of every random choice (a CPU run is reproducible).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Passages retrieved per question for distant supervision and re-scoring
    /// (phrase-query: phrases retrieved per question).
    #[arg(long, default_value_t = 20)]
    pub candidates: usize,
    /// Query-side and phrase: hard negatives per question.
    #[arg(long, default_value_t = 1)]
    pub hard_negatives: usize,
    /// Query-side and phrase: batches whose positives serve as pre-batch negatives.
    #[arg(long, default_value_t = 2)]
    pub prebatch: usize,
    /// Evaluate every N steps (0: at the start and the end only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Qa, spans and realm: the reader's AdamW learning rate.
    #[arg(long, default_value_t = 3e-5)]
    pub reader_lr: f64,
    /// Qa, spans and realm: passages the reader reads per question (qa: those of the top
    /// --candidates holding an answer, then hard negatives; spans: one holding the span and
    /// hard negatives; realm: the top ones).
    #[arg(long, default_value_t = 5)]
    pub reader_passages: usize,
    /// Qa and realm: the model folder the reader starts from when the database has none;
    /// phrase: the folder the phrase encoder starts from when the database has no phrase
    /// generation (default: the MiniLM set-up installs).
    #[arg(long)]
    pub reader_model: Option<PathBuf>,
    /// Qa, spans and realm: how the reader normalizes span scores across passages (the
    /// trained reader answers the same way).
    #[arg(long, value_enum, default_value_t = SpanNormalizationArg::Joint)]
    pub span_normalization: SpanNormalizationArg,
    /// Phrase: mix at most N self-supervised cloze examples with the QA pairs (a corpus
    /// sentence with a salient span masked; the span, found in another retrieved passage,
    /// is the answer phrase).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub phrase_spans: usize,
    /// Phrase: the weight of distillation from the current reader (KL divergence from its
    /// start and end distributions over each positive passage to the phrase model's).
    #[arg(long, default_value_t = 0.0)]
    pub distill: f64,
    /// Realm: the fraction of articles (by title) whose sentences are held out of training
    /// and scored at each evaluation (held-out retrieval utility).
    #[arg(long, default_value_t = 0.0)]
    pub held_out: f64,
    /// Inverse temperature of the training losses (scores are multiplied by it).
    #[arg(long, default_value_t = 20.0)]
    pub scale: f64,
    /// The run's name: a run with the same name and mode resumes from its last checkpoint.
    #[arg(long, default_value = "default")]
    pub run: String,
    /// Draw the training curve (loss by step, dev accuracy at each evaluation, refreshes) to
    /// this `.png` or `.svg` file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<std::path::PathBuf>,
    /// Print every training event as a JSON line.
    #[arg(long)]
    pub json: bool,
}
