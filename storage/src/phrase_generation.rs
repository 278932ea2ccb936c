//! Phrase generations: what one holds (spec and manifest), the writer that builds one with
//! the coverage check at commit, and staging validated phrase rows into a batch.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, pair_key, u64_key};
use crate::db::{
    Db, META_CURRENT_PHRASE, META_NEXT_GENERATION, read_meta_u64, read_passage,
    read_phrase_current, read_phrase_manifest,
};
use crate::error::{Error, Result};
use crate::generation::uncovered;
use crate::phrase_rows::PhraseRows;
use crate::rocks::{Batch, Cf, Reader};
use crate::{Dtype, GenerationId, GenerationState, PassageId, QueryEncoderVersion, now_ms};

/// What a new phrase generation holds: the phrase encoder and how its rows are stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhraseGenerationSpec {
    /// The phrase encoder's checkpoint id; the caller stores the checkpoint as the blob
    /// `phrase-encoder/<id>`. Not empty.
    pub encoder_checkpoint_id: String,
    /// The dimension of every start and end vector, 1 to 65536.
    pub dim: u32,
    /// How start and end values are stored; reads always return `f32`.
    pub dtype: Dtype,
    /// The encoder's start/end filter threshold (recorded only; finite and at least 0).
    pub filter_threshold: f64,
    /// The encoder's maximum sequence length in tokens (recorded only).
    pub max_len: u32,
    /// Free-form text.
    pub note: String,
}

impl PhraseGenerationSpec {
    /// A spec with threshold 0, `max_len` 0 and an empty note.
    pub fn new(encoder_checkpoint_id: impl Into<String>, dim: u32, dtype: Dtype) -> Self {
        PhraseGenerationSpec {
            encoder_checkpoint_id: encoder_checkpoint_id.into(),
            dim,
            dtype,
            filter_threshold: 0.0,
            max_len: 0,
            note: String::new(),
        }
    }

    fn check(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidSpec { reason });
        if self.dim == 0 || self.dim > 65_536 {
            return invalid(format!(
                "the phrase dimension must be between 1 and 65536, not {}",
                self.dim
            ));
        }
        if self.encoder_checkpoint_id.trim().is_empty() {
            return invalid("the phrase encoder's checkpoint id is empty".into());
        }
        if !self.filter_threshold.is_finite() || self.filter_threshold < 0.0 {
            return invalid(format!(
                "the filter threshold must be finite and at least 0, not {}",
                self.filter_threshold
            ));
        }
        Ok(())
    }
}

/// A phrase generation's manifest, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhraseManifest {
    pub id: GenerationId,
    pub state: GenerationState,
    pub spec: PhraseGenerationSpec,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub committed_ms: Option<u64>,
    pub retired_ms: Option<u64>,
    /// Row records written, including those of passages deleted since.
    pub passages_written: u64,
    /// Stored tokens in those records.
    pub tokens_written: u64,
    /// Query-encoder versions attached by phrase query-side training
    /// ([`Db::attach_phrase_query_encoder`]), oldest first. Each `checkpoint_id` names a blob
    /// `phrase-encoder/<id>` whose query side (BERT and query heads) encodes questions for this
    /// generation, while the spec's encoder stays the one that encoded its passages.
    pub query_encoders: Vec<QueryEncoderVersion>,
}

impl PhraseManifest {
    /// The newest attached query encoder, if any; without one, questions are encoded by the
    /// spec's encoder.
    pub fn query_encoder(&self) -> Option<&QueryEncoderVersion> {
        self.query_encoders.last()
    }
}

/// A phrase manifest as format version 4 stored it, before query-encoder versions: still
/// read, never written (a record is rewritten in the current layout when it is modified).
#[derive(Deserialize)]
#[cfg_attr(feature = "testing", derive(Serialize))]
struct PhraseManifestV4 {
    id: GenerationId,
    state: GenerationState,
    spec: PhraseGenerationSpec,
    created_ms: u64,
    committed_ms: Option<u64>,
    retired_ms: Option<u64>,
    passages_written: u64,
    tokens_written: u64,
}

impl From<PhraseManifestV4> for PhraseManifest {
    fn from(v4: PhraseManifestV4) -> Self {
        PhraseManifest {
            id: v4.id,
            state: v4.state,
            spec: v4.spec,
            created_ms: v4.created_ms,
            committed_ms: v4.committed_ms,
            retired_ms: v4.retired_ms,
            passages_written: v4.passages_written,
            tokens_written: v4.tokens_written,
            query_encoders: Vec::new(),
        }
    }
}

