//! The registry's JSON form: what a sidecar (or anyone) sends to register an instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The application protocol an instance speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    /// Raw TCP: byte streams, no HTTP. Authorization on it can only match `from` (docs/RESOURCES.md).
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// `POST /v1/instances` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRegistration {
    pub service: String,
    pub id: String,
    /// IP address callers connect to (the instance's sidecar inbound listener).
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// 1..=128, default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Heartbeat TTL in milliseconds (default 10 000). Missing heartbeats for this long make the
    /// instance unhealthy.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// The SPIFFE ID of the instance's sidecar certificate, when the sidecar serves mTLS
    /// (`spiffe://<trust-domain>/ns/<namespace>/svc/<service>`); absent for plaintext-only
    /// instances. Callers use mTLS to instances that have one (docs/XDS.md, "Security").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The sidecar's check of its app (`trellis proxy --health-check`), when it runs one;
    /// absent: the instance is passing while it heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::CheckReport>,
}

fn default_weight() -> u32 {
    1
}

fn default_ttl_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
}
