//! Key files: reading them with their checks, writing them atomically, key pair folders.

use std::fs;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::private::ENCRYPTED_LABEL;
use super::{
    Identity as _, KeyError, MAX_KEY_FILE, Passphrase, PassphraseSource, PrivateKey, PublicKey,
};
use crate::files::{self, WriteOptions};

/// Reads a key file, opened once and checked through that one handle (no race between the
/// checks and the read): a regular file, under [`MAX_KEY_FILE`] bytes, that not every user
/// can replace ([`not_writable_by_others`]), and, for a private key, readable by its owner
/// only. Reads at most the limit whatever the file claims.
pub(crate) fn read_key_file(path: &Path, private: bool) -> Result<Zeroizing<String>, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let (text, file) = read_key_text(path)?;
    let mode = file.permissions().mode() & 0o777;
    // A key others can read may already be someone else's; a file that holds no private key
    // (a public key passed by mistake) is reported as that, not as a mode problem. Said before
    // a mode others can write: `chmod 600` mends both.
    if private && mode & 0o077 != 0 && text.contains("PRIVATE KEY-----") {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    not_writable_by_others(path, &file)?;
    Ok(text)
}

/// Refuses a key file (`file`: its metadata, from the handle it was read through) that another
/// user could replace, as ssh's StrictModes refuses such an `authorized_keys` (found by a trial
/// run: a world-writable keys folder and pinned server key were used without a word; then a
/// key another user planted in a sticky folder): one owned by anyone but us or root; one every
/// user can write; one in a folder every user can write, unless the folder has the sticky bit
/// (`/tmp`), where others cannot replace a file they do not own. Both the folder `path` names
/// and, for a symbolic link, the folder the file really is in are checked. Group-writable ones
/// are left alone: a group may share a folder on purpose.
fn not_writable_by_others(path: &Path, file: &fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    const OTHERS_WRITE: u32 = 0o002;
    const STICKY: u32 = 0o1000;
    if file.uid() != nix::unistd::geteuid().as_raw() && file.uid() != 0 {
        return Err(KeyError::OwnedByOther {
            path: path.to_owned(),
            uid: file.uid(),
        });
    }
    let mode = file.mode() & 0o777;
    if mode & OTHERS_WRITE != 0 {
        return Err(KeyError::WritableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    let real = fs::canonicalize(path).ok();
    let folders = [
        Some(files::folder_of(path)),
        real.as_deref().map(files::folder_of),
    ];
    // A folder that cannot be looked at is not refused for it: the file was read from it.
    for folder in folders.into_iter().flatten() {
        let Ok(meta) = fs::metadata(folder) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & OTHERS_WRITE != 0 && mode & STICKY == 0 {
            return Err(KeyError::WritableByOthers {
                path: folder.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// The file's text and metadata, through one handle.
fn read_key_text(path: &Path) -> Result<(Zeroizing<String>, fs::Metadata), KeyError> {
    use std::io::Read;
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let too_big = || KeyError::FileTooLarge {
        path: path.to_owned(),
        limit: MAX_KEY_FILE,
    };
    if meta.len() > MAX_KEY_FILE {
        return Err(too_big());
    }
    // Sized for the most `take` lets through, so it never reallocates: a reallocation would
    // leave a copy of the key text in freed memory.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(too_big());
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::NotText {
        path: path.to_owned(),
    })?;
    Ok((Zeroizing::new(text.to_owned()), meta))
}

/// Loads an unencrypted private key file, refusing it if group or others can read it (as
/// OpenSSH does): a key others can read may already be someone else's. A passphrase-protected
/// key is [`KeyError::Encrypted`]; [`load_private_with`] reads those.
pub fn load_private(path: &Path) -> Result<PrivateKey, KeyError> {
    load_private_with(path, PassphraseSource::none())
}

/// Loads a private key file, encrypted or not, with the checks of [`load_private`]. The
/// library never prompts: `passphrase` supplies it, is called only if the key is encrypted,
/// and again after a wrong one if it allows more than one try.
pub fn load_private_with(
    path: &Path,
    passphrase: PassphraseSource,
) -> Result<PrivateKey, KeyError> {
    let text = read_key_file(path, true)?;
    PrivateKey::from_pem_with(&text, passphrase).map_err(|e| in_file(path, e))
}

/// Whether PEM text holds a passphrase-protected private key (PKCS#8 `ENCRYPTED PRIVATE KEY`
/// or OpenSSL's legacy `Proc-Type: 4,ENCRYPTED`), judged from the text alone.
pub fn is_encrypted_pem(text: &str) -> bool {
    text.contains(&format!("-----BEGIN {ENCRYPTED_LABEL}-----"))
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

/// Loads a public key file (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
pub fn load_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read_key_file(path, false)?;
    PublicKey::from_pem(&text).map_err(|e| in_file(path, e))
}

/// The public key of a file holding either a public or a private key, for `fingerprint`.
/// Reading a private key's public half needs no permission check: nothing secret leaves.
/// An encrypted private key holds no public part in the clear: it is [`KeyError::Encrypted`]
/// here; [`load_any_public_with`] decrypts it.
pub fn load_any_public(path: &Path) -> Result<PublicKey, KeyError> {
    load_any_public_with(path, PassphraseSource::none())
}

/// As [`load_any_public`], decrypting an encrypted private key with `passphrase`.
pub fn load_any_public_with(
    path: &Path,
    passphrase: PassphraseSource,
) -> Result<PublicKey, KeyError> {
    let text = read_key_file(path, false)?;
    if text.contains("PRIVATE KEY-----") {
        Ok(PrivateKey::from_pem_with(&text, passphrase)
            .map_err(|e| in_file(path, e))?
            .public()
            .clone())
    } else {
        PublicKey::from_pem(&text).map_err(|e| in_file(path, e))
    }
}

/// Names the file around an error about what it holds (the errors that used to carry the path
/// in their text), a key of a refused size included: a user with several key files must be
/// told which one is too small. Callers match the cause with [`KeyError::cause`].
pub(super) fn in_file(path: &Path, e: KeyError) -> KeyError {
    match e {
        KeyError::NotPem { .. }
        | KeyError::WrongPemBlock { .. }
        | KeyError::Encrypted
        | KeyError::LegacyEncrypted
        | KeyError::WrongPassphrase
        | KeyError::KdfTooCostly { .. }
        | KeyError::UnsupportedEncryption { .. }
        | KeyError::BadEncryptedKey { .. }
        | KeyError::PassphraseUnavailable { .. }
        | KeyError::NotRsa { .. }
        | KeyError::Damaged { .. }
        | KeyError::TooSmall
        | KeyError::Size { .. } => KeyError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        },
        other => other,
    }
}

/// Writes a key file atomically ([`crate::files`]): a temporary file beside it with mode `mode`
/// from the start, fsync, rename, fsync of the folder, so a crash never leaves half a key.
/// Refuses to replace a file unless `force`, and never replaces anything but a regular file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), KeyError> {
    let opts = WriteOptions {
        mode,
        replace: force,
        create_dirs: true,
    };
    files::write_atomic(path, contents, &opts).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists {
            path: path.to_owned(),
        },
        // Not a regular file where the key goes: the error says what is there (a link and
        // where it leads, a folder), which "not a regular file" did not (found by a trial run:
        // `passphrase` on a link to a key was told to choose another path).
        _ => KeyError::Write {
            path: path.to_owned(),
            source,
        },
    })
}

/// The two files of a key pair named `name` in `dir`.
pub fn pair_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}_private.pem")),
        dir.join(format!("{name}_public.pem")),
    )
}

