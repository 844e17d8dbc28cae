//! `GET /v1/deploy`, `/v1/deploy/{slot}?key=K` and
//! `/v1/deploy/{slot}/history`: sam-deploy's registry as the running
//! assistant needs it — which adapter to load for a request (canary-aware,
//! sticky per key) — and as people read it: versions, aliases, every move
//! with its verdict. No example text, so no token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use sam_deploy::{HistoryEntry, Registry, Slot, VerdictRecord, Version};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::{AppState, blocking};

/// What to load for a request (`GET /v1/deploy/{slot}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeployResolution {
    /// The slot.
    pub slot: String,
    /// Why this adapter: `production`, `canary` (the key falls in the
    /// canary's share), or `base` (nothing in production).
    pub route: String,
    /// The version to tag answers with, and to send back as
    /// `adapter_version` with feedback (`base` for the base model alone).
    pub version: String,
    /// The adapter folder to load (PEFT layout); null: the base model alone.
    pub adapter_dir: Option<String>,
    /// The base model's path.
    pub base_model: String,
    /// The base model's name.
    pub base_id: String,
}

/// A registered version at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionSummary {
    /// Its id (12 hex digits).
    pub id: String,
    /// Registration order in the slot (1, 2, …).
    pub number: u64,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
    /// The training run it came from.
    pub run_id: Option<String>,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA modules.
    pub modules: usize,
    /// The aliases pointing at it (`production`, `canary`, `previous`, …).
    pub aliases: Vec<String>,
    /// Its latest verdict: passed or not, and the gate.
    pub verdict: Option<VerdictSummary>,
}

/// A verdict at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerdictSummary {
    /// Whether the version passed.
    pub pass: bool,
    /// The gate.
    pub gate: String,
    /// Against what (a version id, or `base`).
    pub against: String,
    /// When (Unix seconds).
    pub at: i64,
    /// The failing reasons in one line, or `passed`.
    pub summary: String,
}

/// A slot: its base model, aliases and versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlotSummary {
    /// The slot's name.
    pub name: String,
    /// The base model's name.
    pub base_id: String,
    /// Alias → version id.
    pub aliases: BTreeMap<String, String>,
    /// The canary's share of traffic, in percent, while there is one.
    pub canary_percent: Option<f64>,
    /// Every version, in registration order.
    pub versions: Vec<VersionSummary>,
}

/// `GET /v1/deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SlotsResponse {
    /// Every slot, by name.
    pub slots: Vec<SlotSummary>,
}

/// `GET /v1/deploy/{slot}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    /// The slot.
    pub slot: String,
    /// Every entry, oldest first: `seq`, `at`, `action` (`register`, `gate`,
    /// `promote`, `rollback`, `canary`, `canary_promote`, `canary_rollback`,
    /// `canary_abort`, `alias`), `version`, `alias`, `from`, `to`, `why`,
    /// `forced`, `verdict` (gate, pass, reasons, numbers, parts),
    /// `canary_percent`, `aliases`.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<HistoryEntry>,
}

fn deploy_error(e: sam_deploy::Error) -> ApiError {
    match e {
        sam_deploy::Error::NoSlot(s) => {
            ApiError::not_found(format!("no slot {s:?} in the registry (`sam deploy status` lists them)"))
                .with_field("slot")
        }
        e => ApiError::internal(e.to_string()),
    }
}

fn registry(s: &AppState) -> Result<Registry, ApiError> {
    Registry::open(&s.registry).map_err(deploy_error)
}

/// A slot with its versions, for the API and the dashboard.
pub(crate) fn summarize(reg: &Registry, slot: &Slot) -> Result<SlotSummary, sam_deploy::Error> {
    let aliases = reg.aliases(&slot.name)?;
    let versions = reg
        .versions(&slot.name)?
        .iter()
        .map(|v| version_summary(reg, v, &aliases.aliases))
        .collect::<Result<_, _>>()?;
    Ok(SlotSummary {
        name: slot.name.clone(),
        base_id: slot.base.id.clone(),
        aliases: aliases.aliases.clone(),
        canary_percent: aliases.canary.as_ref().map(|c| c.percent),
        versions,
    })
}

