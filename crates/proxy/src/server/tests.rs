use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http_builder;

/// hyper's own 30 s header-read timer is off (it would also register a timer per request
/// head): a head sent slowly over minutes is still served. Only `head_deadline` cuts
/// connections, and only when `--request-head-timeout` says so.
#[tokio::test(start_paused = true)]
async fn the_listener_builder_has_no_per_head_timer_of_its_own() {
    let (mut client, server) = tokio::io::duplex(4096);
    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
    });
    let conn = tokio::spawn(async move {
        http_builder()
            .serve_connection(TokioIo::new(server), svc)
            .await
    });
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
        .await
        .expect("write the first part of the head");
    // Paused time: the clock jumps past any timer hyper set while the connection waits.
    tokio::time::sleep(Duration::from_secs(120)).await;
    client
        .write_all(b"\r\n")
        .await
        .expect("finish the head: the connection is still open");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"ok") {
        let n = client.read(&mut buf).await.expect("read the response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
    drop(client);
    let _ = conn.await;
}
