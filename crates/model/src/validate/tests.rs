//! Unit tests of parsing and validation: one table row per rule.

use super::*;
use crate::{Algorithm, InstanceRegistration, Protocol};

/// Knows `catalog` (subsets v1, v2) and `orders` (instances only, no subsets).
struct Store;

impl KnownServices for Store {
    fn service_exists(&self, name: &str) -> bool {
        matches!(name, "catalog" | "orders")
    }
    fn subsets(&self, service: &str) -> Vec<String> {
        match service {
            "catalog" => vec!["v1".into(), "v2".into()],
            _ => Vec::new(),
        }
    }
}

const HEAD: &str = "apiVersion: trellis.dev/v1alpha1\n";

const SERVICE: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
spec:
  protocol: http
  subsets:
    - name: v1
      labels: { version: v1 }
    - name: v2
      labels: { version: v2 }
";

const POLICY: &str = "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: catalog
spec:
  targetRef: { name: catalog }
  loadBalancer:
    algorithm: RingHash
    hashKey: { header: x-user }
    ringSize: 1024
";

const ROUTE: &str = "apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-canary
spec:
  parentRefs:
    - name: catalog
  rules:
    - matches:
        - path: { type: PathPrefix, value: /api }
          headers:
            - { name: x-canary, value: \"true\" }
          method: GET
      backendRefs:
        - { name: catalog, subset: v1, weight: 90 }
        - { name: catalog, subset: v2, weight: 10 }
";

/// Every error line for `text`, parsed and validated against [`Store`].
fn errors(text: &str) -> Vec<String> {
    match parse_and_validate("mesh.yaml", text, &Store) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_error(case: &str, text: &str, expected: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.contains(expected)),
        "{case}: expected an error containing {expected:?}, got {errs:#?}"
    );
}

