//! Plugins by name: each plugin crate's `install(&mut catalog)` adds its factories, and the
//! catalog builds the one the options name. No linker tricks, no global defaults.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::options::Options;
use crate::{Broker, Config, Error, Registry, Result, Store};

/// What a factory gets: the address option of its component (if set) and every option.
#[derive(Clone, Debug)]
pub struct PluginOptions {
    /// `--registry-address` (or broker/store/config), `None` for the plugin's default.
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
}

macro_rules! component {
    ($add:ident, $build:ident, $named:ident, $names:ident, $field:ident, $trait:ident, $kind:literal, $opt:ident, $addr:ident) => {
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
            factory(PluginOptions { address, options: options.clone() }).await
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
        registry_address
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
        broker_address
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
        store_address
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
        config_address
    );
}
