//! The security part of xDS (docs/XDS.md, "Security") → typed config: a cluster's
//! `transport_socket_matches` → [`TlsPolicy`], an endpoint's `envoy.transport_socket_match`
//! metadata → "serves mTLS", and the `inbound` Listener → [`InboundConfig`] (mTLS mode from its
//! filter chains, the policies from the `trellis.authn` / `trellis.authz` TypedStructs).
//!
//! Pure and strict: a layout this subset does not define, a policy that does not validate, or
//! a SAN matcher that is not an exact SPIFFE ID is an error (the client NACKs it).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{Metadata, TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, DownstreamTlsContext, UpstreamTlsContext,
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use prost::Message;
use trellis_model::{AuthorizationPolicyResource, RequestAuthenticationResource, Resource, wire};

use super::tcp;
use crate::authz::ConnectionPolicy;
use crate::security::{InboundMode, TlsPolicy};

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.\
                            http_connection_manager.v3.HttpConnectionManager";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
const UPSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// `xds.type.v3.TypedStruct` (envoy-types does not generate it).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// The inbound Listener as translated: what [`super::state`] builds an
/// [`crate::security::InboundSecurity`] from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct InboundConfig {
    pub mode: InboundMode,
    /// Validated AuthorizationPolicies, in the order sent.
    pub authz: Vec<AuthorizationPolicyResource>,
    /// Validated RequestAuthentications, in the order sent.
    pub authn: Vec<RequestAuthenticationResource>,
    /// `Some` for a TCP service (chains of RBAC filters + tcp_proxy): connections are raw
    /// byte streams, authorized by these filters ([`super::tcp`]).
    pub tcp: Option<ConnectionPolicy>,
    /// Local rate limits, in rule order ([`super::ratelimit`]); empty: none.
    pub ratelimit: Vec<crate::ratelimit::RuleConfig>,
    /// Downstream idle timeout: the HttpConnectionManager's
    /// `common_http_protocol_options.idle_timeout`, or tcp_proxy's `idle_timeout`; `None`:
    /// Envoy's default (1h), zero: none.
    pub idle_timeout: Option<std::time::Duration>,
}

/// True when the endpoint's metadata marks it as serving mTLS.
pub(crate) fn endpoint_mtls(metadata: Option<&Metadata>) -> bool {
    metadata
        .and_then(|m| m.filter_metadata.get(wire::TRANSPORT_SOCKET_MATCH))
        .is_some_and(is_mtls_mark)
}

fn is_mtls_mark(s: &Struct) -> bool {
    s.fields.len() == 1
        && matches!(
            s.fields.get(wire::TLS_MODE_KEY).and_then(|v| v.kind.as_ref()),
            Some(Kind::StringValue(m)) if m == wire::TLS_MODE_MTLS
        )
}

/// The cluster's upstream mTLS: `None` without `transport_socket_matches` (plaintext only).
pub(crate) fn cluster_tls(c: &Cluster) -> Result<Option<TlsPolicy>, String> {
    let mut tls = None;
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let here = format!("transport_socket_matches[{i}] (`{}`)", m.name);
        match socket_match(m).map_err(|e| format!("{here}: {e}"))? {
            Some(policy) if tls.is_none() => tls = Some(policy),
            Some(_) => return Err(format!("{here}: a second mTLS match")),
            None => {}
        }
    }
    Ok(tls)
}

/// One match: `Some` for the mTLS entry, `None` for the plaintext one.
fn socket_match(m: &TransportSocketMatch) -> Result<Option<TlsPolicy>, String> {
    let empty = Struct::default();
    let criteria = m.r#match.as_ref().unwrap_or(&empty);
    let (name, config) = socket(m.transport_socket.as_ref())?;
    if criteria.fields.is_empty() {
        return match name {
            wire::RAW_TRANSPORT_SOCKET => Ok(None),
            other => Err(format!(
                "the catch-all match must use `{}`, not `{other}`",
                wire::RAW_TRANSPORT_SOCKET
            )),
        };
    }
    if !is_mtls_mark(criteria) {
        return Err(format!(
            "match {criteria:?} is not supported (expected {{{}: \"{}\"}} or {{}})",
            wire::TLS_MODE_KEY,
            wire::TLS_MODE_MTLS
        ));
    }
    let Some(config) = config.filter(|_| name == wire::TLS_TRANSPORT_SOCKET) else {
        return Err(format!(
            "the mTLS match must use `{}` with an UpstreamTlsContext",
            wire::TLS_TRANSPORT_SOCKET
        ));
    };
    let ctx: UpstreamTlsContext = decode(config, UPSTREAM_TLS_TYPE_URL)?;
    if ctx.sni.is_empty() {
        return Err("UpstreamTlsContext.sni is empty: it must name the service".into());
    }
    let common = ctx.common_tls_context.unwrap_or_default();
    let validation = match common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(c)) => c.default_validation_context,
        Some(ValidationContextType::ValidationContext(v)) => Some(v),
        _ => None,
    };
    let expected_ids = spiffe_sans(validation.as_ref())?;
    Ok(Some(TlsPolicy {
        expected_ids,
        sni: ctx.sni,
    }))
}

