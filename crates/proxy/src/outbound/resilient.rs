//! The outbound path for requests whose route or cluster has a resilience policy (or that
//! carry `grpc-timeout`): one boxed future that runs, in order,
//!
//! 0. fault injection (a delay before anything else, then an abort answered at once);
//! 1. the deadline (route timeout, or a smaller `grpc-timeout`) around everything below;
//! 2. the circuit breaker (a request over `max_requests` is answered 503 `circuit_open` at once);
//! 3. body buffering for replay (only when the route retries and the method may be retried;
//!    bodies over the limit are streamed and not retried);
//! 4. the tries: per-try timeout, outcome fed to outlier detection, then the retry decision
//!    (policy, attempts left, retry budget, retry breaker), backoff, and a pick that avoids
//!    the endpoints already tried. A try that finds `max_pending_requests` already waiting
//!    for a connection (see [`crate::pool`]) ends the request with 503 `circuit_open`.
//!
//! A response is passed downstream only once no retry follows, so no retry ever happens after
//! response bytes went downstream. While a retry on reset is still possible, a response body
//! of known length up to the replay buffer limit is read whole first, so a peer that dies
//! between the head and the end of the body costs a retry, not a truncated response. Every answer Trellis makes itself names its reason in
//! `x-trellis-reason`; gRPC callers get a trailers-only gRPC status instead of an HTTP error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::Either;
use hyper::body::Incoming;

use super::{Decision, Extra, record_local, upstream_failure};
use crate::accesslog;
use crate::body::{Replay, ReqBody, collect};
use crate::http::{
    ProxyBody, Target, UpstreamError, grpc_reply, is_grpc, local_reply, strip_hop_by_hop,
};
use crate::metrics::FaultKind;
use crate::mtls::connect::prepare_h2;
use crate::pool::UpstreamBody;
use crate::resilience::retry::{self, Outcome, RetryPolicy};
use crate::resilience::{RoutePolicy, fault, reason, timeout};
use crate::shared::Shared;

type Boxed = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// Runs `req` through the resilience layers (see the module doc).
pub(super) fn forward(
    d: Decision,
    extra: Extra,
    req: Request<Incoming>,
    start: Instant,
    shared: Arc<Shared>,
) -> Boxed {
    Box::pin(run(d, extra, req, start, shared))
}

/// The policy of a route without one (its cluster has breakers, a budget or outlier
/// detection, or the caller sent `grpc-timeout`).
static NO_POLICY: std::sync::LazyLock<Arc<RoutePolicy>> =
    std::sync::LazyLock::new(|| Arc::new(RoutePolicy::default()));

/// How one try failed before a response head.
enum TryError {
    Upstream(UpstreamError),
    Timeout,
    NoIdentity,
    /// A circuit breaker (`maxPendingRequests`) refused to let it wait for a connection.
    Overflow(String),
}

async fn run(
    d: Decision,
    extra: Extra,
    mut req: Request<Incoming>,
    start: Instant,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let grpc = is_grpc(req.headers());
    let policy = extra.policy.unwrap_or_else(|| NO_POLICY.clone());
    // Faults first, as Envoy's fault filter runs before its router: a delay holds no endpoint,
    // breaker slot or deadline; an abort costs nothing upstream.
    let (d, begun) = match policy.faults.as_deref() {
        None => (d, start),
        Some(f) => {
            let injection = f.decide(req.method(), req.headers(), || {
                rand::random_range(0..fault::PER_MILLION)
            });
            match inject(injection, d, extra.hash, grpc, start).await {
                Ok(next) => next,
                Err(resp) => return resp,
            }
        }
    };
    let caller_deadline = if req.version() == Version::HTTP_2 {
        timeout::grpc_timeout(req.headers())
    } else {
        None
    };
    let deadline = timeout::effective(policy.request_timeout, caller_deadline);
    let metrics = d.metrics.clone();
    let cluster = d.cluster.clone();
    accesslog::note(&req, &cluster.name, None);
    // The breaker first: an overflowing request costs nothing upstream.
    let _slot = match cluster.resilience.as_ref().and_then(|r| r.breaker.as_ref()) {
        Some(b) => match b.try_request() {
            Some(slot) => Some(slot),
            None => {
                drop(d.load);
                let resp = reply(
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    reason::CIRCUIT_OPEN,
                    format!(
                        "trellis: cluster `{}` has {} requests in flight (circuitBreakers.maxRequests)\n",
                        cluster.name, b.limits.max_requests
                    ),
                );
                record_local(&metrics, &resp, start);
                return resp;
            }
        },
        None => None,
    };
    if let Some(budget) = cluster.resilience.as_ref().and_then(|r| r.budget.as_ref()) {
        budget.on_request(start);
    }
    strip_hop_by_hop(req.headers_mut());
    let tries = tries(d, extra.hash, req, start, &shared, policy, grpc);
    match deadline {
        None => tries.await,
        Some(t) => match tokio::time::timeout_at((begun + t).into(), tries).await {
            Ok(resp) => resp,
            Err(_) => {
                let resp = reply(
                    grpc,
                    StatusCode::GATEWAY_TIMEOUT,
                    reason::UPSTREAM_TIMEOUT,
                    format!(
                        "trellis: no response from cluster `{}` within {t:?}\n",
                        cluster.name
                    ),
                );
                record_local(&metrics, &resp, start);
                resp
            }
        },
    }
}

