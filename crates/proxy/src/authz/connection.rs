//! Authorization of raw TCP connections (services with `protocol: tcp`): the inbound listener's
//! `envoy.filters.network.rbac` filters, decoded by crate::xds::tcp, decide once per
//! connection from the caller's SPIFFE ID alone.
//!
//! The filters run in order, as in Envoy: a DENY filter denies when one of its policies
//! matches, an ALLOW filter denies when none does (so an ALLOW filter without policies denies
//! everything). The control plane has already applied Istio's rules for HTTP-only conditions
//! (docs/RESOURCES.md, "Authorization on TCP"). Pure: no I/O.

use std::sync::Arc;

use regex::Regex;

use super::{DENIED_BY_POLICY, Decision, NOT_ALLOWED};

/// How a caller's SPIFFE ID (a certificate's URI SAN) is matched.
#[derive(Debug, Clone)]
pub enum NameMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Matches the whole ID (RE2 `safe_regex`, full match).
    Regex(Regex),
}

impl PartialEq for NameMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NameMatch::Exact(a), NameMatch::Exact(b))
            | (NameMatch::Prefix(a), NameMatch::Prefix(b))
            | (NameMatch::Suffix(a), NameMatch::Suffix(b)) => a == b,
            (NameMatch::Regex(a), NameMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl NameMatch {
    fn matches(&self, id: &str) -> bool {
        match self {
            NameMatch::Exact(e) => id == e,
            NameMatch::Prefix(p) => id.starts_with(p.as_str()),
            NameMatch::Suffix(s) => id.ends_with(s.as_str()),
            NameMatch::Regex(re) => re
                .find(id)
                .is_some_and(|m| m.start() == 0 && m.end() == id.len()),
        }
    }
}

/// Who a policy lets in (or keeps out): the subset of Envoy's RBAC `Principal` Trellis emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Any,
    /// A caller with a verified certificate, whose SPIFFE ID matches (any, without a matcher).
    Authenticated(Option<NameMatch>),
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
}

impl Principal {
    /// `peer`: the caller's SPIFFE ID, `None` for a plaintext caller.
    pub fn matches(&self, peer: Option<&str>) -> bool {
        match self {
            Principal::Any => true,
            Principal::Authenticated(None) => peer.is_some(),
            Principal::Authenticated(Some(m)) => peer.is_some_and(|id| m.matches(id)),
            Principal::And(all) => all.iter().all(|p| p.matches(peer)),
            Principal::Or(any) => any.iter().any(|p| p.matches(peer)),
            Principal::Not(p) => !p.matches(peer),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    Allow,
    Deny,
}

/// One named policy of an RBAC filter: it matches when any of its principals does.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacPolicy {
    pub name: Arc<str>,
    pub principals: Vec<Principal>,
}

/// One `envoy.filters.network.rbac` filter; policies in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacFilter {
    pub action: RbacAction,
    pub policies: Vec<RbacPolicy>,
}

/// The RBAC filters of a TCP service's inbound chain, in order. No filter: every connection
/// is allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionPolicy {
    pub filters: Vec<RbacFilter>,
}

impl ConnectionPolicy {
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The decision for one connection from `peer` (its SPIFFE ID; `None` for plaintext).
    pub fn evaluate(&self, peer: Option<&str>) -> Decision {
        for f in &self.filters {
            let matched = f
                .policies
                .iter()
                .find(|p| p.principals.iter().any(|pr| pr.matches(peer)));
            match (f.action, matched) {
                (RbacAction::Deny, Some(p)) => {
                    return Decision::Deny {
                        reason: DENIED_BY_POLICY,
                        policy: Some(p.name.clone()),
                    };
                }
                (RbacAction::Allow, None) => {
                    return Decision::Deny {
                        reason: NOT_ALLOWED,
                        policy: None,
                    };
                }
                _ => {}
            }
        }
        Decision::Allow
    }
}

#[cfg(test)]
mod tests;
