//! Group commit for the PostgreSQL store: concurrent inbox inserts and outbox enqueues of one
//! server share a transaction, so one WAL flush answers a whole batch.
//!
//! Every `insert_inbox` and `enqueue_outbox` hands its row to one task ([`run`]) through a
//! bounded queue and waits for its answer. The task takes whatever is queued (at most
//! [`MAX_BATCH`]), writes it in one transaction on one pooled connection, commits, and only then
//! answers each caller. A lone request is written at once, without waiting for company: a batch
//! is whatever queued while the committers were busy with earlier batches (at most
//! [`COMMITTERS`] commit at once).
//!
//! Invariants:
//! - **Ack after commit.** A caller is answered only after the transaction holding its row
//!   committed (`synchronous_commit = on`, set on every connection of the store).
//! - **Per-request outcomes.** Rows are written with `ON CONFLICT DO NOTHING`. A row that found
//!   its (sender, id) taken, by an earlier batch, another server, or an earlier request of the
//!   same batch, is answered from the stored row read in the same transaction, exactly as it
//!   would be alone: `Duplicate` with the stored ack tag for the same bytes, `Conflict` for
//!   other bytes. So a duplicate never fails the rest of its batch.
//! - **One failure stays with its request.** A statement failing for another reason aborts the
//!   transaction: it rolls back, and the batch's requests are written again one by one, each in
//!   its own transaction, so only the request at fault gets the error.
//! - **A lost connection fails the batch.** Every request of it gets `ConnectionLost` (the
//!   server answers Unavailable and the client retries). The transaction did not commit
//!   (PostgreSQL rolls back an open transaction whose connection is gone), so nothing of it is
//!   visible; should the connection break during `COMMIT` itself, the outcome is unknown, and
//!   the retry is recognised by its (sender, id).
//! - **Bodies.** A large body's chunks were committed before its request was queued
//!   (`body.rs`); its row names it by id. The staged body is kept once a committed row names
//!   it; a refused or failed request drops it, and the store's cleaner deletes it unless a row
//!   names it after all.
//!
//! Rows are written in (key, message id) order, statements pipelined on the connection: two
//! servers writing batches that share ids take their row locks in the same order, so they wait
//! for each other instead of deadlocking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use deadpool_postgres::{Object, Pool};
use futures_util::future::try_join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{GenericClient, Statement};
use tracing::{debug, warn};

use super::{connection_lost, get_array};
use crate::store::body::Body;
use crate::store::error::StoreError;
use crate::store::{InsertOutcome, KeyId, MessageId, Tag};

/// Most requests written in one transaction: bounds how long the first caller of a batch waits
/// behind the others, and the transaction's size (with 1 KiB bodies, a quarter of a mebibyte).
pub const MAX_BATCH: usize = 256;

/// Requests that may wait for the group task before callers are made to wait: backpressure
/// instead of unbounded memory under overload.
pub(super) const QUEUE_CAPACITY: usize = 1024;

/// Batches committing at once, each on its own pooled connection. One would leave the
/// connection idle while its commit's WAL flush runs; a few overlap one batch's statements
/// with another's flush (PostgreSQL flushes concurrent commits together). Measured with 64
/// writers on a 2-core machine: 1 committer ≈2,500 inserts/s, 4 ≈3,100/s (docs/SCALING.md).
pub const COMMITTERS: usize = 4;

const INBOX_INSERT: &str = "INSERT INTO inbox (sender_key_id, message_id, sender_name, created,
        received, mode, plaintext_len, content_hash, ack_tag, body_size, body_inline, body_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (sender_key_id, message_id) DO NOTHING";

/// The stored answer for a (sender, id): what a duplicate is told, here and in `known_inbox`.
pub(super) const INBOX_LOOKUP: &str =
    "SELECT content_hash, ack_tag FROM inbox WHERE sender_key_id = $1 AND message_id = $2";

const OUTBOX_INSERT: &str = "INSERT INTO outbox (recipient_key_id, message_id, recipient_name,
        created, mode, plaintext_len, ack_tag, body_size, body_inline, body_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (recipient_key_id, message_id) DO NOTHING";

