//! The one way letterlock writes a file that must appear whole or not at all: key files, opened
//! plaintext, sealed output, fetched messages.
//!
//! Order: a temporary file in the target's folder (same file system, so the rename is atomic),
//! write, fsync the file, rename it onto the target, fsync the folder (so the rename itself
//! survives a crash). A failure at any step removes the temporary file; the target is either
//! untouched or complete.
//!
//! On Linux the temporary file has no name until the commit (`O_TMPFILE`): opened plaintext is
//! written to it before the signature is checked, and a process stopped part-way (Ctrl-C, a
//! `kill`, a crash, a power cut) must not leave that unverified plaintext behind in a hidden
//! file, which no destructor would remove. The commit links the finished file into the folder
//! (through `/proc/self/fd`). Where unnamed files are not available (another system, a file
//! system without them, no `/proc`), it is a named `.letterlock-tmp…` file, removed on any
//! failure the process lives through; a program that handles Ctrl-C and SIGTERM can remove
//! those of its files too ([`on_first_named_file`], [`remove_unfinished`]). The library itself
//! never installs a signal handler: that is its program's to decide.
//!
//! Invariants:
//! - Only a regular file, or nothing, is ever replaced: the rename would turn a device, a pipe
//!   or a socket into a regular file (as root, `-o /dev/null` would destroy `/dev/null`). A
//!   character device or a named pipe is not replaced but written in place, by its program
//!   ([`open_stream`]), as a shell's `>` writes it; what may be written there unverified is
//!   that program's to decide.
//! - Nothing is overwritten unless [`WriteOptions::replace`] says so; without it the rename is
//!   a no-clobber one, so a file created meanwhile is not replaced either.
//! - The temporary file has [`WriteOptions::mode`] from its creation (0600 unless told
//!   otherwise): plaintext and private keys are never readable by others, not even briefly.
//!
//! Beside them, [`FileLock`]: an exclusive `flock` on a lock file, which keeps two letterlock
//! processes out of one folder's state (`client recv_msg` on a keys folder).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

/// How [`AtomicFile`] writes its target.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Unix permission bits of the new file (default 0600: owner only).
    pub mode: u32,
    /// Replace an existing regular file at the target (default: refuse).
    pub replace: bool,
    /// Create the target's folder (and its parents) if missing, owner-only (0700, as ssh
    /// creates ~/.ssh: it holds keys and mailboxes); default: no.
    pub create_dirs: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            mode: 0o600,
            replace: false,
            create_dirs: false,
        }
    }
}

/// A file being written beside its target; it appears at the target only on
/// [`AtomicFile::commit`]. Dropped without a commit, it leaves nothing behind.
///
/// Writes go straight to the file, with no user-space buffer: callers write plaintext in large
/// pieces, and a buffer would hold a copy nobody wipes.
#[derive(Debug)]
pub struct AtomicFile {
    /// The file being written, gone on drop unless committed.
    tmp: Temp,
    /// Where the file appears on commit.
    target: PathBuf,
    /// The folder of both, fsynced after the rename.
    dir: PathBuf,
    /// Rename over an existing file (true) or refuse (false).
    replace: bool,
}

impl AtomicFile {
    /// Starts a file for `target`. Fails with [`io::ErrorKind::AlreadyExists`] if the target
    /// exists and `opts.replace` is false, and with [`io::ErrorKind::InvalidInput`] if the
    /// target is anything but a regular file.
    pub fn create(target: &Path, opts: &WriteOptions) -> io::Result<AtomicFile> {
        Self::create_as(target, opts, true)
    }

