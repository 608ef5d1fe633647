//! RSA key pairs: generation, PEM files, fingerprints, and the private-key trait.
//!
//! Invariants:
//! - Every key in memory is an RSA key of [`MIN_BITS`]..=[`MAX_BITS`] bits; smaller keys are refused
//!   when loaded, whatever the file says.
//! - A key's identity is [`KeyId`]: SHA-256 of its SubjectPublicKeyInfo DER, shown the way
//!   OpenSSH shows fingerprints (`SHA256:` + unpadded base64), so users can compare it with
//!   `ssh-keygen -l`-style output and with `openssl pkey -pubin -outform DER | sha256sum`.
//! - Private-key bytes we hold (file text, DER) live in [`Zeroizing`] buffers; the parsed key lives
//!   inside aws-lc, which clears RSA private components when it frees them.
//! - Private operations sit behind [`Identity`], so an agent or a hardware key can stand in later.
//! - Which senders a recipient accepts is a [`Trust`]: a [`PublicKey`] trusts exactly itself, a
//!   [`TrustList`] each of its keys.
//!
//! ```
//! use letterlock::keys::{self, Identity, PrivateKey, PublicKey, Trust, TrustList};
//!
//! // Keys come from PEM text or files (the test keys of this repository here), or fresh.
//! let alice = PrivateKey::from_pem(include_str!("../../tests/keys/alice2048_private.pem"))?;
//! let bob = PublicKey::from_pem(include_str!("../../tests/keys/bob2048_public.pem"))?;
//! assert_eq!(alice.public().bits(), 2048);
//! println!("alice is {}", alice.public().id()); // SHA256:... as OpenSSH shows fingerprints
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
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{
    KeyPair as _, RSA_PSS_2048_8192_SHA256, RSA_PSS_SHA256, UnparsedPublicKey,
};
use aws_lc_rs::{digest, rand};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::files::{self, WriteOptions};

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
    #[error("the private key is passphrase-protected; letterlock reads unencrypted keys")]
    Encrypted,
    #[error("not an RSA {kind} key: {reason}")]
    NotRsa { kind: KeyKind, reason: String },
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
    #[error("{path}: not a usable client name (letters, digits, '-', '_' or '.', up to 64)")]
    BadName { path: PathBuf },
    #[error("the RSA operation failed")]
    Crypto,
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

/// aws-lc refuses undersized keys itself; say so in our words rather than "not a key".
fn rejected(kind: KeyKind, e: aws_lc_rs::error::KeyRejected) -> KeyError {
    if e.to_string() == "TooSmall" {
        KeyError::TooSmall
    } else {
        KeyError::NotRsa {
            kind,
            reason: e.to_string(),
        }
    }
}

/// The identity of a public key: SHA-256 of its SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The key id of a SubjectPublicKeyInfo DER encoding.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let mut id = [0u8; 32];
        id.copy_from_slice(digest::digest(&digest::SHA256, spki_der).as_ref());
        KeyId(id)
    }

    /// A short form for file names and log fields: the first 8 bytes in hex.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for KeyId {
    /// `SHA256:` + unpadded standard base64, as OpenSSH prints fingerprints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
        )
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An RSA public key, ready to encrypt to (OAEP) and to verify signatures of (PSS).
#[derive(Clone)]
pub struct PublicKey {
    /// The SubjectPublicKeyInfo DER: what we hash for the key id and hand to the verifier.
    spki: Vec<u8>,
    /// The parsed key for OAEP encryption.
    oaep: std::sync::Arc<OaepPublicEncryptingKey>,
    /// Cached key id, compared on every message.
    id: KeyId,
}

