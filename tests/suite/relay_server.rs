//! Client to client through a server that cannot read (docs/PROTOCOL.md §15), the server's
//! side, in process: relaying (`Relay`, `Send`… → `Stored`), delivery of the sealed bytes as
//! they were sent, receipts only the recipient's tag earns and only the sender is given, the
//! refusals in the spec's order, repeats, version 1, and the signed directory.
//!
//! The server (key bob2048) follows its SQLite store's trust list: alice (alice2048) and bob
//! (bob3072) are trusted; mallory is not. Clients here are raw version 2 connections speaking
//! frames, so each case controls exactly what is sent.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::net::{Running, SERVER};
use common::v2::Counting;
use common::{private, public};
use letterlock::directory::SignedEntry;
use letterlock::envelope::{
    FixedRandomness, HEADER_LEN, MessageId, Mode, OpenOptions, SealOptions, Sealed,
};
use letterlock::keys::{Identity, PublicKey, TrustList};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::{SqliteStore, Store};
use letterlock::tls::{self, TlsOptions};
use letterlock::wire::{ErrorCode, Frame, FrameReader, FrameWriter, receipt_commitment};
use tokio::io::{AsyncRead, AsyncWrite};

/// The test clients: their names in the server's trust list and their key files.
const ALICE: (&str, &str) = ("alice", "alice2048");
const BOB: (&str, &str) = ("bob", "bob3072");
/// Trusted only by the tests that need a third client.
const MALLORY: (&str, &str) = ("mallory", "mallory");

/// A raw version 2 connection, authenticated, past `Ready`.
struct Conn {
    r: FrameReader<Box<dyn AsyncRead + Unpin + Send>>,
    w: FrameWriter<Box<dyn AsyncWrite + Unpin + Send>>,
}

impl Conn {
    async fn open(addr: &str, key: &str) -> Conn {
        let identity: Arc<dyn Identity> = private(key);
        let config = tls::client_config(identity, &public(SERVER), &TlsOptions::default()).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = tls::connect(config, tcp, Duration::from_secs(30))
            .await
            .unwrap();
        let (r, w) = tokio::io::split(stream);
        let r: Box<dyn AsyncRead + Unpin + Send> = Box::new(r);
        let w: Box<dyn AsyncWrite + Unpin + Send> = Box::new(w);
        let mut r = FrameReader::new(r, 1 << 20).with_padding();
        let w = FrameWriter::new(w);
        assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
        Conn { r, w }
    }

    async fn send(&mut self, frame: Frame) {
        self.w.write_frame(&frame).await.unwrap();
    }

    /// `Relay{commitment}` then the message as `Send` frames and `SendEnd`.
    async fn relay(&mut self, commitment: [u8; 32], sealed: &[u8]) {
        self.send(Frame::Relay { commitment }).await;
        for piece in sealed.chunks(64 * 1024) {
            self.send(Frame::Send(piece.to_vec())).await;
        }
        self.send(Frame::SendEnd).await;
    }

    async fn next(&mut self) -> Frame {
        self.r.read_frame().await.unwrap()
    }

    /// Every message waiting: `Fetch`, then each `Deliver`… `DeliverEnd`, up to `FetchDone`.
    async fn fetch(&mut self) -> Vec<Vec<u8>> {
        self.send(Frame::Fetch).await;
        let mut messages = Vec::new();
        let mut current = Vec::new();
        loop {
            match self.next().await {
                Frame::Deliver(data) => current.extend_from_slice(&data),
                Frame::DeliverEnd => messages.push(std::mem::take(&mut current)),
                Frame::FetchDone { count } => {
                    assert_eq!(count as usize, messages.len());
                    return messages;
                }
                other => panic!("unexpected {other:?} during a fetch"),
            }
        }
    }

    async fn receipts(&mut self, ids: &[MessageId]) -> Vec<letterlock::wire::ReceiptInfo> {
        self.send(Frame::Receipts { ids: ids.to_vec() }).await;
        match self.next().await {
            Frame::ReceiptList { receipts } => receipts,
            other => panic!("expected ReceiptList, got {other:?}"),
        }
    }

    async fn directory(&mut self) -> Vec<SignedEntry> {
        self.send(Frame::Directory).await;
        let mut all = Vec::new();
        loop {
            match self.next().await {
                Frame::DirectoryPart { last, entries } => {
                    all.extend(entries);
                    if last {
                        return all;
                    }
                }
                other => panic!("expected DirectoryPart, got {other:?}"),
            }
        }
    }

