//! TCP inbound listeners end to end through the translation: AuthorizationPolicies as users
//! write them → the control plane's RBAC filters (trellis_control::xds) → this proxy's
//! [`ConnectionPolicy`] → the decision for one caller. Plus the NACKs for what the subset
//! does not define.

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac::Action,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::util::pack_any;
use trellis_control::snapshot::{MeshSnapshot, ServiceView};
use trellis_control::xds::{NodeInfo, resources_for};
use trellis_model::{MtlsMode, Protocol, Resource, ServiceSpec, wire};

use super::*;
use crate::authz::Decision;
use crate::security::InboundMode;
use crate::xds::security::inbound_config;

const WEB: &str = "spiffe://cluster.local/ns/default/svc/web";
const BATCH: &str = "spiffe://cluster.local/ns/jobs/svc/batch";
const SHOP: &str = "spiffe://cluster.local/ns/shop/svc/cart";

/// The policies of `yaml` (several documents) applied to TCP service `db`, as this proxy
/// reads the control plane's inbound Listener for it.
fn translated(yaml: &str, mode: MtlsMode) -> crate::xds::security::InboundConfig {
    let policies = trellis_model::parse_documents("p.yaml", yaml)
        .expect("valid policies")
        .into_iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    let db = ServiceView {
        name: "db".into(),
        declared: Some(ServiceSpec {
            protocol: Protocol::Tcp,
            mtls: trellis_model::MtlsSettings { mode },
            ..Default::default()
        }),
        authorization: policies,
        ..Default::default()
    };
    let snapshot = MeshSnapshot {
        services: [("db".to_string(), db)].into(),
        ..MeshSnapshot::default()
    };
    let node = NodeInfo {
        id: "db~db-1".into(),
        cluster: "db".into(),
        service: "db".into(),
        instance_id: "db-1".into(),
        app_port: Some(5432),
        outbound_port: 15001,
        inbound_port: 15006,
        zone: None,
        identity: Some("spiffe://cluster.local/ns/default/svc/db".into()),
    };
    let res = resources_for(&snapshot, &node);
    let (_, any) = res
        .get(crate::xds::LISTENER_TYPE)
        .iter()
        .find(|(n, _)| n == "inbound")
        .expect("an inbound listener")
        .clone();
    let l: Listener =
        crate::xds::translate::decode(&any, crate::xds::LISTENER_TYPE).expect("decodes");
    inbound_config(&l).expect("the control plane's listener is accepted")
}

fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name} }}\nspec:\n{spec}---\n"
    )
}

#[test]
fn policies_decide_connections_by_caller_alone() {
    let deny_batch = doc(
        "deny-batch",
        "  action: DENY\n  rules: [{ from: [{ principals: [\"*/svc/batch\"] }] }]\n",
    );
    let allow_web = doc(
        "allow-web",
        &format!("  rules: [{{ from: [{{ principals: [\"{WEB}\"] }}] }}]\n"),
    );
    let allow_shop = doc(
        "allow-shop",
        "  rules: [{ from: [{ namespaces: [\"sh*\"], notPrincipals: [\"*/svc/admin\"] }] }]\n",
    );
    let allow_get = doc("allow-get", "  rules: [{ to: [{ methods: [GET] }] }]\n");
    let deny_delete = doc(
        "deny-delete",
        "  action: DENY\n  rules: [{ from: [{ namespaces: [jobs] }], to: [{ methods: [DELETE] }] }]\n",
    );
    let deny_paths = doc(
        "deny-paths",
        "  action: DENY\n  rules: [{ to: [{ paths: [\"/x\"] }] }]\n",
    );
    let deny_not_web = doc(
        "deny-not-web",
        &format!("  action: DENY\n  rules: [{{ from: [{{ notPrincipals: [\"{WEB}\"] }}] }}]\n"),
    );
    let default_deny = doc("default-deny", "  {}\n");
    type Row<'a> = (&'a str, String, Option<&'a str>, bool);
    let rows: Vec<Row<'_>> = vec![
        ("no policy", String::new(), Some(BATCH), true),
        ("no policy, plaintext", String::new(), None, true),
        ("deny matches", deny_batch.clone(), Some(BATCH), false),
        ("deny does not match", deny_batch.clone(), Some(WEB), true),
        ("allow matches", allow_web.clone(), Some(WEB), true),
        (
            "allow for another principal",
            allow_web.clone(),
            Some(BATCH),
            false,
        ),
        ("allow, plaintext caller", allow_web.clone(), None, false),
        (
            "deny wins over allow",
            format!("{allow_web}{deny_batch}"),
            Some(BATCH),
            false,
        ),
        ("namespace prefix", allow_shop.clone(), Some(SHOP), true),
        (
            "namespace prefix, other ns",
            allow_shop.clone(),
            Some(WEB),
            false,
        ),
        (
            "notPrincipals excludes",
            allow_shop.clone(),
            Some("spiffe://cluster.local/ns/shop/svc/admin"),
            false,
        ),
        (
            "HTTP-only ALLOW never matches",
            allow_get.clone(),
            Some(WEB),
            false,
        ),
        (
            "HTTP-only ALLOW next to a real one",
            format!("{allow_get}{allow_web}"),
            Some(WEB),
            true,
        ),
        (
            "DENY keeps its from part",
            deny_delete.clone(),
            Some(BATCH),
            false,
        ),
        (
            "DENY from part, other caller",
            deny_delete.clone(),
            Some(WEB),
            true,
        ),
        (
            "DENY with only to denies all",
            deny_paths.clone(),
            Some(WEB),
            false,
        ),
        (
            "notPrincipals deny, plaintext",
            deny_not_web.clone(),
            None,
            false,
        ),
        (
            "notPrincipals deny, listed",
            deny_not_web.clone(),
            Some(WEB),
            true,
        ),
        ("default deny", default_deny.clone(), Some(WEB), false),
        (
            "default deny with an exception",
            format!("{default_deny}{allow_web}"),
            Some(WEB),
            true,
        ),
    ];
    for (case, yaml, peer, allowed) in rows {
        let config = translated(&yaml, MtlsMode::Strict);
        let policy = config.tcp.as_ref().expect("a TCP listener");
        let decision = policy.evaluate(peer);
        assert_eq!(decision.is_allowed(), allowed, "{case}: {decision:?}");
    }
}

