//! One connection, from hello to close.
//!
//! The listener opens a [`Connection`] (a [`FrameReader`], and a writer task fed by a bounded
//! queue) and calls [`serve_connection`], which runs the handshake and hands an authenticated
//! peer to a [`Handler`]. The handler owns everything that connection needs: the reader, the
//! outbound queue, the authenticated client, the in-flight permits and work, and the stop
//! signal. Its methods here read frames and dispatch them; receiving and delivering are in
//! `receive.rs` and `deliver.rs`.
//!
//! Every way out sends the peer an `Error` frame saying why (unless the peer simply closed),
//! then closes: see [`Connection::close`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::keys::Trusted;
use crate::store::Store;
use crate::wire::handshake::{HandshakeError, MAX_HANDSHAKE_FRAME, ServerHandshake};
use crate::wire::{ConnError, DATA_FRAME, ErrorCode, Frame, FrameReader, FrameWriter};

use super::trust::TrustError;
use super::{Fail, Server, ServerConfig, on_blocking_pool};

/// Frames queued for the writer task: acks and deliveries wait here while the socket is slow,
/// and a full queue makes their producers wait (backpressure) rather than buffer without bound.
const OUTBOUND_QUEUE: usize = 64;

/// Most bytes the writer task gathers into one write (many small acks, or a few deliveries).
const WRITE_BATCH: usize = 1024 * 1024;

/// How long a connection that failed keeps reading so the peer can receive our Error frame.
const LINGER: Duration = Duration::from_millis(500);

/// Serves one connection until the peer is done, the connection fails, or `stop` is signalled.
pub(super) async fn serve_connection<S, R>(
    server: Arc<Server<S>>,
    mut conn: Connection<R>,
    mut stop: watch::Receiver<bool>,
) where
    S: Store,
    R: AsyncRead + Unpin + Send + 'static,
{
    // A peer that has not authenticated yet is simply closed at shutdown.
    let client = tokio::select! {
        client = handshake(&server, &mut conn) => client,
        _ = stop.changed() => return conn.close(Ok(())).await,
    };
    match client {
        Ok(client) => {
            conn.reader.set_max_frame(server.config.max_frame);
            Handler::new(server, conn, client, stop).run().await;
        }
        Err(fail) => conn.close(Err(fail)).await,
    }
}

/// Serves a connection whose client already proved its key in the TLS handshake (protocol
/// version 2): `Ready`, then its frames. No `Hello`/`Auth` inside: TLS authenticated both ends.
pub(super) async fn serve_authenticated<S, R>(
    server: Arc<Server<S>>,
    mut conn: Connection<R>,
    client: Trusted,
    stop: watch::Receiver<bool>,
) where
    S: Store,
    R: AsyncRead + Unpin + Send + 'static,
{
    conn.reader.set_max_frame(server.config.max_frame);
    if let Err(fail) = send(&conn.out, Frame::Ready).await {
        return conn.close(Err(fail)).await;
    }
    info!(peer = %conn.peer, client = %crate::text::quoted(&client.name), key = %client.key.id(), "client authenticated (TLS)");
    Handler::new(server, conn, client, stop).run().await;
}

/// A version 2 connection that finished its handshake when every authenticated slot was taken
/// (they filled while it was in the handshake): `Error` "busy" inside TLS, then close.
pub(super) async fn refuse_busy<R: AsyncRead + Unpin>(conn: Connection<R>) {
    let busy = Fail::new(
        ErrorCode::Unavailable,
        "server busy: too many connections; try again shortly",
    );
    conn.close(Err(busy)).await;
}

/// Hello, challenge, Auth, Ready. Returns the authenticated client.
async fn handshake<S: Store, R: AsyncRead + Unpin>(
    server: &Server<S>,
    conn: &mut Connection<R>,
) -> Result<Trusted, Fail> {
    let hs = ServerHandshake::new(server.identity.public().id()).map_err(|_| Fail::internal())?;
    send(&conn.out, hs.hello()).await?;
    let answer = tokio::time::timeout(server.config.handshake_timeout, conn.reader.read_frame())
        .await
        .map_err(|_| Fail::new(ErrorCode::Timeout, "handshake timeout"))?
        .map_err(Fail::from_conn)?;
    // The trusted clients as of now (a change committed before this point is honoured).
    let clients = server
        .trust
        .now(&*server.store)
        .await
        .map_err(|e| trust_unreadable(conn.peer, e))?
        .clients
        .clone();
    // A public-key operation, but up to 8192 bits: off the reactor.
    let client = on_blocking_pool(move || hs.check(&clients, answer))
        .await?
        .map_err(|e| match e {
            HandshakeError::AuthFailed => Fail::new(ErrorCode::AuthFailed, "authentication failed"),
            other => Fail::new(ErrorCode::Protocol, other.to_string()),
        })?;
    send(&conn.out, Frame::Ready).await?;
    info!(peer = %conn.peer, client = %crate::text::quoted(&client.name), key = %client.key.id(), "client authenticated");
    Ok(client)
}

