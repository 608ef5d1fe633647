//! The client's contacts and the messages it relayed to them: two tables of its own in the
//! client's mailbox database (`KEYS/letterlock-client.db`), beside the store's.
//!
//! - `client_contacts`: one row per name: the key the user pinned (`client trust FILE --name
//!   NAME`) or the key the server's directory gave under that name and this client accepted.
//!   A directory key that differs from the one accepted before is kept beside it as *offered*
//!   (state `changed`) and not used until the user accepts it, as ssh keeps a changed host
//!   key out until `known_hosts` is edited. A pinned row never changes because of the
//!   directory ([`directory::judge`] refuses every disagreement with a pin).
//! - `client_contacts_earlier`: the keys a contact had before `accept` or a `pin --replace`
//!   replaced them, used ONLY to verify messages the mailbox already holds (`client read`):
//!   never to send, never to accept a delivery ([`Contacts::by_key`] does not see them).
//! - `client_sent`: one row per relayed message: recipient, the ack tag computed at sealing
//!   (written and committed *before* the message is sent, so that a crash after the server's
//!   `Stored` still lets the receipt be checked), and, once a receipt checked out against that
//!   tag (constant-time comparison), the receipt.
//!
//! Invariants: every write is one transaction on a connection with `synchronous=FULL`
//! (durable when it returns); a name has at most one row, a key is pinned under at most one
//! name; nothing here is plaintext, but the rows say whom the user writes to, so the database
//! is created owner-only like the mailbox. The tables are created with `CREATE TABLE IF NOT
//! EXISTS` on a connection of their own: the store's schema and version are not touched.
//!
//! Blocking (SQLite): call from `spawn_blocking`, or at startup. [`Contacts`] is a cheap
//! handle (`Clone`) over one connection behind a mutex.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::directory::{self, Entry, Known, Verdict};
use crate::envelope::{MessageId, ack_tags_match};
use crate::keys::{KeyError, KeyId, PublicKey, valid_name};
use crate::wire::ReceiptInfo;

/// The two tables, created if missing. `state` is `usable` or `changed` (a directory key was
/// offered in place of the accepted one: `offered_*` hold it until `accept`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS client_contacts (
    name           TEXT    PRIMARY KEY,
    key_id         BLOB    NOT NULL CHECK (length(key_id) = 32),
    spki           BLOB    NOT NULL,
    source         TEXT    NOT NULL CHECK (source IN ('pinned', 'directory')),
    since          INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('usable', 'changed')),
    offered_key_id BLOB    CHECK (offered_key_id IS NULL OR length(offered_key_id) = 32),
    offered_spki   BLOB,
    offered_since  INTEGER,
    serial         INTEGER,
    CHECK ((state = 'changed') = (offered_key_id IS NOT NULL)),
    CHECK ((offered_key_id IS NULL) = (offered_spki IS NULL))
);
CREATE INDEX IF NOT EXISTS client_contacts_by_key ON client_contacts (key_id);
CREATE TABLE IF NOT EXISTS client_contacts_earlier (
    key_id   BLOB    PRIMARY KEY CHECK (length(key_id) = 32),
    spki     BLOB    NOT NULL,
    name     TEXT    NOT NULL,
    source   TEXT    NOT NULL CHECK (source IN ('pinned', 'directory')),
    replaced INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS client_sent (
    message_id       BLOB    PRIMARY KEY CHECK (length(message_id) = 16),
    recipient_name   TEXT    NOT NULL,
    recipient_key_id BLOB    NOT NULL CHECK (length(recipient_key_id) = 32),
    ack_tag          BLOB    NOT NULL CHECK (length(ack_tag) = 32),
    mode             INTEGER NOT NULL,
    bytes            INTEGER NOT NULL CHECK (bytes >= 0),
    sent             INTEGER NOT NULL,
    stored           INTEGER,
    delivered        INTEGER,
    verified         INTEGER,
    CHECK ((delivered IS NULL) = (verified IS NULL))
);
";

/// How long a write waits for the store's own connections (SQLite serialises writers).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with the contacts or the sent messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactsError {
    #[error("the contacts database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the contacts database: {0}")]
    Create(#[source] crate::store::StoreError),
    /// A row whose bytes are not what this module writes (edited by hand, or damaged).
    #[error("the contacts database holds a damaged row ({0})")]
    Corrupt(&'static str),
    #[error("a contact's key does not parse: {0}")]
    Key(#[source] KeyError),
    #[error("{0:?} is not a usable contact name (1 to 64 letters, digits, '.', '_', '-')")]
    BadName(String),
    /// `server` (in any case): the server's own messages go by that name.
    #[error(
        "{0:?} is reserved: the server's own messages are shown as from the server; pin the \
         key under another name"
    )]
    ReservedName(String),
    /// A contact stored under a reserved name before the name was refused: listed and
    /// removable, never used ([`Contacts::get`], [`Contacts::by_key`]).
    #[error(
        "a contact is stored under the name {name:?}, which is reserved for the server's own \
         messages (it was stored before letterlock refused that name); it is not used, so \
         nothing is sent to it and nothing from it is shown as from the server. Forget it with \
         `letterlock client untrust {name}`, then pin its key under another name with \
         `letterlock client trust FILE --name NAME`"
    )]
    ReservedStored { name: String },
    /// `trust` of a name that has another key, without `replace`.
    #[error(
        "{name} is already pinned to another key {existing}; pass --replace to pin {new} \
         instead (check its fingerprint out of band first)"
    )]
    NameTaken {
        name: String,
        existing: KeyId,
        new: KeyId,
    },
    /// `trust` of a name the server's directory gave with another key, without `replace`.
    #[error(
        "{name} is known from the server's directory with another key ({existing}); pinning \
         {new} replaces it: add --replace (check its fingerprint with {name} out of band first)"
    )]
    NameFromDirectory {
        name: String,
        existing: KeyId,
        new: KeyId,
    },
    /// `trust` of a key already pinned under another name.
    #[error("that key ({key}) is already pinned as {other}; untrust {other} first")]
    KeyPinnedElsewhere { key: KeyId, other: String },
    #[error("no contact named {0}")]
    NoSuchName(String),
    /// `untrust` of a contact whose changed key waits for the user, without `force`.
    #[error(
        "{name} has a changed key waiting: the server's directory offers {offered} instead of \
         {current}. Forgetting {name} now would make the next directory read take the offered \
         key as a brand-new contact, with no change warning. Check with {name} and `letterlock \
         client contacts --accept {name} --key {offered}`, or leave it; to forget {name} anyway, \
         add --force"
    )]
    ChangePending {
        name: String,
        current: KeyId,
        offered: KeyId,
    },
    /// `accept` of a name that has no offered change.
    #[error("{0} has no changed key waiting to be accepted")]
    NothingToAccept(String),
    /// `accept` of a key the directory no longer offers: it now offers another, which the
    /// user has not checked.
    #[error(
        "the server's directory now offers {name} the key {offered}, not {shown}, the one you \
         were shown; nothing was accepted. Check {offered} with {name} out of band, then run \
         `letterlock client contacts --accept {name} --key {offered}`"
    )]
    OfferChanged {
        name: String,
        shown: KeyId,
        offered: KeyId,
    },
}

