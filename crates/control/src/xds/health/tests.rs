//! healthCheck → `Cluster.health_checks`; localityFailover → per-node priorities and the
//! overprovisioning factor.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use serde_json::json;

use super::*;
use crate::xds::fixtures::*;
use crate::xds::translate::{CLUSTER_TYPE, ENDPOINT_TYPE, NodeInfo, resources_for};

fn with(spec: serde_json::Value) -> Option<TrafficPolicySpec> {
    let mut v = json!({ "targetRef": { "name": "catalog" } });
    if let (Some(o), Some(extra)) = (v.as_object_mut(), spec.as_object()) {
        o.extend(extra.clone());
    }
    Some(serde_json::from_value(v).expect("valid policy literal"))
}

fn catalog(policy: Option<TrafficPolicySpec>) -> crate::snapshot::MeshSnapshot {
    let mut v = view(
        "catalog",
        vec![
            endpoint("a1", Some("zone-a"), 1, &[]),
            endpoint("a22", Some("zone-a"), 1, &[]),
            endpoint("b333", Some("zone-b"), 1, &[]),
            endpoint("c4444", None, 1, &[]),
        ],
    );
    v.policy = policy;
    snapshot(vec![v])
}

#[test]
fn an_http_check_with_defaults_fills_every_field() {
    let p = with(json!({ "healthCheck": { "http": { "path": "/healthz" } } }));
    let res = resources_for(&catalog(p), &node(None));
    let c: Cluster = decode(&res, CLUSTER_TYPE, "catalog");
    let [hc] = c.health_checks.as_slice() else {
        panic!("one health check: {:?}", c.health_checks)
    };
    let s = |d: &Option<envoy_types::pb::google::protobuf::Duration>| {
        d.as_ref().map(|d| (d.seconds, d.nanos))
    };
    assert_eq!(s(&hc.interval), Some((5, 0)));
    assert_eq!(s(&hc.timeout), Some((1, 0)));
    assert_eq!(s(&hc.no_traffic_interval), Some((5, 0)));
    assert_eq!(s(&hc.initial_jitter), Some((1, 0)));
    assert_eq!(hc.healthy_threshold.map(|v| v.value), Some(2));
    assert_eq!(hc.unhealthy_threshold.map(|v| v.value), Some(3));
    let Some(HealthChecker::HttpHealthCheck(http)) = &hc.health_checker else {
        panic!("http check: {hc:?}")
    };
    assert_eq!(http.path, "/healthz");
    assert_eq!(
        http.expected_statuses
            .iter()
            .map(|r| (r.start, r.end))
            .collect::<Vec<_>>(),
        [(200, 300)]
    );
    // The node holds a certificate: checks go over mTLS, whose ALPN is h2.
    assert_eq!(http.codec_client_type, CodecClientType::Http2 as i32);
    let res = resources_for(
        &catalog(with(json!({ "healthCheck": { "http": { "path": "/h" } } }))),
        &plain_node(None),
    );
    let c: Cluster = decode(&res, CLUSTER_TYPE, "catalog");
    let Some(HealthChecker::HttpHealthCheck(http)) = &c.health_checks[0].health_checker else {
        panic!("http check")
    };
    assert_eq!(
        http.codec_client_type,
        CodecClientType::Http1 as i32,
        "plaintext HTTP/1.1"
    );
}

