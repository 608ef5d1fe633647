//! Sealing: plaintext in, sealed message out, in one pass and constant memory (hybrid) or
//! bounded memory (asymmetric, whose chunk count must be known before the first chunk).

use std::io::{self, Read, Write};
use std::sync::Arc;

use aws_lc_rs::digest;
use zeroize::Zeroizing;

use super::stream::{self, Stream, TAG_LEN};
use super::{
    DEFAULT_ASYMMETRIC_LIMIT, DEFAULT_CHUNK_SIZE, HEADER_LEN, Header, MessageId, Mode, SealError,
    ack_tag, chunk_label, header_hash, transcript, unix_now, valid_chunk_size,
};
use crate::keys::{Identity, PublicKey};

/// How much plaintext the streaming helpers read at a time (256 KiB).
pub(crate) const IO_BUF: usize = 256 * 1024;

/// Choices the sender makes.
#[derive(Clone, Debug)]
pub struct SealOptions {
    pub mode: Mode,
    /// Hybrid plaintext bytes per chunk (a power of two, 1 KiB to 1 MiB).
    pub chunk_size: u32,
    /// Largest plaintext accepted in asymmetric mode.
    pub asymmetric_limit: u64,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            mode: Mode::Hybrid,
            chunk_size: DEFAULT_CHUNK_SIZE,
            asymmetric_limit: DEFAULT_ASYMMETRIC_LIMIT,
        }
    }
}

impl SealOptions {
    pub fn mode(mode: Mode) -> Self {
        SealOptions {
            mode,
            ..SealOptions::default()
        }
    }
}

/// What the sender keeps after sealing: enough to check the recipient's proof of delivery.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub header: Header,
    pub header_bytes: [u8; HEADER_LEN],
    /// The ack tag the true recipient will compute ([`super::ack_tag`]).
    pub ack_tag: [u8; 32],
    pub plaintext_len: u64,
}

/// A message being sealed. Sans-IO: feed plaintext with [`Sealer::update`], collect the sealed
/// bytes it appends to `out`, then [`Sealer::finish`] signs and writes the rest.
///
/// The sender's identity is given when the sealer is created: the header names its key, and
/// the same identity signs at the end.
///
/// ```
/// use std::sync::Arc;
/// use letterlock::envelope::{SealOptions, Sealer};
/// use letterlock::keys::{Identity, PrivateKey};
///
/// let alice: Arc<dyn Identity> = Arc::new(PrivateKey::generate(2048)?);
/// let bob = PrivateKey::generate(2048)?;
///
/// let (mut sealer, mut sealed) = Sealer::new(alice.clone(), bob.public(), &SealOptions::default())?;
/// for piece in [&b"hello, "[..], b"Bob"] {
///     sealer.update(piece, &mut sealed)?;
/// }
/// let receipt = sealer.finish(&mut sealed)?;
/// assert_eq!(receipt.plaintext_len, 10);
/// assert_eq!(receipt.header.sender, alice.public().id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Sealer {
    core: SealCore,
    /// Signs the transcript in [`Sealer::finish`]; its key is the header's sender.
    sender: Arc<dyn Identity>,
}

/// The sealing state without the signer, so that [`seal`] can borrow its identity while
/// [`Sealer`] owns one.
struct SealCore {
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    /// SHA-256 of the plaintext so far, for the signature transcript (of the plaintext given
    /// through `update`; [`Sealer::update_unhashed`] leaves it to the caller).
    hasher: digest::Context,
    plaintext_len: u64,
    /// Plaintext bytes fed to `hasher`: equal to `plaintext_len` when the sealer hashes it all,
    /// zero when the caller does; anything else is a mix that no hash can match.
    hashed_len: u64,
    body: Body,
}

enum Body {
    Hybrid {
        stream: Stream,
        /// The chunk being filled; it is sealed only once we know whether it is the last.
        /// Allocated at its full size, so it never reallocates (and leaves no copy behind).
        pending: Zeroizing<Vec<u8>>,
        chunk: usize,
    },
    Asymmetric {
        recipient: PublicKey,
        /// The whole data block: the chunk count goes into every label, so nothing can be
        /// encrypted before the end. Bounded by `limit`; grows through
        /// [`crate::secret::extend_wiping`].
        data: Zeroizing<Vec<u8>>,
        limit: u64,
    },
}

