//! The server's directory of the clients it trusts, each entry signed by the server's key:
//! the first piece of client-to-client messaging (docs/design/client-to-client.md).
//!
//! A client that pinned the server's key can check every entry it is given, so a network
//! attacker cannot slip a key in; and because a client keeps its own pins and remembers what
//! it saw, a server that swaps a key behind a user's back is caught ([`judge`]): a pinned key
//! always wins, and a changed key is shown as a change, as ssh shows a changed host key.
//!
//! An entry is a fixed binary record (one encoding per value, nothing optional):
//!
//! ```text
//! entry = "letterlock v1 directory"   23 bytes: the signature's context
//!      || u64be(serial)               the directory's version: bumps with every trust change
//!      || u64be(since)                Unix seconds the key was trusted under this name
//!      || u8(name length) || name     1..=64 bytes, the trust list's name rules
//!      || u16be(SPKI length) || SPKI  DER SubjectPublicKeyInfo of the client's RSA key
//! signature = RSASSA-PSS(server key, entry)   SHA-256, MGF1-SHA-256, salt 32 (PROTOCOL.md §4)
//! ```
//!
//! The context string makes a directory signature useless as a message signature or a TLS
//! CertificateVerify and the other way round. The key id is not in the entry: the reader
//! computes it from the SPKI, so the two can never disagree.

use crate::codec::Reader;
use crate::keys::{Identity, KeyError, KeyId, PublicKey, valid_name};

/// The first bytes of every entry, and what the server's signature is over.
pub const CONTEXT: &[u8] = b"letterlock v1 directory";

/// Longest client name (the trust list's limit).
pub const MAX_NAME: usize = 64;

/// Longest SPKI an entry may carry: an RSA-4096 key (letterlock's largest) needs 550 bytes;
/// the bound keeps a hostile entry from asking for more before anything is parsed.
pub const MAX_SPKI: usize = 1024;

/// Longest encoded entry: the context, two integers, the longest name, the longest key.
pub const MAX_ENTRY: usize = CONTEXT.len() + 8 + 8 + 1 + MAX_NAME + 2 + MAX_SPKI;

/// Longest server signature accepted (RSA-8192); letterlock's keys sign with at most 512 bytes.
pub const MAX_SIGNATURE: usize = 1024;

/// Why an entry was refused. A client shows it; none of them reveals a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The bytes are not an entry (wrong context, a length past its bound, trailing bytes).
    #[error("malformed directory entry: {0}")]
    Malformed(&'static str),
    /// The name breaks the trust list's rules.
    #[error("directory entry with an unusable client name")]
    BadName,
    /// The key in the entry does not parse or is not a key letterlock accepts.
    #[error("directory entry with an unusable key: {0}")]
    Key(#[source] KeyError),
    /// The server's signature over the entry does not verify under the pinned server key.
    #[error("directory entry not signed by the pinned server key")]
    BadSignature,
    /// Signing failed on the server's side.
    #[error("cannot sign the directory entry: {0}")]
    Sign(#[source] KeyError),
}

/// One client of the directory, as the server publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The directory's version this entry belongs to (the server's trust generation).
    pub serial: u64,
    /// Unix seconds since when the key has been trusted under this name.
    pub since: u64,
    /// The client's name in the server's trust list.
    pub name: String,
    /// The client's public key.
    pub key: PublicKey,
}

impl Entry {
    /// The entry's bytes (context included): what is signed and sent.
    pub fn encode(&self) -> Result<Vec<u8>, DirectoryError> {
        if !valid_name(&self.name) {
            return Err(DirectoryError::BadName);
        }
        let spki = self.key.spki_der();
        let spki_len = u16::try_from(spki.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_SPKI)
            .ok_or(DirectoryError::Malformed(
                "key longer than an entry may carry",
            ))?;
        let name_len = u8::try_from(self.name.len())
            .map_err(|_| DirectoryError::Malformed("name too long"))?;
        let mut out = Vec::with_capacity(MAX_ENTRY);
        out.extend_from_slice(CONTEXT);
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.since.to_be_bytes());
        out.push(name_len);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&spki_len.to_be_bytes());
        out.extend_from_slice(spki);
        Ok(out)
    }

    /// Signs the entry with the server's key.
    pub fn sign(&self, server: &dyn Identity) -> Result<SignedEntry, DirectoryError> {
        let entry = self.encode()?;
        let signature = server.sign(&entry).map_err(DirectoryError::Sign)?;
        Ok(SignedEntry { entry, signature })
    }
}

/// An entry's bytes and the server's signature over them, as they travel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEntry {
    /// [`Entry::encode`]'s bytes.
    pub entry: Vec<u8>,
    /// RSASSA-PSS over `entry` by the server's key.
    pub signature: Vec<u8>,
}

