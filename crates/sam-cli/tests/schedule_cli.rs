//! `sam schedule` run as a user (or a service manager) runs it: two daemons
//! started at once — exactly one runs, the other names its pid; after a
//! `kill -9` a new one starts at once; `start` in the background, `status`,
//! `stop`; `install` / `uninstall` write and remove the service file;
//! SIGTERM during a training the trigger started: exit 0 within seconds,
//! and the next start resumes the run from its checkpoint.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sam"));
    c.args(args).env("SAM_HOME", home).env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = cmd(home, args).output().unwrap();
    assert!(out.status.success(), "sam {args:?} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn daemon_pid(home: &Path) -> Option<u64> {
    let v: Value = serde_json::from_str(&ok(home, &["schedule", "status", "--json"])).unwrap();
    v["daemon"]["pid"].as_u64()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn foreground(home: &Path) -> Child {
    cmd(home, &["schedule", "start", "--foreground"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn two_daemons_at_once_one_runs_and_a_kill_9_leaves_nothing_that_blocks_the_next() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (mut a, mut b) = (foreground(home), foreground(home));
    // One of them exits at once, non-zero, naming the other's pid.
    let t0 = Instant::now();
    let (loser, mut winner) = loop {
        if a.try_wait().unwrap().is_some() {
            break (a, b);
        }
        if b.try_wait().unwrap().is_some() {
            break (b, a);
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "neither daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = loser.wait_with_output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains(&format!("pid {}", winner.id())), "{msg}");
    assert!(winner.try_wait().unwrap().is_none(), "the winner must keep running");
    wait_until("the winner's pid in status", Duration::from_secs(10), || daemon_pid(home) == Some(winner.id().into()));

    // kill -9: the OS drops the lock; a new daemon starts at once.
    winner.kill().unwrap();
    winner.wait().unwrap();
    assert_eq!(daemon_pid(home), None);
    let mut next = foreground(home);
    wait_until("the new daemon", Duration::from_secs(10), || daemon_pid(home) == Some(next.id().into()));
    assert!(next.try_wait().unwrap().is_none());
    // SIGTERM: a clean stop with exit 0.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(next.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = next.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn background_start_status_and_stop() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let out = ok(home, &["schedule", "start", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let pid = v["pid"].as_u64().unwrap();
    assert_eq!(daemon_pid(home), Some(pid));
    // A second start fails while it runs, naming it.
    let again = cmd(home, &["schedule", "start"]).output().unwrap();
    assert!(!again.status.success());
    assert!(text(&again).contains(&format!("pid {pid}")), "{}", text(&again));

    let status: Value = serde_json::from_str(&ok(home, &["schedule", "status", "--json"])).unwrap();
    let jobs: Vec<&str> = status["jobs"].as_array().unwrap().iter().map(|j| j["job"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["mine", "dedup", "validate", "export", "train"]);
    let human = ok(home, &["schedule", "status"]);
    assert!(human.contains(&format!("daemon: running (pid {pid})")), "{human}");

    let stopped: Value = serde_json::from_str(&ok(home, &["schedule", "stop", "--json"])).unwrap();
    assert_eq!(stopped["stopped"].as_u64(), Some(pid));
    assert_eq!(daemon_pid(home), None);
    assert!(ok(home, &["schedule", "stop"]).contains("no sam scheduler is running"));
}

#[test]
fn run_a_job_now_and_see_it_in_history() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let e: Value = serde_json::from_str(&ok(home, &["schedule", "run", "validate", "--json"])).unwrap();
    assert_eq!(e["job"], "validate");
    assert_eq!(e["trigger"], "manual");
    assert_eq!(e["outcome"]["kind"], "idle", "{e}");
    let h: Value = serde_json::from_str(&ok(home, &["schedule", "history", "--json"])).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1);
    let bad = cmd(home, &["schedule", "run", "nope"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("the jobs are: mine, dedup, validate, export, train"), "{}", text(&bad));
    let st: Value = serde_json::from_str(&ok(home, &["schedule", "status", "--json"])).unwrap();
    let v = st["jobs"].as_array().unwrap().iter().find(|j| j["job"] == "validate").unwrap().clone();
    assert_eq!(v["state"]["runs"], 1);
}

#[test]
fn install_and_uninstall_the_service_files() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let unit = home.join("units").join("sam-scheduler.service");
    let out = ok(home, &["schedule", "install", "--kind", "systemd", "--path", unit.to_str().unwrap()]);
    assert!(out.contains("systemctl --user enable --now sam-scheduler.service"), "{out}");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("schedule start --foreground"), "{text}");
    assert!(text.contains(&format!("--home \"{}\"", home.display())), "{text}");
    let plist = home.join("units").join("dev.sam.scheduler.plist");
    let out = ok(home, &["schedule", "install", "--kind", "launchd", "--path", plist.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "launchd");
    assert!(std::fs::read_to_string(&plist).unwrap().contains("<key>ProgramArguments</key>"));
    ok(home, &["schedule", "uninstall", "--kind", "systemd", "--path", unit.to_str().unwrap()]);
    ok(home, &["schedule", "uninstall", "--kind", "launchd", "--path", plist.to_str().unwrap()]);
    assert!(!unit.exists() && !plist.exists());
}

/// Lines of a run's JSONL file (metrics or events).
fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The training runs under the home.
fn run_dirs(home: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(sam_home::SamHome::new(home).runs_dir()) else { return Vec::new() };
    rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

fn train_history(home: &Path) -> Vec<Value> {
    let h: Value = serde_json::from_str(&ok(home, &["schedule", "history", "--json", "--job", "train"])).unwrap();
    h.as_array().unwrap().clone()
}

/// A daemon child that is killed if the test fails while it runs.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn sigterm(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    (status, t0.elapsed())
}

#[test]
fn sigterm_during_a_training_exits_0_at_once_and_the_next_start_resumes_it() {
    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    // The trigger fires at 20 eligible examples and trains the test model
    // briefly, with a checkpoint after every step, then a lean gate (a test
    // split of a few examples, its golden set); the other jobs are off.
    let toml = format!(
        "[schedule]\nmodel = {model}\ntrain_threshold = 20\ntrain_check_every_secs = 1\nrandomized_delay_secs = 0\n\
         mine_every_secs = 0\ndedup_every_secs = 0\nvalidate_every_secs = 0\nexport_every_secs = 0\n\n\
         [prep]\nmax_seq_len = 64\nsplit = \"60,20,20\"\n\n[train]\nsteps = 8\nsave_every = 1\nwarmup_steps = 1\ngrad_accum = 1\nrank = 4\ndpo_steps = 0\n\n\
         [pipeline]\nsample_captures = false\nmax_valid_examples = 2\nmax_eval_examples = 2\n\n\
         [deploy]\nmax_seq_len = 64\n\n[deploy.gate]\nprompts = [\"What is a unit test?\"]\nmax_new_tokens = 8\n",
        model = serde_json::to_string(model.to_str().unwrap()).unwrap()
    );
    std::fs::write(sam_home::SamHome::new(home).config_file(), toml).unwrap();
    ok(home, &["init"]);
    let data = common::distinct_examples(home, 24);
    ok(home, &["ingest", data.to_str().unwrap()]);
    ok(home, &["validate"]);

    // The daemon starts, the trigger fires, the training logs a step and its checkpoint.
    let mut daemon = Daemon(foreground(home));
    wait_until("a checkpointed training step", Duration::from_secs(300), || {
        assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
        run_dirs(home).iter().any(|r| jsonl(&r.join("events.jsonl")).iter().any(|e| e["kind"] == "checkpoint"))
    });
    let (status, took) = sigterm(&mut daemon.0);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(20), "the daemon took {took:?} to stop");
    let runs = run_dirs(home);
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    let st: Value = serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap();
    assert_eq!(st["status"], "stopped", "{st}");
    let stopped_at = st["step"].as_u64().unwrap();
    assert!(stopped_at < 8, "{st}");
    assert_eq!(train_history(home).last().unwrap()["outcome"]["kind"], "stopped");

    // The next start continues that run from its checkpoint and finishes it.
    let mut daemon = Daemon(foreground(home));
    wait_until("the resumed training", Duration::from_secs(300), || {
        assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
        // Through the gate: promoted, or refused (two steps may not beat the base by the margin).
        train_history(home)
            .last()
            .is_some_and(|e| e["outcome"]["kind"] == "succeeded" || e["outcome"]["kind"] == "refused")
    });
    let (status, _) = sigterm(&mut daemon.0);
    assert!(status.success(), "{status}");
    assert_eq!(run_dirs(home), runs, "the same run folder");
    let events = jsonl(&run.join("events.jsonl"));
    assert!(events.iter().any(|e| e["kind"] == "resumed_from_checkpoint"), "{events:?}");
    let steps: Vec<u64> = jsonl(&run.join("metrics.jsonl"))
        .iter()
        .filter(|m| m.get("train_loss").is_some())
        .filter_map(|m| m["step"].as_u64())
        .collect();
    assert_eq!(steps.last(), Some(&8), "{steps:?}");
}
