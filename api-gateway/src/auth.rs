//! Token checks at the gateway: the access token from `Authorization: Bearer` (or a configured
//! cookie) goes through core's one decision ([`micro_core::auth::authorize`]) per
//! {service, endpoint}, the same the services' `AuthLayer` makes, and the account goes on to the
//! service in gRPC metadata. No valid token where one is needed: 401; an account the rules
//! refuse: 403. An invalid token on a public endpoint goes through without an account.
//!
//! The gateway's own descriptions are resources too, of kind `gateway`, named by what they
//! show, their endpoint the path that shows it (a rule's `"*"` matches every path):
//!
//! | request | resource | without it |
//! |---|---|---|
//! | `GET /` (the service names) | `gateway:describe:/` | 401 / 403 |
//! | `GET /{service}` (versions, endpoints) | `gateway:describe:/{service}` | 401 / 403 |
//! | node addresses in `GET /{service}` | `gateway:nodes:/{service}` | each version without its `nodes` |
//! | `GET /{service}/openapi.json` | `gateway:describe:/{service}` | 401 / 403 |
//! | a service in `/openapi.json` and MCP `tools/list` | `gateway:describe:/{service}` | the service left out |
//!
//! So with rules on, neither the list of services nor a description is public unless a rule
//! says so (`scope = ""`), and the decision comes before the registry is read: a stranger
//! cannot tell a registered service from an unknown one. An account may describe without
//! seeing where the nodes are: only a grant of `gateway:nodes` shows their ids, addresses and
//! metadata. Without rules the gateway checks nothing and shows everything.
//!
//! With `--auth-sessions` the Auth is a [`micro_core::auth::SessionAuth`] over the Store of
//! `--store` (built by the catalog), the one the services keep their sessions in: a token of an
//! ended session (a newer login or refresh, a logout) is refused here too, within the session
//! check's cache time.

use std::sync::Arc;

use http::HeaderMap;
use micro_core::Auth;
use micro_core::auth::{
    Account, Credentials, Resource, Rule, Rules, TokenSource, authorize, verify,
};
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::ApiError;

/// Metadata the gateway sets for the service: `x-micro-account-id`, `x-micro-account-scopes`.
/// Headers a client sends with this prefix are never forwarded.
pub(crate) const ACCOUNT_PREFIX: &str = "x-micro-account";

/// Whether `GET /{service}` may show where the service's nodes are (see [`GatewayAuth::nodes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeAddresses {
    /// Every version with its `nodes` (ids, addresses, metadata).
    Shown,
    /// Every version without its `nodes`.
    Hidden,
}

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

    /// The kind of the gateway's own resources: `"gateway"`.
    pub const KIND: &'static str = "gateway";
    /// The name of the resources `GET /` and `GET /{service}` answer: `"describe"`.
    pub const DESCRIBE: &'static str = "describe";
    /// The name of the resource "node addresses in `GET /{service}`": `"nodes"`.
    pub const NODES: &'static str = "nodes";

    /// The resource `GET /` (`service` `None`: `gateway:describe:/`) or `GET /{service}`
    /// (`gateway:describe:/{service}`) answers; a rule grants it to let the caller read it.
    pub fn describe_resource(service: Option<&str>) -> Resource {
        Resource::new(
            Self::KIND,
            Self::DESCRIBE,
            format!("/{}", service.unwrap_or_default()),
        )
    }

    /// The resource `gateway:nodes:/{service}`: a rule grants it to show the ids, addresses and
    /// metadata of `service`'s nodes in `GET /{service}`.
    pub fn nodes_resource(service: &str) -> Resource {
        Resource::new(Self::KIND, Self::NODES, format!("/{service}"))
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
        let account = self.decide(&credentials, &resource).await?;
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

    /// Decides `GET /` (`service` `None`) or `GET /{service}` for the caller of `headers`: an
    /// error (401/403, as for a call) when the rules do not grant
    /// [`describe_resource`](Self::describe_resource), else whether they also grant
    /// [`nodes_resource`](Self::nodes_resource) to the same account (for `GET /`, which shows
    /// no nodes: [`NodeAddresses::Hidden`]).
    pub(crate) async fn describe(
        &self,
        headers: &HeaderMap,
        service: Option<&str>,
    ) -> Result<NodeAddresses, ApiError> {
        let credentials = Credentials::from_headers(headers, self.cookie.as_deref());
        let account = self
            .decide(&credentials, &Self::describe_resource(service))
            .await?;
        Ok(match service {
            Some(service) => self.nodes(account.as_ref(), service),
            None => NodeAddresses::Hidden,
        })
    }

    /// What the caller of `headers` may describe, for the listings that show many services at
    /// once (`/openapi.json`, MCP `tools/list`): its token is inspected once, and each service
    /// is then decided as `GET /{service}` would be, under the rules in force now. It never
    /// refuses: a token that is missing or refused leaves only what is public.
    pub(crate) async fn describer(&self, headers: &HeaderMap) -> Describer {
        let credentials = Credentials::from_headers(headers, self.cookie.as_deref());
        let account = match credentials.access_token() {
            Some(token) => match self.auth.inspect(token).await {
                Ok(account) => Some(account),
                Err(refused) => {
                    tracing::debug!(%refused, "access token refused; listing only public descriptions");
                    None
                }
            },
            None => None,
        };
        Describer {
            rules: self.rules.current(),
            account,
        }
    }

    /// Whether `account` (or no account) may see where `service`'s nodes are.
    fn nodes(&self, account: Option<&Account>, service: &str) -> NodeAddresses {
        match self.rules.verify(account, &Self::nodes_resource(service)) {
            Ok(()) => NodeAddresses::Shown,
            Err(denied) => {
                tracing::debug!(%service, %denied, "node addresses hidden");
                NodeAddresses::Hidden
            }
        }
    }

    /// Core's decision on `resource`, a refusal as the gateway's 401/403 error.
    async fn decide(
        &self,
        credentials: &Credentials,
        resource: &Resource,
    ) -> Result<Option<Account>, ApiError> {
        authorize(&*self.auth, &self.rules, credentials, resource)
            .await
            .map_err(|denied| {
                tracing::debug!(%resource, %denied, "refused");
                ApiError::new(denied.http_status(), denied.code(), denied.to_string())
            })
    }
}

