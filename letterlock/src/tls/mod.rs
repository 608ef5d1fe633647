//! Protocol version 2's transport: TLS 1.3 underneath the frames (docs/PROTOCOL.md, "Version 2:
//! TLS 1.3 profile").
//!
//! - TLS 1.3 only, through rustls on its aws-lc-rs provider (our one crypto library).
//! - Key exchange X25519MLKEM768 first (post-quantum hybrid), X25519 as the fallback for stacks
//!   without ML-KEM, unless [`TlsOptions::require_pq`] refuses it.
//! - Mutual authentication with the letterlock RSA keys and no certificate authority: each key
//!   travels in a self-signed certificate made on the fly ([`cert`]), or certifies a short-lived
//!   ECDSA P-256 handshake key that signs the handshake in its place ([`delegated`]: letterlock
//!   peers ask each other for it, so that a handshake costs no RSA operation), and each side pins
//!   the other by key id ([`pin`]). The client accepts exactly its pinned server key; the server
//!   exactly the keys of its trust list, and learns from the handshake which client it is
//!   ([`accept`]).
//! - ALPN [`ALPN`] (`letterlock/2`) names the protocol inside; a peer that does not offer it
//!   (another protocol, or a version 1 client) fails the handshake.
//! - No session resumption and no 0-RTT data yet: every connection is a full handshake.
//!
//! Invariant: a stream returned by [`connect`] or [`accept`] has finished a TLS 1.3 handshake
//! with the pinned (or a trusted) key and agreed on [`ALPN`]; nothing is read from or written to
//! the peer in the clear.

pub mod cache;
pub mod cert;
pub mod delegated;
pub mod pin;
pub mod probe;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::CommonState;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite, kx_group};
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::keys::{Identity, KeyError, KeyId, PublicKey, TrustList, Trusted};

pub use cache::HandshakeKeyCache;
pub use pin::UnpinnedKey;
/// Re-exported so that users can read a [`Session`], and check a certificate with
/// [`delegated::verify`], without depending on rustls themselves.
pub use rustls::pki_types::{CertificateDer, UnixTime};
pub use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

/// The ALPN protocol name of letterlock protocol version 2: frames inside TLS 1.3.
pub const ALPN: &[u8] = b"letterlock/2";

/// Choices a deployment makes; the rest of the profile is fixed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Accept only the post-quantum hybrid X25519MLKEM768: a peer that cannot do it fails the
    /// handshake instead of falling back to X25519.
    pub require_pq: bool,
}

/// Why a TLS connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Making our certificate failed (the key could not sign).
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[source] KeyError),
    /// Making a delegated handshake key failed ([`delegated`]).
    #[error("cannot make the TLS handshake key: {0}")]
    HandshakeKey(&'static str),
    /// rustls refused the configuration (a bug in this module, not the peer's doing).
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The server presented another key than the pinned one.
    #[error("the server presented key {got}, but the trusted server key is {expected}")]
    WrongServer { got: KeyId, expected: KeyId },
    /// The handshake failed: the peer's key, version, groups, ALPN, or a broken message.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] rustls::Error),
    /// The handshake finished without agreeing on [`ALPN`].
    #[error("the peer did not agree on ALPN \"letterlock/2\"")]
    NoAlpn,
    /// The peer's certificate is not one of the trusted keys (only reachable if the verifier
    /// and the trust list disagree, which they cannot: checked again after the handshake).
    #[error("the client's key {0} is not trusted")]
    UnknownClient(KeyId),
    /// The server could not learn which clients it trusts (its store failed).
    #[error("the server could not read its trusted clients: {0}")]
    TrustUnavailable(String),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The connection failed under the handshake.
    #[error("network error during the TLS handshake: {0}")]
    Io(#[source] io::Error),
}

impl TlsError {
    /// Sorts an error from tokio-rustls: rustls errors travel inside `io::Error`.
    pub(crate) fn from_io(e: io::Error) -> TlsError {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Io(e);
        };
        if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls
            && let Some(k) = other.0.downcast_ref::<UnpinnedKey>()
        {
            return TlsError::WrongServer {
                got: k.got,
                expected: k.expected,
            };
        }
        TlsError::Handshake(tls.clone())
    }

    /// The handshake failed on dates: a delegated handshake key not valid yet or any more by
    /// one side's clock (ours: `NotValidYet`/`Expired`; the peer's: a `certificate_expired`
    /// alert). Clocks that disagree by more than a day do that.
    pub fn is_about_dates(&self) -> bool {
        use rustls::{AlertDescription, CertificateError};
        matches!(
            self,
            TlsError::Handshake(
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet
                        | CertificateError::Expired
                        | CertificateError::NotValidYetContext { .. }
                        | CertificateError::ExpiredContext { .. }
                ) | rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
            )
        )
    }

    /// The peer's first bytes were not TLS records (an HTTP server, say): whatever listens
    /// there is not a letterlock server on protocol version 2.
    pub fn is_not_tls(&self) -> bool {
        matches!(
            self,
            TlsError::Handshake(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
        )
    }

    /// The peer closed or reset the connection during the handshake, with nothing wrong in
    /// what it sent ([`crate::wire::is_broken_connection`]).
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, TlsError::Io(e) if crate::wire::is_broken_connection(e.kind()))
    }

    /// The peer found a signature of ours bad (its `decrypt_error` alert, RFC 8446 §6.2): a
    /// handshake made with a private key that is not the public key's we presented.
    pub fn is_signature_refused(&self) -> bool {
        matches!(
            self,
            TlsError::Handshake(rustls::Error::AlertReceived(
                rustls::AlertDescription::DecryptError
            ))
        )
    }

    /// The server refused our key (its `access_denied` alert).
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self,
            TlsError::Handshake(rustls::Error::AlertReceived(
                rustls::AlertDescription::AccessDenied
            ))
        )
    }
}

/// What a finished handshake agreed on, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Always TLS 1.3.
    pub version: ProtocolVersion,
    /// The key exchange group: X25519MLKEM768 between letterlock peers.
    pub group: NamedGroup,
    /// The cipher suite.
    pub cipher_suite: CipherSuite,
    /// The peer's key id, from its certificate.
    pub peer: KeyId,
    /// Whether the peer signed the handshake with a delegated handshake key ([`delegated`])
    /// rather than with its letterlock key itself.
    pub delegated: bool,
}

