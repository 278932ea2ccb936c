//! # realm-reader
//!
//! The knowledge-augmented reader of realm-db (span extraction marginalized over the
//! retrieved passages). Not built yet: this crate holds no code so far.
