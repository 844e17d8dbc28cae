//! LoRA: low-rank adapters on frozen linear layers.
//!
//! A [`Linear`] holds its frozen base weight as a plain tensor (never a
//! `Var`, so candle does not track it) and, optionally, a pair of trainable
//! matrices `A` (`[r, in]`, Kaiming-uniform) and `B` (`[out, r]`, zero):
//! `y = W x + b + s · B A dropout(x)` with `s = alpha / r`, or
//! `alpha / sqrt(r)` under rsLoRA.

use crate::error::{Error, Result};
use crate::frozen::Frozen;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A linear layer that LoRA can adapt, named as in Hugging Face checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl Target {
    /// All targets, in checkpoint order.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The module's name in a Hugging Face checkpoint (`q_proj`…).
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The module's path inside a decoder layer (`self_attn.q_proj`…).
    pub fn path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// Parses `q`, `q_proj`, `self_attn.q_proj`, `gate`, … .
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let s = s.rsplit('.').next().unwrap_or(s);
        let s = s.strip_suffix("_proj").unwrap_or(s);
        Ok(match s {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "unknown LoRA target `{other}` (expected q, k, v, o, gate, up, down)"
                )));
            }
        })
    }
}

/// Which decoder layers carry adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layers {
    /// Every layer.
    All,
    /// The last N layers (mlx-lm's `--num-layers`).
    Last(usize),
}

impl Layers {
    /// The adapted layer indices for a model with `n` layers.
    pub fn indices(self, n: usize) -> Vec<usize> {
        match self {
            Layers::All => (0..n).collect(),
            Layers::Last(k) => (n.saturating_sub(k)..n).collect(),
        }
    }
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r of the update.
    pub rank: usize,
    /// Scale numerator alpha.
    pub alpha: f64,
    /// Dropout probability on the adapter's input during training.
    pub dropout: f32,
    /// Adapted modules.
    pub targets: Vec<Target>,
    /// Adapted layers.
    pub layers: Layers,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub rslora: bool,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, no dropout, q and v on all layers: PEFT's common
    /// choice and the benchmark's configuration.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V],
            layers: Layers::All,
            rslora: false,
        }
    }
}

impl LoraConfig {
    /// The multiplier applied to `B A x`.
    pub fn scale(&self) -> f64 {
        if self.rslora { self.alpha / (self.rank as f64).sqrt() } else { self.alpha / self.rank as f64 }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::InvalidConfig("LoRA rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidConfig(format!("LoRA dropout {} is not in [0, 1)", self.dropout)));
        }
        if self.targets.is_empty() {
            return Err(Error::InvalidConfig("no LoRA target modules".into()));
        }
        Ok(())
    }
}

/// The trainable part of an adapted layer.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    /// `alpha / r` (or rsLoRA's).
    pub scale: f64,
    /// Dropout probability on the input.
    pub dropout: f32,
}

/// A frozen linear layer with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Frozen,
    bias: Option<Tensor>,
    lora: Option<LoraWeights>,
}

/// Shared source of dropout masks: a seeded generator, so runs repeat.
#[derive(Debug)]
pub struct DropoutRng(Mutex<StdRng>);

impl DropoutRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    /// Restarts the stream from `seed`. The training loop reseeds it from
    /// the run's seed and the step number before every step, so a resumed
    /// run draws the same masks as an uninterrupted one.
    pub fn reseed(&self, seed: u64) {
        *self.0.lock().expect("dropout rng poisoned") = StdRng::seed_from_u64(seed);
    }

    fn mask(&self, shape: &[usize], p: f32, dev: &Device) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let keep = 1.0 / (1.0 - p);
        let mut rng = self.0.lock().expect("dropout rng poisoned");
        let v: Vec<f32> = (0..n).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
        Tensor::from_vec(v, shape, dev)
    }
}

impl Linear {
    /// A frozen layer from its `[out, in]` weight (dense or quantized) and
    /// optional `[out]` bias.
    pub(crate) fn new(weight: impl Into<Frozen>, bias: Option<Tensor>) -> Self {
        Self { weight: weight.into(), bias, lora: None }
    }

    /// The frozen weight, `[out, in]`.
    pub(crate) fn weight(&self) -> &Frozen {
        &self.weight
    }

    /// Replaces the frozen weight (same shape).
    pub(crate) fn set_weight(&mut self, w: Frozen) {
        debug_assert_eq!(w.dims(), self.weight.dims());
        self.weight = w;
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The adapter, if any.
    pub fn lora(&self) -> Option<&LoraWeights> {
        self.lora.as_ref()
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.dims().1
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.dims().0
    }

    /// Attaches a fresh adapter: A Kaiming-uniform (PEFT's `a = sqrt(5)`,
    /// i.e. bound `1 / sqrt(in)`), B zero.
    pub fn attach(&mut self, cfg: &LoraConfig, rng: &mut StdRng) -> Result<()> {
        let (out, inp, r) = (self.out_dim(), self.in_dim(), cfg.rank);
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..r * inp).map(|_| rng.random_range(-bound..bound)).collect();
        let dev = self.weight.device();
        let a = Tensor::from_vec(a, (r, inp), &dev)?;
        let b = Tensor::zeros((out, r), DType::F32, &dev)?;
        self.set_lora(a, b, cfg.scale(), cfg.dropout)
    }

