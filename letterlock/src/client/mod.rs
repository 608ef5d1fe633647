//! The client: authenticates to a pinned server, sends sealed messages and checks each proof of
//! delivery, fetches the messages waiting for it and proves it opened each one.
//!
//! Invariants: "delivered" is only ever reported after the server's ack tag matched the one
//! computed while sealing (constant-time comparison); a fetched message is acknowledged only
//! after it verified and, with an output folder, after its file is fsynced in place, and with a
//! mailbox, after its sealed copy is committed there.
//!
//! Layout: this file holds the [`Client`] and what every part shares; `error.rs` the one error
//! type; `connect.rs` connecting (version 1 or TLS), admission retries and the handshake;
//! `send.rs` sending and checking proofs of delivery; `fetch.rs` fetching, opening, recording
//! and acknowledging the messages waiting for us; `mailbox.rs` the client's durable copy of
//! what it received (sealed at rest, committed before the acknowledgement); `contacts.rs` the
//! people it writes to (pinned keys, keys from the server's signed directory) and the messages
//! it relayed to them, with their receipts; `agent/` the client agent, which keeps the key and
//! a connection for one-shot commands to hand their messages to.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::envelope::{self};
use crate::keys::{Identity, PublicKey};
use crate::tls;
use crate::wire::{self, Frame, FrameReader, FrameWriter};

pub mod agent;
mod connect;
#[cfg(feature = "sqlite")]
pub mod contacts;
mod deadline;
mod error;
mod fetch;
mod mailbox;
mod relay;
mod send;

pub use connect::{Backoff, Retry, RetryCause, Transport};
pub use error::ClientError;
pub use fetch::{
    Content, FetchEvent, FetchReport, Output, Received, Sender, SenderLookup, Senders, message_path,
};
pub use mailbox::Mailbox;
pub use relay::{MAX_DIRECTORY_ENTRIES, Relayed};
pub use send::{AheadWriter, Delivery, Sealing};

/// Limits and timeouts of the client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest wait for any one frame from the server, and for the server to take any of the
    /// bytes we write (a server that stops reading mid-message): either ends the call with
    /// [`ClientError::Timeout`].
    pub timeout: Duration,
    /// Largest frame accepted from the server.
    pub max_frame: usize,
    /// Largest plaintext accepted in a fetched message.
    pub max_message: u64,
    /// Largest plaintext accepted in a fetched asymmetric message.
    pub max_asymmetric: u64,
    /// Where to keep the TLS handshake key this client's key delegates to, so that the next
    /// process finds it instead of paying an RSA signature for a new one
    /// ([`tls::HandshakeKeyCache`]; docs/SECURITY.md says when to keep one). `None`: made
    /// afresh for each configuration, kept nowhere.
    pub handshake_key_cache: Option<tls::HandshakeKeyCache>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(60),
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_message: 1 << 30,
            max_asymmetric: envelope::DEFAULT_ASYMMETRIC_LIMIT,
            handshake_key_cache: None,
        }
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
    /// Where the server was reached, and how: [`Client::send_retrying`] connects there again.
    addr: String,
    transport: Transport,
    /// The directory as last read before a fetch, and when: reused for [`LISTING_FRESH`], so
    /// that `recv_msg --wait`, which fetches every 300 ms, does not fetch and verify it each
    /// time.
    listing: Option<(std::time::Instant, Arc<Vec<crate::directory::Entry>>)>,
}

/// How long a directory read before a fetch is used again (`Client::listing` in fetch.rs):
/// a client untrusted on the server loses its messages' acceptance at most this late on a
/// connection that stays open.
pub const LISTING_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("me", &self.identity.public().id())
            .field("server", &self.server.id())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Reads one frame within the timeout; an `Error` frame becomes [`ClientError::Refused`].
    async fn read(&mut self) -> Result<Frame, ClientError> {
        let frame = tokio::time::timeout(self.config.timeout, self.reader.read_frame())
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
                after: self.config.timeout,
            })??;
        match frame {
            Frame::Error { code, message } => Err(ClientError::Refused { code, message }),
            f => Ok(f),
        }
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

fn unexpected(frame: Frame) -> ClientError {
    ClientError::Unexpected {
        frame: frame.name(),
    }
}
