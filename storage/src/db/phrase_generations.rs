//! Phrase generations on the handle: starting one, writing rows of pending passages into the
//! current one, reading manifests, pinning them in phrase snapshots, their share of GC, and
//! crash recovery on open.

use std::collections::BTreeMap;

use super::{Db, GcReport, META_CURRENT_PHRASE, PinHolders, read_meta_u64};
use crate::codec::{encode, u64_key};
use crate::error::{Error, Result};
use crate::phrase_generation::{
    self, PhraseGenerationWriter, decode_phrase_manifest, delete_phrase_generation_data,
};
use crate::phrase_rows::PhraseRows;
use crate::phrase_snapshot::PhraseSnapshot;
use crate::rocks::{Batch, Cf, Reader};
use crate::{
    GenerationId, GenerationState, PassageId, PhraseGenerationInfo, PhraseGenerationSpec,
    PhraseManifest, QueryEncoderVersion,
};

impl Db {
    /// Starts a new phrase generation. It stays invisible until
    /// [`PhraseGenerationWriter::commit`]. Its id comes from the same counter as passage
    /// generations', so an id never names two generations.
    pub fn begin_phrase_generation(
        &self,
        spec: PhraseGenerationSpec,
    ) -> Result<PhraseGenerationWriter> {
        PhraseGenerationWriter::begin(self.clone(), spec)
    }

    /// Writes the phrase rows of pending passages into the current phrase generation
    /// `generation` (incremental ingestion), all or nothing, with the checks of
    /// [`PhraseGenerationWriter::write`]. A generation that is building or retired is not
    /// writable ([`Error::NotWritable`]).
    pub fn put_phrase_rows(
        &self,
        generation: GenerationId,
        rows: &[(PassageId, PhraseRows)],
    ) -> Result<()> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let mut manifest = read_phrase_manifest(&*self.rocks(), generation)?;
        if manifest.state != GenerationState::Committed {
            return Err(Error::NotWritable {
                generation,
                state: manifest.state,
            });
        }
        self.write_phrase_rows_locked(&mut manifest, rows)
    }

    /// Validates and writes phrase rows with their manifest's new counts in one batch; the
    /// caller holds the write lock.
    pub(crate) fn write_phrase_rows_locked(
        &self,
        manifest: &mut PhraseManifest,
        rows: &[(PassageId, PhraseRows)],
    ) -> Result<()> {
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        phrase_generation::stage_phrase_rows(&*rocks, &mut wb, manifest, rows)?;
        rocks.write(wb, self.options().sync_all_writes)
    }

    /// Attaches a query-encoder version to the current phrase generation `generation` (phrase
    /// query-side training: only the question encoder changes, the stored phrase vectors
    /// stay) and returns its version number, 1 for the first. `checkpoint_id` names the blob
    /// `phrase-encoder/<id>`, which the caller stores; it must not be blank
    /// ([`Error::InvalidSpec`]). A phrase generation that is building or retired refuses it
    /// ([`Error::NotWritable`]); an id that names no phrase generation is
    /// [`Error::UnknownGeneration`]. One fsynced write.
    pub fn attach_phrase_query_encoder(
        &self,
        generation: GenerationId,
        checkpoint_id: &str,
        note: &str,
    ) -> Result<u32> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = read_phrase_manifest(&*rocks, generation)?;
        if manifest.state != GenerationState::Committed {
            return Err(Error::NotWritable {
                generation,
                state: manifest.state,
            });
        }
        if checkpoint_id.trim().is_empty() {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "the query encoder's checkpoint id for phrase generation {generation} is empty"
                ),
            });
        }
        let version =
            QueryEncoderVersion::append(&mut manifest.query_encoders, checkpoint_id, note);
        let mut wb = rocks.batch();
        wb.put(
            Cf::PhraseGenerations,
            &u64_key(generation),
            &encode(&manifest),
        );
        rocks.write(wb, true)?;
        Ok(version)
    }

    /// The current phrase generation's id, if one was ever committed.
    pub fn current_phrase_generation(&self) -> Result<Option<GenerationId>> {
        read_phrase_current(&*self.rocks())
    }

    /// One phrase generation's manifest; [`Error::UnknownGeneration`] if no phrase
    /// generation has this id.
    pub fn phrase_generation(&self, id: GenerationId) -> Result<PhraseManifest> {
        read_phrase_manifest(&*self.rocks(), id)
    }

    /// Every phrase generation not yet collected, oldest first, with its pins.
    pub fn phrase_generations(&self) -> Result<Vec<PhraseGenerationInfo>> {
        let rocks = self.rocks();
        let current = read_phrase_current(&*rocks)?;
        let pins = self.pins()?;
        Ok(read_phrase_manifests(&*rocks)?
            .into_iter()
            .map(|manifest| {
                let holders = pins.get(&manifest.id).copied().unwrap_or_default();
                PhraseGenerationInfo {
                    current: Some(manifest.id) == current,
                    pins: holders.here,
                    pinned_elsewhere: holders.elsewhere,
                    manifest,
                }
            })
            .collect())
    }

    /// Pins the current phrase generation and the passage set as they are now; fails with
    /// [`Error::NoPhraseGeneration`] before one was committed. The pin is registered where
    /// every process's GC sees it.
    pub fn phrase_snapshot(&self) -> Result<PhraseSnapshot> {
        let (rs, manifest) = self.inner.pins.pin(|| {
            let rs = self.view()?;
            let id = read_phrase_current(&rs)?.ok_or(Error::NoPhraseGeneration)?;
            let manifest = read_phrase_manifest(&rs, id)?;
            Ok(((rs, manifest), Some(id)))
        })?;
        Ok(PhraseSnapshot::new(self.clone(), rs, manifest))
    }

    /// Pins a committed or retired (not yet collected) phrase generation (time travel), with
    /// the passage set as it is now. A building one is [`Error::NotPinnable`].
    pub fn phrase_snapshot_at(&self, generation: GenerationId) -> Result<PhraseSnapshot> {
        let (rs, manifest) = self.inner.pins.pin(|| {
            let rs = self.view()?;
            let manifest = read_phrase_manifest(&rs, generation)?;
            if manifest.state == GenerationState::Building {
                return Err(Error::NotPinnable {
                    generation,
                    state: manifest.state,
                });
            }
            Ok(((rs, manifest), Some(generation)))
        })?;
        Ok(PhraseSnapshot::new(self.clone(), rs, manifest))
    }

    /// Crash recovery on a writer's open: a phrase generation still `building` was
    /// interrupted; remove it with its rows.
    pub(super) fn discard_unfinished_phrase_generations(&self) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        let mut any = false;
        for manifest in read_phrase_manifests(&*rocks)? {
            if manifest.state == GenerationState::Building {
                delete_phrase_generation_data(&mut wb, manifest.id);
                any = true;
            }
        }
        if any {
            rocks.write(wb, true)?;
        }
        Ok(())
    }
}

