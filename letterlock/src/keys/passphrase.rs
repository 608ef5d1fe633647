//! The passphrase that protects a private key file at rest, and where it comes from.
//!
//! The library never asks for one: a caller hands it in through a [`PassphraseSource`] (the
//! command line reads a file, an environment variable or the terminal). The text lives in a
//! buffer wiped when dropped, and never appears in `Debug` output or logs.
//!
//! A source says how many tries it may have: a person can mistype and try again, a file or a
//! variable gives the same answer every time and is tried once. The retry loop is here, in
//! [`PassphraseSource::unlock`], the one place every encrypted key is decrypted through, so
//! every loader and every command gets the same behaviour.

use std::fmt;

use zeroize::Zeroizing;

use super::KeyError;

/// A passphrase, wiped from memory when dropped. Its bytes (UTF-8, as typed) are what PBKDF2 or
/// scrypt take as the password, as OpenSSL's `-passin pass:…` does.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Takes ownership of `text`, so no unwiped copy is left behind by the conversion.
    pub fn new(text: String) -> Self {
        Passphrase(Zeroizing::new(text))
    }

    /// The bytes the key derivation uses.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether two passphrases are the same, in time that does not depend on where they
    /// differ (for "type it again" confirmations).
    pub fn same_as(&self, other: &Passphrase) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.as_bytes(), other.as_bytes()).is_ok()
    }

    /// Whether it is empty: letterlock treats an empty passphrase as "no passphrase".
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Passphrase {
    fn from(text: String) -> Self {
        Passphrase::new(text)
    }
}

impl From<&str> for Passphrase {
    fn from(text: &str) -> Self {
        Passphrase::new(text.to_owned())
    }
}

/// Which try at a key's passphrase a [`PassphraseSource`] is asked for, so a source that asks a
/// person can say the last one was wrong and how many are left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first try, 2 after one wrong passphrase, and so on.
    pub number: u32,
    /// How many tries there are in all (at least 1).
    pub of: u32,
}

impl Attempt {
    /// Whether an earlier try was a wrong passphrase.
    pub fn is_retry(&self) -> bool {
        self.number > 1
    }

    /// How many tries are left, this one included.
    pub fn left(&self) -> u32 {
        self.of.saturating_sub(self.number) + 1
    }
}

/// Where the passphrase of an encrypted key comes from: `ask` is called only when a key turns
/// out to be encrypted, so an unencrypted key never makes a caller ask for one, and again after
/// a wrong passphrase while tries are left.
#[derive(Clone, Copy)]
pub struct PassphraseSource<'a> {
    /// Gives the passphrase for one try (or the error that ends the reading: none to give).
    ask: &'a dyn Fn(Attempt) -> Result<Passphrase, KeyError>,
    /// How many tries a wrong passphrase gets: 1 unless a person is asked.
    attempts: u32,
}

impl<'a> PassphraseSource<'a> {
    /// A source tried once: a file or a variable gives the same passphrase every time, so a
    /// second try would only repeat the first (and a script must never loop).
    pub fn once(ask: &'a dyn Fn(Attempt) -> Result<Passphrase, KeyError>) -> Self {
        PassphraseSource { ask, attempts: 1 }
    }

    /// A source tried up to `attempts` times (at least once) while the passphrase is wrong: a
    /// person typing it, who can mistype. Each try costs the key's full derivation (PBKDF2 or
    /// scrypt), which is what keeps guessing slow; nothing here shortens it.
    pub fn retrying(
        ask: &'a dyn Fn(Attempt) -> Result<Passphrase, KeyError>,
        attempts: u32,
    ) -> Self {
        PassphraseSource {
            ask,
            attempts: attempts.max(1),
        }
    }

    /// No passphrase at all: an encrypted key is [`KeyError::Encrypted`].
    pub fn none() -> Self {
        fn refuse(_: Attempt) -> Result<Passphrase, KeyError> {
            Err(KeyError::Encrypted)
        }
        PassphraseSource::once(&refuse)
    }

    /// Runs `open` with a passphrase from the source, again with the next one after each
    /// [`KeyError::WrongPassphrase`] while tries are left. Any other error ends it at once: a
    /// damaged file or a refused cost does not get better with another passphrase.
    pub(super) fn unlock<T>(
        &self,
        mut open: impl FnMut(&Passphrase) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let mut number = 1;
        loop {
            let pass = (self.ask)(Attempt {
                number,
                of: self.attempts,
            })?;
            match open(&pass) {
                Err(KeyError::WrongPassphrase) if number < self.attempts => number += 1,
                done => return done,
            }
        }
    }
}

impl fmt::Debug for PassphraseSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassphraseSource")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(…)")
    }
}
