//! Options and their precedence: built-in defaults < code < config file < environment < command
//! line. One naming rule for every layer: the flag `--some-option` is the environment variable
//! `MICRO_SOME_OPTION` and the key `some-option` at the top of the TOML config file.
//!
//! A default applies only where no layer set the option (go-micro let flag defaults override
//! values set in code, #2444). A value that does not parse is an error naming the option, the
//! layer it came from and the value.
//!
//! About 500 lines of code and 130 of tests: the flags, the resolved `Options` and the layering
//! are one contract, read together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, Parser};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The config file read when `--config-file` is not given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "micro.toml";

/// Resolved options of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Options {
    /// Service name registered and resolved by clients.
    pub server_name: String,
    /// Version registered with the service.
    pub server_version: String,
    /// `host:port` to listen on; port 0 picks a free one, and the real port is registered.
    pub server_address: String,
    /// Registry plugin.
    pub registry: String,
    /// Registry address; the plugin's default when unset.
    pub registry_address: Option<String>,
    /// How long a registration lives without a refresh.
    #[serde(with = "humantime_serde")]
    pub register_ttl: Duration,
    /// How often the server refreshes its registration; must be shorter than the TTL.
    #[serde(with = "humantime_serde")]
    pub register_interval: Duration,
    /// Broker plugin.
    pub broker: String,
    /// Broker address; the plugin's default when unset.
    pub broker_address: Option<String>,
    /// Store plugin.
    pub store: String,
    /// Store address; the plugin's default when unset.
    pub store_address: Option<String>,
    /// Config plugin.
    pub config: String,
    /// Config address; the plugin's default when unset.
    pub config_address: Option<String>,
    /// Events plugin.
    pub events: String,
    /// Events address; the plugin's default when unset.
    pub events_address: Option<String>,
    /// Auth plugin; `none` (the default) for none.
    pub auth: String,
    /// Keep sessions for the Auth plugin in the Store of `store`/`store-address`: a new login
    /// or a refresh ends the account's older tokens, and a logout all of them
    /// ([`SessionAuth`](crate::auth::SessionAuth)). Off by default.
    #[serde(deserialize_with = "boolean")]
    pub auth_sessions: bool,
    /// The Store table (database `micro`) sessions are kept in.
    pub auth_sessions_table: String,
    /// The TOML file read as the config-file layer.
    pub config_file: Option<PathBuf>,
    /// How long a stopping server waits for in-flight calls.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Per-call timeout of the client.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// How many other nodes the client tries when a call could not reach a handler.
    #[serde(deserialize_with = "number")]
    pub client_retries: u32,
    /// PEM certificate chain the server presents: with `server-tls-key`, gRPC is served over
    /// TLS and the node is registered with `secure=true`. Re-read when the file changes.
    pub server_tls_cert: Option<PathBuf>,
    /// PEM private key of `server-tls-cert`.
    pub server_tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate signed by one (mutual TLS).
    pub server_tls_client_ca: Option<PathBuf>,
    /// PEM CA certificates the client verifies secure nodes and TLS backends with (instead of
    /// the system's roots).
    pub client_tls_ca: Option<PathBuf>,
    /// PEM certificate chain the client presents to servers that ask for one (mutual TLS).
    pub client_tls_cert: Option<PathBuf>,
    /// PEM private key of `client-tls-cert`.
    pub client_tls_key: Option<PathBuf>,
    /// Shared secret of the `remote` registry: the embedded registry refuses calls without it,
    /// and the `remote` plugin sends it.
    pub registry_token: Option<String>,
    /// Where to serve Prometheus metrics (`/metrics`) over HTTP; off when unset.
    pub metrics_address: Option<String>,
    /// Where to serve CPU profiles (`/debug/pprof/profile`) over HTTP; off when unset. Loopback
    /// only unless `debug-remote` is set.
    pub debug_address: Option<String>,
    /// Lets `debug-address` listen beyond loopback (profiles show code and timing).
    #[serde(deserialize_with = "boolean")]
    pub debug_remote: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server_name: "micro".into(),
            server_version: "latest".into(),
            server_address: "127.0.0.1:0".into(),
            registry: "remote".into(),
            registry_address: None,
            register_ttl: Duration::from_secs(30),
            register_interval: Duration::from_secs(10),
            broker: "memory".into(),
            broker_address: None,
            store: "memory".into(),
            store_address: None,
            config: "memory".into(),
            config_address: None,
            events: "memory".into(),
            events_address: None,
            auth: crate::catalog::NO_AUTH.into(),
            auth_sessions: false,
            auth_sessions_table: crate::auth::DEFAULT_SESSIONS_TABLE.into(),
            config_file: None,
            shutdown_timeout: Duration::from_secs(30),
            client_timeout: Duration::from_secs(30),
            client_retries: 2,
            server_tls_cert: None,
            server_tls_key: None,
            server_tls_client_ca: None,
            client_tls_ca: None,
            client_tls_cert: None,
            client_tls_key: None,
            registry_token: None,
            metrics_address: None,
            debug_address: None,
            debug_remote: false,
        }
    }
}

