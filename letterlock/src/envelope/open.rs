//! Opening: sealed message in, plaintext out, verified before anyone may trust it.
//!
//! Order (issue #2, rule 8): parse the header → the recipient is us → the sender is a key we
//! trust → decrypt → verify the signature. Every cryptographic failure is the one opaque
//! [`OpenError::Verification`]; the cause goes to debug logs only.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest;
use tracing::debug;
use zeroize::{Zeroize, Zeroizing};

use super::stream::{self, Stream, TAG_LEN};
use super::{
    DEFAULT_ASYMMETRIC_LIMIT, HEADER_LEN, Header, Mode, OpenError, ack_tag, chunk_label,
    header_hash, transcript,
};
use crate::files::{AtomicFile, WriteOptions};
use crate::keys::{Identity, PublicKey, Trust};
use crate::secret::{SecretWriter, extend_wiping, reserve_wiping};

/// Limits the receiver sets.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Largest plaintext accepted, any mode.
    pub max_plaintext: u64,
    /// Largest plaintext accepted in asymmetric mode (the receiver buffers the whole body).
    pub asymmetric_limit: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_plaintext: u64::MAX,
            asymmetric_limit: DEFAULT_ASYMMETRIC_LIMIT,
        }
    }
}

/// A message that opened and verified.
#[derive(Clone, Debug)]
pub struct Opened {
    pub header: Header,
    pub header_bytes: [u8; HEADER_LEN],
    pub plaintext_len: u64,
    /// Proof of delivery to send back to the sender.
    pub ack_tag: [u8; 32],
}

/// A message being opened. Sans-IO: feed the bytes after the header to [`Opener::update`];
/// the plaintext it appends to `out` is **unverified** until [`Opener::finish`] returns `Ok`,
/// and must be discarded if it does not.
///
/// ```
/// use std::sync::Arc;
/// use letterlock::envelope::{HEADER_LEN, OpenOptions, Opener};
/// use letterlock::{Identity, PrivateKey, SealOptions};
///
/// let alice = PrivateKey::generate(2048)?;
/// let bob: Arc<dyn Identity> = Arc::new(PrivateKey::generate(2048)?);
/// let sealed = letterlock::seal(b"hello, Bob", &alice, bob.public(), &SealOptions::default())?;
///
/// // The header says who sent it and to whom; Bob trusts exactly Alice's key.
/// let (header, body) = sealed.split_at(HEADER_LEN);
/// let mut opener = Opener::new(header, bob, alice.public(), &OpenOptions::default())?;
/// let mut unverified = Vec::new();
/// for piece in body.chunks(100) {
///     opener.update(piece, &mut unverified)?;
/// }
/// let opened = opener.finish(&mut unverified)?;
/// // Only now is `unverified` authentic.
/// assert_eq!(unverified, b"hello, Bob");
/// assert_eq!(opened.plaintext_len, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Opener {
    core: OpenCore,
    /// Decrypts the wrapped content key or the asymmetric chunks; its key is the recipient's.
    identity: Arc<dyn Identity>,
}

/// The opening state without the recipient's identity, so that [`crate::open`] can borrow one
/// while [`Opener`] owns one.
pub(crate) struct OpenCore {
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    /// The trusted sender's key, for the final verification.
    sender: PublicKey,
    /// The decrypted data block on its way out.
    plain: DataBlock,
    body: Body,
}

enum Body {
    /// Hybrid, before the content key is complete.
    WrappedKey { buf: Vec<u8> },
    /// Hybrid, decrypting chunks.
    Stream {
        stream: Stream,
        /// The sealed chunk being assembled (at most chunk + tag bytes, allocated once). It is
        /// decrypted in place, so it holds plaintext: wiped when dropped.
        buf: Zeroizing<Vec<u8>>,
        chunk: usize,
    },
    /// Asymmetric: the whole body, bounded, since the chunk count is only known at the end.
    Asymmetric { buf: Vec<u8>, max_len: usize },
    /// A failure happened; every later call fails the same way.
    Failed,
}

/// The decrypted data block (`plaintext || signature`) as it arrives: everything but the last
/// signature-length bytes is plaintext and goes out (and into the hash); those last bytes are
/// held back, because until the end we cannot know they are the signature.
struct DataBlock {
    /// The held-back bytes: at most `sig_len` of them.
    tail: Zeroizing<Vec<u8>>,
    sig_len: usize,
    /// SHA-256 of the plaintext released so far, for the transcript.
    hasher: digest::Context,
    released: u64,
    max_plaintext: u64,
}

