//! The retry budget of a cluster: within each second, retries may add at most `percent`% of
//! the requests that started in it, plus `min_per_second` retries whatever the load (linkerd's
//! budgets; Envoy's `retry_budget` with a `budget_interval`). Over any run,
//! retries ≤ percent% × requests + min_per_second × seconds, so an outage cannot turn into a
//! retry storm.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub percent: f64,
    pub min_per_second: u32,
}

#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    epoch: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    second: u64,
    requests: u64,
    retries: u64,
}

const WINDOW: Duration = Duration::from_secs(1);

impl RetryBudget {
    pub fn new(config: BudgetConfig, epoch: Instant) -> Self {
        RetryBudget {
            config,
            epoch,
            window: Mutex::new(Window::default()),
        }
    }

    fn with_window<T>(&self, now: Instant, f: impl FnOnce(&mut Window) -> T) -> T {
        let second = now.saturating_duration_since(self.epoch).as_secs() / WINDOW.as_secs();
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if w.second != second {
            *w = Window {
                second,
                ..Window::default()
            };
        }
        f(&mut w)
    }

    /// Counts a request (a first try).
    pub fn on_request(&self, now: Instant) {
        self.with_window(now, |w| w.requests += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self, now: Instant) -> bool {
        let BudgetConfig {
            percent,
            min_per_second,
        } = self.config;
        self.with_window(now, |w| {
            let allowed = f64::from(min_per_second) + w.requests as f64 * percent / 100.0;
            if (w.retries as f64) < allowed {
                w.retries += 1;
                true
            } else {
                false
            }
        })
    }
}
