//! The packed products: `C (+)= A · B` for activations `A` (`m × k`, f32
//! rows) and frozen weights `B`, on the microkernels of [`crate::micro`].
//!
//! `A` is packed once per product (all of it, into `MR`-row panels of
//! 32-bit units) and shared by every thread and by every output of the
//! product — q, k and v read one packed copy of the normed input, as do
//! gate and up. `B` is packed per task (a chunk of output columns), `KC`
//! steps at a time, as the weight is read: transposed for `x · Wᵀ`,
//! interleaved for `dy · W`, and widened or rounded to the kernel's unit
//! on the way (f32, bf16 or f16 storage). A product may sum over several
//! `(A, W)` pairs (`Σ_t dy_t · W_t`, the input gradient of q/k/v or of
//! gate/up) into one output, and may write several outputs from one `A`.
//!
//! Tasks are `(output, column chunk, row chunk)` triples run on the rayon
//! pool; each owns its block of the output, so there are no reductions.

use crate::micro::Kernel;
use crate::pack::{pack_a, pack_b};
use crate::weight::Weight;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// Steps of `k` per block (an `NR`-column panel of `B` is `KC · NR` units:
/// 32 KB for 32 columns, in L1).
const KC: usize = 256;
/// `NR`-panels per task.
const NC_PANELS: usize = 4;
/// Rows of `A` per task at most (a `KC` block of them stays in L2).
const MC_ROWS: usize = 576;

/// One `A` operand: `m × k` f32 rows `lda` apart.
#[derive(Clone, Copy)]
pub(crate) struct ASeg<'a> {
    pub(crate) a: &'a [f32],
    pub(crate) lda: usize,
    pub(crate) k: usize,
}

