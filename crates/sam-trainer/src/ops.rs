//! Custom ops with their own backward passes.
//!
//! [`frozen_matmul`]: candle's `Matmul` backward computes the gradient of
//! *both* operands, even a frozen weight nobody asked about: for a LoRA step
//! that is a third of the matmul work and a weight-sized gradient per layer.
//! Here the product is a custom op on `x` alone whose backward only yields
//! `dL/dx = dL/dy · W`. Weights stored in bf16/f16 or quantized are read
//! into f32 a block of rows at a time (candle's own bf16 matmul widens the whole matrix and
//! rounds the activations to bf16).

use crate::frozen::Frozen;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

/// `x · Wᵀ` with `x: [n, in]` f32 and `w: [out, in]` stored in any way.
fn matmul_wt(x: &Tensor, w: &Frozen) -> candle_core::Result<Tensor> {
    if let Frozen::Dense(t) = w
        && t.dtype() == DType::F32
    {
        return x.matmul(&t.t()?);
    }
    let (out, _) = w.dims();
    let rows = w.block_rows();
    if rows == out {
        return x.matmul(&w.to_f32()?.t()?);
    }
    let mut parts = Vec::with_capacity(out.div_ceil(rows));
    let mut s = 0;
    while s < out {
        let n = rows.min(out - s);
        parts.push(x.matmul(&w.rows_f32(s, n, x.device())?.t()?)?);
        s += n;
    }
    Tensor::cat(&parts, 1)
}

/// `g · W` with `g: [n, out]` f32 and `w: [out, in]` stored in any way.
fn matmul_w(g: &Tensor, w: &Frozen) -> candle_core::Result<Tensor> {
    if let Frozen::Dense(t) = w
        && t.dtype() == DType::F32
    {
        return g.matmul(t);
    }
    let (out, _) = w.dims();
    let rows = w.block_rows();
    let mut acc: Option<Tensor> = None;
    let mut s = 0;
    while s < out {
        let n = rows.min(out - s);
        let part = g.narrow(1, s, n)?.matmul(&w.rows_f32(s, n, g.device())?)?;
        acc = Some(match acc {
            None => part,
            Some(a) => (a + part)?,
        });
        s += n;
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty weight".into()))
}

struct FrozenLinear {
    /// `[out, in]`, dense or quantized.
    weight: Frozen,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "sam-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let x = Tensor::from_slice(x, l.shape(), &Device::Cpu)?;
        let y = matmul_wt(&x, &self.weight)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(matmul_w(grad, &self.weight)?))
    }
}

/// `x · Wᵀ` for a frozen `w: [out, in]` and f32 `x: [n, in]`; gradients flow
/// to `x` only.
pub(crate) fn frozen_matmul(x: &Tensor, w: &Frozen) -> candle_core::Result<Tensor> {
    if !x.track_op() {
        return matmul_wt(x, w);
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        // Other backends: the plain graph (correct; it also computes the
        // unused weight gradient).
        return x.matmul(&w.to_f32()?.to_dtype(x.dtype())?.t()?);
    }
    x.contiguous()?.apply_op1(FrozenLinear { weight: w.clone() })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frozen::BLOCK_ELEMS;

    #[test]
    fn causal_softmax_matches_masked_reference() {
        let d = &Device::Cpu;
        let x = Tensor::new(&[[[0.5f32, 1.0, -2.0], [0.1, 0.2, 0.3]]], d).unwrap(); // [1, 2, 3]: t=2, tk=3, offset 1
        let got: Vec<Vec<f32>> = causal_softmax(&x, 2.0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let sm = |v: &[f32]| -> Vec<f32> {
            let e: Vec<f32> = v.iter().map(|a| (2.0 * a).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|a| a / s).collect()
        };
        let want = [[sm(&[0.5, 1.0]), vec![0.0]].concat(), sm(&[0.1, 0.2, 0.3])];
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn cross_entropy_rows_matches_log_softmax() {
        let d = &Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, 0.0, 0.0]], d).unwrap();
        let t = Tensor::new(&[2u32, 0], d).unwrap();
        let got: Vec<f32> = cross_entropy_rows(&x, &t).unwrap().to_vec1().unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((got[0] - (lse - 3.0)).abs() < 1e-6);
        assert!((got[1] - 3f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn bf16_frozen_matmul_widens_blockwise() {
        let d = &Device::Cpu;
        // More rows than one widening block holds, to exercise the blocks.
        let inp = 4;
        let out = BLOCK_ELEMS / inp + 3;
        let w = Tensor::arange(0u32, (out * inp) as u32, d).unwrap().to_dtype(DType::F32).unwrap();
        let w = ((w.reshape((out, inp)).unwrap() * 1e-7).unwrap()).to_dtype(DType::BF16).unwrap();
        let x = Tensor::new(&[[1f32, -1.0, 0.5, 2.0]], d).unwrap();
        let a: Vec<f32> =
            frozen_matmul(&x, &Frozen::from(w.clone())).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> =
            x.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), out);
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "{worst}");
    }
}
