//! realm-retriever's integration tests: one binary (`cargo test -p realm-retriever --test
//! it`), a module per topic. Shared fixtures live in the `realm-testing` crate.

mod checkpoints;
mod eval;
mod hybrid;
mod ivf;
mod parity;
mod phrase_generations;
mod phrase_ivf;
mod phrases;
mod pyregex;
mod query;
mod vectors;
