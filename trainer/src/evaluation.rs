//! Held-out questions and the retrieval accuracy a run reports at each evaluation
//! ([`crate::Event::Eval`]): top-1, top-5 and top-20 accuracy of the current query tower
//! over the generation in use, through the same top-k as the query path.

use realm_retriever::eval::{AnswerMatcher, QaExample, TopKAccuracy, first_hit};

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
