//! The HTTP/1.1 client against scripted servers on 127.0.0.1 that answer with exact bytes:
//! framing, interim responses, connection reuse, and malformed or broken answers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::body::{Replay, ReqBody};
use crate::pool::{BodyError, EndpointPool, H1Pools, PoolError};

/// One scripted answer: the bytes to write, and whether to close the connection after them.
struct Reply(&'static [u8], bool);

/// A server answering each request it reads (head, then a `content-length` or chunked body)
/// with the next scripted reply; it records every request as received.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn scripted(replies: Vec<Reply>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
    let (a, r) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (r, replies) = (r.clone(), replies.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut stream, &mut buf).await {
                    r.lock().expect("lock").push(req);
                    let Some(Reply(bytes, close)) = replies.lock().expect("lock").pop_front()
                    else {
                        return;
                    };
                    if stream.write_all(bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        accepted,
        requests,
    }
}

/// Reads one request (head and body) off `stream`; `None` at the end of the stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let find = |buf: &[u8], pat: &[u8], from: usize| {
        buf.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|i| i + from)
    };
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n", 0) {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let end = loop {
        let end = if head.contains("transfer-encoding: chunked") {
            find(buf, b"0\r\n\r\n", head_end).map(|i| i + 5)
        } else {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
            (buf.len() >= head_end + len).then_some(head_end + len)
        };
        if let Some(end) = end {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let req = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(req)
}

fn pool(addr: SocketAddr) -> Arc<EndpointPool> {
    H1Pools::new(Duration::from_secs(1), crate::pool::IDLE_TIMEOUT).endpoint(addr)
}

fn request(method: Method, body: &'static [u8], length: bool) -> Request<ReqBody> {
    let mut req = Request::builder()
        .method(method)
        .uri("/p?q=1")
        .header("host", "svc");
    if length {
        req = req.header("content-length", body.len());
    }
    req.body(ReqBody::Replay(Replay::new(Bytes::from_static(body), None)))
        .expect("request")
}

fn get() -> Request<ReqBody> {
    request(Method::GET, b"", false)
}

/// Sends `req` and reads the whole answer: status, body, trailers.
async fn exchange(
    pool: &Arc<EndpointPool>,
    req: Request<ReqBody>,
) -> Result<(StatusCode, Bytes, Option<http::HeaderMap>), anyhow::Error> {
    let resp = pool.send(req, Instant::now(), None).await?;
    let status = resp.status();
    let collected = resp.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn chunked_bodies_and_trailers_are_decoded_and_the_connection_reused() {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
    let s = scripted(vec![Reply(CHUNKED, false), Reply(CHUNKED, false)]).await;
    let pool = pool(s.addr);
    for _ in 0..2 {
        let (status, body, trailers) = exchange(&pool, get()).await.expect("exchange");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers.get("x-checksum").expect("x-checksum"), "42");
    }
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    let reqs = s.requests.lock().expect("lock").clone();
    assert!(
        reqs[0].starts_with("GET /p?q=1 HTTP/1.1\r\nhost: svc\r\n"),
        "{reqs:?}"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let s = scripted(vec![Reply(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        false,
    )])
    .await;
    let (status, body, _) = exchange(&pool(s.addr), get()).await.expect("exchange");
    assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"ok"[..]));
}

