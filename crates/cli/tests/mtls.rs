//! End-to-end: mutual TLS between real sidecars. Every sidecar gets a join token (testkit's
//! default), obtains its certificate from the real control plane's CA, and calls between
//! sidecars are mTLS: pooled (few handshakes per 1,000 requests), STRICT by default (plaintext
//! and foreign-CA clients are refused before the app sees a byte), PERMISSIVE visible in a
//! metric, and leaf rotation and root rotation under steady load fail no request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use trellis_proxy::identity::{ExpectedIds, Identity, client_config};
use trellis_testkit::{
    Caller, Client, ControlOpts, ControlPlane, DEADLINE, EchoServer, Instance, Req, Sidecar,
    SidecarOpts, TestLog, dump_cluster, wait_for_traffic_to, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";
const ECHO_ID: &str = "spiffe://cluster.local/ns/default/svc/echo";

/// A control plane, one `echo` instance (b1) and a `client` sidecar, all with certificates.
async fn mesh(
    log: &TestLog,
    opts: ControlOpts,
) -> anyhow::Result<(ControlPlane, Instance, Sidecar)> {
    let control = ControlPlane::start_with(BIN, log, &log.dir().join("data"), opts).await?;
    let url = control.url();
    let b1 = Instance::start(
        BIN,
        log,
        &url,
        SERVICE,
        "b1",
        Duration::ZERO,
        SidecarOpts::default(),
    )
    .await?;
    let Caller {
        sidecar: client,
        app: _client_app,
        ..
    } = Caller::start(BIN, log, &url, SidecarOpts::default()).await?;
    wait_for_traffic_to(&Client::new(client.outbound()), SERVICE, &["b1"], DEADLINE).await?;
    Ok((control, b1, client))
}

/// Writes a plaintext request straight to `addr`; returns the bytes answered before close.
async fn plaintext_probe(addr: std::net::SocketAddr) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    // The proxy may close before the write; what matters is that nothing is answered.
    let _ = s
        .write_all(b"GET /plaintext HTTP/1.1\r\nhost: echo\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    match tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await {
        Ok(_) => Ok(buf),
        Err(_) => bail!("the inbound listener neither answered nor closed a plaintext connection"),
    }
}

