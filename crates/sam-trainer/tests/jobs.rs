//! Training jobs that survive, on the real test model: a job stopped in its
//! SFT phase and again in its DPO phase and resumed each time logs the same
//! per-step losses as an uninterrupted twin; the memory guard pauses and
//! resumes a job; a diverging job fails and keeps its last good adapter;
//! `loss.svg` is a valid SVG with both curves.

mod common;

use sam_dataset::{Split, TokenizedPair, preference_cache_path, sft_cache_path, write_preference, write_sft};
use sam_runs::{EventKind, MemoryGuardConfig, MemoryProbe, MetricRecord, RunStatus};
use sam_trainer::{
    BatchConfig, ComputeConfig, Duration, Job, JobControl, JobMode, JobSpec, LoraConfig, Observer, OptimConfig,
    OutputConfig, StepMetrics, Target, TrainConfig,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Style pairs: answers leading with "In short:" are preferred.
fn pairs(tok: &sam_models::BaseModel) -> Vec<TokenizedPair> {
    let t = tok.tokenizer().expect("the GGUF has a tokenizer");
    let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
    [
        ("What is the capital of France?", "Paris."),
        ("How many legs does a spider have?", "Eight."),
        ("What color is grass?", "Green."),
        ("What do bees make?", "Honey."),
        ("What is frozen water called?", "Ice."),
        ("What is the opposite of hot?", "Cold."),
        ("What is the capital of Spain?", "Madrid."),
        ("How many hours are in a day?", "24."),
    ]
    .iter()
    .enumerate()
    .map(|(i, (q, a))| TokenizedPair {
        id: format!("p{i}"),
        domain: "style".into(),
        prompt_ids: ids(&format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")),
        chosen_ids: ids(&format!("In short: {a}<|im_end|>")),
        rejected_ids: ids(&format!("{a}<|im_end|>")),
    })
    .collect()
}

/// A prepared dataset folder (the cache files sam-prep writes) from the
/// learning fixture, plus preference pairs when `with_pairs`.
fn dataset(dir: &Path, with_pairs: bool) -> (PathBuf, u32) {
    let fx = common::json("learning.json");
    let train = common::examples(&fx["train"]);
    let valid = common::examples(&fx["valid"]);
    write_sft(&sft_cache_path(dir, Split::Train), &train).unwrap();
    write_sft(&sft_cache_path(dir, Split::Valid), &valid[..4.min(valid.len())]).unwrap();
    write_sft(&sft_cache_path(dir, Split::Test), &valid[..2.min(valid.len())]).unwrap();
    if with_pairs {
        let base = sam_models::BaseModel::open(common::test_model()).unwrap();
        let p = pairs(&base);
        write_preference(&preference_cache_path(dir, Split::Train), &p[..6]).unwrap();
        write_preference(&preference_cache_path(dir, Split::Valid), &p[6..]).unwrap();
    }
    (dir.to_path_buf(), common::ids(&fx["eos_ids"])[1])
}

fn spec(data: &Path, pad: u32, mode: JobMode) -> JobSpec {
    let mut s = JobSpec::new(common::test_model(), data, mode);
    s.train = TrainConfig {
        lora: LoraConfig { rank: 4, alpha: 8.0, targets: vec![Target::Q, Target::V], ..Default::default() },
        optim: OptimConfig { lr: 1e-3, warmup_steps: Some(1), ..Default::default() },
        batch: BatchConfig { batch_size: 2, grad_accum: 2, max_seq_len: 96, pad_id: pad },
        duration: Duration::Iters(4),
        eval_every: 2,
        output: OutputConfig { save_every: 3, ..Default::default() },
        compute: ComputeConfig { recompute_every: 0 },
        seed: 3,
        ..Default::default()
    };
    s.dpo_lr = Some(5e-4);
    s.dpo_duration = Some(Duration::Iters(4));
    s.eval_examples = Some(2);
    s
}

/// Sets the stop flag once a step of `phase` reaches `at`.
struct StopAt<'a> {
    flag: &'a AtomicBool,
    phase_seen: usize,
    phase: usize,
    at: usize,
}

impl Observer for StopAt<'_> {
    fn on_start(&mut self, _total: usize, _n: usize) {
        self.phase_seen += 1;
    }
    fn on_step(&mut self, m: &StepMetrics) {
        if self.phase_seen == self.phase && m.step == self.at {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

fn losses(metrics: &[MetricRecord]) -> Vec<(String, u64, f64)> {
    metrics.iter().filter_map(|m| m.train_loss.map(|l| (m.phase.clone().unwrap_or_default(), m.step, l))).collect()
}

fn val_losses(metrics: &[MetricRecord]) -> Vec<(String, u64, f64)> {
    metrics.iter().filter_map(|m| m.val_loss.map(|l| (m.phase.clone().unwrap_or_default(), m.step, l))).collect()
}

fn assert_same(a: &[(String, u64, f64)], b: &[(String, u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.0, x.1), (&y.0, y.1), "{what}: {a:?} vs {b:?}");
        assert!((x.2 - y.2).abs() <= 1e-4 * x.2.abs().max(1.0), "{what}: {x:?} vs {y:?}");
    }
}

fn adapter_values(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let map = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> =
        map.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_job_stopped_in_each_phase_resumes_to_the_losses_of_an_uninterrupted_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, pad) = dataset(&tmp.path().join("data"), true);
    let runs = tmp.path().join("runs");

    let twin = Job::create(&runs, "twin", spec(&data, pad, JobMode::SftDpo)).unwrap();
    let done = twin.run(&mut sam_trainer::NoopObserver, JobControl::default()).unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.sft.as_ref().unwrap().steps, 4);
    assert_eq!(done.dpo.as_ref().unwrap().steps, 4);
    assert!(done.eval.is_some() && twin.run_dir().eval_path().is_file());
    assert!(
        std::fs::read_dir(data.join("cache")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("dpo-reference-")),
        "the DPO reference log-probs are cached with the dataset"
    );
    let want = twin.run_dir().metrics().unwrap();

    // The same job, stopped after SFT step 2 and again after DPO step 2.
    let job = Job::create(&runs, "stopped", spec(&data, pad, JobMode::SftDpo)).unwrap();
    for (phase, at) in [(1, 2), (2, 2)] {
        let flag = AtomicBool::new(false);
        let mut obs = StopAt { flag: &flag, phase_seen: 0, phase, at };
        let job = Job::open(job.run_dir().path()).unwrap();
        let out = job.run(&mut obs, JobControl { stop: Some(&flag), probe: None }).unwrap();
        assert_eq!(out.status, RunStatus::Stopped, "stop in phase {phase}");
        assert_eq!(job.run_dir().status().unwrap().status, RunStatus::Stopped);
        let ck = job.latest_checkpoint().unwrap().expect("a checkpoint at the stop");
        assert_eq!(ck.state.step, at, "{:?}", ck.dir);
    }
    let job = Job::open(job.run_dir().path()).unwrap();
    let out = job.run(&mut sam_trainer::NoopObserver, JobControl::default()).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    assert_eq!(out.resumed_from, Some(("dpo".into(), 2)));
    let got = job.run_dir().metrics().unwrap();
    assert_same(&losses(&want), &losses(&got), "per-step training losses");
    assert_same(&val_losses(&want), &val_losses(&got), "validation losses");
    let steps: Vec<(String, u64)> = losses(&got).into_iter().map(|(p, s, _)| (p, s)).collect();
    assert_eq!(steps.len(), 8, "every step once: {steps:?}");

    // The final adapters agree too.
    for ((ka, va), (kb, vb)) in adapter_values(&done.adapter_dir).iter().zip(adapter_values(&out.adapter_dir)) {
        assert_eq!(ka, &kb);
        let d = va.iter().zip(&vb).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{ka}: max |Δ| {d}");
    }
    // Both phases' metrics, and the stops and resumes, are in the run folder.
    let events: Vec<EventKind> = job.run_dir().events().unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(events.iter().filter(|k| **k == EventKind::Stopped).count(), 2, "{events:?}");
    assert_eq!(events.iter().filter(|k| **k == EventKind::ResumedFromCheckpoint).count(), 2, "{events:?}");
    assert!(got.iter().any(|m| m.phase.as_deref() == Some("dpo") && m.extra.contains_key("reward_margin")));
    // A completed run is not run again.
    assert!(job.run(&mut sam_trainer::NoopObserver, JobControl::default()).is_err());

    // loss.svg: well-formed SVG with a train and a validation curve.
    let svg = std::fs::read_to_string(job.run_dir().loss_svg_path()).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("loss.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let curves: Vec<(&str, usize)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| (n.attribute("data-name").unwrap_or(""), n.attribute("points").unwrap_or("").split(' ').count()))
        .collect();
    assert!(curves.contains(&("train loss", 8)), "{curves:?}");
    assert!(curves.iter().any(|(n, k)| *n == "validation loss" && *k >= 4), "{curves:?}");
}

/// Available memory from a script: one value per look, the last repeated.
struct Script(Vec<u64>);

impl MemoryProbe for Script {
    fn available_bytes(&mut self) -> u64 {
        if self.0.len() > 1 { self.0.remove(0) } else { self.0[0] }
    }
}

#[test]
fn the_memory_guard_pauses_and_resumes_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, pad) = dataset(&tmp.path().join("data"), false);
    let mut s = spec(&data, pad, JobMode::Sft);
    s.train.duration = Duration::Iters(3);
    s.memory = MemoryGuardConfig { pause_below: 300, resume_above: 500, poll_ms: 1 };
    let job = Job::create(&tmp.path().join("runs"), "guarded", s).unwrap();
    // Plenty before step 1, then low twice and between thresholds once
    // before step 2, then plenty again.
    let probe = Script(vec![1000, 100, 200, 400, 800, 1000]);
    let out = job.run(&mut sam_trainer::NoopObserver, JobControl { stop: None, probe: Some(Box::new(probe)) }).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    assert_eq!(out.sft.unwrap().steps, 3);
    let events = job.run_dir().events().unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    let paused = kinds.iter().position(|k| *k == EventKind::Paused).expect("a pause event");
    let resumed = kinds.iter().position(|k| *k == EventKind::Resumed).expect("a resume event");
    assert!(paused < resumed && kinds.last() == Some(&EventKind::Completed), "{kinds:?}");
    assert_eq!(events[paused].step, 1, "paused after step 1: {events:?}");
    assert_eq!(job.run_dir().status().unwrap().status, RunStatus::Completed);
}

