//! ICT training (ORQA's inverse cloze task): no labels; a random sentence of a passage is
//! the pseudo-query whose positive is the rest of the passage, with in-batch negatives. At
//! the end a generation built with the trained towers is published.

use rand::Rng;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::sampling::{SALT_ICT, batch_indices, rng};
use crate::towers::Tower;
use realm_retriever::sentences::sentences;

/// The provenance note of the generation built at the end of ICT training.
pub const ICT_NOTE: &str = "ict training";

/// The probability that the pseudo-query sentence is left in its context (ORQA keeps it
/// 10% of the time, so the encoder also learns word overlap).
pub const KEEP_PROBABILITY: f64 = 0.1;

/// One ICT training pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IctExample {
    /// The pseudo-query.
    pub query: String,
    /// The passage text the query should retrieve.
    pub context: String,
    /// Whether the query sentence was left in the context.
    pub kept: bool,
}

/// The ICT pair of `text` with sentence `pick` (modulo the sentence count) as the query,
/// removed from the context unless `keep`. A text of fewer than two sentences is split by
/// words instead: the first half is the query and the rest the context (`keep` is then
/// ignored); a single word is both.
pub fn ict_pair(text: &str, pick: usize, keep: bool) -> IctExample {
    let parts = sentences(text);
    if parts.len() >= 2 {
        let pick = pick % parts.len();
        let query = parts[pick].to_owned();
        let context = if keep {
            parts.join(" ")
        } else {
            parts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != pick)
                .map(|(_, s)| *s)
                .collect::<Vec<_>>()
                .join(" ")
        };
        return IctExample {
            query,
            context,
            kept: keep,
        };
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 2 {
        let t = text.trim().to_owned();
        return IctExample {
            query: t.clone(),
            context: t,
            kept: true,
        };
    }
    let half = words.len() / 2;
    IctExample {
        query: words[..half].join(" "),
        context: words[half..].join(" "),
        kept: false,
    }
}

/// A random ICT pair of `text`: a uniformly chosen sentence, kept with probability
/// [`KEEP_PROBABILITY`].
pub fn sample_ict_pair(text: &str, rng: &mut impl Rng) -> IctExample {
    let n = sentences(text).len().max(1);
    let pick = rng.random_range(0..n);
    let keep = rng.random::<f64>() < KEEP_PROBABILITY;
    ict_pair(text, pick, keep)
}

/// The state of an ICT run.
pub(crate) struct Ict {
    pub document: Tower,
    /// `(title, text)` of every non-empty passage.
    pub passages: Vec<(String, String)>,
}

impl Ict {
    /// Collects the passages of the generation in use; an error with fewer than two (no
    /// in-batch negative).
    pub(crate) fn new(ctx: &Context, document: Tower) -> Result<Ict> {
        let mut passages = Vec::new();
        for p in ctx.search.storage().passages() {
            let p = p?;
            if !p.text.trim().is_empty() {
                passages.push((p.title, p.text));
            }
        }
        if passages.len() < 2 {
            return Err(Error::NoData {
                reason: format!(
                    "ICT needs at least 2 passages for in-batch negatives, and the database has {}",
                    passages.len()
                ),
            });
        }
        Ok(Ict { document, passages })
    }

    /// In-batch cross-entropy of pseudo-queries against their contexts.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<f64> {
        let seed = ctx.config.seed;
        let idx = batch_indices(seed, self.passages.len(), ctx.batch, step);
        let mut rng = rng(seed, SALT_ICT, step);
        let pairs: Vec<_> = idx
            .iter()
            .map(|&i| sample_ict_pair(&self.passages[i].1, &mut rng))
            .collect();
        let b = idx.len();
        let mut mask = vec![false; b * b];
        for r in 0..b {
            for c in 0..b {
                mask[r * b + c] = c != r && idx[c] == idx[r];
            }
        }
        ctx.seed_dropout(step);
        let queries: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
        let docs: Vec<(&str, &str)> = idx
            .iter()
            .zip(&pairs)
            .map(|(&i, p)| (self.passages[i].0.as_str(), p.context.as_str()))
            .collect();
        let q = ctx.queries_t(&queries, true)?;
        let document = &mut self.document;
        let d = document
            .encoder
            .forward_t(&document.encoder.tokenize_docs(&docs)?, true);
        let value = ctx.in_batch_loss(&q, &d, &mask);
        let lr = ctx.lr(step);
        ctx.query.step(lr);
        document.step(lr);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_query_sentence_is_removed_from_its_context_unless_kept() {
        let text = "Alpha runs. Beta jumps. Gamma sleeps.";
        let removed = ict_pair(text, 1, false);
        assert_eq!(removed.query, "Beta jumps.");
        assert_eq!(removed.context, "Alpha runs. Gamma sleeps.");
        assert!(!removed.kept);
        let kept = ict_pair(text, 1, true);
        assert_eq!(kept.query, "Beta jumps.");
        assert_eq!(kept.context, text);
        assert!(kept.kept);
    }

    #[test]
    fn a_single_sentence_is_split_by_words() {
        let pair = ict_pair("one two three four five", 0, true);
        assert_eq!(pair.query, "one two");
        assert_eq!(pair.context, "three four five");
        assert!(!pair.kept);
        let single = ict_pair("word", 3, false);
        assert_eq!(
            (single.query.as_str(), single.context.as_str()),
            ("word", "word")
        );
    }

    #[test]
    fn sampling_keeps_about_a_tenth_and_picks_every_sentence() {
        let text = "Ab cd. Ef gh. Ij kl. Mn op.";
        let mut rng = StdRng::seed_from_u64(7);
        let mut kept = 0;
        let mut picked = std::collections::HashSet::new();
        for _ in 0..2000 {
            let pair = sample_ict_pair(text, &mut rng);
            kept += usize::from(pair.kept);
            if !pair.kept {
                assert!(!pair.context.contains(&pair.query));
            }
            picked.insert(pair.query);
        }
        assert_eq!(picked.len(), 4);
        assert!((120..=280).contains(&kept), "kept {kept} of 2000");
    }
}
