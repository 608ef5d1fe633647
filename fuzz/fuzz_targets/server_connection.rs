//! The real server's connection handling (handshake, messages, fetches, acks) driven by
//! arbitrary client bytes over an in-memory stream, with a SQLite store in a temporary folder.
//! The first byte's bit 0 makes the harness authenticate as the trusted client first.
#![no_main]

use std::sync::OnceLock;

use letterlock::fuzzing::{NetFixture, ServerFixture, server_connection};

fn fixture() -> &'static ServerFixture {
    static FX: OnceLock<ServerFixture> = OnceLock::new();
    FX.get_or_init(|| {
        ServerFixture::new(NetFixture::from_pem(
            include_str!("../../tests/keys/bob2048_private.pem"),
            include_str!("../../tests/keys/alice2048_private.pem"),
        ))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = server_connection(fixture(), data);
});
