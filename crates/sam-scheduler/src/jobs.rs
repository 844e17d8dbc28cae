//! The jobs sam's daemon runs: mining, deduplication, validation and
//! export through the store and capture crates, and the training trigger
//! ([`crate::trigger`]) that runs the pipeline.
//!
//! Each is a [`Task`] that declares the free memory it needs
//! ([`MINE_BYTES`] and so on); the daemon defers it while less is free.
//! Each opens the store for its run only, and each store call is one
//! transaction, so a stop between calls leaves nothing half written.

use std::path::PathBuf;

use sam_capture::code::{CodeConfig, CodeSource};
use sam_capture::docs::{DocsConfig, DocsSource};
use sam_capture::git::{GitConfig, GitSource};
use sam_capture::{DataSource, Pipeline, collect_into};
use sam_schema::Tier;
use sam_schema::quality::QualityConfig;
use sam_store::near_dup::NearDupConfig;
use sam_store::{Filter, SqliteStore, Store, ValidateOptions};
use serde_json::json;

use crate::task::{Done, Step, StepStatus, Task, TaskContext, TaskError, TaskReport};

/// Free memory the mining job needs: 0.5 GB.
pub const MINE_BYTES: u64 = 500_000_000;
/// Free memory the deduplication job needs: 0.3 GB.
pub const DEDUP_BYTES: u64 = 300_000_000;
/// Free memory the validation job needs: 0.5 GB.
pub const VALIDATE_BYTES: u64 = 500_000_000;
/// Free memory the export job needs: 0.2 GB.
pub const EXPORT_BYTES: u64 = 200_000_000;

/// Mining: the git history, markdown docs and documented code of the
/// configured repositories, and the docs and code of the configured
/// folders, incrementally (each source resumes from its cursor in the
/// store), through redaction and quality scoring.
#[derive(Debug, Clone)]
pub struct MineJob {
    /// The store.
    pub store: PathBuf,
    /// Git repositories: history, docs and code.
    pub repos: Vec<PathBuf>,
    /// Folders (not git repositories): docs and code.
    pub folders: Vec<PathBuf>,
    /// Redaction, scoring and domains.
    pub cleaning: sam_capture::PipelineConfig,
    /// The git source's settings.
    pub git: GitConfig,
    /// The docs source's settings.
    pub docs: DocsConfig,
    /// The code source's settings.
    pub code: CodeConfig,
}

impl MineJob {
    /// Mine `repos` and `folders` into `store` with the default settings.
    pub fn new(store: impl Into<PathBuf>, repos: Vec<PathBuf>, folders: Vec<PathBuf>) -> Self {
        Self {
            store: store.into(),
            repos,
            folders,
            cleaning: Default::default(),
            git: Default::default(),
            docs: Default::default(),
            code: Default::default(),
        }
    }
}

impl Task for MineJob {
    fn memory_needed(&mut self, _: &TaskContext) -> u64 {
        MINE_BYTES
    }

    fn run(&mut self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        if self.repos.is_empty() && self.folders.is_empty() {
            return Ok(TaskReport::new(Done::Idle, json!({ "sources": [] })));
        }
        let roots: Vec<PathBuf> = self.repos.iter().chain(&self.folders).cloned().collect();
        let mut sources: Vec<Box<dyn DataSource>> = Vec::new();
        if !self.repos.is_empty() {
            sources.push(Box::new(GitSource::new(self.repos.clone(), self.git.clone())));
        }
        sources.push(Box::new(DocsSource::new(roots.clone(), self.docs.clone())));
        sources.push(Box::new(CodeSource::new(roots, self.code.clone())));
        let pipeline = Pipeline::new(self.cleaning.clone());
        let mut store = SqliteStore::open(&self.store)?;
        let mut steps = Vec::new();
        let mut inserted = 0;
        for src in &mut sources {
            // Between sources: each source's batch commits whole, with its cursor.
            if ctx.stopping() {
                return Ok(TaskReport { done: Done::Stopped, steps, output: json!({ "inserted": inserted }) });
            }
            let t0 = std::time::Instant::now();
            let r = collect_into(src.as_mut(), &mut store, &pipeline)?;
            inserted += r.inserted;
            steps.push(Step {
                name: r.source.clone(),
                seconds: t0.elapsed().as_secs_f64(),
                status: StepStatus::Finished,
                output: serde_json::to_value(&r)?,
            });
        }
        let done = if inserted == 0 { Done::Idle } else { Done::Succeeded };
        Ok(TaskReport { done, steps, output: json!({ "inserted": inserted }) })
    }
}

