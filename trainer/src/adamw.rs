//! AdamW over an encoder's variables, with state that can be saved and restored exactly,
//! and the learning-rate schedule.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// AdamW's first-moment decay.
pub const BETA1: f64 = 0.9;
/// AdamW's second-moment decay.
pub const BETA2: f64 = 0.999;
/// AdamW's denominator epsilon.
pub const EPS: f64 = 1e-8;
/// The decoupled weight decay of every training mode.
pub const WEIGHT_DECAY: f64 = 0.01;

/// The learning rate of 1-based `step` of `total`: a linear warmup from `base / warmup` to
/// `base` over the first 10% of the steps (at least one step), then `base`.
pub fn learning_rate(base: f64, step: u64, total: u64) -> f64 {
    let warmup = total.div_ceil(10).max(1);
    base * (step.min(warmup) as f64 / warmup as f64)
}

/// One optimized variable and its moments.
#[derive(Debug)]
struct Param {
    name: String,
    var: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay, bias
/// correction), over named variables in name order. Biases and LayerNorm weights are not
/// decayed. Its state (step count and moments) can be read and restored exactly.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    step: u64,
    weight_decay: f64,
}

impl AdamW {
    /// Optimizes the trainable variables of `vs`.
    pub fn for_var_store(vs: &VarStore, weight_decay: f64) -> AdamW {
        let vars = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        AdamW::new(vars, weight_decay)
    }

    /// Optimizes the given variables (sorted by name).
    pub fn new(mut vars: Vec<(String, Tensor)>, weight_decay: f64) -> AdamW {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let decay = !(name.ends_with("bias") || name.contains("LayerNorm"));
                let m = tch::no_grad(|| var.zeros_like());
                let v = tch::no_grad(|| var.zeros_like());
                Param {
                    name,
                    var,
                    m,
                    v,
                    decay,
                }
            })
            .collect();
        AdamW {
            params,
            step: 0,
            weight_decay,
        }
    }

    /// The number of updates made so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr` from the variables' gradients (variables
    /// without a gradient keep their value and moments), then clears the gradients.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - BETA1.powi(t);
        let bias2 = 1.0 - BETA2.powi(t);
        let wd = self.weight_decay;
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                if p.decay && wd != 0.0 {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * wd);
                }
                let _ = p.m.g_mul_scalar_(BETA1);
                let _ = p.m.g_add_(&(&g * (1.0 - BETA1)));
                let _ = p.v.g_mul_scalar_(BETA2);
                let _ = p.v.g_add_(&(&g * &g * (1.0 - BETA2)));
                let denom = p.v.sqrt() / bias2.sqrt() + EPS;
                let update = &p.m / denom * (lr / bias1);
                let _ = p.var.g_sub_(&update);
            }
        });
        self.zero_grad();
    }

    /// Clears the variables' gradients.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// `(name, m, v)` of every variable, in name order.
    pub fn moments(&self) -> impl Iterator<Item = (&str, &Tensor, &Tensor)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.m, &p.v))
    }

    /// Restores the step count and the moments (`(name, m, v)` for every variable, any
    /// order). Returns a reason when they do not fit the variables.
    pub fn restore(
        &mut self,
        step: u64,
        moments: Vec<(String, Tensor, Tensor)>,
    ) -> Result<(), String> {
        if moments.len() != self.params.len() {
            return Err(format!(
                "it holds moments of {} variables, but the encoder has {}",
                moments.len(),
                self.params.len()
            ));
        }
        let mut by_name: std::collections::HashMap<String, (Tensor, Tensor)> = moments
            .into_iter()
            .map(|(name, m, v)| (name, (m, v)))
            .collect();
        for p in &mut self.params {
            let (m, v) = by_name
                .remove(&p.name)
                .ok_or_else(|| format!("it has no moments for the variable {:?}", p.name))?;
            if m.size() != p.var.size() || v.size() != p.var.size() {
                return Err(format!(
                    "its moments of {:?} have shape {:?}, the variable {:?}",
                    p.name,
                    m.size(),
                    p.var.size()
                ));
            }
            let kind = p.var.kind();
            let device = p.var.device();
            p.m = m.to_kind(kind).to_device(device);
            p.v = v.to_kind(kind).to_device(device);
        }
        self.step = step;
        Ok(())
    }
}

/// Raw little-endian f32 values of a tensor (any float kind, any device).
pub(crate) fn f32_values(t: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view(-1);
    Vec::<f32>::try_from(&flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_step_matches_a_hand_computed_update() {
        // loss = p², p = 1 → g = 2. Decay first: p ← 1·(1 − lr·wd) = 0.999; then
        // m = 0.1·2 = 0.2, v = 0.001·4 = 0.004, m̂ = 2, v̂ = 4, p ← p − lr·m̂/(√v̂ + ε).
        let p = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".to_owned(), p.shallow_clone())], 0.01);
        let lr = 0.1;
        (&p * &p).sum(Kind::Double).backward();
        opt.step(lr);
        let got = p.double_value(&[0]);
        let expected = 1.0 * (1.0 - lr * 0.01) - lr * 2.0 / (2.0 + EPS);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        assert_eq!(opt.steps(), 1);
        // The gradient was cleared.
        assert_eq!(p.grad().double_value(&[0]), 0.0);

        // A second step: g = 2p; moments accumulate, bias correction uses t = 2.
        (&p * &p).sum(Kind::Double).backward();
        let p1 = got;
        let g = 2.0 * p1;
        opt.step(lr);
        let m = 0.9 * 0.2 + 0.1 * g;
        let v = 0.999 * 0.004 + 0.001 * g * g;
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
        let expected2 = p1 * (1.0 - lr * 0.01) - lr * mh / (vh.sqrt() + EPS);
        let got2 = p.double_value(&[0]);
        assert!((got2 - expected2).abs() < 1e-12, "{got2} vs {expected2}");
    }

    #[test]
    fn biases_and_layer_norms_are_not_decayed() {
        let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("layer.bias".to_owned(), b.shallow_clone())], 0.5);
        (&b * 0.0).sum(Kind::Double).backward();
        opt.step(0.1);
        // Zero gradient, no decay: unchanged.
        assert_eq!(b.double_value(&[0]), 1.0);
    }

    #[test]
    fn warmup_is_linear_over_the_first_tenth_then_flat() {
        assert!((learning_rate(1.0, 1, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 5, 100) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(1.0, 10, 100), 1.0);
        assert_eq!(learning_rate(1.0, 11, 100), 1.0);
        assert_eq!(learning_rate(1.0, 100, 100), 1.0);
        // Fewer than ten steps: one warmup step.
        assert_eq!(learning_rate(2.0, 1, 5), 2.0);
        // 15 steps: a warmup of 2.
        assert_eq!(learning_rate(1.0, 1, 15), 0.5);
    }
}
