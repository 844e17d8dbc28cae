//! The seam between the daemon and the work: a [`Task`] is what one job
//! does when it runs.
//!
//! The daemon owns timing, locking, memory checks, panics and records; a
//! task only does its work and says how it went in a [`TaskReport`]. The
//! jobs sam ships are in [`crate::jobs`]; an embedder adds its own with
//! [`crate::Scheduler::add`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// What a task is handed when it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Set when the daemon is asked to stop: finish the current unit of work
    /// (a store transaction, a training step and its checkpoint) and return
    /// [`Done::Stopped`].
    pub stop: Arc<AtomicBool>,
    /// Run even when the task would find nothing to do (`sam schedule run JOB --force`).
    pub force: bool,
    /// The scheduler's time at the start of the run (Unix seconds).
    pub now: i64,
}

impl TaskContext {
    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Done {
    /// The work was done.
    Succeeded,
    /// There was nothing to do.
    Idle,
    /// The result was refused on purpose (the gate refused the adapter).
    Refused,
    /// Stopped at a safe point on request; the next run continues.
    Stopped,
}

/// One step of a run (a pipeline stage, a source mined), with its duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The step's name (`mine`, `train`, `gate`, a source's name…).
    pub name: String,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// Finished, skipped or failed.
    pub status: StepStatus,
    /// What it produced (counts, ids, the verdict…), as the step reports it.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
}

/// How a [`Step`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It ran to its end.
    Finished,
    /// It was not run (finished by an earlier run, nothing new…).
    Skipped,
    /// It was cut short (an error, a stop).
    Unfinished,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// How it ended.
    pub done: Done,
    /// Its steps, in order, with their durations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// What it produced, as data (counts, the pipeline's summary…).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
}

impl TaskReport {
    /// A report with no steps.
    pub fn new(done: Done, output: serde_json::Value) -> Self {
        Self { done, steps: Vec::new(), output }
    }
}

/// A task's error: anything that implements `std::error::Error` (its
/// causes are recorded too).
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// The work of one job.
///
/// ```
/// use sam_scheduler::task::{Done, Task, TaskContext, TaskError, TaskReport};
///
/// struct Hello;
/// impl Task for Hello {
///     fn run(&mut self, _ctx: &TaskContext) -> Result<TaskReport, TaskError> {
///         Ok(TaskReport::new(Done::Succeeded, serde_json::json!({ "greeted": 1 })))
///     }
/// }
/// ```
pub trait Task: Send {
    /// Bytes of free memory the run needs; the daemon defers the run (and
    /// records the deferral) while less is available. Called just before
    /// each run, so it may look at what the run would do (the training
    /// trigger declares the training's need only when it would train).
    fn memory_needed(&mut self, _ctx: &TaskContext) -> u64 {
        0
    }

    /// Do the work. Return [`Done::Stopped`] after a stop request when the
    /// work was cut short at a safe point.
    fn run(&mut self, ctx: &TaskContext) -> Result<TaskReport, TaskError>;
}

/// The error text recorded for a failed run: the error and its causes,
/// joined by `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}
