//! `realm-db eval --em`: the database's reader answers every question, scored by SQuAD's
//! exact match and token F1, on all questions and on the `in_corpus` subset.

use std::time::Instant;

use anyhow::Result;
use realm_db::SearchSnapshot;
use realm_db::reader::store::current_reader;
use realm_db::reader::{AnswerOptions, Error as ReaderError, ReaderConfig};
use realm_db::retriever::eval::{AnswerMatcher, QaExample, exact_match_score, f1_score};
use realm_db::{Retriever, SearchMode};
use serde::Serialize;

use crate::error::user;
use crate::progress;

/// How the reader is evaluated: over how many passages of which retrieval, answering how.
pub(crate) struct ReaderEval {
    /// Passages read per question.
    pub(crate) passages: usize,
    pub(crate) mode: SearchMode,
    pub(crate) options: AnswerOptions,
}

/// Exact match and F1 of the database's reader, as a JSON line.
#[derive(Debug, Serialize)]
pub(crate) struct ExactMatch {
    system: &'static str,
    retrieval: &'static str,
    reader: String,
    passages: usize,
    /// `sum` or `max`.
    marginalization: &'static str,
    max_answer_words: usize,
    /// Whether candidates made of the question's own words were dropped.
    drop_question_words: bool,
    questions: usize,
    in_corpus_questions: Option<usize>,
    em: f64,
    in_corpus_em: Option<f64>,
    /// SQuAD token F1, averaged over questions.
    f1: f64,
    in_corpus_f1: Option<f64>,
    seconds: f64,
}

impl ExactMatch {
    /// The figures as one sentence.
    pub(crate) fn summary(&self) -> String {
        let in_corpus = |v: Option<f64>| {
            v.map_or_else(String::new, |ic| format!(" / {:.1}% in corpus", 100.0 * ic))
        };
        format!(
            "Reader over the top {} {} passages ({} marginalization, answers of at most {} words{}): \
             exact match {:.1}%{}, F1 {:.1}%{} on {} questions{} ({:.1} questions/s).",
            self.passages,
            self.retrieval,
            self.marginalization,
            self.max_answer_words,
            if self.drop_question_words {
                ", question words dropped"
            } else {
                ""
            },
            100.0 * self.em,
            in_corpus(self.in_corpus_em),
            100.0 * self.f1,
            in_corpus(self.in_corpus_f1),
            self.questions,
            self.in_corpus_questions
                .map_or_else(String::new, |n| format!(" ({n} in corpus)")),
            self.questions as f64 / self.seconds.max(1e-9)
        )
    }
}

/// Sums of exact match and F1 over all questions and over the in-corpus ones.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    questions: usize,
    em: f64,
    f1: f64,
    in_corpus: usize,
    in_corpus_em: f64,
    in_corpus_f1: f64,
    any_in_corpus: bool,
}

/// Exact match and F1 (each 0 or 1, and 0 to 1) of one predicted answer (`None`: no
/// candidate): SQuAD's against the gold answers, or for a question with answer patterns
/// 1 for both when a pattern matches the answer.
fn score(predicted: Option<&str>, example: &QaExample, matcher: &AnswerMatcher) -> (f64, f64) {
    match predicted {
        None => (0.0, 0.0),
        Some(text) if example.answer_patterns.is_empty() => (
            f64::from(u8::from(exact_match_score(text, &example.answers))),
            f1_score(text, &example.answers),
        ),
        Some(text) => {
            let hit = f64::from(u8::from(matcher.matches(text)));
            (hit, hit)
        }
    }
}

impl Totals {
    /// Records one question's prediction.
    pub(crate) fn add(
        &mut self,
        predicted: Option<&str>,
        example: &QaExample,
        matcher: &AnswerMatcher,
    ) {
        let (em, f1) = score(predicted, example, matcher);
        self.questions += 1;
        self.em += em;
        self.f1 += f1;
        if let Some(ic) = example.in_corpus {
            self.any_in_corpus = true;
            if ic {
                self.in_corpus += 1;
                self.in_corpus_em += em;
                self.in_corpus_f1 += f1;
            }
        }
    }

    /// (EM, F1) averaged over all questions and over the in-corpus ones (`None` when no
    /// question carried `in_corpus`).
    pub(crate) fn means(&self) -> ((f64, f64), Option<(f64, f64)>) {
        let n = self.questions.max(1) as f64;
        let ic = self.in_corpus.max(1) as f64;
        (
            (self.em / n, self.f1 / n),
            self.any_in_corpus
                .then(|| (self.in_corpus_em / ic, self.in_corpus_f1 / ic)),
        )
    }
}

