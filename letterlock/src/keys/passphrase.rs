//! The passphrase that protects a private key file at rest.
//!
//! The library never asks for one: a caller hands it in (the command line reads a file, an
//! environment variable or the terminal). The text lives in a buffer wiped when dropped, and
//! never appears in `Debug` output or logs.

use std::fmt;

use zeroize::Zeroizing;

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

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(…)")
    }
}
