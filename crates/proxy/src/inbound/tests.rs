//! The pure parts of admission: SPIFFE namespaces, URI normalization, the admission verdict
//! and the refusal responses (HTTP and gRPC). The listener-level tests are in
//! crate::tests::inbound_policy.

use http::{Request, StatusCode};
use serde_json::json;
use trellis_model::AuthorizationPolicyResource;

use super::admit::{Admit, admit, normalize_uri, spiffe_namespace};
use super::refusal::Refusal;
use crate::authn::{Authenticator, AuthnError, JwksOptions, JwtVerifier};
use crate::authz::{NOT_ALLOWED, PathError, PolicySet};
use crate::http::grpc_message;
use crate::security::InboundSecurity;

fn request(uri: &str) -> Request<()> {
    Request::builder().uri(uri).body(()).expect("request")
}

#[test]
fn namespaces_come_from_spiffe_ids() {
    let cases = [
        ("spiffe://trellis.local/ns/shop/svc/web", Some("shop")),
        ("spiffe://td/ns/default/svc/a/b", Some("default")),
        ("spiffe://td/ns/", None),
        ("spiffe://td/svc/web", None),
        ("spiffe://td", None),
        ("https://td/ns/shop/svc/web", None),
        ("", None),
    ];
    for (id, want) in cases {
        assert_eq!(spiffe_namespace(id), want, "{id}");
    }
}

#[test]
fn request_targets_are_rewritten_to_the_normalized_path() {
    let cases = [
        ("/a/b?x=1", Ok::<&str, PathError>("/a/b?x=1")),
        ("/public/../admin", Ok("/admin")),
        ("//admin?q=/../x", Ok("/admin?q=/../x")),
        ("/a/%2e%2e/b/%41", Ok("/b/A")),
        ("http://catalog:8080/x/./y", Ok("http://catalog:8080/x/y")),
        ("/a/%2Fb", Err(PathError::EncodedSlash)),
        ("/a/%00", Err(PathError::Nul)),
        ("/..;/admin", Err(PathError::DotSegmentParameter)),
        ("*", Err(PathError::NotAbsolute)),
    ];
    for (raw, want) in cases {
        let mut req = request(raw);
        let got = normalize_uri(&mut req).map(|()| req.uri().to_string());
        assert_eq!(got.as_deref().map_err(|e| *e), want, "{raw}");
    }
}

fn policies(p: serde_json::Value) -> PolicySet {
    let p: AuthorizationPolicyResource = serde_json::from_value(p).expect("policy");
    PolicySet::compile([&p])
}

/// Name, config, request target, caller's SPIFFE ID, verdict.
type Row<'a> = (
    &'static str,
    Option<&'a InboundSecurity>,
    &'static str,
    Option<&'static str>,
    Admit,
);

#[test]
fn admission_follows_the_documented_order() {
    let only_web = policies(json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": {"name": "web-only"},
        "spec": {"rules": [{"from": [{"namespaces": ["web"]}]}]}
    }));
    let key = crate::authn::testkeys::ed("d1");
    let rule = trellis_model::JwtRule {
        issuer: "https://issuer.example".into(),
        jwks: Some(crate::authn::testkeys::jwks(&[&key])),
        ..Default::default()
    };
    let verifier = JwtVerifier::new(&rule, &reqwest::Client::new(), &JwksOptions::default())
        .expect("verifier");
    let open = InboundSecurity::default();
    let guarded = InboundSecurity {
        authz: only_web,
        ..InboundSecurity::default()
    };
    let with_authn = InboundSecurity {
        authn: Authenticator::from_verifiers(vec![verifier]),
        ..InboundSecurity::default()
    };
    let web = Some("spiffe://td/ns/web/svc/frontend");
    let other = Some("spiffe://td/ns/batch/svc/jobs");
    let cases: Vec<Row<'_>> = vec![
        (
            "no config yet",
            None,
            "/",
            web,
            Admit::Refuse(Refusal::NotReady),
        ),
        (
            "no config beats a bad path",
            None,
            "/%2F",
            web,
            Admit::Refuse(Refusal::NotReady),
        ),
        ("open", Some(&open), "/x", None, Admit::Forward),
        (
            "bad path before policies",
            Some(&open),
            "/a%5Cb",
            web,
            Admit::Refuse(Refusal::BadPath(PathError::EncodedBackslash)),
        ),
        (
            "allowed namespace",
            Some(&guarded),
            "/x",
            web,
            Admit::Forward,
        ),
        (
            "other namespace",
            Some(&guarded),
            "/x",
            other,
            Admit::Refuse(Refusal::Denied(NOT_ALLOWED)),
        ),
        (
            "no identity",
            Some(&guarded),
            "/x",
            None,
            Admit::Refuse(Refusal::Denied(NOT_ALLOWED)),
        ),
        (
            "authentication first",
            Some(&with_authn),
            "/x",
            None,
            Admit::Authenticate,
        ),
    ];
    for (name, security, uri, peer, want) in cases {
        let mut req = request(uri);
        assert_eq!(admit(security, &mut req, peer), want, "{name}");
    }
}

#[test]
fn refusals_answer_http_and_grpc_callers() {
    let cases = [
        (
            Refusal::NotReady,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "14",
        ),
        (
            Refusal::BadPath(PathError::EncodedSlash),
            StatusCode::BAD_REQUEST,
            "bad_path",
            "13",
        ),
        (
            Refusal::Unauthenticated(AuthnError::Invalid("token expired")),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "16",
        ),
        (
            Refusal::Denied(NOT_ALLOWED),
            StatusCode::FORBIDDEN,
            "rbac_denied",
            "7",
        ),
        (
            Refusal::RateLimited {
                retry_after_secs: 3,
            },
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "8",
        ),
    ];
    for (refusal, status, reason, grpc_status) in cases {
        let http = refusal.response(false);
        assert_eq!(http.status(), status, "{refusal:?}");
        assert_eq!(http.headers()["x-trellis-reason"], reason);
        let grpc = refusal.response(true);
        assert_eq!(grpc.status(), StatusCode::OK, "{refusal:?}");
        assert_eq!(grpc.headers()["grpc-status"], grpc_status);
        assert_eq!(grpc.headers()["content-type"], "application/grpc");
        assert_eq!(grpc.headers()["x-trellis-reason"], reason);
        assert!(grpc.headers().contains_key("grpc-message"));
        let challenged = matches!(refusal, Refusal::Unauthenticated(_));
        for resp in [&http, &grpc] {
            assert_eq!(
                resp.headers().contains_key("www-authenticate"),
                challenged,
                "{refusal:?}"
            );
        }
    }
    for grpc in [false, true] {
        let r = Refusal::RateLimited {
            retry_after_secs: 3,
        }
        .response(grpc);
        assert_eq!(r.headers()["retry-after"], "3", "grpc: {grpc}");
    }
    let r = Refusal::Unauthenticated(AuthnError::Invalid("token expired")).response(false);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"trellis\", error=\"invalid_token\", error_description=\"token expired\""
    );
}

#[test]
fn grpc_messages_are_percent_encoded() {
    assert_eq!(grpc_message("denied: 100% sure"), "denied: 100%25 sure");
    assert_eq!(grpc_message("caf\u{e9}\n"), "caf%C3%A9%0A");
}
