//! The escaping of peer text on arbitrary bytes: nothing a terminal acts on comes out.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::text(data));