/// Randomness fixed in advance, for the published test vectors only. Real sealing always draws
/// fresh values ([`Sealer::new`]); outside the `fuzzing` feature this type does not exist, so no
/// normal build can seal with a chosen key, time or message id. It does not implement `Debug`:
/// it holds a content key.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[derive(Clone)]
pub struct FixedRandomness {
    pub message_id: [u8; 16],
    pub created: u64,
    pub content_key: [u8; 32],
}

/// The values a message draws at its start. The content key is wiped when this is dropped.
struct Randomness {
    message_id: [u8; 16],
    created: u64,
    content_key: Zeroizing<[u8; 32]>,
}

impl Randomness {
    fn fresh() -> Result<Self, SealError> {
        let mut content_key = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut content_key[..]).map_err(|_| SealError::Crypto)?;
        Ok(Randomness {
            message_id: MessageId::random().map_err(|_| SealError::Crypto)?.0,
            created: unix_now(),
            content_key,
        })
    }
}

impl Sealer {
    /// Starts a message from `sender` to `recipient`. Returns the sealer and the bytes that
    /// begin the sealed message (the header, and in hybrid mode the wrapped content key).
    pub fn new(
        sender: Arc<dyn Identity>,
        recipient: &PublicKey,
        opts: &SealOptions,
    ) -> Result<(Sealer, Vec<u8>), SealError> {
        let (core, prefix) =
            SealCore::start(sender.public(), recipient, opts, &Randomness::fresh()?)?;
        Ok((Sealer { core, sender }, prefix))
    }

    /// [`Sealer::new`] with the message id, time and content key given: for test vectors and
    /// fuzzing only (feature `fuzzing`).
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn with_randomness(
        sender: Arc<dyn Identity>,
        recipient: &PublicKey,
        opts: &SealOptions,
        fixed: &FixedRandomness,
    ) -> Result<(Sealer, Vec<u8>), SealError> {
        let fixed = Randomness {
            message_id: fixed.message_id,
            created: fixed.created,
            content_key: Zeroizing::new(fixed.content_key),
        };
        let (core, prefix) = SealCore::start(sender.public(), recipient, opts, &fixed)?;
        Ok((Sealer { core, sender }, prefix))
    }

    pub fn header(&self) -> &Header {
        &self.core.header
    }

    /// Adds plaintext; appends whatever sealed bytes are ready to `out`.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.core.update(plaintext, out)
    }

    /// Signs the transcript with the sender's identity, appends the signature to the data
    /// block and seals what remains.
    ///
    /// Fails if plaintext was given through `Sealer::update_unhashed` (crate-private): the sealer's own
    /// hash does not cover it.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<Sealed, SealError> {
        if self.core.hashed_len != self.core.plaintext_len {
            return Err(mixed_hashing());
        }
        self.core.finish_own_hash(self.sender.as_ref(), out)
    }

    /// [`Sealer::update`] without hashing `plaintext`: the caller computes the plaintext's
    /// SHA-256 itself, on another thread, and gives it to
    /// [`Sealer::finish_with_plaintext_hash`]. SHA-256 costs more than the encryption, and on
    /// one thread the two add up; [`super::seal_pipelined`] runs them side by side.
    pub(crate) fn update_unhashed(
        &mut self,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        self.core.update_unhashed(plaintext, out)
    }

    /// [`Sealer::finish`] with the plaintext's SHA-256 computed by the caller: `hash` must be
    /// the SHA-256 of all the plaintext given, in order, through [`Sealer::update_unhashed`]
    /// (any other hash makes a message that fails verification). Fails if some plaintext was
    /// given through [`Sealer::update`], or if `hash` is not a SHA-256 digest.
    pub(crate) fn finish_with_plaintext_hash(
        self,
        hash: &digest::Digest,
        out: &mut Vec<u8>,
    ) -> Result<Sealed, SealError> {
        if self.core.hashed_len != 0 || *hash.algorithm() != digest::SHA256 {
            return Err(mixed_hashing());
        }
        self.core.finish(self.sender.as_ref(), hash, out)
    }
}

/// The error for a plaintext hash that cannot be the right one: the sealer's own hash over part
/// of the plaintext, or a hash from another algorithm. A caller's bug, never the input's.
fn mixed_hashing() -> SealError {
    SealError::Io(io::Error::other(
        "the plaintext was hashed partly by the sealer and partly outside it",
    ))
}