impl PublicKey {
    /// Parses a SubjectPublicKeyInfo or PKCS#1 `RSAPublicKey` DER encoding.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        // aws-lc's rsa::PublicKey accepts both encodings; re-encode as SPKI so the id is canonical.
        let parsed =
            aws_lc_rs::rsa::PublicKey::from_der(der).map_err(|e| rejected(KeyKind::Public, e))?;
        let spki: PublicKeyX509Der = parsed.as_der().map_err(|_| KeyError::Crypto)?;
        Self::from_spki(spki.as_ref())
    }

    fn from_spki(spki: &[u8]) -> Result<Self, KeyError> {
        let enc = PublicEncryptingKey::from_der(spki).map_err(|e| rejected(KeyKind::Public, e))?;
        check_bits(enc.key_size_bits())?;
        let oaep = OaepPublicEncryptingKey::new(enc).map_err(|_| KeyError::Crypto)?;
        Ok(PublicKey {
            oaep: std::sync::Arc::new(oaep),
            id: KeyId::of_spki(spki),
            spki: spki.to_vec(),
        })
    }

    /// Parses a PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let block = parse_pem(text)?;
        match block.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Self::from_der(block.contents()),
            other => Err(KeyError::WrongPemBlock {
                expected: KeyKind::Public,
                found: other.to_owned(),
            }),
        }
    }

    /// The key as `BEGIN PUBLIC KEY` PEM, which OpenSSL reads with `openssl pkey -pubin`.
    pub fn to_pem(&self) -> String {
        encode_pem("PUBLIC KEY", &self.spki)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The modulus length in bytes: the size of every ciphertext and signature.
    pub fn modulus_len(&self) -> usize {
        self.oaep.key_size_bytes()
    }

    pub fn bits(&self) -> usize {
        self.oaep.key_size_bits()
    }

    /// The largest plaintext one RSA-OAEP-SHA-256 block can carry under this key.
    pub fn max_oaep_plaintext(&self) -> usize {
        self.modulus_len() - OAEP_OVERHEAD
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256) encryption with a label.
    pub fn encrypt_oaep(&self, plaintext: &[u8], label: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut out = vec![0u8; self.oaep.ciphertext_size()];
        let n = self
            .oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label))
            .map_err(|_| KeyError::Crypto)?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// Verifies an RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) signature over `message`.
    pub fn verify_pss(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &self.spki)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits, {})", self.bits(), self.id)
    }
}

/// The private-key operations letterlock needs. A key file implements it ([`PrivateKey`]); an
/// agent or a hardware token could too.
pub trait Identity: Send + Sync {
    /// The matching public key (its id is who we are).
    fn public(&self) -> &PublicKey;
    /// RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) signature over `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// RSA-OAEP (SHA-256, MGF1-SHA-256) decryption with a label.
    fn decrypt_oaep(&self, ciphertext: &[u8], label: &[u8])
    -> Result<Zeroizing<Vec<u8>>, KeyError>;
}

/// An RSA private key held in memory.
pub struct PrivateKey {
    /// For PSS signatures.
    signer: KeyPair,
    /// For OAEP decryption (aws-lc keeps the two APIs on separate types).
    decrypter: OaepPrivateDecryptingKey,
    public: PublicKey,
}

impl PrivateKey {
    /// A fresh key pair from aws-lc's generator.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => return Err(KeyError::GenerateSize { bits }),
        };
        let pair = KeyPair::generate(size).map_err(|_| KeyError::Crypto)?;
        let pkcs8 = pkcs8_of(&pair)?;
        Self::from_pkcs8(&pkcs8)
    }

    /// Parses an unencrypted PKCS#8 `PrivateKeyInfo` DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let signer = KeyPair::from_pkcs8(der).map_err(|e| rejected(KeyKind::Private, e))?;
        let dec =
            PrivateDecryptingKey::from_pkcs8(der).map_err(|e| rejected(KeyKind::Private, e))?;
        check_bits(dec.key_size_bits())?;
        let public = PublicKey::from_der(signer.public_key().as_ref())?;
        let decrypter = OaepPrivateDecryptingKey::new(dec).map_err(|_| KeyError::Crypto)?;
        Ok(PrivateKey {
            signer,
            decrypter,
            public,
        })
    }

    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, what we and `openssl genpkey`
    /// write) or PKCS#1 (`BEGIN RSA PRIVATE KEY`, what the Python `rsa` package writes).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let block = parse_pem(text)?;
        let tag = block.tag().to_owned();
        let der = Zeroizing::new(block.into_contents());
        match tag.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8(&der),
            "RSA PRIVATE KEY" => {
                let pair = KeyPair::from_der(&der).map_err(|e| rejected(KeyKind::Private, e))?;
                Self::from_pkcs8(&pkcs8_of(&pair)?)
            }
            "ENCRYPTED PRIVATE KEY" => Err(KeyError::Encrypted),
            other => Err(KeyError::WrongPemBlock {
                expected: KeyKind::Private,
                found: other.to_owned(),
            }),
        }
    }

    /// The key as PKCS#8 `BEGIN PRIVATE KEY` PEM, in a buffer that is wiped when dropped.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = pkcs8_of(&self.signer)?;
        Ok(Zeroizing::new(encode_pem("PRIVATE KEY", &der)))
    }
}

