//! Registry behaviour on a real redb store in a tempdir, with tokio's paused clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trellis_model::{Health, InstanceRegistration, Kind, Protocol, Resource};

use super::*;
use crate::store::RedbStore;

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
kind: TrafficPolicy
metadata:
  name: catalog
spec:
  targetRef: { name: catalog }
  loadBalancer: { algorithm: LeastRequest }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-b
spec:
  parentRefs: [{ name: catalog }]
  rules:
    - backendRefs: [{ name: catalog, subset: v1 }]
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-a
spec:
  parentRefs: [{ name: catalog }]
  rules:
    - backendRefs: [{ name: catalog }]
";

fn reg(service: &str, id: &str, ttl_ms: u64) -> InstanceRegistration {
    InstanceRegistration {
        service: service.to_string(),
        id: id.to_string(),
        address: "127.0.0.1".to_string(),
        port: 41000,
        protocol: Protocol::Http,
        labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
        zone: None,
        weight: 1,
        ttl_ms,
        identity: None,
        check: None,
    }
}

fn config() -> RegistryConfig {
    RegistryConfig {
        restart_grace: Duration::from_secs(5),
        remove_after: Duration::from_secs(2),
        push_debounce: Duration::from_millis(100),
        reap_interval: Duration::from_millis(20),
        ..RegistryConfig::default()
    }
}

struct Running {
    registry: Registry,
    tasks: RegistryTasks,
    store: RedbStore,
}

async fn start(dir: &Path, config: RegistryConfig) -> Running {
    let store = RedbStore::open(dir).expect("open store");
    let (registry, tasks) =
        Registry::start(Arc::new(store.clone()), config, Arc::new(Metrics::new()))
            .await
            .expect("start registry");
    Running {
        registry,
        tasks,
        store,
    }
}

impl Running {
    /// Stops the tasks and drops every handle on the store so the file can be reopened.
    async fn stop(self) {
        self.tasks.shutdown().await;
        drop(self.registry);
        drop(self.store);
    }
}

/// Polls `cond` on the (paused, auto-advancing) clock until it holds or 60 virtual seconds pass.
async fn eventually<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn health_of(r: &Registry, id: &str) -> Option<Health> {
    r.instances(None)
        .into_iter()
        .find(|i| i.registration.id == id)
        .map(|i| i.health)
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_makes_unhealthy_then_removes_from_registry_and_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    let mut rx = run.registry.subscribe();
    run.registry
        .register(reg("catalog", "c1", 300))
        .await
        .expect("register");
    rx.changed().await.expect("publish");
    assert_eq!(
        rx.borrow_and_update().services["catalog"].endpoints.len(),
        1
    );
    assert_eq!(health_of(&run.registry, "c1"), Some(Health::Healthy));

    // Past the TTL: unhealthy, out of the endpoint set, still listed.
    rx.changed().await.expect("publish after ttl");
    {
        let snap = rx.borrow_and_update();
        assert!(snap.services["catalog"].endpoints.is_empty());
    }
    assert_eq!(health_of(&run.registry, "c1"), Some(Health::Unhealthy));
    assert_eq!(run.store.list_instances().await.expect("list").len(), 1);

    // Past remove_after: gone from memory, store and snapshot.
    eventually("instance removed", || async {
        run.registry.instances(None).is_empty()
    })
    .await;
    assert!(run.store.list_instances().await.expect("list").is_empty());
    eventually("snapshot without the service", || async {
        !rx.borrow().services.contains_key("catalog")
    })
    .await;
    assert!(run.registry.heartbeat("catalog", "c1", None).await.is_err());
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_instance_healthy_without_publishing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    let mut rx = run.registry.subscribe();
    run.registry
        .register(reg("catalog", "c1", 300))
        .await
        .expect("register");
    rx.changed().await.expect("publish");
    let version = rx.borrow_and_update().version;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        run.registry
            .heartbeat("catalog", "c1", None)
            .await
            .expect("heartbeat of a registered instance");
    }
    // Two seconds of virtual time with heartbeats: no push, still healthy.
    assert!(!rx.has_changed().expect("sender alive"));
    assert_eq!(rx.borrow().version, version);
    assert_eq!(health_of(&run.registry, "c1"), Some(Health::Healthy));
    assert!(matches!(
        run.registry.heartbeat("catalog", "nope", None).await,
        Err(RegistryError::NotFound(_))
    ));
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeat_after_expiry_revives_and_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    let mut rx = run.registry.subscribe();
    run.registry
        .register(reg("catalog", "c1", 200))
        .await
        .expect("register");
    eventually("unhealthy", || async {
        rx.borrow()
            .services
            .get("catalog")
            .is_some_and(|s| s.endpoints.is_empty())
    })
    .await;
    rx.borrow_and_update();
    run.registry
        .heartbeat("catalog", "c1", None)
        .await
        .expect("heartbeat");
    rx.changed().await.expect("publish");
    assert_eq!(rx.borrow().services["catalog"].endpoints.len(), 1);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_loads_instances_with_grace_and_never_lowers_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    run.registry
        .register(reg("catalog", "c1", 1000))
        .await
        .expect("register");
    run.registry.apply("mesh.yaml", MESH).await.expect("apply");
    let mut rx = run.registry.subscribe();
    rx.changed().await.expect("publish");
    let before = rx.borrow().version;
    run.stop().await;

    // Long after the last heartbeat, a restart must not evict the instance.
    tokio::time::advance(Duration::from_secs(30)).await;
    let run = start(dir.path(), config()).await;
    let rx = run.registry.subscribe();
    assert!(rx.borrow().version > before, "version went backwards");
    assert_eq!(rx.borrow().services["catalog"].endpoints.len(), 1);
    assert_eq!(run.registry.resources(None).len(), 4);
    // Healthy through grace + ttl (6 s), then unhealthy.
    tokio::time::sleep(Duration::from_millis(5900)).await;
    assert_eq!(health_of(&run.registry, "c1"), Some(Health::Healthy));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health_of(&run.registry, "c1"), Some(Health::Unhealthy));
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn apply_is_all_or_nothing_and_reports_actions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    let applied = run.registry.apply("mesh.yaml", MESH).await.expect("apply");
    assert_eq!(applied.len(), 4);
    assert!(applied.iter().all(|a| a.action == Action::Created));

    let again = run.registry.apply("mesh.yaml", MESH).await.expect("apply");
    assert!(again.iter().all(|a| a.action == Action::Unchanged));

    let stored_before = run.store.list_resources().await.expect("list");
    // A valid change to the policy plus a route to a service that does not exist.
    let bad = "\
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: catalog
spec:
  targetRef: { name: catalog }
  loadBalancer: { algorithm: Random }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: broken