#[test]
fn the_documented_examples_are_valid() {
    let text = format!("{SERVICE}---\n{POLICY}---\n{ROUTE}");
    let docs = parse_indexed("mesh.yaml", &text).expect("valid");
    assert_eq!(
        docs.iter().map(|d| d.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let Resource::TrafficPolicy(p) = &docs[1].resource else {
        panic!("expected a TrafficPolicy, got {:?}", docs[1].resource);
    };
    assert_eq!(p.spec.load_balancer.algorithm, Algorithm::RingHash);
    assert_eq!(p.spec.load_balancer.ring_size, Some(1024));
    let Resource::HttpRoute(r) = &docs[2].resource else {
        panic!("expected an HTTPRoute");
    };
    assert_eq!(r.spec.rules[0].backend_refs[1].weight, 10);
    assert_eq!(r.metadata.namespace, "default");
    assert!(errors(&text).is_empty());
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let text = format!("---\n# nothing\n---\n{SERVICE}---\n---\n{ROUTE}---\n");
    let docs = parse_indexed("f", &text).expect("valid");
    assert_eq!(docs.iter().map(|d| d.index).collect::<Vec<_>>(), vec![2, 4]);
    assert!(parse_documents("f", "").expect("empty is fine").is_empty());
    assert!(
        parse_documents("f", "# only\n---\n~\n")
            .expect("null")
            .is_empty()
    );
}

#[test]
fn document_indices_in_errors_count_empty_documents() {
    let bad_route = ROUTE.replace("weight: 90", "weight: 2000000");
    let errs = errors(&format!("{SERVICE}---\n---\n{bad_route}"));
    assert_eq!(
        errs,
        vec![
            "mesh.yaml: document 3 (HTTPRoute catalog-canary): spec.rules[0].backendRefs[0].weight: 2000000 is out of range: must be between 0 and 1000000"
        ]
    );
}

#[test]
fn syntax_errors_name_the_line_in_the_whole_file() {
    let text = format!("{SERVICE}---\nkind: [a, b\nmetadata: x\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let line = SERVICE.lines().count() + 3;
    assert!(
        errs[0].starts_with("mesh.yaml: document 2: invalid YAML at line")
            && errs[0].contains(&format!("line {line} ")),
        "{errs:?}"
    );
}

#[test]
fn every_document_reports_its_errors() {
    let text = format!(
        "{}---\n{}---\nkind: Nope\n",
        SERVICE.replace("name: catalog", "name: Catalog"),
        POLICY.replace("ringSize: 1024", "ringSize: 1")
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("document 1 (Service Catalog): metadata.name")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains(
            "document 2 (TrafficPolicy catalog): spec.loadBalancer.ringSize: 1 is out of range"
        )),
        "{errs:#?}"
    );
    assert!(errs.iter().any(|e| e.contains("document 3 (Nope): kind: unknown kind `Nope`: expected one of Service, TrafficPolicy, HTTPRoute")), "{errs:#?}");
}

#[test]
fn shape_errors() {
    let cases: &[(&str, String, &str)] = &[
        ("missing kind", format!("{HEAD}metadata: {{name: a}}\n"), "kind: missing: set it to one of Service, TrafficPolicy, HTTPRoute"),
        ("kind not a string", format!("{HEAD}kind: [1]\n"), "kind: expected one of Service"),
        ("kind case", format!("{HEAD}kind: httproute\n"), "(did you mean `HTTPRoute`?)"),
        ("wrong apiVersion", SERVICE.replace("trellis.dev/v1alpha1", "v1"), "apiVersion: `v1` is not supported: use trellis.dev/v1alpha1"),
        ("missing apiVersion", SERVICE.replace("apiVersion: trellis.dev/v1alpha1\n", ""), "apiVersion: missing required field"),
        ("not a map", "- a\n- b\n".to_string(), "expected a map with apiVersion, kind, metadata and spec, found a list"),
        ("a scalar", "hello\n".to_string(), "found the string `hello`"),
        ("unknown top field", format!("{SERVICE}status: {{}}\n"), "(Service catalog): status: unknown field `status`"),
        ("unknown nested field", ROUTE.replace("weight: 90", "wieght: 90"), "spec.rules[0].backendRefs[0].wieght: unknown field `wieght`: expected one of name, subset, weight (did you mean `weight`?)"),
        ("missing metadata", format!("{HEAD}kind: Service\n"), "metadata: missing required field"),
        ("missing name", format!("{HEAD}kind: Service\nmetadata: {{}}\n"), "metadata.name: missing required field"),
        ("name not a string", format!("{HEAD}kind: Service\nmetadata: {{name: 12}}\n"), "metadata.name: expected a string, found `12` (quote it: \"12\")"),
        ("unquoted bool label", SERVICE.replace("{ version: v1 }", "{ canary: true }"), "spec.subsets[0].labels.canary: expected a string, found `true`"),
        ("bad protocol", SERVICE.replace("protocol: http", "protocol: HTTP"), "spec.protocol: unknown value `HTTP`: expected one of http, http2, grpc, tcp (did you mean `http`?)"),
        ("subsets not a list", SERVICE.replace("  subsets:\n    - name: v1\n      labels: { version: v1 }\n    - name: v2\n      labels: { version: v2 }\n", "  subsets: {name: v1}\n"), "spec.subsets: expected a list"),
        ("missing spec", format!("{HEAD}kind: HTTPRoute\nmetadata: {{name: r}}\n"), "spec: missing required field"),
        ("weight a string", ROUTE.replace("weight: 90", "weight: ninety"), "backendRefs[0].weight: expected an integer, found the string `ninety`"),
        ("weight negative", ROUTE.replace("weight: 90", "weight: -1"), "weight: -1 is out of range: must be between 0 and 1000000"),
        ("weight float", ROUTE.replace("weight: 90", "weight: 1.5"), "weight: expected an integer, found `1.5`"),
        ("bad algorithm", POLICY.replace("RingHash", "roundrobin"), "unknown value `roundrobin`: expected one of RoundRobin, Random, Weighted, LeastRequest, PeakEwma, RingHash, Maglev (did you mean `RoundRobin`?)"),
        ("sourceIp not bool", POLICY.replace("{ header: x-user }", "{ sourceIp: yes please }"), "spec.loadBalancer.hashKey.sourceIp: expected true or false"),
        ("path type", ROUTE.replace("type: PathPrefix", "type: Prefix"), "path.type: unknown value `Prefix`"),
        ("duplicate key", SERVICE.replace("  protocol: http\n", "  protocol: http\n  protocol: grpc\n"), "invalid YAML at line 7 column 3: duplicate mapping key"),
        ("mtls mode case", SERVICE.replace("  protocol: http\n", "  protocol: http\n  mtls: { mode: strict }\n"), "(Service catalog): spec.mtls.mode: unknown value `strict`: expected one of STRICT, PERMISSIVE (did you mean `STRICT`?)"),
        ("mtls mode unknown", SERVICE.replace("  protocol: http\n", "  protocol: http\n  mtls: { mode: DISABLE }\n"), "spec.mtls.mode: unknown value `DISABLE`: expected one of STRICT, PERMISSIVE"),
        ("mtls not a map", SERVICE.replace("  protocol: http\n", "  protocol: http\n  mtls: STRICT\n"), "spec.mtls: expected a map"),
        ("mtls unknown field", SERVICE.replace("  protocol: http\n", "  protocol: http\n  mtls: { mod: STRICT }\n"), "spec.mtls.mod: unknown field `mod`: expected one of mode (did you mean `mode`?)"),
    ];
    for (case, text, expected) in cases {
        assert_error(case, text, expected);
    }
}

#[test]
fn weight_huge_is_an_error_whatever_its_rendering() {
    let errs = errors(&ROUTE.replace("weight: 90", "weight: 99999999999999999999999999"));
    assert!(
        errs.iter()
            .any(|e| e.contains("backendRefs[0].weight") && e.contains("out of range")),
        "{errs:#?}"
    );
}

#[test]
fn field_rules() {
    let long = "a".repeat(64);
    let cases: Vec<(&str, String, &str)> = vec![
        ("name uppercase", SERVICE.replace("name: catalog", "name: Catalog"), "metadata.name: `Catalog` contains 'C'"),
        ("name starts with digit", SERVICE.replace("name: catalog", "name: 1catalog"), "must start with a lowercase letter"),
        ("name ends with dash", SERVICE.replace("name: catalog", "name: catalog-"), "must not end with `-`"),
        ("name too long", SERVICE.replace("name: catalog", &format!("name: {long}")), "is 64 characters long"),
        ("name empty", SERVICE.replace("name: catalog", "name: \"\""), "metadata.name: must not be empty"),
        ("subset name", SERVICE.replace("- name: v2", "- name: V2"), "spec.subsets[1].name: `V2` contains 'V'"),
        ("subset twice", SERVICE.replace("- name: v2", "- name: v1"), "spec.subsets[1].name: subset `v1` is declared twice"),
        ("subset no labels", SERVICE.replace("{ version: v2 }", "{}"), "spec.subsets[1].labels: must select at least one label"),
        ("hashKey required", POLICY.replace("    hashKey: { header: x-user }\n", ""), "spec.loadBalancer.hashKey: required for algorithm RingHash"),
        ("hashKey forbidden", POLICY.replace("RingHash", "RoundRobin").replace("    ringSize: 1024\n", ""), "spec.loadBalancer.hashKey: only used by RingHash and Maglev, not RoundRobin"),
        ("hashKey both", POLICY.replace("{ header: x-user }", "{ header: x-user, sourceIp: true }"), "set exactly one of `header` and `sourceIp`"),
        ("hashKey neither", POLICY.replace("{ header: x-user }", "{}"), "set exactly one of `header` and `sourceIp`"),
        ("hashKey header name", POLICY.replace("{ header: x-user }", "{ header: \"x user\" }"), "spec.loadBalancer.hashKey.header: `x user` is not a valid header name"),
        ("ringSize too small", POLICY.replace("ringSize: 1024", "ringSize: 63"), "ringSize: 63 is out of range: must be between 64 and 8388608"),
        ("ringSize too big", POLICY.replace("ringSize: 1024", "ringSize: 8388609"), "ringSize: 8388609 is out of range"),
        ("ringSize on Maglev", POLICY.replace("RingHash", "Maglev"), "spec.loadBalancer.ringSize: only used by RingHash, not Maglev"),
        ("tableSize on RingHash", POLICY.replace("ringSize: 1024", "tableSize: 65537"), "spec.loadBalancer.tableSize: only used by Maglev, not RingHash"),
        ("tableSize not prime", POLICY.replace("RingHash", "Maglev").replace("ringSize: 1024", "tableSize: 65536"), "tableSize: 65536 is not a prime"),
        ("tableSize too big", POLICY.replace("RingHash", "Maglev").replace("ringSize: 1024", "tableSize: 5000012"), "tableSize: 5000012 is out of range: must be between 5 and 5000011"),
        ("no parentRefs", ROUTE.replace("  parentRefs:\n    - name: catalog\n", "  parentRefs: []\n"), "spec.parentRefs: must name at least one service"),
        ("no rules", ROUTE.split("  rules:").next().unwrap_or_default().to_string(), "spec.rules: must hold at least one rule"),
        ("no backendRefs", ROUTE.replace("      backendRefs:\n        - { name: catalog, subset: v1, weight: 90 }\n        - { name: catalog, subset: v2, weight: 10 }\n", "      backendRefs: []\n"), "spec.rules[0].backendRefs: must name at least one backend"),
        ("all weights zero", ROUTE.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"), "spec.rules[0].backendRefs: every weight is 0"),
        ("weight too big", ROUTE.replace("weight: 10", "weight: 1000001"), "spec.rules[0].backendRefs[1].weight: 1000001 is out of range: must be between 0 and 1000000"),
        ("path without slash", ROUTE.replace("value: /api", "value: api"), "spec.rules[0].matches[0].path.value: `api` must start with `/`"),
        ("exact path without slash", ROUTE.replace("type: PathPrefix, value: /api", "type: Exact, value: api"), "path.value: `api` must start with `/`"),
        ("bad path regex", ROUTE.replace("type: PathPrefix, value: /api", "type: RegularExpression, value: \"/api(\""), "path.value: `/api(` is not a valid regular expression"),
        ("bad header regex", ROUTE.replace("{ name: x-canary, value: \"true\" }", "{ name: x-canary, type: RegularExpression, value: \"[\" }"), "headers[0].value: `[` is not a valid regular expression"),
        ("bad header name", ROUTE.replace("name: x-canary", "name: \"x:canary\""), "spec.rules[0].matches[0].headers[0].name: `x:canary` is not a valid header name"),
        ("bad method", ROUTE.replace("method: GET", "method: get"), "spec.rules[0].matches[0].method: unknown method `get`: expected one of GET, HEAD"),
        ("backend name", ROUTE.replace("{ name: catalog, subset: v1", "{ name: Catalog, subset: v1"), "backendRefs[0].name: `Catalog` contains 'C'"),
    ];
    for (case, text, expected) in &cases {
        assert_error(case, text, expected);
    }
}

#[test]
fn valid_variants_pass() {
    let cases: Vec<(&str, String)> = vec![
        ("regex path", ROUTE.replace("type: PathPrefix, value: /api", "type: RegularExpression, value: \"^/api/[0-9]+$\"")),
        ("maglev", POLICY.replace("RingHash", "Maglev").replace("ringSize: 1024", "tableSize: 65537").replace("{ header: x-user }", "{ sourceIp: true }")),
        ("round robin default", POLICY.replace("  loadBalancer:\n    algorithm: RingHash\n    hashKey: { header: x-user }\n    ringSize: 1024\n", "")),
        ("weight zero and one", ROUTE.replace("weight: 90", "weight: 0")),
        ("no matches", ROUTE.replace("    - matches:\n        - path: { type: PathPrefix, value: /api }\n          headers:\n            - { name: x-canary, value: \"true\" }\n          method: GET\n      backendRefs:", "    - backendRefs:")),
        ("service without spec", format!("{HEAD}kind: Service\nmetadata: {{name: search}}\n")),
        ("null optional", ROUTE.replace("subset: v1", "subset: null")),
        ("content on the marker line", "--- {apiVersion: trellis.dev/v1alpha1, kind: Service, metadata: {name: a}}\n".to_string()),
    ];
    for (case, text) in &cases {
        assert_eq!(errors(text), Vec::<String>::new(), "{case}");
    }
}

#[test]
fn cross_references() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown target",
            POLICY.replace("targetRef: { name: catalog }", "targetRef: { name: nope }"),
            "spec.targetRef.name: service `nope` does not exist",
        ),
        (
            "unknown parent",
            ROUTE.replace("- name: catalog\n", "- name: nope\n"),
            "spec.parentRefs[0].name: service `nope` does not exist",
        ),
        (
            "unknown backend",
            ROUTE.replace("{ name: catalog, subset: v2", "{ name: nope, subset: v2"),
            "(HTTPRoute catalog-canary): spec.rules[0].backendRefs[1].name: service `nope` does not exist",
        ),
        (
            "undeclared subset in store",
            ROUTE.replace("subset: v2", "subset: v3"),
            "spec.rules[0].backendRefs[1].subset: subset `v3` is not declared on service `catalog` (declared: v1, v2)",
        ),
        (
            "store service without subsets",
            ROUTE.replace("{ name: catalog, subset: v2", "{ name: orders, subset: v2"),
            "subset `v2` is not declared on service `orders` (it declares no subsets)",
        ),
        // The batch's Service document wins over the store: here it only declares v1.
        (
            "batch service wins",
            format!(
                "{}---\n{ROUTE}",
                SERVICE.replace("    - name: v2\n      labels: { version: v2 }\n", "")
            ),
            "document 2 (HTTPRoute catalog-canary): spec.rules[0].backendRefs[1].subset: subset `v2` is not declared on service `catalog` (declared: v1)",
        ),
        (
            "duplicate in file",
            format!("{SERVICE}---\n{SERVICE}"),
            "document 2 (Service catalog): metadata.name: Service `catalog` is also defined in document 1",
        ),
    ];
    for (case, text, expected) in &cases {
        assert_error(case, text, expected);
    }
}

