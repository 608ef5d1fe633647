//! Tests of the durable mailbox (`letterlock::store`).

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Rng;
use common::records::{id, outbox_record, stage};
use letterlock::store::{
    Body, Completion, INLINE_MAX, InboxRecord, InsertOutcome, KeyEnd, MODE_HYBRID, SqliteOptions,
    SqliteStore, Store, StoreError, TrustOutcome, TrustRequest,
};
use tempfile::TempDir;

/// A body comfortably over the inline threshold, so it lands in a file.
const LARGE_LEN: usize = 3 * INLINE_MAX + 123;

/// The path of a store in a new temporary folder, which lives as long as the returned `TempDir`.
fn temp_db() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("mail.db");
    (dir, path)
}

/// A new store in a new temporary folder, which lives as long as the returned `TempDir`.
fn temp_store() -> (TempDir, SqliteStore) {
    let (dir, path) = temp_db();
    let store = SqliteStore::open(path).expect("open");
    (dir, store)
}

fn inbox_record(sender: u8, id: [u8; 16], body: Body) -> InboxRecord {
    InboxRecord {
        sender_key_id: [sender; 32],
        sender_name: format!("sender-{sender}"),
        message_id: id,
        created: 1_700_000_000,
        received: 1_700_000_100,
        mode: MODE_HYBRID,
        plaintext_len: body.len().saturating_sub(100),
        content_hash: body.sha256().expect("a store writer hashes"),
        ack_tag: [id[0] ^ 0xA5; 32],
        body,
    }
}

/// The sorted names of the files in `dir` that `keep` accepts.
fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read blob dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| keep(n))
        .collect();
    names.sort();
    names
}

/// Finished body files (not temp files, not the lock file) in the blob folder.
fn blob_files(dir: &Path) -> Vec<String> {
    files_in(dir, |n| n.ends_with(".blob"))
}

/// How many outbox messages wait for the recipient with key id `recipient`.
async fn pending_len(store: &SqliteStore, recipient: &[u8; 32]) -> usize {
    store
        .pending_outbox(recipient)
        .await
        .expect("pending")
        .len()
}

fn read_all(mut reader: Box<dyn Read + Send>) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read body");
    out
}

#[tokio::test]
async fn insert_duplicate_and_conflict() {
    let (_dir, store) = temp_store();

    let first = inbox_record(1, id(1), Body::from_bytes(b"sealed one".to_vec()));
    let ack = first.ack_tag;
    assert_eq!(
        store.insert_inbox(first).await.expect("insert"),
        InsertOutcome::Inserted
    );

    // A retry with the same bytes gets the stored ack tag back, even if the
    // retrying request computed a different one.
    let mut retry = inbox_record(1, id(1), Body::from_bytes(b"sealed one".to_vec()));
    retry.ack_tag = [0; 32];
    assert_eq!(
        store.insert_inbox(retry).await.expect("retry"),
        InsertOutcome::Duplicate { ack_tag: ack }
    );

    let clash = inbox_record(1, id(1), Body::from_bytes(b"other bytes".to_vec()));
    assert_eq!(
        store.insert_inbox(clash).await.expect("clash"),
        InsertOutcome::Conflict
    );

    // Same message id from another sender is a different message.
    let other_sender = inbox_record(2, id(1), Body::from_bytes(b"other bytes".to_vec()));
    assert_eq!(
        store.insert_inbox(other_sender).await.expect("insert"),
        InsertOutcome::Inserted
    );

    let listed = store.list_inbox().await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(store.integrity_check().await.expect("check"));
    store.close().await.expect("close");
}

