//! `POST /v1/ratelimit/lease`: a sidecar's share of a global rate limit ([`crate::ratelimit`]).
//! The rule is looked up in the applied RateLimitPolicy, so a sidecar cannot ask for more
//! than the policy says.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio::time::Instant;
use trellis_model::{Kind, LeaseRequest, check_dns_label};

use super::{ApiError, ApiResult, ApiState};
use crate::registry::rate_limit_for;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/ratelimit/lease", post(lease))
}

fn check(req: &LeaseRequest) -> Result<(), String> {
    check_dns_label(&req.service).map_err(|e| format!("service: {e}"))?;
    if req.instance.is_empty() || req.instance.len() > 128 {
        return Err("instance: must be 1 to 128 characters long".into());
    }
    if req.rule.is_empty() || req.rule.len() > 64 {
        return Err("rule: must be 1 to 64 characters long (e.g. `ratelimit-0`)".into());
    }
    if !req.demand.is_finite() || !(0.0..=1e9).contains(&req.demand) {
        return Err(format!(
            "demand: {} must be a number of requests per second between 0 and 1e9",
            req.demand
        ));
    }
    Ok(())
}

async fn lease(State(state): State<ApiState>, body: Body) -> ApiResult<Response> {
    let bytes = super::checks::read_small_body(body).await?;
    let req: LeaseRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("lease request: {e}")))?;
    check(&req).map_err(ApiError::bad_request)?;
    let resources = state.registry.resources(Some(Kind::RateLimitPolicy));
    let Some(policy) = rate_limit_for(resources.iter(), &req.service) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("service `{}` has no RateLimitPolicy", req.service),
        ));
    };
    let rule = match req.rule.strip_prefix("ratelimit-") {
        Some(i) => i
            .parse::<usize>()
            .ok()
            .and_then(|i| policy.spec.rules.get(i))
            .filter(|r| r.matches.is_some()),
        None if req.rule == "default" => policy.spec.rules.iter().find(|r| r.matches.is_none()),
        None => None,
    };
    let Some(rule) = rule else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "rule `{}` is not in RateLimitPolicy `{}` (names: `ratelimit-<index>` or `default`)",
                req.rule.escape_debug(),
                policy.metadata.name
            ),
        ));
    };
    if !rule.global {
        return Err(ApiError::bad_request(format!(
            "rule: `{}` of RateLimitPolicy `{}` is not global: each sidecar enforces it alone",
            req.rule, policy.metadata.name
        )));
    }
    let rate = f64::from(rule.requests_per_unit) / rule.unit.duration().as_secs_f64();
    let grant = state
        .registry
        .leases()
        .grant(&req, rate, rule.burst(), Instant::now());
    Ok(Json(grant).into_response())
}
