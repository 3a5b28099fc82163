//! Token introspection against a real RFC 7662 endpoint on 127.0.0.1:0 (hyper): client
//! credentials, active and inactive tokens, claim checks, the cache and its bound, and failing
//! closed when the endpoint is unreachable or answers garbage.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use trellis_model::{ForwardClaims, Introspection, JwtRule};

use super::super::testkeys::{self, AUDIENCE, ISSUER, claims, now, sign};
use super::super::{
    Authenticator, AuthnError, IntrospectionOptions, Introspector, JwksOptions, JwtVerifier,
};

const CLIENT_ID: &str = "trellis client";
const SECRET: &str = "s3cret:with/odd+chars";

/// What the endpoint answers: its own status, or the token table.
#[derive(Clone)]
enum Mode {
    Tokens,
    Status(StatusCode, &'static str),
}

/// An introspection endpoint: checks HTTP Basic client credentials (form-encoded first, as
/// RFC 6749 §2.3.1 says), reads `token` from the form body and answers from `tokens`.
struct Endpoint {
    uri: String,
    hits: Arc<AtomicUsize>,
    tokens: Arc<Mutex<HashMap<String, Value>>>,
    mode: Arc<Mutex<Mode>>,
    secret: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| form_decode(v))
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let tokens = Arc::new(Mutex::new(HashMap::new()));
        let mode = Arc::new(Mutex::new(Mode::Tokens));
        let secret = Arc::new(Mutex::new(SECRET.to_string()));
        let (h, t, m, s) = (hits.clone(), tokens.clone(), mode.clone(), secret.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (h, t, m, s) = (h.clone(), t.clone(), m.clone(), s.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (h, t, m, s) = (h.clone(), t.clone(), m.clone(), s.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(answer(req, &t, &m, &s).await)
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Endpoint {
            uri: format!("http://{addr}/oauth2/introspect"),
            hits,
            tokens,
            mode,
            secret,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn token(&self, token: &str, answer: Value) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.to_string(), answer);
        }
    }

    fn mode(&self, mode: Mode) {
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
    }

    fn rule(&self) -> Introspection {
        Introspection {
            endpoint: self.uri.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: Some(SECRET.into()),
            issuer: Some("https://auth.example".into()),
            audiences: vec!["catalog".into()],
            ..Introspection::default()
        }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn answer(
    req: Request<Incoming>,
    tokens: &Mutex<HashMap<String, Value>>,
    mode: &Mutex<Mode>,
    secret: &Mutex<String>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if let Ok(Mode::Status(status, body)) = mode.lock().map(|m| m.clone()) {
        return reply(status, body.to_string());
    }
    let expected = {
        let secret = secret.lock().map(|s| s.clone()).unwrap_or_default();
        let enc = |s: &str| super::form_encode(s);
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", enc(CLIENT_ID), enc(&secret)))
        )
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let form = req.headers().get("content-type").map(HeaderValue::as_bytes)
        == Some(b"application/x-www-form-urlencoded");
    if req.method() != http::Method::POST || !form {
        return reply(StatusCode::BAD_REQUEST, "{}".into());
    }
    if auth != Some(expected.as_str()) {
        return reply(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client"}"#.into(),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let token = form_field(&body, "token").unwrap_or_default();
    let answer = tokens
        .lock()
        .ok()
        .and_then(|t| t.get(&token).cloned())
        .unwrap_or_else(|| json!({ "active": false }));
    reply(StatusCode::OK, answer.to_string())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn introspector(rule: &Introspection) -> Introspector {
    Introspector::new(rule, &client(), IntrospectionOptions::default()).expect("introspector")
}

fn active(extra: Value) -> Value {
    let mut a = json!({
        "active": true,
        "sub": "user-7",
        "scope": "catalog.read",
        "iss": "https://auth.example",
        "aud": "catalog",
        "exp": now() + 600,
    });
    if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                a.remove(k);
            } else {
                a.insert(k.clone(), v.clone());
            }
        }
    }
    a
}

#[tokio::test]
async fn answers_are_judged_and_cached() {
    let ep = Endpoint::start().await;
    let invalid = |r: &'static str| Err::<(), AuthnError>(AuthnError::Invalid(r));
    let cases: Vec<(&str, Value, Result<(), AuthnError>)> = vec![
        ("active", active(json!({})), Ok(())),
        (
            "aud as a list holding ours",
            active(json!({"aud": ["x", "catalog"]})),
            Ok(()),
        ),
        (
            "no aud, iss or exp",
            active(json!({"aud": null, "iss": null, "exp": null})),
            Ok(()),
        ),
        (
            "expired within the skew",
            active(json!({"exp": now() - 30})),
            Ok(()),
        ),
        (
            "inactive",
            json!({"active": false, "sub": "user-7"}),
            invalid("token is not active"),
        ),
        (
            "active as a string",
            active(json!({"active": "true"})),
            invalid("token is not active"),
        ),
        (
            "no active field",
            json!({"sub": "user-7"}),
            invalid("token is not active"),
        ),
        (
            "expired",
            active(json!({"exp": now() - 3600})),
            invalid("token expired"),
        ),
        (
            "not yet valid",
            active(json!({"nbf": now() + 3600})),
            invalid("token not yet valid"),
        ),
        (
            "exp as a string",
            active(json!({"exp": (now() + 600).to_string()})),
            invalid("exp must be a non-negative number"),
        ),
        (
            "wrong issuer",
            active(json!({"iss": "https://evil.example"})),
            invalid("issuer not accepted"),
        ),
        (
            "wrong audience",
            active(json!({"aud": "orders"})),
            invalid("audience not accepted"),
        ),
        (
            "audience list without ours",
            active(json!({"aud": ["a", "b"]})),
            invalid("audience not accepted"),
        ),
    ];
    let i = introspector(&ep.rule());
    for (n, (name, answer, want)) in cases.iter().enumerate() {
        // Tokens with characters that need form encoding.
        let token = format!("opaque+{n}/=&x y");
        ep.token(&token, answer.clone());
        let got = i.introspect(&token).await.map(|_| ());
        assert_eq!(&got, want, "case: {name}");
        // The second look is served from the cache (unless the token's `exp` has passed:
        // never cached past it), with the same verdict.
        let cacheable = answer
            .get("exp")
            .and_then(Value::as_f64)
            .is_none_or(|exp| exp > now() as f64);
        let hits = ep.hits();
        let again = i.introspect(&token).await.map(|_| ());
        assert_eq!(&again, want, "case (cached): {name}");
        let calls = usize::from(!cacheable);
        assert_eq!(ep.hits(), hits + calls, "case {name}: cached = {cacheable}");
    }
    let claims = i.introspect("opaque+0/=&x y").await.expect("active");
    assert_eq!(claims["sub"], "user-7");
    // An unknown token is inactive.
    assert_eq!(
        i.introspect("never-issued").await,
        Err(AuthnError::Invalid("token is not active"))
    );
    ep.stop().await;
}

#[tokio::test]
async fn the_endpoint_failing_fails_closed_and_is_not_cached() {
    let ep = Endpoint::start().await;
    ep.token("t1", active(json!({})));
    let unavailable = Err::<Value, AuthnError>(AuthnError::IntrospectionUnavailable);

    // Wrong client secret: the endpoint refuses the client.
    let mut wrong = ep.rule();
    wrong.client_secret = Some("nope".into());
    assert_eq!(introspector(&wrong).introspect("t1").await, unavailable);

    let i = introspector(&ep.rule());
    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, r#"{"active":true}"#),
        (StatusCode::OK, "not json"),
        (StatusCode::OK, "[true]"),
        (StatusCode::SERVICE_UNAVAILABLE, ""),
    ] {
        ep.mode(Mode::Status(status, body));
        assert_eq!(i.introspect("t1").await, unavailable, "{status} {body}");
        assert_eq!(i.cached(), 0, "failures are not cached");
    }
    ep.mode(Mode::Tokens);
    assert!(i.introspect("t1").await.is_ok());
    let uri = ep.uri.clone();
    ep.stop().await;
    // Gone: a new token cannot be judged.
    assert_eq!(i.introspect("t2").await, unavailable);

    // An oversized answer is refused.
    let big = Endpoint::start().await;
    big.token("t1", active(json!({"pad": "x".repeat(100_000)})));
    let small = IntrospectionOptions {
        max_body: 4096,
        ..IntrospectionOptions::default()
    };
    let i = Introspector::new(&big.rule(), &client(), small).expect("introspector");
    assert_eq!(i.introspect("t1").await, unavailable);
    big.stop().await;
    assert!(!uri.is_empty());
}

#[tokio::test]
async fn the_cache_is_bounded_and_a_zero_ttl_disables_it() {
    let ep = Endpoint::start().await;
    let options = IntrospectionOptions {
        max_entries: 3,
        ..IntrospectionOptions::default()
    };
    let i = Introspector::new(&ep.rule(), &client(), options).expect("introspector");
    for n in 0..10 {
        let token = format!("t{n}");
        ep.token(&token, active(json!({})));
        assert!(i.introspect(&token).await.is_ok());
        assert!(i.cached() <= 3, "cache holds {} answers", i.cached());
    }
    let mut rule = ep.rule();
    rule.cache_ttl = Some("0s".into());
    let i = introspector(&rule);
    let before = ep.hits();
    for _ in 0..3 {
        assert!(i.introspect("t1").await.is_ok());
    }
    assert_eq!(ep.hits(), before + 3);
    assert_eq!(i.cached(), 0);
    ep.stop().await;
}

#[tokio::test]
async fn the_secret_file_is_read_on_each_call() {
    let ep = Endpoint::start().await;
    ep.token("t1", active(json!({})));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
    let mut rule = ep.rule();
    rule.client_secret = None;
    rule.client_secret_file = Some(path.display().to_string());
    rule.cache_ttl = Some("0s".into());
    let i = introspector(&rule);
    assert!(i.introspect("t1").await.is_ok(), "trailing newline ignored");
    // Rotated on the server and in the file.
    if let Ok(mut s) = ep.secret.lock() {
        *s = "rotated".into();
    }
    assert_eq!(
        i.introspect("t1").await,
        Err(AuthnError::IntrospectionUnavailable)
    );
    std::fs::write(&path, "rotated").expect("write secret");
    assert!(i.introspect("t1").await.is_ok());
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(
        i.introspect("t1").await,
        Err(AuthnError::IntrospectionUnavailable)
    );
    ep.stop().await;
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).expect("header value"));
    }
    h
}

