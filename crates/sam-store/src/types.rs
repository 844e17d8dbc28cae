//! The values the store takes and gives back.

use std::path::PathBuf;

use sam_schema::{Example, Kind, LineError, Tier, quality::QualityConfig};
use serde::{Deserialize, Serialize};

/// Settings of the store (the `[store]` section of `sam.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// How long a writer waits for another process's write lock before it
    /// gives up, in milliseconds.
    pub busy_timeout_ms: u64,
    /// SQLite page cache per connection, in MiB (a bigger cache keeps the
    /// content-hash index in memory, which keeps large ingests fast).
    pub cache_mib: u64,
    /// Examples per write transaction when ingesting files: each committed
    /// batch survives a crash whole, an interrupted one leaves no trace.
    ///
    /// Bigger batches are faster on big stores: every commit rewrites the
    /// content-hash index pages the batch touched, and random hashes touch
    /// nearly all of them. At 1M rows, 50,000 per batch ingests 1.4× faster
    /// than 10,000; memory grows with it (about 1 KB per example in flight).
    pub batch_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { busy_timeout_ms: 30_000, cache_mib: 64, batch_size: 50_000 }
    }
}

/// Which examples a query, an export or a count selects. Empty lists select
/// everything; several lists select the examples that match all of them.
///
/// Times are Unix seconds and apply to an example's `created_at`, or to the
/// time it was stored when its `created_at` is 0 (unknown).
///
/// ```
/// use sam_store::Filter;
/// use sam_schema::Tier;
/// let f = Filter::default().tiers([Tier::Gold, Tier::Silver]).source("git").since(1_700_000_000);
/// assert_eq!(f.sources, vec!["git".to_string()]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Tiers to keep.
    pub tiers: Vec<Tier>,
    /// Kinds to keep.
    pub kinds: Vec<Kind>,
    /// Sources to keep.
    pub sources: Vec<String>,
    /// Domains to keep.
    pub domains: Vec<String>,
    /// Keep examples at or after this time.
    pub since: Option<i64>,
    /// Keep examples before this time.
    pub until: Option<i64>,
    /// Keep examples whose quality score is at least this.
    pub min_quality: Option<f64>,
    /// At most this many examples (oldest first).
    pub limit: Option<u64>,
}

impl Filter {
    /// Keep these tiers.
    pub fn tiers(mut self, tiers: impl IntoIterator<Item = Tier>) -> Self {
        self.tiers.extend(tiers);
        self
    }
    /// Keep these kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = Kind>) -> Self {
        self.kinds.extend(kinds);
        self
    }
    /// Keep this source too.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.sources.push(source.into());
        self
    }
    /// Keep this domain too.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domains.push(domain.into());
        self
    }
    /// Keep examples at or after `secs`.
    pub fn since(mut self, secs: i64) -> Self {
        self.since = Some(secs);
        self
    }
    /// Keep examples before `secs`.
    pub fn until(mut self, secs: i64) -> Self {
        self.until = Some(secs);
        self
    }
    /// Keep examples scored at least `q`.
    pub fn min_quality(mut self, q: f64) -> Self {
        self.min_quality = Some(q);
        self
    }
    /// At most `n` examples.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

/// One write: examples, and optionally where they were read from, the lines
/// that could not be read, and a source's new cursor. All of it commits in
/// one transaction, or none of it does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batch<'a> {
    /// The examples.
    pub examples: &'a [Example],
    /// Where the examples were read from (a file name, `<stdin>`), kept with
    /// the examples that are rejected.
    pub origin: Option<&'a str>,
    /// The 1-based line of each example in `origin`; empty when unknown,
    /// else as long as `examples`.
    pub lines: &'a [usize],
    /// Lines that could not be read as examples; they are quarantined.
    pub bad_lines: &'a [LineError],
    /// `(source, cursor)`: the source's position after this batch.
    pub cursor: Option<(&'a str, &'a str)>,
}

