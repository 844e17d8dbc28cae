//! Microkernels of the packed products ([`crate::packed`]): one
//! `MR × NR` tile of `C (+)= A · B` over packed panels of 32-bit units —
//! f32 values, or pairs of bf16 values along `k` for the dot-product
//! instruction — on AVX-512 (f32 FMA or BF16 dot products) or AVX2 + FMA.
//!
//! A panel of `A` is `[steps][MR]` units (one broadcast per row and step),
//! a panel of `B` is `[steps][NR]` units (NR / lanes vector loads per
//! step); the tile lives in registers for all the steps and is written
//! (or added) once, with masks at the edges.

// Only x86-64 has kernels; elsewhere the products take the `gemm` path.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_mut))]

/// What one 32-bit unit of a packed panel holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// One f32 value: a step is one element of `k`.
    F32,
    /// Two bf16 values (`k` even in the low half, odd in the high half): a
    /// step is two elements of `k`.
    Bf16Pair,
}

impl Unit {
    /// Elements of `k` per step.
    pub(crate) fn k_per_step(self) -> usize {
        match self {
            Unit::F32 => 1,
            Unit::Bf16Pair => 2,
        }
    }
}

/// `c[r·ldc + j] (+)= Σ_s a[s·MR + r] · b[s·NR + j]` for `r < rows`,
/// `j < cols` (`add`: accumulate into `c`, else overwrite).
///
/// # Safety
/// `a` holds `steps · MR` units, `b` `steps · NR`; `c` is valid for the
/// addressed `rows × cols` elements; the CPU has the kernel's features.
pub(crate) type Micro =
    unsafe fn(steps: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, rows: usize, cols: usize, add: bool);

/// A microkernel with its tile shape and unit.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub(crate) mr: usize,
    pub(crate) nr: usize,
    pub(crate) unit: Unit,
    pub(crate) micro: Micro,
    pub(crate) name: &'static str,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The fastest f32 kernel this CPU runs, if any.
pub(crate) fn f32_kernel() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx512() {
            return Some(Kernel { mr: 12, nr: 32, unit: Unit::F32, micro: x86::f32_avx512, name: "avx512 f32 12x32" });
        }
        if crate::cpu::avx2() {
            return Some(Kernel { mr: 6, nr: 16, unit: Unit::F32, micro: x86::f32_avx2, name: "avx2 f32 6x16" });
        }
    }
    None
}

/// Every kernel this CPU runs (for tests).
#[cfg(test)]
pub(crate) fn all() -> Vec<Kernel> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx512() {
            v.push(Kernel { mr: 12, nr: 32, unit: Unit::F32, micro: x86::f32_avx512, name: "avx512 f32 12x32" });
        }
        if crate::cpu::avx2() {
            v.push(Kernel { mr: 6, nr: 16, unit: Unit::F32, micro: x86::f32_avx2, name: "avx2 f32 6x16" });
        }
    }
    v.extend(bf16_kernel());
    v
}

/// The bf16 dot-product kernel, where the CPU has the instructions.
pub(crate) fn bf16_kernel() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx512_bf16() {
            return Some(Kernel {
                mr: 12,
                nr: 32,
                unit: Unit::Bf16Pair,
                micro: x86::bf16_avx512,
                name: "avx512-bf16 12x32",
            });
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Lane masks for the last `cols` of a row of 16 × `V` lanes.
    #[inline(always)]
    fn masks<const V: usize>(cols: usize) -> [u16; V] {
        let mut m = [0u16; V];
        for (v, mv) in m.iter_mut().enumerate() {
            let n = cols.saturating_sub(16 * v).min(16);
            *mv = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
        }
        m
    }

    /// Writes an AVX-512 tile of `MR × 16V`.
    #[inline(always)]
    unsafe fn store512<const MR: usize, const V: usize>(
        acc: &[[__m512; V]; MR],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        let m = masks::<V>(cols);
        unsafe {
            for (r, row) in acc.iter().enumerate().take(rows) {
                let p = c.add(r * ldc);
                for (v, &x) in row.iter().enumerate() {
                    if m[v] == 0 {
                        continue;
                    }
                    let q = p.add(16 * v);
                    let y = if add { _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], q), x) } else { x };
                    _mm512_mask_storeu_ps(q, m[v], y);
                }
            }
        }
    }

    /// f32 FMA, 12 rows × 32 columns (24 accumulators).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn f32_avx512(
        steps: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        const MR: usize = 12;
        const V: usize = 2;
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let (a, b) = (a as *const f32, b as *const f32);
        unsafe {
            for s in 0..steps {
                let bp = b.add(s * 16 * V);
                let bv = [_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16))];
                let ap = a.add(s * MR);
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*ap.add(r));
                    for v in 0..V {
                        row[v] = _mm512_fmadd_ps(x, bv[v], row[v]);
                    }
                }
            }
            store512(&acc, c, ldc, rows, cols, add);
        }
    }

    /// bf16 pair dot products (`vdpbf16ps`), 12 rows × 32 columns.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn bf16_avx512(
        steps: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        const MR: usize = 12;
        const V: usize = 2;
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        unsafe {
            for s in 0..steps {
                let bp = b.add(s * 16 * V) as *const __m512i;
                let bv: [__m512bh; V] = [
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(1))),
                ];
                let ap = a.add(s * MR);
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r) as i32));
                    for v in 0..V {
                        row[v] = _mm512_dpbf16_ps(row[v], x, bv[v]);
                    }
                }
            }
            store512(&acc, c, ldc, rows, cols, add);
        }
    }

    /// f32 FMA on AVX2, 6 rows × 16 columns (12 accumulators).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn f32_avx2(
        steps: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        const MR: usize = 6;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (a, b) = (a as *const f32, b as *const f32);
        unsafe {
            for s in 0..steps {
                let bp = b.add(s * 16);
                let bv = [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))];
                let ap = a.add(s * MR);
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*ap.add(r));
                    row[0] = _mm256_fmadd_ps(x, bv[0], row[0]);
                    row[1] = _mm256_fmadd_ps(x, bv[1], row[1]);
                }
            }
            let mut tile = [[0f32; 16]; MR];
            for (t, row) in tile.iter_mut().zip(&acc) {
                _mm256_storeu_ps(t.as_mut_ptr(), row[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), row[1]);
            }
            for (r, t) in tile.iter().enumerate().take(rows) {
                let p = c.add(r * ldc);
                if cols == 16 {
                    for h in 0..2 {
                        let q = p.add(8 * h);
                        let x = _mm256_loadu_ps(t.as_ptr().add(8 * h));
                        let y = if add { _mm256_add_ps(_mm256_loadu_ps(q), x) } else { x };
                        _mm256_storeu_ps(q, y);
                    }
                } else {
                    for (j, &x) in t.iter().enumerate().take(cols) {
                        *p.add(j) = if add { *p.add(j) + x } else { x };
                    }
                }
            }
        }
    }
}
