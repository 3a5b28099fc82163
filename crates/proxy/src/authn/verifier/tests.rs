//! JWT verification against an inline JWKS: a table of valid and hostile tokens, token
//! extraction, claim forwarding and the 401 challenge.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use trellis_model::{ForwardClaims, JwtHeader, JwtRule};

use super::super::testkeys::{self, AUDIENCE, ISSUER, TestKey, claims, now, sign, sign_as};
use super::super::{Authenticator, AuthnError, JwksOptions, JwtVerifier, MAX_TOKEN_LEN};

struct Keys {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    /// Not in the JWKS.
    other_rsa: TestKey,
}

fn keys() -> Keys {
    Keys {
        rsa: testkeys::rsa(0, "r1"),
        ec: testkeys::ec("e1"),
        ed: testkeys::ed("d1"),
        other_rsa: testkeys::rsa(1, "r1"),
    }
}

fn rule(jwks: String) -> JwtRule {
    JwtRule {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        jwks: Some(jwks),
        ..JwtRule::default()
    }
}

fn verifier(rule: &JwtRule) -> JwtVerifier {
    JwtVerifier::new(rule, &reqwest::Client::new(), &JwksOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims();
    if let Some(map) = c.as_object_mut() {
        f(map);
    }
    c
}

#[tokio::test]
async fn valid_and_hostile_tokens() {
    let k = keys();
    let v = verifier(&rule(testkeys::jwks(&[&k.rsa, &k.ec, &k.ed])));
    let ok = claims();
    let valid_rsa = sign(&k.rsa, &ok);
    let invalid = |r: &'static str| Err::<(), AuthnError>(AuthnError::Invalid(r));
    let cases: Vec<(&str, String, Result<(), AuthnError>)> = vec![
        ("RS256", valid_rsa.clone(), Ok(())),
        (
            "PS256 with the RSA key",
            sign_as(&k.rsa, Algorithm::PS256, Some("r1"), &ok),
            Ok(()),
        ),
        ("ES256", sign(&k.ec, &ok), Ok(())),
        ("EdDSA", sign(&k.ed, &ok), Ok(())),
        (
            "no kid: the fitting key is found",
            sign_as(&k.ed, Algorithm::EdDSA, None, &ok),
            Ok(()),
        ),
        (
            "expired within the clock skew",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("exp".into(), json!(now() - 30));
                }),
            ),
            Ok(()),
        ),
        (
            "aud as a list holding ours",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("aud".into(), json!(["other", AUDIENCE]));
                }),
            ),
            Ok(()),
        ),
        (
            "alg none",
            testkeys::unsigned("r1", &ok),
            invalid("unsigned tokens (alg none) are not accepted"),
        ),
        (
            "HS256 signed with the RSA public key",
            testkeys::hs256_with_public_key(&k.rsa, &ok),
            invalid("shared-secret algorithms (HS*) are not accepted"),
        ),
        (
            "RS256 header on the EC key's kid",
            sign_as(&k.rsa, Algorithm::RS256, Some("e1"), &ok),
            invalid("the token's algorithm does not fit the signing key"),
        ),
        (
            "ES256 header on the RSA key's kid",
            sign_as(&k.ec, Algorithm::ES256, Some("r1"), &ok),
            invalid("the token's algorithm does not fit the signing key"),
        ),
        (
            "wrong key under a known kid",
            sign(&k.other_rsa, &ok),
            invalid("signature does not verify"),
        ),
        (
            "expired",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("exp".into(), json!(now() - 3600));
                }),
            ),
            invalid("token expired"),
        ),
        (
            "not yet valid",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("nbf".into(), json!(now() + 3600));
                }),
            ),
            invalid("token not yet valid"),
        ),
        (
            "wrong issuer",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("iss".into(), json!("https://evil.example"));
                }),
            ),
            invalid("issuer not accepted"),
        ),
        (
            "issuer as a list",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("iss".into(), json!([ISSUER]));
                }),
            ),
            invalid("issuer not accepted"),
        ),
        (
            "wrong audience",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("aud".into(), json!("orders"));
                }),
            ),
            invalid("audience not accepted"),
        ),
        (
            "no audience",
            sign(
                &k.rsa,
                &with(|c| {
                    c.remove("aud");
                }),
            ),
            invalid("a required claim (exp, iss or aud) is missing"),
        ),
        (
            "tampered payload",
            testkeys::tamper(
                &valid_rsa,
                &with(|c| {
                    c.insert("sub".into(), json!("admin"));
                }),
            ),
            invalid("signature does not verify"),
        ),
        (
            "unknown kid",
            sign_as(&k.rsa, Algorithm::RS256, Some("r9"), &ok),
            invalid("unknown signing key (kid)"),
        ),
        (
            "exp as a string",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("exp".into(), json!((now() + 600).to_string()));
                }),
            ),
            invalid("exp must be a non-negative number"),
        ),
        (
            "nbf as a string",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("nbf".into(), json!("0"));
                }),
            ),
            invalid("nbf must be a non-negative number"),
        ),
        (
            "no exp",
            sign(
                &k.rsa,
                &with(|c| {
                    c.remove("exp");
                }),
            ),
            invalid("the token has no exp claim"),
        ),
        (
            "negative exp",
            sign(
                &k.rsa,
                &with(|c| {
                    c.insert("exp".into(), json!(-1));
                }),
            ),
            invalid("exp must be a non-negative number"),
        ),
        (
            "signature stripped",
            format!("{}.", valid_rsa.rsplit_once('.').map_or("", |(h, _)| h)),
            invalid("signature does not verify"),
        ),
        ("not a JWT", "abc".to_string(), invalid("malformed token")),
        (
            "five parts (JWE)",
            format!("{valid_rsa}.x.y"),
            invalid("malformed token"),
        ),
        (
            "payload not JSON",
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
                URL_SAFE_NO_PAD.encode("nope")
            ),
            invalid("malformed token"),
        ),
        (
            "unknown alg",
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"XS999"}"#),
                URL_SAFE_NO_PAD.encode(ok.to_string())
            ),
            invalid("unknown algorithm"),
        ),
        (
            "too large",
            format!("{}{}", valid_rsa, "A".repeat(MAX_TOKEN_LEN)),
            invalid("token too large"),
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, token, want) in cases {
        let got = v.verify(&token).await.map(|_| ());
        assert_eq!(got, want, "case: {name}");
    }
    let claims = v.verify(&valid_rsa).await.expect("valid");
    assert_eq!(claims["sub"], "user-1");
}

