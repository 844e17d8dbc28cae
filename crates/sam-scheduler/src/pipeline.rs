//! The one pipeline: mine → validate + dedup → export → prep → train →
//! evaluate → report, each stage resumable.
//!
//! [`run`] is what `sam run` calls and what the scheduler's "enough new
//! data" trigger will call. Its progress goes to a [`Progress`]; its result
//! is a [`Summary`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use sam_capture::capture::{CaptureConfig, Capturer};
use sam_capture::code::{CodeConfig, CodeSource};
use sam_capture::docs::{DocsConfig, DocsSource};
use sam_capture::git::{GitConfig, GitSource};
use sam_capture::{DataSource, Pipeline, collect_into};
use sam_home::SamHome;
use sam_models::BaseModel;
use sam_prep::cache::{PreparedData, Split};
use sam_prep::prepare::{PrepConfig, Preparer, read_inputs};
use sam_prep::split::SplitRatios;
use sam_runs::RunDir;
use sam_schema::Tier;
use sam_store::near_dup::NearDupConfig;
use sam_store::{Filter, SqliteStore, Store, TrainingRun, ValidateOptions};
use sam_trainer::{
    Decoder, DpoConfig, Duration, EvalMetrics, EvalReport, Job, JobControl, JobMode, JobSpec, Layers, LoadOptions,
    LoraConfig, Observer, PreferenceMetrics, PreferenceStats, StepMetrics, Target, TrainConfig,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{
    CleanReport, DpoInfo, ExportInfo, MineReport, Outcome, PipelineState, PrepInfo, SourceReport, Stage, TrainInfo,
};

/// Everything the pipeline needs. [`PipelineConfig::new`] gives the embedded
/// default: sized to finish in minutes on a 2-core laptop with the test
/// model.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// `SAM_HOME`: the store, datasets, runs and the pipeline's state live here.
    pub home: SamHome,
    /// Git repositories to mine (their history, markdown docs and documented code).
    pub repos: Vec<PathBuf>,
    /// Feed the sample captures shipped with sam ([`crate::samples`]).
    pub sample_captures: bool,
    /// The base model: a Hugging Face folder or a GGUF file.
    pub model: PathBuf,
    /// Redaction, quality scoring and domain rules applied to everything mined or captured.
    pub cleaning: sam_capture::PipelineConfig,
    /// The git source's settings.
    pub git: GitConfig,
    /// The docs source's settings.
    pub docs: DocsConfig,
    /// The code source's settings.
    pub code: CodeConfig,
    /// Near-duplicate removal (`None`: exact deduplication only).
    pub near_dup: Option<NearDupConfig>,
    /// Tiers exported for training.
    pub export_tiers: Vec<Tier>,
    /// Dataset preparation.
    pub prep: PrepConfig,
    /// Training. `pad_id`, `out_dir` and `base_model` are filled in by the pipeline.
    pub train: TrainConfig,
    /// DPO on the dataset's preference pairs after SFT, starting from (and
    /// measured against) the SFT adapter, in the same run (`None`: SFT only).
    pub dpo: Option<DpoSettings>,
    /// Score at most this many test examples, the first ones in split order.
    pub max_eval_examples: Option<usize>,
    /// Validate on at most this many validation examples during training.
    pub max_valid_examples: Option<usize>,
    /// Train even when the export holds nothing new.
    pub force: bool,
}

/// The DPO phase's settings in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoSettings {
    /// β, loss variant, label smoothing (the reference is always the SFT adapter).
    pub config: DpoConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Optimiser steps.
    pub steps: usize,
}

impl Default for DpoSettings {
    /// β 0.1, sigmoid loss, learning rate 5e-4, 8 steps.
    fn default() -> Self {
        Self { config: DpoConfig::default(), lr: 5e-4, steps: 8 }
    }
}

