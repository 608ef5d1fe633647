//! The network protocol's frames: the value on the wire, its codec, and a connection that reads
//! and writes whole frames.
//!
//! ```text
//! frame = length (u32 BE, counts type + payload) || type (u8) || payload
//! ```
//! A frame longer than the connection's limit is refused from its length prefix alone, before
//! anything is allocated for it. Decoding is two-step, as in mini-redis: [`decode`] answers
//! "need more bytes" (`Ok(None)`) separately from "protocol violation" (`Err`).
//!
//! Everything above this module works on [`Frame`] values; nothing above it touches bytes.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::envelope::MessageId;
use crate::keys::KeyId;

/// Protocol version carried in the server's hello.
pub const PROTOCOL_VERSION: u8 = 1;
/// Default largest frame (type + payload): sealed messages larger than this travel as several
/// `Send`/`Deliver` frames, so nothing forces a big allocation.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;
/// Payload size the sender cuts sealed messages into: big enough that framing costs nothing,
/// small enough to keep per-connection buffers small.
pub const DATA_FRAME: usize = 256 * 1024;
/// Largest frame a peer may send before it is authenticated: an `Auth` with the largest
/// signature we accept (8192-bit key). Keeps an unauthenticated peer from making us buffer more.
pub const MAX_HANDSHAKE_FRAME: usize = 1 + 32 + 1024;
/// Bytes of the handshake challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Longest error text we send or accept.
const MAX_ERROR_TEXT: usize = 1024;
/// Domain separation for the handshake signature.
pub const HANDSHAKE_CONTEXT: &[u8] = b"letterlock v1 handshake";

/// Stable error codes, for scripts and tests; the text is for humans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame sequence or a frame's contents broke the protocol.
    Protocol = 1,
    /// The handshake failed: unknown key or bad signature (deliberately not saying which).
    AuthFailed = 2,
    /// A message was refused: it did not verify, or its header does not fit this connection.
    Refused = 3,
    /// Same message id as an earlier message from this sender, different content.
    Replay = 4,
    /// The message's creation time is outside the server's window.
    Stale = 5,
    /// Larger than the server accepts.
    TooLarge = 6,
    /// The server does not accept this mode.
    ModeNotAccepted = 7,
    /// An acknowledgement did not match.
    BadAck = 8,
    /// The server is busy or shutting down; try again later.
    Unavailable = 9,
    /// Something failed on the server's side.
    Internal = 10,
    /// A timeout expired.
    Timeout = 11,
    /// Anything else.
    Unknown = 0xffff,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        [
            Protocol,
            AuthFailed,
            Refused,
            Replay,
            Stale,
            TooLarge,
            ModeNotAccepted,
            BadAck,
            Unavailable,
            Internal,
            Timeout,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
        .unwrap_or(Unknown)
    }
}