    /// The server's Error frame (with `code`) and its message.
    async fn refused(&mut self, code: ErrorCode) -> String {
        match self.r.read_frame().await {
            Ok(Frame::Error { code: got, message }) => {
                assert_eq!(got, code, "{message}");
                message
            }
            other => panic!("expected Error {code:?}, got {other:?}"),
        }
    }
}

/// A version 2 server over a store that trusts alice and bob, following the store: SQLite in a
/// temporary folder unless said otherwise.
struct Relaying<S: Store = SqliteStore> {
    running: Running,
    server: Arc<Server<S>>,
    store: Arc<S>,
    key: Arc<Counting>,
    dir: tempfile::TempDir,
    /// The PostgreSQL database the store lives in, if it does (dropped with the test).
    _database: Option<common::postgres::Database>,
}

impl Relaying {
    async fn start() -> Relaying {
        Self::start_with(ServerConfig::default()).await
    }

    async fn start_with(config: ServerConfig) -> Relaying {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
        Relaying::over(store, config, dir, None).await
    }
}

impl<S: Store> Relaying<S> {
    async fn over(
        store: Arc<S>,
        config: ServerConfig,
        dir: tempfile::TempDir,
        database: Option<common::postgres::Database>,
    ) -> Relaying<S> {
        for (name, key) in [ALICE, BOB] {
            trust(&*store, name, &public(key)).await;
        }
        let key = Arc::new(Counting::new(SERVER));
        let server = Arc::new(
            Server::new(key.clone(), TrustList::new(), store.clone(), config)
                .trust_from_store()
                .with_tls(TlsOptions::default())
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = server.clone();
        let task = tokio::spawn(async move {
            serving
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Relaying {
            running: Running { addr, stop, task },
            server,
            store,
            key,
            dir,
            _database: database,
        }
    }

    async fn conn(&self, who: (&str, &str)) -> Conn {
        Conn::open(&self.running.addr, who.1).await
    }

    async fn stop(self) {
        let _ = self.running.stop.send(());
        self.running.task.await.unwrap();
    }
}

async fn trust(store: &impl Store, name: &str, key: &PublicKey) {
    common::trust_in(store, name, key, false, letterlock::envelope::unix_now()).await;
}

/// `plain` sealed by `from` for `to` in `mode`.
fn seal(from: &str, to: &str, mode: Mode, plain: &[u8]) -> (Vec<u8>, Sealed) {
    common::seal_with_info(
        private(from).as_ref(),
        &public(to),
        &SealOptions::mode(mode),
        plain,
    )
}

/// A hybrid message from alice to bob with a chosen id and content key.
fn seal_fixed(id: [u8; 16], content_key: u8, plain: &[u8]) -> (Vec<u8>, Sealed) {
    common::seal_fixed(
        private(ALICE.1),
        &public(BOB.1),
        &SealOptions::default(),
        &FixedRandomness {
            message_id: id,
            created: letterlock::envelope::unix_now(),
            content_key: [content_key; 32],
        },
        plain,
    )
}

/// Whether any file under `dir` (the database, its WAL, the blob folder) holds `needle`.
fn any_file_holds(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return true;
        }
    }
    false
}

/// Alice relays to bob in both modes, one message large enough for a body file: `Stored`;
/// the server never opened them and its files hold no plaintext; bob fetches the exact
/// bytes, opens them with alice's key and acks with his tag: `Removed`; then alice's
/// `Receipts` returns that tag (bob's asking for the same ids gets nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_message_reaches_the_recipient_unopened_and_earns_a_receipt() {
    let s = Relaying::start().await;
    let secret = b"only bob may read this line; the server must never see it. ".repeat(2000);
    let messages = [
        seal(ALICE.1, BOB.1, Mode::Hybrid, &secret),
        seal(ALICE.1, BOB.1, Mode::Hybrid, b"a short hybrid note for bob"),
        seal(
            ALICE.1,
            BOB.1,
            Mode::Asymmetric,
            b"an asymmetric note for bob",
        ),
    ];
    let mut alice = s.conn(ALICE).await;
    for (bytes, sealed) in &messages {
        alice
            .relay(receipt_commitment(&sealed.ack_tag), bytes)
            .await;
    }
    // Stored may come out of order: match by id.
    let mut stored = Vec::new();
    for _ in &messages {
        match alice.next().await {
            Frame::Stored { id } => stored.push(id),
            other => panic!("expected Stored, got {other:?}"),
        }
    }
    let mut expected: Vec<MessageId> = messages.iter().map(|(_, s)| s.header.message_id).collect();
    stored.sort_by_key(|id| id.0);
    expected.sort_by_key(|id| id.0);
    assert_eq!(stored, expected);