impl SealCore {
    fn start(
        sender: &PublicKey,
        recipient: &PublicKey,
        opts: &SealOptions,
        fixed: &Randomness,
    ) -> Result<(SealCore, Vec<u8>), SealError> {
        let chunk_size = match opts.mode {
            Mode::Hybrid if !valid_chunk_size(opts.chunk_size) => {
                return Err(SealError::ChunkSize(opts.chunk_size));
            }
            Mode::Hybrid => opts.chunk_size,
            Mode::Asymmetric => 0,
        };
        let header = Header {
            mode: opts.mode,
            sender: sender.id(),
            recipient: recipient.id(),
            message_id: MessageId(fixed.message_id),
            created: fixed.created,
            chunk_size,
        };
        let header_bytes = header.encode();
        let hh = header_hash(&header_bytes);
        let mut prefix = header_bytes.to_vec();
        let body = match opts.mode {
            Mode::Hybrid => {
                prefix.extend_from_slice(&recipient.encrypt_oaep(&fixed.content_key[..], &hh)?);
                let key = stream::payload_key(&fixed.content_key, &fixed.message_id)
                    .map_err(|_| SealError::Crypto)?;
                Body::Hybrid {
                    stream: Stream::new(&key, hh).map_err(|_| SealError::Crypto)?,
                    pending: Zeroizing::new(Vec::with_capacity(chunk_size as usize)),
                    chunk: chunk_size as usize,
                }
            }
            Mode::Asymmetric => Body::Asymmetric {
                recipient: recipient.clone(),
                data: Zeroizing::new(Vec::new()),
                limit: opts.asymmetric_limit,
            },
        };
        let core = SealCore {
            header,
            header_bytes,
            hasher: digest::Context::new(&digest::SHA256),
            plaintext_len: 0,
            hashed_len: 0,
            body,
        };
        Ok((core, prefix))
    }

    fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.hasher.update(plaintext);
        self.hashed_len = self.hashed_len.saturating_add(plaintext.len() as u64);
        self.update_unhashed(plaintext, out)
    }

    fn update_unhashed(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.plaintext_len = self.plaintext_len.saturating_add(plaintext.len() as u64);
        // The signature always follows the plaintext, so no plaintext chunk is the last one.
        self.push_data(plaintext, true, out)
    }

    /// [`SealCore::finish`] with the hash this core computed over the plaintext given through
    /// `update` (all of it: the callers check or guarantee it).
    fn finish_own_hash(
        self,
        sender: &dyn Identity,
        out: &mut Vec<u8>,
    ) -> Result<Sealed, SealError> {
        let hash = self.hasher.clone().finish();
        self.finish(sender, &hash, out)
    }

    /// `sender` must be the identity whose key the header names (both callers guarantee it);
    /// `hash` the SHA-256 of the plaintext.
    fn finish(
        mut self,
        sender: &dyn Identity,
        hash: &digest::Digest,
        out: &mut Vec<u8>,
    ) -> Result<Sealed, SealError> {
        let signature = sender.sign(&transcript(
            &self.header_bytes,
            self.plaintext_len,
            hash.as_ref(),
        ))?;
        self.push_data(&signature, false, out)?;
        match &mut self.body {
            Body::Hybrid {
                stream, pending, ..
            } => {
                // Never empty: the signature is in it.
                append_chunk(stream, pending, true, out)?;
            }
            Body::Asymmetric {
                recipient, data, ..
            } => seal_asymmetric(recipient, &self.header_bytes, data, out)?,
        }
        Ok(Sealed {
            header: self.header,
            header_bytes: self.header_bytes,
            ack_tag: ack_tag(&signature, &self.header_bytes),
            plaintext_len: self.plaintext_len,
        })
    }

    /// Adds bytes of the data block (plaintext, then the signature). `more`: more data follows
    /// `data` (true for plaintext: the signature always follows it), so a whole chunk at its
    /// end is sealed now, straight from `data`, instead of being copied into `pending` and
    /// held back until the next call shows it is not the last.
    fn push_data(
        &mut self,
        mut data: &[u8],
        more: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        match &mut self.body {
            Body::Hybrid {
                stream,
                pending,
                chunk,
            } => {
                while !data.is_empty() {
                    if pending.len() == *chunk {
                        // More data follows, so this full chunk is not the last one.
                        append_chunk(stream, pending, false, out)?;
                        pending.clear();
                    }
                    if pending.is_empty() && (data.len() > *chunk || (more && data.len() == *chunk))
                    {
                        // A whole chunk with more data after it: seal it straight from `data`
                        // rather than copying it into `pending` first.
                        let (now, rest) = data.split_at(*chunk);
                        append_chunk(stream, now, false, out)?;
                        data = rest;
                        continue;
                    }
                    let take = (*chunk - pending.len()).min(data.len());
                    let (now, rest) = data.split_at(take);
                    pending.extend_from_slice(now);
                    data = rest;
                }
                if more && pending.len() == *chunk {
                    append_chunk(stream, pending, false, out)?;
                    pending.clear();
                }
                Ok(())
            }
            Body::Asymmetric {
                data: block, limit, ..
            } => {
                // The limit is on the plaintext; the signature comes on top of it.
                if self.plaintext_len > *limit {
                    return Err(SealError::TooLargeForAsymmetric { limit: *limit });
                }
                crate::secret::extend_wiping(block, data);
                Ok(())
            }
        }
    }
}

