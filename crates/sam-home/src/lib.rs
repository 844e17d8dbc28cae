//! `SAM_HOME`: where everything sam writes lives, what `sam.toml` says, and
//! how files are replaced safely.
//!
//! - [`SamHome`]: the home folder (`--home`, else `$SAM_HOME`, else
//!   `~/.sam`: [`SamHome::resolve`]) with a typed accessor for every file and
//!   folder in it: the store, `sam.toml`, models, datasets, runs, exports,
//!   the registry, the pipeline's and the scheduler's state, locks, the
//!   server's token, the capture spool.
//! - [`Config`] ([`config`]): `sam.toml` as one typed value with a section
//!   per component; [`SamHome::load_config`] reads it.
//! - [`atomic`]: the one implementation of atomic file writes, folder swaps
//!   and JSONL appends that every sam crate uses.
//!
//! Only this crate spells the names of `SAM_HOME`'s files and folders (a
//! tidy test holds the workspace to it; [`OWNED_NAMES`] lists them). It owns
//! every path directly under `SAM_HOME` and the files inside `pipeline/`,
//! `scheduler/`, `serve/` and `locks/`. A folder whose inside belongs to
//! another crate is opened by that crate's type at the path given here: a run
//! folder by `sam_runs::RunDir`, a dataset folder by `sam_prep`, the
//! registry by `sam_deploy`.
//!
//! ```
//! use sam_home::SamHome;
//!
//! let dir = tempfile::tempdir()?;
//! let home = SamHome::new(dir.path());
//! assert_eq!(home.store_db(), dir.path().join("store.db"));
//! assert!(home.run_dir("20250101-000000-abcd").starts_with(home.runs_dir()));
//! let cfg = home.load_config()?; // no sam.toml: the defaults
//! assert_eq!(cfg, sam_home::Config::default());
//! sam_home::atomic::write(&home.config_file(), sam_home::Config::default_file().as_bytes())?;
//! assert_eq!(home.load_config()?, cfg);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod atomic;
pub mod config;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use config::Config;

/// The names this crate owns, as they appear on disk.
mod names {
    pub const CONFIG: &str = "sam.toml";
    pub const STORE: &str = "store.db";
    pub const CAPTURE_SPOOL: &str = "capture-spool.jsonl";
    pub const MODELS: &str = "models";
    pub const DATASETS: &str = "datasets";
    pub const RUNS: &str = "runs";
    pub const EXPORTS: &str = "exports";
    pub const REGISTRY: &str = "registry";
    pub const PIPELINE: &str = "pipeline";
    pub const SCHEDULER: &str = "scheduler";
    pub const SERVE: &str = "serve";
    pub const LOCKS: &str = "locks";
    // Inside pipeline/, scheduler/ and serve/.
    pub const STATE: &str = "state.json";
    pub const HISTORY: &str = "history.jsonl";
    pub const EVENTS: &str = "events";
    pub const LOCK: &str = "lock";
    pub const STATE_LOCK: &str = "state.lock";
    pub const JOBS: &str = "jobs";
    pub const DAEMON_LOG: &str = "daemon.log";
    pub const TOKEN: &str = "token";
}

/// The names directly under `SAM_HOME`, which no other crate may spell as a
/// string literal (the workspace's tidy test checks it). sam-home also owns
/// the files inside `pipeline/`, `scheduler/` and `serve/`, but their names
/// (`state.json`, `history.jsonl`, `lock`, `token`) are ordinary words that
/// other crates use inside their own folders (the registry's history), so
/// the check holds the folders, not those names.
pub const OWNED_NAMES: &[&str] = &[
    names::CONFIG,
    names::STORE,
    names::CAPTURE_SPOOL,
    names::MODELS,
    names::DATASETS,
    names::RUNS,
    names::EXPORTS,
    names::REGISTRY,
    names::PIPELINE,
    names::SCHEDULER,
    names::SERVE,
    names::LOCKS,
];

/// The environment variable that names the home folder.
pub const ENV_VAR: &str = "SAM_HOME";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No home folder given and none to default to.
    #[error("neither SAM_HOME nor HOME is set: pass --home DIR")]
    NoHome,
    /// `sam.toml` could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `sam.toml` does not parse, or has a key sam does not know.
    #[error("{}: {message}\nfix the file, or move it away and run `sam init` to write the defaults", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where (line and column, the key).
        message: String,
    },
}

/// The sam home folder and every path in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SamHome {
    root: PathBuf,
}

