//! Salient-span masking (REALM §3.4, Guu et al. 2020) without an NER model.
//!
//! REALM masks named entities and dates found by a tagger. No tagger ships with realm-db,
//! so [`salient_spans`] uses a capitalization and number heuristic instead:
//!
//! * **names**: runs of capitalized words, where `of`, `the`, `de` and `von` may join two
//!   capitalized words (`Bank of England`, `Ludwig van` is not joined, `Ludwig von Mises`
//!   is); the words of a run are separated by spaces only (`Paris, France` is two spans).
//!   A capitalized word at the start of a sentence is not salient on its own and never
//!   starts a run: the run starts at the next capitalized word. The pronoun `I` is never
//!   salient.
//! * **dates**: `12 March 1999`, `12 March`, `March 1999` (a month name next to a day of 1 to
//!   31 and/or a year), also at the start of a sentence;
//! * **years**: four-digit numbers from 1000 to 2099;
//! * **numbers** with at least two digits, with inner `,` or `.` (`1,000`, `3.5`, `42`).
//!
//! Spans are byte ranges into the text, sorted and non-overlapping. [`mask_one`] picks one
//! span of a sentence uniformly with a caller-supplied RNG and names the WordPiece tokens
//! (given by their byte offsets) that cover it, all of which are then masked.

use rand::RngCore;

use realm_retriever::sentences::sentences;

const CONNECTORS: [&str; 4] = ["of", "the", "de", "von"];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A word of the text: its byte range and whether it starts a sentence.
struct Word<'a> {
    start: usize,
    end: usize,
    text: &'a str,
    sentence_start: bool,
}

impl Word<'_> {
    fn capitalized(&self) -> bool {
        self.text.chars().next().is_some_and(char::is_uppercase) && self.text != "I"
    }

    fn connector(&self) -> bool {
        CONNECTORS.contains(&self.text)
    }

    fn month(&self) -> bool {
        MONTHS.contains(&self.text)
    }

    fn numeric(&self) -> bool {
        self.text.starts_with(|c: char| c.is_ascii_digit())
            && self
                .text
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
    }

    fn digits(&self) -> usize {
        self.text.chars().filter(char::is_ascii_digit).count()
    }

    fn plain_value(&self) -> Option<u32> {
        if self.text.chars().all(|c| c.is_ascii_digit()) {
            self.text.parse().ok()
        } else {
            None
        }
    }

    fn year(&self) -> bool {
        self.text.len() == 4
            && self
                .plain_value()
                .is_some_and(|v| (1000..=2099).contains(&v))
    }

    fn day(&self) -> bool {
        self.text.len() <= 2 && self.plain_value().is_some_and(|v| (1..=31).contains(&v))
    }
}

/// Splits `text` into words: runs of alphanumeric characters, where `,` and `.` between two
/// digits stay inside the word. A word starts a sentence when it is the first word of one of
/// the text's [`sentences`].
fn words(text: &str) -> Vec<Word<'_>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let base = text.as_ptr() as usize;
    let mut starts = sentences(text)
        .into_iter()
        .map(|s| s.as_ptr() as usize - base)
        .peekable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if !c.is_alphanumeric() {
            i += 1;
            continue;
        }
        let mut sentence_start = false;
        while starts.next_if(|&s| s <= at).is_some() {
            sentence_start = true;
        }
        let mut j = i + 1;
        while j < chars.len() {
            let c = chars[j].1;
            let inner_separator = matches!(c, ',' | '.')
                && chars[j - 1].1.is_ascii_digit()
                && chars.get(j + 1).is_some_and(|&(_, n)| n.is_ascii_digit());
            if c.is_alphanumeric() || inner_separator {
                j += 1;
            } else {
                break;
            }
        }
        let end = chars.get(j).map_or(text.len(), |&(e, _)| e);
        out.push(Word {
            start: at,
            end,
            text: &text[at..end],
            sentence_start,
        });
        i = j;
    }
    out
}

