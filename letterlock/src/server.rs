//! The server: accepts clients it trusts, receives their sealed messages into the durable
//! mailbox, and hands each client the messages waiting for it.
//!
//! Per connection (docs/PROTOCOL.md, "Network protocol"):
//! 1. `Hello` with a fresh challenge; the client answers `Auth`. Only public-key work happens
//!    before the client is authenticated: an unknown peer never costs us an RSA private
//!    operation.
//! 2. Then any number of messages (`Send`… `SendEnd`, pipelined; each answered by `Ack` once it
//!    is durable) and fetches (`Fetch` → `Deliver`… `DeliverEnd` per message, `FetchDone`; the
//!    client proves each with `DeliveryAck`, and only then is it removed).
//!
//! Invariants: nothing is acknowledged before it is fsynced; RSA and bulk crypto run on the
//! blocking pool, never on the reactor; every limit is a named field of [`ServerConfig`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::envelope::{
    self, HEADER_LEN, Header, MessageId, Mode, OpenError, OpenOptions, Opened, Opener,
};
use crate::keys::{Identity, KeyId, PrivateKey, TrustList, Trusted};
use crate::store::{self, Body, InboxRecord, InsertOutcome, Store};
use crate::wire::{
    self, CHALLENGE_LEN, ConnError, DATA_FRAME, ErrorCode, Frame, FrameReader, FrameWriter,
};

/// Which modes the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Both,
    Hybrid,
    Asymmetric,
}

impl Accept {
    fn allows(self, mode: Mode) -> bool {
        matches!(
            (self, mode),
            (Accept::Both, _)
                | (Accept::Hybrid, Mode::Hybrid)
                | (Accept::Asymmetric, Mode::Asymmetric)
        )
    }
}

/// Every limit of the server, each with a default that suits one machine.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub accept: Accept,
    /// Connections served at once; one more is told "busy" and closed.
    pub max_connections: usize,
    /// Time a new connection has to authenticate.
    pub handshake_timeout: Duration,
    /// Time an authenticated connection may stay silent between frames.
    pub idle_timeout: Duration,
    /// Largest hybrid plaintext accepted.
    pub max_hybrid: u64,
    /// Largest asymmetric plaintext accepted.
    pub max_asymmetric: u64,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// How far a message's creation time may be from our clock, either way.
    pub time_window: Duration,
    /// Messages one connection may have in flight (received, not yet acknowledged).
    pub max_in_flight: usize,
    /// Messages all connections together may have in flight: bounds the server's memory
    /// (each holds at most a 256 KiB batch, or an asymmetric body of about 1.3 MiB).
    pub max_in_flight_total: usize,
    /// Time in-flight work gets to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Log the text of short UTF-8 messages, as the classroom server printed them. Off, the log
    /// says only who sent how much.
    pub log_text: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            accept: Accept::Both,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_hybrid: 1 << 30,
            max_asymmetric: envelope::DEFAULT_ASYMMETRIC_LIMIT,
            max_frame: wire::DEFAULT_MAX_FRAME,
            time_window: Duration::from_secs(600),
            max_in_flight: 64,
            max_in_flight_total: 256,
            shutdown_grace: Duration::from_secs(10),
            log_text: true,
        }
    }
}

/// What every connection shares.
pub struct Server<S> {
    /// Permits for messages in flight, server-wide ([`ServerConfig::max_in_flight_total`]).
    in_flight: Arc<Semaphore>,
    identity: Arc<PrivateKey>,
    clients: Arc<TrustList>,
    store: Arc<S>,
    config: ServerConfig,
}

/// Most bytes the writer task gathers into one write (many small acks, or a few deliveries).
const WRITE_BATCH: usize = 1024 * 1024;

/// Bytes of a message gathered before they go to the blocking pool (see `receive`).
const FEED_BATCH: usize = 256 * 1024;

/// How long a connection that failed keeps reading so the peer can receive our Error frame.
const LINGER: Duration = Duration::from_millis(500);

