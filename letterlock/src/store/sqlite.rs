//! [`SqliteStore`]: the mailbox in one SQLite file plus a blob folder.
//!
//! Layout on disk, for a database at `mail.db`:
//! - `mail.db` (+ `-wal`, `-shm`): the rows, in WAL mode;
//! - `mail.db.blobs/`: bodies over [`INLINE_MAX`](super::INLINE_MAX) bytes,
//!   one file each, plus `.lock`, which tells openers whether another store
//!   handle (this process or another) is using the folder.
//!
//! Both are private to the user running the server: the database (and so its
//! `-wal` and `-shm`, which SQLite creates with the database's mode) is made
//! 0600 and the blob folder 0700; an existing store with wider modes is
//! tightened on open, with a log line.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::body::{BlobWriter, StoredBody, TEMP_PREFIX, is_blob_name, sync_dir};
use super::error::StoreError;
use super::writer::{COMMIT_SPACING, Counters, QUEUE_CAPACITY, WriteOp, Writer};
use super::{
    ClientKey, Completion, InboxMessage, InboxRecord, InboxSummary, InsertOutcome, KeyEnd, KeyId,
    KnownMessage, MAX_MATCHES, MessageId, OutboxEntry, OutboxRecord, Receipt, RelayOutcome,
    RelayRecord, Store, StoreStats, Tag, TrustOutcome, TrustRequest, TrustedClients, WriteComing,
    prefix_range,
};

/// Schema version kept in `PRAGMA user_version`; bump with every schema
/// change so an old binary refuses a newer database instead of misreading it.
///
/// - 1: inbox and outbox.
/// - 2: the trusted clients (`client_keys`, `trust_generation`).
/// - 3: relayed messages (the outbox's sender columns) and their receipts.
pub const SCHEMA_VERSION: i64 = 4;

/// Mode of the database file: the mailbox holds who wrote to whom and when.
const DB_MODE: u32 = 0o600;

/// Mode of the blob folder.
const BLOB_DIR_MODE: u32 = 0o700;

/// How long a connection waits for another writer's lock before failing.
/// `letterlock server send_msg` writes from a second process while the
/// server runs; a batch commit takes milliseconds, so 5 s is generous.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Suffix of the blob folder created next to the database file.
const BLOB_DIR_SUFFIX: &str = ".blobs";

/// Lock file inside the blob folder: every open store holds a shared lock on
/// it; only an opener that gets it exclusively (nobody else has the store
/// open) may sweep unreferenced files, which might otherwise be another
/// process's bodies that are staged but not committed yet.
const LOCK_FILE_NAME: &str = ".lock";

/// Name of the writer thread, as seen in debuggers and `top -H`.
const WRITER_THREAD_NAME: &str = "letterlock-store-writer";

/// The schema of version 1, created in one transaction on first open; later
/// versions are reached through the migrations after it.
///
/// Both tables are ordinary rowid tables (not `WITHOUT ROWID`): rows carry
/// inline bodies of up to 64 KiB, which SQLite stores far better as overflow
/// pages of a rowid table than inside a clustered index.
const SCHEMA: &str = "
CREATE TABLE inbox (
    sender_key_id  BLOB    NOT NULL CHECK (length(sender_key_id) = 32),
    message_id     BLOB    NOT NULL CHECK (length(message_id) = 16),
    sender_name    TEXT    NOT NULL,
    created        INTEGER NOT NULL,
    received       INTEGER NOT NULL,
    mode           INTEGER NOT NULL,
    plaintext_len  INTEGER NOT NULL CHECK (plaintext_len >= 0),
    content_hash   BLOB    NOT NULL CHECK (length(content_hash) = 32),
    ack_tag        BLOB    NOT NULL CHECK (length(ack_tag) = 32),
    body_size      INTEGER NOT NULL CHECK (body_size >= 0),
    body_inline    BLOB,
    body_file      TEXT UNIQUE,
    CHECK ((body_inline IS NULL) <> (body_file IS NULL)),
    UNIQUE (sender_key_id, message_id)
);
CREATE INDEX inbox_by_message_id ON inbox (message_id);
CREATE INDEX inbox_by_received ON inbox (received);

CREATE TABLE outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_key_id BLOB    NOT NULL CHECK (length(recipient_key_id) = 32),
    message_id       BLOB    NOT NULL CHECK (length(message_id) = 16),
    recipient_name   TEXT    NOT NULL,
    created          INTEGER NOT NULL,
    mode             INTEGER NOT NULL,
    plaintext_len    INTEGER NOT NULL CHECK (plaintext_len >= 0),
    ack_tag          BLOB    NOT NULL CHECK (length(ack_tag) = 32),
    body_size        INTEGER NOT NULL CHECK (body_size >= 0),
    body_inline      BLOB,
    body_file        TEXT UNIQUE,
    CHECK ((body_inline IS NULL) <> (body_file IS NULL)),
    UNIQUE (recipient_key_id, message_id)
);
";

/// Version 1 to 2: the trusted clients.
///
/// `client_keys` keeps every key ever trusted, never deleted: a replaced or
/// removed key gets `ended` and `ended_how`, and still opens the inbox
/// messages it signed (an inbox row's `sender_key_id` is this table's key).
/// At most one trusted (not ended) key per name. `trust_generation` is a
/// one-row counter bumped in the same transaction as every trust change.
const MIGRATE_1_TO_2: &str = "
CREATE TABLE client_keys (
    key_id     BLOB    PRIMARY KEY CHECK (length(key_id) = 32),
    public_key BLOB    NOT NULL,
    name       TEXT    NOT NULL,
    since      INTEGER NOT NULL,
    ended      INTEGER,
    ended_how  TEXT CHECK (ended_how IN ('replaced', 'removed')),
    CHECK ((ended IS NULL) = (ended_how IS NULL))
);
CREATE UNIQUE INDEX client_keys_trusted_name ON client_keys (name) WHERE ended IS NULL;
CREATE TABLE trust_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO trust_generation (id, generation) VALUES (1, 0);
CREATE INDEX inbox_by_sender ON inbox (sender_key_id);
";

