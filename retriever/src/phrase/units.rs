//! Phrase retrieval rolled up into larger units (DensePhrases §6): a sentence, a passage or
//! a document scores as its best retrieved phrase, so one phrase index serves retrieval at
//! every granularity.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use realm_storage::PassageId;

use super::PhraseHit;
use crate::sentences::sentence_spans;

/// What a phrase search returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetrievalUnit {
    /// The phrases themselves.
    Phrase,
    /// The sentence (by [`crate::sentences`]) in which a phrase starts.
    Sentence,
    /// The passage a phrase was copied from.
    Passage,
    /// The document: every passage that shares the phrase's passage's title.
    Document,
}

impl RetrievalUnit {
    /// The unit's name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            RetrievalUnit::Phrase => "phrase",
            RetrievalUnit::Sentence => "sentence",
            RetrievalUnit::Passage => "passage",
            RetrievalUnit::Document => "document",
        }
    }
}

/// Where a retrieved unit lies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnitSpan {
    /// A phrase or a sentence: bytes `start_byte..end_byte` of a passage's text.
    Text {
        passage: PassageId,
        start_byte: u32,
        end_byte: u32,
    },
    /// A whole passage.
    Passage(PassageId),
    /// A document, by its title.
    Document(String),
}

/// One retrieved unit: where it lies, and its best phrase, whose score is the unit's.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitHit {
    pub span: UnitSpan,
    pub best: PhraseHit,
}

impl UnitHit {
    /// The unit's score: its best phrase's.
    pub fn score(&self) -> f32 {
        self.best.score
    }
}

/// A passage's title and text, as a roll-up needs them.
#[derive(Clone, Copy, Debug)]
pub struct PassageText<'a> {
    pub title: &'a str,
    pub text: &'a str,
}

/// The `k` best units of `unit` among `hits` (best first, as a phrase search returns them):
/// each unit appears once, at the rank of its best phrase. `passage_of` gives a passage's
/// title and text; hits of passages it does not know are skipped.
///
/// A unit's score is the best among the phrases given, so it equals the best of all its
/// phrases when `hits` holds every phrase scoring above the k-th unit.
pub fn roll_up<'a>(
    hits: &[PhraseHit],
    unit: RetrievalUnit,
    k: usize,
    passage_of: impl Fn(PassageId) -> Option<PassageText<'a>>,
) -> Vec<UnitHit> {
    let mut seen: HashSet<UnitSpan> = HashSet::new();
    // Each passage's sentences, split once however many of its phrases were retrieved.
    let mut sentences: HashMap<PassageId, Vec<Range<usize>>> = HashMap::new();
    let mut out = Vec::new();
    for hit in hits {
        if out.len() >= k {
            break;
        }
        let Some(passage) = passage_of(hit.passage) else {
            continue;
        };
        let span = match unit {
            RetrievalUnit::Phrase => UnitSpan::Text {
                passage: hit.passage,
                start_byte: hit.start_byte,
                end_byte: hit.end_byte,
            },
            RetrievalUnit::Sentence => {
                let spans = sentences
                    .entry(hit.passage)
                    .or_insert_with(|| sentence_spans(passage.text));
                sentence_of(hit, spans)
            }
            RetrievalUnit::Passage => UnitSpan::Passage(hit.passage),
            RetrievalUnit::Document => UnitSpan::Document(passage.title.to_owned()),
        };
        if seen.insert(span.clone()) {
            out.push(UnitHit { span, best: *hit });
        }
    }
    out
}

/// The sentence (of `spans`, its passage's) in which `hit` starts (the one before it, when
/// it starts in the white space between two).
fn sentence_of(hit: &PhraseHit, spans: &[Range<usize>]) -> UnitSpan {
    let at = hit.start_byte as usize;
    let index = spans.partition_point(|s| s.start <= at).saturating_sub(1);
    let (start, end) = spans
        .get(index)
        .map_or((hit.start_byte, hit.end_byte), |s| {
            (s.start as u32, s.end as u32)
        });
    UnitSpan::Text {
        passage: hit.passage,
        start_byte: start,
        end_byte: end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(passage: PassageId, start: u32, end: u32, score: f32) -> PhraseHit {
        PhraseHit {
            passage,
            start_byte: start,
            end_byte: end,
            start_position: 0,
            end_position: 0,
            score,
        }
    }

    const TEXTS: [(&str, &str); 3] = [
        ("Oslo", "Oslo is the capital. It lies on a fjord."),
        ("Oslo", "The city hosts the Nobel Peace Prize."),
        ("Bergen", "Bergen is rainy."),
    ];

    fn passage(id: PassageId) -> Option<PassageText<'static>> {
        TEXTS
            .get(id as usize)
            .map(|&(title, text)| PassageText { title, text })
    }

    #[test]
    fn each_unit_appears_once_at_the_rank_of_its_best_phrase() {
        let hits = [
            hit(0, 24, 28, 9.0), // "lies", second sentence of passage 0
            hit(0, 0, 4, 8.0),   // "Oslo", first sentence of passage 0
            hit(1, 19, 24, 7.0), // "Nobel", passage 1 (document Oslo)
            hit(2, 0, 6, 6.0),   // "Bergen"
            hit(0, 12, 19, 5.0), // "capital", first sentence again
            hit(9, 0, 1, 4.0),   // a passage `passage` does not know
        ];
        let spans = |unit, k| -> Vec<(UnitSpan, f32)> {
            roll_up(&hits, unit, k, passage)
                .into_iter()
                .map(|u| (u.span.clone(), u.score()))
                .collect()
        };
        let text = |passage, start_byte, end_byte| UnitSpan::Text {
            passage,
            start_byte,
            end_byte,
        };
        assert_eq!(
            spans(RetrievalUnit::Sentence, 10),
            vec![
                (text(0, 21, 40), 9.0),
                (text(0, 0, 20), 8.0),
                (text(1, 0, 37), 7.0),
                (text(2, 0, 16), 6.0),
            ]
        );
        assert_eq!(
            spans(RetrievalUnit::Passage, 10),
            vec![
                (UnitSpan::Passage(0), 9.0),
                (UnitSpan::Passage(1), 7.0),
                (UnitSpan::Passage(2), 6.0),
            ]
        );
        assert_eq!(
            spans(RetrievalUnit::Document, 10),
            vec![
                (UnitSpan::Document("Oslo".into()), 9.0),
                (UnitSpan::Document("Bergen".into()), 6.0),
            ]
        );
        assert_eq!(spans(RetrievalUnit::Phrase, 10).len(), 5);
        assert_eq!(spans(RetrievalUnit::Passage, 2).len(), 2);
    }
}