#[test]
fn the_mode_comes_from_the_chains_and_the_deny_names_its_policy() {
    let deny = doc("deny-all", "  action: DENY\n  rules: [{}]\n");
    let config = translated(&deny, MtlsMode::Permissive);
    assert_eq!(config.mode, InboundMode::Permissive);
    assert!(config.authz.is_empty() && config.authn.is_empty());
    match config.tcp.expect("tcp").evaluate(Some(WEB)) {
        Decision::Deny { policy, .. } => assert_eq!(policy.as_deref(), Some("deny-all")),
        other => panic!("expected a deny: {other:?}"),
    }
}

fn filter(name: &str, any: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any)),
    }
}

fn tcp_proxy() -> Filter {
    filter(
        wire::TCP_PROXY_FILTER,
        pack_any(TcpProxy {
            stat_prefix: "t".into(),
            cluster_specifier: Some(ClusterSpecifier::Cluster("inbound|1".into())),
            ..Default::default()
        }),
    )
}

fn rbac_with(p: Policy) -> Filter {
    filter(
        wire::RBAC_NETWORK_FILTER,
        pack_any(RbacConfig {
            rules: Some(Rbac {
                action: Action::Allow as i32,
                policies: [("p".to_string(), p)].into(),
                ..Default::default()
            }),
            stat_prefix: "t".into(),
            ..Default::default()
        }),
    )
}

fn any_permission() -> Vec<Permission> {
    vec![Permission {
        rule: Some(permission::Rule::Any(true)),
    }]
}

#[test]
fn what_the_subset_does_not_define_is_refused() {
    let chain = |filters: Vec<Filter>| FilterChain {
        name: "mtls".into(),
        filters,
        ..Default::default()
    };
    let header = Principal {
        identifier: Some(principal::Identifier::Header(Default::default())),
    };
    let cases = [
        (
            "principal kind",
            rbac_with(Policy {
                permissions: any_permission(),
                principals: vec![header],
                ..Default::default()
            }),
            "not supported",
        ),
        (
            "permission",
            rbac_with(Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::DestinationPort(22)),
                }],
                principals: vec![Principal {
                    identifier: Some(principal::Identifier::Any(true)),
                }],
                ..Default::default()
            }),
            "permissions",
        ),
        (
            "other filter",
            filter(
                "envoy.filters.network.ext_authz",
                pack_any(TcpProxy::default()),
            ),
            "not supported before tcp_proxy",
        ),
    ];
    for (case, f, want) in cases {
        let err = connection_policy(&chain(vec![f, tcp_proxy()])).expect_err(case);
        assert!(
            err.contains(want) && err.contains("chain `mtls`"),
            "{case}: {err}"
        );
    }
    let no_cluster = filter(wire::TCP_PROXY_FILTER, pack_any(TcpProxy::default()));
    let err = connection_policy(&chain(vec![no_cluster])).expect_err("no cluster");
    assert!(err.contains("cluster"), "{err}");
    assert!(
        connection_policy(&chain(vec![tcp_proxy()]))
            .expect("bare tcp_proxy")
            .0
            .is_empty()
    );
}

#[test]
fn tcp_proxy_idle_timeout_is_read_and_a_negative_one_refused() {
    let chain = |filters: Vec<Filter>| FilterChain {
        name: "mtls".into(),
        filters,
        ..Default::default()
    };
    let with_idle = |seconds| {
        filter(
            wire::TCP_PROXY_FILTER,
            pack_any(TcpProxy {
                stat_prefix: "t".into(),
                cluster_specifier: Some(ClusterSpecifier::Cluster("inbound|1".into())),
                idle_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        )
    };
    let (_, idle) = connection_policy(&chain(vec![with_idle(7)])).expect("valid");
    assert_eq!(idle, Some(std::time::Duration::from_secs(7)));
    assert_eq!(
        connection_policy(&chain(vec![tcp_proxy()]))
            .expect("valid")
            .1,
        None
    );
    let err = connection_policy(&chain(vec![with_idle(-1)])).expect_err("negative");
    assert!(err.contains("idle_timeout"), "{err}");
}
