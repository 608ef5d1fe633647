//! Repeats of a stored message cost the server a hash, not a decryption (issue 10, "Work
//! amplification"), and asymmetric-mode work is budgeted per client.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::data;
use common::net::{CLIENT, TestServer, seal_to_server};
use common::peer::{authed, message_frames, refused};
use letterlock::envelope::{self, Mode, SealOptions};
use letterlock::server::{AsymmetricBudget, ServerConfig};
use letterlock::store::{Body, InboxRecord, InsertOutcome, MODE_HYBRID, SealedIdentity, Store};
use letterlock::wire::{DATA_FRAME, ErrorCode, Frame};

/// Writes `copies` copies of `bytes` as pipelined messages on a raw authenticated connection and
/// returns the ack tags, in the order they came.
async fn pipelined(addr: &str, bytes: &[u8], copies: usize) -> Vec<[u8; 32]> {
    let mut raw = authed(addr).await;
    let (r, w) = (&mut raw.r, &mut raw.w);
    let frames = message_frames(bytes, DATA_FRAME);
    let writer = async {
        for _ in 0..copies {
            w.write_raw(&frames).await.unwrap();
        }
    };
    let reader = async {
        let mut tags = Vec::with_capacity(copies);
        while tags.len() < copies {
            match r.read_frame().await.unwrap() {
                Frame::Ack { tag, .. } => tags.push(tag),
                other => panic!("expected an Ack, got {other:?}"),
            }
        }
        tags
    };
    let ((), tags) = tokio::join!(writer, reader);
    tags
}

#[tokio::test]
async fn a_known_id_is_answered_without_opening() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let (bytes, sealed) = seal_to_server(CLIENT, &data(16 * 1024), [9; 16], now);
    let mut client = server.client(CLIENT).await.unwrap();
    client.send_sealed(&bytes, &sealed).await.unwrap();
    assert_eq!(server.server.receive_stats().opened, 1);

    // Byte-identical repeats: the original ack tag each time, nothing opened or written.
    let writes = server.store.stats().writes_committed;
    let tags = pipelined(&server.addr, &bytes, 5).await;
    assert_eq!(tags, vec![sealed.ack_tag; 5]);
    let stats = server.server.receive_stats();
    assert_eq!(stats.opened, 1, "a repeat was decrypted");
    assert_eq!(stats.repeats_answered, 5);
    assert_eq!(
        server.store.stats().writes_committed,
        writes,
        "a repeat was written"
    );

    // Another message under the same id: refused, still unopened.
    let (other, _) = seal_to_server(CLIENT, b"something else", [9; 16], now);
    let mut raw = authed(&server.addr).await;
    raw.w
        .write_raw(&message_frames(&other, DATA_FRAME))
        .await
        .unwrap();
    refused(&mut raw, ErrorCode::Replay).await;
    let stats = server.server.receive_stats();
    assert_eq!(stats.opened, 1);
    assert_eq!(stats.repeats_refused, 1);
    assert_eq!(server.inbox_len().await, 1);
    server.stop().await;
}

/// The modulus length of the test server's key (bob2048): the length of a key wrapped for it.
const SERVER_WRAPPED_KEY_LEN: usize = 256;

