//! Query-side training (DensePhrases, Atlas): the document tower is frozen, so the stored
//! vectors of the pinned generation stay valid, and only the query tower trains. Each
//! question's softmax runs over the batch's positives, its hard negatives and the positives
//! of the previous batches (pre-batch negatives). At the end the tower is attached to the
//! same generation as a new query-encoder version.

use realm_retriever::eval::QaExample;

use crate::context::Context;
use crate::error::Result;
use crate::sampling::batch_indices;
use crate::supervision::Supervision;

/// The note of query-encoder versions attached by query-side training.
pub const QUERY_SIDE_NOTE: &str = "query-side training";

/// The state of a query-side run.
pub(crate) struct QuerySide {
    pub supervision: Supervision,
}

impl QuerySide {
    pub(crate) fn new(ctx: &Context, train: &[QaExample]) -> Result<QuerySide> {
        Ok(QuerySide {
            supervision: Supervision::new(ctx, train)?,
        })
    }

    /// Cross-entropy of each question against its positive, with the batch's other
    /// positives, hard negatives and pre-batch positives as negatives.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<f64> {
        let examples = &self.supervision.examples;
        let n = examples.len();
        let seed = ctx.config.seed;
        let idx = batch_indices(seed, n, ctx.batch, step);
        let mut columns: Vec<u64> = idx.iter().map(|&i| examples[i].positives[0]).collect();
        for &i in &idx {
            columns.extend(examples[i].negatives.iter().take(ctx.config.hard_negatives));
        }
        for back in 1..=ctx.config.prebatch as u64 {
            if step > back {
                for i in batch_indices(seed, n, ctx.batch, step - back) {
                    columns.push(examples[i].positives[0]);
                }
            }
        }
        let b = idx.len();
        let c = columns.len();
        let mut mask = vec![false; b * c];
        for (r, &i) in idx.iter().enumerate() {
            let example = &examples[i];
            let target = columns[r];
            for (col, id) in columns.iter().enumerate() {
                if col != r && (*id == target || example.positives.contains(id)) {
                    mask[r * c + col] = true;
                }
            }
        }
        let candidates = ctx.search.vectors_of(&columns)?;
        let questions: Vec<&str> = idx.iter().map(|&i| examples[i].question.as_str()).collect();
        ctx.seed_dropout(step);
        let q = ctx.queries_t(&questions, true)?;
        let value = ctx.in_batch_loss(&q, &candidates, &mask);
        let lr = ctx.lr(step);
        ctx.query.step(lr);
        Ok(value)
    }
}
