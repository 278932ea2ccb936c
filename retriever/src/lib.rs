//! # realm-retriever
//!
//! The learned retriever of realm-db, on libtorch through `tch`:
//!
//! * [`bert`]: a BERT encoder that loads Hugging Face model folders (safetensors);
//! * [`encoder`]: text and document encoders with sentence-transformers mean pooling or
//!   REALM's projected [CLS], batched inference, and self-describing checkpoints;
//! * the in-database query path, re-exported here: a [`Retriever`] keeps each pinned
//!   generation's matrix resident on the device (CUDA when available, else CPU; module
//!   `matrix`), builds generations from an encoder and embeds passages on ingest (`build`);
//!   a [`SearchSnapshot`] answers exact inner-product top-k with p(z|x) (`search`, `topk`).

pub mod bert;
mod build;
pub mod encoder;
mod error;
pub mod eval;
pub mod hybrid;
mod matrix;
mod model;
mod retriever;
mod search;
mod topk;

pub use build::{BuildOptions, Progress};
pub use encoder::{DocFormat, Encoder, EncoderConfig, EncoderHead, Pooling};
pub use error::{Error, Result};
pub use hybrid::{HybridOptions, SearchMode};
pub use matrix::tensor_rows;
pub use model::default_model_dir;
pub use retriever::{Compute, ENCODER_BLOB_PREFIX, Retriever, RetrieverOptions};
pub use search::{Hit, SearchSnapshot};
pub use tch::Device;
pub use topk::softmax;
