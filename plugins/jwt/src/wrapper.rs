//! Wrappers: [`AuthLayer`] checks the caller's token and the rules before a handler runs;
//! [`ForwardTokenLayer`] passes the caller's token on when that handler calls another service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use micro_core::Auth;
use micro_core::auth::{Account, Denied, Resource};
use tower::{Layer, Service};

use crate::rules::Rules;

tokio::task_local! {
    static CALLER_TOKEN: BearerToken;
}

/// The caller's access token, as it arrived (without `Bearer `). [`AuthLayer`] puts it in the
/// request extensions next to the [`Account`], and makes it the task's token for
/// [`ForwardTokenLayer`] while the handler runs.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(pub String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Runs `future` with `token` as the caller's token: every call made through a client wrapped
/// with [`ForwardTokenLayer`] inside it carries `authorization: Bearer <token>`.
///
/// [`AuthLayer`] does this for handlers; call it yourself in a task the handler spawns
/// (task-locals do not cross `tokio::spawn`), or to call as a given account from outside a
/// handler.
pub async fn with_token<F: Future>(token: impl Into<String>, future: F) -> F::Output {
    CALLER_TOKEN.scope(BearerToken(token.into()), future).await
}

/// The caller's token of the current task, if any (see [`with_token`]).
pub fn current_token() -> Option<String> {
    CALLER_TOKEN.try_with(|t| t.0.clone()).ok()
}

/// The `Service.Method` endpoint of a gRPC path: `/greeter.v1.Greeter/SayHello` →
/// `Greeter.SayHello`. `None` for a path of another shape.
pub fn endpoint_of_path(path: &str) -> Option<String> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let service = service.rsplit('.').next()?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(format!("{service}.{method}"))
}

/// The token of an `authorization: Bearer <token>` header. `Err` when the header is there but
/// is not a bearer token.
fn bearer(headers: &http::HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "authorization header is not text")?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or("authorization header is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("authorization header is not `Bearer <token>`");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("empty bearer token");
    }
    Ok(Some(token.to_string()))
}

/// Server wrapper: verifies the caller's `authorization: Bearer <token>` with an [`Auth`],
/// applies the [`Rules`] to the resource `service:<name>:<Service.Method>`, and
///
/// - answers `UNAUTHENTICATED` when the rules need an account and there is no valid token;
/// - answers `PERMISSION_DENIED` when the account may not reach the endpoint;
/// - otherwise calls the handler with the [`Account`] (when there is one) and the
///   [`BearerToken`] in the request extensions, and the token set for [`ForwardTokenLayer`].
///
/// A handler reads the account with `request.extensions().get::<Account>()` (tonic copies the
/// HTTP extensions into `tonic::Request`); it is absent on a public endpoint called without
/// a token.
///
/// ```ignore
/// Server::new(options, registry)
///     .add_service(GreeterServer::new(Greeter::default()))
///     .wrap(AuthLayer::new(auth, rules, "greeter"))
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<dyn Auth>,
    rules: Rules,
    service: Arc<str>,
}