#[tokio::test]
async fn bodies_to_the_end_of_the_connection_and_close_requests_end_the_connection() {
    let s = scripted(vec![
        Reply(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", true),
        Reply(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\none",
            false,
        ),
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo", false),
    ])
    .await;
    let pool = pool(s.addr);
    let (_, body, _) = exchange(&pool, get()).await.expect("first");
    assert_eq!(&body[..], b"until the end");
    let (_, body, _) = exchange(&pool, get()).await.expect("second");
    assert_eq!(&body[..], b"one");
    assert_eq!(pool.idle_len(), 0, "`connection: close` is not pooled");
    let (_, body, _) = exchange(&pool, get()).await.expect("third");
    assert_eq!(&body[..], b"two");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(pool.idle_len(), 1, "a keep-alive response is pooled");
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body() {
    let s = scripted(vec![
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", false),
        Reply(b"HTTP/1.1 204 No Content\r\n\r\n", false),
        Reply(
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            false,
        ),
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast", false),
    ])
    .await;
    let pool = pool(s.addr);
    let (status, body, _) = exchange(&pool, request(Method::HEAD, b"", false))
        .await
        .expect("head");
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    for expected in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let (status, body, _) = exchange(&pool, get()).await.expect("bodiless");
        assert_eq!((status, body.len()), (expected, 0));
    }
    let (_, body, _) = exchange(&pool, get()).await.expect("last");
    assert_eq!(&body[..], b"last");
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "bodiless answers leave the connection usable"
    );
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let s = scripted(vec![Reply(ok, false), Reply(ok, false), Reply(ok, false)]).await;
    let pool = pool(s.addr);
    exchange(&pool, request(Method::POST, b"abc", true))
        .await
        .expect("with length");
    exchange(&pool, request(Method::POST, b"abc", false))
        .await
        .expect("chunked");
    exchange(&pool, request(Method::POST, b"", false))
        .await
        .expect("empty");
    let reqs = s.requests.lock().expect("lock").clone();
    assert!(
        reqs[0].ends_with("content-length: 3\r\n\r\nabc"),
        "{:?}",
        reqs[0]
    );
    assert!(
        reqs[1].ends_with("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{:?}",
        reqs[1]
    );
    assert!(
        reqs[2].ends_with("content-length: 0\r\n\r\n"),
        "{:?}",
        reqs[2]
    );
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

/// The error an exchange ends with, from the head or from the body.
async fn failure(reply: &'static [u8]) -> String {
    let s = scripted(vec![Reply(reply, true)]).await;
    match exchange(&pool(s.addr), get()).await {
        Ok(answer) => panic!("expected an error, got {answer:?}"),
        Err(e) => {
            let pool_error = e.downcast_ref::<PoolError>().map(|e| e.is_connect());
            assert_ne!(
                pool_error,
                Some(true),
                "an answer error is no connect error"
            );
            e.to_string()
        }
    }
}

#[tokio::test]
async fn malformed_and_broken_answers_are_errors() {
    let e = failure(b"HELLO\r\n\r\n").await;
    assert!(e.contains("not an HTTP/1.x response head"), "{e}");
    let e = failure(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc").await;
    assert!(e.contains("conflicting content-length"), "{e}");
    let e = failure(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").await;
    assert!(e.contains("invalid content-length"), "{e}");
    let e = failure(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
    assert!(e.contains("invalid chunk size"), "{e}");
    let e = failure(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
    assert!(e.contains("in the middle of the response body"), "{e}");
    let e = failure(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n").await;
    assert!(e.contains("101"), "{e}");
    let e = failure(b"").await;
    assert!(e.contains("closed the connection before a response"), "{e}");
    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut h = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        h.resize(70 * 1024, b'a');
        h
    });
    let e = failure(huge).await;
    assert!(e.contains("larger than"), "{e}");
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    // Each answer keeps the connection alive, and then the server closes it anyway.
    let s = scripted(vec![
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1", true),
        Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2", true),
    ])
    .await;
    let pool = pool(s.addr);
    let (_, body, _) = exchange(&pool, get()).await.expect("first");
    assert_eq!(&body[..], b"1");
    assert_eq!(pool.idle_len(), 1);
    let (_, body, _) = exchange(&pool, get())
        .await
        .expect("second, on a new connection");
    assert_eq!(&body[..], b"2");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

/// An upload far larger than the socket buffers take, so its body cannot be written whole
/// while the server does not read.
const UPLOAD: usize = 32 << 20;

/// A `/upload` request with an [`UPLOAD`]-byte body and its `content-length`.
fn upload(method: Method, extra: Option<(&str, &str)>) -> Request<ReqBody> {
    static BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| vec![b'x'; UPLOAD]);
    let mut req = Request::builder()
        .method(method)
        .uri("/upload")
        .header("host", "svc")
        .header("content-length", body.len());
    if let Some((name, value)) = extra {
        req = req.header(name, value);
    }
    req.body(ReqBody::Replay(Replay::new(Bytes::from_static(body), None)))
        .expect("request")
}

/// A server for one connection: once its first request head is read (nothing of the body),
/// `serve` has the connection.
async fn after_first_head<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        serve(stream).await;
    });
    addr
}

#[tokio::test]
async fn an_answer_before_the_request_body_is_sent_is_passed_on() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = after_first_head(|mut stream| async move {
        // Refuses the body without reading it, and keeps the connection open until the
        // client is done.
        stream
            .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!")
            .await
            .expect("answer");
        let _ = done_rx.await;
    })
    .await;
    let pool = pool(addr);
    let req = upload(Method::POST, None);
    let (status, answer, _) = exchange(&pool, req).await.expect("the early answer");
    assert_eq!(
        (status, &answer[..]),
        (StatusCode::PAYLOAD_TOO_LARGE, &b"big!"[..])
    );
    assert_eq!(
        pool.idle_len(),
        0,
        "a connection with a half-sent body is closed"
    );
    let _ = done_tx.send(());
}

#[tokio::test]
async fn a_body_error_names_the_upstream_failure() {
    let s = scripted(vec![Reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        true,
    )])
    .await;
    let resp = pool(s.addr)
        .send(get(), Instant::now(), None)
        .await
        .expect("head");
    let err = resp.into_body().collect().await.expect_err("truncated");
    assert!(matches!(err, BodyError::H1(_)), "{err:?}");
    assert!(
        err.to_string().contains("middle of the response body"),
        "{err}"
    );
}

