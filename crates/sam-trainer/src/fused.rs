//! The training path on the CPU: a whole decoder layer, and the final norm +
//! output head + cross-entropy, each as one graph node with a hand-written
//! backward.
//!
//! Built from candle's ops, a layer's step is some forty graph nodes, each
//! allocating a fresh tensor, most of them single-pass elementwise work
//! between the matrix products, and candle's matmul backward computes the
//! gradients of frozen weights too. Here a layer is a [`CustomOp1`] on its
//! input: the forward runs the products on `gemm` directly (strided views
//! instead of `contiguous()` copies; causal attention in query blocks that
//! skip the masked half) with the elementwise passes fused and vectorised
//! ([`kernels`]), and keeps what the backward needs; the backward
//! computes the input's gradient and the LoRA gradients, which it parks in
//! the decoder's side store (see [`crate::model::Decoder::take_checkpoint_grads`]),
//! as the LoRA matrices are not inputs of the node. A recomputed
//! (checkpointed) layer keeps nothing and runs its forward again in the
//! backward.
//!
//! The loss node takes the selected rows of the last layer's output and
//! returns each row's negative log-likelihood; since the loss is linear in
//! those, it computes each row's gradient `d nll_i / d x_i` in the forward,
//! chunk by chunk, so the `[rows × vocab]` logits are never kept.
//!
//! Used on the CPU (f32 weights, or bf16/f16 ones widened per product)
//! without a KV cache or dropout; other cases (generation, dropout, GPU
//! devices) take the plain-op path in [`crate::model`].

mod kernels;
mod pool;

use crate::lora::Target;
use crate::model::Layer;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, StorageRef, Tensor, TensorId, bail};
use gemm::Parallelism;
use kernels::{MatRef, SendPtr, matmul, par, raw_matmul};
use pool::Buf;
pub(crate) use pool::Pool;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Query/key block of the causal attention: the product for query block
/// `i` only covers keys of blocks `0..=i`.
const ATTN_BLOCK: usize = 64;

/// Most bytes of logits the output head holds at once: rows are evaluated
/// in chunks of this size (512 rows of a 49k vocabulary). Larger chunks
/// made the two head products faster (343 ms for 511 rows at once vs 403 ms
/// in chunks of 128 on the 2-core test machine).
const HEAD_BYTES: usize = 100 << 20;

/// Gradients of LoRA variables produced inside fused or checkpointed nodes.
pub(crate) type SideGrads = Arc<Mutex<HashMap<TensorId, Tensor>>>;

/// Shapes shared by all layers of one forward pass, and the rotary table.
#[derive(Debug)]
pub(crate) struct Geometry {
    b: usize,
    t: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    eps: f32,
    /// `[t, head_dim / 2]` cosines and sines of position × frequency.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Geometry {
    /// The geometry of a `[b, t]` batch of `cfg`'s model.
    pub(crate) fn new(cfg: &crate::config::ModelConfig, b: usize, t: usize) -> Self {
        let hd = cfg.head_dim;
        let inv: Vec<f32> =
            (0..hd / 2).map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        let mut cos = Vec::with_capacity(t * hd / 2);
        let mut sin = Vec::with_capacity(t * hd / 2);
        for p in 0..t {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            b,
            t,
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            inter: cfg.intermediate_size,
            eps: cfg.rms_norm_eps as f32,
            cos,
            sin,
        }
    }

    fn n(&self) -> usize {
        self.b * self.t
    }

    fn dq(&self) -> usize {
        self.heads * self.head_dim
    }

    fn dkv(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Whether a layer's weights can take the fused path: on the CPU, norms and
/// biases in f32, matrices in f32, bf16 or f16.
pub(crate) fn layer_supported(layer: &Layer) -> bool {
    let ok = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    let matrix = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) && t.device().is_cpu();
    ok(&layer.attn_norm)
        && ok(&layer.mlp_norm)
        && Target::ALL.iter().all(|&tg| {
            let l = layer.linear(tg);
            matrix(l.weight()) && l.bias().is_none_or(ok)
        })
}

/// Read guards on the storages of a set of tensors, so their data can be
/// borrowed as slices while a kernel runs.
struct Pinned<'a> {
    refs: Vec<(StorageRef<'a>, usize, usize)>,
}

impl<'a> Pinned<'a> {
    fn new() -> Self {
        Self { refs: Vec::new() }
    }

    /// Pins an f32 tensor.
    fn add(&mut self, t: &'a Tensor) -> candle_core::Result<usize> {
        if t.dtype() != DType::F32 {
            bail!("fused: expected an f32 tensor");
        }
        self.add_matrix(t)
    }

    /// Pins an f32, bf16 or f16 tensor.
    fn add_matrix(&mut self, t: &'a Tensor) -> candle_core::Result<usize> {
        let (st, l) = t.storage_and_layout();
        let Some((a, b)) = l.contiguous_offsets() else { bail!("fused: weight is not contiguous") };
        if !matches!(&*st, Storage::Cpu(CpuStorage::F32(_) | CpuStorage::BF16(_) | CpuStorage::F16(_))) {
            bail!("fused: expected an f32, bf16 or f16 tensor on the CPU");
        }
        self.refs.push((st, a, b));
        Ok(self.refs.len() - 1)
    }

