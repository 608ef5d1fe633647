//! The mailbox behind `--store`: an SQLite file (the default, no database server needed) or a
//! PostgreSQL database shared by several servers (`--store postgres://USER@HOST/DB`), and
//! `letterlock server migrate`.
//!
//! [`AnyStore`] lets every server command take either without becoming generic: it forwards
//! each [`Store`] method to the backend chosen by the `--store` value.

use std::io::Read;
use std::path::Path;

#[cfg(feature = "postgres")]
use anyhow::Context;
use anyhow::Result;
#[cfg(not(feature = "postgres"))]
use anyhow::bail;
use clap::Args;

#[cfg(feature = "postgres")]
use letterlock::store::PostgresStore;
use letterlock::store::{
    BlobWriter, ClientKey, InboxMessage, InboxRecord, InboxSummary, InsertOutcome, KeyId,
    KnownMessage, MessageId, OutboxEntry, OutboxRecord, Receipt, RelayOutcome, RelayRecord,
    SqliteStore, Store, StoreError, Tag, TrustOutcome, TrustRequest, TrustedClients, WriteComing,
};

/// A mailbox of either backend.
#[derive(Debug)]
pub(super) enum AnyStore {
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

/// The PostgreSQL URL a `--store` value holds, if it is one.
pub(super) fn postgres_url(store: &Path) -> Option<&str> {
    store
        .to_str()
        .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// Takes the lock a server holds on the existing SQLite mailbox at `path` (`MAILBOX.lock`
/// beside the file itself, made as a server makes it) for as long as the returned file lives,
/// so that no server runs on the mailbox while it is copied. In a folder where the lock file
/// cannot be made or opened for writing (read-only), which no server writes to, an existing
/// one is locked read-only, and a missing one means no server.
#[cfg(feature = "postgres")]
fn hold_server_lock(path: &Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = super::server::server_lock_path(path);
    // For writing where possible: on NFS, an exclusive lock needs it.
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock);
    let file = match writable {
        Ok(file) => file,
        Err(_) => match std::fs::File::open(&lock) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot open {}", lock.display()))
                );
            }
        },
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "a letterlock server is running on {} (it holds {}): stop it first, then copy",
            path.display(),
            lock.display()
        ),
        // Not knowing is not "no server".
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::Error::new(e).context(format!(
            "cannot tell whether a server runs on {}: locking {} failed",
            path.display(),
            lock.display()
        ))),
    }
}

/// Connects to the PostgreSQL mailbox at `url`, creating or migrating its schema.
pub(super) async fn connect_postgres(url: &str) -> Result<AnyStore> {
    #[cfg(feature = "postgres")]
    {
        // The error names the database without the URL's password.
        let store = PostgresStore::connect(url)
            .await
            .context("cannot open the PostgreSQL mailbox")?;
        Ok(AnyStore::Postgres(store))
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = url;
        bail!(
            "this letterlock was built without PostgreSQL support; build it with the \
             `postgres` feature, or give --store a file path for an SQLite mailbox"
        )
    }
}

impl AnyStore {
    /// The mailbox as shown to the operator: the SQLite file, or the PostgreSQL database
    /// without the URL's password.
    pub(super) fn describe(&self, path: &Path) -> String {
        match self {
            Self::Sqlite(_) => path.display().to_string(),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => store.target().to_owned(),
        }
    }

    /// Lets queued writes finish and closes the store.
    pub(super) async fn close(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => store.close().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// Forwards a [`Store`] method to the backend.
macro_rules! forward {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call,
        }
    };
}

impl Store for AnyStore {
    fn blob_writer(&self) -> BlobWriter {
        forward!(self, s => s.blob_writer())
    }

    fn write_coming(&self) -> WriteComing {
        forward!(self, s => s.write_coming())
    }

    async fn insert_inbox(&self, record: InboxRecord) -> Result<InsertOutcome, StoreError> {
        forward!(self, s => s.insert_inbox(record).await)
    }

    async fn known_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<Option<KnownMessage>, StoreError> {
        forward!(self, s => s.known_inbox(sender, message_id).await)
    }