impl ReaderEval {
    /// Answers every question with the current reader over the top `passages` passages of
    /// `mode` (their p(z|x) as that mode defines it, dense scores at the reader's
    /// temperature) and scores the answers: exact match (the normalized answer equals a
    /// normalized gold answer) and SQuAD token F1 (the best over the gold answers). For
    /// questions with `answer_patterns`, both are 1 when a pattern matches the answer and
    /// 0 otherwise. A question no passage offers a candidate for scores 0.
    pub(crate) fn run(
        &self,
        retriever: &Retriever,
        snapshot: &SearchSnapshot,
        examples: &[QaExample],
        matchers: &[AnswerMatcher],
    ) -> Result<ExactMatch> {
        let config = ReaderConfig {
            device: retriever.options().encoder.device,
            ..ReaderConfig::default()
        };
        let Some((reader_id, reader)) = current_reader(retriever, config)? else {
            return Err(user(format!(
                "--em needs a trained reader, and the database at {} has none; train one with `realm-db train --mode qa`",
                retriever.db().path().display()
            )));
        };
        let bar = progress::bar(
            examples.len() as u64,
            "reader {bar:40} {pos}/{len} questions {per_sec} eta {eta}",
        );
        let started = Instant::now();
        let mut totals = Totals::default();
        for (example, matcher) in examples.iter().zip(matchers) {
            let retrieved = snapshot.search_with(&example.question, self.passages, self.mode)?;
            // Dense scores are inner products: p(z|x) at the temperature the reader was
            // trained with. BM25 and fused scores keep the search's own normalization.
            let p_z: Vec<f32> = if self.mode == SearchMode::Dense {
                let scores: Vec<f32> = retrieved.iter().map(|h| h.score).collect();
                reader.passage_probs(&scores)
            } else {
                retrieved.iter().map(|h| h.prob).collect()
            };
            let passages: Vec<(u64, &str, &str, f32)> = retrieved
                .iter()
                .zip(p_z)
                .map(|(h, p)| (h.passage_id, h.title.as_str(), h.text.as_str(), p))
                .collect();
            let predicted = match reader.answer_with(&example.question, &passages, &self.options) {
                Ok(answer) => Some(answer.text),
                Err(ReaderError::NoCandidate { .. } | ReaderError::NoPassages) => None,
                Err(e) => return Err(e.into()),
            };
            totals.add(predicted.as_deref(), example, matcher);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let ((em, f1), in_corpus) = totals.means();
        Ok(ExactMatch {
            system: "reader",
            retrieval: self.mode.name(),
            reader: reader_id,
            passages: self.passages,
            marginalization: self.options.marginalization.name(),
            max_answer_words: self.options.max_answer_words,
            drop_question_words: self.options.drop_question_words,
            questions: examples.len(),
            in_corpus_questions: totals.any_in_corpus.then_some(totals.in_corpus),
            em,
            in_corpus_em: in_corpus.map(|(em, _)| em),
            f1,
            in_corpus_f1: in_corpus.map(|(_, f1)| f1),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(answers: &[&str], patterns: &[&str], in_corpus: Option<bool>) -> QaExample {
        QaExample {
            line: 1,
            question: "q".into(),
            answers: answers.iter().map(|a| a.to_string()).collect(),
            answer_patterns: patterns.iter().map(|a| a.to_string()).collect(),
            in_corpus,
            id: None,
        }
    }

    #[test]
    fn totals_average_em_and_f1_over_all_and_in_corpus_questions() {
        let cases = [
            // EM 1, F1 1.
            (
                Some("The Eiffel Tower"),
                example(&["Eiffel Tower"], &[], Some(true)),
            ),
            // EM 0; "eiffel tower in paris" vs "eiffel tower": P 2/4, R 1, F1 2/3.
            (
                Some("Eiffel Tower in Paris"),
                example(&["Eiffel Tower"], &[], Some(true)),
            ),
            // No candidate: 0 and 0.
            (None, example(&["Oslo"], &[], Some(false))),
            // A pattern matches: 1 and 1.
            (Some("in 1889"), example(&["x"], &[r"18\d\d"], None)),
        ];
        let mut totals = Totals::default();
        for (predicted, ex) in &cases {
            let matcher = AnswerMatcher::new(ex).expect("a valid matcher");
            totals.add(*predicted, ex, &matcher);
        }
        let ((em, f1), in_corpus) = totals.means();
        // EM (1 + 0 + 0 + 1) / 4; F1 (1 + 2/3 + 0 + 1) / 4; in corpus: the first two.
        assert!((em - 0.5).abs() < 1e-12, "{em}");
        assert!((f1 - (8.0 / 3.0) / 4.0).abs() < 1e-12, "{f1}");
        let (ic_em, ic_f1) = in_corpus.expect("in_corpus was given");
        assert!((ic_em - 0.5).abs() < 1e-12);
        assert!((ic_f1 - (5.0 / 3.0) / 2.0).abs() < 1e-12, "{ic_f1}");
        let mut none = Totals::default();
        let ex = example(&["Oslo"], &[], None);
        none.add(Some("Oslo"), &ex, &AnswerMatcher::new(&ex).unwrap());
        assert_eq!(none.means(), ((1.0, 1.0), None));
    }
}