impl SamHome {
    /// The home at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home the user means: `flag` (`--home DIR`) when given, else
    /// `$SAM_HOME` when set and not empty, else `~/.sam`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self, Error> {
        Self::resolve_with(flag, std::env::var_os(ENV_VAR), std::env::var_os("HOME"))
    }

    /// [`SamHome::resolve`] with the environment given.
    pub fn resolve_with(
        flag: Option<PathBuf>,
        sam_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<Self, Error> {
        if let Some(f) = flag {
            return Ok(Self::new(f));
        }
        if let Some(h) = sam_home.filter(|h| !h.is_empty()) {
            return Ok(Self::new(h));
        }
        let home = home.filter(|h| !h.is_empty()).ok_or(Error::NoHome)?;
        Ok(Self::new(PathBuf::from(home).join(".sam")))
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path from the configuration: relative paths are under the home.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.root.join(path) }
    }

    /// `sam.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join(names::CONFIG)
    }

    /// Read `sam.toml`; the defaults when there is none. An unknown key is
    /// an error naming the key.
    pub fn load_config(&self) -> Result<Config, Error> {
        let path = self.config_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(Error::Read { path, source }),
        };
        Config::parse(&text).map_err(|e| Error::Config { path, message: e.to_string().trim_end().to_string() })
    }

    /// The store database (SQLite).
    pub fn store_db(&self) -> PathBuf {
        self.root.join(names::STORE)
    }

    /// Where captures wait when the store cannot be written (unless
    /// `[capture] spool` says otherwise).
    pub fn capture_spool(&self) -> PathBuf {
        self.root.join(names::CAPTURE_SPOOL)
    }

    /// Base models (Hugging Face folders, or imported from GGUF).
    pub fn models_dir(&self) -> PathBuf {
        self.root.join(names::MODELS)
    }

    /// Prepared datasets, one folder each.
    pub fn datasets_dir(&self) -> PathBuf {
        self.root.join(names::DATASETS)
    }

    /// The dataset folder `id` (its inside is sam-prep's).
    pub fn dataset_dir(&self, id: &str) -> PathBuf {
        self.datasets_dir().join(id)
    }

    /// Training runs, one folder each.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join(names::RUNS)
    }

    /// The run folder `id` (its inside is sam-runs' `RunDir`).
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.runs_dir().join(id)
    }

    /// Exported JSONL snapshots of the store.
    pub fn exports_dir(&self) -> PathBuf {
        self.root.join(names::EXPORTS)
    }

    /// The export of pipeline run `id`.
    pub fn pipeline_export(&self, id: &str) -> PathBuf {
        self.exports_dir().join(format!("pipeline-{id}.jsonl"))
    }

    /// A manual export (`sam export` without `--out`), named by `stamp`.
    pub fn manual_export(&self, stamp: &str) -> PathBuf {
        self.exports_dir().join(format!("export-{stamp}.jsonl"))
    }

    /// The adapter registry (its inside is sam-deploy's).
    pub fn registry_dir(&self) -> PathBuf {
        self.root.join(names::REGISTRY)
    }

    /// The pipeline's folder.
    pub fn pipeline_dir(&self) -> PathBuf {
        self.root.join(names::PIPELINE)
    }

    /// The pipeline run in progress, or the last one.
    pub fn pipeline_state(&self) -> PathBuf {
        self.pipeline_dir().join(names::STATE)
    }

    /// Finished pipeline runs, one JSON line each.
    pub fn pipeline_history(&self) -> PathBuf {
        self.pipeline_dir().join(names::HISTORY)
    }

    /// The events files of pipeline runs, one per run.
    pub fn pipeline_events_dir(&self) -> PathBuf {
        self.pipeline_dir().join(names::EVENTS)
    }

    /// The events of pipeline run `id` (JSONL, appended while it runs).
    pub fn pipeline_events(&self, id: &str) -> PathBuf {
        self.pipeline_events_dir().join(format!("{id}.jsonl"))
    }

    /// The scheduler daemon's folder.
    pub fn scheduler_dir(&self) -> PathBuf {
        self.root.join(names::SCHEDULER)
    }

    /// The scheduler's state.
    pub fn scheduler_state(&self) -> PathBuf {
        self.scheduler_dir().join(names::STATE)
    }

    /// The scheduler's history, one JSON line per job run.
    pub fn scheduler_history(&self) -> PathBuf {
        self.scheduler_dir().join(names::HISTORY)
    }

    /// The scheduler daemon's lock (one daemon per home).
    pub fn scheduler_lock(&self) -> PathBuf {
        self.scheduler_dir().join(names::LOCK)
    }

    /// Held while the scheduler's state is read, changed and rewritten.
    pub fn scheduler_state_lock(&self) -> PathBuf {
        self.scheduler_dir().join(names::STATE_LOCK)
    }

    /// The scheduler's per-job lock files (`<job>.lock` in here).
    pub fn scheduler_job_locks(&self) -> PathBuf {
        self.scheduler_dir().join(names::JOBS)
    }

    /// The log of the scheduler daemon when it runs in the background.
    pub fn scheduler_log(&self) -> PathBuf {
        self.scheduler_dir().join(names::DAEMON_LOG)
    }

    /// Lock files of work that must not run twice at once.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join(names::LOCKS)
    }

    /// The lock file `name` (`pipeline`, ...).
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }

    /// The pipeline's lock, held by the one pipeline run in progress.
    pub fn pipeline_lock(&self) -> PathBuf {
        self.lock_file("pipeline")
    }

    /// The HTTP server's folder.
    pub fn serve_dir(&self) -> PathBuf {
        self.root.join(names::SERVE)
    }

    /// The server's access token.
    pub fn serve_token(&self) -> PathBuf {
        self.serve_dir().join(names::TOKEN)
    }
}

