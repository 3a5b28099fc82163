//! The client half of a pooled HTTP/1.1 upstream connection, driven by whoever sends the
//! request (the downstream connection's task), not by a task of its own.
//!
//! hyper's client connection runs as a separate task: every request crossed its dispatch
//! channel, a oneshot for the response and a channel for the body, with two task wake-ups
//! and the request moved through several envelopes (docs/PERFORMANCE-NOTES.md). Here the
//! request head is written from the sending task, the response head is parsed there
//! (`httparse`, the parser hyper uses), and the response body reads the socket when it is
//! polled, so the whole exchange runs in the task that serves the downstream connection.
//!
//! The protocol follows RFC 9112: the request body is framed by its `Content-Length` or sent
//! chunked; interim (1xx) responses are skipped; the response body is delimited by
//! `Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection, and is empty
//! for `HEAD`, 204 and 304. A connection goes back to its pool only when its response was read
//! to the end, nothing more arrived, and neither side asked to close it. If the server answers
//! before the request body is sent (e.g. a 413), sending stops and the connection is closed
//! after that response.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::LiveConn;
use crate::body::ReqBody;

/// A response head (status line and headers) larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// At most this many response headers (hyper's default is 100 too).
const MAX_HEADERS: usize = 100;
/// The smallest read; larger ones while a long body of known length streams.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;
/// Request body data is gathered behind the head into one write up to this size.
const COALESCE: usize = 16 * 1024;
/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why an exchange on an upstream HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before a response")]
    Closed,
    #[error("malformed response from the upstream: {0}")]
    Parse(&'static str),
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream closed the connection in the middle of the response body")]
    BodyEnded,
    #[error("the request body failed: {0}")]
    RequestBody(#[source] hyper::Error),
    #[error("the request body does not match its content-length")]
    RequestLength,
}

/// The transport under one connection.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One open connection: its transport, what was read and not used yet, and its place in the
/// pool's count of open connections (and the `maxConnections` slot, if any).
pub(crate) struct Conn {
    io: Io,
    buf: BytesMut,
    /// Scratch space for parsing response heads.
    fields: Vec<Field>,
    _live: LiveConn,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Boxed once for the connection's life: requests and response bodies then move a
    /// pointer, not the connection.
    pub(super) fn new(io: Io, live: LiveConn) -> Box<Self> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            fields: Vec::new(),
            _live: live,
        })
    }

    /// Reads more into the buffer (at least `READ_MIN` of room, up to `want`); `Ok(0)` at
    /// the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let room = want.clamp(READ_MIN, READ_MAX);
        if self.buf.capacity() - self.buf.len() < room {
            self.buf.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// While the request is still being sent: drops the complete interim (1xx) answers at the
    /// front of the buffer, and tells whether what follows is the start of a final one (or
    /// something that cannot be parsed, left for the response-head reader to report).
    fn final_answer_came(&mut self) -> bool {
        loop {
            if self.buf.is_empty() {
                return false;
            }
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                &self.buf,
                &mut fields,
            );
            match (parsed, resp.code) {
                (Ok(httparse::Status::Complete(n)), Some(code))
                    if (100..200).contains(&code) && code != 101 =>
                {
                    self.buf.advance(n);
                }
                (Ok(httparse::Status::Partial), _) => return self.buf.len() >= MAX_HEAD,
                _ => return true,
            }
        }
    }

    /// Whether an idle connection can take a request: false once the server closed it or
    /// sent something nobody asked for. No system call unless the socket became readable.
    pub(super) fn idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the end of the stream, unasked bytes, or a stale readiness (the read
            // then finds nothing). Over TLS, a post-handshake message such as a session ticket
            // is taken in by the TLS layer and yields nothing either.
            Poll::Ready(Ok(())) => match self.poll_fill(&mut cx, READ_MIN) {
                Poll::Pending => self.buf.is_empty(),
                Poll::Ready(_) => false,
            },
        }
    }

    /// Writes `bytes` and flushes. While the server does not take them, watches for an
    /// answer: `Ok(false)` when a final one (or the end of the stream) arrived before all was
    /// written. Interim answers (`100 Continue`) are consumed and sending goes on.
    async fn write_watching(&mut self, bytes: &[u8]) -> io::Result<bool> {
        let mut off = 0;
        poll_fn(|cx| {
            loop {
                let polled = if off < bytes.len() {
                    Pin::new(&mut self.io).poll_write(cx, &bytes[off..])
                } else {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Ok(true)),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                };
                match polled {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => match self.poll_fill(cx, READ_MIN) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(false)),
                        Poll::Ready(Ok(_)) if self.final_answer_came() => {
                            return Poll::Ready(Ok(false));
                        }
                        // Only an interim answer, or not enough to tell: keep writing.
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    },
                }
            }
        })
        .await
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// A request head encoded for the wire, kept so the request can go to another connection
/// when a pooled one turns out to be closed (or to another endpoint, by a retry).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    bytes: Vec<u8>,
    framing: ReqFraming,
    is_head: bool,
    /// No body and an idempotent method: safe to send again after the connection closed
    /// without an answer (RFC 9110, section 9.2.2).
    idempotent_empty: bool,
}

