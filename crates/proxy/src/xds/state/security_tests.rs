//! Inbound security in the accepted state: absent until an `inbound` Listener is accepted, a
//! malformed policy NACKed with the last good one kept, an unchanged config reused as is (its
//! JWKS caches with it), and the control plane's own output accepted end to end.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::util::pack_any;
use http::HeaderMap;
use serde_json::json;
use trellis_control::snapshot::{Endpoint as MeshEndpoint, MeshSnapshot, ServiceView};
use trellis_control::xds::{NodeInfo, resources_for};
use trellis_model::{MtlsMode, wire};

use super::*;
use crate::authz::{Decision, RequestFacts};
use crate::security::{InboundMode, TlsPolicy};
use crate::xds::security::tests::{
    authn_filter, authz_filter, deny_delete, inbound_listener, jwt_rule,
};

fn apply_listeners(state: &mut XdsState, listeners: Vec<Listener>) -> Result<(), String> {
    let any: Vec<_> = listeners.into_iter().map(pack_any).collect();
    state.apply(LISTENER_TYPE, &any, &Metrics::new())
}

fn outbound() -> Listener {
    Listener {
        name: "outbound".into(),
        ..Default::default()
    }
}

fn decide(sec: &InboundSecurity, method: &str) -> bool {
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        principal: None,
        namespace: None,
        method,
        path: "/",
        headers: &headers,
        claims: None,
    };
    matches!(sec.authz.evaluate(&facts), Decision::Allow)
}

#[test]
fn inbound_is_absent_until_accepted_and_follows_the_listeners() {
    let mut state = XdsState::new(crate::balance::build);
    let clients = ClientCache::default();
    assert!(
        state
            .snapshot(&Snapshot::default(), &clients)
            .inbound
            .is_none()
    );

    apply_listeners(&mut state, vec![outbound()]).expect("outbound only");
    assert!(
        state.inbound.is_none(),
        "no inbound Listener: nothing accepted"
    );

    let strict = inbound_listener(
        MtlsMode::Strict,
        true,
        vec![authz_filter(vec![deny_delete("no-delete")])],
    );
    apply_listeners(&mut state, vec![outbound(), strict]).expect("valid");
    let sec = state.inbound.clone().expect("accepted");
    assert_eq!(sec.mode, InboundMode::Strict);
    assert!(!decide(&sec, "DELETE") && decide(&sec, "GET"));
    let snap = state.snapshot(&Snapshot::default(), &clients);
    assert!(Arc::ptr_eq(snap.inbound.as_ref().expect("published"), &sec));
    assert_eq!(
        state.listeners.as_deref(),
        Some(&["outbound".to_string(), "inbound".to_string()][..])
    );

    // The service became STRICT on a node without identity: no inbound Listener, refuse.
    apply_listeners(&mut state, vec![outbound()]).expect("valid");
    assert!(state.inbound.is_none());
    assert!(state.snapshot(&snap, &clients).inbound.is_none());
}

#[test]
fn a_malformed_policy_is_nacked_and_the_last_good_one_kept() {
    let mut state = XdsState::new(crate::balance::build);
    let good = inbound_listener(
        MtlsMode::Strict,
        true,
        vec![authz_filter(vec![deny_delete("no-delete")])],
    );
    apply_listeners(&mut state, vec![outbound(), good]).expect("valid");
    let before = state.inbound.clone().expect("accepted");

    let mut broken = deny_delete("no-delete");
    broken["spec"]["action"] = json!("MAYBE");
    let no_keys = json!({ "kind": "RequestAuthentication", "apiVersion": "trellis.dev/v1alpha1",
        "metadata": { "name": "inline" },
        "spec": { "jwtRules": [{ "issuer": "https://i.example", "jwks": "{\"keys\": []}" }] } });
    let cases = [
        (
            "invalid action",
            inbound_listener(MtlsMode::Permissive, true, vec![authz_filter(vec![broken])]),
            "policies[0] is invalid",
        ),
        (
            "unusable inline JWKS",
            inbound_listener(
                MtlsMode::Permissive,
                true,
                vec![authn_filter(vec![no_keys])],
            ),
            "RequestAuthentication inline",
        ),
    ];
    for (case, listener, needle) in cases {
        let err = apply_listeners(&mut state, vec![outbound(), listener]).expect_err(case);
        assert!(
            err.contains("Listener `inbound`") && err.contains(needle),
            "{case}: {err}"
        );
        let now = state.inbound.clone().expect("still accepted");
        assert!(
            Arc::ptr_eq(&before, &now),
            "{case}: the last good security stays"
        );
        assert_eq!(now.mode, InboundMode::Strict, "{case}");
        assert!(!decide(&now, "DELETE"), "{case}");
    }
}

