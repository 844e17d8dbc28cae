//! Training jobs that survive: one run folder per job, checkpoints, exact
//! resume, the memory guard, stop requests and failure handling (see
//! [`Job`]).

use crate::adapter::load_adapter;
use crate::checkpoint::Checkpoint;
use crate::dpo::{DpoConfig, Reference, train_dpo_with};
use crate::error::{Error, Result};
use crate::eval::{EvalConfig, EvalReport, evaluate};
use crate::fit::{Control, TrainOutcome};
use crate::load::{LoadOptions, ModelSource};
use crate::model::Decoder;
use crate::observe::{EvalMetrics, Observer, PreferenceMetrics, PreferenceStats, StepMetrics};
use crate::settings::{Duration, OutputConfig, TrainConfig};
use crate::sft::train_sft_with;
use candle_core::DType;
use sam_dataset::{PreparedData, Split};
use sam_runs::{
    Eta, EventKind, GuardEvent, MemoryGuard, MemoryGuardConfig, MemoryProbe, MetricRecord, RunDir, RunStatus,
    SystemProbe,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobMode {
    /// Supervised fine-tuning on the chat/instruction examples.
    #[serde(rename = "sft")]
    Sft,
    /// DPO on the preference pairs (from a fresh adapter, or from
    /// [`JobSpec::from_adapter`], which is then also the reference).
    #[serde(rename = "dpo")]
    Dpo,
    /// SFT, then DPO starting from (and measured against) the SFT adapter.
    #[serde(rename = "sft+dpo")]
    SftDpo,
}

impl JobMode {
    /// `sft`, `dpo` or `sft+dpo`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobMode::Sft => "sft",
            JobMode::Dpo => "dpo",
            JobMode::SftDpo => "sft+dpo",
        }
    }

    fn phases(self) -> &'static [Phase] {
        match self {
            JobMode::Sft => &[Phase::Sft],
            JobMode::Dpo => &[Phase::Dpo],
            JobMode::SftDpo => &[Phase::Sft, Phase::Dpo],
        }
    }
}

/// How the frozen base weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    /// Quantized weights (a GGUF's blocks, an mlx 4-bit folder) stay
    /// quantized and are dequantized per product a tile at a time; dense
    /// ones are held in f32. What [`JobSpec::new`] picks.
    Auto,
    /// Everything in 32-bit floats (quantized weights dequantized on load).
    /// What a run folder without this setting (older runs) used.
    #[default]
    F32,
    /// Dense matrices in bfloat16 (half the memory of f32; quantized
    /// weights dequantized to it on load).
    Bf16,
}

impl WeightType {
    /// The storage type of dense matrices.
    pub fn dtype(self) -> DType {
        match self {
            WeightType::Auto | WeightType::F32 => DType::F32,
            WeightType::Bf16 => DType::BF16,
        }
    }

    /// The options that load a model this way.
    pub fn load_options(self) -> LoadOptions {
        LoadOptions { dtype: self.dtype(), keep_quantized: self == WeightType::Auto, ..Default::default() }
    }
}

/// Everything a job needs, saved as the run's `config.json`: a resumed job
/// reads it back, so it continues with exactly these settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// Base model: a Hugging Face folder or a GGUF file (or a random model).
    pub model: ModelSource,
    /// Prepared dataset folder (from sam-prep).
    pub data: PathBuf,
    /// How the frozen weights are held.
    #[serde(default)]
    pub weights: WeightType,
    /// SFT, DPO or both.
    pub mode: JobMode,
    /// Training settings.
    pub train: TrainConfig,
    /// DPO settings (used by the DPO phase).
    #[serde(default)]
    pub dpo: DpoConfig,
    /// DPO phase: learning rate instead of `train.lr`.
    #[serde(default)]
    pub dpo_lr: Option<f64>,
    /// DPO phase: length instead of `train.duration`.
    #[serde(default)]
    pub dpo_duration: Option<Duration>,
    /// Start the DPO phase from this adapter (e.g. production's), which is
    /// then its reference policy too.
    #[serde(default)]
    pub from_adapter: Option<PathBuf>,
    /// Validate on at most this many validation examples (or pairs).
    #[serde(default)]
    pub max_valid_examples: Option<usize>,
    /// Score base and adapter on (at most this many) test examples at the
    /// end, into `eval.json`; `None`: no evaluation.
    #[serde(default)]
    pub eval_examples: Option<usize>,
    /// Periodic checkpoints kept per phase besides the best one (0: all).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Memory guard thresholds.
    #[serde(default)]
    pub memory: MemoryGuardConfig,
}

