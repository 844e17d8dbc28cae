//! The HTTP server of sam (`sam serve`): how a running assistant, in any
//! language, hands its captures to sam and follows what sam does with them.
//!
//! - [`Server`] binds (loopback only unless told otherwise), serves until a
//!   shutdown future resolves ([`shutdown_signal`]: SIGTERM or Ctrl-C), and
//!   finishes the requests in flight.
//! - The JSON API is versioned under `/v1` and described by an OpenAPI 3.1
//!   document generated from the handlers ([`openapi`], served at
//!   `/v1/openapi.json`): `POST /v1/capture/{escalation,correction,
//!   preference,feedback,distill}`, `GET /v1/examples`, `GET /v1/stats`,
//!   `/v1/stats/daily`, `/v1/stats/sources`, `GET /v1/runs`, `/v1/runs/{id}`,
//!   `/v1/runs/{id}/events` (server-sent events following a training run's
//!   folder or a pipeline run's typed events), `GET /v1/deploy`,
//!   `/v1/deploy/{slot}?key=K` (what to load, canary-aware),
//!   `/v1/deploy/{slot}/history`, `GET /healthz`.
//! - `GET /` is a dashboard: store totals, daily trend, source health,
//!   pipeline runs and training runs with their loss curves and ETAs, live;
//!   registry versions, aliases
//!   and the deployment history with its verdicts.
//! - [`Token`]: the bearer token, generated into a file of mode 0600, needed
//!   for every write and every route that returns example text, compared in
//!   constant time. Aggregate views need none.
//! - Every error is JSON ([`ErrorBody`]): a code, a message and the field at
//!   fault; bodies over [`ServeConfig::max_body_bytes`] get 413, unknown
//!   routes 404.
//!
//! Captures go through sam-capture's [`Capturer`](sam_capture::capture::Capturer)
//! — redaction, scoring, the spool — on one writer thread that commits
//! concurrent requests together; a `201` answer means the capture is in the
//! store or in the fsynced spool, so killing the server right after loses
//! nothing.
//!
//! ```no_run
//! use sam_serve::{ServeConfig, Server, Settings};
//!
//! let home = sam_home::SamHome::new("/tmp/sam-home");
//! let mut settings = Settings::new(&home);
//! settings.config = ServeConfig { port: 0, ..Default::default() }; // any free port
//! let server = Server::bind(settings, false)?;
//! println!("listening on {} (token in {})", server.url(), server.token().path().display());
//! server.run_blocking(sam_serve::shutdown_signal())?;
//! # Ok::<(), sam_serve::ServeError>(())
//! ```
//!
//! This crate only speaks HTTP over the others: it holds no capture, store
//! or training logic of its own.
#![deny(missing_docs)]

mod auth;
mod body;
mod capture;
mod chart;
mod dashboard;
mod deploy;
mod error;
mod examples;
mod pipeline;
mod runs;
mod stats;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use sam_capture::capture::{CaptureConfig, Capturer};
use sam_capture::{Pipeline, PipelineConfig};
use sam_store::{SqliteStore, StoreConfig};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Token;
pub use capture::{
    CaptureAck, CorrectionCapture, DistillCapture, Durability, EscalationCapture, FeedbackCapture, PreferenceCapture,
};
pub use deploy::{DeployResolution, HistoryResponse, SlotSummary, SlotsResponse, VerdictSummary, VersionSummary};
pub use error::{ApiError, ErrorBody, ServeError};
pub use examples::{ExamplesResponse, MAX_LIMIT};
pub use pipeline::{PipelineDetail, PipelineSummary, StageTime};
pub use runs::{RunDetail, RunInfo, RunSummary, RunsResponse};
pub use stats::{Count, DailyResponse, Day, SourceHealth, SourcesResponse, StatsResponse};

/// Settings of the server (`[serve]` in `sam.toml`).
///
/// Listening beyond loopback is deliberately not a setting: it takes
/// `--allow-remote` on the command line each time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The IP address to listen on.
    pub bind: String,
    /// The port (0: any free port).
    pub port: u16,
    /// Bodies over this many bytes are refused with 413.
    pub max_body_bytes: usize,
    /// How long the statistics are cached, in seconds (a capture committed
    /// by this server invalidates them at once).
    pub stats_cache_s: u64,
    /// How often a live event stream looks for new lines, in milliseconds.
    pub sse_poll_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { bind: "127.0.0.1".into(), port: 8765, max_body_bytes: 1 << 20, stats_cache_s: 300, sse_poll_ms: 500 }
    }
}

