//! The security translation (docs/XDS.md, "Security"): decode the packed resources and assert
//! the exact fields both Envoy and the Trellis sidecar read.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use prost::{Message, Name};
use serde_json::json;
use trellis_model::{
    AuthorizationPolicyResource, MtlsMode, MtlsSettings, RequestAuthenticationResource, ServiceSpec,
};

use super::*;
use crate::xds::fixtures::*;
use crate::xds::translate::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, resources_for, same_content,
};

fn authz(name: &str, target: Option<&str>) -> AuthorizationPolicyResource {
    let mut spec = json!({ "action": "DENY", "rules": [{ "to": [{ "methods": ["DELETE"] }] }] });
    if let Some(t) = target {
        spec["targetRef"] = json!({ "name": t });
    }
    serde_json::from_value(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("valid policy literal")
}

fn authn(name: &str) -> RequestAuthenticationResource {
    serde_json::from_value(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": { "name": name },
        "spec": { "jwtRules": [{ "issuer": "https://issuer.example",
                                 "jwksUri": "https://issuer.example/jwks.json" }] },
    }))
    .expect("valid authn literal")
}

/// `web` (the node's own service) in `mode`, `catalog` in namespace `shop` with a subset and
/// two instances, one of them registered with its identity.
fn mesh(mode: MtlsMode) -> crate::snapshot::MeshSnapshot {
    let mut web = view("web", vec![]);
    web.declared = Some(ServiceSpec {
        mtls: MtlsSettings { mode },
        ..Default::default()
    });
    let mut with_id = endpoint("c-1", None, 1, &[("version", "v1")]);
    with_id.identity = Some("spiffe://cluster.local/ns/shop/svc/catalog".into());
    let plain = endpoint("c-22", None, 1, &[("version", "v1")]);
    let mut catalog = view("catalog", vec![with_id, plain]);
    catalog.namespace = "shop".into();
    catalog.declared = Some(ServiceSpec {
        subsets: vec![trellis_model::Subset {
            name: "v1".into(),
            labels: [("version".to_string(), "v1".to_string())].into(),
        }],
        ..Default::default()
    });
    catalog.routes = vec![http_route(
        "to-v1",
        "catalog",
        json!([{ "backendRefs": [{ "name": "catalog", "subset": "v1" }] }]),
    )];
    snapshot(vec![web, catalog])
}

fn typed<T: Message + Default + Name>(any: &Any) -> T {
    assert_eq!(any.type_url, T::type_url());
    T::decode(any.value.as_slice()).expect("decodes")
}

fn socket_config(ts: &Option<TransportSocket>) -> (&str, &Any) {
    let ts = ts.as_ref().expect("transport socket");
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => (ts.name.as_str(), any),
        other => panic!("transport socket without typed config: {other:?}"),
    }
}

fn tls13() -> Option<TlsParameters> {
    Some(TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    })
}

#[test]
fn clusters_of_an_identity_node_carry_mtls_then_plaintext_socket_matches() {
    let mut snap = mesh(MtlsMode::Strict);
    snap.trust_domain = "example.org".into();
    let res = resources_for(&snap, &node(Some(8080)));
    for name in ["catalog", "catalog|v1"] {
        let c: Cluster = decode(&res, CLUSTER_TYPE, name);
        let m = &c.transport_socket_matches;
        assert_eq!(
            m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["mtls", "plaintext"],
            "{name}"
        );
        assert_eq!(m[0].r#match, Some(tls_mode_struct()), "{name}");
        assert_eq!(m[1].r#match, Some(Struct::default()), "{name}");
        let (socket, any) = socket_config(&m[0].transport_socket);
        assert_eq!(socket, "envoy.transport_sockets.tls");
        let tls: UpstreamTlsContext = typed(any);
        assert_eq!(tls.sni, "catalog");
        let common = tls.common_tls_context.expect("common tls context");
        assert_eq!(common.alpn_protocols, ["h2"]);
        assert_eq!(common.tls_params, tls13());
        assert_eq!(
            common.tls_certificate_sds_secret_configs,
            [SdsSecretConfig {
                name: "default".into(),
                sds_config: None
            }]
        );
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("{name}: expected a combined validation context");
        };
        assert_eq!(
            combined
                .validation_context_sds_secret_config
                .map(|s| s.name),
            Some("ROOTCA".to_string())
        );
        let sans = combined
            .default_validation_context
            .expect("default validation context")
            .match_typed_subject_alt_names;
        assert_eq!(sans.len(), 1);
        assert_eq!(sans[0].san_type, SanType::Uri as i32);
        assert_eq!(
            sans[0]
                .matcher
                .as_ref()
                .and_then(|m| m.match_pattern.clone()),
            Some(string_matcher::MatchPattern::Exact(
                "spiffe://example.org/ns/shop/svc/catalog".into()
            )),
            "the SAN names the service's namespace and the CA's trust domain"
        );
        let (socket, any) = socket_config(&m[1].transport_socket);
        assert_eq!(socket, "envoy.transport_sockets.raw_buffer");
        let _: RawBuffer = typed(any);
    }
    // The local app is reached in plaintext.
    let inbound: Cluster = decode(&res, CLUSTER_TYPE, "inbound|8080");
    assert!(inbound.transport_socket_matches.is_empty());
}

#[test]
fn a_node_without_identity_gets_plaintext_clusters() {
    let res = resources_for(&mesh(MtlsMode::Strict), &plain_node(None));
    for name in ["catalog", "catalog|v1", "web"] {
        let c: Cluster = decode(&res, CLUSTER_TYPE, name);
        assert!(c.transport_socket_matches.is_empty(), "{name}");
    }
}

#[test]
fn endpoints_registered_with_an_identity_are_marked_mtls() {
    for node in [node(None), plain_node(None)] {
        let res = resources_for(&mesh(MtlsMode::Strict), &node);
        for name in ["catalog", "catalog|v1"] {
            let cla: ClusterLoadAssignment = decode(&res, ENDPOINT_TYPE, name);
            let marks: Vec<(String, Option<Struct>)> = cla.endpoints[0]
                .lb_endpoints
                .iter()
                .map(|e| {
                    let m = e.metadata.as_ref().expect("metadata");
                    (
                        instance_id(m),
                        m.filter_metadata
                            .get("envoy.transport_socket_match")
                            .cloned(),
                    )
                })
                .collect();
            assert_eq!(
                marks,
                [
                    ("c-1".to_string(), Some(tls_mode_struct())),
                    ("c-22".to_string(), None)
                ],
                "{name}"
            );
        }
    }
    assert_eq!(
        tls_mode_struct().fields["tlsMode"].kind,
        Some(Kind::StringValue("mtls".into()))
    );
}

fn chain_names(l: &Listener) -> Vec<(String, String)> {
    l.filter_chains
        .iter()
        .map(|c| {
            let proto = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.transport_protocol.clone())
                .unwrap_or_default();
            (c.name.clone(), proto)
        })
        .collect()
}