/// The trusted clients could not be read: "unavailable" when the store's database could not
/// be reached (the client tries again, as when a message cannot be stored; nothing was
/// acked), "internal" otherwise.
pub(super) fn trust_unreadable(peer: SocketAddr, e: TrustError) -> Fail {
    match e {
        // Logged there.
        TrustError::Store(e) if e.is_unavailable() => Fail::store(e),
        other => {
            warn!(%peer, error = %other, "cannot read the trusted clients");
            Fail::internal()
        }
    }
}

/// A connection's frames in and out.
pub(super) struct Connection<R> {
    /// Frames from the peer; only the connection's own loop reads them.
    pub(super) reader: FrameReader<R>,
    /// Frames to the peer, through the writer task: acks of pipelined messages and deliveries
    /// come from several tasks, and one task owns the socket's write half.
    pub(super) out: mpsc::Sender<Frame>,
    /// The writer task; awaited at close so every queued frame is written first.
    writer: JoinHandle<()>,
    /// Bytes of `Deliver` frames that may be queued and not yet written
    /// ([`ServerConfig::delivery_window`]): a delivery takes permits before queueing a frame,
    /// the writer gives them back once the frame's bytes are on the socket, and closes the
    /// semaphore when it stops (so a delivery never waits on a dead connection).
    pub(super) delivery_window: Arc<Semaphore>,
    /// For logs.
    pub(super) peer: SocketAddr,
}

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Starts the writer task over `w`. Until the peer is authenticated, the reader accepts
    /// only a handshake-sized frame; a peer that stops reading our frames for the idle timeout
    /// is dropped.
    pub(super) fn open<W>(r: R, w: W, peer: SocketAddr, config: &ServerConfig) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let reader = FrameReader::new(r, MAX_HANDSHAKE_FRAME.min(config.max_frame));
        Self::start(reader, FrameWriter::new(w), peer, config)
    }

    /// As [`Connection::open`], for a version 2 connection (inside TLS): both directions
    /// padded to buckets (docs/PROTOCOL.md, "Frame padding").
    pub(super) fn open_v2<W>(r: R, w: W, peer: SocketAddr, config: &ServerConfig) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let reader = FrameReader::new(r, MAX_HANDSHAKE_FRAME.min(config.max_frame)).with_padding();
        Self::start(reader, FrameWriter::new(w).with_padding(), peer, config)
    }

    fn start<W>(
        reader: FrameReader<R>,
        writer: FrameWriter<W>,
        peer: SocketAddr,
        config: &ServerConfig,
    ) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let stall = config.idle_timeout;
        let delivery_window = Arc::new(Semaphore::new(delivery_window(config)));
        let writer = write_loop(writer, rx, stall, delivery_window.clone());
        Connection {
            reader,
            out,
            writer: tokio::spawn(writer),
            delivery_window,
            peer,
        }
    }

    /// Ends the connection: tells the peer why it failed (if it did), lets the writer send
    /// everything queued, and, after a failure, lingers.
    async fn close(mut self, result: Result<(), Fail>) {
        if let Err(fail) = &result {
            // Seen by the operator at the default level: a record that failed authentication
            // (an altered stream), a protocol violation, a refusal. An idle timeout is routine.
            if fail.routine {
                debug!(peer = %self.peer, error = %fail.message, "closing connection");
            } else {
                super::peer_log::within_budget(
                    || info!(peer = %self.peer, code = ?fail.code, error = %fail.message, "closing a connection on an error"),
                );
            }
            let _ = self.out.send(Frame::error(fail.code, &fail.message)).await;
        }
        drop(self.out);
        let _ = self.writer.await;
        if result.is_err() {
            // Lingering close: closing a socket with unread input makes the kernel send a reset,
            // which can destroy the Error frame before the peer reads it. Read (and discard)
            // what the peer still sends, briefly, so it gets to see why.
            let drain = async { while self.reader.read_frame().await.is_ok() {} };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
    }
}

