//! Issuing, inspecting, refreshing and rotating tokens; forged and broken tokens refused.

use crate::common;

use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm as JAlg;
use micro_core::Auth;
use micro_core::auth::{Account, TokenOptions};
use micro_core::{Error, Result};
use micro_jwt::{Alg, JwtAuth, Key, KeySet};
use serde_json::json;

fn alice() -> Account {
    Account {
        id: "alice".into(),
        kind: "user".into(),
        issuer: String::new(),
        scopes: vec!["greeter".into(), "admin".into()],
        metadata: [("team".to_string(), "core".to_string())].into(),
    }
}

fn assert_token_error(result: Result<Account>, case: &str) {
    match result {
        Err(Error::Invalid { what: "token", .. }) => {}
        Err(other) => panic!("{case}: refused, but with an unexpected error: {other}"),
        Ok(account) => panic!("{case}: accepted as {account:?}"),
    }
}

#[tokio::test]
async fn the_valid_control_token_passes() {
    let auth = multi_key_auth();
    let account = auth.inspect(&rsa_token(&claims())).await.unwrap();
    assert_eq!(account.id, "alice");
    assert_eq!(account.issuer, ISSUER);
    assert_eq!(account.scopes, ["greeter"]);
}

#[tokio::test]
async fn forged_and_broken_tokens_are_refused() {
    let auth = multi_key_auth();
    let valid = rsa_token(&claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let rsa_public = pem("rsa_public.pem");
    let refresh = auth
        .token(&alice(), &TokenOptions::default())
        .await
        .unwrap()
        .refresh_token;
    let now = now();

    let tampered_payload = {
        let mut c = claims();
        c["scopes"] = json!(["greeter", "admin"]);
        format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        )
    };
    let tampered_signature = {
        let mut sig: Vec<char> = parts[2].chars().collect();
        sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            sig.into_iter().collect::<String>()
        )
    };
    let unsigned = |header: serde_json::Value| {
        format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        )
    };
    let big = {
        let mut c = claims();
        c["md"] = json!({ "pad": "x".repeat(10 * 1024) });
        rsa_token(&c)
    };
    assert!(big.len() > 10 * 1024);

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            unsigned(json!({"alg": "none", "typ": "JWT", "kid": "rsa"})),
        ),
        (
            "alg none, no kid",
            unsigned(json!({"alg": "none", "typ": "JWT"})),
        ),
        (
            "HS256 signed with the RS public key as secret",
            forge(
                json!({"alg": "HS256", "kid": "rsa"}),
                &claims(),
                JAlg::HS256,
                &rsa_public,
            ),
        ),
        (
            "HS256 with the RS public key under the hs kid",
            forge(
                json!({"alg": "HS256", "kid": "hs"}),
                &claims(),
                JAlg::HS256,
                &rsa_public,
            ),
        ),
        (
            "RS256 token under the HS kid",
            forge(
                json!({"alg": "RS256", "kid": "hs"}),
                &claims(),
                JAlg::RS256,
                b"",
            ),
        ),
        (
            "ES256 token under the RS kid",
            forge(
                json!({"alg": "ES256", "kid": "rsa"}),
                &claims(),
                JAlg::ES256,
                b"",
            ),
        ),
        ("tampered payload", tampered_payload),
        ("tampered signature", tampered_signature),
        ("signature removed", format!("{}.{}.", parts[0], parts[1])),
        ("expired", rsa_token(&with("exp", json!(now - 3600)))),
        (
            "nbf in the future",
            rsa_token(&with("nbf", json!(now + 3600))),
        ),
        (
            "iat in the future",
            rsa_token(&with("iat", json!(now + 3600))),
        ),
        (
            "wrong iss",
            rsa_token(&with("iss", json!("https://evil.test"))),
        ),
        (
            "wrong aud (another service's audience)",
            rsa_token(&with("aud", json!("billing"))),
        ),
        (
            "aud list without ours",
            rsa_token(&with("aud", json!(["billing", "orders"]))),
        ),
        (
            "unknown kid",
            forge(
                json!({"alg": "RS256", "kid": "retired"}),
                &claims(),
                JAlg::RS256,
                b"",
            ),
        ),
        (
            "missing kid (the set has several keys)",
            forge(json!({"alg": "RS256"}), &claims(), JAlg::RS256, b""),
        ),
        ("missing exp", rsa_token(&without("exp"))),
        ("missing iat", rsa_token(&without("iat"))),
        ("missing sub", rsa_token(&without("sub"))),
        ("missing iss", rsa_token(&without("iss"))),
        ("missing aud", rsa_token(&without("aud"))),
        ("missing typ", rsa_token(&without("typ"))),
        ("empty sub", rsa_token(&with("sub", json!("")))),
        ("wrong typ: a refresh token as access token", refresh),
        ("typ of another kind", rsa_token(&with("typ", json!("id")))),
        (
            "exp of the wrong JSON type",
            rsa_token(&with("exp", json!("9999999999"))),
        ),
        (
            "nbf of the wrong JSON type",
            rsa_token(&with("nbf", json!("0"))),
        ),
        ("exp not an integer", rsa_token(&with("exp", json!(1e30)))),
        ("exp negative", rsa_token(&with("exp", json!(-1)))),
        (
            "scopes of the wrong type",
            rsa_token(&with("scopes", json!("admin"))),
        ),
        (
            "jku header (never followed)",
            forge(
                json!({"alg": "RS256", "kid": "rsa", "jku": "https://evil.test/jwks.json"}),
                &claims(),
                JAlg::RS256,
                b"",
            ),
        ),
        (
            "x5u header (never followed)",
            forge(
                json!({"alg": "RS256", "kid": "rsa", "x5u": "https://evil.test/cert.pem"}),
                &claims(),
                JAlg::RS256,
                b"",
            ),
        ),
        ("jwk header (an embedded key)", header_param_token("jwk")),
        (
            "x5c header (an embedded certificate chain)",
            header_param_token("x5c"),
        ),
        (
            "crit header (an extension we do not know)",
            header_param_token("crit"),
        ),
        ("garbage", "garbage".into()),
        ("empty", String::new()),
        ("10 KB token", big),
        ("non-base64 segments", "a!b.c$d.e%f".into()),
        ("non-ASCII", "ü.ü.ü".into()),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"hello"), parts[1], parts[2]),
        ),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{valid}.{}", parts[2])),
        ("only dots", "..".into()),
        ("whitespace around", format!(" {valid} ")),
        ("Bearer prefix left in", format!("Bearer {valid}")),
    ];
    assert!(cases.len() >= 20);
    for (case, token) in &cases {
        assert_token_error(auth.inspect(token).await, case);
        // Nor does it pass as a refresh token (but for the real refresh token of the table).
        if !case.starts_with("wrong typ") {
            assert!(auth.refresh(token).await.is_err(), "{case}: refreshed");
        }
    }
    // The control really is valid, so each refusal above is about its own defect.
    auth.inspect(&valid).await.unwrap();
}

