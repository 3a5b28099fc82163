//! Micro-benchmarks of the outbound request path's per-request steps that `trellis-proxy`
//! makes reachable from outside the crate: forwarded-request header preparation and the
//! hash-balancer key (`balance::hash_key` over a header value or the client IP).
//!
//! The routing decision itself (`routing::RouteTable::find`, `VirtualHost::route`,
//! `RouteAction::pick_cluster`) and `http::strip_hop_by_hop` are crate-private, so they are not
//! benched here yet. Including their files with `#[path]` does not work: cargo builds benches
//! with `--cfg test`, which pulls in those files' `mod tests;` against the wrong crate root.
//! The header steps below reproduce `http.rs`'s `strip_hop_by_hop` and the HTTP/1.1 parts of
//! `outbound.rs`'s `forward` and `http.rs`'s `send` with the same `http` crate calls.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use trellis_proxy::balance::hash_key;

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

criterion_group!(benches, forward_headers, hash_keys);
criterion_main!(benches);
