//! Registration with the control plane's HTTP API (docs/API.md): bootstrap (learn the xDS
//! address), register this instance with its bound inbound port (and its SPIFFE ID when it has
//! a certificate), heartbeat every TTL/3,
//! register again on 404, and deregister on shutdown. The control plane may be down at any
//! time; every call is retried with capped jittered backoff while the proxy keeps serving.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use trellis_model::{CheckReport, Heartbeat, InstanceRegistration};

use crate::backoff::Backoff;
use crate::control_tls::ControlHttp;
use crate::shared::Shared;

#[derive(Debug, Clone)]
pub(crate) struct Registrar {
    shared: Arc<Shared>,
    http: ControlHttp,
    base: String,
    /// The app health check's verdict (crate::health), when `--health-check` is set: sent with
    /// the registration and every heartbeat, and a change triggers a heartbeat at once.
    check: Option<watch::Receiver<CheckReport>>,
}

#[derive(Deserialize)]
struct Bootstrap {
    xds_addr: String,
}

impl Registrar {
    pub fn new(
        shared: Arc<Shared>,
        check: Option<watch::Receiver<CheckReport>>,
    ) -> anyhow::Result<Self> {
        let http = ControlHttp::new(
            shared.control.clone(),
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .map_err(anyhow::Error::msg)?;
        let base = shared.config.control_url.trim_end_matches('/').to_string();
        Ok(Registrar {
            shared,
            http,
            base,
            check,
        })
    }

    fn instance_url(&self) -> String {
        let c = &self.shared.config;
        format!("{}/v1/instances/{}/{}", self.base, c.service, c.instance_id)
    }

    fn registration(&self) -> InstanceRegistration {
        let c = &self.shared.config;
        InstanceRegistration {
            service: c.service.clone(),
            id: c.instance_id.clone(),
            address: c.advertise_ip.to_string(),
            port: c.inbound_addr.port(),
            protocol: c.app_protocol,
            labels: c.labels.clone(),
            zone: c.zone.clone(),
            weight: c.weight,
            ttl_ms: u64::try_from(c.ttl.as_millis()).unwrap_or(u64::MAX),
            // The SPIFFE ID of our certificate; the control plane then marks our endpoint as
            // serving mTLS (docs/XDS.md, "Security").
            identity: self
                .shared
                .tls
                .get()
                .map(|t| t.identity.spiffe_id().to_string()),
            check: self.check.as_ref().map(|c| c.borrow().clone()),
        }
    }

    /// Bootstraps (sending the xDS address on `xds`), then registers and heartbeats forever.
    pub async fn run(mut self, xds: oneshot::Sender<String>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let xds_addr = loop {
            match self.bootstrap().await {
                Ok(addr) => break addr,
                Err(e) => {
                    self.set_error(format!("bootstrap: {e}"));
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        };
        tracing::info!(%xds_addr, "bootstrapped from the control plane");
        self.shared
            .status
            .update(|s| s.xds_addr = Some(xds_addr.clone()));
        let _ = xds.send(xds_addr);
        let interval = (self.shared.config.ttl / 3).max(Duration::from_millis(30));
        loop {
            backoff.reset();
            while let Err(e) = self.register().await {
                self.set_error(format!("register: {e}"));
                tokio::time::sleep(backoff.next_delay()).await;
            }
            tracing::info!(
                service = %self.shared.config.service,
                instance = %self.shared.config.instance_id,
                port = self.shared.config.inbound_addr.port(),
                "registered with the control plane"
            );
            self.shared.status.update(|s| {
                s.registered = true;
                s.registration_error = None;
            });
            // Heartbeat until the control plane forgets us (404).
            loop {
                self.wait_for_heartbeat(interval).await;
                match self.heartbeat().await {
                    Ok(true) => self.shared.status.update(|s| s.registration_error = None),
                    Ok(false) => {
                        tracing::warn!(
                            "the control plane does not know this instance; registering again"
                        );
                        self.shared.status.update(|s| s.registered = false);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat failed; will retry");
                        self.shared
                            .status
                            .update(|s| s.registration_error = Some(format!("heartbeat: {e}")));
                    }
                }
            }
        }
    }

    /// Sleeps until the next heartbeat is due, or until the check's verdict changes.
    async fn wait_for_heartbeat(&mut self, interval: Duration) {
        let Some(rx) = self.check.as_mut() else {
            tokio::time::sleep(interval).await;
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    // The checker stopped (shutdown); keep the last verdict.
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }

    /// A failed call's message; the client is refreshed so the next call connects anew.
    fn failed(&self, method: &str, url: &str, e: &reqwest::Error) -> String {
        self.http.refresh();
        format!("{method} {url}: {}", crate::outbound::error_chain(e))
    }

    fn set_error(&self, e: String) {
        tracing::debug!(error = %e, control = %self.base, "control plane call failed; retrying");
        self.shared
            .status
            .update(|s| s.registration_error = Some(e));
    }

    async fn bootstrap(&self) -> Result<String, String> {
        let url = format!("{}/v1/bootstrap", self.base);
        let resp = self
            .http
            .get()
            .get(&url)
            .send()
            .await
            .map_err(|e| self.failed("GET", &url, &e))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        let b: Bootstrap = resp
            .json()
            .await
            .map_err(|e| format!("GET {url}: unexpected body (want {{\"xds_addr\": ...}}): {e}"))?;
        Ok(b.xds_addr)
    }

    async fn register(&self) -> Result<(), String> {
        let url = format!("{}/v1/instances", self.base);
        let resp = self
            .http
            .get()
            .post(&url)
            .json(&self.registration())
            .send()
            .await
            .map_err(|e| self.failed("POST", &url, &e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(format!("POST {url}: status {status}: {body}"))
    }

    /// `Ok(false)` when the control plane answers 404 (unknown instance).
    async fn heartbeat(&self) -> Result<bool, String> {
        let url = format!("{}/heartbeat", self.instance_url());
        let mut req = self.http.get().put(&url);
        if let Some(check) = &self.check {
            let report = check.borrow().clone();
            self.shared
                .status
                .update(|s| s.health_check = Some(report.clone()));
            req = req.json(&Heartbeat {
                check: Some(report),
            });
        }
        let resp = req.send().await.map_err(|e| self.failed("PUT", &url, &e))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => Err(format!("PUT {url}: status {s}")),
        }
    }

    /// Removes the registration (best effort, bounded by the client timeout).
    pub async fn deregister(&self) {
        let url = self.instance_url();
        match self.http.get().delete(&url).send().await {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
                tracing::info!("deregistered from the control plane");
            }
            Ok(r) => tracing::warn!(status = %r.status(), %url, "deregistration refused"),
            Err(e) => tracing::warn!(error = %e, %url, "deregistration failed"),
        }
    }
}
