//! [`JwtAuth`]: the core `Auth` trait over JSON Web Tokens.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Header, Validation};
use micro_core::auth::{Account, Auth, Token, TokenOptions};
use micro_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::keys::{Alg, Key, KeySet};

/// Default access token lifetime.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Default refresh token lifetime.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default clock-skew leeway for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(10);
/// Default longest token accepted, in bytes.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// The value of the `typ` claim of an access token.
pub const ACCESS: &str = "access";
/// The value of the `typ` claim of a refresh token.
pub const REFRESH: &str = "refresh";

/// The claims micro's tokens carry. `exp`, `iat`, `iss`, `aud` and `sub` are required and of
/// the right JSON type (an `exp` of `"9999999999"` is refused, not ignored).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: Audience,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// "access" or "refresh".
    typ: String,
    /// The account's kind ("user", "service").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    act: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    md: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// JWT [`Auth`]: issues access and refresh tokens signed with the current key of a
/// [`KeySet`], and inspects them against every key of the set.
///
/// What `inspect` checks, in order: length (at most [`max_token_len`](JwtAuth::max_token_len)),
/// shape (three base64url segments), a header without `jku`, `x5u`, `jwk`, `x5c` or `crit`
/// (never followed, refused), a `kid` naming a key of the set (a token without `kid` is
/// refused), the signature with that key's algorithm (the header's `alg` must equal it), then
/// the claims: `exp`, `iat`, `iss`, `aud`, `sub` present and of the right type, `iss` and `aud`
/// the configured ones, not expired, `nbf` and `iat` not in the future (all with the leeway),
/// and `typ` = `"access"`.
pub struct JwtAuth {
    keys: RwLock<Arc<KeySet>>,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
    leeway: Duration,
    max_token_len: usize,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("keys", &self.keys())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl JwtAuth {
    /// Tokens issued by `issuer` for `audience` (both required, both checked), signed with the
    /// current key of `keys`.
    pub fn new(
        keys: KeySet,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self> {
        crate::ensure_crypto_provider();
        let (issuer, audience) = (issuer.into(), audience.into());
        if issuer.is_empty() || audience.is_empty() {
            return Err(Error::invalid(
                "jwt auth",
                "issuer and audience must not be empty",
            ));
        }
        if keys.is_empty() {
            return Err(Error::invalid("jwt auth", "the key set has no key"));
        }
        Ok(JwtAuth {
            keys: RwLock::new(Arc::new(keys)),
            issuer,
            audience,
            access_ttl: DEFAULT_ACCESS_TTL,
            refresh_ttl: DEFAULT_REFRESH_TTL,
            leeway: DEFAULT_LEEWAY,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
        })
    }

    /// Configured from the environment (see the crate README):
    ///
    /// - `MICRO_AUTH_JWT_ISSUER`, `MICRO_AUTH_JWT_AUDIENCE` (required);
    /// - `MICRO_AUTH_JWT_ALG` (HS256, RS256, ES256, EdDSA; default HS256), `MICRO_AUTH_JWT_KID`
    ///   (default `"default"`);
    /// - the current key: `MICRO_AUTH_JWT_SECRET` (HS256, at least 32 bytes), or
    ///   `MICRO_AUTH_JWT_PRIVATE_KEY` (PEM text) / `MICRO_AUTH_JWT_PRIVATE_KEY_FILE`, or, to only
    ///   verify, `MICRO_AUTH_JWT_PUBLIC_KEY` / `MICRO_AUTH_JWT_PUBLIC_KEY_FILE`;
    /// - `MICRO_AUTH_JWT_VERIFY_KEYS`: more keys that only verify (rotation),
    ///   `kid:ALG:/path/to/public.pem` separated by commas;
    /// - `MICRO_AUTH_JWT_ACCESS_TTL`, `MICRO_AUTH_JWT_REFRESH_TTL`, `MICRO_AUTH_JWT_LEEWAY`
    ///   (humantime: `15m`, `7d`, `10s`).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](JwtAuth::from_env) reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        crate::ensure_crypto_provider();
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let required = |name: &str| {
            get(name).ok_or_else(|| Error::Option(format!("{name} is required by the jwt auth")))
        };
        let alg: Alg = get("MICRO_AUTH_JWT_ALG")
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(Alg::HS256);
        let kid = get("MICRO_AUTH_JWT_KID").unwrap_or_else(|| "default".into());
        let key = if let Some(secret) = get("MICRO_AUTH_JWT_SECRET") {
            if alg != Alg::HS256 {
                return Err(Error::Option(format!(
                    "MICRO_AUTH_JWT_SECRET is an HS256 secret but MICRO_AUTH_JWT_ALG is {alg}"
                )));
            }
            Some(Key::hmac(kid, secret)?)
        } else if let Some(pem) = get("MICRO_AUTH_JWT_PRIVATE_KEY") {
            Some(Key::from_pem(kid, alg, pem)?)
        } else if let Some(path) = get("MICRO_AUTH_JWT_PRIVATE_KEY_FILE") {
            Some(Key::from_pem_file(kid, alg, path)?)
        } else if let Some(pem) = get("MICRO_AUTH_JWT_PUBLIC_KEY") {
            Some(Key::from_pem(kid, alg, pem)?.verify_only())
        } else if let Some(path) = get("MICRO_AUTH_JWT_PUBLIC_KEY_FILE") {
            Some(Key::from_pem_file(kid, alg, path)?.verify_only())
        } else {
            None
        };
        let mut keys = match key {
            Some(key) if key.can_sign() => KeySet::new(key)?,
            Some(key) => KeySet::verify_only([key])?,
            None => KeySet::default(),
        };
        if let Some(list) = get("MICRO_AUTH_JWT_VERIFY_KEYS") {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let mut parts = entry.splitn(3, ':');
                let (Some(kid), Some(alg), Some(path)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(Error::Option(format!(
                        "MICRO_AUTH_JWT_VERIFY_KEYS: `{entry}` is not kid:ALG:path"
                    )));
                };
                keys.add(Key::from_pem_file(kid, alg.parse()?, path)?.verify_only())?;
            }
        }
        if keys.is_empty() {
            return Err(Error::Option(
                "the jwt auth needs a key: set MICRO_AUTH_JWT_SECRET, MICRO_AUTH_JWT_PRIVATE_KEY(_FILE) or MICRO_AUTH_JWT_PUBLIC_KEY(_FILE)".into(),
            ));
        }
        let duration = |name: &str| -> Result<Option<Duration>> {
            get(name)
                .map(|v| {
                    humantime::parse_duration(v.trim())
                        .map_err(|e| Error::Option(format!("{name}=`{v}`: {e}")))
                })
                .transpose()
        };
        let mut auth = JwtAuth::new(
            keys,
            required("MICRO_AUTH_JWT_ISSUER")?,
            required("MICRO_AUTH_JWT_AUDIENCE")?,
        )?;
        if let Some(d) = duration("MICRO_AUTH_JWT_ACCESS_TTL")? {
            auth = auth.access_ttl(d);
        }
        if let Some(d) = duration("MICRO_AUTH_JWT_REFRESH_TTL")? {
            auth = auth.refresh_ttl(d);
        }
        if let Some(d) = duration("MICRO_AUTH_JWT_LEEWAY")? {
            auth = auth.leeway(d);
        }
        Ok(auth)
    }

