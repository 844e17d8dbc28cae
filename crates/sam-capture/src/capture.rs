//! Live capture for the running assistant.
//!
//! A [`Capture`] is one event: an escalation to a remote model, a user's
//! correction, a preferred alternative, positive feedback, or a distillation
//! from a larger model. [`Capturer::capture`] turns it into an example
//! (chat, preference pair or instruction), passes it through the
//! [`Pipeline`] (redaction, quality, domain) and buffers it; the buffer is
//! flushed to the store when it holds `max_batch` examples or its oldest
//! example is `max_age_ms` old, on [`Capturer::flush`], and on drop.
//!
//! Nothing captured is lost when the store cannot be written (another
//! process holds its lock past the busy timeout, the file is read-only, the
//! disk is full): the batch is appended to the spool, an append-only JSONL
//! file, and every later flush first drains the spool into the store. A
//! drain renames the spool before reading it, so a process appending at the
//! same time writes to a fresh spool rather than into a file being drained;
//! a drain interrupted by a crash is picked up by the next one (the store's
//! content-hash dedup makes a repeated insert harmless). Spooled examples
//! are already redacted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sam_schema::{Content, Example, Message, Prompt};
use sam_store::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CaptureError, Result};
use crate::pipeline::Pipeline;
use crate::redact::RedactionReport;

/// Settings of live capture (`[capture]` in `sam.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaptureConfig {
    /// Flush when the buffer holds this many examples.
    pub max_batch: usize,
    /// Flush when the oldest buffered example is this old (milliseconds).
    pub max_age_ms: u64,
    /// Where batches go when the store cannot be written (the CLI puts it
    /// under SAM_HOME). `None`: `spool.jsonl` in the current folder.
    pub spool: Option<PathBuf>,
    /// An escalation becomes a preference pair (chosen = remote answer,
    /// rejected = local answer) when the local answer is given; otherwise,
    /// or when this is false, a chat example of the remote answer.
    pub escalation_as_preference: bool,
    /// How long `sam capture` waits for another process's write lock before
    /// it spools instead (milliseconds): capture must not stall the assistant.
    pub busy_timeout_ms: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self { max_batch: 32, max_age_ms: 5_000, spool: None, escalation_as_preference: true, busy_timeout_ms: 2_000 }
    }
}

/// One event from the running assistant.
///
/// As JSON (what `sam capture` reads on stdin), tagged by `type`:
///
/// ```
/// use sam_capture::capture::Capture;
/// let c: Capture = serde_json::from_str(
///     r#"{"type":"correction","prompt":"2+2?","wrong":"5","correction":"4"}"#,
/// ).unwrap();
/// let ex = c.to_example(true).unwrap();
/// assert_eq!(ex.kind(), sam_schema::Kind::Preference);
/// assert_eq!(ex.source, "correction");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Capture {
    /// The local model could not answer; a remote model did.
    Escalation {
        /// The user's request.
        prompt: String,
        /// The local model's attempt, if it made one.
        #[serde(default)]
        local: Option<String>,
        /// The remote model's answer.
        remote: String,
        /// The remote model's name.
        #[serde(default)]
        model: Option<String>,
    },
    /// The user corrected a wrong answer.
    Correction {
        /// The user's request.
        prompt: String,
        /// The wrong answer.
        wrong: String,
        /// The user's correction.
        correction: String,
    },
    /// The user preferred one answer over another.
    Preference {
        /// The user's request.
        prompt: String,
        /// The preferred answer.
        chosen: String,
        /// The other answer.
        rejected: String,
    },
    /// The user rated an answer good.
    Feedback {
        /// The user's request.
        prompt: String,
        /// The answer rated good.
        response: String,
    },
    /// A larger model's answer, kept to teach the local one.
    Distill {
        /// The user's request.
        prompt: String,
        /// The teacher's answer.
        response: String,
        /// A system prompt the teacher had.
        #[serde(default)]
        system: Option<String>,
        /// The teacher's name.
        #[serde(default)]
        model: Option<String>,
    },
}

