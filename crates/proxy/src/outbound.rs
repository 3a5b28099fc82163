//! The outbound listener: the app's calls to other services. Decide (pure routing over the
//! live snapshot), then dispatch to the chosen endpoint — the peer sidecar's inbound listener —
//! over a pooled keep-alive connection, HTTP/2 when the app spoke HTTP/2.
//!
//! The balancer's [`LoadGuard`] is completed when the response head arrives (latency = time to
//! first byte, as linkerd's peak-EWMA measures it); streaming bodies do not count as load
//! afterwards. The duration metric measures the same span.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::Either as FutEither;
use http::header;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::accesslog;
use crate::balance::LoadGuard;
use crate::body::ReqBody;
use crate::http::{ProxyBody, Target, UpstreamError, local_reply, strip_hop_by_hop};
use crate::metrics::{Direction, ServiceMetrics, UNKNOWN_SERVICE};
use crate::mtls::connect::prepare_h2;
use crate::pool::UpstreamBody;
use crate::resilience::{RoutePolicy, timeout};
use crate::routing;
use crate::server::{ConnInfo, Handler};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::upstream::{UpstreamCluster, UpstreamEndpoint};

#[derive(Debug)]
pub(crate) struct Outbound {
    shared: Arc<Shared>,
    unknown: Arc<ServiceMetrics>,
}

impl Outbound {
    pub fn new(shared: Arc<Shared>) -> Self {
        let unknown = shared.metrics.service(Direction::Outbound, UNKNOWN_SERVICE);
        Outbound { shared, unknown }
    }
}

mod resilient;

/// Where a request goes.
struct Decision {
    cluster: Arc<UpstreamCluster>,
    index: usize,
    load: LoadGuard,
    metrics: Arc<ServiceMetrics>,
}

/// What only the resilient path needs (kept out of [`Decision`], which the fast path's future
/// carries: that future is moved on every request, so it stays as small as it was).
struct Extra {
    /// The route's timeouts and retries; `None` (with a cluster without resilience state):
    /// the single-try fast path.
    policy: Option<Arc<RoutePolicy>>,
    /// The request's hash key, to pick again for a retry.
    hash: Option<u64>,
}

/// Why a request cannot be routed.
enum Rejection {
    NoAuthority,
    UnknownService(String),
    NoRoute(Arc<ServiceMetrics>, String),
    NoEndpoints(Arc<ServiceMetrics>, String),
}

/// The authority a request names: absolute-form URI (as to an HTTP proxy, or h2 `:authority`)
/// first, else the Host header.
fn authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
}

/// The routing decision for `req` over `snap`. Pure apart from the random weighted pick.
fn decide<B>(
    snap: &Snapshot,
    req: &Request<B>,
    peer: IpAddr,
    now: Instant,
) -> Result<(Decision, Extra), Rejection> {
    let authority = authority(req).ok_or(Rejection::NoAuthority)?;
    let routes = &*snap.routes;
    let Some((vh_index, vh)) = routes.table.find(authority) else {
        return Err(Rejection::UnknownService(
            routing::strip_port(authority).to_string(),
        ));
    };
    let metrics = &routes.metrics[vh_index];
    let Some(route) = vh.route(req.method(), req.uri().path(), req.headers()) else {
        return Err(Rejection::NoRoute(metrics.clone(), vh.name.to_string()));
    };
    let action = &route.action;
    let r = if action.is_split() { rand::random() } else { 0 };
    let cluster_name = action.pick_cluster(r);
    let Some(cluster) = snap.clusters.get(cluster_name) else {
        return Err(Rejection::NoEndpoints(
            metrics.clone(),
            format!("cluster `{cluster_name}` is not known (yet)"),
        ));
    };
    let hash = action
        .hash
        .as_ref()
        .and_then(|p| routing::hash_key(p, req.headers(), peer));
    let Some(picked) = cluster.pick(hash, now, 0) else {
        accesslog::note(req, &cluster.name, None);
        return Err(Rejection::NoEndpoints(
            metrics.clone(),
            format!("cluster `{cluster_name}` has no healthy endpoints"),
        ));
    };
    if picked.index >= cluster.endpoints.len() {
        return Err(Rejection::NoEndpoints(
            metrics.clone(),
            format!("cluster `{cluster_name}`: balancer picked a missing endpoint"),
        ));
    }
    Ok((
        Decision {
            cluster: cluster.clone(),
            index: picked.index,
            load: picked.load,
            metrics: metrics.clone(),
        },
        Extra {
            policy: action.policy.clone(),
            hash,
        },
    ))
}

impl Handler for Outbound {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        let start = Instant::now();
        let decision = {
            let snap = self.shared.live.load();
            decide(&snap, &req, conn.peer.ip(), start)
        };
        match decision {
            Ok((d, extra))
                if extra.policy.is_none()
                    && d.cluster.resilience.is_none()
                    && !(req.version() == Version::HTTP_2
                        && req.headers().contains_key(timeout::GRPC_TIMEOUT)) =>
            {
                FutEither::Left(forward(d, req, start, &self.shared))
            }
            Ok((d, extra)) => FutEither::Right(FutEither::Left(resilient::forward(
                d,
                extra,
                req,
                start,
                self.shared.clone(),
            ))),
            Err(rejection) => FutEither::Right(FutEither::Right(std::future::ready(
                self.reject(rejection, start),
            ))),
        }
    }
}

