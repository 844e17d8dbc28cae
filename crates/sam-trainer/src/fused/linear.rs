//! Frozen linear layers with their LoRA adapters, forward and backward:
//! `y = x · Wᵀ + b + s · (x · Aᵀ) · Bᵀ`, no work for the frozen weight's
//! gradient. The frozen products run on `sam-kernels` ([`frozen_fwd`],
//! [`frozen_bwd_terms`]): the projections that share an input (q, k and v;
//! gate and up) as one product in the forward ([`lin_fwd`]) and as one sum
//! `Σ dy_t · W_t` for the input's gradient ([`frozen_bwd`]). A quantized
//! matrix is dequantized a tile of rows at a time into a pooled f32 buffer,
//! each tile multiplied into its block of output columns (forward) or
//! added into the input's gradient (backward), so no more than one tile of
//! it is ever wide. The rank-sized LoRA products run on one thread.

use super::kernels::{self, MatRef, matmul, par};
use super::pool::Pool;
use super::weights::{Lin, WRef};
use crate::quant::QMatrix;
use gemm::Parallelism;
use rayon::prelude::*;
use sam_kernels::profile::span;
use sam_kernels::{Data, Grad, Precision, Rows, Target, Weight};
use std::sync::Arc;

/// Most values of a quantized matrix dequantized at once (4 MB of f32: 682
/// rows of a 1536-wide matrix, 117 of an 8960-wide one).
const TILE_ELEMS: usize = 1 << 20;

/// Rows per dequantized tile of a matrix of `cols` columns.
fn tile_rows(cols: usize) -> usize {
    (TILE_ELEMS / cols.max(1)).max(16)
}

