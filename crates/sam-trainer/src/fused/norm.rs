//! RMSNorm (forward and backward) and rotary embeddings, row by row over
//! the vectorised kernels.

use super::geometry::Geometry;
use super::kernels;
use rayon::prelude::*;

/// RMSNorm of every row; returns the per-row `rstd`.
pub(super) fn rms_norm(x: &[f32], w: &[f32], y: &mut [f32], h: usize, eps: f32) -> Vec<f32> {
    let mut rstd = vec![0f32; x.len() / h];
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .zip(rstd.par_iter_mut())
        .with_min_len(8)
        .for_each(|((yr, xr), r)| *r = kernels::rms_norm_row(xr, w, yr, eps));
    rstd
}

/// `dx = base + RMSNorm'(x)ᵀ dy` row by row.
pub(super) fn rms_norm_bwd(x: &[f32], w: &[f32], dy: &[f32], rstd: &[f32], base: &[f32], dx: &mut [f32], h: usize) {
    dx.par_chunks_mut(h)
        .zip(x.par_chunks(h).zip(dy.par_chunks(h)))
        .zip(rstd.par_iter().zip(base.par_chunks(h)))
        .with_min_len(8)
        .for_each(|((o, (xr, gr)), (&r, br))| kernels::rms_norm_bwd_row(xr, w, gr, r, br, o));
}

pub(super) fn rope(geo: &Geometry, x: &mut [f32], width: usize, inverse: bool) {
    let half = geo.head_dim / 2;
    x.par_chunks_mut(width).enumerate().with_min_len(8).for_each(|(row, xr)| {
        let p = row % geo.t;
        let (c, s) = (&geo.cos[p * half..(p + 1) * half], &geo.sin[p * half..(p + 1) * half]);
        kernels::rope_row(xr, c, s, geo.head_dim, inverse);
    });
}