/// Where a contact's key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Given out of band and pinned by the user: always wins over the directory.
    Pinned,
    /// From the server's signed directory, accepted on the server's word (first sight) or by
    /// the user (`contacts --accept`).
    Directory,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pinned => "pinned",
            Source::Directory => "directory",
        }
    }
}

/// One contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    pub name: String,
    /// The key used for this name (the offered one, if any, is not).
    pub key: PublicKey,
    pub source: Source,
    /// When pinned (pinned), or since when the server trusts the key (directory).
    pub since: u64,
    /// A key the directory now offers for this name instead of `key`, waiting for the user.
    pub offered: Option<Offered>,
    /// The directory serial this name was last seen at (directory contacts).
    pub serial: Option<u64>,
}

/// A key a contact had before it was replaced ([`Contacts::earlier_key`]): verifies messages
/// already in the mailbox, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlierKey {
    pub key: PublicKey,
    /// The contact's name when the key was replaced.
    pub name: String,
    pub source: Source,
    /// When it was replaced (unix seconds, the client's clock).
    pub replaced: u64,
}

/// A changed key offered by the directory, not used until accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    pub key: PublicKey,
    pub since: u64,
}

/// What applying one verified directory entry did ([`Contacts::apply_directory`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The pinned key, confirmed by the directory.
    Pinned { name: String },
    /// The key accepted before, unchanged.
    Seen { name: String },
    /// First sight: recorded as a directory contact, usable now.
    New { name: String, key: KeyId },
    /// Another key than the one accepted before: kept as offered, NOT used until `accept`.
    Changed {
        name: String,
        before: KeyId,
        now: KeyId,
    },
    /// The directory disagrees with a pin: nothing recorded, never used.
    ConflictsWithPin { name: String, detail: String },
    /// A name that reads as the server itself: nothing recorded, never used.
    Reserved { name: String },
}

/// A message this client relayed, as `client_sent` keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    pub id: MessageId,
    pub recipient_name: String,
    pub recipient: KeyId,
    /// The ack tag computed at sealing: only the recipient can send it back.
    pub ack_tag: [u8; 32],
    pub mode: u8,
    pub bytes: u64,
    /// When it was sent (our clock), and when the server said `Stored` (if it did).
    pub sent: u64,
    pub stored: Option<u64>,
    /// A receipt that checked out: when the recipient acknowledged it (server's clock).
    pub delivered: Option<u64>,
}

/// How a receipt returned by the server compared with the ack tag kept at sealing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptCheck {
    /// The tag matches: the recipient opened the message. Recorded.
    Read {
        id: MessageId,
        recipient_name: String,
        delivered: u64,
    },
    /// The tag does not match (or names another recipient): NOT read; a forged receipt.
    Forged { id: MessageId, why: &'static str },
    /// A receipt for a message this client has no record of sending.
    Unknown { id: MessageId },
}

/// The client's contacts and relayed messages.
#[derive(Clone, Debug)]
pub struct Contacts {
    conn: Arc<Mutex<Connection>>,
}

