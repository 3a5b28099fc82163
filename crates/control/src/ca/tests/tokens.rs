//! Join tokens: format, validation, expiry, storage as a hash only, persistence.

use super::*;

#[test]
fn base64url_matches_rfc_4648_vectors() {
    for (input, want) in [
        (&b""[..], ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"fooba", "Zm9vYmE"),
        (b"foobar", "Zm9vYmFy"),
        (&[0xfb, 0xff, 0xbf], "-_-_"),
    ] {
        assert_eq!(token::base64url(input), want, "input {input:?}");
    }
}

#[test]
fn tokens_are_32_random_bytes_in_base64url() {
    let a = token::generate().expect("token");
    let b = token::generate().expect("token");
    assert!(a.token.starts_with("tjt_"), "{}", a.token);
    assert_eq!(
        a.token.len(),
        4 + 43,
        "prefix and 32 bytes unpadded: {}",
        a.token
    );
    assert!(
        a.token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_ne!(a.token, b.token);
    assert_eq!(a.hash, token::hash(&a.token));
    assert_eq!(a.hash.len(), 64);
}

#[tokio::test]
async fn token_requests_are_validated() {
    let (ca, _dir) = fresh().await;
    let cases = [
        (token_req("Bad_Name"), "service `Bad_Name`"),
        (token_req(""), "service ``"),
        (
            TokenRequest {
                namespace: Some("-x".to_string()),
                ..token_req("catalog")
            },
            "namespace `-x`",
        ),
        (
            TokenRequest {
                ttl_ms: Some(0),
                ..token_req("catalog")
            },
            "ttl_ms 0",
        ),
        (
            TokenRequest {
                ttl_ms: Some(u64::MAX),
                ..token_req("catalog")
            },
            "ttl_ms",
        ),
    ];
    for (req, needle) in cases {
        match ca.create_token(req.clone()).await {
            Err(CaError::Invalid(m)) => assert!(m.contains(needle), "`{m}` lacks `{needle}`"),
            other => panic!("{req:?}: expected Invalid, got {other:?}"),
        }
    }
    let grant = ca
        .create_token(TokenRequest {
            namespace: Some("shop".to_string()),
            ttl_ms: Some(60_000),
            ..token_req("orders")
        })
        .await
        .expect("valid request");
    assert_eq!(grant.spiffe_id, "spiffe://cluster.local/ns/shop/svc/orders");
}

#[tokio::test]
async fn unknown_empty_and_expired_tokens_are_unauthorized() {
    let (ca, _dir) = fresh().await;
    let t0 = unix_ms();
    let grant = ca
        .create_token_at(
            TokenRequest {
                ttl_ms: Some(10_000),
                ..token_req("catalog")
            },
            t0,
        )
        .await
        .expect("token");
    assert_eq!(grant.expires_at_ms, t0 + 10_000);
    let ok = ca
        .authorize_at(&grant.token, t0 + 9_999)
        .await
        .expect("valid");
    assert_eq!(ok.spiffe_id, grant.spiffe_id);
    let csr = csr(&p256());
    for (name, token, at, needle) in [
        ("expired", grant.token.as_str(), t0 + 10_000, "expired"),
        (
            "unknown",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            t0,
            "unknown",
        ),
        ("empty", "  ", t0, "empty"),
    ] {
        match ca.sign_at(token, &csr, at).await {
            Err(CaError::Unauthorized(m)) => assert!(m.contains(needle), "{name}: {m}"),
            other => panic!("{name}: expected Unauthorized, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn only_the_hash_is_stored_and_tokens_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grant = {
        let (ca, _store) = open(dir.path(), CaConfig::default()).await.expect("ca");
        ca.create_token(token_req("catalog")).await.expect("token")
    };
    let file = std::fs::read(dir.path().join(crate::store::FILE_NAME)).expect("store file");
    let text = String::from_utf8_lossy(&file);
    assert!(
        !text.contains(&grant.token),
        "the token text is in the store file"
    );
    assert!(
        text.contains(&token::hash(&grant.token)),
        "its hash is the key"
    );

    let (ca, _store) = open(dir.path(), CaConfig::default()).await.expect("reopen");
    let signed = ca
        .sign(&grant.token, &csr(&p256()))
        .await
        .expect("token still valid");
    assert_eq!(signed.spiffe_id, grant.spiffe_id);
}

#[tokio::test]
async fn expired_tokens_are_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, store) = open(dir.path(), CaConfig::default()).await.expect("ca");
    let t0 = unix_ms();
    let old = ca
        .create_token_at(
            TokenRequest {
                ttl_ms: Some(1_000),
                ..token_req("old")
            },
            t0 - 60_000,
        )
        .await
        .expect("old token");
    assert!(
        store
            .token(token::hash(&old.token))
            .await
            .expect("read")
            .is_some()
    );
    ca.create_token_at(token_req("new"), t0)
        .await
        .expect("new token");
    assert!(
        store
            .token(token::hash(&old.token))
            .await
            .expect("read")
            .is_none(),
        "creating a token purges expired ones"
    );
}
