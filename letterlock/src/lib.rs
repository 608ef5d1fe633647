//! letterlock: secure application messages between a client and a server.
//!
//! Every message is confidential (only the recipient can read it), authenticated (the recipient
//! knows who sent it) and tamper-evident (any change is refused), in two modes: asymmetric (RSA
//! only) and hybrid (AES-256-GCM under a fresh key that RSA wraps).
//!
//! # Sealing and opening
//! [`seal`] and [`open`] do a whole message in memory; [`envelope::seal`] /
//! [`envelope::open`] stream between a reader and a writer; [`Sealer`] and [`Opener`] are the
//! sans-IO state machines underneath. A private key is an [`Identity`]; which senders a
//! recipient accepts is a [`Trust`]: a [`PublicKey`] trusts exactly itself, a [`TrustList`]
//! each of its keys.
//!
//! ```
//! use letterlock::{Identity, OpenOptions, PrivateKey, SealOptions};
//!
//! let alice = PrivateKey::generate(2048)?;
//! let bob = PrivateKey::generate(2048)?;
//!
//! // Alice seals for Bob and signs.
//! let sealed = letterlock::seal(b"meet at noon", &alice, bob.public(), &SealOptions::default())?;
//!
//! // Bob opens, accepting only Alice's key.
//! let (plaintext, opened) =
//!     letterlock::open(&sealed, &bob, alice.public(), &OpenOptions::default())?;
//! assert_eq!(&plaintext[..], b"meet at noon");
//! assert_eq!(opened.header.sender, alice.public().id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//! - [`codec`]: the bounded cursor every binary parser (header, frames, handshake) reads with.
//! - [`keys`]: RSA key pairs, PEM files, fingerprints, trust, and the private-key trait.
//! - [`envelope`]: the sealed-message format (asymmetric and hybrid), streaming seal and open,
//!   and ASCII armor.
//! - [`files`]: the one atomic file writer (temporary file, fsync, rename, fsync of the folder).
//! - [`mapped`]: reading a large file through a memory map, which costs less than `read(2)`;
//!   the library's only `unsafe` code (every other module is checked to have none).
//! - [`text`]: the one escaping routine for peer text shown on a terminal or in a log, and the
//!   one wording of a byte count ("1 byte", "2 bytes").
//! - `wire` (feature `net`): the network protocol: frames and their codec, a connection that
//!   reads and writes whole frames, and the handshake both ends run.
//! - `client` (feature `client`) and `server` (feature `server`): the two ends of the protocol.
//! - `store` (feature `server`; SQLite with feature `sqlite`): the server's durable mailbox.
//! - `tls` (feature `tls`, which `client` and `server` turn on): protocol version 2's
//!   transport, TLS 1.3 with post-quantum key exchange and keys pinned by key id.
//! - [`received`]: the client's durable record of received (sender, message id) pairs, which
//!   recognises replayed deliveries, and the time window it enforces on server messages.
//! - `fuzzing` (feature `fuzzing`, hidden): the fuzz targets' bodies, shared with the corpus
//!   replay test. Never enabled in a program.
//!
//! # Features
//! The default features build everything. A program that only seals and opens messages takes
//! `default-features = false` and depends on aws-lc-rs and a few small crates only.
#![deny(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod directory;
pub mod envelope;
pub mod files;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
#[allow(unsafe_code)]
pub mod mapped;
pub mod received;
mod secret;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
pub mod text;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "net")]
pub mod wire;

use zeroize::Zeroizing;

pub use envelope::{
    HEADER_LEN, Header, Mode, OpenError, OpenOptions, Opened, Opener, SealError, SealOptions,
    Sealed, Sealer,
};
pub use keys::{Identity, KeyError, KeyId, PrivateKey, PublicKey, Trust, TrustList};

/// Seals `plaintext` from `sender` to `recipient`: the whole sealed message, in memory.
///
/// The message is encrypted for `recipient` only and signed by `sender`, in the mode
/// `opts.mode` (hybrid by default). For large messages, stream with [`envelope::seal`].
///
/// ```
/// use letterlock::{Mode, PrivateKey, PublicKey, SealOptions};
///
/// // The test keys of this repository; any `PrivateKey` and `PublicKey` will do.
/// let alice = PrivateKey::from_pem(include_str!("../../tests/keys/alice2048_private.pem"))?;
/// let bob = PublicKey::from_pem(include_str!("../../tests/keys/bob2048_public.pem"))?;
///
/// let sealed = letterlock::seal(b"hello", &alice, &bob, &SealOptions::mode(Mode::Asymmetric))?;
/// assert!(sealed.starts_with(b"LETRLOCK"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn seal(
    plaintext: &[u8],
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &SealOptions,
) -> Result<Vec<u8>, SealError> {
    let mut sealed = Vec::new();
    envelope::seal_slice(sender, recipient, opts, plaintext, &mut sealed)?;
    Ok(sealed)
}

/// Opens a whole sealed message for `recipient`, accepting it only if signed by a sender that
/// `sender` trusts (pass the sender's [`PublicKey`] to trust exactly that key). Returns the
/// plaintext, in a buffer wiped when dropped, and what was verified.
///
/// Nothing is returned unless every check passed: the header names `recipient`'s key and a
/// trusted sender, every chunk authenticates, and the signature verifies.
///
/// ```
/// use letterlock::{Identity, OpenError, OpenOptions, PrivateKey, SealOptions};
///
/// let alice = PrivateKey::generate(2048)?;
/// let bob = PrivateKey::generate(2048)?;
/// let mut sealed = letterlock::seal(b"hello", &alice, bob.public(), &SealOptions::default())?;
///
/// let (plain, _) = letterlock::open(&sealed, &bob, alice.public(), &OpenOptions::default())?;
/// assert_eq!(&plain[..], b"hello");
///
/// // One flipped bit anywhere and the message is refused.
/// let last = sealed.len() - 1;
/// sealed[last] ^= 1;
/// let err = letterlock::open(&sealed, &bob, alice.public(), &OpenOptions::default()).unwrap_err();
/// assert!(matches!(err, OpenError::Verification));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn open(
    sealed: &[u8],
    recipient: &dyn Identity,
    sender: &dyn Trust,
    opts: &OpenOptions,
) -> Result<(Zeroizing<Vec<u8>>, Opened), OpenError> {
    let (header, body) = sealed.split_at(sealed.len().min(HEADER_LEN));
    if header.len() < HEADER_LEN {
        // `parse` says whether it is short or not a letterlock message at all.
        Header::parse(header)?;
        return Err(envelope::HeaderError::Truncated(header.len()).into());
    }
    let mut opener = envelope::OpenCore::new(header, recipient, sender, opts)?;
    // The plaintext is shorter than the sealed message: sized once, it never reallocates.
    let mut plain = Zeroizing::new(Vec::with_capacity(body.len()));
    opener.update(recipient, body, &mut plain)?;
    let opened = opener.finish(recipient, &mut plain)?;
    Ok((plain, opened))
}
