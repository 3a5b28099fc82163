//! `RateLimitPolicy`: local token-bucket limits on a service's inbound requests, per route and
//! optionally per calling identity (docs/RESOURCES.md, "RateLimitPolicy").

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Metadata, ServiceRef};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicyResource {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: RateLimitPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// The service whose inbound requests are limited.
    pub target_ref: ServiceRef,
    /// Tried in order; the first whose `match` matches the request applies. A rule without
    /// `match` applies to the requests no other rule matches (at most one such rule).
    pub rules: Vec<RateLimitRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRule {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RateLimitMatch>,
    /// Tokens added per `unit` (the sustained rate).
    pub requests_per_unit: u32,
    pub unit: RateUnit,
    /// Bucket size: how many requests may pass at once after a quiet period. Default:
    /// `requestsPerUnit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per caller (its SPIFFE ID from mTLS; callers without one share a bucket)
    /// instead of one for every caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_source: bool,
    /// The rate is for the whole service, shared by all its sidecars, which lease their
    /// allotments from the control plane (docs/RESOURCES.md, "Global rate limits") instead of
    /// each allowing the full rate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

impl RateLimitRule {
    /// The bucket size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_unit)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitMatch {
    pub path: RateLimitPath,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPath {
    #[serde(default, rename = "type")]
    pub kind: RateLimitPathType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimitPathType {
    Exact,
    /// Whole path segments, as HTTPRoute's PathPrefix: `/api` matches `/api` and `/api/x`,
    /// not `/apix`.
    #[default]
    PathPrefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
}

impl RateUnit {
    pub fn duration(self) -> Duration {
        match self {
            RateUnit::Second => Duration::from_secs(1),
            RateUnit::Minute => Duration::from_secs(60),
            RateUnit::Hour => Duration::from_secs(3600),
        }
    }

    /// From a whole number of seconds (1, 60 or 3600).
    pub fn from_secs(secs: u64) -> Option<RateUnit> {
        match secs {
            1 => Some(RateUnit::Second),
            60 => Some(RateUnit::Minute),
            3600 => Some(RateUnit::Hour),
            _ => None,
        }
    }
}

/// `POST /v1/ratelimit/lease` body: a sidecar's demand on one global rule since its last lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub service: String,
    pub instance: String,
    /// The rule's name on the inbound listener (`ratelimit-<index>`, or `default`).
    pub rule: String,
    /// Requests per second this sidecar saw for the rule (allowed and limited) lately.
    pub demand: f64,
}

/// The answer: this sidecar's share of the global rule until its next lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Tokens per second this sidecar may allow.
    pub tokens_per_second: f64,
    /// Its bucket size (its share of the rule's burst, at least 1).
    pub burst: u32,
    /// Lease again within this many milliseconds.
    pub lease_ms: u64,
    /// Sidecars sharing the rule now.
    pub sharers: usize,
}

/// Largest `requestsPerUnit` and `burst`.
pub const MAX_RATE: u32 = 1_000_000;
/// Most rules in one policy.
pub const MAX_RATE_RULES: usize = 32;