impl PipelineConfig {
    /// The embedded default for `home` and `model` (no repositories yet).
    ///
    /// Training: LoRA rank 8 (alpha 16) on q, k, v and o of every layer,
    /// learning rate 1e-3 with 3 warmup steps, batch 1 with 2 accumulation
    /// steps, 32 steps, sequences cut to 256 tokens, validation (16
    /// examples) before and after training, a checkpoint every 8 steps;
    /// then, when the dataset has preference pairs, 8 DPO steps
    /// ([`DpoSettings::default`]). Prep: 256 tokens, 90/5/5 split.
    /// Evaluation: at most 32 test examples.
    pub fn new(home: impl Into<PathBuf>, model: impl Into<PathBuf>) -> Self {
        let train = TrainConfig {
            lora: LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.0,
                targets: vec![Target::Q, Target::K, Target::V, Target::O],
                layers: Layers::All,
                rslora: false,
            },
            lr: 1e-3,
            warmup_steps: Some(3),
            batch_size: 1,
            grad_accum: 2,
            max_seq_len: 256,
            duration: Duration::Iters(32),
            eval_every: 32,
            save_every: 8,
            checkpoint_every: 0,
            ..TrainConfig::default()
        };
        Self {
            home: SamHome::new(home.into()),
            repos: Vec::new(),
            sample_captures: true,
            model: model.into(),
            cleaning: Default::default(),
            git: Default::default(),
            docs: Default::default(),
            code: Default::default(),
            near_dup: Some(NearDupConfig::default()),
            export_tiers: vec![Tier::Gold, Tier::Silver, Tier::Bronze],
            prep: PrepConfig { max_seq_len: 256, split: SplitRatios::default(), ..PrepConfig::default() },
            train,
            dpo: Some(DpoSettings::default()),
            max_eval_examples: Some(32),
            max_valid_examples: Some(16),
            force: false,
        }
    }

    /// The store database.
    pub fn store_path(&self) -> PathBuf {
        self.home.store_db()
    }
}

/// Receives the pipeline's progress. Every method has an empty default.
pub trait Progress {
    /// A stage starts; `what` says what it does.
    fn stage_started(&mut self, _stage: Stage, _what: &str) {}
    /// Work done within the stage (`total` 0: unknown).
    fn advance(&mut self, _done: u64, _total: u64) {}
    /// A stage finished; `line` sums it up.
    fn stage_finished(&mut self, _stage: Stage, _line: &str) {}
    /// A stage was not run; `why` says why (finished by an earlier run, nothing new…).
    fn stage_skipped(&mut self, _stage: Stage, _why: &str) {}
    /// Something worth telling the user.
    fn note(&mut self, _msg: &str) {}
    /// A training phase (`sft`, `dpo`) starts, or continues from a checkpoint.
    fn train_phase(&mut self, _phase: &str, _total_steps: usize) {}
    /// A training step finished.
    fn train_step(&mut self, _m: &StepMetrics) {}
    /// A validation pass during training finished.
    fn train_eval(&mut self, _m: &EvalMetrics) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Where the pipeline's files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paths {
    /// SAM_HOME.
    pub home: PathBuf,
    /// The store.
    pub store: PathBuf,
    /// The pipeline's state file.
    pub state: PathBuf,
    /// The export file.
    pub export: Option<PathBuf>,
    /// The dataset folder.
    pub dataset: Option<PathBuf>,
    /// The run folder.
    pub run: Option<PathBuf>,
    /// The adapter folder.
    pub adapter: Option<PathBuf>,
}

