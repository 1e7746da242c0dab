//! Sessions over JWTs: core's `SessionAuth` around `JwtAuth`, sessions in `MemoryStore` (one
//! store shared by two `SessionAuth`s standing for two processes, each with its own cache).
//! A new login or a refresh ends the older pair, a revoke all of them; the session travels in
//! the `md` claim; the check is cached (counted on the Store, not timed); the Auth conformance
//! suite passes with sessions on; `--auth-sessions` wires it through the catalog.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{AUDIENCE, ISSUER, signing_key};
use micro_core::auth::{
    Account, DEFAULT_CHECK_CACHE, SESSION_METADATA, SessionAuth, Token, TokenOptions,
};
use micro_core::store::{Namespace, Query, Record};
use micro_core::{Auth, Catalog, Error, Options, Result, Store};
use micro_jwt::{Alg, JwtAuth, KeySet};
use micro_memory::MemoryStore;
use micro_testkit::eventually;

fn jwt() -> Arc<JwtAuth> {
    let keys = KeySet::new(signing_key("sessions", Alg::HS256)).expect("key set");
    Arc::new(
        JwtAuth::new(keys, ISSUER, AUDIENCE)
            .expect("jwt auth")
            .leeway(Duration::ZERO),
    )
}

/// A Store that counts the calls reaching the one it wraps.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    reads: AtomicUsize,
    writes: AtomicUsize,
}

impl Counting {
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(key, query).await
    }
    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(record, namespace).await
    }
    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        self.inner.delete(key, namespace).await
    }
    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        self.inner.list(prefix, query).await
    }
}

/// Two processes sharing one Store: each `SessionAuth` has its own cache.
fn two_processes(cache_for: Duration) -> (Arc<Counting>, SessionAuth, SessionAuth) {
    let store = Arc::new(Counting::default());
    let jwt = jwt();
    let make =
        || SessionAuth::new(jwt.clone(), store.clone() as Arc<dyn Store>).with_cache(cache_for);
    (store.clone(), make(), make())
}

fn alice() -> Account {
    Account {
        id: micro_core::conformance::unique("alice"),
        kind: "user".into(),
        scopes: vec!["greeter".into()],
        metadata: [("team".to_string(), "core".to_string())].into(),
        ..Default::default()
    }
}

async fn login(auth: &SessionAuth, account: &Account) -> Token {
    auth.token(account, &TokenOptions::default())
        .await
        .expect("login")
}

fn refused(result: Result<Account>, what: &str) -> String {
    match result {
        Err(e @ Error::Invalid { what: "token", .. }) => e.to_string(),
        Err(other) => panic!("{what}: refused with an unexpected error: {other}"),
        Ok(account) => panic!("{what}: accepted as {account:?}"),
    }
}

#[tokio::test]
async fn a_second_login_ends_the_first_pair_everywhere() {
    let (_, issuer, other) = two_processes(Duration::ZERO);
    let alice = alice();
    let first = login(&issuer, &alice).await;
    let seen = issuer.inspect(&first.access_token).await.expect("first");
    assert_eq!(
        (seen.id.as_str(), &seen.metadata),
        (alice.id.as_str(), &alice.metadata),
        "the account comes back without the session"
    );
    other.inspect(&first.access_token).await.expect("elsewhere");

    let second = login(&issuer, &alice).await;
    for (auth, at) in [(&issuer, "the issuer"), (&other, "another process")] {
        let why = refused(auth.inspect(&first.access_token).await, at);
        assert!(
            why.contains("session has ended") && why.contains(&alice.id),
            "{at}: {why}"
        );
        auth.inspect(&second.access_token)
            .await
            .unwrap_or_else(|e| panic!("{at}: the second pair: {e}"));
    }
    // Other accounts keep their sessions.
    let bob = Account {
        id: micro_core::conformance::unique("bob"),
        ..alice.clone()
    };
    let bobs = login(&other, &bob).await;
    issuer.inspect(&bobs.access_token).await.expect("bob");
    issuer.inspect(&second.access_token).await.expect("alice");
}

#[tokio::test]
async fn a_refresh_ends_the_previous_pair_and_its_refresh_token() {
    let (_, issuer, other) = two_processes(Duration::ZERO);
    let first = login(&issuer, &alice()).await;
    let renewed = other.refresh(&first.refresh_token).await.expect("refresh");
    for auth in [&issuer, &other] {
        refused(auth.inspect(&first.access_token).await, "the previous pair");
        auth.inspect(&renewed.access_token).await.expect("renewed");
    }
    let err = issuer
        .refresh(&first.refresh_token)
        .await
        .expect_err("the previous refresh token is spent");
    assert!(err.to_string().contains("refresh token's session"), "{err}");
    let again = issuer
        .refresh(&renewed.refresh_token)
        .await
        .expect("the new refresh token refreshes");
    other.inspect(&again.access_token).await.expect("again");
    refused(
        other.inspect(&renewed.access_token).await,
        "renewed, now old",
    );
}

