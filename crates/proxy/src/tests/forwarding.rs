//! Real HTTP/1.1 and h2c requests through the real outbound and inbound listeners to real
//! backends, with the live snapshot built directly (no control plane).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use trellis_model::Protocol;

use crate::Listeners;
use crate::balance::{self, Algorithm};
use crate::config::{BoundAddrs, ProxyConfig};
use crate::routing::{
    PathMatch, Route, RouteAction, RouteMatch, RouteTable, VirtualHost, WeightedCluster,
};
use crate::shared::Shared;
use crate::snapshot::{Routes, Snapshot};
use crate::upstream::{UpstreamCluster, endpoint_metas};
use crate::xds::translate::Endpoint;

type TestBody = BoxBody<Bytes, Infallible>;

/// A backend app: `/stream` sends "one", waits for `gate`, sends "two" and `grpc-status: 0`
/// trailers; anything else echoes what it received.
async fn backend(gate: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| backend_handle(req, gate.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn backend_handle(
    req: Request<Incoming>,
    gate: Arc<Notify>,
) -> Result<Response<TestBody>, Infallible> {
    if req.uri().path() == "/stream" {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await;
            gate.notified().await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"two")))).await;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        let body = BoxBody::new(StreamBody::new(ReceiverStream::new(rx)));
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        return Ok(resp);
    }
    let text = format!(
        "path={} version={:?} host={} connection={}",
        req.uri().path(),
        req.version(),
        req.headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        req.headers()
            .get("x-custom")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
    );
    Ok(Response::new(BoxBody::new(Full::new(Bytes::from(text)))))
}

struct Harness {
    shared: Arc<Shared>,
    addrs: BoundAddrs,
    listeners: Option<Listeners>,
}

fn config(app_port: u16, app_protocol: Protocol) -> ProxyConfig {
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    ProxyConfig {
        service: "frontend".into(),
        instance_id: "frontend-1".into(),
        app_port,
        app_protocol,
        control_url: "http://127.0.0.1:1".into(),
        control_ca: None,
        admin_addr: local,
        outbound_addr: local,
        inbound_addr: local,
        advertise_ip: "127.0.0.1".parse().expect("ip"),
        labels: Default::default(),
        zone: None,
        weight: 1,
        ttl: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
        request_head_timeout: Duration::from_secs(30),
        join_token: None,
        trust_bundle_refresh: std::time::Duration::from_secs(60),
        upstreams: Vec::new(),
        health_check: None,
        access_log: None,
    }
}

impl Harness {
    async fn start(app_port: u16, app_protocol: Protocol) -> Harness {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (admin, outbound, inbound) = (
            bind().await.expect("admin"),
            bind().await.expect("outbound"),
            bind().await.expect("inbound"),
        );
        let addrs = BoundAddrs {
            admin: admin.local_addr().expect("addr"),
            outbound: outbound.local_addr().expect("addr"),
            inbound: inbound.local_addr().expect("addr"),
            upstreams: Vec::new(),
        };
        let shared = Arc::new(Shared::new(config(app_port, app_protocol)));
        let listeners = Listeners::start(&shared, admin, outbound, inbound);
        Harness {
            shared,
            addrs,
            listeners: Some(listeners),
        }
    }

    /// Routes: `catalog` → this proxy's own inbound → the app; `empty` → a cluster without
    /// endpoints; `down` → an endpoint nobody listens on; `ghost` → a cluster CDS never sent.
    async fn install_routes(&self) {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let vhost = |name: &str, cluster: &str| VirtualHost {
            name: Arc::from(name),
            domains: vec![name.to_string(), format!("{name}:*")],
            routes: vec![Route {
                name: "default".into(),
                matcher: RouteMatch {
                    path: PathMatch::Prefix("/".into()),
                    headers: vec![],
                },
                action: RouteAction {
                    clusters: vec![WeightedCluster {
                        name: Arc::from(cluster),
                        weight: 1,
                    }],
                    total_weight: 1,
                    hash: None,
                    policy: None,
                },
            }],
        };
        let table = RouteTable::new(vec![
            vhost("catalog", "catalog"),
            vhost("empty", "empty"),
            vhost("down", "down"),
            vhost("ghost", "missing"),
        ]);
        let routes = Arc::new(Routes::new(table, &self.shared.metrics));
        let cluster = |name: &str, addrs: Vec<SocketAddr>| {
            let eps: Vec<Endpoint> = addrs
                .into_iter()
                .map(|addr| Endpoint {
                    addr,
                    weight: 1,
                    id: addr.to_string(),
                    zone: None,
                    priority: 0,
                    mtls: false,
                })
                .collect();
            let balancer = balance::build(&Algorithm::RoundRobin, &endpoint_metas(&eps));
            Arc::new(UpstreamCluster::new(
                name,
                Algorithm::RoundRobin,
                Duration::from_secs(1),
                eps,
                balancer,
                self.shared.clients.get(Duration::from_secs(1)),
            ))
        };
        let mut snapshot = Snapshot::new(
            routes,
            [
                cluster("catalog", vec![self.addrs.inbound]),
                cluster("empty", vec![]),
                cluster("down", vec![dead]),
            ],
        );
        // These proxies have no certificate: their inbound listener takes plaintext only when
        // PERMISSIVE (mTLS itself is tested in crate::mtls::tests).
        snapshot.inbound = Some(Arc::new(crate::security::InboundSecurity {
            mode: crate::security::InboundMode::Permissive,
            ..Default::default()
        }));
        self.shared.publish(Arc::new(snapshot));
    }
}

async fn h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender.send_request(req).await.expect("h1 response")
}

