//! Tests of the client's output and error handling (no control plane needed).

use serde_json::json;

use super::table::{self, render};
use super::*;

fn target(url: &str) -> Target {
    Target {
        control: url.to_string(),
        control_ca: None,
        output: Output::Table,
    }
}

#[test]
fn render_aligns_columns_without_trailing_spaces() {
    let out = render(
        &["NAME", "HEALTH", "LABELS"],
        &[
            vec!["catalog-7f3a".into(), "healthy".into(), "-".into()],
            vec!["x".into(), "unhealthy".into(), "version=v1".into()],
        ],
    );
    assert_eq!(
        out,
        "NAME          HEALTH     LABELS\n\
         catalog-7f3a  healthy    -\n\
         x             unhealthy  version=v1\n"
    );
}

#[test]
fn ages_read_like_kubectl() {
    let cases = [
        (0, "0s"),
        (59_999, "59s"),
        (60_000, "1m"),
        (3_599_000, "59m"),
        (3_600_000, "1h"),
        (47 * 3_600_000, "47h"),
        (48 * 3_600_000, "2d"),
    ];
    for (ms, want) in cases {
        assert_eq!(table::format_age(ms), want, "{ms}");
    }
}

#[test]
fn instances_table() {
    let items = vec![
        json!({"service": "catalog", "id": "catalog-1", "address": "127.0.0.1", "port": 41000,
               "labels": {"version": "v1", "zone": "a"}, "health": "healthy", "status": "passing",
               "last_heartbeat_ms_ago": 120, "registered_at_ms": 1_000_000}),
        json!({"service": "orders", "id": "orders-1", "address": "::1", "port": 8080,
               "health": "healthy", "status": "critical", "status_output": "sidecar: HTTP GET /healthz: 503 Service Unavailable",
               "last_heartbeat_ms_ago": 20_000, "registered_at_ms": 1_050_000}),
    ];
    let out = table::instances(&items, 1_000_000 + 125_000);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "SERVICE  ID         ADDRESS          STATUS    LABELS             AGE  CHECK"
    );
    assert_eq!(
        lines[1],
        "catalog  catalog-1  127.0.0.1:41000  passing   version=v1,zone=a  2m   -"
    );
    assert_eq!(
        lines[2],
        "orders   orders-1   [::1]:8080       critical  -                  1m   sidecar: HTTP GET /healthz: 503 Service Unavailable"
    );
}

#[test]
fn proxies_table_collapses_agreeing_versions_and_shows_nacks() {
    let items = vec![
        json!({"node_id": "catalog~1", "service": "catalog", "acked": {"Cluster": "7", "Listener": "7"}, "last_nack": null}),
        json!({"node_id": "orders~1", "service": "orders", "acked": {"Cluster": "7", "Listener": "6"},
               "last_nack": {"type_name": "Cluster", "version": "8", "message": "bad cluster", "at_ms": 5}}),
    ];
    let out = table::proxies(&items);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "NODE       SERVICE  ACKED-VERSION         LAST-NACK"
    );
    assert_eq!(lines[1], "catalog~1  catalog  7                     -");
    assert_eq!(
        lines[2],
        "orders~1   orders   Cluster=7,Listener=6  Cluster 8: bad cluster"
    );
}

#[test]
fn services_table_and_applied_lines() {
    let out = table::services(&[
        json!({"name": "catalog", "declared": true, "instances": 2, "healthy": 1}),
    ]);
    assert_eq!(
        out,
        "NAME     DECLARED  INSTANCES  HEALTHY\ncatalog  yes       2          1\n"
    );
    let applied = json!({"applied": [
        {"kind": "HTTPRoute", "name": "catalog-canary", "action": "configured"},
        {"kind": "Service", "name": "catalog", "action": "unchanged"},
    ]});
    assert_eq!(
        table::applied_lines(&applied),
        vec![
            "httproute/catalog-canary configured",
            "service/catalog unchanged"
        ]
    );
}

