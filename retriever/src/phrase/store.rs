//! Phrase generations through the retriever: building one from a phrase encoder, filling
//! the rows of passages ingested since, and searching a pinned one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use realm_storage::{
    Dtype, GenerationId, Passage, PassageId, PhraseGenerationSpec, PhraseGenerationWriter,
    PhraseSnapshot,
};

use super::PhraseRows;
use super::encoder::{PhraseEncoder, PhraseEncoderConfig};
use super::ivf::PhraseIvfConfig;
use super::search::{PhraseAnswer, PhraseHit, PhraseIndex, PhraseSearchOptions, phrase_answers};
use super::units::{PassageText, RetrievalUnit, UnitHit, roll_up};
use crate::build::Progress;
use crate::error::{Error, Result};
use crate::retriever::Retriever;

/// Phrase encoder checkpoints are stored as blobs named `phrase-encoder/<sha256>`.
pub const PHRASE_ENCODER_BLOB_PREFIX: &str = "phrase-encoder/";

/// Options of [`Retriever::build_phrase_generation`].
pub struct PhraseBuildOptions<'a> {
    /// How the start and end vectors are stored.
    pub dtype: Dtype,
    /// A note kept in the generation's spec.
    pub note: String,
    /// Passages encoded per write.
    pub batch: usize,
    /// Called after every batch.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

impl Default for PhraseBuildOptions<'_> {
    fn default() -> Self {
        PhraseBuildOptions {
            dtype: Dtype::F16,
            note: String::new(),
            batch: 256,
            progress: None,
        }
    }
}

impl std::fmt::Debug for PhraseBuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhraseBuildOptions")
            .field("dtype", &self.dtype)
            .field("note", &self.note)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// A pinned phrase generation held for search: its rows loaded into a [`PhraseIndex`] on
/// the retriever's device, the phrase encoder that built it, and the one that encodes the
/// questions: the newest query-encoder version attached to the generation (phrase
/// query-side training), else the same encoder.
#[derive(Debug)]
pub struct PhraseSearcher {
    snapshot: PhraseSnapshot,
    index: PhraseIndex,
    encoder: Arc<PhraseEncoder>,
    query_encoder: Arc<PhraseEncoder>,
}

impl PhraseSearcher {
    /// The pinned phrase generation.
    pub fn generation(&self) -> GenerationId {
        self.snapshot.generation()
    }

    /// The pinned snapshot (the generation's manifest, its rows, the passages as of it).
    pub fn snapshot(&self) -> &PhraseSnapshot {
        &self.snapshot
    }

    /// The loaded rows.
    pub fn index(&self) -> &PhraseIndex {
        &self.index
    }

    /// The phrase encoder of the generation (its passages' encoder).
    pub fn encoder(&self) -> &PhraseEncoder {
        &self.encoder
    }

    /// Trains an approximate index over the loaded starts and ends (see
    /// [`PhraseIndex::build_ivf`]); searches whose options set `nprobe` then probe it.
    pub fn build_ivf(&mut self, config: &PhraseIvfConfig) -> Result<()> {
        self.index.build_ivf(config)
    }

    /// The encoder of the questions: the newest attached query-encoder version's, else
    /// [`PhraseSearcher::encoder`].
    pub fn query_encoder(&self) -> &PhraseEncoder {
        &self.query_encoder
    }

    /// The query-encoder version the questions are encoded with; `None` for the
    /// generation's own encoder.
    pub fn query_encoder_version(&self) -> Option<u32> {
        self.snapshot.manifest().query_encoder().map(|q| q.version)
    }

    /// The best phrases for a question (two-sided search, see [`PhraseIndex::search`]).
    pub fn search(&self, question: &str, opts: &PhraseSearchOptions) -> Result<Vec<PhraseHit>> {
        let query = self.query_encoder.encode_queries(&[question])?.remove(0);
        self.index.search(&query, opts)
    }

