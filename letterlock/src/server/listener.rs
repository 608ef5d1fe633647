//! The accept loop. Admission (`admission`) decides who is served: version 1 takes one of
//! [`ServerConfig::max_connections`] slots at accept, and one more is told "busy" and closed at
//! once, so a flood costs one small write per socket. Version 2 keeps unauthenticated
//! connections in their own slots (the oldest closed when full), limits new connections per
//! source and concurrent handshakes, and takes an authenticated slot only after the TLS
//! handshake. Shutdown stops accepting, then gives connections a bounded grace.
//!
//! [`ServerConfig::max_connections`]: super::ServerConfig::max_connections

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::store::Store;
use crate::tls;
use crate::wire::{ErrorCode, Frame, FrameWriter};

use super::Server;
use super::admission::PreAuth;
use super::handler::{self, Connection};

/// How long the accept loop waits after a failed accept (EMFILE and friends) instead of
/// spinning on an error that will not clear at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl<S: Store> Server<S> {
    /// Serves `listener` until `shutdown` completes; then stops accepting, gives in-flight
    /// connections [`ServerConfig::shutdown_grace`] to finish, and returns.
    ///
    /// [`ServerConfig::shutdown_grace`]: super::ServerConfig::shutdown_grace
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        // A server following its store reads the list now, for this log line (and a store
        // that cannot be read shows at once).
        if let Err(e) = self.trust.now(&*self.store).await {
            warn!(error = %e, "cannot read the trusted clients; handshakes fail until it can");
        }
        info!(
            addr = %listener.local_addr()?,
            key = %self.identity.public().id(),
            clients = self.trust.cached().clients.len(),
            "server listening"
        );
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    let server = self.clone();
                    let stop = stop_rx.clone();
                    if server.tls {
                        // Version 2. Refused (busy, or the source over its rate): close at
                        // once, before any TLS byte. A TLS peer cannot read a plain Error
                        // frame, and answering in TLS would cost a signature.
                        match self.admission.admit(peer.ip(), Instant::now()) {
                            Ok(ticket) => {
                                tasks.spawn(server.serve_tls(socket, peer, ticket, stop));
                            }
                            Err(refusal) => {
                                debug!(%peer, ?refusal, "connection refused before TLS");
                                drop(socket);
                            }
                        }
                        continue;
                    }
                    // Version 1: the permit moves into the connection's task and is released
                    // when it ends.
                    let permit = self.admission.slot_now();
                    tasks.spawn(async move {
                        let (r, w) = socket.into_split();
                        match permit {
                            Ok(_permit) => {
                                let conn = Connection::open(r, w, peer, &server.config);
                                handler::serve_connection(server, conn, stop).await
                            }
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

    /// Version 2: the TLS handshake in a pre-authentication slot (within the handshake
    /// timeout; abandoned if evicted for a newer connection or at shutdown), then an
    /// authenticated slot and the frames of the client it authenticated.
    async fn serve_tls(
        self: Arc<Self>,
        io: TcpStream,
        peer: SocketAddr,
        mut ticket: PreAuth,
        mut stop: watch::Receiver<bool>,
    ) {
        let timeout = self.config.handshake_timeout;
        // The permit first, then the trust list: handshakes that wait for a permit do not read
        // the store, and a change committed while one waited is seen by it.
        let gate = async {
            let permit = self.admission.handshake_permit().await;
            let snapshot = self.trust.now(&*self.store).await.map_err(|e| {
                warn!(%peer, error = %e, "cannot read the trusted clients; handshake abandoned");
                tls::TlsError::TrustUnavailable(e.to_string())
            })?;
            let config = snapshot.tls.clone().ok_or_else(|| {
                tls::TlsError::TrustUnavailable("no TLS configuration".to_owned())
            })?;
            Ok((permit, config, snapshot.clients.clone()))
        };
        let accepted = tokio::select! {
            a = tls::accept_gated(io, timeout, gate) => a,
            _ = ticket.evicted() => {
                debug!(%peer, "unauthenticated connection closed to admit a newer one");
                return;
            }
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, session, client)) => {
                debug!(%peer, version = ?session.version, group = ?session.group, delegated = session.delegated, "TLS handshake done");
                let (r, w) = tokio::io::split(stream);
                let conn = Connection::open_v2(r, w, peer, &self.config);
                match ticket.authenticated() {
                    Ok(_slot) => handler::serve_authenticated(self, conn, client, stop).await,
                    // The authenticated slots filled during the handshake: say so inside TLS.
                    Err(_) => handler::refuse_busy(conn).await,
                }
            }
            // A peer that leaves before finishing (a port check) is routine; a handshake that
            // fails on its content (a forged or replayed one, an unknown key) is for the
            // operator to see.
            Err(e) if e.is_peer_gone() || matches!(e, tls::TlsError::Timeout) => {
                debug!(%peer, error = %e, "TLS handshake abandoned")
            }
            Err(e) => {
                // The error says "TLS handshake failed" itself (found by a trial run: the log
                // line said it twice).
                super::peer_log::within_budget(
                    || info!(%peer, error = %e, "connection refused in the handshake"),
                )
            }
        }
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
        let conn = Connection::open(r, w, peer, &self.config);
        handler::serve_connection(self, conn, stop_rx).await;
    }
}