const MESH: &str = "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: catalog}
spec:
  targetRef: {name: catalog}
  loadBalancer: {algorithm: RingHash, hashKey: {header: x-user}, ringSize: 1024}
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata: {name: catalog-canary}
spec:
  parentRefs: [{name: catalog}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
      backendRefs: [{name: catalog, subset: v1, weight: 90}, {name: catalog, subset: v2, weight: 10}]
";

#[test]
fn resource_tables() {
    let resources = trellis_model::parse_documents("m", MESH).expect("valid");
    let routes = table::resources(&resources, Some(Kind::HttpRoute));
    assert_eq!(
        routes,
        "NAME            PARENTS  RULES  BACKENDS\n\
         catalog-canary  catalog  1      catalog/v1:90,catalog/v2:10\n"
    );
    let policies = table::resources(&resources, Some(Kind::TrafficPolicy));
    assert!(
        policies.contains("catalog  catalog  RingHash (hash on header x-user, ring size 1024)"),
        "{policies}"
    );
    let all = table::resources(&resources, None);
    assert_eq!(
        all,
        "KIND           NAME\nTrafficPolicy  catalog\nHTTPRoute      catalog-canary\n"
    );
}

#[test]
fn describe_has_every_section() {
    let resources = trellis_model::parse_documents("m", MESH).expect("valid");
    let (Resource::TrafficPolicy(p), Resource::HttpRoute(r)) = (&resources[0], &resources[1])
    else {
        panic!("unexpected kinds: {resources:?}");
    };
    let body = json!({
        "name": "catalog",
        "declared": {"protocol": "http", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
        "policy": p.spec,
        "routes": [r],
        "instances": [{"service": "catalog", "id": "catalog-1", "address": "127.0.0.1", "port": 41000,
                       "weight": 1, "health": "healthy", "last_heartbeat_ms_ago": 1500, "registered_at_ms": 0}],
        "proxies": [{"node_id": "catalog~1", "service": "catalog", "acked": {"Cluster": "3"}}],
        "rate_limit": {"apiVersion": "trellis.dev/v1alpha1",
                       "metadata": {"name": "catalog-limits"},
                       "spec": {"targetRef": {"name": "catalog"}, "rules": [
                           {"match": {"path": {"value": "/api"}}, "requestsPerUnit": 100, "unit": "second", "burst": 20},
                           {"requestsPerUnit": 5, "unit": "minute", "global": true}]}},
    });
    let out = table::describe_service(&body, 90_000);
    for want in [
        "Name:      catalog",
        "Declared:  yes (protocol http)",
        "Subsets:   v1 {version=v1}",
        "Balancing: RingHash (hash on header x-user, ring size 1024)",
        "Limits:    /api: 100/second burst 20, *: 5/minute burst 5 global (catalog-limits)",
        "Instances: 1 (1 passing)",
        "catalog-1  127.0.0.1:41000  healthy  -     1       -       1s ago     1m",
        "Routes: 1",
        "rule 1: path prefix /api and GET -> catalog/v1 90%, catalog/v2 10%",
        "Proxies: 1",
        "catalog~1  catalog  3",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let bare = table::describe_service(
        &json!({"name": "orders", "declared": null, "policy": null,
        "routes": [], "instances": [], "proxies": []}),
        0,
    );
    assert!(bare.contains("Declared:  no"), "{bare}");
    assert!(bare.contains("Balancing: RoundRobin (default"), "{bare}");
    assert!(
        bare.contains("Retries:   none (one try per request)"),
        "{bare}"
    );
    assert!(bare.contains("Outliers:  no outlier detection"), "{bare}");
    assert!(
        bare.contains("Checks:    no active health checks"),
        "{bare}"
    );
    assert!(bare.contains("Locality:  every zone alike"), "{bare}");
}

#[test]
fn describe_shows_the_resilience_policy_with_defaults() {
    let text = "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: catalog }
spec:
  targetRef: { name: catalog }
  timeouts: { backendRequest: 500ms }
  retries: { retriableStatusCodes: [429] }
  outlierDetection: { consecutive5xx: 0 }
  circuitBreakers: { maxRequests: 10 }
  healthCheck: { http: { path: /healthz }, unhealthyThreshold: 4 }
  loadBalancer: { localityFailover: {} }
  faults:
    delay: { fixedDelay: 50ms, percentage: 0.5 }
    abort: { grpcStatus: UNAVAILABLE }
    headers: [ { name: x-chaos, value: inject } ]
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata: { name: catalog-calm }
spec:
  parentRefs: [ { name: catalog } ]
  rules:
    - backendRefs: [ { name: catalog } ]
      faults: {}
    - backendRefs: [ { name: catalog } ]
      faults: { abort: { httpStatus: 503, percentage: 5 } }
";
    let resources = trellis_model::parse_documents("m", text).expect("valid");
    let Resource::TrafficPolicy(p) = &resources[0] else {
        panic!("unexpected kinds: {resources:?}");
    };
    let Resource::HttpRoute(r) = &resources[1] else {
        panic!("unexpected kinds: {resources:?}");
    };
    let body = json!({"name": "catalog", "declared": null, "policy": p.spec,
        "routes": [r], "instances": [], "proxies": []});
    let out = table::describe_service(&body, 0);
    for want in [
        "Timeouts:  connect 1s, request none, per try 500ms, idle 90s",
        "Retries:   up to 2 on connect-failure, reset, gateway-error, unavailable and status 429; idempotent methods only; backoff 25ms..250ms (full jitter); budget 20% of requests + 3/s",
        "Outliers:  eject after 5 consecutive gateway errors for 30s × times ejected (at most 300s); at most 10% ejected (at least one); below 50% available",
        "Breakers:  10 requests, 1024 retries in flight",
        "Checks:    GET /healthz expecting any 2xx every 5s (timeout 1s); out after 4 failures, back after 2 passes",
        "Locality:  the caller's zone first; spill below 70% available there",
        "Faults:    delay 50ms for 0.5% of requests; abort gRPC UNAVAILABLE for 100% of requests; when x-chaos = inject",
        "catalog-calm rule 1: faults: none (the service's are off)",
        "catalog-calm rule 2: faults: abort 503 for 5% of requests",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn listings_accept_plurals_and_kinds() {
    let cases = [
        ("services", Some(Listing::Services)),
        ("svc", Some(Listing::Services)),
        ("instances", Some(Listing::Instances)),
        ("proxies", Some(Listing::Proxies)),
        (
            "httproutes",
            Some(Listing::Resources(Some(Kind::HttpRoute))),
        ),
        ("tp", Some(Listing::Resources(Some(Kind::TrafficPolicy)))),
        ("resources", Some(Listing::Resources(None))),
        ("pods", None),
    ];
    for (what, want) in cases {
        assert_eq!(parse_listing(what), want, "{what}");
    }
}

#[test]
fn urls_encode_segments_and_accept_bare_addresses() {
    let api = Api::new(&target("127.0.0.1:15080/")).expect("valid");
    let url = api
        .url(&["v1", "resources", "HTTPRoute", "a b/c"])
        .expect("url");
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:15080/v1/resources/HTTPRoute/a%20b%2Fc"
    );
    assert!(Api::new(&target("https://x")).is_ok(), "https is supported");
    assert!(matches!(
        Api::new(&target("ftp://x")),
        Err(CallError::Other(m)) if m.contains("http:// or https://")
    ));
    // Roots given for a plaintext URL are a mistake worth naming.
    let mut plain_with_ca = target("http://x");
    plain_with_ca.control_ca = Some("/dev/null".into());
    assert!(matches!(
        Api::new(&plain_with_ca),
        Err(CallError::Other(m)) if m.contains("is plaintext")
    ));
}

#[test]
fn api_errors_are_read_from_the_body() {
    let answer = Answer {
        status: StatusCode::BAD_REQUEST,
        body: json!({"error": "2 errors", "errors": ["m: document 1: a", "m: document 2: b"]})
            .to_string(),
    };
    assert_eq!(
        answer.error_lines(),
        vec!["m: document 1: a", "m: document 2: b"]
    );
    let single = Answer {
        status: StatusCode::NOT_FOUND,
        body: json!({"error": "HTTPRoute `x` does not exist"}).to_string(),
    };
    assert_eq!(single.error_lines(), vec!["HTTPRoute `x` does not exist"]);
    let plain = Answer {
        status: StatusCode::BAD_GATEWAY,
        body: "upstream down\nmore".to_string(),
    };
    assert_eq!(plain.error_lines(), vec!["502 Bad Gateway: upstream down"]);
}

#[tokio::test]
async fn an_unreachable_control_plane_is_named_with_a_hint() {
    // A port that was just free: nothing listens on it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let api = Api::new(&target(&format!("http://{addr}"))).expect("valid");
    match api.get(&["v1", "services"]).await {
        Err(CallError::Unreachable(msg)) => {
            assert!(
                msg.starts_with(&format!("cannot reach the control plane at http://{addr}/")),
                "{msg}"
            );
            assert!(msg.contains("TRELLIS_CONTROL"), "{msg}");
        }
        other => panic!("expected Unreachable, got {:?}", other.map(|a| a.status)),
    }
}

const SECURITY: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-delete}
spec:
  targetRef: {name: catalog}
  action: DENY
  rules: [{to: [{methods: [DELETE]}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  targetRef: {name: catalog}
  jwtRules:
    - {issuer: https://a.example, jwksUri: https://a.example/jwks}
    - {issuer: b, jwks: '{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}]}'}
";

#[test]
fn security_tables() {
    let resources = trellis_model::parse_documents("s", SECURITY).expect("valid");
    assert_eq!(
        table::resources(&resources, Some(Kind::AuthorizationPolicy)),
        "NAME       TARGET         ACTION  RULES\n\
         deny-all   * (mesh-wide)  ALLOW   0 (allows nothing)\n\
         no-delete  catalog        DENY    1\n"
    );
    assert_eq!(
        table::resources(&resources, Some(Kind::RequestAuthentication)),
        "NAME  TARGET   ISSUERS              KEYS\n\
         jwt   catalog  https://a.example,b  https://a.example/jwks,inline\n"
    );
    for what in [
        "authorizationpolicies",
        "authz",
        "requestauthentications",
        "authn",
    ] {
        assert!(
            matches!(parse_listing(what), Some(Listing::Resources(Some(_)))),
            "{what}"
        );
    }
}

#[test]
fn describe_shows_identity_mtls_mode_and_the_applying_policies() {
    let body = json!({
        "name": "catalog",
        "spiffe_id": "spiffe://cluster.local/ns/shop/svc/catalog",
        "mtls": "PERMISSIVE",
        "declared": {"mtls": {"mode": "PERMISSIVE"}},
        "policy": null, "routes": [], "instances": [], "proxies": [],
        "authorization": [
            {"apiVersion": "trellis.dev/v1alpha1", "metadata": {"name": "catalog-readers"},
             "spec": {"targetRef": {"name": "catalog"}, "rules": [{"to": [{"methods": ["GET"]}]}]}},
            {"apiVersion": "trellis.dev/v1alpha1", "metadata": {"name": "deny-all"}, "spec": {}},
        ],
        "authentication": [
            {"apiVersion": "trellis.dev/v1alpha1", "metadata": {"name": "catalog-jwt"},
             "spec": {"targetRef": {"name": "catalog"},
                      "jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks"}]}},
        ],
    });
    let out = table::describe_service(&body, 0);
    for want in [
        "Identity:  spiffe://cluster.local/ns/shop/svc/catalog",
        "mTLS:      PERMISSIVE (plaintext callers accepted",
        "Authorization policies: 2",
        "catalog-readers  catalog",
        "deny-all         * (mesh-wide)  ALLOW   0 (allows nothing)",
        "Request authentication: 1",
        "catalog-jwt  catalog  https://issuer.example  https://issuer.example/jwks",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // Nothing applies, and a body from before the mTLS fields: STRICT.
    let bare = table::describe_service(
        &json!({"name": "orders", "declared": null, "policy": null,
        "routes": [], "instances": [], "proxies": []}),
        0,
    );
    for want in [
        "mTLS:      STRICT (mutual TLS required)",
        "Authorization policies: 0",
        "Request authentication: 0",
    ] {
        assert!(bare.contains(want), "missing {want:?} in\n{bare}");
    }
}
