//! PolicySet evaluation, table style: each row picks policies from a library written in the
//! user's YAML and asserts the decision for one request.

use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use trellis_model::{AuthorizationPolicyResource, Resource};

use super::{DENIED_BY_POLICY, Decision, NOT_ALLOWED, PolicySet, RequestFacts};

const LIBRARY: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-all }
spec: {}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-web-get }
spec:
  targetRef: { name: catalog }
  rules:
    - from: [{ principals: ["spiffe://t/ns/default/sa/web"] }]
      to: [{ methods: [GET, HEAD], paths: ["/api/*"] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-admin }
spec:
  action: DENY
  rules:
    - to: [{ paths: ["/admin", "/admin/*"] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-batch }
spec:
  targetRef: { name: catalog }
  action: DENY
  rules:
    - from: [{ principals: ["spiffe://t/ns/shop/sa/batch"] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-shop }
spec:
  rules:
    - from: [{ namespaces: [shop], notPrincipals: ["spiffe://t/ns/shop/sa/batch"] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-read-scope }
spec:
  rules:
    - to: [{ methods: [GET] }]
      when: [{ claim: scope, values: [catalog.read] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-admins }
spec:
  rules:
    - when:
        - { claim: iss, values: ["https://issuer.example"] }
        - { claim: realm.roles, values: [admin] }
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-tenant }
spec:
  rules:
    - to: [{ headers: [{ name: X-Tenant, value: "acme*" }] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-everything }
spec:
  rules: [{}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-plaintext }
spec:
  action: DENY
  rules:
    - from: [{ notPrincipals: ["*"] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: allow-json }
spec:
  rules:
    - to: [{ paths: ["*.json"] }]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-post-from-default }
spec:
  action: DENY
  rules:
    - from: [{ namespaces: [default] }]
      to: [{ methods: [POST] }]
"#;

fn library() -> Vec<AuthorizationPolicyResource> {
    trellis_model::parse_documents("library.yaml", LIBRARY)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn set(names: &[&str]) -> PolicySet {
    let lib = library();
    for n in names {
        assert!(lib.iter().any(|p| p.metadata.name == *n), "no policy {n}");
    }
    PolicySet::compile(
        lib.iter()
            .filter(|p| names.contains(&p.metadata.name.as_str())),
    )
}

const WEB: &str = "spiffe://t/ns/default/sa/web";
const BATCH: &str = "spiffe://t/ns/shop/sa/batch";
const CART: &str = "spiffe://t/ns/shop/sa/cart";

#[derive(Clone, Copy)]
enum Want {
    Allow,
    DeniedBy(&'static str),
    NotAllowed,
}

struct Case {
    name: &'static str,
    policies: &'static [&'static str],
    principal: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    claims: Option<Value>,
    want: Want,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            policies: &[],
            principal: Some(WEB),
            method: "GET",
            path: "/api/items",
            headers: &[],
            claims: None,
            want: Want::Allow,
        }
    }
}

/// The namespace of a SPIFFE id `spiffe://td/ns/NS/sa/SA`.
fn namespace_of(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    parts.find(|p| *p == "ns")?;
    parts.next()
}

fn check(case: &Case) {
    let mut headers = HeaderMap::new();
    for (k, v) in case.headers {
        headers.append(*k, HeaderValue::from_static(v));
    }
    let facts = RequestFacts {
        principal: case.principal,
        namespace: case.principal.and_then(namespace_of),
        method: case.method,
        path: case.path,
        headers: &headers,
        claims: case.claims.as_ref(),
    };
    let got = set(case.policies).evaluate(&facts);
    let want = match case.want {
        Want::Allow => Decision::Allow,
        Want::DeniedBy(p) => Decision::Deny {
            reason: DENIED_BY_POLICY,
            policy: Some(p.into()),
        },
        Want::NotAllowed => Decision::Deny {
            reason: NOT_ALLOWED,
            policy: None,
        },
    };
    assert_eq!(got, want, "case: {}", case.name);
}

#[test]
fn evaluation_order_and_matching() {
    use Want::*;
    let cases = vec![
        Case {
            name: "no policies allow everything",
            ..Default::default()
        },
        Case {
            name: "no policies allow plaintext",
            principal: None,
            ..Default::default()
        },
        Case {
            name: "mesh-wide deny-all denies",
            policies: &["deny-all"],
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "deny-all plus a matching ALLOW allows",
            policies: &["deny-all", "allow-web-get"],
            ..Default::default()
        },
        Case {
            name: "deny-all plus ALLOW: other method is denied",
            policies: &["deny-all", "allow-web-get"],
            method: "POST",
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "ALLOW: path outside the prefix is denied",
            policies: &["allow-web-get"],
            path: "/apix",
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "ALLOW: prefix does not match its bare directory",
            policies: &["allow-web-get"],
            path: "/api",
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "ALLOW: query is ignored when matching paths",
            policies: &["allow-web-get"],
            path: "/api/items?admin=1",
            ..Default::default()
        },
        Case {
            name: "ALLOW: other principal is denied",
            policies: &["allow-web-get"],
            principal: Some(CART),
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "ALLOW: plaintext caller has no principal",
            policies: &["allow-web-get"],
            principal: None,
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "DENY wins over a matching ALLOW",
            policies: &["allow-everything", "deny-admin"],
            path: "/admin",
            want: DeniedBy("deny-admin"),
            ..Default::default()
        },
        Case {
            name: "DENY wins over deny-all's exceptions too",
            policies: &["deny-all", "allow-web-get", "deny-batch"],
            principal: Some(BATCH),
            want: DeniedBy("deny-batch"),
            ..Default::default()
        },
        Case {
            name: "DENY on a sub-path",
            policies: &["deny-admin"],
            path: "/admin/users",
            want: DeniedBy("deny-admin"),
            ..Default::default()
        },
        Case {
            name: "DENY not matching leaves the default allow",
            policies: &["deny-admin"],
            path: "/administrator",
            ..Default::default()
        },
        Case {
            name: "first matching DENY by name is reported",
            policies: &["deny-admin", "deny-batch"],
            principal: Some(BATCH),
            path: "/admin",
            want: DeniedBy("deny-admin"),
            ..Default::default()
        },
        Case {
            name: "namespace ALLOW admits the namespace",
            policies: &["allow-shop"],
            principal: Some(CART),
            ..Default::default()
        },
        Case {
            name: "notPrincipals excludes one caller",
            policies: &["allow-shop"],
            principal: Some(BATCH),
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "namespace ALLOW refuses other namespaces",
            policies: &["allow-shop"],
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "DENY on plaintext callers",
            policies: &["deny-plaintext"],
            principal: None,
            want: DeniedBy("deny-plaintext"),
            ..Default::default()
        },
        Case {
            name: "DENY on plaintext leaves mTLS callers",
            policies: &["deny-plaintext"],
            ..Default::default()
        },
        Case {
            name: "scope claim among several scopes",
            policies: &["allow-read-scope"],
            claims: Some(json!({"scope": "profile catalog.read"})),
            ..Default::default()
        },
        Case {
            name: "scope claim as a list",
            policies: &["allow-read-scope"],
            claims: Some(json!({"scope": ["catalog.read"]})),
            ..Default::default()
        },
        Case {
            name: "scope claim must be a whole word",
            policies: &["allow-read-scope"],
            claims: Some(json!({"scope": "catalog.readwrite"})),
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "no claims fail a when condition",
            policies: &["allow-read-scope"],
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "every when condition must hold",
            policies: &["allow-admins"],
            claims: Some(json!({"iss": "https://issuer.example", "realm": {"roles": ["user"]}})),
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "nested claim and issuer hold",
            policies: &["allow-admins"],
            claims: Some(
                json!({"iss": "https://issuer.example", "realm": {"roles": ["user", "admin"]}}),
            ),
            ..Default::default()
        },
        Case {
            name: "a forged issuer fails",
            policies: &["allow-admins"],
            claims: Some(json!({"iss": "https://evil.example", "realm": {"roles": ["admin"]}})),
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "header names are case-insensitive, value prefix",
            policies: &["allow-tenant"],
            headers: &[("x-tenant", "acme-eu")],
            ..Default::default()
        },
        Case {
            name: "any value of a repeated header may match",
            policies: &["allow-tenant"],
            headers: &[("x-tenant", "other"), ("x-tenant", "acme")],
            ..Default::default()
        },
        Case {
            name: "header value mismatch",
            policies: &["allow-tenant"],
            headers: &[("x-tenant", "evil-acme")],
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "missing header",
            policies: &["allow-tenant"],
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "suffix path",
            policies: &["allow-json"],
            path: "/data/x.json",
            ..Default::default()
        },
        Case {
            name: "suffix path is checked without the query",
            policies: &["allow-json"],
            path: "/data/x?f=.json",
            want: NotAllowed,
            ..Default::default()
        },
        Case {
            name: "from and to must both match",
            policies: &["deny-post-from-default"],
            method: "POST",
            want: DeniedBy("deny-post-from-default"),
            ..Default::default()
        },
        Case {
            name: "from matches but to does not",
            policies: &["deny-post-from-default"],
            method: "GET",
            ..Default::default()
        },
        Case {
            name: "to matches but from does not",
            policies: &["deny-post-from-default"],
            method: "POST",
            principal: Some(CART),
            ..Default::default()
        },
        Case {
            name: "methods are case-sensitive",
            policies: &["allow-web-get"],
            method: "get",
            want: NotAllowed,
            ..Default::default()
        },
    ];
    assert!(cases.len() >= 25);
    for case in &cases {
        check(case);
    }
}

#[test]
fn for_service_keeps_only_the_policies_that_apply() {
    let lib = library();
    let orders = PolicySet::for_service("orders", &lib);
    let catalog = PolicySet::for_service("catalog", &lib);
    let headers = HeaderMap::new();
    let batch = RequestFacts {
        principal: Some(BATCH),
        namespace: Some("shop"),
        method: "GET",
        path: "/api/items",
        headers: &headers,
        claims: None,
    };
    // deny-batch targets catalog only; orders still has allow-shop, which excludes batch.
    assert_eq!(
        catalog.evaluate(&batch),
        Decision::Deny {
            reason: DENIED_BY_POLICY,
            policy: Some("deny-batch".into())
        }
    );
    assert_eq!(
        orders.evaluate(&batch),
        Decision::Allow,
        "allow-everything applies mesh-wide"
    );
    assert!(catalog.uses_claims() && !PolicySet::default().uses_claims());
    assert!(PolicySet::default().is_empty() && !orders.is_empty());
}
