//! The pipeline's state file and its report types.
//!
//! `SAM_HOME/pipeline/state.json` holds the pipeline run in progress (or the
//! last one, once finished): which stage it reached and what each finished
//! stage produced. It is rewritten atomically after every stage, so a run
//! killed at any point resumes at the first stage that had not finished.
//! Finished runs are also appended to `SAM_HOME/pipeline/history.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sam_capture::redact::RedactionReport;
use sam_home::SamHome;
use sam_store::ValidateReport;
use sam_trainer::EvalReport;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The stages of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Mine the repositories (git, docs, code) and feed the sample captures.
    Mine,
    /// Validate (tiers) and deduplicate (exact and near) the store.
    Clean,
    /// Export the quality-filtered examples.
    Export,
    /// Prepare the dataset for the base model.
    Prep,
    /// Train the adapter.
    Train,
    /// Evaluate base and adapter on the held-out test split.
    Evaluate,
    /// Record and report.
    Report,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 7] =
        [Stage::Mine, Stage::Clean, Stage::Export, Stage::Prep, Stage::Train, Stage::Evaluate, Stage::Report];

    /// The stage's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Mine => "mine",
            Stage::Clean => "clean",
            Stage::Export => "export",
            Stage::Prep => "prep",
            Stage::Train => "train",
            Stage::Evaluate => "evaluate",
            Stage::Report => "report",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pipeline run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An adapter was trained and evaluated.
    Trained,
    /// The export held nothing the last trained run had not seen: nothing
    /// was trained.
    NothingNew,
}

/// What one source gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The source (`git`, `docs`, `code`, `captures`).
    pub source: String,
    /// Examples it offered.
    pub collected: u64,
    /// New examples stored.
    pub inserted: u64,
    /// Examples the store already had.
    pub duplicates: u64,
    /// Examples the store refused as invalid (quarantined).
    pub rejected: u64,
    /// Items the source passed over, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// The mine stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MineReport {
    /// The repositories mined.
    pub repos: Vec<PathBuf>,
    /// One entry per source.
    pub sources: Vec<SourceReport>,
    /// What redaction replaced, by kind, over all sources.
    pub redacted: RedactionReport,
}

impl MineReport {
    /// New examples stored, over all sources.
    pub fn inserted(&self) -> u64 {
        self.sources.iter().map(|s| s.inserted).sum()
    }
}

/// The clean stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanReport {
    /// The validation pass (examples validated, tiers, failed checks).
    pub validation: ValidateReport,
    /// Examples removed because another asked the same question (same input
    /// hash), keeping the best.
    pub same_question_removed: u64,
    /// Near-duplicates removed (MinHash), keeping the best.
    pub near_duplicates_removed: u64,
    /// Examples in the store after cleaning.
    pub store_total: u64,
}

/// The export stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// Its number in the store's export history.
    pub id: i64,
    /// The file.
    pub path: PathBuf,
    /// Rows exported (gold, silver and bronze tiers).
    pub rows: u64,
    /// Examples left out for their tier (unverified: too low a score).
    pub left_out_low_quality: u64,
    /// BLAKE3 of the file.
    pub hash: String,
}