#[tokio::test]
async fn inline_and_file_bodies_round_trip() {
    let (_dir, store) = temp_store();

    let small = Rng(1).bytes(INLINE_MAX); // exactly the threshold: still inline
    let body = stage(&store, &small);
    assert!(!body.is_file());
    store
        .insert_inbox(inbox_record(1, id(0xA0), body))
        .await
        .expect("insert small");
    assert!(blob_files(store.blob_dir()).is_empty());

    let large = Rng(2).bytes(LARGE_LEN);
    let body = stage(&store, &large);
    assert!(body.is_file());
    assert_eq!(body.len(), LARGE_LEN as u64);
    assert_eq!(
        store
            .insert_inbox(inbox_record(1, id(0xB0), body))
            .await
            .expect("insert large"),
        InsertOutcome::Inserted
    );
    let files = blob_files(store.blob_dir());
    assert_eq!(files.len(), 1);

    let msg = store.find_inbox("a0").await.expect("find small");
    assert_eq!(msg.summary.body_size, INLINE_MAX as u64);
    assert_eq!(read_all(msg.body), small);
    let msg = store
        .find_inbox(&hex::encode(id(0xB0)))
        .await
        .expect("find large by full id");
    assert_eq!(msg.summary.body_size, LARGE_LEN as u64);
    assert_eq!(read_all(msg.body), large);

    // A duplicate's freshly staged file is removed again.
    let again = stage(&store, &large);
    assert_eq!(blob_files(store.blob_dir()).len(), 2);
    assert!(matches!(
        store
            .insert_inbox(inbox_record(1, id(0xB0), again))
            .await
            .expect("duplicate"),
        InsertOutcome::Duplicate { .. }
    ));
    assert_eq!(blob_files(store.blob_dir()), files);

    // So is a conflict's.
    let different = stage(&store, &Rng(3).bytes(LARGE_LEN));
    assert_eq!(
        store
            .insert_inbox(inbox_record(1, id(0xB0), different))
            .await
            .expect("conflict"),
        InsertOutcome::Conflict
    );
    assert_eq!(blob_files(store.blob_dir()), files);

    // A staged body that is never inserted removes its own file.
    drop(stage(&store, &large));
    assert_eq!(blob_files(store.blob_dir()), files);
    assert!(store.integrity_check().await.expect("check"));
}

#[tokio::test]
async fn find_inbox_by_prefix() {
    let (_dir, store) = temp_store();
    for n in [0xC1, 0xC2, 0xD0] {
        store
            .insert_inbox(inbox_record(1, id(n), Body::from_bytes(vec![n; 10])))
            .await
            .expect("insert");
    }
    let found = store.find_inbox("D").await.expect("find");
    assert_eq!(found.summary.message_id, id(0xD0));
    assert_eq!(read_all(found.body), vec![0xD0; 10]);
    assert!(matches!(
        store.find_inbox("c").await,
        Err(StoreError::Ambiguous { .. })
    ));
    assert!(matches!(
        store.find_inbox("c2").await,
        Ok(msg) if msg.summary.message_id == id(0xC2)
    ));
    assert!(matches!(
        store.find_inbox("e").await,
        Err(StoreError::NotFound { .. })
    ));
    for bad in ["", "xyz", &"0".repeat(33)] {
        assert!(matches!(
            store.find_inbox(bad).await,
            Err(StoreError::BadIdPrefix { .. })
        ));
    }
}

#[tokio::test]
async fn everything_survives_reopen() {
    let (_dir, path) = temp_db();
    let large = Rng(4).bytes(LARGE_LEN);
    {
        let store = SqliteStore::open(&path).expect("open");
        store
            .insert_inbox(inbox_record(1, id(1), Body::from_bytes(b"small".to_vec())))
            .await
            .expect("insert small");
        let body = stage(&store, &large);
        store
            .insert_inbox(inbox_record(1, id(2), body))
            .await
            .expect("insert large");
        let body = stage(&store, &large);
        store
            .enqueue_outbox(outbox_record(7, id(3), body, [3; 32]))
            .await
            .expect("enqueue");
        // Dropped without close(): drop also drains the writer.
    }
    let store = SqliteStore::open(&path).expect("reopen");
    let listed = store.list_inbox().await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].sender_name, "sender-1");
    assert_eq!(
        read_all(store.find_inbox("01").await.expect("find").body),
        b"small"
    );
    assert_eq!(
        read_all(store.find_inbox("02").await.expect("find").body),
        large
    );
    let pending = store.pending_outbox(&[7; 32]).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body_size, LARGE_LEN as u64);
    let body = store
        .open_outbox_body(&[7; 32], &id(3))
        .await
        .expect("open body");
    assert_eq!(read_all(body), large);
    assert_eq!(blob_files(store.blob_dir()).len(), 2);
    assert!(store.integrity_check().await.expect("check"));
}

