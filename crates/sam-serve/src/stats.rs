//! `GET /v1/stats`, `/v1/stats/daily`, `/v1/stats/sources`: the store's
//! figures, cached for `[serve] stats_cache_s` (5 minutes) and recomputed at
//! once after this server commits a capture. Aggregates only: no example
//! text, so no token needed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use sam_store::Stats;
use sam_store::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::{AppState, blocking};

/// The cached figures and what they were computed from.
pub(crate) struct Cached {
    at: Instant,
    generation: u64,
    stats: Arc<Stats>,
}

/// The store's statistics, from the cache when it is fresh.
pub(crate) async fn current(state: &Arc<AppState>) -> Result<Arc<Stats>, ApiError> {
    let ttl = Duration::from_secs(state.cfg.stats_cache_s);
    let generation = state.generation.load(Ordering::SeqCst);
    {
        let cache = state.stats_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.generation == generation && c.at.elapsed() < ttl) {
            return Ok(c.stats.clone());
        }
    }
    let s = state.clone();
    let stats = blocking(move || Ok(s.reader.lock().unwrap_or_else(|e| e.into_inner()).stats()?)).await?;
    let stats = Arc::new(stats);
    *state.stats_cache.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Cached { at: Instant::now(), generation, stats: stats.clone() });
    Ok(stats)
}

/// A count of examples under a name (a tier, a kind, a source, a domain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Count {
    /// The tier, kind, source or domain.
    pub name: String,
    /// Examples stored under it.
    pub examples: u64,
}

/// `GET /v1/stats`: totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatsResponse {
    /// Examples stored.
    pub total: u64,
    /// Examples validated at least once.
    pub validated: u64,
    /// Per tier, best first (gold, silver, bronze, unverified).
    pub by_tier: Vec<Count>,
    /// Per kind (instruction, chat, preference, completion, prompt_completion).
    pub by_kind: Vec<Count>,
    /// Per source, most examples first.
    pub by_source: Vec<Count>,
    /// Per domain, most examples first.
    pub by_domain: Vec<Count>,
    /// Lines in quarantine.
    pub quarantined: u64,
    /// Exports written.
    pub exports: u64,
    /// Training runs the home knows: its run folders, the runs `GET
    /// /v1/runs` and `sam runs list` list (also those trained while the
    /// home had no store yet).
    pub training_runs: u64,
    /// When the figures were computed (Unix seconds).
    pub computed_at: i64,
}

impl From<&Stats> for StatsResponse {
    fn from(s: &Stats) -> Self {
        let mut by_source: Vec<Count> =
            s.sources.iter().map(|h| Count { name: h.source.clone(), examples: h.examples }).collect();
        by_source.sort_by(|a, b| b.examples.cmp(&a.examples).then_with(|| a.name.cmp(&b.name)));
        StatsResponse {
            total: s.total,
            validated: s.validated,
            by_tier: s.by_tier.iter().map(|(t, n)| Count { name: t.as_str().into(), examples: *n }).collect(),
            by_kind: s.by_kind.iter().map(|(k, n)| Count { name: k.as_str().into(), examples: *n }).collect(),
            by_source,
            by_domain: s.by_domain.iter().map(|(d, n)| Count { name: d.clone(), examples: *n }).collect(),
            quarantined: s.quarantined,
            exports: s.exports,
            training_runs: s.training_runs,
            computed_at: s.computed_at,
        }
    }
}

/// Examples of one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Examples from that day (by their own time, else when they were stored).
    pub examples: u64,
}

/// `GET /v1/stats/daily`: the daily trend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DailyResponse {
    /// The last 30 days that have examples, oldest first.
    pub days: Vec<Day>,
    /// When the figures were computed (Unix seconds).
    pub computed_at: i64,
}

/// How well one source feeds the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourceHealth {
    /// The source (`git`, `docs`, `code`, `escalation`, `feedback`, …).
    pub source: String,
    /// Examples it has in the store now.
    pub examples: u64,
    /// Examples it offered that were new, over all time.
    pub inserted: u64,
    /// Examples it offered that were already stored.
    pub duplicates: u64,
    /// Examples it offered that failed basic validity.
    pub rejected: u64,
    /// Mean quality score (0–1) of its validated examples.
    pub mean_quality: Option<f64>,
    /// Share (0–1) of its validated examples in gold or silver.
    pub good_share: Option<f64>,
    /// 0–100: mean quality × share of its offers that were valid; null until
    /// some of its examples are validated.
    pub health: Option<f64>,
}

/// `GET /v1/stats/sources`: per-source health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourcesResponse {
    /// Every source, by name.
    pub sources: Vec<SourceHealth>,
    /// When the figures were computed (Unix seconds).
    pub computed_at: i64,
}

impl From<&sam_store::SourceHealth> for SourceHealth {
    fn from(h: &sam_store::SourceHealth) -> Self {
        SourceHealth {
            source: h.source.clone(),
            examples: h.examples,
            inserted: h.inserted,
            duplicates: h.duplicates,
            rejected: h.rejected,
            mean_quality: h.mean_quality,
            good_share: h.good_share,
            health: h.health,
        }
    }
}

/// Totals by tier, kind, source and domain.
#[utoipa::path(
    get, path = "/v1/stats", tag = "stats",
    responses((status = 200, body = StatsResponse), (status = 503, description = "The store is busy", body = ErrorBody))
)]
pub(crate) async fn totals(State(s): State<Arc<AppState>>) -> Result<Json<StatsResponse>, ApiError> {
    let mut totals = StatsResponse::from(current(&s).await?.as_ref());
    let root = s.runs.clone();
    totals.training_runs = blocking(move || Ok(crate::runs::all(&root)?.len() as u64)).await?;
    Ok(Json(totals))
}

/// Examples per day over the last 30 days that have any.
#[utoipa::path(
    get, path = "/v1/stats/daily", tag = "stats",
    responses((status = 200, body = DailyResponse), (status = 503, description = "The store is busy", body = ErrorBody))
)]
pub(crate) async fn daily(State(s): State<Arc<AppState>>) -> Result<Json<DailyResponse>, ApiError> {
    let st = current(&s).await?;
    let days = st.daily.iter().map(|d| Day { day: d.day.clone(), examples: d.examples }).collect();
    Ok(Json(DailyResponse { days, computed_at: st.computed_at }))
}

/// The health of each source.
#[utoipa::path(
    get, path = "/v1/stats/sources", tag = "stats",
    responses((status = 200, body = SourcesResponse), (status = 503, description = "The store is busy", body = ErrorBody))
)]
pub(crate) async fn sources(State(s): State<Arc<AppState>>) -> Result<Json<SourcesResponse>, ApiError> {
    let st = current(&s).await?;
    Ok(Json(SourcesResponse {
        sources: st.sources.iter().map(SourceHealth::from).collect(),
        computed_at: st.computed_at,
    }))
}
