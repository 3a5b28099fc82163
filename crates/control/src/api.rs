//! The admin HTTP/JSON API (docs/API.md) on axum. Every error is `{"error": "..."}` naming the
//! field or thing at fault; axum's own text rejections never reach the client.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::json;
use trellis_model::{InstanceRegistration, Kind};

use crate::ca::Ca;
use crate::registry::{Registry, RegistryError, ServiceDescription};
use crate::xds::{ProxyStatus, ProxyTable};

mod checks;
mod identity;
mod ratelimit;

/// Largest request body accepted (registrations and resource files).
const BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub proxies: ProxyTable,
    /// The bound xDS address handed to sidecars by `/v1/bootstrap`.
    pub xds_addr: SocketAddr,
    /// The mesh CA behind the identity endpoints ([`identity`]).
    pub ca: Ca,
}

/// An error response: status plus `{"error": ..., "errors"?: [...]}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    errors: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::Invalid(m) => ApiError::bad_request(m),
            RegistryError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            RegistryError::Rejected(a) => ApiError {
                status: StatusCode::BAD_REQUEST,
                error: format!(
                    "{} error(s) in the applied documents; nothing was applied",
                    a.errors.len()
                ),
                errors: a.errors.iter().map(ToString::to_string).collect(),
            },
            RegistryError::Store(e) => {
                tracing::error!(error = %e, "store write failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The admin API router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/bootstrap", get(bootstrap))
        .route("/v1/instances", post(register).get(list_instances))
        .route("/v1/instances/{service}/{id}/heartbeat", put(heartbeat))
        .route(
            "/v1/instances/{service}/{id}",
            axum::routing::delete(deregister),
        )
        .route("/v1/services", get(list_services))
        .route("/v1/services/{name}", get(describe))
        .route("/v1/resources", post(apply).get(list_resources))
        .route("/v1/resources/{kind}", get(list_resources_of_kind))
        .route(
            "/v1/resources/{kind}/{name}",
            get(get_resource).delete(delete_resource),
        )
        .route("/v1/proxies", get(list_proxies))
        .merge(identity::routes())
        .merge(checks::routes())
        .merge(ratelimit::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {} {}", req.method(), req.uri().path()),
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed on {}",
                    req.method(),
                    req.uri().path()
                ),
            )
        })
        .with_state(state)
}

async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    state
        .registry
        .metrics()
        .api_requests
        .get_or_create(&crate::metrics::ApiLabels {
            route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

async fn metrics(State(state): State<ApiState>) -> Response {
    state.registry.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.registry.metrics().encode(),
    )
        .into_response()
}

async fn bootstrap(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "xds_addr": state.xds_addr.to_string() }))
}

async fn read_body(body: Body) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: cannot read it (limit {BODY_LIMIT} bytes): {e}"),
        )
    })
}

async fn register(State(state): State<ApiState>, body: Body) -> ApiResult<Response> {
    let bytes = read_body(body).await?;
    let reg: InstanceRegistration = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("instance registration: {e}")))?;
    let view = state.registry.register(reg).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// An empty body is a bare heartbeat; otherwise `{"check": CheckReport}`.
async fn heartbeat(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> ApiResult<Response> {
    let (service, id) = path(p)?;
    let bytes = checks::read_small_body(body).await?;
    let beat: trellis_model::Heartbeat = if bytes.iter().all(u8::is_ascii_whitespace) {
        trellis_model::Heartbeat::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("heartbeat: {e}")))?
    };
    let view = state.registry.heartbeat(&service, &id, beat.check).await?;
    Ok(Json(view).into_response())
}

async fn deregister(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (service, id) = path(p)?;
    state.registry.deregister(&service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesQuery {
    service: Option<String>,
}

pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
}

async fn list_instances(
    State(state): State<ApiState>,
    q: Result<Query<InstancesQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    Ok(Json(state.registry.instances(q.service.as_deref())).into_response())
}

async fn list_services(State(state): State<ApiState>) -> Response {
    Json(state.registry.services()).into_response()
}

#[derive(Serialize)]
struct Describe {
    #[serde(flatten)]
    service: ServiceDescription,
    proxies: Vec<ProxyStatus>,
}

async fn describe(
    State(state): State<ApiState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let name = path(p)?;
    let service = state.registry.describe(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("service `{name}` is not declared and has no instances"),
        )
    })?;
    let proxies = state
        .proxies
        .list()
        .into_iter()
        .filter(|p| p.service == name)
        .collect();
    Ok(Json(Describe { service, proxies }).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyQuery {
    source: Option<String>,
}

async fn apply(
    State(state): State<ApiState>,
    q: Result<Query<ApplyQuery>, QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let q = query(q)?;
    let source = q.source.unwrap_or_else(|| "-".to_string());
    let bytes = read_body(body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::bad_request(format!("{source}: not UTF-8 text: {e}")))?;
    let applied = state.registry.apply(&source, text).await?;
    Ok(Json(json!({ "applied": applied })).into_response())
}

fn parse_kind(kind: &str) -> ApiResult<Kind> {
    Kind::parse(kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "kind `{kind}` is unknown: expected one of {}",
            Kind::ALL.map(Kind::as_str).join(", ")
        ))
    })
}

async fn list_resources(State(state): State<ApiState>) -> Response {
    Json(state.registry.resources(None)).into_response()
}

async fn list_resources_of_kind(
    State(state): State<ApiState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let kind = path(p)?;
    let kind = parse_kind(&kind)?;
    Ok(Json(state.registry.resources(Some(kind))).into_response())
}

async fn get_resource(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let (kind, name) = path(p)?;
    let kind = parse_kind(&kind)?;
    let r = state.registry.resource(kind, &name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{kind} `{name}` does not exist"),
        )
    })?;
    Ok(Json(r).into_response())
}

async fn delete_resource(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let (kind, name) = path(p)?;
    let kind = parse_kind(&kind)?;
    state.registry.delete_resource(kind, &name).await?;
    Ok(Json(json!({ "deleted": { "kind": kind, "name": name } })).into_response())
}

async fn list_proxies(State(state): State<ApiState>) -> Response {
    Json(state.proxies.list()).into_response()
}
