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
    AdapterFormat, DType, DpoConfig, DpoLoss, DpoTrainer, Duration, EvalMetrics, GenerateConfig, Layers, LoadOptions,
    LoraConfig, Mode, Observer, PreferenceMetrics, Reference, SftTrainer, StepMetrics, Target, TrainConfig,
    Trainer as _,
};

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Train a LoRA adapter (SFT, DPO, or SFT then DPO) on a prepared dataset
    Train(TrainArgs),
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

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum WeightType {
    /// 32-bit floats (exact, 4 bytes per weight)
    F32,
    /// bfloat16 frozen weights (half the memory)
    Bf16,
}

impl WeightType {
    fn dtype(self) -> DType {
        match self {
            WeightType::F32 => DType::F32,
            WeightType::Bf16 => DType::BF16,
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Prepared dataset folder (from `sam prep`)
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Base model: a Hugging Face folder or a .gguf file
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Run folder [default: SAM_HOME/runs/<unix time>]
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
    /// Also save an adapter every N steps under checkpoints/
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Seed for initialisation, shuffling and dropout
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Adapter layout
    #[arg(long, value_enum, default_value_t = Format::Peft)]
    format: Format,
    /// Storage type of the frozen weights
    #[arg(long, value_enum, default_value_t = WeightType::F32)]
    weights: WeightType,
    /// Recompute every N-th layer in the backward pass to save memory
    /// (0: keep all activations, fastest; 1: least memory)
    #[arg(long, default_value_t = 1, value_name = "N")]
    checkpoint_every: usize,
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
    /// Start from this adapter (e.g. the production one); with --mode dpo it
    /// is also the reference policy [default: a fresh adapter, the base model
    /// as reference]
    #[arg(long, value_name = "DIR")]
    from_adapter: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Base model: a Hugging Face folder or a .gguf file
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
    /// The user's message
    prompt: String,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Base model: a Hugging Face folder or a .gguf file
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
}

#[derive(Args, Debug)]
pub struct FuseArgs {
    /// Base model: a Hugging Face folder or a .gguf file
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Adapter folder (PEFT or mlx-lm layout)
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// Output folder (config.json + model.safetensors)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Storage type of the written weights
    #[arg(long, value_enum, default_value_t = WeightType::F32)]
    weights: WeightType,
}

pub fn run(cmd: TrainCommand, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Train(a) => train(a, ctx),
        TrainCommand::Generate(a) => generate(a),
        TrainCommand::Eval(a) => eval(a, ctx),
        TrainCommand::Fuse(a) => fuse(a),
    }
}

fn load(path: &Path, weights: WeightType) -> anyhow::Result<sam_trainer::Decoder> {
    let opts = LoadOptions { dtype: weights.dtype(), ..Default::default() };
    sam_trainer::load_model(path, &opts).with_context(|| format!("loading the model at {}", path.display()))
}

fn pad_id(model: &BaseModel) -> u32 {
    let sp = model.special_tokens();
    sp.pad.as_ref().or(sp.eos.as_ref()).map(|t| t.id).unwrap_or(0)
}

/// Draws the progress bar and appends every event to metrics.jsonl.
struct Progress {
    bar: ProgressBar,
    metrics: Option<std::fs::File>,
    last_eval: Option<f64>,
    /// `sft` or `dpo`, recorded with every event.
    phase: &'static str,
}

impl Progress {
    fn log(&mut self, kind: &str, v: serde_json::Value) {
        if let Some(f) = &mut self.metrics {
            let mut v = v;
            v["event"] = serde_json::json!(kind);
            v["phase"] = serde_json::json!(self.phase);
            let _ = writeln!(f, "{v}");
        }
    }
}

impl Observer for Progress {
    fn on_start(&mut self, total: usize, examples: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_message(format!("{examples} examples"));
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.bar.set_position(m.step as u64);
        let val = self.last_eval.map(|v| format!(" val {v:.3}")).unwrap_or_default();
        self.bar.set_message(format!("loss {:.3}{val} · {:.0} tok/s", m.loss, m.tokens_per_s));
        self.log("step", serde_json::to_value(m).unwrap_or_default());
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        self.last_eval = Some(m.loss);
        // A DPO loss has no perplexity.
        let ppl = if self.phase == "dpo" { String::new() } else { format!(" (ppl {:.2})", m.perplexity) };
        self.bar.println(format!(
            "step {:>5}: {} validation loss {:.4}{ppl}{}",
            m.step,
            self.phase,
            m.loss,
            if m.best { " best" } else { "" }
        ));
        self.log("eval", serde_json::to_value(m).unwrap_or_default());
    }
    fn on_checkpoint(&mut self, step: usize, dir: &Path) {
        self.log("checkpoint", serde_json::json!({"step": step, "dir": dir}));
    }
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        if m.split == "valid" {
            let s = &m.stats;
            self.bar.println(format!(
                "step {:>5}: validation reward margin {:+.4} · accuracy {:.3} · chosen {:+.4} · rejected {:+.4}",
                m.step, s.margin, s.accuracy, s.reward_chosen, s.reward_rejected
            ));
        }
        self.log("preference", serde_json::to_value(m).unwrap_or_default());
    }
}