#[tokio::test]
async fn configured_algorithms_and_pinned_jwk_algs_restrict_tokens() {
    let k = keys();
    let mut only_rs256 = rule(testkeys::jwks(&[&k.rsa, &k.ec]));
    only_rs256.algorithms = vec!["RS256".into()];
    let v = verifier(&only_rs256);
    assert_eq!(
        v.verify(&sign(&k.ec, &claims())).await,
        Err(AuthnError::Invalid("algorithm not accepted"))
    );
    assert!(v.verify(&sign(&k.rsa, &claims())).await.is_ok());

    // A JWK that pins `alg: RS256` refuses PS256 tokens.
    let mut pinned = k.rsa.jwk.clone();
    pinned["alg"] = json!("RS256");
    let v = verifier(&rule(json!({ "keys": [pinned] }).to_string()));
    let ps = sign_as(&k.rsa, Algorithm::PS256, Some("r1"), &claims());
    assert_eq!(
        v.verify(&ps).await,
        Err(AuthnError::Invalid(
            "the token's algorithm does not fit the signing key"
        ))
    );

    // HS* can never be configured, and a JWKS of symmetric keys has nothing usable.
    let mut hs = rule(testkeys::jwks(&[&k.rsa]));
    hs.algorithms = vec!["HS256".into()];
    assert!(JwtVerifier::new(&hs, &reqwest::Client::new(), &JwksOptions::default()).is_err());
    let oct = rule(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#.into());
    let err = JwtVerifier::new(&oct, &reqwest::Client::new(), &JwksOptions::default())
        .err()
        .unwrap_or_default();
    assert!(err.contains("no usable public signing key"), "{err}");
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).expect("header value"));
    }
    h
}