fn default_keep() -> usize {
    2
}

impl JobSpec {
    /// A spec with the default [`TrainConfig`] and [`DpoConfig`], a
    /// checkpoint every 100 steps (the last 2 kept, plus the best),
    /// evaluation on the whole test split, and the default memory guard
    /// (pause below 0.3 GB available, resume at 0.5 GB).
    pub fn new(model: impl Into<ModelSource>, data: impl Into<PathBuf>, mode: JobMode) -> Self {
        Self {
            model: model.into(),
            data: data.into(),
            weights: WeightType::Auto,
            mode,
            train: TrainConfig {
                output: OutputConfig { save_every: 100, ..OutputConfig::default() },
                ..TrainConfig::default()
            },
            dpo: DpoConfig::default(),
            dpo_lr: None,
            dpo_duration: None,
            from_adapter: None,
            max_valid_examples: None,
            eval_examples: Some(usize::MAX),
            keep_checkpoints: default_keep(),
            memory: MemoryGuardConfig::default(),
        }
    }
}

/// The two training phases a job may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sft,
    Dpo,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Sft => "sft",
            Phase::Dpo => "dpo",
        }
    }
}

/// Runtime controls of [`Job::run`].
#[derive(Default)]
pub struct JobControl<'a> {
    /// Set it (from a signal handler, another thread…) to stop after the
    /// current step with a checkpoint.
    pub stop: Option<&'a AtomicBool>,
    /// Where the memory guard reads available memory (default: this machine).
    pub probe: Option<Box<dyn MemoryProbe>>,
}

impl std::fmt::Debug for JobControl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobControl").field("stop", &self.stop).field("probe", &self.probe.is_some()).finish()
    }
}

/// What [`Job::run`] did.
#[derive(Debug, Serialize)]
pub struct JobOutcome {
    /// The run's id.
    pub id: String,
    /// The run folder.
    pub run_dir: PathBuf,
    /// `completed`, or `stopped` (resumable).
    pub status: RunStatus,
    /// The step the job continued from, with its phase, when it resumed.
    pub resumed_from: Option<(String, usize)>,
    /// The SFT phase's outcome (also when it finished in an earlier process).
    pub sft: Option<TrainOutcome>,
    /// The DPO phase's outcome.
    pub dpo: Option<TrainOutcome>,
    /// Base vs adapter on the test split, when evaluated.
    pub eval: Option<EvalReport>,
    /// The final adapter.
    pub adapter_dir: PathBuf,
    /// The model with the final adapter on it (left out when stopped).
    #[serde(skip)]
    pub model: Option<Decoder>,
}

impl JobOutcome {
    /// The outcome of the last phase that ran.
    pub fn last(&self) -> Option<&TrainOutcome> {
        self.dpo.as_ref().or(self.sft.as_ref())
    }
}

