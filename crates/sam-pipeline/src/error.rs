//! The error type of the pipeline.

use std::path::PathBuf;

/// Errors of the pipeline. Each says which stage failed and, where there is
/// one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] sam_store::StoreError),
    /// Mining or capture failed.
    #[error("mining: {0}")]
    Capture(#[from] sam_capture::CaptureError),
    /// The base model could not be read.
    #[error("model: {0}")]
    Model(#[from] sam_models::Error),
    /// Dataset preparation failed.
    #[error("prep: {0}")]
    Prep(#[from] sam_prep::Error),
    /// The prepared dataset could not be read.
    #[error("dataset: {0}")]
    Dataset(#[from] sam_prep::cache::CacheError),
    /// Training or evaluation failed.
    #[error("trainer: {0}")]
    Trainer(#[from] sam_trainer::Error),
    /// Registration, the gate or the rollout failed (the registry is left
    /// consistent: a move is one atomic write).
    #[error("deploy: {0}")]
    Deploy(#[from] sam_deploy::Error),
    /// The run folder could not be written.
    #[error("run folder: {0}")]
    Run(#[from] sam_runs::RunError),
    /// A file of the pipeline could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The pipeline's state file does not parse.
    #[error("{}: {source} (move it away to start the pipeline over)", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The base model is not where the configuration says.
    #[error("no base model at {}: pass a Hugging Face folder or a .gguf file", path.display())]
    ModelMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The run was stopped on request ([`crate::PipelineConfig::stop`]) at a
    /// safe point: between two stages, or in training after a checkpoint.
    /// The state file holds every finished stage; the next run continues at
    /// `stage`.
    #[error("stopped on request at the {stage} stage{}; run the pipeline again to continue it",
        run_id.as_ref().map(|r| format!(" (training run {r} checkpointed)")).unwrap_or_default())]
    Stopped {
        /// The stage the next run continues at.
        stage: String,
        /// The training run that checkpointed, when the stop came during training.
        run_id: Option<String>,
    },
    /// Another pipeline run is in progress under this home (`sam run`, or
    /// the scheduler's training trigger); two at once would both write the
    /// state file.
    #[error("another pipeline run is in progress under this home (process {}): wait for it to end, or stop it \
             (Ctrl-C in its `sam run`, `sam schedule stop` for the scheduler's); lock {}",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()), path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// The process holding it, when it wrote its pid.
        pid: Option<u32>,
    },
    /// There is nothing to train on at all.
    #[error("nothing to train on: {0}")]
    NoData(String),
    /// A value of `sam.toml` that the pipeline cannot use (the section and
    /// key are named).
    #[error("sam.toml: {0}")]
    Config(String),
    /// A stage's output could not be written or read back as its type.
    #[error("output of the {stage} stage: {source}")]
    Output {
        /// The stage.
        stage: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A stage needs the output of a stage that has not run.
    #[error("the {0} stage has not run (a stage before it in the pipeline must produce its output)")]
    MissingOutput(String),
    /// No stage of this name in the pipeline.
    #[error("no stage named {0:?} in the pipeline")]
    NoSuchStage(String),
    /// A line of an events or history file does not parse.
    #[error("{}:{line}: {source}", path.display())]
    EventLine {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The cause.
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
