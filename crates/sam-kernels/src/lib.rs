//! sam-kernels: CPU compute kernels for sam's training path — the products
//! of activations with frozen weight matrices, on a choice of backends, and
//! a span profiler.
//!
//! A LoRA training step on the CPU is mostly products of activations with
//! frozen weights: `x · Wᵀ` in the forward pass and `dy · W` for the
//! input's gradient (a frozen weight needs no gradient of its own). This
//! crate runs them:
//!
//! - [`forward`]: `out_t (+)= x · W_tᵀ` for one input and several weights
//!   (q, k and v of one normed input; gate and up), packing the input once
//!   on the packed kernels;
//! - [`backward`]: `dx (+)= Σ_t dy_t · W_t` (the input gradient of q/k/v or
//!   of gate/up as one product).
//!
//! Weights are read as stored ([`Weight`]: f32, bf16 or f16). The f32
//! products run on the global [`Backend`] ([`backend`], [`set_backend`];
//! `SAM_MATMUL=gemm|packed|blas` overrides the default, `gemm`): the `gemm`
//! crate (its AVX-512 kernels where the CPU has them), this crate's packed
//! kernels (AVX-512 or AVX2 + FMA, picked at run time), or a system BLAS
//! (`cblas_sgemm`, with the `blas` feature: OpenBLAS on Linux, Accelerate
//! on macOS). [`Precision::Bf16`] asks for bf16 products (inputs rounded to
//! bf16, sums in f32) where the CPU has bf16 dot-product instructions
//! ([`bf16_available`]: AVX512-BF16); elsewhere the product runs in f32.
//!
//! [`profile`] times named spans of a step (on with `SAM_PROFILE=1`).
//!
//! ```
//! use sam_kernels::{Grad, Precision, Rows, Target, Weight, backward, forward};
//! // x: 2 tokens × 3 inputs; W: 4 outputs × 3 inputs.
//! let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
//! let mut y = vec![0f32; 2 * 4];
//! forward(Rows::new(&x, 2, 3), &mut [Target::new(Weight::f32(&w, 4, 3), &mut y, 4)], Precision::F32);
//! assert_eq!(y[1], 1.0 * 1.5 + 2.0 * 2.0 + 3.0 * 2.5);
//! // dx = dy · W
//! let dy = [1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
//! let mut dx = vec![0f32; 2 * 3];
//! backward(&[Grad::new(Rows::new(&dy, 2, 4), Weight::f32(&w, 4, 3))], &mut dx, 3, false, Precision::F32);
//! assert_eq!(&dx[3..], &w[3..6]);
//! ```
#![deny(missing_docs)]

#[cfg(feature = "blas")]
mod blas;
#[cfg(target_arch = "x86_64")]
mod cpu;
mod gemm_path;
mod micro;
mod pack;
mod packed;
pub mod profile;
mod weight;

pub use weight::{Data, Weight};

use std::sync::atomic::{AtomicU8, Ordering};

/// How a product rounds its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 inputs, f32 sums.
    F32,
    /// Inputs rounded to bf16, sums in f32, where the CPU has bf16 dot
    /// products ([`bf16_available`]); f32 elsewhere.
    Bf16,
}

/// What runs the f32 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The `gemm` crate (candle's), with its own packing per product.
    Gemm,
    /// This crate's packed kernels (x86-64 with AVX2 + FMA or AVX-512;
    /// `gemm` elsewhere).
    Packed,
    /// The system BLAS' `cblas_sgemm` (the `blas` feature).
    Blas,
}

impl Backend {
    /// The backends this build and CPU can run.
    pub fn available() -> Vec<Backend> {
        let mut v = vec![Backend::Gemm];
        if micro::f32_kernel().is_some() {
            v.push(Backend::Packed);
        }
        if cfg!(feature = "blas") {
            v.push(Backend::Blas);
        }
        v
    }

    /// The name `SAM_MATMUL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gemm => "gemm",
            Backend::Packed => "packed",
            Backend::Blas => "blas",
        }
    }
}

static BACKEND: AtomicU8 = AtomicU8::new(0); // 0: not chosen yet

