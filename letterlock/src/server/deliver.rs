//! The outbox: [`queue_for_client`] seals a message from the server to a client and queues it;
//! at that client's next `Fetch` the connection delivers everything waiting for it, and removes
//! each message only once the client proves, with a `DeliveryAck`, that it opened it.

use std::io::Read;
use std::sync::Arc;

use tokio::io::AsyncRead;
use tracing::{debug, info, warn};

use crate::envelope::{self, MessageId, SealOptions, Sealed};
use crate::keys::{Identity, Trusted};
use crate::store::{self, Completion, OutboxRecord, Store};
use crate::wire::{DATA_FRAME, ErrorCode, Frame};

use super::Fail;
use super::handler::{Handler, send};

impl<S: Store, R: AsyncRead + Unpin + Send + 'static> Handler<S, R> {
    /// Streams every message waiting for the client, then `FetchDone`. Each body is read on the
    /// blocking pool and cut into `Deliver` frames there. Memory: a message being delivered
    /// holds one server-wide in-flight permit, and at most the connection's delivery window
    /// ([`ServerConfig::delivery_window`]) of it is read and not yet written to the socket, so
    /// a client that stops reading pins that much, not the whole outbound queue.
    ///
    /// [`ServerConfig::delivery_window`]: super::ServerConfig::delivery_window
    pub(super) async fn deliver(&mut self) -> Result<(), Fail> {
        let store = &self.server.store;
        let out = &self.conn.out;
        let since = std::time::Instant::now();
        let pending = store
            .lease_outbox(&self.client.key.id().0, store::DELIVERY_LEASE)
            .await
            .map_err(Fail::store)?;
        // Released when the connection ends unless acked first (Handler::release_leases);
        // `since` stays the time of the oldest lease still held.
        if self.leased.ids.is_empty() {
            self.leased.since = Some(since);
        }
        self.leased
            .ids
            .extend(pending.iter().map(|entry| entry.message_id));
        let count = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        for entry in pending {
            // Counted in the server-wide budget beside the messages being received. At
            // shutdown the delivery ends before the next message (the one under way is
            // finished, as messages being received are), and does not wait for the budget: the
            // fetch is told the server is stopping, not cut at the grace's end.
            // A clone: waiting on the handler's own receiver would mark the stop as seen, and
            // its frame loop, which waits for the change, would then miss it.
            let mut stopping = self.stop.clone();
            let _budget = tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => return Err(Fail::stopping()),
                budget = self.server.in_flight_permit() => budget?,
            };
            let body = store
                .open_outbox_body(&entry.recipient_key_id, &entry.message_id)
                .await
                .map_err(Fail::store)?;
            let frames = out.clone();
            let window = self.conn.delivery_window.clone();
            let mut stop = self.stop.clone();
            let runtime = tokio::runtime::Handle::current();
            let sent = tokio::task::spawn_blocking(move || -> Result<(), Stopped> {
                let mut body = body;
                // DATA_FRAME fits in u32 (256 KiB) and in the window (at least one frame).
                let chunk = u32::try_from(DATA_FRAME)
                    .map_err(|_| Stopped::Read(std::io::ErrorKind::Other.into()))?;
                loop {
                    // Room in the window first, then the read: a stalled peer stops the reads.
                    // At shutdown, a peer that reads gets the rest of this message (found by a
                    // trial run: a fetch was cut at once, where a send under way is finished);
                    // one that makes no room for STALLED_AT_SHUTDOWN is given up, or the
                    // blocking thread waiting for it would hold the runtime's exit until the
                    // stall timeout.
                    let room = runtime.block_on(async {
                        let stalled = async {
                            let _ = stop.wait_for(|stop| *stop).await;
                            tokio::time::sleep(STALLED_AT_SHUTDOWN).await;
                        };
                        tokio::select! {
                            room = window.acquire_many(chunk) => room.map_err(|_| Stopped::PeerGone),
                            () = stalled => Err(Stopped::Shutdown),
                        }
                    })?;
                    room.forget();
                    let mut data = vec![0u8; DATA_FRAME];
                    let n = envelope::read_full(&mut body, &mut data).map_err(Stopped::Read)?;
                    // The writer gives back only what it wrote.
                    window.add_permits(DATA_FRAME.saturating_sub(n));
                    if n == 0 {
                        return Ok(());
                    }
                    data.truncate(n);
                    if frames.blocking_send(Frame::Deliver(data)).is_err() {
                        return Err(Stopped::PeerGone);
                    }
                }
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(Stopped::PeerGone)) => return Err(Fail::peer_gone()),
                Ok(Err(Stopped::Shutdown)) => return Err(Fail::stopping()),
                Ok(Err(Stopped::Read(e))) => {
                    warn!(error = %e, "reading an outbox message failed");
                    return Err(Fail::internal());
                }
                Err(_) => return Err(Fail::internal()),
            }
            send(out, Frame::DeliverEnd).await?;
            match &entry.sender {
                None => {
                    debug!(client = %crate::text::quoted(&self.client.name), id = %MessageId(entry.message_id), "delivered")
                }
                Some((_, from)) => {
                    debug!(client = %crate::text::quoted(&self.client.name), from = %crate::text::quoted(from), id = %MessageId(entry.message_id), "delivered a relayed message")
                }
            }
        }
        send(out, Frame::FetchDone { count }).await
    }

    /// The client proves it opened a delivered message: remove it, say so.
    pub(super) async fn delivery_ack(&mut self, id: MessageId, tag: [u8; 32]) -> Result<(), Fail> {
        let completion = self
            .server
            .store
            .complete_outbox(&self.client.key.id().0, &id.0, &tag)
            .await
            .map_err(Fail::store)?;
        match completion {
            Completion::Completed { .. } => {
                info!(client = %crate::text::quoted(&self.client.name), id = %id, "delivery proven; message removed");
            }
            Completion::RemovedWithoutReceipt { sender_name, .. } => {
                // The sender's commitment cannot be checked when it relays, so a wrong one
                // must not leave an entry the recipient can never acknowledge.
                warn!(
                    sender = %crate::text::quoted(&sender_name),
                    recipient = %crate::text::quoted(&self.client.name),
                    id = %id,
                    "the recipient's tag did not match the sender's commitment; removed without a receipt"
                );
            }
            Completion::NotPending | Completion::BadTag => {
                // Still leased to this connection, which ends now: released with the others
                // (a wrong tag is no ack), so the next fetch need not wait for the lease.
                return Err(Fail::new(
                    ErrorCode::BadAck,
                    "delivery acknowledgement does not match a pending message",
                ));
            }
        }
        self.leased.ids.retain(|leased| *leased != id.0);
        send(&self.conn.out, Frame::Removed { id }).await
    }
}

