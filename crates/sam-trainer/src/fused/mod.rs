//! The training path on the CPU: a whole decoder layer, and the final norm +
//! output head + cross-entropy, each as one graph node with a hand-written
//! backward.
//!
//! Built from candle's ops, a layer's step is some forty graph nodes, each
//! allocating a fresh tensor, most of them single-pass elementwise work
//! between the matrix products, and candle's matmul backward computes the
//! gradients of frozen weights too. Here a layer is a `CustomOp1` on its
//! input ([`layer`]): the forward runs the products on `sam-kernels`
//! (strided views instead of `contiguous()` copies; causal attention in
//! query blocks that skip the masked half, [`attention`]) with the
//! elementwise passes fused and vectorised ([`kernels`], [`norm`]), and
//! keeps what the backward needs; the backward computes the input's
//! gradient and the LoRA gradients ([`linear`]), which it parks in the
//! decoder's side store ([`crate::forward::SideGrads`]), as the LoRA
//! matrices are not inputs of the node. A recomputed layer keeps nothing
//! and runs its forward again in the backward.
//!
//! The loss node ([`head`]) takes the selected rows of the last layer's
//! output and returns each row's negative log-likelihood; since the loss is
//! linear in those, it computes each row's gradient `d nll_i / d x_i` in the
//! forward, chunk by chunk, so the `[rows × vocab]` logits are never kept.
//!
//! Frozen matrices are read as stored ([`weights`]: f32, bf16 or f16) by the
//! products of `sam-kernels` ([`linear`]), in f32, or in bf16 where the CPU
//! has bf16 dot products and `SAM_BF16_PRODUCTS=1` asks for them. Used on the CPU
//! without a KV cache or dropout; other cases (generation, dropout, GPU
//! devices) take the plain path ([`crate::plain`]).

mod attention;
mod geometry;
mod head;
mod kernels;
mod layer;
mod linear;
mod norm;
mod pool;
mod weights;

use crate::forward::{KvCache, Pass, Path};
use crate::frozen::Frozen;
use candle_core::{DType, Tensor, Var};
use geometry::Geometry;
use layer::{FusedLayer, forward_no_graph};
use pool::Pool;
use sam_kernels::Precision;
use std::sync::Arc;

/// The fused CPU path, with the buffer pool its nodes share.
#[derive(Debug)]
pub(crate) struct Fused {
    pool: Arc<Pool>,
    /// How the products with frozen weights round their inputs: in bf16
    /// when `SAM_BF16_PRODUCTS=1` and the CPU has bf16 dot products
    /// ([`sam_kernels::bf16_available`]), else in f32.
    prec: Precision,
}

impl Default for Fused {
    fn default() -> Self {
        let bf16 = std::env::var("SAM_BF16_PRODUCTS").is_ok_and(|v| v == "1") && sam_kernels::bf16_available();
        Self { pool: Arc::default(), prec: if bf16 { Precision::Bf16 } else { Precision::F32 } }
    }
}

impl Fused {
    /// Whether every layer's weights can take the fused path: on the CPU,
    /// norms and biases in f32, matrices in f32, bf16 or f16.
    pub(crate) fn supports(layers: &[crate::layer::Layer]) -> bool {
        layers.iter().all(weights::supported)
    }

    /// Whether the output head can take the fused loss: an f32 norm on the
    /// CPU, a head the layers' products can read (f32, bf16, f16 or
    /// quantized).
    pub(crate) fn supports_head(norm: &Tensor, head: &Frozen) -> bool {
        norm.dtype() == DType::F32 && norm.device().is_cpu() && weights::matrix_supported(head)
    }

    /// Frees the pooled buffers (the decoder calls it when a forward pass
    /// takes the plain path, e.g. to generate).
    pub(crate) fn release(&self) {
        self.pool.clear();
        sam_kernels::release();
    }

    /// Runs the products with frozen weights in bf16 (where the CPU has
    /// bf16 dot products) or in f32.
    #[cfg(test)]
    pub(crate) fn set_bf16_products(&mut self, on: bool) {
        self.prec = if on && sam_kernels::bf16_available() { Precision::Bf16 } else { Precision::F32 };
    }
}

impl Path for Fused {
    fn layers(&self, pass: &Pass<'_>, mut x: Tensor, _cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        let geo = Arc::new(Geometry::new(pass.cfg, pass.batch, pass.seq, self.prec));
        for (li, layer) in pass.layers.iter().enumerate() {
            // Layers below the lowest adapter need no graph at all; from
            // there on, recomputed layers keep only their inputs.
            let lo = match pass.lowest {
                Some(lo) if pass.grad && li >= lo => lo,
                _ => {
                    x = forward_no_graph(&geo, &self.pool, layer, pass.adapter, &x)?;
                    continue;
                }
            };
            if li == lo {
                // A graph node is recorded only when its input is tracked.
                x = Var::from_tensor(&x)?.as_tensor().clone();
            }
            let op = FusedLayer::new(
                layer.clone(),
                geo.clone(),
                pass.adapter,
                pass.recomputed(li),
                li != lo,
                pass.side_grads.clone(),
                self.pool.clone(),
            );
            x = x.contiguous()?.apply_op1(op)?;
        }
        Ok(x)
    }

    fn nll(&self, x: &Tensor, norm: &Tensor, head: &Frozen, targets: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        head::nll_rows(x, norm, head, &targets.to_vec1::<u32>()?, eps, &self.pool, self.prec)
    }
}

/// Runs `f` on a worker of the global thread pool (the caller waits), so
/// that the nested parallel sections don't hop threads.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
