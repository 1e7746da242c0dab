//! The one access decision: credentials of a request → token → account → rules → the account
//! or a [`Denied`]. The server's [`AuthLayer`](crate::wrapper::auth::AuthLayer) maps the refusal
//! to a gRPC status, the gateway to HTTP 401/403; neither decides on its own.

use http::{HeaderMap, header};

use super::{Account, Auth, Denied, NO_TOKEN, Resource, Rules};

/// Where a request's access token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `authorization: Bearer <token>` (an HTTP header or gRPC metadata).
    Authorization,
    /// A cookie, named by the checkpoint (the gateway's `--auth-cookie`).
    Cookie,
}

/// The access token a request carries, if any, and where it came from; or why the
/// `authorization` header could not be read.
///
/// Its `Debug` never shows the token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    token: Option<(String, TokenSource)>,
    problem: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source())
            .field("problem", &self.problem)
            .finish()
    }
}

impl Credentials {
    /// No token.
    pub fn none() -> Self {
        Self::default()
    }

    /// A token from `source`.
    pub fn token(token: impl Into<String>, source: TokenSource) -> Self {
        Credentials {
            token: Some((token.into(), source)),
            problem: None,
        }
    }

    /// The token of `authorization: Bearer <token>` (scheme case-insensitive), else, when
    /// `cookie` names one, the value of that cookie. An `authorization` header that is not a
    /// bearer token is no token, and its problem is the reason given if the call is refused as
    /// unauthenticated.
    pub fn from_headers(headers: &HeaderMap, cookie: Option<&str>) -> Self {
        let problem = match bearer(headers) {
            Ok(Some(token)) => return Self::token(token, TokenSource::Authorization),
            Ok(None) => None,
            Err(problem) => Some(problem.to_string()),
        };
        if let Some(token) = cookie.and_then(|name| cookie_value(headers, name)) {
            return Self::token(token, TokenSource::Cookie);
        }
        Credentials {
            token: None,
            problem,
        }
    }

    /// The token, if there is one.
    pub fn access_token(&self) -> Option<&str> {
        self.token.as_ref().map(|(token, _)| token.as_str())
    }

    /// Where the token came from, if there is one.
    pub fn source(&self) -> Option<TokenSource> {
        self.token.as_ref().map(|(_, source)| *source)
    }

    /// Why the `authorization` header gave no token, when it was there but unusable.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

/// Decides a call to `resource`: inspects the token of `credentials` with `auth` (when there is
/// one) and applies `rules`.
///
/// - `Ok(Some(account))`: the rules let the verified account through;
/// - `Ok(None)`: the resource is public and there is no valid token (an invalid token on a
///   public resource goes through as no account);
/// - `Err(Denied::Unauthenticated)`: no valid token where the rules need an account; the
///   reason says which: no token, an unreadable `authorization` header, or why `auth`
///   refused the token;
/// - `Err(Denied::Forbidden)`: an account the rules refuse.
pub async fn authorize(
    auth: &dyn Auth,
    rules: &Rules,
    credentials: &Credentials,
    resource: &Resource,
) -> Result<Option<Account>, Denied> {
    let (account, refused) = match credentials.access_token() {
        Some(token) => match auth.inspect(token).await {
            Ok(account) => (Some(account), None),
            Err(e) => (None, Some(format!("the access token was refused: {e}"))),
        },
        None => (None, None),
    };
    match rules.verify(account.as_ref(), resource) {
        Ok(()) => Ok(account),
        Err(Denied::Unauthenticated { resource, .. }) => {
            let reason = refused
                .or_else(|| credentials.problem.clone())
                .unwrap_or_else(|| NO_TOKEN.to_string());
            Err(Denied::Unauthenticated { resource, reason })
        }
        Err(forbidden) => Err(forbidden),
    }
}

/// The token of an `authorization: Bearer <token>` header. `Err` when the header is there but
/// is not a bearer token.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the authorization header is not text")?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or("the authorization header is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the authorization header is not `Bearer <token>`");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("the bearer token is empty");
    }
    Ok(Some(token.to_string()))
}

/// The value of cookie `name`, from every `cookie` header.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        for (value, want) in [
            ("Bearer abc", Ok(Some("abc".to_string()))),
            ("bearer  abc ", Ok(Some("abc".to_string()))),
            ("Basic abc", Err(())),
            ("Bearer", Err(())),
            ("Bearer ", Err(())),
        ] {
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h).map_err(|_| ()), want, "{value}");
        }
    }

    #[test]
    fn credentials_from_header_then_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; token=xyz; b=2".parse().unwrap());
        let c = Credentials::from_headers(&headers, Some("token"));
        assert_eq!(
            (c.access_token(), c.source()),
            (Some("xyz"), Some(TokenSource::Cookie))
        );
        assert_eq!(
            Credentials::from_headers(&headers, None),
            Credentials::none(),
            "no cookie configured"
        );
        assert_eq!(
            Credentials::from_headers(&headers, Some("nope")).access_token(),
            None
        );

        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        let c = Credentials::from_headers(&headers, Some("token"));
        assert_eq!(
            (c.access_token(), c.source()),
            (Some("abc"), Some(TokenSource::Authorization)),
            "the header wins over the cookie"
        );

        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        let c = Credentials::from_headers(&headers, None);
        assert_eq!(c.access_token(), None);
        assert!(c.problem().is_some_and(|p| p.contains("Bearer")), "{c:?}");
        let c = Credentials::from_headers(&headers, Some("token"));
        assert_eq!(
            c.access_token(),
            Some("xyz"),
            "a non-bearer header: the cookie"
        );
        assert!(!format!("{c:?}").contains("xyz"), "Debug hides the token");
    }
}
