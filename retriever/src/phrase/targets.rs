//! Training targets of the phrase encoder: where phrases may start and end in a passage
//! encoding, and which of those phrases are answers (distant supervision, DensePhrases §4).

use std::collections::HashSet;

use tokenizers::Encoding;

use super::words::word_boundary_tokens;
use crate::eval::normalize_answer;

/// The phrase positions of one passage encoding (`[CLS] title [SEP] text [SEP]`), as
/// indices into the encoding's tokens: what the encoder's start and end heads are trained
/// over, and the gold phrases among them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhraseTargets {
    /// Text tokens that begin a word, where a phrase may start.
    pub starts: Vec<usize>,
    /// Text tokens that end a word, where a phrase may end.
    pub ends: Vec<usize>,
    /// The byte offset in the text where each of `starts` begins.
    pub start_bytes: Vec<u32>,
    /// The byte offset in the text one past where each of `ends` ends.
    pub end_bytes: Vec<u32>,
    /// `(start, end)` of every phrase of at most `max_words` words whose text, normalized
    /// (SQuAD's rule), equals that of an answer; in text order.
    pub answers: Vec<(usize, usize)>,
}

impl PhraseTargets {
    /// The targets of `encoding`, the tokens of `text` as the second sequence, for
    /// `answers` (empty answers, after normalization, are ignored). Only text within the
    /// encoding counts: an answer cut off by the token limit is not found.
    pub fn new(encoding: &Encoding, text: &str, answers: &[String], max_words: usize) -> Self {
        let tokens = word_boundary_tokens(encoding, 1);
        let wanted: HashSet<String> = answers
            .iter()
            .map(|a| normalize_answer(a))
            .filter(|a| !a.is_empty())
            .collect();
        let mut targets = PhraseTargets::default();
        for (i, token) in &tokens {
            if token.starts {
                targets.starts.push(*i);
                targets.start_bytes.push(token.start_byte);
            }
            if token.ends {
                targets.ends.push(*i);
                targets.end_bytes.push(token.end_byte);
            }
        }
        if wanted.is_empty() {
            return targets;
        }
        for (n, (i, first)) in tokens.iter().enumerate() {
            if !first.starts {
                continue;
            }
            for (j, last) in &tokens[n..] {
                if (last.word - first.word) as usize >= max_words {
                    break;
                }
                if !last.ends {
                    continue;
                }
                let phrase = text.get(first.start_byte as usize..last.end_byte as usize);
                if phrase.is_some_and(|p| wanted.contains(&normalize_answer(p))) {
                    targets.answers.push((*i, *j));
                }
            }
        }
        targets
    }
}