#[tokio::test]
async fn orphan_blobs_are_swept_on_open() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).expect("open");
    let body = stage(&store, &Rng(5).bytes(LARGE_LEN));
    store
        .insert_inbox(inbox_record(1, id(1), body))
        .await
        .expect("insert");
    let kept = blob_files(store.blob_dir());
    assert_eq!(kept.len(), 1);

    // What a crash leaves behind: a finished file no row names (crash between
    // rename and commit) and a half-written temp file.
    let blob_dir = store.blob_dir().to_path_buf();
    let orphan = blob_dir.join(format!("{}.blob", "ab".repeat(16)));
    let temp = blob_dir.join(".tmp-interrupted");
    std::fs::write(&orphan, b"orphan").expect("write orphan");
    std::fs::write(&temp, b"partial").expect("write temp");
    let unrelated = blob_dir.join("README");
    std::fs::write(&unrelated, b"not ours").expect("write unrelated");

    // While another handle has the store open the files may be that
    // handle's staged bodies: no sweep.
    let second = SqliteStore::open(&path).expect("open second");
    assert!(orphan.exists() && temp.exists());
    drop(second);
    store.close().await.expect("close");

    let store = SqliteStore::open(&path).expect("reopen");
    assert!(!orphan.exists(), "orphan blob swept");
    assert!(!temp.exists(), "temp file swept");
    assert!(
        unrelated.exists(),
        "files the store did not write are left alone"
    );
    assert_eq!(blob_files(store.blob_dir()), kept);
    assert!(store.integrity_check().await.expect("check"));
}

#[tokio::test]
async fn outbox_from_second_handle_and_completion() {
    let (_dir, path) = temp_db();
    let server = SqliteStore::open(&path).expect("open server");
    // `letterlock server send_msg` opens the same file while the server runs.
    let sender = SqliteStore::open(&path).expect("open second handle");

    let large = Rng(6).bytes(LARGE_LEN);
    let tag_small = [0x51; 32];
    let tag_large = [0x52; 32];
    sender
        .enqueue_outbox(outbox_record(
            9,
            id(1),
            Body::from_bytes(b"for you".to_vec()),
            tag_small,
        ))
        .await
        .expect("enqueue small");
    let body = stage(&sender, &large);
    sender
        .enqueue_outbox(outbox_record(9, id(2), body, tag_large))
        .await
        .expect("enqueue large");
    // Same id again for the same recipient is refused, and its file removed.
    let body = stage(&sender, &large);
    assert!(matches!(
        sender
            .enqueue_outbox(outbox_record(9, id(2), body, tag_large))
            .await,
        Err(StoreError::OutboxDuplicate { .. })
    ));
    sender.close().await.expect("close second handle");
    assert_eq!(blob_files(server.blob_dir()).len(), 1);

    let pending = server.pending_outbox(&[9; 32]).await.expect("pending");
    let ids: Vec<_> = pending.iter().map(|e| e.message_id).collect();
    assert_eq!(ids, vec![id(1), id(2)], "oldest first");
    assert_eq!(pending[0].recipient_name, "client-9");
    assert_eq!(pending_len(&server, &[8; 32]).await, 0);
    assert_eq!(
        read_all(
            server
                .open_outbox_body(&[9; 32], &id(2))
                .await
                .expect("body")
        ),
        large
    );

    // Wrong tag: kept.
    assert_eq!(
        server
            .complete_outbox(&[9; 32], &id(2), &[0x53; 32])
            .await
            .expect("complete"),
        Completion::BadTag
    );
    assert_eq!(pending_len(&server, &[9; 32]).await, 2);
    assert_eq!(blob_files(server.blob_dir()).len(), 1);

    // Right tag: removed, with its file.
    assert_eq!(
        server
            .complete_outbox(&[9; 32], &id(2), &tag_large)
            .await
            .expect("complete"),
        Completion::Completed { receipt: false }
    );
    assert!(blob_files(server.blob_dir()).is_empty());
    assert_eq!(
        server
            .complete_outbox(&[9; 32], &id(1), &tag_small)
            .await
            .expect("complete"),
        Completion::Completed { receipt: false }
    );
    assert_eq!(pending_len(&server, &[9; 32]).await, 0);
    // Completing again (a repeated ack) is a harmless no.
    assert_eq!(
        server
            .complete_outbox(&[9; 32], &id(1), &tag_small)
            .await
            .expect("complete"),
        Completion::NotPending
    );
    assert!(matches!(
        server.open_outbox_body(&[9; 32], &id(1)).await,
        Err(StoreError::OutboxNotFound { .. })
    ));
    assert!(server.integrity_check().await.expect("check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_are_group_committed() {
    const TASKS: u8 = 64;
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let before = store.stats();

    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let record = inbox_record(3, id(n), Body::from_bytes(vec![n; 100]));
                store.insert_inbox(record).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("insert"),
            InsertOutcome::Inserted
        );
    }

    let listed = store.list_inbox().await.expect("list");
    assert_eq!(listed.len(), usize::from(TASKS));
    let mut ids: Vec<_> = listed.iter().map(|s| s.message_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        usize::from(TASKS),
        "each insert landed exactly once"
    );

    let stats = store.stats();
    let batches = stats.batches_committed - before.batches_committed;
    assert_eq!(
        stats.writes_committed - before.writes_committed,
        u64::from(TASKS)
    );
    assert!(
        batches < u64::from(TASKS),
        "expected group commit, got {batches} transactions for {TASKS} inserts"
    );
    assert!(store.integrity_check().await.expect("check"));
}

