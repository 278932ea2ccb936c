//! Named blobs (encoder checkpoints, trainer state), stored in checksummed chunks.

use serde::{Deserialize, Serialize};

use super::Db;
use crate::codec::{self, decode, encode};
use crate::error::{Error, Result};
use crate::rocks::{Cf, Reader};

const BLOB_CHUNK: usize = 1 << 20;
const BLOB_HEADER_CHUNK: u32 = u32::MAX;

#[derive(Serialize, Deserialize)]
struct BlobHeader {
    len: u64,
    chunks: u32,
    crc: u32,
}

impl Db {
    /// Stores a named blob (an encoder checkpoint, trainer state), replacing any old value.
    pub fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
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
}

fn blob_prefix(name: &str) -> Vec<u8> {
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn blob_key(prefix: &[u8], chunk: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}