#[test]
fn inbound_chains_follow_the_mode_and_the_nodes_identity() {
    let mtls = ("mtls".to_string(), "tls".to_string());
    let plain = ("plaintext".to_string(), "raw_buffer".to_string());
    let cases = [
        (
            "strict, identity",
            MtlsMode::Strict,
            true,
            Some(vec![mtls.clone()]),
        ),
        (
            "permissive, identity",
            MtlsMode::Permissive,
            true,
            Some(vec![mtls, plain.clone()]),
        ),
        (
            "permissive, no identity",
            MtlsMode::Permissive,
            false,
            Some(vec![plain]),
        ),
        // Never plaintext for a STRICT service: a node that cannot do mTLS gets no listener.
        ("strict, no identity", MtlsMode::Strict, false, None),
    ];
    for (case, mode, identity, want) in cases {
        let n = if identity {
            node(Some(8080))
        } else {
            plain_node(Some(8080))
        };
        let res = resources_for(&mesh(mode), &n);
        let listener = res
            .get(LISTENER_TYPE)
            .iter()
            .find(|(name, _)| name == "inbound")
            .map(|(_, any)| typed::<Listener>(any));
        assert_eq!(listener.as_ref().map(chain_names), want, "{case}");
        // The app's cluster is there either way.
        let _: Cluster = decode(&res, CLUSTER_TYPE, "inbound|8080");
        let Some(l) = listener else { continue };
        assert_eq!(l.listener_filters.len(), 1, "{case}");
        assert_eq!(
            l.listener_filters[0].name,
            "envoy.filters.listener.tls_inspector"
        );
        match &l.listener_filters[0].config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => {
                let _: TlsInspector = typed(any);
            }
            other => panic!("{case}: tls_inspector config {other:?}"),
        }
        // Every chain holds the same HttpConnectionManager.
        assert!(
            l.filter_chains
                .iter()
                .all(|c| c.filters == l.filter_chains[0].filters)
        );
        for c in &l.filter_chains {
            if c.name == "plaintext" {
                assert_eq!(c.transport_socket, None, "{case}");
                continue;
            }
            let (socket, any) = socket_config(&c.transport_socket);
            assert_eq!(socket, "envoy.transport_sockets.tls");
            let tls: DownstreamTlsContext = typed(any);
            assert_eq!(
                tls.require_client_certificate,
                Some(BoolValue { value: true })
            );
            let common = tls.common_tls_context.expect("common tls context");
            assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
            assert_eq!(common.tls_params, tls13());
            assert_eq!(
                common
                    .tls_certificate_sds_secret_configs
                    .iter()
                    .map(|s| (s.name.as_str(), s.sds_config.is_none()))
                    .collect::<Vec<_>>(),
                [("default", true)]
            );
            assert_eq!(
                common.validation_context_type,
                Some(ValidationContextType::ValidationContextSdsSecretConfig(
                    SdsSecretConfig {
                        name: "ROOTCA".into(),
                        sds_config: None
                    }
                ))
            );
        }
    }
}

