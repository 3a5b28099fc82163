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

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::{Decision, Extra, record_local, upstream_failure};
use crate::accesslog;
use crate::body::{Replay, ReqBody, collect};
use crate::http::{
    ProxyBody, Target, UpstreamError, grpc_reply, is_grpc, local_reply, strip_hop_by_hop,
};
use crate::metrics::FaultKind;
use crate::mtls::connect::prepare_h2;
use crate::pool::UpstreamBody;
use crate::pool::h1::Head;
use crate::resilience::retry::{self, Outcome, RetryPolicy};
use crate::resilience::{RoutePolicy, fault, reason, timeout};
use crate::shared::Shared;

type Boxed = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// Runs `req` through the resilience layers (see the module doc). What depends on the request
/// head is done before this returns, so the head is let go before anything is awaited: hyper
/// polls the downstream connection while the request waits, and its read buffer is then
/// reused instead of reallocated.
pub(super) fn forward(
    d: Decision,
    extra: Extra,
    mut req: Request<Incoming>,
    start: Instant,
    shared: Arc<Shared>,
) -> Boxed {
    let grpc = is_grpc(req.headers());
    let policy = extra.policy.unwrap_or_else(|| NO_POLICY.clone());
    let injection = policy.faults.as_deref().map(|f| {
        f.decide(req.method(), req.headers(), || {
            rand::random_range(0..fault::PER_MILLION)
        })
    });
    let version = req.version();
    let caller_deadline = if version == Version::HTTP_2 {
        timeout::grpc_timeout(req.headers())
    } else {
        None
    };
    let retries_method = policy
        .retry
        .as_ref()
        .is_some_and(|r| retry::method_retriable(r, req.method()));
    accesslog::note(&req, &d.cluster.name, None);
    strip_hop_by_hop(req.headers_mut());
    if version != Version::HTTP_2 {
        crate::http::host_from_authority(&mut req);
    }
    let (parts, body) = req.into_parts();
    let head = if version != Version::HTTP_2 && d.cluster.tls.is_none() {
        let pool = &d.cluster.endpoints[d.index].pool;
        TryHead::Encoded {
            head: Some(pool.encode(&parts, body.is_end_stream())),
            extensions: parts.extensions,
        }
    } else {
        TryHead::Parts(Some(parts))
    };
    let request = Prepared {
        head,
        body,
        version,
        grpc,
        injection,
        caller_deadline,
        retries_method,
    };
    Box::pin(run(d, extra.hash, policy, request, start, shared))
}

