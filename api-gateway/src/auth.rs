//! Token checks at the gateway: the access token from `Authorization: Bearer` (or a configured
//! cookie) goes through core's one decision ([`micro_core::auth::authorize`]) per
//! {service, endpoint}, the same the services' `AuthLayer` makes, and the account goes on to the
//! service in gRPC metadata. No valid token where one is needed: 401; an account the rules
//! refuse: 403. An invalid token on a public endpoint goes through without an account.
//!
//! With `--auth-sessions` the Auth is a [`micro_core::auth::SessionAuth`] over the Store of
//! `--store` (built by the catalog), the one the services keep their sessions in: a token of an
//! ended session (a newer login or refresh, a logout) is refused here too, within the session
//! check's cache time.

use std::sync::Arc;

use http::HeaderMap;
use micro_core::Auth;
use micro_core::auth::{Credentials, Resource, Rule, Rules, TokenSource, authorize};
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::ApiError;

/// Metadata the gateway sets for the service: `x-micro-account-id`, `x-micro-account-scopes`.
/// Headers a client sends with this prefix are never forwarded.
pub(crate) const ACCOUNT_PREFIX: &str = "x-micro-account";

/// Who may call what through the gateway: an [`Auth`] plugin (any), the [`Rules`], and where
/// the token may come from.
#[derive(Clone)]
pub struct GatewayAuth {
    auth: Arc<dyn Auth>,
    rules: Rules,
    cookie: Option<String>,
}

impl std::fmt::Debug for GatewayAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAuth")
            .field("auth", &self.auth.name())
            .field("rules", &self.rules)
            .field("cookie", &self.cookie)
            .finish()
    }
}

impl GatewayAuth {
    /// Checks tokens with `auth` against `rules`; `cookie` names a cookie that may carry the
    /// token when there is no `Authorization: Bearer` header.
    pub fn new(auth: Arc<dyn Auth>, rules: Rules, cookie: Option<String>) -> Self {
        GatewayAuth {
            auth,
            rules,
            cookie,
        }
    }

    /// The rules in force now (the OpenAPI document marks the endpoints they make public).
    pub(crate) fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules.current()
    }

    /// Decides the call to `endpoint` ("Greeter.SayHello") of `service`, and passes the account
    /// (and a cookie's token) on in `metadata`.
    pub(crate) async fn authorize(
        &self,
        headers: &HeaderMap,
        service: &str,
        endpoint: &str,
        metadata: &mut MetadataMap,
    ) -> Result<(), ApiError> {
        let credentials = Credentials::from_headers(headers, self.cookie.as_deref());
        let resource = Resource::new("service", service, endpoint);
        let account = authorize(&*self.auth, &self.rules, &credentials, &resource)
            .await
            .map_err(|denied| {
                tracing::debug!(%service, %endpoint, %denied, "call refused");
                ApiError::new(denied.http_status(), denied.code(), denied.to_string())
            })?;
        let Some(account) = account else {
            return Ok(());
        };
        if let Ok(id) = MetadataValue::try_from(account.id.as_str()) {
            metadata.insert("x-micro-account-id", id);
        }
        if let Ok(scopes) = MetadataValue::try_from(account.scopes.join(",")) {
            metadata.insert("x-micro-account-scopes", scopes);
        }
        // The service may verify again (its AuthLayer): hand it the token the cookie carried.
        if let (Some(TokenSource::Cookie), Some(token)) =
            (credentials.source(), credentials.access_token())
            && let Ok(value) = MetadataValue::try_from(format!("Bearer {token}"))
        {
            metadata.insert("authorization", value);
        }
        Ok(())
    }
}
