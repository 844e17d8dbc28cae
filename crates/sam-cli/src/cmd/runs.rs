//! `sam runs`: list, inspect, resume, stop and plot training runs (the
//! folders under SAM_HOME/runs that `sam train` and `sam run` write).

use std::path::Path;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use sam_runs::{MetricRecord, RunDir, RunStatus, format_duration};
use sam_trainer::{Checkpoint, Job, JobSpec};

use crate::cmd::train::{resolve_run, run_job};
use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Training runs: list, show, resume, stop, plot
    #[command(subcommand)]
    Runs(Runs),
}

#[derive(Subcommand, Debug)]
pub enum Runs {
    /// Every run under SAM_HOME/runs, oldest first
    List,
    /// A run's status, settings, progress, checkpoints and results
    /// (--json: everything, with every metrics line)
    Show(RunArg),
    /// Continue a stopped, failed or crashed run from its last checkpoint
    /// (a completed run is only reported: it has its adapter already)
    Resume(RunArg),
    /// Ask a running run to stop after its current step (with a checkpoint)
    Stop(StopArgs),
    /// Redraw a run's loss.svg (train and validation loss) and print its path
    Plot(RunArg),
}

#[derive(Args, Debug)]
pub struct RunArg {
    /// Run id (see `sam runs list`) or run folder
    run: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Run id (see `sam runs list`) or run folder
    run: String,
    /// Wait until the run has stopped
    #[arg(long)]
    wait: bool,
}

pub fn run(cmd: RunsCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let RunsCommand::Runs(cmd) = cmd;
    match cmd {
        Runs::List => list(ctx),
        Runs::Show(a) => show(&resolve_run(&a.run, ctx)?, ctx),
        Runs::Resume(a) => resume(&resolve_run(&a.run, ctx)?, ctx),
        Runs::Stop(a) => stop(&resolve_run(&a.run, ctx)?, a.wait, ctx),
        Runs::Plot(a) => {
            let run = RunDir::open(resolve_run(&a.run, ctx)?)?;
            run.write_loss_svg()?;
            if ctx.json {
                println!("{}", serde_json::json!({"svg": run.loss_svg_path()}));
            } else {
                println!("{}", run.loss_svg_path().display());
            }
            Ok(())
        }
    }
}

/// What `list` and `show` print about a run.
#[derive(serde::Serialize)]
struct Summary {
    id: String,
    path: std::path::PathBuf,
    status: RunStatus,
    reason: Option<String>,
    /// A running/paused run whose process is gone (it can be resumed).
    orphaned: bool,
    mode: Option<String>,
    step: u64,
    total_steps: u64,
    last_train_loss: Option<f64>,
    best_val_loss: Option<f64>,
    tokens_seen: Option<u64>,
    elapsed_s: Option<f64>,
    eta_s: Option<f64>,
    updated_at: u64,
}

fn summarize(run: &RunDir, metrics: &[MetricRecord]) -> anyhow::Result<Summary> {
    let st = run.status()?;
    let spec: Option<JobSpec> = run.config().ok();
    let last_step = metrics.iter().rev().find(|m| m.train_loss.is_some());
    let best = metrics.iter().filter_map(|m| m.val_loss.map(|l| (m.phase.clone(), l))).collect::<Vec<_>>();
    // The best validation loss of the last phase that validated.
    let last_phase = best.last().map(|(p, _)| p.clone());
    let best_val = best.iter().filter(|(p, _)| Some(p) == last_phase.as_ref()).map(|(_, l)| *l).reduce(f64::min);
    let active = matches!(st.status, RunStatus::Running | RunStatus::Paused);
    Ok(Summary {
        id: run.id().to_string(),
        path: run.path().to_path_buf(),
        status: st.status,
        reason: st.reason.clone(),
        orphaned: active && !run.owner_alive()?,
        mode: spec.map(|s| s.mode.as_str().to_string()),
        step: st.step,
        total_steps: st.total_steps,
        last_train_loss: last_step.and_then(|m| m.train_loss),
        best_val_loss: best_val,
        tokens_seen: last_step.and_then(|m| m.tokens_seen),
        elapsed_s: last_step.and_then(|m| m.elapsed_s),
        eta_s: if active { last_step.and_then(|m| m.extra.get("eta_s")).and_then(|v| v.as_f64()) } else { None },
        updated_at: st.updated_at,
    })
}