impl<'a> Batch<'a> {
    /// A batch of examples only.
    pub fn new(examples: &'a [Example]) -> Self {
        Self { examples, ..Self::default() }
    }
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertReport {
    /// New examples stored.
    pub inserted: u64,
    /// Examples whose content was already stored (or appeared earlier in the
    /// same batch).
    pub duplicates: u64,
    /// Examples refused because they fail basic validity; each is
    /// quarantined with its reason.
    pub rejected: u64,
    /// Why each rejected example was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejections: Vec<Rejection>,
    /// Unreadable lines newly quarantined (a line already in quarantine is
    /// not stored twice).
    pub quarantined: u64,
}

impl InsertReport {
    /// Add another report's counts to this one.
    pub fn merge(&mut self, other: InsertReport) {
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.quarantined += other.quarantined;
        self.rejections.extend(other.rejections);
    }
}

/// An example refused on insert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Its position in the batch.
    pub index: usize,
    /// Its id.
    pub id: String,
    /// Why it was refused.
    pub reason: String,
}

/// A line kept aside because it could not be stored as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// The entry's number (for clearing it).
    pub id: i64,
    /// The file it came from (`<stdin>`, or `<insert>` for an example handed
    /// to the store in code).
    pub origin: String,
    /// Its 1-based line (0 when unknown).
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
    /// The text as read.
    pub raw: String,
    /// When it was quarantined (Unix seconds).
    pub at: i64,
}

impl std::fmt::Display for QuarantineEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.origin, self.line, self.reason)
    }
}

/// How to validate.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// The thresholds of the checks.
    pub quality: QualityConfig,
    /// Validate every example again, not only those never validated (use it
    /// after changing the thresholds).
    pub all: bool,
}

/// What a validation pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidateReport {
    /// The pass's number in the validation log.
    pub run_id: i64,
    /// Examples validated.
    pub examples: u64,
    /// How many landed in each tier, best first (gold, silver, bronze, unverified).
    pub tiers: [u64; 4],
    /// Examples with at least one finding (their reasons are in the log).
    pub with_findings: u64,
    /// How often each check failed, most frequent first.
    pub checks: Vec<(String, u64)>,
}

/// One example's entry in the validation log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationEntry {
    /// The validation pass.
    pub run_id: i64,
    /// The example's id.
    pub example_id: String,
    /// Its score.
    pub score: f64,
    /// The tier it got.
    pub tier: Tier,
    /// Why it lost points.
    pub reasons: String,
}

/// What an exact-deduplication pass found (and removed, unless dry).
///
/// Examples sharing a content hash are refused on insert, so only input-hash
/// groups are left for this pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupReport {
    /// Groups of examples sharing an input hash (the same question asked again).
    pub input_groups: u64,
    /// Examples removed (or that would be, on a dry run): every copy but the best.
    pub removed: u64,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// How exported examples are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// sam's full form: every field (what `sam-prep` reads; it re-ingests).
    #[default]
    Full,
    /// The bare form mlx-lm and TRL read (`messages`, `prompt`/`chosen`/`rejected`, …).
    Training,
}

/// One export, as recorded in the export history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The export's number.
    pub id: i64,
    /// When it was written (Unix seconds).
    pub at: i64,
    /// The file written.
    pub path: PathBuf,
    /// The filter that selected the rows.
    pub filter: Filter,
    /// The form of the rows.
    pub format: ExportFormat,
    /// Rows written.
    pub rows: u64,
    /// BLAKE3 of the file's bytes (64 hex digits).
    pub hash: String,
}

/// Where a recorded training run is. Stored as its name (`running`,
/// `trained`, ...); the names older versions wrote (`succeeded`,
/// `completed`) read as [`RunState::Trained`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Training.
    Running,
    /// Stopped on request; resumable.
    Stopped,
    /// Stopped by an error.
    Failed,
    /// Training finished; the adapter is final.
    Trained,
    /// Trained, then scored on the held-out split (the pipeline's report stage).
    Evaluated,
}