/// A store whose write transactions start at least `spacing` apart.
fn spaced_store(spacing: Duration) -> (TempDir, Arc<SqliteStore>) {
    let (dir, path) = temp_db();
    let options = SqliteOptions {
        commit_spacing: spacing,
    };
    let store = SqliteStore::open_with(path, options).expect("open");
    (dir, Arc::new(store))
}

/// Inserts a 100-byte message from sender 3 under id `n`, on a task of its own.
fn insert_soon(store: &Arc<SqliteStore>, n: u8) -> tokio::task::JoinHandle<InsertOutcome> {
    let store = Arc::clone(store);
    tokio::spawn(async move {
        let record = inbox_record(3, id(n), Body::from_bytes(vec![n; 100]));
        store.insert_inbox(record).await.expect("insert")
    })
}

/// Writes that keep coming share commits: while another write is announced
/// (`Store::write_coming`), one that comes less than the commit spacing after the last
/// transaction began waits for the rest of it, and the announced write, made during that wait,
/// joins its transaction instead of taking one of its own.
#[tokio::test]
async fn writes_soon_after_a_commit_share_the_next() {
    let (_dir, store) = spaced_store(Duration::from_secs(2));
    let first = insert_soon(&store, 1);
    assert_eq!(first.await.expect("task"), InsertOutcome::Inserted);
    let before = store.stats();
    let coming = store.write_coming();
    let second = insert_soon(&store, 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(coming);
    let third = insert_soon(&store, 3);
    assert_eq!(second.await.expect("task"), InsertOutcome::Inserted);
    assert_eq!(third.await.expect("task"), InsertOutcome::Inserted);
    let after = store.stats();
    assert_eq!(after.writes_committed - before.writes_committed, 2);
    assert_eq!(
        after.batches_committed - before.batches_committed,
        1,
        "two writes 50 ms apart, within the spacing, took two transactions"
    );
}

/// The spacing holds back only writes with others announced behind them: a client that waits
/// for each ack, alone on the server, never waits for writes that will not come, even right
/// after a commit.
#[tokio::test]
async fn a_write_with_none_announced_commits_at_once() {
    let (_dir, store) = spaced_store(Duration::from_secs(60));
    for n in 1..=3 {
        let alone = tokio::time::timeout(Duration::from_secs(20), insert_soon(&store, n)).await;
        let outcome = alone.expect("a lone write waited for the commit spacing");
        assert_eq!(outcome.expect("task"), InsertOutcome::Inserted);
    }
    // With a write announced, the same write right after a commit is held back.
    let (_dir, store) = spaced_store(Duration::from_secs(3));
    insert_soon(&store, 1).await.expect("task");
    let coming = store.write_coming();
    let mut second = insert_soon(&store, 2);
    let held = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(
        held.is_err(),
        "a write with another announced committed at once"
    );
    drop(coming);
    assert_eq!(second.await.expect("task"), InsertOutcome::Inserted);
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let (_dir, path) = temp_db();
    SqliteStore::open(&path)
        .expect("create")
        .close()
        .await
        .expect("close");
    {
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 99)
            .expect("bump version");
    }
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaVersion {
            found: 99,
            expected: 4,
            ..
        }) => {}
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

#[tokio::test]
async fn abandoned_and_foreign_bodies_leave_no_files() {
    let (dir, store) = temp_store();
    // Every file but the lock: temporary files too.
    let all_files = |path: &Path| files_in(path, |n| n != ".lock");

    // A writer dropped mid-stream (say the sender disconnected) deletes its
    // temporary file.
    let mut writer = store.blob_writer();
    writer
        .write_all(&Rng(7).bytes(LARGE_LEN))
        .expect("write body");
    assert_eq!(
        all_files(store.blob_dir()).len(),
        1,
        "spilled to a temp file"
    );
    drop(writer);
    assert!(all_files(store.blob_dir()).is_empty());

    // A body staged in another store's folder is refused and deleted.
    let (_other_dir, other) = temp_store();
    let body = stage(&other, &Rng(8).bytes(LARGE_LEN));
    assert_eq!(blob_files(other.blob_dir()).len(), 1);
    assert!(matches!(
        store.insert_inbox(inbox_record(1, id(1), body)).await,
        Err(StoreError::ForeignBlob { .. })
    ));
    assert!(blob_files(other.blob_dir()).is_empty());
    assert!(store.list_inbox().await.expect("list").is_empty());

    // Opening through another spelling of the same path is not "foreign".
    let dotted = dir.path().join(".").join("mail.db");
    let same = SqliteStore::open(&dotted).expect("open via other path");
    let body = stage(&same, &Rng(9).bytes(LARGE_LEN));
    assert_eq!(
        store
            .insert_inbox(inbox_record(1, id(2), body))
            .await
            .expect("insert"),
        InsertOutcome::Inserted
    );
    assert!(store.integrity_check().await.expect("check"));
}

