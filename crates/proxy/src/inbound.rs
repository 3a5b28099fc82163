//! The inbound listener: traffic from other sidecars to this app. Everything is forwarded to
//! 127.0.0.1:<app-port> over pooled connections — HTTP/2 when the caller spoke HTTP/2 or the
//! app is declared `http2`/`grpc`, HTTP/1.1 otherwise.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use trellis_model::Protocol;

use crate::http::{HttpClients, ProxyBody, local_reply, strip_hop_by_hop};
use crate::metrics::{Direction, ServiceMetrics};
use crate::outbound::error_chain;
use crate::server::Handler;

/// Connect timeout to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Inbound {
    app: Authority,
    app_h2: bool,
    clients: HttpClients,
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
            clients: shared.clients.get(APP_CONNECT_TIMEOUT),
            metrics: shared.metrics.service(Direction::Inbound, &c.service),
        }
    }
}

impl Handler for Inbound {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        let start = Instant::now();
        async move {
            let resp = self.forward(req).await;
            self.metrics.record(resp.status(), start.elapsed());
            resp
        }
    }
}

impl Inbound {
    async fn forward(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let downstream = req.version();
        let h2 = self.app_h2 || downstream == Version::HTTP_2;
        strip_hop_by_hop(req.headers_mut());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.app.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => {
                return local_reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("trellis: cannot forward this request URI: {e}\n"),
                );
            }
        }
        let client = if h2 {
            *req.version_mut() = Version::HTTP_2;
            &self.clients.h2
        } else {
            &self.clients.h1
        };
        match client.request(req).await {
            Ok(resp) => {
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.version = downstream;
                Response::from_parts(head, Either::Left(body))
            }
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