fn status_text(s: &Summary) -> String {
    if s.orphaned { format!("{} (process gone)", s.status) } else { s.status.to_string() }
}

fn ago(t: u64) -> String {
    let d = sam_runs::unix_now().saturating_sub(t);
    format!("{} ago", format_duration(std::time::Duration::from_secs(d)))
}

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let root = ctx.home.runs_dir();
    let runs = RunDir::list(&root)?;
    let mut rows = Vec::new();
    for run in &runs {
        let metrics = run.metrics().unwrap_or_default();
        // One unreadable run folder (a status.json cut short by hand, a
        // disk error) is named, not a reason to list nothing.
        match summarize(run, &metrics) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("warning: run {} left out: {e:#}", run.id()),
        }
    }
    if ctx.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no runs under {} (start one with `sam train` or `sam run`)", root.display());
        return Ok(());
    }
    println!("{:<22} {:<24} {:<8} {:>11} {:>9} {:>9}  UPDATED", "ID", "STATUS", "MODE", "STEP", "LOSS", "BEST VAL");
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    for r in &rows {
        println!(
            "{:<22} {:<24} {:<8} {:>11} {:>9} {:>9}  {}",
            r.id,
            status_text(r),
            r.mode.as_deref().unwrap_or("-"),
            format!("{}/{}", r.step, r.total_steps),
            f(r.last_train_loss),
            f(r.best_val_loss),
            ago(r.updated_at)
        );
    }
    Ok(())
}

fn show(dir: &Path, ctx: &Ctx) -> anyhow::Result<()> {
    let run = RunDir::open(dir)?;
    let metrics = run.metrics()?;
    let events = run.events()?;
    let s = summarize(&run, &metrics)?;
    let spec: Option<JobSpec> = run.config().ok();
    let checkpoints: Vec<Checkpoint> = ["sft", "dpo"]
        .iter()
        .flat_map(|p| {
            let mut v = Checkpoint::list(&run.checkpoints_dir(), p).unwrap_or_default();
            v.extend(Checkpoint::list(&run.path().join("sft/checkpoints"), p).unwrap_or_default());
            v
        })
        .collect();
    let eval: Option<serde_json::Value> =
        std::fs::read_to_string(run.eval_path()).ok().and_then(|t| serde_json::from_str(&t).ok());
    if ctx.json {
        let ck: Vec<_> = checkpoints.iter().map(|c| serde_json::json!({"dir": c.dir, "state": c.state})).collect();
        println!(
            "{}",
            serde_json::json!({
                "summary": s,
                "config": run.config::<serde_json::Value>().ok(),
                "checkpoints": ck,
                "eval": eval,
                "metrics": metrics,
                "events": events,
            })
        );
        return Ok(());
    }
    println!("run      {} ({})", s.id, s.path.display());
    let reason = s.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    println!("status   {}{reason} · updated {}", status_text(&s), ago(s.updated_at));
    if let Some(spec) = &spec {
        let t = &spec.train;
        println!("job      {} · model {} · data {}", spec.mode.as_str(), spec.model, spec.data.display());
        let targets: Vec<&str> = t.lora.targets.iter().map(|x| x.module_name()).collect();
        println!(
            "settings rank {} alpha {} on {} · lr {:e} · batch {}×{} · max {} tokens · seed {}",
            t.lora.rank,
            t.lora.alpha,
            targets.join(","),
            t.optim.lr,
            t.batch.batch_size,
            t.batch.grad_accum,
            t.batch.max_seq_len,
            t.seed
        );
    }
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    println!(
        "progress step {}/{} · train loss {} · best validation {} · {} tokens · {}{}",
        s.step,
        s.total_steps,
        f(s.last_train_loss),
        f(s.best_val_loss),
        s.tokens_seen.unwrap_or(0),
        s.elapsed_s.map(|e| format_duration(std::time::Duration::from_secs_f64(e))).unwrap_or_else(|| "-".into()),
        s.eta_s
            .map(|e| format!(" · ETA {}", format_duration(std::time::Duration::from_secs_f64(e))))
            .unwrap_or_default()
    );
    // The best step of a phase is what its newest checkpoint knows (an
    // older one only knew the best up to its own step).
    let best_of = |phase: &str| {
        checkpoints
            .iter()
            .filter(|c| c.state.phase == phase)
            .max_by_key(|c| c.state.step)
            .and_then(|c| c.state.best_step)
    };
    for c in &checkpoints {
        let best = if best_of(&c.state.phase) == Some(c.state.step) { " (best)" } else { "" };
        println!("checkpoint {} step {}{best}: {}", c.state.phase, c.state.step, c.dir.display());
    }
    if run.adapter_dir().is_dir() {
        println!("adapter  {}", run.adapter_dir().display());
    }
    if let Some(e) = &eval {
        let base = e["base"]["loss"].as_f64();
        let ad = e["adapter"]["loss"].as_f64();
        println!("test     base {} · adapter {}", f(base), f(ad));
    }
    if run.loss_svg_path().is_file() {
        println!("curves   {}", run.loss_svg_path().display());
    }
    let tail = events.len().saturating_sub(6);
    for e in &events[tail..] {
        let msg = if e.message.is_empty() { String::new() } else { format!(": {}", e.message) };
        println!("event    {} step {} {:?}{msg}", ago(e.time), e.step, e.kind);
    }
    if matches!(s.status, RunStatus::Stopped | RunStatus::Failed) || s.orphaned {
        println!("continue with `sam runs resume {}`", s.id);
    }
    Ok(())
}

