//! RSA key pairs: generation, PEM files (passphrase-protected or not), key ids and
//! fingerprints, trust, and the private-key trait.
//!
//! Layout, one concept per file:
//! - `id.rs`: [`KeyId`] (what the protocol names a key by), [`SshFingerprint`] (what
//!   `ssh-keygen -l` prints) and [`Fingerprint`] (either, parsed from text);
//! - `public.rs`: [`PublicKey`]; `private.rs`: [`PrivateKey`] and the [`Identity`] trait;
//! - `passphrase.rs`: [`Passphrase`] and [`PassphraseSource`] (how many tries it gets);
//!   `encrypted.rs`: encrypted PKCS#8 (PBES2) and its bounds;
//! - `file.rs`: reading and writing key files; `lazy.rs`: [`LazyPrivateKey`], a key file read
//!   now and parsed at its first use; `trust.rs`: [`Trust`] and [`TrustList`].
//!
//! Invariants:
//! - Every key in memory is an RSA key of [`MIN_BITS`]..=[`MAX_BITS`] bits; smaller keys are refused
//!   when loaded, whatever the file says.
//! - A key's identity is [`KeyId`]: SHA-256 of its SubjectPublicKeyInfo DER, shown as
//!   `SPKI-SHA256:` + unpadded base64 (compare with `openssl pkey -pubin -outform DER |
//!   sha256sum`). What `ssh-keygen -l` prints (`SHA256:…`) is another hash of the same key:
//!   [`PublicKey::ssh_fingerprint`].
//! - Private keys may be passphrase-protected at rest (PKCS#8 PBES2); the library never asks
//!   for a passphrase, the caller supplies one ([`load_private_with`]), and says whether a
//!   wrong one may be tried again (a person typing it) or not (a file, a variable).
//! - Private-key bytes we hold (file text, DER) live in [`Zeroizing`](zeroize::Zeroizing)
//!   buffers; the parsed key lives inside aws-lc, which clears RSA private components when it
//!   frees them.
//! - Private operations sit behind [`Identity`], so an agent or a hardware key can stand in later.
//! - Which senders a recipient accepts is a [`Trust`]: a [`PublicKey`] trusts exactly itself, a
//!   [`TrustList`] each of its keys.
//!
//! ```
//! use letterlock::keys::{self, Identity, PrivateKey, PublicKey, Trust, TrustList};
//!
//! // Keys come from PEM text or files (the test keys of this repository here), or fresh.
//! let alice = PrivateKey::from_pem(include_str!("../../../tests/keys/alice2048_private.pem"))?;
//! let bob = PublicKey::from_pem(include_str!("../../../tests/keys/bob2048_public.pem"))?;
//! assert_eq!(alice.public().bits(), 2048);
//! println!("alice is {}", alice.public().id()); // SPKI-SHA256:...
//! println!("ssh-keygen -l says {}", alice.public().ssh_fingerprint()); // SHA256:...
//!
//! // A public key trusts exactly itself; a list trusts each of its keys, by name.
//! assert!(bob.trusted_key(&bob.id()).is_some());
//! assert!(bob.trusted_key(&alice.public().id()).is_none());
//! let mut list = TrustList::new();
//! list.add("alice", alice.public().clone())?;
//! list.add("bob", bob.clone())?;
//! assert_eq!(list.trusted_key(&bob.id()).map(|k| k.id()), Some(bob.id()));
//!
//! // Key files: the private one is written mode 0600 and never replaced unless asked.
//! let dir = tempfile::tempdir()?;
//! let carol = keys::generate_pair_files(dir.path(), "carol", 2048, false)?;
//! let (private, public) = keys::pair_paths(dir.path(), "carol");
//! assert_eq!(keys::load_public(&public)?.id(), carol.public().id());
//! assert!(matches!(
//!     keys::generate_pair_files(dir.path(), "carol", 2048, false),
//!     Err(keys::KeyError::Exists { .. })
//! ));
//! # let _ = private;
//!
//! // A passphrase protects a private key at rest; the caller supplies it, the library never asks.
//! let pass = keys::Passphrase::from("correct horse battery staple");
//! let pem = alice.to_encrypted_pem(&pass)?; // BEGIN ENCRYPTED PRIVATE KEY, as OpenSSL reads
//! assert!(matches!(PrivateKey::from_pem(&pem), Err(keys::KeyError::Encrypted)));
//! let again = PrivateKey::from_pem_with_passphrase(&pem, &pass)?;
//! assert_eq!(again.public().id(), alice.public().id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::PathBuf;

mod encrypted;
pub(crate) mod file;
mod id;
mod lazy;
mod passphrase;
mod private;
mod public;
mod trust;

