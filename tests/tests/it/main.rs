//! Cross-crate integration tests of realm-db: one binary (`cargo test -p realm-tests --test
//! it`), a module per topic. Shared fixtures live in the `realm-testing` crate.

mod concurrency;