#[tokio::test]
async fn a_known_inbox_message_is_found_by_sender_and_id_with_its_hash_and_tag() {
    let (_dir, store) = temp_store();
    assert_eq!(store.known_inbox(&[1; 32], &id(1)).await.unwrap(), None);
    let body = stage(&store, &common::data(LARGE_LEN));
    let hash = body.sha256();
    let outcome = store.insert_inbox(inbox_record(1, id(1), body)).await;
    assert_eq!(outcome.unwrap(), InsertOutcome::Inserted);
    let known = store.known_inbox(&[1; 32], &id(1)).await.unwrap().unwrap();
    assert_eq!(Some(known.content_hash), hash);
    assert_eq!(known.ack_tag, [id(1)[0] ^ 0xA5; 32]);
    // Per sender: the same id from another sender is not known.
    assert_eq!(store.known_inbox(&[2; 32], &id(1)).await.unwrap(), None);
}

fn trust_request(name: &str, key: u8, replace: bool, now: u64) -> TrustRequest {
    TrustRequest {
        name: name.into(),
        key_id: [key; 32],
        public_key: vec![key; 40],
        replace,
        now,
    }
}

#[tokio::test]
async fn trusted_clients_rotate_and_untrust_with_history_and_a_generation() {
    let (_dir, store) = temp_store();
    assert_eq!(store.trust_generation().await.unwrap(), 0);
    assert!(store.trusted_clients().await.unwrap().clients.is_empty());

    let t = |name, key, replace, now| store.trust_client(trust_request(name, key, replace, now));
    assert_eq!(
        t("bob", 1, false, 100).await.unwrap(),
        TrustOutcome::Trusted
    );
    assert_eq!(store.trust_generation().await.unwrap(), 1);
    // Refusals and no-ops change nothing, generation included.
    assert_eq!(
        t("bob", 1, false, 101).await.unwrap(),
        TrustOutcome::AlreadyTrusted
    );
    assert_eq!(
        t("bob", 2, false, 102).await.unwrap(),
        TrustOutcome::NameTaken { existing: [1; 32] }
    );
    assert_eq!(
        t("robert", 1, false, 103).await.unwrap(),
        TrustOutcome::KeyTaken { name: "bob".into() }
    );
    assert_eq!(store.trust_generation().await.unwrap(), 1);

    // Rotation.
    assert_eq!(
        t("bob", 2, true, 200).await.unwrap(),
        TrustOutcome::Replaced { old: [1; 32] }
    );
    let now = store.trusted_clients().await.unwrap();
    assert_eq!(now.generation, 2);
    assert_eq!(now.clients.len(), 1);
    assert_eq!(now.clients[0].key_id, [2; 32]);
    assert_eq!(now.clients[0].since, 200);
    assert_eq!(now.clients[0].public_key, vec![2; 40]);

    // Untrust; a second untrust finds nobody.
    assert_eq!(
        store.untrust_client("bob", 300).await.unwrap(),
        Some([2; 32])
    );
    assert_eq!(store.untrust_client("bob", 301).await.unwrap(), None);
    let now = store.trusted_clients().await.unwrap();
    assert_eq!((now.generation, now.clients.len()), (3, 0));

    // The history keeps both keys, with when and why they ended.
    let history = store.client_keys().await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].key_id, [1; 32]);
    assert_eq!(history[0].ended, Some((200, KeyEnd::Replaced)));
    assert_eq!(history[1].ended, Some((300, KeyEnd::Removed)));

    // A removed key can be trusted again (under any name): one row, trusted anew.
    assert_eq!(
        t("robert", 1, false, 400).await.unwrap(),
        TrustOutcome::Trusted
    );
    let history = store.client_keys().await.unwrap();
    assert_eq!(history.len(), 2);
    let k1 = history.iter().find(|k| k.key_id == [1; 32]).unwrap();
    assert_eq!(
        (k1.name.as_str(), k1.since, k1.ended),
        ("robert", 400, None)
    );

    // Durable: a new handle sees it all.
    let path = store.path().to_path_buf();
    store.close().await.unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let now = store.trusted_clients().await.unwrap();
    assert_eq!(now.generation, 4);
    assert_eq!(now.clients[0].name, "robert");
}

