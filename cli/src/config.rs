//! `micro config`: values of the config the options name, by dotted path.

use futures::StreamExt;
use micro_core::Config;
use serde_json::Value;

use crate::error::CliError;
use crate::output::{self, Format};

/// `micro config` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the value at PATH (`greeter.greeting`), as JSON
    Get {
        /// Dotted path
        path: String,
    },
    /// Set the value at PATH: JSON (`42`, `{"a":1}`, `"text"`), or a bare word taken as a string
    Set {
        /// Dotted path
        path: String,
        /// The value
        value: String,
    },
    /// Delete the value at PATH
    Delete {
        /// Dotted path
        path: String,
    },
    /// Print the value at PATH (null when unset), then each change as it happens, one JSON
    /// line each
    Watch {
        /// Dotted path
        path: String,
        /// Exit after this many lines (default: run until interrupted)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// The value `text` means: JSON when it is JSON; a bare word (not starting like JSON) as a
/// string; malformed JSON is an error rather than a surprising string.
fn value_of(text: &str) -> Result<Value, CliError> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Ok(value),
        Err(e) if text.trim_start().starts_with(['{', '[', '"']) => {
            Err(CliError::Usage(format!("the value is malformed JSON: {e}")))
        }
        Err(_) => Ok(Value::String(text.to_string())),
    }
}

/// `micro config ...`.
pub(crate) async fn run(
    config: &dyn Config,
    command: ConfigCommand,
    format: Format,
) -> Result<(), CliError> {
    let failed = |what: &str, path: &str, e: micro_core::Error| {
        CliError::Failed(format!("config `{}`: {what} `{path}`: {e}", config.name()))
    };
    match command {
        ConfigCommand::Get { path } => match config
            .get(&path)
            .await
            .map_err(|e| failed("get", &path, e))?
        {
            Some(value) => output::json(&value, format),
            None => {
                return Err(CliError::Failed(format!(
                    "no value at `{path}` in config `{}`",
                    config.name()
                )));
            }
        },
        ConfigCommand::Set { path, value } => {
            config
                .set(&path, value_of(&value)?)
                .await
                .map_err(|e| failed("set", &path, e))?;
            eprintln!("set `{path}`");
        }
        ConfigCommand::Delete { path } => {
            config
                .delete(&path)
                .await
                .map_err(|e| failed("delete", &path, e))?;
            eprintln!("deleted `{path}`");
        }
        ConfigCommand::Watch { path, count } => {
            // Watch first, then read: a change in between is printed twice rather than missed.
            let mut watcher = config
                .watch(&path)
                .await
                .map_err(|e| failed("watch", &path, e))?;
            let current = config
                .get(&path)
                .await
                .map_err(|e| failed("get", &path, e))?;
            eprintln!("watching `{path}` ({})", config.name());
            let print = |value: Option<Value>| {
                output::line(
                    &serde_json::to_string(&value.unwrap_or(Value::Null)).unwrap_or_default(),
                )
            };
            let mut seen = 0u64;
            if count != Some(0) {
                print(current);
                seen += 1;
            }
            while count.is_none_or(|count| seen < count) {
                let change = tokio::select! {
                    change = watcher.next() => change,
                    _ = tokio::signal::ctrl_c() => None,
                };
                let Some(change) = change else { break };
                print(change.map_err(|e| failed("watch", &path, e))?);
                seen += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::value_of;
    use serde_json::json;

    #[test]
    fn values_are_json_or_bare_words() {
        assert_eq!(value_of("42").unwrap(), json!(42));
        assert_eq!(value_of("Howdy").unwrap(), json!("Howdy"));
        assert_eq!(value_of("\"Howdy\"").unwrap(), json!("Howdy"));
        assert!(value_of("{\"a\":").is_err());
    }
}
