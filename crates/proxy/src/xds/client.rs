//! The ADS client: one aggregated state-of-the-world stream to the control plane, subscribing
//! Listener and Cluster (wildcard), RouteConfiguration `outbound` and the ClusterLoadAssignment
//! of every EDS cluster. Each response is translated as a whole; valid → ACK and a new live
//! snapshot, invalid → NACK naming the bad resources and the last good config stays. The
//! stream reconnects forever with capped jittered backoff; meanwhile the proxy keeps serving
//! its last accepted config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trellis_model::wire;

use super::state::XdsState;
use super::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, short_type};
use crate::backoff::Backoff;
use crate::shared::Shared;
use crate::status::Nack;
use crate::upstream::BalancerFactory;

/// Per-type subscription bookkeeping.
#[derive(Debug, Default, Clone)]
struct TypeState {
    names: Vec<String>,
    accepted_version: String,
    nonce: String,
}

/// Runs the ADS client until the task is aborted.
pub(crate) async fn run(shared: Arc<Shared>, xds_addr: String, build: BalancerFactory) {
    let mut state = XdsState::new(build);
    let mut types: HashMap<&'static str, TypeState> = HashMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let node = node(&shared);
    loop {
        let result = session(&shared, &node, &xds_addr, &mut state, &mut types).await;
        shared.status.update(|s| {
            s.xds_connected = false;
            s.xds_error = Some(match &result {
                Ok(()) => "the control plane closed the xDS stream".to_string(),
                Err(e) => e.clone(),
            });
        });
        match result {
            // A stream that worked: start over quickly.
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(xds_addr, error = %e, "xDS stream failed; keeping the last accepted config")
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn node(shared: &Shared) -> Node {
    let c = &shared.config;
    let s = |v: String| Value {
        kind: Some(Kind::StringValue(v)),
    };
    let mut fields = HashMap::new();
    fields.insert(wire::NODE_SERVICE.to_string(), s(c.service.clone()));
    fields.insert(wire::NODE_INSTANCE_ID.to_string(), s(c.instance_id.clone()));
    fields.insert(wire::NODE_APP_PORT.to_string(), s(c.app_port.to_string()));
    fields.insert(
        wire::NODE_OUTBOUND_PORT.to_string(),
        s(c.outbound_addr.port().to_string()),
    );
    fields.insert(
        wire::NODE_INBOUND_PORT.to_string(),
        s(c.inbound_addr.port().to_string()),
    );
    if let Some(tls) = shared.tls.get() {
        fields.insert(
            wire::NODE_IDENTITY.to_string(),
            s(tls.identity.spiffe_id().to_string()),
        );
    }
    Node {
        id: c.node_id(),
        cluster: c.service.clone(),
        metadata: Some(Struct { fields }),
        locality: c.zone.as_ref().map(|zone| Locality {
            zone: zone.clone(),
            ..Default::default()
        }),
        user_agent_name: "trellis-proxy".to_string(),
        ..Default::default()
    }
}

fn request(node: &Node, type_url: &str, t: &TypeState) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: t.accepted_version.clone(),
        node: Some(node.clone()),
        resource_names: t.names.clone(),
        type_url: type_url.to_string(),
        response_nonce: t.nonce.clone(),
        ..Default::default()
    }
}

async fn session(
    shared: &Arc<Shared>,
    node: &Node,
    xds_addr: &str,
    state: &mut XdsState,
    types: &mut HashMap<&'static str, TypeState>,
) -> Result<(), String> {
    // Built per session: the control plane's roots are read again on every reconnect.
    let endpoint = shared.control.xds_endpoint(xds_addr)?;
    let url = endpoint.uri().to_string();
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot connect to xDS at {url}: {}",
            crate::outbound::error_chain(&e)
        )
    })?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);

    // Initial subscriptions; on reconnect they carry the last accepted versions, no nonce.
    types.entry(ROUTE_TYPE).or_default().names = vec![wire::OUTBOUND.to_string()];
    types.entry(ENDPOINT_TYPE).or_default().names = state.eds_names();
    for t in types.values_mut() {
        t.nonce.clear();
    }
    let mut initial = vec![LISTENER_TYPE, CLUSTER_TYPE, ROUTE_TYPE];
    if !types[ENDPOINT_TYPE].names.is_empty() {
        initial.push(ENDPOINT_TYPE);
    }
    for type_url in initial {
        let t = types.entry(type_url).or_default();
        // The channel has room for these; the stream has not started yet.
        let _ = tx.try_send(request(node, type_url, t));
    }
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("ADS stream refused by {url}: {e}"))?
        .into_inner();
    shared.status.update(|s| {
        s.xds_connected = true;
        s.xds_error = None;
    });
    tracing::info!(%url, node = %node.id, "xDS stream open");

    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("xDS stream error: {e}")),
        };
        for req in handle_response(shared, node, state, types, resp) {
            if tx.send(req).await.is_err() {
                return Err("xDS request channel closed".to_string());
            }
        }
    }
}