    /// [`AtomicFile::create`], with an unnamed file if `unnamed` and the system has them;
    /// with a named one otherwise (the tests check both ways).
    fn create_as(target: &Path, opts: &WriteOptions, unnamed: bool) -> io::Result<AtomicFile> {
        check_replaceable(target)?;
        if !opts.replace && fs::symlink_metadata(target).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }
        let dir = folder_of(target).to_owned();
        if opts.create_dirs {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        let tmp = match unnamed.then(|| unnamed_in(&dir, opts.mode)).flatten() {
            Some(file) => Temp::Unnamed(file),
            None => {
                if let Some(hook) = FIRST_NAMED.get() {
                    static CALLED: std::sync::Once = std::sync::Once::new();
                    CALLED.call_once(hook);
                }
                let tmp = named_in(&dir, opts.mode)?;
                let unfinished = Unfinished::list(tmp.path());
                Temp::Named(tmp, unfinished)
            }
        };
        Ok(AtomicFile {
            tmp,
            target: target.to_owned(),
            dir,
            replace: opts.replace,
        })
    }

    /// The target this file will appear as.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the file durable and visible at its target: fsync, rename, fsync of the folder.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.file().sync_all()?;
        // Checked again just before the rename: the target may have changed since `create`.
        check_replaceable(&self.target)?;
        match self.tmp {
            // A link fails if the name exists: refused just as a no-clobber rename is.
            Temp::Unnamed(file) if !self.replace => link_unnamed(&file, &self.target)?,
            // Linked under a passing name, then renamed over the target: the file is complete
            // and fsynced by now, so that name, if a crash leaves it, holds nothing unfinished.
            Temp::Unnamed(file) => {
                let named = tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .make_in(&self.dir, |path| link_unnamed(&file, path))?;
                named.persist(&self.target).map_err(|e| e.error)?;
            }
            Temp::Named(tmp, _unfinished) if self.replace => {
                tmp.persist(&self.target).map_err(|e| e.error)?;
            }
            // Refuses if someone created the target since we looked: never a silent overwrite.
            Temp::Named(tmp, _unfinished) => {
                tmp.persist_noclobber(&self.target).map_err(|e| e.error)?;
            }
        }
        fs::File::open(&self.dir)?.sync_all()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.file().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.tmp.file().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tmp.file().flush()
    }
}

/// What an [`AtomicFile`] writes to before its commit.
#[derive(Debug)]
enum Temp {
    /// A file without a name in the target's folder (Linux `O_TMPFILE`): nothing is left of it
    /// if the process ends before the commit, however it ends.
    Unnamed(fs::File),
    /// A named temporary file in the target's folder, removed on drop, and listed for
    /// [`remove_unfinished`] while it lives.
    Named(tempfile::NamedTempFile, Unfinished),
}

impl Temp {
    fn file(&self) -> &fs::File {
        match self {
            Temp::Unnamed(file) => file,
            Temp::Named(tmp, _) => tmp.as_file(),
        }
    }
}

/// The named temporary files this process is writing now, for [`remove_unfinished`].
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// What [`on_first_named_file`] was given.
static FIRST_NAMED: OnceLock<fn()> = OnceLock::new();

/// Has `hook` called once, just before this process first writes a named temporary file (only
/// where unnamed ones are not available: see the module documentation). A program that
/// handles Ctrl-C or SIGTERM can start that handling then, and call [`remove_unfinished`] from
/// it; a program whose files all have no name pays nothing. Only the first call sets the hook.
pub fn on_first_named_file(hook: fn()) {
    let _ = FIRST_NAMED.set(hook);
}

/// Removes the named temporary files this process is writing now (an opened plaintext not yet
/// verified, say): for a program stopping on a signal, which runs no destructor. The files'
/// writers then fail, if they run on. Call it from a thread, not a signal handler: it takes a
/// lock and allocates.
pub fn remove_unfinished() {
    let paths = UNFINISHED.lock().unwrap_or_else(PoisonError::into_inner);
    for path in paths.iter() {
        let _ = fs::remove_file(path);
    }
}

/// A path listed in [`UNFINISHED`] for as long as this lives.
#[derive(Debug)]
struct Unfinished(PathBuf);

