//! `sam schedule`: the scheduler daemon — start, stop, status, run a job
//! now, history, and starting it at login (systemd / launchd).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use sam_scheduler::clock::{Clock as _, SystemClock};
use sam_scheduler::units::{ServiceFile, ServiceKind, ServiceSpec};
use sam_scheduler::{HistoryEntry, JobOutcome, JobState, Scheduler, SchedulerFiles};

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// The scheduler daemon: periodic mining, deduplication, validation,
    /// export, and training when enough new data has come in
    #[command(subcommand)]
    Schedule(Schedule),
}

#[derive(Subcommand, Debug)]
pub enum Schedule {
    /// Start the daemon (in the background unless --foreground). One daemon
    /// per SAM_HOME: a second start fails naming the running one's pid.
    /// Jobs missed while it was not running run once at start
    Start(StartArgs),
    /// Stop the daemon: a running training checkpoints first
    Stop(StopArgs),
    /// Each job's last run, outcome, duration, next run and run count
    Status,
    /// Run one job now, in this terminal (mine, dedup, validate, export, train)
    Run(RunJobArgs),
    /// Past runs and deferrals, oldest first, with each step's duration
    History(HistoryArgs),
    /// Write a systemd user unit (Linux) or a launchd agent (macOS) that
    /// starts the daemon at login, and print how to enable it
    Install(InstallArgs),
    /// Remove the file `install` wrote, and print how to disable it
    Uninstall(InstallArgs),
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Run in this process (what the service file runs); SIGTERM or Ctrl-C stop it
    #[arg(long)]
    foreground: bool,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait for the daemon to stop
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    timeout: u64,
}

