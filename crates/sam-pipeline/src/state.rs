//! The pipeline's state file: one run, its finished stages and their outputs.
//!
//! `SamHome::pipeline_state` holds the run in progress (or the last one,
//! once finished). The driver rewrites it atomically after every stage, so a
//! run killed at any point resumes at the first stage that had not
//! finished. Finished runs are also appended to `SamHome::pipeline_history`.
//!
//! Stage outputs are kept as JSON under the stage's name; [`PipelineState::output`]
//! reads one back as its stage's typed output.

use std::collections::BTreeMap;

use sam_home::SamHome;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a pipeline run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Every stage ran: an adapter was trained and evaluated.
    Trained,
    /// The export held nothing the last trained run had not seen: nothing
    /// was trained.
    NothingNew,
}

/// A finished stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage.
    pub stage: String,
    /// Its output.
    pub output: serde_json::Value,
    /// Wall seconds it took.
    pub seconds: f64,
}

/// The state file: one pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    /// The pipeline run's id (also its dataset folder's, export's and events
    /// file's name).
    pub id: String,
    /// When it started (Unix seconds).
    pub started_at: u64,
    /// When the state was last written.
    pub updated_at: u64,
    /// How it ended, once it has.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// The first stage run by the invocation that continued this run after
    /// an interruption, when one did.
    #[serde(default)]
    pub resumed_at: Option<String>,
    /// The finished stages, in order.
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    /// What a stage recorded before it finished, to find again when the
    /// run continues (the train stage's run id).
    #[serde(default)]
    pub marks: BTreeMap<String, serde_json::Value>,
    /// The stage outputs of the last run that went through every stage:
    /// what "nothing new" is measured against.
    #[serde(default)]
    pub baseline: BTreeMap<String, serde_json::Value>,
}

impl PipelineState {
    pub(crate) fn new(id: String, baseline: BTreeMap<String, serde_json::Value>) -> Self {
        let now = sam_runs::unix_now();
        Self {
            id,
            started_at: now,
            updated_at: now,
            outcome: None,
            resumed_at: None,
            stages: Vec::new(),
            marks: BTreeMap::new(),
            baseline,
        }
    }

    /// Whether `stage` finished.
    pub fn finished(&self, stage: &str) -> bool {
        self.stages.iter().any(|r| r.stage == stage)
    }

    /// The output of `stage` as its typed output, when the stage finished.
    pub fn output<T: DeserializeOwned>(&self, stage: &str) -> Result<Option<T>> {
        match self.stages.iter().find(|r| r.stage == stage) {
            Some(r) => serde_json::from_value(r.output.clone())
                .map(Some)
                .map_err(|source| Error::Output { stage: stage.to_string(), source }),
            None => Ok(None),
        }
    }

    /// The outputs of every finished stage, by name.
    pub fn outputs(&self) -> BTreeMap<String, serde_json::Value> {
        self.stages.iter().map(|r| (r.stage.clone(), r.output.clone())).collect()
    }

    /// The export of this run, once its export stage finished.
    pub fn export(&self) -> Result<Option<crate::stages::ExportInfo>> {
        self.output(crate::stages::ExportStage::NAME)
    }

    /// The state under `home`, if a pipeline ever ran there.
    pub fn load(home: &SamHome) -> Result<Option<Self>> {
        let path = home.pipeline_state();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| Error::State { path, source })
    }

    /// Write the state atomically.
    pub fn save(&mut self, home: &SamHome) -> Result<()> {
        self.updated_at = sam_runs::unix_now();
        sam_runs::write_json_atomic(&home.pipeline_state(), self)?;
        Ok(())
    }

    /// Append the state to the history.
    pub(crate) fn append_history(&self, home: &SamHome) -> Result<()> {
        let path = home.pipeline_history();
        let line = serde_json::to_vec(self).map_err(|source| Error::State { path: path.clone(), source })?;
        sam_home::atomic::append_line(&path, &line).map_err(|e| Error::io(&path, e))
    }

    /// Every finished run under `home`, oldest first (a torn last line is
    /// left out).
    pub fn history(home: &SamHome) -> Result<Vec<Self>> {
        let path = home.pipeline_history();
        let lines = sam_home::atomic::read_lines(&path).map_err(|e| Error::io(&path, e))?;
        lines
            .into_iter()
            .map(|(line, text)| {
                serde_json::from_str(&text).map_err(|source| Error::EventLine { path: path.clone(), line, source })
            })
            .collect()
    }
}