/// Short UTF-8 messages are logged in full, as the classroom server printed them; anything
/// longer or binary is logged by size and id only.
const LOG_TEXT_MAX: usize = 200;

impl<S: Store> Server<S> {
    pub fn new(
        identity: PrivateKey,
        clients: TrustList,
        store: Arc<S>,
        config: ServerConfig,
    ) -> Self {
        Server {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_total)),
            identity: Arc::new(identity),
            clients: Arc::new(clients),
            store,
            config,
        }
    }

    /// Serves `listener` until `shutdown` completes; then stops accepting, gives in-flight
    /// connections [`ServerConfig::shutdown_grace`] to finish, and returns.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        info!(
            addr = %listener.local_addr()?,
            key = %self.identity.public().id(),
            clients = self.clients.len(),
            "server listening"
        );
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    let permit = limit.clone().try_acquire_owned();
                    let server = self.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(async move {
                        let (r, w) = socket.into_split();
                        match permit {
                            Ok(_permit) => server.connection(r, w, peer, stop).await,
                            Err(_) => {
                                let mut w = FrameWriter::new(w);
                                let _ = w.write_frame(&Frame::error(
                                    ErrorCode::Unavailable,
                                    "server busy: too many connections; try again shortly",
                                )).await;
                            }
                        }
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        info!("shutting down: no new connections");
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, drain)
            .await
            .is_err()
        {
            warn!("in-flight connections did not finish in time; closing them");
            tasks.shutdown().await;
        }
        Ok(())
    }

    /// Serves one connection over any byte stream, from hello to close: what [`Server::run`]
    /// does for each TCP connection, exposed so the fuzzer and tests can drive it in memory.
    pub async fn serve_stream<R, W>(self: Arc<Self>, r: R, w: W, peer: SocketAddr)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        // Never signalled: this connection ends when the peer is done.
        let (_stop_tx, stop_rx) = watch::channel(false);
        self.connection(r, w, peer, stop_rx).await;
    }

    /// One connection, from hello to close.
    async fn connection<R, W>(
        self: Arc<Self>,
        r: R,
        w: W,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        // Until the peer is authenticated, only a handshake-sized frame is accepted.
        let mut reader = FrameReader::new(r, wire::MAX_HANDSHAKE_FRAME.min(self.config.max_frame));
        // One writer task owns the socket's write half: acks of pipelined messages and
        // deliveries come from several tasks.
        let (out_tx, out_rx) = mpsc::channel::<Frame>(64);
        let writer = tokio::spawn(write_loop(
            FrameWriter::new(w),
            out_rx,
            self.config.idle_timeout,
        ));
        let result = self.serve(&mut reader, &out_tx, peer, stop).await;
        if let Err(fail) = &result {
            debug!(%peer, error = %fail.message, "closing connection");
            let _ = out_tx.send(Frame::error(fail.code, &fail.message)).await;
        }
        drop(out_tx);
        let _ = writer.await;
        if result.is_err() {
            // Lingering close: closing a socket with unread input makes the kernel send a reset,
            // which can destroy the Error frame before the peer reads it. Read (and discard)
            // what the peer still sends, briefly, so it gets to see why.
            let drain = async { while reader.read_frame().await.is_ok() {} };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
    }

    async fn serve<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        reader: &mut FrameReader<R>,
        out: &mpsc::Sender<Frame>,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Fail> {
        // A peer that has not authenticated yet is simply closed at shutdown.
        let client = tokio::select! {
            client = self.handshake(reader, out) => client?,
            _ = stop.changed() => return Ok(()),
        };
        reader.set_max_frame(self.config.max_frame);
        send(out, Frame::Ready).await?;
        info!(%peer, client = %client.name, key = %client.key.id(), "client authenticated");
        let in_flight = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut work = JoinSet::new();
        let result = loop {
            let frame = tokio::select! {
                biased;
                // A failed message ends the connection.
                Some(done) = work.join_next(), if !work.is_empty() => {
                    match done {
                        Ok(Ok(())) => continue,
                        Ok(Err(fail)) => break Err(fail),
                        Err(_) => break Err(Fail::internal()),
                    }
                }
                _ = stop.changed() => break Ok(()),
                f = tokio::time::timeout(self.config.idle_timeout, reader.read_frame()) => f,
            };
            let frame = match frame {
                Err(_) => break Err(Fail::new(ErrorCode::Timeout, "idle timeout")),
                Ok(Err(ConnError::Closed)) => break Ok(()),
                Ok(Err(e)) => break Err(Fail::from_conn(e)),
                Ok(Ok(f)) => f,
            };
            let step = match frame {
                Frame::Send(first) => {
                    self.start_receive(reader, first, &client, &in_flight, out, &mut work)
                        .await
                }
                Frame::Fetch => self.deliver(&client, out).await,
                Frame::DeliveryAck { id, tag } => self.delivery_ack(&client, id, tag, out).await,
                Frame::Error { code, message } => {
                    debug!(%peer, ?code, %message, "client reported an error");
                    break Ok(());
                }
                other => Err(Fail::new(
                    ErrorCode::Protocol,
                    format!("unexpected {} frame", other.name()),
                )),
            };
            if let Err(fail) = step {
                break Err(fail);
            }
        };
        // Let acknowledged-or-failing work finish: an ack owed is an ack sent.
        while let Some(done) = work.join_next().await {
            if let Ok(Err(fail)) = done {
                return Err(fail);
            }
        }
        result
    }

    /// Receives one message and leaves its verification, storage and ack to a task, so the
    /// next message can arrive meanwhile (pipelining), at most `max_in_flight` at once.
    async fn start_receive<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        reader: &mut FrameReader<R>,
        first: Vec<u8>,
        client: &Trusted,
        in_flight: &Arc<Semaphore>,
        out: &mpsc::Sender<Frame>,
        work: &mut JoinSet<Result<(), Fail>>,
    ) -> Result<(), Fail> {
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::internal())?;
        // And one of the server-wide permits: what in-flight messages hold in memory (up to a
        // batch, or a whole asymmetric body, each) is bounded for the server as a whole, not
        // only per connection.
        let global = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::internal())?;
        let job = self.receive(reader, first, client).await?;
        let server = self.clone();
        let out = out.clone();
        let client = client.clone();
        work.spawn(async move {
            let _permits = (permit, global);
            server.finish_receive(job, &client, &out).await
        });
        Ok(())
    }

    /// The client proves it opened a delivered message: remove it, say so.
    async fn delivery_ack(
        &self,
        client: &Trusted,
        id: MessageId,
        tag: [u8; 32],
        out: &mpsc::Sender<Frame>,
    ) -> Result<(), Fail> {
        let removed = self
            .store
            .complete_outbox(&client.key.id().0, &id.0, &tag)
            .await
            .map_err(store_fail)?;
        if !removed {
            return Err(Fail::new(
                ErrorCode::BadAck,
                "delivery acknowledgement does not match a pending message",
            ));
        }
        info!(client = %client.name, id = %id, "delivery proven; message removed");
        send(out, Frame::Removed { id }).await
    }

    /// Hello, challenge, Auth. Returns the authenticated client.
    async fn handshake<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        out: &mpsc::Sender<Frame>,
    ) -> Result<Trusted, Fail> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        aws_lc_rs::rand::fill(&mut challenge).map_err(|_| Fail::internal())?;
        let server = self.identity.public().id();
        send(
            out,
            Frame::Hello {
                version: wire::PROTOCOL_VERSION,
                server,
                challenge,
            },
        )
        .await?;
        let frame = tokio::time::timeout(self.config.handshake_timeout, reader.read_frame())
            .await
            .map_err(|_| Fail::new(ErrorCode::Timeout, "handshake timeout"))?
            .map_err(Fail::from_conn)?;
        let Frame::Auth { client, signature } = frame else {
            return Err(Fail::new(ErrorCode::Protocol, "expected Auth"));
        };
        // A public-key operation, but up to 8192 bits: off the reactor.
        let clients = self.clients.clone();
        on_blocking_pool(move || {
            authenticate(&clients, &server, &challenge, &client, &signature).cloned()
        })
        .await?
        .ok_or_else(|| Fail::new(ErrorCode::AuthFailed, "authentication failed"))
    }

    /// Reads one sealed message (`Send`… `SendEnd`), checking its header against this
    /// connection first, and decrypting and verifying it on the blocking pool frame by frame as
    /// it arrives. Returns once `SendEnd` is read; the job then finishes the verification.
    ///
    /// If the message fails part-way, the rest of it is still read (and discarded) up to
    /// `SendEnd`: the peer learns of the failure at the same point whatever its cause.
    async fn receive<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        first: Vec<u8>,
        client: &Trusted,
    ) -> Result<ReceiveJob, Fail> {
        // The header may span frames.
        let mut head = first;
        while head.len() < HEADER_LEN {
            match self.next_data(reader).await? {
                Some(more) => head.extend_from_slice(&more),
                None => return Err(Fail::refused("message shorter than a header")),
            }
        }
        let header = Header::parse(&head)
            .map_err(|e| Fail::new(ErrorCode::Refused, format!("bad header: {e}")))?;
        self.check_header(&header, client)?;
        let opts = OpenOptions {
            max_plaintext: self.config.max_hybrid,
            asymmetric_limit: self.config.max_asymmetric,
        };
        let sender = client.key.clone();
        let opener = Opener::new(
            &head[..HEADER_LEN],
            self.identity.clone() as Arc<dyn Identity>,
            &sender,
            &opts,
        )
        .map_err(|e| Fail::refused(&e.to_string()))?;
        let intake = Intake {
            opener,
            blob: self.store.blob_writer(),
            plain: Zeroizing::new(Vec::new()),
            preview: self.config.log_text.then(|| Zeroizing::new(Vec::new())),
            header_left: HEADER_LEN,
        };
        let mut state: Result<Intake, OpenError> = Ok(intake);
        // Bytes are handed to the blocking pool in batches: a small message goes over in one
        // piece with its verification, after `SendEnd`, so the connection reads the next message
        // while this one is decrypted (pipelining), and a large one costs one hop per batch.
        let mut pending = head;
        // Sealed bytes may exceed the plaintext by the key, tags and signature: generous room.
        let cap = self.config.max_hybrid.saturating_add(64 << 20);
        let mut seen = pending.len() as u64;
        while let Some(more) = self.next_data(reader).await? {
            seen = seen.saturating_add(more.len() as u64);
            if seen > cap {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    "message larger than this server accepts",
                ));
            }
            if state.is_err() {
                // Failed already: read the rest of the message to its end, keep nothing.
                continue;
            }
            pending.extend_from_slice(&more);
            if pending.len() >= FEED_BATCH {
                let batch = std::mem::take(&mut pending);
                state = match state {
                    Ok(intake) => {
                        on_blocking_pool(move || {
                            let mut intake = intake;
                            intake.feed(&batch).map(|()| intake)
                        })
                        .await?
                    }
                    failed => failed,
                };
            }
        }
        let worker = tokio::task::spawn_blocking(move || {
            let mut intake = state?;
            intake.feed(&pending)?;
            intake.finish()
        });
        Ok(ReceiveJob { header, worker })
    }

    /// The next `Send` payload, or `None` at `SendEnd`.
    async fn next_data<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
    ) -> Result<Option<Vec<u8>>, Fail> {
        let frame = tokio::time::timeout(self.config.idle_timeout, reader.read_frame())
            .await
            .map_err(|_| Fail::new(ErrorCode::Timeout, "idle timeout inside a message"))?
            .map_err(Fail::from_conn)?;
        match frame {
            Frame::Send(data) => Ok(Some(data)),
            Frame::SendEnd => Ok(None),
            other => Err(Fail::new(
                ErrorCode::Protocol,
                format!("unexpected {} frame inside a message", other.name()),
            )),
        }
    }

    /// The header must name this client as sender and us as recipient, use an accepted mode,
    /// and be recent.
    fn check_header(&self, h: &Header, client: &Trusted) -> Result<(), Fail> {
        if h.sender != client.key.id() {
            return Err(Fail::refused(
                "the message's sender is not the authenticated client",
            ));
        }
        if h.recipient != self.identity.public().id() {
            return Err(Fail::refused("the message is not sealed for this server"));
        }
        if !self.config.accept.allows(h.mode) {
            return Err(Fail::new(
                ErrorCode::ModeNotAccepted,
                format!("this server does not accept {} messages", h.mode),
            ));
        }
        let now = envelope::unix_now();
        let window = self.config.time_window.as_secs();
        if h.created.abs_diff(now) > window {
            return Err(Fail::new(
                ErrorCode::Stale,
                format!(
                    "message time {} is outside the server's window of ±{window} s around {now}",
                    h.created
                ),
            ));
        }
        Ok(())
    }

    /// Waits for verification, stores durably, then acknowledges.
    async fn finish_receive(
        &self,
        job: ReceiveJob,
        client: &Trusted,
        out: &mpsc::Sender<Frame>,
    ) -> Result<(), Fail> {
        let verified = match job.worker.await {
            Ok(Ok(v)) => v,
            Ok(Err(OpenError::TooLarge { limit })) => {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    format!("message larger than this server's limit of {limit} bytes"),
                ));
            }
            Ok(Err(e)) => {
                // Whatever the cause, the peer sees the same words.
                warn!(client = %client.name, id = %job.header.message_id, error = %e, "message refused");
                return Err(Fail::refused("message failed verification"));
            }
            Err(_) => return Err(Fail::internal()),
        };
        let Verified {
            opened,
            body,
            preview,
        } = verified;
        let id = opened.header.message_id;
        let size = body.len();
        let record = InboxRecord {
            sender_key_id: client.key.id().0,
            sender_name: client.name.clone(),
            message_id: id.0,
            created: opened.header.created,
            received: envelope::unix_now(),
            mode: opened.header.mode.to_byte(),
            plaintext_len: opened.plaintext_len,
            content_hash: body.sha256(),
            ack_tag: opened.ack_tag,
            body,
        };
        let tag = match self.store.insert_inbox(record).await.map_err(store_fail)? {
            InsertOutcome::Inserted => {
                log_received(
                    client,
                    &opened,
                    size,
                    preview.as_deref().map(|p| p.as_slice()),
                );
                opened.ack_tag
            }
            InsertOutcome::Duplicate { ack_tag } => {
                info!(client = %client.name, %id, "retry of a stored message: same ack again");
                ack_tag
            }
            InsertOutcome::Conflict => {
                warn!(client = %client.name, %id, "replayed message id with different content");
                return Err(Fail::new(
                    ErrorCode::Replay,
                    "this message id was already used for a different message",
                ));
            }
        };
        send(out, Frame::Ack { id, tag }).await
    }

    /// Streams every message waiting for `client`, then `FetchDone`.
    async fn deliver(&self, client: &Trusted, out: &mpsc::Sender<Frame>) -> Result<(), Fail> {
        let pending = self
            .store
            .pending_outbox(&client.key.id().0)
            .await
            .map_err(store_fail)?;
        let count = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        for entry in pending {
            let body = self
                .store
                .open_outbox_body(&entry.recipient_key_id, &entry.message_id)
                .await
                .map_err(store_fail)?;
            let out2 = out.clone();
            let sent = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut body = body;
                let mut buf = vec![0u8; DATA_FRAME];
                loop {
                    let n = envelope::read_full(&mut body, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    if out2
                        .blocking_send(Frame::Deliver(buf[..n].to_vec()))
                        .is_err()
                    {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "reading an outbox message failed");
                    return Err(Fail::internal());
                }
                Err(_) => return Err(Fail::internal()),
            }
            send(out, Frame::DeliverEnd).await?;
            debug!(client = %client.name, id = %MessageId(entry.message_id), "delivered");
        }
        send(out, Frame::FetchDone { count }).await
    }
}

