//! Throughput of the frozen-weight products of one decoder layer on every
//! backend (and bf16 products where the CPU has them), on a model's shapes.
//!
//! ```text
//! cargo run --release -p sam-kernels --example products -- [tokens] [reps] [hidden inter q_dim kv_dim]
//! ```
//! Defaults: 512 tokens, 3 repetitions, Qwen2.5-Coder-1.5B's shapes (hidden
//! 1536, MLP 8960, q 1536, k/v 256). Each line is one JSON object: the
//! product, the backend, GFLOP per wall second and per CPU second (all
//! threads; the steadier figure on a shared machine), best of `reps`.
//! `SAM_KERNELS_ISA=avx2` rules AVX-512 out, to compare the AVX2 kernel;
//! `SAM_MATMUL=gemm|packed|blas|bf16` runs one backend only.

use sam_kernels::{Backend, Grad, Precision, Rows, Target, Weight, backward, describe, forward, set_backend};
use std::time::Instant;

fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let n = args.first().copied().unwrap_or(512);
    let reps = args.get(1).copied().unwrap_or(3);
    let (h, inter, dq, dkv) = match args.get(2..6) {
        Some(s) => (s[0], s[1], s[2], s[3]),
        None => (1536, 8960, 1536, 256),
    };
    let w = |r: usize, c: usize, seed: u64| vals(r * c, seed);
    let (wq, wk, wv, wo) = (w(dq, h, 1), w(dkv, h, 2), w(dkv, h, 3), w(h, dq, 4));
    let (wg, wu, wd) = (w(inter, h, 5), w(inter, h, 6), w(h, inter, 7));
    let x = vals(n * h, 8);
    let xi = vals(n * inter, 9);
    let dqv = vals(n * dq, 10);
    let dkvv = vals(n * dkv, 11);
    let (mut oq, mut ok, mut ov) = (vec![0f32; n * dq], vec![0f32; n * dkv], vec![0f32; n * dkv]);
    let (mut og, mut ou, mut oh) = (vec![0f32; n * inter], vec![0f32; n * inter], vec![0f32; n * h]);
    let mut runs: Vec<(Backend, Precision)> = Backend::available().into_iter().map(|b| (b, Precision::F32)).collect();
    if sam_kernels::bf16_available() {
        runs.push((Backend::Packed, Precision::Bf16));
    }
    // `SAM_MATMUL=NAME` (or `bf16`) runs that one only.
    if let Ok(only) = std::env::var("SAM_MATMUL") {
        runs.retain(
            |&(b, p)| if only == "bf16" { p == Precision::Bf16 } else { b.name() == only && p == Precision::F32 },
        );
    }
    for (b, prec) in runs {
        set_backend(b);
        let name = describe(prec);
        let time = |what: &str, flop: f64, f: &mut dyn FnMut()| {
            let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
            for _ in 0..reps {
                let (t0, c0) = (Instant::now(), sam_kernels::profile::process_cpu_s());
                f();
                wall = wall.min(t0.elapsed().as_secs_f64());
                cpu = cpu.min(sam_kernels::profile::process_cpu_s() - c0);
            }
            println!(
                "{}",
                serde_json::json!({
                    "product": what, "backend": name, "tokens": n, "threads": rayon::current_num_threads(),
                    "gflop_per_wall_s": (flop / wall / 1e8).round() / 10.0,
                    "gflop_per_cpu_s": (flop / cpu / 1e8).round() / 10.0,
                })
            );
        };
        let f = |out: usize, inp: usize| 2.0 * (n * out * inp) as f64;
        time("fwd q+k+v", f(dq + 2 * dkv, h), &mut || {
            forward(
                Rows::new(&x, n, h),
                &mut [
                    Target::new(Weight::f32(&wq, dq, h), &mut oq, dq),
                    Target::new(Weight::f32(&wk, dkv, h), &mut ok, dkv),
                    Target::new(Weight::f32(&wv, dkv, h), &mut ov, dkv),
                ],
                prec,
            )
        });
        time("fwd o", f(h, dq), &mut || {
            forward(Rows::new(&dqv, n, dq), &mut [Target::new(Weight::f32(&wo, h, dq), &mut oh, h)], prec)
        });
        time("fwd gate+up", f(2 * inter, h), &mut || {
            forward(
                Rows::new(&x, n, h),
                &mut [
                    Target::new(Weight::f32(&wg, inter, h), &mut og, inter),
                    Target::new(Weight::f32(&wu, inter, h), &mut ou, inter),
                ],
                prec,
            )
        });
        time("fwd down", f(h, inter), &mut || {
            forward(Rows::new(&xi, n, inter), &mut [Target::new(Weight::f32(&wd, h, inter), &mut oh, h)], prec)
        });
        time("bwd down", f(h, inter), &mut || {
            backward(&[Grad::new(Rows::new(&x, n, h), Weight::f32(&wd, h, inter))], &mut og, inter, false, prec)
        });
        time("bwd gate+up", f(2 * inter, h), &mut || {
            backward(
                &[
                    Grad::new(Rows::new(&xi, n, inter), Weight::f32(&wg, inter, h)),
                    Grad::new(Rows::new(&xi, n, inter), Weight::f32(&wu, inter, h)),
                ],
                &mut oh,
                h,
                false,
                prec,
            )
        });
        time("bwd o", f(h, dq), &mut || {
            backward(&[Grad::new(Rows::new(&x, n, h), Weight::f32(&wo, h, dq))], &mut oq, dq, false, prec)
        });
        time("bwd q+k+v", f(dq + 2 * dkv, h), &mut || {
            backward(
                &[
                    Grad::new(Rows::new(&dqv, n, dq), Weight::f32(&wq, dq, h)),
                    Grad::new(Rows::new(&dkvv, n, dkv), Weight::f32(&wk, dkv, h)),
                    Grad::new(Rows::new(&dkvv, n, dkv), Weight::f32(&wv, dkv, h)),
                ],
                &mut oh,
                h,
                false,
                prec,
            )
        });
    }
}