    async fn list_inbox(&self) -> Result<Vec<InboxSummary>, StoreError> {
        forward!(self, s => s.list_inbox().await)
    }

    async fn find_inbox(&self, id_prefix: &str) -> Result<InboxMessage, StoreError> {
        forward!(self, s => s.find_inbox(id_prefix).await)
    }

    async fn enqueue_outbox(&self, record: OutboxRecord) -> Result<(), StoreError> {
        forward!(self, s => s.enqueue_outbox(record).await)
    }

    async fn pending_outbox(&self, recipient: &KeyId) -> Result<Vec<OutboxEntry>, StoreError> {
        forward!(self, s => s.pending_outbox(recipient).await)
    }

    async fn lease_outbox(
        &self,
        recipient: &KeyId,
        lease: std::time::Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        forward!(self, s => s.lease_outbox(recipient, lease).await)
    }

    async fn release_outbox(
        &self,
        recipient: &KeyId,
        message_ids: &[letterlock::store::MessageId],
    ) -> Result<(), StoreError> {
        forward!(self, s => s.release_outbox(recipient, message_ids).await)
    }

    async fn waiting_relayed(&self, recipient: &KeyId) -> Result<u64, StoreError> {
        forward!(self, s => s.waiting_relayed(recipient).await)
    }

    async fn open_outbox_body(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        forward!(self, s => s.open_outbox_body(recipient, message_id).await)
    }

    async fn enqueue_relay(&self, record: RelayRecord) -> Result<RelayOutcome, StoreError> {
        forward!(self, s => s.enqueue_relay(record).await)
    }

    async fn complete_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
        ack_tag: &Tag,
    ) -> Result<letterlock::store::Completion, StoreError> {
        forward!(self, s => s.complete_outbox(recipient, message_id, ack_tag).await)
    }

    async fn receipts(
        &self,
        sender: &KeyId,
        ids: &[MessageId],
    ) -> Result<Vec<Receipt>, StoreError> {
        forward!(self, s => s.receipts(sender, ids).await)
    }

    async fn expire_receipts(&self, delivered_before: u64) -> Result<u64, StoreError> {
        forward!(self, s => s.expire_receipts(delivered_before).await)
    }

    async fn trust_generation(&self) -> Result<u64, StoreError> {
        forward!(self, s => s.trust_generation().await)
    }

    async fn trusted_clients(&self) -> Result<TrustedClients, StoreError> {
        forward!(self, s => s.trusted_clients().await)
    }

    async fn client_keys(&self) -> Result<Vec<ClientKey>, StoreError> {
        forward!(self, s => s.client_keys().await)
    }

    async fn trust_client(&self, request: TrustRequest) -> Result<TrustOutcome, StoreError> {
        forward!(self, s => s.trust_client(request).await)
    }

    async fn untrust_client(&self, name: &str, now: u64) -> Result<Option<KeyId>, StoreError> {
        forward!(self, s => s.untrust_client(name, now).await)
    }

    async fn inbox_counts(&self) -> Result<Vec<(KeyId, u64)>, StoreError> {
        forward!(self, s => s.inbox_counts().await)
    }

    async fn matching_inbox(&self, id_prefix: &str) -> Result<Vec<InboxSummary>, StoreError> {
        forward!(self, s => s.matching_inbox(id_prefix).await)
    }

    async fn open_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<InboxMessage, StoreError> {
        forward!(self, s => s.open_inbox(sender, message_id).await)
    }

    async fn remove_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.remove_inbox(sender, message_id).await)
    }

    async fn remove_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.remove_outbox(recipient, message_id).await)
    }

    async fn expire_inbox(&self, received_before: u64) -> Result<u64, StoreError> {
        forward!(self, s => s.expire_inbox(received_before).await)
    }

    async fn integrity_check(&self) -> Result<bool, StoreError> {
        forward!(self, s => s.integrity_check().await)
    }
}

#[derive(Args, Debug)]
pub(super) struct MigrateArgs {
    /// The mailbox to create or bring to this letterlock's schema (--store): an SQLite file,
    /// or postgres://USER[:PASSWORD]@HOST[:PORT]/DB (a Unix socket:
    /// postgres://USER@/DB?host=/socket/folder); by default the SQLite file beside the keys, as
    /// for the server.
    #[command(flatten)]
    pub(super) mailbox: super::server::MailboxArgs,
}