#[tokio::test]
async fn a_version_1_store_is_migrated_and_keeps_its_messages() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let body = stage(&store, &Rng(7).bytes(LARGE_LEN));
    store
        .insert_inbox(inbox_record(9, id(1), body))
        .await
        .unwrap();
    store.close().await.unwrap();
    // Back to version 1 as an older letterlock left it.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE client_keys; DROP TABLE trust_generation; DROP INDEX inbox_by_sender;
             DROP TABLE receipts; DROP INDEX outbox_relayed; DROP INDEX outbox_relayed_by_recipient;
             ALTER TABLE outbox DROP COLUMN sender_key_id; ALTER TABLE outbox DROP COLUMN sender_name;
             ALTER TABLE outbox DROP COLUMN received; ALTER TABLE outbox DROP COLUMN content_hash;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.list_inbox().await.unwrap().len(), 1);
    let mut msg = store.open_inbox(&[9; 32], &id(1)).await.unwrap();
    let mut bytes = Vec::new();
    msg.body.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, Rng(7).bytes(LARGE_LEN));
    assert_eq!(store.trust_generation().await.unwrap(), 0);
    assert_eq!(
        store
            .trust_client(trust_request("a", 1, false, 1))
            .await
            .unwrap(),
        TrustOutcome::Trusted
    );
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
}

#[tokio::test]
async fn removing_and_expiring_messages_deletes_their_body_files() {
    let (_dir, store) = temp_store();
    let blob_files = |store: &SqliteStore| files_in(store.blob_dir(), |n| n != ".lock").len();
    for (sender, n, received) in [(1u8, 1u8, 1_000u64), (2, 1, 2_000), (1, 2, 3_000)] {
        let body = stage(&store, &Rng(u64::from(n)).bytes(LARGE_LEN));
        let mut record = inbox_record(sender, id(n), body);
        record.received = received;
        store.insert_inbox(record).await.unwrap();
    }
    assert_eq!(blob_files(&store), 3);
    // Ids are unique per sender only: a prefix finds both senders' messages.
    let same = store.matching_inbox(&hex::encode(id(1))).await.unwrap();
    assert_eq!(same.len(), 2);
    assert_eq!(store.matching_inbox("01").await.unwrap().len(), 2);
    assert!(matches!(
        store.matching_inbox("xyz").await,
        Err(StoreError::BadIdPrefix { .. })
    ));

    assert!(store.remove_inbox(&[2; 32], &id(1)).await.unwrap());
    assert!(!store.remove_inbox(&[2; 32], &id(1)).await.unwrap());
    assert_eq!(blob_files(&store), 2);
    assert!(matches!(
        store.open_inbox(&[2; 32], &id(1)).await,
        Err(StoreError::NotFound { .. })
    ));

    // Received before 3000: only (1, id 1).
    assert_eq!(store.expire_inbox(3_000).await.unwrap(), 1);
    let left = store.list_inbox().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].sender_key_id, left[0].message_id),
        ([1; 32], id(2))
    );
    assert_eq!(blob_files(&store), 1);
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!(counts, vec![([1; 32], 1)]);
    assert!(store.integrity_check().await.unwrap());

    // An outbox message removed undelivered (`server outbox --remove`) takes its file too.
    let body = stage(&store, &Rng(9).bytes(LARGE_LEN));
    store
        .enqueue_outbox(outbox_record(5, id(9), body, [9; 32]))
        .await
        .unwrap();
    assert_eq!(blob_files(&store), 2);
    assert!(store.remove_outbox(&[5; 32], &id(9)).await.unwrap());
    assert_eq!(blob_files(&store), 1);
    assert!(store.integrity_check().await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// What `--store` names, through the binary: checked before anything is changed or made beside
// it (found by a trial run).

/// Runs the binary as a user file modes bind. The tests run as root on the project's machines,
/// and root writes a 0400 file and a 0500 folder, where the operator who reported a read-only
/// mailbox could not. As root, the folder is given to `nobody` (uid 65534) and the binary runs
/// as that user through util-linux `setpriv`, from a hard link (or copy) inside the folder, so
/// that no folder above it need be searchable by that user; as anyone else, as ourselves.
struct Unprivileged {
    /// The folder the commands run in.
    dir: PathBuf,
    /// The binary to run: [`common::BIN`], or its link inside `dir` as root.
    bin: PathBuf,
    /// Whether the commands run through `setpriv` as `nobody`.
    as_nobody: bool,
}

/// The uid and gid of `nobody`, whom root's commands run as here.
const NOBODY: u32 = 65534;

impl Unprivileged {
    fn new(dir: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to this process's effective user.
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        if !root {
            return Unprivileged {
                dir: dir.to_path_buf(),
                bin: PathBuf::from(common::BIN),
                as_nobody: false,
            };
        }
        let owner = format!("{NOBODY}:{NOBODY}");
        let chown = std::process::Command::new("chown")
            .args(["-R", &owner])
            .arg(dir)
            .status()
            .unwrap();
        assert!(chown.success(), "chown -R {owner} {}", dir.display());
        let bin = dir.join("letterlock-bin");
        if std::fs::hard_link(common::BIN, &bin).is_err() {
            std::fs::copy(common::BIN, &bin).unwrap();
        }
        Unprivileged {
            dir: dir.to_path_buf(),
            bin,
            as_nobody: true,
        }
    }

    /// `letterlock ARGS` in the folder, as the unprivileged user, stdin closed.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = if self.as_nobody {
            let mut cmd = std::process::Command::new("setpriv");
            cmd.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .args(["--clear-groups", "--"])
                .arg(&self.bin);
            cmd
        } else {
            std::process::Command::new(&self.bin)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null());
        cmd
    }
}