/// A training job that survives, and its run folder.
///
/// A job is a [`JobSpec`] (model, prepared data, mode, every setting)
/// written as the run's `config.json` under `SAM_HOME/runs/<id>/`, and the
/// code that runs it. [`Job::run`] starts the job, or continues it from
/// where it stopped: phases already finished are skipped (`phase-sft.json`,
/// `phase-dpo.json`), the interrupted phase continues from its newest
/// checkpoint, and the metrics it logged after that checkpoint are dropped
/// so every step appears once. A resumed run computes the same losses, step
/// for step, as an uninterrupted one.
///
/// While it runs, the job keeps the run folder current (the `sam-runs` layout): `status.json` (running, paused, completed,
/// failed, stopped; step; pid), `metrics.jsonl` (one line per step and per
/// validation, with the phase, learning rate, tokens/s, tokens seen, RSS,
/// elapsed time, ETA, DPO rewards), `events.jsonl` (start, resume,
/// checkpoints, pauses, stop, error, completion) and `loss.svg`.
///
/// - A stop ([`JobControl::stop`], e.g. from SIGINT/SIGTERM, or
///   `RunDir::request_stop` from another process) ends the job after the
///   current step with a checkpoint and the status `stopped`.
/// - A NaN or infinite loss ends it as `failed` with the reason; the last
///   checkpoint and the best adapter (written atomically, never from the
///   diverged weights) stay as they were.
/// - Between steps the memory guard pauses while available memory is below
///   [`JobSpec::memory`]'s threshold, and records both events.
///
/// [`Job::open`] finds a job again from its folder.
///
/// ```
/// use sam_trainer::{
///     Duration, Job, JobControl, JobMode, JobSpec, ModelConfig, ModelSource, Observer, RunStatus, Split,
///     StepMetrics, TokenizedExample, TokenizedPair,
/// };
/// use std::sync::atomic::{AtomicBool, Ordering};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tmp = tempfile::tempdir()?;
/// let data = tmp.path().join("dataset");
/// let ex = |i: u32| TokenizedExample {
///     id: format!("ex{i}"),
///     domain: "docs".into(),
///     input_ids: vec![1, 10 + i, 11, 12, 2],
///     loss_mask: vec![false, false, true, true, true],
/// };
/// let pair = |i: u32| TokenizedPair {
///     id: format!("p{i}"),
///     domain: "docs".into(),
///     prompt_ids: vec![1, 20 + i],
///     chosen_ids: vec![30, 2],
///     rejected_ids: vec![31, 32, 2],
/// };
/// use sam_dataset::{preference_cache_path, sft_cache_path, write_preference, write_sft};
/// write_sft(&sft_cache_path(&data, Split::Train), &[ex(0), ex(1), ex(2)])?;
/// write_preference(&preference_cache_path(&data, Split::Train), &[pair(0), pair(1)])?;
///
/// // SFT, then DPO from the SFT adapter: 3 steps each, a checkpoint every step.
/// let mut spec = JobSpec::new(ModelSource::random(ModelConfig::tiny(), 0), &data, JobMode::SftDpo);
/// spec.train.duration = Duration::Iters(3);
/// spec.train.output.save_every = 1;
/// spec.eval_examples = None;
/// let runs = tmp.path().join("runs");
/// let job = Job::create(&runs, "r1", spec)?;
///
/// // Stop after the first step (as Ctrl-C would, through the same flag)…
/// struct StopAfterOne<'a>(&'a AtomicBool);
/// impl Observer for StopAfterOne<'_> {
///     fn on_step(&mut self, _: &StepMetrics) {
///         self.0.store(true, Ordering::SeqCst);
///     }
/// }
/// let stop = AtomicBool::new(false);
/// let first = job.run(&mut StopAfterOne(&stop), JobControl { stop: Some(&stop), ..Default::default() })?;
/// assert_eq!(first.status, RunStatus::Stopped);
///
/// // …and continue it later, in this process or another, from its folder.
/// let job = Job::open(&runs.join("r1"))?;
/// let done = job.run(&mut sam_trainer::NoopObserver, JobControl::default())?;
/// assert_eq!(done.status, RunStatus::Completed);
/// assert_eq!(done.resumed_from, Some(("sft".to_string(), 1)));
/// assert_eq!((done.sft.unwrap().steps, done.dpo.unwrap().steps), (3, 3));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Job {
    run: RunDir,
    spec: JobSpec,
}

