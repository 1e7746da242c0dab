//! Signing and verification keys, and the key set that rotates them.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey};
use micro_core::{Error, Result};

/// The shortest HMAC secret accepted: 32 bytes, the output size of SHA-256.
pub const MIN_HMAC_SECRET: usize = 32;

/// A signature algorithm. The algorithm of a token is always the one of the key named by its
/// `kid`, never the `alg` its header claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC with SHA-256, a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The name used in token headers and configuration ("HS256", "EdDSA", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::HS256 => jsonwebtoken::Algorithm::HS256,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HS256" => Ok(Alg::HS256),
            "RS256" => Ok(Alg::RS256),
            "ES256" => Ok(Alg::ES256),
            "EDDSA" | "ED25519" => Ok(Alg::EdDSA),
            _ => Err(Error::invalid(
                "jwt algorithm",
                format!("`{s}` is not one of HS256, RS256, ES256, EdDSA"),
            )),
        }
    }
}

/// One key: a `kid`, its algorithm, a verification key, and (for keys this process signs
/// with) the signing key.
#[derive(Clone)]
pub struct Key {
    kid: String,
    alg: Alg,
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("signs", &self.signing.is_some())
            .finish()
    }
}

impl Key {
    /// An HS256 key from a shared secret of at least [`MIN_HMAC_SECRET`] bytes. Signs and
    /// verifies.
    pub fn hmac(kid: impl Into<String>, secret: impl AsRef<[u8]>) -> Result<Self> {
        crate::ensure_crypto_provider();
        let kid = checked_kid(kid.into())?;
        let secret = secret.as_ref();
        if secret.len() < MIN_HMAC_SECRET {
            return Err(Error::invalid(
                "jwt key",
                format!(
                    "HS256 secret of key `{kid}` is {} bytes; at least {MIN_HMAC_SECRET} are needed",
                    secret.len()
                ),
            ));
        }
        Ok(Key {
            kid,
            alg: Alg::HS256,
            signing: Some(EncodingKey::from_secret(secret)),
            verifying: DecodingKey::from_secret(secret),
        })
    }

    /// A key from PEM text: a private key (`-----BEGIN PRIVATE KEY-----`, PKCS#8; or
    /// `RSA PRIVATE KEY` / `EC PRIVATE KEY`) signs and verifies (the public half is derived),
    /// a public key (`-----BEGIN PUBLIC KEY-----`) only verifies. `alg` is RS256, ES256 or
    /// EdDSA.
    pub fn from_pem(kid: impl Into<String>, alg: Alg, pem: impl AsRef<[u8]>) -> Result<Self> {
        crate::ensure_crypto_provider();
        let kid = checked_kid(kid.into())?;
        let pem = pem.as_ref();
        let text = String::from_utf8_lossy(pem);
        let bad = |e: jsonwebtoken::errors::Error| {
            Error::invalid("jwt key", format!("{alg} key `{kid}`: {e}"))
        };
        if text.contains("PRIVATE KEY-----") {
            let signing = match alg {
                Alg::HS256 => return Err(hmac_pem(&kid)),
                Alg::RS256 => EncodingKey::from_rsa_pem(pem),
                Alg::ES256 => EncodingKey::from_ec_pem(pem),
                Alg::EdDSA => EncodingKey::from_ed_pem(pem),
            }
            .map_err(bad)?;
            let verifying = derive_public(&signing, alg).map_err(bad)?;
            let key = Key {
                kid,
                alg,
                signing: Some(signing),
                verifying,
            };
            key.self_test()?;
            Ok(key)
        } else if text.contains("PUBLIC KEY-----") {
            let verifying = match alg {
                Alg::HS256 => return Err(hmac_pem(&kid)),
                Alg::RS256 => DecodingKey::from_rsa_pem(pem),
                Alg::ES256 => DecodingKey::from_ec_pem(pem),
                Alg::EdDSA => DecodingKey::from_ed_pem(pem),
            }
            .map_err(bad)?;
            Ok(Key {
                kid,
                alg,
                signing: None,
                verifying,
            })
        } else {
            Err(Error::invalid(
                "jwt key",
                format!("{alg} key `{kid}`: not a PEM private or public key"),
            ))
        }
    }

