use std::sync::Arc;

use tower::Layer;

use super::{Authenticate, ForwardToken};
use crate::Auth;
use crate::auth::Rules;

/// Server wrapper: verifies the caller's `authorization: Bearer <token>` with an [`Auth`],
/// applies the [`Rules`] to the resource `service:<name>:<Service.Method>` (the decision of
/// [`authorize`](crate::auth::authorize)), and
///
/// - answers `UNAUTHENTICATED` when the rules need an account and there is no valid token;
/// - answers `PERMISSION_DENIED` when the account may not reach the endpoint;
/// - otherwise calls the handler with the [`Account`](crate::auth::Account) (when there is one)
///   and the [`BearerToken`](super::BearerToken) in the request extensions, and the token set
///   for [`ForwardTokenLayer`].
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
    pub(super) auth: Arc<dyn Auth>,
    pub(super) rules: Rules,
    pub(super) service: Arc<str>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("auth", &self.auth.name())
            .field("rules", &self.rules)
            .field("service", &self.service)
            .finish()
    }
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
        Authenticate::new(inner, self.clone())
    }
}

/// Client wrapper: sets `authorization: Bearer <token>` on each call that has none, with
///
/// 1. the caller's token of the current task: inside a handler wrapped by [`AuthLayer`], or
///    inside [`with_token`](super::with_token);
/// 2. else the fallback token given to [`with_fallback`](ForwardTokenLayer::with_fallback)
///    (a service account's own token), if any;
/// 3. else nothing: the call goes without a token.
///
/// ```ignore
/// let client = Client::new(&options, registry).wrap(ForwardTokenLayer::new());
/// ```
#[derive(Clone, Default)]
pub struct ForwardTokenLayer {
    pub(super) fallback: Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
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
        ForwardToken::new(inner, self.clone())
    }
}
