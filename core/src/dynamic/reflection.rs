//! Fetching a service's descriptors by gRPC reflection: v1 first, v1alpha when the server
//! answers Unimplemented; missing dependencies fetched by file name; well-known types from
//! prost-reflect's pool when the server does not send them.

use std::collections::BTreeMap;

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use tonic::{Code, Status};

use crate::client::ServiceChannel;

/// Services of the framework itself, never routed.
pub fn is_builtin(service: &str) -> bool {
    service.starts_with("grpc.reflection.") || service.starts_with("grpc.health.")
}

/// Asks one reflection question, answered with a list of names or of encoded files.
enum Question {
    ListServices,
    FileContainingSymbol(String),
    FileByFilename(String),
}

enum Answer {
    Services(Vec<String>),
    Files(Vec<Vec<u8>>),
}

/// The same conversation for both reflection versions, whose generated types differ by module.
macro_rules! ask_with {
    ($name:ident, $pb:path) => {
        async fn $name(channel: ServiceChannel, question: &Question) -> Result<Answer, Status> {
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;
            let message_request = match question {
                Question::ListServices => MessageRequest::ListServices(String::new()),
                Question::FileContainingSymbol(symbol) => {
                    MessageRequest::FileContainingSymbol(symbol.clone())
                }
                Question::FileByFilename(name) => MessageRequest::FileByFilename(name.clone()),
            };
            let request = pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message_request),
            };
            let mut client = pb::server_reflection_client::ServerReflectionClient::new(channel);
            let mut stream = client
                .server_reflection_info(tokio_stream::once(request))
                .await?
                .into_inner();
            let response = stream
                .message()
                .await?
                .ok_or_else(|| Status::internal("the reflection stream ended without an answer"))?;
            // Read on to the trailers (one request, so the server ends the stream at once): a
            // stream dropped early is a CANCELLED call in the service's metrics.
            while let Ok(Some(_)) = stream.message().await {}
            match response.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => Ok(Answer::Services(
                    list.service.into_iter().map(|s| s.name).collect(),
                )),
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    Ok(Answer::Files(files.file_descriptor_proto))
                }
                Some(MessageResponse::ErrorResponse(e)) => {
                    Err(Status::new(Code::from_i32(e.error_code), e.error_message))
                }
                _ => Err(Status::internal("unexpected reflection answer")),
            }
        }
    };
}

ask_with!(ask_v1, tonic_reflection::pb::v1);
ask_with!(ask_v1alpha, tonic_reflection::pb::v1alpha);

/// The descriptors of every routable gRPC service behind `channel`, and their names.
pub async fn fetch(channel: ServiceChannel) -> Result<(DescriptorPool, Vec<String>), Status> {
    let v1alpha = match ask_v1(channel.clone(), &Question::ListServices).await {
        Ok(answer) => return fetch_with(channel, answer, false).await,
        Err(status) if status.code() == Code::Unimplemented => true,
        Err(status) => return Err(status),
    };
    let answer = ask_v1alpha(channel.clone(), &Question::ListServices).await.map_err(|status| {
        if status.code() == Code::Unimplemented {
            Status::unimplemented("the service does not serve gRPC reflection (v1 or v1alpha), so it cannot be called by name")
        } else {
            status
        }
    })?;
    fetch_with(channel, answer, v1alpha).await
}

async fn fetch_with(
    channel: ServiceChannel,
    services: Answer,
    v1alpha: bool,
) -> Result<(DescriptorPool, Vec<String>), Status> {
    let ask = |question: Question| {
        let channel = channel.clone();
        async move {
            if v1alpha {
                ask_v1alpha(channel, &question).await
            } else {
                ask_v1(channel, &question).await
            }
        }
    };
    let Answer::Services(names) = services else {
        return Err(Status::internal("unexpected reflection answer"));
    };
    let names: Vec<String> = names.into_iter().filter(|n| !is_builtin(n)).collect();
    let mut files: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    for name in &names {
        add_files(
            &mut files,
            ask(Question::FileContainingSymbol(name.clone())).await?,
        )?;
    }
    // Fetch dependencies the server did not send along, bounded against cycles.
    for _ in 0..64 {
        let missing: Vec<String> = files
            .values()
            .flat_map(|f| f.dependency.iter())
            .filter(|d| !files.contains_key(*d))
            .cloned()
            .collect();
        let Some(dependency) = missing.into_iter().next() else {
            break;
        };
        let known = DescriptorPool::global()
            .get_file_by_name(&dependency)
            .map(|f| f.file_descriptor_proto().clone());
        match known {
            Some(file) => {
                files.insert(dependency, file);
            }
            None => add_files(&mut files, ask(Question::FileByFilename(dependency)).await?)?,
        }
    }
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(in_dependency_order(files))
        .map_err(|e| {
            Status::internal(format!("the service's descriptors are inconsistent: {e}"))
        })?;
    Ok((pool, names))
}

fn add_files(
    files: &mut BTreeMap<String, FileDescriptorProto>,
    answer: Answer,
) -> Result<(), Status> {
    let Answer::Files(encoded) = answer else {
        return Err(Status::internal("unexpected reflection answer"));
    };
    for bytes in encoded {
        let file = FileDescriptorProto::decode(bytes.as_slice())
            .map_err(|e| Status::internal(format!("bad descriptor from reflection: {e}")))?;
        files.insert(file.name().to_string(), file);
    }
    Ok(())
}

/// Files ordered so each comes after its dependencies.
fn in_dependency_order(
    mut files: BTreeMap<String, FileDescriptorProto>,
) -> Vec<FileDescriptorProto> {
    let mut ordered = Vec::with_capacity(files.len());
    while let Some(name) = files.keys().next().cloned() {
        visit(&name, &mut files, &mut ordered);
    }
    ordered
}

fn visit(
    name: &str,
    files: &mut BTreeMap<String, FileDescriptorProto>,
    ordered: &mut Vec<FileDescriptorProto>,
) {
    let Some(file) = files.remove(name) else {
        return;
    };
    for dependency in &file.dependency {
        visit(dependency, files, ordered);
    }
    ordered.push(file);
}