/// An mTLS client whose certificate comes from a CA the mesh does not trust (it trusts the
/// mesh's root itself, so the refusal is the server's). Returns what happened.
async fn foreign_ca_probe(
    control: &ControlPlane,
    addr: std::net::SocketAddr,
) -> anyhow::Result<String> {
    let bundle = control.get_json("/v1/trust-bundle").await?;
    let mesh_root = bundle
        .get("trust_bundle")
        .and_then(|v| v.as_str())
        .context("no trust_bundle")?
        .to_string();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "foreign root");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/default/svc/client".try_into()?,
    )];
    let cert = leaf.signed_by(&key, &issuer)?.pem();
    let identity =
        Identity::from_parts(&cert, &key.serialize_pem(), &format!("{ca_pem}{mesh_root}"))?;
    let config = client_config(&identity, ExpectedIds::new([ECHO_ID]))?;
    let stream = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("echo")?;
    let mut tls = match tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
    {
        Ok(t) => t,
        Err(e) => return Ok(format!("handshake refused: {e}")),
    };
    // TLS 1.3: the client may finish before the server has checked its certificate.
    let _ = tls.write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n").await;
    let mut buf = Vec::new();
    match tokio::time::timeout(DEADLINE, tls.read_to_end(&mut buf)).await {
        Ok(Err(e)) => Ok(format!("refused after the handshake: {e}")),
        Ok(Ok(0)) => Ok("closed without an answer".to_string()),
        Ok(Ok(_)) => bail!(
            "a foreign-CA client got an answer: {}",
            String::from_utf8_lossy(&buf)
        ),
        Err(_) => bail!("the inbound listener neither refused nor closed a foreign-CA client"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mtls_pooled_and_strict_refuses_plaintext_and_foreign_cas()
-> anyhow::Result<()> {
    let log = TestLog::new("mtls-mesh")?;
    let (control, b1, client) = mesh(&log, ControlOpts::default()).await?;
    let server = &b1.sidecar;

    log.note("the endpoint serves mTLS and the peer connection is TLS");
    let dump = client.config_dump().await?;
    let cluster = dump_cluster(&dump, SERVICE).context("no echo cluster")?;
    ensure!(
        cluster.pointer("/endpoints/0/mtls") == Some(&serde_json::Value::Bool(true)),
        "the client should use mTLS to b1: {cluster}"
    );
    let server_dump = server.config_dump().await?;
    ensure!(
        server_dump
            .pointer("/identity/spiffe_id")
            .and_then(|v| v.as_str())
            == Some(ECHO_ID),
        "b1's identity: {}",
        server_dump["identity"]
    );

    log.note("1,000 requests: no failure, few handshakes");
    let hs = |s: &Sidecar, dir: &'static str| {
        let s = s.admin();
        async move {
            let text = trellis_testkit::Sidecar::metrics_at(s).await?;
            anyhow::Ok(trellis_testkit::metric_sum(
                &text,
                "trellis_tls_handshakes_total",
                &[("direction", dir)],
            ))
        }
    };
    let (in_before, out_before) = (hs(server, "inbound").await?, hs(&client, "outbound").await?);
    ensure!(
        in_before >= 1.0,
        "b1 saw no inbound mTLS handshake: {in_before}"
    );
    let hits_before = b1.backend.hits();
    let out = Client::new(client.outbound())
        .run(1000, 4, |i| Req::get(SERVICE, &format!("/pooled/{i}")))
        .await;
    ensure!(out.failures().is_empty(), "failures: {}", out.summary());
    ensure!(
        b1.backend.hits() - hits_before == 1000,
        "the app saw {} requests",
        b1.backend.hits() - hits_before
    );
    let (in_after, out_after) = (hs(server, "inbound").await?, hs(&client, "outbound").await?);
    ensure!(
        in_after - in_before <= 5.0 && out_after - out_before <= 5.0,
        "handshakes per 1,000 requests: inbound {} outbound {} (pooling should keep them near 0)",
        in_after - in_before,
        out_after - out_before
    );

    log.note("a plaintext client straight to the STRICT inbound listener is refused");
    let hits = b1.backend.hits();
    let answer = plaintext_probe(server.inbound()).await?;
    ensure!(
        answer.is_empty(),
        "plaintext got an answer: {}",
        String::from_utf8_lossy(&answer)
    );
    ensure!(
        b1.backend.hits() == hits,
        "a plaintext request reached the app"
    );
    ensure!(
        server
            .metric_sum(
                "trellis_inbound_plaintext_connections_total",
                &[("result", "refused")]
            )
            .await?
            >= 1.0,
        "the refusal is counted"
    );

    log.note("a client with a certificate from another CA is refused");
    let what = foreign_ca_probe(&control, server.inbound()).await?;
    log.note(&format!("foreign CA: {what}"));
    ensure!(
        b1.backend.hits() == hits,
        "a foreign-CA request reached the app"
    );
    ensure!(
        server
            .metric_sum(
                "trellis_tls_handshake_errors_total",
                &[("direction", "inbound"), ("reason", "untrusted_ca")]
            )
            .await?
            >= 1.0,
        "the foreign CA should be counted as untrusted_ca:\n{}",
        server.metrics().await?
    );

    log.note("a plaintext-only sidecar cannot reach a STRICT service");
    let plain_app = EchoServer::start("plain-app").await?;
    let plain = Sidecar::start(
        BIN,
        &log,
        &control.url(),
        "legacy",
        plain_app.port(),
        SidecarOpts::default().id("legacy-1").plaintext(),
    )
    .await?;
    let reply = Client::new(plain.outbound())
        .send(&Req::get(SERVICE, "/legacy"))
        .await?;
    ensure!(
        reply.status >= 500,
        "a plaintext call to a STRICT service got {}",
        reply.status
    );
    ensure!(
        b1.backend.hits() == hits,
        "a plaintext request reached the app"
    );

    log.note("PERMISSIVE: visible in a metric, plaintext accepted");
    control
        .apply_yaml(
            "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  mtls:\n    mode: PERMISSIVE\n",
        )
        .await?;
    wait_until(
        DEADLINE,
        "b1's trellis_inbound_mode{mode=PERMISSIVE} to be 1",
        || async {
            matches!(
                server.metric_sum("trellis_inbound_mode", &[("mode", "PERMISSIVE")]).await,
                Ok(v) if v == 1.0
            )
        },
    )
    .await?;
    let reply = Client::new(plain.outbound())
        .send(&Req::get(SERVICE, "/legacy"))
        .await?;
    ensure!(
        reply.status == 200,
        "PERMISSIVE should accept the plaintext sidecar: {}",
        reply.status
    );
    ensure!(
        server
            .metric_sum(
                "trellis_inbound_plaintext_connections_total",
                &[("result", "accepted")]
            )
            .await?
            >= 1.0,
        "accepted plaintext is counted"
    );
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_rotation_under_steady_load_fails_no_request() -> anyhow::Result<()> {
    let log = TestLog::new("mtls-rotation")?;
    let opts = ControlOpts {
        cert_ttl: Some("1m".to_string()),
        ..ControlOpts::default()
    };
    let (_control, b1, client) = mesh(&log, opts).await?;
    let server = &b1.sidecar;
    let serial = |s: &Sidecar| {
        let admin = s.admin();
        async move {
            trellis_testkit::Sidecar::certificate_serial_at(admin)
                .await?
                .context("no certificate serial in /config_dump")
        }
    };
    let (server_first, client_first) = (serial(server).await?, serial(&client).await?);
    log.note(&format!(
        "serials: b1 {server_first}, client {client_first}; load until both renew"
    ));

    // Steady load (a new batch as soon as one ends) while both certificates renew, at about
    // 2/3 of their 1-minute lifetime; the deadline leaves room for a slow machine.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(client.outbound(), stop.clone());
    wait_until(
        Duration::from_secs(150),
        "both certificates renewed (cert TTL 1m)",
        || async {
            matches!((serial(server).await, serial(&client).await),
                (Ok(s), Ok(c)) if s != server_first && c != client_first)
        },
    )
    .await?;
    // Some more load on the renewed certificates.
    let out = Client::new(client.outbound())
        .run(200, 4, |i| Req::get(SERVICE, &format!("/after/{i}")))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (during, mut failures) = load.await?;
    failures.extend(out.failures());
    let sent = during + 200;
    ensure!(
        during >= 100,
        "the load ran through the rotation ({during} requests)"
    );
    ensure!(
        failures.is_empty(),
        "{} of {sent} requests failed during rotation: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ensure!(
        server
            .metric_sum("trellis_identity_certificate_renewals_total", &[])
            .await?
            >= 1.0,
        "the renewal is counted"
    );
    log.note(&format!("{sent} requests, 0 failed"));
    log.passed();
    Ok(())
}

/// Steady load through `outbound` until `stop` is set; returns (requests, failures).
fn steady_load(
    outbound: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<(usize, String)>)> {
    tokio::spawn(async move {
        let (mut sent, mut failures) = (0usize, Vec::new());
        let mut batch = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            batch += 1;
            let out = Client::new(outbound)
                .run(50, 4, move |i| {
                    Req::get(SERVICE, &format!("/bundle/{batch}/{i}"))
                })
                .await;
            sent += 50;
            failures.extend(out.failures());
        }
        (sent, failures)
    })
}

/// `/config_dump`'s count of trust-bundle roots and certificate serial.
async fn bundle_state(s: &Sidecar) -> anyhow::Result<(u64, String)> {
    let dump = s.config_dump().await?;
    let roots = dump
        .pointer("/identity/trust_bundle_roots")
        .and_then(|v| v.as_u64())
        .context("no trust_bundle_roots")?;
    let serial = dump
        .pointer("/identity/certificate/serial")
        .and_then(|v| v.as_str())
        .context("no serial")?
        .to_string();
    Ok((roots, serial))
}

/// Waits until every sidecar in `all` satisfies `ok(roots, serial)`.
async fn wait_all(
    what: &str,
    all: &[&Sidecar],
    ok: impl Fn(usize, u64, &str) -> bool,
) -> anyhow::Result<()> {
    wait_until(DEADLINE, what, || async {
        for (i, s) in all.iter().enumerate() {
            match bundle_state(s).await {
                Ok((roots, serial)) if ok(i, roots, &serial) => {}
                _ => return false,
            }
        }
        true
    })
    .await
}

/// Root rotation through the control plane's API with traffic flowing: add a second root
/// (every sidecar learns it), switch signing to it (every sidecar renews at once, although
/// its certificate has a day left), remove the old root (every sidecar drops it). No request
/// fails, and a sidecar that joins afterwards, trusting only the new root, reaches the old
/// sidecars: their certificates really come from the new root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_bundle_rotation_under_steady_load_fails_no_request() -> anyhow::Result<()> {
    let log = TestLog::new("mtls-bundle-rotation")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let fast = || SidecarOpts {
        extra_args: vec!["--trust-bundle-refresh".into(), "200ms".into()],
        ..SidecarOpts::default()
    };
    let b1 = Instance::start(BIN, &log, &url, SERVICE, "b1", Duration::ZERO, fast()).await?;
    let Caller {
        sidecar: client,
        app: _client_app,
        ..
    } = Caller::start(BIN, &log, &url, fast().id("c1")).await?;
    wait_for_traffic_to(&Client::new(client.outbound()), SERVICE, &["b1"], DEADLINE).await?;
    let sidecars = [&b1.sidecar, &client];
    let mut first_serials = Vec::new();
    for s in sidecars {
        first_serials.push(bundle_state(s).await?.1);
    }
    let old_root = control.get_json("/v1/ca/roots").await?;
    let old_fp = old_root
        .pointer("/0/fingerprint")
        .and_then(|v| v.as_str())
        .with_context(|| format!("no fingerprint in {old_root}"))?
        .to_string();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(client.outbound(), stop.clone());

    // 1. A second root joins the bundle.
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Trellis mesh CA, second generation");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let cert_pem = params.self_signed(&key)?.pem();
    let body = serde_json::json!({ "cert_pem": cert_pem, "key_pem": key.serialize_pem() });
    let (status, added) = control
        .request(
            reqwest::Method::POST,
            "/v1/ca/roots",
            Some(body.to_string()),
            Some("application/json"),
        )
        .await?;
    ensure!(status == 201, "add root: {status} {added}");
    let added: serde_json::Value = serde_json::from_str(&added)?;
    let new_fp = added
        .get("fingerprint")
        .and_then(|v| v.as_str())
        .context("new root fingerprint")?
        .to_string();
    wait_all(
        "both sidecars trust both roots",
        &sidecars,
        |_, roots, _| roots == 2,
    )
    .await?;

    // 2. Signing switches to it: the sidecars renew without waiting for their 24 h leaves.
    let body = serde_json::json!({ "fingerprint": new_fp }).to_string();
    let (status, text) = control
        .request(
            reqwest::Method::POST,
            "/v1/ca/activate",
            Some(body),
            Some("application/json"),
        )
        .await?;
    ensure!(status == 200, "activate: {status} {text}");
    wait_all(
        "both sidecars renewed from the new root",
        &sidecars,
        |i, _, serial| serial != first_serials[i],
    )
    .await?;

    // 3. The old root leaves the bundle.
    let (status, text) = control
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/ca/roots/{old_fp}"),
            None,
            None,
        )
        .await?;
    ensure!(status == 200, "remove old root: {status} {text}");
    wait_all(
        "both sidecars dropped the old root",
        &sidecars,
        |_, roots, _| roots == 1,
    )
    .await?;

    // A newcomer trusting only the new root reaches b1 (fresh handshakes both ways).
    let late_app = EchoServer::start("late-app").await?;
    let late = Sidecar::start(BIN, &log, &url, "late", late_app.port(), fast().id("late")).await?;
    ensure!(
        bundle_state(&late).await?.0 == 1,
        "the newcomer trusts one root"
    );
    let out = Client::new(late.outbound())
        .run(50, 4, |i| Req::get(SERVICE, &format!("/late/{i}")))
        .await;
    ensure!(out.failures().is_empty(), "newcomer: {:?}", out.failures());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failures) = load.await?;
    ensure!(
        sent >= 100,
        "the load ran through the rotation ({sent} requests)"
    );
    ensure!(
        failures.is_empty(),
        "{} of {sent} requests failed during the root rotation: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    log.note(&format!("{sent} requests during the rotation, 0 failed"));
    log.passed();
    Ok(())
}

