//! The stages of sam's pipeline, each in its own module, each a call into
//! the crate that owns the work: [`MineStage`] (sam-capture), [`CleanStage`]
//! and [`ExportStage`] (sam-store), [`PrepStage`] (sam-prep),
//! [`TrainStage`] and [`EvaluateStage`] (sam-trainer), [`ReportStage`]
//! (the run record in the store), then [`RegisterStage`], [`GateStage`] and
//! [`PromoteStage`] (sam-deploy: the registry, the gate, promotion or canary).

mod clean;
mod deploy;
mod evaluate;
mod export;
mod mine;
mod prep;
mod report;
mod train;

pub use clean::{CleanReport, CleanStage};
pub use deploy::{
    Decision, DeployReport, DeploySettings, GateInfo, GateStage, NotGated, PromoteInfo, PromoteStage, RegisterInfo,
    RegisterStage, Registered, Rollout,
};
pub use evaluate::EvaluateStage;
pub use export::{ExportInfo, ExportStage};
pub use mine::{MineReport, MineStage, SourceReport};
pub use prep::{PrepInfo, PrepStage};
pub use report::{ReportInfo, ReportStage};
pub use train::{DpoInfo, DpoOutcome, TrainInfo, TrainStage};
