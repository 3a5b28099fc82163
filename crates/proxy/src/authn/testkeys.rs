//! Keys and tokens made by the tests themselves: RSA, EC P-256 and Ed25519 key pairs from
//! aws-lc-rs, their JWKS documents, and tokens signed with jsonwebtoken.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

pub(crate) const ISSUER: &str = "https://issuer.example";
pub(crate) const AUDIENCE: &str = "catalog";

/// A signing key with its public JWK.
pub(crate) struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public JWK, without `alg` (most issuers publish it; a test adds it when needed).
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo), for the HS256 key-confusion attack.
    pub public_pem: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn finish(kid: &str, alg: Algorithm, encoding: EncodingKey, public_der: &[u8]) -> TestKey {
    let jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK from a generated key");
    let mut jwk = serde_json::to_value(jwk).expect("JWK to JSON");
    if let Some(map) = jwk.as_object_mut() {
        map.remove("alg");
        map.insert("kid".into(), json!(kid));
    }
    TestKey {
        kid: kid.to_string(),
        alg,
        encoding,
        jwk,
        public_pem: pem("PUBLIC KEY", public_der),
    }
}

/// An RSA-2048 key; generation is slow in debug builds, so each of the few slots is made once.
pub(crate) fn rsa(slot: usize, kid: &str) -> TestKey {
    static SLOTS: [OnceLock<(Vec<u8>, Vec<u8>)>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (private, public) = SLOTS[slot].get_or_init(|| {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA");
        let private: Pkcs8V1Der = pair.as_der().expect("PKCS#8");
        let public: PublicKeyX509Der = pair.public_key().as_der().expect("SPKI");
        (private.as_ref().to_vec(), public.as_ref().to_vec())
    });
    let encoding =
        EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private).as_bytes()).expect("RSA PEM");
    finish(kid, Algorithm::RS256, encoding, public)
}

pub(crate) fn ec(kid: &str) -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate P-256");
    let private = pair.to_pkcs8v1().expect("PKCS#8");
    let public = pair.public_key().as_der().expect("SPKI");
    finish(
        kid,
        Algorithm::ES256,
        EncodingKey::from_ec_der(private.as_ref()),
        public.as_ref(),
    )
}

pub(crate) fn ed(kid: &str) -> TestKey {
    let pair = Ed25519KeyPair::generate().expect("generate Ed25519");
    let private = pair.to_pkcs8v1().expect("PKCS#8");
    finish(
        kid,
        Algorithm::EdDSA,
        EncodingKey::from_ed_der(private.as_ref()),
        pair.public_key().as_ref(),
    )
}

/// A JWKS document holding the public halves of `keys`.
pub(crate) fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Valid claims for [`ISSUER`] and [`AUDIENCE`], expiring in ten minutes.
pub(crate) fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "scope": "catalog.read",
        "iat": now(),
        "exp": now() + 600,
    })
}

/// A token signed by `key` with its own `alg` and `kid`.
pub(crate) fn sign(key: &TestKey, claims: &Value) -> String {
    sign_as(key, key.alg, Some(&key.kid), claims)
}

pub(crate) fn sign_as(key: &TestKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key.encoding).expect("sign")
}

/// An unsigned token: `alg: none`, empty signature.
pub(crate) fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT", "kid": kid }).to_string();
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// HS256 "signed" with the RSA public key's PEM as the shared secret: the key-confusion attack.
pub(crate) fn hs256_with_public_key(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    encode(
        &header,
        claims,
        &EncodingKey::from_secret(key.public_pem.as_bytes()),
    )
    .expect("sign HS256")
}

/// `token` with its payload replaced by `claims`, signature kept.
pub(crate) fn tamper(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    let _ = parts.next();
    let signature = parts.next().unwrap_or_default();
    format!(
        "{header}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
