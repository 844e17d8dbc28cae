//! Stages as data, and the one driver that runs them.
//!
//! A [`Stage`] is a value with a name and a typed, serde output. A
//! [`Pipeline`] is a list of stages; [`Pipeline::run`] is the only driver:
//! it owns resuming (a re-run continues at the first stage the state file
//! does not hold as finished), skipping, the state file, the events file and
//! the history. A stage can end the run early with an [`Outcome`]
//! ([`Flow::End`]), the way the export stage ends it with
//! [`Outcome::NothingNew`]. New stages (a gate, a registry step) are added to
//! the list ([`Pipeline::insert_before`], [`Pipeline::push`]) without another
//! driver.
//!
//! ```no_run
//! use sam_pipeline::stage::{Context, Flow, Pipeline, Stage};
//!
//! /// Counts the store's examples after the clean stage.
//! struct Count;
//!
//! impl Stage for Count {
//!     type Output = u64;
//!     fn name(&self) -> &'static str {
//!         "count"
//!     }
//!     fn run(&mut self, cx: &mut Context<'_>) -> sam_pipeline::Result<Flow<u64>> {
//!         use sam_store::prelude::*;
//!         Ok(Flow::Next(cx.store().count(&Default::default())?))
//!     }
//! }
//!
//! let cfg = sam_pipeline::PipelineConfig::new("/tmp/sam-home", "/models/smollm2.gguf");
//! let mut pipeline = Pipeline::standard();
//! pipeline.insert_before("export", Count)?;
//! let summary = pipeline.run(&cfg, &mut sam_pipeline::event::NoEvents)?;
//! # Ok::<(), sam_pipeline::Error>(())
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::time::Instant;

use sam_home::SamHome;
use sam_store::{SqliteStore, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::event::{Event, EventLog, EventSink, SkipReason, Warning};
use crate::state::{Outcome, PipelineState, StageRecord};
use crate::summary::Summary;

/// What a stage tells the driver when it is done.
#[derive(Debug, Clone, PartialEq)]
pub enum Flow<T> {
    /// Go on with the next stage.
    Next(T),
    /// End the run here with this outcome (the later stages are skipped).
    End(T, Outcome),
}

/// One stage of the pipeline.
pub trait Stage {
    /// What it produces: kept in the state file and the events, read back
    /// by later stages ([`Context::output`]) and by the summary.
    type Output: Serialize + DeserializeOwned;

    /// Its name (unique within a pipeline; the state file keys on it).
    fn name(&self) -> &'static str;

    /// Do the stage's work.
    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<Self::Output>>;
}

/// A stage with its output erased to JSON, so that stages of different
/// output types share one list.
trait DynStage {
    fn name(&self) -> &'static str;
    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<serde_json::Value>>;
}

impl<S: Stage> DynStage for S {
    fn name(&self) -> &'static str {
        Stage::name(self)
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<serde_json::Value>> {
        let name = Stage::name(self);
        let to_json =
            |out: S::Output| serde_json::to_value(out).map_err(|source| Error::Output { stage: name.into(), source });
        Ok(match Stage::run(self, cx)? {
            Flow::Next(out) => Flow::Next(to_json(out)?),
            Flow::End(out, outcome) => Flow::End(to_json(out)?, outcome),
        })
    }
}

/// Where a running stage sends its events (to the caller's sink and the
/// run's events file).
pub trait Emit {
    /// Emit one event.
    fn emit(&mut self, event: Event);

    /// The running stage.
    fn stage(&self) -> &'static str;

    /// Work done within the running stage (`total` 0: unknown).
    fn progress(&mut self, done: u64, total: u64) {
        let stage = self.stage().to_string();
        self.emit(Event::Progress { stage, done, total });
    }

    /// A warning.
    fn warn(&mut self, warning: Warning) {
        self.emit(Event::Warning(warning));
    }
}

/// The driver's [`Emit`]: the caller's sink and the events file.
struct Events<'s> {
    sink: &'s mut dyn EventSink,
    log: EventLog,
    stage: &'static str,
}

impl Emit for Events<'_> {
    fn emit(&mut self, event: Event) {
        if let Some(w) = self.log.append(&event) {
            self.sink.event(&Event::Warning(w));
        }
        self.sink.event(&event);
    }

    fn stage(&self) -> &'static str {
        self.stage
    }
}

/// What a running stage sees: the configuration, the store, the outputs of
/// the stages before it, the events, and values that stages hand on to later
/// ones within one invocation (a loaded model).
pub struct Context<'a> {
    cfg: &'a PipelineConfig,
    store: &'a mut dyn Store,
    state: &'a mut PipelineState,
    events: &'a mut (dyn Emit + 'a),
    shared: &'a mut BTreeMap<std::any::TypeId, Box<dyn Any>>,
}

