//! One store conformance suite, run against both backends.
//!
//! Every function in [`conformance!`]'s list takes any [`Store`] and is run twice: in module
//! `sqlite` on a fresh `SqliteStore` in a temporary folder, and in module `postgres` on a
//! fresh `PostgresStore` over a fresh database of the test PostgreSQL (tests/common/postgres.rs:
//! a throwaway cluster, or the server `LETTERLOCK_TEST_POSTGRES` names). What only one backend
//! has (body files, several servers over one database, schema versions) is tested below the
//! suite.

use crate::common;

use common::records::{id, outbox_record, stage};

use std::io::{Read, Write};

use letterlock::store::postgres::{CHUNK_SIZE, PostgresStore, SCHEMA_VERSION};
use letterlock::store::{
    Body, ClientKey, Completion, INLINE_MAX, InboxRecord, InsertOutcome, KeyEnd, KnownMessage,
    MODE_HYBRID, OutboxRecord, Receipt, RelayOutcome, RelayRecord, SqliteStore, Store, StoreError,
    TrustOutcome, TrustRequest, TrustedClients,
};
use letterlock::wire::receipt_commitment;

/// A body over the inline limit and over three database chunks with a partial last one, so
/// it spills into a file (SQLite) or into four chunks (PostgreSQL).
const LARGE_LEN: usize = 3 * CHUNK_SIZE + INLINE_MAX + 123;

fn inbox_record(sender: u8, id: [u8; 16], body: Body) -> InboxRecord {
    InboxRecord {
        sender_key_id: [sender; 32],
        sender_name: format!("sender-{sender}"),
        message_id: id,
        created: 1_700_000_000,
        received: 1_700_000_100 + u64::from(id[0]),
        mode: MODE_HYBRID,
        plaintext_len: body.len().saturating_sub(100),
        content_hash: body.sha256().expect("a store writer hashes"),
        ack_tag: [id[0] ^ 0xA5; 32],
        body,
    }
}

/// Reads a body to its end (on the blocking pool: a database body is streamed by a thread).
async fn read_all(reader: Box<dyn Read + Send>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("read body");
        out
    })
    .await
    .expect("the read task")
}

// ---------------------------------------------------------------------------------------------
// The suite

/// A new message is stored; the same bytes again are a duplicate answered with the first ack
/// tag (not the retry's); other bytes under the same (sender, id) are a conflict; another
/// sender may use the same id.
async fn insert_duplicate_and_conflict(store: &impl Store) {
    let first = inbox_record(1, id(1), Body::from_bytes(b"sealed one".to_vec()));
    assert_eq!(
        store.insert_inbox(first).await.unwrap(),
        InsertOutcome::Inserted
    );
    let mut retry = inbox_record(1, id(1), Body::from_bytes(b"sealed one".to_vec()));
    retry.ack_tag = [0xEE; 32];
    assert_eq!(
        store.insert_inbox(retry).await.unwrap(),
        InsertOutcome::Duplicate {
            ack_tag: [1 ^ 0xA5; 32]
        }
    );
    let clash = inbox_record(1, id(1), Body::from_bytes(b"other bytes".to_vec()));
    assert_eq!(
        store.insert_inbox(clash).await.unwrap(),
        InsertOutcome::Conflict
    );
    let other_sender = inbox_record(2, id(1), Body::from_bytes(b"other bytes".to_vec()));
    assert_eq!(
        store.insert_inbox(other_sender).await.unwrap(),
        InsertOutcome::Inserted
    );
    let listed = store.list_inbox().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].sender_key_id, [1; 32]);
    assert_eq!(listed[0].body_size, b"sealed one".len() as u64);
    assert!(store.integrity_check().await.unwrap());
}

/// A stored message is known by (sender, id) with its hash and tag; nothing else is.
async fn known_inbox_by_sender_and_id(store: &impl Store) {
    assert_eq!(store.known_inbox(&[3; 32], &id(7)).await.unwrap(), None);
    let record = inbox_record(3, id(7), Body::from_bytes(b"known".to_vec()));
    let hash = record.content_hash;
    store.insert_inbox(record).await.unwrap();
    assert_eq!(
        store.known_inbox(&[3; 32], &id(7)).await.unwrap(),
        Some(KnownMessage {
            content_hash: hash,
            ack_tag: [7 ^ 0xA5; 32]
        })
    );
    assert_eq!(store.known_inbox(&[4; 32], &id(7)).await.unwrap(), None);
    assert_eq!(store.known_inbox(&[3; 32], &id(8)).await.unwrap(), None);
}

/// The listing is in receive order with every summary field; a unique hex prefix (any case)
/// finds one message with its body; a shared prefix is ambiguous, an unknown one not found,
/// a non-hex one refused.
async fn list_and_find_by_prefix(store: &impl Store) {
    for (n, text) in [(0xab, "third"), (0x12, "first"), (0x13, "second")] {
        let record = inbox_record(5, id(n), Body::from_bytes(text.as_bytes().to_vec()));
        store.insert_inbox(record).await.unwrap();
    }
    let listed = store.list_inbox().await.unwrap();
    let ids: Vec<u8> = listed.iter().map(|m| m.message_id[0]).collect();
    assert_eq!(ids, [0x12, 0x13, 0xab], "oldest received first");
    let first = &listed[0];
    assert_eq!(first.sender_name, "sender-5");
    assert_eq!(first.created, 1_700_000_000);
    assert_eq!(first.received, 1_700_000_100 + 0x12);
    assert_eq!(first.mode, MODE_HYBRID);
    assert_eq!(first.content_hash, common::sha256(b"first"));

    let found = store.find_inbox("13").await.unwrap();
    assert_eq!(found.summary.message_id, id(0x13));
    assert_eq!(read_all(found.body).await, b"second");
    let found = store.find_inbox("AB11").await.unwrap();
    assert_eq!(read_all(found.body).await, b"third");
    assert!(matches!(
        store.find_inbox("1").await,
        Err(StoreError::Ambiguous { .. })
    ));
    assert!(matches!(
        store.find_inbox("ff").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.find_inbox("zz").await,
        Err(StoreError::BadIdPrefix { .. })
    ));
    assert!(matches!(
        store.find_inbox(&"1".repeat(33)).await,
        Err(StoreError::BadIdPrefix { .. })
    ));
}

/// The outbox: pending per recipient in queue order, bodies open, a wrong tag keeps the
/// entry, the right one removes it once, a second enqueue of the same id is refused.
async fn outbox_lifecycle(store: &impl Store) {
    let tag = |n: u8| [n; 32];
    for (recipient, n) in [(1, 0x30), (2, 0x31), (1, 0x32)] {
        let body = Body::from_bytes(format!("for {recipient} #{n}").into_bytes());
        store
            .enqueue_outbox(outbox_record(recipient, id(n), body, tag(n)))
            .await
            .unwrap();
    }
    let again = outbox_record(1, id(0x30), Body::from_bytes(b"again".to_vec()), tag(1));
    assert!(matches!(
        store.enqueue_outbox(again).await,
        Err(StoreError::OutboxDuplicate { .. })
    ));
    let pending = store.pending_outbox(&[1; 32]).await.unwrap();
    let ids: Vec<u8> = pending.iter().map(|e| e.message_id[0]).collect();
    assert_eq!(ids, [0x30, 0x32], "queue order, this recipient only");
    // A first fetch gets them all, in the same order (leased, where servers share the store).
    let leased = store
        .lease_outbox(&[1; 32], letterlock::store::DELIVERY_LEASE)
        .await
        .unwrap();
    assert_eq!(leased, pending);
    assert_eq!(pending[0].recipient_name, "client-1");
    assert_eq!(pending[0].body_size, "for 1 #48".len() as u64);
    let body = store.open_outbox_body(&[1; 32], &id(0x32)).await.unwrap();
    assert_eq!(read_all(body).await, b"for 1 #50");
    assert!(matches!(
        store.open_outbox_body(&[2; 32], &id(0x30)).await,
        Err(StoreError::OutboxNotFound { .. })
    ));

    let mut wrong = tag(0x30);
    wrong[31] ^= 1;
    assert_eq!(
        store
            .complete_outbox(&[1; 32], &id(0x30), &wrong)
            .await
            .unwrap(),
        Completion::BadTag
    );
    assert_eq!(
        store
            .complete_outbox(&[2; 32], &id(0x30), &tag(0x30))
            .await
            .unwrap(),
        Completion::NotPending,
        "another recipient's ack completes nothing"
    );
    assert_eq!(store.pending_outbox(&[1; 32]).await.unwrap().len(), 2);
    assert_eq!(
        store
            .complete_outbox(&[1; 32], &id(0x30), &tag(0x30))
            .await
            .unwrap(),
        Completion::Completed { receipt: false }
    );
    assert_eq!(
        store
            .complete_outbox(&[1; 32], &id(0x30), &tag(0x30))
            .await
            .unwrap(),
        Completion::NotPending
    );
    let ids: Vec<u8> = store
        .pending_outbox(&[1; 32])
        .await
        .unwrap()
        .iter()
        .map(|e| e.message_id[0])
        .collect();
    assert_eq!(ids, [0x32]);
    assert_eq!(store.pending_outbox(&[2; 32]).await.unwrap().len(), 1);
    assert!(store.integrity_check().await.unwrap());

    // An operator's removal takes one entry of one recipient, undelivered, and its body; the
    // same id queued for another recipient stays. The fetch above leased it (where servers
    // share the store): the fetch ends first.
    store
        .enqueue_outbox(outbox_record(
            2,
            id(0x32),
            Body::from_bytes(b"for 2, same id".to_vec()),
            tag(0x33),
        ))
        .await
        .unwrap();
    store.release_outbox(&[1; 32], &[id(0x32)]).await.unwrap();
    assert!(store.remove_outbox(&[1; 32], &id(0x32)).await.unwrap());
    assert!(!store.remove_outbox(&[1; 32], &id(0x32)).await.unwrap());
    assert!(store.pending_outbox(&[1; 32]).await.unwrap().is_empty());
    assert!(matches!(
        store.open_outbox_body(&[1; 32], &id(0x32)).await,
        Err(StoreError::OutboxNotFound { .. })
    ));
    assert_eq!(
        store
            .complete_outbox(&[1; 32], &id(0x32), &tag(0x32))
            .await
            .unwrap(),
        Completion::NotPending,
        "a removed entry cannot be acked"
    );
    let ids: Vec<u8> = store
        .pending_outbox(&[2; 32])
        .await
        .unwrap()
        .iter()
        .map(|e| e.message_id[0])
        .collect();
    assert_eq!(ids, [0x31, 0x32], "the other recipient's entries stay");
    let body = store.open_outbox_body(&[2; 32], &id(0x32)).await.unwrap();
    assert_eq!(read_all(body).await, b"for 2, same id");
    assert!(store.integrity_check().await.unwrap());
}

/// A large body streams in and out byte for byte (a file or database chunks), in the inbox
/// and the outbox, and a delivered one goes with its entry.
async fn large_body_round_trip(store: &impl Store) {
    let data = common::data(LARGE_LEN);
    let body = stage(store, &data);
    assert_eq!(body.len(), LARGE_LEN as u64);
    assert_eq!(body.sha256(), Some(common::sha256(&data)));
    assert_eq!(
        store
            .insert_inbox(inbox_record(9, id(0x40), body))
            .await
            .unwrap(),
        InsertOutcome::Inserted
    );
    let found = store.find_inbox("40").await.unwrap();
    assert_eq!(found.summary.body_size, LARGE_LEN as u64);
    let read = read_all(found.body).await;
    assert_eq!(read.len(), data.len());
    assert!(read == data, "the large inbox body came back changed");

    let body = stage(store, &data[..LARGE_LEN - 1000]);
    store
        .enqueue_outbox(outbox_record(9, id(0x41), body, [0x41; 32]))
        .await
        .unwrap();
    let out = read_all(store.open_outbox_body(&[9; 32], &id(0x41)).await.unwrap()).await;
    assert!(
        out == data[..LARGE_LEN - 1000],
        "the large outbox body came back changed"
    );
    assert!(store.integrity_check().await.unwrap());
    assert_eq!(
        store
            .complete_outbox(&[9; 32], &id(0x41), &[0x41; 32])
            .await
            .unwrap(),
        Completion::Completed { receipt: false }
    );
    assert!(store.pending_outbox(&[9; 32]).await.unwrap().is_empty());
    assert!(store.integrity_check().await.unwrap());
}

