//! The daemon: a table of jobs, their persistent state and history, and the
//! loop that runs them.
//!
//! [`Scheduler`] holds the jobs (a name, a [`Timing`] and a [`Task`] each).
//! [`Scheduler::run`] is the daemon: it takes the single-instance lock,
//! catches up on missed runs ([`Scheduler::start`]), then ticks until its
//! stop flag is set ([`Scheduler::stop_flag`]; the CLI sets it on SIGTERM
//! and SIGINT), waits for the running jobs to reach a safe point, and
//! returns. Each [`Scheduler::tick`] collects the runs that ended, then
//! starts every job that is due, not running and has the memory it
//! declares, each on its own thread under its own lock; a job's error or
//! panic is recorded and retried with backoff, and never stops the loop.
//!
//! Everything is recorded under the scheduler's folder ([`SchedulerFiles`]):
//! `state.json` (one [`JobState`] per job, rewritten atomically under a
//! lock, so `sam schedule run` in a terminal and the daemon can both
//! write it) and `history.jsonl` (one [`HistoryEntry`] per run or
//! deferral, appended).
//!
//! ```
//! use sam_scheduler::clock::ManualClock;
//! use sam_scheduler::task::{Done, Task, TaskContext, TaskError, TaskReport};
//! use sam_scheduler::{Scheduler, SchedulerFiles, Timing};
//!
//! struct Count;
//! impl Task for Count {
//!     fn run(&mut self, _: &TaskContext) -> Result<TaskReport, TaskError> {
//!         Ok(TaskReport::new(Done::Succeeded, serde_json::Value::Null))
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let clock = ManualClock::new(1_700_000_000);
//! let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone());
//! s.add("count", Timing::every(3600, 0), Count);
//! s.start()?;
//! s.tick()?; // due at once: a job never run before runs on the first start
//! s.wait_idle()?;
//! clock.advance(3 * 86_400); // three days later: one catch-up run, not 72
//! s.tick()?;
//! s.wait_idle()?;
//! assert_eq!(s.files().load_state()?.jobs["count"].runs, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sam_runs::{MemoryProbe, SystemProbe};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::lock::{LockError, PidLock};
use crate::schedule::{self, Deferral, Due, JobState, Outcome, Policy, RunTimes, Timing, Trigger};
use crate::task::{Done, Step, Task, TaskContext, TaskReport, error_chain};

/// Errors of the daemon itself (a job's errors are recorded, not returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The single-instance lock or a job's lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A file of the scheduler could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state file does not parse.
    #[error("{}: {source} (move it away to start the schedule over)", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A line of the history does not parse.
    #[error("{}:{line}: {source}", path.display())]
    History {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The cause.
        source: serde_json::Error,
    },
    /// No job has this name.
    #[error("no job named {name:?} (the jobs are: {})", known.join(", "))]
    UnknownJob {
        /// The name asked for.
        name: String,
        /// The jobs there are.
        known: Vec<String>,
    },
    /// The job is running in another process.
    #[error("job {job} is running already (pid {}); wait for it, or see `sam schedule status`", pid.map_or("unknown".to_string(), |p| p.to_string()))]
    JobBusy {
        /// The job.
        job: String,
        /// The process running it.
        pid: Option<u32>,
    },
}

impl DaemonError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        DaemonError::Io { path: path.to_path_buf(), source }
    }
}

/// The scheduler's files. [`SchedulerFiles::of`] gives a home's (in its
/// `scheduler/` folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerFiles {
    /// Every job's [`JobState`].
    pub state: PathBuf,
    /// One [`HistoryEntry`] per line.
    pub history: PathBuf,
    /// Held by the running daemon for its whole life.
    pub daemon_lock: PathBuf,
    /// Held while `state.json` is read, changed and rewritten.
    pub state_lock: PathBuf,
    /// `<job>.lock` in here is held while that job runs.
    pub job_locks: PathBuf,
}

