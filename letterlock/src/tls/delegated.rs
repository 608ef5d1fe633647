//! Delegated handshake keys: the TLS handshake signs with a short-lived ECDSA P-256 key that the
//! letterlock RSA key certified, instead of with the RSA key itself (docs/PROTOCOL.md, "Delegated
//! handshake keys").
//!
//! Why: every version 2 connection used to cost each side one RSA-3072 private operation for its
//! CertificateVerify (about 2.3 ms each on the machines we measure, one after the other), so a
//! one-shot `letterlock client send_msg` spent most of its time waiting for the server's
//! signature, then its own. An ECDSA P-256 signature takes tens of microseconds. The RSA key
//! signs the handshake key's certificate once (per process for a client, per day for a server),
//! beside the work before the handshake, so the RSA operations left on the path of a message are
//! the message's own: its signature and the server's decryption.
//!
//! What it does not change: who a peer is. The handshake key's certificate names the key that
//! signed it (authorityKeyIdentifier = key id, issuer = `CN=letterlock <key id>`); the receiver
//! looks that key id up among the keys it pins or trusts, exactly as it does with the RSA
//! certificate's own key, verifies the certificate's RSA-PSS signature with that key, and
//! refuses a certificate outside its validity or valid for longer than [`MAX_LIFETIME`]. A
//! stolen handshake key is worth at most that long, and lives only in the memory of the process
//! that made it (never written anywhere).
//!
//! Both forms stay valid: a peer that does not ask for delegation (`openssl s_client`, Python's
//! `ssl`, `trust-server`, an implementation of the earlier text) still gets and may still send the
//! RSA certificate. A letterlock client asks by offering the extra ALPN name
//! [`ALPN_DELEGATION`]; a letterlock server asks by naming [`ca_hint`] in its CertificateRequest.
//! Each side also needs `ecdsa_secp256r1_sha256` among the peer's signature schemes.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{CertificateError, Error, SignatureAlgorithm, SignatureScheme};
use x509_cert::der::{DateTime, Decode, Encode};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;

use super::TlsError;
use super::cert::{self, Fields, RSA_PSS_SHA256_ALG_ID};
use crate::keys::{Identity, KeyId, PublicKey};

/// The ALPN name a letterlock client offers beside [`super::ALPN`] to ask the server for its
/// delegated handshake key. It is never selected: the server selects `letterlock/2`, and a
/// server that does not know this name simply ignores it (RFC 7301).
pub const ALPN_DELEGATION: &[u8] = b"letterlock/2+delegated";

/// The common name of the Name a letterlock server sends as its only `certificate_authorities`
/// entry, to ask the client for its delegated handshake key ([`ca_hint`]).
pub const CA_HINT_NAME: &str = "letterlock delegated handshake keys";

/// The signature scheme of a delegated handshake key: `ecdsa_secp256r1_sha256` (0x0403).
pub const SCHEME: SignatureScheme = SignatureScheme::ECDSA_NISTP256_SHA256;

/// The longest validity a receiver accepts (`notAfter` − `notBefore`): 7 days, as RFC 9345
/// allows its delegated credentials.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How far before the moment it is made a handshake key's validity starts: a peer whose clock is
/// up to a day behind still accepts it.
pub const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// A handshake key in use for longer than this is replaced by a fresh one (a long-running server
/// or client), so that it always has days of validity left for peers whose clocks run ahead.
pub const REFRESH: Duration = Duration::from_secs(24 * 3600);

/// `certificate_authorities` entry of a letterlock server's CertificateRequest: the Name
/// `CN=letterlock delegated handshake keys` (DER).
pub fn ca_hint() -> Vec<u8> {
    cert::name(CA_HINT_NAME)
}

/// The subject of every delegated handshake key's certificate.
const SUBJECT_NAME: &str = "letterlock handshake key";

