//! The server's durable mailbox.
//!
//! Two queues live here:
//! - the **inbox**: messages clients sent to the server, kept sealed
//!   (encrypted) at rest, deduplicated by (sender key id, message id) so a
//!   client retrying after a lost acknowledgement gets the same ack back;
//! - the **outbox**: messages the server sealed for a client, waiting for
//!   that client's next fetch and removed only when the client proves receipt
//!   with the expected ack tag.
//!
//! Relayed messages (client to client, docs/PROTOCOL.md §15) wait in the outbox too: sealed by
//! one client for another, which the server cannot open. Their entry names the sender and keeps
//! the sender's **receipt commitment** instead of an ack tag; the recipient's ack, checked
//! against it, turns the entry into a **receipt** the sender may ask for.
//!
//! A third table holds the **trusted clients**: each client key the server has
//! ever trusted, under its name, with when it was trusted and, once replaced or
//! removed, when and why. The trusted ones decide who may connect; the whole
//! history opens old inbox messages, whose row names the key id they were
//! verified with. A generation counter, bumped with every trust change, tells
//! a running server when to re-read the list (docs/PROTOCOL.md, "Trusted
//! clients").
//!
//! The server is generic over the [`Store`] trait, which uses only plain Rust
//! types. Two implementations: `SqliteStore` (feature `sqlite`: one server, one
//! file) and `PostgresStore` (feature `postgres`: several servers over one
//! database, which share the inbox, the outbox, the trusted clients and the
//! trust generation). tests/suite/store_conformance.rs runs one suite against both;
//! docs/STORE.md describes their schemas.
//!
//! Durability contract: every write method returns only after its change is
//! committed and fsynced. Large bodies are streamed (see [`BlobWriter`]) to a
//! file (SQLite) or into database chunks (PostgreSQL) before the row naming
//! them commits.

#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
mod body;
mod error;
#[cfg(feature = "sqlite")]
mod leases;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod writer;

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use body::{BlobWriter, Body, INLINE_MAX, SEALED_IDENTITY_CONTEXT, SealedIdentity};
pub use error::{BackendError, StoreError};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore};

/// A key id: SHA-256 fingerprint of an RSA public key.
pub type KeyId = [u8; 32];
/// A message id, chosen by the sealer.
pub type MessageId = [u8; 16];
/// A SHA-256 digest or an acknowledgement tag.
pub type Tag = [u8; 32];

/// How long a fetch holds the outbox entries it is delivering ([`Store::lease_outbox`]):
/// long enough to deliver a large message, short enough that a message whose server died
/// reaches its client through another server within a minute.
pub const DELIVERY_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Hex digits in a full message id.
const MESSAGE_ID_HEX_LEN: usize = 32;

/// Most inbox messages [`Store::matching_inbox`] returns: enough to list the candidates of an
/// ambiguous prefix, bounded for a one-digit one.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
const MAX_MATCHES: i64 = 1000;

/// Turn a hex prefix into the inclusive range of message ids it covers, so a backend's lookup
/// can use its message id index (both backends compare ids bytewise).
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
fn prefix_range(prefix: &str) -> Result<(MessageId, MessageId), StoreError> {
    let bad = || StoreError::BadIdPrefix {
        prefix: prefix.to_owned(),
    };
    if prefix.is_empty()
        || prefix.len() > MESSAGE_ID_HEX_LEN
        || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let pad = |fill: char| {
        let mut full = prefix.to_ascii_lowercase();
        full.extend(std::iter::repeat_n(fill, MESSAGE_ID_HEX_LEN - prefix.len()));
        let mut id = [0u8; 16];
        hex::decode_to_slice(&full, &mut id).map_err(|_| bad())?;
        Ok::<_, StoreError>(id)
    };
    Ok((pad('0')?, pad('f')?))
}

/// Group commit counters of a store handle, for tests and metrics: fewer transactions than
/// writes means concurrent writes shared commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed by this handle's writer (SQLite) or group task (PostgreSQL).
    pub batches_committed: u64,
    /// Write requests (answered, whatever their outcome) in those transactions.
    pub writes_committed: u64,
}

/// Mode byte of an asymmetric (RSA only) message.
pub const MODE_ASYMMETRIC: u8 = 1;
/// Mode byte of a hybrid (RSA-wrapped AES-GCM key) message.
pub const MODE_HYBRID: u8 = 2;

