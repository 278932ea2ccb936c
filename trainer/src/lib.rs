//! # realm-trainer
//!
//! Retriever training on the live database (query-side fine-tuning, ICT, REALM with
//! asynchronous index refresh). Not built yet: this crate holds no code so far.