/// The exact URI SAN matchers, each a SPIFFE ID; at least one.
fn spiffe_sans(v: Option<&CertificateValidationContext>) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for (i, san) in v
        .map(|v| v.match_typed_subject_alt_names.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let here = format!("match_typed_subject_alt_names[{i}]");
        if san.san_type != SanType::Uri as i32 {
            return Err(format!("{here}: only URI SANs (SPIFFE IDs) are supported"));
        }
        match san.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
            Some(MatchPattern::Exact(id)) if is_spiffe_id(id) => ids.push(id.clone()),
            Some(MatchPattern::Exact(id)) => {
                return Err(format!(
                    "{here}: `{}` is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/svc/<svc>)",
                    id.chars().take(200).collect::<String>()
                ));
            }
            _ => return Err(format!("{here}: only exact matchers are supported")),
        }
    }
    if ids.is_empty() {
        return Err(
            "the mTLS match names no server SPIFFE ID (match_typed_subject_alt_names)".into(),
        );
    }
    Ok(ids)
}

fn is_spiffe_id(id: &str) -> bool {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(domain, path)| !domain.is_empty() && !path.is_empty())
        && !id.contains(char::is_whitespace)
}

fn socket(ts: Option<&TransportSocket>) -> Result<(&str, Option<&Any>), String> {
    let Some(ts) = ts else {
        return Ok((wire::RAW_TRANSPORT_SOCKET, None));
    };
    let config = ts
        .config_type
        .as_ref()
        .map(|transport_socket::ConfigType::TypedConfig(any)| any);
    Ok((ts.name.as_str(), config))
}

fn decode<T: Message + Default>(any: &Any, type_url: &str) -> Result<T, String> {
    if any.type_url != type_url {
        return Err(format!("expected `{type_url}`, got `{}`", any.type_url));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("cannot decode `{type_url}`: {e}"))
}

/// The `inbound` Listener → mode and policies.
pub(crate) fn inbound_config(l: &Listener) -> Result<InboundConfig, String> {
    let layout: Vec<(&str, &str)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let proto = c
                .filter_chain_match
                .as_ref()
                .map_or("", |m| m.transport_protocol.as_str());
            (c.name.as_str(), proto)
        })
        .collect();
    let mtls = (wire::MTLS_CHAIN, wire::TRANSPORT_TLS);
    let plain = (wire::PLAINTEXT_CHAIN, wire::TRANSPORT_RAW);
    let mode = if layout == [mtls] {
        InboundMode::Strict
    } else if layout == [mtls, plain] || layout == [plain] {
        InboundMode::Permissive
    } else {
        return Err(format!(
            "filter chains {layout:?} (name, transport_protocol): expected [mtls/tls] (STRICT), \
             [mtls/tls, plaintext/raw_buffer] (PERMISSIVE) or [plaintext/raw_buffer]"
        ));
    };
    for c in &l.filter_chains {
        check_chain_socket(c)?;
    }
    if l.filter_chains.iter().any(tcp::is_tcp_chain) {
        return tcp_inbound(l, mode);
    }
    let hcms = l
        .filter_chains
        .iter()
        .map(hcm_of)
        .collect::<Result<Vec<_>, String>>()?;
    if hcms.windows(2).any(|w| w[0] != w[1]) {
        return Err("the filter chains hold different HttpConnectionManagers".into());
    }
    let mut out = InboundConfig {
        mode,
        ..InboundConfig::default()
    };
    if let Some(hcm) = hcms.first() {
        policies(hcm, &mut out)?;
        out.ratelimit = super::ratelimit::rules(hcm)?;
        out.idle_timeout = super::resilience::opt_duration(
            "HttpConnectionManager.common_http_protocol_options.idle_timeout",
            hcm.common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref()),
        )?;
    }
    Ok(out)
}

/// A TCP service's inbound listener: every chain RBAC filters + tcp_proxy, all identical.
fn tcp_inbound(l: &Listener, mode: InboundMode) -> Result<InboundConfig, String> {
    if !l.filter_chains.iter().all(tcp::is_tcp_chain) {
        return Err("some filter chains end in tcp_proxy and others do not".into());
    }
    let policies = l
        .filter_chains
        .iter()
        .map(tcp::connection_policy)
        .collect::<Result<Vec<_>, String>>()?;
    if policies.windows(2).any(|w| w[0] != w[1]) {
        return Err(
            "the filter chains hold different RBAC filters or tcp_proxy idle timeouts".into(),
        );
    }
    let (tcp, idle_timeout) = policies.into_iter().next().unzip();
    Ok(InboundConfig {
        mode,
        tcp,
        idle_timeout: idle_timeout.flatten(),
        ..InboundConfig::default()
    })
}

