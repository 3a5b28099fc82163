//! AuthorizationPolicy and RequestAuthentication validation: one table row per rule.

use crate::{AuthorizationAction, KnownServices, Resource, parse_and_validate, parse_documents};

/// Knows the service `catalog` only.
struct Known;

impl KnownServices for Known {
    fn service_exists(&self, name: &str) -> bool {
        name == "catalog"
    }
    fn subsets(&self, _service: &str) -> Vec<String> {
        Vec::new()
    }
}

const AUTHZ: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: catalog-readers
spec:
  targetRef: { name: catalog }
  action: ALLOW
  rules:
    - from:
        - principals: ["spiffe://trellis.local/ns/default/sa/web", "spiffe://trellis.local/ns/shop/*"]
          notPrincipals: ["spiffe://trellis.local/ns/shop/sa/batch"]
          namespaces: [default, shop]
      to:
        - methods: [GET, HEAD]
          paths: ["/api/*", "/healthz", "*.json"]
          headers: [{ name: x-tenant, value: "acme*" }]
      when:
        - { claim: scope, values: ["catalog.read"] }
"#;

const AUTHN: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: RequestAuthentication
metadata:
  name: catalog-jwt
spec:
  targetRef: { name: catalog }
  jwtRules:
    - issuer: https://issuer.example
      audiences: [catalog]
      jwksUri: https://issuer.example/.well-known/jwks.json
      algorithms: [RS256, ES256, EdDSA]
      clockSkew: 30s
      fromHeaders: [{ name: x-jwt, prefix: "Token " }]
      fromParams: [access_token]
      forwardClaimsHeader: { header: x-jwt-claims, claims: [sub, scope] }
    - issuer: inline-issuer
      jwks: '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}'
"#;

fn errors(text: &str) -> Vec<String> {
    match parse_and_validate("mesh.yaml", text, &Known) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

/// `original` with `from` replaced by `to` (which must occur).
fn edit(original: &str, from: &str, to: &str) -> String {
    assert!(original.contains(from), "fixture lacks {from:?}");
    original.replacen(from, to, 1)
}

#[test]
fn the_examples_parse_and_round_trip() {
    let docs = parse_and_validate("mesh.yaml", &format!("{AUTHZ}---\n{AUTHN}"), &Known)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 2);
    let Resource::AuthorizationPolicy(p) = &docs[0] else {
        panic!("expected an AuthorizationPolicy, got {:?}", docs[0]);
    };
    assert_eq!(p.spec.action, AuthorizationAction::Allow);
    assert!(p.spec.applies_to("catalog") && !p.spec.applies_to("orders"));
    assert_eq!(p.spec.rules[0].from[0].not_principals.len(), 1);
    let Resource::RequestAuthentication(a) = &docs[1] else {
        panic!("expected a RequestAuthentication, got {:?}", docs[1]);
    };
    assert_eq!(a.spec.jwt_rules[0].clock_skew().as_secs(), 30);
    assert_eq!(a.spec.jwt_rules[1].clock_skew().as_secs(), 60);
    assert_eq!(a.spec.jwt_rules[1].algorithm_names().len(), 9);
    for r in &docs {
        let json = serde_json::to_value(r).unwrap_or_default();
        let back: Resource = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&back, r);
    }
}

#[test]
fn mesh_wide_default_deny_is_an_allow_policy_without_target_or_rules() {
    let text = "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: deny-all }\nspec: {}\n";
    let docs = parse_documents("mesh.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let Resource::AuthorizationPolicy(p) = &docs[0] else {
        panic!("{docs:?}");
    };
    assert!(p.spec.target_ref.is_none() && p.spec.rules.is_empty());
    assert_eq!(p.spec.action, AuthorizationAction::Allow);
    assert!(p.spec.applies_to("anything"));
}

