//! CPU kernels for the fused training path ([`super`]): a strided
//! matrix product on `gemm`, and the row-wise elementwise passes (RMSNorm,
//! rotary, SwiGLU, softmax, cross-entropy) written so that LLVM vectorises
//! them, compiled twice (AVX2 + FMA when the CPU has it, baseline otherwise)
//! and picked at run time.

use gemm::Parallelism;

/// A strided view of an `rows × cols` f32 matrix inside a slice:
/// element `(i, j)` is at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, off: 0, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// Threads for one large product: all of the current pool's.
pub(crate) fn par() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst = (acc ? dst : 0) + beta · a · b` with `dst` row-major `m × n`
/// (rows `ld` apart, starting at `off`), `a: m × k`, `b: k × n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    off: usize,
    ld: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    acc: bool,
    beta: f32,
    par: Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    a.check();
    b.check();
    assert!(off + (m - 1) * ld + n <= dst.len(), "destination out of bounds");
    if k == 0 {
        if !acc {
            for i in 0..m {
                dst[off + i * ld..off + i * ld + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: every view was bounds-checked above; `dst` is exclusively
    // borrowed and does not overlap the shared inputs.
    unsafe {
        raw_matmul(
            dst.as_mut_ptr().add(off),
            ld,
            (m, n, k),
            (a.data.as_ptr().add(a.off), a.rs, a.cs),
            (b.data.as_ptr().add(b.off), b.rs, b.cs),
            acc,
            beta,
            par,
        );
    }
}

/// [`matmul`] on raw pointers, for disjoint blocks written from several
/// threads.
///
/// # Safety
/// Every element addressed through the pointers and strides must be valid,
/// and the destination block must not be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn raw_matmul(
    dst: *mut f32,
    ld: usize,
    (m, n, k): (usize, usize, usize),
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs, b_cs): (*const f32, usize, usize),
    acc: bool,
    beta: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
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
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// A raw pointer that may cross threads; users write disjoint parts.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the wrapper, not the field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used for disjoint writes coordinated by the caller.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
}

/// Defines a function compiled for AVX2 + FMA and for the baseline, the
/// first used when the CPU has it.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if avx2() {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

const LANES: usize = 16;

/// `e^x` for f32 with about 1 ulp of error, branch-free so loops over it
/// vectorise (Cephes' polynomial; inputs are clamped to [-87.3, 88.7]).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((ki + 127) as u32) << 23)
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut s: f32 = it.remainder().iter().sum();
    for a in acc {
        s += a;
    }
    s
}

#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0f32; LANES];
    let mut xi = x.chunks_exact(LANES);
    let mut yi = y.chunks_exact(LANES);
    for (a, b) in (&mut xi).zip(&mut yi) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s: f32 = xi.remainder().iter().zip(yi.remainder()).map(|(a, b)| a * b).sum();
    for a in acc {
        s += a;
    }
    s
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = it.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

multiversion! {
    /// RMSNorm of one row: `y = x · rstd · w`; returns `rstd`.
    pub(crate) fn rms_norm_row(x: &[f32], w: &[f32], y: &mut [f32], eps: f32) -> f32 {
        let ms = dot(x, x) / x.len() as f32;
        let rstd = 1.0 / (ms + eps).sqrt();
        for ((yo, &xi), &wi) in y.iter_mut().zip(x).zip(w) {
            *yo = xi * rstd * wi;
        }
        rstd
    }
}

multiversion! {
    /// RMSNorm backward of one row: `dx = base + rstd·(w∘dy) − x·rstd³·⟨w∘dy, x⟩/H`
    /// (`base` is the gradient arriving through the residual, or zeros).
    pub(crate) fn rms_norm_bwd_row(x: &[f32], w: &[f32], dy: &[f32], rstd: f32, base: &[f32], dx: &mut [f32]) {
        let h = x.len();
        let mut acc = [0f32; LANES];
        let mut xi = x.chunks_exact(LANES);
        let mut wi = w.chunks_exact(LANES);
        let mut gi = dy.chunks_exact(LANES);
        for ((a, b), c) in (&mut xi).zip(&mut wi).zip(&mut gi) {
            for l in 0..LANES {
                acc[l] += a[l] * b[l] * c[l];
            }
        }
        let mut d: f32 = xi.remainder().iter().zip(wi.remainder()).zip(gi.remainder()).map(|((a, b), c)| a * b * c).sum();
        for a in acc {
            d += a;
        }
        let k = rstd * rstd * rstd * d / h as f32;
        for ((((o, &b), &wv), &g), &xv) in dx.iter_mut().zip(base).zip(w).zip(dy).zip(x) {
            *o = b + rstd * wv * g - xv * k;
        }
    }
}

