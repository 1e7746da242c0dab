//! The gateway's options: the service options it uses plus its own, with the same
//! precedence. Its own options read `MICRO_GATEWAY_*` from the environment.

use std::time::Duration;

use clap::Parser;
use micro_core::options::{Options, ServiceFlags, boolean, number};
use serde::{Deserialize, Serialize};

/// Command-line flags of `micro-gateway`.
#[derive(Parser, Debug)]
#[command(
    name = "micro-gateway",
    about = "HTTP JSON onto registered gRPC services, resolved at run time by reflection"
)]
#[allow(missing_docs)]
pub struct GatewayFlags {
    #[command(flatten)]
    pub service: ServiceFlags,
    /// HTTP listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "MICRO_GATEWAY_ADDRESS", value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// Where the embedded registry is served over gRPC [default: 127.0.0.1:8000]
    #[arg(long, env = "MICRO_GATEWAY_REGISTRY_LISTEN", value_name = "HOST:PORT")]
    pub registry_listen: Option<String>,
    /// Largest request body, in bytes or with a unit (64KiB, 1MiB) [default: 1MiB]
    #[arg(long, env = "MICRO_GATEWAY_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<String>,
    /// Per-call timeout; a client's grpc-timeout is capped to it [default: 30s]
    #[arg(long, env = "MICRO_GATEWAY_TIMEOUT", value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Requests per second allowed per client IP [default: off]
    #[arg(long, env = "MICRO_GATEWAY_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<String>,
    /// Requests per client IP allowed at once above the rate [default: the rate]
    #[arg(long, env = "MICRO_GATEWAY_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<String>,
    /// Origins allowed by CORS, comma-separated, or * [default: none]
    #[arg(long, env = "MICRO_GATEWAY_CORS_ORIGINS", value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// Accept JSON fields the message does not have [default: false]
    #[arg(long, env = "MICRO_GATEWAY_ALLOW_UNKNOWN_FIELDS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_unknown_fields: Option<String>,
    /// Access rules (JSON or TOML, reloaded on change); turns on token checks with the Auth
    /// plugin of --auth (e.g. jwt) [default: off]
    #[arg(long, env = "MICRO_GATEWAY_AUTH_RULES", value_name = "PATH")]
    pub auth_rules: Option<String>,
    /// Also read the access token from this cookie [default: Authorization header only]
    #[arg(long, env = "MICRO_GATEWAY_AUTH_COOKIE", value_name = "NAME")]
    pub auth_cookie: Option<String>,
    /// Trust X-Forwarded-For for the client IP (only behind a proxy you run) [default: false]
    #[arg(long, env = "MICRO_GATEWAY_BEHIND_PROXY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub behind_proxy: Option<String>,
    /// A connection that has not sent a request's headers (TLS handshake included) within this
    /// is closed [default: 10s]
    #[arg(long, env = "MICRO_GATEWAY_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// A keep-alive connection with no request for this long is closed [default: 60s]
    #[arg(long, env = "MICRO_GATEWAY_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Connections served at once; past it new ones are closed as they are accepted
    /// [default: 10000]
    #[arg(long, env = "MICRO_GATEWAY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Concurrent HTTP/2 streams (requests) per connection [default: 100]
    #[arg(long, env = "MICRO_GATEWAY_MAX_STREAMS", value_name = "N")]
    pub max_streams: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; re-read when the file changes); needs
    /// --tls-key [default: plain HTTP]
    #[arg(long, env = "MICRO_GATEWAY_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM) [default: none]
    #[arg(long, env = "MICRO_GATEWAY_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<String>,
    /// Services that must have a live node for GET /health/ready to answer 200, comma-separated
    /// (greeter,orders) [default: none]
    #[arg(long, env = "MICRO_GATEWAY_REQUIRE", value_name = "SERVICES")]
    pub require: Option<String>,
}

