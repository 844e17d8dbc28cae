//! The summary of a pipeline run: what `sam run` prints (and, with
//! `--json`, prints as this type's JSON).

use std::path::PathBuf;

use sam_trainer::EvalReport;
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::error::Result;
use crate::stages::{
    CleanReport, CleanStage, DeployReport, EvaluateStage, ExportInfo, ExportStage, GateStage, MineReport, MineStage,
    NotGated, PrepInfo, PrepStage, PromoteStage, RegisterStage, Registered, TrainInfo, TrainStage,
};
use crate::state::{Outcome, PipelineState};

/// Where the pipeline's files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paths {
    /// SAM_HOME.
    pub home: PathBuf,
    /// The store.
    pub store: PathBuf,
    /// The pipeline's state file.
    pub state: PathBuf,
    /// The run's events file.
    pub events: PathBuf,
    /// The export file.
    pub export: Option<PathBuf>,
    /// The dataset folder.
    pub dataset: Option<PathBuf>,
    /// The run folder.
    pub run: Option<PathBuf>,
    /// The adapter folder.
    pub adapter: Option<PathBuf>,
    /// The adapter folder the assistant loads after the run (`sam deploy
    /// which`), when the run went through the promote stage and something
    /// is in production.
    pub production: Option<PathBuf>,
}

/// What a pipeline run did: the outputs of its stages plus where things are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The pipeline run's id.
    pub id: String,
    /// Trained, or nothing new to train on.
    pub outcome: Outcome,
    /// The first stage this invocation ran when it continued an interrupted run.
    pub resumed_at: Option<String>,
    /// Stages finished by an earlier, interrupted invocation and skipped now.
    pub skipped_stages: Vec<String>,
    /// The stages that finished, in order.
    pub stages: Vec<String>,
    /// The base model.
    pub model: PathBuf,
    /// Mining.
    pub mine: Option<MineReport>,
    /// Validation and deduplication.
    pub clean: Option<CleanReport>,
    /// The export.
    pub export: Option<ExportInfo>,
    /// The dataset.
    pub prep: Option<PrepInfo>,
    /// Training.
    pub train: Option<TrainInfo>,
    /// Base vs adapter on the held-out test split.
    pub eval: Option<EvalReport>,
    /// Registration, the gate's verdict and the rollout (`None`: the run
    /// did not get there, or deployment is off).
    pub deploy: Option<DeployReport>,
    /// The adapter was not registered or gated: too few held-out test
    /// examples (an outcome, like a refusal; production is as it was).
    #[serde(default)]
    pub not_gated: Option<NotGated>,
    /// Files.
    pub paths: Paths,
    /// Wall time of this invocation, seconds.
    pub seconds: f64,
}

impl Summary {
    /// The summary of the run in `st`.
    pub(crate) fn new(cfg: &PipelineConfig, st: &PipelineState, skipped: Vec<String>, seconds: f64) -> Result<Self> {
        let export: Option<ExportInfo> = st.output(ExportStage::NAME)?;
        let prep: Option<PrepInfo> = st.output(PrepStage::NAME)?;
        let train: Option<TrainInfo> = st.output(TrainStage::NAME)?;
        let register: Option<Registered> = st.output(RegisterStage::NAME)?;
        let (deploy, not_gated) = match register {
            Some(Registered::Version(register)) => {
                let gate: Option<Option<_>> = st.output(GateStage::NAME)?;
                let report = DeployReport { register, gate: gate.flatten(), promote: st.output(PromoteStage::NAME)? };
                (Some(report), None)
            }
            Some(Registered::NotGated(n)) => (None, Some(n)),
            Some(Registered::Off) | None => (None, None),
        };
        let production = deploy.as_ref().and_then(|d| d.promote.as_ref()).and_then(|p| p.load.clone());
        let home = &cfg.home;
        Ok(Summary {
            id: st.id.clone(),
            outcome: st.outcome.unwrap_or(Outcome::NothingNew),
            resumed_at: st.resumed_at.clone(),
            skipped_stages: skipped,
            stages: st.stages.iter().map(|r| r.stage.clone()).collect(),
            model: cfg.model.clone(),
            mine: st.output(MineStage::NAME)?,
            clean: st.output(CleanStage::NAME)?,
            eval: st.output(EvaluateStage::NAME)?,
            paths: Paths {
                home: home.root().to_path_buf(),
                store: home.store_db(),
                state: home.pipeline_state(),
                events: home.pipeline_events(&st.id),
                export: export.as_ref().map(|e| e.path.clone()),
                dataset: prep.as_ref().map(|p| p.dir.clone()),
                run: train.as_ref().map(|t| t.run_dir.clone()),
                adapter: train.as_ref().map(|t| t.adapter_dir.clone()),
                production,
            },
            deploy,
            not_gated,
            export,
            prep,
            train,
            seconds,
        })
    }
}
