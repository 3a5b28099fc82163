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

/// A connection for [`super::drive`]: pending, woken now and then like a busy one, until
/// `shutdown` is called; then it ends.
struct FakeConn {
    shut: bool,
    polls: usize,
}

impl std::future::Future for FakeConn {
    type Output = Result<(), Infallible>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.shut {
            return std::task::Poll::Ready(Ok(()));
        }
        self.polls += 1;
        // A self-wake, as a socket's readiness would wake the task: these wake-ups must
        // neither hide nor stand in for the control events.
        if self.polls < 1_000 {
            cx.waker().wake_by_ref();
        }
        std::task::Poll::Pending
    }
}

fn fake() -> FakeConn {
    FakeConn {
        shut: false,
        polls: 0,
    }
}

/// `f`'s output, or a failure when a minute of (paused) time passes first.
async fn in_time<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("drive did not act on the event within a minute")
}

fn shut_down(c: std::pin::Pin<&mut FakeConn>) {
    c.get_mut().shut = true;
}

/// Each event `drive` watches ends the connection its way, however often the connection's own
/// wake-ups poll it: the listener's stop, an idle timeout, the request-head deadline.
#[tokio::test(start_paused = true)]
async fn drive_acts_on_stop_idle_and_the_head_deadline() {
    use super::{Ended, drive};
    use std::sync::Arc;
    let never = std::future::pending::<()>;

    // Stop, sent while the connection is being driven.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let driven = tokio::spawn(drive(fake(), shut_down, rx, None, None, never()));
    tokio::task::yield_now().await;
    assert!(!driven.is_finished(), "nothing asked it to end yet");
    tx.send(true).expect("send");
    let (result, ended) = in_time(driven).await.expect("drive");
    assert!(result.is_ok());
    assert_eq!(ended, Ended::Done);

    // The listener's sender gone counts as a stop.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let driven = tokio::spawn(drive(fake(), shut_down, rx, None, None, never()));
    tokio::task::yield_now().await;
    drop(tx);
    assert_eq!(in_time(driven).await.expect("drive").1, Ended::Done);

    // Idle: no byte moves, so the quiet timer shuts it down after the timeout.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let activity = Arc::new(crate::idle::Activity::default());
    let idle = Some(Duration::from_secs(5));
    let (_, ended) = in_time(drive(fake(), shut_down, rx, Some(activity), idle, never())).await;
    assert_eq!(ended, Ended::Idle);

    // The head deadline drops the connection (no graceful shutdown).
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let deadline = tokio::time::sleep(Duration::from_secs(3));
    let mut conn = fake();
    conn.polls = 1_000; // no more self-wakes: only the timer can end it
    let (_, ended) = in_time(drive(
        conn,
        |_| panic!("not a shutdown"),
        rx,
        None,
        None,
        deadline,
    ))
    .await;
    assert_eq!(ended, Ended::HeadTimeout);
}
