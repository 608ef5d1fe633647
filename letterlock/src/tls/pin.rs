//! Pinning instead of a certificate authority: the verifiers that accept exactly the keys we
//! know, and the signer that lets rustls sign handshakes with a [`crate::keys::Identity`].
//!
//! A peer's certificate comes in one of two forms (docs/PROTOCOL.md, "Keys in certificates, and
//! pinning"):
//!
//! - its letterlock RSA key itself: the verifier reads the SubjectPublicKeyInfo out of the
//!   certificate (rustls-webpki's parser), hashes it into a [`KeyId`] and looks that up. Names,
//!   dates, extensions, intermediates and the certificate's own signature are ignored (they
//!   mean nothing without a CA), so a pinned key never fails on dates;
//! - a delegated handshake key (EC P-256) certified by the letterlock key: the key id it names
//!   is looked up the same way, and the certificate must verify under that key and be within a
//!   validity of at most 7 days ([`super::delegated::verify`]).
//!
//! Either way the client accepts exactly its pinned server key, the server exactly the keys of
//! its [`TrustList`], and what proves possession of the key is the handshake's CertificateVerify
//! signature, which rustls checks through [`rustls::crypto::verify_tls13_signature`]
//! (aws-lc-rs): RSA-PSS with an `rsaEncryption` key (`rsa_pss_rsae_sha256`, `_sha384`,
//! `_sha512`) for the first form, `ecdsa_secp256r1_sha256` for the second.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{Signer, SigningKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    SignatureAlgorithm, SignatureScheme,
};
use tracing::warn;

use super::delegated;
use crate::keys::{Identity, KeyId, PublicKey, TrustList};

/// The signature schemes we accept from a peer, most preferred first: RSA-PSS with an
/// `rsaEncryption` key (the keys letterlock makes), never PKCS#1 v1.5.
pub const VERIFY_SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

/// The one scheme we sign with: [`Identity::sign`] is RSA-PSS, SHA-256, MGF1-SHA-256, salt 32,
/// which is exactly TLS 1.3's `rsa_pss_rsae_sha256`.
pub const SIGN_SCHEME: SignatureScheme = SignatureScheme::RSA_PSS_SHA256;

/// The schemes a letterlock peer accepts in a CertificateVerify: [`VERIFY_SCHEMES`] for a
/// letterlock key itself, and first [`delegated::SCHEME`] for a delegated handshake key.
pub const HANDSHAKE_SCHEMES: [SignatureScheme; 4] = [
    delegated::SCHEME,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

/// rustls's signature verification (aws-lc-rs through rustls-webpki), limited to
/// [`HANDSHAKE_SCHEMES`]: RSA keys of 2048 to 8192 bits, as [`crate::keys`] allows, and P-256.
/// Which one a certificate may use is the key's own: rustls-webpki refuses a scheme that does
/// not match the certificate's key type.
static PSS_OR_DELEGATED: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        webpki::aws_lc_rs::ECDSA_P256_SHA256,
        webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    ],
    mapping: &[
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[webpki::aws_lc_rs::ECDSA_P256_SHA256],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
    ],
};

/// The peer presented a key that is not the one pinned: carried inside the rustls error so the
/// client can say which key it saw.
#[derive(Debug, thiserror::Error)]
#[error("the peer presented key {got}, not the pinned {expected}")]
pub struct UnpinnedKey {
    pub got: KeyId,
    pub expected: KeyId,
}

/// The key id of the SubjectPublicKeyInfo in a certificate (DER). `None` if it is not a
/// certificate rustls-webpki can parse.
pub fn key_id_of_cert(cert: &CertificateDer<'_>) -> Option<KeyId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(KeyId::of_spki(parsed.subject_public_key_info().as_ref()))
}

/// Who a peer is, from the certificate a finished handshake accepted: the key that signed a
/// delegated handshake key (and `true`), or the certificate's own key (and `false`).
pub fn peer_of_cert(cert: &CertificateDer<'_>) -> Option<(KeyId, bool)> {
    if delegated::is_delegated(cert) {
        delegated::signer_of(cert).map(|id| (id, true))
    } else {
        key_id_of_cert(cert).map(|id| (id, false))
    }
}

