//! TCP services in xDS: the inbound listener's RBAC + tcp_proxy chains, the clusters' ALPN and
//! protocol options, and the policy → RBAC rules (Istio's treatment of HTTP-only fields).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;
use serde_json::json;
use trellis_model::{
    AuthorizationAction, AuthorizationPolicyResource, Protocol, ServiceSpec, wire,
};

use super::*;
use crate::xds::fixtures::*;
use crate::xds::translate::{CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, resources_for};

fn policy(name: &str, spec: serde_json::Value) -> AuthorizationPolicyResource {
    serde_json::from_value(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("valid policy literal")
}

/// `web` (the node's own service) declared `tcp` with `policies`; `db` registered as tcp.
fn tcp_mesh(policies: Vec<AuthorizationPolicyResource>) -> crate::snapshot::MeshSnapshot {
    let mut web = view("web", vec![]);
    web.declared = Some(ServiceSpec {
        protocol: Protocol::Tcp,
        ..Default::default()
    });
    web.authorization = policies;
    let mut db_1 = endpoint("db-1", None, 1, &[]);
    db_1.protocol = Protocol::Tcp;
    db_1.identity = Some(spiffe("db"));
    snapshot(vec![web, view("db", vec![db_1]), view("catalog", vec![])])
}

fn typed<T: Message + Default>(f: &envoy_types::pb::envoy::config::listener::v3::Filter) -> T {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => {
            T::decode(any.value.as_slice()).expect("decodes")
        }
        other => panic!("filter {} has config {other:?}", f.name),
    }
}

#[test]
fn a_tcp_service_gets_rbac_and_tcp_proxy_chains_with_the_tcp_alpn() {
    let deny = policy(
        "deny-batch",
        json!({ "action": "DENY", "rules": [{ "from": [{ "principals": ["*/svc/batch"] }] }] }),
    );
    let allow = policy(
        "allow-web",
        json!({ "rules": [{ "from": [{ "principals": [spiffe("web")] }] }] }),
    );
    let res = resources_for(&tcp_mesh(vec![allow, deny]), &node(Some(5432)));
    let l: Listener = decode(&res, LISTENER_TYPE, "inbound");
    assert_eq!(l.filter_chains.len(), 1, "STRICT: the mtls chain only");
    let chain = &l.filter_chains[0];
    let names: Vec<&str> = chain.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            wire::RBAC_NETWORK_FILTER,
            wire::RBAC_NETWORK_FILTER,
            wire::TCP_PROXY_FILTER
        ]
    );
    let actions: Vec<i32> = chain.filters[..2]
        .iter()
        .map(|f| typed::<RbacFilter>(f).rules.expect("rules").action)
        .collect();
    assert_eq!(
        actions,
        [Action::Deny as i32, Action::Allow as i32],
        "DENY first"
    );
    let proxy: TcpProxy = typed(&chain.filters[2]);
    assert_eq!(
        proxy.cluster_specifier,
        Some(ClusterSpecifier::Cluster("inbound|5432".into()))
    );
    assert!(!proxy.stat_prefix.is_empty());
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("no transport socket");
    };
    let tls = DownstreamTlsContext::decode(any.value.as_slice()).expect("tls decodes");
    let alpn = tls.common_tls_context.expect("common").alpn_protocols;
    assert_eq!(alpn, ["trellis-tcp"]);
    // The app's cluster carries no HTTP protocol options.
    let app: Cluster = decode(&res, CLUSTER_TYPE, "inbound|5432");
    assert!(app.typed_extension_protocol_options.is_empty());
}

