//! The synchronous part of admitting an inbound request (crate::authz's order): config
//! present, path normalized (the request URI rewritten, so the app receives exactly the path
//! the policies judged), then either a verdict or "authenticate first". Pure: no I/O.

use http::uri::PathAndQuery;
use http::{Request, Uri};
use serde_json::Value;

use super::refusal::Refusal;
use crate::authz::{Decision, PathError, PolicySet, RequestFacts, is_normalized, normalize_path};
use crate::ratelimit::{Verdict, retry_after_secs};
use crate::security::InboundSecurity;

/// What to do with a request before any I/O.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Forward it as it is now.
    Forward,
    Refuse(Refusal),
    /// Authentication providers apply: authenticate (async), then [`authorize`].
    Authenticate,
}

/// Config, path, and — when no authentication applies — authorization.
pub(crate) fn admit<B>(
    security: Option<&InboundSecurity>,
    req: &mut Request<B>,
    peer_id: Option<&str>,
) -> Admit {
    let Some(security) = security else {
        return Admit::Refuse(Refusal::NotReady);
    };
    if let Err(e) = normalize_uri(req) {
        return Admit::Refuse(Refusal::BadPath(e));
    }
    if !security.authn.is_empty() {
        return Admit::Authenticate;
    }
    if security.authz.is_empty() {
        return Admit::Forward;
    }
    match authorize(&security.authz, req, peer_id, None) {
        Ok(()) => Admit::Forward,
        Err(r) => Admit::Refuse(r),
    }
}

/// The policies' decision for a request whose path is normalized.
pub(crate) fn authorize<B>(
    policies: &PolicySet,
    req: &Request<B>,
    peer_id: Option<&str>,
    claims: Option<&Value>,
) -> Result<(), Refusal> {
    if policies.is_empty() {
        return Ok(());
    }
    let facts = RequestFacts {
        principal: peer_id,
        namespace: peer_id.and_then(spiffe_namespace),
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
        claims,
    };
    match policies.evaluate(&facts) {
        Decision::Allow => Ok(()),
        Decision::Deny { reason, policy } => {
            tracing::debug!(
                peer = peer_id.unwrap_or("-"),
                method = facts.method,
                path = facts.path,
                policy = policy.as_deref().unwrap_or("-"),
                reason,
                "request denied"
            );
            Err(Refusal::Denied(reason))
        }
    }
}

/// The service's local rate limit for an admitted request (its path already normalized);
/// `Err` with the refusal and the rule's name when over the limit.
pub(crate) fn rate_limit<B>(
    security: &InboundSecurity,
    req: &Request<B>,
    peer_id: Option<&str>,
) -> Result<(), (Refusal, String)> {
    let Some(limiter) = &security.ratelimit else {
        return Ok(());
    };
    match limiter.check(req.uri().path(), peer_id) {
        Verdict::Allowed => Ok(()),
        Verdict::Limited { rule, retry_after } => Err((
            Refusal::RateLimited {
                retry_after_secs: retry_after_secs(retry_after),
            },
            rule,
        )),
    }
}

/// The namespace of `spiffe://<trust-domain>/ns/<namespace>/...`.
pub(crate) fn spiffe_namespace(id: &str) -> Option<&str> {
    let mut parts = id.strip_prefix("spiffe://")?.split('/');
    let (Some(_trust_domain), Some("ns"), Some(ns)) = (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (!ns.is_empty()).then_some(ns)
}

/// Rewrites the request target to its normalized form; nothing is allocated when it already
/// is normal (the common case).
pub(crate) fn normalize_uri<B>(req: &mut Request<B>) -> Result<(), PathError> {
    let uri = req.uri();
    let target = match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => pq.as_str(),
        _ => uri.path(),
    };
    if is_normalized(target) {
        return Ok(());
    }
    let normalized = normalize_path(target)?;
    // The normalized form holds only characters valid in a request target.
    let pq = PathAndQuery::try_from(normalized).map_err(|_| PathError::Control)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| PathError::NotAbsolute)?;
    Ok(())
}