/// One log line per message. With `preview` (the server logs text), a short UTF-8 message is
/// shown as the classroom server printed it; anything else by size and id only.
fn log_received(client: &Trusted, opened: &Opened, size: u64, preview: Option<&[u8]>) {
    let text = preview
        .filter(|p| p.len() <= LOG_TEXT_MAX)
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|t| !t.chars().any(|c| c.is_control() && c != '\n'));
    let shown = match text {
        Some(text) => format!(": {text:?}"),
        None => format!(
            "; stored (read it with `letterlock server read {}`)",
            opened.header.message_id
        ),
    };
    info!(
        from = %client.name,
        key = %client.key.id(),
        mode = %opened.header.mode,
        bytes = opened.plaintext_len,
        sealed = size,
        id = %opened.header.message_id,
        "received: confidentiality, integrity and sender authentication verified{shown}"
    );
}

/// The handshake's check, public-key work only: the client's key is one we trust and its
/// signature covers this server, this connection's challenge and that key. `None` for either
/// failure alike (the log says which): the peer learns only "authentication failed".
pub fn authenticate<'a>(
    clients: &'a TrustList,
    server: &KeyId,
    challenge: &[u8; CHALLENGE_LEN],
    client: &KeyId,
    signature: &[u8],
) -> Option<&'a Trusted> {
    let transcript = wire::handshake_transcript(server, challenge, client);
    match clients.get(client) {
        Some(t) if t.key.verify_pss(&transcript, signature) => Some(t),
        found => {
            if found.is_none() {
                // Spend what a verification costs anyway, so the time to refuse does not tell a
                // peer whether a key id is trusted.
                if let Some(any) = clients.iter().next() {
                    let _ = any.key.verify_pss(&transcript, signature);
                }
            }
            warn!(
                key = %client,
                cause = if found.is_some() { "bad signature" } else { "untrusted key" },
                "handshake refused"
            );
            None
        }
    }
}

