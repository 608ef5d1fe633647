//! Message bodies: small ones inline in the database row, large ones in files
//! (SQLite) or in chunks in the database itself (PostgreSQL).
//!
//! A sealed message can be up to gigabytes, so it must never be held in
//! memory whole, and SQLite is a poor home for huge values (they bloat the
//! WAL and every page of them is written twice). The [`BlobWriter`] keeps the
//! first [`INLINE_MAX`] bytes in memory and only spills to a temporary file in
//! the blob folder once a body outgrows that, so callers do not have to know
//! the size up front.
//!
//! Durability order for file bodies: the file is fsynced and renamed to its
//! final name, the folder is fsynced, and only then may a row naming the file
//! commit. A crash in between leaves an unnamed file, which the next open
//! sweeps away; it can never leave a row naming a missing file.
//!
//! A backend whose servers share one database cannot keep bodies in one
//! server's folder: [`BlobWriter`] then spills into that backend's own sink
//! instead of a file (see `store::postgres::body`), with the same contract:
//! constant memory, durable at [`finish`](BlobWriter::finish), removed again
//! when the [`Body`] is dropped without a committed row naming it.

use std::fs::{self, File};
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use tracing::{debug, warn};

use super::error::StoreError;
use crate::envelope::stream::TAG_LEN;
use crate::envelope::{HEADER_LEN, Header, Mode};

/// Bodies up to this many bytes are stored inline in their database row.
///
/// 64 KiB keeps rows within a handful of SQLite pages (cheap to copy through
/// the WAL) while the per-file overhead (inode, two fsyncs, a rename) only
/// applies to bodies big enough that it is small next to their own I/O.
pub const INLINE_MAX: usize = 64 * 1024;

/// Name prefix of files still being written; anything with it is garbage
/// once no store has the folder open.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Name suffix of finished body files.
pub(crate) const BLOB_SUFFIX: &str = ".blob";

/// Random bytes in a blob name: 128 bits make a collision practically
/// impossible, and the no-clobber rename refuses one anyway.
const BLOB_NAME_RANDOM_BYTES: usize = 16;

/// How many fresh names to try if a no-clobber rename finds one taken.
const BLOB_NAME_ATTEMPTS: usize = 4;

/// Buffer for writes into a spilled file; larger than the default 8 KiB so a
/// gigabyte body costs fewer syscalls.
const FILE_WRITE_BUFFER: usize = 256 * 1024;

