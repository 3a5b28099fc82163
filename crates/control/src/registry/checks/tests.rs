//! Health states: the sidecar's reports, TTL checks, and self-preservation applying to lost
//! heartbeats only. A real redb store in a tempdir, tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trellis_model::{
    CheckReport, CheckStatus, InstanceRegistration, Protocol, TtlCheckRegistration,
};

use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryConfig, RegistryError, RegistryTasks};
use crate::store::RedbStore;

fn reg(id: &str, ttl_ms: u64, check: Option<CheckStatus>) -> InstanceRegistration {
    InstanceRegistration {
        service: "catalog".to_string(),
        id: id.to_string(),
        address: "127.0.0.1".to_string(),
        port: 41000,
        protocol: Protocol::Http,
        labels: BTreeMap::new(),
        zone: None,
        weight: 1,
        ttl_ms,
        identity: None,
        check: check.map(report),
    }
}

fn report(status: CheckStatus) -> CheckReport {
    CheckReport {
        status,
        output: format!("HTTP GET /healthz: {status}"),
        kind: "http /healthz".to_string(),
    }
}

async fn start(dir: &std::path::Path) -> (Registry, RegistryTasks) {
    let store = RedbStore::open(dir).expect("open store");
    let config = RegistryConfig {
        push_debounce: Duration::from_millis(10),
        reap_interval: Duration::from_millis(20),
        remove_after: Duration::from_secs(600),
        ..RegistryConfig::default()
    };
    Registry::start(Arc::new(store), config, Arc::new(Metrics::new()))
        .await
        .expect("start")
}

fn status(r: &Registry, id: &str) -> Option<CheckStatus> {
    r.instances(None)
        .into_iter()
        .find(|i| i.registration.id == id)
        .map(|i| i.status)
}

async fn endpoints(r: &Registry) -> Vec<String> {
    // Let the publisher run (paused clock: sleeping advances it).
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.subscribe()
        .borrow()
        .services
        .get("catalog")
        .map(|s| s.endpoints.iter().map(|e| e.instance_id.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn sidecar_reports_decide_the_state_and_the_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _tasks) = start(dir.path()).await;
    r.register(reg("c1", 60_000, Some(CheckStatus::Critical)))
        .await
        .expect("register");
    r.register(reg("c2", 60_000, None)).await.expect("register");
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Critical));
    assert_eq!(status(&r, "c2"), Some(CheckStatus::Passing));
    assert_eq!(endpoints(&r).await, vec!["c2"]);

    for (s, want) in [
        (CheckStatus::Passing, vec!["c1", "c2"]),
        (CheckStatus::Warning, vec!["c2"]),
        (CheckStatus::Passing, vec!["c1", "c2"]),
    ] {
        let v = r
            .heartbeat("catalog", "c1", Some(report(s)))
            .await
            .expect("heartbeat");
        assert_eq!(v.status, s);
        assert_eq!(endpoints(&r).await, want, "after {s}");
    }
    // A bare heartbeat keeps the last report.
    r.heartbeat("catalog", "c1", Some(report(CheckStatus::Critical)))
        .await
        .expect("heartbeat");
    r.heartbeat("catalog", "c1", None).await.expect("heartbeat");
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Critical));
    let view = r
        .instances(None)
        .into_iter()
        .find(|i| i.registration.id == "c1")
        .expect("c1");
    assert_eq!(view.checks[0].name, "sidecar");
    assert!(view.status_output.contains("HTTP GET /healthz"), "{view:?}");
}

#[tokio::test(start_paused = true)]
async fn a_status_change_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (r, tasks) = start(dir.path()).await;
        r.register(reg("c1", 60_000, Some(CheckStatus::Passing)))
            .await
            .expect("register");
        r.heartbeat("catalog", "c1", Some(report(CheckStatus::Critical)))
            .await
            .expect("heartbeat");
        tasks.shutdown().await;
    }
    let (r, _tasks) = start(dir.path()).await;
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Critical));
}

