//! The client: authenticates to a pinned server, sends sealed messages and checks each proof of
//! delivery, fetches the messages waiting for it and proves it opened each one.
//!
//! Invariants: "delivered" is only ever reported after the server's ack tag matched the one
//! computed while sealing (constant-time comparison); a fetched message is acknowledged only
//! after it verified and, with an output folder, after its file is fsynced in place.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;
use zeroize::Zeroizing;

use crate::envelope::{
    self, HEADER_LEN, Header, MessageId, OpenError, OpenOptions, Opener, SealError, SealOptions,
    Sealed,
};
use crate::keys::{Identity, KeyId, PublicKey};
use crate::received::{self, Entry, Kind, ReceivedRecord, RecordError};
use crate::tls::{self, TlsError, TlsOptions};
use crate::wire::handshake::{self, HandshakeError};
use crate::wire::{
    self, ConnError, DATA_FRAME, ErrorCode, Frame, FrameReader, FrameWriter, WireError,
};

/// Limits and timeouts of the client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest wait for any one frame from the server.
    pub timeout: Duration,
    /// Largest frame accepted from the server.
    pub max_frame: usize,
    /// Largest plaintext accepted in a fetched message.
    pub max_message: u64,
    /// Largest plaintext accepted in a fetched asymmetric message.
    pub max_asymmetric: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(60),
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_message: 1 << 30,
            max_asymmetric: envelope::DEFAULT_ASYMMETRIC_LIMIT,
        }
    }
}

/// What can go wrong for a client; each says what was or was not proven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error(
        "the server presented key {got}, but the trusted server key is {expected}; refusing to \
         talk to it"
    )]
    WrongServer { got: KeyId, expected: KeyId },
    /// `message` is the server's own text, shown escaped and quoted as its words: a fake
    /// server must not be able to print "delivered" on our terminal.
    #[error("the server refused (code {code:?}); the server says: {}", crate::text::quoted(.message))]
    Refused { code: ErrorCode, message: String },
    #[error("delivery NOT proven: {0}")]
    NotProven(String),
    /// The server closed the connection where a frame was due.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent bytes that are not a valid frame.
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// The server sent a valid frame where the protocol has no place for it.
    #[error("unexpected {frame} frame from the server")]
    Unexpected { frame: &'static str },
    /// The TLS 1.3 handshake of protocol version 2 failed (other than a wrong server key, which
    /// is [`ClientError::WrongServer`], or our key refused, which is [`ClientError::Refused`]).
    #[error(transparent)]
    Tls(TlsError),
    /// Whatever answered at the address did not open with a letterlock `Hello`.
    #[error("the peer does not speak the letterlock protocol (is this the right address?): {0}")]
    NotLetterlock(#[source] Box<ClientError>),
    /// The handshake failed for another reason than the server's key (see
    /// [`ClientError::WrongServer`]), e.g. another protocol version.
    #[error("handshake failed: {0}")]
    Handshake(#[source] HandshakeError),
    /// The server announced another number of messages than it delivered.
    #[error("server announced {announced} messages, sent {sent}")]
    CountMismatch { announced: u32, sent: usize },
    /// Work the client runs on the blocking pool (sealing, signing, opening) panicked or was
    /// cancelled.
    #[error("the {task} task failed: {source}")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server is full and turned the connection away before any handshake: under version 2
    /// it closed (or reset) the TCP connection before sending a single TLS byte, under version
    /// 1 it sent an `Unavailable` error instead of its `Hello`. Unlike every other failure,
    /// worth trying again a little later ([`Client::connect_retrying`] does).
    #[error("the server is busy (turned away {attempts} time(s)); try again shortly")]
    Busy { attempts: u32 },
    /// A version 2 (TLS) client reached a server on the plain version 1 wire: the first bytes
    /// that came back are a letterlock frame, not a TLS record.
    #[error("the server speaks the plain version 1 wire, not TLS 1.3 (protocol version 2)")]
    PlainV1Server,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("a message from the server was refused: {0}")]
    Open(#[from] OpenError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The record of received messages could not be read or written: nothing is acknowledged
    /// without it.
    #[error("record of received messages: {0}")]
    Record(#[from] RecordError),
    /// A server message signed at a time outside the client's window ([`crate::received`]).
    #[error("stale message from the server: {0}")]
    Stale(String),
}

impl From<ConnError> for ClientError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Closed => ClientError::Closed,
            ConnError::Wire(w) => ClientError::Wire(w),
            ConnError::Io(e) => ClientError::Io(e),
        }
    }
}

