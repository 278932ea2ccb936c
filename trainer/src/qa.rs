//! QA training (REALM's open-QA fine-tuning, §3.4): the document index is frozen as in
//! query-side training; per question the current query tower retrieves the top
//! `reader_passages` passages of the pinned generation, and the reader's marginal loss
//! −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x) trains both the reader and (through log p(z|x)) the
//! query tower. At the end the query tower is attached to the generation and the reader is
//! stored and made current ([`realm_reader::store`]).

use realm_reader::Reader;
use realm_retriever::eval::{AnswerMatcher, QaExample, normalize_answer};
use tch::{Kind, Tensor};

use crate::context::{Context, INFERENCE_BATCH};
use crate::error::{Error, Result};
use crate::evaluation::{EvalSet, ExactMatch, ExactMatchTally};
use crate::sampling::batch_indices;
use crate::towers::ReaderTower;

/// The note of query-encoder versions attached by QA training.
pub const QA_NOTE: &str = "qa training";

/// A QA training question with its answer strings.
pub(crate) struct QaPair {
    pub question: String,
    pub answers: Vec<String>,
    /// Finds the answers in passages (the whole-word rule of retrieval accuracy).
    matcher: AnswerMatcher,
}

/// What one QA step did.
pub(crate) struct QaStep {
    /// The mean loss (NaN when every question was skipped, with no update).
    pub loss: f64,
    pub questions: usize,
    /// Questions none of whose passages holds an answer span.
    pub skipped: usize,
}

/// The state of a QA run.
pub(crate) struct Qa {
    pub reader: ReaderTower,
    pub pairs: Vec<QaPair>,
    /// Questions dropped because they have no answer string.
    pub dropped: usize,
}

impl Qa {
    /// Keeps the examples with an answer string; an error when none has one.
    pub(crate) fn new(reader: ReaderTower, train: Vec<QaExample>) -> Result<Qa> {
        let mut pairs = Vec::new();
        let mut dropped = 0;
        for example in train {
            let answers: Vec<String> = example
                .answers
                .into_iter()
                .filter(|a| !normalize_answer(a).is_empty())
                .collect();
            if answers.is_empty() {
                dropped += 1;
            } else {
                pairs.push(QaPair {
                    question: example.question,
                    matcher: AnswerMatcher::from_answers(&answers),
                    answers,
                });
            }
        }
        if pairs.is_empty() {
            return Err(Error::NoData {
                reason: format!(
                    "qa training needs question-answer pairs with answer strings, and none of the {dropped} given has one"
                ),
            });
        }
        Ok(Qa {
            reader,
            pairs,
            dropped,
        })
    }

    /// The passages question `pair` trains on, from its ranked top `candidates`
    /// (`row`, with the texts): those that hold an answer (at most `k` − 1 when `k` > 1),
    /// then the best-ranked others, `k` in all at most, in rank order. Empty when none holds
    /// an answer.
    fn reading_set(pair: &QaPair, row: &[(u64, f32)], texts: &[String], k: usize) -> Vec<usize> {
        let holds: Vec<bool> = texts.iter().map(|t| pair.matcher.matches(t)).collect();
        let most_positives = if k > 1 { k - 1 } else { 1 };
        let mut chosen: Vec<usize> = (0..row.len())
            .filter(|&i| holds[i])
            .take(most_positives)
            .collect();
        if chosen.is_empty() {
            return chosen;
        }
        let negatives = k - chosen.len();
        chosen.extend((0..row.len()).filter(|&i| !holds[i]).take(negatives));
        chosen.sort_unstable();
        chosen
    }

    /// Retrieves each question's top `candidates` passages with the current query tower,
    /// reads those that hold an answer and the hard negatives ([`Qa::reading_set`]), scores
    /// them with gradient, and minimizes the reader's marginal loss, with p(z|x) over the
    /// passages read.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<QaStep> {
        let idx = batch_indices(ctx.config.seed, self.pairs.len(), ctx.batch, step);
        let questions: Vec<&str> = idx
            .iter()
            .map(|&i| self.pairs[i].question.as_str())
            .collect();
        let k = ctx.config.reader_passages;
        let depth = ctx.config.candidates.max(k);
        let queries = ctx.query.encoder.encode(&questions)?;
        let ranked = ctx.search.top_k(&queries, depth)?;
        let skip_all = |reader: &mut ReaderTower, ctx: &mut Context| {
            ctx.query.opt.zero_grad();
            reader.opt.zero_grad();
            QaStep {
                loss: f64::NAN,
                questions: idx.len(),
                skipped: idx.len(),
            }
        };
        let mut reads: Vec<(Vec<u64>, Vec<String>)> = Vec::with_capacity(ranked.len());
        for (row, &i) in ranked.iter().zip(&idx) {
            let mut passage_texts = Vec::with_capacity(row.len());
            for &(id, _) in row {
                let p = ctx.search.storage().get(id)?;
                passage_texts.push(p.map(|p| p.text).unwrap_or_default());
            }
            let chosen = Qa::reading_set(&self.pairs[i], row, &passage_texts, k);
            reads.push((
                chosen.iter().map(|&c| row[c].0).collect(),
                chosen
                    .into_iter()
                    .map(|c| std::mem::take(&mut passage_texts[c]))
                    .collect(),
            ));
        }
        if reads.iter().all(|(ids, _)| ids.is_empty()) {
            return Ok(skip_all(&mut self.reader, ctx));
        }
        ctx.seed_dropout(step);
        let q = ctx.queries_t(&questions, true)?;
        let mut losses = Vec::new();
        for (r, &i) in idx.iter().enumerate() {
            let (ids, texts) = &reads[r];
            if ids.is_empty() {
                continue;
            }
            let d = ctx.search.vectors_of(ids)?;
            let log_p_z =
                (d.matmul(&q.get(r as i64)) * ctx.config.scale).log_softmax(0, Kind::Float);
            let passages: Vec<&str> = texts.iter().map(String::as_str).collect();
            if let Some(loss) = self.reader.reader.qa_loss(
                questions[r],
                &passages,
                &log_p_z,
                &self.pairs[i].answers,
                true,
            )? {
                losses.push(loss);
            }
        }
        if losses.is_empty() {
            return Ok(skip_all(&mut self.reader, ctx));
        }
        let skipped = idx.len() - losses.len();
        let loss = Tensor::stack(&losses, 0).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        self.reader.step(ctx.reader_lr(step));
        let lr = ctx.lr(step);
        ctx.query.step(lr);
        Ok(QaStep {
            loss: value,
            questions: idx.len(),
            skipped,
        })
    }
}