/// `letterlock server migrate`: creates the mailbox's schema, or brings it to this
/// letterlock's version, and says which version it has. A server does the same when it
/// starts; this lets an operator do it once, before starting several servers.
pub(super) async fn migrate(a: MigrateArgs) -> Result<std::process::ExitCode> {
    let path = super::server::store_path(&a.mailbox.keys, a.mailbox.store.as_deref())?;
    if let Some(url) = postgres_url(&path) {
        #[cfg(feature = "postgres")]
        {
            let store = PostgresStore::connect(url)
                .await
                .context("cannot migrate the PostgreSQL mailbox")?;
            let (was, now) = (
                store.schema_version_found(),
                letterlock::store::postgres::SCHEMA_VERSION,
            );
            if was == now {
                println!("{}: schema version {now}, up to date", store.target());
            } else if was == 0 {
                println!("{}: schema created at version {now}", store.target());
            } else {
                println!(
                    "{}: schema migrated from version {was} to {now}",
                    store.target()
                );
            }
            store.close().await?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        #[cfg(not(feature = "postgres"))]
        {
            connect_postgres(url).await?;
        }
    }
    let store = super::server::create_store(&path).await?;
    println!("{}: SQLite mailbox, schema up to date", path.display());
    store.close().await?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub(super) struct CopyStoreArgs {
    /// The SQLite mailbox to copy (a server's --store file; stop that server first).
    #[arg(long)]
    pub(super) from: std::path::PathBuf,
    /// The PostgreSQL mailbox to copy into: postgres://USER[:PASSWORD]@HOST[:PORT]/DB.
    #[arg(long)]
    pub(super) to: String,
}

/// `letterlock server copy-store`: copies an SQLite mailbox into PostgreSQL, to move a server
/// onto a database shared by several. Running it again copies only what is missing.
pub(super) async fn copy_store(a: CopyStoreArgs) -> Result<std::process::ExitCode> {
    let Some(url) = postgres_url(Path::new(&a.to)) else {
        anyhow::bail!("--to must be a postgres:// URL, not {:?}", a.to);
    };
    #[cfg(feature = "postgres")]
    {
        // A folder, a text file or a dangling link is said as such, before a lock file is made
        // beside it.
        SqliteStore::check_database(&a.from)
            .with_context(|| format!("cannot copy the mailbox {}", a.from.display()))?;
        if !a.from.is_file() {
            anyhow::bail!(
                "no SQLite mailbox at {} (--from: a server's --store file, by default \
                 KEYS/letterlock-server.db)",
                a.from.display()
            );
        }
        // A server running on the SQLite mailbox would go on acknowledging messages that the
        // copy never sees: none may run until the copy ends.
        let _no_server = hold_server_lock(&a.from)?;
        let target = PostgresStore::connect(url)
            .await
            .context("cannot open the PostgreSQL mailbox")?;
        let report = target
            .copy_from_sqlite(&a.from)
            .await
            .with_context(|| format!("cannot copy the mailbox {}", a.from.display()))?;
        println!(
            "copied {} inbox messages and {} outbox messages from {} to {} \
             ({} and {} were there already)",
            report.inbox_copied,
            report.outbox_copied,
            a.from.display(),
            target.target(),
            report.inbox_present,
            report.outbox_present
        );
        println!(
            "copied {} client keys ({} were known there already, or their name trusted with \
             another key: the target's trust is kept)",
            report.keys_copied, report.keys_present
        );
        if report.receipts_copied > 0 {
            println!(
                "copied {} receipts of relayed messages",
                report.receipts_copied
            );
        }
        target.close().await?;
        if report.inbox_conflicts > 0 {
            anyhow::bail!(
                "{} inbox messages were not copied: the target holds other messages under \
                 the same sender and id (the log names them)",
                report.inbox_conflicts
            );
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "postgres"))]
    {
        connect_postgres(url).await?;
        Ok(std::process::ExitCode::FAILURE)
    }
}
