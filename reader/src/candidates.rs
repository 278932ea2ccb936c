//! Answer candidates across passages: which spans may be answers ([`AnswerOptions`]) and how
//! a candidate's span probabilities combine over the passages ([`Marginalization`]).

use std::collections::{HashMap, HashSet};

use realm_retriever::eval::{AnswerMatcher, PreparedText, normalize_answer};
use realm_storage::lexical::is_stop_word;

use crate::error::{Error, Result};
use crate::spans::SpanNormalization;

/// How a candidate's per-passage probabilities p(z|x) · p(y|z,x) combine into its score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Marginalization {
    /// REALM's marginal p(y|x) = Σ_z p(z|x) · p(y|z,x): a string found in many passages
    /// gathers probability from each of them.
    #[default]
    Sum,
    /// max_z p(z|x) · p(y|z,x): the candidate's best single passage, so a string gains
    /// nothing from occurring in many passages.
    Max,
}

impl Marginalization {
    /// The name used on the command line and in reports: `sum` or `max`.
    pub fn name(self) -> &'static str {
        match self {
            Marginalization::Sum => "sum",
            Marginalization::Max => "max",
        }
    }
}

/// Which spans may be answers and how answers are scored, for [`crate::Reader::answer_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerOptions {
    /// The longest answer, in words of its normalized text (SQuAD's `normalize_answer`,
    /// which drops articles and punctuation); longer spans are never candidates.
    pub max_answer_words: usize,
    /// Drop candidates whose normalized text occurs in the normalized question as whole
    /// words (DPR's matching rule), unless no other candidate is left: the question's own
    /// words are seldom its answer.
    pub drop_question_words: bool,
    /// How a candidate's probabilities combine over passages.
    pub marginalization: Marginalization,
    /// How many distinct answers [`crate::Answer::alternatives`] lists.
    pub top_answers: usize,
    /// How span scores are normalized across passages; `None` (the default) uses the one
    /// the reader was trained with ([`crate::Reader::span_normalization`]).
    pub span_normalization: Option<SpanNormalization>,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        AnswerOptions {
            max_answer_words: 10,
            drop_question_words: true,
            marginalization: Marginalization::Sum,
            top_answers: 3,
            span_normalization: None,
        }
    }
}

impl AnswerOptions {
    /// Refuses settings that would leave no answer: zero words or zero alternatives.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |reason: &str| Error::InvalidInput {
            reason: reason.to_owned(),
        };
        if self.max_answer_words == 0 {
            return Err(invalid("the longest answer must be at least 1 word"));
        }
        if self.top_answers == 0 {
            return Err(invalid("at least one answer must be listed"));
        }
        Ok(())
    }
}

/// One passage's spans as the ranking sees them.
pub(crate) struct PassageSpanProbs<'a> {
    /// The passage's weight: p(z|x) when span probabilities are per passage, 1 when they
    /// are joint.
    pub(crate) p_z: f64,
    /// Every span's text and p(s|z,x) (joint: p(s,z|x)), in the passage's span order.
    pub(crate) spans: Vec<(&'a str, f64)>,
}

/// A distinct candidate answer and its score under the chosen marginalization.
pub(crate) struct Candidate {
    /// The text of the first span met with this normalized text.
    pub(crate) text: String,
    /// Its normalized text.
    pub(crate) key: String,
    pub(crate) score: f64,
}

/// The candidates of one question, best first, with what the evidence needs.
pub(crate) struct Ranking {
    /// Every kept candidate, best first (ties: the one met first).
    pub(crate) candidates: Vec<Candidate>,
    /// Per passage: normalized text → p(y|z,x), the sum of p(s|z,x) over its spans of
    /// that text, at most 1.
    pub(crate) p_y_given_z: Vec<HashMap<String, f64>>,
    /// Per passage: the index and probability of its most probable span.
    pub(crate) best_span: Vec<Option<(usize, f64)>>,
}

/// Whether a normalized word says nothing by itself: an English stop word, or made of no
/// letter or digit (punctuation outside ASCII, which normalization keeps).
fn is_filler(word: &str) -> bool {
    is_stop_word(word) || !word.chars().any(char::is_alphanumeric)
}

/// Ranks the candidates of one question. Each passage offers its `per_passage` most
/// probable spans that may be answers: a non-empty normalized text of at most
/// `max_answer_words` words, not made of stop words and punctuation alone, and (with
/// `drop_question_words`) not found in the question. Spans found in the question are
/// offered in their place only when no passage offers any other span.
pub(crate) fn rank(
    question: &str,
    passages: &[PassageSpanProbs<'_>],
    options: &AnswerOptions,
    per_passage: usize,
) -> Ranking {
    let question = PreparedText::new(question);
    let mut p_y_given_z = Vec::with_capacity(passages.len());
    let mut best_span = Vec::with_capacity(passages.len());
    // Candidates in the order met: (text, key); those found in the question apart.
    let mut offered: Vec<(String, String)> = Vec::new();
    let mut echoes: Vec<(String, String)> = Vec::new();
    let mut offered_keys: HashSet<String> = HashSet::new();
    let mut echo_keys: HashSet<String> = HashSet::new();
    for passage in passages {
        let keys: Vec<String> = passage
            .spans
            .iter()
            .map(|(text, _)| normalize_answer(text))
            .collect();
        let mut sums: HashMap<String, f64> = HashMap::new();
        for (key, &(_, p)) in keys.iter().zip(&passage.spans) {
            if !key.is_empty() {
                *sums.entry(key.clone()).or_insert(0.0) += p;
            }
        }
        sums.values_mut().for_each(|p| *p = p.min(1.0));
        let mut order: Vec<usize> = (0..passage.spans.len()).collect();
        order.sort_by(|&a, &b| passage.spans[b].1.total_cmp(&passage.spans[a].1));
        best_span.push(order.first().map(|&i| (i, passage.spans[i].1)));
        let (mut kept, mut echoed) = (0, 0);
        for i in order {
            if kept >= per_passage && echoed >= per_passage {
                break;
            }
            let key = &keys[i];
            let words: Vec<&str> = key.split(' ').filter(|w| !w.is_empty()).collect();
            if words.is_empty()
                || words.len() > options.max_answer_words
                || words.iter().all(|w| is_filler(w))
            {
                continue;
            }
            let echo = options.drop_question_words
                && AnswerMatcher::from_answers(&[key]).matches_prepared(&question);
            let (list, keys_met, count) = if echo {
                (&mut echoes, &mut echo_keys, &mut echoed)
            } else {
                (&mut offered, &mut offered_keys, &mut kept)
            };
            if *count >= per_passage {
                continue;
            }
            *count += 1;
            if keys_met.insert(key.clone()) {
                list.push((passage.spans[i].0.to_owned(), key.clone()));
            }
        }
        p_y_given_z.push(sums);
    }
    let chosen = if offered.is_empty() { echoes } else { offered };
    let mut candidates: Vec<Candidate> = chosen
        .into_iter()
        .map(|(text, key)| {
            let terms = passages
                .iter()
                .zip(&p_y_given_z)
                .map(|(p, sums)| p.p_z * sums.get(&key).copied().unwrap_or(0.0));
            let score = match options.marginalization {
                Marginalization::Sum => terms.sum(),
                Marginalization::Max => terms.fold(0.0, f64::max),
            };
            Candidate { text, key, score }
        })
        .collect();
    // A stable sort: equal scores keep the order met.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ranking {
        candidates,
        p_y_given_z,
        best_span,
    }
}
