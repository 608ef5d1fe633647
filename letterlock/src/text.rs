//! Escaping text that came from a peer before it reaches a terminal or a log; and, for messages
//! shown to people, [`ByteCount`], a count of bytes in words ("1 byte", "2 bytes"), and
//! [`TimeSpan`], a duration in words ("1 year", "10 minutes", "2.5 seconds").
//!
//! A peer controls the text of its Error frames, a trusted client's message plaintext, and (for
//! the operator) nothing else that we print; a terminal obeys control sequences in what it
//! shows. Printed raw, `\r\x1b[2K` erases the line before it and a fake `delivered` line takes
//! its place; a CR or LF in a log field forges a log line; a right-to-left override reverses
//! what follows it on screen. Everything the programs show from a peer goes through [`Escaped`],
//! the one escaping routine of the project, which no byte sequence can make emit such a
//! character.
//!
//! Invariant: the output of [`Escaped`] contains no character from [`is_unsafe`] except, in
//! [`Style::Content`], LF and tab; its only other non-printable characters are none. Valid UTF-8
//! outside that set is shown as it is; a byte that is not part of valid UTF-8 is shown as
//! `\xNN`. The three styles:
//!
//! - [`quoted`]: a peer's words inside double quotes, for a label such as
//!   `the server says: "..."`; `"`, `\` and every unsafe character escaped, so the quote ends
//!   exactly where the peer's words end.
//! - [`content`]: message plaintext on a terminal: lines and tabs kept, `\` and every other
//!   unsafe character escaped, so an escaped sequence cannot be mistaken for literal text.
//! - [`line()`]: text made by us that may contain a peer's words already escaped (an error chain):
//!   unsafe characters escaped, backslashes kept so an escape is not escaped twice.

use std::fmt;
use std::io;
use std::time::Duration;

/// How [`Escaped`] renders its text; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Inside double quotes, everything unsafe escaped (a peer's words).
    Quoted,
    /// LF and tab kept, everything else unsafe escaped (plaintext on a terminal).
    Content,
    /// Unsafe characters escaped, backslashes kept (our own text around escaped peer text).
    Line,
}

/// Bytes shown safely: `Display` writes them escaped in the chosen [`Style`]. Cheap to build:
/// nothing is copied until it is formatted, so it fits in a log field (`%Escaped`).
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    /// The peer's bytes, possibly not UTF-8.
    bytes: &'a [u8],
    style: Style,
}

/// A peer's words, quoted and escaped: `"..."`.
pub fn quoted(text: &(impl AsRef<[u8]> + ?Sized)) -> Escaped<'_> {
    Escaped {
        bytes: text.as_ref(),
        style: Style::Quoted,
    }
}

/// Message plaintext for a terminal: lines kept, everything else unsafe escaped.
pub fn content(bytes: &[u8]) -> Escaped<'_> {
    Escaped {
        bytes,
        style: Style::Content,
    }
}

/// Our own text, which may carry a peer's escaped words: unsafe characters escaped, backslashes
/// left alone.
pub fn line(text: &str) -> Escaped<'_> {
    Escaped {
        bytes: text.as_bytes(),
        style: Style::Line,
    }
}

/// Characters a terminal or a log reader may act on instead of showing: C0 and C1 controls and
/// DEL (ESC starts a terminal sequence; CR and LF rewrite or add lines), the bidirectional
/// overrides, embeddings and isolates (they reorder what follows on screen), zero-width and
/// invisible format characters (they hide or join text), the line and paragraph separators, the
/// byte order mark and the interlinear annotation marks.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

impl Escaped<'_> {
    /// Writes the escaped text piece by piece to `out`.
    fn render(&self, out: &mut impl fmt::Write) -> fmt::Result {
        if self.style == Style::Quoted {
            out.write_char('"')?;
        }
        for chunk in self.bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                self.char(c, out)?;
            }
            for b in chunk.invalid() {
                write!(out, "\\x{b:02x}")?;
            }
        }
        if self.style == Style::Quoted {
            out.write_char('"')?;
        }
        Ok(())
    }

    fn char(&self, c: char, out: &mut impl fmt::Write) -> fmt::Result {
        match (c, self.style) {
            ('\n' | '\t', Style::Content) => out.write_char(c),
            ('\\', Style::Quoted | Style::Content) => out.write_str("\\\\"),
            ('"', Style::Quoted) => out.write_str("\\\""),
            ('\n', _) => out.write_str("\\n"),
            ('\r', _) => out.write_str("\\r"),
            ('\t', _) => out.write_str("\\t"),
            (c, _) if c.is_ascii_control() => write!(out, "\\x{:02x}", c as u32),
            (c, _) if is_unsafe(c) => write!(out, "\\u{{{:x}}}", c as u32),
            (c, _) => out.write_char(c),
        }
    }

    /// Writes the escaped text to `out` through a fixed buffer that is wiped afterwards: the
    /// text may be message plaintext, which must not linger in freed memory (a `String` that
    /// grows would leave copies behind).
    pub fn write_to(&self, out: &mut impl io::Write) -> io::Result<()> {
        let mut sink = WipedSink {
            buf: zeroize::Zeroizing::new(Vec::with_capacity(WIPED_SINK_CAP + 16)),
            out,
            error: None,
        };
        let r = self.render(&mut sink);
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        r.map_err(|_| io::Error::other("formatting failed"))?;
        sink.flush_buf()
    }
}