/// Every frame of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Server → client, first: protocol version, the server's key id, a fresh challenge.
    Hello {
        version: u8,
        server: KeyId,
        challenge: [u8; CHALLENGE_LEN],
    },
    /// Client → server: who the client is, and its signature over the handshake transcript.
    Auth { client: KeyId, signature: Vec<u8> },
    /// Server → client: the client is authenticated.
    Ready,
    /// Client → server: the next bytes of a sealed message (the first ones start a message).
    Send(Vec<u8>),
    /// Client → server: the current sealed message is complete.
    SendEnd,
    /// Server → client: a message is stored durably; here is the proof that we read it.
    Ack { id: MessageId, tag: [u8; 32] },
    /// Client → server: send me the messages waiting for me.
    Fetch,
    /// Server → client: the next bytes of a waiting message.
    Deliver(Vec<u8>),
    /// Server → client: that message is complete.
    DeliverEnd,
    /// Server → client: no more waiting messages (this many were sent).
    FetchDone { count: u32 },
    /// Client → server: proof that the client opened a delivered message.
    DeliveryAck { id: MessageId, tag: [u8; 32] },
    /// Server → client: the delivered message is removed from the server.
    Removed { id: MessageId },
    /// Either way: what failed; the connection closes after it.
    Error { code: ErrorCode, message: String },
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const AUTH: u8 = 0x02;
    pub const READY: u8 = 0x03;
    pub const SEND: u8 = 0x10;
    pub const SEND_END: u8 = 0x11;
    pub const ACK: u8 = 0x12;
    pub const FETCH: u8 = 0x20;
    pub const DELIVER: u8 = 0x21;
    pub const DELIVER_END: u8 = 0x22;
    pub const FETCH_DONE: u8 = 0x23;
    pub const DELIVERY_ACK: u8 = 0x24;
    pub const REMOVED: u8 = 0x25;
    pub const ERROR: u8 = 0x7f;
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit of {1}")]
    TooLarge(u64, usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Frame {
    /// A short name for logs and the interceptor.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Auth { .. } => "Auth",
            Frame::Ready => "Ready",
            Frame::Send(_) => "Send",
            Frame::SendEnd => "SendEnd",
            Frame::Ack { .. } => "Ack",
            Frame::Fetch => "Fetch",
            Frame::Deliver(_) => "Deliver",
            Frame::DeliverEnd => "DeliverEnd",
            Frame::FetchDone { .. } => "FetchDone",
            Frame::DeliveryAck { .. } => "DeliveryAck",
            Frame::Removed { .. } => "Removed",
            Frame::Error { .. } => "Error",
        }
    }

    /// Builds an error frame, bounding the text.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        let mut message = message.into();
        if message.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Frame::Error { code, message }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                version,
                server,
                challenge,
            } => {
                out.push(kind::HELLO);
                out.push(*version);
                out.extend_from_slice(&server.0);
                out.extend_from_slice(challenge);
            }
            Frame::Auth { client, signature } => {
                out.push(kind::AUTH);
                out.extend_from_slice(&client.0);
                out.extend_from_slice(signature);
            }
            Frame::Ready => out.push(kind::READY),
            Frame::Send(data) => {
                out.push(kind::SEND);
                out.extend_from_slice(data);
            }
            Frame::SendEnd => out.push(kind::SEND_END),
            Frame::Ack { id, tag } => {
                out.push(kind::ACK);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(tag);
            }
            Frame::Fetch => out.push(kind::FETCH),
            Frame::Deliver(data) => {
                out.push(kind::DELIVER);
                out.extend_from_slice(data);
            }
            Frame::DeliverEnd => out.push(kind::DELIVER_END),
            Frame::FetchDone { count } => {
                out.push(kind::FETCH_DONE);
                out.extend_from_slice(&count.to_be_bytes());
            }
            Frame::DeliveryAck { id, tag } => {
                out.push(kind::DELIVERY_ACK);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(tag);
            }
            Frame::Removed { id } => {
                out.push(kind::REMOVED);
                out.extend_from_slice(&id.0);
            }
            Frame::Error { code, message } => {
                out.push(kind::ERROR);
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
        }
        // Frames we build are bounded by DATA_FRAME or tiny; the length always fits.
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Parses one frame body (type + payload), already cut out by its length.
    pub fn parse(body: &[u8]) -> Result<Frame, WireError> {
        let (&t, p) = body.split_first().ok_or(WireError::Empty)?;
        let fixed = |name: &'static str, len: usize| {
            if p.len() == len {
                Ok(())
            } else {
                Err(WireError::Malformed(name))
            }
        };
        Ok(match t {
            kind::HELLO => {
                fixed("Hello", 1 + 32 + CHALLENGE_LEN)?;
                Frame::Hello {
                    version: p[0],
                    server: KeyId(array(&p[1..33])),
                    challenge: array(&p[33..]),
                }
            }
            kind::AUTH => {
                // A signature is one RSA modulus: 256 to 1024 bytes for the keys we accept.
                if !(32 + 256..=32 + 1024).contains(&p.len()) {
                    return Err(WireError::Malformed("Auth"));
                }
                Frame::Auth {
                    client: KeyId(array(&p[..32])),
                    signature: p[32..].to_vec(),
                }
            }
            kind::READY => {
                fixed("Ready", 0)?;
                Frame::Ready
            }
            kind::SEND => Frame::Send(p.to_vec()),
            kind::SEND_END => {
                fixed("SendEnd", 0)?;
                Frame::SendEnd
            }
            kind::ACK => {
                fixed("Ack", 48)?;
                Frame::Ack {
                    id: MessageId(array(&p[..16])),
                    tag: array(&p[16..]),
                }
            }
            kind::FETCH => {
                fixed("Fetch", 0)?;
                Frame::Fetch
            }
            kind::DELIVER => Frame::Deliver(p.to_vec()),
            kind::DELIVER_END => {
                fixed("DeliverEnd", 0)?;
                Frame::DeliverEnd
            }
            kind::FETCH_DONE => {
                fixed("FetchDone", 4)?;
                Frame::FetchDone {
                    count: u32::from_be_bytes(array(p)),
                }
            }
            kind::DELIVERY_ACK => {
                fixed("DeliveryAck", 48)?;
                Frame::DeliveryAck {
                    id: MessageId(array(&p[..16])),
                    tag: array(&p[16..]),
                }
            }
            kind::REMOVED => {
                fixed("Removed", 16)?;
                Frame::Removed {
                    id: MessageId(array(p)),
                }
            }
            kind::ERROR => {
                if p.len() < 2 || p.len() > 2 + MAX_ERROR_TEXT {
                    return Err(WireError::Malformed("Error"));
                }
                Frame::Error {
                    code: ErrorCode::from_u16(u16::from_be_bytes(array(&p[..2]))),
                    message: String::from_utf8_lossy(&p[2..]).into_owned(),
                }
            }
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// The type byte of an encoded frame body, with its name, for tools that only look at framing
/// (the interceptor).
pub fn type_name(t: u8) -> &'static str {
    match t {
        kind::HELLO => "Hello",
        kind::AUTH => "Auth",
        kind::READY => "Ready",
        kind::SEND => "Send",
        kind::SEND_END => "SendEnd",
        kind::ACK => "Ack",
        kind::FETCH => "Fetch",
        kind::DELIVER => "Deliver",
        kind::DELIVER_END => "DeliverEnd",
        kind::FETCH_DONE => "FetchDone",
        kind::DELIVERY_ACK => "DeliveryAck",
        kind::REMOVED => "Removed",
        kind::ERROR => "Error",
        _ => "Unknown",
    }
}

/// The frame type bytes, for tools that rewrite frames (the interceptor).
pub mod types {
    pub use super::kind::*;
}

/// Looks for one whole frame at the start of `buf`: `Ok(None)` if more bytes are needed,
/// `Ok(Some((frame, used)))` if one is there. The length is checked against `max_frame` before
/// anything else, so a huge length prefix costs nothing.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((Frame::parse(body)?, 4 + len)))
}