/// Applies `injection`: the delay (the balancer's pick is given back for the wait and made
/// again after it, so the wait is no endpoint's load or latency), then the abort. `Ok`: the
/// request goes on with this decision, its timers starting at the returned instant.
async fn inject(
    injection: fault::Injection,
    d: Decision,
    hash: Option<u64>,
    grpc: bool,
    start: Instant,
) -> Result<(Decision, Instant), Response<ProxyBody>> {
    let mut d = d;
    let mut begun = start;
    if let Some(wait) = injection.delay {
        d.metrics.fault(FaultKind::Delay);
        let Decision {
            cluster,
            load,
            metrics,
            ..
        } = d;
        drop(load);
        tokio::time::sleep(wait).await;
        begun = Instant::now();
        let picked = cluster
            .pick(hash, begun, 0)
            .filter(|p| p.index < cluster.endpoints.len());
        let Some(p) = picked else {
            let resp = reply(
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_endpoints",
                format!(
                    "trellis: cluster `{}` has no healthy endpoints\n",
                    cluster.name
                ),
            );
            record_local(&metrics, &resp, start);
            return Err(resp);
        };
        d = Decision {
            cluster,
            index: p.index,
            load: p.load,
            metrics,
        };
    }
    if let Some(status) = injection.abort {
        drop(d.load);
        d.metrics.fault(FaultKind::Abort);
        let text = "trellis: fault injected: abort (faults.abort of the service or route)\n";
        let resp = if grpc {
            grpc_reply(status.grpc_code(), reason::FAULT_ABORT, text)
        } else {
            local_reply(status.http_status(), reason::FAULT_ABORT, text)
        };
        record_local(&d.metrics, &resp, start);
        return Err(resp);
    }
    Ok((d, begun))
}

/// Reads up to `limit` bytes of `body`: the whole body (replayable), or, when it is larger,
/// what was read followed by the rest (sent once, not retried).
async fn buffer(mut body: Incoming, limit: usize) -> Result<Result<Replay, ReqBody>, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Ok(Replay::default()));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Err(ReqBody::Stream(body)));
    }
    Ok(collect(&mut body, limit)
        .await?
        .map_err(|prefix| ReqBody::Prefixed {
            prefix: Some(prefix),
            rest: body,
        }))
}

/// A fresh request with `parts`' head and `body`.
fn rebuild(parts: &Parts, body: ReqBody) -> Request<ReqBody> {
    let mut r = Request::new(body);
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    accesslog::carry_slot(&parts.extensions, r.extensions_mut());
    r
}