/// Encodes the request line and headers (the hop-by-hop ones already removed by the
/// caller); `host` is sent when the request has no `Host`; `empty`: the body is known to be
/// empty.
pub(crate) fn encode(parts: &http::request::Parts, empty: bool, host: &str) -> Head {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => match parts.uri.authority() {
            Some(a) if parts.method == Method::CONNECT => {
                out.extend_from_slice(a.as_str().as_bytes())
            }
            _ => out.push(b'/'),
        },
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let fields = out.len();
    let mut has_host = false;
    let mut length = None;
    for (name, value) in &parts.headers {
        if name == header::HOST {
            has_host = true;
        } else if name == header::CONTENT_LENGTH {
            // The downstream side already checked it; an unreadable one is replaced below.
            match parse_decimal(value.as_bytes().trim_ascii()) {
                Some(n) if length.is_none() => length = Some(n),
                _ => continue,
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        // First after the request line, as RFC 9110 (section 7.2) asks.
        let line = [b"host: ", host.as_bytes(), b"\r\n"].concat();
        out.splice(fields..fields, line);
    }
    let framing = match length {
        Some(0) => ReqFraming::Empty,
        Some(n) => ReqFraming::Length(n),
        None if empty => {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            ReqFraming::Empty
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ReqFraming::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    Head {
        bytes: out,
        framing,
        is_head: parts.method == Method::HEAD,
        idempotent_empty: framing == ReqFraming::Empty
            && matches!(
                parts.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            ),
    }
}

/// The outcome of [`exchange`] that is not a response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A reused connection was closed by the server before the request could have been
    /// acted on: the request, untouched, can go to another connection.
    Stale(Head, ReqBody),
    Error(H1Error),
}

/// A response head and the connection its body is to be read from.
pub(crate) struct Answer {
    pub head: http::response::Parts,
    pub body: H1Body,
}

/// Sends the request on `conn` and reads the response head. `reused`: the connection came
/// from the pool (a close before any answer then means it had gone stale).
pub(crate) async fn exchange(
    mut conn: Box<Conn>,
    head: Head,
    mut body: ReqBody,
    reused: bool,
) -> Result<Answer, Failure> {
    let Head {
        bytes: mut wbuf,
        framing,
        is_head,
        idempotent_empty,
    } = head;
    let mut body_done = framing == ReqFraming::Empty;
    let mut sent: u64 = 0;
    let mut answered_early = false;
    let mut first_write = true;
    // A large data frame, written as it is after what was gathered before it.
    let mut large: Option<Bytes> = None;
    loop {
        // Gather what the body has ready behind what is waiting to be written.
        let mut waiting = false;
        while !body_done && large.is_none() && wbuf.len() < COALESCE {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Pending => {
                    waiting = true;
                    break;
                }
                Poll::Ready(frame) => {
                    (body_done, large) =
                        push_frame(&mut wbuf, framing, &mut sent, frame).map_err(Failure::Error)?;
                }
            }
        }
        if !wbuf.is_empty() {
            match conn.write_watching(&wbuf).await {
                Ok(true) => {}
                Ok(false) => {
                    answered_early = true;
                    break;
                }
                // Nothing of the body was taken yet: the request can go elsewhere.
                Err(_) if first_write && reused && sent == 0 && large.is_none() => {
                    let head = Head {
                        bytes: wbuf,
                        framing,
                        is_head,
                        idempotent_empty,
                    };
                    return Err(Failure::Stale(head, body));
                }
                Err(e) => return Err(Failure::Error(H1Error::Io(e))),
            }
            first_write = false;
            // A bodiless request keeps its head, in case the connection proves stale below.
            if framing != ReqFraming::Empty {
                wbuf.clear();
            }
        }
        if let Some(data) = large.take() {
            match conn.write_watching(&data).await {
                Ok(true) => {}
                Ok(false) => {
                    answered_early = true;
                    break;
                }
                Err(e) => return Err(Failure::Error(H1Error::Io(e))),
            }
            if framing == ReqFraming::Chunked {
                // The chunk's CRLF goes out with what follows.
                wbuf.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if body_done {
            break;
        }
        if waiting {
            // Nothing from the body yet: wait for it, or for the server to answer early.
            enum Event {
                Frame(Option<Result<Frame<Bytes>, hyper::Error>>),
                Read(io::Result<usize>),
            }
            let event = poll_fn(|cx| {
                if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                    return Poll::Ready(Event::Frame(frame));
                }
                conn.poll_fill(cx, READ_MIN).map(Event::Read)
            })
            .await;
            match event {
                Event::Frame(frame) => {
                    (body_done, large) =
                        push_frame(&mut wbuf, framing, &mut sent, frame).map_err(Failure::Error)?;
                }
                Event::Read(Ok(n)) if n == 0 || conn.final_answer_came() => {
                    answered_early = true;
                    break;
                }
                // An interim answer (`100 Continue`), consumed: the body goes on.
                Event::Read(Ok(_)) => {}
                Event::Read(Err(e)) => return Err(Failure::Error(H1Error::Io(e))),
            }
        }
    }
    let reusable = body_done && !answered_early;
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty() {
            got_any = true;
            match parse_head(&mut conn.buf, &mut conn.fields, is_head) {
                Ok(None) => {}
                Ok(Some(Parsed::Interim)) => continue,
                Ok(Some(Parsed::Final {
                    head,
                    framing,
                    keep_alive,
                })) => {
                    let body = H1Body {
                        conn: Some(conn),
                        framing,
                        keep_alive: keep_alive && reusable,
                        home: None,
                    };
                    return Ok(Answer { head, body });
                }
                Err(e) => return Err(Failure::Error(e)),
            }
        }
        let read = poll_fn(|cx| conn.poll_fill(cx, READ_MIN)).await;
        let closed = match &read {
            Ok(0) => true,
            Ok(_) => continue,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
        };
        if closed && !got_any && reused && idempotent_empty {
            let head = Head {
                bytes: wbuf,
                framing,
                is_head,
                idempotent_empty,
            };
            return Err(Failure::Stale(head, body));
        }
        return Err(Failure::Error(match read {
            Ok(_) => H1Error::Closed,
            Err(e) => H1Error::Io(e),
        }));
    }
}

/// Appends one request body frame to `wbuf`, framed; true once the body has ended.
/// Data larger than [`COALESCE`] is given back, to be written as it is (after its chunk-size
/// line, when chunked).
fn push_frame(
    wbuf: &mut Vec<u8>,
    framing: ReqFraming,
    sent: &mut u64,
    frame: Option<Result<Frame<Bytes>, hyper::Error>>,
) -> Result<(bool, Option<Bytes>), H1Error> {
    let frame = match frame {
        None => {
            match framing {
                ReqFraming::Chunked => wbuf.extend_from_slice(b"0\r\n\r\n"),
                ReqFraming::Length(n) if *sent != n => return Err(H1Error::RequestLength),
                _ => {}
            }
            return Ok((true, None));
        }
        Some(Err(e)) => return Err(H1Error::RequestBody(e)),
        Some(Ok(frame)) => frame,
    };
    match frame.into_data() {
        Ok(data) => {
            *sent += data.len() as u64;
            match framing {
                ReqFraming::Length(n) if *sent > n => return Err(H1Error::RequestLength),
                ReqFraming::Empty if !data.is_empty() => return Err(H1Error::RequestLength),
                _ if data.is_empty() => {}
                ReqFraming::Chunked => {
                    let _ = write!(wbuf, "{:x}\r\n", data.len());
                    if data.len() > COALESCE {
                        return Ok((false, Some(data)));
                    }
                    wbuf.extend_from_slice(&data);
                    wbuf.extend_from_slice(b"\r\n");
                }
                _ if data.len() > COALESCE => return Ok((false, Some(data))),
                _ => wbuf.extend_from_slice(&data),
            }
            Ok((false, None))
        }
        // Trailers end a chunked body; HTTP/1.1 has no way to send them otherwise.
        Err(frame) => match (framing, frame.into_trailers()) {
            (ReqFraming::Chunked, Ok(trailers)) => {
                wbuf.extend_from_slice(b"0\r\n");
                encode_fields(wbuf, &trailers);
                wbuf.extend_from_slice(b"\r\n");
                Ok((true, None))
            }
            _ => Ok((false, None)),
        },
    }
}

fn encode_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Where a header field sits in the head: name offset and length, value offset and length.
type Field = (usize, usize, usize, usize);

enum Parsed {
    /// A 1xx response other than 101: skipped, the final one follows.
    Interim,
    Final {
        head: http::response::Parts,
        framing: Framing,
        keep_alive: bool,
    },
}

/// Parses a response head from the front of `buf` (consumed when complete).
/// `at` is scratch space, kept with the connection so no request allocates it.
fn parse_head(
    buf: &mut BytesMut,
    at: &mut Vec<Field>,
    is_head: bool,
) -> Result<Option<Parsed>, H1Error> {
    // Left uninitialised: httparse writes the fields it finds.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(_) => return Err(H1Error::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Parse("more than 100 header fields"));
        }
        Err(_) => return Err(H1Error::Parse("not an HTTP/1.x response head")),
    };
    let code = resp.code.ok_or(H1Error::Parse("no status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field sits, so names and values can share the head's bytes.
    let base = buf.as_ptr() as usize;
    let count = resp.headers.len();
    at.clear();
    at.extend(resp.headers.iter().map(|f| {
        (
            f.name.as_ptr() as usize - base,
            f.name.len(),
            f.value.as_ptr() as usize - base,
            f.value.len(),
        )
    }));
    let bytes = buf.split_to(len).freeze();
    if (100..200).contains(&code) {
        return if code == 101 {
            Err(H1Error::Parse(
                "101 Switching Protocols to a request that asked for no upgrade",
            ))
        } else {
            Ok(Some(Parsed::Interim))
        };
    }
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Parse("invalid status code"))?;
    // Filled in place: a map built apart would drop the empty one `Response::new` made.
    let (mut head, ()) = Response::new(()).into_parts();
    let headers = &mut head.headers;
    headers.reserve(count);
    let (mut close, mut keep_alive_10) = (false, false);
    let mut chunked = None;
    let mut length: Option<u64> = None;
    // `Connection` fields that list names beyond `close` and `keep-alive`: those go too.
    let mut listed: Vec<HeaderValue> = Vec::new();
    for &(ns, nl, vs, vl) in at.iter() {
        let name = field_name(&bytes[ns..ns + nl])?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vs..vs + vl))
            .map_err(|_| H1Error::Parse("invalid header value"))?;
        // The hop-by-hop fields (RFC 9110, section 7.6.1) describe this connection only:
        // read here, never passed on, so the head needs no stripping after.
        if name == header::CONNECTION {
            let mut lists = false;
            for token in tokens(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_10 = true;
                } else if !token.eq_ignore_ascii_case(b"trailers") {
                    lists = true;
                }
            }
            if lists {
                listed.push(value);
            }
            continue;
        } else if name == header::TRANSFER_ENCODING {
            chunked = Some(
                tokens(value.as_bytes())
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
            continue;
        } else if name == header::CONTENT_LENGTH {
            for token in tokens(value.as_bytes()) {
                let n = parse_decimal(token).ok_or(H1Error::Parse("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::Parse("conflicting content-length values"));
                }
                length = Some(n);
            }
        } else if crate::http::is_hop_by_hop(&name, value.as_bytes()) {
            continue;
        }
        headers.append(name, value);
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_10);
    for value in &listed {
        for token in tokens(value.as_bytes()) {
            if let Ok(name) = HeaderName::from_bytes(token) {
                headers.remove(name);
            }
        }
    }
    let framing = if is_head || code == 204 || code == 304 {
        Framing::Done
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length; such a message must not be followed
        // by another on the connection (RFC 9112, section 6.3).
        if length.is_some() || !chunked {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => {
                keep_alive = false;
                Framing::Close
            }
        }
    };
    head.status = status;
    head.version = version;
    Ok(Some(Parsed::Final {
        head,
        framing,
        keep_alive,
    }))
}

