//! Per-field rules of the zero-trust kinds: AuthorizationPolicy patterns, paths and methods;
//! RequestAuthentication issuers, key sources, algorithms, token locations and the
//! introspection provider.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{
    AuthorizationAction, AuthorizationPolicyResource, ForwardClaims, Introspection, JWT_ALGORITHMS,
    JwtHeader, JwtRule, MAX_CLOCK_SKEW, MAX_INTROSPECTION_CACHE_TTL, RequestAuthenticationResource,
    RequestOperation, RequestSource, format_duration, parse_duration,
};

use super::Issue;
use super::rules::{METHODS, check_header_name, label};
use super::schema::shorten;

/// Longest pattern, claim name or URI accepted, so policies stay readable and cheap to match.
const MAX_VALUE_LEN: usize = 1024;

/// Largest inline JWKS document.
const MAX_JWKS_LEN: usize = 64 * 1024;

/// Checks a match pattern: exact, `prefix*`, `*suffix` or `*`.
fn check_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty: use an exact value, `prefix*`, `*suffix` or `*`".into());
    }
    if s.len() > MAX_VALUE_LEN {
        return Err(format!(
            "is {} characters long: at most {MAX_VALUE_LEN} are allowed",
            s.len()
        ));
    }
    let stars: Vec<usize> = s.match_indices('*').map(|(i, _)| i).collect();
    let placed = match stars.as_slice() {
        [] => true,
        [i] => *i == 0 || *i == s.len() - 1,
        _ => false,
    };
    if !placed {
        return Err(format!(
            "`{}`: `*` may only stand alone, start the value (`*suffix`) or end it (`prefix*`)",
            shorten(s)
        ));
    }
    Ok(())
}

fn patterns(field: &str, values: &[String], out: &mut Vec<Issue>) {
    for (i, v) in values.iter().enumerate() {
        if let Err(e) = check_pattern(v) {
            out.push(Issue::new(&format!("{field}[{i}]"), e));
        }
    }
}

/// Checks an authorization path pattern: it must be able to match a normalized path.
fn check_path(s: &str) -> Result<(), String> {
    check_pattern(s)?;
    if s == "*" || s.starts_with('*') {
        return Ok(());
    }
    let shown = shorten(s);
    if !s.starts_with('/') {
        return Err(format!(
            "`{shown}` must start with `/` (or be `*` or `*suffix`)"
        ));
    }
    if s.contains('?') {
        return Err(format!(
            "`{shown}` contains `?`: paths are matched without the query string"
        ));
    }
    if s.contains('\\') || s.contains("//") {
        return Err(format!(
            "`{shown}` would never match: requests are matched on normalized paths, without `\\` or `//`"
        ));
    }
    let body = s.trim_end_matches('*');
    if body
        .split('/')
        .any(|seg| seg == "." || seg == ".." || seg.starts_with("..;"))
    {
        return Err(format!(
            "`{shown}` would never match: requests are matched on normalized paths, without `.` or `..` segments"
        ));
    }
    Ok(())
}

pub(super) fn check_authorization(p: &AuthorizationPolicyResource, out: &mut Vec<Issue>) {
    let spec = &p.spec;
    if let Some(target) = &spec.target_ref {
        label("spec.targetRef.name", &target.name, out);
    }
    if spec.action == AuthorizationAction::Deny && spec.rules.is_empty() {
        out.push(Issue::new(
            "spec.rules",
            "a DENY policy without rules never matches: add the rules it should deny (`rules: [{}]` denies everything)".into(),
        ));
    }
    for (r, rule) in spec.rules.iter().enumerate() {
        let here = format!("spec.rules[{r}]");
        for (i, source) in rule.from.iter().enumerate() {
            check_source(&format!("{here}.from[{i}]"), source, out);
        }
        for (i, op) in rule.to.iter().enumerate() {
            check_operation(&format!("{here}.to[{i}]"), op, out);
        }
        for (i, cond) in rule.when.iter().enumerate() {
            let at = format!("{here}.when[{i}]");
            if cond.claim.is_empty() || cond.claim.len() > 256 {
                out.push(Issue::new(
                    &format!("{at}.claim"),
                    "must name a claim (1 to 256 characters), e.g. `iss`, `sub`, `aud`, `scope`"
                        .into(),
                ));
            } else if cond.claim.split('.').any(str::is_empty) {
                out.push(Issue::new(
                    &format!("{at}.claim"),
                    format!(
                        "`{}` has an empty part: nested claims are written `outer.inner`",
                        shorten(&cond.claim)
                    ),
                ));
            }
            if cond.values.is_empty() {
                out.push(Issue::new(
                    &format!("{at}.values"),
                    "must list at least one accepted value".into(),
                ));
            }
            patterns(&format!("{at}.values"), &cond.values, out);
        }
    }
}