impl Capture {
    /// The event's kind name (`escalation`, `correction`, `preference`,
    /// `feedback`, `distill`), which is also its examples' source (except
    /// `distill`, whose source is `distillation`).
    pub fn kind(&self) -> &'static str {
        match self {
            Capture::Escalation { .. } => "escalation",
            Capture::Correction { .. } => "correction",
            Capture::Preference { .. } => "preference",
            Capture::Feedback { .. } => "feedback",
            Capture::Distill { .. } => "distill",
        }
    }

    /// The example this event teaches (not yet redacted or scored).
    pub fn to_example(&self, escalation_as_preference: bool) -> Result<Example> {
        let need = |name: &str, v: &str| {
            if v.trim().is_empty() {
                Err(CaptureError::Invalid(format!("{}: {name} is empty", self.kind())))
            } else {
                Ok(())
            }
        };
        let pair = |prompt: &str, chosen: &str, rejected: &str| Content::Preference {
            prompt: Prompt::Text(prompt.into()),
            chosen: chosen.into(),
            rejected: rejected.into(),
        };
        let (content, source, model) = match self {
            Capture::Escalation { prompt, local, remote, model } => {
                need("prompt", prompt)?;
                need("remote", remote)?;
                let content = match local.as_deref().filter(|l| !l.trim().is_empty()) {
                    Some(local) if escalation_as_preference => pair(prompt, remote, local),
                    _ => Content::Chat {
                        messages: vec![Message::user(prompt.clone()), Message::assistant(remote.clone())],
                    },
                };
                (content, "escalation", model.clone())
            }
            Capture::Correction { prompt, wrong, correction } => {
                need("prompt", prompt)?;
                need("wrong", wrong)?;
                need("correction", correction)?;
                (pair(prompt, correction, wrong), "correction", None)
            }
            Capture::Preference { prompt, chosen, rejected } => {
                need("prompt", prompt)?;
                need("chosen", chosen)?;
                need("rejected", rejected)?;
                (pair(prompt, chosen, rejected), "preference", None)
            }
            Capture::Feedback { prompt, response } => {
                need("prompt", prompt)?;
                need("response", response)?;
                let c = Content::Instruction {
                    instruction: prompt.clone(),
                    input: String::new(),
                    output: response.clone(),
                };
                (c, "feedback", None)
            }
            Capture::Distill { prompt, response, system, model } => {
                need("prompt", prompt)?;
                need("response", response)?;
                let mut messages = Vec::new();
                if let Some(s) = system.as_deref().filter(|s| !s.trim().is_empty()) {
                    messages.push(Message::system(s));
                }
                messages.push(Message::user(prompt.clone()));
                messages.push(Message::assistant(response.clone()));
                (Content::Chat { messages }, "distillation", model.clone())
            }
        };
        let mut ex = Example::new(content).with_source(source).with_created_at(now());
        if let Some(m) = model {
            ex = ex.with_meta("model", m);
        }
        Ok(ex)
    }
}

/// The metadata key under which a captured example records the adapter
/// version that gave the answer.
pub const ADAPTER_VERSION_KEY: &str = "adapter_version";

/// A [`Capture`] with the adapter version that gave the answer it is about
/// (what the running assistant's registry lookup returned), so that a
/// canary's feedback can be told from production's.
///
/// As JSON: the capture's own fields plus an optional `adapter_version`:
///
/// ```
/// use sam_capture::capture::CaptureEvent;
/// let e: CaptureEvent = serde_json::from_str(
///     r#"{"type":"feedback","prompt":"ls by size?","response":"`ls -lS`","adapter_version":"3f2a9c01b7de"}"#,
/// ).unwrap();
/// let ex = e.to_example(true).unwrap();
/// assert_eq!(ex.metadata["adapter_version"], "3f2a9c01b7de");
/// assert_eq!(e.event.judgement(), Some(true));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureEvent {
    /// The event.
    #[serde(flatten)]
    pub event: Capture,
    /// The adapter version (a registry version id, or `base`) whose answer
    /// the event judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_version: Option<String>,
}

impl From<Capture> for CaptureEvent {
    fn from(event: Capture) -> Self {
        Self { event, adapter_version: None }
    }
}

