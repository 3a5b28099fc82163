//! What the admin endpoints report about the control-plane connection: registration state,
//! accepted xDS versions and the last NACK. Written by the background tasks, read by admin;
//! never touched on the request path.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Status {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Inner {
    pub xds_addr: Option<String>,
    pub registered: bool,
    pub registration_error: Option<String>,
    pub xds_connected: bool,
    pub xds_error: Option<String>,
    /// Short type name → last accepted `version_info`.
    pub accepted_versions: BTreeMap<&'static str, String>,
    pub last_nack: Option<Nack>,
    /// Whether a complete config (listeners, clusters, routes, endpoints) has been applied.
    pub config_complete: bool,
    /// The app health check's verdict last sent to the control plane (`--health-check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<trellis_model::CheckReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Nack {
    pub r#type: &'static str,
    pub version: String,
    pub message: String,
}

impl Status {
    pub fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }

    pub fn get(&self) -> Inner {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `None` when ready to serve, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        let s = self.get();
        let mut why = Vec::new();
        if !s.config_complete {
            why.push(match (&s.xds_addr, &s.xds_error) {
                (None, _) => "waiting for the control plane's /v1/bootstrap".to_string(),
                (Some(_), Some(e)) => format!("no complete xDS config yet (last error: {e})"),
                (Some(_), None) => "no complete xDS config yet".to_string(),
            });
        }
        if !s.registered {
            why.push(match &s.registration_error {
                Some(e) => format!("not registered with the control plane: {e}"),
                None => "not registered with the control plane yet".to_string(),
            });
        }
        if why.is_empty() {
            None
        } else {
            Some(why.join("; "))
        }
    }
}