    fn get(&self, i: usize) -> &[f32] {
        match self.get_matrix(i) {
            WRef::F32(v) => v,
            _ => &[],
        }
    }

    fn get_matrix(&self, i: usize) -> WRef<'_> {
        let (st, a, b) = &self.refs[i];
        match &**st {
            Storage::Cpu(CpuStorage::F32(v)) => WRef::F32(&v[*a..*b]),
            Storage::Cpu(CpuStorage::BF16(v)) => WRef::Bf16(&v[*a..*b]),
            Storage::Cpu(CpuStorage::F16(v)) => WRef::F16(&v[*a..*b]),
            _ => WRef::F32(&[]),
        }
    }
}

/// A frozen weight matrix as stored.
#[derive(Clone, Copy)]
enum WRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

/// A weight matrix in f32: the stored one, or a widened copy.
enum Wide<'a> {
    Borrowed(&'a [f32]),
    Owned(Buf),
}

impl std::ops::Deref for Wide<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Wide::Borrowed(s) => s,
            Wide::Owned(b) => b,
        }
    }
}

/// `w` in f32; half-precision weights are widened into a pooled buffer for
/// the duration of one product.
fn widen<'a>(w: WRef<'a>, pool: &Arc<Pool>) -> Wide<'a> {
    use half::slice::HalfFloatSliceExt;
    const CHUNK: usize = 1 << 16;
    match w {
        WRef::F32(s) => Wide::Borrowed(s),
        WRef::Bf16(s) => {
            let mut b = pool.take(s.len());
            b.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(o, i)| i.convert_to_f32_slice(o));
            Wide::Owned(b)
        }
        WRef::F16(s) => {
            let mut b = pool.take(s.len());
            b.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(o, i)| i.convert_to_f32_slice(o));
            Wide::Owned(b)
        }
    }
}

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{what}: input is not contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => bail!("{what}: expected f32"),
    }
}

struct LoraView<'a> {
    a: &'a [f32],
    b: &'a [f32],
    r: usize,
    s: f32,
}

struct Lin<'a> {
    w: WRef<'a>,
    bias: Option<&'a [f32]>,
    lora: Option<LoraView<'a>>,
    out: usize,
    inp: usize,
}

struct LayerView<'a> {
    norm1: &'a [f32],
    norm2: &'a [f32],
    lins: Vec<Lin<'a>>,
}

impl LayerView<'_> {
    fn lin(&self, t: Target) -> &Lin<'_> {
        &self.lins[t as usize]
    }

    fn adapted(&self, t: Target) -> bool {
        self.lin(t).lora.is_some()
    }
}

fn pin_layer<'a>(layer: &'a Layer, adapter: bool) -> candle_core::Result<Pinned<'a>> {
    let mut p = Pinned::new();
    p.add(&layer.attn_norm)?;
    p.add(&layer.mlp_norm)?;
    for t in Target::ALL {
        let l = layer.linear(t);
        p.add_matrix(l.weight())?;
        if let Some(b) = l.bias() {
            p.add(b)?;
        }
        if adapter && let Some(w) = l.lora() {
            p.add(w.a.as_tensor())?;
            p.add(w.b.as_tensor())?;
        }
    }
    Ok(p)
}

/// The layer's pinned data as slices, checked against the geometry (a
/// mismatch is an error here rather than an out-of-bounds product later).
fn view<'p>(p: &'p Pinned<'_>, layer: &Layer, adapter: bool, geo: &Geometry) -> candle_core::Result<LayerView<'p>> {
    let mut i = 0;
    let mut idx = || {
        i += 1;
        i - 1
    };
    let norm1 = p.get(idx());
    let norm2 = p.get(idx());
    let mut lins = Vec::with_capacity(7);
    for t in Target::ALL {
        let l = layer.linear(t);
        let (out, inp) = (l.out_dim(), l.in_dim());
        let w = p.get_matrix(idx());
        let mut next = || p.get(idx());
        let bias = l.bias().map(|_| next());
        let lora = match l.lora() {
            Some(lw) if adapter => {
                let a = next();
                let b = next();
                Some(LoraView { a, b, r: lw.a.dims()[0], s: lw.scale as f32 })
            }
            _ => None,
        };
        lins.push(Lin { w, bias, lora, out, inp });
    }
    let lv = LayerView { norm1, norm2, lins };
    check(&lv, geo)?;
    Ok(lv)
}

fn check(lv: &LayerView<'_>, geo: &Geometry) -> candle_core::Result<()> {
    let (h, q, kv, i) = (geo.hidden, geo.dq(), geo.dkv(), geo.inter);
    if geo.kv_heads == 0 || geo.heads % geo.kv_heads != 0 || geo.head_dim % 2 != 0 {
        bail!("fused layer: {} heads over {} key/value heads of width {}", geo.heads, geo.kv_heads, geo.head_dim);
    }
    if lv.norm1.len() != h || lv.norm2.len() != h {
        bail!("fused layer: norm weights do not match the hidden size {h}");
    }
    let want = [
        (Target::Q, q, h),
        (Target::K, kv, h),
        (Target::V, kv, h),
        (Target::O, h, q),
        (Target::Gate, i, h),
        (Target::Up, i, h),
        (Target::Down, h, i),
    ];
    for (t, out, inp) in want {
        let l = lv.lin(t);
        let wlen = match l.w {
            WRef::F32(v) => v.len(),
            WRef::Bf16(v) => v.len(),
            WRef::F16(v) => v.len(),
        };
        let lora_ok = l.lora.as_ref().is_none_or(|lo| lo.a.len() == lo.r * inp && lo.b.len() == out * lo.r);
        if l.out != out || l.inp != inp || wlen != out * inp || l.bias.is_some_and(|b| b.len() != out) || !lora_ok {
            bail!("fused layer: {} is [{}, {}], the configuration wants [{out}, {inp}]", t.module_name(), l.out, l.inp);
        }
    }
    Ok(())
}