spec:
  parentRefs: [{ name: catalog }]
  rules:
    - backendRefs: [{ name: ghost }]
";
    let err = run.registry.apply("bad.yaml", bad).await;
    let Err(RegistryError::Rejected(e)) = err else {
        panic!("expected a rejection, got {err:?}");
    };
    assert!(e.errors.iter().any(|d| d.document == 2), "{e}");
    assert_eq!(
        run.store.list_resources().await.expect("list"),
        stored_before
    );
    let mut in_memory = run.registry.resources(None);
    in_memory.sort_by_key(|r| crate::store::resource_key(r.kind(), r.name()));
    assert_eq!(in_memory, stored_before);

    let changed = &bad[..bad.find("---").expect("separator")];
    let applied = run.registry.apply("p.yaml", changed).await.expect("apply");
    assert_eq!(applied[0].action, Action::Configured);
    assert_eq!(run.registry.resources(Some(Kind::TrafficPolicy)).len(), 1);

    run.registry
        .delete_resource(Kind::HttpRoute, "catalog-a")
        .await
        .expect("delete");
    assert!(matches!(
        run.registry
            .delete_resource(Kind::HttpRoute, "catalog-a")
            .await,
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(run.store.list_resources().await.expect("list").len(), 3);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn debounce_coalesces_a_burst_into_one_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    let mut rx = run.registry.subscribe();
    let v0 = rx.borrow_and_update().version;
    for i in 0..5 {
        run.registry
            .register(reg("catalog", &format!("c{i}"), 60_000))
            .await
            .expect("register");
    }
    run.registry.apply("mesh.yaml", MESH).await.expect("apply");
    rx.changed().await.expect("publish");
    {
        let snap = rx.borrow_and_update();
        assert_eq!(snap.version, v0 + 1);
        assert_eq!(snap.services["catalog"].endpoints.len(), 5);
        assert_eq!(snap.services["catalog"].routes.len(), 2);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!rx.has_changed().expect("sender alive"), "spurious publish");
    // Re-registering unchanged instances changes nothing proxies see.
    run.registry
        .register(reg("catalog", "c0", 60_000))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!rx.has_changed().expect("sender alive"));
    run.registry
        .deregister("catalog", "c0")
        .await
        .expect("deregister");
    rx.changed().await.expect("publish");
    assert_eq!(rx.borrow().version, v0 + 2);
    assert_eq!(rx.borrow().services["catalog"].endpoints.len(), 4);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn describe_and_services_summarise_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    run.registry.apply("mesh.yaml", MESH).await.expect("apply");
    run.registry
        .register(reg("orders", "o1", 60_000))
        .await
        .expect("register");
    let services = run.registry.services();
    let names: Vec<(&str, bool, usize)> = services
        .iter()
        .map(|s| (s.name.as_str(), s.declared, s.instances))
        .collect();
    assert_eq!(names, [("catalog", true, 0), ("orders", false, 1)]);
    let d = run.registry.describe("catalog").expect("catalog");
    assert!(d.policy.is_some());
    let routes: Vec<&str> = d.routes.iter().map(|r| r.metadata.name.as_str()).collect();
    assert_eq!(routes, ["catalog-a", "catalog-b"]);
    assert!(run.registry.describe("ghost").is_none());
    run.stop().await;
}