    let stats = s.server.receive_stats();
    assert_eq!(stats.opened, 0, "the server opened a relayed message");
    assert_eq!(stats.relayed, 3);
    assert_eq!(
        s.key.decryptions.load(Ordering::SeqCst),
        0,
        "an RSA decryption"
    );
    assert_eq!(
        s.key.signatures.load(Ordering::SeqCst),
        2,
        "the certificate's signature at start and alice's handshake: no other private-key work"
    );
    // The search finds what is there (the large sealed body, in the blob folder) and no
    // plaintext.
    assert!(any_file_holds(s.dir.path(), &messages[0].0[1000..1064]));
    assert!(
        !any_file_holds(s.dir.path(), b"only bob may read this line"),
        "the server's store holds plaintext"
    );
    let pending = s.store.pending_outbox(&public(BOB.1).id().0).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert!(
        pending
            .iter()
            .all(|e| e.sender.as_ref().map(|(_, n)| n.as_str()) == Some("alice"))
    );

    let mut bob = s.conn(BOB).await;
    let delivered = bob.fetch().await;
    assert_eq!(delivered.len(), 3);
    for (bytes, sealed) in &messages {
        let got = delivered
            .iter()
            .find(|d| d.as_slice() == bytes.as_slice())
            .expect("delivered byte for byte as relayed");
        let (plain, opened) = letterlock::open(
            got,
            private(BOB.1).as_ref(),
            &public(ALICE.1),
            &OpenOptions::default(),
        )
        .expect("bob opens it with alice's key");
        assert_eq!(opened.ack_tag, sealed.ack_tag);
        assert_eq!(opened.header.sender, public(ALICE.1).id());
        assert!(!plain.is_empty());
        let id = sealed.header.message_id;
        bob.send(Frame::DeliveryAck {
            id,
            tag: opened.ack_tag,
        })
        .await;
        assert_eq!(bob.next().await, Frame::Removed { id });
    }
    assert!(
        bob.receipts(&expected).await.is_empty(),
        "a receipt is not given to another client"
    );

    let receipts = alice.receipts(&expected).await;
    assert_eq!(receipts.len(), 3);
    for (_, sealed) in &messages {
        let r = receipts
            .iter()
            .find(|r| r.id == sealed.header.message_id)
            .expect("a receipt per delivered message");
        assert_eq!(
            r.tag, sealed.ack_tag,
            "the recipient's tag, which alice can check"
        );
        assert_eq!(r.recipient, public(BOB.1).id());
    }
    assert_eq!(s.server.receive_stats().opened, 0);
    assert_eq!(s.key.decryptions.load(Ordering::SeqCst), 0);
    // The counter counts: a message sealed for the server itself costs one decryption.
    let (to_server, sealed) = seal(ALICE.1, SERVER, Mode::Hybrid, b"for the server");
    for piece in [Frame::Send(to_server), Frame::SendEnd] {
        alice.send(piece).await;
    }
    assert!(matches!(alice.next().await, Frame::Ack { id, .. } if id == sealed.header.message_id));
    assert_eq!(s.key.decryptions.load(Ordering::SeqCst), 1);
    drop((alice, bob));
    s.stop().await;
}

