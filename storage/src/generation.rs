//! Building a generation: the writer, row validation, and staging rows into a batch.

use crate::codec::{self, encode, pair_key, u64_key};
use crate::db::{Db, read_current, read_manifest};
use crate::error::{Error, Result};
use crate::rocks::{Batch, Cf, Reader};
use crate::{GenerationId, GenerationManifest, GenerationSpec, GenerationState, PassageId, now_ms};

/// Writes one new generation. Invisible to readers until [`commit`](Self::commit);
/// dropping the writer without committing aborts the generation.
#[derive(Debug)]
pub struct GenerationWriter {
    db: Db,
    id: GenerationId,
    finished: bool,
}

impl GenerationWriter {
    pub(crate) fn begin(db: Db, spec: GenerationSpec) -> Result<Self> {
        db.check_writable()?;
        if spec.dim == 0 || spec.dim > 65_536 {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "the dimension must be between 1 and 65536, not {}",
                    spec.dim
                ),
            });
        }
        if spec.model_fingerprint.trim().is_empty() {
            return Err(Error::InvalidSpec {
                reason: "the model fingerprint is empty".into(),
            });
        }
        let id = {
            let _guard = db.inner.write_lock.lock();
            let rocks = db.rocks();
            let id =
                crate::db::read_meta_u64(&*rocks, crate::db::META_NEXT_GENERATION)?.unwrap_or(1);
            let mut spec = spec;
            if spec.provenance.parent.is_none() {
                spec.provenance.parent = read_current(&*rocks)?;
            }
            let manifest = GenerationManifest {
                id,
                state: GenerationState::Building,
                spec,
                created_ms: now_ms(),
                committed_ms: None,
                retired_ms: None,
                vector_count: 0,
                dead_vectors: 0,
                blocks: 0,
                query_encoders: Vec::new(),
            };
            let mut wb = rocks.batch();
            wb.put(Cf::Meta, crate::db::META_NEXT_GENERATION, &u64_key(id + 1));
            wb.put(Cf::Generations, &u64_key(id), &encode(&manifest));
            rocks.write(wb, false)?;
            id
        };
        Ok(GenerationWriter {
            db,
            id,
            finished: false,
        })
    }

    /// The new generation's id.
    pub fn id(&self) -> GenerationId {
        self.id
    }

    /// The manifest as written so far.
    pub fn manifest(&self) -> Result<GenerationManifest> {
        read_manifest(&*self.db.rocks(), self.id)
    }

    /// Writes vectors for `ids`: `vectors` holds `ids.len() * dim` finite floats, row-major.
    /// Every id must be a stored passage without a vector in this generation yet.
    pub fn write(&mut self, ids: &[PassageId], vectors: &[f32]) -> Result<()> {
        let _guard = self.db.inner.write_lock.lock();
        let mut manifest = read_manifest(&*self.db.rocks(), self.id)?;
        if self.finished || manifest.state != GenerationState::Building {
            return Err(Error::NotWritable {
                generation: self.id,
                state: manifest.state,
            });
        }
        self.db.write_rows_locked(&mut manifest, ids, vectors)
    }

    /// Records the query encoder this generation is published with (a query-encoder version,
    /// see `docs/format.md`), so that from its first snapshot on, queries use a query tower
    /// that matches its document vectors (a trainer's pair of towers). Returns the version.
    pub fn set_query_encoder(&mut self, checkpoint_id: &str, note: &str) -> Result<u32> {
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        let mut manifest = read_manifest(&*rocks, self.id)?;
        if self.finished || manifest.state != GenerationState::Building {
            return Err(Error::NotWritable {
                generation: self.id,
                state: manifest.state,
            });
        }
        let version =
            crate::QueryEncoderVersion::append(&mut manifest.query_encoders, checkpoint_id, note);
        let mut wb = rocks.batch();
        wb.put(Cf::Generations, &u64_key(self.id), &encode(&manifest));
        rocks.write(wb, false)?;
        Ok(version)
    }

    /// Passages that exist now but have no vector in this generation: what a builder must
    /// still embed before it can commit (passages ingested since it started, say).
    pub fn missing(&self) -> Result<Vec<PassageId>> {
        missing_in(&*self.db.rocks(), self.id)
    }

    /// Publishes the generation: one atomic write commits it, makes it current and retires
    /// the previous current generation. Fails with [`Error::CoverageGap`] (and stays open for
    /// more writes) while a stored passage has no vector in it.
    pub fn commit(&mut self) -> Result<GenerationId> {
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        if self.finished {
            return Err(Error::NotWritable {
                generation: self.id,
                state: read_manifest(&*rocks, self.id)?.state,
            });
        }
        let missing = missing_in(&*rocks, self.id)?;
        if !missing.is_empty() {
            return Err(Error::CoverageGap {
                generation: self.id,
                missing: missing.len(),
                first: missing.into_iter().take(5).collect(),
            });
        }
        let now = now_ms();
        let mut manifest = read_manifest(&*rocks, self.id)?;
        manifest.state = GenerationState::Committed;
        manifest.committed_ms = Some(now);
        let mut wb = rocks.batch();
        if let Some(old) = read_current(&*rocks)? {
            let mut old = read_manifest(&*rocks, old)?;
            old.state = GenerationState::Retired;
            old.retired_ms = Some(now);
            wb.put(Cf::Generations, &u64_key(old.id), &encode(&old));
        }
        wb.put(Cf::Generations, &u64_key(self.id), &encode(&manifest));
        wb.put(Cf::Meta, crate::db::META_CURRENT, &u64_key(self.id));
        rocks.write(wb, true)?;
        self.finished = true;
        Ok(self.id)
    }

    /// Discards the generation and its vectors.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        let mut wb = rocks.batch();
        delete_generation_data(&mut wb, self.id);
        rocks.write(wb, false)
    }
}

