//! Reading a large regular file through a memory map instead of `read(2)` (Linux).
//!
//! Why: `read` copies every byte out of the page cache inside the kernel, and on the machines
//! letterlock is measured on that copy costs more than the SHA-256 of the same bytes. Reading
//! 1 GiB from tmpfs and hashing it took 1.14–1.18 s of CPU with 512 KiB `read`s and 0.85–0.87 s
//! mapped and copied out in user space (issue 13: a file seal's reader thread hashes what it
//! reads, and was the slowest of its three threads).
//!
//! How, and what it keeps the same as `read`:
//! - Each `read` call copies the next bytes out of the map into the caller's buffer: what the
//!   caller hashes and what it encrypts are one private copy, as with `read(2)`, even if
//!   another process writes to the file meanwhile (reading the map twice could see two
//!   different contents, and a signature over the one would not verify over the other).
//! - The pages of each range are mapped with `MADV_POPULATE_READ` before it is copied: a file
//!   truncated under the reader (or a page the file system cannot read) makes that call fail
//!   (`EFAULT`) instead of raising the `SIGBUS` a plain access would; the reader then goes on
//!   with `pread` from the same offset, which reads what is left, as `read` would, or says
//!   what went wrong.
//! - Pages already copied are unmapped again (`MADV_DONTNEED`; the file's data stays in the
//!   page cache), so the process's resident memory stays at a piece or two, not the file.
//! - After each copy the file's length is read again (`fstat`): a file cut inside the last
//!   page of a range still has that page, zeros past its new end, and those zeros are not
//!   returned.
//! - The file's length at the start is where reading ends: bytes appended later are not read
//!   (`read` would read them).
//! - 64-bit systems only: a map of a file of gigabytes would take a 32-bit process's address
//!   space.
//! - Where any of this is not available (another system, a kernel before 5.14 without
//!   `MADV_POPULATE_READ`, a file that cannot be mapped), [`MappedReader::try_map`] gives the
//!   file back, or the reader falls back to `pread` at the same offset.
//!
//! What `read` does not have: a truncation by another process while a range is being copied
//! (most of the reader's time) raises `SIGBUS`, which ends the process. Hence
//! [`MappedReader::try_map`] is `unsafe`: the caller accepts that outcome (letterlock's
//! commands make themselves non-dumpable before loading a key, so no core file holds it, and
//! write their output to an unnamed file until it is complete, so nothing is left
//! behind). This is the only module of the library with `unsafe` code.

use std::fs::File;
use std::io::{self, Read};

/// The smallest file worth mapping: below it, setting the map up and tearing it down costs
/// more than the copies it saves (the CLI reads files up to 64 KiB whole anyway).
pub const MIN_MAPPED: u64 = 1 << 20;

/// A reader over a regular file, through a read-only shared map of it (Linux), or `pread`.
pub struct MappedReader {
    file: File,
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    map: Option<Map>,
    /// The file's length when it was opened: the reader ends there.
    len: u64,
    /// The next byte to read.
    pos: u64,
}

impl std::fmt::Debug for MappedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedReader")
            .field("len", &self.len)
            .field("pos", &self.pos)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl MappedReader {
    /// A reader over `file` from its first byte, mapped if it is a
    /// regular file of at least [`MIN_MAPPED`] bytes on Linux; anything else is given back
    /// (`Err(file)`), to be read as it is.
    ///
    /// # Safety
    ///
    /// If another process truncates the file at the moment this reader copies from the part
    /// cut off, the process receives `SIGBUS` and, unless the program handles that signal,
    /// ends (module documentation). A truncation at any other moment reads as `read` would.
    pub unsafe fn try_map(file: File) -> Result<Self, File> {
        let len = match file.metadata() {
            Ok(meta) if meta.is_file() && meta.len() >= MIN_MAPPED => meta.len(),
            _ => return Err(file),
        };
        #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
        {
            let Ok(size) = usize::try_from(len) else {
                return Err(file);
            };
            // SAFETY: the caller accepts SIGBUS on a truncation (above); the map is only read
            // through `Map::copy_out`, within `size`.
            let Some(map) = (unsafe { Map::new(&file, size) }) else {
                return Err(file);
            };
            Ok(MappedReader {
                file,
                map: Some(map),
                len,
                pos: 0,
            })
        }
        #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
        {
            let _ = len;
            Err(file)
        }
    }

    /// Whether the bytes still come from the map (not yet fallen back to `pread`).
    pub fn is_mapped(&self) -> bool {
        #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
        {
            self.map.is_some()
        }
        #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
        {
            false
        }
    }

    /// The file's length when it was opened: what this reader reads in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty (never, for a reader [`MappedReader::try_map`] made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next bytes with `pread`, from the same offset.
    fn read_at(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Read for MappedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
        if let Some(map) = &mut self.map {
            // `pos + n <= len`, which fits in usize (the map was made).
            if map.copy_out(self.pos as usize, &mut buf[..n]) {
                // A file cut inside the range's last page still has that page, zeros past its
                // new end: bytes the file no longer holds are not returned, and the rest is
                // read with pread.
                let end = self.pos + n as u64;
                let now = self.file.metadata()?.len();
                let kept = if now < end {
                    self.map = None;
                    usize::try_from(now.saturating_sub(self.pos)).map_or(0, |k| k.min(n))
                } else {
                    n
                };
                self.pos += kept as u64;
                return Ok(kept);
            }
            // Truncated, unreadable, or an old kernel: the rest with pread, which says which.
            self.map = None;
        }
        self.read_at(&mut buf[..n])
    }
}