/// A wrong tag for a relayed entry removes it without a receipt (the recipient may discard
/// what was sent to it): `Removed`, the connection stays, the next fetch is empty and alice
/// never gets a receipt. The commitment itself is not the tag either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tag_removes_a_relayed_entry_without_a_receipt() {
    let s = Relaying::start().await;
    let bob_id = public(BOB.1).id().0;
    let mut alice = s.conn(ALICE).await;
    let mut bob = s.conn(BOB).await;
    let mut wrong = [0; 32];
    for (n, make_wrong) in [
        |t: [u8; 32]| {
            let mut w = t;
            w[5] ^= 0x40;
            w
        },
        |t: [u8; 32]| receipt_commitment(&t),
    ]
    .into_iter()
    .enumerate()
    {
        let (bytes, sealed) = seal(
            ALICE.1,
            BOB.1,
            Mode::Hybrid,
            format!("ack me {n}").as_bytes(),
        );
        let id = sealed.header.message_id;
        alice
            .relay(receipt_commitment(&sealed.ack_tag), &bytes)
            .await;
        assert_eq!(alice.next().await, Frame::Stored { id });
        assert!(bob.fetch().await == [bytes], "delivered byte for byte");
        wrong = make_wrong(sealed.ack_tag);
        bob.send(Frame::DeliveryAck { id, tag: wrong }).await;
        assert_eq!(bob.next().await, Frame::Removed { id });
        assert!(s.store.pending_outbox(&bob_id).await.unwrap().is_empty());
        assert!(bob.fetch().await.is_empty(), "nothing left to deliver");
        assert!(alice.receipts(&[id]).await.is_empty(), "no receipt");
    }
    assert_ne!(wrong, [0; 32]);
    drop((alice, bob));
    s.stop().await;
}

/// A sender that relays with a wrong commitment (the server cannot check one when it relays)
/// cannot wedge its recipient: bob acks with his true tag, the entry is removed without a
/// receipt (`Removed`, not code 8), mallory gets no receipt, bob's next fetch is empty and
/// succeeds, and alice's message after it is delivered and receipted as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_commitment_cannot_wedge_the_recipient() {
    let s = Relaying::start().await;
    trust(&*s.store, MALLORY.0, &public(MALLORY.1)).await;
    let (bytes, sealed) = seal(MALLORY.1, BOB.1, Mode::Hybrid, b"my commitment is a lie");
    let id = sealed.header.message_id;
    let mut lie = [0; 32];
    aws_lc_rs::rand::fill(&mut lie).unwrap();
    assert_ne!(lie, receipt_commitment(&sealed.ack_tag));
    let mut mallory = s.conn(MALLORY).await;
    mallory.relay(lie, &bytes).await;
    assert_eq!(mallory.next().await, Frame::Stored { id });

    let mut bob = s.conn(BOB).await;
    let delivered = bob.fetch().await;
    assert!(delivered == [bytes], "delivered byte for byte");
    let (_, opened) = letterlock::open(
        &delivered[0],
        private(BOB.1).as_ref(),
        &public(MALLORY.1),
        &OpenOptions::default(),
    )
    .expect("bob opens it with mallory's key");
    bob.send(Frame::DeliveryAck {
        id,
        tag: opened.ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id });
    assert!(
        bob.fetch().await.is_empty(),
        "the next fetch succeeds, empty"
    );
    assert!(mallory.receipts(&[id]).await.is_empty(), "no receipt");

    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, b"an honest note");
    let honest = sealed.header.message_id;
    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    assert_eq!(alice.next().await, Frame::Stored { id: honest });
    assert!(bob.fetch().await == [bytes], "delivered byte for byte");
    bob.send(Frame::DeliveryAck {
        id: honest,
        tag: sealed.ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id: honest });
    let receipts = alice.receipts(&[honest]).await;
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].tag, sealed.ack_tag);
    assert!(mallory.receipts(&[id]).await.is_empty());
    drop((alice, bob, mallory));
    s.stop().await;
}

/// Past the per-recipient bound of waiting relayed messages a relay is refused with code 9
/// before anything is stored; once bob takes one, alice can relay again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_relays_until_the_recipient_takes_some() {
    let s = Relaying::start_with(ServerConfig {
        max_waiting_relayed: 2,
        ..ServerConfig::default()
    })
    .await;
    let bob_id = public(BOB.1).id().0;
    let mut alice = s.conn(ALICE).await;
    let mut sent = Vec::new();
    for n in 0..2 {
        let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, format!("note {n}").as_bytes());
        alice
            .relay(receipt_commitment(&sealed.ack_tag), &bytes)
            .await;
        assert_eq!(
            alice.next().await,
            Frame::Stored {
                id: sealed.header.message_id
            }
        );
        sent.push(sealed);
    }
    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, b"one too many");
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    let message = alice.refused(ErrorCode::Unavailable).await;
    assert!(
        message.contains("mailbox on this server is full"),
        "{message}"
    );
    assert_eq!(s.store.waiting_relayed(&bob_id).await.unwrap(), 2);
    assert_eq!(s.server.receive_stats().relayed, 2);

    let mut bob = s.conn(BOB).await;
    assert_eq!(bob.fetch().await.len(), 2);
    let id = sent[0].header.message_id;
    bob.send(Frame::DeliveryAck {
        id,
        tag: sent[0].ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id });

    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    assert_eq!(
        alice.next().await,
        Frame::Stored {
            id: sealed.header.message_id
        }
    );
    assert_eq!(s.store.waiting_relayed(&bob_id).await.unwrap(), 2);
    drop((alice, bob));
    s.stop().await;
}

