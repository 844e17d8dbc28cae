//! Report: the training run recorded in the store as evaluated, with its
//! training and evaluation figures. (The summary itself is the driver's.)

use sam_store::{RunState, RunUpdate};
use sam_trainer::EvalReport;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::stage::{Context, Flow, Stage};
use crate::stages::{EvaluateStage, TrainInfo, TrainStage};

/// The report stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInfo {
    /// The training run recorded.
    pub run_id: String,
    /// Its state in the store's training runs.
    pub state: RunState,
}

/// The report stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReportStage;

impl ReportStage {
    /// Its name.
    pub const NAME: &'static str = "report";
}

impl Stage for ReportStage {
    type Output = ReportInfo;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<ReportInfo>> {
        let train: TrainInfo = cx.output(TrainStage::NAME)?;
        let eval: EvalReport = cx.output(EvaluateStage::NAME)?;
        let mut metrics = serde_json::to_value(&train).unwrap_or_default();
        metrics["eval"] = serde_json::to_value(&eval).unwrap_or_default();
        let state = RunState::Evaluated;
        cx.store().record_run(RunUpdate { metrics: Some(metrics), ..RunUpdate::new(&train.run_id, state) })?;
        Ok(Flow::Next(ReportInfo { run_id: train.run_id, state }))
    }
}
