//! Generations' bookkeeping on the handle: starting one, writing vectors into the current
//! one, attaching query encoders, and reading manifests.

use super::{Db, META_CURRENT, read_meta_u64};
use crate::codec::{decode, encode, pair_key, u64_key};
use crate::error::{Error, Result};
use crate::generation::{self, GenerationWriter};
use crate::rocks::{Cf, Reader};
use crate::{
    GenerationId, GenerationInfo, GenerationManifest, GenerationSpec, GenerationState, PassageId,
    QueryEncoderVersion,
};

impl Db {
    /// Starts a new generation. It stays invisible until [`GenerationWriter::commit`].
    pub fn begin_generation(&self, spec: GenerationSpec) -> Result<GenerationWriter> {
        GenerationWriter::begin(self.clone(), spec)
    }

    /// Writes vectors of pending passages into the current generation `generation`
    /// (incremental ingestion). Passages that already have a vector there are rejected with
    /// [`Error::DuplicateVector`]: committed vectors are immutable.
    pub fn put_vectors(
        &self,
        generation: GenerationId,
        ids: &[PassageId],
        vectors: &[f32],
    ) -> Result<()> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = committed_manifest(&*rocks, generation)?;
        self.write_rows_locked(&mut manifest, ids, vectors)
    }

    /// Validates and writes rows into a generation; the caller holds the write lock.
    pub(crate) fn write_rows_locked(
        &self,
        manifest: &mut GenerationManifest,
        ids: &[PassageId],
        vectors: &[f32],
    ) -> Result<()> {
        let rocks = self.rocks();
        generation::check_rows(manifest, ids.len(), vectors)?;
        let mut unique = std::collections::HashSet::with_capacity(ids.len());
        for &id in ids {
            if rocks.get(Cf::Passages, &u64_key(id))?.is_none() {
                return Err(Error::UnknownPassage(id));
            }
            if !unique.insert(id)
                || rocks
                    .get(Cf::VectorIndex, &pair_key(manifest.id, id))?
                    .is_some()
            {
                return Err(Error::DuplicateVector {
                    generation: manifest.id,
                    passage: id,
                });
            }
        }
        let mut wb = rocks.batch();
        generation::stage_rows(
            &*rocks,
            &mut wb,
            manifest,
            ids,
            vectors,
            self.options().block_rows,
        )?;
        wb.put(Cf::Generations, &u64_key(manifest.id), &encode(&*manifest));
        rocks.write(wb, self.options().sync_all_writes)
    }

    /// Attaches a query-encoder version to the current generation `generation` and returns
    /// its version number. The document vectors stay as they are.
    pub fn attach_query_encoder(
        &self,
        generation: GenerationId,
        checkpoint_id: &str,
        note: &str,
    ) -> Result<u32> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = committed_manifest(&*rocks, generation)?;
        let version =
            QueryEncoderVersion::append(&mut manifest.query_encoders, checkpoint_id, note);
        let mut wb = rocks.batch();
        wb.put(Cf::Generations, &u64_key(generation), &encode(&manifest));
        rocks.write(wb, true)?;
        Ok(version)
    }

    /// The current generation's id, if one was ever committed.
    pub fn current_generation(&self) -> Result<Option<GenerationId>> {
        read_current(&*self.rocks())
    }

    /// One generation's manifest.
    pub fn generation(&self, id: GenerationId) -> Result<GenerationManifest> {
        read_manifest(&*self.rocks(), id)
    }

    /// Every generation not yet collected, oldest first.
    pub fn generations(&self) -> Result<Vec<GenerationInfo>> {
        let rocks = self.rocks();
        let current = read_current(&*rocks)?;
        let pins = self.pins()?;
        Ok(read_manifests(&*rocks)?
            .into_iter()
            .map(|manifest| {
                let holders = pins.get(&manifest.id).copied().unwrap_or_default();
                GenerationInfo {
                    current: Some(manifest.id) == current,
                    pins: holders.here,
                    pinned_elsewhere: holders.elsewhere,
                    manifest,
                }
            })
            .collect())
    }
}

pub(crate) fn read_current(r: &dyn Reader) -> Result<Option<GenerationId>> {
    read_meta_u64(r, META_CURRENT)
}

pub(crate) fn read_manifest(r: &dyn Reader, id: GenerationId) -> Result<GenerationManifest> {
    match r.get(Cf::Generations, &u64_key(id))? {
        Some(bytes) => decode(&bytes, &|| format!("the manifest of generation {id}")),
        None => Err(Error::UnknownGeneration(id)),
    }
}

pub(crate) fn read_manifests(r: &dyn Reader) -> Result<Vec<GenerationManifest>> {
    r.scan(Cf::Generations, &[], &[])
        .map(|entry| {
            let (key, value) = entry?;
            decode(&value, &|| {
                format!("the manifest stored under key {:?}", key.as_ref())
            })
        })
        .collect()
}

/// The manifest of `generation`, which must be committed: only the current generation takes
/// vectors of new passages and new query-encoder versions.
fn committed_manifest(rocks: &dyn Reader, generation: GenerationId) -> Result<GenerationManifest> {
    let manifest = read_manifest(rocks, generation)?;
    if manifest.state != GenerationState::Committed {
        return Err(Error::NotWritable {
            generation,
            state: manifest.state,
        });
    }
    Ok(manifest)
}
