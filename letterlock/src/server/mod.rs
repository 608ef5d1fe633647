//! The server: accepts clients it trusts, receives their sealed messages into the durable
//! mailbox, and hands each client the messages waiting for it.
//!
//! Per connection (docs/PROTOCOL.md, "Network protocol"):
//! 1. Version 1: `Hello` with a fresh challenge; the client answers `Auth`
//!    ([`crate::wire::handshake`]). Only public-key work happens before the client is
//!    authenticated: an unknown peer never costs us an RSA private operation.
//!    Version 2 ([`Server::with_tls`]): a TLS 1.3 handshake authenticates both ends
//!    ([`crate::tls`]; the server signs in every handshake), then `Ready`.
//! 2. Then any number of messages (`Send`… `SendEnd`, pipelined; each answered by `Ack` once it
//!    is durable) and fetches (`Fetch` → `Deliver`… `DeliverEnd` per message, `FetchDone`; the
//!    client proves each with `DeliveryAck`, and only then is it removed).
//! 3. Version 2 only, client to client (docs/PROTOCOL.md §15): `Relay` + a message sealed for
//!    another trusted client, stored unopened and answered `Stored`; `Directory` → the trusted
//!    clients, each entry signed by the server's key; `Receipts` → the recipients' ack tags of
//!    messages this client relayed.
//!
//! # Layout
//! - this file: [`Server`] (what every connection shares), [`ServerConfig`], and `Fail`, the
//!   reason a connection ends.
//! - `listener`: the accept loop ([`Server::run`], [`Server::serve_stream`]).
//! - `admission`: who gets a handshake and who keeps a slot (version 2's defence against
//!   handshake floods and slowloris).
//! - `handler`: one connection: its frames in and out, the handshake, and the loop that
//!   dispatches each frame (`Handler` owns the connection's state).
//! - `receive`: one incoming message, from `Send` to `Ack`.
//! - `relay`: client to client: a message relayed to another client (`Relay`, `Send`…,
//!   `Stored`), unopened; receipts; the signed directory of trusted clients.
//! - `deliver`: the outbox: [`queue_for_client`] fills it, `Fetch` empties it.
//! - `trust`: the trusted clients as of each handshake: a fixed list, or the store's, re-read
//!   when its trust generation moves ([`Server::trust_from_store`]).
//!
//! Invariants: nothing is acknowledged before it is fsynced; RSA and bulk crypto run on the
//! blocking pool, never on the reactor; every limit is a named field of [`ServerConfig`].

mod admission;
mod deliver;
mod handler;
mod listener;
mod peer_log;
mod receive;
mod relay;
mod trust;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::envelope::{self, Mode};
use crate::keys::{Identity, TrustList};
use crate::store::{self, Store};
use crate::tls::{self, TlsError, TlsOptions};
use crate::wire::{self, ConnError, ErrorCode};

