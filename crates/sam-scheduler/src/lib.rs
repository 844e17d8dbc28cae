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
//!
//! The standard table over a home, driven by a test clock (the daemon,
//! [`Scheduler::run`], ticks the same way on the system clock until it is
//! stopped):
//!
//! ```
//! use sam_home::{SamHome, config::ScheduleSection};
//! use sam_scheduler::clock::ManualClock;
//! use sam_scheduler::{JobOutcome, PipelineConfig, Scheduler, SchedulerFiles};
//!
//! let dir = tempfile::tempdir()?;
//! let home = SamHome::new(dir.path());
//! let pipeline = PipelineConfig::new(dir.path(), "/models/base.gguf");
//! let settings = ScheduleSection { randomized_delay_secs: 0, ..Default::default() };
//! let clock = ManualClock::new(1_700_000_000);
//! let mut s = Scheduler::new(SchedulerFiles::of(&home), clock.clone());
//! sam_scheduler::jobs::add_standard(&mut s, &settings, &pipeline);
//! s.start()?;
//! s.tick()?; // the first start: every job is due
//! s.wait_idle()?;
//! let state = s.files().load_state()?;
//! // Nothing stored yet: the trigger counted no unseen examples and trained nothing.
//! assert_eq!(state.jobs["train"].last_outcome, Some(JobOutcome::Idle));
//! assert_eq!(state.jobs["mine"].runs, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod clock;
pub mod daemon;
pub mod jobs;
pub mod lock;
pub mod schedule;
pub mod task;
pub mod trigger;
pub mod units;

pub use daemon::{DaemonError, HistoryEntry, Scheduler, SchedulerFiles, SchedulerState, Tick};
pub use sam_pipeline::PipelineConfig;
pub use schedule::{JobState, Outcome as JobOutcome, Policy, Timing, Trigger};
