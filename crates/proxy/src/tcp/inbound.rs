//! The inbound side of a raw TCP connection, after crate::mtls::accept: authorize the caller
//! once (the service's network RBAC, crate::authz::ConnectionPolicy), then copy to the app.
//! Refusals close the connection before a byte is read or the app is connected.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use http::uri::Authority;

use super::relay;
use crate::accesslog::ConnLog;
use crate::authz::Decision;
use crate::metrics::{Direction, TcpResult};
use crate::security::InboundSecurity;
use crate::shared::Shared;

/// Connect timeout to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What to do with one raw inbound connection: a pure decision over the live config.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Forward,
    Refuse(TcpResult, &'static str, Option<Arc<str>>),
}

/// `security`: this service's inbound config (`None` before the first one arrived).
pub(crate) fn decide(security: Option<&InboundSecurity>, peer_id: Option<&str>) -> Verdict {
    let Some(security) = security else {
        return Verdict::Refuse(TcpResult::NotReady, "no inbound config yet", None);
    };
    let Some(policy) = &security.tcp else {
        return Verdict::Refuse(
            TcpResult::NotTcp,
            "a raw TCP stream (ALPN trellis-tcp) to a service that is not `protocol: tcp`",
            None,
        );
    };
    match policy.evaluate(peer_id) {
        Decision::Allow => Verdict::Forward,
        Decision::Deny { reason, policy } => Verdict::Refuse(TcpResult::Denied, reason, policy),
    }
}

/// Serves one accepted (and, for mTLS, handshaken) connection.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    peer_id: Option<Arc<str>>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service: Arc<str> = Arc::from(shared.config.service.as_str());
    let metrics = &shared.metrics.tcp;
    let mut log = ConnLog::start(
        shared.access_log.as_ref(),
        Direction::Inbound,
        peer,
        peer_id.as_ref(),
    );
    let (verdict, idle) = {
        let snap = shared.live.load();
        let security = snap.inbound.as_deref();
        (
            decide(security, peer_id.as_deref()),
            crate::idle::effective(security.and_then(|s| s.idle_timeout)),
        )
    };
    let refused = |result: TcpResult, log: Option<ConnLog>| {
        metrics.connection(Direction::Inbound, &service, result);
        if let Some(log) = log {
            log.finish(Some(result.as_str()), 0, 0);
        }
    };
    if let Verdict::Refuse(result, reason, policy) = verdict {
        refused(result, log);
        tracing::debug!(
            %peer,
            peer_id = peer_id.as_deref().unwrap_or("-"),
            policy = policy.as_deref().unwrap_or("-"),
            reason,
            result = result.as_str(),
            "tcp connection refused"
        );
        return;
    }
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, shared.config.app_port));
    if let Some(log) = &mut log {
        log.upstream(
            &inbound_cluster(&shared),
            Authority::try_from(app.to_string()).ok().as_ref(),
        );
    }
    let upstream = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            refused(TcpResult::ConnectFailed, log);
            tracing::debug!(%peer, %app, error = %e, "tcp: the local app is unavailable");
            return;
        }
        Err(_) => {
            refused(TcpResult::ConnectFailed, log);
            tracing::debug!(%peer, %app, "tcp: connecting to the local app timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    metrics.connection(Direction::Inbound, &service, TcpResult::Forwarded);
    let relayed = relay(
        stream,
        upstream,
        idle,
        &shared.metrics,
        Direction::Inbound,
        &service,
    )
    .await;
    if let Some(log) = log {
        let reason = relayed.idle.then_some(super::IDLE_TIMEOUT_REASON);
        log.finish(reason, relayed.up, relayed.down);
    }
}

/// The name of the local app's cluster, `inbound|<app-port>` (as in the xDS config).
fn inbound_cluster(shared: &Shared) -> Arc<str> {
    Arc::from(trellis_model::wire::inbound_cluster_name(
        shared.config.app_port,
    ))
}