/// An authenticated connection's state, as mini-redis's `Handler`: everything a frame handler
/// needs is a field, so no method passes connection state around.
pub(super) struct Handler<S, R> {
    /// What all connections share: the key, the trust list, the store, the limits.
    pub(super) server: Arc<Server<S>>,
    /// The frames in and out.
    pub(super) conn: Connection<R>,
    /// Who the peer proved to be in the handshake; every message it sends must be from this
    /// key, and it fetches only what waits for this key.
    pub(super) client: Trusted,
    /// This connection's share of messages in flight ([`ServerConfig::max_in_flight`]).
    ///
    /// [`ServerConfig::max_in_flight`]: super::ServerConfig::max_in_flight
    pub(super) in_flight: Arc<Semaphore>,
    /// Messages received and being verified, stored and acknowledged (pipelining).
    pub(super) work: JoinSet<Result<(), Fail>>,
    /// Signalled when the server shuts down.
    pub(super) stop: watch::Receiver<bool>,
    /// Outbox messages this connection's fetches leased and the client has not acked yet,
    /// with when the latest lease was taken: released when the connection ends, so another
    /// fetch need not wait for the lease to expire ([`Store::release_outbox`]).
    pub(super) leased: Leased,
}

/// The leases a connection holds ([`Handler::leased`]).
#[derive(Debug, Default)]
pub(super) struct Leased {
    pub(super) ids: Vec<crate::store::MessageId>,
    /// Taken just before the oldest `lease_outbox` call whose leases are still held: every
    /// lease this connection holds ends no earlier than this plus
    /// [`crate::store::DELIVERY_LEASE`].
    pub(super) since: Option<std::time::Instant>,
}

impl<S: Store, R: AsyncRead + Unpin + Send + 'static> Handler<S, R> {
    fn new(
        server: Arc<Server<S>>,
        conn: Connection<R>,
        client: Trusted,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Handler {
            in_flight: Arc::new(Semaphore::new(server.config.max_in_flight)),
            server,
            conn,
            client,
            work: JoinSet::new(),
            stop,
            leased: Leased::default(),
        }
    }

    /// Waits for room for one more message in flight: one of this connection's permits
    /// ([`ServerConfig::max_in_flight`]) and one of the server's, since what in-flight messages
    /// hold in memory (up to a batch, or a whole asymmetric body, each) is bounded for the
    /// server as a whole, not only per connection. The message's job holds both until it ends.
    pub(super) async fn in_flight_permits(
        &self,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Fail> {
        let mine = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::internal())?;
        let global = self.server.in_flight_permit().await?;
        Ok((mine, global))
    }

    /// Serves frames until the peer is done or something fails; then lets the work in flight
    /// finish (an ack owed is an ack sent) and closes. A message that fails meanwhile is the
    /// reason the connection ends, and the work after it is abandoned.
    async fn run(mut self) {
        let mut result = self.serve().await;
        while let Some(done) = self.work.join_next().await {
            if let Ok(Err(fail)) = done {
                result = Err(fail);
                break;
            }
        }
        self.release_leases().await;
        let Handler { conn, work, .. } = self;
        // Abandoned work holds senders of the outbound queue; the writer ends only once they
        // are gone.
        drop(work);
        conn.close(result).await;
    }

    /// Releases the leases of messages delivered (or about to be) and not acked, however the
    /// connection ended. Only while they are surely still this connection's: within half the
    /// lease of the oldest fetch still unacked (clock differences between this machine and the database
    /// stay far below that); later, they expire on their own soon anyway, and by then another
    /// fetch may hold a fresh lease that releasing would break. A failure only delays the
    /// messages until the lease expires: logged, not passed on.
    async fn release_leases(&mut self) {
        let ids = std::mem::take(&mut self.leased.ids);
        let Some(since) = self.leased.since.take() else {
            return;
        };
        if ids.is_empty() || since.elapsed() >= crate::store::DELIVERY_LEASE / 2 {
            return;
        }
        let released = self
            .server
            .store
            .release_outbox(&self.client.key.id().0, &ids)
            .await;
        match released {
            Ok(()) => debug!(
                count = ids.len(),
                "released the leases of unacked deliveries"
            ),
            Err(e) => {
                warn!(error = %e, "could not release delivery leases; they expire on their own")
            }
        }
    }

    /// Reads frames and dispatches each one.
    async fn serve(&mut self) -> Result<(), Fail> {
        loop {
            let frame = tokio::select! {
                biased;
                // A failed message ends the connection.
                Some(done) = self.work.join_next(), if !self.work.is_empty() => {
                    match done {
                        Ok(Ok(())) => continue,
                        Ok(Err(fail)) => return Err(fail),
                        Err(_) => return Err(Fail::internal()),
                    }
                }
                _ = self.stop.changed() => return Ok(()),
                f = tokio::time::timeout(self.server.config.idle_timeout, self.conn.reader.read_frame()) => f,
            };
            let frame = match frame {
                Err(_) => return Err(Fail::new(ErrorCode::Timeout, "idle timeout")),
                Ok(Err(ConnError::Closed)) => return Ok(()),
                Ok(Err(e)) => return Err(Fail::from_conn(e)),
                Ok(Ok(f)) => f,
            };
            match frame {
                Frame::Send(first) => {
                    self.still_trusted().await?;
                    self.start_receive(first).await?
                }
                Frame::Fetch => {
                    self.still_trusted().await?;
                    self.deliver().await?
                }
                Frame::DeliveryAck { id, tag } => self.delivery_ack(id, tag).await?,
                // Client to client (relay.rs): protocol version 2 only.
                Frame::Relay { commitment } => {
                    self.still_trusted().await?;
                    self.start_relay(commitment).await?
                }
                Frame::Directory => {
                    self.still_trusted().await?;
                    self.send_directory().await?
                }
                Frame::Receipts { ids } => {
                    self.still_trusted().await?;
                    self.send_receipts(ids).await?
                }
                Frame::Error { code, message } => {
                    debug!(peer = %self.conn.peer, ?code, error_text = %crate::text::quoted(&message), "client reported an error");
                    return Ok(());
                }
                other => {
                    return Err(Fail::new(
                        ErrorCode::Protocol,
                        format!("unexpected {} frame", other.name()),
                    ));
                }
            }
        }
    }
}

