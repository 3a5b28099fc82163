//! The admin API over real HTTP: the router on 127.0.0.1:0 backed by a redb store in a tempdir,
//! and `trellis_control::run` end to end.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use trellis_control::{BoundAddrs, ControlConfig, StartupError};

const MESH: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
spec:
  subsets:
    - name: v1
      labels: { version: v1 }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-canary
spec:
  parentRefs: [{ name: catalog }]
  rules:
    - backendRefs: [{ name: catalog, subset: v1, weight: 90 }]
";

mod common;

use common::{Api, serve};

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let (s, b, _) = self.call(req).await;
        (s, b)
    }

    async fn post_raw(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).body(body.to_string()))
            .await
    }
}

fn registration(id: &str) -> Value {
    json!({"service": "catalog", "id": id, "address": "127.0.0.1", "port": 41000,
           "labels": {"version": "v1"}, "zone": "z1"})
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn instances_register_heartbeat_list_and_deregister() {
    let api = serve().await;
    let (status, body) = api
        .send(
            api.http
                .post(api.url("/v1/instances"))
                .json(&registration("c1")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["health"], "healthy");
    assert_eq!(body["weight"], 1);
    assert_eq!(body["ttl_ms"], 10_000);
    assert!(body["registered_at_ms"].as_u64().is_some_and(|t| t > 0));

    let (status, body) = api
        .send(api.http.put(api.url("/v1/instances/catalog/c1/heartbeat")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = api
        .send(
            api.http
                .put(api.url("/v1/instances/catalog/nope/heartbeat")),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("nope"), "{body}");

    let (_, list) = api.get("/v1/instances?service=catalog").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (_, list) = api.get("/v1/instances?service=other").await;
    assert_eq!(list, json!([]));
    let (status, body) = api.get("/v1/instances?bogus=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("bogus"), "{body}");

    let (_, services) = api.get("/v1/services").await;
    assert_eq!(
        services,
        json!([{"name": "catalog", "declared": false, "instances": 1, "healthy": 1}])
    );
    let (status, d) = api.get("/v1/services/catalog").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["instances"].as_array().map(Vec::len), Some(1));
    assert_eq!(d["proxies"], json!([]));
    let (status, body) = api.get("/v1/services/ghost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("ghost"));

    let del = || api.http.delete(api.url("/v1/instances/catalog/c1"));
    assert_eq!(api.send(del()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.send(del()).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_registrations_are_400_with_a_reason() {
    let api = serve().await;
    let cases: [(&str, String, &str); 5] = [
        ("truncated JSON", "{\"service\": \"catalog\"".to_string(), "EOF"),
        ("not JSON", "hello".to_string(), "expected"),
        (
            "unknown field",
            json!({"service": "catalog", "id": "c1", "address": "127.0.0.1", "port": 1, "colour": "red"})
                .to_string(),
            "colour",
        ),
        (
            "missing field",
            json!({"service": "catalog", "id": "c1", "port": 1}).to_string(),
            "address",
        ),
        (
            "weight out of range",
            json!({"service": "catalog", "id": "c1", "address": "127.0.0.1", "port": 1, "weight": 0})
                .to_string(),
            "weight",
        ),
    ];
    for (name, body, needle) in cases {
        let (status, resp) = api.post_raw("/v1/instances", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {resp}");
        assert!(
            error_of(&resp).contains(needle),
            "{name}: error should mention `{needle}`: {resp}"
        );
    }
    let (_, list) = api.get("/v1/instances").await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn resources_apply_get_and_delete() {
    let api = serve().await;
    let (status, body) = api.post_raw("/v1/resources?source=mesh.yaml", MESH).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["applied"],
        json!([{"kind": "Service", "name": "catalog", "action": "created"},
               {"kind": "HTTPRoute", "name": "catalog-canary", "action": "created"}])
    );
    let (_, body) = api.post_raw("/v1/resources", MESH).await;
    assert_eq!(body["applied"][0]["action"], "unchanged");

    let bad = MESH.replace("weight: 90", "weight: 2000000");
    let (status, body) = api.post_raw("/v1/resources?source=bad.yaml", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.iter().any(|e| {
            let e = e.as_str().unwrap_or_default();
            e.starts_with("bad.yaml: document 2") && e.contains("weight")
        }),
        "{body}"
    );

    for kind in ["HTTPRoute", "httproutes", "routes"] {
        let (status, list) = api.get(&format!("/v1/resources/{kind}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list[0]["kind"], "HTTPRoute", "{kind}");
        assert_eq!(
            list[0]["spec"]["rules"][0]["backendRefs"][0]["weight"], 90,
            "a rejected apply must change nothing"
        );
    }
    let (_, all) = api.get("/v1/resources").await;
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    let (status, body) = api.get("/v1/resources/widgets").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("widgets"));

    let (status, svc) = api.get("/v1/resources/service/catalog").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(svc["metadata"]["name"], "catalog");
    let (_, d) = api.get("/v1/services/catalog").await;
    assert_eq!(d["routes"].as_array().map(Vec::len), Some(1));
    assert_eq!(d["declared"]["subsets"][0]["name"], "v1");

    let (status, body) = api
        .send(
            api.http
                .delete(api.url("/v1/resources/httproute/catalog-canary")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"deleted": {"kind": "HTTPRoute", "name": "catalog-canary"}})
    );
    let (status, _) = api.get("/v1/resources/HTTPRoute/catalog-canary").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn misc_endpoints_and_json_errors_for_unknown_routes() {
    let api = serve().await;
    let resp = api
        .http
        .get(api.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.expect("body"), "ok");
    let (_, body) = api.get("/v1/bootstrap").await;
    assert_eq!(body, json!({"xds_addr": "127.0.0.1:15010"}));
    let (_, body) = api.get("/v1/proxies").await;
    assert_eq!(body, json!([]));

    let (status, body) = api.get("/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("/v1/nothing"), "{body}");
    let (status, body) = api.get("/v1/services/%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).starts_with("path:"), "{body}");
    let (status, body) = api.send(api.http.patch(api.url("/v1/instances"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(error_of(&body).contains("PATCH"), "{body}");

    api.send(
        api.http
            .post(api.url("/v1/instances"))
            .json(&registration("c1")),
    )
    .await;
    let (status, metrics) = api.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for needle in [
        "trellis_control_instances{service=\"catalog\",health=\"healthy\"} 1",
        "trellis_control_snapshot_version ",
        "trellis_control_registrations_total 1",
        "trellis_control_heartbeats_total 0",
        "trellis_control_api_requests_total{route=\"/v1/instances\",status=\"201\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "missing `{needle}` in:\n{metrics}"
        );
    }
}

fn config(dir: &std::path::Path) -> ControlConfig {
    ControlConfig {
        data_dir: dir.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        restart_grace: Duration::from_secs(10),
        remove_after: Duration::from_secs(60),
        push_debounce: Duration::from_millis(100),
        max_eviction_fraction: 0.5,
        ca: trellis_control::ca::CaConfig::default(),
        tls: trellis_control::tls::ServingTls::Off,
    }
}

#[tokio::test]
async fn run_serves_until_shutdown_and_refuses_a_locked_or_unusable_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<BoundAddrs>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config(dir.path());
    let control = tokio::spawn(trellis_control::run(
        cfg,
        move |b| {
            let _ = ready_tx.send(b);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let bound = ready_rx.await.expect("ready");
    assert_ne!(bound.http.port(), 0);
    assert_ne!(bound.grpc.port(), 0);
    let http = reqwest::Client::new();
    let body: Value = http
        .get(format!("http://{}/v1/bootstrap", bound.http))
        .send()
        .await
        .expect("bootstrap")
        .json()
        .await
        .expect("json");
    assert_eq!(body["xds_addr"], bound.grpc.to_string());
    let grpc = tokio::net::TcpStream::connect(bound.grpc).await;
    assert!(grpc.is_ok(), "gRPC listener must accept connections");
    drop(grpc);

    // A second control plane on the same data dir: the store is locked.
    let second = trellis_control::run(config(dir.path()), |_: BoundAddrs| {}, async {}).await;
    let err = second.expect_err("locked store must be refused");
    assert!(err.downcast_ref::<StartupError>().is_some(), "{err:#}");
    assert!(format!("{err:#}").contains("already opened"), "{err:#}");

    let _ = stop_tx.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), control)
        .await
        .expect("shutdown in time")
        .expect("join");
    result.expect("clean shutdown");
    assert!(
        http.get(format!("http://{}/healthz", bound.http))
            .send()
            .await
            .is_err(),
        "the HTTP listener must be closed after shutdown"
    );

    // A data dir under a regular file cannot be created.
    let file = tempfile::NamedTempFile::new().expect("file");
    let bad: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut cfg = config(&file.path().join("data"));
    cfg.http_addr = bad;
    let err = trellis_control::run(cfg, |_: BoundAddrs| {}, async {})
        .await
        .expect_err("unusable data dir");
    assert!(
        matches!(
            err.downcast_ref::<StartupError>(),
            Some(StartupError::DataDir { .. })
        ),
        "{err:#}"
    );
}

#[tokio::test]
async fn registration_identity_must_be_the_services_spiffe_id() {
    let api = serve().await;
    let with_identity = |service: &str, id: &str, identity: &str| {
        json!({"service": service, "id": id, "address": "127.0.0.1", "port": 41000,
               "identity": identity})
    };
    let register = |body: Value| api.send(api.http.post(api.url("/v1/instances")).json(&body));
    let cases = [
        (
            "another service",
            with_identity(
                "catalog",
                "c1",
                "spiffe://cluster.local/ns/default/svc/orders",
            ),
            "an instance of `catalog` (namespace `default`) may only claim its service's identity",
        ),
        (
            "another trust domain",
            with_identity(
                "catalog",
                "c1",
                "spiffe://evil.example/ns/default/svc/catalog",
            ),
            "its trust domain `evil.example` is not this mesh's (`cluster.local`)",
        ),
        (
            "not a SPIFFE ID",
            with_identity("catalog", "c1", "catalog"),
            "it is not a SPIFFE ID",
        ),
        (
            "another namespace",
            with_identity(
                "catalog",
                "c1",
                "spiffe://cluster.local/ns/shop/svc/catalog",
            ),
            "expected `spiffe://cluster.local/ns/default/svc/catalog`",
        ),
    ];
    for (case, body, needle) in cases {
        let (status, resp) = register(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {resp}");
        assert!(
            error_of(&resp).starts_with("identity: ") && error_of(&resp).contains(needle),
            "{case}: error should mention `{needle}`: {resp}"
        );
    }
    let (_, list) = api.get("/v1/instances").await;
    assert_eq!(list, json!([]), "refused registrations are not stored");

    let ok = with_identity(
        "catalog",
        "c1",
        "spiffe://cluster.local/ns/default/svc/catalog",
    );
    let (status, resp) = register(ok).await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    assert_eq!(
        resp["identity"],
        "spiffe://cluster.local/ns/default/svc/catalog"
    );

    // The namespace comes from the Service resource; describe shows identity and mode.
    let service = "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: { name: orders, \
                   namespace: shop }\nspec: { mtls: { mode: PERMISSIVE } }\n";
    let (status, resp) = api.post_raw("/v1/resources", service).await;
    assert!(status.is_success(), "{resp}");
    let wrong = with_identity(
        "orders",
        "o1",
        "spiffe://cluster.local/ns/default/svc/orders",
    );
    assert_eq!(register(wrong).await.0, StatusCode::BAD_REQUEST);
    let right = with_identity("orders", "o1", "spiffe://cluster.local/ns/shop/svc/orders");
    assert_eq!(register(right).await.0, StatusCode::CREATED);
    let (_, d) = api.get("/v1/services/orders").await;
    assert_eq!(d["spiffe_id"], "spiffe://cluster.local/ns/shop/svc/orders");
    assert_eq!(d["mtls"], "PERMISSIVE");
    assert_eq!(d["authorization"], json!([]));
    let (_, d) = api.get("/v1/services/catalog").await;
    assert_eq!(d["mtls"], "STRICT");
}
