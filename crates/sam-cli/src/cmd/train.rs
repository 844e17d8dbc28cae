//! Training commands: `sam train` (LoRA SFT), `sam generate`, `sam eval`
//! and `sam fuse`, all calling into sam-trainer.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sam_models::BaseModel;
use sam_prep::cache::{PreparedData, Split};
use sam_trainer::{
    AdapterFormat, BatchConfig, ComputeConfig, DType, DpoConfig, DpoLoss, Duration, EvalConfig, EvalMetrics,
    GenerateConfig, Job, JobControl, JobMode, JobOutcome, JobSpec, Layers, LoadOptions, LoraConfig, Observer,
    OptimConfig, OutputConfig, PreferenceMetrics, Reference, StepMetrics, StepShape, Target, TrainConfig,
};

use sam_store::RunState;

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Train a LoRA adapter (SFT, DPO, or SFT then DPO) on a prepared dataset
    Train(Box<TrainArgs>),
    /// Generate a reply to a prompt with a base model and optional adapter
    Generate(GenerateArgs),
    /// Loss and perplexity of the base model and an adapter on a split
    Eval(EvalArgs),
    /// Merge an adapter into the base weights and write a Hugging Face folder
    Fuse(FuseArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Format {
    /// Hugging Face PEFT (adapter_model.safetensors)
    Peft,
    /// mlx-lm (adapters.safetensors)
    Mlx,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Supervised fine-tuning on the chat/instruction examples
    Sft,
    /// Direct preference optimisation on the preference pairs
    Dpo,
    /// SFT, then DPO starting from (and measured against) the SFT adapter
    #[value(name = "sft+dpo")]
    SftDpo,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DpoLossArg {
    /// -log σ(β·h), the DPO paper's loss
    Sigmoid,
    /// (h - 1/(2β))²
    Ipo,
    /// max(0, 1 - β·h)
    Hinge,
}

/// How the frozen base weights are held in memory.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// Quantized bases stay quantized (a GGUF's Q4_0, Q4_1, Q8_0, Q4_K,
    /// Q5_K or Q6_K blocks, an mlx folder's 2–8-bit groups), read a tile at
    /// a time per product; dense ones in 32-bit floats
    Auto,
    /// 32-bit floats (quantized weights widened on load: 4 bytes per weight)
    F32,
    /// bfloat16 (quantized weights widened on load: 2 bytes per weight)
    Bf16,
}

/// What `--weights` explains in `--help`.
const WEIGHTS_HELP: &str = "How the frozen base weights are held in memory. `auto` (the default) keeps a \
quantized base quantized as stored (a GGUF's Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K blocks, an mlx-lm quantized \
folder's 2-8-bit groups) and dequantizes a bounded tile of rows per product: 4-bit weights with their \
scales take about a seventh of f32's bytes. A dense base is held in f32. `f32` and `bf16` widen every \
matrix on load (more memory; the same values in f32, rounded once more in bf16). LoRA weights, gradients \
and optimiser state are f32 either way; an adapter trained on an mlx 4-bit folder is what mlx-lm loads \
on top of that same folder.";

impl WeightType {
    fn trainer(self) -> sam_trainer::WeightType {
        match self {
            WeightType::Auto => sam_trainer::WeightType::Auto,
            WeightType::F32 => sam_trainer::WeightType::F32,
            WeightType::Bf16 => sam_trainer::WeightType::Bf16,
        }
    }
}

/// Storage type of the weights `sam fuse` writes.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum WrittenWeights {
    /// 32-bit floats
    F32,
    /// bfloat16 (half the size)
    Bf16,
}

