//! Auth wrappers: [`AuthLayer`] checks the caller's token and the rules before a handler runs
//! (the decision of [`authorize`]); [`ForwardTokenLayer`] passes the caller's token on when
//! that handler calls another service. Both work with any `Arc<dyn Auth>`.

mod layer;

pub use layer::{AuthLayer, ForwardTokenLayer};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::Service;

use crate::auth::{Account, Credentials, Resource, authorize};
use crate::grpc::endpoint_of_path;

tokio::task_local! {
    static CALLER_TOKEN: BearerToken;
}

/// The caller's access token, as it arrived (without `Bearer `). [`AuthLayer`] puts it in the
/// request extensions next to the [`Account`], and makes it the task's token for
/// [`ForwardTokenLayer`] while the handler runs. Its `Debug` never shows the token.
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

/// The service made by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> Authenticate<S> {
    fn new(inner: S, layer: AuthLayer) -> Self {
        Authenticate { inner, layer }
    }
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
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let path = request.uri().path();
            let endpoint = endpoint_of_path(path).unwrap_or_else(|| path.to_string());
            let resource = Resource::new("service", &*layer.service, endpoint);
            let credentials = Credentials::from_headers(request.headers(), None);
            let account = match authorize(&*layer.auth, &layer.rules, &credentials, &resource).await
            {
                Ok(account) => account,
                Err(denied) => {
                    tracing::debug!(service = %layer.service, endpoint = %resource.endpoint, %denied, "call refused");
                    return Ok(denied.to_status().into_http());
                }
            };
            // Whatever the caller claimed, only a verified account reaches the handler.
            request.extensions_mut().remove::<Account>();
            request.extensions_mut().remove::<BearerToken>();
            match (account, credentials.access_token()) {
                (Some(account), Some(token)) => {
                    let token = BearerToken(token.to_string());
                    request.extensions_mut().insert(account);
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

/// The service made by [`ForwardTokenLayer`].
#[derive(Clone, Debug)]
pub struct ForwardToken<S> {
    inner: S,
    layer: ForwardTokenLayer,
}

impl<S> ForwardToken<S> {
    fn new(inner: S, layer: ForwardTokenLayer) -> Self {
        ForwardToken { inner, layer }
    }
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