#[derive(Args, Debug)]
pub struct RunJobArgs {
    /// The job: mine, dedup, validate, export or train
    job: String,
    /// Run even when there is nothing to do (train: below the threshold)
    /// or memory is short
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only this job
    #[arg(long)]
    job: Option<String>,
    /// The last N entries (0: all)
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Kind {
    /// A systemd user unit
    Systemd,
    /// A launchd agent
    Launchd,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Which service manager [default: launchd on macOS, systemd elsewhere]
    #[arg(long)]
    kind: Option<Kind>,
    /// Where the file goes [default: ~/.config/systemd/user/sam-scheduler.service,
    /// ~/Library/LaunchAgents/dev.sam.scheduler.plist]
    #[arg(long, value_name = "PATH")]
    path: Option<PathBuf>,
}

pub fn run(cmd: ScheduleCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let ScheduleCommand::Schedule(cmd) = cmd;
    match cmd {
        Schedule::Start(a) if a.foreground => foreground(ctx),
        Schedule::Start(_) => background(ctx),
        Schedule::Stop(a) => stop(ctx, a.timeout),
        Schedule::Status => status(ctx),
        Schedule::Run(a) => run_job(ctx, &a.job, a.force),
        Schedule::History(a) => history(ctx, a),
        Schedule::Install(a) => install(ctx, a),
        Schedule::Uninstall(a) => uninstall(ctx, a),
    }
}

fn files(ctx: &Ctx) -> SchedulerFiles {
    SchedulerFiles::of(&ctx.home)
}

fn daemon_log(ctx: &Ctx) -> PathBuf {
    ctx.home.scheduler_log()
}

/// The job table from `sam.toml`: `[schedule]` for the jobs, the other
/// sections (as `sam run` reads them) for the trigger's pipeline.
fn scheduler(ctx: &Ctx) -> anyhow::Result<Scheduler> {
    let file = ctx.home.load_config()?;
    let mut settings = file.schedule.clone();
    let resolve = |p: &PathBuf| ctx.home.resolve_path(p);
    let model = match &settings.model {
        Some(m) if m.as_os_str().is_empty() => {
            anyhow::bail!(
                "{}: [schedule] model is empty: name a Hugging Face folder or a .gguf file, or remove the key (the test model)",
                ctx.home.config_file().display()
            )
        }
        Some(m) => resolve(m),
        // Not fetched here: a missing model is the trigger's recorded error, with its hint.
        None => sam_models::default_test_model(),
    };
    let mut pipeline = sam_pipeline::PipelineConfig::from_config(ctx.home.clone(), &file, model)
        .with_context(|| format!("{}", ctx.home.config_file().display()))?;
    // Recomputation as `sam run` settles it, for the memory available when the daemon starts.
    if let Some(r) = crate::cmd::run::choose_recompute(&mut pipeline, &file) {
        tracing::info!("training trigger: {}", r.sentence("[train] recompute_every in sam.toml"));
    }
    // No sample captures: the daemon trains on what is mined and captured.
    settings.repos = settings.repos.iter().map(resolve).collect();
    settings.folders = settings.folders.iter().map(resolve).collect();
    pipeline.repos = settings.repos.clone();
    let mut s = Scheduler::new(files(ctx), SystemClock).with_policy(sam_scheduler::jobs::policy(&settings));
    sam_scheduler::jobs::add_standard(&mut s, &settings, &pipeline);
    Ok(s)
}

fn foreground(ctx: &Ctx) -> anyhow::Result<()> {
    let mut s = scheduler(ctx)?;
    let flag = s.stop_flag();
    stop_on_signals(&flag)?;
    if !ctx.json {
        eprintln!(
            "sam scheduler (pid {}) running jobs {} for {}; SIGTERM or Ctrl-C stops it (a training checkpoints first)",
            std::process::id(),
            s.job_names().join(", "),
            ctx.home.root().display()
        );
    }
    s.run().map_err(|e| match e {
        sam_scheduler::DaemonError::Lock(sam_scheduler::lock::LockError::Held { pid, .. }) => anyhow::anyhow!(
            "a sam scheduler is running already for {} (pid {}); `sam schedule stop` stops it",
            ctx.home.root().display(),
            pid.map_or("unknown".to_string(), |p| p.to_string())
        ),
        e => e.into(),
    })?;
    if !ctx.json {
        eprintln!("sam scheduler stopped");
    }
    Ok(())
}

fn background(ctx: &Ctx) -> anyhow::Result<()> {
    let f = files(ctx);
    if let Some(pid) = f.daemon_pid()? {
        bail!(
            "a sam scheduler is running already for {} (pid {pid}); `sam schedule stop` stops it",
            ctx.home.root().display()
        );
    }
    let log_path = daemon_log(ctx);
    std::fs::create_dir_all(log_path.parent().expect("a folder")).context("creating the scheduler folder")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the sam binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home").arg(ctx.home.root()).args(["schedule", "start", "--foreground"]);
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    #[cfg(unix)]
    {
        // Its own process group: Ctrl-C in this terminal does not reach it.
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited at once ({status}); see {}", log_path.display());
        }
        if f.daemon_pid()? == Some(child.id()) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the daemon (pid {}) did not take its lock within 30 s; see {}", child.id(), log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if ctx.json {
        println!("{}", serde_json::json!({ "pid": child.id(), "log": log_path }));
    } else {
        println!("sam scheduler started (pid {}); its log: {}", child.id(), log_path.display());
    }
    Ok(())
}