/// A token signed with the right key (`rsa` of [`multi_key_auth`]), valid in every way but
/// for the header parameter `name`, whose value is well-formed: `jwk` is the signing key's own
/// public JWK, `x5c` a one-certificate chain, `crit` a critical extension.
fn header_param_token(name: &str) -> String {
    let value = match name {
        "jku" => json!("https://evil.test/jwks.json"),
        "x5u" => json!("https://evil.test/cert.pem"),
        "jwk" => {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap();
            serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&key, JAlg::RS256).unwrap(),
            )
            .unwrap()
        }
        "x5c" => json!([b64(b"not really a DER certificate")]),
        "crit" => json!(["exp"]),
        other => panic!("no case for {other}"),
    };
    let mut header = json!({"alg": "RS256", "kid": "rsa", "typ": "JWT"});
    header[name] = value;
    forge(header, &claims(), JAlg::RS256, b"")
}

#[tokio::test]
async fn header_parameters_that_bring_keys_or_extensions_are_refused_by_name() {
    let auth = multi_key_auth();
    for name in ["jku", "x5u", "jwk", "x5c", "crit"] {
        let token = header_param_token(name);
        let header = jsonwebtoken::decode_header(&token).expect("a well-formed header");
        assert_eq!(header.kid.as_deref(), Some("rsa"), "{name}");
        match auth.inspect(&token).await {
            Err(Error::Invalid {
                what: "token",
                message,
            }) => assert!(
                message.contains(&format!("`{name}`")) && message.contains("refused"),
                "{name}: the reason names the parameter: {message}"
            ),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Without the parameter the same token passes: the parameter alone is refused.
    auth.inspect(&rsa_token(&claims())).await.unwrap();
}

#[tokio::test]
async fn every_algorithm_round_trips() {
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let kid = format!("{alg}-1");
        let auth = JwtAuth::new(
            KeySet::new(signing_key(&kid, alg)).unwrap(),
            ISSUER,
            AUDIENCE,
        )
        .unwrap();
        let token = auth
            .token(&alice(), &TokenOptions::default())
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(&token.access_token).unwrap();
        assert_eq!(header.alg, alg_of(alg));
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        let account = auth.inspect(&token.access_token).await.unwrap();
        let want = Account {
            issuer: ISSUER.into(),
            ..alice()
        };
        assert_eq!(account, want, "{alg}");

        // Another process holding only the public key verifies it.
        if alg != Alg::HS256 {
            let public = match alg {
                Alg::RS256 => "rsa_public.pem",
                Alg::ES256 => "ec_public.pem",
                _ => "ed_public.pem",
            };
            let verifier_keys =
                KeySet::verify_only([Key::from_pem_file(&kid, alg, key_path(public)).unwrap()])
                    .unwrap();
            let verifier = JwtAuth::new(verifier_keys, ISSUER, AUDIENCE).unwrap();
            assert_eq!(verifier.inspect(&token.access_token).await.unwrap(), want);
            assert!(
                verifier
                    .token(&alice(), &TokenOptions::default())
                    .await
                    .is_err(),
                "a verify-only set cannot sign"
            );
        }
    }
}

fn alg_of(alg: Alg) -> JAlg {
    match alg {
        Alg::HS256 => JAlg::HS256,
        Alg::RS256 => JAlg::RS256,
        Alg::ES256 => JAlg::ES256,
        Alg::EdDSA => JAlg::EdDSA,
    }
}

#[tokio::test]
async fn rotation_keeps_the_previous_key_until_it_is_retired() {
    let auth = JwtAuth::new(
        KeySet::new(signing_key("2026-01", Alg::HS256)).unwrap(),
        ISSUER,
        AUDIENCE,
    )
    .unwrap();
    let old = auth
        .token(&alice(), &TokenOptions::default())
        .await
        .unwrap();

    auth.rotate(signing_key("2026-02", Alg::EdDSA)).unwrap();
    let new = auth
        .token(&alice(), &TokenOptions::default())
        .await
        .unwrap();
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_eq!(
        kid(&new.access_token),
        "2026-02",
        "signs with the current key"
    );
    assert_eq!(kid(&old.access_token), "2026-01");
    auth.inspect(&old.access_token)
        .await
        .expect("the previous key still verifies");
    auth.inspect(&new.access_token).await.unwrap();
    auth.refresh(&old.refresh_token)
        .await
        .expect("an old refresh token still refreshes");

    assert!(auth.retire("2026-01"));
    assert!(!auth.retire("2026-01"));
    assert_token_error(auth.inspect(&old.access_token).await, "retired key");
    assert!(auth.refresh(&old.refresh_token).await.is_err());
    auth.inspect(&new.access_token).await.unwrap();
    assert_eq!(auth.keys().kids(), ["2026-02"]);
}

#[tokio::test]
async fn refresh_gives_a_new_pair_and_only_takes_refresh_tokens() {
    let auth = multi_key_auth();
    let first = auth
        .token(&alice(), &TokenOptions::default())
        .await
        .unwrap();
    assert_token_error(
        auth.inspect(&first.refresh_token).await,
        "refresh token as access token",
    );
    let refused = auth.refresh(&first.access_token).await;
    assert!(
        matches!(refused, Err(Error::Invalid { what: "token", .. })),
        "an access token is not a refresh token: {refused:?}"
    );

    let second = auth.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert_ne!(second.refresh_token, first.refresh_token);
    let account = auth.inspect(&second.access_token).await.unwrap();
    assert_eq!(account.id, "alice");
    assert_eq!(account.scopes, alice().scopes);
    assert_eq!(account.metadata, alice().metadata);
    auth.refresh(&second.refresh_token).await.unwrap();
    assert!(second.expiry >= now() + 60);
}

#[tokio::test]
async fn lifetimes_and_leeway() {
    let auth = JwtAuth::new(
        KeySet::new(signing_key("k", Alg::HS256)).unwrap(),
        ISSUER,
        AUDIENCE,
    )
    .unwrap()
    .leeway(Duration::ZERO);
    let options = TokenOptions {
        access_ttl: Some(Duration::from_secs(1)),
        refresh_ttl: Some(Duration::from_secs(3600)),
    };
    let token = auth.token(&alice(), &options).await.unwrap();
    assert!(token.expiry <= now() + 1);
    // Expired a little: refused without leeway, accepted with a larger one.
    let stale = forge(
        json!({"alg": "HS256", "kid": "k"}),
        &with("exp", json!(now() - 5)),
        JAlg::HS256,
        SECRET.as_bytes(),
    );
    assert_token_error(auth.inspect(&stale).await, "expired 5 s ago, no leeway");
    let lenient = JwtAuth::new(
        KeySet::new(signing_key("k", Alg::HS256)).unwrap(),
        ISSUER,
        AUDIENCE,
    )
    .unwrap()
    .leeway(Duration::from_secs(30));
    lenient.inspect(&stale).await.unwrap();
}

#[test]
fn bad_keys_are_refused_at_load() {
    assert!(Key::hmac("k", "short").is_err(), "short HMAC secret");
    assert!(Key::hmac("", SECRET).is_err(), "empty kid");
    assert!(
        Key::from_pem("k", Alg::RS256, pem("ec_private.pem")).is_err(),
        "EC key as RS256"
    );
    assert!(
        Key::from_pem("k", Alg::EdDSA, pem("rsa_public.pem")).is_err(),
        "RSA key as EdDSA"
    );
    assert!(Key::from_pem("k", Alg::HS256, pem("rsa_private.pem")).is_err());
    assert!(Key::from_pem("k", Alg::RS256, "not a key").is_err());
    let missing = Key::from_pem_file("k", Alg::RS256, "/nonexistent/key.pem").unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/key.pem"),
        "{missing}"
    );
    assert!(
        KeySet::new(Key::from_pem("k", Alg::RS256, pem("rsa_public.pem")).unwrap()).is_err(),
        "a public key cannot be the signing key"
    );
    let dup = KeySet::new(signing_key("k", Alg::HS256))
        .unwrap()
        .with(signing_key("k", Alg::EdDSA));
    assert!(dup.is_err(), "duplicate kid");
    assert!("hs512".parse::<Alg>().is_err());
    assert_eq!("eddsa".parse::<Alg>().unwrap(), Alg::EdDSA);
    assert!(JwtAuth::new(KeySet::default(), ISSUER, AUDIENCE).is_err());
    assert!(
        JwtAuth::new(
            KeySet::new(signing_key("k", Alg::HS256)).unwrap(),
            "",
            AUDIENCE
        )
        .is_err()
    );
}

