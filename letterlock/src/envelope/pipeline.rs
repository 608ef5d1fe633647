//! Sealing and opening with reading, the cryptography and writing each on its own thread.
//!
//! One thread that reads, seals and writes in turn costs the *sum* of the three: file to file,
//! that halved letterlock's rate against its in-memory rate (issue 13). Here a reader thread
//! reads ahead and a writer thread writes behind while the calling thread seals or opens, so a
//! large file costs about the slowest of the three.
//!
//! When sealing, the reader also hashes: the plaintext's SHA-256 (for the signature) costs more
//! than its AES-GCM encryption, and on the sealing thread the two add up. The reader hashes each
//! piece it read before passing it on, so it hashes one piece while the sealing thread encrypts
//! the one before. A hasher thread of its own between the two measured a little slower on two
//! cores (880 against 902 MB/s, 1 GiB on tmpfs): reading is light, and one more thread only
//! adds hand-overs.
//!
//! Invariants:
//! - Memory is bounded: [`DEPTH`] input and [`DEPTH`] output buffers per run, allocated once and
//!   handed back and forth through bounded channels (a buffer is always in exactly one place:
//!   free, filled, or in use). Every buffer is wiped when dropped: input buffers hold plaintext
//!   when sealing, output buffers when opening.
//! - The bytes are the same as the one-thread [`super::seal`] / [`super::open`] produce: the
//!   cryptography runs on one thread, in order, through the same [`Sealer`] / [`Opener`]; when
//!   sealing, the reader hashes every piece, in order, before the sealing thread sees it, and
//!   hands its digest over only once the input ended cleanly.
//! - Opened plaintext reaches the writer unverified, as with [`super::open`]: only
//!   [`super::open_to_file`] (a temporary file renamed into place only after the signature
//!   verified) may be given to people.
//! - Any failure stops all the threads: the reader's and writer's errors reach the caller, and
//!   a thread that panicked is an error, never a panic of the caller (a reader that stopped
//!   before the end leaves no digest, so nothing is signed). The call returns once all the
//!   threads have ended: after a failure the reader finishes the read it is in, so an
//!   input that stalls (a pipe whose writer neither writes nor closes) delays the error until
//!   it yields or closes.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use aws_lc_rs::digest;
use zeroize::Zeroizing;

use super::seal::IO_BUF;
use super::stream::TAG_LEN;
use super::{
    HEADER_LEN, Header, HeaderError, Mode, OpenError, OpenOptions, Opened, Opener, SealError,
    SealOptions, Sealed, Sealer, read_full,
};
use crate::files::{AtomicFile, WriteOptions};
use crate::keys::{Identity, PublicKey, Trust};

/// Buffers in flight on each side of the cryptography. Two would already overlap the three
/// stages; four absorb the jitter of a busy disk or scheduler without growing memory much
/// (4 × 512 KiB each side at the default chunk size).
pub const DEPTH: usize = 4;

/// About how many bytes each hand-over between the three threads carries (the one-thread
/// openers read 256 KiB at a time: they hand nothing over). Every hand-over may wake a
/// thread (a futex call and a context switch, costly in a virtual machine): 1 GiB file to file
/// on tmpfs sealed 2 % and opened 3.5 % faster with 512 KiB pieces than with 256 KiB (+21 ± 14
/// and +31 ± 12 MB/s, 24 paired rounds), for a peak RSS of 12.3 MiB instead of 10.0; 1 MiB
/// pieces took it to 16 MiB.
pub const PIECE: usize = 512 * 1024;

/// A buffer wiped when dropped.
type Buf = Zeroizing<Vec<u8>>;

/// An input buffer and how many of its bytes the reader filled. The buffer keeps its length
/// between uses, so refilling it never clears it first.
type Piece = (Buf, usize);

/// The middle stage: a [`Sealer`] or an [`Opener`] fed one input piece at a time.
trait Stage {
    type Done;
    type Error: From<io::Error>;

    /// The stage needs the SHA-256 of its whole input and leaves computing it to its caller
    /// (the reader thread in [`run`]), who gives it to [`Stage::finish`].
    const HASHES_APART: bool = false;

    /// Processes `input`, appending what is ready to `out`. `more` says that another piece
    /// follows, so a whole chunk at the end of `input` is not the final chunk of the stream.
    fn update(&mut self, input: &[u8], more: bool, out: &mut Vec<u8>) -> Result<(), Self::Error>;