impl Contacts {
    /// Opens the tables in the mailbox database at `path` (creating the file owner-only, and
    /// the tables, if needed).
    pub fn open(path: &Path) -> Result<Self, ContactsError> {
        super::mailbox::create_private(path).map_err(ContactsError::Create)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The store sets WAL on the file too (a persistent setting); FULL: a pin or a sent
        // record is on disk when the call returns.
        let _: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Contacts {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ContactsError>,
    ) -> Result<T, ContactsError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn)
    }

    /// Pins `key` under `name` (source pinned, usable). A name pinned or seen with another key
    /// needs `replace`; a key pinned under another name is refused. Returns the key the name
    /// had before, if another.
    pub fn pin(
        &self,
        name: &str,
        key: &PublicKey,
        replace: bool,
        now: u64,
    ) -> Result<Option<KeyId>, ContactsError> {
        if !valid_name(name) {
            return Err(ContactsError::BadName(name.to_owned()));
        }
        if crate::keys::reserved_name(name) {
            return Err(ContactsError::ReservedName(name.to_owned()));
        }
        let id = key.id();
        self.with(|conn| {
            let tx = conn.transaction()?;
            let other: Option<String> = tx
                .query_row(
                    "SELECT name FROM client_contacts WHERE key_id = ?1 AND source = 'pinned' \
                     AND name <> ?2",
                    params![&id.0[..], name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = other {
                return Err(ContactsError::KeyPinnedElsewhere { key: id, other });
            }
            let existing = read_contact(&tx, name)?;
            let before = existing.as_ref().map(|c| c.key.id()).filter(|k| *k != id);
            if let (Some(before), false) = (before, replace) {
                let name = name.to_owned();
                return Err(match existing.as_ref().map(|c| c.source) {
                    Some(Source::Directory) => ContactsError::NameFromDirectory {
                        name,
                        existing: before,
                        new: id,
                    },
                    _ => ContactsError::NameTaken {
                        name,
                        existing: before,
                        new: id,
                    },
                });
            }
            if let Some(old) = existing.as_ref().filter(|c| c.key.id() != id) {
                keep_earlier(&tx, old, now)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO client_contacts (name, key_id, spki, source, since, state, \
                 offered_key_id, offered_spki, offered_since, serial) \
                 VALUES (?1, ?2, ?3, 'pinned', ?4, 'usable', NULL, NULL, NULL, NULL)",
                params![name, &id.0[..], key.spki_der(), to_i64(now)],
            )?;
            tx.commit()?;
            Ok(before)
        })
    }

    /// Removes the contact `name` (pinned or from the directory). A later directory fetch
    /// sees the name as new again. A contact with a changed key waiting is kept unless
    /// `force`: removing it would let the next directory fetch record the offered key as a
    /// new contact, trusted on the server's word, with no change warning.
    pub fn remove(&self, name: &str, force: bool) -> Result<Contact, ContactsError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let contact = read_contact(&tx, name)?
                .ok_or_else(|| ContactsError::NoSuchName(name.to_owned()))?;
            if let (Some(offered), false) = (&contact.offered, force) {
                return Err(ContactsError::ChangePending {
                    name: name.to_owned(),
                    current: contact.key.id(),
                    offered: offered.key.id(),
                });
            }
            tx.execute("DELETE FROM client_contacts WHERE name = ?1", [name])?;
            tx.commit()?;
            Ok(contact)
        })
    }

    /// Every contact, by name.
    pub fn list(&self) -> Result<Vec<Contact>, ContactsError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {CONTACT_COLUMNS} FROM client_contacts ORDER BY name"
            ))?;
            let rows = stmt.query_map([], raw_contact)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?.parse()?);
            }
            Ok(out)
        })
    }

    /// The contact `name`, if any, to use; one stored under a reserved name is
    /// [`ContactsError::ReservedStored`] (`usable`).
    pub fn get(&self, name: &str) -> Result<Option<Contact>, ContactsError> {
        self.with(|conn| read_contact(conn, name))?
            .map(usable)
            .transpose()
    }

    /// The contact whose usable key is `key` (the offered key of a change does not count); one
    /// stored under a reserved name is [`ContactsError::ReservedStored`] (`usable`).
    pub fn by_key(&self, key: &KeyId) -> Result<Option<Contact>, ContactsError> {
        self.with(|conn| {
            let raw = conn
                .query_row(
                    &format!(
                        "SELECT {CONTACT_COLUMNS} FROM client_contacts WHERE key_id = ?1 \
                         ORDER BY source = 'pinned' DESC, name LIMIT 1"
                    ),
                    [&key.0[..]],
                    raw_contact,
                )
                .optional()?;
            raw.map(RawContact::parse).transpose()
        })?
        .map(usable)
        .transpose()
    }

    /// A key `name` had before it was replaced (`accept`, `pin --replace`): for verifying a
    /// message the mailbox already holds, and for nothing else (not a sender of new
    /// deliveries, not a recipient). The contact's name then, its source, and when it was
    /// replaced.
    pub fn earlier_key(&self, key: &KeyId) -> Result<Option<EarlierKey>, ContactsError> {
        self.with(|conn| {
            let raw = conn
                .query_row(
                    "SELECT spki, name, source, replaced FROM client_contacts_earlier \
                     WHERE key_id = ?1",
                    [&key.0[..]],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()?;
            let Some((spki, name, source, replaced)) = raw else {
                return Ok(None);
            };
            Ok(Some(EarlierKey {
                key: parse_key(&spki, &key.0)?,
                name,
                source: parse_source(&source)?,
                replaced: to_u64(replaced),
            }))
        })
    }

    /// Whether `key` is only offered as a change for some name (not usable): the name.
    pub fn offered_as_change(&self, key: &KeyId) -> Result<Option<String>, ContactsError> {
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT name FROM client_contacts WHERE offered_key_id = ?1 LIMIT 1",
                    [&key.0[..]],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// Applies verified directory entries (all of one answer) to the contacts, each judged by
    /// [`directory::judge`] against the pins and what was seen: new names are recorded as
    /// directory contacts (usable), a changed key is kept as offered (not used), a conflict
    /// with a pin records nothing. One transaction.
    pub fn apply_directory(&self, entries: &[Entry]) -> Result<Vec<Applied>, ContactsError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let current = read_contact(&tx, &entry.name)?;
                let id = entry.key.id();
                let pinned_name_for_key: Option<String> = tx
                    .query_row(
                        "SELECT name FROM client_contacts WHERE key_id = ?1 AND source = 'pinned' \
                         LIMIT 1",
                        [&id.0[..]],
                        |r| r.get(0),
                    )
                    .optional()?;
                let current_id = current.as_ref().map(|c| c.key.id());
                let pinned_for_name = current
                    .as_ref()
                    .filter(|c| c.source == Source::Pinned)
                    .and(current_id.as_ref());
                let seen_for_name = current
                    .as_ref()
                    .filter(|c| c.source == Source::Directory)
                    .and(current_id.as_ref());
                let known = Known {
                    pinned_for_name,
                    pinned_name_for_key: pinned_name_for_key.as_deref(),
                    seen_for_name,
                };
                let name = entry.name.clone();
                let serial = to_i64(entry.serial);
                out.push(match directory::judge(entry, known) {
                    Verdict::Pinned => Applied::Pinned { name },
                    Verdict::Seen => {
                        // Seen again unchanged: a change offered earlier is withdrawn.
                        tx.execute(
                            "UPDATE client_contacts SET serial = ?2, state = 'usable', \
                             offered_key_id = NULL, offered_spki = NULL, offered_since = NULL \
                             WHERE name = ?1",
                            params![name, serial],
                        )?;
                        Applied::Seen { name }
                    }
                    Verdict::New => {
                        tx.execute(
                            "INSERT INTO client_contacts (name, key_id, spki, source, since, \
                             state, serial) VALUES (?1, ?2, ?3, 'directory', ?4, 'usable', ?5)",
                            params![
                                name,
                                &id.0[..],
                                entry.key.spki_der(),
                                to_i64(entry.since),
                                serial
                            ],
                        )?;
                        Applied::New { name, key: id }
                    }
                    Verdict::Changed { before, now } => {
                        tx.execute(
                            "UPDATE client_contacts SET state = 'changed', offered_key_id = ?2, \
                             offered_spki = ?3, offered_since = ?4, serial = ?5 WHERE name = ?1",
                            params![
                                name,
                                &now.0[..],
                                entry.key.spki_der(),
                                to_i64(entry.since),
                                serial
                            ],
                        )?;
                        Applied::Changed { name, before, now }
                    }
                    Verdict::ConflictsWithPin { detail } => {
                        Applied::ConflictsWithPin { name, detail }
                    }
                    Verdict::Reserved => Applied::Reserved { name },
                });
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Accepts the changed key offered for `name`, which must be `shown`, the key the user
    /// checked: it becomes the key used. A directory read in between may have replaced the
    /// offer, and a server that races the user's check must not get its newer key accepted
    /// unseen ([`ContactsError::OfferChanged`]).
    pub fn accept(&self, name: &str, shown: &KeyId) -> Result<(), ContactsError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let contact = read_contact(&tx, name)?
                .ok_or_else(|| ContactsError::NoSuchName(name.to_owned()))?;
            let offered = contact
                .offered
                .clone()
                .ok_or_else(|| ContactsError::NothingToAccept(name.to_owned()))?;
            let id = offered.key.id();
            if id != *shown {
                return Err(ContactsError::OfferChanged {
                    name: name.to_owned(),
                    shown: *shown,
                    offered: id,
                });
            }
            keep_earlier(&tx, &contact, crate::envelope::unix_now())?;
            tx.execute(
                "UPDATE client_contacts SET key_id = ?2, spki = ?3, since = ?4, state = 'usable', \
                 offered_key_id = NULL, offered_spki = NULL, offered_since = NULL \
                 WHERE name = ?1",
                params![
                    name,
                    &id.0[..],
                    offered.key.spki_der(),
                    to_i64(offered.since)
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records a message about to be relayed (before it is sent: its ack tag must outlive a
    /// crash after the server's `Stored`). Recording the same id again replaces the row
    /// (a resend of the same bytes carries the same tag).
    pub fn record_sent(&self, m: &SentMessage) -> Result<(), ContactsError> {
        self.with(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO client_sent (message_id, recipient_name, \
                 recipient_key_id, ack_tag, mode, bytes, sent, stored, delivered, verified) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL)",
                params![
                    &m.id.0[..],
                    m.recipient_name,
                    &m.recipient.0[..],
                    &m.ack_tag[..],
                    m.mode,
                    to_i64(m.bytes),
                    to_i64(m.sent),
                    m.stored.map(to_i64),
                ],
            )?;
            Ok(())
        })
    }

    /// Forgets a recorded message the server refused outright (an `Error` answer other than
    /// `Unavailable`: it was not stored, so no receipt can ever come).
    pub fn forget_sent(&self, id: &MessageId) -> Result<(), ContactsError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM client_sent WHERE message_id = ?1 AND stored IS NULL",
                [&id.0[..]],
            )?;
            Ok(())
        })
    }

    /// Notes the server's `Stored` for a sent message.
    pub fn mark_stored(&self, id: &MessageId, now: u64) -> Result<(), ContactsError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE client_sent SET stored = ?2 WHERE message_id = ?1",
                params![&id.0[..], to_i64(now)],
            )?;
            Ok(())
        })
    }

    /// Every relayed message, oldest first.
    pub fn sent(&self) -> Result<Vec<SentMessage>, ContactsError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT message_id, recipient_name, recipient_key_id, ack_tag, mode, bytes, sent, \
                 stored, delivered FROM client_sent ORDER BY sent, message_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, u8>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, recipient_name, recipient, tag, mode, bytes, sent, stored, delivered) =
                    row?;
                out.push(SentMessage {
                    id: MessageId(fixed(&id, "message id")?),
                    recipient_name,
                    recipient: KeyId(fixed(&recipient, "recipient key id")?),
                    ack_tag: fixed(&tag, "ack tag")?,
                    mode,
                    bytes: to_u64(bytes),
                    sent: to_u64(sent),
                    stored: stored.map(to_u64),
                    delivered: delivered.map(to_u64),
                });
            }
            Ok(out)
        })
    }

    /// Checks receipts the server returned against the ack tags kept at sealing, in constant
    /// time, and records the ones that check out. A mismatch is reported, never recorded.
    pub fn check_receipts(
        &self,
        receipts: &[ReceiptInfo],
        now: u64,
    ) -> Result<Vec<ReceiptCheck>, ContactsError> {
        let sent = self.sent()?;
        let mut out = Vec::with_capacity(receipts.len());
        self.with(|conn| {
            let tx = conn.transaction()?;
            for r in receipts {
                let Some(m) = sent.iter().find(|m| m.id == r.id) else {
                    out.push(ReceiptCheck::Unknown { id: r.id });
                    continue;
                };
                // The tag first, whatever else: both comparisons always run.
                let tag_ok = ack_tags_match(&r.tag, &m.ack_tag);
                let recipient_ok = r.recipient == m.recipient;
                if !tag_ok {
                    out.push(ReceiptCheck::Forged {
                        id: r.id,
                        why: "its tag is not the one only the recipient can compute",
                    });
                    continue;
                }
                if !recipient_ok {
                    out.push(ReceiptCheck::Forged {
                        id: r.id,
                        why: "it names another recipient than the message was sealed for",
                    });
                    continue;
                }
                tx.execute(
                    "UPDATE client_sent SET delivered = ?2, verified = ?3 WHERE message_id = ?1",
                    params![&r.id.0[..], to_i64(r.delivered), to_i64(now)],
                )?;
                out.push(ReceiptCheck::Read {
                    id: r.id,
                    recipient_name: m.recipient_name.clone(),
                    delivered: r.delivered,
                });
            }
            tx.commit()?;
            Ok(out)
        })
    }
}