/// Runs CPU work (RSA, bulk crypto, file writes) on the blocking pool, off the reactor.
async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        warn!(error = %e, "a blocking task failed");
        Fail::internal()
    })
}

/// The writer task: frames out, in order; stops after an `Error` frame, or when the peer has not
/// taken our bytes for `stall` (a peer that stops reading must not hold its slot forever).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: FrameWriter<W>,
    mut rx: mpsc::Receiver<Frame>,
    stall: Duration,
) {
    while let Some(frame) = rx.recv().await {
        let mut is_error = matches!(frame, Frame::Error { .. });
        w.queue_frame(&frame);
        // Batch whatever else is ready into the same write, up to a bound: a delivery keeps
        // the channel full, and an unbounded batch would hold the whole message.
        while w.queued() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => {
                    is_error |= matches!(f, Frame::Error { .. });
                    w.queue_frame(&f);
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout(stall, w.flush()).await {
            Ok(Ok(())) if !is_error => {}
            Ok(Ok(())) => break,
            Ok(Err(_)) => break,
            Err(_) => {
                warn!("peer stopped reading; closing the connection");
                break;
            }
        }
    }
    let _ = w.shutdown().await;
}

async fn send(out: &mpsc::Sender<Frame>, frame: Frame) -> Result<(), Fail> {
    out.send(frame)
        .await
        .map_err(|_| Fail::new(ErrorCode::Internal, "connection closed"))
}

/// The blocking side of receiving one message: the opener, and the store's writer that keeps
/// the sealed bytes (messages stay encrypted at rest).
struct Intake {
    opener: Opener,
    blob: store::BlobWriter,
    /// Decrypted bytes of the current frame (wiped when dropped).
    plain: Zeroizing<Vec<u8>>,
    /// The first bytes of plaintext for the log line, when the server logs text.
    preview: Option<Zeroizing<Vec<u8>>>,
    /// Header bytes still to come, which the opener does not take.
    header_left: usize,
}

impl Intake {
    /// Takes the next sealed bytes (the header included, first).
    fn feed(&mut self, data: &[u8]) -> Result<(), OpenError> {
        use std::io::Write;
        self.blob.write_all(data)?;
        // The blob keeps the header too; the opener has it already.
        let skip = self.header_left.min(data.len());
        self.header_left -= skip;
        self.opener.update(&data[skip..], &mut self.plain)?;
        keep_preview(&mut self.preview, &mut self.plain);
        Ok(())
    }

    /// Verifies the signature and makes the sealed bytes durable in the store's folder.
    fn finish(self) -> Result<Verified, OpenError> {
        let Intake {
            opener,
            blob,
            mut plain,
            mut preview,
            ..
        } = self;
        let opened = opener.finish(&mut plain)?;
        keep_preview(&mut preview, &mut plain);
        let body = blob
            .finish()
            .map_err(|e| OpenError::Io(std::io::Error::other(e)))?;
        Ok(Verified {
            opened,
            body,
            preview,
        })
    }
}

/// Keeps the first bytes of `plain` for the log line (one more than fits, to know it did not
/// fit), then clears `plain`.
fn keep_preview(preview: &mut Option<Zeroizing<Vec<u8>>>, plain: &mut Zeroizing<Vec<u8>>) {
    if let Some(preview) = preview
        && preview.len() <= LOG_TEXT_MAX
    {
        let take = (LOG_TEXT_MAX + 1 - preview.len()).min(plain.len());
        preview.extend_from_slice(&plain[..take]);
    }
    plain.clear();
}

/// A message whose bytes have all arrived, being verified on the blocking pool.
struct ReceiveJob {
    header: Header,
    worker: tokio::task::JoinHandle<Result<Verified, OpenError>>,
}

/// What the blocking side hands back for a verified message.
struct Verified {
    opened: Opened,
    body: Body,
    /// The first bytes of plaintext, for the log line (when the server logs text).
    preview: Option<Zeroizing<Vec<u8>>>,
}

/// Why a connection ends: sent to the peer as an `Error` frame.
#[derive(Debug)]
struct Fail {
    code: ErrorCode,
    message: String,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }

    fn refused(message: &str) -> Self {
        Fail::new(ErrorCode::Refused, message)
    }

    fn internal() -> Self {
        Fail::new(ErrorCode::Internal, "internal server error")
    }

    fn from_conn(e: ConnError) -> Self {
        match e {
            ConnError::Wire(w) => Fail::new(ErrorCode::Protocol, w.to_string()),
            other => Fail::new(ErrorCode::Protocol, other.to_string()),
        }
    }
}