impl Session {
    fn of(state: &CommonState) -> Result<Session, TlsError> {
        if state.alpn_protocol() != Some(ALPN) {
            return Err(TlsError::NoAlpn);
        }
        let incomplete = || {
            TlsError::Handshake(rustls::Error::General(
                "handshake finished without its parameters".into(),
            ))
        };
        let cert = state
            .peer_certificates()
            .and_then(<[CertificateDer<'_>]>::first)
            .ok_or_else(incomplete)?;
        let (peer, delegated) = pin::peer_of_cert(cert).ok_or_else(incomplete)?;
        Ok(Session {
            version: state.protocol_version().ok_or_else(incomplete)?,
            group: state
                .negotiated_key_exchange_group()
                .ok_or_else(incomplete)?
                .name(),
            cipher_suite: state
                .negotiated_cipher_suite()
                .ok_or_else(incomplete)?
                .suite(),
            peer,
            delegated,
        })
    }
}

/// aws-lc-rs, TLS 1.3 suites only, X25519MLKEM768 first.
fn crypto_provider(options: &TlsOptions) -> Arc<CryptoProvider> {
    let mut p = provider::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    p.kx_groups = if options.require_pq {
        vec![kx_group::X25519MLKEM768]
    } else {
        vec![kx_group::X25519MLKEM768, kx_group::X25519]
    };
    Arc::new(p)
}

/// Our certificate and the signer over our identity.
fn certified(identity: Arc<dyn Identity>) -> Result<Arc<CertifiedKey>, TlsError> {
    let der = cert::self_signed(identity.as_ref()).map_err(TlsError::Certificate)?;
    Ok(certified_with(identity, der))
}

fn certified_with(identity: Arc<dyn Identity>, cert_der: Vec<u8>) -> Arc<CertifiedKey> {
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert_der)],
        Arc::new(pin::IdentityKey(identity)),
    ))
}

/// The client's certificate, made on a thread of its own from the moment the configuration is
/// made, and waited for only when the server asks for it.
///
/// A letterlock server asks for a delegated handshake key ([`delegated`]); making one costs one
/// RSA signature (about 2 ms at 3072 bits on the machines we measure), which a one-shot
/// `send_msg` would pay in every process. So a client that keeps a [`HandshakeKeyCache`] takes
/// the key from there while it is fresh, and otherwise makes one beside the TCP connect and the
/// server's first flight (then keeps it in the cache, after handing it to the handshake). The
/// wait in [`ResolvesClientCert::resolve`] blocks the thread driving the handshake for at most
/// what is left of that one signature; the signer never waits on anything, and always settles
/// the key (to `None` if it fails or panics), so the wait always ends. A server that does not
/// ask for delegation (another implementation of the earlier profile) gets the RSA
/// certificate, made then (one more signature).
struct CertInBackground {
    identity: Arc<dyn Identity>,
    delegated: Arc<std::sync::OnceLock<Option<Arc<CertifiedKey>>>>,
    own: std::sync::OnceLock<Option<Arc<CertifiedKey>>>,
    /// The thread making (and keeping) the delegated key: joined when the configuration is
    /// dropped, so that a process that ends soon after its handshake still leaves the key in
    /// its cache (once a day: the rest of the time there is no thread).
    signer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CertInBackground {
    fn drop(&mut self) {
        if let Some(signer) = self.signer.take() {
            let _ = signer.join();
        }
    }
}

impl std::fmt::Debug for CertInBackground {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertInBackground({})", self.identity.public().id())
    }
}

/// Settles the delegated key to `None` if the thread making it ends without settling it.
struct SettleOnDrop(Arc<std::sync::OnceLock<Option<Arc<CertifiedKey>>>>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set(None);
    }
}

impl CertInBackground {
    fn start(identity: Arc<dyn Identity>, cache: Option<HandshakeKeyCache>) -> Self {
        let now = std::time::SystemTime::now();
        let cached = cache.as_ref().and_then(|c| c.load(identity.as_ref(), now));
        let delegated = Arc::new(std::sync::OnceLock::new());
        let mut signer = None;
        if let Some(key) = cached {
            let _ = delegated.set(Some(key));
        } else {
            let settle = SettleOnDrop(delegated.clone());
            let for_thread = identity.clone();
            let spawned = std::thread::Builder::new()
                .name("letterlock-cert".into())
                .spawn(move || make_delegated(for_thread.as_ref(), now, cache.as_ref(), &settle));
            match spawned {
                Ok(handle) => signer = Some(handle),
                // No thread to be had: `settle` was dropped with the closure, and the RSA
                // certificate is made when the server asks.
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a thread to make the TLS handshake key");
                }
            }
        }
        CertInBackground {
            identity,
            delegated,
            own: std::sync::OnceLock::new(),
            signer,
        }
    }

    /// The delegated handshake key, waiting for its signature if it is still being made; `None`
    /// when it could not be made.
    fn delegated(&self) -> Option<Arc<CertifiedKey>> {
        self.delegated.wait().clone()
    }

    /// The certificate of the letterlock key itself; `None` (and an error logged) when it
    /// could not be made, and then the server refuses the handshake.
    fn own(&self) -> Option<Arc<CertifiedKey>> {
        self.own
            .get_or_init(|| match certified(self.identity.clone()) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::error!(error = %e, "no client certificate to present");
                    None
                }
            })
            .clone()
    }
}

/// Makes a handshake key made at `now`, hands it to the handshake through `settle`, then keeps
/// it in `cache` (off the handshake's path: writing waits for the disk).
///
/// The key is kept as soon as it is made, before the server has accepted us, or even answered:
/// a client the server refuses, or one that finds no server, leaves the file too. That is on
/// purpose. The key is ours, certified by our own RSA key, and says nothing about any server:
/// it is as good for the next connection after a refusal (once the operator trusts us, the
/// usual first step) as after a success, and it gives a thief no more than the unprotected
/// private key file beside it (the only kind a cache is kept for). Keeping it only once a
/// handshake succeeded would cost more than it saves: this thread would wait for a verdict
/// that only `Client::connect_tls` knows (once the server's `Ready` came), through a channel
/// the configuration does not have; the write would move from beside the handshake to beside
/// the first message, which a short `send_msg` then waits for when its configuration is
/// dropped; and the next attempt after a refusal would pay the RSA signature again. Nothing
/// changes on the usual path either way: there, the key comes from the cache and no thread
/// runs.
fn make_delegated(
    identity: &dyn Identity,
    now: std::time::SystemTime,
    cache: Option<&HandshakeKeyCache>,
    settle: &SettleOnDrop,
) {
    let (from, until) = delegated::validity_from(now);
    let (key, cert) = match delegated::make_parts(identity, from, until) {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!(error = %e, "no delegated handshake key to present");
            return;
        }
    };
    let pkcs8 = cache.map(|_| key.to_pkcs8());
    let certified = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.clone())],
        Arc::new(key),
    ));
    let _ = settle.0.set(Some(certified));
    match (cache, pkcs8) {
        (Some(cache), Some(Ok(pkcs8))) => match cache.store(&pkcs8, &cert) {
            Ok(()) => tracing::debug!(file = %cache.path().display(), "kept the TLS handshake key"),
            Err(e) => tracing::debug!(error = %e, "cannot keep the TLS handshake key"),
        },
        (_, Some(Err(e))) => tracing::debug!(error = %e, "cannot keep the TLS handshake key"),
        _ => {}
    }
}

