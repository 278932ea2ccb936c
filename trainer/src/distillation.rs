//! Distillation from the reader into the phrase encoder (DensePhrases' third loss, Lee et
//! al. 2021 §4.2): the query-agnostic phrase model learns from the query-aware reader. For a
//! question and the passage it reads, the reader ([`realm_reader`], cross-attention over
//! `[CLS] question [SEP] passage [SEP]`) gives a distribution over the passage's spans; summed
//! over the spans that start at each word, and over those that end at each word, it gives a
//! start and an end distribution over the passage's words. The phrase model's start
//! distribution is the softmax of q_start · s_i over the words of the same passage, and
//! likewise for ends; the loss is the KL divergence from the reader's to the phrase model's,
//! averaged over the two sides. Words are matched by their byte offsets in the passage text,
//! so the two models' tokenizations and token limits need not agree: the reader's mass on
//! words the phrase encoding does not hold is dropped and the rest renormalized.

use std::collections::HashMap;

use realm_reader::{Reader, ReaderConfig};
use tch::{Kind, Tensor};

use crate::context::Context;
use crate::error::{Error, Result};

/// The reader a phrase run distills from, and the weight of its loss.
pub(crate) struct Teacher {
    reader: Reader,
    weight: f64,
}

/// The reader's start and end distributions over one passage's words.
pub(crate) struct TeacherTargets {
    /// Over the phrase encoding's word starts, in their order; sums to 1.
    pub start: Vec<f32>,
    /// Over its word ends, in their order; sums to 1.
    pub end: Vec<f32>,
}

impl Teacher {
    /// The database's current reader, when `config.distill` is above 0; an error when there
    /// is none.
    pub(crate) fn load(ctx: &Context) -> Result<Option<Teacher>> {
        let weight = ctx.config.distill;
        if weight <= 0.0 {
            return Ok(None);
        }
        let cfg = ReaderConfig {
            device: ctx.device(),
            ..ReaderConfig::default()
        };
        let Some((_, reader)) = realm_reader::store::current_reader(&ctx.retriever, cfg)? else {
            return Err(Error::NoData {
                reason: "distillation learns from the database's current reader, and it has none; train one first (train --mode qa or spans)".to_owned(),
            });
        };
        Ok(Some(Teacher { reader, weight }))
    }

    /// The weight of the distillation loss.
    pub(crate) fn weight(&self) -> f64 {
        self.weight
    }

    /// The reader's distributions for `question` over `text`'s words that start at
    /// `start_bytes` and end at `end_bytes` (no dropout, no gradient); `None` when the reader
    /// puts no mass on any of them on one side.
    pub(crate) fn targets(
        &self,
        question: &str,
        text: &str,
        start_bytes: &[u32],
        end_bytes: &[u32],
    ) -> Result<Option<TeacherTargets>> {
        let scores = tch::no_grad(|| self.reader.span_scores(question, &[text], false))?;
        let Some(passage) = scores.passages.first() else {
            return Ok(None);
        };
        let probabilities = Vec::<f32>::try_from(
            passage
                .log_probs
                .f_to_kind(Kind::Float)?
                .f_exp()?
                .f_to_device(tch::Device::Cpu)?,
        )?;
        let mut by_start: HashMap<u32, f32> = HashMap::new();
        let mut by_end: HashMap<u32, f32> = HashMap::new();
        for (span, p) in passage.spans.iter().zip(probabilities) {
            *by_start.entry(span.start_byte as u32).or_default() += p;
            *by_end.entry(span.end_byte as u32).or_default() += p;
        }
        let side = |bytes: &[u32], mass: &HashMap<u32, f32>| -> Option<Vec<f32>> {
            let p: Vec<f32> = bytes
                .iter()
                .map(|b| mass.get(b).copied().unwrap_or(0.0))
                .collect();
            let total: f32 = p.iter().sum();
            (total > 1e-6).then(|| p.into_iter().map(|x| x / total).collect())
        };
        Ok(side(start_bytes, &by_start)
            .zip(side(end_bytes, &by_end))
            .map(|(start, end)| TeacherTargets { start, end }))
    }
}

/// KL(p ‖ softmax(logits)) = Σ p (log p − log_softmax(logits)), with 0 · log 0 = 0; `p` a
/// distribution over the `[n]` logits.
pub(crate) fn kl_divergence(p: &[f32], logits: &Tensor) -> Result<Tensor> {
    let target = Tensor::f_from_slice(p)?.f_to_device(logits.device())?;
    let log_q = logits.f_log_softmax(0, Kind::Float)?;
    let log_p = target.f_clamp_min(1e-12)?.f_log()?;
    Ok((&target * (log_p - log_q)).f_sum(Kind::Float)?)
}
