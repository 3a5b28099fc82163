//! Serving one listener: accept, serve each connection with hyper-util's auto HTTP/1.1 + h2c
//! builder, and on shutdown stop accepting and drain in-flight requests up to a deadline.
//! The inbound listener first passes each connection through [`mtls::accept`] (mTLS, or
//! plaintext in PERMISSIVE mode only) and serves the TLS stream with the caller's identity,
//! as HTTP, or as a raw byte stream ([`crate::tcp::inbound`]) when the caller asked for one
//! (ALPN `trellis-tcp`) or this sidecar's service is TCP.

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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::ProxyBody;
use crate::mtls::{self, accept::Accepted};
use crate::shared::Shared;
use crate::tcp;

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
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    serve_with(name, listener, handler, stop, drain, None).await;
}

/// The inbound listener: like [`serve`], but each connection first goes through
/// [`mtls::accept`] (mTLS, or plaintext only in PERMISSIVE mode), and requests another sidecar
/// upgraded to HTTP/2 are turned back into HTTP/1.x.
pub(crate) async fn serve_inbound<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    stop: watch::Receiver<bool>,
    drain: Duration,
    shared: Arc<Shared>,
) {
    serve_with("inbound", listener, handler, stop, drain, Some(shared)).await;
}

async fn serve_with<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    inbound: Option<Arc<Shared>>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
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
                let watcher = graceful.watcher();
                let h = handler.clone();
                let b = builder.clone();
                match &inbound {
                    None => {
                        let info = ConnInfo { peer, peer_id: None };
                        tokio::spawn(serve_conn(name, b, watcher, TokioIo::new(stream), info, h, false));
                    }
                    Some(shared) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            match mtls::accept::accept(stream, peer, &shared).await {
                                Some(Accepted::Tls { stream, peer_id }) => {
                                    // A raw TCP stream: asked for (ALPN), or the service is TCP.
                                    let raw = stream.get_ref().1.alpn_protocol() == Some(tcp::ALPN_TCP);
                                    if raw || tcp::inbound::serves_tcp(&shared) {
                                        tcp::inbound::serve(stream, peer, peer_id, shared).await;
                                        return;
                                    }
                                    let info = ConnInfo { peer, peer_id };
                                    serve_conn(name, b, watcher, TokioIo::new(stream), info, h, true).await;
                                }
                                Some(Accepted::Plain(stream)) if tcp::inbound::serves_tcp(&shared) => {
                                    tcp::inbound::serve(stream, peer, None, shared).await;
                                }
                                Some(Accepted::Plain(stream)) => {
                                    let info = ConnInfo { peer, peer_id: None };
                                    serve_conn(name, b, watcher, TokioIo::new(stream), info, h, true).await;
                                }
                                None => {}
                            }
                        });
                    }
                }
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

/// Serves HTTP/1.1 or h2 (detected from the preface) on one accepted connection.
/// `restore`: turn requests marked by a peer sidecar's upgrade back into HTTP/1.x.
async fn serve_conn<H, I>(
    name: &'static str,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    io: I,
    info: ConnInfo,
    h: Arc<H>,
    restore: bool,
) where
    H: Handler,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    // `map`, not an `async` block that would hold the handler's future twice.
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        if restore {
            mtls::restore_orig_proto(&mut req);
        }
        h.clone().call(req, &info).map(Ok::<_, Infallible>)
    });
    let conn = builder.serve_connection(io, svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}
