//! # realm-retriever
//!
//! The learned retriever of realm-db, on libtorch through `tch`:
//!
//! * [`bert`]: a BERT encoder that loads Hugging Face model folders (safetensors);
//! * the BERT plumbing the encoder and the reader share: [`backbone`] (settings checks and
//!   the var store), [`tokenizer`] (set-up), [`model_folder`] (Hugging Face folders),
//!   [`weights`] (safetensors, copies, seeded initialization), [`checkpoint`] (framing and
//!   ids), [`random`] (SplitMix64 and FNV-1a);
//! * [`encoder`]: text and document encoders with sentence-transformers mean pooling or
//!   REALM's projected [CLS], batched inference, and self-describing checkpoints;
//! * the in-database query path, re-exported here: a [`Retriever`] keeps each pinned
//!   generation's matrix resident on the device (CUDA when available, else CPU; module
//!   `matrix`), builds generations from an encoder and embeds passages on ingest (`build`);
//!   a [`SearchSnapshot`] answers exact inner-product top-k with p(z|x) (`search`, `topk`);
//! * [`phrase`]: DensePhrases' phrase encoder, phrase rows and two-sided phrase search.

pub mod backbone;
pub mod batch;
pub mod bert;
mod build;
pub mod checkpoint;
pub mod encoder;
mod error;
pub mod eval;
mod exact;
pub mod hybrid;
mod ivf_build;
mod ivf_search;
mod kernels;
mod kmeans;
mod matrix;
mod model;
pub mod model_folder;
pub mod phrase;
pub mod pyregex;
mod qa_metrics;
pub mod random;
mod retriever;
mod search;
pub mod sentences;
pub mod tokenizer;
mod topk;
pub mod weights;

pub use build::{BuildOptions, Progress};
pub use encoder::{DocFormat, Encoder, EncoderConfig, EncoderHead, Pooling};
pub use error::{Error, Result};
pub use exact::{ExactPath, ExactShape};
pub use hybrid::{HybridOptions, SearchMode};
pub use ivf_build::IvfConfig;
pub use ivf_search::{SearchOptions, default_nprobe};
pub use matrix::tensor_rows;
pub use model::default_model_dir;
pub use realm_storage::ivf::{Codes, IndexInfo};
pub use retriever::{Compute, ENCODER_BLOB_PREFIX, Retriever, RetrieverOptions};
pub use search::{Hit, SearchSnapshot};
pub use tch::Device;
pub use topk::softmax;
