//! The inbound listener: traffic from other sidecars to this app, admitted by the service's
//! security config, then forwarded to 127.0.0.1:<app-port> over pooled connections — HTTP/2
//! when the caller spoke HTTP/2 or the app is declared `http2`/`grpc`, HTTP/1.1 otherwise.
//!
//! Each request, top to bottom (crate::authz's order):
//! 1. no inbound security config received yet → refused, 503 `not_ready` (fail closed);
//! 2. the path is normalized and the request URI rewritten ([`admit::normalize_uri`]), or 400;
//! 3. with RequestAuthentication providers: authenticate (async, the only boxed future) — an
//!    invalid token is 401, a missing one continues without claims; client copies of the
//!    claims-forwarding headers are stripped and the verified one added;
//! 4. with AuthorizationPolicies: decide over the caller's SPIFFE ID, method, path, headers
//!    and claims, or 403 `rbac_denied`;
//! 5. with a RateLimitPolicy: take a token (crate::ratelimit), or 429 `rate_limited`;
//! 6. forward.
//!
//! gRPC callers get their refusals as gRPC statuses ([`refusal`]). Without policies the path
//! costs one snapshot load and one scan of the path: no allocation, no extra future state.

mod admit;
mod refusal;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either as FutEither;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use trellis_model::Protocol;

use crate::authn::AuthnError;
use crate::http::is_grpc;
use crate::http::{HttpClients, ProxyBody, Target, UpstreamError, local_reply, strip_hop_by_hop};
use crate::metrics::{Direction, ServiceMetrics};
use crate::outbound::error_chain;
use crate::pool::{EndpointPool, UpstreamBody};
use crate::security::InboundSecurity;
use crate::server::{ConnInfo, Handler};
use crate::shared::Shared;
use admit::{Admit, admit, authorize, rate_limit};
use refusal::Refusal;

/// Connect timeout to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Inbound {
    /// For the live snapshot's inbound security config.
    shared: Arc<Shared>,
    app: Authority,
    /// `inbound|<app-port>`, for the access log.
    app_cluster: Arc<str>,
    app_h2: bool,
    clients: HttpClients,
    /// HTTP/1.1 connections to the app.
    pool: Arc<EndpointPool>,
    metrics: Arc<ServiceMetrics>,
    /// Requests refused by a rate limit, by rule (touched only when refusing).
    rate_limited: crate::metrics::RateLimitedFamily,
}

impl Inbound {
    pub fn new(shared: &Arc<Shared>) -> Self {
        let c = &shared.config;
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, c.app_port));
        Inbound {
            app: Authority::try_from(app.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("127.0.0.1:80")),
            app_cluster: Arc::from(trellis_model::wire::inbound_cluster_name(c.app_port)),
            app_h2: matches!(c.app_protocol, Protocol::Http2 | Protocol::Grpc),
            pool: shared.clients.get(APP_CONNECT_TIMEOUT).h1.endpoint(app),
            clients: shared.clients.get(APP_CONNECT_TIMEOUT),
            metrics: shared.metrics.service(Direction::Inbound, &c.service),
            rate_limited: shared.metrics.rate_limited.clone(),
            shared: shared.clone(),
        }
    }
}

/// The slow path's future (authentication may fetch keys or call an introspection endpoint).
type Authenticating = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send + 'static>>;

impl Handler for Inbound {
    fn call(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        let start = Instant::now();
        let authenticate = {
            let snap = self.shared.live.load();
            match admit(snap.inbound.as_deref(), &mut req, conn.peer_id.as_deref()) {
                Admit::Forward => {
                    if let Some(security) = snap.inbound.as_deref()
                        && let Err(r) = self.limit(security, &req, conn.peer_id.as_deref())
                    {
                        let resp = self.refuse(&r, is_grpc(req.headers()), start);
                        return FutEither::Left(std::future::ready(resp));
                    }
                    None
                }
                Admit::Authenticate => snap.inbound.clone(),
                Admit::Refuse(r) => {
                    let resp = self.refuse(&r, is_grpc(req.headers()), start);
                    return FutEither::Left(std::future::ready(resp));
                }
            }
        };
        match authenticate {
            None => FutEither::Right(FutEither::Left(self.forward(req, start))),
            Some(security) => {
                let slow: Authenticating =
                    Box::pin(self.authenticate(security, req, conn.peer_id.clone(), start));
                FutEither::Right(FutEither::Right(slow))
            }
        }
    }
}