/// A `Value` back to JSON (whole numbers as integers).
fn to_json(v: &Value) -> serde_json::Value {
    match v.kind.as_ref() {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(to_json).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// The policies a `trellis.*` filter carries, checking the wrapper on the way.
fn carried(f: &HttpFilter, type_url: &str) -> Vec<trellis_model::Resource> {
    assert!(f.is_optional, "{} must be optional for Envoy", f.name);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{}: no typed config", f.name);
    };
    assert_eq!(any.type_url, "type.googleapis.com/xds.type.v3.TypedStruct");
    let ts = TypedStruct::decode(any.value.as_slice()).expect("TypedStruct decodes");
    assert_eq!(ts.type_url, type_url);
    let value = ts.value.expect("value");
    let Some(Kind::ListValue(list)) = value.fields["policies"].kind.as_ref() else {
        panic!("{}: policies is not a list", f.name);
    };
    list.values
        .iter()
        .map(|v| serde_json::from_value(to_json(v)).expect("a resource in its JSON form"))
        .collect()
}

#[test]
fn inbound_http_filters_carry_the_applying_policies_then_the_router() {
    let mut snap = mesh(MtlsMode::Strict);
    let web = snap.services.get_mut("web").expect("web");
    web.authorization = vec![authz("a-deny", Some("web")), authz("mesh-wide", None)];
    web.authentication = vec![authn("web-jwt")];
    let (authz_want, authn_want) = (web.authorization.clone(), web.authentication.clone());
    let res = resources_for(&snap, &node(Some(8080)));
    let l: Listener = decode(&res, LISTENER_TYPE, "inbound");
    let filters = hcm(&l).http_filters;
    assert_eq!(
        filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        [
            "trellis.authn",
            "trellis.authz",
            "envoy.filters.http.router"
        ]
    );
    let authn_got = carried(
        &filters[0],
        "type.googleapis.com/trellis.security.v1.RequestAuthentications",
    );
    let authz_got = carried(
        &filters[1],
        "type.googleapis.com/trellis.security.v1.AuthorizationPolicies",
    );
    assert_eq!(
        authz_got,
        authz_want
            .into_iter()
            .map(trellis_model::Resource::AuthorizationPolicy)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        authn_got,
        authn_want
            .into_iter()
            .map(trellis_model::Resource::RequestAuthentication)
            .collect::<Vec<_>>()
    );
    // The outbound listener never carries policies: only the fault filter and the router.
    let out: Listener = decode(&res, LISTENER_TYPE, "outbound");
    let names: Vec<String> = hcm(&out).http_filters.into_iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        vec![wire::FAULT_FILTER, crate::xds::translate::ROUTER_FILTER]
    );

    // Without policies only the router is left, and only authz when only authz applies.
    let plain = resources_for(&mesh(MtlsMode::Strict), &node(Some(8080)));
    let l: Listener = decode(&plain, LISTENER_TYPE, "inbound");
    assert_eq!(hcm(&l).http_filters.len(), 1);
    let mut only_authz = mesh(MtlsMode::Strict);
    if let Some(w) = only_authz.services.get_mut("web") {
        w.authorization = vec![authz("mesh-wide", None)];
    }
    let res = resources_for(&only_authz, &node(Some(8080)));
    let l: Listener = decode(&res, LISTENER_TYPE, "inbound");
    let names: Vec<String> = hcm(&l).http_filters.into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["trellis.authz", "envoy.filters.http.router"]);
}

#[test]
fn policy_and_mode_changes_change_the_listener_so_they_are_pushed() {
    let base = mesh(MtlsMode::Strict);
    let mut with_policy = base.clone();
    if let Some(w) = with_policy.services.get_mut("web") {
        w.authorization = vec![authz("mesh-wide", None)];
    }
    let mut with_authn = base.clone();
    if let Some(w) = with_authn.services.get_mut("web") {
        w.authentication = vec![authn("web-jwt")];
    }
    let n = node(Some(8080));
    let listeners = |s| resources_for(s, &n).get(LISTENER_TYPE).to_vec();
    let base_l = listeners(&base);
    let permissive = mesh(MtlsMode::Permissive);
    for (case, other) in [
        ("authorization", &with_policy),
        ("authentication", &with_authn),
        ("mode", &permissive),
    ] {
        assert!(
            !same_content(LISTENER_TYPE, &base_l, &listeners(other)),
            "a change of {case} must change the inbound Listener"
        );
    }
    assert!(same_content(
        LISTENER_TYPE,
        &base_l,
        &listeners(&base.clone())
    ));
}

#[test]
fn json_values_convert_to_protobuf_values() {
    let v = json_to_value(&json!({ "a": [1, "x", true, null], "b": { "c": 2.5 } }));
    assert_eq!(
        to_json(&v),
        json!({ "a": [1, "x", true, null], "b": { "c": 2.5 } })
    );
}