/// `out (+)= x · Wᵀ + bias + s · (x · Aᵀ) · Bᵀ`; returns `x · Aᵀ` when the
/// layer has an adapter.
fn lin_fwd(l: &Lin<'_>, pool: &Arc<Pool>, x: &[f32], n: usize, out: &mut [f32], acc: bool) -> Option<Vec<f32>> {
    let w = widen(l.w, pool);
    matmul(out, 0, l.out, MatRef::new(x, n, l.inp), MatRef::new(&w, l.out, l.inp).t(), acc, 1.0, par());
    drop(w);
    if let Some(b) = l.bias {
        out.par_chunks_mut(l.out).with_min_len(16).for_each(|row| kernels::add_assign(row, b));
    }
    let lo = l.lora.as_ref()?;
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
type LoraGrad = (Vec<f32>, Vec<f32>);

/// Backward of [`lin_fwd`] for `dy = dL/d out`: `dx (+)= dy · W (+ s · dy B A)`
/// when `dx` is given, and the adapter's gradients. `x` is the layer's input
/// and `xa` the saved `x · Aᵀ`.
#[allow(clippy::too_many_arguments)]
fn lin_bwd(
    l: &Lin<'_>,
    pool: &Arc<Pool>,
    dy: &[f32],
    n: usize,
    x: &[f32],
    xa: Option<&[f32]>,
    mut dx: Option<(&mut [f32], bool)>,
) -> Option<LoraGrad> {
    if let Some((d, acc)) = dx.as_mut() {
        let w = widen(l.w, pool);
        matmul(d, 0, l.inp, MatRef::new(dy, n, l.out), MatRef::new(&w, l.out, l.inp), *acc, 1.0, par());
    }
    let lo = l.lora.as_ref()?;
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

/// RMSNorm of every row; returns the per-row `rstd`.
fn rms_norm(x: &[f32], w: &[f32], y: &mut [f32], h: usize, eps: f32) -> Vec<f32> {
    let mut rstd = vec![0f32; x.len() / h];
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .zip(rstd.par_iter_mut())
        .with_min_len(8)
        .for_each(|((yr, xr), r)| *r = kernels::rms_norm_row(xr, w, yr, eps));
    rstd
}

/// `dx = base + RMSNorm'(x)ᵀ dy` row by row.
fn rms_norm_bwd(x: &[f32], w: &[f32], dy: &[f32], rstd: &[f32], base: &[f32], dx: &mut [f32], h: usize) {
    dx.par_chunks_mut(h)
        .zip(x.par_chunks(h).zip(dy.par_chunks(h)))
        .zip(rstd.par_iter().zip(base.par_chunks(h)))
        .with_min_len(8)
        .for_each(|((o, (xr, gr)), (&r, br))| kernels::rms_norm_bwd_row(xr, w, gr, r, br, o));
}

fn rope(geo: &Geometry, x: &mut [f32], width: usize, inverse: bool) {
    let half = geo.head_dim / 2;
    x.par_chunks_mut(width).enumerate().with_min_len(8).for_each(|(row, xr)| {
        let p = row % geo.t;
        let (c, s) = (&geo.cos[p * half..(p + 1) * half], &geo.sin[p * half..(p + 1) * half]);
        kernels::rope_row(xr, c, s, geo.head_dim, inverse);
    });
}

/// Work units `(batch, head, block)` of the attention, largest first.
fn units(geo: &Geometry, heads: usize, rev: bool) -> Vec<(usize, usize, usize)> {
    let nb = geo.t.div_ceil(ATTN_BLOCK);
    let mut u: Vec<(usize, usize, usize)> =
        (0..geo.b).flat_map(|b| (0..heads).flat_map(move |h| (0..nb).map(move |k| (b, h, k)))).collect();
    // Query block k covers k + 1 key blocks; key block k is seen by nb - k query blocks.
    if rev {
        u.sort_by_key(|&(_, _, k)| k);
    } else {
        u.sort_by_key(|&(_, _, k)| std::cmp::Reverse(k));
    }
    u
}

/// Causal attention: `p = softmax(scale · q kᵀ)` per head (`[b, heads, t, t]`,
/// only each query block's causal part written, the rest of the row left
/// unread), `ao = p v` (`[n, heads · head_dim]`).
fn attn_fwd(geo: &Geometry, q: &[f32], k: &[f32], v: &[f32], p: &mut [f32], ao: &mut [f32]) {
    let (t, hd, nh) = (geo.t, geo.head_dim, geo.heads);
    let (dq, dkv) = (geo.dq(), geo.dkv());
    let rep = nh / geo.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(p.len() >= geo.b * nh * t * t && ao.len() >= geo.n() * dq);
    assert!(q.len() >= geo.n() * dq && k.len() >= geo.n() * dkv && v.len() >= geo.n() * dkv);
    let (pp, aop) = (SendPtr(p.as_mut_ptr()), SendPtr(ao.as_mut_ptr()));
    units(geo, nh, false).into_par_iter().with_max_len(1).for_each(|(bi, h, qb)| {
        let g = h / rep;
        let i0 = qb * ATTN_BLOCK;
        let i1 = (i0 + ATTN_BLOCK).min(t);
        let m = i1 - i0;
        // SAFETY: all offsets stay inside the buffers checked above; each
        // unit writes its own rows of its own head of `p` and `ao`.
        unsafe {
            let prow = pp.get().add(((bi * nh + h) * t + i0) * t);
            raw_matmul(
                prow,
                t,
                (m, i1, hd),
                (q.as_ptr().add((bi * t + i0) * dq + h * hd), dq, 1),
                (k.as_ptr().add(bi * t * dkv + g * hd), 1, dkv),
                false,
                1.0,
                Parallelism::None,
            );
            for r in 0..m {
                let row = std::slice::from_raw_parts_mut(prow.add(r * t), i1);
                kernels::softmax_row(row, i0 + r + 1, scale);
            }
            raw_matmul(
                aop.get().add((bi * t + i0) * dq + h * hd),
                dq,
                (m, hd, i1),
                (prow, t, 1),
                (v.as_ptr().add(bi * t * dkv + g * hd), dkv, 1),
                false,
                1.0,
                Parallelism::None,
            );
        }
    });
}

/// `dst[j0..j1] = Σ_h mᵀ[j0..j1, j0..t] · src_h[j0..t]` over the query heads
/// of each key/value head: `m` is `p` (for dV, `src` = dAO) or dS (for dK,
/// `src` = q).
fn attn_key_side(geo: &Geometry, m: &[f32], src: &[f32], dst: &mut [f32]) {
    let (t, hd, nh) = (geo.t, geo.head_dim, geo.heads);
    let (dq, dkv) = (geo.dq(), geo.dkv());
    let rep = nh / geo.kv_heads;
    assert!(m.len() >= geo.b * nh * t * t && src.len() >= geo.n() * dq && dst.len() >= geo.n() * dkv);
    let dp = SendPtr(dst.as_mut_ptr());
    units(geo, geo.kv_heads, true).into_par_iter().with_max_len(1).for_each(|(bi, g, kb)| {
        let j0 = kb * ATTN_BLOCK;
        let j1 = (j0 + ATTN_BLOCK).min(t);
        for hh in 0..rep {
            let h = g * rep + hh;
            // SAFETY: in bounds per the checks above; each unit writes its
            // own key rows of its own key/value head.
            unsafe {
                raw_matmul(
                    dp.get().add((bi * t + j0) * dkv + g * hd),
                    dkv,
                    (j1 - j0, hd, t - j0),
                    (m.as_ptr().add(((bi * nh + h) * t + j0) * t + j0), 1, t),
                    (src.as_ptr().add((bi * t + j0) * dq + h * hd), dq, 1),
                    hh > 0,
                    1.0,
                    Parallelism::None,
                );
            }
        }
    });
}

/// Attention backward. `p` is overwritten with dS (the scores' gradient,
/// scale included).
#[allow(clippy::too_many_arguments)]
fn attn_bwd(
    geo: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &mut [f32],
    dao: &[f32],
    dq: Option<&mut [f32]>,
    dk: Option<&mut [f32]>,
    dv: Option<&mut [f32]>,
) {
    let (t, hd, nh) = (geo.t, geo.head_dim, geo.heads);
    let (dqw, dkv) = (geo.dq(), geo.dkv());
    let rep = nh / geo.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    if let Some(dv) = dv {
        attn_key_side(geo, p, dao, dv);
    }
    if dq.is_none() && dk.is_none() {
        return;
    }
    assert!(p.len() >= geo.b * nh * t * t && dao.len() >= geo.n() * dqw);
    assert!(k.len() >= geo.n() * dkv && v.len() >= geo.n() * dkv);
    let dq_ptr = dq.map(|d| {
        assert!(d.len() >= geo.n() * dqw);
        SendPtr(d.as_mut_ptr())
    });
    let pp = SendPtr(p.as_mut_ptr());
    units(geo, nh, false).into_par_iter().with_max_len(1).for_each(|(bi, h, qb)| {
        let g = h / rep;
        let i0 = qb * ATTN_BLOCK;
        let i1 = (i0 + ATTN_BLOCK).min(t);
        let m = i1 - i0;
        let mut dp = vec![0f32; m * i1];
        // SAFETY: in bounds per the checks above; each unit reads and
        // writes its own rows of its own head of `p` and `dq`.
        unsafe {
            raw_matmul(
                dp.as_mut_ptr(),
                i1,
                (m, i1, hd),
                (dao.as_ptr().add((bi * t + i0) * dqw + h * hd), dqw, 1),
                (v.as_ptr().add(bi * t * dkv + g * hd), 1, dkv),
                false,
                1.0,
                Parallelism::None,
            );
            let prow = pp.get().add(((bi * nh + h) * t + i0) * t);
            for r in 0..m {
                let row = std::slice::from_raw_parts_mut(prow.add(r * t), i1);
                kernels::softmax_bwd_row(row, &dp[r * i1..(r + 1) * i1], scale);
            }
            if let Some(d) = dq_ptr {
                raw_matmul(
                    d.get().add((bi * t + i0) * dqw + h * hd),
                    dqw,
                    (m, hd, i1),
                    (prow, t, 1),
                    (k.as_ptr().add(bi * t * dkv + g * hd), dkv, 1),
                    false,
                    1.0,
                    Parallelism::None,
                );
            }
        }
    });
    if let Some(dk) = dk {
        attn_key_side(geo, p, q, dk);
    }
}

/// What a layer's backward needs from its forward.
struct Saved {
    rstd1: Vec<f32>,
    h1: Buf,
    q: Buf,
    k: Buf,
    v: Buf,
    p: Buf,
    ao: Option<Buf>,
    xa: Vec<Option<Vec<f32>>>,
    x1: Buf,
    rstd2: Vec<f32>,
    h2: Buf,
    g: Buf,
    u: Buf,
}

/// What a layer forward is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The output only.
    Output,
    /// The output and what the backward needs.
    OutputAndSaved,
    /// What the backward needs only (recomputing a checkpointed layer): the
    /// MLP's down projection, whose output the backward never reads, is
    /// skipped.
    Saved,
}

/// One decoder layer forward on `x` (`[n, hidden]`): the output (empty for
/// [`Pass::Saved`]) and, unless [`Pass::Output`], what the backward needs.
fn layer_fwd(geo: &Geometry, pool: &Arc<Pool>, lv: &LayerView<'_>, x: &[f32], pass: Pass) -> (Vec<f32>, Option<Saved>) {
    let (n, hdim, inter) = (geo.n(), geo.hidden, geo.inter);
    let (dq, dkv) = (geo.dq(), geo.dkv());
    let mut xa: Vec<Option<Vec<f32>>> = (0..7).map(|_| None).collect();

    let mut h1 = pool.take(n * hdim);
    let rstd1 = rms_norm(x, lv.norm1, &mut h1, hdim, geo.eps);
    let mut q = pool.take(n * dq);
    let mut k = pool.take(n * dkv);
    let mut v = pool.take(n * dkv);
    xa[Target::Q as usize] = lin_fwd(lv.lin(Target::Q), pool, &h1, n, &mut q, false);
    xa[Target::K as usize] = lin_fwd(lv.lin(Target::K), pool, &h1, n, &mut k, false);
    xa[Target::V as usize] = lin_fwd(lv.lin(Target::V), pool, &h1, n, &mut v, false);
    rope(geo, &mut q, dq, false);
    rope(geo, &mut k, dkv, false);

    let mut p = pool.take(geo.b * geo.heads * geo.t * geo.t);
    let mut ao = pool.take(n * dq);
    attn_fwd(geo, &q, &k, &v, &mut p, &mut ao);
    let mut x1 = pool.take(n * hdim);
    x1.copy_from_slice(x);
    xa[Target::O as usize] = lin_fwd(lv.lin(Target::O), pool, &ao, n, &mut x1, true);

    let mut h2 = pool.take(n * hdim);
    let rstd2 = rms_norm(&x1, lv.norm2, &mut h2, hdim, geo.eps);
    let mut g = pool.take(n * inter);
    let mut u = pool.take(n * inter);
    xa[Target::Gate as usize] = lin_fwd(lv.lin(Target::Gate), pool, &h2, n, &mut g, false);
    xa[Target::Up as usize] = lin_fwd(lv.lin(Target::Up), pool, &h2, n, &mut u, false);
    let mut out = Vec::new();
    if pass != Pass::Saved {
        let mut act = pool.take(n * inter);
        swiglu(&g, &u, &mut act);
        out = x1.to_vec();
        xa[Target::Down as usize] = lin_fwd(lv.lin(Target::Down), pool, &act, n, &mut out, true);
    }

    let saved = (pass != Pass::Output).then(|| Saved {
        rstd1,
        h1,
        q,
        k,
        v,
        p,
        ao: lv.adapted(Target::O).then_some(ao),
        xa,
        x1,
        rstd2,
        h2,
        g,
        u,
    });
    (out, saved)
}

fn swiglu(g: &[f32], u: &[f32], act: &mut [f32]) {
    const CHUNK: usize = 1 << 14;
    act.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(a, (g, u))| kernels::swiglu(g, u, a));
}

