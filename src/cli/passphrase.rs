//! Where a private key's passphrase comes from, for every command that reads or writes one.
//!
//! For a key being read, in this order: `--passphrase-file FILE` (its first line), the
//! `LETTERLOCK_PASSPHRASE` environment variable, a hidden prompt on the terminal; with none of
//! them, a clear error that says how to give one. The library never prompts: it calls back here
//! only when a key turns out to be encrypted, so unencrypted keys never make us ask. A
//! passphrase typed on the terminal gets [`TERMINAL_ATTEMPTS`] tries, as ssh and gpg give; one
//! from the file or the variable gets one (the same answer again cannot be right).
//!
//! For a key being written (`keygen`, `generate_key_pair`, `passphrase`): the same file or
//! variable (`--new-passphrase-file` / `LETTERLOCK_NEW_PASSPHRASE` for `passphrase`), else,
//! on a terminal, asked twice, hidden (empty means none); a run with no terminal and no
//! passphrase given writes an unencrypted key, as before passphrases existed. An empty
//! passphrase from the file or the variable is refused: whoever gave one asked for the key to
//! be protected, and an empty file (a failed `echo`, a secret that was never filled in) must
//! not quietly leave it unencrypted.
//!
//! Passphrases live in [`Passphrase`] (wiped on drop); the file is read into a wiped buffer.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use clap::Args;
use zeroize::Zeroizing;

use letterlock::keys::{self, Attempt, KeyError, Passphrase, PassphraseSource};

/// The variable scripts and services put the passphrase of the key they use in.
pub(super) const ENV: &str = "LETTERLOCK_PASSPHRASE";
/// The variable `letterlock passphrase` reads the new passphrase from.
pub(super) const NEW_ENV: &str = "LETTERLOCK_NEW_PASSPHRASE";
/// How many tries a passphrase typed on the terminal gets: 3, as ssh and gpg's pinentry give,
/// so a typo does not end the command. Each try costs the key's full derivation, which keeps
/// guessing slow.
const TERMINAL_ATTEMPTS: u32 = 3;
/// The most we read of a passphrase file: a passphrase is a line, not a document.
const MAX_PASSPHRASE_FILE: u64 = 4096;

/// The passphrase flag, given once on the command line for whichever command needs it.
#[derive(Args, Debug, Default, Clone)]
pub(super) struct PassphraseArgs {
    /// Read the private key's passphrase from the first line of FILE (for scripts and
    /// services). Otherwise LETTERLOCK_PASSPHRASE, else it is asked on the terminal.
    /// For keygen and generate_key_pair: the new key's passphrase (an empty one is refused;
    /// leave the flag out to write a key without a passphrase). Not `-`: a message may come
    /// on stdin; /dev/stdin names it when nothing else does.
    #[arg(long, global = true, value_name = "FILE", value_parser = passphrase_path)]
    pub(super) passphrase_file: Option<PathBuf>,
}

/// A passphrase file's path, refusing `-`: stdin is where `seal`, `open` and `send_msg` take the
/// message, and a passphrase read from it would swallow the message's first line, or the
/// message the passphrase. `/dev/stdin` still names it, for a command whose message comes
/// from a file (found by a trial run: `-` was looked for as a file named `-`).
fn passphrase_path(s: &str) -> std::result::Result<PathBuf, String> {
    if s == "-" {
        return Err(
            "`-` (stdin) is not taken, as a message may come on stdin too: give a file \
                    (./- for one named -), or /dev/stdin when nothing else comes on stdin"
                .to_owned(),
        );
    }
    Ok(PathBuf::from(s))
}

/// The flag as given, set once by [`configure`] before any command runs: the key loaders deep
/// in each command read it here rather than having it passed through every call.
static ARGS: OnceLock<PassphraseArgs> = OnceLock::new();

/// Records the command line's passphrase flag for [`for_key`] and [`for_new_key`].
pub(super) fn configure(args: PassphraseArgs) {
    let _ = ARGS.set(args);
}

pub(super) fn file_flag() -> Option<&'static Path> {
    ARGS.get().and_then(|a| a.passphrase_file.as_deref())
}