    /// The best phrases for each of many questions (encoded in batches, searched with
    /// [`PhraseIndex::search_batch`]), in order.
    pub fn search_batch(
        &self,
        questions: &[&str],
        opts: &PhraseSearchOptions,
    ) -> Result<Vec<Vec<PhraseHit>>> {
        let queries = self.query_encoder.encode_queries(questions)?;
        self.index.search_batch(&queries, opts)
    }

    /// Answers to a question from its `opts.k` best phrases, pooled by normalized text
    /// (see [`phrase_answers`]), best first.
    pub fn answers(&self, question: &str, opts: &PhraseSearchOptions) -> Result<Vec<PhraseAnswer>> {
        let hits = self.search(question, opts)?;
        let passages = self.passages_of(&hits)?;
        Ok(phrase_answers(&hits, |id| {
            passages.get(&id).map(|p: &Passage| p.text.as_str())
        }))
    }

    /// The `k` best `unit`s for a question, each with the passage of its best phrase: the
    /// question's `opts.k` best phrases (at least `k`) rolled up (see [`roll_up`]).
    pub fn search_units(
        &self,
        question: &str,
        unit: RetrievalUnit,
        k: usize,
        opts: &PhraseSearchOptions,
    ) -> Result<Vec<(UnitHit, Passage)>> {
        let opts = PhraseSearchOptions {
            k: opts.k.max(k),
            ..*opts
        };
        let hits = self.search(question, &opts)?;
        let passages = self.passages_of(&hits)?;
        let units = roll_up(&hits, unit, k, |id| {
            passages.get(&id).map(|p| PassageText {
                title: &p.title,
                text: &p.text,
            })
        });
        Ok(units
            .into_iter()
            .filter_map(|u| {
                let passage = passages.get(&u.best.passage)?.clone();
                Some((u, passage))
            })
            .collect())
    }

    /// The passages of `hits`, as of the pinned snapshot (deleted ones left out).
    fn passages_of(&self, hits: &[PhraseHit]) -> Result<HashMap<PassageId, Passage>> {
        let mut passages = HashMap::new();
        for hit in hits {
            if let Entry::Vacant(slot) = passages.entry(hit.passage)
                && let Some(passage) = self.snapshot.passage(hit.passage)?
            {
                slot.insert(passage);
            }
        }
        Ok(passages)
    }
}

impl Retriever {
    /// Stores a phrase encoder checkpoint with the database (idempotent) and returns its id,
    /// the checkpoint's SHA-256.
    pub fn store_phrase_encoder(&self, encoder: &PhraseEncoder) -> Result<String> {
        let bytes = encoder.to_checkpoint_bytes()?;
        let id = crate::checkpoint::checkpoint_fingerprint(&bytes);
        let name = format!("{PHRASE_ENCODER_BLOB_PREFIX}{id}");
        if !self.db().has_blob(&name)? {
            self.db().put_blob(&name, &bytes)?;
        }
        Ok(id)
    }

    /// Loads a stored phrase encoder checkpoint on the retriever's device, keeping tokens
    /// whose filter probability reaches `threshold` (cached).
    pub fn phrase_encoder(
        &self,
        checkpoint_id: &str,
        threshold: f64,
    ) -> Result<Arc<PhraseEncoder>> {
        let key = format!("{checkpoint_id}@{threshold}");
        if let Some(encoder) = self.inner.phrase_encoders.lock().get(&key) {
            return Ok(encoder.clone());
        }
        let encoder = Arc::new(self.load_phrase_encoder(
            checkpoint_id,
            PhraseEncoderConfig {
                max_len: 0,
                filter_threshold: threshold,
                device: self.inner.options.encoder.device,
                ..PhraseEncoderConfig::default()
            },
        )?);
        self.inner
            .phrase_encoders
            .lock()
            .insert(key, encoder.clone());
        Ok(encoder)
    }

    /// Loads the stored phrase encoder checkpoint `checkpoint_id` (blob
    /// `phrase-encoder/<id>`) with runtime settings `cfg`, uncached: an encoder of its own,
    /// to train or to build with other settings.
    pub fn load_phrase_encoder(
        &self,
        checkpoint_id: &str,
        cfg: PhraseEncoderConfig,
    ) -> Result<PhraseEncoder> {
        let bytes = self
            .db()
            .get_blob(&format!("{PHRASE_ENCODER_BLOB_PREFIX}{checkpoint_id}"))?;
        PhraseEncoder::from_checkpoint_bytes(&bytes, cfg)
    }

