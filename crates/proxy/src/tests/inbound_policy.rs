//! Inbound admission through the real inbound listener to a real app on 127.0.0.1:0, with the
//! security config injected into the live snapshot: a table of requests (allowed, denied,
//! unauthenticated, bad paths, gRPC), checking what the caller gets and exactly what the app
//! sees — the normalized path, the verified claims header, and never a refused request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use trellis_model::{
    AuthorizationPolicyResource, ForwardClaims, JwtRule, Protocol, RequestAuthenticationResource,
};

use crate::Listeners;
use crate::authn::testkeys::{self, ISSUER, claims, now, sign};
use crate::authn::{Authenticator, JwksOptions};
use crate::authz::PolicySet;
use crate::config::{BoundAddrs, ProxyConfig};
use crate::security::{InboundMode, InboundSecurity};
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// What the app saw of one request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    target: String,
    claims: Vec<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The app: records each request, answers 200 (gRPC: a trailers-only OK).
async fn app(log: Log) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let seen = Seen {
                            target: req
                                .uri()
                                .path_and_query()
                                .map_or_else(String::new, |pq| pq.as_str().to_string()),
                            claims: req
                                .headers()
                                .get_all("x-jwt-claims")
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect(),
                        };
                        if let Ok(mut l) = log.lock() {
                            l.push(seen);
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"app")));
                        let grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        if grpc {
                            let h = resp.headers_mut();
                            h.insert("content-type", HeaderValue::from_static("application/grpc"));
                            h.insert("grpc-status", HeaderValue::from_static("0"));
                            *resp.body_mut() = Full::new(Bytes::new());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(app_port: u16) -> ProxyConfig {
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    ProxyConfig {
        service: "catalog".into(),
        instance_id: "catalog-1".into(),
        app_port,
        app_protocol: Protocol::Http,
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
        drain_timeout: Duration::from_secs(1),
        request_head_timeout: Duration::from_secs(30),
        join_token: None,
        trust_bundle_refresh: std::time::Duration::from_secs(60),
        upstreams: Vec::new(),
        health_check: None,
        access_log: None,
    }
}

struct Harness {
    shared: Arc<Shared>,
    addrs: BoundAddrs,
    log: Log,
    _listeners: Listeners,
}

impl Harness {
    async fn start() -> Harness {
        let log: Log = Arc::default();
        let app = app(log.clone()).await;
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
        let shared = Arc::new(Shared::new(config(app.port())));
        let listeners = Listeners::start(&shared, admin, outbound, inbound);
        Harness {
            shared,
            addrs,
            log,
            _listeners: listeners,
        }
    }

    /// Installs an inbound security config (PERMISSIVE, so these plaintext tests get in).
    fn install(&self, authz: PolicySet, authn: Authenticator) {
        let security = InboundSecurity {
            mode: InboundMode::Permissive,
            authz,
            authn,
            tcp: None,
            ratelimit: None,
            idle_timeout: None,
        };
        let snapshot = Snapshot {
            inbound: Some(Arc::new(security)),
            ..Snapshot::default()
        };
        self.shared.publish(Arc::new(snapshot));
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// One HTTP/1.1 request on a new connection; `None` when the connection is refused or closed.
async fn h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Option<Response<Incoming>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    sender.send_request(req).await.ok()
}

/// One HTTP/2 (h2c) request on a new connection.
async fn h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Option<Response<Incoming>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    sender.send_request(req).await.ok()
}

fn policies() -> PolicySet {
    let parse = |v: serde_json::Value| -> AuthorizationPolicyResource {
        serde_json::from_value(v).expect("policy")
    };
    let deny = parse(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": {"name": "no-admin"},
        "spec": {"action": "DENY", "rules": [{"to": [{"paths": ["/admin", "/admin/*"]}]}]}
    }));
    let allow = parse(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": {"name": "readers"},
        "spec": {"targetRef": {"name": "catalog"}, "rules": [
            {"to": [{"methods": ["GET"], "paths": ["/public/*"]}]},
            {"to": [{"paths": ["/api/*"]}], "when": [{"claim": "scope", "values": ["catalog.read"]}]},
            {"to": [{"paths": ["/catalog.v1.Catalog/*"]}], "when": [{"claim": "sub", "values": ["user-1"]}]}
        ]}
    }));
    PolicySet::for_service("catalog", [&deny, &allow])
}