/// Where the passphrase of an existing key comes from, in the order [`for_key`] tries them.
enum Origin {
    File(&'static Path),
    Env(Passphrase),
    Terminal,
    Nowhere,
}

fn origin() -> Origin {
    if let Some(file) = file_flag() {
        Origin::File(file)
    } else if let Some(p) = from_env(ENV) {
        Origin::Env(p)
    } else if io::stderr().is_terminal() {
        Origin::Terminal
    } else {
        Origin::Nowhere
    }
}

/// The source the library reads an existing key's passphrase from, `ask` being [`for_key`]
/// (with whatever the caller notes around it): tried [`TERMINAL_ATTEMPTS`] times when it is
/// typed on the terminal, once when it comes from the file or the variable, so a script with a
/// wrong passphrase fails at once and never loops.
pub(super) fn source<'a>(
    ask: &'a dyn Fn(Attempt) -> Result<Passphrase, KeyError>,
) -> PassphraseSource<'a> {
    match origin() {
        Origin::Terminal => PassphraseSource::retrying(ask, TERMINAL_ATTEMPTS),
        _ => PassphraseSource::once(ask),
    }
}

/// The passphrase of the existing key `key` for `attempt`: the file, the variable, or the
/// terminal (saying, from the second try on, that the last one was wrong).
/// The error is a [`KeyError`] because the library calls this while loading the key.
pub(super) fn for_key(key: &Path, attempt: Attempt) -> Result<Passphrase, KeyError> {
    let unavailable = |reason: String| KeyError::PassphraseUnavailable { reason };
    match origin() {
        // Said for what it is, not as a wrong passphrase (found by a trial run).
        Origin::File(file) => match read_file(file) {
            Ok(p) if p.is_empty() => Err(unavailable(format!(
                "the passphrase file {} gives an empty passphrase (its first line is empty)",
                file.display()
            ))),
            Ok(p) => Ok(p),
            Err(e) => Err(unavailable(format!("{e:#}"))),
        },
        Origin::Env(p) => Ok(p),
        Origin::Terminal => {
            if attempt.is_retry() {
                eprintln!(
                    "letterlock: wrong passphrase, try again ({} {} left)",
                    attempt.left(),
                    if attempt.left() == 1 { "try" } else { "tries" }
                );
            }
            rpassword::prompt_password(format!("Passphrase for {}: ", key.display()))
                .map(Passphrase::new)
                .map_err(|e| unavailable(format!("cannot ask on the terminal: {e}")))
        }
        Origin::Nowhere => Err(unavailable(format!(
            "no --passphrase-file, no {ENV}, and no terminal to ask on"
        ))),
    }
}

/// The passphrase for a key about to be written by keygen: `None` means unencrypted.
pub(super) fn for_new_key(what: &str) -> Result<Option<Passphrase>> {
    new_passphrase(file_flag(), ENV, what, false)
}

/// The new passphrase for `letterlock passphrase`: `--new-passphrase-file`, then
/// `LETTERLOCK_NEW_PASSPHRASE`, then the terminal. Without any of them it is an error, not an
/// unencrypted key: use `--remove` for that.
pub(super) fn for_changed_key(file: Option<&Path>, what: &str) -> Result<Option<Passphrase>> {
    new_passphrase(file, NEW_ENV, what, true)
}

