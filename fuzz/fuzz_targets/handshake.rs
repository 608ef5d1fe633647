//! The server's handshake check on an arbitrary `Auth` frame, with the fixed test keys (Bob
//! serves, Alice is the one trusted client) and a fixed challenge.
#![no_main]

use std::sync::OnceLock;

use letterlock::fuzzing::{NetFixture, handshake};

fn fixture() -> &'static NetFixture {
    static FX: OnceLock<NetFixture> = OnceLock::new();
    FX.get_or_init(|| {
        NetFixture::from_pem(
            include_str!("../../tests/keys/bob2048_private.pem"),
            include_str!("../../tests/keys/alice2048_private.pem"),
        )
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = handshake(fixture(), data);
});
