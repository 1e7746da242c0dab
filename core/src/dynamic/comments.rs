//! The leading proto comments the descriptors carry (when the server sent `source_code_info`),
//! as one line: the descriptions `micro describe`, OpenAPI and MCP show.

use prost_reflect::{FieldDescriptor, FileDescriptor, MessageDescriptor, MethodDescriptor};

/// The leading comment of the element at `path` in `file`, whitespace folded to single spaces.
fn leading(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let text = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|l| l.path == path)?
        .leading_comments
        .as_deref()?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!text.is_empty()).then_some(text)
}

/// The comment above an `rpc`.
pub fn method_comment(method: &MethodDescriptor) -> Option<String> {
    leading(&method.parent_file(), method.path())
}

/// The comment above a `message`.
pub fn message_comment(message: &MessageDescriptor) -> Option<String> {
    leading(&message.parent_file(), message.path())
}

/// The comment above a field.
pub fn field_comment(field: &FieldDescriptor) -> Option<String> {
    leading(&field.parent_file(), field.path())
}
