//! f32 products on the system BLAS (`cblas_sgemm`): OpenBLAS on Linux and
//! other Unix systems, Accelerate on macOS. Linked by the `blas` feature.

use std::sync::Once;

#[allow(non_camel_case_types)]
type blasint = i32;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

#[cfg_attr(target_os = "macos", link(name = "Accelerate", kind = "framework"))]
#[cfg_attr(not(target_os = "macos"), link(name = "openblas"))]
unsafe extern "C" {
    fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: blasint,
        n: blasint,
        k: blasint,
        alpha: f32,
        a: *const f32,
        lda: blasint,
        b: *const f32,
        ldb: blasint,
        beta: f32,
        c: *mut f32,
        ldc: blasint,
    );
}

#[cfg(not(target_os = "macos"))]
unsafe extern "C" {
    fn openblas_set_num_threads(n: i32);
}

/// OpenBLAS runs as many threads as the rayon pool has (its default is
/// every core, which would contend with the pool).
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(not(target_os = "macos"))]
        // SAFETY: a plain setter.
        unsafe {
            openblas_set_num_threads(rayon::current_num_threads().max(1) as i32)
        };
    });
}

/// How a strided operand reads as a row-major BLAS matrix: `(transposed, ld)`.
fn layout(rs: usize, cs: usize) -> (i32, usize) {
    if cs == 1 { (NO_TRANS, rs) } else { (TRANS, cs) }
}

/// `dst (m × n, rows ld apart) (+)= a · b` (see `gemm_path::product`); each
/// operand must have unit row or column stride.
///
/// # Safety
/// As `gemm_path::product`.
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ld: usize,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs, b_cs): (*const f32, usize, usize),
    acc: bool,
) {
    init();
    assert!(a_cs == 1 || a_rs == 1, "BLAS operands need a unit stride");
    assert!(b_cs == 1 || b_rs == 1, "BLAS operands need a unit stride");
    let (ta, lda) = layout(a_rs, a_cs);
    let (tb, ldb) = layout(b_rs, b_cs);
    // BLAS wants ld ≥ the stored row length even for a single row or column.
    let lda = lda.max(if ta == NO_TRANS { k } else { m }).max(1);
    let ldb = ldb.max(if tb == NO_TRANS { n } else { k }).max(1);
    let beta = if acc { 1.0 } else { 0.0 };
    // SAFETY: forwarded from the caller.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            ta,
            tb,
            m as blasint,
            n as blasint,
            k as blasint,
            1.0,
            a,
            lda as blasint,
            b,
            ldb as blasint,
            beta,
            dst,
            ld.max(n) as blasint,
        )
    };
}