/// Fetching asks the contacts for the key of each message from another client.
impl super::Senders for Contacts {
    fn lookup(&self, key: &KeyId) -> Result<super::SenderLookup, super::ClientError> {
        match self.by_key(key) {
            Ok(Some(c)) => {
                return Ok(super::SenderLookup::Usable {
                    key: c.key,
                    name: c.name,
                    pinned: c.source == Source::Pinned,
                });
            }
            // Its messages are set aside (they stay on the server), the others still come.
            Err(ContactsError::ReservedStored { name }) => {
                return Ok(super::SenderLookup::Reserved { name });
            }
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(match self.offered_as_change(key)? {
            Some(name) => super::SenderLookup::Changed { name },
            None => super::SenderLookup::Unknown,
        })
    }

    fn lookup_after(
        &self,
        key: &KeyId,
        entries: &[Entry],
    ) -> Result<super::SenderLookup, super::ClientError> {
        let found = self.lookup(key)?;
        if !matches!(found, super::SenderLookup::Unknown) {
            return Ok(found);
        }
        // Unknown to the contacts: the directory may offer it for a name pinned with another
        // key (a conflict records nothing, so only the answer itself says so).
        // A reserved name in the directory is refused when learnt, never looked up.
        let listed = entries
            .iter()
            .filter(|e| e.key.id() == *key && !crate::keys::reserved_name(&e.name));
        for entry in listed {
            if let Some(c) = self.get(&entry.name)?
                && c.source == Source::Pinned
                && c.key.id() != *key
            {
                return Ok(super::SenderLookup::ConflictsWithPin {
                    name: c.name,
                    pinned: c.key.id(),
                });
            }
        }
        Ok(found)
    }

    fn any_from_directory(&self) -> Result<bool, super::ClientError> {
        let any = self.with(|conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM client_contacts WHERE source = 'directory')",
                [],
                |r| r.get::<_, bool>(0),
            )?)
        })?;
        Ok(any)
    }

    fn learn(&self, entries: &[Entry]) -> Result<Vec<String>, super::ClientError> {
        Ok(self
            .apply_directory(entries)?
            .iter()
            .filter_map(Applied::note)
            .collect())
    }
}