/// An inbox row with its values already converted to the column types (so a value out of range
/// is refused to its caller before it is queued).
pub(super) struct InboxRow {
    pub(super) sender_key_id: KeyId,
    pub(super) message_id: MessageId,
    pub(super) sender_name: String,
    pub(super) created: i64,
    pub(super) received: i64,
    pub(super) mode: i16,
    pub(super) plaintext_len: i64,
    pub(super) content_hash: Tag,
    pub(super) ack_tag: Tag,
    pub(super) body_size: i64,
    /// Inline, or staged in this store's database (checked before queueing).
    pub(super) body: Body,
}

/// An outbox row, converted as [`InboxRow`].
pub(super) struct OutboxRow {
    pub(super) recipient_key_id: KeyId,
    pub(super) message_id: MessageId,
    pub(super) recipient_name: String,
    pub(super) created: i64,
    pub(super) mode: i16,
    pub(super) plaintext_len: i64,
    pub(super) ack_tag: Tag,
    pub(super) body_size: i64,
    pub(super) body: Body,
}

/// One request waiting for the group task, with the channel its answer goes back on.
pub(super) enum Write {
    Inbox {
        row: InboxRow,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    Outbox {
        row: OutboxRow,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Write {
    /// The order rows are written in: inbox before outbox, then by key and message id.
    fn order_key(&self) -> (u8, &KeyId, &MessageId) {
        match self {
            Write::Inbox { row, .. } => (0, &row.sender_key_id, &row.message_id),
            Write::Outbox { row, .. } => (1, &row.recipient_key_id, &row.message_id),
        }
    }
}

/// What became of one request in a committed transaction.
enum Outcome {
    Inbox(Result<InsertOutcome, StoreError>),
    /// Whether the outbox row was new (false: the recipient already has this id queued).
    Outbox(bool),
}

/// Counters of the group task, shared with the store handle (for tests and metrics).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Transactions committed by the group task.
    pub(super) batches: AtomicU64,
    /// Requests answered from those transactions, whatever their outcome.
    pub(super) writes: AtomicU64,
    /// Requests submitted and not yet answered (queued or being written).
    pub(super) in_flight: AtomicUsize,
}

/// Counts one request in [`Counters::in_flight`] while it lives (its caller may give up
/// waiting: dropping this still counts it out).
pub(super) struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    pub(super) fn enter(counters: &'a Counters) -> Self {
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a batch did not commit.
enum Failure {
    /// The connection broke, or the transaction could not begin or commit: every request of
    /// the batch fails with this.
    Batch(tokio_postgres::Error),
    /// A statement failed (the transaction rolled back): some request is at fault.
    Request(tokio_postgres::Error),
}

/// The error of a whole batch, handed to each of its callers.
#[derive(Debug)]
struct SharedError<E>(Arc<E>);

impl<E: std::fmt::Display> std::fmt::Display for SharedError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for SharedError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The group task: serves batches until every handle to the queue is gone (the store closed
/// or dropped); requests already queued then are still written.
pub(super) async fn run(
    pool: Pool,
    target: String,
    mut queue: mpsc::Receiver<Write>,
    counters: Arc<Counters>,
) {
    let mut committing = tokio::task::JoinSet::new();
    loop {
        // A batch forms while the committers are busy.
        while committing.len() >= COMMITTERS {
            committing.join_next().await;
        }
        let Some(first) = queue.recv().await else {
            break;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH.min(queue.len() + 1));
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let (pool, target, counters) = (pool.clone(), target.clone(), counters.clone());
        committing.spawn(async move {
            match pool.get().await {
                Ok(mut client) => commit(&mut client, batch, &counters).await,
                Err(e) => {
                    let refused = super::pool_login_refused(&e);
                    let e = Arc::new(e);
                    fail_all(batch, || match &refused {
                        Some(reason) => StoreError::LoginRefused {
                            target: target.clone(),
                            reason: reason.clone(),
                        },
                        None => StoreError::Connect {
                            target: target.clone(),
                            source: Box::new(SharedError(e.clone())),
                        },
                    });
                }
            }
        });
    }
    while committing.join_next().await.is_some() {}
    debug!("PostgreSQL group commit stopped: store closed");
}

/// Writes and commits `batch` on `client`, answering every request.
async fn commit(client: &mut Object, mut batch: Vec<Write>, counters: &Counters) {
    batch.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    match write(client, &batch).await {
        Ok(outcomes) => settle(batch, outcomes, counters),
        Err(Failure::Batch(e)) => {
            let size = batch.len();
            warn!(%e, size, "a batch of mailbox writes did not commit");
            fail_all(batch, shared_db_error("committing a batch of writes", e));
        }
        Err(Failure::Request(e)) if batch.len() == 1 => {
            fail_all(batch, shared_db_error("writing a message", e));
        }
        Err(Failure::Request(e)) => {
            let size = batch.len();
            warn!(%e, size, "a statement of a batch failed; writing its requests one by one");
            for one in batch {
                let one = vec![one];
                match write(client, &one).await {
                    Ok(outcomes) => settle(one, outcomes, counters),
                    Err(Failure::Batch(e) | Failure::Request(e)) => {
                        fail_all(one, shared_db_error("writing a message", e));
                    }
                }
            }
        }
    }
}

/// A maker of the same error for each caller of a failed batch: "unavailable" when the
/// connection broke, a database error otherwise.
fn shared_db_error(action: &'static str, e: tokio_postgres::Error) -> impl Fn() -> StoreError {
    let lost = connection_lost(&e);
    let e = Arc::new(e);
    move || {
        let source = Box::new(SharedError(e.clone()));
        if lost {
            StoreError::ConnectionLost { action, source }
        } else {
            StoreError::Database { action, source }
        }
    }
}

/// Answers every request of a batch that did not commit with `error()`. Their staged bodies
/// are dropped: the cleaner deletes each unless a row names it (a commit whose answer was lost).
fn fail_all(batch: Vec<Write>, error: impl Fn() -> StoreError) {
    for write in batch {
        // A caller that gave up no longer listens: nothing to tell it.
        match write {
            Write::Inbox { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::Outbox { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

/// Answers every request of a committed batch: bodies that committed rows name are kept, the
/// others dropped (and deleted by the cleaner).
fn settle(batch: Vec<Write>, outcomes: Vec<Outcome>, counters: &Counters) {
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters
        .writes
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    for (write, outcome) in batch.into_iter().zip(outcomes) {
        // A caller that gave up no longer listens; its write is committed all the same.
        match (write, outcome) {
            (Write::Inbox { mut row, reply }, Outcome::Inbox(result)) => {
                if matches!(result, Ok(InsertOutcome::Inserted)) {
                    row.body.keep();
                }
                let _ = reply.send(result);
            }
            (Write::Outbox { mut row, reply }, Outcome::Outbox(new)) => {
                let _ = reply.send(if new {
                    row.body.keep();
                    Ok(())
                } else {
                    Err(StoreError::OutboxDuplicate {
                        message_id: hex::encode(row.message_id),
                    })
                });
            }
            // `write` makes one outcome per request, of its kind, in order.
            (Write::Inbox { reply, .. }, Outcome::Outbox(_)) => {
                let _ = reply.send(Err(mismatch()));
            }
            (Write::Outbox { reply, .. }, Outcome::Inbox(_)) => {
                let _ = reply.send(Err(mismatch()));
            }
        }
    }
}

fn mismatch() -> StoreError {
    StoreError::Task("the group commit mixed up the answers of a batch".to_owned())
}

/// The body columns of a row: inline bytes or the id of a body staged in this database.
fn body_columns(body: &Body) -> (Option<&[u8]>, Option<i64>) {
    (
        body.inline_bytes(),
        body.staged_chunks().map(super::StagedBody::id),
    )
}

/// Writes `batch` in one transaction and commits it; returns each request's outcome, in order.
async fn write(client: &mut Object, batch: &[Write]) -> Result<Vec<Outcome>, Failure> {
    let statements = Statements {
        inbox_insert: client
            .prepare_cached(INBOX_INSERT)
            .await
            .map_err(Failure::Batch)?,
        outbox_insert: client
            .prepare_cached(OUTBOX_INSERT)
            .await
            .map_err(Failure::Batch)?,
        lookup: client
            .prepare_cached(INBOX_LOOKUP)
            .await
            .map_err(Failure::Batch)?,
    };
    let request_failure = |e: tokio_postgres::Error| {
        if connection_lost(&e) {
            Failure::Batch(e)
        } else {
            Failure::Request(e)
        }
    };
    if let [alone] = batch {
        // One request: its insert is a transaction of its own, which saves the round trips
        // of BEGIN and COMMIT (the lookup of a taken id needs none: it only reads).
        let connection: &tokio_postgres::Client = client;
        let inserted = insert(connection, &statements, alone)
            .await
            .map_err(request_failure)?;
        let outcome = outcome(connection, &statements, alone, inserted)
            .await
            .map_err(request_failure)?;
        return Ok(vec![outcome]);
    }
    let tx = client.transaction().await.map_err(Failure::Batch)?;
    // Pipelined: every statement is sent before the first answer is awaited.
    let inserted = try_join_all(batch.iter().map(|write| insert(&*tx, &statements, write)))
        .await
        .map_err(request_failure)?;
    // Taken ids are answered from the stored row, read in this transaction so an earlier
    // request of this batch counts as stored.
    let outcomes = try_join_all(
        batch
            .iter()
            .zip(inserted)
            .map(|(write, inserted)| outcome(&*tx, &statements, write, inserted)),
    )
    .await
    .map_err(request_failure)?;
    tx.commit().await.map_err(Failure::Batch)?;
    Ok(outcomes)
}

/// The prepared statements of a batch (cached per connection).
struct Statements {
    inbox_insert: Statement,
    outbox_insert: Statement,
    lookup: Statement,
}

/// Sends one request's insert; returns whether it added a row.
async fn insert(
    tx: &impl GenericClient,
    statements: &Statements,
    write: &Write,
) -> Result<bool, tokio_postgres::Error> {
    let count = match write {
        Write::Inbox { row, .. } => {
            let (inline, body_id) = body_columns(&row.body);
            tx.execute(
                &statements.inbox_insert,
                &[
                    &&row.sender_key_id[..],
                    &&row.message_id[..],
                    &row.sender_name,
                    &row.created,
                    &row.received,
                    &row.mode,
                    &row.plaintext_len,
                    &&row.content_hash[..],
                    &&row.ack_tag[..],
                    &row.body_size,
                    &inline,
                    &body_id,
                ],
            )
            .await?
        }
        Write::Outbox { row, .. } => {
            let (inline, body_id) = body_columns(&row.body);
            tx.execute(
                &statements.outbox_insert,
                &[
                    &&row.recipient_key_id[..],
                    &&row.message_id[..],
                    &row.recipient_name,
                    &row.created,
                    &row.mode,
                    &row.plaintext_len,
                    &&row.ack_tag[..],
                    &row.body_size,
                    &inline,
                    &body_id,
                ],
            )
            .await?
        }
    };
    Ok(count == 1)
}

/// One request's outcome once every insert of the batch ran: a new row, or the answer the
/// stored row gives (same bytes: duplicate with the stored ack tag; other bytes: conflict).
async fn outcome(
    tx: &impl GenericClient,
    statements: &Statements,
    write: &Write,
    inserted: bool,
) -> Result<Outcome, tokio_postgres::Error> {
    let row = match write {
        Write::Outbox { .. } => return Ok(Outcome::Outbox(inserted)),
        Write::Inbox { .. } if inserted => return Ok(Outcome::Inbox(Ok(InsertOutcome::Inserted))),
        Write::Inbox { row, .. } => row,
    };
    let stored = tx
        .query_opt(
            &statements.lookup,
            &[&&row.sender_key_id[..], &&row.message_id[..]],
        )
        .await?;
    let Some(stored) = stored else {
        return Ok(Outcome::Inbox(Err(StoreError::Corrupt {
            what: "inbox (a conflicting message vanished)",
        })));
    };
    let answer = (|| {
        let stored_hash: Tag = get_array(&stored, 0, "inbox content hash")?;
        let stored_tag: Tag = get_array(&stored, 1, "inbox ack tag")?;
        // Content hashes are not secret: a plain comparison is fine here.
        Ok(if stored_hash == row.content_hash {
            debug!(message_id = %hex::encode(row.message_id), "inbox duplicate (retry)");
            InsertOutcome::Duplicate {
                ack_tag: stored_tag,
            }
        } else {
            warn!(
                message_id = %hex::encode(row.message_id),
                sender = %crate::text::quoted(&row.sender_name),
                "inbox conflict: id reused for different content"
            );
            InsertOutcome::Conflict
        })
    })();
    Ok(Outcome::Inbox(answer))
}
