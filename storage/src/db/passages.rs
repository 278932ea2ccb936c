//! Passages: inserting (validated, deduplicated by external id, indexed lexically in the same
//! write), deleting, and decoding the stored records.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    Db, META_NEXT_PASSAGE, META_PASSAGE_COUNT, read_current, read_manifest, read_manifests,
    read_meta_u64,
};
use crate::codec::{self, decode, encode, pair_key, u64_key};
use crate::error::{Error, Result};
use crate::generation;
use crate::lexical::{self, DocTerms};
use crate::rocks::{Cf, Reader};
use crate::validation::check_passage;
use crate::{GenerationId, GenerationManifest, NewPassage, Passage, PassageId};

/// What happened to one passage of an insert batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored under a new id.
    Inserted(PassageId),
    /// Its external id was already stored (or repeated earlier in the batch); nothing written.
    Duplicate(PassageId),
}

impl InsertOutcome {
    /// The passage's id, new or existing.
    pub fn id(self) -> PassageId {
        match self {
            InsertOutcome::Inserted(id) | InsertOutcome::Duplicate(id) => id,
        }
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
        self.insert_inner(batch, None)
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
        self.insert_inner(batch, Some((generation, rows)))
    }

    fn insert_inner(
        &self,
        batch: &[NewPassage],
        vectors: Option<(GenerationId, &[Option<&[f32]>])>,
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
        let mut manifest = match vectors {
            None => None,
            Some((generation, rows)) => {
                let current = read_current(&*rocks)?;
                if current != Some(generation) {
                    return Err(Error::GenerationChanged {
                        expected: generation,
                        found: current,
                    });
                }
                let manifest = read_manifest(&*rocks, generation)?;
                for (i, row) in rows.iter().enumerate() {
                    if let Some(row) = row {
                        generation::check_rows(&manifest, 1, row).map_err(|e| match e {
                            Error::NonFinite { position, .. } => {
                                Error::NonFinite { row: i, position }
                            }
                            other => other,
                        })?;
                    }
                }
                Some(manifest)
            }
        };
        let mut next = read_meta_u64(&*rocks, META_NEXT_PASSAGE)?.unwrap_or(0);
        let mut count = read_meta_u64(&*rocks, META_PASSAGE_COUNT)?.unwrap_or(0);
        let (mut lexical_docs, mut lexical_tokens) = lexical::read_totals(&*rocks)?;
        let mut wb = rocks.batch();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut seen: HashMap<&str, PassageId> = HashMap::new();
        let mut new_ids: Vec<PassageId> = Vec::new();
        let mut new_values: Vec<f32> = Vec::new();
        for (index, ((passage, record), terms)) in
            batch.iter().zip(&records).zip(&analyzed).enumerate()
        {
            if let Some(ext) = passage.external_id.as_deref() {
                if let Some(&id) = seen.get(ext) {
                    outcomes.push(InsertOutcome::Duplicate(id));
                    continue;
                }
                if let Some(bytes) = rocks.get(Cf::ExternalIds, ext.as_bytes())? {
                    let id = codec::decode_u64(&bytes, &|| format!("external id {ext:?}"))?;
                    outcomes.push(InsertOutcome::Duplicate(id));
                    continue;
                }
            }
            let id = next;
            next += 1;
            count += 1;
            wb.put(Cf::Passages, &u64_key(id), record);
            terms.stage_insert(&mut wb, id);
            lexical_docs += 1;
            lexical_tokens += u64::from(terms.len);
            if let Some(ext) = passage.external_id.as_deref() {
                wb.put(Cf::ExternalIds, ext.as_bytes(), &u64_key(id));
                seen.insert(ext, id);
            }
            outcomes.push(InsertOutcome::Inserted(id));
            if let Some(Some(row)) = vectors.map(|(_, rows)| rows[index]) {
                new_ids.push(id);
                new_values.extend_from_slice(row);
            }
        }
        wb.put(Cf::Meta, META_NEXT_PASSAGE, &u64_key(next));
        wb.put(Cf::Meta, META_PASSAGE_COUNT, &u64_key(count));
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(lexical_docs));
        wb.put(Cf::Meta, lexical::META_TOKENS, &u64_key(lexical_tokens));
        if let Some(manifest) = manifest.as_mut()
            && !new_ids.is_empty()
        {
            let block_rows = self.options().block_rows;
            generation::stage_rows(
                &*rocks,
                &mut wb,
                manifest,
                &new_ids,
                &new_values,
                block_rows,
            )?;
            wb.put(Cf::Generations, &u64_key(manifest.id), &encode(&*manifest));
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
        let mut count = read_meta_u64(&*rocks, META_PASSAGE_COUNT)?.unwrap_or(0);
        let (mut lexical_docs, mut lexical_tokens) = lexical::read_totals(&*rocks)?;
        let mut wb = rocks.batch();
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for &id in &unique {
            let passage = read_passage(&*rocks, id)?.ok_or(Error::UnknownPassage(id))?;
            wb.delete(Cf::Passages, &u64_key(id));
            if let Some(ext) = &passage.external_id {
                wb.delete(Cf::ExternalIds, ext.as_bytes());
            }
            // The writer's index is always built by this analyzer (open rebuilds it
            // otherwise), so re-analyzing names exactly the passage's postings.
            let terms = DocTerms::of(&passage.title, &passage.text);
            terms.stage_delete(&mut wb, id);
            lexical_docs = lexical_docs.saturating_sub(1);
            lexical_tokens = lexical_tokens.saturating_sub(u64::from(terms.len));
            for manifest in manifests.iter_mut() {
                let key = pair_key(manifest.id, id);
                if rocks.get(Cf::VectorIndex, &key)?.is_some() {
                    wb.delete(Cf::VectorIndex, &key);
                    wb.put(Cf::Tombstones, &key, &[]);
                    manifest.dead_vectors += 1;
                }
            }
            count -= 1;
        }
        for manifest in &manifests {
            wb.put(Cf::Generations, &u64_key(manifest.id), &encode(manifest));
        }
        wb.put(Cf::Meta, META_PASSAGE_COUNT, &u64_key(count));
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(lexical_docs));
        wb.put(Cf::Meta, lexical::META_TOKENS, &u64_key(lexical_tokens));
        rocks.write(wb, self.options().sync_all_writes)?;
        Ok(unique.len())
    }
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