    /// The input ended: appends the rest to `out`. `input_hash` is the SHA-256 of all the
    /// input when [`Stage::HASHES_APART`], else `None`.
    fn finish(
        self,
        input_hash: Option<digest::Digest>,
        out: &mut Vec<u8>,
    ) -> Result<Self::Done, Self::Error>;
}

impl Stage for Sealer {
    type Done = Sealed;
    type Error = SealError;

    const HASHES_APART: bool = true;

    /// `more` changes nothing here: the signature always follows the plaintext, so the sealer
    /// knows that no plaintext chunk is the last one.
    fn update(&mut self, input: &[u8], _more: bool, out: &mut Vec<u8>) -> Result<(), SealError> {
        self.update_unhashed(input, out)
    }

    fn finish(
        self,
        input_hash: Option<digest::Digest>,
        out: &mut Vec<u8>,
    ) -> Result<Sealed, SealError> {
        let hash = input_hash.ok_or_else(|| io::Error::other("the plaintext was not hashed"))?;
        self.finish_with_plaintext_hash(&hash, out)
    }
}

impl Stage for Opener {
    type Done = Opened;
    type Error = OpenError;

    fn update(&mut self, input: &[u8], more: bool, out: &mut Vec<u8>) -> Result<(), OpenError> {
        self.update_knowing(input, more, out)
    }

    fn finish(self, _: Option<digest::Digest>, out: &mut Vec<u8>) -> Result<Opened, OpenError> {
        Opener::finish(self, out)
    }
}

/// How the reader cuts the input: `first` bytes, then `piece` bytes at a time. Pieces that are
/// whole chunks let the stage seal or open every chunk straight from the piece, with no staging
/// copy.
#[derive(Clone, Copy, Debug)]
struct Cuts {
    first: usize,
    piece: usize,
    /// Capacity of each output buffer: the most one piece (plus the end) can produce, so the
    /// buffers never grow.
    out: usize,
}

impl Cuts {
    /// Pieces of whole `unit`-byte chunks, about `size` bytes each; `extra` more bytes of room
    /// in each output buffer (a chunk held back from the piece before, a signature).
    fn of_units(first: usize, unit: usize, extra: usize, size: usize) -> Cuts {
        let unit = unit.max(1);
        let piece = (size / unit).max(1) * unit;
        Cuts {
            first,
            piece,
            out: piece + extra,
        }
    }
}

/// Seals everything `input` yields into `output` with a sealer made by [`Sealer::new`] (or
/// `Sealer::with_randomness` for test vectors), writing `prefix` (what that call returned)
/// first. Returns the receipt and `output`, flushed. The plaintext's SHA-256 is computed on the
/// reader thread, beside the encryption.
///
/// The bytes written are exactly those of the same sealer fed on one thread.
pub fn seal_pipelined<R, W>(
    sealer: Sealer,
    prefix: &[u8],
    input: R,
    mut output: W,
) -> Result<(Sealed, W), SealError>
where
    R: Read + Send,
    W: Write + Send,
{
    output.write_all(prefix)?;
    let cuts = match sealer.header().mode {
        Mode::Hybrid => {
            let chunk = sealer.header().chunk_size as usize;
            // Output of one piece: its chunks and tags, plus the chunk held back before it,
            // plus at the end the signature and its tag.
            let tags = (PIECE / chunk.max(1) + 2) * TAG_LEN;
            Cuts::of_units(0, chunk, chunk + tags + 1024, PIECE)
        }
        // Everything is sealed at the end, one RSA block per 318 bytes: no need to cut finely.
        Mode::Asymmetric => Cuts::of_units(0, PIECE, PIECE, PIECE),
    };
    run(sealer, cuts, input, output)
}

/// Seals `input` from `sender` to `recipient` into the file `target`, atomically: a temporary
/// file beside it, renamed into place once complete and fsynced ([`AtomicFile`]). Reads and
/// hashes, seals, and writes on three threads ([`seal_pipelined`]).
pub fn seal_to_file<R: Read + Send>(
    sender: Arc<dyn Identity>,
    recipient: &PublicKey,
    opts: &SealOptions,
    input: R,
    target: &Path,
    file: &WriteOptions,
) -> Result<Sealed, SealError> {
    let (sealer, prefix) = Sealer::new(sender, recipient, opts)?;
    let tmp = AtomicFile::create(target, file)?;
    let (sealed, tmp) = seal_pipelined(sealer, &prefix, input, tmp)?;
    tmp.commit()?;
    Ok(sealed)
}

