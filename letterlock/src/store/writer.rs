//! The single writer: group commit for all mailbox writes of one process.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every
//! commit costs an fsync (milliseconds on real disks). Giving each server
//! task its own transaction would serialize them behind one fsync each.
//! Instead one OS thread owns the write connection, drains whatever requests
//! are queued, applies them all in one transaction, commits once, and only
//! then answers each requester. Under load the fsync cost is shared by the
//! whole batch; when idle a lone request still commits immediately.
//!
//! Where a commit is cheap (tmpfs, a disk with a power-safe write cache), a
//! busy server's messages can reach the writer one at a time, each then
//! getting a transaction of its own, with the thread switches around it (a
//! server build that opened its messages one after another committed 903
//! times per 1000 messages). So while the server says more writes are on
//! their way (messages being verified, [`super::Store::write_coming`]),
//! batches start at least [`COMMIT_SPACING`] apart: a request that comes
//! sooner after the last batch began waits for the rest of that time, and the
//! requests behind it join its batch. A request with none announced behind
//! it commits at once: a lone client waiting for each ack never waits for
//! writes that will not come. Where a commit takes longer than the spacing
//! (an fsync on a real disk) nothing waits either: the batches form while the
//! last one commits. Measured in docs/PERFORMANCE.md, "The server's commits".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::body::{Body, is_blob_name};
use super::error::StoreError;
use super::{
    Completion, InboxRecord, InsertOutcome, KeyId, MessageId, OutboxRecord, RelayOutcome,
    RelayRecord, Tag,
};

/// Least time between the starts of two batches (see the module's doc).
pub(crate) const COMMIT_SPACING: Duration = Duration::from_millis(4);

/// Most requests applied in one transaction: bounds how long the first
/// requester of a batch waits behind the others, and the transaction's size.
pub(crate) const MAX_BATCH: usize = 256;