/// Judges a peer's certificate in either form: `lookup` gives the public key of a key id that
/// is pinned or trusted, or the error to fail the handshake with. Returns the peer's key id.
fn peer_key<'k>(
    cert: &CertificateDer<'_>,
    now: UnixTime,
    lookup: impl FnOnce(KeyId) -> Result<&'k PublicKey, Error>,
) -> Result<KeyId, Error> {
    if delegated::is_delegated(cert) {
        delegated::verify(cert, now, lookup)
    } else {
        let id = key_id_of_cert(cert).ok_or_else(bad_encoding)?;
        lookup(id)?;
        Ok(id)
    }
}

fn bad_encoding() -> Error {
    Error::InvalidCertificate(CertificateError::BadEncoding)
}

/// Checks a TLS 1.3 CertificateVerify signature with rustls's own verification, after making
/// sure the scheme is one of ours.
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    if !HANDSHAKE_SCHEMES.contains(&dss.scheme) {
        return Err(Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, &PSS_OR_DELEGATED)
}

/// Only TLS 1.3 is configured, so rustls never asks for a TLS 1.2 signature; refuse anyway.
fn no_tls12() -> Result<HandshakeSignatureValid, Error> {
    Err(Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// The client's verifier: the server's certificate must carry exactly the pinned key, or a
/// handshake key that the pinned key delegated to.
#[derive(Debug)]
pub struct PinnedServer {
    /// The server key the client trusts (server_public.pem).
    pub(super) pinned: PublicKey,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let expected = self.pinned.id();
        peer_key(end_entity, now, |got| {
            if got == expected {
                Ok(&self.pinned)
            } else {
                Err(Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(UnpinnedKey { got, expected })),
                )))
            }
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        HANDSHAKE_SCHEMES.to_vec()
    }
}

/// The server's verifier: a client certificate is required, and must carry a key of the trust
/// list. Which client it is, the server reads back from the certificate once the handshake is
/// done ([`super::accept`]).
///
/// The list is fixed for this verifier: a server whose trusted clients change makes a new
/// configuration (and so a new verifier) for each new list ([`super::ServerTls::config`]), and
/// runs each handshake with the one of the list current when it began, so the check here and
/// the one after the handshake always agree.
pub struct TrustedClients {
    clients: Arc<TrustList>,
    /// The one `certificate_authorities` entry, [`delegated::ca_hint`]: asks a letterlock client
    /// for its delegated handshake key.
    hints: Vec<DistinguishedName>,
}

impl TrustedClients {
    pub(super) fn new(clients: Arc<TrustList>) -> Self {
        TrustedClients {
            clients,
            hints: vec![DistinguishedName::from(delegated::ca_hint())],
        }
    }

    /// A verifier of the earlier profile, which does not ask for delegated handshake keys (tests).
    #[cfg(test)]
    pub(super) fn without_hint(clients: Arc<TrustList>) -> Self {
        TrustedClients {
            clients,
            hints: Vec::new(),
        }
    }
}

impl fmt::Debug for TrustedClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedClients({} keys)", self.clients.len())
    }
}

impl ClientCertVerifier for TrustedClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// Not a CA: the name asks a letterlock client for its delegated handshake key. Other TLS
    /// stacks send the certificate they were given whatever the names.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        peer_key(end_entity, now, |id| match self.clients.get(&id) {
            Some(trusted) => Ok(&trusted.key),
            None => {
                warn!(key = %id, "TLS handshake refused: client key not trusted");
                // Sent as an `access_denied` alert: the certificate is fine, the key is not
                // welcome.
                Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        HANDSHAKE_SCHEMES.to_vec()
    }
}

/// rustls's signing key over a letterlock [`Identity`]: the private key stays where it lives
/// (a key file in memory today, an agent or a token later) and is never exported or re-encoded.
pub struct IdentityKey(pub(super) Arc<dyn Identity>);

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.0.public().id())
    }
}

impl SigningKey for IdentityKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SIGN_SCHEME)
            .then(|| Box::new(IdentitySigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.public().spki_der()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

/// One handshake signature, [`SIGN_SCHEME`].
struct IdentitySigner(Arc<dyn Identity>);

impl fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentitySigner({})", self.0.public().id())
    }
}

impl Signer for IdentitySigner {
    /// rustls signs inside the handshake's poll, on a runtime worker. An RSA private operation
    /// takes milliseconds, so on a multi-threaded runtime (the server's) the worker hands its
    /// other tasks on first (`block_in_place`), keeping the reactor responsive; elsewhere (a
    /// current-thread runtime, tests) it signs in place.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let sign = || {
            self.0
                .sign(message)
                .map_err(|e| Error::General(format!("signing the handshake failed: {e}")))
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        SIGN_SCHEME
    }
}
