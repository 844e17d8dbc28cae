//! Pipeline runs (`sam run`, the scheduler's trigger): sam-pipeline's state
//! and history name them, and each run's typed [`Event`]s, read with
//! [`EventReader`], say where it is. `GET /v1/runs` lists them beside the
//! training runs, `GET /v1/runs/{id}` shows one, and
//! `GET /v1/runs/{id}/events` follows a running one live.

use std::collections::VecDeque;

use axum::response::sse::Event as SseEvent;
use sam_home::SamHome;
use sam_pipeline::{Event, EventReader, PipelineState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

/// A pipeline run at a glance, as its events tell it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineSummary {
    /// Always `pipeline` (training runs have no `kind`).
    pub kind: String,
    /// The pipeline run's id.
    pub id: String,
    /// `running`; `failed` (a stage failed: `sam run` continues the run);
    /// or how it ended: `trained`, `nothing_new`.
    pub status: String,
    /// Its stages, in order.
    pub stages: Vec<String>,
    /// The stages finished so far, with their wall seconds.
    pub finished: Vec<StageTime>,
    /// The stage running (or the one that failed).
    pub stage: Option<String>,
    /// Why the stage failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The training run the train stage runs (a `/v1/runs/{id}` too).
    pub train_run: Option<String>,
    /// The training phase (`sft`, `dpo`) while or after the train stage.
    pub phase: Option<String>,
    /// Last finished optimiser step of that phase.
    pub step: u64,
    /// Its steps in all.
    pub total_steps: u64,
    /// The last training loss.
    pub train_loss: Option<f64>,
    /// The last validation loss.
    pub val_loss: Option<f64>,
    /// Trained tokens per second over the last step.
    pub tokens_per_sec: Option<f64>,
    /// Seconds left in the training phase, while it trains (its mean step
    /// time so far times the steps left).
    pub eta_s: Option<f64>,
    /// Unix seconds it started, when the pipeline's state says.
    pub started_at: Option<u64>,
    /// Unix seconds its state was last written.
    pub updated_at: Option<u64>,
    /// Events read.
    pub events: u64,
}

/// A finished stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StageTime {
    /// The stage.
    pub stage: String,
    /// Wall seconds it took (in the invocation that ran it).
    pub seconds: f64,
}

/// A pipeline run in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: PipelineSummary,
    /// Every event of the run, as the pipeline wrote them (each with its
    /// `event` tag: `run_started`, `stage_started`, `train_step`, …).
    #[schema(value_type = Vec<Object>)]
    pub events_log: Vec<Value>,
}

impl PipelineSummary {
    fn new(id: &str) -> Self {
        PipelineSummary { kind: "pipeline".into(), id: id.into(), status: "running".into(), ..Default::default() }
    }

    /// Whether the run is over (finished, or stopped by a failed stage).
    pub(crate) fn is_final(&self) -> bool {
        self.status != "running"
    }

    /// Fold one event in.
    fn apply(&mut self, e: &Event) {
        self.events += 1;
        match e {
            Event::RunStarted { stages, .. } => {
                self.stages = stages.clone();
                self.status = "running".into();
                self.error = None;
            }
            Event::StageStarted { stage, .. } => self.stage = Some(stage.clone()),
            Event::StageFinished { stage, output, seconds, .. } => {
                self.finished.retain(|s| &s.stage != stage);
                self.finished.push(StageTime { stage: stage.clone(), seconds: *seconds });
                if let Some(id) = output.get("run_id").and_then(Value::as_str).filter(|_| stage == "train") {
                    self.train_run = Some(id.to_string());
                }
                self.eta_s = None;
            }
            Event::StageFailed { stage, error } => {
                self.stage = Some(stage.clone());
                self.error = Some(error.clone());
                self.status = "failed".into();
                self.eta_s = None;
            }
            Event::TrainPhase { phase, total_steps } => {
                self.phase = Some(phase.clone());
                self.total_steps = *total_steps as u64;
                self.step = 0;
                self.eta_s = None;
            }
            Event::TrainStep { phase, metrics: m } => {
                self.phase = Some(phase.clone());
                self.step = m.step as u64;
                self.total_steps = m.total_steps as u64;
                self.train_loss = Some(m.loss);
                self.tokens_per_sec = Some(m.tokens_per_s);
                let left = m.total_steps.saturating_sub(m.step) as f64;
                self.eta_s = (m.step > 0 && m.elapsed_s.is_finite()).then(|| m.elapsed_s / m.step as f64 * left);
            }
            Event::Validation { metrics, .. } => self.val_loss = Some(metrics.loss).filter(|l| l.is_finite()),
            Event::Warning(sam_pipeline::event::Warning::TrainingContinued { run_id }) => {
                self.train_run = Some(run_id.clone())
            }
            Event::Finished(summary) => {
                self.status = serde_json::to_value(summary.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "finished".into());
                if let Some(t) = &summary.train {
                    self.train_run = Some(t.run_id.clone());
                }
                self.stage = None;
                self.eta_s = None;
            }
            _ => {}
        }
    }

    /// What the pipeline's state adds: times, and the training run once
    /// the train stage has started one.
    fn with_state(&mut self, st: Option<&PipelineState>) {
        let Some(st) = st.filter(|s| s.id == self.id) else { return };
        self.started_at = Some(st.started_at);
        self.updated_at = Some(st.updated_at);
        if self.train_run.is_none() {
            self.train_run = st.marks.get("train.run_id").and_then(Value::as_str).map(str::to_string);
        }
    }
}

/// Whether `id` names a pipeline run under `home`.
pub(crate) fn exists(home: &SamHome, id: &str) -> bool {
    home.pipeline_events(id).is_file()
}

