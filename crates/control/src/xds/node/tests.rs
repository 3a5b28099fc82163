//! Node parsing: metadata, defaults and malformed values.

use envoy_types::pb::google::protobuf::Value;

use super::*;

fn node_msg(id: &str, cluster: &str, meta: &[(&str, &str)]) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        metadata: Some(Struct {
            fields: meta
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        }),
        ..Default::default()
    }
}

#[test]
fn node_info_from_metadata_and_defaults() {
    let full = node_msg(
        "catalog~c-1",
        "catalog",
        &[
            (wire::NODE_SERVICE, "catalog"),
            (wire::NODE_INSTANCE_ID, "c-1"),
            (wire::NODE_APP_PORT, "8080"),
            (wire::NODE_OUTBOUND_PORT, "16001"),
            (wire::NODE_INBOUND_PORT, "16006"),
        ],
    );
    let n = NodeInfo::from_node(&full).expect("valid node");
    assert_eq!(
        (
            n.service.as_str(),
            n.instance_id.as_str(),
            n.app_port,
            n.outbound_port,
            n.inbound_port
        ),
        ("catalog", "c-1", Some(8080), 16001, 16006)
    );
    // No metadata: service and instance from the id, default ports, no inbound side.
    let bare = Node {
        id: "web~w-9".into(),
        ..Default::default()
    };
    let n = NodeInfo::from_node(&bare).expect("valid node");
    assert_eq!(
        (
            n.service.as_str(),
            n.instance_id.as_str(),
            n.app_port,
            n.outbound_port,
            n.inbound_port
        ),
        ("web", "w-9", None, 15001, 15006)
    );
    // Malformed port: an error naming the key and value.
    for bad in ["http", "0", "70000"] {
        let err = NodeInfo::from_node(&node_msg("x~1", "x", &[(wire::NODE_APP_PORT, bad)]))
            .expect_err("bad port rejected");
        assert_eq!(err.key, wire::NODE_APP_PORT);
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn node_identity_is_optional_and_must_be_a_spiffe_id() {
    let id = "spiffe://cluster.local/ns/default/svc/web";
    type Want<'a> = Result<Option<&'a str>, ()>;
    let cases: &[(&str, Option<&str>, Want)] = &[
        ("absent", None, Ok(None)),
        ("empty", Some(""), Ok(None)),
        ("spiffe id", Some(id), Ok(Some(id))),
        ("not spiffe", Some("web"), Err(())),
        (
            "https uri",
            Some("https://cluster.local/ns/default/svc/web"),
            Err(()),
        ),
    ];
    for (case, value, want) in cases {
        let meta: Vec<(&str, &str)> = value
            .map(|v| vec![(wire::NODE_IDENTITY, v)])
            .unwrap_or_default();
        let got = NodeInfo::from_node(&node_msg("web~1", "web", &meta));
        match (got, want) {
            (Ok(n), Ok(w)) => assert_eq!(n.identity.as_deref(), *w, "{case}"),
            (Err(e), Err(())) => {
                assert_eq!(e.key, wire::NODE_IDENTITY, "{case}");
                assert!(e.to_string().contains("SPIFFE ID"), "{case}: {e}");
            }
            (got, _) => panic!("{case}: unexpected {got:?}"),
        }
    }
}

#[test]
fn the_zone_comes_from_the_node_locality() {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    let mut n = Node {
        id: "web~w1".into(),
        ..Default::default()
    };
    assert_eq!(NodeInfo::from_node(&n).expect("valid").zone, None);
    n.locality = Some(Locality {
        zone: "zone-a".into(),
        ..Default::default()
    });
    assert_eq!(
        NodeInfo::from_node(&n).expect("valid").zone.as_deref(),
        Some("zone-a")
    );
    n.locality = Some(Locality::default());
    assert_eq!(
        NodeInfo::from_node(&n).expect("valid").zone,
        None,
        "an empty zone is none"
    );
}
