//! f32 products on the `gemm` crate or a system BLAS, one weight at a
//! time; half-precision weights are widened a block of rows at a time into
//! a reused buffer.

use crate::weight::{Data, Elem, Weight};
use crate::{Backend, Rows};
use rayon::prelude::*;
use std::sync::Mutex;

/// Most values widened at once (16 MB).
const WIDE_BLOCK: usize = 1 << 22;

static WIDE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

pub(crate) fn release() {
    WIDE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Rows `r0..r1` of `w` in f32: borrowed when stored so, else widened into `buf`.
fn rows_f32<'a>(w: Weight<'a>, r0: usize, r1: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    fn widen<T: Elem>(src: &[T], buf: &mut Vec<f32>) {
        buf.resize(src.len(), 0.0);
        buf.par_chunks_mut(1 << 14).zip(src.par_chunks(1 << 14)).for_each(|(o, i)| {
            for (o, &x) in o.iter_mut().zip(i) {
                *o = x.to_f32();
            }
        });
    }
    let (a, b) = (r0 * w.cols(), r1 * w.cols());
    match w.data() {
        Data::F32(v) => &v[a..b],
        Data::Bf16(v) => {
            widen(&v[a..b], buf);
            &buf[..]
        }
        Data::F16(v) => {
            widen(&v[a..b], buf);
            &buf[..]
        }
    }
}

/// Rows per widened block of `w` (all of them for f32).
fn block_rows(w: Weight<'_>) -> usize {
    match w.data() {
        Data::F32(_) => w.rows().max(1),
        _ => (WIDE_BLOCK / w.cols().max(1)).clamp(1, w.rows().max(1)),
    }
}

fn take() -> Vec<f32> {
    WIDE.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
}

fn give(v: Vec<f32>) {
    let mut g = WIDE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_empty() {
        g.push(v);
    }
}

/// `out (+)= x · wᵀ`.
pub(crate) fn forward(be: Backend, x: Rows<'_>, w: Weight<'_>, out: &mut [f32], ld: usize, acc: bool) {
    let mut buf = take();
    let br = block_rows(w);
    for r0 in (0..w.rows()).step_by(br) {
        let r1 = (r0 + br).min(w.rows());
        let wb = rows_f32(w, r0, r1, &mut buf);
        // out[:, r0..r1] = x (m × k) · wbᵀ (k × (r1 - r0))
        // SAFETY: shapes checked by the caller; `wb` is (r1 - r0) × k.
        unsafe {
            product(
                be,
                (x.rows, r1 - r0, x.cols),
                out.as_mut_ptr().add(r0),
                ld,
                (x.data.as_ptr(), x.ld, 1),
                (wb.as_ptr(), 1, x.cols),
                acc,
            )
        };
    }
    give(buf);
}

/// `dx (+)= dy · w`.
pub(crate) fn backward(be: Backend, dy: Rows<'_>, w: Weight<'_>, dx: &mut [f32], ld: usize, acc: bool) {
    let mut buf = take();
    let br = block_rows(w);
    for r0 in (0..w.rows()).step_by(br) {
        let r1 = (r0 + br).min(w.rows());
        let wb = rows_f32(w, r0, r1, &mut buf);
        // dx (+)= dy[:, r0..r1] (m × (r1 - r0)) · wb ((r1 - r0) × n)
        // SAFETY: as above.
        unsafe {
            product(
                be,
                (dy.rows, w.cols(), r1 - r0),
                dx.as_mut_ptr(),
                ld,
                (dy.data.as_ptr().add(r0), dy.ld, 1),
                (wb.as_ptr(), w.cols(), 1),
                acc || r0 > 0,
            )
        };
    }
    give(buf);
}

/// `dst (m × n, rows ld apart) (+)= a (m × k) · b (k × n)`, operands as
/// (pointer, row stride, column stride).
///
/// # Safety
/// Every addressed element must be valid; `dst` must not overlap the inputs.
unsafe fn product(
    be: Backend,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ld: usize,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs, b_cs): (*const f32, usize, usize),
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(feature = "blas")]
    if be == Backend::Blas {
        // SAFETY: forwarded.
        unsafe { crate::blas::sgemm((m, n, k), dst, ld, (a, a_rs, a_cs), (b, b_rs, b_cs), acc) };
        return;
    }
    let _ = be;
    if k == 0 {
        if !acc {
            for i in 0..m {
                // SAFETY: the caller guarantees the rows.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * ld), n).fill(0.0) };
            }
        }
        return;
    }
    let par = match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: forwarded.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            acc,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
}