/// What a pipeline run did: the final state plus where things are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The pipeline run's id.
    pub id: String,
    /// Trained, or nothing new to train on.
    pub outcome: Outcome,
    /// The first stage this invocation ran when it continued an interrupted run.
    pub resumed_at: Option<Stage>,
    /// Stages finished by an earlier, interrupted invocation and skipped now.
    pub skipped_stages: Vec<Stage>,
    /// The base model.
    pub model: PathBuf,
    /// Mining.
    pub mine: Option<MineReport>,
    /// Validation and deduplication.
    pub clean: Option<CleanReport>,
    /// The export.
    pub export: Option<ExportInfo>,
    /// The dataset.
    pub prep: Option<PrepInfo>,
    /// Training.
    pub train: Option<TrainInfo>,
    /// Base vs adapter on the held-out test split.
    pub eval: Option<EvalReport>,
    /// Files.
    pub paths: Paths,
    /// Wall time of this invocation, seconds.
    pub seconds: f64,
}

/// Runs the pipeline, continuing an interrupted run when there is one.
///
/// A run that finds nothing new (the export's hash equals the last trained
/// run's) stops after the export with [`Outcome::NothingNew`] and trains
/// nothing, unless `cfg.force` is set.
pub fn run(cfg: &PipelineConfig, progress: &mut dyn Progress) -> Result<Summary> {
    let t0 = Instant::now();
    if !cfg.model.exists() {
        return Err(Error::ModelMissing {
            path: cfg.model.clone(),
            hint: "run scripts/fetch-test-model.sh for the test model, or pass a Hugging Face folder or a .gguf file"
                .into(),
        });
    }
    std::fs::create_dir_all(cfg.home.root()).map_err(|e| Error::io(cfg.home.root(), e))?;
    let mut st = match PipelineState::load(cfg.home.root())? {
        Some(mut s) if s.outcome.is_none() => {
            s.resumed_at = Stage::ALL.into_iter().find(|st| !s.finished(*st));
            if let Some(at) = s.resumed_at {
                progress.note(&format!("continuing interrupted pipeline run {} at the {at} stage", s.id));
            }
            s
        }
        prev => {
            let baseline = prev.and_then(|p| match p.outcome {
                Some(Outcome::Trained) => p.export.map(|e| e.hash),
                _ => p.baseline_export_hash,
            });
            PipelineState::new(sam_runs::new_run_id(), baseline)
        }
    };
    let skipped_stages: Vec<Stage> = Stage::ALL.into_iter().filter(|s| st.finished(*s)).collect();
    for s in &skipped_stages {
        progress.stage_skipped(*s, "finished by the interrupted run");
    }
    st.save(cfg.home.root())?;
    let mut store = SqliteStore::open(cfg.store_path())?;

    if !st.finished(Stage::Mine) {
        st.mine = Some(mine(cfg, &mut store, progress)?);
        st.reached = Some(Stage::Mine);
        st.save(cfg.home.root())?;
    }
    if !st.finished(Stage::Clean) {
        st.clean = Some(clean(cfg, &mut store, progress)?);
        st.reached = Some(Stage::Clean);
        st.save(cfg.home.root())?;
    }
    if !st.finished(Stage::Export) {
        let export = export(cfg, &st.id, &mut store, progress)?;
        let same = st.baseline_export_hash.as_deref() == Some(export.hash.as_str());
        st.export = Some(export);
        st.reached = Some(Stage::Export);
        if same && !cfg.force {
            for s in [Stage::Prep, Stage::Train, Stage::Evaluate] {
                progress.stage_skipped(s, "nothing new to train on");
            }
            progress.note("nothing new to train on: the export is the same as the last trained run's");
            st.reached = Some(Stage::Report);
            st.outcome = Some(Outcome::NothingNew);
            st.save(cfg.home.root())?;
            append_history(&cfg.home, &st)?;
            return Ok(summary(cfg, &st, skipped_stages, t0));
        }
        st.save(cfg.home.root())?;
    }
    let export_path = st.export.as_ref().map(|e| e.path.clone()).expect("export finished");
    let base = BaseModel::open(&cfg.model)?;
    let dataset = cfg.home.dataset_dir(&st.id);
    if !st.finished(Stage::Prep) {
        st.prep = Some(prep(cfg, &base, &export_path, &dataset, progress)?);
        st.reached = Some(Stage::Prep);
        st.save(cfg.home.root())?;
    }
    let prep_info = st.prep.clone().expect("prep finished");
    let data = PreparedData::open(&prep_info.dir)?;
    let pad_id = {
        let sp = base.special_tokens();
        sp.pad.as_ref().or(sp.eos.as_ref()).map_or(0, |t| t.id)
    };
    let mut train_cfg = cfg.train.clone();
    train_cfg.pad_id = pad_id;
    train_cfg.base_model = Some(base.name());
    let mut model: Option<Decoder> = None;
    if !st.finished(Stage::Train) {
        // An interrupted training continues in its own run folder, from its
        // last checkpoint.
        let run_id = match &st.run_started {
            Some(old) if cfg.home.run_dir(old).join("status.json").is_file() => {
                progress.note(&format!("training run {old} was interrupted: continuing it from its last checkpoint"));
                old.clone()
            }
            _ => {
                let id = sam_runs::new_run_id();
                st.run_started = Some(id.clone());
                st.save(cfg.home.root())?;
                id
            }
        };
        let (m, info) = train(cfg, &mut store, &train_cfg, &prep_info, &run_id, progress)?;
        model = m;
        st.train = Some(info);
        st.reached = Some(Stage::Train);
        st.save(cfg.home.root())?;
    }
    let train_info = st.train.clone().expect("train finished");
    if !st.finished(Stage::Evaluate) {
        let model = match model.take() {
            Some(m) => m,
            None => {
                let mut m = sam_trainer::load_model(&cfg.model, &LoadOptions::default())?;
                sam_trainer::load_adapter(&mut m, &train_info.adapter_dir)?;
                m
            }
        };
        st.eval = Some(evaluate(cfg, &model, &train_cfg, &data, &train_info, &mut store, &prep_info, progress)?);
        st.reached = Some(Stage::Evaluate);
        st.save(cfg.home.root())?;
    }
    st.reached = Some(Stage::Report);
    st.outcome = Some(Outcome::Trained);
    st.save(cfg.home.root())?;
    append_history(&cfg.home, &st)?;
    Ok(summary(cfg, &st, skipped_stages, t0))
}