/// Whether only whitespace separates words `a` and `b`.
fn spaced(text: &str, a: &Word<'_>, b: &Word<'_>) -> bool {
    text[a.end..b.start].chars().all(char::is_whitespace) && a.end < b.start
}

/// The salient spans of `text` as sorted, non-overlapping byte ranges; see the module
/// documentation for the heuristic.
pub fn salient_spans(text: &str) -> Vec<(usize, usize)> {
    let w = words(text);
    let mut spans = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let next_spaced = |k: usize| k + 1 < w.len() && spaced(text, &w[k], &w[k + 1]);
        // Dates: [day] month [year], with at least a day or a year.
        let (first, month) = if w[i].day() && next_spaced(i) && w[i + 1].month() {
            (i, Some(i + 1))
        } else if w[i].month() {
            (i, Some(i))
        } else {
            (i, None)
        };
        if let Some(m) = month {
            let last = if next_spaced(m) && w[m + 1].year() {
                Some(m + 1)
            } else if first < m {
                Some(m)
            } else {
                None
            };
            if let Some(last) = last {
                spans.push((w[first].start, w[last].end));
                i = last + 1;
                continue;
            }
        }
        if w[i].numeric() && (w[i].digits() >= 2 || w[i].year()) {
            spans.push((w[i].start, w[i].end));
            i += 1;
            continue;
        }
        if w[i].capitalized() && !w[i].sentence_start {
            let mut last = i;
            loop {
                if next_spaced(last) && w[last + 1].capitalized() {
                    last += 1;
                } else if next_spaced(last)
                    && w[last + 1].connector()
                    && next_spaced(last + 1)
                    && w[last + 2].capitalized()
                {
                    last += 2;
                } else {
                    break;
                }
            }
            spans.push((w[i].start, w[last].end));
            i = last + 1;
            continue;
        }
        i += 1;
    }
    spans
}

/// A salient span chosen for masking and the tokens that cover it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedSpan {
    /// The span's byte range in the sentence.
    pub span: (usize, usize),
    /// Indices (into the offsets given to [`mask_one`]) of the tokens to mask, ascending.
    pub tokens: Vec<usize>,
}

/// The indices of the tokens (byte ranges; empty ones such as special tokens are skipped)
/// that overlap `span`.
pub fn covering_tokens(offsets: &[(usize, usize)], span: (usize, usize)) -> Vec<usize> {
    offsets
        .iter()
        .enumerate()
        .filter(|&(_, &(s, e))| s < e && s < span.1 && e > span.0)
        .map(|(i, _)| i)
        .collect()
}