async fn h2(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender.send_request(req).await.expect("h2 response")
}

async fn text(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn reason(resp: &Response<Incoming>) -> Option<&str> {
    resp.headers()
        .get("x-trellis-reason")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn http1_by_host_header_reaches_the_app_through_both_listeners() {
    let app = backend(Arc::new(Notify::new())).await;
    let h = Harness::start(app.port(), Protocol::Http).await;
    h.install_routes().await;
    let req = Request::builder()
        .uri("/items?x=1")
        .header("host", "catalog:8080")
        .header("connection", "x-custom")
        .header("x-custom", "hop")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h1(h.addrs.outbound, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = text(resp).await;
    assert_eq!(
        body, "path=/items version=HTTP/1.1 host=catalog:8080 connection=-",
        "Host kept, hop-by-hop header named by Connection stripped"
    );
}

#[tokio::test]
async fn http1_absolute_form_as_to_a_proxy() {
    let app = backend(Arc::new(Notify::new())).await;
    let h = Harness::start(app.port(), Protocol::Http).await;
    h.install_routes().await;
    let mut s = TcpStream::connect(h.addrs.outbound).await.expect("connect");
    s.write_all(
        b"GET http://catalog/charge HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("path=/charge version=HTTP/1.1 host=catalog connection=-"),
        "{out}"
    );
}

#[tokio::test]
async fn unknown_service_is_404_with_reason() {
    let app = backend(Arc::new(Notify::new())).await;
    let h = Harness::start(app.port(), Protocol::Http).await;
    h.install_routes().await;
    let req = Request::builder()
        .uri("/")
        .header("host", "payments:80")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h1(h.addrs.outbound, req).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(reason(&resp), Some("unknown_service"));
    assert_eq!(
        text(resp).await,
        "trellis: no service named \"payments\" is known to this proxy\n"
    );
}

#[tokio::test]
async fn unavailable_upstreams_fail_fast_with_reasons() {
    let app = backend(Arc::new(Notify::new())).await;
    let h = Harness::start(app.port(), Protocol::Http).await;
    h.install_routes().await;
    for (host, status, want) in [
        (
            "empty",
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_endpoints",
        ),
        (
            "ghost",
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_endpoints",
        ),
        (
            "down",
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_connect_failure",
        ),
    ] {
        let req = Request::builder()
            .uri("/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = h1(h.addrs.outbound, req).await;
        assert_eq!(resp.status(), status, "{host}");
        assert_eq!(reason(&resp), Some(want), "{host}");
    }
}

#[tokio::test]
async fn inbound_reports_an_unavailable_app() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let h = Harness::start(dead.port(), Protocol::Http).await;
    // Also installs the (PERMISSIVE, policy-free) inbound config the listener needs.
    h.install_routes().await;
    let req = Request::builder()
        .uri("/")
        .header("host", "frontend")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h1(h.addrs.inbound, req).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(reason(&resp), Some("app_unavailable"));
}

#[tokio::test]
async fn h2c_streams_incrementally_with_trailers_intact() {
    let gate = Arc::new(Notify::new());
    let app = backend(gate.clone()).await;
    let h = Harness::start(app.port(), Protocol::Grpc).await;
    h.install_routes().await;
    let req = Request::builder()
        .uri("http://catalog/stream")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .expect("request");
    let resp = h2(h.addrs.outbound, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let mut body = resp.into_body();
    // The first message arrives while the backend is still holding the second one back.
    let first = body.frame().await.expect("frame").expect("ok frame");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"one"[..]));
    gate.notify_one();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("ok frame");
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(data, b"two");
    let trailers = trailers.expect("trailers forwarded");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
}

#[tokio::test]
async fn metrics_count_requests_by_service_and_status() {
    let app = backend(Arc::new(Notify::new())).await;
    let h = Harness::start(app.port(), Protocol::Http).await;
    h.install_routes().await;
    for host in ["catalog", "catalog", "nope"] {
        let req = Request::builder()
            .uri("/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let _ = text(h1(h.addrs.outbound, req).await).await;
    }
    let req = Request::builder()
        .uri("/metrics")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let metrics = text(h1(h.addrs.admin, req).await).await;
    for want in [
        r#"trellis_requests_total{direction="outbound",destination_service="catalog",status_code="200"} 2"#,
        r#"trellis_requests_total{direction="outbound",destination_service="unknown",status_code="404",reason="unknown_service"} 1"#,
        r#"trellis_requests_total{direction="inbound",destination_service="frontend",status_code="200"} 2"#,
        r#"trellis_request_duration_seconds_count{direction="outbound",destination_service="catalog"} 2"#,
    ] {
        assert!(metrics.contains(want), "missing `{want}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_in_flight_requests_finish() {
    let gate = Arc::new(Notify::new());
    let app = backend(gate.clone()).await;
    let mut h = Harness::start(app.port(), Protocol::Http).await;
    h.install_routes().await;
    let req = Request::builder()
        .uri("http://catalog/stream")
        .body(Empty::new())
        .expect("request");
    let resp = h2(h.addrs.outbound, req).await;
    let mut body = resp.into_body();
    let first = body.frame().await.expect("frame").expect("ok frame");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"one"[..]));

    let listeners = h.listeners.take().expect("running");
    let stopping = tokio::spawn(listeners.stop());
    // Wait until the outbound listener no longer accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(h.addrs.outbound).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "outbound listener still accepting"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !stopping.is_finished(),
        "must wait for the in-flight stream"
    );
    gate.notify_one();
    let rest = body.collect().await.expect("rest of the body").to_bytes();
    assert_eq!(&rest[..], b"two");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("drained")
        .expect("stop task");
}
