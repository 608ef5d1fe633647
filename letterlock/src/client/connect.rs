//! Connecting: TCP, then version 1's handshake or TLS 1.3 (version 2); telling a busy server
//! from a refusal, and retrying a busy one with jittered backoff within a deadline.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::envelope::SealError;
use crate::keys::{Identity, KeyId, PublicKey};
use crate::tls::{self, TlsError, TlsOptions};
use crate::wire::handshake;
use crate::wire::{ErrorCode, Frame, FrameReader, FrameWriter};

use super::deadline::WriteDeadline;
use super::{Client, ClientConfig, ClientError, ReadHalf, WriteHalf, unexpected};

/// A TCP connection to `addr` within the timeout, with Nagle off (frames are written whole).
async fn tcp_connect(addr: &str, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(config.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_owned(),
            after: config.timeout,
        })?
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Which wire a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Protocol version 2: TLS 1.3 underneath the frames ([`Client::connect_tls`]).
    Tls(TlsOptions),
    /// The plain version 1 wire ([`Client::connect`]): only the messages are protected, so a
    /// network attacker can read frame types and sizes, replay, and fake deliveries. Kept to
    /// show message-level protection on a bare wire.
    PlainV1,
}

/// How a client waits between attempts while the server is busy: exponential, with jitter so
/// that clients turned away together do not come back together, within a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first busy answer, before jitter.
    pub first: Duration,
    /// The longest wait between two attempts, before jitter: long enough to let a full server
    /// drain, short enough that a freed slot is found within a couple of seconds.
    pub max: Duration,
    /// No attempt starts later than this after the first one.
    pub deadline: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        }
    }
}

/// One scheduled retry, as [`Client::connect_retrying`] and [`Client::send_retrying`] report
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The attempt about to be made (2 for the first retry).
    pub attempt: u32,
    /// How long the client waits before making it.
    pub wait: Duration,
    /// What is tried again, and why.
    pub cause: RetryCause,
}

/// Why a client tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryCause {
    /// The server turned the connection away as busy ([`ClientError::Busy`]); the connection
    /// is tried again.
    Busy,
    /// The server answered a send `Unavailable` after the handshake (its mailbox database
    /// could not be reached, or this client's asymmetric-mode budget is spent): nothing was
    /// acked, and the message `id` is sent again, byte for byte, on a new connection.
    Unavailable {
        /// The message resent.
        id: crate::envelope::MessageId,
    },
    /// The connection broke while message `id` was sent or its acknowledgement awaited (the
    /// server stopped or restarted, or the network failed: [`ClientError::is_connection_lost`]).
    /// The server may have stored it, so it is sent again, byte for byte, on a new connection:
    /// a stored id is acknowledged again, never stored twice.
    ConnectionLost {
        /// The message resent.
        id: crate::envelope::MessageId,
    },
}

/// Shortest time an attempt is given, however close the deadline: a TCP connect and a TLS
/// handshake on a loaded machine.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

impl Backoff {
    /// The wait after `failed` busy answers in a row (1 after the first), `elapsed` after the
    /// first attempt started, with `jitter` in [0, 1] (clamped): `min(max, first * 2^(failed-1))`
    /// scaled into its upper half, `[base / 2, base]` ("equal jitter": spread out, never
    /// near zero). `None` when the next attempt would start at or after the deadline.
    pub fn wait(&self, failed: u32, elapsed: Duration, jitter: f64) -> Option<Duration> {
        let doublings = failed.saturating_sub(1).min(31);
        let base = self
            .first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let wait = base / 2 + (base / 2).mul_f64(jitter);
        let remaining = self.deadline.checked_sub(elapsed)?;
        (wait < remaining).then_some(wait)
    }
}

/// A uniform value in [0, 1) for [`Backoff::wait`], from the system's random generator; the
/// middle of the range if it fails (the wait is then merely less spread out).
pub(super) fn jitter() -> f64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 4];
    match aws_lc_rs::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// Whether a failed connection attempt is worth another, as [`Client::connect_retrying`]
/// makes it: the server turned it away as busy, or the connection was cut short under the
/// handshake or before `Ready` (a server stopping or restarting, a network that failed; found
/// by a trial run: a close right after the handshake ended the command at once). Nothing of a
/// message was sent on it. A refusal, a wrong key or a broken record is not: trying again
/// would not change it.
fn worth_another(e: &ClientError) -> bool {
    match e {
        ClientError::Busy { .. } => true,
        ClientError::Tls(tls) => tls.is_peer_gone(),
        other => other.is_connection_lost(),
    }
}