#[tokio::test]
async fn revoke_ends_every_token_of_the_account() {
    let (store, issuer, other) = two_processes(DEFAULT_CHECK_CACHE);
    let alice = alice();
    let token = login(&issuer, &alice).await;
    other
        .inspect(&token.access_token)
        .await
        .expect("cached elsewhere");

    issuer.revoke(&alice.id).await.expect("revoke");
    refused(
        issuer.inspect(&token.access_token).await,
        "at once where revoked",
    );
    assert!(issuer.refresh(&token.refresh_token).await.is_err());
    assert_eq!(issuer.current_session(&alice.id).await.expect("read"), None);
    // Elsewhere, once the cached answer is older than the cache time.
    let reads = store.reads();
    eventually(
        DEFAULT_CHECK_CACHE + Duration::from_secs(2),
        "the revoked token is refused elsewhere",
        || async { other.inspect(&token.access_token).await.is_err() },
    )
    .await;
    assert!(store.reads() > reads, "asked the store once the cache aged");

    // A login after the logout works at once, everywhere.
    let back = login(&other, &alice).await;
    issuer.inspect(&back.access_token).await.expect("back");
    // Revoking an account without a session is no error.
    issuer
        .revoke(&micro_core::conformance::unique("nobody"))
        .await
        .expect("revoke nobody");
    let err = jwt()
        .revoke(&alice.id)
        .await
        .expect_err("plain jwt keeps no sessions");
    assert!(err.to_string().contains("--auth-sessions"), "{err}");
}

#[tokio::test]
async fn the_check_does_not_reach_the_store_on_every_call() {
    let (store, issuer, other) = two_processes(Duration::from_secs(60));
    let alice = alice();
    let first = login(&issuer, &alice).await;
    for _ in 0..50 {
        issuer.inspect(&first.access_token).await.expect("issuer");
        other.inspect(&first.access_token).await.expect("other");
    }
    assert_eq!(
        store.reads(),
        1,
        "the issuer knows its session; another process asks once"
    );

    let second = login(&issuer, &alice).await;
    for _ in 0..50 {
        issuer.inspect(&second.access_token).await.expect("second");
        refused(issuer.inspect(&first.access_token).await, "first");
    }
    assert_eq!(store.reads(), 1, "refusals of an ended session are cached");
    // The other process has not seen the second login: the new session is news, so it asks.
    other.inspect(&second.access_token).await.expect("second");
    for _ in 0..50 {
        other.inspect(&second.access_token).await.expect("second");
        refused(other.inspect(&first.access_token).await, "first elsewhere");
    }
    assert_eq!(store.reads(), 2);
}

