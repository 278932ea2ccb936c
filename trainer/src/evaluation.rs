//! Held-out questions and the retrieval accuracy a run reports at each evaluation
//! ([`crate::Event::Eval`]): top-1, top-5 and top-20 accuracy of the current query tower
//! over the generation in use, through the same top-k as the query path.

use realm_retriever::eval::{AnswerMatcher, QaExample, TopKAccuracy, first_hit, normalize_answer};

use crate::context::{Context, INFERENCE_BATCH};
use crate::error::Result;

/// Top-1, top-5 and top-20 accuracy on the held-out questions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Accuracy {
    pub questions: usize,
    pub top1: f64,
    pub top5: f64,
    pub top20: f64,
}

/// Exact match on held-out questions (the reader's, or phrase answers').
pub(crate) struct ExactMatch {
    pub questions: usize,
    pub em: f64,
    /// On the `in_corpus` questions, when some are marked.
    pub in_corpus_em: Option<f64>,
}

/// Counts exact matches, overall and on the questions marked in the corpus.
#[derive(Default)]
pub(crate) struct ExactMatchTally {
    questions: usize,
    correct: usize,
    in_corpus: usize,
    in_corpus_correct: usize,
}

impl ExactMatchTally {
    /// Counts one question's answer: whether it matched, and whether the question is marked
    /// in the corpus.
    pub(crate) fn add(&mut self, hit: bool, in_corpus: Option<bool>) {
        self.questions += 1;
        self.correct += usize::from(hit);
        if in_corpus == Some(true) {
            self.in_corpus += 1;
            self.in_corpus_correct += usize::from(hit);
        }
    }

    /// The fractions; `None` without questions.
    pub(crate) fn finish(&self) -> Option<ExactMatch> {
        (self.questions > 0).then(|| ExactMatch {
            questions: self.questions,
            em: self.correct as f64 / self.questions as f64,
            in_corpus_em: (self.in_corpus > 0)
                .then(|| self.in_corpus_correct as f64 / self.in_corpus as f64),
        })
    }
}

/// A held-out question.
struct EvalQuestion {
    question: String,
    matcher: AnswerMatcher,
    answers: Vec<String>,
    in_corpus: Option<bool>,
}

/// The held-out questions of a run (possibly none).
pub(crate) struct EvalSet {
    questions: Vec<EvalQuestion>,
}

impl EvalSet {
    /// Prepares the answer matchers of `eval`; an error for an unusable answer pattern.
    pub(crate) fn new(eval: &[QaExample]) -> Result<EvalSet> {
        let questions = eval
            .iter()
            .map(|e| {
                Ok(EvalQuestion {
                    question: e.question.clone(),
                    matcher: AnswerMatcher::new(e)?,
                    answers: e.answers.clone(),
                    in_corpus: e.in_corpus,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EvalSet { questions })
    }

    pub(crate) fn len(&self) -> usize {
        self.questions.len()
    }

    pub(crate) fn question(&self, i: usize) -> &str {
        &self.questions[i].question
    }

    pub(crate) fn answers(&self, i: usize) -> &[String] {
        &self.questions[i].answers
    }

    pub(crate) fn in_corpus(&self, i: usize) -> Option<bool> {
        self.questions[i].in_corpus
    }

    /// The questions with an answer string (exact match needs one), by index.
    pub(crate) fn answerable(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| {
                self.answers(i)
                    .iter()
                    .any(|a| !normalize_answer(a).is_empty())
            })
            .collect()
    }

    /// Whether `answer` normalizes to one of question `i`'s answer strings.
    pub(crate) fn matches(&self, i: usize, answer: &str) -> bool {
        let got = normalize_answer(answer);
        self.answers(i).iter().any(|a| normalize_answer(a) == got)
    }

    /// Retrieval accuracy of the current query tower over the generation in use; `None`
    /// without held-out questions.
    pub(crate) fn accuracy(&self, ctx: &Context) -> Result<Option<Accuracy>> {
        if self.questions.is_empty() {
            return Ok(None);
        }
        let mut accuracy = TopKAccuracy::new();
        for chunk in self.questions.chunks(INFERENCE_BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|q| q.question.as_str()).collect();
            let queries = ctx.query.encoder.encode(&texts)?;
            let ranked = ctx.search.top_k(&queries, 20)?;
            for (q, row) in chunk.iter().zip(ranked) {
                let passages = ctx.passages(row.into_iter().map(|(id, _)| id))?;
                let hit = first_hit(&q.matcher, passages.iter().map(|p| p.text.as_str()));
                accuracy.add(hit, None);
            }
        }
        Ok(Some(Accuracy {
            questions: accuracy.questions(),
            top1: accuracy.accuracy(1),
            top5: accuracy.accuracy(5),
            top20: accuracy.accuracy(20),
        }))
    }
}
