//! The one frame walker of the command line: cuts a byte stream into letterlock frames from the
//! framing alone (`length u32 BE || type u8 || payload`, see [`letterlock::wire`]), without keys.
//!
//! The proxy feeds it each read as it arrives, `--show` each capture record, the demo a
//! connection's recorded bytes. Lengths are checked by [`wire::frame_len`] against a limit
//! before anything is buffered for them, so the walker holds at most one frame (up to that
//! limit) plus the bytes of the last push. Bytes that are not letterlock frames (a length of 0
//! or over the limit, an unknown type byte) end the walk: from there on everything is handed
//! back as it is, so the proxy can sit in front of any TCP service.

use std::collections::HashMap;

use letterlock::wire;

use super::tls::{TlsWalked, TlsWalker, looks_like_tls, tls_info};
use super::{Direction, Event, Record};

/// Payload bytes shown in hex per frame line.
pub const EXCERPT_BYTES: usize = 16;

/// One whole frame, exactly as it was on the wire: length prefix, type byte, payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame(Vec<u8>);

impl RawFrame {
    /// The type byte (the walker only cuts frames of a known type).
    pub fn type_byte(&self) -> u8 {
        self.0.get(4).copied().unwrap_or(0)
    }

    /// The frame type (the walker only cuts frames of a known type, so this is `Some`).
    pub fn frame_type(&self) -> Option<wire::FrameType> {
        wire::FrameType::try_from(self.type_byte()).ok()
    }

    /// The frame type's name, as the library spells it.
    pub fn kind(&self) -> &'static str {
        kind_name(self.type_byte())
    }

    /// What follows the type byte.
    pub fn payload(&self) -> &[u8] {
        self.0.get(5..).unwrap_or(&[])
    }

    /// Type byte and payload: what [`wire::Frame::parse`] reads.
    pub fn body(&self) -> &[u8] {
        self.0.get(4..).unwrap_or(&[])
    }

    /// The whole frame, length prefix included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// What the walker found next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Walked {
    Frame(RawFrame),
    /// Bytes that are not letterlock frames: everything buffered from the first such byte on,
    /// or, once the walk has ended, everything pushed since.
    NotFrames(Vec<u8>),
}

/// Walks the frames of one direction of one connection, from bytes pushed as they arrive.
///
/// As an [`Iterator`] it yields what the bytes pushed so far hold; `None` means "push more".
#[derive(Debug)]
pub struct FrameWalker {
    /// Bytes pushed and not yet handed back; `buf[start..]` is live.
    buf: Vec<u8>,
    /// Where the live bytes begin: frames are taken off the front without moving the rest.
    start: usize,
    /// Largest frame body accepted; a larger length prefix ends the walk.
    max_frame: usize,
    /// The walk has ended: the stream is not letterlock frames.
    ended: bool,
}

impl FrameWalker {
    pub fn new(max_frame: usize) -> Self {
        FrameWalker {
            buf: Vec::new(),
            start: 0,
            max_frame,
            ended: false,
        }
    }

    /// Adds the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the walk has ended (every byte from now on comes back as [`Walked::NotFrames`]).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The bytes pushed and not handed back: the start of a frame not yet whole.
    pub fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }
}

impl Iterator for FrameWalker {
    type Item = Walked;

    fn next(&mut self) -> Option<Walked> {
        let live = self.buf.get(self.start..).unwrap_or(&[]);
        if live.is_empty() {
            return None;
        }
        if !self.ended {
            let len = match wire::frame_len(live, self.max_frame) {
                Ok(None) => return None,
                Ok(Some(len)) => Some(len),
                Err(_) => None,
            };
            // The type byte, once it is there, must be one letterlock knows.
            let known = live
                .get(4)
                .is_none_or(|t| wire::FrameType::try_from(*t).is_ok());
            match len {
                Some(len) if known => {
                    let frame = live.get(..4 + len)?.to_vec();
                    self.start += frame.len();
                    return Some(Walked::Frame(RawFrame(frame)));
                }
                _ => self.ended = true,
            }
        }
        Some(Walked::NotFrames(self.take_rest()))
    }
}

