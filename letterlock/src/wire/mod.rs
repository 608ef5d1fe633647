//! The network protocol (docs/PROTOCOL.md, "Network protocol"), in three parts:
//!
//! - [`frame`]: the values on the wire ([`Frame`], [`FrameType`], [`ErrorCode`]) and their codec.
//! - [`conn`]: a byte stream turned into whole frames ([`FrameReader`], [`FrameWriter`]), the
//!   only code that touches socket bytes.
//! - [`handshake`]: the handshake's transcript, signing and checking, for both ends.
//!
//! Everything above this module works on [`Frame`] values; nothing above it touches bytes.

pub mod conn;
pub mod frame;
pub mod handshake;

pub use conn::{
    ConnError, FrameReader, FrameWriter, MAX_PADDING_BODY, PAD_MIN_BUCKET, PAD_STEP, PADDING_TYPE,
    is_broken_connection, padded_len,
};
pub use frame::{
    DATA_FRAME, DEFAULT_MAX_FRAME, ErrorCode, Frame, FrameType, LENGTH_PREFIX, MAX_DIRECTORY_PART,
    MAX_RECEIPT_IDS, RECEIPT_CONTEXT, ReceiptInfo, UnknownFrameType, WireError, decode, frame_len,
    receipt_commitment,
};
pub use handshake::{CHALLENGE_LEN, HANDSHAKE_CONTEXT, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION};