/// Bodies at and around the inline limit, and the empty body, keep their exact bytes.
async fn bodies_at_the_inline_limit(store: &impl Store) {
    for (n, len) in [(0x50, 0), (0x51, INLINE_MAX), (0x52, INLINE_MAX + 1)] {
        let data = common::data(len);
        let body = stage(store, &data);
        store
            .insert_inbox(inbox_record(6, id(n), body))
            .await
            .unwrap();
        let found = store.find_inbox(&hex_id(n)).await.unwrap();
        assert_eq!(found.summary.body_size, len as u64);
        assert!(
            read_all(found.body).await == data,
            "body of {len} bytes changed"
        );
    }
    assert!(store.integrity_check().await.unwrap());
}

fn hex_id(n: u8) -> String {
    id(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// Many concurrent writers through one handle: every insert lands once, every answer is
/// right.
async fn concurrent_inserts(store: &(impl Store + Clone)) {
    let mut tasks = Vec::new();
    for n in 0..48u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Two writers per id: one insert, one duplicate.
            let body = Body::from_bytes(vec![n; 100]);
            store.insert_inbox(inbox_record(7, id(n / 2), body)).await
        }));
    }
    let mut inserted = 0;
    let mut duplicates = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            InsertOutcome::Inserted => inserted += 1,
            InsertOutcome::Duplicate { .. } => duplicates += 1,
            InsertOutcome::Conflict => {}
        }
    }
    // Ids n/2: bodies [2k; 100] and [2k+1; 100] differ, so the second of each pair conflicts.
    assert_eq!(inserted, 24);
    assert_eq!(duplicates, 0);
    assert_eq!(store.list_inbox().await.unwrap().len(), 24);
}

fn trust_request(name: &str, key: u8, replace: bool, now: u64) -> TrustRequest {
    TrustRequest {
        name: name.to_owned(),
        key_id: [key; 32],
        public_key: vec![key; 12],
        replace,
        now,
    }
}

/// Trust, refusals, rotation with `replace`, untrust and trusting an old key again: each change
/// moves the trust generation, each refusal or no-op leaves it; history rows are never
/// deleted; at most one trusted key per name; the trusted list carries its generation.
async fn trust_rotate_and_untrust(store: &impl Store) {
    let start = store.trust_generation().await.unwrap();
    let none = store.trusted_clients().await.unwrap();
    assert_eq!((none.generation, none.clients.len()), (start, 0));

    let outcome = store
        .trust_client(trust_request("alice", 1, false, 100))
        .await
        .unwrap();
    assert_eq!(outcome, TrustOutcome::Trusted);
    let after_trust = store.trust_generation().await.unwrap();
    assert!(after_trust > start, "trusting moves the generation");

    // Refusals and no-ops change nothing, the generation included.
    let refusals = [
        (
            trust_request("alice", 1, false, 110),
            TrustOutcome::AlreadyTrusted,
        ),
        (
            trust_request("bob", 1, false, 110),
            TrustOutcome::KeyTaken {
                name: "alice".into(),
            },
        ),
        (
            trust_request("alice", 2, false, 110),
            TrustOutcome::NameTaken { existing: [1; 32] },
        ),
    ];
    for (request, expected) in refusals {
        assert_eq!(store.trust_client(request).await.unwrap(), expected);
    }
    assert_eq!(store.trust_generation().await.unwrap(), after_trust);

    // Rotation: alice's key 1 is replaced by key 2, and kept.
    let outcome = store
        .trust_client(trust_request("alice", 2, true, 200))
        .await
        .unwrap();
    assert_eq!(outcome, TrustOutcome::Replaced { old: [1; 32] });
    let after_rotate = store.trust_generation().await.unwrap();
    assert!(after_rotate > after_trust, "rotating moves the generation");
    let trusted = store.trusted_clients().await.unwrap();
    assert_eq!(trusted.generation, after_rotate);
    let names: Vec<_> = trusted
        .clients
        .iter()
        .map(|c| (c.name.as_str(), c.key_id[0], c.since))
        .collect();
    assert_eq!(names, [("alice", 2, 200)], "one trusted key per name");
    let history = store.client_keys().await.unwrap();
    assert_eq!(
        history,
        [
            ClientKey {
                name: "alice".into(),
                key_id: [1; 32],
                public_key: vec![1; 12],
                since: 100,
                ended: Some((200, KeyEnd::Replaced)),
            },
            ClientKey {
                name: "alice".into(),
                key_id: [2; 32],
                public_key: vec![2; 12],
                since: 200,
                ended: None,
            },
        ]
    );

    // Untrust: an unknown name changes nothing; alice's key is ended, not deleted.
    assert_eq!(store.untrust_client("nobody", 300).await.unwrap(), None);
    assert_eq!(store.trust_generation().await.unwrap(), after_rotate);
    assert_eq!(
        store.untrust_client("alice", 300).await.unwrap(),
        Some([2; 32])
    );
    let after_untrust = store.trust_generation().await.unwrap();
    assert!(
        after_untrust > after_rotate,
        "untrusting moves the generation"
    );
    assert!(store.trusted_clients().await.unwrap().clients.is_empty());
    let history = store.client_keys().await.unwrap();
    assert_eq!(history.len(), 2, "history rows are kept");
    assert_eq!(history[1].ended, Some((300, KeyEnd::Removed)));
    assert_eq!(store.untrust_client("alice", 310).await.unwrap(), None);

    // A key trusted before is trusted again in its own row, under the name given now.
    let outcome = store
        .trust_client(trust_request("carol", 1, false, 400))
        .await
        .unwrap();
    assert_eq!(outcome, TrustOutcome::Trusted);
    assert!(store.trust_generation().await.unwrap() > after_untrust);
    let history = store.client_keys().await.unwrap();
    assert_eq!(history.len(), 2, "no second row for the same key");
    let again = history.iter().find(|k| k.key_id == [1; 32]).unwrap();
    assert_eq!(
        (again.name.as_str(), again.since, again.ended),
        ("carol", 400, None)
    );
}

/// `inbox_counts` per sender; `matching_inbox` finds every sender's message under an id
/// (ids are unique per sender only) and only those; `open_inbox` opens one by (sender, id);
/// `remove_inbox` deletes one with its body; `expire_inbox` deletes those received before
/// the cutoff and no others.
async fn housekeeping(store: &impl Store) {
    let large = common::data(LARGE_LEN);
    let records = [
        inbox_record(1, id(1), Body::from_bytes(b"one from 1".to_vec())),
        inbox_record(2, id(1), Body::from_bytes(b"one from 2".to_vec())),
        inbox_record(1, id(2), stage(store, &large)),
        inbox_record(2, id(3), Body::from_bytes(b"three from 2".to_vec())),
    ];
    for record in records {
        assert_eq!(
            store.insert_inbox(record).await.unwrap(),
            InsertOutcome::Inserted
        );
    }
    let mut counts = store.inbox_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, [([1; 32], 2), ([2; 32], 2)]);

    let both = store.matching_inbox("01").await.unwrap();
    let mut senders: Vec<u8> = both.iter().map(|m| m.sender_key_id[0]).collect();
    senders.sort();
    assert_eq!(senders, [1, 2], "both senders' messages with id 01…");
    assert!(both.iter().all(|m| m.message_id == id(1)));
    let full = store.matching_inbox(&hex::encode(id(2))).await.unwrap();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].body_size, LARGE_LEN as u64);
    assert!(store.matching_inbox("ff").await.unwrap().is_empty());
    assert!(matches!(
        store.matching_inbox("0x").await,
        Err(StoreError::BadIdPrefix { .. })
    ));

    let two = store.open_inbox(&[2; 32], &id(1)).await.unwrap();
    assert_eq!(two.summary.sender_name, "sender-2");
    assert_eq!(read_all(two.body).await, b"one from 2");
    let big = store.open_inbox(&[1; 32], &id(2)).await.unwrap();
    assert!(read_all(big.body).await == large);
    assert!(matches!(
        store.open_inbox(&[2; 32], &id(2)).await,
        Err(StoreError::NotFound { .. })
    ));

    assert!(store.remove_inbox(&[1; 32], &id(2)).await.unwrap());
    assert!(!store.remove_inbox(&[1; 32], &id(2)).await.unwrap());
    assert!(matches!(
        store.open_inbox(&[1; 32], &id(2)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.list_inbox().await.unwrap().len(), 3);

    // Received at +1, +1 and +3 (inbox_record): a cutoff of +3 takes the first two.
    assert_eq!(store.expire_inbox(1_700_000_103).await.unwrap(), 2);
    let left: Vec<_> = store
        .list_inbox()
        .await
        .unwrap()
        .iter()
        .map(|m| (m.sender_key_id[0], m.message_id[0]))
        .collect();
    assert_eq!(left, [(2, 3)]);
    assert_eq!(store.expire_inbox(1_700_000_103).await.unwrap(), 0);
    assert_eq!(store.inbox_counts().await.unwrap(), [([2; 32], 1)]);
    assert!(store.integrity_check().await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// The two backends

/// A store handle the suite can clone into tasks.
struct Shared<S>(std::sync::Arc<S>);

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Store> Store for Shared<S> {
    fn blob_writer(&self) -> letterlock::store::BlobWriter {
        self.0.blob_writer()
    }
    fn write_coming(&self) -> letterlock::store::WriteComing {
        self.0.write_coming()
    }
    async fn insert_inbox(&self, r: InboxRecord) -> Result<InsertOutcome, StoreError> {
        self.0.insert_inbox(r).await
    }
    async fn known_inbox(
        &self,
        s: &[u8; 32],
        m: &[u8; 16],
    ) -> Result<Option<KnownMessage>, StoreError> {
        self.0.known_inbox(s, m).await
    }
    async fn list_inbox(&self) -> Result<Vec<letterlock::store::InboxSummary>, StoreError> {
        self.0.list_inbox().await
    }
    async fn find_inbox(&self, p: &str) -> Result<letterlock::store::InboxMessage, StoreError> {
        self.0.find_inbox(p).await
    }
    async fn enqueue_outbox(&self, r: OutboxRecord) -> Result<(), StoreError> {
        self.0.enqueue_outbox(r).await
    }
    async fn pending_outbox(
        &self,
        r: &[u8; 32],
    ) -> Result<Vec<letterlock::store::OutboxEntry>, StoreError> {
        self.0.pending_outbox(r).await
    }
    async fn lease_outbox(
        &self,
        r: &[u8; 32],
        lease: std::time::Duration,
    ) -> Result<Vec<letterlock::store::OutboxEntry>, StoreError> {
        self.0.lease_outbox(r, lease).await
    }
    async fn release_outbox(&self, r: &[u8; 32], m: &[[u8; 16]]) -> Result<(), StoreError> {
        self.0.release_outbox(r, m).await
    }
    async fn waiting_relayed(&self, r: &[u8; 32]) -> Result<u64, StoreError> {
        self.0.waiting_relayed(r).await
    }
    async fn open_outbox_body(
        &self,
        r: &[u8; 32],
        m: &[u8; 16],
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        self.0.open_outbox_body(r, m).await
    }
    async fn complete_outbox(
        &self,
        r: &[u8; 32],
        m: &[u8; 16],
        t: &[u8; 32],
    ) -> Result<Completion, StoreError> {
        self.0.complete_outbox(r, m, t).await
    }
    async fn enqueue_relay(&self, r: RelayRecord) -> Result<RelayOutcome, StoreError> {
        self.0.enqueue_relay(r).await
    }
    async fn receipts(&self, s: &[u8; 32], ids: &[[u8; 16]]) -> Result<Vec<Receipt>, StoreError> {
        self.0.receipts(s, ids).await
    }
    async fn expire_receipts(&self, before: u64) -> Result<u64, StoreError> {
        self.0.expire_receipts(before).await
    }
    async fn trust_generation(&self) -> Result<u64, StoreError> {
        self.0.trust_generation().await
    }
    async fn trusted_clients(&self) -> Result<TrustedClients, StoreError> {
        self.0.trusted_clients().await
    }
    async fn client_keys(&self) -> Result<Vec<ClientKey>, StoreError> {
        self.0.client_keys().await
    }
    async fn trust_client(&self, r: TrustRequest) -> Result<TrustOutcome, StoreError> {
        self.0.trust_client(r).await
    }
    async fn untrust_client(&self, name: &str, now: u64) -> Result<Option<[u8; 32]>, StoreError> {
        self.0.untrust_client(name, now).await
    }
    async fn inbox_counts(&self) -> Result<Vec<([u8; 32], u64)>, StoreError> {
        self.0.inbox_counts().await
    }
    async fn matching_inbox(
        &self,
        p: &str,
    ) -> Result<Vec<letterlock::store::InboxSummary>, StoreError> {
        self.0.matching_inbox(p).await
    }
    async fn open_inbox(
        &self,
        s: &[u8; 32],
        m: &[u8; 16],
    ) -> Result<letterlock::store::InboxMessage, StoreError> {
        self.0.open_inbox(s, m).await
    }
    async fn remove_inbox(&self, s: &[u8; 32], m: &[u8; 16]) -> Result<bool, StoreError> {
        self.0.remove_inbox(s, m).await
    }
    async fn expire_inbox(&self, before: u64) -> Result<u64, StoreError> {
        self.0.expire_inbox(before).await
    }
    async fn remove_outbox(&self, r: &[u8; 32], m: &[u8; 16]) -> Result<bool, StoreError> {
        self.0.remove_outbox(r, m).await
    }
    async fn integrity_check(&self) -> Result<bool, StoreError> {
        self.0.integrity_check().await
    }
}

/// A fresh SQLite store and the folder it lives in.
fn sqlite_store() -> (tempfile::TempDir, Shared<SqliteStore>) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("mail.db")).expect("open the SQLite store");
    (dir, Shared(std::sync::Arc::new(store)))
}

/// A fresh PostgreSQL store over a fresh database.
async fn postgres_store() -> (common::postgres::Database, Shared<PostgresStore>) {
    let db = common::postgres::database().await;
    let store = PostgresStore::connect(&db.url)
        .await
        .unwrap_or_else(|e| panic!("connecting the PostgreSQL store to {}: {e}", db.url));
    (db, Shared(std::sync::Arc::new(store)))
}

/// Runs each listed suite function once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, store) = super::sqlite_store();
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_db, store) = super::postgres_store().await;
                    super::$name(&store).await;
                }
            )*
        }
    };
}