/// GC's share for phrase generations, under GC's locks: stages the deletion of retired phrase
/// generations that nothing pins and that fall outside the `keep` newest retired ones, and
/// records every retired one in `report`.
pub(super) fn stage_phrase_gc(
    r: &dyn Reader,
    wb: &mut Batch<'_>,
    pins: &BTreeMap<GenerationId, PinHolders>,
    keep: usize,
    report: &mut GcReport,
) -> Result<()> {
    let mut retired: Vec<GenerationId> = read_phrase_manifests(r)?
        .into_iter()
        .filter(|m| m.state == GenerationState::Retired)
        .map(|m| m.id)
        .collect();
    retired.sort_by_key(|&id| std::cmp::Reverse(id));
    for (rank, id) in retired.into_iter().enumerate() {
        if pins.get(&id).is_some_and(PinHolders::any) {
            report.phrase_pinned.push(id);
        } else if rank < keep {
            report.phrase_retained.push(id);
        } else {
            delete_phrase_generation_data(wb, id);
            report.phrase_collected.push(id);
        }
    }
    Ok(())
}

pub(crate) fn read_phrase_current(r: &dyn Reader) -> Result<Option<GenerationId>> {
    read_meta_u64(r, META_CURRENT_PHRASE)
}

pub(crate) fn read_phrase_manifest(r: &dyn Reader, id: GenerationId) -> Result<PhraseManifest> {
    match r.get(Cf::PhraseGenerations, &u64_key(id))? {
        Some(bytes) => decode_phrase_manifest(&bytes, &|| {
            format!("the manifest of phrase generation {id}")
        }),
        None => Err(Error::UnknownGeneration(id)),
    }
}

