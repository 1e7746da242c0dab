//! What keeps the registry from being an open door: the shared token every call carries, the
//! owner key a client sends with its registrations, the constant-time comparison of both, and
//! the rule for where a registry server may listen.
//!
//! - **Token** (`--registry-token`, `MICRO_REGISTRY_TOKEN`): gRPC metadata
//!   `authorization: Bearer <token>` on every call. A server with a token refuses a call
//!   without it, or with another one, as `UNAUTHENTICATED`.
//! - **Owner key**: metadata `micro-registry-owner` on `Register` and `Deregister`, a random
//!   secret of each [`RemoteRegistry`](crate::RemoteRegistry). The first registration of a node
//!   id records it; see [`Owners`](crate::owners::Owners).
//! - **Exposure**: [`check_exposure`] — loopback, or TLS and a token or client certificates.

use std::net::SocketAddr;

use micro_core::tls::ServerTls;
use micro_core::{Error, Result};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// The metadata key the token travels in, as `Bearer <token>`.
pub const TOKEN_METADATA: &str = "authorization";
/// The metadata key of the owner key sent with `Register` and `Deregister`.
pub const OWNER_METADATA: &str = "micro-registry-owner";
/// Shortest owner key a server accepts (a [`RemoteRegistry`](crate::RemoteRegistry) sends 64
/// hex digits of randomness).
pub const MIN_OWNER_LEN: usize = 16;
/// Longest owner key a server accepts.
pub const MAX_OWNER_LEN: usize = 256;
/// A token shorter than this is accepted but logged as weak.
const WEAK_TOKEN_LEN: usize = 16;

/// Whether `presented` and `expected` are the same bytes, in time that depends on their lengths
/// only, never on where they first differ: every byte is looked at, the differences are folded
/// together and the result read once at the end.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(presented.len() != expected.len());
    for i in 0..presented.len().max(expected.len()) {
        let a = presented.get(i).copied().unwrap_or(0);
        let b = expected.get(i).copied().unwrap_or(0);
        difference |= a ^ b;
    }
    // Keeps the optimizer from turning the fold back into a loop that stops early.
    std::hint::black_box(difference) == 0
}

/// Checks a registry token: non-empty, printable ASCII without spaces (it travels in a header).
pub fn validate_token(token: &str) -> Result<()> {
    if token.is_empty() {
        return Err(Error::Option(
            "option `registry-token` (MICRO_REGISTRY_TOKEN) is empty: give the registry's secret or leave it unset".into(),
        ));
    }
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::Option(format!(
            "option `registry-token` (MICRO_REGISTRY_TOKEN) holds {bad:?}: a token is printable ASCII without spaces (it travels in the `{TOKEN_METADATA}` header)"
        )));
    }
    if token.len() < WEAK_TOKEN_LEN {
        tracing::warn!(
            length = token.len(),
            "the registry token is shorter than {WEAK_TOKEN_LEN} characters: easy to guess"
        );
    }
    Ok(())
}

/// The `authorization` value carrying `token` (already checked by [`validate_token`]).
pub(crate) fn bearer(token: &str) -> Result<AsciiMetadataValue> {
    validate_token(token)?;
    AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|e| {
        Error::Option(format!(
            "option `registry-token` cannot travel in a header: {e}"
        ))
    })
}

/// Why a call was refused by [`check_token`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <token>`.
    NotBearer,
    /// Another token.
    Wrong,
}

impl TokenRefusal {
    /// The message the caller gets.
    pub(crate) fn message(&self) -> String {
        let fix = "start it with `--registry-token` (or MICRO_REGISTRY_TOKEN) set to the registry's token, the gateway's `--registry-token`";
        match self {
            TokenRefusal::Missing => format!(
                "the registry requires a token and this call carries none (metadata `{TOKEN_METADATA}: Bearer <token>`): {fix}"
            ),
            TokenRefusal::NotBearer => format!(
                "the registry requires a token as metadata `{TOKEN_METADATA}: Bearer <token>`, and this call's `{TOKEN_METADATA}` is not of that form: {fix}"
            ),
            TokenRefusal::Wrong => {
                format!("the registry token this call carries is not the registry's: {fix}")
            }
        }
    }
}