fn summary(cfg: &PipelineConfig, st: &PipelineState, skipped_stages: Vec<Stage>, t0: Instant) -> Summary {
    Summary {
        id: st.id.clone(),
        outcome: st.outcome.unwrap_or(Outcome::NothingNew),
        resumed_at: st.resumed_at,
        skipped_stages,
        model: cfg.model.clone(),
        mine: st.mine.clone(),
        clean: st.clean.clone(),
        export: st.export.clone(),
        prep: st.prep.clone(),
        train: st.train.clone(),
        eval: st.eval.clone(),
        paths: Paths {
            home: cfg.home.root().to_path_buf(),
            store: cfg.store_path(),
            state: PipelineState::path(cfg.home.root()),
            export: st.export.as_ref().map(|e| e.path.clone()),
            dataset: st.prep.as_ref().map(|p| p.dir.clone()),
            run: st.train.as_ref().map(|t| t.run_dir.clone()),
            adapter: st.train.as_ref().map(|t| t.adapter_dir.clone()),
        },
        seconds: t0.elapsed().as_secs_f64(),
    }
}

fn append_history(home: &SamHome, st: &PipelineState) -> Result<()> {
    use std::io::Write as _;
    let path = home.pipeline_history();
    let line = serde_json::to_string(st).map_err(|source| Error::State { path: path.clone(), source })?;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
}

