//! The real server's connection handling (handshake, messages, fetches, acks) driven by
//! arbitrary client bytes over an in-memory stream, with a SQLite store in a temporary folder.
//! The first byte's bit 0 makes the harness authenticate as the trusted client first.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::server_connection_target(data));