/// `manifest` in the version-4 layout (its query-encoder versions dropped), for the test hook
/// that fakes a phrase manifest a version-4 build wrote.
#[cfg(feature = "testing")]
pub(crate) fn encode_legacy_phrase_manifest(manifest: &PhraseManifest) -> Vec<u8> {
    let m = manifest.clone();
    encode(&PhraseManifestV4 {
        id: m.id,
        state: m.state,
        spec: m.spec,
        created_ms: m.created_ms,
        committed_ms: m.committed_ms,
        retired_ms: m.retired_ms,
        passages_written: m.passages_written,
        tokens_written: m.tokens_written,
    })
}

/// Decodes a stored phrase manifest: the current layout, or else the version-4 layout
/// (without `query_encoders`, read as an empty list). Decoding is strict about trailing
/// bytes, so a record decodes in at most one of the layouts. `what` names the record in the
/// error.
pub(crate) fn decode_phrase_manifest(
    bytes: &[u8],
    what: &dyn Fn() -> String,
) -> Result<PhraseManifest> {
    decode::<PhraseManifest>(bytes, what)
        .or_else(|_| decode::<PhraseManifestV4>(bytes, what).map(PhraseManifest::from))
}

/// A phrase generation as listed by [`Db::phrase_generations`].
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseGenerationInfo {
    pub manifest: PhraseManifest,
    /// Whether this is the current phrase generation.
    pub current: bool,
    /// Live phrase snapshots of this handle that pin it.
    pub pins: usize,
    /// Other live handles (other processes, usually) with a snapshot that pins it.
    pub pinned_elsewhere: usize,
}

/// Writes one new phrase generation. Invisible to readers until
/// [`commit`](Self::commit); dropping the writer without committing aborts the generation.
#[derive(Debug)]
pub struct PhraseGenerationWriter {
    db: Db,
    id: GenerationId,
    finished: bool,
}

impl PhraseGenerationWriter {
    pub(crate) fn begin(db: Db, spec: PhraseGenerationSpec) -> Result<Self> {
        db.check_writable()?;
        spec.check()?;
        let id = {
            let _guard = db.inner.write_lock.lock();
            let rocks = db.rocks();
            // Passage and phrase generations draw from one counter: an id names one of them.
            let id = read_meta_u64(&*rocks, META_NEXT_GENERATION)?.unwrap_or(1);
            let manifest = PhraseManifest {
                id,
                state: GenerationState::Building,
                spec,
                created_ms: now_ms(),
                committed_ms: None,
                retired_ms: None,
                passages_written: 0,
                tokens_written: 0,
                query_encoders: Vec::new(),
            };
            let mut wb = rocks.batch();
            wb.put(Cf::Meta, META_NEXT_GENERATION, &u64_key(id + 1));
            wb.put(Cf::PhraseGenerations, &u64_key(id), &encode(&manifest));
            rocks.write(wb, false)?;
            id
        };
        Ok(PhraseGenerationWriter {
            db,
            id,
            finished: false,
        })
    }

    /// The new phrase generation's id.
    pub fn id(&self) -> GenerationId {
        self.id
    }

    /// The manifest as written so far.
    pub fn manifest(&self) -> Result<PhraseManifest> {
        read_phrase_manifest(&*self.db.rocks(), self.id)
    }

    /// Writes the phrase rows of passages, all or nothing. Every passage must be stored and
    /// have no rows in this generation yet; its rows must lie inside its text
    /// ([`PhraseRows::check_text`]) and, unless empty, have the spec's dimension.
    pub fn write(&mut self, rows: &[(PassageId, PhraseRows)]) -> Result<()> {
        let _guard = self.db.inner.write_lock.lock();
        let mut manifest = read_phrase_manifest(&*self.db.rocks(), self.id)?;
        if self.finished || manifest.state != GenerationState::Building {
            return Err(Error::NotWritable {
                generation: self.id,
                state: manifest.state,
            });
        }
        self.db.write_phrase_rows_locked(&mut manifest, rows)
    }

    /// Passages that exist now but have no rows in this generation: what a builder must
    /// still encode before it can commit (passages ingested since it started, say).
    pub fn missing(&self) -> Result<Vec<PassageId>> {
        uncovered(&*self.db.rocks(), Cf::PhraseRows, self.id)
    }

