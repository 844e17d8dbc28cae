//! Frozen linear layers with their LoRA adapters, forward and backward:
//! `y = x · Wᵀ + b + s · (x · Aᵀ) · Bᵀ`, no work for the frozen weight's
//! gradient. The frozen products run on `sam-kernels` ([`weight`]): the
//! projections that share an input (q, k and v; gate and up) as one
//! product in the forward ([`lin_fwd`]) and as one sum `Σ dy_t · W_t` for
//! the input's gradient ([`frozen_bwd`]); the rank-sized LoRA products run
//! on one thread.

use super::kernels::{self, MatRef, matmul, par};
use super::weights::{Lin, WRef};
use gemm::Parallelism;
use rayon::prelude::*;
use sam_kernels::profile::span;
use sam_kernels::{Data, Grad, Precision, Rows, Target, Weight};

/// A projection's frozen weight as `sam-kernels` reads it (as stored).
pub(super) fn weight<'a>(l: &Lin<'a>) -> Weight<'a> {
    stored(l.w, l.out, l.inp)
}

/// A frozen `rows × cols` matrix as `sam-kernels` reads it.
///
/// # Panics
/// If it does not hold `rows · cols` values.
pub(super) fn stored(w: WRef<'_>, rows: usize, cols: usize) -> Weight<'_> {
    let data = match w {
        WRef::F32(v) => Data::F32(v),
        WRef::Bf16(v) => Data::Bf16(v),
        WRef::F16(v) => Data::F16(v),
    };
    Weight::new(data, rows, cols)
}

/// `out_i (+)= x · W_iᵀ + bias_i + s_i · (x · A_iᵀ) · B_iᵀ` for projections
/// sharing the input `x` (`n` rows), each output `(values, accumulate)`;
/// the frozen products are one call, so the input is packed once. Returns
/// each projection's `x · A_iᵀ` where it has an adapter.
pub(super) fn lin_fwd(
    ls: &[&Lin<'_>],
    prec: Precision,
    x: &[f32],
    n: usize,
    outs: &mut [(&mut [f32], bool)],
) -> Vec<Option<Vec<f32>>> {
    assert_eq!(ls.len(), outs.len(), "one output per projection");
    let inp = ls.first().map_or(0, |l| l.inp);
    let sp = span("product/fwd");
    {
        let mut targets: Vec<Target<'_, '_>> = ls
            .iter()
            .zip(outs.iter_mut())
            .map(|(l, (o, acc))| {
                let w = weight(l);
                if *acc { Target::accumulate(w, o, l.out) } else { Target::new(w, o, l.out) }
            })
            .collect();
        sam_kernels::forward(Rows::new(x, n, inp), &mut targets, prec);
    }
    drop(sp);
    ls.iter()
        .zip(outs.iter_mut())
        .map(|(l, (out, _))| {
            if let Some(b) = l.bias {
                out.par_chunks_mut(l.out).with_min_len(16).for_each(|row| kernels::add_assign(row, b));
            }
            let lo = l.lora.as_ref()?;
            let _sp = span("lora/fwd");
            let mut xa = vec![0f32; n * lo.r];
            matmul(
                &mut xa,
                0,
                lo.r,
                MatRef::new(x, n, l.inp),
                MatRef::new(lo.a, lo.r, l.inp).t(),
                false,
                1.0,
                small(n),
            );
            matmul(out, 0, l.out, MatRef::new(&xa, n, lo.r), MatRef::new(lo.b, l.out, lo.r).t(), true, lo.s, small(n));
            Some(xa)
        })
        .collect()
}

/// Threads for a rank-sized product over `n` rows: one thread unless the
/// batch is long enough to repay a fork-join.
fn small(n: usize) -> Parallelism {
    if n >= 4096 { par() } else { Parallelism::None }
}

/// LoRA gradients of one projection: `(dA, dB)`.
pub(super) type LoraGrad = (Vec<f32>, Vec<f32>);

/// The frozen part of the input's gradient of projections sharing an
/// input: `dx (+)= Σ_t dy_t · W_t` over `(projection, dy_t)` terms (`n`
/// rows each), as one product.
pub(super) fn frozen_bwd(terms: &[(&Lin<'_>, &[f32])], prec: Precision, n: usize, dx: &mut [f32], acc: bool) {
    let Some((first, _)) = terms.first() else { return };
    let _sp = span("product/bwd");
    let grads: Vec<Grad<'_>> = terms.iter().map(|(l, dy)| Grad::new(Rows::new(dy, n, l.out), weight(l))).collect();
    sam_kernels::backward(&grads, dx, first.inp, acc, prec);
}

/// The adapter's part of the backward of [`lin_fwd`] for `dy = dL/d out`:
/// `dx += s · dy B A` when `dx` is given, and the adapter's gradients
/// (none without an adapter). `x` is the layer's input and `xa` the saved
/// `x · Aᵀ`.
pub(super) fn lora_bwd(
    l: &Lin<'_>,
    dy: &[f32],
    n: usize,
    x: &[f32],
    xa: Option<&[f32]>,
    dx: Option<&mut [f32]>,
) -> Option<LoraGrad> {
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
    if let Some(d) = dx {
        matmul(d, 0, l.inp, MatRef::new(&tt, n, lo.r), MatRef::new(lo.a, lo.r, l.inp), true, lo.s, small(n));
    }
    Some((da, db))
}

/// Backward of [`lin_fwd`] for one projection: `dx (+)= dy · W (+ s · dy B A)`
/// when `dx = (values, accumulate)` is given, and the adapter's gradients.
pub(super) fn lin_bwd(
    l: &Lin<'_>,
    prec: Precision,
    dy: &[f32],
    n: usize,
    x: &[f32],
    xa: Option<&[f32]>,
    dx: Option<(&mut [f32], bool)>,
) -> Option<LoraGrad> {
    match dx {
        Some((d, acc)) => {
            frozen_bwd(&[(l, dy)], prec, n, d, acc);
            lora_bwd(l, dy, n, x, xa, Some(d))
        }
        None => lora_bwd(l, dy, n, x, xa, None),
    }
}
