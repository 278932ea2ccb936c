//! Byte encodings of keys and values. Every value carries a CRC-32 trailer so that a
//! flipped byte is reported as [`Error::Corrupt`] instead of being trusted.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::{Dtype, GenerationId, PassageId};

/// Appends the CRC-32 of `payload` (little endian).
pub(crate) fn seal(mut payload: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// Checks and strips the CRC-32 trailer.
pub(crate) fn unseal<'a>(bytes: &'a [u8], what: &dyn Fn() -> String) -> Result<&'a [u8]> {
    if bytes.len() < 4 {
        return Err(Error::Corrupt { what: what() });
    }
    let (payload, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4-byte trailer"));
    if crc32fast::hash(payload) != stored {
        return Err(Error::Corrupt { what: what() });
    }
    Ok(payload)
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// A serde value as sealed bincode.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())
        .expect("bincode encodes realm-db's plain record types");
    seal(payload)
}

/// Decodes what [`encode`] wrote; `what` names the record in the error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &dyn Fn() -> String) -> Result<T> {
    let payload = unseal(bytes, what)?;
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|_| Error::Corrupt { what: what() })?;
    if used != payload.len() {
        return Err(Error::Corrupt { what: what() });
    }
    Ok(value)
}

pub(crate) fn u64_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

pub(crate) fn decode_u64(bytes: &[u8], what: &dyn Fn() -> String) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt { what: what() })?;
    Ok(u64::from_be_bytes(arr))
}

/// The second half of a [`pair_key`].
pub(crate) fn pair_second(key: &[u8], what: &dyn Fn() -> String) -> Result<u64> {
    if key.len() != 16 {
        return Err(Error::Corrupt { what: what() });
    }
    decode_u64(&key[8..], what)
}

const BLOCK_FORMAT: u8 = 1;
const BLOCK_HEADER: usize = 1 + 1 + 4 + 4;

/// Encodes one block of vectors. `values` holds `ids.len() * dim` floats, row-major.
pub(crate) fn encode_block(dtype: Dtype, dim: usize, ids: &[PassageId], values: &[f32]) -> Vec<u8> {
    debug_assert_eq!(ids.len() * dim, values.len());
    let mut out = Vec::with_capacity(BLOCK_HEADER + ids.len() * (8 + dim * dtype.bytes()) + 4);
    out.push(BLOCK_FORMAT);
    out.push(dtype.tag());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    match dtype {
        Dtype::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F16 => {
            for v in values {
                out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
    }
    seal(out)
}

/// A decoded vector block: ids plus their rows appended to `values` as f32.
pub(crate) struct BlockRows {
    pub(crate) ids: Vec<PassageId>,
}

/// Decodes a block, appending its rows (as f32) to `values`.
pub(crate) fn decode_block(
    bytes: &[u8],
    dim: usize,
    generation: GenerationId,
    block: u64,
    values: &mut Vec<f32>,
) -> Result<BlockRows> {
    let what = || format!("vector block {block} of generation {generation}");
    let payload = unseal(bytes, &what)?;
    if payload.len() < BLOCK_HEADER || payload[0] != BLOCK_FORMAT {
        return Err(Error::Corrupt { what: what() });
    }
    let dtype = Dtype::from_tag(payload[1]).ok_or_else(|| Error::Corrupt { what: what() })?;
    let stored_dim = u32::from_le_bytes(payload[2..6].try_into().expect("4 bytes")) as usize;
    let rows = u32::from_le_bytes(payload[6..10].try_into().expect("4 bytes")) as usize;
    let expected = BLOCK_HEADER + rows * 8 + rows * dim * dtype.bytes();
    if stored_dim != dim || payload.len() != expected {
        return Err(Error::Corrupt { what: what() });
    }
    let mut ids = Vec::with_capacity(rows);
    let id_bytes = &payload[BLOCK_HEADER..BLOCK_HEADER + rows * 8];
    for chunk in id_bytes.chunks_exact(8) {
        ids.push(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
    let data = &payload[BLOCK_HEADER + rows * 8..];
    values.reserve(rows * dim);
    match dtype {
        Dtype::F32 => values.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        ),
        Dtype::F16 => values.extend(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().expect("2 bytes")).to_f32()),
        ),
    }
    Ok(BlockRows { ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_and_detects_a_flipped_byte() {
        let ids = [3u64, 9];
        let values = [1.0f32, -2.0, 0.5, 4.0];
        let mut bytes = encode_block(Dtype::F32, 2, &ids, &values);
        let mut out = Vec::new();
        let rows = decode_block(&bytes, 2, 1, 0, &mut out).unwrap();
        assert_eq!(rows.ids, ids);
        assert_eq!(out, values);
        bytes[12] ^= 0x40;
        let err = decode_block(&bytes, 2, 1, 0, &mut Vec::new())
            .err()
            .unwrap();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn f16_blocks_round_trip_within_half_precision() {
        let values = [0.1f32, -0.25, 3.0, 1e-3];
        let bytes = encode_block(Dtype::F16, 4, &[1], &values);
        let mut out = Vec::new();
        decode_block(&bytes, 4, 1, 0, &mut out).unwrap();
        for (a, b) in values.iter().zip(&out) {
            assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-4, "{a} vs {b}");
        }
    }
}
