//! The admin listener: `/ready`, `/healthz`, `/config_dump` (JSON) and `/metrics`
//! (Prometheus text).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::http::ProxyBody;
use crate::routing::{HashPolicy, HeaderTarget, PathMatch, StringMatch};
use crate::server::{ConnInfo, Handler};
use crate::shared::Shared;

#[derive(Debug)]
pub(crate) struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

impl Handler for Admin {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: &ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        let resp = self.route(&req);
        async move { resp }
    }
}

impl Admin {
    fn route<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        const TEXT: &str = "text/plain; charset=utf-8";
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "admin endpoints are GET only\n",
            );
        }
        match req.uri().path() {
            "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
            "/ready" => match not_ready_reason(&self.shared) {
                None => reply(StatusCode::OK, TEXT, "ready\n"),
                Some(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.shared.metrics.encode(),
            ),
            "/config_dump" => {
                let body =
                    serde_json::to_vec_pretty(&config_dump(&self.shared)).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body)
            }
            other => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                format!(
                    "no admin endpoint `{other}`: try /ready, /healthz, /config_dump, /metrics\n"
                ),
            ),
        }
    }
}

/// `None` when ready to serve, else why not: with a join token, the certificate is needed too.
fn not_ready_reason(shared: &Shared) -> Option<String> {
    let status = shared.status.not_ready_reason();
    if shared.config.join_token.is_none() || shared.tls.get().is_some() {
        return status;
    }
    let cert = "no workload certificate yet (requesting one from the control plane's CA with \
                the join token; see the sidecar's log)";
    Some(match status {
        Some(why) => format!("{cert}; {why}"),
        None => cert.to_string(),
    })
}

/// This sidecar's workload identity, for `/config_dump`.
fn identity_json(shared: &Shared) -> Value {
    let Some(tls) = shared.tls.get() else {
        return json!({ "join_token": shared.config.join_token.is_some(), "certificate": null });
    };
    let creds = tls.identity.credentials();
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    json!({
        "join_token": true,
        "spiffe_id": tls.identity.spiffe_id(),
        "certificate": {
            "serial": creds.serial,
            "not_before_ms": ms(creds.not_before),
            "not_after_ms": ms(creds.not_after),
        },
        "trust_bundle_roots": tls.identity.trust_bundle().roots().len(),
    })
}

/// The node, the xDS status (accepted versions, last NACK) and the live typed config.
pub(crate) fn config_dump(shared: &Shared) -> Value {
    let c = &shared.config;
    let snap = shared.live.load();
    let mut clusters: Vec<&Arc<crate::upstream::UpstreamCluster>> =
        snap.clusters.values().collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let clusters: Vec<Value> = clusters
        .iter()
        .map(|cl| {
            json!({
                "name": &*cl.name,
                "algorithm": format!("{:?}", cl.algorithm),
                "connect_timeout_ms": cl.connect_timeout.as_millis() as u64,
                "idle_timeout_ms": cl.clients.idle_timeout.as_millis() as u64,
                "tls": cl.tls.as_ref().map(|t| json!({"sni": t.sni, "expected_ids": t.expected_ids})),
                "resilience": (!cl.policy.is_empty()).then(|| format!("{:?}", cl.policy)),
                "ejected": cl.resilience.as_ref().and_then(|r| r.outlier.as_ref()).map(|o| {
                    let now = std::time::Instant::now();
                    (0..o.len()).filter(|i| o.is_ejected(*i, now)).map(|i| cl.endpoints[i].endpoint.id.clone()).collect::<Vec<_>>()
                }),
                "health_check": cl.lb.health_check.as_ref().map(|h| h.config.describe()),
                "panic_threshold": cl.lb.panic_threshold,
                "overprovisioning_factor": cl.lb.overprovisioning,
                "priorities": cl.priorities.as_ref().map(|p| p.levels.iter().map(|l| json!({
                    "priority": l.priority,
                    "endpoints": l.indexes.len(),
                })).collect::<Vec<_>>()),
                "endpoints": cl.endpoints.iter().enumerate().map(|(i, e)| {
                    let health = cl.health.as_ref().and_then(|h| h.hosts.get(i));
                    json!({
                        "address": e.endpoint.addr.to_string(),
                        "weight": e.endpoint.weight,
                        "instance_id": e.endpoint.id,
                        "zone": e.endpoint.zone,
                        "priority": e.endpoint.priority,
                        "mtls": e.mtls.is_some(),
                        "health": health.map(|h| h.state()),
                        "health_output": health.map(|h| h.output()),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let routes: Vec<Value> = snap
        .routes
        .table
        .vhosts
        .iter()
        .map(|vh| {
            json!({
                "name": &*vh.name,
                "domains": vh.domains,
                "routes": vh.routes.iter().map(|r| json!({
                    "name": r.name,
                    "path": path_json(&r.matcher.path),
                    "headers": r.matcher.headers.iter().map(|h| json!({
                        "name": match &h.target { HeaderTarget::Method => ":method", HeaderTarget::Header(n) => n.as_str() },
                        "match": string_json(&h.matcher),
                        "invert": h.invert,
                    })).collect::<Vec<_>>(),
                    "clusters": r.action.clusters.iter().map(|w| json!({"name": &*w.name, "weight": w.weight})).collect::<Vec<_>>(),
                    "resilience": r.action.policy.as_ref().map(|p| format!("{p:?}")),
                    "hash": r.action.hash.as_ref().map(|h| match h {
                        HashPolicy::Header(n) => json!({"header": n.as_str()}),
                        HashPolicy::SourceIp => json!({"source_ip": true}),
                    }),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "node": {
            "id": c.node_id(),
            "cluster": c.service,
            "instance_id": c.instance_id,
            "app_port": c.app_port,
            "app_protocol": c.app_protocol,
        },
        "status": shared.status.get(),
        "identity": identity_json(shared),
        "inbound_mode": snap.inbound.as_ref().map(|i| i.mode.as_str()),
        // Callers' idle connections are closed after this (null: never).
        "inbound_idle_timeout_ms": snap.inbound.as_ref().map(|i| {
            crate::idle::effective(i.idle_timeout).map(|d| d.as_millis() as u64)
        }),
        "rate_limits": snap.inbound.as_ref().and_then(|i| i.ratelimit.as_ref()).map(|r| r.dump()),
        "clusters": clusters,
        "routes": routes,
    })
}

fn path_json(p: &PathMatch) -> Value {
    match p {
        PathMatch::Prefix(s) => json!({"prefix": s}),
        PathMatch::SeparatedPrefix(s) => json!({"path_separated_prefix": s}),
        PathMatch::Exact(s) => json!({"exact": s}),
        PathMatch::Regex(r) => json!({"regex": r.as_str()}),
    }
}

fn string_json(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(s) => json!({"exact": s}),
        StringMatch::Prefix(s) => json!({"prefix": s}),
        StringMatch::Suffix(s) => json!({"suffix": s}),
        StringMatch::Contains(s) => json!({"contains": s}),
        StringMatch::Regex(r) => json!({"regex": r.as_str()}),
        StringMatch::Present(p) => json!({"present": p}),
    }
}