/// Generates a key pair and writes `DIR/NAME_private.pem` (0600) and `DIR/NAME_public.pem`.
pub fn generate_pair_files(
    dir: &Path,
    name: &str,
    bits: usize,
    force: bool,
) -> Result<PrivateKey, KeyError> {
    generate_pair_files_with(dir, name, bits, force, None)
}

/// As [`generate_pair_files`], the private key encrypted under `passphrase` if one is given
/// ([`PrivateKey::to_encrypted_pem`]).
pub fn generate_pair_files_with(
    dir: &Path,
    name: &str,
    bits: usize,
    force: bool,
    passphrase: Option<&Passphrase>,
) -> Result<PrivateKey, KeyError> {
    let (private_path, public_path) = pair_paths(dir, name);
    if !force {
        for p in [&private_path, &public_path] {
            if p.exists() {
                return Err(KeyError::Exists { path: p.clone() });
            }
        }
    }
    let key = PrivateKey::generate(bits)?;
    write_pair_files(dir, name, &key, force, passphrase)?;
    Ok(key)
}

/// Writes `key` as `DIR/NAME_private.pem` (0600, encrypted under `passphrase` if one is given)
/// and `DIR/NAME_public.pem`, each atomically ([`write_atomic`]); an existing file is replaced
/// only if `force`. Apart from generating, so that a caller can do its own work between making
/// a key (slow, and it may fail) and writing it (the command line keeps the old pair aside).
pub fn write_pair_files(
    dir: &Path,
    name: &str,
    key: &PrivateKey,
    force: bool,
    passphrase: Option<&Passphrase>,
) -> Result<(), KeyError> {
    let (private_path, public_path) = pair_paths(dir, name);
    let text = match passphrase {
        Some(pass) => Zeroizing::new(key.to_encrypted_pem(pass)?),
        None => key.to_pem()?,
    };
    write_atomic(&private_path, text.as_bytes(), 0o600, force)?;
    write_atomic(&public_path, key.public().to_pem().as_bytes(), 0o644, force)
}