/// Everything the server reads and writes, and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server's own settings.
    pub config: ServeConfig,
    /// The store database.
    pub store: PathBuf,
    /// How to open it.
    pub store_config: StoreConfig,
    /// Live capture settings: `max_batch` bounds a group commit, and
    /// `busy_timeout_ms` is how long a commit waits for another process's
    /// write lock before it spools instead.
    pub capture: CaptureConfig,
    /// The capture spool (used instead of `capture.spool`).
    pub spool: PathBuf,
    /// Redaction, quality and domain settings of every capture.
    pub pipeline: PipelineConfig,
    /// The folder of training runs.
    pub runs: PathBuf,
    /// The adapter registry (sam-deploy's).
    pub registry: PathBuf,
    /// The token file (created, mode 0600, when missing).
    pub token: PathBuf,
    /// The home, for the pipeline's state, history and events files.
    pub home: sam_home::SamHome,
}

impl Settings {
    /// The files of `home` (store, spool, runs, registry, token) with every
    /// setting at its default; callers change what `sam.toml` says.
    pub fn new(home: &sam_home::SamHome) -> Settings {
        Settings {
            config: ServeConfig::default(),
            store: home.store_db(),
            store_config: StoreConfig::default(),
            capture: CaptureConfig::default(),
            spool: home.capture_spool(),
            pipeline: PipelineConfig::default(),
            runs: home.runs_dir(),
            registry: home.registry_dir(),
            token: home.serve_token(),
            home: home.clone(),
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    cfg: ServeConfig,
    token: Token,
    writer: capture::Writer,
    reader: Mutex<SqliteStore>,
    generation: Arc<AtomicU64>,
    stats_cache: Mutex<Option<stats::Cached>>,
    runs: PathBuf,
    registry: PathBuf,
    home: sam_home::SamHome,
    started: Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
    openapi: String,
}

impl AppState {
    fn open(s: Settings, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<AppState, ServeError> {
        let token = Token::load_or_create(&s.token)?;
        if let Some(dir) = s.store.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ServeError::io(dir, e))?;
        }
        // Captures must not stall the assistant: a short wait for another
        // process's lock, then the spool (as `sam capture` does).
        let write_cfg = StoreConfig { busy_timeout_ms: s.capture.busy_timeout_ms, ..s.store_config.clone() };
        let writer_store = SqliteStore::open_with(&s.store, &write_cfg)?;
        let reader = SqliteStore::open_with(&s.store, &s.store_config)?;
        // The writer decides when to flush (after each group), so the
        // capturer's own size and age triggers are off.
        let cap_cfg = CaptureConfig {
            max_batch: usize::MAX,
            max_age_ms: u64::MAX,
            spool: Some(s.spool.clone()),
            ..s.capture.clone()
        };
        let capturer = Capturer::new(writer_store, Pipeline::new(s.pipeline.clone()), cap_cfg);
        let generation = Arc::new(AtomicU64::new(0));
        let writer = capture::Writer::start(capturer, s.capture.max_batch, generation.clone());
        let openapi = openapi()
            .to_json()
            .map_err(|e| ServeError::Net { what: "openapi".into(), source: std::io::Error::other(e) })?;
        Ok(AppState {
            cfg: s.config,
            token,
            writer,
            reader: Mutex::new(reader),
            generation,
            stats_cache: Mutex::new(None),
            runs: s.runs,
            registry: s.registry,
            home: s.home,
            started: Instant::now(),
            shutdown,
            openapi,
        })
    }
}

/// Run blocking work (SQLite, file reads) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?
}

/// The API's routes with their OpenAPI descriptions.
fn api() -> OpenApiRouter<Arc<AppState>> {
    let protected = OpenApiRouter::new()
        .routes(routes!(capture::escalation))
        .routes(routes!(capture::correction))
        .routes(routes!(capture::preference))
        .routes(routes!(capture::feedback))
        .routes(routes!(capture::distill))
        .routes(routes!(examples::examples))
        .route_layer(middleware::from_fn(auth::require_token));
    let public = OpenApiRouter::new()
        .routes(routes!(stats::totals))
        .routes(routes!(stats::daily))
        .routes(routes!(stats::sources))
        .routes(routes!(runs::list))
        .routes(routes!(runs::show))
        .routes(routes!(runs::events))
        .routes(routes!(deploy::slots))
        .routes(routes!(deploy::resolve))
        .routes(routes!(deploy::history))
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(dashboard_page));
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(protected).merge(public)
}

