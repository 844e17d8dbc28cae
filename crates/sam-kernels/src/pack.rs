//! Packing of the products' operands into the microkernels' panels
//! ([`crate::micro`]): activations into `[step][MR]` panels, weights into
//! `[step][NR]` panels (transposed for `x · Wᵀ`, two rows interleaved for
//! bf16 pairs of `dy · W`), widening or rounding to the kernel's unit on
//! the way. AVX-512 does whole 16 × 16 blocks (a load per row, an
//! in-register transpose, a store per step); the edges, and CPUs without
//! AVX-512, take the scalar loops.

// Only x86-64 has kernels; elsewhere the products take the `gemm` path.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_mut))]

use crate::micro::Unit;
use crate::weight::{Data, Elem, Weight};

/// One unit from `row` at step `s` (`k` values in the row).
#[inline(always)]
fn unit_of<T: Elem>(unit: Unit, row: &[T], s: usize, k: usize) -> u32 {
    match unit {
        Unit::F32 => row[s].to_f32().to_bits(),
        Unit::Bf16Pair => {
            let lo = row[2 * s].to_bf16_bits() as u32;
            let hi = if 2 * s + 1 < k { row[2 * s + 1].to_bf16_bits() as u32 } else { 0 };
            lo | (hi << 16)
        }
    }
}

/// Steps of `unit` that are whole inside a row of `k` values.
fn whole_steps(unit: Unit, k: usize) -> usize {
    k / unit.k_per_step()
}

/// Packs `rows.len() ≤ mr` rows (the rest zeros) of `k` f32 values, all
/// `dst.len() / mr` steps, as `[step][mr]`.
pub(crate) fn pack_a(unit: Unit, rows: &[&[f32]], k: usize, mr: usize, dst: &mut [u32]) {
    let steps = dst.len() / mr;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if mr <= 16 && x86::usable(unit) {
        done = whole_steps(unit, k).min(steps) / 16 * 16;
        // SAFETY: the CPU has the features; rows hold `k` values, `done`
        // steps are whole in them, and `dst` holds `steps · mr` units.
        unsafe { x86::pack_a(unit, rows, mr, done, dst) };
    }
    for (r, row) in rows.iter().enumerate() {
        for s in done..steps {
            dst[s * mr + r] = unit_of(unit, row, s, k);
        }
    }
    for r in rows.len()..mr {
        for s in done..steps {
            dst[s * mr + r] = 0;
        }
    }
}

/// Packs steps `s0..s1` of columns `j0..j1` of `B` as `nr`-column panels
/// `[panel][step][nr]` (zeros past `j1`): `B[k][j] = W[j][k]` when
/// `transposed`, else `W[k][j]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b(
    unit: Unit,
    w: Weight<'_>,
    transposed: bool,
    s0: usize,
    s1: usize,
    j0: usize,
    j1: usize,
    nr: usize,
    dst: &mut [u32],
) {
    let geo = Geo { rows: w.rows(), cols: w.cols(), s0, s1, j0, j1, nr };
    match w.data() {
        Data::F32(v) => pack_b_of(unit, v, transposed, geo, dst),
        Data::Bf16(v) => pack_b_of(unit, v, transposed, geo, dst),
        Data::F16(v) => pack_b_of(unit, v, transposed, geo, dst),
    }
}

/// Element types the packing reads (on x86-64 also by vector).
#[cfg(target_arch = "x86_64")]
pub(crate) trait PackElem: Elem + x86::VElem {}
#[cfg(target_arch = "x86_64")]
impl<T: Elem + x86::VElem> PackElem for T {}
/// Element types the packing reads.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait PackElem: Elem {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Elem> PackElem for T {}

#[derive(Clone, Copy)]
struct Geo {
    rows: usize,
    cols: usize,
    s0: usize,
    s1: usize,
    j0: usize,
    j1: usize,
    nr: usize,
}