/// A server's `Unavailable` refusal where the handshake was due is "busy"; anything else stays.
fn busy_or(e: ClientError) -> ClientError {
    match e {
        ClientError::Refused {
            code: ErrorCode::Unavailable,
            ..
        } => ClientError::Busy { attempts: 1 },
        other => other,
    }
}

/// Sorts a failed TLS handshake by what the server sent first (`first`, if anything).
/// Nothing at all and the connection closed or reset: a full server turned us away (it closes
/// a connection it has no slot for without a byte, as answering in TLS would cost it a
/// signature), so busy. A first byte of 0: a length prefix of a version 1 frame (its `Hello`,
/// or its busy `Error`), never the content type of a TLS record (20 to 24).
fn tls_failure(e: TlsError, first: Option<u8>) -> ClientError {
    match (&e, first) {
        (_, Some(0)) => ClientError::PlainV1Server,
        (_, None) if e.is_peer_gone() => ClientError::Busy { attempts: 1 },
        _ => e.into(),
    }
}

/// The first byte a stream read, if any: shared with whoever keeps it after the stream moved.
#[derive(Clone, Debug, Default)]
struct FirstByte(Arc<std::sync::atomic::AtomicU16>);

impl FirstByte {
    /// Bit 8 set: a byte was seen, in bits 0 to 7.
    const SEEN: u16 = 0x100;

    fn get(&self) -> Option<u8> {
        let v = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (v & Self::SEEN != 0).then_some((v & 0xff) as u8)
    }
}

/// A TCP stream that notes the first byte it reads, to tell after a failed handshake whether
/// the server sent anything at all, and what.
struct Watched {
    inner: TcpStream,
    first: FirstByte,
}