/// Trains in a run folder (SAM_HOME/runs/<id>/: config.json, status.json,
/// metrics.jsonl, events.jsonl, checkpoints/, adapter/, eval.json, loss.svg).
/// Ctrl-C (or SIGTERM, or `sam runs stop`) stops after the current step with
/// a checkpoint; `sam runs resume ID` (or `sam train --resume ID`) continues
/// exactly where it stopped, also after a crash.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Prepared dataset folder (from `sam prep`)
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Base model: a Hugging Face or mlx-lm folder (quantized mlx folders
    /// too) or a .gguf file (quantized ones too)
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Continue this run (an id under SAM_HOME/runs, or a run folder) from
    /// its last checkpoint, with the settings it was started with
    #[arg(long, value_name = "RUN", conflicts_with_all = ["data", "model", "out"])]
    resume: Option<String>,
    /// Run folder [default: SAM_HOME/runs/<new id>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// LoRA rank
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha [default: 2 × rank]
    #[arg(long)]
    alpha: Option<f64>,
    /// Dropout on the adapters' input
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Adapted modules, comma-separated: q,k,v,o,gate,up,down
    #[arg(long, default_value = "q,v", value_delimiter = ',')]
    targets: Vec<String>,
    /// Adapt the last N layers only [default: all]
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Scale by alpha/sqrt(rank) (rsLoRA)
    #[arg(long)]
    rslora: bool,
    /// Peak learning rate
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Warmup steps [default: 5% of the run]
    #[arg(long)]
    warmup: Option<usize>,
    /// AdamW weight decay
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Optimiser steps (ignored with --epochs)
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Passes over the training split instead of --iters
    #[arg(long)]
    epochs: Option<usize>,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Micro-batches per optimiser step
    #[arg(long, default_value_t = 4)]
    grad_accum: usize,
    /// Longer examples are cut to this many tokens
    #[arg(long, default_value_t = 1024)]
    max_seq_len: usize,
    /// Validate every N steps
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Stop after N validations without improvement
    #[arg(long)]
    patience: Option<usize>,
    /// Write a checkpoint (adapter, optimizer state, data position) every N
    /// steps under checkpoints/ (0: only when stopped)
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    /// Periodic checkpoints to keep besides the best one (0: all)
    #[arg(long, default_value_t = 2, value_name = "K")]
    keep_checkpoints: usize,
    /// Validate on at most N validation examples [default: all]
    #[arg(long, value_name = "N")]
    max_valid: Option<usize>,
    /// Pause between steps while available memory is below this (GB)
    #[arg(long, default_value_t = 0.3, value_name = "GB")]
    pause_below_gb: f64,
    /// Resume a paused run once this much memory is available (GB)
    #[arg(long, default_value_t = 0.5, value_name = "GB")]
    resume_above_gb: f64,
    /// Seed for initialisation, shuffling and dropout
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Adapter layout
    #[arg(long, value_enum, default_value_t = Format::Peft)]
    format: Format,
    /// How the frozen base weights are held: auto (a quantized base stays
    /// quantized), f32 or bf16
    #[arg(long, value_enum, default_value_t = WeightType::Auto, long_help = WEIGHTS_HELP)]
    weights: WeightType,
    /// Recompute every N-th adapted layer in the backward pass instead of
    /// keeping its activations (0: keep all, fastest; 1: least memory, about
    /// a third more compute; 2: in between — the test model in f32 at 512 tokens
    /// peaks at 1.33 GB, 0.72 GB and 1.03 GB) [default: the fastest setting
    /// whose estimated peak fits the memory available, with a margin;
    /// printed before training starts]
    #[arg(long, value_name = "N")]
    recompute_every: Option<usize>,
    /// Deprecated name of --recompute-every (gradient recomputation is not
    /// a checkpoint: checkpoints are the resume points --save-every writes)
    #[arg(long, value_name = "N", hide = true)]
    checkpoint_every: Option<usize>,
    /// Training method
    #[arg(long, value_enum, default_value_t = TrainMode::Sft)]
    mode: TrainMode,
    /// DPO: strength of the pull towards the reference policy (β)
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// DPO: loss variant
    #[arg(long, value_enum, default_value_t = DpoLossArg::Sigmoid)]
    dpo_loss: DpoLossArg,
    /// DPO: label smoothing (conservative DPO), in [0, 0.5)
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// DPO phase: peak learning rate [default: --lr]
    #[arg(long)]
    dpo_lr: Option<f64>,
    /// DPO phase: optimiser steps [default: --iters or --epochs]
    #[arg(long, value_name = "N")]
    dpo_iters: Option<usize>,
    /// Start from this adapter (e.g. the production one); with --mode dpo it
    /// is also the reference policy [default: a fresh adapter, the base model
    /// as reference]
    #[arg(long, value_name = "DIR")]
    from_adapter: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Base model: a Hugging Face or mlx-lm folder (quantized mlx folders
    /// too) or a .gguf file (quantized ones too)
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Adapter folder (PEFT or mlx-lm layout)
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// System prompt
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy)
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Penalty on repeated tokens (1: off)
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Sampling seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the frozen base weights are held: auto (a quantized base stays
    /// quantized), f32 or bf16
    #[arg(long, value_enum, default_value_t = WeightType::Auto, long_help = WEIGHTS_HELP)]
    weights: WeightType,
    /// The user's message
    prompt: String,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Base model: a Hugging Face or mlx-lm folder (quantized mlx folders
    /// too) or a .gguf file (quantized ones too)
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Prepared dataset folder
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Adapter folder to compare with the base
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Split to score: test or valid
    #[arg(long, default_value = "test")]
    split: String,
    /// Longer examples are cut to this many tokens
    #[arg(long, default_value_t = 1024)]
    max_seq_len: usize,
    /// Write the report here as JSON
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// How the frozen base weights are held: auto (a quantized base stays
    /// quantized), f32 or bf16
    #[arg(long, value_enum, default_value_t = WeightType::Auto, long_help = WEIGHTS_HELP)]
    weights: WeightType,
}

#[derive(Args, Debug)]
pub struct FuseArgs {
    /// Base model: a Hugging Face or mlx-lm folder (quantized mlx folders
    /// too) or a .gguf file (quantized ones too)
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Adapter folder (PEFT or mlx-lm layout)
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// Output folder (config.json + model.safetensors)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Storage type of the written weights
    #[arg(long, value_enum, default_value_t = WrittenWeights::F32)]
    weights: WrittenWeights,
}

pub fn run(cmd: TrainCommand, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Train(a) => train(*a, ctx),
        TrainCommand::Generate(a) => generate(a),
        TrainCommand::Eval(a) => eval(a, ctx),
        TrainCommand::Fuse(a) => fuse(a),
    }
}

fn load(path: &Path, opts: &LoadOptions) -> anyhow::Result<sam_trainer::Decoder> {
    sam_trainer::load_model(path, opts).with_context(|| format!("loading the model at {}", path.display()))
}

fn pad_id(model: &BaseModel) -> u32 {
    model.special_tokens().pad_id()
}

/// Draws the progress bar of a training job (the job itself writes the run
/// folder's metrics and events).
pub(crate) struct Progress {
    bar: ProgressBar,
    last_eval: Option<f64>,
    phase: &'static str,
    eta: sam_runs::Eta,
    quiet: bool,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> anyhow::Result<Self> {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
        bar.set_style(ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {prefix} {bar:30} {pos}/{len} steps · {msg}",
        )?);
        Ok(Self { bar, last_eval: None, phase: "sft", eta: sam_runs::Eta::new(20), quiet })
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn println(&self, line: String) {
        if !self.quiet {
            self.bar.println(line);
        }
    }
}

impl Observer for Progress {
    fn on_phase(&mut self, phase: &'static str) {
        self.phase = phase;
    }
    fn on_start(&mut self, total: usize, examples: usize) {
        self.bar.set_prefix(self.phase);
        self.bar.set_length(total as u64);
        self.bar.set_position(0);
        self.bar.set_message(format!("{examples} examples"));
        self.last_eval = None;
        self.eta.reset();
    }
    fn on_resumed(&mut self, step: usize) {
        self.bar.set_position(step as u64);
        self.println(format!("{} phase: continuing from the checkpoint at step {step}", self.phase));
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.bar.set_position(m.step as u64);
        self.eta.record(std::time::Duration::from_secs_f64(m.step_s.max(0.0)));
        let eta = self
            .eta
            .remaining((m.total_steps - m.step) as u64)
            .map(|d| format!(" · ETA {}", sam_runs::format_duration(d)))
            .unwrap_or_default();
        let val = self.last_eval.map(|v| format!(" val {v:.3}")).unwrap_or_default();
        self.bar.set_message(format!("loss {:.3}{val} · {:.0} tok/s{eta}", m.loss, m.tokens_per_s));
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        self.last_eval = Some(m.loss);
        // A DPO loss has no perplexity.
        let ppl = if self.phase == "dpo" { String::new() } else { format!(" (ppl {:.2})", m.perplexity) };
        self.println(format!(
            "step {:>5}: {} validation loss {:.4}{ppl}{}",
            m.step,
            self.phase,
            m.loss,
            if m.best { " best" } else { "" }
        ));
    }
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        if m.split == "valid" {
            let s = &m.stats;
            self.println(format!(
                "step {:>5}: validation reward margin {:+.4} · accuracy {:.3} · chosen {:+.4} · rejected {:+.4}",
                m.step, s.margin, s.accuracy, s.reward_chosen, s.reward_rejected
            ));
        }
    }
    fn on_memory(&mut self, e: &sam_runs::GuardEvent) {
        match e {
            sam_runs::GuardEvent::Paused(b) => {
                self.println(format!("paused: only {:.2} GB of memory available", *b as f64 / 1e9))
            }
            sam_runs::GuardEvent::Resumed(b) => {
                self.println(format!("resumed: {:.2} GB of memory available", *b as f64 / 1e9))
            }
        }
    }
}

