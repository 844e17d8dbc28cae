//! AdamW with decoupled weight decay, global gradient-norm clipping and a
//! warmup + cosine learning-rate schedule.

use crate::error::Result;
use candle_core::{Tensor, Var};

/// AdamW over a fixed list of variables.
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied as `w -= lr · wd · w`).
    pub weight_decay: f64,
}

impl AdamW {
    /// An optimiser for `vars` with PyTorch's defaults (0.9, 0.999, 1e-8).
    pub fn new(vars: Vec<Var>, weight_decay: f64) -> Result<Self> {
        let m = vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self { vars, m, v, t: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay })
    }

    /// Updates taken so far (the bias-correction step count).
    pub fn steps(&self) -> usize {
        self.t
    }

    /// First and second moments, one tensor per variable in order.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Puts back a saved state (from [`Self::steps`] and [`Self::moments`]):
    /// the next [`Self::step`] continues exactly where the saved one was.
    pub fn restore(&mut self, steps: usize, m: Vec<Tensor>, v: Vec<Tensor>) -> Result<()> {
        if m.len() != self.vars.len() || v.len() != self.vars.len() {
            return Err(crate::error::Error::InvalidConfig(format!(
                "optimizer state holds {} and {} moments for {} variables",
                m.len(),
                v.len(),
                self.vars.len()
            )));
        }
        for (i, var) in self.vars.iter().enumerate() {
            if m[i].dims() != var.dims() || v[i].dims() != var.dims() {
                return Err(crate::error::Error::InvalidConfig(format!(
                    "optimizer moment {i} has shape {:?}, its variable {:?}",
                    m[i].dims(),
                    var.dims()
                )));
            }
        }
        self.t = steps;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// One update with gradients `grads` (same order as the variables).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (var, g)) in self.vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mhat = (&m / bc1)?;
            let vhat = (&v / bc2)?;
            let upd = (mhat / (vhat.sqrt()? + self.eps)?)?;
            let w = var.as_tensor();
            let decayed = (w * (1.0 - lr * self.weight_decay))?;
            var.set(&(decayed - (upd * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// Rescales `grads` in place so that their global L2 norm is at most
/// `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to
/// `peak · min_ratio` at `total` steps. `step` counts from 1.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let p = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let floor = peak * min_ratio;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cases = [
            (1, 0.25),
            (4, 1.0),   // end of warmup: the peak
            (14, 0.55), // half-way through the cosine: (1 + 0.1) / 2
            (24, 0.1),  // the floor
            (30, 0.1),  // past the end stays at the floor
        ];
        for (step, want) in cases {
            let got = lr_at(step, 24, 4, 1.0, 0.1);
            assert!((got - want).abs() < 1e-9, "step {step}: {got} != {want}");
        }
    }

    #[test]
    fn clipping_rescales_to_the_max_norm() {
        let d = &Device::Cpu;
        let mut g = vec![Tensor::new(&[3f32, 0.0], d).unwrap(), Tensor::new(&[4f32], d).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let after = clip_grad_norm(&mut g, 0.0).unwrap();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }

    #[test]
    fn adamw_first_step_moves_by_lr_and_decays() {
        let d = &Device::Cpu;
        let v = Var::new(&[1f32, -2.0], d).unwrap();
        let mut opt = AdamW::new(vec![v.clone()], 0.1).unwrap();
        let g = Tensor::new(&[0.5f32, -0.5], d).unwrap();
        opt.step(&[g], 0.01).unwrap();
        // Bias-corrected first step: update = sign(g) · lr; decay w · lr · wd.
        let got: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
