//! # micro-jwt
//!
//! JWT [`Auth`](micro_core::Auth) for micro, with what goes around it:
//!
//! - [`JwtAuth`]: access tokens (short-lived) and refresh tokens (long-lived, told apart by the
//!   `typ` claim), signed HS256, RS256, ES256 or EdDSA by the current key of a [`KeySet`] and
//!   verified by any key still in it (rotation by `kid`);
//! - [`Rules`]: access rules from a JSON or TOML file or from the Config component, reloaded
//!   without a restart, the last good rules kept when an update is malformed;
//! - [`AuthLayer`] (server wrapper): verifies `authorization: Bearer <token>`, applies the rules
//!   per endpoint, hands the [`Account`](micro_core::auth::Account) to the handler;
//! - [`ForwardTokenLayer`] (client wrapper): forwards the caller's token on service-to-service
//!   calls.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use micro_core::Auth;
//! use micro_core::auth::{Account, TokenOptions};
//! use micro_jwt::{AuthLayer, JwtAuth, Key, KeySet, Rules};
//!
//! # async fn run() -> micro_core::Result<()> {
//! let keys = KeySet::new(Key::hmac("2026-01", std::env::var("SECRET").unwrap_or_default())?)?;
//! let auth = Arc::new(JwtAuth::new(keys, "https://auth.example", "micro")?
//!     .access_ttl(Duration::from_secs(600)));
//!
//! let alice = Account { id: "alice".into(), scopes: vec!["greeter".into()], ..Default::default() };
//! let token = auth.token(&alice, &TokenOptions::default()).await?;
//! assert_eq!(auth.inspect(&token.access_token).await?.id, "alice");
//! assert!(auth.inspect(&token.refresh_token).await.is_err()); // not an access token
//!
//! let rules = Rules::watch_file("rules.toml", Duration::from_secs(1))?;
//! let layer = AuthLayer::new(auth, rules, "greeter");
//! // Server::new(options, registry).add_service(...).wrap(layer)
//! # let _ = layer; Ok(()) }
//! ```
//!
//! In a handler, the account is in the request extensions:
//!
//! ```ignore
//! async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
//!     let account = request.extensions().get::<micro_core::auth::Account>();
//!     // ...
//! }
//! ```
//!
//! The README has the key formats, environment variables, rotation, and the rules file format.

mod auth;
mod keys;
mod rules;
mod wrapper;

pub use auth::{
    ACCESS, DEFAULT_ACCESS_TTL, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_LEN, DEFAULT_REFRESH_TTL,
    JwtAuth, REFRESH,
};
pub use keys::{Alg, Key, KeySet, MIN_HMAC_SECRET};
pub use rules::{DEFAULT_POLL, Rules};
pub use wrapper::{
    AuthLayer, Authenticate, BearerToken, ForwardToken, ForwardTokenLayer, current_token,
    endpoint_of_path, with_token,
};

/// Installs jsonwebtoken's RustCrypto backend as the process default, unless one is installed
/// already. Without it, a build where another crate also enables jsonwebtoken's `aws_lc_rs`
/// feature would panic at the first signature.
pub(crate) fn ensure_crypto_provider() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
    );
}
