//! The whole pipeline on a small real git repository plus the sample
//! captures, with the real test model and a few optimiser steps: the summary,
//! the events (as the caller got them, and replayed from the run's events
//! file), the adapter registered, passed by the gate and promoted over the
//! base model, a second run that finds nothing new, and a run killed during
//! training that the next run resumes — and whose adapter the gate (with a
//! margin no adapter meets) refuses, leaving production as it was.

use std::path::Path;

use sam_capture::capture::Capture;
use sam_home::SamHome;
use sam_pipeline::event::{Event, EventReader, Recorder, SkipReason};
use sam_pipeline::stage::Context;
use sam_pipeline::stages::Decision;
use sam_pipeline::{Flow, NoEvents, Outcome, Pipeline, PipelineConfig, PipelineState, Stage};
use sam_schema::{Content, Example};
use sam_store::prelude::*;
use sam_store::{Filter, RunState, SqliteStore};

const README: &str = "# Cachey\n\nA small in-memory cache with expiry.\n\n## Install\n\nAdd `cachey = \"0.3\"` to the `[dependencies]` of your Cargo.toml and run `cargo build`; there are no other requirements.\n\n## Expiry\n\nEvery entry has a time to live. `Cache::get` returns `None` for an entry whose time has passed and removes it on the way, so memory is reclaimed lazily.\n\n## Contributing\n\nRun `cargo test` before sending a patch; write to maintainer@cachey.example with questions.\n";

const LIB: &str = "/// Return the entry stored under `key`, or `None` when it is missing or expired.\npub fn get(map: &std::collections::HashMap<String, String>, key: &str) -> Option<String> {\n    map.get(key).cloned()\n}\n\n/// Insert `value` under `key`, replacing any previous entry, and return the old value.\npub fn put(map: &mut std::collections::HashMap<String, String>, key: &str, value: &str) -> Option<String> {\n    map.insert(key.to_string(), value.to_string())\n}\n";