/// Picks one salient span of `sentence`, uniformly among those covered by at least one of the
/// tokens whose byte `offsets` into `sentence` are given (a span cut off by truncation is
/// not chosen), and returns it with its tokens; `None` when the sentence has none. The choice
/// depends only on the sentence, the offsets and the RNG's state.
pub fn mask_one<R: RngCore + ?Sized>(
    sentence: &str,
    offsets: &[(usize, usize)],
    rng: &mut R,
) -> Option<MaskedSpan> {
    let candidates: Vec<MaskedSpan> = salient_spans(sentence)
        .into_iter()
        .map(|span| MaskedSpan {
            span,
            tokens: covering_tokens(offsets, span),
        })
        .filter(|m| !m.tokens.is_empty())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let pick = (rng.next_u64() % candidates.len() as u64) as usize;
    candidates.into_iter().nth(pick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn texts(text: &str) -> Vec<&str> {
        salient_spans(text)
            .into_iter()
            .map(|(s, e)| &text[s..e])
            .collect()
    }

    #[test]
    fn capitalized_runs_with_connectors() {
        assert_eq!(
            texts("He worked at the Bank of England with Ludwig von Mises."),
            vec!["Bank of England", "Ludwig von Mises"]
        );
        assert_eq!(
            texts("She visited New York City and Paris, France."),
            vec!["New York City", "Paris", "France"]
        );
        // A connector not followed by a capitalized word ends the run.
        assert_eq!(texts("a gift from Bob of the people"), vec!["Bob"]);
    }

    #[test]
    fn single_capitalized_words_not_at_sentence_start() {
        assert_eq!(texts("Zorblat's capital is Quendor."), vec!["Quendor"]);
        assert_eq!(
            texts("The river is long. Many fish live in Ostra! Where is Kel?"),
            vec!["Ostra", "Kel"]
        );
        // A run at the start of a sentence starts after its first word.
        assert_eq!(texts("New York is big."), vec!["York"]);
        assert_eq!(texts("and then I left"), Vec::<&str>::new());
    }

    #[test]
    fn years_dates_and_numbers() {
        assert_eq!(texts("it was built in 1887 by them"), vec!["1887"]);
        assert_eq!(texts("born on 12 March 1999 there"), vec!["12 March 1999"]);
        assert_eq!(texts("since March 1999 only"), vec!["March 1999"]);
        assert_eq!(texts("on 4 July they met"), vec!["4 July"]);
        assert_eq!(texts("March 1999 was cold."), vec!["March 1999"]);
        assert_eq!(
            texts("about 1,000 people and 3.5 tons, 42 cats, 7 dogs, 2150 ants"),
            vec!["1,000", "3.5", "42", "2150"]
        );
        // Sentence-final period is not part of a number.
        assert_eq!(texts("the total was 25."), vec!["25"]);
        // A single digit, or a month alone, is not salient.
        assert_eq!(texts("it took 3 days in may"), Vec::<&str>::new());
    }

    #[test]
    fn sentences_without_salient_spans() {
        assert!(salient_spans("").is_empty());
        assert!(salient_spans("The cat sat on the mat.").is_empty());
        assert!(salient_spans("nothing here at all, really!").is_empty());
    }

    #[test]
    fn spans_are_sorted_and_disjoint() {
        let text = "In 1999 the Duke of York met 12 delegates in Rome on 3 May 2001.";
        let spans = salient_spans(text);
        assert!(spans.windows(2).all(|p| p[0].1 <= p[1].0));
        assert_eq!(
            texts(text),
            vec!["1999", "Duke of York", "12", "Rome", "3 May 2001"]
        );
    }

    #[test]
    fn mask_one_covers_all_tokens_of_a_span() {
        let text = "He met Ludwig von Mises.";
        // Hand-made WordPiece-like offsets, with [CLS]/[SEP] as empty ranges.
        let offsets = vec![
            (0, 0),
            (0, 2),
            (3, 6),
            (7, 10),
            (10, 13),
            (14, 17),
            (18, 23),
            (23, 24),
            (0, 0),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let m = mask_one(text, &offsets, &mut rng).expect("a span");
        assert_eq!(&text[m.span.0..m.span.1], "Ludwig von Mises");
        assert_eq!(m.tokens, vec![3, 4, 5, 6]);
        // No span: None.
        assert_eq!(mask_one("the cat.", &[(0, 3), (4, 7)], &mut rng), None);
        // A span cut off by truncation is not chosen.
        assert_eq!(mask_one(text, &offsets[..3], &mut rng), None);
    }

    #[test]
    fn mask_one_is_deterministic_and_uses_every_span() {
        let text = "Anna met Bob in Rome in 1999.";
        let offsets: Vec<(usize, usize)> = words(text).iter().map(|w| (w.start, w.end)).collect();
        let pick = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            mask_one(text, &offsets, &mut rng).map(|m| m.span)
        };
        assert_eq!(pick(5), pick(5));
        let chosen: std::collections::HashSet<_> = (0..64).filter_map(pick).collect();
        assert_eq!(chosen.len(), 3, "Bob, Rome and 1999 are all chosen");
    }
}