/// A message a client sent to the server, as the server accepted it.
#[derive(Debug)]
pub struct InboxRecord {
    /// Key id of the sender's public key.
    pub sender_key_id: KeyId,
    /// Display name the sender is known by.
    pub sender_name: String,
    /// Message id from the header; unique per sender.
    pub message_id: MessageId,
    /// Creation time from the message header (unix seconds).
    pub created: u64,
    /// Time the server received it (unix seconds).
    pub received: u64,
    /// [`MODE_ASYMMETRIC`] or [`MODE_HYBRID`].
    pub mode: u8,
    /// Length of the plaintext inside.
    pub plaintext_len: u64,
    /// Tells a retry from a clash: the server keeps the message's [`SealedIdentity`] (older
    /// rows: SHA-256 of the sealed bytes), a client's mailbox SHA-256 of the sealed bytes.
    pub content_hash: Tag,
    /// The ack tag the server sent (and re-sends for a retry).
    pub ack_tag: Tag,
    /// The sealed message, still encrypted.
    pub body: Body,
}

/// What happened to an inbox insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored now.
    Inserted,
    /// Already stored with the same content (a retry after a lost ack): the
    /// server must re-send this, the originally stored, ack tag.
    Duplicate { ack_tag: Tag },
    /// This sender already used this message id for different content:
    /// refused, nothing stored.
    Conflict,
}

/// What the store knows of a stored inbox message, enough to answer a repeat of it without
/// opening it: a repeat is recognised by (sender, message id) from the header alone, and the
/// incoming bytes are then only hashed and compared with `content_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownMessage {
    /// The content hash of the first copy ([`InboxRecord::content_hash`]).
    pub content_hash: Tag,
    /// The ack tag sent for it, sent again for a byte-identical repeat (which proves nothing
    /// new: only the bytes the tag was computed from can earn it).
    pub ack_tag: Tag,
}

/// One inbox message's metadata, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSummary {
    pub message_id: MessageId,
    pub sender_name: String,
    pub sender_key_id: KeyId,
    pub created: u64,
    pub received: u64,
    pub mode: u8,
    pub plaintext_len: u64,
    /// Size of the sealed body as stored.
    pub body_size: u64,
    pub content_hash: Tag,
}

/// One inbox message with a streaming reader over its sealed body.
pub struct InboxMessage {
    pub summary: InboxSummary,
    /// The sealed body; a large one streams from its file.
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for InboxMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxMessage")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// A message the server sealed for a client, to be delivered on its next fetch.
#[derive(Debug)]
pub struct OutboxRecord {
    pub recipient_key_id: KeyId,
    pub recipient_name: String,
    pub message_id: MessageId,
    /// Creation time from the message header (unix seconds).
    pub created: u64,
    pub mode: u8,
    /// Length of the plaintext inside.
    pub plaintext_len: u64,
    /// The ack tag the recipient must send back to prove receipt.
    pub expected_ack_tag: Tag,
    /// The sealed message.
    pub body: Body,
}

/// A pending outbox entry's metadata (the ack tag is not exposed: it is the
/// recipient's proof of receipt and only ever compared inside the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub recipient_key_id: KeyId,
    pub recipient_name: String,
    pub message_id: MessageId,
    pub created: u64,
    pub mode: u8,
    /// Length of the plaintext inside; 0 for a relayed entry (the server cannot know it).
    pub plaintext_len: u64,
    /// Size of the sealed body as stored.
    pub body_size: u64,
    /// Who sealed it: `None` for the server itself, else the client that relayed it (key id
    /// and name), so listings and deliveries can tell the two apart.
    pub sender: Option<(KeyId, String)>,
}

/// A message one client sealed for another, as the server relays it (it cannot open it).
#[derive(Debug)]
pub struct RelayRecord {
    /// The authenticated sender, as the header names it.
    pub sender_key_id: KeyId,
    /// The sender's name in the trust list, for listings.
    pub sender_name: String,
    /// The recipient the header names, a client the server trusts.
    pub recipient_key_id: KeyId,
    pub recipient_name: String,
    /// Message id from the header; unique per sender among relayed messages.
    pub message_id: MessageId,
    /// Creation time from the message header (unix seconds).
    pub created: u64,
    /// Time the server received it (unix seconds).
    pub received: u64,
    /// [`MODE_ASYMMETRIC`] or [`MODE_HYBRID`].
    pub mode: u8,
    /// The message's [`SealedIdentity`] (computed with the recipient's modulus length): tells
    /// a retry from another message under the same id.
    pub content_hash: Tag,
    /// The sender's receipt commitment, `wire::receipt_commitment(ack_tag)`: the recipient's
    /// ack is checked against it, and the server cannot make a tag that matches.
    pub commitment: Tag,
    /// The sealed message, as received.
    pub body: Body,
}