impl Identity for PrivateKey {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut sig = vec![0u8; self.signer.public_modulus_len()];
        self.signer
            .sign(
                &RSA_PSS_SHA256,
                &rand::SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| KeyError::Crypto)?;
        Ok(sig)
    }

    fn decrypt_oaep(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let mut out = Zeroizing::new(vec![0u8; self.decrypter.min_output_size()]);
        let n = self
            .decrypter
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, Some(label))
            .map_err(|_| KeyError::Crypto)?
            .len();
        out.truncate(n);
        Ok(out)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: only which public key this is.
        write!(f, "PrivateKey({:?})", self.public)
    }
}

fn pkcs8_of(pair: &KeyPair) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let der: Pkcs8V1Der = pair.as_der().map_err(|_| KeyError::Crypto)?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

fn check_bits(bits: usize) -> Result<(), KeyError> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Size { bits })
    }
}

fn parse_pem(text: &str) -> Result<pem::Pem, KeyError> {
    pem::parse(text).map_err(|e| KeyError::NotPem {
        reason: e.to_string(),
    })
}

fn encode_pem(tag: &str, der: &[u8]) -> String {
    let block = pem::Pem::new(tag, der);
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

// ---------------------------------------------------------------------------------------------
// Files

/// Reads a key file, opened once and checked through that one handle (no race between the
/// checks and the read): a regular file, under [`MAX_KEY_FILE`] bytes, and, for a private key,
/// readable by its owner only. Reads at most the limit whatever the file claims.
fn read_key_file(path: &Path, private: bool) -> Result<Zeroizing<String>, KeyError> {
    let (text, mode) = read_key_text(path)?;
    // A key others can read may already be someone else's; a file that holds no private key
    // (a public key passed by mistake) is reported as that, not as a mode problem.
    if private && mode & 0o077 != 0 && text.contains("PRIVATE KEY-----") {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(text)
}

/// The file's text and mode, through one handle.
fn read_key_text(path: &Path) -> Result<(Zeroizing<String>, u32), KeyError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
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
    let mode = meta.permissions().mode() & 0o777;
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
    Ok((Zeroizing::new(text.to_owned()), mode))
}

/// Loads a private key file, refusing it if group or others can read it (as OpenSSH does):
/// a key others can read may already be someone else's.
pub fn load_private(path: &Path) -> Result<PrivateKey, KeyError> {
    let text = read_key_file(path, true)?;
    PrivateKey::from_pem(&text).map_err(|e| in_file(path, e))
}

/// Loads a public key file (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
pub fn load_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read_key_file(path, false)?;
    PublicKey::from_pem(&text).map_err(|e| in_file(path, e))
}

/// The public key of a file holding either a public or a private key, for `fingerprint`.
/// Reading a private key's public half needs no permission check: nothing secret leaves.
pub fn load_any_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read_key_file(path, false)?;
    if text.contains("PRIVATE KEY-----") {
        Ok(PrivateKey::from_pem(&text)
            .map_err(|e| in_file(path, e))?
            .public
            .clone())
    } else {
        PublicKey::from_pem(&text).map_err(|e| in_file(path, e))
    }
}