impl DataBlock {
    /// Takes newly decrypted bytes; releases all of `tail || data` but its last `sig_len`.
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        let total = self.tail.len() + data.len();
        if total <= self.sig_len {
            self.tail.extend_from_slice(data);
            return Ok(());
        }
        let release = total - self.sig_len;
        self.released += release as u64;
        if self.released > self.max_plaintext {
            return Err(OpenError::TooLarge {
                limit: self.max_plaintext,
            });
        }
        let from_tail = release.min(self.tail.len());
        let from_data = release - from_tail;
        for part in [&self.tail[..from_tail], &data[..from_data]] {
            self.hasher.update(part);
            extend_wiping(out, part);
        }
        self.tail.drain(..from_tail);
        self.tail.extend_from_slice(&data[from_data..]);
        Ok(())
    }

    /// Decrypts the whole sealed chunk `sealed` (not the final one) straight from the input into
    /// `out`, behind the held-back bytes, and releases all of that but the last `sig_len` bytes,
    /// which become the new held-back bytes. Equivalent to decrypting in a staging buffer and
    /// [`DataBlock::push`]ing the result, without the staging copy.
    fn push_sealed(
        &mut self,
        stream: &mut Stream,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let (ciphertext, tag) = sealed.split_at(sealed.len().saturating_sub(TAG_LEN));
        let start = out.len();
        reserve_wiping(out, self.tail.len() + ciphertext.len());
        out.extend_from_slice(&self.tail);
        let at = out.len();
        out.resize(at + ciphertext.len(), 0);
        let opened = stream.open_chunk_into(ciphertext, tag, &mut out[at..], false);
        let total = out.len() - start;
        let release = total.saturating_sub(self.sig_len);
        let released = self.released + release as u64;
        if opened.is_err() || released > self.max_plaintext {
            out[start..].zeroize();
            out.truncate(start);
            if opened.is_err() {
                debug!("a hybrid chunk failed authentication");
                return Err(OpenError::Verification);
            }
            return Err(OpenError::TooLarge {
                limit: self.max_plaintext,
            });
        }
        self.released = released;
        let (kept, held) = out[start..].split_at_mut(release);
        self.hasher.update(kept);
        self.tail.clear();
        self.tail.extend_from_slice(held);
        held.zeroize();
        out.truncate(start + release);
        Ok(())
    }

    /// The end of the data block: the held-back bytes are the signature; check it.
    fn verify(
        &mut self,
        header_bytes: &[u8; HEADER_LEN],
        sender: &PublicKey,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let signature = std::mem::take(&mut self.tail);
        let t = transcript(
            header_bytes,
            self.released,
            self.hasher.clone().finish().as_ref(),
        );
        if signature.len() != self.sig_len || !sender.verify_pss(&t, &signature) {
            debug!("the signature did not verify");
            return Err(OpenError::Verification);
        }
        Ok(signature)
    }
}

impl Opener {
    /// Starts opening the message whose header is `header_bytes`, for `identity`, accepting
    /// only senders that `trusted` maps to a key ([`Trust`]: a [`PublicKey`] trusts exactly
    /// itself).
    pub fn new(
        header_bytes: &[u8],
        identity: Arc<dyn Identity>,
        trusted: &dyn Trust,
        opts: &OpenOptions,
    ) -> Result<Opener, OpenError> {
        let core = OpenCore::new(header_bytes, identity.as_ref(), trusted, opts)?;
        Ok(Opener { core, identity })
    }

    pub fn header(&self) -> &Header {
        &self.core.header
    }

    /// Feeds sealed bytes (after the header); appends unverified plaintext to `out`.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        self.core.update(self.identity.as_ref(), input, out)
    }

    /// [`Opener::update`] told whether more input follows: with `more`, a whole chunk at the
    /// end of `input` cannot be the final one, so it is decrypted now, straight from `input`,
    /// instead of being copied aside until the next call shows it is not the last.
    pub(crate) fn update_knowing(
        &mut self,
        input: &[u8],
        more: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        self.core
            .update_knowing(self.identity.as_ref(), input, more, out)
    }

    /// Ends the message: decrypts what remains, verifies the signature. Only when this returns
    /// `Ok` is the plaintext authentic.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<Opened, OpenError> {
        self.core.finish(self.identity.as_ref(), out)
    }
}