/// Command-line flags of a service; each also reads its `MICRO_*` environment variable.
///
/// Values are taken as text here and parsed with the other layers, so an error can say which
/// layer a bad value came from. Embed it with `#[command(flatten)]` to add flags of your own.
#[derive(Args, Clone, Debug, Default)]
#[allow(missing_docs)] // each field's doc is its --help line
pub struct ServiceFlags {
    /// Service name [default: set in code]
    #[arg(long, env = "MICRO_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
    /// Version registered with the service [default: latest]
    #[arg(long, env = "MICRO_SERVER_VERSION", value_name = "VERSION")]
    pub server_version: Option<String>,
    /// Listen address; port 0 picks one [default: 127.0.0.1:0]
    #[arg(long, env = "MICRO_SERVER_ADDRESS", value_name = "HOST:PORT")]
    pub server_address: Option<String>,
    /// Registry plugin [default: remote]
    #[arg(long, env = "MICRO_REGISTRY", value_name = "PLUGIN")]
    pub registry: Option<String>,
    /// Registry address [default: the plugin's]
    #[arg(long, env = "MICRO_REGISTRY_ADDRESS", value_name = "ADDRESS")]
    pub registry_address: Option<String>,
    /// Registration TTL [default: 30s]
    #[arg(long, env = "MICRO_REGISTER_TTL", value_name = "DURATION")]
    pub register_ttl: Option<String>,
    /// Registration refresh interval [default: 10s]
    #[arg(long, env = "MICRO_REGISTER_INTERVAL", value_name = "DURATION")]
    pub register_interval: Option<String>,
    /// Broker plugin [default: memory]
    #[arg(long, env = "MICRO_BROKER", value_name = "PLUGIN")]
    pub broker: Option<String>,
    /// Broker address [default: the plugin's]
    #[arg(long, env = "MICRO_BROKER_ADDRESS", value_name = "ADDRESS")]
    pub broker_address: Option<String>,
    /// Store plugin [default: memory]
    #[arg(long, env = "MICRO_STORE", value_name = "PLUGIN")]
    pub store: Option<String>,
    /// Store address [default: the plugin's]
    #[arg(long, env = "MICRO_STORE_ADDRESS", value_name = "ADDRESS")]
    pub store_address: Option<String>,
    /// Config plugin [default: memory]
    #[arg(long, env = "MICRO_CONFIG", value_name = "PLUGIN")]
    pub config: Option<String>,
    /// Config address [default: the plugin's]
    #[arg(long, env = "MICRO_CONFIG_ADDRESS", value_name = "ADDRESS")]
    pub config_address: Option<String>,
    /// Events plugin [default: memory]
    #[arg(long, env = "MICRO_EVENTS", value_name = "PLUGIN")]
    pub events: Option<String>,
    /// Events address [default: the plugin's]
    #[arg(long, env = "MICRO_EVENTS_ADDRESS", value_name = "ADDRESS")]
    pub events_address: Option<String>,
    /// Auth plugin, or none [default: none]
    #[arg(long, env = "MICRO_AUTH", value_name = "PLUGIN")]
    pub auth: Option<String>,
    /// Keep auth sessions in the Store of --store: a new login or refresh ends older tokens,
    /// logout all [default: false]
    #[arg(long, env = "MICRO_AUTH_SESSIONS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub auth_sessions: Option<String>,
    /// The Store table auth sessions are kept in (database micro) [default: sessions]
    #[arg(long, env = "MICRO_AUTH_SESSIONS_TABLE", value_name = "TABLE")]
    pub auth_sessions_table: Option<String>,
    /// TOML config file [default: ./micro.toml if present]
    #[arg(long, env = "MICRO_CONFIG_FILE", value_name = "PATH")]
    pub config_file: Option<String>,
    /// How long shutdown waits for in-flight calls [default: 30s]
    #[arg(long, env = "MICRO_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Per-call client timeout [default: 30s]
    #[arg(long, env = "MICRO_CLIENT_TIMEOUT", value_name = "DURATION")]
    pub client_timeout: Option<String>,
    /// Retries on other nodes for calls that reached no handler [default: 2]
    #[arg(long, env = "MICRO_CLIENT_RETRIES", value_name = "N")]
    pub client_retries: Option<String>,
    /// Serve gRPC over TLS with this PEM certificate chain (with --server-tls-key)
    /// [default: plaintext]
    #[arg(long, env = "MICRO_SERVER_TLS_CERT", value_name = "PATH")]
    pub server_tls_cert: Option<String>,
    /// PEM private key of --server-tls-cert
    #[arg(long, env = "MICRO_SERVER_TLS_KEY", value_name = "PATH")]
    pub server_tls_key: Option<String>,
    /// Require client certificates signed by these PEM CAs (mutual TLS) [default: off]
    #[arg(long, env = "MICRO_SERVER_TLS_CLIENT_CA", value_name = "PATH")]
    pub server_tls_client_ca: Option<String>,
    /// Verify secure nodes and TLS backends against these PEM CAs [default: the system roots]
    #[arg(long, env = "MICRO_CLIENT_TLS_CA", value_name = "PATH")]
    pub client_tls_ca: Option<String>,
    /// Present this PEM certificate chain to servers that ask (with --client-tls-key)
    #[arg(long, env = "MICRO_CLIENT_TLS_CERT", value_name = "PATH")]
    pub client_tls_cert: Option<String>,
    /// PEM private key of --client-tls-cert
    #[arg(long, env = "MICRO_CLIENT_TLS_KEY", value_name = "PATH")]
    pub client_tls_key: Option<String>,
    /// Shared secret of the remote registry (sent by the remote plugin, required by the
    /// gateway's embedded registry when set) [default: none]
    #[arg(
        long,
        env = "MICRO_REGISTRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub registry_token: Option<String>,
    /// Serve Prometheus metrics at http://ADDRESS/metrics [default: off]
    #[arg(long, env = "MICRO_METRICS_ADDRESS", value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    /// Serve CPU profiles at http://ADDRESS/debug/pprof/profile?seconds=N [default: off;
    /// loopback only unless --debug-remote]
    #[arg(long, env = "MICRO_DEBUG_ADDRESS", value_name = "HOST:PORT")]
    pub debug_address: Option<String>,
    /// Let --debug-address listen beyond loopback
    #[arg(long, env = "MICRO_DEBUG_REMOTE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub debug_remote: Option<String>,
}

