//! Copying an SQLite mailbox into PostgreSQL (`letterlock server copy-store`).
//!
//! The client keys of an SQLite mailbox of schema version 2 (trusted, replaced and removed,
//! with their history) are copied first, so the copied messages stay readable and the servers
//! on PostgreSQL trust whom the SQLite server trusted. A key the target knows already is left
//! as the target has it, and so is a name the target trusts with another key (the log says
//! so): the target's trust decisions are never overwritten.
//!
//! Reads the SQLite file directly, read-only (the ack tags of outbox entries never leave a
//! store through the `Store` trait), one row at a time on a blocking thread, and writes each
//! row through this store's ordinary insert and enqueue: the same checks, the same chunked
//! bodies, and idempotence for free, so a copy interrupted half-way is simply run again (rows
//! already there count as present). Memory stays bounded: a few rows in flight, large bodies
//! streamed from their files into database chunks.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use super::PostgresStore;
use crate::keys::PublicKey;
use crate::store::body::{BlobWriter, Body, SealedIdentity, is_blob_name};
use crate::store::error::StoreError;
use crate::store::{
    ClientKey, InboxRecord, InsertOutcome, KeyEnd, OutboxRecord, Receipt, RelayOutcome,
    RelayRecord, Store, Tag,
};

/// The SQLite schema versions this copy reads (`PRAGMA user_version`): 1 (inbox and outbox),
/// 2 (and the client keys), 3 (and relayed messages with their receipts), 4 (the same rows, one
/// more index).
const SQLITE_VERSIONS: std::ops::RangeInclusive<i64> = 1..=4;

/// The SQLite schema version from which a mailbox holds its client keys.
const SQLITE_CLIENT_KEYS: i64 = 2;

/// The SQLite schema version from which a mailbox holds relayed messages and receipts.
const SQLITE_RELAYS: i64 = 3;

/// Rows read ahead of the database writes.
const ROWS_AHEAD: usize = 4;

/// Suffix of an SQLite store's blob folder, beside the database file.
const BLOB_DIR_SUFFIX: &str = ".blobs";

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Inbox messages written now.
    pub inbox_copied: u64,
    /// Inbox messages the target held already (an earlier copy).
    pub inbox_present: u64,
    /// Inbox messages not copied because the target holds other bytes under the same sender
    /// and id (the target's copy is kept; the log names each).
    pub inbox_conflicts: u64,
    /// Outbox entries written now.
    pub outbox_copied: u64,
    /// Outbox entries the target held already.
    pub outbox_present: u64,
    /// Receipts of relayed messages written now (one the target holds already is kept).
    pub receipts_copied: u64,
    /// Client keys (trusted, replaced or removed) written now.
    pub keys_copied: u64,
    /// Client keys not written: the target knows the key already, or trusts its name with
    /// another key.
    pub keys_present: u64,
}

/// One row read from the SQLite file, with its body staged in the target.
enum Row {
    Key(ClientKey),
    Inbox(InboxRecord),
    Outbox(OutboxRecord),
    Relay(RelayRecord),
    Receipt(Receipt, Tag),
}

impl PostgresStore {
    /// Copies every inbox message and outbox entry of the SQLite mailbox at `path` into this
    /// database. Run it with the SQLite server stopped, so the copy is complete.
    pub async fn copy_from_sqlite(&self, path: &Path) -> Result<CopyReport, StoreError> {
        let path = path.to_path_buf();
        let home = self.bodies.clone();
        let (rows, mut incoming) = mpsc::channel(ROWS_AHEAD);
        let reader = tokio::task::spawn_blocking(move || {
            read_rows(&path, || BlobWriter::for_database(home.clone()), &rows)
        });
        let mut report = CopyReport::default();
        while let Some(row) = incoming.recv().await {
            match row {
                Row::Key(key) => {
                    if self.copy_client_key(&key).await? {
                        report.keys_copied += 1;
                    } else {
                        report.keys_present += 1;
                    }
                }
                Row::Inbox(record) => match self.insert_inbox(record).await? {
                    InsertOutcome::Inserted => report.inbox_copied += 1,
                    InsertOutcome::Duplicate { .. } => report.inbox_present += 1,
                    InsertOutcome::Conflict => report.inbox_conflicts += 1,
                },
                Row::Outbox(record) => match self.enqueue_outbox(record).await {
                    Ok(()) => report.outbox_copied += 1,
                    Err(StoreError::OutboxDuplicate { .. }) => report.outbox_present += 1,
                    Err(err) => return Err(err),
                },
                // A relayed entry whose id the target holds otherwise is left as the target
                // has it, as an outbox entry is.
                Row::Relay(record) => match self.enqueue_relay(record).await? {
                    RelayOutcome::Stored => report.outbox_copied += 1,
                    RelayOutcome::Duplicate | RelayOutcome::Conflict => report.outbox_present += 1,
                },
                Row::Receipt(receipt, content_hash) => {
                    if self.copy_receipt(&receipt, &content_hash).await? {
                        report.receipts_copied += 1;
                    }
                }
            }
        }
        reader
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(report)
    }