conformance!(
    insert_duplicate_and_conflict,
    known_inbox_by_sender_and_id,
    list_and_find_by_prefix,
    outbox_lifecycle,
    large_body_round_trip,
    bodies_at_the_inline_limit,
    concurrent_inserts,
    trust_rotate_and_untrust,
    housekeeping,
    relay_stored_once_then_duplicate_or_conflict,
    relay_receipt_only_for_the_right_tag,
    relayed_large_body_goes_with_its_receipt,
    deliveries_are_leased_to_one_fetch,
);

/// Every store leases a delivery to the fetch that took it (two copies of one client's keys
/// fetching at once through one server must not both get it): another fetch gets nothing
/// until the lease is released, ends, or the entry is acked; a wrong ack leaves the lease with
/// its holder (found by a review: the SQLite store freed it on any ack).
async fn deliveries_are_leased_to_one_fetch(store: &impl Store) {
    let tag = |n: u8| [n; 32];
    let recipient = [6; 32];
    for n in 0..3u8 {
        let body = Body::from_bytes(vec![n; 10]);
        store
            .enqueue_outbox(outbox_record(6, id(n), body, tag(n)))
            .await
            .unwrap();
    }
    let (first, second) =
        tokio::join!(leased_ids(store, &recipient), leased_ids(store, &recipient));
    let mut all = [first, second].concat();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2], "each entry to one of two fetches at once");
    assert!(leased_ids(store, &recipient).await.is_empty());
    // A wrong ack changes nothing: the entry stays, and so does its lease.
    let ack =
        |n: u8, t: u8| async move { store.complete_outbox(&recipient, &id(n), &[t; 32]).await };
    assert_eq!(ack(0, 9).await.unwrap(), Completion::BadTag);
    assert!(leased_ids(store, &recipient).await.is_empty());
    // Released: the next fetch gets it at once.
    store.release_outbox(&recipient, &[id(0)]).await.unwrap();
    assert_eq!(leased_ids(store, &recipient).await, [0]);
    // Acked: gone, and the same id queued again is free at once.
    assert_eq!(
        ack(1, 1).await.unwrap(),
        Completion::Completed { receipt: false }
    );
    store
        .enqueue_outbox(outbox_record(6, id(1), Body::from_bytes(vec![7]), tag(7)))
        .await
        .unwrap();
    assert_eq!(leased_ids(store, &recipient).await, [1]);
}

/// The first bytes of the ids one fetch for `recipient` leases now.
async fn leased_ids(store: &impl Store, recipient: &[u8; 32]) -> Vec<u8> {
    let leased = store
        .lease_outbox(recipient, letterlock::store::DELIVERY_LEASE)
        .await
        .unwrap();
    leased.iter().map(|e| e.message_id[0]).collect()
}

/// The ack tag a relayed message `n` was sealed with (the sender keeps it; the store only
/// ever sees its commitment).
fn relay_tag(n: u8) -> [u8; 32] {
    [n ^ 0x5A; 32]
}

/// A message client `sender` relays to client `recipient`, committed to [`relay_tag`] of the
/// id's first byte; its content hash is SHA-256 of its bytes (a stand-in for the identity).
fn relay_record(sender: u8, recipient: u8, id: [u8; 16], body: Body) -> RelayRecord {
    RelayRecord {
        sender_key_id: [sender; 32],
        sender_name: format!("client-{sender}"),
        recipient_key_id: [recipient; 32],
        recipient_name: format!("client-{recipient}"),
        message_id: id,
        created: 1_700_000_300,
        received: 1_700_000_301,
        mode: MODE_HYBRID,
        content_hash: body.sha256().expect("a store writer hashes"),
        commitment: receipt_commitment(&relay_tag(id[0])),
        body,
    }
}

/// A relayed message is stored once and listed with its sender; the same (sender, id) and
/// bytes again is a duplicate (nothing written), other bytes a conflict; the recipient's id
/// taken by another sender, or by the server, is a conflict too; another recipient may get
/// the same id from another sender.
async fn relay_stored_once_then_duplicate_or_conflict(store: &impl Store) {
    let bytes = || Body::from_bytes(b"sealed for 2".to_vec());
    assert_eq!(
        store
            .enqueue_relay(relay_record(1, 2, id(0x40), bytes()))
            .await
            .unwrap(),
        RelayOutcome::Stored
    );
    assert_eq!(
        store
            .enqueue_relay(relay_record(1, 2, id(0x40), bytes()))
            .await
            .unwrap(),
        RelayOutcome::Duplicate
    );
    let other = Body::from_bytes(b"other bytes".to_vec());
    assert_eq!(
        store
            .enqueue_relay(relay_record(1, 2, id(0x40), other))
            .await
            .unwrap(),
        RelayOutcome::Conflict,
        "same sender and id, other content"
    );
    // The same id from the same sender to another recipient is other content too.
    assert_eq!(
        store
            .enqueue_relay(relay_record(
                1,
                3,
                id(0x40),
                Body::from_bytes(b"for 3".to_vec())
            ))
            .await
            .unwrap(),
        RelayOutcome::Conflict
    );
    assert_eq!(
        store
            .enqueue_relay(relay_record(4, 2, id(0x40), bytes()))
            .await
            .unwrap(),
        RelayOutcome::Conflict,
        "the recipient has this id from another sender"
    );
    let sealed_by_server =
        outbox_record(2, id(0x41), Body::from_bytes(b"server".to_vec()), [1; 32]);
    store.enqueue_outbox(sealed_by_server).await.unwrap();
    assert_eq!(
        store
            .enqueue_relay(relay_record(1, 2, id(0x41), bytes()))
            .await
            .unwrap(),
        RelayOutcome::Conflict,
        "the recipient has this id from the server"
    );
    assert_eq!(
        store
            .enqueue_relay(relay_record(4, 3, id(0x40), bytes()))
            .await
            .unwrap(),
        RelayOutcome::Stored
    );

    let pending = store.pending_outbox(&[2; 32]).await.unwrap();
    let listed: Vec<_> = pending
        .iter()
        .map(|e| (e.message_id[0], e.sender.clone()))
        .collect();
    assert_eq!(
        listed,
        [(0x40, Some(([1; 32], "client-1".to_owned()))), (0x41, None)],
        "queue order, relayed entries name their sender, the server's none"
    );
    assert_eq!(pending[0].body_size, b"sealed for 2".len() as u64);
    assert_eq!(pending[0].plaintext_len, 0, "the server cannot know it");
    let leased = store
        .lease_outbox(&[2; 32], letterlock::store::DELIVERY_LEASE)
        .await
        .unwrap();
    assert_eq!(leased, pending);
    let body = store.open_outbox_body(&[2; 32], &id(0x40)).await.unwrap();
    assert_eq!(read_all(body).await, b"sealed for 2");
    assert_eq!(store.pending_outbox(&[3; 32]).await.unwrap().len(), 1);
    // Only relayed entries count toward the per-recipient bound, the server's own do not.
    assert_eq!(store.waiting_relayed(&[2; 32]).await.unwrap(), 1);
    assert_eq!(store.waiting_relayed(&[3; 32]).await.unwrap(), 1);
    assert_eq!(store.waiting_relayed(&[9; 32]).await.unwrap(), 0);
    assert!(store.integrity_check().await.unwrap());
}