impl CaptureEvent {
    /// The example the event teaches, with the adapter version in its
    /// metadata (not yet redacted or scored).
    pub fn to_example(&self, escalation_as_preference: bool) -> Result<Example> {
        let mut ex = self.event.to_example(escalation_as_preference)?;
        if let Some(v) = self.adapter_version.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            ex = ex.with_meta(ADAPTER_VERSION_KEY, v);
        }
        Ok(ex)
    }
}

impl Capture {
    /// What the event says about the local model's answer: `Some(true)` for
    /// positive feedback, `Some(false)` for a correction or an escalation
    /// (the local answer was wrong, or there was none), `None` otherwise.
    pub fn judgement(&self) -> Option<bool> {
        match self {
            Capture::Feedback { .. } => Some(true),
            Capture::Correction { .. } | Capture::Escalation { .. } => Some(false),
            Capture::Preference { .. } | Capture::Distill { .. } => None,
        }
    }
}

/// Judgements of one adapter version's answers, read back from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFeedback {
    /// Answers rated good (feedback examples).
    pub good: u64,
    /// Answers judged bad (corrections and escalations).
    pub bad: u64,
}

/// Counts, per adapter version, the stored judgements of its answers
/// (examples from feedback, corrections and escalations that carry an
/// adapter version), created at or after `since` (Unix seconds) when given.
/// Examples the store dropped as duplicates are counted once.
pub fn feedback_by_version<S: Store + ?Sized>(
    store: &S,
    since: Option<i64>,
) -> Result<std::collections::BTreeMap<String, VersionFeedback>> {
    let mut filter = sam_store::Filter::default().source("feedback").source("correction").source("escalation");
    filter.since = since;
    let mut out = std::collections::BTreeMap::<String, VersionFeedback>::new();
    store.scan(&filter, &mut |ex| {
        if let Some(v) = ex.metadata.get(ADAPTER_VERSION_KEY).and_then(|v| v.as_str()) {
            let e = out.entry(v.to_string()).or_default();
            if ex.source == "feedback" { e.good += 1 } else { e.bad += 1 }
        }
        Ok(())
    })?;
    Ok(out)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    /// Examples written to the store (new ones; duplicates are not counted).
    pub stored: u64,
    /// Examples the store already had.
    pub duplicates: u64,
    /// Examples the store refused as invalid (quarantined by the store).
    pub rejected: u64,
    /// Examples drained from the spool in this flush.
    pub drained: usize,
    /// Examples appended to the spool because the store could not be written.
    pub spooled: usize,
    /// Why the store could not be written, if it could not.
    pub error: Option<String>,
}

/// Buffers captures and flushes them to a store, spooling when it cannot.
///
/// ```
/// use sam_capture::capture::{Capture, CaptureConfig, Capturer};
/// use sam_store::prelude::*;
/// use sam_store::{SqliteStore, Filter};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("store.db"))?;
/// let cfg = CaptureConfig { max_batch: 2, spool: Some(dir.path().join("spool.jsonl")), ..Default::default() };
/// let mut cap = Capturer::new(store, Default::default(), cfg);
/// cap.capture(Capture::Feedback { prompt: "List files by size".into(), response: "`ls -lS`".into() })?;
/// assert_eq!(cap.store().count(&Filter::default())?, 0); // buffered
/// cap.capture(Capture::Feedback { prompt: "Show hidden files".into(), response: "`ls -a`".into() })?;
/// assert_eq!(cap.store().count(&Filter::default())?, 2); // flushed by size
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Capturer<S: Store> {
    store: S,
    pipeline: Pipeline,
    cfg: CaptureConfig,
    spool: PathBuf,
    buf: Vec<Example>,
    oldest: Option<Instant>,
    redacted: RedactionReport,
}

