//! `GET /v1/runs`, `/v1/runs/{id}` and `/v1/runs/{id}/events`: training
//! runs as their folders (sam-runs' [`RunDir`]) hold them, pipeline runs as
//! their events tell them ([`crate::pipeline`]), and a running one of
//! either followed live as server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use sam_runs::{MetricRecord, RunDir, RunStatus, StatusFile};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::pipeline::{PipelineDetail, PipelineSummary};
use crate::{AppState, blocking};

/// A run at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    /// The run's id (its folder name under `runs/`).
    pub id: String,
    /// `queued`, `running`, `paused`, `completed`, `failed` or `stopped`.
    pub status: String,
    /// Why it failed or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The phase of the last metric (`sft`, `dpo`).
    pub phase: Option<String>,
    /// Last finished optimiser step of the current phase.
    pub step: u64,
    /// Steps planned in the current phase.
    pub total_steps: u64,
    /// Unix seconds of the last status update.
    pub updated_at: u64,
    /// The last training loss.
    pub train_loss: Option<f64>,
    /// The best validation loss of the current phase.
    pub best_val_loss: Option<f64>,
    /// Trained tokens per second over the last step.
    pub tokens_per_sec: Option<f64>,
    /// Seconds left in the current phase, while the run is running.
    pub eta_s: Option<f64>,
}

/// A run in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// `config.json`: the configuration it was started with.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Every line of `metrics.jsonl` (`step`, `phase`, `train_loss`,
    /// `val_loss`, `lr`, `tokens_per_sec`, `elapsed_s`, `eta_s`, …).
    #[schema(value_type = Vec<Object>)]
    pub metrics: Vec<MetricRecord>,
    /// Every line of `events.jsonl` (`time`, `kind`, `step`, `message`).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<sam_runs::Event>,
    /// `eval.json`, once the run was evaluated.
    #[schema(value_type = Option<Object>)]
    pub eval: Option<Value>,
}

/// `GET /v1/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunsResponse {
    /// Every training run, newest first.
    pub runs: Vec<RunSummary>,
    /// Every pipeline run (`sam run`, the scheduler), newest first; its
    /// `train_run` is one of `runs`.
    pub pipelines: Vec<PipelineSummary>,
}

/// `GET /v1/runs/{id}`: a training run or a pipeline run (which has
/// `"kind": "pipeline"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RunInfo {
    /// A training run's folder.
    Training(Box<RunDetail>),
    /// A pipeline run's events.
    Pipeline(Box<PipelineDetail>),
}

/// Summarise a run from its status and metrics.
pub(crate) fn summarize(run: &RunDir, status: &StatusFile, metrics: &[MetricRecord]) -> RunSummary {
    let phase = metrics.last().and_then(|m| m.phase.clone());
    let current = || metrics.iter().rev().take_while(|m| m.phase == phase);
    let last_train = current().find(|m| m.train_loss.is_some());
    let best_val_loss = current().filter_map(|m| m.val_loss).filter(|v| v.is_finite()).reduce(f64::min);
    let eta_s = matches!(status.status, RunStatus::Running)
        .then(|| last_train.and_then(|m| m.extra.get("eta_s")).and_then(Value::as_f64))
        .flatten();
    RunSummary {
        id: run.id().to_string(),
        status: status.status.as_str().to_string(),
        reason: status.reason.clone(),
        phase,
        step: status.step,
        total_steps: status.total_steps,
        updated_at: status.updated_at,
        train_loss: last_train.and_then(|m| m.train_loss),
        best_val_loss,
        tokens_per_sec: last_train.and_then(|m| m.tokens_per_sec),
        eta_s,
    }
}

/// A run id as a file name (no path tricks).
fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(ApiError::invalid_field("id", "not a run id (letters, digits, '-', '_' and '.')")) }
}

/// What `id` names: a training run's folder, else a pipeline run.
enum Found {
    Run(RunDir),
    Pipeline,
}

