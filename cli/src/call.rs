//! `micro call`: a method called by name through the framework's client, its request and reply
//! transcoded by reflection with the gateway's rules (`micro_core::dynamic`).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use futures::StreamExt;
use micro_core::Client;
use micro_core::dynamic::{self, DynamicCodec, MethodError};
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tokio::io::AsyncBufReadExt;
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::error::{CliError, status};
use crate::output::{self, Format};
use crate::services;

/// `micro call` arguments.
#[derive(clap::Args)]
pub(crate) struct CallArgs {
    /// The registered service (`greeter`)
    service: String,
    /// The endpoint: `Greeter.SayHello`, `SayHello` or `greeter.v1.Greeter/SayHello` (case, `-`
    /// and `_` ignored)
    endpoint: String,
    /// The request as JSON, or `@file`; without it (or with `-`) the request is read from stdin
    /// when stdin is not a terminal. Client and bidi streams take one JSON message per line.
    request: Option<String>,
    /// The request, as curl takes it: JSON, or `@file`
    #[arg(
        short = 'd',
        long = "data",
        value_name = "JSON|@FILE",
        conflicts_with = "request"
    )]
    data: Option<String>,
    /// Metadata sent with the call, `key:value` (repeatable)
    #[arg(short = 'H', long = "header", value_name = "KEY:VALUE", value_parser = header)]
    headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    /// Deadline of the call, e.g. 5s (unary calls default to --client-timeout)
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
    /// Call this node only: its id or address (see `micro describe`)
    #[arg(long, value_name = "ID|ADDRESS")]
    node: Option<String>,
}

fn header(
    text: &str,
) -> Result<
    (
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    ),
    String,
> {
    let (key, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not key:value"))?;
    let key = key.trim().to_ascii_lowercase();
    if key.ends_with("-bin") {
        return Err(format!("`{key}`: binary metadata is not supported"));
    }
    let key = MetadataKey::from_bytes(key.as_bytes())
        .map_err(|_| format!("`{key}` is not a valid metadata key"))?;
    let value = value
        .trim()
        .parse()
        .map_err(|_| format!("the value of `{key}` is not printable ASCII"))?;
    Ok((key, value))
}

fn duration(text: &str) -> Result<Duration, String> {
    text.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("`{text}` is not a duration like 5s: {e}"))
}

/// `greeter.v1.Greeter/SayHello` → (`greeter.v1.Greeter`, `SayHello`); `Greeter.SayHello` →
/// (`Greeter`, `SayHello`); `SayHello` → (none, `SayHello`).
fn split_endpoint(endpoint: &str) -> (Option<&str>, &str) {
    match endpoint
        .rsplit_once('/')
        .or_else(|| endpoint.rsplit_once('.'))
    {
        Some((service, method)) => (Some(service), method),
        None => (None, endpoint),
    }
}

/// Where the request comes from.
enum Source {
    Text(String),
    Stdin,
    Empty,
}

impl CallArgs {
    /// `message` with the metadata and deadline asked for.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (key, value) in &self.headers {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }

    fn source(&self) -> Result<Source, CliError> {
        match self.data.as_deref().or(self.request.as_deref()) {
            Some("-") => Ok(Source::Stdin),
            Some(text) => match text.strip_prefix('@') {
                Some("-") => Ok(Source::Stdin),
                Some(path) => std::fs::read_to_string(path)
                    .map(Source::Text)
                    .map_err(|e| {
                        CliError::Usage(format!("cannot read the request file `{path}`: {e}"))
                    }),
                None => Ok(Source::Text(text.to_string())),
            },
            None if std::io::stdin().is_terminal() => Ok(Source::Empty),
            None => Ok(Source::Stdin),
        }
    }
}

/// `micro call`.
pub(crate) async fn run(client: &Client, args: CallArgs, format: Format) -> Result<(), CliError> {
    let client = match args.timeout {
        Some(timeout) => client.clone().timeout(timeout),
        None => client.clone(),
    };
    let service = args.service.as_str();
    let versions = services::registered(&**client.registry(), service).await?;
    if versions.iter().all(|v| v.nodes.is_empty()) {
        return Err(CliError::Failed(format!(
            "`{service}` is registered but has no live node"
        )));
    }
    let node = args.node.as_deref();
    // An unknown `--node` is the client's NOT_FOUND (listing the nodes) at reflection: exit 2.
    let grpc_services = services::descriptors(&client, service, node).await?;
    let (grpc_service, method_name) = split_endpoint(&args.endpoint);
    let method =
        dynamic::find_method(service, &grpc_services, grpc_service, method_name).map_err(|e| {
            match e {
                MethodError::NotFound(m) | MethodError::Ambiguous(m) => CliError::Usage(m),
            }
        })?;
    let channel = match node {
        Some(node) => client.node_channel(service, node),
        None => client.channel(service),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let context = format!(
        "{service} {}.{}",
        method.parent_service().name(),
        method.name()
    );
    let codec = DynamicCodec::new(method.output());
    let path = dynamic::path(&method);
    let source = args.source()?;
    if method.is_client_streaming() {
        let (messages, mut bad_line) = stdin_messages(method.input(), source);
        let request = args.request(messages);
        let call = async {
            if method.is_server_streaming() {
                let replies = grpc
                    .streaming(request, path, codec)
                    .await
                    .map_err(|s| status(&context, &s))?;
                print_stream(replies.into_inner(), &context).await
            } else {
                let reply = grpc
                    .client_streaming(request, path, codec)
                    .await
                    .map_err(|s| status(&context, &s))?;
                print(reply.get_ref(), format)
            }
        };
        // A line that does not fit the message ends the call at once (dropping it cancels it).
        return tokio::select! {
            result = call => match bad_line.try_recv() {
                Ok(error) => Err(error),
                Err(_) => result,
            },
            Ok(error) = &mut bad_line => Err(error),
        };
    }
    let text = match source {
        Source::Text(text) => text,
        Source::Stdin => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        }
        Source::Empty => String::new(),
    };
    let message = decode(&method, text.as_bytes(), None)?;
    let request = args.request(message);
    if method.is_server_streaming() {
        let replies = grpc
            .server_streaming(request, path, codec)
            .await
            .map_err(|s| status(&context, &s))?;
        return print_stream(replies.into_inner(), &context).await;
    }
    let reply = grpc
        .unary(request, path, codec)
        .await
        .map_err(|s| status(&context, &s))?;
    print(reply.get_ref(), format)
}

