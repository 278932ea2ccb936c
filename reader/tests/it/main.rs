//! realm-reader's integration tests: one binary (`cargo test -p realm-reader --test it`), a
//! module per topic. Shared fixtures live in the `realm-testing` crate.

mod answers;
mod checkpoints;
mod mlm;
mod reader;