pub use deliver::{QueueError, queue_for_client};
pub use receive::{AsymmetricBudget, ReceiveStats};

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
    /// Authenticated connections served at once. Version 1: one more is told "busy" and
    /// closed. Version 2: taken only once the TLS handshake proved a trusted key, so sockets
    /// that never authenticate cannot hold them; when all are taken a new connection is closed
    /// before any TLS byte (busy; docs/PROTOCOL.md §13 "Admission").
    pub max_connections: usize,
    /// Time a new connection has to authenticate. Short: under a slowloris wave, a
    /// pre-authentication slot is held at most this long.
    pub handshake_timeout: Duration,
    /// Version 2: connections still in the TLS handshake held at once, apart from the
    /// authenticated ones. When full, the OLDEST is closed to make room for the new one, so a
    /// client that just arrived gets its handshake done while a wave of idle sockets cycles.
    /// Each costs a socket and a TLS read buffer.
    pub max_pre_auth: usize,
    /// Version 2: TLS handshakes past their ClientHello at once. Each costs the server an RSA
    /// signature; the cap keeps a handshake flood from queueing unbounded private-key work.
    pub max_handshakes: usize,
    /// Version 2: new connections a second per source address (IPv4 address or IPv6 /64): the
    /// steady rate at which one source can make the server sign.
    pub source_rate: u32,
    /// Version 2: new connections a quiet source may open at once (a classroom behind one NAT
    /// address connecting together). A source over its bucket is closed before any TLS byte.
    pub source_burst: u32,
    /// Version 2: most source addresses tracked for `source_rate` (about 64 bytes each): full
    /// buckets are forgotten first, then the one seen longest ago.
    pub max_sources: usize,
    /// Bytes of a delivery queued for one connection and not yet written to its socket: a
    /// client that fetches and stops reading holds at most this much of the message (and one
    /// server-wide in-flight permit) until the stall timeout. At least one `Deliver` frame.
    pub delivery_window: usize,
    /// Time an authenticated connection may stay silent between frames.
    pub idle_timeout: Duration,
    /// A server following its store ([`Server::trust_from_store`]): how old the trust snapshot
    /// may be when an authenticated connection checks, before each message and fetch, that its
    /// key is still trusted. An untrust or a rotation ends connections already open at their
    /// next request after at most this long, for at most one store read per this period
    /// (handshakes always read the store's trust generation).
    pub trust_recheck: Duration,
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
    /// (each holds at most a 256 KiB batch, or an asymmetric body of about 1.3 MiB). A message
    /// being delivered counts as one (holding at most `delivery_window` bytes).
    pub max_in_flight_total: usize,
    /// Time in-flight work gets to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Log the text of short UTF-8 messages, as the classroom server printed them. Off (the
    /// default), the log says only who sent how much: a message's text in a log file or a
    /// journal outlives the message and is read by whoever reads the logs. The command line
    /// turns it on when its log is a terminal.
    pub log_text: bool,
    /// Asymmetric-mode bytes each client may have decrypted per second (one RSA private
    /// operation per block): one client cannot monopolise the server's CPU.
    pub asymmetric_budget: AsymmetricBudget,
    /// Relayed messages that may wait for one recipient: past it a relay to that recipient is
    /// refused (code 9) before its bytes are stored, so no trusted client can fill another's
    /// outbox (and the server's disk) without limit. The server's own messages do not count.
    pub max_waiting_relayed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            accept: Accept::Both,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            max_pre_auth: 512,
            max_handshakes: 32,
            source_rate: 20,
            source_burst: 64,
            max_sources: 4096,
            delivery_window: 2 * wire::DATA_FRAME,
            idle_timeout: Duration::from_secs(120),
            trust_recheck: Duration::from_secs(1),
            max_hybrid: 1 << 30,
            max_asymmetric: envelope::DEFAULT_ASYMMETRIC_LIMIT,
            max_frame: wire::DEFAULT_MAX_FRAME,
            time_window: Duration::from_secs(600),
            max_in_flight: 64,
            max_in_flight_total: 256,
            shutdown_grace: Duration::from_secs(10),
            log_text: false,
            asymmetric_budget: AsymmetricBudget::default(),
            max_waiting_relayed: 10_000,
        }
    }
}

/// What every connection shares; each connection's own state lives in its `Handler`.
pub struct Server<S> {
    /// Connection slots, pre-authentication slots and per-source limits.
    admission: Arc<admission::Admission>,
    /// Permits for messages in flight, server-wide ([`ServerConfig::max_in_flight_total`]).
    in_flight: Arc<Semaphore>,
    /// The server's private key: it opens messages sealed to the server and names the server
    /// in the handshake. A trait object, so an agent or a hardware key can stand in.
    identity: Arc<dyn Identity>,
    /// The clients allowed to connect, by key id: fixed, or followed in the store.
    trust: trust::ClientTrust,
    /// The durable mailbox.
    store: Arc<S>,
    config: ServerConfig,
    /// Protocol version 2 ([`Server::with_tls`]): TLS 1.3 under the frames; the configuration
    /// of each trust list lives in `trust`. False: the plain version 1 wire.
    tls: bool,
    /// Per-client asymmetric budgets and the receive counters ([`Server::receive_stats`]).
    receiving: receive::Receiving,
    /// The signed directory of trusted clients, signed once per trust generation.
    directory: relay::DirectoryCache,
}

