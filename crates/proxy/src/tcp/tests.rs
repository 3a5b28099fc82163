//! The pure parts of raw TCP: which endpoint to try next, and the inbound verdict.

use std::sync::Arc;

use super::inbound::{Verdict, decide};
use super::outbound::next_index;
use crate::authz::{ConnectionPolicy, NameMatch, Principal, RbacAction, RbacFilter, RbacPolicy};
use crate::metrics::TcpResult;
use crate::security::InboundSecurity;

#[test]
fn retries_pick_untried_endpoints_and_stop_when_all_were_tried() {
    assert_eq!(next_index(1, &[], 3), Some(1));
    assert_eq!(next_index(1, &[1], 3), Some(2));
    assert_eq!(next_index(2, &[1, 2], 3), Some(0));
    assert_eq!(next_index(0, &[0, 1, 2], 3), None);
    assert_eq!(next_index(0, &[], 0), None);
}

#[test]
fn inbound_verdicts() {
    const WEB: &str = "spiffe://td/ns/default/svc/web";
    let only_web = InboundSecurity {
        tcp: Some(ConnectionPolicy {
            filters: vec![RbacFilter {
                action: RbacAction::Allow,
                policies: vec![RbacPolicy {
                    name: Arc::from("web"),
                    principals: vec![Principal::Authenticated(Some(NameMatch::Exact(WEB.into())))],
                }],
            }],
        }),
        ..InboundSecurity::default()
    };
    let http = InboundSecurity::default();
    let open = InboundSecurity {
        tcp: Some(ConnectionPolicy::default()),
        ..InboundSecurity::default()
    };
    let refused = |v: Verdict| match v {
        Verdict::Refuse(r, _, _) => Some(r),
        Verdict::Forward => None,
    };
    assert_eq!(refused(decide(None, Some(WEB))), Some(TcpResult::NotReady));
    assert_eq!(
        refused(decide(Some(&http), Some(WEB))),
        Some(TcpResult::NotTcp)
    );
    assert_eq!(decide(Some(&open), None), Verdict::Forward);
    assert_eq!(decide(Some(&only_web), Some(WEB)), Verdict::Forward);
    assert_eq!(
        refused(decide(
            Some(&only_web),
            Some("spiffe://td/ns/default/svc/db")
        )),
        Some(TcpResult::Denied)
    );
    assert_eq!(
        refused(decide(Some(&only_web), None)),
        Some(TcpResult::Denied)
    );
}