    /// [`from_pem`](Key::from_pem) reading the file at `path`; errors name the file.
    pub fn from_pem_file(kid: impl Into<String>, alg: Alg, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::invalid("jwt key", format!("cannot read {}: {e}", path.display()))
        })?;
        Key::from_pem(kid, alg, pem)
            .map_err(|e| Error::invalid("jwt key", format!("{}: {e}", path.display())))
    }

    /// The same key without its signing half: it only verifies.
    pub fn verify_only(mut self) -> Self {
        self.signing = None;
        self
    }

    /// Its id, carried in the `kid` header of the tokens it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether it can sign.
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    pub(crate) fn signing(&self) -> Option<&EncodingKey> {
        self.signing.as_ref()
    }

    pub(crate) fn verifying(&self) -> &DecodingKey {
        &self.verifying
    }

    /// Signs and verifies a probe, so a key whose halves do not match, or a build without a
    /// crypto backend, fails at load time and not at the first call.
    fn self_test(&self) -> Result<()> {
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        let probe = b"micro-jwt key self-test";
        let bad = |what: &str| {
            Error::invalid(
                "jwt key",
                format!("{} key `{}`: {what}", self.alg, self.kid),
            )
        };
        let signature = jsonwebtoken::crypto::sign(probe, signing, self.alg.jwt())
            .map_err(|e| bad(&format!("cannot sign: {e}")))?;
        match jsonwebtoken::crypto::verify(&signature, probe, &self.verifying, self.alg.jwt()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(bad("its public half does not verify its signatures")),
            Err(e) => Err(bad(&format!("cannot verify: {e}"))),
        }
    }
}

fn checked_kid(kid: String) -> Result<String> {
    if kid.is_empty() || kid.len() > 128 || kid.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "jwt key",
            format!(
                "kid `{}` must be 1 to 128 printable characters",
                kid.escape_debug()
            ),
        ));
    }
    Ok(kid)
}

fn hmac_pem(kid: &str) -> Error {
    Error::invalid(
        "jwt key",
        format!("key `{kid}`: HS256 takes a secret, not a PEM key (use Key::hmac)"),
    )
}

fn derive_public(
    signing: &EncodingKey,
    alg: Alg,
) -> std::result::Result<DecodingKey, jsonwebtoken::errors::Error> {
    let jwk = Jwk::from_encoding_key(signing, alg.jwt())?;
    DecodingKey::from_jwk(&jwk)
}

/// The keys of an issuer: one current key that signs, and every key that still verifies.
///
/// Rotation: add the new key as current ([`rotate`](KeySet::rotate)); tokens signed by the
/// previous key still pass while it stays in the set; [`remove`](KeySet::remove) it once they
/// have expired (the refresh lifetime after the rotation).
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    current: Option<usize>,
}

impl KeySet {
    /// A set whose current (signing) key is `key`.
    pub fn new(key: Key) -> Result<Self> {
        let mut set = KeySet::default();
        set.rotate(key)?;
        Ok(set)
    }

    /// A set that only verifies (a service checking tokens another process issues).
    pub fn verify_only(keys: impl IntoIterator<Item = Key>) -> Result<Self> {
        let mut set = KeySet::default();
        for key in keys {
            set.add(key.verify_only())?;
        }
        Ok(set)
    }

    /// Adds a key that verifies (and does not sign). A `kid` already in the set is an error.
    pub fn add(&mut self, key: Key) -> Result<()> {
        if self.get(key.kid()).is_some() {
            return Err(Error::invalid(
                "jwt key",
                format!("kid `{}` is already in the key set", key.kid()),
            ));
        }
        self.keys.push(key);
        Ok(())
    }

    /// [`add`](KeySet::add), chained.
    pub fn with(mut self, key: Key) -> Result<Self> {
        self.add(key)?;
        Ok(self)
    }

    /// Adds `key` and makes it the signing key; the previous current key stays and verifies.
    pub fn rotate(&mut self, key: Key) -> Result<()> {
        if !key.can_sign() {
            return Err(Error::invalid(
                "jwt key",
                format!("key `{}` has no private half and cannot sign", key.kid()),
            ));
        }
        self.add(key)?;
        self.current = Some(self.keys.len() - 1);
        Ok(())
    }

    /// Removes the key `kid`; tokens it signed are refused from then on. Removing the current
    /// key leaves the set unable to sign until the next [`rotate`](KeySet::rotate). Returns
    /// whether it was there.
    pub fn remove(&mut self, kid: &str) -> bool {
        let Some(index) = self.keys.iter().position(|k| k.kid() == kid) else {
            return false;
        };
        self.keys.remove(index);
        self.current = match self.current {
            Some(c) if c == index => None,
            Some(c) if c > index => Some(c - 1),
            other => other,
        };
        true
    }

    /// The key `kid`, if in the set.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The signing key, if any.
    pub fn current(&self) -> Option<&Key> {
        self.current.and_then(|c| self.keys.get(c))
    }

    /// The ids of every key, in the order added.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(Key::kid).collect()
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
