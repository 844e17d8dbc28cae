//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in sam-trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The model's configuration or weights are not what sam supports.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A weight the model needs is missing from the checkpoint.
    #[error("missing weight `{0}`")]
    MissingWeight(String),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An adapter on disk does not match the model or is malformed.
    #[error("invalid adapter: {0}")]
    InvalidAdapter(String),
    /// The training data is unusable (empty, nothing to learn, too long).
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// Training diverged (a loss or gradient became NaN or infinite). No
    /// adapter or checkpoint is written from the diverged weights.
    #[error("training diverged at step {step}: {what} (lower the learning rate, or resume from an earlier checkpoint)")]
    Diverged {
        /// The optimiser step at which it happened.
        step: usize,
        /// What was not finite, with its value (`training loss NaN`).
        what: String,
    },
    /// A checkpoint cannot continue this run (other data, model or settings).
    #[error("checkpoint {}: {why}", path.display())]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What does not match.
        why: String,
    },
    /// Writing or reading a run folder failed.
    #[error(transparent)]
    Run(#[from] sam_runs::RunError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn json_err(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
    let path = path.into();
    move |source| Error::Json { path, source }
}
