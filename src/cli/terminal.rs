//! What reaches the user's terminal, and how (issue 10, "Terminal safety").
//!
//! A terminal obeys the control sequences in what it prints: a peer that gets its bytes onto our
//! screen raw can erase lines and print its own (`\r\x1b[2K` and a fake "delivered"). So:
//!
//! - Content (message plaintext) goes to stdout, status lines to stderr: `recv_msg > file` gets
//!   only the content.
//! - Content goes raw only to pipes and files. On a terminal it is shown through the library's
//!   escaping ([`letterlock::text::content`]: lines kept, every other control character
//!   escaped), and binary content (not UTF-8) is refused with a hint to save it with `-o`, as
//!   `seal` refuses to write binary to a terminal; an explicit `-o -` shows it, still escaped.
//! - A peer's words (the text of an Error frame, a client's name) are shown quoted, escaped and
//!   labelled as theirs ([`letterlock::text::quoted`]; the library's errors already do it).
//! - Whatever we print on stderr passes through [`letterlock::text::line`] once more, so no
//!   error text, whatever it quotes, can move the cursor.

use std::fs::File;
use std::io::{self, IsTerminal, Write};

/// The hint given when binary content would go to a terminal.
const BINARY_REFUSED: &str = "refusing to print a binary message to a terminal; save it with -o \
     FILE, pipe it, or pass -o - to show it here escaped";

/// Whether to colour what goes to a stream that `is_terminal` says is (or is not) a terminal:
/// only a terminal, and not when the user asked for none: `NO_COLOR` set to anything but the
/// empty string (no-color.org), or `TERM=dumb` (found by a trial run: the log was coloured
/// whatever `NO_COLOR` said, while clap's own messages in the same binary obeyed it).
pub fn colour(is_terminal: bool) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    is_terminal && !no_color && !dumb
}

/// Whether stdout is a terminal (then content is escaped, and binary content refused).
pub(super) fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// Writes message content to stdout: raw to a pipe or file (then `newline` adds a final line
/// break, for callers that separate several messages), escaped to a terminal (always ending
/// with a line break, so the prompt does not land on the message's last line). Binary content
/// is refused on a terminal, before anything is written.
pub(super) fn write_content(plain: &[u8], newline: bool) -> io::Result<()> {
    with_raw_stdout(|out| write_content_to(out, plain, newline))
}

/// [`write_content`] to `out`, which is stdout or what `-o` named in its place (a device or a
/// named pipe, `-o /dev/stdout` or `-o /dev/tty`): the same rules when it is a terminal.
pub(super) fn write_content_to(out: &mut File, plain: &[u8], newline: bool) -> io::Result<()> {
    if out.is_terminal() && std::str::from_utf8(plain).is_err() {
        return Err(io::Error::other(BINARY_REFUSED));
    }
    write_shown(out, plain, newline)
}

/// [`write_content`] for an explicit `-o -`: binary content is shown on a terminal too, instead
/// of refused. The user named stdout, as age's `-o -` forces binary output there; it is still
/// escaped (each byte that is not UTF-8 as `\xNN`): a peer's bytes reach a terminal raw never.
pub(super) fn write_content_asked(plain: &[u8]) -> io::Result<()> {
    with_raw_stdout(|out| write_shown(out, plain, false))
}

/// Writes content to `out`: escaped on a terminal, ending with a line break; raw elsewhere,
/// with a final line break if `newline`.
fn write_shown(out: &mut File, plain: &[u8], newline: bool) -> io::Result<()> {
    if out.is_terminal() {
        letterlock::text::content(plain).write_to(out)?;
        if !plain.is_empty() && !plain.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    } else {
        out.write_all(plain)?;
        if newline {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Runs `f` on file descriptor 1 itself, after what stdout already holds: stdout's own buffer
/// would keep the last partial line of the plaintext, and nothing wipes it.
fn with_raw_stdout(f: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    use std::os::fd::AsFd;
    // Held throughout, so nothing else printed lands in the middle.
    let mut stdout = io::stdout().lock();
    stdout.flush()?;
    let mut out = File::from(stdout.as_fd().try_clone_to_owned()?);
    f(&mut out)
}

/// Prints the final error of a command on stderr, every control character but the line break
/// escaped: error texts quote peers (already escaped by the library, which this does not undo) and file names.
pub(super) fn print_error(text: &str) {
    // Errors that list things (the candidates of an ambiguous id) keep their line breaks; each
    // line is escaped on its own, and continuation lines are indented, so nothing in an error
    // can pass for a line of its own.
    let mut lines = text.split('\n');
    eprintln!(
        "letterlock: error: {}",
        letterlock::text::line(lines.next().unwrap_or(""))
    );
    for rest in lines {
        eprintln!("  {}", letterlock::text::line(rest.trim_start()));
    }
}
