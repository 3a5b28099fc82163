//! Who is asking: the proxy identity parsed from `DiscoveryRequest.node` (docs/XDS.md, "Node").
//!
//! Missing metadata falls back to defaults derived from `node.id` / `node.cluster`; metadata
//! that is present but malformed (a port that is not a number) is an error naming the key.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use trellis_model::wire;

/// Default port of the sidecar's outbound listener.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Default port of the sidecar's inbound listener.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;

/// The requesting proxy, as far as translation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    /// The proxy's own service.
    pub service: String,
    pub instance_id: String,
    /// The local application's port; `None` means the proxy has no inbound side.
    pub app_port: Option<u16>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// `TRELLIS_IDENTITY`: the SPIFFE ID of the proxy's mesh certificate. `None`: the proxy
    /// holds no certificate (a stock Envoy), so it gets plaintext-only config.
    pub identity: Option<String>,
    /// `node.locality.zone`: the proxy's zone, for locality failover; `None` when empty.
    pub zone: Option<String>,
}

/// A node metadata value that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node metadata {key} = {value:?}: {hint}")]
pub struct NodeError {
    pub key: &'static str,
    pub value: String,
    pub hint: &'static str,
}

impl NodeInfo {
    /// Parses the node. `node.id` is `<service>~<instance-id>` by convention; metadata wins
    /// over what the id and cluster imply.
    pub fn from_node(node: &Node) -> Result<NodeInfo, NodeError> {
        let empty = Struct::default();
        let meta = node.metadata.as_ref().unwrap_or(&empty);
        let (id_service, id_instance) = match node.id.split_once('~') {
            Some((s, i)) => (s, i),
            None => ("", node.id.as_str()),
        };
        let service = string_field(meta, wire::NODE_SERVICE)
            .or_else(|| non_empty(&node.cluster))
            .or_else(|| non_empty(id_service))
            .unwrap_or_default();
        let instance_id = string_field(meta, wire::NODE_INSTANCE_ID)
            .or_else(|| non_empty(id_instance))
            .unwrap_or_default();
        Ok(NodeInfo {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            service,
            instance_id,
            app_port: port_field(meta, wire::NODE_APP_PORT)?,
            outbound_port: port_field(meta, wire::NODE_OUTBOUND_PORT)?
                .unwrap_or(DEFAULT_OUTBOUND_PORT),
            inbound_port: port_field(meta, wire::NODE_INBOUND_PORT)?
                .unwrap_or(DEFAULT_INBOUND_PORT),
            identity: identity_field(meta)?,
            zone: node.locality.as_ref().and_then(|l| non_empty(&l.zone)),
        })
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn string_field(meta: &Struct, key: &str) -> Option<String> {
    match meta.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => non_empty(s),
        Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `TRELLIS_IDENTITY`: absent, empty or null means none; otherwise a `spiffe://` URI.
fn identity_field(meta: &Struct) -> Result<Option<String>, NodeError> {
    let key = wire::NODE_IDENTITY;
    match meta.fields.get(key).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) if s.starts_with("spiffe://") && s.len() <= 2048 => {
            Ok(Some(s.clone()))
        }
        Some(other) => Err(NodeError {
            key,
            value: match other {
                Kind::StringValue(s) => s.chars().take(200).collect(),
                other => format!("{other:?}"),
            },
            hint: "expected the proxy certificate's SPIFFE ID, \
                   spiffe://<trust-domain>/ns/<namespace>/svc/<service>",
        }),
    }
}

/// A port given as a string (the contract) or, leniently, as a JSON number.
fn port_field(meta: &Struct, key: &'static str) -> Result<Option<u16>, NodeError> {
    let Some(kind) = meta.fields.get(key).and_then(|v| v.kind.as_ref()) else {
        return Ok(None);
    };
    let bad = |value: String| NodeError {
        key,
        value,
        hint: "expected a port number 1..=65535 as a string",
    };
    let port = match kind {
        Kind::StringValue(s) if s.trim().is_empty() => return Ok(None),
        Kind::StringValue(s) => s.trim().parse::<u16>().map_err(|_| bad(s.clone()))?,
        Kind::NumberValue(n) if n.fract() == 0.0 && *n >= 1.0 && *n <= 65535.0 => *n as u16,
        Kind::NumberValue(n) => return Err(bad(n.to_string())),
        Kind::NullValue(_) => return Ok(None),
        other => return Err(bad(format!("{other:?}"))),
    };
    if port == 0 {
        return Err(bad("0".to_string()));
    }
    Ok(Some(port))
}

#[cfg(test)]
mod tests;
