//! Tables for the zero-trust kinds (`trellis get authorizationpolicies`,
//! `trellis get requestauthentications`).

use trellis_model::{
    AuthorizationAction, AuthorizationPolicyResource, RequestAuthenticationResource, Resource,
    ServiceRef,
};

use super::table::render;

/// The target column: the service, or `*` for mesh-wide resources.
fn target(t: Option<&ServiceRef>) -> String {
    t.map_or_else(|| "* (mesh-wide)".to_string(), |t| t.name.clone())
}

fn authorization_row(p: &AuthorizationPolicyResource) -> Vec<String> {
    let action = match p.spec.action {
        AuthorizationAction::Allow => "ALLOW",
        AuthorizationAction::Deny => "DENY",
    };
    let rules = match (p.spec.action, p.spec.rules.len()) {
        (AuthorizationAction::Allow, 0) => "0 (allows nothing)".to_string(),
        (_, n) => n.to_string(),
    };
    vec![
        p.metadata.name.clone(),
        target(p.spec.target_ref.as_ref()),
        action.to_string(),
        rules,
    ]
}

fn authentication_row(a: &RequestAuthenticationResource) -> Vec<String> {
    let issuers: Vec<&str> = a.spec.jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
    let keys: Vec<&str> = a
        .spec
        .jwt_rules
        .iter()
        .map(|r| r.jwks_uri.as_deref().unwrap_or("inline"))
        .collect();
    vec![
        a.metadata.name.clone(),
        target(a.spec.target_ref.as_ref()),
        issuers.join(","),
        keys.join(","),
    ]
}

pub(super) fn authorization_policies(items: &[Resource]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p) => Some(authorization_row(p)),
            _ => None,
        })
        .collect();
    render(&["NAME", "TARGET", "ACTION", "RULES"], &rows)
}

pub(super) fn request_authentications(items: &[Resource]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .filter_map(|r| match r {
            Resource::RequestAuthentication(a) => Some(authentication_row(a)),
            _ => None,
        })
        .collect();
    render(&["NAME", "TARGET", "ISSUERS", "KEYS"], &rows)
}