/// A receipt needs the tag whose commitment the relayed entry keeps: a wrong tag (or the
/// commitment itself) removes the entry without a receipt (the recipient discards it); the
/// right one removes the entry and makes the receipt, given only to the sender that relayed
/// it. A repeat after delivery is still recognised. Server-sealed entries keep comparing the
/// tag itself: a wrong one changes nothing, and they make no receipt. Receipts expire by
/// delivery time.
async fn relay_receipt_only_for_the_right_tag(store: &impl Store) {
    let body = || Body::from_bytes(b"sealed for 2".to_vec());
    store
        .enqueue_relay(relay_record(1, 2, id(0x50), body()))
        .await
        .unwrap();
    store
        .enqueue_outbox(outbox_record(
            2,
            id(0x51),
            Body::from_bytes(b"server".to_vec()),
            relay_tag(0x51),
        ))
        .await
        .unwrap();

    // A relayed entry acked with a tag that does not match its commitment (a wrong tag, or
    // the commitment itself) is removed anyway, without a receipt: the sender may have
    // committed to garbage, and the recipient must be able to get rid of it.
    let mut wrong = relay_tag(0x52);
    wrong[0] ^= 1;
    let commitment = receipt_commitment(&relay_tag(0x53));
    for (n, bad) in [(0x52, wrong), (0x53, commitment)] {
        store
            .enqueue_relay(relay_record(1, 2, id(n), body()))
            .await
            .unwrap();
        assert_eq!(
            store.complete_outbox(&[2; 32], &id(n), &bad).await.unwrap(),
            Completion::RemovedWithoutReceipt {
                sender_key_id: [1; 32],
                sender_name: "client-1".to_owned()
            }
        );
        assert_eq!(
            store.complete_outbox(&[2; 32], &id(n), &bad).await.unwrap(),
            Completion::NotPending,
            "removed: a second ack finds nothing"
        );
        assert!(matches!(
            store.open_outbox_body(&[2; 32], &id(n)).await,
            Err(StoreError::OutboxNotFound { .. })
        ));
    }
    assert!(
        store
            .receipts(&[1; 32], &[id(0x52), id(0x53)])
            .await
            .unwrap()
            .is_empty(),
        "no receipt for an entry removed with a tag that did not match"
    );
    assert_eq!(
        store
            .complete_outbox(&[1; 32], &id(0x50), &relay_tag(0x50))
            .await
            .unwrap(),
        Completion::NotPending,
        "the sender cannot complete the recipient's entry"
    );
    assert_eq!(store.pending_outbox(&[2; 32]).await.unwrap().len(), 2);
    assert!(
        store
            .receipts(&[1; 32], &[id(0x50)])
            .await
            .unwrap()
            .is_empty()
    );

    let before = letterlock::envelope::unix_now();
    assert_eq!(
        store
            .complete_outbox(&[2; 32], &id(0x50), &relay_tag(0x50))
            .await
            .unwrap(),
        Completion::Completed { receipt: true }
    );
    let after = letterlock::envelope::unix_now();
    assert_eq!(
        store
            .complete_outbox(&[2; 32], &id(0x50), &relay_tag(0x50))
            .await
            .unwrap(),
        Completion::NotPending
    );
    let receipts = store
        .receipts(&[1; 32], &[id(0x50), id(0x51), id(0x52)])
        .await
        .unwrap();
    assert_eq!(
        receipts.len(),
        1,
        "only the delivered relayed message has one"
    );
    let r = &receipts[0];
    assert_eq!(
        (
            r.sender_key_id,
            r.message_id,
            r.recipient_key_id,
            r.recipient_name.as_str(),
            r.ack_tag
        ),
        ([1; 32], id(0x50), [2; 32], "client-2", relay_tag(0x50))
    );
    assert!((before..=after).contains(&r.delivered));
    assert!(
        store
            .receipts(&[2; 32], &[id(0x50)])
            .await
            .unwrap()
            .is_empty(),
        "a receipt is not given to another client"
    );
    assert!(store.receipts(&[1; 32], &[]).await.unwrap().is_empty());

    // A repeat after delivery: the same bytes are a duplicate (not queued again), other bytes
    // a conflict.
    assert_eq!(
        store
            .enqueue_relay(relay_record(1, 2, id(0x50), body()))
            .await
            .unwrap(),
        RelayOutcome::Duplicate
    );
    assert_eq!(
        store
            .enqueue_relay(relay_record(
                1,
                2,
                id(0x50),
                Body::from_bytes(b"x".to_vec())
            ))
            .await
            .unwrap(),
        RelayOutcome::Conflict
    );
    let left: Vec<_> = store
        .pending_outbox(&[2; 32])
        .await
        .unwrap()
        .iter()
        .map(|e| e.message_id[0])
        .collect();
    assert_eq!(left, [0x51]);

    // The server's own entry: its tag itself, not a commitment; no receipt.
    assert_eq!(
        store
            .complete_outbox(&[2; 32], &id(0x51), &receipt_commitment(&relay_tag(0x51)))
            .await
            .unwrap(),
        Completion::BadTag
    );
    assert_eq!(
        store
            .complete_outbox(&[2; 32], &id(0x51), &relay_tag(0x51))
            .await
            .unwrap(),
        Completion::Completed { receipt: false }
    );
    assert!(
        store
            .receipts(&[1; 32], &[id(0x51)])
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        store
            .expire_receipts(before.saturating_sub(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.receipts(&[1; 32], &[id(0x50)]).await.unwrap().len(),
        1
    );
    assert_eq!(store.expire_receipts(after + 1).await.unwrap(), 1);
    assert!(
        store
            .receipts(&[1; 32], &[id(0x50)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.integrity_check().await.unwrap());
}

/// A large relayed body (a file or database chunks) is delivered byte for byte and goes with
/// its entry when the receipt is made.
async fn relayed_large_body_goes_with_its_receipt(store: &impl Store) {
    let data = common::data(LARGE_LEN);
    let record = relay_record(1, 2, id(0x60), stage(store, &data));
    assert_eq!(
        store.enqueue_relay(record).await.unwrap(),
        RelayOutcome::Stored
    );
    let body = store.open_outbox_body(&[2; 32], &id(0x60)).await.unwrap();
    assert_eq!(read_all(body).await, data);
    assert_eq!(
        store
            .complete_outbox(&[2; 32], &id(0x60), &relay_tag(0x60))
            .await
            .unwrap(),
        Completion::Completed { receipt: true }
    );
    assert!(matches!(
        store.open_outbox_body(&[2; 32], &id(0x60)).await,
        Err(StoreError::OutboxNotFound { .. })
    ));
    assert_eq!(
        store.receipts(&[1; 32], &[id(0x60)]).await.unwrap().len(),
        1
    );
    assert!(store.integrity_check().await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only

/// Waits until the store holds `expected` bodies: a dropped staged body is deleted by the
/// store's cleaner task, asynchronously. Polls without a deadline of its own (the test
/// harness's timeout applies), so a slow machine cannot fail it.
async fn wait_for_bodies(store: &PostgresStore, expected: u64) {
    loop {
        if store.body_count().await.unwrap() == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A large body is chunked in the database (no file anywhere); a staged body that no row
/// names, because its insert was a duplicate or because it was simply dropped, is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_large_bodies_are_chunks_and_unused_ones_go() {
    let (_db, store) = postgres_store().await;
    let store = &*store.0;
    let data = common::data(LARGE_LEN);
    let body = stage(store, &data);
    assert!(!body.is_file());
    store
        .insert_inbox(inbox_record(1, id(1), body))
        .await
        .unwrap();
    assert_eq!(store.body_count().await.unwrap(), 1);

    // A retry of the same large message: answered as a duplicate, its new copy removed.
    let retry = stage(store, &data);
    assert_eq!(store.body_count().await.unwrap(), 2);
    assert!(matches!(
        store
            .insert_inbox(inbox_record(1, id(1), retry))
            .await
            .unwrap(),
        InsertOutcome::Duplicate { .. }
    ));
    wait_for_bodies(store, 1).await;

    // Staged and dropped: removed too.
    drop(stage(store, &data));
    wait_for_bodies(store, 1).await;

    // A writer dropped mid-body leaves nothing (its transaction rolls back).
    let mut writer = store.blob_writer();
    writer.write_all(&data).unwrap();
    drop(writer);
    assert_eq!(store.body_count().await.unwrap(), 1);
    assert!(store.integrity_check().await.unwrap());
}

/// A body staged by one backend cannot be named by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_staged_elsewhere_are_refused() {
    let (_db, pg) = postgres_store().await;
    let (_dir, sqlite) = sqlite_store();
    let data = common::data(LARGE_LEN);
    let from_sqlite = stage(&sqlite, &data);
    assert!(matches!(
        pg.insert_inbox(inbox_record(1, id(1), from_sqlite)).await,
        Err(StoreError::ForeignBlob { .. })
    ));
    let from_pg = stage(&pg, &data);
    assert!(matches!(
        sqlite.insert_inbox(inbox_record(1, id(1), from_pg)).await,
        Err(StoreError::ForeignBlob { .. })
    ));
    // And another database's body is refused by this one.
    let (_db2, other) = postgres_store().await;
    let from_other = stage(&other, &data);
    assert!(matches!(
        pg.insert_inbox(inbox_record(1, id(2), from_other)).await,
        Err(StoreError::ForeignBlob { .. })
    ));
}

/// Two store handles over one database stand for two servers: a message sent to both at once
/// is stored once and both answer with its ack; a delivery acked through both is removed once;
/// a large body staged through one is read through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_over_one_database_agree() {
    let db = common::postgres::database().await;
    let (a, b) = tokio::join!(
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let record = || inbox_record(1, id(1), Body::from_bytes(b"to both".to_vec()));
    let (ra, rb) = tokio::join!(a.insert_inbox(record()), b.insert_inbox(record()));
    let mut outcomes = [ra.unwrap(), rb.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, InsertOutcome::Inserted));
    assert_eq!(
        outcomes,
        [
            InsertOutcome::Duplicate {
                ack_tag: [1 ^ 0xA5; 32]
            },
            InsertOutcome::Inserted
        ]
    );
    assert_eq!(b.list_inbox().await.unwrap().len(), 1);

    let data = common::data(LARGE_LEN);
    let body = stage(&a, &data);
    a.enqueue_outbox(outbox_record(2, id(2), body, [2; 32]))
        .await
        .unwrap();
    let through_b = read_all(b.open_outbox_body(&[2; 32], &id(2)).await.unwrap()).await;
    assert!(
        through_b == data,
        "server b read another body than a staged"
    );
    let message = id(2);
    let (ca, cb) = tokio::join!(
        a.complete_outbox(&[2; 32], &message, &[2; 32]),
        b.complete_outbox(&[2; 32], &message, &[2; 32])
    );
    assert_eq!(
        [ca.unwrap(), cb.unwrap()]
            .iter()
            .filter(|c| **c == Completion::Completed { receipt: false })
            .count(),
        1,
        "exactly one completion removes the delivery"
    );
    assert_eq!(a.body_count().await.unwrap(), 0);
    assert!(b.integrity_check().await.unwrap());
}

/// A database migrated by a newer letterlock is refused; the current one reconnects as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_is_versioned() {
    let db = common::postgres::database().await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    assert_eq!(store.schema_version_found(), 0, "a new database");
    store.close().await.unwrap();
    let again = PostgresStore::connect(&db.url).await.unwrap();
    assert_eq!(again.schema_version_found(), SCHEMA_VERSION);
    again.close().await.unwrap();

    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO letterlock_schema (version) VALUES ($1)",
            &[&(SCHEMA_VERSION as i32 + 1)],
        )
        .await
        .unwrap();
    drop(client);
    driver.await.unwrap().unwrap();
    match PostgresStore::connect(&db.url).await {
        Err(StoreError::SchemaVersion {
            found, expected, ..
        }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(expected, SCHEMA_VERSION);
        }
        other => panic!("a newer schema was not refused: {other:?}"),
    }
}

/// Deliveries across servers: entries leased by one fetch are not handed to another until
/// the lease expires (a server that died) or the entry is completed (through any server);
/// two fetches at once through two servers split the entries, never share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deliveries_are_leased_to_one_fetch_at_a_time() {
    use std::time::Duration;
    let db = common::postgres::database().await;
    let (a, b) = tokio::join!(
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let recipient = [4; 32];
    for n in 0..6u8 {
        let body = Body::from_bytes(vec![n; 10]);
        a.enqueue_outbox(outbox_record(4, id(n), body, [n; 32]))
            .await
            .unwrap();
    }
    let ids = |entries: &[letterlock::store::OutboxEntry]| -> Vec<u8> {
        entries.iter().map(|e| e.message_id[0]).collect()
    };
    let minute = Duration::from_secs(60);
    // Two fetches at once, through two servers: disjoint, and together everything.
    let (la, lb) = tokio::join!(
        a.lease_outbox(&recipient, minute),
        b.lease_outbox(&recipient, minute)
    );
    let (la, lb) = (ids(&la.unwrap()), ids(&lb.unwrap()));
    let mut all: Vec<u8> = la.iter().chain(&lb).copied().collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3, 4, 5], "leases {la:?} and {lb:?}");
    for list in [&la, &lb] {
        assert!(list.is_sorted(), "queue order within a lease: {list:?}");
    }
    // While leased, nobody else gets them; the listing still shows them.
    assert!(b.lease_outbox(&recipient, minute).await.unwrap().is_empty());
    assert_eq!(b.pending_outbox(&recipient).await.unwrap().len(), 6);
    // A completion through the other server removes a leased entry.
    let first = la.first().or(lb.first()).copied().unwrap();
    assert_eq!(
        b.complete_outbox(&recipient, &id(first), &[first; 32])
            .await
            .unwrap(),
        Completion::Completed { receipt: false }
    );

    // A fresh message is free at once; a lease that expires (here: at once) frees its entries
    // for the next fetch, wherever it runs.
    a.enqueue_outbox(outbox_record(4, id(9), Body::from_bytes(vec![9]), [9; 32]))
        .await
        .unwrap();
    assert_eq!(
        ids(&b.lease_outbox(&recipient, Duration::ZERO).await.unwrap()),
        [9]
    );
    assert_eq!(ids(&a.lease_outbox(&recipient, minute).await.unwrap()), [9]);
    assert!(b.lease_outbox(&recipient, minute).await.unwrap().is_empty());
}

/// A fetch that ends without acks releases its leases: the next fetch, through another server,
/// gets the messages at once instead of after `DELIVERY_LEASE`; until released, the lease
/// keeps them from a concurrent fetch. Releasing ids that are gone or not leased is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_released_leases_are_free_at_once() {
    let db = common::postgres::database().await;
    let (a, b) = tokio::join!(
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let recipient = [5; 32];
    for n in 0..3u8 {
        let body = Body::from_bytes(vec![n; 10]);
        a.enqueue_outbox(outbox_record(5, id(n), body, [n; 32]))
            .await
            .unwrap();
    }
    let ids = |entries: &[letterlock::store::OutboxEntry]| -> Vec<u8> {
        entries.iter().map(|e| e.message_id[0]).collect()
    };
    let lease = letterlock::store::DELIVERY_LEASE;
    assert_eq!(
        ids(&a.lease_outbox(&recipient, lease).await.unwrap()),
        [0, 1, 2]
    );
    // Held: a concurrent fetch through the other server gets nothing.
    assert!(b.lease_outbox(&recipient, lease).await.unwrap().is_empty());
    // The fetch ends: 0 was acked and removed, 1 and 2 were not; 7 never existed.
    assert_eq!(
        a.complete_outbox(&recipient, &id(0), &[0; 32])
            .await
            .unwrap(),
        Completion::Completed { receipt: false }
    );
    a.release_outbox(&recipient, &[id(0), id(1), id(2), id(7)])
        .await
        .unwrap();
    // At once, not after the lease: the other server's fetch gets the unacked ones ...
    assert_eq!(
        ids(&b.lease_outbox(&recipient, lease).await.unwrap()),
        [1, 2]
    );
    // ... and its lease protects them in turn.
    assert!(a.lease_outbox(&recipient, lease).await.unwrap().is_empty());
    // Releasing nothing is a no-op; another recipient's entries are untouched.
    a.release_outbox(&recipient, &[]).await.unwrap();
    a.release_outbox(&[6; 32], &[id(1), id(2)]).await.unwrap();
    assert!(a.lease_outbox(&recipient, lease).await.unwrap().is_empty());
    // An operator's removal, through either server, waits for the fetch that holds an entry
    // to end: that client may be reading it.
    assert!(!a.remove_outbox(&recipient, &id(1)).await.unwrap());
    b.release_outbox(&recipient, &[id(1)]).await.unwrap();
    assert!(a.remove_outbox(&recipient, &id(1)).await.unwrap());
    assert_eq!(
        ids(&a.lease_outbox(&recipient, lease).await.unwrap()),
        Vec::<u8>::new()
    );
}

/// Deletion through any housekeeping method takes the message's chunked body with it: no
/// body row or chunk outlives its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_removed_and_expired_messages_take_their_bodies() {
    let (db, store) = postgres_store().await;
    let large = common::data(LARGE_LEN);
    for n in 1..=3 {
        store
            .insert_inbox(inbox_record(1, id(n), stage(&store, &large)))
            .await
            .unwrap();
    }
    wait_for_bodies(&store.0, 3).await;
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let chunks = || async {
        let row = client
            .query_one("SELECT count(*) FROM body_chunk", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(chunks().await, 12, "three bodies of four chunks");

    assert!(store.remove_inbox(&[1; 32], &id(1)).await.unwrap());
    assert_eq!(store.0.body_count().await.unwrap(), 2);
    assert_eq!(chunks().await, 8);

    // Received at +2 and +3: both before the cutoff.
    assert_eq!(store.expire_inbox(1_700_000_104).await.unwrap(), 2);
    assert_eq!(store.0.body_count().await.unwrap(), 0);
    assert_eq!(chunks().await, 0);

    // An outbox message removed undelivered (`server outbox --remove`) takes its chunks too.
    store
        .enqueue_outbox(outbox_record(5, id(9), stage(&store, &large), [9; 32]))
        .await
        .unwrap();
    wait_for_bodies(&store.0, 1).await;
    assert_eq!(chunks().await, 4);
    assert!(store.remove_outbox(&[5; 32], &id(9)).await.unwrap());
    assert_eq!(store.0.body_count().await.unwrap(), 0);
    assert_eq!(chunks().await, 0);
    assert!(store.integrity_check().await.unwrap());
    drop(client);
    driver.await.unwrap().unwrap();
}

/// The trust list is shared: a key trusted through one store (one server) is seen by another
/// on the same database at its next generation check, and two servers trusting the same name
/// at once with different keys cannot both win (trust changes are serialised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_trust_is_shared_and_serialised() {
    let db = common::postgres::database().await;
    let a = std::sync::Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let b = std::sync::Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let seen = b.trust_generation().await.unwrap();
    a.trust_client(trust_request("alice", 1, false, 100))
        .await
        .unwrap();
    assert!(b.trust_generation().await.unwrap() > seen);
    let on_b = b.trusted_clients().await.unwrap();
    assert_eq!(on_b.clients.len(), 1);
    assert_eq!(on_b.clients[0].key_id, [1; 32]);

    for round in 0..8u8 {
        let name = format!("race-{round}");
        let (x, y) = (a.clone(), b.clone());
        let (n1, n2) = (name.clone(), name.clone());
        let first = tokio::spawn(async move {
            x.trust_client(trust_request(&n1, 10 + 2 * round, false, 200))
                .await
        });
        let second = tokio::spawn(async move {
            y.trust_client(trust_request(&n2, 11 + 2 * round, false, 200))
                .await
        });
        let mut outcomes = [
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        ];
        outcomes.sort_by_key(|o| matches!(o, TrustOutcome::NameTaken { .. }));
        assert_eq!(outcomes[0], TrustOutcome::Trusted, "{name}: {outcomes:?}");
        assert!(
            matches!(outcomes[1], TrustOutcome::NameTaken { .. }),
            "{name}: {outcomes:?}"
        );
    }
    assert_eq!(a.trusted_clients().await.unwrap().clients.len(), 9);
}

/// A database of schema version 1 is migrated to the current version at connect, its rows
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_migrates_from_version_1() {
    let db = common::postgres::database().await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    store
        .enqueue_outbox(outbox_record(
            1,
            id(1),
            Body::from_bytes(b"kept".to_vec()),
            [1; 32],
        ))
        .await
        .unwrap();
    store.close().await.unwrap();
    // Back to version 1 by hand: what migrations 2 to 4 added goes.
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(
            "ALTER TABLE outbox DROP COLUMN leased_until, DROP COLUMN sender_key_id,
                 DROP COLUMN sender_name, DROP COLUMN received, DROP COLUMN content_hash;
             DROP TABLE receipts;
             DROP TABLE client_keys;
             DROP TABLE trust_generation;
             DROP INDEX inbox_by_sender;
             DELETE FROM letterlock_schema WHERE version > 1;",
        )
        .await
        .unwrap();
    drop(client);
    driver.await.unwrap().unwrap();

    let store = PostgresStore::connect(&db.url).await.unwrap();
    assert_eq!(store.schema_version_found(), 1);
    let leased = store
        .lease_outbox(&[1; 32], std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1, "the version 1 row survived the migration");
}

/// A server stores a message's sealed identity as its content hash: copy-store checks it
/// (with the wrapped-key length that follows from the row and the sender's key), copies a
/// sound message and refuses one whose tag was damaged on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_store_checks_a_sealed_identity() {
    use letterlock::Identity;
    use letterlock::envelope::{HEADER_LEN, SealOptions};
    use letterlock::store::SealedIdentity;
    let alice = common::private("alice2048");
    let bob = common::public("bob3072");
    let plain = common::data(200 * 1024);
    let (bytes, sealed) =
        common::seal_with_info(alice.as_ref(), &bob, &SealOptions::default(), &plain);
    let record = |bytes: &[u8]| InboxRecord {
        sender_key_id: sealed.header.sender.0,
        sender_name: "alice".to_owned(),
        message_id: sealed.header.message_id.0,
        created: sealed.header.created,
        received: sealed.header.created,
        mode: MODE_HYBRID,
        plaintext_len: plain.len() as u64,
        content_hash: SealedIdentity::of(bytes, bob.modulus_len()).unwrap(),
        ack_tag: sealed.ack_tag,
        body: Body::from_bytes(bytes.to_vec()),
    };
    let trust = || TrustRequest {
        name: "alice".to_owned(),
        key_id: sealed.header.sender.0,
        public_key: alice.public().spki_der().to_vec(),
        replace: false,
        now: 100,
    };

    let (dir, sqlite) = sqlite_store();
    sqlite.trust_client(trust()).await.unwrap();
    let mut file_body = record(&bytes);
    file_body.body = stage(&sqlite, &bytes);
    assert!(file_body.body.is_file());
    sqlite.insert_inbox(file_body).await.unwrap();
    drop(sqlite);
    let (_db, pg) = postgres_store().await;
    let report =
        pg.0.copy_from_sqlite(&dir.path().join("mail.db"))
            .await
            .unwrap();
    assert_eq!(report.inbox_copied, 1);
    let copied =
        pg.0.find_inbox(&sealed.header.message_id.to_string())
            .await
            .unwrap();
    assert!(read_all(copied.body).await == bytes);

    // The same row with a flipped bit in the first chunk's tag, as a damaged disk leaves it.
    let (dir, sqlite) = sqlite_store();
    sqlite.trust_client(trust()).await.unwrap();
    let mut damaged = record(&bytes);
    let mut changed = bytes.clone();
    changed[HEADER_LEN + bob.modulus_len() + 64 * 1024 + 5] ^= 1;
    damaged.body = stage(&sqlite, &changed);
    sqlite.insert_inbox(damaged).await.unwrap();
    drop(sqlite);
    let (_db, pg) = postgres_store().await;
    let err =
        pg.0.copy_from_sqlite(&dir.path().join("mail.db"))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("content hash"), "{err}");
}

