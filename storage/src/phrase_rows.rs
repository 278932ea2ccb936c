//! Phrase rows: the stored tokens of one passage (those where a phrase may start or end),
//! their start and end vectors, and where each lies in the passage text. A phrase
//! generation stores one [`PhraseRows`] per passage.

use serde::{Deserialize, Serialize};

use crate::Dtype;
use crate::codec::{seal, unseal};
use crate::error::{Error, Result};

/// The layout version of a stored row record (see `docs/format.md`, "Phrase generations").
const RECORD_FORMAT: u8 = 1;
/// Format, dtype, dim, token count.
const RECORD_HEADER: usize = 1 + 1 + 4 + 4;
/// Position, word, start byte, end byte (u32 each), then the flags byte.
const TOKEN_BYTES: usize = 4 * 4 + 1;
const FLAG_STARTS: u8 = 1;
const FLAG_ENDS: u8 = 2;

/// One stored token of a passage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PhraseToken {
    /// The token's position among the passage text's tokens (0 is the text's first token;
    /// the title and special tokens are not counted).
    pub position: u32,
    /// The index of the word the token belongs to, counted in the passage text.
    pub word: u32,
    /// Byte offset of the token's first character in the passage text.
    pub start_byte: u32,
    /// Byte offset one past the token's last character in the passage text.
    pub end_byte: u32,
    /// A phrase may start here: the token begins a word and passed the start filter.
    pub starts: bool,
    /// A phrase may end here: the token ends a word and passed the end filter.
    pub ends: bool,
}

/// The phrase rows of one passage: its stored tokens in text order, each with a start
/// vector and an end vector of `dim` values. A phrase is a pair of stored tokens (i, j)
/// of one passage with `i.starts`, `j.ends`, `i.position ≤ j.position` and fewer than
/// `max_words` words from i's word to j's; its text is the passage text from `i.start_byte`
/// to `j.end_byte`, and its score for a query (q_start, q_end) is q_start·s_i + q_end·e_j.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseRows {
    dim: usize,
    tokens: Vec<PhraseToken>,
    start: Vec<f32>,
    end: Vec<f32>,
}

fn invalid(reason: String) -> Error {
    Error::InvalidPhraseRows { reason }
}

impl PhraseRows {
    /// Rows from their parts, validated: `dim ≥ 1`; `start` and `end` hold
    /// `tokens.len() × dim` finite values, row-major; positions strictly increase and words
    /// never decrease along the tokens; every token covers at least one byte, may start or
    /// end a phrase (else it would not be stored), and starts no earlier than the previous
    /// one.
    pub fn new(
        dim: usize,
        tokens: Vec<PhraseToken>,
        start: Vec<f32>,
        end: Vec<f32>,
    ) -> Result<PhraseRows> {
        if dim == 0 {
            return Err(invalid("phrase vectors need at least one dimension".into()));
        }
        let values = tokens.len().checked_mul(dim).ok_or_else(|| {
            invalid(format!(
                "{} tokens of dimension {dim} overflow the address space",
                tokens.len()
            ))
        })?;
        for (side, vectors) in [("start", &start), ("end", &end)] {
            if vectors.len() != values {
                return Err(invalid(format!(
                    "{} tokens of dimension {dim} need {values} {side} values, not {}",
                    tokens.len(),
                    vectors.len()
                )));
            }
            if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "the {side} vector of stored token {} holds a value that is not finite",
                    i / dim
                )));
            }
        }
        for (i, t) in tokens.iter().enumerate() {
            if t.start_byte >= t.end_byte {
                return Err(invalid(format!(
                    "stored token {i} covers no bytes ({}..{})",
                    t.start_byte, t.end_byte
                )));
            }
            if !(t.starts || t.ends) {
                return Err(invalid(format!(
                    "stored token {i} can neither start nor end a phrase"
                )));
            }
            if i > 0 {
                let p = tokens[i - 1];
                if t.position <= p.position || t.word < p.word || t.start_byte < p.start_byte {
                    return Err(invalid(format!(
                        "stored token {i} does not follow token {} in the text",
                        i - 1
                    )));
                }
            }
        }
        Ok(PhraseRows {
            dim,
            tokens,
            start,
            end,
        })
    }

    /// The rows of a passage without stored tokens (an empty text, or every token filtered).
    pub fn empty(dim: usize) -> Result<PhraseRows> {
        PhraseRows::new(dim, Vec::new(), Vec::new(), Vec::new())
    }

    /// The dimension of each start and end vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// How many tokens are stored.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The stored tokens, in text order.
    pub fn tokens(&self) -> &[PhraseToken] {
        &self.tokens
    }

    /// The start vector of stored token `i`.
    pub fn start_vector(&self, i: usize) -> &[f32] {
        &self.start[i * self.dim..(i + 1) * self.dim]
    }

    /// The end vector of stored token `i`.
    pub fn end_vector(&self, i: usize) -> &[f32] {
        &self.end[i * self.dim..(i + 1) * self.dim]
    }

    /// All start vectors, row-major.
    pub fn start_values(&self) -> &[f32] {
        &self.start
    }

    /// All end vectors, row-major.
    pub fn end_values(&self) -> &[f32] {
        &self.end
    }

    /// Checks that every token lies inside `text` on character boundaries: rows must
    /// belong to the passage they are stored for.
    pub fn check_text(&self, text: &str) -> Result<()> {
        match self.tokens.iter().position(|t| {
            text.get(t.start_byte as usize..t.end_byte as usize)
                .is_none()
        }) {
            None => Ok(()),
            Some(i) => Err(invalid(format!(
                "stored token {i} ({}..{}) is not a character range of the passage text of {} bytes",
                self.tokens[i].start_byte,
                self.tokens[i].end_byte,
                text.len()
            ))),
        }
    }

    /// The phrases of these rows with fewer than `max_words` words: pairs of stored tokens
    /// (i, j), as indices into [`PhraseRows::tokens`].
    pub fn phrases(&self, max_words: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, a) in self.tokens.iter().enumerate() {
            if !a.starts {
                continue;
            }
            for (j, b) in self.tokens.iter().enumerate().skip(i) {
                if (b.word - a.word) as usize >= max_words {
                    break;
                }
                if b.ends {
                    out.push((i, j));
                }
            }
        }
        out
    }
}

