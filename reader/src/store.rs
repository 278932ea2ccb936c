//! Readers stored in the database: checkpoints under `reader/<sha256>` and the current
//! reader named by `reader/current` (see docs/format.md, "Readers"). The trainer stores
//! the readers it trains here; `realm-db ask` and `eval --em` load the current one.

use realm_retriever::Retriever;

use crate::error::{Error, Result};
use crate::reader::{Reader, ReaderConfig};

/// The prefix of reader blobs: `reader/<id>` holds a checkpoint
/// ([`Reader::to_checkpoint_bytes`]) whose id is its SHA-256 fingerprint.
pub const READER_BLOB_PREFIX: &str = "reader/";

/// The blob naming the current reader's id (UTF-8 text).
pub const CURRENT_READER_BLOB: &str = "reader/current";

fn reader_blob(id: &str) -> String {
    format!("{READER_BLOB_PREFIX}{id}")
}

/// Stores `reader` as `reader/<fingerprint>` (a no-op when it is already stored) and returns
/// its id.
pub fn store_reader(retriever: &Retriever, reader: &Reader) -> Result<String> {
    let id = reader.fingerprint()?;
    let db = retriever.db();
    let blob = reader_blob(&id);
    if !db.has_blob(&blob)? {
        db.put_blob(&blob, &reader.to_checkpoint_bytes()?)?;
    }
    Ok(id)
}

/// Loads the stored reader `id` with the runtime settings `cfg`.
pub fn load_reader(retriever: &Retriever, id: &str, cfg: ReaderConfig) -> Result<Reader> {
    let db = retriever.db();
    let blob = reader_blob(id);
    if id.is_empty() || id == "current" || !db.has_blob(&blob)? {
        return Err(Error::UnknownReader { id: id.to_owned() });
    }
    Reader::from_checkpoint_bytes(&db.get_blob(&blob)?, cfg)
}

/// Makes the stored reader `id` the database's current reader.
pub fn set_current_reader(retriever: &Retriever, id: &str) -> Result<()> {
    let db = retriever.db();
    if id.is_empty() || id == "current" || !db.has_blob(&reader_blob(id))? {
        return Err(Error::UnknownReader { id: id.to_owned() });
    }
    Ok(db.put_blob(CURRENT_READER_BLOB, id.as_bytes())?)
}

/// The current reader's id and the reader, loaded with the runtime settings `cfg`; `None`
/// when no reader was made current.
pub fn current_reader(
    retriever: &Retriever,
    cfg: ReaderConfig,
) -> Result<Option<(String, Reader)>> {
    let db = retriever.db();
    if !db.has_blob(CURRENT_READER_BLOB)? {
        return Ok(None);
    }
    let bytes = db.get_blob(CURRENT_READER_BLOB)?;
    let id = std::str::from_utf8(&bytes)
        .map_err(|_| Error::CorruptCurrentReader {
            reason: "it is not UTF-8 text".to_owned(),
        })?
        .trim()
        .to_owned();
    let reader = load_reader(retriever, &id, cfg).map_err(|e| match e {
        Error::UnknownReader { id } => Error::CorruptCurrentReader {
            reason: format!("it names the reader {id:?}, which is not stored"),
        },
        other => other,
    })?;
    Ok(Some((id, reader)))
}