#[test]
fn services_declared_in_the_batch_satisfy_references() {
    let svc = SERVICE
        .replace("name: catalog", "name: search")
        .replace("name: v1\n", "name: fast\n");
    let route = ROUTE
        .replace("- name: catalog\n", "- name: search\n")
        .replace(
            "{ name: catalog, subset: v1",
            "{ name: search, subset: fast",
        );
    assert_eq!(errors(&format!("{route}---\n{svc}")), Vec::<String>::new());
}

#[test]
fn a_broken_service_document_does_not_add_dangling_reference_errors() {
    let svc = SERVICE
        .replace("name: catalog", "name: search")
        .replace("protocol: http", "protocol: ftp");
    let route = ROUTE.replace("- name: catalog\n", "- name: search\n");
    let errs = errors(&format!("{svc}---\n{route}"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("spec.protocol"), "{errs:#?}");
}

#[test]
fn validate_numbers_resources_by_position() {
    let resources = parse_documents("f", &format!("{SERVICE}---\n{POLICY}")).expect("valid");
    assert!(validate("f", &resources, &NoServices).is_ok());
    let err = validate("f", &resources[1..], &NoServices).expect_err("catalog unknown");
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].document, 1);
    assert_eq!(err.errors[0].field, "spec.targetRef.name");
    assert_eq!(
        err.errors[0].subject.as_deref(),
        Some("TrafficPolicy catalog")
    );
}

