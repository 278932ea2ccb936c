//! Named blobs (encoder checkpoints, trainer state), stored in checksummed chunks: writing,
//! reading, listing and deleting them.

use serde::{Deserialize, Serialize};

use super::Db;
use crate::codec::{self, decode, encode};
use crate::error::{Error, Result};
use crate::rocks::{Cf, Reader, prefix_successor};

const BLOB_CHUNK: usize = 1 << 20;
const BLOB_HEADER_CHUNK: u32 = u32::MAX;

/// The bytes of a blob's key after its name: the `0x00` separator and the chunk number.
const KEY_SUFFIX: usize = 5;

#[derive(Serialize, Deserialize)]
struct BlobHeader {
    len: u64,
    chunks: u32,
    crc: u32,
}

/// A stored blob, as listed by [`Db::blobs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub name: String,
    /// The blob's length in bytes.
    pub bytes: u64,
}

impl Db {
    /// Stores a named blob (an encoder checkpoint, trainer state), replacing any old value.
    /// A name may hold any UTF-8 text but the NUL character, which separates a blob's name
    /// from its chunk numbers in keys.
    pub fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        if name.contains('\0') {
            return Err(Error::InvalidBlobName {
                name: name.to_owned(),
            });
        }
        let prefix = blob_prefix(name);
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        wb.delete_prefix(Cf::Blobs, &prefix);
        let chunks = bytes.chunks(BLOB_CHUNK);
        let header = BlobHeader {
            len: bytes.len() as u64,
            chunks: chunks.len() as u32,
            crc: crc32fast::hash(bytes),
        };
        for (i, chunk) in chunks.enumerate() {
            wb.put(
                Cf::Blobs,
                &blob_key(&prefix, i as u32),
                &codec::seal(chunk.to_vec()),
            );
        }
        wb.put(
            Cf::Blobs,
            &blob_key(&prefix, BLOB_HEADER_CHUNK),
            &encode(&header),
        );
        rocks.write(wb, true)
    }

    /// Reads a named blob.
    pub fn get_blob(&self, name: &str) -> Result<Vec<u8>> {
        let rocks = self.rocks();
        let prefix = blob_prefix(name);
        let what = || format!("blob {name:?}");
        let header: BlobHeader =
            match rocks.get(Cf::Blobs, &blob_key(&prefix, BLOB_HEADER_CHUNK))? {
                Some(bytes) => decode(&bytes, &what)?,
                None => {
                    return Err(Error::UnknownBlob {
                        name: name.to_string(),
                    });
                }
            };
        let mut out = Vec::with_capacity(header.len as usize);
        for i in 0..header.chunks {
            let bytes = rocks
                .get(Cf::Blobs, &blob_key(&prefix, i))?
                .ok_or_else(|| Error::Corrupt { what: what() })?;
            out.extend_from_slice(codec::unseal(&bytes, &what)?);
        }
        if out.len() as u64 != header.len || crc32fast::hash(&out) != header.crc {
            return Err(Error::Corrupt { what: what() });
        }
        Ok(out)
    }

    /// Whether a named blob exists.
    pub fn has_blob(&self, name: &str) -> Result<bool> {
        let key = blob_key(&blob_prefix(name), BLOB_HEADER_CHUNK);
        Ok(self.rocks().get(Cf::Blobs, &key)?.is_some())
    }

    /// Every stored blob with its length, by name, read from the blobs' headers alone.
    ///
    /// A blob's header key (`name ++ 0x00 ++ 0xFFFFFFFF`) is the last of its keys, and a name
    /// holds no NUL, so no other blob's key falls between a blob's first and last key. The
    /// listing therefore walks the column family backwards: from a header, the next entry
    /// read is the greatest key below `name ++ 0x00`, the previous blob's header, and the
    /// chunks in between (1 MiB each) are never read. A forward walk would have to read each
    /// blob's first chunk to learn its name. A last key that is not a header (chunks
    /// without one, which no write leaves) is reported as corruption rather than skipped.
    pub fn blobs(&self) -> Result<Vec<BlobInfo>> {
        let headers = self
            .rocks()
            .scan_back_skipping(Cf::Blobs, |key| match header_name(key) {
                Some(name) => blob_prefix_bytes(name),
                // Not a header: the walk stops on it below, so any lower key will do.
                None => Vec::new(),
            })?;
        let mut out = Vec::with_capacity(headers.len());
        for (key, value) in headers.into_iter().rev() {
            let name = header_name(&key)
                .and_then(|name| std::str::from_utf8(name).ok())
                .ok_or_else(|| Error::Corrupt {
                    what: format!(
                        "the blob key {:?}, the last of its blob, which is not a header",
                        String::from_utf8_lossy(&key)
                    ),
                })?;
            let header: BlobHeader = decode(&value, &|| format!("the header of blob {name:?}"))?;
            out.push(BlobInfo {
                name: name.to_owned(),
                bytes: header.len,
            });
        }
        Ok(out)
    }

    /// Deletes the named blobs (names that are not stored are ignored) in one synced write,
    /// then compacts their key ranges so that their disk space is reclaimed.
    pub fn delete_blobs(&self, names: &[String]) -> Result<()> {
        self.check_writable()?;
        // A name holding NUL is never stored, and its prefix could match another blob's keys.
        let prefixes: Vec<Vec<u8>> = names
            .iter()
            .filter(|name| !name.contains('\0'))
            .map(|name| blob_prefix(name))
            .collect();
        if prefixes.is_empty() {
            return Ok(());
        }
        let rocks = self.rocks();
        let mut wb = rocks.batch();
        for prefix in &prefixes {
            wb.delete_prefix(Cf::Blobs, prefix);
        }
        rocks.write(wb, true)?;
        for prefix in &prefixes {
            // A prefix ends with 0x00, so it always has a successor.
            let end = prefix_successor(prefix).unwrap_or_default();
            rocks.compact(Cf::Blobs, prefix, &end);
        }
        rocks.purge_obsolete_files()
    }
}

/// The name in a header key (`name ++ 0x00 ++ 0xFFFFFFFF`); `None` for any other key.
fn header_name(key: &[u8]) -> Option<&[u8]> {
    let (name, suffix) = key.split_at_checked(key.len().checked_sub(KEY_SUFFIX)?)?;
    let mut header = [0u8; KEY_SUFFIX];
    header[1..].copy_from_slice(&BLOB_HEADER_CHUNK.to_be_bytes());
    (suffix == header).then_some(name)
}

fn blob_prefix_bytes(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(0);
    prefix
}

fn blob_prefix(name: &str) -> Vec<u8> {
    blob_prefix_bytes(name.as_bytes())
}

fn blob_key(prefix: &[u8], chunk: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}
