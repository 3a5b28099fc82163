//! mTLS through the real listeners: two in-process sidecars with identities from a test CA
//! (rcgen), a real backend app, snapshots built directly (as the xDS translation will fill
//! `ClusterConfig.tls`, `Endpoint.mtls` and `Snapshot.inbound`).

mod cases;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::net::{TcpListener, TcpStream};
use trellis_model::Protocol;

use super::Tls;
use crate::Listeners;
use crate::balance::{self, Algorithm};
use crate::config::{BoundAddrs, ProxyConfig};
use crate::identity::Identity;
use crate::routing::{
    PathMatch, Route, RouteAction, RouteMatch, RouteTable, VirtualHost, WeightedCluster,
};
use crate::security::{InboundMode, InboundSecurity, TlsPolicy};
use crate::shared::Shared;
use crate::snapshot::{Routes, Snapshot};
use crate::upstream::{UpstreamCluster, endpoint_metas};
use crate::xds::translate::Endpoint;

pub(super) fn id(svc: &str) -> String {
    format!("spiffe://cluster.local/ns/default/svc/{svc}")
}

/// A test root CA.
pub(super) struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test root {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A fresh leaf for `svc`: (cert PEM, key PEM).
    pub fn leaf(&self, svc: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id(svc).as_str().try_into().expect("ia5"))];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(3600)).into();
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    pub fn identity(&self, svc: &str) -> Identity {
        let (cert, key) = self.leaf(svc);
        Identity::from_parts(&cert, &key, &self.pem).expect("identity")
    }
}

/// A backend app counting requests; answers `version=<v> host=<h> orig=<x-trellis-orig-proto>`.
pub(super) struct App {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let text = format!(
                            "version={:?} host={} orig={}",
                            req.version(),
                            h("host"),
                            h("x-trellis-orig-proto")
                        );
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, requests }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// One in-process sidecar.
pub(super) struct Proxy {
    pub shared: Arc<Shared>,
    pub addrs: BoundAddrs,
    _listeners: Listeners,
}

fn config(service: &str, app_port: u16) -> ProxyConfig {
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    ProxyConfig {
        service: service.into(),
        instance_id: format!("{service}-1"),
        app_port,
        app_protocol: Protocol::Http,
        control_url: "http://127.0.0.1:1".into(),
        control_ca: None,
        admin_addr: local,
        outbound_addr: local,
        inbound_addr: local,
        advertise_ip: "127.0.0.1".parse().expect("ip"),
        labels: Default::default(),
        zone: None,
        weight: 1,
        ttl: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(1),
        request_head_timeout: Duration::from_secs(30),
        join_token: None,
        trust_bundle_refresh: std::time::Duration::from_secs(60),
        upstreams: Vec::new(),
        health_check: None,
        access_log: None,
    }
}

impl Proxy {
    pub async fn start(service: &str, app_port: u16, identity: Option<Identity>) -> Proxy {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (admin, outbound, inbound) = (
            bind().await.expect("admin"),
            bind().await.expect("outbound"),
            bind().await.expect("inbound"),
        );
        let addrs = BoundAddrs {
            admin: admin.local_addr().expect("addr"),
            outbound: outbound.local_addr().expect("addr"),
            inbound: inbound.local_addr().expect("addr"),
            upstreams: Vec::new(),
        };
        let shared = Arc::new(Shared::new(config(service, app_port)));
        if let Some(identity) = identity {
            let tls = Tls::new(identity, shared.metrics.tls.clone()).expect("tls");
            shared.tls.set(Arc::new(tls)).expect("first identity");
        }
        let listeners = Listeners::start(&shared, admin, outbound, inbound);
        Proxy {
            shared,
            addrs,
            _listeners: listeners,
        }
    }

    /// Routes `service` to one endpoint; `tls` is the cluster's policy, `mtls` the endpoint's
    /// flag; `inbound` this proxy's own inbound mode.
    pub fn route(
        &self,
        service: &str,
        endpoint: SocketAddr,
        tls: Option<TlsPolicy>,
        mtls: bool,
        inbound: Option<InboundMode>,
    ) {
        let table = RouteTable::new(vec![VirtualHost {
            name: Arc::from(service),
            domains: vec![service.to_string(), format!("{service}:*")],
            routes: vec![Route {
                name: "default".into(),
                matcher: RouteMatch {
                    path: PathMatch::Prefix("/".into()),
                    headers: vec![],
                },
                action: RouteAction {
                    clusters: vec![WeightedCluster {
                        name: Arc::from(service),
                        weight: 1,
                    }],
                    total_weight: 1,
                    hash: None,
                    policy: None,
                },
            }],
        }]);
        let eps = vec![Endpoint {
            addr: endpoint,
            weight: 1,
            id: endpoint.to_string(),
            zone: None,
            priority: 0,
            mtls,
        }];
        let balancer = balance::build(&Algorithm::RoundRobin, &endpoint_metas(&eps));
        let cluster = UpstreamCluster::new(
            service,
            Algorithm::RoundRobin,
            Duration::from_secs(1),
            eps,
            balancer,
            self.shared.clients.get(Duration::from_secs(1)),
        )
        .with_tls(tls);
        let mut snap = Snapshot::new(
            Arc::new(Routes::new(table, &self.shared.metrics)),
            [Arc::new(cluster)],
        );
        snap.inbound = inbound.map(security);
        self.shared.publish(Arc::new(snap));
    }

    /// Only this proxy's inbound mode changes.
    pub fn set_inbound(&self, mode: Option<InboundMode>) {
        let old = self.shared.live.load_full();
        let snap = Snapshot {
            routes: old.routes.clone(),
            clusters: old.clusters.clone(),
            inbound: mode.map(security),
        };
        self.shared.publish(Arc::new(snap));
    }

    /// The sum of a metric's samples whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.shared.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                let ok = metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
                ok.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

fn security(mode: InboundMode) -> Arc<InboundSecurity> {
    Arc::new(InboundSecurity {
        mode,
        ..Default::default()
    })
}

/// The policy for calling `svc` over mTLS.
pub(super) fn policy(svc: &str, expected: &[&str]) -> Option<TlsPolicy> {
    Some(TlsPolicy {
        expected_ids: expected.iter().map(|s| id(s)).collect(),
        sni: svc.to_string(),
    })
}

/// An HTTP/1.1 client connection to `addr`.
pub(super) async fn h1_client(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    tx
}

pub(super) fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// (status, `x-trellis-reason`, body).
pub(super) async fn parts(resp: Response<Incoming>) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get("x-trellis-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}
