//! realm-trainer's integration tests: one binary (`cargo test -p realm-trainer --test it`),
//! a module per topic. Shared fixtures live in the `realm-testing` crate.
//!
//! Every test that trains holds `realm_testing::global_rng_lock()` for its whole body:
//! dropout draws from libtorch's process-global generator, which `Trainer::run` reseeds,
//! and the tests of one binary run on parallel threads.

mod dual;
mod ict;
mod qa;
mod query_side;
mod realm;
mod resume;