#[test]
fn errors_per_document_are_capped() {
    let mut text = SERVICE.to_string();
    for i in 0..200 {
        text.push_str(&format!("extra{i}: 1\n"));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), MAX_ERRORS_PER_DOCUMENT + 1);
    assert!(
        errs[MAX_ERRORS_PER_DOCUMENT].contains("175 more error(s)"),
        "{errs:?}"
    );
}

#[test]
fn apply_error_display_lists_every_error() {
    let err = parse_documents("m.yaml", "kind: A\n---\nkind: B\n").expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("m.yaml: document 1 (A): kind: unknown kind `A`"),
        "{text}"
    );
    assert!(text.contains("m.yaml: document 2 (B): kind"), "{text}");
    assert!(text.ends_with("error(s); nothing was applied"), "{text}");
}

#[test]
fn split_keeps_indices_and_lines() {
    let chunks = split::split("# c\n%YAML 1.2\n---\na: 1\n...\n---\nb: 2\n--- c: 3\n");
    let got: Vec<(usize, usize, bool)> = chunks
        .iter()
        .map(|c| (c.index, c.first_line, c.is_blank()))
        .collect();
    assert_eq!(got, vec![(1, 2, false), (2, 5, false), (3, 7, false)]);
    // `---x` and ` ---` are not markers.
    assert_eq!(split::split("a: ---x\n ---\n").len(), 1);
}