fn commit(repo: &git2::Repository, files: &[(&str, &str)], message: &str) {
    let root = repo.workdir().unwrap().to_path_buf();
    let mut index = repo.index().unwrap();
    for (name, text) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        index.add_path(Path::new(name)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("Ada Dev", "ada@dev.example").unwrap();
    let parents: Vec<git2::Commit> = repo.head().ok().and_then(|h| h.peel_to_commit().ok()).into_iter().collect();
    let parents: Vec<&git2::Commit> = parents.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap();
}

fn make_repo(dir: &Path) -> git2::Repository {
    let repo = git2::Repository::init(dir).unwrap();
    commit(&repo, &[("README.md", README)], "Add the README with install and expiry sections");
    commit(&repo, &[("src/lib.rs", LIB)], "Add get and put over a HashMap\n\nThe first two operations of the cache.");
    let lib2 = format!(
        "{LIB}\n/// Remove every entry from `map` and return how many there were.\npub fn clear(map: &mut std::collections::HashMap<String, String>) -> usize {{\n    let n = map.len();\n    map.clear();\n    n\n}}\n"
    );
    commit(&repo, &[("src/lib.rs", &lib2)], "Add clear, which reports how many entries it removed");
    repo
}

/// The sample captures `sam run` feeds (shipped with the CLI).
fn sample_captures() -> Vec<Capture> {
    include_str!("../../sam-cli/assets/sample-captures.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config(home: &Path, repo: &Path) -> PipelineConfig {
    let model = sam_models::require_test_model().expect("the test model (scripts/fetch-test-model.sh)");
    let mut cfg = PipelineConfig::new(home, model);
    cfg.repos = vec![repo.to_path_buf()];
    cfg.captures = sample_captures();
    cfg.train.duration = sam_trainer::Duration::Iters(2);
    cfg.train.eval_every = 2;
    cfg.train.output.save_every = 1;
    if let Some(d) = &mut cfg.dpo {
        d.steps = 2;
    }
    cfg.train.batch.max_seq_len = 128;
    cfg.prep.max_seq_len = 128;
    cfg.prep.split = "60,20,20".parse().unwrap();
    cfg.max_eval_examples = Some(3);
    cfg.max_valid_examples = Some(3);
    // Two steps move the test loss by well under the default 1% margin: any
    // improvement passes here (the other gates keep their defaults).
    cfg.deploy.as_mut().expect("deployment is on by default").config.gate.margin = 0.0;
    cfg
}

/// Dies in the second SFT step, after the first step's checkpoint, as a
/// killed process would.
struct CrashInTraining;

impl sam_pipeline::EventSink for CrashInTraining {
    fn event(&mut self, e: &Event) {
        if let Event::TrainStep { metrics, .. } = e
            && metrics.step == 2
        {
            panic!("simulated crash during training");
        }
    }
}

/// The stage and step sequence of a run's events, in order: one entry per
/// stage event, `phase:step` per training step.
fn outline(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RunStarted { .. } => Some("run".to_string()),
            Event::StageStarted { stage, .. } => Some(format!("start {stage}")),
            Event::StageFinished { stage, .. } => Some(format!("end {stage}")),
            Event::StageSkipped { stage, .. } => Some(format!("skip {stage}")),
            Event::TrainStep { phase, metrics } => Some(format!("{phase}:{}", metrics.step)),
            Event::Finished(_) => Some("finished".to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn pipeline_trains_then_finds_nothing_new_then_resumes_an_interrupted_training() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let repo_dir = tmp.path().join("repo");
    let repo = make_repo(&repo_dir);
    let cfg = config(&home, &repo_dir);

    // First run: every stage.
    let mut seen = Recorder::default();
    let s = sam_pipeline::run(&cfg, &mut seen).unwrap();
    assert_eq!(s.outcome, Outcome::Trained);
    assert_eq!(s.resumed_at, None);
    let mine = s.mine.as_ref().unwrap();
    let by = |name: &str| mine.sources.iter().find(|x| x.source == name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(by("git").inserted, 3, "{mine:?}");
    assert!(by("docs").inserted >= 2, "{mine:?}");
    assert!(by("code").inserted >= 2, "{mine:?}");
    assert_eq!(by("captures").collected, 24);
    assert!(by("captures").inserted >= 20, "{mine:?}");
    assert!(mine.redacted.total() >= 6, "{:?}", mine.redacted);
    let export = s.export.as_ref().unwrap();
    assert!(export.rows > 20 && export.path.exists(), "{export:?}");
    let exported = std::fs::read_to_string(&export.path).unwrap();
    for planted in ["ghp_4fK9sQ2mV7xL1cN8pR3tY6wZ0bH5jD2gA7eU", "bob.smith@example.org", "maintainer@cachey.example"] {
        assert!(!exported.contains(planted), "{planted} reached the export");
    }
    let prep = s.prep.as_ref().unwrap();
    assert!(prep.sft[0] > 0 && prep.sft[2] > 0, "{prep:?}");
    assert!(prep.preference.iter().sum::<u64>() > 0, "the corrections make preference pairs: {prep:?}");
    assert!(prep.dir.join("manifest.json").exists());
    let train = s.train.as_ref().unwrap();
    assert_eq!(train.steps, 2);
    assert_eq!(train.resumed_from, None);
    let dpo = train.dpo.phase().expect("the preference pairs were trained with DPO");
    assert_eq!(dpo.steps, 2);
    assert!(dpo.pairs > 0 && dpo.val_reward_accuracy.is_some(), "{dpo:?}");
    assert!(train.run_dir.join("sft/adapter/adapter_model.safetensors").exists());
    assert!(train.tokens > 0 && train.tokens_per_s > 0.0 && train.seconds > 0.0, "{train:?}");
    assert!(train.adapter_dir.join("adapter_model.safetensors").exists());
    assert!(train.run_dir.join("loss.svg").exists() && train.run_dir.join("eval.json").exists());
    let eval = s.eval.as_ref().unwrap();
    let (base, adapter) = (eval.base.unwrap(), eval.adapter.unwrap());
    assert!(eval.examples > 0 && base.loss.is_finite() && adapter.loss.is_finite(), "{eval:?}");
    assert_ne!(base.loss, adapter.loss, "the adapter changed nothing");
    let store = SqliteStore::open(SamHome::new(&home).store_db()).unwrap();
    let runs = store.training_runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, train.run_id);
    assert_eq!(runs[0].status, RunState::Evaluated);
    assert_eq!(runs[0].manifest_hash.as_deref(), Some(prep.manifest_hash.as_str()));
    drop(store);

    // Registered (a new slot for the test model), passed against the base
    // model, promoted; the summary names the folder to load.
    let d = s.deploy.as_ref().expect("the run went through the deploy stages");
    assert!(d.register.new && d.register.created_slot && d.register.number == 1, "{:?}", d.register);
    let gate = d.gate.as_ref().unwrap();
    assert_eq!(gate.against, "base");
    assert!(gate.pass, "the gate refused the first adapter: {}", gate.summary);
    let (base_loss, adapter_loss) = gate.test_loss().unwrap();
    assert!(adapter_loss < base_loss, "{gate:?}");
    let promoted = d.promote.as_ref().unwrap();
    assert_eq!(promoted.decision, Decision::Promoted);
    assert_eq!((promoted.previous.as_str(), promoted.production.as_str()), ("base", d.register.version.as_str()));
    let reg = sam_deploy::Registry::open(SamHome::new(&home).registry_dir()).unwrap();
    let which = reg.resolve(&promoted.slot, None).unwrap();
    assert_eq!(which.adapter_dir.as_ref(), Some(&d.register.adapter_dir));
    assert!(d.register.adapter_dir.join("adapter_model.safetensors").is_file());
    assert_eq!(s.paths.production, which.adapter_dir);

    // The events: every stage started and finished in order, the training
    // steps within the train stage, the summary last; the events file
    // replays exactly what the caller got.
    let want = [
        "run",
        "start mine",
        "end mine",
        "start clean",
        "end clean",
        "start export",
        "end export",
        "start prep",
        "end prep",
        "start train",
        "sft:1",
        "sft:2",
        "dpo:1",
        "dpo:2",
        "end train",
        "start evaluate",
        "end evaluate",
        "start report",
        "end report",
        "start register",
        "end register",
        "start gate",
        "end gate",
        "start promote",
        "end promote",
        "finished",
    ];
    assert_eq!(outline(&seen.events), want);
    let replayed = EventReader::for_run(&SamHome::new(&home), &s.id).read_new().unwrap();
    assert_eq!(replayed, seen.events);
    assert_eq!(s.paths.events, SamHome::new(&home).pipeline_events(&s.id));
    let Some(Event::Finished(last)) = replayed.last() else { panic!("no summary at the end") };
    assert_eq!(**last, s);
    // Stage outputs in events are data: the train stage's output reads back typed.
    let train_out = replayed.iter().find_map(|e| match e {
        Event::StageFinished { stage, output, .. } if stage == "train" => Some(output.clone()),
        _ => None,
    });
    let back: sam_pipeline::stages::TrainInfo = serde_json::from_value(train_out.unwrap()).unwrap();
    assert_eq!(&back, train);

    // Second run, nothing new: trains nothing and says so.
    let mut seen2 = Recorder::default();
    let s2 = sam_pipeline::run(&cfg, &mut seen2).unwrap();
    assert_eq!(s2.outcome, Outcome::NothingNew);
    let nothing_new = SkipReason::RunEnded { outcome: Outcome::NothingNew };
    let skipped: Vec<&str> = seen2
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StageSkipped { stage, reason, .. } if *reason == nothing_new => Some(stage.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, ["prep", "train", "evaluate", "report", "register", "gate", "promote"]);
    assert!(s2.deploy.is_none());
    assert!(s2.train.is_none() && s2.eval.is_none() && s2.prep.is_none());
    assert_eq!(s2.mine.as_ref().unwrap().inserted(), 0);
    assert_eq!(std::fs::read_dir(SamHome::new(&home).runs_dir()).unwrap().count(), 1);

    // New data, and a crash during training: the state is left at prep with
    // a training run started.
    commit(
        &repo,
        &[(
            "CHANGELOG.md",
            "# Changelog\n\n## 0.3\n\nEntries expire lazily on read; `clear` reports how many entries it removed.\n",
        )],
        "Write the changelog for 0.3",
    );
    // Another seed, so that two steps on nearly the same data do not make
    // the very adapter of the first run again (it would register as the
    // same version).
    let mut cfg = cfg.clone();
    cfg.train.seed = 7;
    let crashed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sam_pipeline::run(&cfg, &mut CrashInTraining)));
    assert!(crashed.is_err());
    let st = PipelineState::load(&SamHome::new(&home)).unwrap().unwrap();
    let finished: Vec<&str> = st.stages.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(finished, ["mine", "clean", "export", "prep"]);
    assert!(st.outcome.is_none());
    let interrupted: String = serde_json::from_value(st.marks["train.run_id"].clone()).unwrap();

    // The next run continues at the train stage, in the same training run,
    // from its step-1 checkpoint; its adapter is registered and judged
    // against production (the first adapter), and refused by a margin no
    // adapter meets: a normal end, production unchanged.
    let mut strict = cfg.clone();
    strict.deploy.as_mut().unwrap().config.gate.margin = 0.9;
    let s3 = sam_pipeline::run(&strict, &mut NoEvents).unwrap();
    assert_eq!(s3.outcome, Outcome::Trained);
    assert_eq!(s3.resumed_at.as_deref(), Some("train"));
    assert_eq!(s3.skipped_stages, ["mine", "clean", "export", "prep"]);
    assert_eq!(s3.id, st.id);
    let t3 = s3.train.as_ref().unwrap();
    assert_eq!(t3.run_id, interrupted);
    assert_eq!(t3.resumed_from, Some(("sft".to_string(), 1)));
    assert_eq!(t3.steps, 2);
    assert!(s3.eval.is_some());
    let run = sam_runs::RunDir::open(&t3.run_dir).unwrap();
    let sft_steps: Vec<u64> = run
        .metrics()
        .unwrap()
        .iter()
        .filter(|m| m.phase.as_deref() == Some("sft") && m.train_loss.is_some())
        .map(|m| m.step)
        .collect();
    assert_eq!(sft_steps, [1, 2], "each step logged once");
    let store = SqliteStore::open(SamHome::new(&home).store_db()).unwrap();
    let runs = store.training_runs().unwrap();
    assert_eq!(runs.len(), 2);
    let status = |id: &str| runs.iter().find(|r| r.id == id).map(|r| r.status);
    assert_eq!(status(&interrupted), Some(RunState::Evaluated));
    let d3 = s3.deploy.as_ref().unwrap();
    assert!(d3.register.new && !d3.register.created_slot && d3.register.number == 2, "{:?}", d3.register);
    let gate3 = d3.gate.as_ref().unwrap();
    assert_eq!(gate3.against, d.register.version, "judged against the production adapter");
    assert!(!gate3.pass && gate3.summary.contains("margin"), "{gate3:?}");
    let refused = d3.promote.as_ref().unwrap();
    assert_eq!(refused.decision, Decision::Refused);
    assert_eq!(refused.production, d.register.version);
    assert_eq!(reg.resolve(&refused.slot, None).unwrap().adapter_dir, which.adapter_dir);
    assert_eq!(reg.versions(&refused.slot).unwrap().len(), 2);
}

/// Stores `n` new examples (numbered from `from`) in the run's store.
struct Insert {
    from: usize,
    n: usize,
}

impl Stage for Insert {
    type Output = u64;
    fn name(&self) -> &'static str {
        "insert"
    }
    fn run(&mut self, cx: &mut Context<'_>) -> sam_pipeline::Result<Flow<u64>> {
        let examples: Vec<Example> = (self.from..self.from + self.n)
            .map(|i| {
                Example::new(Content::Instruction {
                    instruction: format!("What does step {i} of the release checklist do?"),
                    input: String::new(),
                    output: format!("Step {i} tags the release commit and pushes the tag to the remote."),
                })
            })
            .collect();
        Ok(Flow::Next(cx.store().insert(&examples)?.inserted))
    }
}

