//! The leading proto comments the descriptors carry (when the server sent `source_code_info`),
//! as one line: the descriptions `micro describe`, OpenAPI and MCP show.

use prost_reflect::{FieldDescriptor, MessageDescriptor, MethodDescriptor};
use prost_types::FileDescriptorProto;

/// The leading comment of the element at `path` in `file` (any element: an enum, an enum value,
/// a service, ...), whitespace folded to single spaces.
pub fn leading_comment(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    let text = file
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
    leading_comment(method.parent_file().file_descriptor_proto(), method.path())
}

/// The comment above a `message`.
pub fn message_comment(message: &MessageDescriptor) -> Option<String> {
    leading_comment(
        message.parent_file().file_descriptor_proto(),
        message.path(),
    )
}

/// The comment above a field.
pub fn field_comment(field: &FieldDescriptor) -> Option<String> {
    leading_comment(field.parent_file().file_descriptor_proto(), field.path())
}