#[tokio::test]
async fn a_100_continue_while_the_body_is_sent_does_not_stop_it() {
    let addr = after_first_head(|mut stream| async move {
        // The interim answer goes out before any of the body is read, then the whole body is
        // read and counted.
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .expect("continue");
        let mut got = 0usize;
        let mut chunk = vec![0u8; 64 * 1024];
        while got < UPLOAD {
            match stream.read(&mut chunk).await.expect("body") {
                0 => break,
                n => got += n,
            }
        }
        let text = got.to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(answer.as_bytes()).await.expect("answer");
        let _ = stream.read(&mut chunk).await;
    })
    .await;
    let req = upload(Method::PUT, Some(("expect", "100-continue")));
    let pool = pool(addr);
    let answer = tokio::time::timeout(Duration::from_secs(60), exchange(&pool, req))
        .await
        .expect("the body was sent whole and answered");
    let (status, text, _) = answer.expect("exchange");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&text[..], UPLOAD.to_string().as_bytes());
    assert_eq!(pool.idle_len(), 1, "the connection stays usable");
}

#[tokio::test]
async fn read_whole_keeps_a_body_that_came_with_its_head_and_reads_one_still_to_come() {
    use crate::pool::Inner;
    let (rest_tx, rest_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = after_first_head(|mut stream| async move {
        let whole = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        stream.write_all(whole).await.expect("write");
        let mut buf = Vec::new();
        read_request(&mut stream, &mut buf)
            .await
            .expect("second request");
        // Half the body now, the rest once the client has its head.
        let half = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe";
        stream.write_all(half).await.expect("write");
        rest_rx.await.expect("go");
        stream.write_all(b"llo").await.expect("write");
        let _ = stream.read(&mut [0u8; 1]).await;
    })
    .await;
    let pool = pool(addr);
    let resp = pool.send(get(), Instant::now(), None).await.expect("head");
    let body = resp.into_body().read_whole(1024).await.expect("whole");
    assert!(
        matches!(body.inner, Inner::H1(_)),
        "streamed from the buffer: {body:?}"
    );
    let bytes = body.collect().await.expect("body").to_bytes();
    assert_eq!(&bytes[..], b"hello");

    let resp = pool.send(get(), Instant::now(), None).await.expect("head");
    rest_tx.send(()).expect("server waits");
    let body = resp.into_body().read_whole(1024).await.expect("whole");
    assert!(
        matches!(body.inner, Inner::Read(_)),
        "read into memory: {body:?}"
    );
    let bytes = body.collect().await.expect("body").to_bytes();
    assert_eq!(&bytes[..], b"hello");
}

#[tokio::test]
async fn hop_by_hop_fields_are_read_and_not_passed_on() {
    // Keep-alive, a name listed in `Connection` (before its field), `TE` other than
    // `trailers`, `Upgrade` and `Proxy-Connection` all describe this connection only; the
    // end-to-end fields stay, in any spelling of their names.
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: s\r\nX-Hop: 1\r\nconnection: X-Hop, keep-alive\r\n\
        Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: gzip\r\n\
        X-Custom: yes\r\nCONTENT-TYPE: text/plain\r\nContent-Length: 2\r\n\r\nok";
    let s = scripted(vec![Reply(ANSWER, false), Reply(ANSWER, false)]).await;
    let pool = pool(s.addr);
    for _ in 0..2 {
        let resp = pool.send(get(), Instant::now(), None).await.expect("send");
        assert!(!resp.body().may_carry_hop_by_hop());
        let mut names: Vec<_> = resp.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "content-type", "server", "x-custom"],
            "{:?}",
            resp.headers()
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "kept alive, reused");
}

#[tokio::test]
async fn close_in_any_connection_token_ends_the_connection() {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nok";
    let s = scripted(vec![Reply(ANSWER, false), Reply(ANSWER, false)]).await;
    let pool = pool(s.addr);
    for _ in 0..2 {
        let (status, body, _) = exchange(&pool, get()).await.expect("exchange");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        2,
        "closed after each answer"
    );
}

#[test]
fn a_head_without_host_gets_one_first_and_one_with_host_keeps_its_own() {
    let no_host = Request::builder()
        .method(Method::POST)
        .uri("http://ignored/up?x=1")
        .header("x-a", "1")
        .header("content-length", "3")
        .body(())
        .expect("request");
    let head = super::encode(&no_host.into_parts().0, false, "10.0.0.1:8080");
    assert_eq!(
        String::from_utf8_lossy(&head.bytes),
        "POST /up?x=1 HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n"
    );
    let with_host = Request::builder()
        .uri("/")
        .header("x-a", "1")
        .header("host", "svc")
        .body(())
        .expect("request");
    let head = super::encode(&with_host.into_parts().0, true, "10.0.0.1:8080");
    assert_eq!(
        String::from_utf8_lossy(&head.bytes),
        "GET / HTTP/1.1\r\nx-a: 1\r\nhost: svc\r\n\r\n"
    );
}
