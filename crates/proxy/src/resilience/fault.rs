//! Fault injection (docs/RESOURCES.md, "Fault injection"): whether one request is delayed
//! and/or aborted, and the status an abort answers with. Pure: the caller supplies the random
//! draws (one per configured fault, uniform in `0..PER_MILLION`), so the decision is tested
//! without timers or randomness. As in Envoy's fault filter, the delay comes first and an
//! abort follows it; a request whose headers do not all match is left alone (no draw).

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use crate::routing::HeaderMatch;

/// Percentages are parts per million (Envoy's `FractionalPercent` MILLION).
pub const PER_MILLION: u32 = 1_000_000;

/// The faults of one route (from the fault filter's per-route or per-virtual-host config).
#[derive(Debug, PartialEq)]
pub struct FaultPolicy {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    /// All must match for the request to be faulted.
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub fixed: Duration,
    pub per_million: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub status: AbortStatus,
    pub per_million: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    Http(StatusCode),
    /// A gRPC status code, 1..=16.
    Grpc(u16),
}

/// What is injected into one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Injection {
    pub delay: Option<Duration>,
    pub abort: Option<AbortStatus>,
}

impl FaultPolicy {
    /// The faults for a request with `method` and `headers`; `draw` is called once per
    /// configured fault of a matching request.
    pub fn decide(
        &self,
        method: &Method,
        headers: &HeaderMap,
        mut draw: impl FnMut() -> u32,
    ) -> Injection {
        if !self.headers.iter().all(|h| h.matches(method, headers)) {
            return Injection::default();
        }
        Injection {
            delay: self
                .delay
                .filter(|d| hit(d.per_million, draw()))
                .map(|d| d.fixed),
            abort: self
                .abort
                .filter(|a| hit(a.per_million, draw()))
                .map(|a| a.status),
        }
    }
}

fn hit(per_million: u32, draw: u32) -> bool {
    draw < per_million
}

impl AbortStatus {
    /// The answer to a gRPC caller: a `grpc-status` (an HTTP status mapped as gRPC's
    /// HTTP-to-gRPC table and Envoy do).
    pub fn grpc_code(self) -> u16 {
        match self {
            AbortStatus::Grpc(c) => c,
            AbortStatus::Http(s) => match s.as_u16() {
                400 => 13,
                401 => 16,
                403 => 7,
                404 => 12,
                429 | 502..=504 => 14,
                _ => 2,
            },
        }
    }

    /// The answer to any other caller: an HTTP status (a gRPC code mapped as Envoy's
    /// gRPC-to-HTTP table does).
    pub fn http_status(self) -> StatusCode {
        match self {
            AbortStatus::Http(s) => s,
            AbortStatus::Grpc(c) => StatusCode::from_u16(match c {
                1 => 499,
                3 | 9 | 11 => 400,
                4 => 504,
                5 => 404,
                6 | 10 => 409,
                7 => 403,
                8 => 429,
                12 => 501,
                14 => 503,
                16 => 401,
                _ => 500,
            })
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}
