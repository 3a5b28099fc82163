//! Micro-benchmarks of the outbound request path's per-request steps: the routing decision
//! (`RouteTable::find` → `VirtualHost::route` → `RouteAction::pick_cluster`) at 10 and 1,000
//! routes, forwarded-request header preparation, and the hash-balancer key (`balance::hash_key`
//! over a header value or the client IP).
//!
//! `http::strip_hop_by_hop` is crate-private (it pulls in the connection pools), so the header
//! steps below reproduce it and the HTTP/1.1 parts of `outbound.rs`'s `forward` and `http.rs`'s
//! `send` with the same `http` crate calls.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use std::sync::Arc;

use trellis_proxy::balance::hash_key;
use trellis_proxy::routing::{
    HeaderMatch, HeaderTarget, PathMatch, Route, RouteAction, RouteMatch, RouteTable, StringMatch,
    VirtualHost, WeightedCluster,
};

/// A typical app request: 12 headers, origin form with `Host` naming the service.
fn typical() -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::from_static("/api/v1/orders?limit=10");
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    for (name, value) in [
        ("host", "payments:8080"),
        ("user-agent", "checkout/2.3.1 (reqwest 0.13)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-GB,en;q=0.8"),
        ("content-type", "application/json"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl",
        ),
        ("x-request-id", "3f1c2a9e-8b47-4d0e-9a61-1f2b3c4d5e6f"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-user-id", "user-48151623"),
        ("cookie", "session=8a7b6c5d4e3f; theme=dark"),
        ("content-length", "0"),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    req
}

/// Sent as to an HTTP proxy: `GET http://payments:8080/...`, no `Host` header.
fn absolute_form() -> Request<()> {
    let mut req = typical();
    req.headers_mut().remove(header::HOST);
    *req.uri_mut() = Uri::from_static("http://payments:8080/api/v1/orders?limit=10");
    req
}

/// With `Connection: keep-alive, x-debug` and the headers it names (the slow path).
fn hop_by_hop() -> Request<()> {
    let mut req = typical();
    let h = req.headers_mut();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-debug"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("x-debug", HeaderValue::from_static("1"));
    req
}

/// `http.rs` `strip_hop_by_hop`, reproduced (crate-private): RFC 9110 §7.6.1, keeping
/// `TE: trailers`; one scan first, since most requests carry none of these.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = |n: &HeaderName| {
        n == header::CONNECTION
            || n == header::TE
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n.as_str() == "keep-alive"
            || n.as_str() == "proxy-connection"
    };
    if !headers.keys().any(hop) {
        return;
    }
    const FIXED: [HeaderName; 4] = [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    if let Some(conn) = headers.remove(header::CONNECTION) {
        for name in conn.to_str().unwrap_or("").split(',') {
            let name = name.trim();
            if !name.is_empty() && !name.eq_ignore_ascii_case("trailers") {
                headers.remove(name);
            }
        }
        while headers.remove(header::CONNECTION).is_some() {}
    }
    for name in &FIXED {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if let Some(te) = headers.get(header::TE)
        && te.as_bytes() != b"trailers"
    {
        headers.remove(header::TE);
    }
}

/// The HTTP/1.1 forward preparation (`outbound.rs` `forward` + `http.rs` `send`): strip
/// hop-by-hop headers, add `Host` from an absolute URI when missing, rewrite an absolute URI
/// to origin form.
fn prepare_h1(req: &mut Request<()>) {
    strip_hop_by_hop(req.headers_mut());
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
}

/// Builds a fresh request for each iteration (`prepare_h1` consumes its headers).
type MakeRequest = fn() -> Request<()>;

fn forward_headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_headers");
    let cases: [(&str, MakeRequest); 3] = [
        ("origin_form", typical),
        ("absolute_form", absolute_form),
        ("hop_by_hop", hop_by_hop),
    ];
    for (case, make) in cases {
        let mut check = make();
        prepare_h1(&mut check);
        assert!(check.uri().authority().is_none(), "{case}: not origin form");
        assert_eq!(
            check.headers().get(header::HOST).map(|v| v.as_bytes()),
            Some(&b"payments:8080"[..]),
            "{case}"
        );
        for gone in ["connection", "keep-alive", "x-debug"] {
            assert!(!check.headers().contains_key(gone), "{case}: {gone} kept");
        }
        assert!(check.headers().contains_key("x-request-id"), "{case}");
        group.bench_function(case, |b| {
            b.iter_batched_ref(
                make,
                |req| prepare_h1(black_box(req)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The key `routing::hash_key` computes for `hashKey.header` (the header value's bytes) and
/// `hashKey.sourceIp` (the address octets), through the public `balance::hash_key`.
fn hash_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash_key");
    let req = typical();
    let name = HeaderName::from_static("x-user-id");
    let header_key = |headers: &HeaderMap| headers.get(&name).map(|v| hash_key(v.as_bytes()));
    assert_eq!(
        header_key(req.headers()),
        Some(hash_key(b"user-48151623")),
        "header key must hash the value"
    );
    group.bench_function("header", |b| {
        b.iter(|| header_key(black_box(req.headers())))
    });
    group.bench_function("header_absent", |b| {
        let bare = HeaderMap::new();
        b.iter(|| header_key(black_box(&bare)))
    });
    let source_key = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => hash_key(&v6.octets()),
    };
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 3, 17));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x3, 0x17));
    assert_ne!(source_key(v4), source_key(v6));
    group.bench_function("source_ip_v4", |b| b.iter(|| source_key(black_box(v4))));
    group.bench_function("source_ip_v6", |b| b.iter(|| source_key(black_box(v6))));
    group.finish();
}

/// Route `i` of a service: alternating path-prefix, exact-path and prefix+header matches, as
/// HTTPRoutes produce them; the last route is the catch-all `/`.
fn route(service: &str, i: usize, last: bool) -> Route {
    let (path, headers) = if last {
        (PathMatch::Prefix("/".to_string()), vec![])
    } else {
        match i % 3 {
            0 => (PathMatch::SeparatedPrefix(format!("/api/v{i}")), vec![]),
            1 => (PathMatch::Exact(format!("/api/v{i}/orders")), vec![]),
            _ => (
                PathMatch::SeparatedPrefix(format!("/api/v{i}")),
                vec![HeaderMatch {
                    target: HeaderTarget::Header(HeaderName::from_static("x-user-id")),
                    matcher: StringMatch::Exact(format!("user-{i}")),
                    invert: false,
                }],
            ),
        }
    };
    let cluster = |name: String, weight| WeightedCluster {
        name: Arc::from(name),
        weight,
    };
    Route {
        name: format!("{service}-{i}"),
        matcher: RouteMatch { path, headers },
        action: RouteAction {
            clusters: vec![
                cluster(format!("{service}|v1"), 90),
                cluster(format!("{service}|v2"), 10),
            ],
            total_weight: 100,
            hash: None,
            policy: None,
        },
    }
}

/// `services` virtual hosts of `routes` routes each.
fn table(services: usize, routes: usize) -> RouteTable {
    RouteTable::new(
        (0..services)
            .map(|s| {
                let name = format!("svc-{s}");
                VirtualHost {
                    routes: (0..routes)
                        .map(|i| route(&name, i, i + 1 == routes))
                        .collect(),
                    domains: vec![name.clone(), format!("{name}:*")],
                    name: Arc::from(name),
                }
            })
            .collect(),
    )
}

/// The whole decision for one request: host lookup, first matching route, weighted pick.
fn decide<'t>(t: &'t RouteTable, req: &Request<()>) -> Option<&'t Arc<str>> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let (_, vh) = t.find(host)?;
    let route = vh.route(req.method(), req.uri().path(), req.headers())?;
    Some(route.action.pick_cluster(37))
}

