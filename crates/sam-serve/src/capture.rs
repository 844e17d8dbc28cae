//! `POST /v1/capture/{kind}`: the running assistant's events, through the
//! same [`Capturer`] as the library (redaction, scoring, the spool).
//!
//! **A 2xx means durable.** Every capture request waits until its example
//! is committed to the store, or appended and fsynced to the spool when the
//! store cannot be written, before it is answered; a process killed right
//! after the answer loses nothing. To keep that affordable under load, the
//! writer thread commits in groups: it takes every request queued while the
//! previous commit ran (up to `[capture] max_batch`), captures them, flushes
//! once, and then answers them all. One client alone pays one transaction
//! per capture; sixteen concurrent clients share one transaction per group.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sam_capture::CaptureError;
use sam_capture::capture::{Capture, CaptureEvent, Capturer};
use sam_store::SqliteStore;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::AppState;
use crate::body::ApiJson;
use crate::error::{ApiError, ErrorBody};

/// Where an acknowledged capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Committed to the store.
    Store,
    /// The store could not be written (another process held its lock past
    /// the capture busy timeout, the disk is read-only): appended to the
    /// fsynced spool, from which the next write drains it into the store.
    Spool,
}

/// The answer to an accepted capture (status 201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CaptureAck {
    /// The event kind (`escalation`, `correction`, `preference`, `feedback`,
    /// `distill`).
    pub kind: String,
    /// Where the capture is now; either way it survives a crash.
    pub durable_in: Durability,
    /// What redaction replaced in it, by kind (`email`, `aws_key`, …).
    pub redacted: BTreeMap<String, usize>,
    /// Captures committed in the same transaction as this one.
    pub batch: usize,
}

/// `POST /v1/capture/escalation`: the local model could not answer; a
/// remote one did. With `local` it becomes a preference pair (remote
/// chosen over local), otherwise a chat example of the remote answer.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationCapture {
    /// The user's request.
    pub prompt: String,
    /// The local model's attempt, if it made one.
    #[serde(default)]
    pub local: Option<String>,
    /// The remote model's answer.
    pub remote: String,
    /// The remote model's name.
    #[serde(default)]
    pub model: Option<String>,
    /// The adapter version that gave the local answer (`version` from
    /// `GET /v1/deploy/{slot}`), so that canary decisions can count it.
    #[serde(default)]
    pub adapter_version: Option<String>,
}

/// `POST /v1/capture/correction`: the user corrected a wrong answer (a
/// preference pair: the correction chosen over the wrong answer).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectionCapture {
    /// The user's request.
    pub prompt: String,
    /// The wrong answer.
    pub wrong: String,
    /// The user's correction.
    pub correction: String,
    /// The adapter version that gave the local answer (`version` from
    /// `GET /v1/deploy/{slot}`), so that canary decisions can count it.
    #[serde(default)]
    pub adapter_version: Option<String>,
}

/// `POST /v1/capture/preference`: the user preferred one answer over another.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferenceCapture {
    /// The user's request.
    pub prompt: String,
    /// The preferred answer.
    pub chosen: String,
    /// The other answer.
    pub rejected: String,
}

/// `POST /v1/capture/feedback`: the user rated an answer good.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackCapture {
    /// The user's request.
    pub prompt: String,
    /// The answer rated good.
    pub response: String,
    /// The adapter version that gave the local answer (`version` from
    /// `GET /v1/deploy/{slot}`), so that canary decisions can count it.
    #[serde(default)]
    pub adapter_version: Option<String>,
}

/// `POST /v1/capture/distill`: a larger model's answer, kept to teach the
/// local one.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillCapture {
    /// The user's request.
    pub prompt: String,
    /// The teacher's answer.
    pub response: String,
    /// A system prompt the teacher had.
    #[serde(default)]
    pub system: Option<String>,
    /// The teacher's name.
    #[serde(default)]
    pub model: Option<String>,
}