/// The frame lines of a capture, fed a record at a time: each direction's stream cut into
/// frames, in capture order.
#[derive(Debug)]
pub struct Describe {
    max_frame: usize,
    /// One walker per direction of each connection seen: frames, or TLS records (protocol
    /// version 2), decided on the direction's first bytes as the proxy decides.
    walkers: HashMap<(u32, Direction), Cut>,
}

/// How one direction of a capture is cut.
#[derive(Debug)]
enum Cut {
    /// Fewer than three bytes seen.
    Undecided(Vec<u8>),
    Frames(FrameWalker),
    Tls(TlsWalker),
}

impl Describe {
    pub fn new(max_frame: usize) -> Self {
        Describe {
            max_frame,
            walkers: HashMap::new(),
        }
    }

    /// The events the next record completes.
    pub fn record(&mut self, r: &Record) -> Vec<Event> {
        let max_frame = self.max_frame;
        let cut = self
            .walkers
            .entry((r.conn, r.dir))
            .or_insert_with(|| Cut::Undecided(Vec::new()));
        let mut bytes = r.bytes.clone();
        if let Cut::Undecided(first) = cut {
            first.extend_from_slice(&r.bytes);
            let Some(tls) = looks_like_tls(first) else {
                return Vec::new();
            };
            bytes = std::mem::take(first);
            *cut = if tls {
                Cut::Tls(TlsWalker::new())
            } else {
                Cut::Frames(FrameWalker::new(max_frame))
            };
        }
        let raw = |bytes: Vec<u8>| Event::Raw {
            conn: r.conn,
            dir: r.dir,
            len: bytes.len(),
        };
        match cut {
            Cut::Undecided(_) => Vec::new(),
            Cut::Frames(walker) => {
                walker.push(&bytes);
                walker
                    .map(|walked| match walked {
                        Walked::Frame(f) => Event::Frame(frame_info(r.conn, r.dir, f.as_bytes())),
                        Walked::NotFrames(bytes) => raw(bytes),
                    })
                    .collect()
            }
            Cut::Tls(walker) => {
                walker.push(&bytes);
                walker
                    .map(|walked| match walked {
                        TlsWalked::Record(t) => Event::Tls(tls_info(r.conn, r.dir, &t)),
                        TlsWalked::NotRecords(bytes) => raw(bytes),
                    })
                    .collect()
            }
        }
    }
}

/// The frame lines of a capture: each direction's stream cut into frames, in capture order.
pub fn describe<'a>(records: impl IntoIterator<Item = &'a Record>, max_frame: usize) -> Vec<Event> {
    let mut d = Describe::new(max_frame);
    records.into_iter().flat_map(|r| d.record(r)).collect()
}

/// One frame as the proxy saw it.
#[derive(Clone, Debug)]
pub struct FrameInfo {
    pub conn: u32,
    pub dir: Direction,
    /// Frame type name from the type byte.
    pub kind: &'static str,
    /// Payload bytes (after length and type).
    pub size: usize,
    /// The first [`EXCERPT_BYTES`] payload bytes, hex.
    pub excerpt: String,
    /// Shannon entropy of the payload's bytes, bits per byte (8 is random-looking).
    pub entropy: f64,
}

/// The name of frame type `byte`, or "Unknown".
fn kind_name(byte: u8) -> &'static str {
    wire::FrameType::try_from(byte).map_or("Unknown", wire::FrameType::name)
}

/// Describes one whole frame (length prefix, type byte, payload).
pub fn frame_info(conn: u32, dir: Direction, frame: &[u8]) -> FrameInfo {
    let payload = frame.get(5..).unwrap_or(&[]);
    let kind = frame.get(4).map_or("Unknown", |t| kind_name(*t));
    let mut excerpt = hex::encode(&payload[..payload.len().min(EXCERPT_BYTES)]);
    if payload.len() > EXCERPT_BYTES {
        excerpt.push_str("...");
    }
    FrameInfo {
        conn,
        dir,
        kind,
        size: payload.len(),
        excerpt,
        entropy: entropy(payload),
    }
}