/// Resolved gateway options.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GatewayOptions {
    /// The service options (registry plugin and address, client timeout, ...).
    #[serde(flatten)]
    pub service: Options,
    /// HTTP listen address.
    pub address: String,
    /// Embedded registry listen address.
    pub registry_listen: String,
    /// Largest request body in bytes.
    #[serde(deserialize_with = "byte_size")]
    pub max_body: u64,
    /// Per-call timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests per second per client IP.
    #[serde(
        default,
        deserialize_with = "optional_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limit: Option<u32>,
    /// Burst per client IP.
    #[serde(
        default,
        deserialize_with = "optional_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_burst: Option<u32>,
    /// CORS origins, comma-separated.
    pub cors_origins: Option<String>,
    /// Accept unknown JSON fields.
    #[serde(deserialize_with = "boolean")]
    pub allow_unknown_fields: bool,
    /// Trust X-Forwarded-For.
    #[serde(deserialize_with = "boolean")]
    pub behind_proxy: bool,
    /// Access rules file; token checks (with the Auth plugin `service.auth`) are on when set.
    pub auth_rules: Option<std::path::PathBuf>,
    /// Cookie that may carry the access token.
    pub auth_cookie: Option<String>,
    /// Time a connection has to send a request's headers (and its TLS handshake) from its
    /// start, or from the first byte after it was idle.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a keep-alive connection may stay without a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once (upgraded WebSockets included).
    #[serde(deserialize_with = "number")]
    pub max_connections: u32,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(deserialize_with = "number")]
    pub max_streams: u32,
    /// Certificate chain (PEM) of the HTTPS listener; HTTPS is served when set.
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Services that must have a live node for `/health/ready` (`greeter,orders`, or a list in
    /// `micro.toml`).
    #[serde(default, deserialize_with = "service_list")]
    pub require: Vec<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            service: Options {
                server_name: "micro-gateway".into(),
                registry: "memory".into(),
                ..Options::default()
            },
            address: "127.0.0.1:8080".into(),
            registry_listen: "127.0.0.1:8000".into(),
            max_body: 1024 * 1024,
            timeout: Duration::from_secs(30),
            rate_limit: None,
            rate_burst: None,
            cors_origins: None,
            allow_unknown_fields: false,
            behind_proxy: false,
            auth_rules: None,
            auth_cookie: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_streams: 100,
            tls_cert: None,
            tls_key: None,
            require: Vec::new(),
        }
    }
}

/// Service names as `a,b` (flag, environment) or a list (`micro.toml`); blanks are dropped.
fn service_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        List(Vec<String>),
    }
    let names = match Raw::deserialize(deserializer)? {
        Raw::Text(text) => vec![text],
        Raw::List(list) => list,
    };
    Ok(names
        .iter()
        .flat_map(|n| n.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect())
}

fn optional_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    number(deserializer).map(Some)
}

/// Bytes as a number or text with a unit: `1048576`, `64KiB`, `1MiB`, `2MB`.
fn byte_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let text = match Raw::deserialize(deserializer)? {
        Raw::Number(n) => return Ok(n),
        Raw::Text(text) => text,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gib" | "g" => 1024 * 1024 * 1024,
        _ => {
            return Err(serde::de::Error::custom(format!(
                "`{text}` is not a size like 1048576, 64KiB or 1MiB"
            )));
        }
    };
    let n: u64 = digits.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not a size like 1048576, 64KiB or 1MiB"
        ))
    })?;
    n.checked_mul(multiplier)
        .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is too large")))
}

/// Service options the gateway does not use. They are still accepted (a `micro.toml` shared
/// with services may set them) but `--help` does not offer them. (`store` and `store-address`
/// are used: with `--auth-sessions`, sessions are checked in that Store.)
const SERVICE_ONLY: [&str; 10] = [
    "server_name",
    "server_version",
    "server_address",
    "register_ttl",
    "register_interval",
    "broker",
    "broker_address",
    "config",
    "config_address",
    "client_timeout",
];

/// The gateway's command line: its own flags, the service flags it uses, and its own defaults.
fn command() -> clap::Command {
    use clap::CommandFactory;
    SERVICE_ONLY
        .iter()
        .fold(GatewayFlags::command(), |command, id| {
            command.mut_arg(*id, |arg| arg.hide(true))
        })
        .mut_arg("registry", |arg| {
            arg.help(
                "Registry plugin; the gateway serves it on --registry-listen [default: memory]",
            )
        })
}