/// Checks the `authorization` metadata against `expected` (compared in constant time).
pub(crate) fn check_token(
    metadata: &MetadataMap,
    expected: &[u8],
) -> std::result::Result<(), TokenRefusal> {
    let value = metadata.get(TOKEN_METADATA).ok_or(TokenRefusal::Missing)?;
    let value = value.as_bytes();
    let scheme = b"bearer ";
    let presented = match value.get(..scheme.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(scheme) => &value[scheme.len()..],
        _ => return Err(TokenRefusal::NotBearer),
    };
    if constant_time_eq(presented, expected) {
        Ok(())
    } else {
        Err(TokenRefusal::Wrong)
    }
}

/// The owner key of a `Register`/`Deregister` call, or the message saying what is wrong with it.
pub(crate) fn owner_of(metadata: &MetadataMap) -> std::result::Result<String, String> {
    let value = metadata.get(OWNER_METADATA).ok_or_else(|| {
        format!(
            "the call carries no owner key (metadata `{OWNER_METADATA}`): send a secret of your own, {MIN_OWNER_LEN} to {MAX_OWNER_LEN} characters, the same on every register and deregister of a node (the `remote` plugin does)"
        )
    })?;
    let owner = value.to_str().map_err(|_| {
        format!("the owner key (metadata `{OWNER_METADATA}`) is not printable ASCII")
    })?;
    if !(MIN_OWNER_LEN..=MAX_OWNER_LEN).contains(&owner.len()) {
        return Err(format!(
            "the owner key (metadata `{OWNER_METADATA}`) has {} characters; it must have {MIN_OWNER_LEN} to {MAX_OWNER_LEN}",
            owner.len()
        ));
    }
    Ok(owner.to_string())
}

/// A fresh owner key: 32 random bytes from the operating system, as 64 hex digits.
pub(crate) fn new_owner_key() -> Result<AsciiMetadataValue> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::backend_msg(
            "registry",
            crate::NAME,
            format!("cannot draw the random owner key of this client: {e}"),
        )
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    AsciiMetadataValue::try_from(hex).map_err(|e| {
        Error::backend_msg(
            "registry",
            crate::NAME,
            format!("the owner key is not a header value: {e}"),
        )
    })
}

