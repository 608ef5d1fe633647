//! The client agent's request and reply decoders on arbitrary bytes; what decodes re-encodes to
//! the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::agent_frames(data));