fn stop(ctx: &Ctx, timeout: u64) -> anyhow::Result<()> {
    let f = files(ctx);
    let Some(pid) = f.daemon_pid()? else {
        if ctx.json {
            println!("{}", serde_json::json!({ "stopped": null }));
        } else {
            println!("no sam scheduler is running for {}", ctx.home.root().display());
        }
        return Ok(());
    };
    sam_scheduler::lock::request_stop(pid).with_context(|| format!("cannot signal the daemon (pid {pid})"))?;
    let t0 = Instant::now();
    let bar = (!ctx.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(format!("waiting for the daemon (pid {pid}) to stop; a running training checkpoints first"));
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    while f.daemon_pid()?.is_some() {
        if t0.elapsed() > Duration::from_secs(timeout) {
            bail!(
                "the daemon (pid {pid}) has not stopped after {timeout} s; `kill -9 {pid}` ends it at once (a training resumes from its last checkpoint)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if ctx.json {
        println!("{}", serde_json::json!({ "stopped": pid }));
    } else {
        println!("sam scheduler (pid {pid}) stopped");
    }
    Ok(())
}

fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let f = files(ctx);
    let pid = f.daemon_pid()?;
    let state = f.load_state()?;
    let s = scheduler(ctx)?;
    let mut names = s.job_names();
    names.extend(state.jobs.keys().filter(|k| !names.contains(k)).cloned().collect::<Vec<_>>());
    let now = SystemClock.now();
    if ctx.json {
        let jobs: Vec<_> = names
            .iter()
            .map(|n| {
                let st = state.jobs.get(n).cloned().unwrap_or_default();
                serde_json::json!({
                    "job": n,
                    "interval_secs": s.timing(n).map(|t| t.interval_secs),
                    "state": st,
                })
            })
            .collect();
        let out = serde_json::json!({ "daemon": { "running": pid.is_some(), "pid": pid }, "jobs": jobs });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match pid {
        Some(p) => println!("daemon: running (pid {p})"),
        None => println!("daemon: not running (`sam schedule start`)"),
    }
    println!(
        "{:<9} {:>6} {:<17} {:<12} {:>9} {:<18} {:>5}",
        "job", "every", "last run", "outcome", "took", "next run", "runs"
    );
    for n in &names {
        let st = state.jobs.get(n).cloned().unwrap_or_default();
        let every = s.timing(n).map_or("-".to_string(), |t| short(t.interval_secs));
        let last = st.last_started.map_or("never".to_string(), |t| ago(now, t));
        let outcome = match (&st.running, &st.last_outcome) {
            (Some(_), _) => "running".to_string(),
            (None, Some(o)) => o.as_str().to_string(),
            (None, None) => "-".to_string(),
        };
        let took = st.last_seconds.map_or("-".to_string(), |s| sam_runs::format_duration(Duration::from_secs_f64(s)));
        let next = match (pid, st.running, st.next_run) {
            (_, Some(r), _) => format!("started {}", ago(now, r.started)),
            (None, _, _) => "daemon stopped".to_string(),
            (Some(_), None, Some(t)) => until(now, t),
            (Some(_), None, None) => "at start".to_string(),
        };
        println!("{n:<9} {every:>6} {last:<17} {outcome:<12} {took:>9} {next:<18} {:>5}", st.runs);
        print_problem(&st);
    }
    Ok(())
}

fn print_problem(st: &JobState) {
    match &st.last_outcome {
        Some(JobOutcome::Failed { error }) => {
            println!("          failed {} time(s) in a row: {error}", st.consecutive_failures);
        }
        Some(JobOutcome::Panicked { message }) => println!("          panicked: {message}"),
        _ => {}
    }
    if let Some(d) = &st.last_deferral
        && st.last_started.is_none_or(|t| d.at > t)
    {
        println!(
            "          deferred: needs {:.1} GB of free memory, {:.1} GB were free",
            d.needed_bytes as f64 / 1e9,
            d.available_bytes as f64 / 1e9
        );
    }
}

fn run_job(ctx: &Ctx, job: &str, force: bool) -> anyhow::Result<()> {
    let mut s = scheduler(ctx)?;
    let flag = s.stop_flag();
    stop_on_signals(&flag)?;
    if !ctx.json {
        eprintln!("running {job}{}; Ctrl-C stops it at a safe point", if force { " (forced)" } else { "" });
    }
    let entry = s.run_now(job, force)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&entry)?);
    } else {
        print_entry(&entry);
    }
    match &entry.outcome {
        JobOutcome::Failed { error } => bail!("{job} failed: {error}"),
        JobOutcome::Panicked { message } => bail!("{job} panicked: {message}"),
        JobOutcome::Deferred { .. } => bail!("{job} deferred: not enough free memory (--force runs it anyway)"),
        _ => Ok(()),
    }
}

