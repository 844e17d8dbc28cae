//! The run folder: status, configuration, metrics and events on disk.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::RunError;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Created, not started.
    Queued,
    /// Training.
    Running,
    /// Waiting (for memory, or on request) between steps.
    Paused,
    /// Finished; the adapter is final.
    Completed,
    /// Stopped by an error (the reason is in `status.json`).
    Failed,
    /// Stopped on request (SIGINT/SIGTERM or `sam runs stop`); resumable.
    Stopped,
}

impl RunStatus {
    /// The status's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
        }
    }

    /// Whether the run is over (completed or failed).
    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// Current status.
    pub status: RunStatus,
    /// Why it failed or stopped, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last completed optimiser step.
    #[serde(default)]
    pub step: u64,
    /// Steps planned in all.
    #[serde(default)]
    pub total_steps: u64,
    /// Unix seconds of the last update.
    pub updated_at: u64,
    /// Process id of the process running it, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// One line of `metrics.jsonl`. Fields that a line does not measure are
/// absent (a training step has no validation loss, an evaluation no
/// tokens/s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Optimiser step this record belongs to.
    pub step: u64,
    /// Training phase (`sft`, `dpo`), when a run has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Training loss (mean over the step's tokens or pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Validation loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Learning rate used for the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Trained tokens per second over the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// Tokens trained on so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    /// Resident memory of the process, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Seconds since the run started (not counting pauses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// Anything else (DPO rewards, margins, accuracies…).
    #[serde(default, flatten, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// What happened, in `events.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The run started (or restarted after a resume).
    Started,
    /// Training paused (the message says why, e.g. low memory).
    Paused,
    /// Training resumed after a pause.
    Resumed,
    /// A checkpoint was written.
    Checkpoint,
    /// The run was resumed from a checkpoint.
    ResumedFromCheckpoint,
    /// A validation pass finished.
    Evaluated,
    /// Stopped on request.
    Stopped,
    /// An error ended the run.
    Error,
    /// The run completed.
    Completed,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub time: u64,
    /// What happened.
    pub kind: EventKind,
    /// The step it happened at.
    pub step: u64,
    /// Details for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A run's folder, `SAM_HOME/runs/<id>/`:
///
/// ```text
/// config.json     the full configuration the run was started with
/// status.json     status, step, reason (rewritten atomically)
/// metrics.jsonl   one MetricRecord per line (appended)
/// events.jsonl    one Event per line (appended)
/// checkpoints/    written by the trainer
/// adapter/        the final (or best) adapter
/// eval.json       evaluation report
/// loss.svg        train and validation loss curves
/// ```
///
/// ```
/// use sam_runs::{RunDir, RunStatus, MetricRecord};
/// let root = tempfile::tempdir()?;
/// let run = RunDir::create(root.path(), "run-1", &serde_json::json!({"lr": 1e-4}))?;
/// run.set_status(RunStatus::Running, None, 0, 10)?;
/// run.append_metric(&MetricRecord { step: 1, train_loss: Some(2.5), ..Default::default() })?;
/// assert_eq!(run.metrics()?.len(), 1);
/// assert_eq!(run.status()?.status, RunStatus::Running);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
    id: String,
}

impl RunDir {
    /// Create `root/<id>/` with its config and a `queued` status. Fails if
    /// the folder already holds a run.
    pub fn create(root: &Path, id: &str, config: &impl Serialize) -> Result<Self, RunError> {
        if id.is_empty() || id.contains(['/', '\\']) || id == "." || id == ".." {
            return Err(RunError::BadId(id.to_string()));
        }
        let path = root.join(id);
        if path.join("status.json").exists() {
            return Err(RunError::Exists(path));
        }
        fs::create_dir_all(path.join("checkpoints")).map_err(|e| RunError::io(&path, e))?;
        let run = Self { path, id: id.to_string() };
        write_json_atomic(&run.config_path(), config)?;
        run.set_status(RunStatus::Queued, None, 0, 0)?;
        Ok(run)
    }