    /// Writes one receipt unless the target holds one for its (sender, id). Returns whether
    /// it wrote.
    async fn copy_receipt(&self, r: &Receipt, content_hash: &Tag) -> Result<bool, StoreError> {
        let delivered = super::to_i64("delivery time", r.delivered)?;
        let client = self.client().await?;
        let written = client
            .execute(
                "INSERT INTO receipts (sender_key_id, message_id, recipient_key_id,
                        recipient_name, content_hash, ack_tag, delivered)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &&r.sender_key_id[..],
                    &&r.message_id[..],
                    &&r.recipient_key_id[..],
                    &r.recipient_name,
                    &&content_hash[..],
                    &&r.ack_tag[..],
                    &delivered,
                ],
            )
            .await
            .map_err(super::db("copying a receipt"))?;
        Ok(written == 1)
    }

    /// Writes one client key with its history unless the target knows the key or trusts its
    /// name with another key; bumps the trust generation when it wrote one, in the same
    /// transaction, so running servers see it. Returns whether it wrote.
    async fn copy_client_key(&self, key: &ClientKey) -> Result<bool, StoreError> {
        let since = super::to_i64("trust time", key.since)?;
        let ended = key
            .ended
            .map(|(at, _)| super::to_i64("untrust time", at))
            .transpose()?;
        let how = key.ended.map(|(_, how)| how.as_str());
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(super::db("starting to copy a client key"))?;
        super::lock_trust(&tx).await?;
        // No conflict target: a known key id and a name trusted with another key (the partial
        // unique index) are both left as they are.
        let written = tx
            .execute(
                "INSERT INTO client_keys (key_id, public_key, name, since, ended, ended_how)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &&key.key_id[..],
                    &key.public_key,
                    &key.name,
                    &since,
                    &ended,
                    &how,
                ],
            )
            .await
            .map_err(super::db("copying a client key"))?;
        if written == 0 {
            tracing::info!(
                client = %crate::text::quoted(&key.name),
                key = %hex::encode(key.key_id),
                "client key not copied: the target knows it, or trusts this name with another key"
            );
            return Ok(false);
        }
        super::bump_generation(&tx).await?;
        tx.commit()
            .await
            .map_err(super::db("committing a copied client key"))?;
        Ok(true)
    }
}

