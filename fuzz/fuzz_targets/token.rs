//! Token inspection: `micro_core::Auth::inspect` of the jwt plugin (`micro_jwt::JwtAuth`), what
//! every authenticated call runs on its bearer token, before anything else is trusted.
//!
//! The key set: `hs` (HS256, current), `es` (ES256) and `ed` (EdDSA), both verify-only with the
//! jwt plugin's test keys. Input, either:
//! - a token, as sent (`Authorization: Bearer <input>`); or
//! - `#` then a JSON header, a newline and JSON claims: the target encodes both and signs them
//!   with `hs`, so the fuzzer gets past the signature into the header and claims checks, which
//!   it could never reach by guessing an HMAC.
//!
//! Invariants: an accepted token names a non-empty account issued by our issuer; a token signed
//! with another key or too long is refused; every refusal is an `invalid` error with a message.

#![no_main]

use std::sync::LazyLock;

use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use micro_core::Auth;
use micro_jwt::{Alg, JwtAuth, Key, KeySet};

const ISSUER: &str = "https://auth.fuzz.example";
const AUDIENCE: &str = "micro";
/// The HS256 secret of key `hs`; the seeds in `corpus/token` are signed with it.
const SECRET: &[u8] = b"micro-fuzz-hs256-secret-of-32-bytes-at-least";
const MAX_TOKEN_LEN: usize = 4 * 1024;

static AUTH: LazyLock<JwtAuth> = LazyLock::new(|| {
    let keys = KeySet::new(Key::hmac("hs", SECRET).expect("a valid secret"))
        .and_then(|set| {
            set.with(
                Key::from_pem(
                    "es",
                    Alg::ES256,
                    include_bytes!("../../plugins/jwt/tests/keys/ec_public.pem"),
                )?
                .verify_only(),
            )
        })
        .and_then(|set| {
            set.with(
                Key::from_pem(
                    "ed",
                    Alg::EdDSA,
                    include_bytes!("../../plugins/jwt/tests/keys/ed_public.pem"),
                )?
                .verify_only(),
            )
        })
        .expect("the jwt plugin's test keys");
    JwtAuth::new(keys, ISSUER, AUDIENCE)
        .expect("a valid configuration")
        .max_token_len(MAX_TOKEN_LEN)
});

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let auth = &*AUTH;
    let (token, signed_by_us) = match input.strip_prefix('#') {
        Some(parts) => {
            let (header, claims) = parts.split_once('\n').unwrap_or((parts, ""));
            (sign(header, claims), true)
        }
        None => (input.to_string(), false),
    };
    match micro_fuzz::block_on(auth.inspect(&token)) {
        Ok(account) => {
            assert!(!account.id.is_empty(), "{token}: an account without an id");
            assert_eq!(account.issuer, ISSUER, "{token}");
            assert!(
                token.len() <= MAX_TOKEN_LEN,
                "accepted {} bytes",
                token.len()
            );
            if signed_by_us {
                return;
            }
            // A token as sent passes only if `hs` signed it: the seeds, and what the fuzzer
            // made of them without touching the signed part.
            let (signed, _) = token.rsplit_once('.').expect("three segments");
            assert!(
                hs256(signed) == token,
                "{token}: accepted, but it is not signed by our key"
            );
        }
        Err(e) => assert!(
            matches!(&e, micro_core::Error::Invalid { what: "token", message } if !message.is_empty()),
            "{token}: refused with {e:?}"
        ),
    }
});

/// The token of `header` and `claims` (any text), signed with key `hs`.
fn sign(header: &str, claims: &str) -> String {
    hs256(&format!(
        "{}.{}",
        base64url(header.as_bytes()),
        base64url(claims.as_bytes())
    ))
}

/// `signed` (the header and claims segments) followed by its HS256 signature with key `hs`.
fn hs256(signed: &str) -> String {
    static KEY: LazyLock<EncodingKey> = LazyLock::new(|| {
        LazyLock::force(&AUTH); // installs jsonwebtoken's crypto provider first
        EncodingKey::from_secret(SECRET)
    });
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &KEY, Algorithm::HS256).expect("HS256 signs");
    format!("{signed}.{signature}")
}
/// Base64url without padding, as JWT segments are written.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}
