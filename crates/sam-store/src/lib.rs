//! The store of sam: every example in one SQLite file, with what was done to
//! them — validation, deduplication, exports, training runs — and the lines
//! that could not be stored.
//!
//! - The seam is four small traits by concern: [`Examples`] (insert a
//!   [`Batch`], query by [`Filter`], validate, deduplicate exactly and
//!   nearly), [`Quarantine`] (bad lines with their reason), [`Bookkeeping`]
//!   (exports, [`TrainingRun`]s by [`RunState`]), [`StoreStats`] ([`Stats`]).
//!   [`Store`] is all four (for code that needs the whole store); each is
//!   object-safe, so an embedder can bring another implementation behind
//!   `Box<dyn Store>`. `use sam_store::prelude::*` brings their methods.
//! - [`SqliteStore`] is the implementation ([`SqliteStore::open_in_memory`]
//!   for tests and throwaway work): WAL journal, `synchronous=NORMAL`,
//!   a busy timeout, every write in one `BEGIN IMMEDIATE` transaction (so two
//!   writer processes queue instead of failing with "database is locked"),
//!   and the schema versioned with `PRAGMA user_version`.
//! - [`StoreError`] is the one error type.
//!
//! Exact duplicates never reach the table: an example whose content hash is
//! already stored counts as a duplicate on insert. [`Examples::dedup`] then
//! removes examples that ask the same question (same input hash), keeping the
//! best one ([`Examples::dedup`]). A batch commits whole or not at all, together with its
//! quarantined lines and its source's cursor, so a crash mid-ingest leaves
//! exactly the batches that committed.
//!
//! A source's health (in [`Stats`]) is `100 × mean quality of its validated
//! examples × share of its offered examples that were valid`: a source that
//! sends junk or examples that fail validation scores low; one that only
//! repeats itself is not punished (duplicates are reported beside it).
//!
//! ```
//! use sam_schema::{Content, Example, Tier};
//! use sam_store::prelude::*;
//! use sam_store::{Filter, SqliteStore, ValidateOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let mut store = SqliteStore::open(dir.path().join("store.db"))?;
//! let ex = Example::new(Content::Instruction {
//!     instruction: "What does `git stash pop` do?".into(),
//!     input: String::new(),
//!     output: "It re-applies the most recent stash and drops it from the stash list.".into(),
//! })
//! .with_source("docs");
//! let empty = Example::new(Content::Completion { text: " ".into() });
//!
//! let report = store.insert(&[ex.clone(), ex.clone(), empty])?;
//! assert_eq!((report.inserted, report.duplicates, report.rejected), (1, 1, 1));
//! assert_eq!(store.quarantined(None)?.len(), 1); // the empty one, with its reason
//!
//! store.validate(&ValidateOptions::default(), &mut |_, _| {})?;
//! let gold = store.query(&Filter::default().tiers([Tier::Gold]))?;
//! assert_eq!(gold[0].id, ex.id);
//!
//! let record = store.export(&Filter::default(), &dir.path().join("out.jsonl"), Default::default())?;
//! assert_eq!(record.rows, 1);
//! assert_eq!(store.latest_export()?.unwrap().hash, record.hash);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
pub mod near_dup;
mod schema;
mod sqlite;
mod types;

use std::path::Path;

use near_dup::{NearDupConfig, NearDupReport};
use sam_schema::{Example, LineError};

pub use error::StoreError;
pub use sqlite::SqliteStore;
pub use types::{
    Batch, DailyCount, DedupReport, ExportFormat, ExportRecord, Filter, InsertReport, QuarantineEntry, Rejection,
    RunState, RunUpdate, SourceHealth, Stats, StoreConfig, TrainingRun, ValidateOptions, ValidateReport,
    ValidationEntry,
};

