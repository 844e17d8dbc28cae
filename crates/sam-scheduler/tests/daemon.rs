//! The closed loop with a test clock and the real test model: 100 new
//! eligible examples are ingested → the trigger fires → a short training
//! run → evaluation → the gate → a new production version; a second tick
//! with no new data does nothing; 100 more examples, and an adapter the gate
//! refuses (a margin no adapter meets) leaves production where it was; the
//! history shows each step with its duration.

use std::path::Path;

use sam_home::config::ScheduleSection;
use sam_scheduler::clock::ManualClock;
use sam_scheduler::jobs::add_standard;
use sam_scheduler::task::StepStatus;
use sam_scheduler::{JobOutcome, PipelineConfig, Scheduler, SchedulerFiles};
use sam_schema::{Content, Example};
use sam_store::SqliteStore;
use sam_store::prelude::*;

const T0: i64 = 1_800_000_000;

/// `n` distinct instruction examples about a small cache library, through
/// capture's redaction and scoring (as ingest does).
fn ingest(store: &Path, from: usize, n: usize) {
    let pipeline = sam_capture::Pipeline::new(Default::default());
    let verbs = ["returns", "removes", "inserts", "counts", "clears"];
    let examples: Vec<Example> = (from..from + n)
        .map(|i| {
            let verb = verbs[i % verbs.len()];
            let ex = Example::new(Content::Instruction {
                instruction: format!("What does `cache_op_{i}` do in the cachey crate?"),
                input: String::new(),
                output: format!(
                    "`cache_op_{i}` {verb} entry number {i} of the cache; expired entries are skipped, and the call never blocks."
                ),
            })
            .with_source("ingest")
            .with_domain("code");
            pipeline.prepare(ex).0
        })
        .collect();
    let mut s = SqliteStore::open(store).unwrap();
    let r = s.insert(&examples).unwrap();
    assert_eq!(r.inserted, n as u64, "{r:?}");
}

fn pipeline(home: &Path) -> PipelineConfig {
    let model = sam_models::require_test_model().expect("the test model (scripts/fetch-test-model.sh)");
    let mut cfg = PipelineConfig::new(home, model);
    cfg.train.duration = sam_trainer::Duration::Iters(2);
    cfg.train.eval_every = 2;
    cfg.train.output.save_every = 1;
    cfg.train.batch.max_seq_len = 64;
    cfg.prep.max_seq_len = 64;
    cfg.dpo = None;
    cfg.max_eval_examples = Some(3);
    cfg.max_valid_examples = Some(3);
    // Two steps move the test loss by well under the default 1% margin:
    // here any improvement passes (the other gates keep their defaults).
    let deploy = &mut cfg.deploy.as_mut().expect("deployment is on by default").config;
    deploy.gate.margin = 0.0;
    // Lean: one prompt of the generation check, short answers and sequences.
    deploy.gate.prompts.truncate(1);
    deploy.gate.max_new_tokens = 8;
    deploy.max_seq_len = 64;
    cfg
}

/// The slot's production version, if any.
fn production(home: &Path, slot: &str) -> Option<String> {
    let reg = sam_deploy::Registry::open(sam_home::SamHome::new(home).registry_dir()).unwrap();
    reg.aliases(slot).unwrap().production().map(str::to_string)
}

/// One step of the daemon loop at the clock's time: start what is due, let it end, record it.
fn step(s: &mut Scheduler) -> Vec<String> {
    let started = s.tick().unwrap().started;
    s.wait_idle().unwrap();
    started
}

