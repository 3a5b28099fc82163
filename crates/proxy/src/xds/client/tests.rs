//! The ADS client against a scripted ADS server over a real tonic stream: the test decides
//! every response and checks every ACK/NACK the client sends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use trellis_model::Protocol;

use super::*;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;

/// Forwards every request to the test; streams the responses the test sends.
struct Scripted {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Mutex<Option<mpsc::Receiver<Result<DiscoveryResponse, tonic::Status>>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream =
        Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let forward = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                if forward.send(r).await.is_err() {
                    return;
                }
            }
        });
        let rx = self
            .responses
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .take()
            .ok_or_else(|| tonic::Status::unavailable("one stream only"))?;
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("delta"))
    }
}

fn config() -> crate::config::ProxyConfig {
    let local: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    crate::config::ProxyConfig {
        service: "frontend".into(),
        instance_id: "frontend-1".into(),
        app_port: 8080,
        app_protocol: Protocol::Http,
        control_url: "http://127.0.0.1:1".into(),
        control_ca: None,
        admin_addr: local,
        outbound_addr: local,
        inbound_addr: local,
        advertise_ip: "127.0.0.1".parse().expect("ip"),
        labels: Default::default(),
        zone: None,
        weight: 1,
        ttl: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(1),
        request_head_timeout: Duration::from_secs(30),
        join_token: None,
        trust_bundle_refresh: std::time::Duration::from_secs(60),
        upstreams: Vec::new(),
        health_check: None,
        access_log: None,
    }
}

fn cluster(name: &str, policy: LbPolicy) -> Any {
    pack_any(Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        lb_policy: policy as i32,
        ..Default::default()
    })
}

fn response(type_url: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

async fn next(rx: &mut mpsc::Receiver<DiscoveryRequest>) -> DiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a request within 10s")
        .expect("stream open")
}

#[tokio::test]
async fn subscribes_nacks_invalid_updates_and_acks_valid_ones() {
    let (req_tx, mut requests) = mpsc::channel(16);
    let (resp_tx, resp_rx) = mpsc::channel(16);
    let server = Scripted {
        requests: req_tx,
        responses: Mutex::new(Some(resp_rx)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let shared = Arc::new(Shared::new(config()));
    let client = tokio::spawn(run(shared.clone(), addr.to_string(), crate::balance::build));

    // Initial subscriptions, with the node on each.
    let mut initial = Vec::new();
    for _ in 0..3 {
        let r = next(&mut requests).await;
        let node = r.node.as_ref().expect("node");
        assert_eq!(node.id, "frontend~frontend-1");
        assert_eq!(node.cluster, "frontend");
        let meta = &node.metadata.as_ref().expect("metadata").fields;
        assert!(matches!(
            meta.get(wire::NODE_APP_PORT).and_then(|v| v.kind.as_ref()),
            Some(Kind::StringValue(p)) if p == "8080"
        ));
        initial.push((r.type_url.clone(), r.resource_names.clone()));
    }
    initial.sort();
    assert_eq!(
        initial,
        vec![
            (CLUSTER_TYPE.to_string(), vec![]),
            (LISTENER_TYPE.to_string(), vec![]),
            (ROUTE_TYPE.to_string(), vec!["outbound".to_string()]),
        ]
    );

    // An invalid cluster: NACK naming it, nothing applied.
    resp_tx
        .send(Ok(response(
            CLUSTER_TYPE,
            "1",
            "n1",
            vec![
                cluster("catalog", LbPolicy::RoundRobin),
                cluster("bad", LbPolicy::ClusterProvided),
            ],
        )))
        .await
        .expect("send");
    let nack = next(&mut requests).await;
    assert_eq!(nack.type_url, CLUSTER_TYPE);
    assert_eq!(nack.response_nonce, "n1");
    assert_eq!(nack.version_info, "", "no version accepted yet");
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("Cluster `bad`"),
        "{}",
        detail.message
    );
    assert!(shared.live.load().clusters.is_empty());

    // A valid one: ACK, then an EDS subscription for the new cluster.
    resp_tx
        .send(Ok(response(
            CLUSTER_TYPE,
            "2",
            "n2",
            vec![cluster("catalog", LbPolicy::Random)],
        )))
        .await
        .expect("send");
    let ack = next(&mut requests).await;
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.version_info.as_str(),
            ack.response_nonce.as_str()
        ),
        (CLUSTER_TYPE, "2", "n2")
    );
    assert!(ack.error_detail.is_none());
    let eds = next(&mut requests).await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    assert_eq!(eds.resource_names, vec!["catalog".to_string()]);
    assert!(shared.live.load().clusters.contains_key("catalog"));

    // Another invalid update keeps version 2 and the live cluster.
    resp_tx
        .send(Ok(response(
            CLUSTER_TYPE,
            "3",
            "n3",
            vec![cluster("catalog", LbPolicy::LoadBalancingPolicyConfig)],
        )))
        .await
        .expect("send");
    let nack = next(&mut requests).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("2", "n3")
    );
    assert!(nack.error_detail.is_some());
    let live = shared.live.load();
    assert_eq!(
        live.clusters["catalog"].algorithm,
        crate::balance::Algorithm::Random
    );
    let status = shared.status.get();
    assert_eq!(
        status.accepted_versions.get("cluster").map(String::as_str),
        Some("2")
    );
    assert!(status.last_nack.is_some_and(|n| n.version == "3"));
    client.abort();
}
