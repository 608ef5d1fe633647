//! The sealed-message format, version 1: one message from one sender to one recipient.
//!
//! ```text
//! asymmetric:  header || OAEP(chunk 0) || ... || OAEP(chunk n-1)
//! hybrid:      header || OAEP(content key) || STREAM(chunk 0) || ... || STREAM(final chunk)
//! ```
//! where the data block cut into chunks is `plaintext || signature`, and the signature is
//! RSA-PSS-SHA-256 by the sender over the transcript
//! `"letterlock v1 signature" || header || plaintext length (u64 BE) || SHA-256(plaintext)`.
//!
//! Why this shape (docs/PROTOCOL.md gives every byte):
//! - The signature covers the header, so it names the recipient, the message id and the time:
//!   a recipient cannot re-seal a signed message to someone else, and replays are detectable.
//! - The signature travels *inside* the encryption: a signature in the clear over
//!   SHA-256(plaintext) would let an eavesdropper confirm a guess of a short message.
//! - Everything streams: the sender hashes while it encrypts and appends the signature last; the
//!   receiver decrypts chunk by chunk, holds back the last signature-length bytes and verifies
//!   at the end. Memory does not grow with the message.
//! - Opening releases plaintext *before* the signature is checked only through [`Opener`]'s
//!   sans-IO interface, whose callers must treat it as unverified until [`Opener::finish`]
//!   succeeds; [`open_to_file`] and [`open_to_vec`] do that for you.
//!
//! Invariants: every cryptographic failure surfaces as [`OpenError::Verification`], one opaque
//! error, so a peer learns nothing about which check failed (details go to debug logs only).

pub mod armor;
mod header;
mod open;
mod pipeline;
mod seal;
pub mod stream;

use aws_lc_rs::{digest, hmac};

pub use header::{
    DEFAULT_CHUNK_SIZE, HEADER_LEN, Header, HeaderError, MAGIC, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
    MessageId, Mode, VERSION, valid_chunk_size,
};
pub(crate) use open::OpenCore;
pub use open::{
    OPEN_WHOLE_LIMIT, OpenOptions, Opened, Opener, open, open_slice, open_to_file, open_to_vec,
    read_full,
};
pub use pipeline::{DEPTH, PIECE, open_pipelined, seal_pipelined, seal_to_file};
/// Test-vector and fuzzing only: the randomness `Sealer::with_randomness` takes.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use seal::FixedRandomness;
pub use seal::{SealOptions, Sealed, Sealer, for_each_read, seal, seal_slice};

use crate::keys::KeyError;

/// Domain separation for the signature transcript: a signature made for a letterlock message
/// can never be mistaken for a signature over anything else (a handshake, say).
pub const SIGNATURE_CONTEXT: &[u8] = b"letterlock v1 signature";
/// Domain separation for the proof-of-delivery key.
pub const ACK_CONTEXT: &[u8] = b"letterlock v1 ack";
/// Default largest asymmetric-mode plaintext: RSA per ~318-byte chunk is slow, and the
/// receiver must buffer the whole body to learn the chunk count, so this bounds its memory.
pub const DEFAULT_ASYMMETRIC_LIMIT: u64 = 1024 * 1024;

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error(
        "the message is larger than the asymmetric-mode limit of {}",
        crate::text::ByteCount(*.limit)
    )]
    TooLargeForAsymmetric { limit: u64 },
    #[error("invalid chunk size {0}: a chunk size is a power of two from 1024 to 1048576")]
    ChunkSize(u32),
    #[error("sealing failed: {0}")]
    Key(#[from] KeyError),
    #[error("the system random generator or a cipher failed")]
    Crypto,
    #[error("I/O error while sealing (reading the message or writing the sealed one): {0}")]
    Io(#[from] std::io::Error),
}

/// Why opening failed. Only [`OpenError::Verification`] is cryptographic, and it says nothing
/// about which check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("not a valid letterlock message: {0}")]
    Header(#[from] HeaderError),
    /// The header names another recipient key. Found before anything is decrypted or
    /// verified: a header damaged on the way says the same, so the text does not claim more.
    #[error("this message names key {recipient} as its recipient, not ours ({ours})")]
    NotForUs {
        recipient: crate::keys::KeyId,
        ours: crate::keys::KeyId,
    },
    /// The header names a sender key that is not trusted. Found before the signature is
    /// checked, so nothing says that key signed it: the text says "names", not "signed by".
    #[error("the message names {sender} as its sender, which is not a sender key we trust")]
    UntrustedSender { sender: crate::keys::KeyId },
    #[error("the message is larger than the limit of {}", crate::text::ByteCount(*.limit))]
    TooLarge { limit: u64 },
    #[error("message failed verification: it was altered, truncated, or not sealed for us")]
    Verification,
    #[error("I/O error while opening the message (reading it or writing what it holds): {0}")]
    Io(#[from] std::io::Error),
}

/// SHA-256 of the header bytes: the hybrid associated data and the start of every OAEP label.
pub fn header_hash(header: &[u8; HEADER_LEN]) -> [u8; 32] {
    sha256(header)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// The exact bytes the sender signs.
pub fn transcript(header: &[u8; HEADER_LEN], plaintext_len: u64, plaintext_hash: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(SIGNATURE_CONTEXT.len() + HEADER_LEN + 8 + 32);
    t.extend_from_slice(SIGNATURE_CONTEXT);
    t.extend_from_slice(header);
    t.extend_from_slice(&plaintext_len.to_be_bytes());
    t.extend_from_slice(plaintext_hash);
    t
}

/// The OAEP label of asymmetric chunk `index` of `count`: SHA-256(header) || index || count.
/// Binding position and count stops chunks being reordered, dropped or moved between messages.
pub fn chunk_label(header_hash: &[u8; 32], index: u32, count: u32) -> [u8; 40] {
    let mut l = [0u8; 40];
    l[..32].copy_from_slice(header_hash);
    l[32..36].copy_from_slice(&index.to_be_bytes());
    l[36..40].copy_from_slice(&count.to_be_bytes());
    l
}

/// Proof of delivery: HMAC-SHA-256(key = SHA-256("letterlock v1 ack" || signature), header).
/// The signature is only ever seen by whoever decrypted the body, so only the true recipient
/// (or the sender) can compute it.
pub fn ack_tag(signature: &[u8], header: &[u8; HEADER_LEN]) -> [u8; 32] {
    let mut key_input = Vec::with_capacity(ACK_CONTEXT.len() + signature.len());
    key_input.extend_from_slice(ACK_CONTEXT);
    key_input.extend_from_slice(signature);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &sha256(&key_input));
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&key, header).as_ref());
    out
}

/// Compares two ack tags in constant time.
pub fn ack_tags_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Current Unix time in seconds (0 if the clock is before 1970, which the server's time window
/// then refuses).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