/// Version 2 to 3: messages relayed from client to client, and their receipts.
///
/// A relayed outbox entry names its sender (`sender_key_id`, `sender_name`; both NULL for an
/// entry the server sealed), when it arrived (`received`) and its content hash (the message's
/// SealedIdentity), which tells a sender's retry from another message under the same id. Its
/// `ack_tag` column holds the sender's receipt commitment, SHA-256("letterlock v1 receipt" ||
/// ack tag), not the tag (the server never learns the tag before the recipient sends it), and
/// its `plaintext_len` is 0 (the server cannot know it). Relayed ids are unique per sender.
///
/// `receipts` keeps, per (sender, id), the recipient's ack tag once it matched the commitment,
/// and the content hash, so a repeat of a delivered message is still recognised.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE outbox ADD COLUMN sender_key_id BLOB
    CHECK (sender_key_id IS NULL OR length(sender_key_id) = 32);
ALTER TABLE outbox ADD COLUMN sender_name TEXT;
ALTER TABLE outbox ADD COLUMN received INTEGER;
ALTER TABLE outbox ADD COLUMN content_hash BLOB
    CHECK (content_hash IS NULL OR length(content_hash) = 32);
CREATE UNIQUE INDEX outbox_relayed ON outbox (sender_key_id, message_id)
    WHERE sender_key_id IS NOT NULL;
CREATE TABLE receipts (
    sender_key_id    BLOB    NOT NULL CHECK (length(sender_key_id) = 32),
    message_id       BLOB    NOT NULL CHECK (length(message_id) = 16),
    recipient_key_id BLOB    NOT NULL CHECK (length(recipient_key_id) = 32),
    recipient_name   TEXT    NOT NULL,
    content_hash     BLOB    NOT NULL CHECK (length(content_hash) = 32),
    ack_tag          BLOB    NOT NULL CHECK (length(ack_tag) = 32),
    delivered        INTEGER NOT NULL,
    PRIMARY KEY (sender_key_id, message_id)
);
CREATE INDEX receipts_by_delivered ON receipts (delivered);
";

/// Version 3 to 4: an index of each recipient's waiting relayed entries, so counting them
/// against the server's bound (`Store::waiting_relayed`, before every relay) reads index
/// entries only, instead of every outbox row of the recipient.
const MIGRATE_3_TO_4: &str = "
CREATE INDEX outbox_relayed_by_recipient ON outbox (recipient_key_id)
    WHERE sender_key_id IS NOT NULL;
";

/// Columns of a client key, in the order [`client_key`] reads them.
const CLIENT_KEY_COLUMNS: &str = "name, key_id, public_key, since, ended, ended_how";

/// Columns of an inbox summary, in the order [`inbox_summary`] reads them.
const INBOX_COLUMNS: &str = "message_id, sender_name, sender_key_id, created, received, mode,
     plaintext_len, body_size, content_hash";

/// How a [`SqliteStore`] works, where the defaults do not suit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Least time between the starts of two write transactions while more writes are on their
    /// way ([`Store::write_coming`]): a write that comes sooner after the last transaction
    /// began waits for the rest of it, and the writes behind it share its commit. A write with
    /// none announced behind it, or to an idle store, commits at once. Default 4 ms; zero
    /// commits every batch as soon as its first write comes.
    pub commit_spacing: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            commit_spacing: COMMIT_SPACING,
        }
    }
}

/// The SQLite mailbox. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    blob_dir: PathBuf,
    requests: Option<mpsc::Sender<WriteOp>>,
    writer: Option<JoinHandle<()>>,
    /// Reads go through their own connection so they never queue behind a
    /// batch commit (WAL lets them read the last committed state meanwhile).
    reader: Arc<Mutex<Connection>>,
    /// Rare writes outside the group commit (trust changes, deleting messages): their own
    /// connection, so they need no new kind of request in the writer; SQLite serialises them
    /// with the writer's batches (`BUSY_TIMEOUT`).
    admin: Arc<Mutex<Connection>>,
    counters: Arc<Counters>,
    /// Writes on their way ([`Store::write_coming`]), which the writer may wait for.
    coming: Arc<AtomicUsize>,
    /// Which outbox entries a fetch is delivering ([`Store::lease_outbox`]): in memory, since
    /// one server at a time runs on a SQLite mailbox.
    leases: super::leases::Leases,
    /// Shared lock on the blob folder's lock file, held while open.
    _folder_lock: File,
}

impl SqliteStore {
    /// `path` with every symbolic link resolved: the file's own path if it exists; a link to
    /// a file not made yet, the path it leads to (SQLite would create the file there); else the
    /// folder's resolved path and the name, or (no folder yet) `path` as given. Where a
    /// mailbox's bodies and locks live is derived from this, so that every spelling of the
    /// path finds the same ones.
    pub fn real_path(path: &Path) -> PathBuf {
        Self::resolve(path, 0)
    }

