//! [`PostgresStore`]: the mailbox in one PostgreSQL database, shared by several servers.
//!
//! The same guarantees as [`SqliteStore`](super::SqliteStore), across every server on the
//! database:
//! - a write method returns only after its transaction committed with `synchronous_commit =
//!   on` (forced on every connection this store opens), so an ack follows a durable commit;
//! - (sender, message id) is unique database-wide, so a replay to any server is answered from
//!   the first copy (`ON CONFLICT DO NOTHING`, then the stored hash and ack tag);
//! - an outbox entry is removed only by the expected ack tag, compared in constant time, under
//!   a row lock, so two servers completing the same delivery remove it once;
//! - bodies over [`INLINE_MAX`](super::INLINE_MAX) live in the database in chunks (see
//!   `body.rs`), never on one server's disk, streamed with constant memory both ways.
//!
//! Connections come from a deadpool pool of [`POOL_SIZE`]; a lost connection fails the
//! request in flight (nothing is acked; the client retries) and is replaced on the next
//! request, so the store carries on once the database is back. The schema is
//! created and migrated at [`PostgresStore::connect`] (see `schema.rs` and docs/STORE.md).

mod body;
#[cfg(feature = "sqlite")]
mod copy;
mod group;
mod schema;

use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::config::Host;
use tokio_postgres::{NoTls, Row};
use tracing::{debug, info, warn};

pub(crate) use body::{BodyHome, ChunkUpload, StagedBody};
pub use body::{CHUNK_SIZE, MAX_BODY_STREAMS};
#[cfg(feature = "sqlite")]
pub use copy::CopyReport;
pub use group::{COMMITTERS, MAX_BATCH};
pub use schema::SCHEMA_VERSION;

use super::body::{BlobWriter, Body};
use super::error::StoreError;
use super::{
    ClientKey, Completion, InboxMessage, InboxRecord, InboxSummary, InsertOutcome, KeyEnd, KeyId,
    KnownMessage, MAX_MATCHES, MessageId, OutboxEntry, OutboxRecord, Receipt, RelayOutcome,
    RelayRecord, Store, StoreStats, Tag, TrustOutcome, TrustRequest, TrustedClients, WriteComing,
    prefix_range,
};
use body::ChunkReader;
use group::{InboxRow, OutboxRow, Write};

/// Pooled connections per store (per server process): enough for the server's concurrent
/// requests to overlap their commits (PostgreSQL flushes concurrent commits together), few
/// enough that four servers fit in a default `max_connections` of 100 with their
/// [`MAX_BODY_STREAMS`] body connections (4 × (16 + 8) = 96).
pub const POOL_SIZE: usize = 16;

/// How long a request waits for a pooled connection before failing as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Connect timeout when the URL sets none: a server whose database is unreachable should
/// answer "unavailable" in seconds, not hang on the kernel's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A committed body no row names is deleted by the sweep at connect once this old: old
/// enough that no server can still be between committing the body and committing its row.
const ORPHAN_AGE: Duration = Duration::from_secs(60 * 60);

/// Columns of an inbox summary, in the order [`inbox_summary`] reads them.
const INBOX_COLUMNS: &str = "message_id, sender_name, sender_key_id, created, received, mode,
     plaintext_len, body_size, content_hash";

/// The PostgreSQL mailbox. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PostgresStore {
    pool: Pool,
    /// Where large bodies go, shared with writers and staged bodies.
    bodies: Arc<BodyHome>,
    /// The database as shown in messages (no password).
    target: String,
    /// Schema version found before this store migrated (0: a new database).
    found_version: i64,
    /// The queue of inbox inserts and outbox enqueues, written in batches by the group task
    /// (`group.rs`).
    writes: mpsc::Sender<Write>,
    /// The group task, awaited at [`close`](PostgresStore::close) so queued writes finish.
    group: tokio::task::JoinHandle<()>,
    /// Transactions and requests the group task committed.
    counters: Arc<group::Counters>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Shorthand for [`StoreError::Database`] from a PostgreSQL error, used with `map_err`; an
/// error of the connection rather than of the statement is [`StoreError::ConnectionLost`].
fn db(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| {
        if connection_lost(&source) {
            StoreError::ConnectionLost {
                action,
                source: Box::new(source),
            }
        } else {
            StoreError::Database {
                action,
                source: Box::new(source),
            }
        }
    }
}

/// Whether `e` says the connection is gone rather than that the statement failed: the
/// connection closed, an I/O error on its socket, or a server error of SQLSTATE class 08
/// (connection exception) or 57P01..57P03 (terminated by an administrator, crash shutdown,
/// cannot connect now: what `pg_terminate_backend` and a server restart send).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Why the server refused the login, when `e`, from opening a connection, is that rather than
/// a server that could not be reached: SQLSTATE 28P01 (`invalid_password`) or 28000
/// (`invalid_authorization_specification`: no such role, no pg_hba.conf rule, a rejecting
/// rule), with the server's message; or the server asking for a password the URL does not hold
/// (tokio-postgres's own "password missing"). Retrying cannot help until the URL or the server
/// changes.
fn login_refused(e: &tokio_postgres::Error) -> Option<String> {
    use tokio_postgres::error::SqlState;
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return (*code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            .then(|| db.message().to_owned());
    }
    // Kind::Config, whose cause says "password missing".
    std::error::Error::source(e)
        .is_some_and(|cause| cause.to_string() == "password missing")
        .then(|| "it asks for a password, and the URL has none".to_owned())
}

/// The error of a connection to `target` that could not be opened: [`StoreError::LoginRefused`]
/// when the server refused the login, else [`StoreError::Connect`].
pub(crate) fn connect_failed(target: &str, e: tokio_postgres::Error) -> StoreError {
    match login_refused(&e) {
        Some(reason) => StoreError::LoginRefused {
            target: target.to_owned(),
            reason,
        },
        None => StoreError::Connect {
            target: target.to_owned(),
            source: Box::new(e),
        },
    }
}

/// Why the server refused a new connection's login, when that is why a pool could not hand
/// out a connection (see [`login_refused`]).
pub(crate) fn pool_login_refused(e: &deadpool_postgres::PoolError) -> Option<String> {
    match e {
        deadpool_postgres::PoolError::Backend(e) => login_refused(e),
        _ => None,
    }
}