/// Appends `plain` sealed as the stream's next chunk (ciphertext || tag) to `out`, encrypting
/// from `plain` straight into `out` (zeroed first: cheaper than copying the plaintext there).
fn append_chunk(
    stream: &mut Stream,
    plain: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let start = out.len();
    out.resize(start + plain.len() + TAG_LEN, 0);
    stream
        .seal_chunk_into(plain, &mut out[start..], last)
        .map_err(|_| SealError::Crypto)
}

/// Cuts the data block into chunks of at most k − 66 bytes and encrypts each with RSA-OAEP,
/// labelled with the header hash, its index and the count.
fn seal_asymmetric(
    recipient: &PublicKey,
    header_bytes: &[u8; HEADER_LEN],
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let hh = header_hash(header_bytes);
    let max = recipient.max_oaep_plaintext();
    let count = u32::try_from(data.len().div_ceil(max)).map_err(|_| SealError::Crypto)?;
    for (index, chunk) in (0u32..).zip(data.chunks(max)) {
        out.extend_from_slice(&recipient.encrypt_oaep(chunk, &chunk_label(&hh, index, count))?);
    }
    Ok(())
}

/// Seals everything `input` yields to `output` in one pass.
pub fn seal<R: Read, W: Write>(
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &SealOptions,
    mut input: R,
    mut output: W,
) -> Result<Sealed, SealError> {
    let (mut sealer, prefix) =
        SealCore::start(sender.public(), recipient, opts, &Randomness::fresh()?)?;
    output.write_all(&prefix)?;
    // Wiped when done, though hybrid chunks are now encrypted from the input straight into it
    // (`append_chunk`): cheap insurance for a buffer beside plaintext at every step.
    let mut out = Zeroizing::new(Vec::with_capacity(
        IO_BUF + IO_BUF / 1024 * TAG_LEN + 64 * 1024,
    ));
    for_each_read(&mut input, |plain| -> Result<(), SealError> {
        sealer.update(plain, &mut out)?;
        output.write_all(&out)?;
        out.clear();
        Ok(())
    })?;
    let sealed = sealer.finish_own_hash(sender, &mut out)?;
    output.write_all(&out)?;
    output.flush()?;
    Ok(sealed)
}

/// Seals `plaintext`, already in memory, to `output`: [`seal`] without its read buffer, and
/// with a working buffer sized to the message rather than to a 256 KiB piece. A one-shot
/// command sealing a few bytes then touches a few pages instead of half a megabyte (wiping a
/// buffer on drop writes its whole capacity, faulting in every page of it): about a
/// millisecond of a 100-byte `letterlock seal`.
pub fn seal_slice<W: Write>(
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &SealOptions,
    plaintext: &[u8],
    mut output: W,
) -> Result<Sealed, SealError> {
    let (mut sealer, prefix) =
        SealCore::start(sender.public(), recipient, opts, &Randomness::fresh()?)?;
    output.write_all(&prefix)?;
    let piece = plaintext.len().clamp(1, IO_BUF);
    // Room for one piece sealed, as in `seal`: its tags, and the chunk held back before it.
    let mut out = Zeroizing::new(Vec::with_capacity(
        piece + piece.div_ceil(1024) * TAG_LEN + 64 * 1024,
    ));
    for plain in plaintext.chunks(IO_BUF) {
        sealer.update(plain, &mut out)?;
        output.write_all(&out)?;
        out.clear();
    }
    let sealed = sealer.finish_own_hash(sender, &mut out)?;
    output.write_all(&out)?;
    output.flush()?;
    Ok(sealed)
}

/// Reads `input` to its end in 256 KiB pieces, handing each to `f`. The buffer is wiped
/// afterwards: it held plaintext on the sealing side.
pub fn for_each_read<R: Read, E: From<io::Error>>(
    input: &mut R,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = Zeroizing::new(vec![0u8; IO_BUF]);
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => f(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
