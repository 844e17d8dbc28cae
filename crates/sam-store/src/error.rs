//! The one error type of the store.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// Another process held the write lock for longer than the busy timeout.
    #[error(
        "the store is busy: another sam process held its write lock for longer than the busy timeout; \
         wait for it to finish, or raise [store] busy_timeout_ms in sam.toml"
    )]
    Busy,
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored value could not be decoded (a damaged or foreign database).
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// The database was written by a newer sam than this one.
    #[error(
        "the store's schema version is {found}, newer than this sam knows ({supported}): upgrade sam, \
         or point SAM_HOME elsewhere"
    )]
    NewerSchema {
        /// The schema version found in the file.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A caller passed a value the store cannot accept.
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => StoreError::Busy,
            _ => StoreError::Sqlite(e),
        }
    }
}