impl fmt::Display for Escaped<'_> {
    /// Honours a width (`{:<16}`), so tables of names line up: padding needs the escaped text's
    /// length first, so it is rendered into a short string then. Message content is never
    /// printed padded, so no plaintext copy is made this way.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() && f.precision().is_none() {
            return self.render(f);
        }
        let mut shown = String::new();
        self.render(&mut shown)?;
        f.pad(&shown)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        quoted(self.bytes).render(f)
    }
}

/// Bytes [`Escaped::write_to`] gathers before one write: few system calls, a bounded buffer.
const WIPED_SINK_CAP: usize = 16 * 1024;

/// A `fmt::Write` that batches into a zeroized buffer of fixed capacity and writes it out when
/// full (never reallocating, so no copy of the text is left behind).
struct WipedSink<'w, W: io::Write> {
    buf: zeroize::Zeroizing<Vec<u8>>,
    out: &'w mut W,
    /// The first write error, kept because `fmt::Error` carries none.
    error: Option<io::Error>,
}

impl<W: io::Write> WipedSink<'_, W> {
    fn flush_buf(&mut self) -> io::Result<()> {
        let r = self.out.write_all(&self.buf);
        zeroize::Zeroize::zeroize(&mut *self.buf);
        self.buf.clear();
        r
    }
}

impl<W: io::Write> fmt::Write for WipedSink<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Pieces are one character or one escape (at most 10 bytes): the buffer never grows.
        if self.buf.len() + s.len() > self.buf.capacity()
            && let Err(e) = self.flush_buf()
        {
            self.error = Some(e);
            return Err(fmt::Error);
        }
        self.buf.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A count of bytes for a message a person reads: "1 byte", "0 bytes", "2 bytes". The one place
/// that picks the word, so no message says "1 bytes". Log fields and JSON keep the bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteCount(pub u64);

impl From<usize> for ByteCount {
    fn from(n: usize) -> Self {
        // usize is at most 64 bits on every target Rust supports.
        ByteCount(n as u64)
    }
}

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 byte"),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// A duration in words, for messages shown to people: "1 year", "1 hour 30 minutes",
/// "2.5 seconds", "300 milliseconds". Every duration the programs show goes through it, so a
/// `--persist 1y` is said back as "1 year", not humantime's "1year" or "31557600 s".
///
/// Years and months are the lengths humantime parses them as (365.25 days, 30.44 days), so a
/// duration given as `1y` or `2months` is said back as given. Under a minute, tenths of a
/// second are kept ("2.5 seconds"); under a second, milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSpan(pub Duration);