fn check_source(at: &str, s: &RequestSource, out: &mut Vec<Issue>) {
    if s.principals.is_empty() && s.not_principals.is_empty() && s.namespaces.is_empty() {
        out.push(Issue::new(
            at,
            "set at least one of principals, notPrincipals and namespaces (leave `from` out to match any caller)".into(),
        ));
    }
    patterns(&format!("{at}.principals"), &s.principals, out);
    patterns(&format!("{at}.notPrincipals"), &s.not_principals, out);
    patterns(&format!("{at}.namespaces"), &s.namespaces, out);
}

fn check_operation(at: &str, op: &RequestOperation, out: &mut Vec<Issue>) {
    if op.methods.is_empty() && op.paths.is_empty() && op.headers.is_empty() {
        out.push(Issue::new(
            at,
            "set at least one of methods, paths and headers (leave `to` out to match any request)"
                .into(),
        ));
    }
    for (i, m) in op.methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            out.push(Issue::new(
                &format!("{at}.methods[{i}]"),
                format!(
                    "unknown method `{}`: expected one of {}",
                    shorten(m),
                    METHODS.join(", ")
                ),
            ));
        }
    }
    for (i, p) in op.paths.iter().enumerate() {
        if let Err(e) = check_path(p) {
            out.push(Issue::new(&format!("{at}.paths[{i}]"), e));
        }
    }
    for (i, h) in op.headers.iter().enumerate() {
        let hat = format!("{at}.headers[{i}]");
        if let Err(e) = check_header_name(&h.name) {
            out.push(Issue::new(&format!("{hat}.name"), e));
        }
        if let Err(e) = check_pattern(&h.value) {
            out.push(Issue::new(&format!("{hat}.value"), e));
        }
    }
}

pub(super) fn check_authentication(a: &RequestAuthenticationResource, out: &mut Vec<Issue>) {
    let spec = &a.spec;
    if let Some(target) = &spec.target_ref {
        label("spec.targetRef.name", &target.name, out);
    }
    if spec.jwt_rules.is_empty() && spec.introspection.is_none() {
        out.push(Issue::new(
            "spec.jwtRules",
            "must hold at least one rule: `- issuer: https://issuer.example` (or set `introspection` for opaque OAuth2 tokens)".into(),
        ));
    }
    if let Some(i) = &spec.introspection {
        check_introspection("spec.introspection", i, out);
    }
    let mut issuers = BTreeSet::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() || rule.issuer.len() > MAX_VALUE_LEN {
            out.push(Issue::new(
                &format!("{at}.issuer"),
                "must be the token's exact `iss` (1 to 1024 characters)".into(),
            ));
        } else if !issuers.insert(rule.issuer.as_str()) {
            out.push(Issue::new(
                &format!("{at}.issuer"),
                format!(
                    "issuer `{}` has two rules: merge them into one",
                    shorten(&rule.issuer)
                ),
            ));
        }
        check_jwt_rule(&at, rule, out);
    }
}

