//! A token bucket on an explicit clock: `now` is the time since the limiter started, passed
//! in by the caller, so tests drive time by hand. Refill is continuous (Envoy refills in steps
//! of `tokens_per_fill` every `fill_interval`; the average rate is the same).

use std::time::Duration;

/// The bucket's shape: `capacity` tokens, `tokens_per_fill` added per `fill_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketSpec {
    pub capacity: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

impl BucketSpec {
    /// Tokens per nanosecond.
    fn rate(&self) -> f64 {
        let nanos = self.fill_interval.as_nanos().max(1) as f64;
        f64::from(self.tokens_per_fill) / nanos
    }
}

/// One bucket; starts full.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenBucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Duration,
}

impl TokenBucket {
    pub fn full(spec: &BucketSpec, now: Duration) -> Self {
        TokenBucket {
            tokens: f64::from(spec.capacity),
            at: now,
        }
    }

    fn refill(&mut self, spec: &BucketSpec, now: Duration) {
        if now > self.at {
            let elapsed = (now - self.at).as_nanos() as f64;
            self.tokens = (self.tokens + elapsed * spec.rate()).min(f64::from(spec.capacity));
            self.at = now;
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&mut self, spec: &BucketSpec, now: Duration) -> Result<(), Duration> {
        self.refill(spec, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let rate = spec.rate();
        if rate <= 0.0 {
            // A global rule before its first lease, or granted nothing: its share changes
            // within a lease interval, so ask the caller to come back soon.
            return Err(Duration::from_secs(1));
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_nanos(
            (missing / rate).ceil().min(3.6e12) as u64
        ))
    }

    /// The tokens there at `now`.
    pub fn tokens_at(&mut self, spec: &BucketSpec, now: Duration) -> f64 {
        self.refill(spec, now);
        self.tokens
    }

    /// Brings the bucket up to `now` under its `old` shape, then caps it at the new one.
    pub fn reshape(&mut self, old: &BucketSpec, new: &BucketSpec, now: Duration) {
        self.refill(old, now);
        self.tokens = self.tokens.min(f64::from(new.capacity));
    }

    /// True when the bucket would be full at `now` (it can be forgotten).
    pub fn is_full(&self, spec: &BucketSpec, now: Duration) -> bool {
        let mut b = self.clone();
        b.refill(spec, now);
        b.tokens >= f64::from(spec.capacity)
    }
}