    /// [`SqliteStore::real_path`], following at most 40 links (as the kernel does).
    fn resolve(path: &Path, links: u32) -> PathBuf {
        if let Ok(real) = fs::canonicalize(path) {
            return real;
        }
        let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => parent,
            None => Path::new("."),
        };
        if links < 40
            && let Ok(target) = fs::read_link(path)
        {
            return Self::resolve(&parent.join(target), links + 1);
        }
        match (fs::canonicalize(parent), path.file_name()) {
            (Ok(parent), Some(name)) => parent.join(name),
            _ => path.to_path_buf(),
        }
    }

    /// Checks, before anything is created or changed, that `path` can hold this store: what
    /// [`SqliteStore::check_database`] checks, and that the user running letterlock may write
    /// the file and its folder (SQLite opens a read-only file read-only without an error, and
    /// the write-ahead log, the lock and the bodies live in the folder). A missing file in a
    /// missing folder passes: [`SqliteStore::open`] makes both.
    ///
    /// [`SqliteStore::open`] runs it first; a program that takes a lock beside the file, as
    /// the server does, runs it before that.
    pub fn check_path(path: &Path) -> Result<(), StoreError> {
        let real = Self::real_path(path);
        let Some(meta) = Self::existing_database(path, &real)? else {
            return folder_writable(&real);
        };
        // A write probe: opening for writing changes nothing, and fails as SQLite's own open
        // would for this user (its mode, an immutable file, a read-only mount).
        if let Err(err) = OpenOptions::new().write(true).open(&real) {
            use std::io::ErrorKind;
            return Err(match err.kind() {
                // EACCES, and EPERM (an immutable file); EROFS.
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                    read_only(&real, &meta)
                }
                _ => StoreError::io("open for writing the mailbox database", &real)(err),
            });
        }
        folder_writable(&real)
    }

    /// Checks, reading only, that `path` is an SQLite database or nothing yet: not a folder, a
    /// device or a pipe, not a symbolic link into a folder that does not exist, not a file
    /// with several names (hard links), and an existing non-empty file begins with SQLite's
    /// header ("SQLite format 3\0"). A missing file passes.
    pub fn check_database(path: &Path) -> Result<(), StoreError> {
        Self::existing_database(path, &Self::real_path(path)).map(drop)
    }

    /// [`SqliteStore::check_database`] of `given`, whose links lead to `real`: the file's
    /// metadata, or `None` when there is no file yet.
    fn existing_database(given: &Path, real: &Path) -> Result<Option<fs::Metadata>, StoreError> {
        let meta = match fs::metadata(real) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // Through a link: the file is made where it leads, but no folder is made at the
                // far end of a link.
                if let Ok(target) = fs::read_link(given)
                    && real.parent().is_some_and(|folder| !folder.is_dir())
                {
                    return Err(StoreError::DanglingLink {
                        link: given.to_path_buf(),
                        target,
                    });
                }
                return Ok(None);
            }
            Err(err) => return Err(StoreError::io("look at the mailbox database", real)(err)),
        };
        let path = real.to_path_buf();
        if meta.is_dir() {
            return Err(StoreError::IsFolder { path });
        }
        if !meta.is_file() {
            return Err(StoreError::NotAFile { path });
        }
        if meta.nlink() > 1 {
            return Err(StoreError::HardLinked {
                links: meta.nlink(),
                path,
            });
        }
        if meta.len() > 0 {
            let mut head = [0u8; SQLITE_HEADER.len()];
            match File::open(real).and_then(|mut file| file.read_exact(&mut head)) {
                Ok(()) if head == *SQLITE_HEADER => {}
                Ok(()) => return Err(StoreError::NotDatabase { path }),
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(StoreError::NotDatabase { path });
                }
                Err(err) => return Err(StoreError::io("read the mailbox database", real)(err)),
            }
        }
        Ok(Some(meta))
    }

    /// Open (creating if needed) the mailbox at `path` and its blob folder
    /// `<path>.blobs/`, and start the writer thread.
    ///
    /// Blocking: call it at startup or from `spawn_blocking`. If no other
    /// handle has the store open, leftover temporary files and body files no
    /// row names (a crash between staging a body and committing its row) are
    /// deleted.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with `options` instead of the defaults.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        // The file itself, not the name it was given: a store opened through a symbolic link
        // keeps its bodies and its lock beside the real file, where every other opener finds
        // them.
        let given = path.as_ref();
        // Before anything is created or changed.
        Self::check_path(given)?;
        let path = Self::real_path(given);
        let blob_dir = blob_dir_of(&path);
        bodies_not_beside_a_link(&blob_dir_of(given), &blob_dir)?;
        create_private_files(&path, &blob_dir)?;
        // Canonical, so two handles opened through different spellings of
        // the path agree on where bodies live (see the foreign-body check).
        let blob_dir = fs::canonicalize(&blob_dir)
            .map_err(StoreError::io("resolve blob folder", &blob_dir))?;

        let lock_path = blob_dir.join(LOCK_FILE_NAME);
        let folder_lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("open lock file", &lock_path))?;
        let alone = match folder_lock.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(err)) => {
                return Err(StoreError::io("lock", &lock_path)(err));
            }
        };

        let mut conn = open_connection(&path)?;
        // What the write probe of `check_path` cannot see (the file changed since, or SQLite
        // failed to open it for writing for a reason of its own): a connection SQLite opened
        // read-only would fail every write later, after the server said it listens.
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(open_error(&path))?
        {
            let meta = fs::metadata(&path).map_err(StoreError::io("look at", &path))?;
            return Err(read_only(&path, &meta));
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_error(&path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WalUnavailable { path, mode });
        }
        // FULL: a commit is on disk (WAL fsynced) before it returns; NORMAL
        // could lose the last commits on power loss, i.e. acked messages.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error(&path))?;
        migrate(&mut conn, &path)?;

        if alone {
            let swept = sweep_orphans(&conn, &blob_dir);
            // Downgrade to shared; nothing of ours is staged yet, so another
            // opener sweeping in the gap cannot hurt us.
            let unlocked = folder_lock.unlock();
            swept?;
            unlocked.map_err(StoreError::io("unlock", &lock_path))?;
        } else {
            debug!(path = %path.display(), "store already open elsewhere; skipping the orphan sweep");
        }
        folder_lock
            .lock_shared()
            .map_err(StoreError::io("lock", &lock_path))?;

        let reader = open_connection(&path)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(open_error(&path))?;
        let admin = open_connection(&path)?;
        admin
            .pragma_update(None, "synchronous", "FULL")
            .map_err(open_error(&path))?;

        let counters = Arc::new(Counters::default());
        let coming = Arc::new(AtomicUsize::new(0));
        let (requests, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            conn,
            blob_dir: blob_dir.clone(),
            counters: Arc::clone(&counters),
            requests: receiver,
            spacing: options.commit_spacing,
            coming: Arc::clone(&coming),
        };
        let writer = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.to_owned())
            .spawn(move || writer.run())
            .map_err(StoreError::io("start the writer thread for", &path))?;
        debug!(path = %path.display(), "mailbox store opened");
        Ok(Self {
            path,
            blob_dir,
            requests: Some(requests),
            writer: Some(writer),
            reader: Arc::new(Mutex::new(reader)),
            admin: Arc::new(Mutex::new(admin)),
            counters,
            coming,
            leases: super::leases::Leases::default(),
            _folder_lock: folder_lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding large bodies.
    pub fn blob_dir(&self) -> &Path {
        &self.blob_dir
    }

    /// Writer counters: how many transactions committed how many requests.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            batches_committed: self.counters.batches.load(Ordering::Relaxed),
            writes_committed: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Stop accepting writes, let the writer commit everything already
    /// queued, and wait for it. Dropping the store does the same, blocking.
    pub async fn close(mut self) -> Result<(), StoreError> {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|err| StoreError::Task(err.to_string()))?
                .map_err(|_| StoreError::Task("the mailbox writer thread panicked".to_owned()))?;
        }
        Ok(())
    }

    /// Hand a request to the writer and wait for its answer (sent after
    /// the commit).
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::WriterStopped)?;
        let (reply, answer) = oneshot::channel();
        // On failure the request (and any staged body file) is dropped.
        requests
            .send(make(reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Run a read on the read connection without blocking the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        let blob_dir = self.blob_dir.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection itself
            // usable (SQLite rolls back any open statement), so carry on.
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn, &blob_dir)
        })
        .await
        .map_err(|err| StoreError::Task(err.to_string()))?
    }

    /// Run a write on the admin connection, in one IMMEDIATE transaction, off the runtime.
    /// `f` returns its result and the body files to delete once the transaction committed.
    async fn admin<T: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, Vec<String>), StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let admin = Arc::clone(&self.admin);
        let blob_dir = self.blob_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = admin.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::db(action))?;
            let (result, files) = f(&tx)?;
            tx.commit().map_err(StoreError::db(action))?;
            remove_body_files(&blob_dir, &files);
            Ok(result)
        })
        .await
        .map_err(|err| StoreError::Task(err.to_string()))?
    }

    /// Runs `delete` (a `DELETE ... RETURNING body_file` of one row, keyed by `key` and
    /// `message_id`) as an administrative transaction, then deletes the row's body file: an
    /// operator's removal of one message. Whether the row was there.
    async fn remove_one(
        &self,
        action: &'static str,
        delete: &'static str,
        key: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        let (key, message_id) = (*key, *message_id);
        self.admin(action, move |tx| {
            let file: Option<Option<String>> = tx
                .prepare_cached(delete)
                .and_then(|mut stmt| {
                    stmt.query_row(params![key, message_id], |row| row.get(0))
                        .optional()
                })
                .map_err(StoreError::db(action))?;
            Ok(match file {
                None => (false, Vec::new()),
                Some(file) => (true, file.into_iter().collect()),
            })
        })
        .await
    }
}