async fn tries(
    d: Decision,
    hash: Option<u64>,
    req: Request<Incoming>,
    start: Instant,
    shared: &Shared,
    policy: Arc<RoutePolicy>,
    grpc: bool,
) -> Response<ProxyBody> {
    let Decision {
        cluster,
        index,
        load,
        metrics,
    } = d;
    let resilience = cluster.resilience.clone();
    let outlier = resilience.as_ref().and_then(|r| r.outlier.as_ref());
    let version = req.version();
    let (parts, body) = req.into_parts();
    let mut parts = Some(parts);
    let retry: Option<&RetryPolicy> = policy.retry.as_ref().filter(|r| {
        parts
            .as_ref()
            .is_some_and(|p| retry::method_retriable(r, &p.method))
    });
    let (replay, mut first) = match retry {
        None => (None, Some(ReqBody::Stream(body))),
        Some(r) => match buffer(body, r.buffer_limit).await {
            Ok(Ok(replay)) => (Some(replay), None),
            Ok(Err(stream)) => (None, Some(stream)),
            Err(e) => {
                let resp = reply(
                    grpc,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("trellis: reading the request body failed: {e}\n"),
                );
                record_local(&metrics, &resp, start);
                return resp;
            }
        },
    };
    let retries_allowed = match (retry, &replay) {
        (Some(r), Some(_)) => r.attempts,
        _ => 0,
    };
    let mut index = index;
    let mut load = Some(load);
    let mut tried: u64 = 0;
    let mut _retry_slot = None;
    let mut attempt = 0u32;
    loop {
        if attempt > 0 {
            let Some(p) = cluster.pick(hash, Instant::now(), tried) else {
                break;
            };
            index = p.index;
            load = Some(p.load);
        }
        if index < 64 {
            tried |= 1 << index;
        }
        let body = match (&replay, first.take()) {
            (Some(r), _) => ReqBody::Replay(r.fresh()),
            (None, Some(b)) => b,
            (None, None) => break,
        };
        // The last try the policy allows takes the head itself; earlier ones send a copy.
        let req = if attempt >= retries_allowed {
            parts.take().map(|p| Request::from_parts(p, body))
        } else {
            parts.as_ref().map(|p| rebuild(p, body))
        };
        let Some(req) = req else { break };
        let sent = send_try(shared, &cluster, index, req, start);
        // While a reset can still be retried, a small body of known length is read whole
        // before its head goes downstream: a peer dying mid-body is then retried, not a
        // truncated response.
        let read_limit = retry
            .filter(|r| attempt < retries_allowed && retry::retriable(r, Outcome::Reset))
            .map(|r| r.buffer_limit);
        let sent = async move {
            let resp = sent.await?;
            match read_limit {
                None => Ok(resp),
                Some(limit) => {
                    let (head, body) = resp.into_parts();
                    match body.read_whole(limit).await {
                        Ok(body) => Ok(Response::from_parts(head, body)),
                        Err(e) => Err(TryError::Upstream(UpstreamError::Body(e))),
                    }
                }
            }
        };
        let result = match policy.per_try_timeout {
            None => sent.await,
            Some(t) => tokio::time::timeout(t, sent)
                .await
                .unwrap_or(Err(TryError::Timeout)),
        };
        let outcome = match &result {
            Ok(resp) => Outcome::Response {
                status: resp.status().as_u16(),
                grpc: retry::grpc_status(resp.headers()),
            },
            Err(TryError::Upstream(e)) if e.is_connect() => Outcome::ConnectFailure,
            Err(TryError::Timeout) => Outcome::Timeout,
            Err(_) => Outcome::Reset,
        };
        let now = Instant::now();
        let local = matches!(
            result,
            Err(TryError::NoIdentity)
                | Err(TryError::Overflow(_))
                | Err(TryError::Upstream(UpstreamError::Uri(_)))
        );
        if !local
            && let Some(o) = outlier
            && o.record(index, outcome, now)
        {
            metrics.ejection();
            tracing::debug!(cluster = %cluster.name, endpoint = %cluster.endpoints[index].authority, "endpoint ejected by outlier detection");
        }
        // A local refusal is no upstream failure: neither ejected for nor retried.
        let wants_retry = !local
            && retry.is_some_and(|r| retry::retriable(r, outcome))
            && attempt < retries_allowed;
        if !wants_retry {
            return finish(
                result, &cluster, index, load, &metrics, version, start, grpc, None,
            );
        }
        // The budget, then the retry breaker: either refusing ends the request as it is.
        if let Some(b) = resilience.as_ref().and_then(|r| r.budget.as_ref())
            && !b.try_retry(now)
        {
            return finish(
                result,
                &cluster,
                index,
                load,
                &metrics,
                version,
                start,
                grpc,
                Some(reason::RETRY_BUDGET_EXHAUSTED),
            );
        }
        if let Some(b) = resilience.as_ref().and_then(|r| r.breaker.as_ref()) {
            match b.try_retry() {
                Some(slot) => _retry_slot = Some(slot),
                None => {
                    return finish(
                        result,
                        &cluster,
                        index,
                        load,
                        &metrics,
                        version,
                        start,
                        grpc,
                        Some(reason::CIRCUIT_OPEN),
                    );
                }
            }
        }
        drop(result);
        drop(load.take());
        metrics.retry();
        if let Some(r) = retry {
            let wait = retry::backoff(
                r.backoff_base,
                r.backoff_max,
                attempt,
                rand::random::<f64>(),
            );
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        attempt += 1;
    }
    let resp = reply(
        grpc,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_endpoints",
        format!(
            "trellis: cluster `{}` has no endpoint left to try\n",
            cluster.name
        ),
    );
    record_local(&metrics, &resp, start);
    resp
}

/// Sends one try to endpoint `index`.
fn send_try(
    shared: &Shared,
    cluster: &crate::upstream::UpstreamCluster,
    index: usize,
    mut req: Request<ReqBody>,
    start: Instant,
) -> impl Future<Output = Result<Response<UpstreamBody>, TryError>> + Send + 'static + use<> {
    use futures_util::FutureExt;
    use futures_util::future::Either as FutEither;
    let endpoint = &cluster.endpoints[index];
    let breaker = cluster.resilience.as_ref().and_then(|r| r.breaker.as_ref());
    let refused = |e: UpstreamError| {
        if e.is_overflow() {
            TryError::Overflow(e.to_string())
        } else {
            TryError::Upstream(e)
        }
    };
    accesslog::note(&req, &cluster.name, Some(&endpoint.authority));
    if let Some(mtls) = &endpoint.mtls {
        let Some(tls) = shared.tls.get() else {
            return FutEither::Left(FutEither::Left(std::future::ready(Err(
                TryError::NoIdentity,
            ))));
        };
        if let Err(e) = prepare_h2(&mut req, &endpoint.authority) {
            return FutEither::Left(FutEither::Left(std::future::ready(Err(
                TryError::Upstream(UpstreamError::Uri(e)),
            ))));
        }
        return FutEither::Left(FutEither::Right(
            mtls.send(tls, req, start, breaker)
                .map(move |r| r.map_err(|e| refused(UpstreamError::Mtls(e)))),
        ));
    }
    if req.version() != Version::HTTP_2
        && !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let to = Target {
        pool: &endpoint.pool,
        authority: &endpoint.authority,
        h2: &cluster.clients.h2,
        breaker,
    };
    FutEither::Right(crate::http::send(req, to, start).map(move |r| r.map_err(refused)))
}