/// The backend f32 products run on: `SAM_MATMUL` if it names an available
/// one, else `gemm` (with its AVX-512 kernels where the CPU has them: on
/// the 1.5B model's shapes it measured as fast as OpenBLAS and faster than
/// this crate's f32 kernels in the backward products, see
/// `docs/benchmarks.md`).
pub fn backend() -> Backend {
    match BACKEND.load(Ordering::Relaxed) {
        1 => Backend::Gemm,
        2 => Backend::Packed,
        3 => Backend::Blas,
        _ => {
            let avail = Backend::available();
            let want = std::env::var("SAM_MATMUL").ok();
            let b = avail.iter().copied().find(|b| want.as_deref() == Some(b.name())).unwrap_or(Backend::Gemm);
            set_backend(b);
            b
        }
    }
}

/// Sets the backend of later products (one that is not
/// [`available`](Backend::available) falls back to `gemm`).
pub fn set_backend(b: Backend) {
    let b = if Backend::available().contains(&b) { b } else { Backend::Gemm };
    let code = match b {
        Backend::Gemm => 1,
        Backend::Packed => 2,
        Backend::Blas => 3,
    };
    BACKEND.store(code, Ordering::Relaxed);
}

/// Whether [`Precision::Bf16`] products run in bf16 here (AVX512-BF16;
/// `SAM_BF16_PRODUCTS=0` turns them off).
pub fn bf16_available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| micro::bf16_kernel().is_some() && std::env::var("SAM_BF16_PRODUCTS").as_deref() != Ok("0"))
}

/// A description of what runs the products of `prec` here, e.g.
/// `"packed (avx512 f32 12x32)"`.
pub fn describe(prec: Precision) -> String {
    if prec == Precision::Bf16 && bf16_available() {
        return format!("packed ({:?})", micro::bf16_kernel().expect("available"));
    }
    match backend() {
        Backend::Packed => format!("packed ({:?})", micro::f32_kernel().expect("available")),
        b => b.name().to_string(),
    }
}

/// Frees the buffers kept between products.
pub fn release() {
    packed::release();
    gemm_path::release();
}

/// Activations: `rows × cols` f32 values, rows `ld` apart.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    ld: usize,
}

impl<'a> Rows<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Rows `ld` values apart.
    ///
    /// # Panics
    /// If `data` is too short or `ld < cols`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        assert!(ld >= cols, "row stride {ld} below {cols} columns");
        assert!(
            rows == 0 || data.len() >= (rows - 1) * ld + cols,
            "{rows}x{cols} rows ({ld} apart) in {} values",
            data.len()
        );
        Self { data, rows, cols, ld }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// One output of [`forward`]: `out (+)= x · wᵀ`, `out` holding `x.rows()`
/// rows of `w.rows()` values `ld` apart.
pub struct Target<'a, 'o> {
    w: Weight<'a>,
    out: &'o mut [f32],
    ld: usize,
    acc: bool,
}

impl<'a, 'o> Target<'a, 'o> {
    /// An output that is overwritten.
    pub fn new(w: Weight<'a>, out: &'o mut [f32], ld: usize) -> Self {
        Self { w, out, ld, acc: false }
    }

    /// An output the product is added to.
    pub fn accumulate(w: Weight<'a>, out: &'o mut [f32], ld: usize) -> Self {
        Self { w, out, ld, acc: true }
    }
}

/// One term of [`backward`]: `dy · w` (`dy` has `w.rows()` columns).
#[derive(Clone, Copy)]
pub struct Grad<'a> {
    dy: Rows<'a>,
    w: Weight<'a>,
}

impl<'a> Grad<'a> {
    /// The term `dy · w`.
    ///
    /// # Panics
    /// If `dy`'s columns are not `w`'s rows.
    pub fn new(dy: Rows<'a>, w: Weight<'a>) -> Self {
        assert_eq!(dy.cols, w.rows(), "dy has {} columns for a weight of {} rows", dy.cols, w.rows());
        Self { dy, w }
    }
}

fn check_out(out: &[f32], rows: usize, n: usize, ld: usize) {
    assert!(ld >= n, "output stride {ld} below {n} columns");
    assert!(rows == 0 || n == 0 || out.len() >= (rows - 1) * ld + n, "output too small");
}

