//! Passages: inserting (validated, deduplicated by external id, indexed lexically in the same
//! write), updating by external id (upsert), deleting, and decoding the stored records.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    Db, META_NEXT_PASSAGE, META_PASSAGE_COUNT, read_current, read_manifest, read_manifests,
    read_meta_u64, read_phrase_ids,
};
use crate::codec::{self, decode, encode, pair_key, u64_key};
use crate::error::{Error, Result};
use crate::generation;
use crate::lexical::{self, DocTerms};
use crate::rocks::{Batch, Cf, Reader, Rocks};
use crate::validation::check_passage;
use crate::{GenerationId, GenerationManifest, NewPassage, Passage, PassageId};

/// What happened to one passage of an insert batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored under a new id.
    Inserted(PassageId),
    /// Its external id was already stored (or repeated earlier in the batch) with the same
    /// title, text and metadata; nothing written.
    Duplicate(PassageId),
    /// Only from [`Db::upsert`] and [`Db::upsert_with_vectors`]: its external id was stored
    /// with another title, text or metadata. The passage `old` was removed and the new
    /// content stored as passage `new`, in one atomic write (see [`Db::upsert`] for why the
    /// id changes).
    Updated { old: PassageId, new: PassageId },
}

impl InsertOutcome {
    /// The passage's id, new or existing (after an update, the new one).
    pub fn id(self) -> PassageId {
        match self {
            InsertOutcome::Inserted(id)
            | InsertOutcome::Duplicate(id)
            | InsertOutcome::Updated { new: id, .. } => id,
        }
    }
}

/// Whether a write of passages with known external ids keeps or replaces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A known external id is a duplicate, whatever its content.
    Insert,
    /// A known external id with other content is replaced.
    Upsert,
}

/// Running totals that a write of passages updates.
struct Counters {
    passages: u64,
    lexical_docs: u64,
    lexical_tokens: u64,
}

impl Counters {
    fn read(r: &dyn Reader) -> Result<Self> {
        let (lexical_docs, lexical_tokens) = lexical::read_totals(r)?;
        Ok(Counters {
            passages: read_meta_u64(r, META_PASSAGE_COUNT)?.unwrap_or(0),
            lexical_docs,
            lexical_tokens,
        })
    }

    fn stage(&self, wb: &mut Batch<'_>) {
        wb.put(Cf::Meta, META_PASSAGE_COUNT, &u64_key(self.passages));
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(self.lexical_docs));
        wb.put(
            Cf::Meta,
            lexical::META_TOKENS,
            &u64_key(self.lexical_tokens),
        );
    }
}

/// The stored form of a passage.
#[derive(Serialize, Deserialize)]
struct PassageRecord {
    external_id: Option<String>,
    title: String,
    text: String,
    /// Metadata as JSON text (bincode cannot carry `serde_json::Value` directly).
    meta: String,
}