/// Delete body files whose rows are gone (committed). A file that cannot be deleted is left to
/// the orphan sweep of the next open.
fn remove_body_files(blob_dir: &Path, names: &[String]) {
    for name in names {
        if !is_blob_name(name) {
            warn!(%name, "not deleting a malformed body file name");
            continue;
        }
        let path = blob_dir.join(name);
        if let Err(err) = fs::remove_file(&path) {
            warn!(path = %path.display(), %err, "could not remove a deleted message's body file");
        }
    }
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// [`StoreError::ReadOnly`] for the database `path`.
fn read_only(path: &Path, meta: &fs::Metadata) -> StoreError {
    StoreError::ReadOnly {
        path: path.to_path_buf(),
        mode: meta.mode() & 0o7777,
        owner: meta.uid(),
    }
}

/// Refuses a database whose folder exists but is not writable (and searchable) for this user:
/// SQLite makes the `-wal` and `-shm` files there, the store its blob folder and the server its
/// lock. A folder not made yet is made by [`SqliteStore::open`], which says if it cannot.
fn folder_writable(path: &Path) -> Result<(), StoreError> {
    let folder = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) => folder,
        None => Path::new("."),
    };
    if !folder.is_dir() {
        return Ok(());
    }
    match rustix::fs::access(
        folder,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    ) {
        Ok(()) => Ok(()),
        Err(_) => Err(StoreError::FolderNotWritable {
            folder: folder.to_path_buf(),
            path: path.to_path_buf(),
        }),
    }
}

/// Create the database file 0600 and the blob folder 0700 if they are new, and tighten them if
/// they exist with wider modes (a store made before letterlock set modes, or by a umask of 022).
/// `<path>.blobs`.
fn blob_dir_of(path: &Path) -> PathBuf {
    let mut blob_dir = path.as_os_str().to_owned();
    blob_dir.push(BLOB_DIR_SUFFIX);
    PathBuf::from(blob_dir)
}

/// Before bodies were kept beside the database file itself, a store opened through a link to
/// it kept them beside the link (`given`): refused while any are there, with what to do,
/// rather than opened as if they were gone.
fn bodies_not_beside_a_link(given: &Path, real: &Path) -> Result<(), StoreError> {
    let (Ok(old), Ok(mut entries)) = (fs::canonicalize(given), fs::read_dir(given)) else {
        return Ok(());
    };
    if fs::canonicalize(real).is_ok_and(|new| new == old) {
        return Ok(());
    }
    let holds_bodies =
        entries.any(|e| e.is_ok_and(|e| is_blob_name(&e.file_name().to_string_lossy())));
    if holds_bodies {
        return Err(StoreError::BodiesBesideLink {
            old,
            new: real.to_path_buf(),
        });
    }
    Ok(())
}

