//! Placeholder: filled by the events conformance suite.
