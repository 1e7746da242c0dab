//! Plugins by name: each plugin crate's `install(&mut catalog)` adds its factories, and the
//! catalog builds the one the options name. No linker tricks, no global defaults.
//!
//! Plugin types are built the same way in every plugin crate, so an `install` is a few lines:
//! - in-process types: `Type::new()` (and `Default`);
//! - types on a server take the address as the `--<component>-address` option gives it, a
//!   `&str` (blank: the crate's `DEFAULT_ADDRESS`; comma-separated where the client takes
//!   several): `async fn connect(address) -> Result<Self>` when building contacts the backend
//!   (and fails naming the address), `fn new(address) -> Result<Self>` when the client connects
//!   on first use (only a malformed address fails);
//! - settings: `with_*(self, ..) -> Self`, or on an `*Options` value when they are needed
//!   before connecting (`RabbitOptions::new(address).with_prefetch(16)`);
//! - `from_client(client, ..)` wraps a client the caller already has.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::options::Options;
use crate::{Auth, Broker, Config, Error, Events, Registry, Result, Store};

/// The value of the `auth` option that chooses no Auth plugin (the default).
pub const NO_AUTH: &str = "none";

/// What a factory gets: the address option of its component (if set) and every option.
#[derive(Clone, Debug)]
pub struct PluginOptions {
    /// `--registry-address` (or broker/store/config/events), `None` for the plugin's default.
    pub address: Option<String>,
    /// Every resolved option.
    pub options: Options,
}

type Factory<T> = Arc<dyn Fn(PluginOptions) -> BoxFuture<'static, Result<Arc<T>>> + Send + Sync>;

/// The installed plugins, by component and name.
#[derive(Clone, Default)]
pub struct Catalog {
    registries: BTreeMap<String, Factory<dyn Registry>>,
    brokers: BTreeMap<String, Factory<dyn Broker>>,
    stores: BTreeMap<String, Factory<dyn Store>>,
    configs: BTreeMap<String, Factory<dyn Config>>,
    events: BTreeMap<String, Factory<dyn Events>>,
    auths: BTreeMap<String, Factory<dyn Auth>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("registries", &self.registry_names())
            .field("brokers", &self.broker_names())
            .field("stores", &self.store_names())
            .field("configs", &self.config_names())
            .field("events", &self.events_names())
            .field("auths", &self.auth_names())
            .finish()
    }
}

