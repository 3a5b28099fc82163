//! The security translation: the control plane's own output (trellis-control, a dev
//! dependency) must translate, and every malformed variant must be an error naming what is
//! wrong.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, SubjectAltNameMatcher, common_tls_context::CombinedCertificateValidationContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::ListValue;
use envoy_types::util::pack_any;
use serde_json::json;
use trellis_control::xds::security as control;
use trellis_model::{MtlsMode, wire};

use super::*;

const CATALOG_ID: &str = "spiffe://cluster.local/ns/shop/svc/catalog";

fn mtls_matches() -> Vec<TransportSocketMatch> {
    control::upstream_tls_matches("catalog", CATALOG_ID, wire::MTLS_CLIENT_ALPN)
}

fn cluster_with(matches: Vec<TransportSocketMatch>) -> Cluster {
    Cluster {
        name: "catalog".into(),
        transport_socket_matches: matches,
        ..Default::default()
    }
}

/// The mTLS match with its UpstreamTlsContext changed by `f`.
fn tweak_tls(f: impl FnOnce(&mut UpstreamTlsContext)) -> Vec<TransportSocketMatch> {
    let mut m = mtls_matches();
    let Some(transport_socket::ConfigType::TypedConfig(any)) = m[0]
        .transport_socket
        .as_mut()
        .and_then(|t| t.config_type.as_mut())
    else {
        panic!("the control plane's mtls match has a typed config");
    };
    let mut ctx = UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
    f(&mut ctx);
    *any = pack_any(ctx);
    m
}

fn set_sans(ctx: &mut UpstreamTlsContext, sans: Vec<SubjectAltNameMatcher>) {
    let common = ctx
        .common_tls_context
        .get_or_insert_with(CommonTlsContext::default);
    common.validation_context_type = Some(ValidationContextType::CombinedValidationContext(
        CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_typed_subject_alt_names: sans,
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
}

fn san(kind: SanType, pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: kind as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn cluster_transport_socket_matches() {
    let exact = |s: &str| MatchPattern::Exact(s.to_string());
    type Case<'a> = (
        &'a str,
        Vec<TransportSocketMatch>,
        Result<Option<TlsPolicy>, &'a str>,
    );
    let cases: Vec<Case> = vec![
        ("none: plaintext", vec![], Ok(None)),
        (
            "the contract's mtls + plaintext",
            mtls_matches(),
            Ok(Some(TlsPolicy {
                expected_ids: vec![CATALOG_ID.into()],
                sni: "catalog".into(),
            })),
        ),
        ("plaintext only", mtls_matches().split_off(1), Ok(None)),
        (
            "two SPIFFE IDs",
            tweak_tls(|c| {
                set_sans(
                    c,
                    vec![
                        san(SanType::Uri, exact(CATALOG_ID)),
                        san(SanType::Uri, exact("spiffe://cluster.local/ns/shop/svc/c2")),
                    ],
                )
            }),
            Ok(Some(TlsPolicy {
                expected_ids: vec![
                    CATALOG_ID.into(),
                    "spiffe://cluster.local/ns/shop/svc/c2".into(),
                ],
                sni: "catalog".into(),
            })),
        ),
        (
            "SAN not a SPIFFE ID",
            tweak_tls(|c| set_sans(c, vec![san(SanType::Uri, exact("https://catalog"))])),
            Err("`https://catalog` is not a SPIFFE ID"),
        ),
        (
            "prefix SAN matcher",
            tweak_tls(|c| {
                set_sans(
                    c,
                    vec![san(SanType::Uri, MatchPattern::Prefix("spiffe://".into()))],
                )
            }),
            Err("only exact matchers are supported"),
        ),
        (
            "DNS SAN",
            tweak_tls(|c| set_sans(c, vec![san(SanType::Dns, exact("catalog"))])),
            Err("only URI SANs"),
        ),
        (
            "no SAN",
            tweak_tls(|c| set_sans(c, vec![])),
            Err("names no server SPIFFE ID"),
        ),
        ("no SNI", tweak_tls(|c| c.sni.clear()), Err("sni is empty")),
        (
            "unknown match",
            {
                let mut m = mtls_matches();
                m[0].r#match = Some(Struct {
                    fields: [(
                        "tlsMode".to_string(),
                        Value {
                            kind: Some(Kind::StringValue("istio".into())),
                        },
                    )]
                    .into(),
                });
                m
            },
            Err("is not supported"),
        ),
        (
            "mtls match over raw_buffer",
            {
                let mut m = mtls_matches();
                m[0].transport_socket = m[1].transport_socket.clone();
                m
            },
            Err("the mTLS match must use `envoy.transport_sockets.tls`"),
        ),
        (
            "catch-all over tls",
            {
                let mut m = mtls_matches();
                m[1].transport_socket = m[0].transport_socket.clone();
                m
            },
            Err("the catch-all match must use `envoy.transport_sockets.raw_buffer`"),
        ),
        (
            "two mtls matches",
            {
                let mut m = mtls_matches();
                m.insert(1, m[0].clone());
                m
            },
            Err("a second mTLS match"),
        ),
    ];
    for (case, matches, want) in cases {
        let got = cluster_tls(&cluster_with(matches));
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{case}"),
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{case}: {e}"),
            (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn endpoint_metadata_marks_mtls() {
    let meta = |key: &str, s: Struct| Metadata {
        filter_metadata: [(key.to_string(), s)].into(),
        ..Default::default()
    };
    let mode = |m: &str| Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue(m.into())),
            },
        )]
        .into(),
    };
    let cases = [
        ("no metadata", None, false),
        (
            "trellis only",
            Some(meta("trellis", Struct::default())),
            false,
        ),
        (
            "mtls",
            Some(meta(
                "envoy.transport_socket_match",
                control::tls_mode_struct(),
            )),
            true,
        ),
        (
            "istio",
            Some(meta("envoy.transport_socket_match", mode("istio"))),
            false,
        ),
        (
            "disabled",
            Some(meta("envoy.transport_socket_match", mode("disabled"))),
            false,
        ),
    ];
    for (case, m, want) in cases {
        assert_eq!(endpoint_mtls(m.as_ref()), want, "{case}");
    }
}