/// What [`forward`] took from the request.
struct Prepared {
    head: TryHead,
    body: Incoming,
    version: Version,
    /// The caller speaks gRPC (errors are answered as gRPC statuses).
    grpc: bool,
    /// The faults to inject, when the route or service has any.
    injection: Option<fault::Injection>,
    /// The caller's own deadline (`grpc-timeout`).
    caller_deadline: Option<std::time::Duration>,
    /// The route retries and the method may be retried.
    retries_method: bool,
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
    hash: Option<u64>,
    policy: Arc<RoutePolicy>,
    request: Prepared,
    start: Instant,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let Prepared {
        mut head,
        body,
        version,
        grpc,
        injection,
        caller_deadline,
        retries_method,
    } = request;
    // Faults first, as Envoy's fault filter runs before its router: a delay holds no endpoint,
    // breaker slot or deadline; an abort costs nothing upstream.
    let (d, begun) = match injection {
        None => (d, start),
        Some(injection) => match inject(injection, d, hash, grpc, start).await {
            Ok(next) => next,
            Err(resp) => return resp,
        },
    };
    let deadline = timeout::effective(policy.request_timeout, caller_deadline);
    let Decision {
        cluster,
        index,
        load,
        metrics,
    } = d;
    let resilience = cluster.resilience.as_deref();
    // The breaker first: an overflowing request costs nothing upstream.
    let _slot = match resilience.and_then(|r| r.breaker.as_ref()) {
        Some(b) => match b.try_request() {
            Some(slot) => Some(slot),
            None => {
                drop(load);
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
    if let Some(budget) = resilience.and_then(|r| r.budget.as_ref()) {
        budget.on_request(start);
    }
    // One timer for the request: armed for the sooner of the request's deadline and the
    // current try's, and only registered with the runtime if a wait is ever pending.
    let request_deadline = deadline.map(|t| begun + t);
    let mut timer = pin!(None::<Sleep>);
    let timed_out = || {
        let t = deadline.unwrap_or_default();
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
    };

    let outlier = resilience.and_then(|r| r.outlier.as_ref());
    let retry: Option<&RetryPolicy> = policy.retry.as_ref().filter(|_| retries_method);
    let mut try_start = begun;
    let (replay, mut first) = match retry {
        None => (None, Some(ReqBody::Stream(body))),
        Some(_) if body.is_end_stream() => (Some(Replay::default()), None),
        Some(r) => {
            arm(&mut timer, request_deadline);
            let buffered = race(pin!(buffer(body, r.buffer_limit)), timer.as_mut()).await;
            try_start = Instant::now();
            match buffered {
                None => return timed_out(),
                Some(Ok(Ok(replay))) => (Some(replay), None),
                Some(Ok(Err(stream))) => (None, Some(stream)),
                Some(Err(e)) => {
                    let resp = reply(
                        grpc,
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("trellis: reading the request body failed: {e}\n"),
                    );
                    record_local(&metrics, &resp, start);
                    return resp;
                }
            }
        }
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
            try_start = Instant::now();
            let Some(p) = cluster.pick(hash, try_start, tried) else {
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
        // The sooner of the two deadlines; `per_try`: it is this try's own.
        let try_deadline = policy.per_try_timeout.map(|t| try_start + t);
        let (at, per_try) = match (try_deadline, request_deadline) {
            (Some(p), Some(r)) if p < r => (Some(p), true),
            (Some(p), None) => (Some(p), true),
            (_, r) => (r, false),
        };
        arm(&mut timer, at);
        let last = attempt >= retries_allowed;
        let Some(sent) = send_try(&shared, &cluster, index, &mut head, last, body, start) else {
            break;
        };
        let result = match race(pin!(sent), timer.as_mut()).await {
            Some(result) => result,
            None if per_try => Err(TryError::Timeout),
            None => return timed_out(),
        };
        // While a reset can still be retried, a small body of known length is read whole
        // before its head goes downstream: a peer dying mid-body is then retried, not a
        // truncated response.
        let read_limit = retry
            .filter(|r| !last && retry::retriable(r, Outcome::Reset))
            .map(|r| r.buffer_limit);
        let result = match (result, read_limit) {
            (Ok(resp), Some(limit)) => {
                let (head, body) = resp.into_parts();
                match race(pin!(body.read_whole(limit)), timer.as_mut()).await {
                    Some(Ok(body)) => Ok(Response::from_parts(head, body)),
                    Some(Err(e)) => Err(TryError::Upstream(UpstreamError::Body(e))),
                    None if per_try => Err(TryError::Timeout),
                    None => return timed_out(),
                }
            }
            (result, _) => result,
        };
        let outcome = match &result {
            Ok(resp) => Outcome::Response {
                status: resp.status().as_u16(),
                grpc: grpc.then(|| retry::grpc_status(resp.headers())).flatten(),
            },
            Err(TryError::Upstream(e)) if e.is_connect() => Outcome::ConnectFailure,
            Err(TryError::Timeout) => Outcome::Timeout,
            Err(_) => Outcome::Reset,
        };
        let local = matches!(
            result,
            Err(TryError::NoIdentity)
                | Err(TryError::Overflow(_))
                | Err(TryError::Upstream(UpstreamError::Uri(_)))
        );
        if !local
            && let Some(o) = outlier
            && o.record(index, outcome, Instant::now())
        {
            metrics.ejection();
            tracing::debug!(cluster = %cluster.name, endpoint = %cluster.endpoints[index].authority, "endpoint ejected by outlier detection");
        }
        // A local refusal is no upstream failure: neither ejected for nor retried.
        let wants_retry = !local && !last && retry.is_some_and(|r| retry::retriable(r, outcome));
        let next = if !wants_retry {
            Next::Answer(None)
        } else if resilience
            .and_then(|r| r.budget.as_ref())
            .is_some_and(|b| !b.try_retry(Instant::now()))
        {
            Next::Answer(Some(reason::RETRY_BUDGET_EXHAUSTED))
        } else if let Some(b) = resilience.and_then(|r| r.breaker.as_ref()) {
            match b.try_retry() {
                Some(slot) => {
                    _retry_slot = Some(slot);
                    Next::Retry
                }
                None => Next::Answer(Some(reason::CIRCUIT_OPEN)),
            }
        } else {
            Next::Retry
        };
        if let Next::Answer(refused) = next {
            return finish(
                result, &cluster, index, load, &metrics, version, start, grpc, refused,
            );
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
                // The wait ends early, in a timeout, when the request's deadline comes first.
                let until = Instant::now() + wait;
                let expires = request_deadline.filter(|d| *d <= until);
                arm(&mut timer, Some(expires.unwrap_or(until)));
                if let Some(t) = timer.as_mut().as_pin_mut() {
                    t.await;
                }
                if expires.is_some() {
                    return timed_out();
                }
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

/// Sets `timer` to fire at `at` (`None`: never): a new timer the first time (registered with
/// the runtime only when first polled), else the same one moved.
fn arm(timer: &mut Pin<&mut Option<Sleep>>, at: Option<Instant>) {
    let Some(at) = at.map(tokio::time::Instant::from_std) else {
        timer.set(None);
        return;
    };
    match timer.as_mut().as_pin_mut() {
        Some(t) if t.deadline() == at => {}
        Some(t) => t.reset(at),
        None => timer.set(Some(tokio::time::sleep_until(at))),
    }
}

/// Polls `fut` until it is ready (`Some`) or `timer` fires first (`None`); without a timer,
/// until it is ready. The future is polled first, so an answer that is ready when the timer
/// fires still counts.
fn race<'a, F: Future>(
    mut fut: Pin<&'a mut F>,
    mut timer: Pin<&'a mut Option<Sleep>>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    poll_fn(move |cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match timer.as_mut().as_pin_mut() {
            Some(t) => t.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
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

/// The request head the tries send.
enum TryHead {
    /// HTTP/1.x to a plaintext cluster: encoded once for every try (the last one takes it),
    /// and the downstream head let go before the first try is sent, so hyper can reuse its
    /// read buffer while the answer is awaited.
    Encoded {
        head: Option<Head>,
        extensions: http::Extensions,
    },
    /// HTTP/2, or a cluster with mTLS endpoints: each try needs a request of its own, a copy
    /// of this head or, on the last try, the head itself.
    Parts(Option<Parts>),
}

/// Sends one try to endpoint `index`; `None` when the head was taken by a last try (so no
/// try follows one).
fn send_try(
    shared: &Shared,
    cluster: &crate::upstream::UpstreamCluster,
    index: usize,
    head: &mut TryHead,
    last: bool,
    body: ReqBody,
    start: Instant,
) -> Option<impl Future<Output = Result<Response<UpstreamBody>, TryError>> + Send + 'static + use<>>
{
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
    let parts = match head {
        TryHead::Encoded { head, extensions } => {
            accesslog::note_in(extensions, &cluster.name, Some(&endpoint.authority));
            let head = if last {
                head.take()?
            } else {
                head.as_ref()?.clone()
            };
            return Some(FutEither::Right(FutEither::Right(
                endpoint
                    .pool
                    .send_head(head, body, start, breaker)
                    .map(move |r| r.map_err(|e| refused(UpstreamError::H1(e)))),
            )));
        }
        TryHead::Parts(parts) => parts,
    };
    accesslog::note_in(
        &parts.as_ref()?.extensions,
        &cluster.name,
        Some(&endpoint.authority),
    );
    let mut req = if last {
        Request::from_parts(parts.take()?, body)
    } else {
        rebuild(parts.as_ref()?, body)
    };
    if let Some(mtls) = &endpoint.mtls {
        let Some(tls) = shared.tls.get() else {
            let failed = Err(TryError::NoIdentity);
            return Some(FutEither::Left(std::future::ready(failed).left_future()));
        };
        if let Err(e) = prepare_h2(&mut req, &endpoint.authority) {
            let failed = Err(TryError::Upstream(UpstreamError::Uri(e)));
            return Some(FutEither::Left(std::future::ready(failed).left_future()));
        }
        // Boxed, so the plaintext tries' future keeps its size.
        let sent = mtls.send(tls, req, start, breaker);
        let sent: Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(sent.map(move |r| r.map_err(|e| refused(UpstreamError::Mtls(e)))));
        return Some(FutEither::Left(sent.right_future()));
    }
    let to = Target {
        pool: &endpoint.pool,
        authority: &endpoint.authority,
        h2: &cluster.clients.h2,
        breaker,
    };
    Some(FutEither::Right(FutEither::Left(
        crate::http::send(req, to, start).map(move |r| r.map_err(refused)),
    )))
}

/// What follows a try.
enum Next {
    /// Another try.
    Retry,
    /// This try's result is the answer. With a reason when a retry was wanted and the retry
    /// budget or the retry circuit breaker refused it.
    Answer(Option<&'static str>),
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
            let resp = crate::http::downstream_response(resp, version);
            metrics.record(resp.status(), start.elapsed());
            return resp;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_timer_ends_waits_and_is_moved_or_disarmed_between_them() {
        let mut timer = pin!(None::<Sleep>);
        let begun = Instant::now();
        // Armed: a wait that never ends is cut at the deadline.
        arm(&mut timer, Some(begun + Duration::from_millis(10)));
        let waited = race(pin!(std::future::pending::<()>()), timer.as_mut()).await;
        assert_eq!(waited, None);
        // An answer that is ready when the timer has already fired still counts.
        assert_eq!(
            race(pin!(std::future::ready(5)), timer.as_mut()).await,
            Some(5)
        );
        // Moved later: the same timer fires again, at the new deadline.
        let later = begun + Duration::from_secs(2);
        arm(&mut timer, Some(later));
        let waited = race(pin!(std::future::pending::<()>()), timer.as_mut()).await;
        assert_eq!(waited, None);
        assert!(tokio::time::Instant::now() >= tokio::time::Instant::from_std(later));
        // Disarmed: a fired timer no longer ends a wait.
        arm(&mut timer, None);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            7
        };
        assert_eq!(race(pin!(slow), timer.as_mut()).await, Some(7));
    }
}
