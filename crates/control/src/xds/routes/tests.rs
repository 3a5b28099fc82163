//! Route translation: rule order, matches, backends and hash policies.

use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, header_matcher::HeaderMatchSpecifier, route_action, route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use serde_json::json;

use crate::xds::fixtures::*;
use crate::xds::translate::*;

#[test]
fn route_configuration_orders_rules_then_default() {
    let res = resources_for(&catalog_with_routes(None), &node(None));
    let rc: RouteConfiguration = decode(&res, ROUTE_TYPE, "outbound");
    let hosts: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(hosts, vec!["catalog", "web"]);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, vec!["catalog", "catalog:*"]);
    let route_names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        route_names,
        vec![
            "catalog-canary/0/0",
            "catalog-canary/0/1",
            "catalog-canary/1/0",
            "default"
        ]
    );

    // Rule 0, match 0: exact path, two headers, the method.
    let m = vh.routes[0].r#match.as_ref().expect("match");
    assert_eq!(
        m.path_specifier,
        Some(route_match::PathSpecifier::Path("/health".into()))
    );
    let headers: Vec<(String, MatchPattern)> = m
        .headers
        .iter()
        .map(|h| match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                (h.name.clone(), s.match_pattern.clone().expect("pattern"))
            }
            other => panic!("unexpected header matcher {other:?}"),
        })
        .collect();
    assert_eq!(
        headers[0],
        ("x-env".into(), MatchPattern::Exact("qa".into()))
    );
    assert!(
        matches!(&headers[1], (n, MatchPattern::SafeRegex(r)) if n == "x-user" && r.regex == "^a.*")
    );
    assert_eq!(
        headers[2],
        (":method".into(), MatchPattern::Exact("GET".into()))
    );
    // Rule 0, match 1: regex path; same single backend.
    let m = vh.routes[1].r#match.as_ref().expect("match");
    assert!(matches!(&m.path_specifier,
        Some(route_match::PathSpecifier::SafeRegex(r)) if r.regex == "^/v[0-9]+/"));
    for r in &vh.routes[..2] {
        let spec = action(r).cluster_specifier.as_ref().expect("cluster");
        assert_eq!(route_cluster(spec), vec![("catalog|v1".to_string(), 1)]);
    }
    // Rule 1: path-separated prefix without the trailing slash, weighted split.
    let m = vh.routes[2].r#match.as_ref().expect("match");
    assert_eq!(
        m.path_specifier,
        Some(route_match::PathSpecifier::PathSeparatedPrefix(
            "/api".into()
        ))
    );
    let spec = action(&vh.routes[2])
        .cluster_specifier
        .as_ref()
        .expect("cluster");
    assert_eq!(
        route_cluster(spec),
        vec![
            ("catalog|v1".to_string(), 90),
            ("catalog|v2".to_string(), 10)
        ]
    );
    // Default route: prefix `/` to the service cluster.
    let d = &vh.routes[3];
    assert_eq!(
        d.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
        Some(route_match::PathSpecifier::Prefix("/".into()))
    );
    let spec = action(d).cluster_specifier.as_ref().expect("cluster");
    assert_eq!(route_cluster(spec), vec![("catalog".to_string(), 1)]);
    assert!(action(d).hash_policy.is_empty());
}

#[test]
fn hash_policies_follow_the_backend_policy() {
    use route_action::hash_policy::PolicySpecifier;
    let cases = [
        (
            json!({ "algorithm": "RingHash", "hashKey": { "header": "x-user" } }),
            "header",
        ),
        (
            json!({ "algorithm": "Maglev", "hashKey": { "sourceIp": true } }),
            "source_ip",
        ),
        (json!({ "algorithm": "LeastRequest" }), "none"),
    ];
    for (lb, want) in cases {
        let res = resources_for(&catalog_with_routes(Some(lb.clone())), &node(None));
        let rc: RouteConfiguration = decode(&res, ROUTE_TYPE, "outbound");
        for r in &rc.virtual_hosts[0].routes {
            let got: Vec<String> = action(r)
                .hash_policy
                .iter()
                .map(|h| match &h.policy_specifier {
                    Some(PolicySpecifier::Header(h)) => format!("header:{}", h.header_name),
                    Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => {
                        "source_ip".to_string()
                    }
                    other => panic!("unexpected hash policy {other:?}"),
                })
                .collect();
            let expected: Vec<String> = match want {
                "header" => vec!["header:x-user".into()],
                "source_ip" => vec!["source_ip".into()],
                _ => vec![],
            };
            assert_eq!(got, expected, "{lb} route {}", r.name);
        }
        // Services without a hashing policy get no hash policy.
        assert!(
            rc.virtual_hosts[1]
                .routes
                .iter()
                .all(|r| action(r).hash_policy.is_empty())
        );
    }
}