#[tokio::test]
async fn the_inbox_keeps_the_sealed_identity_and_a_repeat_differing_between_the_tags_changes_nothing()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let (bytes, sealed) = seal_to_server(CLIENT, &data(200 * 1024), [5; 16], now);
    let mut client = server.client(CLIENT).await.unwrap();
    client.send_sealed(&bytes, &sealed).await.unwrap();
    let known = server
        .store
        .known_inbox(&sealed.header.sender.0, &sealed.header.message_id.0)
        .await
        .unwrap()
        .unwrap();
    let identity = SealedIdentity::of(&bytes, SERVER_WRAPPED_KEY_LEN).unwrap();
    assert_eq!(
        known.content_hash, identity,
        "the stored content hash is the identity"
    );

    // Ciphertext inside a chunk, not its tag: only the sender can send this, and it earns the
    // ack it already has; nothing is opened or written, the stored bytes stay the first ones.
    let mut inside = bytes.clone();
    inside[envelope::HEADER_LEN + SERVER_WRAPPED_KEY_LEN + 1000] ^= 1;
    let writes = server.store.stats().writes_committed;
    assert_eq!(
        pipelined(&server.addr, &inside, 1).await,
        vec![sealed.ack_tag]
    );
    let stats = server.server.receive_stats();
    assert_eq!((stats.opened, stats.repeats_answered), (1, 1));
    assert_eq!(server.store.stats().writes_committed, writes);
    let mut stored = Vec::new();
    let message = server
        .store
        .find_inbox(&sealed.header.message_id.to_string())
        .await
        .unwrap();
    std::io::Read::read_to_end(&mut { message.body }, &mut stored).unwrap();
    assert!(stored == bytes, "the stored bytes changed");

    // The first chunk's tag (the last 16 bytes of its 64 KiB + 16): a different message.
    let mut tag = bytes.clone();
    tag[envelope::HEADER_LEN + SERVER_WRAPPED_KEY_LEN + 64 * 1024 + 3] ^= 1;
    let mut raw = authed(&server.addr).await;
    raw.w
        .write_raw(&message_frames(&tag, DATA_FRAME))
        .await
        .unwrap();
    refused(&mut raw, ErrorCode::Replay).await;
    assert_eq!(server.server.receive_stats().repeats_refused, 1);
    assert_eq!(server.server.receive_stats().opened, 1);
    server.stop().await;
}