#[derive(Parser)]
#[command(about = "A micro service")]
struct ServiceCli {
    #[command(flatten)]
    flags: ServiceFlags,
}

/// The code layer: options set by the program, before file, environment and flags.
#[derive(Clone, Debug, Default)]
pub struct OptionsBuilder {
    code: serde_json::Map<String, serde_json::Value>,
}

impl Options {
    /// Options of the service `name` (set in code, so every other layer can override it).
    #[allow(clippy::new_ret_no_self)] // the code layer is a builder; `load` gives the Options
    pub fn new(name: impl Into<String>) -> OptionsBuilder {
        OptionsBuilder::default().set("server-name", name.into())
    }

    /// Options with nothing set in code.
    pub fn builder() -> OptionsBuilder {
        OptionsBuilder::default()
    }

    /// Checks values that parse but cannot work together (interval ≥ TTL, bad address).
    pub fn validate(self) -> Result<Self> {
        if self.server_name.trim().is_empty() {
            return Err(Error::Option(
                "option `server-name`: the service name is empty".into(),
            ));
        }
        self.server_address.parse::<SocketAddr>().map_err(|e| {
            Error::Option(format!(
                "option `server-address`: `{}` is not a host:port address: {e}",
                self.server_address
            ))
        })?;
        pair(
            "server-tls-cert",
            &self.server_tls_cert,
            "server-tls-key",
            &self.server_tls_key,
        )?;
        pair(
            "client-tls-cert",
            &self.client_tls_cert,
            "client-tls-key",
            &self.client_tls_key,
        )?;
        if self.server_tls_client_ca.is_some() && self.server_tls_cert.is_none() {
            return Err(Error::Option(
                "option `server-tls-client-ca` asks clients for certificates over TLS, but the server has none: add `server-tls-cert` and `server-tls-key`".into(),
            ));
        }
        if self.register_interval >= self.register_ttl {
            return Err(Error::Option(format!(
                "option `register-interval` ({}) must be shorter than `register-ttl` ({}), or registrations lapse between refreshes",
                humantime::format_duration(self.register_interval),
                humantime::format_duration(self.register_ttl)
            )));
        }
        Ok(self)
    }
}