impl SignedEntry {
    /// The entry, once the signature verified under the pinned `server` key: the signature is
    /// checked before the entry's contents are believed (the parse itself is bounded and safe
    /// on any bytes, see [`parse_entry`]).
    pub fn verify(&self, server: &PublicKey) -> Result<Entry, DirectoryError> {
        if self.entry.len() > MAX_ENTRY || self.signature.len() > MAX_SIGNATURE {
            return Err(DirectoryError::Malformed("longer than an entry may be"));
        }
        if !server.verify_pss(&self.entry, &self.signature) {
            return Err(DirectoryError::BadSignature);
        }
        parse_entry(&self.entry)
    }
}

/// Parses an entry's bytes ([`Entry::encode`]'s format) without checking any signature: a
/// plain function over untrusted bytes, as the fuzzer calls it. Every length is checked
/// against its bound before anything is read or allocated.
pub fn parse_entry(bytes: &[u8]) -> Result<Entry, DirectoryError> {
    if bytes.len() > MAX_ENTRY {
        return Err(DirectoryError::Malformed("longer than an entry may be"));
    }
    let short = |_| DirectoryError::Malformed("entry ends early");
    let mut r = Reader::new(bytes);
    if r.take(CONTEXT.len()).map_err(short)? != CONTEXT {
        return Err(DirectoryError::Malformed(
            "not a letterlock v1 directory entry",
        ));
    }
    let serial = r.u64().map_err(short)?;
    let since = r.u64().map_err(short)?;
    let name_len = usize::from(r.u8().map_err(short)?);
    if name_len == 0 || name_len > MAX_NAME {
        return Err(DirectoryError::BadName);
    }
    let name = std::str::from_utf8(r.take(name_len).map_err(short)?)
        .map_err(|_| DirectoryError::BadName)?;
    if !valid_name(name) {
        return Err(DirectoryError::BadName);
    }
    let spki_len = usize::from(r.u16().map_err(short)?);
    if spki_len > MAX_SPKI {
        return Err(DirectoryError::Malformed(
            "key longer than an entry may carry",
        ));
    }
    let spki = r.take(spki_len).map_err(short)?;
    r.expect_empty()
        .map_err(|_| DirectoryError::Malformed("trailing bytes after the key"))?;
    let key = PublicKey::from_der(spki).map_err(DirectoryError::Key)?;
    // One key, one encoding: a PKCS#1 key or a re-encoded SPKI would give the same key id
    // with other bytes, and signed bytes must mean exactly one thing.
    if key.spki_der() != spki {
        return Err(DirectoryError::Malformed(
            "key not in its canonical SPKI encoding",
        ));
    }
    Ok(Entry {
        serial,
        since,
        name: name.to_owned(),
        key,
    })
}

/// What a client already knows about a name or a key, to judge a verified entry by.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known<'a> {
    /// The key the user pinned under the entry's name (`client trust FILE --name NAME`).
    pub pinned_for_name: Option<&'a KeyId>,
    /// The name the user pinned the entry's key under, if any.
    pub pinned_name_for_key: Option<&'a str>,
    /// The key this client last accepted from the directory under the entry's name.
    pub seen_for_name: Option<&'a KeyId>,
}

/// What a verified entry means to this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The key the user pinned under this name: use it.
    Pinned,
    /// The key this client accepted before under this name: use it.
    Seen,
    /// A name this client never saw and never pinned: usable on the server's word (trust on
    /// first use through the pinned server key), shown as new.
    New,
    /// The directory now has another key for a name this client accepted before: not used
    /// until the user accepts the change, and shown as a change (as ssh does for host keys).
    Changed { before: KeyId, now: KeyId },
    /// The directory disagrees with a key the user pinned: refused, never used. Either the
    /// name has another pinned key, or the key is pinned under another name.
    ConflictsWithPin { detail: String },
    /// A name that reads as the server itself ([`crate::keys::reserved_name`]): refused, never
    /// used, whatever the key.
    Reserved,
}