#[test]
fn authorization_errors_name_field_and_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "unknown action",
            "action: ALLOW",
            "action: AUDIT",
            "spec.action: unknown value `AUDIT`",
        ),
        (
            "dangling target",
            "{ name: catalog }",
            "{ name: orders }",
            "spec.targetRef.name: service `orders` does not exist",
        ),
        (
            "bad method",
            "[GET, HEAD]",
            "[GET, FETCH]",
            "spec.rules[0].to[0].methods[1]: unknown method `FETCH`",
        ),
        (
            "relative path",
            "\"/healthz\"",
            "\"healthz\"",
            "spec.rules[0].to[0].paths[1]: `healthz` must start with `/`",
        ),
        (
            "dot segment path",
            "\"/healthz\"",
            "\"/a/../admin\"",
            "paths[1]: `/a/../admin` would never match",
        ),
        (
            "double slash path",
            "\"/healthz\"",
            "\"//admin\"",
            "paths[1]: `//admin` would never match",
        ),
        (
            "query in path",
            "\"/healthz\"",
            "\"/h?x=1\"",
            "paths[1]: `/h?x=1` contains `?`",
        ),
        (
            "star in the middle",
            "\"acme*\"",
            "\"ac*me\"",
            "headers[0].value: `ac*me`: `*` may only stand alone",
        ),
        (
            "two stars",
            "\"/api/*\"",
            "\"*/api/*\"",
            "paths[0]: `*/api/*`: `*` may only stand alone",
        ),
        (
            "bad header name",
            "name: x-tenant",
            "name: \"x tenant\"",
            "headers[0].name: `x tenant` is not a valid header name",
        ),
        (
            "empty principal",
            "namespaces: [default, shop]",
            "namespaces: [default, \"\"]",
            "from[0].namespaces[1]: must not be empty",
        ),
        (
            "empty source",
            "        - principals:",
            "        - {}\n        - principals:",
            "spec.rules[0].from[0]: set at least one of principals",
        ),
        (
            "empty claim values",
            "values: [\"catalog.read\"]",
            "values: []",
            "spec.rules[0].when[0].values: must list at least one",
        ),
        (
            "bad nested claim",
            "claim: scope",
            "claim: a..b",
            "when[0].claim: `a..b` has an empty part",
        ),
        (
            "unknown field",
            "notPrincipals:",
            "notPrincipal:",
            "spec.rules[0].from[0].notPrincipal: unknown field `notPrincipal`",
        ),
    ];
    for (case, from, to, expected) in cases {
        let errs = errors(&edit(AUTHZ, from, to));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{case}: expected {expected:?} in {errs:#?}"
        );
        assert!(
            errs.iter()
                .all(|e| e.contains("AuthorizationPolicy catalog-readers")),
            "{case}"
        );
    }
}

#[test]
fn a_deny_policy_without_rules_is_refused() {
    let text = "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: d }\nspec: { action: DENY }\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.rules: a DENY policy without rules never matches")),
        "{errs:#?}"
    );
}

#[test]
fn authentication_errors_name_field_and_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "hs256",
            "[RS256, ES256, EdDSA]",
            "[RS256, HS256]",
            "spec.jwtRules[0].algorithms[1]: `HS256` is a shared-secret algorithm",
        ),
        (
            "none",
            "[RS256, ES256, EdDSA]",
            "[none]",
            "spec.jwtRules[0].algorithms[0]: `none` means unsigned tokens",
        ),
        (
            "unknown alg",
            "[RS256, ES256, EdDSA]",
            "[RS257]",
            "algorithms[0]: unknown algorithm `RS257`",
        ),
        (
            "both key sources",
            "      algorithms:",
            "      jwks: '{\"keys\":[]}'\n      algorithms:",
            "spec.jwtRules[0].jwksUri: set exactly one of `jwksUri` and `jwks`, not both",
        ),
        (
            "no key source",
            "      jwksUri: https://issuer.example/.well-known/jwks.json\n",
            "",
            "spec.jwtRules[0]: set exactly one of `jwksUri`",
        ),
        (
            "ftp uri",
            "jwksUri: https://",
            "jwksUri: ftp://",
            "jwksUri: `ftp://issuer.example/.well-known/jwks.json` must be an http:// or https:// URL",
        ),
        (
            "no host",
            "jwksUri: https://issuer.example/",
            "jwksUri: https:///",
            "jwksUri: `https:///.well-known/jwks.json` has no host",
        ),
        (
            "credentials",
            "jwksUri: https://",
            "jwksUri: https://u:p@",
            "carries credentials",
        ),
        (
            "symmetric jwk",
            "\"kty\":\"OKP\"",
            "\"kty\":\"oct\"",
            "spec.jwtRules[1].jwks: keys[0] is a symmetric key (kty oct)",
        ),
        (
            "private jwk",
            "\"kid\":\"k1\"",
            "\"kid\":\"k1\",\"d\":\"secret\"",
            "jwks: keys[0] contains a private key",
        ),
        (
            "not json",
            "jwks: '{\"keys\"",
            "jwks: '{keys\"",
            "spec.jwtRules[1].jwks: is not valid JSON",
        ),
        (
            "skew",
            "clockSkew: 30s",
            "clockSkew: 1h",
            "spec.jwtRules[0].clockSkew: 1h is too long: at most 300s",
        ),
        (
            "skew unit",
            "clockSkew: 30s",
            "clockSkew: \"30\"",
            "spec.jwtRules[0].clockSkew: `30`: missing unit",
        ),
        (
            "duplicate issuer",
            "issuer: inline-issuer",
            "issuer: https://issuer.example",
            "spec.jwtRules[1].issuer: issuer `https://issuer.example` has two rules",
        ),
        (
            "bad param",
            "[access_token]",
            "[\"a&b\"]",
            "fromParams[0]: `a&b` is not a query parameter name",
        ),
        (
            "bad header",
            "name: x-jwt",
            "name: \"x jwt\"",
            "fromHeaders[0].name: `x jwt` is not a valid header name",
        ),
        (
            "no claims",
            "claims: [sub, scope]",
            "claims: []",
            "forwardClaimsHeader.claims: must list the claims",
        ),
        (
            "empty issuer",
            "issuer: inline-issuer",
            "issuer: \"\"",
            "spec.jwtRules[1].issuer: must be the token's exact `iss`",
        ),
    ];
    for (case, from, to, expected) in cases {
        let errs = errors(&edit(AUTHN, from, to));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{case}: expected {expected:?} in {errs:#?}"
        );
    }
}

