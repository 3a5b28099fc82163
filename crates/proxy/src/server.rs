//! Serving one listener: accept, serve each connection with hyper-util's auto HTTP/1.1 + h2c
//! builder, and on shutdown stop accepting and drain in-flight requests up to a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::ProxyBody;

/// What is known about one downstream connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The caller's SPIFFE ID from its verified client certificate; `None` for plaintext.
    pub peer_id: Option<Arc<str>>,
}

/// A listener's request handler.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<Self>;
}

/// Serves `listener` until `stop` turns true, then drains for at most `drain`.
pub(crate) async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                // `map`, not an `async` block that would hold the handler's future twice.
                let info = ConnInfo { peer, peer_id: None };
                let svc = hyper::service::service_fn(move |req| {
                    h.clone().call(req, &info).map(Ok::<_, Infallible>)
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(listener = name, "drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = name, ?drain, "drain timeout: closing remaining connections");
        }
    }
}
