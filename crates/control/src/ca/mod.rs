//! The mesh certificate authority: workload identity for mTLS.
//!
//! - [`Ca::init`] loads the CA from the store, or from the operator's `--ca-cert/--ca-key`, or
//!   creates a root on first start (see [`root`] for the layout) and stores it, so a restart
//!   keeps the same trust bundle.
//! - Join tokens ([`Ca::create_token`]) each allow one SPIFFE ID
//!   (`spiffe://<trust-domain>/ns/<ns>/svc/<svc>`) until they expire; they may be used several
//!   times (a sidecar renews with the same token). Only their SHA-256 is stored.
//! - [`Ca::sign`] turns a CSR plus a token into a certificate for the token's identity.
//! - The trust bundle is a list of roots; one of them signs ([`Ca::add_root`],
//!   [`Ca::activate`], [`Ca::remove_root`] are the groundwork for rotation).
//!
//! [`verify::spiffe_id_of`] reads the identity back from a certificate.

pub mod issue;
pub mod root;
pub mod spiffe;
pub mod token;
pub mod verify;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{IdentityStore, StoreError, StoredCa, StoredToken};
use issue::{IssueError, check_csr};
use root::{Root, RootError};

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MIN_CERT_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_TOKEN_TTL_MS: u64 = 24 * 3600 * 1000;
pub const TOKEN_TTL_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=365 * 24 * 3600 * 1000;

/// The operator's root, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRoot {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    pub trust_domain: String,
    /// Lifetime of issued workload certificates (at least [`MIN_CERT_TTL`]).
    pub cert_ttl: Duration,
    /// Sign with this root instead of a stored or generated one.
    pub operator_root: Option<OperatorRoot>,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_ttl: DEFAULT_CERT_TTL,
            operator_root: None,
        }
    }
}

/// A CA configuration or stored state the operator must fix (startup fails).
#[derive(Debug, thiserror::Error)]
pub enum CaInitError {
    #[error("--trust-domain: {0}")]
    TrustDomain(String),
    #[error("--cert-ttl {0}: must be at least 1m (certificates are renewed before they expire)")]
    CertTtl(String),
    #[error("{flag} {path}: cannot read the file: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ca-cert {cert} / --ca-key {key}: {source}")]
    OperatorRoot {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: RootError,
    },
    #[error(
        "stored CA: {0}; give a current root with --ca-cert/--ca-key (or move the data dir away \
         to start a new CA)"
    )]
    Stored(String),
    #[error("stored CA: {0}")]
    Store(#[from] StoreError),
}

/// A refused or failed CA request; the variant decides the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// 401: no, unknown or expired join token.
    #[error("{0}")]
    Unauthorized(String),
    /// 400: the request is malformed or a value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// 500: a bug or the system RNG.
    #[error("{0}")]
    Internal(String),
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub service: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// `POST /v1/tokens` answer. `token` is shown only here.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TokenGrant {
    pub token: String,
    pub spiffe_id: String,
    pub expires_at_ms: u64,
}

/// `POST /v1/certificates` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SignedCert {
    /// PEM: the leaf (roots sign leaves directly, so there is no intermediate).
    pub certificate_chain: String,
    /// PEM: every root of the trust bundle.
    pub trust_bundle: String,
    pub spiffe_id: String,
    pub not_after_ms: u64,
}

/// The control plane's serving certificate ([`Ca::issue_serving`]).
#[derive(Clone)]
pub struct ServingCert {
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER; it never leaves the process.
    pub key_der: Vec<u8>,
    pub not_after_ms: u64,
    /// The fingerprint of the root that signed it.
    pub root: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("not_after_ms", &self.not_after_ms)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// One root as listed by `GET /v1/ca/roots`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct RootInfo {
    pub fingerprint: String,
    pub subject: String,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    pub active: bool,
}

struct Roots {
    list: Vec<Arc<Root>>,
    active: String,
}

impl Roots {
    fn active(&self) -> Option<Arc<Root>> {
        self.list
            .iter()
            .find(|r| r.fingerprint == self.active)
            .cloned()
    }

    fn stored(&self) -> StoredCa {
        StoredCa {
            roots: self.list.iter().map(|r| r.to_stored()).collect(),
            active: self.active.clone(),
        }
    }
}

struct Inner {
    store: Arc<dyn IdentityStore>,
    trust_domain: String,
    cert_ttl: Duration,
    roots: RwLock<Roots>,
    /// Serialises "store write, then memory update" of the roots.
    writes: tokio::sync::Mutex<()>,
    /// Bumped after every change of the roots (added, activated, removed).
    changes: tokio::sync::watch::Sender<u64>,
}