/// Opens the sealed message `input` into `output` like [`super::open`], reading, opening and
/// writing on three threads. Returns what was verified and `output`, flushed.
///
/// `output` receives **unverified** plaintext as it is decrypted: use it only with a sink you
/// discard when this returns an error, or use [`super::open_to_file`].
pub fn open_pipelined<R, W>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    mut input: R,
    output: W,
) -> Result<(Opened, W), OpenError>
where
    R: Read + Send,
    W: Write + Send,
{
    let (opener, cuts) = start_opening(identity, trusted, opts, &mut input, PIECE)?;
    run(opener, cuts, input, output)
}

/// [`super::open`]: the same cuts and the same look-ahead on the calling thread alone.
pub(super) fn open_one_thread<R: Read, W: Write>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    mut input: R,
    output: &mut W,
) -> Result<Opened, OpenError> {
    let (opener, cuts) = start_opening(identity, trusted, opts, &mut input, IO_BUF)?;
    run_one_thread(opener, cuts, input, output)
}

/// [`super::open_slice`]: [`open_one_thread`] on a message already in memory, each piece taken
/// where it lies instead of read into a buffer first.
pub(super) fn open_slice_one_thread<W: Write>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    mut sealed: &[u8],
    output: &mut W,
) -> Result<Opened, OpenError> {
    let (opener, cuts) = start_opening(identity, trusted, opts, &mut sealed, IO_BUF)?;
    run_slice(opener, cuts, sealed, output)
}

/// Reads the header, checks it ([`Opener::new`]) and says how to cut the rest: in pieces of
/// about `size` bytes.
fn start_opening<R: Read>(
    identity: Arc<dyn Identity>,
    trusted: &dyn Trust,
    opts: &OpenOptions,
    input: &mut R,
    size: usize,
) -> Result<(Opener, Cuts), OpenError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(input, &mut header)?;
    if got < HEADER_LEN {
        // `parse` says whether it is short or not a letterlock message at all.
        Header::parse(&header[..got])?;
        return Err(HeaderError::Truncated(got).into());
    }
    let k = identity.public().modulus_len();
    let opener = Opener::new(&header, identity, trusted, opts)?;
    let cuts = match opener.header().mode {
        Mode::Hybrid => {
            // The wrapped content key first, then whole sealed chunks (ciphertext || tag).
            let sealed_chunk = opener.header().chunk_size as usize + TAG_LEN;
            // A piece releases its chunks' plaintext, plus the bytes held back before it.
            Cuts::of_units(k, sealed_chunk, 1024, size)
        }
        // Released only at the end, all at once: the output buffer grows to the message
        // (bounded by the asymmetric limit), wiping as it grows.
        Mode::Asymmetric => Cuts::of_units(k, size, 0, size),
    };
    Ok((opener, cuts))
}

/// [`run`] without threads: read a piece, read the next (so the stage knows whether more
/// follows), process the first, write its output; two input buffers and one output buffer.
fn run_one_thread<S, R, W>(
    mut stage: S,
    cuts: Cuts,
    mut input: R,
    output: &mut W,
) -> Result<S::Done, S::Error>
where
    S: Stage,
    R: Read,
    W: Write,
{
    let size = cuts.piece.max(cuts.first);
    let (mut this, mut next) = (
        Zeroizing::new(vec![0u8; size]),
        Zeroizing::new(vec![0u8; size]),
    );
    let mut out = Zeroizing::new(Vec::with_capacity(cuts.out));
    let mut want = if cuts.first > 0 {
        cuts.first
    } else {
        cuts.piece
    };
    let mut hasher = S::HASHES_APART.then(|| digest::Context::new(&digest::SHA256));
    let mut len = read_full(&mut input, &mut this[..want])?;
    let mut whole = len == want;
    while len > 0 {
        let next_len = if whole {
            read_full(&mut input, &mut next[..cuts.piece])?
        } else {
            0
        };
        out.clear();
        if let Some(h) = &mut hasher {
            h.update(&this[..len]);
        }
        stage.update(&this[..len], next_len > 0, &mut out)?;
        output.write_all(&out)?;
        std::mem::swap(&mut this, &mut next);
        want = cuts.piece;
        len = next_len;
        whole = len == want;
    }
    out.clear();
    let done = stage.finish(hasher.map(digest::Context::finish), &mut out)?;
    output.write_all(&out)?;
    output.flush()?;
    Ok(done)
}