impl ResolvesClientCert for CertInBackground {
    /// The delegated handshake key when the server asks for it (its CertificateRequest names
    /// [`delegated::ca_hint`] and accepts [`delegated::SCHEME`]), else the RSA certificate.
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let hint = delegated::ca_hint();
        let asked = root_hint_subjects.contains(&hint.as_slice())
            && sigschemes.contains(&delegated::SCHEME);
        if asked && let Some(key) = self.delegated() {
            return Some(key);
        }
        self.own()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server's certificate, only for a ClientHello that offers ALPN: rustls refuses a list
/// without [`ALPN`] itself (`no_application_protocol`), but lets a ClientHello without the
/// extension through, so that one gets no certificate and fails the handshake here
/// (`access_denied`), before the server signs anything. A client that offers
/// [`delegated::ALPN_DELEGATION`] and accepts [`delegated::SCHEME`] gets the server's delegated
/// handshake key; any other gets the RSA certificate.
#[derive(Debug)]
struct AlpnGate {
    own: Arc<CertifiedKey>,
    delegation: Arc<delegated::Delegation>,
}

impl ResolvesServerCert for AlpnGate {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut offered = hello.alpn()?;
        let asked = offered.any(|p| p == delegated::ALPN_DELEGATION)
            && hello.signature_schemes().contains(&delegated::SCHEME);
        if asked && let Some(key) = self.delegation.current() {
            return Some(key);
        }
        Some(self.own.clone())
    }
}

/// The client's TLS configuration: present `identity`, accept only `server`.
pub fn client_config(
    identity: Arc<dyn Identity>,
    server: &PublicKey,
    options: &TlsOptions,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_cached(identity, server, options, None)
}

/// [`client_config`], taking the delegated handshake key from `cache` while it is fresh and
/// keeping a new one there ([`HandshakeKeyCache`]).
pub fn client_config_cached(
    identity: Arc<dyn Identity>,
    server: &PublicKey,
    options: &TlsOptions,
    cache: Option<HandshakeKeyCache>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider(options))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pin::PinnedServer {
            pinned: server.clone(),
        }))
        .with_client_cert_resolver(Arc::new(CertInBackground::start(identity, cache)));
    config.alpn_protocols = vec![ALPN.to_vec(), delegated::ALPN_DELEGATION.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    // The server is named by its key, not by a host name: no SNI.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The server's side of the profile, made once: its certificate and its delegated handshake
/// key (a signature each, at start) and the provider. A [`rustls::ServerConfig`] is then made from it for each trust list
/// ([`ServerTls::config`]), which is cheap: the server builds one whenever its trusted clients
/// change, so the verifier of every handshake holds the list that handshake is judged by.
#[derive(Debug)]
pub struct ServerTls {
    /// The server's certificate over its identity, and its handshake keys, behind the ALPN gate.
    cert: Arc<CertifiedKey>,
    delegation: Arc<delegated::Delegation>,
    /// aws-lc-rs with our suites and groups ([`TlsOptions`]).
    provider: Arc<CryptoProvider>,
}

impl ServerTls {
    /// Makes the server's certificate and first handshake key for `identity` (two signatures).
    pub fn new(identity: Arc<dyn Identity>, options: &TlsOptions) -> Result<Self, TlsError> {
        Ok(ServerTls {
            cert: certified(identity.clone())?,
            delegation: Arc::new(delegated::Delegation::new(identity)?),
            provider: crypto_provider(options),
        })
    }

    /// The configuration that accepts exactly the keys of `clients`.
    pub fn config(&self, clients: Arc<TrustList>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.config_verifying(pin::TrustedClients::new(clients))
    }

    fn config_verifying(
        &self,
        verifier: pin::TrustedClients,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(AlpnGate {
                own: self.cert.clone(),
                delegation: self.delegation.clone(),
            }));
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No tickets: no resumption (every connection is a full handshake), nothing to steal.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(config))
    }
}

/// The server's TLS configuration: present `identity`, accept exactly the keys of `clients`.
pub fn server_config(
    identity: Arc<dyn Identity>,
    clients: Arc<TrustList>,
    options: &TlsOptions,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    ServerTls::new(identity, options)?.config(clients)
}

/// The client's handshake over `io`, within `timeout`. On success the stream is protected and
/// the server proved it holds the pinned key. Under TLS 1.3 the client finishes before the
/// server has checked the client's key: a refusal arrives as an alert on the first read.
pub async fn connect<IO>(
    config: Arc<rustls::ClientConfig>,
    io: IO,
    timeout: Duration,
) -> Result<(client::TlsStream<IO>, Session), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // No SNI is sent; rustls still wants a name, which the pinning verifier ignores.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let stream = tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, io))
        .await
        .map_err(|_| TlsError::Timeout)?
        .map_err(TlsError::from_io)?;
    let session = Session::of(stream.get_ref().1)?;
    Ok((stream, session))
}

/// The server's handshake over `io`, within `timeout`. Returns the protected stream and the
/// trusted client that proved its key in the handshake.
pub async fn accept<IO>(
    config: Arc<rustls::ServerConfig>,
    clients: &TrustList,
    io: IO,
    timeout: Duration,
) -> Result<(server::TlsStream<IO>, Session, Trusted), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(io))
        .await
        .map_err(|_| TlsError::Timeout)?
        .map_err(TlsError::from_io)?;
    let session = Session::of(stream.get_ref().1)?;
    let client = clients
        .get(&session.peer)
        .cloned()
        .ok_or(TlsError::UnknownClient(session.peer))?;
    Ok((stream, session, client))
}

