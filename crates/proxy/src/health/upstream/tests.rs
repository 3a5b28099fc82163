//! Active health state: the unhealthy count follows verdicts and removals, a rebuilt cluster
//! keeps what its last build knew, and picks avoid unhealthy endpoints and follow the
//! priority loads.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::balance::{self, Algorithm};
use crate::health::{HealthCheckConfig, Thresholds};
use crate::upstream::{ClientCache, LbSettings, Priorities};
use crate::xds::translate::Endpoint;

fn check() -> ActiveCheck {
    ActiveCheck {
        config: HealthCheckConfig {
            probe: Probe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            thresholds: Thresholds::default(),
        },
        initial_jitter: Duration::ZERO,
        h2: false,
    }
}

fn endpoints(zones: &[u32]) -> Vec<Endpoint> {
    zones
        .iter()
        .enumerate()
        .map(|(i, priority)| Endpoint {
            addr: format!("127.0.0.1:{}", 20_000 + i).parse().expect("addr"),
            weight: 1,
            id: format!("e{i}"),
            zone: None,
            priority: *priority,
            mtls: false,
        })
        .collect()
}

fn cluster(
    eps: Vec<Endpoint>,
    overprovisioning: u32,
    previous: Option<&UpstreamCluster>,
) -> UpstreamCluster {
    let algorithm = Algorithm::RoundRobin;
    let balancer = balance::build(&algorithm, &crate::upstream::endpoint_metas(&eps));
    let priorities = Priorities::build(&eps, &algorithm, balance::build);
    let clients = ClientCache::default().get(Duration::from_secs(1));
    UpstreamCluster::new(
        "catalog",
        algorithm,
        Duration::from_secs(1),
        eps,
        balancer,
        clients,
    )
    .with_lb(
        LbSettings {
            health_check: Some(check()),
            panic_threshold: 50,
            overprovisioning,
        },
        priorities,
        previous,
    )
}

fn health(c: &UpstreamCluster) -> &ClusterHealth {
    c.health.as_ref().expect("health-checked")
}

/// Picks per endpoint id over `n` picks.
fn spread(c: &UpstreamCluster, n: usize) -> BTreeMap<String, usize> {
    let now = Instant::now();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let p = c.pick(None, now, 0).expect("a pick");
        *out.entry(c.endpoints[p.index].endpoint.id.clone())
            .or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn the_unhealthy_count_follows_verdicts_and_removals() {
    let c = cluster(endpoints(&[0, 0, 0]), 140, None);
    let h = health(&c);
    assert!(!h.any_unhealthy());
    assert_eq!(h.hosts[0].state(), "unchecked");
    assert!(h.hosts[0].set(true));
    assert!(!h.hosts[0].set(true), "no change");
    assert!(h.hosts[1].set(false));
    assert!(h.hosts[2].set(false));
    assert!(h.any_unhealthy() && h.is_unhealthy(1) && !h.is_unhealthy(0));
    assert_eq!(h.unhealthy.load(Ordering::Relaxed), 2);
    h.hosts[1].set(true);
    assert_eq!(h.unhealthy.load(Ordering::Relaxed), 1);
    // A removed endpoint no longer counts, and stays removed.
    h.hosts[2].retire();
    assert_eq!(h.unhealthy.load(Ordering::Relaxed), 0);
    assert!(!h.hosts[2].set(false));
    assert_eq!(h.hosts[2].state(), "removed");
}

#[tokio::test]
async fn a_rebuilt_cluster_keeps_the_state_of_endpoints_it_had() {
    let first = cluster(endpoints(&[0, 0]), 140, None);
    health(&first).hosts[1].set(false);
    // e1 stays (same address), e0 goes, a new one comes.
    let mut eps = endpoints(&[0, 0, 0]);
    eps.remove(0);
    let second = cluster(eps, 140, Some(&first));
    let h = health(&second);
    assert!(Arc::ptr_eq(&h.hosts[0], &health(&first).hosts[1]));
    assert!(h.is_unhealthy(0) && !h.is_unhealthy(1));
    assert!(h.any_unhealthy(), "the count is shared with the last build");
}

#[tokio::test]
async fn picks_avoid_unhealthy_endpoints_until_the_panic_threshold() {
    let c = cluster(endpoints(&[0, 0, 0, 0]), 140, None);
    let h = health(&c);
    h.hosts[3].set(false);
    let got = spread(&c, 300);
    assert!(!got.contains_key("e3") && got.len() == 3, "{got:?}");
    // 1 of 4 available (< 50%): panic, every endpoint is balanced over.
    h.hosts[1].set(false);
    h.hosts[2].set(false);
    let got = spread(&c, 400);
    assert_eq!(got.len(), 4, "panic spreads over all: {got:?}");
}

#[tokio::test]
async fn priorities_keep_traffic_local_and_spill_by_the_loads() {
    // Two local (priority 0) and two remote (priority 1) endpoints, factor 143.
    let c = cluster(endpoints(&[0, 0, 1, 1]), 143, None);
    let got = spread(&c, 200);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["e0", "e1"],
        "all local: {got:?}"
    );
    // One local down: 71.5% stays local, 28.5% spills.
    health(&c).hosts[0].set(false);
    let n = 4000;
    let got = spread(&c, n);
    assert!(!got.contains_key("e0"), "{got:?}");
    let remote = got.get("e2").copied().unwrap_or(0) + got.get("e3").copied().unwrap_or(0);
    let share = remote as f64 / n as f64;
    assert!(
        (0.25..0.32).contains(&share),
        "remote share {share}: {got:?}"
    );
    // Recovered: back to local only.
    health(&c).hosts[0].set(true);
    let got = spread(&c, 200);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["e0", "e1"], "{got:?}");
    // Both local down: everything remote.
    health(&c).hosts[0].set(false);
    health(&c).hosts[1].set(false);
    let got = spread(&c, 200);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["e2", "e3"], "{got:?}");
}

#[tokio::test]
async fn retries_prefer_untried_endpoints_of_the_chosen_level() {
    let c = cluster(endpoints(&[0, 0, 1]), 140, None);
    let now = Instant::now();
    for _ in 0..50 {
        let p = c.pick(None, now, 0b01).expect("a pick");
        assert_eq!(p.index, 1, "e0 was tried; e1 is the other local endpoint");
    }
}
