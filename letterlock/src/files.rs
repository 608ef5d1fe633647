//! The one way letterlock writes a file that must appear whole or not at all: key files, opened
//! plaintext, sealed output, fetched messages.
//!
//! Order: a temporary file in the target's folder (same file system, so the rename is atomic),
//! write, fsync the file, rename it onto the target, fsync the folder (so the rename itself
//! survives a crash). A failure at any step removes the temporary file; the target is either
//! untouched or complete.
//!
//! Invariants:
//! - Only a regular file, or nothing, is ever replaced: the rename would turn a device, a pipe
//!   or a socket into a regular file (as root, `-o /dev/null` would destroy `/dev/null`).
//! - Nothing is overwritten unless [`WriteOptions::replace`] says so; without it the rename is
//!   a no-clobber one, so a file created meanwhile is not replaced either.
//! - The temporary file has [`WriteOptions::mode`] from its creation (0600 unless told
//!   otherwise): plaintext and private keys are never readable by others, not even briefly.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
    /// The temporary file, removed on drop unless persisted.
    tmp: tempfile::NamedTempFile,
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
        // tempfile's error names its random file name; the user knows the folder.
        let tmp = tempfile::Builder::new()
            .prefix(".letterlock-tmp")
            .permissions(permissions(opts.mode))
            .tempfile_in(&dir)
            .map_err(|e| {
                // The system's own error: tempfile's wrapper shows it as "{error} at path
                // {random name}" and does not hand it out otherwise.
                let text = e.to_string();
                let why = text.split(" at path ").next().unwrap_or(&text);
                io::Error::new(
                    e.kind(),
                    format!("cannot create a new file in {}: {why}", dir.display()),
                )
            })?;
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
        self.tmp.as_file().sync_all()?;
        // Checked again just before the rename: the target may have changed since `create`.
        check_replaceable(&self.target)?;
        if self.replace {
            self.tmp.persist(&self.target).map_err(|e| e.error)?;
        } else {
            // Refuses if someone created the target since we looked: never a silent overwrite.
            self.tmp
                .persist_noclobber(&self.target)
                .map_err(|e| e.error)?;
        }
        fs::File::open(&self.dir)?.sync_all()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.tmp.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
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

/// The folder a target lives in (`.` for a bare file name).
fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn permissions(mode: u32) -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn appears_only_on_commit_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let mut f = AtomicFile::create(&target, &WriteOptions::default()).unwrap();
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
        write_atomic(&public, b"k", &opts).unwrap();
        assert_eq!(mode(&public), 0o644);
    }

    #[test]
    fn a_dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let mut f = AtomicFile::create(&target, &WriteOptions::default()).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn never_overwrites_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        fs::write(&target, b"old").unwrap();
        let err = write_atomic(&target, b"new", &WriteOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        // Created between `create` and `commit`: still refused.
        let other = dir.path().join("late");
        let f = AtomicFile::create(&other, &WriteOptions::default()).unwrap();
        fs::write(&other, b"someone else").unwrap();
        assert!(f.commit().is_err());
        assert_eq!(fs::read(&other).unwrap(), b"someone else");
        let replace = WriteOptions {
            replace: true,
            ..WriteOptions::default()
        };
        write_atomic(&target, b"new", &replace).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
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
}
