use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn vh(name: &str, routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: Arc::from(name),
        domains: vec![name.to_string(), format!("{name}:*")],
        routes,
    }
}

fn route(name: &str, path: PathMatch, headers: Vec<HeaderMatch>, cluster: &str) -> Route {
    Route {
        name: name.to_string(),
        matcher: RouteMatch { path, headers },
        action: RouteAction {
            clusters: vec![WeightedCluster {
                name: Arc::from(cluster),
                weight: 1,
            }],
            total_weight: 1,
            hash: None,
            policy: None,
        },
    }
}

fn table() -> RouteTable {
    RouteTable::new(vec![
        vh(
            "catalog",
            vec![
                route(
                    "exact",
                    PathMatch::Exact("/items".into()),
                    vec![],
                    "catalog|exact",
                ),
                route(
                    "v2-header",
                    PathMatch::Prefix("/".into()),
                    vec![HeaderMatch {
                        target: HeaderTarget::Header(HeaderName::from_static("x-version")),
                        matcher: StringMatch::Exact("v2".into()),
                        invert: false,
                    }],
                    "catalog|v2",
                ),
                route(
                    "post-only",
                    PathMatch::SeparatedPrefix("/admin".into()),
                    vec![HeaderMatch {
                        target: HeaderTarget::Method,
                        matcher: StringMatch::Exact("POST".into()),
                        invert: false,
                    }],
                    "catalog|admin",
                ),
                route(
                    "regex",
                    PathMatch::Regex(compile_full("/users/[0-9]+").expect("valid regex")),
                    vec![],
                    "catalog|users",
                ),
                route("default", PathMatch::Prefix("/".into()), vec![], "catalog"),
            ],
        ),
        vh(
            "payments",
            vec![route(
                "default",
                PathMatch::Prefix("/".into()),
                vec![],
                "payments",
            )],
        ),
    ])
}

#[test]
fn finds_virtual_host_by_authority() {
    let t = table();
    let cases: &[(&str, Option<&str>)] = &[
        ("catalog", Some("catalog")),
        ("catalog:8080", Some("catalog")),
        ("CATALOG", Some("catalog")),
        ("payments:80", Some("payments")),
        ("unknown", None),
        ("catalogx", None),
        ("", None),
    ];
    for (authority, want) in cases {
        let got = t.find(authority).map(|(_, v)| &*v.name);
        assert_eq!(got, *want, "authority {authority:?}");
    }
}

#[test]
fn wildcard_domain_is_the_fallback() {
    let mut any = vh("any", vec![]);
    any.domains = vec!["*".into()];
    let t = RouteTable::new(vec![vh("a", vec![]), any]);
    assert_eq!(t.find("a").map(|(i, _)| i), Some(0));
    assert_eq!(t.find("zzz").map(|(i, _)| i), Some(1));
}

#[test]
fn strips_ports() {
    let cases = [
        ("svc", "svc"),
        ("svc:1", "svc"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("svc:abc", "svc:abc"),
    ];
    for (input, want) in cases {
        assert_eq!(strip_port(input), want, "{input}");
    }
}

#[test]
fn routes_match_in_order() {
    let t = table();
    let (_, catalog) = t.find("catalog").expect("catalog vhost");
    let v2 = {
        let mut h = HeaderMap::new();
        h.insert("x-version", HeaderValue::from_static("v2"));
        h
    };
    let none = HeaderMap::new();
    let cases: &[(Method, &str, &HeaderMap, &str)] = &[
        (Method::GET, "/items", &none, "exact"),
        (Method::GET, "/items/1", &none, "default"),
        (Method::GET, "/items", &v2, "exact"),
        (Method::GET, "/anything", &v2, "v2-header"),
        (Method::POST, "/admin", &none, "post-only"),
        (Method::POST, "/admin/users", &none, "post-only"),
        (Method::POST, "/administrator", &none, "default"),
        (Method::GET, "/admin", &none, "default"),
        (Method::GET, "/users/42", &none, "regex"),
        (Method::GET, "/users/42/x", &none, "default"),
        (Method::GET, "/x/users/42", &none, "default"),
    ];
    for (method, path, headers, want) in cases {
        let got = catalog
            .route(method, path, headers)
            .map(|r| r.name.as_str());
        assert_eq!(got, Some(*want), "{method} {path}");
    }
}

#[test]
fn no_route_when_nothing_matches() {
    let v = vh(
        "x",
        vec![route("only", PathMatch::Exact("/a".into()), vec![], "x")],
    );
    assert!(v.route(&Method::GET, "/b", &HeaderMap::new()).is_none());
}

#[test]
fn string_matchers() {
    let re = compile_full("v[0-9]").expect("valid regex");
    let cases: Vec<(StringMatch, Option<&str>, bool)> = vec![
        (StringMatch::Exact("a".into()), Some("a"), true),
        (StringMatch::Exact("a".into()), Some("ab"), false),
        (StringMatch::Exact("a".into()), None, false),
        (StringMatch::Prefix("ab".into()), Some("abc"), true),
        (StringMatch::Suffix("bc".into()), Some("abc"), true),
        (StringMatch::Contains("b".into()), Some("abc"), true),
        (StringMatch::Contains("z".into()), Some("abc"), false),
        (StringMatch::Regex(re.clone()), Some("v1"), true),
        (StringMatch::Regex(re), Some("v12"), false),
        (StringMatch::Present(true), Some(""), true),
        (StringMatch::Present(true), None, false),
        (StringMatch::Present(false), None, true),
    ];
    for (m, v, want) in cases {
        assert_eq!(m.matches(v), want, "{m:?} on {v:?}");
    }
}

#[test]
fn inverted_header_match() {
    let m = HeaderMatch {
        target: HeaderTarget::Header(HeaderName::from_static("x-a")),
        matcher: StringMatch::Exact("1".into()),
        invert: true,
    };
    let mut h = HeaderMap::new();
    assert!(m.matches(&Method::GET, &h));
    h.insert("x-a", HeaderValue::from_static("1"));
    assert!(!m.matches(&Method::GET, &h));
}

#[test]
fn weighted_cluster_pick_follows_weights() {
    let action = RouteAction {
        clusters: vec![
            WeightedCluster {
                name: Arc::from("a"),
                weight: 90,
            },
            WeightedCluster {
                name: Arc::from("b"),
                weight: 10,
            },
            WeightedCluster {
                name: Arc::from("zero"),
                weight: 0,
            },
        ],
        total_weight: 100,
        hash: None,
        policy: None,
    };
    let mut counts = std::collections::HashMap::<&str, u32>::new();
    for r in 0..1000u32 {
        *counts.entry(&**action.pick_cluster(r)).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&900));
    assert_eq!(counts.get("b"), Some(&100));
    assert_eq!(counts.get("zero"), None);
    assert!(action.is_split());
}

#[test]
fn hash_keys() {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let name = HeaderName::from_static("x-user");
    let mut h = HeaderMap::new();
    let by_header = HashPolicy::Header(name);
    assert_eq!(hash_key(&by_header, &h, ip), None);
    h.insert("x-user", HeaderValue::from_static("alice"));
    let a = hash_key(&by_header, &h, ip);
    assert_eq!(a, Some(crate::balance::hash_key(b"alice")));
    assert_eq!(
        a,
        hash_key(&by_header, &h, other),
        "header key ignores the IP"
    );
    let s1 = hash_key(&HashPolicy::SourceIp, &h, ip);
    assert_eq!(s1, hash_key(&HashPolicy::SourceIp, &HeaderMap::new(), ip));
    assert_ne!(s1, hash_key(&HashPolicy::SourceIp, &h, other));
}
