//! Shared end-to-end setup: a backend instance behind its own sidecar, reading a proxy's
//! config dump, and waiting until traffic reaches exactly an expected set of instances.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::backend::EchoServer;
use crate::client::{Client, Req};
use crate::log::TestLog;
use crate::sidecar::{Sidecar, SidecarOpts};
use crate::wait::wait_for;

/// An echo backend and its sidecar; the instance id is the backend's name, so `x-instance`
/// on an answer names the instance.
pub struct Instance {
    pub backend: EchoServer,
    pub sidecar: Sidecar,
}

impl Instance {
    pub async fn start(
        bin: impl AsRef<Path>,
        log: &TestLog,
        control_url: &str,
        service: &str,
        id: &str,
        latency: Duration,
        opts: SidecarOpts,
    ) -> anyhow::Result<Self> {
        let backend = EchoServer::start_with_latency(id, latency).await?;
        let sidecar =
            Sidecar::start(bin, log, control_url, service, backend.port(), opts.id(id)).await?;
        Ok(Self { backend, sidecar })
    }

    pub fn id(&self) -> &str {
        self.backend.name()
    }
}

/// The calling side of a test mesh: service `client` (instance `client-1` unless `opts`
/// names another; [`Caller::of`] for another service), an echo app behind its sidecar, and an HTTP client to the sidecar's
/// outbound listener.
pub struct Caller {
    pub sidecar: Sidecar,
    pub client: Client,
    pub app: EchoServer,
}

impl Caller {
    pub async fn start(
        bin: impl AsRef<Path>,
        log: &TestLog,
        control_url: &str,
        opts: SidecarOpts,
    ) -> anyhow::Result<Self> {
        Self::of(bin, log, control_url, "client", opts).await
    }

    /// The same for service `service`: app `<service>-app`, instance `<service>-1` unless
    /// `opts` names another.
    pub async fn of(
        bin: impl AsRef<Path>,
        log: &TestLog,
        control_url: &str,
        service: &str,
        opts: SidecarOpts,
    ) -> anyhow::Result<Self> {
        let app = EchoServer::start(&format!("{service}-app")).await?;
        let opts = if opts.instance_id.is_none() {
            opts.id(&format!("{service}-1"))
        } else {
            opts
        };
        let sidecar = Sidecar::start(bin, log, control_url, service, app.port(), opts).await?;
        let client = Client::new(sidecar.outbound());
        Ok(Self {
            sidecar,
            client,
            app,
        })
    }
}

/// Cluster `name` of a `/config_dump`.
pub fn dump_cluster<'a>(dump: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    dump.get("clusters")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(name))
}

/// The algorithm (its debug form, e.g. `RingHash { min_ring_size: 1024 }`) of a cluster.
pub fn dump_algorithm(dump: &serde_json::Value, cluster: &str) -> Option<String> {
    dump_cluster(dump, cluster)?
        .get("algorithm")?
        .as_str()
        .map(str::to_string)
}

/// The instance ids of a cluster's endpoints.
pub fn dump_endpoints(dump: &serde_json::Value, cluster: &str) -> BTreeSet<String> {
    dump_cluster(dump, cluster)
        .and_then(|c| c.get("endpoints")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("instance_id")?.as_str().map(str::to_string))
        .collect()
}

/// Sends batches of requests (each with a different `x-user`, so hashing balancers spread
/// them) until one batch succeeds completely and is answered by exactly `expected`.
pub async fn wait_for_traffic_to(
    client: &Client,
    service: &str,
    expected: &[&str],
    deadline: Duration,
) -> anyhow::Result<()> {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let what = format!("traffic to `{service}` to reach exactly {expected:?}");
    let mut round = 0usize;
    wait_for(deadline, &what, || {
        round += 1;
        let (client, service, expected) = (*client, service.to_string(), expected.clone());
        let base = round * 1000;
        async move {
            let out = client
                .run(40, 4, move |i| {
                    Req::get(&service, "/probe").header("x-user", &format!("probe-{}", base + i))
                })
                .await;
            let seen: BTreeSet<String> = out.per_instance().into_keys().collect();
            if out.failures().is_empty() && seen == expected {
                Ok(())
            } else {
                Err(out.summary())
            }
        }
    })
    .await
}