#[test]
fn an_unchanged_config_keeps_its_security_and_a_change_rebuilds_it() {
    let mut state = XdsState::new(crate::balance::build);
    let listener = |authz: Vec<serde_json::Value>| {
        inbound_listener(
            MtlsMode::Strict,
            true,
            vec![authn_filter(vec![jwt_rule("jwt")]), authz_filter(authz)],
        )
    };
    apply_listeners(
        &mut state,
        vec![outbound(), listener(vec![deny_delete("a")])],
    )
    .expect("valid");
    let first = state.inbound.clone().expect("accepted");
    assert!(!first.authn.is_empty());
    // A push that repeats the same config (e.g. after another service changed) reuses it all,
    // JWKS caches included.
    apply_listeners(
        &mut state,
        vec![outbound(), listener(vec![deny_delete("a")])],
    )
    .expect("valid");
    assert!(Arc::ptr_eq(
        &first,
        state.inbound.as_ref().expect("accepted")
    ));
    apply_listeners(
        &mut state,
        vec![outbound(), listener(vec![deny_delete("b")])],
    )
    .expect("valid");
    assert!(!Arc::ptr_eq(
        &first,
        state.inbound.as_ref().expect("accepted")
    ));
}

fn spiffe(service: &str) -> String {
    wire::spiffe_id("cluster.local", "default", service)
}

/// The control plane's translation for a sidecar of `web` holding its certificate, accepted
/// type by type as the ADS client would.
#[test]
fn the_control_planes_security_config_is_accepted_end_to_end() {
    let mut catalog = ServiceView {
        name: "catalog".into(),
        ..Default::default()
    };
    for (id, identity) in [("c-1", Some(spiffe("catalog"))), ("c-2", None)] {
        catalog.endpoints.push(MeshEndpoint {
            instance_id: id.into(),
            address: "127.0.0.1".parse().expect("ip"),
            port: if identity.is_some() { 9001 } else { 9002 },
            protocol: Default::default(),
            zone: None,
            weight: 1,
            labels: Default::default(),
            identity,
        });
    }
    let mut web = ServiceView {
        name: "web".into(),
        declared: Some(trellis_model::ServiceSpec {
            mtls: trellis_model::MtlsSettings {
                mode: MtlsMode::Permissive,
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let resource = |v| serde_json::from_value::<trellis_model::Resource>(v).expect("resource");
    if let trellis_model::Resource::AuthorizationPolicy(p) = resource(deny_delete("no-delete")) {
        web.authorization = vec![p];
    }
    if let trellis_model::Resource::RequestAuthentication(a) = resource(jwt_rule("jwt")) {
        web.authentication = vec![a];
    }
    if let trellis_model::Resource::TrafficPolicy(p) = resource(serde_json::json!({
        "apiVersion": "trellis.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": { "name": "web" },
        "spec": { "targetRef": { "name": "web" }, "timeouts": { "idle": "2s" } },
    })) {
        web.policy = Some(p.spec);
    }
    let snapshot = MeshSnapshot {
        version: 1,
        services: [("catalog".to_string(), catalog), ("web".to_string(), web)].into(),
        ..Default::default()
    };
    let s = |v: String| Value {
        kind: Some(Kind::StringValue(v)),
    };
    let node = NodeInfo::from_node(&Node {
        id: "web~web-1".into(),
        cluster: "web".into(),
        metadata: Some(Struct {
            fields: [
                (wire::NODE_APP_PORT.to_string(), s("8080".into())),
                (wire::NODE_IDENTITY.to_string(), s(spiffe("web"))),
            ]
            .into(),
        }),
        ..Default::default()
    })
    .expect("node");
    let res = resources_for(&snapshot, &node);
    let mut state = XdsState::new(crate::balance::build);
    let metrics = Metrics::new();
    for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE] {
        let any: Vec<_> = res.get(type_url).iter().map(|(_, a)| a.clone()).collect();
        state
            .apply(type_url, &any, &metrics)
            .unwrap_or_else(|e| panic!("{type_url}: {e}"));
    }
    let clusters = state.clusters.as_ref().expect("clusters");
    let catalog = clusters
        .iter()
        .find(|c| c.name == "catalog")
        .expect("catalog");
    assert_eq!(
        catalog.tls,
        Some(TlsPolicy {
            expected_ids: vec![spiffe("catalog")],
            sni: "catalog".into()
        })
    );
    let inbound_app = clusters
        .iter()
        .find(|c| c.name == "inbound|8080")
        .expect("app");
    assert_eq!(inbound_app.tls, None);
    let mtls: Vec<(String, bool)> = state.assignments["catalog"]
        .endpoints
        .iter()
        .map(|e| (e.id.clone(), e.mtls))
        .collect();
    assert_eq!(
        mtls,
        [("c-1".to_string(), true), ("c-2".to_string(), false)]
    );
    let sec = state.inbound.clone().expect("inbound accepted");
    assert_eq!(sec.mode, InboundMode::Permissive);
    assert!(!sec.authn.is_empty());
    assert!(!decide(&sec, "DELETE") && decide(&sec, "GET"));
    // The service's own timeouts.idle, from the inbound HttpConnectionManager.
    assert_eq!(sec.idle_timeout, Some(std::time::Duration::from_secs(2)));
}
