//! Embedding examples for the imapproxy crates: see the `[[example]]` targets.