// ---- build_snapshot, table style ------------------------------------------------------------

fn inst(service: &str, id: &str, heartbeat_ago_ms: u64, now: Instant) -> InstanceState {
    InstanceState {
        registration: reg(service, id, 1000),
        registered_at_ms: 0,
        last_heartbeat: now - Duration::from_millis(heartbeat_ago_ms),
        // The reaper's verdict for a 1 s TTL.
        healthy: heartbeat_ago_ms < 1000,
        held: false,
        ttl_checks: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn build_snapshot_cases() {
    let now = Instant::now() + Duration::from_secs(3600);
    let mesh: Vec<Resource> = trellis_model::parse_documents("mesh.yaml", MESH).expect("parse");
    struct Case {
        name: &'static str,
        instances: Vec<InstanceState>,
        resources: Vec<Resource>,
        /// service → endpoint ids
        want: Vec<(&'static str, Vec<&'static str>)>,
    }
    let cases = [
        Case {
            name: "empty",
            instances: vec![],
            resources: vec![],
            want: vec![],
        },
        Case {
            name: "declared service without instances",
            instances: vec![],
            resources: mesh.clone(),
            want: vec![("catalog", vec![])],
        },
        Case {
            name: "unhealthy instances keep the service but leave the endpoints",
            instances: vec![
                inst("orders", "o2", 1000, now),
                inst("orders", "o1", 999, now),
            ],
            resources: vec![],
            want: vec![("orders", vec!["o1"])],
        },
        Case {
            name: "endpoints sorted by id across services",
            instances: vec![
                inst("orders", "o2", 0, now),
                inst("catalog", "c9", 0, now),
                inst("orders", "o1", 0, now),
                inst("catalog", "c1", 0, now),
            ],
            resources: mesh.clone(),
            want: vec![("catalog", vec!["c1", "c9"]), ("orders", vec!["o1", "o2"])],
        },
    ];
    for case in cases {
        let snap = build_snapshot(7, case.instances.iter(), case.resources.iter());
        assert_eq!(snap.version, 7, "{}", case.name);
        let got: Vec<(&str, Vec<&str>)> = snap
            .services
            .values()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.endpoints.iter().map(|e| e.instance_id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(got, case.want, "{}", case.name);
    }

    let snap = build_snapshot(1, [].iter(), mesh.iter());
    let catalog = &snap.services["catalog"];
    assert_eq!(catalog.declared.as_ref().map(|d| d.subsets.len()), Some(1));
    assert_eq!(
        catalog.policy.as_ref().map(|p| p.load_balancer.algorithm),
        Some(trellis_model::Algorithm::LeastRequest)
    );
    let routes: Vec<&str> = catalog
        .routes
        .iter()
        .map(|r| r.metadata.name.as_str())
        .collect();
    assert_eq!(routes, ["catalog-a", "catalog-b"]);
}

#[tokio::test(start_paused = true)]
async fn a_registered_tcp_service_only_accepts_from_in_its_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    let mut db = reg("db", "db-1", 10_000);
    db.protocol = Protocol::Tcp;
    run.registry.register(db).await.expect("register");
    let policy = |rule: &str| {
        format!(
            "apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{ name: db-callers }}
spec:
  targetRef: {{ name: db }}
  rules: [{rule}]
"
        )
    };
    let err = run
        .registry
        .apply("db.yaml", &policy("{ to: [{ methods: [GET] }] }"))
        .await;
    let Err(RegistryError::Rejected(e)) = err else {
        panic!("expected a rejection, got {err:?}");
    };
    assert!(
        e.errors
            .iter()
            .any(|d| d.field == "spec.rules[0].to" && d.reason.contains("TCP service")),
        "{e}"
    );
    run.registry
        .apply("db.yaml", &policy("{ from: [{ namespaces: [default] }] }"))
        .await
        .expect("from-only is fine on a TCP service");
    run.stop().await;
}

/// The reaper sleeps until the first of an instance's own deadlines: its heartbeat lapsing,
/// then its removal; a TTL check adds its own until it lapses.
#[tokio::test(start_paused = true)]
async fn an_instance_names_the_reapers_next_deadline() {
    let now = Instant::now();
    let remove_after = Duration::from_secs(60);
    let mut inst = InstanceState {
        registration: reg("api", "a", 10_000),
        registered_at_ms: 0,
        last_heartbeat: now,
        healthy: true,
        held: false,
        ttl_checks: checks::TtlChecks::new(),
    };
    let at = |secs| now + Duration::from_secs(secs);
    assert_eq!(inst.next_deadline(remove_after, now), Some(at(10)));
    assert_eq!(inst.next_deadline(remove_after, at(10)), Some(at(60)));
    assert_eq!(inst.next_deadline(remove_after, at(60)), None);
    inst.ttl_checks.insert(
        "db".to_string(),
        checks::TtlCheck {
            ttl: Duration::from_secs(3),
            status: trellis_model::CheckStatus::Passing,
            note: String::new(),
            updated: now,
            lapsed: false,
        },
    );
    assert_eq!(inst.next_deadline(remove_after, now), Some(at(3)));
    inst.ttl_checks.get_mut("db").expect("check").lapsed = true;
    assert_eq!(inst.next_deadline(remove_after, now), Some(at(10)));
    // A TTL longer than `remove_after` is the removal deadline too.
    inst.registration.ttl_ms = 120_000;
    assert_eq!(inst.next_deadline(remove_after, at(60)), Some(at(120)));
}

/// Self-preservation lasts as long as the silence: while it holds instances as endpoints, the
/// reaper removes no instance for missed heartbeats, not even those it let go unhealthy, since
/// each removal would shrink the total its limit is a fraction of and evict the held ones in
/// turn. Once the heartbeats return, the instances still silent past `remove_after` go.
#[tokio::test(start_paused = true)]
async fn self_preservation_removes_nothing_while_it_holds_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = start(dir.path(), config()).await;
    for id in ["a", "b", "c", "d", "e"] {
        run.registry
            .register(reg("api", id, 1000))
            .await
            .expect("register");
    }
    let states = |r: &Registry| {
        r.instances(None)
            .into_iter()
            .map(|i| (i.registration.id, i.health, i.held))
            .collect::<Vec<_>>()
    };
    // `e` keeps its heartbeat; the other four fall silent for five times `remove_after` (2 s).
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        run.registry
            .heartbeat("api", "e", None)
            .await
            .expect("heartbeat");
    }
    let (healthy, unhealthy) = (Health::Healthy, Health::Unhealthy);
    let held_view = vec![
        ("a".to_string(), unhealthy, false),
        ("b".to_string(), unhealthy, false),
        ("c".to_string(), healthy, true),
        ("d".to_string(), healthy, true),
        ("e".to_string(), healthy, false),
    ];
    assert_eq!(states(&run.registry), held_view);
    assert_eq!(run.store.list_instances().await.expect("list").len(), 5);

    // The partition heals for `c` and `d`: nothing is held any more, and the two still silent
    // are removed.
    for id in ["c", "d"] {
        run.registry
            .heartbeat("api", id, None)
            .await
            .expect("heartbeat");
    }
    eventually("a and b removed", || async {
        run.registry.instances(None).len() == 3
    })
    .await;
    assert!(
        states(&run.registry).iter().all(|(id, h, held)| {
            ["c", "d", "e"].contains(&id.as_str()) && *h == healthy && !held
        })
    );
    assert_eq!(run.store.list_instances().await.expect("list").len(), 3);
    run.stop().await;
}
