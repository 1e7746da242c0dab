//! The conformance suite every [`Auth`] implementation must pass; run it with
//! [`auth_conformance!`](crate::auth_conformance).
//!
//! Tokens are opaque to the suite: it issues them with the plugin, inspects and refreshes them,
//! alters them as text, and takes them through the shared decision ([`authorize`]) with fixed
//! [`Rules`]. The expiry case issues a one-second access token and waits until it is refused,
//! tolerating a clock-skew leeway of up to [`MAX_LEEWAY`]; build the plugin with a small leeway
//! to keep the suite fast.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{
    Access, Account, Auth, Credentials, Denied, Resource, Rule, Rules, TokenOptions, TokenSource,
    authorize,
};
use crate::conformance::{PROMPT, eventually, unique};

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression giving an
/// `Arc<dyn Auth>`.
#[macro_export]
macro_rules! auth_conformance {
    ($make:expr) => {
        mod auth_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::auth::conformance as suite;
            #[tokio::test(flavor = "multi_thread")]
            async fn issue_inspect_refresh() {
                suite::issue_inspect_refresh($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn refresh_and_access_tokens_are_not_interchangeable() {
                suite::refresh_and_access_tokens_are_not_interchangeable($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn expired_token_refused() {
                suite::expired_token_refused($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn tampered_token_refused() {
                suite::tampered_token_refused($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn account_without_id_refused() {
                suite::account_without_id_refused($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn rules_priority_order() {
                suite::rules_priority_order($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn rules_deny_wins_ties() {
                suite::rules_deny_wins_ties($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn public_resource_needs_no_account() {
                suite::public_resource_needs_no_account($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn missing_account_is_unauthenticated() {
                suite::missing_account_is_unauthenticated($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn wrong_scope_is_forbidden() {
                suite::wrong_scope_is_forbidden($make.await).await
            }
        }
    };
}

/// The largest clock-skew leeway the expiry case waits out.
pub const MAX_LEEWAY: Duration = Duration::from_secs(15);

fn account(scopes: &[&str]) -> Account {
    Account {
        id: unique("conformance-user"),
        kind: "user".into(),
        issuer: String::new(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        metadata: BTreeMap::from([("team".to_string(), "core".to_string())]),
    }
}

async fn issue(auth: &Arc<dyn Auth>, account: &Account) -> crate::auth::Token {
    auth.token(account, &TokenOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{}: token for {account:?}: {e}", auth.name()))
}

fn hello() -> Resource {
    Resource::new("service", "greeter", "Greeter.SayHello")
}

fn rule(id: &str, scope: &str, endpoint: &str, access: Access, priority: i32) -> Rule {
    let resource = Resource::new("service", "greeter", endpoint);
    Rule::new(id, scope, resource, access, priority)
}

fn rules(list: Vec<Rule>) -> Rules {
    Rules::fixed(list).expect("valid rules")
}

fn bearer(token: &str) -> Credentials {
    Credentials::token(token, TokenSource::Authorization)
}

/// Issue a pair, inspect the access token (the account comes back: id, kind, scopes,
/// metadata), refresh into a new pair that works, and refresh again with the new refresh token.
pub async fn issue_inspect_refresh(auth: Arc<dyn Auth>) {
    let alice = account(&["greeter", "admin"]);
    let token = issue(&auth, &alice).await;
    assert!(!token.access_token.is_empty() && !token.refresh_token.is_empty());
    assert_ne!(token.access_token, token.refresh_token);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert!(
        token.expiry > now,
        "expiry {} is not in the future",
        token.expiry
    );

    let seen = auth.inspect(&token.access_token).await.expect("inspect");
    assert_eq!(seen.id, alice.id, "id round-trips");
    assert_eq!(seen.kind, alice.kind, "kind round-trips");
    assert_eq!(seen.scopes, alice.scopes, "scopes round-trip");
    assert_eq!(seen.metadata, alice.metadata, "metadata round-trips");

    let renewed = auth.refresh(&token.refresh_token).await.expect("refresh");
    assert_ne!(
        renewed.access_token, token.access_token,
        "a new access token"
    );
    let again = auth
        .inspect(&renewed.access_token)
        .await
        .expect("inspect the refreshed access token");
    assert_eq!((again.id, again.scopes), (alice.id, alice.scopes));
    auth.refresh(&renewed.refresh_token)
        .await
        .expect("the new refresh token refreshes");
}

/// A refresh token is refused as an access token, and an access token as a refresh token.
pub async fn refresh_and_access_tokens_are_not_interchangeable(auth: Arc<dyn Auth>) {
    let token = issue(&auth, &account(&["greeter"])).await;
    let inspected = auth.inspect(&token.refresh_token).await;
    assert!(
        inspected.is_err(),
        "a refresh token was accepted as an access token: {inspected:?}"
    );
    let refreshed = auth.refresh(&token.access_token).await;
    assert!(
        refreshed.is_err(),
        "an access token was accepted as a refresh token"
    );
}

/// An access token issued for one second is refused once it has expired (and the leeway, up to
/// [`MAX_LEEWAY`], has passed).
pub async fn expired_token_refused(auth: Arc<dyn Auth>) {
    let options = TokenOptions {
        access_ttl: Some(Duration::from_secs(1)),
        refresh_ttl: None,
    };
    let token = auth
        .token(&account(&["greeter"]), &options)
        .await
        .expect("token");
    let deadline = Duration::from_secs(2) + MAX_LEEWAY + PROMPT;
    eventually(deadline, "the expired access token is refused", || async {
        auth.inspect(&token.access_token).await.is_err()
    })
    .await;
    let denied = authorize(
        &*auth,
        &rules(vec![rule("g", "greeter", "*", Access::Grant, 0)]),
        &bearer(&token.access_token),
        &hello(),
    )
    .await;
    assert!(
        matches!(denied, Err(Denied::Unauthenticated { .. })),
        "an expired token is no account: {denied:?}"
    );
}

/// The access token with one character changed (at several places), cut short, or with a
/// character appended is refused; so are an empty and a garbage token.
pub async fn tampered_token_refused(auth: Arc<dyn Auth>) {
    let token = issue(&auth, &account(&["greeter"])).await.access_token;
    auth.inspect(&token).await.expect("the untouched token");
    let chars: Vec<char> = token.chars().collect();
    let n = chars.len();
    let mut cases = vec![
        ("one character appended", format!("{token}A")),
        ("cut short", chars[..n - 1].iter().collect()),
        ("empty", String::new()),
        ("garbage", "garbage".to_string()),
    ];
    for at in [n / 4, n / 2, 3 * n / 4, n.saturating_sub(3)] {
        // Change a letter or digit that is not the last of a dot-separated part (in base64 the
        // last character may carry padding bits only).
        let mut i = at.min(n - 2);
        while i > 0 && (!chars[i].is_ascii_alphanumeric() || chars[i + 1] == '.') {
            i -= 1;
        }
        let mut changed = chars.clone();
        changed[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        cases.push(("one character changed", changed.into_iter().collect()));
    }
    for (case, tampered) in cases {
        let result = auth.inspect(&tampered).await;
        assert!(result.is_err(), "{case}: accepted as {result:?}");
        assert!(auth.refresh(&tampered).await.is_err(), "{case}: refreshed");
    }
}

/// A token for an account without an id is not issued.
pub async fn account_without_id_refused(auth: Arc<dyn Auth>) {
    let nobody = Account {
        id: String::new(),
        ..account(&["greeter"])
    };
    let result = auth.token(&nobody, &TokenOptions::default()).await;
    assert!(result.is_err(), "issued a token for an account with no id");
}

/// Higher priority is tried first: a deny above a grant refuses, a grant above a deny lets
/// through.
pub async fn rules_priority_order(auth: Arc<dyn Auth>) {
    let alice = account(&["greeter"]);
    let token = issue(&auth, &alice).await.access_token;
    let drop = Resource::new("service", "greeter", "Greeter.Drop");
    let set = rules(vec![
        rule("greet", "greeter", "Greeter.*", Access::Grant, 1),
        rule("no-drop", "*", "Greeter.Drop", Access::Deny, 10),
    ]);
    let ok = authorize(&*auth, &set, &bearer(&token), &hello())
        .await
        .expect("the grant covers SayHello");
    assert_eq!(
        ok.map(|a| a.id),
        Some(alice.id.clone()),
        "the account is handed on"
    );
    let denied = authorize(&*auth, &set, &bearer(&token), &drop).await;
    assert!(
        matches!(&denied, Err(Denied::Forbidden { account, .. }) if *account == alice.id),
        "the higher deny wins: {denied:?}"
    );

    set.set(vec![
        rule("greet", "greeter", "Greeter.*", Access::Grant, 20),
        rule("no-drop", "*", "Greeter.Drop", Access::Deny, 10),
    ])
    .expect("valid rules");
    authorize(&*auth, &set, &bearer(&token), &drop)
        .await
        .expect("the higher grant wins");
}

/// At equal priority a deny wins over a grant.
pub async fn rules_deny_wins_ties(auth: Arc<dyn Auth>) {
    let token = issue(&auth, &account(&["greeter"])).await.access_token;
    let set = rules(vec![
        rule("grant", "greeter", "*", Access::Grant, 5),
        rule("deny", "*", "Greeter.*", Access::Deny, 5),
    ]);
    let denied = authorize(&*auth, &set, &bearer(&token), &hello()).await;
    assert!(
        matches!(denied, Err(Denied::Forbidden { .. })),
        "deny wins a tie: {denied:?}"
    );
    // Listed the other way round: the same.
    set.set(vec![
        rule("deny", "*", "Greeter.*", Access::Deny, 5),
        rule("grant", "greeter", "*", Access::Grant, 5),
    ])
    .expect("valid rules");
    let denied = authorize(&*auth, &set, &bearer(&token), &hello()).await;
    assert!(
        matches!(denied, Err(Denied::Forbidden { .. })),
        "{denied:?}"
    );
}

/// A public rule (scope `""`) lets a call without a token through as no account, and one with
/// an invalid token too; a valid token still hands its account on.
pub async fn public_resource_needs_no_account(auth: Arc<dyn Auth>) {
    let alice = account(&[]);
    let token = issue(&auth, &alice).await;
    let set = rules(vec![rule(
        "public",
        "",
        "Greeter.SayHello",
        Access::Grant,
        0,
    )]);
    assert_eq!(
        authorize(&*auth, &set, &Credentials::none(), &hello()).await,
        Ok(None)
    );
    assert_eq!(
        authorize(&*auth, &set, &bearer("not-a-token"), &hello()).await,
        Ok(None),
        "an invalid token on a public resource is no account"
    );
    assert_eq!(
        authorize(&*auth, &set, &bearer(&token.refresh_token), &hello()).await,
        Ok(None),
        "a refresh token is no account"
    );
    let seen = authorize(&*auth, &set, &bearer(&token.access_token), &hello())
        .await
        .expect("public");
    assert_eq!(seen.map(|a| a.id), Some(alice.id));
}

/// Where the rules need an account, no token, an invalid token and a refresh token are
/// `Unauthenticated`, each with its reason; no rule at all is `Unauthenticated` without an
/// account and `Forbidden` with one.
pub async fn missing_account_is_unauthenticated(auth: Arc<dyn Auth>) {
    let token = issue(&auth, &account(&["greeter"])).await;
    let set = rules(vec![rule("any", "*", "*", Access::Grant, 0)]);
    let expect_401 = |result: Result<Option<Account>, Denied>, case: &str| match result {
        Err(Denied::Unauthenticated { resource, reason }) => {
            assert_eq!(resource, "service:greeter:Greeter.SayHello", "{case}");
            assert!(!reason.is_empty(), "{case}: a reason");
            reason
        }
        other => panic!("{case}: {other:?}, not Unauthenticated"),
    };
    let reason = expect_401(
        authorize(&*auth, &set, &Credentials::none(), &hello()).await,
        "no token",
    );
    assert!(reason.contains("no access token"), "{reason}");
    let reason = expect_401(
        authorize(&*auth, &set, &bearer("not-a-token"), &hello()).await,
        "garbage token",
    );
    assert!(reason.contains("refused"), "{reason}");
    expect_401(
        authorize(&*auth, &set, &bearer(&token.refresh_token), &hello()).await,
        "refresh token",
    );
    authorize(&*auth, &set, &bearer(&token.access_token), &hello())
        .await
        .expect("any account");

    let none = rules(Vec::new());
    expect_401(
        authorize(&*auth, &none, &Credentials::none(), &hello()).await,
        "no rules, no token",
    );
    let denied = authorize(&*auth, &none, &bearer(&token.access_token), &hello()).await;
    assert!(
        matches!(denied, Err(Denied::Forbidden { .. })),
        "no rules, an account: {denied:?}"
    );
}

/// An account without the scope a rule needs is `Forbidden`, naming the account; with the
/// scope it passes.
pub async fn wrong_scope_is_forbidden(auth: Arc<dyn Auth>) {
    let bob = account(&["other"]);
    let alice = account(&["greeter"]);
    let set = rules(vec![rule(
        "greet",
        "greeter",
        "Greeter.SayHello",
        Access::Grant,
        0,
    )]);
    let bob_token = issue(&auth, &bob).await.access_token;
    let denied = authorize(&*auth, &set, &bearer(&bob_token), &hello()).await;
    match denied {
        Err(Denied::Forbidden { account, resource }) => {
            assert_eq!(account, bob.id);
            assert_eq!(resource, "service:greeter:Greeter.SayHello");
        }
        other => panic!("wrong scope: {other:?}, not Forbidden"),
    }
    let alice_token = issue(&auth, &alice).await.access_token;
    let seen = authorize(&*auth, &set, &bearer(&alice_token), &hello())
        .await
        .expect("the scope lets alice through");
    assert_eq!(seen.map(|a| a.scopes), Some(alice.scopes));
}