/// The OpenAPI document of the API (what `/v1/openapi.json` serves).
///
/// ```
/// let doc = sam_serve::openapi();
/// assert!(doc.paths.paths.contains_key("/v1/capture/feedback"));
/// ```
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    let (api, _) = api().split_for_parts();
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(middleware::map_response(move |res: Response| async move { json_413(res, limit) }))
        .layer(Extension(state.token.clone()))
        .layer(Extension(body::BodyLimit(limit)))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// tower-http answers a declared oversize body itself, in plain text; make
/// it the same JSON as every other error.
fn json_413(res: Response, limit: usize) -> Response {
    let is_json =
        res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        ApiError::too_large(limit).into_response()
    } else {
        res
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let (method, path, t) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
    let res = next.run(req).await;
    tracing::debug!(%method, %path, status = res.status().as_u16(), ms = t.elapsed().as_millis() as u64, "request");
    res
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {} (the API is described at /v1/openapi.json)",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {} (see /v1/openapi.json)", req.method(), req.uri().path()),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sam",
        description = "sam's HTTP API: hand captures of a running assistant to sam, read the store's statistics, \
                       follow training and pipeline runs live. Every write and every route returning example text needs \
                       `Authorization: Bearer <token>` (the token is in SAM_HOME's server token file; \
                       `sam serve token` prints it). Errors are JSON: `{\"error\", \"message\", \"field\"}`."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "capture", description = "The assistant's events, redacted and stored; a 201 means durable"),
        (name = "examples", description = "Stored examples (needs the token)"),
        (name = "stats", description = "Store statistics, cached for 5 minutes, invalidated by captures"),
        (name = "runs", description = "Training runs and pipeline runs, and a running one live"),
        (name = "deploy", description = "The adapter registry: what to load, versions, aliases, history"),
        (name = "meta", description = "Health, this document and the dashboard"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let scheme =
            HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("the server's token file")).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the store cannot be read.
    pub status: String,
    /// The server's version.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// Why the store cannot be read, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the server is up and its store readable.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    responses((status = 200, body = Health), (status = 503, description = "The store cannot be read", body = Health))
)]
async fn health(State(s): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let uptime_s = s.started.elapsed().as_secs();
    let s2 = s.clone();
    let check =
        tokio::task::spawn_blocking(move || s2.reader.lock().unwrap_or_else(|e| e.into_inner()).schema_version()).await;
    let error = match check {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    let status = if error.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let health = Health {
        status: if error.is_none() { "ok" } else { "unavailable" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s,
        error,
    };
    (status, Json(health))
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
async fn openapi_json(State(s): State<Arc<AppState>>) -> Response {
    let mut res = s.openapi.clone().into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The dashboard (HTML with inline SVG charts; no token needed).
#[utoipa::path(
    get, path = "/", tag = "meta",
    responses((status = 200, description = "The dashboard", content_type = "text/html", body = String))
)]
async fn dashboard_page(state: State<Arc<AppState>>) -> axum::response::Html<String> {
    dashboard::page(state).await
}

/// A bound server, ready to run.
pub struct Server {
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Server {
    /// Open the store, load (or generate) the token, start the capture
    /// writer and bind `config.bind:config.port`. A non-loopback address is
    /// refused unless `allow_remote`.
    pub fn bind(settings: Settings, allow_remote: bool) -> Result<Server, ServeError> {
        let ip: IpAddr =
            settings.config.bind.trim().parse().map_err(|_| ServeError::BadAddress(settings.config.bind.clone()))?;
        if !ip.is_loopback() && !allow_remote {
            return Err(ServeError::NotLoopback(ip.to_string()));
        }
        let addr = SocketAddr::new(ip, settings.config.port);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(AppState::open(settings, rx)?);
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| ServeError::Net { what: format!("cannot listen on {addr}"), source: e })?;
        listener.set_nonblocking(true).map_err(|e| ServeError::Net { what: "listener".into(), source: e })?;
        Ok(Server { listener, state, shutdown: tx })
    }

    /// The address it listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// `http://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr())
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &Token {
        &self.state.token
    }

    /// Serve until `shutdown` resolves, then stop accepting, close the live
    /// event streams, finish the requests in flight and the captures queued.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let Server { listener, state, shutdown: tx } = self;
        let addr = listener.local_addr().ok();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| ServeError::Net { what: "listener".into(), source: e })?;
        let app = router(state.clone());
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = tx.send(true);
            })
            .await;
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || st.writer.close()).await;
        res.map_err(|e| ServeError::Net { what: format!("serving on {addr:?}"), source: e })
    }

    /// [`Server::run`] on a runtime of its own (for callers without one).
    pub fn run_blocking(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("sam-serve")
            .build()
            .map_err(|e| ServeError::Net { what: "cannot start the runtime".into(), source: e })?;
        rt.block_on(self.run(shutdown))
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