fn required(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() { Err(ApiError::invalid_field(field, "must not be empty")) } else { Ok(()) }
}

impl TryFrom<EscalationCapture> for CaptureEvent {
    type Error = ApiError;
    fn try_from(r: EscalationCapture) -> Result<CaptureEvent, ApiError> {
        required("prompt", &r.prompt)?;
        required("remote", &r.remote)?;
        let event = Capture::Escalation { prompt: r.prompt, local: r.local, remote: r.remote, model: r.model };
        Ok(CaptureEvent { event, adapter_version: r.adapter_version })
    }
}

impl TryFrom<CorrectionCapture> for CaptureEvent {
    type Error = ApiError;
    fn try_from(r: CorrectionCapture) -> Result<CaptureEvent, ApiError> {
        required("prompt", &r.prompt)?;
        required("wrong", &r.wrong)?;
        required("correction", &r.correction)?;
        let event = Capture::Correction { prompt: r.prompt, wrong: r.wrong, correction: r.correction };
        Ok(CaptureEvent { event, adapter_version: r.adapter_version })
    }
}

impl TryFrom<PreferenceCapture> for CaptureEvent {
    type Error = ApiError;
    fn try_from(r: PreferenceCapture) -> Result<CaptureEvent, ApiError> {
        required("prompt", &r.prompt)?;
        required("chosen", &r.chosen)?;
        required("rejected", &r.rejected)?;
        Ok(Capture::Preference { prompt: r.prompt, chosen: r.chosen, rejected: r.rejected }.into())
    }
}

impl TryFrom<FeedbackCapture> for CaptureEvent {
    type Error = ApiError;
    fn try_from(r: FeedbackCapture) -> Result<CaptureEvent, ApiError> {
        required("prompt", &r.prompt)?;
        required("response", &r.response)?;
        let event = Capture::Feedback { prompt: r.prompt, response: r.response };
        Ok(CaptureEvent { event, adapter_version: r.adapter_version })
    }
}

impl TryFrom<DistillCapture> for CaptureEvent {
    type Error = ApiError;
    fn try_from(r: DistillCapture) -> Result<CaptureEvent, ApiError> {
        required("prompt", &r.prompt)?;
        required("response", &r.response)?;
        Ok(Capture::Distill { prompt: r.prompt, response: r.response, system: r.system, model: r.model }.into())
    }
}

type Reply = oneshot::Sender<Result<CaptureAck, ApiError>>;

/// The thread that owns the [`Capturer`] and commits captures in groups.
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<(CaptureEvent, Reply)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Start the writer thread. `generation` is bumped after every commit
    /// (the statistics cache compares it).
    pub(crate) fn start(mut cap: Capturer<SqliteStore>, max_batch: usize, generation: Arc<AtomicU64>) -> Writer {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<(CaptureEvent, Reply)>(max_batch.max(64) * 4);
        let thread = std::thread::Builder::new()
            .name("sam-serve-writer".into())
            .spawn(move || {
                // Drain what an earlier run left in the spool (captures
                // spooled while the store was busy) before anything new.
                if cap.flush().is_ok_and(|r| r.drained > 0) {
                    generation.fetch_add(1, Ordering::SeqCst);
                }
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < max_batch {
                        match rx.try_recv() {
                            Ok(m) => group.push(m),
                            Err(_) => break,
                        }
                    }
                    commit(&mut cap, group, &generation);
                }
                // Everything acknowledged was flushed already; this flushes
                // nothing unless a failed flush left a buffer behind.
                let _ = cap.flush();
            })
            .expect("the writer thread starts");
        Writer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// Capture one event and wait until it is durable.
    pub(crate) async fn submit(&self, event: CaptureEvent) -> Result<CaptureAck, ApiError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let tx = tx.ok_or_else(|| ApiError::unavailable("the server is shutting down"))?;
        let (reply, answer) = oneshot::channel();
        tx.send((event, reply)).await.map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        answer.await.map_err(|_| ApiError::internal("the capture writer stopped"))?
    }

    /// Stop taking captures, let the thread finish those queued, and wait
    /// for it.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Capture a group, flush it once, answer every request in it.