impl SchedulerFiles {
    /// The scheduler's files under `home` (`SamHome::scheduler_state` and
    /// its neighbours).
    pub fn of(home: &sam_home::SamHome) -> Self {
        Self {
            state: home.scheduler_state(),
            history: home.scheduler_history(),
            daemon_lock: home.scheduler_lock(),
            state_lock: home.scheduler_state_lock(),
            job_locks: home.scheduler_job_locks(),
        }
    }

    /// The lock file of one job.
    pub fn job_lock(&self, job: &str) -> PathBuf {
        self.job_locks.join(format!("{job}.lock"))
    }

    /// The pid of the running daemon, if one runs.
    pub fn daemon_pid(&self) -> Result<Option<u32>, DaemonError> {
        Ok(PidLock::holder(&self.daemon_lock)?)
    }

    /// The state as last written (empty when there is none yet).
    pub fn load_state(&self) -> Result<SchedulerState, DaemonError> {
        match std::fs::read_to_string(&self.state) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|source| DaemonError::State { path: self.state.clone(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SchedulerState::default()),
            Err(e) => Err(DaemonError::io(&self.state, e)),
        }
    }

    /// Read, change and rewrite the state under its lock; returns what `f` returns.
    pub fn update<R>(&self, f: impl FnOnce(&mut SchedulerState) -> R) -> Result<R, DaemonError> {
        let _guard = self.lock_state()?;
        let mut state = self.load_state()?;
        let before = state.clone();
        let r = f(&mut state);
        if state != before {
            let mut text = serde_json::to_string_pretty(&state)
                .map_err(|source| DaemonError::State { path: self.state.clone(), source })?;
            text.push('\n');
            sam_home::atomic::write(&self.state, text.as_bytes()).map_err(|e| DaemonError::io(&self.state, e))?;
        }
        Ok(r)
    }

    /// Append one entry to the history.
    pub fn append_history(&self, entry: &HistoryEntry) -> Result<(), DaemonError> {
        let _guard = self.lock_state()?;
        let mut line = serde_json::to_string(entry).map_err(|source| DaemonError::History {
            path: self.history.clone(),
            line: 0,
            source,
        })?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.history)
            .map_err(|e| DaemonError::io(&self.history, e))?;
        f.write_all(line.as_bytes()).map_err(|e| DaemonError::io(&self.history, e))?;
        f.sync_data().map_err(|e| DaemonError::io(&self.history, e))
    }

    /// The history, oldest first. A torn last line (a crash while it was
    /// written) is left out; a bad line elsewhere is an error naming it.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, DaemonError> {
        let f = match File::open(&self.history) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DaemonError::io(&self.history, e)),
        };
        let lines: Vec<String> = std::io::BufReader::new(f)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|e| DaemonError::io(&self.history, e))?;
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(e) => out.push(e),
                Err(_) if i + 1 == lines.len() => {}
                Err(source) => {
                    return Err(DaemonError::History { path: self.history.clone(), line: i + 1, source });
                }
            }
        }
        Ok(out)
    }

    fn lock_state(&self) -> Result<File, DaemonError> {
        if let Some(dir) = self.state_lock.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DaemonError::io(dir, e))?;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.state_lock)
            .map_err(|e| DaemonError::io(&self.state_lock, e))?;
        f.lock().map_err(|e| DaemonError::io(&self.state_lock, e))?;
        Ok(f)
    }
}

/// Every job's state: `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerState {
    /// By job name.
    pub jobs: BTreeMap<String, JobState>,
}

impl SchedulerState {
    fn job(&mut self, name: &str) -> &mut JobState {
        self.jobs.entry(name.to_string()).or_default()
    }
}

/// One line of `history.jsonl`: a run, or a deferral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The job.
    pub job: String,
    /// Why it started.
    pub trigger: Trigger,
    /// Whether it was forced (`sam schedule run JOB --force`).
    #[serde(default)]
    pub forced: bool,
    /// When it started (the scheduler's clock, Unix seconds).
    pub started: i64,
    /// When it ended.
    pub finished: i64,
    /// How long it took (measured, seconds).
    pub seconds: f64,
    /// The process that ran it.
    pub pid: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// Its steps with their durations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// What it produced.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub output: serde_json::Value,
}