fn version_summary(
    reg: &Registry,
    v: &Version,
    aliases: &BTreeMap<String, String>,
) -> Result<VersionSummary, sam_deploy::Error> {
    let latest: Option<VerdictRecord> = reg.verdicts(v)?.pop();
    Ok(VersionSummary {
        id: v.id.clone(),
        number: v.number,
        created_at: v.created_at,
        run_id: v.run_id.clone(),
        rank: v.adapter.rank,
        modules: v.adapter.modules,
        aliases: aliases.iter().filter(|(_, id)| **id == v.id).map(|(a, _)| a.clone()).collect(),
        verdict: latest.map(|r| VerdictSummary {
            pass: r.verdict.pass,
            gate: r.verdict.gate.clone(),
            against: r.against.clone(),
            at: r.at,
            summary: r.verdict.summary(),
        }),
    })
}

/// The registry for the dashboard: every slot with its history.
pub(crate) fn all(s: &AppState) -> Result<Vec<(SlotSummary, Vec<HistoryEntry>)>, ApiError> {
    let reg = registry(s)?;
    let mut out = Vec::new();
    for slot in reg.slots().map_err(deploy_error)? {
        let summary = summarize(&reg, &slot).map_err(deploy_error)?;
        out.push((summary, reg.history(&slot.name).map_err(deploy_error)?));
    }
    Ok(out)
}

/// Every slot: base model, aliases, versions and their latest verdicts.
#[utoipa::path(
    get, path = "/v1/deploy", tag = "deploy",
    responses((status = 200, body = SlotsResponse), (status = 500, description = "The registry cannot be read", body = ErrorBody))
)]
pub(crate) async fn slots(State(s): State<Arc<AppState>>) -> Result<Json<SlotsResponse>, ApiError> {
    let slots = blocking(move || Ok(all(&s)?.into_iter().map(|(slot, _)| slot).collect())).await?;
    Ok(Json(SlotsResponse { slots }))
}

/// What the assistant should load for a request with `key` (a user or
/// session id): the canary for keys in its share (sticky: raising the
/// percentage only adds keys), else production, else the base model.
#[utoipa::path(
    get, path = "/v1/deploy/{slot}", tag = "deploy",
    params(
        ("slot" = String, Path, description = "The slot (one per base model)"),
        ("key" = Option<String>, Query, description = "A user or session id; without one, production"),
    ),
    responses(
        (status = 200, body = DeployResolution),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
        (status = 404, description = "No such slot", body = ErrorBody),
    )
)]
pub(crate) async fn resolve(
    State(s): State<Arc<AppState>>,
    UrlPath(slot): UrlPath<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<DeployResolution>, ApiError> {
    if let Some(k) = q.keys().find(|k| *k != "key") {
        return Err(ApiError::invalid_field(k, "no such parameter (key)"));
    }
    let key = q.get("key").cloned().filter(|k| !k.is_empty());
    let r = blocking(move || registry(&s)?.resolve(&slot, key.as_deref()).map_err(deploy_error)).await?;
    let path = |p: &std::path::Path| p.display().to_string();
    Ok(Json(DeployResolution {
        slot: r.slot,
        route: r.route,
        version: r.version,
        adapter_dir: r.adapter_dir.as_deref().map(path),
        base_model: path(&r.base_model),
        base_id: r.base_id,
    }))
}

/// The slot's history: registrations, verdicts and every alias move, with
/// the verdict behind each.
#[utoipa::path(
    get, path = "/v1/deploy/{slot}/history", tag = "deploy",
    params(("slot" = String, Path, description = "The slot")),
    responses((status = 200, body = HistoryResponse), (status = 404, description = "No such slot", body = ErrorBody))
)]
pub(crate) async fn history(
    State(s): State<Arc<AppState>>,
    UrlPath(slot): UrlPath<String>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let entries = {
        let slot = slot.clone();
        blocking(move || registry(&s)?.history(&slot).map_err(deploy_error)).await?
    };
    Ok(Json(HistoryResponse { slot, entries }))
}
