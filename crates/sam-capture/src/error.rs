//! The one error type of sam-capture.

use std::path::PathBuf;

/// Everything that can go wrong while collecting or capturing examples.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// A git repository could not be read.
    #[error("{}: {source}", path.display())]
    Git {
        /// The repository.
        path: PathBuf,
        /// The cause.
        #[source]
        source: git2::Error,
    },
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store refused a write or a read.
    #[error(transparent)]
    Store(#[from] sam_store::StoreError),
    /// A stored cursor could not be read (written by another version of sam).
    #[error("invalid cursor for source {source_name:?}: {reason}")]
    Cursor {
        /// The source.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// A setting is invalid.
    #[error("invalid setting {key}: {reason}")]
    Config {
        /// The setting.
        key: String,
        /// Why.
        reason: String,
    },
    /// A capture request was incomplete or malformed.
    #[error("invalid capture: {0}")]
    Invalid(String),
}

impl CaptureError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaptureError::Io { path: path.into(), source }
    }
    pub(crate) fn git(path: impl Into<PathBuf>, source: git2::Error) -> Self {
        CaptureError::Git { path: path.into(), source }
    }
}

/// Result with [`CaptureError`].
pub type Result<T, E = CaptureError> = std::result::Result<T, E>;