/// After `server trust NEW --name alice --replace`, alice (now with her new key) still gets the
/// receipts of what she relayed with her old key; after `server untrust alice` and a new key
/// trusted as alice, that key (perhaps someone else) gets none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_survive_a_key_rotation_but_not_an_untrust() {
    let s = Relaying::start().await;
    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, b"before the rotation");
    let id = sealed.header.message_id;
    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    assert_eq!(alice.next().await, Frame::Stored { id });
    let mut bob = s.conn(BOB).await;
    assert_eq!(bob.fetch().await.len(), 1);
    bob.send(Frame::DeliveryAck {
        id,
        tag: sealed.ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id });
    drop(alice);

    let rotated = public("alice3072");
    let now = letterlock::envelope::unix_now();
    common::trust_in(s.store.as_ref(), ALICE.0, &rotated, true, now).await;
    let mut alice = s.conn((ALICE.0, "alice3072")).await;
    let receipts = alice.receipts(&[id]).await;
    assert_eq!(
        receipts.len(),
        1,
        "the old key's receipt, after the rotation"
    );
    assert_eq!(receipts[0].tag, sealed.ack_tag);
    assert!(bob.receipts(&[id]).await.is_empty());
    drop(alice);

    s.store
        .untrust_client(ALICE.0, letterlock::envelope::unix_now())
        .await
        .unwrap()
        .unwrap();
    trust(&*s.store, ALICE.0, &public("alice4096")).await;
    let mut other = s.conn((ALICE.0, "alice4096")).await;
    assert!(
        other.receipts(&[id]).await.is_empty(),
        "an untrust ends the name's chain of keys"
    );
    drop((other, bob));
    s.stop().await;
}

/// The spec's refusals: a sender other than the authenticated client (3), a recipient the
/// server does not trust (12), the server itself as recipient (3), anything but `Send` after
/// `Relay` (1). Nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_are_refused_in_the_spec_order() {
    let s = Relaying::start().await;
    let cases = [
        (
            "sealed by bob, sent by alice",
            seal(BOB.1, BOB.1, Mode::Hybrid, b"x"),
            ErrorCode::Refused,
        ),
        (
            "to mallory",
            seal(ALICE.1, "mallory", Mode::Hybrid, b"x"),
            ErrorCode::UnknownRecipient,
        ),
        (
            "to the server",
            seal(ALICE.1, SERVER, Mode::Hybrid, b"x"),
            ErrorCode::Refused,
        ),
    ];
    for (what, (bytes, sealed), code) in cases {
        let mut alice = s.conn(ALICE).await;
        alice
            .relay(receipt_commitment(&sealed.ack_tag), &bytes)
            .await;
        let message = alice.refused(code).await;
        eprintln!("{what}: {message}");
    }
    let mut alice = s.conn(ALICE).await;
    alice
        .send(Frame::Relay {
            commitment: [1; 32],
        })
        .await;
    alice.send(Frame::Fetch).await;
    let message = alice.refused(ErrorCode::Protocol).await;
    assert!(message.contains("Send"), "{message}");
    // A client may relay to itself.
    let (bytes, sealed) = seal(ALICE.1, ALICE.1, Mode::Hybrid, b"a note to self");
    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    assert_eq!(
        alice.next().await,
        Frame::Stored {
            id: sealed.header.message_id
        }
    );
    assert!(
        s.store
            .pending_outbox(&public(BOB.1).id().0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.server.receive_stats().relayed, 1);
    drop(alice);
    s.stop().await;
}

