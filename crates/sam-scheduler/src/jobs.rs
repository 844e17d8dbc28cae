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
use sam_home::config::ScheduleSection;
use sam_schema::Tier;
use sam_schema::quality::QualityConfig;
use sam_store::near_dup::NearDupConfig;
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore, ValidateOptions};
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

/// The retry, deferral and catch-up settings of `[schedule]`.
pub fn policy(settings: &ScheduleSection) -> crate::Policy {
    crate::Policy {
        retry_base_secs: settings.retry_base_secs,
        retry_max_secs: settings.retry_max_secs,
        defer_secs: settings.defer_secs,
        missed_after_secs: settings.missed_after_secs,
    }
}

/// The job names of the standard table, in order.
pub const JOBS: [&str; 5] = ["mine", "dedup", "validate", "export", "train"];

/// Adds the standard jobs to `s`: `mine`, `dedup`, `validate`, `export`
/// and `train` (the trigger over `pipeline`), each with its interval from
/// `[schedule]` (an interval of 0 leaves the job out). The store, the
/// cleaning rules and the eligible tiers are the pipeline's; the mining job
/// mines `settings.repos` and `settings.folders`.
pub fn add_standard(s: &mut crate::Scheduler, settings: &ScheduleSection, pipeline: &sam_pipeline::PipelineConfig) {
    let delay = settings.randomized_delay_secs;
    let store = pipeline.home.store_db();
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
        let export =
            ExportJob { store: store.clone(), dir: pipeline.home.exports_dir(), tiers: pipeline.export_tiers.clone() };
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn the_policy_defaults_are_the_files_defaults() {
        assert_eq!(policy(&ScheduleSection::default()), crate::Policy::default());
    }

    fn ctx(now: i64) -> TaskContext {
        TaskContext { stop: Arc::new(AtomicBool::new(false)), force: false, now }
    }

    fn commit(repo: &git2::Repository, name: &str, text: &str, message: &str) {
        let root = repo.workdir().unwrap().to_path_buf();
        std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
        std::fs::write(root.join(name), text).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new(name)).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("Ada Dev", "ada@dev.example").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parent.iter().collect::<Vec<_>>()).unwrap();
    }

    const README: &str = "# Cachey\n\nA small in-memory cache with expiry.\n\n## Install\n\nAdd `cachey = \"0.3\"` to the `[dependencies]` of your Cargo.toml and run `cargo build`; there are no other requirements.\n\n## Expiry\n\nEvery entry has a time to live. `Cache::get` returns `None` for an entry whose time has passed and removes it on the way, so memory is reclaimed lazily.\n";
    const LIB: &str = "/// Return the entry stored under `key`, or `None` when it is missing or expired.\npub fn get(map: &std::collections::HashMap<String, String>, key: &str) -> Option<String> {\n    map.get(key).cloned()\n}\n";

    #[test]
    fn mine_validate_dedup_and_export_through_the_real_store() {
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = tmp.path().join("repo");
        let repo = git2::Repository::init(&repo_dir).unwrap();
        commit(&repo, "README.md", README, "Add the README with install and expiry sections");
        commit(&repo, "src/lib.rs", LIB, "Add get over a HashMap, the first operation of the cache");
        let store = tmp.path().join("store.db");

        let mut mine = MineJob::new(&store, vec![repo_dir.clone()], Vec::new());
        let r = mine.run(&ctx(1)).unwrap();
        assert_eq!(r.done, Done::Succeeded, "{r:?}");
        assert_eq!(r.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["git", "docs", "code"]);
        let inserted = r.output["inserted"].as_u64().unwrap();
        assert!(inserted >= 3, "{r:?}");
        // Incremental: nothing new the second time.
        assert_eq!(mine.run(&ctx(2)).unwrap().done, Done::Idle);
        assert_eq!(mine.memory_needed(&ctx(2)), MINE_BYTES);

        let mut validate = ValidateJob { store: store.clone(), quality: Default::default() };
        let r = validate.run(&ctx(3)).unwrap();
        assert_eq!((r.done, r.output["examples"].as_u64()), (Done::Succeeded, Some(inserted)));
        assert_eq!(validate.run(&ctx(4)).unwrap().done, Done::Idle);

        let mut dedup = DedupJob { store: store.clone(), near: Some(Default::default()) };
        let r = dedup.run(&ctx(5)).unwrap();
        assert_eq!(r.steps.len(), 2);

        let dir = tmp.path().join("exports");
        let mut export =
            ExportJob { store: store.clone(), dir: dir.clone(), tiers: vec![Tier::Gold, Tier::Silver, Tier::Bronze] };
        let r = export.run(&ctx(6)).unwrap();
        assert_eq!(r.done, Done::Succeeded, "{r:?}");
        assert!(dir.join("scheduled-6.jsonl").is_file());
        // The same rows again: not kept twice.
        let r = export.run(&ctx(7)).unwrap();
        assert_eq!(r.done, Done::Idle, "{r:?}");
        assert!(!dir.join("scheduled-7.jsonl").exists());

        // A stop between sources: the mining job says so.
        let stopped = TaskContext { stop: Arc::new(AtomicBool::new(true)), force: false, now: 8 };
        assert_eq!(mine.run(&stopped).unwrap().done, Done::Stopped);
    }

    #[test]
    fn mining_nothing_configured_is_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let mut mine = MineJob::new(tmp.path().join("store.db"), Vec::new(), Vec::new());
        assert_eq!(mine.run(&ctx(1)).unwrap().done, Done::Idle);
    }
}
