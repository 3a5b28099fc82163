//! `faults` → Envoy's HTTP fault filter (docs/XDS.md, "Fault injection"): the outbound
//! HttpConnectionManager carries `envoy.filters.http.fault` with an empty `HTTPFault` (it
//! injects nothing by itself); a service's TrafficPolicy faults ride on its VirtualHost's
//! `typed_per_filter_config`, an HTTPRoute rule's on its routes' (the most specific wins, as
//! in Envoy). Faults are injected by the calling sidecar, as Istio does. Pure functions.

use std::collections::HashMap;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use trellis_model::{Faults, fault_per_million, parse_duration, wire};

use super::resilience::pb_duration;
use super::routes::header_matchers;

/// The filter on the outbound HttpConnectionManager, before the router.
pub fn fault_filter() -> HttpFilter {
    HttpFilter {
        name: wire::FAULT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            HttpFault::default(),
        ))),
        ..Default::default()
    }
}

/// `typed_per_filter_config` of a virtual host or route with `faults` (empty without).
pub fn per_filter_config(faults: Option<&Faults>) -> HashMap<String, Any> {
    faults
        .map(|f| (wire::FAULT_FILTER.to_string(), pack_any(http_fault(f))))
        .into_iter()
        .collect()
}

fn percent(percentage: Option<f64>) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: fault_per_million(percentage),
        denominator: fractional_percent::DenominatorType::Million as i32,
    })
}

/// One validated `faults` block as an `HTTPFault` (an empty block: an empty `HTTPFault`).
pub fn http_fault(f: &Faults) -> HttpFault {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = parse_duration(&d.fixed_delay).ok()?;
        Some(FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(pb_duration(fixed))),
            percentage: percent(d.percentage),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error_type = match (a.http_status, &a.grpc_status) {
            (Some(s), _) => ErrorType::HttpStatus(u32::from(s)),
            (None, Some(g)) => ErrorType::GrpcStatus(g.code()?),
            (None, None) => return None,
        };
        Some(FaultAbort {
            error_type: Some(error_type),
            percentage: percent(a.percentage),
            ..Default::default()
        })
    });
    HttpFault {
        delay,
        abort,
        headers: header_matchers(&f.headers),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