/// A dense frozen `rows × cols` matrix as `sam-kernels` reads it (as
/// stored); `None` for a quantized one.
///
/// # Panics
/// If it does not hold `rows · cols` values.
pub(super) fn stored(w: WRef<'_>, rows: usize, cols: usize) -> Option<Weight<'_>> {
    let data = match w {
        WRef::F32(v) => Data::F32(v),
        WRef::Bf16(v) => Data::Bf16(v),
        WRef::F16(v) => Data::F16(v),
        WRef::Quant(_) => return None,
    };
    Some(Weight::new(data, rows, cols))
}

/// One output of [`frozen_fwd`]: `out (+)= x · Wᵀ` for `w` (`rows × cols`),
/// `out` holding `rows` values per input row, `ld` apart.
pub(super) struct Out<'w, 'o> {
    pub(super) w: WRef<'w>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) out: &'o mut [f32],
    pub(super) ld: usize,
    pub(super) acc: bool,
}

fn target<'a, 'o>(w: Weight<'a>, out: &'o mut [f32], ld: usize, acc: bool) -> Target<'a, 'o> {
    if acc { Target::accumulate(w, out, ld) } else { Target::new(w, out, ld) }
}

/// Runs `f(r0, tile)` over the quantized `q` a tile of rows at a time,
/// each tile dequantized into one pooled f32 buffer.
fn for_tiles(q: &QMatrix, pool: &Arc<Pool>, mut f: impl FnMut(usize, Weight<'_>)) {
    let (rows, cols) = (q.rows(), q.cols());
    let per = tile_rows(cols).min(rows.max(1));
    let mut tile = pool.take(per * cols);
    for r0 in (0..rows).step_by(per) {
        let k = per.min(rows - r0);
        let t = &mut tile[..k * cols];
        let sp = span("product/dequantize");
        q.dequantize_rows(r0, t);
        drop(sp);
        f(r0, Weight::f32(t, k, cols));
    }
}

/// `out_t (+)= x · W_tᵀ` for every output (`x`: `n × inp`): the stored
/// matrices as one `sam-kernels` product (the input packed once), each
/// quantized one a dequantized tile of rows at a time, a tile writing its
/// block of output columns.
pub(super) fn frozen_fwd(pool: &Arc<Pool>, x: &[f32], n: usize, inp: usize, outs: &mut [Out<'_, '_>], prec: Precision) {
    let x = Rows::new(x, n, inp);
    let mut dense = Vec::with_capacity(outs.len());
    let mut quant = Vec::new();
    for o in outs.iter_mut() {
        match (o.w, stored(o.w, o.rows, o.cols)) {
            (_, Some(w)) => dense.push(target(w, o.out, o.ld, o.acc)),
            (WRef::Quant(q), None) => quant.push((q, &mut *o.out, o.ld, o.acc)),
            _ => unreachable!("a matrix is dense or quantized"),
        }
    }
    if !dense.is_empty() {
        sam_kernels::forward(x, &mut dense, prec);
    }
    for (q, out, ld, acc) in quant {
        for_tiles(q, pool, |r0, w| sam_kernels::forward(x, &mut [target(w, &mut out[r0..], ld, acc)], prec));
    }
}

/// One term of [`frozen_bwd_terms`]: `dy · W` for `w` (`rows × cols`) and
/// `dy` holding `rows` values per row, `ld` apart.
pub(super) struct Term<'w, 'd> {
    pub(super) w: WRef<'w>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) dy: &'d [f32],
    pub(super) ld: usize,
}

/// `dx (+)= Σ_t dy_t · W_t` (`n` rows, `dx` rows `ld` apart): the stored
/// matrices as one `sam-kernels` product, each quantized one a dequantized
/// tile of rows at a time (`dy_t`'s matching columns times the tile, added
/// in).
pub(super) fn frozen_bwd_terms(
    pool: &Arc<Pool>,
    terms: &[Term<'_, '_>],
    n: usize,
    dx: &mut [f32],
    ld: usize,
    mut acc: bool,
    prec: Precision,
) {
    let dense: Vec<Grad<'_>> = terms
        .iter()
        .filter_map(|t| Some(Grad::new(Rows::strided(t.dy, n, t.rows, t.ld), stored(t.w, t.rows, t.cols)?)))
        .collect();
    if !dense.is_empty() {
        sam_kernels::backward(&dense, dx, ld, acc, prec);
        acc = true;
    }
    for t in terms {
        let WRef::Quant(q) = t.w else { continue };
        for_tiles(q, pool, |r0, w| {
            let dy = Rows::strided(&t.dy[r0..], n, w.rows(), t.ld);
            sam_kernels::backward(&[Grad::new(dy, w)], dx, ld, acc, prec);
            acc = true;
        });
    }
}

/// `out_i (+)= x · W_iᵀ + bias_i + s_i · (x · A_iᵀ) · B_iᵀ` for projections
/// sharing the input `x` (`n` rows), each output `(values, accumulate)`;
/// the frozen products are one call, so the input is packed once. Returns
/// each projection's `x · A_iᵀ` where it has an adapter.
pub(super) fn lin_fwd(
    pool: &Arc<Pool>,
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
        let mut targets: Vec<Out<'_, '_>> = ls
            .iter()
            .zip(outs.iter_mut())
            .map(|(l, (o, acc))| Out { w: l.w, rows: l.out, cols: l.inp, out: o, ld: l.out, acc: *acc })
            .collect();
        frozen_fwd(pool, x, n, inp, &mut targets, prec);
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
pub(super) fn frozen_bwd(
    pool: &Arc<Pool>,
    terms: &[(&Lin<'_>, &[f32])],
    prec: Precision,
    n: usize,
    dx: &mut [f32],
    acc: bool,
) {
    let Some((first, _)) = terms.first() else { return };
    let _sp = span("product/bwd");
    let terms: Vec<Term<'_, '_>> =
        terms.iter().map(|(l, dy)| Term { w: l.w, rows: l.out, cols: l.inp, dy, ld: l.out }).collect();
    frozen_bwd_terms(pool, &terms, n, dx, first.inp, acc, prec);
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
#[allow(clippy::too_many_arguments)]
pub(super) fn lin_bwd(
    pool: &Arc<Pool>,
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
            frozen_bwd(pool, &[(l, dy)], prec, n, d, acc);
            lora_bwd(l, dy, n, x, xa, Some(d))
        }
        None => lora_bwd(l, dy, n, x, xa, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products read a quantized matrix in several tiles (2100 rows of 512:
    /// two tiles) and give what the whole dequantized matrix gives, in
    /// place (the output's column blocks) and accumulated.
    #[test]
    fn tiled_products_equal_whole_ones() {
        let (rows, cols, n) = (2100, 512, 3);
        assert!(tile_rows(cols) < rows);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 31 % 97) as f32 - 48.0) / 200.0).collect();
        let q = QMatrix::quantize_mlx(&w, rows, cols, 4, 32).unwrap();
        let mut dense = vec![0f32; rows * cols];
        q.dequantize_rows(0, &mut dense);
        let x: Vec<f32> = (0..n * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let g: Vec<f32> = (0..n * rows).map(|i| (i % 5) as f32 - 2.0).collect();
        let pool = Arc::new(Pool::default());
        let close = |a: &[f32], b: &[f32]| {
            let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst < 1e-3, "{worst}");
        };
        let mut a = vec![1f32; n * rows];
        let mut b = a.clone();
        matmul(&mut a, 0, rows, MatRef::new(&x, n, cols), MatRef::new(&dense, rows, cols).t(), true, 1.0, par());
        let out = Out { w: WRef::Quant(&q), rows, cols, out: &mut b, ld: rows, acc: true };
        frozen_fwd(&pool, &x, n, cols, &mut [out], Precision::F32);
        close(&a, &b);
        let mut c = vec![0f32; n * cols];
        let mut d = vec![0f32; n * cols];
        matmul(&mut c, 0, cols, MatRef::new(&g, n, rows), MatRef::new(&dense, rows, cols), false, 1.0, par());
        let term = Term { w: WRef::Quant(&q), rows, cols, dy: &g, ld: rows };
        frozen_bwd_terms(&pool, &[term], n, &mut d, cols, false, Precision::F32);
        close(&c, &d);
    }
}