#[test]
fn new_data_trains_gates_and_deploys_no_new_data_does_nothing_and_a_refusal_leaves_production() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cfg = pipeline(&home);
    let clock = ManualClock::new(T0);
    let settings = ScheduleSection { randomized_delay_secs: 0, ..Default::default() };
    let files = SchedulerFiles::of(&sam_home::SamHome::new(&home));
    let mut s = Scheduler::new(files.clone(), clock.clone());
    add_standard(&mut s, &settings, &cfg);
    s.start().unwrap();

    // An empty home: every job runs once, the trigger finds nothing.
    step(&mut s);
    let st = files.load_state().unwrap();
    assert_eq!(st.jobs["train"].last_outcome, Some(JobOutcome::Idle));

    // 99 new examples: below the threshold.
    ingest(&cfg.home.store_db(), 0, 99);
    clock.advance(300);
    assert_eq!(step(&mut s), ["train"]);
    let h = files.history().unwrap();
    let last = h.last().unwrap();
    assert_eq!((last.job.as_str(), &last.outcome), ("train", &JobOutcome::Idle));
    assert_eq!(last.output["unseen"]["total"], 99);

    // The 100th: the trigger fires and runs the pipeline.
    ingest(&cfg.home.store_db(), 99, 1);
    clock.advance(300);
    assert_eq!(step(&mut s), ["train"]);
    let h = files.history().unwrap();
    let run = h.last().unwrap();
    assert_eq!(run.outcome, JobOutcome::Succeeded, "{run:?}");
    assert_eq!(run.output["unseen"]["total"], 100);
    let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
    // Every stage of the one pipeline (the same list `sam run` runs), timed.
    assert_eq!(names, sam_pipeline::Pipeline::standard().names(), "{run:?}");
    assert!(names.starts_with(&["mine", "clean", "export", "prep", "train", "evaluate"]), "{names:?}");
    assert!(run.steps.iter().all(|s| s.status == StepStatus::Finished), "{run:?}");
    assert!(run.steps.iter().any(|s| s.name == "train" && s.seconds > 0.0), "{run:?}");
    assert!(run.seconds >= run.steps.iter().map(|s| s.seconds).sum::<f64>());
    // The gate passed the adapter against the base model: it is production now.
    let promote = &run.output["pipeline"]["deploy"]["promote"];
    assert_eq!(promote["decision"], "promoted", "{run:?}");
    assert_eq!(promote["previous"], "base");
    let version = promote["version"].as_str().unwrap().to_string();
    let slot = promote["slot"].as_str().unwrap().to_string();
    assert_eq!(production(&home, &slot).as_deref(), Some(version.as_str()));
    assert_eq!(run.output["pipeline"]["deploy"]["gate"]["pass"], true);
    let store = SqliteStore::open(cfg.home.store_db()).unwrap();
    let runs = store.training_runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, sam_store::RunState::Evaluated);
    drop(store);

    // A second tick with no new data: nothing.
    let before = files.history().unwrap().len();
    clock.advance(300);
    assert_eq!(step(&mut s), ["train"]);
    let h = files.history().unwrap();
    assert_eq!(h.len(), before + 1);
    assert_eq!(h.last().unwrap().outcome, JobOutcome::Idle);
    assert_eq!(h.last().unwrap().output["unseen"]["total"], 0);
    assert_eq!(SqliteStore::open(cfg.home.store_db()).unwrap().training_runs().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(sam_home::SamHome::new(&home).runs_dir()).unwrap().count(), 1);

    // The daemon restarted with a gate no adapter passes; 100 more examples:
    // it trains, the gate refuses, production stays where it was.
    drop(s);
    let mut strict = cfg.clone();
    strict.deploy.as_mut().unwrap().config.gate.margin = 0.9;
    let mut s = Scheduler::new(files.clone(), clock.clone());
    add_standard(&mut s, &settings, &strict);
    s.start().unwrap();
    ingest(&cfg.home.store_db(), 100, 100);
    clock.advance(300);
    assert_eq!(step(&mut s), ["train"]);
    let h = files.history().unwrap();
    let run = h.last().unwrap();
    assert_eq!(run.outcome, JobOutcome::Refused, "{run:?}");
    assert_eq!(run.output["unseen"]["total"], 100);
    assert_eq!(run.output["pipeline"]["deploy"]["gate"]["pass"], false);
    assert_eq!(run.output["pipeline"]["deploy"]["promote"]["decision"], "refused");
    assert!(run.steps.iter().any(|s| s.name == "gate" && s.status == StepStatus::Finished), "{run:?}");
    assert_eq!(production(&home, &slot).as_deref(), Some(version.as_str()));
    let st = files.load_state().unwrap();
    assert_eq!(
        (st.jobs["train"].last_outcome.clone(), st.jobs["train"].consecutive_failures),
        (Some(JobOutcome::Refused), 0)
    );
}

/// A store too small to hold out a test split the gate can judge on: the
/// trigger fires once, the pipeline trains and evaluates and registers
/// nothing — recorded as a refusal, not a failure — and the next checks
/// wait for new data instead of running the pipeline again.
#[test]
fn a_store_too_small_to_gate_is_refused_once_and_then_waits_for_new_data() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cfg = pipeline(&home);
    // No test share at all: what a store of a few dozen examples often gets
    // from the default 90/5/5 split.
    cfg.prep.split = "90,10,0".parse().unwrap();
    let clock = ManualClock::new(T0);
    let settings = ScheduleSection { randomized_delay_secs: 0, train_threshold: 10, ..Default::default() };
    let files = SchedulerFiles::of(&sam_home::SamHome::new(&home));
    let mut s = Scheduler::new(files.clone(), clock.clone());
    add_standard(&mut s, &settings, &cfg);
    s.start().unwrap();
    step(&mut s);
    ingest(&cfg.home.store_db(), 0, 20);
    clock.advance(300);
    assert_eq!(step(&mut s), ["train"]);
    let h = files.history().unwrap();
    let run = h.iter().rfind(|e| e.job == "train").unwrap();
    assert_eq!(run.outcome, JobOutcome::Refused, "{run:?}");
    let short = &run.output["pipeline"]["not_gated"];
    assert_eq!(short["need"], 2, "{run:?}");
    assert_eq!(short["test_examples"], 0, "{run:?}");
    assert!(run.output["pipeline"]["deploy"].is_null());
    let reg = sam_deploy::Registry::open(sam_home::SamHome::new(&home).registry_dir()).unwrap();
    assert!(reg.slots().unwrap().is_empty());

    // The next checks (past any retry backoff): nothing unseen, nothing run.
    for _ in 0..2 {
        clock.advance(3600);
        step(&mut s);
        let st = files.load_state().unwrap();
        assert_eq!(st.jobs["train"].last_outcome, Some(JobOutcome::Idle), "{:?}", st.jobs["train"]);
        assert_eq!(st.jobs["train"].consecutive_failures, 0);
    }
    assert_eq!(SqliteStore::open(cfg.home.store_db()).unwrap().training_runs().unwrap().len(), 1);
}