impl From<HandshakeError> for ClientError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::WrongServer { got, expected } => {
                ClientError::WrongServer { got, expected }
            }
            HandshakeError::Key(e) => ClientError::Seal(SealError::Key(e)),
            other => ClientError::Handshake(other),
        }
    }
}

/// A message the server proved it received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: MessageId,
    pub header: Header,
    pub plaintext_len: u64,
}

/// Where fetched plaintext goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Held in memory (for printing), up to this many bytes per message.
    Memory { limit: u64 },
    /// Written to `DIR/<message id>.msg`, appearing only once verified.
    Dir(PathBuf),
}

/// A fetched message that verified.
#[derive(Debug)]
pub struct Received {
    pub header: Header,
    pub plaintext_len: u64,
    pub content: Content,
    /// Already received before (same id): at-least-once delivery repeated it.
    pub duplicate: bool,
    /// Our proof of delivery, sent back to the server.
    pub ack_tag: [u8; 32],
}

#[derive(Debug)]
pub enum Content {
    Memory(Zeroizing<Vec<u8>>),
    File(PathBuf),
}

impl From<TlsError> for ClientError {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::WrongServer { got, expected } => ClientError::WrongServer { got, expected },
            e if e.is_access_denied() => ClientError::Refused {
                code: ErrorCode::AuthFailed,
                message: "the server does not trust our key (TLS access_denied)".into(),
            },
            e => ClientError::Tls(e),
        }
    }
}

/// A TCP connection to `addr` within the timeout, with Nagle off (frames are written whole).
async fn tcp_connect(addr: &str, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(config.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)?
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

/// One scheduled retry, as [`Client::connect_retrying`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The attempt about to be made (2 for the first retry).
    pub attempt: u32,
    /// How long the client waits before making it.
    pub wait: Duration,
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
fn jitter() -> f64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 4];
    match aws_lc_rs::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
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
        (TlsError::Io(io), None)
            if matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            ClientError::Busy { attempts: 1 }
        }
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

