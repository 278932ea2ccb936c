//! Building generations and embedding passages as they arrive.
//!
//! [`Retriever::build_generation`] embeds every passage with an encoder into a new generation
//! and publishes it; [`Retriever::ingest`] stores passages and their vectors in the current
//! generation in one atomic write ([`Retriever::upsert`] also replaces changed passages);
//! [`Retriever::embed_pending`] embeds passages stored before their generation could embed
//! them.

use realm_storage::{
    Dtype, GenerationId, GenerationSpec, InsertOutcome, NewPassage, Provenance, Snapshot,
};

use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::ivf_build::IvfConfig;
use crate::matrix::tensor_rows;
use crate::retriever::Retriever;

/// Progress of a long operation, reported to a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Items finished so far.
    pub done: u64,
    /// Items in all, as far as known when reported.
    pub total: u64,
}

/// Options of [`Retriever::build_generation`].
pub struct BuildOptions<'a> {
    /// Where the generation comes from; its checkpoint id is set to the encoder's.
    pub provenance: Provenance,
    /// Element type the generation's vectors are stored in.
    pub dtype: Dtype,
    /// Called after every batch.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// A separate query tower published with the generation (stored with the database and
    /// recorded as its first query-encoder version); `None` queries with the document encoder.
    pub query_encoder: Option<&'a Encoder>,
    /// An approximate index built into the generation before it is published, so that its
    /// first snapshot already searches it.
    pub index: Option<IvfConfig>,
}

impl Default for BuildOptions<'_> {
    fn default() -> Self {
        BuildOptions {
            provenance: Provenance::default(),
            dtype: Dtype::F32,
            progress: None,
            query_encoder: None,
            index: None,
        }
    }
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("provenance", &self.provenance)
            .field("dtype", &self.dtype)
            .field("index", &self.index)
            .finish()
    }
}

impl Retriever {
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
        if let Some(config) = &options.index {
            // Rows written from here on get their entries as they are written.
            self.build_index(writer.id(), config, None)?;
        }
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
    /// passages are stored pending and the first build embeds them. When the database has a
    /// phrase generation, the new passages then get their phrase rows in it (a second
    /// write; until it lands they are pending there).
    pub fn ingest(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>> {
        self.ingest_as(batch, false)
    }

    /// [`Retriever::ingest`] by [`Db::upsert`](realm_storage::Db::upsert): a passage whose
    /// external id is stored with another title, text or metadata replaces it
    /// ([`InsertOutcome::Updated`], under a new passage id) and is embedded with the current
    /// document encoder in the same write; an unchanged one is a duplicate and is not
    /// embedded again.
    pub fn upsert(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>> {
        self.ingest_as(batch, true)
    }

    fn ingest_as(&self, batch: &[NewPassage], upsert: bool) -> Result<Vec<InsertOutcome>> {
        let outcomes = self.ingest_with_vectors(batch, upsert)?;
        let stored: Vec<u64> = outcomes
            .iter()
            .filter(|o| !matches!(o, InsertOutcome::Duplicate(_)))
            .map(|o| o.id())
            .collect();
        self.encode_phrases_of(&stored)?;
        Ok(outcomes)
    }

    /// Stores a batch with its rows in the current generation (see [`Retriever::ingest`]).
    fn ingest_with_vectors(
        &self,
        batch: &[NewPassage],
        upsert: bool,
    ) -> Result<Vec<InsertOutcome>> {
        for _ in 0..3 {
            let snapshot = self.db().snapshot()?;
            let Some(manifest) = snapshot.generation().cloned() else {
                return Ok(if upsert {
                    self.db().upsert(batch)?
                } else {
                    self.db().insert(batch)?
                });
            };
            let encoder = self.document_encoder(&manifest)?;
            let mut fresh = Vec::new();
            for (i, p) in batch.iter().enumerate() {
                let unchanged = match &p.external_id {
                    Some(ext) => snapshot
                        .get_by_external_id(ext)?
                        .is_some_and(|stored| !upsert || stored.has_content_of(p)),
                    None => false,
                };
                if !unchanged && !p.text.trim().is_empty() {
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
            let written = if upsert {
                self.db().upsert_with_vectors(batch, manifest.id, &rows)
            } else {
                self.db().insert_with_vectors(batch, manifest.id, &rows)
            };
            match written {
                Ok(outcomes) => {
                    // A passage that turned out new or changed without a row (its external id
                    // was deleted or updated meanwhile) is pending: embed it now, in whatever
                    // generation is current by then.
                    let late = outcomes
                        .iter()
                        .zip(&rows)
                        .any(|(o, r)| !matches!(o, InsertOutcome::Duplicate(_)) && r.is_none());
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