/// `out_t (+)= x · W_tᵀ` for every target (see the crate docs).
///
/// # Panics
/// If a weight's columns are not `x`'s, or an output is too small.
pub fn forward(x: Rows<'_>, targets: &mut [Target<'_, '_>], prec: Precision) {
    for t in targets.iter() {
        assert_eq!(t.w.cols(), x.cols, "weight of {} columns for inputs of {}", t.w.cols(), x.cols);
        check_out(t.out, x.rows, t.w.rows(), t.ld);
    }
    if let Some(kern) = kernel(prec) {
        let outs: Vec<packed::Out> = targets
            .iter_mut()
            .map(|t| packed::Out { n: t.w.rows(), c: t.out.as_mut_ptr(), ldc: t.ld, acc: t.acc })
            .collect();
        let ws: Vec<Weight<'_>> = targets.iter().map(|t| t.w).collect();
        let seg = packed::ASeg { a: x.data, lda: x.ld, k: x.cols };
        // SAFETY: outputs checked above, exclusively borrowed, disjoint
        // from the shared inputs; the kernel was detected on this CPU.
        unsafe { packed::run(kern, x.rows, &[seg], &outs, &|_, o| packed::BSrc::Transposed(ws[o])) };
        return;
    }
    for t in targets.iter_mut() {
        gemm_path::forward(backend(), x, t.w, t.out, t.ld, t.acc);
    }
}

