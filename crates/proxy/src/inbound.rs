//! The inbound listener: traffic from other sidecars to this app. Everything is forwarded to
//! 127.0.0.1:<app-port> over pooled connections — HTTP/2 when the caller spoke HTTP/2 or the
//! app is declared `http2`/`grpc`, HTTP/1.1 otherwise.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use trellis_model::Protocol;

use crate::http::{HttpClients, ProxyBody, Target, UpstreamError, local_reply, strip_hop_by_hop};
use crate::metrics::{Direction, ServiceMetrics};
use crate::outbound::error_chain;
use crate::pool::{EndpointPool, UpstreamBody};
use crate::server::{ConnInfo, Handler};

/// Connect timeout to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Inbound {
    app: Authority,
    app_h2: bool,
    clients: HttpClients,
    /// HTTP/1.1 connections to the app.
    pool: Arc<EndpointPool>,
    metrics: Arc<ServiceMetrics>,
}

impl Inbound {
    pub fn new(shared: &crate::shared::Shared) -> Self {
        let c = &shared.config;
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, c.app_port));
        Inbound {
            app: Authority::try_from(app.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("127.0.0.1:80")),
            app_h2: matches!(c.app_protocol, Protocol::Http2 | Protocol::Grpc),
            pool: shared.clients.get(APP_CONNECT_TIMEOUT).h1.endpoint(app),
            clients: shared.clients.get(APP_CONNECT_TIMEOUT),
            metrics: shared.metrics.service(Direction::Inbound, &c.service),
        }
    }
}

impl Handler for Inbound {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: &ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<> {
        let start = Instant::now();
        // Prepared and handed to the app's connection here; the future only waits.
        let (downstream, sent) = self.send(req, start);
        sent.map(move |result| {
            let resp = self.finish(result, downstream);
            self.metrics.record(resp.status(), start.elapsed());
            resp
        })
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
        };
        (downstream, crate::http::send(req, to, start))
    }

    fn finish(
        &self,
        result: Result<Response<UpstreamBody>, UpstreamError>,
        downstream: Version,
    ) -> Response<ProxyBody> {
        match result {
            Ok(resp) => {
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.version = downstream;
                Response::from_parts(head, Either::Left(body))
            }
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
