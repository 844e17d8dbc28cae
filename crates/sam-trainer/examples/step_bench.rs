//! LoRA SFT step throughput and peak RSS, the configuration of the PyTorch +
//! PEFT peer (`peft_lora_bench.py`): rank r on q_proj and v_proj, alpha 2r,
//! batch 1, f32, loss on every position, AdamW.
//!
//! ```text
//! cargo run --release -p sam-trainer --example step_bench -- MODEL [seq] [steps] [rank] [dtype] [RECOMPUTE_EVERY|nockpt] [sft|sft2|dpo]
//! ```
//! MODEL is a GGUF file, a Hugging Face or mlx folder, or
//! `qwen2.5-coder-1.5b-random` / `qwen2.5-3b-random` (that shape, random
//! weights); dtype is how the frozen weights are held: f32 (default), bf16,
//! `auto` (a quantized file's weights kept quantized), or q4 / q8 (a random
//! model quantized in mlx's 4- or 8-bit format, kept quantized); RECOMPUTE_EVERY (default 1) recomputes every
//! N-th layer in the backward pass, `nockpt` keeps all activations, `auto`
//! picks what `sam train` picks by default: the fastest setting whose
//! estimated peak fits this machine's available memory with a margin
//! ([`StepShape::choose`]).
//! The last argument picks the step, each on `seq` tokens in all:
//! - `sft` (default): one sequence of `seq` tokens, loss on every position;
//! - `dpo`: one preference pair, prompt `seq/4` tokens, chosen and rejected
//!   `seq/4` each (two sequences of `seq/2` in one batch, loss on the
//!   responses), reference log-probs computed first with the adapter off;
//! - `sft2`: the DPO step's shape trained as SFT — two sequences of `seq/2`,
//!   loss on their last `seq/4` tokens — the like-for-like memory baseline.
//!
//! `SAM_BENCH_LAYERS=N` puts the adapters on the last N layers only (`sam
//! train --layers N`; default all).
//!
//! The run goes through [`Job`], the crate's one way to train, in a
//! temporary run folder (no validation, no periodic checkpoint, no final
//! evaluation); `load_s` is the time until training starts (model and data).
//!
//! Prints one JSON line, with the measured peak RSS (`peak_rss_mb`) beside
//! the trainer's estimate of it (`estimated_peak_mb`, [`StepShape::estimate`]). With `SAM_PROFILE=1` in the environment it also
//! reports where the steps after the first two went (`profile`: wall and
//! process CPU seconds per step of each span of the fused path, see
//! `sam_kernels::profile`).

use rand::{Rng, SeedableRng, rngs::StdRng};
use sam_dataset::{Split, preference_cache_path, sft_cache_path, write_preference, write_sft};
use sam_trainer::{
    BatchConfig, ComputeConfig, Duration, Job, JobControl, JobMode, JobSpec, Layers, LoraConfig, ModelConfig,
    ModelSource, Observer, OptimConfig, StepMetrics, StepShape, Target, TokenizedExample, TokenizedPair, TrainConfig,
    WeightType,
};
use std::time::Instant;

/// Step times, losses, the process's CPU seconds per step, and when
/// training started.
struct Times(Vec<f64>, Vec<f64>, Vec<f64>, f64, Instant, Option<f64>);

/// Steps left out of the medians and the profile (warm-up).
const WARM: usize = 2;