impl Unfinished {
    fn list(path: &Path) -> Unfinished {
        let mut paths = UNFINISHED.lock().unwrap_or_else(PoisonError::into_inner);
        paths.push(path.to_owned());
        Unfinished(path.to_owned())
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let mut paths = UNFINISHED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = paths.iter().position(|p| *p == self.0) {
            paths.swap_remove(at);
        }
    }
}

/// The name a named temporary file starts with, beside its target.
const TEMP_PREFIX: &str = ".letterlock-tmp";

/// A new file without a name in `dir` with permission bits `mode` (less the umask), that
/// [`link_unnamed`] can give a name later; `None` where the system or the file system has no
/// such files, or `/proc/self/fd` (which the link goes through) is missing. Linux only.
#[cfg(target_os = "linux")]
fn unnamed_in(dir: &Path, mode: u32) -> Option<fs::File> {
    use rustix::fs::{Mode, OFlags};
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    // Not O_EXCL: that would forbid the link that names it.
    let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
    rustix::fs::open(dir, flags, Mode::from_raw_mode(mode))
        .ok()
        .map(fs::File::from)
}

#[cfg(not(target_os = "linux"))]
fn unnamed_in(_dir: &Path, _mode: u32) -> Option<fs::File> {
    None
}

/// Gives the unnamed `file` ([`unnamed_in`]) the name `path`, in the folder it was made in.
/// Fails with [`io::ErrorKind::AlreadyExists`] if `path` exists.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &fs::File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let cwd = rustix::fs::CWD;
    rustix::fs::linkat(
        cwd,
        proc_path,
        cwd,
        path,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_file: &fs::File, _path: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// A named temporary file in `dir`, for where [`unnamed_in`] has none.
fn named_in(dir: &Path, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(permissions(mode))
        .tempfile_in(dir)
        .map_err(|e| {
            // tempfile's error names its random file name, shown as "{error} at path {random
            // name}", and does not hand the system's own error out otherwise; the user knows
            // the folder.
            let text = e.to_string();
            let why = text.split(" at path ").next().unwrap_or(&text);
            io::Error::new(
                e.kind(),
                format!("cannot create a new file in {}: {why}", dir.display()),
            )
        })
}

/// Writes `contents` to `target` atomically (see the module documentation).
pub fn write_atomic(target: &Path, contents: &[u8], opts: &WriteOptions) -> io::Result<()> {
    let mut file = AtomicFile::create(target, opts)?;
    file.write_all(contents)?;
    file.commit()
}

/// Refuses (with [`io::ErrorKind::InvalidInput`]) a target that exists and is not a regular
/// file: a device, a pipe, a socket, a folder or a symbolic link. Only a regular file, or
/// nothing, may be at a target.
pub fn check_replaceable(target: &Path) -> io::Result<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a folder, not a file", target.display()),
        )),
        // Said as a link, whether it leads anywhere or not (found by a trial run: a dangling
        // link was called "not a regular file", and nothing said it was a link).
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link{}; letterlock writes a new file and renames it into \
                 place, which would replace the link, not write where it leads: give the path \
                 it leads to, or remove the link",
                target.display(),
                match fs::read_link(target) {
                    Ok(to) if fs::metadata(target).is_err() => {
                        format!(" to {}, which does not exist", to.display())
                    }
                    Ok(to) => format!(" to {}", to.display()),
                    Err(_) => String::new(),
                }
            ),
        )),
        Ok(m) if !m.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file; letterlock writes a new file and renames it into \
                 place, which would replace it",
                target.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// The character device or named pipe at `target` (`/dev/null`, `/dev/stdout`, a FIFO; symbolic
