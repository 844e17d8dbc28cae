//! The plain path: each decoder layer built from candle ops that all have a
//! backward (no fused `softmax_last_dim`, `rms_norm` or `rope`, which
//! silently cut gradients; causal softmax and cross-entropy from
//! [`crate::ops`]). It handles what the fused path does not: generation
//! with a KV cache, LoRA dropout, other devices. A recomputed layer is one
//! graph node ([`Recomputed`]) that keeps only its input and rebuilds the
//! layer's graph in the backward pass.

use crate::config::ModelConfig;
use crate::forward::{KvCache, Pass, Path, SideGrads, add_side_grad};
use crate::frozen::Frozen;
use crate::layer::Layer;
use crate::lora::{DropoutRng, Target};
use candle_core::{D, Device, Tensor, Var};

/// Rows of the output head evaluated at once.
const HEAD_CHUNK: usize = 256;

/// The plain candle-op path.
#[derive(Debug, Default)]
pub(crate) struct Plain;

/// RMSNorm of every row of `x` with weight `w`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// `x: [b, h, t, d]`, `cos`/`sin`: `[t, d]` (halves repeated).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// Rotary tables `[t, head_dim]` (halves repeated) for positions `offset..offset + t`.
fn rope_tables(cfg: &ModelConfig, offset: usize, t: usize, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim;
    let inv: Vec<f32> = (0..hd / 2).map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
    let mut cos = Vec::with_capacity(t * hd);
    let mut sin = Vec::with_capacity(t * hd);
    for p in offset..offset + t {
        for _half in 0..2 {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((Tensor::from_vec(cos, (t, hd), dev)?, Tensor::from_vec(sin, (t, hd), dev)?))
}

impl Path for Plain {
    fn layers(&self, pass: &Pass<'_>, mut x: Tensor, mut cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        let n = pass.layers.len();
        if let Some(c) = cache.as_mut()
            && c.layers.len() != n
        {
            c.layers = (0..n).map(|_| None).collect();
        }
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (cos, sin) = rope_tables(pass.cfg, offset, pass.seq, x.device())?;
        let recompute = pass.recompute_every > 0 && cache.is_none() && pass.lowest.is_some();
        let shape = Shape { b: pass.batch, t: pass.seq, cfg: pass.cfg.clone() };
        for (li, layer) in pass.layers.iter().enumerate() {
            if recompute && Some(li) == pass.lowest {
                // A graph node is recorded only when its input is tracked.
                x = Var::from_tensor(&x)?.as_tensor().clone();
            }
            if recompute && pass.recomputed(li) {
                let op = Recomputed {
                    layer: layer.clone(),
                    shape: shape.clone(),
                    cos: cos.clone(),
                    sin: sin.clone(),
                    grads: pass.side_grads.clone(),
                };
                x = x.contiguous()?.apply_op1(op)?;
            } else {
                let kv = cache.as_mut().map(|c| &mut c.layers[li]);
                x = layer_forward(layer, &shape, &x, &cos, &sin, pass.adapter, pass.dropout, kv)?;
            }
        }
        Ok(x)
    }

    fn nll(&self, x: &Tensor, norm: &Tensor, head: &Frozen, targets: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        let hidden = rms_norm(x, norm, eps)?;
        let m = targets.dim(0)?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < m {
            let n = HEAD_CHUNK.min(m - start);
            let logits = crate::ops::frozen_matmul(&hidden.narrow(0, start, n)?, head)?;
            parts.push(crate::ops::cross_entropy_rows(&logits, &targets.narrow(0, start, n)?)?);
            start += n;
        }
        Tensor::cat(&parts, 0)
    }
}

#[derive(Debug, Clone)]
struct Shape {
    b: usize,
    t: usize,
    cfg: ModelConfig,
}

type KvSlot<'a> = Option<&'a mut Option<(Tensor, Tensor)>>;

#[allow(clippy::too_many_arguments)]
fn layer_forward(
    layer: &Layer,
    s: &Shape,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    adapter: bool,
    dropout: Option<&DropoutRng>,
    kv: KvSlot<'_>,
) -> candle_core::Result<Tensor> {
    let (b, t, cfg) = (s.b, s.t, &s.cfg);
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let lin = |l: &crate::lora::Linear, x: &Tensor| l.forward(x, adapter, dropout).map_err(candle_core::Error::wrap);
    let h = rms_norm(x, &layer.attn_norm, cfg.rms_norm_eps)?;
    let heads = |y: Tensor, n: usize| -> candle_core::Result<Tensor> {
        y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
    };
    let q = heads(lin(&layer.attn.q, &h)?, nh)?;
    let k = heads(lin(&layer.attn.k, &h)?, nkv)?;
    let v = heads(lin(&layer.attn.v, &h)?, nkv)?;
    let q = rope(&q, cos, sin)?;
    let mut k = rope(&k, cos, sin)?;
    let mut v = v;
    if let Some(slot) = kv {
        if let Some((pk, pv)) = slot.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *slot = Some((k.clone(), v.clone()));
    }
    let tk = k.dim(2)?;
    let (k, v) = if nh != nkv {
        let rep = nh / nkv;
        let r = |x: Tensor| -> candle_core::Result<Tensor> {
            x.unsqueeze(2)?.broadcast_as((b, nkv, rep, tk, hd))?.reshape((b, nh, tk, hd))
        };
        (r(k)?, r(v)?)
    } else {
        (k, v)
    };
    let scale = 1.0 / (hd as f64).sqrt();
    let att = crate::ops::causal_softmax(&q.matmul(&k.t()?)?, scale)?;
    let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
    let y = lin(&layer.attn.o, &y)?;
    let x = (x + y)?;
    let h = rms_norm(&x, &layer.mlp_norm, cfg.rms_norm_eps)?;
    let g = lin(&layer.mlp.gate, &h)?;
    let u = lin(&layer.mlp.up, &h)?;
    let y = lin(&layer.mlp.down, &(g.silu()? * u)?)?;
    x + y
}

/// One decoder layer as a single graph node: the forward runs without a
/// graph; the backward recomputes the layer with one, backpropagates the
/// incoming gradient through it, returns the input's gradient and parks the
/// LoRA variables' gradients in `grads` (they are not reachable from the
/// outer graph).
struct Recomputed {
    layer: Layer,
    shape: Shape,
    cos: Tensor,
    sin: Tensor,
    grads: SideGrads,
}

impl candle_core::CustomOp1 for Recomputed {
    fn name(&self) -> &'static str {
        "sam-recomputed-layer"
    }

    fn cpu_fwd(
        &self,
        st: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let Some((a, e)) = l.contiguous_offsets() else {
            candle_core::bail!("recomputed layer: input is not contiguous")
        };
        let candle_core::CpuStorage::F32(v) = st else { candle_core::bail!("recomputed layer: expected f32") };
        let x = Tensor::from_slice(&v[a..e], l.shape(), &Device::Cpu)?;
        let y = layer_forward(&self.layer, &self.shape, &x, &self.cos, &self.sin, true, None, None)?;
        let y = y.detach();
        let shape = y.shape().clone();
        Ok((candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xv = Var::from_tensor(&arg.detach())?;
        let y = layer_forward(&self.layer, &self.shape, xv.as_tensor(), &self.cos, &self.sin, true, None, None)?;
        let gs = (y * grad.detach())?.sum_all()?.backward()?;
        let mut store = self.grads.lock().map_err(|_| candle_core::Error::Msg("side gradients: poisoned".into()))?;
        for t in Target::ALL {
            if let Some(w) = self.layer.linear(t).lora() {
                for var in [&w.a, &w.b] {
                    if let Some(g) = gs.get(var.as_tensor()) {
                        add_side_grad(&mut store, var.as_tensor().id(), g.clone())?;
                    }
                }
            }
        }
        Ok(gs.get(xv.as_tensor()).cloned())
    }
}