// ---- the inbound Listener -------------------------------------------------------------------

fn typed_struct_filter(name: &str, type_url: &str, policies: Vec<serde_json::Value>) -> HttpFilter {
    let ts = TypedStruct {
        type_url: type_url.into(),
        value: Some(Struct {
            fields: [(
                "policies".to_string(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: policies.iter().map(control::json_to_value).collect(),
                    })),
                },
            )]
            .into(),
        }),
    };
    HttpFilter {
        name: name.into(),
        is_optional: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: wire::TYPED_STRUCT_TYPE_URL.into(),
            value: ts.encode_to_vec(),
        })),
        ..Default::default()
    }
}

pub(crate) fn deny_delete(name: &str) -> serde_json::Value {
    json!({ "kind": "AuthorizationPolicy", "apiVersion": "trellis.dev/v1alpha1",
            "metadata": { "name": name },
            "spec": { "action": "DENY", "rules": [{ "to": [{ "methods": ["DELETE"] }] }] } })
}

pub(crate) fn jwt_rule(name: &str) -> serde_json::Value {
    json!({ "kind": "RequestAuthentication", "apiVersion": "trellis.dev/v1alpha1",
            "metadata": { "name": name },
            "spec": { "jwtRules": [{ "issuer": "https://issuer.example",
                                     "jwksUri": "http://127.0.0.1:9/jwks.json" }] } })
}

pub(crate) fn authz_filter(policies: Vec<serde_json::Value>) -> HttpFilter {
    typed_struct_filter(wire::AUTHZ_FILTER, wire::AUTHZ_TYPE_URL, policies)
}

pub(crate) fn authn_filter(policies: Vec<serde_json::Value>) -> HttpFilter {
    typed_struct_filter(wire::AUTHN_FILTER, wire::AUTHN_TYPE_URL, policies)
}

fn router() -> HttpFilter {
    HttpFilter {
        name: ROUTER_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    }
}

fn hcm(mut filters: Vec<HttpFilter>) -> Filter {
    filters.push(router());
    Filter {
        name: HCM_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(
            HttpConnectionManager {
                stat_prefix: "inbound".into(),
                route_specifier: Some(RouteSpecifier::RouteConfig(Default::default())),
                http_filters: filters,
                ..Default::default()
            },
        ))),
    }
}

/// The inbound Listener as the control plane lays it out, with these HTTP filters.
pub(crate) fn inbound_listener(
    mode: MtlsMode,
    identity: bool,
    filters: Vec<HttpFilter>,
) -> Listener {
    let (listener_filters, filter_chains) =
        control::inbound_chains(mode, identity, vec![hcm(filters)], wire::MTLS_SERVER_ALPN)
            .expect("a listener for this node");
    Listener {
        name: "inbound".into(),
        listener_filters,
        filter_chains,
        ..Default::default()
    }
}

#[test]
fn inbound_mode_from_the_chain_layout() {
    let cases = [
        ("strict", MtlsMode::Strict, true, InboundMode::Strict),
        (
            "permissive",
            MtlsMode::Permissive,
            true,
            InboundMode::Permissive,
        ),
        (
            "permissive without identity",
            MtlsMode::Permissive,
            false,
            InboundMode::Permissive,
        ),
    ];
    for (case, mode, identity, want) in cases {
        let got = inbound_config(&inbound_listener(mode, identity, vec![])).expect(case);
        assert_eq!(
            got,
            InboundConfig {
                mode: want,
                ..Default::default()
            },
            "{case}"
        );
    }
}

