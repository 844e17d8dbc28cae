//! A frozen linear layer with its LoRA adapter, forward and backward:
//! `y = x · Wᵀ + b + s · (x · Aᵀ) · Bᵀ`, no work for the frozen weight's
//! gradient, rank-sized products on one thread.

use super::kernels::{self, MatRef, matmul, par};
use super::pool::Pool;
use super::weights::{Lin, widen};
use gemm::Parallelism;
use rayon::prelude::*;
use sam_kernels::profile::span;
use std::sync::Arc;

/// `out (+)= x · Wᵀ + bias + s · (x · Aᵀ) · Bᵀ`; returns `x · Aᵀ` when the
/// layer has an adapter.
pub(super) fn lin_fwd(
    l: &Lin<'_>,
    pool: &Arc<Pool>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    acc: bool,
) -> Option<Vec<f32>> {
    let sp = span("product/fwd");
    let w = widen(l.w, pool);
    matmul(out, 0, l.out, MatRef::new(x, n, l.inp), MatRef::new(&w, l.out, l.inp).t(), acc, 1.0, par());
    drop(w);
    drop(sp);
    if let Some(b) = l.bias {
        out.par_chunks_mut(l.out).with_min_len(16).for_each(|row| kernels::add_assign(row, b));
    }
    let lo = l.lora.as_ref()?;
    let _sp = span("lora/fwd");
    let mut xa = vec![0f32; n * lo.r];
    matmul(&mut xa, 0, lo.r, MatRef::new(x, n, l.inp), MatRef::new(lo.a, lo.r, l.inp).t(), false, 1.0, small(n));
    matmul(out, 0, l.out, MatRef::new(&xa, n, lo.r), MatRef::new(lo.b, l.out, lo.r).t(), true, lo.s, small(n));
    Some(xa)
}

/// Threads for a rank-sized product over `n` rows: one thread unless the
/// batch is long enough to repay a fork-join.
fn small(n: usize) -> Parallelism {
    if n >= 4096 { par() } else { Parallelism::None }
}

/// LoRA gradients of one projection: `(dA, dB)`.
pub(super) type LoraGrad = (Vec<f32>, Vec<f32>);

/// Backward of [`lin_fwd`] for `dy = dL/d out`: `dx (+)= dy · W (+ s · dy B A)`
/// when `dx` is given, and the adapter's gradients. `x` is the layer's input
/// and `xa` the saved `x · Aᵀ`.
#[allow(clippy::too_many_arguments)]
pub(super) fn lin_bwd(
    l: &Lin<'_>,
    pool: &Arc<Pool>,
    dy: &[f32],
    n: usize,
    x: &[f32],
    xa: Option<&[f32]>,
    mut dx: Option<(&mut [f32], bool)>,
) -> Option<LoraGrad> {
    if let Some((d, acc)) = dx.as_mut() {
        let _sp = span("product/bwd");
        let w = widen(l.w, pool);
        matmul(d, 0, l.inp, MatRef::new(dy, n, l.out), MatRef::new(&w, l.out, l.inp), *acc, 1.0, par());
    }
    let lo = l.lora.as_ref()?;
    let _sp = span("lora/bwd");
    let own;
    let xa = match xa {
        Some(v) => v,
        None => {
            let mut v = vec![0f32; n * lo.r];
            matmul(&mut v, 0, lo.r, MatRef::new(x, n, l.inp), MatRef::new(lo.a, lo.r, l.inp).t(), false, 1.0, small(n));
            own = v;
            &own
        }
    };
    let mut db = vec![0f32; l.out * lo.r];
    matmul(&mut db, 0, lo.r, MatRef::new(dy, n, l.out).t(), MatRef::new(xa, n, lo.r), false, lo.s, small(n));
    let mut tt = vec![0f32; n * lo.r];
    matmul(&mut tt, 0, lo.r, MatRef::new(dy, n, l.out), MatRef::new(lo.b, l.out, lo.r), false, 1.0, small(n));
    let mut da = vec![0f32; lo.r * l.inp];
    matmul(&mut da, 0, l.inp, MatRef::new(&tt, n, lo.r).t(), MatRef::new(x, n, l.inp), false, lo.s, small(n));
    if let Some((d, _)) = dx {
        matmul(d, 0, l.inp, MatRef::new(&tt, n, lo.r), MatRef::new(lo.a, lo.r, l.inp), true, lo.s, small(n));
    }
    Some((da, db))
}