/// Either half of the byte stream under the frames: a TCP socket (version 1) or a TLS stream
/// (version 2).
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An authenticated connection to the server.
pub struct Client {
    reader: FrameReader<ReadHalf>,
    writer: FrameWriter<WriteHalf>,
    identity: Arc<dyn Identity>,
    server: PublicKey,
    config: ClientConfig,
    /// What the TLS handshake agreed on (protocol version 2); `None` on the plain version 1 wire.
    tls: Option<tls::Session>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("me", &self.identity.public().id())
            .field("server", &self.server.id())
            .finish_non_exhaustive()
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
            writer: FrameWriter::new(Box::new(w)),
            identity,
            server,
            config,
            tls: None,
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
        let tls_config = tls::client_config(identity.clone(), &server, &options)?;
        let stream = Watched::new(tcp_connect(addr, &config).await?);
        let first = stream.first.clone();
        let (stream, session) = match tls::connect(tls_config, stream, config.timeout).await {
            Ok(done) => done,
            Err(e) => return Err(tls_failure(e, first.get())),
        };
        debug!(version = ?session.version, group = ?session.group, "TLS handshake done");
        let (r, w) = tokio::io::split(stream);
        let mut client = Client {
            // Version 2 pads every flush to its bucket (docs/PROTOCOL.md, "Frame padding").
            reader: FrameReader::new(Box::new(r) as ReadHalf, config.max_frame).with_padding(),
            writer: FrameWriter::new(Box::new(w) as WriteHalf).with_padding(),
            identity,
            server,
            config,
            tls: Some(session),
        };
        // TLS 1.3 lets the client finish first: a refusal of our key arrives as an alert here.
        match client.read().await {
            Ok(Frame::Ready) => Ok(client),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Io(e)) => Err(TlsError::from_io(e).into()),
            Err(e) => Err(busy_or(e)),
        }
    }

    /// Connects with `transport`, and while the server turns us away as busy
    /// ([`ClientError::Busy`]) tries again after the waits [`Backoff::wait`] gives, until
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
                .unwrap_or(Err(ClientError::Timeout));
            match result {
                Ok(mut client) => {
                    client.config = config;
                    return Ok(client);
                }
                Err(ClientError::Busy { .. }) => {
                    let Some(wait) = backoff.wait(attempt, start.elapsed(), jitter()) else {
                        return Err(ClientError::Busy { attempts: attempt });
                    };
                    attempt = attempt.saturating_add(1);
                    on_retry(&Retry { attempt, wait });
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
        match self.read().await? {
            Frame::Ready => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reads one frame within the timeout; an `Error` frame becomes [`ClientError::Refused`].
    async fn read(&mut self) -> Result<Frame, ClientError> {
        let frame = tokio::time::timeout(self.config.timeout, self.reader.read_frame())
            .await
            .map_err(|_| ClientError::Timeout)??;
        match frame {
            Frame::Error { code, message } => Err(ClientError::Refused { code, message }),
            f => Ok(f),
        }
    }

    /// Seals everything `input` yields (on the blocking pool, streaming) and sends it; returns
    /// once the server's proof of delivery checked out.
    pub async fn send<R: Read + Send + 'static>(
        &mut self,
        input: R,
        opts: SealOptions,
    ) -> Result<Delivery, ClientError> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let identity = self.identity.clone();
        let server = self.server.clone();
        let sealing = tokio::task::spawn_blocking(move || {
            let mut sink = FrameSink {
                tx,
                buf: Vec::with_capacity(DATA_FRAME),
            };
            let sealed = envelope::seal(identity.as_ref(), &server, &opts, input, &mut sink)?;
            sink.flush()?;
            Ok::<_, SealError>(sealed)
        });
        let mut write_failed = None;
        while let Some(data) = rx.recv().await {
            if let Err(e) = self.writer.write_frame(&Frame::Send(data)).await {
                write_failed = Some(e);
                break;
            }
        }
        drop(rx);
        let sealed = sealing.await.map_err(|source| ClientError::Task {
            task: "sealing",
            source,
        })?;
        if let Some(e) = write_failed {
            // The server may have said why before closing.
            return Err(self.reason_for(e).await);
        }
        let sealed = sealed?;
        if let Err(e) = self.writer.write_frame(&Frame::SendEnd).await {
            return Err(self.reason_for(e).await);
        }
        self.await_ack(&sealed).await
    }

    /// After a failed write, the server's Error frame (if any) says more than "broken pipe".
    async fn reason_for(&mut self, e: ConnError) -> ClientError {
        match self.read().await {
            Err(refused @ ClientError::Refused { .. }) => refused,
            _ => e.into(),
        }
    }

    /// Sends one pre-sealed message and waits for its proven ack.
    pub async fn send_sealed(
        &mut self,
        sealed_bytes: &[u8],
        sealed: &Sealed,
    ) -> Result<Delivery, ClientError> {
        self.queue_sealed(sealed_bytes);
        self.writer.flush().await?;
        self.await_ack(sealed).await
    }

    /// Sends many pre-sealed messages back to back, then collects their acks (in any order):
    /// the server works on them while the rest arrive.
    pub async fn send_sealed_many(
        &mut self,
        messages: &[(Vec<u8>, Sealed)],
    ) -> Result<Vec<Delivery>, ClientError> {
        let mut expected: HashMap<MessageId, &Sealed> = HashMap::new();
        for (bytes, sealed) in messages {
            self.queue_sealed(bytes);
            expected.insert(sealed.header.message_id, sealed);
        }
        self.writer.flush().await?;
        let mut out = Vec::with_capacity(messages.len());
        while !expected.is_empty() {
            let (id, tag) = match self.read().await? {
                Frame::Ack { id, tag } => (id, tag),
                other => return Err(unexpected(other)),
            };
            let sealed = expected
                .remove(&id)
                .ok_or_else(|| ClientError::NotProven(format!("ack for unknown message {id}")))?;
            out.push(check_ack(sealed, &id, &tag)?);
        }
        Ok(out)
    }

    fn queue_sealed(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(DATA_FRAME) {
            self.writer.queue_frame(&Frame::Send(chunk.to_vec()));
        }
        self.writer.queue_frame(&Frame::SendEnd);
    }

    async fn await_ack(&mut self, sealed: &Sealed) -> Result<Delivery, ClientError> {
        match self.read().await {
            Ok(Frame::Ack { id, tag }) => check_ack(sealed, &id, &tag),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Refused { code, message }) => {
                Err(ClientError::Refused { code, message })
            }
            Err(e) => Err(ClientError::NotProven(format!(
                "no acknowledgement from the server ({e})"
            ))),
        }
    }

    /// Fetches every message waiting for us. Each is opened and verified, put where `output`
    /// says, passed to `handle` (which must make it durable or shown before returning), and
    /// only then acknowledged. Keeps no record of received messages and stops at the first
    /// message it cannot open: programs that receive for a user take
    /// [`Client::fetch_recorded`].
    pub async fn fetch<F>(&mut self, output: &Output, mut handle: F) -> Result<usize, ClientError>
    where
        F: FnMut(&Received) -> Result<(), ClientError>,
    {
        self.writer.write_frame(&Frame::Fetch).await?;
        let mut acked = Vec::new();
        let count = loop {
            match self.read().await? {
                Frame::Deliver(first) => {
                    let received = self.receive_one(first, output).await?;
                    handle(&received)?;
                    let id = received.header.message_id;
                    // Queued, sent after FetchDone: see `fetch_recorded`.
                    self.writer.queue_frame(&Frame::DeliveryAck {
                        id,
                        tag: received.ack_tag,
                    });
                    acked.push(id);
                }
                Frame::FetchDone { count } => break count,
                other => return Err(unexpected(other)),
            }
        };
        if count as usize != acked.len() {
            return Err(ClientError::CountMismatch {
                announced: count,
                sent: acked.len(),
            });
        }
        self.writer.flush().await?;
        // Wait for the server to confirm each removal, so a second fetch will not repeat them.
        for _ in &acked {
            match self.read().await? {
                Frame::Removed { id } if acked.contains(&id) => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(acked.len())
    }

    /// Fetches every message waiting for us, keeping `record` (the durable record of received
    /// messages, [`crate::received`]) and reporting each message to `event`:
    /// - a new message is opened and verified, put where `output` says, passed to `event`
    ///   (which must make it durable or shown), recorded (fsynced), and only then acknowledged;
    /// - a message the record already holds is a repeat: opened to prove receipt to the server
    ///   (a byte-identical replay earns an ack tag that was already sent), acknowledged, but
    ///   neither saved nor shown again;
    /// - a message signed outside the client's window, or one that cannot be opened, is set
    ///   aside: reported, recorded as set aside, not acknowledged (it stays in the server's
    ///   outbox, where its operator can remove it), and the messages behind it are delivered.
    pub async fn fetch_recorded<F>(
        &mut self,
        output: &Output,
        record: &mut ReceivedRecord,
        mut event: F,
    ) -> Result<FetchReport, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        self.writer.write_frame(&Frame::Fetch).await?;
        let mut acked = Vec::new();
        let mut report = FetchReport::default();
        let count = loop {
            let first = match self.read().await? {
                Frame::Deliver(first) => first,
                Frame::FetchDone { count } => break count,
                other => return Err(unexpected(other)),
            };
            let (head, ended) = self.read_header(first).await?;
            let header = match Header::parse(&head) {
                Ok(h) if !ended => h,
                parsed => {
                    if !ended {
                        self.skip_message().await?;
                    }
                    let e = match parsed {
                        Err(e) => OpenError::Header(e),
                        Ok(_) => OpenError::Verification,
                    };
                    let error = ClientError::Open(e);
                    event(FetchEvent::SetAside {
                        id: None,
                        error: &error,
                    })?;
                    report.set_aside += 1;
                    continue;
                }
            };
            let id = header.message_id;
            let now = envelope::unix_now();
            let known = record.get(&header.sender.0, &id.0).map(|e| e.kind);
            let refused = match received::check_time(header.created, now) {
                Err(why) => {
                    self.skip_message().await?;
                    Err(ClientError::Stale(why))
                }
                Ok(()) => {
                    let repeat = known == Some(Kind::Received);
                    let out = if repeat { None } else { Some(output) };
                    self.open_delivery(head, out).await
                }
            };
            let received = match refused {
                Ok(r) => r,
                Err(error) if is_set_aside(&error) => {
                    if known.is_none() {
                        record.add(entry(Kind::SetAside, &header, now))?;
                    }
                    event(FetchEvent::SetAside {
                        id: Some(id),
                        error: &error,
                    })?;
                    report.set_aside += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if known == Some(Kind::Received) || received.duplicate {
                event(FetchEvent::Repeat {
                    received: &received,
                    recorded: record.get(&header.sender.0, &id.0).map(|e| e.recorded),
                })?;
                report.repeats += 1;
            } else {
                event(FetchEvent::New(&received))?;
                report.new += 1;
            }
            if known != Some(Kind::Received) {
                // Durable before the ack: after it, the server forgets the message.
                record.add(entry(Kind::Received, &header, now))?;
            }
            // Queued, and sent once FetchDone came: the server reads nothing while it streams
            // a fetch, so acks written during it would wait in the TCP buffers, and enough of
            // them would fill both directions (PROTOCOL.md, "Keep reading while writing").
            self.writer.queue_frame(&Frame::DeliveryAck {
                id,
                tag: received.ack_tag,
            });
            acked.push(id);
        };
        let delivered = acked.len() + report.set_aside;
        if count as usize != delivered {
            return Err(ClientError::CountMismatch {
                announced: count,
                sent: delivered,
            });
        }
        self.writer.flush().await?;
        for _ in &acked {
            match self.read().await? {
                Frame::Removed { id } if acked.contains(&id) => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(report)
    }

    /// The first `HEADER_LEN` bytes or more of a delivered message, and whether its
    /// `DeliverEnd` came already (a message shorter than a header, or exactly one).
    async fn read_header(&mut self, first: Vec<u8>) -> Result<(Vec<u8>, bool), ClientError> {
        let mut head = first;
        while head.len() < HEADER_LEN {
            match self.read().await? {
                Frame::Deliver(more) => head.extend_from_slice(&more),
                Frame::DeliverEnd => return Ok((head, true)),
                other => return Err(unexpected(other)),
            }
        }
        Ok((head, false))
    }

    /// Reads and drops the rest of a delivered message, up to its `DeliverEnd`.
    async fn skip_message(&mut self) -> Result<(), ClientError> {
        loop {
            match self.read().await? {
                Frame::Deliver(_) => {}
                Frame::DeliverEnd => return Ok(()),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Opens one delivered message whose first bytes (at least its header, unless it ended
    /// early) are `head`, to `output`, or, with `None`, only to verify it and compute its ack
    /// tag. On an opening failure the rest of the message is still read, so the next one can
    /// follow.
    async fn open_delivery(
        &mut self,
        head: Vec<u8>,
        output: Option<&Output>,
    ) -> Result<Received, ClientError> {
        let mut head = head;
        let rest = if head.len() > HEADER_LEN {
            head.split_off(HEADER_LEN)
        } else {
            Vec::new()
        };
        let server = self.server.clone();
        let opts = OpenOptions {
            max_plaintext: match output {
                Some(Output::Memory { limit }) => (*limit).min(self.config.max_message),
                Some(Output::Dir(_)) | None => self.config.max_message,
            },
            asymmetric_limit: self.config.max_asymmetric,
        };
        let output = output.cloned();
        let started = Opener::new(&head, self.identity.clone(), &server, &opts)
            .map_err(ClientError::from)
            .map(|opener| (opener, output));
        let mut state: Result<Unpack, ClientError> = match started {
            Ok((opener, output)) => {
                let header = *opener.header();
                on_blocking_pool(move || {
                    let sink = match &output {
                        Some(output) => PlainSink::new(output, &header)?,
                        None => PlainSink::Discard,
                    };
                    let mut u = Unpack {
                        opener,
                        sink,
                        plain: Zeroizing::new(Vec::new()),
                    };
                    u.feed(&rest)?;
                    Ok(u)
                })
                .await
            }
            Err(e) => Err(e),
        };
        loop {
            match self.read().await? {
                Frame::Deliver(data) => {
                    if let Ok(unpack) = state {
                        state = on_blocking_pool(move || {
                            let mut u = unpack;
                            u.feed(&data)?;
                            Ok(u)
                        })
                        .await;
                    }
                }
                Frame::DeliverEnd => break,
                other => return Err(unexpected(other)),
            }
        }
        on_blocking_pool(move || state?.finish()).await
    }

    /// Receives one delivered message (`Deliver`… `DeliverEnd`) and opens it.
    async fn receive_one(
        &mut self,
        first: Vec<u8>,
        output: &Output,
    ) -> Result<Received, ClientError> {
        let mut head = first;
        let mut rest = Vec::new();
        while head.len() < HEADER_LEN {
            match self.read().await? {
                Frame::Deliver(more) => head.extend_from_slice(&more),
                other => return Err(unexpected(other)),
            }
        }
        if head.len() > HEADER_LEN {
            rest = head.split_off(HEADER_LEN);
        }
        let server = self.server.clone();
        let opts = OpenOptions {
            max_plaintext: match output {
                Output::Memory { limit } => (*limit).min(self.config.max_message),
                Output::Dir(_) => self.config.max_message,
            },
            asymmetric_limit: self.config.max_asymmetric,
        };
        let opener = Opener::new(&head, self.identity.clone(), &server, &opts)?;
        let header = *opener.header();
        // Decryption, verification and file writes run on the blocking pool, frame by frame.
        let output = output.clone();
        let mut unpack = on_blocking_pool(move || {
            let mut u = Unpack {
                opener,
                sink: PlainSink::new(&output, &header)?,
                plain: Zeroizing::new(Vec::new()),
            };
            u.feed(&rest)?;
            Ok(u)
        })
        .await?;
        loop {
            match self.read().await? {
                Frame::Deliver(data) => {
                    unpack = on_blocking_pool(move || {
                        let mut u = unpack;
                        u.feed(&data)?;
                        Ok(u)
                    })
                    .await?;
                }
                Frame::DeliverEnd => break,
                other => return Err(unexpected(other)),
            }
        }
        let received = on_blocking_pool(move || unpack.finish()).await?;
        debug!(id = %header.message_id, "received and verified");
        Ok(received)
    }
}

/// What [`Client::fetch_recorded`] did with one fetch's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// New messages, saved or shown, recorded and acknowledged.
    pub new: usize,
    /// Messages the record (or the output folder) already held: acknowledged, not shown again.
    pub repeats: usize,
    /// Messages set aside: stale or not openable; not acknowledged, left on the server.
    pub set_aside: usize,
}

/// One message of a fetch, as [`Client::fetch_recorded`] reports it.
#[derive(Debug)]
pub enum FetchEvent<'a> {
    /// A new message, verified: show or save it durably before returning.
    New(&'a Received),
    /// A message received before (a replay, or at-least-once delivery repeating itself), with
    /// when it was first recorded.
    Repeat {
        received: &'a Received,
        recorded: Option<u64>,
    },
    /// A message set aside, with why; `id` is `None` if not even its header could be read.
    SetAside {
        id: Option<MessageId>,
        error: &'a ClientError,
    },
}

/// Whether a failure concerns the one message (set it aside, deliver the next) rather than the
/// connection or this machine (stop).
fn is_set_aside(e: &ClientError) -> bool {
    matches!(e, ClientError::Open(_) | ClientError::Stale(_))
}

/// A record entry for a message with `header`, made `now`.
fn entry(kind: Kind, header: &Header, now: u64) -> Entry {
    Entry {
        kind,
        sender: header.sender.0,
        message_id: header.message_id.0,
        created: header.created,
        recorded: now,
    }
}

/// Runs CPU and file work on the blocking pool, off the reactor.
async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ClientError::Task {
            task: "opening",
            source,
        })?
}

/// One delivered message being opened: the opener and where its plaintext goes.
struct Unpack {
    opener: Opener,
    sink: PlainSink,
    /// Decrypted bytes of the current frame (wiped when dropped).
    plain: Zeroizing<Vec<u8>>,
}

impl Unpack {
    fn feed(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.opener.update(data, &mut self.plain)?;
        self.sink.write(&mut self.plain)
    }

    fn finish(mut self) -> Result<Received, ClientError> {
        let header = *self.opener.header();
        let opened = self.opener.finish(&mut self.plain)?;
        self.sink.write(&mut self.plain)?;
        let (content, duplicate) = self.sink.commit()?;
        Ok(Received {
            header,
            plaintext_len: opened.plaintext_len,
            content,
            duplicate,
            ack_tag: opened.ack_tag,
        })
    }
}

use crate::files::{AtomicFile, WriteOptions};

/// Where plaintext of one fetched message goes while it is still unverified.
enum PlainSink {
    Memory(Zeroizing<Vec<u8>>),
    /// A temporary file beside the target, renamed into place once verified. Written without a
    /// user-space buffer: frames are large, and a buffer would hold plaintext unwiped.
    File {
        tmp: AtomicFile,
        target: PathBuf,
    },
    /// A repeat: verified for its ack tag, the plaintext dropped as it is decrypted.
    Discard,
    /// The target exists already: decrypt and verify, and hash, to compare with it.
    Existing {
        target: PathBuf,
        hash: aws_lc_rs::digest::Context,
    },
}

impl PlainSink {
    fn new(output: &Output, header: &Header) -> Result<Self, ClientError> {
        Ok(match output {
            // Grows through `extend_wiping`: no reallocation leaves plaintext behind.
            Output::Memory { .. } => PlainSink::Memory(Zeroizing::new(Vec::new())),
            Output::Dir(dir) => {
                let target = message_path(dir, &header.message_id);
                if target.exists() {
                    PlainSink::Existing {
                        target,
                        hash: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
                    }
                } else {
                    let opts = WriteOptions {
                        create_dirs: true,
                        ..WriteOptions::default()
                    };
                    let tmp = AtomicFile::create(&target, &opts)?;
                    PlainSink::File { tmp, target }
                }
            }
        })
    }

    fn write(&mut self, plain: &mut Zeroizing<Vec<u8>>) -> Result<(), ClientError> {
        match self {
            PlainSink::Memory(v) => crate::secret::extend_wiping(v, plain),
            PlainSink::File { tmp, .. } => tmp.write_all(plain)?,
            PlainSink::Existing { hash, .. } => hash.update(plain),
            PlainSink::Discard => {}
        }
        plain.clear();
        Ok(())
    }

    /// The message verified: make it visible (and durable). Returns whether it was a repeat.
    fn commit(self) -> Result<(Content, bool), ClientError> {
        Ok(match self {
            PlainSink::Memory(v) => (Content::Memory(v), false),
            PlainSink::Discard => (Content::Memory(Zeroizing::new(Vec::new())), true),
            PlainSink::File { tmp, target } => {
                // fsync, a no-clobber rename, fsync of the folder.
                tmp.commit()?;
                (Content::File(target), false)
            }
            PlainSink::Existing { target, hash } => {
                // A repeat only if the file holds exactly this message; anything else there is
                // not ours to overwrite, and acknowledging would lose the message.
                let mut existing = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut file = std::fs::File::open(&target)?;
                envelope::for_each_read(&mut file, |b| -> io::Result<()> {
                    existing.update(b);
                    Ok(())
                })?;
                if existing.finish().as_ref() != hash.finish().as_ref() {
                    return Err(ClientError::Io(io::Error::other(format!(
                        "{} exists with other content; move it away and fetch again (the \
                         message stays on the server)",
                        target.display()
                    ))));
                }
                (Content::File(target), true)
            }
        })
    }
}

/// The file a fetched message is written to.
pub fn message_path(dir: &Path, id: &MessageId) -> PathBuf {
    dir.join(format!("{id}.msg"))
}

fn check_ack(sealed: &Sealed, id: &MessageId, tag: &[u8; 32]) -> Result<Delivery, ClientError> {
    if *id != sealed.header.message_id {
        return Err(ClientError::NotProven(format!(
            "the server acknowledged message {id}, not {}",
            sealed.header.message_id
        )));
    }
    if !envelope::ack_tags_match(tag, &sealed.ack_tag) {
        return Err(ClientError::NotProven(
            "the server's acknowledgement does not prove it decrypted the message \
             (wrong ack tag: a forged or altered ack)"
                .into(),
        ));
    }
    Ok(Delivery {
        id: *id,
        header: sealed.header,
        plaintext_len: sealed.plaintext_len,
    })
}

fn unexpected(frame: Frame) -> ClientError {
    ClientError::Unexpected {
        frame: frame.name(),
    }
}

/// A `Write` that cuts sealed output into `Send` frames for the async side.
struct FrameSink {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for FrameSink {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (DATA_FRAME - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == DATA_FRAME {
                self.flush()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(DATA_FRAME));
            self.tx
                .blocking_send(full)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
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