pub use encrypted::{KdfChoice, MAX_PBKDF2_ITERATIONS, MAX_SCRYPT_COST, PBKDF2_ITERATIONS};
pub use file::{
    generate_pair_files, generate_pair_files_with, is_encrypted_pem, load_any_public,
    load_any_public_with, load_private, load_private_with, load_public, pair_paths, write_atomic,
    write_pair_files,
};
pub use id::{Fingerprint, KeyId, SshFingerprint};
pub use lazy::LazyPrivateKey;
pub use passphrase::{Attempt, Passphrase, PassphraseSource};
pub use private::{Identity, PrivateKey};
pub use public::PublicKey;
pub use trust::{
    CLIENTS_DIR, Trust, TrustList, Trusted, client_key_files, reserved_name, valid_name,
};

/// Smallest modulus we accept: below 2048 bits RSA no longer meets NIST's 112-bit security level.
pub const MIN_BITS: usize = 2048;
/// Largest modulus we accept: aws-lc's RSA verification tops out at 8192 bits, and larger keys
/// would let a peer make us do very slow public-key work.
pub const MAX_BITS: usize = 8192;
/// Key size `keygen` uses unless told otherwise (128-bit security level per NIST SP 800-57).
pub const DEFAULT_BITS: usize = 3072;
/// The largest key file we read: a PEM 8192-bit private key is under 7 KiB.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// Bytes of OAEP-SHA-256 overhead: two hash lengths plus two bytes (RFC 8017, 7.1.1).
pub const OAEP_OVERHEAD: usize = 2 * 32 + 2;

/// Which half of a key pair a file or encoding was expected to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Public,
    Private,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Public => "public",
            KeyKind::Private => "private",
        })
    }
}

/// What can go wrong with keys. Each variant says what failed; what to do about it (a command
/// to run, a flag to pass) is the caller's to say: the command line adds such hints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
    #[error("private key {path} is readable by group or others (mode {mode:04o})")]
    Permissions { path: PathBuf, mode: u32 },
    /// A key file, or the folder that holds it, any user of the machine can write: anyone
    /// could put their own key in its place (a pinned server key, a sender's key), as ssh's
    /// StrictModes refuses an `authorized_keys` others can write. A folder with the sticky bit
    /// (`/tmp`) is not refused: there others cannot replace a file they do not own.
    #[error(
        "{path} is writable by every user of this machine (mode {mode:04o}): anyone could put \
         their own key in place of the one trusted; refused"
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    /// A key file owned by another user than the one running (or root): its owner can put
    /// their own key in its place whenever they like (one planted in a shared folder, say).
    #[error(
        "{path} belongs to another user (uid {uid}), who could put their own key in place of \
         the one trusted; refused"
    )]
    OwnedByOther { path: PathBuf, uid: u32 },
    #[error("{path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("{path} is over {} KiB, too large for a key file", limit / 1024)]
    FileTooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is not text")]
    NotText { path: PathBuf },
    /// The key file's path, around an error about its content.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<KeyError>,
    },
    #[error("not a PEM file: {reason}")]
    NotPem { reason: String },
    #[error("expected a {expected} key, found a `{found}` PEM block")]
    WrongPemBlock { expected: KeyKind, found: String },
    /// More than one PEM block: which key the file means is not for letterlock to guess (a
    /// reader taking the first would seal to it alone, which could be the user's own key).
    #[error("the file holds {blocks} PEM blocks, and a key file holds one key")]
    SeveralBlocks { blocks: usize },
    #[error("the private key is passphrase-protected: a passphrase is needed to read it")]
    Encrypted,
    /// The passphrase source could not give one (no terminal to ask on, an unreadable file).
    #[error("the private key is passphrase-protected and no passphrase was given: {reason}")]
    PassphraseUnavailable { reason: String },
    /// CBC padding or the PKCS#8 inside did not check out: the two cannot be told apart.
    #[error("wrong passphrase, or the file is damaged")]
    WrongPassphrase,
    #[error(
        "the key file asks for {what}; refused, so a hostile file cannot take gigabytes of \
         memory or minutes of work"
    )]
    KdfTooCostly { what: String },
    #[error(
        "the private key is encrypted with {what}; letterlock reads PBES2 with PBKDF2 \
         (HMAC-SHA-1/256/384/512) or scrypt, and AES-128-CBC or AES-256-CBC"
    )]
    UnsupportedEncryption { what: String },
    #[error("not a readable encrypted PKCS#8 key: {reason}")]
    BadEncryptedKey { reason: String },
    #[error("the private key uses OpenSSL's legacy encryption (Proc-Type: 4,ENCRYPTED)")]
    LegacyEncrypted,
    #[error("not a key fingerprint: {reason}")]
    BadFingerprint { reason: String },
    #[error("not an RSA {kind} key: {reason}")]
    NotRsa { kind: KeyKind, reason: String },
    /// The key's encoding does not parse or its parts do not fit together: the file was
    /// damaged or cut short (or is not a key at all inside valid PEM armour). `reason` is the
    /// parser's own word for it (aws-lc's, e.g. `InvalidEncoding`), kept for a verbose log
    /// rather than shown: it names no cause a user could act on.
    #[error("not a valid {kind} key: its data is damaged or cut short")]
    Damaged { kind: KeyKind, reason: String },
    #[error("RSA key of {bits} bits refused: letterlock accepts {MIN_BITS} to {MAX_BITS} bits")]
    Size { bits: usize },
    #[error("RSA key refused: it is smaller than {MIN_BITS} bits")]
    TooSmall,
    #[error("cannot generate a {bits}-bit key: letterlock generates 2048, 3072 or 4096 bits")]
    GenerateSize { bits: usize },
    #[error("key {id} is trusted twice (already as {name:?})")]
    TrustedTwice { id: KeyId, name: String },
    #[error("two trusted keys are named {name:?}")]
    NameTaken { name: String },
    /// A name that reads as the server itself ([`reserved_name`]): a key trusted under it could
    /// pass its messages off as the server's.
    #[error("{name:?} reads as the server itself: no key is trusted under that name")]
    ReservedName { name: String },
    #[error("{path}: not a usable client name (letters, digits, '-', '_' or '.', up to 64)")]
    BadName { path: PathBuf },
    #[error("the RSA operation failed")]
    Crypto,
    /// A private key read with [`LazyPrivateKey`] whose public half is not the public key
    /// file read beside it.
    #[error("{private} is not the private key of {public}: the two files are not a pair")]
    NotThePair { private: PathBuf, public: PathBuf },
}

