//! Custom ops with their own backward passes.
//!
//! [`frozen_matmul`]: candle's `Matmul` backward computes the gradient of
//! *both* operands, even a frozen weight nobody asked about: for a LoRA step
//! that is a third of the matmul work and a weight-sized gradient per layer.
//! Here the product is computed outside the graph and re-attached to `x`
//! through a custom op whose backward only yields `dL/dx = dL/dy · W`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

struct AttachInputGrad {
    /// `[out, in]`, possibly bf16/f16.
    weight: Tensor,
}

impl CustomOp2 for AttachInputGrad {
    fn name(&self) -> &'static str {
        "sam-frozen-matmul"
    }

    /// Returns the precomputed product (second argument) unchanged.
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l2.contiguous_offsets() else {
            candle_core::bail!("sam-frozen-matmul: product is not contiguous")
        };
        match s2 {
            CpuStorage::F32(v) => Ok((CpuStorage::F32(v[start..end].to_vec()), l2.shape().clone())),
            _ => candle_core::bail!("sam-frozen-matmul: activations must be f32"),
        }
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let w = &self.weight;
        let gx = if w.dtype() == grad.dtype() {
            grad.matmul(w)?
        } else {
            grad.to_dtype(w.dtype())?.matmul(w)?.to_dtype(grad.dtype())?
        };
        Ok((Some(gx), None))
    }
}

/// `x · Wᵀ` for a frozen `w: [out, in]` and f32 `x: [n, in]`; gradients flow
/// to `x` only. Weights in bf16/f16 are multiplied in their own type (candle
/// widens to f32 inside on CPU).
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let plain = |x: &Tensor| -> candle_core::Result<Tensor> {
        if w.dtype() == x.dtype() {
            x.matmul(&w.t()?)
        } else {
            x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(x.dtype())
        }
    };
    if !x.track_op() {
        return plain(x);
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        // Other backends: the plain graph (correct; it also computes the
        // unused weight gradient).
        return plain(x);
    }
    let y = plain(&x.detach())?.contiguous()?;
    x.apply_op2(&y, AttachInputGrad { weight: w.clone() })
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: input is not contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: expected f32"),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [u32]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: input is not contiguous") };
    match s {
        CpuStorage::U32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: expected u32 ids"),
    }
}

/// Scaled, causally masked softmax over the last dim of `[.., t, tk]`
/// scores, where query row `i` sees keys `0..=i + offset`. One pass forward,
/// one pass backward, and the masked half is never exponentiated.
struct CausalSoftmax {
    scale: f32,
    offset: usize,
}

fn row_len(row: usize, t: usize, tk: usize, offset: usize) -> usize {
    ((row % t) + offset + 1).min(tk)
}

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "sam-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = f32_slice(s, l, self.name())?;
        let dims = l.dims();
        let (t, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(tk).zip(x.par_chunks(tk)).enumerate().for_each(|(r, (o, xr))| {
            let n = row_len(r, t, tk, self.offset);
            let max = xr[..n].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
            let mut sum = 0f32;
            for (oj, &xj) in o[..n].iter_mut().zip(&xr[..n]) {
                let e = (xj * self.scale - max).exp();
                *oj = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            o[..n].iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g =
            res.apply_op2_no_bwd(&grad.contiguous()?, &CausalSoftmaxBwd { scale: self.scale, offset: self.offset })?;
        Ok(Some(g))
    }
}

struct CausalSoftmaxBwd {
    scale: f32,
    offset: usize,
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "sam-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let p = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let dims = l1.dims();
        let (t, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(tk).zip(p.par_chunks(tk).zip(g.par_chunks(tk))).enumerate().for_each(
            |(r, (o, (pr, gr)))| {
                let n = row_len(r, t, tk, self.offset);
                let dot: f32 = pr[..n].iter().zip(&gr[..n]).map(|(a, b)| a * b).sum();
                for j in 0..n {
                    o[j] = self.scale * pr[j] * (gr[j] - dot);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scale · scores)` with a causal mask, scores `[.., t, tk]` where
/// the `t` queries are the last `t` of `tk` positions (`offset = tk - t`).
/// Differentiable; falls back to plain ops off the CPU.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dims = scores.dims();
    let (t, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        return scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32, offset: tk - t });
    }
    let offset = tk - t;
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..tk).map(move |j| if j > i + offset { f32::NEG_INFINITY } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (t, tk), scores.device())?;
    let x = (scores * scale)?.broadcast_add(&mask)?;
    let max = x.max_keepdim(candle_core::D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)
}

/// Per-row negative log-likelihood of `targets` under `logits` (`[n, v]`
/// f32, `[n]` u32) → `[n]`. Forward is one pass per row; backward writes
/// `g · (softmax − onehot)` in one pass.
struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "sam-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = f32_slice(s1, l1, self.name())?;
        let tg = u32_slice(s2, l2, self.name())?;
        let v = l1.dims()[1];
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(tg.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                let sum: f32 = row.iter().map(|&a| (a - max).exp()).sum();
                max + sum.ln() - row[t as usize]
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(tg.len())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyBwd)?;
        Ok((Some(g), None))
    }
}

struct CrossEntropyBwd;

impl candle_core::CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "sam-cross-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = f32_slice(s1, l1, self.name())?;
        let tg = u32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let v = l1.dims()[1];
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(i, (o, row))| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
            let mut sum = 0f32;
            for (oj, &a) in o.iter_mut().zip(row) {
                let e = (a - max).exp();
                *oj = e;
                sum += e;
            }
            let k = g[i] / sum;
            o.iter_mut().for_each(|e| *e *= k);
            o[tg[i] as usize] -= g[i];
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Negative log-likelihood per row: `logits: [n, v]`, `targets: [n]` → `[n]`.
/// Differentiable in `logits`; falls back to plain ops off the CPU.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy);
    }
    let max = logits.max_keepdim(candle_core::D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(candle_core::D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    (lse - picked)?.squeeze(1)
}