fn commit(cap: &mut Capturer<SqliteStore>, group: Vec<(CaptureEvent, Reply)>, generation: &AtomicU64) {
    let mut waiting = Vec::with_capacity(group.len());
    for (event, reply) in group {
        let kind = event.event.kind();
        let before = cap.redacted().counts.clone();
        match cap.capture_event(event) {
            Ok(_) => {
                let mut redacted = BTreeMap::new();
                for (k, n) in &cap.redacted().counts {
                    let d = n - before.get(k).copied().unwrap_or(0);
                    if d > 0 {
                        redacted.insert(k.as_str().to_string(), d);
                    }
                }
                waiting.push((reply, kind, redacted));
            }
            Err(CaptureError::Invalid(msg)) => {
                let _ = reply.send(Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", msg)));
            }
            Err(e) => {
                let _ = reply.send(Err(ApiError::internal(e.to_string())));
            }
        }
    }
    if waiting.is_empty() {
        return;
    }
    let batch = waiting.len();
    match cap.flush() {
        Ok(report) => {
            generation.fetch_add(1, Ordering::SeqCst);
            let durable_in = if report.error.is_some() { Durability::Spool } else { Durability::Store };
            if let Some(err) = &report.error {
                tracing::warn!(spooled = report.spooled, "store not writable, captures spooled: {err}");
            }
            for (reply, kind, redacted) in waiting {
                let _ = reply.send(Ok(CaptureAck { kind: kind.into(), durable_in, redacted, batch }));
            }
        }
        Err(e) => {
            for (reply, ..) in waiting {
                let _ = reply.send(Err(ApiError::unavailable(format!(
                    "the capture could be written neither to the store nor to the spool: {e}"
                ))));
            }
        }
    }
}

async fn accept(
    state: &AppState,
    event: Result<CaptureEvent, ApiError>,
) -> Result<(StatusCode, Json<CaptureAck>), ApiError> {
    let ack = state.writer.submit(event?).await?;
    Ok((StatusCode::CREATED, Json(ack)))
}

/// The answers of every capture route.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document, never built
pub(crate) enum CaptureResponses {
    /// Durable: in the store, or in the fsynced spool.
    #[response(status = 201)]
    Created(CaptureAck),
    /// A field is missing, unknown, empty or of the wrong type, or the body is not JSON.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No bearer token, or a wrong one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The body is over the size limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not declared as JSON.
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// Neither the store nor the spool could be written; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// One capture route: the request type, converted into a [`CaptureEvent`].
macro_rules! capture_route {
    ($(#[doc = $doc:literal])* $name:ident, $path:literal, $req:ident) => {
        $(#[doc = $doc])*
        #[utoipa::path(
            post, path = $path, tag = "capture", request_body = $req,
            security(("bearer" = [])), responses(CaptureResponses)
        )]
        pub(crate) async fn $name(
            State(s): State<Arc<AppState>>,
            ApiJson(r): ApiJson<$req>,
        ) -> Result<(StatusCode, Json<CaptureAck>), ApiError> {
            accept(&s, r.try_into()).await
        }
    };
}

capture_route!(
    /// Capture an escalation to a remote model.
    escalation, "/v1/capture/escalation", EscalationCapture
);
capture_route!(
    /// Capture a user's correction.
    correction, "/v1/capture/correction", CorrectionCapture
);
capture_route!(
    /// Capture a preferred answer.
    preference, "/v1/capture/preference", PreferenceCapture
);
capture_route!(
    /// Capture positive feedback on an answer.
    feedback, "/v1/capture/feedback", FeedbackCapture
);
capture_route!(
    /// Capture a larger model's answer (distillation).
    distill, "/v1/capture/distill", DistillCapture
);