    /// Access token lifetime (default 15 minutes; at least one second).
    pub fn access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Refresh token lifetime (default 7 days; at least one second).
    pub fn refresh_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Clock-skew leeway for `exp`, `nbf` and `iat` (default 10 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Longest token accepted, in bytes (default 8 KiB); longer ones are refused unread.
    pub fn max_token_len(mut self, bytes: usize) -> Self {
        self.max_token_len = bytes;
        self
    }

    /// The issuer (`iss`) it issues and accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience (`aud`) it issues and accepts.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// A snapshot of the key set.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the whole key set at run time.
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Makes `key` the signing key; the previous one keeps verifying until
    /// [`retire`](JwtAuth::retire)d.
    pub fn rotate(&self, key: Key) -> Result<()> {
        self.update_keys(|keys| keys.rotate(key))
    }

    /// Adds a key that only verifies.
    pub fn add_key(&self, key: Key) -> Result<()> {
        self.update_keys(|keys| keys.add(key))
    }

    /// Removes the key `kid`: tokens it signed are refused from now on. Returns whether it was
    /// in the set.
    pub fn retire(&self, kid: &str) -> bool {
        let mut removed = false;
        let _ = self.update_keys(|keys| {
            removed = keys.remove(kid);
            Ok(())
        });
        removed
    }

    fn update_keys(&self, change: impl FnOnce(&mut KeySet) -> Result<()>) -> Result<()> {
        let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut keys = KeySet::clone(&guard);
        change(&mut keys)?;
        *guard = Arc::new(keys);
        Ok(())
    }

    fn issue(&self, account: &Account, typ: &str, ttl: Duration, now: u64) -> Result<String> {
        let keys = self.keys();
        let key = keys
            .current()
            .ok_or_else(|| Error::invalid("jwt auth", "the key set has no signing key"))?;
        let signing = key
            .signing()
            .ok_or_else(|| Error::invalid("jwt auth", "the current key cannot sign"))?;
        let claims = Claims {
            sub: account.id.clone(),
            iss: self.issuer.clone(),
            aud: Audience::One(self.audience.clone()),
            exp: now.saturating_add(ttl.as_secs().max(1)),
            iat: now,
            nbf: None,
            jti: Some(format!("{:032x}", fastrand::u128(..))),
            typ: typ.to_string(),
            act: account.kind.clone(),
            scopes: account.scopes.clone(),
            md: account.metadata.clone(),
        };
        let mut header = Header::new(key.alg().jwt());
        header.kid = Some(key.kid().to_string());
        jsonwebtoken::encode(&header, &claims, signing).map_err(|e| {
            Error::backend(
                "auth",
                "jwt",
                format!("cannot sign with key `{}`", key.kid()),
                e,
            )
        })
    }

    fn pair(&self, account: &Account, options: &TokenOptions) -> Result<Token> {
        if account.id.is_empty() {
            return Err(Error::invalid("account", "an account needs an id"));
        }
        let now = unix_now();
        let access_ttl = options.access_ttl.unwrap_or(self.access_ttl);
        let refresh_ttl = options.refresh_ttl.unwrap_or(self.refresh_ttl);
        Ok(Token {
            access_token: self.issue(account, ACCESS, access_ttl, now)?,
            refresh_token: self.issue(account, REFRESH, refresh_ttl, now)?,
            expiry: now.saturating_add(access_ttl.as_secs().max(1)),
        })
    }

    /// Verifies `token` and checks that its `typ` is `want`.
    fn check(&self, token: &str, want: &str) -> Result<Account> {
        let refuse = |why: String| Error::invalid("token", why);
        if token.is_empty() {
            return Err(refuse("empty".into()));
        }
        if token.len() > self.max_token_len {
            return Err(refuse(format!(
                "{} bytes, longer than the {} accepted",
                token.len(),
                self.max_token_len
            )));
        }
        let segments = token.split('.').count();
        if segments != 3 {
            return Err(refuse(format!("{segments} segment(s); a JWT has 3")));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(refuse("not base64url".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| refuse(format!("bad header: {e}")))?;
        let refused_parameter = [
            ("jku", header.jku.is_some()),
            ("x5u", header.x5u.is_some()),
            ("jwk", header.jwk.is_some()),
            ("x5c", header.x5c.is_some()),
            ("crit", header.crit.is_some()),
        ]
        .into_iter()
        .find_map(|(name, present)| present.then_some(name));
        if let Some(name) = refused_parameter {
            return Err(refuse(format!(
                "header parameter `{name}` is refused (keys come from the key set only, and no extension is understood)"
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| refuse("no kid in the header".into()))?;
        let keys = self.keys();
        let key = keys
            .get(kid)
            .ok_or_else(|| refuse(format!("unknown kid `{}`", kid.escape_debug())))?;
        // The algorithm is the key's; the header's must merely agree.
        let alg = key.alg().jwt();
        if header.alg != alg {
            return Err(refuse(format!(
                "alg {:?} does not match key `{kid}` ({})",
                header.alg,
                key.alg()
            )));
        }
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = self.leeway.as_secs();
        let data = jsonwebtoken::decode::<Claims>(token, key.verifying(), &validation)
            .map_err(|e| refuse(describe(&e)))?;
        let claims = data.claims;
        let now = unix_now();
        if claims.iat > now.saturating_add(self.leeway.as_secs()) {
            return Err(refuse("issued in the future (iat)".into()));
        }
        if claims.sub.is_empty() {
            return Err(refuse("empty sub".into()));
        }
        if claims.typ != want {
            return Err(refuse(format!(
                "typ `{}` where `{want}` is needed",
                claims.typ.escape_debug()
            )));
        }
        Ok(Account {
            id: claims.sub,
            kind: claims.act,
            issuer: claims.iss,
            scopes: claims.scopes,
            metadata: claims.md,
        })
    }
}

#[async_trait]
impl Auth for JwtAuth {
    fn name(&self) -> &str {
        "jwt"
    }

    async fn token(&self, account: &Account, options: &TokenOptions) -> Result<Token> {
        self.pair(account, options)
    }

    async fn refresh(&self, refresh_token: &str) -> Result<Token> {
        let account = self.check(refresh_token, REFRESH)?;
        self.pair(&account, &TokenOptions::default())
    }

    async fn inspect(&self, access_token: &str) -> Result<Account> {
        self.check(access_token, ACCESS)
    }

    fn default_refresh_ttl(&self) -> Option<Duration> {
        Some(self.refresh_ttl)
    }
}

/// A short reason for a jsonwebtoken error.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match error.kind() {
        K::InvalidSignature => "bad signature".into(),
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidAlgorithm => "algorithm does not match the key".into(),
        K::MissingRequiredClaim(claim) => format!("missing claim `{claim}`"),
        K::InvalidClaimFormat(claim) => format!("claim `{claim}` of the wrong type"),
        K::Json(e) => format!("bad claims: {e}"),
        _ => error.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
