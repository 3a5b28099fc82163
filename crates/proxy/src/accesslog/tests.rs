use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderValue, Method};
use prometheus_client::metrics::counter::Counter;

use super::format::{response_flags, rfc3339, write_line};
use super::*;

#[test]
fn rfc3339_formats_utc_with_millis() {
    let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
    assert_eq!(rfc3339(t(0, 0)), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(t(951_782_400, 7)), "2000-02-29T00:00:00.007Z");
    assert_eq!(rfc3339(t(1_796_325_473, 123)), "2026-12-03T19:17:53.123Z");
    assert_eq!(rfc3339(t(4_107_542_399, 999)), "2100-02-28T23:59:59.999Z");
}

#[test]
fn reasons_map_to_envoy_response_flags() {
    for (reason, flag) in [
        (None, "-"),
        (Some("no_healthy_endpoints"), "UH"),
        (Some("upstream_connect_failure"), "UF"),
        (Some("circuit_open"), "UO"),
        (Some("unknown_service"), "NR"),
        (Some("upstream_timeout"), "UT"),
        (Some("retry_budget_exhausted"), "URX"),
        (Some("rate_limited"), "RL"),
        (Some("rbac_denied"), "-"),
    ] {
        assert_eq!(response_flags(reason), flag, "{reason:?}");
    }
}

fn sample() -> Record {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("test setup");
    let mut r = Record::new(Direction::Outbound, "HTTP/1.1", peer);
    r.method = Some(Method::GET);
    r.path = Some("/a?b=1".parse().expect("test setup"));
    r.authority = Some(HeaderValue::from_static("catalog"));
    r.status = Some(503);
    r.reason = Some(HeaderValue::from_static("no_healthy_endpoints"));
    r.bytes_sent = 42;
    r.upstream = Some(Upstream {
        cluster: Arc::from("catalog"),
        host: None,
    });
    r.peer_id = Some(Arc::from("spiffe://cluster.local/ns/default/svc/web"));
    r.user_agent = Some(HeaderValue::from_bytes(b"caf\xc3\xa9 \"q\"").expect("test setup"));
    r
}

#[test]
fn a_record_is_one_json_line_without_absent_fields() {
    let mut out = Vec::new();
    write_line(&mut out, &sample());
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
    assert_eq!(out.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&out).expect("test setup");
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a?b=1");
    assert_eq!(v["status"], 503);
    assert_eq!(v["reason"], "no_healthy_endpoints");
    assert_eq!(v["response_flags"], "UH");
    assert_eq!(v["upstream_cluster"], "catalog");
    assert_eq!(v["bytes_sent"], 42);
    assert_eq!(v["downstream_remote_address"], "127.0.0.1:40000");
    assert_eq!(
        v["downstream_peer_uri_san"],
        "spiffe://cluster.local/ns/default/svc/web"
    );
    assert_eq!(v["user_agent"], "café \"q\"");
    for absent in [
        "upstream_host",
        "grpc_status",
        "request_id",
        "upstream_service_time_ms",
    ] {
        assert!(v.get(absent).is_none(), "{absent} in {v}");
    }
}

#[test]
fn targets_parse() {
    assert_eq!("-".parse::<AccessLogTarget>(), Ok(AccessLogTarget::Stdout));
    assert_eq!(
        "/tmp/a.log".parse::<AccessLogTarget>(),
        Ok(AccessLogTarget::File("/tmp/a.log".into()))
    );
    assert!("".parse::<AccessLogTarget>().is_err());
}

#[test]
fn an_unopenable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("test setup");
    let target = AccessLogTarget::File(dir.path().join("missing/dir/access.log"));
    let e = AccessLog::open(&target, Counter::default()).expect_err("must fail");
    assert!(
        e.contains("--access-log") && e.contains("missing/dir"),
        "{e}"
    );
}

#[test]
fn records_reach_the_file() {
    let dir = tempfile::tempdir().expect("test setup");
    let path = dir.path().join("access.log");
    let log = AccessLog::open(&AccessLogTarget::File(path.clone()), Counter::default())
        .expect("test setup");
    log.log(sample());
    log.log(sample());
    drop(log);
    // The writer thread ends once the sender is gone, after a final flush.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "got {text:?}");
        std::thread::yield_now();
    }
}
