//! `sam train` and `sam runs`, run as a user runs them, on the test model:
//! a training process killed with SIGKILL after a checkpoint is resumed with
//! `sam runs resume` and logs the same per-step losses as an uninterrupted
//! twin (and resuming it once complete only reports it); `sam runs stop`
//! stops a live run with a checkpoint; `sam train --mode sft+dpo` trains
//! both phases in one run.

use std::path::Path;
use std::process::{Child, Stdio};

mod common;
use common::{cmd, ok, prepared, sam};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A temporary SAM_HOME with a prepared dataset for the test model:
/// `(home, model path, dataset path)`.
fn setup() -> (tempfile::TempDir, String, String) {
    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = model.to_str().unwrap().to_string();
    let home = tempfile::tempdir().unwrap();
    let data = prepared(home.path(), &model).to_str().unwrap().to_string();
    (home, model, data)
}

/// Starts `sam ARGS` training into `run` and returns once a step is logged.
fn spawn_past_first_step(home: &Path, args: &[&str], run: &Path) -> Child {
    let mut child = cmd(home, args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the first step", &mut child, Duration::from_secs(300), || {
        run.join("metrics.jsonl").is_file() && !step_losses(run).is_empty()
    });
    child
}

fn train_args<'a>(data: &'a str, model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--model",
        model,
        "--out",
        out,
        "--iters",
        "6",
        "--save-every",
        "2",
        "--eval-every",
        "3",
        "--max-valid",
        "4",
        "--batch",
        "2",
        "--grad-accum",
        "1",
        "--rank",
        "4",
        "--lr",
        "1e-3",
        "--max-seq-len",
        "64",
        "--checkpoint-every",
        "0",
        "--seed",
        "5",
    ]
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step_losses(run: &Path) -> Vec<(String, u64, f64)> {
    metrics(run)
        .iter()
        .filter_map(|m| Some((m["phase"].as_str()?.to_string(), m["step"].as_u64()?, m.get("train_loss")?.as_f64()?)))
        .collect()
}

fn status(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap()
}