/// How every EC P-256 SubjectPublicKeyInfo (91 bytes of DER) begins: SEQUENCE, the
/// AlgorithmIdentifier id-ecPublicKey (1.2.840.10045.2.1) with the named curve prime256v1
/// (1.2.840.10045.3.1.7), and the BIT STRING of the 65-byte uncompressed point.
const EC_P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const EC_P256_SPKI_LEN: usize = 91;

/// A fresh handshake key and its certificate signed by `identity`, valid from [`BACKDATE`] before
/// `now` for [`MAX_LIFETIME`]: one RSA signature.
pub fn make(identity: &dyn Identity, now: SystemTime) -> Result<Arc<CertifiedKey>, TlsError> {
    let (from, until) = validity_from(now);
    make_valid(identity, from, until)
}

/// The validity [`make`] gives a key made at `now`: from [`BACKDATE`] before it, for
/// [`MAX_LIFETIME`].
pub(super) fn validity_from(now: SystemTime) -> (Duration, Duration) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(BACKDATE);
    (since, since + MAX_LIFETIME)
}

/// A fresh handshake key valid from `not_before` to `not_after` (seconds since the Unix epoch):
/// [`make`], and tests that need keys out of date.
pub(super) fn make_valid(
    identity: &dyn Identity,
    not_before: Duration,
    not_after: Duration,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let (key, der) = make_parts(identity, not_before, not_after)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(der)],
        Arc::new(key),
    )))
}

/// A fresh handshake key and its certificate (DER), apart: for a client that also keeps them
/// ([`super::cache`]).
pub(super) fn make_parts(
    identity: &dyn Identity,
    not_before: Duration,
    not_after: Duration,
) -> Result<(HandshakeKey, Vec<u8>), TlsError> {
    let key = HandshakeKey::generate()?;
    let der = certificate(
        identity,
        &key.spki,
        &random_serial()?,
        not_before,
        not_after,
    )?;
    Ok((key, der))
}

/// The certificate of handshake key `spki` signed by `identity`, valid from `not_before` to
/// `not_after` (seconds since the Unix epoch): the exact form of PROTOCOL.md, for
/// [`make`] and the test vector.
pub fn certificate(
    identity: &dyn Identity,
    spki: &[u8],
    serial: &[u8; 16],
    not_before: Duration,
    not_after: Duration,
) -> Result<Vec<u8>, TlsError> {
    let id = identity.public().id();
    let time = |t: Duration| -> Result<Vec<u8>, TlsError> {
        // UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280, 4.1.2.5).
        DateTime::from_unix_duration(t)
            .ok()
            .map(x509_cert::time::Time::from)
            .and_then(|t| t.to_der().ok())
            .ok_or(TlsError::HandshakeKey("a validity date out of range"))
    };
    cert::signed_by(
        identity,
        &Fields {
            serial: *serial,
            issuer: &cert::key_name(&id),
            subject: &cert::name(SUBJECT_NAME),
            not_before: &time(not_before)?,
            not_after: &time(not_after)?,
            spki,
            authority_key_id: Some(id),
        },
    )
    .map_err(TlsError::Certificate)
}

fn random_serial() -> Result<[u8; 16], TlsError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| TlsError::HandshakeKey("the system random generator failed"))?;
    Ok(serial)
}

/// Whether a certificate carries an EC key: then it can only be a delegated handshake key
/// (letterlock keys are RSA), and is judged by [`verify`], which accepts P-256 only.
pub fn is_delegated(cert: &CertificateDer<'_>) -> bool {
    use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
    const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| {
        SubjectPublicKeyInfoRef::from_der(c.subject_public_key_info().as_ref())
            .is_ok_and(|spki| spki.algorithm.oid == ID_EC_PUBLIC_KEY)
    })
}

/// Whether an SPKI (DER) is an EC P-256 key as a point in uncompressed form: the only key a
/// delegated handshake key may be.
fn is_p256_uncompressed(spki: &[u8]) -> bool {
    spki.len() == EC_P256_SPKI_LEN && spki.starts_with(EC_P256_SPKI_PREFIX)
}