fn mine(cfg: &PipelineConfig, store: &mut SqliteStore, progress: &mut dyn Progress) -> Result<MineReport> {
    progress.stage_started(Stage::Mine, "mining git history, markdown docs and documented code");
    let pipeline = Pipeline::new(cfg.cleaning.clone());
    let mut report = MineReport { repos: cfg.repos.clone(), ..Default::default() };
    if !cfg.repos.is_empty() {
        let mut sources: Vec<Box<dyn DataSource>> = vec![
            Box::new(GitSource::new(cfg.repos.clone(), cfg.git.clone())),
            Box::new(DocsSource::new(cfg.repos.clone(), cfg.docs.clone())),
            Box::new(CodeSource::new(cfg.repos.clone(), cfg.code.clone())),
        ];
        let n = sources.len() as u64 + u64::from(cfg.sample_captures);
        for (i, src) in sources.iter_mut().enumerate() {
            progress.advance(i as u64, n);
            let r = collect_into(src.as_mut(), store, &pipeline)?;
            report.redacted.merge(&r.redacted);
            report.sources.push(SourceReport {
                source: r.source,
                collected: r.collected as u64,
                inserted: r.inserted,
                duplicates: r.duplicates,
                rejected: r.rejected,
                skipped: r.skipped.into_iter().map(|(k, v)| (k, v as u64)).collect(),
            });
        }
    }
    if cfg.sample_captures {
        let events = crate::samples::sample_captures()?;
        let capture_cfg = CaptureConfig {
            max_batch: events.len().max(1),
            spool: Some(cfg.home.capture_spool()),
            ..CaptureConfig::default()
        };
        let mut capturer = Capturer::new(SqliteStore::open(cfg.store_path())?, pipeline, capture_cfg);
        let mut sr = SourceReport { source: "captures".into(), collected: events.len() as u64, ..Default::default() };
        let absorb = |f: sam_capture::capture::FlushReport, sr: &mut SourceReport| -> Result<()> {
            if let Some(e) = f.error {
                return Err(Error::NoData(format!(
                    "the sample captures could not be stored ({e}); they wait in the spool"
                )));
            }
            sr.inserted += f.stored;
            sr.duplicates += f.duplicates;
            sr.rejected += f.rejected;
            Ok(())
        };
        for ev in events {
            if let Some(f) = capturer.capture(ev)? {
                absorb(f, &mut sr)?;
            }
        }
        absorb(capturer.flush()?, &mut sr)?;
        report.redacted.merge(capturer.redacted());
        report.sources.push(sr);
    }
    let line = report
        .sources
        .iter()
        .map(|s| format!("{} {} new/{}", s.source, s.inserted, s.collected))
        .collect::<Vec<_>>()
        .join(", ");
    progress.stage_finished(Stage::Mine, &format!("{line}; {} redactions", report.redacted.total()));
    Ok(report)
}

fn clean(cfg: &PipelineConfig, store: &mut SqliteStore, progress: &mut dyn Progress) -> Result<CleanReport> {
    progress.stage_started(Stage::Clean, "validating into tiers and removing duplicates");
    let opts = ValidateOptions { quality: cfg.cleaning.quality.clone(), all: false };
    let validation = store.validate(&opts, &mut |done, total| progress.advance(done, total))?;
    let same_question_removed = store.dedup(false)?.removed;
    let near_duplicates_removed = match &cfg.near_dup {
        Some(near) => store.dedup_near(near, true)?.removed,
        None => 0,
    };
    let store_total = store.count(&Filter::default())?;
    let r = CleanReport { validation, same_question_removed, near_duplicates_removed, store_total };
    progress.stage_finished(
        Stage::Clean,
        &format!(
            "{} validated; removed {} same-question and {} near duplicates; {} in the store",
            r.validation.examples, r.same_question_removed, r.near_duplicates_removed, r.store_total
        ),
    );
    Ok(r)
}