#[test]
fn malformed_inbound_listeners_are_errors() {
    let base = || inbound_listener(MtlsMode::Permissive, true, vec![]);
    let with = |f: &dyn Fn(&mut Listener)| {
        let mut l = base();
        f(&mut l);
        l
    };
    let cases: Vec<(&str, Listener, &str)> = vec![
        (
            "no chains",
            with(&|l| l.filter_chains.clear()),
            "filter chains []",
        ),
        (
            "plaintext first",
            with(&|l| l.filter_chains.reverse()),
            "expected [mtls/tls]",
        ),
        (
            "unnamed chain",
            with(&|l| l.filter_chains[1].name.clear()),
            "filter chains",
        ),
        (
            "mtls chain without tls",
            with(&|l| l.filter_chains[0].transport_socket = None),
            "chain `mtls`: needs the `envoy.transport_sockets.tls` transport socket",
        ),
        (
            "client certificate optional",
            with(&|l| {
                let ctx = DownstreamTlsContext::default();
                l.filter_chains[0].transport_socket = Some(TransportSocket {
                    name: wire::TLS_TRANSPORT_SOCKET.into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
                });
            }),
            "require_client_certificate must be true",
        ),
        (
            "different HCMs",
            with(&|l| {
                l.filter_chains[1].filters = vec![hcm(vec![authz_filter(vec![deny_delete("x")])])]
            }),
            "different HttpConnectionManagers",
        ),
        (
            "no HCM",
            with(&|l| {
                l.filter_chains
                    .iter_mut()
                    .for_each(|c: &mut FilterChain| c.filters.clear())
            }),
            "expected exactly one filter",
        ),
        (
            "required unknown filter",
            inbound_listener(
                MtlsMode::Strict,
                true,
                vec![HttpFilter {
                    name: "acme.waf".into(),
                    ..Default::default()
                }],
            ),
            "http filter `acme.waf` is not supported",
        ),
        (
            "policy with an unknown field",
            inbound_listener(
                MtlsMode::Strict,
                true,
                vec![authz_filter(vec![{
                    let mut p = deny_delete("bad");
                    p["spec"]["colour"] = json!("red");
                    p
                }])],
            ),
            "trellis.authz: policies[0] is invalid",
        ),
        (
            "policy with an invalid method",
            inbound_listener(
                MtlsMode::Strict,
                true,
                vec![authz_filter(vec![{
                    let mut p = deny_delete("bad");
                    p["spec"]["rules"][0]["to"][0]["methods"] = json!(["del ete"]);
                    p
                }])],
            ),
            "policies[0] is invalid",
        ),
        (
            "authz filter carrying authn",
            inbound_listener(
                MtlsMode::Strict,
                true,
                vec![authz_filter(vec![jwt_rule("j")])],
            ),
            "holds RequestAuthentication `j`",
        ),
        (
            "wrong TypedStruct type",
            inbound_listener(
                MtlsMode::Strict,
                true,
                vec![typed_struct_filter(
                    wire::AUTHZ_FILTER,
                    wire::AUTHN_TYPE_URL,
                    vec![],
                )],
            ),
            "expected `type.googleapis.com/trellis.security.v1.AuthorizationPolicies`",
        ),
        (
            "not a TypedStruct",
            inbound_listener(
                MtlsMode::Strict,
                true,
                vec![HttpFilter {
                    name: wire::AUTHN_FILTER.into(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                        Struct::default(),
                    ))),
                    ..Default::default()
                }],
            ),
            "trellis.authn: expected `type.googleapis.com/xds.type.v3.TypedStruct`",
        ),
    ];
    for (case, listener, needle) in cases {
        match inbound_config(&listener) {
            Err(e) => assert!(e.contains(needle), "{case}: {e}"),
            Ok(c) => panic!("{case}: accepted as {c:?}"),
        }
    }
}

#[test]
fn policies_are_read_in_order_and_unknown_optional_filters_skipped() {
    let optional = HttpFilter {
        name: "acme.optional".into(),
        is_optional: true,
        ..Default::default()
    };
    let l = inbound_listener(
        MtlsMode::Strict,
        true,
        vec![
            authn_filter(vec![jwt_rule("jwt")]),
            optional,
            authz_filter(vec![deny_delete("b"), deny_delete("a")]),
        ],
    );
    let got = inbound_config(&l).expect("valid");
    assert_eq!(got.mode, InboundMode::Strict);
    assert_eq!(
        got.authz
            .iter()
            .map(|p| p.metadata.name.as_str())
            .collect::<Vec<_>>(),
        ["b", "a"]
    );
    assert_eq!(got.authn.len(), 1);
    assert_eq!(
        got.authn[0].spec.jwt_rules[0].issuer,
        "https://issuer.example"
    );
}

#[test]
fn struct_values_convert_to_json() {
    let v = control::json_to_value(&json!({ "n": 3, "f": 1.5, "l": [true, null, "s"] }));
    assert_eq!(
        to_json(&v),
        json!({ "n": 3, "f": 1.5, "l": [true, null, "s"] })
    );
}