impl AuthLayer {
    /// Checks calls to the service `service` (its registered name, the rules' resource name).
    pub fn new(auth: Arc<dyn Auth>, rules: Rules, service: impl Into<String>) -> Self {
        AuthLayer {
            auth,
            rules,
            service: service.into().into(),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let path = request.uri().path();
            let endpoint = endpoint_of_path(path).unwrap_or_else(|| path.to_string());
            let resource = Resource::new("service", &*layer.service, endpoint);
            let (token, problem) = match bearer(request.headers()) {
                Ok(token) => (token, None),
                Err(problem) => (None, Some(problem.to_string())),
            };
            let (account, problem) = match &token {
                Some(token) => match layer.auth.inspect(token).await {
                    Ok(account) => (Some(account), None),
                    Err(e) => (None, Some(e.to_string())),
                },
                None => (None, problem),
            };
            match layer.rules.verify(account.as_ref(), &resource) {
                Ok(()) => {}
                Err(Denied::Unauthenticated(what)) => {
                    let message = match problem {
                        Some(problem) => format!("{problem}; {what} needs a valid access token"),
                        None => format!("no access token; {what} needs one"),
                    };
                    tracing::debug!(service = %layer.service, endpoint = %resource.endpoint, %message, "call refused: unauthenticated");
                    return Ok(tonic::Status::unauthenticated(message).into_http());
                }
                Err(denied @ Denied::Forbidden { .. }) => {
                    tracing::debug!(service = %layer.service, endpoint = %resource.endpoint, %denied, "call refused: forbidden");
                    return Ok(tonic::Status::permission_denied(denied.to_string()).into_http());
                }
            }
            // Whatever the caller claimed, only a verified account reaches the handler.
            request.extensions_mut().remove::<Account>();
            request.extensions_mut().remove::<BearerToken>();
            if let Some(account) = account {
                request.extensions_mut().insert(account);
            }
            match token {
                Some(token) if request.extensions().get::<Account>().is_some() => {
                    let token = BearerToken(token);
                    request.extensions_mut().insert(token.clone());
                    CALLER_TOKEN
                        .scope(token, async move { inner.call(request).await })
                        .await
                }
                _ => inner.call(request).await,
            }
        })
    }
}

/// Client wrapper: sets `authorization: Bearer <token>` on each call that has none, with
///
/// 1. the caller's token of the current task: inside a handler wrapped by [`AuthLayer`], or
///    inside [`with_token`];
/// 2. else the fallback token given to [`with_fallback`](ForwardTokenLayer::with_fallback)
///    (a service account's own token), if any;
/// 3. else nothing: the call goes without a token.
///
/// ```ignore
/// let client = Client::new(&options, registry).wrap(ForwardTokenLayer::new());
/// ```
#[derive(Clone, Default)]
pub struct ForwardTokenLayer {
    fallback: Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
}

impl std::fmt::Debug for ForwardTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardTokenLayer")
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl ForwardTokenLayer {
    /// Forwards the caller's token of the current task.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `token` when the task has no caller's token.
    pub fn with_fallback(self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.with_fallback_fn(move || Some(token.clone()))
    }

    /// Asks `token` for a token when the task has none (a service account's token that is
    /// refreshed elsewhere).
    pub fn with_fallback_fn(
        mut self,
        token: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.fallback = Some(Arc::new(token));
        self
    }
}

impl<S> Layer<S> for ForwardTokenLayer {
    type Service = ForwardToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ForwardTokenLayer`].
#[derive(Clone)]
pub struct ForwardToken<S> {
    inner: S,
    layer: ForwardTokenLayer,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for ForwardToken<S>
where
    S: Service<http::Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if !request.headers().contains_key(http::header::AUTHORIZATION) {
            let token = current_token().or_else(|| self.layer.fallback.as_ref().and_then(|f| f()));
            if let Some(token) = token {
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        request
                            .headers_mut()
                            .insert(http::header::AUTHORIZATION, value);
                    }
                    Err(_) => tracing::warn!("token is not a valid header value; not forwarded"),
                }
            }
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_of_grpc_paths() {
        assert_eq!(
            endpoint_of_path("/greeter.v1.Greeter/SayHello").as_deref(),
            Some("Greeter.SayHello")
        );
        assert_eq!(
            endpoint_of_path("/Greeter/SayHello").as_deref(),
            Some("Greeter.SayHello")
        );
        for bad in ["", "/", "//", "/a/", "/a/b/c", "a/b", "/a.b./c"] {
            assert_eq!(endpoint_of_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        for (value, want) in [
            ("Bearer abc", Ok(Some("abc".to_string()))),
            ("bearer  abc ", Ok(Some("abc".to_string()))),
            ("Basic abc", Err(())),
            ("Bearer", Err(())),
            ("Bearer ", Err(())),
        ] {
            h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h).map_err(|_| ()), want, "{value}");
        }
    }
}
