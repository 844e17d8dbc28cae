//! The frozen weights of one decoder layer, shared by the plain and the
//! fused path: two RMSNorm weights and seven [`Linear`] projections, each of
//! which may carry a LoRA adapter.

use crate::lora::{Linear, Target};
use candle_core::Tensor;

/// One decoder layer's attention projections.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
}

/// One decoder layer's SwiGLU MLP.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Tensor,
    pub(crate) attn: Attention,
    pub(crate) mlp_norm: Tensor,
    pub(crate) mlp: Mlp,
}

impl Layer {
    /// The projection `t`.
    pub(crate) fn linear(&self, t: Target) -> &Linear {
        match t {
            Target::Q => &self.attn.q,
            Target::K => &self.attn.k,
            Target::V => &self.attn.v,
            Target::O => &self.attn.o,
            Target::Gate => &self.mlp.gate,
            Target::Up => &self.mlp.up,
            Target::Down => &self.mlp.down,
        }
    }

    /// The projection `t`, to attach or replace its adapter.
    pub(crate) fn linear_mut(&mut self, t: Target) -> &mut Linear {
        match t {
            Target::Q => &mut self.attn.q,
            Target::K => &mut self.attn.k,
            Target::V => &mut self.attn.v,
            Target::O => &mut self.attn.o,
            Target::Gate => &mut self.mlp.gate,
            Target::Up => &mut self.mlp.up,
            Target::Down => &mut self.mlp.down,
        }
    }

    /// Whether any projection carries an adapter.
    pub(crate) fn adapted(&self) -> bool {
        Target::ALL.iter().any(|&t| self.linear(t).lora().is_some())
    }

    /// Whether any adapter of the layer applies dropout in training.
    pub(crate) fn has_dropout(&self) -> bool {
        Target::ALL.iter().any(|&t| self.linear(t).lora().is_some_and(|w| w.dropout > 0.0))
    }
}
