//! ASCII armor: a sealed message as base64 text between BEGIN/END lines, as age and PGP do, so
//! it survives email bodies and terminals.
//!
//! ```text
//! -----BEGIN LETTERLOCK MESSAGE-----
//! base64, 64 characters a line
//! -----END LETTERLOCK MESSAGE-----
//! ```
//! Both directions stream; the reader bounds every line before it keeps it.

use std::io::{self, BufRead, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub const BEGIN: &str = "-----BEGIN LETTERLOCK MESSAGE-----";
pub const END: &str = "-----END LETTERLOCK MESSAGE-----";
/// Characters per base64 line (48 bytes of message).
const LINE: usize = 64;
/// Longest line the reader accepts: a line plus generous trailing whitespace (CRLF, spaces).
const MAX_LINE: usize = 256;

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

/// Wraps a buffered reader of armored text: reads give the message bytes.
pub struct ArmorReader<R: BufRead> {
    inner: R,
    /// Decoded bytes not yet handed out.
    decoded: Vec<u8>,
    pos: usize,
    state: State,
}

#[derive(PartialEq)]
enum State {
    BeforeBegin,
    Body,
    Done,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad armor: {what}"))
}

impl<R: BufRead> ArmorReader<R> {
    pub fn new(inner: R) -> Self {
        ArmorReader {
            inner,
            decoded: Vec::new(),
            pos: 0,
            state: State::BeforeBegin,
        }
    }

    /// Reads one line, refusing any longer than [`MAX_LINE`] before holding it.
    fn line(&mut self) -> io::Result<Option<String>> {
        let mut raw = Vec::new();
        let n = (&mut self.inner)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(None);
        }
        if n > MAX_LINE {
            return Err(bad("a line is too long"));
        }
        let text = String::from_utf8(raw).map_err(|_| bad("not text"))?;
        Ok(Some(text.trim().to_owned()))
    }

    fn refill(&mut self) -> io::Result<()> {
        self.decoded.clear();
        self.pos = 0;
        while self.decoded.is_empty() && self.state != State::Done {
            let Some(line) = self.line()? else {
                return Err(bad("missing END line"));
            };
            match self.state {
                State::BeforeBegin if line.is_empty() => {}
                State::BeforeBegin if line == BEGIN => self.state = State::Body,
                State::BeforeBegin => return Err(bad("missing BEGIN line")),
                State::Body if line == END => self.state = State::Done,
                State::Body => STANDARD
                    .decode_vec(line.as_bytes(), &mut self.decoded)
                    .map_err(|_| bad("invalid base64"))?,
                State::Done => {}
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
        assert!(
            ArmorReader::new(long.as_bytes())
                .read_to_end(&mut out)
                .is_err()
        );
        assert!(!is_armored(b"LETRLOCK"));
    }
}