/// The backward of [`layer_fwd`] for `dy = dL/d out`: `dL/dx` when
/// `need_dx`, and each adapted projection's gradients (by [`Target`]).
fn layer_bwd(
    geo: &Geometry,
    pool: &Arc<Pool>,
    lv: &LayerView<'_>,
    x: &[f32],
    mut s: Saved,
    dy: &[f32],
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<Option<LoraGrad>>) {
    const CHUNK: usize = 1 << 14;
    let (n, hdim, inter) = (geo.n(), geo.hidden, geo.inter);
    let (dqw, dkvw) = (geo.dq(), geo.dkv());
    let mut grads: Vec<Option<LoraGrad>> = (0..7).map(|_| None).collect();
    let xa = |s: &Saved, t: Target| s.xa[t as usize].clone();

    // MLP.
    let mut dact = pool.take(n * inter);
    let act = if lv.adapted(Target::Down) {
        let mut a = pool.take(n * inter);
        swiglu(&s.g, &s.u, &mut a);
        a
    } else {
        pool.take(0)
    };
    grads[Target::Down as usize] =
        lin_bwd(lv.lin(Target::Down), pool, dy, n, &act, xa(&s, Target::Down).as_deref(), Some((&mut dact, false)));
    drop(act);
    s.g.par_chunks_mut(CHUNK)
        .zip(s.u.par_chunks_mut(CHUNK))
        .zip(dact.par_chunks(CHUNK))
        .for_each(|((g, u), d)| kernels::swiglu_bwd(g, u, d));
    drop(dact);
    let (dg, du) = (&s.g, &s.u);
    let attn_adapted = [Target::Q, Target::K, Target::V, Target::O].iter().any(|&t| lv.adapted(t));
    let need_x1 = need_dx || attn_adapted;
    let mut dh2 = pool.take(if need_x1 { n * hdim } else { 0 });
    let d2 = need_x1.then_some(&mut dh2[..]);
    grads[Target::Gate as usize] =
        lin_bwd(lv.lin(Target::Gate), pool, dg, n, &s.h2, xa(&s, Target::Gate).as_deref(), d2.map(|d| (d, false)));
    let d2 = need_x1.then_some(&mut dh2[..]);
    grads[Target::Up as usize] =
        lin_bwd(lv.lin(Target::Up), pool, du, n, &s.h2, xa(&s, Target::Up).as_deref(), d2.map(|d| (d, true)));
    if !need_x1 {
        return (None, grads);
    }
    let mut dx1 = pool.take(n * hdim);
    rms_norm_bwd(&s.x1, lv.norm2, &dh2, &s.rstd2, dy, &mut dx1, hdim);
    drop(dh2);

    // Attention.
    let want = |t: Target| need_dx || lv.adapted(t);
    let need_dao = want(Target::Q) || want(Target::K) || want(Target::V);
    let mut dao = pool.take(if need_dao { n * dqw } else { 0 });
    let ao = s.ao.take().unwrap_or_else(|| pool.take(0));
    grads[Target::O as usize] = lin_bwd(
        lv.lin(Target::O),
        pool,
        &dx1,
        n,
        &ao,
        xa(&s, Target::O).as_deref(),
        need_dao.then_some((&mut dao[..], false)),
    );
    drop(ao);
    if !need_dao {
        return (None, grads);
    }
    let mut dq = want(Target::Q).then(|| pool.take(n * dqw));
    let mut dk = want(Target::K).then(|| pool.take(n * dkvw));
    let mut dv = want(Target::V).then(|| pool.take(n * dkvw));
    attn_bwd(geo, &s.q, &s.k, &s.v, &mut s.p, &dao, dq.as_deref_mut(), dk.as_deref_mut(), dv.as_deref_mut());
    drop(dao);
    s.p = pool.take(0);
    if let Some(d) = dq.as_deref_mut() {
        rope(geo, d, dqw, true);
    }
    if let Some(d) = dk.as_deref_mut() {
        rope(geo, d, dkvw, true);
    }
    let mut dh1 = pool.take(if need_dx { n * hdim } else { 0 });
    let mut first = true;
    for (t, d) in [(Target::Q, &dq), (Target::K, &dk), (Target::V, &dv)] {
        let Some(d) = d else { continue };
        let dx = need_dx.then_some((&mut dh1[..], !first));
        first = false;
        grads[t as usize] = lin_bwd(lv.lin(t), pool, d, n, &s.h1, xa(&s, t).as_deref(), dx);
    }
    if !need_dx {
        return (None, grads);
    }
    let mut dx = vec![0f32; n * hdim];
    rms_norm_bwd(x, lv.norm1, &dh1, &s.rstd1, &dx1, &mut dx, hdim);
    (Some(dx), grads)
}

