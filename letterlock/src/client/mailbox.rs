//! The client's mailbox: every message it receives from the server, kept durably and sealed.
//!
//! Without it the client's only copy of a message is what it printed (or the file `-o DIR`
//! wrote), and after the acknowledgement the server deletes its own. So
//! [`Client::fetch_to_mailbox`](super::Client::fetch_to_mailbox) streams each delivered
//! message's sealed bytes into the mailbox as they arrive, beside opening them, and commits
//! them (fsync of the body file, its folder and the row) before the acknowledgement is sent.
//!
//! Invariants:
//! - The bytes kept are the sealed message exactly as delivered (header, chunks, signature), not
//!   its plaintext: at rest it stays encrypted for the client's key and signed by the server's,
//!   and reading it later opens and verifies it again (as the server's inbox does).
//! - Memory stays bounded whatever the message's size: the sealed copy goes through the store's
//!   [`BlobWriter`], which spills to a file past [`crate::store::INLINE_MAX`].
//! - A message is kept once per (sender key id, message id): a repeat is not stored twice.
//!
//! The storage is the server's own [`SqliteStore`] and its inbox table, whose rows are exactly
//! "messages received from a sender": sender key id and name, message id, times, mode, length,
//! content hash, ack tag and body. The file and its blob folder are created owner-only (0600 and
//! 0700): they say who wrote to whom, when, and how much.
//!
//! Without the `sqlite` feature a [`Mailbox`] cannot exist (an empty enum) and the client
//! fetches as before.

#[cfg(feature = "sqlite")]
pub use with_sqlite::Mailbox;
#[cfg(feature = "sqlite")]
pub(crate) use with_sqlite::{SealedCopy, StagedCopy, create_private};

#[cfg(not(feature = "sqlite"))]
pub use without_sqlite::Mailbox;
#[cfg(not(feature = "sqlite"))]
pub(crate) use without_sqlite::{SealedCopy, StagedCopy};

/// What keeping one message in the mailbox did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) enum Kept {
    /// Stored now (committed and fsynced).
    Stored,
    /// The mailbox already held this message, byte for byte.
    AlreadyHeld,
}

#[cfg(feature = "sqlite")]
mod with_sqlite {
    use std::fs;
    use std::io::{self, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};

    use crate::envelope::Header;
    use crate::store::{
        BlobWriter, Body, InboxRecord, InsertOutcome, SqliteStore, Store, StoreError,
    };

    use super::Kept;
    use crate::client::ClientError;

    /// Unix permissions of a new mailbox database (and, as SQLite copies them, of its `-wal`
    /// and `-shm` files): owner only.
    pub const DB_MODE: u32 = 0o600;
    /// Unix permissions of a new blob folder: owner only.
    pub const BLOB_DIR_MODE: u32 = 0o700;

    /// The client's mailbox: a [`SqliteStore`] whose inbox holds the messages received.
    #[derive(Debug)]
    pub struct Mailbox {
        store: SqliteStore,
        /// The name stored with each message as its sender's (e.g. the server's address): the
        /// key id says who signed it, this says where it came from, for listings.
        sender_name: String,
    }

    impl Mailbox {
        /// Opens (creating if needed, owner-only) the mailbox database at `path` with its blob
        /// folder `<path>.blobs/`, naming the messages it keeps from now on as from
        /// `sender_name`. Blocking: call it at startup or from `spawn_blocking`.
        pub fn open(path: &Path, sender_name: &str) -> Result<Self, StoreError> {
            create_private(path)?;
            Ok(Mailbox {
                store: SqliteStore::open(path)?,
                sender_name: sender_name.to_owned(),
            })
        }

        /// The store underneath: list, find and read kept messages with its [`Store`] methods
        /// (`list_inbox`, `find_inbox`).
        pub fn store(&self) -> &SqliteStore {
            &self.store
        }

        /// Closes the store, waiting for its writer.
        pub async fn close(self) -> Result<(), StoreError> {
            self.store.close().await
        }

        /// Starts a sealed copy of one delivered message.
        pub(crate) fn copy(&self) -> SealedCopy {
            SealedCopy(self.store.blob_writer())
        }