/// The header's mode must be one the server accepts (7) and its time within the window (5),
/// as for messages to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_a_refused_mode_or_out_of_time_are_refused() {
    let s = Relaying::start_with(ServerConfig {
        accept: letterlock::server::Accept::Hybrid,
        ..ServerConfig::default()
    })
    .await;
    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Asymmetric, b"x");
    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    alice.refused(ErrorCode::ModeNotAccepted).await;
    let (bytes, sealed) = common::seal_fixed(
        private(ALICE.1),
        &public(BOB.1),
        &SealOptions::default(),
        &FixedRandomness {
            message_id: [7; 16],
            created: letterlock::envelope::unix_now() - 3600,
            content_key: [7; 32],
        },
        b"from an hour ago",
    );
    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    alice.refused(ErrorCode::Stale).await;
    assert!(
        s.store
            .pending_outbox(&public(BOB.1).id().0)
            .await
            .unwrap()
            .is_empty()
    );
    drop(alice);
    s.stop().await;
}

/// A relayed message's bytes are counted as they arrive: past the mode's limit plus the
/// sealing overhead it is refused (6) before it is kept. The server cannot verify what it
/// relays, so a valid header followed by filler is enough to reach the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_relay_is_refused_as_it_arrives() {
    let s = Relaying::start_with(ServerConfig {
        max_hybrid: 1024,
        ..ServerConfig::default()
    })
    .await;
    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, b"x");
    let mut alice = s.conn(ALICE).await;
    alice
        .send(Frame::Relay {
            commitment: receipt_commitment(&sealed.ack_tag),
        })
        .await;
    alice.send(Frame::Send(bytes[..HEADER_LEN].to_vec())).await;
    // 64 MiB of sealing overhead, then past it; the server stops reading at the bound.
    let filler = Frame::Send(vec![0; 256 * 1024]);
    let writer = tokio::spawn(async move {
        for _ in 0..(64 * 4 + 8) {
            if alice.w.write_frame(&filler).await.is_err() {
                break;
            }
        }
        alice
    });
    let mut alice = writer.await.unwrap();
    alice.refused(ErrorCode::TooLarge).await;
    assert!(
        s.store
            .pending_outbox(&public(BOB.1).id().0)
            .await
            .unwrap()
            .is_empty()
    );
    drop(alice);
    s.stop().await;
}

/// A repeat of a relayed message (same bytes) is `Stored` again with nothing written, also
/// once delivered; other bytes under the same id are refused as a replay (4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_stored_again_and_other_bytes_under_the_id_are_refused() {
    let s = Relaying::start().await;
    let id = [0x42; 16];
    let (bytes, sealed) = seal_fixed(id, 1, b"first sealing");
    let commitment = receipt_commitment(&sealed.ack_tag);
    let mut alice = s.conn(ALICE).await;
    for _ in 0..2 {
        alice.relay(commitment, &bytes).await;
        assert_eq!(alice.next().await, Frame::Stored { id: MessageId(id) });
    }
    let stats = s.server.receive_stats();
    assert_eq!((stats.relayed, stats.relay_repeats), (1, 1));
    assert_eq!(
        s.store
            .pending_outbox(&public(BOB.1).id().0)
            .await
            .unwrap()
            .len(),
        1
    );

    let mut bob = s.conn(BOB).await;
    assert_eq!(bob.fetch().await.len(), 1);
    bob.send(Frame::DeliveryAck {
        id: MessageId(id),
        tag: sealed.ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id: MessageId(id) });
    // Delivered: the repeat is still recognised, and not queued again.
    alice.relay(commitment, &bytes).await;
    assert_eq!(alice.next().await, Frame::Stored { id: MessageId(id) });
    assert!(
        s.store
            .pending_outbox(&public(BOB.1).id().0)
            .await
            .unwrap()
            .is_empty()
    );

    let (other, other_sealed) = seal_fixed(id, 2, b"another message, same id");
    alice
        .relay(receipt_commitment(&other_sealed.ack_tag), &other)
        .await;
    alice.refused(ErrorCode::Replay).await;
    drop(bob);
    s.stop().await;
}

/// A version 1 connection asking for client-to-client messaging is told it needs version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_connection_cannot_relay() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::net::TestServer::start(dir.path()).await;
    for frame in [
        Frame::Relay {
            commitment: [0; 32],
        },
        Frame::Directory,
        Frame::Receipts {
            ids: vec![MessageId([1; 16])],
        },
    ] {
        let mut raw = common::peer::authed(&server.addr).await;
        raw.w.write_frame(&frame).await.unwrap();
        let message = common::peer::refused(&mut raw, ErrorCode::Protocol).await;
        assert!(message.contains("version 2"), "{message}");
    }
    server.stop().await;
}