/// Every phrase manifest, oldest first (none on a follower of a version-3 database).
pub(crate) fn read_phrase_manifests(r: &dyn Reader) -> Result<Vec<PhraseManifest>> {
    r.scan(Cf::PhraseGenerations, &[], &[])
        .map(|entry| {
            let (key, value) = entry?;
            decode_phrase_manifest(&value, &|| {
                format!("the phrase manifest stored under key {:?}", key.as_ref())
            })
        })
        .collect()
}

/// The ids of every phrase generation, whatever its state (a deleted passage loses its rows
/// in each).
pub(crate) fn read_phrase_ids(r: &dyn Reader) -> Result<Vec<GenerationId>> {
    r.scan(Cf::PhraseGenerations, &[], &[])
        .map(|entry| {
            let (key, _) = entry?;
            crate::codec::decode_u64(&key, &|| "a phrase generation key".into())
        })
        .collect()
}

#[cfg(feature = "testing")]
impl Db {
    /// Test hook, not part of the API: makes the closed database at `path` look as if a
    /// format-3 build had written it (no phrase column families, version 3 recorded).
    #[doc(hidden)]
    pub fn testing_downgrade_to_format_3(path: impl AsRef<std::path::Path>) -> Result<()> {
        use crate::rocks::{OpenMode, Rocks};
        let path = path.as_ref();
        {
            let rocks = Rocks::open(path, OpenMode::Writer { create: false })?;
            let mut wb = rocks.batch();
            wb.delete(Cf::Meta, META_CURRENT_PHRASE);
            wb.put(Cf::Meta, super::META_FORMAT, &u64_key(3));
            rocks.write(wb, true)?;
        }
        crate::rocks::drop_column_families(path, &[Cf::PhraseGenerations, Cf::PhraseRows])
    }

    /// Test hook, not part of the API: rewrites phrase generation `generation`'s manifest
    /// in the layout of format version 4 (without query-encoder versions, which it drops),
    /// as a version-4 build would have stored it.
    #[doc(hidden)]
    pub fn testing_put_legacy_phrase_manifest(&self, generation: GenerationId) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let manifest = read_phrase_manifest(&*rocks, generation)?;
        let mut wb = rocks.batch();
        wb.put(
            Cf::PhraseGenerations,
            &u64_key(generation),
            &phrase_generation::encode_legacy_phrase_manifest(&manifest),
        );
        rocks.write(wb, true)
    }

    /// Test hook, not part of the API: replaces the query-encoder versions of phrase
    /// generation `generation`'s manifest with `versions`, behind every check, as damage or
    /// a bug would.
    #[doc(hidden)]
    pub fn testing_set_phrase_query_encoders(
        &self,
        generation: GenerationId,
        versions: Vec<QueryEncoderVersion>,
    ) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifest = read_phrase_manifest(&*rocks, generation)?;
        manifest.query_encoders = versions;
        let mut wb = rocks.batch();
        wb.put(
            Cf::PhraseGenerations,
            &u64_key(generation),
            &encode(&manifest),
        );
        rocks.write(wb, true)
    }

    /// Test hook, not part of the API: stores `bytes` as the row record of `passage` in
    /// phrase generation `generation`, behind every check, as damage or a bug would.
    #[doc(hidden)]
    pub fn testing_put_raw_phrase_record(
        &self,
        generation: GenerationId,
        passage: PassageId,
        bytes: &[u8],
    ) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        wb.put(
            Cf::PhraseRows,
            &crate::codec::pair_key(generation, passage),
            bytes,
        );
        rocks.write(wb, true)
    }

    /// Test hook, not part of the API: the record [`Db::put_phrase_rows`] would store for
    /// `rows` in `dtype`, for tests that plant records with
    /// [`Db::testing_put_raw_phrase_record`].
    #[doc(hidden)]
    pub fn testing_phrase_record(rows: &PhraseRows, dtype: crate::Dtype) -> Vec<u8> {
        rows.encode_record(dtype)
    }
}
