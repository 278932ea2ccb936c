//! The [`Retriever`]: a [`Db`] with the encoders its generations were built with and a cache
//! of generation matrices resident on the compute device (the `matrix` module).
//!
//! This module holds the retriever's settings, the encoder checkpoints stored with the
//! database, and the creation of [`SearchSnapshot`]s. Building generations and ingesting
//! passages are in the `build` module, searching in `search`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use realm_storage::{Db, GenerationId, GenerationManifest, Snapshot};
use tch::Device;

use crate::encoder::{Encoder, EncoderConfig};
use crate::error::{Error, Result};
use crate::matrix::MatrixCache;
use crate::search::SearchSnapshot;

/// Blob-name prefix of encoder checkpoints; the rest is the checkpoint's SHA-256.
pub const ENCODER_BLOB_PREFIX: &str = "encoder/";

/// Element type of the search matrix on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// Exact f32 inner products.
    F32,
    /// f16 matrix and queries (half the device memory); scores are accumulated by libtorch
    /// in f16 on CPU and f32 on CUDA, then ranked in f32.
    F16,
}

/// Settings of a [`Retriever`].
#[derive(Clone, Debug)]
pub struct RetrieverOptions {
    /// Runtime settings for every encoder loaded from the database; `encoder.device` is also
    /// where generation matrices live and inner products run.
    pub encoder: EncoderConfig,
    /// Element type of the generation matrices on the device.
    pub compute: Compute,
    /// Passages embedded per batch while building a generation.
    pub build_batch: usize,
    /// Matrix rows scored per step of a search; 0 picks a cache-sized chunk on CPU and the
    /// whole matrix on CUDA.
    pub score_chunk_rows: usize,
    /// On the CPU, keep matrices as host rows and scan small batches directly (default).
    /// When off, the CPU takes the same device-tensor path as CUDA, which lets CPU-only
    /// machines test that path.
    pub host_scan: bool,
    /// Memory a generation's matrix or an index's lists may take. A generation whose
    /// matrix would exceed it is searched by streaming its blocks (exact) or through its
    /// index with the lists read per search and re-scored rows read from the store.
    pub memory_budget_bytes: usize,
}

impl Default for RetrieverOptions {
    fn default() -> Self {
        RetrieverOptions {
            encoder: EncoderConfig {
                device: Device::cuda_if_available(),
                ..EncoderConfig::default()
            },
            compute: Compute::F32,
            build_batch: 256,
            score_chunk_rows: 0,
            host_scan: true,
            memory_budget_bytes: 8 << 30,
        }
    }
}

/// What clones of a [`Retriever`] share.
pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) options: RetrieverOptions,
    pub(crate) matrices: Mutex<MatrixCache>,
    /// The exact-search path measured fastest for each search shape in this process.
    pub(crate) exact_plans: Mutex<crate::exact::ExactPlans>,
    /// Recently used approximate indexes, newest last.
    pub(crate) indexes: Mutex<Vec<Arc<crate::ivf_search::LoadedIndex>>>,
    encoders: Mutex<HashMap<String, Arc<Encoder>>>,
    /// Phrase encoders loaded from the store, by checkpoint id and filter threshold.
    pub(crate) phrase_encoders: Mutex<HashMap<String, Arc<crate::phrase::PhraseEncoder>>>,
}

/// The database plus its retriever: encoders stored with it and device-resident matrices.
/// Cheap to clone.
#[derive(Clone)]
pub struct Retriever {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever")
            .field("db", &self.inner.db)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Retriever {
    /// Wraps an open database.
    pub fn new(db: Db, options: RetrieverOptions) -> Self {
        Retriever {
            inner: Arc::new(Inner {
                db,
                options,
                matrices: Mutex::new(MatrixCache::default()),
                indexes: Mutex::new(Vec::new()),
                exact_plans: Mutex::new(Default::default()),
                encoders: Mutex::new(HashMap::new()),
                phrase_encoders: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The underlying store.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The settings.
    pub fn options(&self) -> &RetrieverOptions {
        &self.inner.options
    }

    /// The exact-search path chosen for each search shape so far, by measuring them on the
    /// first search of that shape (see `ExactPath`).
    pub fn exact_paths(&self) -> Vec<(crate::ExactShape, crate::ExactPath)> {
        let mut all: Vec<_> = self
            .inner
            .exact_plans
            .lock()
            .iter()
            .map(|(s, p)| (*s, *p))
            .collect();
        all.sort_by_key(|(s, _)| (s.rows_class, s.batch_class, s.half));
        all
    }

    /// How many times a generation matrix was loaded from storage (a cache-miss counter).
    pub fn matrix_loads(&self) -> u64 {
        self.inner.matrices.lock().loads
    }

    // ------------------------------------------------------------- encoders

    /// Stores an encoder checkpoint with the database (idempotent) and returns its id, the
    /// checkpoint's SHA-256.
    pub fn store_encoder(&self, encoder: &Encoder) -> Result<String> {
        let bytes = encoder.to_checkpoint_bytes()?;
        let id = crate::encoder::checkpoint_fingerprint(&bytes);
        let name = format!("{ENCODER_BLOB_PREFIX}{id}");
        if !self.db().has_blob(&name)? {
            self.db().put_blob(&name, &bytes)?;
        }
        Ok(id)
    }

    /// Loads a stored encoder checkpoint (cached).
    pub fn encoder(&self, checkpoint_id: &str) -> Result<Arc<Encoder>> {
        if let Some(e) = self.inner.encoders.lock().get(checkpoint_id) {
            return Ok(e.clone());
        }
        let bytes = self
            .db()
            .get_blob(&format!("{ENCODER_BLOB_PREFIX}{checkpoint_id}"))?;
        let encoder = Arc::new(Encoder::from_checkpoint_bytes(
            &bytes,
            None,
            self.inner.options.encoder.clone(),
        )?);
        self.inner
            .encoders
            .lock()
            .insert(checkpoint_id.to_string(), encoder.clone());
        Ok(encoder)
    }

    /// The document encoder a generation was built with.
    pub fn document_encoder(&self, manifest: &GenerationManifest) -> Result<Arc<Encoder>> {
        let id = manifest
            .spec
            .provenance
            .checkpoint_id
            .as_deref()
            .ok_or(Error::NoEncoder {
                generation: manifest.id,
            })?;
        self.encoder(id)
    }

    /// The query encoder of a generation: its newest attached query-encoder version, else
    /// its document encoder.
    pub fn query_encoder(&self, manifest: &GenerationManifest) -> Result<Arc<Encoder>> {
        match manifest.query_encoder() {
            Some(q) => self.encoder(&q.checkpoint_id),
            None => self.document_encoder(manifest),
        }
    }

    // ------------------------------------------------------------ snapshots

    /// Pins the current generation for searching.
    pub fn snapshot(&self) -> Result<SearchSnapshot> {
        Ok(self.wrap(self.db().snapshot()?))
    }

    /// Pins a retained older generation (time travel).
    pub fn snapshot_at(&self, generation: GenerationId) -> Result<SearchSnapshot> {
        Ok(self.wrap(self.db().snapshot_at(generation)?))
    }

    /// Makes a storage snapshot searchable.
    pub fn wrap(&self, snapshot: Snapshot) -> SearchSnapshot {
        SearchSnapshot::new(self.clone(), snapshot)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retriever_and_snapshots_are_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Retriever>();
        shareable::<crate::SearchSnapshot>();
    }
}