/// What one caller may describe (see [`GatewayAuth::describer`]): its account, if its token
/// was valid, and the rules in force when its request came.
pub(crate) struct Describer {
    rules: Arc<Vec<Rule>>,
    account: Option<Account>,
}

impl Describer {
    /// Whether the rules grant this caller `gateway:describe:/{service}`, that is whether
    /// `GET /{service}` would answer it.
    pub(crate) fn may_describe(&self, service: &str) -> bool {
        let resource = GatewayAuth::describe_resource(Some(service));
        verify(&self.rules, self.account.as_ref(), &resource).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use micro_core::auth::Access;

    use super::*;

    fn grant(id: &str, name: &str, endpoint: &str) -> Rule {
        let resource = Resource::new("gateway", name, endpoint);
        Rule::new(id, "", resource, Access::Grant, 0)
    }

    #[test]
    fn resource_names() {
        assert_eq!(
            GatewayAuth::describe_resource(None).to_string(),
            "gateway:describe:/"
        );
        assert_eq!(
            GatewayAuth::describe_resource(Some("greeter")).to_string(),
            "gateway:describe:/greeter"
        );
        assert_eq!(
            GatewayAuth::nodes_resource("greeter").to_string(),
            "gateway:nodes:/greeter"
        );
    }

    #[test]
    fn describe_rules_name_paths_and_leave_nodes_apart() {
        let (list, greeter, other) = (
            GatewayAuth::describe_resource(None),
            GatewayAuth::describe_resource(Some("greeter")),
            GatewayAuth::describe_resource(Some("other")),
        );
        let one = [grant("one", "describe", "/greeter")];
        assert!(verify(&one, None, &greeter).is_ok());
        assert!(verify(&one, None, &other).is_err(), "another service");
        assert!(
            verify(&one, None, &list).is_err(),
            "the list is not a service"
        );
        assert!(
            verify(&one, None, &GatewayAuth::nodes_resource("greeter")).is_err(),
            "describing shows no nodes"
        );
        let all = [grant("all", "describe", "*")];
        assert!(
            [&list, &greeter, &other]
                .iter()
                .all(|r| verify(&all, None, r).is_ok())
        );
        let services = [Rule::new(
            "services",
            "",
            Resource::new("service", "*", "*"),
            Access::Grant,
            0,
        )];
        assert!(
            verify(&services, None, &greeter).is_err(),
            "a grant on services is none on the gateway"
        );
    }
}