/// A read-only shared map of a whole file, unmapped when dropped.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
struct Map {
    base: std::ptr::NonNull<u8>,
    len: usize,
    page: usize,
    /// Everything before this offset (page-aligned) was unmapped again after its copy.
    released: usize,
}

// SAFETY: the map is private to its reader, which is moved between threads as a whole, never
// shared; the pointer is only dereferenced through `&mut self`.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
unsafe impl Send for Map {}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
impl Map {
    /// Maps the first `len` bytes of `file` (`len` > 0), or `None` if the system refuses.
    ///
    /// # Safety
    /// As [`MappedReader::try_map`].
    unsafe fn new(file: &File, len: usize) -> Option<Map> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        // SAFETY: a fresh mapping (no address given) of a file we hold open, read-only.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                file,
                0,
            )
        }
        .ok()?;
        Some(Map {
            base: std::ptr::NonNull::new(base.cast::<u8>())?,
            len,
            page: rustix::param::page_size(),
            released: 0,
        })
    }

    /// Copies `out.len()` bytes at `at` (within the map) into `out`, mapping their pages
    /// first, and unmaps the pages wholly copied by now. `false`, with nothing copied, if the
    /// pages cannot be mapped in (the file was truncated, a page cannot be read, or the
    /// kernel is older than 5.14): where a plain access would have raised `SIGBUS`.
    fn copy_out(&mut self, at: usize, out: &mut [u8]) -> bool {
        use rustix::mm::{Advice, madvise};
        let end = at + out.len();
        debug_assert!(end <= self.len);
        // madvise wants a page-aligned start.
        let first = at - at % self.page;
        // SAFETY: the range lies within our map; populating only maps pages in.
        let populated = unsafe {
            madvise(
                self.base.as_ptr().add(first).cast(),
                end - first,
                Advice::LinuxPopulateRead,
            )
        };
        if populated.is_err() {
            return false;
        }
        // SAFETY: `at..end` lies within the map, whose pages were just mapped in; `out` is
        // our own buffer, which cannot overlap a fresh read-only map.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr().add(at), out.as_mut_ptr(), out.len());
        }
        let done = end - end % self.page;
        if done > self.released {
            // SAFETY: within our map; nothing else reads those pages again (the reader moves
            // forward only). Dropping the mapping of file pages loses nothing: they stay in
            // the page cache. A failure only leaves them mapped.
            let _ = unsafe {
                madvise(
                    self.base.as_ptr().add(self.released).cast(),
                    done - self.released,
                    Advice::LinuxDontNeed,
                )
            };
            self.released = done;
        }
        true
    }
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this length, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    fn read_all(r: &mut MappedReader, piece: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0; piece];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Every byte comes back, in order, whatever the piece size (pieces not page-aligned).
    #[test]
    fn reads_the_file_as_read_would() {
        let (f, data) = file_of(3 * MIN_MAPPED as usize + 12345);
        for piece in [1, 4095, 4096, 512 * 1024, 10 << 20] {
            let mut r = unsafe { MappedReader::try_map(f.reopen().unwrap()) }.unwrap();
            assert_eq!(
                r.is_mapped(),
                cfg!(all(target_os = "linux", target_pointer_width = "64"))
            );
            if piece == 1 {
                // One byte at a time over the first pages only: slow otherwise.
                let mut b = [0u8; 1];
                for want in &data[..3 * 4096 + 7] {
                    assert_eq!(r.read(&mut b).unwrap(), 1);
                    assert_eq!(b[0], *want);
                }
                continue;
            }
            assert_eq!(read_all(&mut r, piece).unwrap(), data, "piece {piece}");
        }
    }

    #[test]
    fn small_files_and_other_kinds_are_not_mapped() {
        let (f, _) = file_of(MIN_MAPPED as usize - 1);
        assert!(unsafe { MappedReader::try_map(f.reopen().unwrap()) }.is_err());
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        assert!(unsafe { MappedReader::try_map(d) }.is_err());
    }

    /// A file cut inside the page a read ends in: that page is still mapped, zeros past the
    /// new end, and none of those zeros are returned (found by a review).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn a_file_cut_inside_the_last_page_read_gives_no_zeros_it_never_held() {
        let (f, data) = file_of(2 * MIN_MAPPED as usize);
        let mut r = unsafe { MappedReader::try_map(f.reopen().unwrap()) }.unwrap();
        let mut buf = vec![0; 5000];
        assert_eq!(r.read(&mut buf).unwrap(), 5000);
        f.as_file().set_len(5010).unwrap();
        // 5000..8000 lies in the page that still exists (4096..8192).
        let rest = read_all(&mut r, 3000).unwrap();
        assert_eq!(rest, data[5000..5010]);
    }

    /// A file truncated between two reads reads on to its new end, as `read` would, through
    /// `pread`: no SIGBUS (this test would end the test process).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn a_file_truncated_under_the_reader_reads_to_its_new_end() {
        let (f, data) = file_of(4 * MIN_MAPPED as usize);
        let mut r = unsafe { MappedReader::try_map(f.reopen().unwrap()) }.unwrap();
        let mut buf = vec![0; MIN_MAPPED as usize];
        assert_eq!(r.read(&mut buf).unwrap(), buf.len());
        assert_eq!(buf, data[..buf.len()]);
        let cut = MIN_MAPPED as usize + 100;
        f.as_file().set_len(cut as u64).unwrap();
        let rest = read_all(&mut r, 64 * 1024).unwrap();
        assert!(!r.is_mapped());
        assert_eq!(rest, data[MIN_MAPPED as usize..cut]);
    }

    /// The map's resident size, from /proc/self/smaps (kB).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn resident_kb(r: &MappedReader) -> u64 {
        let base = r.map.as_ref().unwrap().base.as_ptr() as u64;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let start = line.split('-').next().unwrap_or("");
            if u64::from_str_radix(start, 16).ok() != Some(base) {
                continue;
            }
            for l in lines.by_ref() {
                if let Some(kb) = l.strip_prefix("Rss:") {
                    return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping at {base:x} in /proc/self/smaps");
    }

    /// Pages already copied out are unmapped again: a large file does not stay resident in
    /// the process (peak RSS, issue 13), only the pages of the range last read.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn pages_read_are_released() {
        let (f, _) = file_of(16 * MIN_MAPPED as usize);
        let mut r = unsafe { MappedReader::try_map(f.reopen().unwrap()) }.unwrap();
        let mut buf = vec![0; 512 * 1024];
        let mut most = 0;
        for _ in 0..24 {
            assert_eq!(r.read(&mut buf).unwrap(), buf.len());
            most = most.max(resident_kb(&r));
        }
        // Whole pieces of whole pages: none left mapped; 12 MiB without the release.
        assert_eq!(most, 0, "{most} kB resident");
        // The measure sees the map's pages when they are mapped.
        let map = r.map.as_ref().unwrap();
        unsafe {
            rustix::mm::madvise(
                map.base.as_ptr().cast(),
                map.len,
                rustix::mm::Advice::LinuxPopulateRead,
            )
        }
        .unwrap();
        assert_eq!(resident_kb(&r), 16 * 1024);
    }

    /// Bytes appended after the start are not read: the length is the one at the start.
    #[test]
    fn reads_the_length_it_started_with() {
        let (f, data) = file_of(MIN_MAPPED as usize + 1);
        let mut r = unsafe { MappedReader::try_map(f.reopen().unwrap()) }.unwrap();
        f.as_file().write_all(b"appended").unwrap();
        assert_eq!(read_all(&mut r, 64 * 1024).unwrap(), data);
        assert_eq!(r.len(), data.len() as u64);
    }
}
