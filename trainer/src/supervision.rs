//! Distant supervision (query-side, dual and phrase training): the generation's own query encoder
//! retrieves each training question's top candidates; those an answer matches are its
//! positives, the others its hard negatives.

use std::collections::HashMap;

use realm_retriever::SearchMode;
use realm_retriever::eval::{AnswerMatcher, QaExample, normalize_answer};
use realm_storage::Passage;

use crate::context::{Context, INFERENCE_BATCH};
use crate::error::{Error, Result};

/// The pairs of `train` with an answer string (phrase modes match answer text, not
/// patterns); an error when some were given and none has one.
pub(crate) fn with_answer_strings(ctx: &Context, train: Vec<QaExample>) -> Result<Vec<QaExample>> {
    let given = train.len();
    let kept: Vec<QaExample> = train
        .into_iter()
        .filter(|e| e.answers.iter().any(|a| !normalize_answer(a).is_empty()))
        .collect();
    if kept.is_empty() && given > 0 {
        return Err(Error::NoData {
            reason: format!(
                "{} training needs question-answer pairs with answer strings, and none of the {given} given has one",
                ctx.config.mode
            ),
        });
    }
    Ok(kept)
}

/// A question with its distant supervision.
pub(crate) struct Supervised {
    pub question: String,
    /// The answer strings (phrase training's targets).
    pub answers: Vec<String>,
    pub matcher: AnswerMatcher,
    /// Retrieved passages that contain an answer, best first.
    pub positives: Vec<u64>,
    /// Retrieved passages that do not, best first.
    pub negatives: Vec<u64>,
}

/// The supervised questions of a run.
pub(crate) struct Supervision {
    pub examples: Vec<Supervised>,
    /// Questions dropped for want of a positive passage.
    pub dropped: usize,
}

impl Supervision {
    /// Supervises `train` against the top `config.candidates` passages of the generation in
    /// use; an error when no question keeps a positive passage.
    pub(crate) fn new(ctx: &Context, train: &[QaExample]) -> Result<Supervision> {
        let k = ctx.config.candidates;
        let storage = ctx.search.storage();
        let mut cache: HashMap<u64, Option<Passage>> = HashMap::new();
        let mut examples = Vec::new();
        let mut dropped = 0;
        for chunk in train.chunks(INFERENCE_BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|e| e.question.as_str()).collect();
            let ranked = ctx.search.rank_batch(&texts, k, SearchMode::Dense)?;
            for (example, row) in chunk.iter().zip(ranked) {
                let matcher = AnswerMatcher::new(example)?;
                let mut positives = Vec::new();
                let mut negatives = Vec::new();
                for (id, _) in row {
                    let passage = match cache.get(&id) {
                        Some(p) => p.clone(),
                        None => {
                            let p = storage.get(id)?;
                            cache.insert(id, p.clone());
                            p
                        }
                    };
                    let Some(passage) = passage else { continue };
                    if matcher.matches(&passage.text) {
                        positives.push(id);
                    } else {
                        negatives.push(id);
                    }
                }
                if positives.is_empty() {
                    dropped += 1;
                } else {
                    examples.push(Supervised {
                        question: example.question.clone(),
                        answers: example.answers.clone(),
                        matcher,
                        positives,
                        negatives,
                    });
                }
            }
        }
        if examples.is_empty() {
            if train.is_empty() {
                return Err(Error::NoData {
                    reason: format!(
                        "{} training needs question-answer pairs, and none were given",
                        ctx.config.mode
                    ),
                });
            }
            return Err(Error::NoPositives {
                examples: train.len(),
                candidates: k,
            });
        }
        Ok(Supervision { examples, dropped })
    }

    /// The questions of 1-based `step`'s batch.
    pub(crate) fn batch(&self, ctx: &Context, step: u64) -> Vec<usize> {
        crate::sampling::batch_indices(ctx.config.seed, self.examples.len(), ctx.batch, step)
    }
}