        /// Commits a finished copy of the message with `header` (fsynced before this returns),
        /// under `sender_name` (a contact's name; `None`: the server's name given to
        /// [`Mailbox::open`]). A different message under the same (sender, id) is refused, as
        /// the server refuses one: the message is set aside, not acknowledged.
        pub(crate) async fn keep(
            &self,
            staged: StagedCopy,
            sender_name: Option<&str>,
            header: &Header,
            plaintext_len: u64,
            ack_tag: [u8; 32],
            now: u64,
        ) -> Result<Kept, ClientError> {
            let body = staged.0;
            // `copy` hashes what it keeps, so the hash is there.
            let content_hash = body
                .sha256()
                .ok_or(ClientError::Mailbox(StoreError::Corrupt {
                    what: "mailbox copy (written without its hash)",
                }))?;
            let record = InboxRecord {
                sender_key_id: header.sender.0,
                sender_name: sender_name.unwrap_or(&self.sender_name).to_owned(),
                message_id: header.message_id.0,
                created: header.created,
                received: now,
                mode: header.mode.to_byte(),
                plaintext_len,
                content_hash,
                ack_tag,
                body,
            };
            match self
                .store
                .insert_inbox(record)
                .await
                .map_err(ClientError::Mailbox)?
            {
                InsertOutcome::Inserted => Ok(Kept::Stored),
                InsertOutcome::Duplicate { .. } => Ok(Kept::AlreadyHeld),
                InsertOutcome::Conflict => Err(ClientError::MailboxConflict {
                    id: header.message_id,
                }),
            }
        }
    }

    /// Creates the database file and the blob folder owner-only if they do not exist yet
    /// (existing ones keep their permissions): the store itself would create them with the
    /// umask's (usually world-readable) permissions.
    pub(crate) fn create_private(path: &Path) -> Result<(), StoreError> {
        // Beside the file itself, where the store keeps its bodies (SqliteStore::real_path).
        let path = &crate::store::SqliteStore::real_path(path);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(DB_MODE)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("create the mailbox database", path)(e)),
        }
        let mut blobs = path.as_os_str().to_owned();
        blobs.push(".blobs");
        let blobs = PathBuf::from(blobs);
        match fs::DirBuilder::new().mode(BLOB_DIR_MODE).create(&blobs) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::io("create the mailbox blob folder", blobs)(e)),
        }
    }

    /// The sealed bytes of one delivered message, streaming into the mailbox's blob folder.
    pub(crate) struct SealedCopy(BlobWriter);

    impl SealedCopy {
        pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
            self.0.write_all(bytes).map_err(ClientError::Io)
        }

        /// Flushes and fsyncs the body (a large one is a file renamed into the blob folder).
        pub(crate) fn finish(self) -> Result<StagedCopy, ClientError> {
            self.0
                .finish()
                .map(StagedCopy)
                .map_err(ClientError::Mailbox)
        }
    }

    /// A finished sealed copy, not yet named by a row: dropped, its file is removed.
    pub(crate) struct StagedCopy(Body);
}

#[cfg(not(feature = "sqlite"))]
mod without_sqlite {
    use crate::client::ClientError;
    use crate::envelope::Header;

    use super::Kept;

    /// The client's mailbox: needs the `sqlite` feature; without it none can exist.
    #[derive(Debug)]
    pub enum Mailbox {}

    impl Mailbox {
        pub(crate) fn copy(&self) -> SealedCopy {
            match *self {}
        }

        pub(crate) async fn keep(
            &self,
            _: StagedCopy,
            _: Option<&str>,
            _: &Header,
            _: u64,
            _: [u8; 32],
            _: u64,
        ) -> Result<Kept, ClientError> {
            match *self {}
        }
    }

    pub(crate) enum SealedCopy {}

    impl SealedCopy {
        pub(crate) fn write(&mut self, _: &[u8]) -> Result<(), ClientError> {
            match *self {}
        }

        pub(crate) fn finish(self) -> Result<StagedCopy, ClientError> {
            match self {}
        }
    }

    pub(crate) enum StagedCopy {}
}