/// What happened to a relayed message ([`Store::enqueue_relay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Stored now, durably.
    Stored,
    /// The same (sender, id) with the same content hash is still waiting or was already
    /// delivered: nothing written, the sender is told `Stored` again.
    Duplicate,
    /// The id is taken: this sender used it for other content, or the recipient already has
    /// an entry with this id from someone else. Refused, nothing stored.
    Conflict,
}

/// What an acknowledgement did to an outbox entry ([`Store::complete_outbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The tag matched: the entry and its body are deleted; for a relayed entry (`receipt`)
    /// its [`Receipt`] was stored in the same transaction.
    Completed { receipt: bool },
    /// A relayed entry whose tag did not match the sender's commitment: deleted anyway (a
    /// recipient may always discard what was sent to it, and only it can ack its own
    /// entries), but no receipt is stored. The sender, named here for the server's log, either
    /// committed to a wrong tag or the recipient acked garbage; neither makes a receipt.
    RemovedWithoutReceipt {
        sender_key_id: KeyId,
        sender_name: String,
    },
    /// No such entry is waiting for this recipient (unknown, or already removed).
    NotPending,
    /// A server-sealed entry whose tag did not match: nothing changed.
    BadTag,
}

/// The proof that a relayed message reached its recipient: the ack tag the recipient sent,
/// which matched the sender's commitment. Only the recipient (who decrypted the message) and
/// the sender (who signed it) can compute the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The client that relayed the message; only it is given the receipt.
    pub sender_key_id: KeyId,
    pub message_id: MessageId,
    /// The client that acknowledged it.
    pub recipient_key_id: KeyId,
    pub recipient_name: String,
    /// The recipient's ack tag.
    pub ack_tag: Tag,
    /// When the ack arrived (unix seconds, the server's clock).
    pub delivered: u64,
}

/// Why a client key stopped being trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEnd {
    /// `server trust NEW --name NAME --replace`: another key took its name.
    Replaced,
    /// `server untrust NAME`.
    Removed,
}

impl KeyEnd {
    /// The word stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEnd::Replaced => "replaced",
            KeyEnd::Removed => "removed",
        }
    }
}

/// A client key as the store keeps it: trusted now (`ended` is `None`), or kept after it was
/// replaced or removed so that the messages it signed stay readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The name the client is known by (logs, `server send_msg --to`).
    pub name: String,
    /// SHA-256 of `public_key`: what handshakes and inbox rows name.
    pub key_id: KeyId,
    /// The public key, SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// When it was trusted (unix seconds).
    pub since: u64,
    /// When and why it stopped being trusted; `None` while trusted.
    pub ended: Option<(u64, KeyEnd)>,
}

/// The trusted client keys and the generation they belong to, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedClients {
    /// The trust generation (see [`Store::trust_generation`]) of this list.
    pub generation: u64,
    /// The keys trusted at that generation, one per name.
    pub clients: Vec<ClientKey>,
}

/// A request to trust a key under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRequest {
    pub name: String,
    /// SHA-256 of `public_key`.
    pub key_id: KeyId,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Replace the key the name has now (rotation) instead of refusing.
    pub replace: bool,
    /// Now (unix seconds): the new key's `since`, the old one's end.
    pub now: u64,
}

/// What a [`TrustRequest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustOutcome {
    /// The key is trusted now under the name.
    Trusted,
    /// The key is trusted now under the name, and `old` no longer is.
    Replaced { old: KeyId },
    /// The key was already trusted under this name: nothing changed.
    AlreadyTrusted,
    /// Refused: the name already has another key (`existing`), and `replace` was not set.
    NameTaken { existing: KeyId },
    /// Refused: the key is already trusted under another name.
    KeyTaken { name: String },
}

/// A write on its way to a store ([`Store::write_coming`]), counted until dropped.
#[derive(Debug, Default)]
pub struct WriteComing(Option<Arc<AtomicUsize>>);