/// A flag set by the first SIGINT/SIGTERM (the job stops after its step,
/// with a checkpoint); a second one exits at once.
pub(crate) fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (sig, code) in [(SIGINT, 130), (SIGTERM, 143)] {
        signal_hook::flag::register_conditional_shutdown(sig, code, std::sync::Arc::clone(&flag))?;
        signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Runs (or continues) a job with a progress bar and signal handling, then
/// prints its summary.
pub(crate) fn run_job(job: &Job, ctx: &Ctx) -> anyhow::Result<()> {
    run_job_with(job, ctx, None)
}

/// [`run_job`], with the recomputation decision in `--json`'s output.
fn run_job_with(job: &Job, ctx: &Ctx, recompute: Option<&Recompute>) -> anyhow::Result<()> {
    // A run that may not start (completed, or trained by another process)
    // is refused before anything is recorded: the store keeps what it has.
    job.check_runnable()?;
    let flag = stop_on_signals()?;
    let mut progress = Progress::new(ctx.json)?;
    if !ctx.json {
        let spec = job.spec();
        eprintln!(
            "run {} ({}) in {}; Ctrl-C stops after the current step with a checkpoint",
            job.run_dir().id(),
            spec.mode.as_str(),
            job.run_dir().path().display()
        );
    }
    record_in_store(job, ctx, RunState::Running, None);
    let res = job.run(&mut progress, JobControl { stop: Some(&flag), probe: None });
    progress.finish();
    match &res {
        Ok(o) if o.status == sam_runs::RunStatus::Stopped => record_in_store(job, ctx, RunState::Stopped, Some(o)),
        Ok(o) => record_in_store(job, ctx, RunState::Trained, Some(o)),
        Err(_) => record_in_store(job, ctx, RunState::Failed, None),
    }
    let outcome = res.with_context(|| {
        format!("run {} failed (see {})", job.run_dir().id(), job.run_dir().events_path().display())
    })?;
    print_outcome(&outcome, ctx, recompute)
}

/// Records the run in the store's training runs (with the hash of the
/// dataset's manifest, so it is known what was trained on), when SAM_HOME
/// has a store. A store that cannot be written is reported, not fatal.
fn record_in_store(job: &Job, ctx: &Ctx, state: RunState, outcome: Option<&JobOutcome>) {
    use sam_store::prelude::*;
    let path = ctx.home.store_db();
    if !path.is_file() {
        return;
    }
    let spec = job.spec();
    let res = (|| -> anyhow::Result<()> {
        let manifest = sam_prep::prepare::read_manifest(&spec.data)?;
        let mut store = sam_store::SqliteStore::open(&path)?;
        store.record_run(sam_store::RunUpdate {
            dataset_path: Some(spec.data.clone()),
            manifest_hash: Some(manifest.hash),
            adapter_path: outcome.map(|o| o.adapter_dir.clone()),
            metrics: outcome.map(|o| serde_json::to_value(o).unwrap_or_default()),
            ..sam_store::RunUpdate::new(job.run_dir().id(), state)
        })?;
        Ok(())
    })();
    if let Err(e) = res {
        tracing::warn!("could not record run {} in {}: {e:#}", job.run_dir().id(), path.display());
    }
}

fn print_outcome(o: &JobOutcome, ctx: &Ctx, recompute: Option<&Recompute>) -> anyhow::Result<()> {
    if ctx.json {
        let mut v = serde_json::to_value(o)?;
        if let (Some(r), Some(obj)) = (recompute, v.as_object_mut()) {
            obj.insert("recompute".into(), serde_json::to_value(r)?);
        }
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("run folder: {}", o.run_dir.display());
    if let Some((phase, step)) = &o.resumed_from {
        println!("continued from the {phase} checkpoint at step {step}");
    }
    for (name, out) in [("sft", &o.sft), ("dpo", &o.dpo)] {
        let Some(out) = out else { continue };
        println!(
            "{name}: {} steps · final train loss {:.4} · {:.0} tok/s",
            out.steps, out.final_train_loss, out.tokens_per_s
        );
        if let (Some(i), Some(b)) = (out.initial_val_loss, out.best_val_loss) {
            println!("{name} validation loss: {i:.4} → {b:.4} (best at step {})", out.best_step.unwrap_or(0));
        }
    }
    if o.status == sam_runs::RunStatus::Stopped {
        println!("stopped with a checkpoint: continue with `sam runs resume {}`", o.id);
        return Ok(());
    }
    if let Some(r) = &o.eval {
        let score = |s: Option<sam_trainer::Score>| s.map(|s| format!("{:.4} (ppl {:.2})", s.loss, s.perplexity));
        let ad = score(r.adapter).map(|s| format!(" · adapter {s}")).unwrap_or_default();
        println!("test: base {}{ad}", score(r.base).unwrap_or_else(|| "-".into()));
    }
    println!("adapter: {}", o.adapter_dir.display());
    Ok(())
}

/// The run folder a `--resume`/`sam runs` argument names: a folder, or an
/// id under SAM_HOME/runs.
pub(crate) fn resolve_run(arg: &str, ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.join("status.json").is_file() {
        return Ok(p);
    }
    let under = ctx.home.run_dir(arg);
    if under.join("status.json").is_file() {
        return Ok(under);
    }
    bail!(
        "no run `{arg}`: neither a run folder nor a run id under {} (see `sam runs list`)",
        ctx.home.runs_dir().display()
    )
}

fn train(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if let Some(r) = &a.resume {
        return crate::cmd::runs::resume(&resolve_run(r, ctx)?, ctx);
    }
    let (Some(data_dir), Some(model_path)) = (&a.data, &a.model) else {
        bail!("--data and --model are needed to start a run (or --resume RUN to continue one)");
    };
    let targets = a.targets.iter().map(|t| Target::parse(t)).collect::<Result<Vec<_>, _>>()?;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => ctx.home.run_dir(&sam_runs::new_run_id()),
    };
    // Fail early on a folder that is not a prepared dataset, or an unreadable model.
    let data = PreparedData::open(data_dir)?;
    let info = BaseModel::open(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let flag = match (a.recompute_every, a.checkpoint_every) {
        (Some(n), _) => Some(n),
        (None, Some(n)) => {
            tracing::warn!("--checkpoint-every is deprecated: it is now --recompute-every");
            Some(n)
        }
        (None, None) => None,
    };
    let mut train = TrainConfig {
        lora: LoraConfig {
            rank: a.rank,
            alpha: a.alpha.unwrap_or(2.0 * a.rank as f64),
            dropout: a.dropout,
            targets,
            layers: a.layers.map(Layers::Last).unwrap_or(Layers::All),
            rslora: a.rslora,
        },
        optim: OptimConfig { lr: a.lr, warmup_steps: a.warmup, weight_decay: a.weight_decay, ..OptimConfig::default() },
        batch: BatchConfig {
            batch_size: a.batch,
            grad_accum: a.grad_accum,
            max_seq_len: a.max_seq_len,
            pad_id: pad_id(&info),
        },
        duration: a.epochs.map(Duration::Epochs).unwrap_or(Duration::Iters(a.iters)),
        eval_every: a.eval_every,
        patience: a.patience,
        seed: a.seed,
        output: OutputConfig {
            save_every: a.save_every,
            adapter_format: match a.format {
                Format::Peft => AdapterFormat::Peft,
                Format::Mlx => AdapterFormat::Mlx,
            },
            base_model: Some(model_path.display().to_string()),
        },
        compute: ComputeConfig::default(),
    };
    let dpo = DpoConfig {
        beta: a.beta,
        loss: match a.dpo_loss {
            DpoLossArg::Sigmoid => DpoLoss::Sigmoid,
            DpoLossArg::Ipo => DpoLoss::Ipo,
            DpoLossArg::Hinge => DpoLoss::Hinge,
        },
        label_smoothing: a.label_smoothing,
        reference: Reference::Base,
    };
    if a.from_adapter.is_some() && a.mode != TrainMode::Dpo {
        bail!("--from-adapter works with --mode dpo only");
    }
    let mode = match a.mode {
        TrainMode::Sft => JobMode::Sft,
        TrainMode::Dpo => JobMode::Dpo,
        TrainMode::SftDpo => JobMode::SftDpo,
    };
    if mode != JobMode::Sft {
        dpo.validate()?;
        if data.preference(Split::Train)?.is_empty() {
            bail!(
                "{} has no preference pairs: DPO needs prompt/chosen/rejected rows (see `sam prep`)",
                data_dir.display()
            );
        }
    }
    // The step's shape: the longest training sequence (cut to
    // --max-seq-len) in batches of --batch; DPO trains chosen and rejected
    // together, so twice the batch.
    let model_cfg = sam_trainer::read_config(model_path)?;
    let mut shapes = Vec::new();
    if mode != JobMode::Dpo {
        let longest = data.sft(Split::Train)?.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        shapes.push((a.batch, longest.min(a.max_seq_len)));
    }
    if mode != JobMode::Sft {
        let pair = |p: &sam_trainer::TokenizedPair| p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len());
        let longest = data.preference(Split::Train)?.iter().map(pair).max().unwrap_or(0);
        shapes.push((2 * a.batch, longest.min(a.max_seq_len)));
    }
    let source = if flag.is_some() { RecomputeSource::Flag } else { RecomputeSource::Auto };
    let weights = (a.weights.trainer(), sam_trainer::weight_bytes(model_path, a.weights.trainer())?);
    let recompute = decide_recompute(&model_cfg, weights, &train.lora, &shapes, flag, source);
    train.compute.recompute_every = recompute.recompute_every;
    if !ctx.json {
        eprintln!("{}", recompute.sentence("--recompute-every N"));
    }
    let spec = JobSpec {
        model: model_path.into(),
        data: data_dir.clone(),
        weights: a.weights.trainer(),
        mode,
        train,
        dpo,
        dpo_lr: a.dpo_lr,
        dpo_duration: a.dpo_iters.map(Duration::Iters),
        from_adapter: a.from_adapter.clone(),
        max_valid_examples: a.max_valid,
        eval_examples: Some(usize::MAX),
        keep_checkpoints: a.keep_checkpoints,
        memory: sam_runs::MemoryGuardConfig {
            pause_below: (a.pause_below_gb * 1e9) as u64,
            resume_above: (a.resume_above_gb * 1e9) as u64,
            ..Default::default()
        },
    };
    let job = Job::create_at(&out, spec).with_context(|| format!("creating the run folder {}", out.display()))?;
    run_job_with(&job, ctx, Some(&recompute))
}

/// Where the recomputation setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecomputeSource {
    /// Chosen from the memory available and the estimate.
    Auto,
    /// `--recompute-every` (or its old name).
    Flag,
    /// `[train] recompute_every` (or `checkpoint_every`) in sam.toml.
    Config,
}