impl<S: Store> Server<S> {
    pub fn new(
        identity: Arc<dyn Identity>,
        clients: TrustList,
        store: Arc<S>,
        config: ServerConfig,
    ) -> Self {
        Server {
            admission: admission::Admission::new(&config),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_total)),
            identity,
            trust: trust::ClientTrust::fixed(clients),
            store,
            receiving: receive::Receiving::new(&config.asymmetric_budget),
            directory: relay::DirectoryCache::default(),
            config,
            tls: false,
        }
    }

    /// Takes the trusted clients from the store ([`Store::trusted_clients`]) instead of the
    /// list given to [`Server::new`], and follows its changes: a client trusted, replaced or
    /// removed while the server runs is accepted or refused from its next handshake, without a
    /// restart. Before each handshake the server reads the store's trust generation (one
    /// indexed read) and re-reads the list only when it moved.
    pub fn trust_from_store(mut self) -> Self {
        self.trust.follow_store();
        self
    }

    /// One of the server-wide permits for a message in flight, received or delivered: what
    /// such messages hold in memory is bounded for the server as a whole, not only per
    /// connection. Held until the message is done.
    async fn in_flight_permit(&self) -> Result<OwnedSemaphorePermit, Fail> {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::internal())
    }

    /// Serves protocol version 2 (docs/PROTOCOL.md, "Version 2: TLS 1.3 profile") instead of
    /// the plain version 1 wire: every connection starts with a TLS 1.3 handshake, within
    /// [`ServerConfig::handshake_timeout`], that authenticates both ends with their keys; a
    /// client whose key is not in the trust list, or that does not offer ALPN `letterlock/2`,
    /// fails it. There is no fallback to version 1 on the same server.
    pub fn with_tls(mut self, options: TlsOptions) -> Result<Self, TlsError> {
        self.trust
            .set_tls(tls::ServerTls::new(self.identity.clone(), &options)?)?;
        self.tls = true;
        Ok(self)
    }
}

/// Why a connection ends: sent to the peer as an `Error` frame.
#[derive(Debug)]
struct Fail {
    code: ErrorCode,
    message: String,
    /// The way connections routinely end (the peer was silent too long, or left), which the
    /// operator need not see at the default level.
    routine: bool,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
            routine: code == ErrorCode::Timeout,
        }
    }

    fn refused(message: &str) -> Self {
        Fail::new(ErrorCode::Refused, message)
    }

    fn internal() -> Self {
        Fail::new(ErrorCode::Internal, "internal server error")
    }

    /// The connection's writer is gone: the peer left, or its connection broke. Routine, not
    /// the server's error (found by a trial run: a fetch cut short was logged as an outbox
    /// read failure and "internal server error").
    fn peer_gone() -> Self {
        Fail {
            routine: true,
            ..Fail::new(ErrorCode::Internal, "connection closed")
        }
    }

    /// The server is stopping (Ctrl-C, SIGTERM) in the middle of what the client asked for:
    /// "unavailable", which says to try again, rather than an error of the server's (found by a
    /// trial run: a fetch under way at shutdown was told "internal" "connection closed").
    fn stopping() -> Self {
        Fail {
            routine: true,
            ..Fail::new(
                ErrorCode::Unavailable,
                "the server is stopping; try again once it is back",
            )
        }
    }

    /// Nothing was stored for want of disk space: "unavailable", so the client tries again
    /// with its backoff, and succeeds once the operator frees space.
    fn disk_full() -> Self {
        Fail::new(
            ErrorCode::Unavailable,
            "the server's disk is full; nothing was acked, try again later",
        )
    }

    fn from_conn(e: ConnError) -> Self {
        match e {
            ConnError::Wire(w) => Fail::new(ErrorCode::Protocol, w.to_string()),
            other => Fail::new(ErrorCode::Protocol, other.to_string()),
        }
    }

    /// A store failure: logged here; to the peer "unavailable" when the database could not
    /// be reached or the connection to it broke (nothing was acked, a retry may succeed),
    /// "internal" otherwise.
    fn store(e: store::StoreError) -> Self {
        warn!(error = %e, "store error");
        if e.is_disk_full() {
            Fail::disk_full()
        } else if e.is_unavailable() {
            Fail::new(
                ErrorCode::Unavailable,
                "the server's mailbox database is unavailable; nothing was acked, try again later",
            )
        } else {
            Fail::internal()
        }
    }
}