    /// Open an existing run folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RunError> {
        let path = path.as_ref().to_path_buf();
        if !path.join("status.json").is_file() {
            return Err(RunError::NotARun(path));
        }
        let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { path, id })
    }

    /// Every run under `root`, oldest first (by folder name, which starts
    /// with a timestamp when made by [`new_run_id`]).
    pub fn list(root: &Path) -> Result<Vec<RunDir>, RunError> {
        let mut runs = Vec::new();
        let entries = match fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(runs),
            Err(e) => return Err(RunError::io(root, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| RunError::io(root, e))?;
            if entry.path().join("status.json").is_file() {
                runs.push(RunDir::open(entry.path())?);
            }
        }
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(runs)
    }

    /// The run's id (its folder name).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The run folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }
    /// `status.json`.
    pub fn status_path(&self) -> PathBuf {
        self.path.join("status.json")
    }
    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    /// `events.jsonl`.
    pub fn events_path(&self) -> PathBuf {
        self.path.join("events.jsonl")
    }
    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }
    /// `adapter/`.
    pub fn adapter_dir(&self) -> PathBuf {
        self.path.join("adapter")
    }
    /// `eval.json`.
    pub fn eval_path(&self) -> PathBuf {
        self.path.join("eval.json")
    }
    /// `loss.svg`.
    pub fn loss_svg_path(&self) -> PathBuf {
        self.path.join("loss.svg")
    }

    /// The configuration the run was created with.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, RunError> {
        read_json(&self.config_path())
    }

    /// The current status.
    pub fn status(&self) -> Result<StatusFile, RunError> {
        read_json(&self.status_path())
    }

    /// Rewrite `status.json` atomically.
    pub fn set_status(
        &self,
        status: RunStatus,
        reason: Option<String>,
        step: u64,
        total_steps: u64,
    ) -> Result<(), RunError> {
        let pid = matches!(status, RunStatus::Running | RunStatus::Paused).then(std::process::id);
        let file = StatusFile { status, reason, step, total_steps, updated_at: unix_now(), pid };
        write_json_atomic(&self.status_path(), &file)
    }

    /// Append one metrics line (flushed before returning).
    pub fn append_metric(&self, record: &MetricRecord) -> Result<(), RunError> {
        append_json_line(&self.metrics_path(), record)
    }

    /// Append one event line.
    pub fn append_event(&self, kind: EventKind, step: u64, message: impl Into<String>) -> Result<(), RunError> {
        let event = Event { time: unix_now(), kind, step, message: message.into() };
        append_json_line(&self.events_path(), &event)
    }

    /// Every metrics line. A torn last line (the process died mid-write) is
    /// skipped; a bad line elsewhere is an error.
    pub fn metrics(&self) -> Result<Vec<MetricRecord>, RunError> {
        read_json_lines(&self.metrics_path())
    }

    /// Every event.
    pub fn events(&self) -> Result<Vec<Event>, RunError> {
        read_json_lines(&self.events_path())
    }

    /// Keep only metrics at or before `step` (used on resume, so that the
    /// steps redone after a crash are not counted twice).
    pub fn truncate_metrics_after(&self, step: u64) -> Result<(), RunError> {
        self.retain_metrics(|m| m.step <= step)
    }

    /// Keep only the metrics lines for which `keep` is true (rewritten
    /// atomically). A run with several phases uses it on resume to drop what
    /// the interrupted phase logged after its last checkpoint.
    pub fn retain_metrics(&self, keep: impl Fn(&MetricRecord) -> bool) -> Result<(), RunError> {
        let kept: Vec<MetricRecord> = self.metrics()?.into_iter().filter(|m| keep(m)).collect();
        let mut text = String::new();
        for m in &kept {
            text.push_str(&serde_json::to_string(m).expect("metrics serialise"));
            text.push('\n');
        }
        write_atomic(&self.metrics_path(), text.as_bytes())
    }

    /// Draw `loss.svg` from the metrics so far. The steps of a later phase
    /// (DPO after SFT) continue after the earlier phase's last step.
    pub fn write_loss_svg(&self) -> Result<(), RunError> {
        let metrics = self.metrics()?;
        let mut offsets: Vec<(Option<String>, u64)> = Vec::new();
        let mut phase_end = 0u64;
        let mut x = |m: &MetricRecord| -> f64 {
            if offsets.last().map(|(p, _)| p) != Some(&m.phase) {
                let start = offsets.last().map_or(0, |_| phase_end);
                offsets.push((m.phase.clone(), start));
            }
            let off = offsets.last().map_or(0, |o| o.1);
            phase_end = phase_end.max(off + m.step);
            (off + m.step) as f64
        };
        let mut train = Vec::new();
        let mut valid = Vec::new();
        for m in &metrics {
            let at = x(m);
            if let Some(l) = m.train_loss {
                train.push((at, l));
            }
            if let Some(l) = m.val_loss {
                valid.push((at, l));
            }
        }
        let phases: Vec<&str> = offsets.iter().filter_map(|(p, _)| p.as_deref()).collect();
        let title = if phases.len() > 1 {
            format!("run {} ({})", self.id, phases.join(" then "))
        } else {
            format!("run {}", self.id)
        };
        let svg = crate::plot::loss_svg(&title, &train, &valid);
        write_atomic(&self.loss_svg_path(), svg.as_bytes())
    }

    /// `stop`: a request from another process (`sam runs stop`) to stop the
    /// run at its next step boundary, with a checkpoint.
    pub fn stop_request_path(&self) -> PathBuf {
        self.path.join("stop")
    }

    /// Ask the process running this run to stop after its current step.
    pub fn request_stop(&self) -> Result<(), RunError> {
        write_atomic(&self.stop_request_path(), format!("{}\n", unix_now()).as_bytes())
    }

    /// Whether a stop was requested and not yet cleared.
    pub fn stop_requested(&self) -> bool {
        self.stop_request_path().exists()
    }

    /// Forget a stop request (done when the run is resumed).
    pub fn clear_stop_request(&self) -> Result<(), RunError> {
        match fs::remove_file(self.stop_request_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RunError::io(&self.stop_request_path(), e)),
        }
    }

    /// Whether the process recorded in `status.json` as running this run is
    /// still alive (`false` when no process is recorded, or it is gone or a
    /// zombie, see [`process_alive`]: the run crashed or was killed and can
    /// be resumed).
    pub fn owner_alive(&self) -> Result<bool, RunError> {
        let st = self.status()?;
        Ok(st.pid.is_some_and(process_alive))
    }
}