impl OpenCore {
    /// See [`Opener::new`]; `identity` must be the one passed to every later call.
    pub(crate) fn new(
        header_bytes: &[u8],
        identity: &dyn Identity,
        trusted: &dyn Trust,
        opts: &OpenOptions,
    ) -> Result<OpenCore, OpenError> {
        let header = Header::parse(header_bytes)?;
        let header_bytes = header.encode();
        let ours = identity.public().id();
        if header.recipient != ours {
            return Err(OpenError::NotForUs {
                recipient: header.recipient,
                ours,
            });
        }
        let sender = trusted
            .trusted_key(&header.sender)
            .ok_or(OpenError::UntrustedSender {
                sender: header.sender,
            })?;
        if sender.id() != header.sender {
            return Err(OpenError::UntrustedSender {
                sender: header.sender,
            });
        }
        let sig_len = sender.modulus_len();
        let (body, max_plaintext) = match header.mode {
            Mode::Hybrid => (Body::WrappedKey { buf: Vec::new() }, opts.max_plaintext),
            Mode::Asymmetric => {
                let limit = opts.asymmetric_limit.min(opts.max_plaintext);
                let k = identity.public().modulus_len() as u64;
                let per_chunk = identity.public().max_oaep_plaintext() as u64;
                let chunks = limit.saturating_add(sig_len as u64).div_ceil(per_chunk);
                let max_len = usize::try_from(chunks.saturating_mul(k)).unwrap_or(usize::MAX);
                (
                    Body::Asymmetric {
                        buf: Vec::new(),
                        max_len,
                    },
                    limit,
                )
            }
        };
        Ok(OpenCore {
            header,
            header_bytes,
            sender,
            plain: DataBlock {
                tail: Zeroizing::new(Vec::with_capacity(sig_len)),
                sig_len,
                hasher: digest::Context::new(&digest::SHA256),
                released: 0,
                max_plaintext,
            },
            body,
        })
    }

    pub(crate) fn update(
        &mut self,
        identity: &dyn Identity,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        self.update_knowing(identity, input, false, out)
    }

    /// `more`: more input follows this call's (see [`Opener::update_knowing`]).
    pub(crate) fn update_knowing(
        &mut self,
        identity: &dyn Identity,
        input: &[u8],
        more: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let result = self.update_inner(identity, input, more, out);
        if result.is_err() {
            self.body = Body::Failed;
        }
        result
    }