/// An SQLite mailbox is copied into PostgreSQL whole (bodies byte for byte, large ones into
/// chunks, outbox ack tags with them), and a second copy adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_mailbox_is_copied_into_postgres() {
    let (dir, sqlite) = sqlite_store();
    let large = common::data(LARGE_LEN);
    let records = [
        inbox_record(1, id(1), Body::from_bytes(b"small".to_vec())),
        inbox_record(2, id(2), stage(&sqlite, &large)),
    ];
    for record in records {
        sqlite.insert_inbox(record).await.unwrap();
    }
    sqlite
        .enqueue_outbox(outbox_record(3, id(3), stage(&sqlite, &large), [3; 32]))
        .await
        .unwrap();
    sqlite
        .enqueue_outbox(outbox_record(
            3,
            id(4),
            Body::from_bytes(b"x".to_vec()),
            [4; 32],
        ))
        .await
        .unwrap();
    // The trust history: alice rotated from key 1 to key 2, carol removed.
    for request in [
        trust_request("alice", 1, false, 100),
        trust_request("alice", 2, true, 200),
        trust_request("carol", 3, false, 300),
    ] {
        sqlite.trust_client(request).await.unwrap();
    }
    sqlite.untrust_client("carol", 400).await.unwrap();
    // Client to client: one relayed entry still waiting, one delivered (its receipt).
    for n in [5, 6] {
        let relayed = relay_record(
            7,
            3,
            id(n),
            Body::from_bytes(format!("relayed {n}").into_bytes()),
        );
        sqlite.enqueue_relay(relayed).await.unwrap();
    }
    assert_eq!(
        sqlite
            .complete_outbox(&[3; 32], &id(6), &relay_tag(6))
            .await
            .unwrap(),
        Completion::Completed { receipt: true }
    );
    let receipts = sqlite.receipts(&[7; 32], &[id(5), id(6)]).await.unwrap();
    let history = sqlite.client_keys().await.unwrap();
    let listed = sqlite.list_inbox().await.unwrap();
    drop(sqlite);

    let (_db, pg) = postgres_store().await;
    let path = dir.path().join("mail.db");
    let report = pg.0.copy_from_sqlite(&path).await.unwrap();
    assert_eq!(
        (
            report.inbox_copied,
            report.outbox_copied,
            report.inbox_conflicts
        ),
        (2, 3, 0)
    );
    assert_eq!(report.receipts_copied, 1);
    assert_eq!((report.keys_copied, report.keys_present), (3, 0));
    assert_eq!(
        pg.client_keys().await.unwrap(),
        history,
        "the trust history, whole"
    );
    let trusted = pg.trusted_clients().await.unwrap();
    assert!(
        trusted.generation > 0,
        "running servers see the copied keys"
    );
    assert_eq!(trusted.clients.len(), 1);
    assert_eq!(trusted.clients[0].key_id, [2; 32]);
    let again = pg.0.copy_from_sqlite(&path).await.unwrap();
    assert_eq!(
        (
            again.inbox_copied,
            again.inbox_present,
            again.outbox_copied,
            again.outbox_present
        ),
        (0, 2, 0, 3)
    );
    assert_eq!(again.receipts_copied, 0);
    assert_eq!(
        pg.receipts(&[7; 32], &[id(5), id(6)]).await.unwrap(),
        receipts
    );
    // The relayed entry: its sender, its commitment (the sender's tag completes it, with a
    // receipt), and its content hash (a repeat is recognised).
    assert_eq!(
        store_relay_repeat(&pg, 5).await,
        letterlock::store::RelayOutcome::Duplicate
    );
    assert_eq!((again.keys_copied, again.keys_present), (0, 3));
    assert_eq!(pg.list_inbox().await.unwrap(), listed);
    let found = pg.find_inbox("02").await.unwrap();
    assert!(read_all(found.body).await == large);
    let known = pg.known_inbox(&[1; 32], &id(1)).await.unwrap().unwrap();
    assert_eq!(known.ack_tag, [1 ^ 0xA5; 32]);
    let out = read_all(pg.open_outbox_body(&[3; 32], &id(3)).await.unwrap()).await;
    assert!(out == large);
    let queue: Vec<u8> = pg
        .pending_outbox(&[3; 32])
        .await
        .unwrap()
        .iter()
        .map(|e| e.message_id[0])
        .collect();
    assert_eq!(queue, [3, 4, 5], "queue order kept");
    let relayed = pg.pending_outbox(&[3; 32]).await.unwrap();
    assert_eq!(relayed[2].sender, Some(([7; 32], "client-7".to_owned())));
    assert_eq!(relayed[0].sender, None);
    assert_eq!(
        pg.complete_outbox(&[3; 32], &id(5), &relay_tag(5))
            .await
            .unwrap(),
        Completion::Completed { receipt: true }
    );
    assert_eq!(pg.receipts(&[7; 32], &[id(5)]).await.unwrap().len(), 1);
    assert_eq!(
        pg.complete_outbox(&[3; 32], &id(3), &[3; 32])
            .await
            .unwrap(),
        Completion::Completed { receipt: false }
    );
    assert!(pg.integrity_check().await.unwrap());
}

