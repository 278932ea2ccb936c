//! Sentence splitting, the one rule every part of realm-db uses: the corpus builder
//! (`realm-db corpus`), ICT's pseudo-queries, REALM's salient-span masking and phrase
//! retrieval rolled up into sentences.
//!
//! A sentence ends after `.`, `!` or `?` and any closing quotes or brackets when white
//! space and then an upper-case letter, a digit or an opening quote follow, except when
//! the mark is a period after an initial ("J. R. R. Tolkien"), a dotted acronym
//! ("U.S. Army") or a listed abbreviation ("Dr.", "St.", "c."). On text whose white space
//! is single ASCII spaces (the corpus builder cleans it first), this is exactly how
//! `shared/data`'s passages were made.

/// Characters that may follow the sentence-ending `.`, `!` or `?` before the space.
fn is_closing(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '\u{201d}' | '\u{2019}' | ')' | ']' | '\u{bb}'
    )
}

/// Characters that open a quotation.
fn is_opening_quote(c: char) -> bool {
    matches!(c, '"' | '\'' | '\u{201c}' | '\u{2018}' | '\u{ab}')
}

/// Characters stripped from the front of the word before a period.
fn is_leading_punctuation(c: char) -> bool {
    matches!(
        c,
        '(' | '[' | '"' | '\'' | '\u{201c}' | '\u{2018}' | '\u{ab}'
    )
}

/// Words (without their period) after which a period does not end a sentence.
/// Matched case-sensitively: titles and ranks, months, numbering and reference
/// abbreviations, and "pH".
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "Mt", "Ft", "Rev", "Gen", "Col", "Lt",
    "Capt", "Sgt", "Gov", "Sen", "Rep", "Hon", "Fr", "Jan", "Feb", "Mar", "Apr", "Jun", "Jul",
    "Aug", "Sep", "Sept", "Oct", "Nov", "Dec", "No", "Nos", "Vol", "Vols", "Op", "pp", "vs", "c",
    "ca", "fl", "cf", "viz", "approx", "pH",
];

/// Whether a period right after `word` (leading brackets and quotes already stripped)
/// is no sentence end: an initial ("C"), a dotted acronym ("U.S", "e.g") or a listed
/// abbreviation.
fn is_abbreviation(word: &str) -> bool {
    let mut chars = word.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return c.is_alphabetic();
    }
    let mut parts = word.split('.');
    let dotted = word.contains('.')
        && parts.all(|part| {
            let mut chars = part.chars();
            matches!((chars.next(), chars.next()), (Some(c), None) if c.is_alphabetic())
        });
    dotted || ABBREVIATIONS.contains(&word)
}

/// Splits `text` into sentences by the rule of this module.
///
/// The sentences are slices of `text` without the white space between them, trimmed;
/// text that is empty or only white space gives none.
pub fn sentences(text: &str) -> Vec<&str> {
    sentence_spans(text)
        .into_iter()
        .map(|span| &text[span])
        .collect()
}

/// The byte ranges in `text` of its [`sentences`], in order.
pub fn sentence_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut word_start = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            word_start = i + c.len_utf8();
            continue;
        }
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let after_mark = i + c.len_utf8();
        let end = after_mark + prefix_len(&text[after_mark..], is_closing);
        let gap = prefix_len(&text[end..], char::is_whitespace);
        if gap == 0 {
            continue;
        }
        let starts_sentence = text[end + gap..]
            .chars()
            .next()
            .is_some_and(|d| d.is_uppercase() || d.is_ascii_digit() || is_opening_quote(d));
        if !starts_sentence {
            continue;
        }
        if c == '.'
            && is_abbreviation(text[word_start..i].trim_start_matches(is_leading_punctuation))
        {
            continue;
        }
        push_trimmed(&mut out, text, start..end);
        start = end + gap;
    }
    push_trimmed(&mut out, text, start..text.len());
    out
}

/// The byte length of the longest prefix of `text` whose characters satisfy `keep`.
fn prefix_len(text: &str, keep: impl Fn(char) -> bool) -> usize {
    text.chars()
        .take_while(|&c| keep(c))
        .map(char::len_utf8)
        .sum()
}

