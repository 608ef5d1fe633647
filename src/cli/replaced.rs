//! Key pairs that `--force` replaced (`keygen`, `client` / `server generate_key_pair`): the old
//! files stay beside the new ones as `NAME_private.pem.replaced-YYYYMMDDTHHMMSSZ` (mode 0600)
//! and `NAME_public.pem.replaced-…` (UTC), never overwritten. Every message sealed to the old
//! key (a client's mailbox, a server's inbox, sealed files) opens with that key only, so
//! replacing it without a copy would lose them all, silently.
//!
//! When a message will not open because it is for another key of ours, [`name_kept_key`] looks
//! for the kept pair that is that key, to say so. [`kept_ids`] is what a folder knows it
//! replaced: `server outbox` lets a message signed by such a key go without `--force`, never one
//! signed by a key the folder never had.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use letterlock::envelope::OpenError;
use letterlock::files::{AtomicFile, WriteOptions};
use letterlock::keys::{self, KeyId};

/// What a kept file's name adds to the name it had, before the time it was replaced.
const MARK: &str = ".replaced-";
/// Replacements of one pair within the same second get `-2`, `-3`, … after the time; past this
/// many, something is looping, and nothing is replaced.
const SAME_SECOND: u32 = 100;

/// The old pair, where it was kept.
pub(super) struct Kept {
    /// The old private key's copy, if there was a private key file.
    pub(super) private: Option<PathBuf>,
    /// The old public key's copy, if there was a public key file.
    pub(super) public: Option<PathBuf>,
    /// The old key's id, read from its public key file (no passphrase needed), if it could be.
    pub(super) id: Option<KeyId>,
}

/// Copies the existing files of the pair `private` / `public` aside, before a new pair is
/// written over them. Copies, not renames: until the new pair is written, the files stay where
/// every command looks for them, and a failure here leaves them as they were.
pub(super) fn keep_aside(private: &Path, public: &Path) -> Result<Kept> {
    let suffix = free_suffix(private, public, SystemTime::now())?;
    let kept_private = copy_aside(private, &suffix, 0o600)?;
    let kept_public = copy_aside(public, &suffix, 0o644)?;
    let id = kept_public
        .as_deref()
        .and_then(|p| keys::load_public(p).ok())
        .map(|k| k.id());
    Ok(Kept {
        private: kept_private,
        public: kept_public,
        id,
    })
}

/// `.replaced-` and `now` as YYYYMMDDTHHMMSSZ (with `-N` if needed): a suffix that neither file
/// of the pair has been kept under yet, so one replacement's two files share it.
fn free_suffix(private: &Path, public: &Path, now: SystemTime) -> Result<String> {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    for n in 1..=SAME_SECOND {
        let suffix = match n {
            1 => format!("{MARK}{stamp}"),
            n => format!("{MARK}{stamp}-{n}"),
        };
        let taken = [private, public]
            .iter()
            .any(|p| fs::symlink_metadata(with_suffix(p, &suffix)).is_ok());
        if !taken {
            return Ok(suffix);
        }
    }
    bail!(
        "{} has been replaced {SAME_SECOND} times this second; nothing was replaced",
        private.display()
    )
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Copies the regular file `path` to `path` + `suffix`, mode `mode` from creation, atomically
/// and never over an existing file ([`AtomicFile`]); `None` if there is no such file. Anything
/// but a regular file is left for the write that follows, which refuses it untouched.
fn copy_aside(path: &Path, suffix: &str, mode: u32) -> Result<Option<PathBuf>> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Ok(meta) if !meta.is_file() => return Ok(None),
        _ => {}
    }
    let target = with_suffix(path, suffix);
    let failed = || {
        format!(
            "cannot keep the old {} as {}; nothing was replaced",
            path.display(),
            target.display()
        )
    };
    let mut from = File::open(path).with_context(failed)?;
    let opts = WriteOptions {
        mode,
        ..WriteOptions::default()
    };
    let mut to = AtomicFile::create(&target, &opts).with_context(failed)?;
    // Through one buffer, wiped when dropped: no copy of a private key is left in freed memory.
    let mut buf = Zeroizing::new(vec![0u8; 8192]);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(failed),
        };
        // `read` returns at most the buffer's length.
        to.write_all(&buf[..n]).with_context(failed)?;
    }
    to.commit().with_context(failed)?;
    Ok(Some(target))
}

/// The public keys kept aside in `dir` for the pair whose public key file is
/// `STEM_public.pem`, each with the suffix its replacement added (its private key's copy has
/// the same one).
fn kept_public_files(dir: &Path, stem: &str) -> Vec<(PathBuf, String)> {
    let prefix = format!("{stem}_public.pem{MARK}");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let suffix = name.to_str()?.strip_prefix(&prefix)?;
            Some((entry.path(), format!("{MARK}{suffix}")))
        })
        .collect()
}

/// The ids of the keys of the pair `name` that `--force` replaced in `dir` and kept there: the
/// keys this folder knows it replaced. Read from the kept public keys (no passphrase needed);
/// one that does not read is left out, so its key counts as unknown, never as replaced.
pub(super) fn kept_ids(dir: &Path, name: &str) -> Vec<KeyId> {
    kept_public_files(dir, name)
        .iter()
        .filter_map(|(public, _)| keys::load_public(public).ok())
        .map(|k| k.id())
        .collect()
}

/// The kept private key that is `recipient`, if the private key file `key` (`NAME_private.pem`)
/// was replaced with its pair kept aside: found through the public keys kept beside it, which
/// are read without a passphrase.
fn kept_key_for(key: &Path, recipient: &KeyId) -> Option<PathBuf> {
    let dir = key
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = key.file_name()?.to_str()?;
    let stem = file.strip_suffix("_private.pem")?;
    kept_public_files(dir, stem)
        .into_iter()
        .find_map(|(public, suffix)| {
            let kept = dir.join(format!("{file}{suffix}"));
            (keys::load_public(&public).ok()?.id() == *recipient && kept.is_file()).then_some(kept)
        })
}

/// `e`, a failure to open a message with the private key file `key`, with a hint when the
/// message is for the key that file held before `--force` replaced it, kept aside: what to do
/// with the kept key is `how`'s to say, as each command uses it differently.
pub(super) fn name_kept_key(
    e: anyhow::Error,
    key: &Path,
    how: impl FnOnce(&Path) -> String,
) -> anyhow::Error {
    let kept = match e.downcast_ref::<OpenError>() {
        Some(OpenError::NotForUs { recipient, .. }) => kept_key_for(key, recipient),
        _ => None,
    };
    match kept {
        Some(kept) => super::hints::hinted(
            format!("{e:#}"),
            format!(
                "that is the key {} held before it was replaced (--force), kept as {}: only it \
                 opens this message; {}",
                key.display(),
                kept.display(),
                how(&kept)
            ),
        ),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_is_the_utc_time_and_a_taken_one_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keys::pair_paths(dir.path(), "k");
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_464_783);
        let first = free_suffix(&private, &public, now).unwrap();
        assert_eq!(first, ".replaced-20251130T010623Z");
        // Either file of the pair taking it moves both to the next one.
        fs::write(with_suffix(&public, &first), "x").unwrap();
        assert_eq!(
            free_suffix(&private, &public, now).unwrap(),
            ".replaced-20251130T010623Z-2"
        );
    }
}