fn check_jwt_rule(at: &str, rule: &JwtRule, out: &mut Vec<Issue>) {
    for (i, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() {
            out.push(Issue::new(
                &format!("{at}.audiences[{i}]"),
                "must not be empty".into(),
            ));
        }
    }
    match (&rule.jwks_uri, &rule.jwks) {
        (Some(_), Some(_)) => out.push(Issue::new(
            &format!("{at}.jwksUri"),
            "set exactly one of `jwksUri` and `jwks`, not both".into(),
        )),
        (None, None) => out.push(Issue::new(
            at,
            "set exactly one of `jwksUri` (where the keys are fetched) and `jwks` (the keys inline)"
                .into(),
        )),
        (Some(uri), None) => {
            if let Err(e) = check_http_url(uri) {
                out.push(Issue::new(&format!("{at}.jwksUri"), e));
            }
        }
        (None, Some(jwks)) => {
            if let Err(e) = check_jwks(jwks) {
                out.push(Issue::new(&format!("{at}.jwks"), e));
            }
        }
    }
    for (i, alg) in rule.algorithms.iter().enumerate() {
        if let Err(e) = check_algorithm(alg) {
            out.push(Issue::new(&format!("{at}.algorithms[{i}]"), e));
        }
    }
    if let Some(skew) = &rule.clock_skew {
        match parse_duration(skew) {
            Err(e) => out.push(Issue::new(&format!("{at}.clockSkew"), e)),
            Ok(d) if d > MAX_CLOCK_SKEW => out.push(Issue::new(
                &format!("{at}.clockSkew"),
                format!(
                    "{skew} is too long: at most {} is allowed",
                    format_duration(MAX_CLOCK_SKEW)
                ),
            )),
            Ok(_) => {}
        }
    }
    check_token_sources(
        at,
        &rule.from_headers,
        &rule.from_params,
        rule.forward_claims_header.as_ref(),
        out,
    );
}

/// Where a token is read from and which claims are forwarded (JWT rules and introspection).
fn check_token_sources(
    at: &str,
    from_headers: &[JwtHeader],
    from_params: &[String],
    forward: Option<&ForwardClaims>,
    out: &mut Vec<Issue>,
) {
    for (i, h) in from_headers.iter().enumerate() {
        if let Err(e) = check_header_name(&h.name) {
            out.push(Issue::new(&format!("{at}.fromHeaders[{i}].name"), e));
        }
    }
    for (i, p) in from_params.iter().enumerate() {
        let ok = !p.is_empty()
            && p.len() <= 256
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
        if !ok {
            out.push(Issue::new(
                &format!("{at}.fromParams[{i}]"),
                format!(
                    "`{}` is not a query parameter name: use letters, digits and -._~",
                    shorten(p)
                ),
            ));
        }
    }
    if let Some(fwd) = forward {
        if let Err(e) = check_header_name(&fwd.header) {
            out.push(Issue::new(&format!("{at}.forwardClaimsHeader.header"), e));
        }
        if fwd.claims.is_empty() || fwd.claims.iter().any(String::is_empty) {
            out.push(Issue::new(
                &format!("{at}.forwardClaimsHeader.claims"),
                "must list the claims to forward, e.g. `[sub, scope]`".into(),
            ));
        }
    }
}

