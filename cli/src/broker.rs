//! `micro publish` and `micro subscribe`, through the broker the options name.

use std::io::{IsTerminal, Read};

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use serde_json::{Value, json};

use crate::error::CliError;
use crate::output::{self, Format};

/// `micro publish` arguments.
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The topic (`jobs.email`)
    topic: String,
    /// The message body: JSON (checked), or `@file`; read from stdin when left out
    body: Option<String>,
    /// Send the body as it is, without checking that it is JSON
    #[arg(long)]
    raw: bool,
    /// A message header, `key:value` (repeatable)
    #[arg(short = 'H', long = "header", value_name = "KEY:VALUE")]
    headers: Vec<String>,
}

/// `micro subscribe` arguments.
#[derive(clap::Args)]
pub(crate) struct SubscribeArgs {
    /// The topic (`jobs.email`)
    topic: String,
    /// Share messages with the other subscribers of this queue (each gets a message once)
    #[arg(long, value_name = "QUEUE")]
    queue: Option<String>,
    /// Exit after this many messages (default: run until interrupted)
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// `micro publish`.
pub(crate) async fn publish(broker: &dyn Broker, args: PublishArgs) -> Result<(), CliError> {
    let body = match args.body.as_deref() {
        Some(text) => match text.strip_prefix('@') {
            Some(path) => std::fs::read(path).map_err(|e| {
                CliError::Usage(format!("cannot read the message file `{path}`: {e}"))
            })?,
            None => text.as_bytes().to_vec(),
        },
        None if std::io::stdin().is_terminal() => {
            return Err(CliError::Usage(
                "no message: give it as an argument, @file, or on stdin".into(),
            ));
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body)?;
            body
        }
    };
    if !args.raw {
        serde_json::from_slice::<Value>(&body).map_err(|e| {
            CliError::Usage(format!(
                "the message is not JSON ({e}); pass --raw to send it as it is"
            ))
        })?;
    }
    let mut message = Message::new(body);
    for header in &args.headers {
        let (key, value) = header
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("header `{header}` is not key:value")))?;
        message = message.with_header(key.trim(), value.trim());
    }
    broker.publish(&args.topic, message).await.map_err(|e| {
        CliError::Failed(format!(
            "publish to `{}` through `{}`: {e}",
            args.topic,
            broker.name()
        ))
    })?;
    eprintln!("published to `{}` ({})", args.topic, broker.name());
    Ok(())
}

/// `micro subscribe`: one line per message: its body (text), or
/// `{"topic", "header", "body"}` (`-o json`, the body as JSON when it is JSON).
pub(crate) async fn subscribe(
    broker: &dyn Broker,
    args: SubscribeArgs,
    format: Format,
) -> Result<(), CliError> {
    let (sender, mut received) = tokio::sync::mpsc::channel::<Message>(64);
    let options = match &args.queue {
        Some(queue) => SubscribeOptions::queue(queue.clone()),
        None => SubscribeOptions::default(),
    };
    let subscription = broker
        .subscribe(
            &args.topic,
            handler(move |message| {
                let sender = sender.clone();
                // Back-pressure: the broker waits while the terminal is behind.
                async move { sender.send(message).await.map_err(Into::into) }
            }),
            options,
        )
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "subscribe to `{}` through `{}`: {e}",
                args.topic,
                broker.name()
            ))
        })?;
    // On stderr, so a script (or a test) knows when publishing will be seen.
    eprintln!("subscribed to `{}` ({})", args.topic, broker.name());
    let mut seen = 0u64;
    while args.count.is_none_or(|count| seen < count) {
        let message = tokio::select! {
            message = received.recv() => message,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(message) = message else { break };
        seen += 1;
        match format {
            Format::Text => output::line(&String::from_utf8_lossy(&message.body)),
            Format::Json => {
                let body = serde_json::from_slice::<Value>(&message.body).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&message.body).into_owned())
                });
                output::json(
                    &json!({"topic": args.topic, "header": message.header, "body": body}),
                    format,
                );
            }
        }
    }
    subscription
        .unsubscribe()
        .await
        .map_err(|e| CliError::Failed(format!("unsubscribe from `{}`: {e}", args.topic)))
}