/// Reads every row, oldest first, and sends it with its body staged.
fn read_rows(
    path: &Path,
    writer: impl Fn() -> BlobWriter,
    rows: &mpsc::Sender<Row>,
) -> Result<(), StoreError> {
    // Its bodies are beside the file itself, whatever link leads to it.
    let path = &crate::store::SqliteStore::real_path(path);
    if !path.is_file() {
        return Err(StoreError::Io {
            action: "find the SQLite mailbox",
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(StoreError::db("reading the SQLite schema version"))?;
    if !SQLITE_VERSIONS.contains(&version) {
        return Err(StoreError::SchemaVersion {
            path: path.to_path_buf(),
            found: version,
            expected: *SQLITE_VERSIONS.end(),
        });
    }
    let mut blob_dir = path.as_os_str().to_owned();
    blob_dir.push(BLOB_DIR_SUFFIX);
    let blob_dir = PathBuf::from(blob_dir);

    // Signature lengths of the senders, by key id, to check a sealed identity (below).
    let mut sig_lens = std::collections::HashMap::new();
    if version >= SQLITE_CLIENT_KEYS {
        let mut stmt = conn
            .prepare(
                "SELECT name, key_id, public_key, since, ended, ended_how
                 FROM client_keys ORDER BY since, rowid",
            )
            .map_err(StoreError::db("reading the SQLite client keys"))?;
        let mut query = stmt
            .query([])
            .map_err(StoreError::db("reading the SQLite client keys"))?;
        while let Some(row) = query
            .next()
            .map_err(StoreError::db("reading the SQLite client keys"))?
        {
            let ended = match row
                .get::<_, Option<String>>(5)
                .map_err(StoreError::db("reading a client key row"))?
                .as_deref()
            {
                None => None,
                Some("replaced") => Some((get_u64(row, 4)?, KeyEnd::Replaced)),
                Some("removed") => Some((get_u64(row, 4)?, KeyEnd::Removed)),
                Some(_) => {
                    return Err(StoreError::Corrupt {
                        what: "SQLite client key (an unknown end reason)",
                    });
                }
            };
            let key = ClientKey {
                name: row
                    .get(0)
                    .map_err(StoreError::db("reading a client key row"))?,
                key_id: row
                    .get(1)
                    .map_err(StoreError::db("reading a client key row"))?,
                public_key: row
                    .get(2)
                    .map_err(StoreError::db("reading a client key row"))?,
                since: get_u64(row, 3)?,
                ended,
            };
            if let Ok(public) = PublicKey::from_der(&key.public_key) {
                sig_lens.insert(key.key_id, public.modulus_len());
            }
            if rows.blocking_send(Row::Key(key)).is_err() {
                return Ok(());
            }
        }
    }

    let mut stmt = conn
        .prepare(
            "SELECT sender_key_id, sender_name, message_id, created, received, mode,
                    plaintext_len, content_hash, ack_tag, body_inline, body_file
             FROM inbox ORDER BY rowid",
        )
        .map_err(StoreError::db("reading the SQLite inbox"))?;
    let mut query = stmt
        .query([])
        .map_err(StoreError::db("reading the SQLite inbox"))?;
    while let Some(row) = query
        .next()
        .map_err(StoreError::db("reading the SQLite inbox"))?
    {
        let body = read_body(row, 9, &blob_dir, &writer)?;
        let record = InboxRecord {
            sender_key_id: row.get(0).map_err(StoreError::db("reading an inbox row"))?,
            sender_name: row.get(1).map_err(StoreError::db("reading an inbox row"))?,
            message_id: row.get(2).map_err(StoreError::db("reading an inbox row"))?,
            created: get_u64(row, 3)?,
            received: get_u64(row, 4)?,
            mode: row.get(5).map_err(StoreError::db("reading an inbox row"))?,
            plaintext_len: get_u64(row, 6)?,
            content_hash: row.get(7).map_err(StoreError::db("reading an inbox row"))?,
            ack_tag: row.get(8).map_err(StoreError::db("reading an inbox row"))?,
            body,
        };
        // The bytes must be the ones the row's hash was taken of: a damaged file is not copied.
        if record.body.sha256() != Some(record.content_hash)
            && !identity_matches(row, &record, &blob_dir, &sig_lens)?
        {
            return Err(StoreError::Corrupt {
                what: "inbox body (its bytes do not match its content hash)",
            });
        }
        if rows.blocking_send(Row::Inbox(record)).is_err() {
            // The writing side stopped with an error of its own.
            return Ok(());
        }
    }
    drop(query);
    drop(stmt);

    // Relayed entries (version 3) name their sender; server-sealed ones have NULLs there.
    let relay_columns = if version >= SQLITE_RELAYS {
        "sender_key_id, sender_name, received, content_hash"
    } else {
        "NULL, NULL, NULL, NULL"
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT recipient_key_id, recipient_name, message_id, created, mode, plaintext_len,
                    ack_tag, body_inline, body_file, {relay_columns}
             FROM outbox ORDER BY seq"
        ))
        .map_err(StoreError::db("reading the SQLite outbox"))?;
    let mut query = stmt
        .query([])
        .map_err(StoreError::db("reading the SQLite outbox"))?;
    let column = || StoreError::db("reading an outbox row");
    while let Some(row) = query
        .next()
        .map_err(StoreError::db("reading the SQLite outbox"))?
    {
        let body = read_body(row, 7, &blob_dir, &writer)?;
        let sender: Option<[u8; 32]> = row.get(9).map_err(column())?;
        let outgoing = match sender {
            Some(sender_key_id) => Row::Relay(RelayRecord {
                sender_key_id,
                sender_name: row.get(10).map_err(column())?,
                recipient_key_id: row.get(0).map_err(column())?,
                recipient_name: row.get(1).map_err(column())?,
                message_id: row.get(2).map_err(column())?,
                created: get_u64(row, 3)?,
                received: get_u64(row, 11)?,
                mode: row.get(4).map_err(column())?,
                content_hash: row.get(12).map_err(column())?,
                commitment: row.get(6).map_err(column())?,
                body,
            }),
            None => Row::Outbox(OutboxRecord {
                recipient_key_id: row.get(0).map_err(column())?,
                recipient_name: row.get(1).map_err(column())?,
                message_id: row.get(2).map_err(column())?,
                created: get_u64(row, 3)?,
                mode: row.get(4).map_err(column())?,
                plaintext_len: get_u64(row, 5)?,
                expected_ack_tag: row.get(6).map_err(column())?,
                body,
            }),
        };
        if rows.blocking_send(outgoing).is_err() {
            return Ok(());
        }
    }
    drop(query);
    drop(stmt);

    if version >= SQLITE_RELAYS {
        let mut stmt = conn
            .prepare(
                "SELECT sender_key_id, message_id, recipient_key_id, recipient_name,
                        content_hash, ack_tag, delivered
                 FROM receipts ORDER BY delivered",
            )
            .map_err(StoreError::db("reading the SQLite receipts"))?;
        let mut query = stmt
            .query([])
            .map_err(StoreError::db("reading the SQLite receipts"))?;
        let column = || StoreError::db("reading a receipt row");
        while let Some(row) = query
            .next()
            .map_err(StoreError::db("reading the SQLite receipts"))?
        {
            let receipt = Receipt {
                sender_key_id: row.get(0).map_err(column())?,
                message_id: row.get(1).map_err(column())?,
                recipient_key_id: row.get(2).map_err(column())?,
                recipient_name: row.get(3).map_err(column())?,
                ack_tag: row.get(5).map_err(column())?,
                delivered: get_u64(row, 6)?,
            };
            let content_hash: Tag = row.get(4).map_err(column())?;
            if rows
                .blocking_send(Row::Receipt(receipt, content_hash))
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A non-negative integer column.
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> Result<u64, StoreError> {
    let value: i64 = row
        .get(idx)
        .map_err(StoreError::db("reading an SQLite row"))?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: "SQLite row (a negative size or time)",
    })
}

/// True when an inbox row's content hash is the [`SealedIdentity`] of its bytes (what a server
/// stores since identities; older rows hold SHA-256 of the bytes, checked by the caller). The
/// identity needs the wrapped-key length, which follows from the row and its sender's key. A
/// file body is read a second time for it.
fn identity_matches(
    row: &rusqlite::Row<'_>,
    record: &InboxRecord,
    blob_dir: &Path,
    sig_lens: &std::collections::HashMap<[u8; 32], usize>,
) -> Result<bool, StoreError> {
    use std::io::Read;
    let mut source: Box<dyn Read> = match record.body.inline_bytes() {
        Some(bytes) => Box::new(bytes),
        None => {
            let name: Option<String> = row
                .get(10)
                .map_err(StoreError::db("reading a body column"))?;
            let Some(name) = name.filter(|n| is_blob_name(n)) else {
                return Ok(false);
            };
            let path = blob_dir.join(name);
            Box::new(std::fs::File::open(&path).map_err(StoreError::io("open body file", &path))?)
        }
    };
    let mut head = [0u8; crate::envelope::HEADER_LEN];
    if source.read_exact(&mut head).is_err() {
        return Ok(false);
    }
    let Ok(header) = crate::envelope::Header::parse(&head) else {
        return Ok(false);
    };
    let wrapped_key_len = match header.mode {
        crate::envelope::Mode::Asymmetric => 0,
        crate::envelope::Mode::Hybrid => {
            let sig_len = sig_lens.get(&record.sender_key_id).copied();
            match sig_len.and_then(|sig_len| {
                SealedIdentity::wrapped_key_len(
                    &header,
                    record.body.len(),
                    record.plaintext_len,
                    sig_len,
                )
            }) {
                Some(k) => k,
                None => return Ok(false),
            }
        }
    };
    let mut identity = SealedIdentity::new(&header, wrapped_key_len);
    identity.update(&head);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = source
            .read(&mut buf)
            .map_err(StoreError::io("read body file in", blob_dir))?;
        if n == 0 {
            break;
        }
        identity.update(buf.get(..n).unwrap_or_default());
    }
    Ok(identity.finish() == record.content_hash)
}

/// The body of a row (columns `inline`, `inline + 1` = file name), staged in the target: an
/// inline one as it is, a file streamed into chunks.
fn read_body(
    row: &rusqlite::Row<'_>,
    inline: usize,
    blob_dir: &Path,
    writer: &impl Fn() -> BlobWriter,
) -> Result<Body, StoreError> {
    let bytes: Option<Vec<u8>> = row
        .get(inline)
        .map_err(StoreError::db("reading a body column"))?;
    let file: Option<String> = row
        .get(inline + 1)
        .map_err(StoreError::db("reading a body column"))?;
    match (bytes, file) {
        (Some(bytes), None) => Ok(Body::from_bytes(bytes)),
        (None, Some(name)) if is_blob_name(&name) => {
            let path = blob_dir.join(&name);
            let mut source = std::fs::File::open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    StoreError::BlobMissing { path: path.clone() }
                } else {
                    StoreError::io("open body file", &path)(e)
                }
            })?;
            let mut sink = writer();
            std::io::copy(&mut source, &mut sink)
                .map_err(StoreError::io("copy body file", &path))?;
            sink.finish()
        }
        _ => Err(StoreError::Corrupt {
            what: "message body reference",
        }),
    }
}