impl<S: Store> Capturer<S> {
    /// A capturer writing to `store`. `cfg.spool` should be set (the CLI
    /// sets it to `SamHome::capture_spool` or the configured path); unset, the
    /// spool is `spool.jsonl` in the current folder.
    pub fn new(store: S, pipeline: Pipeline, cfg: CaptureConfig) -> Self {
        let spool = cfg.spool.clone().unwrap_or_else(|| PathBuf::from("spool.jsonl"));
        Self { store, pipeline, cfg, spool, buf: Vec::new(), oldest: None, redacted: RedactionReport::default() }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The spool file.
    pub fn spool_path(&self) -> &Path {
        &self.spool
    }

    /// Examples buffered, not yet flushed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// What redaction has replaced so far, by kind.
    pub fn redacted(&self) -> &RedactionReport {
        &self.redacted
    }

    /// Capture one event; flushes when the buffer is full or old enough.
    /// Returns the flush's report when one happened.
    pub fn capture(&mut self, event: Capture) -> Result<Option<FlushReport>> {
        self.capture_event(event.into())
    }

    /// Capture one event with the adapter version it judges (see
    /// [`CaptureEvent`]); flushes like [`Capturer::capture`].
    pub fn capture_event(&mut self, event: CaptureEvent) -> Result<Option<FlushReport>> {
        let ex = event.to_example(self.cfg.escalation_as_preference)?;
        let (ex, report) = self.pipeline.prepare(ex);
        self.redacted.merge(&report);
        self.buf.push(ex);
        self.oldest.get_or_insert_with(Instant::now);
        self.tick()
    }

    /// Flush if the buffer is full or its oldest example is due; call it
    /// from a timer so that a quiet assistant still flushes.
    pub fn tick(&mut self) -> Result<Option<FlushReport>> {
        let due = self.oldest.is_some_and(|t| t.elapsed() >= Duration::from_millis(self.cfg.max_age_ms));
        if self.buf.len() >= self.cfg.max_batch.max(1) || due { self.flush().map(Some) } else { Ok(None) }
    }

    /// Write the spool's examples and the buffer to the store; if the store
    /// cannot be written, append the buffer to the spool instead. Errors only
    /// when the spool itself cannot be written (then the buffer is kept).
    pub fn flush(&mut self) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        let draining = claim_spool(&self.spool)?;
        let mut spooled = Vec::new();
        for f in &draining {
            spooled.extend(read_spool(f)?);
        }
        // A spool may have been written by another version of sam, or by
        // hand: what it holds passes redaction again (a no-op on redacted
        // text) before it reaches the store.
        for ex in &mut spooled {
            if !ex.metadata.contains_key(crate::REDACTION_SKIPPED_KEY) {
                let r = self.pipeline.redactor().redact_example(ex);
                self.redacted.merge(&r);
            }
        }
        if spooled.is_empty() && self.buf.is_empty() {
            return Ok(report);
        }
        let mut all = spooled;
        report.drained = all.len();
        all.extend(self.buf.iter().cloned());
        match self.store.insert(&all) {
            Ok(r) => {
                report.stored = r.inserted;
                report.duplicates = r.duplicates;
                report.rejected = r.rejected;
                for f in &draining {
                    match std::fs::remove_file(f) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(CaptureError::io(f, e)),
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // The claimed spool files stay where they are for the next
                // drain; the buffer joins the spool.
                report.drained = 0;
                report.error = Some(e.to_string());
                append_spool(&self.spool, &self.buf)?;
                report.spooled = self.buf.len();
            }
        }
        self.buf.clear();
        self.oldest = None;
        Ok(report)
    }
}

impl<S: Store> Drop for Capturer<S> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // Flush spools on failure; only a failing spool loses data, and
            // there is no one left to tell.
            let _ = self.flush();
        }
    }
}

/// Append examples to a spool file (one JSON line each), durably. The CLI
/// uses this directly when it cannot even open the store.
pub fn append_spool(path: &Path, examples: &[Example]) -> Result<()> {
    if examples.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CaptureError::io(dir, e))?;
    }
    let mut text = String::new();
    for ex in examples {
        text.push_str(&ex.to_json_line());
        text.push('\n');
    }
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| CaptureError::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| CaptureError::io(path, e))?;
    f.sync_data().map_err(|e| CaptureError::io(path, e))
}