/// [`accept`] with a gate before the server's first signature: reads the whole ClientHello
/// (no cryptography yet), waits for `gate` (the server's handshake permit, and the trust list
/// of this handshake with the configuration made from it), then runs the rest of the handshake
/// holding what the gate gave, and checks the client against that same list. All within
/// `timeout`. A gate that fails ends the handshake with its error.
pub async fn accept_gated<IO, G, H>(
    io: IO,
    timeout: Duration,
    gate: G,
) -> Result<(server::TlsStream<IO>, Session, Trusted), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    G: Future<Output = Result<(H, Arc<rustls::ServerConfig>, Arc<TrustList>), TlsError>>,
{
    let handshake = async {
        let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(TlsError::from_io)?;
        let (_held, config, clients) = gate.await?;
        let stream = hello.into_stream(config).await.map_err(TlsError::from_io)?;
        Ok::<_, TlsError>((stream, clients))
    };
    let (stream, clients) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| TlsError::Timeout)??;
    let session = Session::of(stream.get_ref().1)?;
    let client = clients
        .get(&session.peer)
        .cloned()
        .ok_or(TlsError::UnknownClient(session.peer))?;
    Ok((stream, session, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that hangs up during the handshake is "gone" (logged at debug by the server);
    /// one that sent something that is not TLS, or a failed check, is not.
    #[test]
    fn a_peer_that_hangs_up_is_told_from_one_that_fails_the_handshake() {
        for kind in [
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
        ] {
            assert!(TlsError::Io(kind.into()).is_peer_gone(), "{kind:?}");
        }
        assert!(!TlsError::Io(io::ErrorKind::PermissionDenied.into()).is_peer_gone());
        let not_tls = TlsError::Handshake(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert!(!not_tls.is_peer_gone() && not_tls.is_not_tls());
        assert!(!TlsError::Timeout.is_peer_gone());
        assert!(!TlsError::Handshake(rustls::Error::DecryptError).is_peer_gone());
    }
    use crate::keys::PrivateKey;
    use rustls::sign::SingleCertAndKey;

    /// Generous: only a deadlock would reach it.
    const T: Duration = Duration::from_secs(30);

    /// A different fixed test key (tests/keys) at each call on this test's thread: generating
    /// RSA keys in a debug build takes seconds. Five are enough for any test here.
    fn key() -> Arc<PrivateKey> {
        const KEYS: [&str; 5] = [
            include_str!("../../../tests/keys/alice2048_private.pem"),
            include_str!("../../../tests/keys/bob2048_private.pem"),
            include_str!("../../../tests/keys/mallory_private.pem"),
            include_str!("../../../tests/keys/alice3072_private.pem"),
            include_str!("../../../tests/keys/bob3072_private.pem"),
        ];
        thread_local! {
            static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        let i = NEXT.with(|n| n.replace(n.get() + 1));
        let pem = KEYS.get(i).expect("a test here uses at most five keys");
        Arc::new(PrivateKey::from_pem(pem).unwrap())
    }

    fn trust(keys: &[&Arc<PrivateKey>]) -> Arc<TrustList> {
        let mut t = TrustList::new();
        for (i, k) in keys.iter().enumerate() {
            t.add(&format!("c{i}"), k.public().clone()).unwrap();
        }
        Arc::new(t)
    }

    /// Our client configuration, presenting `key` instead of the key it would make.
    fn presenting(
        c: &Arc<PrivateKey>,
        server: &PublicKey,
        key: Arc<CertifiedKey>,
    ) -> rustls::ClientConfig {
        let mut cc = (*client_config(c.clone(), server, &TlsOptions::default()).unwrap()).clone();
        cc.client_auth_cert_resolver = Arc::new(SingleCertAndKey::from(key));
        cc
    }

    type Outcome = (
        Result<Session, TlsError>,
        Result<(Session, Trusted), TlsError>,
    );

    /// Runs both handshakes over an in-memory pipe; the client then reads once, so a refusal
    /// the server sends after the client's Finished reaches it.
    async fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        clients: Arc<TrustList>,
    ) -> Outcome {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            match accept(server, &clients, s, T).await {
                Ok((mut stream, session, who)) => {
                    stream.write_all(b"ok").await.unwrap();
                    stream.flush().await.unwrap();
                    Ok((session, who))
                }
                Err(e) => Err(e),
            }
        };
        let client_side = async move {
            let (mut stream, session) = connect(client, c, T).await?;
            let mut two = [0u8; 2];
            stream
                .read_exact(&mut two)
                .await
                .map_err(TlsError::from_io)?;
            assert_eq!(&two, b"ok");
            Ok(session)
        };
        tokio::join!(client_side, server_side)
    }

    /// Multi-threaded, as the server runs: handshake signatures go through `block_in_place`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pinned_keys_agree_on_tls13_x25519mlkem768_and_the_server_learns_the_client() {
        let (s, c) = (key(), key());
        let clients = trust(&[&key(), &c]);
        let o = TlsOptions::default();
        let cc = client_config(c.clone(), s.public(), &o).unwrap();
        let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
        let (client, server) = handshake(cc, sc, clients).await;
        let client = client.unwrap();
        let (server, who) = server.unwrap();
        for session in [&client, &server] {
            assert_eq!(session.version, ProtocolVersion::TLSv1_3);
            assert_eq!(session.group, NamedGroup::X25519MLKEM768);
        }
        assert_eq!(client.peer, s.public().id());
        assert_eq!(server.peer, c.public().id());
        assert_eq!(who.name, "c1");
    }

    /// A client key that cannot sign (a broken token, say).
    struct CannotSign(Arc<PrivateKey>);

    impl Identity for CannotSign {
        fn public(&self) -> &PublicKey {
            self.0.public()
        }
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, KeyError> {
            Err(KeyError::Crypto)
        }
        fn decrypt_oaep(
            &self,
            _: &[u8],
            _: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
            Err(KeyError::Crypto)
        }
    }

    /// The client's certificate is made on a thread of its own ([`CertInBackground`]); when
    /// it cannot be made, the handshake fails on both sides instead of waiting or panicking.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_certificate_that_cannot_be_made_fails_the_handshake() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        let cc = client_config(Arc::new(CannotSign(c)), s.public(), &o).unwrap();
        let sc = server_config(s, clients.clone(), &o).unwrap();
        let (client, server) = tokio::time::timeout(T, handshake(cc, sc, clients))
            .await
            .expect("the handshake ended");
        assert!(client.is_err(), "{client:?}");
        assert!(server.is_err(), "{server:?}");
    }

    #[tokio::test]
    async fn an_untrusted_client_key_is_refused_with_access_denied() {
        let (s, c) = (key(), key());
        let clients = trust(&[&key()]);
        let o = TlsOptions::default();
        let cc = client_config(c, s.public(), &o).unwrap();
        let sc = server_config(s, clients.clone(), &o).unwrap();
        let (client, server) = handshake(cc, sc, clients).await;
        let client = client.unwrap_err();
        assert!(client.is_access_denied(), "{client:?}");
        assert!(
            matches!(
                server,
                Err(TlsError::Handshake(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                )))
            ),
            "{server:?}"
        );
    }

    #[tokio::test]
    async fn a_server_with_another_key_is_refused_by_the_client() {
        let (s, pinned, c) = (key(), key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        let cc = client_config(c, pinned.public(), &o).unwrap();
        let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
        let (client, server) = handshake(cc, sc, clients).await;
        match client {
            Err(TlsError::WrongServer { got, expected }) => {
                assert_eq!(got, s.public().id());
                assert_eq!(expected, pinned.public().id());
            }
            other => panic!("expected WrongServer, got {other:?}"),
        }
        assert!(server.is_err());
    }

    #[tokio::test]
    async fn a_client_without_our_alpn_fails_the_handshake() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
        for alpn in [vec![], vec![b"letterlock/1".to_vec()], vec![b"h2".to_vec()]] {
            let mut cc = (*client_config(c.clone(), s.public(), &o).unwrap()).clone();
            cc.alpn_protocols = alpn.clone();
            let (client, server) = handshake(Arc::new(cc), sc.clone(), clients.clone()).await;
            // Refused inside the handshake (an alert), not after it: the server never signs
            // for a peer that does not speak letterlock/2.
            assert!(
                matches!(
                    client,
                    Err(TlsError::Handshake(rustls::Error::AlertReceived(_)))
                ),
                "ALPN {alpn:?}: {client:?}"
            );
            assert!(
                matches!(server, Err(TlsError::Handshake(_))),
                "ALPN {alpn:?}: {server:?}"
            );
        }
    }

    /// A client whose stack has only X25519 (no ML-KEM), as OpenSSL before 3.5.
    fn classical_client(c: Arc<PrivateKey>, server: &PublicKey) -> Arc<rustls::ClientConfig> {
        let mut p = provider::default_provider();
        p.kx_groups = vec![kx_group::X25519];
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin::PinnedServer {
                pinned: server.clone(),
            }))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified(c).unwrap())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(config)
    }

    #[tokio::test]
    async fn a_classical_client_falls_back_to_x25519_unless_the_server_requires_pq() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let cc = classical_client(c.clone(), s.public());
        let sc = server_config(s.clone(), clients.clone(), &TlsOptions::default()).unwrap();
        let (client, server) = handshake(cc.clone(), sc, clients.clone()).await;
        assert_eq!(client.unwrap().group, NamedGroup::X25519);
        assert_eq!(server.unwrap().0.group, NamedGroup::X25519);

        let strict = TlsOptions { require_pq: true };
        let sc = server_config(s.clone(), clients.clone(), &strict).unwrap();
        let (client, server) = handshake(cc, sc.clone(), clients.clone()).await;
        assert!(client.is_err(), "{client:?}");
        assert!(server.is_err(), "{server:?}");

        // Our own client still gets through a strict server, post-quantum.
        let cc = client_config(c, s.public(), &strict).unwrap();
        let (client, _) = handshake(cc, sc, clients).await;
        assert_eq!(client.unwrap().group, NamedGroup::X25519MLKEM768);
    }

    #[tokio::test]
    async fn certificates_long_expired_or_not_yet_valid_still_pin_their_keys() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        // Valid 2000-01-01 to 2001-01-01 only: long expired.
        let expired = |k: &Arc<PrivateKey>| {
            let der =
                cert::with_validity(k.as_ref(), b"000101000000Z", b"20010101000000Z").unwrap();
            assert!(der.windows(15).any(|w| w == b"20010101000000Z"));
            certified_with(k.clone(), der)
        };
        // Valid from 2049-12-31 on (UTCTime's last year): not yet valid.
        let future = |k: &Arc<PrivateKey>| {
            let der =
                cert::with_validity(k.as_ref(), b"491231000000Z", b"99991231235959Z").unwrap();
            assert!(der.windows(13).any(|w| w == b"491231000000Z"));
            certified_with(k.clone(), der)
        };
        for (server_cert, client_cert) in [(expired(&s), expired(&c)), (future(&s), future(&c))] {
            let cc = presenting(&c, s.public(), client_cert);
            let mut sc = (*server_config(s.clone(), clients.clone(), &o).unwrap()).clone();
            sc.cert_resolver = Arc::new(SingleCertAndKey::from(server_cert));
            let (client, server) = handshake(Arc::new(cc), Arc::new(sc), clients.clone()).await;
            assert_eq!(client.unwrap().peer, s.public().id());
            assert_eq!(server.unwrap().0.peer, c.public().id());
        }
    }

    /// An identity that counts its RSA signatures.
    struct Counting {
        key: Arc<PrivateKey>,
        signs: std::sync::atomic::AtomicUsize,
    }

    impl Counting {
        fn new(key: &Arc<PrivateKey>) -> Arc<Self> {
            Arc::new(Counting {
                key: key.clone(),
                signs: 0.into(),
            })
        }

        fn signs(&self) -> usize {
            self.signs.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Identity for Counting {
        fn public(&self) -> &PublicKey {
            self.key.public()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
            self.signs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.key.sign(message)
        }
        fn decrypt_oaep(
            &self,
            ciphertext: &[u8],
            label: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
            self.key.decrypt_oaep(ciphertext, label)
        }
    }

    #[tokio::test]
    async fn letterlock_peers_sign_handshakes_with_delegated_keys_not_rsa() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let (server_id, client_id) = (Counting::new(&s), Counting::new(&c));
        let server = ServerTls::new(server_id.clone(), &TlsOptions::default()).unwrap();
        // At start: the RSA certificate and the first handshake key.
        assert_eq!(server_id.signs(), 2);
        let sc = server.config(clients.clone()).unwrap();
        for round in 1..=3 {
            let cc = client_config(client_id.clone(), s.public(), &TlsOptions::default()).unwrap();
            let (client, server) = handshake(cc, sc.clone(), clients.clone()).await;
            let (client, (server, who)) = (client.unwrap(), server.unwrap());
            assert!(
                client.delegated && server.delegated,
                "{client:?} {server:?}"
            );
            assert_eq!(client.peer, s.public().id());
            assert_eq!(server.peer, c.public().id());
            assert_eq!(who.key, *c.public());
            // Each client configuration certifies one handshake key; the handshakes
            // themselves cost neither key an RSA signature.
            assert_eq!(client_id.signs(), round);
            assert_eq!(server_id.signs(), 2);
        }
    }

    #[tokio::test]
    async fn peers_that_do_not_ask_for_delegation_get_and_send_the_rsa_certificate() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        // A client offering `letterlock/2` only, with its RSA certificate (OpenSSL, Python).
        let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
        let (client, server) =
            handshake(classical_client(c.clone(), s.public()), sc, clients.clone()).await;
        let (client, (server, _)) = (client.unwrap(), server.unwrap());
        assert!(!client.delegated && !server.delegated);
        assert_eq!(
            (client.peer, server.peer),
            (s.public().id(), c.public().id())
        );

        // A server that does not name the hint (the earlier profile) gets our client's RSA
        // certificate, and still delegates its own handshake key to a client that asks.
        let sc = ServerTls::new(s.clone(), &o)
            .unwrap()
            .config_verifying(pin::TrustedClients::without_hint(clients.clone()))
            .unwrap();
        let cc = client_config(c.clone(), s.public(), &o).unwrap();
        let (client, server) = handshake(cc, sc, clients.clone()).await;
        let (client, (server, _)) = (client.unwrap(), server.unwrap());
        assert!(
            client.delegated,
            "the server's key is delegated: {client:?}"
        );
        assert!(
            !server.delegated,
            "the client's RSA certificate: {server:?}"
        );
        assert_eq!(
            (client.peer, server.peer),
            (s.public().id(), c.public().id())
        );
    }

    /// Claims one key, signs with another: a forger's delegation.
    struct Impostor {
        claims: PublicKey,
        signs_with: Arc<PrivateKey>,
    }

    impl Identity for Impostor {
        fn public(&self) -> &PublicKey {
            &self.claims
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
            self.signs_with.sign(message)
        }
        fn decrypt_oaep(
            &self,
            ciphertext: &[u8],
            label: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
            self.signs_with.decrypt_oaep(ciphertext, label)
        }
    }

    /// Unix seconds `offset` from now (negative: in the past).
    fn at(offset_hours: i64) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Duration::from_secs(now.checked_add_signed(offset_hours * 3600).unwrap())
    }

    /// Handshake keys a peer must refuse, each with the rustls error it is refused with.
    fn bad_delegations(
        of: &Arc<PrivateKey>,
    ) -> Vec<(&'static str, Arc<CertifiedKey>, rustls::Error)> {
        use rustls::CertificateError as E;
        let mallory = key();
        let forger = Impostor {
            claims: of.public().clone(),
            signs_with: mallory,
        };
        let k = of.as_ref();
        vec![
            (
                "signed by another key",
                delegated::make_valid(&forger, at(-1), at(24)).unwrap(),
                rustls::Error::InvalidCertificate(E::BadSignature),
            ),
            (
                "expired",
                delegated::make_valid(k, at(-72), at(-1)).unwrap(),
                rustls::Error::InvalidCertificate(E::Expired),
            ),
            (
                "not yet valid",
                delegated::make_valid(k, at(2), at(48)).unwrap(),
                rustls::Error::InvalidCertificate(E::NotValidYet),
            ),
            (
                "valid for 8 days",
                delegated::make_valid(k, at(-1), at(8 * 24 - 1)).unwrap(),
                rustls::Error::InvalidCertificate(E::Expired),
            ),
        ]
    }

    /// The error a failed handshake carries.
    fn kind(e: &TlsError) -> rustls::Error {
        match e {
            TlsError::Handshake(e) => e.clone(),
            other => panic!("not a handshake error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn forged_expired_early_or_long_lived_handshake_keys_are_refused_by_both_sides() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        // The server judges a client's.
        for (what, bad, expected) in bad_delegations(&c) {
            let cc = presenting(&c, s.public(), bad);
            let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
            let (client, server) = handshake(Arc::new(cc), sc, clients.clone()).await;
            assert!(client.is_err(), "{what}: the client heard of it");
            assert_eq!(kind(&server.unwrap_err()), expected, "{what}");
        }
        // The client judges the server's.
        for (what, bad, expected) in bad_delegations(&s) {
            let cc = client_config(c.clone(), s.public(), &o).unwrap();
            let mut sc = (*server_config(s.clone(), clients.clone(), &o).unwrap()).clone();
            sc.cert_resolver = Arc::new(SingleCertAndKey::from(bad));
            let (client, server) = handshake(cc, Arc::new(sc), clients.clone()).await;
            assert!(server.is_err(), "{what}");
            assert_eq!(kind(&client.unwrap_err()), expected, "{what}");
        }
    }

    #[tokio::test]
    async fn a_handshake_key_of_a_key_not_pinned_or_trusted_is_refused_by_its_delegator() {
        let (s, c, other) = (key(), key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        // A client delegating from a key the server does not trust: access_denied.
        let cc = client_config(other.clone(), s.public(), &o).unwrap();
        let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
        let (client, _) = handshake(cc, sc.clone(), clients.clone()).await;
        assert!(client.unwrap_err().is_access_denied());
        // A server delegating from another key than the pinned one: named as such.
        let cc = client_config(c.clone(), other.public(), &o).unwrap();
        let (client, _) = handshake(cc, sc, clients.clone()).await;
        match client.unwrap_err() {
            TlsError::WrongServer { got, expected } => {
                assert_eq!((got, expected), (s.public().id(), other.public().id()));
            }
            e => panic!("{e:?}"),
        }
    }

    /// A client that keeps a handshake key cache in `dir`, counting its RSA signatures.
    fn cached_client(
        dir: &std::path::Path,
        c: &Arc<Counting>,
        server: &PublicKey,
    ) -> Arc<rustls::ClientConfig> {
        let cache = HandshakeKeyCache::new(dir.join("client_handshake.pem"));
        client_config_cached(c.clone(), server, &TlsOptions::default(), Some(cache)).unwrap()
    }

    /// Waits until the background thread has written the cache (it writes after handing the
    /// key to the handshake): a whole file, other than `before`.
    async fn written_over(path: &std::path::Path, before: &[u8]) -> Vec<u8> {
        for _ in 0..500 {
            if let Ok(bytes) = std::fs::read(path)
                && bytes.ends_with(b"-----END CERTIFICATE-----\n")
                && bytes != before
            {
                return bytes;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} was never written", path.display());
    }

    async fn written(path: &std::path::Path) -> Vec<u8> {
        written_over(path, b"").await
    }

    #[tokio::test]
    async fn a_kept_handshake_key_saves_the_next_client_its_rsa_signature() {
        use std::os::unix::fs::PermissionsExt;
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let sc = server_config(s.clone(), clients.clone(), &TlsOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client_handshake.pem");
        let counting = Counting::new(&c);
        let (client, server) = handshake(
            cached_client(dir.path(), &counting, s.public()),
            sc.clone(),
            clients.clone(),
        )
        .await;
        assert!(client.unwrap().delegated && server.unwrap().0.delegated);
        assert_eq!(counting.signs(), 1);
        let text = String::from_utf8(written(&path).await).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The next clients take it from there: no RSA signature, and the server still sees
        // the same client.
        for _ in 0..2 {
            let (client, server) = handshake(
                cached_client(dir.path(), &counting, s.public()),
                sc.clone(),
                clients.clone(),
            )
            .await;
            let (client, (server, _)) = (client.unwrap(), server.unwrap());
            assert!(client.delegated && server.delegated);
            assert_eq!(server.peer, c.public().id());
            assert_eq!(counting.signs(), 1);
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "kept as it was"
        );
    }

    /// `is_fresh_for` (the command line's check before it reads its private key lazily) hands
    /// what it found to the load right after it, once, for the same key, soon after.
    #[tokio::test]
    async fn a_check_of_the_cache_serves_the_load_right_after_it_once() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let sc = server_config(s.clone(), clients.clone(), &TlsOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client_handshake.pem");
        let counting = Counting::new(&c);
        let _ = handshake(
            cached_client(dir.path(), &counting, s.public()),
            sc,
            clients,
        )
        .await;
        let kept = written(&path).await;
        let cache = HandshakeKeyCache::new(&path);
        // The file again, owner-only as the cache wants it.
        let put_back = || {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, &kept).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let now = std::time::SystemTime::now;
        // Checked, then the file gone: the next load still has the key, the one after not.
        assert!(cache.is_fresh_for(c.public()));
        std::fs::remove_file(&path).unwrap();
        assert!(cache.load(c.as_ref(), now()).is_some());
        assert!(cache.load(c.as_ref(), now()).is_none(), "taken once");
        // Nothing for another key, or long after the check.
        put_back();
        assert!(cache.is_fresh_for(c.public()));
        std::fs::remove_file(&path).unwrap();
        assert!(
            cache.load(s.as_ref(), now()).is_none(),
            "another key's check"
        );
        put_back();
        assert!(cache.is_fresh_for(c.public()));
        std::fs::remove_file(&path).unwrap();
        let later = now() + Duration::from_secs(60);
        assert!(
            cache.load(c.as_ref(), later).is_none(),
            "a check a minute old"
        );
        // A check that found nothing is handed on as nothing.
        assert!(!cache.is_fresh_for(c.public()));
        put_back();
        assert!(cache.load(c.as_ref(), now()).is_none());
        assert!(cache.load(c.as_ref(), now()).is_some(), "read again");
    }

    #[tokio::test]
    async fn a_cache_that_is_not_this_keys_fresh_private_one_is_replaced_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let (s, c, other) = (key(), key(), key());
        let clients = trust(&[&c, &other]);
        let sc = server_config(s.clone(), clients.clone(), &TlsOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client_handshake.pem");
        // Another key's cache, then the right key's cache made 2 days ago (still valid, but
        // too old to hand to peers), then a good one readable by others, then garbage.
        let other_counting = Counting::new(&other);
        let _ = handshake(
            cached_client(dir.path(), &other_counting, s.public()),
            sc.clone(),
            clients.clone(),
        )
        .await;
        let others = written(&path).await;
        let old = {
            let (from, until) = delegated::validity_from(
                std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600),
            );
            let (k, cert) = delegated::make_parts(c.as_ref(), from, until).unwrap();
            let mut text = crate::keys::encode_pem("PRIVATE KEY", &k.to_pkcs8().unwrap());
            text.push_str(&crate::keys::encode_pem("CERTIFICATE", &cert));
            text.into_bytes()
        };
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            ("another key's", others, 0o600),
            ("made two days ago", old, 0o600),
            (
                "garbage",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n".to_vec(),
                0o600,
            ),
        ];
        for (what, bytes, mode) in cases {
            std::fs::write(&path, &bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let counting = Counting::new(&c);
            let (client, server) = handshake(
                cached_client(dir.path(), &counting, s.public()),
                sc.clone(),
                clients.clone(),
            )
            .await;
            assert!(client.unwrap().delegated, "{what}");
            assert_eq!(server.unwrap().0.peer, c.public().id(), "{what}");
            assert_eq!(counting.signs(), 1, "{what}: a new key was made");
            // Replaced by the new key (the wait fails if it never is).
            let replaced = written_over(&path, &bytes).await;
            assert!(
                replaced.starts_with(b"-----BEGIN PRIVATE KEY-----\n"),
                "{what}"
            );
        }
        // A good cache that group or others can read is not trusted either.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let counting = Counting::new(&c);
        let (client, _) = handshake(
            cached_client(dir.path(), &counting, s.public()),
            sc.clone(),
            clients.clone(),
        )
        .await;
        assert!(client.unwrap().delegated);
        assert_eq!(counting.signs(), 1, "a readable cache is not used");
    }

    /// A clock `offset_hours` away from the real one.
    #[derive(Debug)]
    struct Skewed(i64);

    impl rustls::time_provider::TimeProvider for Skewed {
        fn current_time(&self) -> Option<UnixTime> {
            Some(UnixTime::since_unix_epoch(at(self.0)))
        }
    }

    /// A client whose clock reads `skew_hours` off: its clock, and the handshake key it makes
    /// with that clock.
    fn skewed_client(
        c: &Arc<PrivateKey>,
        server: &PublicKey,
        skew_hours: i64,
    ) -> Arc<rustls::ClientConfig> {
        let made = std::time::UNIX_EPOCH + at(skew_hours);
        let mut cc = presenting(c, server, delegated::make(c.as_ref(), made).unwrap());
        cc.time_provider = Arc::new(Skewed(skew_hours));
        Arc::new(cc)
    }

    /// PROTOCOL.md and SECURITY.md: clocks up to a day apart still connect (the validity of a
    /// handshake key starts a day before it is made); further apart, the handshake fails with
    /// an error about dates (review-dk found the window first documented wrongly).
    #[tokio::test]
    async fn clocks_within_a_day_of_each_other_connect_and_further_apart_do_not() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let sc = server_config(s.clone(), clients.clone(), &TlsOptions::default()).unwrap();
        for skew in [-20, 20] {
            let (client, server) = handshake(
                skewed_client(&c, s.public(), skew),
                sc.clone(),
                clients.clone(),
            )
            .await;
            assert!(client.unwrap().delegated, "{skew} h");
            assert_eq!(server.unwrap().0.peer, c.public().id(), "{skew} h");
        }
        // 30 h behind: the client finds the server's key not yet valid; 30 h ahead: the server
        // finds the client's key not yet valid.
        let (client, _) = handshake(
            skewed_client(&c, s.public(), -30),
            sc.clone(),
            clients.clone(),
        )
        .await;
        assert_eq!(
            kind(&client.unwrap_err()),
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
        );
        let (_, server) = handshake(
            skewed_client(&c, s.public(), 30),
            sc.clone(),
            clients.clone(),
        )
        .await;
        assert_eq!(
            kind(&server.unwrap_err()),
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
        );
    }

    /// A server's handshake key is replaced on a thread once a day old, handshakes meanwhile
    /// getting the one in hand; one past its validity is not presented (the RSA certificate
    /// is); a refresh that fails is tried again only after a minute.
    #[tokio::test]
    async fn a_server_replaces_its_handshake_key_once_a_day_without_making_a_handshake_wait() {
        use std::time::SystemTime;
        let s = key();
        let counting = Counting::new(&s);
        let delegation = delegated::Delegation::new(counting.clone()).unwrap();
        let start = SystemTime::now();
        let first = delegation.current_at(start).unwrap();
        assert_eq!(counting.signs(), 1);
        // Two days on: the old key is still valid and presented at once, and a new one is made.
        let later = start + Duration::from_secs(2 * 24 * 3600);
        let during = delegation.current_at(later).unwrap();
        assert!(Arc::ptr_eq(&during, &first));
        let mut fresh = None;
        for _ in 0..500 {
            let now = delegation.current_at(later).unwrap();
            if !Arc::ptr_eq(&now, &first) {
                fresh = Some(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fresh.is_some(), "never replaced");
        assert_eq!(counting.signs(), 2, "one refresh, not one per call");

        // A server whose key can no longer sign: past its key's validity it presents none, and
        // does not try again every handshake.
        let broken = Arc::new(CannotSign(s.clone()));
        let stuck = delegated::Delegation::new(counting.clone()).unwrap();
        let swapped = delegated::Delegation::new_for_test(broken, &stuck);
        let past = start + Duration::from_secs(8 * 24 * 3600);
        assert!(swapped.current_at(past).is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(swapped.current_at(past + Duration::from_secs(30)).is_none());
        assert!(!swapped.refreshing(), "the failed refresh is over");
        assert_eq!(
            swapped.tried(),
            Some(past),
            "not tried again within a minute"
        );
    }

    /// review-dk: PROTOCOL.md section 13, "Checking one", step 5: a validity longer than 7 days
    /// is refused with `certificate_expired` (45).
    #[tokio::test]
    async fn a_handshake_key_valid_too_long_is_refused_with_certificate_expired() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        let too_long = delegated::make_valid(c.as_ref(), at(-1), at(7 * 24)).unwrap();
        let cc = presenting(&c, s.public(), too_long);
        let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
        let (client, _) = handshake(Arc::new(cc), sc, clients).await;
        assert!(
            matches!(
                client,
                Err(TlsError::Handshake(rustls::Error::AlertReceived(
                    rustls::AlertDescription::CertificateExpired
                )))
            ),
            "{client:?}"
        );
    }

    /// review-dk: a certificate signed for with the other kind of key is refused both ways: the
    /// RSA certificate with an ECDSA CertificateVerify (by a handshake key the RSA key did
    /// certify), and a delegated certificate with an RSA-PSS CertificateVerify by the RSA key.
    #[tokio::test]
    async fn a_certificate_verify_by_the_other_kind_of_key_is_refused() {
        let (s, c) = (key(), key());
        let clients = trust(&[&c]);
        let o = TlsOptions::default();
        let mixes = |k: &Arc<PrivateKey>| {
            let delegated = delegated::make(k.as_ref(), std::time::SystemTime::now()).unwrap();
            let own = certified(k.clone()).unwrap();
            [
                (
                    "RSA certificate, ECDSA signature",
                    CertifiedKey::new(own.cert.clone(), delegated.key.clone()),
                ),
                (
                    "delegated certificate, RSA-PSS signature",
                    CertifiedKey::new(delegated.cert.clone(), own.key.clone()),
                ),
            ]
        };
        for (what, mixed) in mixes(&s) {
            let cc = client_config(c.clone(), s.public(), &o).unwrap();
            let mut sc = (*server_config(s.clone(), clients.clone(), &o).unwrap()).clone();
            sc.cert_resolver = Arc::new(SingleCertAndKey::from(Arc::new(mixed)));
            let (client, server) = handshake(cc, Arc::new(sc), clients.clone()).await;
            assert!(server.is_err(), "server's {what}");
            assert!(
                matches!(
                    client,
                    Err(TlsError::Handshake(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::BadSignature
                            | rustls::CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }
                    )))
                ),
                "server's {what}: {client:?}"
            );
        }
        for (what, mixed) in mixes(&c) {
            let cc = presenting(&c, s.public(), Arc::new(mixed));
            let sc = server_config(s.clone(), clients.clone(), &o).unwrap();
            let (client, server) = handshake(Arc::new(cc), sc, clients.clone()).await;
            assert!(client.is_err(), "client's {what}");
            assert!(
                matches!(
                    server,
                    Err(TlsError::Handshake(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::BadSignature
                            | rustls::CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }
                    )))
                ),
                "client's {what}: {server:?}"
            );
        }
    }
}