/// What one [`Scheduler::tick`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Jobs started.
    pub started: Vec<String>,
    /// Jobs whose run ended (recorded).
    pub finished: Vec<String>,
    /// Jobs deferred for lack of memory.
    pub deferred: Vec<String>,
    /// Jobs that were due but running in another process.
    pub busy: Vec<String>,
}

type Shared = Arc<Mutex<Box<dyn Task>>>;
type RunResult = std::thread::Result<Result<TaskReport, String>>;

struct Active {
    handle: JoinHandle<RunResult>,
    _lock: PidLock,
    started: i64,
    t0: Instant,
    trigger: Trigger,
    forced: bool,
}

struct Slot {
    name: String,
    timing: Timing,
    task: Shared,
    active: Option<Active>,
}

/// How often the daemon loop wakes to collect finished runs and start due
/// ones.
const POLL: Duration = Duration::from_secs(1);

/// The job table and its loop. See the [module docs](self).
pub struct Scheduler {
    files: SchedulerFiles,
    clock: Arc<dyn Clock>,
    probe: Box<dyn MemoryProbe>,
    policy: Policy,
    jobs: Vec<Slot>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("files", &self.files)
            .field("clock", &self.clock)
            .field("policy", &self.policy)
            .field("jobs", &self.jobs.iter().map(|j| (&j.name, j.timing)).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler with no jobs yet, this machine's memory probe and the
    /// default [`Policy`].
    pub fn new(files: SchedulerFiles, clock: impl Clock + 'static) -> Self {
        Self {
            files,
            clock: Arc::new(clock),
            probe: Box::new(SystemProbe::new()),
            policy: Policy::default(),
            jobs: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Read free memory from `probe` instead of the machine.
    pub fn with_probe(mut self, probe: impl MemoryProbe + 'static) -> Self {
        self.probe = Box::new(probe);
        self
    }

    /// Retry, deferral and catch-up settings.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Add a job. A name that is there already is replaced.
    pub fn add(&mut self, name: impl Into<String>, timing: Timing, task: impl Task + 'static) -> &mut Self {
        self.add_boxed(name, timing, Box::new(task))
    }

    /// [`Scheduler::add`] for a boxed task.
    pub fn add_boxed(&mut self, name: impl Into<String>, timing: Timing, task: Box<dyn Task>) -> &mut Self {
        let name = name.into();
        self.jobs.retain(|j| j.name != name);
        self.jobs.push(Slot { name, timing, task: Arc::new(Mutex::new(task)), active: None });
        self
    }

    /// The jobs' names, in the order they were added.
    pub fn job_names(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.name.clone()).collect()
    }

    /// A job's timing.
    pub fn timing(&self, job: &str) -> Option<Timing> {
        self.jobs.iter().find(|j| j.name == job).map(|j| j.timing)
    }

    /// The files.
    pub fn files(&self) -> &SchedulerFiles {
        &self.files
    }

    /// Set it (from a signal handler) to stop: no new run starts, running
    /// ones are asked to stop at a safe point, [`Scheduler::run`] returns.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The daemon: take the single-instance lock (a second daemon gets
    /// [`LockError::Held`] naming this one's pid), [`start`](Self::start),
    /// tick until the stop flag is set, then wait for the running jobs to
    /// stop and record them. Errors of one tick (a full disk) are logged and
    /// the loop goes on.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let _lock = PidLock::acquire(&self.files.daemon_lock)?;
        self.start()?;
        tracing::info!(pid = std::process::id(), jobs = ?self.job_names(), "scheduler started");
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.tick() {
                tracing::error!("scheduler tick: {e}");
            }
            self.clock.sleep(POLL, &self.stop);
        }
        tracing::info!("scheduler stopping: waiting for running jobs to reach a safe point");
        self.wait_idle().map(drop)
    }