impl KeyError {
    /// The error itself, without the [`KeyError::InFile`] wrapping that names the file.
    pub fn cause(&self) -> &KeyError {
        match self {
            KeyError::InFile { source, .. } => source.cause(),
            other => other,
        }
    }
}

/// aws-lc's refusal of a key, in our words: undersized ([`KeyError::TooSmall`]), an intact key
/// of another kind or size ([`KeyError::NotRsa`]), or anything else, which is a damaged
/// encoding ([`KeyError::Damaged`], aws-lc's word kept in it).
fn rejected(kind: KeyKind, e: aws_lc_rs::error::KeyRejected) -> KeyError {
    match e.description_() {
        "TooSmall" => KeyError::TooSmall,
        reason @ ("WrongAlgorithm" | "TooLarge") => KeyError::NotRsa {
            kind,
            reason: reason.to_owned(),
        },
        reason => KeyError::Damaged {
            kind,
            reason: reason.to_owned(),
        },
    }
}

fn check_bits(bits: usize) -> Result<(), KeyError> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Size { bits })
    }
}

/// The one PEM block of a key file: a file with more than one (`cat alice.pem bob.pem`) is
/// refused, never read as its first key (found by a trial run).
fn parse_pem(text: &str) -> Result<pem::Pem, KeyError> {
    // Anywhere, not only at a line's start: the PEM parser finds a BEGIN after an END on the
    // same line, as `cat` makes of a file without a final newline (found by a review).
    let blocks = text.matches("-----BEGIN ").count();
    if blocks > 1 {
        return Err(KeyError::SeveralBlocks { blocks });
    }
    pem::parse(text).map_err(|e| KeyError::NotPem {
        reason: pem_reason(text, &e),
    })
}

/// Why `text` is not a PEM key file, in words a user can act on (the `pem` crate's own text
/// for a file with no PEM lines at all is "malformedframing").
fn pem_reason(text: &str, e: &pem::PemError) -> String {
    let first = text.split_whitespace().next().unwrap_or("");
    if text.trim().is_empty() {
        "the file is empty".to_owned()
    } else if first.starts_with("ssh-") || first.starts_with("ecdsa-sha2-") {
        "this is an OpenSSH public key (one line); letterlock reads PEM keys: convert it with \
         `ssh-keygen -e -m PKCS8 -f FILE`"
            .to_owned()
    } else {
        match e {
            pem::PemError::MalformedFraming | pem::PemError::MissingBeginTag
                if !text.contains("-----BEGIN ") =>
            {
                "no -----BEGIN ...----- line".to_owned()
            }
            pem::PemError::MalformedFraming => {
                "its -----BEGIN and -----END lines do not frame a block (one missing, or damaged)"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

pub(crate) fn encode_pem(tag: &str, der: &[u8]) -> String {
    let block = pem::Pem::new(tag, der);
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
