//! The frame decoder on arbitrary bytes, frame after frame; what decodes re-encodes the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::frames(data));