    /// Catch up: every job never run before, or whose time passed while no
    /// daemon ran, is due once after its random delay; a run left marked as
    /// in progress by a process that ended is recorded as
    /// [`Outcome::Interrupted`] and due again, so it continues.
    pub fn start(&mut self) -> Result<(), DaemonError> {
        self.collect_interrupted()?;
        let now = self.clock.now();
        let jobs: Vec<(String, Timing)> = self.jobs.iter().map(|j| (j.name.clone(), j.timing)).collect();
        self.files.update(|state| {
            for (name, timing) in &jobs {
                schedule::on_start(name, state.job(name), timing, now);
            }
        })
    }

    /// Runs marked as in progress whose job lock is free (the process that
    /// ran them ended: a crash, a `kill -9`) are recorded as interrupted.
    fn collect_interrupted(&mut self) -> Result<(), DaemonError> {
        let state = self.files.load_state()?;
        for slot in &self.jobs {
            if slot.active.is_some() || state.jobs.get(&slot.name).is_none_or(|s| s.running.is_none()) {
                continue;
            }
            // Held: another process runs it now (`sam schedule run`).
            let Ok(_probe) = PidLock::acquire(self.files.job_lock(&slot.name)) else { continue };
            let now = self.clock.now();
            let gone = self.files.update(|state| schedule::interrupted(state.job(&slot.name), now))?;
            if let Some(r) = gone {
                tracing::warn!(job = %slot.name, pid = r.pid, "a run was cut short by the end of its process; it runs again");
                self.files.append_history(&HistoryEntry {
                    job: slot.name.clone(),
                    trigger: r.trigger,
                    forced: false,
                    started: r.started,
                    finished: now,
                    seconds: 0.0,
                    pid: r.pid,
                    outcome: Outcome::Interrupted,
                    steps: Vec::new(),
                    output: serde_json::Value::Null,
                })?;
            }
        }
        Ok(())
    }

    /// Collect the runs that ended, then start the jobs that are due.
    pub fn tick(&mut self) -> Result<Tick, DaemonError> {
        let mut tick = Tick::default();
        self.reap(false, &mut tick)?;
        if self.stop.load(Ordering::Relaxed) {
            return Ok(tick);
        }
        self.collect_interrupted()?;
        let now = self.clock.now();
        for i in 0..self.jobs.len() {
            if self.jobs[i].active.is_some() {
                continue;
            }
            let (name, timing, policy) = (self.jobs[i].name.clone(), self.jobs[i].timing, self.policy);
            let due = self.files.update(|state| schedule::due(&name, state.job(&name), &timing, &policy, now))?;
            if let Due::Now(trigger) = due {
                self.launch(i, trigger, false, now, &mut tick)?;
            }
        }
        Ok(tick)
    }

    /// Wait for every running job to end, and record them.
    pub fn wait_idle(&mut self) -> Result<Tick, DaemonError> {
        let mut tick = Tick::default();
        self.reap(true, &mut tick)?;
        Ok(tick)
    }

    /// Whether any job is running in this scheduler.
    pub fn busy(&self) -> bool {
        self.jobs.iter().any(|j| j.active.is_some())
    }

    /// Run one job now, in this thread (`sam schedule run JOB`): under the
    /// job's lock (a run of it in the daemon gives [`DaemonError::JobBusy`]),
    /// with its memory check unless `force`, recorded like any run.
    pub fn run_now(&mut self, job: &str, force: bool) -> Result<HistoryEntry, DaemonError> {
        let Some(i) = self.jobs.iter().position(|j| j.name == job) else {
            return Err(DaemonError::UnknownJob { name: job.to_string(), known: self.job_names() });
        };
        let mut tick = Tick::default();
        let now = self.clock.now();
        if !self.launch(i, Trigger::Manual, force, now, &mut tick)? {
            if !tick.busy.is_empty() {
                let pid = PidLock::holder(&self.files.job_lock(job)).ok().flatten();
                return Err(DaemonError::JobBusy { job: job.to_string(), pid });
            }
            // Deferred: the history's last entry says why.
            return Ok(self.files.history()?.into_iter().rev().find(|e| e.job == job).expect("deferral recorded"));
        }
        self.reap(true, &mut tick)?;
        Ok(self.files.history()?.into_iter().rev().find(|e| e.job == job).expect("run recorded"))
    }