/// The certificate authority. Cheap to clone.
#[derive(Clone)]
pub struct Ca {
    inner: Arc<Inner>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms_to_s(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

fn s_to_ms(s: i64) -> u64 {
    u64::try_from(s).unwrap_or(0).saturating_mul(1000)
}

impl Ca {
    /// Loads or creates the CA (see the module doc). Blocking file reads are small.
    pub async fn init(store: Arc<dyn IdentityStore>, config: CaConfig) -> Result<Ca, CaInitError> {
        spiffe::check_trust_domain(&config.trust_domain).map_err(CaInitError::TrustDomain)?;
        if config.cert_ttl < MIN_CERT_TTL {
            return Err(CaInitError::CertTtl(trellis_model::format_duration(
                config.cert_ttl,
            )));
        }
        let now_ms = unix_ms();
        let now_s = ms_to_s(now_ms);
        let stored = store.ca().await?;
        let mut list: Vec<Arc<Root>> = Vec::new();
        let mut broken = Vec::new();
        let mut active = String::new();
        if let Some(stored) = &stored {
            active.clone_from(&stored.active);
            for r in &stored.roots {
                match Root::from_pem(&r.cert_pem, &r.key_pem, now_s, r.added_at_ms) {
                    Ok(root) => list.push(Arc::new(root)),
                    Err(e) => broken.push(e.to_string()),
                }
            }
        }
        let mut changed = false;
        let source = if let Some(op) = &config.operator_root {
            let root = load_operator_root(op, now_s, now_ms)?;
            let fp = root.fingerprint.clone();
            if !list.iter().any(|r| r.fingerprint == fp) {
                list.push(Arc::new(root));
                changed = true;
            }
            changed |= active != fp;
            active = fp;
            "operator"
        } else if stored.is_none() {
            let root =
                Root::generate(&config.trust_domain, now_s, now_ms).map_err(CaInitError::Stored)?;
            active.clone_from(&root.fingerprint);
            list.push(Arc::new(root));
            changed = true;
            "generated"
        } else {
            if !list.iter().any(|r| r.fingerprint == active) {
                let why = if broken.is_empty() {
                    "is missing".to_string()
                } else {
                    broken.join("; ")
                };
                return Err(CaInitError::Stored(format!(
                    "the signing root {active} is unusable: {why}"
                )));
            }
            "stored"
        };
        for b in &broken {
            tracing::warn!(problem = %b, "stored CA root is unusable; it left the trust bundle");
        }
        let roots = Roots { list, active };
        if changed || !broken.is_empty() {
            store.put_ca(roots.stored()).await?;
        }
        let signing = roots.active();
        tracing::info!(
            trust_domain = %config.trust_domain,
            root = signing.as_ref().map_or("", |r| r.fingerprint.as_str()),
            roots = roots.list.len(),
            source,
            "mesh CA ready"
        );
        Ok(Ca {
            inner: Arc::new(Inner {
                store,
                trust_domain: config.trust_domain,
                cert_ttl: config.cert_ttl,
                roots: RwLock::new(roots),
                writes: tokio::sync::Mutex::new(()),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    pub fn cert_ttl(&self) -> Duration {
        self.inner.cert_ttl
    }

    fn read_roots<T>(&self, f: impl FnOnce(&Roots) -> T) -> T {
        f(&self
            .inner
            .roots
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The trust bundle: every root's certificate, PEM, the signing root first.
    pub fn trust_bundle(&self) -> String {
        self.read_roots(|roots| {
            let mut list: Vec<&Arc<Root>> = roots.list.iter().collect();
            list.sort_by_key(|r| r.fingerprint != roots.active);
            list.iter().map(|r| r.cert_pem.as_str()).collect()
        })
    }

    pub fn roots(&self) -> Vec<RootInfo> {
        self.read_roots(|roots| {
            roots
                .list
                .iter()
                .map(|r| RootInfo {
                    fingerprint: r.fingerprint.clone(),
                    subject: r.subject.clone(),
                    not_before_ms: s_to_ms(r.not_before_s),
                    not_after_ms: s_to_ms(r.not_after_s),
                    active: r.fingerprint == roots.active,
                })
                .collect()
        })
    }

    /// Creates a join token for one workload identity.
    pub async fn create_token(&self, req: TokenRequest) -> Result<TokenGrant, CaError> {
        self.create_token_at(req, unix_ms()).await
    }

    pub async fn create_token_at(
        &self,
        req: TokenRequest,
        now_ms: u64,
    ) -> Result<TokenGrant, CaError> {
        spiffe::check_name("service", &req.service).map_err(CaError::Invalid)?;
        let namespace = req
            .namespace
            .unwrap_or_else(|| spiffe::DEFAULT_NAMESPACE.to_string());
        spiffe::check_name("namespace", &namespace).map_err(CaError::Invalid)?;
        let ttl_ms = req.ttl_ms.unwrap_or(DEFAULT_TOKEN_TTL_MS);
        if !TOKEN_TTL_MS_RANGE.contains(&ttl_ms) {
            return Err(CaError::Invalid(format!(
                "ttl_ms {ttl_ms}: must be between {} (1s) and {} (365 days)",
                TOKEN_TTL_MS_RANGE.start(),
                TOKEN_TTL_MS_RANGE.end()
            )));
        }
        let spiffe_id = spiffe::workload_id(&self.inner.trust_domain, &namespace, &req.service);
        let fresh = token::generate().map_err(CaError::Internal)?;
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let stored = StoredToken {
            spiffe_id: spiffe_id.clone(),
            namespace,
            service: req.service,
            created_at_ms: now_ms,
            expires_at_ms,
        };
        let purged = self.inner.store.delete_expired_tokens(now_ms).await?;
        if purged > 0 {
            tracing::debug!(purged, "expired join tokens removed");
        }
        self.inner.store.put_token(fresh.hash, stored).await?;
        tracing::info!(spiffe_id = %spiffe_id, expires_at_ms, "join token created");
        Ok(TokenGrant {
            token: fresh.token,
            spiffe_id,
            expires_at_ms,
        })
    }

    /// The identity a presented token allows, if it is known and current.
    pub async fn authorize_at(&self, token: &str, now_ms: u64) -> Result<StoredToken, CaError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(CaError::Unauthorized(
                "join token is empty; create one with `trellis token create`".to_string(),
            ));
        }
        let Some(stored) = self.inner.store.token(token::hash(token)).await? else {
            return Err(CaError::Unauthorized(
                "join token is unknown to this control plane; create one with \
                 `trellis token create`"
                    .to_string(),
            ));
        };
        if stored.expires_at_ms <= now_ms {
            return Err(CaError::Unauthorized(format!(
                "join token for {} expired {} s ago; create a new one",
                stored.spiffe_id,
                (now_ms - stored.expires_at_ms) / 1000
            )));
        }
        Ok(stored)
    }

    /// Signs `csr_pem` for the identity `token` allows.
    pub async fn sign(&self, token: &str, csr_pem: &str) -> Result<SignedCert, CaError> {
        self.sign_at(token, csr_pem, unix_ms()).await
    }

    pub async fn sign_at(
        &self,
        token: &str,
        csr_pem: &str,
        now_ms: u64,
    ) -> Result<SignedCert, CaError> {
        let allowed = self.authorize_at(token, now_ms).await?;
        let csr = check_csr(csr_pem).map_err(|e| CaError::Invalid(e.to_string()))?;
        let root = self
            .read_roots(Roots::active)
            .ok_or_else(|| CaError::Internal("no signing root (a bug)".to_string()))?;
        let issued = issue::issue(
            &root,
            &csr,
            &allowed.spiffe_id,
            self.inner.cert_ttl,
            ms_to_s(now_ms),
        )
        .map_err(|e| match e {
            IssueError::Csr(e) => CaError::Invalid(e.to_string()),
            IssueError::Internal(m) => CaError::Internal(m),
        })?;
        tracing::info!(spiffe_id = %allowed.spiffe_id, not_after_s = issued.not_after_s,
            root = %root.fingerprint, "workload certificate issued");
        Ok(SignedCert {
            certificate_chain: issued.cert_pem,
            trust_bundle: self.trust_bundle(),
            spiffe_id: allowed.spiffe_id,
            not_after_ms: s_to_ms(issued.not_after_s),
        })
    }

    /// Issues the control plane's own serving certificate for `names` (DNS names or IP
    /// addresses), with the SPIFFE ID [`spiffe::control_id`] and the workload lifetime.
    pub fn issue_serving(&self, names: &[String]) -> Result<ServingCert, CaError> {
        let root = self
            .read_roots(Roots::active)
            .ok_or_else(|| CaError::Internal("no signing root (a bug)".to_string()))?;
        let spiffe_id = spiffe::control_id(&self.inner.trust_domain);
        let serving = issue::issue_serving(
            &root,
            &spiffe_id,
            names,
            self.inner.cert_ttl,
            ms_to_s(unix_ms()),
        )
        .map_err(|e| match e {
            IssueError::Csr(e) => CaError::Invalid(e.to_string()),
            IssueError::Internal(m) => CaError::Internal(m),
        })?;
        tracing::info!(%spiffe_id, not_after_s = serving.issued.not_after_s,
            root = %root.fingerprint, "control plane serving certificate issued");
        Ok(ServingCert {
            cert_der: serving.issued.cert_der,
            key_der: serving.key_der,
            not_after_ms: s_to_ms(serving.issued.not_after_s),
            root: root.fingerprint.clone(),
        })
    }

    /// Changes whenever the roots change (a root added, activated or removed).
    pub fn root_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Adds an operator root to the trust bundle; it does not sign until [`Ca::activate`].
    pub async fn add_root(&self, cert_pem: &str, key_pem: &str) -> Result<RootInfo, CaError> {
        let now_ms = unix_ms();
        let root = Root::from_pem(cert_pem, key_pem, ms_to_s(now_ms), now_ms)
            .map_err(|e| CaError::Invalid(e.to_string()))?;
        let fingerprint = root.fingerprint.clone();
        self.update(|roots| {
            if roots.list.iter().any(|r| r.fingerprint == fingerprint) {
                return Err(CaError::Conflict(format!(
                    "root {fingerprint} is already in the trust bundle"
                )));
            }
            roots.list.push(Arc::new(root));
            Ok(())
        })
        .await?;
        self.root_info(&fingerprint)
    }

    /// Makes a root of the bundle the signing one.
    pub async fn activate(&self, fingerprint: &str) -> Result<RootInfo, CaError> {
        let fp = fingerprint.to_ascii_lowercase();
        self.update(|roots| {
            if !roots.list.iter().any(|r| r.fingerprint == fp) {
                return Err(not_in_bundle(&fp));
            }
            roots.active.clone_from(&fp);
            Ok(())
        })
        .await?;
        tracing::info!(root = %fp, "signing root switched");
        self.root_info(&fp)
    }

    /// Removes a root that does not sign.
    pub async fn remove_root(&self, fingerprint: &str) -> Result<(), CaError> {
        let fp = fingerprint.to_ascii_lowercase();
        self.update(|roots| {
            if roots.active == fp {
                return Err(CaError::Conflict(format!(
                    "root {fp} is the signing root; activate another root first"
                )));
            }
            let before = roots.list.len();
            roots.list.retain(|r| r.fingerprint != fp);
            if roots.list.len() == before {
                return Err(not_in_bundle(&fp));
            }
            Ok(())
        })
        .await
    }

    fn root_info(&self, fingerprint: &str) -> Result<RootInfo, CaError> {
        self.roots()
            .into_iter()
            .find(|r| r.fingerprint == fingerprint)
            .ok_or_else(|| not_in_bundle(fingerprint))
    }

    /// Applies `change` to a copy of the roots, stores it, then publishes it.
    async fn update(
        &self,
        change: impl FnOnce(&mut Roots) -> Result<(), CaError>,
    ) -> Result<(), CaError> {
        let _guard = self.inner.writes.lock().await;
        let mut next = self.read_roots(|r| Roots {
            list: r.list.clone(),
            active: r.active.clone(),
        });
        change(&mut next)?;
        self.inner.store.put_ca(next.stored()).await?;
        *self
            .inner
            .roots
            .write()
            .unwrap_or_else(PoisonError::into_inner) = next;
        self.inner.changes.send_modify(|g| *g = g.wrapping_add(1));
        Ok(())
    }
}

fn not_in_bundle(fp: &str) -> CaError {
    CaError::NotFound(format!(
        "root {fp} is not in the trust bundle (see GET /v1/ca/roots)"
    ))
}

fn load_operator_root(op: &OperatorRoot, now_s: i64, now_ms: u64) -> Result<Root, CaInitError> {
    let read = |flag: &'static str, path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| CaInitError::Read {
            flag,
            path: path.clone(),
            source,
        })
    };
    let cert = read("--ca-cert", &op.cert)?;
    let key = read("--ca-key", &op.key)?;
    Root::from_pem(&cert, &key, now_s, now_ms).map_err(|source| CaInitError::OperatorRoot {
        cert: op.cert.clone(),
        key: op.key.clone(),
        source,
    })
}

#[cfg(test)]
mod tests;