#[test]
fn no_policies_means_tcp_proxy_alone_and_permissive_adds_a_plaintext_chain() {
    let mut mesh = tcp_mesh(vec![]);
    if let Some(web) = mesh.services.get_mut("web")
        && let Some(d) = web.declared.as_mut()
    {
        d.mtls.mode = trellis_model::MtlsMode::Permissive;
    }
    let res = resources_for(&mesh, &node(Some(5432)));
    let l: Listener = decode(&res, LISTENER_TYPE, "inbound");
    let layout: Vec<(&str, Vec<&str>)> = l
        .filter_chains
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.filters.iter().map(|f| f.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        layout,
        [
            ("mtls", vec![wire::TCP_PROXY_FILTER]),
            ("plaintext", vec![wire::TCP_PROXY_FILTER])
        ]
    );
}

#[test]
fn tcp_clusters_offer_the_tcp_alpn_and_leave_the_http_routes() {
    let res = resources_for(&tcp_mesh(vec![]), &node(Some(8080)));
    let db: Cluster = decode(&res, CLUSTER_TYPE, "db");
    assert!(
        db.typed_extension_protocol_options.is_empty(),
        "no HTTP options for tcp"
    );
    let m = &db.transport_socket_matches[0];
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = m
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("no transport socket");
    };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
    assert_eq!(tls.sni, "db");
    assert_eq!(
        tls.common_tls_context.expect("common").alpn_protocols,
        ["trellis-tcp"]
    );
    let catalog: Cluster = decode(&res, CLUSTER_TYPE, "catalog");
    assert!(
        !catalog.typed_extension_protocol_options.is_empty(),
        "HTTP keeps its options"
    );
    let routes: RouteConfiguration = decode(&res, ROUTE_TYPE, "outbound");
    let vhosts: Vec<&str> = routes
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(vhosts, ["catalog"], "TCP services have no virtual host");
}

/// The policies' names in an RBAC filter, sorted.
fn policy_names(rbac: &RbacFilter) -> Vec<String> {
    let mut names: Vec<String> = rbac
        .rules
        .as_ref()
        .map(|r| r.policies.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn http_only_rules_never_allow_and_deny_on_their_from_part() {
    let policies = vec![
        // ALLOW with `to`: never matches a connection.
        policy(
            "allow-get",
            json!({ "rules": [{ "to": [{ "methods": ["GET"] }] }] }),
        ),
        // ALLOW with a `when` and a from-only rule: only the second rule counts.
        policy(
            "allow-mixed",
            json!({ "rules": [
            { "from": [{ "namespaces": ["shop"] }], "when": [{ "claim": "sub", "values": ["a"] }] },
            { "from": [{ "principals": ["spiffe://t/ns/default/svc/web"] }] }
        ] }),
        ),
        // DENY with `from` + `to`: kept, on `from` only.
        policy(
            "deny-batch-delete",
            json!({ "action": "DENY", "rules": [
            { "from": [{ "principals": ["*/svc/batch"] }], "to": [{ "methods": ["DELETE"] }] }
        ] }),
        ),
        // DENY with `to` only: denies every connection.
        policy(
            "deny-admin",
            json!({ "action": "DENY", "rules": [{ "to": [{ "paths": ["/admin"] }] }] }),
        ),
    ];
    let allow = rbac(&policies, AuthorizationAction::Allow).expect("ALLOW policies apply");
    assert_eq!(
        policy_names(&allow),
        ["allow-mixed"],
        "allow-get matches nothing"
    );
    let mixed = &allow.rules.as_ref().expect("rules").policies["allow-mixed"];
    assert_eq!(
        mixed.principals.len(),
        1,
        "the rule with `when` is left out"
    );
    let deny = rbac(&policies, AuthorizationAction::Deny).expect("DENY policies apply");
    assert_eq!(policy_names(&deny), ["deny-admin", "deny-batch-delete"]);
    let admin = &deny.rules.as_ref().expect("rules").policies["deny-admin"];
    assert_eq!(admin.principals[0].identifier, Some(Identifier::Any(true)));
    let batch = &deny.rules.as_ref().expect("rules").policies["deny-batch-delete"];
    let Some(Identifier::Authenticated(a)) = &batch.principals[0].identifier else {
        panic!("expected an authenticated principal: {batch:?}");
    };
    assert_eq!(
        a.principal_name
            .as_ref()
            .and_then(|m| m.match_pattern.clone()),
        Some(MatchPattern::Suffix("/svc/batch".into()))
    );
}

#[test]
fn a_default_deny_is_an_empty_allow_filter_and_no_policy_is_no_filter() {
    let default_deny = policy("default-deny", json!({}));
    let allow = rbac(
        std::slice::from_ref(&default_deny),
        AuthorizationAction::Allow,
    )
    .expect("applies");
    assert!(
        policy_names(&allow).is_empty(),
        "an empty ALLOW filter denies every connection"
    );
    assert!(rbac(&[default_deny], AuthorizationAction::Deny).is_none());
    assert!(rbac(&[], AuthorizationAction::Allow).is_none());
}

#[test]
fn namespace_patterns_become_anchored_spiffe_regexes() {
    let cases = [
        ("shop", r"spiffe://[^/]+/ns/shop(/.*)?"),
        ("sh*", r"spiffe://[^/]+/ns/sh[^/]*(/.*)?"),
        ("*-prod", r"spiffe://[^/]+/ns/[^/]*\-prod(/.*)?"),
        ("*", r"spiffe://[^/]+/ns/[^/]+(/.*)?"),
        ("a.b", r"spiffe://[^/]+/ns/a\.b(/.*)?"),
    ];
    for (pattern, want) in cases {
        let m = namespace_matcher(pattern);
        let Some(MatchPattern::SafeRegex(r)) = m.match_pattern else {
            panic!("{pattern}: not a regex");
        };
        assert_eq!(r.regex, want, "{pattern}");
    }
}

fn idle_policy(idle: &str) -> trellis_model::TrafficPolicySpec {
    let text = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{ name: p }}\nspec:\n  targetRef: {{ name: web }}\n  timeouts: {{ idle: {idle} }}\n"
    );
    match trellis_model::parse_documents("t", &text)
        .expect("valid")
        .remove(0)
    {
        trellis_model::Resource::TrafficPolicy(p) => p.spec,
        other => panic!("not a policy: {other:?}"),
    }
}

