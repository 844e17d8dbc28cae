//! Causal attention in query blocks that skip the masked half, forward and
//! backward, with grouped key/value heads.

use super::geometry::Geometry;
use super::kernels::{self, SendPtr, raw_matmul};
use gemm::Parallelism;
use rayon::prelude::*;

/// Query/key block of the causal attention: the product for query block
/// `i` only covers keys of blocks `0..=i`.
const ATTN_BLOCK: usize = 64;

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
pub(super) fn attn_fwd(geo: &Geometry, q: &[f32], k: &[f32], v: &[f32], p: &mut [f32], ao: &mut [f32]) {
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
pub(super) fn attn_bwd(
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