fn store_fail(e: store::StoreError) -> Fail {
    warn!(error = %e, "store error");
    Fail::internal()
}

/// Why a message from the server could not be queued for a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error(transparent)]
    Seal(#[from] envelope::SealError),
    #[error("store error: {0}")]
    Store(#[from] store::StoreError),
}

/// Seals `input` from the server to client `to` and queues it in the store's outbox; a running
/// server delivers it at that client's next fetch. Sealing runs on the calling thread: call it
/// from a command or the blocking pool, not from a busy reactor.
pub async fn queue_for_client<S: Store>(
    store: &S,
    identity: &dyn Identity,
    to: &Trusted,
    input: impl std::io::Read,
    opts: &envelope::SealOptions,
) -> Result<envelope::Sealed, QueueError> {
    let mut blob = store.blob_writer();
    let sealed = envelope::seal(identity, &to.key, opts, input, &mut blob)?;
    let body = blob.finish()?;
    store
        .enqueue_outbox(store::OutboxRecord {
            recipient_key_id: to.key.id().0,
            recipient_name: to.name.clone(),
            message_id: sealed.header.message_id.0,
            created: sealed.header.created,
            mode: sealed.header.mode.to_byte(),
            plaintext_len: sealed.plaintext_len,
            expected_ack_tag: sealed.ack_tag,
            body,
        })
        .await?;
    Ok(sealed)
}
