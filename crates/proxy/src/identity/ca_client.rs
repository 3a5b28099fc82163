//! The control plane's CA endpoints, as the sidecar calls them: `POST /v1/certificates` with
//! the join token as Bearer, and `GET /v1/trust-bundle`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::IdentityError;
use crate::control_tls::{ControlHttp, ControlTrust};

/// How long one CA request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /v1/certificates` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct SignedCert {
    /// PEM: the leaf first (then intermediates, if any).
    pub certificate_chain: String,
    /// PEM: every root of the trust bundle.
    pub trust_bundle: String,
    pub spiffe_id: String,
    pub not_after_ms: u64,
}

#[derive(Debug, Deserialize)]
struct BundleAnswer {
    trust_bundle: String,
}

/// A client of the control plane's CA endpoints, holding the join token. Cheap to clone.
#[derive(Clone)]
pub struct CaClient {
    http: ControlHttp,
    base: String,
    token: String,
}

impl fmt::Debug for CaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("CaClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// `control_url` is the control plane's plaintext HTTP API (`http://127.0.0.1:7070`);
    /// `join_token` comes from `trellis token create`.
    pub fn new(control_url: &str, join_token: &str) -> Result<Self, IdentityError> {
        Self::with_trust(control_url, join_token, ControlTrust::unchecked(None))
    }

    /// [`CaClient::new`] for a control plane verified as `trust` says (https).
    pub fn with_trust(
        control_url: &str,
        join_token: &str,
        trust: ControlTrust,
    ) -> Result<Self, IdentityError> {
        let base = control_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(IdentityError::Material(format!(
                "control plane URL `{control_url}`: must start with http:// or https://"
            )));
        }
        let token = join_token.trim().to_string();
        if token.is_empty() {
            return Err(IdentityError::Material(
                "join token: empty; create one with `trellis token create --service <name>`"
                    .to_string(),
            ));
        }
        let http = ControlHttp::new(trust, REQUEST_TIMEOUT, REQUEST_TIMEOUT)
            .map_err(IdentityError::Material)?;
        Ok(CaClient { http, base, token })
    }

    /// The control plane's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Asks the CA to sign `csr_pem` (PEM PKCS#10) for the token's identity.
    pub async fn sign(&self, csr_pem: &str) -> Result<SignedCert, IdentityError> {
        let url = format!("{}/v1/certificates", self.base);
        let req = self
            .http
            .get()
            .post(&url)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "csr": csr_pem }));
        self.call(&url, req).await
    }

    /// The current trust bundle (PEM).
    pub async fn trust_bundle(&self) -> Result<String, IdentityError> {
        let url = format!("{}/v1/trust-bundle", self.base);
        let answer: BundleAnswer = self.call(&url, self.http.get().get(&url)).await?;
        Ok(answer.trust_bundle)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, IdentityError> {
        let control = |reason: String| IdentityError::Control {
            url: url.to_string(),
            reason,
        };
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                self.http.refresh();
                return Err(control(crate::outbound::error_chain(&e)));
            }
        };
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| control(format!("reading the answer: {e}")))?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(IdentityError::Unauthorized {
                url: url.to_string(),
                message: body,
            });
        }
        if !status.is_success() {
            return Err(control(format!("HTTP {status}: {body}")));
        }
        serde_json::from_str(&body).map_err(|e| control(format!("unexpected answer: {e}")))
    }
}
