//! The closed loop with a test clock and the real test model: 100 new
//! eligible examples are ingested → the trigger fires → a short training
//! run → evaluation; a second tick with no new data does nothing; the
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
    cfg.train.save_every = 1;
    cfg.train.max_seq_len = 64;
    cfg.prep.max_seq_len = 64;
    cfg.dpo = None;
    cfg.max_eval_examples = Some(3);
    cfg.max_valid_examples = Some(3);
    cfg
}

/// One step of the daemon loop at the clock's time: start what is due, let it end, record it.
fn step(s: &mut Scheduler) -> Vec<String> {
    let started = s.tick().unwrap().started;
    s.wait_idle().unwrap();
    started
}

#[test]
fn new_data_triggers_a_training_and_no_new_data_does_nothing() {
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
    // Trained and evaluated; where the pipeline gates (its deploy stages),
    // two steps may not beat the base model by the default margin.
    assert!(matches!(run.outcome, JobOutcome::Succeeded | JobOutcome::Refused), "{run:?}");
    assert_eq!(run.output["unseen"]["total"], 100);
    let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
    // Every stage of the one pipeline (the same list `sam run` runs), timed.
    assert_eq!(names, sam_pipeline::Pipeline::standard().names(), "{run:?}");
    assert!(names.starts_with(&["mine", "clean", "export", "prep", "train", "evaluate"]), "{names:?}");
    assert!(run.steps.iter().all(|s| s.status == StepStatus::Finished), "{run:?}");
    assert!(run.steps.iter().any(|s| s.name == "train" && s.seconds > 0.0), "{run:?}");
    assert!(run.seconds >= run.steps.iter().map(|s| s.seconds).sum::<f64>());
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
}
