//! [`SessionAuth`]: one live token pair per account, kept in any [`Store`], over any [`Auth`]
//! plugin.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Account, Auth, Token, TokenOptions};
use crate::store::{DEFAULT_DATABASE, Namespace, Query, Record};
use crate::{Error, Result, Store};

/// The account metadata key carrying the session id inside tokens. Reserved while sessions are
/// on: [`SessionAuth`] sets it when it issues and removes it from the account it inspects.
pub const SESSION_METADATA: &str = "session";
/// The Store table sessions are kept in by default (database [`DEFAULT_DATABASE`]).
pub const DEFAULT_SESSIONS_TABLE: &str = "sessions";
/// How long a session record lives when neither the token options nor the plugin
/// ([`Auth::default_refresh_ttl`]) give a refresh lifetime. A record that expires ends the
/// session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a checked session is trusted without asking the Store again.
pub const DEFAULT_CHECK_CACHE: Duration = Duration::from_secs(2);
/// Accounts whose latest session is cached at most; past it, answers older than the cache time
/// are dropped (and if that is not enough, all of them).
const MAX_CACHED_ACCOUNTS: usize = 10_000;
/// Ended sessions remembered per account (the newest ones).
const ENDED_PER_ACCOUNT: usize = 8;

/// An [`Auth`] that keeps, per account, the id of its latest token pair in a [`Store`], and
/// refuses tokens of older pairs.
///
/// It wraps a plugin. Each [`token`](Auth::token) (a login) and each [`refresh`](Auth::refresh)
/// starts a new session: a random id, put into the pair as the account metadata
/// [`SESSION_METADATA`] (the plugin carries it inside its tokens, as `jwt` does in its `md`
/// claim) and written to the Store as the account's latest session (key: the account id;
/// namespace `micro`/[`DEFAULT_SESSIONS_TABLE`]; TTL: the refresh lifetime).
/// [`inspect`](Auth::inspect) refuses a token whose session is not the account's latest, so a
/// new login or a refresh ends every older token of the account, and [`revoke`](Auth::revoke)
/// (a logout) ends them all. A refresh token of an ended session is refused too.
///
/// **The check is cached** for [`DEFAULT_CHECK_CACHE`] (2 s; [`SessionAuth::with_cache`]), so
/// the common call costs no Store round trip:
///
/// - a token whose session is the cached latest passes without asking the Store;
/// - a session this process saw replaced or ended is refused without asking the Store, for good
///   (session ids are never reused, so an ended session never comes back);
/// - any other token (a newer login made by another process, or a cache older than the cache
///   time) is checked against the Store, and the answer cached.
///
/// The trade-off: logins, refreshes and logouts made by *this* process take effect here at
/// once, but another process that checked the account's latest session in the last cache time
/// may still accept the ended session's tokens until its cached answer is older than that.
/// Behind a gateway, a service with an `AuthLayer` over the same Store and the gateway each
/// decide for themselves; the one that issued or revoked refuses at once.
///
/// The Store must be shared by every process that issues or checks tokens (Redis, etcd,
/// Consul: not `memory`, which lives in one process) and read its own writes. If it cannot be
/// reached, tokens are refused (fail closed). With no compare-and-set in the Store, a refresh
/// racing a logout of the same account may start a session just after the logout; the last
/// write wins.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use micro_core::auth::SessionAuth;
/// # use micro_core::{Auth, Store};
/// # fn wrap(jwt: Arc<dyn Auth>, redis: Arc<dyn Store>) -> Arc<dyn Auth> {
/// // What `--auth jwt --auth-sessions --store redis` builds (Catalog::auth):
/// Arc::new(SessionAuth::new(jwt, redis))
/// # }
/// ```
pub struct SessionAuth {
    inner: Arc<dyn Auth>,
    store: Arc<dyn Store>,
    namespace: Namespace,
    ttl: Duration,
    cache_for: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// Whether the inner plugin was seen carrying the session through a token.
    carries_sessions: AtomicBool,
}