/// A new run id: UTC time to the second plus a short random suffix, so ids
/// sort by start time and never collide.
pub fn new_run_id() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (y, mo, d, h, mi, s) = civil_from_unix(secs as i64);
    let nonce = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{nonce:04x}")
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Days-from-civil inverse (Howard Hinnant's algorithm), UTC.
fn civil_from_unix(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32, (rem % 60) as u32)
}

/// Whether a process with this id is alive: it exists and is not a zombie.
///
/// A zombie is a process that has exited but whose parent has not reaped it
/// yet (the parent did not `wait` for it: a shell, a supervisor, or a test
/// that spawned the trainer). It still holds its pid, so `kill(pid, 0)`
/// succeeds on it, yet it will never step, checkpoint or release its run
/// again: counting it as alive would show a dead run as `running` and
/// refuse to resume it. So after the existence check the process's state is
/// read through sysinfo (on Linux the state letter of `/proc/PID/stat`, `Z`
/// for a zombie; on macOS and the BSDs the kernel's `SZOMB`). A process
/// whose state cannot be read (another user's, on some systems) counts as
/// alive, as the existence check says.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        exists && !is_zombie(pid)
    }
    #[cfg(not(unix))]
    {
        !is_zombie(pid)
    }
}

/// Whether the process is a zombie (exited, not yet reaped), as far as the
/// system lets us see.
fn is_zombie(pid: u32) -> bool {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let Ok(mut sys) = System::new() else { return false };
    let pid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, ProcessRefreshKind::nothing());
    sys.process(pid).is_some_and(|p| p.status() == ProcessStatus::Zombie)
}

/// Serialise to pretty JSON and write atomically ([`sam_home::atomic::write`]).
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| RunError::Json { path: path.to_path_buf(), source: e })?;
    text.push('\n');
    sam_home::atomic::write(path, text.as_bytes()).map_err(|e| RunError::io(path, e))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, RunError> {
    let text = fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RunError::Json { path: path.to_path_buf(), source: e })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    sam_home::atomic::write(path, bytes).map_err(|e| RunError::io(path, e))
}