/// Two servers over one database relaying the same (sender, id) at once: one stores it, the
/// other is answered from the stored row (the same bytes: a duplicate; other bytes: a
/// conflict), and one entry waits. A relay through one server is completed through the other,
/// and its receipt is seen through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_relaying_one_id_at_once_store_it_once() {
    let db = common::postgres::database().await;
    let (a, b) = tokio::join!(
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for n in 0..8u8 {
        let same = || relay_record(1, 2, id(n), Body::from_bytes(b"to both".to_vec()));
        let (ra, rb) = tokio::join!(a.enqueue_relay(same()), b.enqueue_relay(same()));
        let mut outcomes = [ra.unwrap(), rb.unwrap()];
        outcomes.sort_by_key(|o| *o == RelayOutcome::Stored);
        assert_eq!(outcomes, [RelayOutcome::Duplicate, RelayOutcome::Stored]);
    }
    for n in 8..16u8 {
        let (ra, rb) = tokio::join!(
            a.enqueue_relay(relay_record(1, 2, id(n), Body::from_bytes(b"one".to_vec()))),
            b.enqueue_relay(relay_record(1, 2, id(n), Body::from_bytes(b"two".to_vec())))
        );
        let mut outcomes = [ra.unwrap(), rb.unwrap()];
        outcomes.sort_by_key(|o| *o == RelayOutcome::Stored);
        assert_eq!(outcomes, [RelayOutcome::Conflict, RelayOutcome::Stored]);
    }
    assert_eq!(b.pending_outbox(&[2; 32]).await.unwrap().len(), 16);
    assert_eq!(
        b.complete_outbox(&[2; 32], &id(0), &relay_tag(0))
            .await
            .unwrap(),
        Completion::Completed { receipt: true }
    );
    assert_eq!(
        a.complete_outbox(&[2; 32], &id(0), &relay_tag(0))
            .await
            .unwrap(),
        Completion::NotPending
    );
    assert_eq!(
        a.receipts(&[1; 32], &[id(0)]).await.unwrap(),
        b.receipts(&[1; 32], &[id(0)]).await.unwrap()
    );
    assert_eq!(a.receipts(&[1; 32], &[id(0)]).await.unwrap().len(), 1);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Relays message `n` of [`an_sqlite_mailbox_is_copied_into_postgres`] again.
async fn store_relay_repeat(store: &impl Store, n: u8) -> RelayOutcome {
    let again = relay_record(
        7,
        3,
        id(n),
        Body::from_bytes(format!("relayed {n}").into_bytes()),
    );
    store.enqueue_relay(again).await.unwrap()
}

/// Every connection of the store is killed under it (as a database restart or failover
/// would): requests fail or succeed, never half-write, and the store carries on without being
/// reconnected: the pool replaces dead connections, and a retried insert lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_carries_on_after_its_connections_are_killed() {
    let (db, store) = postgres_store().await;
    // Several pooled connections, all idle afterwards.
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let body = Body::from_bytes(vec![n; 100]);
            store.insert_inbox(inbox_record(1, id(n), body)).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), InsertOutcome::Inserted);
    }

    let (admin, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let killed = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(killed >= 1, "the store had no connection to kill");

    // A client retries until acked; each failure must be an error, not a wrong answer.
    let mut failures = 0;
    let outcome = loop {
        let body = Body::from_bytes(b"after the kill".to_vec());
        match store.insert_inbox(inbox_record(2, id(0x60), body)).await {
            Ok(outcome) => break outcome,
            // A broken connection must read as "unavailable" (the server then answers
            // Unavailable and the client retries), never as a plain database error.
            Err(e) if e.is_unavailable() => {
                failures += 1;
                assert!(
                    failures <= letterlock::store::postgres::POOL_SIZE + 1,
                    "the store did not recover: {failures} failures"
                );
            }
            Err(other) => panic!("unexpected error after the kill: {other}"),
        }
    };
    assert!(
        matches!(
            outcome,
            InsertOutcome::Inserted | InsertOutcome::Duplicate { .. }
        ),
        "{outcome:?}"
    );
    assert_eq!(store.list_inbox().await.unwrap().len(), 9);
    // Large bodies use connections of their own: those recover too.
    let data = common::data(LARGE_LEN);
    let body = stage(&store, &data);
    store
        .insert_inbox(inbox_record(2, id(0x61), body))
        .await
        .unwrap();
    let found = store.find_inbox("61").await.unwrap();
    assert!(read_all(found.body).await == data);
    assert!(store.integrity_check().await.unwrap());
    drop(admin);
    driver.await.unwrap().unwrap();
}