fn pack_b_of<T: PackElem>(unit: Unit, w: &[T], transposed: bool, g: Geo, dst: &mut [u32]) {
    let steps = g.s1 - g.s0;
    let kps = unit.k_per_step();
    for q in 0..(g.j1 - g.j0).div_ceil(g.nr) {
        let panel = &mut dst[q * steps * g.nr..(q + 1) * steps * g.nr];
        let jq = g.j0 + q * g.nr;
        let live = g.nr.min(g.j1 - jq);
        if transposed {
            // Each column is a row of W (`cols` values long).
            let rows: Vec<&[T]> = (0..live).map(|jj| &w[(jq + jj) * g.cols..(jq + jj + 1) * g.cols]).collect();
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if g.nr.is_multiple_of(16) && x86::usable(unit) {
                done = whole_steps(unit, g.cols).saturating_sub(g.s0).min(steps) / 16 * 16;
                // SAFETY: features present; `done` steps from `s0` are whole
                // in every row; the panel holds `steps · nr` units.
                unsafe { x86::pack_bt(unit, &rows, g.s0, g.nr, done, panel) };
            }
            for (jj, row) in rows.iter().enumerate() {
                for s in done..steps {
                    panel[s * g.nr + jj] = unit_of(unit, row, g.s0 + s, g.cols);
                }
            }
            for jj in live..g.nr {
                for s in done..steps {
                    panel[s * g.nr + jj] = 0;
                }
            }
        } else {
            // Each step reads one row of W (two for bf16 pairs).
            for s in 0..steps {
                let k0 = (g.s0 + s) * kps;
                let out = &mut panel[s * g.nr..(s + 1) * g.nr];
                let r0 = &w[k0 * g.cols + jq..k0 * g.cols + jq + live];
                let r1 = (unit == Unit::Bf16Pair && k0 + 1 < g.rows)
                    .then(|| &w[(k0 + 1) * g.cols + jq..(k0 + 1) * g.cols + jq + live]);
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if x86::usable(unit) {
                    done = live / 16 * 16;
                    // SAFETY: features present; `done ≤ live` values in each row and in `out`.
                    unsafe { x86::pack_bp(unit, r0, r1, done, out) };
                }
                for j in done..live {
                    out[j] = match (unit, r1) {
                        (Unit::F32, _) => r0[j].to_f32().to_bits(),
                        (Unit::Bf16Pair, Some(r1)) => {
                            r0[j].to_bf16_bits() as u32 | ((r1[j].to_bf16_bits() as u32) << 16)
                        }
                        (Unit::Bf16Pair, None) => r0[j].to_bf16_bits() as u32,
                    };
                }
                out[live..].fill(0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use crate::micro::Unit;
    use std::arch::x86_64::*;

    /// Whether the vector packing runs for `unit` here.
    pub(super) fn usable(unit: Unit) -> bool {
        match unit {
            Unit::F32 => crate::cpu::avx512(),
            Unit::Bf16Pair => crate::cpu::avx512_bf16(),
        }
    }

    /// Element types the vector packing loads.
    pub(crate) trait VElem: Copy {
        /// 16 values from `p` as f32 bits.
        ///
        /// # Safety
        /// 16 values readable at `p`; AVX-512 F.
        unsafe fn f32x16(p: *const Self) -> __m512i;
        /// 32 values from `p` as 16 bf16 pairs.
        ///
        /// # Safety
        /// 32 values readable at `p`; AVX-512 F and BF16.
        unsafe fn pairs16(p: *const Self) -> __m512i;
        /// 16 values from `p` as bf16 bits in the low half of each lane.
        ///
        /// # Safety
        /// 16 values readable at `p`; AVX-512 F and BF16.
        unsafe fn bf16x16(p: *const Self) -> __m512i;
    }

    impl VElem for f32 {
        #[inline(always)]
        unsafe fn f32x16(p: *const f32) -> __m512i {
            unsafe { _mm512_castps_si512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn pairs16(p: *const f32) -> __m512i {
            unsafe {
                let bh = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p));
                std::mem::transmute::<__m512bh, __m512i>(bh)
            }
        }
        #[inline(always)]
        unsafe fn bf16x16(p: *const f32) -> __m512i {
            unsafe {
                let bh = _mm512_cvtneps_pbh(_mm512_loadu_ps(p));
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(bh))
            }
        }
    }

    impl VElem for half::bf16 {
        #[inline(always)]
        unsafe fn f32x16(p: *const Self) -> __m512i {
            unsafe { _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))) }
        }
        #[inline(always)]
        unsafe fn pairs16(p: *const Self) -> __m512i {
            unsafe { _mm512_loadu_si512(p as *const __m512i) }
        }
        #[inline(always)]
        unsafe fn bf16x16(p: *const Self) -> __m512i {
            unsafe { _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)) }
        }
    }

    impl VElem for half::f16 {
        #[inline(always)]
        unsafe fn f32x16(p: *const Self) -> __m512i {
            unsafe { _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))) }
        }
        #[inline(always)]
        unsafe fn pairs16(p: *const Self) -> __m512i {
            unsafe {
                let lo = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                let hi = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16) as *const __m256i));
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
            }
        }
        #[inline(always)]
        unsafe fn bf16x16(p: *const Self) -> __m512i {
            unsafe {
                let f = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(f)))
            }
        }
    }

    /// Transposes a 16 × 16 block of 32-bit lanes in place.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let b = 4 * i;
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for i in 0..4 {
            t[i] = _mm512_shuffle_i32x4::<0x88>(r[i], r[i + 4]);
            t[i + 4] = _mm512_shuffle_i32x4::<0xdd>(r[i], r[i + 4]);
            t[i + 8] = _mm512_shuffle_i32x4::<0x88>(r[i + 8], r[i + 12]);
            t[i + 12] = _mm512_shuffle_i32x4::<0xdd>(r[i + 8], r[i + 12]);
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[i + 8]);
            r[i + 8] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[i + 8]);
        }
    }

    /// 16 units of `row` from step `s`.
    #[inline(always)]
    unsafe fn units<T: VElem>(unit: Unit, row: *const T, s: usize) -> __m512i {
        unsafe {
            match unit {
                Unit::F32 => T::f32x16(row.add(s)),
                Unit::Bf16Pair => T::pairs16(row.add(2 * s)),
            }
        }
    }

    /// The vector part of [`super::pack_a`]: steps `0..done` (a multiple
    /// of 16).
    ///
    /// # Safety
    /// See the caller.
    pub(super) unsafe fn pack_a(unit: Unit, rows: &[&[f32]], mr: usize, done: usize, dst: &mut [u32]) {
        unsafe {
            match unit {
                Unit::F32 => pack_a_f32(rows, mr, done, dst),
                Unit::Bf16Pair => pack_a_bf16(rows, mr, done, dst),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_a_f32(rows: &[&[f32]], mr: usize, done: usize, dst: &mut [u32]) {
        unsafe { pack_a_body(Unit::F32, rows, mr, done, dst) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_a_bf16(rows: &[&[f32]], mr: usize, done: usize, dst: &mut [u32]) {
        unsafe { pack_a_body(Unit::Bf16Pair, rows, mr, done, dst) }
    }

    #[inline(always)]
    unsafe fn pack_a_body(unit: Unit, rows: &[&[f32]], mr: usize, done: usize, dst: &mut [u32]) {
        let mask: u16 = if mr == 16 { u16::MAX } else { (1u16 << mr) - 1 };
        let d = dst.as_mut_ptr() as *mut i32;
        unsafe {
            for s in (0..done).step_by(16) {
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, row) in rows.iter().enumerate() {
                    r[i] = units(unit, row.as_ptr(), s);
                }
                transpose16(&mut r);
                for (t, v) in r.iter().enumerate() {
                    _mm512_mask_storeu_epi32(d.add((s + t) * mr), mask, *v);
                }
            }
        }
    }

    /// The vector part of a transposed panel of [`super::pack_b`]: steps
    /// `0..done` (a multiple of 16) from step `s0` of each row.
    ///
    /// # Safety
    /// See the caller.
    pub(super) unsafe fn pack_bt<T: VElem>(
        unit: Unit,
        rows: &[&[T]],
        s0: usize,
        nr: usize,
        done: usize,
        panel: &mut [u32],
    ) {
        unsafe {
            match unit {
                Unit::F32 => pack_bt_f32(rows, s0, nr, done, panel),
                Unit::Bf16Pair => pack_bt_bf16(rows, s0, nr, done, panel),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_bt_f32<T: VElem>(rows: &[&[T]], s0: usize, nr: usize, done: usize, panel: &mut [u32]) {
        unsafe { pack_bt_body(Unit::F32, rows, s0, nr, done, panel) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_bt_bf16<T: VElem>(rows: &[&[T]], s0: usize, nr: usize, done: usize, panel: &mut [u32]) {
        unsafe { pack_bt_body(Unit::Bf16Pair, rows, s0, nr, done, panel) }
    }

    #[inline(always)]
    unsafe fn pack_bt_body<T: VElem>(unit: Unit, rows: &[&[T]], s0: usize, nr: usize, done: usize, panel: &mut [u32]) {
        let d = panel.as_mut_ptr() as *mut __m512i;
        unsafe {
            for g in 0..nr / 16 {
                let group = &rows[(16 * g).min(rows.len())..(16 * g + 16).min(rows.len())];
                for s in (0..done).step_by(16) {
                    let mut r = [_mm512_setzero_si512(); 16];
                    for (i, row) in group.iter().enumerate() {
                        r[i] = units(unit, row.as_ptr(), s0 + s);
                    }
                    transpose16(&mut r);
                    for (t, v) in r.iter().enumerate() {
                        _mm512_storeu_si512(d.add(((s + t) * nr + 16 * g) / 16), *v);
                    }
                }
            }
        }
    }

    /// The vector part of one step of a plain panel of [`super::pack_b`]:
    /// columns `0..done` (a multiple of 16) of row `r0` (and `r1`, the high
    /// halves of bf16 pairs).
    ///
    /// # Safety
    /// See the caller.
    pub(super) unsafe fn pack_bp<T: VElem>(unit: Unit, r0: &[T], r1: Option<&[T]>, done: usize, out: &mut [u32]) {
        unsafe {
            match unit {
                Unit::F32 => pack_bp_f32(r0, done, out),
                Unit::Bf16Pair => pack_bp_bf16(r0, r1, done, out),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_bp_f32<T: VElem>(r0: &[T], done: usize, out: &mut [u32]) {
        let d = out.as_mut_ptr() as *mut __m512i;
        unsafe {
            for j in (0..done).step_by(16) {
                _mm512_storeu_si512(d.add(j / 16), T::f32x16(r0.as_ptr().add(j)));
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_bp_bf16<T: VElem>(r0: &[T], r1: Option<&[T]>, done: usize, out: &mut [u32]) {
        let d = out.as_mut_ptr() as *mut __m512i;
        unsafe {
            for j in (0..done).step_by(16) {
                let lo = T::bf16x16(r0.as_ptr().add(j));
                let v = match r1 {
                    Some(r1) => _mm512_or_si512(lo, _mm512_slli_epi32::<16>(T::bf16x16(r1.as_ptr().add(j)))),
                    None => lo,
                };
                _mm512_storeu_si512(d.add(j / 16), v);
            }
        }
    }
}