impl Job {
    /// A new job in `runs_root/<id>/` (status `queued`).
    pub fn create(runs_root: &Path, id: &str, spec: JobSpec) -> Result<Self> {
        let run = RunDir::create(runs_root, id, &spec)?;
        Ok(Self { run, spec })
    }

    /// A new job in the folder `dir` (its name is the run's id).
    pub fn create_at(dir: &Path, spec: JobSpec) -> Result<Self> {
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let root = dir.parent().unwrap_or(Path::new("."));
        Self::create(root, &id, spec)
    }

    /// The job in an existing run folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let run = RunDir::open(dir)?;
        let spec: JobSpec = run.config()?;
        Ok(Self { run, spec })
    }

    /// The run folder.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// The job's settings.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Where `phase` keeps its adapter and checkpoints: the run folder, or
    /// `sft/` for the SFT phase of an SFT-then-DPO job.
    fn phase_dir(&self, phase: Phase) -> PathBuf {
        if self.spec.mode == JobMode::SftDpo && phase == Phase::Sft {
            self.run.path().join("sft")
        } else {
            self.run.path().to_path_buf()
        }
    }

    fn done_path(&self, phase: Phase) -> PathBuf {
        self.run.path().join(format!("phase-{}.json", phase.name()))
    }

    fn finished_phase(&self, phase: Phase) -> Result<Option<TrainOutcome>> {
        let p = self.done_path(phase);
        match std::fs::read_to_string(&p) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| Error::Json { path: p, source: e })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path: p, source: e }),
        }
    }

    /// The newest checkpoint of the phase that would run next, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        for &phase in self.spec.mode.phases() {
            if self.finished_phase(phase)?.is_none() {
                return Checkpoint::latest(&self.phase_dir(phase).join("checkpoints"), phase.name());
            }
        }
        Ok(None)
    }

    /// Whether [`Self::run`] may (re)start the job now: not completed, and
    /// not being run by a live process.
    pub fn check_runnable(&self) -> Result<()> {
        let st = self.run.status()?;
        let busy = |why: &str| Error::InvalidConfig(format!("run {} {why}", self.run.id()));
        match st.status {
            RunStatus::Completed => Err(busy("is completed: start a new run to train again")),
            RunStatus::Running | RunStatus::Paused
                if st.pid.is_some_and(|p| p != std::process::id() && sam_runs::process_alive(p)) =>
            {
                Err(busy(&format!("is being trained by process {}", st.pid.unwrap_or(0))))
            }
            _ => Ok(()),
        }
    }

    /// Runs the job, or continues it: see the module docs. On an error the
    /// run is marked `failed` with the reason before the error is returned.
    pub fn run(&self, observer: &mut dyn Observer, ctl: JobControl<'_>) -> Result<JobOutcome> {
        self.check_runnable()?;
        self.run.clear_stop_request()?;
        let res = self.run_inner(observer, ctl);
        if let Err(e) = &res {
            let (step, total) = self.run.status().map_or((0, 0), |s| (s.step, s.total_steps));
            let _ = self.run.append_event(EventKind::Error, step, e.to_string());
            let _ = self.run.set_status(RunStatus::Failed, Some(e.to_string()), step, total);
            let _ = self.run.write_loss_svg();
        }
        res
    }

    fn run_inner(&self, observer: &mut dyn Observer, ctl: JobControl<'_>) -> Result<JobOutcome> {
        let spec = &self.spec;
        let resume_at = self.latest_checkpoint()?;
        let any_done = spec.mode.phases().iter().any(|p| self.done_path(*p).exists());
        let prev = self.run.status()?;
        self.run.set_status(RunStatus::Running, None, prev.step, prev.total_steps)?;
        let resumed_from = resume_at.as_ref().map(|c| (c.state.phase.clone(), c.state.step));
        match &resumed_from {
            Some((phase, step)) => self.run.append_event(
                EventKind::ResumedFromCheckpoint,
                *step as u64,
                format!("{phase} checkpoint at step {step}"),
            )?,
            None if any_done => self.run.append_event(EventKind::Started, 0, "continuing after a finished phase")?,
            None => self.run.append_event(EventKind::Started, 0, "")?,
        }
        let data = PreparedData::open(&spec.data)
            .map_err(|e| Error::InvalidData(format!("prepared data at {}: {e}", spec.data.display())))?;
        let opts = spec.weights.load_options();
        let mut model = spec.model.load(&opts)?;
        let probe = ctl.probe.unwrap_or_else(|| Box::new(SystemProbe::new()));
        let mut guard = MemoryGuard::new(spec.memory, probe);
        let stop_flag = ctl.stop;
        let stop = || stop_flag.is_some_and(|f| f.load(Ordering::SeqCst)) || self.run.stop_requested();

        let mut outcomes: [Option<TrainOutcome>; 2] = [None, None];
        let mut adapter_on_model = false;
        for &phase in spec.mode.phases() {
            let slot = phase as usize;
            if let Some(done) = self.finished_phase(phase)? {
                outcomes[slot] = Some(done);
                continue;
            }
            let out_dir = self.phase_dir(phase);
            let ckpt = Checkpoint::latest(&out_dir.join("checkpoints"), phase.name())?;
            // Forget what this phase logged after its newest checkpoint (or
            // all of it, when it never reached one): those steps run again.
            let keep_upto = ckpt.as_ref().map_or(0, |c| c.state.step as u64);
            self.run.retain_metrics(|m| m.phase.as_deref() != Some(phase.name()) || m.step <= keep_upto)?;
            let mut cfg = spec.train.clone();
            observer.on_phase(phase.name());
            let mut obs = JobObserver::new(&self.run, phase.name(), &mut *observer);
            let mut control = Control {
                stop: Some(&stop),
                memory: Some(&mut guard),
                resume: ckpt,
                keep_checkpoints: spec.keep_checkpoints,
                out_dir: Some(out_dir.clone()),
            };
            let outcome = match phase {
                Phase::Sft => {
                    model.attach_lora(&cfg.lora, cfg.seed)?;
                    let train = data.sft(Split::Train).map_err(prep_err)?;
                    let mut valid = data.sft(Split::Valid).map_err(prep_err)?;
                    valid.truncate(spec.max_valid_examples.unwrap_or(usize::MAX));
                    train_sft_with(&mut model, &cfg, &train, &valid, &mut obs, &mut control)?
                }
                Phase::Dpo => {
                    cfg.optim.lr = spec.dpo_lr.unwrap_or(cfg.optim.lr);
                    cfg.duration = spec.dpo_duration.unwrap_or(cfg.duration);
                    let mut dpo = spec.dpo;
                    if spec.mode == JobMode::SftDpo {
                        if !adapter_on_model {
                            let dir = self.phase_dir(Phase::Sft).join("adapter");
                            load_adapter(&mut model, &dir)?;
                        }
                        dpo.reference = Reference::Initial;
                    } else if let Some(dir) = &spec.from_adapter {
                        load_adapter(&mut model, dir)?;
                        dpo.reference = Reference::Initial;
                    } else {
                        model.attach_lora(&cfg.lora, cfg.seed)?;
                    }
                    let train = data.preference(Split::Train).map_err(prep_err)?;
                    let mut valid = data.preference(Split::Valid).map_err(prep_err)?;
                    valid.truncate(spec.max_valid_examples.unwrap_or(usize::MAX));
                    if train.is_empty() {
                        return Err(Error::InvalidData(format!(
                            "{} has no preference pairs to train DPO on",
                            spec.data.display()
                        )));
                    }
                    let cache = data.dir().join("cache");
                    train_dpo_with(&mut model, &cfg, &dpo, &train, &valid, &mut obs, &mut control, Some(&cache))?
                }
            };
            drop(control);
            let _ = self.run.write_loss_svg();
            if outcome.stopped {
                self.run.append_event(EventKind::Stopped, outcome.steps as u64, format!("{} phase", phase.name()))?;
                self.run.set_status(RunStatus::Stopped, Some("stop requested".into()), outcome.steps as u64, 0)?;
                outcomes[slot] = Some(outcome);
                return Ok(self.outcome(RunStatus::Stopped, resumed_from, outcomes, None, None));
            }
            sam_runs::write_json_atomic(&self.done_path(phase), &outcome)?;
            adapter_on_model = true;
            outcomes[slot] = Some(outcome);
        }
        if !adapter_on_model {
            // Every phase finished in an earlier process: put the result back.
            load_adapter(&mut model, &self.run.adapter_dir())?;
        }
        let eval = match spec.eval_examples {
            Some(n) => {
                let test = data.sft(Split::Test).map_err(prep_err)?;
                if test.is_empty() || n == 0 {
                    None
                } else {
                    let cfg = EvalConfig {
                        split: "test".into(),
                        max_seq_len: spec.train.batch.max_seq_len,
                        batch_size: 1,
                        pad_id: spec.train.batch.pad_id,
                        max_examples: Some(n),
                        ..EvalConfig::default()
                    };
                    let r = evaluate(&model, &test, &cfg)?;
                    r.write(&self.run.eval_path())?;
                    Some(r)
                }
            }
            None => None,
        };
        let steps = outcomes[1].as_ref().or(outcomes[0].as_ref()).map_or(0, |o| o.steps as u64);
        self.run.append_event(EventKind::Completed, steps, "")?;
        self.run.set_status(RunStatus::Completed, None, steps, steps)?;
        self.run.write_loss_svg()?;
        Ok(self.outcome(RunStatus::Completed, resumed_from, outcomes, eval, Some(model)))
    }

    fn outcome(
        &self,
        status: RunStatus,
        resumed_from: Option<(String, usize)>,
        [sft, dpo]: [Option<TrainOutcome>; 2],
        eval: Option<EvalReport>,
        model: Option<Decoder>,
    ) -> JobOutcome {
        JobOutcome {
            id: self.run.id().to_string(),
            run_dir: self.run.path().to_path_buf(),
            status,
            resumed_from,
            sft,
            dpo,
            eval,
            adapter_dir: self.run.adapter_dir(),
            model,
        }
    }
}

