//! Tables for the zero-trust kinds (`trellis get authorizationpolicies`,
//! `trellis get requestauthentications`), and the security part of `trellis describe service`:
//! its SPIFFE ID, inbound mTLS mode and the policies that apply to it.

use std::fmt::Write as _;

use serde_json::Value;

use trellis_model::{
    AuthorizationAction, AuthorizationPolicyResource, RequestAuthenticationResource, Resource,
    ServiceRef,
};

use super::table::render;

/// `Identity:` and `mTLS:` lines. An older control plane sends neither: the mode is then
/// read from the declared spec (STRICT when absent).
pub(super) fn describe_header(body: &Value, out: &mut String) {
    if let Some(id) = body.get("spiffe_id").and_then(Value::as_str) {
        let _ = writeln!(out, "Identity:  {id}");
    }
    let mode = body
        .get("mtls")
        .and_then(Value::as_str)
        .or_else(|| body.pointer("/declared/mtls/mode").and_then(Value::as_str))
        .unwrap_or("STRICT");
    let note = match mode {
        "PERMISSIVE" => " (plaintext callers accepted, without an identity)",
        _ => " (mutual TLS required)",
    };
    let _ = writeln!(out, "mTLS:      {mode}{note}");
}

/// The `Authorization:` and `Authentication:` sections: the policies that apply (naming the
/// service, or mesh-wide), as tables.
pub(super) fn describe_policies(body: &Value, out: &mut String) {
    let of = |key: &str, kind: &str| -> Vec<Resource> {
        body.get(key)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(|v| resource(v, kind)).collect())
            .unwrap_or_default()
    };
    let authz = of("authorization", "AuthorizationPolicy");
    let _ = writeln!(out, "\nAuthorization policies: {}", authz.len());
    if authz.is_empty() {
        let _ = writeln!(out, "  (none: every authenticated caller is allowed)");
    } else {
        indent(out, &authorization_policies(&authz));
    }
    let authn = of("authentication", "RequestAuthentication");
    let _ = writeln!(out, "\nRequest authentication: {}", authn.len());
    if !authn.is_empty() {
        indent(out, &request_authentications(&authn));
    }
}

/// A resource as the API sends it, with or without its `kind` tag.
fn resource(v: &Value, kind: &str) -> Option<Resource> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.entry("kind")
            .or_insert_with(|| Value::String(kind.to_string()));
    }
    serde_json::from_value(v).ok()
}

fn indent(out: &mut String, block: &str) {
    for line in block.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

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