/// Shannon entropy of the byte values, in bits per byte (0 for empty input).
pub fn entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    for b in bytes {
        counts[*b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use letterlock::wire::Frame;

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out);
        }
        out
    }

    #[test]
    fn entropy_of_constant_and_uniform_bytes() {
        assert_eq!(entropy(&[7; 100]), 0.0);
        let all: Vec<u8> = (0..=255).collect();
        assert!((entropy(&all) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn frames_pushed_a_byte_at_a_time_come_out_whole() {
        let stream = encoded(&[
            Frame::Send(vec![1, 2, 3]),
            Frame::SendEnd,
            Frame::Send(vec![9]),
        ]);
        let mut w = FrameWalker::new(wire::DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        for b in &stream {
            w.push(std::slice::from_ref(b));
            got.extend(w.by_ref());
        }
        let kinds: Vec<_> = got
            .iter()
            .map(|g| match g {
                Walked::Frame(f) => f.kind(),
                Walked::NotFrames(_) => "raw",
            })
            .collect();
        assert_eq!(kinds, ["Send", "SendEnd", "Send"]);
        let Walked::Frame(first) = &got[0] else {
            unreachable!()
        };
        assert_eq!(first.payload(), [1, 2, 3]);
        assert_eq!(first.type_byte(), u8::from(wire::FrameType::Send));
        let whole: Vec<u8> = got
            .into_iter()
            .flat_map(|g| match g {
                Walked::Frame(f) => f.into_bytes(),
                Walked::NotFrames(b) => b,
            })
            .collect();
        assert_eq!(whole, stream);
        assert!(w.into_rest().is_empty());
    }

    #[test]
    fn a_partial_frame_is_kept_until_it_is_whole() {
        let stream = encoded(&[Frame::Send(vec![7; 10])]);
        let mut w = FrameWalker::new(wire::DEFAULT_MAX_FRAME);
        w.push(&stream[..8]);
        assert_eq!(w.next(), None);
        assert!(!w.ended());
        assert_eq!(w.into_rest(), &stream[..8]);
    }

    #[test]
    fn bytes_that_are_not_frames_end_the_walk() {
        // A whole frame, then text: the length "GET " is over any limit.
        let mut stream = encoded(&[Frame::SendEnd]);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut w = FrameWalker::new(wire::DEFAULT_MAX_FRAME);
        w.push(&stream);
        assert!(matches!(w.next(), Some(Walked::Frame(f)) if f.kind() == "SendEnd"));
        assert_eq!(
            w.next(),
            Some(Walked::NotFrames(b"GET / HTTP/1.1\r\n".to_vec()))
        );
        assert!(w.ended());
        w.push(&[0, 0, 0, 1, u8::from(wire::FrameType::SendEnd)]);
        // Once ended, even frame-shaped bytes come back as they are.
        assert_eq!(
            w.next(),
            Some(Walked::NotFrames(vec![
                0,
                0,
                0,
                1,
                u8::from(wire::FrameType::SendEnd)
            ]))
        );
        assert_eq!(w.next(), None);
    }

    #[test]
    fn an_unknown_type_byte_or_an_empty_frame_ends_the_walk() {
        for bad in [[0u8, 0, 0, 1, 0xee].as_slice(), &[0, 0, 0, 0, 1]] {
            let mut w = FrameWalker::new(wire::DEFAULT_MAX_FRAME);
            w.push(bad);
            assert_eq!(w.next(), Some(Walked::NotFrames(bad.to_vec())), "{bad:?}");
        }
    }

    #[test]
    fn the_walker_holds_no_more_than_one_frame_and_the_last_push() {
        let frame = encoded(&[Frame::Send(vec![0; 1000])]);
        let mut w = FrameWalker::new(wire::DEFAULT_MAX_FRAME);
        for _ in 0..10_000 {
            w.push(&frame);
            assert_eq!(w.by_ref().count(), 1);
        }
        assert!(w.buf.capacity() <= 4 * frame.len(), "{}", w.buf.capacity());
    }
}
