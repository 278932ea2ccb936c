//! Where words begin and end among the text tokens of a passage encoding.

use realm_storage::phrase_rows::PhraseToken;
use tokenizers::Encoding;

/// A text token of an encoding that may begin or end a phrase: its index in the encoding
/// and its [`PhraseToken`] (both flags say only where words begin and end; the filter
/// clears them later).
pub(crate) fn word_boundary_tokens(
    encoding: &Encoding,
    text_sequence: usize,
) -> Vec<(usize, PhraseToken)> {
    let sequence_ids = encoding.get_sequence_ids();
    let positions: Vec<usize> = sequence_ids
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == Some(text_sequence))
        .map(|(i, _)| i)
        .collect();
    let words = encoding.get_word_ids();
    let offsets = encoding.get_offsets();
    let word_at = |n: usize| positions.get(n).and_then(|&i| words[i]);
    let mut out = Vec::new();
    let mut word_count = 0u32;
    for (n, &i) in positions.iter().enumerate() {
        let word = word_at(n);
        let starts = n == 0 || word.is_none() || word_at(n - 1) != word;
        let ends = n + 1 == positions.len() || word.is_none() || word_at(n + 1) != word;
        if starts {
            word_count += 1;
        }
        let (start_byte, end_byte) = offsets[i];
        if !(starts || ends) || start_byte >= end_byte {
            continue;
        }
        let (Ok(position), Ok(start_byte), Ok(end_byte)) = (
            u32::try_from(n),
            u32::try_from(start_byte),
            u32::try_from(end_byte),
        ) else {
            break;
        };
        out.push((
            i,
            PhraseToken {
                position,
                word: word_count - 1,
                start_byte,
                end_byte,
                starts,
                ends,
            },
        ));
    }
    out
}