/// Judges a verified `entry` against what the client knows: pins first (a pinned key always
/// wins, and the directory can never override it), then what it saw before.
pub fn judge(entry: &Entry, known: Known<'_>) -> Verdict {
    if crate::keys::reserved_name(&entry.name) {
        return Verdict::Reserved;
    }
    let id = entry.key.id();
    if let Some(pinned) = known.pinned_for_name {
        return if *pinned == id {
            Verdict::Pinned
        } else {
            Verdict::ConflictsWithPin {
                detail: format!(
                    "the server offers {id} for {name}, but you pinned {pinned} for {name}",
                    name = entry.name
                ),
            }
        };
    }
    if let Some(other) = known.pinned_name_for_key
        && other != entry.name
    {
        return Verdict::ConflictsWithPin {
            detail: format!(
                "the server names {id} {name}, but you pinned that key as {other}",
                name = entry.name
            ),
        };
    }
    match known.seen_for_name {
        Some(seen) if *seen == id => Verdict::Seen,
        Some(seen) => Verdict::Changed {
            before: *seen,
            now: id,
        },
        None => Verdict::New,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn entry(key: &PrivateKey, name: &str) -> Entry {
        Entry {
            serial: 7,
            since: 1_800_000_000,
            name: name.to_owned(),
            key: key.public().clone(),
        }
    }

    #[test]
    fn an_entry_signed_by_the_server_verifies_and_reads_back() {
        let (server, bob) = (
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
        );
        let e = entry(&bob, "bob");
        let signed = e.sign(&server).unwrap();
        assert!(signed.entry.starts_with(CONTEXT));
        assert_eq!(signed.verify(server.public()).unwrap(), e);
        // Another server's key, a changed byte anywhere, a changed signature: refused.
        assert!(matches!(
            signed.verify(bob.public()),
            Err(DirectoryError::BadSignature)
        ));
        for at in [0, CONTEXT.len(), CONTEXT.len() + 16, signed.entry.len() - 1] {
            let mut bad = signed.clone();
            bad.entry[at] ^= 1;
            assert!(
                matches!(
                    bad.verify(server.public()),
                    Err(DirectoryError::BadSignature)
                ),
                "byte {at}"
            );
        }
        let mut bad = signed.clone();
        bad.signature[0] ^= 1;
        assert!(bad.verify(server.public()).is_err());
    }

    #[test]
    fn malformed_entries_are_refused_before_any_key_is_parsed() {
        let bob = PrivateKey::generate(2048).unwrap();
        let good = entry(&bob, "bob").encode().unwrap();
        assert!(parse_entry(&good).is_ok());
        // Every truncation, trailing bytes, a wrong context, lengths past their bounds.
        for len in 0..good.len() {
            assert!(parse_entry(&good[..len]).is_err(), "truncated to {len}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(parse_entry(&long).is_err());
        let mut context = good.clone();
        context[0] ^= 0x20;
        assert!(parse_entry(&context).is_err());
        let name_at = CONTEXT.len() + 16;
        for bad_len in [0u8, 65, 255] {
            let mut b = good.clone();
            b[name_at] = bad_len;
            assert!(parse_entry(&b).is_err(), "name length {bad_len}");
        }
        let mut bad_name = good.clone();
        bad_name[name_at + 1] = b'/';
        assert!(matches!(
            parse_entry(&bad_name),
            Err(DirectoryError::BadName)
        ));
        let spki_at = name_at + 1 + 3;
        let mut huge = good.clone();
        huge[spki_at..spki_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse_entry(&huge).is_err());
        assert!(parse_entry(&vec![0u8; MAX_ENTRY + 1]).is_err());
    }

    #[test]
    fn a_pinned_key_wins_and_a_changed_key_is_a_change() {
        let (bob, mallory) = (
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
        );
        let (bob_id, mallory_id) = (bob.public().id(), mallory.public().id());
        let honest = entry(&bob, "bob");
        let swapped = entry(&mallory, "bob");
        let pinned = Known {
            pinned_for_name: Some(&bob_id),
            ..Known::default()
        };
        assert_eq!(judge(&honest, pinned), Verdict::Pinned);
        assert!(matches!(
            judge(&swapped, pinned),
            Verdict::ConflictsWithPin { .. }
        ));
        // Bob's pinned key offered under another name.
        let renamed = entry(&bob, "carol");
        let pinned_as_bob = Known {
            pinned_name_for_key: Some("bob"),
            ..Known::default()
        };
        assert!(matches!(
            judge(&renamed, pinned_as_bob),
            Verdict::ConflictsWithPin { .. }
        ));
        let seen = Known {
            seen_for_name: Some(&bob_id),
            ..Known::default()
        };
        assert_eq!(judge(&honest, seen), Verdict::Seen);
        assert_eq!(
            judge(&swapped, seen),
            Verdict::Changed {
                before: bob_id,
                now: mallory_id
            }
        );
        assert_eq!(judge(&honest, Known::default()), Verdict::New);
    }

    #[test]
    fn a_client_named_as_the_server_is_refused_whatever_the_client_knows() {
        let key = PrivateKey::generate(2048).unwrap();
        let id = key.public().id();
        for name in ["server", "Server", "SERVER"] {
            let e = entry(&key, name);
            assert_eq!(judge(&e, Known::default()), Verdict::Reserved, "{name}");
            let seen = Known {
                seen_for_name: Some(&id),
                ..Known::default()
            };
            assert_eq!(judge(&e, seen), Verdict::Reserved, "{name}");
        }
        assert_eq!(
            judge(&entry(&key, "servers"), Known::default()),
            Verdict::New
        );
    }
}
