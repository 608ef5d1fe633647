//! First contact: learn a server's key from a TLS 1.3 handshake, with the handshake proving that
//! the server holds it, before anything is pinned (`letterlock client trust-server`, as ssh's
//! known_hosts learns a host key).
//!
//! The probe is a client that pins nothing: its verifier accepts any certificate rustls-webpki
//! can parse, but records the certificate's key only from inside
//! `verify_tls13_signature`, once the server's CertificateVerify signature over this handshake's
//! transcript checked out (rustls's own check on the aws-lc-rs provider, RSA-PSS schemes only,
//! as [`super::pin`]). The handshake must then finish (the server's Finished verified, ALPN
//! `letterlock/2` agreed) before the key is returned: a server that did not complete the
//! handshake proved nothing.
//!
//! The probe sends no client certificate, so a letterlock server refuses the session right after
//! the handshake (`certificate_required` alert); the probe never reads from the connection, and
//! only wants the proven key. What the probe cannot tell is whether this is the right server:
//! that is for the person comparing the fingerprint, which is why the key is never pinned here.
//!
//! Invariant: a key returned by [`server_key`] is the key whose holder signed this handshake.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ALPN, Session, TlsError, TlsOptions, crypto_provider, pin};
use crate::keys::{KeyError, PublicKey};

/// Why the probe learned no key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TLS handshake failed or timed out (not a letterlock server, a version 1 server,
    /// a broken signature, a network error).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server proved a key that letterlock cannot use (not RSA, or under 2048 bits).
    #[error("the server's key is not one letterlock can use: {0}")]
    Key(#[source] KeyError),
    /// The handshake finished without a verified CertificateVerify (cannot happen with a
    /// full TLS 1.3 handshake; checked so that no unproven key is ever returned).
    #[error("the TLS handshake finished without the server proving its key")]
    NotProven,
}

/// What the probe learned: the server's proven key and what the handshake agreed on.
#[derive(Clone)]
pub struct ProbedServer {
    /// The key whose holder signed this handshake.
    pub key: PublicKey,
    /// Version, key exchange group, cipher suite, and the key id again.
    pub session: Session,
}

/// The probe's verifier: records the key of a certificate whose handshake signature verified.
#[derive(Debug)]
struct RecordProven {
    /// The SubjectPublicKeyInfo DER of the certificate whose CertificateVerify checked out.
    proven: Mutex<Option<Vec<u8>>>,
    /// The provider's signature verification (aws-lc-rs).
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RecordProven {
    /// Any certificate we can read a key from: nothing is pinned on first contact, and names,
    /// dates and the self-signature mean nothing without a CA (as in [`super::pin`]).
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        pin::key_id_of_cert(end_entity)
            .map(|_| ServerCertVerified::assertion())
            .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    /// The proof: the signature over this handshake's transcript must verify under the
    /// certificate's key; only then is the key recorded.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if !pin::VERIFY_SCHEMES.contains(&dss.scheme) {
            return Err(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let valid = rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)?;
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let spki = parsed.subject_public_key_info().as_ref().to_vec();
        *self.proven.lock().unwrap_or_else(PoisonError::into_inner) = Some(spki);
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        pin::VERIFY_SCHEMES.to_vec()
    }
}

/// Runs a TLS 1.3 handshake over `io` as a client without a certificate and returns the key the
/// server proved it holds. The server refuses the session afterwards (no client certificate);
/// that refusal is not read and not an error here.
pub async fn server_key<IO>(
    io: IO,
    options: &TlsOptions,
    timeout: Duration,
) -> Result<ProbedServer, ProbeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let provider = crypto_provider(options);
    let verifier = Arc::new(RecordProven {
        proven: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    let (stream, session) = super::connect(Arc::new(config), io, timeout).await?;
    // Nothing to say to a server that will refuse us: close without reading its alert.
    drop(stream);
    let proven = verifier
        .proven
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or(ProbeError::NotProven)?;
    let key = PublicKey::from_der(&proven).map_err(ProbeError::Key)?;
    // The certificate rustls kept for the session is the one whose signature we checked.
    if key.id() != session.peer {
        return Err(ProbeError::NotProven);
    }
    Ok(ProbedServer { key, session })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Identity, PrivateKey, TrustList};

    /// Generous: only a deadlock would reach it.
    const T: Duration = Duration::from_secs(30);

    fn fixed(name: &str) -> Arc<PrivateKey> {
        let pem = match name {
            "alice" => include_str!("../../../tests/keys/alice2048_private.pem"),
            _ => include_str!("../../../tests/keys/bob2048_private.pem"),
        };
        Arc::new(PrivateKey::from_pem(pem).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_probe_learns_the_key_the_server_proved_and_the_server_refuses_the_session() {
        let (server_key_pair, client) = (fixed("bob"), fixed("alice"));
        let mut trusted = TrustList::new();
        trusted.add("alice", client.public().clone()).unwrap();
        let trusted = Arc::new(trusted);
        let o = TlsOptions::default();
        let sc = super::super::server_config(server_key_pair.clone(), trusted.clone(), &o).unwrap();
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { super::super::accept(sc, &trusted, s, T).await });
        let probed = server_key(c, &o, T).await.unwrap();
        assert_eq!(probed.key.id(), server_key_pair.public().id());
        assert_eq!(probed.key.spki_der(), server_key_pair.public().spki_der());
        assert_eq!(probed.session.group, rustls::NamedGroup::X25519MLKEM768);
        // No client certificate: the server never accepts the probe as a client.
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_peer_that_does_not_speak_tls_gives_no_key() {
        use tokio::io::AsyncWriteExt;
        let (c, mut s) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            // A version 1 server's first bytes are a plain frame, not a TLS record.
            s.write_all(b"\x00\x00\x00\x05hello").await.unwrap();
            s
        });
        let result = server_key(c, &TlsOptions::default(), T).await;
        assert!(
            matches!(result, Err(ProbeError::Tls(_))),
            "{:?}",
            result.err()
        );
        drop(peer.await);
    }
}