impl Applied {
    /// One line for the user about what this entry changed, if anything worth telling.
    pub fn note(&self) -> Option<String> {
        match self {
            Applied::Pinned { .. } | Applied::Seen { .. } => None,
            Applied::New { name, key } => Some(format!(
                "new contact from the server's directory: {name} ({key}), trusted on the server's \
                 word; compare its fingerprint with {name} out of band"
            )),
            Applied::Changed { name, before, now } => Some(format!(
                "WARNING: the server's directory now offers ANOTHER key for {name}: {now} \
                 (before: {before}). It is NOT used until you accept it; ask {name} whether the \
                 key really changed (compare fingerprints), then `letterlock client contacts \
                 --accept {name} --key {now}`"
            )),
            Applied::ConflictsWithPin { detail, .. } => Some(format!(
                "REFUSED: {detail}; the directory entry is ignored and your pinned key is kept"
            )),
            Applied::Reserved { name } => Some(format!(
                "REFUSED: the server's directory lists a client named {name:?}, a name that \
                 reads as the server itself; the entry is ignored"
            )),
        }
    }
}

const CONTACT_COLUMNS: &str =
    "name, key_id, spki, source, since, offered_key_id, offered_spki, offered_since, serial";

/// A row as read, before its key is parsed.
struct RawContact {
    name: String,
    key_id: Vec<u8>,
    spki: Vec<u8>,
    source: String,
    since: i64,
    offered_key_id: Option<Vec<u8>>,
    offered_spki: Option<Vec<u8>>,
    offered_since: Option<i64>,
    serial: Option<i64>,
}

