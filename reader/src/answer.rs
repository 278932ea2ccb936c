//! Answering (p(y|x) marginalized over retrieved passages) and REALM's QA fine-tuning loss.

use std::collections::{HashMap, HashSet};

use realm_retriever::eval::normalize_answer;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::reader::Reader;

/// The answer to a question, marginalized over the retrieved passages.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The answer text, copied from a passage.
    pub text: String,
    /// p(y|x) = Σ_z p(z|x) · p(y|z,x).
    pub prob: f64,
    /// One entry per passage, in the order given.
    pub evidence: Vec<Evidence>,
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
    /// The passage's most probable span (None when the passage holds no span).
    pub span: Option<String>,
    /// p(best span|z,x).
    pub span_prob: f64,
    /// p(y|z,x) for the returned answer y: the sum of p(s|z,x) over the spans of this
    /// passage whose normalized text equals y's.
    pub p_answer_given_z: f64,
}

impl Reader {
    /// p(y|x) and the best answer from retrieved passages `(id, title, text, p(z|x))`
    /// (no gradient, dropout off).
    ///
    /// Candidates are the `top_spans_per_passage` best spans of each passage, grouped by
    /// normalized text; each candidate's p(y|x) sums p(z|x) · p(s|z,x) over every span of
    /// every passage whose normalized text matches, and the most probable candidate wins
    /// (ties: the one met first, passages in the order given, spans best first).
    pub fn answer(&self, question: &str, passages: &[(u64, &str, &str, f32)]) -> Result<Answer> {
        if passages.is_empty() {
            return Err(Error::NoPassages);
        }
        for &(id, _, _, p) in passages {
            if !p.is_finite() || p < 0.0 {
                return Err(Error::InvalidInput {
                    reason: format!(
                        "p(z|x) of passage {id} is {p}, not a finite non-negative number"
                    ),
                });
            }
        }
        let texts: Vec<&str> = passages.iter().map(|p| p.2).collect();
        let scores = tch::no_grad(|| self.span_scores(question, &texts, false))?;
        // Per passage: normalized text -> Σ p(s|z,x), the spans best first, their probs.
        let mut by_text: Vec<HashMap<String, f64>> = Vec::with_capacity(passages.len());
        let mut ranked: Vec<Vec<(usize, f64)>> = Vec::with_capacity(passages.len());
        for (spans, text) in scores.passages.iter().zip(&texts) {
            let log_probs = Vec::<f32>::try_from(&spans.log_probs.f_to_device(Device::Cpu)?)?;
            let mut sums: HashMap<String, f64> = HashMap::new();
            let mut order: Vec<(usize, f64)> = Vec::with_capacity(log_probs.len());
            for (i, (span, &lp)) in spans.spans.iter().zip(&log_probs).enumerate() {
                let p = f64::from(lp).exp();
                order.push((i, p));
                let key = normalize_answer(span.text(text));
                if !key.is_empty() {
                    *sums.entry(key).or_insert(0.0) += p;
                }
            }
            order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            by_text.push(sums);
            ranked.push(order);
        }
        let marginal = |key: &str| -> f64 {
            passages
                .iter()
                .zip(&by_text)
                .map(|(p, sums)| f64::from(p.3) * sums.get(key).copied().unwrap_or(0.0).min(1.0))
                .sum()
        };
        let mut best: Option<(String, String, f64)> = None;
        let mut seen: HashSet<String> = HashSet::new();
        for (z, order) in ranked.iter().enumerate() {
            let spans = &scores.passages[z].spans;
            for &(i, _) in order.iter().take(self.cfg.top_spans_per_passage) {
                let raw = spans[i].text(texts[z]);
                let key = normalize_answer(raw);
                if key.is_empty() || !seen.insert(key.clone()) {
                    continue;
                }
                let prob = marginal(&key);
                if best.as_ref().is_none_or(|b| prob > b.2) {
                    best = Some((raw.to_owned(), key, prob));
                }
            }
        }
        let Some((text, key, prob)) = best else {
            return Err(Error::NoCandidate {
                passages: passages.len(),
            });
        };
        let evidence = passages
            .iter()
            .enumerate()
            .map(|(z, &(passage_id, title, body, p_z))| {
                let top = ranked[z].first();
                Evidence {
                    passage_id,
                    title: title.to_owned(),
                    p_z: f64::from(p_z),
                    span: top.map(|&(i, _)| scores.passages[z].spans[i].text(body).to_owned()),
                    span_prob: top.map_or(0.0, |&(_, p)| p),
                    p_answer_given_z: by_text[z].get(&key).copied().unwrap_or(0.0).min(1.0),
                }
            })
            .collect();
        Ok(Answer {
            text,
            prob,
            evidence,
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
        let mut terms = Vec::new();
        for (z, (spans, hits)) in scores.passages.iter().zip(&matching).enumerate() {
            if hits.is_empty() {
                continue;
            }
            let idx = Tensor::f_from_slice(hits)?.f_to_device(self.cfg.device)?;
            let log_p_y = spans
                .log_probs
                .f_index_select(0, &idx)?
                .f_logsumexp(&[0i64][..], false)?;
            terms.push(log_p_y + log_p_z.f_get(z as i64)?);
        }
        let total = Tensor::f_stack(&terms, 0)?.f_logsumexp(&[0i64][..], false)?;
        Ok(Some(total.f_neg()?))
    }
}