/// The body length announced by the prefix at the start of `buf`, checked against the limit.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(array(prefix)) as u64;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > max_frame as u64 {
        return Err(WireError::TooLarge(len, max_frame));
    }
    Ok(Some(len as usize))
}

fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s[..n]);
    a
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

/// The reading half of a connection: a byte stream and a buffer, turned into frames. With
/// [`FrameWriter`], the only place that touches socket bytes.
pub struct FrameReader<R> {
    stream: R,
    /// Bytes read but not yet decoded; at most one frame plus one read.
    buf: BytesMut,
    /// Largest frame accepted from the peer.
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R, max_frame: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// Changes the largest frame accepted from now on (the server raises it once the peer is
    /// authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Reads the next frame. `Err(Closed)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some((frame, used)) = decode(&self.buf, self.max_frame)? {
                self.buf.advance(used);
                return Ok(frame);
            }
            // Room for the rest of this frame (its length is already bounded) or a read.
            if let Some(len) = frame_len(&self.buf, self.max_frame)? {
                self.buf.reserve((4 + len).saturating_sub(self.buf.len()));
            } else {
                self.buf.reserve(4096);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    ConnError::Closed
                } else {
                    ConnError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }
}

/// The writing half of a connection.
pub struct FrameWriter<W> {
    stream: W,
    /// Reused encoding buffer.
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(stream: W) -> Self {
        FrameWriter {
            stream,
            out: Vec::new(),
        }
    }

    /// Writes one frame and flushes it.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnError> {
        self.queue_frame(frame);
        self.flush().await
    }

    /// Encodes a frame into the outgoing buffer without writing it yet.
    pub fn queue_frame(&mut self, frame: &Frame) {
        frame.encode(&mut self.out);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Writes bytes as they are (tests and the interceptor use this for hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Closes the writing direction (TCP FIN).
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// The bytes a client signs to authenticate: context || server key id || challenge || client
/// key id. Naming both keys and the fresh challenge stops the signature being replayed on
/// another connection or to another server.
pub fn handshake_transcript(
    server: &KeyId,
    challenge: &[u8; CHALLENGE_LEN],
    client: &KeyId,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(HANDSHAKE_CONTEXT.len() + 32 + CHALLENGE_LEN + 32);
    t.extend_from_slice(HANDSHAKE_CONTEXT);
    t.extend_from_slice(&server.0);
    t.extend_from_slice(challenge);
    t.extend_from_slice(&client.0);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                server: KeyId([1; 32]),
                challenge: [2; 32],
            },
            Frame::Auth {
                client: KeyId([3; 32]),
                signature: vec![4; 384],
            },
            Frame::Ready,
            Frame::Send(vec![5; 1000]),
            Frame::Send(vec![]),
            Frame::SendEnd,
            Frame::Ack {
                id: MessageId([6; 16]),
                tag: [7; 32],
            },
            Frame::Fetch,
            Frame::Deliver(vec![8; 10]),
            Frame::DeliverEnd,
            Frame::FetchDone { count: 3 },
            Frame::DeliveryAck {
                id: MessageId([9; 16]),
                tag: [10; 32],
            },
            Frame::Removed {
                id: MessageId([11; 16]),
            },
            Frame::error(ErrorCode::Refused, "no"),
        ]
    }

    #[test]
    fn every_frame_round_trips_and_needs_all_its_bytes() {
        for f in all() {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            assert_eq!(
                decode(&buf, DEFAULT_MAX_FRAME).unwrap(),
                Some((f.clone(), buf.len()))
            );
            assert_eq!(
                decode(&buf[..buf.len() - 1], DEFAULT_MAX_FRAME).unwrap(),
                None
            );
        }
    }

    #[test]
    fn lengths_are_checked_before_anything() {
        assert_eq!(decode(&[0, 0, 0, 0], 100), Err(WireError::Empty));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], 100),
            Err(WireError::TooLarge(u32::MAX as u64, 100))
        );
        assert_eq!(
            decode(&[0, 0, 0, 1, 0x55], 100),
            Err(WireError::UnknownType(0x55))
        );
        assert_eq!(
            decode(&[0, 0, 0, 2, 0x03, 0], 100),
            Err(WireError::Malformed("Ready"))
        );
    }
}