fn export(cfg: &PipelineConfig, id: &str, store: &mut SqliteStore, progress: &mut dyn Progress) -> Result<ExportInfo> {
    progress.stage_started(Stage::Export, "exporting the quality-filtered examples");
    let filter = Filter::default().tiers(cfg.export_tiers.iter().copied());
    let path = cfg.home.pipeline_export(id);
    let rec = store.export(&filter, &path, Default::default())?;
    let total = store.count(&Filter::default())?;
    if rec.rows == 0 {
        return Err(Error::NoData(format!(
            "the store holds {total} examples and none is in the exported tiers: mine a repository with history and docs (--repo PATH) or capture more"
        )));
    }
    let info = ExportInfo {
        id: rec.id,
        path: rec.path,
        rows: rec.rows,
        left_out_low_quality: total.saturating_sub(rec.rows),
        hash: rec.hash,
    };
    progress.stage_finished(
        Stage::Export,
        &format!("{} rows ({} left out as unverified)", info.rows, info.left_out_low_quality),
    );
    Ok(info)
}

fn prep(
    cfg: &PipelineConfig,
    base: &BaseModel,
    export: &Path,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<PrepInfo> {
    progress.stage_started(Stage::Prep, "rendering, tokenising and splitting for the base model");
    let input = read_inputs(&[export.to_path_buf()])?;
    let n = input.examples.len() as u64;
    let preparer = Preparer::new(base, cfg.prep.clone())?;
    let done = std::sync::atomic::AtomicU64::new(0);
    let prepared = preparer.prepare(&input, |k| {
        done.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
    })?;
    progress.advance(done.into_inner(), n);
    let m = prepared.write(dir)?;
    let manifest_path = dir.join("manifest.json");
    let bytes = std::fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let d = &m.drops;
    let dropped = [
        ("too_long", d.dropped_too_long),
        ("no_response", d.dropped_no_response),
        ("template_error", d.dropped_template_error),
        ("unmaskable", d.dropped_unmaskable),
        ("duplicate_id", d.duplicate_ids),
        ("bad_row", d.bad_rows),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_string(), n as u64))
    .collect();
    let info = PrepInfo {
        dir: dir.to_path_buf(),
        manifest_hash: blake3::hash(&bytes).to_hex().to_string(),
        sft: [m.sft.train as u64, m.sft.valid as u64, m.sft.test as u64],
        preference: [m.preference.train as u64, m.preference.valid as u64, m.preference.test as u64],
        tokens: m.sft_tokens.total as u64,
        trained_tokens: m.sft_tokens.trained as u64,
        truncated: d.truncated as u64,
        dropped,
    };
    if info.sft[0] == 0 {
        return Err(Error::NoData(format!(
            "the dataset at {} has no SFT training rows: mine a repository (--repo PATH) or capture more",
            dir.display()
        )));
    }
    progress.stage_finished(
        Stage::Prep,
        &format!(
            "sft {}/{}/{} (train/valid/test), {} preference pairs, {} tokens",
            info.sft[0],
            info.sft[1],
            info.sft[2],
            info.preference.iter().sum::<u64>(),
            info.tokens
        ),
    );
    Ok(info)
}

/// Passes the trainer's progress on to the pipeline's, and keeps the DPO
/// phase's last validation statistics.
struct Fwd<'a> {
    progress: &'a mut dyn Progress,
    phase: &'static str,
    last_valid: Option<PreferenceStats>,
    last_train: Option<PreferenceStats>,
}

impl Observer for Fwd<'_> {
    fn on_phase(&mut self, phase: &'static str) {
        self.phase = phase;
    }
    fn on_start(&mut self, total_steps: usize, _train_examples: usize) {
        self.progress.train_phase(self.phase, total_steps);
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.progress.train_step(m);
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        self.progress.train_eval(m);
    }
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        if m.split == "valid" {
            self.last_valid = Some(m.stats);
        } else {
            self.last_train = Some(m.stats);
        }
    }
    fn on_memory(&mut self, e: &sam_runs::GuardEvent) {
        let msg = match e {
            sam_runs::GuardEvent::Paused(b) => {
                format!("training paused: {:.2} GB of memory available", *b as f64 / 1e9)
            }
            sam_runs::GuardEvent::Resumed(b) => format!("training resumed: {:.2} GB available", *b as f64 / 1e9),
        };
        self.progress.note(&msg);
    }
}