/// Move the spool aside for draining and list every spool file awaiting a
/// drain (including those of an earlier, interrupted drain).
fn claim_spool(path: &Path) -> Result<Vec<PathBuf>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if path.exists() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let to = path.with_file_name(format!("{name}.draining-{}-{nanos}", std::process::id()));
        std::fs::rename(path, &to).map_err(|e| CaptureError::io(path, e))?;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let prefix = format!("{name}.draining-");
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// The examples of a spool file. A torn last line (a crash mid-append) is
/// skipped.
fn read_spool(path: &Path) -> Result<Vec<Example>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // Another process drained it first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CaptureError::io(path, e)),
    };
    Ok(text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| sam_schema::parse_line(l).ok()).collect())
}

/// Examples waiting in the spool at `path` (including claimed files).
pub fn spooled(path: &Path) -> Result<usize> {
    let mut n = 0;
    if path.exists() {
        n += read_spool(path)?.len();
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(&format!("{name}.draining-")) {
                n += read_spool(&e.path())?.len();
            }
        }
    }
    Ok(n)
}

/// A [`Capturer`] shared between threads, with a background thread that
/// flushes by time even when the assistant is quiet (a plain `Capturer`
/// flushes by time only when it is called). Dropping it stops the thread and
/// flushes what is left.
///
/// ```
/// use sam_capture::capture::{BackgroundCapturer, Capture, CaptureConfig, Capturer};
/// use sam_store::prelude::*;
/// use sam_store::{Filter, SqliteStore};
///
/// let dir = tempfile::tempdir()?;
/// let db = dir.path().join("store.db");
/// let cfg = CaptureConfig { max_age_ms: 50, spool: Some(dir.path().join("spool.jsonl")), ..Default::default() };
/// let cap = BackgroundCapturer::start(Capturer::new(SqliteStore::open(&db)?, Default::default(), cfg));
/// cap.capture(Capture::Feedback { prompt: "Undo a git add?".into(), response: "`git restore --staged FILE`".into() })?;
/// // No further call: the background thread flushes it; another connection sees it.
/// let reader = SqliteStore::open(&db)?;
/// let t = std::time::Instant::now();
/// while reader.count(&Filter::default())? == 0 && t.elapsed().as_secs() < 10 {
///     std::thread::sleep(std::time::Duration::from_millis(20));
/// }
/// assert_eq!(reader.count(&Filter::default())?, 1);
/// assert_eq!(cap.pending(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BackgroundCapturer<S: Store + Send + 'static> {
    inner: std::sync::Arc<std::sync::Mutex<Capturer<S>>>,
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S: Store + Send + 'static> std::fmt::Debug for BackgroundCapturer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundCapturer").finish_non_exhaustive()
    }
}

impl<S: Store + Send + 'static> BackgroundCapturer<S> {
    /// Start the flushing thread; it checks every half `max_age_ms`.
    pub fn start(capturer: Capturer<S>) -> Self {
        let every = Duration::from_millis((capturer.cfg.max_age_ms / 2).max(10));
        let inner = std::sync::Arc::new(std::sync::Mutex::new(capturer));
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (inner2, stop2) = (inner.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (lock, cvar) = &*stop2;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                stopped = cvar.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner()).0;
                // A failing tick keeps its buffer or spool; the next one retries.
                let _ = inner2.lock().unwrap_or_else(|e| e.into_inner()).tick();
            }
        });
        Self { inner, stop, thread: Some(thread) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Capturer<S>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Capture one event (see [`Capturer::capture`]).
    pub fn capture(&self, event: Capture) -> Result<Option<FlushReport>> {
        self.lock().capture(event)
    }

    /// Capture one event with its adapter version (see [`Capturer::capture_event`]).
    pub fn capture_event(&self, event: CaptureEvent) -> Result<Option<FlushReport>> {
        self.lock().capture_event(event)
    }

    /// Flush now (see [`Capturer::flush`]).
    pub fn flush(&self) -> Result<FlushReport> {
        self.lock().flush()
    }

    /// Examples buffered, not yet flushed.
    pub fn pending(&self) -> usize {
        self.lock().pending()
    }
}

impl<S: Store + Send + 'static> Drop for BackgroundCapturer<S> {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The inner Capturer flushes on its own drop.
    }
}
