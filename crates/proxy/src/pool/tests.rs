//! The pool against real hyper servers: a front server whose handler forwards through the pool
//! (the request bodies must be `Incoming`), a counting backend behind it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::{EndpointPool, H1Pools};

/// A backend counting its connections; `keep_alive: false` closes each after one response.
async fn backend(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/big" {
                        Bytes::from(vec![b'x'; 4 << 20])
                    } else {
                        let host = req.headers().get("host").and_then(|h| h.to_str().ok());
                        Bytes::from(format!("{} {}", req.uri(), host.unwrap_or("?")))
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A front server forwarding every request through `pool`; 502 with the error on failure.
async fn front(pool: Arc<EndpointPool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pool = pool.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let pool = pool.clone();
                    async move {
                        let resp = match pool.send(req.map(Into::into), Instant::now(), None).await
                        {
                            Ok(r) => r.map(http_body_util::Either::Left),
                            Err(e) => {
                                let mut r =
                                    Response::new(http_body_util::Either::Right(Full::new(
                                        Bytes::from(format!("connect={} {e}", e.is_connect())),
                                    )));
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "svc")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tx.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `cond` until it holds or 5 s pass.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, accepted) = backend(true).await;
    let pools = H1Pools::new(Duration::from_secs(1), crate::pool::IDLE_TIMEOUT);
    let pool = pools.endpoint(addr);
    assert!(
        Arc::ptr_eq(&pool, &pools.endpoint(addr)),
        "one pool per address"
    );
    let f = front(pool.clone()).await;
    for i in 0..5 {
        let (status, body) = get(f, &format!("/n/{i}?q=1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("/n/{i}?q=1 svc"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "keep-alive connection reused"
    );
    eventually("the connection back in the pool", || pool.idle_len() == 1).await;
}

#[tokio::test]
async fn connections_the_server_closes_are_replaced() {
    let (addr, accepted) = backend(false).await;
    let pool = H1Pools::new(Duration::from_secs(1), crate::pool::IDLE_TIMEOUT).endpoint(addr);
    let f = front(pool.clone()).await;
    for _ in 0..3 {
        let (status, body) = get(f, "/x").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connect_failures_are_connect_errors() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let pool = H1Pools::new(Duration::from_secs(1), crate::pool::IDLE_TIMEOUT).endpoint(dead);
    let f = front(pool).await;
    let (status, body) = get(f, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.starts_with("connect=true connect to 127.0.0.1:"),
        "{body}"
    );
}

#[tokio::test]
async fn a_response_abandoned_midway_does_not_return_its_connection() {
    let (addr, accepted) = backend(true).await;
    let pool = H1Pools::new(Duration::from_secs(1), crate::pool::IDLE_TIMEOUT).endpoint(addr);
    let f = front(pool.clone()).await;
    {
        // 4 MiB: far more than the socket buffers, so the body is still streaming when the
        // client goes away.
        let stream = TcpStream::connect(f).await.expect("connect");
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .uri("/big")
            .header("host", "svc")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = tx.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
        drop(tx);
        conn.abort();
    }
    eventually("the abandoned upstream connection to close", || {
        pool.idle_len() == 0
    })
    .await;
    let (status, body) = get(f, "/after").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/after svc"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a fresh connection, not the half-read one"
    );
}

/// A backend that answers only once `open` is set, counting connections and requests.
async fn gated_backend(
    open: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (conns.clone(), reqs.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (r, open) = (r.clone(), open.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let mut open = open.clone();
                    async move {
                        let _ = open.wait_for(|o| *o).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, conns, reqs)
}

fn empty_get(path: &str) -> Request<crate::body::ReqBody> {
    Request::builder()
        .uri(path)
        .header("host", "svc")
        .body(crate::body::ReqBody::Replay(Default::default()))
        .expect("request")
}

#[tokio::test]
async fn connection_and_pending_limits_queue_then_refuse() {
    use crate::resilience::Breaker;
    use crate::resilience::breaker::Limits;
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let (addr, conns, reqs) = gated_backend(open_rx).await;
    let pools = H1Pools::new(Duration::from_secs(1), crate::pool::IDLE_TIMEOUT);
    let pool = pools.endpoint(addr);
    let breaker = Arc::new(Breaker::new(Limits {
        max_connections: 1,
        max_pending_requests: 1,
        max_requests: 1024,
        max_retries: 1024,
    }));
    let send = |path: &str| {
        let sent = pool.send(empty_get(path), Instant::now(), Some(&breaker));
        tokio::spawn(async move {
            let resp = sent.await?;
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(body)
        })
    };
    let first = send("/1");
    eventually("the first request at the backend", || {
        reqs.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(breaker.connections_and_pending(), (1, 0));
    // The only connection is busy: the second waits for it.
    let second = send("/2");
    eventually("the second request to be pending", || {
        breaker.connections_and_pending() == (1, 1)
    })
    .await;
    // The pending slot is taken: the third is refused at once.
    match pool
        .send(empty_get("/3"), Instant::now(), Some(&breaker))
        .await
    {
        Err(e @ super::PoolError::PendingOverflow { .. }) => {
            assert!(!e.is_connect(), "an overflow is no connect failure");
            assert!(e.to_string().contains("maxPendingRequests"), "{e}");
        }
        other => panic!("expected a pending overflow, got {other:?}"),
    }
    open_tx.send_replace(true);
    assert_eq!(&first.await.expect("join").expect("first")[..], b"ok");
    assert_eq!(&second.await.expect("join").expect("second")[..], b"ok");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the waiting request reused the freed connection"
    );
    assert_eq!(
        reqs.load(Ordering::SeqCst),
        2,
        "the refused one never reached the backend"
    );
    assert_eq!(
        breaker.connections_and_pending(),
        (1, 0),
        "the open connection keeps its slot"
    );
    drop(pool);
    drop(pools);
}
