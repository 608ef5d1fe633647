//! ASCII armor: a sealed message as base64 text between BEGIN/END lines, as age and PGP do, so
//! it survives email bodies and terminals.
//!
//! ```text
//! -----BEGIN LETTERLOCK MESSAGE-----
//! base64, 64 characters a line
//! -----END LETTERLOCK MESSAGE-----
//! ```
//!
//! Reading is strict and canonical (docs/PROTOCOL.md, section 9): exactly one text is accepted
//! for each message, the one [`ArmorWriter`] writes, up to leading and trailing whitespace and
//! LF or CRLF line endings. So armored text cannot carry anything besides the message (no
//! hidden second message, no trailing payload), and what parses re-armors to the same lines.
//!
//! Both directions stream. The reader never holds more than one line: a line is refused as soon
//! as it is longer than [`MAX_LINE`] characters, before it is kept.

use std::io::{self, BufRead, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub const BEGIN: &str = "-----BEGIN LETTERLOCK MESSAGE-----";
pub const END: &str = "-----END LETTERLOCK MESSAGE-----";
/// Characters per base64 line (48 bytes of message).
const LINE: usize = 64;
/// Longest line the reader accepts, in characters, not counting its LF or CRLF ending: the
/// canonical line width. Every line a writer produces (BEGIN, END, body) fits; anything longer
/// is refused before it is held.
pub const MAX_LINE: usize = LINE;

/// Why armored text was refused. Carried inside the [`io::Error`] (kind `InvalidData`) that
/// [`ArmorReader`] returns; find it with [`ArmorError::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArmorError {
    #[error("bad armor: text before the BEGIN line, or no BEGIN line")]
    NoBegin,
    #[error("bad armor: a line is longer than {MAX_LINE} characters")]
    LineTooLong,
    #[error("bad armor: a line does not end like the BEGIN line (LF or CRLF, the same throughout)")]
    LineEnding,
    #[error("bad armor: a body line is empty, or not a multiple of 4 characters")]
    LineLength,
    #[error("bad armor: a body line follows a short or padded one (only the last may be)")]
    AfterLastLine,
    #[error("bad armor: invalid or non-canonical base64")]
    Base64,
    #[error("bad armor: the input ends before the END line")]
    NoEnd,
    #[error("bad armor: something other than whitespace after the END line")]
    AfterEnd,
}

impl ArmorError {
    /// The armor error inside an error [`ArmorReader`] returned, if it is one.
    pub fn of(e: &io::Error) -> Option<ArmorError> {
        e.get_ref()?.downcast_ref::<ArmorError>().copied()
    }
}

