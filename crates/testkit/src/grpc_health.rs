//! A gRPC server that serves the echo service and `grpc.health.v1.Health` (generated from the
//! standard `proto/health.proto`) with a status the test switches.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Generated messages and server.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("grpc.health.v1");
}

pub use pb::health_check_response::ServingStatus;
use pb::health_server::{Health, HealthServer};
use pb::{HealthCheckRequest, HealthCheckResponse};

/// A running gRPC echo + health server; stops when dropped.
pub struct GrpcHealthServer {
    addr: SocketAddr,
    status: Arc<AtomicI32>,
    task: JoinHandle<()>,
}

impl GrpcHealthServer {
    /// Starts on 127.0.0.1:0, SERVING. `service` is the name whose health it reports; any
    /// other name is answered NOT_FOUND (as grpc-go's health server does), `""` always works.
    pub async fn start(name: &str, service: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("gRPC health: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let status = Arc::new(AtomicI32::new(ServingStatus::Serving as i32));
        let health = HealthServer::new(HealthSvc {
            service: service.to_string(),
            status: status.clone(),
        });
        let echo = crate::grpc::echo_service(name);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(echo)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self { addr, status, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What `Check` answers from now on.
    pub fn set_status(&self, s: ServingStatus) {
        self.status.store(s as i32, Ordering::SeqCst);
    }
}

impl Drop for GrpcHealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct HealthSvc {
    service: String,
    status: Arc<AtomicI32>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthSvc {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let asked = &request.get_ref().service;
        if !asked.is_empty() && *asked != self.service {
            return Err(Status::not_found(format!("unknown service `{asked}`")));
        }
        Ok(Response::new(HealthCheckResponse {
            status: self.status.load(Ordering::SeqCst),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "Watch is not served by this test server",
        ))
    }
}