/// A field name of a response head; the spellings servers commonly send are matched without
/// the general parser's lower-casing and table lookups.
fn field_name(raw: &[u8]) -> Result<HeaderName, H1Error> {
    Ok(match raw {
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"ETag" | b"etag" => header::ETAG,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Vary" | b"vary" => header::VARY,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        _ => HeaderName::from_bytes(raw).map_err(|_| H1Error::Parse("invalid header name"))?,
    })
}

/// The comma-separated elements of a field value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A chunk-size line without its CRLF: hex digits, then optional extensions (ignored).
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = line
        .iter()
        .position(|b| matches!(b, b';' | b' ' | b'\t'))
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let d = char::from(*d).to_digit(16)?;
        Some((n << 4) | u64::from(d))
    })
}

/// How the rest of a response body is delimited.
#[derive(Debug)]
pub(crate) enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
    Done,
}

#[derive(Debug)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// A response body read straight from its connection; the connection goes back to its pool
/// (`home`) once the body was read to the end, if it can take another request.
#[derive(Debug)]
pub(crate) struct H1Body {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    pub(super) home: Option<(std::sync::Arc<super::EndpointPool>, std::time::Instant)>,
}

impl H1Body {
    pub fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Whether the rest of the body is in the connection's buffer already, so reading it
    /// needs no more I/O and cannot fail.
    pub fn is_buffered(&self) -> bool {
        match (&self.framing, &self.conn) {
            (Framing::Done, _) => true,
            (Framing::Length(n), Some(conn)) => conn.buf.len() as u64 >= *n,
            _ => false,
        }
    }

