//! Builds the live [`InboundSecurity`] from an accepted [`InboundConfig`], reusing what did not
//! change: an identical config keeps the same `Arc` (and with it every verifier's JWKS cache),
//! so a push that does not touch this service's mode or policies never refetches a JWKS.

use std::sync::Arc;

use crate::authn::{Authenticator, JwksOptions};
use crate::authz::PolicySet;
use crate::security::InboundSecurity;
use crate::xds::security::InboundConfig;

pub(crate) struct SecurityBuilder {
    /// One HTTP client for every JWKS / introspection fetch of the process, made on first use.
    client: Option<reqwest::Client>,
    jwks: JwksOptions,
    /// The last config built and what it built.
    last: Option<(InboundConfig, Arc<InboundSecurity>)>,
}

impl std::fmt::Debug for SecurityBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityBuilder")
            .field("last", &self.last.as_ref().map(|(c, _)| c))
            .finish_non_exhaustive()
    }
}

impl SecurityBuilder {
    pub fn new(jwks: JwksOptions) -> Self {
        SecurityBuilder {
            client: None,
            jwks,
            last: None,
        }
    }

    /// The security for `config`: the previous one when the config is unchanged, else freshly
    /// compiled. `Err` (a RequestAuthentication whose rules cannot be built) leaves the
    /// previous one in place.
    pub fn build(&mut self, config: &InboundConfig) -> Result<Arc<InboundSecurity>, String> {
        if let Some((last, built)) = &self.last
            && last == config
        {
            return Ok(built.clone());
        }
        let authn = if config.authn.is_empty() {
            Authenticator::default()
        } else {
            let client = self.client()?.clone();
            Authenticator::new(&config.authn, &client, &self.jwks)?
        };
        let built = Arc::new(InboundSecurity {
            mode: config.mode,
            authz: PolicySet::compile(&config.authz),
            authn,
            tcp: config.tcp.clone(),
            ratelimit: (!config.ratelimit.is_empty())
                .then(|| crate::ratelimit::RateLimiter::new(config.ratelimit.clone())),
            idle_timeout: config.idle_timeout,
        });
        self.last = Some((config.clone(), built.clone()));
        Ok(built)
    }

    fn client(&mut self) -> Result<&reqwest::Client, String> {
        if self.client.is_none() {
            let client = reqwest::Client::builder()
                .build()
                .map_err(|e| format!("cannot create the HTTP client for JWKS fetches: {e}"))?;
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| "no HTTP client for JWKS fetches".to_string())
    }
}
