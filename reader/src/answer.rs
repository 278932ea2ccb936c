//! Answering (candidates scored across the retrieved passages, see `candidates`) and REALM's
//! QA fine-tuning loss.

use realm_retriever::eval::normalize_answer;
use tch::{Device, Kind, Tensor};

use crate::candidates::{AnswerOptions, PassageSpanProbs, rank};
use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::spans::{SpanNormalization, SpanScores};

/// The answer to a question, scored across the retrieved passages.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The answer text, copied from a passage.
    pub text: String,
    /// The answer's score under [`AnswerOptions::marginalization`]: with
    /// [`crate::Marginalization::Sum`] (the default) REALM's p(y|x) = Σ_z p(z|x) · p(y|z,x),
    /// with [`crate::Marginalization::Max`] max_z p(z|x) · p(y|z,x).
    pub prob: f64,
    /// One entry per passage, in the order given.
    pub evidence: Vec<Evidence>,
    /// The [`AnswerOptions::top_answers`] best distinct answers (distinct normalized
    /// texts), best first, the first being `text`; each `prob` is its score divided by the
    /// sum of the scores of every candidate kept, so together they sum to at most 1.
    pub alternatives: Vec<Alternative>,
    /// How span scores were normalized across the passages
    /// ([`crate::AnswerOptions::span_normalization`], else the reader's own): it says what
    /// the evidence's probabilities are.
    pub span_normalization: SpanNormalization,
}

/// One of the ranked distinct answers of an [`Answer`].
#[derive(Clone, Debug, PartialEq)]
pub struct Alternative {
    /// The answer text, copied from a passage.
    pub text: String,
    /// Its score renormalized over the kept candidates.
    pub prob: f64,
}

/// What one passage contributes to an [`Answer`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// The passage's id, as given.
    pub passage_id: u64,
    /// The passage's title, as given.
    pub title: String,
    /// p(z|x) as given.
    pub p_z: f64,
    /// The passage's most probable span (None when the passage holds no span), whether or
    /// not it may be an answer.
    pub span: Option<String>,
    /// p(best span|z,x); with [`SpanNormalization::Joint`], p(best span, z|x).
    pub span_prob: f64,
    /// p(y|z,x) for the returned answer y: the sum of p(s|z,x) over the spans of this
    /// passage whose normalized text equals y's; with [`SpanNormalization::Joint`], the sum
    /// of p(s,z|x), so that these sum over passages to p(y|x).
    pub p_answer_given_z: f64,
}

/// Refuses an empty passage list and a p(z|x) that is not a finite non-negative number.
fn check_passages(passages: &[(u64, &str, &str, f32)]) -> Result<()> {
    if passages.is_empty() {
        return Err(Error::NoPassages);
    }
    for &(id, _, _, p) in passages {
        if !p.is_finite() || p < 0.0 {
            return Err(Error::InvalidInput {
                reason: format!("p(z|x) of passage {id} is {p}, not a finite non-negative number"),
            });
        }
    }
    Ok(())
}

impl Reader {
    /// [`Reader::answer_with`] with [`AnswerOptions::default`].
    pub fn answer(&self, question: &str, passages: &[(u64, &str, &str, f32)]) -> Result<Answer> {
        self.answer_with(question, passages, &AnswerOptions::default())
    }

    /// The best answer and its alternatives from retrieved passages
    /// `(id, title, text, p(z|x))` (no gradient, dropout off): the passages' span
    /// log-probabilities ([`Reader::span_scores`]) ranked by [`Reader::answer_from_scores`].
    pub fn answer_with(
        &self,
        question: &str,
        passages: &[(u64, &str, &str, f32)],
        options: &AnswerOptions,
    ) -> Result<Answer> {
        check_passages(passages)?;
        options.validate()?;
        let texts: Vec<&str> = passages.iter().map(|p| p.2).collect();
        let scores = tch::no_grad(|| self.span_scores(question, &texts, false))?;
        self.answer_from_scores(question, passages, &scores, options)
    }

