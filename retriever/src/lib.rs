//! # realm-retriever
//!
//! The learned retriever of realm-db, on libtorch through `tch`:
//!
//! * [`bert`]: a BERT encoder that loads Hugging Face model folders (safetensors);
//! * [`encoder`]: text and document encoders with sentence-transformers mean pooling or
//!   REALM's projected [CLS], batched inference, and self-describing checkpoints;
//! * [`index`]: the in-database query path. A [`Retriever`] keeps each pinned generation's
//!   matrix resident on the device (CUDA when available, else CPU) and answers exact
//!   inner-product top-k with p(z|x); it also builds generations from an encoder and
//!   embeds passages on ingest.

pub mod bert;
pub mod encoder;
mod error;
pub mod eval;
pub mod hybrid;
pub mod index;
mod model;

pub use encoder::{DocFormat, Encoder, EncoderConfig, EncoderHead, Pooling};
pub use error::{Error, Result};
pub use hybrid::{HybridOptions, SearchMode};
pub use index::{
    BuildOptions, Compute, ENCODER_BLOB_PREFIX, Hit, Progress, Retriever, RetrieverOptions,
    SearchSnapshot,
};
pub use model::default_model_dir;
pub use tch::Device;