/// [`run_one_thread`] over input already in memory: the pieces are cut from `input` itself, and
/// whether more follows is known without reading ahead; one output buffer.
fn run_slice<S: Stage, W: Write>(
    mut stage: S,
    cuts: Cuts,
    mut input: &[u8],
    output: &mut W,
) -> Result<S::Done, S::Error> {
    // A piece never gives more plaintext than the whole input holds: a small message gets a
    // small buffer, which its wipe on drop does not have to fault in.
    let mut out = Zeroizing::new(Vec::with_capacity(cuts.out.min(input.len())));
    let mut hasher = S::HASHES_APART.then(|| digest::Context::new(&digest::SHA256));
    let mut want = if cuts.first > 0 {
        cuts.first
    } else {
        cuts.piece
    };
    while !input.is_empty() {
        let (piece, rest) = input.split_at(want.min(input.len()));
        out.clear();
        if let Some(h) = &mut hasher {
            h.update(piece);
        }
        stage.update(piece, !rest.is_empty(), &mut out)?;
        output.write_all(&out)?;
        input = rest;
        want = cuts.piece;
    }
    out.clear();
    let done = stage.finish(hasher.map(digest::Context::finish), &mut out)?;
    output.write_all(&out)?;
    output.flush()?;
    Ok(done)
}

/// The three threads: the reader fills input buffers, this thread runs `stage` on each and
/// fills output buffers, the writer writes them. Buffers go back to where they came from once
/// used, through channels as deep as there are buffers, so no send ever waits on a full
/// channel of free buffers. When [`Stage::HASHES_APART`], the reader also hashes what it reads.
fn run<S, R, W>(mut stage: S, cuts: Cuts, input: R, output: W) -> Result<(S::Done, W), S::Error>
where
    S: Stage,
    R: Read + Send,
    W: Write + Send,
{
    thread::scope(|scope| {
        let (free_in, free_in_rx) = sync_channel::<Buf>(DEPTH);
        let (filled_tx, filled) = sync_channel::<io::Result<Piece>>(DEPTH);
        // The hasher's digest, sent once the input ended.
        let (hash_tx, hash_rx) = sync_channel::<digest::Digest>(1);
        let (free_out_tx, free_out) = sync_channel::<Buf>(DEPTH);
        let (written, written_rx) = sync_channel::<Buf>(DEPTH);
        for _ in 0..DEPTH {
            // Cannot fail: the receivers are alive and the channels hold DEPTH.
            let _ = free_in.send(Zeroizing::new(Vec::with_capacity(
                cuts.piece.max(cuts.first),
            )));
            let _ = free_out_tx.send(Zeroizing::new(Vec::with_capacity(cuts.out)));
        }
        let hash_tx = S::HASHES_APART.then_some(hash_tx);
        let reader = thread::Builder::new()
            .name("letterlock-read".into())
            .spawn_scoped(scope, move || {
                read_ahead(input, cuts, free_in_rx, filled_tx, hash_tx)
            })?;
        let writer = thread::Builder::new()
            .name("letterlock-write".into())
            .spawn_scoped(scope, move || write_behind(output, written_rx, free_out_tx))?;

        let crypto = (|| -> Result<Option<S::Done>, S::Error> {
            let mut next = filled.recv().ok().transpose()?;
            while let Some((piece, len)) = next.take() {
                next = filled.recv().ok().transpose()?;
                let Ok(mut out) = free_out.recv() else {
                    return Ok(None); // The writer stopped: its error says why.
                };
                out.clear();
                stage.update(&piece[..len], next.is_some(), &mut out)?;
                // The reader may have stopped (it reached the end): nothing to hand back.
                let _ = free_in.send(piece);
                if written.send(out).is_err() {
                    return Ok(None);
                }
            }
            let input_hash = if S::HASHES_APART {
                // Sent before the reader closed `filled`, once the input ended; none if the
                // reader failed or panicked.
                let hash = hash_rx
                    .recv()
                    .map_err(|_| io::Error::other("the letterlock read thread stopped early"))?;
                Some(hash)
            } else {
                None
            };
            let Ok(mut out) = free_out.recv() else {
                return Ok(None);
            };
            out.clear();
            let done = stage.finish(input_hash, &mut out)?;
            if written.send(out).is_err() {
                return Ok(None);
            }
            Ok(Some(done))
        })();
        // Closing our ends stops both threads: the reader finds no free buffer (or nobody to
        // take a filled one), the writer finds no more buffers once it wrote those it has.
        drop((free_in, filled, written, free_out, hash_rx));
        let read = joined(reader.join());
        let output = joined(writer.join()).and_then(|r| r);
        let done = crypto?;
        read?;
        let output = output?;
        done.map(|d| (d, output)).ok_or_else(|| {
            // Unreachable in practice: the writer returns its output only once every buffer
            // we sent was written, and we stop early only when it had stopped.
            S::Error::from(io::Error::other("the writer thread stopped early"))
        })
    })
}

