//! The routing decision as pure functions over an immutable [`RouteTable`]: request authority →
//! virtual host → first matching route → weighted cluster choice, plus the request's hash key.
//! No I/O here; the outbound listener calls these and then dispatches.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::Regex;

/// The outbound RouteConfiguration, indexed for lookup by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub vhosts: Vec<VirtualHost>,
    /// Lower-case domain (port stripped) → index into `vhosts`.
    /// Looked up per request: a fast seeded hash instead of SipHash.
    by_domain: HashMap<Box<str>, usize, foldhash::quality::RandomState>,
    /// Index of a virtual host with the `*` domain, if any.
    wildcard: Option<usize>,
}

#[derive(Debug)]
pub struct VirtualHost {
    /// The destination service (the virtual host's name).
    pub name: Arc<str>,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug)]
pub enum PathMatch {
    /// Plain string prefix (`prefix`).
    Prefix(String),
    /// `path_separated_prefix`: the prefix must end at a `/` boundary or the end of the path.
    SeparatedPrefix(String),
    Exact(String),
    /// Must match the whole path.
    Regex(Regex),
}

#[derive(Debug, PartialEq)]
pub struct HeaderMatch {
    pub target: HeaderTarget,
    pub matcher: StringMatch,
    pub invert: bool,
}

#[derive(Debug, PartialEq)]
pub enum HeaderTarget {
    Method,
    Header(HeaderName),
}

#[derive(Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Must match the whole value.
    Regex(Regex),
    Present(bool),
}

/// Equal when they match the same way (regexes: the same pattern).
impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        use StringMatch::*;
        match (self, other) {
            (Exact(a), Exact(b))
            | (Prefix(a), Prefix(b))
            | (Suffix(a), Suffix(b))
            | (Contains(a), Contains(b)) => a == b,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (Present(a), Present(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct RouteAction {
    /// At least one entry; weights are >= 0 and sum to `total_weight` > 0.
    pub clusters: Vec<WeightedCluster>,
    pub total_weight: u32,
    pub hash: Option<HashPolicy>,
    /// Timeouts and retries; `None`: one try, no deadline (the fast path).
    pub policy: Option<Arc<crate::resilience::RoutePolicy>>,
}

#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub name: Arc<str>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    Header(HeaderName),
    SourceIp,
}

impl RouteTable {
    /// Indexes `vhosts` by their domains: `svc` and `svc:*` both index `svc`; `*` is the fallback.
    /// A domain listed twice keeps its first virtual host.
    pub fn new(vhosts: Vec<VirtualHost>) -> Self {
        let mut by_domain = HashMap::default();
        let mut wildcard = None;
        for (i, vh) in vhosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.strip_suffix(":*").unwrap_or(d);
                if d == "*" {
                    wildcard.get_or_insert(i);
                } else {
                    by_domain
                        .entry(d.to_ascii_lowercase().into_boxed_str())
                        .or_insert(i);
                }
            }
        }
        RouteTable {
            vhosts,
            by_domain,
            wildcard,
        }
    }

    /// The virtual host (and its index) for a request authority such as `payments:8080`.
    pub fn find(&self, authority: &str) -> Option<(usize, &VirtualHost)> {
        let host = strip_port(authority);
        let idx = match self.by_domain.get(host) {
            Some(i) => Some(*i),
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => self
                .by_domain
                .get(host.to_ascii_lowercase().as_str())
                .copied(),
            None => None,
        }
        .or(self.wildcard)?;
        Some((idx, &self.vhosts[idx]))
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare host is returned as is.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    // A byte scan: the str pattern search costs more than the few bytes of a host name.
    let bytes = authority.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        Some(colon) if bytes[colon + 1..].iter().all(u8::is_ascii_digit) => &authority[..colon],
        _ => authority,
    }
}

impl VirtualHost {
    /// The first route whose match accepts the request, in order.
    pub fn route(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path, headers))
    }
}

impl RouteMatch {
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.path.matches(path) && self.headers.iter().all(|h| h.matches(method, headers))
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::SeparatedPrefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len()
                        || p.ends_with('/')
                        || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(re) => full_match(re, path),
        }
    }
}

impl HeaderMatch {
    pub fn matches(&self, method: &Method, headers: &HeaderMap) -> bool {
        let value = match &self.target {
            HeaderTarget::Method => Some(method.as_str()),
            // A value that is not visible ASCII never matches a string matcher (only `present`).
            HeaderTarget::Header(name) => headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}")),
        };
        self.matcher.matches(value) != self.invert
    }
}

impl StringMatch {
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (StringMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (StringMatch::Exact(s), Some(v)) => v == s,
            (StringMatch::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (StringMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (StringMatch::Contains(s), Some(v)) => v.contains(s.as_str()),
            (StringMatch::Regex(re), Some(v)) => full_match(re, v),
        }
    }
}

fn full_match(re: &Regex, s: &str) -> bool {
    re.find(s)
        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
}

/// Compiles an RE2-style pattern that must match a whole string.
pub fn compile_full(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

impl RouteAction {
    /// The cluster for a request, given a uniformly random `r` (weighted random choice).
    pub fn pick_cluster(&self, r: u32) -> &Arc<str> {
        if self.clusters.len() == 1 || self.total_weight == 0 {
            return &self.clusters[0].name;
        }
        let mut point = r % self.total_weight;
        for c in &self.clusters {
            if point < c.weight {
                return &c.name;
            }
            point -= c.weight;
        }
        &self.clusters[self.clusters.len() - 1].name
    }

    /// Whether picking needs a random number (more than one cluster).
    pub fn is_split(&self) -> bool {
        self.clusters.len() > 1
    }
}

/// The request's hash key for hash-based balancers: the named header's value (absent header →
/// `None`, i.e. the balancer picks at random) or the client's IP, hashed with the balancers'
/// stable [`crate::balance::hash_key`].
pub fn hash_key(policy: &HashPolicy, headers: &HeaderMap, source: IpAddr) -> Option<u64> {
    match policy {
        HashPolicy::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashPolicy::SourceIp => Some(match source {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    crate::balance::hash_key(bytes)
}

#[cfg(test)]
mod tests;