impl From<ArmorError> for io::Error {
    fn from(e: ArmorError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Wraps a writer: bytes written come out armored. Call [`ArmorWriter::finish`] at the end.
pub struct ArmorWriter<W: Write> {
    inner: W,
    /// Bytes not yet encoded: fewer than one line's worth.
    pending: Vec<u8>,
    started: bool,
}

impl<W: Write> ArmorWriter<W> {
    pub fn new(inner: W) -> Self {
        ArmorWriter {
            inner,
            pending: Vec::with_capacity(LINE / 4 * 3),
            started: false,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            writeln!(self.inner, "{BEGIN}")?;
            self.started = true;
        }
        Ok(())
    }

    /// Writes the last line and the END line; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.start()?;
        if !self.pending.is_empty() {
            writeln!(self.inner, "{}", STANDARD.encode(&self.pending))?;
        }
        writeln!(self.inner, "{END}")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ArmorWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        self.start()?;
        let written = buf.len();
        let per_line = LINE / 4 * 3;
        let mut text = String::new();
        while !buf.is_empty() {
            let take = (per_line - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == per_line {
                STANDARD.encode_string(&self.pending, &mut text);
                text.push('\n');
                self.pending.clear();
            }
        }
        self.inner.write_all(text.as_bytes())?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Wraps a buffered reader of armored text: reads give the message bytes. Refuses (with an
/// [`ArmorError`]) anything but the canonical armor of a message.
pub struct ArmorReader<R: BufRead> {
    inner: R,
    /// Decoded bytes not yet handed out (at most one line's worth).
    decoded: Vec<u8>,
    pos: usize,
    state: State,
    /// Whether lines end in CRLF (set by the BEGIN line) rather than LF.
    crlf: bool,
}

#[derive(PartialEq)]
enum State {
    BeforeBegin,
    /// Full 64-character lines so far: another body line or END may follow.
    Body,
    /// A short or padded line was read: only END may follow.
    AfterLast,
    Done,
}

/// One line as read: its characters, and whether it had a line ending at all.
struct Line {
    text: Vec<u8>,
    /// `None`: the input ended without a line ending; otherwise whether it was CRLF.
    crlf: Option<bool>,
}

impl<R: BufRead> ArmorReader<R> {
    pub fn new(inner: R) -> Self {
        ArmorReader {
            inner,
            decoded: Vec::with_capacity(LINE / 4 * 3),
            pos: 0,
            state: State::BeforeBegin,
            crlf: false,
        }
    }

    /// Reads one line, refusing any longer than [`MAX_LINE`] characters before holding it.
    /// `None` at the end of the input.
    fn line(&mut self) -> io::Result<Option<Line>> {
        let mut raw = Vec::with_capacity(MAX_LINE + 2);
        // At most MAX_LINE characters and a CRLF.
        let n = (&mut self.inner)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(None);
        }
        let crlf = if raw.last() == Some(&b'\n') {
            raw.pop();
            if raw.last() == Some(&b'\r') {
                raw.pop();
                Some(true)
            } else {
                Some(false)
            }
        } else if raw.len() > MAX_LINE {
            return Err(ArmorError::LineTooLong.into());
        } else {
            None
        };
        if raw.len() > MAX_LINE {
            return Err(ArmorError::LineTooLong.into());
        }
        Ok(Some(Line { text: raw, crlf }))
    }

    /// Skips ASCII whitespace without holding it (before BEGIN); `true` if input remains.
    fn skip_whitespace(&mut self) -> io::Result<bool> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(false);
            }
            let n = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let more = n < buf.len();
            self.inner.consume(n);
            if more {
                return Ok(true);
            }
        }
    }

    /// Reads the BEGIN line and sets the line-ending style from it.
    fn begin(&mut self) -> io::Result<()> {
        if !self.skip_whitespace()? {
            return Err(ArmorError::NoBegin.into());
        }
        match self.line()? {
            Some(Line {
                text,
                crlf: Some(crlf),
            }) if text == BEGIN.as_bytes() => {
                self.crlf = crlf;
                self.state = State::Body;
                Ok(())
            }
            Some(Line { text, crlf: None }) if text == BEGIN.as_bytes() => {
                Err(ArmorError::NoEnd.into())
            }
            _ => Err(ArmorError::NoBegin.into()),
        }
    }

    /// After END: only whitespace, up to the end of the input (read in pieces, never held).
    fn trailer(&mut self) -> io::Result<()> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(());
            }
            if !buf.iter().all(u8::is_ascii_whitespace) {
                return Err(ArmorError::AfterEnd.into());
            }
            let n = buf.len();
            self.inner.consume(n);
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        self.decoded.clear();
        self.pos = 0;
        while self.decoded.is_empty() && self.state != State::Done {
            if self.state == State::BeforeBegin {
                self.begin()?;
                continue;
            }
            let Some(line) = self.line()? else {
                return Err(ArmorError::NoEnd.into());
            };
            if line.text == END.as_bytes() {
                // The final line ending is optional; any other must match BEGIN's.
                if line.crlf.is_some_and(|crlf| crlf != self.crlf) {
                    return Err(ArmorError::LineEnding.into());
                }
                self.trailer()?;
                self.state = State::Done;
                continue;
            }
            match line.crlf {
                // A body line that ends the input: the END line is missing.
                None => return Err(ArmorError::NoEnd.into()),
                Some(crlf) if crlf != self.crlf => return Err(ArmorError::LineEnding.into()),
                Some(_) => {}
            }
            if self.state == State::AfterLast {
                return Err(ArmorError::AfterLastLine.into());
            }
            let text = &line.text;
            if text.is_empty() || text.len() % 4 != 0 {
                return Err(ArmorError::LineLength.into());
            }
            // The STANDARD engine requires canonical padding and zero trailing bits.
            STANDARD
                .decode_vec(text, &mut self.decoded)
                .map_err(|_| ArmorError::Base64)?;
            if text.len() < LINE || text.ends_with(b"=") {
                self.state = State::AfterLast;
            }
        }
        Ok(())
    }
}

impl<R: BufRead> Read for ArmorReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.decoded.len() {
            self.refill()?;
        }
        let n = (self.decoded.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.decoded[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Whether `start` (the first bytes of an input) looks armored.
pub fn is_armored(start: &[u8]) -> bool {
    let trimmed = start
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &start[i..]);
    trimmed.starts_with(&BEGIN.as_bytes()[..trimmed.len().min(BEGIN.len())]) && !trimmed.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        for len in [0usize, 1, 47, 48, 49, 1000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut w = ArmorWriter::new(Vec::new());
            w.write_all(&data).unwrap();
            let text = w.finish().unwrap();
            assert!(text.starts_with(BEGIN.as_bytes()));
            assert!(is_armored(&text));
            let mut back = Vec::new();
            ArmorReader::new(&text[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn refuses_broken_armor() {
        let mut out = Vec::new();
        assert!(
            ArmorReader::new(&b"hello\n"[..])
                .read_to_end(&mut out)
                .is_err()
        );
        let no_end = format!("{BEGIN}\nAAAA\n");
        assert!(
            ArmorReader::new(no_end.as_bytes())
                .read_to_end(&mut out)
                .is_err()
        );
        let long = format!("{BEGIN}\n{}\n{END}\n", "A".repeat(1000));
        let err = ArmorReader::new(long.as_bytes())
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(ArmorError::of(&err), Some(ArmorError::LineTooLong));
        assert!(!is_armored(b"LETRLOCK"));
    }
}