    /// Start job `i` on its own thread; `false` when it was deferred or is
    /// running elsewhere.
    fn launch(
        &mut self,
        i: usize,
        trigger: Trigger,
        force: bool,
        now: i64,
        tick: &mut Tick,
    ) -> Result<bool, DaemonError> {
        let name = self.jobs[i].name.clone();
        let lock = match PidLock::acquire(self.files.job_lock(&name)) {
            Ok(l) => l,
            Err(LockError::Held { .. }) => {
                tick.busy.push(name);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let ctx = TaskContext { stop: Arc::clone(&self.stop), force, now };
        let task = Arc::clone(&self.jobs[i].task);
        let needed = lock_task(&task).memory_needed(&ctx);
        let available = if needed == 0 { u64::MAX } else { self.probe.available_bytes() };
        if available < needed && !force {
            let d = Deferral { at: now, available_bytes: available, needed_bytes: needed };
            let policy = self.policy;
            self.files.update(|state| schedule::deferred(state.job(&name), &policy, d))?;
            self.files.append_history(&HistoryEntry {
                job: name.clone(),
                trigger,
                forced: force,
                started: now,
                finished: now,
                seconds: 0.0,
                pid: std::process::id(),
                outcome: Outcome::Deferred { available_bytes: available, needed_bytes: needed },
                steps: Vec::new(),
                output: serde_json::Value::Null,
            })?;
            tracing::info!(job = %name, available, needed, "deferred: not enough free memory");
            tick.deferred.push(name);
            return Ok(false);
        }
        self.files.update(|state| schedule::started(state.job(&name), now, trigger))?;
        let handle = std::thread::Builder::new()
            .name(format!("sam-job-{name}"))
            .spawn(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    lock_task(&task).run(&ctx).map_err(|e| error_chain(e.as_ref()))
                }))
            })
            .map_err(|e| DaemonError::io(&self.files.job_lock(&name), e))?;
        tracing::info!(job = %name, ?trigger, "started");
        self.jobs[i].active =
            Some(Active { handle, _lock: lock, started: now, t0: Instant::now(), trigger, forced: force });
        tick.started.push(name);
        Ok(true)
    }

    /// Record the runs that ended (all of them, waiting, when `block`).
    fn reap(&mut self, block: bool, tick: &mut Tick) -> Result<(), DaemonError> {
        for i in 0..self.jobs.len() {
            let ended = self.jobs[i].active.as_ref().is_some_and(|a| block || a.handle.is_finished());
            if !ended {
                continue;
            }
            let a = self.jobs[i].active.take().expect("active");
            let result = a.handle.join().unwrap_or_else(Err);
            let seconds = a.t0.elapsed().as_secs_f64();
            let finished = self.clock.now().max(a.started);
            let (outcome, steps, output) = match result {
                Ok(Ok(TaskReport { done, steps, output })) => (outcome_of(done), steps, output),
                Ok(Err(error)) => (Outcome::Failed { error }, Vec::new(), serde_json::Value::Null),
                Err(payload) => (
                    Outcome::Panicked { message: panic_message(payload.as_ref()) },
                    Vec::new(),
                    serde_json::Value::Null,
                ),
            };
            let (name, timing, policy) = (self.jobs[i].name.clone(), self.jobs[i].timing, self.policy);
            self.files.update(|state| {
                schedule::finished(
                    &name,
                    state.job(&name),
                    &timing,
                    &policy,
                    RunTimes { started: a.started, finished, seconds },
                    &outcome,
                )
            })?;
            self.files.append_history(&HistoryEntry {
                job: name.clone(),
                trigger: a.trigger,
                forced: a.forced,
                started: a.started,
                finished,
                seconds,
                pid: std::process::id(),
                outcome: outcome.clone(),
                steps,
                output,
            })?;
            match &outcome {
                o if o.is_failure() => tracing::warn!(job = %name, outcome = ?o, "run failed; retried with backoff"),
                o => tracing::info!(job = %name, outcome = o.as_str(), seconds, "finished"),
            }
            tick.finished.push(name);
        }
        Ok(())
    }
}