    fn update_inner(
        &mut self,
        identity: &dyn Identity,
        mut input: &[u8],
        more: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        while !input.is_empty() {
            match &mut self.body {
                Body::WrappedKey { buf } => {
                    let k = identity.public().modulus_len();
                    let take = (k - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if buf.len() == k {
                        self.body = self.unwrap_key(identity)?;
                    }
                }
                Body::Stream { stream, buf, chunk } => {
                    let sealed_chunk = *chunk + TAG_LEN;
                    if buf.len() == sealed_chunk {
                        // More bytes follow, so this chunk is not the final one.
                        let plain = stream.open_chunk(buf, false).map_err(|_| {
                            debug!("a hybrid chunk failed authentication");
                            OpenError::Verification
                        })?;
                        self.plain.push(plain, out)?;
                        buf.clear();
                    }
                    if buf.is_empty()
                        && (input.len() > sealed_chunk || (more && input.len() == sealed_chunk))
                    {
                        // A whole chunk with more bytes after it: decrypt it where it lies.
                        let (now, rest) = input.split_at(sealed_chunk);
                        self.plain.push_sealed(stream, now, out)?;
                        input = rest;
                        continue;
                    }
                    let take = (sealed_chunk - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                }
                Body::Asymmetric { buf, max_len, .. } => {
                    if buf.len().saturating_add(input.len()) > *max_len {
                        return Err(OpenError::TooLarge {
                            limit: self.plain.max_plaintext,
                        });
                    }
                    buf.extend_from_slice(input);
                    input = &[];
                }
                Body::Failed => return Err(OpenError::Verification),
            }
        }
        Ok(())
    }

    /// Decrypts the wrapped content key and derives the payload key.
    fn unwrap_key(&self, identity: &dyn Identity) -> Result<Body, OpenError> {
        let Body::WrappedKey { buf } = &self.body else {
            return Err(OpenError::Verification);
        };
        let hh = header_hash(&self.header_bytes);
        let key = identity.decrypt_oaep(buf, &hh).map_err(|_| {
            debug!("the wrapped content key did not decrypt");
            OpenError::Verification
        })?;
        let content_key: &[u8; stream::KEY_LEN] = key.as_slice().try_into().map_err(|_| {
            debug!(
                len = key.len(),
                "the wrapped content key has the wrong length"
            );
            OpenError::Verification
        })?;
        let payload = stream::payload_key(content_key, &self.header.message_id.0)
            .map_err(|_| OpenError::Verification)?;
        let chunk = self.header.chunk_size as usize;
        Ok(Body::Stream {
            stream: Stream::new(&payload, hh).map_err(|_| OpenError::Verification)?,
            buf: Zeroizing::new(Vec::with_capacity(chunk + TAG_LEN)),
            chunk,
        })
    }

    pub(crate) fn finish(
        mut self,
        identity: &dyn Identity,
        out: &mut Vec<u8>,
    ) -> Result<Opened, OpenError> {
        let signature = match std::mem::replace(&mut self.body, Body::Failed) {
            Body::WrappedKey { .. } | Body::Failed => {
                debug!("the message ended before its body");
                return Err(OpenError::Verification);
            }
            Body::Stream {
                mut stream,
                mut buf,
                ..
            } => {
                // The final chunk holds at least one byte: the signature is in it.
                if buf.len() <= TAG_LEN {
                    debug!("the stream ended without a final chunk");
                    return Err(OpenError::Verification);
                }
                let plain = stream.open_chunk(&mut buf, true).map_err(|_| {
                    debug!("the final hybrid chunk failed authentication");
                    OpenError::Verification
                })?;
                self.plain.push(plain, out)?;
                self.plain.verify(&self.header_bytes, &self.sender)?
            }
            Body::Asymmetric { buf, .. } => {
                let data = self.open_asymmetric(identity, &buf)?;
                // Asymmetric plaintext is released only after the signature verified.
                let mut staged = Zeroizing::new(Vec::with_capacity(data.len()));
                self.plain.push(&data, &mut staged)?;
                let signature = self.plain.verify(&self.header_bytes, &self.sender)?;
                extend_wiping(out, &staged);
                signature
            }
        };
        Ok(Opened {
            header: self.header,
            header_bytes: self.header_bytes,
            plaintext_len: self.plain.released,
            ack_tag: ack_tag(&signature, &self.header_bytes),
        })
    }

    /// Decrypts every RSA-OAEP chunk and checks that the chunking is the one a sealer makes:
    /// every chunk full but the last, which holds 1 to k − 66 bytes.
    ///
    /// The last chunk is decrypted first: with it the data block's length is known, and so the
    /// plaintext's, and a message over the limit is refused after one RSA operation instead of
    /// one per chunk up to the limit (found by a test: a 1 MiB + 1 byte message took 6 s of
    /// decryption to be refused; the body's size alone cannot tell, since a chunk holds about
    /// 300 bytes). Its label names its index and the count, so it decrypts alone.
    fn open_asymmetric(
        &self,
        identity: &dyn Identity,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let k = identity.public().modulus_len();
        let max = identity.public().max_oaep_plaintext();
        if body.is_empty() || !body.len().is_multiple_of(k) {
            debug!(len = body.len(), "asymmetric body is not whole RSA blocks");
            return Err(OpenError::Verification);
        }
        let count = u32::try_from(body.len() / k).map_err(|_| OpenError::Verification)?;
        let hh = header_hash(&self.header_bytes);
        let decrypt = |index: u32, block: &[u8]| {
            let plain = identity
                .decrypt_oaep(block, &chunk_label(&hh, index, count))
                .map_err(|_| {
                    debug!(index, "an asymmetric chunk did not decrypt");
                    OpenError::Verification
                })?;
            let well_formed = if index + 1 == count {
                (1..=max).contains(&plain.len())
            } else {
                plain.len() == max
            };
            if !well_formed {
                debug!(
                    index,
                    len = plain.len(),
                    "an asymmetric chunk has the wrong length"
                );
                return Err(OpenError::Verification);
            }
            Ok(plain)
        };
        let (blocks, last_block) = body.split_at(body.len() - k);
        let last = decrypt(count - 1, last_block)?;
        let data_len = blocks.len() / k * max + last.len();
        let plaintext_len = data_len.saturating_sub(self.plain.sig_len) as u64;
        if plaintext_len > self.plain.max_plaintext {
            return Err(OpenError::TooLarge {
                limit: self.plain.max_plaintext,
            });
        }
        let mut data = Zeroizing::new(Vec::with_capacity(data_len));
        for (index, block) in (0u32..).zip(blocks.chunks_exact(k)) {
            data.extend_from_slice(&decrypt(index, block)?);
        }
        data.extend_from_slice(&last);
        Ok(data)
    }
}

/// Reads the header from `input`, then streams the rest through an [`Opener`] into `output`.
///
/// `output` receives **unverified** plaintext as it is decrypted: use it only with a sink you
/// discard when this returns an error, or use [`open_to_file`] / [`open_to_vec`].
///
/// ```
/// use std::sync::Arc;
/// use letterlock::envelope::{self, OpenOptions, SealOptions};
/// use letterlock::keys::{Identity, PrivateKey};
///
/// let alice = PrivateKey::generate(2048)?;
/// let bob: Arc<dyn Identity> = Arc::new(PrivateKey::generate(2048)?);
/// let mut sealed = Vec::new();
/// envelope::seal(&alice, bob.public(), &SealOptions::default(), &b"hello"[..], &mut sealed)?;
///
/// let mut plain = Vec::new();
/// let opened = envelope::open(bob, alice.public(), &OpenOptions::default(), &sealed[..], &mut plain)?;
/// // Only now, with `open` returned `Ok`, is `plain` authentic.
/// assert_eq!(plain, b"hello");
/// assert_eq!(opened.header.sender, alice.public().id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn open<R: Read, W: Write>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    input: R,
    mut output: W,
) -> Result<Opened, OpenError> {
    // Reads whole sealed chunks and one piece ahead, so every chunk but the last is decrypted
    // straight from the read buffer (see `pipeline`, which does the same on three threads).
    super::pipeline::open_one_thread(identity, trusted, opts, input, &mut output)
}

/// Opens `sealed`, a whole message already in memory, into `output`: [`open`] without its read
/// buffers, every chunk decrypted straight from `sealed`. A memory-resident message (a mailbox
/// body, a file read whole) is then not copied once more before it is decrypted.
///
/// `output` receives **unverified** plaintext, as with [`open`].
pub fn open_slice<W: Write>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    sealed: &[u8],
    mut output: W,
) -> Result<Opened, OpenError> {
    super::pipeline::open_slice_one_thread(identity, trusted, opts, sealed, &mut output)
}

