//! TTL checks an app holds itself (docs/API.md, "Health checks"), as Consul's:
//! `PUT /v1/instances/{service}/{id}/checks/{name}` registers one with its TTL, and
//! `PUT .../checks/{name}/pass|warn|fail` renews it with an optional note (JSON body
//! `{"note": "..."}` or `?note=`). Bodies are small: 16 KiB at most, notes 1 KiB.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use trellis_model::{CheckStatus, CheckUpdate, TtlCheckRegistration};

use super::{ApiError, ApiResult, ApiState, path};

/// Largest body of a heartbeat or check call.
const SMALL_BODY_LIMIT: usize = 16 * 1024;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/instances/{service}/{id}/checks/{name}",
            put(register).delete(deregister),
        )
        .route(
            "/v1/instances/{service}/{id}/checks/{name}/{verb}",
            put(update),
        )
}

pub(super) async fn read_small_body(body: Body) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, SMALL_BODY_LIMIT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body: cannot read it (limit {SMALL_BODY_LIMIT} bytes): {e}"),
            )
        })
}

/// The JSON body, or `T::default()`-like `None` when empty.
async fn json_body<T: DeserializeOwned>(body: Body, what: &str) -> ApiResult<Option<T>> {
    let bytes = read_small_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

async fn register(
    State(state): State<ApiState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    body: Body,
) -> ApiResult<Response> {
    let (service, id, name) = path(p)?;
    let reg: TtlCheckRegistration =
        json_body(body, "check registration")
            .await?
            .ok_or_else(|| {
                ApiError::bad_request(
                    "ttl_ms: missing: send {\"ttl_ms\": 10000} (how long a renewal stays valid)",
                )
            })?;
    let view = state.registry.register_check(&service, &id, &name, reg)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteQuery {
    note: Option<String>,
}

async fn update(
    State(state): State<ApiState>,
    p: Result<Path<(String, String, String, String)>, PathRejection>,
    q: Result<Query<NoteQuery>, QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let (service, id, name, verb) = path(p)?;
    let status = CheckStatus::from_verb(&verb).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such check action `{}`: expected pass, warn or fail",
                verb.chars().take(32).collect::<String>().escape_debug()
            ),
        )
    })?;
    let q = super::query(q)?;
    let update: Option<CheckUpdate> = json_body(body, "check update").await?;
    let note = update.and_then(|u| u.note).or(q.note);
    let view = state
        .registry
        .update_check(&service, &id, &name, status, note)?;
    Ok(Json(view).into_response())
}

async fn deregister(
    State(state): State<ApiState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (service, id, name) = path(p)?;
    state.registry.deregister_check(&service, &id, &name)?;
    Ok(StatusCode::NO_CONTENT)
}
