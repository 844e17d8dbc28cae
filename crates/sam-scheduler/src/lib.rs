//! sam's scheduler daemon: periodic jobs over one SAM_HOME — mining,
//! deduplication, validation, export — and the training trigger that runs
//! the one pipeline (`sam_pipeline::run`, the same call `sam run` makes)
//! once enough eligible examples no training run has seen are in the store.
//!
//! Main types: [`Scheduler`] (the daemon's loop over [`task::Task`]s, with
//! an injectable [`clock`], a single-instance [`lock`], persistent
//! [`JobState`]s and history in [`SchedulerFiles`] under
//! `SamHome::scheduler_dir`), [`jobs::add_standard`] (the standard job
//! table), [`trigger::TrainTrigger`], and [`units`] (systemd and launchd
//! service files).
#![deny(missing_docs)]

pub mod clock;
pub mod daemon;
mod error;
pub mod jobs;
pub mod lock;
pub mod schedule;
pub mod task;
pub mod trigger;
pub mod units;

pub use daemon::{DaemonError, HistoryEntry, Scheduler, SchedulerFiles, SchedulerState, Tick};
pub use error::{Error, Result};
pub use sam_pipeline::PipelineConfig;
pub use schedule::{JobState, Outcome as JobOutcome, Policy, Timing, Trigger};
