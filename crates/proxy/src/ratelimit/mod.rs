//! Local rate limits on the inbound side (RateLimitPolicy, docs/RESOURCES.md): the first rule
//! whose path match fits the request decides, with one token bucket for every caller or one
//! per caller identity (`perSource`: the caller's SPIFFE ID from mTLS; callers without one
//! share a bucket). Over the limit the request is refused with 429, `Retry-After` (whole
//! seconds until a token) and `x-trellis-reason: rate_limited`, or gRPC status 8.
//!
//! A service without a RateLimitPolicy has no limiter at all: the request path checks one
//! `Option`. With one, a request costs a path comparison per rule and one short mutex hold.

mod bucket;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) use bucket::{BucketSpec, TokenBucket};

/// Most per-source buckets one rule keeps; past it, full (idle) buckets are forgotten, and
/// if none is, new callers share one overflow bucket.
const MAX_SOURCES: usize = 10_000;

/// Which requests a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathRule {
    /// Every request (the rule without `match`).
    Any,
    Exact(String),
    /// Whole segments: `/api` matches `/api` and `/api/...`.
    Prefix(String),
}

impl PathRule {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Any => true,
            PathRule::Exact(p) => path == p,
            PathRule::Prefix(p) if p == "/" => true,
            PathRule::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleConfig {
    /// Shown in metrics and /config_dump (the inbound route's name).
    pub name: String,
    pub path: PathRule,
    pub bucket: BucketSpec,
    pub per_source: bool,
}

#[derive(Debug)]
struct Rule {
    config: RuleConfig,
    shared: Mutex<TokenBucket>,
    sources: Mutex<HashMap<Box<str>, TokenBucket>>,
    allowed: AtomicU64,
    limited: AtomicU64,
    /// Limiter-clock nanoseconds of the first and the latest decision (0: none yet).
    first: AtomicU64,
    last: AtomicU64,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Over the limit of this rule; a token is back after `retry_after`.
    Limited {
        rule: String,
        retry_after: Duration,
    },
}

/// The limits of one service.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rules: Vec<Rule>,
    start: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RateLimiter {
    pub fn new(rules: Vec<RuleConfig>) -> Self {
        let start = Instant::now();
        RateLimiter {
            rules: rules
                .into_iter()
                .map(|config| Rule {
                    shared: Mutex::new(TokenBucket::full(&config.bucket, Duration::ZERO)),
                    sources: Mutex::new(HashMap::new()),
                    config,
                    allowed: AtomicU64::new(0),
                    limited: AtomicU64::new(0),
                    first: AtomicU64::new(0),
                    last: AtomicU64::new(0),
                })
                .collect(),
            start,
        }
    }

    /// Decides on a request now.
    pub fn check(&self, path: &str, source: Option<&str>) -> Verdict {
        self.check_at(path, source, self.start.elapsed())
    }

    /// Decides on a request at `now` (time since the limiter started).
    pub fn check_at(&self, path: &str, source: Option<&str>, now: Duration) -> Verdict {
        let Some(rule) = self.rules.iter().find(|r| r.config.path.matches(path)) else {
            return Verdict::Allowed;
        };
        let spec = &rule.config.bucket;
        let taken = if rule.config.per_source {
            let key = source.unwrap_or_default();
            let mut map = lock(&rule.sources);
            if !map.contains_key(key) && map.len() >= MAX_SOURCES {
                map.retain(|_, b| !b.is_full(spec, now));
            }
            if let Some(b) = map.get_mut(key) {
                b.try_take(spec, now)
            } else if map.len() < MAX_SOURCES {
                let mut b = TokenBucket::full(spec, now);
                let r = b.try_take(spec, now);
                map.insert(key.into(), b);
                r
            } else {
                drop(map);
                lock(&rule.shared).try_take(spec, now)
            }
        } else {
            lock(&rule.shared).try_take(spec, now)
        };
        let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = rule
            .first
            .compare_exchange(0, nanos, Ordering::Relaxed, Ordering::Relaxed);
        rule.last.fetch_max(nanos, Ordering::Relaxed);
        match taken {
            Ok(()) => {
                rule.allowed.fetch_add(1, Ordering::Relaxed);
                Verdict::Allowed
            }
            Err(wait) => {
                rule.limited.fetch_add(1, Ordering::Relaxed);
                Verdict::Limited {
                    rule: rule.config.name.clone(),
                    retry_after: wait,
                }
            }
        }
    }

    /// Per rule: its config and counters, for /config_dump. `window_ms` is the limiter's own
    /// time between the rule's first and latest decision.
    pub fn dump(&self) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = self
            .rules
            .iter()
            .map(|r| {
                let c = &r.config;
                let (first, last) = (
                    r.first.load(Ordering::Relaxed),
                    r.last.load(Ordering::Relaxed),
                );
                let path = match &c.path {
                    PathRule::Any => serde_json::json!({"any": true}),
                    PathRule::Exact(p) => serde_json::json!({"exact": p}),
                    PathRule::Prefix(p) => serde_json::json!({"prefix": p}),
                };
                serde_json::json!({
                    "name": c.name,
                    "path": path,
                    "max_tokens": c.bucket.capacity,
                    "tokens_per_fill": c.bucket.tokens_per_fill,
                    "fill_interval_ms": u64::try_from(c.bucket.fill_interval.as_millis()).unwrap_or(u64::MAX),
                    "per_source": c.per_source,
                    "sources": lock(&r.sources).len(),
                    "allowed": r.allowed.load(Ordering::Relaxed),
                    "limited": r.limited.load(Ordering::Relaxed),
                    "window_ms": last.saturating_sub(first) as f64 / 1e6,
                })
            })
            .collect();
        serde_json::Value::Array(rules)
    }
}

/// `Retry-After` in whole seconds, at least 1 (HTTP has no finer unit).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}