fn check_introspection(at: &str, i: &Introspection, out: &mut Vec<Issue>) {
    if let Err(e) = check_http_url(&i.endpoint) {
        out.push(Issue::new(&format!("{at}.endpoint"), e));
    }
    if i.client_id.is_empty()
        || i.client_id.len() > 256
        || i.client_id.chars().any(char::is_control)
    {
        out.push(Issue::new(
            &format!("{at}.clientId"),
            "must be the client id registered with the authorization server (1 to 256 characters, no control characters)".into(),
        ));
    }
    match (&i.client_secret, &i.client_secret_file) {
        (Some(_), Some(_)) => out.push(Issue::new(
            &format!("{at}.clientSecret"),
            "set exactly one of `clientSecret` and `clientSecretFile`, not both".into(),
        )),
        (None, None) => out.push(Issue::new(
            at,
            "set exactly one of `clientSecretFile` (a file on the sidecar's host, preferred) and `clientSecret` (inline)".into(),
        )),
        (Some(secret), None) => {
            if secret.is_empty() || secret.chars().any(char::is_control) {
                out.push(Issue::new(
                    &format!("{at}.clientSecret"),
                    "must not be empty or hold control characters".into(),
                ));
            }
        }
        (None, Some(path)) => {
            if !path.starts_with('/') || path.len() > MAX_VALUE_LEN || path.contains('\0') {
                out.push(Issue::new(
                    &format!("{at}.clientSecretFile"),
                    format!(
                        "`{}` must be an absolute path on the sidecar's host, e.g. /etc/trellis/introspection-secret",
                        shorten(path)
                    ),
                ));
            }
        }
    }
    if let Some(issuer) = &i.issuer
        && (issuer.is_empty() || issuer.len() > MAX_VALUE_LEN)
    {
        out.push(Issue::new(
            &format!("{at}.issuer"),
            "must be the authorization server's exact `iss` (1 to 1024 characters), or left out"
                .into(),
        ));
    }
    for (n, aud) in i.audiences.iter().enumerate() {
        if aud.is_empty() {
            out.push(Issue::new(
                &format!("{at}.audiences[{n}]"),
                "must not be empty".into(),
            ));
        }
    }
    if let Some(ttl) = &i.cache_ttl {
        match parse_duration(ttl) {
            Err(e) => out.push(Issue::new(&format!("{at}.cacheTtl"), e)),
            Ok(d) if d > MAX_INTROSPECTION_CACHE_TTL => out.push(Issue::new(
                &format!("{at}.cacheTtl"),
                format!(
                    "{ttl} is too long: at most {} is allowed (a revoked token stays usable while cached)",
                    format_duration(MAX_INTROSPECTION_CACHE_TTL)
                ),
            )),
            Ok(_) => {}
        }
    }
    check_token_sources(
        at,
        &i.from_headers,
        &i.from_params,
        i.forward_claims_header.as_ref(),
        out,
    );
}

fn check_algorithm(alg: &str) -> Result<(), String> {
    if JWT_ALGORITHMS.contains(&alg) {
        return Ok(());
    }
    let upper = alg.to_ascii_uppercase();
    if upper == "NONE" {
        return Err(
            "`none` means unsigned tokens, which anyone can forge: it is never accepted".into(),
        );
    }
    if upper.starts_with("HS") {
        return Err(format!(
            "`{}` is a shared-secret algorithm: anyone holding the key (even a published RSA public key used as the secret) can forge tokens; use RS256, ES256 or EdDSA",
            shorten(alg)
        ));
    }
    Err(format!(
        "unknown algorithm `{}`: expected one of {}",
        shorten(alg),
        JWT_ALGORITHMS.join(", ")
    ))
}

/// `http://` or `https://` followed by a host.
fn check_http_url(uri: &str) -> Result<(), String> {
    let shown = shorten(uri);
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("`{shown}` must be an http:// or https:// URL"))?;
    if uri.len() > MAX_VALUE_LEN {
        return Err(format!("is too long: at most {MAX_VALUE_LEN} characters"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{shown}` contains whitespace"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("`{shown}` has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{shown}` carries credentials (`user@`): they would be logged; remove them"
        ));
    }
    if rest.contains('#') {
        return Err(format!("`{shown}` has a fragment (`#...`): remove it"));
    }
    Ok(())
}

/// A JWKS document holding only public, asymmetric keys.
fn check_jwks(text: &str) -> Result<(), String> {
    if text.len() > MAX_JWKS_LEN {
        return Err(format!(
            "is {} bytes: an inline JWKS may be at most {MAX_JWKS_LEN}",
            text.len()
        ));
    }
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| format!("is not valid JSON ({e}): expected {{\"keys\": [...]}}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("must be a JSON object with a `keys` list (a JWKS document)")?;
    if keys.is_empty() {
        return Err("`keys` is empty: add the issuer's public signing keys".into());
    }
    for (i, key) in keys.iter().enumerate() {
        match key.get("kty").and_then(Value::as_str) {
            Some("RSA" | "EC" | "OKP") => {}
            Some("oct") => {
                return Err(format!(
                    "keys[{i}] is a symmetric key (kty oct): only public RSA, EC and OKP keys are accepted"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "keys[{i}] has unknown kty `{}`: expected RSA, EC or OKP",
                    shorten(other)
                ));
            }
            None => return Err(format!("keys[{i}] has no `kty`")),
        }
        if key.get("d").is_some() {
            return Err(format!(
                "keys[{i}] contains a private key (`d`): publish only the public half"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
