//! Typed events: what a pipeline run tells its caller, and what it appends
//! to its events file for other processes to follow.
//!
//! The pipeline emits [`Event`]s and nothing else: no sentences. The CLI
//! turns them into progress bars and lines; the events file
//! (`SamHome::pipeline_events`, one JSON object per line) lets another
//! process replay a run or follow it live with an [`EventReader`].
//!
//! ```
//! use sam_pipeline::event::{Event, EventLog, EventReader};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("run.jsonl");
//! let mut log = EventLog::open(&path);
//! log.append(&Event::StageStarted { stage: "mine".into(), index: 0, total: 7 });
//! let mut reader = EventReader::new(&path);
//! let events = reader.read_new()?;
//! assert!(matches!(&events[0], Event::StageStarted { stage, .. } if stage == "mine"));
//! assert!(reader.read_new()?.is_empty()); // nothing new since
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use sam_home::SamHome;
use sam_trainer::{EvalMetrics, PreferenceStats, StepMetrics};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::Outcome;
use crate::summary::Summary;

/// One thing that happened in a pipeline run.
///
/// Serialised with an `event` tag: `{"event":"stage_started","stage":"mine",…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A run starts, or continues an interrupted one.
    RunStarted {
        /// The pipeline run's id.
        id: String,
        /// Its stages, in order.
        stages: Vec<String>,
        /// The first stage this invocation runs, when it continues an
        /// interrupted run.
        resumed_at: Option<String>,
    },
    /// A stage starts.
    StageStarted {
        /// The stage.
        stage: String,
        /// Its position (from 0) in the run's stages.
        index: usize,
        /// How many stages the run has.
        total: usize,
    },
    /// Work done within the running stage (`total` 0: unknown).
    Progress {
        /// The stage.
        stage: String,
        /// Done so far.
        done: u64,
        /// Out of.
        total: u64,
    },
    /// A stage finished; `output` is its typed output as JSON (the stage's
    /// `Output` type reads it back).
    StageFinished {
        /// The stage.
        stage: String,
        /// Its position (from 0) in the run's stages.
        index: usize,
        /// How many stages the run has.
        total: usize,
        /// What it produced.
        output: serde_json::Value,
        /// Wall seconds it took.
        seconds: f64,
    },
    /// A stage was not run.
    StageSkipped {
        /// The stage.
        stage: String,
        /// Its position (from 0) in the run's stages.
        index: usize,
        /// How many stages the run has.
        total: usize,
        /// Why.
        reason: SkipReason,
    },
    /// A stage failed; the run stops and can be run again.
    StageFailed {
        /// The stage.
        stage: String,
        /// The error, as its library reports it.
        error: String,
    },
    /// A training phase (`sft`, `dpo`) starts, or continues from a checkpoint.
    TrainPhase {
        /// The phase.
        phase: String,
        /// Its optimiser steps in all.
        total_steps: usize,
    },
    /// A training step finished.
    TrainStep {
        /// The phase.
        phase: String,
        /// The step's metrics.
        metrics: StepMetrics,
    },
    /// A validation pass during training finished.
    Validation {
        /// The phase.
        phase: String,
        /// Its metrics.
        metrics: EvalMetrics,
    },
    /// Preference metrics of a DPO step (`split` `train`) or validation (`valid`).
    Preference {
        /// `train` or `valid`.
        split: String,
        /// The step after which they were measured.
        step: usize,
        /// Loss, rewards, margin, accuracy.
        stats: PreferenceStats,
    },
    /// Something the user should know; the run goes on.
    Warning(Warning),
    /// The run ended (also when it found nothing new).
    Finished(Box<Summary>),
}

/// Why a stage was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// An earlier, interrupted invocation of this run finished it.
    FinishedEarlier,
    /// An earlier stage ended the run with this outcome.
    RunEnded {
        /// The outcome.
        outcome: Outcome,
    },
}

/// Something worth telling the user, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "warning", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Warning {
    /// An interrupted training run continues from its last checkpoint.
    TrainingContinued {
        /// The training run.
        run_id: String,
    },
    /// Training paused between steps: too little memory available.
    MemoryPaused {
        /// Bytes available.
        available_bytes: u64,
    },
    /// Training resumed.
    MemoryResumed {
        /// Bytes available.
        available_bytes: u64,
    },
    /// The test split is empty: the evaluate stage scores this split instead.
    EvaluatedOn {
        /// The split used.
        split: String,
    },
    /// The test and validation splits are both empty (a small store):
    /// nothing was scored, and the adapter is not gated.
    NothingHeldOut,
    /// The events file could not be written (the run goes on).
    EventsNotWritten {
        /// The file.
        path: PathBuf,
        /// The error.
        error: String,
    },
}

/// Receives a run's events as they happen.
pub trait EventSink {
    /// One event.
    fn event(&mut self, event: &Event);
}

impl<F: FnMut(&Event)> EventSink for F {
    fn event(&mut self, event: &Event) {
        self(event)
    }
}

/// An [`EventSink`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&mut self, _event: &Event) {}
}

/// An [`EventSink`] that keeps every event (for tests and for callers that
/// look at a run afterwards).
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    /// The events, in order.
    pub events: Vec<Event>,
}

impl EventSink for Recorder {
    fn event(&mut self, event: &Event) {
        self.events.push(event.clone());
    }
}

/// Appends events to a run's events file, one JSON line each (a single
/// write per line, so a reader never sees half of one).
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    failed: bool,
}

impl EventLog {
    /// The log at `path` (created, with its folder, on the first event).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), failed: false }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event. A failure is returned once (as a warning to show)
    /// and then the log stays quiet: a run does not stop because its events
    /// file cannot be written.
    pub fn append(&mut self, event: &Event) -> Option<Warning> {
        if self.failed {
            return None;
        }
        let res = serde_json::to_vec(event).map_err(std::io::Error::other).and_then(|line| {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            sam_home::atomic::append_line(&self.path, &line)
        });
        match res {
            Ok(()) => None,
            Err(e) => {
                self.failed = true;
                Some(Warning::EventsNotWritten { path: self.path.clone(), error: e.to_string() })
            }
        }
    }
}

/// Reads a run's events file: all of it, then whatever was appended since
/// ([`EventReader::read_new`]), so another process can follow a run live.
#[derive(Debug, Clone)]
pub struct EventReader {
    tail: sam_home::atomic::Tail,
}

impl EventReader {
    /// A reader of the events file at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { tail: sam_home::atomic::Tail::new(path) }
    }

    /// A reader of pipeline run `id`'s events under `home`.
    pub fn for_run(home: &SamHome, id: &str) -> Self {
        Self::new(home.pipeline_events(id))
    }

    /// A reader of the latest pipeline run's events under `home` (the run
    /// in progress, or the last one), when there is one.
    pub fn latest(home: &SamHome) -> Result<Option<Self>> {
        Ok(crate::state::PipelineState::load(home)?.map(|s| Self::for_run(home, &s.id)))
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        self.tail.path()
    }

    /// The events appended since the last call (all of them on the first).
    /// A line being written is returned once complete; a line that does not
    /// parse is an error naming the file and line.
    pub fn read_new(&mut self) -> Result<Vec<Event>> {
        let path = self.tail.path().to_path_buf();
        let lines = self.tail.read_new().map_err(|e| Error::io(&path, e))?;
        lines
            .into_iter()
            .map(|(line, text)| {
                serde_json::from_str(&text).map_err(|source| Error::EventLine { path: path.clone(), line, source })
            })
            .collect()
    }
}