    /// The best answer from given span scores, one [`crate::PassageSpans`] per passage of
    /// `passages` (whose texts the spans' byte offsets refer to).
    ///
    /// Each passage offers its `top_spans_per_passage` most probable spans that may be
    /// answers (see [`AnswerOptions`]: at most `max_answer_words` words, not stop words or
    /// punctuation alone, not the question's own words unless nothing else is left).
    /// Candidates are grouped by normalized text; p(y|z,x) sums p(s|z,x) over every span of
    /// passage z with that text, and a candidate's score combines p(z|x) · p(y|z,x) over
    /// passages as [`AnswerOptions::marginalization`] says. The best score wins (ties: the
    /// one met first, passages in the order given, spans best first).
    ///
    /// # Errors
    ///
    /// [`Error::NoCandidate`] when no span of any passage may be an answer;
    /// [`Error::InvalidInput`] when `scores` does not hold one entry per passage.
    pub fn answer_from_scores(
        &self,
        question: &str,
        passages: &[(u64, &str, &str, f32)],
        scores: &SpanScores,
        options: &AnswerOptions,
    ) -> Result<Answer> {
        check_passages(passages)?;
        options.validate()?;
        if scores.passages.len() != passages.len() {
            return Err(Error::InvalidInput {
                reason: format!(
                    "span scores were given for {} passages, but {} passages were given",
                    scores.passages.len(),
                    passages.len()
                ),
            });
        }
        let normalization = options
            .span_normalization
            .unwrap_or(self.span_normalization);
        let mut per_passage = Vec::with_capacity(passages.len());
        for spans in &scores.passages {
            let tensor = match normalization {
                SpanNormalization::Passage => &spans.log_probs,
                SpanNormalization::Joint => &spans.logits,
            };
            let values = Vec::<f32>::try_from(&tensor.f_to_device(Device::Cpu)?)?;
            if values.len() != spans.spans.len() {
                return Err(Error::InvalidInput {
                    reason: format!(
                        "a passage has {} spans but {} span scores",
                        spans.spans.len(),
                        values.len()
                    ),
                });
            }
            per_passage.push(values);
        }
        let p_z: Vec<f64> = passages.iter().map(|p| f64::from(p.3)).collect();
        let (weights, span_probs) = span_probabilities(&per_passage, &p_z, normalization);
        let probs: Vec<PassageSpanProbs<'_>> = scores
            .passages
            .iter()
            .zip(passages)
            .zip(span_probs)
            .zip(weights)
            .map(
                |(((spans, &(_, _, text, _)), probs), weight)| PassageSpanProbs {
                    p_z: weight,
                    spans: spans
                        .spans
                        .iter()
                        .zip(probs)
                        .map(|(s, p)| (s.text(text), p))
                        .collect(),
                },
            )
            .collect();
        let ranking = rank(question, &probs, options, self.cfg.top_spans_per_passage);
        let Some(best) = ranking.candidates.first() else {
            return Err(Error::NoCandidate {
                passages: passages.len(),
            });
        };
        let total: f64 = ranking.candidates.iter().map(|c| c.score).sum();
        let alternatives = ranking
            .candidates
            .iter()
            .take(options.top_answers)
            .map(|c| Alternative {
                text: c.text.clone(),
                prob: if total > 0.0 { c.score / total } else { 0.0 },
            })
            .collect();
        let evidence = passages
            .iter()
            .zip(&probs)
            .enumerate()
            .map(|(z, (&(passage_id, title, _, p_z), spans))| Evidence {
                passage_id,
                title: title.to_owned(),
                p_z: f64::from(p_z),
                span: ranking.best_span[z].map(|(i, _)| spans.spans[i].0.to_owned()),
                span_prob: ranking.best_span[z].map_or(0.0, |(_, p)| p),
                p_answer_given_z: ranking.p_y_given_z[z]
                    .get(&best.key)
                    .copied()
                    .unwrap_or(0.0),
            })
            .collect();
        Ok(Answer {
            text: best.text.clone(),
            prob: best.score,
            evidence,
            alternatives,
            span_normalization: normalization,
        })
    }

