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
//! * [`index`]: the in-database query path. A [`Retriever`] keeps each pinned generation's
//!   matrix resident on the device (CUDA when available, else CPU) and answers exact
//!   inner-product top-k with p(z|x); it also builds generations from an encoder and
//!   embeds passages on ingest.

pub mod backbone;
pub mod batch;
pub mod bert;
pub mod checkpoint;
pub mod encoder;
mod error;
pub mod eval;
pub mod hybrid;
pub mod index;
mod model;
pub mod model_folder;
pub mod random;
pub mod tokenizer;
pub mod weights;

pub use encoder::{DocFormat, Encoder, EncoderConfig, EncoderHead, Pooling};
pub use error::{Error, Result};
pub use hybrid::{HybridOptions, SearchMode};
pub use index::{
    BuildOptions, Compute, Hit, Progress, Retriever, RetrieverOptions, SearchSnapshot,
};
pub use model::default_model_dir;
pub use tch::Device;