impl Watched {
    fn new(inner: TcpStream) -> Self {
        Watched {
            inner,
            first: FirstByte::default(),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(&b) = buf.filled().get(before)
            && self.first.get().is_none()
        {
            self.first.0.store(
                FirstByte::SEEN | u16::from(b),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Client {
    /// Connects and authenticates: checks the server's key id against the pinned key, then
    /// signs the server's fresh challenge.
    pub async fn connect(
        addr: &str,
        identity: Arc<dyn Identity>,
        server: PublicKey,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let stream = tcp_connect(addr, &config).await?;
        let (r, w) = stream.into_split();
        let mut client = Client {
            reader: FrameReader::new(Box::new(r), config.max_frame),
            writer: FrameWriter::new(Box::new(WriteDeadline::new(w, addr, config.timeout))),
            identity,
            server,
            config,
            tls: None,
            addr: addr.to_owned(),
            transport: Transport::PlainV1,
            listing: None,
        };
        client.handshake().await?;
        Ok(client)
    }

    /// Connects with protocol version 2 (docs/PROTOCOL.md, "Version 2: TLS 1.3 profile"): a
    /// TLS 1.3 handshake in which the server proves it holds the pinned key before we send
    /// anything, and we prove ours; then the server's `Ready` says it accepted our key. The
    /// version 1 `Hello`/`Auth` exchange is not used: TLS authenticated both ends.
    pub async fn connect_tls(
        addr: &str,
        identity: Arc<dyn Identity>,
        server: PublicKey,
        config: ClientConfig,
        options: TlsOptions,
    ) -> Result<Client, ClientError> {
        let tls_config = tls::client_config_cached(
            identity.clone(),
            &server,
            &options,
            config.handshake_key_cache.clone(),
        )?;
        let stream = Watched::new(tcp_connect(addr, &config).await?);
        let first = stream.first.clone();
        let (stream, session) = match tls::connect(tls_config, stream, config.timeout).await {
            Ok(done) => done,
            // Said as a silent server is said at every other step.
            Err(TlsError::Timeout) => {
                return Err(ClientError::Timeout {
                    addr: addr.to_owned(),
                    after: config.timeout,
                });
            }
            Err(e) => return Err(tls_failure(e, first.get())),
        };
        debug!(version = ?session.version, group = ?session.group, delegated = session.delegated, "TLS handshake done");
        let (r, w) = tokio::io::split(stream);
        let mut client = Client {
            // Version 2 pads every flush to its bucket (docs/PROTOCOL.md, "Frame padding").
            reader: FrameReader::new(Box::new(r) as ReadHalf, config.max_frame).with_padding(),
            writer: FrameWriter::new(
                Box::new(WriteDeadline::new(w, addr, config.timeout)) as WriteHalf
            )
            .with_padding(),
            identity,
            server,
            config,
            tls: Some(session),
            addr: addr.to_owned(),
            transport: Transport::Tls(options),
            listing: None,
        };
        // TLS 1.3 lets the client finish first: a refusal of our key arrives as an alert here.
        match client.read().await {
            Ok(Frame::Ready) => Ok(client),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Io(e)) => Err(TlsError::from_io(e).into()),
            Err(e) => Err(busy_or(e)),
        }
    }

    /// A new connection to the server this one reached, with the same keys, settings and
    /// transport, busy answers retried within `backoff` ([`Client::connect_retrying`]): for a
    /// send that must start over on a fresh connection. What it needs is copied first, so the
    /// future does not borrow this client (which is not `Sync`).
    pub(super) fn connect_again<F: FnMut(&Retry)>(
        &self,
        backoff: Backoff,
        on_retry: F,
    ) -> impl Future<Output = Result<Client, ClientError>> + use<F> {
        let addr = self.addr.clone();
        let (identity, server) = (self.identity.clone(), self.server.clone());
        let (config, transport) = (self.config.clone(), self.transport);
        async move {
            Client::connect_retrying(
                &addr, identity, server, config, transport, backoff, on_retry,
            )
            .await
        }
    }

    /// Connects with `transport`, and while the server turns us away as busy
    /// ([`ClientError::Busy`]), or the connection is cut short under the handshake or before
    /// `Ready` (the last of these is returned at the deadline, not "busy"), tries again after
    /// the waits [`Backoff::wait`] gives, until
    /// [`Backoff::deadline`]. `on_retry` hears of each wait before it starts (to tell a person
    /// why nothing happens yet). Every other failure (a wrong key, an alert, a refusal) returns
    /// at once: trying again would not change it. Each attempt gives up at the deadline too.
    pub async fn connect_retrying(
        addr: &str,
        identity: Arc<dyn Identity>,
        server: PublicKey,
        config: ClientConfig,
        transport: Transport,
        backoff: Backoff,
        mut on_retry: impl FnMut(&Retry),
    ) -> Result<Client, ClientError> {
        let start = tokio::time::Instant::now();
        let mut attempt: u32 = 1;
        loop {
            // Never zero: a retry is only scheduled if it starts before the deadline.
            let remaining = backoff.deadline.saturating_sub(start.elapsed());
            let attempt_config = ClientConfig {
                timeout: config.timeout.min(remaining).max(MIN_ATTEMPT),
                ..config.clone()
            };
            let attempt_limit = attempt_config.timeout;
            // What a timeout says it waited for: the caller's limit, not what was left of it
            // when the last attempt started (a first attempt starts a moment after `start`).
            let said = if remaining < config.timeout {
                backoff.deadline
            } else {
                config.timeout
            };
            let timed_out = || ClientError::Timeout {
                addr: addr.to_owned(),
                after: said,
            };
            let attempt_once = async {
                match transport {
                    Transport::Tls(options) => {
                        Self::connect_tls(
                            addr,
                            identity.clone(),
                            server.clone(),
                            attempt_config,
                            options,
                        )
                        .await
                    }
                    Transport::PlainV1 => {
                        Self::connect(addr, identity.clone(), server.clone(), attempt_config).await
                    }
                }
            };
            // The steps of an attempt (TCP, handshake, `Ready`) each have that limit; the
            // attempt as a whole has it too.
            let result = tokio::time::timeout(attempt_limit, attempt_once)
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            match result {
                // Whichever timer fired first, the attempt's or a step's inside it: the same
                // error, with the caller's limit.
                Err(ClientError::Timeout { .. }) => return Err(timed_out()),
                Ok(mut client) => {
                    client.config = config;
                    return Ok(client);
                }
                Err(e) if worth_another(&e) => {
                    let Some(wait) = backoff.wait(attempt, start.elapsed(), jitter()) else {
                        return Err(match e {
                            ClientError::Busy { .. } => ClientError::Busy { attempts: attempt },
                            cut_short => cut_short,
                        });
                    };
                    attempt = attempt.saturating_add(1);
                    on_retry(&Retry {
                        attempt,
                        wait,
                        cause: RetryCause::Busy,
                    });
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the connection cleanly: closes our direction (over TLS, a `close_notify` first).
    /// Dropping the client also ends it, without telling the server first.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.writer.shutdown().await?;
        Ok(())
    }

    /// The key id of our own key (who we are to the server and to other clients).
    pub fn own_key_id(&self) -> KeyId {
        self.identity.public().id()
    }

    /// What the TLS handshake agreed on, for a version 2 connection.
    pub fn tls_session(&self) -> Option<&tls::Session> {
        self.tls.as_ref()
    }

    /// The client's half of the handshake ([`crate::wire::handshake`]): check the `Hello`
    /// against the pinned key, sign the challenge off the reactor, wait for `Ready`.
    async fn handshake(&mut self) -> Result<(), ClientError> {
        // Whatever answers first must be a letterlock Hello; anything else is another service.
        let first = self.read().await.map_err(|e| match e {
            e @ (ClientError::Closed | ClientError::Wire(_)) => {
                ClientError::NotLetterlock(Box::new(e))
            }
            other => busy_or(other),
        })?;
        let server = self.server.id();
        let challenge = handshake::check_hello(first, &server)?;
        let identity = self.identity.clone();
        let auth = tokio::task::spawn_blocking(move || {
            handshake::sign_auth(identity.as_ref(), &server, &challenge)
        })
        .await
        .map_err(|source| ClientError::Task {
            task: "signing",
            source,
        })?
        .map_err(SealError::Key)?;
        self.writer.write_frame(&auth).await?;
        // `Unavailable` instead of `Ready`: the server could not read its trusted clients (its
        // mailbox database is away), busy as far as we can tell.
        match self.read().await.map_err(busy_or)? {
            Frame::Ready => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::wire::{self, handshake::HandshakeError};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A listener that answers every connection with `bytes`, and the address to reach it.
    async fn answering(bytes: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(&bytes).await.unwrap();
            // Keep the socket open until the client gives up.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
        });
        addr
    }

    async fn connect(addr: &str, server: &PrivateKey) -> Result<Client, ClientError> {
        let me: Arc<dyn Identity> = Arc::new(PrivateKey::generate(2048).unwrap());
        Client::connect(addr, me, server.public().clone(), ClientConfig::default()).await
    }

    fn policy() -> Backoff {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_doubles_from_first_up_to_max() {
        let b = policy();
        let full = |n| b.wait(n, Duration::ZERO, 1.0).unwrap();
        let ms = |n| full(n).as_millis();
        assert_eq!(
            (1..=8).map(ms).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 2000, 2000, 2000]
        );
        // Far along (no overflow of the doubling), still the cap.
        assert_eq!(full(40), b.max);
        assert_eq!(full(u32::MAX), b.max);
    }

    #[test]
    fn jitter_spreads_each_wait_over_the_upper_half_of_its_base() {
        let b = policy();
        for n in [1, 3, 7] {
            let base = b.wait(n, Duration::ZERO, 1.0).unwrap();
            assert_eq!(b.wait(n, Duration::ZERO, 0.0).unwrap(), base / 2);
            let mid = b.wait(n, Duration::ZERO, 0.5).unwrap();
            assert!(mid > base / 2 && mid < base, "{mid:?} of {base:?}");
            // Out-of-range jitter is clamped, never a longer or negative wait.
            assert_eq!(b.wait(n, Duration::ZERO, 7.0).unwrap(), base);
            assert_eq!(b.wait(n, Duration::ZERO, -1.0).unwrap(), base / 2);
            assert!(b.wait(n, Duration::ZERO, f64::NAN).unwrap() <= base);
        }
        // The generator's values fall in [0, 1).
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn no_retry_starts_at_or_after_the_deadline() {
        let b = policy();
        // 400..800 ms wait; 29.5 s gone leaves room for it, 29.9 s does not.
        assert!(b.wait(3, Duration::from_millis(29_500), 0.9).is_some());
        assert_eq!(b.wait(3, Duration::from_millis(29_900), 0.9), None);
        assert_eq!(b.wait(1, b.deadline, 0.0), None);
        assert_eq!(b.wait(1, b.deadline * 2, 0.0), None);
        // Whatever the jitter, elapsed + wait stays before the deadline.
        for step in 0..=300u64 {
            let elapsed = Duration::from_millis(step * 100);
            for (n, j) in [(1, 0.0), (4, 0.3), (9, 1.0)] {
                if let Some(w) = b.wait(n, elapsed, j) {
                    assert!(elapsed + w < b.deadline, "{elapsed:?} + {w:?}");
                }
            }
        }
        // A zero deadline means one attempt and no retry.
        let once = Backoff {
            deadline: Duration::ZERO,
            ..b
        };
        assert_eq!(once.wait(1, Duration::ZERO, 0.0), None);
    }

    #[test]
    fn a_failed_handshake_is_sorted_by_what_the_server_sent_first() {
        let eof = || TlsError::Io(io::Error::from(io::ErrorKind::UnexpectedEof));
        let reset = || TlsError::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        // Closed or reset before any byte: a full server.
        assert!(matches!(tls_failure(eof(), None), ClientError::Busy { .. }));
        assert!(matches!(
            tls_failure(reset(), None),
            ClientError::Busy { .. }
        ));
        // Closed after a TLS byte (a record starts with its content type, 22 for a
        // handshake): not busy, the handshake broke.
        assert!(matches!(tls_failure(eof(), Some(22)), ClientError::Tls(_)));
        // An alert or a timeout is never busy.
        let alert = TlsError::Handshake(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        ));
        assert!(matches!(tls_failure(alert, Some(21)), ClientError::Tls(_)));
        assert!(matches!(
            tls_failure(TlsError::Timeout, None),
            ClientError::Tls(TlsError::Timeout)
        ));
        // A first byte of 0 is a version 1 frame's length prefix.
        assert!(matches!(
            tls_failure(
                TlsError::Handshake(rustls::Error::General("x".into())),
                Some(0)
            ),
            ClientError::PlainV1Server
        ));
    }

    /// A server that accepts the connection and never answers is one error, naming it and the
    /// limit, whichever step was waiting for it: version 2's TLS handshake, version 1's Hello,
    /// or `connect_retrying`'s attempt, whose timer races the step's inside it.
    #[tokio::test]
    async fn a_silent_server_is_one_timeout_wherever_it_stalls() {
        let key = |pem: &str| PrivateKey::from_pem(pem).unwrap();
        let me: Arc<dyn Identity> = Arc::new(key(include_str!(
            "../../../tests/keys/alice2048_private.pem"
        )));
        let server = key(include_str!("../../../tests/keys/bob2048_private.pem"))
            .public()
            .clone();
        let limit = Duration::from_millis(300);
        let config = ClientConfig {
            timeout: limit,
            ..ClientConfig::default()
        };
        let timed_out = |result: Result<Client, ClientError>, addr: &str| match result {
            Err(e @ ClientError::Timeout { .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!("the server at {addr} did not answer within 300 milliseconds")
                );
            }
            other => panic!("{addr}: expected a timeout, got {other:?}"),
        };
        let addr = answering(Vec::new()).await;
        let tls = TlsOptions::default();
        timed_out(
            Client::connect_tls(&addr, me.clone(), server.clone(), config.clone(), tls).await,
            &addr,
        );
        let addr = answering(Vec::new()).await;
        timed_out(
            Client::connect(&addr, me.clone(), server.clone(), config.clone()).await,
            &addr,
        );
        // The caller's limit is said, whether it is the timeout or the deadline.
        for (transport, deadline) in [
            (Transport::Tls(tls), limit),
            (Transport::PlainV1, limit),
            (Transport::Tls(tls), Duration::from_secs(30)),
        ] {
            let addr = answering(Vec::new()).await;
            let backoff = Backoff {
                deadline,
                ..policy()
            };
            let result = Client::connect_retrying(
                &addr,
                me.clone(),
                server.clone(),
                config.clone(),
                transport,
                backoff,
                |_| {},
            )
            .await;
            timed_out(result, &addr);
        }
        let e = ClientError::Timeout {
            addr: "host:8000".into(),
            after: Duration::from_secs(30),
        };
        assert_eq!(
            e.to_string(),
            "the server at host:8000 did not answer within 30 seconds"
        );
    }

    #[tokio::test]
    async fn another_service_is_reported_as_not_letterlock() {
        let server = PrivateKey::generate(2048).unwrap();
        let addr = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
        match connect(&addr, &server).await {
            Err(ClientError::NotLetterlock(inner)) => {
                assert!(matches!(*inner, ClientError::Wire(_)), "{inner:?}")
            }
            other => panic!("expected NotLetterlock, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn another_protocol_version_is_a_handshake_error() {
        let server = PrivateKey::generate(2048).unwrap();
        let mut hello = Vec::new();
        Frame::Hello {
            version: 2,
            server: server.public().id(),
            challenge: [0; wire::CHALLENGE_LEN],
        }
        .encode(&mut hello);
        let addr = answering(hello).await;
        match connect(&addr, &server).await {
            Err(ClientError::Handshake(HandshakeError::Version(2))) => {}
            other => panic!("expected Handshake(Version(2)), got {other:?}"),
        }
    }
}