multiversion! {
    /// Rotate-half rotary embedding of one row of `heads` heads in place;
    /// `cos`/`sin` hold `head_dim / 2` values for this row's position.
    /// `inverse` applies the transposed rotation (the backward pass).
    pub(crate) fn rope_row(x: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize, inverse: bool) {
        let half = head_dim / 2;
        let sign = if inverse { -1.0f32 } else { 1.0 };
        for head in x.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (c, s) = (cos[i], sign * sin[i]);
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c - x2 * s;
                b[i] = x2 * c + x1 * s;
            }
        }
    }
}

multiversion! {
    /// SwiGLU forward: `act = silu(g) · u`.
    pub(crate) fn swiglu(g: &[f32], u: &[f32], act: &mut [f32]) {
        for ((o, &gv), &uv) in act.iter_mut().zip(g).zip(u) {
            *o = gv * uv / (1.0 + exp(-gv));
        }
    }
}

multiversion! {
    /// SwiGLU backward in place: `(g, u)` become `(dL/dg, dL/du)` given
    /// `da = dL/d act`.
    pub(crate) fn swiglu_bwd(g: &mut [f32], u: &mut [f32], da: &[f32]) {
        for ((gv, uv), &d) in g.iter_mut().zip(u.iter_mut()).zip(da) {
            let s = 1.0 / (1.0 + exp(-*gv));
            let x = *gv;
            let silu = x * s;
            let dg = d * *uv * s * (1.0 + x * (1.0 - s));
            *uv = d * silu;
            *gv = dg;
        }
    }
}

multiversion! {
    /// Softmax of `scale · row[..len]` in place; `row[len..]` is set to zero.
    pub(crate) fn softmax_row(row: &mut [f32], len: usize, scale: f32) {
        let (live, dead) = row.split_at_mut(len);
        let m = max(live) * scale;
        for v in live.iter_mut() {
            *v = exp(*v * scale - m);
        }
        let inv = 1.0 / sum(live);
        for v in live.iter_mut() {
            *v *= inv;
        }
        dead.fill(0.0);
    }
}

multiversion! {
    /// Softmax backward of one row in place: `p` becomes
    /// `scale · p ∘ (dp − ⟨p, dp⟩)`.
    pub(crate) fn softmax_bwd_row(p: &mut [f32], dp: &[f32], scale: f32) {
        let d = dot(p, dp);
        for (pv, &g) in p.iter_mut().zip(dp) {
            *pv = scale * *pv * (g - d);
        }
    }
}

multiversion! {
    /// Cross-entropy of one row of logits against `target`: returns the
    /// negative log-likelihood; with `grad`, the row becomes
    /// `softmax − onehot(target)`.
    pub(crate) fn cross_entropy_row(row: &mut [f32], target: usize, grad: bool) -> f32 {
        let picked = row[target];
        let m = max(row);
        if grad {
            for v in row.iter_mut() {
                *v = exp(*v - m);
            }
            let s = sum(row);
            let inv = 1.0 / s;
            for v in row.iter_mut() {
                *v *= inv;
            }
            row[target] -= 1.0;
            m + s.ln() - picked
        } else {
            let mut acc = [0f32; LANES];
            let mut it = row.chunks_exact(LANES);
            for c in &mut it {
                for l in 0..LANES {
                    acc[l] += exp(c[l] - m);
                }
            }
            let mut s: f32 = it.remainder().iter().map(|&v| exp(v - m)).sum();
            for a in acc {
                s += a;
            }
            m + s.ln() - picked
        }
    }
}

multiversion! {
    /// `y += x`.
    pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) {
        for (a, &b) in y.iter_mut().zip(x) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "{worst}");
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn strided_products_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // stored n × k
        let mut c = vec![1f32; m * n];
        matmul(&mut c, 0, n, MatRef::new(&a, m, k), MatRef::new(&b, n, k).t(), true, 2.0, Parallelism::None);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + 2.0 * (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn cross_entropy_row_and_softmax() {
        let mut r = vec![1f32, 2.0, 3.0];
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let nll = cross_entropy_row(&mut r.clone(), 0, false);
        assert!((nll - (lse - 1.0)).abs() < 1e-6);
        let nll2 = cross_entropy_row(&mut r, 0, true);
        assert!((nll2 - nll).abs() < 1e-6);
        assert!((r[0] - ((1.0 - lse).exp() - 1.0)).abs() < 1e-6);
        let mut s = vec![0.5f32, 1.0, 9.0];
        softmax_row(&mut s, 2, 2.0);
        assert!((s[0] + s[1] - 1.0).abs() < 1e-6 && s[2] == 0.0);
    }
}