impl Inbound {
    /// Sends the admitted request to the app and records it.
    fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        start: Instant,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        // Prepared and handed to the app's connection here; the future only waits.
        let (downstream, sent) = self.send(req, start);
        sent.map(move |result| {
            let resp = self.finish(result, downstream);
            self.metrics.record(resp.status(), start.elapsed());
            resp
        })
    }

    /// Steps 3 to 5 for a service with authentication providers.
    async fn authenticate(
        self: Arc<Self>,
        security: Arc<InboundSecurity>,
        mut req: Request<Incoming>,
        peer_id: Option<Arc<str>>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let authn = &security.authn;
        let result = authn.authenticate(req.headers(), req.uri().query()).await;
        authn.strip_forwarded(req.headers_mut());
        let claims = match result {
            Ok(verified) => {
                if let Some((name, value)) = verified.forward {
                    req.headers_mut().insert(name, value);
                }
                Some(verified.claims)
            }
            Err(AuthnError::Missing) => None,
            Err(e) => {
                tracing::debug!(peer = peer_id.as_deref().unwrap_or("-"), error = %e, "request not authenticated");
                let r = Refusal::Unauthenticated(e);
                return self.refuse(&r, is_grpc(req.headers()), start);
            }
        };
        if let Err(r) = authorize(&security.authz, &req, peer_id.as_deref(), claims.as_ref())
            .and_then(|()| self.limit(&security, &req, peer_id.as_deref()))
        {
            return self.refuse(&r, is_grpc(req.headers()), start);
        }
        drop(security);
        self.forward(req, start).await
    }

    /// Step 5: the rate limit, counted per rule when it refuses.
    fn limit<B>(
        &self,
        security: &InboundSecurity,
        req: &Request<B>,
        peer_id: Option<&str>,
    ) -> Result<(), Refusal> {
        rate_limit(security, req, peer_id).map_err(|(refusal, rule)| {
            self.rate_limited
                .get_or_create(&crate::metrics::RateLimitLabels {
                    service: self.shared.config.service.clone(),
                    rule,
                })
                .inc();
            refusal
        })
    }

    fn refuse(&self, refusal: &Refusal, grpc: bool, start: Instant) -> Response<ProxyBody> {
        let resp = refusal.response(grpc);
        self.metrics.record(resp.status(), start.elapsed());
        resp
    }
}

impl Inbound {
    fn send(
        &self,
        mut req: Request<Incoming>,
        start: Instant,
    ) -> (
        Version,
        impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'static + use<>,
    ) {
        let downstream = req.version();
        crate::accesslog::note(&req, &self.app_cluster, Some(&self.app));
        strip_hop_by_hop(req.headers_mut());
        if self.app_h2 {
            *req.version_mut() = Version::HTTP_2;
        } else if downstream != Version::HTTP_2
            && !req.headers().contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(self.app.as_str())
        {
            req.headers_mut().insert(header::HOST, v);
        }
        let to = Target {
            pool: &self.pool,
            authority: &self.app,
            h2: &self.clients.h2,
            breaker: None,
        };
        (downstream, crate::http::send(req, to, start))
    }

    fn finish(
        &self,
        result: Result<Response<UpstreamBody>, UpstreamError>,
        downstream: Version,
    ) -> Response<ProxyBody> {
        match result {
            Ok(resp) => crate::http::downstream_response(resp, downstream),
            Err(UpstreamError::Uri(e)) => local_reply(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("trellis: cannot forward this request URI: {e}\n"),
            ),
            Err(e) if e.is_connect() => {
                self.metrics.connect_error();
                local_reply(
                    StatusCode::BAD_GATEWAY,
                    "app_unavailable",
                    format!(
                        "trellis: the local app at {} is unavailable: {e}\n",
                        self.app
                    ),
                )
            }
            Err(e) => local_reply(
                StatusCode::BAD_GATEWAY,
                "app_error",
                format!(
                    "trellis: the local app at {} failed: {}\n",
                    self.app,
                    error_chain(&e)
                ),
            ),
        }
    }
}
