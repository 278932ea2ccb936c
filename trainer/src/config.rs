//! Training settings, progress events and the final report.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use realm_reader::SpanNormalization;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What is trained, and against which index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only the query tower trains, against the frozen document vectors of the pinned
    /// generation; the result is attached to that generation as a query-encoder version.
    QuerySide,
    /// Both towers train (REALM-style); an index-builder thread rebuilds the corpus with the
    /// document tower every `refresh_every` steps and publishes new generations.
    Dual,
    /// Inverse cloze task pre-training (ORQA), without labels: a sentence of a passage is the
    /// query for the rest of the passage.
    Ict,
    /// Open-QA fine-tuning (REALM §3.4): the query tower and the reader train end to end on
    /// question-answer pairs against the frozen document vectors of the pinned generation;
    /// the query tower is attached to that generation and the reader becomes the current one.
    Qa,
    /// Self-supervised span pre-training of the reader: a salient span of a corpus sentence
    /// is masked, the sentence is the question, and the reader learns to find the span in
    /// the retrieved passages (never the sentence's own) that contain it, against the hard
    /// negatives of the same retrieval. Needs no labels; only the reader trains, and at the
    /// end it becomes the current reader.
    Spans,
    /// REALM MLM pre-training (Guu et al. 2020, §2–3): a salient span of a corpus sentence is
    /// masked, the query tower retrieves `reader_passages` passages (never the sentence's
    /// own) from the generation in use, and the loss −log Σ_z p(z|x) Π_j p(y_j|z,x) over
    /// them plus a null document trains the query tower, the document tower (re-embedding
    /// the candidates) and the reader's MLM head and encoder. Every `refresh_every` steps the
    /// index builder publishes a generation built with the towers, as in dual training.
    Realm,
    /// Phrase-encoder training (DensePhrases §4) from question-answer pairs by distant
    /// supervision: answer phrases in retrieved passages are the targets of the start and
    /// end heads, against the other word boundaries of the passage, in-batch passages and
    /// pre-batch phrases; the filter head learns which tokens start and end answers. At the
    /// end the trained phrase encoder builds and publishes a new phrase generation.
    Phrase,
    /// Phrase query-side training (DensePhrases §5): the current phrase generation is
    /// frozen and only the question side of its phrase encoder trains, on the marginal
    /// likelihood of the answer phrases among each question's top `candidates` retrieved
    /// phrases. At the end the encoder is attached to the phrase generation as a
    /// query-encoder version.
    PhraseQuery,
}

impl Mode {
    /// The mode's name: `query-side`, `dual`, `ict`, `qa`, `spans`, `realm`, `phrase` or
    /// `phrase-query`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::QuerySide => "query-side",
            Mode::Dual => "dual",
            Mode::Ict => "ict",
            Mode::Qa => "qa",
            Mode::Spans => "spans",
            Mode::Realm => "realm",
            Mode::Phrase => "phrase",
            Mode::PhraseQuery => "phrase-query",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = Error;

    /// `query-side`, `dual`, `ict`, `qa`, `spans`, `realm`, `phrase` or `phrase-query`
    /// (also accepts `query_side` and `phrase_query`).
    fn from_str(s: &str) -> Result<Mode, Error> {
        match s {
            "query-side" | "query_side" => Ok(Mode::QuerySide),
            "dual" => Ok(Mode::Dual),
            "ict" => Ok(Mode::Ict),
            "qa" => Ok(Mode::Qa),
            "spans" => Ok(Mode::Spans),
            "realm" => Ok(Mode::Realm),
            "phrase" => Ok(Mode::Phrase),
            "phrase-query" | "phrase_query" => Ok(Mode::PhraseQuery),
            other => Err(Error::UnknownMode {
                name: other.to_owned(),
            }),
        }
    }
}

