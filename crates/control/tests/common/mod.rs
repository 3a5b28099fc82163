//! The admin API router on 127.0.0.1:0, backed by a redb store in a tempdir, with a CA and a
//! running registry; shared by the API test files.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use trellis_control::api::{ApiState, router};
use trellis_control::ca::{Ca, CaConfig};
use trellis_control::metrics::Metrics;
use trellis_control::registry::{Registry, RegistryConfig, RegistryTasks};
use trellis_control::store::RedbStore;
use trellis_control::xds::ProxyTable;

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    _tasks: RegistryTasks,
    _dir: tempfile::TempDir,
}

pub async fn serve() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(dir.path()).expect("store"));
    let ca = Ca::init(store.clone(), CaConfig::default())
        .await
        .expect("ca");
    let (registry, tasks) =
        Registry::start(store, RegistryConfig::default(), Arc::new(Metrics::new()))
            .await
            .expect("registry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(ApiState {
        registry,
        proxies: ProxyTable::default(),
        // Only advertised in answers; nothing listens there.
        xds_addr: "127.0.0.1:15010".parse().expect("addr"),
        ca,
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        _tasks: tasks,
        _dir: dir,
    }
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Status, JSON body (`null` when empty, a string when not JSON) and headers.
    pub async fn call(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body, headers)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, b, _) = self.call(self.http.get(self.url(path))).await;
        (s, b)
    }
}
