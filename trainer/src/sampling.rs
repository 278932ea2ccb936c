//! Every random choice of a run derives from `(seed, salt, x)`: the batches of a step, the
//! dropout masks, ICT's pseudo-queries, REALM's masks and held-out articles, the spans and positives of span
//! pre-training, the positives of phrase training. A run stopped
//! and resumed therefore draws exactly what an uninterrupted one draws. The mixing functions
//! (SplitMix64, FNV-1a) are [`realm_retriever::random`]'s.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use realm_retriever::random::{derive_seed, fnv1a64};

/// Salts that separate the random streams derived from the seed.
pub(crate) const SALT_EPOCH: u64 = 0x6570_6f63_6800_0001;
pub(crate) const SALT_DROPOUT: u64 = 0x6472_6f70_0000_0002;
pub(crate) const SALT_ICT: u64 = 0x6963_7400_0000_0003;
pub(crate) const SALT_REALM: u64 = 0x7265_616c_6d00_0004;
pub(crate) const SALT_HELD_OUT: u64 = 0x6865_6c64_0000_0005;
pub(crate) const SALT_SPANS: u64 = 0x7370_616e_0000_0006;
pub(crate) const SALT_PHRASES: u64 = 0x7068_7261_7365_0007;

/// A generator for the stream `salt` of step `x`.
pub(crate) fn rng(seed: u64, salt: u64, x: u64) -> StdRng {
    StdRng::seed_from_u64(derive_seed(seed, salt, x))
}

/// Seeds libtorch's global generator (dropout) for `step`.
pub(crate) fn seed_dropout(seed: u64, step: u64) {
    tch::manual_seed((derive_seed(seed, SALT_DROPOUT, step) >> 1) as i64);
}

/// Whether the article `title` is held out of REALM training: a stable hash (FNV-1a) of the
/// title, mixed with the seed, falls in the lowest `fraction` of the range.
pub(crate) fn title_held_out(seed: u64, title: &str, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let h = fnv1a64(title.as_bytes());
    let unit = (derive_seed(seed, SALT_HELD_OUT, h) >> 11) as f64 / (1u64 << 53) as f64;
    unit < fraction
}

/// The order in which epoch `epoch` visits `n` examples.
fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng(seed, SALT_EPOCH, epoch));
    order
}

/// The example indices of 1-based `step`: examples are visited without replacement within an
/// epoch, in an order derived from the seed and the epoch; batch `b` of step `s` holds the
/// positions `(s − 1)·b ..< s·b` of the concatenated epochs.
pub(crate) fn batch_indices(seed: u64, n: usize, b: usize, step: u64) -> Vec<usize> {
    let mut perms: Vec<(u64, Vec<usize>)> = Vec::new();
    let start = u128::from(step.saturating_sub(1)) * b as u128;
    (0..b as u128)
        .map(|j| {
            let p = start + j;
            let epoch = (p / n as u128) as u64;
            let at = (p % n as u128) as usize;
            if let Some((_, perm)) = perms.iter().find(|(e, _)| *e == epoch) {
                return perm[at];
            }
            let perm = epoch_permutation(seed, epoch, n);
            let index = perm[at];
            perms.push((epoch, perm));
            index
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_visit_every_example_once_per_epoch() {
        let n = 10;
        let mut seen: Vec<usize> = (1..=5).flat_map(|s| batch_indices(3, n, 4, s)).collect();
        // Steps 1..=5 cover positions 0..20: two whole epochs.
        let (first, second) = seen.split_at_mut(10);
        first.sort_unstable();
        second.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(second, (0..10).collect::<Vec<_>>());
        // A step's batch depends only on (seed, step).
        assert_eq!(batch_indices(3, n, 4, 4), batch_indices(3, n, 4, 4));
        assert_ne!(
            (1..=3)
                .map(|s| batch_indices(3, n, 4, s))
                .collect::<Vec<_>>(),
            (1..=3)
                .map(|s| batch_indices(4, n, 4, s))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn held_out_titles_are_a_stable_fraction() {
        let titles: Vec<String> = (0..2000).map(|i| format!("Article {i}")).collect();
        let held = |seed| {
            titles
                .iter()
                .filter(|t| title_held_out(seed, t, 0.1))
                .count()
        };
        assert!((140..=260).contains(&held(1)), "{} of 2000", held(1));
        assert_eq!(held(1), held(1));
        assert!(titles.iter().all(|t| !title_held_out(1, t, 0.0)));
        assert!(titles.iter().all(|t| title_held_out(1, t, 1.0)));
    }
}
