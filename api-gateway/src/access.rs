//! Token checks at the gateway: the access token from `Authorization: Bearer` (or a configured
//! cookie) is inspected, the rules decide per {service, endpoint}, and the account goes on to
//! the service in gRPC metadata. Missing or invalid token where one is needed: 401; an account
//! the rules refuse: 403. An invalid token on a public endpoint goes through without an account.

use std::sync::Arc;

use http::{HeaderMap, StatusCode, header};
use micro_core::Auth;
use micro_core::auth::{Denied, Resource};
use micro_jwt::Rules;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::ApiError;

/// Metadata the gateway sets for the service: `x-micro-account-id`, `x-micro-account-scopes`.
/// Headers a client sends with this prefix are never forwarded.
pub(crate) const ACCOUNT_PREFIX: &str = "x-micro-account";

/// Who may call what through the gateway.
#[derive(Clone)]
pub struct Access {
    auth: Arc<dyn Auth>,
    rules: Rules,
    cookie: Option<String>,
}

impl Access {
    /// Checks tokens with `auth` against `rules`; `cookie` names a cookie that may carry the
    /// token when there is no `Authorization` header.
    pub fn new(auth: Arc<dyn Auth>, rules: Rules, cookie: Option<String>) -> Self {
        Access {
            auth,
            rules,
            cookie,
        }
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
        let (token, from_cookie) = match bearer(headers) {
            Some(token) => (Some(token), false),
            None => (
                self.cookie
                    .as_deref()
                    .and_then(|name| cookie(headers, name)),
                true,
            ),
        };
        let (account, invalid) = match &token {
            Some(token) => match self.auth.inspect(token).await {
                Ok(account) => (Some(account), None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        let resource = Resource::new("service", service, endpoint);
        match self.rules.verify(account.as_ref(), &resource) {
            Ok(()) => {}
            Err(Denied::Unauthenticated(what)) => {
                let message = match invalid {
                    Some(reason) => format!("the access token was refused: {reason}"),
                    None => format!("an access token is required for {what}"),
                };
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    tonic::Code::Unauthenticated,
                    message,
                ));
            }
            Err(denied @ Denied::Forbidden { .. }) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    tonic::Code::PermissionDenied,
                    denied.to_string(),
                ));
            }
        }
        if let Some(account) = account {
            if let Ok(id) = MetadataValue::try_from(account.id.as_str()) {
                metadata.insert("x-micro-account-id", id);
            }
            if let Ok(scopes) = MetadataValue::try_from(account.scopes.join(",")) {
                metadata.insert("x-micro-account-scopes", scopes);
            }
            // The service verifies again: hand it the token the cookie carried.
            if let (true, Some(token)) = (from_cookie, token)
                && let Ok(value) = MetadataValue::try_from(format!("Bearer {token}"))
            {
                metadata.insert("authorization", value);
            }
        }
        Ok(())
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        headers.insert(header::COOKIE, "a=1; token=xyz; b=2".parse().unwrap());
        assert_eq!(bearer(&headers).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "token").as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, "nope"), None);
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