fn prep_err(e: sam_dataset::CacheError) -> Error {
    Error::InvalidData(format!("prepared data: {e}"))
}

/// Writes a phase's progress into the run folder, then passes it on.
struct JobObserver<'a> {
    run: &'a RunDir,
    phase: &'static str,
    inner: &'a mut dyn Observer,
    total: u64,
    eta: Eta,
    /// DPO training statistics of the step in progress (reported before it).
    pending: Option<PreferenceStats>,
    steps_since_plot: usize,
}

impl<'a> JobObserver<'a> {
    fn new(run: &'a RunDir, phase: &'static str, inner: &'a mut dyn Observer) -> Self {
        Self { run, phase, inner, total: 0, eta: Eta::new(20), pending: None, steps_since_plot: 0 }
    }

    fn record(&self, mut m: MetricRecord) {
        m.phase = Some(self.phase.to_string());
        if let Err(e) = self.run.append_metric(&m) {
            tracing::warn!("writing metrics: {e}");
        }
    }

    fn event(&self, kind: EventKind, step: usize, msg: impl Into<String>) {
        if let Err(e) = self.run.append_event(kind, step as u64, msg) {
            tracing::warn!("writing events: {e}");
        }
    }

    fn status(&self, status: RunStatus, step: usize) {
        if let Err(e) = self.run.set_status(status, None, step as u64, self.total) {
            tracing::warn!("writing status: {e}");
        }
    }
}

