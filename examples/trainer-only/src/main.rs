//! Using sam-trainer alone on a prepared dataset folder (what `sam prep` or
//! `sam_prep::prepare::Preparer` writes): load the base model, train a LoRA
//! adapter for a few steps, save it in the PEFT layout, and compare base and
//! adapter on the held-out split.
//!
//! ```text
//! cargo run -p example-trainer-only [-- DATASET_DIR [MODEL]]
//! ```
//!
//! Without a dataset folder, it prepares a tiny one first (with sam-prep), so
//! that it runs on its own.

use std::path::PathBuf;

use sam_prep::cache::{PreparedData, Split};
use sam_trainer::{
    BatchConfig, ComputeConfig, Duration, EvalConfig, Job, JobControl, JobMode, JobSpec, OptimConfig, TrainConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let data_dir: Option<PathBuf> = args.next().map(Into::into);
    let model_path: PathBuf = match args.next() {
        Some(p) => p.into(),
        None => sam_models::require_test_model()?,
    };
    let tmp = tempfile::tempdir()?;
    let data_dir = match data_dir {
        Some(d) => d,
        None => tiny_dataset(&model_path, &tmp.path().join("dataset"))?,
    };
    let data = PreparedData::open(&data_dir)?;
    let info = sam_models::BaseModel::open(&model_path)?;
    let pad_id = info.special_tokens().pad_id();

    // One training job in its own run folder (resumable: run it again after
    // a stop and it continues where it was).
    let mut spec = JobSpec::new(model_path.as_path(), &data_dir, JobMode::Sft);
    spec.train = TrainConfig {
        optim: OptimConfig { lr: 1e-3, ..OptimConfig::default() },
        batch: BatchConfig { max_seq_len: 128, grad_accum: 2, pad_id, ..BatchConfig::default() },
        duration: Duration::Iters(3),
        eval_every: 0,
        compute: ComputeConfig { recompute_every: 0 },
        ..spec.train
    };
    spec.eval_examples = None;
    let job = Job::create(&tmp.path().join("jobs"), "trainer-only", spec)?;
    let outcome = job.run(&mut Steps, JobControl::default())?;
    let sft = outcome.sft.as_ref().expect("an SFT job reports its phase");
    let adapter = &outcome.adapter_dir;
    println!("{} steps at {:.0} tokens/s; adapter in {}", sft.steps, sft.tokens_per_s, adapter.display());
    assert!(adapter.join("adapter_model.safetensors").exists());

    let model = outcome.model.expect("a completed job returns its model");
    let mut held_out = data.sft(Split::Test)?;
    if held_out.is_empty() {
        held_out = data.sft(Split::Train)?;
    }
    let cfg = EvalConfig { split: "held-out".into(), max_seq_len: 128, pad_id, ..EvalConfig::default() };
    let r = sam_trainer::evaluate(&model, &held_out, &cfg)?;
    let (base, a) = (r.base.expect("the base is scored"), r.adapter.expect("the adapter is attached"));
    println!("loss: base {:.4} · adapter {:.4} ({} examples)", base.loss, a.loss, r.examples);
    Ok(())
}

struct Steps;

impl sam_trainer::Observer for Steps {
    fn on_step(&mut self, m: &sam_trainer::StepMetrics) {
        println!("step {}/{}: loss {:.4}", m.step, m.total_steps, m.loss);
    }
}

/// A few rows prepared for the model, so that the example runs on its own.
fn tiny_dataset(model: &std::path::Path, out: &std::path::Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    use sam_prep::prepare::{PrepConfig, Preparer, read_inputs};
    let rows: String = [
        ("How do I undo `git add` for one file?", "`git restore --staged FILE` unstages it and keeps your changes."),
        ("How do I list the files changed in the last commit?", "`git show --name-only --format= HEAD`."),
        (
            "What does `cargo check` do?",
            "It type-checks the crate without producing a binary, which is faster than `cargo build`.",
        ),
        ("How do I see which branch I am on?", "`git branch --show-current` prints the current branch's name."),
        (
            "How do I time a block of Rust code?",
            "Take `std::time::Instant::now()` before and print `start.elapsed()` after.",
        ),
        ("How do I run one test in Rust?", "`cargo test NAME` runs the tests whose names contain NAME."),
    ]
    .iter()
    .map(|(q, a)| {
        format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":{q:?}}},{{\"role\":\"assistant\",\"content\":{a:?}}}]}}\n"
        )
    })
    .collect();
    std::fs::create_dir_all(out)?;
    let input_path = out.with_extension("jsonl");
    std::fs::write(&input_path, rows)?;
    let base = sam_models::BaseModel::open(model)?;
    let cfg = PrepConfig { max_seq_len: 128, split: "50,0,50".parse()?, ..Default::default() };
    Preparer::new(&base, cfg)?.prepare(&read_inputs(&[input_path])?, |_| {})?.write(out)?;
    Ok(out.to_path_buf())
}
