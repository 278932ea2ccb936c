//! REALM MLM pre-training (Guu et al. 2020, §2–3): one salient span ([`crate::masking`]) of
//! each sampled corpus sentence is masked; the query tower retrieves `reader_passages`
//! passages of the stale index, never the sentence's own, which the fresh towers re-score;
//! with a null document (fixed score 0) the loss −log Σ_z p(z|x) Π_j p(y_j|z,x) trains the
//! query tower, the document tower and the reader. The index refreshes through the builder
//! as in dual training; [`crate::Event::RealmBatch`] reports the retrieval utility, and
//! held-out articles (`held_out`) are scored at each evaluation.

use rand::rngs::StdRng;
use realm_storage::Passage;
use tch::{Kind, Tensor};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::masking::{mask_one, salient_spans};
use crate::sampling::{SALT_REALM, batch_indices, rng, title_held_out};
use crate::towers::{ReaderTower, Tower};
use realm_retriever::sentences::sentences;

/// The provenance note of generations built by REALM training.
pub const REALM_NOTE: &str = "realm training";

/// At most this many held-out sentences are scored at each evaluation (the first ones in
/// passage order; all of them stay out of training).
pub const REALM_HELD_OUT_SCORED: usize = 256;

/// A corpus sentence with at least one salient span, and its passage.
struct RealmSentence {
    passage: u64,
    text: String,
}

/// A masked sentence ready to be read.
struct MaskedItem {
    /// The passage the sentence came from (never a candidate).
    passage: u64,
    /// The sentence with one `[MASK]` per masked token, for the query tower.
    query: String,
    /// The reader's token ids of the sentence, masked.
    ids: Vec<i64>,
    /// (position, true id) of each masked token.
    targets: Vec<(usize, i64)>,
}

/// What one REALM step did.
pub(crate) struct RealmStep {
    /// The mean loss (NaN, with no update, when no sentence could be masked).
    pub loss: f64,
    pub sentences: usize,
    /// The mean retrieval utility, log p(y|x) with retrieval minus with the null document.
    pub utility: f64,
}

/// Mean log-likelihoods of masked sentences with retrieval and with only the null document.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RealmScore {
    pub with_retrieval: f64,
    pub null_only: f64,
    pub sentences: usize,
}

/// The ids of the top `k` of a retrieved `row` (best first) other than `source`, the
/// passage the masked sentence came from: retrieving it would make the task trivial.
pub(crate) fn realm_candidates(row: &[(u64, f32)], source: u64, k: usize) -> Vec<u64> {
    row.iter()
        .map(|&(id, _)| id)
        .filter(|&id| id != source)
        .take(k)
        .collect()
}

/// The state of a REALM run.
pub(crate) struct Realm {
    pub document: Tower,
    pub reader: ReaderTower,
    /// The training sentences with a salient span.
    sentences: Vec<RealmSentence>,
    /// The held-out sentences with a salient span.
    held_out: Vec<RealmSentence>,
}

impl Realm {
    /// Collects the sentences with a salient span of every passage, holding out the
    /// articles [`title_held_out`] picks; an error when none is left to train on.
    pub(crate) fn new(ctx: &Context, document: Tower, reader: ReaderTower) -> Result<Realm> {
        let (seed, fraction) = (ctx.config.seed, ctx.config.held_out);
        let mut train = Vec::new();
        let mut held_out = Vec::new();
        for p in ctx.search.storage().passages() {
            let p = p?;
            let held = title_held_out(seed, &p.title, fraction);
            for sentence in sentences(&p.text) {
                if !salient_spans(sentence).is_empty() {
                    let s = RealmSentence {
                        passage: p.id,
                        text: sentence.to_owned(),
                    };
                    if held {
                        held_out.push(s);
                    } else {
                        train.push(s);
                    }
                }
            }
        }
        if train.is_empty() {
            return Err(Error::NoData {
                reason: format!(
                    "REALM training needs sentences with a salient span (a name, date or number), and the corpus has none outside the {} held out",
                    held_out.len()
                ),
            });
        }
        Ok(Realm {
            document,
            reader,
            sentences: train,
            held_out,
        })
    }