/// `dx (+)= Σ_t dy_t · W_t` over the terms (see the crate docs); `dx`
/// holds the terms' rows of `W`'s columns, `ld` apart.
///
/// # Panics
/// If the terms differ in rows or weight columns, or `dx` is too small.
pub fn backward(terms: &[Grad<'_>], dx: &mut [f32], ld: usize, acc: bool, prec: Precision) {
    let Some(first) = terms.first() else { return };
    let (m, n) = (first.dy.rows, first.w.cols());
    for t in terms {
        assert!(t.dy.rows == m && t.w.cols() == n, "terms of different shapes");
    }
    check_out(dx, m, n, ld);
    if let Some(kern) = kernel(prec) {
        let segs: Vec<packed::ASeg<'_>> =
            terms.iter().map(|t| packed::ASeg { a: t.dy.data, lda: t.dy.ld, k: t.dy.cols }).collect();
        let out = packed::Out { n, c: dx.as_mut_ptr(), ldc: ld, acc };
        // SAFETY: as in `forward`.
        unsafe { packed::run(kern, m, &segs, &[out], &|t, _| packed::BSrc::Plain(terms[t].w)) };
        return;
    }
    for (i, t) in terms.iter().enumerate() {
        gemm_path::backward(backend(), t.dy, t.w, dx, ld, acc || i > 0);
    }
}

/// The kernel of the packed path for `prec`, if the products take it.
fn kernel(prec: Precision) -> Option<micro::Kernel> {
    if prec == Precision::Bf16 && bf16_available() {
        return micro::bf16_kernel();
    }
    match backend() {
        Backend::Packed => micro::f32_kernel(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Deterministic values in about [-1, 1].
    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 10_007) as f32 / 5003.5 - 1.0) * 1.3).collect()
    }

    fn round(x: f32, bf: bool) -> f64 {
        if bf { bf16::from_f32(x).to_f32() as f64 } else { x as f64 }
    }

    /// A weight of `rows × cols` in each storage type, with its values as f32.
    fn weights(rows: usize, cols: usize, seed: usize) -> (Vec<f32>, Vec<bf16>, Vec<f16>) {
        let w = vals(rows * cols, seed);
        let b = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let h = w.iter().map(|&v| f16::from_f32(v)).collect();
        (w, b, h)
    }

    fn stored<'a>(
        kind: usize,
        w: &'a (Vec<f32>, Vec<bf16>, Vec<f16>),
        rows: usize,
        cols: usize,
    ) -> (Weight<'a>, Vec<f32>) {
        match kind {
            0 => (Weight::f32(&w.0, rows, cols), w.0.clone()),
            1 => (Weight::new(Data::Bf16(&w.1), rows, cols), w.1.iter().map(|v| v.to_f32()).collect()),
            _ => (Weight::new(Data::F16(&w.2), rows, cols), w.2.iter().map(|v| v.to_f32()).collect()),
        }
    }

    fn close(got: &[f32], want: &[f64], k: usize, what: &str) {
        let tol = 2e-6 * (k as f64).sqrt().max(1.0);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}: [{i}] {g} vs {w}");
        }
    }

    /// What runs a product in these tests: a packed kernel, or a backend's
    /// f32 path.
    #[derive(Clone, Copy, Debug)]
    enum Runner {
        Kernel(micro::Kernel),
        Path(Backend),
    }

    fn runners() -> Vec<Runner> {
        let mut v: Vec<Runner> = micro::all().into_iter().map(Runner::Kernel).collect();
        v.push(Runner::Path(Backend::Gemm));
        if cfg!(feature = "blas") {
            v.push(Runner::Path(Backend::Blas));
        }
        v
    }

    fn is_bf16(r: Runner) -> bool {
        matches!(r, Runner::Kernel(k) if k.unit == micro::Unit::Bf16Pair)
    }

    fn run_forward(r: Runner, x: Rows<'_>, targets: &mut [Target<'_, '_>]) {
        match r {
            Runner::Kernel(kern) => {
                let outs: Vec<packed::Out> = targets
                    .iter_mut()
                    .map(|t| packed::Out { n: t.w.rows(), c: t.out.as_mut_ptr(), ldc: t.ld, acc: t.acc })
                    .collect();
                let ws: Vec<Weight<'_>> = targets.iter().map(|t| t.w).collect();
                let seg = packed::ASeg { a: x.data, lda: x.ld, k: x.cols };
                unsafe { packed::run(kern, x.rows, &[seg], &outs, &|_, o| packed::BSrc::Transposed(ws[o])) };
            }
            Runner::Path(b) => {
                for t in targets.iter_mut() {
                    gemm_path::forward(b, x, t.w, t.out, t.ld, t.acc);
                }
            }
        }
    }

    fn run_backward(r: Runner, terms: &[Grad<'_>], dx: &mut [f32], ld: usize, acc: bool) {
        match r {
            Runner::Kernel(kern) => {
                let segs: Vec<packed::ASeg<'_>> =
                    terms.iter().map(|t| packed::ASeg { a: t.dy.data, lda: t.dy.ld, k: t.dy.cols }).collect();
                let out = packed::Out { n: terms[0].w.cols(), c: dx.as_mut_ptr(), ldc: ld, acc };
                unsafe { packed::run(kern, terms[0].dy.rows, &segs, &[out], &|t, _| packed::BSrc::Plain(terms[t].w)) };
            }
            Runner::Path(b) => {
                for (i, t) in terms.iter().enumerate() {
                    gemm_path::backward(b, t.dy, t.w, dx, ld, acc || i > 0);
                }
            }
        }
    }

    /// Forward products of two weights sharing one input, against a naive
    /// sum over the values the runner sees (bf16-rounded for bf16 kernels),
    /// over edge shapes: single rows and columns, odd `k`, `k` past a block,
    /// strided input and output, overwrite and accumulate.
    #[test]
    fn forward_products_match_naive() {
        let shapes = [(1, 1, 1), (5, 7, 3), (13, 33, 17), (29, 600, 70), (150, 96, 130), (7, 1031, 41)];
        for r in runners() {
            let bf = is_bf16(r);
            for &(m, k, n) in &shapes {
                for kind in 0..3 {
                    let (ldx, ldo) = (k + 3, n + 5);
                    let x = vals(m * ldx, 1);
                    let w1 = weights(n, k, 2);
                    let w2 = weights(n / 2 + 1, k, 3);
                    let (wa, fa) = stored(kind, &w1, n, k);
                    let (wb, fb) = stored(kind, &w2, n / 2 + 1, k);
                    let mut out1 = vals(m * ldo, 4);
                    let mut out2 = vals(m * (n / 2 + 1), 5);
                    let (init1, init2) = (out1.clone(), out2.clone());
                    {
                        let mut t = [Target::new(wa, &mut out1, ldo), Target::accumulate(wb, &mut out2, n / 2 + 1)];
                        run_forward(r, Rows::strided(&x, m, k, ldx), &mut t);
                    }
                    let want = |fw: &[f32], i: usize, j: usize| -> f64 {
                        (0..k).map(|p| round(x[i * ldx + p], bf) * round(fw[j * k + p], bf)).sum()
                    };
                    let mut g1 = Vec::new();
                    let mut e1 = Vec::new();
                    for i in 0..m {
                        for j in 0..n {
                            g1.push(out1[i * ldo + j]);
                            e1.push(want(&fa, i, j));
                        }
                        // Padding between rows is untouched.
                        assert_eq!(
                            &out1[i * ldo + n..(i * ldo + ldo).min(out1.len())],
                            &init1[i * ldo + n..(i * ldo + ldo).min(out1.len())]
                        );
                    }
                    close(&g1, &e1, k, &format!("{r:?} fwd {m}x{k}x{n} kind {kind} out 1"));
                    let n2 = n / 2 + 1;
                    let e2: Vec<f64> = (0..m * n2).map(|e| init2[e] as f64 + want(&fb, e / n2, e % n2)).collect();
                    close(&out2, &e2, k, &format!("{r:?} fwd {m}x{k}x{n} kind {kind} out 2 (acc)"));
                }
            }
        }
    }

    /// Backward products summing two terms into one gradient, as above.
    #[test]
    fn backward_products_match_naive() {
        let shapes = [(1, 1, 1), (5, 7, 3), (13, 33, 17), (29, 600, 70), (150, 130, 96), (3, 1031, 40)];
        for r in runners() {
            let bf = is_bf16(r);
            for &(m, k, n) in &shapes {
                for kind in 0..3 {
                    let k2 = k / 3 + 1;
                    let dy1 = vals(m * (k + 2), 6);
                    let dy2 = vals(m * k2, 7);
                    let w1 = weights(k, n, 8);
                    let w2 = weights(k2, n, 9);
                    let (wa, fa) = stored(kind, &w1, k, n);
                    let (wb, fb) = stored(kind, &w2, k2, n);
                    for acc in [false, true] {
                        let ld = n + 1;
                        let mut dx = vals(m * ld, 10);
                        let init = dx.clone();
                        let terms =
                            [Grad::new(Rows::strided(&dy1, m, k, k + 2), wa), Grad::new(Rows::new(&dy2, m, k2), wb)];
                        run_backward(r, &terms, &mut dx, ld, acc);
                        let mut got = Vec::new();
                        let mut want = Vec::new();
                        for i in 0..m {
                            for j in 0..n {
                                let s1: f64 =
                                    (0..k).map(|p| round(dy1[i * (k + 2) + p], bf) * round(fa[p * n + j], bf)).sum();
                                let s2: f64 =
                                    (0..k2).map(|p| round(dy2[i * k2 + p], bf) * round(fb[p * n + j], bf)).sum();
                                got.push(dx[i * ld + j]);
                                want.push(s1 + s2 + if acc { init[i * ld + j] as f64 } else { 0.0 });
                            }
                        }
                        close(&got, &want, k, &format!("{r:?} bwd {m}x{k}x{n} kind {kind} acc {acc}"));
                    }
                }
            }
        }
    }

    #[test]
    fn public_entry_points_run_on_every_backend() {
        let (m, k, n) = (9, 40, 33);
        let x = vals(m * k, 11);
        let w = vals(n * k, 12);
        let want: Vec<f64> =
            (0..m * n).map(|e| (0..k).map(|p| x[(e / n) * k + p] as f64 * w[(e % n) * k + p] as f64).sum()).collect();
        for b in Backend::available() {
            set_backend(b);
            assert_eq!(backend(), b);
            let mut y = vec![f32::NAN; m * n];
            forward(Rows::new(&x, m, k), &mut [Target::new(Weight::f32(&w, n, k), &mut y, n)], Precision::F32);
            close(&y, &want, k, b.name());
            assert!(!describe(Precision::F32).is_empty());
        }
        let mut y = vec![0f32; m * n];
        forward(Rows::new(&x, m, k), &mut [Target::new(Weight::f32(&w, n, k), &mut y, n)], Precision::Bf16);
        let worst = y.iter().zip(&want).fold(0f64, |a, (&g, &w)| a.max((g as f64 - w).abs()));
        assert!(worst < 0.05, "bf16 products off by {worst}");
        release();
    }
}
