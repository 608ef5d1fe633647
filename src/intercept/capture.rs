//! The capture file: every byte the proxy reads, written to disk as it is read.
//!
//! ```text
//! file   = "LETRLOCK-CAPTURE v1\n" || record*
//! record = direction (u8: '>' client → server, '<' server → client)
//!       || connection number (u32 BE, from 1)
//!       || length (u32 BE, at most MAX_RECORD) || the bytes, exactly as read from that side
//! ```
//! Records are what the proxy *received* (before any tampering): what a passive eavesdropper on
//! that side of the proxy sees. The writer cuts longer reads into records of at most
//! [`MAX_RECORD`] bytes, and the reader refuses a longer one before allocating for it.
//!
//! The writer flushes each record and only then counts it as committed: readers of a live
//! capture ([`super::Proxy::records`], [`super::Proxy::search`]) read up to the committed length,
//! so they never see half a record. Nothing here keeps captured bytes in memory.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use letterlock::files;

use super::{Direction, InterceptError};

/// First bytes of a capture file.
pub const CAPTURE_MAGIC: &[u8; 20] = b"LETRLOCK-CAPTURE v1\n";
/// Longest record written, and read: the proxy's read size.
pub const MAX_RECORD: usize = 64 * 1024;
/// Direction, connection number, length.
const RECORD_HEADER: usize = 9;

/// Bytes read from one side of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub conn: u32,
    pub dir: Direction,
    pub bytes: Vec<u8>,
}

/// Appends one record of at most [`MAX_RECORD`] bytes.
pub(super) fn write_record(
    w: &mut impl Write,
    conn: u32,
    dir: Direction,
    bytes: &[u8],
) -> io::Result<()> {
    if bytes.len() > MAX_RECORD {
        return Err(io::Error::other("record too long"));
    }
    // At most MAX_RECORD: fits.
    let len = bytes.len() as u32;
    w.write_all(&[dir.byte()])?;
    w.write_all(&conn.to_be_bytes())?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

/// The capture being written. The temporary file, when the caller named none, is removed when
/// this is dropped.
pub(super) struct CaptureWriter {
    file: BufWriter<File>,
    path: PathBuf,
    /// Bytes of the file written and flushed: whole records only.
    committed: u64,
    /// Writing failed once: the file ends at `committed` and takes nothing more.
    failed: bool,
    /// Keeps the temporary file alive (and removes it on drop).
    _temporary: Option<tempfile::TempPath>,
}

impl CaptureWriter {
    /// Creates `path` ([`create_new`]: an existing file is replaced only if `replace`), or a
    /// temporary file when `None`, and writes the magic.
    pub(super) fn create(
        path: Option<&Path>,
        replace: bool,
    ) -> Result<CaptureWriter, InterceptError> {
        let (file, path, temporary) = match path {
            Some(path) => (create_new(path, replace)?, path.to_owned(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("letterlock-capture")
                    .tempfile()?;
                let (file, temp_path) = temp.into_parts();
                (file, temp_path.to_path_buf(), Some(temp_path))
            }
        };
        let mut file = BufWriter::with_capacity(MAX_RECORD + RECORD_HEADER, file);
        file.write_all(CAPTURE_MAGIC)
            .and_then(|()| file.flush())
            .map_err(|source| InterceptError::Capture {
                path: path.clone(),
                source,
            })?;
        Ok(CaptureWriter {
            file,
            path,
            committed: CAPTURE_MAGIC.len() as u64,
            failed: false,
            _temporary: temporary,
        })
    }

    /// Appends `bytes` as records of at most [`MAX_RECORD`] bytes and flushes them.
    pub(super) fn append(&mut self, conn: u32, dir: Direction, bytes: &[u8]) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        let mut written = 0u64;
        let result = bytes
            .chunks(MAX_RECORD)
            .try_for_each(|piece| {
                write_record(&mut self.file, conn, dir, piece)?;
                written += (RECORD_HEADER + piece.len()) as u64;
                Ok(())
            })
            .and_then(|()| self.file.flush());
        match result {
            Ok(()) => self.committed += written,
            // What reached the file past `committed` may be half a record: stop writing, so
            // the capture stays readable up to there.
            Err(_) => self.failed = true,
        }
        result
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The length of the file that holds whole records.
    pub(super) fn committed(&self) -> u64 {
        self.committed
    }
}

/// A new file at `path`, made with `O_CREAT | O_EXCL` (`create_new`): never written over an
/// existing file, nor through a symbolic link, not even one planted after the checks here
/// (found by a trial run: `--capture` truncated an existing file, and the file a link led to,
/// so in a shared /tmp anyone could have a proxy run as root wipe any file). With `replace`
/// an existing regular file is removed first and a new one made in its place; a link, a
/// folder, a device or a pipe is refused either way, as `seal -o` refuses them
/// ([`files::check_replaceable`]).
fn create_new(path: &Path, replace: bool) -> Result<File, InterceptError> {
    let io_err = |source| InterceptError::Capture {
        path: path.to_owned(),
        source,
    };
    if check_target(path, replace)? {
        // Removing a name never follows a link: if one was put here since the check, it goes,
        // and what it led to is untouched.
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => InterceptError::CaptureExists {
                path: path.to_owned(),
            },
            _ => io_err(e),
        })
}

/// Whether a capture may be written at `path`, as [`create_new`] decides, without touching
/// it: `Ok(true)` if a regular file is there to be replaced (`replace`), `Ok(false)` if
/// nothing is there. Asked before the proxy listens, so that a refused capture leaves nothing
/// listening, while the file is replaced only once the listener is bound.
pub(super) fn check_target(path: &Path, replace: bool) -> Result<bool, InterceptError> {
    let io_err = |source| InterceptError::Capture {
        path: path.to_owned(),
        source,
    };
    files::check_replaceable(path).map_err(io_err)?;
    // A missing folder is said before the proxy listens too (found by a review: with the port
    // in use, it came out as "cannot listen").
    let folder = files::folder_of(path);
    let meta = std::fs::metadata(folder).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => io_err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the folder {} does not exist; create it first, or choose another --capture",
                folder.display()
            ),
        )),
        _ => io_err(e),
    })?;
    if !meta.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", folder.display()),
        )));
    }
    let exists = path.symlink_metadata().is_ok();
    if exists && !replace {
        return Err(InterceptError::CaptureExists {
            path: path.to_owned(),
        });
    }
    Ok(exists)
}