/// Deduplication: examples asking the same question (exact input hash),
/// then near-duplicates (MinHash + LSH) unless turned off.
#[derive(Debug, Clone)]
pub struct DedupJob {
    /// The store.
    pub store: PathBuf,
    /// Near-duplicate removal (`None`: exact only).
    pub near: Option<NearDupConfig>,
}

impl Task for DedupJob {
    fn memory_needed(&mut self, _: &TaskContext) -> u64 {
        DEDUP_BYTES
    }

    fn run(&mut self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let mut store = SqliteStore::open(&self.store)?;
        let t0 = std::time::Instant::now();
        let exact = store.dedup(false)?;
        let mut steps = vec![Step {
            name: "same_question".into(),
            seconds: t0.elapsed().as_secs_f64(),
            status: StepStatus::Finished,
            output: serde_json::to_value(&exact)?,
        }];
        let mut removed = exact.removed;
        if let Some(near) = &self.near {
            if ctx.stopping() {
                return Ok(TaskReport { done: Done::Stopped, steps, output: json!({ "removed": removed }) });
            }
            let t0 = std::time::Instant::now();
            let r = store.dedup_near(near, true)?;
            removed += r.removed;
            steps.push(Step {
                name: "near_duplicates".into(),
                seconds: t0.elapsed().as_secs_f64(),
                status: StepStatus::Finished,
                output: serde_json::to_value(&r)?,
            });
        }
        let done = if removed == 0 { Done::Idle } else { Done::Succeeded };
        Ok(TaskReport { done, steps, output: json!({ "removed": removed }) })
    }
}

/// Quality validation of the examples not validated yet, into tiers.
#[derive(Debug, Clone)]
pub struct ValidateJob {
    /// The store.
    pub store: PathBuf,
    /// The checks' thresholds.
    pub quality: QualityConfig,
}

impl Task for ValidateJob {
    fn memory_needed(&mut self, _: &TaskContext) -> u64 {
        VALIDATE_BYTES
    }

    fn run(&mut self, _: &TaskContext) -> Result<TaskReport, TaskError> {
        let mut store = SqliteStore::open(&self.store)?;
        let opts = ValidateOptions { quality: self.quality.clone(), all: false };
        let r = store.validate(&opts, &mut |_, _| {})?;
        let done = if r.examples == 0 { Done::Idle } else { Done::Succeeded };
        Ok(TaskReport::new(done, serde_json::to_value(&r)?))
    }
}

/// Export: a quality-filtered snapshot of the store (the eligible tiers,
/// sam's full form), recorded in the store's export history, for training
/// elsewhere. A snapshot identical to the previous one is not kept.
#[derive(Debug, Clone)]
pub struct ExportJob {
    /// The store.
    pub store: PathBuf,
    /// The folder the snapshots go to (`scheduled-<unix seconds>.jsonl`).
    pub dir: PathBuf,
    /// Tiers exported.
    pub tiers: Vec<Tier>,
}

impl Task for ExportJob {
    fn memory_needed(&mut self, _: &TaskContext) -> u64 {
        EXPORT_BYTES
    }

    fn run(&mut self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let mut store = SqliteStore::open(&self.store)?;
        let previous = store
            .exports()?
            .into_iter()
            .rev()
            .find(|e| e.path.parent() == Some(self.dir.as_path()) && e.path.is_file());
        let filter = Filter::default().tiers(self.tiers.iter().copied());
        let path = self.dir.join(format!("scheduled-{}.jsonl", ctx.now));
        let rec = store.export(&filter, &path, Default::default())?;
        if let Some(prev) = previous.filter(|p| p.hash == rec.hash && p.path != rec.path) {
            // Nothing new since the last snapshot: keep that one only.
            let _ = std::fs::remove_file(&rec.path);
            return Ok(TaskReport::new(Done::Idle, json!({ "rows": rec.rows, "same_as": prev.path })));
        }
        let done = if rec.rows == 0 { Done::Idle } else { Done::Succeeded };
        Ok(TaskReport::new(done, serde_json::to_value(&rec)?))
    }
}