impl Drop for GenerationWriter {
    fn drop(&mut self) {
        // An error here leaves a `building` generation, which the next open discards.
        let _ = self.abort_inner();
    }
}

/// Passage ids without a vector (live or dead) in `generation`, by a merge of two sorted scans.
pub(crate) fn missing_in(r: &dyn Reader, generation: GenerationId) -> Result<Vec<PassageId>> {
    uncovered(r, Cf::VectorIndex, generation)
}

/// Stored passage ids without a `(generation, passage)` key in `cf` (the vector index, or a
/// phrase generation's rows), by a merge of two sorted scans.
pub(crate) fn uncovered(
    r: &dyn Reader,
    cf: Cf,
    generation: GenerationId,
) -> Result<Vec<PassageId>> {
    let what = || format!("a key of generation {generation} in {}", cf.name());
    let mut covered = r
        .scan(cf, &u64_key(generation), &[])
        .map(|e| e.and_then(|(k, _)| codec::pair_second(&k, &what)))
        .peekable();
    let mut missing = Vec::new();
    for entry in r.scan(Cf::Passages, &[], &[]) {
        let (key, _) = entry?;
        let id = codec::decode_u64(&key, &|| "a passage key".into())?;
        loop {
            match covered.peek() {
                Some(Ok(c)) if *c < id => {
                    covered.next();
                }
                Some(Err(_)) => return Err(covered.next().expect("peeked").unwrap_err()),
                _ => break,
            }
        }
        match covered.peek() {
            Some(Ok(c)) if *c == id => {
                covered.next();
            }
            _ => missing.push(id),
        }
    }
    Ok(missing)
}

/// Checks that `values` holds `rows` finite rows of the generation's dimension.
pub(crate) fn check_rows(manifest: &GenerationManifest, rows: usize, values: &[f32]) -> Result<()> {
    let dim = manifest.spec.dim as usize;
    if values.len() != rows * dim {
        return Err(Error::DimensionMismatch {
            generation: manifest.id,
            expected: dim,
            values: values.len(),
            ids: rows,
        });
    }
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            row: pos / dim,
            position: pos % dim,
        });
    }
    Ok(())
}

/// Adds blocks and index entries for validated rows to `wb`, updating `manifest` in memory,
/// and their entries in every approximate index of the generation that is caught up.
pub(crate) fn stage_rows(
    r: &dyn Reader,
    wb: &mut Batch<'_>,
    manifest: &mut GenerationManifest,
    ids: &[PassageId],
    values: &[f32],
    block_rows: usize,
) -> Result<()> {
    let first_block = manifest.blocks;
    let dim = manifest.spec.dim as usize;
    for (chunk_ids, chunk_values) in ids
        .chunks(block_rows.max(1))
        .zip(values.chunks(block_rows.max(1) * dim))
    {
        let block = manifest.blocks;
        let bytes = codec::encode_block(manifest.spec.dtype, dim, chunk_ids, chunk_values);
        wb.put(Cf::Vectors, &pair_key(manifest.id, block), &bytes);
        for &id in chunk_ids {
            wb.put(Cf::VectorIndex, &pair_key(manifest.id, id), &u64_key(block));
        }
        manifest.blocks += 1;
        manifest.vector_count += chunk_ids.len() as u64;
    }
    crate::ivf::stage_new_rows(r, wb, manifest, first_block, ids, values)
}

/// Deletes a generation's manifest, vectors, index and tombstones.
pub(crate) fn delete_generation_data(wb: &mut Batch<'_>, generation: GenerationId) {
    let prefix = u64_key(generation);
    wb.delete(Cf::Generations, &prefix);
    wb.delete_prefix(Cf::Vectors, &prefix);
    wb.delete_prefix(Cf::VectorIndex, &prefix);
    wb.delete_prefix(Cf::Tombstones, &prefix);
    crate::ivf::delete_generation_indexes(wb, generation);
}
