//! Phrase snapshots: a pinned phrase generation plus a RocksDB snapshot of the passages and
//! their phrase rows.

use crate::codec::{self, pair_key, u64_key};
use crate::db::{Db, read_passage, read_phrase_current};
use crate::error::Result;
use crate::generation::uncovered;
use crate::phrase_rows::PhraseRows;
use crate::rocks::{Cf, Reader, SnapshotReader};
use crate::{GenerationId, Passage, PassageId, PhraseManifest};

/// A consistent, unchanging view of one phrase generation: its manifest, the passages and
/// their phrase rows as of the moment the snapshot was taken. Everything read through it
/// stays the same while it lives, whatever is inserted, deleted, published or collected
/// meanwhile. Dropping it releases the pin.
#[derive(Debug)]
pub struct PhraseSnapshot {
    db: Db,
    rs: SnapshotReader,
    manifest: PhraseManifest,
}

impl PhraseSnapshot {
    pub(crate) fn new(db: Db, rs: SnapshotReader, manifest: PhraseManifest) -> Self {
        PhraseSnapshot { db, rs, manifest }
    }

    /// The database this snapshot reads.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The pinned phrase generation's id.
    pub fn generation(&self) -> GenerationId {
        self.manifest.id
    }

    /// The pinned phrase generation's manifest as of the snapshot.
    pub fn manifest(&self) -> &PhraseManifest {
        &self.manifest
    }

    /// Whether another phrase generation has been published since this snapshot was taken
    /// (a follower catches up first).
    pub fn is_stale(&self) -> Result<bool> {
        self.db.catch_up()?;
        Ok(self.db.current_phrase_generation()? != Some(self.manifest.id))
    }

    /// Moves this snapshot forward to the current phrase generation and passage set.
    pub fn refresh(&mut self) -> Result<()> {
        *self = self.db.phrase_snapshot()?;
        Ok(())
    }

    /// One passage's phrase rows in the pinned generation; `None` when the passage is
    /// pending or not visible to the snapshot.
    pub fn rows(&self, passage: PassageId) -> Result<Option<PhraseRows>> {
        let g = self.manifest.id;
        match self.rs.get(Cf::PhraseRows, &pair_key(g, passage))? {
            None => Ok(None),
            Some(bytes) => {
                let what = || format!("the phrase rows of passage {passage} in generation {g}");
                PhraseRows::decode_record(&bytes, &what).map(|(_, rows)| Some(rows))
            }
        }
    }

    /// Every passage's phrase rows in the pinned generation, in passage-id order. Rows of
    /// passages deleted before the snapshot was taken are gone.
    pub fn all_rows(&self) -> Result<Vec<(PassageId, PhraseRows)>> {
        let g = self.manifest.id;
        self.rs
            .scan(Cf::PhraseRows, &u64_key(g), &[])
            .map(|entry| {
                let (key, value) = entry?;
                let id =
                    codec::pair_second(&key, &|| format!("a phrase-row key of generation {g}"))?;
                let what = || format!("the phrase rows of passage {id} in generation {g}");
                let (_, rows) = PhraseRows::decode_record(&value, &what)?;
                Ok((id, rows))
            })
            .collect()
    }

    /// Passages visible to the snapshot without rows in the pinned generation (ingested
    /// since it was committed and not yet encoded), in id order.
    pub fn pending(&self) -> Result<Vec<PassageId>> {
        uncovered(&self.rs, Cf::PhraseRows, self.manifest.id)
    }

    /// A passage as of the snapshot: the title and text its phrase rows point into.
    pub fn passage(&self, id: PassageId) -> Result<Option<Passage>> {
        read_passage(&self.rs, id)
    }

    /// The current phrase generation as of this snapshot (equal to the pinned one unless
    /// the snapshot was taken with [`Db::phrase_snapshot_at`]).
    pub fn current_generation_at_snapshot(&self) -> Result<Option<GenerationId>> {
        read_phrase_current(&self.rs)
    }
}

impl Drop for PhraseSnapshot {
    fn drop(&mut self) {
        self.db.unpin(self.manifest.id);
    }
}