fn raw_contact(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawContact> {
    Ok(RawContact {
        name: r.get(0)?,
        key_id: r.get(1)?,
        spki: r.get(2)?,
        source: r.get(3)?,
        since: r.get(4)?,
        offered_key_id: r.get(5)?,
        offered_spki: r.get(6)?,
        offered_since: r.get(7)?,
        serial: r.get(8)?,
    })
}

impl RawContact {
    /// The contact, its keys parsed and checked against the stored key ids.
    fn parse(self) -> Result<Contact, ContactsError> {
        let key = parse_key(&self.spki, &self.key_id)?;
        let source = parse_source(&self.source)?;
        let offered = match (self.offered_spki, self.offered_key_id) {
            (Some(spki), Some(id)) => Some(Offered {
                key: parse_key(&spki, &id)?,
                since: self.offered_since.map(to_u64).unwrap_or(0),
            }),
            (None, None) => None,
            _ => return Err(ContactsError::Corrupt("offered key")),
        };
        Ok(Contact {
            name: self.name,
            key,
            source,
            since: to_u64(self.since),
            offered,
            serial: self.serial.map(to_u64),
        })
    }
}

fn parse_source(source: &str) -> Result<Source, ContactsError> {
    match source {
        "pinned" => Ok(Source::Pinned),
        "directory" => Ok(Source::Directory),
        _ => Err(ContactsError::Corrupt("contact source")),
    }
}

/// Keeps the key `old` is being replaced by another (for reading messages already kept).
fn keep_earlier(conn: &Connection, old: &Contact, now: u64) -> Result<(), ContactsError> {
    conn.execute(
        "INSERT OR REPLACE INTO client_contacts_earlier (key_id, spki, name, source, replaced) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            &old.key.id().0[..],
            old.key.spki_der(),
            old.name,
            old.source.as_str(),
            to_i64(now)
        ],
    )?;
    Ok(())
}

/// `c`, unless its name is reserved (`server`, any case): a contact stored before that name
/// was refused stays in the database, to be listed and removed, but is never used, so no
/// message from its key shows as from the server and nothing is sealed to it as a contact.
fn usable(c: Contact) -> Result<Contact, ContactsError> {
    if crate::keys::reserved_name(&c.name) {
        return Err(ContactsError::ReservedStored { name: c.name });
    }
    Ok(c)
}

fn read_contact(conn: &Connection, name: &str) -> Result<Option<Contact>, ContactsError> {
    let raw = conn
        .query_row(
            &format!("SELECT {CONTACT_COLUMNS} FROM client_contacts WHERE name = ?1"),
            [name],
            raw_contact,
        )
        .optional()?;
    raw.map(RawContact::parse).transpose()
}

/// A stored key, refused unless it still has the stored key id.
fn parse_key(spki: &[u8], id: &[u8]) -> Result<PublicKey, ContactsError> {
    let key = PublicKey::from_der(spki).map_err(ContactsError::Key)?;
    if key.id().0[..] != *id {
        return Err(ContactsError::Corrupt("key id does not match the key"));
    }
    Ok(key)
}

fn fixed<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], ContactsError> {
    bytes.try_into().map_err(|_| ContactsError::Corrupt(what))
}

