//! The lexical (BM25) index: the analyzer, the posting encoding, index maintenance inside
//! the passage write batches, rebuilds, and scoring through a snapshot.
//!
//! The analyzer reproduces the Python `bm25s` 0.3.16 tokenizer as called with
//! `stopwords="en"` and PyStemmer's `"english"` stemmer: lower-case, extract runs of two or
//! more word characters, drop 33 English stop words, stem with Snowball 3.0 English (Porter2,
//! see `porter2.rs`). Scoring is BM25 as Lucene computes it (`bm25s` `method="lucene"`).
//! The index lives in the
//! `lexical_postings` column family and three `meta` keys (see `docs/format.md`), and every
//! insert and delete updates it in the same write batch as the passage itself, so a snapshot
//! always scores exactly the passages it sees.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use crate::PassageId;
use crate::codec::{self, u64_key};
use crate::error::{Error, Result};
use crate::rocks::{Batch, Cf, Reader};

/// The analyzer's identity, stored under `meta/lexical_analyzer`. A writer that opens a
/// database whose index was built by another analyzer (or by none) rebuilds the index.
pub(crate) const ANALYZER_VERSION: &str = "bm25s-en-porter2/1";

pub(crate) const META_ANALYZER: &[u8] = b"lexical_analyzer";
pub(crate) const META_DOCS: &[u8] = b"lexical_doc_count";
pub(crate) const META_TOKENS: &[u8] = b"lexical_token_count";

/// `bm25s.stopwords.STOPWORDS_EN`, sorted for binary search.
const STOPWORDS_EN: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

/// Whether `token` (lower-case) is one of the 33 English stop words the BM25 analyzer drops
/// (`bm25s.stopwords.STOPWORDS_EN`, Lucene's classic English list).
///
/// ```
/// use realm_storage::lexical::is_stop_word;
///
/// assert!(is_stop_word("of") && is_stop_word("the"));
/// assert!(!is_stop_word("paris") && !is_stop_word("The"));
/// ```
pub fn is_stop_word(token: &str) -> bool {
    STOPWORDS_EN.binary_search(&token).is_ok()
}

/// Python's `re` `\w` is exactly `[\p{L}\p{N}_]` (checked over every code point of Python 3.11's
/// Unicode 14 tables), while the `regex` crate's `\w` adds combining marks, other connector
/// punctuation and join controls and leaves out `No` numbers. Since `\b\w\w+\b` with greedy
/// matching finds exactly the maximal runs of two or more word characters, spelling the class
/// out reproduces Python's `(?u)\b\w\w+\b` token for token.
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}_]{2,}").expect("the token pattern compiles"));

/// Splits `text` into BM25 terms, in order and with repetitions: lower-cases it, extracts
/// runs of two or more word characters (Python's `(?u)\b\w\w+\b`), drops the 33 English stop
/// words of `bm25s` (compared before stemming) and stems the rest with Snowball English
/// (Porter2) as Snowball 3.0 defines it. This is the `bm25s` 0.3.16 tokenizer with
/// `stopwords="en"` and PyStemmer 3.1's `"english"` stemmer.
///
/// ```
/// use realm_storage::lexical::analyze;
///
/// assert_eq!(analyze("The runner is Running to the RIVERS!"), ["runner", "run", "river"]);
/// ```
pub fn analyze(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    TOKEN
        .find_iter(&lower)
        .map(|m| m.as_str())
        .filter(|token| !is_stop_word(token))
        .map(crate::porter2::stem)
        .collect()
}

/// BM25 parameters. The defaults (k1 = 0.9, b = 0.4) are Pyserini's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalization: 0 ignores the passage length, 1 normalizes fully.
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 0.9, b: 0.4 }
    }
}

impl Bm25Params {
    fn check(self) -> Result<()> {
        if self.k1.is_finite() && self.k1 >= 0.0 && (0.0..=1.0).contains(&self.b) {
            Ok(())
        } else {
            Err(Error::InvalidBm25Params {
                k1: self.k1,
                b: self.b,
            })
        }
    }
}

/// One passage as the index sees it: its distinct terms with their frequencies, and its
/// length in terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DocTerms {
    pub(crate) terms: BTreeMap<String, u32>,
    pub(crate) len: u32,
}