impl OptionsBuilder {
    /// Sets option `key` (its kebab-case name, `register-ttl`) in the code layer.
    pub fn set(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.code.insert(key.to_string(), value);
        self
    }

    /// Sets the registry plugin in code.
    pub fn registry(self, plugin: &str) -> Self {
        self.set("registry", plugin)
    }

    /// Sets the registration TTL in code.
    pub fn register_ttl(self, ttl: Duration) -> Self {
        self.set("register-ttl", humantime::format_duration(ttl).to_string())
    }

    /// Resolves every layer, taking flags from the process's arguments (`--help` prints the
    /// flags and exits).
    pub fn load(self) -> Result<Options> {
        self.load_from(std::env::args_os())
    }

    /// Resolves every layer with `args` as the command line (its first item is the program).
    pub fn load_from<I, T>(self, args: I) -> Result<Options>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = ServiceCli::command()
            .try_get_matches_from(args)
            .unwrap_or_else(|e| e.exit());
        self.resolve::<Options>(&ServiceCli::command(), &matches)?
            .validate()
    }

    /// Resolves every layer for a binary whose flags are `C` (a clap `Parser` that embeds
    /// [`ServiceFlags`] with `#[command(flatten)]`), returning the options and `C` itself.
    pub fn load_with<C: CommandFactory + clap::FromArgMatches>(self) -> Result<(Options, C)> {
        let command = C::command();
        let matches = command
            .clone()
            .try_get_matches_from(std::env::args_os())
            .unwrap_or_else(|e| e.exit());
        let cli = C::from_arg_matches(&matches).map_err(|e| Error::Option(e.to_string()))?;
        let options = self.resolve::<Options>(&command, &matches)?.validate()?;
        Ok((options, cli))
    }

    /// Resolves every layer into `T`, given the command the flags were parsed with: for binaries
    /// with flags of their own (the gateway) that embed [`ServiceFlags`].
    pub fn resolve<T: DeserializeOwned + Serialize + Default>(
        &self,
        command: &clap::Command,
        matches: &ArgMatches,
    ) -> Result<T> {
        let (env, cli) = split_by_source(command, matches);
        let known: BTreeSet<String> = command
            .get_arguments()
            .map(|a| kebab(a.get_id().as_str()))
            .collect();
        let config_file = config_file_path(&cli, &env, &self.code)?;
        let mut figment = Figment::from(Serialized::defaults(T::default()))
            .merge(Layer::new("set in code", self.code.clone()));
        if let Some(path) = &config_file {
            check_file_keys(path, &known)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment
            .merge(Layer::new(
                "environment",
                env.into_iter().map(|(k, v)| (k, v.into())).collect(),
            ))
            .merge(Layer::new(
                "flag",
                cli.into_iter().map(|(k, v)| (k, v.into())).collect(),
            ));
        figment.extract().map_err(|e| describe(e, command))
    }
}

