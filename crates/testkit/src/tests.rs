//! The testkit's own tests: its servers, client, waits and process wrapper against each other.

use std::time::Duration;

use crate::{Addressing, Client, EchoServer, Process, Req, TestLog, json_mentions, wait_until};

#[tokio::test]
async fn client_reaches_echo_in_every_addressing_form() -> anyhow::Result<()> {
    let echo = EchoServer::start("e1").await?;
    for addressing in [Addressing::Proxy, Addressing::Host, Addressing::H2c] {
        let client = Client::new(echo.addr()).with_addressing(addressing);
        let out = client
            .run(20, 3, |i| {
                Req::get("svc", &format!("/p/{i}")).header("x-user", "u")
            })
            .await;
        assert!(
            out.failures().is_empty(),
            "{addressing:?}: {}",
            out.summary()
        );
        assert_eq!(out.per_instance().get("e1"), Some(&20), "{addressing:?}");
        let body = out.results[4]
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .json()?;
        assert_eq!(body["path"], "/p/4");
        assert_eq!(body["headers"]["x-user"], "u");
        let want_version = if addressing == Addressing::H2c {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(body["version"], want_version);
    }
    assert_eq!(echo.hits(), 60);
    Ok(())
}

#[tokio::test]
async fn failures_are_counted_not_hidden() {
    let echo = EchoServer::start("gone").await.expect("bind");
    let addr = echo.addr();
    drop(echo);
    let out = Client::new(addr).run(5, 2, |_| Req::get("svc", "/")).await;
    assert_eq!(out.failures().len(), 5, "{}", out.summary());
    assert!(out.per_instance().is_empty());
}

#[tokio::test]
async fn wait_until_names_what_timed_out() {
    let err = wait_until(Duration::from_millis(100), "the impossible", || async {
        false
    })
    .await
    .expect_err("must time out");
    assert!(err.to_string().contains("the impossible"), "{err}");
}

#[tokio::test]
async fn process_reads_the_ready_line_and_reports_early_exit() -> anyhow::Result<()> {
    let log = TestLog::new("testkit-process")?;
    let script = r#"echo 'not json'; echo '{"ready":"x","http":"127.0.0.1:9"}'; exec sleep 60"#;
    let mut p = Process::spawn(
        "sh",
        &["-c".into(), script.into()],
        "sh",
        log.sink(),
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(p.ready_addr("http")?.port(), 9);
    assert!(p.try_status().is_none());
    let status = p.sigterm(Duration::from_secs(20)).await?;
    assert!(!status.success());

    let script = "echo 'cannot bind: address in use' >&2; exit 3";
    let err = match Process::spawn(
        "sh",
        &["-c".into(), script.into()],
        "failing",
        log.sink(),
        Duration::from_secs(20),
    )
    .await
    {
        Ok(_) => panic!("a process that exits must not count as ready"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("address in use") && err.contains("failing"),
        "{err}"
    );
    log.passed();
    Ok(())
}

#[test]
fn json_mentions_ignores_case_and_separators() {
    let v = serde_json::json!({"clusters": [{"lb_policy": "RING_HASH"}]});
    assert!(json_mentions(&v, "RingHash"));
    assert!(json_mentions(&v, "lbpolicy"));
    assert!(!json_mentions(&v, "Maglev"));
}

#[tokio::test]
async fn grpc_echo_answers_unary_stream_and_errors() -> anyhow::Result<()> {
    use crate::grpc::{DETAIL_TRAILER, GrpcEchoServer, client_via, pb::EchoRequest};
    let server = GrpcEchoServer::start("g1").await?;
    let mut client = client_via(server.addr(), "greeter").await?;
    let reply = client
        .unary(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.instance.as_str()),
        ("hi", "g1")
    );
    let status = client
        .unary(EchoRequest {
            message: "x".into(),
            fail_code: 5,
            ..Default::default()
        })
        .await
        .expect_err("fail_code 5 must fail");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        status
            .metadata()
            .get(DETAIL_TRAILER)
            .and_then(|v| v.to_str().ok()),
        Some("g1")
    );
    let mut stream = client
        .stream(EchoRequest {
            message: "s".into(),
            count: 3,
            fail_code: 9,
        })
        .await?
        .into_inner();
    let mut n = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => break None,
            Err(s) => break Some(s.code()),
        }
    };
    assert_eq!((n, end), (3, Some(tonic::Code::FailedPrecondition)));
    Ok(())
}
