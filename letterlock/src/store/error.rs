//! The one error type of the store.
//!
//! Every variant says what failed and, where the user can do something about
//! it, what to do in terms of files and the system: these messages end up in
//! server logs and on the command line. Advice naming a command or a flag is
//! the command line's to add (src/cli.rs, `hint`).

use std::path::PathBuf;

/// The database library's own error, kept as the source of [`StoreError::Open`] and
/// [`StoreError::Database`] without tying this type to one database backend.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the mailbox store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error(
        "could not open the mailbox database {path}: {source}; check that the folder exists, is writable, and that the file is a letterlock database"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: BackendError,
    },

    /// The PostgreSQL server could not be reached, refused the login, or dropped the connection.
    #[error(
        "could not reach the mailbox database {target}: {source}; check that PostgreSQL is running and reachable, and the URL's user, password and database name; nothing was saved, retry"
    )]
    Connect {
        target: String,
        #[source]
        source: BackendError,
    },

    /// The PostgreSQL server refused the login: a wrong password (SQLSTATE 28P01), a role that
    /// does not exist or may not connect (28000), or a password it asks for and the URL lacks.
    /// Retrying will not help until the URL or the server's authentication changes.
    ///
    /// `reason` is the server's own words ("password authentication failed for user …"), kept
    /// as text: the driver's error around them says only "db error".
    #[error(
        "the mailbox database {target} refused the login ({reason}); check the URL's user and password (postgres://USER:PASSWORD@HOST/DB, an '@' in either written %40) and the server's pg_hba.conf rule for this user"
    )]
    LoginRefused { target: String, reason: String },

    /// The URL asks for TLS, which this letterlock's PostgreSQL client does not have.
    #[error(
        "the mailbox database URL asks for TLS ({setting}), but TLS to PostgreSQL is not built into this letterlock; connect over a Unix socket (postgres://USER@/DB?host=/var/run/postgresql) or over a trusted network, without {setting}"
    )]
    TlsNotBuilt { setting: String },

    /// The postgres:// URL does not parse: nothing was tried, and retrying will not help.
    #[error(
        "the mailbox database URL is not valid: {source}; the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DB, or postgres://USER@/DB?host=/socket/folder"
    )]
    BadUrl {
        #[source]
        source: BackendError,
    },

    /// The connection to the PostgreSQL server broke in the middle of a request (the server
    /// shut down or restarted, the connection was terminated or the network failed). The
    /// request's transaction did not commit, or its outcome is unknown; either way a retry is
    /// safe: every write is one transaction, and a resent message is recognised by its
    /// (sender, id).
    #[error(
        "lost the connection to the mailbox database while {action}: {source}; retry, the store reconnects once PostgreSQL is reachable again"
    )]
    ConnectionLost {
        action: &'static str,
        #[source]
        source: BackendError,
    },

    /// The database was written by a letterlock with a different schema.
    #[error(
        "the mailbox database {path} has schema version {found}, but this letterlock understands version {expected}; use the letterlock release that created it"
    )]
    SchemaVersion {
        path: PathBuf,
        found: i64,
        expected: i64,
    },

    /// The database could not be switched to write-ahead logging, which the
    /// store needs for concurrent readers and a second writing process.
    #[error(
        "the mailbox database {path} could not use write-ahead logging (journal mode is {mode}); put it on a local file system, not a network share or in memory"
    )]
    WalUnavailable { path: PathBuf, mode: String },

    /// The database file has more than one name. SQLite keeps its write-ahead log beside the
    /// name it was opened by, so two servers on two names would each acknowledge messages into
    /// a log the other never reads.
    #[error(
        "the mailbox database {path} has {links} names (hard links): a SQLite mailbox must have one, or each name gets its own write-ahead log and acknowledged messages are lost; remove the other names, or copy the file"
    )]
    HardLinked { path: PathBuf, links: u64 },

    /// The path names a folder, not a database file.
    #[error("{path} is a folder, not a mailbox database file")]
    IsFolder { path: PathBuf },

    /// The path names something other than a regular file or a folder: a device, a pipe or a
    /// socket, which SQLite cannot keep a mailbox in.
    #[error(
        "the mailbox database {path} is not a regular file (a device, a pipe or a socket); give the path of a database file"
    )]
    NotAFile { path: PathBuf },

    /// The file exists, is not empty, and does not begin with SQLite's header: it is not a
    /// database, and nothing was changed or created beside it.
    #[error(
        "{path} is not an SQLite database (it does not begin with \"SQLite format 3\"), so it is not a mailbox; nothing was changed: give the path of the mailbox database"
    )]
    NotDatabase { path: PathBuf },

    /// A symbolic link whose target's folder does not exist: a mailbox made through it would
    /// need folders made at the far end of a link, which is never what was meant.
    #[error(
        "the mailbox database {link} is a symbolic link to {target}, which does not exist (nor does its folder); fix or remove the link, or give the database file itself"
    )]
    DanglingLink { link: PathBuf, target: PathBuf },

    /// The database file cannot be written by the user running letterlock. SQLite opens such a
    /// file read-only without complaint, and every write would fail later.
    #[error(
        "the mailbox database {path} is read-only for this user (mode {mode:o}, owner uid {owner}): letterlock writes to its mailbox; make it writable for the user running letterlock (its owner, uid {owner}, can: `chmod u+w {path}`)"
    )]
    ReadOnly {
        path: PathBuf,
        mode: u32,
        owner: u32,
    },

    /// The folder holding the database cannot be written by the user running letterlock:
    /// SQLite keeps its write-ahead log (`-wal`, `-shm`) beside the file, and the store its
    /// lock and large bodies.
    #[error(
        "the folder {folder} of the mailbox database {path} is not writable for this user: letterlock keeps the database's write-ahead log, its lock and message bodies beside it; make the folder writable for this user, or put the mailbox in a folder that is"
    )]
    FolderNotWritable { folder: PathBuf, path: PathBuf },

    /// Message bodies kept beside a symbolic link to the database, where an earlier letterlock
    /// put them; this one keeps them beside the database file itself.
    #[error(
        "the mailbox's message bodies are in {old}, beside a link to the database; they belong beside the database file itself, in {new}: move them there while no server runs (`mkdir -p {new} && mv {old}/* {new}/`), then start again"
    )]
    BodiesBesideLink { old: PathBuf, new: PathBuf },

    /// A database statement failed.
    #[error(
        "mailbox database error while {action}: {source}; if this persists, check disk space and run an integrity check"
    )]
    Database {
        action: &'static str,
        #[source]
        source: BackendError,
    },

    /// A file operation (blob file, blob folder, lock file) failed.
    #[error("could not {action} {path}: {source}; check permissions and free disk space")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The whole group-commit batch this request was part of failed to commit.
    #[error(
        "the mailbox could not commit a batch of writes ({reason}); nothing from it was saved, retry the request"
    )]
    BatchFailed {
        reason: String,
        /// The disk under the database was full ([`StoreError::is_disk_full`]).
        disk_full: bool,
    },

    /// The writer thread is gone (store closed, or it stopped after a failure).
    #[error(
        "the mailbox writer has stopped, so nothing can be saved; restart the server (earlier log lines say why it stopped)"
    )]
    WriterStopped,

    /// A blocking database task panicked or was cancelled.
    #[error("a mailbox background task failed: {0}; retry, and report a bug if it repeats")]
    Task(String),

    /// A value does not fit the database's signed 64-bit integers.
    #[error("{field} value {value} is too large to store (limit {limit})", limit = i64::MAX)]
    OutOfRange { field: &'static str, value: u64 },

    /// A stored row is malformed (wrong lengths, bad blob name...).
    #[error(
        "the mailbox database holds a malformed {what}; run an integrity check, the database may have been edited or damaged"
    )]
    Corrupt { what: &'static str },

    /// A row names a body file that is not there.
    #[error(
        "the body file {path} of a stored message is missing; the blob folder may have been edited, restore it from a backup"
    )]
    BlobMissing { path: PathBuf },

    /// A body staged for another store was handed to this one.
    #[error(
        "the message body was staged in {staged_in}, not in this store's blob folder {expected}; create the body with this store's blob_writer()"
    )]
    ForeignBlob {
        staged_in: PathBuf,
        expected: PathBuf,
    },

    /// The message id prefix given by the user is not hexadecimal, or is empty or longer than
    /// an id. This is the rule of a lookup; a command with a stricter one (the server's
    /// deletions take at least 4 digits) checks and states its own before it looks up.
    #[error("{prefix:?} is not a message id prefix: a prefix is 1 to 32 hexadecimal digits")]
    BadIdPrefix { prefix: String },

    /// No inbox message matches the given id prefix.
    #[error("no inbox message id starts with {prefix}")]
    NotFound { prefix: String },

    /// More than one inbox message matches the given id prefix.
    #[error("more than one inbox message id starts with {prefix}; give more hexadecimal digits")]
    Ambiguous { prefix: String },

    /// The outbox already holds this message id for this recipient.
    #[error(
        "the outbox already holds message {message_id} for this recipient; seal the message again so it gets a fresh id"
    )]
    OutboxDuplicate { message_id: String },

    /// An outbox entry asked for by (recipient, message id) does not exist.
    #[error(
        "no outbox message {message_id} is waiting for this recipient; it may already have been delivered"
    )]
    OutboxNotFound { message_id: String },
}