/// `sam runs resume` and `sam train --resume`: continue what can be
/// continued (a stopped, failed, queued or crashed run); a completed run is
/// reported with its adapter (exit 0), a run still trained by a live process
/// is refused.
pub(crate) fn resume(dir: &Path, ctx: &Ctx) -> anyhow::Result<()> {
    let run = RunDir::open(dir)?;
    let st = run.status()?;
    match st.status {
        RunStatus::Completed => {
            let adapter = run.adapter_dir();
            if ctx.json {
                let v = serde_json::json!({
                    "id": run.id(), "status": st.status, "resumed": false, "step": st.step,
                    "total_steps": st.total_steps, "adapter_dir": adapter.is_dir().then_some(&adapter),
                });
                println!("{v}");
            } else {
                println!("run {} is complete (step {}/{}): nothing to resume", run.id(), st.step, st.total_steps);
                if adapter.is_dir() {
                    println!("adapter: {}", adapter.display());
                }
                println!("train again with a new run (`sam train`)");
            }
            return Ok(());
        }
        RunStatus::Running | RunStatus::Paused if run.owner_alive()? => bail!(
            "run {} is being trained by process {}; it cannot be resumed while it runs \
             (`sam runs stop {}` stops it after its current step)",
            run.id(),
            st.pid.unwrap_or(0),
            run.id()
        ),
        _ => {}
    }
    let job = Job::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    run_job(&job, ctx)
}

fn stop(dir: &Path, wait: bool, ctx: &Ctx) -> anyhow::Result<()> {
    let run = RunDir::open(dir)?;
    let st = run.status()?;
    match st.status {
        RunStatus::Running | RunStatus::Paused if run.owner_alive()? => {
            run.request_stop()?;
            if !ctx.json {
                println!("asked run {} (process {}) to stop after its current step", run.id(), st.pid.unwrap_or(0));
            }
            if wait {
                while matches!(run.status()?.status, RunStatus::Running | RunStatus::Paused) && run.owner_alive()? {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                if !ctx.json {
                    println!("run {} is {}", run.id(), run.status()?.status);
                }
            }
        }
        RunStatus::Running | RunStatus::Paused => {
            // The process is gone (crash, kill -9): record what happened.
            run.set_status(
                RunStatus::Stopped,
                Some("its process ended without stopping".into()),
                st.step,
                st.total_steps,
            )?;
            run.append_event(sam_runs::EventKind::Stopped, st.step, "marked stopped: its process was gone")?;
            if !ctx.json {
                println!(
                    "run {} had no live process; marked stopped (resume with `sam runs resume {}`)",
                    run.id(),
                    run.id()
                );
            }
        }
        RunStatus::Queued => bail!("run {} has not started", run.id()),
        other => bail!("run {} is {other}, not running", run.id()),
    }
    if ctx.json {
        println!("{}", serde_json::json!({"id": run.id(), "status": run.status()?.status}));
    }
    Ok(())
}
