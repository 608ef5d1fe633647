//! `ArmorReader` on arbitrary text; what decodes re-armors to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::armor(data));