/// Whether `cert` (DER) carries exactly the key `spki` (DER).
pub(super) fn certifies(cert: &CertificateDer<'_>, spki: &[u8]) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.subject_public_key_info().as_ref() == spki)
}

/// A certificate's `notBefore`, in seconds since the Unix epoch, read without checking anything.
pub(super) fn not_before(cert: &CertificateDer<'_>) -> Option<Duration> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    Some(
        parsed
            .tbs_certificate()
            .validity()
            .not_before
            .to_unix_duration(),
    )
}

/// The key id a delegated certificate names as its signer (its authorityKeyIdentifier), read
/// without checking anything: for after the handshake, once [`verify`] accepted it.
pub fn signer_of(cert: &CertificateDer<'_>) -> Option<KeyId> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    authority_key_id(&parsed).ok()
}

/// Checks a delegated handshake key's certificate: it names a key id that `lookup` knows, its
/// signature verifies under that key, `now` is within its validity and the validity is no longer
/// than [`MAX_LIFETIME`]. Returns the signer's key id: who the peer is. The TLS CertificateVerify
/// is then checked against the certificate's own (EC) key by rustls.
///
/// `lookup` returns `Err` with the error to report when the key id is not pinned or trusted.
pub fn verify<'k>(
    cert: &CertificateDer<'_>,
    now: UnixTime,
    lookup: impl FnOnce(KeyId) -> Result<&'k PublicKey, Error>,
) -> Result<KeyId, Error> {
    let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).map_err(|_| bad())?;
    let tbs = parsed.tbs_certificate();
    // The signature is checked over the TBSCertificate exactly as received, and that must be
    // canonical DER (what x509-cert encodes again byte for byte): x509-cert reads some
    // non-canonical forms (an explicit default, a GeneralizedTime before 2050), so checking over
    // its re-encoding would accept bytes nobody signed.
    let raw_tbs = raw_tbs(cert.as_ref()).ok_or_else(bad)?;
    if tbs.to_der().ok().as_deref() != Some(raw_tbs) {
        return Err(bad());
    }
    let signer = authority_key_id(&parsed).map_err(|()| bad())?;
    let alg = |a: &x509_cert::spki::AlgorithmIdentifierOwned| a.to_der().ok();
    let spki = tbs.subject_public_key_info().to_der().ok();
    if alg(parsed.signature_algorithm()).as_deref() != Some(RSA_PSS_SHA256_ALG_ID)
        || alg(tbs.signature()).as_deref() != Some(RSA_PSS_SHA256_ALG_ID)
        || tbs.issuer().to_der().ok() != Some(cert::key_name(&signer))
        || !spki.as_deref().is_some_and(is_p256_uncompressed)
    {
        return Err(bad());
    }
    let key = lookup(signer)?;
    let signature = parsed.signature().as_bytes().ok_or_else(bad)?;
    if !key.verify_pss(raw_tbs, signature) {
        return Err(Error::InvalidCertificate(CertificateError::BadSignature));
    }
    let validity = tbs.validity();
    let (from, until) = (
        validity.not_before.to_unix_duration(),
        validity.not_after.to_unix_duration(),
    );
    let now = now.as_secs();
    if until.saturating_sub(from) > MAX_LIFETIME {
        // Too long to be a delegation: a handshake key is short-lived or not accepted at all.
        // Refused as out of date (`certificate_expired`), the reason logged.
        tracing::warn!(
            signer = %signer,
            valid_for_s = until.saturating_sub(from).as_secs(),
            max_s = MAX_LIFETIME.as_secs(),
            "TLS handshake refused: a delegated handshake key valid for longer than allowed"
        );
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    if now < from.as_secs() {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > until.as_secs() {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(signer)
}

/// The TBSCertificate of a DER certificate as its bytes: the first element of the outer
/// SEQUENCE.
fn raw_tbs(cert: &[u8]) -> Option<&[u8]> {
    use x509_cert::der::{Decode as _, Header, Reader as _, SliceReader};
    let mut outer = SliceReader::new(cert).ok()?;
    let _certificate = Header::decode(&mut outer).ok()?;
    let start = usize::try_from(outer.position()).ok()?;
    let tbs = Header::decode(&mut outer).ok()?;
    let header_len = usize::try_from(outer.position()).ok()? - start;
    let body = usize::try_from(u32::from(tbs.length())).ok()?;
    cert.get(start..start.checked_add(header_len)?.checked_add(body)?)
}

/// The 32-byte keyIdentifier of the certificate's one authorityKeyIdentifier extension.
fn authority_key_id(cert: &x509_cert::Certificate) -> Result<KeyId, ()> {
    let (_critical, aki) = cert
        .tbs_certificate()
        .get_extension::<AuthorityKeyIdentifier>()
        .map_err(|_| ())?
        .ok_or(())?;
    let id: [u8; 32] = aki
        .key_identifier
        .as_ref()
        .ok_or(())?
        .as_bytes()
        .try_into()
        .map_err(|_| ())?;
    Ok(KeyId(id))
}

/// The handshake keys a server presents, one at a time: made at start, replaced on a thread of
/// its own once it is [`REFRESH`] old, while handshakes go on with the current one (a refresh
/// costs an RSA signature, which no handshake waits for, and no lock is held across it).
pub struct Delegation {
    identity: Arc<dyn Identity>,
    current: Arc<Mutex<Current>>,
}

/// The key in use, and the state of its replacement.
struct Current {
    made: SystemTime,
    key: Arc<CertifiedKey>,
    /// A thread is making the next key.
    refreshing: bool,
    /// When the last refresh started: a failed one is tried again after [`RETRY`].
    tried: Option<SystemTime>,
}

/// How long after a failed refresh the next one is tried.
const RETRY: Duration = Duration::from_secs(60);

impl fmt::Debug for Delegation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Delegation({})", self.identity.public().id())
    }
}