fn lock_task(task: &Shared) -> std::sync::MutexGuard<'_, Box<dyn Task>> {
    // A task that panicked poisoned its mutex; it runs again on its next turn.
    task.lock().unwrap_or_else(|e| e.into_inner())
}

fn outcome_of(done: Done) -> Outcome {
    match done {
        Done::Succeeded => Outcome::Succeeded,
        Done::Idle => Outcome::Idle,
        Done::Refused => Outcome::Refused,
        Done::Stopped => Outcome::Stopped,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::clock::ManualClock;
    use crate::task::TaskError;

    const T0: i64 = 1_700_000_000;
    const H: i64 = 3600;

    /// Counts its runs; fails or panics on the runs listed.
    struct Scripted {
        runs: Arc<AtomicU64>,
        fail_on: Vec<u64>,
        panic_on: Vec<u64>,
        memory: u64,
    }

    impl Scripted {
        fn new(runs: &Arc<AtomicU64>) -> Self {
            Self { runs: Arc::clone(runs), fail_on: Vec::new(), panic_on: Vec::new(), memory: 0 }
        }
    }

    impl Task for Scripted {
        fn memory_needed(&mut self, _: &TaskContext) -> u64 {
            self.memory
        }
        fn run(&mut self, _: &TaskContext) -> Result<TaskReport, TaskError> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            if self.panic_on.contains(&n) {
                panic!("scripted panic on run {n}");
            }
            if self.fail_on.contains(&n) {
                return Err(format!("scripted failure on run {n}").into());
            }
            Ok(TaskReport::new(Done::Succeeded, serde_json::json!({ "run": n })))
        }
    }

    struct Fixed(Arc<AtomicU64>);
    impl MemoryProbe for Fixed {
        fn available_bytes(&mut self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn counters(n: usize) -> Vec<Arc<AtomicU64>> {
        (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect()
    }

    /// Tick, let the runs end, tick again to record them: one step of the
    /// daemon loop at the clock's time.
    fn step(s: &mut Scheduler) -> Tick {
        let mut t = s.tick().unwrap();
        let w = s.wait_idle().unwrap();
        t.finished.extend(w.finished);
        t
    }

    #[test]
    fn failing_and_panicking_jobs_are_recorded_and_retried_with_backoff_while_others_keep_their_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = counters(3);
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone());
        s.add("steady", Timing::every(H as u64, 0), Scripted::new(&c[0]));
        s.add("flaky", Timing::every(24 * H as u64, 0), Scripted { fail_on: vec![1, 2], ..Scripted::new(&c[1]) });
        s.add("crashy", Timing::every(24 * H as u64, 0), Scripted { panic_on: vec![1], ..Scripted::new(&c[2]) });
        s.start().unwrap();
        let t = step(&mut s);
        assert_eq!(t.finished.len(), 3, "{t:?}");
        let st = s.files().load_state().unwrap();
        assert_eq!(st.jobs["flaky"].last_outcome, Some(Outcome::Failed { error: "scripted failure on run 1".into() }));
        assert!(
            matches!(&st.jobs["crashy"].last_outcome, Some(Outcome::Panicked { message }) if message == "scripted panic on run 1")
        );
        assert_eq!(st.jobs["flaky"].next_run, Some(T0 + 60));
        assert_eq!(st.jobs["crashy"].next_run, Some(T0 + 60));

        // Walk 3 hours in one-minute ticks.
        for _ in 0..180 {
            clock.advance(60);
            step(&mut s);
        }
        let st = s.files().load_state().unwrap();
        // The steady job kept its hourly schedule throughout.
        assert_eq!(c[0].load(Ordering::SeqCst), 4);
        assert_eq!(st.jobs["steady"].runs, 4);
        // flaky: failed at T0 and T0+60, then succeeded at T0+180 (backoff 60, 120).
        assert_eq!(c[1].load(Ordering::SeqCst), 3);
        let flaky: Vec<_> = s.files().history().unwrap().into_iter().filter(|e| e.job == "flaky").collect();
        assert_eq!(flaky.iter().map(|e| e.started - T0).collect::<Vec<_>>(), [0, 60, 180]);
        assert_eq!(
            flaky.iter().map(|e| e.trigger).collect::<Vec<_>>(),
            [Trigger::Schedule, Trigger::Retry, Trigger::Retry]
        );
        assert_eq!(flaky[2].outcome, Outcome::Succeeded);
        assert_eq!(st.jobs["flaky"].consecutive_failures, 0);
        // crashy: the panic was caught; retried after a minute, and fine since.
        assert_eq!(c[2].load(Ordering::SeqCst), 2);
        assert_eq!(st.jobs["crashy"].last_outcome, Some(Outcome::Succeeded));
    }

    #[test]
    fn a_clock_jumped_three_days_forward_runs_each_missed_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = counters(4);
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone());
        for (i, (name, every)) in
            [("mine", 6 * H), ("dedup", 24 * H), ("validate", 12 * H), ("export", 24 * H)].into_iter().enumerate()
        {
            s.add(name, Timing::every(every as u64, 300), Scripted::new(&c[i]));
        }
        s.start().unwrap();
        // The first runs, each after its own random delay (at most 5 min).
        for _ in 0..6 {
            step(&mut s);
            clock.advance(60);
        }
        assert!(c.iter().all(|n| n.load(Ordering::SeqCst) == 1));
        let before = s.files().history().unwrap().len();

        clock.advance(72 * H);
        let mut delays = Vec::new();
        for _ in 0..10 {
            let t = step(&mut s);
            delays.extend(t.started.iter().map(|_| clock.now()));
            clock.advance(60);
        }
        // Each job once, not 12 or 3 or 6 times.
        assert!(c.iter().all(|n| n.load(Ordering::SeqCst) == 2), "{c:?}");
        let catchup: Vec<_> = s.files().history().unwrap().into_iter().skip(before).collect();
        assert_eq!(catchup.len(), 4);
        assert!(catchup.iter().all(|e| e.trigger == Trigger::Missed), "{catchup:?}");
        // Spread by the random delay, not all at the same second.
        let mut starts: Vec<_> = catchup.iter().map(|e| e.started).collect();
        starts.dedup();
        assert!(starts.len() > 1, "{starts:?}");
    }

    #[test]
    fn a_daemon_restarted_after_days_away_runs_each_missed_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = counters(1);
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone());
        s.add("mine", Timing::every(6 * H as u64, 0), Scripted::new(&c[0]));
        s.start().unwrap();
        step(&mut s);
        drop(s);
        clock.advance(72 * H);
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone());
        s.add("mine", Timing::every(6 * H as u64, 0), Scripted::new(&c[0]));
        s.start().unwrap();
        step(&mut s);
        step(&mut s);
        clock.advance(60);
        step(&mut s);
        assert_eq!(c[0].load(Ordering::SeqCst), 2);
        assert_eq!(s.files().load_state().unwrap().jobs["mine"].runs, 2);
    }

    #[test]
    fn a_job_short_of_memory_is_deferred_and_recorded_then_runs_when_memory_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = counters(2);
        let free = Arc::new(AtomicU64::new(200_000_000));
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone())
            .with_probe(Fixed(Arc::clone(&free)));
        s.add("mine", Timing::every(6 * H as u64, 0), Scripted { memory: 500_000_000, ..Scripted::new(&c[0]) });
        s.add("export", Timing::every(6 * H as u64, 0), Scripted { memory: 100_000_000, ..Scripted::new(&c[1]) });
        s.start().unwrap();
        let t = step(&mut s);
        assert_eq!(t.deferred, ["mine"]);
        assert_eq!((c[0].load(Ordering::SeqCst), c[1].load(Ordering::SeqCst)), (0, 1));
        let st = s.files().load_state().unwrap();
        assert_eq!((st.jobs["mine"].runs, st.jobs["mine"].deferrals), (0, 1));
        let h = s.files().history().unwrap();
        assert!(h.iter().any(|e| e.job == "mine"
            && e.outcome == Outcome::Deferred { available_bytes: 200_000_000, needed_bytes: 500_000_000 }));
        // Looked at again after the deferral wait, with memory back.
        free.store(2_000_000_000, Ordering::SeqCst);
        clock.advance(599);
        assert!(step(&mut s).started.is_empty());
        clock.advance(1);
        assert_eq!(step(&mut s).started, ["mine"]);
        assert_eq!(c[0].load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_run_left_behind_by_a_dead_process_is_recorded_as_interrupted_and_runs_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let files = SchedulerFiles::of(&sam_home::SamHome::new(dir.path()));
        // What a daemon killed during the run leaves: a running marker, a free job lock.
        files
            .update(|st| {
                let job = st.job("train");
                job.next_run = Some(T0 - 100);
                schedule::started(job, T0 - 100, Trigger::Schedule);
            })
            .unwrap();
        let c = counters(1);
        let mut s = Scheduler::new(files, clock.clone());
        s.add("train", Timing::every(300, 0), Scripted::new(&c[0]));
        s.start().unwrap();
        let h = s.files().history().unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].outcome.clone(), h[0].started), (Outcome::Interrupted, T0 - 100));
        assert_eq!(step(&mut s).started, ["train"]);
        assert_eq!(c[0].load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_job_running_elsewhere_is_not_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = counters(1);
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), clock.clone());
        s.add("mine", Timing::every(60, 0), Scripted::new(&c[0]));
        s.start().unwrap();
        let held = PidLock::acquire(s.files().job_lock("mine")).unwrap();
        assert_eq!(step(&mut s).busy, ["mine"]);
        assert!(matches!(s.run_now("mine", false), Err(DaemonError::JobBusy { pid: Some(_), .. })));
        drop(held);
        assert_eq!(step(&mut s).started, ["mine"]);
        let e = s.run_now("mine", true).unwrap();
        assert_eq!((e.trigger, e.forced, e.outcome), (Trigger::Manual, true, Outcome::Succeeded));
        assert!(matches!(s.run_now("nope", false), Err(DaemonError::UnknownJob { .. })));
        assert_eq!(c[0].load(Ordering::SeqCst), 2);
    }

    #[test]
    fn stop_flag_ends_run_and_the_stopped_job_is_due_again() {
        struct UntilStopped;
        impl Task for UntilStopped {
            fn run(&mut self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
                while !ctx.stopping() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(TaskReport::new(Done::Stopped, serde_json::Value::Null))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = Scheduler::new(SchedulerFiles::of(&sam_home::SamHome::new(dir.path())), crate::clock::SystemClock);
        s.add("train", Timing::every(300, 0), UntilStopped);
        let stop = s.stop_flag();
        let files = s.files().clone();
        let daemon = std::thread::spawn(move || s.run());
        // Wait until the run has started, then stop.
        let t0 = Instant::now();
        while files.load_state().unwrap().jobs.get("train").is_none_or(|j| j.running.is_none()) {
            assert!(t0.elapsed() < Duration::from_secs(20), "the job never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(files.daemon_pid().unwrap().is_some());
        stop.store(true, Ordering::SeqCst);
        daemon.join().unwrap().unwrap();
        assert_eq!(files.daemon_pid().unwrap(), None);
        let st = files.load_state().unwrap();
        let j = &st.jobs["train"];
        assert_eq!(j.last_outcome, Some(Outcome::Stopped));
        assert_eq!(j.next_run, j.last_finished);
    }
}
