//! The one pipeline of sam, and (later) the scheduler that drives it.
//!
//! [`pipeline::run`] is the whole job as one library call — what `sam run`
//! calls, and what the scheduler's "enough new data" trigger will call:
//!
//! 1. **mine** the configured git repositories (history, markdown docs,
//!    documented code, through `sam_capture`'s sources, incrementally) and
//!    feed the [`samples`] captures through `sam_capture::capture::Capturer`,
//!    so that redaction, scoring and domains apply to them as to live ones;
//! 2. **clean**: validate new examples into tiers, remove same-question and
//!    near duplicates;
//! 3. **export** the gold, silver and bronze examples (recorded in the
//!    store's export history);
//! 4. **prep** the export for the base model (`sam_prep`);
//! 5. **train** a LoRA adapter as a `sam_trainer::Job` in its run folder
//!    (SFT, then DPO from the SFT adapter when the dataset has preference
//!    pairs and [`PipelineConfig::dpo`] is set), and record the run with its
//!    dataset manifest in the store;
//! 6. **evaluate** base and adapter on the held-out test split;
//! 7. **report**: a [`Summary`].
//!
//! Main types: [`PipelineConfig`] (with [`PipelineConfig::new`], the embedded
//! default sized for a 2-core laptop), the [`Progress`] observer,
//! [`Summary`], and [`PipelineState`], kept in `SAM_HOME/pipeline/state.json`
//! and rewritten atomically after every stage. Re-running after a crash
//! continues at the first unfinished stage (an interrupted training
//! continues its job from the last checkpoint); re-running when the export holds
//! nothing new trains nothing and ends with [`Outcome::NothingNew`].
//!
//! ```no_run
//! use sam_scheduler::{NoProgress, Outcome, PipelineConfig};
//!
//! let mut cfg = PipelineConfig::new("/tmp/sam-home", sam_models::default_test_model());
//! cfg.repos.push(".".into());
//! let summary = sam_scheduler::run(&cfg, &mut NoProgress)?;
//! if summary.outcome == Outcome::Trained {
//!     let eval = summary.eval.unwrap();
//!     println!("test loss: base {:.3}, adapter {:.3}", eval.base.loss, eval.adapter.unwrap().loss);
//! }
//! # Ok::<(), sam_scheduler::Error>(())
//! ```
//!
//! The periodic scheduler (mining, dedup, quality and export jobs with a
//! lock and free-memory checks under `SAM_HOME/scheduler/`) is not built yet.
#![deny(missing_docs)]

pub mod clock;
pub mod daemon;
mod error;
pub mod jobs;
pub mod lock;
pub mod pipeline;
pub mod samples;
pub mod schedule;
pub mod state;
pub mod task;
pub mod trigger;
pub mod units;

pub use daemon::{DaemonError, HistoryEntry, Scheduler, SchedulerFiles, SchedulerState, Tick};
pub use error::{Error, Result};
pub use pipeline::{NoProgress, Paths, PipelineConfig, Progress, Summary, run};
pub use schedule::{JobState, Outcome as JobOutcome, Policy, Timing, Trigger};
pub use state::{
    CleanReport, ExportInfo, MineReport, Outcome, PipelineState, PrepInfo, SourceReport, Stage, TrainInfo,
};