impl Observer for Times {
    fn on_start(&mut self, _total: usize, _examples: usize) {
        self.5.get_or_insert(self.4.elapsed().as_secs_f64());
        self.3 = cpu_seconds();
    }
    fn on_step(&mut self, m: &StepMetrics) {
        let cpu = cpu_seconds();
        let step_cpu = cpu - self.3;
        self.3 = cpu;
        let wall = m.tokens as f64 / m.tokens_per_s;
        eprintln!(
            "step {} loss {:.3} {:.1} tok/s {:.3} s, cpu {:.2} s ({:.0}% of {} threads)",
            m.step,
            m.loss,
            m.tokens_per_s,
            wall,
            step_cpu,
            100.0 * step_cpu / (wall * candle_core::utils::get_num_threads() as f64),
            candle_core::utils::get_num_threads()
        );
        self.0.push(wall);
        self.1.push(m.loss);
        self.2.push(step_cpu);
        if self.0.len() == WARM {
            sam_kernels::profile::take();
        }
    }
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`,
/// clock ticks of 1/100 s; 0 where unavailable).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (1-based), 11 and 12 here.
    (tick(11) + tick(12)) / 100.0
}

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = args.get(1).ok_or("usage: step_bench MODEL [seq] [steps] [rank] [dtype]")?;
    let seq: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let rank: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let dtype = args.get(5).map(String::as_str).unwrap_or("f32");
    let (weights, bits) = match dtype {
        "f32" => (WeightType::F32, None),
        "bf16" => (WeightType::Bf16, None),
        "auto" => (WeightType::Auto, None),
        "q4" => (WeightType::Auto, Some(4)),
        "q8" => (WeightType::Auto, Some(8)),
        other => return Err(format!("unknown dtype `{other}` (f32, bf16, auto, q4, q8)").into()),
    };
    let t0 = Instant::now();
    let shape = match model_path.as_str() {
        "qwen2.5-coder-1.5b-random" => Some(ModelConfig::qwen2_5_coder_1_5b()),
        "qwen2.5-3b-random" => Some(ModelConfig::qwen2_5_3b()),
        _ => None,
    };
    let model = match (shape, bits) {
        (Some(cfg), Some(b)) => ModelSource::random_quantized(cfg, b, 0),
        (Some(cfg), None) => ModelSource::random(cfg, 0),
        (None, None) => ModelSource::from(model_path),
        (None, Some(_)) => return Err("q4 and q8 quantize a random model: use dtype auto for a file".into()),
    };
    let vocab = model.config()?.vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..seq).map(|_| rng.random_range(0..vocab)).collect();
    let ex =
        TokenizedExample { id: "bench".into(), domain: "bench".into(), loss_mask: vec![true; seq], input_ids: ids };
    let mut cfg = TrainConfig {
        lora: LoraConfig {
            rank,
            alpha: 2.0 * rank as f64,
            targets: vec![Target::Q, Target::V],
            layers: match std::env::var("SAM_BENCH_LAYERS").ok().and_then(|v| v.parse().ok()) {
                Some(n) => Layers::Last(n),
                None => Layers::All,
            },
            ..Default::default()
        },
        optim: OptimConfig {
            lr: 1e-4,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            warmup_steps: Some(0),
            ..Default::default()
        },
        batch: BatchConfig { batch_size: 1, grad_accum: 1, max_seq_len: seq, pad_id: 0 },
        duration: Duration::Iters(steps),
        eval_every: 0,
        compute: ComputeConfig {
            recompute_every: match args.get(6).map(String::as_str) {
                Some("nockpt") => 0,
                Some(k) => k.parse().unwrap_or(1),
                None => 1,
            },
        },
        ..Default::default()
    };
    let kind = args.get(7).map(String::as_str).unwrap_or("sft");
    // DPO trains chosen and rejected (seq/2 each) as one batch of two; so does sft2.
    let (batch, len) = if kind == "sft" { (1, seq) } else { (2, seq / 2) };
    let model_cfg = model.config()?;
    let weight_bytes = match model.path() {
        Some(p) => sam_trainer::weight_bytes(p, weights)?,
        None => None,
    };
    let shape = StepShape { model: &model_cfg, weights, lora: &cfg.lora, batch, seq: len, weight_bytes };
    let mut available = None;
    if args.get(6).map(String::as_str) == Some("auto") {
        let free = sam_runs::available_memory().ok_or("this OS reports no available memory: pass a setting")?;
        let choice = shape.choose(free);
        cfg.compute.recompute_every = choice.recompute_every;
        available = Some(free);
    }
    let estimate = shape.estimate(cfg.compute.recompute_every);
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let mut random_ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let (mode, train) = match kind {
        "sft" => {
            write_sft(&sft_cache_path(&data, Split::Train), std::slice::from_ref(&ex))?;
            (JobMode::Sft, cfg.clone())
        }
        "sft2" => {
            let half: Vec<TokenizedExample> = (0..2)
                .map(|i| TokenizedExample {
                    id: format!("half{i}"),
                    domain: "bench".into(),
                    input_ids: random_ids(seq / 2),
                    loss_mask: (0..seq / 2).map(|p| p >= seq / 4).collect(),
                })
                .collect();
            write_sft(&sft_cache_path(&data, Split::Train), &half)?;
            (JobMode::Sft, TrainConfig { batch: BatchConfig { batch_size: 2, ..cfg.batch }, ..cfg.clone() })
        }
        "dpo" => {
            let pair = TokenizedPair {
                id: "pair".into(),
                domain: "bench".into(),
                prompt_ids: random_ids(seq / 4),
                chosen_ids: random_ids(seq / 4),
                rejected_ids: random_ids(seq / 4),
            };
            write_preference(&preference_cache_path(&data, Split::Train), std::slice::from_ref(&pair))?;
            (JobMode::Dpo, cfg.clone())
        }
        other => return Err(format!("unknown step kind `{other}` (sft, sft2 or dpo)").into()),
    };
    let mut spec = JobSpec::new(model, &data, mode);
    spec.weights = weights;
    spec.train = train;
    spec.eval_examples = None;
    let job = Job::create(&tmp.path().join("runs"), "bench", spec)?;
    let mut times = Times(Vec::new(), Vec::new(), Vec::new(), cpu_seconds(), t0, None);
    job.run(&mut times, JobControl::default())?;
    let load_s = times.5.unwrap_or(0.0);
    let profiled = times.0.len().saturating_sub(WARM).max(1) as f64;
    let profile: Vec<serde_json::Value> = sam_kernels::profile::take()
        .into_iter()
        .map(|e| {
            eprintln!(
                "{:<22} {:>6.1} calls {:>8.3} s wall {:>8.3} s cpu per step",
                e.name,
                e.calls as f64 / profiled,
                e.wall_s / profiled,
                e.cpu_s / profiled
            );
            let r = |v: f64| (v / profiled * 1000.0).round() / 1000.0;
            serde_json::json!({"span": e.name, "calls": e.calls as f64 / profiled, "wall_s": r(e.wall_s), "cpu_s": r(e.cpu_s)})
        })
        .collect();
    let warm: Vec<f64> = if times.0.len() > 3 { times.0[2..].to_vec() } else { times.0.clone() };
    let mut sorted = warm.clone();
    sorted.sort_by(f64::total_cmp);
    let step_s = sorted[sorted.len() / 2];
    let mut cpu: Vec<f64> = if times.2.len() > 3 { times.2[2..].to_vec() } else { times.2.clone() };
    cpu.sort_by(f64::total_cmp);
    let cpu_s = cpu.get(cpu.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "peer": "sam",
            "threads": candle_core::utils::get_num_threads(),
            "kind": kind, "seq": seq, "rank": rank, "dtype": dtype,
            "recompute_every": cfg.compute.recompute_every,
            "lora_layers": format!("{:?}", cfg.lora.layers),
            "load_s": (load_s * 100.0).round() / 100.0,
            "median_step_s": (step_s * 1000.0).round() / 1000.0,
            "median_step_cpu_s": (cpu_s * 100.0).round() / 100.0,
            "tokens_per_s": ((seq as f64 / step_s) * 10.0).round() / 10.0,
            "peak_rss_mb": peak_rss_mb(),
            "estimated_peak_mb": estimate.total() >> 20,
            "estimate": estimate,
            "available_mb": available.map(|a| a >> 20),
            "losses": times.1.iter().map(|l| (l * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            "profile": profile,
        })
    );
    Ok(())
}