fn find(s: &AppState, id: &str) -> Result<Found, ApiError> {
    check_id(id)?;
    if let Ok(run) = RunDir::open(s.runs.join(id)) {
        return Ok(Found::Run(run));
    }
    if crate::pipeline::exists(&s.home, id) {
        return Ok(Found::Pipeline);
    }
    Err(ApiError::not_found(format!("no training or pipeline run {id:?} (GET /v1/runs lists them)")).with_field("id"))
}

/// Every run with its metrics, newest first (for the dashboard too).
pub(crate) fn all(root: &Path) -> Result<Vec<(RunSummary, Vec<MetricRecord>)>, ApiError> {
    let mut out = Vec::new();
    for run in RunDir::list(root)?.into_iter().rev() {
        // A run being created or deleted meanwhile is skipped, not an error.
        let Ok(status) = run.status() else { continue };
        let metrics = run.metrics().unwrap_or_default();
        out.push((summarize(&run, &status, &metrics), metrics));
    }
    Ok(out)
}

/// Training runs and pipeline runs, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", responses((status = 200, body = RunsResponse)))]
pub(crate) async fn list(State(s): State<Arc<AppState>>) -> Result<Json<RunsResponse>, ApiError> {
    let (root, home) = (s.runs.clone(), s.home.clone());
    let (runs, pipelines) = blocking(move || Ok((all(&root)?, crate::pipeline::all(&home, None)?))).await?;
    Ok(Json(RunsResponse { runs: runs.into_iter().map(|(s, _)| s).collect(), pipelines }))
}

/// One run: a training run's configuration, every metric and event,
/// evaluation and ETA; or a pipeline run's stages, training progress, ETA
/// and every event.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, body = RunInfo),
        (status = 400, description = "Not a run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    State(s): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let detail = blocking(move || match find(&s, &id)? {
        Found::Pipeline => Ok(RunInfo::Pipeline(Box::new(crate::pipeline::detail(&s.home, &id)?))),
        Found::Run(run) => {
            let status = run.status()?;
            let metrics = run.metrics()?;
            let eval = std::fs::read_to_string(run.eval_path()).ok().and_then(|t| serde_json::from_str(&t).ok());
            Ok(RunInfo::Training(Box::new(RunDetail {
                summary: summarize(&run, &status, &metrics),
                config: run.config().unwrap_or(Value::Null),
                events: run.events()?,
                metrics,
                eval,
            })))
        }
    })
    .await?;
    Ok(Json(detail))
}