/// sam's cache folder, outside `SAM_HOME`: what can be fetched again (the
/// test model). `$SAM_CACHE_DIR`, else `$XDG_CACHE_HOME/sam`, else
/// `~/.cache/sam`, else `.cache/sam` in the current folder.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    env("SAM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| env("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("sam")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache").join("sam")))
        .unwrap_or_else(|| PathBuf::from(".cache/sam"))
}

/// Models in the cache folder (`scripts/fetch-test-model.sh` fills it).
pub fn cached_models_dir() -> PathBuf {
    cache_dir().join(names::MODELS)
}

impl AsRef<Path> for SamHome {
    fn as_ref(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_is_the_flag_else_sam_home_else_dot_sam() {
        let os = |s: &str| Some(OsString::from(s));
        let check = |flag: Option<&str>, env: Option<OsString>, home: Option<OsString>, want: Option<&str>| {
            let got = SamHome::resolve_with(flag.map(PathBuf::from), env, home).ok();
            assert_eq!(got.as_ref().map(|h| h.root().to_path_buf()), want.map(PathBuf::from));
        };
        check(Some("/f"), os("/e"), os("/h"), Some("/f"));
        check(None, os("/e"), os("/h"), Some("/e"));
        check(None, os(""), os("/h"), Some("/h/.sam"));
        check(None, None, os("/h"), Some("/h/.sam"));
        check(None, None, None, None);
        assert!(matches!(SamHome::resolve_with(None, None, os("")), Err(Error::NoHome)));
    }

    #[test]
    fn every_path_is_under_the_home_and_distinct() {
        let h = SamHome::new("/h");
        let paths = [
            h.config_file(),
            h.store_db(),
            h.capture_spool(),
            h.models_dir(),
            h.dataset_dir("d"),
            h.run_dir("r"),
            h.pipeline_export("p"),
            h.manual_export("1"),
            h.registry_dir(),
            h.pipeline_state(),
            h.pipeline_history(),
            h.pipeline_events("p"),
            h.scheduler_state(),
            h.scheduler_history(),
            h.scheduler_lock(),
            h.scheduler_state_lock(),
            h.scheduler_job_locks(),
            h.scheduler_log(),
            h.lock_file("pipeline"),
            h.serve_token(),
        ];
        let set: std::collections::BTreeSet<_> = paths.iter().collect();
        assert_eq!(set.len(), paths.len());
        assert!(paths.iter().all(|p| p.starts_with("/h")));
        assert_eq!(h.resolve_path(Path::new("x.jsonl")), PathBuf::from("/h/x.jsonl"));
        assert_eq!(h.resolve_path(Path::new("/abs")), PathBuf::from("/abs"));
    }

    #[test]
    fn a_bad_config_says_which_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let h = SamHome::new(dir.path());
        std::fs::write(h.config_file(), "[store]\nbatch_size = \"many\"\n").unwrap();
        let err = h.load_config().unwrap_err().to_string();
        assert!(err.contains("sam.toml") && err.contains("batch_size") && err.contains("sam init"), "{err}");
        std::fs::write(h.config_file(), "[pipeline]\nsampel_captures = false\n").unwrap();
        let err = h.load_config().unwrap_err().to_string();
        assert!(err.contains("sampel_captures"), "{err}");
    }
}