/// A thread's result, or an error if it panicked.
fn joined<T>(r: thread::Result<T>) -> io::Result<T> {
    r.map_err(|_| io::Error::other("a letterlock pipeline thread panicked"))
}

/// The reader thread: fills free buffers with `cuts.first` bytes, then `cuts.piece` bytes at a
/// time, and sends them on; a short piece is the last. A read error is sent on, then it stops.
/// Given `digest`, hashes each piece before sending it and, once the input ended, sends the
/// SHA-256 of all of it there (never after a read error or an early stop).
fn read_ahead<R: Read>(
    mut input: R,
    cuts: Cuts,
    free: Receiver<Buf>,
    filled: SyncSender<io::Result<Piece>>,
    digest: Option<SyncSender<digest::Digest>>,
) {
    let mut hasher = digest
        .as_ref()
        .map(|_| digest::Context::new(&digest::SHA256));
    // Sends the digest of the whole input, which just ended.
    let done = |hasher: Option<digest::Context>| {
        if let (Some(h), Some(d)) = (hasher, &digest) {
            let _ = d.send(h.finish());
        }
    };
    let mut want = if cuts.first > 0 {
        cuts.first
    } else {
        cuts.piece
    };
    for mut buf in free.iter() {
        if buf.len() < want {
            buf.resize(want, 0);
        }
        match read_full(&mut input, &mut buf[..want]) {
            Ok(0) => return done(hasher),
            Ok(n) => {
                if let Some(h) = &mut hasher {
                    h.update(&buf[..n]);
                }
                if filled.send(Ok((buf, n))).is_err() {
                    return;
                }
                if n < want {
                    return done(hasher);
                }
            }
            Err(e) => {
                let _ = filled.send(Err(e));
                return;
            }
        }
        want = cuts.piece;
    }
}