    /// The number of training sentences.
    pub(crate) fn examples(&self) -> usize {
        self.sentences.len()
    }

    /// Masks one salient span of each sentence (the choice derives from `rng`); sentences
    /// whose spans were all truncated away are skipped.
    fn mask_sentences(
        &self,
        sentences: &[(u64, &str)],
        rng: &mut StdRng,
    ) -> Result<Vec<MaskedItem>> {
        let reader = &self.reader.reader;
        let mask_id = reader.special_token_id("[MASK]")?;
        // Half of the reader's window for the sentence, the rest for the passage.
        let room = reader.config().max_len / 2;
        let mut items = Vec::with_capacity(sentences.len());
        for &(passage, text) in sentences {
            let mut tokens = reader.tokenize_sentence(text)?;
            tokens.ids.truncate(room);
            tokens.offsets.truncate(room);
            let Some(masked) = mask_one(text, &tokens.offsets, rng) else {
                continue;
            };
            let mut ids = tokens.ids.clone();
            let mut targets = Vec::with_capacity(masked.tokens.len());
            for &t in &masked.tokens {
                targets.push((t, tokens.ids[t]));
                ids[t] = mask_id;
            }
            let masks = vec!["[MASK]"; masked.tokens.len()].join(" ");
            let query = format!(
                "{}{masks}{}",
                &text[..masked.span.0],
                &text[masked.span.1..]
            );
            items.push(MaskedItem {
                passage,
                query,
                ids,
                targets,
            });
        }
        Ok(items)
    }

    /// For each masked sentence: log p(y|x) with retrieval (a tensor, with gradient when
    /// `train`) and log p(y|x) with only the null document. Candidates are the top
    /// `reader_passages` of the generation in use (stale index, frozen query tower) other
    /// than the sentence's own passage, re-scored with the current towers; the null document
    /// has the fixed score 0, so p(z = ∅|x) is large exactly when no passage scores well.
    fn likelihoods(
        &self,
        ctx: &Context,
        items: &[MaskedItem],
        train: bool,
    ) -> Result<Vec<(Tensor, f64)>> {
        let k = ctx.config.reader_passages;
        let queries: Vec<&str> = items.iter().map(|m| m.query.as_str()).collect();
        let frozen = ctx.query.encoder.encode(&queries)?;
        let ranked = ctx.search.top_k(&frozen, k + 1)?;
        let mut candidates: Vec<Vec<Passage>> = Vec::with_capacity(items.len());
        for (item, row) in items.iter().zip(&ranked) {
            candidates.push(ctx.passages(realm_candidates(row, item.passage, k))?);
        }
        let q = ctx.queries_t(&queries, train)?;
        let docs: Vec<(&str, &str)> = candidates
            .iter()
            .flatten()
            .map(|p| (p.title.as_str(), p.text.as_str()))
            .collect();
        let encoder = &self.document.encoder;
        let d = if docs.is_empty() {
            None
        } else {
            Some(encoder.forward_t(&encoder.tokenize_docs(&docs)?, train))
        };
        let device = ctx.device();
        let mut out = Vec::with_capacity(items.len());
        let mut offset = 0i64;
        for (r, (item, passages)) in items.iter().zip(&candidates).enumerate() {
            let n = passages.len() as i64;
            let null = Tensor::zeros([1], (Kind::Float, device));
            let scores = match (&d, n) {
                (Some(d), n) if n > 0 => Tensor::cat(
                    &[
                        d.narrow(0, offset, n).matmul(&q.get(r as i64)) * ctx.config.scale,
                        null,
                    ],
                    0,
                ),
                _ => null,
            };
            offset += n;
            let log_p_z = scores.log_softmax(0, Kind::Float);
            let mut texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
            texts.push("");
            let log_p_y =
                self.reader
                    .reader
                    .mlm_log_likelihoods(&item.ids, &item.targets, &texts, train)?;
            let null_only = log_p_y.double_value(&[n]);
            out.push(((log_p_z + log_p_y).logsumexp([0], false), null_only));
        }
        Ok(out)
    }