fn registration() -> InstanceRegistration {
    InstanceRegistration {
        service: "catalog".into(),
        id: "catalog-7f3a".into(),
        address: "127.0.0.1".into(),
        port: 41000,
        protocol: Protocol::Http,
        labels: [("version".to_string(), "v1".to_string())].into(),
        zone: None,
        weight: 1,
        ttl_ms: 10_000,
        identity: None,
        check: None,
    }
}

#[test]
fn registrations() {
    assert_eq!(validate_registration(&registration()), Ok(()));
    let v6 = InstanceRegistration {
        address: "::1".into(),
        weight: 128,
        ttl_ms: 3_600_000,
        identity: None,
        check: None,
        ..registration()
    };
    assert_eq!(validate_registration(&v6), Ok(()));
    type Edit = fn(&mut InstanceRegistration);
    let cases: &[(Edit, &str)] = &[
        (
            |r| r.service = "Catalog".into(),
            "service: `Catalog` contains 'C'",
        ),
        (
            |r| r.id = String::new(),
            "id: must be 1 to 128 characters long",
        ),
        (
            |r| r.id = "x".repeat(129),
            "id: must be 1 to 128 characters long, got 129",
        ),
        (|r| r.id = "a/b".into(), "id: `a/b` contains '/'"),
        (
            |r| r.address = "localhost".into(),
            "address: `localhost` is not an IP address",
        ),
        (|r| r.port = 0, "port: must not be 0"),
        (
            |r| r.weight = 0,
            "weight: 0 is out of range: must be between 1 and 128",
        ),
        (
            |r| r.weight = 129,
            "weight: 129 is out of range: must be between 1 and 128",
        ),
        (
            |r| r.ttl_ms = 99,
            "ttl_ms: 99 is out of range: must be between 100 and 3600000",
        ),
        (|r| r.ttl_ms = 3_600_001, "ttl_ms: 3600001 is out of range"),
        (
            |r| {
                r.labels.insert(String::new(), "x".into());
            },
            "labels: keys must not be empty",
        ),
    ];
    for (edit, expected) in cases {
        let mut r = registration();
        edit(&mut r);
        let err = validate_registration(&r).expect_err(expected);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}

#[test]
fn mtls_mode_is_strict_unless_set_and_round_trips() {
    use crate::{MtlsMode, Resource};
    let mode = |text: &str| match parse_documents("s.yaml", text).expect("valid").as_slice() {
        [Resource::Service(s)] => s.spec.mtls.mode,
        other => panic!("expected one Service, got {other:?}"),
    };
    let cases = [
        ("absent", SERVICE.to_string(), MtlsMode::Strict),
        (
            "empty map",
            SERVICE.replace("  protocol: http\n", "  protocol: http\n  mtls: {}\n"),
            MtlsMode::Strict,
        ),
        (
            "STRICT",
            SERVICE.replace(
                "  protocol: http\n",
                "  protocol: http\n  mtls: { mode: STRICT }\n",
            ),
            MtlsMode::Strict,
        ),
        (
            "PERMISSIVE",
            SERVICE.replace(
                "  protocol: http\n",
                "  protocol: http\n  mtls: { mode: PERMISSIVE }\n",
            ),
            MtlsMode::Permissive,
        ),
    ];
    for (case, text, want) in cases {
        assert_eq!(mode(&text), want, "{case}");
    }
    // The default is left out of the stored/returned JSON; PERMISSIVE is kept.
    let strict = parse_documents("s.yaml", SERVICE).expect("valid");
    let json = serde_json::to_value(&strict[0]).expect("json");
    assert!(json["spec"].get("mtls").is_none(), "{json}");
    let permissive = SERVICE.replace(
        "  protocol: http\n",
        "  protocol: http\n  mtls: { mode: PERMISSIVE }\n",
    );
    let parsed = parse_documents("s.yaml", &permissive).expect("valid");
    let json = serde_json::to_value(&parsed[0]).expect("json");
    assert_eq!(json["spec"]["mtls"]["mode"], "PERMISSIVE", "{json}");
    let back: Resource = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, parsed[0]);
}

mod faults;
mod resilience;
mod tcp;
