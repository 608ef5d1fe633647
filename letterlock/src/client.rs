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
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("a message from the server was refused: {0}")]
    Open(#[from] OpenError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
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
        let stream = tcp_connect(addr, &config).await?;
        let (stream, session) = tls::connect(tls_config, stream, config.timeout).await?;
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
            Err(e) => Err(e),
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
            other => other,
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
    /// only then acknowledged.
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
                    self.writer
                        .write_frame(&Frame::DeliveryAck {
                            id,
                            tag: received.ack_tag,
                        })
                        .await?;
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
        // Wait for the server to confirm each removal, so a second fetch will not repeat them.
        for _ in &acked {
            match self.read().await? {
                Frame::Removed { id } if acked.contains(&id) => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(acked.len())
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
        }
        plain.clear();
        Ok(())
    }

    /// The message verified: make it visible (and durable). Returns whether it was a repeat.
    fn commit(self) -> Result<(Content, bool), ClientError> {
        Ok(match self {
            PlainSink::Memory(v) => (Content::Memory(v), false),
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
