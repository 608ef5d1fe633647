//! A client's cache of its delegated handshake key (docs/PROTOCOL.md, "The handshake key
//! cache"): one file beside its private key, so that a command run once (`letterlock client
//! send_msg`) finds a handshake key ready instead of certifying a fresh one with an RSA
//! signature in every process.
//!
//! It is what Kerberos does with its credential cache: a short-lived credential, derived from
//! the long-term secret, kept in a file only its owner can read. What it gives a thief is in
//! docs/SECURITY.md: TLS handshakes as this client until the key expires (at most 7 days), never
//! a message signature or a decryption. The command line uses it only for a private key that is
//! not passphrase-protected: for such a key the file sits beside a file that gives far more to
//! whoever can read it. For a protected key a cache would hand out, for days, what the
//! passphrase guards, so none is kept.
//!
//! Everything read is checked as if a stranger had written it: the file is read like a private
//! key file (a regular file, owner-only, at most 64 KiB), the certificate must be a delegation
//! from this very key that verifies and is valid now, the private key must match the
//! certificate, and the key must still have most of its validity ahead. Anything else is
//! ignored (and replaced): a cache never fails a connection.
//!
//! A new key is written as soon as it is made, before any server has accepted this client: a
//! client that is refused, or finds no server, keeps one too. Harmless (the key is certified by
//! this client's own key and names no server), and the attempt after the operator trusts the
//! client is spared its RSA signature; `make_delegated` in `tls/mod.rs` says why the write is
//! not put off until a handshake succeeds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::sign::CertifiedKey;
use tracing::debug;
use zeroize::Zeroizing;

use super::delegated::{self, HandshakeKey, REFRESH};
use crate::keys::{Identity, KeyError, KeyId, PublicKey};

/// PEM labels of the two blocks, in this order.
const KEY_LABEL: &str = "PRIVATE KEY";
const CERT_LABEL: &str = "CERTIFICATE";

/// Where a client keeps its handshake key.
#[derive(Clone, Debug)]
pub struct HandshakeKeyCache {
    path: PathBuf,
    /// What [`HandshakeKeyCache::is_fresh_for`] found, for the next load to take instead of
    /// reading and checking the file again (a quarter of a millisecond on the machines we
    /// measure, mostly the RSA verification, on the path of a one-shot `send_msg`). Taken
    /// once, and only within [`CHECK_REUSE`] of the check: a process that lives on reads the
    /// file again.
    checked: Arc<Mutex<Option<Checked>>>,
}

/// A check of the file, kept for the load that follows it.
#[derive(Debug)]
struct Checked {
    key_id: KeyId,
    at: SystemTime,
    key: Option<Arc<CertifiedKey>>,
}

/// How long a check is good for the load that follows it: the same command, a moment later.
const CHECK_REUSE: Duration = Duration::from_secs(10);

impl PartialEq for HandshakeKeyCache {
    /// The same file: what was checked of it is not part of what the cache is.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for HandshakeKeyCache {}

impl HandshakeKeyCache {
    /// A cache in the file `path` (the command line uses `DIR/client_handshake.pem` beside
    /// `DIR/client_private.pem`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        HandshakeKeyCache {
            path: path.into(),
            checked: Arc::default(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the file, if there is one: `Ok(true)` when it was there. For a key that has
    /// just been given a passphrase: a handshake key kept from before would otherwise go on
    /// handing out, for days, the TLS identity that the passphrase now guards.
    pub fn discard(&self) -> std::io::Result<bool> {
        // Looked at first: on a read-only folder, removing a file that is not there fails
        // with "read-only file system", not "not found".
        if std::fs::symlink_metadata(&self.path).is_err() {
            return Ok(false);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The cached handshake key of `identity`, if the file holds one that is valid at `now` and
    /// was made less than [`REFRESH`] ago (so that peers whose clocks run ahead still accept
    /// it); `None` otherwise, the reason logged at debug level.
    pub(super) fn load(
        &self,
        identity: &dyn Identity,
        now: SystemTime,
    ) -> Option<Arc<CertifiedKey>> {
        let me = identity.public();
        let checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(c) = checked
            && c.key_id == me.id()
            && now
                .duration_since(c.at)
                .is_ok_and(|since| since <= CHECK_REUSE)
        {
            return c.key;
        }
        match self.read(me, now) {
            Ok(key) => Some(key),
            Err(why) => {
                debug!(file = %self.path.display(), %why, "no usable cached TLS handshake key");
                None
            }
        }
    }

    /// Whether the file holds a handshake key of the key `me` that a connection made now would
    /// use, checked as a connection checks it. A connection that finds one needs only the
    /// public half of its letterlock key: the command line then parses the private key later,
    /// on the thread that signs the message ([`crate::keys::LazyPrivateKey`]).
    pub fn is_fresh_for(&self, me: &PublicKey) -> bool {
        let at = SystemTime::now();
        let key = self.read(me, at).ok();
        let fresh = key.is_some();
        *self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Checked {
            key_id: me.id(),
            at,
            key,
        });
        fresh
    }

    fn read(&self, me: &PublicKey, now: SystemTime) -> Result<Arc<CertifiedKey>, String> {
        let text = crate::keys::file::read_key_file(&self.path, true).map_err(|e| match e {
            KeyError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "none yet".to_owned()
            }
            other => other.to_string(),
        })?;
        let blocks = pem::parse_many(text.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
        let [key, cert] = blocks.as_slice() else {
            return Err(format!("{} PEM blocks, not 2", blocks.len()));
        };
        if key.tag() != KEY_LABEL || cert.tag() != CERT_LABEL {
            return Err(format!("blocks {:?} and {:?}", key.tag(), cert.tag()));
        }
        let pkcs8 = Zeroizing::new(key.contents().to_vec());
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
            .map_err(|_| "not an EC P-256 private key".to_owned())?;
        let handshake = HandshakeKey::from_pair(pair).map_err(|e| e.to_string())?;
        let der = CertificateDer::from(cert.contents().to_vec());
        if !delegated::certifies(&der, handshake.spki()) {
            return Err("the certificate is not of this handshake key".to_owned());
        }
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_owned())?;
        delegated::verify(&der, UnixTime::since_unix_epoch(since_epoch), |id| {
            if id == me.id() {
                Ok(me)
            } else {
                Err(rustls::Error::General(format!("a delegation from {id}")))
            }
        })
        .map_err(|e| format!("not a valid delegation from this key now: {e}"))?;
        let made = delegated::not_before(&der).ok_or("no validity")? + delegated::BACKDATE;
        if since_epoch.saturating_sub(made) >= REFRESH
            || made > since_epoch + Duration::from_secs(60)
        {
            return Err("made too long ago, or in the future".to_owned());
        }
        Ok(Arc::new(CertifiedKey::new(vec![der], Arc::new(handshake))))
    }

    /// Writes a handshake key (its PKCS#8 private key, then its certificate `cert`) atomically
    /// with mode 0600, replacing what was there.
    pub(super) fn store(&self, pkcs8: &[u8], cert: &[u8]) -> Result<(), KeyError> {
        let mut text = Zeroizing::new(crate::keys::encode_pem(KEY_LABEL, pkcs8));
        text.push_str(&crate::keys::encode_pem(CERT_LABEL, cert));
        crate::keys::file::write_atomic(&self.path, text.as_bytes(), 0o600, true)
    }
}
