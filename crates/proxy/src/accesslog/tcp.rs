//! Raw TCP connections in the access log: one record per connection, written when it ends
//! (or is refused), with the bytes each way and why Trellis closed it, if it did.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use http::uri::Authority;

use super::{AccessLog, Record, Upstream};
use crate::metrics::Direction;

/// A connection being logged; `None` from [`ConnLog::start`] when the log is off.
pub(crate) struct ConnLog {
    record: Record,
    begun: Instant,
    log: Arc<AccessLog>,
}

impl ConnLog {
    pub fn start(
        log: Option<&Arc<AccessLog>>,
        direction: Direction,
        downstream: SocketAddr,
        peer_id: Option<&Arc<str>>,
    ) -> Option<Self> {
        let log = log?.clone();
        let mut record = Record::new(direction, "tcp", downstream);
        record.peer_id = peer_id.cloned();
        Some(ConnLog {
            record,
            begun: Instant::now(),
            log,
        })
    }

    /// Notes the cluster and endpoint the connection goes to.
    pub fn upstream(&mut self, cluster: &Arc<str>, host: Option<&Authority>) {
        self.record.upstream = Some(Upstream {
            cluster: cluster.clone(),
            host: host.cloned(),
        });
    }

    /// Writes the record: `reason` when Trellis refused or closed the connection, the bytes
    /// from and to the downstream.
    pub fn finish(mut self, reason: Option<&'static str>, received: u64, sent: u64) {
        let r = &mut self.record;
        r.reason = reason.map(HeaderValue::from_static);
        r.bytes_received = Some(received);
        r.bytes_sent = sent;
        r.duration = self.begun.elapsed();
        self.log.log(self.record);
    }
}
