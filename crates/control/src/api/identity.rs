//! The identity endpoints of the admin API (docs/API.md, "Workload identity"): join tokens,
//! CSR signing, the trust bundle and the trust-bundle roots.
//!
//! `POST /v1/certificates` is the only one a workload calls; it is authorised by the join token
//! in `Authorization: Bearer`. The others are operator calls, like the rest of the admin API.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{ApiError, ApiState, path, read_body};
use crate::ca::{CaError, TokenRequest};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/tokens", post(create_token))
        .route("/v1/certificates", post(sign))
        .route("/v1/trust-bundle", get(trust_bundle))
        .route("/v1/ca/roots", get(list_roots).post(add_root))
        .route("/v1/ca/roots/{fingerprint}", delete(remove_root))
        .route("/v1/ca/activate", post(activate))
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> ApiError {
        let status = match &e {
            CaError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CaError::Invalid(_) => StatusCode::BAD_REQUEST,
            CaError::NotFound(_) => StatusCode::NOT_FOUND,
            CaError::Conflict(_) => StatusCode::CONFLICT,
            CaError::Store(_) | CaError::Internal(_) => {
                tracing::error!(error = %e, "certificate authority failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// A CA error as a response; a 401 also says how to authenticate.
fn ca_error(e: CaError) -> Response {
    let unauthorized = matches!(e, CaError::Unauthorized(_));
    let mut response = ApiError::from(e).into_response();
    if unauthorized {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"trellis\""),
        );
    }
    response
}

async fn json_body<T: DeserializeOwned>(what: &str, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

async fn create_token(State(state): State<ApiState>, body: Body) -> Response {
    let req: TokenRequest = match json_body("token request", body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.ca.create_token(req).await {
        Ok(grant) => (StatusCode::CREATED, Json(grant)).into_response(),
        Err(e) => ca_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsrRequest {
    csr: String,
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, CaError> {
    let hint = "send `Authorization: Bearer <join token>` (create one with `trellis token create`)";
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| CaError::Unauthorized(format!("Authorization header is missing; {hint}")))?;
    let value = value.to_str().map_err(|_| {
        CaError::Unauthorized(format!("Authorization header is not ASCII text; {hint}"))
    })?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(CaError::Unauthorized(format!(
            "Authorization header is not a Bearer token; {hint}"
        ))),
    }
}

async fn sign(State(state): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    // The token is checked first: without one, nothing about the request is looked at.
    let token = match bearer(&headers) {
        Ok(t) => t.to_string(),
        Err(e) => return ca_error(e),
    };
    if let Err(e) = state.ca.authorize_at(&token, crate::ca::unix_ms()).await {
        return ca_error(e);
    }
    let req: CsrRequest = match json_body("certificate request", body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.ca.sign(&token, &req.csr).await {
        Ok(signed) => Json(signed).into_response(),
        Err(e) => ca_error(e),
    }
}

async fn trust_bundle(State(state): State<ApiState>) -> Response {
    Json(json!({
        "trust_bundle": state.ca.trust_bundle(),
        "trust_domain": state.ca.trust_domain(),
    }))
    .into_response()
}

async fn list_roots(State(state): State<ApiState>) -> Response {
    Json(state.ca.roots()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRoot {
    cert_pem: String,
    key_pem: String,
}

async fn add_root(State(state): State<ApiState>, body: Body) -> Response {
    let req: AddRoot = match json_body("root", body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.ca.add_root(&req.cert_pem, &req.key_pem).await {
        Ok(info) => (StatusCode::CREATED, Json(info)).into_response(),
        Err(e) => ca_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Activate {
    fingerprint: String,
}

async fn activate(State(state): State<ApiState>, body: Body) -> Response {
    let req: Activate = match json_body("activate", body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.ca.activate(&req.fingerprint).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => ca_error(e),
    }
}

async fn remove_root(
    State(state): State<ApiState>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let fingerprint = match path(p) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match state.ca.remove_root(&fingerprint).await {
        Ok(()) => Json(json!({ "deleted": { "fingerprint": fingerprint } })).into_response(),
        Err(e) => ca_error(e),
    }
}