/// The ids of every pipeline run, newest first: the finished ones in the
/// history, and the one in progress (or last) in the state file.
fn ids(home: &SamHome) -> Result<(Vec<PipelineState>, Option<PipelineState>), ApiError> {
    let history = PipelineState::history(home).map_err(|e| ApiError::internal(e.to_string()))?;
    let current = PipelineState::load(home).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((history, current))
}

/// Read a run's events from the start: its summary and the events.
fn read(home: &SamHome, id: &str, states: &[&PipelineState]) -> Result<(PipelineSummary, Vec<Event>), ApiError> {
    let mut reader = EventReader::for_run(home, id);
    let events = reader.read_new().map_err(|e| ApiError::internal(e.to_string()))?;
    let mut s = PipelineSummary::new(id);
    for e in &events {
        s.apply(e);
    }
    for st in states {
        s.with_state(Some(st));
    }
    Ok((s, events))
}

/// The newest `limit` pipeline runs (every one with `None`), newest first
/// (for `/v1/runs` and the dashboard). A run whose events cannot be read is
/// listed with the reason as its error.
pub(crate) fn all(home: &SamHome, limit: Option<usize>) -> Result<Vec<PipelineSummary>, ApiError> {
    let (history, current) = ids(home)?;
    let mut states: Vec<&PipelineState> = history.iter().collect();
    if let Some(c) = &current
        && !states.iter().any(|s| s.id == c.id)
    {
        states.push(c);
    }
    states.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| b.id.cmp(&a.id)));
    let mut out = Vec::new();
    for st in states.into_iter().take(limit.unwrap_or(usize::MAX)) {
        let same: Vec<&PipelineState> = history.iter().chain(current.as_ref()).filter(|s| s.id == st.id).collect();
        match read(home, &st.id, &same) {
            Ok((s, _)) => out.push(s),
            Err(e) => {
                let mut s = PipelineSummary::new(&st.id);
                s.with_state(Some(st));
                s.status = "unreadable".into();
                s.error = Some(e.body.message);
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// One pipeline run with every event.
pub(crate) fn detail(home: &SamHome, id: &str) -> Result<PipelineDetail, ApiError> {
    let (history, current) = ids(home)?;
    let states: Vec<&PipelineState> = history.iter().chain(current.as_ref()).filter(|s| s.id == id).collect();
    let (summary, events) = read(home, id, &states)?;
    let events_log = events.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
    Ok(PipelineDetail { summary, events_log })
}

/// Follows a pipeline run's events file through sam-pipeline's
/// [`EventReader`].
pub(crate) struct Follow {
    home: SamHome,
    reader: EventReader,
    summary: PipelineSummary,
    sent: Option<PipelineSummary>,
}

impl Follow {
    pub(crate) fn new(home: SamHome, id: &str) -> Self {
        let reader = EventReader::for_run(&home, id);
        Follow { home, reader, summary: PipelineSummary::new(id), sent: None }
    }

    /// Queue what is new (`pipeline` events, then a `status` when the
    /// summary moved); true when the run is over.
    pub(crate) fn scan(&mut self, queue: &mut VecDeque<SseEvent>) -> bool {
        match self.reader.read_new() {
            Ok(events) => {
                for e in &events {
                    self.summary.apply(e);
                    if let Ok(data) = serde_json::to_string(e) {
                        queue.push_back(SseEvent::default().event("pipeline").data(data));
                    }
                }
            }
            Err(e) => {
                let body = serde_json::json!({ "error": "unreadable_event", "message": e.to_string() });
                queue.push_back(SseEvent::default().event("error").data(body.to_string()));
            }
        }
        if self.sent.as_ref() != Some(&self.summary) {
            let state = PipelineState::load(&self.home).ok().flatten();
            self.summary.with_state(state.as_ref());
            let data = serde_json::to_string(&self.summary).unwrap_or_default();
            // The status goes first, so a client shows where the run is
            // before the history streams in.
            if self.sent.is_none() {
                queue.push_front(SseEvent::default().event("status").data(data));
            } else {
                queue.push_back(SseEvent::default().event("status").data(data));
            }
            self.sent = Some(self.summary.clone());
        }
        self.summary.is_final()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_stage_ends_the_stream_and_a_continued_run_runs_again() {
        let mut s = PipelineSummary::new("p");
        let stages = vec!["prep".to_string(), "train".to_string()];
        s.apply(&Event::RunStarted { id: "p".into(), stages, resumed_at: None });
        s.apply(&Event::StageStarted { stage: "prep".into(), index: 0, total: 2 });
        assert!(!s.is_final());
        s.apply(&Event::StageFailed { stage: "prep".into(), error: "no examples".into() });
        assert!(s.is_final());
        assert_eq!((s.status.as_str(), s.error.as_deref()), ("failed", Some("no examples")));
        s.apply(&Event::RunStarted { id: "p".into(), stages: s.stages.clone(), resumed_at: Some("prep".into()) });
        assert_eq!((s.status.as_str(), s.error.as_deref()), ("running", None));
        s.apply(&Event::TrainPhase { phase: "sft".into(), total_steps: 10 });
        let metrics = sam_trainer::StepMetrics {
            step: 4,
            total_steps: 10,
            loss: 1.5,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 10,
            tokens_per_s: 5.0,
            step_s: 2.0,
            tokens_seen: 40,
            elapsed_s: 8.0,
        };
        s.apply(&Event::TrainStep { phase: "sft".into(), metrics });
        assert_eq!((s.step, s.total_steps, s.eta_s), (4, 10, Some(12.0)), "2 s a step, 6 to go");
    }
}