/// How much a run recomputes, and why: the setting, its estimated peak and
/// the memory available (`--json` carries it as `recompute`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Recompute {
    pub(crate) recompute_every: usize,
    pub(crate) source: RecomputeSource,
    /// Bytes the machine had available (absent where the OS does not say).
    pub(crate) available_bytes: Option<u64>,
    /// Whether the estimate fits that with the margin.
    pub(crate) fits: Option<bool>,
    /// The estimated peak of a training step with this setting, by part.
    pub(crate) estimate: sam_trainer::MemoryEstimate,
    /// The estimate with every activation kept (the fastest setting).
    pub(crate) kept_bytes: u64,
    /// The step shape estimated: sequences per micro-batch, tokens each.
    pub(crate) batch: usize,
    pub(crate) seq: usize,
}

/// Settles the recomputation setting for frozen weights held as `weights`
/// (with their size in bytes where read from the file, [`sam_trainer::weight_bytes`]):
/// `fixed` when given (from `source`),
/// else the fastest that fits the memory available for the largest of
/// `shapes` (`(batch, seq)` of each phase's micro-batch), else — where the
/// OS gives no memory figures — the trainer's default.
pub(crate) fn decide_recompute(
    model: &sam_trainer::ModelConfig,
    (weights, weight_bytes): (sam_trainer::WeightType, Option<u64>),
    lora: &LoraConfig,
    shapes: &[(usize, usize)],
    fixed: Option<usize>,
    source: RecomputeSource,
) -> Recompute {
    let shape_of = |&(batch, seq): &(usize, usize)| StepShape { model, weights, lora, batch, seq, weight_bytes };
    let shape = shapes.iter().map(shape_of).max_by_key(|s| s.estimate(0).total()).unwrap_or_else(|| shape_of(&(1, 1)));
    let available = sam_runs::available_memory();
    let (every, source) = match (fixed, available) {
        (Some(n), _) => (n, source),
        (None, Some(free)) => (shape.choose(free).recompute_every, RecomputeSource::Auto),
        (None, None) => (ComputeConfig::default().recompute_every, RecomputeSource::Auto),
    };
    let estimate = shape.estimate(every);
    Recompute {
        recompute_every: every,
        source,
        available_bytes: available,
        fits: available.map(|free| sam_trainer::fits(estimate.total(), free)),
        estimate,
        kept_bytes: shape.estimate(0).total(),
        batch: shape.batch,
        seq: shape.seq,
    }
}

