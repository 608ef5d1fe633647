//! Frames: the values on the wire and their codec.
//!
//! ```text
//! frame = length (u32 BE, counts type + payload) || type (u8) || payload
//! ```
//! A frame longer than the connection's limit is refused from its length prefix alone, before
//! anything is allocated for it. Decoding is two-step, as in mini-redis: [`decode`] answers
//! "need more bytes" (`Ok(None)`) separately from "protocol violation" (`Err`). Payloads are
//! read with the crate's bounded cursor ([`crate::codec::Reader`]): a field that is not all
//! there, or bytes after the last field, make the frame malformed, so each frame has exactly
//! one encoding.

use crate::codec::{CodecError, Reader};
use crate::directory::{self, SignedEntry};
use crate::envelope::MessageId;
use crate::keys::KeyId;

use super::handshake::{CHALLENGE_LEN, MAX_SIGNATURE, MIN_SIGNATURE};

/// Default largest frame (type + payload): sealed messages larger than this travel as several
/// `Send`/`Deliver` frames, so nothing forces a big allocation.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;
/// Payload size the sender cuts sealed messages into: big enough that framing costs nothing,
/// small enough to keep per-connection buffers small.
pub const DATA_FRAME: usize = 256 * 1024;
/// Longest error text we send or accept.
const MAX_ERROR_TEXT: usize = 1024;
/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Stable error codes, for scripts and tests; the text is for humans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame sequence or a frame's contents broke the protocol.
    Protocol,
    /// The handshake failed: unknown key or bad signature (deliberately not saying which).
    AuthFailed,
    /// A message was refused: it did not verify, or its header does not fit this connection.
    Refused,
    /// Same message id as an earlier message from this sender, different content.
    Replay,
    /// The message's creation time is outside the server's window.
    Stale,
    /// Larger than the server accepts.
    TooLarge,
    /// The server does not accept this mode.
    ModeNotAccepted,
    /// An acknowledgement did not match.
    BadAck,
    /// The server is busy or shutting down; try again later.
    Unavailable,
    /// Something failed on the server's side.
    Internal,
    /// A timeout expired.
    Timeout,
    /// A relayed message names a recipient key the server does not trust (client to client).
    UnknownRecipient,
    /// A code this version does not know (a newer peer's), its number kept: shown, and sent
    /// on unchanged.
    Unknown(u16),
}

/// The known codes, in the order of their numbers (1, 2, …).
const KNOWN_CODES: [ErrorCode; 12] = [
    ErrorCode::Protocol,
    ErrorCode::AuthFailed,
    ErrorCode::Refused,
    ErrorCode::Replay,
    ErrorCode::Stale,
    ErrorCode::TooLarge,
    ErrorCode::ModeNotAccepted,
    ErrorCode::BadAck,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
    ErrorCode::Timeout,
    ErrorCode::UnknownRecipient,
];

/// "6, too large": the number on the wire and its name in words; "77, unknown" for a code this
/// version does not know.
impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {}", self.number(), self.words())
    }
}

impl ErrorCode {
    /// The code's name in words, as docs/PROTOCOL.md gives it, for a message to a person (its
    /// Rust name, `TooLarge`, is not for users).
    pub fn words(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "protocol",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::Refused => "refused",
            ErrorCode::Replay => "replay",
            ErrorCode::Stale => "stale",
            ErrorCode::TooLarge => "too large",
            ErrorCode::ModeNotAccepted => "mode not accepted",
            ErrorCode::BadAck => "bad delivery ack",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Timeout => "timeout",
            ErrorCode::UnknownRecipient => "unknown recipient",
            ErrorCode::Unknown(_) => "unknown",
        }
    }

    /// The number on the wire.
    pub fn number(self) -> u16 {
        match self {
            ErrorCode::Unknown(v) => v,
            known => KNOWN_CODES
                .iter()
                .position(|c| *c == known)
                .and_then(|i| u16::try_from(i + 1).ok())
                .unwrap_or(0),
        }
    }

    /// The code numbered `v` on the wire; [`ErrorCode::Unknown`] keeps any other number.
    pub fn from_u16(v: u16) -> ErrorCode {
        usize::from(v)
            .checked_sub(1)
            .and_then(|i| KNOWN_CODES.get(i).copied())
            .unwrap_or(ErrorCode::Unknown(v))
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
    /// Client → server: the next message (`Send`… `SendEnd`) is sealed for another client,
    /// not for the server; `commitment` is [`receipt_commitment`] of the ack tag the sender
    /// computed while sealing, so the server can later check the recipient's proof of receipt
    /// without being able to make one.
    Relay { commitment: [u8; 32] },
    /// Server → client: the relayed message is stored durably for its recipient. Only the
    /// server's word that it holds the message (it cannot open it), deliberately not an `Ack`.
    Stored { id: MessageId },
    /// Client → server: send me the directory (the trusted clients, each entry signed).
    Directory,
    /// Server → client: some of the directory's entries; `last` marks the final part.
    DirectoryPart {
        last: bool,
        entries: Vec<SignedEntry>,
    },
    /// Client → server: which of these messages I relayed has its recipient acknowledged?
    Receipts { ids: Vec<MessageId> },
    /// Server → client: the receipts held for the asked ids (ids without one are left out).
    ReceiptList { receipts: Vec<ReceiptInfo> },
    /// Either way: what failed; the connection closes after it.
    Error { code: ErrorCode, message: String },
}