/// Splits parsed flags into the environment layer and the command-line layer, by where clap
/// found each value; keys are kebab-case option names.
fn split_by_source(
    command: &clap::Command,
    matches: &ArgMatches,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut env, mut cli) = (BTreeMap::new(), BTreeMap::new());
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Ok(Some(value)) = matches.try_get_one::<String>(id) else {
            continue;
        };
        match matches.value_source(id) {
            Some(ValueSource::EnvVariable) => env.insert(kebab(id), value.clone()),
            Some(ValueSource::CommandLine) => cli.insert(kebab(id), value.clone()),
            _ => None,
        };
    }
    (env, cli)
}

/// Two options that only work together: both or neither.
fn pair(a: &str, a_value: &Option<PathBuf>, b: &str, b_value: &Option<PathBuf>) -> Result<()> {
    match (a_value, b_value) {
        (Some(_), None) => Err(Error::Option(format!(
            "option `{a}` is set but `{b}` is not: give both"
        ))),
        (None, Some(_)) => Err(Error::Option(format!(
            "option `{b}` is set but `{a}` is not: give both"
        ))),
        _ => Ok(()),
    }
}

fn config_file_path(
    cli: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
    code: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<PathBuf>> {
    let named = cli
        .get("config-file")
        .or_else(|| env.get("config-file"))
        .cloned()
        .or_else(|| {
            code.get("config-file")
                .and_then(|v| v.as_str())
                .map(String::from)
        });
    match named {
        Some(path) if !Path::new(&path).is_file() => Err(Error::Option(format!(
            "option `config-file`: `{path}` does not exist or is not a file"
        ))),
        Some(path) => Ok(Some(path.into())),
        None => Ok(Path::new(DEFAULT_CONFIG_FILE)
            .is_file()
            .then(|| DEFAULT_CONFIG_FILE.into())),
    }
}

/// A config file key that no option has is an error (a typo would otherwise be ignored).
fn check_file_keys(path: &Path, known: &BTreeSet<String>) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Option(format!("config file `{}`: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::Option(format!("config file `{}`: {e}", path.display())))?;
    let unknown: Vec<&String> = table.keys().filter(|k| !known.contains(*k)).collect();
    if let Some(first) = unknown.first() {
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        return Err(Error::Option(format!(
            "config file `{}`: unknown option `{first}`; known options: {}",
            path.display(),
            known.join(", ")
        )));
    }
    Ok(())
}

/// Rewrites figment's error as: which option, which layer (flag, variable, file) and what.
fn describe(error: figment::Error, command: &clap::Command) -> Error {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.last().cloned().unwrap_or_default();
            let source = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                Some("flag") => format!("from flag --{key}"),
                Some("environment") => {
                    let var = command
                        .get_arguments()
                        .find(|a| kebab(a.get_id().as_str()) == key)
                        .and_then(|a| a.get_env())
                        .map(|v| v.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    format!("from environment variable {var}")
                }
                Some("set in code") => "set in code".to_string(),
                Some(other) => format!(
                    "from {}",
                    e.metadata
                        .as_ref()
                        .and_then(|m| m.source.as_ref())
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| other.to_string())
                ),
                None => "from defaults".to_string(),
            };
            format!("option `{key}` {source}: {}", e.kind)
        })
        .collect();
    Error::Option(lines.join("; "))
}

fn kebab(id: &str) -> String {
    id.replace('_', "-")
}

/// A figment layer with a name that errors can report.
struct Layer {
    name: &'static str,
    values: serde_json::Map<String, serde_json::Value>,
}

impl Layer {
    fn new(name: &'static str, values: serde_json::Map<String, serde_json::Value>) -> Self {
        Layer { name, values }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.values).data()
    }
}

/// Deserializes a number given natively (TOML, code) or as text (flags, environment).
pub fn number<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + TryFrom<u64>,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Number(n) => {
            T::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is out of range")))
        }
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a number: {e}"))),
    }
}