fn stats_fields(prefix: &str, s: &PreferenceStats, into: &mut serde_json::Map<String, serde_json::Value>) {
    into.insert(format!("{prefix}reward_chosen"), s.reward_chosen.into());
    into.insert(format!("{prefix}reward_rejected"), s.reward_rejected.into());
    into.insert(format!("{prefix}reward_margin"), s.margin.into());
    into.insert(format!("{prefix}reward_accuracy"), s.accuracy.into());
}

impl Observer for JobObserver<'_> {
    fn on_start(&mut self, total_steps: usize, train_examples: usize) {
        self.total = total_steps as u64;
        self.status(RunStatus::Running, 0);
        self.inner.on_start(total_steps, train_examples);
    }
    fn on_resumed(&mut self, step: usize) {
        self.status(RunStatus::Running, step);
        self.inner.on_resumed(step);
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.eta.record(std::time::Duration::from_secs_f64(m.step_s.max(0.0)));
        let eta = self.eta.remaining((m.total_steps - m.step) as u64).map(|d| d.as_secs_f64());
        let mut rec = MetricRecord {
            step: m.step as u64,
            train_loss: Some(m.loss),
            lr: Some(m.lr),
            tokens_per_sec: Some(m.tokens_per_s),
            tokens_seen: Some(m.tokens_seen),
            rss_bytes: Some(sam_runs::current_rss()),
            elapsed_s: Some(m.elapsed_s),
            ..Default::default()
        };
        rec.extra.insert("grad_norm".into(), m.grad_norm.into());
        if let Some(eta) = eta {
            rec.extra.insert("eta_s".into(), eta.into());
        }
        if let Some(s) = self.pending.take() {
            stats_fields("", &s, &mut rec.extra);
        }
        self.record(rec);
        self.status(RunStatus::Running, m.step);
        self.steps_since_plot += 1;
        if self.steps_since_plot >= 10 {
            self.steps_since_plot = 0;
            let _ = self.run.write_loss_svg();
        }
        self.inner.on_step(m);
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        let mut rec = MetricRecord { step: m.step as u64, val_loss: Some(m.loss), ..Default::default() };
        if self.phase == "sft" {
            rec.extra.insert("val_perplexity".into(), m.perplexity.into());
        }
        if let Some(s) = self.pending.take() {
            stats_fields("val_", &s, &mut rec.extra);
        }
        rec.extra.insert("best".into(), m.best.into());
        self.record(rec);
        self.event(EventKind::Evaluated, m.step, format!("{} validation loss {:.4}", self.phase, m.loss));
        let _ = self.run.write_loss_svg();
        self.inner.on_eval(m);
    }
    fn on_checkpoint(&mut self, step: usize, dir: &Path) {
        self.event(EventKind::Checkpoint, step, dir.display().to_string());
        self.inner.on_checkpoint(step, dir);
    }
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        // Train statistics come before their step, validation ones before
        // their evaluation: both are folded into that line.
        self.pending = Some(m.stats);
        self.inner.on_preference(m);
    }
    fn on_memory(&mut self, e: &GuardEvent) {
        let step = self.run.status().map(|s| s.step as usize).unwrap_or(0);
        let gb = |b: u64| b as f64 / 1e9;
        match *e {
            GuardEvent::Paused(avail) => {
                self.event(EventKind::Paused, step, format!("available memory {:.2} GB is low", gb(avail)));
                self.status(RunStatus::Paused, step);
            }
            GuardEvent::Resumed(avail) => {
                self.event(EventKind::Resumed, step, format!("available memory {:.2} GB", gb(avail)));
                self.status(RunStatus::Running, step);
                self.eta.reset();
            }
        }
        self.inner.on_memory(e);
    }
}