/// The rule for where a registry server may listen: on a loopback address anything goes (the
/// default development setup); anywhere else it needs TLS (`server-tls-cert`/`server-tls-key`)
/// **and** a way to tell who may call it: a token (`registry-token`) or client certificates
/// (`server-tls-client-ca`). Otherwise anyone who can reach it could register a node for any
/// service and receive its calls. `address` is the bound address (`0.0.0.0`, `::` and LAN
/// addresses are not loopback).
pub fn check_exposure(address: SocketAddr, tls: Option<&ServerTls>, token: bool) -> Result<()> {
    if address.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    let client_certificates = tls.is_some_and(ServerTls::requires_client_certificates);
    if tls.is_some() && (token || client_certificates) {
        return Ok(());
    }
    let lacking = match (tls.is_some(), token) {
        (false, false) => "it has neither TLS nor a token",
        (false, true) => {
            "it has a token but no TLS (the token would cross the network in clear text)"
        }
        (true, _) => "it has TLS but neither a token nor client certificates",
    };
    Err(Error::Option(format!(
        "refusing to serve the registry on {address}, which is not a loopback address: {lacking}, so anyone who can reach it could register nodes for any service and receive their calls. \
         Give it TLS (`--server-tls-cert` and `--server-tls-key`) and either a token (`--registry-token` or MICRO_REGISTRY_TOKEN) or client certificates (`--server-tls-client-ca`), or listen on loopback (127.0.0.1)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bytes_are_equal() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"s3cret-token", b"s3cret-token"));
    }

    #[test]
    fn any_difference_is_a_difference() {
        let expected = b"s3cret-token";
        // A difference at each position, first and last included.
        for i in 0..expected.len() {
            let mut presented = expected.to_vec();
            presented[i] ^= 0x01;
            assert!(!constant_time_eq(&presented, expected), "byte {i}");
        }
        // Prefixes, extensions and empty inputs.
        assert!(!constant_time_eq(b"s3cret", expected));
        assert!(!constant_time_eq(b"s3cret-token-and-more", expected));
        assert!(!constant_time_eq(b"", expected));
        assert!(!constant_time_eq(expected, b""));
        // Padding with zero bytes is not the same token.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().expect("metadata value"));
        }
        map
    }

    #[test]
    fn token_checks() {
        let expected = b"s3cret-token";
        assert_eq!(
            check_token(&metadata(&[]), expected),
            Err(TokenRefusal::Missing)
        );
        assert_eq!(
            check_token(&metadata(&[("authorization", "s3cret-token")]), expected),
            Err(TokenRefusal::NotBearer)
        );
        assert_eq!(
            check_token(&metadata(&[("authorization", "Bearer wrong")]), expected),
            Err(TokenRefusal::Wrong)
        );
        assert_eq!(
            check_token(&metadata(&[("authorization", "Bearer ")]), expected),
            Err(TokenRefusal::Wrong)
        );
        assert_eq!(
            check_token(
                &metadata(&[("authorization", "Bearer s3cret-token")]),
                expected
            ),
            Ok(())
        );
        assert_eq!(
            check_token(
                &metadata(&[("authorization", "bearer s3cret-token")]),
                expected
            ),
            Ok(())
        );
        for refusal in [
            TokenRefusal::Missing,
            TokenRefusal::NotBearer,
            TokenRefusal::Wrong,
        ] {
            let message = refusal.message();
            assert!(
                message.contains("--registry-token") && message.contains("MICRO_REGISTRY_TOKEN"),
                "{message}"
            );
        }
    }

    #[test]
    fn tokens_must_fit_a_header() {
        assert!(validate_token("s3cret-token-of-some-length").is_ok());
        let empty = validate_token("").unwrap_err().to_string();
        assert!(
            empty.contains("registry-token") && empty.contains("empty"),
            "{empty}"
        );
        let spaced = validate_token("two words").unwrap_err().to_string();
        assert!(spaced.contains("' '"), "{spaced}");
        assert!(validate_token("line\nbreak").is_err());
        assert_eq!(
            bearer("abc").expect("bearer").to_str().expect("ascii"),
            "Bearer abc"
        );
    }

    #[test]
    fn owner_keys() {
        let key = new_owner_key().expect("owner key");
        let key = key.to_str().expect("ascii");
        assert_eq!(key.len(), 64);
        assert_ne!(
            new_owner_key().expect("owner key").to_str().expect("ascii"),
            key,
            "each client draws its own"
        );
        assert_eq!(
            owner_of(&metadata(&[(OWNER_METADATA, key)])).as_deref(),
            Ok(key)
        );
        assert!(
            owner_of(&metadata(&[]))
                .unwrap_err()
                .contains(OWNER_METADATA)
        );
        assert!(
            owner_of(&metadata(&[(OWNER_METADATA, "short")]))
                .unwrap_err()
                .contains("16 to 256")
        );
    }

    #[test]
    fn exposure_rule() {
        let loopback: SocketAddr = "127.0.0.1:8000".parse().expect("address");
        let loopback6: SocketAddr = "[::1]:8000".parse().expect("address");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:8000".parse().expect("address");
        for address in [loopback, loopback6, mapped] {
            assert!(check_exposure(address, None, false).is_ok(), "{address}");
        }
        for address in ["0.0.0.0:8000", "[::]:8000", "192.168.1.20:8000"] {
            let address: SocketAddr = address.parse().expect("address");
            let bare = check_exposure(address, None, false)
                .unwrap_err()
                .to_string();
            for needle in [
                "not a loopback address",
                "neither TLS nor a token",
                "--server-tls-cert",
                "--server-tls-key",
                "--registry-token",
                "--server-tls-client-ca",
            ] {
                assert!(bare.contains(needle), "{needle}: {bare}");
            }
            let token_only = check_exposure(address, None, true).unwrap_err().to_string();
            assert!(token_only.contains("no TLS"), "{token_only}");
        }
    }

    #[test]
    fn exposure_rule_with_tls() {
        let pki = micro_testkit::TestPki::new("exposure");
        let server = pki.issue("registry", "registry");
        let tls = ServerTls::new(&server.cert, &server.key, None).expect("server TLS");
        let mutual = ServerTls::new(&server.cert, &server.key, Some(pki.ca().to_path_buf()))
            .expect("server mTLS");
        for address in ["0.0.0.0:8000", "[::]:8000", "10.1.2.3:8000"] {
            let address: SocketAddr = address.parse().expect("address");
            let tls_only = check_exposure(address, Some(&tls), false)
                .unwrap_err()
                .to_string();
            assert!(
                tls_only.contains("neither a token nor client certificates"),
                "{tls_only}"
            );
            assert!(check_exposure(address, Some(&tls), true).is_ok());
            assert!(check_exposure(address, Some(&mutual), false).is_ok());
            assert!(check_exposure(address, Some(&mutual), true).is_ok());
        }
    }
}