/// links followed, as `/dev/stdout` is one), opened for writing in place; `None` when `target`
/// is missing or anything else, which [`AtomicFile`] then writes or refuses. Such a file
/// cannot be replaced by a new one (see the module documentation), and has no content to keep
/// whole: what is written goes to its reader. Opening a pipe waits for its reader, as a
/// shell's `>` does. Never made this process's controlling terminal, if it is a terminal.
pub fn open_stream(target: &Path) -> io::Result<Option<fs::File>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let is_stream = |m: fs::Metadata| m.file_type().is_char_device() || m.file_type().is_fifo();
    if !fs::metadata(target).is_ok_and(is_stream) {
        return Ok(None);
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(target)?;
    // Looked at again once open: the name may have been changed meanwhile (never written to
    // unless it is still a device or a pipe: a regular file would be overwritten in place).
    Ok(is_stream(file.metadata()?).then_some(file))
}

/// The folder a target lives in (`.` for a bare file name, whose `parent()` is empty).
pub fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn permissions(mode: u32) -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(mode)
}

/// An exclusive advisory lock (`flock`) on a lock file, held for as long as this value lives
/// (the kernel releases it when the process ends, however it ends: a crash leaves no stale
/// lock behind). The file itself holds nothing and is left in place.
///
/// It guards state several processes of one user may reach at once, such as a client's keys
/// folder: only processes that take the same lock are kept out.
#[derive(Debug)]
pub struct FileLock {
    /// The open lock file; closing it releases the lock.
    _file: fs::File,
}