fn new_passphrase(
    file: Option<&Path>,
    env: &str,
    what: &str,
    required: bool,
) -> Result<Option<Passphrase>> {
    let given = match file {
        Some(f) => Some((read_file(f)?, format!("passphrase file {}", f.display()))),
        None => from_env(env).map(|p| (p, format!("the variable {env}"))),
    };
    if let Some((p, source)) = given {
        if p.is_empty() {
            return Err(empty_refused(&source, file.is_some(), env, what, required));
        }
        return Ok(Some(p));
    }
    // Ask only when a person is there to answer: a script (stdin or stderr not a terminal)
    // gets an unencrypted key, as before, and never hangs on a prompt.
    if io::stdin().is_terminal() && io::stderr().is_terminal() {
        // Changing a key's passphrase: empty is not "none" there (--remove is).
        let prompt = if required {
            format!("New passphrase for {what}: ")
        } else {
            format!("Passphrase for {what} (empty for none): ")
        };
        let first = Passphrase::new(
            rpassword::prompt_password(prompt)
                .context("cannot read the passphrase from the terminal")?,
        );
        if first.is_empty() {
            return Ok(None);
        }
        let again = Passphrase::new(
            rpassword::prompt_password("The same passphrase again: ")
                .context("cannot read the passphrase from the terminal")?,
        );
        if !first.same_as(&again) {
            bail!("the two passphrases differ; nothing was written");
        }
        return Ok(Some(first));
    }
    if required {
        bail!(
            "no new passphrase given: pass --new-passphrase-file FILE, set {env}, run on a \
             terminal to be asked, or pass --remove to store the key without one"
        );
    }
    Ok(None)
}

/// The refusal of an empty passphrase given by `source` (a file, or the variable `env`) for the
/// key `what`, with how to write the key without one if that was meant: nothing is written.
fn empty_refused(
    source: &str,
    from_file: bool,
    env: &str,
    what: &str,
    required: bool,
) -> anyhow::Error {
    let hint = if required {
        "give a passphrase that is not empty; to store the key without one, pass --remove \
         instead"
            .to_owned()
    } else if from_file {
        "put the passphrase on the file's first line; to write a key without a passphrase, \
         leave out --passphrase-file"
            .to_owned()
    } else {
        format!("set {env} to the passphrase; to write a key without a passphrase, unset {env}")
    };
    super::hints::hinted(
        format!(
            "{source} gives an empty passphrase; refused rather than write {what} unprotected \
             (nothing was written)"
        ),
        hint,
    )
}

/// `letterlock passphrase KEYFILE`: what to do with the key's passphrase.
#[derive(Args, Debug)]
pub(super) struct PassphraseCmdArgs {
    /// The private key file to rewrite (encrypted or not; its current passphrase comes from
    /// --passphrase-file, LETTERLOCK_PASSPHRASE or the terminal).
    pub(super) key: PathBuf,
    /// Store the key without a passphrase (unencrypted, mode 0600).
    #[arg(long, conflicts_with = "new_passphrase_file")]
    pub(super) remove: bool,
    /// Read the new passphrase from the first line of FILE (else LETTERLOCK_NEW_PASSPHRASE,
    /// else it is asked twice on the terminal). Not `-`; /dev/stdin names stdin.
    #[arg(long, value_name = "FILE", value_parser = passphrase_path)]
    pub(super) new_passphrase_file: Option<PathBuf>,
}