/// Runs `f` on a worker of the global thread pool (the caller waits), so
/// that the nested parallel sections don't hop threads.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// A decoder layer forward without a graph.
pub(crate) fn forward_plain(
    geo: &Geometry,
    pool: &Arc<Pool>,
    layer: &Layer,
    adapter: bool,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    if x.elem_count() != geo.n() * geo.hidden {
        bail!("fused layer: input of {} values for a {}x{} batch", x.elem_count(), geo.n(), geo.hidden);
    }
    let mut px = Pinned::new();
    let xi = px.add(&x)?;
    let data = px.get(xi);
    let out = in_pool(|| -> candle_core::Result<Vec<f32>> {
        let pinned = pin_layer(layer, adapter)?;
        let lv = view(&pinned, layer, adapter, geo)?;
        Ok(layer_fwd(geo, pool, &lv, data, Pass::Output).0)
    })?;
    drop(px);
    Tensor::from_vec(out, x.shape(), x.device())
}

/// A decoder layer as one graph node (see the module docs).
pub(crate) struct FusedLayer {
    /// The layer (its tensors are shared, not copied).
    pub(crate) layer: Layer,
    /// Shapes and rotary table of this forward pass.
    pub(crate) geo: Arc<Geometry>,
    /// Apply the LoRA adapters.
    pub(crate) adapter: bool,
    /// Keep nothing in the forward; recompute in the backward.
    pub(crate) recompute: bool,
    /// Whether the input's gradient is wanted (false for the lowest adapted
    /// layer, whose input is the frozen embedding).
    pub(crate) need_dx: bool,
    /// Where the LoRA gradients go.
    pub(crate) grads: SideGrads,
    /// Where the activation buffers come from.
    pub(crate) pool: Arc<Pool>,
    saved: Mutex<Option<Saved>>,
}

