//! ADS over a real gRPC connection: a tonic server on 127.0.0.1:0 serving [`ads_server`], and
//! envoy-types' generated ADS client as the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;
use trellis_model::wire;

use super::*;
use crate::snapshot::{Endpoint, MeshSnapshot, ServiceView};

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    addr: SocketAddr,
    snapshots: watch::Sender<Arc<MeshSnapshot>>,
    proxies: ProxyTable,
    server: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(snapshot: MeshSnapshot) -> Harness {
    let (tx, rx) = watch::channel(Arc::new(snapshot));
    let proxies = ProxyTable::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let service = ads_server(rx, proxies.clone());
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Harness {
        addr,
        snapshots: tx,
        proxies,
        server,
    }
}

struct Client {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

async fn grpc_client(
    addr: SocketAddr,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    tokio::time::timeout(
        WAIT,
        AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

async fn connect(addr: SocketAddr) -> Client {
    let mut client = grpc_client(addr).await;
    let (tx, rx) = mpsc::channel(16);
    let responses = tokio::time::timeout(
        WAIT,
        client.stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("stream opens in time")
    .expect("stream opens")
    .into_inner();
    Client {
        requests: tx,
        responses,
    }
}

impl Client {
    async fn send(&self, req: DiscoveryRequest) {
        tokio::time::timeout(WAIT, self.requests.send(req))
            .await
            .expect("send in time")
            .expect("stream open");
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("response in time")
            .expect("no error status")
            .expect("stream not closed")
    }

    /// Subscribes and returns the response, which must be of the requested type.
    async fn subscribe(
        &mut self,
        type_url: &str,
        names: &[&str],
        node: Option<Node>,
    ) -> DiscoveryResponse {
        self.send(request(type_url, names, node)).await;
        let resp = self.recv().await;
        assert_eq!(resp.type_url, type_url);
        resp
    }

    async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        let mut req = request(&resp.type_url, names, None);
        req.version_info = resp.version_info.clone();
        req.response_nonce = resp.nonce.clone();
        self.send(req).await;
    }
}

fn request(type_url: &str, names: &[&str], node: Option<Node>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        node,
        ..Default::default()
    }
}

fn node(service: &str, instance: &str, app_port: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    Node {
        id: format!("{service}~{instance}"),
        cluster: service.to_string(),
        metadata: Some(Struct {
            fields: [
                (wire::NODE_SERVICE.to_string(), s(service)),
                (wire::NODE_INSTANCE_ID.to_string(), s(instance)),
                (wire::NODE_APP_PORT.to_string(), s(app_port)),
                (
                    wire::NODE_IDENTITY.to_string(),
                    s(&wire::spiffe_id("cluster.local", "default", service)),
                ),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

fn mesh(version: u64, catalog_instances: &[&str], extra_service: Option<&str>) -> MeshSnapshot {
    let endpoints = catalog_instances
        .iter()
        .enumerate()
        .map(|(i, id)| Endpoint {
            instance_id: id.to_string(),
            address: "10.1.0.1".parse().expect("literal ip"),
            port: 9000 + u16::try_from(i).unwrap_or(0),
            protocol: Default::default(),
            zone: None,
            weight: 1,
            labels: Default::default(),
            identity: None,
        })
        .collect();
    let mut services = vec![
        ServiceView {
            name: "catalog".into(),
            endpoints,
            ..Default::default()
        },
        ServiceView {
            name: "web".into(),
            ..Default::default()
        },
    ];
    if let Some(extra) = extra_service {
        services.push(ServiceView {
            name: extra.into(),
            ..Default::default()
        });
    }
    MeshSnapshot {
        version,
        services: services.into_iter().map(|v| (v.name.clone(), v)).collect(),
        ..MeshSnapshot::default()
    }
}

fn names_of<T: Message + Default>(
    resp: &DiscoveryResponse,
    name: impl Fn(&T) -> String,
) -> Vec<String> {
    resp.resources
        .iter()
        .map(|any| name(&T::decode(any.value.as_slice()).expect("decodes")))
        .collect()
}

/// Polls the proxy table until `cond` holds for the list, or fails after [`WAIT`].
async fn eventually(proxies: &ProxyTable, what: &str, cond: impl Fn(&[ProxyStatus]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = proxies.list();
        if cond(&list) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn serves_subscriptions_tracks_acks_and_pushes_changes() {
    let h = start(mesh(1, &["c-1", "c-2"], None)).await;
    let mut c = connect(h.addr).await;

    // LDS and CDS: wildcard, everything for this node.
    let lds = c
        .subscribe(LISTENER_TYPE, &[], Some(node("web", "web-1", "8080")))
        .await;
    assert_eq!(lds.version_info, "1");
    assert_eq!(lds.resources.len(), 2, "inbound and outbound listeners");
    let cds = c.subscribe(CLUSTER_TYPE, &[], None).await;
    assert_eq!(
        names_of::<Cluster>(&cds, |c| c.name.clone()),
        vec!["catalog", "inbound|8080", "web"]
    );
    assert_ne!(cds.nonce, lds.nonce, "fresh nonce per response");

    // ACKs land in the proxy table, with the node's identity.
    c.ack(&lds, &[]).await;
    c.ack(&cds, &[]).await;
    eventually(&h.proxies, "LDS and CDS ACK", |l| {
        l.len() == 1
            && l[0].acked.get("Listener").map(String::as_str) == Some("1")
            && l[0].acked.get("Cluster").map(String::as_str) == Some("1")
    })
    .await;
    let status = &h.proxies.list()[0];
    assert_eq!(
        (
            status.node_id.as_str(),
            status.service.as_str(),
            status.instance_id.as_str()
        ),
        ("web~web-1", "web", "web-1")
    );
    assert!(status.peer.starts_with("127.0.0.1:"), "{}", status.peer);

    // RDS and EDS: only the requested names.
    let rds = c.subscribe(ROUTE_TYPE, &["outbound"], None).await;
    assert_eq!(rds.resources.len(), 1);
    let eds = c.subscribe(ENDPOINT_TYPE, &["catalog", "nope"], None).await;
    let cla_names =
        |r: &DiscoveryResponse| names_of::<ClusterLoadAssignment>(r, |c| c.cluster_name.clone());
    assert_eq!(cla_names(&eds), vec!["catalog"]);
    let cla = ClusterLoadAssignment::decode(eds.resources[0].value.as_slice()).expect("cla");
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
    c.ack(&rds, &["outbound"]).await;
    c.ack(&eds, &["catalog", "nope"]).await;

    // An endpoint change pushes only EDS.
    h.snapshots.send_replace(Arc::new(mesh(2, &["c-1"], None)));
    let eds2 = c.recv().await;
    assert_eq!(
        (eds2.type_url.as_str(), eds2.version_info.as_str()),
        (ENDPOINT_TYPE, "2")
    );
    let cla = ClusterLoadAssignment::decode(eds2.resources[0].value.as_slice()).expect("cla");
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    c.ack(&eds2, &["catalog", "nope"]).await;

    // A new version with the same content pushes nothing; a new service pushes CDS and RDS
    // (EDS is unchanged for the names this proxy asked for).
    h.snapshots.send_replace(Arc::new(mesh(3, &["c-1"], None)));
    h.snapshots
        .send_replace(Arc::new(mesh(4, &["c-1"], Some("orders"))));
    let next = c.recv().await;
    assert_eq!(
        (next.type_url.as_str(), next.version_info.as_str()),
        (CLUSTER_TYPE, "4")
    );
    assert!(names_of::<Cluster>(&next, |c| c.name.clone()).contains(&"orders".to_string()));
    let next = c.recv().await;
    assert_eq!(
        (next.type_url.as_str(), next.version_info.as_str()),
        (ROUTE_TYPE, "4")
    );
    c.ack(&next, &["outbound"]).await;
    eventually(&h.proxies, "RDS ACK of version 4", |l| {
        l.len() == 1
            && l[0].acked.get("RouteConfiguration").map(String::as_str) == Some("4")
            && l[0].sent.get("Cluster").map(String::as_str) == Some("4")
            && l[0].sent.get("ClusterLoadAssignment").map(String::as_str) == Some("2")
    })
    .await;

    // Disconnecting removes the proxy.
    drop(c);
    eventually(&h.proxies, "proxy removal", |l| l.is_empty()).await;
}

#[tokio::test]
async fn nack_is_recorded_and_not_answered_with_a_resend() {
    let h = start(mesh(5, &["c-1"], None)).await;
    let mut c = connect(h.addr).await;
    let lds = c
        .subscribe(LISTENER_TYPE, &[], Some(node("catalog", "c-1", "9000")))
        .await;

    let mut nack = request(LISTENER_TYPE, &[], None);
    nack.response_nonce = lds.nonce.clone();
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "listener outbound: unsupported filter".into(),
        details: vec![],
    });
    c.send(nack).await;
    eventually(&h.proxies, "NACK", |l| {
        l.len() == 1
            && l[0].last_nack.as_ref().is_some_and(|n| {
                n.type_name == "Listener"
                    && n.version == "5"
                    && n.message == "listener outbound: unsupported filter"
            })
    })
    .await;
    assert!(!h.proxies.list()[0].acked.contains_key("Listener"));

    // An unknown type is ignored; the next response is the CDS one, not an LDS resend.
    c.send(request("type.googleapis.com/example.Unknown", &[], None))
        .await;
    let next = c.subscribe(CLUSTER_TYPE, &[], None).await;
    assert_eq!(next.version_info, "5");
}

#[tokio::test]
async fn first_request_without_node_is_rejected() {
    let h = start(mesh(1, &[], None)).await;
    let mut c = connect(h.addr).await;
    c.send(request(LISTENER_TYPE, &[], None)).await;
    let err = tokio::time::timeout(WAIT, c.responses.message())
        .await
        .expect("answer in time")
        .expect_err("stream fails");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());
    eventually(&h.proxies, "no proxy recorded", |l| l.is_empty()).await;
}

#[tokio::test]
async fn delta_xds_is_unimplemented() {
    let h = start(mesh(1, &[], None)).await;
    let mut client = grpc_client(h.addr).await;
    let reqs = tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]);
    let result = tokio::time::timeout(WAIT, client.delta_aggregated_resources(reqs))
        .await
        .expect("answer in time");
    match result {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unimplemented),
        Ok(_) => panic!("delta xDS should be unimplemented"),
    }
}
