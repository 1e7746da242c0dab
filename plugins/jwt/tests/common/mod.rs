//! Shared helpers: test keys, a token forger, and an auth to attack.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use micro_jwt::{Alg, JwtAuth, Key, KeySet};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "micro";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

pub fn pem(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The private key of `alg` (HS256: the shared secret), with kid `kid`.
pub fn signing_key(kid: &str, alg: Alg) -> Key {
    match alg {
        Alg::HS256 => Key::hmac(kid, SECRET).unwrap(),
        Alg::RS256 => Key::from_pem(kid, alg, pem("rsa_private.pem")).unwrap(),
        Alg::ES256 => Key::from_pem(kid, alg, pem("ec_private.pem")).unwrap(),
        Alg::EdDSA => Key::from_pem(kid, alg, pem("ed_private.pem")).unwrap(),
    }
}

/// An auth signing RS256 with kid `rsa`, also verifying HS256 (`hs`), ES256 (`ec`) and EdDSA
/// (`ed`).
pub fn multi_key_auth() -> Arc<JwtAuth> {
    let keys = KeySet::new(signing_key("rsa", Alg::RS256))
        .unwrap()
        .with(signing_key("hs", Alg::HS256))
        .unwrap()
        .with(signing_key("ec", Alg::ES256))
        .unwrap()
        .with(signing_key("ed", Alg::EdDSA))
        .unwrap();
    Arc::new(JwtAuth::new(keys, ISSUER, AUDIENCE).unwrap())
}

/// Valid access-token claims for alice.
pub fn claims() -> Value {
    let now = now();
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 600,
        "iat": now,
        "typ": "access",
        "scopes": ["greeter"],
    })
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` under `header` with the raw jsonwebtoken key of `alg` (HS256: `secret`).
pub fn forge(header: Value, claims: &Value, alg: jsonwebtoken::Algorithm, secret: &[u8]) -> String {
    use jsonwebtoken::{EncodingKey, Header};
    let mut h: Header = serde_json::from_value(header).expect("header");
    h.alg = alg;
    let key = match alg {
        jsonwebtoken::Algorithm::HS256 => EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap()
        }
        jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap(),
        jsonwebtoken::Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed_private.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    jsonwebtoken::encode(&h, claims, &key).expect("forge")
}

/// A token signed by the `rsa` key of [`multi_key_auth`] with these claims.
pub fn rsa_token(claims: &Value) -> String {
    forge(
        json!({"alg": "RS256", "kid": "rsa", "typ": "JWT"}),
        claims,
        jsonwebtoken::Algorithm::RS256,
        b"",
    )
}

/// `claims` with `key` removed.
pub fn without(key: &str) -> Value {
    let mut c = claims();
    c.as_object_mut().unwrap().remove(key);
    c
}

/// `claims` with `key` set to `value`.
pub fn with(key: &str, value: Value) -> Value {
    let mut c = claims();
    c[key] = value;
    c
}