#[tokio::test(start_paused = true)]
async fn ttl_checks_pass_lapse_and_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _tasks) = start(dir.path()).await;
    r.register(reg("c1", 600_000, None))
        .await
        .expect("register");
    let ttl = TtlCheckRegistration {
        ttl_ms: 1000,
        note: None,
    };
    let v = r
        .register_check("catalog", "c1", "db", ttl.clone())
        .expect("register check");
    assert_eq!(
        v.status,
        CheckStatus::Critical,
        "critical until the first pass"
    );
    assert!(endpoints(&r).await.is_empty());

    r.update_check(
        "catalog",
        "c1",
        "db",
        CheckStatus::Passing,
        Some("ok".into()),
    )
    .expect("pass");
    assert_eq!(endpoints(&r).await, vec!["c1"]);

    // Renewed within the TTL: stays passing.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        r.update_check("catalog", "c1", "db", CheckStatus::Passing, None)
            .expect("pass");
        assert_eq!(status(&r, "c1"), Some(CheckStatus::Passing));
    }
    // Not renewed: critical, out of the endpoints.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Critical));
    let view = r.instances(None).remove(0);
    assert!(view.status_output.contains("db: TTL expired"), "{view:?}");
    assert!(endpoints(&r).await.is_empty());
    r.update_check("catalog", "c1", "db", CheckStatus::Warning, None)
        .expect("warn");
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Warning));

    // The checks survive the sidecar registering again; they go with the instance.
    r.register(reg("c1", 600_000, None))
        .await
        .expect("register");
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Warning));
    r.deregister_check("catalog", "c1", "db")
        .expect("deregister");
    assert_eq!(status(&r, "c1"), Some(CheckStatus::Passing));
}

#[tokio::test(start_paused = true)]
async fn bad_checks_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _tasks) = start(dir.path()).await;
    r.register(reg("c1", 60_000, None)).await.expect("register");
    let ttl = |ttl_ms, note: Option<&str>| TtlCheckRegistration {
        ttl_ms,
        note: note.map(str::to_string),
    };
    let invalid = |e: RegistryError| match e {
        RegistryError::Invalid(m) => m,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let cases = [
        ("Bad Name", ttl(1000, None), "name: "),
        ("", ttl(1000, None), "name: "),
        ("db", ttl(5, None), "ttl_ms: 5 is out of range"),
        (
            "db",
            ttl(1000, Some(&"x".repeat(5000))),
            "note: is 5000 bytes long",
        ),
        (
            "db",
            ttl(1000, Some("a\nb")),
            "note: holds control characters",
        ),
    ];
    for (name, t, want) in cases {
        let e = invalid(r.register_check("catalog", "c1", name, t).expect_err(name));
        assert!(e.contains(want), "{name}: {e}");
    }
    r.register_check("catalog", "c1", "db", ttl(1000, None))
        .expect("register");
    let e = invalid(
        r.update_check(
            "catalog",
            "c1",
            "db",
            CheckStatus::Passing,
            Some("\u{7}".into()),
        )
        .expect_err("bell"),
    );
    assert!(e.starts_with("note: "), "{e}");
    assert!(matches!(
        r.update_check("catalog", "c1", "nope", CheckStatus::Passing, None),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        r.register_check("catalog", "zz", "db", ttl(1000, None)),
        Err(RegistryError::NotFound(_))
    ));
    let hostile = CheckReport {
        output: "y".repeat(100_000),
        ..report(CheckStatus::Passing)
    };
    let e = invalid(
        r.heartbeat("catalog", "c1", Some(hostile))
            .await
            .expect_err("hostile output"),
    );
    assert!(e.starts_with("check.output: "), "{e}");
}

#[tokio::test(start_paused = true)]
async fn self_preservation_holds_lost_heartbeats_but_not_failing_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _tasks) = start(dir.path()).await;
    for id in ["c1", "c2", "c3", "c4"] {
        r.register(reg(id, 500, Some(CheckStatus::Passing)))
            .await
            .expect("register");
    }
    // Every check fails at once: not a partition, so no instance is held.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for id in ["c1", "c2", "c3", "c4"] {
            r.heartbeat("catalog", id, Some(report(CheckStatus::Critical)))
                .await
                .expect("heartbeat");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(endpoints(&r).await.is_empty());
    assert!(r.instances(None).iter().all(|i| !i.held));
    for id in ["c1", "c2", "c3", "c4"] {
        r.heartbeat("catalog", id, Some(report(CheckStatus::Passing)))
            .await
            .expect("heartbeat");
    }
    assert_eq!(endpoints(&r).await.len(), 4);
    // Every heartbeat stops at once: self-preservation keeps half of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let views = r.instances(None);
    assert_eq!(views.iter().filter(|i| i.held).count(), 2, "{views:#?}");
    assert_eq!(endpoints(&r).await.len(), 2);
}