/// The answer once no retry follows: the upstream's response as it is, or an error reply.
/// `refused` names why a wanted retry did not happen (budget or breaker), for the error reply.
#[allow(clippy::too_many_arguments)]
fn finish(
    result: Result<Response<UpstreamBody>, TryError>,
    cluster: &crate::upstream::UpstreamCluster,
    index: usize,
    load: Option<crate::balance::LoadGuard>,
    metrics: &crate::metrics::ServiceMetrics,
    version: Version,
    start: Instant,
    grpc: bool,
    refused: Option<&'static str>,
) -> Response<ProxyBody> {
    let endpoint = &cluster.endpoints[index];
    let (status, why, text) = match result {
        Ok(resp) => {
            if let Some(l) = load {
                l.complete();
            }
            let (mut head, body) = resp.into_parts();
            strip_hop_by_hop(&mut head.headers);
            head.version = version;
            metrics.record(head.status, start.elapsed());
            return Response::from_parts(head, Either::Left(body));
        }
        Err(TryError::NoIdentity) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no_identity",
            format!(
                "trellis: cluster `{}` serves mTLS only, but this sidecar has no workload certificate\n",
                cluster.name
            ),
        ),
        Err(TryError::Timeout) => (
            StatusCode::GATEWAY_TIMEOUT,
            reason::UPSTREAM_TIMEOUT,
            format!(
                "trellis: {} (cluster `{}`) did not answer within the per-try timeout\n",
                endpoint.authority, cluster.name
            ),
        ),
        Err(TryError::Overflow(text)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            reason::CIRCUIT_OPEN,
            format!("trellis: cluster `{}`: {text}\n", cluster.name),
        ),
        Err(TryError::Upstream(e)) => upstream_failure(cluster, endpoint, &e, metrics),
    };
    drop(load);
    let (status, why, text) = match refused {
        Some(r) if r == reason::RETRY_BUDGET_EXHAUSTED => (
            StatusCode::SERVICE_UNAVAILABLE,
            r,
            format!(
                "trellis: retry budget of cluster `{}` exhausted after: {text}",
                cluster.name
            ),
        ),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            r,
            format!("trellis: retry skipped (circuitBreakers.maxRetries) after: {text}"),
        ),
        None => (status, why, text),
    };
    let resp = reply(grpc, status, why, text);
    record_local(metrics, &resp, start);
    resp
}

/// A local answer: HTTP status with `x-trellis-reason`, or for gRPC callers a trailers-only
/// response (HTTP 200) with `grpc-status` 4 (DEADLINE_EXCEEDED) for timeouts, 3
/// (INVALID_ARGUMENT) for bad requests and 14 (UNAVAILABLE) otherwise.
fn reply(
    grpc: bool,
    status: StatusCode,
    why: &'static str,
    text: impl Into<String>,
) -> Response<ProxyBody> {
    let text = text.into();
    if !grpc {
        return local_reply(status, why, Bytes::from(text));
    }
    let code = match status {
        StatusCode::GATEWAY_TIMEOUT => 4,
        StatusCode::BAD_REQUEST => 3,
        _ => 14,
    };
    grpc_reply(code, why, &text)
}