#[test]
fn tcp_and_grpc_checks_and_their_timing() {
    let p = with(json!({ "healthCheck": {
        "grpc": { "service": "my.Svc" }, "interval": "200ms", "timeout": "100ms",
        "healthyThreshold": 1, "unhealthyThreshold": 5 } }));
    let hc = &health_checks(p.as_ref(), true)[0];
    assert_eq!(
        hc.health_checker,
        Some(HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
            service_name: "my.Svc".into(),
            ..Default::default()
        }))
    );
    assert_eq!(hc.interval.map(|d| d.nanos), Some(200_000_000));
    assert_eq!(
        hc.initial_jitter.map(|d| d.nanos),
        Some(200_000_000),
        "jitter up to the interval"
    );
    assert_eq!(hc.timeout.map(|d| d.nanos), Some(100_000_000));
    assert_eq!(
        (
            hc.healthy_threshold.map(|v| v.value),
            hc.unhealthy_threshold.map(|v| v.value)
        ),
        (Some(1), Some(5))
    );
    let p = with(json!({ "healthCheck": { "tcp": {} } }));
    assert!(matches!(
        health_checks(p.as_ref(), false)[0].health_checker,
        Some(HealthChecker::TcpHealthCheck(_))
    ));
    assert!(
        health_checks(with(json!({})).as_ref(), true).is_empty(),
        "nothing unless asked"
    );
    assert!(health_checks(None, true).is_empty());
}

#[test]
fn expected_statuses_become_merged_half_open_ranges() {
    let r = |codes: &[u16]| {
        expected_ranges(codes)
            .iter()
            .map(|r| (r.start, r.end))
            .collect::<Vec<_>>()
    };
    assert_eq!(r(&[]), [(200, 300)]);
    assert_eq!(r(&[200]), [(200, 201)]);
    assert_eq!(
        r(&[204, 200, 201, 202, 404, 200]),
        [(200, 203), (204, 205), (404, 405)]
    );
}

/// (zone, priority) of each locality, and the overprovisioning factor.
fn priorities(res: &crate::xds::translate::Resources) -> (Vec<(String, u32)>, Option<u32>) {
    let cla: ClusterLoadAssignment = decode(res, ENDPOINT_TYPE, "catalog");
    (
        cla.endpoints
            .iter()
            .map(|l| (l.locality.clone().unwrap_or_default().zone, l.priority))
            .collect(),
        cla.policy
            .and_then(|p| p.overprovisioning_factor)
            .map(|f| f.value),
    )
}

#[test]
fn locality_failover_puts_the_callers_zone_first_per_node() {
    let p = with(json!({ "loadBalancer": { "localityFailover": {} } }));
    let snap = catalog(p);
    let in_zone = |z: Option<&str>| NodeInfo {
        zone: z.map(str::to_string),
        ..node(None)
    };
    let z = |s: &str| s.to_string();
    assert_eq!(
        priorities(&resources_for(&snap, &in_zone(Some("zone-a")))),
        (
            vec![(z(""), 1), (z("zone-a"), 0), (z("zone-b"), 1)],
            Some(143)
        )
    );
    assert_eq!(
        priorities(&resources_for(&snap, &in_zone(Some("zone-b")))),
        (
            vec![(z(""), 1), (z("zone-a"), 1), (z("zone-b"), 0)],
            Some(143)
        )
    );
    // A caller in a zone without endpoints: one priority (they must stay contiguous).
    assert_eq!(
        priorities(&resources_for(&snap, &in_zone(Some("zone-x")))).0,
        vec![(z(""), 0), (z("zone-a"), 0), (z("zone-b"), 0)]
    );
    // No zone on the caller: nothing changes.
    assert_eq!(
        priorities(&resources_for(&snap, &in_zone(None))),
        (vec![(z(""), 0), (z("zone-a"), 0), (z("zone-b"), 0)], None)
    );
}

#[test]
fn locality_failover_is_off_unless_enabled() {
    let zoned = NodeInfo {
        zone: Some("zone-a".into()),
        ..node(None)
    };
    for p in [
        None,
        with(json!({})),
        with(json!({ "loadBalancer": { "localityFailover": { "enabled": false } } })),
    ] {
        let (prios, factor) = priorities(&resources_for(&catalog(p.clone()), &zoned));
        assert!(prios.iter().all(|(_, p)| *p == 0), "{p:?}: {prios:?}");
        assert_eq!(factor, None, "{p:?}");
    }
    let p = with(json!({ "loadBalancer": { "localityFailover": { "spilloverThreshold": 50 } } }));
    assert_eq!(priorities(&resources_for(&catalog(p), &zoned)).1, Some(200));
}
