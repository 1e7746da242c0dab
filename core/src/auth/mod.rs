//! Accounts, tokens and access rules: the Auth component.
//!
//! A plugin (`micro-jwt`) only issues and inspects tokens, behind the [`Auth`] trait; everything
//! around it is here and works with any `Arc<dyn Auth>`:
//!
//! - [`verify`] decides whether an account may reach a resource: rules are tried highest
//!   priority first, and at equal priority a deny wins. Scope `""` makes a rule public, `"*"`
//!   matches any account, any other scope needs an account holding it. When no rule grants
//!   access, the answer is [`Denied::Unauthenticated`] without an account and
//!   [`Denied::Forbidden`] with one.
//! - [`Rules`]: the rules in force, from code, a JSON or TOML file or the Config component,
//!   reloaded without a restart.
//! - [`authorize`]: the one decision every checkpoint makes (the server's
//!   [`AuthLayer`](crate::wrapper::auth::AuthLayer) and the gateway): the token from the
//!   [`Credentials`] of a request is inspected, the rules applied, and the answer is the account
//!   or a [`Denied`] that the caller maps to `UNAUTHENTICATED`/`PERMISSION_DENIED` (gRPC) or
//!   401/403 (HTTP).
//! - The plugin is chosen by name like the others: `--auth jwt`, `MICRO_AUTH`, key `auth` in
//!   `micro.toml` (default `none`), built by [`Catalog::auth`](crate::Catalog::auth).
//! - [`SessionAuth`]: one live token pair per account, kept in a Store, over any plugin: a new
//!   login or a refresh ends the older tokens, [`Auth::revoke`] (a logout) all of them
//!   (`--auth-sessions`).

#[cfg(feature = "conformance")]
pub mod conformance;
mod decision;
mod rules;
mod sessions;

pub use decision::{Credentials, TokenSource, authorize};
pub use rules::{DEFAULT_POLL, Rules};
pub use sessions::{
    DEFAULT_CHECK_CACHE, DEFAULT_SESSION_TTL, DEFAULT_SESSIONS_TABLE, SESSION_METADATA, SessionAuth,
};

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Who is calling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Unique id (the token's `sub`).
    pub id: String,
    /// "user" or "service".
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Who issued the account (the token's `iss`).
    #[serde(default)]
    pub issuer: String,
    /// What it may do.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// An access token and the refresh token that renews it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Short-lived; sent with every call.
    pub access_token: String,
    /// Long-lived; only exchanged for a new pair.
    pub refresh_token: String,
    /// When the access token expires, in seconds since the Unix epoch.
    pub expiry: u64,
}

/// What is being reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Kind of resource ("service"); `"*"` in a rule matches any.
    pub kind: String,
    /// Name ("greeter"); `"*"` in a rule matches any.
    pub name: String,
    /// Endpoint ("Greeter.SayHello"); `"*"` in a rule matches any, `"Greeter.*"` any of Greeter.
    pub endpoint: String,
}

/// Grant or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Let the call through.
    Grant,
    /// Refuse it.
    Deny,
}

/// One access rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique id.
    pub id: String,
    /// `""` public, `"*"` any account, else an account scope.
    #[serde(default)]
    pub scope: String,
    /// What it applies to.
    pub resource: Resource,
    /// Grant or deny.
    pub access: Access,
    /// Higher is tried first.
    #[serde(default)]
    pub priority: i32,
}

impl Rule {
    /// Rule `id`: `access` to `resource` for accounts with `scope` (`""` public, `"*"` any
    /// account); rules with a higher `priority` are tried first.
    pub fn new(
        id: impl Into<String>,
        scope: impl Into<String>,
        resource: Resource,
        access: Access,
        priority: i32,
    ) -> Self {
        Rule {
            id: id.into(),
            scope: scope.into(),
            resource,
            access,
            priority,
        }
    }
}

/// Why [`verify`] or [`authorize`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No valid account, and the resource is not public: `UNAUTHENTICATED`, HTTP 401.
    #[error("{reason}; {resource} needs a valid access token")]
    Unauthenticated {
        /// The resource, as `kind:name:endpoint`.
        resource: String,
        /// Why there is no account: no token, or why the token was refused.
        reason: String,
    },
    /// An account that may not reach the resource: `PERMISSION_DENIED`, HTTP 403.
    #[error("account `{account}` may not access {resource}")]
    Forbidden {
        /// The account's id.
        account: String,
        /// The resource, as `kind:name:endpoint`.
        resource: String,
    },
}

impl Denied {
    /// The gRPC code: `UNAUTHENTICATED` or `PERMISSION_DENIED`.
    pub fn code(&self) -> tonic::Code {
        match self {
            Denied::Unauthenticated { .. } => tonic::Code::Unauthenticated,
            Denied::Forbidden { .. } => tonic::Code::PermissionDenied,
        }
    }

    /// The HTTP status: 401 or 403.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Denied::Unauthenticated { .. } => http::StatusCode::UNAUTHORIZED,
            Denied::Forbidden { .. } => http::StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status a server answers with: [`code`](Denied::code) and this message.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), self.to_string())
    }
}

/// Decides whether `account` (if any) may reach `resource` under `rules`.
pub fn verify(
    rules: &[Rule],
    account: Option<&Account>,
    resource: &Resource,
) -> Result<(), Denied> {
    let mut ordered: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.resource.covers(resource))
        .collect();
    // Highest priority first; at equal priority a deny comes first and so wins.
    ordered.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.access == Access::Grant));
    for rule in ordered {
        let applies = match rule.scope.as_str() {
            "" => true,
            "*" => account.is_some(),
            scope => account.is_some_and(|a| a.scopes.iter().any(|s| s == scope)),
        };
        if !applies {
            continue;
        }
        return match rule.access {
            Access::Grant => Ok(()),
            Access::Deny => Err(refusal(account, resource)),
        };
    }
    Err(refusal(account, resource))
}