    /// Encodes every passage with `encoder` into a new phrase generation and publishes it,
    /// retiring the previous current one. Streams passages from a snapshot in batches, then
    /// catches up on passages ingested meanwhile until the coverage check lets it commit.
    /// The encoder checkpoint is stored with the database.
    pub fn build_phrase_generation(
        &self,
        encoder: &PhraseEncoder,
        mut options: PhraseBuildOptions<'_>,
    ) -> Result<GenerationId> {
        let checkpoint = self.store_phrase_encoder(encoder)?;
        let mut spec = PhraseGenerationSpec::new(checkpoint, encoder.dim() as u32, options.dtype);
        spec.filter_threshold = encoder.config().filter_threshold;
        spec.max_len = encoder.config().max_len as u32;
        spec.note.clone_from(&options.note);
        let mut writer = self.db().begin_phrase_generation(spec)?;
        let snapshot = self.db().snapshot()?;
        let total = snapshot.passage_count()?;
        let batch = options.batch.max(1);
        let mut done = 0u64;
        let mut chunk = Vec::with_capacity(batch);
        let mut report = |done: u64| {
            if let Some(progress) = options.progress.as_mut() {
                progress(Progress {
                    done,
                    total: total.max(done),
                });
            }
        };
        for passage in snapshot.passages() {
            chunk.push(passage?);
            if chunk.len() == batch {
                write_phrases(&mut writer, encoder, &chunk)?;
                done += chunk.len() as u64;
                chunk.clear();
                report(done);
            }
        }
        if !chunk.is_empty() {
            write_phrases(&mut writer, encoder, &chunk)?;
            done += chunk.len() as u64;
            report(done);
        }
        drop(snapshot);
        loop {
            let missing = writer.missing()?;
            if !missing.is_empty() {
                let snapshot = self.db().snapshot()?;
                let mut visible = Vec::with_capacity(missing.len());
                for id in missing {
                    visible.extend(snapshot.get(id)?);
                }
                for part in visible.chunks(batch) {
                    write_phrases(&mut writer, encoder, part)?;
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

    /// Writes the phrase rows of passages that are pending in the current phrase generation
    /// (ingested after it was built) with its own phrase encoder, retrying if a publish
    /// intervenes. Returns how many passages got rows; 0 when there is no phrase generation.
    pub fn embed_pending_phrases(&self) -> Result<usize> {
        for _ in 0..3 {
            match self.embed_pending_phrases_once() {
                Err(Error::Storage(
                    realm_storage::Error::NotWritable { .. }
                    | realm_storage::Error::UnknownGeneration(_)
                    | realm_storage::Error::DuplicatePhraseRows { .. },
                )) => continue,
                other => return other,
            }
        }
        Err(Error::Busy {
            reason: "the current phrase generation changed three times while pending passages were encoded"
                .into(),
        })
    }

    fn embed_pending_phrases_once(&self) -> Result<usize> {
        let Some(snapshot) = self.current_phrase_snapshot()? else {
            return Ok(0);
        };
        let pending = snapshot.pending()?;
        Ok(self.write_rows_of(&snapshot, &pending)?.0)
    }

    /// Writes the phrase rows of just-stored passages `ids` into the current phrase
    /// generation, if there is one (ingestion's second write; until it lands they are
    /// pending there). When a publish intervenes, every pending passage is encoded instead.
    pub(crate) fn encode_phrases_of(&self, ids: &[PassageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some(snapshot) = self.current_phrase_snapshot()? else {
            return Ok(());
        };
        match self.write_rows_of(&snapshot, ids) {
            Ok((_, false)) => Ok(()),
            // A part skipped (a passage deleted meanwhile), rows given meanwhile, or the
            // generation retired: encode whatever is pending now, in whatever phrase
            // generation is current.
            Ok((_, true))
            | Err(Error::Storage(
                realm_storage::Error::DuplicatePhraseRows { .. }
                | realm_storage::Error::NotWritable { .. }
                | realm_storage::Error::UnknownGeneration(_),
            )) => self.embed_pending_phrases().map(drop),
            Err(e) => Err(e),
        }
    }

    /// The current phrase generation, pinned; `None` when none was published.
    fn current_phrase_snapshot(&self) -> Result<Option<PhraseSnapshot>> {
        match self.db().phrase_snapshot() {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(realm_storage::Error::NoPhraseGeneration) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Encodes the passages among `ids` that `snapshot` sees without rows, with its
    /// generation's phrase encoder, and writes their rows into that generation part by part.
    /// A part with a passage deleted since the snapshot is rejected whole by the store and
    /// skipped (its other passages stay pending). Returns how many passages got rows and
    /// whether a part was skipped.
    fn write_rows_of(&self, snapshot: &PhraseSnapshot, ids: &[PassageId]) -> Result<(usize, bool)> {
        let mut passages = Vec::with_capacity(ids.len());
        for &id in ids {
            if snapshot.rows(id)?.is_none() {
                passages.extend(snapshot.passage(id)?);
            }
        }
        if passages.is_empty() {
            return Ok((0, false));
        }
        let spec = &snapshot.manifest().spec;
        let encoder = self.phrase_encoder(&spec.encoder_checkpoint_id, spec.filter_threshold)?;
        let (mut written, mut skipped) = (0, false);
        for part in passages.chunks(self.inner.options.build_batch.max(1)) {
            let rows = encode_rows(&encoder, part)?;
            match self.db().put_phrase_rows(snapshot.generation(), &rows) {
                Err(realm_storage::Error::UnknownPassage(_)) => skipped = true,
                other => {
                    other?;
                    written += rows.len();
                }
            }
        }
        Ok((written, skipped))
    }

    /// Pins the current phrase generation and loads it for search.
    pub fn phrase_searcher(&self) -> Result<PhraseSearcher> {
        self.searcher_of(self.db().phrase_snapshot()?)
    }

    /// Pins phrase generation `generation` (current or retired: time travel) and loads it.
    pub fn phrase_searcher_at(&self, generation: GenerationId) -> Result<PhraseSearcher> {
        self.searcher_of(self.db().phrase_snapshot_at(generation)?)
    }

    fn searcher_of(&self, snapshot: PhraseSnapshot) -> Result<PhraseSearcher> {
        let spec = &snapshot.manifest().spec;
        let encoder = self.phrase_encoder(&spec.encoder_checkpoint_id, spec.filter_threshold)?;
        let query_encoder = match snapshot.manifest().query_encoder() {
            Some(version) => self.phrase_encoder(&version.checkpoint_id, spec.filter_threshold)?,
            None => encoder.clone(),
        };
        let index = PhraseIndex::build(
            spec.dim as usize,
            snapshot.all_rows()?,
            self.inner.options.encoder.device,
        )?;
        Ok(PhraseSearcher {
            snapshot,
            index,
            encoder,
            query_encoder,
        })
    }
}

/// Encodes and writes the phrase rows of passages into a building phrase generation. A
/// passage deleted meanwhile makes the store reject the part atomically; the part is then
/// skipped, and the catch-up loop writes whatever of it still exists.
fn write_phrases(
    writer: &mut PhraseGenerationWriter,
    encoder: &PhraseEncoder,
    passages: &[Passage],
) -> Result<()> {
    if passages.is_empty() {
        return Ok(());
    }
    match writer.write(&encode_rows(encoder, passages)?) {
        Ok(()) | Err(realm_storage::Error::UnknownPassage(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The phrase rows of passages, paired with their ids.
fn encode_rows(
    encoder: &PhraseEncoder,
    passages: &[Passage],
) -> Result<Vec<(PassageId, PhraseRows)>> {
    let docs: Vec<(&str, &str)> = passages
        .iter()
        .map(|p| (p.title.as_str(), p.text.as_str()))
        .collect();
    let rows = encoder.encode_passages(&docs)?;
    Ok(passages.iter().map(|p| p.id).zip(rows).collect())
}