/// The settings of a training run. Everything random derives from `seed` and the step
/// number, so a run stopped and resumed ends where an uninterrupted one does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// What is trained.
    pub mode: Mode,
    /// The total number of optimizer steps (default 100).
    pub steps: u64,
    /// Questions (or ICT pseudo-queries) per step (default 16); capped at the number of
    /// usable examples.
    pub batch: usize,
    /// The AdamW learning rate (default 2e-5), reached by a linear warmup over the first 10%
    /// of the steps and then held. Weight decay is 0.01 (not on biases and LayerNorm).
    pub lr: f64,
    /// Dual and REALM: hand the towers to the index builder every this many steps (default 50).
    pub refresh_every: u64,
    /// The seed every random choice derives from (default 0).
    pub seed: u64,
    /// Passages retrieved per question for distant supervision, dual re-scoring, and the
    /// positives and negatives of QA and span pre-training; phrase query-side: phrases
    /// retrieved per question, among which the answer phrases are the positives (default
    /// 20).
    pub candidates: usize,
    /// Query-side and phrase: hard negatives per question, the highest-ranked retrieved
    /// passages that do not contain an answer (default 1).
    pub hard_negatives: usize,
    /// Query-side and phrase: the positives (phrase: the gold phrases) of the last this many
    /// batches join the candidates as extra negatives (default 2). Phrase training re-encodes
    /// their passages, without gradient, at every step.
    pub prebatch: usize,
    /// Evaluate every this many steps; 0 evaluates only at the start and the end (default 0).
    pub eval_every: u64,
    /// Checkpoint every this many steps (default 50); 0 checkpoints only at the end. A run
    /// always checkpoints when it ends or is stopped.
    pub checkpoint_every: u64,
    /// The run's name; it keys the trainer state blobs (default "default").
    pub run: String,
    /// The inverse temperature the training losses multiply inner products by (default 20,
    /// sentence-transformers' `MultipleNegativesRankingLoss` scale). Normalized encoders
    /// score in [-1, 1]; unscaled, their softmax over a hundred candidates stays nearly flat
    /// and the gradients vanish. Rankings, and so retrieval, do not depend on it.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// QA and REALM: the learning rate of the reader's AdamW (default 3e-5), with the same warmup as
    /// `lr`.
    #[serde(default = "default_reader_lr")]
    pub reader_lr: f64,
    /// QA, span pre-training and REALM: passages read per question (default 5). QA trains
    /// on each question's passages among its top `candidates` that hold an answer (at most
    /// k − 1 of them when k > 1), filled up to k with the best-ranked ones that do not, and
    /// answers from the top k; span pre-training reads one passage that holds the span and
    /// k − 1 hard negatives; REALM reads the top k.
    #[serde(default = "default_reader_passages")]
    pub reader_passages: usize,
    /// QA and REALM: the model folder a fresh reader loads its BERT from when the database has no
    /// current reader; phrase: the folder a fresh phrase encoder loads from when the
    /// database has no current phrase generation; `None` uses the default model folder
    /// ([`realm_retriever::default_model_dir`]).
    #[serde(default)]
    pub reader_model: Option<PathBuf>,
    /// REALM: the fraction of articles (passages grouped by title, so that neighbouring
    /// passages of one article never straddle the split) whose sentences are held out of
    /// training and scored at each evaluation ([`Event::RealmHeldOut`]); chosen by a hash of
    /// the title and `seed` (default 0: none).
    #[serde(default)]
    pub held_out: f64,
    /// QA, span pre-training and REALM: how the reader normalizes span scores across the
    /// passages it reads (default [`SpanNormalization::Joint`], DPR's; runs saved before this
    /// setting existed trained with [`SpanNormalization::Passage`]). The trained reader
    /// answers with the same normalization.
    #[serde(default)]
    pub span_normalization: SpanNormalization,
    /// Phrase: self-supervised cloze examples mixed with the QA pairs, at most this many
    /// (default 0: none). Each is a corpus sentence with one salient span masked (REALM's
    /// heuristic, as in span pre-training); its positives are the other retrieved passages
    /// that hold the span, never the sentence's own, and the span is the answer phrase.
    /// When there are more, an evenly spaced subset is taken.
    #[serde(default)]
    pub phrase_spans: usize,
    /// Phrase: the weight of distillation from the database's current reader (DensePhrases'
    /// third loss; default 0: none): the KL divergence from the reader's start and end
    /// distributions over each positive passage's words (its span probabilities summed by
    /// start word and by end word) to the phrase model's, added to the loss.
    #[serde(default)]
    pub distill: f64,
}

fn default_scale() -> f64 {
    20.0
}

fn default_reader_lr() -> f64 {
    3e-5
}

fn default_reader_passages() -> usize {
    5
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            mode: Mode::QuerySide,
            steps: 100,
            batch: 16,
            lr: 2e-5,
            refresh_every: 50,
            seed: 0,
            candidates: 20,
            hard_negatives: 1,
            prebatch: 2,
            eval_every: 0,
            checkpoint_every: 50,
            run: "default".to_owned(),
            scale: default_scale(),
            reader_lr: default_reader_lr(),
            reader_passages: default_reader_passages(),
            reader_model: None,
            held_out: 0.0,
            span_normalization: SpanNormalization::Joint,
            phrase_spans: 0,
            distill: 0.0,
        }
    }
}