impl DocTerms {
    /// Analyzes a passage: the indexed document is `title + " " + text`.
    pub(crate) fn of(title: &str, text: &str) -> Self {
        let tokens = analyze(&format!("{title} {text}"));
        let mut terms = BTreeMap::new();
        for token in &tokens {
            *terms.entry(token.clone()).or_insert(0u32) += 1;
        }
        DocTerms {
            terms,
            // Passages are bounded by `Options::max_text_bytes`, far below 2^32 tokens.
            len: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
        }
    }

    /// Stages this passage's postings.
    pub(crate) fn stage_insert(&self, batch: &mut Batch<'_>, id: PassageId) {
        for (term, &tf) in &self.terms {
            batch.put(
                Cf::LexicalPostings,
                &posting_key(term, id),
                &posting_value(tf, self.len),
            );
        }
    }

    /// Stages the removal of this passage's postings.
    pub(crate) fn stage_delete(&self, batch: &mut Batch<'_>, id: PassageId) {
        for term in self.terms.keys() {
            batch.delete(Cf::LexicalPostings, &posting_key(term, id));
        }
    }
}

/// The prefix shared by every posting of `term`.
fn term_prefix(term: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(term.len() + 9);
    key.extend_from_slice(term.as_bytes());
    key.push(0);
    key
}

/// `term ++ 0x00 ++ passage id (u64 BE)`. Terms never contain NUL (it is not a word
/// character), so a term's postings are exactly the keys starting with `term ++ 0x00`.
pub(crate) fn posting_key(term: &str, id: PassageId) -> Vec<u8> {
    let mut key = term_prefix(term);
    key.extend_from_slice(&u64_key(id));
    key
}

/// Splits a posting key into its term and passage id.
pub(crate) fn split_posting_key(key: &[u8]) -> Result<(&str, PassageId)> {
    let corrupt = || Error::Corrupt {
        what: format!("the lexical posting key {key:?}"),
    };
    if key.len() < 10 || key[key.len() - 9] != 0 {
        return Err(corrupt());
    }
    let (term, rest) = key.split_at(key.len() - 9);
    let term = std::str::from_utf8(term).map_err(|_| corrupt())?;
    let id = codec::decode_u64(&rest[1..], &|| format!("the lexical posting key {key:?}"))?;
    Ok((term, id))
}

/// `tf (u32 LE) ++ passage length (u32 LE)`.
pub(crate) fn posting_value(tf: u32, len: u32) -> [u8; 8] {
    let mut value = [0u8; 8];
    value[..4].copy_from_slice(&tf.to_le_bytes());
    value[4..].copy_from_slice(&len.to_le_bytes());
    value
}

/// Decodes what [`posting_value`] wrote: `(tf, passage length)`.
pub(crate) fn decode_posting(value: &[u8], what: &dyn Fn() -> String) -> Result<(u32, u32)> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| Error::Corrupt { what: what() })?;
    let tf = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(bytes[4..].try_into().expect("4 bytes"));
    if tf == 0 || tf > len {
        return Err(Error::Corrupt { what: what() });
    }
    Ok((tf, len))
}

/// Why lexical search cannot run on this view, if it cannot: the index is missing (a
/// follower of a database no writer has upgraded yet, or a rebuild in progress) or was built
/// by another analyzer.
pub(crate) fn unavailable_reason(r: &dyn Reader) -> Result<Option<String>> {
    Ok(match r.get(Cf::Meta, META_ANALYZER)? {
        None => Some(
            "it has no BM25 index (the database predates it, or a rebuild is in progress)".into(),
        ),
        Some(found) if found.as_slice() != ANALYZER_VERSION.as_bytes() => Some(format!(
            "its BM25 index was built by analyzer {:?}, but this build uses {ANALYZER_VERSION:?}",
            String::from_utf8_lossy(&found)
        )),
        Some(_) => None,
    })
}

/// The index-wide figures: (indexed passages, total terms).
pub(crate) fn read_totals(r: &dyn Reader) -> Result<(u64, u64)> {
    let docs = crate::db::read_meta_u64(r, META_DOCS)?.unwrap_or(0);
    let tokens = crate::db::read_meta_u64(r, META_TOKENS)?.unwrap_or(0);
    Ok((docs, tokens))
}

