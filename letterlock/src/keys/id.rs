//! What names a public key, in the two forms letterlock shows.
//!
//! - [`KeyId`]: SHA-256 of the SubjectPublicKeyInfo DER. It is what the message format, the
//!   protocol and the store use, shown as `SPKI-SHA256:` + unpadded base64.
//! - [`SshFingerprint`]: SHA-256 of the OpenSSH `ssh-rsa` public key blob, shown as `SHA256:` +
//!   unpadded base64: exactly what `ssh-keygen -l -E sha256` prints for the same key.
//!
//! Both are 32 bytes of SHA-256 over different encodings of one key; the prefixes keep them
//! apart, so a person never compares one with the other by mistake. [`Fingerprint`] parses
//! either from text, for commands that accept whichever the user has at hand.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use base64::Engine as _;

use super::{KeyError, PublicKey};

/// The prefix of a [`KeyId`] shown to people.
pub const KEY_ID_PREFIX: &str = "SPKI-SHA256:";
/// The prefix of an [`SshFingerprint`], as OpenSSH prints it.
pub const SSH_PREFIX: &str = "SHA256:";

/// The identity of a public key: SHA-256 of its SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The key id of a SubjectPublicKeyInfo DER encoding.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        KeyId(sha256(spki_der))
    }

    /// A short form for file names and log fields: the first 8 bytes in hex.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for KeyId {
    /// `SPKI-SHA256:` + unpadded standard base64. Not `SHA256:` alone: that is how OpenSSH shows
    /// its fingerprint, a hash of another encoding of the key ([`SshFingerprint`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_ID_PREFIX}{}", b64(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    /// Parses the form [`KeyId`]'s `Display` writes (`SPKI-SHA256:` + base64, padding optional).
    fn from_str(text: &str) -> Result<Self, KeyError> {
        match text.trim().parse::<Fingerprint>()? {
            Fingerprint::KeyId(id) => Ok(id),
            Fingerprint::Ssh(_) => Err(KeyError::BadFingerprint {
                reason: format!(
                    "{SSH_PREFIX}… is an OpenSSH fingerprint, not a key id ({KEY_ID_PREFIX}…)"
                ),
            }),
        }
    }
}

/// What `ssh-keygen -l -E sha256` prints for an RSA key: SHA-256 of the `ssh-rsa` public key
/// blob (RFC 4253 §6.6: string "ssh-rsa", mpint e, mpint n).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SshFingerprint(pub [u8; 32]);

impl SshFingerprint {
    /// The fingerprint of an OpenSSH public key blob.
    pub fn of_blob(blob: &[u8]) -> Self {
        SshFingerprint(sha256(blob))
    }
}

impl fmt::Display for SshFingerprint {
    /// `SHA256:` + unpadded standard base64, as OpenSSH prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SSH_PREFIX}{}", b64(&self.0))
    }
}

impl fmt::Debug for SshFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Either form a person may give to name a key: a letterlock key id (`SPKI-SHA256:…`) or an
/// OpenSSH fingerprint (`SHA256:…`, as `ssh-keygen -l` prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    KeyId(KeyId),
    Ssh(SshFingerprint),
}

impl Fingerprint {
    /// Whether `key` is the key this names.
    pub fn matches(&self, key: &PublicKey) -> bool {
        match self {
            Fingerprint::KeyId(id) => *id == key.id(),
            Fingerprint::Ssh(fp) => *fp == key.ssh_fingerprint(),
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fingerprint::KeyId(id) => id.fmt(f),
            Fingerprint::Ssh(fp) => fp.fmt(f),
        }
    }
}

impl FromStr for Fingerprint {
    type Err = KeyError;

    /// `SPKI-SHA256:` or `SHA256:` followed by 32 bytes in standard base64, with or without
    /// `=` padding; surrounding spaces are ignored.
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let (ssh, rest) = if let Some(rest) = text.strip_prefix(KEY_ID_PREFIX) {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix(SSH_PREFIX) {
            (true, rest)
        } else {
            return Err(KeyError::BadFingerprint {
                reason: format!(
                    "expected {KEY_ID_PREFIX}… (letterlock key id) or {SSH_PREFIX}… \
                     (OpenSSH fingerprint)"
                ),
            });
        };
        let bad = || KeyError::BadFingerprint {
            reason: "not 32 bytes of base64 after the prefix".into(),
        };
        // 32 bytes are 43 base64 characters unpadded, 44 padded: refuse anything longer
        // before decoding.
        let rest = rest.strip_suffix('=').unwrap_or(rest);
        if rest.len() != 43 {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(rest)
            .map_err(|_| bad())?;
        let hash: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(if ssh {
            Fingerprint::Ssh(SshFingerprint(hash))
        } else {
            Fingerprint::KeyId(KeyId(hash))
        })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_text_round_trips_and_is_not_taken_for_an_ssh_fingerprint() {
        let id = KeyId([7u8; 32]);
        let text = id.to_string();
        assert!(text.starts_with("SPKI-SHA256:"), "{text}");
        assert_eq!(text.parse::<KeyId>().unwrap(), id);
        assert_eq!(format!("{text}=").parse::<KeyId>().unwrap(), id);
        let ssh = text.replacen("SPKI-SHA256:", "SHA256:", 1);
        assert_eq!(
            ssh.parse::<Fingerprint>().unwrap(),
            Fingerprint::Ssh(SshFingerprint([7u8; 32]))
        );
        assert!(matches!(
            ssh.parse::<KeyId>(),
            Err(KeyError::BadFingerprint { .. })
        ));
    }

    #[test]
    fn malformed_fingerprints_are_refused() {
        for bad in [
            "",
            "MD5:00",
            "SHA256:",
            "SHA256:AAAA",
            "SPKI-SHA256:!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            // 33 bytes
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                matches!(
                    bad.parse::<Fingerprint>(),
                    Err(KeyError::BadFingerprint { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