/// True when `name` looks like a finished blob name this module produced.
///
/// Checked before joining a name read from the database onto the blob folder,
/// so a tampered row can never make the store open or delete another path.
pub(crate) fn is_blob_name(name: &str) -> bool {
    name.strip_suffix(BLOB_SUFFIX).is_some_and(|stem| {
        stem.len() == BLOB_NAME_RANDOM_BYTES * 2
            && stem
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// A fresh random blob file name.
fn random_blob_name(dir: &Path) -> Result<String, StoreError> {
    let mut bytes = [0u8; BLOB_NAME_RANDOM_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StoreError::Io {
        action: "draw a random name for a body file in",
        path: dir.to_path_buf(),
        source: io::Error::other("the system random generator failed"),
    })?;
    Ok(format!("{}{BLOB_SUFFIX}", hex::encode(bytes)))
}

/// Fsync a directory so a rename or creation inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync the blob folder", dir))
}

/// A message body ready to be stored: either bytes in memory or a finished,
/// durable file in a store's blob folder.
///
/// Dropping a file-backed `Body` that was never committed deletes its file,
/// so a refused insert (duplicate, conflict, error) cleans up after itself.
pub struct Body {
    kind: BodyKind,
    len: u64,
    /// `None` when written [`without_sha256`](BlobWriter::without_sha256).
    sha256: Option<[u8; 32]>,
}

impl std::fmt::Debug for Body {
    // Not derived: an inline body is up to 64 KiB of ciphertext, useless
    // (and noisy) in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Body");
        out.field("len", &self.len);
        match &self.kind {
            BodyKind::Inline(_) => {}
            BodyKind::File(blob) => {
                out.field("file", &blob.name);
            }
            #[cfg(feature = "postgres")]
            BodyKind::Chunked(staged) => {
                out.field("database_body", &staged.id());
            }
        }
        out.field("sha256", &self.sha256.map(hex::encode)).finish()
    }
}

enum BodyKind {
    Inline(Vec<u8>),
    File(Blob),
    /// Committed in chunks in a PostgreSQL store's `body` table.
    #[cfg(feature = "postgres")]
    Chunked(super::postgres::StagedBody),
}

impl Body {
    /// A body held in memory. Meant for small bodies; large ones should be
    /// streamed through [`BlobWriter`] (an in-memory body is stored inline
    /// whatever its size).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let sha256 = Some(sha256_array(
            digest::digest(&digest::SHA256, &bytes).as_ref(),
        ));
        Self {
            len: bytes.len() as u64,
            kind: BodyKind::Inline(bytes),
            sha256,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-256 of the bytes, computed while they were written (a client's
    /// mailbox uses it as the record's content hash without a second pass over
    /// a large body); `None` for a body written
    /// [`without_sha256`](BlobWriter::without_sha256).
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.sha256
    }

    /// Mark a file body as owned by a committed row, so dropping this
    /// handle no longer deletes the file.
    pub(crate) fn keep(&mut self) {
        match &mut self.kind {
            BodyKind::Inline(_) => {}
            BodyKind::File(blob) => blob.keep(),
            #[cfg(feature = "postgres")]
            BodyKind::Chunked(staged) => staged.keep(),
        }
    }

    /// The blob folder a file body was staged in (`None` when inline).
    pub(crate) fn staged_in(&self) -> Option<&Path> {
        match &self.kind {
            BodyKind::Inline(_) => None,
            BodyKind::File(blob) => Some(&blob.dir),
            #[cfg(feature = "postgres")]
            BodyKind::Chunked(_) => None,
        }
    }

    /// True when the body was staged in a database rather than in memory or a file: only the
    /// store that staged it can name it in a row.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn is_in_database(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let BodyKind::Chunked(_) = self.kind {
            return true;
        }
        false
    }

    /// The bytes of a body held in memory (`None` for a file or database body).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn inline_bytes(&self) -> Option<&[u8]> {
        match &self.kind {
            BodyKind::Inline(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The staged database body (`None` unless it was spilled into a PostgreSQL store).
    #[cfg(feature = "postgres")]
    pub(crate) fn staged_chunks(&self) -> Option<&super::postgres::StagedBody> {
        match &self.kind {
            BodyKind::Chunked(staged) => Some(staged),
            _ => None,
        }
    }

    /// The two body columns of a row: inline bytes or the file name (neither for a body
    /// staged in a database, which a file-based store refuses before asking).
    pub(crate) fn columns(&self) -> (Option<&[u8]>, Option<&str>) {
        match &self.kind {
            BodyKind::Inline(bytes) => (Some(bytes), None),
            BodyKind::File(blob) => (None, Some(&blob.name)),
            #[cfg(feature = "postgres")]
            BodyKind::Chunked(_) => (None, None),
        }
    }

    /// True when the body lives in a file rather than in memory.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, BodyKind::File(_))
    }
}

/// Copy a SHA-256 output into an array (the digest is always 32 bytes).
fn sha256_array(digest: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Zip rather than slice-copy: no panic path even in theory.
    for (slot, byte) in out.iter_mut().zip(digest) {
        *slot = *byte;
    }
    out
}

/// A finished body file, deleted on drop unless a committed row names it.
#[derive(Debug)]
pub(crate) struct Blob {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    keep: bool,
}

impl Blob {
    /// Mark the file as owned by a committed row: dropping no longer deletes it.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let path = self.dir.join(&self.name);
        match fs::remove_file(&path) {
            Ok(()) => debug!(path = %path.display(), "removed uncommitted body file"),
            // The sweep on the next open removes it if this failed.
            Err(err) => {
                warn!(path = %path.display(), %err, "could not remove uncommitted body file")
            }
        }
    }
}

/// Where a [`BlobWriter`] currently holds its bytes.
enum Sink {
    Memory(Vec<u8>),
    File(BufWriter<tempfile::NamedTempFile>),
    /// Streaming chunks into a PostgreSQL store.
    #[cfg(feature = "postgres")]
    Chunks(super::postgres::ChunkUpload),
}