const ECHO_IDLE: &str = "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: echo
spec:
  targetRef: { name: echo }
  timeouts: { idle: 500ms }
";

/// `timeouts.idle` governs the pooled HTTP/2 mTLS connection between sidecars: once it has
/// carried no byte for the idle time it is closed (by the caller's pool, or by the server's
/// inbound listener, whichever looks first: both take the value), and the next request opens
/// a new one (a new handshake) and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_mtls_connections_close_and_the_next_request_reconnects() -> anyhow::Result<()>
{
    let log = TestLog::new("mtls_idle")?;
    let (control, b1, client) = mesh(&log, ControlOpts::default()).await?;
    control.apply_yaml(ECHO_IDLE).await?;
    trellis_testkit::wait_for_proxy_config(
        client.admin(),
        DEADLINE,
        "the client's echo cluster to take the 500ms idle timeout",
        |d| dump_cluster(d, SERVICE).is_some_and(|c| c["idle_timeout_ms"] == 500),
    )
    .await?;
    trellis_testkit::wait_for_proxy_config(
        b1.sidecar.admin(),
        DEADLINE,
        "echo's inbound listener to take the 500ms idle timeout",
        |d| d["inbound_idle_timeout_ms"] == 500,
    )
    .await?;
    let c = Client::new(client.outbound());
    let handshakes = || async {
        client
            .metric_sum("trellis_tls_handshakes_total", &[("direction", "outbound")])
            .await
    };
    let idle_closes = || async {
        let out = client
            .metric_sum("trellis_idle_timeouts_total", &[("direction", "outbound")])
            .await?;
        let inb = b1
            .sidecar
            .metric_sum(
                "trellis_idle_timeouts_total",
                &[("direction", "inbound"), ("protocol", "http")],
            )
            .await?;
        anyhow::Ok(out + inb)
    };

    let reply = c.send(&Req::get(SERVICE, "/first")).await?;
    ensure!(reply.status == 200, "first request: {:?}", reply);
    let (before, closes) = (handshakes().await?, idle_closes().await?);

    log.note("no traffic: the pooled connection is closed after 500 ms");
    wait_until(
        DEADLINE,
        "an idle timeout to close the pooled connection",
        || async { idle_closes().await.is_ok_and(|n| n > closes) },
    )
    .await?;
    wait_until(
        DEADLINE,
        "the client's pool to hold no open mTLS connection",
        || async {
            client
                .metric_sum("trellis_mtls_upstream_connections", &[])
                .await
                .is_ok_and(|n| n == 0.0)
        },
    )
    .await?;

    log.note("the next request opens a new connection and succeeds");
    let reply = c.send(&Req::get(SERVICE, "/after-idle")).await?;
    ensure!(reply.status == 200, "after idle: {:?}", reply);
    let after = handshakes().await?;
    ensure!(
        after == before + 1.0,
        "handshakes went {before} -> {after}: want exactly one new connection"
    );
    ensure!(
        client
            .metric_sum("trellis_mtls_upstream_connections", &[])
            .await?
            == 1.0,
        "the new connection is not counted as open"
    );
    log.passed();
    Ok(())
}
