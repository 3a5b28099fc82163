//! The security part of a proxy's xDS (docs/XDS.md, "Security"): upstream mTLS on clusters
//! (`transport_socket_matches`), the mTLS marker on endpoints, the inbound listener's filter
//! chains for the service's mTLS mode, and the `trellis.authn` / `trellis.authz` HTTP filters
//! carrying the applying policies. Pure functions; no secret ever travels here: the SDS names
//! refer to what the proxy already holds.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, ListValue, Struct, Value, value::Kind};
use envoy_types::util::pack_any;
use trellis_model::{MtlsMode, Resource, wire};

use super::translate::TypedStruct;
use crate::snapshot::ServiceView;

/// `{tlsMode: "mtls"}`: the endpoint metadata and the match of the `mtls` socket match.
pub fn tls_mode_struct() -> Struct {
    Struct {
        fields: [(wire::TLS_MODE_KEY.to_string(), string(wire::TLS_MODE_MTLS))].into(),
    }
}

/// The `transport_socket_matches` of every EDS cluster of a service, for a node that holds a
/// mesh certificate: mTLS (SNI = the service, the server's URI SAN must be `server_id`) to
/// endpoints marked `tlsMode: mtls`, plaintext to the others. `alpn`: `h2` for HTTP
/// services, `trellis-tcp` for TCP ones.
pub fn upstream_tls_matches(
    service: &str,
    server_id: &str,
    alpn_protocols: &[&str],
) -> Vec<TransportSocketMatch> {
    let tls = UpstreamTlsContext {
        sni: service.to_string(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: alpn(alpn_protocols),
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: SanType::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(
                                    server_id.to_string(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(wire::SDS_TRUST_BUNDLE)),
                    ..Default::default()
                },
            )),
            ..common_tls()
        }),
        ..Default::default()
    };
    vec![
        TransportSocketMatch {
            name: wire::MTLS_CHAIN.to_string(),
            r#match: Some(tls_mode_struct()),
            transport_socket: Some(transport_socket_of(
                wire::TLS_TRANSPORT_SOCKET,
                pack_any(tls),
            )),
        },
        TransportSocketMatch {
            name: wire::PLAINTEXT_CHAIN.to_string(),
            r#match: Some(Struct::default()),
            transport_socket: Some(transport_socket_of(
                wire::RAW_TRANSPORT_SOCKET,
                pack_any(RawBuffer::default()),
            )),
        },
    ]
}

/// The inbound listener's listener filters and filter chains around `filters` (the
/// HttpConnectionManager, or a TCP service's RBAC + tcp_proxy filters), the `mtls` chain
/// offering `server_alpn`; `None` when the node must get no inbound listener at all.
///
/// A node with a mesh certificate gets the `mtls` chain, plus the `plaintext` chain when the
/// service is PERMISSIVE. A node without one (a stock Envoy: it cannot obtain the SDS secrets)
/// gets only the `plaintext` chain when PERMISSIVE, and no inbound listener when STRICT: a
/// STRICT service is never served in plaintext.
pub fn inbound_chains(
    mode: MtlsMode,
    has_identity: bool,
    filters: Vec<Filter>,
    server_alpn: &[&str],
) -> Option<(Vec<ListenerFilter>, Vec<FilterChain>)> {
    let mut chains = Vec::with_capacity(2);
    if has_identity {
        chains.push(FilterChain {
            name: wire::MTLS_CHAIN.to_string(),
            filter_chain_match: Some(transport_match(wire::TRANSPORT_TLS)),
            transport_socket: Some(transport_socket_of(
                wire::TLS_TRANSPORT_SOCKET,
                pack_any(downstream_tls(server_alpn)),
            )),
            filters: filters.clone(),
            ..Default::default()
        });
    }
    if mode == MtlsMode::Permissive {
        chains.push(FilterChain {
            name: wire::PLAINTEXT_CHAIN.to_string(),
            filter_chain_match: Some(transport_match(wire::TRANSPORT_RAW)),
            filters,
            ..Default::default()
        });
    }
    if chains.is_empty() {
        return None;
    }
    let inspector = ListenerFilter {
        name: wire::TLS_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    };
    Some((vec![inspector], chains))
}

/// The service's inbound mTLS mode: its Service resource's, STRICT without one.
pub fn mtls_mode(view: Option<&ServiceView>) -> MtlsMode {
    view.and_then(|v| v.declared.as_ref())
        .map(|d| d.mtls.mode)
        .unwrap_or_default()
}

/// `trellis.authn` then `trellis.authz`, each only when a policy of its kind applies; both
/// optional, so a stock Envoy skips them.
pub fn policy_filters(view: Option<&ServiceView>) -> Vec<HttpFilter> {
    let Some(view) = view else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(2);
    if !view.authentication.is_empty() {
        let resources = view
            .authentication
            .iter()
            .map(|a| Resource::RequestAuthentication(a.clone()));
        out.push(policy_filter(
            wire::AUTHN_FILTER,
            wire::AUTHN_TYPE_URL,
            resources,
        ));
    }
    if !view.authorization.is_empty() {
        let resources = view
            .authorization
            .iter()
            .map(|p| Resource::AuthorizationPolicy(p.clone()));
        out.push(policy_filter(
            wire::AUTHZ_FILTER,
            wire::AUTHZ_TYPE_URL,
            resources,
        ));
    }
    out
}

fn policy_filter(
    name: &str,
    type_url: &str,
    resources: impl Iterator<Item = Resource>,
) -> HttpFilter {
    let policies: Vec<Value> = resources
        .map(|r| json_to_value(&serde_json::to_value(r).unwrap_or_default()))
        .collect();
    let typed = TypedStruct {
        type_url: type_url.to_string(),
        value: Some(Struct {
            fields: [(
                wire::POLICIES_FIELD.to_string(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: policies })),
                },
            )]
            .into(),
        }),
    };
    HttpFilter {
        name: name.to_string(),
        is_optional: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: wire::TYPED_STRUCT_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&typed),
        })),
        ..Default::default()
    }
}

/// A JSON value as a protobuf `Value` (numbers become doubles, as in any `Struct`).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn downstream_tls(server_alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: alpn(server_alpn),
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(
                sds(wire::SDS_TRUST_BUNDLE),
            )),
            ..common_tls()
        }),
        ..Default::default()
    }
}

/// TLS 1.3 only, the proxy's own certificate by SDS name.
fn common_tls() -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds(wire::SDS_CERTIFICATE)],
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: None,
    }
}

fn alpn(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn transport_match(protocol: &str) -> FilterChainMatch {
    FilterChainMatch {
        transport_protocol: protocol.to_string(),
        ..Default::default()
    }
}

fn transport_socket_of(name: &str, config: Any) -> TransportSocket {
    TransportSocket {
        name: name.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests;