#[tokio::test]
async fn configured_from_environment_variables() {
    let vars = |pairs: Vec<(&'static str, String)>| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    };
    let hs = JwtAuth::from_vars(vars(vec![
        ("MICRO_AUTH_JWT_SECRET", SECRET.into()),
        ("MICRO_AUTH_JWT_ISSUER", ISSUER.into()),
        ("MICRO_AUTH_JWT_AUDIENCE", AUDIENCE.into()),
        ("MICRO_AUTH_JWT_ACCESS_TTL", "5m".into()),
    ]))
    .unwrap();
    let token = hs.token(&alice(), &TokenOptions::default()).await.unwrap();
    assert!(token.expiry <= now() + 300);
    hs.inspect(&token.access_token).await.unwrap();

    // An EdDSA issuer from a PEM file, also verifying the previous RS256 key.
    let ed = JwtAuth::from_vars(vars(vec![
        ("MICRO_AUTH_JWT_ALG", "EdDSA".into()),
        ("MICRO_AUTH_JWT_KID", "ed-2".into()),
        (
            "MICRO_AUTH_JWT_PRIVATE_KEY_FILE",
            key_path("ed_private.pem").display().to_string(),
        ),
        (
            "MICRO_AUTH_JWT_VERIFY_KEYS",
            format!("rsa:RS256:{}", key_path("rsa_public.pem").display()),
        ),
        ("MICRO_AUTH_JWT_ISSUER", ISSUER.into()),
        ("MICRO_AUTH_JWT_AUDIENCE", AUDIENCE.into()),
    ]))
    .unwrap();
    assert_eq!(ed.keys().kids(), ["ed-2", "rsa"]);
    ed.inspect(&rsa_token(&claims())).await.unwrap();
    let token = ed.token(&alice(), &TokenOptions::default()).await.unwrap();
    ed.inspect(&token.access_token).await.unwrap();

    // A verify-only service, from a public key in the environment.
    let verifier = JwtAuth::from_vars(vars(vec![
        ("MICRO_AUTH_JWT_ALG", "RS256".into()),
        ("MICRO_AUTH_JWT_KID", "rsa".into()),
        (
            "MICRO_AUTH_JWT_PUBLIC_KEY",
            String::from_utf8(pem("rsa_public.pem")).unwrap(),
        ),
        ("MICRO_AUTH_JWT_ISSUER", ISSUER.into()),
        ("MICRO_AUTH_JWT_AUDIENCE", AUDIENCE.into()),
    ]))
    .unwrap();
    verifier.inspect(&rsa_token(&claims())).await.unwrap();

    for (case, broken) in [
        (
            "no key",
            vec![("MICRO_AUTH_JWT_ISSUER", ISSUER.to_string())],
        ),
        (
            "no issuer",
            vec![
                ("MICRO_AUTH_JWT_SECRET", SECRET.to_string()),
                ("MICRO_AUTH_JWT_AUDIENCE", AUDIENCE.into()),
            ],
        ),
        (
            "bad ttl",
            vec![
                ("MICRO_AUTH_JWT_SECRET", SECRET.to_string()),
                ("MICRO_AUTH_JWT_ISSUER", ISSUER.into()),
                ("MICRO_AUTH_JWT_AUDIENCE", AUDIENCE.into()),
                ("MICRO_AUTH_JWT_LEEWAY", "soon".into()),
            ],
        ),
        (
            "secret with RS256",
            vec![
                ("MICRO_AUTH_JWT_SECRET", SECRET.to_string()),
                ("MICRO_AUTH_JWT_ALG", "RS256".into()),
                ("MICRO_AUTH_JWT_ISSUER", ISSUER.into()),
                ("MICRO_AUTH_JWT_AUDIENCE", AUDIENCE.into()),
            ],
        ),
    ] {
        assert!(JwtAuth::from_vars(vars(broken)).is_err(), "{case}");
    }
}
