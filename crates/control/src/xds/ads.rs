//! The ADS gRPC server: state-of-the-world xDS over one aggregated stream per proxy
//! (docs/XDS.md, "Versions, ACK and NACK").
//!
//! Each stream runs one task that owns its state (subscriptions, last sent version and nonce
//! per type) and reacts to three things: a request from the proxy, a new mesh snapshot, and
//! the proxy going away. Responses go out through an mpsc channel.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::proxies::{Nack, ProxyTable};
use super::resources::{Resources, TYPE_URLS, is_wildcard_type, same_content, short_name};
use super::translate::{NodeInfo, resources_for};
use crate::snapshot::MeshSnapshot;

/// Responses buffered per stream before the stream task waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;

/// The `AggregatedDiscoveryService` implementation.
#[derive(Debug, Clone)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    proxies: ProxyTable,
    next_stream_id: Arc<AtomicU64>,
}

/// The gRPC service to mount on the control plane's gRPC port.
pub fn ads_server(
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    proxies: ProxyTable,
) -> AggregatedDiscoveryServiceServer<AdsServer> {
    AggregatedDiscoveryServiceServer::new(AdsServer {
        snapshots,
        proxies,
        next_stream_id: Arc::new(AtomicU64::new(1)),
    })
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let stream = AdsStream {
            id: self.next_stream_id.fetch_add(1, Ordering::Relaxed),
            peer,
            tx,
            snapshots: self.snapshots.clone(),
            proxies: self.proxies.clone(),
            node: None,
            resources: Resources::default(),
            version: 0,
            types: BTreeMap::new(),
            nonce: 0,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "delta xDS is not supported: use state-of-the-world StreamAggregatedResources",
        ))
    }
}

/// Per type URL: what the proxy subscribed to and what it was last sent.
#[derive(Debug, Default)]
struct TypeState {
    /// Requested names, sorted; empty means wildcard for LDS/CDS.
    names: Vec<String>,
    /// Version and nonce of the last response; `None` before the first.
    sent: Option<(String, String)>,
    /// The resources last sent, to skip pushes that change nothing.
    sent_resources: Vec<(String, Any)>,
}

/// Why a stream ends.
enum End {
    /// The proxy closed its side or went away.
    Gone,
    /// The proxy sent something unusable; the stream ends with this status.
    Fail(Status),
}

struct AdsStream {
    id: u64,
    peer: String,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    proxies: ProxyTable,
    node: Option<NodeInfo>,
    /// Resources for this node from the snapshot of version `version`.
    resources: Resources,
    version: u64,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
}

