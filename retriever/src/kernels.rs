//! Inner-product kernels of the host scans: f32 rows, and SQ8 codes against a query that was
//! folded with the quantizer's steps.
//!
//! The crate is compiled for the baseline of its target (SSE2 on x86-64), so each kernel is
//! also compiled with AVX2 and FMA enabled and picked at run time when the CPU has them. Both
//! versions are the same source; the compiler vectorizes the wider one with 8-lane registers.

/// `Σ a[i]·b[i]`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // Safety: the CPU supports AVX2 and FMA (checked at run time just above), which is
        // all `dot_avx2` requires; it reads only within the two slices.
        #[allow(unsafe_code)]
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// `Σ q[i]·code[i]` with codes widened from bytes.
pub(crate) fn dot_u8(q: &[f32], code: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // Safety: as in `dot`, the CPU has the features `dot_u8_avx2` is compiled for.
        #[allow(unsafe_code)]
        return unsafe { dot_u8_avx2(q, code) };
    }
    dot_u8_portable(q, code)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// 16 independent accumulators, so the sum vectorizes without reassociating one chain.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_u8_portable(q: &[f32], code: &[u8]) -> f32 {
    let mut acc = [0f32; 16];
    let (q16, c16) = (q.chunks_exact(16), code.chunks_exact(16));
    let tail: f32 = q16
        .remainder()
        .iter()
        .zip(c16.remainder())
        .map(|(x, &c)| x * f32::from(c))
        .sum();
    for (x, c) in q16.zip(c16) {
        for i in 0..16 {
            acc[i] += x[i] * f32::from(c[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
fn dot_u8_avx2(q: &[f32], code: &[u8]) -> f32 {
    dot_u8_portable(q, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_a_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 8.0).collect();
        let b: Vec<f32> = (0..37).map(|i| ((i * 7) % 11) as f32 / 4.0).collect();
        let c: Vec<u8> = (0..37).map(|i| ((i * 13) % 256) as u8).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), plain);
        assert_eq!(dot_portable(&a, &b), plain);
        let plain_u8: f32 = a.iter().zip(&c).map(|(x, &y)| x * f32::from(y)).sum();
        assert_eq!(dot_u8(&a, &c), plain_u8);
        assert_eq!(dot_u8_portable(&a, &c), plain_u8);
    }
}