fn train(a: TrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let targets = a.targets.iter().map(|t| Target::parse(t)).collect::<Result<Vec<_>, _>>()?;
    let out = match a.out {
        Some(o) => o,
        None => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            ctx.home.join("runs").join(t.to_string())
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let data = PreparedData::open(&a.data)?;
    let info = BaseModel::open(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let cfg = TrainConfig {
        lora: LoraConfig {
            rank: a.rank,
            alpha: a.alpha.unwrap_or(2.0 * a.rank as f64),
            dropout: a.dropout,
            targets,
            layers: a.layers.map(Layers::Last).unwrap_or(Layers::All),
            rslora: a.rslora,
        },
        lr: a.lr,
        warmup_steps: a.warmup,
        weight_decay: a.weight_decay,
        batch_size: a.batch,
        grad_accum: a.grad_accum,
        max_seq_len: a.max_seq_len,
        duration: a.epochs.map(Duration::Epochs).unwrap_or(Duration::Iters(a.iters)),
        eval_every: a.eval_every,
        patience: a.patience,
        seed: a.seed,
        pad_id: pad_id(&info),
        out_dir: Some(out.clone()),
        save_every: a.save_every,
        checkpoint_every: a.checkpoint_every,
        adapter_format: match a.format {
            Format::Peft => AdapterFormat::Peft,
            Format::Mlx => AdapterFormat::Mlx,
        },
        base_model: Some(a.model.display().to_string()),
        ..Default::default()
    };
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)? + "\n")?;
    let dpo = DpoConfig {
        beta: a.beta,
        loss: match a.dpo_loss {
            DpoLossArg::Sigmoid => DpoLoss::Sigmoid,
            DpoLossArg::Ipo => DpoLoss::Ipo,
            DpoLossArg::Hinge => DpoLoss::Hinge,
        },
        label_smoothing: a.label_smoothing,
        // DPO measures against the adapter it starts from, when there is one.
        reference: if a.mode == TrainMode::SftDpo || a.from_adapter.is_some() {
            Reference::Initial
        } else {
            Reference::Base
        },
    };
    if a.from_adapter.is_some() && a.mode != TrainMode::Dpo {
        bail!("--from-adapter works with --mode dpo only");
    }
    if a.mode != TrainMode::Sft {
        dpo.validate()?;
        std::fs::write(out.join("dpo.json"), serde_json::to_string_pretty(&dpo)? + "\n")?;
    }
    let mut model = load(&a.model, a.weights)?;
    if let Some(dir) = &a.from_adapter {
        sam_trainer::load_adapter(&mut model, dir).with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps · ETA {eta} · {msg}",
    )?);
    let metrics = std::fs::File::create(out.join("metrics.jsonl"))?;
    let phase = if a.mode == TrainMode::Dpo { "dpo" } else { "sft" };
    let mut progress = Progress { bar, metrics: Some(metrics), last_eval: None, phase };
    let mut sft_outcome = None;
    if a.mode != TrainMode::Dpo {
        // In sft+dpo the SFT adapter goes to OUT/sft/adapter, the final one to OUT/adapter.
        let sft_cfg = if a.mode == TrainMode::SftDpo {
            TrainConfig { out_dir: Some(out.join("sft")), ..cfg.clone() }
        } else {
            cfg.clone()
        };
        sft_outcome = Some(SftTrainer::new(&mut model).train(&sft_cfg, &data, &mut progress)?);
    }
    let outcome = if a.mode == TrainMode::Sft {
        sft_outcome.take().expect("SFT ran")
    } else {
        progress.phase = "dpo";
        progress.last_eval = None;
        DpoTrainer::new(&mut model, dpo).train(&cfg, &data, &mut progress)?
    };
    progress.bar.finish_and_clear();
    let test = data.sft(Split::Test)?;
    let report = if test.is_empty() {
        None
    } else {
        let r = sam_trainer::evaluate(&model, "test", &test, cfg.max_seq_len, cfg.batch_size, cfg.pad_id)?;
        r.write(&out.join("eval.json"))?;
        Some(r)
    };
    if ctx.json {
        println!("{}", serde_json::json!({"run": out, "outcome": outcome, "sft_outcome": sft_outcome, "eval": report}));
    } else {
        println!("run folder: {}", out.display());
        println!(
            "steps: {} · final train loss {:.4} · {:.0} tok/s",
            outcome.steps, outcome.final_train_loss, outcome.tokens_per_s
        );
        if let (Some(i), Some(b)) = (outcome.initial_val_loss, outcome.best_val_loss) {
            println!("validation loss: {i:.4} → {b:.4} (best at step {})", outcome.best_step.unwrap_or(0));
        }
        if let Some(r) = report {
            let ad =
                r.adapter.map(|s| format!(" · adapter {:.4} (ppl {:.2})", s.loss, s.perplexity)).unwrap_or_default();
            println!("test: base {:.4} (ppl {:.2}){ad}", r.base.loss, r.base.perplexity);
        }
        if let Some(d) = outcome.adapter_dir {
            println!("adapter: {}", d.display());
        }
    }
    Ok(())
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
    let mut model = load(&a.model, WeightType::F32)?;
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
    };
    let mut out_ids = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    sam_trainer::generate(&model, &prompt, &cfg, Mode::INFER, |id| {
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
    let mut model = load(&a.model, WeightType::F32)?;
    if let Some(dir) = &a.adapter {
        sam_trainer::load_adapter(&mut model, dir)?;
    }
    let examples = data.sft(split)?;
    let r = sam_trainer::evaluate(&model, &a.split, &examples, a.max_seq_len, 1, pad_id(&info))?;
    if let Some(p) = &a.out {
        r.write(p)?;
    }
    if ctx.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{} split: {} examples, {} tokens", r.split, r.examples, r.tokens);
        println!("base:    loss {:.4} · ppl {:.2}", r.base.loss, r.base.perplexity);
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
    let mut model = load(&a.model, a.weights)?;
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