/// Why a message from the server could not be queued for a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error(transparent)]
    Seal(#[from] envelope::SealError),
    #[error("store error: {0}")]
    Store(#[from] store::StoreError),
    /// The sealing task on the blocking pool panicked or was cancelled.
    #[error("the sealing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Seals `input` from the server (`identity`) to client `to` and queues it in the store's
/// outbox; a running server delivers it at that client's next fetch. The RSA work and the
/// writes of the sealed body run on the blocking pool, so this is safe to call from any task.
pub async fn queue_for_client<S: Store>(
    store: &S,
    identity: Arc<dyn Identity>,
    to: &Trusted,
    input: impl Read + Send + 'static,
    opts: &SealOptions,
) -> Result<Sealed, QueueError> {
    let mut blob = store.blob_writer();
    let recipient = to.key.clone();
    let opts = opts.clone();
    let (sealed, body) = tokio::task::spawn_blocking(move || -> Result<_, QueueError> {
        let sealed = envelope::seal(identity.as_ref(), &recipient, &opts, input, &mut blob)?;
        Ok((sealed, blob.finish()?))
    })
    .await??;
    store
        .enqueue_outbox(OutboxRecord {
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

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::thread::ThreadId;

    use super::*;
    use crate::keys::PrivateKey;
    use crate::store::SqliteStore;

    /// Plaintext that records which thread reads it.
    struct Spy {
        data: std::io::Cursor<Vec<u8>>,
        readers: Arc<Mutex<Vec<ThreadId>>>,
    }

    impl Read for Spy {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.readers
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            self.data.read(buf)
        }
    }

    /// On a current-thread runtime the calling task runs on the test's own thread; the sealing
    /// (which reads the input) must happen elsewhere, on the blocking pool.
    #[test]
    fn queue_for_client_seals_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db")).unwrap();
        let server: Arc<dyn Identity> = Arc::new(PrivateKey::generate(2048).unwrap());
        let client = PrivateKey::generate(2048).unwrap();
        let to = Trusted {
            name: "client".into(),
            key: client.public().clone(),
        };
        let readers = Arc::new(Mutex::new(Vec::new()));
        let input = Spy {
            data: std::io::Cursor::new(b"for the client".to_vec()),
            readers: readers.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sealed = runtime
            .block_on(queue_for_client(
                &store,
                server,
                &to,
                input,
                &SealOptions::default(),
            ))
            .unwrap();
        assert_eq!(sealed.plaintext_len, 14);
        let here = std::thread::current().id();
        let readers = readers.lock().unwrap();
        assert!(!readers.is_empty(), "the input was never read");
        assert!(
            readers.iter().all(|t| *t != here),
            "the input was read on the calling task's thread"
        );
        let waiting = runtime
            .block_on(store.pending_outbox(&to.key.id().0))
            .unwrap();
        assert_eq!(waiting.len(), 1);
    }
}

/// How long a delivery under way at shutdown waits for a peer that makes no room in its
/// window (reads nothing) before it gives up: a peer that reads gets the message whole.
const STALLED_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a delivery stopped before the message's end.
enum Stopped {
    /// The connection's writer is gone (the peer left, its connection broke).
    PeerGone,
    /// The server is stopping, and the peer made no room for [`STALLED_AT_SHUTDOWN`].
    Shutdown,
    /// The stored body could not be read.
    Read(std::io::Error),
}