/// The train stage: a [`Job`] in `runs/<run_id>/` (created, or continued
/// when it exists), SFT then DPO when the dataset has preference pairs.
fn train(
    cfg: &PipelineConfig,
    store: &mut SqliteStore,
    train_cfg: &TrainConfig,
    prep: &PrepInfo,
    run_id: &str,
    progress: &mut dyn Progress,
) -> Result<(Option<Decoder>, TrainInfo)> {
    let runs = cfg.home.runs_dir();
    let run_dir = cfg.home.run_dir(run_id);
    let pairs = prep.preference[0];
    let job = if run_dir.join("status.json").is_file() {
        Job::open(&run_dir)?
    } else {
        let mode = match cfg.dpo {
            Some(_) if pairs > 0 => JobMode::SftDpo,
            _ => JobMode::Sft,
        };
        let mut spec = JobSpec::new(&cfg.model, &prep.dir, mode);
        spec.train = train_cfg.clone();
        spec.max_valid_examples = cfg.max_valid_examples;
        // The pipeline's evaluate stage scores the adapter.
        spec.eval_examples = None;
        if let Some(d) = &cfg.dpo {
            spec.dpo = d.config;
            spec.dpo_lr = Some(d.lr);
            spec.dpo_duration = Some(Duration::Iters(d.steps));
        }
        Job::create(&runs, run_id, spec)?
    };
    let with_dpo = job.spec().mode == JobMode::SftDpo;
    progress.stage_started(
        Stage::Train,
        if with_dpo {
            "training the LoRA adapter (SFT, then DPO on the preference pairs)"
        } else {
            "training the LoRA adapter (SFT)"
        },
    );
    let started =
        store.training_runs()?.into_iter().find(|r| r.id == run_id).map_or(sam_runs::unix_now() as i64, |r| r.started);
    let mut record = TrainingRun {
        id: run_id.to_string(),
        started,
        finished: None,
        status: "running".into(),
        dataset_path: Some(prep.dir.clone()),
        manifest_hash: Some(prep.manifest_hash.clone()),
        adapter_path: None,
        metrics: serde_json::json!({}),
    };
    store.record_training_run(&record)?;
    let t0 = Instant::now();
    let mut fwd = Fwd { progress: &mut *progress, phase: "sft", last_valid: None, last_train: None };
    let outcome = match job.run(&mut fwd, JobControl::default()) {
        Ok(o) => o,
        Err(e) => {
            record.status = "failed".into();
            record.finished = Some(sam_runs::unix_now() as i64);
            let _ = store.record_training_run(&record);
            return Err(e.into());
        }
    };
    let (last_valid, last_train) = (fwd.last_valid, fwd.last_train);
    let seconds = t0.elapsed().as_secs_f64();
    let sft = outcome.sft.clone().ok_or_else(|| Error::NoData("the SFT phase did not run".into()))?;
    let examples = prep.sft[0];
    let metrics = RunDir::open(&run_dir)?.metrics()?;
    let tokens = metrics.iter().filter_map(|m| m.tokens_seen).max().unwrap_or(0);
    let dpo_phase = outcome.dpo.as_ref().map(|d| DpoInfo {
        steps: d.steps as u64,
        pairs,
        initial_val_loss: d.initial_val_loss,
        best_val_loss: d.best_val_loss,
        val_reward_accuracy: last_valid.map(|s| s.accuracy),
        val_reward_margin: last_valid.map(|s| s.margin),
        last_step_reward_accuracy: last_train.map(|s| s.accuracy),
        last_step_reward_margin: last_train.map(|s| s.margin),
    });
    let dpo = match (&dpo_phase, pairs) {
        (_, 0) => "no preference pairs".to_string(),
        (Some(d), _) => {
            let figures = match (d.val_reward_accuracy, d.val_reward_margin) {
                (Some(a), Some(m)) => format!(", validation reward accuracy {a:.2}, margin {m:+.3}"),
                _ => match (d.last_step_reward_accuracy, d.last_step_reward_margin) {
                    (Some(a), Some(m)) => {
                        format!(" (no validation pairs; last step: reward accuracy {a:.2}, margin {m:+.3})")
                    }
                    _ => String::new(),
                },
            };
            format!("{} steps on {pairs} preference pairs from the SFT adapter{figures}", d.steps)
        }
        (None, _) => format!("{pairs} preference pairs left for DPO (turned off in this configuration)"),
    };
    let info = TrainInfo {
        run_id: run_id.to_string(),
        run_dir: run_dir.clone(),
        adapter_dir: outcome.adapter_dir.clone(),
        steps: sft.steps as u64,
        examples,
        tokens,
        seconds,
        tokens_per_s: sft.tokens_per_s,
        final_train_loss: sft.final_train_loss,
        initial_val_loss: sft.initial_val_loss,
        best_val_loss: sft.best_val_loss,
        resumed_from: outcome.resumed_from.clone().map(|(p, s)| (p, s as u64)),
        preference_pairs: pairs,
        dpo,
        dpo_phase,
    };
    record.status = "trained".into();
    record.adapter_path = Some(info.adapter_dir.clone());
    record.metrics = serde_json::to_value(&info).unwrap_or_default();
    store.record_training_run(&record)?;
    let val = match (info.initial_val_loss, info.best_val_loss) {
        (Some(a), Some(b)) => format!(", validation loss {a:.3} → {b:.3}"),
        _ => String::new(),
    };
    let dpo_line = info.dpo_phase.as_ref().map(|d| format!("; DPO {} steps", d.steps)).unwrap_or_default();
    progress.stage_finished(
        Stage::Train,
        &format!("{} SFT steps in {:.0}s, {:.0} tokens/s{val}{dpo_line}", info.steps, info.seconds, info.tokens_per_s),
    );
    Ok((outcome.model, info))
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    cfg: &PipelineConfig,
    model: &Decoder,
    train_cfg: &TrainConfig,
    data: &PreparedData,
    train: &TrainInfo,
    store: &mut SqliteStore,
    prep: &PrepInfo,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    progress.stage_started(Stage::Evaluate, "scoring base and adapter on the held-out test split");
    let mut test = data.sft(Split::Test)?;
    let mut split = "test";
    if test.is_empty() {
        progress.note("the test split is empty: evaluating on the validation split instead");
        test = data.sft(Split::Valid)?;
        split = "valid";
    }
    if let Some(n) = cfg.max_eval_examples {
        test.truncate(n);
    }
    let report = sam_trainer::evaluate(model, split, &test, train_cfg.max_seq_len, 1, train_cfg.pad_id)?;
    let run = RunDir::open(&train.run_dir)?;
    report.write(&run.eval_path())?;
    let finished = sam_runs::unix_now() as i64;
    let mut metrics = serde_json::to_value(train).unwrap_or_default();
    metrics["eval"] = serde_json::to_value(&report).unwrap_or_default();
    let started = store.training_runs()?.into_iter().find(|r| r.id == train.run_id).map(|r| r.started);
    store.record_training_run(&TrainingRun {
        id: train.run_id.clone(),
        started: started.unwrap_or(finished - train.seconds as i64),
        finished: Some(finished),
        status: "succeeded".into(),
        dataset_path: Some(prep.dir.clone()),
        manifest_hash: Some(prep.manifest_hash.clone()),
        adapter_path: Some(train.adapter_dir.clone()),
        metrics,
    })?;
    let ad = report.adapter.map(|a| format!(" → adapter {:.4} (ppl {:.2})", a.loss, a.perplexity)).unwrap_or_default();
    progress.stage_finished(
        Stage::Evaluate,
        &format!(
            "{} {} examples: base {:.4} (ppl {:.2}){ad}",
            report.examples, split, report.base.loss, report.base.perplexity
        ),
    );
    Ok(report)
}