/// The units [`TimeSpan`] names, largest first, in seconds.
const SPAN_UNITS: [(u64, &str); 6] = [
    (31_557_600, "year"),
    (2_630_016, "month"),
    (86_400, "day"),
    (3_600, "hour"),
    (60, "minute"),
    (1, "second"),
];

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        if d.is_zero() {
            return f.write_str("0 seconds");
        }
        if d < Duration::from_secs(1) {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            return write!(f, "{ms} millisecond{}", plural(ms));
        }
        if d < Duration::from_secs(60) && d.subsec_millis() >= 100 {
            // Tenths cut, not rounded: 59.96 s is not "60.0 seconds".
            let tenths = d.as_millis() / 100;
            return write!(f, "{}.{} seconds", tenths / 10, tenths % 10);
        }
        let mut left = d.as_secs();
        let mut first = true;
        for (size, name) in SPAN_UNITS {
            let n = left / size;
            // Years and months only for a span that is a whole number of them (`1y`,
            // `2months`): 90 days are "90 days", not "2 months 29 days 2 hours 52 minutes 48
            // seconds" (found by a review).
            let calendar = size > 86_400;
            if n == 0 || (calendar && !left.is_multiple_of(size)) {
                continue;
            }
            left %= size;
            let sep = if first { "" } else { " " };
            write!(f, "{sep}{n} {name}{}", plural(n))?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_span_is_said_in_words_with_the_units_humantime_parses() {
        let said = |text: &str| TimeSpan(humantime::parse_duration(text).unwrap()).to_string();
        assert_eq!(said("1y"), "1 year");
        assert_eq!(said("2y"), "2 years");
        assert_eq!(said("2months"), "2 months");
        assert_eq!(said("30d"), "30 days");
        assert_eq!(said("10m"), "10 minutes");
        assert_eq!(said("1h 30m"), "1 hour 30 minutes");
        assert_eq!(said("1d 1s"), "1 day 1 second");
        assert_eq!(said("30s"), "30 seconds");
        assert_eq!(said("1s"), "1 second");
        assert_eq!(said("2500ms"), "2.5 seconds");
        assert_eq!(said("1001ms"), "1 second");
        assert_eq!(said("300ms"), "300 milliseconds");
        assert_eq!(said("90d"), "90 days");
        assert_eq!(said("365d"), "365 days");
        assert_eq!(said("31d 10m"), "31 days 10 minutes");
        assert_eq!(said("59960ms"), "59.9 seconds");
        assert_eq!(said("1ms"), "1 millisecond");
        assert_eq!(said("0s"), "0 seconds");
        // Past a minute, what is under a second is left out.
        assert_eq!(said("90s 500ms"), "1 minute 30 seconds");
        // No panic at the largest; not a whole number of years, so in days.
        assert!(
            TimeSpan(Duration::MAX)
                .to_string()
                .starts_with("213503982334601 days "),
            "{}",
            TimeSpan(Duration::MAX)
        );
    }

    #[test]
    fn one_byte_is_singular() {
        assert_eq!(ByteCount(0).to_string(), "0 bytes");
        assert_eq!(ByteCount(1).to_string(), "1 byte");
        assert_eq!(ByteCount(2).to_string(), "2 bytes");
        assert_eq!(ByteCount::from(1_usize).to_string(), "1 byte");
        assert_eq!(
            ByteCount(u64::MAX).to_string(),
            format!("{} bytes", u64::MAX)
        );
    }

    #[test]
    fn a_width_pads_the_escaped_text() {
        assert_eq!(format!("{:<6}|", line("bob")), "bob   |");
        assert_eq!(format!("{:>6}|", quoted("a")), "   \"a\"|");
        // The escaped form is what is measured: a control character takes its escape's width.
        assert_eq!(
            format!("{:<8}|", line("a\u{1b}")),
            format!("{:<8}|", line("a\u{1b}").to_string())
        );
        assert_eq!(format!("{}", line("bob")), "bob");
    }

    fn q(b: &[u8]) -> String {
        quoted(b).to_string()
    }

    fn c(b: &[u8]) -> String {
        content(b).to_string()
    }

    #[test]
    fn terminal_sequences_and_line_breaks_are_escaped() {
        assert_eq!(
            q(b"\r\x1b[2Kdelivered: ok\n"),
            r#""\r\x1b[2Kdelivered: ok\n""#
        );
        assert_eq!(c(b"a\r\x1b[2Kb\nc\td"), "a\\r\\x1b[2Kb\nc\td");
        assert_eq!(line("x\ny\\x1b").to_string(), "x\\ny\\x1b");
        // DEL and the C1 controls (CSI is U+009B).
        assert_eq!(q("\u{7f}\u{9b}2J".as_bytes()), r#""\x7f\u{9b}2J""#);
    }

    #[test]
    fn quotes_and_backslashes_cannot_end_the_quote_or_fake_an_escape() {
        assert_eq!(q(br#"a" and "b\x1b"#), r#""a\" and \"b\\x1b""#);
        assert_eq!(c(br"\x1b"), r"\\x1b");
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_are_escaped() {
        assert_eq!(
            q("\u{202E}gnp.exe\u{2066}\u{200B}\u{FEFF}\u{2028}".as_bytes()),
            r#""\u{202e}gnp.exe\u{2066}\u{200b}\u{feff}\u{2028}""#
        );
    }

    #[test]
    fn printable_text_in_any_script_is_kept_and_invalid_bytes_are_shown_as_hex() {
        assert_eq!(
            q("héllo, мир, 世界 🙂".as_bytes()),
            "\"héllo, мир, 世界 🙂\""
        );
        assert_eq!(q(b"ok\xff\xc3"), r#""ok\xff\xc3""#);
    }

    #[test]
    fn no_input_yields_an_unsafe_character() {
        // Every single byte, every pair of bytes and a set of multi-byte characters.
        let mut inputs: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for a in [0x1bu8, b'\r', b'\n', 0xc2, 0xe2, 0xef, b'\\', b'"'] {
            for b in 0..=255u8 {
                inputs.push(vec![a, b]);
            }
        }
        for c in ['\u{202E}', '\u{2066}', '\u{9b}', '\u{85}', '\u{E0041}'] {
            inputs.push(c.to_string().into_bytes());
        }
        for input in &inputs {
            for (text, keep) in [(q(input), ""), (c(input), "\n\t")] {
                assert!(
                    !text.chars().any(|ch| is_unsafe(ch) && !keep.contains(ch)),
                    "{input:02x?} -> {text:?}"
                );
            }
        }
    }

    #[test]
    fn write_to_writes_the_same_text_as_display_across_buffer_boundaries() {
        let mut big = Vec::new();
        for i in 0..20_000u32 {
            big.extend_from_slice(b"line \x1b[2K\xff");
            big.extend_from_slice(i.to_string().as_bytes());
            big.push(b'\n');
        }
        for e in [content(&big), quoted(&big)] {
            let mut out = Vec::new();
            e.write_to(&mut out).unwrap();
            assert_eq!(out, e.to_string().into_bytes());
        }
    }
}
