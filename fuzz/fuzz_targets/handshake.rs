//! The server's handshake check on an arbitrary `Auth` frame, with the fixed test keys (Bob
//! serves, Alice is the one trusted client) and a fixed challenge.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::handshake_target(data));
