//! Local rate limits on the inbound side (RateLimitPolicy, docs/RESOURCES.md): the first rule
//! whose path match fits the request decides, with one token bucket for every caller or one
//! per caller identity (`perSource`: the caller's SPIFFE ID from mTLS; callers without one
//! share a bucket). Over the limit the request is refused with 429, `Retry-After` (whole
//! seconds until a token) and `x-trellis-reason: rate_limited`, or gRPC status 8.
//!
//! A service without a RateLimitPolicy has no limiter at all: the request path checks one
//! `Option`. With one, a request costs a path comparison per rule and one short mutex hold.

mod bucket;
pub(crate) mod lease;

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
    /// The rate is the service's, shared with its other sidecars by leases ([`lease`]).
    pub global: bool,
}

#[derive(Debug)]
struct Rule {
    config: RuleConfig,
    /// The bucket shared by every caller, with its current shape (a global rule's share
    /// changes with each lease).
    shared: Mutex<(TokenBucket, BucketSpec)>,
    sources: Mutex<HashMap<Box<str>, TokenBucket>>,
    allowed: AtomicU64,
    limited: AtomicU64,
    /// Limiter-clock nanoseconds of the first and the latest decision (0: none yet).
    first: AtomicU64,
    last: AtomicU64,
    /// Tokens in the shared bucket at the first decision (f64 bits): what the window starts
    /// with, so the refill rate over the window can be told from its burst.
    initial: AtomicU64,
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
                    shared: Mutex::new(initial(&config)),
                    sources: Mutex::new(HashMap::new()),
                    config,
                    allowed: AtomicU64::new(0),
                    limited: AtomicU64::new(0),
                    first: AtomicU64::new(0),
                    last: AtomicU64::new(0),
                    initial: AtomicU64::new(0),
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
        if rule.first.load(Ordering::Relaxed) == 0 && !rule.config.per_source {
            let mut guard = lock(&rule.shared);
            let (bucket, shape) = &mut *guard;
            let tokens = bucket.tokens_at(shape, now);
            rule.initial.store(tokens.to_bits(), Ordering::Relaxed);
        }
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
                take_shared(rule, now)
            }
        } else {
            take_shared(rule, now)
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
                let spec = lock(&r.shared).1;
                let share = serde_json::json!({
                    "tokens_per_second": f64::from(spec.tokens_per_fill)
                        / spec.fill_interval.as_secs_f64().max(1e-9),
                    "burst": spec.capacity,
                });
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
                    "global": c.global,
                    "share": share,
                    "sources": lock(&r.sources).len(),
                    "allowed": r.allowed.load(Ordering::Relaxed),
                    "limited": r.limited.load(Ordering::Relaxed),
                    "window_ms": last.saturating_sub(first) as f64 / 1e6,
                    "initial_tokens": f64::from_bits(r.initial.load(Ordering::Relaxed)),
                })
            })
            .collect();
        serde_json::Value::Array(rules)
    }
}

/// A rule's shared bucket at start: full; a global rule's holds one token and refills
/// nothing until its first lease (which the lease task makes at once).
fn initial(config: &RuleConfig) -> (TokenBucket, BucketSpec) {
    let spec = if config.global {
        BucketSpec {
            capacity: 1,
            tokens_per_fill: 0,
            fill_interval: Duration::from_secs(1),
        }
    } else {
        config.bucket
    };
    (TokenBucket::full(&spec, Duration::ZERO), spec)
}

fn take_shared(rule: &Rule, now: Duration) -> Result<(), Duration> {
    let mut guard = lock(&rule.shared);
    let (bucket, spec) = &mut *guard;
    bucket.try_take(spec, now)
}

/// A global rule's demand and share, for the lease task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GlobalRule {
    pub name: String,
    /// Requests seen (allowed + limited) so far.
    pub seen: u64,
    /// The rule's full rate, tokens per second, and burst.
    pub rate: f64,
    pub burst: u32,
}

impl RateLimiter {
    /// The global rules, with their counters.
    pub fn global_rules(&self) -> Vec<GlobalRule> {
        self.rules
            .iter()
            .filter(|r| r.config.global)
            .map(|r| {
                let b = &r.config.bucket;
                GlobalRule {
                    name: r.config.name.clone(),
                    seen: r.allowed.load(Ordering::Relaxed) + r.limited.load(Ordering::Relaxed),
                    rate: f64::from(b.tokens_per_fill) / b.fill_interval.as_secs_f64().max(1e-9),
                    burst: b.capacity,
                }
            })
            .collect()
    }

    /// Sets a global rule's share: `tokens_per_second` and a bucket of `burst` (tokens above
    /// it are dropped). The rate is kept to a thousandth of a token per second.
    pub fn set_share(&self, rule: &str, tokens_per_second: f64, burst: u32) {
        let Some(r) = self.rules.iter().find(|r| r.config.name == rule) else {
            return;
        };
        let per_1000s = (tokens_per_second.max(0.0) * 1000.0)
            .round()
            .min(f64::from(u32::MAX));
        let spec = BucketSpec {
            capacity: burst.max(1),
            tokens_per_fill: per_1000s as u32,
            fill_interval: Duration::from_secs(1000),
        };
        let now = self.start.elapsed();
        let mut guard = lock(&r.shared);
        let (bucket, old) = &mut *guard;
        bucket.reshape(old, &spec, now);
        *old = spec;
    }
}

/// `Retry-After` in whole seconds, at least 1 (HTTP has no finer unit).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}
