//! What went wrong, and the exit code that says so.

use std::process::ExitCode;

/// A failed command: printed as one line on stderr, `micro: <message>`.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The user asked for something that cannot be: bad flags, an unknown service or
    /// endpoint, JSON that does not fit the message. Exit code 2.
    Usage(String),
    /// The operation was valid but failed: a call's gRPC error, an unreachable backend.
    /// Exit code 1.
    Failed(String),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (CliError::Usage(message) | CliError::Failed(message)) = self;
        // One line, whatever the cause carried.
        f.write_str(&message.replace('\n', " "))
    }
}

impl From<micro_core::Error> for CliError {
    fn from(error: micro_core::Error) -> Self {
        match error {
            micro_core::Error::Option(message) => CliError::Usage(message),
            other => CliError::Failed(other.to_string()),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        CliError::Failed(error.to_string())
    }
}

/// A gRPC status as `CODE: message`, for a failed call.
pub(crate) fn status(context: &str, status: &tonic::Status) -> CliError {
    CliError::Failed(format!(
        "{context}: {}: {}",
        micro_core::grpc::code_name(status.code()),
        status.message()
    ))
}
