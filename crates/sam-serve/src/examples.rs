//! `GET /v1/examples`: stored examples, filtered. This returns example text
//! (redacted, but still the user's own work), so it needs the token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use sam_schema::{Kind, Tier};
use sam_store::Filter;
use sam_store::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::{AppState, blocking};

/// The most examples one request returns.
pub const MAX_LIMIT: u64 = 1_000;

/// The query of `GET /v1/examples` (every parameter optional; lists are
/// comma-separated).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by hand for field-naming errors; this type describes it
pub(crate) struct ExamplesQuery {
    /// Tiers: `gold,silver,bronze,unverified`.
    tier: Option<String>,
    /// Kinds: `instruction,chat,preference,completion,prompt_completion`.
    kind: Option<String>,
    /// Sources (`git`, `feedback`, …).
    source: Option<String>,
    /// Domains.
    domain: Option<String>,
    /// Examples created at or after this Unix time.
    since: Option<i64>,
    /// Examples created before this Unix time.
    until: Option<i64>,
    /// Examples scored at least this (0–1).
    min_quality: Option<f64>,
    /// How many, oldest first (default 100, at most 1000).
    limit: Option<u64>,
}

/// `GET /v1/examples`: the examples selected.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExamplesResponse {
    /// The examples in sam's full JSONL form (`id`, `content`, `source`,
    /// `domain`, `quality`, `tier`, `created_at`, `metadata`), oldest first.
    #[schema(value_type = Vec<Object>)]
    pub examples: Vec<sam_schema::Example>,
    /// How many the filter selects in all (`examples` stops at `limit`).
    pub total: u64,
}

fn list<T: std::str::FromStr<Err = String>>(field: &str, v: &str) -> Result<Vec<T>, ApiError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| ApiError::invalid_field(field, e)))
        .collect()
}

fn number<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, ApiError> {
    v.trim().parse().map_err(|_| ApiError::invalid_field(field, format!("{v:?} is not a number")))
}

/// The filter a query string asks for, with errors naming the parameter.
pub(crate) fn filter(q: &BTreeMap<String, String>) -> Result<Filter, ApiError> {
    let mut f = Filter::default().limit(100);
    for (k, v) in q {
        match k.as_str() {
            "tier" => f.tiers = list::<Tier>(k, v)?,
            "kind" => f.kinds = list::<Kind>(k, v)?,
            "source" => f.sources = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            "domain" => f.domains = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            "since" => f.since = Some(number(k, v)?),
            "until" => f.until = Some(number(k, v)?),
            "min_quality" => f.min_quality = Some(number(k, v)?),
            "limit" => {
                let n: u64 = number(k, v)?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(ApiError::invalid_field(k, format!("must be 1 to {MAX_LIMIT}")));
                }
                f.limit = Some(n);
            }
            _ => {
                return Err(ApiError::invalid_field(
                    k,
                    "no such parameter (tier, kind, source, domain, since, until, min_quality, limit)",
                ));
            }
        }
    }
    Ok(f)
}

/// Stored examples, filtered (redacted text; needs the token).
#[utoipa::path(
    get, path = "/v1/examples", tag = "examples", params(ExamplesQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ExamplesResponse),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
    )
)]
pub(crate) async fn examples(
    State(s): State<Arc<AppState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<ExamplesResponse>, ApiError> {
    let f = filter(&q)?;
    let res = blocking(move || {
        let store = s.reader.lock().unwrap_or_else(|e| e.into_inner());
        let total = store.count(&Filter { limit: None, ..f.clone() })?;
        Ok(ExamplesResponse { examples: store.query(&f)?, total })
    })
    .await?;
    Ok(Json(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn query_parameters_become_a_filter_and_bad_ones_are_named() {
        let f = filter(&q(&[("tier", "gold,silver"), ("source", "git"), ("limit", "5")])).unwrap();
        assert_eq!((f.tiers, f.sources, f.limit), (vec![Tier::Gold, Tier::Silver], vec!["git".into()], Some(5)));
        for (k, v) in [("tier", "platinum"), ("limit", "0"), ("limit", "x"), ("since", "yesterday"), ("colour", "red")]
        {
            let e = filter(&q(&[(k, v)])).unwrap_err();
            assert_eq!(e.body.field.as_deref(), Some(k), "{k}={v}: {:?}", e.body);
        }
    }
}
