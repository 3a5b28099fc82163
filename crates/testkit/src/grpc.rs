//! A real gRPC echo server (tonic, generated from `proto/echo.proto` by build.rs) and a client
//! constructor that calls it through a sidecar's outbound listener.

use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Generated messages, server and client.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("trellis.test.echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// Trailing metadata key the server puts on every failed call, to check trailers survive.
pub const DETAIL_TRAILER: &str = "x-echo-detail";

/// A running gRPC echo server; stops when dropped.
pub struct GrpcEchoServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcEchoServer {
    /// Starts on 127.0.0.1:0; replies carry `instance = name`.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("gRPC echo: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let svc = echo_service(name);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// The echo service, for servers that serve more than it.
pub(crate) fn echo_service(name: &str) -> EchoServer<impl Echo> {
    EchoServer::new(EchoSvc {
        name: name.to_string(),
    })
}

impl Drop for GrpcEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client that connects to `outbound` (a sidecar's outbound listener) and sends every call
/// with `:authority = service`, so the sidecar routes it to that service.
pub async fn client_via(
    outbound: SocketAddr,
    service: &str,
) -> anyhow::Result<pb::echo_client::EchoClient<tonic::transport::Channel>> {
    let origin: http::Uri = format!("http://{service}")
        .parse()
        .with_context(|| format!("`{service}` is not a valid authority"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .context("outbound address")?
        .origin(origin)
        .connect()
        .await
        .with_context(|| format!("gRPC connect to {outbound}"))?;
    Ok(pb::echo_client::EchoClient::new(channel))
}

struct EchoSvc {
    name: String,
}

impl EchoSvc {
    fn failure(&self, code: i32, message: &str) -> Status {
        let mut status = Status::new(tonic::Code::from(code), format!("echo failed: {message}"));
        if let Ok(v) = self.name.parse() {
            status.metadata_mut().insert(DETAIL_TRAILER, v);
        }
        status
    }

    fn reply(&self, req: &EchoRequest, index: u32) -> EchoReply {
        EchoReply {
            message: req.message.clone(),
            index,
            instance: self.name.clone(),
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for EchoSvc {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = request.into_inner();
        if req.fail_code != 0 {
            return Err(self.failure(req.fail_code, &req.message));
        }
        Ok(Response::new(self.reply(&req, 0)))
    }

    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let req = request.into_inner();
        let mut items: Vec<Result<EchoReply, Status>> =
            (0..req.count).map(|i| Ok(self.reply(&req, i))).collect();
        if req.fail_code != 0 {
            items.push(Err(self.failure(req.fail_code, &req.message)));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}