macro_rules! component {
    ($add:ident, $build:ident, $named:ident, $names:ident, $field:ident, $trait:ident, $kind:literal, $opt:ident, $addr:ident, $wrap:expr) => {
        #[doc = concat!("Installs a ", $kind, " plugin under `name`.")]
        pub fn $add<F, Fut>(&mut self, name: &str, factory: F)
        where
            F: Fn(PluginOptions) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<Arc<dyn $trait>>> + Send + 'static,
        {
            self.$field.insert(name.to_string(), Arc::new(move |o| Box::pin(factory(o))));
        }

        #[doc = concat!("Builds the ", $kind, " plugin the options name, at the address they give.")]
        pub async fn $build(&self, options: &Options) -> Result<Arc<dyn $trait>> {
            self.$named(&options.$opt, options.$addr.clone(), options).await
        }

        #[doc = concat!("Builds the ", $kind, " plugin `name` at `address`.")]
        pub async fn $named(&self, name: &str, address: Option<String>, options: &Options) -> Result<Arc<dyn $trait>> {
            let factory = self.$field.get(name).ok_or_else(|| Error::UnknownPlugin {
                component: $kind,
                name: name.to_string(),
                installed: self.$names().join(", "),
            })?;
            factory(PluginOptions { address, options: options.clone() }).await.map($wrap)
        }

        #[doc = concat!("Names of the installed ", $kind, " plugins.")]
        pub fn $names(&self) -> Vec<String> {
            self.$field.keys().cloned().collect()
        }
    };
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    component!(
        add_registry,
        registry,
        registry_named,
        registry_names,
        registries,
        Registry,
        "registry",
        registry,
        registry_address,
        std::convert::identity
    );
    component!(
        add_broker,
        broker,
        broker_named,
        broker_names,
        brokers,
        Broker,
        "broker",
        broker,
        broker_address,
        crate::broker::observed
    );
    component!(
        add_store,
        store,
        store_named,
        store_names,
        stores,
        Store,
        "store",
        store,
        store_address,
        std::convert::identity
    );
    component!(
        add_config,
        config,
        config_named,
        config_names,
        configs,
        Config,
        "config",
        config,
        config_address,
        std::convert::identity
    );
    component!(
        add_events,
        events,
        events_named,
        events_names,
        events,
        Events,
        "events",
        events,
        events_address,
        std::convert::identity
    );

    /// Installs an Auth plugin under `name` (its factory gets no address: `address` is `None`).
    pub fn add_auth<F, Fut>(&mut self, name: &str, factory: F)
    where
        F: Fn(PluginOptions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Auth>>> + Send + 'static,
    {
        self.auths
            .insert(name.to_string(), Arc::new(move |o| Box::pin(factory(o))));
    }

    /// Builds the Auth plugin the options name (`--auth`, `MICRO_AUTH`, key `auth`): `None`
    /// when it is [`NO_AUTH`] (the default) or empty, an error listing the installed plugins
    /// for an unknown name.
    ///
    /// With `auth-sessions` on, the plugin comes wrapped in a
    /// [`SessionAuth`](crate::auth::SessionAuth) keeping sessions in the Store the options name
    /// (`--store`, `--store-address`), table `auth-sessions-table` of database `micro`.
    pub async fn auth(&self, options: &Options) -> Result<Option<Arc<dyn Auth>>> {
        let name = options.auth.trim();
        if name.is_empty() || name == NO_AUTH {
            if options.auth_sessions {
                return Err(Error::Option(
                    "option `auth-sessions` needs an Auth plugin whose tokens it follows: add `--auth jwt` (MICRO_AUTH=jwt)".into(),
                ));
            }
            return Ok(None);
        }
        let auth = self.auth_named(name, options).await?;
        if !options.auth_sessions {
            return Ok(Some(auth));
        }
        let namespace = crate::store::Namespace::new(
            crate::store::DEFAULT_DATABASE,
            options.auth_sessions_table.trim(),
        );
        namespace
            .validate()
            .map_err(|e| Error::Option(format!("option `auth-sessions-table`: {e}")))?;
        let store = self.store(options).await?;
        if store.name() == "memory" {
            tracing::warn!(
                "auth sessions are kept in the in-process `memory` store: other processes (a gateway, other nodes) cannot see them and refuse every token; use a shared --store"
            );
        }
        tracing::info!(auth = name, store = store.name(), table = %namespace.table, "auth sessions on");
        let sessions = crate::auth::SessionAuth::new(auth, store).with_namespace(namespace);
        Ok(Some(Arc::new(sessions)))
    }

    /// Builds the Auth plugin `name`.
    pub async fn auth_named(&self, name: &str, options: &Options) -> Result<Arc<dyn Auth>> {
        let factory = self.auths.get(name).ok_or_else(|| Error::UnknownPlugin {
            component: "auth",
            name: name.to_string(),
            installed: {
                let mut names = vec![NO_AUTH.to_string()];
                names.extend(self.auth_names());
                names.join(", ")
            },
        })?;
        factory(PluginOptions {
            address: None,
            options: options.clone(),
        })
        .await
    }

    /// Names of the installed Auth plugins.
    pub fn auth_names(&self) -> Vec<String> {
        self.auths.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Account, Token, TokenOptions};

    struct Nobody;

    #[async_trait::async_trait]
    impl Auth for Nobody {
        fn name(&self) -> &str {
            "nobody"
        }
        async fn token(&self, _: &Account, _: &TokenOptions) -> Result<Token> {
            Err(Error::invalid("account", "nobody issues tokens"))
        }
        async fn refresh(&self, _: &str) -> Result<Token> {
            Err(Error::invalid("token", "nobody refreshes"))
        }
        async fn inspect(&self, _: &str) -> Result<Account> {
            Err(Error::invalid("token", "nobody inspects"))
        }
    }

    struct NoEvents;

    #[async_trait::async_trait]
    impl Events for NoEvents {
        fn name(&self) -> &str {
            "none-here"
        }
        async fn publish(
            &self,
            topic: &str,
            _: bytes::Bytes,
            _: BTreeMap<String, String>,
        ) -> Result<crate::events::Event> {
            Err(Error::invalid("topic", format!("{topic}: nothing is kept")))
        }
        async fn consume(
            &self,
            topic: &str,
            _: crate::events::ConsumeOptions,
        ) -> Result<crate::events::EventStream> {
            Err(Error::invalid(
                "topic",
                format!("{topic}: nothing to consume"),
            ))
        }
    }

    #[tokio::test]
    async fn events_slot_by_name_and_address() {
        let mut catalog = Catalog::new();
        let err = catalog
            .events(&Options::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("unknown events plugin `memory`"),
            "names the component and the default: {err}"
        );
        let seen = Arc::new(std::sync::Mutex::new(None));
        let sink = seen.clone();
        catalog.add_events("none-here", move |plugin: PluginOptions| {
            *sink.lock().unwrap() = plugin.address;
            async { Ok(Arc::new(NoEvents) as Arc<dyn Events>) }
        });
        let options = Options {
            events: "none-here".into(),
            events_address: Some("somewhere:1".into()),
            ..Options::default()
        };
        assert_eq!(catalog.events(&options).await.unwrap().name(), "none-here");
        assert_eq!(seen.lock().unwrap().as_deref(), Some("somewhere:1"));
        assert_eq!(catalog.events_names(), ["none-here"]);
    }

    fn options(auth: &str) -> Options {
        Options {
            auth: auth.into(),
            ..Options::default()
        }
    }

    #[tokio::test]
    async fn auth_slot_by_name() {
        let mut catalog = Catalog::new();
        assert!(catalog.auth(&Options::default()).await.unwrap().is_none());
        catalog.add_auth("nobody", |_| async {
            Ok(Arc::new(Nobody) as Arc<dyn Auth>)
        });
        assert!(catalog.auth(&options("none")).await.unwrap().is_none());
        let auth = catalog.auth(&options("nobody")).await.unwrap();
        assert_eq!(
            auth.map(|a| a.name().to_string()).as_deref(),
            Some("nobody")
        );
        let err = catalog
            .auth(&options("jtw"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("auth") && err.contains("jtw") && err.contains("none, nobody"),
            "{err}"
        );
        assert_eq!(catalog.auth_names(), ["nobody"]);
    }
}
