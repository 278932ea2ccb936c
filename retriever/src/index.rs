//! The in-database query path and index building.
//!
//! A [`Retriever`] wraps a [`Db`] with the encoders its generations were built with and a
//! cache of generation matrices resident on the compute device. A [`SearchSnapshot`] pins a
//! storage snapshot and searches it: tokenize → query encoder → exact inner-product top-k
//! over the pinned generation's matrix → hits with scores and p(z|x).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use realm_storage::{
    Db, Dtype, GenerationId, GenerationManifest, GenerationSpec, InsertOutcome, NewPassage,
    Provenance, Snapshot,
};
use tch::{Device, Kind, Tensor};

use crate::encoder::{Encoder, EncoderConfig};
use crate::error::{Error, Result};

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
        }
    }
}

/// One retrieved passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// 1-based rank.
    pub rank: usize,
    pub passage_id: u64,
    pub title: String,
    pub text: String,
    /// The ranking score: the inner product of query and passage vectors for a dense
    /// search; see [`crate::SearchMode`] for the other modes.
    pub score: f32,
    /// p(z|x) over the returned candidates: the softmax of the scores for dense and BM25
    /// searches, the fused scores normalized to sum to 1 for hybrid ones.
    pub prob: f32,
    pub generation: GenerationId,
}

/// Progress of a long operation, reported to a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Options of [`Retriever::build_generation`].
pub struct BuildOptions<'a> {
    pub provenance: Provenance,
    pub dtype: Dtype,
    /// Called after every batch.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// A separate query tower published with the generation (stored with the database and
    /// recorded as its first query-encoder version); `None` queries with the document encoder.
    pub query_encoder: Option<&'a Encoder>,
}

impl Default for BuildOptions<'_> {
    fn default() -> Self {
        BuildOptions {
            provenance: Provenance::default(),
            dtype: Dtype::F32,
            progress: None,
            query_encoder: None,
        }
    }
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("provenance", &self.provenance)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// A tensor that is never written after construction, shared by searching threads.
#[derive(Debug)]
struct ReadOnlyTensor(Tensor);

// Safety: libtorch tensors may be read from several threads at once. A `ReadOnlyTensor` is
// only ever an input of out-of-place operations (narrow, matmul, masked_fill, to_kind,
// to_device), which allocate their results and never write to their inputs, and the wrapper
// hands out no mutable access after construction.
#[allow(unsafe_code)]
unsafe impl Sync for ReadOnlyTensor {}

impl std::ops::Deref for ReadOnlyTensor {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// A CPU matrix's rows in host memory, which its tensor aliases.
#[derive(Debug)]
enum HostRows {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl HostRows {
    fn new(compute: Compute, values: Vec<f32>) -> Self {
        match compute {
            Compute::F32 => HostRows::F32(values),
            Compute::F16 => HostRows::F16(values.iter().map(|v| half::f16::from_f32(*v)).collect()),
        }
    }

    fn extended(&self, more: &[f32]) -> Self {
        match self {
            HostRows::F32(v) => HostRows::F32([v.as_slice(), more].concat()),
            HostRows::F16(v) => {
                let mut out = Vec::with_capacity(v.len() + more.len());
                out.extend_from_slice(v);
                out.extend(more.iter().map(|x| half::f16::from_f32(*x)));
                HostRows::F16(out)
            }
        }
    }