impl Delegation {
    /// Makes the first handshake key (one RSA signature).
    pub fn new(identity: Arc<dyn Identity>) -> Result<Self, TlsError> {
        let now = SystemTime::now();
        let key = make(identity.as_ref(), now)?;
        Ok(Delegation {
            identity,
            current: Arc::new(Mutex::new(Current {
                made: now,
                key,
                refreshing: false,
                tried: None,
            })),
        })
    }

    /// The handshake key to present now; `None` when the one in hand is not valid at this
    /// moment (the clock moved past it and no fresh one could be made yet): the server then
    /// presents its RSA certificate.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current_at(SystemTime::now())
    }

    /// [`Delegation::current`] with the clock reading `now`; starts a refresh when the key is
    /// [`REFRESH`] old (or made "after" `now`: the clock went back).
    pub(super) fn current_at(&self, now: SystemTime) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let fresh = now
            .duration_since(current.made)
            .is_ok_and(|age| age < REFRESH);
        let may_try = current
            .tried
            .is_none_or(|t| now.duration_since(t).map_or(true, |since| since >= RETRY));
        if !fresh && !current.refreshing && may_try {
            current.tried = Some(now);
            current.refreshing = self.refresh(now);
        }
        let (from, until) = validity_from(current.made);
        let at = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        (from <= at && at <= until).then(|| current.key.clone())
    }

    /// A delegation over `identity` holding `other`'s key as made at the same time (tests of
    /// a key that cannot sign any more).
    #[cfg(test)]
    pub(super) fn new_for_test(identity: Arc<dyn Identity>, other: &Delegation) -> Self {
        let (made, key) = other
            .current
            .lock()
            .map(|c| (c.made, c.key.clone()))
            .unwrap_or_else(|_| unreachable!());
        Delegation {
            identity,
            current: Arc::new(Mutex::new(Current {
                made,
                key,
                refreshing: false,
                tried: None,
            })),
        }
    }

    #[cfg(test)]
    pub(super) fn refreshing(&self) -> bool {
        self.current.lock().is_ok_and(|c| c.refreshing)
    }

    #[cfg(test)]
    pub(super) fn tried(&self) -> Option<SystemTime> {
        self.current.lock().ok().and_then(|c| c.tried)
    }

    /// Makes the next key made at `now` on a thread, which puts it in place (taking the lock
    /// the caller holds now, once the caller let it go). False if no thread could be started.
    fn refresh(&self, now: SystemTime) -> bool {
        let (identity, current) = (self.identity.clone(), self.current.clone());
        let spawned = std::thread::Builder::new()
            .name("letterlock-refresh".into())
            .spawn(move || {
                let made = make(identity.as_ref(), now);
                let Ok(mut current) = current.lock() else {
                    return;
                };
                current.refreshing = false;
                match made {
                    Ok(key) => {
                        current.made = now;
                        current.key = key;
                        tracing::debug!("made a fresh TLS handshake key");
                    }
                    Err(e) => tracing::error!(error = %e, "cannot make a fresh TLS handshake key"),
                }
            });
        match spawned {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a thread to refresh the TLS handshake key");
                false
            }
        }
    }
}