impl TrainConfig {
    /// Checks the settings that would make training impossible.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: &str| {
            Err(Error::Config {
                reason: reason.to_owned(),
            })
        };
        if self.batch == 0 {
            return bad("the batch size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Config {
                reason: format!(
                    "the learning rate must be a positive number, not {}",
                    self.lr
                ),
            });
        }
        if !(self.reader_lr.is_finite() && self.reader_lr > 0.0) {
            return Err(Error::Config {
                reason: format!(
                    "the reader learning rate must be a positive number, not {}",
                    self.reader_lr
                ),
            });
        }
        if self.reader_passages == 0 && self.mode == Mode::Qa {
            return bad("QA training needs at least 1 passage per question");
        }
        if self.reader_passages < 2 && self.mode == Mode::Spans {
            return bad(
                "span pre-training needs at least 2 passages per sentence: one that holds the span and a hard negative",
            );
        }
        if self.reader_passages == 0 && self.mode == Mode::Realm {
            return bad("REALM training needs at least 1 retrieved passage per sentence");
        }
        if !(0.0..1.0).contains(&self.held_out) {
            return Err(Error::Config {
                reason: format!(
                    "the held-out fraction must be at least 0 and below 1, not {}",
                    self.held_out
                ),
            });
        }
        if !(self.distill.is_finite() && self.distill >= 0.0) {
            return Err(Error::Config {
                reason: format!(
                    "the distillation weight must be a number of at least 0, not {}",
                    self.distill
                ),
            });
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::Config {
                reason: format!(
                    "the score scale must be a positive number, not {}",
                    self.scale
                ),
            });
        }
        if self.candidates == 0 && self.mode != Mode::Ict {
            return bad("the number of candidates must be at least 1");
        }
        if self.refresh_every == 0 && matches!(self.mode, Mode::Dual | Mode::Realm) {
            return bad("dual and REALM training need refresh_every of at least 1");
        }
        if self.run.is_empty() || self.run.contains('\0') || self.run.contains('/') {
            return Err(Error::Config {
                reason: format!(
                    "the run name {:?} must be non-empty and contain neither '/' nor NUL",
                    self.run
                ),
            });
        }
        Ok(())
    }
}

/// What a callback tells a running trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Finish the current step, write a checkpoint and return.
    Stop,
}