impl Fail {
    /// The store's writer failed while a message's sealed bytes were being kept (the opener
    /// writes nothing else that can fail): a store failure, never the message's fault. As
    /// [`Fail::store`] when the writer passed on a [`store::StoreError`] (a database lost
    /// mid-body is "unavailable", a resend may succeed); a full disk is "unavailable" too
    /// ([`Fail::disk_full`]); "internal" for any other I/O error.
    fn store_write(e: std::io::Error) -> Self {
        if !e
            .get_ref()
            .is_some_and(|inner| inner.is::<store::StoreError>())
        {
            warn!(error = %e, "keeping a message's body failed");
            if e.kind() == std::io::ErrorKind::StorageFull {
                return Fail::disk_full();
            }
            return Fail::internal();
        }
        match e
            .into_inner()
            .map(|inner| inner.downcast::<store::StoreError>())
        {
            Some(Ok(store_error)) => Fail::store(*store_error),
            // Checked above.
            _ => Fail::internal(),
        }
    }
}

/// Runs CPU work (RSA, bulk crypto, file writes) on the blocking pool, off the reactor.
async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Fail> {
    joined(tokio::task::spawn_blocking(f)).await
}

/// The output of a task started on the blocking pool; its panic is the server's own failure.
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Result<T, Fail> {
    task.await.map_err(|e| {
        warn!(error = %e, "a blocking task failed");
        Fail::internal()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body write that failed in the store says so: "unavailable" when the store lost its
    /// database or the disk is full (a retry can succeed), "internal" for any other I/O
    /// error; never the message's fault.
    #[test]
    fn body_write_failures_are_store_failures() {
        let lost = store::StoreError::ConnectionLost {
            action: "storing a body chunk",
            source: "connection closed".into(),
        };
        let wrapped = std::io::Error::other(lost);
        assert_eq!(Fail::store_write(wrapped).code, ErrorCode::Unavailable);
        let full = Fail::store_write(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(full.code, ErrorCode::Unavailable);
        assert!(full.message.contains("disk is full"), "{}", full.message);
        let other = std::io::Error::other("this store keeps no body files");
        assert_eq!(Fail::store_write(other).code, ErrorCode::Internal);
    }

    /// A database that cannot be reached, or a connection that broke, is "unavailable" to the
    /// peer (a client retries); any other store failure stays "internal".
    #[test]
    fn store_failures_map_to_unavailable_only_when_the_database_is_unreachable() {
        let source = || -> store::BackendError { "connection closed".into() };
        let unreachable = store::StoreError::Connect {
            target: "postgres://db".to_owned(),
            source: source(),
        };
        let lost = store::StoreError::ConnectionLost {
            action: "inserting a message",
            source: source(),
        };
        let broken = store::StoreError::Database {
            action: "inserting a message",
            source: source(),
        };
        assert_eq!(Fail::store(unreachable).code, ErrorCode::Unavailable);
        assert_eq!(Fail::store(lost).code, ErrorCode::Unavailable);
        assert_eq!(Fail::store(broken).code, ErrorCode::Internal);
        let corrupt = store::StoreError::Corrupt { what: "row" };
        assert_eq!(Fail::store(corrupt).code, ErrorCode::Internal);
    }
}
