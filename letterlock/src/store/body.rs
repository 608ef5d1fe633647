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
    sha256: [u8; 32],
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
        out.field("sha256", &hex::encode(self.sha256)).finish()
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
        let sha256 = sha256_array(digest::digest(&digest::SHA256, &bytes).as_ref());
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

    /// SHA-256 of the bytes, computed while they were written; usable as the
    /// record's content hash without a second pass over a large body.
    pub fn sha256(&self) -> [u8; 32] {
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
    hasher: digest::Context,
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
            hasher: digest::Context::new(&digest::SHA256),
            len: 0,
        }
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
        let sha256 = sha256_array(self.hasher.finish().as_ref());
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
        self.hasher.update(&buf[..written]);
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