/// BM25 (Lucene variant) of every passage containing a query term, best first (ties by
/// passage id), at most `k` of them. The caller checked that the index is available.
pub(crate) fn search(
    r: &dyn Reader,
    query: &str,
    k: usize,
    params: Bm25Params,
) -> Result<Vec<(PassageId, f32)>> {
    params.check()?;
    let mut query_terms: BTreeMap<String, u32> = BTreeMap::new();
    for token in analyze(query) {
        *query_terms.entry(token).or_insert(0) += 1;
    }
    let (docs, tokens) = read_totals(r)?;
    if k == 0 || query_terms.is_empty() || docs == 0 {
        return Ok(Vec::new());
    }
    let n = docs as f64;
    let avgdl = tokens as f64 / n;
    let k1 = f64::from(params.k1);
    let b = f64::from(params.b);
    let mut scores: HashMap<PassageId, f64> = HashMap::new();
    let mut postings: Vec<(PassageId, u32, u32)> = Vec::new();
    // Terms in sorted order, so every passage's sum is added up in the same order.
    for (term, &query_tf) in &query_terms {
        postings.clear();
        let prefix = term_prefix(term);
        for entry in r.scan(Cf::LexicalPostings, &prefix, &[]) {
            let (key, value) = entry?;
            let (_, id) = split_posting_key(&key)?;
            let (tf, len) = decode_posting(&value, &|| {
                format!("the lexical posting of term {term:?} in passage {id}")
            })?;
            postings.push((id, tf, len));
        }
        if postings.is_empty() {
            continue;
        }
        let df = postings.len() as f64;
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        let weight = f64::from(query_tf) * idf;
        for &(id, tf, len) in &postings {
            let tf = f64::from(tf);
            let norm = k1 * (1.0 - b + b * f64::from(len) / avgdl);
            *scores.entry(id).or_insert(0.0) += weight * tf / (tf + norm);
        }
    }
    let mut ranked: Vec<(PassageId, f32)> = scores
        .into_iter()
        .map(|(id, score)| (id, score as f32))
        .filter(|&(_, score)| score > 0.0)
        .collect();
    let order = |a: &(PassageId, f32), b: &(PassageId, f32)| {
        b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0))
    };
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k - 1, order);
        ranked.truncate(k);
    }
    ranked.sort_unstable_by(order);
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        assert!(STOPWORDS_EN.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn analyzer_lowercases_drops_stopwords_and_stems() {
        assert_eq!(
            analyze("The Running dogs are running, and a dog runs!"),
            ["run", "dog", "run", "dog", "run"]
        );
        // Single characters are not tokens; digits and underscores are word characters.
        assert_eq!(analyze("x y 42 a_b 7"), ["42", "a_b"]);
        // Stop words are matched before stemming: "this" is dropped, "thing" is not.
        assert_eq!(analyze("this thing"), ["thing"]);
        assert!(analyze("to be or not to be").is_empty());
        assert!(analyze("").is_empty());
    }

    #[test]
    fn word_characters_follow_python() {
        // A combining mark (U+0301) is not a word character in Python's `re`: it splits.
        assert_eq!(analyze("cafe\u{301}s"), ["cafe"]);
        // Superscript two (category No) is one.
        assert_eq!(analyze("x\u{b2}"), ["x\u{b2}"]);
        // Connector punctuation other than `_` is not.
        assert_eq!(analyze("ab\u{203f}cd"), ["ab", "cd"]);
    }

    #[test]
    fn posting_keys_round_trip() {
        let key = posting_key("river", 42);
        assert_eq!(split_posting_key(&key).unwrap(), ("river", 42));
        assert!(key.starts_with(&term_prefix("river")));
        assert!(!key.starts_with(&term_prefix("riv")));
        assert_eq!(
            decode_posting(&posting_value(2, 9), &String::new).unwrap(),
            (2, 9)
        );
        assert!(decode_posting(&posting_value(0, 9), &String::new).is_err());
        assert!(decode_posting(&[1, 2, 3], &String::new).is_err());
    }
}
