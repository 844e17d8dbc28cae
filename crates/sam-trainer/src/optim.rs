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