    /// A tensor viewing these rows without copying them.
    fn view(&self, rows: usize, dim: usize) -> Tensor {
        let (ptr, kind) = match self {
            HostRows::F32(v) => (v.as_ptr().cast::<u8>(), Kind::Float),
            HostRows::F16(v) => (v.as_ptr().cast::<u8>(), Kind::Half),
        };
        let (rows, dim) = (rows as i64, dim as i64);
        // Safety: `ptr` points at `rows * dim` initialized elements of `kind`, contiguous and
        // row-major. The buffer is never written or reallocated after this point, and the
        // tensor is stored next to it in a `DeviceMatrix` whose field order drops the tensor
        // (and with it every view libtorch made of it inside this crate) before the buffer.
        #[allow(unsafe_code)]
        unsafe {
            Tensor::from_blob(ptr, &[rows, dim], &[dim, 1], kind, Device::Cpu)
        }
    }
}

/// A generation's vectors on the device. Rows are in storage (block) order.
#[derive(Debug)]
pub struct DeviceMatrix {
    generation: GenerationId,
    /// Declared before `host`, so it is dropped before the rows it may alias.
    tensor: ReadOnlyTensor,
    /// On the CPU, the rows themselves (the tensor is a view of them).
    host: Option<HostRows>,
    dim: usize,
    ids: Vec<u64>,
    /// `rows_after[b]`: rows in blocks `0..=b`.
    rows_after: Vec<usize>,
}

impl DeviceMatrix {
    /// Rows visible to a snapshot that sees `blocks` blocks.
    fn rows_for(&self, blocks: u64) -> usize {
        if blocks == 0 {
            0
        } else {
            self.rows_after[blocks as usize - 1]
        }
    }

    fn blocks(&self) -> u64 {
        self.rows_after.len() as u64
    }

    /// Device memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

#[derive(Default)]
struct MatrixCache {
    /// The current generation's matrix stays loaded between snapshots.
    current: Option<Arc<DeviceMatrix>>,
    /// Older generations live only while a snapshot uses them.
    others: HashMap<GenerationId, Weak<DeviceMatrix>>,
    loads: u64,
}

struct Inner {
    db: Db,
    options: RetrieverOptions,
    matrices: Mutex<MatrixCache>,
    encoders: Mutex<HashMap<String, Arc<Encoder>>>,
}

/// The database plus its retriever: encoders stored with it and device-resident matrices.
/// Cheap to clone.
#[derive(Clone)]
pub struct Retriever {
    inner: Arc<Inner>,
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
                encoders: Mutex::new(HashMap::new()),
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
        SearchSnapshot {
            retriever: self.clone(),
            snapshot,
            state: Mutex::new(None),
        }
    }

    /// The device matrix for a snapshot's generation, loading or extending it as needed.
    fn matrix_for(&self, snapshot: &Snapshot) -> Result<Arc<DeviceMatrix>> {
        let manifest = snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        let generation = manifest.id;
        let current = self.db().current_generation()? == Some(generation);
        let mut cache = self.inner.matrices.lock();
        let cached = match &cache.current {
            Some(m) if m.generation == generation => Some(m.clone()),
            _ => cache.others.get(&generation).and_then(Weak::upgrade),
        };
        let matrix = match cached {
            Some(m) if m.blocks() >= manifest.blocks => return Ok(m),
            Some(m) => self.extend(&m, snapshot)?,
            None => self.load(snapshot)?,
        };
        cache.loads += 1;
        let matrix = Arc::new(matrix);
        if current {
            if let Some(old) = cache.current.replace(matrix.clone())
                && old.generation != generation
            {
                cache.others.insert(old.generation, Arc::downgrade(&old));
            }
        } else {
            cache.others.insert(generation, Arc::downgrade(&matrix));
        }
        cache.others.retain(|_, w| w.strong_count() > 0);
        Ok(matrix)
    }

    fn device_kind(&self) -> Kind {
        match self.inner.options.compute {
            Compute::F32 => Kind::Float,
            Compute::F16 => Kind::Half,
        }
    }

    fn load(&self, snapshot: &Snapshot) -> Result<DeviceMatrix> {
        let raw = snapshot.vector_blocks(0)?;
        let rows_after = block_rows(&[], &raw.block_sizes);
        let rows = raw.rows();
        let (tensor, host) = self.place(None, raw.values, rows, raw.dim);
        Ok(DeviceMatrix {
            generation: raw.generation,
            tensor,
            host,
            dim: raw.dim,
            ids: raw.ids,
            rows_after,
        })
    }

