//! # micro-jwt
//!
//! The `jwt` [`Auth`] plugin for micro: [`JwtAuth`] issues access tokens
//! (short-lived) and refresh tokens (long-lived, told apart by the `typ` claim), signed HS256,
//! RS256, ES256 or EdDSA by the current key of a [`KeySet`] and verified by any key still in it
//! (rotation by `kid`). That is all it does: the rules, the 401/403 decision and the server and
//! client wrappers are in `micro-core` (`micro_core::auth`, `micro_core::wrapper::auth`) and work
//! with any Auth plugin.
//!
//! Chosen by name like every plugin: [`install`] adds `jwt` to a catalog, and `--auth jwt`
//! (`MICRO_AUTH=jwt`) builds it from `MICRO_AUTH_JWT_*` ([`JwtAuth::from_env`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use micro_core::auth::{Account, Rules, TokenOptions};
//! use micro_core::wrapper::auth::AuthLayer;
//! use micro_core::{Auth, Catalog, Options};
//! use micro_jwt::{JwtAuth, Key, KeySet};
//!
//! # async fn run() -> micro_core::Result<()> {
//! // In code:
//! let keys = KeySet::new(Key::hmac("2026-01", std::env::var("SECRET").unwrap_or_default())?)?;
//! let auth = Arc::new(JwtAuth::new(keys, "https://auth.example", "micro")?
//!     .access_ttl(Duration::from_secs(600)));
//!
//! let alice = Account { id: "alice".into(), scopes: vec!["greeter".into()], ..Default::default() };
//! let token = auth.token(&alice, &TokenOptions::default()).await?;
//! assert_eq!(auth.inspect(&token.access_token).await?.id, "alice");
//! assert!(auth.inspect(&token.refresh_token).await.is_err()); // not an access token
//!
//! // Or by name, from the options (`--auth jwt`) and the MICRO_AUTH_JWT_* environment:
//! let mut catalog = Catalog::new();
//! micro_jwt::install(&mut catalog);
//! let options = Options::new("greeter").set("auth", "jwt").load()?;
//! let by_name: Option<Arc<dyn Auth>> = catalog.auth(&options).await?;
//!
//! let rules = Rules::watch_file("rules.toml", Duration::from_secs(1))?;
//! let layer = AuthLayer::new(auth, rules, "greeter");
//! // Server::new(options, registry).add_service(...).wrap(layer)
//! # let _ = (layer, by_name); Ok(()) }
//! ```
//!
//! The README has the claims, what `inspect` refuses, the key formats, the environment
//! variables and rotation.

mod auth;
mod keys;

use std::sync::Arc;

use micro_core::{Auth, Catalog};

pub use auth::{
    ACCESS, DEFAULT_ACCESS_TTL, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_LEN, DEFAULT_REFRESH_TTL,
    JwtAuth, REFRESH,
};
pub use keys::{Alg, Key, KeySet, MIN_HMAC_SECRET};

/// Installs the `jwt` Auth plugin: `--auth jwt` (`MICRO_AUTH=jwt`, `auth = "jwt"`) builds a
/// [`JwtAuth`] from the `MICRO_AUTH_JWT_*` environment ([`JwtAuth::from_env`]).
pub fn install(catalog: &mut Catalog) {
    catalog.add_auth("jwt", |_| async {
        Ok(Arc::new(JwtAuth::from_env()?) as Arc<dyn Auth>)
    });
}

/// Installs jsonwebtoken's RustCrypto backend as the process default, unless one is installed
/// already. Without it, a build where another crate also enables jsonwebtoken's `aws_lc_rs`
/// feature would panic at the first signature.
pub(crate) fn ensure_crypto_provider() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
    );
}