fn wait_for(what: &str, child: &mut Child, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("sam exited ({st}) before {what}");
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_same_losses(a: &[(String, u64, f64)], b: &[(String, u64, f64)]) {
    assert_eq!(a.len(), b.len(), "{a:?}\nvs\n{b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.0, x.1), (&y.0, y.1), "{a:?}\nvs\n{b:?}");
        assert!((x.2 - y.2).abs() <= 1e-4 * x.2.abs().max(1.0), "step {}: {} vs {}", x.1, x.2, y.2);
    }
}

#[test]
fn a_run_killed_after_a_checkpoint_resumes_to_the_same_losses() {
    let (home, model, data) = setup();
    let (h, model, data) = (home.path(), model.as_str(), data.as_str());

    let twin = sam_home::SamHome::new(h).run_dir("twin");
    let out = ok(h, &[&["--json"], &train_args(data, model, twin.to_str().unwrap())[..]].concat());
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["sft"]["steps"], 6);
    let want = step_losses(&twin);
    assert_eq!(want.len(), 6);

    // The same run, killed with SIGKILL once its step-2 checkpoint is on disk.
    let killed = sam_home::SamHome::new(h).run_dir("killed");
    let mut child = cmd(h, &train_args(data, model, killed.to_str().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed.join("checkpoints/sft-step-2/trainer_state.json");
    wait_for("the step-2 checkpoint", &mut child, Duration::from_secs(300), || ckpt.is_file());
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let st = status(&killed);
    assert!(st["status"] == "running" || st["status"] == "paused", "{st}");
    let done = step_losses(&killed).len();
    assert!((2..6).contains(&done), "killed after {done} steps");

    // `sam runs` sees a run whose process is gone, and resumes it.
    let list: Value = serde_json::from_str(ok(h, &["--json", "runs", "list"]).trim()).unwrap();
    let row = list.as_array().unwrap().iter().find(|r| r["id"] == "killed").unwrap().clone();
    assert_eq!(row["orphaned"], true, "{row}");
    let out = ok(h, &["--json", "runs", "resume", "killed"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "completed");
    let from_step = v["resumed_from"][1].as_u64().unwrap();
    assert!(from_step >= 2, "{v}");
    assert_same_losses(&want, &step_losses(&killed));
    let st = status(&killed);
    assert_eq!((st["status"].as_str(), st["step"].as_u64()), (Some("completed"), Some(6)));
    assert!(killed.join("adapter/adapter_model.safetensors").is_file() && killed.join("loss.svg").is_file());

    let shown = ok(h, &["runs", "show", "killed"]);
    assert!(shown.contains("completed") && shown.contains("step 6/6"), "{shown}");
    assert!(shown.matches("(best)").count() <= 1, "one best checkpoint: {shown}");
    let shown: Value = serde_json::from_str(ok(h, &["--json", "runs", "show", "killed"]).trim()).unwrap();
    assert_eq!(shown["metrics"].as_array().unwrap().iter().filter(|m| m.get("train_loss").is_some()).count(), 6);
    assert!(shown["events"].as_array().unwrap().iter().any(|e| e["kind"] == "resumed_from_checkpoint"));
    // A completed run cannot be stopped; resuming it says it is complete
    // and names its adapter (exit 0), and changes nothing.
    assert!(!sam(h, &["runs", "stop", "killed"]).status.success());
    let events = std::fs::read_to_string(killed.join("events.jsonl")).unwrap();
    let again = ok(h, &["runs", "resume", "killed"]);
    assert!(again.contains("is complete") && !again.contains("failed"), "{again}");
    assert!(again.contains(killed.join("adapter").to_str().unwrap()), "{again}");
    let v: Value = serde_json::from_str(ok(h, &["--json", "train", "--resume", "killed"]).trim()).unwrap();
    assert_eq!((v["status"].as_str(), v["resumed"].as_bool()), (Some("completed"), Some(false)), "{v}");
    assert_eq!(status(&killed)["status"], "completed");
    assert_eq!(std::fs::read_to_string(killed.join("events.jsonl")).unwrap(), events);
}

#[test]
fn sam_runs_stop_ends_a_live_run_with_a_checkpoint_and_sft_dpo_trains_both_phases() {
    let (home, model, data) = setup();
    let (h, model, data) = (home.path(), model.as_str(), data.as_str());
    let run = sam_home::SamHome::new(h).run_dir("both");
    let mut args = train_args(data, model, run.to_str().unwrap());
    // Long enough that the stop surely lands in the SFT phase.
    let iters = args.iter().position(|a| *a == "--iters").unwrap() + 1;
    args[iters] = "12";
    let save = args.iter().position(|a| *a == "--save-every").unwrap() + 1;
    args[save] = "100";
    args.extend(["--mode", "sft+dpo", "--dpo-iters", "3", "--dpo-lr", "5e-4"]);
    let mut child = spawn_past_first_step(h, &args, &run);
    let out = ok(h, &["runs", "stop", "both", "--wait"]);
    assert!(out.contains("stopped"), "{out}");
    let st = child.wait().unwrap();
    assert!(st.success(), "a stopped run exits cleanly");
    assert_eq!(status(&run)["status"], "stopped");
    let ckpts: Vec<String> = std::fs::read_dir(run.join("sft/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ckpts.len(), 1, "one checkpoint, written at the stop: {ckpts:?}");

    let out = ok(h, &["--json", "train", "--resume", run.to_str().unwrap()]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!((v["sft"]["steps"].as_u64(), v["dpo"]["steps"].as_u64()), (Some(12), Some(3)));
    let losses = step_losses(&run);
    let phases: Vec<&str> = losses.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(phases, [vec!["sft"; 12], vec!["dpo"; 3]].concat());
    let dpo_line = metrics(&run).into_iter().find(|m| m["phase"] == "dpo" && m.get("train_loss").is_some()).unwrap();
    for k in ["reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"] {
        assert!(dpo_line.get(k).is_some(), "{k} missing in {dpo_line}");
    }
    assert!(run.join("sft/adapter").is_dir() && run.join("adapter").is_dir() && run.join("eval.json").is_file());
}

#[test]
fn sigterm_stops_a_run_after_its_step_with_a_checkpoint() {
    let (home, model, data) = setup();
    let (h, model, data) = (home.path(), model.as_str(), data.as_str());
    let run = sam_home::SamHome::new(h).run_dir("term");
    let mut args = train_args(data, model, run.to_str().unwrap());
    let iters = args.iter().position(|a| *a == "--iters").unwrap() + 1;
    args[iters] = "40";
    let mut child = spawn_past_first_step(h, &args, &run);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let st = child.wait().unwrap();
    assert!(st.success(), "SIGTERM ends the run cleanly: {st}");
    let s = status(&run);
    assert_eq!(s["status"], "stopped", "{s}");
    let step = s["step"].as_u64().unwrap();
    assert!((1..40).contains(&step), "{s}");
    let ckpt = run.join(format!("checkpoints/sft-step-{step}/trainer_state.json"));
    assert!(ckpt.is_file(), "a checkpoint at the stop: {}", ckpt.display());
    let shown = ok(h, &["runs", "show", "term"]);
    assert!(shown.contains("stopped") && shown.contains("sam runs resume term"), "{shown}");
}

/// A home for `sam run` on the test model: `sam.toml` with lean settings
/// (plus `extra`), and `n` distinct examples ingested and validated.
fn run_home(n: usize, split: &str, extra: &str) -> (tempfile::TempDir, String) {
    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = model.to_str().unwrap().to_string();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let toml = format!(
        "[prep]\nmax_seq_len = 64\nsplit = \"{split}\"\n\n[train]\nsteps = 6\nsave_every = 1\nwarmup_steps = 1\ngrad_accum = 1\nrank = 4\ndpo_steps = 0\n\n\
         [pipeline]\nsample_captures = false\nnear_dup = false\nmax_valid_examples = 2\nmax_eval_examples = 2\n{extra}"
    );
    std::fs::write(sam_home::SamHome::new(h).config_file(), toml).unwrap();
    let data = common::distinct_examples(h, n);
    ok(h, &["init"]);
    ok(h, &["ingest", data.to_str().unwrap()]);
    ok(h, &["validate"]);
    (home, model)
}

/// `sam run --json ARGS`: the summary.
fn run_json(home: &Path, model: &str, args: &[&str]) -> Value {
    let out = sam_run(home, model, &[&["--json"], args].concat()).output().unwrap();
    assert!(out.status.success(), "sam run {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `sam run ARGS` on `home`, from a folder that is not a git repository.
fn sam_run(home: &Path, model: &str, args: &[&str]) -> std::process::Command {
    let mut c = cmd(home, &[&["run", "--model", model], args].concat());
    c.current_dir(home);
    c
}

fn run_ok(home: &Path, model: &str, args: &[&str]) -> String {
    let out = sam_run(home, model, args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sam run {args:?} failed: {}\n{text}", out.status);
    text
}

/// Ctrl-C in training stops `sam run` at the checkpoint after the current
/// step (exit 130, saying how to continue); `sam run` continues that
/// training run there. `--no-deploy` ends after evaluation with nothing
/// registered. A store too small for a test split to gate on trains and
/// evaluates, registers nothing, and says what to do next.
#[test]
fn sam_run_stops_on_ctrl_c_and_continues_and_a_store_too_small_to_gate_says_so() {
    let (home, model) = run_home(8, "90,5,5", "");
    let h = home.path();
    let sh = sam_home::SamHome::new(h);
    let mut child = sam_run(h, &model, &["--no-deploy"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut run = None;
    wait_for("a checkpointed step", &mut child, Duration::from_secs(300), || {
        let Ok(rd) = std::fs::read_dir(sh.runs_dir()) else { return false };
        run = rd
            .flatten()
            .map(|e| e.path())
            .find(|r| std::fs::read_to_string(r.join("events.jsonl")).is_ok_and(|t| t.contains("\"checkpoint\"")));
        run.is_some()
    });
    let run = run.unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("stopped in the train stage") && text.contains("`sam run` continues"), "{text}");
    let st = status(&run);
    assert_eq!(st["status"], "stopped", "{st}");
    let stopped_at = st["step"].as_u64().unwrap();
    assert!((1..6).contains(&stopped_at), "{st}");

    // `sam run` continues the same training run from its checkpoint; with
    // --no-deploy nothing is registered.
    let s = run_json(h, &model, &["--no-deploy"]);
    assert_eq!((s["outcome"].as_str(), s["resumed_at"].as_str()), (Some("trained"), Some("train")), "{s}");
    assert_eq!(s["train"]["run_dir"].as_str(), run.to_str());
    assert_eq!(s["train"]["resumed_from"], serde_json::json!(["sft", stopped_at]));
    assert_eq!(s["train"]["steps"], 6);
    assert!(s["deploy"].is_null() && s["not_gated"].is_null(), "{s}");
    assert_eq!(s["stages"].as_array().unwrap().last().unwrap(), "register");
    assert!(!sh.registry_dir().exists() || std::fs::read_dir(sh.registry_dir()).unwrap().count() == 0);

    // With deployment on, 16 examples leave too few held out to gate on:
    // an outcome, not an error, and the way out is printed.
    let text = run_ok(h, &model, &["--force"]);
    assert!(text.contains("not gated"), "{text}");
    assert!(text.contains("the gate needs 2") && text.contains("min_test_examples"), "{text}");
    assert!(text.contains("[prep] split"), "{text}");
    let st: Value = serde_json::from_str(&ok(h, &["--json", "deploy", "status"])).unwrap();
    assert_eq!(st["slots"].as_array().unwrap().len(), 0, "{st}");
    // And the next run waits for new data.
    let text = run_ok(h, &model, &[]);
    assert!(text.contains("nothing new"), "{text}");
}

/// `[deploy] rollout = "canary"` through `sam run`: the adapter the gate
/// passes goes on canary traffic; the same data and settings trained again
/// give the same adapter: registered once, not judged against itself, and
/// left where it is.
#[test]
fn sam_run_starts_a_canary_and_the_same_adapter_again_is_unchanged() {
    // A gate every adapter passes (the rollout is under test, not the gate).
    let deploy = "\n[deploy]\nrollout = \"canary\"\nmax_seq_len = 64\n\n[deploy.gate]\nmargin = -1.0\n\
                  golden_tolerance = 100.0\nmax_answer_loss = 100.0\nmax_repeated = 1.0\n\
                  prompts = [\"What is a unit test?\"]\nmax_new_tokens = 4\n\n[deploy.canary]\npercent = 25.0\n";
    let (home, model) = run_home(24, "60,10,30", deploy);
    let h = home.path();
    let s = run_json(h, &model, &[]);
    let d = &s["deploy"];
    assert_eq!(d["register"]["new"], true, "{s}");
    let version = d["register"]["version"].as_str().unwrap().to_string();
    assert_eq!(d["gate"]["pass"], true, "{d}");
    assert_eq!(d["gate"]["against"], "base");
    let p = &d["promote"];
    assert_eq!((p["decision"].as_str(), p["canary_percent"].as_f64()), (Some("canary"), Some(25.0)), "{p}");
    assert_eq!(p["production"], "base");
    let st: Value = serde_json::from_str(&ok(h, &["--json", "deploy", "status"])).unwrap();
    let aliases = &st["slots"][0]["aliases"];
    assert_eq!(aliases["canary"]["version"], version.as_str(), "{st}");
    assert_eq!(aliases["canary"]["percent"], 25.0, "{st}");
    assert!(aliases["production"].is_null(), "{st}");

    // The same data and settings again: the same content, the same version;
    // not judged against itself, left on the canary.
    let s = run_json(h, &model, &["--force"]);
    let d = &s["deploy"];
    assert_eq!(
        (d["register"]["version"].as_str(), d["register"]["new"].as_bool()),
        (Some(&*version), Some(false)),
        "{d}"
    );
    assert!(d["gate"].is_null(), "judged again: {d}");
    assert_eq!(d["promote"]["decision"], "unchanged", "{d}");
    let hist: Value = serde_json::from_str(&ok(h, &["--json", "deploy", "history"])).unwrap();
    let actions: Vec<&str> = hist.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["register", "gate", "canary"], "{hist}");
    let st: Value = serde_json::from_str(&ok(h, &["--json", "deploy", "status"])).unwrap();
    assert_eq!(st["slots"][0]["aliases"]["canary"]["version"], version.as_str(), "{st}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The run folder's recorded recomputation setting.
fn recorded_recompute_every(run: &Path) -> u64 {
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    cfg["train"]["recompute_every"].as_u64().unwrap()
}

#[test]
fn the_recomputation_setting_is_chosen_and_printed_and_the_flag_overrides_it() {
    let (home, model, data) = setup();
    let (h, model, data) = (home.path(), model.as_str(), data.as_str());
    let args = |run: &'static str| -> Vec<String> {
        let out = sam_home::SamHome::new(h).run_dir(run);
        ["train", "--data", data, "--model", model, "--out", out.to_str().unwrap(), "--iters", "1"]
            .into_iter()
            .chain(["--eval-every", "0", "--max-valid", "1", "--max-seq-len", "64", "--rank", "4"])
            .map(String::from)
            .collect()
    };

    // By default: chosen from the memory available, said before training, and used.
    let out = sam(h, &strs(&args("auto")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err.lines().find(|l| l.contains("est. peak")).unwrap_or_else(|| panic!("no choice printed:\n{err}"));
    assert!(line.contains("chosen from the memory available; --recompute-every N overrides"), "{line}");
    assert!(line.contains(" GB available for batches of 1 × "), "{line}");
    let every = recorded_recompute_every(&sam_home::SamHome::new(h).run_dir("auto"));
    assert_eq!(line.starts_with("keeping activations"), every == 0, "{line} vs recompute_every {every}");

    // --recompute-every 3 is obeyed, and --json carries the decision and its estimate.
    let mut a = vec!["--json".to_string()];
    a.extend(args("every3"));
    a.extend(["--recompute-every".to_string(), "3".to_string()]);
    let out = sam(h, &strs(&a));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("est. peak"), "--json prints no sentence: {err}");
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let r = &v["recompute"];
    assert_eq!((r["recompute_every"].as_u64(), r["source"].as_str()), (Some(3), Some("flag")), "{r}");
    // The test model has 30 layers, all adapted: every 3rd is 10 of them.
    assert_eq!(
        (r["estimate"]["layers_recomputed"].as_u64(), r["estimate"]["layers_kept"].as_u64()),
        (Some(10), Some(20))
    );
    // The 4-bit file's weights kept quantized (--weights auto): at their stored size, ~0.1 GB, not f32's 0.54 GB.
    let weights = r["estimate"]["weights"].as_u64().unwrap();
    assert!((50_000_000..200_000_000).contains(&weights), "{r}");
    assert_eq!(recorded_recompute_every(&sam_home::SamHome::new(h).run_dir("every3")), 3);
}