impl Recompute {
    /// One line for the terminal: the setting, its estimate and why;
    /// `overrides` names what sets it instead of the automatic choice.
    pub(crate) fn sentence(&self, overrides: &str) -> String {
        let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
        let e = &self.estimate;
        let what = match self.recompute_every {
            0 => "keeping activations".to_string(),
            n => format!(
                "recomputing {} ({} of {})",
                every_nth(n),
                e.layers_recomputed,
                e.layers_kept + e.layers_recomputed
            ),
        };
        let free = match self.available_bytes {
            Some(free) => format!("est. peak {} of {} available", gb(e.total()), gb(free)),
            None => format!("est. peak {} (this OS does not report available memory)", gb(e.total())),
        };
        let kept = if self.recompute_every > 0 && self.source == RecomputeSource::Auto {
            format!("; keeping every activation would need {}", gb(self.kept_bytes))
        } else {
            String::new()
        };
        let why = match self.source {
            RecomputeSource::Auto => format!("chosen from the memory available; {overrides} overrides"),
            RecomputeSource::Flag => "--recompute-every".into(),
            RecomputeSource::Config => "[train] recompute_every in sam.toml".into(),
        };
        let warn = if self.fits == Some(false) {
            " — more than fits: expect the memory guard to pause the run or the OS to swap; \
             try --weights bf16, a shorter --max-seq-len, a smaller --batch or --layers N"
        } else {
            ""
        };
        format!("{what}: {free} for batches of {} × {} tokens{kept} ({why}){warn}", self.batch, self.seq)
    }
}