fn decode(
    method: &MethodDescriptor,
    json: &[u8],
    line: Option<usize>,
) -> Result<DynamicMessage, CliError> {
    dynamic::from_json(&method.input(), json, false).map_err(|e| {
        let at = line
            .map(|n| format!(" (stdin line {n})"))
            .unwrap_or_default();
        CliError::Usage(format!(
            "the request does not fit {}{at}: {e}",
            method.input().full_name()
        ))
    })
}

fn print(message: &DynamicMessage, format: Format) -> Result<(), CliError> {
    let json = dynamic::to_json(message).map_err(|e| CliError::Failed(e.message))?;
    let value: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| CliError::Failed(e.to_string()))?;
    output::json(&value, format);
    Ok(())
}

/// Prints each reply as one JSON line as soon as it arrives.
async fn print_stream(
    mut replies: tonic::Streaming<DynamicMessage>,
    context: &str,
) -> Result<(), CliError> {
    while let Some(reply) = replies.message().await.map_err(|s| status(context, &s))? {
        let json = dynamic::to_json(&reply).map_err(|e| CliError::Failed(e.message))?;
        output::line(&String::from_utf8_lossy(&json));
    }
    Ok(())
}

/// The request stream of a client or bidi call: one JSON message per line (of stdin, or of the
/// given text), read as the call goes; a line that does not fit ends the stream and is
/// reported on the returned channel.
fn stdin_messages(
    input: MessageDescriptor,
    source: Source,
) -> (
    futures::stream::BoxStream<'static, DynamicMessage>,
    tokio::sync::oneshot::Receiver<CliError>,
) {
    let (bad_line, reported) = tokio::sync::oneshot::channel();
    let lines: futures::stream::BoxStream<'static, std::io::Result<String>> = match source {
        Source::Text(text) => {
            futures::stream::iter(text.lines().map(|l| Ok(l.to_string())).collect::<Vec<_>>())
                .boxed()
        }
        Source::Empty => futures::stream::empty().boxed(),
        Source::Stdin => tokio_stream::wrappers::LinesStream::new(
            tokio::io::BufReader::new(tokio::io::stdin()).lines(),
        )
        .boxed(),
    };
    let mut bad_line = Some(bad_line);
    let messages = lines
        .enumerate()
        .filter(|(_, line)| futures::future::ready(!matches!(line, Ok(l) if l.trim().is_empty())))
        .map(move |(index, line)| {
            let parsed = line.map_err(CliError::from).and_then(|line| {
                dynamic::from_json(&input, line.as_bytes(), false).map_err(|e| {
                    CliError::Usage(format!(
                        "stdin line {}: the message does not fit {}: {e}",
                        index + 1,
                        input.full_name()
                    ))
                })
            });
            match parsed {
                Ok(message) => Some(message),
                Err(error) => {
                    if let Some(report) = bad_line.take() {
                        let _ = report.send(error);
                    }
                    None
                }
            }
        })
        .take_while(|m| futures::future::ready(m.is_some()))
        .filter_map(futures::future::ready)
        .boxed();
    (messages, reported)
}

#[cfg(test)]
mod tests {
    use super::split_endpoint;

    #[test]
    fn splits_every_endpoint_form() {
        assert_eq!(
            split_endpoint("Greeter.SayHello"),
            (Some("Greeter"), "SayHello")
        );
        assert_eq!(
            split_endpoint("greeter.v1.Greeter/SayHello"),
            (Some("greeter.v1.Greeter"), "SayHello")
        );
        assert_eq!(
            split_endpoint("greeter.v1.Greeter.SayHello"),
            (Some("greeter.v1.Greeter"), "SayHello")
        );
        assert_eq!(split_endpoint("say-hello"), (None, "say-hello"));
    }
}