/// The run as server-sent events, live.
///
/// A training run's event types: `status` (a [`RunSummary`], sent first and
/// whenever `status.json` changes), `metric` (a line of `metrics.jsonl`),
/// `event` (a line of `events.jsonl`), `reset` (the metrics were rewritten
/// on resume: forget them; they follow again). A pipeline run's: `status`
/// (a [`PipelineSummary`], first and whenever it moves: stage, step, loss,
/// ETA) and `pipeline` (each of its typed events as the pipeline wrote it,
/// tagged by `event`: `stage_started`, `train_step`, `finished`, …). Both
/// end with `end` (the run is over; the stream closes). The whole history
/// is replayed first, so a client that connects late or reconnects sees
/// everything.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "`text/event-stream`: status, metric, event, reset, pipeline and end events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(s): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let source = match find(&s, &id)? {
        Found::Run(run) => Source::Run(Box::new(RunFollow::new(run))),
        Found::Pipeline => Source::Pipeline(Box::new(crate::pipeline::Follow::new(s.home.clone(), &id))),
    };
    let follow = Follow::new(source, Duration::from_millis(s.cfg.sse_poll_ms.max(20)), s.shutdown.clone());
    let stream = futures_util::stream::unfold(follow, |mut f| async move { f.next().await.map(|e| (Ok(e), f)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What a live stream reads: a training run's folder or a pipeline run's
/// events file.
enum Source {
    Run(Box<RunFollow>),
    Pipeline(Box<crate::pipeline::Follow>),
}

/// Follows a run, queueing server-sent events.
struct Follow {
    source: Source,
    queue: VecDeque<SseEvent>,
    done: bool,
    poll: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Follow {
    fn new(source: Source, poll: Duration, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        Follow { source, queue: VecDeque::new(), done: false, poll, shutdown }
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            let over = match &mut self.source {
                Source::Run(r) => r.scan(&mut self.queue),
                Source::Pipeline(p) => p.scan(&mut self.queue),
            };
            if !self.queue.is_empty() {
                continue;
            }
            if over {
                self.done = true;
                self.queue.push_back(SseEvent::default().event("end").data("{}"));
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.shutdown.changed() => self.done = true,
            }
        }
    }
}

/// Reads a run folder's files as they grow.
struct RunFollow {
    run: RunDir,
    metrics: Tail,
    events: Tail,
    seen: Vec<MetricRecord>,
    status: Option<StatusFile>,
}

impl RunFollow {
    fn new(run: RunDir) -> Self {
        let (metrics, events) = (Tail::new(run.metrics_path()), Tail::new(run.events_path()));
        RunFollow { run, metrics, events, seen: Vec::new(), status: None }
    }

    /// Queue what is new; true when the run is over and everything is sent.
    fn scan(&mut self, queue: &mut VecDeque<SseEvent>) -> bool {
        let status = self.run.status().ok();
        let (lines, reset) = self.metrics.read();
        if reset {
            self.seen.clear();
            queue.push_back(SseEvent::default().event("reset").data("{}"));
        }
        let mut new_metric = false;
        for line in lines {
            if let Ok(m) = serde_json::from_str::<MetricRecord>(&line) {
                queue.push_back(SseEvent::default().event("metric").data(line));
                self.seen.push(m);
                new_metric = true;
            }
        }
        for line in self.events.read().0 {
            if serde_json::from_str::<Value>(&line).is_ok() {
                queue.push_back(SseEvent::default().event("event").data(line));
            }
        }
        if let Some(st) = &status
            && (self.status.as_ref() != Some(st) || new_metric)
        {
            let summary = summarize(&self.run, st, &self.seen);
            let data = serde_json::to_string(&summary).unwrap_or_default();
            // The status goes first, so a client shows where the run is
            // before the history streams in.
            if self.status.is_none() {
                queue.push_front(SseEvent::default().event("status").data(data));
            } else {
                queue.push_back(SseEvent::default().event("status").data(data));
            }
            self.status = Some(st.clone());
        }
        status.is_some_and(|s| s.status.is_final()) && queue.is_empty()
    }
}

/// The complete lines appended to a file since the last read (sam-home's
/// [`Tail`](sam_home::atomic::Tail)), and whether the file was rewritten
/// shorter meanwhile (a resume drops the steps it redoes).
struct Tail {
    tail: sam_home::atomic::Tail,
    lines: usize,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail { tail: sam_home::atomic::Tail::new(path), lines: 0 }
    }

    fn read(&mut self) -> (Vec<String>, bool) {
        let new = self.tail.read_new().unwrap_or_default();
        // Line numbers start again at 1 after a rewrite.
        let reset = new.first().is_some_and(|(n, _)| *n <= self.lines);
        if let Some((n, _)) = new.last() {
            self.lines = *n;
        }
        (new.into_iter().map(|(_, l)| l).collect(), reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_reads_complete_lines_and_sees_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut t = Tail::new(path.clone());
        assert_eq!(t.read(), (vec![], false));
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        assert_eq!(t.read(), (vec!["{\"step\":1}".to_string(), "{\"step\":2}".to_string()], false));
        assert_eq!(t.read(), (vec![], false), "the torn line waits for its newline");
        std::fs::write(&path, "{\"step\":1}\n").unwrap();
        assert_eq!(t.read(), (vec!["{\"step\":1}".to_string()], true));
    }
}