fn request_to(host: &'static str, path: &'static str) -> Request<()> {
    let mut req = typical();
    *req.uri_mut() = Uri::from_static(path);
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static(host));
    req
}

fn route_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    // 10 routes: one service with 10 routes; the request matches the first or only the last.
    let ten = table(1, 10);
    let first = request_to("svc-0:8080", "/api/v0/orders");
    let last = request_to("svc-0:8080", "/other/path");
    assert!(decide(&ten, &first).is_some() && decide(&ten, &last).is_some());
    g.bench_function("10_routes/first_match", |b| {
        b.iter(|| decide(black_box(&ten), black_box(&first)))
    });
    g.bench_function("10_routes/last_match", |b| {
        b.iter(|| decide(black_box(&ten), black_box(&last)))
    });
    // 1,000 routes, spread as 100 services x 10 routes and as one service with 1,000 routes
    // (checked in order, as Envoy does: the worst case for a linear route list).
    let spread = table(100, 10);
    let spread_req = request_to("svc-73", "/other/path");
    let one = table(1, 1000);
    assert!(decide(&spread, &spread_req).is_some() && decide(&one, &last).is_some());
    g.bench_function("1000_routes/100_services_last_match", |b| {
        b.iter(|| decide(black_box(&spread), black_box(&spread_req)))
    });
    g.bench_function("1000_routes/one_service_last_match", |b| {
        b.iter(|| decide(black_box(&one), black_box(&last)))
    });
    g.finish();
}

criterion_group!(benches, route_matching, forward_headers, hash_keys);
criterion_main!(benches);