/// Requests that may wait for the writer before senders are made to wait
/// (backpressure instead of unbounded memory under overload).
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// A write request, with the channel its answer goes back on.
pub(crate) enum WriteOp {
    InsertInbox {
        record: InboxRecord,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    EnqueueOutbox {
        record: OutboxRecord,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    EnqueueRelay {
        record: RelayRecord,
        reply: oneshot::Sender<Result<RelayOutcome, StoreError>>,
    },
    CompleteOutbox {
        recipient: KeyId,
        message_id: MessageId,
        ack_tag: Tag,
        reply: oneshot::Sender<Result<Completion, StoreError>>,
    },
}

/// Counters shared with the store handle (for tests and metrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) writes: AtomicU64,
}

/// A request applied inside the open transaction, waiting for the commit.
enum Applied {
    Insert {
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
        body: Body,
        result: Result<InsertOutcome, StoreError>,
    },
    Enqueue {
        reply: oneshot::Sender<Result<(), StoreError>>,
        body: Body,
        result: Result<(), StoreError>,
    },
    Relay {
        reply: oneshot::Sender<Result<RelayOutcome, StoreError>>,
        body: Body,
        result: Result<RelayOutcome, StoreError>,
    },
    Complete {
        reply: oneshot::Sender<Result<Completion, StoreError>>,
        result: Result<Completion, StoreError>,
        /// Body file of the deleted entry, removed once the delete commits.
        remove_file: Option<String>,
    },
}

impl Applied {
    /// Settle after a successful commit: keep files rows now name, delete
    /// files of refused requests (by dropping their body) and of completed
    /// outbox entries, then answer.
    fn committed(self, blob_dir: &Path) {
        // A requester that gave up (dropped its future) no longer listens;
        // its write is committed all the same, so ignoring the send is right.
        match self {
            Self::Insert {
                reply,
                mut body,
                result,
            } => {
                if matches!(result, Ok(InsertOutcome::Inserted)) {
                    body.keep();
                }
                drop(body);
                let _ = reply.send(result);
            }
            Self::Enqueue {
                reply,
                mut body,
                result,
            } => {
                if result.is_ok() {
                    body.keep();
                }
                drop(body);
                let _ = reply.send(result);
            }
            Self::Relay {
                reply,
                mut body,
                result,
            } => {
                if matches!(result, Ok(RelayOutcome::Stored)) {
                    body.keep();
                }
                drop(body);
                let _ = reply.send(result);
            }
            Self::Complete {
                reply,
                result,
                remove_file,
            } => {
                if let Some(name) = remove_file {
                    let path = blob_dir.join(name);
                    if let Err(err) = std::fs::remove_file(&path) {
                        // The next open's sweep removes it.
                        warn!(path = %path.display(), %err, "could not remove delivered body file");
                    }
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Settle after the batch failed to commit. Whether a failed commit left
    /// anything on disk is not certain, so files of would-be rows are kept
    /// (the sweep on the next open removes them if no row names them).
    fn failed(self, failure: &BatchFailure) {
        let error = || failure.error();
        match self {
            Self::Insert {
                reply,
                mut body,
                result,
            } => {
                if result.is_ok() {
                    body.keep();
                }
                let _ = reply.send(Err(error()));
            }
            Self::Enqueue {
                reply,
                mut body,
                result,
            } => {
                if result.is_ok() {
                    body.keep();
                }
                let _ = reply.send(Err(error()));
            }
            Self::Relay {
                reply,
                mut body,
                result,
            } => {
                if result.is_ok() {
                    body.keep();
                }
                let _ = reply.send(Err(error()));
            }
            Self::Complete { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

/// Convert an unsigned field to SQLite's signed integer, refusing overflow.
pub(crate) fn to_sql_int(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// Refuse a file body staged in another store's blob folder: the row would
/// name a file this store cannot find.
fn check_body_home(body: &Body, blob_dir: &Path) -> Result<(), StoreError> {
    if body.is_in_database() {
        return Err(StoreError::ForeignBlob {
            staged_in: PathBuf::from("a PostgreSQL mailbox"),
            expected: blob_dir.to_path_buf(),
        });
    }
    match body.staged_in() {
        Some(dir) if dir != blob_dir => Err(StoreError::ForeignBlob {
            staged_in: dir.to_path_buf(),
            expected: blob_dir.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) blob_dir: PathBuf,
    pub(crate) counters: Arc<Counters>,
    pub(crate) requests: mpsc::Receiver<WriteOp>,
    /// [`COMMIT_SPACING`], or the store's own ([`super::SqliteOptions`]).
    pub(crate) spacing: Duration,
    /// Writes announced and not yet made ([`super::Store::write_coming`]).
    pub(crate) coming: Arc<AtomicUsize>,
}

impl Writer {
    /// Serve batches until every sender is gone, then return; requests
    /// already queued when the store closes are still applied.
    pub(crate) fn run(mut self) {
        debug!(blob_dir = %self.blob_dir.display(), "mailbox writer started");
        let mut last_batch: Option<Instant> = None;
        while let Some(first) = self.requests.blocking_recv() {
            let others_coming = self.coming.load(Ordering::SeqCst) > 0;
            let wait = last_batch.and_then(|began| self.spacing.checked_sub(began.elapsed()));
            if let Some(wait) = wait.filter(|_| others_coming) {
                std::thread::sleep(wait);
            }
            last_batch = Some(Instant::now());
            let mut batch = Vec::with_capacity(MAX_BATCH);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.requests.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch);
        }
        debug!("mailbox writer stopped: store closed");
    }

    fn apply_batch(&mut self, batch: Vec<WriteOp>) {
        let started = Instant::now();
        let size = batch.len();
        // IMMEDIATE takes the write lock up front: a deferred transaction
        // that later upgrades can fail with SQLITE_BUSY without the busy
        // timeout helping, when another process (send_msg) writes too.
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(err) => {
                warn!(%err, size, "could not start a mailbox write transaction");
                let failure =
                    BatchFailure::new(format!("could not start a transaction: {err}"), &err);
                for op in batch {
                    fail_unapplied(op, &failure);
                }
                return;
            }
        };
        let mut applied = Vec::with_capacity(size);
        for op in batch {
            // A savepoint per request: one failing request is rolled back
            // alone and the rest of the batch still commits.
            let result = match tx.savepoint() {
                Ok(mut sp) => {
                    let applied_op = apply_op(&sp, op, &self.blob_dir);
                    if applied_op.is_ok() {
                        if let Err(err) = sp.commit() {
                            warn!(%err, "could not release a savepoint");
                        }
                    } else if let Err(err) = sp.rollback() {
                        warn!(%err, "could not roll back a savepoint");
                    }
                    applied_op.into_applied()
                }
                Err(err) => {
                    let failure =
                        BatchFailure::new(format!("could not open a savepoint: {err}"), &err);
                    fail_unapplied(op, &failure);
                    continue;
                }
            };
            applied.push(result);
        }
        match tx.commit() {
            Ok(()) => {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .writes
                    .fetch_add(applied.len() as u64, Ordering::Relaxed);
                debug!(
                    size,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "mailbox batch committed"
                );
                for done in applied {
                    done.committed(&self.blob_dir);
                }
            }
            Err(err) => {
                warn!(%err, size, "mailbox batch failed to commit");
                let failure = BatchFailure::new(err.to_string(), &err);
                for done in applied {
                    done.failed(&failure);
                }
            }
        }
    }
}

/// Why a batch failed, told to every request in it: the database's words, and whether the
/// disk was full (SQLite's `SQLITE_FULL`), which a server answers as "unavailable, try again"
/// rather than "internal" (found by a trial run: a full disk under the database was "internal
/// server error", and the client gave up).
#[derive(Debug)]
struct BatchFailure {
    reason: String,
    disk_full: bool,
}

impl BatchFailure {
    fn new(reason: String, err: &rusqlite::Error) -> Self {
        let disk_full = matches!(
            err,
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DiskFull
        );
        BatchFailure { reason, disk_full }
    }

    fn error(&self) -> StoreError {
        StoreError::BatchFailed {
            reason: self.reason.clone(),
            disk_full: self.disk_full,
        }
    }
}

/// Answer a request that never reached the database.
fn fail_unapplied(op: WriteOp, failure: &BatchFailure) {
    let error = failure.error();
    // Bodies are dropped here: no row can name them, so their files go.
    match op {
        WriteOp::InsertInbox { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        WriteOp::EnqueueOutbox { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        WriteOp::EnqueueRelay { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        WriteOp::CompleteOutbox { reply, .. } => {
            let _ = reply.send(Err(error));
        }
    }
}

/// An [`Applied`] plus whether its savepoint should be kept.
struct OpResult(Applied);

impl OpResult {
    fn is_ok(&self) -> bool {
        match &self.0 {
            Applied::Insert { result, .. } => result.is_ok(),
            Applied::Enqueue { result, .. } => result.is_ok(),
            Applied::Relay { result, .. } => result.is_ok(),
            Applied::Complete { result, .. } => result.is_ok(),
        }
    }

    fn into_applied(self) -> Applied {
        self.0
    }
}

fn apply_op(conn: &Connection, op: WriteOp, blob_dir: &Path) -> OpResult {
    OpResult(match op {
        WriteOp::InsertInbox { record, reply } => {
            let result = insert_inbox(conn, &record, blob_dir);
            Applied::Insert {
                reply,
                body: record.body,
                result,
            }
        }
        WriteOp::EnqueueOutbox { record, reply } => {
            let result = enqueue_outbox(conn, &record, blob_dir);
            Applied::Enqueue {
                reply,
                body: record.body,
                result,
            }
        }
        WriteOp::EnqueueRelay { record, reply } => {
            let result = enqueue_relay(conn, &record, blob_dir);
            Applied::Relay {
                reply,
                body: record.body,
                result,
            }
        }
        WriteOp::CompleteOutbox {
            recipient,
            message_id,
            ack_tag,
            reply,
        } => match complete_outbox(conn, &recipient, &message_id, &ack_tag) {
            Ok((completion, file)) => Applied::Complete {
                reply,
                result: Ok(completion),
                remove_file: file,
            },
            Err(err) => Applied::Complete {
                reply,
                result: Err(err),
                remove_file: None,
            },
        },
    })
}

fn insert_inbox(
    conn: &Connection,
    record: &InboxRecord,
    blob_dir: &Path,
) -> Result<InsertOutcome, StoreError> {
    check_body_home(&record.body, blob_dir)?;
    let existing: Option<(Tag, Tag)> = conn
        .prepare_cached(
            "SELECT content_hash, ack_tag FROM inbox WHERE sender_key_id = ?1 AND message_id = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![record.sender_key_id, record.message_id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
        })
        .map_err(StoreError::db("looking up an inbox message id"))?;
    if let Some((content_hash, ack_tag)) = existing {
        // Content hashes are not secret: a plain comparison is fine here.
        return Ok(if content_hash == record.content_hash {
            debug!(message_id = %hex::encode(record.message_id), "inbox duplicate (retry)");
            InsertOutcome::Duplicate { ack_tag }
        } else {
            warn!(message_id = %hex::encode(record.message_id), sender = %crate::text::quoted(&record.sender_name), "inbox conflict: id reused for different content");
            InsertOutcome::Conflict
        });
    }
    let created = to_sql_int("created", record.created)?;
    let received = to_sql_int("received", record.received)?;
    let plaintext_len = to_sql_int("plaintext length", record.plaintext_len)?;
    let body_size = to_sql_int("body size", record.body.len())?;
    let (inline, file) = record.body.columns();
    conn.prepare_cached(
        "INSERT INTO inbox (sender_key_id, message_id, sender_name, created, received, mode,
                            plaintext_len, content_hash, ack_tag, body_size, body_inline, body_file)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            record.sender_key_id,
            record.message_id,
            record.sender_name,
            created,
            received,
            record.mode,
            plaintext_len,
            record.content_hash,
            record.ack_tag,
            body_size,
            inline,
            file,
        ])
    })
    .map_err(StoreError::db("inserting an inbox message"))?;
    Ok(InsertOutcome::Inserted)
}

fn enqueue_outbox(
    conn: &Connection,
    record: &OutboxRecord,
    blob_dir: &Path,
) -> Result<(), StoreError> {
    check_body_home(&record.body, blob_dir)?;
    let exists = conn
        .prepare_cached("SELECT 1 FROM outbox WHERE recipient_key_id = ?1 AND message_id = ?2")
        .and_then(|mut stmt| stmt.exists(params![record.recipient_key_id, record.message_id]))
        .map_err(StoreError::db("looking up an outbox message id"))?;
    if exists {
        return Err(StoreError::OutboxDuplicate {
            message_id: hex::encode(record.message_id),
        });
    }
    let created = to_sql_int("created", record.created)?;
    let plaintext_len = to_sql_int("plaintext length", record.plaintext_len)?;
    let body_size = to_sql_int("body size", record.body.len())?;
    let (inline, file) = record.body.columns();
    conn.prepare_cached(
        "INSERT INTO outbox (recipient_key_id, message_id, recipient_name, created, mode,
                             plaintext_len, ack_tag, body_size, body_inline, body_file)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            record.recipient_key_id,
            record.message_id,
            record.recipient_name,
            created,
            record.mode,
            plaintext_len,
            record.expected_ack_tag,
            body_size,
            inline,
            file,
        ])
    })
    .map_err(StoreError::db("queueing an outbox message"))?;
    Ok(())
}

/// Store a relayed message unless its (sender, id) or (recipient, id) is taken (the repeat
/// rules of [`RelayOutcome`]): looked up in the writer's transaction, so nothing can slip in
/// between the lookups and the insert.
fn enqueue_relay(
    conn: &Connection,
    record: &RelayRecord,
    blob_dir: &Path,
) -> Result<RelayOutcome, StoreError> {
    check_body_home(&record.body, blob_dir)?;
    let id = hex::encode(record.message_id);
    // The same sender's id, still waiting or already delivered: a retry or a clash.
    let mut earlier: Option<Tag> = conn
        .prepare_cached(
            "SELECT content_hash FROM outbox WHERE sender_key_id = ?1 AND message_id = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![record.sender_key_id, record.message_id], |row| {
                row.get(0)
            })
            .optional()
        })
        .map_err(StoreError::db("looking up a relayed message id"))?;
    if earlier.is_none() {
        earlier = conn
            .prepare_cached(
                "SELECT content_hash FROM receipts WHERE sender_key_id = ?1 AND message_id = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![record.sender_key_id, record.message_id], |row| {
                    row.get(0)
                })
                .optional()
            })
            .map_err(StoreError::db("looking up a receipt"))?;
    }
    if let Some(hash) = earlier {
        // Content hashes are not secret: a plain comparison is fine here.
        return Ok(if hash == record.content_hash {
            debug!(message_id = %id, "relay duplicate (retry)");
            RelayOutcome::Duplicate
        } else {
            warn!(message_id = %id, sender = %crate::text::quoted(&record.sender_name), "relay conflict: id reused for different content");
            RelayOutcome::Conflict
        });
    }
    // The recipient's outbox has this id from another sender, or sealed by the server.
    let taken = conn
        .prepare_cached("SELECT 1 FROM outbox WHERE recipient_key_id = ?1 AND message_id = ?2")
        .and_then(|mut stmt| stmt.exists(params![record.recipient_key_id, record.message_id]))
        .map_err(StoreError::db("looking up an outbox message id"))?;
    if taken {
        warn!(message_id = %id, sender = %crate::text::quoted(&record.sender_name), "relay conflict: the recipient already has this id from someone else");
        return Ok(RelayOutcome::Conflict);
    }
    let created = to_sql_int("created", record.created)?;
    let received = to_sql_int("received", record.received)?;
    let body_size = to_sql_int("body size", record.body.len())?;
    let (inline, file) = record.body.columns();
    conn.prepare_cached(
        "INSERT INTO outbox (recipient_key_id, message_id, recipient_name, created, mode,
                             plaintext_len, ack_tag, body_size, body_inline, body_file,
                             sender_key_id, sender_name, received, content_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            record.recipient_key_id,
            record.message_id,
            record.recipient_name,
            created,
            record.mode,
            record.commitment,
            body_size,
            inline,
            file,
            record.sender_key_id,
            record.sender_name,
            received,
            record.content_hash,
        ])
    })
    .map_err(StoreError::db("queueing a relayed message"))?;
    Ok(RelayOutcome::Stored)
}