#[test]
fn a_diverging_job_fails_and_keeps_its_last_good_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, pad) = dataset(&tmp.path().join("data"), false);
    let mut s = spec(&data, pad, JobMode::Sft);
    // An absurd schedule: a sane first step (1e-3 at the end of a one-step
    // warmup), then the cosine "decays" towards 1e-3 × 1e33 = 1e30.
    s.train.optim.warmup_steps = Some(1);
    s.train.optim.min_lr_ratio = 1e33;
    s.train.duration = Duration::Iters(6);
    s.train.eval_every = 1;
    s.train.output.save_every = 1;
    let job = Job::create(&tmp.path().join("runs"), "diverging", s).unwrap();
    let err = job.run(&mut sam_trainer::NoopObserver, JobControl::default()).unwrap_err();
    assert!(matches!(err, sam_trainer::Error::Diverged { .. }), "{err}");
    let st = job.run_dir().status().unwrap();
    assert_eq!(st.status, RunStatus::Failed);
    let reason = st.reason.unwrap_or_default();
    assert!(reason.contains("diverged") && (reason.contains("NaN") || reason.contains("inf")), "{reason}");
    assert!(job.run_dir().events().unwrap().iter().any(|e| e.kind == EventKind::Error));

    // The adapter is the one validated after step 1: complete, finite, loadable.
    let adapter = job.run_dir().adapter_dir();
    let values = adapter_values(&adapter);
    assert!(values.iter().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    let step1 = job.run_dir().checkpoints_dir().join("sft-step-1");
    assert_eq!(values, adapter_values(&step1), "adapter/ is step 1's");
    let mut model = sam_trainer::load_model(&common::test_model(), &Default::default()).unwrap();
    sam_trainer::load_adapter(&mut model, &adapter).unwrap();
    // No temporary folders are left behind.
    let stray: Vec<String> = std::fs::read_dir(job.run_dir().path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// Set in the child process of
/// [`the_memory_estimate_matches_the_measured_peak_of_a_short_run`]: the
/// recomputation setting to train with.
const MEMORY_CHILD: &str = "SAM_TRAINER_MEMORY_CHILD";

/// The estimate `sam train` picks its recomputation by, against the peak RSS
/// of real runs: the test model trains a step on one 256-token sequence
/// in a child process of its own (this test binary, this test alone, so no
/// other test's memory counts), with every activation kept and with every
/// layer recomputed, in f32, and kept with its 4-bit weights kept quantized
/// (counted at their stored size). Tolerances: the estimate of each peak within 12% (it
/// was within 4% at 128 and 512 tokens, and within 0.5% on the 1.5B shape,
/// see docs/benchmarks.md), and the activations it says recomputation saves
/// within 25% of what the two runs measure — the part that decides the
/// choice.
#[test]
fn the_memory_estimate_matches_the_measured_peak_of_a_short_run() {
    const SEQ: usize = 256;
    use sam_trainer::WeightType;
    let weight_type = |name: &str| if name == "auto" { WeightType::Auto } else { WeightType::F32 };
    let estimate = |cfg: &TrainConfig, model: &sam_trainer::ModelConfig, weights: WeightType| {
        let weight_bytes = sam_trainer::weight_bytes(&common::test_model(), weights).unwrap();
        let shape = sam_trainer::StepShape { model, weights, lora: &cfg.lora, batch: 1, seq: SEQ, weight_bytes };
        shape.estimate(cfg.compute.recompute_every).total()
    };
    let config = |every: usize| TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, targets: vec![Target::Q, Target::V], ..Default::default() },
        optim: OptimConfig { lr: 1e-4, warmup_steps: Some(0), ..Default::default() },
        batch: BatchConfig { batch_size: 1, grad_accum: 1, max_seq_len: SEQ, pad_id: 0 },
        duration: Duration::Iters(1),
        eval_every: 0,
        compute: ComputeConfig { recompute_every: every },
        ..Default::default()
    };
    if let Some((every, weights)) = std::env::var(MEMORY_CHILD).ok().as_deref().and_then(|v| v.split_once(':')) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let model = sam_trainer::read_config(&common::test_model()).unwrap();
        // A fixed pseudo-random sequence over the vocabulary.
        let mut x = 7u64;
        let ids: Vec<u32> = (0..SEQ)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((x >> 33) % model.vocab_size as u64) as u32
            })
            .collect();
        let ex = sam_dataset::TokenizedExample {
            id: "m".into(),
            domain: "m".into(),
            loss_mask: vec![true; SEQ],
            input_ids: ids,
        };
        write_sft(&sft_cache_path(&data, Split::Train), &[ex]).unwrap();
        let mut spec = JobSpec::new(common::test_model(), &data, JobMode::Sft);
        spec.train = config(every.parse().unwrap());
        spec.weights = weight_type(weights);
        spec.eval_examples = None;
        let job = Job::create(&tmp.path().join("runs"), "m", spec).unwrap();
        let out = job.run(&mut sam_trainer::NoopObserver, JobControl::default()).unwrap();
        assert_eq!(out.sft.map(|o| o.steps), Some(1));
        println!("peak_rss {}", sam_runs::peak_rss());
        return;
    }
    let model = sam_trainer::read_config(&common::test_model()).unwrap();
    // The test model's file is 4-bit: kept quantized, its weights are a fifth of f32's.
    let stored = sam_trainer::weight_bytes(&common::test_model(), WeightType::Auto).unwrap().unwrap();
    let file = std::fs::metadata(common::test_model()).unwrap().len();
    assert!(stored < file * 12 / 10 && stored > file / 2, "{stored} B for a {file} B file");
    assert_eq!(sam_trainer::weight_bytes(&common::test_model(), WeightType::F32).unwrap(), None);
    let mut measured = Vec::new();
    for (every, weights) in [(0usize, "f32"), (1, "f32"), (0, "auto")] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "the_memory_estimate_matches_the_measured_peak_of_a_short_run", "--nocapture"])
            .env(MEMORY_CHILD, format!("{every}:{weights}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let peak: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("peak_rss ").and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no peak in:\n{stdout}"));
        let est = estimate(&config(every), &model, weight_type(weights));
        let err = (est as f64 - peak as f64) / peak as f64;
        assert!(
            err.abs() < 0.12,
            "recompute_every {every}, {weights} weights: estimated {est} B, measured {peak} B ({:+.1}%)",
            100.0 * err
        );
        measured.push((peak, est));
    }
    let (saved_measured, saved_est) =
        (measured[0].0 as f64 - measured[1].0 as f64, measured[0].1 as f64 - measured[1].1 as f64);
    assert!(saved_measured > 0.0, "keeping activations measured no more than recomputing: {measured:?}");
    let err = (saved_est - saved_measured) / saved_measured;
    assert!(err.abs() < 0.25, "recomputation saves {saved_measured} B measured, {saved_est} B estimated: {measured:?}");
}