impl FusedLayer {
    /// A node for `layer`.
    pub(crate) fn new(
        layer: Layer,
        geo: Arc<Geometry>,
        adapter: bool,
        recompute: bool,
        need_dx: bool,
        grads: SideGrads,
        pool: Arc<Pool>,
    ) -> Self {
        Self { layer, geo, adapter, recompute, need_dx, grads, pool, saved: Mutex::new(None) }
    }
}

impl CustomOp1 for FusedLayer {
    fn name(&self) -> &'static str {
        "sam-fused-layer"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        if x.len() != self.geo.n() * self.geo.hidden {
            bail!("fused layer: input of {} values for a {}x{} batch", x.len(), self.geo.n(), self.geo.hidden);
        }
        let (out, saved) = in_pool(|| -> candle_core::Result<_> {
            let pinned = pin_layer(&self.layer, self.adapter)?;
            let lv = view(&pinned, &self.layer, self.adapter, &self.geo)?;
            let pass = if self.recompute { Pass::Output } else { Pass::OutputAndSaved };
            Ok(layer_fwd(&self.geo, &self.pool, &lv, x, pass))
        })?;
        *self.saved.lock().map_err(|_| candle_core::Error::Msg("fused layer: poisoned".into()))? = saved;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("fused layer: poisoned".into()))?.take();
        let grad = grad.contiguous()?;
        let mut pio = Pinned::new();
        let (xi, gi) = (pio.add(arg)?, pio.add(&grad)?);
        let (x, dy) = (pio.get(xi), pio.get(gi));
        let (dx, lgrads) = in_pool(|| -> candle_core::Result<_> {
            let pinned = pin_layer(&self.layer, self.adapter)?;
            let lv = view(&pinned, &self.layer, self.adapter, &self.geo)?;
            let saved = match saved {
                Some(s) => s,
                None => match layer_fwd(&self.geo, &self.pool, &lv, x, Pass::Saved).1 {
                    Some(s) => s,
                    None => bail!("fused layer: nothing saved"),
                },
            };
            Ok(layer_bwd(&self.geo, &self.pool, &lv, x, saved, dy, self.need_dx))
        })?;
        drop(pio);
        let dev = arg.device();
        let mut store = self.grads.lock().map_err(|_| candle_core::Error::Msg("side gradients: poisoned".into()))?;
        for (t, g) in Target::ALL.iter().zip(lgrads) {
            let (Some((da, db)), Some(w)) = (g, self.layer.linear(*t).lora()) else { continue };
            for (var, data) in [(&w.a, da), (&w.b, db)] {
                let g = Tensor::from_vec(data, var.shape(), dev)?;
                let id = var.as_tensor().id();
                let sum = match store.remove(&id) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                store.insert(id, sum);
            }
        }
        dx.map(|d| Tensor::from_vec(d, arg.shape(), dev)).transpose()
    }
}