/// Locks the inbox and the outbox on a connection of its own (`LOCK TABLE` in an open
/// transaction) until `COMMIT`: the store's writes wait behind it, so everything submitted
/// meanwhile is in flight at once.
async fn lock_mailbox_tables(url: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    admin
        .batch_execute("BEGIN; LOCK TABLE inbox, outbox IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    (admin, driver)
}

/// Waits until `n` writes are in flight in `store` (submitted, not answered). Polls without a
/// deadline of its own (the test harness's timeout applies).
async fn wait_in_flight(store: &PostgresStore, n: usize) {
    while store.writes_in_flight() < n {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Group commit: many concurrent inserts and enqueues share a few transactions, and each gets
/// the answer it would get alone, duplicates and conflicts mixed in: across batches (an id
/// stored before), inside one batch (two requests with one id), with large chunked bodies (a
/// duplicate's staged copy is removed), and in the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_group_commit_shares_transactions_and_answers_each_write() {
    let (db, store) = postgres_store().await;
    let earlier = inbox_record(9, id(200), Body::from_bytes(b"stored before".to_vec()));
    let earlier_tag = earlier.ack_tag;
    assert_eq!(
        store.insert_inbox(earlier).await.unwrap(),
        InsertOutcome::Inserted
    );
    let large = common::data(LARGE_LEN);
    let (large_a, large_b) = (stage(&store, &large), stage(&store, &large));
    let before = store.0.stats();

    // What each request should get: Some(outcome) when fixed; a pair sharing an id gets one
    // Inserted and the other the pair's answer, in whichever order the batch holds them.
    let mut requests: Vec<(InboxRecord, Option<InsertOutcome>)> = Vec::new();
    for n in 0..40u8 {
        let record = inbox_record(9, id(n), Body::from_bytes(vec![n; 1024]));
        requests.push((record, Some(InsertOutcome::Inserted)));
    }
    let mut retry = inbox_record(9, id(200), Body::from_bytes(b"stored before".to_vec()));
    retry.ack_tag = [0xEE; 32];
    requests.push((
        retry,
        Some(InsertOutcome::Duplicate {
            ack_tag: earlier_tag,
        }),
    ));
    let clash = inbox_record(9, id(200), Body::from_bytes(b"other bytes".to_vec()));
    requests.push((clash, Some(InsertOutcome::Conflict)));
    let pairs: [(u8, Body, Body); 3] = [
        // Same bytes twice: a retry racing its original.
        (
            100,
            Body::from_bytes(b"twice".to_vec()),
            Body::from_bytes(b"twice".to_vec()),
        ),
        // One id, other bytes.
        (
            101,
            Body::from_bytes(b"one".to_vec()),
            Body::from_bytes(b"two".to_vec()),
        ),
        // A large message and its retry, each staged in chunks.
        (102, large_a, large_b),
    ];
    for (n, first, second) in pairs {
        let first = inbox_record(10, id(n), first);
        let mut second = inbox_record(10, id(n), second);
        second.ack_tag = [n; 32];
        requests.push((first, None));
        requests.push((second, None));
    }
    // id 1 is queued twice at once: one of the two is refused, whichever the batch took
    // second (the tasks race), and one stays.
    let outbox = [id(1), id(2), id(1)];
    let total = requests.len() + outbox.len();

    let (admin, driver) = lock_mailbox_tables(&db.url).await;
    let mut inbox_tasks = Vec::new();
    for (record, expected) in requests {
        let store = store.clone();
        let key = (record.sender_key_id, record.message_id);
        let sent = (record.content_hash, record.ack_tag);
        inbox_tasks.push((
            key,
            sent,
            expected,
            tokio::spawn(async move { store.insert_inbox(record).await }),
        ));
    }
    let mut outbox_tasks = Vec::new();
    for message_id in outbox {
        let store = store.clone();
        let body = Body::from_bytes(vec![message_id[0]; 300]);
        let record = outbox_record(4, message_id, body, [message_id[0]; 32]);
        outbox_tasks.push((
            message_id,
            tokio::spawn(async move { store.enqueue_outbox(record).await }),
        ));
    }
    wait_in_flight(&store.0, total).await;
    admin.batch_execute("COMMIT").await.unwrap();

    // Per (sender, id): what was answered, to check the pairs.
    let mut answers: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
    for (key, sent, expected, task) in inbox_tasks {
        let outcome = task.await.unwrap().unwrap();
        if let Some(expected) = expected {
            assert_eq!(outcome, expected, "{key:?}");
        }
        answers.entry(key).or_default().push((sent, outcome));
    }
    for n in [100u8, 101, 102] {
        let answered = &answers[&([10; 32], id(n))];
        let stored: Vec<_> = answered
            .iter()
            .filter(|(_, o)| *o == InsertOutcome::Inserted)
            .collect();
        assert_eq!(stored.len(), 1, "id {n}: {answered:?}");
        let (stored_hash, stored_tag) = stored[0].0;
        let other = answered
            .iter()
            .find(|(_, o)| *o != InsertOutcome::Inserted)
            .expect("the pair's second answer");
        let expected = if other.0.0 == stored_hash {
            InsertOutcome::Duplicate {
                ack_tag: stored_tag,
            }
        } else {
            InsertOutcome::Conflict
        };
        assert_eq!(other.1, expected, "id {n}");
        // What a later retry is told agrees with the answers given in the batch.
        let known = store.known_inbox(&[10; 32], &id(n)).await.unwrap().unwrap();
        assert_eq!(
            (known.content_hash, known.ack_tag),
            (stored_hash, stored_tag)
        );
    }
    let (mut queued, mut refused) = (Vec::new(), Vec::new());
    for (message_id, task) in outbox_tasks {
        match task.await.unwrap() {
            Ok(()) => queued.push(message_id),
            Err(StoreError::OutboxDuplicate { .. }) => refused.push(message_id),
            Err(other) => panic!("outbox {message_id:?}: {other}"),
        }
    }
    queued.sort();
    assert_eq!(queued, [id(1), id(2)], "each id queued once");
    assert_eq!(refused, [id(1)], "the second of id 1 refused");

    let after = store.0.stats();
    let writes = after.writes_committed - before.writes_committed;
    let transactions = after.batches_committed - before.batches_committed;
    assert_eq!(writes, total as u64);
    assert!(
        transactions < writes,
        "{writes} writes took {transactions} transactions: no batch formed"
    );
    // 1 + 40 + 3 pairs stored; the large retry's staged copy is removed.
    assert_eq!(store.list_inbox().await.unwrap().len(), 44);
    assert_eq!(store.pending_outbox(&[4; 32]).await.unwrap().len(), 2);
    let found = store.find_inbox("66").await.unwrap();
    assert!(read_all(found.body).await == large);
    wait_for_bodies(&store.0, 1).await;
    assert!(store.integrity_check().await.unwrap());
    drop(admin);
    driver.await.unwrap();
}

/// A batch whose connection is lost fails as a whole with "unavailable", and nothing of it is
/// visible: the store's connections are killed while its batches wait behind a lock. Writes
/// queued behind the killed batches may then commit on fresh connections; each write is stored
/// exactly when it was acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lost_connection_fails_its_batch_and_writes_nothing() {
    let (db, store) = postgres_store().await;
    let (admin, driver) = lock_mailbox_tables(&db.url).await;
    let total = 48u8;
    let mut tasks = Vec::new();
    for n in 0..total {
        let store = store.clone();
        let record = inbox_record(11, id(n), Body::from_bytes(vec![n; 1024]));
        tasks.push((
            n,
            tokio::spawn(async move { store.insert_inbox(record).await }),
        ));
    }
    wait_in_flight(&store.0, usize::from(total)).await;
    // Once a batch waits for the lock, kill the connections of all that do, then let go.
    loop {
        let killed = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if killed > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    admin.batch_execute("COMMIT").await.unwrap();

    let mut acked = Vec::new();
    let mut failed = 0;
    for (n, task) in tasks {
        match task.await.unwrap() {
            Ok(outcome) => {
                assert_eq!(outcome, InsertOutcome::Inserted, "id {n}");
                acked.push(id(n));
            }
            Err(e) if e.is_unavailable() => failed += 1,
            Err(other) => panic!("id {n}: a lost connection gave {other}"),
        }
    }
    assert!(failed >= 1, "no write failed with its killed batch");
    // The pool may still hold a connection this test killed whose end its connection task has
    // not noticed yet: that request fails as unavailable (as a server's would, and its client
    // retries), and the pool drops the connection. Read as a retrying client would.
    let mut listed = store.list_inbox().await;
    for _ in 0..8 {
        match &listed {
            Err(e) if e.is_unavailable() => listed = store.list_inbox().await,
            _ => break,
        }
    }
    let mut stored: Vec<_> = listed.unwrap().into_iter().map(|s| s.message_id).collect();
    stored.sort();
    acked.sort();
    assert_eq!(stored, acked, "stored and acked differ");
    assert!(store.integrity_check().await.unwrap());
    drop(admin);
    driver.await.unwrap();
}

/// An unreachable database is a `Connect` error naming it without its password.
#[tokio::test]
async fn an_unreachable_database_says_so_without_the_password() {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!(
        "postgres://someone:secret-word@/nothing?host={}",
        dir.path().display()
    );
    match PostgresStore::connect(&url).await {
        Err(err @ StoreError::Connect { .. }) => {
            let text = err.to_string();
            assert!(text.contains("someone@"), "{text}");
            assert!(!text.contains("secret-word"), "{text}");
        }
        other => panic!("connecting to nothing did not fail as unreachable: {other:?}"),
    }
}

#[test]
fn a_test_database_url_keeps_the_server_and_query() {
    use common::postgres::with_database;
    assert_eq!(
        with_database("postgres://u@h:5/old?host=/tmp/x&port=1", "new"),
        "postgres://u@h:5/new?host=/tmp/x&port=1"
    );
    assert_eq!(with_database("postgres://u@h", "new"), "postgres://u@h/new");
    assert_eq!(with_database("postgresql://h/db", "n"), "postgresql://h/n");
}

/// Committed inserts per second of the PostgreSQL store alone, 1 KiB bodies: one writer, then
/// 64 concurrent writers over the pool. Prints the figures; asserts only that every insert
/// landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a store throughput measurement"]
async fn postgres_committed_inserts_per_second() {
    let (_db, store) = postgres_store().await;
    let body = common::data(1024);
    let sequential = 1_000u32;
    let started = std::time::Instant::now();
    for n in 0..sequential {
        let mut record = inbox_record(1, id(0), Body::from_bytes(body.clone()));
        record.message_id[..4].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            store.insert_inbox(record).await.unwrap(),
            InsertOutcome::Inserted
        );
    }
    let one = f64::from(sequential) / started.elapsed().as_secs_f64();

    let (writers, each) = (64u32, 100u32);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..each {
                let mut record = inbox_record(2, id(0), Body::from_bytes(body.clone()));
                record.message_id[..4].copy_from_slice(&w.to_be_bytes());
                record.message_id[4..8].copy_from_slice(&n.to_be_bytes());
                assert_eq!(
                    store.insert_inbox(record).await.unwrap(),
                    InsertOutcome::Inserted
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let many = f64::from(writers * each) / started.elapsed().as_secs_f64();
    assert_eq!(
        store.list_inbox().await.unwrap().len() as u32,
        sequential + writers * each
    );
    let stats = store.0.stats();
    println!(
        "PostgreSQL store, committed 1 KiB inserts: {one:.0}/s with one writer, \
         {many:.0}/s with {writers} concurrent writers (group commit: {} inserts in {} \
         transactions)",
        stats.writes_committed, stats.batches_committed
    );
}

// ---------------------------------------------------------------------------------------------
// The binary over PostgreSQL

/// Runs `letterlock ARGS` in `dir`; returns stdout and stderr, asserting success.
fn letterlock_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "letterlock {args:?} failed:\n{text}");
    text
}

/// A key folder for both ends from the fixed test keys (bob serves, alice is the client).
fn key_folder() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::TempDir::new().unwrap();
    for (from, to) in [("bob2048", "server"), ("alice2048", "client")] {
        for half in ["private", "public"] {
            let target = dir.path().join(format!("{to}_{half}.pem"));
            std::fs::copy(
                common::keys_dir().join(format!("{from}_{half}.pem")),
                &target,
            )
            .unwrap();
            if half == "private" {
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
    dir
}

/// `letterlock server migrate` and `letterlock server --store postgres://...`: the schema is
/// created once, a message sent to the server lands in the database, one queued for the
/// client is delivered from it once, and `server inbox` / `server read` find it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_binary_keeps_its_mailbox_in_postgres() {
    let db = common::postgres::database().await;
    let keys = key_folder();
    let d = keys.path();
    let url = db.url.as_str();
    let out = letterlock_ok(d, &["server", "migrate", "--store", url]);
    let created = format!("schema created at version {SCHEMA_VERSION}");
    assert!(out.contains(&created), "{out}");
    let out = letterlock_ok(d, &["server", "migrate", "--store", url]);
    assert!(out.contains("up to date"), "{out}");

    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--store", url])
        .current_dir(d);
    let (mut child, addr) = common::spawn_server(cmd);
    let client = |args: &[&str]| {
        let mut all = vec!["client"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &addr]);
        letterlock_ok(d, &all)
    };
    let sent = client(&["send_msg", "hello over postgres", "--mode", "hybrid"]);
    assert!(sent.contains("delivered"), "{sent}");
    letterlock_ok(
        d,
        &[
            "server",
            "send_msg",
            "--to",
            "client",
            "--store",
            url,
            "reply from postgres",
        ],
    );
    let got = client(&["recv_msg"]);
    assert!(got.contains("reply from postgres"), "{got}");
    let again = client(&["recv_msg"]);
    assert!(again.contains("no messages"), "{again}");
    // Removed by the client's ack, not merely leased: the listing shows leased entries too.
    let store = PostgresStore::connect(url).await.unwrap();
    let client_key = common::public("alice2048").id().0;
    assert!(store.pending_outbox(&client_key).await.unwrap().is_empty());
    let _ = child.kill();
    let _ = child.wait();

    let inbox = letterlock_ok(d, &["server", "inbox", "--json", "--store", url]);
    let json_end = inbox.rfind(']').map_or(inbox.len(), |i| i + 1);
    let rows: serde_json::Value = serde_json::from_str(&inbox[..json_end]).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{inbox}");
    let id = rows[0]["id"].as_str().unwrap();
    let text = letterlock_ok(d, &["server", "read", &id[..10], "--store", url]);
    assert!(text.starts_with("hello over postgres"), "{text}");
    assert!(store.integrity_check().await.unwrap());

    // `server copy-store` from an (empty) SQLite mailbox: nothing to add, and it says so.
    letterlock_ok(d, &["server", "migrate", "--store", "mail.db"]);
    let out = letterlock_ok(
        d,
        &["server", "copy-store", "--from", "mail.db", "--to", url],
    );
    assert!(
        out.contains("copied 0 inbox messages and 0 outbox messages"),
        "{out}"
    );

    // What an operator gets wrong is said as such.
    let fails = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success(), "letterlock {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails(&["server", "copy-store", "--from", "nothing.db", "--to", url]);
    assert!(err.contains("no SQLite mailbox at nothing.db"), "{err}");
    assert!(
        !d.join("nothing.db.lock").exists(),
        "a lock file was left for no mailbox"
    );
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--store", "mail.db"])
        .current_dir(d);
    let (mut running, _) = common::spawn_server(cmd);
    let err = fails(&["server", "copy-store", "--from", "mail.db", "--to", url]);
    assert!(err.contains("is running on mail.db"), "{err}");
    let _ = running.kill();
    let _ = running.wait();
    let bad = format!("{url}&bogus=1");
    let bad = if url.contains('?') {
        bad
    } else {
        format!("{url}?bogus=1")
    };
    let err = fails(&["server", "migrate", "--store", &bad]);
    assert!(
        err.contains("the mailbox database URL is not valid"),
        "{err}"
    );
    let err = fails(&["server", "migrate", "--store", "postgres:/u@db/mail"]);
    assert!(err.contains("does not start with postgres://"), "{err}");
}

/// Kills a server process when the test ends, pass or fail.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two `letterlock server` processes over one PostgreSQL share the trust list: a client both
/// refused is accepted by either once `server trust` has run against the database (no server
/// contacted, none restarted), its message is readable through `server read`, and after
/// `server untrust` both refuse it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_binaries_follow_trust_changes_in_postgres() {
    use std::os::unix::fs::PermissionsExt;
    let db = common::postgres::database().await;
    let url = db.url.as_str();
    let root = tempfile::TempDir::new().unwrap();
    let (srv, bob) = (root.path().join("srv"), root.path().join("bob"));
    for (dir, key, role) in [(&srv, "bob2048", "server"), (&bob, "mallory", "client")] {
        std::fs::create_dir(dir).unwrap();
        let private = dir.join(format!("{role}_private.pem"));
        std::fs::copy(common::private_path(key), &private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::copy(
            common::public_path(key),
            dir.join(format!("{role}_public.pem")),
        )
        .unwrap();
    }
    std::fs::copy(
        common::public_path("bob2048"),
        bob.join("server_public.pem"),
    )
    .unwrap();

    let start = || {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--keys", "srv"])
            .args(["--store", url])
            .current_dir(root.path());
        let (child, addr) = common::spawn_server(cmd);
        (Running(child), addr)
    };
    let (_first, first) = start();
    let (_second, second) = start();
    let send = |addr: &str, text: &str| {
        std::process::Command::new(common::BIN)
            .args(["client", "send_msg", text, "--server", addr, "--keys", "."])
            .current_dir(&bob)
            .output()
            .unwrap()
    };
    let refused = |addr: &str, when: &str| {
        let out = send(addr, when);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{when}: accepted by {addr}");
        assert!(err.contains("refused our key"), "{when}: {err}");
    };
    refused(&first, "before trust");
    refused(&second, "before trust");

    let said = letterlock_ok(
        root.path(),
        &[
            "server",
            "trust",
            "bob/client_public.pem",
            "--name",
            "bob",
            "--keys",
            "srv",
            "--store",
            url,
        ],
    );
    assert!(said.contains("trusting bob"), "{said}");
    for (addr, text) in [(&second, "via the second"), (&first, "via the first")] {
        let out = send(addr, text);
        assert!(
            out.status.success(),
            "{text}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let clients = letterlock_ok(
        root.path(),
        &[
            "server", "clients", "--json", "--keys", "srv", "--store", url,
        ],
    );
    let json_end = clients.rfind(']').map_or(clients.len(), |i| i + 1);
    let rows: serde_json::Value = serde_json::from_str(&clients[..json_end]).unwrap();
    assert_eq!(rows[0]["name"], "bob", "{clients}");
    assert_eq!(rows[0]["messages"], 2, "{clients}");
    let inbox = letterlock_ok(
        root.path(),
        &[
            "server", "inbox", "--from", "bob", "--json", "--keys", "srv", "--store", url,
        ],
    );
    let json_end = inbox.rfind(']').map_or(inbox.len(), |i| i + 1);
    let rows: serde_json::Value = serde_json::from_str(&inbox[..json_end]).unwrap();
    let id = rows[0]["id"].as_str().unwrap();
    let text = letterlock_ok(
        root.path(),
        &[
            "server", "read", id, "--from", "bob", "--keys", "srv", "--store", url,
        ],
    );
    assert!(text.starts_with("via the second"), "{text}");

    letterlock_ok(
        root.path(),
        &["server", "untrust", "bob", "--keys", "srv", "--store", url],
    );
    refused(&first, "after untrust");
    refused(&second, "after untrust");
}

/// A server whose database goes away answers a send "unavailable" (retryable), never an ack
/// and never "internal"; once the database is back the same server, without a restart, stores
/// the resent message exactly once. The database is taken away by refusing new connections
/// and terminating the store's, so every request meanwhile must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_without_its_database_answers_unavailable_then_recovers() {
    use letterlock::client::{Client, ClientConfig, ClientError};
    use letterlock::wire::ErrorCode;
    use std::sync::Arc;

    let db = common::postgres::database().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let (addr, stop, task) = run_postgres_server(store.clone()).await;
    let connect = || async {
        Client::connect(
            &addr,
            common::private(common::net::CLIENT),
            common::public(common::net::SERVER),
            ClientConfig::default(),
        )
        .await
        .unwrap()
    };
    let (bytes, sealed) = common::net::seal_to_server(
        common::net::CLIENT,
        b"sent while the database was away",
        [0x5a; 16],
        letterlock::envelope::unix_now(),
    );

    // Administered from the maintenance database: a database cannot lock itself out.
    let name: String = {
        let (c, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let name = c
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        drop(c);
        let _ = driver.await;
        name
    };
    let admin_url = common::postgres::with_database(&db.url, "postgres");
    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
        ))
        .await
        .unwrap();
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();

    // Down: every attempt is refused as unavailable, none is acked.
    for _ in 0..3 {
        let mut client = connect().await;
        match client.send_sealed(&bytes, &sealed).await {
            Err(ClientError::Refused {
                code: ErrorCode::Unavailable,
                ..
            }) => {}
            other => panic!("a send without a database must be refused as unavailable: {other:?}"),
        }
    }

    // Back: the same server stores the resent message, once; a second resend is acked
    // idempotently and stores nothing more.
    admin
        .batch_execute(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    for _ in 0..2 {
        let mut client = connect().await;
        let delivery = client.send_sealed(&bytes, &sealed).await.unwrap();
        assert_eq!(delivery.id, sealed.header.message_id);
    }
    let inbox = store.list_inbox().await.unwrap();
    assert_eq!(
        inbox.len(),
        1,
        "the resent message must be stored exactly once"
    );

    let _ = stop.send(());
    task.await.unwrap();
    drop(admin);
    let _ = driver.await;
}

/// An in-process server over `store` on 127.0.0.1:0, with the test server key and clients:
/// its address, and what stops it.
async fn run_postgres_server(
    store: std::sync::Arc<PostgresStore>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let server = std::sync::Arc::new(letterlock::server::Server::new(
        common::private(common::net::SERVER),
        common::net::clients(),
        store,
        letterlock::server::ServerConfig::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, task)
}

/// Fetches on a raw connection without acking: how many messages were delivered.
async fn fetch_without_ack(raw: &mut common::peer::Raw) -> u32 {
    use letterlock::wire::Frame;
    raw.w.write_frame(&Frame::Fetch).await.unwrap();
    loop {
        match raw.r.read_frame().await.unwrap() {
            Frame::Deliver(_) | Frame::DeliverEnd => {}
            Frame::FetchDone { count } => return count,
            other => panic!("unexpected frame during a fetch: {other:?}"),
        }
    }
}

/// A client that fetches through one server and goes away without acking: its server releases
/// the lease, so a fetch through another server gets the message long before the 60 s lease
/// would have expired. While the first connection holds it, the other server's fetch gets
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_releases_the_leases_of_an_unacked_fetch() {
    use std::sync::Arc;
    let db = common::postgres::database().await;
    let (a, b) = tokio::join!(
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url)
    );
    let (a, b) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
    let to = common::net::clients().by_name("client").unwrap().clone();
    letterlock::server::queue_for_client(
        a.as_ref(),
        common::private(common::net::SERVER),
        &to,
        std::io::Cursor::new(b"fetched, never acked".to_vec()),
        &letterlock::envelope::SealOptions::default(),
    )
    .await
    .unwrap();
    let (addr_a, stop_a, task_a) = run_postgres_server(a.clone()).await;
    let (addr_b, stop_b, task_b) = run_postgres_server(b.clone()).await;

    let mut first = common::peer::authed(&addr_a).await;
    assert_eq!(fetch_without_ack(&mut first).await, 1);
    // Held by the first connection: the other server has nothing to deliver.
    let mut second = common::peer::authed(&addr_b).await;
    assert_eq!(fetch_without_ack(&mut second).await, 0);
    drop(first);

    // The release runs as the first connection ends; wait for it, far below the lease.
    let recipient = to.key.id().0;
    let mut free = false;
    for _ in 0..100 {
        let leased = b.lease_outbox(&recipient, std::time::Duration::ZERO).await;
        if leased.unwrap().len() == 1 {
            free = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(free, "the unacked message's lease was not released");
    // And the client's next fetch, through the other server, gets it.
    assert_eq!(fetch_without_ack(&mut second).await, 1);

    drop(second);
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    task_a.await.unwrap();
    task_b.await.unwrap();
}

/// A SQLite mailbox opened through a symbolic link to its file keeps its bodies beside the
/// file itself (where a server opened by the real path, and its lock, are); bodies an earlier
/// letterlock kept beside the link stop the open with what to do; a file with several names
/// (hard links) is refused before anything is created beside the other name.
#[test]
fn a_sqlite_mailbox_through_a_link_keeps_one_body_folder() {
    let dir = tempfile::TempDir::new().unwrap();
    let (disk, srv, other) = (
        dir.path().join("disk"),
        dir.path().join("srv"),
        dir.path().join("other"),
    );
    for d in [&disk, &srv, &other] {
        std::fs::create_dir(d).unwrap();
    }
    // Opened through srv/NAME, a link to disk/NAME: the bodies are beside disk/NAME only.
    let bodies_beside_the_file = |name: &str| {
        let store = SqliteStore::open(srv.join(name)).unwrap();
        let blobs = format!("{name}.blobs");
        assert_eq!(
            store.blob_dir(),
            std::fs::canonicalize(disk.join(&blobs)).unwrap()
        );
        drop(store);
        assert!(!srv.join(&blobs).exists(), "a body folder beside the link");
    };
    drop(SqliteStore::open(disk.join("mail.db")).unwrap());
    std::os::unix::fs::symlink(disk.join("mail.db"), srv.join("mail.db")).unwrap();
    bodies_beside_the_file("mail.db");

    // An earlier letterlock's bodies beside the link.
    std::fs::create_dir(srv.join("mail.db.blobs")).unwrap();
    std::fs::write(
        srv.join("mail.db.blobs")
            .join(format!("{}.blob", "ab".repeat(16))),
        b"x",
    )
    .unwrap();
    let Err(err) = SqliteStore::open(srv.join("mail.db")) else {
        panic!("opened");
    };
    assert!(
        matches!(err, letterlock::store::StoreError::BodiesBesideLink { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("mv "), "{err}");

    // A link made before the file: the file is made where it leads, its bodies beside it.
    std::os::unix::fs::symlink(disk.join("later.db"), srv.join("later.db")).unwrap();
    bodies_beside_the_file("later.db");
    assert!(disk.join("later.db").is_file());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(disk.join("later.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the new database is readable by others: {mode:o}"
        );
    }

    // A second name for the file.
    std::fs::hard_link(disk.join("mail.db"), other.join("mail.db")).unwrap();
    let Err(err) = SqliteStore::open(other.join("mail.db")) else {
        panic!("opened");
    };
    assert!(
        matches!(
            err,
            letterlock::store::StoreError::HardLinked { links: 2, .. }
        ),
        "{err}"
    );
    assert!(!other.join("mail.db.blobs").exists());
}

/// A wrong password is reported as a refused login (SQLSTATE 28P01), with the URL's user and
/// password to check, not as a database that could not be reached and a "retry" (found by a
/// trial run); the right password works, so it is the password that was refused. A URL asking
/// for TLS (`sslmode=require`), which the store does not have, is refused before any
/// connection, saying so; `sslmode=prefer` connects without TLS. The shared test cluster trusts
/// every local login, so this test starts a cluster of its own whose pg_hba.conf asks every
/// role but `postgres` for its password (scram-sha-256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_wrong_password_is_a_refused_login_not_an_outage() {
    use std::os::unix::fs::PermissionsExt;
    const RIGHT: &str = "correct-horse";
    const WRONG: &str = "battery-staple";
    // Readable by the cluster's user (`postgres` when the tests run as root).
    let hba = tempfile::TempDir::new().unwrap();
    std::fs::set_permissions(hba.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hba_file = hba.path().join("pg_hba.conf");
    std::fs::write(
        &hba_file,
        "local all postgres trust\nlocal all all scram-sha-256\n",
    )
    .unwrap();
    std::fs::set_permissions(&hba_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let options = format!("-c hba_file={}", hba_file.display());
    let cluster = tokio::task::block_in_place(|| {
        letterlock_cli::pgcluster::Cluster::start_from_cache("letterlock-pg-auth-", &options, cache)
    })
    .unwrap_or_else(|e| {
        panic!(
            "could not start a throwaway PostgreSQL: {e}; install PostgreSQL's server binaries \
             (Debian/Ubuntu: `apt-get install postgresql`)"
        )
    });
    let (admin, connection) = tokio_postgres::connect(cluster.admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    // One at a time: CREATE DATABASE runs outside a transaction block.
    for sql in [
        format!("CREATE ROLE mailer LOGIN PASSWORD '{RIGHT}'"),
        "CREATE DATABASE mail OWNER mailer".to_owned(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    drop(admin);
    let _ = driver.await;
    // The admin URL is postgres://postgres@/postgres?host=FOLDER&port=PORT.
    let socket = cluster
        .admin_url()
        .split_once('?')
        .map(|(_, query)| query.to_owned())
        .unwrap();
    let url =
        |password: &str, extra: &str| format!("postgres://mailer:{password}@/mail?{socket}{extra}");

    let d = tempfile::TempDir::new().unwrap();
    let wrong = url(WRONG, "");
    let out = std::process::Command::new(common::BIN)
        .args(["server", "migrate", "--store", &wrong])
        .current_dir(d.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused the login"), "{said}");
    assert!(said.contains("check the URL's user and password"), "{said}");
    assert!(said.contains("password authentication failed"), "{said}");
    assert!(
        !said.contains("retry") && !said.contains("could not reach"),
        "{said}"
    );
    assert!(!said.contains(WRONG), "the password was shown: {said}");
    // And in the library, for a password that is wrong and for one the URL lacks.
    for url in [wrong.clone(), format!("postgres://mailer@/mail?{socket}")] {
        match PostgresStore::connect(&url).await {
            Err(e @ StoreError::LoginRefused { .. }) => assert!(e.is_unavailable()),
            Err(e) => panic!("not a refused login: {e}"),
            Ok(_) => panic!("connected without the right password"),
        }
    }

    // TLS asked for: refused before connecting, not a handshake error.
    let out = std::process::Command::new(common::BIN)
        .args([
            "server",
            "migrate",
            "--store",
            &url(RIGHT, "&sslmode=require"),
        ])
        .current_dir(d.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("TLS to PostgreSQL is not built") && said.contains("sslmode=require"),
        "{said}"
    );
    assert!(!said.contains("handshake"), "{said}");

    let out = letterlock_ok(
        d.path(),
        &[
            "server",
            "migrate",
            "--store",
            &url(RIGHT, "&sslmode=prefer"),
        ],
    );
    assert!(out.contains("schema created"), "{out}");
}
