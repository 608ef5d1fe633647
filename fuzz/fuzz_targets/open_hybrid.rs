//! Opening in hybrid mode with the fixed test keys (Bob receives, Alice is trusted): arbitrary
//! bytes after a valid header through an `Opener`, and as a whole message through `open`.
#![no_main]

use std::sync::OnceLock;

use letterlock::envelope::Mode;
use letterlock::fuzzing::{Fixture, open_after_header, open_whole};

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        Fixture::from_pem(
            include_str!("../../tests/keys/bob2048_private.pem"),
            include_str!("../../tests/keys/alice2048_public.pem"),
        )
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = open_after_header(fixture(), Mode::Hybrid, data);
    let _ = open_whole(fixture(), data);
});