impl PhraseRows {
    /// Checks that every value survives storage in `dtype`: in half precision a magnitude
    /// beyond 65504 would become an infinity.
    pub(crate) fn check_dtype(&self, dtype: Dtype) -> Result<()> {
        if dtype == Dtype::F32 {
            return Ok(());
        }
        for (side, values) in [("start", &self.start), ("end", &self.end)] {
            if let Some(i) = values
                .iter()
                .position(|v| !half::f16::from_f32(*v).is_finite())
            {
                return Err(invalid(format!(
                    "the {side} vector of stored token {} holds {}, beyond the range of half precision",
                    i / self.dim,
                    values[i]
                )));
            }
        }
        Ok(())
    }

    /// The stored record of these rows, their values in `dtype`, CRC-sealed. Callers check
    /// [`PhraseRows::check_dtype`] first.
    pub(crate) fn encode_record(&self, dtype: Dtype) -> Vec<u8> {
        let n = self.tokens.len();
        let values = 2 * n * self.dim;
        let mut out =
            Vec::with_capacity(RECORD_HEADER + n * TOKEN_BYTES + values * dtype.bytes() + 4);
        out.push(RECORD_FORMAT);
        out.push(dtype.tag());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for t in &self.tokens {
            for field in [t.position, t.word, t.start_byte, t.end_byte] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            let mut flags = 0;
            if t.starts {
                flags |= FLAG_STARTS;
            }
            if t.ends {
                flags |= FLAG_ENDS;
            }
            out.push(flags);
        }
        for v in self.start.iter().chain(&self.end) {
            match dtype {
                Dtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
                Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
            }
        }
        seal(out)
    }