/// The reason of [`Denied::Unauthenticated`] when no token came at all.
pub(crate) const NO_TOKEN: &str = "no access token";

fn refusal(account: Option<&Account>, resource: &Resource) -> Denied {
    match account {
        None => Denied::Unauthenticated {
            resource: resource.to_string(),
            reason: NO_TOKEN.into(),
        },
        Some(account) => Denied::Forbidden {
            account: account.id.clone(),
            resource: resource.to_string(),
        },
    }
}

impl std::fmt::Display for Resource {
    /// `kind:name:endpoint`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.endpoint)
    }
}

impl Resource {
    /// The resource `kind:name:endpoint`.
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> Self {
        Resource {
            kind: kind.into(),
            name: name.into(),
            endpoint: endpoint.into(),
        }
    }

    /// Whether this (a rule's resource, with wildcards) covers `other`.
    pub fn covers(&self, other: &Resource) -> bool {
        let matches = |pattern: &str, value: &str| {
            pattern == "*"
                || pattern == value
                || pattern.strip_suffix(".*").is_some_and(|head| {
                    value
                        .strip_prefix(head)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
        };
        matches(&self.kind, &other.kind)
            && matches(&self.name, &other.name)
            && matches(&self.endpoint, &other.endpoint)
    }
}

/// Options for a new token.
#[derive(Clone, Debug, Default)]
pub struct TokenOptions {
    /// Access token lifetime; the plugin's default when `None`.
    pub access_ttl: Option<Duration>,
    /// Refresh token lifetime; the plugin's default when `None`.
    pub refresh_ttl: Option<Duration>,
}

/// Issues and inspects tokens.
#[async_trait]
pub trait Auth: Send + Sync + 'static {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// Issues an access + refresh token pair for `account`.
    async fn token(&self, account: &Account, options: &TokenOptions) -> Result<Token>;
    /// Exchanges a refresh token for a new pair.
    async fn refresh(&self, refresh_token: &str) -> Result<Token>;
    /// The account of a valid access token; an error for anything else (expired, forged, a
    /// refresh token).
    async fn inspect(&self, access_token: &str) -> Result<Account>;
    /// How long refresh tokens live when the [`TokenOptions`] do not say, if the plugin has
    /// such a default: [`SessionAuth`] keeps its session records that long. `None` by default.
    fn default_refresh_ttl(&self) -> Option<Duration> {
        None
    }
    /// Ends every session of `account_id` (a logout): its tokens issued so far are refused
    /// from then on. Only an Auth that keeps sessions can ([`SessionAuth`], `--auth-sessions`);
    /// the default answers an error saying so.
    async fn revoke(&self, account_id: &str) -> Result<()> {
        Err(Error::invalid(
            "revoke",
            format!(
                "the `{}` auth keeps no sessions, so account `{account_id}`'s tokens cannot be revoked: turn sessions on (--auth-sessions, with a shared --store)",
                self.name()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, scope: &str, endpoint: &str, access: Access, priority: i32) -> Rule {
        let resource = Resource::new("service", "greeter", endpoint);
        Rule::new(id, scope, resource, access, priority)
    }

    fn account(scopes: &[&str]) -> Account {
        Account {
            id: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn public_rule_needs_no_account() {
        let rules = [rule("pub", "", "Greeter.SayHello", Access::Grant, 0)];
        assert_eq!(
            verify(
                &rules,
                None,
                &Resource::new("service", "greeter", "Greeter.SayHello")
            ),
            Ok(())
        );
    }

    #[test]
    fn no_match_is_401_without_account_and_403_with_one() {
        let rules = [rule("admins", "admin", "*", Access::Grant, 0)];
        let res = Resource::new("service", "greeter", "Greeter.SayHello");
        assert!(matches!(
            verify(&rules, None, &res),
            Err(Denied::Unauthenticated { .. })
        ));
        assert!(matches!(
            verify(&rules, Some(&account(&["user"])), &res),
            Err(Denied::Forbidden { .. })
        ));
        assert_eq!(verify(&rules, Some(&account(&["admin"])), &res), Ok(()));
        assert!(matches!(
            verify(&[], Some(&account(&["admin"])), &res),
            Err(Denied::Forbidden { .. })
        ));
    }

    #[test]
    fn priority_then_deny_wins_ties() {
        let res = Resource::new("service", "greeter", "Greeter.SayHello");
        let alice = account(&["user"]);
        let tie = [
            rule("g", "*", "*", Access::Grant, 5),
            rule("d", "*", "Greeter.*", Access::Deny, 5),
        ];
        assert!(verify(&tie, Some(&alice), &res).is_err(), "deny wins a tie");
        let higher_grant = [
            rule("g", "*", "*", Access::Grant, 6),
            rule("d", "*", "Greeter.*", Access::Deny, 5),
        ];
        assert_eq!(verify(&higher_grant, Some(&alice), &res), Ok(()));
        let any_account = [rule("any", "*", "*", Access::Grant, 0)];
        assert!(matches!(
            verify(&any_account, None, &res),
            Err(Denied::Unauthenticated { .. })
        ));
    }

    #[test]
    fn endpoint_wildcards() {
        let pattern = Resource::new("service", "*", "Greeter.*");
        assert!(pattern.covers(&Resource::new("service", "x", "Greeter.SayHello")));
        assert!(!pattern.covers(&Resource::new("service", "x", "GreeterAdmin.Drop")));
        assert!(!pattern.covers(&Resource::new("topic", "x", "Greeter.SayHello")));
    }
}