fn append_json_line(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let mut line = serde_json::to_string(value).map_err(|e| RunError::Json { path: path.to_path_buf(), source: e })?;
    line.push('\n');
    // One write call per line: a crash leaves at most a torn last line.
    sam_home::atomic::append_line(path, line.as_bytes()).map_err(|e| RunError::io(path, e))
}

fn read_json_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, RunError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RunError::io(path, e)),
    };
    let lines: Vec<String> = BufReader::new(f).lines().collect::<Result<_, _>>().map_err(|e| RunError::io(path, e))?;
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            // A torn final line is what a crash mid-append leaves behind.
            Err(_) if i + 1 == n => {}
            Err(e) => return Err(RunError::Line { path: path.to_path_buf(), line: i + 1, source: e }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write as _;

    use super::*;

    #[test]
    fn status_metrics_events_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "r1", &serde_json::json!({"rank": 8})).unwrap();
        assert_eq!(run.status().unwrap().status, RunStatus::Queued);
        assert!(RunDir::create(root.path(), "r1", &()).is_err(), "a second create must not clobber a run");
        run.set_status(RunStatus::Failed, Some("loss is NaN".into()), 3, 10).unwrap();
        let st = run.status().unwrap();
        assert_eq!((st.status, st.reason.as_deref(), st.step), (RunStatus::Failed, Some("loss is NaN"), 3));

        let mut m = MetricRecord { step: 1, train_loss: Some(2.0), ..Default::default() };
        m.extra.insert("reward_margin".into(), 0.5.into());
        run.append_metric(&m).unwrap();
        run.append_metric(&MetricRecord { step: 2, val_loss: Some(1.5), ..Default::default() }).unwrap();
        assert_eq!(run.metrics().unwrap()[0], m);
        run.truncate_metrics_after(1).unwrap();
        assert_eq!(run.metrics().unwrap().len(), 1);

        run.append_event(EventKind::Paused, 2, "available memory 0.2 GB < 0.3 GB").unwrap();
        let ev = run.events().unwrap();
        assert_eq!(ev[0].kind, EventKind::Paused);
        let cfg: serde_json::Value = run.config().unwrap();
        assert_eq!(cfg["rank"], 8);
        assert_eq!(RunDir::list(root.path()).unwrap().len(), 1);
    }

    #[test]
    fn torn_last_line_is_skipped_but_bad_middle_line_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "r", &()).unwrap();
        run.append_metric(&MetricRecord { step: 1, ..Default::default() }).unwrap();
        let mut f = OpenOptions::new().append(true).open(run.metrics_path()).unwrap();
        f.write_all(b"{\"step\":2,\"train_lo").unwrap();
        assert_eq!(run.metrics().unwrap().len(), 1);
        f.write_all(b"\n{\"step\":3}\n").unwrap();
        let err = run.metrics().unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }

    /// A child that has exited but is not reaped yet (a zombie) still has
    /// its pid, and `kill(pid, 0)` succeeds on it: its run must still count
    /// as having no live process.
    #[cfg(unix)]
    #[test]
    fn a_zombie_owner_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for it to exit without reaping it (WNOWAIT): now a zombie.
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, 0) }, 0, "the zombie still has its pid");

        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "r", &()).unwrap();
        let st = StatusFile {
            status: RunStatus::Running,
            reason: None,
            step: 1,
            total_steps: 2,
            updated_at: unix_now(),
            pid: Some(pid),
        };
        write_json_atomic(&run.status_path(), &st).unwrap();
        assert!(!process_alive(pid), "a zombie counts as alive");
        assert!(!run.owner_alive().unwrap());
        child.wait().unwrap();
        assert!(!process_alive(pid));
        // This process is alive, and so is its run while it holds it.
        run.set_status(RunStatus::Running, None, 1, 2).unwrap();
        assert!(process_alive(std::process::id()) && run.owner_alive().unwrap());
    }

    #[test]
    fn run_ids_sort_by_time() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(1_764_086_400), (2025, 11, 25, 16, 0, 0));
        let id = new_run_id();
        assert_eq!(id.len(), "20261125-160000-abcd".len(), "{id}");
        assert!(RunDir::create(Path::new("/tmp"), "../x", &()).is_err());
    }
}
