//! Polling for a condition with a deadline. This is how tests synchronise with the processes
//! they start: never a fixed sleep, always "poll until true, fail clearly at the deadline".

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

/// How often a condition is re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` every ~20 ms until it returns true; fails after `deadline` naming `what`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(deadline, what, || {
        let fut = check();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await
}

/// Polls `check` until it returns `Ok(value)`. An `Err(detail)` means "not yet"; the last
/// detail goes into the failure message so a timeout says what was seen instead.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    let mut last = String::new();
    loop {
        match tokio::time::timeout_at(end, check()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(detail)) => last = detail,
            Err(_) => {}
        }
        if Instant::now() >= end {
            if last.is_empty() {
                bail!("timed out after {deadline:?} waiting for {what}");
            }
            bail!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
