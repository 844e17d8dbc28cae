//! The private seam between the decoder and the two ways it runs a forward
//! pass: the plain candle-op path ([`crate::plain`]: generation with a KV
//! cache, LoRA dropout, other devices) and the fused CPU path
//! ([`crate::fused`]: training and evaluation). The decoder picks a [`Path`]
//! for the layers and one for the loss head once per forward pass; neither
//! path knows the other or the decoder.

use crate::config::ModelConfig;
use crate::frozen::Frozen;
use crate::layer::Layer;
use crate::lora::DropoutRng;
use candle_core::{Tensor, TensorId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Gradients of LoRA variables produced inside graph nodes that own their
/// backward (fused or recomputed layers): the LoRA matrices are not inputs
/// of those nodes, so candle's `GradStore` never sees them.
pub(crate) type SideGrads = Arc<Mutex<HashMap<TensorId, Tensor>>>;

/// Adds `g` to the side gradient of `id`.
pub(crate) fn add_side_grad(store: &mut HashMap<TensorId, Tensor>, id: TensorId, g: Tensor) -> candle_core::Result<()> {
    let sum = match store.remove(&id) {
        Some(prev) => (prev + g)?,
        None => g,
    };
    store.insert(id, sum);
    Ok(())
}

/// Keys and values of past positions, one entry per layer, for generation.
#[derive(Debug, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many positions the cache holds.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one forward pass runs over and how.
pub(crate) struct Pass<'a> {
    /// The model's configuration.
    pub(crate) cfg: &'a ModelConfig,
    /// Its decoder layers.
    pub(crate) layers: &'a [Layer],
    /// Sequences in the batch.
    pub(crate) batch: usize,
    /// Positions per sequence (this call's, after any cached prefix).
    pub(crate) seq: usize,
    /// Apply the LoRA adapters.
    pub(crate) adapter: bool,
    /// Dropout mask source in training (`None` at inference).
    pub(crate) dropout: Option<&'a DropoutRng>,
    /// Whether a gradient will be asked for (`false` promises none: the
    /// fused path then keeps no graph).
    pub(crate) grad: bool,
    /// The lowest adapted layer when adapters apply: the layers below it
    /// need no graph.
    pub(crate) lowest: Option<usize>,
    /// Recompute every N-th layer from `lowest` on in the backward pass
    /// instead of keeping its activations (0: keep everything).
    pub(crate) recompute_every: usize,
    /// Where recomputed and fused layers put their LoRA gradients.
    pub(crate) side_grads: &'a SideGrads,
}

impl Pass<'_> {
    /// Whether layer `li` is recomputed in the backward pass.
    pub(crate) fn recomputed(&self, li: usize) -> bool {
        self.recompute_every > 0
            && self.lowest.is_some_and(|lo| li >= lo && (li - lo).is_multiple_of(self.recompute_every))
    }
}

/// One way to run a forward pass.
pub(crate) trait Path {
    /// Runs every decoder layer over the embedded tokens `x`
    /// (`[batch · seq, hidden]`, f32) and returns the last layer's output
    /// before the final norm. With `cache`, the tokens continue the cached
    /// prefix (only the plain path is ever handed one).
    fn layers(&self, pass: &Pass<'_>, x: Tensor, cache: Option<&mut KvCache>) -> candle_core::Result<Tensor>;

    /// The negative log-likelihood (`[m]`) of `targets` (`[m]`, u32) for
    /// last-layer rows `x` (`[m, hidden]`, before the final norm), through
    /// the final norm `norm` and the output head `head` (`[vocab, hidden]`).
    /// Differentiable in `x` when `x` is part of a graph.
    fn nll(&self, x: &Tensor, norm: &Tensor, head: &Frozen, targets: &Tensor, eps: f64) -> candle_core::Result<Tensor>;
}