/// Where a [`BlobWriter`] puts a body that outgrows [`INLINE_MAX`].
enum Home {
    /// A file in this blob folder (SQLite).
    Folder(PathBuf),
    /// Chunks in a PostgreSQL database, which every server sharing it can read.
    #[cfg(feature = "postgres")]
    Database(std::sync::Arc<super::postgres::BodyHome>),
}

impl Home {
    /// The blob folder of a home that spills into files.
    fn folder(&self) -> Option<&PathBuf> {
        match self {
            Self::Folder(dir) => Some(dir),
            #[cfg(feature = "postgres")]
            Self::Database(_) => None,
        }
    }
}

/// Streams a body into the store: in memory while small, into a temporary
/// file in the blob folder (SQLite) or into database chunks (PostgreSQL) once
/// larger than [`INLINE_MAX`].
///
/// Writes are blocking I/O once spilled (a file write, or waiting for the
/// database to take a chunk); async callers should feed it from
/// `spawn_blocking` or accept short blocking writes. Dropping it before
/// [`finish`](Self::finish) deletes the temporary file, or rolls the
/// database upload back.
pub struct BlobWriter {
    home: Home,
    sink: Sink,
    /// SHA-256 of the bytes so far; `None` once [`Self::without_sha256`] said
    /// nobody needs it.
    hasher: Option<digest::Context>,
    len: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("BlobWriter");
        match &self.home {
            Home::Folder(dir) => out.field("dir", dir),
            #[cfg(feature = "postgres")]
            Home::Database(_) => out.field("home", &"PostgreSQL"),
        };
        out.field("len", &self.len)
            .field("spilled", &!matches!(self.sink, Sink::Memory(_)))
            .finish()
    }
}

