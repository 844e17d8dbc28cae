//! Train: a LoRA adapter as a `sam_trainer::Job` in its run folder — SFT,
//! then DPO from the SFT adapter when the dataset has preference pairs —
//! recorded in the store's training runs. An interrupted training continues
//! in its own run folder from its last checkpoint; one finished meanwhile
//! outside the pipeline (`sam runs resume`) is taken as it is.

use std::path::PathBuf;
use std::time::Instant;

use sam_models::BaseModel;
use sam_runs::{GuardEvent, RunDir};
use sam_store::{RunState, RunUpdate};
use sam_trainer::{
    Decoder, Duration, EvalMetrics, Job, JobControl, JobMode, JobOutcome, JobSpec, Observer, PreferenceMetrics,
    PreferenceStats, StepMetrics, TrainConfig,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Event, Warning};
use crate::stage::{Context, Emit, Flow, Stage};
use crate::stages::{PrepInfo, PrepStage};

/// The train stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainInfo {
    /// The run's id.
    pub run_id: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The adapter (PEFT layout).
    pub adapter_dir: PathBuf,
    /// SFT optimiser steps.
    pub steps: u64,
    /// Training examples.
    pub examples: u64,
    /// Tokens processed.
    pub tokens: u64,
    /// Wall time of training, seconds.
    pub seconds: f64,
    /// Mean SFT throughput.
    pub tokens_per_s: f64,
    /// Training loss of the last SFT step.
    pub final_train_loss: f64,
    /// Validation loss before training.
    pub initial_val_loss: Option<f64>,
    /// Best validation loss (its adapter was kept).
    pub best_val_loss: Option<f64>,
    /// The checkpoint (phase and step) an interrupted training continued
    /// from, when it did.
    #[serde(default)]
    pub resumed_from: Option<(String, u64)>,
    /// Preference pairs in the dataset's training split.
    pub preference_pairs: u64,
    /// What became of them.
    pub dpo: DpoOutcome,
}

/// What became of the dataset's preference pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DpoOutcome {
    /// The dataset has none.
    NoPairs,
    /// DPO is turned off in the configuration; the pairs were left.
    Off,
    /// DPO trained on them.
    Trained(DpoInfo),
}

impl DpoOutcome {
    /// The DPO phase, when it ran.
    pub fn phase(&self) -> Option<&DpoInfo> {
        match self {
            DpoOutcome::Trained(d) => Some(d),
            _ => None,
        }
    }
}

/// The DPO phase of the train stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoInfo {
    /// Optimiser steps.
    pub steps: u64,
    /// Training pairs.
    pub pairs: u64,
    /// Validation DPO loss before the phase (the SFT adapter against itself: ln 2).
    pub initial_val_loss: Option<f64>,
    /// Best validation DPO loss.
    pub best_val_loss: Option<f64>,
    /// Validation reward accuracy at the last validation.
    pub val_reward_accuracy: Option<f64>,
    /// Validation reward margin at the last validation.
    pub val_reward_margin: Option<f64>,
    /// Reward accuracy of the last step's training pairs.
    #[serde(default)]
    pub last_step_reward_accuracy: Option<f64>,
    /// Reward margin of the last step's training pairs.
    #[serde(default)]
    pub last_step_reward_margin: Option<f64>,
}

/// The trained model, handed on to the evaluate stage so that it need not
/// load it again.
pub(crate) struct TrainedModel(pub Decoder);

/// The train stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainStage;

impl TrainStage {
    /// Its name.
    pub const NAME: &'static str = "train";
    /// The mark holding the training run's id once it has started.
    const RUN_MARK: &'static str = "train.run_id";
}

impl Stage for TrainStage {
    type Output = TrainInfo;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<TrainInfo>> {
        let prep: PrepInfo = cx.output(PrepStage::NAME)?;
        let train = train_config(cx, &prep)?;
        let job = open_job(cx, &prep, &train)?;
        let run_id = job.run_dir().id().to_string();
        let update = |state| RunUpdate {
            dataset_path: Some(prep.dir.clone()),
            manifest_hash: Some(prep.manifest_hash.clone()),
            ..RunUpdate::new(&run_id, state)
        };
        cx.store().record_run(update(RunState::Running))?;
        let t0 = Instant::now();
        let ctl = JobControl { stop: cx.config().stop.as_deref(), probe: None };
        let mut fwd = Forward::new(cx.events());
        let outcome = match job.run(&mut fwd, ctl) {
            Ok(o) => o,
            Err(e) => {
                let _ = cx.store().record_run(update(RunState::Failed));
                return Err(e.into());
            }
        };
        if outcome.status == sam_runs::RunStatus::Stopped {
            cx.store().record_run(update(RunState::Stopped))?;
            return Err(Error::Stopped { stage: TrainStage::NAME.into(), run_id: Some(run_id) });
        }
        let (valid, last) = (fwd.last_valid, fwd.last_train);
        let info = train_info(&job, &outcome, &prep, t0.elapsed().as_secs_f64(), valid, last)?;
        cx.store().record_run(RunUpdate {
            adapter_path: Some(info.adapter_dir.clone()),
            metrics: Some(serde_json::to_value(&info).unwrap_or_default()),
            ..update(RunState::Trained)
        })?;
        if let Some(m) = outcome.model {
            cx.share(TrainedModel(m));
        }
        Ok(Flow::Next(info))
    }
}

