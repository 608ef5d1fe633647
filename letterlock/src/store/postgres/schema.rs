//! The PostgreSQL store's schema and its migrations (docs/STORE.md describes every table).
//!
//! `letterlock_schema` records each applied migration. Migrating runs in one transaction under
//! a transaction-scoped advisory lock, so servers starting together over a new database apply
//! each migration once; a database migrated by a newer letterlock (a version this one does not
//! know) is refused rather than misread.

use tracing::info;

use super::{StoreError, db};

/// The newest schema version this letterlock writes and reads.
pub const SCHEMA_VERSION: i64 = 5;

/// Key of the advisory lock that serialises migrations (any fixed number; "letterlk" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c65_7474_6572_6c6b;

/// The version table, created before anything else.
const VERSION_TABLE: &str = "
CREATE TABLE IF NOT EXISTS letterlock_schema (
    version integer     PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
)";

/// Migration `n + 1` is `MIGRATIONS[n]`; each runs once, in order, in the migrating
/// transaction.
const MIGRATIONS: &[&str] = &[
    // 1: the mailbox's identity, inbox, outbox, and chunked bodies.
    "
-- One row: a random id telling this database from any other (a staged body may only be named
-- by a store on the database it was staged in).
CREATE TABLE mailbox (
    id      uuid        NOT NULL DEFAULT gen_random_uuid(),
    created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO mailbox DEFAULT VALUES;

CREATE TABLE body (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    size    bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
    chunks  integer     NOT NULL DEFAULT 0 CHECK (chunks >= 0),
    sha256  bytea       CHECK (sha256 IS NULL OR length(sha256) = 32),
    staged  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE body_chunk (
    body  bigint  NOT NULL REFERENCES body (id) ON DELETE CASCADE,
    seq   integer NOT NULL CHECK (seq >= 0),
    bytes bytea   NOT NULL,
    PRIMARY KEY (body, seq)
);
-- Ciphertext does not compress: store chunks out of line without trying.
ALTER TABLE body_chunk ALTER COLUMN bytes SET STORAGE EXTERNAL;

CREATE TABLE inbox (
    seq           bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_key_id bytea    NOT NULL CHECK (length(sender_key_id) = 32),
    message_id    bytea    NOT NULL CHECK (length(message_id) = 16),
    sender_name   text     NOT NULL,
    created       bigint   NOT NULL CHECK (created >= 0),
    received      bigint   NOT NULL CHECK (received >= 0),
    mode          smallint NOT NULL CHECK (mode BETWEEN 0 AND 255),
    plaintext_len bigint   NOT NULL CHECK (plaintext_len >= 0),
    content_hash  bytea    NOT NULL CHECK (length(content_hash) = 32),
    ack_tag       bytea    NOT NULL CHECK (length(ack_tag) = 32),
    body_size     bigint   NOT NULL CHECK (body_size >= 0),
    body_inline   bytea,
    body_id       bigint   UNIQUE REFERENCES body (id),
    CHECK ((body_inline IS NULL) <> (body_id IS NULL)),
    UNIQUE (sender_key_id, message_id)
);
CREATE INDEX inbox_by_message_id ON inbox (message_id);
CREATE INDEX inbox_by_received ON inbox (received, created, seq);

CREATE TABLE outbox (
    seq              bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_key_id bytea    NOT NULL CHECK (length(recipient_key_id) = 32),
    message_id       bytea    NOT NULL CHECK (length(message_id) = 16),
    recipient_name   text     NOT NULL,
    created          bigint   NOT NULL CHECK (created >= 0),
    mode             smallint NOT NULL CHECK (mode BETWEEN 0 AND 255),
    plaintext_len    bigint   NOT NULL CHECK (plaintext_len >= 0),
    ack_tag          bytea    NOT NULL CHECK (length(ack_tag) = 32),
    body_size        bigint   NOT NULL CHECK (body_size >= 0),
    body_inline      bytea,
    body_id          bigint   UNIQUE REFERENCES body (id),
    CHECK ((body_inline IS NULL) <> (body_id IS NULL)),
    UNIQUE (recipient_key_id, message_id)
);
CREATE INDEX outbox_by_recipient ON outbox (recipient_key_id, seq);
",
    // 2: delivery leases: a fetch holds the entries it delivers until leased_until, so two
    // servers never deliver one entry at once, and a dead server's entries come free again.
    "
ALTER TABLE outbox ADD COLUMN leased_until timestamptz;
",
    // 3: the trusted clients, shared by every server on the database. `client_keys` keeps
    // every key ever trusted, never deleted (a replaced or removed key still opens the inbox
    // messages it signed); at most one trusted key per name. `trust_generation` is a one-row
    // counter bumped in the transaction of every trust change, which a server reads before
    // each handshake: a change made through any server or command is seen by all of them at
    // their next handshake.
    "
CREATE TABLE client_keys (
    seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    key_id     bytea  PRIMARY KEY CHECK (length(key_id) = 32),
    public_key bytea  NOT NULL,
    name       text   NOT NULL,
    since      bigint NOT NULL CHECK (since >= 0),
    ended      bigint CHECK (ended >= 0),
    ended_how  text   CHECK (ended_how IN ('replaced', 'removed')),
    CHECK ((ended IS NULL) = (ended_how IS NULL))
);
CREATE UNIQUE INDEX client_keys_trusted_name ON client_keys (name) WHERE ended IS NULL;
CREATE TABLE trust_generation (
    id         integer PRIMARY KEY CHECK (id = 1),
    generation bigint  NOT NULL CHECK (generation >= 0)
);
INSERT INTO trust_generation (id, generation) VALUES (1, 0);
CREATE INDEX inbox_by_sender ON inbox (sender_key_id);
",
    // 4: messages relayed from client to client, and their receipts. A relayed outbox entry
    // names its sender (both sender columns NULL for an entry the server sealed), when it
    // arrived and its content hash (the message's SealedIdentity, which tells a retry from
    // another message under the same id); its `ack_tag` column holds the sender's receipt
    // commitment, SHA-256("letterlock v1 receipt" || ack tag), and `plaintext_len` is 0 (the
    // server cannot know it). Relayed ids are unique per sender. `receipts` keeps, per
    // (sender, id), the recipient's ack tag once it matched the commitment, and the content
    // hash, so a repeat of a delivered message is still recognised.
    "
ALTER TABLE outbox
    ADD COLUMN sender_key_id bytea CHECK (sender_key_id IS NULL OR length(sender_key_id) = 32),
    ADD COLUMN sender_name   text,
    ADD COLUMN received      bigint CHECK (received >= 0),
    ADD COLUMN content_hash  bytea CHECK (content_hash IS NULL OR length(content_hash) = 32),
    ADD CHECK ((sender_key_id IS NULL) = (sender_name IS NULL)),
    ADD CHECK ((sender_key_id IS NULL) = (content_hash IS NULL));
CREATE UNIQUE INDEX outbox_relayed ON outbox (sender_key_id, message_id)
    WHERE sender_key_id IS NOT NULL;
CREATE TABLE receipts (
    sender_key_id    bytea  NOT NULL CHECK (length(sender_key_id) = 32),
    message_id       bytea  NOT NULL CHECK (length(message_id) = 16),
    recipient_key_id bytea  NOT NULL CHECK (length(recipient_key_id) = 32),
    recipient_name   text   NOT NULL,
    content_hash     bytea  NOT NULL CHECK (length(content_hash) = 32),
    ack_tag          bytea  NOT NULL CHECK (length(ack_tag) = 32),
    delivered        bigint NOT NULL CHECK (delivered >= 0),
    PRIMARY KEY (sender_key_id, message_id)
);
CREATE INDEX receipts_by_delivered ON receipts (delivered);
",
    // 5: an index of each recipient's waiting relayed entries, so counting them against the
    // server's bound (before every relay) is an index-only scan.
    "
CREATE INDEX outbox_relayed_by_recipient ON outbox (recipient_key_id)
    WHERE sender_key_id IS NOT NULL;
",
];

/// Brings the schema up to [`SCHEMA_VERSION`]; returns the version found before.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    target: &str,
) -> Result<i64, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the schema migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("locking the schema for migration"))?;
    tx.batch_execute(VERSION_TABLE)
        .await
        .map_err(db("creating the schema version table"))?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0)::bigint FROM letterlock_schema",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db("reading the schema version"))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaVersion {
            path: target.into(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1i64..).zip(MIGRATIONS) {
        if version <= found {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(db("applying a schema migration"))?;
        let version32 = i32::try_from(version).map_err(|_| StoreError::OutOfRange {
            field: "schema version",
            value: version.unsigned_abs(),
        })?;
        tx.execute(
            "INSERT INTO letterlock_schema (version) VALUES ($1)",
            &[&version32],
        )
        .await
        .map_err(db("recording a schema migration"))?;
        info!(version, target, "applied a mailbox schema migration");
    }
    tx.commit()
        .await
        .map_err(db("committing the schema migration"))?;
    Ok(found)
}