impl RunState {
    /// The state's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Failed => "failed",
            RunState::Trained => "trained",
            RunState::Evaluated => "evaluated",
        }
    }

    /// The state a stored name means (older names included).
    pub fn parse(name: &str) -> Option<RunState> {
        Some(match name {
            "running" => RunState::Running,
            "stopped" | "paused" => RunState::Stopped,
            "failed" => RunState::Failed,
            "trained" | "succeeded" | "completed" => RunState::Trained,
            "evaluated" => RunState::Evaluated,
            _ => return None,
        })
    }

    /// Whether the run is over (not running).
    pub fn is_finished(self) -> bool {
        self != RunState::Running
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to a training run's record ([`crate::Bookkeeping::record_run`]): its
/// new state, and whatever else is known now. Fields left `None` keep what
/// the record holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunUpdate {
    /// The run's id (its folder name under `runs/`).
    pub id: String,
    /// Its new state.
    pub state: RunState,
    /// The prepared dataset it trains on.
    pub dataset_path: Option<PathBuf>,
    /// The hash of that dataset's manifest.
    pub manifest_hash: Option<String>,
    /// The adapter it wrote.
    pub adapter_path: Option<PathBuf>,
    /// Its figures.
    pub metrics: Option<serde_json::Value>,
}

impl RunUpdate {
    /// Run `id` is now in `state`; nothing else changes.
    pub fn new(id: &str, state: RunState) -> Self {
        Self { id: id.to_string(), state, dataset_path: None, manifest_hash: None, adapter_path: None, metrics: None }
    }
}

/// A training run as the orchestrator records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRun {
    /// The run's id (its folder name under `runs/`).
    pub id: String,
    /// When it started (Unix seconds).
    pub started: i64,
    /// When it finished, once it has.
    pub finished: Option<i64>,
    /// Where it is.
    pub status: RunState,
    /// The prepared dataset it trained on.
    pub dataset_path: Option<PathBuf>,
    /// The hash of that dataset's manifest.
    pub manifest_hash: Option<String>,
    /// The adapter it wrote.
    pub adapter_path: Option<PathBuf>,
    /// Final metrics (any JSON).
    pub metrics: serde_json::Value,
}

/// Counts of the whole store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Examples stored.
    pub total: u64,
    /// Examples validated at least once.
    pub validated: u64,
    /// Examples per tier.
    pub by_tier: Vec<(Tier, u64)>,
    /// Examples per kind.
    pub by_kind: Vec<(Kind, u64)>,
    /// Examples per domain.
    pub by_domain: Vec<(String, u64)>,
    /// Examples per day (UTC), oldest first: the last 30 days that have any.
    pub daily: Vec<DailyCount>,
    /// Health of each source.
    pub sources: Vec<SourceHealth>,
    /// Lines in quarantine.
    pub quarantined: u64,
    /// Exports written.
    pub exports: u64,
    /// Training runs recorded.
    pub training_runs: u64,
    /// When these figures were computed (Unix seconds); they are cached until
    /// the store changes.
    pub computed_at: i64,
}

/// Examples stored on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyCount {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Examples from that day (by their own time, else when they were stored).
    pub examples: u64,
}

/// How well one source feeds the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceHealth {
    /// The source.
    pub source: String,
    /// Examples it has in the store now.
    pub examples: u64,
    /// Examples it offered that were new, over all time.
    pub inserted: u64,
    /// Examples it offered that were already stored.
    pub duplicates: u64,
    /// Examples it offered that failed basic validity.
    pub rejected: u64,
    /// Mean quality score of its validated examples.
    pub mean_quality: Option<f64>,
    /// Share of its validated examples in gold or silver.
    pub good_share: Option<f64>,
    /// 0–100: mean quality × share of its offers that were valid (see the
    /// crate docs); `None` until some of its examples are validated.
    pub health: Option<f64>,
}