/// Prefix of the receipt commitment: keeps it from meaning anything else.
pub const RECEIPT_CONTEXT: &[u8] = b"letterlock v1 receipt";

/// The receipt commitment of an ack tag: SHA-256("letterlock v1 receipt" || ack_tag). The
/// sender gives it to the server with a relayed message; the server checks the recipient's
/// `DeliveryAck` tag against it. Finding a tag for a commitment is a SHA-256 preimage.
pub fn receipt_commitment(ack_tag: &[u8; 32]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(RECEIPT_CONTEXT);
    ctx.update(ack_tag);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// One receipt as it travels: the recipient acknowledged message `id` (relayed by the asking
/// client) with `tag` at `delivered` (Unix seconds, the server's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptInfo {
    pub id: MessageId,
    /// The key the message was relayed to.
    pub recipient: KeyId,
    /// The ack tag the recipient sent; the sender compares it with the one it computed.
    pub tag: [u8; 32],
    pub delivered: u64,
}

/// Bytes of one [`ReceiptInfo`] on the wire.
pub const RECEIPT_INFO_LEN: usize = 16 + 32 + 32 + 8;
/// Most ids one `Receipts` frame may ask about (and so most receipts in one answer): 1,024
/// answers fit in 90 KiB, far below any frame limit.
pub const MAX_RECEIPT_IDS: usize = 1024;
/// Most entries in one `DirectoryPart` frame: 64 of the largest entries with the largest
/// signatures take 141 KiB, below the smallest frame limit a server may set (256 KiB).
pub const MAX_DIRECTORY_PART: usize = 64;

/// The type byte of a frame, as a closed set: a byte outside it is [`UnknownFrameType`], never
/// a name to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Auth = 0x02,
    Ready = 0x03,
    Send = 0x10,
    SendEnd = 0x11,
    Ack = 0x12,
    Fetch = 0x20,
    Deliver = 0x21,
    DeliverEnd = 0x22,
    FetchDone = 0x23,
    DeliveryAck = 0x24,
    Removed = 0x25,
    Relay = 0x13,
    Stored = 0x14,
    Directory = 0x30,
    DirectoryPart = 0x31,
    Receipts = 0x32,
    ReceiptList = 0x33,
    Error = 0x7f,
}

impl FrameType {
    /// Every frame type, in wire order.
    pub const ALL: [FrameType; 19] = [
        FrameType::Hello,
        FrameType::Auth,
        FrameType::Ready,
        FrameType::Send,
        FrameType::SendEnd,
        FrameType::Ack,
        FrameType::Relay,
        FrameType::Stored,
        FrameType::Fetch,
        FrameType::Deliver,
        FrameType::DeliverEnd,
        FrameType::FetchDone,
        FrameType::DeliveryAck,
        FrameType::Removed,
        FrameType::Directory,
        FrameType::DirectoryPart,
        FrameType::Receipts,
        FrameType::ReceiptList,
        FrameType::Error,
    ];

    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// A short name for logs, errors and the interceptor.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "Hello",
            FrameType::Auth => "Auth",
            FrameType::Ready => "Ready",
            FrameType::Send => "Send",
            FrameType::SendEnd => "SendEnd",
            FrameType::Ack => "Ack",
            FrameType::Fetch => "Fetch",
            FrameType::Deliver => "Deliver",
            FrameType::DeliverEnd => "DeliverEnd",
            FrameType::FetchDone => "FetchDone",
            FrameType::DeliveryAck => "DeliveryAck",
            FrameType::Removed => "Removed",
            FrameType::Relay => "Relay",
            FrameType::Stored => "Stored",
            FrameType::Directory => "Directory",
            FrameType::DirectoryPart => "DirectoryPart",
            FrameType::Receipts => "Receipts",
            FrameType::ReceiptList => "ReceiptList",
            FrameType::Error => "Error",
        }
    }
}