fn authenticator(key: &testkeys::TestKey) -> Authenticator {
    let resource: RequestAuthenticationResource = serde_json::from_value(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": {"name": "catalog-jwt"},
        "spec": {"jwtRules": [serde_json::to_value(JwtRule {
            issuer: ISSUER.into(),
            audiences: vec!["catalog".into()],
            jwks: Some(testkeys::jwks(&[key])),
            forward_claims_header: Some(ForwardClaims {
                header: "x-jwt-claims".into(),
                claims: vec!["sub".into()],
            }),
            ..JwtRule::default()
        }).expect("rule")]}
    }))
    .expect("resource");
    Authenticator::new(
        &[resource],
        &reqwest::Client::new(),
        &JwksOptions::default(),
    )
    .expect("authenticator")
}

/// One row: what is sent, and what must come back and reach the app.
struct Case {
    name: &'static str,
    grpc: bool,
    method: Method,
    target: &'static str,
    headers: Vec<(&'static str, String)>,
    /// HTTP status (gRPC: always 200) and `x-trellis-reason`.
    status: StatusCode,
    reason: Option<&'static str>,
    grpc_status: Option<&'static str>,
    /// What the app must see: the target and the claims header values.
    app: Option<Seen>,
}

fn case(name: &'static str, method: Method, target: &'static str) -> Case {
    Case {
        name,
        grpc: false,
        method,
        target,
        headers: Vec::new(),
        status: StatusCode::OK,
        reason: None,
        grpc_status: None,
        app: None,
    }
}

impl Case {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }
    fn refused(mut self, status: StatusCode, reason: &'static str) -> Case {
        self.status = status;
        self.reason = Some(reason);
        self
    }
    fn grpc_refused(mut self, grpc_status: &'static str, reason: &'static str) -> Case {
        self.grpc = true;
        self.reason = Some(reason);
        self.grpc_status = Some(grpc_status);
        self.header("content-type", "application/grpc")
    }
    fn reaches(mut self, target: &str, claims: &[&str]) -> Case {
        self.app = Some(Seen {
            target: target.to_string(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
        });
        self
    }
}

async fn run(h: &Harness, c: &Case) {
    let mut req = Request::builder()
        .method(c.method.clone())
        .uri(c.target)
        .header("host", "catalog");
    for (k, v) in &c.headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let before = h.seen().len();
    let resp = if c.grpc {
        h2(h.addrs.inbound, req).await
    } else {
        h1(h.addrs.inbound, req).await
    };
    let resp = resp.unwrap_or_else(|| panic!("{}: no response", c.name));
    assert_eq!(resp.status(), c.status, "{}", c.name);
    let headers: HeaderMap = resp.headers().clone();
    let reason = headers
        .get("x-trellis-reason")
        .and_then(|v| v.to_str().ok());
    assert_eq!(reason, c.reason, "{}", c.name);
    assert_eq!(
        headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        c.grpc_status.or(c.grpc.then_some("0")),
        "{}",
        c.name
    );
    assert_eq!(
        headers.contains_key("www-authenticate"),
        c.reason == Some("unauthenticated"),
        "{}: WWW-Authenticate on 401s only",
        c.name
    );
    let _ = resp.into_body().collect().await;
    let seen = h.seen();
    match &c.app {
        None => assert_eq!(seen.len(), before, "{}: the app must not see it", c.name),
        Some(want) => {
            assert_eq!(
                seen.len(),
                before + 1,
                "{}: the app must see it once",
                c.name
            );
            assert_eq!(seen.last(), Some(want), "{}", c.name);
        }
    }
}

#[tokio::test]
async fn requests_are_admitted_in_the_documented_order() {
    let h = Harness::start().await;
    let key = testkeys::ed("d1");
    h.install(policies(), authenticator(&key));
    let valid = format!("Bearer {}", sign(&key, &claims()));
    let mut expired_claims = claims();
    expired_claims["exp"] = json!(now() - 3600);
    let expired = format!("Bearer {}", sign(&key, &expired_claims));
    let mut no_scope = claims();
    no_scope["scope"] = json!("other");
    no_scope["sub"] = json!("user-2");
    let no_scope = format!("Bearer {}", sign(&key, &no_scope));
    // The verified `{"sub":"user-1"}`, base64url.
    let sub_user_1 = "eyJzdWIiOiJ1c2VyLTEifQ";
    use StatusCode as S;
    let cases = vec![
        case("allowed", Method::GET, "/public/a").reaches("/public/a", &[]),
        case(
            "normalized before the app",
            Method::GET,
            "//public/./b/%7Ec?x=/../y",
        )
        .reaches("/public/b/~c?x=/../y", &[]),
        case(
            "dot-dot into a denied path",
            Method::GET,
            "/public/../admin/x",
        )
        .refused(S::FORBIDDEN, "rbac_denied"),
        case("encoded dot-dot", Method::GET, "/public/%2e%2e/admin")
            .refused(S::FORBIDDEN, "rbac_denied"),
        case("deny wins over a valid token", Method::GET, "/admin")
            .header("authorization", valid.clone())
            .refused(S::FORBIDDEN, "rbac_denied"),
        case("method not allowed", Method::POST, "/public/a").refused(S::FORBIDDEN, "rbac_denied"),
        case("no rule for the path", Method::GET, "/other").refused(S::FORBIDDEN, "rbac_denied"),
        case("encoded slash", Method::GET, "/public/a%2Fb").refused(S::BAD_REQUEST, "bad_path"),
        case("dot-dot with a parameter", Method::GET, "/public/..;/admin")
            .refused(S::BAD_REQUEST, "bad_path"),
        case("claims needed, no token", Method::GET, "/api/items")
            .refused(S::FORBIDDEN, "rbac_denied"),
        case("claims needed, valid token", Method::GET, "/api/items?q=1")
            .header("authorization", valid.clone())
            .reaches("/api/items?q=1", &[sub_user_1]),
        case("claims needed, claim missing", Method::GET, "/api/items")
            .header("authorization", no_scope.clone())
            .refused(S::FORBIDDEN, "rbac_denied"),
        case("expired token", Method::GET, "/public/a")
            .header("authorization", expired.clone())
            .refused(S::UNAUTHORIZED, "unauthenticated"),
        case("garbage token", Method::GET, "/public/a")
            .header("authorization", "Bearer not.a.jwt")
            .refused(S::UNAUTHORIZED, "unauthenticated"),
        case("forged claims header, no token", Method::GET, "/public/a")
            .header("x-jwt-claims", "eyJzdWIiOiJhZG1pbiJ9")
            .reaches("/public/a", &[]),
        case("forged claims header, valid token", Method::GET, "/api/x")
            .header("x-jwt-claims", "eyJzdWIiOiJhZG1pbiJ9")
            .header("authorization", valid.clone())
            .reaches("/api/x", &[sub_user_1]),
        case(
            "gRPC allowed",
            Method::POST,
            "http://catalog/catalog.v1.Catalog/Get",
        )
        .header("content-type", "application/grpc")
        .header("authorization", valid.clone())
        .reaches("/catalog.v1.Catalog/Get", &[sub_user_1]),
        case(
            "gRPC denied",
            Method::POST,
            "http://catalog/catalog.v1.Catalog/Get",
        )
        .header("authorization", no_scope.clone())
        .grpc_refused("7", "rbac_denied"),
        case(
            "gRPC bad token",
            Method::POST,
            "http://catalog/catalog.v1.Catalog/Get",
        )
        .header("authorization", expired.clone())
        .grpc_refused("16", "unauthenticated"),
    ];
    for mut c in cases {
        if c.headers
            .iter()
            .any(|(k, v)| *k == "content-type" && v == "application/grpc")
        {
            c.grpc = true;
        }
        run(&h, &c).await;
    }
}

#[tokio::test]
async fn without_policies_everything_is_forwarded_normalized() {
    let h = Harness::start().await;
    h.install(PolicySet::default(), Authenticator::default());
    for (target, want) in [
        ("/a/b?x=1", "/a/b?x=1"),
        ("/a/../../b//c", "/b/c"),
        ("/admin", "/admin"),
    ] {
        run(&h, &case("open", Method::GET, target).reaches(want, &[])).await;
    }
    run(
        &h,
        &case("still rejected", Method::GET, "/a%00").refused(StatusCode::BAD_REQUEST, "bad_path"),
    )
    .await;
    // A client's claims header passes when no authentication applies (nothing to forge).
    run(
        &h,
        &case("no authn", Method::GET, "/x")
            .header("x-jwt-claims", "abc")
            .reaches("/x", &["abc"]),
    )
    .await;
}

#[tokio::test]
async fn a_proxy_without_its_policy_refuses_everything() {
    let h = Harness::start().await;
    // Nothing installed: plaintext is refused before HTTP (STRICT until told otherwise).
    let req = Request::builder()
        .uri("/public/a")
        .header("host", "catalog")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h1(h.addrs.inbound, req).await;
    assert!(resp.is_none(), "answered: {:?}", resp.map(|r| r.status()));
    assert!(h.seen().is_empty());
    // The first config opens it.
    h.install(policies(), Authenticator::default());
    run(
        &h,
        &case("after install", Method::GET, "/public/a").reaches("/public/a", &[]),
    )
    .await;
}