    fn extend(&self, base: &DeviceMatrix, snapshot: &Snapshot) -> Result<DeviceMatrix> {
        let raw = snapshot.vector_blocks(base.blocks())?;
        let rows_after = block_rows(&base.rows_after, &raw.block_sizes);
        let mut ids = base.ids.clone();
        ids.extend(raw.ids);
        let (tensor, host) = self.place(Some(base), raw.values, ids.len(), raw.dim);
        Ok(DeviceMatrix {
            generation: base.generation,
            tensor,
            host,
            dim: raw.dim,
            ids,
            rows_after,
        })
    }

    /// Puts rows on the device: on the CPU as host rows plus a tensor view of them, else as a
    /// device tensor. `base` holds the rows that come first, if any.
    fn place(
        &self,
        base: Option<&DeviceMatrix>,
        more: Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> (ReadOnlyTensor, Option<HostRows>) {
        let device = self.inner.options.encoder.device;
        if device == Device::Cpu && self.inner.options.host_scan {
            let host = match base.and_then(|b| b.host.as_ref()) {
                Some(h) => h.extended(&more),
                None => HostRows::new(self.inner.options.compute, more),
            };
            let tensor = host.view(rows, dim);
            return (ReadOnlyTensor(tensor), Some(host));
        }
        let fresh = Tensor::from_slice(&more)
            .view([(more.len() / dim.max(1)) as i64, dim as i64])
            .to_kind(self.device_kind())
            .to_device(device);
        let tensor = match base {
            Some(b) => Tensor::cat(&[&*b.tensor, &fresh], 0),
            None => fresh,
        };
        (ReadOnlyTensor(tensor), None)
    }

    // ---------------------------------------------------------- building

    /// Embeds every passage with `encoder` into a new generation and publishes it. Streams
    /// passages from a snapshot in batches (bounded memory), then catches up on passages
    /// ingested meanwhile until the coverage check lets it commit. The encoder checkpoint is
    /// stored with the database, so the generation records exactly which weights produced it.
    pub fn build_generation(
        &self,
        encoder: &Encoder,
        mut options: BuildOptions<'_>,
    ) -> Result<GenerationId> {
        let checkpoint = self.store_encoder(encoder)?;
        let mut provenance = options.provenance.clone();
        provenance.checkpoint_id = Some(checkpoint.clone());
        let spec = GenerationSpec::new(checkpoint, encoder.dim() as u32, options.dtype)
            .with_provenance(provenance);
        let mut writer = self.db().begin_generation(spec)?;
        if let Some(query) = options.query_encoder {
            let id = self.store_encoder(query)?;
            writer.set_query_encoder(&id, &options.provenance.note)?;
        }
        let snapshot = self.db().snapshot()?;
        let total = snapshot.passage_count()?;
        let batch = self.inner.options.build_batch.max(1);
        let mut done = 0u64;
        let mut chunk = Vec::with_capacity(batch);
        let report = |done: u64, total: u64, options: &mut BuildOptions<'_>| {
            if let Some(p) = options.progress.as_mut() {
                p(Progress { done, total });
            }
        };
        for passage in snapshot.passages() {
            chunk.push(passage?);
            if chunk.len() == batch {
                write_embedded(&mut writer, encoder, &chunk)?;
                done += chunk.len() as u64;
                chunk.clear();
                report(done, total, &mut options);
            }
        }
        write_embedded(&mut writer, encoder, &chunk)?;
        done += chunk.len() as u64;
        report(done, total.max(done), &mut options);
        drop(snapshot);
        loop {
            let missing = writer.missing()?;
            if !missing.is_empty() {
                let passages = visible_passages(&self.db().snapshot()?, &missing)?;
                for part in passages.chunks(batch) {
                    write_embedded(&mut writer, encoder, part)?;
                }
                continue;
            }
            match writer.commit() {
                Ok(generation) => return Ok(generation),
                Err(realm_storage::Error::CoverageGap { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    // ---------------------------------------------------------- ingestion

    /// Inserts passages and embeds them with the current generation's document encoder in
    /// the same atomic write, so they are searchable at once (no rebuild). Passages whose
    /// external id is already stored are not embedded. Before any generation exists,
    /// passages are stored pending and the first build embeds them.
    pub fn ingest(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>> {
        for _ in 0..3 {
            let snapshot = self.db().snapshot()?;
            let Some(manifest) = snapshot.generation().cloned() else {
                return Ok(self.db().insert(batch)?);
            };
            let encoder = self.document_encoder(&manifest)?;
            let mut fresh = Vec::new();
            for (i, p) in batch.iter().enumerate() {
                let known = match &p.external_id {
                    Some(ext) => snapshot.get_by_external_id(ext)?.is_some(),
                    None => false,
                };
                if !known && !p.text.trim().is_empty() {
                    fresh.push(i);
                }
            }
            let docs: Vec<(&str, &str)> = fresh
                .iter()
                .map(|&i| (batch[i].title.as_str(), batch[i].text.as_str()))
                .collect();
            let embedded = tensor_rows(&encoder.encode_docs(&docs)?)?;
            let dim = encoder.dim() as usize;
            let mut rows: Vec<Option<&[f32]>> = vec![None; batch.len()];
            for (j, &i) in fresh.iter().enumerate() {
                rows[i] = Some(&embedded[j * dim..(j + 1) * dim]);
            }
            match self.db().insert_with_vectors(batch, manifest.id, &rows) {
                Ok(outcomes) => {
                    // A passage that turned out new without a row (its external id was
                    // deleted meanwhile) is pending: embed it now, in whatever generation is
                    // current by then.
                    let late = outcomes
                        .iter()
                        .zip(&rows)
                        .any(|(o, r)| matches!(o, InsertOutcome::Inserted(_)) && r.is_none());
                    if late {
                        self.embed_pending()?;
                    }
                    return Ok(outcomes);
                }
                Err(realm_storage::Error::GenerationChanged { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Busy {
            reason: "the current generation changed three times during one ingest batch".into(),
        })
    }

    /// Embeds the current generation's pending passages (inserted without vectors) with its
    /// document encoder, retrying if a publish intervenes. Returns how many were embedded.
    pub fn embed_pending(&self) -> Result<usize> {
        for _ in 0..3 {
            match self.embed_pending_once() {
                Err(Error::Storage(
                    realm_storage::Error::NotWritable { .. }
                    | realm_storage::Error::UnknownGeneration(_)
                    | realm_storage::Error::DuplicateVector { .. },
                )) => continue,
                other => return other,
            }
        }
        Err(Error::Busy {
            reason:
                "the current generation changed three times while pending passages were embedded"
                    .into(),
        })
    }

    fn embed_pending_once(&self) -> Result<usize> {
        let snapshot = self.db().snapshot()?;
        let Some(manifest) = snapshot.generation().cloned() else {
            return Ok(0);
        };
        let encoder = self.document_encoder(&manifest)?;
        let passages = visible_passages(&snapshot, &snapshot.pending()?)?;
        for part in passages.chunks(self.inner.options.build_batch.max(1)) {
            let (ids, values) = embed_passages(&encoder, part)?;
            match self.db().put_vectors(manifest.id, &ids, &values) {
                // Deleted since the snapshot: skip this part, the rest still gets embedded.
                Err(realm_storage::Error::UnknownPassage(_)) => {}
                other => other?,
            }
        }
        Ok(passages.len())
    }
}

/// Cumulative row counts after each block: `base` extended by freshly read block sizes.
fn block_rows(base: &[usize], sizes: &[usize]) -> Vec<usize> {
    let mut rows_after = base.to_vec();
    let mut total = base.last().copied().unwrap_or(0);
    for size in sizes {
        total += size;
        rows_after.push(total);
    }
    rows_after
}

/// Embeds passages as documents: their ids and their rows, row-major.
fn embed_passages(
    encoder: &Encoder,
    passages: &[realm_storage::Passage],
) -> Result<(Vec<u64>, Vec<f32>)> {
    let docs: Vec<(&str, &str)> = passages
        .iter()
        .map(|p| (p.title.as_str(), p.text.as_str()))
        .collect();
    let values = tensor_rows(&encoder.encode_docs(&docs)?)?;
    Ok((passages.iter().map(|p| p.id).collect(), values))
}

/// The passages with these ids that the snapshot still sees (deleted ones are skipped).
fn visible_passages(snapshot: &Snapshot, ids: &[u64]) -> Result<Vec<realm_storage::Passage>> {
    let mut passages = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(p) = snapshot.get(id)? {
            passages.push(p);
        }
    }
    Ok(passages)
}

/// Embeds and writes passages into a building generation. A passage deleted meanwhile makes
/// the store reject the whole part atomically; the part is then skipped, and the builder's
/// catch-up loop writes whatever of it still exists.
fn write_embedded(
    writer: &mut realm_storage::GenerationWriter,
    encoder: &Encoder,
    passages: &[realm_storage::Passage],
) -> Result<()> {
    if passages.is_empty() {
        return Ok(());
    }
    let (ids, values) = embed_passages(encoder, passages)?;
    match writer.write(&ids, &values) {
        Ok(()) | Err(realm_storage::Error::UnknownPassage(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A [N, D] tensor as row-major f32 values on the CPU.
pub fn tensor_rows(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view(-1);
    Ok(Vec::<f32>::try_from(&t)?)
}

struct SearchState {
    matrix: Arc<DeviceMatrix>,
    rows: usize,
    /// Rows of passages deleted before the snapshot, excluded from ranking.
    dead: Option<ReadOnlyTensor>,
    dead_host: Option<Vec<bool>>,
}

/// A pinned, searchable snapshot: every search through it uses the same generation and
/// passage set.
pub struct SearchSnapshot {
    retriever: Retriever,
    snapshot: Snapshot,
    state: Mutex<Option<Arc<SearchState>>>,
}

impl std::fmt::Debug for SearchSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchSnapshot")
            .field("generation", &self.snapshot.generation_id())
            .finish()
    }
}

impl SearchSnapshot {
    /// The storage snapshot (passages, pending, vectors).
    pub fn storage(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The pinned generation.
    pub fn generation_id(&self) -> Option<GenerationId> {
        self.snapshot.generation_id()
    }

    /// Moves forward to the current generation.
    pub fn refresh(&mut self) -> Result<()> {
        self.snapshot.refresh()?;
        *self.state.lock() = None;
        Ok(())
    }

    /// The query encoder used by [`SearchSnapshot::search`].
    pub fn query_encoder(&self) -> Result<Arc<Encoder>> {
        let manifest = self
            .snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        self.retriever.query_encoder(manifest)
    }

    fn state(&self) -> Result<Arc<SearchState>> {
        let mut guard = self.state.lock();
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let matrix = self.retriever.matrix_for(&self.snapshot)?;
        let manifest = self
            .snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        let rows = matrix.rows_for(manifest.blocks);
        let deleted = self.snapshot.deleted_vectors()?;
        let (dead, dead_host) = if deleted.is_empty() {
            (None, None)
        } else {
            let mask: Vec<bool> = matrix.ids[..rows]
                .iter()
                .map(|id| deleted.contains(id))
                .collect();
            let tensor = Tensor::from_slice(&mask).to_device(matrix.tensor.device());
            (Some(ReadOnlyTensor(tensor)), Some(mask))
        };
        let state = Arc::new(SearchState {
            matrix,
            rows,
            dead,
            dead_host,
        });
        *guard = Some(state.clone());
        Ok(state)
    }

    /// The pinned generation's stored vectors of `ids`, in that order, as one f32
    /// `[ids.len(), dim]` tensor on the retriever's device (no gradient).
    pub fn vectors_of(&self, ids: &[u64]) -> Result<Tensor> {
        let state = self.state()?;
        let m = &state.matrix;
        let pos: std::collections::HashMap<u64, i64> = m.ids[..state.rows]
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as i64))
            .collect();
        let rows = ids
            .iter()
            .map(|id| {
                pos.get(id)
                    .copied()
                    .ok_or(Error::Storage(realm_storage::Error::UnknownPassage(*id)))
            })
            .collect::<Result<Vec<_>>>()?;
        let index = Tensor::from_slice(&rows).to_device(m.tensor.device());
        Ok(m.tensor.index_select(0, &index).to_kind(Kind::Float))
    }

    /// Top-k passages for one query text.
    pub fn search(&self, text: &str, k: usize) -> Result<Vec<Hit>> {
        Ok(self.search_batch(&[text], k)?.pop().unwrap_or_default())
    }

    /// Top-k passages for each query text.
    pub fn search_batch(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<Hit>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encoder = self.query_encoder()?;
        let queries = tch::no_grad(|| encoder.encode(texts))?;
        self.search_vectors(&queries, k)
    }

    /// Top-k passages for query vectors `[B, D]`.
    pub fn search_vectors(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<Hit>>> {
        self.top_k(queries, k)?
            .into_iter()
            .map(|row| {
                let probs = softmax(&row.iter().map(|(_, s)| *s).collect::<Vec<_>>());
                self.hits(row, probs)
            })
            .collect()
    }

    /// Hits for ranked `(passage id, score)` pairs with their probabilities, passages read
    /// through the snapshot.
    pub(crate) fn hits(&self, ranked: Vec<(u64, f32)>, probs: Vec<f32>) -> Result<Vec<Hit>> {
        let generation = self.generation_id().unwrap_or_default();
        let mut hits = Vec::with_capacity(ranked.len());
        for (rank, ((id, score), prob)) in ranked.into_iter().zip(probs).enumerate() {
            let passage = self
                .snapshot
                .get(id)?
                .ok_or(Error::Storage(realm_storage::Error::UnknownPassage(id)))?;
            hits.push(Hit {
                rank: rank + 1,
                passage_id: id,
                title: passage.title,
                text: passage.text,
                score,
                prob,
                generation,
            });
        }
        Ok(hits)
    }

    /// Exact MIPS: for each query row, the `k` best `(passage id, score)` pairs, by score
    /// descending and then passage id ascending (a deterministic order for ties).
    pub fn top_k(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        let state = self.state()?;
        let matrix = &state.matrix;
        let dim = matrix.tensor.size().get(1).copied().unwrap_or(0);
        let qsize = queries.size();
        if qsize.len() != 2 || qsize[1] != dim {
            return Err(Error::InvalidInput {
                reason: format!(
                    "query vectors have shape {qsize:?}, but generation {} stores {dim}-dimensional vectors",
                    matrix.generation
                ),
            });
        }
        let batch = qsize[0] as usize;
        let live = state.rows
            - state
                .dead
                .as_ref()
                .map_or(0, |d| d.sum(Kind::Int64).int64_value(&[]) as usize);
        let k = k.min(live);
        if k == 0 || batch == 0 {
            return Ok(vec![Vec::new(); batch]);
        }
        if let Some(host) = &matrix.host
            && batch <= HOST_SCAN_MAX_BATCH
        {
            let q = queries
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let q: Vec<f32> = Vec::try_from(&q.view(-1))?;
            let scan = HostScan {
                rows: host,
                dim: matrix.dim,
                len: state.rows,
                ids: &matrix.ids,
                dead: state.dead_host.as_deref(),
            };
            return Ok(scan.top_k(&q, k));
        }
        let chunk_rows = self.chunk_rows(batch, matrix);
        let mut heaps: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        tch::no_grad(|| -> Result<()> {
            let device = matrix.tensor.device();
            let on_cpu_f16 = device == Device::Cpu && matrix.tensor.kind() == Kind::Half;
            let compute_kind = if on_cpu_f16 {
                Kind::Float
            } else {
                matrix.tensor.kind()
            };
            let q = queries.to_device(device).to_kind(compute_kind);
            let mut start = 0usize;
            while start < state.rows {
                let len = chunk_rows.min(state.rows - start);
                let mut m = matrix.tensor.narrow(0, start as i64, len as i64);
                if on_cpu_f16 {
                    // CPUs have no fast half GEMM: widen one cache-sized chunk at a time.
                    m = m.to_kind(Kind::Float);
                }
                // [chunk, B] = M·qᵀ: a tall-skinny GEMM over row-major M, which BLAS runs
                // faster than q·Mᵀ; its transpose is the [B, chunk] score block.
                let mut scores = m.matmul(&q.tr()).to_kind(Kind::Float).tr();
                if let Some(dead) = &state.dead {
                    let dead = dead.narrow(0, start as i64, len as i64);
                    scores = scores.masked_fill(&dead.unsqueeze(0), f64::NEG_INFINITY);
                }
                // A row can enter a query's top-k only if it scores at least the query's
                // current k-th best. Until every heap is full, the chunk's own k-th best
                // stands in. Ties at the threshold are kept and ordered by id in the heap.
                let threshold = if heaps.iter().all(TopK::is_full) {
                    let t: Vec<f32> = heaps.iter().map(TopK::threshold).collect();
                    Tensor::from_slice(&t)
                        .view([batch as i64, 1])
                        .to_device(device)
                } else {
                    let kc = k.min(len) as i64;
                    let (values, _) = scores.topk(kc, -1, true, false);
                    values.narrow(1, kc - 1, 1)
                };
                let hits = scores.ge_tensor(&threshold).logical_and(&scores.isfinite());
                let nz = hits.nonzero();
                let (rows, cols) = (nz.select(1, 0), nz.select(1, 1));
                let picked = scores.index(&[Some(&rows), Some(&cols)]);
                let rows: Vec<i64> = Vec::try_from(&rows.to_device(Device::Cpu).contiguous())?;
                let cols: Vec<i64> = Vec::try_from(&cols.to_device(Device::Cpu).contiguous())?;
                let picked: Vec<f32> = Vec::try_from(&picked.to_device(Device::Cpu))?;
                for ((b, c), score) in rows.into_iter().zip(cols).zip(picked) {
                    heaps[b as usize].offer(Candidate {
                        score,
                        id: matrix.ids[start + c as usize],
                    });
                }
                start += len;
            }
            Ok(())
        })?;
        Ok(heaps.into_iter().map(TopK::into_sorted).collect())
    }

    /// Rows per scoring chunk: the [batch, chunk] score block and, for f16 on CPU, the
    /// widened chunk stay around the size of a last-level cache.
    fn chunk_rows(&self, batch: usize, matrix: &DeviceMatrix) -> usize {
        let fixed = self.retriever.inner.options.score_chunk_rows;
        if fixed > 0 {
            return fixed;
        }
        if matrix.host.is_none() {
            // A device tensor (CUDA): one GEMM over the whole matrix.
            return matrix.ids.len().max(1);
        }
        let dim = matrix.tensor.size().get(1).copied().unwrap_or(1).max(1) as usize;
        let budget = 8 << 20; // bytes
        let per_row = 4 * batch
            + if matrix.tensor.kind() == Kind::Half {
                4 * dim
            } else {
                0
            };
        (budget / per_row.max(1)).clamp(1024, 1 << 20)
    }

    /// Device memory of the pinned generation's matrix, once loaded.
    pub fn matrix_bytes(&self) -> Result<usize> {
        Ok(self.state()?.matrix.bytes())
    }

    /// Passage ids deleted since their rows were written (excluded from results).
    pub fn deleted(&self) -> Result<HashSet<u64>> {
        Ok(self.snapshot.deleted_vectors()?)
    }
}

/// Batches up to this size are scored by [`HostScan`] on the CPU: one memory-bound pass
/// over the rows with the top-k fused in; larger batches are compute-bound and go to GEMM.
const HOST_SCAN_MAX_BATCH: usize = 4;

/// Exact top-k by scanning host rows with all cores, each keeping a bounded heap.
struct HostScan<'a> {
    rows: &'a HostRows,
    dim: usize,
    /// Rows visible to the snapshot.
    len: usize,
    ids: &'a [u64],
    dead: Option<&'a [bool]>,
}

/// A scored row, ordered so that greater is better: higher score, then lower passage id.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    score: f32,
    id: u64,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The best `k` candidates seen so far, under [`Candidate`]'s order.
struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Candidate>>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    fn offer(&mut self, c: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(c));
        } else if self.heap.peek().is_some_and(|worst| c > worst.0) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(c));
        }
    }

    fn is_full(&self) -> bool {
        self.heap.len() >= self.k
    }

    /// The k-th best score (the bar a new candidate must reach).
    fn threshold(&self) -> f32 {
        self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score)
    }

    fn into_candidates(self) -> impl Iterator<Item = Candidate> {
        self.heap.into_iter().map(|std::cmp::Reverse(c)| c)
    }

    /// Best first, as `(passage id, score)`.
    fn into_sorted(self) -> Vec<(u64, f32)> {
        let mut all: Vec<Candidate> = self.into_candidates().collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter().map(|c| (c.id, c.score)).collect()
    }
}

impl HostScan<'_> {
    fn top_k(&self, queries: &[f32], k: usize) -> Vec<Vec<(u64, f32)>> {
        let batch = queries.len() / self.dim.max(1);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.len.div_ceil(threads).max(1);
        let partial: Vec<Vec<TopK>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.len)
                .step_by(per)
                .map(|start| {
                    let end = (start + per).min(self.len);
                    s.spawn(move || self.scan(queries, batch, start..end, k))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut merged: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        for part in partial {
            for (into, from) in merged.iter_mut().zip(part) {
                from.into_candidates().for_each(|c| into.offer(c));
            }
        }
        merged.into_iter().map(TopK::into_sorted).collect()
    }

    fn scan(
        &self,
        queries: &[f32],
        batch: usize,
        range: std::ops::Range<usize>,
        k: usize,
    ) -> Vec<TopK> {
        let dim = self.dim;
        let mut heaps: Vec<TopK> = (0..batch).map(|_| TopK::new(k)).collect();
        let mut widened = vec![0f32; dim];
        for r in range {
            if self.dead.is_some_and(|d| d[r]) {
                continue;
            }
            let row: &[f32] = match self.rows {
                HostRows::F32(v) => &v[r * dim..(r + 1) * dim],
                HostRows::F16(v) => {
                    use half::slice::HalfFloatSliceExt;
                    v[r * dim..(r + 1) * dim].convert_to_f32_slice(&mut widened);
                    &widened
                }
            };
            for (b, heap) in heaps.iter_mut().enumerate() {
                heap.offer(Candidate {
                    score: dot(row, &queries[b * dim..(b + 1) * dim]),
                    id: self.ids[r],
                });
            }
        }
        heaps
    }
}

/// Inner product with 16 independent accumulators, which the compiler vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The softmax of `scores` (max-shifted): the p(z|x) a dense search reports for its hits.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn retriever_and_snapshots_are_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Retriever>();
        shareable::<super::SearchSnapshot>();
    }
}
