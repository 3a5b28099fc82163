//! End-to-end: protocols through a pair of sidecars (client sidecar → server sidecar → app).
//! HTTP/1.1 in both addressing forms, HTTP/2 (h2c), and gRPC unary and server-streaming calls
//! with their trailers and grpc-status, including a non-OK status.

use std::time::Duration;

use anyhow::{Context, ensure};
use trellis_testkit::grpc::{DETAIL_TRAILER, GrpcEchoServer, client_via, pb::EchoRequest};
use trellis_testkit::{
    Addressing, Caller, Client, ControlPlane, DEADLINE, EchoServer, Req, Sidecar, SidecarOpts,
    TestLog, wait_for_traffic_to, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// The control plane and a client sidecar.
async fn start_client(log: &TestLog) -> anyhow::Result<(ControlPlane, EchoServer, Sidecar)> {
    let control = ControlPlane::start(BIN, log, &log.dir().join("data")).await?;
    let Caller { sidecar, app, .. } =
        Caller::start(BIN, log, &control.url(), SidecarOpts::default()).await?;
    Ok((control, app, sidecar))
}

fn service_doc(name: &str, protocol: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  protocol: {protocol}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_pass_through() -> anyhow::Result<()> {
    let log = TestLog::new("proto-http")?;
    let (control, client_app, client_sidecar) = start_client(&log).await?;
    let web = EchoServer::start("web-1").await?;
    let web_sidecar = Sidecar::start(
        BIN,
        &log,
        &control.url(),
        "web",
        web.port(),
        SidecarOpts::default().id("web-1"),
    )
    .await?;
    let h2 = EchoServer::start("h2-1").await?;
    let h2_sidecar = Sidecar::start(
        BIN,
        &log,
        &control.url(),
        "h2web",
        h2.port(),
        SidecarOpts::default().id("h2-1").protocol("http2"),
    )
    .await?;
    control.apply_yaml(&service_doc("h2web", "http2")).await?;

    let client = Client::new(client_sidecar.outbound());
    wait_for_traffic_to(&client, "web", &["web-1"], DEADLINE).await?;
    for addressing in [Addressing::Proxy, Addressing::Host] {
        let out = Client::new(client_sidecar.outbound())
            .with_addressing(addressing)
            .run(50, 2, |i| {
                Req::get("web", &format!("/h1/{i}")).header("x-probe", "kept")
            })
            .await;
        ensure!(
            out.failures().is_empty(),
            "HTTP/1.1 {addressing:?}: {}",
            out.summary()
        );
        let body = out.results[7]
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .json()?;
        ensure!(
            body["path"] == "/h1/7",
            "HTTP/1.1 {addressing:?}: path changed on the way: {body}"
        );
        ensure!(
            body["headers"]["x-probe"] == "kept",
            "HTTP/1.1 {addressing:?}: request header lost: {body}"
        );
    }

    let h2c = Client::new(client_sidecar.outbound()).with_addressing(Addressing::H2c);
    wait_for_traffic_to(&h2c, "h2web", &["h2-1"], DEADLINE).await?;
    let out = h2c
        .run(100, 8, |i| Req::get("h2web", &format!("/h2/{i}")))
        .await;
    ensure!(out.failures().is_empty(), "h2c: {}", out.summary());
    let body = out.results[3]
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .json()?;
    ensure!(
        body["path"] == "/h2/3",
        "h2c: path changed on the way: {body}"
    );
    ensure!(
        body["version"] == "HTTP/2.0",
        "the http2 app should receive HTTP/2, got {}",
        body["version"]
    );

    drop((
        web_sidecar,
        web,
        h2_sidecar,
        h2,
        client_sidecar,
        client_app,
        control,
    ));
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_keep_status_and_trailers() -> anyhow::Result<()> {
    let log = TestLog::new("proto-grpc")?;
    let (control, client_app, client_sidecar) = start_client(&log).await?;
    let server = GrpcEchoServer::start("grpc-1").await?;
    let server_sidecar = Sidecar::start(
        BIN,
        &log,
        &control.url(),
        "greeter",
        server.port(),
        SidecarOpts::default().id("grpc-1").protocol("grpc"),
    )
    .await?;
    control.apply_yaml(&service_doc("greeter", "grpc")).await?;

    let mut client = client_via(client_sidecar.outbound(), "greeter").await?;
    // The first calls may race the client sidecar learning about `greeter`.
    wait_until(
        DEADLINE,
        "a unary gRPC call through the sidecars to succeed",
        || {
            let mut c = client.clone();
            async move {
                c.unary(EchoRequest {
                    message: "ping".into(),
                    ..Default::default()
                })
                .await
                .is_ok()
            }
        },
    )
    .await?;

    let reply = client
        .unary(EchoRequest {
            message: "hello".into(),
            ..Default::default()
        })
        .await
        .context("unary call")?
        .into_inner();
    ensure!(
        reply.message == "hello" && reply.instance == "grpc-1",
        "unary reply: {reply:?}"
    );

    let status = match client
        .unary(EchoRequest {
            message: "nope".into(),
            fail_code: 5,
            ..Default::default()
        })
        .await
    {
        Ok(r) => anyhow::bail!("a failing unary call succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    };
    ensure!(
        status.code() == tonic::Code::NotFound,
        "want NOT_FOUND, got {status:?}"
    );
    ensure!(
        status.message() == "echo failed: nope",
        "grpc-message changed: {status:?}"
    );
    ensure!(
        status
            .metadata()
            .get(DETAIL_TRAILER)
            .and_then(|v| v.to_str().ok())
            == Some("grpc-1"),
        "trailer {DETAIL_TRAILER} lost: {:?}",
        status.metadata()
    );

    let mut stream = client
        .stream(EchoRequest {
            message: "s".into(),
            count: 5,
            ..Default::default()
        })
        .await
        .context("streaming call")?
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("stream stalled")?
        .context("stream item")?
    {
        indexes.push(item.index);
    }
    ensure!(indexes == vec![0, 1, 2, 3, 4], "stream items: {indexes:?}");

    let mut stream = client
        .stream(EchoRequest {
            message: "late".into(),
            count: 3,
            fail_code: 9,
        })
        .await
        .context("failing streaming call")?
        .into_inner();
    let mut got = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("stream stalled")?
        {
            Ok(Some(_)) => got += 1,
            Err(status) => break Some(status),
            Ok(None) => break None,
        }
    };
    ensure!(got == 3, "want 3 items before the error, got {got}");
    let status = end.context("the stream ended OK, want FAILED_PRECONDITION in its trailers")?;
    ensure!(
        status.code() == tonic::Code::FailedPrecondition,
        "want FAILED_PRECONDITION, got {status:?}"
    );
    ensure!(
        status
            .metadata()
            .get(DETAIL_TRAILER)
            .and_then(|v| v.to_str().ok())
            == Some("grpc-1"),
        "stream trailer {DETAIL_TRAILER} lost: {:?}",
        status.metadata()
    );

    drop((server_sidecar, server, client_sidecar, client_app, control));
    log.passed();
    Ok(())
}
