//! The sealed-message header: 104 bytes, fixed layout, big-endian.
//!
//! ```text
//! offset size field
//!      0    8 magic "LETRLOCK"
//!      8    1 format version (1)
//!      9    1 mode: 1 = asymmetric, 2 = hybrid
//!     10    2 reserved, zero
//!     12   32 sender key id (SHA-256 of the sender's SubjectPublicKeyInfo DER)
//!     44   32 recipient key id
//!     76   16 message id (random)
//!     92    8 creation time, Unix seconds
//!    100    4 chunk size: hybrid, a power of two from 1 KiB to 1 MiB; asymmetric, 0
//! ```
//!
//! The header travels in the clear but is bound to everything else: it is signed (inside the
//! transcript), it is the associated data of every hybrid chunk, and its hash is in every OAEP
//! label. Parsing checks every field, so anything that parses is a header we could have written.

use std::fmt;

use crate::codec::{CodecError, Reader};
use crate::keys::KeyId;

/// Identifies a letterlock sealed message, whatever its version.
pub const MAGIC: [u8; 8] = *b"LETRLOCK";
/// The only format version this code reads and writes.
pub const VERSION: u8 = 1;
/// The header is always exactly this long.
pub const HEADER_LEN: usize = 104;
/// Hybrid chunk size unless told otherwise: age's choice, large enough that the 16-byte tag and
/// the per-chunk call cost vanish, small enough to bound the receiver's buffer.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest hybrid chunk size a header may declare.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest hybrid chunk size a header may declare: it bounds what a receiver buffers per chunk.
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;

/// How the body is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Part 1: every chunk of the data block encrypted with RSA-OAEP under the recipient's key.
    Asymmetric,
    /// Part 2: a fresh AES-256 key encrypts the data block; RSA-OAEP wraps the key.
    Hybrid,
}

impl Mode {
    pub fn to_byte(self) -> u8 {
        match self {
            Mode::Asymmetric => 1,
            Mode::Hybrid => 2,
        }
    }

    pub fn from_byte(b: u8) -> Option<Mode> {
        match b {
            1 => Some(Mode::Asymmetric),
            2 => Some(Mode::Hybrid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Asymmetric => "asymmetric",
            Mode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// 128 random bits naming one message; with the sender it is the replay-detection key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh id from the system CSPRNG.
    pub fn random() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id)?;
        Ok(MessageId(id))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a header did not parse. The header is public, so these details are safe to show anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("truncated header: {}, a header is {HEADER_LEN}", crate::text::ByteCount::from(*.0))]
    Truncated(usize),
    #[error("not a letterlock message (bad magic)")]
    Magic,
    #[error("unsupported format version {0}; this letterlock reads version {VERSION}")]
    Version(u8),
    #[error("unknown mode {0}")]
    Mode(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("invalid chunk size {0} for {1} mode")]
    ChunkSize(u32, Mode),
}

/// A parsed, fully checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub mode: Mode,
    pub sender: KeyId,
    pub recipient: KeyId,
    pub message_id: MessageId,
    /// Unix seconds at sealing; the server refuses messages outside its time window.
    pub created: u64,
    /// Plaintext bytes per hybrid chunk; 0 in asymmetric mode.
    pub chunk_size: u32,
}

impl Header {
    /// The exact bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[9] = self.mode.to_byte();
        // 10..12 reserved, zero
        out[12..44].copy_from_slice(&self.sender.0);
        out[44..76].copy_from_slice(&self.recipient.0);
        out[76..92].copy_from_slice(&self.message_id.0);
        out[92..100].copy_from_slice(&self.created.to_be_bytes());
        out[100..104].copy_from_slice(&self.chunk_size.to_be_bytes());
        out
    }

    /// Parses the first [`HEADER_LEN`] bytes of `bytes`, checking every field.
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        // Whatever part of the magic is there must match: a short text file is "not a letterlock
        // message", not "a truncated one".
        let n = bytes.len().min(MAGIC.len());
        if bytes.get(..n) != MAGIC.get(..n) {
            return Err(HeaderError::Magic);
        }
        let truncated = HeaderError::Truncated(bytes.len());
        let mut r = Reader::new(bytes.get(..HEADER_LEN).ok_or(truncated.clone())?);
        // From here on every read is in bounds (the slice is a whole header); a short read would
        // still be an error, never a panic.
        let short = |_: CodecError| truncated.clone();
        if r.array::<8>().map_err(short)? != MAGIC {
            return Err(HeaderError::Magic);
        }
        let version = r.u8().map_err(short)?;
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let mode_byte = r.u8().map_err(short)?;
        let mode = Mode::from_byte(mode_byte).ok_or(HeaderError::Mode(mode_byte))?;
        if r.u16().map_err(short)? != 0 {
            return Err(HeaderError::Reserved);
        }
        let sender = KeyId(r.array().map_err(short)?);
        let recipient = KeyId(r.array().map_err(short)?);
        let message_id = MessageId(r.array().map_err(short)?);
        let created = r.u64().map_err(short)?;
        let chunk_size = r.u32().map_err(short)?;
        r.expect_empty().map_err(short)?;
        let chunk_ok = match mode {
            Mode::Asymmetric => chunk_size == 0,
            Mode::Hybrid => valid_chunk_size(chunk_size),
        };
        if !chunk_ok {
            return Err(HeaderError::ChunkSize(chunk_size, mode));
        }
        Ok(Header {
            mode,
            sender,
            recipient,
            message_id,
            created,
            chunk_size,
        })
    }
}

/// A hybrid chunk size is a power of two within [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            mode: Mode::Hybrid,
            sender: KeyId([1; 32]),
            recipient: KeyId([2; 32]),
            message_id: MessageId([3; 16]),
            created: 1_700_000_000,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(Header::parse(&h.encode()), Ok(h));
    }

    #[test]
    fn every_field_is_checked() {
        let good = sample().encode();
        let mut b = good;
        b[0] ^= 1;
        assert_eq!(Header::parse(&b), Err(HeaderError::Magic));
        let mut b = good;
        b[8] = 2;
        assert_eq!(Header::parse(&b), Err(HeaderError::Version(2)));
        let mut b = good;
        b[9] = 3;
        assert_eq!(Header::parse(&b), Err(HeaderError::Mode(3)));
        let mut b = good;
        b[11] = 1;
        assert_eq!(Header::parse(&b), Err(HeaderError::Reserved));
        let mut b = good;
        b[100..104].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(Header::parse(&b), Err(HeaderError::ChunkSize(..))));
        let mut b = good;
        b[9] = 1; // asymmetric with a chunk size
        assert!(matches!(Header::parse(&b), Err(HeaderError::ChunkSize(..))));
        assert_eq!(Header::parse(&good[..50]), Err(HeaderError::Truncated(50)));
    }
}
