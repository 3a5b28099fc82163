//! `protocol: tcp` and AuthorizationPolicies on TCP services: only `from` may be used, the
//! rest is rejected at apply time when the target's protocol is known (the file or the store).

use super::super::*;
use crate::Protocol;

/// Knows `db` (a registered TCP service) and `catalog` (HTTP).
struct Store;

impl KnownServices for Store {
    fn service_exists(&self, name: &str) -> bool {
        matches!(name, "db" | "catalog")
    }
    fn subsets(&self, _service: &str) -> Vec<String> {
        Vec::new()
    }
    fn protocol(&self, service: &str) -> Option<Protocol> {
        match service {
            "db" => Some(Protocol::Tcp),
            "catalog" => Some(Protocol::Http),
            _ => None,
        }
    }
}

const TCP_SERVICE: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: cache
spec:
  protocol: tcp
";

fn policy(target: &str, rules: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: p
spec:
  targetRef: {{ name: {target} }}
  action: DENY
  rules:
{rules}"
    )
}

const FROM_ONLY: &str = "    - from: [{ principals: [\"spiffe://t/ns/default/svc/web\"] }]\n";
const WITH_TO: &str = "    - from: [{ namespaces: [shop] }]\n      to: [{ methods: [GET] }]\n";
const WITH_WHEN: &str = "    - when: [{ claim: sub, values: [alice] }]\n";

fn errors(text: &str) -> Vec<String> {
    match parse_and_validate("tcp.yaml", text, &Store) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn protocol_tcp_parses_and_round_trips() {
    let docs = parse_documents("s.yaml", TCP_SERVICE).expect("valid");
    let Resource::Service(s) = &docs[0] else {
        panic!("not a Service: {docs:?}");
    };
    assert_eq!(s.spec.protocol, Protocol::Tcp);
    let json = serde_json::to_value(&docs[0]).expect("serializes");
    assert_eq!(json["spec"]["protocol"], "tcp");
    assert_eq!(Protocol::Tcp.as_str(), "tcp");
}

#[test]
fn from_only_policies_on_tcp_services_are_valid() {
    assert_eq!(errors(&policy("db", FROM_ONLY)), Vec::<String>::new());
    let in_file = format!("{TCP_SERVICE}---\n{}", policy("cache", FROM_ONLY));
    assert_eq!(errors(&in_file), Vec::<String>::new());
}

#[test]
fn http_only_fields_on_tcp_targets_are_rejected_naming_the_field() {
    let cases = [
        (
            "store: to",
            policy("db", WITH_TO),
            "tcp.yaml: document 1 (AuthorizationPolicy p): spec.rules[0].to: service `db` is a TCP service (protocol: tcp)",
        ),
        (
            "store: when",
            policy("db", WITH_WHEN),
            "spec.rules[0].when: service `db` is a TCP service",
        ),
        (
            "second rule",
            policy("db", &format!("{FROM_ONLY}{WITH_TO}")),
            "spec.rules[1].to:",
        ),
        (
            "declared in the file",
            format!("{TCP_SERVICE}---\n{}", policy("cache", WITH_TO)),
            "document 2 (AuthorizationPolicy p): spec.rules[0].to: service `cache` is a TCP service",
        ),
    ];
    for (case, text, expected) in &cases {
        let errs = errors(text);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{case}: expected {expected:?} in {errs:#?}"
        );
        assert!(
            errs.iter().all(|e| e.contains("from")),
            "{case}: the hint names `from`: {errs:#?}"
        );
    }
}

#[test]
fn the_file_wins_over_the_store_and_http_targets_keep_every_field() {
    // `catalog` is HTTP: `to` is fine.
    assert_eq!(errors(&policy("catalog", WITH_TO)), Vec::<String>::new());
    // The file redeclares `db` as HTTP: `to` is fine too.
    let redeclared = format!(
        "{}---\n{}",
        TCP_SERVICE
            .replace("name: cache", "name: db")
            .replace("tcp", "http"),
        policy("db", WITH_TO)
    );
    assert_eq!(errors(&redeclared), Vec::<String>::new());
    // A mesh-wide policy has no target protocol: accepted (the sidecar's TCP rules apply).
    let mesh_wide = policy("db", WITH_TO).replace("  targetRef: { name: db }\n", "");
    assert_eq!(errors(&mesh_wide), Vec::<String>::new());
}