fn create_private_files(path: &Path, blob_dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    // As before modes were set: a store in a folder that does not exist yet creates it.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(StoreError::io("create the folder", parent))?;
    }
    // An empty file is an empty SQLite database: creating it first fixes the mode SQLite then
    // copies to the -wal and -shm files.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DB_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(StoreError::io("create the mailbox database", path)(err)),
    }
    match fs::DirBuilder::new().mode(BLOB_DIR_MODE).create(blob_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(StoreError::io("create blob folder", blob_dir)(err)),
    }
    let mut side_files: Vec<(PathBuf, u32)> = vec![(path.to_path_buf(), DB_MODE)];
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        side_files.push((PathBuf::from(side), DB_MODE));
    }
    side_files.push((blob_dir.to_path_buf(), BLOB_DIR_MODE));
    for (file, wanted) in side_files {
        let meta = match fs::metadata(&file) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(StoreError::io("check the mode of", &file)(err)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode & wanted))
                .map_err(StoreError::io("restrict the mode of", &file))?;
            info!(
                path = %file.display(),
                was = format!("{mode:o}"),
                now = format!("{:o}", mode & wanted),
                "mailbox file was readable by others; restricted it to its owner"
            );
        }
    }
    Ok(())
}

/// Read a client key from a row selected with [`CLIENT_KEY_COLUMNS`].
fn client_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClientKey> {
    let ended = match (
        row.get::<_, Option<i64>>(4)?,
        row.get::<_, Option<String>>(5)?,
    ) {
        (Some(at), Some(how)) => {
            let at =
                u64::try_from(at).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(4, at))?;
            let how = match how.as_str() {
                "replaced" => KeyEnd::Replaced,
                _ => KeyEnd::Removed,
            };
            Some((at, how))
        }
        _ => None,
    };
    Ok(ClientKey {
        name: row.get(0)?,
        key_id: row.get(1)?,
        public_key: row.get(2)?,
        since: get_u64(row, 3)?,
        ended,
    })
}

/// The trust generation, inside a transaction or on the read connection.
fn read_generation(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT generation FROM trust_generation WHERE id = 1")
        .and_then(|mut stmt| stmt.query_row([], |row| get_u64(row, 0)))
        .map_err(StoreError::db("reading the trust generation"))
}

/// Bump the trust generation inside the transaction of a trust change.
fn bump_generation(tx: &Connection) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE trust_generation SET generation = generation + 1 WHERE id = 1")
        .and_then(|mut stmt| stmt.execute([]))
        .map_err(StoreError::db("bumping the trust generation"))?;
    Ok(())
}

/// The trusted key of `name`, if any.
fn trusted_by_name(conn: &Connection, name: &str) -> Result<Option<KeyId>, StoreError> {
    conn.prepare_cached("SELECT key_id FROM client_keys WHERE name = ?1 AND ended IS NULL")
        .and_then(|mut stmt| stmt.query_row(params![name], |row| row.get(0)).optional())
        .map_err(StoreError::db("looking up a trusted client"))
}

/// Trust a key (the transaction of [`Store::trust_client`]).
fn trust_in(tx: &Connection, r: &TrustRequest) -> Result<TrustOutcome, StoreError> {
    let now = super::writer::to_sql_int("trust time", r.now)?;
    let known: Option<(String, bool)> = tx
        .prepare_cached("SELECT name, ended IS NULL FROM client_keys WHERE key_id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![r.key_id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(StoreError::db("looking up a client key"))?;
    if let Some((name, true)) = &known {
        return Ok(if *name == r.name {
            TrustOutcome::AlreadyTrusted
        } else {
            TrustOutcome::KeyTaken { name: name.clone() }
        });
    }
    let old = trusted_by_name(tx, &r.name)?;
    if let Some(existing) = old {
        if !r.replace {
            return Ok(TrustOutcome::NameTaken { existing });
        }
        tx.prepare_cached(
            "UPDATE client_keys SET ended = ?2, ended_how = 'replaced' WHERE key_id = ?1",
        )
        .and_then(|mut stmt| stmt.execute(params![existing, now]))
        .map_err(StoreError::db("replacing a client key"))?;
    }
    // A key trusted before (then replaced or removed) is trusted again: its row, and so the
    // messages it signed, stay one.
    tx.prepare_cached(
        "INSERT INTO client_keys (key_id, public_key, name, since) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key_id) DO UPDATE SET name = ?3, since = ?4, ended = NULL, ended_how = NULL",
    )
    .and_then(|mut stmt| stmt.execute(params![r.key_id, r.public_key, r.name, now]))
    .map_err(StoreError::db("trusting a client key"))?;
    bump_generation(tx)?;
    Ok(match old {
        Some(old) => TrustOutcome::Replaced { old },
        None => TrustOutcome::Trusted,
    })
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer once the queue is drained.
        self.requests = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            warn!("the mailbox writer thread panicked");
        }
    }
}

fn open_error(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

/// Open one connection with the settings every connection needs.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error(path))?;
    Ok(conn)
}

