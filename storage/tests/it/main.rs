//! realm-storage's integration tests: one binary (`cargo test -p realm-storage --test it`),
//! a module per topic. Shared fixtures live in the `realm-testing` crate (without its
//! `torch` feature: these tests do not link libtorch).

mod api;
mod blobs;
mod corruption;
mod crash;
mod followers;
mod ivf;
mod lexical;
mod model;
mod phrase_corruption;
mod phrase_followers;
mod phrase_model;
mod phrases;
mod upsert;