#[test]
fn rules_are_required() {
    let text = "apiVersion: trellis.dev/v1alpha1\nkind: RequestAuthentication\nmetadata: { name: a }\nspec: { jwtRules: [] }\n";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.jwtRules: must hold at least one rule")),
        "{errs:#?}"
    );
}

#[test]
fn kinds_parse_by_short_names() {
    use crate::Kind;
    for (s, k) in [
        ("authorizationpolicies", Kind::AuthorizationPolicy),
        ("AuthorizationPolicy", Kind::AuthorizationPolicy),
        ("authz", Kind::AuthorizationPolicy),
        ("requestauthentications", Kind::RequestAuthentication),
        ("authn", Kind::RequestAuthentication),
    ] {
        assert_eq!(Kind::parse(s), Some(k), "{s}");
        assert_eq!(Kind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn the_zero_trust_examples_in_the_resources_doc_parse() {
    let doc = include_str!("../../../../../docs/RESOURCES.md");
    let mut blocks = 0;
    let mut rest = doc;
    while let Some(start) = rest.find("```yaml\n") {
        let after = &rest[start + "```yaml\n".len()..];
        let Some(end) = after.find("```") else {
            break;
        };
        // Blocks nested in a list item are indented: dedent by the first line's indent.
        let block = &after[..end];
        let indent = block.len() - block.trim_start_matches(' ').len();
        let text: String = block
            .lines()
            .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
            .collect::<Vec<_>>()
            .join("\n");
        rest = &after[end + 3..];
        // Only this module's kinds: other sections show every field at once, on purpose.
        if !text.contains("kind: AuthorizationPolicy")
            && !text.contains("kind: RequestAuthentication")
        {
            continue;
        }
        if let Err(e) = parse_documents("RESOURCES.md", &text) {
            panic!("example {blocks} does not parse:\n{text}\n{e}");
        }
        blocks += 1;
    }
    assert_eq!(
        blocks, 4,
        "the AuthorizationPolicy, default-deny, RequestAuthentication and introspection examples"
    );
}

const INTROSPECTION: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: RequestAuthentication
metadata:
  name: catalog-oauth
spec:
  targetRef: { name: catalog }
  introspection:
    endpoint: https://auth.example/oauth2/introspect
    clientId: trellis-catalog
    clientSecretFile: /etc/trellis/introspection-secret
    issuer: https://auth.example
    audiences: [catalog]
    cacheTtl: 20s
    fromHeaders: [{ name: x-token }]
    forwardClaimsHeader: { header: x-token-claims, claims: [sub, scope] }
"#;

#[test]
fn an_introspection_provider_alone_is_a_valid_resource() {
    let docs =
        parse_and_validate("mesh.yaml", INTROSPECTION, &Known).unwrap_or_else(|e| panic!("{e}"));
    let Resource::RequestAuthentication(a) = &docs[0] else {
        panic!("{docs:?}");
    };
    assert!(a.spec.jwt_rules.is_empty());
    let i = a.spec.introspection.as_ref().expect("introspection");
    assert_eq!(i.cache_ttl().as_secs(), 20);
    assert_eq!(i.client_id, "trellis-catalog");
    let json = serde_json::to_value(&docs[0]).unwrap_or_default();
    assert!(json["spec"].get("jwtRules").is_none(), "{json}");
    let back: Resource = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, docs[0]);
    // The inline secret never shows in debug output.
    let inline = edit(
        INTROSPECTION,
        "clientSecretFile: /etc/trellis/introspection-secret",
        "clientSecret: s3cr3t-value",
    );
    let docs = parse_and_validate("mesh.yaml", &inline, &Known).unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{:?}", docs[0]);
    assert!(
        !shown.contains("s3cr3t-value") && shown.contains("redacted"),
        "{shown}"
    );
    // Together with JWT rules in one resource.
    let both = format!(
        "{INTROSPECTION}  jwtRules:\n    - issuer: https://issuer.example\n      jwksUri: https://issuer.example/jwks\n"
    );
    assert_eq!(errors(&both), Vec::<String>::new());
}

#[test]
fn introspection_errors_name_field_and_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "endpoint scheme",
            "endpoint: https://",
            "endpoint: ftp://",
            "spec.introspection.endpoint: `ftp://auth.example/oauth2/introspect` must be an http:// or https:// URL",
        ),
        (
            "credentials in the endpoint",
            "endpoint: https://",
            "endpoint: https://user:pw@",
            "spec.introspection.endpoint: `https://user:pw@auth.example/oauth2/introspect` carries credentials",
        ),
        (
            "empty client id",
            "clientId: trellis-catalog",
            "clientId: \"\"",
            "spec.introspection.clientId: must be the client id",
        ),
        (
            "no secret",
            "    clientSecretFile: /etc/trellis/introspection-secret\n",
            "",
            "spec.introspection: set exactly one of `clientSecretFile`",
        ),
        (
            "both secrets",
            "    clientSecretFile:",
            "    clientSecret: abc\n    clientSecretFile:",
            "spec.introspection.clientSecret: set exactly one of `clientSecret` and `clientSecretFile`, not both",
        ),
        (
            "relative secret file",
            "clientSecretFile: /etc/",
            "clientSecretFile: etc/",
            "spec.introspection.clientSecretFile: `etc/trellis/introspection-secret` must be an absolute path",
        ),
        (
            "ttl too long",
            "cacheTtl: 20s",
            "cacheTtl: 1h",
            "spec.introspection.cacheTtl: 1h is too long: at most 300s",
        ),
        (
            "ttl without unit",
            "cacheTtl: 20s",
            "cacheTtl: \"20\"",
            "spec.introspection.cacheTtl: `20`: missing unit",
        ),
        (
            "empty audience",
            "audiences: [catalog]",
            "audiences: [\"\"]",
            "spec.introspection.audiences[0]: must not be empty",
        ),
        (
            "empty issuer",
            "issuer: https://auth.example",
            "issuer: \"\"",
            "spec.introspection.issuer: must be the authorization server's exact `iss`",
        ),
        (
            "bad header",
            "name: x-token",
            "name: \"x token\"",
            "spec.introspection.fromHeaders[0].name: `x token` is not a valid header name",
        ),
        (
            "no forwarded claims",
            "claims: [sub, scope]",
            "claims: []",
            "spec.introspection.forwardClaimsHeader.claims: must list the claims",
        ),
        (
            "unknown field",
            "cacheTtl: 20s",
            "cacheTTL: 20s",
            "spec.introspection.cacheTTL",
        ),
        (
            "no endpoint",
            "    endpoint: https://auth.example/oauth2/introspect\n",
            "",
            "spec.introspection.endpoint",
        ),
    ];
    for (case, from, to, expected) in cases {
        let errs = errors(&edit(INTROSPECTION, from, to));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{case}: expected {expected:?} in {errs:#?}"
        );
    }
}