/// PROTOCOL.md section 13's test vectors for the sealed identity: the stored messages of
/// tests/vectors/, with their recipients' wrapped-key lengths (the figures were computed by an
/// independent script written from the document).
#[test]
fn sealed_identity_test_vectors() {
    for (name, wrapped_key_len, expected) in [
        (
            "hybrid_two_chunks",
            256,
            "20987a8443762a00fe98db17f1f5a6bbd136f17f21524e068cf033fdea9f0c43",
        ),
        (
            "hybrid_hello",
            384,
            "2f0fc34172b36ba653ae33d8f381f221409d7227160c476ab1108d529848981d",
        ),
        (
            "asymmetric_hello",
            256,
            "ccbd841ccd7a25a7595e41360772a3a9491dc7e49e61d4d0e042fec1a53b8343",
        ),
    ] {
        let path = format!("{}/tests/vectors/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let vector: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let sealed = hex::decode(vector["expected"]["sealed"].as_str().unwrap()).unwrap();
        let identity = SealedIdentity::of(&sealed, wrapped_key_len).unwrap();
        assert_eq!(hex::encode(identity), expected, "{name}");
    }
}

#[tokio::test]
async fn a_message_stored_with_a_sha256_content_hash_is_still_recognised() {
    // What a letterlock from before sealed identities stored: SHA-256 of the sealed bytes.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let (bytes, sealed) = seal_to_server(CLIENT, &data(3000), [6; 16], now);
    let record = InboxRecord {
        sender_key_id: sealed.header.sender.0,
        sender_name: CLIENT.to_owned(),
        message_id: sealed.header.message_id.0,
        created: now,
        received: now,
        mode: MODE_HYBRID,
        plaintext_len: 3000,
        content_hash: common::sha256(&bytes),
        ack_tag: sealed.ack_tag,
        body: Body::from_bytes(bytes.clone()),
    };
    assert_eq!(
        server.store.insert_inbox(record).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert_eq!(
        pipelined(&server.addr, &bytes, 2).await,
        vec![sealed.ack_tag; 2]
    );
    let mut other = bytes.clone();
    other[envelope::HEADER_LEN + SERVER_WRAPPED_KEY_LEN + 100] ^= 1;
    let mut raw = authed(&server.addr).await;
    raw.w
        .write_raw(&message_frames(&other, DATA_FRAME))
        .await
        .unwrap();
    refused(&mut raw, ErrorCode::Replay).await;
    let stats = server.server.receive_stats();
    assert_eq!(
        (stats.opened, stats.repeats_answered, stats.repeats_refused),
        (0, 2, 1)
    );
    server.stop().await;
}

#[tokio::test]
async fn asymmetric_work_waits_for_the_clients_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        asymmetric_budget: AsymmetricBudget {
            bytes_per_sec: 128 * 1024,
            burst: 64 * 1024,
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut client = server.client(CLIENT).await.unwrap();
    // 100 KiB of plaintext seals to more than the 64 KiB burst: the connection waits for the
    // bucket to refill, then the message is delivered all the same.
    let d = client
        .send(
            std::io::Cursor::new(data(100 * 1024)),
            SealOptions::mode(Mode::Asymmetric),
        )
        .await
        .unwrap();
    assert_eq!(d.plaintext_len, 100 * 1024);
    assert!(server.server.receive_stats().budget_waits >= 1);
    server.stop().await;
}

#[tokio::test]
async fn a_client_far_over_its_asymmetric_budget_is_told_busy() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        asymmetric_budget: AsymmetricBudget {
            bytes_per_sec: 1,
            burst: 1024,
        },
        idle_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut raw = authed(&server.addr).await;
    let bytes = common::peer::sealed(8 * 1024, Mode::Asymmetric);
    raw.w
        .write_raw(&message_frames(&bytes, DATA_FRAME))
        .await
        .unwrap();
    refused(&mut raw, ErrorCode::Unavailable).await;
    assert_eq!(server.inbox_len().await, 0);
    server.stop().await;
}

/// Percentile `p` (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a duplicate flood of 256 pipelined 16 KiB replays per connection beside an honest client"]
async fn duplicate_flood_costs_no_decryption_and_spares_an_honest_client() {
    const ROUNDS: usize = 8;
    const COPIES: usize = 256;
    const HONEST: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let (bytes, sealed) = seal_to_server(CLIENT, &data(16 * 1024), [42; 16], now);
    let mut client = server.client(CLIENT).await.unwrap();
    client.send_sealed(&bytes, &sealed).await.unwrap();

    // Quiet baseline first.
    let honest = |n: usize| {
        let server = &server;
        async move {
            let mut client = server.client(CLIENT).await.unwrap();
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                client
                    .send(std::io::Cursor::new(data(1024)), SealOptions::default())
                    .await
                    .unwrap();
                times.push(started.elapsed());
            }
            times.sort();
            times
        }
    };
    let quiet = honest(HONEST).await;

    // The flood runs on its own connections until the honest client is done (at least
    // ROUNDS rounds of COPIES pipelined replays), so every honest send is measured under it.
    let done = Arc::new(AtomicBool::new(false));
    let addr = server.addr.clone();
    let flooding = done.clone();
    let flood = tokio::spawn(async move {
        let mut rounds = 0;
        while rounds < ROUNDS || !flooding.load(Ordering::Relaxed) {
            let tags = pipelined(&addr, &bytes, COPIES).await;
            assert!(tags.iter().all(|t| *t == sealed.ack_tag));
            rounds += 1;
        }
        rounds
    });
    let loaded = honest(HONEST).await;
    done.store(true, Ordering::Relaxed);
    let rounds = flood.await.unwrap();

    let stats = server.server.receive_stats();
    println!(
        "duplicate flood: {} repeats answered, {} messages opened; honest 1 KiB send quiet \
         p50 {:?} p99 {:?}, under the flood p50 {:?} p99 {:?}",
        stats.repeats_answered,
        stats.opened,
        percentile(&quiet, 50),
        percentile(&quiet, 99),
        percentile(&loaded, 50),
        percentile(&loaded, 99),
    );
    assert_eq!(stats.repeats_answered, (rounds * COPIES) as u64);
    // The original and the honest client's messages: not one repeat was opened.
    assert_eq!(stats.opened, 1 + 2 * HONEST as u64);
    server.stop().await;
}