/// Names the file around an error about what it holds (the errors that used to carry the path
/// in their text); size refusals stay bare, so callers match `KeyError::TooSmall` directly.
fn in_file(path: &Path, e: KeyError) -> KeyError {
    match e {
        KeyError::NotPem { .. }
        | KeyError::WrongPemBlock { .. }
        | KeyError::Encrypted
        | KeyError::NotRsa { .. } => KeyError::InFile {
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
        std::io::ErrorKind::InvalidInput => KeyError::NotRegularFile {
            path: path.to_owned(),
        },
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
    let (private_path, public_path) = pair_paths(dir, name);
    if !force {
        for p in [&private_path, &public_path] {
            if p.exists() {
                return Err(KeyError::Exists { path: p.clone() });
            }
        }
    }
    let key = PrivateKey::generate(bits)?;
    write_atomic(&private_path, key.to_pem()?.as_bytes(), 0o600, force)?;
    write_atomic(&public_path, key.public().to_pem().as_bytes(), 0o644, force)?;
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Trust

/// Which sender keys a recipient accepts: given the sender key id a header names, the key to
/// verify its signature with, or `None` to refuse the message.
///
/// - A [`PublicKey`] trusts exactly itself: `&alice_public` accepts Alice and no one else.
/// - A [`TrustList`] trusts each of its keys.
/// - A closure `Fn(&KeyId) -> Option<PublicKey>` can look keys up anywhere else.
///
/// The opener checks that the key returned has the id asked for, so a lookup cannot make a
/// message verify under a key other than the one its header names.
pub trait Trust {
    /// The trusted key with id `sender`, if any.
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey>;
}

impl Trust for PublicKey {
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey> {
        (*sender == self.id).then(|| self.clone())
    }
}

impl Trust for TrustList {
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey> {
        self.get(sender).map(|t| t.key.clone())
    }
}

impl<F: Fn(&KeyId) -> Option<PublicKey>> Trust for F {
    fn trusted_key(&self, sender: &KeyId) -> Option<PublicKey> {
        self(sender)
    }
}

/// A public key we trust, with the name it is known by.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub name: String,
    pub key: PublicKey,
}

/// The set of keys a party trusts, looked up by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustList {
    by_id: std::collections::HashMap<KeyId, Trusted>,
}

impl TrustList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; a second key under a name already used, or the same key twice, is refused so
    /// that a name always means one key.
    pub fn add(&mut self, name: &str, key: PublicKey) -> Result<(), KeyError> {
        if let Some(existing) = self.by_id.get(&key.id()) {
            return Err(KeyError::TrustedTwice {
                id: key.id(),
                name: existing.name.clone(),
            });
        }
        if self.by_name(name).is_some() {
            return Err(KeyError::NameTaken {
                name: name.to_owned(),
            });
        }
        self.by_id.insert(
            key.id(),
            Trusted {
                name: name.to_owned(),
                key,
            },
        );
        Ok(())
    }

    pub fn get(&self, id: &KeyId) -> Option<&Trusted> {
        self.by_id.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Trusted> {
        self.by_id.values().find(|t| t.name == name)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Trusted> {
        self.by_id.values()
    }

    /// The clients a server in `dir` trusts: `dir/client_public.pem` as `client` (the original
    /// layout) and every `dir/clients/NAME.pem` as NAME.
    pub fn load_clients(dir: &Path) -> Result<TrustList, KeyError> {
        let mut list = TrustList::new();
        let original = dir.join("client_public.pem");
        if original.exists() {
            list.add("client", load_public(&original)?)?;
        }
        let folder = dir.join(CLIENTS_DIR);
        if folder.is_dir() {
            let entries = fs::read_dir(&folder).map_err(|source| KeyError::Read {
                path: folder.clone(),
                source,
            })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            paths.sort();
            for path in paths {
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if !valid_name(name) {
                    return Err(KeyError::BadName { path });
                }
                list.add(name, load_public(&path)?)?;
            }
        }
        Ok(list)
    }
}

/// Folder beside the server's keys holding one trusted client key per file, `NAME.pem`.
pub const CLIENTS_DIR: &str = "clients";

/// Checks that a client name is usable as a file name and a log field.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}