/// How a weight forms `B`.
#[derive(Clone, Copy)]
pub(crate) enum BSrc<'a> {
    /// `B[k][j] = W[j][k]` (`x · Wᵀ`): `W` is `n × k`.
    Transposed(Weight<'a>),
    /// `B[k][j] = W[k][j]` (`dy · W`): `W` is `k × n`.
    Plain(Weight<'a>),
}

/// One output: `n` columns at `c`, rows `ldc` apart; `acc` adds to it.
pub(crate) struct Out {
    pub(crate) n: usize,
    pub(crate) c: *mut f32,
    pub(crate) ldc: usize,
    pub(crate) acc: bool,
}

// SAFETY: tasks write disjoint blocks of an output (see `run`).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// Free buffers of packed `A` operands, reused across products (fresh
/// pages would be zeroed by the kernel on every product).
static A_BUFS: Mutex<Vec<Vec<u32>>> = Mutex::new(Vec::new());

thread_local! {
    static B_BUF: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `out_o (+)= Σ_t A_t · B(t, o)` for every output `o`, all `m` rows.
/// `b(t, o)` gives the weight of segment `t` for output `o`; its `k` must
/// be `segs[t].k` and its `n` `outs[o].n`.
///
/// # Safety
/// Every output must be valid for `m` rows of `n` values `ldc` apart,
/// must not overlap another output or any input, and must not be accessed
/// by anyone else meanwhile; the CPU must run `kern`.
pub(crate) unsafe fn run<'w>(
    kern: Kernel,
    m: usize,
    segs: &[ASeg<'_>],
    outs: &[Out],
    b: &(dyn Fn(usize, usize) -> BSrc<'w> + Sync),
) {
    if m == 0 || outs.iter().all(|o| o.n == 0) {
        return;
    }
    let (mr, nr, kps) = (kern.mr, kern.nr, kern.unit.k_per_step());
    for s in segs {
        assert!(s.k == 0 || s.a.len() >= (m - 1) * s.lda + s.k, "A operand out of bounds");
    }
    let seg_steps: Vec<usize> = segs.iter().map(|s| s.k.div_ceil(kps)).collect();
    let total: usize = seg_steps.iter().sum();
    if total == 0 {
        for o in outs.iter().filter(|o| !o.acc) {
            for i in 0..m {
                // SAFETY: the caller guarantees the output's rows.
                unsafe { std::slice::from_raw_parts_mut(o.c.add(i * o.ldc), o.n).fill(0.0) };
            }
        }
        return;
    }
    let panels = m.div_ceil(mr);

    // Pack all of A: panel p, global step g at [p · total · mr + g · mr].
    let mut abuf = take_buf(panels * total * mr);
    abuf[..panels * total * mr].par_chunks_mut(total * mr).enumerate().with_max_len(1).for_each(|(p, dst)| {
        let mut g = 0;
        for (s, &st) in segs.iter().zip(&seg_steps) {
            let rows: Vec<&[f32]> = (p * mr..((p + 1) * mr).min(m)).map(|i| &s.a[i * s.lda..i * s.lda + s.k]).collect();
            pack_a(kern.unit, &rows, s.k, mr, &mut dst[g * mr..(g + st) * mr]);
            g += st;
        }
    });

    // K blocks: (segment, first step, last step, global first step).
    let mut blocks = Vec::new();
    let mut g = 0;
    for (t, &st) in seg_steps.iter().enumerate() {
        for s0 in (0..st).step_by(KC) {
            blocks.push((t, s0, (s0 + KC).min(st), g + s0));
        }
        g += st;
    }

    let nc = NC_PANELS * nr;
    let mc_panels = (MC_ROWS / mr).max(1);
    let tasks: Vec<(usize, usize, usize)> = outs
        .iter()
        .enumerate()
        .flat_map(|(o, out)| {
            (0..out.n.div_ceil(nc)).flat_map(move |jc| (0..panels.div_ceil(mc_panels)).map(move |ic| (o, jc, ic)))
        })
        .collect();
    let abuf_ref = &abuf[..];
    tasks.par_iter().with_max_len(1).for_each(|&(o, jc, ic)| {
        let out = &outs[o];
        let (j0, j1) = (jc * nc, ((jc + 1) * nc).min(out.n));
        let (p0, p1) = (ic * mc_panels, ((ic + 1) * mc_panels).min(panels));
        B_BUF.with(|cell| {
            let mut bbuf = cell.borrow_mut();
            let need = KC * nc;
            if bbuf.len() < need {
                bbuf.resize(need, 0);
            }
            for (bi, &(t, s0, s1, g0)) in blocks.iter().enumerate() {
                let steps = s1 - s0;
                let (w, transposed) = match b(t, o) {
                    BSrc::Transposed(w) => (w, true),
                    BSrc::Plain(w) => (w, false),
                };
                pack_b(kern.unit, w, transposed, s0, s1, j0, j1, nr, &mut bbuf[..]);
                for p in p0..p1 {
                    let rows = mr.min(m - p * mr);
                    let ap = abuf_ref[p * total * mr + g0 * mr..].as_ptr();
                    for q in 0..(j1 - j0).div_ceil(nr) {
                        let cols = nr.min(j1 - j0 - q * nr);
                        let bp = bbuf[q * steps * nr..].as_ptr();
                        // SAFETY: the panels hold `steps` steps; the tile
                        // is inside this task's block of the output.
                        unsafe {
                            let c = out.c.add(p * mr * out.ldc + j0 + q * nr);
                            (kern.micro)(steps, ap, bp, c, out.ldc, rows, cols, out.acc || bi > 0);
                        }
                    }
                }
            }
        });
    });
    give_buf(abuf);
}

fn take_buf(len: usize) -> Vec<u32> {
    let mut bufs = A_BUFS.lock().unwrap_or_else(|e| e.into_inner());
    let i = bufs.iter().enumerate().max_by_key(|(_, b)| b.len()).map(|(i, _)| i);
    let mut v = i.map(|i| bufs.swap_remove(i)).unwrap_or_default();
    drop(bufs);
    if v.len() < len {
        v.resize(len, 0);
    }
    v
}

fn give_buf(v: Vec<u32>) {
    let mut bufs = A_BUFS.lock().unwrap_or_else(|e| e.into_inner());
    // Keep at most two (products run one at a time; a second may overlap).
    if bufs.len() < 2 {
        bufs.push(v);
    }
}

/// Frees the reused buffers.
pub(crate) fn release() {
    A_BUFS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
