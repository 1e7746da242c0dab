//! Accounts, tokens and access rules.
//!
//! [`verify`] decides whether an account may reach a resource: rules are tried highest priority
//! first, and at equal priority a deny wins. Scope `""` makes a rule public, `"*"` matches any
//! account, any other scope needs an account holding it. When no rule grants access, the answer
//! is [`Denied::Unauthenticated`] without an account and [`Denied::Forbidden`] with one.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

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

/// Why [`verify`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No account, and the resource is not public: 401.
    #[error("no valid credentials for {0}")]
    Unauthenticated(String),
    /// An account that may not reach the resource: 403.
    #[error("account `{account}` may not access {resource}")]
    Forbidden {
        /// The account's id.
        account: String,
        /// The resource, as `kind:name:endpoint`.
        resource: String,
    },
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

fn refusal(account: Option<&Account>, resource: &Resource) -> Denied {
    let described = format!("{}:{}:{}", resource.kind, resource.name, resource.endpoint);
    match account {
        None => Denied::Unauthenticated(described),
        Some(account) => Denied::Forbidden {
            account: account.id.clone(),
            resource: described,
        },
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, scope: &str, endpoint: &str, access: Access, priority: i32) -> Rule {
        Rule {
            id: id.into(),
            scope: scope.into(),
            resource: Resource::new("service", "greeter", endpoint),
            access,
            priority,
        }
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
            Err(Denied::Unauthenticated(_))
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
            Err(Denied::Unauthenticated(_))
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