/// Unix seconds as SQLite stores them (an i64; times past 2^63 are clamped).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PublicKey {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/");
        crate::keys::load_public(Path::new(&format!("{path}{name}_public.pem"))).unwrap()
    }

    fn entry(name: &str, k: &PublicKey, serial: u64) -> Entry {
        Entry {
            serial,
            since: 1_800_000_000,
            name: name.to_owned(),
            key: k.clone(),
        }
    }

    fn open() -> (tempfile::TempDir, Contacts) {
        let dir = tempfile::tempdir().unwrap();
        let c = Contacts::open(&dir.path().join("letterlock-client.db")).unwrap();
        (dir, c)
    }

    #[test]
    fn pins_refuse_a_taken_name_without_replace_and_a_key_under_two_names() {
        let (_dir, c) = open();
        let (bob, mallory) = (key("bob2048"), key("mallory"));
        assert_eq!(c.pin("bob", &bob, false, 10).unwrap(), None);
        // Pinning the same key again is a no-op, not a change.
        assert_eq!(c.pin("bob", &bob, false, 11).unwrap(), None);
        assert!(matches!(
            c.pin("bob", &mallory, false, 12),
            Err(ContactsError::NameTaken { .. })
        ));
        assert_eq!(c.get("bob").unwrap().unwrap().key, bob);
        assert!(matches!(
            c.pin("robert", &bob, false, 12),
            Err(ContactsError::KeyPinnedElsewhere { .. })
        ));
        assert_eq!(c.pin("bob", &mallory, true, 13).unwrap(), Some(bob.id()));
        assert_eq!(c.by_key(&mallory.id()).unwrap().unwrap().name, "bob");
        assert!(c.by_key(&bob.id()).unwrap().is_none());
        assert!(matches!(
            c.pin("no/slash", &bob, false, 1),
            Err(ContactsError::BadName(_))
        ));
        c.remove("bob", false).unwrap();
        assert!(c.list().unwrap().is_empty());
        assert!(matches!(
            c.remove("bob", false),
            Err(ContactsError::NoSuchName(_))
        ));
    }

    #[test]
    fn the_directory_adds_new_names_keeps_changes_aside_and_never_overrides_a_pin() {
        let (_dir, c) = open();
        let (alice, bob, mallory) = (key("alice2048"), key("bob2048"), key("mallory"));
        c.pin("bob", &bob, false, 1).unwrap();
        let applied = c
            .apply_directory(&[entry("alice", &alice, 1), entry("bob", &bob, 1)])
            .unwrap();
        assert_eq!(
            applied,
            vec![
                Applied::New {
                    name: "alice".into(),
                    key: alice.id()
                },
                Applied::Pinned { name: "bob".into() },
            ]
        );
        let a = c.get("alice").unwrap().unwrap();
        assert_eq!(
            (a.source, a.serial, a.offered),
            (Source::Directory, Some(1), None)
        );
        // The server swaps both keys: alice's shows as a change, bob's pin is refused.
        let applied = c
            .apply_directory(&[entry("alice", &mallory, 2), entry("bob", &mallory, 2)])
            .unwrap();
        assert_eq!(
            applied[0],
            Applied::Changed {
                name: "alice".into(),
                before: alice.id(),
                now: mallory.id()
            }
        );
        assert!(matches!(applied[1], Applied::ConflictsWithPin { .. }));
        // Still alice's old key in use; mallory's only offered; bob still pinned.
        assert_eq!(c.by_key(&alice.id()).unwrap().unwrap().name, "alice");
        assert!(c.by_key(&mallory.id()).unwrap().is_none());
        assert_eq!(
            c.offered_as_change(&mallory.id()).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(c.get("bob").unwrap().unwrap().key, bob);
        // Accepting a key other than the one offered changes nothing.
        assert!(matches!(
            c.accept("alice", &bob.id()),
            Err(ContactsError::OfferChanged { ref shown, ref offered, .. })
                if *shown == bob.id() && *offered == mallory.id()
        ));
        assert_eq!(c.by_key(&alice.id()).unwrap().unwrap().name, "alice");
        // Accepting the offered key makes it the one used.
        c.accept("alice", &mallory.id()).unwrap();
        assert_eq!(c.by_key(&mallory.id()).unwrap().unwrap().name, "alice");
        assert!(matches!(
            c.accept("alice", &mallory.id()),
            Err(ContactsError::NothingToAccept(_))
        ));
        // Seen again unchanged.
        assert_eq!(
            c.apply_directory(&[entry("alice", &mallory, 3)]).unwrap(),
            vec![Applied::Seen {
                name: "alice".into()
            }]
        );
    }

    /// A directory entry under a name that reads as the server is refused and records nothing:
    /// the server no longer publishes one, but a server older than that rule, or a hostile
    /// one, may.
    #[test]
    fn a_directory_entry_named_as_the_server_is_refused_and_records_nothing() {
        let (_dir, c) = open();
        let mallory = key("mallory");
        for name in ["server", "SERVER"] {
            let applied = c.apply_directory(&[entry(name, &mallory, 1)]).unwrap();
            assert_eq!(applied, vec![Applied::Reserved { name: name.into() }]);
            let note = applied[0].note().unwrap();
            assert!(note.starts_with("REFUSED: the server's directory lists a client named"));
        }
        assert!(c.list().unwrap().is_empty());
        assert!(c.by_key(&mallory.id()).unwrap().is_none());
    }

    #[test]
    fn fetching_finds_a_sender_by_its_usable_key_only() {
        use crate::client::{SenderLookup, Senders};
        let (_dir, c) = open();
        let (alice, bob, mallory) = (key("alice2048"), key("bob2048"), key("mallory"));
        c.pin("bob", &bob, false, 1).unwrap();
        let notes = c.learn(&[entry("alice", &alice, 1)]).unwrap();
        assert!(notes[0].contains("new contact"), "{notes:?}");
        assert!(matches!(
            c.lookup(&bob.id()).unwrap(),
            SenderLookup::Usable { ref name, pinned: true, .. } if name == "bob"
        ));
        assert!(matches!(
            c.lookup(&alice.id()).unwrap(),
            SenderLookup::Usable { ref name, pinned: false, .. } if name == "alice"
        ));
        // Mallory's key offered as alice's: a change, not a sender; once accepted, alice.
        let notes = c.learn(&[entry("alice", &mallory, 2)]).unwrap();
        assert!(notes[0].starts_with("WARNING"), "{notes:?}");
        assert!(matches!(
            c.lookup(&mallory.id()).unwrap(),
            SenderLookup::Changed { ref name } if name == "alice"
        ));
        assert!(matches!(
            c.lookup(&KeyId([9; 32])).unwrap(),
            SenderLookup::Unknown
        ));
        c.accept("alice", &mallory.id()).unwrap();
        assert!(matches!(
            c.lookup(&mallory.id()).unwrap(),
            SenderLookup::Usable { ref name, .. } if name == "alice"
        ));
        // Alice's earlier key is kept for reading old messages only: not a sender.
        assert!(matches!(
            c.lookup(&alice.id()).unwrap(),
            SenderLookup::Unknown
        ));
        let earlier = c.earlier_key(&alice.id()).unwrap().unwrap();
        assert_eq!((earlier.key, earlier.name.as_str()), (alice, "alice"));
        assert!(c.earlier_key(&mallory.id()).unwrap().is_none());
    }

    #[test]
    fn a_key_the_directory_offers_for_a_pinned_name_is_a_conflict_not_unknown() {
        use crate::client::{SenderLookup, Senders};
        let (_dir, c) = open();
        let (bob, mallory) = (key("bob2048"), key("mallory"));
        c.pin("bob", &bob, false, 1).unwrap();
        let swapped = [entry("bob", &mallory, 2)];
        c.learn(&swapped).unwrap();
        assert!(matches!(
            c.lookup_after(&mallory.id(), &swapped).unwrap(),
            SenderLookup::ConflictsWithPin { ref name, pinned } if name == "bob" && pinned == bob.id()
        ));
        // Without that directory answer, only unknown; bob's own key is still bob.
        assert!(matches!(
            c.lookup_after(&mallory.id(), &[]).unwrap(),
            SenderLookup::Unknown
        ));
        assert!(matches!(
            c.lookup_after(&bob.id(), &swapped).unwrap(),
            SenderLookup::Usable { ref name, .. } if name == "bob"
        ));
    }

    #[test]
    fn a_pinned_key_offered_under_another_name_is_a_conflict_and_records_nothing() {
        let (_dir, c) = open();
        let bob = key("bob2048");
        c.pin("bob", &bob, false, 1).unwrap();
        let applied = c.apply_directory(&[entry("carol", &bob, 1)]).unwrap();
        assert!(matches!(applied[0], Applied::ConflictsWithPin { .. }));
        assert!(c.get("carol").unwrap().is_none());
    }

    #[test]
    fn receipts_count_as_read_only_when_the_tag_matches_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("letterlock-client.db");
        let c = Contacts::open(&path).unwrap();
        let bob = key("bob2048");
        let mk = |n: u8| SentMessage {
            id: MessageId([n; 16]),
            recipient_name: "bob".into(),
            recipient: bob.id(),
            ack_tag: [n; 32],
            mode: 2,
            bytes: 5,
            sent: 100 + u64::from(n),
            stored: None,
            delivered: None,
        };
        c.record_sent(&mk(1)).unwrap();
        c.record_sent(&mk(2)).unwrap();
        c.mark_stored(&MessageId([1; 16]), 105).unwrap();
        drop(c);
        let c = Contacts::open(&path).unwrap();
        let receipt = |n: u8, tag: u8, recipient: KeyId| ReceiptInfo {
            id: MessageId([n; 16]),
            recipient,
            tag: [tag; 32],
            delivered: 200,
        };
        let checks = c
            .check_receipts(
                &[
                    receipt(1, 1, bob.id()),
                    receipt(2, 9, bob.id()),
                    receipt(3, 3, bob.id()),
                ],
                300,
            )
            .unwrap();
        assert_eq!(
            checks[0],
            ReceiptCheck::Read {
                id: MessageId([1; 16]),
                recipient_name: "bob".into(),
                delivered: 200
            }
        );
        assert!(matches!(checks[1], ReceiptCheck::Forged { .. }));
        assert!(matches!(checks[2], ReceiptCheck::Unknown { .. }));
        // Message 1's own tag replayed as message 2's receipt is still a forgery.
        let checks = c.check_receipts(&[receipt(2, 1, bob.id())], 301).unwrap();
        assert!(matches!(checks[0], ReceiptCheck::Forged { .. }));
        // The right tag naming another recipient is refused too.
        let checks = c
            .check_receipts(&[receipt(2, 2, KeyId([7; 32]))], 302)
            .unwrap();
        assert!(matches!(checks[0], ReceiptCheck::Forged { .. }));
        let sent = c.sent().unwrap();
        assert_eq!(sent[0].stored, Some(105));
        assert_eq!(sent[0].delivered, Some(200));
        assert_eq!(sent[1].delivered, None);
    }
}