impl BlobWriter {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self::with_home(Home::Folder(dir))
    }

    /// A writer that spills into a PostgreSQL store's chunk table.
    #[cfg(feature = "postgres")]
    pub(crate) fn for_database(home: std::sync::Arc<super::postgres::BodyHome>) -> Self {
        Self::with_home(Home::Database(home))
    }

    fn with_home(home: Home) -> Self {
        Self {
            home,
            sink: Sink::Memory(Vec::new()),
            hasher: Some(digest::Context::new(&digest::SHA256)),
            len: 0,
        }
    }

    /// Keeps the bytes without hashing them: [`Body::sha256`] is then `None`.
    ///
    /// For the server's inbox, which identifies a stored message by its
    /// [`SealedIdentity`] instead: the opener already hashes the plaintext for
    /// the signature, and a second SHA-256 over every sealed byte would cost as
    /// much again (`openssl speed` on the 2-core bench machine: SHA-256 1.4 GB/s,
    /// AES-256-GCM 3.1 GB/s, so the second hash was about 40 % of the CPU a
    /// large hybrid message cost to decrypt and hash).
    pub fn without_sha256(mut self) -> Self {
        self.hasher = None;
        self
    }

    /// Move the in-memory bytes into a new temporary file (or database upload).
    fn spill(&mut self, buffered: &[u8]) -> io::Result<()> {
        #[cfg(feature = "postgres")]
        if let Home::Database(home) = &self.home {
            let mut upload = super::postgres::ChunkUpload::start(home.clone())?;
            upload.write_all(buffered)?;
            self.sink = Sink::Chunks(upload);
            return Ok(());
        }
        let Some(dir) = self.home.folder() else {
            return Err(io::Error::other("this store keeps no body files"));
        };
        let file = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)?;
        let mut writer = BufWriter::with_capacity(FILE_WRITE_BUFFER, file);
        writer.write_all(buffered)?;
        self.sink = Sink::File(writer);
        Ok(())
    }

    /// Make the body durable and hand it over for an insert or enqueue.
    ///
    /// For a spilled body: flush, fsync the file, rename it (never over an
    /// existing file) to a random final name, fsync the folder. The returned
    /// [`Body`] deletes the file again if it is dropped uncommitted.
    pub fn finish(self) -> Result<Body, StoreError> {
        let sha256 = self.hasher.map(|h| sha256_array(h.finish().as_ref()));
        let writer = match self.sink {
            Sink::Memory(bytes) => {
                return Ok(Body {
                    kind: BodyKind::Inline(bytes),
                    len: self.len,
                    sha256,
                });
            }
            Sink::File(writer) => writer,
            #[cfg(feature = "postgres")]
            Sink::Chunks(upload) => {
                let staged = upload.finish(self.len, sha256)?;
                return Ok(Body {
                    kind: BodyKind::Chunked(staged),
                    len: self.len,
                    sha256,
                });
            }
        };
        // Always a folder: a database home spills into `Sink::Chunks`.
        let Some(dir) = self.home.folder().cloned() else {
            return Err(StoreError::Corrupt {
                what: "body writer state (a file spilled for a database store)",
            });
        };
        let mut temp = writer.into_inner().map_err(|err| StoreError::Io {
            action: "flush a body file in",
            path: dir.clone(),
            source: err.into_error(),
        })?;
        temp.as_file()
            .sync_all()
            .map_err(StoreError::io("fsync body file", temp.path()))?;
        let mut attempt = 0;
        let name = loop {
            let name = random_blob_name(&dir)?;
            match temp.persist_noclobber(dir.join(&name)) {
                Ok(_file) => break name,
                Err(err)
                    if err.error.kind() == io::ErrorKind::AlreadyExists
                        && attempt + 1 < BLOB_NAME_ATTEMPTS =>
                {
                    attempt += 1;
                    temp = err.file;
                }
                Err(err) => {
                    return Err(StoreError::Io {
                        action: "rename a finished body file into",
                        path: dir.clone(),
                        source: err.error,
                    });
                }
            }
        };
        // From here on the file has its final name: the Blob guard owns it.
        let blob = Blob {
            dir,
            name,
            keep: false,
        };
        sync_dir(&blob.dir)?;
        debug!(name = %blob.name, len = self.len, "body file staged");
        Ok(Body {
            kind: BodyKind::File(blob),
            len: self.len,
            sha256,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = match &mut self.sink {
            Sink::Memory(bytes) if bytes.len() + buf.len() <= INLINE_MAX => {
                bytes.extend_from_slice(buf);
                buf.len()
            }
            Sink::Memory(bytes) => {
                let buffered = std::mem::take(bytes);
                if let Err(err) = self.spill(&buffered) {
                    // Keep the bytes so a retry after e.g. freeing disk space works.
                    self.sink = Sink::Memory(buffered);
                    return Err(err);
                }
                return self.write(buf);
            }
            Sink::File(writer) => writer.write(buf)?,
            #[cfg(feature = "postgres")]
            Sink::Chunks(upload) => upload.write(buf)?,
        };
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..written]);
        }
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Memory(_) => Ok(()),
            Sink::File(writer) => writer.flush(),
            #[cfg(feature = "postgres")]
            Sink::Chunks(upload) => upload.flush(),
        }
    }
}

/// Domain separation for [`SealedIdentity`]: its input can never be mistaken
/// for a sealed message (which starts with the magic `LETRLOCK`), so an
/// identity never equals the SHA-256 of any sealed bytes.
pub const SEALED_IDENTITY_CONTEXT: &[u8] = b"letterlock v1 sealed identity";

/// What the server's inbox stores as a message's `content_hash`: a SHA-256
/// over the parts of the sealed bytes that tell one sealing from another,
/// not over every byte (PROTOCOL.md, "Repeats and the record of received
/// messages", defines it; SECURITY.md argues it).
///
/// ```text
/// SHA-256( "letterlock v1 sealed identity" || header (104 bytes)
///          || hybrid: wrapped key (k bytes) || tag of piece 0 || tag of piece 1 || ...
///             asymmetric: every byte after the header
///          || sealed length (u64 BE) )
/// ```
/// where k is the recipient's modulus length, the bytes after the wrapped key
/// are cut into pieces of `chunk size + 16` bytes (the last one may be
/// shorter), and a piece's tag is its last 16 bytes (all of it if shorter).
/// For a message that verified, the pieces are its STREAM chunks and the tags
/// their AES-GCM tags.
///
/// Why this suffices: a new message is opened, and every chunk's tag is
/// checked against every byte of its chunk, so the tags stand for the whole
/// ciphertext; the wrapped key is a fresh OAEP ciphertext of a fresh key for
/// every sealing, so a second sealing under a reused id differs in it (and in
/// its tags) except with negligible probability. A repeat is *not* opened, so
/// its other bytes could differ unseen; but only the authenticated sender of
/// the id can send a repeat, and what matching bytes earn it (the stored ack
/// tag, which it can compute from its own signature) is nothing it did not
/// have: nothing is opened, stored or forwarded for a repeat.
///
/// Why not a SHA-256 of every byte: the opener already hashes the plaintext
/// for the signature; a second full hash would cost as much again. This one
/// hashes about 16 bytes per chunk (64 KiB by default), plus the header and
/// the wrapped key. Asymmetric bodies are hashed whole: they have no tags,
/// and each of their blocks costs an RSA decryption (about a millisecond)
/// next to which hashing it (well under a microsecond) does not count.
#[derive(Clone)]
pub struct SealedIdentity {
    hasher: digest::Context,
    /// Bytes still to be hashed whole: the header and the wrapped key (hybrid),
    /// or everything (asymmetric).
    whole_left: u64,
    /// Length of a sealed piece (chunk size + tag).
    piece: usize,
    /// Bytes of the current piece seen so far.
    piece_pos: usize,
    /// The last bytes of the current piece: its tag once the piece ends.
    tail: [u8; TAG_LEN],
    tail_len: usize,
    /// Sealed bytes seen.
    len: u64,
}

