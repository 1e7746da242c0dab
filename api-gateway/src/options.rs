//! The gateway's options: every service option (DESIGN §4) plus its own, with the same
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
    /// Access rules (JSON or TOML, reloaded on change); turns on token checks, with keys from
    /// MICRO_AUTH_JWT_* [default: off]
    #[arg(long, env = "MICRO_GATEWAY_AUTH_RULES", value_name = "PATH")]
    pub auth_rules: Option<String>,
    /// Also read the access token from this cookie [default: Authorization header only]
    #[arg(long, env = "MICRO_GATEWAY_AUTH_COOKIE", value_name = "NAME")]
    pub auth_cookie: Option<String>,
    /// Trust X-Forwarded-For for the client IP (only behind a proxy you run) [default: false]
    #[arg(long, env = "MICRO_GATEWAY_BEHIND_PROXY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub behind_proxy: Option<String>,
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
    /// Access rules file; token checks are on when set.
    pub auth_rules: Option<std::path::PathBuf>,
    /// Cookie that may carry the access token.
    pub auth_cookie: Option<String>,
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
        }
    }
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
        use clap::CommandFactory;
        let command = GatewayFlags::command();
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
        if options.rate_burst.is_some() && options.rate_limit.is_none() {
            return Err(micro_core::Error::Option(
                "option `rate-burst` needs `rate-limit`".into(),
            ));
        }
        Ok(options)
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
