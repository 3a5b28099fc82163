//! `trellis sample-app`: the demo's tiny HTTP service. It answers every request with JSON
//! `{service, version, instance, path, upstream}`; with `--call URL` it first calls that URL
//! through its sidecar's outbound listener (used as an HTTP proxy) and embeds the answer as
//! `upstream`. Prints `{"ready":"app","http":"127.0.0.1:PORT"}` once bound.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Headers copied from the incoming request onto the upstream call (so a hash key set by the
/// first caller reaches every hop).
const PROPAGATED: &[&str] = &["x-user", "x-canary", "x-request-id"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Service name reported in answers.
    #[arg(long)]
    pub name: String,
    /// Version reported in answers (and usually the sidecar's `version` label).
    #[arg(long = "version", default_value = "v1")]
    pub app_version: String,
    /// Instance name reported in answers (default `<name>-<version>-<random>`).
    #[arg(long)]
    pub instance: Option<String>,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// URL to call for every request, e.g. `http://ratings/ratings`.
    #[arg(long)]
    pub call: Option<String>,
    /// The sidecar's outbound listener, used as HTTP proxy for `--call`.
    #[arg(long)]
    pub outbound: Option<SocketAddr>,
}

struct App {
    service: String,
    version: String,
    instance: String,
    call: Option<String>,
    http: reqwest::Client,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy();
    if let Some(outbound) = args.outbound {
        let proxy = reqwest::Proxy::http(format!("http://{outbound}"))
            .with_context(|| format!("--outbound {outbound}: not usable as an HTTP proxy"))?;
        builder = builder.proxy(proxy);
    }
    let app = Arc::new(App {
        instance: args.instance.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{:04x}",
                args.name,
                args.app_version,
                rand::random::<u16>()
            )
        }),
        service: args.name,
        version: args.app_version,
        call: args.call,
        http: builder.build().context("cannot build the HTTP client")?,
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let addr = listener.local_addr()?;
    let mut fields = serde_json::Map::new();
    fields.insert("http".to_string(), addr.to_string().into());
    crate::ready::announce("app", fields);
    tracing::info!(%addr, service = %app.service, version = %app.version, instance = %app.instance, "sample app listening");

    let mut terminate = terminate_signal()?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.answer(req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("sample app stopping");
    Ok(ExitCode::SUCCESS)
}

fn terminate_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")
}

impl App {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let (status, upstream) = match &self.call {
            None => (StatusCode::OK, serde_json::Value::Null),
            Some(url) => self.call_upstream(url, &req).await,
        };
        let body = serde_json::json!({
            "service": self.service,
            "version": self.version,
            "instance": self.instance,
            "path": path,
            "upstream": upstream,
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&self.instance) {
            resp.headers_mut().insert("x-instance", v);
        }
        resp
    }

    /// Calls `url`; a failed call makes this answer a 502 carrying the upstream's error.
    async fn call_upstream(
        &self,
        url: &str,
        req: &Request<Incoming>,
    ) -> (StatusCode, serde_json::Value) {
        let mut call = self.http.get(url);
        for name in PROPAGATED {
            if let Some(v) = req.headers().get(*name) {
                call = call.header(*name, v);
            }
        }
        let resp = match call.send().await {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({ "error": format!("GET {url}: {e}") }),
                );
            }
        };
        let status = resp.status();
        let reason = resp
            .headers()
            .get("x-trellis-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if status.is_success() {
            (StatusCode::OK, body)
        } else {
            (
                StatusCode::BAD_GATEWAY,
                serde_json::json!({ "status": status.as_u16(), "reason": reason, "body": body }),
            )
        }
    }
}