impl GatewayOptions {
    /// Resolves every layer from the process's arguments and environment.
    pub fn load() -> micro_core::Result<GatewayOptions> {
        Self::load_from(std::env::args_os())
    }

    /// Resolves every layer with `args` as the command line.
    pub fn load_from<I, T>(args: I) -> micro_core::Result<GatewayOptions>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = command();
        let matches = command
            .clone()
            .try_get_matches_from(args)
            .unwrap_or_else(|e| e.exit());
        let mut options: GatewayOptions = Options::builder().resolve(&command, &matches)?;
        options.service = options.service.validate()?;
        for (flag, value) in [
            ("address", &options.address),
            ("registry-listen", &options.registry_listen),
        ] {
            value.parse::<std::net::SocketAddr>().map_err(|e| {
                micro_core::Error::Option(format!(
                    "option `{flag}`: `{value}` is not a host:port address: {e}"
                ))
            })?;
        }
        check_auth(&options)?;
        check_listener(&options)?;
        if options.rate_burst.is_some() && options.rate_limit.is_none() {
            return Err(micro_core::Error::Option(
                "option `rate-burst` needs `rate-limit`".into(),
            ));
        }
        Ok(options)
    }
}

/// The HTTP listener's limits are positive, and TLS has both its files or neither.
fn check_listener(options: &GatewayOptions) -> micro_core::Result<()> {
    for (name, value) in [
        ("header-timeout", options.header_timeout),
        ("idle-timeout", options.idle_timeout),
        ("timeout", options.timeout),
    ] {
        if value.is_zero() {
            return Err(micro_core::Error::Option(format!(
                "option `{name}` must be longer than 0 (it was 0)"
            )));
        }
    }
    for (name, value) in [
        ("max-connections", options.max_connections),
        ("max-streams", options.max_streams),
    ] {
        if value == 0 {
            return Err(micro_core::Error::Option(format!(
                "option `{name}` must be at least 1 (it was 0)"
            )));
        }
    }
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), None) => Err(micro_core::Error::Option(format!(
            "option `tls-cert` (`{}`) needs `tls-key`, the certificate's private key",
            cert.display()
        ))),
        (None, Some(key)) => Err(micro_core::Error::Option(format!(
            "option `tls-key` (`{}`) needs `tls-cert`, the certificate it belongs to",
            key.display()
        ))),
        _ => Ok(()),
    }
}