/// Delete the entry if the tag matches (a relayed entry: if the tag's receipt commitment
/// matches, and then its receipt is stored in the same transaction; a relayed entry whose tag
/// does not match is deleted without a receipt). Returns what happened and, when the entry
/// was deleted, its body file to remove after commit.
fn complete_outbox(
    conn: &Connection,
    recipient: &KeyId,
    message_id: &MessageId,
    ack_tag: &Tag,
) -> Result<(Completion, Option<String>), StoreError> {
    type Row = (
        i64,
        Vec<u8>,
        Option<String>,
        Option<KeyId>,
        String,
        Option<Tag>,
        Option<String>,
    );
    let stored: Option<Row> = conn
        .prepare_cached(
            "SELECT seq, ack_tag, body_file, sender_key_id, recipient_name, content_hash,
                    sender_name
             FROM outbox WHERE recipient_key_id = ?1 AND message_id = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![recipient, message_id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            })
            .optional()
        })
        .map_err(StoreError::db("looking up an outbox message"))?;
    let Some((seq, expected, file, sender, recipient_name, content_hash, sender_name)) = stored
    else {
        debug!(message_id = %hex::encode(message_id), "ack for an unknown outbox message");
        return Ok((Completion::NotPending, None));
    };
    // A relayed entry keeps the sender's commitment to the tag, not the tag.
    let presented = match sender {
        Some(_) => crate::wire::receipt_commitment(ack_tag),
        None => *ack_tag,
    };
    // Constant time: the tag proves receipt, so timing must not reveal how
    // many leading bytes of a guess were right.
    let matched = aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &presented).is_ok();
    if !matched && sender.is_none() {
        warn!(message_id = %hex::encode(message_id), "outbox ack tag mismatch; entry kept");
        return Ok((Completion::BadTag, None));
    }
    if let Some(name) = &file
        && !is_blob_name(name)
    {
        return Err(StoreError::Corrupt {
            what: "outbox body file name",
        });
    }
    conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")
        .and_then(|mut stmt| stmt.execute(params![seq]))
        .map_err(StoreError::db("deleting a delivered outbox message"))?;
    let Some(sender) = sender else {
        return Ok((Completion::Completed { receipt: false }, file));
    };
    if !matched {
        // The recipient discards it; there is nothing true to put in a receipt.
        let completion = Completion::RemovedWithoutReceipt {
            sender_key_id: sender,
            sender_name: sender_name.unwrap_or_default(),
        };
        return Ok((completion, file));
    }
    let content_hash = content_hash.ok_or(StoreError::Corrupt {
        what: "relayed outbox entry without a content hash",
    })?;
    let delivered = to_sql_int("delivery time", crate::envelope::unix_now())?;
    conn.prepare_cached(
        "INSERT INTO receipts (sender_key_id, message_id, recipient_key_id, recipient_name,
                               content_hash, ack_tag, delivered)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (sender_key_id, message_id) DO NOTHING",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            sender,
            message_id,
            recipient,
            recipient_name,
            content_hash,
            ack_tag,
            delivered
        ])
    })
    .map_err(StoreError::db("storing a receipt"))?;
    Ok((Completion::Completed { receipt: true }, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose commit met a full disk tells each of its requests so: the server answers
    /// them "unavailable, try again" ([`StoreError::is_disk_full`]), not "internal".
    #[test]
    fn a_batch_that_met_a_full_disk_says_so_to_each_request() {
        let sqlite =
            |code: i32| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let full = sqlite(rusqlite::ffi::SQLITE_FULL);
        let error = BatchFailure::new(full.to_string(), &full).error();
        assert!(error.is_disk_full(), "{error}");
        assert!(error.to_string().contains("full"), "{error}");
        let other = sqlite(rusqlite::ffi::SQLITE_IOERR);
        assert!(
            !BatchFailure::new(other.to_string(), &other)
                .error()
                .is_disk_full()
        );
    }
}