/// Progress of a training run, reported to the callback of [`crate::Trainer::run`]. As JSON
/// (serde), an object with `"event"` naming the variant in snake case.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run starts at `start_step` (0, or the resumed step) of `steps`, with `examples`
    /// usable examples (QA pairs with a positive; passages for ICT), on `generation`.
    Started {
        mode: String,
        start_step: u64,
        steps: u64,
        examples: usize,
        generation: u64,
    },
    /// The run resumed from the checkpoint of `step`.
    Resumed { step: u64 },
    /// Step `step` (1-based) finished. `loss` is NaN (JSON `null`) for a dual step where no
    /// question of the batch had a positive candidate (no update is made). `staleness`: steps
    /// since the weights that built the generation in use (0 when the index is frozen).
    Step {
        step: u64,
        loss: f64,
        generation: u64,
        staleness: u64,
        seconds: f64,
    },
    /// Retrieval accuracy of the current query tower on the held-out questions (fractions).
    Eval {
        step: u64,
        generation: u64,
        questions: usize,
        top1: f64,
        top5: f64,
        top20: f64,
    },
    /// Dual, ICT and REALM: a generation built from the weights of `weights_step` became current;
    /// building it took `seconds`.
    Published {
        generation: u64,
        weights_step: u64,
        seconds: f64,
    },
    /// Query-side and QA: the trained query tower was attached to `generation` as `version`.
    QueryEncoderAttached { generation: u64, version: u32 },
    /// QA and REALM: the trained reader was stored as `reader/<checkpoint>` and became the database's
    /// current reader.
    ReaderStored { checkpoint: String },
    /// QA, next to each [`Event::Eval`]: the fraction of the `questions` held-out questions
    /// with answer strings that the reader answers exactly (SQuAD normalization) from the
    /// current query tower's top `reader_passages` passages; `in_corpus_em` over those marked
    /// `in_corpus: true`, when any is.
    ExactMatch {
        step: u64,
        questions: usize,
        em: f64,
        in_corpus_em: Option<f64>,
    },
    /// QA: of the `questions` of step `step`, `skipped` had no answer span in any of their
    /// retrieved passages and did not contribute to the loss.
    QaBatch {
        step: u64,
        questions: usize,
        skipped: usize,
    },
    /// Span pre-training, after each [`Event::Step`]: of the `sentences` of step `step`,
    /// `skipped` had no span the reader could match in the passage that holds it (a span cut
    /// off by the reader's token limit) and did not contribute to the loss.
    SpanBatch {
        step: u64,
        sentences: usize,
        skipped: usize,
    },
    /// REALM, after each [`Event::Step`]: `sentences` masked sentences were trained on (a
    /// sentence whose salient spans were all truncated away is skipped); `utility` is the
    /// mean retrieval utility, log p(y|x) with retrieval minus log p(y|x) with only the null
    /// document (the same reader reading `[CLS] x [SEP]`), in nats over the masked tokens.
    RealmBatch {
        step: u64,
        sentences: usize,
        utility: f64,
    },
    /// REALM, next to each evaluation: over the `sentences` held-out masked sentences (see
    /// [`TrainConfig::held_out`]; one salient span each, the same masks every time), the
    /// mean log p(y|x) with retrieval and with only the null document, and their difference,
    /// the held-out retrieval utility, in nats (no dropout).
    RealmHeldOut {
        step: u64,
        sentences: usize,
        with_retrieval: f64,
        null_only: f64,
        utility: f64,
    },
    /// Phrase, after each [`Event::Step`]: of the `questions` of step `step`, `skipped` had
    /// no gold phrase in the positive passage read (an answer cut off by the token limit or
    /// longer than the phrase limit) and did not contribute to the loss.
    PhraseBatch {
        step: u64,
        questions: usize,
        skipped: usize,
        /// With `distill` above 0: the batch's mean KL divergence from the reader's start and
        /// end distributions to the phrase model's, before the update.
        distillation: Option<f64>,
    },
    /// Phrase, at the end: `done` of `total` passages are encoded into the new phrase
    /// generation.
    PhraseBuild { done: u64, total: u64 },
    /// Phrase query-side, after each [`Event::Step`]: of the `questions` of step `step`,
    /// `skipped` retrieved no answer phrase and did not contribute to the loss.
    PhraseQueryBatch {
        step: u64,
        questions: usize,
        skipped: usize,
    },
    /// Phrase query-side, at each evaluation: phrase exact match of the question side as it
    /// is on the held-out `questions` with an answer string (the best answer of the top 10
    /// phrases), and on those marked in the corpus.
    PhraseExactMatch {
        step: u64,
        questions: usize,
        em: f64,
        in_corpus_em: Option<f64>,
    },
    /// Phrase query-side, after a complete run: the trained encoder was attached to phrase
    /// generation `generation` as query-encoder version `version`.
    PhraseQueryEncoderAttached { generation: u64, version: u32 },
    /// Phrase, at the end: the phrase generation built by the trained encoder became current;
    /// building it took `seconds`.
    PhrasesPublished { generation: u64, seconds: f64 },
    /// The towers, optimizer and trainer state of `step` were stored.
    Checkpoint { step: u64 },
}

/// The outcome of [`crate::Trainer::run`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainReport {
    /// Steps run by this call (fewer than configured after a resume or a stop).
    pub steps_run: u64,
    /// The step the weights are at.
    pub final_step: u64,
    /// The generation current at the end (query-side: the pinned one, unchanged).
    pub generation: u64,
    /// Query-side, QA and phrase query-side, after a complete run: the attached
    /// query-encoder version (phrase query-side: of the phrase generation).
    pub query_encoder_version: Option<u32>,
    /// QA, after a complete run: the stored reader's checkpoint id (now current).
    pub reader_checkpoint: Option<String>,
    /// QA: training questions of this call's steps that were skipped because no retrieved
    /// passage held an answer span.
    pub qa_skipped: u64,
    /// (top-1, top-5, top-20) at the start of this call, when eval questions were given.
    pub first_eval: Option<(f64, f64, f64)>,
    /// (top-1, top-5, top-20) at the end of this call, when eval questions were given.
    pub last_eval: Option<(f64, f64, f64)>,
    /// Generations published by this call, in order.
    pub generations_published: Vec<u64>,
    /// Phrase, after a complete run: the phrase generation the trained encoder built (now
    /// current).
    pub phrase_generation: Option<u64>,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
}
