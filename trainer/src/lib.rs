//! # realm-trainer
//!
//! Retriever and reader training on a live realm-db database. A [`Trainer`] takes a
//! [`realm_retriever::Retriever`], a [`TrainConfig`] and question-answer pairs, and trains
//! in one of eight [`Mode`]s, each in its own module that owns its state:
//!
//! * **query-side** (DensePhrases, Atlas): the document tower is frozen, so the stored
//!   vectors of the current generation stay valid; only a copy of the generation's query
//!   encoder trains. Positives come from distant supervision (retrieved passages that
//!   contain an answer); each question's softmax runs over the batch's positives, its hard
//!   negatives and the positives of the previous batches (pre-batch negatives). At the end
//!   the tower is attached to the same generation as a new query-encoder version.
//! * **dual** (REALM's asynchronous index refresh): both towers train. Each step re-embeds
//!   the stale index's top candidates with the fresh document tower and maximizes the
//!   marginal likelihood of the passages that contain an answer. Every `refresh_every` steps
//!   the towers go to an index-builder thread that rebuilds the corpus into a new generation
//!   and publishes it while training continues against the previous one.
//! * **ict** (ORQA's inverse cloze task): no labels; a random sentence of a passage is the
//!   query for the rest of it, with in-batch negatives. At the end a generation built with
//!   the trained towers is published.
//! * **qa** (REALM's open-QA fine-tuning, §3.4): the document index is frozen as in
//!   query-side; per question the current query tower retrieves the top `reader_passages`
//!   passages, and the loss −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x) of a
//!   [`realm_reader::Reader`] trains both the reader and (through log p(z|x)) the query
//!   tower. At the end the query tower is attached to the generation and the reader is
//!   stored and made current ([`realm_reader::store`]).
//! * **spans** (self-supervised span pre-training of the reader): a salient span of each
//!   corpus sentence is masked, and the reader learns to find it in the retrieved passages
//!   (never the sentence's own) that contain it, against hard negatives of the same
//!   retrieval, computed once at the start. No labels; only the reader trains, and it
//!   becomes the current reader ([`SpanExample`]).
//! * **realm** (REALM MLM pre-training): one salient span ([`masking`]) of each sampled
//!   sentence is masked; the query tower retrieves `reader_passages` passages of the stale
//!   index, never the sentence's own, which the fresh towers re-score; with a null document
//!   (fixed score 0) the loss −log Σ_z p(z|x) Π_j p(y_j|z,x) trains the query tower, the
//!   document tower and the reader. Refresh, final generation and reader storage as in dual
//!   and qa; [`Event::RealmBatch`] reports the retrieval utility.
//! * **phrase** (DensePhrases §4): the phrase encoder ([`realm_retriever::phrase`]) trains
//!   from question-answer pairs by distant supervision: the answer phrases of retrieved
//!   passages are the targets of its start and end heads against every other word boundary
//!   of the batch's passages and the previous batches' answer phrases, and its filter head
//!   learns which tokens start and end answers. Optionally, self-supervised cloze examples
//!   (`phrase_spans`) join the pairs, and distillation from the current reader (`distill`)
//!   joins the loss. At the end it builds and publishes a phrase generation.
//! * **phrase-query** (DensePhrases §5, query-side fine-tuning): the current phrase
//!   generation is frozen and only the question side of its phrase encoder trains. Each
//!   question retrieves its top `candidates` phrases with the current weights, and the loss
//!   is −log of the softmax mass of those whose text is an answer. At the end the encoder is
//!   attached to the phrase generation as a query-encoder version, which phrase search then
//!   encodes questions with.
//!
//! Runs checkpoint their towers, AdamW state and a JSON state blob into the database
//! (`trainer/<run>/...`, readers under `reader/<id>`) and resume from it; every random
//! choice of a step derives from the seed and the step number, so on the CPU a stopped and
//! resumed run ends with the same weights as an uninterrupted one.
//!
//! Where things live: the loop, events, end of run in `trainer.rs`; what the loop asks of a mode in
//! `mode_state.rs`; what every mode shares
//! (retriever, settings, pinned generation, query tower) in `context.rs`; one module per
//! mode (`query_side`, `dual`, [`ict`], `qa`, `span_pretraining`, `realm`,
//! `phrase_training`, `phrase_query_side`); distant supervision in
//! `supervision.rs`; towers and where they start from in `towers.rs`; the index-builder
//! thread in `builder.rs`; held-out evaluation in `evaluation.rs`; checkpoints and resume
//! in `checkpoint.rs` and [`state`]; seeded randomness in `sampling.rs`; AdamW in
//! [`adamw`]; REALM's [`masking`]; the garbage collection of encoder,
//! reader and trainer blobs ([`collect_blobs`]) in `blob_gc.rs`.

pub mod adamw;
mod blob_gc;
mod builder;
mod checkpoint;
mod config;
mod context;
mod distillation;
mod dual;
mod error;
mod evaluation;
pub mod ict;
pub mod masking;
mod mode_state;
mod phrase_query_side;
mod phrase_training;
mod qa;
mod query_side;
mod realm;
mod sampling;
mod span_pretraining;
pub mod state;
mod supervision;
mod towers;
mod trainer;

pub use blob_gc::{BlobGcOptions, BlobGcReport, UnreadableBlob, collect_blobs};
pub use config::{Control, Event, Mode, TrainConfig, TrainReport};
pub use dual::DUAL_NOTE;
pub use error::{Error, Result};
pub use ict::ICT_NOTE;
pub use phrase_query_side::PHRASE_QUERY_NOTE;
pub use phrase_training::PHRASE_NOTE;
pub use qa::QA_NOTE;
pub use query_side::QUERY_SIDE_NOTE;
pub use realm::{REALM_HELD_OUT_SCORED, REALM_NOTE};
pub use span_pretraining::{SPAN_MASK, SpanExample};
pub use trainer::Trainer;
