//! The security configuration the control plane sends (docs/XDS.md, "Security"), as the
//! request path reads it: upstream mTLS per cluster ([`TlsPolicy`]) and, for this proxy's own
//! service, the inbound mTLS mode and policies ([`InboundSecurity`]).

use crate::authn::Authenticator;
use crate::authz::{ConnectionPolicy, PolicySet};

/// How the inbound listener treats connections without mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum InboundMode {
    /// Only mutually authenticated TLS 1.3; anything else fails in the handshake (the default).
    #[default]
    Strict,
    /// mTLS and plaintext both accepted (migration); plaintext callers have no identity.
    Permissive,
}

impl InboundMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundMode::Strict => "STRICT",
            InboundMode::Permissive => "PERMISSIVE",
        }
    }
}

/// The inbound side of this proxy's service: its mTLS mode and the policies that apply to it.
/// Absent from the snapshot until the `inbound` Listener has been accepted; until then the
/// inbound listener refuses requests (fail closed).
#[derive(Default)]
pub(crate) struct InboundSecurity {
    pub mode: InboundMode,
    /// Compiled AuthorizationPolicies that apply to this service (empty: allow).
    pub authz: PolicySet,
    /// RequestAuthentication rules that apply to this service (empty: no JWT checks).
    pub authn: Authenticator,
    /// `Some` when the service is TCP (`protocol: tcp`): its connections are raw byte streams
    /// authorized once each by these rules (crate::tcp::inbound); never served as HTTP.
    pub tcp: Option<ConnectionPolicy>,
    /// Local rate limits (RateLimitPolicy); `None`: no limit, nothing to check.
    pub ratelimit: Option<crate::ratelimit::RateLimiter>,
    /// Callers' connections with no byte either way for this long are closed (HTTP:
    /// gracefully); `None`: the default, 1h ([`crate::idle::effective`]); zero: never.
    pub idle_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for InboundSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSecurity")
            .field("mode", &self.mode)
            .field("authn_rules", &!self.authn.is_empty())
            .field("tcp", &self.tcp)
            .field("ratelimit", &self.ratelimit.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// Upstream mTLS of one cluster: used for the endpoints whose metadata says they serve mTLS
/// ([`crate::xds::translate::Endpoint::mtls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsPolicy {
    /// The SPIFFE IDs the server's certificate may carry (exact URI SAN matches).
    pub expected_ids: Vec<String>,
    /// The SNI to send (the service name).
    pub sni: String,
}