/// The directory: every entry verifies under the server's key, lists each trusted client
/// with its key, sorted by name, serial = the trust generation; a second request costs no
/// signature; a trust change is signed again under the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_signed_once_per_trust_generation() {
    let s = Relaying::start().await;
    let server_key = public(SERVER);
    let mut alice = s.conn(ALICE).await;
    let before = s.key.signatures.load(Ordering::SeqCst);
    let entries = alice.directory().await;
    let signed = s.key.signatures.load(Ordering::SeqCst) - before;
    assert_eq!(signed, 2, "one signature per entry");
    let generation = s.store.trust_generation().await.unwrap();
    let listed: Vec<_> = entries
        .iter()
        .map(|e| {
            let entry = e.verify(&server_key).expect("signed by the server's key");
            assert_eq!(entry.serial, generation);
            assert!(entry.since > 0, "since: when the store trusted the key");
            (entry.name, entry.key.id())
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("alice".to_owned(), public(ALICE.1).id()),
            ("bob".to_owned(), public(BOB.1).id())
        ]
    );
    // Another key does not verify it.
    assert!(entries[0].verify(&public(ALICE.1)).is_err());

    let again = alice.directory().await;
    assert_eq!(again, entries);
    assert_eq!(
        s.key.signatures.load(Ordering::SeqCst) - before,
        2,
        "a request while the trust list is unchanged costs no signature"
    );

    trust(&*s.store, "carol", &public("alice4096")).await;
    let changed = alice.directory().await;
    let generation = s.store.trust_generation().await.unwrap();
    let names: Vec<_> = changed
        .iter()
        .map(|e| {
            let entry = e.verify(&server_key).unwrap();
            assert_eq!(
                entry.serial, generation,
                "every entry of one answer has the new serial"
            );
            entry.name
        })
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    drop(alice);
    s.stop().await;
}

/// alice relays `text` to bob and the server stores it; its id.
async fn alice_relays_to_bob(s: &Relaying, text: &[u8]) -> MessageId {
    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, text);
    let mut alice = s.conn(ALICE).await;
    alice
        .relay(receipt_commitment(&sealed.ack_tag), &bytes)
        .await;
    let id = sealed.header.message_id;
    assert_eq!(alice.next().await, Frame::Stored { id });
    id
}