/// An ECDSA P-256 key made for a process's handshakes, held in memory (aws-lc frees and wipes
/// it when the last handshake that holds it is done), and in a client's cache file if it keeps
/// one ([`super::cache`]).
pub(super) struct HandshakeKey {
    key: Arc<EcdsaKeyPair>,
    /// Its SubjectPublicKeyInfo (DER).
    spki: Vec<u8>,
}

impl fmt::Debug for HandshakeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandshakeKey(ECDSA P-256)")
    }
}

impl HandshakeKey {
    fn generate() -> Result<Self, TlsError> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| TlsError::HandshakeKey("key generation failed"))?;
        Self::from_pair(key)
    }

    /// The handshake key of an EC P-256 key pair.
    pub(super) fn from_pair(key: EcdsaKeyPair) -> Result<Self, TlsError> {
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| TlsError::HandshakeKey("cannot encode its public key"))?
            .as_ref()
            .to_vec();
        Ok(HandshakeKey {
            key: Arc::new(key),
            spki,
        })
    }

    /// Its SubjectPublicKeyInfo (DER).
    pub(super) fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// Its private key as PKCS#8 v1 (DER), wiped when dropped.
    pub(super) fn to_pkcs8(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
        let document = self
            .key
            .to_pkcs8v1()
            .map_err(|_| TlsError::HandshakeKey("cannot encode the handshake key"))?;
        Ok(zeroize::Zeroizing::new(document.as_ref().to_vec()))
    }
}

impl SigningKey for HandshakeKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SCHEME)
            .then(|| Box::new(HandshakeSigner(self.key.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

/// One handshake signature with a [`HandshakeKey`]: fast enough to make in place.
struct HandshakeSigner(Arc<EcdsaKeyPair>);

impl fmt::Debug for HandshakeSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandshakeSigner(ECDSA P-256)")
    }
}

impl Signer for HandshakeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.0
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::General("signing the handshake failed".into()))
    }

    fn scheme(&self) -> SignatureScheme {
        SCHEME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_and_the_alpn_name_are_the_bytes_the_document_gives() {
        let mut hint = hex::decode("302e312c302a06035504030c23").unwrap();
        hint.extend_from_slice(b"letterlock delegated handshake keys");
        assert_eq!(ca_hint(), hint);
        assert_eq!(
            hex::encode(ALPN_DELEGATION),
            "6c65747465726c6f636b2f322b64656c656761746564"
        );
    }
}
