//! The HTTP fault filter's per-virtual-host / per-route `HTTPFault` (docs/XDS.md, "Fault
//! injection") → [`FaultPolicy`]: a fixed delay, an HTTP or gRPC abort, their percentages and
//! the header matches. Strict, like the rest of this subset: header-controlled faults, runtime
//! overrides, `upstream_cluster`, `downstream_nodes`, `max_active_faults` and response rate
//! limits are NACKed rather than silently not injected. An empty `HTTPFault` means no faults
//! (how a route turns its virtual host's off).

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use http::StatusCode;
use prost::Message;
use trellis_model::wire;

use crate::resilience::fault::{Abort, AbortStatus, Delay, FaultPolicy, PER_MILLION};

/// One `typed_per_filter_config[envoy.filters.http.fault]`; `None` when it injects nothing.
pub(crate) fn fault_policy(any: &Any) -> Result<Option<Arc<FaultPolicy>>, String> {
    let at = wire::FAULT_FILTER;
    if any.type_url != wire::FAULT_TYPE_URL {
        return Err(format!(
            "{at}: expected `{}`, got `{}`",
            wire::FAULT_TYPE_URL,
            any.type_url
        ));
    }
    let f = HttpFault::decode(any.value.as_slice())
        .map_err(|e| format!("{at}: cannot decode HTTPFault: {e}"))?;
    http_fault(&f).map_err(|e| format!("{at}: {e}"))
}

pub(crate) fn http_fault(f: &HttpFault) -> Result<Option<Arc<FaultPolicy>>, String> {
    let unsupported = [
        ("upstream_cluster", !f.upstream_cluster.is_empty()),
        ("downstream_nodes", !f.downstream_nodes.is_empty()),
        ("max_active_faults", f.max_active_faults.is_some()),
        ("response_rate_limit", f.response_rate_limit.is_some()),
        (
            "*_runtime",
            [
                &f.delay_percent_runtime,
                &f.abort_percent_runtime,
                &f.delay_duration_runtime,
                &f.abort_http_status_runtime,
                &f.max_active_faults_runtime,
                &f.response_rate_limit_percent_runtime,
                &f.abort_grpc_status_runtime,
            ]
            .iter()
            .any(|s| !s.is_empty()),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!("`{field}` is not supported"));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let fixed = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(pb)) => {
                    super::resilience::duration("delay.fixed_delay", pb)?
                }
                Some(FaultDelaySecifier::HeaderDelay(_)) => {
                    return Err("delay.header_delay is not supported".to_string());
                }
                None => return Err("delay needs fixed_delay".to_string()),
            };
            if fixed.is_zero() {
                return Err("delay.fixed_delay must be positive".to_string());
            }
            Some(Delay {
                fixed,
                per_million: per_million("delay.percentage", d.percentage.as_ref())?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let status = match a.error_type {
                Some(ErrorType::HttpStatus(s)) => match u16::try_from(s) {
                    Ok(s @ 200..=599) => AbortStatus::Http(
                        StatusCode::from_u16(s).map_err(|e| format!("abort.http_status: {e}"))?,
                    ),
                    _ => {
                        return Err(format!(
                            "abort.http_status = {s}: must be between 200 and 599"
                        ));
                    }
                },
                Some(ErrorType::GrpcStatus(c)) => match u16::try_from(c) {
                    Ok(c @ 1..=16) => AbortStatus::Grpc(c),
                    _ => {
                        return Err(format!(
                            "abort.grpc_status = {c}: must be a gRPC error code, 1..=16"
                        ));
                    }
                },
                Some(ErrorType::HeaderAbort(_)) => {
                    return Err("abort.header_abort is not supported".to_string());
                }
                None => return Err("abort needs http_status or grpc_status".to_string()),
            };
            Some(Abort {
                status,
                per_million: per_million("abort.percentage", a.percentage.as_ref())?,
            })
        }
    };
    if delay.is_none() && abort.is_none() {
        return Ok(None);
    }
    let headers = f
        .headers
        .iter()
        .map(super::routes::header_match)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("headers: {e}"))?;
    Ok(Some(Arc::new(FaultPolicy {
        delay,
        abort,
        headers,
    })))
}

/// A `FractionalPercent` as parts per million; absent = 0 (Envoy's default), a numerator over
/// the denominator = 100% (Envoy caps it too).
fn per_million(field: &str, p: Option<&FractionalPercent>) -> Result<u32, String> {
    let Some(p) = p else { return Ok(0) };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => {
            return Err(format!(
                "{field}.denominator = {}: not HUNDRED, TEN_THOUSAND or MILLION",
                p.denominator
            ));
        }
    };
    Ok(p.numerator.saturating_mul(scale).min(PER_MILLION))
}

#[cfg(test)]
mod tests;