    /// Attaches an adapter from given matrices (`a: [r, in]`, `b: [out, r]`).
    pub fn set_lora(&mut self, a: Tensor, b: Tensor, scale: f64, dropout: f32) -> Result<()> {
        let (r, inp) = a.dims2()?;
        let (out, r2) = b.dims2()?;
        if inp != self.in_dim() || out != self.out_dim() || r != r2 {
            return Err(Error::InvalidAdapter(format!(
                "adapter shapes A {:?} B {:?} do not fit a [{}, {}] layer",
                a.dims(),
                b.dims(),
                self.out_dim(),
                self.in_dim()
            )));
        }
        self.lora = Some(LoraWeights {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
            dropout,
        });
        Ok(())
    }

    /// Removes the adapter, returning it.
    pub fn take_lora(&mut self) -> Option<LoraWeights> {
        self.lora.take()
    }

    /// Folds the adapter into the base weight (`W + s · B A`) and drops it.
    /// A quantized weight becomes a dense f32 one (requantizing would lose
    /// the adapter's small update).
    pub fn merge(&mut self) -> Result<()> {
        if let Some(l) = self.lora.take() {
            let delta = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
            let dt = self.weight.dtype().unwrap_or(DType::F32);
            self.weight = Frozen::Dense((self.weight.to_f32()? + delta)?.to_dtype(dt)?);
        }
        Ok(())
    }

    /// `x: [n, in]` (f32) → `[n, out]` (f32). `adapter` false skips the
    /// adapter (the DPO reference, the base-model evaluation); `dropout` is
    /// the mask source in training, `None` at inference.
    pub fn forward(&self, x: &Tensor, adapter: bool, dropout: Option<&DropoutRng>) -> candle_core::Result<Tensor> {
        let mut y = crate::ops::frozen_matmul(x, &self.weight)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if adapter && let Some(l) = &self.lora {
            let xin = match dropout {
                Some(rng) if l.dropout > 0.0 => (x * rng.mask(x.dims(), l.dropout, x.device())?)?,
                _ => x.clone(),
            };
            let h = xin.matmul(&l.a.as_tensor().t()?)?;
            let d = h.matmul(&l.b.as_tensor().t()?)?;
            y = (y + (d * l.scale)?)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_short_and_long_names() {
        let cases = [
            ("q", Target::Q),
            ("k_proj", Target::K),
            ("self_attn.v_proj", Target::V),
            ("o", Target::O),
            ("mlp.gate_proj", Target::Gate),
            ("up", Target::Up),
            (" down ", Target::Down),
        ];
        for (s, t) in cases {
            assert_eq!(Target::parse(s).unwrap(), t, "{s}");
        }
        assert!(Target::parse("lm_head").is_err());
    }

    #[test]
    fn scale_and_layer_selection() {
        let mut c = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
        assert_eq!(c.scale(), 2.0);
        c.rslora = true;
        assert_eq!(c.scale(), 4.0);
        assert_eq!(Layers::Last(2).indices(5), vec![3, 4]);
        assert_eq!(Layers::Last(9).indices(3), vec![0, 1, 2]);
        assert_eq!(Layers::All.indices(2), vec![0, 1]);
    }

    #[test]
    fn fresh_adapter_is_a_no_op_and_merge_folds_it_in() {
        let d = &Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], d).unwrap();
        let mut lin = Linear::new(w, None);
        let mut rng = StdRng::seed_from_u64(0);
        lin.attach(&LoraConfig { rank: 2, ..Default::default() }, &mut rng).unwrap();
        let x = Tensor::new(&[[1f32, -1.0]], d).unwrap();
        let base: Vec<Vec<f32>> = lin.forward(&x, false, None).unwrap().to_vec2().unwrap();
        let with: Vec<Vec<f32>> = lin.forward(&x, true, None).unwrap().to_vec2().unwrap();
        assert_eq!(base, with, "B starts at zero");
        let l = lin.lora().unwrap();
        l.b.set(&Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], d).unwrap()).unwrap();
        let with: Vec<Vec<f32>> = lin.forward(&x, true, None).unwrap().to_vec2().unwrap();
        lin.merge().unwrap();
        assert!(lin.lora().is_none());
        let merged: Vec<Vec<f32>> = lin.forward(&x, true, None).unwrap().to_vec2().unwrap();
        for (a, b) in with[0].iter().zip(&merged[0]) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