/// Token checks need both an Auth plugin (`auth`) and rules (`auth-rules`); a cookie needs
/// token checks. Either one alone is an error rather than a gateway that silently checks
/// nothing, or one that refuses every call.
fn check_auth(options: &GatewayOptions) -> micro_core::Result<()> {
    let plugin = options.service.auth.trim();
    let no_plugin = plugin.is_empty() || plugin == micro_core::catalog::NO_AUTH;
    match (&options.auth_rules, no_plugin) {
        (Some(rules), true) => Err(micro_core::Error::Option(format!(
            "option `auth-rules` (`{}`) needs an Auth plugin to check tokens: add `--auth jwt` (MICRO_AUTH=jwt, or `auth = \"jwt\"` in micro.toml)",
            rules.display()
        ))),
        (None, false) => Err(micro_core::Error::Option(format!(
            "option `auth` (`{plugin}`) needs `auth-rules` at the gateway: the rules file says which calls need which scope (--auth-rules rules.toml)"
        ))),
        _ if options.auth_cookie.is_some() && options.auth_rules.is_none() => Err(
            micro_core::Error::Option("option `auth-cookie` needs `auth` and `auth-rules`".into()),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let options = GatewayOptions::load_from(["micro-gateway"]).unwrap();
        assert_eq!(options.service.registry, "memory");
        assert_eq!(options.max_body, 1024 * 1024);
        assert_eq!(options.address, "127.0.0.1:8080");
        let options = GatewayOptions::load_from([
            "g",
            "--max-body",
            "64KiB",
            "--rate-limit",
            "50",
            "--rate-burst",
            "10",
            "--allow-unknown-fields",
            "--registry",
            "etcd",
        ])
        .unwrap();
        assert_eq!(
            (
                options.max_body,
                options.rate_limit,
                options.rate_burst,
                options.allow_unknown_fields
            ),
            (65536, Some(50), Some(10), true)
        );
        assert_eq!(options.service.registry, "etcd");
    }

    #[test]
    fn help_shows_the_gateway_defaults_and_hides_service_only_flags() {
        let help = command().render_help().to_string();
        assert!(help.contains("[default: memory]"), "{help}");
        assert!(!help.contains("[default: remote]"), "{help}");
        for hidden in ["--server-name", "--register-ttl", "--broker ", "--config "] {
            assert!(!help.contains(hidden), "{hidden} in\n{help}");
        }
        for shown in [
            "--registry-address",
            "--registry-listen",
            "--client-retries",
            "--store ",
            "--auth-sessions",
        ] {
            assert!(help.contains(shown), "{shown} missing from\n{help}");
        }
        // Hidden is not refused: a micro.toml or flags shared with services still parse.
        let options = GatewayOptions::load_from(["g", "--register-ttl", "60s"]).unwrap();
        assert_eq!(options.service.register_ttl, Duration::from_secs(60));
    }

    #[test]
    fn auth_needs_a_plugin_and_rules() {
        let help = command().render_help().to_string();
        assert!(
            help.contains("--auth <PLUGIN>"),
            "--auth missing from\n{help}"
        );
        let options =
            GatewayOptions::load_from(["g", "--auth", "jwt", "--auth-rules", "rules.toml"])
                .unwrap();
        assert_eq!(options.service.auth, "jwt");
        assert_eq!(
            options.auth_rules.as_deref(),
            Some(std::path::Path::new("rules.toml"))
        );
        for (args, names) in [
            (
                &["--auth-rules", "rules.toml"][..],
                ["auth-rules", "--auth jwt"],
            ),
            (&["--auth", "jwt"][..], ["`auth` (`jwt`)", "auth-rules"]),
            (
                &["--auth-cookie", "token"][..],
                ["auth-cookie", "auth-rules"],
            ),
        ] {
            let err = GatewayOptions::load_from(std::iter::once("g").chain(args.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(names.iter().all(|n| err.contains(n)), "{args:?}: {err}");
        }
    }

    #[test]
    fn listener_limits_take_every_layer() {
        let options = GatewayOptions::load_from(["g"]).unwrap();
        assert_eq!(
            (
                options.header_timeout,
                options.idle_timeout,
                options.max_connections,
                options.max_streams,
                options.tls_cert.is_none(),
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(60),
                10_000,
                100,
                true
            )
        );
        let file = std::env::temp_dir().join(format!(
            "micro-gateway-options-{}-{:08x}.toml",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::write(
            &file,
            "header-timeout = \"5s\"\nmax-streams = 7\nmax-connections = 300\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let options = GatewayOptions::load_from([
            "g",
            "--config-file",
            path,
            "--header-timeout",
            "3s",
            "--idle-timeout",
            "90s",
        ])
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            (
                options.header_timeout,
                options.idle_timeout,
                options.max_connections,
                options.max_streams
            ),
            (Duration::from_secs(3), Duration::from_secs(90), 300, 7),
            "flags over the file, the file over the defaults"
        );
        for (args, names) in [
            (&["--header-timeout", "0s"][..], ["header-timeout", "0"]),
            (
                &["--idle-timeout", "later"][..],
                ["--idle-timeout", "later"],
            ),
            (&["--max-connections", "0"][..], ["max-connections", "0"]),
            (&["--max-streams", "many"][..], ["--max-streams", "many"]),
            (&["--tls-cert", "cert.pem"][..], ["tls-cert", "tls-key"]),
            (&["--tls-key", "key.pem"][..], ["tls-key", "tls-cert"]),
        ] {
            let err = GatewayOptions::load_from(std::iter::once("g").chain(args.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(names.iter().all(|n| err.contains(n)), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = GatewayOptions::load_from(["g", "--max-body", "lots"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--max-body") && err.contains("lots"), "{err}");
        let err = GatewayOptions::load_from(["g", "--address", "here"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("address") && err.contains("here"), "{err}");
        let err = GatewayOptions::load_from(["g", "--timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--timeout") && err.contains("soon"), "{err}");
    }
}