/// The final norm, the output head and the cross-entropy of each row
/// against its target, fused; see the module docs.
struct HeadNll {
    norm: Tensor,
    head: Tensor,
    targets: Vec<u32>,
    eps: f32,
    grad: bool,
    pool: Arc<Pool>,
    dx: Mutex<Option<Vec<f32>>>,
}

/// Per-row NLL of `targets` for last-layer rows `x` (`[m, hidden]`), and,
/// with `grad`, each row's gradient `d nll_i / d x_i`.
fn head_nll(
    pool: &Arc<Pool>,
    norm: &[f32],
    head: &[f32],
    x: &[f32],
    targets: &[u32],
    eps: f32,
    grad: bool,
) -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
    let m = targets.len();
    if m == 0 {
        return Ok((Vec::new(), grad.then(Vec::new)));
    }
    let h = x.len() / m;
    if h == 0 || norm.len() != h || head.len() % h != 0 {
        bail!("fused head: inconsistent shapes");
    }
    let vocab = head.len() / h;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("fused head: target {bad} outside the vocabulary of {vocab}");
    }
    let mut hn = pool.take(m * h);
    let rstd = rms_norm(x, norm, &mut hn, h, eps);
    let mut nll = vec![0f32; m];
    let mut dh = pool.take(if grad { m * h } else { 0 });
    let rows = (HEAD_BYTES / (4 * vocab)).max(16).min(m);
    let mut logits = pool.take(rows * vocab);
    let w = MatRef::new(head, vocab, h);
    for c0 in (0..m).step_by(rows) {
        let c = rows.min(m - c0);
        let lg = &mut logits[..c * vocab];
        matmul(lg, 0, vocab, MatRef::strided(&hn, c0 * h, c, h, h), w.t(), false, 1.0, par());
        lg.par_chunks_mut(vocab)
            .zip(nll[c0..c0 + c].par_iter_mut())
            .zip(targets[c0..c0 + c].par_iter())
            .for_each(|((row, out), &tg)| *out = kernels::cross_entropy_row(row, tg as usize, grad));
        if grad {
            matmul(&mut dh, c0 * h, h, MatRef::new(lg, c, vocab), w, false, 1.0, par());
        }
    }
    if !grad {
        return Ok((nll, None));
    }
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
        let (nll, dx) = in_pool(|| -> candle_core::Result<_> {
            let mut p = Pinned::new();
            let ni = p.add(&self.norm)?;
            let hi = p.add(&self.head)?;
            head_nll(&self.pool, p.get(ni), p.get(hi), x, &self.targets, self.eps, self.grad)
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
/// `norm` and the output head `head` (`[vocab, hidden]`, f32). Differentiable
/// in `x` when `x` is part of a graph.
pub(crate) fn nll_rows(
    x: &Tensor,
    norm: &Tensor,
    head: &Tensor,
    targets: &[u32],
    eps: f64,
    pool: &Arc<Pool>,
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
        let hi = p.add(head)?;
        head_nll(pool, p.get(ni), p.get(hi), data, targets, eps as f32, false)
    })?;
    drop(px);
    Tensor::from_vec(nll, targets.len(), x.device())
}