/// A `u64` as PostgreSQL's signed `bigint`.
fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// A `bigint` column stored from a `u64` (negative: not written by this store).
fn get_u64(row: &Row, idx: usize, what: &'static str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(idx).map_err(db("reading a row"))?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt { what })
}

/// A fixed-length `bytea` column.
fn get_array<const N: usize>(
    row: &Row,
    idx: usize,
    what: &'static str,
) -> Result<[u8; N], StoreError> {
    let bytes: &[u8] = row.try_get(idx).map_err(db("reading a row"))?;
    <[u8; N]>::try_from(bytes).map_err(|_| StoreError::Corrupt { what })
}

/// The `mode` column (a `smallint` holding a byte).
fn get_mode(row: &Row, idx: usize) -> Result<u8, StoreError> {
    let mode: i16 = row.try_get(idx).map_err(db("reading a row"))?;
    u8::try_from(mode).map_err(|_| StoreError::Corrupt {
        what: "message mode",
    })
}

/// The database a config points at, for messages: user, hosts, ports and database name,
/// never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgres://{}@{}{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        if ports.is_empty() {
            String::new()
        } else {
            format!(":{}", ports.join(","))
        },
        config.get_dbname().unwrap_or("")
    )
}

/// Refuses a URL whose user name or password holds an '@' as it is: the parser takes the part
/// after the first '@' for the host, so a piece of the password would be shown in messages as
/// the host and looked up in the DNS (found by a trial run). The error does not repeat the URL.
fn check_userinfo(url: &str) -> Result<(), StoreError> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Ok(());
    };
    // Up to the query, not only to the first '/': the parser ends the credentials at the first
    // '@' anywhere before it, so `ll:ab@cd/ef@host/db` would take `cd` for the host.
    let before_query = rest.split('?').next().unwrap_or_default();
    if before_query.matches('@').count() > 1 {
        return Err(StoreError::BadUrl {
            source: "an '@' in its user name or password must be written %40".into(),
        });
    }
    Ok(())
}

/// Refuses a URL that asks for TLS: the store connects with `NoTls`, so `sslmode=require`
/// would send PostgreSQL's TLS request and fail with a handshake error ("server does not
/// support TLS" or "no TLS implementation configured"), and `verify-ca` / `verify-full` do not
/// parse. `sslmode=prefer` (tokio-postgres's default) and `disable` connect without TLS, as
/// every connection of the store does.
fn check_no_tls(url: &str) -> Result<(), StoreError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    for pair in query.split('&') {
        let asks_tls = match pair.split_once('=') {
            Some(("sslmode", mode)) => matches!(mode, "require" | "verify-ca" | "verify-full"),
            Some(("sslnegotiation", how)) => how == "direct",
            _ => false,
        };
        if asks_tls {
            return Err(StoreError::TlsNotBuilt {
                setting: pair.to_owned(),
            });
        }
    }
    Ok(())
}

/// Parses `url` and adds what every connection of the store needs.
fn store_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    check_userinfo(url)?;
    check_no_tls(url)?;
    // The error does not repeat the URL: it may hold a password.
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::BadUrl {
        source: Box::new(e),
    })?;
    // The same in the key=value form of a connection string.
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(StoreError::TlsNotBuilt {
            setting: "sslmode=require".to_owned(),
        });
    }
    // Durability is the store's promise, not the server's configuration: a commit returns
    // only once its WAL is flushed, whatever the database's default.
    let options = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => {
            format!("{existing} -c synchronous_commit=on")
        }
        _ => "-c synchronous_commit=on".to_owned(),
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("letterlock");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