    /// Masks a salient span of each sentence of the batch and minimizes
    /// −log Σ_z p(z|x) Π_j p(y_j|z,x) over the retrieved passages and the null document.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<RealmStep> {
        let seed = ctx.config.seed;
        let idx = batch_indices(seed, self.sentences.len(), ctx.batch, step);
        let mut rng = rng(seed, SALT_REALM, step);
        let sentences: Vec<(u64, &str)> = idx
            .iter()
            .map(|&i| (self.sentences[i].passage, self.sentences[i].text.as_str()))
            .collect();
        let items = self.mask_sentences(&sentences, &mut rng)?;
        if items.is_empty() {
            return Ok(RealmStep {
                loss: f64::NAN,
                sentences: 0,
                utility: f64::NAN,
            });
        }
        ctx.seed_dropout(step);
        let likelihoods = self.likelihoods(ctx, &items, true)?;
        let mut utility = 0.0;
        let mut losses = Vec::with_capacity(likelihoods.len());
        for (with_retrieval, null_only) in likelihoods {
            utility += with_retrieval.double_value(&[]) - null_only;
            losses.push(-with_retrieval);
        }
        let n = losses.len();
        let loss = Tensor::stack(&losses, 0).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        let lr = ctx.lr(step);
        self.reader.step(ctx.reader_lr(step));
        self.document.step(lr);
        ctx.query.step(lr);
        Ok(RealmStep {
            loss: value,
            sentences: n,
            utility: utility / n as f64,
        })
    }

    /// The mean over `sentences` ((source passage id, sentence) pairs; one salient span of
    /// each is masked, chosen from `seed`) of log p(y|x) with retrieval and with only the
    /// null document, with the current towers and reader (no dropout, no gradient); `None`
    /// when no sentence has a salient span.
    pub(crate) fn log_likelihood(
        &self,
        ctx: &Context,
        sentences: &[(u64, &str)],
        seed: u64,
    ) -> Result<Option<RealmScore>> {
        let mut rng = rng(seed, SALT_REALM, u64::MAX);
        let items = self.mask_sentences(sentences, &mut rng)?;
        if items.is_empty() {
            return Ok(None);
        }
        let likelihoods = tch::no_grad(|| self.likelihoods(ctx, &items, false))?;
        let n = likelihoods.len() as f64;
        let (mut with, mut null) = (0.0, 0.0);
        for (w, z) in likelihoods {
            with += w.double_value(&[]);
            null += z;
        }
        Ok(Some(RealmScore {
            with_retrieval: with / n,
            null_only: null / n,
            sentences: items.len(),
        }))
    }

    /// The held-out sentences (at most [`REALM_HELD_OUT_SCORED`] of them), each
    /// `(source passage id, sentence)`.
    pub(crate) fn held_out_sentences(&self) -> Vec<(u64, &str)> {
        self.held_out
            .iter()
            .take(REALM_HELD_OUT_SCORED)
            .map(|s| (s.passage, s.text.as_str()))
            .collect()
    }

    /// [`Realm::log_likelihood`] of the held-out sentences with the run's fixed masks;
    /// `None` when none is held out.
    pub(crate) fn held_out_score(&self, ctx: &Context) -> Result<Option<RealmScore>> {
        let held = self.held_out_sentences();
        if held.is_empty() {
            return Ok(None);
        }
        self.log_likelihood(ctx, &held, ctx.config.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_candidates_never_hold_the_source_passage() {
        let row = [(7, 0.9), (3, 0.8), (5, 0.7), (9, 0.1)];
        assert_eq!(realm_candidates(&row, 3, 2), vec![7, 5]);
        assert_eq!(realm_candidates(&row, 7, 3), vec![3, 5, 9]);
        assert_eq!(realm_candidates(&row, 1, 2), vec![7, 3]);
        assert_eq!(realm_candidates(&[(4, 1.0)], 4, 5), Vec::<u64>::new());
        for source in [7, 3, 5, 9] {
            for k in 0..5 {
                assert!(!realm_candidates(&row, source, k).contains(&source));
            }
        }
    }
}
