//! Dual training (REALM's asynchronous index refresh): both towers train. Each step
//! re-embeds the stale index's top candidates with the fresh document tower and maximizes
//! the marginal likelihood of the passages that contain an answer. Every `refresh_every`
//! steps the towers go to the index builder ([`crate::builder`]), which rebuilds the corpus
//! into a new generation and publishes it while training continues against the previous one.

use std::collections::HashSet;

use realm_retriever::eval::{PreparedText, QaExample};
use tch::{Kind, Tensor};

use crate::context::Context;
use crate::error::Result;
use crate::supervision::Supervision;
use crate::towers::Tower;

/// The provenance note of generations built by dual training.
pub const DUAL_NOTE: &str = "dual training refresh";

/// The state of a dual run.
pub(crate) struct Dual {
    pub document: Tower,
    pub supervision: Supervision,
}

impl Dual {
    pub(crate) fn new(ctx: &Context, document: Tower, train: &[QaExample]) -> Result<Dual> {
        Ok(Dual {
            document,
            supervision: Supervision::new(ctx, train)?,
        })
    }

    /// Re-scores the stale index's candidates with the fresh document tower and maximizes
    /// the marginal likelihood of each question's positives (NaN, with no update, when no
    /// candidate of the batch contains an answer).
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<f64> {
        let examples = &self.supervision.examples;
        let idx = self.supervision.batch(ctx, step);
        let questions: Vec<&str> = idx.iter().map(|&i| examples[i].question.as_str()).collect();
        let frozen = ctx.query.encoder.encode(&questions)?;
        let ranked = ctx.search.top_k(&frozen, ctx.config.candidates)?;
        let mut seen = HashSet::new();
        let ids = ranked.iter().flatten().map(|&(id, _)| id);
        let passages = ctx.passages(ids.filter(|id| seen.insert(*id)))?;
        let (b, u) = (idx.len(), passages.len());
        let prepared: Vec<PreparedText<'_>> = passages
            .iter()
            .map(|p| PreparedText::new(&p.text))
            .collect();
        let mut positive = Vec::with_capacity(b * u);
        let mut rows_with_positive = Vec::new();
        for (r, &i) in idx.iter().enumerate() {
            let matcher = &examples[i].matcher;
            let before = positive.len();
            positive.extend(prepared.iter().map(|p| matcher.matches_prepared(p)));
            if positive[before..].iter().any(|&x| x) {
                rows_with_positive.push(r as i64);
            }
        }
        drop(prepared);
        if rows_with_positive.is_empty() {
            return Ok(f64::NAN);
        }
        let device = ctx.device();
        ctx.seed_dropout(step);
        let q = ctx.queries_t(&questions, true)?;
        let docs: Vec<(&str, &str)> = passages
            .iter()
            .map(|p| (p.title.as_str(), p.text.as_str()))
            .collect();
        let document = &mut self.document;
        let d = document
            .encoder
            .forward_t(&document.encoder.tokenize_docs(&docs)?, true);
        let keep = Tensor::from_slice(&rows_with_positive).to_device(device);
        let scores = (q.matmul(&d.tr()) * ctx.config.scale).index_select(0, &keep);
        let positive = Tensor::from_slice(&positive)
            .view([b as i64, u as i64])
            .to_device(device)
            .index_select(0, &keep);
        let all = scores.logsumexp([1], false);
        let pos = scores
            .masked_fill(&positive.logical_not(), f64::NEG_INFINITY)
            .logsumexp([1], false);
        let loss = (all - pos).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        let lr = ctx.lr(step);
        ctx.query.step(lr);
        document.step(lr);
        Ok(value)
    }
}