impl AdsStream {
    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
        let end = loop {
            let step = tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => self.on_request(req).await,
                    Ok(None) => Err(End::Gone),
                    Err(status) => {
                        debug!(stream = self.id, %status, "ADS request stream failed");
                        Err(End::Gone)
                    }
                },
                changed = self.snapshots.changed() => match changed {
                    Ok(()) => self.on_snapshot().await,
                    // The publisher only goes away when the control plane shuts down: end the
                    // stream so the proxy reconnects (to this plane once back, or a replica).
                    Err(_) => Err(End::Fail(Status::unavailable("control plane is shutting down"))),
                },
                () = self.tx.closed() => Err(End::Gone),
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Fail(status) = end {
            warn!(stream = self.id, peer = %self.peer, %status, "closing ADS stream");
            // The proxy may be gone already; nothing more to do then.
            let _ = self.tx.send(Err(status)).await;
        }
        if let Some(node) = &self.node {
            info!(stream = self.id, node = %node.id, peer = %self.peer, "proxy disconnected");
        }
        self.proxies.remove(self.id);
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), End> {
        if self.node.is_none() {
            self.identify(&req)?;
        }
        let Some(short) = short_name(&req.type_url) else {
            debug!(stream = self.id, type_url = %req.type_url, "ignoring unknown xDS type");
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            let last = self.types.get(&req.type_url).and_then(|s| s.sent.clone());
            match last {
                Some((version, nonce)) if nonce == req.response_nonce => {
                    self.on_reply(short, &version, &req);
                }
                // A reply to an older response: a newer one is on its way to the proxy.
                Some(_) => return Ok(()),
                // A nonce from an earlier stream: this is a fresh subscription here.
                None => {}
            }
        }
        let mut names = req.resource_names.clone();
        names.sort();
        names.dedup();
        let state = self.types.entry(req.type_url.clone()).or_default();
        if state.sent.is_none() || state.names != names {
            state.names = names;
            self.send(&req.type_url, false).await?;
        }
        Ok(())
    }

    /// Handles the first request: reads and records the node, computes its resources.
    fn identify(&mut self, req: &DiscoveryRequest) -> Result<(), End> {
        let node = req.node.as_ref().ok_or_else(|| {
            End::Fail(Status::invalid_argument(
                "the first DiscoveryRequest on a stream must carry `node` (id, cluster, metadata)",
            ))
        })?;
        let node = NodeInfo::from_node(node)
            .map_err(|e| End::Fail(Status::invalid_argument(e.to_string())))?;
        info!(stream = self.id, node = %node.id, service = %node.service, peer = %self.peer,
            "proxy connected");
        let now = now_ms();
        self.proxies.update(self.id, |p| {
            p.node_id = node.id.clone();
            p.service = node.service.clone();
            p.instance_id = node.instance_id.clone();
            p.peer = self.peer.clone();
            p.connected_at_ms = now;
        });
        let snapshot = self.snapshots.borrow_and_update().clone();
        self.resources = resources_for(&snapshot, &node);
        self.version = snapshot.version;
        self.node = Some(node);
        Ok(())
    }

    /// An ACK or NACK of the last response of a type.
    fn on_reply(&mut self, short: &str, sent_version: &str, req: &DiscoveryRequest) {
        match &req.error_detail {
            Some(err) => {
                warn!(stream = self.id, node = %self.node_id(), type_name = short,
                    version = sent_version, error = %err.message, "proxy rejected config (NACK)");
                let nack = Nack {
                    type_name: short.to_string(),
                    version: sent_version.to_string(),
                    message: err.message.clone(),
                    at_ms: now_ms(),
                };
                self.proxies.update(self.id, |p| p.last_nack = Some(nack));
            }
            None => {
                debug!(stream = self.id, type_name = short, version = %req.version_info, "ACK");
                let version = if req.version_info.is_empty() {
                    sent_version.to_string()
                } else {
                    req.version_info.clone()
                };
                self.proxies.update(self.id, |p| {
                    p.acked.insert(short.to_string(), version);
                });
            }
        }
    }

    async fn on_snapshot(&mut self) -> Result<(), End> {
        let snapshot = self.snapshots.borrow_and_update().clone();
        let Some(node) = &self.node else {
            return Ok(());
        };
        self.resources = resources_for(&snapshot, node);
        self.version = snapshot.version;
        for type_url in TYPE_URLS {
            if self.types.get(type_url).is_some_and(|s| s.sent.is_some()) {
                self.send(type_url, true).await?;
            }
        }
        Ok(())
    }

    /// Sends every subscribed resource of a type; with `only_if_changed`, only when they
    /// differ from what was last sent.
    async fn send(&mut self, type_url: &str, only_if_changed: bool) -> Result<(), End> {
        let state = self.types.entry(type_url.to_string()).or_default();
        let wildcard = is_wildcard_type(type_url)
            && (state.names.is_empty() || state.names.iter().any(|n| n == "*"));
        let selected = self.resources.select(type_url, &state.names, wildcard);
        if only_if_changed && same_content(type_url, &selected, &state.sent_resources) {
            return Ok(());
        }
        self.nonce += 1;
        let version = self.version.to_string();
        let nonce = self.nonce.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: selected.iter().map(|(_, any)| any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        debug!(stream = self.id, type_url, version = %version, nonce = %nonce,
            count = selected.len(), "sending");
        state.sent = Some((version.clone(), nonce));
        state.sent_resources = selected;
        self.tx.send(Ok(response)).await.map_err(|_| End::Gone)?;
        if let Some(short) = short_name(type_url) {
            self.proxies.update(self.id, |p| {
                p.sent.insert(short.to_string(), version);
            });
        }
        Ok(())
    }

    fn node_id(&self) -> &str {
        self.node.as_ref().map(|n| n.id.as_str()).unwrap_or("")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