/// Whether the head can take the fused path.
pub(crate) fn head_supported(norm: &Tensor, head: &Tensor) -> bool {
    [norm, head].iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
}

#[cfg(test)]
mod tests {
    use crate::config::{Arch, ModelConfig};
    use crate::load::{LoadOptions, random_model};
    use crate::lora::{LoraConfig, Target};
    use crate::loss::{Batch, Sequence, mean_loss, nll_sum, target_nll};
    use crate::model::{Decoder, Mode};
    use candle_core::{DType, Tensor};

    fn tiny(dtype: DType) -> Decoder {
        let cfg = ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: 96,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            attention_bias: true,
            tie_word_embeddings: dtype != DType::F32,
            max_position_embeddings: 256,
            bos_token_id: None,
            eos_token_ids: vec![],
        };
        let mut m = random_model(cfg, &LoadOptions { dtype, ..Default::default() }, 11).unwrap();
        let lora = LoraConfig { rank: 4, targets: Target::ALL.to_vec(), ..Default::default() };
        m.attach_lora(&lora, 3).unwrap();
        for (k, (name, var)) in m.lora_vars().into_iter().enumerate() {
            if name.ends_with("lora_B") {
                let n: usize = var.dims().iter().product();
                let v: Vec<f32> = (0..n).map(|i| 0.05 * ((i * 7919 + k * 104_729) as f32 * 0.618).sin()).collect();
                var.set(&Tensor::from_vec(v, var.dims(), var.device()).unwrap()).unwrap();
            }
        }
        m
    }

    fn loss_and_grads(m: &Decoder, b: &Batch) -> (f32, Vec<Vec<f32>>) {
        let loss = nll_sum(m, b, Mode::INFER).unwrap().unwrap();
        let v = loss.to_scalar::<f32>().unwrap();
        let g = crate::train::lora_gradients(m, &loss).unwrap();
        (v, g.into_iter().map(|g| g.unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect())
    }

    /// The fused path gives the plain candle-op path's loss and gradients,
    /// with f32 and bf16 weights, with and without recomputation, across
    /// more than one attention block and with padding.
    #[test]
    fn fused_path_matches_plain_ops() {
        let ids: Vec<u32> = (0..150).map(|i| (i * 37 + 5) % 96).collect();
        let mask: Vec<bool> = (0..150).map(|i| i % 3 != 0).collect();
        for dtype in [DType::F32, DType::BF16] {
            let mut m = tiny(dtype);
            let seqs = [Sequence { ids: &ids, mask: &mask }, Sequence { ids: &ids[..70], mask: &mask[..70] }];
            let b = Batch::new(&seqs, 0, m.device()).unwrap();
            m.set_fused(false);
            let (want, want_g) = loss_and_grads(&m, &b);
            m.set_fused(true);
            for ckpt in [0, 1, 2] {
                m.set_checkpointing(ckpt);
                let (got, got_g) = loss_and_grads(&m, &b);
                assert!((got - want).abs() < 1e-4 * want.abs(), "{dtype:?} ckpt {ckpt}: loss {got} vs {want}");
                for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
                    let scale = w.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let worst = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                    assert!(scale > 0.0 && worst < 2e-3 * scale, "{dtype:?} ckpt {ckpt} var {i}: {worst} of {scale}");
                }
            }
            let rows = |m: &Decoder| -> Vec<f32> { target_nll(m, &b, Mode::INFER).unwrap().to_vec1().unwrap() };
            let fused_rows = rows(&m);
            m.set_fused(false);
            let plain_rows = rows(&m);
            m.set_fused(true);
            assert_eq!(fused_rows.len(), b.n_targets);
            for (x, y) in fused_rows.iter().zip(&plain_rows) {
                assert!((x - y).abs() < 1e-4 * y.abs().max(1.0), "{dtype:?}: row nll {x} vs {y}");
            }
            let (mean, n) = mean_loss(&m, &seqs, 2, 0, Mode::INFER).unwrap();
            assert_eq!(n, b.n_targets);
            assert!((mean * n as f64 - want as f64).abs() < 1e-4 * want as f64, "{mean} vs {want}");
        }
    }
}
