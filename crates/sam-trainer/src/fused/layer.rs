//! A whole decoder layer as one graph node ([`FusedLayer`]): its forward
//! keeps what the backward needs (or nothing, when the layer is
//! recomputed), and its backward yields the input's gradient and parks the
//! LoRA gradients in the side store.

use super::attention::{attn_bwd, attn_fwd};
use super::geometry::Geometry;
use super::in_pool;
use super::kernels;
use super::linear::{LoraGrad, frozen_bwd, lin_bwd, lin_fwd, lora_bwd};
use super::norm::{rms_norm, rms_norm_bwd, rope};
use super::pool::{Buf, Pool};
use super::weights::{LayerView, Pinned, f32_data, pin_layer, view};
use crate::forward::{SideGrads, add_side_grad};
use crate::layer::Layer;
use crate::lora::Target;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, bail};
use rayon::prelude::*;
use sam_kernels::profile::span;
use std::sync::{Arc, Mutex};

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
enum Keep {
    /// The output only.
    Output,
    /// The output and what the backward needs.
    OutputAndSaved,
    /// What the backward needs only (recomputing a layer): the
    /// MLP's down projection, whose output the backward never reads, is
    /// skipped.
    Saved,
}

/// One decoder layer forward on `x` (`[n, hidden]`): the output (empty for
/// [`Keep::Saved`]) and, unless [`Keep::Output`], what the backward needs.
fn layer_fwd(geo: &Geometry, pool: &Arc<Pool>, lv: &LayerView<'_>, x: &[f32], keep: Keep) -> (Vec<f32>, Option<Saved>) {
    let (n, hdim, inter) = (geo.n(), geo.hidden, geo.inter);
    let (dq, dkv) = (geo.dq(), geo.dkv());
    let prec = geo.prec;
    let mut xa: Vec<Option<Vec<f32>>> = (0..7).map(|_| None).collect();

    let sp = span("fwd/norm");
    let mut h1 = pool.take(n * hdim);
    let rstd1 = rms_norm(x, lv.norm1, &mut h1, hdim, geo.eps);
    drop(sp);
    let sp = span("fwd/qkv");
    let mut q = pool.take(n * dq);
    let mut k = pool.take(n * dkv);
    let mut v = pool.take(n * dkv);
    let qkv = [lv.lin(Target::Q), lv.lin(Target::K), lv.lin(Target::V)];
    let xs = lin_fwd(pool, &qkv, prec, &h1, n, &mut [(&mut q, false), (&mut k, false), (&mut v, false)]);
    for (t, a) in [Target::Q, Target::K, Target::V].into_iter().zip(xs) {
        xa[t as usize] = a;
    }
    drop(sp);
    let sp = span("fwd/rope");
    rope(geo, &mut q, dq, false);
    rope(geo, &mut k, dkv, false);
    drop(sp);
    let sp = span("fwd/attn");

    let mut p = pool.take(geo.b * geo.heads * geo.t * geo.t);
    let mut ao = pool.take(n * dq);
    attn_fwd(geo, &q, &k, &v, &mut p, &mut ao);
    drop(sp);
    let sp = span("fwd/o");
    let mut x1 = pool.take(n * hdim);
    x1.copy_from_slice(x);
    xa[Target::O as usize] = lin_fwd(pool, &[lv.lin(Target::O)], prec, &ao, n, &mut [(&mut x1, true)]).pop().flatten();
    drop(sp);

    let sp = span("fwd/norm");
    let mut h2 = pool.take(n * hdim);
    let rstd2 = rms_norm(&x1, lv.norm2, &mut h2, hdim, geo.eps);
    drop(sp);
    let sp = span("fwd/gate_up");
    let mut g = pool.take(n * inter);
    let mut u = pool.take(n * inter);
    let gu = [lv.lin(Target::Gate), lv.lin(Target::Up)];
    let mut xs = lin_fwd(pool, &gu, prec, &h2, n, &mut [(&mut g, false), (&mut u, false)]).into_iter();
    xa[Target::Gate as usize] = xs.next().flatten();
    xa[Target::Up as usize] = xs.next().flatten();
    drop(sp);
    let mut out = Vec::new();
    if keep != Keep::Saved {
        let sp = span("fwd/swiglu");
        let mut act = pool.take(n * inter);
        swiglu(&g, &u, &mut act);
        out = x1.to_vec();
        drop(sp);
        let _sp = span("fwd/down");
        xa[Target::Down as usize] =
            lin_fwd(pool, &[lv.lin(Target::Down)], prec, &act, n, &mut [(&mut out, true)]).pop().flatten();
    }

    let saved = (keep != Keep::Output).then(|| Saved {
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
    let prec = geo.prec;
    let mut grads: Vec<Option<LoraGrad>> = (0..7).map(|_| None).collect();
    let xa = |s: &Saved, t: Target| s.xa[t as usize].clone();

    // MLP.
    let sp = span("bwd/down");
    let mut dact = pool.take(n * inter);
    let act = if lv.adapted(Target::Down) {
        let mut a = pool.take(n * inter);
        swiglu(&s.g, &s.u, &mut a);
        a
    } else {
        pool.take(0)
    };
    grads[Target::Down as usize] = lin_bwd(
        pool,
        lv.lin(Target::Down),
        prec,
        dy,
        n,
        &act,
        xa(&s, Target::Down).as_deref(),
        Some((&mut dact, false)),
    );
    drop(act);
    drop(sp);
    let sp = span("bwd/swiglu");
    s.g.par_chunks_mut(CHUNK)
        .zip(s.u.par_chunks_mut(CHUNK))
        .zip(dact.par_chunks(CHUNK))
        .for_each(|((g, u), d)| kernels::swiglu_bwd(g, u, d));
    drop(dact);
    drop(sp);
    let sp = span("bwd/gate_up");
    let (dg, du) = (&s.g, &s.u);
    let attn_adapted = [Target::Q, Target::K, Target::V, Target::O].iter().any(|&t| lv.adapted(t));
    let need_x1 = need_dx || attn_adapted;
    let mut dh2 = pool.take(if need_x1 { n * hdim } else { 0 });
    if need_x1 {
        frozen_bwd(pool, &[(lv.lin(Target::Gate), dg), (lv.lin(Target::Up), du)], prec, n, &mut dh2, false);
    }
    for (t, d) in [(Target::Gate, dg), (Target::Up, du)] {
        let d2 = need_x1.then_some(&mut dh2[..]);
        grads[t as usize] = lora_bwd(lv.lin(t), d, n, &s.h2, xa(&s, t).as_deref(), d2);
    }
    drop(sp);
    if !need_x1 {
        return (None, grads);
    }
    let sp = span("bwd/norm");
    let mut dx1 = pool.take(n * hdim);
    rms_norm_bwd(&s.x1, lv.norm2, &dh2, &s.rstd2, dy, &mut dx1, hdim);
    drop(dh2);
    drop(sp);
    let sp = span("bwd/o");

    // Attention.
    let want = |t: Target| need_dx || lv.adapted(t);
    let need_dao = want(Target::Q) || want(Target::K) || want(Target::V);
    let mut dao = pool.take(if need_dao { n * dqw } else { 0 });
    let ao = s.ao.take().unwrap_or_else(|| pool.take(0));
    grads[Target::O as usize] = lin_bwd(
        pool,
        lv.lin(Target::O),
        prec,
        &dx1,
        n,
        &ao,
        xa(&s, Target::O).as_deref(),
        need_dao.then_some((&mut dao[..], false)),
    );
    drop(ao);
    drop(sp);
    if !need_dao {
        return (None, grads);
    }
    let sp = span("bwd/attn");
    let mut dq = want(Target::Q).then(|| pool.take(n * dqw));
    let mut dk = want(Target::K).then(|| pool.take(n * dkvw));
    let mut dv = want(Target::V).then(|| pool.take(n * dkvw));
    attn_bwd(geo, &s.q, &s.k, &s.v, &mut s.p, &dao, dq.as_deref_mut(), dk.as_deref_mut(), dv.as_deref_mut());
    drop(dao);
    s.p = pool.take(0);
    drop(sp);
    let sp = span("bwd/rope");
    if let Some(d) = dq.as_deref_mut() {
        rope(geo, d, dqw, true);
    }
    if let Some(d) = dk.as_deref_mut() {
        rope(geo, d, dkvw, true);
    }
    drop(sp);
    let sp = span("bwd/qkv");
    let mut dh1 = pool.take(if need_dx { n * hdim } else { 0 });
    let qkv = [(Target::Q, dq.as_deref()), (Target::K, dk.as_deref()), (Target::V, dv.as_deref())];
    if need_dx {
        // Every projection's dy is there when the input's gradient is wanted.
        let terms: Vec<_> = qkv.iter().filter_map(|&(t, d)| Some((lv.lin(t), d?))).collect();
        frozen_bwd(pool, &terms, prec, n, &mut dh1, false);
    }
    for (t, d) in qkv {
        let Some(d) = d else { continue };
        let dx = need_dx.then_some(&mut dh1[..]);
        grads[t as usize] = lora_bwd(lv.lin(t), d, n, &s.h1, xa(&s, t).as_deref(), dx);
    }
    drop(sp);
    if !need_dx {
        return (None, grads);
    }
    let _sp = span("bwd/norm");
    let mut dx = vec![0f32; n * hdim];
    rms_norm_bwd(x, lv.norm1, &dh1, &s.rstd1, &dx1, &mut dx, hdim);
    (Some(dx), grads)
}

/// A decoder layer forward without a graph.
pub(super) fn forward_no_graph(
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
    let _sp = span("layer/fwd_no_graph");
    let out = in_pool(|| -> candle_core::Result<Vec<f32>> {
        let pinned = pin_layer(layer, adapter)?;
        let lv = view(&pinned, layer, adapter, geo)?;
        Ok(layer_fwd(geo, pool, &lv, data, Keep::Output).0)
    })?;
    drop(px);
    Tensor::from_vec(out, x.shape(), x.device())
}

/// A decoder layer as one graph node (see the module docs).
pub(super) struct FusedLayer {
    /// The layer (its tensors are shared, not copied).
    layer: Layer,
    /// Shapes and rotary table of this forward pass.
    geo: Arc<Geometry>,
    /// Apply the LoRA adapters.
    adapter: bool,
    /// Keep nothing in the forward; recompute in the backward.
    recompute: bool,
    /// Whether the input's gradient is wanted (false for the lowest adapted
    /// layer, whose input is the frozen embedding).
    need_dx: bool,
    /// Where the LoRA gradients go.
    grads: SideGrads,
    /// Where the activation buffers come from.
    pool: Arc<Pool>,
    saved: Mutex<Option<Saved>>,
}

impl FusedLayer {
    /// A node for `layer`.
    pub(super) fn new(
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
        let _sp = span("layer/fwd");
        let (out, saved) = in_pool(|| -> candle_core::Result<_> {
            let pinned = pin_layer(&self.layer, self.adapter)?;
            let lv = view(&pinned, &self.layer, self.adapter, &self.geo)?;
            let keep = if self.recompute { Keep::Output } else { Keep::OutputAndSaved };
            Ok(layer_fwd(&self.geo, &self.pool, &lv, x, keep))
        })?;
        *self.saved.lock().map_err(|_| candle_core::Error::Msg("fused layer: poisoned".into()))? = saved;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _sp = span("layer/bwd");
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
                None => {
                    let _sp = span("layer/recompute");
                    match layer_fwd(&self.geo, &self.pool, &lv, x, Keep::Saved).1 {
                        Some(s) => s,
                        None => bail!("fused layer: nothing saved"),
                    }
                }
            };
            Ok(layer_bwd(&self.geo, &self.pool, &lv, x, saved, dy, self.need_dx))
        })?;
        drop(pio);
        let dev = arg.device();
        let mut store = self.grads.lock().map_err(|_| candle_core::Error::Msg("side gradients: poisoned".into()))?;
        for (t, g) in Target::ALL.iter().zip(lgrads) {
            let (Some((da, db)), Some(w)) = (g, self.layer.linear(*t).lora()) else { continue };
            for (var, data) in [(&w.a, da), (&w.b, db)] {
                add_side_grad(&mut store, var.as_tensor().id(), Tensor::from_vec(data, var.shape(), dev)?)?;
            }
        }
        dx.map(|d| Tensor::from_vec(d, arg.shape(), dev)).transpose()
    }
}