impl<S: Store, R> Handler<S, R> {
    /// Refuses the request if this connection's key is no longer trusted (`server untrust`, or
    /// replaced by a rotation) as of a snapshot at most [`ServerConfig::trust_recheck`] old.
    /// The connection then ends with the handshake's refusal, `AuthFailed`; if the store
    /// cannot be reached to check, with `Unavailable` ([`trust_unreadable`]).
    ///
    /// [`ServerConfig::trust_recheck`]: super::ServerConfig::trust_recheck
    async fn still_trusted(&self) -> Result<(), Fail> {
        let snapshot = self
            .server
            .trust
            .recent(&*self.server.store, self.server.config.trust_recheck)
            .await
            .map_err(|e| trust_unreadable(self.conn.peer, e))?;
        if snapshot.clients.get(&self.client.key.id()).is_some() {
            return Ok(());
        }
        info!(peer = %self.conn.peer, client = %crate::text::quoted(&self.client.name), key = %self.client.key.id(), "client no longer trusted; closing its connection");
        Err(Fail::new(
            ErrorCode::AuthFailed,
            "authentication failed: this client's key is no longer trusted",
        ))
    }
}

/// Queues a frame for the writer task.
pub(super) async fn send(out: &mpsc::Sender<Frame>, frame: Frame) -> Result<(), Fail> {
    out.send(frame).await.map_err(|_| Fail::peer_gone())
}

/// [`ServerConfig::delivery_window`] in semaphore permits (one per byte), at least one whole
/// `Deliver` frame so a delivery always makes progress.
pub(super) fn delivery_window(config: &ServerConfig) -> usize {
    config.delivery_window.clamp(DATA_FRAME, u32::MAX as usize)
}

/// Bytes of delivery counted against the window for `frame`.
fn delivery_bytes(frame: &Frame) -> usize {
    match frame {
        Frame::Deliver(data) => data.len(),
        _ => 0,
    }
}

/// The writer task: frames out, in order; stops after an `Error` frame, or when the peer has not
/// taken our bytes for `stall` (a peer that stops reading must not hold its slot forever).
/// Gives the delivery window back as `Deliver` bytes reach the socket, and closes it when done.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: FrameWriter<W>,
    mut rx: mpsc::Receiver<Frame>,
    stall: Duration,
    window: Arc<Semaphore>,
) {
    while let Some(frame) = rx.recv().await {
        let mut is_error = matches!(frame, Frame::Error { .. });
        let mut delivered = delivery_bytes(&frame);
        w.queue_frame(&frame);
        drop(frame);
        // Batch whatever else is ready into the same write, up to a bound: a delivery keeps
        // the channel full, and an unbounded batch would hold the whole message.
        while w.queued() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => {
                    is_error |= matches!(f, Frame::Error { .. });
                    delivered += delivery_bytes(&f);
                    w.queue_frame(&f);
                }
                Err(_) => break,
            }
        }
        let flushed = tokio::time::timeout(stall, w.flush()).await;
        if matches!(flushed, Ok(Ok(()))) {
            window.add_permits(delivered);
        }
        match flushed {
            Ok(Ok(())) if !is_error => {}
            Ok(Ok(())) => break,
            Ok(Err(_)) => break,
            Err(_) => {
                warn!("peer stopped reading; closing the connection");
                break;
            }
        }
    }
    window.close();
    let _ = w.shutdown().await;
}