/// Deserializes a boolean given natively or as text (`true`/`false`/`1`/`0`/`yes`/`no`).
pub fn boolean<'de, D>(deserializer: D) -> std::result::Result<bool, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Bool(b) => Ok(b),
        Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not true or false"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(builder: OptionsBuilder, args: &[&str]) -> Result<Options> {
        builder.load_from(std::iter::once("test").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_then_code_then_flags() {
        let opts = load(Options::builder(), &[]).unwrap();
        assert_eq!(opts.registry, "remote");
        assert_eq!(opts.register_ttl, Duration::from_secs(30));
        assert_eq!(opts.auth, "none");
        assert_eq!(
            (opts.events.as_str(), opts.events_address),
            ("memory", None)
        );
        let opts = load(
            Options::builder(),
            &["--events", "nats", "--events-address", "127.0.0.1:4222"],
        )
        .unwrap();
        assert_eq!(
            (opts.events.as_str(), opts.events_address.as_deref()),
            ("nats", Some("127.0.0.1:4222"))
        );
        assert_eq!(
            load(Options::builder(), &["--auth", "jwt"]).unwrap().auth,
            "jwt"
        );
        let opts = load(
            Options::new("greeter").register_ttl(Duration::from_secs(15)),
            &[],
        )
        .unwrap();
        assert_eq!(
            (opts.server_name.as_str(), opts.register_ttl),
            ("greeter", Duration::from_secs(15))
        );
        let opts = load(
            Options::new("greeter"),
            &[
                "--server-name",
                "cli",
                "--register-ttl",
                "1m",
                "--register-interval",
                "5s",
                "--client-retries",
                "4",
            ],
        )
        .unwrap();
        assert_eq!(opts.server_name, "cli");
        assert_eq!(opts.register_ttl, Duration::from_secs(60));
        assert_eq!(opts.client_retries, 4);
    }

    #[test]
    fn bad_values_name_the_flag_and_value() {
        let err = load(Options::new("g"), &["--register-ttl", "abc"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--register-ttl") && err.contains("abc"),
            "{err}"
        );
        let err = load(Options::new("g"), &["--client-retries", "many"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--client-retries") && err.contains("many"),
            "{err}"
        );
        let err = load(Options::new("g"), &["--server-address", "nowhere"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server-address") && err.contains("nowhere"),
            "{err}"
        );
        let err = load(Options::new("g"), &["--register-interval", "40s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("register-interval"), "{err}");
        let err = load(Options::new("g"), &["--server-tls-cert", "c.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server-tls-cert") && err.contains("server-tls-key"),
            "{err}"
        );
        let err = load(Options::new("g"), &["--client-tls-key", "k.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("client-tls-cert"), "{err}");
        let err = load(Options::new("g"), &["--server-tls-client-ca", "ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server-tls-client-ca"), "{err}");
        let err = load(Options::new("g").set("register-ttl", "soon"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("set in code") && err.contains("soon"), "{err}");
    }

    #[test]
    fn config_file_layer_and_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("micro-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("micro.toml");
        std::fs::write(
            &file,
            "server-name = \"from-file\"\nregister-ttl = \"15s\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let opts = load(Options::new("code"), &["--config-file", path]).unwrap();
        assert_eq!(
            (opts.server_name.as_str(), opts.register_ttl),
            ("from-file", Duration::from_secs(15))
        );
        let opts = load(
            Options::new("code"),
            &["--config-file", path, "--server-name", "cli"],
        )
        .unwrap();
        assert_eq!(opts.server_name, "cli");

        std::fs::write(&file, "regsitry = \"etcd\"\n").unwrap();
        let err = load(Options::new("code"), &["--config-file", path])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option `regsitry`"), "{err}");
        std::fs::write(&file, "register-ttl = \"later\"\n").unwrap();
        let err = load(Options::new("code"), &["--config-file", path])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("register-ttl") && err.contains("later") && err.contains("micro.toml"),
            "{err}"
        );
        let err = load(
            Options::new("code"),
            &["--config-file", "/nonexistent/x.toml"],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