/// `server untrust` of a client says how many of the messages it relayed still wait for other
/// clients: signed by a key the directory no longer lists, they are set aside by a recipient
/// that does not know the key already (found by a trial run: the untrust said nothing of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusting_a_sender_says_its_relayed_messages_still_wait() {
    let s = Relaying::start().await;
    let id = alice_relays_to_bob(&s, b"sent while trusted").await;
    let keys = tempfile::tempdir().unwrap();
    let db = s.dir.path().join("server.db");
    let (code, _, untrust) = common::cli::run(
        keys.path(),
        &[
            "server",
            "untrust",
            "alice",
            "--keys",
            keys.path().to_str().unwrap(),
            "--store",
            db.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{untrust}");
    assert!(
        untrust.contains("1 message(s) alice relayed to other clients (bob) still wait for them")
            && untrust.contains("`--remove ID --force` deletes one"),
        "{untrust}"
    );
    // The outbox says so too. A recipient that learnt the key before still opens it, so it
    // is deleted only with --force.
    let args = |extra: &[&str]| {
        let mut all = vec!["server", "outbox"];
        all.extend_from_slice(extra);
        all.extend_from_slice(&[
            "--keys",
            keys.path().to_str().unwrap(),
            "--store",
            db.to_str().unwrap(),
        ]);
        let (code, out, err) = common::cli::run(keys.path(), &all);
        (code, String::from_utf8_lossy(&out).into_owned(), err)
    };
    let (code, listed, err) = args(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listed.contains("FROM A KEY NO LONGER TRUSTED")
            && listed.contains("1 relayed under a client key no longer trusted"),
        "{listed}"
    );
    let id_hex = hex::encode(id.0);
    let (code, _, err) = args(&["--remove", &id_hex[..12]]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = args(&["--remove", &id_hex[..12], "--force"]);
    assert_eq!(code, 0, "{err}");
    let (_, listed, _) = args(&[]);
    assert!(listed.contains("outbox is empty"), "{listed}");
    s.stop().await;
}

/// `server read` of a relayed message says it cannot: the message is sealed for its
/// recipient, not for the server, and names who it is from and for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_read_of_a_relayed_message_says_the_server_cannot_open_it() {
    let s = Relaying::start().await;
    let id = alice_relays_to_bob(&s, b"not for the server").await;

    let keys = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::private_path(SERVER),
        keys.path().join("server_private.pem"),
    )
    .unwrap();
    let db = s.dir.path().join("server.db");
    let id_hex = hex::encode(id.0);
    let (code, stdout, stderr) = common::cli::run(
        keys.path(),
        &[
            "server",
            "read",
            &id_hex[..12],
            "--keys",
            keys.path().to_str().unwrap(),
            "--store",
            db.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("relayed from alice to bob") && stderr.contains("cannot open it"),
        "{stderr}"
    );
    assert!(stderr.contains("it waits in bob's outbox"), "{stderr}");
    // Once bob's key is no longer trusted, nobody can fetch it: it says so, and how to delete it.
    let mailbox = [
        "--keys",
        keys.path().to_str().unwrap(),
        "--store",
        db.to_str().unwrap(),
    ];
    let (code, _, untrust) = common::cli::run(
        keys.path(),
        &[&["server", "untrust", "bob"][..], &mailbox[..]].concat(),
    );
    assert_eq!(code, 0, "{untrust}");
    // The untrust itself says so, naming the sender who alone can send it again.
    assert!(
        untrust.contains("1 message(s) other clients relayed to bob's key stay undelivered")
            && untrust.contains("only their senders can send them again (alice)"),
        "{untrust}"
    );
    let (code, _, stderr) = common::cli::run(
        keys.path(),
        &[&["server", "read", &id_hex[..12]][..], &mailbox[..]].concat(),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no longer trusted") && stderr.contains("server outbox --remove"),
        "{stderr}"
    );
    s.stop().await;
}

/// The same over PostgreSQL: relayed, repeated, delivered byte for byte, acked, receipted for
/// the sender only; one under a wrong commitment removed without a receipt; the server opened
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_postgres_a_relay_is_stored_delivered_and_receipted() {
    let database = common::postgres::database().await;
    let store = Arc::new(
        letterlock::store::PostgresStore::connect(&database.url)
            .await
            .unwrap(),
    );
    let s = Relaying::over(
        store,
        ServerConfig::default(),
        tempfile::tempdir().unwrap(),
        Some(database),
    )
    .await;
    let secret = b"a large note only bob reads. ".repeat(10_000);
    let (bytes, sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, &secret);
    let id = sealed.header.message_id;
    let mut alice = s.conn(ALICE).await;
    for _ in 0..2 {
        alice
            .relay(receipt_commitment(&sealed.ack_tag), &bytes)
            .await;
        assert_eq!(alice.next().await, Frame::Stored { id });
    }
    let stats = s.server.receive_stats();
    assert_eq!(
        (stats.relayed, stats.relay_repeats, stats.opened),
        (1, 1, 0)
    );

    // A second message under a commitment that is not its tag's: removed without a receipt.
    let (lied, lied_sealed) = seal(ALICE.1, BOB.1, Mode::Hybrid, b"a wrong commitment");
    let lied_id = lied_sealed.header.message_id;
    alice.relay([0x5A; 32], &lied).await;
    assert_eq!(alice.next().await, Frame::Stored { id: lied_id });

    let mut bob = s.conn(BOB).await;
    assert!(
        bob.fetch().await == [bytes.clone(), lied],
        "delivered byte for byte, in the order stored"
    );
    bob.send(Frame::DeliveryAck {
        id: lied_id,
        tag: lied_sealed.ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id: lied_id });
    assert!(alice.receipts(&[lied_id]).await.is_empty());
    bob.send(Frame::DeliveryAck {
        id,
        tag: sealed.ack_tag,
    })
    .await;
    assert_eq!(bob.next().await, Frame::Removed { id });
    assert!(bob.fetch().await.is_empty());
    let receipts = alice.receipts(&[id]).await;
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].tag, sealed.ack_tag);
    assert!(bob.receipts(&[id]).await.is_empty());
    drop((alice, bob));
    s.stop().await;
}