    /// Publishes the phrase generation: one atomic, fsynced write commits it, makes it the
    /// current phrase generation and retires the previous one. Fails with
    /// [`Error::CoverageGap`] (and stays open for more writes) while a stored passage has no
    /// rows in it; a passage with empty rows is covered.
    pub fn commit(&mut self) -> Result<GenerationId> {
        let _guard = self.db.inner.write_lock.lock();
        let rocks = self.db.rocks();
        if self.finished {
            return Err(Error::NotWritable {
                generation: self.id,
                state: read_phrase_manifest(&*rocks, self.id)?.state,
            });
        }
        let missing = uncovered(&*rocks, Cf::PhraseRows, self.id)?;
        if !missing.is_empty() {
            return Err(Error::CoverageGap {
                generation: self.id,
                missing: missing.len(),
                first: missing.into_iter().take(5).collect(),
            });
        }
        let now = now_ms();
        let mut manifest = read_phrase_manifest(&*rocks, self.id)?;
        manifest.state = GenerationState::Committed;
        manifest.committed_ms = Some(now);
        let mut wb = rocks.batch();
        if let Some(old) = read_phrase_current(&*rocks)? {
            let mut old = read_phrase_manifest(&*rocks, old)?;
            old.state = GenerationState::Retired;
            old.retired_ms = Some(now);
            wb.put(Cf::PhraseGenerations, &u64_key(old.id), &encode(&old));
        }
        wb.put(Cf::PhraseGenerations, &u64_key(self.id), &encode(&manifest));
        wb.put(Cf::Meta, META_CURRENT_PHRASE, &u64_key(self.id));
        rocks.write(wb, true)?;
        self.finished = true;
        Ok(self.id)
    }

    /// Discards the phrase generation and its rows.
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
        delete_phrase_generation_data(&mut wb, self.id);
        rocks.write(wb, false)
    }
}

impl Drop for PhraseGenerationWriter {
    fn drop(&mut self) {
        // An error here leaves a `building` phrase generation, which the next open discards.
        let _ = self.abort_inner();
    }
}

/// Validates phrase rows for `manifest`'s generation and stages their records into `wb`,
/// counting them in `manifest` (which the caller writes in the same batch).
pub(crate) fn stage_phrase_rows(
    r: &dyn Reader,
    wb: &mut Batch<'_>,
    manifest: &mut PhraseManifest,
    rows: &[(PassageId, PhraseRows)],
) -> Result<()> {
    let g = manifest.id;
    let dim = manifest.spec.dim as usize;
    let mut unique = HashSet::with_capacity(rows.len());
    for (id, passage_rows) in rows {
        let id = *id;
        let passage = read_passage(r, id)?.ok_or(Error::UnknownPassage(id))?;
        let key = pair_key(g, id);
        if !unique.insert(id) || r.get(Cf::PhraseRows, &key)?.is_some() {
            return Err(Error::DuplicatePhraseRows {
                generation: g,
                passage: id,
            });
        }
        let in_passage = |e: Error| match e {
            Error::InvalidPhraseRows { reason } => Error::InvalidPhraseRows {
                reason: format!("the rows of passage {id}: {reason}"),
            },
            other => other,
        };
        if !passage_rows.is_empty() && passage_rows.dim() != dim {
            return Err(Error::InvalidPhraseRows {
                reason: format!(
                    "phrase generation {g} stores {dim}-dimensional vectors, but the rows of passage {id} are {}-dimensional",
                    passage_rows.dim()
                ),
            });
        }
        passage_rows.check_text(&passage.text).map_err(in_passage)?;
        passage_rows
            .check_dtype(manifest.spec.dtype)
            .map_err(in_passage)?;
        wb.put(
            Cf::PhraseRows,
            &key,
            &passage_rows.encode_record(manifest.spec.dtype),
        );
        manifest.passages_written += 1;
        manifest.tokens_written += passage_rows.len() as u64;
    }
    wb.put(Cf::PhraseGenerations, &u64_key(g), &encode(&*manifest));
    Ok(())
}

/// Deletes a phrase generation's manifest and rows.
pub(crate) fn delete_phrase_generation_data(wb: &mut Batch<'_>, generation: GenerationId) {
    let prefix = u64_key(generation);
    wb.delete(Cf::PhraseGenerations, &prefix);
    wb.delete_prefix(Cf::PhraseRows, &prefix);
}