/// Pushes `span` of `text` without its leading and trailing white space, unless nothing
/// is left.
fn push_trimmed(out: &mut Vec<std::ops::Range<usize>>, text: &str, span: std::ops::Range<usize>) {
    let piece = &text[span.clone()];
    let start = span.start + (piece.len() - piece.trim_start().len());
    let end = span.end - (piece.len() - piece.trim_end().len());
    if start < end {
        out.push(start..end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_after_marks_before_capitals_digits_and_quotes() {
        assert_eq!(
            sentences("It rains. It pours! Why? 2000 was a year. \"Yes,\" he said."),
            [
                "It rains.",
                "It pours!",
                "Why?",
                "2000 was a year.",
                "\"Yes,\" he said."
            ]
        );
        assert_eq!(
            sentences("One. \u{201c}Two.\u{201d} Three."),
            ["One.", "\u{201c}Two.\u{201d}", "Three."]
        );
        // No split before a lower-case word or without a space.
        assert_eq!(
            sentences("It is 3.5 m. long, e.g. here. ok"),
            ["It is 3.5 m. long, e.g. here. ok"]
        );
        assert_eq!(sentences(""), Vec::<&str>::new());
        assert_eq!(sentences("No end mark"), ["No end mark"]);
    }

    #[test]
    fn sentences_keep_closing_quotes_and_brackets() {
        assert_eq!(
            sentences("He said \"Stop.\" Then he left (see above.) Next one.' Last"),
            [
                "He said \"Stop.\"",
                "Then he left (see above.)",
                "Next one.'",
                "Last"
            ]
        );
        // A bracket is no opening quote: no sentence starts before it.
        assert_eq!(
            sentences("Is it? (Yes.) \"Fine!\" [Done.] End"),
            ["Is it? (Yes.)", "\"Fine!\" [Done.]", "End"]
        );
    }

    #[test]
    fn sentences_do_not_split_after_initials() {
        assert_eq!(
            sentences("The book is by J. R. R. Tolkien. He was born in 1892."),
            ["The book is by J. R. R. Tolkien.", "He was born in 1892."]
        );
        assert_eq!(
            sentences("Brown, C. Smith and (A. Jones). It ends."),
            ["Brown, C. Smith and (A. Jones).", "It ends."]
        );
        // Any single letter, also lower case or Greek.
        assert_eq!(
            sentences("It takes 4.69 s. It is fast. Named after α. The end."),
            ["It takes 4.69 s. It is fast.", "Named after α. The end."]
        );
    }

    #[test]
    fn sentences_do_not_split_after_dotted_acronyms() {
        assert_eq!(
            sentences("He joined the U.S. Army in 1942. He served the U.S.A. Navy too."),
            [
                "He joined the U.S. Army in 1942.",
                "He served the U.S.A. Navy too."
            ]
        );
        assert_eq!(
            sentences("Some fruits, i.e. Apples. Fine."),
            ["Some fruits, i.e. Apples.", "Fine."]
        );
        // A word that only ends with a period is not an acronym.
        assert_eq!(
            sentences("It is the UN. The end."),
            ["It is the UN.", "The end."]
        );
    }

    #[test]
    fn sentences_do_not_split_after_listed_abbreviations() {
        assert_eq!(
            sentences(
                "Dr. Smith lives on St. Paul street. He was born c. 1500 and fl. 1530. No. 5 won."
            ),
            [
                "Dr. Smith lives on St. Paul street.",
                "He was born c. 1500 and fl. 1530.",
                "No. 5 won."
            ]
        );
        assert_eq!(
            sentences("Born Jan. 5. Blood pH. The end."),
            ["Born Jan. 5.", "Blood pH. The end."]
        );
        // "etc." ends sentences; the list is case-sensitive.
        assert_eq!(
            sentences("Cats, dogs, etc. Often more. It is st. Then"),
            ["Cats, dogs, etc.", "Often more.", "It is st.", "Then"]
        );
    }

    #[test]
    fn any_white_space_run_separates_sentences_and_pieces_are_trimmed() {
        assert_eq!(
            sentences("  One.  Two\n\nThree?\tFour!  "),
            ["One.", "Two\n\nThree?", "Four!"]
        );
        assert_eq!(sentences("Version 2.0 is out"), ["Version 2.0 is out"]);
        assert!(sentences(" \n\t ").is_empty());
    }
}