/// The examples: insert, query, validate, deduplicate. Writes take `&mut
/// self`; each is atomic. Methods that report progress take a callback
/// `(done, total)`.
pub trait Examples {
    /// Store a batch in one transaction: its examples (duplicates by content
    /// hash are counted and skipped; examples that fail basic validity are
    /// quarantined with their reason), its unreadable lines (quarantined) and
    /// its source's cursor.
    fn insert_batch(&mut self, batch: &Batch<'_>) -> Result<InsertReport, StoreError>;

    /// Store examples (see [`Examples::insert_batch`]).
    fn insert(&mut self, examples: &[Example]) -> Result<InsertReport, StoreError> {
        self.insert_batch(&Batch::new(examples))
    }

    /// Store examples and set `source`'s cursor in the same transaction, so
    /// that incremental mining resumes exactly after what was stored.
    fn insert_with_cursor(
        &mut self,
        examples: &[Example],
        source: &str,
        cursor: &str,
    ) -> Result<InsertReport, StoreError> {
        self.insert_batch(&Batch { cursor: Some((source, cursor)), ..Batch::new(examples) })
    }

    /// The cursor last stored for `source`.
    fn cursor(&self, source: &str) -> Result<Option<String>, StoreError>;

    /// Visit every example the filter selects, oldest first.
    fn scan(&self, filter: &Filter, visit: &mut dyn FnMut(Example) -> Result<(), StoreError>)
    -> Result<(), StoreError>;

    /// The examples the filter selects, oldest first.
    fn query(&self, filter: &Filter) -> Result<Vec<Example>, StoreError> {
        let mut out = Vec::new();
        self.scan(filter, &mut |ex| {
            out.push(ex);
            Ok(())
        })?;
        Ok(out)
    }

    /// How many examples the filter selects.
    fn count(&self, filter: &Filter) -> Result<u64, StoreError>;

    /// Score examples (empty content, length, repetition, completeness,
    /// boilerplate), set their quality and tier, and log the reasons of
    /// every example that lost points.
    fn validate(
        &mut self,
        opts: &ValidateOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ValidateReport, StoreError>;

    /// The validation log of an example (by id), newest pass first.
    fn validation_log(&self, example_id: &str) -> Result<Vec<ValidationEntry>, StoreError>;

    /// Remove exact duplicates, keeping the best copy (highest tier, then
    /// highest quality, then the oldest). Examples with the same input hash
    /// ask the same question; preference pairs are left alone, since several
    /// pairs for one prompt are legitimate. With `dry_run`, only count.
    fn dedup(&mut self, dry_run: bool) -> Result<DedupReport, StoreError>;

    /// Find near-duplicate examples (preference pairs aside; MinHash + LSH,
    /// [`near_dup`]) and, in each group, keep the best one — highest tier,
    /// then highest quality, then the oldest — and remove the others
    /// (`remove`) or mark them with `metadata.near_duplicate_of = <id of the
    /// one kept>`.
    fn dedup_near(&mut self, cfg: &NearDupConfig, remove: bool) -> Result<NearDupReport, StoreError>;
}

/// Lines that could not be stored, kept with their reason.
pub trait Quarantine: Examples {
    /// Quarantine lines that could not be read; returns how many were new.
    fn quarantine(&mut self, lines: &[LineError]) -> Result<u64, StoreError> {
        Ok(self.insert_batch(&Batch { bad_lines: lines, ..Batch::default() })?.quarantined)
    }

    /// Quarantined lines, oldest first, at most `limit`.
    fn quarantined(&self, limit: Option<u64>) -> Result<Vec<QuarantineEntry>, StoreError>;

    /// How many lines are in quarantine.
    fn quarantine_len(&self) -> Result<u64, StoreError> {
        Ok(self.quarantined(None)?.len() as u64)
    }

    /// Remove quarantined lines: those numbered in `ids`, or all with `None`.
    /// Returns how many were removed.
    fn clear_quarantine(&mut self, ids: Option<&[i64]>) -> Result<u64, StoreError>;
}

/// What was done with the examples: exports and training runs.
pub trait Bookkeeping {
    /// Write the examples the filter selects to `path` as JSONL (atomically:
    /// a temporary file renamed into place) and record it in the export history.
    fn export(&mut self, filter: &Filter, path: &Path, format: ExportFormat) -> Result<ExportRecord, StoreError>;

    /// The export history, oldest first.
    fn exports(&self) -> Result<Vec<ExportRecord>, StoreError>;

    /// The most recent export.
    fn latest_export(&self) -> Result<Option<ExportRecord>, StoreError> {
        Ok(self.exports()?.pop())
    }

    /// Record a training run, or update the run with the same id.
    fn record_training_run(&mut self, run: &TrainingRun) -> Result<(), StoreError>;

    /// Recorded training runs, oldest first.
    fn training_runs(&self) -> Result<Vec<TrainingRun>, StoreError>;

    /// Move training run `update.id` to its new state: the one way `sam
    /// train` and the pipeline record a run. A new run starts now; a known
    /// one keeps its start and whatever `update` leaves `None`; a finished
    /// state sets the finish time. Returns the record as stored.
    fn record_run(&mut self, update: RunUpdate) -> Result<TrainingRun, StoreError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let old = self.training_runs()?.into_iter().find(|r| r.id == update.id);
        let run = TrainingRun {
            started: old.as_ref().map_or(now, |o| o.started),
            finished: update.state.is_finished().then_some(now),
            status: update.state,
            dataset_path: update.dataset_path.or_else(|| old.as_ref().and_then(|o| o.dataset_path.clone())),
            manifest_hash: update.manifest_hash.or_else(|| old.as_ref().and_then(|o| o.manifest_hash.clone())),
            adapter_path: update.adapter_path.or_else(|| old.as_ref().and_then(|o| o.adapter_path.clone())),
            metrics: update.metrics.or_else(|| old.map(|o| o.metrics)).unwrap_or_else(|| serde_json::json!({})),
            id: update.id,
        };
        self.record_training_run(&run)?;
        Ok(run)
    }
}

/// Counts over the whole store.
pub trait StoreStats {
    /// Counts, daily trend and per-source health.
    fn stats(&self) -> Result<Stats, StoreError>;
}

/// Where sam keeps its examples and what it did with them: every concern
/// at once, for code that needs the whole store (the pipeline, `sam`).
/// Implemented for everything that implements the four concerns.
pub trait Store: Examples + Quarantine + Bookkeeping + StoreStats {}

impl<T: Examples + Quarantine + Bookkeeping + StoreStats + ?Sized> Store for T {}

/// The store's traits, to call their methods: `use sam_store::prelude::*;`.
pub mod prelude {
    pub use crate::{Bookkeeping as _, Examples as _, Quarantine as _, Store, StoreStats as _};
}

/// A store behind `&mut` is a store (to lend one to a `Capturer` or a
/// stage without giving it away).
impl<S: Examples + ?Sized> Examples for &mut S {
    fn insert_batch(&mut self, batch: &Batch<'_>) -> Result<InsertReport, StoreError> {
        (**self).insert_batch(batch)
    }
    fn cursor(&self, source: &str) -> Result<Option<String>, StoreError> {
        (**self).cursor(source)
    }
    fn scan(
        &self,
        filter: &Filter,
        visit: &mut dyn FnMut(Example) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        (**self).scan(filter, visit)
    }
    fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        (**self).count(filter)
    }
    fn validate(
        &mut self,
        opts: &ValidateOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ValidateReport, StoreError> {
        (**self).validate(opts, progress)
    }
    fn validation_log(&self, example_id: &str) -> Result<Vec<ValidationEntry>, StoreError> {
        (**self).validation_log(example_id)
    }
    fn dedup(&mut self, dry_run: bool) -> Result<DedupReport, StoreError> {
        (**self).dedup(dry_run)
    }
    fn dedup_near(&mut self, cfg: &NearDupConfig, remove: bool) -> Result<NearDupReport, StoreError> {
        (**self).dedup_near(cfg, remove)
    }
}

impl<S: Quarantine + ?Sized> Quarantine for &mut S {
    fn quarantined(&self, limit: Option<u64>) -> Result<Vec<QuarantineEntry>, StoreError> {
        (**self).quarantined(limit)
    }
    fn quarantine_len(&self) -> Result<u64, StoreError> {
        (**self).quarantine_len()
    }
    fn clear_quarantine(&mut self, ids: Option<&[i64]>) -> Result<u64, StoreError> {
        (**self).clear_quarantine(ids)
    }
}

impl<S: Bookkeeping + ?Sized> Bookkeeping for &mut S {
    fn export(&mut self, filter: &Filter, path: &Path, format: ExportFormat) -> Result<ExportRecord, StoreError> {
        (**self).export(filter, path, format)
    }
    fn exports(&self) -> Result<Vec<ExportRecord>, StoreError> {
        (**self).exports()
    }
    fn latest_export(&self) -> Result<Option<ExportRecord>, StoreError> {
        (**self).latest_export()
    }
    fn record_training_run(&mut self, run: &TrainingRun) -> Result<(), StoreError> {
        (**self).record_training_run(run)
    }
    fn training_runs(&self) -> Result<Vec<TrainingRun>, StoreError> {
        (**self).training_runs()
    }
}

impl<S: StoreStats + ?Sized> StoreStats for &mut S {
    fn stats(&self) -> Result<Stats, StoreError> {
        (**self).stats()
    }
}