impl std::fmt::Debug for SealedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedIdentity")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SealedIdentity {
    /// Starts the identity of the message with `header`, sealed for a
    /// recipient whose modulus is `wrapped_key_len` bytes. Feed it every sealed
    /// byte, the header first.
    pub fn new(header: &Header, wrapped_key_len: usize) -> Self {
        let header_len = HEADER_LEN as u64;
        let (whole_left, chunk) = match header.mode {
            Mode::Hybrid => (
                header_len.saturating_add(wrapped_key_len as u64),
                header.chunk_size as usize,
            ),
            Mode::Asymmetric => (u64::MAX, 0),
        };
        let mut hasher = digest::Context::new(&digest::SHA256);
        hasher.update(SEALED_IDENTITY_CONTEXT);
        Self {
            hasher,
            whole_left,
            // At least one tag long: a header's chunk size is at least 1 KiB anyway.
            piece: chunk.saturating_add(TAG_LEN),
            piece_pos: 0,
            tail: [0; TAG_LEN],
            tail_len: 0,
            len: 0,
        }
    }

    /// The identity of a whole sealed message held in memory (`None` if it is
    /// shorter than a header or its header does not parse).
    pub fn of(sealed: &[u8], wrapped_key_len: usize) -> Option<[u8; 32]> {
        let header = Header::parse(sealed).ok()?;
        let mut identity = Self::new(&header, wrapped_key_len);
        identity.update(sealed);
        Some(identity.finish())
    }

    /// The wrapped-key length of a hybrid message that verified, from what its inbox row
    /// records, for checking a stored identity without the recipient's key (`copy-store`):
    /// `sealed_len` = header + k + data block + one tag per chunk, where the data block is the
    /// plaintext and the sender's signature (`sig_len`, its modulus length). `None` when the
    /// figures do not fit together (or for an asymmetric header, whose identity needs no k).
    pub fn wrapped_key_len(
        header: &Header,
        sealed_len: u64,
        plaintext_len: u64,
        sig_len: usize,
    ) -> Option<usize> {
        if header.mode != Mode::Hybrid {
            return None;
        }
        let data = plaintext_len.checked_add(sig_len as u64)?;
        let chunks = data.div_ceil(u64::from(header.chunk_size)).max(1);
        let k = sealed_len
            .checked_sub(HEADER_LEN as u64)?
            .checked_sub(data)?
            .checked_sub(chunks.checked_mul(TAG_LEN as u64)?)?;
        usize::try_from(k).ok()
    }

    /// Takes the next sealed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.len = self.len.saturating_add(data.len() as u64);
        let whole = usize::try_from(self.whole_left)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let (head, mut rest) = data.split_at(whole);
        self.hasher.update(head);
        self.whole_left -= whole as u64;
        while !rest.is_empty() {
            let take = (self.piece - self.piece_pos).min(rest.len());
            let (part, after) = rest.split_at(take);
            self.keep_tail(part);
            self.piece_pos += take;
            rest = after;
            if self.piece_pos == self.piece {
                self.hash_tail();
            }
        }
    }

    /// The identity.
    pub fn finish(mut self) -> [u8; 32] {
        if self.piece_pos > 0 {
            self.hash_tail();
        }
        self.hasher.update(&self.len.to_be_bytes());
        sha256_array(self.hasher.finish().as_ref())
    }

    /// Keeps the last [`TAG_LEN`] bytes of the current piece, `part` being its latest bytes.
    fn keep_tail(&mut self, part: &[u8]) {
        if let Some(last) = part
            .len()
            .checked_sub(TAG_LEN)
            .and_then(|from| part.get(from..))
        {
            self.tail.copy_from_slice(last);
            self.tail_len = TAG_LEN;
            return;
        }
        // `part` is shorter than a tag: keep what fits of the old tail before it.
        let keep = (TAG_LEN - part.len()).min(self.tail_len);
        self.tail
            .copy_within(self.tail_len - keep..self.tail_len, 0);
        self.tail[keep..keep + part.len()].copy_from_slice(part);
        self.tail_len = keep + part.len();
    }

    /// The current piece ended: its tag goes into the hash.
    fn hash_tail(&mut self) {
        self.hasher.update(&self.tail[..self.tail_len]);
        self.tail_len = 0;
        self.piece_pos = 0;
    }
}