#[tokio::test]
async fn the_session_travels_in_the_md_claim_and_is_required() {
    let (store, sessions, _) = two_processes(Duration::ZERO);
    let jwt = sessions.inner().clone();
    let token = login(&sessions, &alice()).await;
    let payload = token.access_token.split('.').nth(1).expect("payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("base64"),
    )
    .expect("claims");
    let session = claims["md"][SESSION_METADATA].as_str().expect("md.session");
    assert_eq!(session.len(), 32, "{claims}");
    let plain = jwt.inspect(&token.access_token).await.expect("plain jwt");
    assert_eq!(plain.metadata[SESSION_METADATA], session);

    let without = jwt
        .token(&alice(), &TokenOptions::default())
        .await
        .expect("a token without a session");
    let why = refused(sessions.inspect(&without.access_token).await, "no session");
    assert!(why.contains("carries no session"), "{why}");
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_session_ends_with_its_refresh_lifetime() {
    // The refresh lifetime of the token options, else the plugin's own.
    let store = Arc::new(MemoryStore::new());
    let by_options = SessionAuth::new(jwt(), store.clone());
    let options = TokenOptions {
        access_ttl: Some(Duration::from_secs(60)),
        refresh_ttl: Some(Duration::from_secs(1)),
    };
    let short_jwt = Arc::new(
        JwtAuth::new(
            KeySet::new(signing_key("sessions", Alg::HS256)).expect("key set"),
            ISSUER,
            AUDIENCE,
        )
        .expect("jwt auth")
        .access_ttl(Duration::from_secs(60))
        .refresh_ttl(Duration::from_secs(1)),
    );
    let by_plugin = SessionAuth::new(short_jwt, store.clone()).with_cache(Duration::ZERO);
    let by_options = by_options.with_cache(Duration::ZERO);
    let first = by_options.token(&alice(), &options).await.expect("login");
    let second = login(&by_plugin, &alice()).await;
    for (auth, token) in [(&by_options, &first), (&by_plugin, &second)] {
        let left = store
            .read(
                &auth
                    .inner()
                    .inspect(&token.access_token)
                    .await
                    .expect("jwt")
                    .id,
                &Query::default().in_namespace(auth.namespace().clone()),
            )
            .await
            .expect("the session record")[0]
            .expiry
            .expect("a TTL");
        assert!(left <= Duration::from_secs(1), "{left:?} left");
        auth.inspect(&token.access_token).await.expect("fresh");
    }
    eventually(
        Duration::from_secs(5),
        "the session records expire",
        || async {
            by_options.inspect(&first.access_token).await.is_err()
                && by_plugin.inspect(&second.access_token).await.is_err()
        },
    )
    .await;
    assert_eq!(
        SessionAuth::new(jwt(), store).default_refresh_ttl(),
        Some(micro_jwt::DEFAULT_REFRESH_TTL)
    );
}

/// An Auth that drops account metadata: sessions cannot work over it, and say so at login.
#[derive(Debug)]
struct Forgetful(Arc<JwtAuth>);

#[async_trait]
impl Auth for Forgetful {
    fn name(&self) -> &str {
        "forgetful"
    }
    async fn token(&self, account: &Account, options: &TokenOptions) -> Result<Token> {
        let bare = Account {
            metadata: Default::default(),
            ..account.clone()
        };
        self.0.token(&bare, options).await
    }
    async fn refresh(&self, refresh_token: &str) -> Result<Token> {
        self.0.refresh(refresh_token).await
    }
    async fn inspect(&self, access_token: &str) -> Result<Account> {
        self.0.inspect(access_token).await
    }
}

#[tokio::test]
async fn a_plugin_that_drops_metadata_is_named_at_login() {
    let sessions = SessionAuth::new(Arc::new(Forgetful(jwt())), Arc::new(MemoryStore::new()));
    let err = sessions
        .token(&alice(), &TokenOptions::default())
        .await
        .expect_err("refused at login");
    assert!(
        err.to_string().contains("forgetful") && err.to_string().contains("metadata"),
        "{err}"
    );
}

fn options(args: &[&str]) -> Options {
    Options::builder()
        .load_from(std::iter::once("test").chain(args.iter().copied()))
        .expect("options")
}

#[tokio::test]
async fn auth_sessions_option_wraps_the_plugin() {
    let mut catalog = Catalog::new();
    micro_memory::install(&mut catalog);
    let jwt = jwt();
    catalog.add_auth("jwt", move |_| {
        let jwt = jwt.clone();
        async move { Ok(jwt as Arc<dyn Auth>) }
    });

    let plain = catalog
        .auth(&options(&["--auth", "jwt"]))
        .await
        .expect("auth")
        .expect("jwt");
    assert!(
        plain.revoke("alice").await.is_err(),
        "no sessions by default"
    );

    let on = options(&[
        "--auth",
        "jwt",
        "--auth-sessions",
        "--auth-sessions-table",
        "t1",
    ]);
    assert!(on.auth_sessions);
    assert_eq!(on.auth_sessions_table, "t1");
    let sessions = catalog.auth(&on).await.expect("auth").expect("jwt");
    assert_eq!(sessions.name(), "jwt");
    let alice = alice();
    let first = sessions
        .token(&alice, &TokenOptions::default())
        .await
        .expect("login");
    sessions.revoke(&alice.id).await.expect("sessions revoke");
    assert!(sessions.inspect(&first.access_token).await.is_err());

    let off = options(&["--auth", "jwt", "--auth-sessions", "false"]);
    assert!(!off.auth_sessions);
    let err = catalog
        .auth(&options(&["--auth-sessions"]))
        .await
        .err()
        .expect("sessions without a plugin is an error")
        .to_string();
    assert!(
        err.contains("auth-sessions") && err.contains("--auth jwt"),
        "{err}"
    );
    let err = catalog
        .auth(&options(&[
            "--auth",
            "jwt",
            "--auth-sessions",
            "--auth-sessions-table",
            "a/b",
        ]))
        .await
        .err()
        .expect("a table with a slash is an error")
        .to_string();
    assert!(
        err.contains("auth-sessions-table") && err.contains("a/b"),
        "{err}"
    );
}

/// Core's Auth conformance suite, with sessions on: `SessionAuth` is an Auth like any other.
mod conformance {
    use super::*;

    micro_core::auth_conformance!(async {
        Arc::new(SessionAuth::new(jwt(), Arc::new(MemoryStore::new()))) as Arc<dyn Auth>
    });
}