/// "every layer", "every 2nd layer", "every 3rd layer", …
fn every_nth(n: usize) -> String {
    if n == 1 {
        return "every layer".into();
    }
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("every {n}{suffix} layer")
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let info = BaseModel::open(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let Some(tok) = info.tokenizer() else { bail!("{} has no tokenizer", a.model.display()) };
    let (template, _) = sam_prep::template::ChatTemplate::for_model(&info)?;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(sam_schema::Message::system(s.as_str()));
    }
    messages.push(sam_schema::Message::user(a.prompt.as_str()));
    let text = template.render(&messages, true)?;
    let enc = tok.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("tokenising: {e}"))?;
    let prompt: Vec<u32> = enc.get_ids().to_vec();
    let mut model = load(&a.model, &a.weights.trainer().load_options())?;
    if let Some(dir) = &a.adapter {
        sam_trainer::load_adapter(&mut model, dir).with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    let mut stop = info.special_tokens().stop_ids.clone();
    stop.extend(model.config().eos_token_ids.iter().copied());
    let cfg = GenerateConfig {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop_tokens: stop,
        adapter: true,
    };
    let mut out_ids = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    sam_trainer::generate(&model, &prompt, &cfg, |id| {
        out_ids.push(id);
        if let Ok(s) = tok.decode(&out_ids, true)
            && s.len() > printed
            && s.is_char_boundary(printed)
        {
            let _ = write!(stdout, "{}", &s[printed..]);
            let _ = stdout.flush();
            printed = s.len();
        }
        true
    })?;
    println!();
    Ok(())
}