impl WriteComing {
    /// A write counted in `coming` until this is dropped.
    pub(crate) fn counted_in(coming: &Arc<AtomicUsize>) -> WriteComing {
        coming.fetch_add(1, Ordering::SeqCst);
        WriteComing(Some(coming.clone()))
    }
}

impl Drop for WriteComing {
    fn drop(&mut self) {
        if let Some(coming) = &self.0 {
            coming.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The mailbox as the server sees it.
///
/// Methods return `impl Future + Send` (callers may `tokio::spawn` them);
/// implementations can simply write `async fn`. No backend types appear in
/// the signatures.
pub trait Store: Send + Sync + 'static {
    /// Start streaming a message body into this store.
    fn blob_writer(&self) -> BlobWriter;

    /// Says that a write is on its way, until the returned guard is dropped: a message whose
    /// bytes have all arrived, being verified, to be stored if it verifies. A store that
    /// gathers writes into shared commits (the SQLite writer, `SqliteOptions::commit_spacing`)
    /// holds a write back only while others are on their way, so a lone client that waits for
    /// each ack is never made to wait for writes that will not come. Drop the guard just
    /// before the write itself is made. A store that does not wait returns
    /// `WriteComing::default()`; a store that wraps another passes the call on (no default
    /// here, so that a wrapper cannot lose it unnoticed).
    fn write_coming(&self) -> WriteComing;

    /// Store a received message; returns once durable (or refused).
    fn insert_inbox(
        &self,
        record: InboxRecord,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send;

    /// The stored message `message_id` from `sender`, if any: looked up as soon as a header is
    /// parsed, so a repeat costs a hash of its bytes, not a decryption.
    fn known_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> impl Future<Output = Result<Option<KnownMessage>, StoreError>> + Send;

    /// All inbox messages, oldest received first.
    fn list_inbox(&self) -> impl Future<Output = Result<Vec<InboxSummary>, StoreError>> + Send;

    /// The one inbox message whose id starts with `id_prefix` (hex digits).
    fn find_inbox(
        &self,
        id_prefix: &str,
    ) -> impl Future<Output = Result<InboxMessage, StoreError>> + Send;

    /// Queue a sealed message for a recipient; returns once durable.
    fn enqueue_outbox(
        &self,
        record: OutboxRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Messages waiting for `recipient`, oldest first.
    fn pending_outbox(
        &self,
        recipient: &KeyId,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Messages waiting for `recipient` that one fetch may deliver now, oldest first.
    ///
    /// Each returned entry is leased to this caller until `lease` has passed (or
    /// [`Store::release_outbox`], or its completion), so a concurrent fetch for the same
    /// recipient gets other entries or none: through another server sharing the store, or
    /// through the same server, as two copies of one client's keys fetching at once do. An
    /// entry whose server died is offered again once its lease expires; a valid completion
    /// removes it whoever holds the lease, and a wrong one leaves the lease alone. Both built-in
    /// stores lease (PostgreSQL in its table, SQLite in the server's memory). The default
    /// returns every pending entry, leasing nothing: enough only for a store that is never
    /// fetched from twice at once.
    fn lease_outbox(
        &self,
        recipient: &KeyId,
        lease: std::time::Duration,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send {
        let _ = lease;
        self.pending_outbox(recipient)
    }

    /// Ends this caller's leases ([`Store::lease_outbox`]) on `message_ids` of `recipient`
    /// before they expire, so the next fetch, through any server, gets them at once: a fetch
    /// whose client went away without acking them calls it. Ids no longer waiting (acked and
    /// removed meanwhile) are skipped. A store that does not lease has nothing to release:
    /// the default does nothing.
    fn release_outbox(
        &self,
        recipient: &KeyId,
        message_ids: &[MessageId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (recipient, message_ids);
        std::future::ready(Ok(()))
    }

    /// How many relayed messages wait for `recipient` (the server's own not counted): a
    /// server refuses a relay past [`crate::server::ServerConfig::max_waiting_relayed`], so no
    /// client can fill another's outbox without limit. One count over the recipient's index.
    fn waiting_relayed(
        &self,
        recipient: &KeyId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Open the sealed body of a pending outbox message.
    fn open_outbox_body(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> impl Future<Output = Result<Box<dyn Read + Send>, StoreError>> + Send;

    /// Store a message one client relays to another; returns once durable (or refused). The
    /// repeat rules of [`RelayOutcome`] hold across every server of a shared store.
    fn enqueue_relay(
        &self,
        record: RelayRecord,
    ) -> impl Future<Output = Result<RelayOutcome, StoreError>> + Send;

    /// Remove a delivered outbox message if `ack_tag` matches the expected
    /// tag (constant-time comparison); see [`Completion`] for the answers.
    ///
    /// A relayed entry keeps no tag but the sender's commitment: `ack_tag` matches when
    /// `wire::receipt_commitment(ack_tag)` equals it (constant time). Then the entry and its
    /// body are deleted and its [`Receipt`] stored in the same transaction. A relayed entry
    /// whose tag does not match is deleted too, without a receipt
    /// ([`Completion::RemovedWithoutReceipt`]): the server cannot check a commitment when it
    /// relays, so a sender's wrong commitment must not leave an entry its recipient can never
    /// get rid of (every later fetch would deliver it and every ack fail).
    fn complete_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
        ack_tag: &Tag,
    ) -> impl Future<Output = Result<Completion, StoreError>> + Send;

    /// Delete the outbox message `message_id` waiting for `recipient`, and its body, without
    /// delivering it: for an operator (`letterlock server outbox --remove`), typically for a
    /// message sealed to a key no longer trusted, which nobody can fetch. A relayed one gets no
    /// receipt. Returns whether it was deleted: not when it is not there, nor, in a store that
    /// leases deliveries ([`Store::lease_outbox`]), while a fetch holds it. Durable on return.
    fn remove_outbox(
        &self,
        recipient: &KeyId,
        message_id: &MessageId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A number that changes with every trust change (trust, replace, untrust), committed with
    /// the change: a server compares it before each handshake and re-reads
    /// [`Store::trusted_clients`] only when it moved. One indexed read.
    fn trust_generation(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The keys trusted now and their generation, read in one transaction (so the list is
    /// exactly that generation's).
    fn trusted_clients(&self) -> impl Future<Output = Result<TrustedClients, StoreError>> + Send;

    /// Every client key ever trusted, trusted or not any more, oldest first: opens old
    /// messages and shows the history.
    fn client_keys(&self) -> impl Future<Output = Result<Vec<ClientKey>, StoreError>> + Send;

    /// Trust a key under a name, or rotate the name to it; bumps the trust generation when
    /// something changed. Returns once durable.
    fn trust_client(
        &self,
        request: TrustRequest,
    ) -> impl Future<Output = Result<TrustOutcome, StoreError>> + Send;

    /// Stop trusting the key named `name` (kept in the history, its messages kept). Returns
    /// the key id it had, or `None` when no trusted client has that name. Durable on return.
    fn untrust_client(
        &self,
        name: &str,
        now: u64,
    ) -> impl Future<Output = Result<Option<KeyId>, StoreError>> + Send;

    /// Inbox messages per sender key id, for listings.
    fn inbox_counts(&self) -> impl Future<Output = Result<Vec<(KeyId, u64)>, StoreError>> + Send;

    /// Every inbox message whose id starts with `id_prefix` (hex digits), whoever sent it,
    /// oldest received first: ids are unique per sender only, so the caller picks or asks.
    fn matching_inbox(
        &self,
        id_prefix: &str,
    ) -> impl Future<Output = Result<Vec<InboxSummary>, StoreError>> + Send;

    /// The inbox message `message_id` from `sender`, with a reader over its sealed body.
    fn open_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> impl Future<Output = Result<InboxMessage, StoreError>> + Send;

    /// Delete the inbox message `message_id` from `sender` and its body file. Returns whether
    /// it existed. Durable on return.
    fn remove_inbox(
        &self,
        sender: &KeyId,
        message_id: &MessageId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Delete every inbox message received before `received_before` (unix seconds) and their
    /// body files (the retention period). Returns how many. Durable on return.
    fn expire_inbox(
        &self,
        received_before: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The receipts of messages `sender` relayed, among `ids`: ids without one (unknown, not
    /// delivered yet, or relayed by another client) are left out.
    fn receipts(
        &self,
        sender: &KeyId,
        ids: &[MessageId],
    ) -> impl Future<Output = Result<Vec<Receipt>, StoreError>> + Send;

    /// Delete every receipt delivered before `delivered_before` (unix seconds): receipts are
    /// kept as long as inbox messages (the retention period). Returns how many. Durable on
    /// return.
    fn expire_receipts(
        &self,
        delivered_before: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Check the store's internal consistency (for crash tests and `doctor`-
    /// style commands).
    fn integrity_check(&self) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
