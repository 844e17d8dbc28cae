//! The final norm, the output head and the cross-entropy as one graph node
//! ([`HeadNll`]). The loss is linear in each row's NLL, so the forward
//! computes each row's gradient `d nll_i / d x_i` chunk by chunk and the
//! `[rows × vocab]` logits are never kept.

use super::in_pool;
use super::kernels;
use super::linear::{Out, Term, frozen_bwd_terms, frozen_fwd};
use super::norm::{rms_norm, rms_norm_bwd};
use super::pool::Pool;
use super::weights::{Pinned, WRef, f32_data};
use crate::frozen::Frozen;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, bail};
use rayon::prelude::*;
use sam_kernels::Precision;
use sam_kernels::profile::span;
use std::sync::{Arc, Mutex};

/// Most bytes of logits the output head holds at once: rows are evaluated
/// in chunks of this size (512 rows of a 49k vocabulary). Larger chunks
/// made the two head products faster (343 ms for 511 rows at once vs 403 ms
/// in chunks of 128 on the 2-core test machine).
const HEAD_BYTES: usize = 100 << 20;

/// The final norm, the output head and the cross-entropy of each row
/// against its target, fused; see the module docs.
struct HeadNll {
    norm: Tensor,
    head: Frozen,
    targets: Vec<u32>,
    eps: f32,
    grad: bool,
    pool: Arc<Pool>,
    prec: Precision,
    dx: Mutex<Option<Vec<f32>>>,
}

/// Per-row NLL of `targets` for last-layer rows `x` (`[m, hidden]`), and,
/// with `grad`, each row's gradient `d nll_i / d x_i`.
#[allow(clippy::too_many_arguments)]
fn head_nll(
    pool: &Arc<Pool>,
    norm: &[f32],
    head: WRef<'_>,
    vocab: usize,
    x: &[f32],
    targets: &[u32],
    eps: f32,
    grad: bool,
    prec: Precision,
) -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
    let m = targets.len();
    if m == 0 {
        return Ok((Vec::new(), grad.then(Vec::new)));
    }
    let h = x.len() / m;
    if h == 0 || norm.len() != h || head.len() != vocab * h {
        bail!("fused head: inconsistent shapes");
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("fused head: target {bad} outside the vocabulary of {vocab}");
    }
    let sp = span("head/norm");
    let mut hn = pool.take(m * h);
    let rstd = rms_norm(x, norm, &mut hn, h, eps);
    drop(sp);
    let mut nll = vec![0f32; m];
    let mut dh = pool.take(if grad { m * h } else { 0 });
    let rows = (HEAD_BYTES / (4 * vocab)).max(16).min(m);
    let mut logits = pool.take(rows * vocab);
    for c0 in (0..m).step_by(rows) {
        let c = rows.min(m - c0);
        let lg = &mut logits[..c * vocab];
        let sp = span("head/logits");
        let out = Out { w: head, rows: vocab, cols: h, out: &mut *lg, ld: vocab, acc: false };
        frozen_fwd(pool, &hn[c0 * h..(c0 + c) * h], c, h, &mut [out], prec);
        drop(sp);
        let sp = span("head/cross_entropy");
        lg.par_chunks_mut(vocab)
            .zip(nll[c0..c0 + c].par_iter_mut())
            .zip(targets[c0..c0 + c].par_iter())
            .for_each(|((row, out), &tg)| *out = kernels::cross_entropy_row(row, tg as usize, grad));
        drop(sp);
        if grad {
            let _sp = span("head/dh");
            let term = Term { w: head, rows: vocab, cols: h, dy: lg, ld: vocab };
            frozen_bwd_terms(pool, &[term], c, &mut dh[c0 * h..], h, false, prec);
        }
    }
    if !grad {
        return Ok((nll, None));
    }
    let _sp = span("head/norm");
    let mut dx = vec![0f32; m * h];
    let mut zeros = pool.take(m * h);
    zeros.fill(0.0);
    rms_norm_bwd(x, norm, &dh, &rstd, &zeros, &mut dx, h);
    Ok((nll, Some(dx)))
}

impl CustomOp1 for HeadNll {
    fn name(&self) -> &'static str {
        "sam-fused-head-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let _sp = span("head/fwd");
        let (nll, dx) = in_pool(|| -> candle_core::Result<_> {
            let mut p = Pinned::new();
            let ni = p.add(&self.norm)?;
            let hi = p.add_matrix(&self.head)?;
            let vocab = self.head.dims().0;
            head_nll(&self.pool, p.get(ni), p.get_matrix(hi), vocab, x, &self.targets, self.eps, self.grad, self.prec)
        })?;
        *self.dx.lock().map_err(|_| candle_core::Error::Msg("fused head: poisoned".into()))? = dx;
        Ok((CpuStorage::F32(nll), Shape::from(self.targets.len())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // Cloned, not taken: a graph may be backpropagated more than once
        // (several losses over the same forward), as candle's own ops allow.
        let Some(mut dx) = self.dx.lock().map_err(|_| candle_core::Error::Msg("fused head: poisoned".into()))?.clone()
        else {
            bail!("fused head: backward without a saved gradient");
        };
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let h = arg.dim(1)?;
        dx.par_chunks_mut(h).zip(g.par_iter()).for_each(|(row, &gi)| row.iter_mut().for_each(|v| *v *= gi));
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Per-row negative log-likelihood (`[m]`) of `targets` given last-layer
/// rows `x` (`[m, hidden]`, before the final norm), through the final norm
/// `norm` and the output head `head` (`[vocab, hidden]`: f32, bf16, f16 or
/// quantized). Differentiable
/// in `x` when `x` is part of a graph.
pub(super) fn nll_rows(
    x: &Tensor,
    norm: &Tensor,
    head: &Frozen,
    targets: &[u32],
    eps: f64,
    pool: &Arc<Pool>,
    prec: Precision,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let grad = x.track_op();
    let op = HeadNll {
        norm: norm.clone(),
        head: head.clone(),
        targets: targets.to_vec(),
        eps: eps as f32,
        grad,
        pool: pool.clone(),
        prec,
        dx: Mutex::new(None),
    };
    if grad {
        return x.apply_op1(op);
    }
    let mut px = Pinned::new();
    let xi = px.add(&x)?;
    let data = px.get(xi);
    let (nll, _) = in_pool(|| -> candle_core::Result<_> {
        let mut p = Pinned::new();
        let ni = p.add(norm)?;
        let hi = p.add_matrix(head)?;
        head_nll(pool, p.get(ni), p.get_matrix(hi), head.dims().0, data, targets, eps as f32, false, prec)
    })?;
    drop(px);
    Tensor::from_vec(nll, targets.len(), x.device())
}
