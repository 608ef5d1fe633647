//! Text for a POSIX shell: what the command line prints for a user to paste (the bench's
//! commands, the paths in a hint).

use std::ffi::OsStr;

/// `arg` as one word of a POSIX shell: as it is when nothing in it is special, else in single
/// quotes.
pub(crate) fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:@,+%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
