//! The demo's traffic: a steady trickle of requests at the frontend's sidecar (inbound), and
//! the tally of which catalog version answered (read from the nested `upstream` JSON).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters shared between the traffic task and the status line.
#[derive(Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub v1: AtomicU64,
    pub v2: AtomicU64,
}

impl Tally {
    /// `requests 120  ok 120  errors 0  | catalog v1 108 (90.0%)  v2 12 (10.0%)`
    pub fn line(&self) -> String {
        let (sent, ok, errors) = (
            self.sent.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
        let (v1, v2) = (
            self.v1.load(Ordering::Relaxed),
            self.v2.load(Ordering::Relaxed),
        );
        let pct = |n: u64| 100.0 * n as f64 / (v1 + v2).max(1) as f64;
        format!(
            "requests {sent}  ok {ok}  errors {errors}  | catalog v1 {v1} ({:.1}%)  v2 {v2} ({:.1}%)",
            pct(v1),
            pct(v2)
        )
    }
}

/// Sends `rps` requests per second to `url` until the task is aborted.
pub async fn drive(url: String, rps: f64, tally: Arc<Tally>) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo traffic: cannot build an HTTP client: {e}");
            return;
        }
    };
    let period = Duration::from_secs_f64(1.0 / rps.clamp(0.1, 1000.0));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        ticker.tick().await;
        n += 1;
        let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
        tokio::spawn(async move {
            tally.sent.fetch_add(1, Ordering::Relaxed);
            let user = format!("user-{}", n % 50);
            match client.get(&url).header("x-user", user).send().await {
                Ok(resp) if resp.status().is_success() => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    match catalog_version(&body) {
                        Some("v1") => tally.v1.fetch_add(1, Ordering::Relaxed),
                        Some("v2") => tally.v2.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
                Ok(resp) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(status = %resp.status(), "demo request failed");
                }
                Err(e) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "demo request failed");
                }
            }
        });
    }
}

/// frontend's answer embeds catalog's answer as `upstream`.
fn catalog_version(frontend: &serde_json::Value) -> Option<&str> {
    frontend.get("upstream")?.get("version")?.as_str()
}