/// Applies one response and returns the requests to send (ACK/NACK, then any subscription
/// change it causes).
fn handle_response(
    shared: &Arc<Shared>,
    node: &Node,
    state: &mut XdsState,
    types: &mut HashMap<&'static str, TypeState>,
    resp: DiscoveryResponse,
) -> Vec<DiscoveryRequest> {
    let Some(type_url) = [LISTENER_TYPE, CLUSTER_TYPE, ROUTE_TYPE, ENDPOINT_TYPE]
        .into_iter()
        .find(|t| *t == resp.type_url)
    else {
        tracing::warn!(type_url = %resp.type_url, "ignoring a response of a type never requested");
        return Vec::new();
    };
    let short = short_type(type_url);
    let mut out = Vec::with_capacity(2);
    let result = state.apply(type_url, &resp.resources, &shared.metrics);
    shared.metrics.xds_update(type_url, result.is_ok());
    let t = types.entry(type_url).or_default();
    t.nonce = resp.nonce.clone();
    match result {
        Ok(()) => {
            t.accepted_version = resp.version_info.clone();
            out.push(request(node, type_url, t));
            let previous = shared.live.load();
            let next = state.snapshot(&previous, &shared.clients);
            let mode = next.inbound.as_ref().map(|i| i.mode);
            if mode != previous.inbound.as_ref().map(|i| i.mode) {
                tracing::info!(
                    mode = mode.map_or("none", |m| m.as_str()),
                    "inbound mTLS mode"
                );
            }
            shared
                .metrics
                .tls
                .set_inbound_mode(mode.map(|m| m.as_str()));
            let next = Arc::new(next);
            shared.publish(next.clone());
            shared.prober.sync(&next, shared);
            let complete = state.complete();
            shared.status.update(|s| {
                s.accepted_versions.insert(short, resp.version_info.clone());
                s.config_complete |= complete;
            });
            tracing::debug!(r#type = short, version = %resp.version_info, "xDS update accepted");
        }
        Err(message) => {
            tracing::warn!(r#type = short, version = %resp.version_info, %message, "xDS update rejected (NACK)");
            let mut nack = request(node, type_url, t);
            nack.error_detail = Some(RpcStatus {
                code: 3, // INVALID_ARGUMENT
                message: message.clone(),
                details: Vec::new(),
            });
            out.push(nack);
            shared.status.update(|s| {
                s.last_nack = Some(Nack {
                    r#type: short,
                    version: resp.version_info.clone(),
                    message,
                });
            });
        }
    }
    if type_url == CLUSTER_TYPE {
        let names = state.eds_names();
        let eds = types.entry(ENDPOINT_TYPE).or_default();
        if eds.names != names {
            eds.names = names;
            out.push(request(node, ENDPOINT_TYPE, eds));
        }
    }
    out
}

#[cfg(test)]
mod tests;