/// Counts the store's examples; ends the run with "nothing new" when the
/// count is the one the last complete run saw.
struct Count;

impl Stage for Count {
    type Output = u64;
    fn name(&self) -> &'static str {
        "count"
    }
    fn run(&mut self, cx: &mut Context<'_>) -> sam_pipeline::Result<Flow<u64>> {
        let n = cx.store().count(&Filter::default())?;
        Ok(if cx.baseline::<u64>("count") == Some(n) { Flow::End(n, Outcome::NothingNew) } else { Flow::Next(n) })
    }
}

/// Fails while `fail` is set (a stage that crashes), else reads the
/// count stage's output.
struct Flaky {
    fail: bool,
}

impl Stage for Flaky {
    type Output = String;
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn run(&mut self, cx: &mut Context<'_>) -> sam_pipeline::Result<Flow<String>> {
        if self.fail {
            return Err(sam_pipeline::Error::NoData("flaky failed".into()));
        }
        let n: u64 = cx.output("count")?;
        cx.events().progress(1, 1);
        Ok(Flow::Next(format!("{n} counted")))
    }
}

fn toy(from: usize, n: usize, fail: bool) -> Pipeline {
    Pipeline::empty(Outcome::Trained).push(Insert { from, n }).push(Count).push(Flaky { fail })
}