/// Create the schema on a new database; refuse one of another version.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once must not both
    // create the schema.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_error(path))?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error(path))?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if !(0..SCHEMA_VERSION).contains(&found) {
        return Err(StoreError::SchemaVersion {
            path: path.to_path_buf(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    // Each step takes the schema one version further, all in this one transaction: a crash
    // leaves the old version whole.
    let mut version = found;
    if version == 0 {
        tx.execute_batch(SCHEMA).map_err(open_error(path))?;
        version = 1;
    }
    if version == 1 {
        tx.execute_batch(MIGRATE_1_TO_2).map_err(open_error(path))?;
        version = 2;
    }
    if version == 2 {
        tx.execute_batch(MIGRATE_2_TO_3).map_err(open_error(path))?;
        version = 3;
    }
    if version == 3 {
        tx.execute_batch(MIGRATE_3_TO_4).map_err(open_error(path))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(open_error(path))?;
    tx.commit().map_err(open_error(path))?;
    if found == 0 {
        debug!(path = %path.display(), version = SCHEMA_VERSION, "created mailbox schema");
    } else {
        info!(path = %path.display(), from = found, to = SCHEMA_VERSION, "upgraded the mailbox schema");
    }
    Ok(())
}

/// Every body file name the database refers to.
fn named_blobs(conn: &Connection) -> Result<HashSet<String>, StoreError> {
    let mut names = HashSet::new();
    for sql in [
        "SELECT body_file FROM inbox WHERE body_file IS NOT NULL",
        "SELECT body_file FROM outbox WHERE body_file IS NOT NULL",
    ] {
        let mut stmt = conn
            .prepare(sql)
            .map_err(StoreError::db("listing body files"))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(StoreError::db("listing body files"))?;
        for name in rows {
            names.insert(name.map_err(StoreError::db("listing body files"))?);
        }
    }
    Ok(names)
}

/// Delete temporary files and body files that no row names. Only safe while
/// holding the folder lock exclusively.
fn sweep_orphans(conn: &Connection, blob_dir: &Path) -> Result<(), StoreError> {
    let named = named_blobs(conn)?;
    let entries = fs::read_dir(blob_dir).map_err(StoreError::io("list blob folder", blob_dir))?;
    let mut removed = 0usize;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list blob folder", blob_dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let orphan = name.starts_with(TEMP_PREFIX) || (is_blob_name(name) && !named.contains(name));
        if !orphan {
            continue;
        }
        let path = entry.path();
        fs::remove_file(&path).map_err(StoreError::io("remove orphan body file", &path))?;
        debug!(path = %path.display(), "removed orphan body file");
        removed += 1;
    }
    if removed > 0 {
        sync_dir(blob_dir)?;
        info!(removed, "removed body files left by an interrupted write");
    }
    Ok(())
}

/// Read a column stored from a `u64` (SQLite integers are signed; a
/// negative value means the row was not written by this store).
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Read an inbox summary from a row selected with [`INBOX_COLUMNS`].
fn inbox_summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<InboxSummary> {
    Ok(InboxSummary {
        message_id: row.get(0)?,
        sender_name: row.get(1)?,
        sender_key_id: row.get(2)?,
        created: get_u64(row, 3)?,
        received: get_u64(row, 4)?,
        mode: row.get(5)?,
        plaintext_len: get_u64(row, 6)?,
        body_size: get_u64(row, 7)?,
        content_hash: row.get(8)?,
    })
}

impl Store for SqliteStore {
    fn blob_writer(&self) -> BlobWriter {
        BlobWriter::new(self.blob_dir.clone())
    }

    fn write_coming(&self) -> WriteComing {
        WriteComing::counted_in(&self.coming)
    }

    async fn insert_inbox(&self, record: InboxRecord) -> Result<InsertOutcome, StoreError> {
        self.submit(|reply| WriteOp::InsertInbox { record, reply })
            .await
    }

    async fn known_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<Option<KnownMessage>, StoreError> {
        let (sender, message_id) = (*sender, *message_id);
        // The read connection: never queued behind a batch commit. The UNIQUE index on
        // (sender_key_id, message_id) makes this one index probe.
        self.read(move |conn, _| {
            conn.prepare_cached(
                "SELECT content_hash, ack_tag FROM inbox WHERE sender_key_id = ?1 AND message_id = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![sender, message_id], |row| {
                    Ok(KnownMessage {
                        content_hash: row.get(0)?,
                        ack_tag: row.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(StoreError::db("looking up an inbox message id"))
        })
        .await
    }

    async fn list_inbox(&self) -> Result<Vec<InboxSummary>, StoreError> {
        self.read(|conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {INBOX_COLUMNS} FROM inbox ORDER BY received, created"
                ))
                .map_err(StoreError::db("listing the inbox"))?;
            let rows = stmt
                .query_map([], inbox_summary)
                .map_err(StoreError::db("listing the inbox"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::db("reading the inbox listing"))
        })
        .await
    }

    async fn find_inbox(&self, id_prefix: &str) -> Result<InboxMessage, StoreError> {
        let (low, high) = prefix_range(id_prefix)?;
        let prefix = id_prefix.to_ascii_lowercase();
        self.read(move |conn, blob_dir| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {INBOX_COLUMNS}, body_inline, body_file FROM inbox
                     WHERE message_id BETWEEN ?1 AND ?2 LIMIT 2"
                ))
                .map_err(StoreError::db("looking up an inbox message"))?;
            let mut rows = stmt
                .query_map(params![low, high], |row| {
                    Ok((
                        inbox_summary(row)?,
                        row.get::<_, Option<Vec<u8>>>(9)?,
                        row.get::<_, Option<String>>(10)?,
                    ))
                })
                .map_err(StoreError::db("looking up an inbox message"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::db("reading an inbox message"))?;
            if rows.len() > 1 {
                return Err(StoreError::Ambiguous { prefix });
            }
            let Some((summary, inline, file)) = rows.pop() else {
                return Err(StoreError::NotFound { prefix });
            };
            let body = StoredBody::from_columns(inline, file)?.open(blob_dir)?;
            Ok(InboxMessage { summary, body })
        })
        .await
    }

    async fn enqueue_outbox(&self, record: OutboxRecord) -> Result<(), StoreError> {
        self.submit(|reply| WriteOp::EnqueueOutbox { record, reply })
            .await
    }

    /// Counted over the partial index `outbox_relayed_by_recipient` (schema 4): the
    /// recipient's relayed entries, index entries only.
    async fn waiting_relayed(&self, recipient: &KeyId) -> Result<u64, StoreError> {
        let recipient = *recipient;
        self.read(move |conn, _| {
            conn.prepare_cached(
                "SELECT count(*) FROM outbox
                 WHERE recipient_key_id = ?1 AND sender_key_id IS NOT NULL",
            )
            .and_then(|mut stmt| stmt.query_row(params![recipient], |row| get_u64(row, 0)))
            .map_err(StoreError::db("counting relayed messages"))
        })
        .await
    }

    async fn pending_outbox(&self, recipient: &KeyId) -> Result<Vec<OutboxEntry>, StoreError> {
        let recipient = *recipient;
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT recipient_key_id, recipient_name, message_id, created, mode,
                            plaintext_len, body_size, sender_key_id, sender_name
                     FROM outbox WHERE recipient_key_id = ?1 ORDER BY seq",
                )
                .map_err(StoreError::db("listing the outbox"))?;
            let rows = stmt
                .query_map(params![recipient], |row| {
                    let sender_key_id: Option<KeyId> = row.get(7)?;
                    let sender_name: Option<String> = row.get(8)?;
                    Ok(OutboxEntry {
                        recipient_key_id: row.get(0)?,
                        recipient_name: row.get(1)?,
                        message_id: row.get(2)?,
                        created: get_u64(row, 3)?,
                        mode: row.get(4)?,
                        plaintext_len: get_u64(row, 5)?,
                        body_size: get_u64(row, 6)?,
                        sender: sender_key_id.map(|id| (id, sender_name.unwrap_or_default())),
                    })
                })
                .map_err(StoreError::db("listing the outbox"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::db("reading the outbox listing"))
        })
        .await
    }

    async fn lease_outbox(
        &self,
        recipient: &KeyId,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let pending = self.pending_outbox(recipient).await?;
        Ok(self.leases.take(recipient, pending, lease))
    }

    async fn release_outbox(
        &self,
        recipient: &KeyId,
        message_ids: &[MessageId],
    ) -> Result<(), StoreError> {
        self.leases.release(recipient, message_ids);
        Ok(())
    }

    async fn open_outbox_body(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let (recipient, message_id) = (*recipient, *message_id);
        self.read(move |conn, blob_dir| {
            let columns: Option<(Option<Vec<u8>>, Option<String>)> = conn
                .prepare_cached(
                    "SELECT body_inline, body_file FROM outbox
                     WHERE recipient_key_id = ?1 AND message_id = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![recipient, message_id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
                })
                .map_err(StoreError::db("looking up an outbox message"))?;
            let (inline, file) = columns.ok_or_else(|| StoreError::OutboxNotFound {
                message_id: hex::encode(message_id),
            })?;
            StoredBody::from_columns(inline, file)?.open(blob_dir)
        })
        .await
    }

    async fn enqueue_relay(&self, record: RelayRecord) -> Result<RelayOutcome, StoreError> {
        self.submit(|reply| WriteOp::EnqueueRelay { record, reply })
            .await
    }

    async fn complete_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
        ack_tag: &Tag,
    ) -> Result<Completion, StoreError> {
        let (recipient, message_id, ack_tag) = (*recipient, *message_id, *ack_tag);
        let done = self
            .submit(|reply| WriteOp::CompleteOutbox {
                recipient,
                message_id,
                ack_tag,
                reply,
            })
            .await;
        // Gone from the outbox: no fetch is delivering it any more, and a message queued again
        // under the same id is free at once. A wrong ack changes nothing, its lease included
        // (as in PostgreSQL): whoever holds the lease keeps it.
        if matches!(
            done,
            Ok(Completion::Completed { .. } | Completion::RemovedWithoutReceipt { .. })
        ) {
            self.leases.release(&recipient, &[message_id]);
        }
        done
    }

    async fn remove_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        self.remove_one(
            "deleting an outbox message",
            "DELETE FROM outbox WHERE recipient_key_id = ?1 AND message_id = ?2 \
             RETURNING body_file",
            recipient,
            message_id,
        )
        .await
    }

    async fn trust_generation(&self) -> Result<u64, StoreError> {
        self.read(|conn, _| read_generation(conn)).await
    }

    async fn trusted_clients(&self) -> Result<TrustedClients, StoreError> {
        self.read(|conn, _| {
            // One read transaction: the list is exactly the generation's.
            let tx = conn
                .unchecked_transaction()
                .map_err(StoreError::db("reading the trusted clients"))?;
            let generation = read_generation(&tx)?;
            let clients = tx
                .prepare_cached(&format!(
                    "SELECT {CLIENT_KEY_COLUMNS} FROM client_keys WHERE ended IS NULL ORDER BY name"
                ))
                .and_then(|mut stmt| stmt.query_map([], client_key)?.collect())
                .map_err(StoreError::db("reading the trusted clients"))?;
            Ok(TrustedClients {
                generation,
                clients,
            })
        })
        .await
    }

    async fn client_keys(&self) -> Result<Vec<ClientKey>, StoreError> {
        self.read(|conn, _| {
            conn.prepare_cached(&format!(
                "SELECT {CLIENT_KEY_COLUMNS} FROM client_keys ORDER BY since, rowid"
            ))
            .and_then(|mut stmt| stmt.query_map([], client_key)?.collect())
            .map_err(StoreError::db("reading the client keys"))
        })
        .await
    }

    async fn trust_client(&self, request: TrustRequest) -> Result<TrustOutcome, StoreError> {
        self.admin("trusting a client key", move |tx| {
            Ok((trust_in(tx, &request)?, Vec::new()))
        })
        .await
    }

    async fn untrust_client(&self, name: &str, now: u64) -> Result<Option<KeyId>, StoreError> {
        let name = name.to_owned();
        let now = super::writer::to_sql_int("untrust time", now)?;
        self.admin("removing a client key", move |tx| {
            let Some(key_id) = trusted_by_name(tx, &name)? else {
                return Ok((None, Vec::new()));
            };
            tx.prepare_cached(
                "UPDATE client_keys SET ended = ?2, ended_how = 'removed' WHERE key_id = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![key_id, now]))
            .map_err(StoreError::db("removing a client key"))?;
            bump_generation(tx)?;
            Ok((Some(key_id), Vec::new()))
        })
        .await
    }

    async fn inbox_counts(&self) -> Result<Vec<(KeyId, u64)>, StoreError> {
        self.read(|conn, _| {
            conn.prepare_cached("SELECT sender_key_id, count(*) FROM inbox GROUP BY sender_key_id")
                .and_then(|mut stmt| {
                    stmt.query_map([], |row| Ok((row.get(0)?, get_u64(row, 1)?)))?
                        .collect()
                })
                .map_err(StoreError::db("counting inbox messages"))
        })
        .await
    }

    async fn matching_inbox(&self, id_prefix: &str) -> Result<Vec<InboxSummary>, StoreError> {
        let (low, high) = prefix_range(id_prefix)?;
        self.read(move |conn, _| {
            conn.prepare_cached(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox WHERE message_id BETWEEN ?1 AND ?2
                 ORDER BY received, created LIMIT ?3"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![low, high, MAX_MATCHES], inbox_summary)?
                    .collect()
            })
            .map_err(StoreError::db("looking up inbox messages"))
        })
        .await
    }

    async fn open_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<InboxMessage, StoreError> {
        let (sender, message_id) = (*sender, *message_id);
        self.read(move |conn, blob_dir| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {INBOX_COLUMNS}, body_inline, body_file FROM inbox
                     WHERE sender_key_id = ?1 AND message_id = ?2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![sender, message_id], |row| {
                        Ok((
                            inbox_summary(row)?,
                            row.get::<_, Option<Vec<u8>>>(9)?,
                            row.get::<_, Option<String>>(10)?,
                        ))
                    })
                    .optional()
                })
                .map_err(StoreError::db("reading an inbox message"))?;
            let Some((summary, inline, file)) = row else {
                return Err(StoreError::NotFound {
                    prefix: hex::encode(message_id),
                });
            };
            let body = StoredBody::from_columns(inline, file)?.open(blob_dir)?;
            Ok(InboxMessage { summary, body })
        })
        .await
    }

    async fn remove_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        self.remove_one(
            "deleting an inbox message",
            "DELETE FROM inbox WHERE sender_key_id = ?1 AND message_id = ?2 RETURNING body_file",
            sender,
            message_id,
        )
        .await
    }

    async fn expire_inbox(&self, received_before: u64) -> Result<u64, StoreError> {
        let before = super::writer::to_sql_int("retention cutoff", received_before)?;
        self.admin("deleting expired inbox messages", move |tx| {
            let files: Vec<Option<String>> = tx
                .prepare_cached("DELETE FROM inbox WHERE received < ?1 RETURNING body_file")
                .and_then(|mut stmt| stmt.query_map(params![before], |row| row.get(0))?.collect())
                .map_err(StoreError::db("deleting expired inbox messages"))?;
            let removed = files.len() as u64;
            Ok((removed, files.into_iter().flatten().collect()))
        })
        .await
    }

    async fn receipts(
        &self,
        sender: &KeyId,
        ids: &[MessageId],
    ) -> Result<Vec<Receipt>, StoreError> {
        let (sender, ids) = (*sender, ids.to_vec());
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT recipient_key_id, recipient_name, ack_tag, delivered FROM receipts
                     WHERE sender_key_id = ?1 AND message_id = ?2",
                )
                .map_err(StoreError::db("reading receipts"))?;
            let mut found = Vec::new();
            // One indexed probe per id (at most MAX_RECEIPT_IDS), all in this one read.
            for id in ids {
                let receipt = stmt
                    .query_row(params![sender, id], |row| {
                        Ok(Receipt {
                            sender_key_id: sender,
                            message_id: id,
                            recipient_key_id: row.get(0)?,
                            recipient_name: row.get(1)?,
                            ack_tag: row.get(2)?,
                            delivered: get_u64(row, 3)?,
                        })
                    })
                    .optional()
                    .map_err(StoreError::db("reading receipts"))?;
                found.extend(receipt);
            }
            Ok(found)
        })
        .await
    }

    async fn expire_receipts(&self, delivered_before: u64) -> Result<u64, StoreError> {
        let before = super::writer::to_sql_int("retention cutoff", delivered_before)?;
        self.admin("deleting expired receipts", move |tx| {
            let removed = tx
                .prepare_cached("DELETE FROM receipts WHERE delivered < ?1")
                .and_then(|mut stmt| stmt.execute(params![before]))
                .map_err(StoreError::db("deleting expired receipts"))?;
            Ok((removed as u64, Vec::new()))
        })
        .await
    }

    /// `PRAGMA integrity_check`, plus: every body file a row names exists.
    /// Meant for a quiescent store (crash tests): a concurrent
    /// `complete_outbox` can remove a file between the two checks.
    async fn integrity_check(&self) -> Result<bool, StoreError> {
        self.read(|conn, blob_dir| {
            let mut stmt = conn
                .prepare("PRAGMA integrity_check")
                .map_err(StoreError::db("checking database integrity"))?;
            let problems = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(StoreError::db("checking database integrity"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::db("checking database integrity"))?;
            let mut ok = problems.len() == 1 && problems[0] == "ok";
            if !ok {
                warn!(?problems, "database integrity check failed");
            }
            for name in named_blobs(conn)? {
                if !is_blob_name(&name) || !blob_dir.join(&name).is_file() {
                    warn!(%name, "a row names a missing or malformed body file");
                    ok = false;
                }
            }
            Ok(ok)
        })
        .await
    }
}
