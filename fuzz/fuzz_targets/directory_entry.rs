//! `directory::parse_entry` on arbitrary bytes; what parses re-encodes to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::directory_entry(data));
