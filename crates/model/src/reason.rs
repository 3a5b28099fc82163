//! Why a sidecar answered a request itself: the machine-readable reasons it puts in
//! `x-trellis-reason`, in the `reason` label of `trellis_requests_total` and in the access log,
//! each with the status it comes with and a sentence for `trellis describe reason`.

/// One reason a sidecar answers by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason {
    /// The token, as in `x-trellis-reason`.
    pub token: &'static str,
    /// The HTTP status it comes with (gRPC callers get a trailers-only answer instead).
    pub status: u16,
    /// What happened, for a person.
    pub what: &'static str,
    /// What to look at or change.
    pub fix: &'static str,
}

/// Every reason, calling side first, then the called side.
pub const ALL: &[Reason] = &[
    Reason {
        token: "no_authority",
        status: 400,
        what: "the request named no service: no absolute URI and no Host header",
        fix: "send it as to an HTTP proxy (`GET http://<service>/path`) or with `Host: <service>`",
    },
    Reason {
        token: "unknown_service",
        status: 404,
        what: "the calling sidecar knows no service by the name the request gave",
        fix: "check the name against `trellis get services`; a service exists once an instance registers or a Service resource is applied",
    },
    Reason {
        token: "no_route",
        status: 404,
        what: "no rule of the service's HTTPRoutes matches the request (path, headers, method)",
        fix: "see the routes in `trellis describe service <name>`; add a rule without matches as a fallback",
    },
    Reason {
        token: "no_healthy_endpoints",
        status: 503,
        what: "the service has no instance the caller may send to: none registered, none passing its health checks, or every one already tried",
        fix: "see the instances and their health in `trellis describe service <name>`",
    },
    Reason {
        token: "upstream_connect_failure",
        status: 503,
        what: "no connection could be made to the chosen endpoint (refused, unreachable, or the connect timeout passed)",
        fix: "check that the instance's sidecar runs; `retries.retryOn: [connect-failure]` tries another endpoint",
    },
    Reason {
        token: "upstream_tls_failure",
        status: 503,
        what: "the mTLS handshake with the endpoint failed: its identity is not one that serves the service, or it refused this sidecar's certificate",
        fix: "compare the identities in `trellis describe service <name>` and the trust bundles of both sidecars",
    },
    Reason {
        token: "upstream_error",
        status: 502,
        what: "the connection to the endpoint failed after the request was sent, before a response came",
        fix: "look at the endpoint's sidecar and app logs; `retries.retryOn: [reset]` retries such requests",
    },
    Reason {
        token: "upstream_timeout",
        status: 504,
        what: "no response head came within the request timeout, the per-try timeout, or the caller's grpc-timeout",
        fix: "see `timeouts` in `trellis describe service <name>`; the app is slow or hangs",
    },
    Reason {
        token: "retry_budget_exhausted",
        status: 503,
        what: "a try failed and a retry was wanted, but the service's retry budget was spent (retries are capped so an outage does not become a retry storm)",
        fix: "the service is failing broadly; see its instances; `retries.budget` sets the cap",
    },
    Reason {
        token: "circuit_open",
        status: 503,
        what: "a circuit breaker refused the request at once: too many requests in flight, or too many waiting for a connection (or a retry over `maxRetries` was skipped)",
        fix: "see `circuitBreakers` in `trellis describe service <name>`; raise the limit or add instances",
    },
    Reason {
        token: "fault_abort",
        status: 503,
        what: "the service's fault injection aborted the request on purpose (the status is the one configured; 503 is only the usual choice)",
        fix: "see `faults` in `trellis describe service <name>` and its HTTPRoutes; remove them to stop the injection",
    },
    Reason {
        token: "rate_limited",
        status: 429,
        what: "a rate limit of the called service refused the request; `Retry-After` says when to try again",
        fix: "see the service's RateLimitPolicy (`trellis get ratelimitpolicies`)",
    },
    Reason {
        token: "no_identity",
        status: 503,
        what: "the service serves mTLS only, and this sidecar has no workload certificate",
        fix: "start the sidecar with `--join-token` (from `trellis token create --service <name>`)",
    },
    Reason {
        token: "bad_request",
        status: 400,
        what: "the request could not be forwarded: an unusable URI, or its body could not be read",
        fix: "fix the request the app sends",
    },
    Reason {
        token: "not_ready",
        status: 503,
        what: "the called sidecar has no configuration from the control plane yet",
        fix: "check that the sidecar reaches the control plane (its `/ready` and logs)",
    },
    Reason {
        token: "bad_path",
        status: 400,
        what: "the called sidecar refused a path it cannot normalize safely (e.g. `..` escaping the root, or an encoded slash)",
        fix: "fix the path the caller sends",
    },
    Reason {
        token: "unauthenticated",
        status: 401,
        what: "a token was sent but failed validation against the service's RequestAuthentication",
        fix: "check the token's issuer, audience and expiry against `trellis describe service <name>`",
    },
    Reason {
        token: "rbac_denied",
        status: 403,
        what: "the service's AuthorizationPolicies denied the request",
        fix: "see the policies that apply in `trellis describe service <name>`",
    },
    Reason {
        token: "app_unavailable",
        status: 502,
        what: "the called sidecar could not reach its own app",
        fix: "check that the app listens on the sidecar's `--app-port`",
    },
];

/// The reason named `token`, if it is one.
pub fn explain(token: &str) -> Option<&'static Reason> {
    ALL.iter().find(|r| r.token == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_explained() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ALL {
            assert!(seen.insert(r.token), "{} twice", r.token);
            assert!((400..600).contains(&r.status), "{}", r.token);
            assert!(!r.what.is_empty() && !r.fix.is_empty(), "{}", r.token);
        }
        assert_eq!(explain("circuit_open").map(|r| r.status), Some(503));
        assert_eq!(explain("nonsense"), None);
    }
}
