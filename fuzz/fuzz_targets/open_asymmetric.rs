//! Opening in asymmetric mode with the fixed test keys (Bob receives, Alice is trusted): arbitrary
//! bytes after a valid header through an `Opener`, and as a whole message through `open`.
#![no_main]

use letterlock::envelope::Mode;

libfuzzer_sys::fuzz_target!(|data: &[u8]| letterlock::fuzzing::open_target(Mode::Asymmetric, data));