fn history(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<()> {
    let mut entries = files(ctx).history()?;
    if let Some(j) = &a.job {
        entries.retain(|e| &e.job == j);
    }
    if a.limit > 0 && entries.len() > a.limit {
        entries.drain(..entries.len() - a.limit);
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no runs yet");
    }
    for e in &entries {
        print_entry(e);
    }
    Ok(())
}

fn print_entry(e: &HistoryEntry) {
    let when = utc(e.started);
    let took = sam_runs::format_duration(Duration::from_secs_f64(e.seconds));
    let trigger = format!("{:?}", e.trigger).to_lowercase();
    let forced = if e.forced { ", forced" } else { "" };
    let detail = match &e.outcome {
        JobOutcome::Failed { error } => format!(": {error}"),
        JobOutcome::Panicked { message } => format!(": {message}"),
        JobOutcome::Deferred { available_bytes, needed_bytes } => {
            format!(": needs {:.1} GB free, {:.1} GB were", *needed_bytes as f64 / 1e9, *available_bytes as f64 / 1e9)
        }
        _ => what_it_did(&e.output).map_or(String::new(), |w| format!(": {w}")),
    };
    println!("{when}  {:<8} {:<11} {took:>7}  ({trigger}{forced}){detail}", e.job, e.outcome.as_str());
    for s in &e.steps {
        let status = format!("{:?}", s.status).to_lowercase();
        println!("    {:<16} {:>7}  {status}", s.name, sam_runs::format_duration(Duration::from_secs_f64(s.seconds)));
    }
}

/// A run's output in a few words (the standard jobs' counts; the trigger's
/// count, and the pipeline's numbers when it ran).
fn what_it_did(out: &serde_json::Value) -> Option<String> {
    let n = |k: &str| out.get(k).and_then(|v| v.as_u64());
    if let Some(unseen) = out.get("unseen") {
        let total = unseen["total"].as_u64().unwrap_or(0);
        let mut w = format!("{total} unseen eligible examples (trains at {})", n("threshold").unwrap_or(0));
        if let Some(run) = out.get("stopped_run").and_then(|r| r.as_str()) {
            w.push_str(&format!("; training run {run} checkpointed, continues at the next start"));
        } else if let Some(pid) = out.get("busy_pid").and_then(|p| p.as_u64()) {
            w.push_str(&format!(
                "; another pipeline run (process {pid}) was in progress: looked again at the next check"
            ));
        } else if let Some(stage) = out.get("stopped_at").and_then(|r| r.as_str()) {
            w.push_str(&format!("; stopped before the {stage} stage, continues there at the next start"));
        }
        let eval = &out["pipeline"]["eval"];
        if let (Some(base), Some(adapter)) = (eval["base"]["loss"].as_f64(), eval["adapter"]["loss"].as_f64()) {
            w.push_str(&format!("; test loss base {base:.3}, adapter {adapter:.3}"));
        }
        let short = &out["pipeline"]["not_gated"];
        if let (Some(have), Some(need)) = (short["test_examples"].as_u64(), short["need"].as_u64()) {
            w.push_str(&format!(
                "; not gated: {have} held-out test examples, the gate needs {need} \
                 (capture more, or a larger test share in [prep] split, or lower [pipeline] min_test_examples)"
            ));
        }
        let deploy = &out["pipeline"]["deploy"];
        if deploy["promote"]["decision"] == "unchanged" && deploy["gate"].is_null() {
            w.push_str("; gate: not judged, the same adapter is in place already");
        }
        if let Some(gate) = deploy["gate"]["summary"].as_str() {
            w.push_str(&format!("; gate: {gate}"));
        }
        if let (Some(decision), Some(version), Some(production)) = (
            deploy["promote"]["decision"].as_str(),
            deploy["promote"]["version"].as_str(),
            deploy["promote"]["production"].as_str(),
        ) {
            w.push_str(&format!("; {version} {decision}, production is {production}"));
        }
        return Some(w);
    }
    let (count, what) = [("inserted", "new examples"), ("removed", "removed"), ("rows", "rows exported")]
        .into_iter()
        .find_map(|(k, what)| Some((n(k)?, what)))
        .or_else(|| Some((n("examples")?, "examples validated")))?;
    Some(format!("{count} {what}"))
}

fn service(ctx: &Ctx, a: &InstallArgs) -> anyhow::Result<(ServiceFile, PathBuf)> {
    let kind = match a.kind {
        Some(Kind::Systemd) => ServiceKind::Systemd,
        Some(Kind::Launchd) => ServiceKind::Launchd,
        None => ServiceKind::native(),
    };
    let home = std::path::absolute(ctx.home.root()).unwrap_or_else(|_| ctx.home.root().to_path_buf());
    let exe = std::env::current_exe().context("cannot find the sam binary")?;
    let spec = ServiceSpec { exe, log: sam_home::SamHome::new(&home).scheduler_log(), home };
    let path = match &a.path {
        Some(p) => p.clone(),
        None => {
            let user = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
            let user = user.context("HOME is not set: pass --path")?;
            let xdg = std::env::var_os("XDG_CONFIG_HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
            kind.default_path(&user, xdg.as_deref())
        }
    };
    Ok((ServiceFile::new(kind, &spec), path))
}

fn install(ctx: &Ctx, a: InstallArgs) -> anyhow::Result<()> {
    let (file, path) = service(ctx, &a)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, &file.text).with_context(|| format!("writing {}", path.display()))?;
    let enable = file.enable_commands(&path);
    if ctx.json {
        println!("{}", serde_json::json!({ "kind": file.kind, "path": path, "enable": enable }));
    } else {
        println!("wrote {}", path.display());
        println!("to start the scheduler now and at every login, run:");
        for c in &enable {
            println!("  {c}");
        }
    }
    Ok(())
}

fn uninstall(ctx: &Ctx, a: InstallArgs) -> anyhow::Result<()> {
    let (file, path) = service(ctx, &a)?;
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    };
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({ "kind": file.kind, "path": path, "removed": removed, "disable": file.disable })
        );
    } else {
        if removed {
            println!("removed {}", path.display());
        } else {
            println!("{} was not there", path.display());
        }
        println!("if it was enabled, also run:");
        for c in &file.disable {
            println!("  {c}");
        }
    }
    Ok(())
}

fn short(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn ago(now: i64, t: i64) -> String {
    format!("{} ago", sam_runs::format_duration(Duration::from_secs((now - t).max(0) as u64)))
}

fn until(now: i64, t: i64) -> String {
    if t <= now {
        "due now".to_string()
    } else {
        format!("in {}", sam_runs::format_duration(Duration::from_secs((t - now) as u64)))
    }
}

/// `2026-05-01 12:00:00Z`.
fn utc(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(t).ok().and_then(|d| d.format(&fmt).ok()).unwrap_or_else(|| t.to_string())
}

/// The first SIGINT/SIGTERM sets `flag` (running jobs stop at a safe
/// point, a training with a checkpoint); a second one exits at once.
fn stop_on_signals(flag: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for (sig, code) in [(SIGINT, 130), (SIGTERM, 143)] {
        signal_hook::flag::register_conditional_shutdown(sig, code, std::sync::Arc::clone(flag))?;
        signal_hook::flag::register(sig, std::sync::Arc::clone(flag))?;
    }
    Ok(())
}
