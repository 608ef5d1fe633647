//! The integration tests, one binary: every file here is a module, and `cargo test` runs their
//! tests side by side, four at a time (`RUST_TEST_THREADS` in `.cargo/config.toml`), where one
//! binary per file ran the files one after another (and linked the library 47 times). The files beside this folder (`tests/memory_*.rs`,
//! `tests/large.rs`, `tests/load.rs`, `tests/intercept_memory.rs`) stay binaries of their own:
//! they measure their process's memory, which tests running beside them would raise.
//!
//! Run one file's tests with `cargo test --test suite FILE::`, e.g. `cargo test --test suite
//! resend::`.

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod agent;
mod bench;
mod build_entropy;
mod client_to_client;
mod contacts;
mod conventions;
mod crash;
mod demo;
mod envelope;
mod forward_secrecy;
mod fuzz_corpus;
mod hostile;
mod intercept;
mod key_first;
mod mailbox;
mod network;
mod openssl;
mod padding;
mod passphrase;
mod pipeline;
mod properties;
mod refusals;
mod relay;
mod relay_server;
mod replay_client;
mod replay_server;
mod resend;
mod scaling;
mod secrets;
mod signals;
mod store;
mod store_conformance;
mod terminal;
mod timeouts;
mod tls;
mod trust;
mod trust_server;
mod vectors;
mod walkthrough;
