//! Connection authorization: principal matching and the filter order, table style.

use super::*;

const WEB: &str = "spiffe://td/ns/default/svc/web";
const JOBS: &str = "spiffe://td/ns/jobs/svc/batch";

fn auth(m: NameMatch) -> Principal {
    Principal::Authenticated(Some(m))
}

fn re(s: &str) -> NameMatch {
    NameMatch::Regex(crate::routing::compile_full(s).expect("regex"))
}

#[test]
fn principals_match_the_callers_spiffe_id() {
    let rows: Vec<(&str, Principal, Option<&str>, bool)> = vec![
        ("any, plaintext", Principal::Any, None, true),
        (
            "authenticated, any id",
            Principal::Authenticated(None),
            Some(JOBS),
            true,
        ),
        (
            "authenticated, plaintext",
            Principal::Authenticated(None),
            None,
            false,
        ),
        ("exact", auth(NameMatch::Exact(WEB.into())), Some(WEB), true),
        (
            "exact, other",
            auth(NameMatch::Exact(WEB.into())),
            Some(JOBS),
            false,
        ),
        (
            "prefix",
            auth(NameMatch::Prefix("spiffe://td/ns/jobs/".into())),
            Some(JOBS),
            true,
        ),
        (
            "suffix",
            auth(NameMatch::Suffix("/svc/web".into())),
            Some(WEB),
            true,
        ),
        (
            "regex is a full match",
            auth(re("spiffe://[^/]+/ns/jobs(/.*)?")),
            Some(JOBS),
            true,
        ),
        (
            "regex, no partial match",
            auth(re("ns/jobs")),
            Some(JOBS),
            false,
        ),
        (
            "not, plaintext",
            Principal::Not(Box::new(auth(NameMatch::Exact(WEB.into())))),
            None,
            true,
        ),
        (
            "not, listed",
            Principal::Not(Box::new(auth(NameMatch::Exact(WEB.into())))),
            Some(WEB),
            false,
        ),
        (
            "and",
            Principal::And(vec![
                Principal::Authenticated(None),
                auth(NameMatch::Suffix("/web".into())),
            ]),
            Some(WEB),
            true,
        ),
        (
            "or",
            Principal::Or(vec![
                auth(NameMatch::Exact(WEB.into())),
                auth(NameMatch::Exact(JOBS.into())),
            ]),
            Some(JOBS),
            true,
        ),
        ("empty or", Principal::Or(vec![]), Some(WEB), false),
    ];
    for (case, p, peer, want) in rows {
        assert_eq!(p.matches(peer), want, "{case}");
    }
}

fn filter(action: RbacAction, policies: &[(&str, Principal)]) -> RbacFilter {
    RbacFilter {
        action,
        policies: policies
            .iter()
            .map(|(n, p)| RbacPolicy {
                name: Arc::from(*n),
                principals: vec![p.clone()],
            })
            .collect(),
    }
}

#[test]
fn deny_filters_deny_on_a_match_and_allow_filters_on_none() {
    let jobs = auth(NameMatch::Prefix("spiffe://td/ns/jobs/".into()));
    let web = auth(NameMatch::Exact(WEB.into()));
    let set = ConnectionPolicy {
        filters: vec![
            filter(RbacAction::Deny, &[("no-jobs", jobs)]),
            filter(RbacAction::Allow, &[("web", web)]),
        ],
    };
    assert_eq!(set.evaluate(Some(WEB)), Decision::Allow);
    assert_eq!(
        set.evaluate(Some(JOBS)),
        Decision::Deny {
            reason: DENIED_BY_POLICY,
            policy: Some(Arc::from("no-jobs"))
        }
    );
    assert_eq!(
        set.evaluate(Some("spiffe://td/ns/default/svc/other")),
        Decision::Deny {
            reason: NOT_ALLOWED,
            policy: None
        }
    );
    let empty_allow = ConnectionPolicy {
        filters: vec![filter(RbacAction::Allow, &[])],
    };
    assert!(
        !empty_allow.evaluate(Some(WEB)).is_allowed(),
        "an ALLOW filter without policies denies"
    );
    assert!(ConnectionPolicy::default().evaluate(None).is_allowed());
}