/// What this process knows of one account's sessions.
struct Cached {
    /// The latest session (`None`: no session) ...
    latest: Option<String>,
    /// ... as of this instant: taken before the Store read that said so, or after the write.
    known_at: Instant,
    /// Sessions known to have ended, newest last.
    ended: VecDeque<String>,
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAuth")
            .field("inner", &self.inner.name())
            .field("store", &self.store.name())
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("cache_for", &self.cache_for)
            .field("cached_accounts", &self.lock().len())
            .finish()
    }
}

impl SessionAuth {
    /// Sessions for the tokens of `inner`, kept in `store` under `micro`/`sessions`, each for
    /// the refresh lifetime given to [`token`](Auth::token), else the plugin's
    /// ([`Auth::default_refresh_ttl`]), else [`DEFAULT_SESSION_TTL`]; checks cached for
    /// [`DEFAULT_CHECK_CACHE`].
    pub fn new(inner: Arc<dyn Auth>, store: Arc<dyn Store>) -> Self {
        let ttl = inner.default_refresh_ttl().unwrap_or(DEFAULT_SESSION_TTL);
        SessionAuth {
            inner,
            store,
            namespace: Namespace::new(DEFAULT_DATABASE, DEFAULT_SESSIONS_TABLE),
            ttl,
            cache_for: DEFAULT_CHECK_CACHE,
            cache: Mutex::new(HashMap::new()),
            carries_sessions: AtomicBool::new(false),
        }
    }

    /// Keeps the sessions in `namespace` (every process sharing sessions must use the same).
    pub fn with_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// Session records live `ttl` when the token options give no refresh lifetime (at least
    /// one second); for a plugin that does not tell its default, set it to its refresh
    /// lifetime.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Trusts a checked session for `cache_for` before asking the Store again (zero: ask on
    /// every check that the ended sessions this process knows cannot answer).
    pub fn with_cache(mut self, cache_for: Duration) -> Self {
        self.cache_for = cache_for;
        self
    }

    /// The plugin that issues and verifies the tokens.
    pub fn inner(&self) -> &Arc<dyn Auth> {
        &self.inner
    }

    /// Where the sessions are kept.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The id of `account_id`'s latest session, read from the Store (not the cache); `None`
    /// when it has none (never logged in, logged out, or expired).
    pub async fn current_session(&self, account_id: &str) -> Result<Option<String>> {
        let started = Instant::now();
        let latest = self.read(account_id).await?;
        self.remember(account_id, latest.clone(), started, None);
        Ok(latest)
    }

    /// Whether `session` is `account_id`'s latest: from the cache when it can answer, else from
    /// the Store.
    async fn is_current(&self, account_id: &str, session: &str) -> Result<bool> {
        if let Some(answer) = self.cached(account_id, session) {
            return Ok(answer);
        }
        // This read starts after the token arrived, so after its session was written: if the
        // Store names another session (or none), this one has ended for good.
        let started = Instant::now();
        let latest = self.read(account_id).await?;
        let current = latest.as_deref() == Some(session);
        let ended = (!current).then(|| session.to_string());
        self.remember(account_id, latest, started, ended);
        tracing::trace!(account = %account_id, current, "session checked in the store");
        Ok(current)
    }

    fn cached(&self, account_id: &str, session: &str) -> Option<bool> {
        let cache = self.lock();
        let entry = cache.get(account_id)?;
        if entry.ended.iter().any(|s| s == session) {
            return Some(false);
        }
        (entry.latest.as_deref() == Some(session) && entry.known_at.elapsed() < self.cache_for)
            .then_some(true)
    }

