//! RateLimitPolicies end to end through the translation: YAML → the control plane's inbound
//! Listener (trellis_control::xds) → this proxy's rules; plus the NACKs.

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::r#type::v3::TokenBucket;
use envoy_types::util::pack_any;
use trellis_control::snapshot::{MeshSnapshot, ServiceView};
use trellis_control::xds::{NodeInfo, resources_for};
use trellis_model::{MtlsMode, Resource, ServiceSpec, wire};

use crate::ratelimit::{BucketSpec, PathRule, RuleConfig};
use crate::xds::security::{InboundConfig, inbound_config};

fn listener(yaml: Option<&str>) -> Listener {
    let rate_limit = yaml.map(|y| {
        match trellis_model::parse_documents("rl.yaml", y)
            .expect("valid")
            .pop()
        {
            Some(Resource::RateLimitPolicy(p)) => p,
            other => panic!("{other:?}"),
        }
    });
    let catalog = ServiceView {
        name: "catalog".into(),
        declared: Some(ServiceSpec {
            mtls: trellis_model::MtlsSettings {
                mode: MtlsMode::Permissive,
            },
            ..Default::default()
        }),
        rate_limit,
        ..Default::default()
    };
    let snapshot = MeshSnapshot {
        services: [("catalog".to_string(), catalog)].into(),
        ..MeshSnapshot::default()
    };
    let node = NodeInfo {
        id: "catalog~c1".into(),
        cluster: "catalog".into(),
        service: "catalog".into(),
        instance_id: "c1".into(),
        app_port: Some(8080),
        outbound_port: 15001,
        inbound_port: 15006,
        zone: None,
        identity: None,
    };
    let res = resources_for(&snapshot, &node);
    let (_, any) = res
        .get(crate::xds::LISTENER_TYPE)
        .iter()
        .find(|(n, _)| n == "inbound")
        .expect("an inbound listener")
        .clone();
    crate::xds::translate::decode(&any, crate::xds::LISTENER_TYPE).expect("decodes")
}

fn translated(yaml: Option<&str>) -> Result<InboundConfig, String> {
    inbound_config(&listener(yaml))
}

const POLICY: &str = "apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: catalog }
spec:
  targetRef: { name: catalog }
  rules:
    - match: { path: { type: Exact, value: /login } }
      requestsPerUnit: 5
      unit: minute
      perSource: true
    - match: { path: { value: /api } }
      requestsPerUnit: 100
      unit: second
      burst: 20
    - { requestsPerUnit: 1000, unit: hour }
";

#[test]
fn rules_survive_the_round_trip_in_order() {
    let c = translated(Some(POLICY)).expect("accepted");
    let spec = |capacity, tokens_per_fill, secs| BucketSpec {
        capacity,
        tokens_per_fill,
        fill_interval: Duration::from_secs(secs),
    };
    assert_eq!(
        c.ratelimit,
        vec![
            RuleConfig {
                name: "ratelimit-0".into(),
                path: PathRule::Exact("/login".into()),
                bucket: spec(5, 5, 60),
                per_source: true,
                global: false,
            },
            RuleConfig {
                name: "ratelimit-1".into(),
                path: PathRule::Prefix("/api".into()),
                bucket: spec(20, 100, 1),
                per_source: false,
                global: false,
            },
            RuleConfig {
                name: "default".into(),
                path: PathRule::Any,
                bucket: spec(1000, 1000, 3600),
                per_source: false,
                global: false,
            },
        ]
    );
    assert!(translated(None).expect("accepted").ratelimit.is_empty());
}

/// Rewrites the inbound HCM of the listener with `edit`.
fn edited(edit: impl Fn(&mut HttpConnectionManager)) -> Result<InboundConfig, String> {
    let mut l = listener(Some(POLICY));
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any),
            ) = &mut f.config_type
            else {
                continue;
            };
            let mut hcm: HttpConnectionManager =
                prost::Message::decode(any.value.as_slice()).expect("hcm");
            edit(&mut hcm);
            *any = pack_any(hcm);
        }
    }
    inbound_config(&l)
}

fn first_limit(hcm: &mut HttpConnectionManager) -> &mut envoy_types::pb::google::protobuf::Any {
    let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier else {
        panic!("inline routes");
    };
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .get_mut(wire::RATE_LIMIT_FILTER)
        .expect("a limit")
}

#[test]
fn what_the_subset_does_not_define_is_refused() {
    let with = |f: fn(&mut LocalRateLimit)| {
        edited(move |hcm| {
            let any = first_limit(hcm);
            let mut c: LocalRateLimit = prost::Message::decode(any.value.as_slice()).expect("lrl");
            f(&mut c);
            *any = pack_any(c);
        })
    };
    type Edit = fn(&mut LocalRateLimit);
    let cases: &[(Edit, &str)] = &[
        (|c| c.token_bucket = None, "without token_bucket"),
        (|c| c.filter_enforced = None, "must be 100%"),
        (
            |c| c.local_rate_limit_per_downstream_connection = true,
            "not supported",
        ),
        (
            |c| {
                c.token_bucket = Some(TokenBucket {
                    max_tokens: 0,
                    ..c.token_bucket.unwrap_or_default()
                })
            },
            "max_tokens 0",
        ),
        (
            |c| {
                if let Some(b) = c.token_bucket.as_mut() {
                    b.fill_interval = None;
                }
            },
            "fill_interval",
        ),
    ];
    for (f, want) in cases {
        let e = with(*f).expect_err(want);
        assert!(
            e.contains(want) && e.contains("inbound route 0"),
            "{want}: {e}"
        );
    }
    let e = edited(|hcm| {
        let any = first_limit(hcm);
        any.type_url = "type.googleapis.com/nope".into();
    })
    .expect_err("wrong type");
    assert!(e.contains("expected"), "{e}");
}