fn check_chain_socket(c: &FilterChain) -> Result<(), String> {
    let (name, config) = socket(c.transport_socket.as_ref())?;
    if c.name == wire::PLAINTEXT_CHAIN {
        return match name {
            wire::RAW_TRANSPORT_SOCKET => Ok(()),
            other => Err(format!("chain `plaintext`: transport socket `{other}`")),
        };
    }
    let Some(config) = config.filter(|_| name == wire::TLS_TRANSPORT_SOCKET) else {
        return Err(format!(
            "chain `mtls`: needs the `{}` transport socket with a DownstreamTlsContext",
            wire::TLS_TRANSPORT_SOCKET
        ));
    };
    let ctx: DownstreamTlsContext =
        decode(config, DOWNSTREAM_TLS_TYPE_URL).map_err(|e| format!("chain `mtls`: {e}"))?;
    if !ctx.require_client_certificate.is_some_and(|b| b.value) {
        return Err("chain `mtls`: require_client_certificate must be true".into());
    }
    Ok(())
}

fn hcm_of(c: &FilterChain) -> Result<HttpConnectionManager, String> {
    let [f] = c.filters.as_slice() else {
        return Err(format!(
            "chain `{}`: expected exactly one filter, the HttpConnectionManager",
            c.name
        ));
    };
    match (&f.name, &f.config_type) {
        (name, Some(filter::ConfigType::TypedConfig(any))) if name == HCM_FILTER => {
            decode(any, HCM_TYPE_URL).map_err(|e| format!("chain `{}`: {e}", c.name))
        }
        _ => Err(format!(
            "chain `{}`: filter `{}` is not a typed HttpConnectionManager",
            c.name, f.name
        )),
    }
}

/// Reads the policy filters; unknown optional filters are skipped, unknown required ones are
/// errors.
fn policies(hcm: &HttpConnectionManager, out: &mut InboundConfig) -> Result<(), String> {
    for f in &hcm.http_filters {
        match f.name.as_str() {
            wire::AUTHN_FILTER => {
                for r in carried(f, wire::AUTHN_TYPE_URL)? {
                    match r {
                        Resource::RequestAuthentication(a) => out.authn.push(a),
                        other => return Err(wrong_kind(f, &other)),
                    }
                }
            }
            wire::AUTHZ_FILTER => {
                for r in carried(f, wire::AUTHZ_TYPE_URL)? {
                    match r {
                        Resource::AuthorizationPolicy(p) => out.authz.push(p),
                        other => return Err(wrong_kind(f, &other)),
                    }
                }
            }
            wire::RATE_LIMIT_FILTER => super::ratelimit::check_filter(f)?,
            ROUTER_FILTER => {}
            _ if f.is_optional => {}
            other => return Err(format!("http filter `{other}` is not supported")),
        }
    }
    Ok(())
}

fn wrong_kind(f: &HttpFilter, r: &Resource) -> String {
    format!(
        "{}: holds {} `{}`, a kind it does not carry",
        f.name,
        r.kind(),
        r.name()
    )
}

/// The validated resources in a `trellis.*` filter's TypedStruct.
fn carried(f: &HttpFilter, type_url: &str) -> Result<Vec<Resource>, String> {
    let name = &f.name;
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(format!("{name}: no typed_config"));
    };
    let ts: TypedStruct =
        decode(any, wire::TYPED_STRUCT_TYPE_URL).map_err(|e| format!("{name}: {e}"))?;
    if ts.type_url != type_url {
        return Err(format!(
            "{name}: TypedStruct type_url `{}`, expected `{type_url}`",
            ts.type_url
        ));
    }
    let value = ts.value.unwrap_or_default();
    let list = match value
        .fields
        .get(wire::POLICIES_FIELD)
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::ListValue(l)) => &l.values,
        _ => return Err(format!("{name}: `{}` must be a list", wire::POLICIES_FIELD)),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let text = serde_json::to_string(&to_json(v)).unwrap_or_default();
        let source = format!("{name} policies[{i}]");
        let mut docs = trellis_model::parse_documents(&source, &text)
            .map_err(|e| format!("{name}: policies[{i}] is invalid: {}", one_line(&e)))?;
        match (docs.pop(), docs.is_empty()) {
            (Some(r), true) => out.push(r),
            _ => return Err(format!("{name}: policies[{i}] is not one resource")),
        }
    }
    Ok(out)
}

fn one_line(e: &trellis_model::ApplyError) -> String {
    e.errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A protobuf `Value` as JSON; whole numbers become integers.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v.kind.as_ref() {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => J::from(*n as i64),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => J::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests;