impl PostgresStore {
    /// Runs `delete` (a `DELETE ... RETURNING body_id` of one row, keyed by `key` and
    /// `message_id`) and deletes the row's body in the same transaction: an operator's removal
    /// of one message, `action` naming it in errors. Whether the row was there.
    async fn remove_one(
        &self,
        action: &'static str,
        delete: &'static str,
        key: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db(action))?;
        let row = tx
            .query_opt(delete, &[&&key[..], &&message_id[..]])
            .await
            .map_err(db(action))?;
        let Some(row) = row else {
            return Ok(false);
        };
        let body_id: Option<i64> = row.try_get(0).map_err(db(action))?;
        if let Some(id) = body_id {
            // Its chunks go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM body WHERE id = $1", &[&id])
                .await
                .map_err(db(action))?;
        }
        tx.commit().await.map_err(db(action))?;
        Ok(true)
    }

    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db`, or
    /// `?host=/socket/dir` for a Unix socket), creates or migrates the schema, sweeps bodies
    /// left unreferenced by a crash, and starts the pool. Plain connections only (no TLS: a URL
    /// asking for it with `sslmode=require`, `verify-ca` or `verify-full` is refused as
    /// [`StoreError::TlsNotBuilt`]): use it on a trusted network or a Unix socket.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = store_config(url)?;
        let target = describe(&config);
        let (mut client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| connect_failed(&target, e))?;
        let driver = tokio::spawn(connection);
        let found_version = schema::migrate(&mut client, &target).await?;
        let database_id: String = client
            .query_one("SELECT id::text FROM mailbox", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db("reading the mailbox id"))?;
        drop(client);
        let _ = driver.await;

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A broken connection reports itself closed and is replaced.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Task(format!("could not build the connection pool: {e}")))?;
        let (discard, discarded) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(clean_discarded(pool.clone(), discarded));
        let counters = Arc::new(group::Counters::default());
        let (writes, queue) = mpsc::channel(group::QUEUE_CAPACITY);
        let group = tokio::spawn(group::run(
            pool.clone(),
            target.clone(),
            queue,
            counters.clone(),
        ));
        let store = Self {
            pool,
            bodies: Arc::new(BodyHome {
                config,
                database_id,
                target: target.clone(),
                streams: Arc::new(Semaphore::new(MAX_BODY_STREAMS)),
                discard,
            }),
            target,
            found_version,
            writes,
            group,
            counters,
        };
        let swept = store.sweep_orphan_bodies().await?;
        if swept > 0 {
            info!(swept, "removed message bodies left by an interrupted write");
        }
        debug!(target = %store.target, "PostgreSQL mailbox connected");
        Ok(store)
    }

    /// The database, as shown in messages (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The schema version the database had before [`connect`](Self::connect) migrated it
    /// (0 for a new database); it now has [`SCHEMA_VERSION`].
    pub fn schema_version_found(&self) -> i64 {
        self.found_version
    }

    /// Deletes committed bodies that no inbox or outbox row names and that were staged over
    /// an hour ago (a crash between committing a body and committing its row). Returns how
    /// many went.
    pub async fn sweep_orphan_bodies(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let age = ORPHAN_AGE.as_secs_f64();
        client
            .execute(
                "DELETE FROM body b
                 WHERE b.staged < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM inbox WHERE body_id = b.id)
                   AND NOT EXISTS (SELECT 1 FROM outbox WHERE body_id = b.id)",
                &[&age],
            )
            .await
            .map_err(db("sweeping unreferenced bodies"))
    }

    /// How many committed bodies the database holds (referenced or not), for tests.
    pub async fn body_count(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM body", &[])
            .await
            .map_err(db("counting bodies"))?;
        get_u64(&row, 0, "body count")
    }

    /// Group commit counters: how many transactions committed how many inbox inserts and
    /// outbox enqueues (fewer transactions than writes: batches formed).
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            batches_committed: self.counters.batches.load(Ordering::Relaxed),
            writes_committed: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Inbox inserts and outbox enqueues submitted and not yet answered (queued for the group
    /// task or being committed), for tests and metrics.
    pub fn writes_in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Lets the group task commit the writes already queued, then closes the pool:
    /// connections in use finish their request, idle ones close.
    pub async fn close(self) -> Result<(), StoreError> {
        let Self {
            pool,
            writes,
            group,
            ..
        } = self;
        drop(writes);
        let finished = group.await;
        pool.close();
        finished.map_err(|e| StoreError::Task(format!("the group commit task failed: {e}")))
    }

    /// Queues a write for the group task and waits for its answer, sent after its batch
    /// committed.
    async fn submit<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let _in_flight = group::InFlight::enter(&self.counters);
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(write(reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// A pooled connection, or "unavailable" when the database cannot be reached.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            let target = self.target.clone();
            match pool_login_refused(&e) {
                Some(reason) => StoreError::LoginRefused { target, reason },
                None => StoreError::Connect {
                    target,
                    source: Box::new(e),
                },
            }
        })
    }

    /// The two body columns of a row for `body`: inline bytes or a staged body of this
    /// database. A body staged elsewhere (a file of an SQLite store, another database) is
    /// refused: no row here could name it.
    fn body_columns<'b>(
        &self,
        body: &'b Body,
    ) -> Result<(Option<&'b [u8]>, Option<i64>), StoreError> {
        if let Some(bytes) = body.inline_bytes() {
            return Ok((Some(bytes), None));
        }
        match body.staged_chunks() {
            Some(staged) if staged.database_id() == self.bodies.database_id => {
                Ok((None, Some(staged.id())))
            }
            Some(_) => Err(StoreError::ForeignBlob {
                staged_in: PathBuf::from("another PostgreSQL mailbox"),
                expected: PathBuf::from(&self.target),
            }),
            None => Err(StoreError::ForeignBlob {
                staged_in: body
                    .staged_in()
                    .map_or_else(|| PathBuf::from("a file"), PathBuf::from),
                expected: PathBuf::from(&self.target),
            }),
        }
    }

    /// A reader over a stored body: inline bytes, or the chunks streamed.
    fn body_reader(
        &self,
        inline: Option<Vec<u8>>,
        body_id: Option<i64>,
        size: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        match (inline, body_id) {
            (Some(bytes), None) => Ok(Box::new(Cursor::new(bytes))),
            (None, Some(id)) => Ok(Box::new(ChunkReader::open(self.bodies.clone(), id, size)?)),
            _ => Err(StoreError::Corrupt {
                what: "message body reference",
            }),
        }
    }
}

/// Deletes bodies whose [`StagedBody`] was dropped without a committed row, unless a row
/// names them after all (a commit whose answer was lost); ends when the store and every body
/// of it are gone.
async fn clean_discarded(pool: Pool, mut discarded: tokio::sync::mpsc::UnboundedReceiver<i64>) {
    while let Some(id) = discarded.recv().await {
        let result = match pool.get().await {
            Ok(client) => client
                .execute(
                    "DELETE FROM body b WHERE b.id = $1
                       AND NOT EXISTS (SELECT 1 FROM inbox WHERE body_id = b.id)
                       AND NOT EXISTS (SELECT 1 FROM outbox WHERE body_id = b.id)",
                    &[&id],
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => debug!(body = id, "removed an unused staged body"),
            // The sweep at a later connect removes it.
            Err(err) => warn!(body = id, %err, "could not remove an unused staged body"),
        }
    }
}

/// Read an inbox summary from a row selected with [`INBOX_COLUMNS`].
fn inbox_summary(row: &Row) -> Result<InboxSummary, StoreError> {
    Ok(InboxSummary {
        message_id: get_array(row, 0, "inbox message id")?,
        sender_name: row.try_get(1).map_err(db("reading a row"))?,
        sender_key_id: get_array(row, 2, "inbox sender key id")?,
        created: get_u64(row, 3, "inbox creation time")?,
        received: get_u64(row, 4, "inbox receive time")?,
        mode: get_mode(row, 5)?,
        plaintext_len: get_u64(row, 6, "inbox plaintext length")?,
        body_size: get_u64(row, 7, "inbox body size")?,
        content_hash: get_array(row, 8, "inbox content hash")?,
    })
}

/// Read an outbox entry from a row whose first nine columns are recipient_key_id,
/// recipient_name, message_id, created, mode, plaintext_len, body_size, sender_key_id,
/// sender_name.
fn outbox_entry(row: &Row) -> Result<OutboxEntry, StoreError> {
    let sender_key_id: Option<&[u8]> = row.try_get(7).map_err(db("reading a row"))?;
    let sender = match sender_key_id {
        None => None,
        Some(id) => Some((
            KeyId::try_from(id).map_err(|_| StoreError::Corrupt {
                what: "outbox sender key id",
            })?,
            row.try_get::<_, Option<String>>(8)
                .map_err(db("reading a row"))?
                .unwrap_or_default(),
        )),
    };
    Ok(OutboxEntry {
        sender,
        recipient_key_id: get_array(row, 0, "outbox recipient key id")?,
        recipient_name: row.try_get(1).map_err(db("reading a row"))?,
        message_id: get_array(row, 2, "outbox message id")?,
        created: get_u64(row, 3, "outbox creation time")?,
        mode: get_mode(row, 4)?,
        plaintext_len: get_u64(row, 5, "outbox plaintext length")?,
        body_size: get_u64(row, 6, "outbox body size")?,
    })
}

/// Columns of a client key, in the order [`client_key`] reads them.
const CLIENT_KEY_COLUMNS: &str = "name, key_id, public_key, since, ended, ended_how";

/// Read a client key from a row whose columns from `at` on are [`CLIENT_KEY_COLUMNS`].
fn client_key(row: &Row, at: usize) -> Result<ClientKey, StoreError> {
    let ended: Option<i64> = row.try_get(at + 4).map_err(db("reading a client key"))?;
    let how: Option<&str> = row.try_get(at + 5).map_err(db("reading a client key"))?;
    let ended = match (ended, how) {
        (None, None) => None,
        (Some(when), Some(how)) => {
            let when = u64::try_from(when).map_err(|_| StoreError::Corrupt {
                what: "client key end time",
            })?;
            let how = match how {
                "replaced" => KeyEnd::Replaced,
                "removed" => KeyEnd::Removed,
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "client key end reason",
                    });
                }
            };
            Some((when, how))
        }
        _ => {
            return Err(StoreError::Corrupt {
                what: "client key end",
            });
        }
    };
    Ok(ClientKey {
        name: row.try_get(at).map_err(db("reading a client key"))?,
        key_id: get_array(row, at + 1, "client key id")?,
        public_key: row.try_get(at + 2).map_err(db("reading a client key"))?,
        since: get_u64(row, at + 3, "client key trust time")?,
        ended,
    })
}

/// The answer the stored rows give a relayed message, if its id is taken: the same sender's id
/// waiting or delivered (same content hash: duplicate, else conflict), or the recipient's id
/// from someone else (conflict). `None`: free.
async fn relay_repeat(
    client: &tokio_postgres::Client,
    record: &RelayRecord,
) -> Result<Option<RelayOutcome>, StoreError> {
    let sender = (&record.sender_key_id[..], &record.message_id[..]);
    let mut earlier = client
        .query_opt(
            "SELECT content_hash FROM outbox WHERE sender_key_id = $1 AND message_id = $2",
            &[&sender.0, &sender.1],
        )
        .await
        .map_err(db("looking up a relayed message id"))?;
    if earlier.is_none() {
        earlier = client
            .query_opt(
                "SELECT content_hash FROM receipts WHERE sender_key_id = $1 AND message_id = $2",
                &[&sender.0, &sender.1],
            )
            .await
            .map_err(db("looking up a receipt"))?;
    }
    let id = hex::encode(record.message_id);
    let repeat = |row: &Row, column: usize| -> Result<Option<RelayOutcome>, StoreError> {
        let hash: Tag = get_array(row, column, "relayed content hash")?;
        // Content hashes are not secret: a plain comparison is fine here.
        Ok(Some(if hash == record.content_hash {
            debug!(message_id = %id, "relay duplicate (retry)");
            RelayOutcome::Duplicate
        } else {
            warn!(message_id = %id, sender = %crate::text::quoted(&record.sender_name), "relay conflict: id reused for different content");
            RelayOutcome::Conflict
        }))
    };
    if let Some(row) = earlier {
        return repeat(&row, 0);
    }
    let taken = client
        .query_opt(
            "SELECT sender_key_id, content_hash FROM outbox
             WHERE recipient_key_id = $1 AND message_id = $2",
            &[&&record.recipient_key_id[..], &sender.1],
        )
        .await
        .map_err(db("looking up an outbox message id"))?;
    if let Some(row) = &taken {
        // Another server may have stored this very (sender, id) between the first lookup and
        // this one (each statement sees what is committed when it starts): that is a repeat,
        // not someone else's id.
        let stored_by: Option<&[u8]> = row.try_get(0).map_err(db("reading an outbox message"))?;
        if stored_by == Some(&record.sender_key_id[..]) {
            return repeat(row, 1);
        }
        warn!(message_id = %id, sender = %crate::text::quoted(&record.sender_name), "relay conflict: the recipient already has this id from someone else");
        return Ok(Some(RelayOutcome::Conflict));
    }
    Ok(None)
}

/// Locks the trust generation row for the rest of a trust change's transaction: trust changes
/// through any server or command run one after the other, so two of them cannot both find a
/// name free and both take it.
async fn lock_trust(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "SELECT generation FROM trust_generation WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await
    .map_err(db("locking the trusted clients"))?;
    Ok(())
}

/// Bump the trust generation inside the transaction of a trust change.
async fn bump_generation(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE trust_generation SET generation = generation + 1 WHERE id = 1",
        &[],
    )
    .await
    .map_err(db("bumping the trust generation"))?;
    Ok(())
}

/// The trusted key of `name`, if any.
async fn trusted_by_name(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
) -> Result<Option<KeyId>, StoreError> {
    tx.query_opt(
        "SELECT key_id FROM client_keys WHERE name = $1 AND ended IS NULL",
        &[&name],
    )
    .await
    .map_err(db("looking up a trusted client"))?
    .map(|row| get_array(&row, 0, "client key id"))
    .transpose()
}

impl Store for PostgresStore {
    fn blob_writer(&self) -> BlobWriter {
        BlobWriter::for_database(self.bodies.clone())
    }

    /// Not counted: the group task gathers what is queued while its committers are busy, and
    /// holds nothing back (`group.rs`).
    fn write_coming(&self) -> WriteComing {
        WriteComing::default()
    }

    /// Queued for the group task (`group.rs`), which writes it in one transaction with
    /// whatever else is queued and answers after the commit.
    async fn insert_inbox(&self, record: InboxRecord) -> Result<InsertOutcome, StoreError> {
        let InboxRecord {
            sender_key_id,
            sender_name,
            message_id,
            created,
            received,
            mode,
            plaintext_len,
            content_hash,
            ack_tag,
            body,
        } = record;
        // Refused here, to this caller alone: a body no row of this database could name.
        self.body_columns(&body)?;
        let row = InboxRow {
            sender_key_id,
            message_id,
            sender_name,
            created: to_i64("created", created)?,
            received: to_i64("received", received)?,
            mode: i16::from(mode),
            plaintext_len: to_i64("plaintext length", plaintext_len)?,
            content_hash,
            ack_tag,
            body_size: to_i64("body size", body.len())?,
            body,
        };
        self.submit(|reply| Write::Inbox { row, reply }).await
    }

    async fn known_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<Option<KnownMessage>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(group::INBOX_LOOKUP)
            .await
            .map_err(db("preparing an inbox lookup"))?;
        let row = client
            .query_opt(&stmt, &[&&sender[..], &&message_id[..]])
            .await
            .map_err(db("looking up an inbox message id"))?;
        row.map(|row| {
            Ok(KnownMessage {
                content_hash: get_array(&row, 0, "inbox content hash")?,
                ack_tag: get_array(&row, 1, "inbox ack tag")?,
            })
        })
        .transpose()
    }

    async fn list_inbox(&self) -> Result<Vec<InboxSummary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {INBOX_COLUMNS} FROM inbox ORDER BY received, created, seq"),
                &[],
            )
            .await
            .map_err(db("listing the inbox"))?;
        rows.iter().map(inbox_summary).collect()
    }

    async fn find_inbox(&self, id_prefix: &str) -> Result<InboxMessage, StoreError> {
        let (low, high) = prefix_range(id_prefix)?;
        let prefix = id_prefix.to_ascii_lowercase();
        let client = self.client().await?;
        let mut rows = client
            .query(
                &format!(
                    "SELECT {INBOX_COLUMNS}, body_inline, body_id FROM inbox
                     WHERE message_id BETWEEN $1 AND $2 LIMIT 2"
                ),
                &[&&low[..], &&high[..]],
            )
            .await
            .map_err(db("looking up an inbox message"))?;
        if rows.len() > 1 {
            return Err(StoreError::Ambiguous { prefix });
        }
        let Some(row) = rows.pop() else {
            return Err(StoreError::NotFound { prefix });
        };
        let summary = inbox_summary(&row)?;
        let inline: Option<Vec<u8>> = row.try_get(9).map_err(db("reading an inbox message"))?;
        let body_id: Option<i64> = row.try_get(10).map_err(db("reading an inbox message"))?;
        let body = self.body_reader(inline, body_id, summary.body_size)?;
        Ok(InboxMessage { summary, body })
    }

    /// Queued for the group task, as [`insert_inbox`](Self::insert_inbox).
    async fn enqueue_outbox(&self, record: OutboxRecord) -> Result<(), StoreError> {
        let OutboxRecord {
            recipient_key_id,
            recipient_name,
            message_id,
            created,
            mode,
            plaintext_len,
            expected_ack_tag,
            body,
        } = record;
        self.body_columns(&body)?;
        let row = OutboxRow {
            recipient_key_id,
            message_id,
            recipient_name,
            created: to_i64("created", created)?,
            mode: i16::from(mode),
            plaintext_len: to_i64("plaintext length", plaintext_len)?,
            ack_tag: expected_ack_tag,
            body_size: to_i64("body size", body.len())?,
            body,
        };
        self.submit(|reply| Write::Outbox { row, reply }).await
    }

    /// Counted over `outbox_by_recipient`: the recipient's rows only.
    async fn waiting_relayed(&self, recipient: &KeyId) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM outbox
                 WHERE recipient_key_id = $1 AND sender_key_id IS NOT NULL",
                &[&&recipient[..]],
            )
            .await
            .map_err(db("counting relayed messages"))?;
        get_u64(&row, 0, "relayed message count")
    }

    async fn pending_outbox(&self, recipient: &KeyId) -> Result<Vec<OutboxEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT recipient_key_id, recipient_name, message_id, created, mode,
                        plaintext_len, body_size, sender_key_id, sender_name
                 FROM outbox WHERE recipient_key_id = $1 ORDER BY seq",
                &[&&recipient[..]],
            )
            .await
            .map_err(db("listing the outbox"))?;
        rows.iter().map(outbox_entry).collect()
    }

    /// Leases the free entries (never leased, or lease expired) in one statement: `FOR
    /// UPDATE SKIP LOCKED` lets a concurrent lease through another server pass over the rows
    /// this one is taking instead of waiting for them and then taking them too.
    async fn lease_outbox(
        &self,
        recipient: &KeyId,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH free AS (
                     SELECT seq FROM outbox
                     WHERE recipient_key_id = $1
                       AND (leased_until IS NULL OR leased_until <= clock_timestamp())
                     ORDER BY seq
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE outbox o SET leased_until = clock_timestamp() + make_interval(secs => $2)
                 FROM free WHERE o.seq = free.seq
                 RETURNING o.recipient_key_id, o.recipient_name, o.message_id, o.created, o.mode,
                           o.plaintext_len, o.body_size, o.sender_key_id, o.sender_name, o.seq",
                &[&&recipient[..], &lease.as_secs_f64()],
            )
            .await
            .map_err(db("leasing outbox messages"))?;
        let mut leased = rows
            .iter()
            .map(|row| {
                let seq: i64 = row.try_get(9).map_err(db("reading a row"))?;
                Ok((seq, outbox_entry(row)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING has no order of its own: queue order, as pending_outbox.
        leased.sort_by_key(|(seq, _)| *seq);
        Ok(leased.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Clears the lease of the given entries in one statement. Only a lease still running is
    /// touched (an expired one is free anyway); the caller releases only within the lease it
    /// took, so it never frees an entry another fetch has leased since.
    async fn release_outbox(
        &self,
        recipient: &KeyId,
        message_ids: &[MessageId],
    ) -> Result<(), StoreError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&[u8]> = message_ids.iter().map(|m| &m[..]).collect();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE outbox SET leased_until = NULL
                 WHERE recipient_key_id = $1 AND message_id = ANY($2)
                   AND leased_until > clock_timestamp()",
                &[&&recipient[..], &ids],
            )
            .await
            .map_err(db("releasing outbox leases"))?;
        Ok(())
    }

    async fn open_outbox_body(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT body_inline, body_id, body_size FROM outbox
                 WHERE recipient_key_id = $1 AND message_id = $2",
                &[&&recipient[..], &&message_id[..]],
            )
            .await
            .map_err(db("looking up an outbox message"))?
            .ok_or_else(|| StoreError::OutboxNotFound {
                message_id: hex::encode(message_id),
            })?;
        let inline: Option<Vec<u8>> = row.try_get(0).map_err(db("reading an outbox message"))?;
        let body_id: Option<i64> = row.try_get(1).map_err(db("reading an outbox message"))?;
        let size = get_u64(&row, 2, "outbox body size")?;
        self.body_reader(inline, body_id, size)
    }

    /// Not the group commit and not a transaction: the lookups and the insert are a few
    /// statements, each in autocommit, each seeing what was committed when it started. A
    /// transaction would add nothing (under READ COMMITTED its statements see the same), and
    /// the insert alone writes: the unique indexes on (sender, id) and (recipient, id) settle
    /// a race between servers (`ON CONFLICT DO NOTHING`, then the stored row answers). The
    /// lookups run in the order outbox, then receipts: a completion deletes the entry and
    /// stores the receipt in one commit, so a later statement never sees less than an earlier
    /// one and one of the two is always seen.
    async fn enqueue_relay(&self, record: RelayRecord) -> Result<RelayOutcome, StoreError> {
        let (inline, body_id) = self.body_columns(&record.body)?;
        let created = to_i64("created", record.created)?;
        let received = to_i64("received", record.received)?;
        let body_size = to_i64("body size", record.body.len())?;
        let pooled = self.client().await?;
        let client: &tokio_postgres::Client = &pooled;
        if let Some(outcome) = relay_repeat(client, &record).await? {
            return Ok(outcome);
        }
        let inserted = client
            .execute(
                "INSERT INTO outbox (recipient_key_id, message_id, recipient_name, created, mode,
                        plaintext_len, ack_tag, body_size, body_inline, body_id, sender_key_id,
                        sender_name, received, content_hash)
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT DO NOTHING",
                &[
                    &&record.recipient_key_id[..],
                    &&record.message_id[..],
                    &record.recipient_name,
                    &created,
                    &i16::from(record.mode),
                    &&record.commitment[..],
                    &body_size,
                    &inline,
                    &body_id,
                    &&record.sender_key_id[..],
                    &record.sender_name,
                    &received,
                    &&record.content_hash[..],
                ],
            )
            .await
            .map_err(db("queueing a relayed message"))?;
        if inserted == 1 {
            let mut body = record.body;
            body.keep();
            return Ok(RelayOutcome::Stored);
        }
        // Another server stored this (sender, id) or the recipient's id meanwhile: answered
        // from what is stored now; the body is dropped (and deleted by the cleaner).
        Ok(relay_repeat(client, &record)
            .await?
            .unwrap_or(RelayOutcome::Conflict))
    }

    async fn complete_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
        ack_tag: &Tag,
    ) -> Result<Completion, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting an outbox completion"))?;
        // FOR UPDATE: a second server completing the same entry waits here, then finds it gone.
        let row = tx
            .query_opt(
                "SELECT seq, ack_tag, body_id, sender_key_id, recipient_name, content_hash,
                        sender_name
                 FROM outbox WHERE recipient_key_id = $1 AND message_id = $2 FOR UPDATE",
                &[&&recipient[..], &&message_id[..]],
            )
            .await
            .map_err(db("looking up an outbox message"))?;
        let Some(row) = row else {
            debug!(message_id = %hex::encode(message_id), "ack for an unknown outbox message");
            return Ok(Completion::NotPending);
        };
        let seq: i64 = row.try_get(0).map_err(db("reading an outbox message"))?;
        let expected: &[u8] = row.try_get(1).map_err(db("reading an outbox message"))?;
        let body_id: Option<i64> = row.try_get(2).map_err(db("reading an outbox message"))?;
        let sender: Option<&[u8]> = row.try_get(3).map_err(db("reading an outbox message"))?;
        // A relayed entry keeps the sender's commitment to the tag, not the tag.
        let presented = match sender {
            Some(_) => crate::wire::receipt_commitment(ack_tag),
            None => *ack_tag,
        };
        // Constant time: the tag proves receipt, so timing must not reveal how many leading
        // bytes of a guess were right.
        let matched =
            aws_lc_rs::constant_time::verify_slices_are_equal(expected, &presented).is_ok();
        if !matched && sender.is_none() {
            warn!(message_id = %hex::encode(message_id), "outbox ack tag mismatch; entry kept");
            return Ok(Completion::BadTag);
        }
        // A relayed entry whose tag does not match is deleted too (the recipient discards
        // it), but gets no receipt: there is nothing true to put in one.
        tx.execute("DELETE FROM outbox WHERE seq = $1", &[&seq])
            .await
            .map_err(db("deleting a delivered outbox message"))?;
        if let Some(id) = body_id {
            tx.execute("DELETE FROM body WHERE id = $1", &[&id])
                .await
                .map_err(db("deleting a delivered message body"))?;
        }
        let completion = match sender {
            None => Completion::Completed { receipt: false },
            Some(sender) if !matched => {
                let sender_name: Option<String> =
                    row.try_get(6).map_err(db("reading an outbox message"))?;
                Completion::RemovedWithoutReceipt {
                    sender_key_id: sender.try_into().map_err(|_| StoreError::Corrupt {
                        what: "relayed outbox entry's sender key id",
                    })?,
                    sender_name: sender_name.unwrap_or_default(),
                }
            }
            Some(sender) => {
                let recipient_name: &str =
                    row.try_get(4).map_err(db("reading an outbox message"))?;
                let content_hash: Option<&[u8]> =
                    row.try_get(5).map_err(db("reading an outbox message"))?;
                let delivered = to_i64("delivery time", crate::envelope::unix_now())?;
                tx.execute(
                    "INSERT INTO receipts (sender_key_id, message_id, recipient_key_id,
                            recipient_name, content_hash, ack_tag, delivered)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (sender_key_id, message_id) DO NOTHING",
                    &[
                        &sender,
                        &&message_id[..],
                        &&recipient[..],
                        &recipient_name,
                        &content_hash,
                        &&ack_tag[..],
                        &delivered,
                    ],
                )
                .await
                .map_err(db("storing a receipt"))?;
                Completion::Completed { receipt: true }
            }
        };
        tx.commit()
            .await
            .map_err(db("committing an outbox completion"))?;
        Ok(completion)
    }

    async fn trust_generation(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT generation FROM trust_generation WHERE id = 1")
            .await
            .map_err(db("preparing the trust generation read"))?;
        let row = client
            .query_one(&stmt, &[])
            .await
            .map_err(db("reading the trust generation"))?;
        get_u64(&row, 0, "trust generation")
    }

    /// One statement, so one snapshot: the list is exactly the generation's (a change commits
    /// its rows and its bump together).
    async fn trusted_clients(&self) -> Result<TrustedClients, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT g.generation, {CLIENT_KEY_COLUMNS} FROM trust_generation g
                     LEFT JOIN client_keys ON ended IS NULL
                     WHERE g.id = 1 ORDER BY name"
                ),
                &[],
            )
            .await
            .map_err(db("reading the trusted clients"))?;
        let Some(first) = rows.first() else {
            return Err(StoreError::Corrupt {
                what: "trust generation (row missing)",
            });
        };
        let generation = get_u64(first, 0, "trust generation")?;
        let mut clients = Vec::with_capacity(rows.len());
        for row in &rows {
            // The one row of an empty list has no key: LEFT JOIN filled it with NULLs.
            let key_id: Option<&[u8]> = row.try_get(2).map_err(db("reading a client key"))?;
            if key_id.is_some() {
                clients.push(client_key(row, 1)?);
            }
        }
        Ok(TrustedClients {
            generation,
            clients,
        })
    }

    async fn client_keys(&self) -> Result<Vec<ClientKey>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {CLIENT_KEY_COLUMNS} FROM client_keys ORDER BY since, seq"),
                &[],
            )
            .await
            .map_err(db("reading the client keys"))?;
        rows.iter().map(|row| client_key(row, 0)).collect()
    }

    async fn trust_client(&self, r: TrustRequest) -> Result<TrustOutcome, StoreError> {
        let now = to_i64("trust time", r.now)?;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a trust change"))?;
        lock_trust(&tx).await?;
        let known = tx
            .query_opt(
                "SELECT name, ended IS NULL FROM client_keys WHERE key_id = $1",
                &[&&r.key_id[..]],
            )
            .await
            .map_err(db("looking up a client key"))?;
        if let Some(row) = known {
            let name: String = row.try_get(0).map_err(db("reading a client key"))?;
            let trusted: bool = row.try_get(1).map_err(db("reading a client key"))?;
            if trusted {
                // Nothing changes: the transaction rolls back as it is dropped.
                return Ok(if name == r.name {
                    TrustOutcome::AlreadyTrusted
                } else {
                    TrustOutcome::KeyTaken { name }
                });
            }
        }
        let old = trusted_by_name(&tx, &r.name).await?;
        if let Some(existing) = old {
            if !r.replace {
                return Ok(TrustOutcome::NameTaken { existing });
            }
            tx.execute(
                "UPDATE client_keys SET ended = $2, ended_how = 'replaced' WHERE key_id = $1",
                &[&&existing[..], &now],
            )
            .await
            .map_err(db("replacing a client key"))?;
        }
        // A key trusted before (then replaced or removed) is trusted again: its row, and so the
        // messages it signed, stay one.
        tx.execute(
            "INSERT INTO client_keys (key_id, public_key, name, since) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key_id) DO UPDATE
             SET name = EXCLUDED.name, since = EXCLUDED.since, ended = NULL, ended_how = NULL",
            &[&&r.key_id[..], &r.public_key, &r.name, &now],
        )
        .await
        .map_err(db("trusting a client key"))?;
        bump_generation(&tx).await?;
        tx.commit().await.map_err(db("committing a trust change"))?;
        Ok(match old {
            Some(old) => TrustOutcome::Replaced { old },
            None => TrustOutcome::Trusted,
        })
    }

    async fn untrust_client(&self, name: &str, now: u64) -> Result<Option<KeyId>, StoreError> {
        let now = to_i64("untrust time", now)?;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a trust change"))?;
        lock_trust(&tx).await?;
        let Some(key_id) = trusted_by_name(&tx, name).await? else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE client_keys SET ended = $2, ended_how = 'removed' WHERE key_id = $1",
            &[&&key_id[..], &now],
        )
        .await
        .map_err(db("removing a client key"))?;
        bump_generation(&tx).await?;
        tx.commit().await.map_err(db("committing a trust change"))?;
        Ok(Some(key_id))
    }

    async fn inbox_counts(&self) -> Result<Vec<(KeyId, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sender_key_id, count(*) FROM inbox GROUP BY sender_key_id",
                &[],
            )
            .await
            .map_err(db("counting inbox messages"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    get_array(row, 0, "inbox sender key id")?,
                    get_u64(row, 1, "inbox message count")?,
                ))
            })
            .collect()
    }

    async fn matching_inbox(&self, id_prefix: &str) -> Result<Vec<InboxSummary>, StoreError> {
        let (low, high) = prefix_range(id_prefix)?;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {INBOX_COLUMNS} FROM inbox WHERE message_id BETWEEN $1 AND $2
                     ORDER BY received, created, seq LIMIT $3"
                ),
                &[&&low[..], &&high[..], &MAX_MATCHES],
            )
            .await
            .map_err(db("looking up inbox messages"))?;
        rows.iter().map(inbox_summary).collect()
    }

    async fn open_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<InboxMessage, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {INBOX_COLUMNS}, body_inline, body_id FROM inbox
                     WHERE sender_key_id = $1 AND message_id = $2"
                ),
                &[&&sender[..], &&message_id[..]],
            )
            .await
            .map_err(db("reading an inbox message"))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                prefix: hex::encode(message_id),
            });
        };
        let summary = inbox_summary(&row)?;
        let inline: Option<Vec<u8>> = row.try_get(9).map_err(db("reading an inbox message"))?;
        let body_id: Option<i64> = row.try_get(10).map_err(db("reading an inbox message"))?;
        let body = self.body_reader(inline, body_id, summary.body_size)?;
        Ok(InboxMessage { summary, body })
    }

    /// Deletes the row and its chunked body in one transaction: no body outlives its message,
    /// and nothing is half-deleted.
    async fn remove_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        self.remove_one(
            "deleting an inbox message",
            "DELETE FROM inbox WHERE sender_key_id = $1 AND message_id = $2 RETURNING body_id",
            sender,
            message_id,
        )
        .await
    }

    async fn remove_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        // Not while a fetch, through any server, holds it (`lease_outbox`): that client may be
        // reading it now, and its ack would then find nothing.
        self.remove_one(
            "deleting an outbox message",
            "DELETE FROM outbox WHERE recipient_key_id = $1 AND message_id = $2 \
             AND (leased_until IS NULL OR leased_until <= clock_timestamp()) RETURNING body_id",
            recipient,
            message_id,
        )
        .await
    }

    async fn expire_inbox(&self, received_before: u64) -> Result<u64, StoreError> {
        let before = to_i64("retention cutoff", received_before)?;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting the deletion of expired messages"))?;
        let rows = tx
            .query(
                "DELETE FROM inbox WHERE received < $1 RETURNING body_id",
                &[&before],
            )
            .await
            .map_err(db("deleting expired inbox messages"))?;
        let bodies = rows
            .iter()
            .map(|row| row.try_get::<_, Option<i64>>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("deleting expired inbox messages"))?;
        let bodies: Vec<i64> = bodies.into_iter().flatten().collect();
        if !bodies.is_empty() {
            tx.execute("DELETE FROM body WHERE id = ANY($1)", &[&bodies])
                .await
                .map_err(db("deleting expired message bodies"))?;
        }
        tx.commit()
            .await
            .map_err(db("committing the deletion of expired messages"))?;
        Ok(rows.len() as u64)
    }

    async fn receipts(
        &self,
        sender: &KeyId,
        ids: &[MessageId],
    ) -> Result<Vec<Receipt>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&[u8]> = ids.iter().map(|m| &m[..]).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT message_id, recipient_key_id, recipient_name, ack_tag, delivered
                 FROM receipts WHERE sender_key_id = $1 AND message_id = ANY($2)",
                &[&&sender[..], &ids],
            )
            .await
            .map_err(db("reading receipts"))?;
        rows.iter()
            .map(|row| {
                Ok(Receipt {
                    sender_key_id: *sender,
                    message_id: get_array(row, 0, "receipt message id")?,
                    recipient_key_id: get_array(row, 1, "receipt recipient key id")?,
                    recipient_name: row.try_get(2).map_err(db("reading a receipt"))?,
                    ack_tag: get_array(row, 3, "receipt ack tag")?,
                    delivered: get_u64(row, 4, "receipt delivery time")?,
                })
            })
            .collect()
    }

    async fn expire_receipts(&self, delivered_before: u64) -> Result<u64, StoreError> {
        let before = to_i64("retention cutoff", delivered_before)?;
        let client = self.client().await?;
        client
            .execute("DELETE FROM receipts WHERE delivered < $1", &[&before])
            .await
            .map_err(db("deleting expired receipts"))
    }

    /// Every row's body reference is sound (inline length or the named body's size matches
    /// the row's `body_size`) and every body's chunks are complete (`chunks` rows numbered
    /// from 0, adding up to `size`). Table constraints guard the rest (lengths of ids,
    /// tags and hashes; one of inline or chunked).
    async fn integrity_check(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT
                   (SELECT count(*) FROM inbox i LEFT JOIN body b ON b.id = i.body_id
                     WHERE (i.body_inline IS NOT NULL AND length(i.body_inline) <> i.body_size)
                        OR (i.body_id IS NOT NULL AND b.size IS DISTINCT FROM i.body_size))
                 + (SELECT count(*) FROM outbox o LEFT JOIN body b ON b.id = o.body_id
                     WHERE (o.body_inline IS NOT NULL AND length(o.body_inline) <> o.body_size)
                        OR (o.body_id IS NOT NULL AND b.size IS DISTINCT FROM o.body_size))
                 + (SELECT count(*) FROM body b
                     WHERE b.chunks <> (SELECT count(*) FROM body_chunk c WHERE c.body = b.id)
                        OR b.size <> COALESCE(
                             (SELECT sum(length(c.bytes)) FROM body_chunk c WHERE c.body = b.id), 0)
                        OR EXISTS (SELECT 1 FROM body_chunk c
                                    WHERE c.body = b.id AND c.seq >= b.chunks))",
                &[],
            )
            .await
            .map_err(db("checking database integrity"))?;
        let problems: i64 = row.try_get(0).map_err(db("checking database integrity"))?;
        if problems != 0 {
            warn!(problems, "mailbox integrity check failed");
        }
        Ok(problems == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_at_sign_in_the_password_is_refused_without_showing_the_url() {
        let err = store_config("postgres://ll:abc@defSECRET@127.0.0.1:5432/mail")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("%40"), "{err}");
        assert!(!err.contains("SECRET") && !err.contains("abc"), "{err}");
        // A '/' in the password does not hide a second '@' (found by a review).
        let err = store_config("postgres://ll:ab@cd/ef@host/db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("%40") && !err.contains("cd"), "{err}");
        // Written %40, it is the password, and the host is the host.
        let config = store_config("postgresql://ll:abc%40defSECRET@127.0.0.1:5432/mail");
        let config = config.map_err(|e| e.to_string());
        assert_eq!(
            config.as_ref().map(|c| c.get_password()),
            Ok(Some(&b"abc@defSECRET"[..]))
        );
        assert_eq!(
            config.map(|c| describe(&c)),
            Ok("postgres://ll@127.0.0.1:5432/mail".to_owned())
        );
        // An '@' after the host (in an option) is no concern of this check.
        assert!(store_config("postgres://ll@127.0.0.1/mail?application_name=a@b").is_ok());
    }

    /// The store has no TLS: a URL asking for it is refused before any connection is tried,
    /// saying so, rather than failing in a TLS handshake (require) or as an invalid option
    /// (verify-*); prefer and disable connect without TLS, as they always did.
    #[test]
    fn a_url_asking_for_tls_is_refused_up_front() {
        for setting in [
            "sslmode=require",
            "sslmode=verify-ca",
            "sslmode=verify-full",
            "sslnegotiation=direct",
        ] {
            let url = format!("postgres://ll@/mail?host=/run/postgresql&{setting}");
            let err = store_config(&url).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(
                err.contains("TLS to PostgreSQL is not built") && err.contains(setting),
                "{setting}: {err}"
            );
        }
        let err = store_config("host=/run/postgresql user=ll dbname=mail sslmode=require")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("TLS to PostgreSQL is not built"), "{err}");
        for ok in [
            "sslmode=prefer",
            "sslmode=disable",
            "application_name=sslmode=require",
        ] {
            let url = format!("postgres://ll@127.0.0.1/mail?{ok}");
            assert!(store_config(&url).is_ok(), "{ok}");
        }
    }
}