/// Rewrites a private key file under a new passphrase, or none: read with the current one,
/// written atomically beside and renamed over (mode 0600), so a crash leaves the old file or
/// the new one, never half of either.
pub(super) fn change_passphrase(a: PassphraseCmdArgs) -> Result<ExitCode> {
    let was_encrypted =
        std::fs::read_to_string(&a.key).is_ok_and(|text| keys::is_encrypted_pem(&text));
    let key = super::load_own_private(&a.key)?;
    if a.remove && !was_encrypted {
        eprintln!("{}: has no passphrase; nothing to change", a.key.display());
        return Ok(ExitCode::SUCCESS);
    }
    let new = if a.remove {
        None
    } else {
        Some(
            for_changed_key(
                a.new_passphrase_file.as_deref(),
                &a.key.display().to_string(),
            )?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the new passphrase is empty; pass --remove to store the key without one"
                )
            })?,
        )
    };
    let text = match &new {
        Some(pass) => Zeroizing::new(key.to_encrypted_pem(pass)?),
        None => key.to_pem()?,
    };
    keys::write_atomic(&a.key, text.as_bytes(), 0o600, true)?;
    if new.is_some() && a.key.file_name() == Some(std::ffi::OsStr::new("client_private.pem")) {
        let folder = a
            .key
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        super::client::discard_handshake_key(&super::client::handshake_key_cache(folder))?;
        // An agent started while the key had none holds it unlocked, and keeps a handshake
        // key on disk as it was told to then.
        if !was_encrypted
            && std::fs::symlink_metadata(folder.join(super::agent::AGENT_SOCKET)).is_ok()
        {
            eprintln!(
                "letterlock: a client agent may be running for {}: it holds the key as it was \
                 (no passphrase) and keeps writing client_handshake.pem; stop it with \
                 `letterlock client agent --stop --keys {}`",
                folder.display(),
                folder.display()
            );
        }
    }
    match new {
        Some(_) => eprintln!(
            "{}: passphrase set (PBKDF2-HMAC-SHA-256, AES-256-CBC; mode 0600)",
            a.key.display()
        ),
        None => eprintln!(
            "{}: passphrase removed; the key is stored unencrypted (keep it secret, mode 0600)",
            a.key.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The variable's value if it is set (an empty value is an empty passphrase).
fn from_env(name: &str) -> Option<Passphrase> {
    std::env::var(name).ok().map(Passphrase::new)
}

/// The first line of `path`, its line ending (`\n` or `\r\n`) removed, as `openssl -passin
/// file:` reads it. At most [`MAX_PASSPHRASE_FILE`] bytes are read, into a wiped buffer.
fn read_file(path: &Path) -> Result<Passphrase> {
    let file = open_file(path)
        .with_context(|| format!("cannot read passphrase file {}", path.display()))?;
    warn_if_shared(path, &file);
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE_FILE as usize + 1));
    file.take(MAX_PASSPHRASE_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read passphrase file {}", path.display()))?;
    let line_end = bytes.iter().position(|&b| b == b'\n');
    if line_end.is_none() && bytes.len() as u64 > MAX_PASSPHRASE_FILE {
        bail!(
            "passphrase file {} has no line end in its first {MAX_PASSPHRASE_FILE} bytes: is it \
             the right file?",
            path.display()
        );
    }
    let mut line = &bytes[..line_end.unwrap_or(bytes.len())];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    let text = std::str::from_utf8(line)
        .with_context(|| format!("passphrase file {} is not UTF-8 text", path.display()))?;
    Ok(Passphrase::new(text.to_owned()))
}

/// Opens the passphrase file `path`. stdin's names (`/dev/stdin`, `/dev/fd/0`,
/// `/proc/self/fd/0`) are read from the descriptor this process already holds, not opened
/// again: a pipe another user made (`sudo cat pass | sudo -u letterlock letterlock …
/// --passphrase-file /dev/stdin`, as docs/DEPLOY.md does) cannot be opened again by its name,
/// which the kernel refuses (found by a trial run).
fn open_file(path: &Path) -> io::Result<File> {
    use std::os::fd::AsFd;
    match path.to_str() {
        Some("/dev/stdin" | "/dev/fd/0" | "/proc/self/fd/0") => {
            Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
        }
        _ => File::open(path),
    }
}

/// Warns when the passphrase file is a regular file others may read: the passphrase guards
/// the key, and is as secret (found by a trial run: a 0644 file was used without a word). A
/// warning, not a refusal: a pipe (`<(pass show …)`) has no such mode, and a container's
/// secret files are often 0444 on a volume only its owner mounts.
fn warn_if_shared(path: &Path, file: &File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = file.metadata()
        && m.is_file()
        && m.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "letterlock: warning: passphrase file {} is readable by group or others (mode \
             {:04o}); `chmod 600 {}` keeps it to you",
            path.display(),
            m.permissions().mode() & 0o7777,
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_without_its_line_end_is_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        for (content, expected) in [
            (&b"secret\n"[..], "secret"),
            (b"secret\r\nsecond line\n", "secret"),
            (b"no newline", "no newline"),
            (b" spaces kept \n", " spaces kept "),
            (b"\n", ""),
        ] {
            let path = dir.path().join("pass");
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_file(&path).unwrap().as_bytes(), expected.as_bytes());
        }
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        assert!(read_file(&path).is_err());
    }
}
