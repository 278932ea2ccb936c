//! Small deterministic generators for seeded initialization and seed derivation:
//! SplitMix64 and FNV-1a. They depend on nothing but their inputs (not on libtorch's
//! global generator, the device, or the platform), so equal seeds give equal streams.

/// The increment of the SplitMix64 state (the golden ratio in 64-bit fixed point).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One SplitMix64 step as a hash: adds the golden gamma to `z` and mixes the sum (Steele,
/// Lea and Flood's finalizer). `splitmix64(s)` is the value a [`SplitMix64`] in state `s`
/// returns next.
pub fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit FNV-1a hash of `bytes`: a stable hash of names and titles.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// A 64-bit value derived only from `(seed, salt, x)`:
/// `splitmix64(splitmix64(seed ^ salt) ^ x)`. Distinct salts give independent streams of
/// one seed (an epoch's permutation, a held-out draw, ...).
pub fn derive_seed(seed: u64, salt: u64, x: u64) -> u64 {
    splitmix64(splitmix64(seed ^ salt) ^ x)
}

/// The seed of a named variable's initialization stream: `seed` mixed with the FNV-1a hash
/// of its name, so each variable draws the same values whatever else the model holds.
pub fn variable_seed(seed: i64, name: &str) -> u64 {
    seed as u64 ^ fnv1a64(name.as_bytes())
}

/// The SplitMix64 generator: a 64-bit state advanced by the golden gamma and mixed on output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output is `splitmix64(state)`.
    pub fn new(state: u64) -> SplitMix64 {
        SplitMix64(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.0);
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        out
    }

    /// A uniform draw in (0, 1] with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller, one value per two uniforms).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // The first outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn fnv1a64_matches_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn uniform_draws_lie_in_the_half_open_unit_interval() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let u = rng.uniform();
            assert!(u > 0.0 && u <= 1.0);
        }
    }
}
