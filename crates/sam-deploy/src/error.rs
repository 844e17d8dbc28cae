//! The crate's error type.

use std::path::PathBuf;

/// What went wrong in the registry, a gate or the evaluator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a registry file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A registry file that does not parse (it was edited by hand or is
    /// from another version of sam).
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No slot of that name.
    #[error("no slot `{0}` in the registry (create it with `sam deploy slot create`, or register a run's adapter)")]
    NoSlot(String),
    /// The slot exists already.
    #[error("slot `{0}` exists already")]
    SlotExists(String),
    /// A slot name that cannot be a folder name.
    #[error("`{0}` is not a valid name: use letters, digits, `-`, `_` and `.` (not first)")]
    BadName(String),
    /// No version matches the id, prefix or alias.
    #[error("no version `{0}` (see `sam deploy status` or `sam deploy history`)")]
    NoVersion(String),
    /// A prefix that matches several versions.
    #[error("`{0}` matches several versions: {1}")]
    Ambiguous(String, String),
    /// The adapter cannot be registered: it is not a LoRA adapter folder,
    /// or its shapes do not match the slot's base model.
    #[error("{0}")]
    InvalidAdapter(String),
    /// A version's files no longer match the content hash it was registered with.
    #[error("version {version}: {reason}")]
    Damaged {
        /// The version.
        version: String,
        /// What does not match.
        reason: String,
    },
    /// A promotion the gate refused (aliases unchanged).
    #[error("version {version} was refused by the gate: {reasons}")]
    Refused {
        /// The version.
        version: String,
        /// The reasons, joined.
        reasons: String,
    },
    /// The verdict was taken against another production than the current one.
    #[error(
        "the verdict on {version} was taken against {judged_against}, but production is now {production}: run the gate again"
    )]
    StaleVerdict {
        /// The version.
        version: String,
        /// What the verdict compared with.
        judged_against: String,
        /// What production is now.
        production: String,
    },
    /// An operation that does not apply in the slot's current state.
    #[error("{0}")]
    State(String),
    /// Bad settings.
    #[error("invalid deploy setting: {0}")]
    Config(String),
    /// The evaluator failed (model loading, scoring, generation).
    #[error("evaluating: {0}")]
    Eval(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

impl From<sam_trainer::Error> for Error {
    fn from(e: sam_trainer::Error) -> Self {
        Error::Eval(e.to_string())
    }
}

impl From<sam_prep::Error> for Error {
    fn from(e: sam_prep::Error) -> Self {
        Error::Eval(e.to_string())
    }
}

impl From<sam_prep::cache::CacheError> for Error {
    fn from(e: sam_prep::cache::CacheError) -> Self {
        Error::Eval(e.to_string())
    }
}