impl StoreError {
    /// The database could not be reached, the connection to it broke, or it refused a new
    /// connection's login (its password changed under a running server): the request may
    /// succeed later, so a server answers "unavailable" rather than "internal" and a client
    /// retries with its backoff while the operator fixes the database side.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. }
                | StoreError::ConnectionLost { .. }
                | StoreError::LoginRefused { .. }
        )
    }

    /// The disk under the store is full (SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full`, or a
    /// body file's `ENOSPC`): nothing was stored, and a retry succeeds once space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            StoreError::BatchFailed { disk_full, .. } => *disk_full,
            StoreError::Database { source, .. } => {
                #[cfg(feature = "sqlite")]
                if let Some(rusqlite::Error::SqliteFailure(e, _)) = source.downcast_ref() {
                    return e.code == rusqlite::ErrorCode::DiskFull;
                }
                #[cfg(feature = "postgres")]
                if let Some(e) = source.downcast_ref::<tokio_postgres::Error>() {
                    return e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL);
                }
                let _ = source;
                false
            }
            _ => false,
        }
    }

    /// Shorthand for [`StoreError::Database`], used with `map_err`.
    #[cfg(feature = "sqlite")]
    pub(crate) fn db(action: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Self::Database {
            action,
            source: Box::new(source),
        }
    }

    /// Shorthand for [`StoreError::Io`], used with `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is told apart from other failures, whichever layer met it, so the server
    /// can answer "unavailable" (the client retries) instead of "internal".
    #[test]
    fn a_full_disk_is_recognised_from_each_backend() {
        let io = |kind: std::io::ErrorKind| StoreError::Io {
            action: "write",
            path: PathBuf::from("x"),
            source: kind.into(),
        };
        assert!(io(std::io::ErrorKind::StorageFull).is_disk_full());
        assert!(!io(std::io::ErrorKind::PermissionDenied).is_disk_full());
        #[cfg(feature = "sqlite")]
        {
            let sqlite = |code: i32| StoreError::Database {
                action: "commit",
                source: Box::new(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(code),
                    None,
                )),
            };
            assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_disk_full());
            assert!(!sqlite(rusqlite::ffi::SQLITE_CORRUPT).is_disk_full());
        }
        assert!(
            !StoreError::Database {
                action: "commit",
                source: "other".into(),
            }
            .is_disk_full()
        );
    }
}