impl FileLock {
    /// Opens `path` (created 0600 if missing, never truncated) and locks it without waiting:
    /// `Ok(None)` while another open file holds the lock.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Opened for writing, not read-only: `flock` on NFS needs a file open for writing.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A link at the target is refused as a link, saying where it leads and whether that
    /// exists; the link and what it leads to are left alone.
    #[test]
    fn a_link_at_the_target_is_refused_as_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("missing.txt", &dangling).unwrap();
        let said = check_replaceable(&dangling).unwrap_err().to_string();
        assert!(
            said.contains("is a symbolic link to missing.txt, which does not exist"),
            "{said}"
        );
        let real = dir.path().join("real");
        fs::write(&real, b"kept").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let said = AtomicFile::create(
            &link,
            &WriteOptions {
                replace: true,
                ..WriteOptions::default()
            },
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(said.contains("is a symbolic link to"), "{said}");
        assert!(!said.contains("does not exist"), "{said}");
        assert_eq!(fs::read(&real).unwrap(), b"kept");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn appears_only_on_commit_with_the_mode_asked() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("out");
            let opts = WriteOptions::default();
            let mut f = AtomicFile::create_as(&target, &opts, unnamed).unwrap();
            f.write_all(b"hello").unwrap();
            assert!(!target.exists());
            f.commit().unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"hello");
            assert_eq!(mode(&target), 0o600);
            let public = dir.path().join("pub");
            let opts = WriteOptions {
                mode: 0o644,
                ..WriteOptions::default()
            };
            let mut f = AtomicFile::create_as(&public, &opts, unnamed).unwrap();
            f.write_all(b"k").unwrap();
            f.commit().unwrap();
            assert_eq!(mode(&public), 0o644, "unnamed: {unnamed}");
        }
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_dropped_file_leaves_nothing() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("out");
            let opts = WriteOptions::default();
            let mut f = AtomicFile::create_as(&target, &opts, unnamed).unwrap();
            f.write_all(b"half").unwrap();
            drop(f);
            assert_eq!(
                names(dir.path()),
                Vec::<String>::new(),
                "unnamed: {unnamed}"
            );
        }
    }

    /// What a process stopped part-way leaves of a file it was writing (a plaintext not yet
    /// verified, say): on Linux, nothing, since the file has no name before its commit.
    #[cfg(target_os = "linux")]
    #[test]
    fn on_linux_the_file_has_no_name_until_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let mut f = AtomicFile::create(&target, &WriteOptions::default()).unwrap();
        assert!(
            matches!(f.tmp, Temp::Unnamed(_)),
            "no O_TMPFILE in {} (a file system without unnamed files?)",
            dir.path().display()
        );
        f.write_all(b"not verified yet").unwrap();
        assert_eq!(names(dir.path()), Vec::<String>::new());
        f.commit().unwrap();
        assert_eq!(names(dir.path()), ["out"]);
        // Replacing links it under a passing name first: gone after the commit.
        let replace = WriteOptions {
            replace: true,
            ..WriteOptions::default()
        };
        write_atomic(&target, b"again", &replace).unwrap();
        assert_eq!(names(dir.path()), ["out"]);
        assert_eq!(fs::read(&target).unwrap(), b"again");
    }

    #[test]
    fn never_overwrites_unless_asked() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("out");
            let keep = WriteOptions::default();
            let write = |target: &Path, data: &[u8], opts: &WriteOptions| {
                let mut f = AtomicFile::create_as(target, opts, unnamed)?;
                f.write_all(data)?;
                f.commit()
            };
            fs::write(&target, b"old").unwrap();
            let err = write(&target, b"new", &keep).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(fs::read(&target).unwrap(), b"old");
            // Created between `create` and `commit`: still refused.
            let other = dir.path().join("late");
            let f = AtomicFile::create_as(&other, &keep, unnamed).unwrap();
            fs::write(&other, b"someone else").unwrap();
            let err = f.commit().unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::AlreadyExists,
                "unnamed: {unnamed}"
            );
            assert_eq!(fs::read(&other).unwrap(), b"someone else");
            let replace = WriteOptions {
                replace: true,
                ..WriteOptions::default()
            };
            write(&target, b"new", &replace).unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"new");
            assert_eq!(names(dir.path()), ["late", "out"], "unnamed: {unnamed}");
        }
    }

    #[test]
    fn never_replaces_a_pipe_or_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let replace = WriteOptions {
            replace: true,
            ..WriteOptions::default()
        };
        let err = write_atomic(dir.path(), b"x", &replace).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo is needed for this test");
        let err = write_atomic(&fifo, b"x", &replace).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!fs::symlink_metadata(&fifo).unwrap().is_file());
    }

    #[test]
    fn a_device_or_a_pipe_is_opened_in_place_and_nothing_else() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let null = open_stream(Path::new("/dev/null")).unwrap();
        assert!(null.is_some(), "/dev/null is a character device");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo is needed for this test");
        // A reader first (not waiting for a writer), so opening the writing end does not wait.
        let mut reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
            .unwrap();
        let mut w = open_stream(&fifo)
            .unwrap()
            .expect("a FIFO is written in place");
        w.write_all(b"through").unwrap();
        drop(w);
        let mut got = Vec::new();
        io::Read::read_to_end(&mut reader, &mut got).unwrap();
        assert_eq!(got, b"through");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        // Everything else is left to AtomicFile: written anew, or refused.
        let file = dir.path().join("file");
        fs::write(&file, b"kept").unwrap();
        assert!(open_stream(&file).unwrap().is_none());
        assert_eq!(fs::read(&file).unwrap(), b"kept");
        assert!(open_stream(dir.path()).unwrap().is_none());
        assert!(open_stream(&dir.path().join("missing")).unwrap().is_none());
        let err = write_atomic(dir.path(), b"x", &WriteOptions::default()).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
    }

    #[test]
    fn creates_folders_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/out");
        assert!(write_atomic(&target, b"x", &WriteOptions::default()).is_err());
        let opts = WriteOptions {
            create_dirs: true,
            ..WriteOptions::default()
        };
        write_atomic(&target, b"x", &opts).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"x");
        use std::os::unix::fs::PermissionsExt;
        for folder in [dir.path().join("a"), dir.path().join("a/b")] {
            let mode = fs::metadata(&folder).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", folder.display());
        }
    }

    #[test]
    fn a_file_lock_is_held_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = FileLock::try_acquire(&path).unwrap();
        assert!(first.is_some());
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        drop(first);
        assert!(FileLock::try_acquire(&path).unwrap().is_some());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