/// The training settings for this dataset: the configured ones with the
/// dataset's padding id and the base model's name.
fn train_config(cx: &mut Context<'_>, prep: &PrepInfo) -> Result<TrainConfig> {
    let cfg = cx.config();
    let name = match cx.shared::<BaseModel>() {
        Some(b) => b.name(),
        None => BaseModel::open(&cfg.model)?.name(),
    };
    let mut train = cfg.train.clone();
    train.batch.pad_id = prep.pad_id;
    train.output.base_model = Some(name);
    Ok(train)
}

/// The run's job: the interrupted one when there is one (its id is marked
/// in the state file before it starts), else a new one.
fn open_job(cx: &mut Context<'_>, prep: &PrepInfo, train: &TrainConfig) -> Result<Job> {
    let home = cx.home();
    if let Some(old) = cx.mark::<String>(TrainStage::RUN_MARK)
        && let Ok(run) = RunDir::open(home.run_dir(&old))
    {
        cx.events().warn(Warning::TrainingContinued { run_id: old.clone() });
        // Finished outside the pipeline (`sam runs resume` after a stop):
        // the job, opened again, finds every phase done and hands back its
        // adapter without training a step.
        let st = run.status()?;
        if st.status == sam_runs::RunStatus::Completed {
            run.set_status(
                sam_runs::RunStatus::Stopped,
                Some("completed outside the pipeline".into()),
                st.step,
                st.total_steps,
            )?;
        }
        return Ok(Job::open(&home.run_dir(&old))?);
    }
    let id = sam_runs::new_run_id();
    cx.set_mark(TrainStage::RUN_MARK, &id)?;
    let cfg = cx.config();
    let mode = match cfg.dpo {
        Some(_) if prep.preference[0] > 0 => JobMode::SftDpo,
        _ => JobMode::Sft,
    };
    let mut spec = JobSpec::new(&cfg.model, &prep.dir, mode);
    spec.train = train.clone();
    spec.max_valid_examples = cfg.max_valid_examples;
    // The evaluate stage scores the adapter.
    spec.eval_examples = None;
    if let Some(d) = &cfg.dpo {
        spec.dpo = d.config;
        spec.dpo_lr = Some(d.lr);
        spec.dpo_duration = Some(Duration::Iters(d.steps));
    }
    Ok(Job::create(&home.runs_dir(), &id, spec)?)
}

/// The train stage's output from the job's outcome and its run folder.
fn train_info(
    job: &Job,
    outcome: &JobOutcome,
    prep: &PrepInfo,
    seconds: f64,
    last_valid: Option<PreferenceStats>,
    last_train: Option<PreferenceStats>,
) -> Result<TrainInfo> {
    let sft = outcome.sft.as_ref().ok_or_else(|| Error::NoData("the SFT phase did not run".into()))?;
    let run = RunDir::open(job.run_dir().path())?;
    let tokens = run.metrics()?.iter().filter_map(|m| m.tokens_seen).max().unwrap_or(0);
    let pairs = prep.preference[0];
    let dpo = match (&outcome.dpo, pairs) {
        (_, 0) => DpoOutcome::NoPairs,
        (None, _) => DpoOutcome::Off,
        (Some(d), _) => DpoOutcome::Trained(DpoInfo {
            steps: d.steps as u64,
            pairs,
            initial_val_loss: d.initial_val_loss,
            best_val_loss: d.best_val_loss,
            val_reward_accuracy: last_valid.map(|s| s.accuracy),
            val_reward_margin: last_valid.map(|s| s.margin),
            last_step_reward_accuracy: last_train.map(|s| s.accuracy),
            last_step_reward_margin: last_train.map(|s| s.margin),
        }),
    };
    Ok(TrainInfo {
        run_id: run.id().to_string(),
        run_dir: run.path().to_path_buf(),
        adapter_dir: outcome.adapter_dir.clone(),
        steps: sft.steps as u64,
        examples: prep.sft[0],
        tokens,
        seconds,
        tokens_per_s: sft.tokens_per_s,
        final_train_loss: sft.final_train_loss,
        initial_val_loss: sft.initial_val_loss,
        best_val_loss: sft.best_val_loss,
        resumed_from: outcome.resumed_from.clone().map(|(p, s)| (p, s as u64)),
        preference_pairs: pairs,
        dpo,
    })
}

/// Turns the trainer's observations into events, and keeps the DPO phase's
/// last preference statistics for the output.
struct Forward<'e, 'a> {
    events: &'e mut (dyn Emit + 'a),
    phase: &'static str,
    last_valid: Option<PreferenceStats>,
    last_train: Option<PreferenceStats>,
}

impl<'e, 'a> Forward<'e, 'a> {
    fn new(events: &'e mut (dyn Emit + 'a)) -> Self {
        Self { events, phase: "sft", last_valid: None, last_train: None }
    }
}

impl Observer for Forward<'_, '_> {
    fn on_phase(&mut self, phase: &'static str) {
        self.phase = phase;
    }
    fn on_start(&mut self, total_steps: usize, _train_examples: usize) {
        self.events.emit(Event::TrainPhase { phase: self.phase.to_string(), total_steps });
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.events.emit(Event::TrainStep { phase: self.phase.to_string(), metrics: m.clone() });
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        self.events.emit(Event::Validation { phase: self.phase.to_string(), metrics: m.clone() });
    }
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        if m.split == "valid" {
            self.last_valid = Some(m.stats);
        } else {
            self.last_train = Some(m.stats);
        }
        self.events.emit(Event::Preference { split: m.split.to_string(), step: m.step, stats: m.stats });
    }
    fn on_memory(&mut self, e: &GuardEvent) {
        self.events.warn(match e {
            GuardEvent::Paused(b) => Warning::MemoryPaused { available_bytes: *b },
            GuardEvent::Resumed(b) => Warning::MemoryResumed { available_bytes: *b },
        });
    }
}