/// A type byte that names no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown frame type {0:#04x}")]
pub struct UnknownFrameType(pub u8);

impl TryFrom<u8> for FrameType {
    type Error = UnknownFrameType;

    fn try_from(byte: u8) -> Result<Self, UnknownFrameType> {
        FrameType::ALL
            .into_iter()
            .find(|t| t.to_byte() == byte)
            .ok_or(UnknownFrameType(byte))
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> u8 {
        t.to_byte()
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {} is over the limit of {}", crate::text::ByteCount(*.0), .1)]
    TooLarge(u64, usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl From<UnknownFrameType> for WireError {
    fn from(e: UnknownFrameType) -> Self {
        WireError::UnknownType(e.0)
    }
}

impl Frame {
    /// The type byte this frame is sent with.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Auth { .. } => FrameType::Auth,
            Frame::Ready => FrameType::Ready,
            Frame::Send(_) => FrameType::Send,
            Frame::SendEnd => FrameType::SendEnd,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Fetch => FrameType::Fetch,
            Frame::Deliver(_) => FrameType::Deliver,
            Frame::DeliverEnd => FrameType::DeliverEnd,
            Frame::FetchDone { .. } => FrameType::FetchDone,
            Frame::DeliveryAck { .. } => FrameType::DeliveryAck,
            Frame::Removed { .. } => FrameType::Removed,
            Frame::Relay { .. } => FrameType::Relay,
            Frame::Stored { .. } => FrameType::Stored,
            Frame::Directory => FrameType::Directory,
            Frame::DirectoryPart { .. } => FrameType::DirectoryPart,
            Frame::Receipts { .. } => FrameType::Receipts,
            Frame::ReceiptList { .. } => FrameType::ReceiptList,
            Frame::Error { .. } => FrameType::Error,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        self.frame_type().name()
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
        out.extend_from_slice(&[0; LENGTH_PREFIX]);
        out.push(self.frame_type().to_byte());
        match self {
            Frame::Hello {
                version,
                server,
                challenge,
            } => {
                out.push(*version);
                out.extend_from_slice(&server.0);
                out.extend_from_slice(challenge);
            }
            Frame::Auth { client, signature } => {
                out.extend_from_slice(&client.0);
                out.extend_from_slice(signature);
            }
            Frame::Ready | Frame::SendEnd | Frame::Fetch | Frame::DeliverEnd | Frame::Directory => {
            }
            Frame::Send(data) | Frame::Deliver(data) => out.extend_from_slice(data),
            Frame::Ack { id, tag } | Frame::DeliveryAck { id, tag } => {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(tag);
            }
            Frame::FetchDone { count } => out.extend_from_slice(&count.to_be_bytes()),
            Frame::Removed { id } | Frame::Stored { id } => out.extend_from_slice(&id.0),
            Frame::Relay { commitment } => out.extend_from_slice(commitment),
            Frame::DirectoryPart { last, entries } => {
                // Counts and lengths are bounded by the parser's limits, which what we build
                // stays within (`Entry::encode`, our own signatures, MAX_DIRECTORY_PART).
                out.push(u8::from(*last));
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(&(e.entry.len() as u16).to_be_bytes());
                    out.extend_from_slice(&e.entry);
                    out.extend_from_slice(&(e.signature.len() as u16).to_be_bytes());
                    out.extend_from_slice(&e.signature);
                }
            }
            Frame::Receipts { ids } => {
                out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Frame::ReceiptList { receipts } => {
                out.extend_from_slice(&(receipts.len() as u16).to_be_bytes());
                for r in receipts {
                    out.extend_from_slice(&r.id.0);
                    out.extend_from_slice(&r.recipient.0);
                    out.extend_from_slice(&r.tag);
                    out.extend_from_slice(&r.delivered.to_be_bytes());
                }
            }
            Frame::Error { code, message } => {
                out.extend_from_slice(&code.number().to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
        }
        // Frames we build are bounded by DATA_FRAME or tiny; the length always fits.
        let len = (out.len() - start - LENGTH_PREFIX) as u32;
        out[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    }

    /// Parses one frame body (type + payload), already cut out by its length. Every field must
    /// be there and nothing may follow the last one.
    pub fn parse(body: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader::new(body);
        let kind = FrameType::try_from(r.u8().map_err(|_| WireError::Empty)?)?;
        let malformed = |_: CodecError| WireError::Malformed(kind.name());
        let frame = match kind {
            FrameType::Hello => Frame::Hello {
                version: r.u8().map_err(malformed)?,
                server: KeyId(r.array().map_err(malformed)?),
                challenge: r.array::<CHALLENGE_LEN>().map_err(malformed)?,
            },
            FrameType::Auth => {
                let client = KeyId(r.array().map_err(malformed)?);
                // A signature is one RSA modulus, for the key sizes we accept.
                let signature = r.rest();
                if !(MIN_SIGNATURE..=MAX_SIGNATURE).contains(&signature.len()) {
                    return Err(WireError::Malformed(kind.name()));
                }
                Frame::Auth {
                    client,
                    signature: signature.to_vec(),
                }
            }
            FrameType::Ready => Frame::Ready,
            FrameType::Send => Frame::Send(r.rest().to_vec()),
            FrameType::SendEnd => Frame::SendEnd,
            FrameType::Ack => Frame::Ack {
                id: MessageId(r.array().map_err(malformed)?),
                tag: r.array().map_err(malformed)?,
            },
            FrameType::Fetch => Frame::Fetch,
            FrameType::Deliver => Frame::Deliver(r.rest().to_vec()),
            FrameType::DeliverEnd => Frame::DeliverEnd,
            FrameType::FetchDone => Frame::FetchDone {
                count: r.u32().map_err(malformed)?,
            },
            FrameType::DeliveryAck => Frame::DeliveryAck {
                id: MessageId(r.array().map_err(malformed)?),
                tag: r.array().map_err(malformed)?,
            },
            FrameType::Removed => Frame::Removed {
                id: MessageId(r.array().map_err(malformed)?),
            },
            FrameType::Relay => Frame::Relay {
                commitment: r.array().map_err(malformed)?,
            },
            FrameType::Stored => Frame::Stored {
                id: MessageId(r.array().map_err(malformed)?),
            },
            FrameType::Directory => Frame::Directory,
            FrameType::DirectoryPart => parse_directory_part(&mut r).map_err(malformed)?,
            FrameType::Receipts => {
                let count = bounded_count(&mut r, MAX_RECEIPT_IDS, 16).map_err(malformed)?;
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    ids.push(MessageId(r.array().map_err(malformed)?));
                }
                Frame::Receipts { ids }
            }
            FrameType::ReceiptList => {
                let count =
                    bounded_count(&mut r, MAX_RECEIPT_IDS, RECEIPT_INFO_LEN).map_err(malformed)?;
                let mut receipts = Vec::with_capacity(count);
                for _ in 0..count {
                    receipts.push(ReceiptInfo {
                        id: MessageId(r.array().map_err(malformed)?),
                        recipient: KeyId(r.array().map_err(malformed)?),
                        tag: r.array().map_err(malformed)?,
                        delivered: r.u64().map_err(malformed)?,
                    });
                }
                Frame::ReceiptList { receipts }
            }
            FrameType::Error => {
                let code = ErrorCode::from_u16(r.u16().map_err(malformed)?);
                let text = r.rest();
                if text.len() > MAX_ERROR_TEXT {
                    return Err(WireError::Malformed(kind.name()));
                }
                Frame::Error {
                    code,
                    message: String::from_utf8_lossy(text).into_owned(),
                }
            }
        };
        r.expect_empty().map_err(malformed)?;
        Ok(frame)
    }
}

/// A u16 count, refused when over `max` or when the frame cannot hold that many items of at
/// least `min_item` bytes: checked before anything is allocated for them.
fn bounded_count(r: &mut Reader<'_>, max: usize, min_item: usize) -> Result<usize, CodecError> {
    let count = usize::from(r.u16()?);
    let need = count.saturating_mul(min_item);
    if count > max || need > r.left() {
        return Err(CodecError::Short {
            wanted: need,
            left: r.left(),
        });
    }
    Ok(count)
}

/// A length read from the wire, refused past `max` (as a field longer than the frame is).
fn bounded_len(r: &mut Reader<'_>, max: usize) -> Result<usize, CodecError> {
    let len = usize::from(r.u16()?);
    if len > max {
        return Err(CodecError::Short {
            wanted: len,
            left: max,
        });
    }
    Ok(len)
}

/// `DirectoryPart`'s payload: u8 last (0 or 1) || u16 count || per entry u16 length || entry
/// || u16 length || signature, each length within the directory's bounds. The entries are
/// not parsed or verified here: the client verifies each against the pinned server key.
fn parse_directory_part(r: &mut Reader<'_>) -> Result<Frame, CodecError> {
    let last = match r.u8()? {
        0 => false,
        1 => true,
        // Not a flag: one encoding per value.
        _ => return Err(CodecError::Trailing(0)),
    };
    // The smallest entry: a length, the context, and a length.
    let count = bounded_count(r, MAX_DIRECTORY_PART, 2 + directory::CONTEXT.len() + 2)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = bounded_len(r, directory::MAX_ENTRY)?;
        let entry = r.take(len)?.to_vec();
        let len = bounded_len(r, directory::MAX_SIGNATURE)?;
        let signature = r.take(len)?.to_vec();
        entries.push(SignedEntry { entry, signature });
    }
    Ok(Frame::DirectoryPart { last, entries })
}

/// Looks for one whole frame at the start of `buf`: `Ok(None)` if more bytes are needed,
/// `Ok(Some((frame, used)))` if one is there. The length is checked against `max_frame` before
/// anything else, so a huge length prefix costs nothing.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(LENGTH_PREFIX..).and_then(|rest| rest.get(..len)) else {
        return Ok(None);
    };
    Ok(Some((Frame::parse(body)?, LENGTH_PREFIX + len)))
}

/// The body length announced by the prefix at the start of `buf`, checked against the limit;
/// `Ok(None)` while the prefix itself is incomplete.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, WireError> {
    let Ok(len) = Reader::new(buf).u32() else {
        return Ok(None);
    };
    if len == 0 {
        return Err(WireError::Empty);
    }
    match usize::try_from(len) {
        Ok(len) if len <= max_frame => Ok(Some(len)),
        _ => Err(WireError::TooLarge(u64::from(len), max_frame)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every number reads back as itself: the known codes by name, any other kept as
    /// `Unknown(n)`, shown with its number, and an `Error` frame carrying one re-encodes to
    /// the same bytes (found by a review: an unknown code lost its number).
    #[test]
    fn every_error_code_number_is_kept() {
        for v in (0..=40).chain([0xfffe, 0xffff]) {
            let code = ErrorCode::from_u16(v);
            assert_eq!(code.number(), v);
            assert_eq!(
                matches!(code, ErrorCode::Unknown(_)),
                !(1..=12).contains(&v)
            );
        }
        assert_eq!(ErrorCode::TooLarge.to_string(), "6, too large");
        assert_eq!(ErrorCode::UnknownRecipient.number(), 12);
        assert_eq!(ErrorCode::from_u16(77).to_string(), "77, unknown");
        let frame = Frame::error(ErrorCode::from_u16(77), "from a newer server");
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        let (back, used) = decode(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((back, used), (frame, bytes.len()));
    }

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
            Frame::Relay {
                commitment: [12; 32],
            },
            Frame::Stored {
                id: MessageId([13; 16]),
            },
            Frame::Directory,
            Frame::DirectoryPart {
                last: true,
                entries: vec![
                    SignedEntry {
                        entry: directory::CONTEXT.to_vec(),
                        signature: vec![14; 384],
                    },
                    SignedEntry {
                        entry: vec![15; 100],
                        signature: vec![],
                    },
                ],
            },
            Frame::Receipts {
                ids: vec![MessageId([16; 16]), MessageId([17; 16])],
            },
            Frame::ReceiptList {
                receipts: vec![ReceiptInfo {
                    id: MessageId([18; 16]),
                    recipient: KeyId([19; 32]),
                    tag: [20; 32],
                    delivered: 1_800_000_000,
                }],
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
    fn frame_types_round_trip_through_their_byte() {
        for t in FrameType::ALL {
            assert_eq!(FrameType::try_from(t.to_byte()), Ok(t));
        }
        let known: Vec<u8> = FrameType::ALL.iter().map(|t| t.to_byte()).collect();
        for b in (0..=u8::MAX).filter(|b| !known.contains(b)) {
            assert_eq!(FrameType::try_from(b), Err(UnknownFrameType(b)));
        }
        for f in all() {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            assert_eq!(buf[LENGTH_PREFIX], f.frame_type().to_byte());
        }
    }

    #[test]
    fn short_and_long_payloads_are_malformed() {
        for f in all() {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            let body = &buf[LENGTH_PREFIX..];
            let name = f.frame_type().name();
            // One byte too many: only the variable-length frames take it.
            let mut longer = body.to_vec();
            longer.push(0);
            match &f {
                Frame::Send(_) | Frame::Deliver(_) | Frame::Auth { .. } | Frame::Error { .. } => {
                    assert!(Frame::parse(&longer).is_ok(), "{name} + 1 byte")
                }
                _ => assert_eq!(Frame::parse(&longer), Err(WireError::Malformed(name))),
            }
            // One byte short: only the frames whose last field is variable or absent survive.
            if body.len() > 1 {
                let shorter = &body[..body.len() - 1];
                match &f {
                    Frame::Send(_)
                    | Frame::Deliver(_)
                    | Frame::Auth { .. }
                    | Frame::Error { .. } => {}
                    _ => assert_eq!(Frame::parse(shorter), Err(WireError::Malformed(name))),
                }
            }
        }
        assert_eq!(Frame::parse(&[0x7f, 0]), Err(WireError::Malformed("Error")));
        assert_eq!(Frame::parse(&[0x02; 32]), Err(WireError::Malformed("Auth")));
        assert_eq!(Frame::parse(&[]), Err(WireError::Empty));
    }

    #[test]
    fn counts_and_lengths_of_the_client_to_client_frames_are_bounded() {
        // A count past its maximum, or more items than the frame's bytes can hold, is refused
        // from the count alone.
        let mut receipts = vec![FrameType::Receipts.to_byte()];
        receipts.extend_from_slice(&((MAX_RECEIPT_IDS + 1) as u16).to_be_bytes());
        receipts.extend(std::iter::repeat_n(0, (MAX_RECEIPT_IDS + 1) * 16));
        assert_eq!(
            Frame::parse(&receipts),
            Err(WireError::Malformed("Receipts"))
        );
        let mut claims_many = vec![FrameType::ReceiptList.to_byte()];
        claims_many.extend_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            Frame::parse(&claims_many),
            Err(WireError::Malformed("ReceiptList"))
        );
        let mut part = vec![FrameType::DirectoryPart.to_byte(), 1];
        part.extend_from_slice(&((MAX_DIRECTORY_PART + 1) as u16).to_be_bytes());
        part.extend(std::iter::repeat_n(0, 100_000));
        assert_eq!(
            Frame::parse(&part),
            Err(WireError::Malformed("DirectoryPart"))
        );
        // The last flag is 0 or 1, an entry or signature length within its bound.
        assert_eq!(
            Frame::parse(&[FrameType::DirectoryPart.to_byte(), 2, 0, 0]),
            Err(WireError::Malformed("DirectoryPart"))
        );
        let mut long_entry = vec![FrameType::DirectoryPart.to_byte(), 1, 0, 1];
        long_entry.extend_from_slice(&((directory::MAX_ENTRY + 1) as u16).to_be_bytes());
        long_entry.extend(std::iter::repeat_n(0, directory::MAX_ENTRY + 3));
        assert_eq!(
            Frame::parse(&long_entry),
            Err(WireError::Malformed("DirectoryPart"))
        );
    }

    #[test]
    fn the_receipt_commitment_is_sha256_of_its_context_and_the_tag() {
        // docs/PROTOCOL.md, "Receipts": the vector there.
        let c = receipt_commitment(&[0x11; 32]);
        let mut input = RECEIPT_CONTEXT.to_vec();
        input.extend_from_slice(&[0x11; 32]);
        assert_eq!(
            c.as_slice(),
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input).as_ref()
        );
        assert_eq!(
            hex::encode(c),
            "a3b49dd38db8b023603fec77b77e4f8cee52b60fe839c8a8a90cba5ed2bf0555"
        );
        assert_ne!(c, receipt_commitment(&[0x12; 32]));
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
