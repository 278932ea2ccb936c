//! What every training mode works with: the retriever, the settings, the generation trained
//! against and the query tower (every mode trains one).

use realm_retriever::{Retriever, SearchSnapshot};
use realm_storage::Passage;
use tch::{Device, Kind, Tensor};

use crate::adamw::learning_rate;
use crate::config::TrainConfig;
use crate::error::Result;
use crate::sampling::seed_dropout;
use crate::towers::Tower;

/// Questions encoded per batch for distant supervision and evaluation.
pub(crate) const INFERENCE_BATCH: usize = 64;

/// The state every mode shares.
pub(crate) struct Context {
    pub retriever: Retriever,
    pub config: TrainConfig,
    /// The generation trained against: pinned for query-side and QA, moved forward by the
    /// modes that refresh the index when the builder publishes.
    pub search: SearchSnapshot,
    /// The query tower.
    pub query: Tower,
    /// The effective batch size (the configured one, capped at the number of examples).
    pub batch: usize,
}

impl Context {
    pub(crate) fn device(&self) -> Device {
        self.query.encoder.device()
    }

    /// The id of the generation in use.
    pub(crate) fn generation(&self) -> u64 {
        self.search.generation_id().unwrap_or(0)
    }

    /// The training step of the weights that built the generation in use.
    pub(crate) fn weights_step(&self) -> u64 {
        self.search
            .storage()
            .generation()
            .and_then(|m| m.spec.provenance.training_step)
            .unwrap_or(0)
    }

    /// Seeds libtorch's generator for the dropout of `step`.
    pub(crate) fn seed_dropout(&self, step: u64) {
        seed_dropout(self.config.seed, step);
    }

    /// The encoders' learning rate at `step`.
    pub(crate) fn lr(&self, step: u64) -> f64 {
        learning_rate(self.config.lr, step, self.config.steps)
    }

    /// The reader's learning rate at `step`.
    pub(crate) fn reader_lr(&self, step: u64) -> f64 {
        learning_rate(self.config.reader_lr, step, self.config.steps)
    }

    /// The query tower's embeddings of `texts`, with gradient and dropout when `train`.
    pub(crate) fn queries_t(&self, texts: &[&str], train: bool) -> Result<Tensor> {
        let tokens = self.query.encoder.tokenize(texts)?;
        Ok(self.query.encoder.forward_t(&tokens, train))
    }

    /// In-batch softmax cross-entropy, back-propagated: query `r` of `q` ([b, dim]) against
    /// the columns of `candidates` ([c, dim]), scaled by `config.scale`, with column `r` its
    /// target and the columns that `mask` (row-major [b, c]) marks left out. Returns the loss.
    pub(crate) fn in_batch_loss(&self, q: &Tensor, candidates: &Tensor, mask: &[bool]) -> f64 {
        let device = self.device();
        let (b, c) = (q.size()[0], candidates.size()[0]);
        let mask = Tensor::from_slice(mask).view([b, c]).to_device(device);
        let logits =
            (q.matmul(&candidates.tr()) * self.config.scale).masked_fill(&mask, f64::NEG_INFINITY);
        let targets = Tensor::arange(b, (Kind::Int64, device));
        let loss = logits.cross_entropy_for_logits(&targets);
        loss.backward();
        loss.double_value(&[])
    }

    /// The passages `ids` that the pinned snapshot holds, in order (missing ones skipped).
    pub(crate) fn passages(&self, ids: impl IntoIterator<Item = u64>) -> Result<Vec<Passage>> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(p) = self.search.storage().get(id)? {
                out.push(p);
            }
        }
        Ok(out)
    }
}