/// The prep stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepInfo {
    /// The dataset folder.
    pub dir: PathBuf,
    /// BLAKE3 of its `manifest.json`.
    pub manifest_hash: String,
    /// SFT rows: train, valid, test.
    pub sft: [u64; 3],
    /// Preference pairs: train, valid, test.
    pub preference: [u64; 3],
    /// Tokens of the SFT sequences, and how many of them are trained on.
    pub tokens: u64,
    /// Tokens trained on (assistant tokens).
    pub trained_tokens: u64,
    /// Examples truncated (kept, shortened).
    pub truncated: u64,
    /// Examples dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// The train stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainInfo {
    /// The run's id.
    pub run_id: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The adapter (PEFT layout).
    pub adapter_dir: PathBuf,
    /// Optimiser steps.
    pub steps: u64,
    /// Training examples.
    pub examples: u64,
    /// Tokens processed.
    pub tokens: u64,
    /// Wall time of training, seconds.
    pub seconds: f64,
    /// Mean throughput.
    pub tokens_per_s: f64,
    /// Training loss of the last step.
    pub final_train_loss: f64,
    /// Validation loss before training.
    pub initial_val_loss: Option<f64>,
    /// Best validation loss (its adapter was kept).
    pub best_val_loss: Option<f64>,
    /// The checkpoint (phase and step) an interrupted training continued
    /// from, when it did.
    #[serde(default)]
    pub resumed_from: Option<(String, u64)>,
    /// Preference pairs in the dataset.
    pub preference_pairs: u64,
    /// What became of them: DPO, or why not.
    pub dpo: String,
    /// The DPO phase, when preference pairs were trained on.
    #[serde(default)]
    pub dpo_phase: Option<DpoInfo>,
}

/// The DPO phase of the train stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoInfo {
    /// Optimiser steps.
    pub steps: u64,
    /// Training pairs.
    pub pairs: u64,
    /// Validation DPO loss before the phase (the SFT adapter against itself: ln 2).
    pub initial_val_loss: Option<f64>,
    /// Best validation DPO loss.
    pub best_val_loss: Option<f64>,
    /// Validation reward accuracy at the last validation.
    pub val_reward_accuracy: Option<f64>,
    /// Validation reward margin at the last validation.
    pub val_reward_margin: Option<f64>,
    /// Reward accuracy of the last step's training pairs.
    #[serde(default)]
    pub last_step_reward_accuracy: Option<f64>,
    /// Reward margin of the last step's training pairs.
    #[serde(default)]
    pub last_step_reward_margin: Option<f64>,
}

/// The state file: one pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    /// The pipeline run's id (also its dataset folder's and export's name).
    pub id: String,
    /// When it started (Unix seconds).
    pub started_at: u64,
    /// When the state was last written.
    pub updated_at: u64,
    /// The last stage that finished (`None`: none yet).
    pub reached: Option<Stage>,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// The export hash of the last pipeline run that trained: an export with
    /// the same hash has nothing new.
    pub baseline_export_hash: Option<String>,
    /// Stages resumed rather than run, when this run continued an
    /// interrupted one.
    pub resumed_at: Option<Stage>,
    /// The mine stage's report.
    pub mine: Option<MineReport>,
    /// The clean stage's report.
    pub clean: Option<CleanReport>,
    /// The export.
    pub export: Option<ExportInfo>,
    /// The dataset.
    pub prep: Option<PrepInfo>,
    /// A training run started (set before training, so a crash is seen).
    pub run_started: Option<String>,
    /// The training run.
    pub train: Option<TrainInfo>,
    /// The evaluation on the held-out test split.
    pub eval: Option<EvalReport>,
}

impl PipelineState {
    pub(crate) fn new(id: String, baseline: Option<String>) -> Self {
        let now = sam_runs::unix_now();
        Self {
            id,
            started_at: now,
            updated_at: now,
            reached: None,
            outcome: None,
            baseline_export_hash: baseline,
            resumed_at: None,
            mine: None,
            clean: None,
            export: None,
            prep: None,
            run_started: None,
            train: None,
            eval: None,
        }
    }

    /// Whether `stage` finished.
    pub fn finished(&self, stage: Stage) -> bool {
        self.reached.is_some_and(|r| r >= stage)
    }

    /// The state file under `home`.
    pub fn path(home: &Path) -> PathBuf {
        SamHome::new(home).pipeline_state()
    }

    /// The state under `home`, if a pipeline ever ran there.
    pub fn load(home: &Path) -> Result<Option<Self>> {
        let path = Self::path(home);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| Error::State { path, source })
    }

    /// Write the state atomically.
    pub fn save(&mut self, home: &Path) -> Result<()> {
        self.updated_at = sam_runs::unix_now();
        sam_runs::write_json_atomic(&Self::path(home), self)?;
        Ok(())
    }
}