    /// Decodes what [`PhraseRows::encode_record`] wrote, with the dtype it was stored in;
    /// `what` names the record in the error. A record whose rows break a rule of
    /// [`PhraseRows::new`] is corrupt.
    pub(crate) fn decode_record(
        bytes: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<(Dtype, PhraseRows)> {
        let corrupt = || Error::Corrupt { what: what() };
        let payload = unseal(bytes, what)?;
        if payload.len() < RECORD_HEADER || payload[0] != RECORD_FORMAT {
            return Err(corrupt());
        }
        let dtype = Dtype::from_tag(payload[1]).ok_or_else(corrupt)?;
        let u32_at =
            |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
        let dim = u32_at(2) as usize;
        let n = u32_at(6) as usize;
        let values = n
            .checked_mul(dim)
            .and_then(|v| v.checked_mul(2))
            .ok_or_else(corrupt)?;
        let expected = n
            .checked_mul(TOKEN_BYTES)
            .and_then(|t| values.checked_mul(dtype.bytes())?.checked_add(t))
            .and_then(|b| b.checked_add(RECORD_HEADER))
            .ok_or_else(corrupt)?;
        if payload.len() != expected {
            return Err(corrupt());
        }
        let mut tokens = Vec::with_capacity(n);
        let token_bytes = &payload[RECORD_HEADER..RECORD_HEADER + n * TOKEN_BYTES];
        for t in token_bytes.chunks_exact(TOKEN_BYTES) {
            let field =
                |i: usize| u32::from_le_bytes(t[4 * i..4 * i + 4].try_into().expect("4 bytes"));
            let flags = t[16];
            if flags & !(FLAG_STARTS | FLAG_ENDS) != 0 {
                return Err(corrupt());
            }
            tokens.push(PhraseToken {
                position: field(0),
                word: field(1),
                start_byte: field(2),
                end_byte: field(3),
                starts: flags & FLAG_STARTS != 0,
                ends: flags & FLAG_ENDS != 0,
            });
        }
        let data = &payload[RECORD_HEADER + n * TOKEN_BYTES..];
        let mut decoded: Vec<f32> = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().expect("2 bytes")).to_f32())
                .collect(),
        };
        let end = decoded.split_off(values / 2);
        let rows = PhraseRows::new(dim, tokens, decoded, end).map_err(|_| corrupt())?;
        Ok((dtype, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(position: u32, word: u32, bytes: (u32, u32), starts: bool, ends: bool) -> PhraseToken {
        PhraseToken {
            position,
            word,
            start_byte: bytes.0,
            end_byte: bytes.1,
            starts,
            ends,
        }
    }

    fn sample() -> PhraseRows {
        let tokens = vec![
            token(0, 0, (0, 5), true, false),
            token(1, 0, (5, 8), false, true),
            token(3, 2, (13, 17), true, true),
        ];
        let start = vec![0.5, -1.25, 3.0, 0.0, 1e-3, -7.5];
        let end = vec![2.0, 0.125, -0.3, 9.0, 4.0, -1.0];
        PhraseRows::new(2, tokens, start, end).unwrap()
    }

    #[test]
    fn records_round_trip_exactly_in_f32_and_within_rounding_in_f16() {
        let rows = sample();
        let what = || "a record".to_string();
        let (dtype, back) =
            PhraseRows::decode_record(&rows.encode_record(Dtype::F32), &what).unwrap();
        assert_eq!((dtype, &back), (Dtype::F32, &rows));
        let (dtype, half) =
            PhraseRows::decode_record(&rows.encode_record(Dtype::F16), &what).unwrap();
        assert_eq!(dtype, Dtype::F16);
        assert_eq!(half.tokens(), rows.tokens());
        for (a, b) in rows
            .start_values()
            .iter()
            .chain(rows.end_values())
            .zip(half.start_values().iter().chain(half.end_values()))
        {
            assert!((a - b).abs() <= a.abs() / 1024.0 + 1e-7, "{a} vs {b}");
        }
        let empty = PhraseRows::empty(3).unwrap();
        let (_, back) = PhraseRows::decode_record(&empty.encode_record(Dtype::F16), &what).unwrap();
        assert_eq!(back, empty);
    }

    #[test]
    fn damaged_or_inconsistent_records_are_corrupt() {
        let what = || "a record".to_string();
        let mut bytes = sample().encode_record(Dtype::F32);
        bytes[20] ^= 0x10;
        assert!(matches!(
            PhraseRows::decode_record(&bytes, &what),
            Err(Error::Corrupt { .. })
        ));
        // A record whose checksum holds but whose tokens break the rules of the rows.
        let mut payload = sample().encode_record(Dtype::F32);
        payload.truncate(payload.len() - 4);
        payload[RECORD_HEADER + 2 * TOKEN_BYTES..RECORD_HEADER + 2 * TOKEN_BYTES + 4]
            .copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            PhraseRows::decode_record(&seal(payload), &what),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            PhraseRows::decode_record(&seal(vec![RECORD_FORMAT, 7, 1, 0, 0, 0, 0, 0, 0, 0]), &what),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn values_beyond_half_precision_are_refused_for_f16() {
        let rows = PhraseRows::new(
            1,
            vec![token(0, 0, (0, 1), true, true)],
            vec![7e4],
            vec![0.0],
        )
        .unwrap();
        assert!(rows.check_dtype(Dtype::F32).is_ok());
        assert!(matches!(
            rows.check_dtype(Dtype::F16),
            Err(Error::InvalidPhraseRows { .. })
        ));
    }
}
