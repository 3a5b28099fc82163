//! Rules for `faults` (TrafficPolicy `spec.faults`, HTTPRoute `spec.rules[i].faults`): a
//! positive delay of at most [`MAX_FAULT_DELAY`], percentages in 0..=100 that the wire can
//! carry (four decimals), exactly one abort status, header matches as a route's.

use crate::{FAULT_PERCENT_SCALE, FaultAbort, Faults, MAX_FAULT_DELAY, format_duration};

use super::Issue;

/// `at` is the block's path. `on_rule`: an empty block is allowed (it turns the service's
/// faults off for the rule's requests).
pub(super) fn check(at: &str, f: &Faults, on_rule: bool, out: &mut Vec<Issue>) {
    if f.delay.is_none() && f.abort.is_none() && !(on_rule && f.headers.is_empty()) {
        out.push(Issue::new(
            at,
            if on_rule {
                "headers without `delay` or `abort` inject nothing: add one, or write \
                 `faults: {}` to turn the service's faults off for this rule"
            } else {
                "injects nothing: add `delay` or `abort`, or remove `faults`"
            }
            .into(),
        ));
    }
    if let Some(d) = &f.delay {
        let field = format!("{at}.delay.fixedDelay");
        match crate::parse_duration(&d.fixed_delay) {
            Err(e) => out.push(Issue::new(&field, e)),
            Ok(v) if v.is_zero() => out.push(Issue::new(
                &field,
                format!(
                    "`{}` must be positive: remove `delay` to inject none",
                    d.fixed_delay
                ),
            )),
            Ok(v) if v > MAX_FAULT_DELAY => out.push(Issue::new(
                &field,
                format!(
                    "`{}` is too long: at most {}",
                    d.fixed_delay,
                    format_duration(MAX_FAULT_DELAY)
                ),
            )),
            Ok(_) => {}
        }
        percentage(&format!("{at}.delay.percentage"), d.percentage, out);
    }
    if let Some(a) = &f.abort {
        check_abort(&format!("{at}.abort"), a, out);
    }
    for (i, h) in f.headers.iter().enumerate() {
        super::rules::check_header_match(&format!("{at}.headers[{i}]"), h, out);
    }
}

fn check_abort(at: &str, a: &FaultAbort, out: &mut Vec<Issue>) {
    match (a.http_status, &a.grpc_status) {
        (None, None) => out.push(Issue::new(
            at,
            "needs `httpStatus` (e.g. 503) or `grpcStatus` (e.g. UNAVAILABLE)".into(),
        )),
        (Some(_), Some(_)) => out.push(Issue::new(
            at,
            "sets both `httpStatus` and `grpcStatus`: keep one (gRPC callers of an \
             `httpStatus` abort get the matching gRPC status)"
                .into(),
        )),
        (Some(s), None) if !(200..=599).contains(&s) => out.push(Issue::new(
            &format!("{at}.httpStatus"),
            format!("{s} is out of range: must be between 200 and 599"),
        )),
        (None, Some(g)) => match g.code() {
            Some(c) if (1..=16).contains(&c) => {}
            Some(c) => out.push(Issue::new(
                &format!("{at}.grpcStatus"),
                format!("{c} is out of range: must be between 1 and 16"),
            )),
            None => out.push(Issue::new(
                &format!("{at}.grpcStatus"),
                "unknown gRPC status name: expected e.g. UNAVAILABLE or a code 1..=16".into(),
            )),
        },
        (Some(_), None) => {}
    }
    percentage(&format!("{at}.percentage"), a.percentage, out);
}

fn percentage(field: &str, p: Option<f64>, out: &mut Vec<Issue>) {
    let Some(p) = p else { return };
    if !(0.0..=100.0).contains(&p) {
        out.push(Issue::new(
            field,
            format!("{p} is out of range: must be between 0 and 100"),
        ));
        return;
    }
    let scaled = p * FAULT_PERCENT_SCALE;
    if (scaled - scaled.round()).abs() > 1e-6 {
        out.push(Issue::new(
            field,
            format!(
                "{p} is finer than the 0.0001% the sidecars resolve: use at most four decimals"
            ),
        ));
    }
}