impl Db {
    /// Inserts a batch of passages atomically (all or nothing) and returns one outcome per
    /// passage, in order. Passages inserted this way have no vector in the current generation
    /// until one is written ([`Db::put_vectors`]); until then snapshots report them as pending.
    pub fn insert(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>> {
        self.write_passages(batch, None, Mode::Insert)
    }

    /// Inserts or updates passages atomically, by external id. A passage whose external id is
    /// stored with the same title, text and metadata is a [`InsertOutcome::Duplicate`]; one
    /// whose external id is stored with other content replaces it
    /// ([`InsertOutcome::Updated`]); any other is inserted. An external id may occur only once
    /// in a batch unless its occurrences are identical (the later ones are then duplicates);
    /// otherwise the call fails with [`Error::InvalidPassage`] naming the repeat.
    ///
    /// An update is the delete of the old passage and the insert of the new content in the
    /// same write batch: the old record, its BM25 postings and its rows go (a tombstone in
    /// every generation holding a row, which exact and approximate searches filter), and the
    /// new content gets a **new passage id**, to which the external id now points. The
    /// external id is the stable name of a passage across updates. Passage ids are not kept
    /// because rows, tombstones and index entries are keyed by (generation, passage id):
    /// a generation holds at most one row per passage id, and rows are immutable, so the same
    /// id cannot name an old row for old snapshots and a new row for new ones. Snapshots taken
    /// before the update keep seeing the old passage, its vector and its BM25 statistics.
    ///
    /// Updated passages have no vector in any generation until one is written, exactly like
    /// inserted ones: they are pending in the current generation, and a generation being built
    /// must embed them before it can commit ([`crate::GenerationWriter::missing`]).
    pub fn upsert(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>> {
        self.write_passages(batch, None, Mode::Upsert)
    }

    /// [`Db::upsert`] with vectors: `rows[i]` is passage `i`'s vector in the current
    /// generation `generation`, written in the same atomic write for inserted and updated
    /// passages (rows of duplicates are ignored), as [`Db::insert_with_vectors`] does.
    pub fn upsert_with_vectors(
        &self,
        batch: &[NewPassage],
        generation: GenerationId,
        rows: &[Option<&[f32]>],
    ) -> Result<Vec<InsertOutcome>> {
        check_row_count(batch, rows)?;
        self.write_passages(batch, Some((generation, rows)), Mode::Upsert)
    }

    /// Inserts passages and, in the same atomic write, their vectors in the current
    /// generation `generation`, so they become searchable with no pending window.
    /// `rows[i]` is passage `i`'s vector; a passage inserted without one (`None`, say because
    /// the caller expected it to be a duplicate) is pending. Rows of duplicates are ignored.
    /// Fails with [`Error::GenerationChanged`] if `generation` is no longer current.
    pub fn insert_with_vectors(
        &self,
        batch: &[NewPassage],
        generation: GenerationId,
        rows: &[Option<&[f32]>],
    ) -> Result<Vec<InsertOutcome>> {
        check_row_count(batch, rows)?;
        self.write_passages(batch, Some((generation, rows)), Mode::Insert)
    }

    fn write_passages(
        &self,
        batch: &[NewPassage],
        vectors: Option<(GenerationId, &[Option<&[f32]>])>,
        mode: Mode,
    ) -> Result<Vec<InsertOutcome>> {
        self.check_writable()?;
        let records = batch
            .iter()
            .enumerate()
            .map(|(index, p)| self.encode_passage(index, p))
            .collect::<Result<Vec<_>>>()?;
        // Analysis is the costly part of indexing; it needs no lock.
        let analyzed: Vec<DocTerms> = batch
            .iter()
            .map(|p| DocTerms::of(&p.title, &p.text))
            .collect();
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut current = match vectors {
            None => None,
            Some((generation, rows)) => Some(current_for_rows(&*rocks, generation, rows)?),
        };
        let mut next = read_meta_u64(&*rocks, META_NEXT_PASSAGE)?.unwrap_or(0);
        let mut counters = Counters::read(&*rocks)?;
        // Only an update removes rows, and then from every generation that has one.
        let (mut manifests, phrase_ids): (Vec<GenerationManifest>, Vec<GenerationId>) = match mode {
            Mode::Insert => (Vec::new(), Vec::new()),
            Mode::Upsert => (read_manifests(&*rocks)?, read_phrase_ids(&*rocks)?),
        };
        let mut removed_any = false;
        let mut wb = rocks.batch();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut seen: HashMap<&str, (usize, PassageId)> = HashMap::new();
        let mut new_ids: Vec<PassageId> = Vec::new();
        let mut new_values: Vec<f32> = Vec::new();
        for (index, ((passage, record), terms)) in
            batch.iter().zip(&records).zip(&analyzed).enumerate()
        {
            let mut replaces = None;
            if let Some(ext) = passage.external_id.as_deref() {
                if let Some(&(first, id)) = seen.get(ext) {
                    if mode == Mode::Upsert && !same_content(&batch[first], passage) {
                        return Err(Error::InvalidPassage {
                            index,
                            reason: format!(
                                "its external id {ext:?} occurs earlier in the batch (passage {first}) with other content; upsert the two in separate batches"
                            ),
                        });
                    }
                    outcomes.push(InsertOutcome::Duplicate(id));
                    continue;
                }
                match stored_under(&*rocks, ext, passage, mode)? {
                    Stored::No => {}
                    Stored::Same(id) => {
                        seen.insert(ext, (index, id));
                        outcomes.push(InsertOutcome::Duplicate(id));
                        continue;
                    }
                    Stored::Other(stored) => {
                        stage_removal(
                            &rocks,
                            &mut wb,
                            &mut manifests,
                            &phrase_ids,
                            &stored,
                            &mut counters,
                        )?;
                        removed_any = true;
                        replaces = Some(stored.id);
                    }
                }
            }
            let id = next;
            next += 1;
            counters.passages += 1;
            wb.put(Cf::Passages, &u64_key(id), record);
            terms.stage_insert(&mut wb, id);
            counters.lexical_docs += 1;
            counters.lexical_tokens += u64::from(terms.len);
            if let Some(ext) = passage.external_id.as_deref() {
                wb.put(Cf::ExternalIds, ext.as_bytes(), &u64_key(id));
                seen.insert(ext, (index, id));
            }
            outcomes.push(match replaces {
                None => InsertOutcome::Inserted(id),
                Some(old) => InsertOutcome::Updated { old, new: id },
            });
            if let Some(Some(row)) = vectors.map(|(_, rows)| rows[index]) {
                new_ids.push(id);
                new_values.extend_from_slice(row);
            }
        }
        wb.put(Cf::Meta, META_NEXT_PASSAGE, &u64_key(next));
        counters.stage(&mut wb);
        if let Some(current) = current.as_mut() {
            // An update may have tombstoned rows of the current generation too: its manifest
            // is written once, with both the removals and the new rows.
            if let Some(m) = manifests.iter().find(|m| m.id == current.id) {
                current.dead_vectors = m.dead_vectors;
            }
            manifests.retain(|m| m.id != current.id);
            if !new_ids.is_empty() {
                let block_rows = self.options().block_rows;
                generation::stage_rows(
                    &*rocks,
                    &mut wb,
                    current,
                    &new_ids,
                    &new_values,
                    block_rows,
                )?;
            }
            wb.put(Cf::Generations, &u64_key(current.id), &encode(&*current));
        }
        if removed_any {
            for manifest in &manifests {
                wb.put(Cf::Generations, &u64_key(manifest.id), &encode(manifest));
            }
        }
        rocks.write(wb, self.options().sync_all_writes)?;
        Ok(outcomes)
    }

    /// Checks a passage against the handle's limits and encodes its stored record.
    fn encode_passage(&self, index: usize, p: &NewPassage) -> Result<Vec<u8>> {
        let meta = check_passage(p, &self.options().passage_limits()).map_err(|reason| {
            Error::InvalidPassage {
                index,
                reason: reason.to_string(),
            }
        })?;
        Ok(encode(&PassageRecord {
            external_id: p.external_id.clone(),
            title: p.title.clone(),
            text: p.text.clone(),
            meta,
        }))
    }

    /// Deletes passages atomically. An unknown id fails the whole call with
    /// [`Error::UnknownPassage`] and deletes nothing. Held snapshots still see the passages.
    pub fn delete(&self, ids: &[PassageId]) -> Result<usize> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut manifests: Vec<GenerationManifest> = read_manifests(&*rocks)?;
        let phrase_ids = read_phrase_ids(&*rocks)?;
        let mut counters = Counters::read(&*rocks)?;
        let mut wb = rocks.batch();
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for &id in &unique {
            let passage = read_passage(&*rocks, id)?.ok_or(Error::UnknownPassage(id))?;
            stage_removal(
                &rocks,
                &mut wb,
                &mut manifests,
                &phrase_ids,
                &passage,
                &mut counters,
            )?;
            if let Some(ext) = &passage.external_id {
                wb.delete(Cf::ExternalIds, ext.as_bytes());
            }
        }
        for manifest in &manifests {
            wb.put(Cf::Generations, &u64_key(manifest.id), &encode(manifest));
        }
        counters.stage(&mut wb);
        rocks.write(wb, self.options().sync_all_writes)?;
        Ok(unique.len())
    }
}

/// Stages the removal of a stored passage: its record, its lexical postings, in every
/// generation of `manifests` holding a row of it its index entry (replaced by a tombstone,
/// counted in the manifest, which the caller writes), and its phrase rows in every phrase
/// generation of `phrase_ids` (no tombstone: snapshots keep them through their RocksDB
/// snapshot). The external id is the caller's.
fn stage_removal(
    rocks: &Rocks,
    wb: &mut Batch<'_>,
    manifests: &mut [GenerationManifest],
    phrase_ids: &[GenerationId],
    passage: &Passage,
    counters: &mut Counters,
) -> Result<()> {
    let id = passage.id;
    wb.delete(Cf::Passages, &u64_key(id));
    // The writer's index is always built by this analyzer (open rebuilds it otherwise), so
    // re-analyzing names exactly the passage's postings.
    let terms = DocTerms::of(&passage.title, &passage.text);
    terms.stage_delete(wb, id);
    counters.passages = counters.passages.saturating_sub(1);
    counters.lexical_docs = counters.lexical_docs.saturating_sub(1);
    counters.lexical_tokens = counters.lexical_tokens.saturating_sub(u64::from(terms.len));
    for manifest in manifests.iter_mut() {
        let key = pair_key(manifest.id, id);
        if rocks.get(Cf::VectorIndex, &key)?.is_some() {
            wb.delete(Cf::VectorIndex, &key);
            wb.put(Cf::Tombstones, &key, &[]);
            manifest.dead_vectors += 1;
        }
    }
    for &generation in phrase_ids {
        wb.delete(Cf::PhraseRows, &pair_key(generation, id));
    }
    Ok(())
}

/// The manifest of `generation`, which must be current, after checking `rows` against it.
fn current_for_rows(
    r: &dyn Reader,
    generation: GenerationId,
    rows: &[Option<&[f32]>],
) -> Result<GenerationManifest> {
    let current = read_current(r)?;
    if current != Some(generation) {
        return Err(Error::GenerationChanged {
            expected: generation,
            found: current,
        });
    }
    let manifest = read_manifest(r, generation)?;
    for (i, row) in rows.iter().enumerate() {
        if let Some(row) = row {
            generation::check_rows(&manifest, 1, row).map_err(|e| match e {
                Error::NonFinite { position, .. } => Error::NonFinite { row: i, position },
                other => other,
            })?;
        }
    }
    Ok(manifest)
}

/// What an external id names before a write.
enum Stored {
    /// Nothing.
    No,
    /// A passage to keep: the same content, or any content for an insert.
    Same(PassageId),
    /// A passage an upsert replaces.
    Other(Passage),
}

fn stored_under(r: &dyn Reader, ext: &str, new: &NewPassage, mode: Mode) -> Result<Stored> {
    let Some(bytes) = r.get(Cf::ExternalIds, ext.as_bytes())? else {
        return Ok(Stored::No);
    };
    let id = codec::decode_u64(&bytes, &|| format!("external id {ext:?}"))?;
    if mode == Mode::Insert {
        return Ok(Stored::Same(id));
    }
    let stored = read_passage(r, id)?.ok_or_else(|| Error::Corrupt {
        what: format!("external id {ext:?} (it names missing passage {id})"),
    })?;
    Ok(if stored.has_content_of(new) {
        Stored::Same(id)
    } else {
        Stored::Other(stored)
    })
}

/// Whether two passages of one batch carry the same content.
fn same_content(a: &NewPassage, b: &NewPassage) -> bool {
    a.title == b.title && a.text == b.text && a.meta == b.meta
}

/// Fails unless there is one row (or `None`) per passage.
fn check_row_count(batch: &[NewPassage], rows: &[Option<&[f32]>]) -> Result<()> {
    if rows.len() != batch.len() {
        return Err(Error::InvalidPassage {
            index: rows.len().min(batch.len()),
            reason: format!(
                "{} passages came with {} vector rows",
                batch.len(),
                rows.len()
            ),
        });
    }
    Ok(())
}

pub(crate) fn decode_passage(id: PassageId, bytes: &[u8]) -> Result<Passage> {
    let what = || format!("passage {id}");
    let record: PassageRecord = decode(bytes, &what)?;
    let meta = serde_json::from_str(&record.meta).map_err(|_| Error::Corrupt { what: what() })?;
    Ok(Passage {
        id,
        external_id: record.external_id,
        title: record.title,
        text: record.text,
        meta,
    })
}

pub(crate) fn read_passage(r: &dyn Reader, id: PassageId) -> Result<Option<Passage>> {
    match r.get(Cf::Passages, &u64_key(id))? {
        Some(bytes) => decode_passage(id, &bytes).map(Some),
        None => Ok(None),
    }
}
