//! Run folders for sam's training jobs: what a run looks like on disk and the
//! small pieces that make a long job observable and safe.
//!
//! - [`RunDir`]: `SAM_HOME/runs/<id>/` with `config.json`, `status.json`
//!   ([`RunStatus`]), `metrics.jsonl` ([`MetricRecord`]), `events.jsonl`
//!   ([`Event`]), `checkpoints/`, `adapter/`, `eval.json` and `loss.svg`.
//!   Status and files are replaced atomically (temporary file + rename);
//!   appended lines survive a crash except a torn last line, which readers
//!   skip.
//! - [`Eta`]: time left from a rolling window of step times.
//! - [`MemoryGuard`]: pauses between steps while available memory is below a
//!   threshold and resumes above a higher one; the [`MemoryProbe`] trait lets
//!   tests drive it; [`available_memory`] reads the machine's free memory.
//! - [`loss_svg`]: train and validation loss curves as a standalone SVG.
//!
//! ```
//! use sam_runs::{EventKind, MetricRecord, RunDir, RunStatus};
//!
//! let home = tempfile::tempdir()?;
//! let run = RunDir::create(&home.path().join("runs"), &sam_runs::new_run_id(), &serde_json::json!({"iters": 2}))?;
//! run.set_status(RunStatus::Running, None, 0, 2)?;
//! for step in 1..=2 {
//!     run.append_metric(&MetricRecord { step, train_loss: Some(3.0 / step as f64), ..Default::default() })?;
//! }
//! run.append_event(EventKind::Completed, 2, "")?;
//! run.set_status(RunStatus::Completed, None, 2, 2)?;
//! run.write_loss_svg()?;
//! assert!(run.loss_svg_path().exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate knows nothing about models or the store: the trainer writes
//! into a run folder; the CLI and the scheduler read it.
#![deny(missing_docs)]

mod eta;
mod memory;
mod plot;
mod run_dir;

use std::path::{Path, PathBuf};

pub use eta::{Eta, format_duration};
pub use memory::{
    GuardEvent, MemoryGuard, MemoryGuardConfig, MemoryProbe, SystemProbe, available_memory, current_rss, peak_rss,
};
pub use plot::{loss_svg, nice_ticks, tick_label};
pub use run_dir::{
    Event, EventKind, MetricRecord, RunDir, RunStatus, StatusFile, new_run_id, process_alive, unix_now,
    write_json_atomic,
};

/// Errors of run-folder handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file could not be read or written.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A bad line in a JSONL file.
    #[error("{}:{line}: {source}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The cause.
        source: serde_json::Error,
    },
    /// The folder holds no run.
    #[error("{}: not a run folder (no status.json)", .0.display())]
    NotARun(PathBuf),
    /// A run with this id exists already.
    #[error("{}: a run with this id exists already", .0.display())]
    Exists(PathBuf),
    /// The id cannot name a folder.
    #[error("{0:?} is not a valid run id (use letters, digits, - and _)")]
    BadId(String),
}

impl RunError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        RunError::Io { path: path.to_path_buf(), source }
    }
}