/// Opens into `target` so that it appears only if the message verified, through
/// [`crate::files::AtomicFile`]: a temporary file beside it (mode `file.mode`, 0600 by
/// default), fsync, rename, fsync of the folder; on any failure the temporary file is removed.
/// An existing target is replaced only if `file.replace`; a device, pipe or socket never.
///
/// Reads, opens and writes on three threads ([`super::open_pipelined`]), so a large file costs
/// about the slowest of the three rather than their sum. A message of at most
/// [`OPEN_WHOLE_LIMIT`] bytes is read whole and opened in memory instead, its plaintext
/// written only once verified. Either way the first [`OPEN_WHOLE_LIMIT`] + 1 bytes are read
/// before the header is checked: a header error comes after them (or after the input ended),
/// and a read error among them is reported as that, before any header error.
pub fn open_to_file<R: Read + Send>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    mut input: R,
    target: &Path,
    file: &WriteOptions,
) -> Result<Opened, OpenError> {
    // No user-space buffer: the writer writes in large pieces, and a buffer would hold
    // plaintext that nothing wipes.
    let mut tmp = AtomicFile::create(target, file)?;
    // The first bytes, up to the limit and one more: sealed bytes, nothing to wipe.
    let mut first = Vec::with_capacity(OPEN_WHOLE_LIMIT + 1);
    (&mut input)
        .take(OPEN_WHOLE_LIMIT as u64 + 1)
        .read_to_end(&mut first)?;
    if first.len() <= OPEN_WHOLE_LIMIT {
        let mut plain = Zeroizing::new(Vec::new());
        let opened = open_slice(identity, trusted, opts, &first, SecretWriter(&mut plain))?;
        tmp.write_all(&plain)?;
        tmp.commit()?;
        return Ok(opened);
    }
    let input = io::Cursor::new(first).chain(input);
    let (opened, tmp) = super::open_pipelined(identity, trusted, opts, input, tmp)?;
    tmp.commit()?;
    Ok(opened)
}

/// Sealed messages up to this size are opened in memory by [`open_to_file`]: the three-thread
/// pipeline's buffers (2 × [`super::DEPTH`] × [`super::PIECE`]), wiped when dropped, would
/// cost such a message more page faults than its opening (issue 13).
pub const OPEN_WHOLE_LIMIT: usize = 64 * 1024;

/// Opens into memory, refusing plaintext over `opts.max_plaintext`. The bytes are handed out
/// only after verification, in a buffer wiped when dropped that grew without leaving copies.
pub fn open_to_vec<R: Read>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    input: R,
) -> Result<(Zeroizing<Vec<u8>>, Opened), OpenError> {
    let mut plain = Zeroizing::new(Vec::new());
    let opened = open(identity, trusted, opts, input, SecretWriter(&mut plain))?;
    Ok((plain, opened))
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
pub fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