impl Outbound {
    fn reject(&self, rejection: Rejection, start: Instant) -> Response<ProxyBody> {
        let (metrics, resp) = match rejection {
            Rejection::NoAuthority => (
                &self.unknown,
                local_reply(
                    StatusCode::BAD_REQUEST,
                    "no_authority",
                    "trellis: the request names no service: send it as to an HTTP proxy \
                     (`GET http://<service>/path`) or with a Host header naming the service\n",
                ),
            ),
            Rejection::UnknownService(host) => (
                &self.unknown,
                local_reply(
                    StatusCode::NOT_FOUND,
                    "unknown_service",
                    format!("trellis: no service named \"{host}\" is known to this proxy\n"),
                ),
            ),
            Rejection::NoRoute(ref m, ref service) => (
                m,
                local_reply(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    format!("trellis: no route of service \"{service}\" matches this request\n"),
                ),
            ),
            Rejection::NoEndpoints(ref m, ref why) => (
                m,
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_healthy_endpoints",
                    format!("trellis: {why}\n"),
                ),
            ),
        };
        record_local(metrics, &resp, start);
        resp
    }
}

/// Counts a response the proxy made itself, under its `x-trellis-reason`.
fn record_local(metrics: &ServiceMetrics, resp: &Response<ProxyBody>, start: Instant) {
    let reason = resp
        .headers()
        .get(crate::http::REASON)
        .and_then(|v| {
            crate::metrics::LOCAL_REASONS
                .iter()
                .find(|r| r.as_bytes() == v.as_bytes())
        })
        .copied()
        .unwrap_or("other");
    metrics.record_local(resp.status(), reason, start.elapsed());
}

/// Prepares and hands `req` to the upstream at once; the returned future (moved into hyper's
/// per-connection slot, so kept small) only waits for the response head.
fn forward(
    d: Decision,
    mut req: Request<Incoming>,
    start: Instant,
    shared: &Shared,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
    let endpoint = &d.cluster.endpoints[d.index];
    accesslog::note(&req, &d.cluster.name, Some(&endpoint.authority));
    let version = req.version();
    strip_hop_by_hop(req.headers_mut());
    if let Some(mtls) = &endpoint.mtls {
        // The endpoint serves mTLS: HTTP/2 over TLS, whatever the app spoke.
        let Some(tls) = shared.tls.get() else {
            return FutEither::Right(FutEither::Left(std::future::ready(no_identity(d, start))));
        };
        if let Err(e) = prepare_h2(&mut req, &endpoint.authority) {
            let resp = finish(d, Err(UpstreamError::Uri(e)), version, start);
            return FutEither::Right(FutEither::Left(std::future::ready(resp)));
        }
        // Boxed, so the plaintext path's future keeps its size.
        let sent = mtls.send(tls, req.map(ReqBody::Stream), start, None);
        return FutEither::Right(FutEither::Right(Box::pin(sent.map(move |result| {
            finish(d, result.map_err(UpstreamError::Mtls), version, start)
        }))));
    }
    if version != Version::HTTP_2 {
        crate::http::host_from_authority(&mut req);
    }
    let to = Target {
        pool: &endpoint.pool,
        authority: &endpoint.authority,
        h2: &d.cluster.clients.h2,
        breaker: None,
    };
    FutEither::Left(
        crate::http::send(req, to, start).map(move |result| finish(d, result, version, start)),
    )
}

/// The answer when the chosen endpoint needs mTLS and this sidecar has no certificate.
fn no_identity(d: Decision, start: Instant) -> Response<ProxyBody> {
    drop(d.load);
    let resp = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_identity",
        format!(
            "trellis: cluster `{}` serves mTLS only, but this sidecar has no workload \
             certificate: start it with --join-token (from `trellis token create --service \
             <name>`)\n",
            d.cluster.name
        ),
    );
    record_local(&d.metrics, &resp, start);
    resp
}

/// The response for the upstream's `result`, with the balancer and metrics told.
fn finish(
    d: Decision,
    result: Result<Response<UpstreamBody>, UpstreamError>,
    version: Version,
    start: Instant,
) -> Response<ProxyBody> {
    let endpoint = &d.cluster.endpoints[d.index];
    match result {
        Ok(resp) => {
            d.load.complete();
            let resp = crate::http::downstream_response(resp, version);
            d.metrics.record(resp.status(), start.elapsed());
            resp
        }
        Err(e) => {
            drop(d.load);
            let (status, reason, text) = upstream_failure(&d.cluster, endpoint, &e, &d.metrics);
            let resp = local_reply(status, reason, text);
            record_local(&d.metrics, &resp, start);
            resp
        }
    }
}

/// The status, `x-trellis-reason` and text of the answer to a failed upstream request.
fn upstream_failure(
    cluster: &UpstreamCluster,
    endpoint: &UpstreamEndpoint,
    e: &UpstreamError,
    metrics: &ServiceMetrics,
) -> (StatusCode, &'static str, String) {
    if let UpstreamError::Uri(e) = e {
        return (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("trellis: cannot forward this request URI: {e}\n"),
        );
    }
    if e.is_tls() {
        metrics.connect_error();
        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.authority, error = %e, "upstream mTLS handshake failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_tls_failure",
            format!(
                "trellis: mTLS with {} (cluster `{}`) failed: {}\n",
                endpoint.authority,
                cluster.name,
                error_chain(e)
            ),
        )
    } else if e.is_connect() {
        metrics.connect_error();
        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.authority, error = %e, "upstream connect failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_connect_failure",
            format!(
                "trellis: cannot connect to {} (cluster `{}`): {e}\n",
                endpoint.authority, cluster.name
            ),
        )
    } else {
        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.authority, error = %e, "upstream request failed");
        (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!(
                "trellis: upstream {} (cluster `{}`) failed: {}\n",
                endpoint.authority,
                cluster.name,
                error_chain(e)
            ),
        )
    }
}

pub(crate) use crate::control_tls::error_chain;