/// What the standard job table is made of (`sam.toml`'s `[schedule]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Git repositories to mine (history, docs, code).
    pub repos: Vec<PathBuf>,
    /// Folders to mine (docs and code).
    pub folders: Vec<PathBuf>,
    /// Seconds between mining runs (0: off).
    pub mine_every_secs: u64,
    /// Seconds between deduplication runs (0: off).
    pub dedup_every_secs: u64,
    /// Seconds between validation runs (0: off).
    pub validate_every_secs: u64,
    /// Seconds between exports (0: off).
    pub export_every_secs: u64,
    /// Seconds between checks of the training trigger (0: off).
    pub train_check_every_secs: u64,
    /// Unseen eligible examples that start a training.
    pub train_threshold: u64,
    /// Up to this many seconds are added to each start, so jobs do not all start at once.
    pub randomized_delay_secs: u64,
    /// Retries, deferrals and catch-up.
    #[serde(flatten)]
    pub policy: crate::Policy,
}

impl Default for ScheduleSettings {
    /// Mining every 6 h, deduplication 24 h, validation 12 h, export 24 h,
    /// the trigger checked every 5 min at 100 unseen examples, up to 5 min
    /// of random delay.
    fn default() -> Self {
        Self {
            repos: Vec::new(),
            folders: Vec::new(),
            mine_every_secs: 6 * 3600,
            dedup_every_secs: 24 * 3600,
            validate_every_secs: 12 * 3600,
            export_every_secs: 24 * 3600,
            train_check_every_secs: 300,
            train_threshold: 100,
            randomized_delay_secs: 300,
            policy: crate::Policy::default(),
        }
    }
}

/// The job names of the standard table, in order.
pub const JOBS: [&str; 5] = ["mine", "dedup", "validate", "export", "train"];

/// Adds the standard jobs to `s`: `mine`, `dedup`, `validate`, `export`
/// and `train` (the trigger over `pipeline`), each with its interval from
/// `settings` (an interval of 0 leaves the job out). The store, the
/// cleaning rules and the eligible tiers are the pipeline's.
pub fn add_standard(s: &mut crate::Scheduler, settings: &ScheduleSettings, pipeline: &crate::PipelineConfig) {
    let delay = settings.randomized_delay_secs;
    let store = pipeline.store_path();
    let every = |secs| crate::Timing::every(secs, delay);
    if settings.mine_every_secs > 0 {
        let mut mine = MineJob::new(&store, settings.repos.clone(), settings.folders.clone());
        mine.cleaning = pipeline.cleaning.clone();
        mine.git = pipeline.git.clone();
        mine.docs = pipeline.docs.clone();
        mine.code = pipeline.code.clone();
        s.add("mine", every(settings.mine_every_secs), mine);
    }
    if settings.dedup_every_secs > 0 {
        s.add(
            "dedup",
            every(settings.dedup_every_secs),
            DedupJob { store: store.clone(), near: pipeline.near_dup.clone() },
        );
    }
    if settings.validate_every_secs > 0 {
        let quality = pipeline.cleaning.quality.clone();
        s.add("validate", every(settings.validate_every_secs), ValidateJob { store: store.clone(), quality });
    }
    if settings.export_every_secs > 0 {
        let export = ExportJob {
            store: store.clone(),
            dir: pipeline.home.join("exports"),
            tiers: pipeline.export_tiers.clone(),
        };
        s.add("export", every(settings.export_every_secs), export);
    }
    if settings.train_check_every_secs > 0 {
        let trigger = crate::trigger::TrainTrigger::new(
            pipeline.clone(),
            pipeline.export_tiers.clone(),
            settings.train_threshold,
        );
        s.add("train", every(settings.train_check_every_secs), trigger);
    }
}