    /// REALM's fine-tuning loss for one question,
    /// −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x), where S(z,y) holds the spans of z whose
    /// normalized text equals that of one of `answers`. `log_p_z` is a [k] tensor of
    /// log p(z|x) for the k passages (it may carry gradient from the query tower). `None`
    /// when no span of any passage matches any answer.
    pub fn qa_loss(
        &self,
        question: &str,
        passages: &[&str],
        log_p_z: &Tensor,
        answers: &[String],
        train: bool,
    ) -> Result<Option<Tensor>> {
        if passages.is_empty() {
            return Err(Error::NoPassages);
        }
        if log_p_z.size() != [passages.len() as i64] {
            return Err(Error::InvalidInput {
                reason: format!(
                    "log p(z|x) has shape {:?}, but {} passages were given",
                    log_p_z.size(),
                    passages.len()
                ),
            });
        }
        let targets: Vec<String> = answers
            .iter()
            .map(|a| normalize_answer(a))
            .filter(|a| !a.is_empty())
            .collect();
        if targets.is_empty() {
            return Ok(None);
        }
        let batch = self.tokenize_pairs(question, passages)?;
        let matching: Vec<Vec<i64>> = batch
            .spans
            .iter()
            .zip(passages)
            .map(|((spans, _), text)| {
                spans
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| targets.contains(&normalize_answer(s.text(text))))
                    .map(|(i, _)| i as i64)
                    .collect()
            })
            .collect();
        if matching.iter().all(Vec::is_empty) {
            return Ok(None);
        }
        let scores = self.score_batch(batch, train)?;
        let log_p_z = log_p_z
            .f_to_device(self.cfg.device)?
            .f_to_kind(Kind::Float)?;
        let log_probs = scores.log_probs_with(&log_p_z, self.span_normalization)?;
        let mut terms = Vec::new();
        for (log_probs, hits) in log_probs.iter().zip(&matching) {
            if hits.is_empty() {
                continue;
            }
            let idx = Tensor::f_from_slice(hits)?.f_to_device(self.cfg.device)?;
            terms.push(
                log_probs
                    .f_index_select(0, &idx)?
                    .f_logsumexp(&[0i64][..], false)?,
            );
        }
        let total = Tensor::f_stack(&terms, 0)?.f_logsumexp(&[0i64][..], false)?;
        Ok(Some(total.f_neg()?))
    }
}

/// Per passage, the weight its span probabilities are multiplied by, and those
/// probabilities, from each passage's span `scores` (log p(s|z,x) for
/// [`SpanNormalization::Passage`], raw scores for [`SpanNormalization::Joint`]) and the
/// passages' p(z|x). Per passage: the weight is p(z|x) and the probabilities are p(s|z,x).
/// Joint: the weight is 1 and the probabilities are p(s,z|x), one softmax over every span of
/// every passage of score + log p(z|x).
fn span_probabilities(
    scores: &[Vec<f32>],
    p_z: &[f64],
    normalization: SpanNormalization,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    match normalization {
        SpanNormalization::Passage => (
            p_z.to_vec(),
            scores
                .iter()
                .map(|s| s.iter().map(|&lp| f64::from(lp).exp()).collect())
                .collect(),
        ),
        SpanNormalization::Joint => {
            let shifted: Vec<Vec<f64>> = scores
                .iter()
                .zip(p_z)
                .map(|(s, &p)| s.iter().map(|&x| f64::from(x) + p.ln()).collect())
                .collect();
            let max = shifted
                .iter()
                .flatten()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = if max.is_finite() {
                shifted.iter().flatten().map(|x| (x - max).exp()).sum()
            } else {
                0.0
            };
            let probs = shifted
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|x| {
                            if total > 0.0 {
                                (x - max).exp() / total
                            } else {
                                0.0
                            }
                        })
                        .collect()
                })
                .collect();
            (vec![1.0; scores.len()], probs)
        }
    }
}