impl<'a> Context<'a> {
    /// The configuration.
    pub fn config(&self) -> &'a PipelineConfig {
        self.cfg
    }

    /// SAM_HOME.
    pub fn home(&self) -> &'a SamHome {
        &self.cfg.home
    }

    /// The pipeline run's id.
    pub fn run_id(&self) -> &str {
        &self.state.id
    }

    /// The store.
    pub fn store(&mut self) -> &mut dyn Store {
        &mut *self.store
    }

    /// The events.
    pub fn events(&mut self) -> &mut (dyn Emit + 'a) {
        self.events
    }

    /// The store and the events at once (to report progress from a store call).
    pub fn store_and_events(&mut self) -> (&mut dyn Store, &mut (dyn Emit + 'a)) {
        (&mut *self.store, &mut *self.events)
    }

    /// The output of an earlier stage of this run; an error naming the
    /// stage when it has not run.
    pub fn output<T: DeserializeOwned>(&self, stage: &str) -> Result<T> {
        self.state.output(stage)?.ok_or_else(|| Error::MissingOutput(stage.to_string()))
    }

    /// The output of `stage` in the last run that went through every stage.
    pub fn baseline<T: DeserializeOwned>(&self, stage: &str) -> Option<T> {
        self.state.baseline.get(stage).and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Whether the caller asked to go on even when there is nothing new.
    pub fn force(&self) -> bool {
        self.cfg.force
    }

    /// A value this run recorded under `key` ([`Context::set_mark`]), also in
    /// an earlier, interrupted invocation.
    pub fn mark<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state.marks.get(key).and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Record `value` under `key` in the state file now, before the stage
    /// finishes, so that a crash leaves it for the next invocation.
    pub fn set_mark(&mut self, key: &str, value: &impl Serialize) -> Result<()> {
        let v = serde_json::to_value(value).map_err(|source| Error::Output { stage: key.into(), source })?;
        self.state.marks.insert(key.to_string(), v);
        self.state.save(&self.cfg.home)
    }

    /// Hand `value` on to later stages of this invocation.
    pub fn share<T: Any>(&mut self, value: T) {
        self.shared.insert(std::any::TypeId::of::<T>(), Box::new(value));
    }

    /// A value an earlier stage handed on.
    pub fn shared<T: Any>(&self) -> Option<&T> {
        self.shared.get(&std::any::TypeId::of::<T>()).and_then(|b| b.downcast_ref())
    }

    /// Take a value an earlier stage handed on.
    pub fn take_shared<T: Any>(&mut self) -> Option<T> {
        self.shared.remove(&std::any::TypeId::of::<T>()).and_then(|b| b.downcast().ok()).map(|b| *b)
    }
}

/// A list of stages and the outcome of a run that goes through all of them.
pub struct Pipeline {
    stages: Vec<Box<dyn DynStage>>,
    completed: Outcome,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("stages", &self.names()).field("completed", &self.completed).finish()
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::standard()
    }
}

impl Pipeline {
    /// No stages; a run that goes through all of them ends with `completed`.
    pub fn empty(completed: Outcome) -> Self {
        Self { stages: Vec::new(), completed }
    }

    /// sam's pipeline: mine, clean, export, prep, train, evaluate, report,
    /// register, gate, promote ([`crate::stages`]).
    pub fn standard() -> Self {
        use crate::stages::*;
        Self::empty(Outcome::Trained)
            .push(MineStage)
            .push(CleanStage)
            .push(ExportStage)
            .push(PrepStage)
            .push(TrainStage)
            .push(EvaluateStage)
            .push(ReportStage)
            .push(RegisterStage)
            .push(GateStage)
            .push(PromoteStage)
    }

    /// Add a stage at the end.
    pub fn push(mut self, stage: impl Stage + 'static) -> Self {
        self.stages.push(Box::new(stage));
        self
    }

    /// Add a stage before the stage named `before`.
    pub fn insert_before(&mut self, before: &str, stage: impl Stage + 'static) -> Result<()> {
        let at = self.position(before)?;
        self.stages.insert(at, Box::new(stage));
        Ok(())
    }

    /// Add a stage after the stage named `after`.
    pub fn insert_after(&mut self, after: &str, stage: impl Stage + 'static) -> Result<()> {
        let at = self.position(after)? + 1;
        self.stages.insert(at, Box::new(stage));
        Ok(())
    }