fn eval(a: EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "valid" => Split::Valid,
        "train" => Split::Train,
        s => bail!("unknown split `{s}` (test, valid or train)"),
    };
    let data = PreparedData::open(&a.data)?;
    let info = BaseModel::open(&a.model)?;
    let mut model = load(&a.model, &a.weights.trainer().load_options())?;
    if let Some(dir) = &a.adapter {
        sam_trainer::load_adapter(&mut model, dir)?;
    }
    let examples = data.sft(split)?;
    let cfg =
        EvalConfig { split: a.split.clone(), max_seq_len: a.max_seq_len, pad_id: pad_id(&info), ..Default::default() };
    let r = sam_trainer::evaluate(&model, &examples, &cfg)?;
    if let Some(p) = &a.out {
        r.write(p)?;
    }
    if ctx.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{} split: {} examples, {} tokens", r.split, r.examples, r.tokens);
        if let Some(s) = r.base {
            println!("base:    loss {:.4} · ppl {:.2}", s.loss, s.perplexity);
        }
        if let Some(s) = r.adapter {
            println!(
                "adapter: loss {:.4} · ppl {:.2} ({:+.1}%)",
                s.loss,
                s.perplexity,
                100.0 * r.loss_delta().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn fuse(a: FuseArgs) -> anyhow::Result<()> {
    // The merged weights are dense: a quantized base is widened on load.
    let dtype = match a.weights {
        WrittenWeights::F32 => DType::F32,
        WrittenWeights::Bf16 => DType::BF16,
    };
    let mut model = load(&a.model, &LoadOptions { dtype, keep_quantized: false, ..Default::default() })?;
    sam_trainer::load_adapter(&mut model, &a.adapter)?;
    model.merge_lora()?;
    sam_trainer::save_hf_model(&model, &a.out)?;
    // Carry the tokenizer and chat template over, so the folder is a
    // complete base model (a GGUF's are rebuilt from its metadata).
    let info = BaseModel::open(&a.model)?;
    if let Some(tok) = info.tokenizer() {
        tok.save(a.out.join("tokenizer.json"), false).map_err(|e| anyhow::anyhow!("writing tokenizer.json: {e}"))?;
    }
    let sp = info.special_tokens();
    let text = |t: &Option<sam_models::SpecialToken>| t.as_ref().map(|t| t.text.clone());
    let tc = serde_json::json!({
        "chat_template": info.chat_template(),
        "bos_token": text(&sp.bos),
        "eos_token": text(&sp.eos),
        "pad_token": text(&sp.pad),
        "unk_token": text(&sp.unk),
        "add_bos_token": sp.add_bos,
    });
    std::fs::write(a.out.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)? + "\n")?;
    println!("fused model written to {}", a.out.display());
    Ok(())
}