/// Runs `cmd`, a `letterlock server ...` that must refuse to start: it must exit unsuccessfully
/// within 60 s (a server that started is killed and the test fails). What it printed, stdout
/// then stderr.
fn server_refuses(mut cmd: std::process::Command) -> String {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the server started:\n{}", common::cli::text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = common::cli::text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert!(!said.contains("listening"), "{said}");
    said
}

/// The files a mailbox `name` in `dir` would have made beside it.
fn made_beside(dir: &Path, name: &str) -> Vec<String> {
    [".blobs", ".lock", "-wal", "-shm"]
        .iter()
        .map(|suffix| format!("{name}{suffix}"))
        .filter(|made| dir.join(made).exists())
        .collect()
}

/// A mailbox file the server's user may not write (`chmod 400`, as an operator did): the server
/// refuses to start, saying the file is read-only for this user and what to do, instead of
/// saying it listens and answering every message "internal server error" (SQLite opens such a
/// file read-only without an error). A folder it may not write gets its own message, naming
/// the folder. Run as a user the modes bind (see [`Unprivileged`]): the write probe of
/// `SqliteStore::check_path` is what refuses.
#[test]
fn a_read_only_mailbox_or_folder_stops_the_server_before_it_listens() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    common::cli::classroom_folder(d);
    common::cli::ok(d, &["server", "migrate"]);
    let db = d.join("letterlock-server.db");
    let user = Unprivileged::new(d);
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // The user can use the mailbox while it may write it.
    let out = user.command(&["server", "clients"]).output().unwrap();
    assert!(out.status.success(), "{}", common::cli::text(&out));

    mode(&db, 0o400);
    let said = server_refuses(user.command(&["server", "--listen", "127.0.0.1:0"]));
    assert!(said.contains("is read-only for this user"), "{said}");
    assert!(said.contains("chmod u+w"), "{said}");
    assert!(
        !d.join("letterlock-server.db.lock").exists(),
        "a lock file beside a mailbox the server refused"
    );
    // A command that would write says the same, before it writes anything.
    let out = user
        .command(&["server", "send_msg", "--to", "client", "hi"])
        .output()
        .unwrap();
    let said = common::cli::text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("is read-only for this user"), "{said}");

    // The file writable, its folder not: named as the folder's fault.
    mode(&db, 0o600);
    mode(d, 0o500);
    let said = server_refuses(user.command(&["server", "--listen", "127.0.0.1:0"]));
    mode(d, 0o700);
    let folder = std::fs::canonicalize(d).unwrap();
    assert!(
        said.contains(&format!("the folder {} ", folder.display()))
            && said.contains("is not writable for this user"),
        "{said}"
    );
    assert!(!said.contains("Permission denied"), "{said}");
}

