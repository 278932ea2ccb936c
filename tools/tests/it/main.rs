//! realm-tools' integration tests: one binary (`cargo test -p realm-tools --test it`), a
//! module per topic. Shared fixtures live in the `realm-testing` crate.

mod cli;
mod corpus;
mod delete;
mod gc;
mod index;
mod phrases;
mod processes;
mod robustness;
mod upsert;
