//! Cross-crate integration tests of realm-db live in `tests/tests/`.