/// A file that is not an SQLite database given as `--store` (a README, a short note) is refused
/// by every command, reading or writing, as "not an SQLite database", and left exactly as it
/// was: its mode not tightened, nothing made beside it (blob folder, lock, write-ahead log).
#[test]
fn a_file_that_is_not_a_mailbox_is_refused_and_left_as_it_was() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    common::cli::classroom_folder(d);
    let text = "# letterlock\n\nletterlock sends secure application messages.\n";
    for (name, content) in [("x.md", text), ("short.txt", "hi\n")] {
        let file = d.join(name);
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        for args in [
            &["server", "clients", "--store", name][..],
            &["server", "inbox", "--store", name],
            &["server", "outbox", "--store", name],
            &["server", "migrate", "--store", name],
            &[
                "server",
                "trust",
                "client_public.pem",
                "--name",
                "bob",
                "--store",
                name,
            ],
            &[
                "server",
                "copy-store",
                "--from",
                name,
                "--to",
                "postgres://nobody@/none?host=/nonexistent",
            ],
        ] {
            let said = common::cli::fails_text(d, args);
            assert!(
                said.contains(&format!("{name} is not an SQLite database")),
                "{args:?}: {said}"
            );
        }
        let said = server_refuses(common::cli::server_command(d, &["--store", name]));
        assert!(
            said.contains(&format!("{name} is not an SQLite database")),
            "{said}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), content);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the mode of {name} was changed");
        assert_eq!(made_beside(d, name), Vec::<String>::new());
    }
}

/// A folder given as `--store` is called a folder, with the file to give instead (it was once
/// reported as a database with 2 names, a folder's link count); a symbolic link to nowhere is
/// named with where it points (it was once "cannot open /nonexistent/target.lock"). Nothing is
/// made in or beside either.
#[test]
fn a_folder_or_a_dangling_link_as_the_store_is_named_for_what_it_is() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    common::cli::classroom_folder(d);
    std::fs::create_dir(d.join("sdir")).unwrap();
    let sdir = std::fs::canonicalize(d.join("sdir")).unwrap();
    let folder_said = |said: &str| {
        assert!(said.contains("sdir is a folder"), "{said}");
        assert!(
            said.contains(&format!(
                "e.g. --store {}",
                sdir.join("letterlock-server.db").display()
            )),
            "{said}"
        );
        assert!(!said.contains("hard links"), "{said}");
    };
    folder_said(&server_refuses(common::cli::server_command(
        d,
        &["--store", "sdir"],
    )));
    folder_said(&common::cli::fails_text(
        d,
        &["server", "clients", "--store", "sdir"],
    ));
    folder_said(&common::cli::fails_text(
        d,
        &[
            "server",
            "trust",
            "client_public.pem",
            "--name",
            "bob",
            "--store",
            "sdir",
        ],
    ));
    assert_eq!(std::fs::read_dir(&sdir).unwrap().count(), 0);
    assert_eq!(made_beside(d, "sdir"), Vec::<String>::new());

    std::os::unix::fs::symlink("/nonexistent/target", d.join("link.db")).unwrap();
    let said = server_refuses(common::cli::server_command(d, &["--store", "link.db"]));
    assert!(
        said.contains("link.db is a symbolic link to /nonexistent/target, which does not exist"),
        "{said}"
    );
    assert!(!said.contains("target.lock"), "{said}");
    let said = common::cli::fails_text(
        d,
        &[
            "server",
            "trust",
            "client_public.pem",
            "--name",
            "bob",
            "--store",
            "link.db",
        ],
    );
    assert!(
        said.contains("link.db is a symbolic link to /nonexistent/target"),
        "{said}"
    );
    let said = common::cli::fails_text(d, &["server", "inbox", "--store", "link.db"]);
    assert!(
        said.contains("no mailbox at link.db: it is a symbolic link to /nonexistent/target"),
        "{said}"
    );
    assert_eq!(made_beside(d, "link.db"), Vec::<String>::new());
}

/// The commands that only read (`server clients`, `inbox`, `outbox`) make no mailbox where
/// there is none, nor its blob folder or lock, even in the server's own folder (`server
/// clients` once made one there): they say there is no mailbox yet. An empty file is no mailbox
/// yet either, and is left empty.
#[test]
fn the_listing_commands_make_no_mailbox() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    common::cli::classroom_folder(d);
    for args in [
        &["server", "clients"][..],
        &["server", "inbox"],
        &["server", "outbox"],
    ] {
        let said = common::cli::fails_text(d, args);
        assert!(
            said.contains("no mailbox at ./letterlock-server.db yet"),
            "{args:?}: {said}"
        );
        assert!(!d.join("letterlock-server.db").exists(), "{args:?}");
        assert_eq!(made_beside(d, "letterlock-server.db"), Vec::<String>::new());
    }
    std::fs::write(d.join("empty.db"), "").unwrap();
    let said = common::cli::fails_text(d, &["server", "clients", "--store", "empty.db"]);
    assert!(
        said.contains("no mailbox at empty.db yet (the file is empty)"),
        "{said}"
    );
    assert_eq!(std::fs::metadata(d.join("empty.db")).unwrap().len(), 0);
    assert_eq!(made_beside(d, "empty.db"), Vec::<String>::new());
}