#[test]
fn the_services_idle_timeout_goes_on_tcp_proxy_and_the_inbound_hcm() {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let two_s = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 2,
        nanos: 0,
    });
    let tcp_proxy_idle = |mesh: &crate::snapshot::MeshSnapshot| {
        let l: Listener = decode(
            &resources_for(mesh, &node(Some(5432))),
            LISTENER_TYPE,
            "inbound",
        );
        let f = l.filter_chains[0].filters.last().expect("tcp_proxy");
        typed::<TcpProxy>(f).idle_timeout
    };
    let mut mesh = tcp_mesh(vec![]);
    assert_eq!(tcp_proxy_idle(&mesh), None, "no policy: Envoy's default");
    if let Some(web) = mesh.services.get_mut("web") {
        web.policy = Some(idle_policy("2s"));
    }
    assert_eq!(tcp_proxy_idle(&mesh), two_s);

    // The same service over HTTP: the inbound HttpConnectionManager carries it.
    if let Some(web) = mesh.services.get_mut("web") {
        web.declared = None;
    }
    let l: Listener = decode(
        &resources_for(&mesh, &node(Some(8080))),
        LISTENER_TYPE,
        "inbound",
    );
    let hcm: HttpConnectionManager = typed(&l.filter_chains[0].filters[0]);
    assert_eq!(
        hcm.common_http_protocol_options
            .and_then(|o| o.idle_timeout),
        two_s
    );
    let out: Listener = decode(
        &resources_for(&mesh, &node(Some(8080))),
        LISTENER_TYPE,
        "outbound",
    );
    let hcm: HttpConnectionManager = typed(&out.filter_chains[0].filters[0]);
    assert!(
        hcm.common_http_protocol_options.is_none(),
        "outbound: untouched"
    );
}