/// Exact match of `reader` over the current query tower's top `reader_passages` passages,
/// on the held-out questions with answer strings; `None` when there are none.
pub(crate) fn exact_match(
    ctx: &Context,
    reader: &Reader,
    eval: &EvalSet,
) -> Result<Option<ExactMatch>> {
    let items = eval.answerable();
    let mut tally = ExactMatchTally::default();
    for chunk in items.chunks(INFERENCE_BATCH) {
        let questions: Vec<&str> = chunk.iter().map(|&i| eval.question(i)).collect();
        let ranked = retrieve(ctx, &questions)?;
        if ranked.first().is_none_or(Vec::is_empty) {
            return Ok(None);
        }
        for (row, &i) in ranked.iter().zip(chunk) {
            let scores: Vec<f32> = row.iter().map(|&(_, s)| s).collect();
            let p_z = reader.passage_probs(&scores);
            let mut passages = Vec::with_capacity(row.len());
            for (&(id, _), p) in row.iter().zip(p_z) {
                let passage = ctx.search.storage().get(id)?;
                let (title, text) = passage.map(|p| (p.title, p.text)).unwrap_or_default();
                passages.push((id, title, text, p));
            }
            let borrowed: Vec<(u64, &str, &str, f32)> = passages
                .iter()
                .map(|(id, title, text, p)| (*id, title.as_str(), text.as_str(), *p))
                .collect();
            let hit = match reader.answer(eval.question(i), &borrowed) {
                Ok(answer) => eval.matches(i, &answer.text),
                Err(realm_reader::Error::NoCandidate { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            tally.add(hit, eval.in_corpus(i));
        }
    }
    Ok(tally.finish())
}

/// The current query tower's top `reader_passages` passages of the pinned generation for
/// each question (best first, ties by passage id, no gradient), cut to a common length.
fn retrieve(ctx: &Context, questions: &[&str]) -> Result<Vec<Vec<(u64, f32)>>> {
    let queries = ctx.query.encoder.encode(questions)?;
    let mut ranked = ctx.search.top_k(&queries, ctx.config.reader_passages)?;
    let k = ranked.iter().map(Vec::len).min().unwrap_or(0);
    for row in &mut ranked {
        row.truncate(k);
    }
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(answer: &str) -> QaPair {
        QaPair {
            question: "q".to_owned(),
            answers: vec![answer.to_owned()],
            matcher: AnswerMatcher::from_answers(&[answer]),
        }
    }

    fn ranked(texts: &[&str]) -> (Vec<(u64, f32)>, Vec<String>) {
        (
            (0..texts.len())
                .map(|i| (i as u64, 1.0 - i as f32 / 10.0))
                .collect(),
            texts.iter().map(|t| t.to_string()).collect(),
        )
    }

    #[test]
    fn the_reading_set_holds_the_positives_of_the_candidates_and_hard_negatives() {
        let (row, texts) = ranked(&[
            "no answer here",
            "still nothing",
            "Oslo is the capital",
            "nothing",
            "in Oslo",
            "Oslo again",
            "Oslo once more",
            "empty",
        ]);
        let p = pair("Oslo");
        // Positives beyond the top k count, at most k − 1 of them; the best-ranked
        // negatives fill up; rank order.
        assert_eq!(Qa::reading_set(&p, &row, &texts, 3), vec![0, 2, 4]);
        assert_eq!(Qa::reading_set(&p, &row, &texts, 5), vec![0, 2, 4, 5, 6]);
        assert_eq!(
            Qa::reading_set(&p, &row, &texts, 8),
            vec![0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(Qa::reading_set(&p, &row, &texts, 1), vec![2]);
        // "Oslofjord" is not "Oslo": whole words only; no positive, nothing to read.
        let (row, texts) = ranked(&["the Oslofjord", "nothing"]);
        assert!(Qa::reading_set(&p, &row, &texts, 4).is_empty());
    }
}