#[tokio::test]
async fn tokens_are_found_where_configured() {
    let k = keys();
    let token = sign(&k.ed, &claims());
    let bearer = format!("Bearer {token}");
    let lower = format!("bearer {token}");
    let default = Authenticator::from_verifiers(vec![verifier(&rule(testkeys::jwks(&[&k.ed])))]);
    let found = |h: HeaderMap, q: Option<&'static str>| {
        let default = &default;
        async move {
            default
                .authenticate(&h, q)
                .await
                .map(|v| v.claims["sub"].clone())
        }
    };
    assert_eq!(
        found(headers(&[("authorization", &bearer)]), None).await,
        Ok(json!("user-1"))
    );
    assert_eq!(
        found(headers(&[("authorization", &lower)]), None).await,
        Ok(json!("user-1"))
    );
    assert_eq!(found(headers(&[]), None).await, Err(AuthnError::Missing));
    assert_eq!(
        found(headers(&[("authorization", "Basic dTpw")]), None).await,
        Err(AuthnError::Missing)
    );
    assert_eq!(
        found(
            headers(&[("authorization", &bearer), ("authorization", &bearer)]),
            None
        )
        .await,
        Err(AuthnError::Invalid("more than one token in the request"))
    );

    // Custom header with prefix plus a query parameter.
    let mut custom = rule(testkeys::jwks(&[&k.ed]));
    custom.from_headers = vec![JwtHeader {
        name: "X-Jwt".into(),
        prefix: Some("Token ".into()),
    }];
    custom.from_params = vec!["access_token".into()];
    custom.forward_claims_header = Some(ForwardClaims {
        header: "x-jwt-claims".into(),
        claims: vec!["sub".into(), "scope".into(), "absent".into()],
    });
    let auth = Authenticator::from_verifiers(vec![verifier(&custom)]);
    let via_header = auth
        .authenticate(&headers(&[("x-jwt", &format!("token {token}"))]), None)
        .await
        .expect("header token");
    let (name, value) = via_header.forward.expect("forwarded claims");
    assert_eq!(name.as_str(), "x-jwt-claims");
    let decoded: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(value.as_bytes()).expect("base64url"))
            .expect("json");
    assert_eq!(decoded, json!({ "sub": "user-1", "scope": "catalog.read" }));
    let query = format!("a=1&access_token={token}");
    assert!(auth.authenticate(&headers(&[]), Some(&query)).await.is_ok());
    // Authorization is not read when other locations are configured.
    assert_eq!(
        auth.authenticate(&headers(&[("authorization", &bearer)]), None)
            .await,
        Err(AuthnError::Missing)
    );
    // Two different tokens: refused, whichever is valid.
    let other = sign(
        &k.ed,
        &with(|c| {
            c.insert("sub".into(), json!("admin"));
        }),
    );
    assert_eq!(
        auth.authenticate(
            &headers(&[("x-jwt", &format!("Token {token}"))]),
            Some(&format!("access_token={other}"))
        )
        .await,
        Err(AuthnError::Invalid("more than one token in the request"))
    );
}

#[tokio::test]
async fn the_issuer_picks_the_rule() {
    let k = keys();
    let first = rule(testkeys::jwks(&[&k.rsa]));
    let mut second = rule(testkeys::jwks(&[&k.ec]));
    second.issuer = "https://second.example".into();
    let auth = Authenticator::from_verifiers(vec![verifier(&first), verifier(&second)]);
    let second_token = sign(
        &k.ec,
        &with(|c| {
            c.insert("iss".into(), json!("https://second.example"));
        }),
    );
    let h = headers(&[("authorization", &format!("Bearer {second_token}"))]);
    assert!(auth.authenticate(&h, None).await.is_ok());
    // The second issuer's claim with the first issuer's key: the second rule's keys refuse it.
    let confused = sign(
        &k.rsa,
        &with(|c| {
            c.insert("iss".into(), json!("https://second.example"));
        }),
    );
    let h = headers(&[("authorization", &format!("Bearer {confused}"))]);
    assert!(matches!(
        auth.authenticate(&h, None).await,
        Err(AuthnError::Invalid(_))
    ));
    let unknown = sign(
        &k.rsa,
        &with(|c| {
            c.insert("iss".into(), json!("https://evil.example"));
        }),
    );
    let h = headers(&[("authorization", &format!("Bearer {unknown}"))]);
    assert_eq!(
        auth.authenticate(&h, None).await,
        Err(AuthnError::Invalid("issuer not accepted"))
    );
}

#[test]
fn failures_map_to_401_with_a_bearer_challenge() {
    let cases = [
        (AuthnError::Missing, "Bearer realm=\"trellis\""),
        (
            AuthnError::Invalid("token expired"),
            "Bearer realm=\"trellis\", error=\"invalid_token\", error_description=\"token expired\"",
        ),
        (
            AuthnError::JwksUnavailable,
            "Bearer realm=\"trellis\", error=\"invalid_token\", error_description=\"signing keys unavailable\"",
        ),
    ];
    for (err, want) in cases {
        let (status, header) = err.challenge();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(header, want, "{err}");
    }
}
