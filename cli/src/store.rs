//! `micro store`: records of the store the options name.

use std::time::Duration;

use micro_core::Store;
use micro_core::store::{Namespace, Query, Record};
use serde_json::{Value, json};

use crate::error::CliError;
use crate::output::{self, Format};

/// Where records live.
#[derive(clap::Args)]
pub(crate) struct Where {
    /// The database [default: micro]
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// The table [default: micro]
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
}

impl Where {
    fn namespace(&self) -> Namespace {
        let mut namespace = Namespace::default();
        if let Some(database) = &self.database {
            namespace.database = database.clone();
        }
        if let Some(table) = &self.table {
            namespace.table = table.clone();
        }
        namespace
    }
}

/// `micro store` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Print a record's value (with --prefix, every record under the key)
    Read {
        /// The key
        key: String,
        /// Read every record whose key starts with KEY
        #[arg(long)]
        prefix: bool,
        #[command(flatten)]
        place: Where,
    },
    /// Write a record
    Write {
        /// The key
        key: String,
        /// The value, stored as these bytes
        value: String,
        /// Expire the record after this long, e.g. 1h
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        place: Where,
    },
    /// Delete a record
    Delete {
        /// The key
        key: String,
        #[command(flatten)]
        place: Where,
    },
    /// List keys (under PREFIX)
    List {
        /// Only keys that start with this
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        place: Where,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    text.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("`{text}` is not a duration like 1h: {e}"))
}

/// `micro store ...`.
pub(crate) async fn run(
    store: &dyn Store,
    command: StoreCommand,
    format: Format,
) -> Result<(), CliError> {
    let failed = |what: &str, e: micro_core::Error| {
        CliError::Failed(format!("store `{}`: {what}: {e}", store.name()))
    };
    match command {
        StoreCommand::Read { key, prefix, place } => {
            let query = Query {
                namespace: place.namespace(),
                prefix,
                ..Query::default()
            };
            let missing =
                || CliError::Failed(format!("no record `{key}` in store `{}`", store.name()));
            let records = match store.read(&key, &query).await {
                Ok(records) if records.is_empty() => return Err(missing()),
                Ok(records) => records,
                Err(micro_core::Error::NotFound(_)) => return Err(missing()),
                Err(e) => return Err(failed("read", e)),
            };
            match (format, prefix) {
                (Format::Json, _) => output::json(
                    &Value::Array(records.iter().map(record_json).collect()),
                    format,
                ),
                (Format::Text, false) => output::line(&String::from_utf8_lossy(&records[0].value)),
                (Format::Text, true) => output::table(
                    &["KEY", "VALUE", "EXPIRES IN"],
                    &records
                        .iter()
                        .map(|r| {
                            vec![
                                r.key.clone(),
                                String::from_utf8_lossy(&r.value).into_owned(),
                                r.expiry
                                    .map(|e| {
                                        humantime::format_duration(Duration::from_secs(e.as_secs()))
                                            .to_string()
                                    })
                                    .unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        StoreCommand::Write {
            key,
            value,
            ttl,
            place,
        } => {
            let mut record = Record::new(key.clone(), value.into_bytes());
            record.expiry = ttl;
            store
                .write(record, &place.namespace())
                .await
                .map_err(|e| failed("write", e))?;
            eprintln!("wrote `{key}`");
        }
        StoreCommand::Delete { key, place } => {
            store
                .delete(&key, &place.namespace())
                .await
                .map_err(|e| failed("delete", e))?;
            eprintln!("deleted `{key}`");
        }
        StoreCommand::List { prefix, place } => {
            let query = Query {
                namespace: place.namespace(),
                ..Query::default()
            };
            let keys = store
                .list(&prefix, &query)
                .await
                .map_err(|e| failed("list", e))?;
            match format {
                Format::Json => output::json(&json!(keys), format),
                Format::Text => keys.iter().for_each(|k| output::line(k)),
            }
        }
    }
    Ok(())
}

fn record_json(record: &Record) -> Value {
    let value = match std::str::from_utf8(&record.value) {
        Ok(text) => json!(text),
        Err(_) => json!(record.value.to_vec()),
    };
    json!({
        "key": record.key,
        "value": value,
        "metadata": record.metadata,
        "expires_in_seconds": record.expiry.map(|e| e.as_secs()),
    })
}