/// The stages skipped for `why`, in order.
fn skipped_for(events: &[Event], why: SkipReason) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StageSkipped { stage, reason, .. } if *reason == why => Some(stage.as_str()),
            _ => None,
        })
        .collect()
}

/// The driver alone, with stages of its caller's on a store in memory: a
/// stage that fails stops the run; the next invocation resumes at it (the
/// stages before are not run again); a stage ends a run with "nothing
/// new"; the events file replays each invocation's events in order.
#[test]
fn the_driver_resumes_skips_and_ends_runs_on_a_store_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.gguf");
    std::fs::write(&model, b"only its presence is checked").unwrap();
    let cfg = PipelineConfig::new(tmp.path().join("home"), &model);
    let home = SamHome::new(tmp.path().join("home"));
    let mut store = SqliteStore::open_in_memory().unwrap();

    let mut pipeline = toy(0, 3, true);
    assert!(matches!(pipeline.insert_before("nope", Count), Err(sam_pipeline::Error::NoSuchStage(_))));

    // One run at a time per home: while another process (here, another
    // open of the lock) holds the pipeline's lock, a run is refused,
    // naming the holder, and runs nothing.
    {
        std::fs::create_dir_all(home.locks_dir()).unwrap();
        let held = std::fs::File::create(home.pipeline_lock()).unwrap();
        held.lock().unwrap();
        std::fs::write(home.pipeline_lock(), "4242").unwrap();
        let err = toy(0, 3, false).run_on(&cfg, &mut store, &mut NoEvents).unwrap_err();
        assert!(matches!(err, sam_pipeline::Error::Busy { pid: Some(4242), .. }), "{err}");
        assert!(err.to_string().contains("in progress"), "{err}");
        assert_eq!(store.count(&Filter::default()).unwrap(), 0);
        assert!(PipelineState::load(&home).unwrap().is_none());
    }
    let mut seen = Recorder::default();
    let err = pipeline.run_on(&cfg, &mut store, &mut seen).unwrap_err();
    assert!(err.to_string().contains("flaky failed"), "{err}");
    assert!(matches!(seen.events.last(), Some(Event::StageFailed { stage, .. }) if stage == "flaky"));
    let st = PipelineState::load(&home).unwrap().unwrap();
    assert_eq!(st.stages.iter().map(|r| r.stage.as_str()).collect::<Vec<_>>(), ["insert", "count"]);

    // Resumed at the stage that failed: the insert stage is not run again.
    let mut seen = Recorder::default();
    let s = toy(100, 3, false).run_on(&cfg, &mut store, &mut seen).unwrap();
    assert_eq!((s.outcome, s.resumed_at.as_deref(), s.id.as_str()), (Outcome::Trained, Some("flaky"), st.id.as_str()));
    assert_eq!(s.skipped_stages, ["insert", "count"]);
    assert_eq!(store.count(&Filter::default()).unwrap(), 3);
    assert_eq!(skipped_for(&seen.events, SkipReason::FinishedEarlier), ["insert", "count"]);
    let replayed = EventReader::for_run(&home, &s.id).read_new().unwrap();
    // The file holds both invocations of the run, in order.
    assert_eq!(replayed[replayed.len() - seen.events.len()..], seen.events[..]);
    assert!(matches!(&replayed[0], Event::RunStarted { resumed_at: None, .. }));
    let output = |e: &Event| match e {
        Event::StageFinished { stage, output, .. } if stage == "flaky" => Some(output.clone()),
        _ => None,
    };
    assert_eq!(replayed.iter().find_map(output), Some(serde_json::json!("3 counted")));

    // A new run with nothing new: the count stage ends it, flaky is skipped.
    let mut seen = Recorder::default();
    let s2 = toy(0, 3, true).run_on(&cfg, &mut store, &mut seen).unwrap();
    assert_eq!(s2.outcome, Outcome::NothingNew);
    assert_ne!(s2.id, s.id);
    assert_eq!(skipped_for(&seen.events, SkipReason::RunEnded { outcome: Outcome::NothingNew }), ["flaky"]);
    assert_eq!(EventReader::for_run(&home, &s2.id).read_new().unwrap(), seen.events);

    // New examples: the run goes through again.
    let s3 = toy(200, 2, false).run_on(&cfg, &mut store, &mut NoEvents).unwrap();
    assert_eq!((s3.outcome, s3.resumed_at.as_deref()), (Outcome::Trained, None));
    assert_eq!(store.count(&Filter::default()).unwrap(), 5);
}

