//! The writer's upkeep of the lexical (BM25) index: the upgrade from format version 1, the
//! repair of a missing or foreign index on open, and full rebuilds.

#[cfg(feature = "testing")]
use std::path::Path;

#[cfg(feature = "testing")]
use super::FORMAT_VERSION_1;
use super::{Db, META_FORMAT, decode_passage, read_meta_u64};
use crate::FORMAT_VERSION;
use crate::codec::{self, u64_key};
use crate::error::Result;
use crate::lexical::{self, DocTerms};
use crate::rocks::{Cf, Reader, SnapshotReader};
#[cfg(feature = "testing")]
use crate::rocks::{OpenMode, Rocks};

/// Passages whose postings a rebuild stages in one write batch.
const REBUILD_BATCH_PASSAGES: usize = 2048;

impl Db {
    /// On a writer's open: upgrades a version-1 database (which has no lexical index) and
    /// repairs an index that is missing (an interrupted rebuild) or was built by another
    /// analyzer. A current database costs two point reads.
    pub(super) fn ensure_lexical_index(&self) -> Result<()> {
        let rocks = self.rocks();
        let format = read_meta_u64(&*rocks, META_FORMAT)?;
        let current = format == Some(u64::from(FORMAT_VERSION))
            && lexical::unavailable_reason(&*rocks)?.is_none();
        if !current {
            let _guard = self.inner.write_lock.lock();
            self.rebuild_lexical_locked()?;
        }
        Ok(())
    }

    /// Rebuilds the lexical (BM25) index from every stored passage and returns how many were
    /// indexed. Inserts and deletes wait until it finishes. It writes in bounded batches:
    /// snapshots taken before it keep their index, and lexical search through snapshots taken
    /// while it runs fails with
    /// [`Error::LexicalIndexUnavailable`](crate::Error::LexicalIndexUnavailable). A rebuild
    /// cut short (a crash) is redone by the next writer's open.
    pub fn rebuild_lexical_index(&self) -> Result<u64> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        self.rebuild_lexical_locked()
    }

    /// Test hook, not part of the API: makes the closed database at `path` look as if it had
    /// been written by format version 1 (no lexical index and no `lexical_postings` column
    /// family), so that tests can exercise the upgrade on open.
    #[doc(hidden)]
    #[cfg(feature = "testing")]
    pub fn testing_downgrade_to_format_1(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        {
            let rocks = Rocks::open(path, OpenMode::Writer { create: false })?;
            let mut wb = rocks.batch();
            wb.delete(Cf::Meta, lexical::META_ANALYZER);
            wb.delete(Cf::Meta, lexical::META_DOCS);
            wb.delete(Cf::Meta, lexical::META_TOKENS);
            wb.put(Cf::Meta, META_FORMAT, &u64_key(u64::from(FORMAT_VERSION_1)));
            rocks.write(wb, true)?;
        }
        crate::rocks::drop_column_families(path, &[Cf::LexicalPostings])
    }

    /// Test hook, not part of the API: records `version` as the analyzer that built the
    /// lexical index, or with `None` removes the record, as an older build or an interrupted
    /// rebuild would leave it.
    #[doc(hidden)]
    #[cfg(feature = "testing")]
    pub fn testing_set_lexical_analyzer(&self, version: Option<&str>) -> Result<()> {
        self.check_writable()?;
        let _guard = self.inner.write_lock.lock();
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        match version {
            Some(v) => wb.put(Cf::Meta, lexical::META_ANALYZER, v.as_bytes()),
            None => wb.delete(Cf::Meta, lexical::META_ANALYZER),
        }
        rocks.write(wb, true)
    }

    /// The rebuild; the caller holds the write lock. The first batch removes the analyzer
    /// record and every posting, so until the last batch (which writes the totals, the
    /// analyzer record and the current format version, fsynced) the index reads as missing.
    fn rebuild_lexical_locked(&self) -> Result<u64> {
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        wb.delete(Cf::Meta, lexical::META_ANALYZER);
        wb.delete(Cf::Meta, lexical::META_DOCS);
        wb.delete(Cf::Meta, lexical::META_TOKENS);
        // Every posting key starts with a UTF-8 term, whose bytes are never 0xFF.
        wb.delete_prefix(Cf::LexicalPostings, &[]);
        rocks.write(wb, false)?;
        // Nothing writes passages while the write lock is held; the snapshot only makes the
        // scan independent of the postings written meanwhile.
        let view = SnapshotReader::take(rocks.clone());
        let mut docs = 0u64;
        let mut tokens = 0u64;
        let mut wb = rocks.batch();
        let mut staged = 0usize;
        for entry in view.scan(Cf::Passages, &[], &[]) {
            let (key, value) = entry?;
            let id = codec::decode_u64(&key, &|| "a passage key".into())?;
            let passage = decode_passage(id, &value)?;
            let terms = DocTerms::of(&passage.title, &passage.text);
            terms.stage_insert(&mut wb, id);
            docs += 1;
            tokens += u64::from(terms.len);
            staged += 1;
            if staged == REBUILD_BATCH_PASSAGES {
                rocks.write(std::mem::replace(&mut wb, rocks.batch()), false)?;
                staged = 0;
            }
        }
        wb.put(Cf::Meta, lexical::META_DOCS, &u64_key(docs));
        wb.put(Cf::Meta, lexical::META_TOKENS, &u64_key(tokens));
        wb.put(
            Cf::Meta,
            lexical::META_ANALYZER,
            lexical::ANALYZER_VERSION.as_bytes(),
        );
        wb.put(Cf::Meta, META_FORMAT, &u64_key(u64::from(FORMAT_VERSION)));
        rocks.write(wb, true)?;
        Ok(docs)
    }
}