/// The writer thread: writes each buffer it receives, in order, and hands it back; once the
/// sender is done, flushes and returns the output.
fn write_behind<W: Write>(
    mut output: W,
    written: Receiver<Buf>,
    free: SyncSender<Buf>,
) -> io::Result<W> {
    for buf in written.iter() {
        output.write_all(&buf)?;
        let _ = free.send(buf);
    }
    output.flush()?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::super::{open, open_slice, seal_slice};
    use super::*;
    use crate::keys::PrivateKey;

    fn key(pem: &str) -> Arc<PrivateKey> {
        Arc::new(PrivateKey::from_pem(pem).unwrap())
    }

    fn keys() -> (Arc<PrivateKey>, Arc<PrivateKey>) {
        (
            key(include_str!("../../../tests/keys/alice2048_private.pem")),
            key(include_str!("../../../tests/keys/bob2048_private.pem")),
        )
    }

    fn sealed(alice: &PrivateKey, bob: &PrivateKey, opts: &SealOptions, len: usize) -> Vec<u8> {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let mut sealed = Vec::new();
        seal_slice(alice, bob.public(), opts, &plain, &mut sealed).unwrap();
        sealed
    }

    /// Both ways of opening, the plaintext each wrote and the receipt each returned.
    fn both(
        alice: &PrivateKey,
        bob: &Arc<PrivateKey>,
        sealed: &[u8],
    ) -> [(Result<Opened, OpenError>, Vec<u8>); 2] {
        let opts = OpenOptions::default();
        let mut read = Vec::new();
        let a = open(bob.clone(), alice.public(), &opts, sealed, &mut read);
        let mut sliced = Vec::new();
        let b = open_slice(bob.clone(), alice.public(), &opts, sealed, &mut sliced);
        [(a, read), (b, sliced)]
    }

    /// `open_slice` opens what `open` opens, to the same plaintext and receipt, at sizes around
    /// a chunk and a piece (three 64 KiB chunks), with small chunks, and in asymmetric mode.
    #[test]
    fn open_slice_matches_open() {
        let (alice, bob) = keys();
        let cases: &[(Mode, u32, &[usize])] = &[
            (
                Mode::Hybrid,
                64 * 1024,
                &[
                    0, 1, 100, 65535, 65536, 65537, 196_607, 196_608, 196_609, 600_000,
                ],
            ),
            (Mode::Hybrid, 1024, &[0, 1023, 1024, 1025, 5000]),
            (Mode::Asymmetric, 64 * 1024, &[0, 1, 3000]),
        ];
        for &(mode, chunk_size, sizes) in cases {
            let opts = SealOptions {
                mode,
                chunk_size,
                ..SealOptions::default()
            };
            for &len in sizes {
                let sealed = sealed(&alice, &bob, &opts, len);
                let [(a, read), (b, sliced)] = both(&alice, &bob, &sealed);
                let (a, b) = (a.unwrap(), b.unwrap());
                assert_eq!(read.len(), len, "{mode} chunk {chunk_size} len {len}");
                assert_eq!(sliced, read, "{mode} chunk {chunk_size} len {len}");
                assert_eq!(a.plaintext_len, b.plaintext_len);
                assert_eq!(a.ack_tag, b.ack_tag);
                assert_eq!(a.header_bytes, b.header_bytes);
            }
        }
    }

    /// A sealer given the plaintext's hash from outside seals a message that opens; one whose
    /// plaintext was hashed partly inside and partly outside, or given a digest that is not
    /// SHA-256, refuses to finish, since no signature it made could verify.
    #[test]
    fn a_sealer_takes_the_plaintext_hash_only_whole() {
        let (alice, bob) = keys();
        let opts = SealOptions::default();
        let sha256 = digest::digest(&digest::SHA256, b"hello");
        let sha384 = digest::digest(&digest::SHA384, b"hello");
        let start = || Sealer::new(alice.clone(), bob.public(), &opts).unwrap();
        let mut out = Vec::new();

        let (mut s, _) = start();
        s.update(b"hello", &mut out).unwrap();
        assert!(s.finish_with_plaintext_hash(&sha256, &mut out).is_err());
        let (mut s, _) = start();
        s.update_unhashed(b"hello", &mut out).unwrap();
        assert!(s.finish(&mut out).is_err());
        let (mut s, _) = start();
        s.update_unhashed(b"hello", &mut out).unwrap();
        assert!(s.finish_with_plaintext_hash(&sha384, &mut out).is_err());

        let (mut s, mut sealed) = start();
        s.update_unhashed(b"hel", &mut sealed).unwrap();
        s.update_unhashed(b"lo", &mut sealed).unwrap();
        s.finish_with_plaintext_hash(&sha256, &mut sealed).unwrap();
        let mut plain = Vec::new();
        open_slice(
            bob.clone(),
            alice.public(),
            &OpenOptions::default(),
            &sealed,
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain, b"hello");
    }

    /// Cut anywhere (in the header, in the wrapped key, on and off a chunk boundary, one byte
    /// short) or with one bit flipped, a message fails in `open_slice` as in `open`.
    #[test]
    fn open_slice_refuses_what_open_refuses() {
        let (alice, bob) = keys();
        let sealed = sealed(&alice, &bob, &SealOptions::default(), 200_000);
        let key_end = HEADER_LEN + 256;
        let chunk_end = key_end + 64 * 1024 + TAG_LEN;
        for cut in [
            0,
            10,
            HEADER_LEN,
            key_end - 1,
            key_end,
            chunk_end,
            chunk_end + 1,
            sealed.len() - 1,
        ] {
            for (result, _) in both(&alice, &bob, &sealed[..cut]) {
                assert!(result.is_err(), "cut at {cut} of {}", sealed.len());
            }
        }
        for at in [key_end + 5, chunk_end + 5, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            for (result, _) in both(&alice, &bob, &bad) {
                assert!(
                    matches!(result, Err(OpenError::Verification)),
                    "bit flipped at {at}"
                );
            }
        }
    }
}