    /// Records that `latest` was the account's latest session as of `known_at`, and that
    /// `ended` (if any) has ended. Older news than the cache holds only adds the ended session.
    fn remember(
        &self,
        account_id: &str,
        latest: Option<String>,
        known_at: Instant,
        ended: Option<String>,
    ) {
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED_ACCOUNTS && !cache.contains_key(account_id) {
            let cache_for = self.cache_for;
            cache.retain(|_, entry| entry.known_at.elapsed() < cache_for);
            if cache.len() >= MAX_CACHED_ACCOUNTS {
                cache.clear();
            }
        }
        let entry = cache
            .entry(account_id.to_string())
            .or_insert_with(|| Cached {
                latest: None,
                known_at,
                ended: VecDeque::new(),
            });
        let mut newly_ended: Vec<String> = ended.into_iter().collect();
        if known_at >= entry.known_at {
            if entry.latest != latest
                && let Some(replaced) = entry.latest.take()
            {
                newly_ended.push(replaced);
            }
            entry.latest = latest;
            entry.known_at = known_at;
        }
        for session in newly_ended {
            if entry.latest.as_deref() != Some(session.as_str()) && !entry.ended.contains(&session)
            {
                if entry.ended.len() >= ENDED_PER_ACCOUNT {
                    entry.ended.pop_front();
                }
                entry.ended.push_back(session);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(&self, account_id: &str) -> Result<Option<String>> {
        let query = Query::default().in_namespace(self.namespace.clone());
        match self.store.read(account_id, &query).await {
            Ok(records) => Ok(records
                .into_iter()
                .find(|r| r.key == account_id)
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(self.store_error("read", account_id, e)),
        }
    }

    fn store_error(&self, doing: &str, account_id: &str, error: Error) -> Error {
        let message = format!(
            "cannot {doing} the session of account `{account_id}` in the `{}` store ({}/{}): {error}",
            self.store.name(),
            self.namespace.database,
            self.namespace.table
        );
        Error::backend("auth", "sessions", message, error)
    }

    /// Issues a pair for `account` in a new session, and makes it the account's latest.
    async fn start(&self, account: &Account, options: &TokenOptions) -> Result<Token> {
        let session = format!("{:032x}", fastrand::u128(..));
        let mut tagged = account.clone();
        tagged
            .metadata
            .insert(SESSION_METADATA.to_string(), session.clone());
        let token = self.inner.token(&tagged, options).await?;
        self.check_carried(&token, &session).await?;
        let ttl = options.refresh_ttl.unwrap_or(self.ttl);
        let record = Record::new(account.id.clone(), session.clone()).with_ttl(ttl);
        self.store
            .write(record, &self.namespace)
            .await
            .map_err(|e| self.store_error("write", &account.id, e))?;
        // After the write: a read that starts later sees this session or a newer one.
        self.remember(&account.id, Some(session), Instant::now(), None);
        tracing::debug!(account = %account.id, "session started");
        Ok(token)
    }

    /// The first time, checks that the plugin carries the session inside its tokens: one that
    /// drops account metadata would issue tokens that are all refused.
    async fn check_carried(&self, token: &Token, session: &str) -> Result<()> {
        if self.carries_sessions.load(Ordering::Relaxed) {
            return Ok(());
        }
        let seen = self.inner.inspect(&token.access_token).await?;
        if seen.metadata.get(SESSION_METADATA).map(String::as_str) != Some(session) {
            return Err(Error::invalid(
                "auth",
                format!(
                    "sessions need the `{}` auth plugin to carry account metadata (`{SESSION_METADATA}`) inside its tokens, and it does not",
                    self.inner.name()
                ),
            ));
        }
        self.carries_sessions.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The session a token's account carries, taken out of its metadata.
fn take_session(account: &mut Account) -> Result<String> {
    account.metadata.remove(SESSION_METADATA).ok_or_else(|| {
        Error::invalid(
            "token",
            format!(
                "it carries no session (account `{}`): issued before sessions were on, or by an issuer without them",
                account.id
            ),
        )
    })
}

#[async_trait]
impl Auth for SessionAuth {
    /// The inner plugin's name.
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn token(&self, account: &Account, options: &TokenOptions) -> Result<Token> {
        self.start(account, options).await
    }

    fn default_refresh_ttl(&self) -> Option<Duration> {
        self.inner.default_refresh_ttl()
    }

    /// Refuses a refresh token whose session has ended (checked in the Store, not the cache);
    /// otherwise issues a pair in a new session, ending the old one.
    async fn refresh(&self, refresh_token: &str) -> Result<Token> {
        // The plugin verifies the refresh token; its pair tells the account and the session.
        let renewed = self.inner.refresh(refresh_token).await?;
        let mut account = self.inner.inspect(&renewed.access_token).await?;
        let session = take_session(&mut account)?;
        let started = Instant::now();
        let latest = self.read(&account.id).await?;
        if latest.as_deref() != Some(session.as_str()) {
            self.remember(&account.id, latest, started, Some(session));
            return Err(Error::invalid(
                "token",
                format!(
                    "the refresh token's session has ended: account `{}` logged in or refreshed again since, or logged out",
                    account.id
                ),
            ));
        }
        self.start(&account, &TokenOptions::default()).await
    }

    /// The account of a valid access token of the account's latest session, without the
    /// session in its metadata.
    async fn inspect(&self, access_token: &str) -> Result<Account> {
        let mut account = self.inner.inspect(access_token).await?;
        let session = take_session(&mut account)?;
        if self.is_current(&account.id, &session).await? {
            return Ok(account);
        }
        Err(Error::invalid(
            "token",
            format!(
                "its session has ended: account `{}` logged in or refreshed again since, or logged out",
                account.id
            ),
        ))
    }

    /// Deletes the account's session: its tokens are refused from now on in this process, and
    /// in others once their cached check is older than the cache time.
    async fn revoke(&self, account_id: &str) -> Result<()> {
        if account_id.is_empty() {
            return Err(Error::invalid("account", "an account needs an id"));
        }
        self.store
            .delete(account_id, &self.namespace)
            .await
            .map_err(|e| self.store_error("delete", account_id, e))?;
        self.remember(account_id, None, Instant::now(), None);
        tracing::debug!(account = %account_id, "session revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::store::Query;

    /// Tokens are `<id>|<session>`: enough to follow sessions without a real plugin.
    struct PlainAuth;

    #[async_trait]
    impl Auth for PlainAuth {
        fn name(&self) -> &str {
            "plain"
        }
        async fn token(&self, account: &Account, _: &TokenOptions) -> Result<Token> {
            let session = account.metadata.get(SESSION_METADATA).cloned();
            let access = format!("{}|{}", account.id, session.unwrap_or_default());
            Ok(Token {
                refresh_token: format!("refresh:{access}"),
                access_token: access,
                expiry: u64::MAX,
            })
        }
        async fn refresh(&self, refresh_token: &str) -> Result<Token> {
            let access = refresh_token
                .strip_prefix("refresh:")
                .ok_or_else(|| Error::invalid("token", "not a refresh token"))?;
            Ok(Token {
                access_token: access.to_string(),
                refresh_token: refresh_token.to_string(),
                expiry: u64::MAX,
            })
        }
        async fn inspect(&self, access_token: &str) -> Result<Account> {
            let (id, session) = access_token
                .split_once('|')
                .filter(|_| !access_token.starts_with("refresh:"))
                .ok_or_else(|| Error::invalid("token", "not an access token"))?;
            let mut metadata = BTreeMap::new();
            if !session.is_empty() {
                metadata.insert(SESSION_METADATA.to_string(), session.to_string());
            }
            Ok(Account {
                id: id.into(),
                metadata,
                ..Default::default()
            })
        }
    }

    /// One table, no TTL, counting reads.
    #[derive(Default)]
    struct TinyStore {
        records: Mutex<HashMap<String, String>>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Store for TinyStore {
        fn name(&self) -> &str {
            "tiny"
        }
        async fn read(&self, key: &str, _: &Query) -> Result<Vec<Record>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let records = self.records.lock().unwrap();
            let value = records
                .get(key)
                .ok_or_else(|| Error::NotFound(key.into()))?;
            Ok(vec![Record::new(key, value.clone())])
        }
        async fn write(&self, record: Record, _: &Namespace) -> Result<()> {
            let value = String::from_utf8(record.value.to_vec()).unwrap();
            self.records.lock().unwrap().insert(record.key, value);
            Ok(())
        }
        async fn delete(&self, key: &str, _: &Namespace) -> Result<()> {
            self.records.lock().unwrap().remove(key);
            Ok(())
        }
        async fn list(&self, _: &str, _: &Query) -> Result<Vec<String>> {
            Ok(self.records.lock().unwrap().keys().cloned().collect())
        }
    }

    fn alice() -> Account {
        Account {
            id: "alice".into(),
            ..Default::default()
        }
    }

    fn two_processes(cache_for: Duration) -> (Arc<TinyStore>, SessionAuth, SessionAuth) {
        let store = Arc::new(TinyStore::default());
        let make = || {
            SessionAuth::new(Arc::new(PlainAuth), store.clone() as Arc<dyn Store>)
                .with_cache(cache_for)
        };
        (store.clone(), make(), make())
    }

    #[tokio::test]
    async fn latest_session_only_and_checks_cached() {
        let (store, issuer, other) = two_processes(Duration::from_secs(60));
        let first = issuer
            .token(&alice(), &TokenOptions::default())
            .await
            .unwrap();
        let seen = issuer.inspect(&first.access_token).await.unwrap();
        assert!(
            seen.metadata.is_empty(),
            "the session is taken out: {seen:?}"
        );
        for _ in 0..10 {
            issuer.inspect(&first.access_token).await.unwrap();
            other.inspect(&first.access_token).await.unwrap();
        }
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            1,
            "the issuer never reads; the other process once"
        );

        let second = issuer
            .token(&alice(), &TokenOptions::default())
            .await
            .unwrap();
        let err = issuer.inspect(&first.access_token).await.unwrap_err();
        assert!(err.to_string().contains("session has ended"), "{err}");
        issuer.inspect(&second.access_token).await.unwrap();
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "all from the cache");

        // The other process trusts its cached answer for the old session (the trade-off), but
        // takes the new session at once: it is not the one it cached, so it asks the Store.
        other.inspect(&first.access_token).await.unwrap();
        other.inspect(&second.access_token).await.unwrap();
        assert_eq!(store.reads.load(Ordering::SeqCst), 2);
        // ... and from then on knows the first has ended, without asking again.
        for _ in 0..10 {
            assert!(other.inspect(&first.access_token).await.is_err());
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refresh_and_revoke_end_sessions() {
        let (_, issuer, other) = two_processes(Duration::ZERO);
        let first = issuer
            .token(&alice(), &TokenOptions::default())
            .await
            .unwrap();
        let renewed = issuer.refresh(&first.refresh_token).await.unwrap();
        assert_ne!(renewed.access_token, first.access_token);
        for auth in [&issuer, &other] {
            assert!(auth.inspect(&first.access_token).await.is_err());
            auth.inspect(&renewed.access_token).await.unwrap();
        }
        let err = other.refresh(&first.refresh_token).await.unwrap_err();
        assert!(err.to_string().contains("refresh token's session"), "{err}");

        other.revoke("alice").await.unwrap();
        for auth in [&issuer, &other] {
            assert!(auth.inspect(&renewed.access_token).await.is_err());
            assert!(auth.refresh(&renewed.refresh_token).await.is_err());
        }
        assert!(other.current_session("alice").await.unwrap().is_none());
        let err = issuer.inspect("alice|").await.unwrap_err();
        assert!(err.to_string().contains("carries no session"), "{err}");
    }

    #[tokio::test]
    async fn older_news_does_not_overwrite_newer() {
        let (_, auth, _) = two_processes(Duration::from_secs(60));
        let later = Instant::now();
        let earlier = later - Duration::from_millis(10);
        auth.remember("alice", Some("new".into()), later, None);
        auth.remember("alice", Some("old".into()), earlier, None);
        assert_eq!(auth.cached("alice", "new"), Some(true));
        assert_eq!(auth.cached("alice", "old"), None, "not known to have ended");
        auth.remember("alice", None, Instant::now(), None);
        assert_eq!(auth.cached("alice", "new"), Some(false), "replaced: ended");
    }

    #[tokio::test]
    async fn plugins_without_sessions_cannot_revoke() {
        let err = PlainAuth.revoke("alice").await.unwrap_err().to_string();
        assert!(
            err.contains("plain") && err.contains("auth-sessions") && err.contains("alice"),
            "{err}"
        );
    }
}
