//! QA training (REALM's open-QA fine-tuning, §3.4): the document index is frozen as in
//! query-side training; per question the current query tower retrieves the top
//! `reader_passages` passages of the pinned generation, and the reader's marginal loss
//! −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x) trains both the reader and (through log p(z|x)) the
//! query tower. At the end the query tower is attached to the generation and the reader is
//! stored and made current ([`realm_reader::store`]).

use realm_retriever::eval::{QaExample, normalize_answer};
use tch::{Kind, Tensor};

use crate::context::{Context, INFERENCE_BATCH};
use crate::error::{Error, Result};
use crate::evaluation::EvalSet;
use crate::sampling::batch_indices;
use crate::towers::ReaderTower;

/// The note of query-encoder versions attached by QA training.
pub const QA_NOTE: &str = "qa training";

/// A QA training question with its answer strings.
pub(crate) struct QaPair {
    pub question: String,
    pub answers: Vec<String>,
}

/// What one QA step did.
pub(crate) struct QaStep {
    /// The mean loss (NaN when every question was skipped, with no update).
    pub loss: f64,
    pub questions: usize,
    /// Questions none of whose passages holds an answer span.
    pub skipped: usize,
}

/// Exact match of the reader on held-out questions.
pub(crate) struct ExactMatch {
    pub questions: usize,
    pub em: f64,
    /// On the `in_corpus` questions, when some are marked.
    pub in_corpus_em: Option<f64>,
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

    /// Retrieves each question's passages with the current query tower, scores them with
    /// gradient, and minimizes the reader's marginal loss.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<QaStep> {
        let idx = batch_indices(ctx.config.seed, self.pairs.len(), ctx.batch, step);
        let questions: Vec<&str> = idx
            .iter()
            .map(|&i| self.pairs[i].question.as_str())
            .collect();
        let ranked = Qa::retrieve(ctx, &questions)?;
        let k = ranked.first().map_or(0, Vec::len);
        let skip_all = |reader: &mut ReaderTower, ctx: &mut Context| {
            ctx.query.opt.zero_grad();
            reader.opt.zero_grad();
            QaStep {
                loss: f64::NAN,
                questions: idx.len(),
                skipped: idx.len(),
            }
        };
        if k == 0 {
            return Ok(skip_all(&mut self.reader, ctx));
        }
        let mut texts: Vec<Vec<String>> = Vec::with_capacity(ranked.len());
        for row in &ranked {
            let mut passage_texts = Vec::with_capacity(k);
            for &(id, _) in row {
                let p = ctx.search.storage().get(id)?;
                passage_texts.push(p.map(|p| p.text).unwrap_or_default());
            }
            texts.push(passage_texts);
        }
        let flat: Vec<u64> = ranked.iter().flatten().map(|&(id, _)| id).collect();
        let d = ctx
            .search
            .vectors_of(&flat)?
            .view([idx.len() as i64, k as i64, -1]);
        ctx.seed_dropout(step);
        let q = ctx.queries_t(&questions, true)?;
        let log_p_z = (d.matmul(&q.unsqueeze(2)).squeeze_dim(2) * ctx.config.scale)
            .log_softmax(1, Kind::Float);
        let mut losses = Vec::new();
        for (r, &i) in idx.iter().enumerate() {
            let passages: Vec<&str> = texts[r].iter().map(String::as_str).collect();
            if let Some(loss) = self.reader.reader.qa_loss(
                questions[r],
                &passages,
                &log_p_z.get(r as i64),
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

    /// Exact match of the reader over the current query tower's top `reader_passages`
    /// passages, on the held-out questions with answer strings; `None` when there are none.
    pub(crate) fn exact_match(&self, ctx: &Context, eval: &EvalSet) -> Result<Option<ExactMatch>> {
        let items: Vec<usize> = (0..eval.len())
            .filter(|&i| {
                eval.answers(i)
                    .iter()
                    .any(|a| !normalize_answer(a).is_empty())
            })
            .collect();
        if items.is_empty() {
            return Ok(None);
        }
        let reader = &self.reader.reader;
        let (mut correct, mut in_corpus, mut in_corpus_correct) = (0usize, 0usize, 0usize);
        for chunk in items.chunks(INFERENCE_BATCH) {
            let questions: Vec<&str> = chunk.iter().map(|&i| eval.question(i)).collect();
            let ranked = Qa::retrieve(ctx, &questions)?;
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
                    Ok(answer) => {
                        let got = normalize_answer(&answer.text);
                        eval.answers(i).iter().any(|a| normalize_answer(a) == got)
                    }
                    Err(realm_reader::Error::NoCandidate { .. }) => false,
                    Err(e) => return Err(e.into()),
                };
                correct += usize::from(hit);
                if eval.in_corpus(i) == Some(true) {
                    in_corpus += 1;
                    in_corpus_correct += usize::from(hit);
                }
            }
        }
        let n = items.len();
        Ok(Some(ExactMatch {
            questions: n,
            em: correct as f64 / n as f64,
            in_corpus_em: (in_corpus > 0).then(|| in_corpus_correct as f64 / in_corpus as f64),
        }))
    }
}