/// Asks the run to stop at its first training step.
struct StopAtFirstStep(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl sam_pipeline::EventSink for StopAtFirstStep {
    fn event(&mut self, e: &Event) {
        if let Event::TrainStep { .. } = e {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A stop request (Ctrl-C in `sam run`) ends the run at a safe point: in
/// training after the step with its checkpoint, else before the next stage;
/// a training finished outside the pipeline meanwhile (`sam runs resume`)
/// is taken as it is by the next run, which goes on from there.
#[test]
fn a_stop_ends_the_run_at_a_safe_point_and_a_training_finished_outside_it_is_taken() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let home = SamHome::new(tmp.path().join("home"));
    let model = sam_models::require_test_model().expect("the test model (scripts/fetch-test-model.sh)");
    let mut cfg = PipelineConfig::new(home.root(), model);
    cfg.train.duration = sam_trainer::Duration::Iters(3);
    cfg.train.eval_every = 3;
    cfg.train.output.save_every = 1;
    cfg.train.batch.max_seq_len = 64;
    cfg.prep.max_seq_len = 64;
    cfg.dpo = None;
    cfg.near_dup = None;
    cfg.deploy = None;
    cfg.prep.split = "60,20,20".parse().unwrap();
    cfg.max_eval_examples = Some(2);
    cfg.max_valid_examples = Some(2);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    cfg.stop = Some(stop.clone());
    let mut store = SqliteStore::open_in_memory().unwrap();
    let mut pipeline = Pipeline::standard();
    pipeline.insert_before("mine", Insert { from: 0, n: 12 }).unwrap();

    let err = pipeline.run_on(&cfg, &mut store, &mut StopAtFirstStep(stop.clone())).unwrap_err();
    let sam_pipeline::Error::Stopped { stage, run_id: Some(id) } = err else { panic!("{err}") };
    assert_eq!(stage, "train");
    let run = sam_runs::RunDir::open(home.run_dir(&id)).unwrap();
    let st = run.status().unwrap();
    assert_eq!(st.status, sam_runs::RunStatus::Stopped, "{st:?}");
    assert!((1..3).contains(&st.step), "{st:?}");

    // Still asked to stop: the next invocation stops before the stage it
    // would run, having run nothing.
    let err = pipeline.run_on(&cfg, &mut store, &mut NoEvents).unwrap_err();
    assert!(matches!(&err, sam_pipeline::Error::Stopped { stage, run_id: None } if stage == "train"), "{err}");
    assert_eq!(run.status().unwrap().step, st.step);

    // The training is finished outside the pipeline, as `sam runs resume` does.
    stop.store(false, Ordering::SeqCst);
    let job = sam_trainer::Job::open(run.path()).unwrap();
    let done = job.run(&mut sam_trainer::NoopObserver, Default::default()).unwrap();
    assert_eq!(done.status, sam_runs::RunStatus::Completed);

    // The next run takes it as it is and goes on to evaluate it.
    let s = pipeline.run_on(&cfg, &mut store, &mut NoEvents).unwrap();
    assert_eq!((s.outcome, s.resumed_at.as_deref()), (Outcome::Trained, Some("train")));
    let t = s.train.as_ref().unwrap();
    assert_eq!((t.run_id.as_str(), t.steps), (id.as_str(), 3));
    assert!(s.eval.as_ref().is_some_and(|e| e.adapter.is_some()), "{:?}", s.eval);
    let steps: Vec<u64> = run.metrics().unwrap().iter().filter(|m| m.train_loss.is_some()).map(|m| m.step).collect();
    assert_eq!(steps, [1, 2, 3], "each step trained once");
}