    /// The stages' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    fn position(&self, name: &str) -> Result<usize> {
        self.stages.iter().position(|s| s.name() == name).ok_or_else(|| Error::NoSuchStage(name.to_string()))
    }

    /// Run the pipeline on the store at `SamHome::store_db`, continuing an
    /// interrupted run when the state file holds one. Events go to `sink`
    /// and to the run's events file.
    pub fn run(&mut self, cfg: &PipelineConfig, sink: &mut dyn EventSink) -> Result<Summary> {
        let home = &cfg.home;
        std::fs::create_dir_all(home.root()).map_err(|e| Error::io(home.root(), e))?;
        let mut store = SqliteStore::open(home.store_db())?;
        self.run_on(cfg, &mut store, sink)
    }

    /// [`Pipeline::run`] on another store (one in memory, say: the state,
    /// events, datasets and runs still go under `cfg.home`).
    pub fn run_on(&mut self, cfg: &PipelineConfig, store: &mut dyn Store, sink: &mut dyn EventSink) -> Result<Summary> {
        let t0 = Instant::now();
        if !cfg.model.exists() {
            return Err(Error::ModelMissing { path: cfg.model.clone() });
        }
        let home = &cfg.home;
        std::fs::create_dir_all(home.root()).map_err(|e| Error::io(home.root(), e))?;
        let _lock = lock(home)?;
        let names = self.names();
        let mut st = match PipelineState::load(home)? {
            Some(mut s) if s.outcome.is_none() => {
                s.resumed_at = names.iter().find(|n| !s.finished(n)).map(|n| n.to_string());
                s
            }
            Some(prev) => {
                let baseline = if prev.outcome == Some(self.completed) { prev.outputs() } else { prev.baseline };
                PipelineState::new(sam_runs::new_run_id(), baseline)
            }
            None => PipelineState::new(sam_runs::new_run_id(), BTreeMap::new()),
        };
        let mut events = Events { sink, log: EventLog::open(home.pipeline_events(&st.id)), stage: "" };
        events.emit(Event::RunStarted {
            id: st.id.clone(),
            stages: names.iter().map(|n| n.to_string()).collect(),
            resumed_at: st.resumed_at.clone(),
        });
        let total = names.len();
        let skipped: Vec<String> = names.iter().filter(|n| st.finished(n)).map(|n| n.to_string()).collect();
        for (index, name) in names.iter().enumerate().filter(|(_, n)| st.finished(n)) {
            let reason = SkipReason::FinishedEarlier;
            events.emit(Event::StageSkipped { stage: name.to_string(), index, total, reason });
        }
        st.save(home)?;
        let mut shared = BTreeMap::new();
        let mut outcome = self.completed;
        let mut ended_at = None;
        for (index, stage) in self.stages.iter_mut().enumerate() {
            let name = stage.name();
            if st.finished(name) {
                continue;
            }
            // A stop request: end here, between two stages (the state file
            // holds every finished one); the next run continues at this one.
            if cfg.stop.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
                return Err(Error::Stopped { stage: name.to_string(), run_id: None });
            }
            events.stage = name;
            events.emit(Event::StageStarted { stage: name.to_string(), index, total });
            let t = Instant::now();
            let flow = {
                let mut cx =
                    Context { cfg, store: &mut *store, state: &mut st, events: &mut events, shared: &mut shared };
                stage.run(&mut cx)
            };
            let (output, end) = match flow {
                Ok(Flow::Next(o)) => (o, None),
                Ok(Flow::End(o, outcome)) => (o, Some(outcome)),
                Err(e) => {
                    events.emit(Event::StageFailed { stage: name.to_string(), error: e.to_string() });
                    return Err(e);
                }
            };
            let seconds = t.elapsed().as_secs_f64();
            st.stages.push(StageRecord { stage: name.to_string(), output: output.clone(), seconds });
            if let Some(o) = end {
                st.outcome = Some(o);
            }
            st.save(home)?;
            events.emit(Event::StageFinished { stage: name.to_string(), index, total, output, seconds });
            if let Some(o) = end {
                outcome = o;
                ended_at = Some(index);
                break;
            }
        }
        if let Some(at) = ended_at {
            for (index, name) in names.iter().enumerate().skip(at + 1) {
                let reason = SkipReason::RunEnded { outcome };
                events.emit(Event::StageSkipped { stage: name.to_string(), index, total, reason });
            }
        }
        st.outcome = Some(outcome);
        st.save(home)?;
        st.append_history(home)?;
        let summary = Summary::new(cfg, &st, skipped, t0.elapsed().as_secs_f64())?;
        events.stage = "";
        events.emit(Event::Finished(Box::new(summary.clone())));
        Ok(summary)
    }
}

/// The pipeline's lock under `home`, held for a run (the OS lets go when the
/// process ends, however it ends): one run at a time per home.
fn lock(home: &SamHome) -> Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = home.pipeline_lock();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Error::Busy { pid: text.trim().parse().ok(), path });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    let pid = std::process::id().to_string();
    let res = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(pid.as_bytes()));
    res.map_err(|e| Error::io(&path, e))?;
    Ok(file)
}