#[tokio::test]
async fn jwts_go_to_their_rule_and_opaque_tokens_to_introspection() {
    let ep = Endpoint::start().await;
    ep.token("opaque-1", active(json!({})));
    let key = testkeys::ed("d1");
    let jwt_rule = JwtRule {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        jwks: Some(testkeys::jwks(&[&key])),
        ..JwtRule::default()
    };
    let verifier = JwtVerifier::new(&jwt_rule, &client(), &JwksOptions::default()).expect("jwt");
    let mut rule = ep.rule();
    rule.forward_claims_header = Some(ForwardClaims {
        header: "x-token-claims".into(),
        claims: vec!["sub".into()],
    });
    let auth = Authenticator::from_providers(vec![verifier], vec![introspector(&rule)]);
    let bearer = |t: &str| headers(&[("authorization", &format!("Bearer {t}"))]);

    let jwt = sign(&key, &claims());
    let v = auth
        .authenticate(&bearer(&jwt), None)
        .await
        .expect("jwt accepted");
    assert_eq!(v.claims["iss"], ISSUER);
    assert_eq!(
        ep.hits(),
        0,
        "a JWT of a configured issuer is never introspected"
    );

    let v = auth
        .authenticate(&bearer("opaque-1"), None)
        .await
        .expect("opaque accepted");
    assert_eq!(v.claims["sub"], "user-7");
    let (name, _) = v.forward.expect("forwarded claims");
    assert_eq!(name.as_str(), "x-token-claims");

    assert_eq!(
        auth.authenticate(&bearer("opaque-2"), None).await,
        Err(AuthnError::Invalid("token is not active"))
    );
    // A JWT of the configured issuer that fails verification is not retried elsewhere.
    let expired = sign(&key, &{
        let mut c = claims();
        c["exp"] = json!(now() - 3600);
        c
    });
    assert_eq!(
        auth.authenticate(&bearer(&expired), None).await,
        Err(AuthnError::Invalid("token expired"))
    );
    assert_eq!(
        auth.authenticate(&headers(&[]), None).await,
        Err(AuthnError::Missing)
    );

    // Client copies of the forwarded header are stripped.
    let mut h = headers(&[("x-token-claims", "forged"), ("x-other", "kept")]);
    auth.strip_forwarded(&mut h);
    assert!(h.get("x-token-claims").is_none() && h.get("x-other").is_some());
    ep.stop().await;
}