/// Reads a capture file record by record: memory holds one record at a time.
pub struct CaptureReader {
    input: io::Take<BufReader<Box<dyn Read + Send>>>,
    /// What errors name: the file, or `stdin`.
    path: PathBuf,
    /// Whole records read so far, for the error of a capture cut short.
    records: u64,
}

impl CaptureReader {
    /// Opens a capture file written with `--capture`.
    pub fn open(path: &Path) -> Result<CaptureReader, InterceptError> {
        Self::open_prefix(path, u64::MAX)
    }

    /// Reads only the first `len` bytes: the committed part of a capture still being written.
    pub(super) fn open_prefix(path: &Path, len: u64) -> Result<CaptureReader, InterceptError> {
        let file = File::open(path).map_err(|source| InterceptError::Capture {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(Box::new(file), path, len)
    }

    /// Reads a capture from `input` (stdin for `--show -`), errors naming it `path`.
    pub fn from_reader(
        input: Box<dyn Read + Send>,
        path: &Path,
        len: u64,
    ) -> Result<CaptureReader, InterceptError> {
        let io_err = |source| InterceptError::Capture {
            path: path.to_owned(),
            source,
        };
        let mut input = BufReader::with_capacity(MAX_RECORD, input).take(len);
        let mut magic = [0u8; CAPTURE_MAGIC.len()];
        match input.read_exact(&mut magic) {
            Ok(()) if magic == *CAPTURE_MAGIC => {}
            Ok(()) => return Err(bad(path, "it does not start with the capture magic")),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(bad(path, "it does not start with the capture magic"));
            }
            Err(e) => return Err(io_err(e)),
        }
        Ok(CaptureReader {
            input,
            path: path.to_owned(),
            records: 0,
        })
    }

    fn read_record(&mut self) -> Result<Option<Record>, InterceptError> {
        let mut head = [0u8; RECORD_HEADER];
        let got = read_full(&mut self.input, &mut head).map_err(|e| self.io(e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < RECORD_HEADER {
            return Err(self.cut());
        }
        let [d, c0, c1, c2, c3, l0, l1, l2, l3] = head;
        let dir =
            Direction::from_byte(d).ok_or_else(|| bad(&self.path, "unknown direction byte"))?;
        let conn = u32::from_be_bytes([c0, c1, c2, c3]);
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if len > MAX_RECORD {
            return Err(bad(&self.path, "a record longer than the proxy writes"));
        }
        let mut bytes = vec![0u8; len];
        let got = read_full(&mut self.input, &mut bytes).map_err(|e| self.io(e))?;
        if got < len {
            return Err(self.cut());
        }
        self.records += 1;
        Ok(Some(Record { conn, dir, bytes }))
    }

    /// The capture ended part-way through a record (found by a trial run: it was reported as
    /// "not a letterlock capture").
    fn cut(&self) -> InterceptError {
        InterceptError::CaptureCut {
            path: self.path.clone(),
            records: self.records,
        }
    }

    fn io(&self, source: io::Error) -> InterceptError {
        InterceptError::Capture {
            path: self.path.clone(),
            source,
        }
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Record, InterceptError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

fn bad(path: &Path, reason: &str) -> InterceptError {
    InterceptError::BadCapture {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes it got.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a whole capture file into memory; [`CaptureReader`] reads it a record at a time.
pub fn read_capture(path: &Path) -> Result<Vec<Record>, InterceptError> {
    CaptureReader::open(path)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.cap");
        let mut f = Vec::new();
        f.extend_from_slice(CAPTURE_MAGIC);
        write_record(&mut f, 3, Direction::ToClient, b"hello").unwrap();
        write_record(&mut f, 4, Direction::ToServer, b"").unwrap();
        std::fs::write(&path, &f).unwrap();
        let records = read_capture(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].bytes, b"hello");
        assert_eq!((records[1].conn, records[1].dir), (4, Direction::ToServer));
        std::fs::write(&path, &f[..f.len() - 3]).unwrap();
        assert!(matches!(
            read_capture(&path),
            Err(InterceptError::CaptureCut { records: 1, .. })
        ));
        std::fs::write(&path, b"LETRLOCK-CAPTURE v2\n").unwrap();
        assert!(read_capture(&path).is_err());
    }

    #[test]
    fn the_writer_cuts_long_reads_and_the_reader_refuses_longer_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.cap");
        let mut w = CaptureWriter::create(Some(&path), false).unwrap();
        let long = vec![0xabu8; 2 * MAX_RECORD + 5];
        w.append(1, Direction::ToServer, &long).unwrap();
        assert_eq!(w.committed(), std::fs::metadata(&path).unwrap().len());
        let records = read_capture(&path).unwrap();
        let sizes: Vec<usize> = records.iter().map(|r| r.bytes.len()).collect();
        assert_eq!(sizes, [MAX_RECORD, MAX_RECORD, 5]);
        // A hand-made record over the limit is refused before anything is allocated for it.
        let mut f = CAPTURE_MAGIC.to_vec();
        f.push(b'>');
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&path, &f).unwrap();
        assert!(matches!(
            read_capture(&path),
            Err(InterceptError::BadCapture { reason, .. }) if reason.contains("longer")
        ));
    }

    #[test]
    fn a_temporary_capture_is_removed_with_its_writer() {
        let w = CaptureWriter::create(None, false).unwrap();
        let path = w.path().to_owned();
        assert!(path.exists());
        drop(w);
        assert!(!path.exists());
    }
}