/// Where a stored body lives, as read from a row.
pub(crate) enum StoredBody {
    Inline(Vec<u8>),
    File(String),
}

impl StoredBody {
    /// Build from the row's two body columns (exactly one is set).
    pub(crate) fn from_columns(
        inline: Option<Vec<u8>>,
        file: Option<String>,
    ) -> Result<Self, StoreError> {
        match (inline, file) {
            (Some(bytes), None) => Ok(Self::Inline(bytes)),
            (None, Some(name)) if is_blob_name(&name) => Ok(Self::File(name)),
            _ => Err(StoreError::Corrupt {
                what: "message body reference",
            }),
        }
    }

    /// Open a streaming reader; a file body is never loaded whole.
    pub(crate) fn open(self, blob_dir: &Path) -> Result<Box<dyn Read + Send>, StoreError> {
        match self {
            Self::Inline(bytes) => Ok(Box::new(Cursor::new(bytes))),
            Self::File(name) => {
                let path = blob_dir.join(name);
                match File::open(&path) {
                    Ok(file) => Ok(Box::new(file)),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        Err(StoreError::BlobMissing { path })
                    }
                    Err(err) => Err(StoreError::io("open body file", path)(err)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{MIN_CHUNK_SIZE, SealOptions};
    use crate::{Identity, PrivateKey};

    const ALICE: &str = include_str!("../../../tests/keys/alice2048_private.pem");
    const BOB: &str = include_str!("../../../tests/keys/bob3072_private.pem");

    /// A message of `len` bytes from Alice (2048-bit) to Bob (3072-bit: k = 384), in 1 KiB
    /// chunks, and Bob's wrapped-key length.
    fn sealed(len: usize, mode: Mode) -> (Vec<u8>, usize) {
        let alice = PrivateKey::from_pem(ALICE).unwrap();
        let bob = PrivateKey::from_pem(BOB).unwrap();
        let opts = SealOptions {
            mode,
            chunk_size: MIN_CHUNK_SIZE,
            ..SealOptions::default()
        };
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = crate::seal(&plain, &alice, bob.public(), &opts).unwrap();
        (bytes, bob.public().modulus_len())
    }

    /// Where each chunk's tag is: `(start, end)` of the 16 bytes ending every sealed chunk.
    fn tag_ranges(len: usize, k: usize) -> Vec<(usize, usize)> {
        let piece = MIN_CHUNK_SIZE as usize + TAG_LEN;
        let mut ends: Vec<usize> = (HEADER_LEN + k + piece..len).step_by(piece).collect();
        if ends.last() != Some(&len) {
            ends.push(len);
        }
        ends.into_iter().map(|end| (end - TAG_LEN, end)).collect()
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_identity() {
        let (bytes, k) = sealed(5000, Mode::Hybrid);
        let whole = SealedIdentity::of(&bytes, k).unwrap();
        for step in [1, 7, 16, 17, 1040, 4096] {
            let header = Header::parse(&bytes).unwrap();
            let mut identity = SealedIdentity::new(&header, k);
            for piece in bytes.chunks(step) {
                identity.update(piece);
            }
            assert_eq!(identity.finish(), whole, "split into pieces of {step}");
        }
        // Not a SHA-256 of the bytes: that is what it replaces.
        assert_ne!(
            whole,
            sha256_array(digest::digest(&digest::SHA256, &bytes).as_ref())
        );
    }

    #[test]
    fn the_header_the_wrapped_key_every_tag_and_the_length_are_covered() {
        let (bytes, k) = sealed(5000, Mode::Hybrid);
        let whole = SealedIdentity::of(&bytes, k).unwrap();
        let tags = tag_ranges(bytes.len(), k);
        assert_eq!(tags.len(), 6, "5,256 bytes of data block in 1 KiB chunks");
        let mut covered: Vec<usize> = vec![20, HEADER_LEN, HEADER_LEN + k - 1];
        covered.extend(tags.iter().flat_map(|&(start, end)| [start, end - 1]));
        for at in covered {
            let mut changed = bytes.clone();
            changed[at] ^= 1;
            assert_ne!(SealedIdentity::of(&changed, k), Some(whole), "byte {at}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_ne!(SealedIdentity::of(&longer, k), Some(whole));
        assert_ne!(
            SealedIdentity::of(&bytes[..bytes.len() - 1], k),
            Some(whole)
        );
    }

    #[test]
    fn ciphertext_between_the_tags_is_not_hashed() {
        // By design (see the type's doc): these bytes are authenticated by the tags when the
        // message is opened, and a repeat that differs only here earns nothing.
        let (bytes, k) = sealed(5000, Mode::Hybrid);
        let whole = SealedIdentity::of(&bytes, k).unwrap();
        let mut changed = bytes.clone();
        changed[HEADER_LEN + k + 100] ^= 1;
        assert_eq!(SealedIdentity::of(&changed, k), Some(whole));
    }

    #[test]
    fn a_second_sealing_under_the_same_header_differs() {
        let (first, k) = sealed(3000, Mode::Hybrid);
        let (mut second, _) = sealed(3000, Mode::Hybrid);
        second[..HEADER_LEN].copy_from_slice(&first[..HEADER_LEN]);
        assert_ne!(
            SealedIdentity::of(&first, k),
            SealedIdentity::of(&second, k)
        );
    }

    #[test]
    fn an_asymmetric_body_is_hashed_whole() {
        let (bytes, k) = sealed(500, Mode::Asymmetric);
        let whole = SealedIdentity::of(&bytes, k).unwrap();
        for at in [HEADER_LEN, HEADER_LEN + 100, bytes.len() - 1] {
            let mut changed = bytes.clone();
            changed[at] ^= 1;
            assert_ne!(SealedIdentity::of(&changed, k), Some(whole), "byte {at}");
        }
    }

    #[test]
    fn the_wrapped_key_length_follows_from_the_row() {
        for len in [0, 1, 1024 - 256, 1024 - 255, 5000] {
            let (bytes, k) = sealed(len, Mode::Hybrid);
            let header = Header::parse(&bytes).unwrap();
            let derived =
                SealedIdentity::wrapped_key_len(&header, bytes.len() as u64, len as u64, 256);
            assert_eq!(derived, Some(k), "plaintext of {len} bytes");
        }
        let (bytes, _) = sealed(10, Mode::Asymmetric);
        let header = Header::parse(&bytes).unwrap();
        assert_eq!(
            SealedIdentity::wrapped_key_len(&header, bytes.len() as u64, 10, 256),
            None
        );
    }

    #[test]
    fn a_writer_without_sha256_keeps_the_bytes_and_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = BlobWriter::new(dir.path().to_path_buf()).without_sha256();
        let data = vec![5u8; INLINE_MAX + 10];
        writer.write_all(&data).unwrap();
        let body = writer.finish().unwrap();
        assert!(body.is_file());
        assert_eq!(body.len(), data.len() as u64);
        assert_eq!(body.sha256(), None);
        let mut hashed = BlobWriter::new(dir.path().to_path_buf());
        hashed.write_all(&data).unwrap();
        assert_eq!(
            hashed.finish().unwrap().sha256(),
            Some(sha256_array(
                digest::digest(&digest::SHA256, &data).as_ref()
            ))
        );
    }
}
