//! realm-trainer's integration tests: one binary (`cargo test -p realm-trainer --test it`),
//! a module per topic. Shared fixtures live in the `realm-testing` crate.
//!
//! Every test here holds `realm_testing_torch::global_rng_lock()` for its whole body, so they run
//! one at a time: dropout draws from libtorch's process-global generator, which
//! `Trainer::run` reseeds at every step, and the tests of one binary run on parallel
//! threads. Even a test that only builds an index must hold it: libtorch work on another
//! thread changed the weights of `qa::qa_run_resumes_bit_identically`'s resumed run.

mod blob_gc;
mod blob_gc_policy;
mod dual;
mod ict;
mod phrase;
mod phrase_query;
mod qa;
mod query_side;
mod realm;
mod resume;
mod spans;