    /// Gives the connection back when the body is complete (at once for an empty body).
    pub fn release_if_done(&mut self) {
        if !self.is_end_stream() {
            return;
        }
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
            && let Some((pool, since)) = self.home.take()
        {
            pool.put(conn, since);
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = poll_body(conn, &mut self.framing, cx);
        match &polled {
            // A broken body leaves the connection in an unknown state.
            Poll::Ready(Some(Err(_))) => {
                self.conn = None;
                self.framing = Framing::Done;
            }
            Poll::Ready(_) => self.release_if_done(),
            Poll::Pending => {}
        }
        polled
    }
}

/// Reads into the buffer for a body that needs more; the end of the stream is an error here.
macro_rules! fill {
    ($conn:expr, $cx:expr, $want:expr) => {
        match ready!($conn.poll_fill($cx, $want)) {
            Ok(0) => return Poll::Ready(Some(Err(H1Error::BodyEnded))),
            Ok(_) => continue,
            Err(e) => return Poll::Ready(Some(Err(H1Error::Io(e)))),
        }
    };
}

/// Takes what is buffered of the `rem` bytes still to come (at least one is buffered).
fn take_data(conn: &mut Conn, rem: &mut u64) -> Bytes {
    let n = conn
        .buf
        .len()
        .min(usize::try_from(*rem).unwrap_or(usize::MAX));
    *rem -= n as u64;
    conn.buf.split_to(n).freeze()
}

fn poll_body(
    conn: &mut Conn,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
    loop {
        match framing {
            Framing::Done => return Poll::Ready(None),
            Framing::Length(rem) => {
                if conn.buf.is_empty() {
                    fill!(conn, cx, usize::try_from(*rem).unwrap_or(usize::MAX));
                }
                let data = take_data(conn, rem);
                if *rem == 0 {
                    *framing = Framing::Done;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Close => {
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx, READ_MAX)) {
                        Ok(0) => {
                            *framing = Framing::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(H1Error::Io(e)))),
                    }
                }
                return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = conn.buf.windows(2).position(|w| w == b"\r\n") else {
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(H1Error::Parse("chunk-size line too long"))));
                    }
                    fill!(conn, cx, READ_MIN);
                };
                let Some(size) = parse_chunk_size(&conn.buf[..end]) else {
                    return Poll::Ready(Some(Err(H1Error::Parse("invalid chunk size"))));
                };
                conn.buf.advance(end + 2);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(rem)) => {
                if conn.buf.is_empty() {
                    fill!(conn, cx, usize::try_from(*rem).unwrap_or(usize::MAX));
                }
                let data = take_data(conn, rem);
                if *rem == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if conn.buf.len() < 2 {
                    fill!(conn, cx, READ_MIN);
                }
                if &conn.buf[..2] != b"\r\n" {
                    return Poll::Ready(Some(Err(H1Error::Parse(
                        "chunk data not followed by CRLF",
                    ))));
                }
                conn.buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let (len, trailers) = match httparse::parse_headers(&conn.buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut map = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) else {
                                return Poll::Ready(Some(Err(H1Error::Parse(
                                    "invalid trailer field",
                                ))));
                            };
                            map.append(name, value);
                        }
                        (len, map)
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < MAX_HEAD => {
                        fill!(conn, cx, READ_MIN);
                    }
                    Ok(httparse::Status::Partial) => {
                        return Poll::Ready(Some(Err(H1Error::HeadTooLarge)));
                    }
                    Err(_) => return Poll::Ready(Some(Err(H1Error::Parse("malformed trailers")))),
                };
                conn.buf.advance(len);
                *framing = Framing::Done;
                if trailers.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
    }
}

#[cfg(test)]
mod tests;
