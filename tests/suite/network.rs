//! The client and server over real TCP on 127.0.0.1: issue #3's end-to-end cases.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::net::{CLIENT, SERVER, TestServer, seal_to_server};
use common::{data, private, public};
use letterlock::client::{ClientError, Content, Output};
use letterlock::envelope::{self, Mode, SealOptions, Sealed};
use letterlock::keys::Identity;
use letterlock::server::ServerConfig;
use letterlock::store::SqliteOptions;
use letterlock::wire::ErrorCode;

fn refused_with(r: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match r {
        Err(ClientError::Refused { code: c, .. }) if c == code => {}
        other => panic!("expected refusal {code:?}, got {other:?}"),
    }
}

/// Sends `message` (bytes, what the sealer reported) as the test client on a fresh connection;
/// the server must refuse it with `code`.
async fn send_refused(server: &TestServer, message: &(Vec<u8>, Sealed), code: ErrorCode) {
    let mut client = server.client(CLIENT).await.unwrap();
    refused_with(client.send_sealed(&message.0, &message.1).await, code);
}

#[tokio::test]
async fn send_and_receive_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client(CLIENT).await.unwrap();
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let text = format!("secret in {mode} mode").into_bytes();
        let d = client
            .send(std::io::Cursor::new(text.clone()), SealOptions::mode(mode))
            .await
            .unwrap();
        assert_eq!(d.header.mode, mode);
        assert_eq!(d.plaintext_len, text.len() as u64);
    }
    assert_eq!(server.inbox_len().await, 2);

    // The server's reply, both modes, fetched and verified by the client.
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let text = format!("reply in {mode} mode");
        server
            .queue_for_client(text.as_bytes(), &SealOptions::mode(mode))
            .await;
    }
    let mut got = Vec::new();
    let n = client
        .fetch(&Output::Memory { limit: 1 << 20 }, |r| {
            if let Content::Memory(m) = &r.content {
                got.push((r.header.mode, String::from_utf8(m.to_vec()).unwrap()));
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    got.sort_by_key(|(_, t)| t.clone());
    assert_eq!(
        got,
        vec![
            (Mode::Asymmetric, "reply in asymmetric mode".to_owned()),
            (Mode::Hybrid, "reply in hybrid mode".to_owned())
        ]
    );
    // recv twice does not deliver twice.
    let again = client
        .fetch(&Output::Memory { limit: 1 << 20 }, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(again, 0);
    server.stop().await;
}

#[tokio::test]
async fn untrusted_client_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    refused_with(server.client("mallory").await, ErrorCode::AuthFailed);
    assert_eq!(server.inbox_len().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn client_with_the_wrong_server_key_refuses_to_send() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let identity: Arc<dyn Identity> = private(CLIENT);
    let wrong = public("bob3072");
    let r = letterlock::client::Client::connect(&server.addr, identity, wrong, Default::default())
        .await;
    assert!(
        matches!(r, Err(ClientError::WrongServer { .. })),
        "{:?}",
        r.err()
    );
    assert_eq!(server.inbox_len().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn replays_are_acked_once_or_refused_never_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let (bytes, sealed) = seal_to_server(CLIENT, b"pay 10 coins", [1; 16], now);
    let mut client = server.client(CLIENT).await.unwrap();
    let first = client.send_sealed(&bytes, &sealed).await.unwrap();
    // The same bytes again, on a fresh connection: a retry after a lost ack is acked again.
    let mut client = server.client(CLIENT).await.unwrap();
    let second = client.send_sealed(&bytes, &sealed).await.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(server.inbox_len().await, 1);
    // The same id with other content is refused.
    let (other, other_sealed) = seal_to_server(CLIENT, b"pay 99 coins", [1; 16], now);
    refused_with(
        client.send_sealed(&other, &other_sealed).await,
        ErrorCode::Replay,
    );
    assert_eq!(server.inbox_len().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn stale_and_future_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    for created in [now - 3600, now + 3600] {
        let late = seal_to_server(CLIENT, b"late", [2; 16], created);
        send_refused(&server, &late, ErrorCode::Stale).await;
    }
    assert_eq!(server.inbox_len().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_header_sender_other_than_the_authenticated_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // Sealed and signed by carol (trusted), sent over alice's authenticated connection.
    let from_carol = seal_to_server("alice3072", b"from carol", [3; 16], envelope::unix_now());
    send_refused(&server, &from_carol, ErrorCode::Refused).await;
    assert_eq!(server.inbox_len().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_mode_the_server_does_not_accept_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        accept: letterlock::server::Accept::Hybrid,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut client = server.client(CLIENT).await.unwrap();
    let r = client
        .send(&b"x"[..], SealOptions::mode(Mode::Asymmetric))
        .await;
    refused_with(r, ErrorCode::ModeNotAccepted);
    server.stop().await;
}

/// A fake version 1 server's side of one session: accepts, says Hello with the real server key
/// id (so the client's pinning passes), takes any Auth, says Ready.
async fn fake_server_session(
    listener: &tokio::net::TcpListener,
) -> (
    letterlock::wire::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    letterlock::wire::FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    use letterlock::wire::{Frame, FrameReader, FrameWriter};
    let (socket, _) = listener.accept().await.unwrap();
    let (r, w) = socket.into_split();
    let mut r = FrameReader::new(r, 1 << 20);
    let mut w = FrameWriter::new(w);
    w.write_frame(&Frame::Hello {
        version: 1,
        server: public(SERVER).id(),
        challenge: [9; 32],
    })
    .await
    .unwrap();
    assert!(matches!(r.read_frame().await.unwrap(), Frame::Auth { .. }));
    w.write_frame(&Frame::Ready).await.unwrap();
    (r, w)
}

/// A fake server that holds the real server key (so the client's pinning passes) but answers
/// every message with a forged ack: the client must not report delivery.
#[tokio::test]
async fn a_forged_ack_makes_the_client_report_failure() {
    use letterlock::wire::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_server_session(&listener).await;
        let mut header = Vec::new();
        loop {
            match r.read_frame().await.unwrap() {
                Frame::Send(d) => header.extend_from_slice(&d),
                Frame::SendEnd => break,
                f => panic!("{f:?}"),
            }
        }
        let h = envelope::Header::parse(&header).unwrap();
        w.write_frame(&Frame::Ack {
            id: h.message_id,
            tag: [0xAA; 32],
        })
        .await
        .unwrap();
    });
    let identity: Arc<dyn Identity> = private(CLIENT);
    let mut client =
        letterlock::client::Client::connect(&addr, identity, public(SERVER), Default::default())
            .await
            .unwrap();
    let r = client
        .send(&b"did you get it?"[..], SealOptions::default())
        .await;
    assert!(matches!(r, Err(ClientError::NotProven { .. })), "{r:?}");
    fake.await.unwrap();
}

/// The server reads nothing while it streams a fetch, so a client that wrote its delivery acks
/// during the delivery could, with enough messages, fill both TCP directions and stall. A fake
/// server delivers two messages and holds back `FetchDone`: no ack may come until it is sent.
#[tokio::test]
async fn delivery_acks_wait_for_fetch_done() {
    use letterlock::wire::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = tokio::spawn(async move {
        let (mut r, mut w) = fake_server_session(&listener).await;
        assert!(matches!(r.read_frame().await.unwrap(), Frame::Fetch));
        let server_key = private(SERVER);
        for text in [&b"first"[..], &b"second"[..]] {
            let sealed = common::seal(
                server_key.as_ref(),
                &public(CLIENT),
                &SealOptions::default(),
                text,
            );
            w.queue_frame(&Frame::Deliver(sealed));
            w.queue_frame(&Frame::DeliverEnd);
        }
        w.flush().await.unwrap();
        // The client has both messages; nothing may arrive while FetchDone is held back.
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(500), r.read_frame()).await;
        assert!(early.is_err(), "a frame came before FetchDone: {early:?}");
        w.write_frame(&Frame::FetchDone { count: 2 }).await.unwrap();
        for _ in 0..2 {
            match r.read_frame().await.unwrap() {
                Frame::DeliveryAck { id, .. } => {
                    w.write_frame(&Frame::Removed { id }).await.unwrap()
                }
                f => panic!("{f:?}"),
            }
        }
    });
    let identity: Arc<dyn Identity> = private(CLIENT);
    let mut client =
        letterlock::client::Client::connect(&addr, identity, public(SERVER), Default::default())
            .await
            .unwrap();
    let n = client
        .fetch(&Output::Memory { limit: 1 << 20 }, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(n, 2);
    fake.await.unwrap();
}

#[tokio::test]
async fn a_restart_keeps_the_inbox_and_undelivered_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client(CLIENT).await.unwrap();
    let big = data(300 * 1024); // lives in a body file, not inline
    client
        .send(std::io::Cursor::new(big.clone()), SealOptions::default())
        .await
        .unwrap();
    server
        .queue_for_client(&b"waiting for you"[..], &SealOptions::default())
        .await;
    drop(client);
    let store = server.store.clone();
    server.stop().await;
    Arc::try_unwrap(store).ok().unwrap().close().await.unwrap();

    let server = TestServer::start(dir.path()).await;
    assert_eq!(server.inbox_len().await, 1);
    let mut client = server.client(CLIENT).await.unwrap();
    let out = dir.path().join("received");
    let mut files = Vec::new();
    let n = client
        .fetch(&Output::Dir(out.clone()), |r| {
            if let Content::File(p) = &r.content {
                files.push(p.clone());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(std::fs::read(&files[0]).unwrap(), b"waiting for you");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(TestServer::start(dir.path()).await);
    let mut tasks = Vec::new();
    for c in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = server.client(CLIENT).await.unwrap();
            for m in 0..5 {
                let mode = if m % 2 == 0 {
                    Mode::Hybrid
                } else {
                    Mode::Asymmetric
                };
                let body = data(c * 1000 + m * 37 + 1);
                client
                    .send(std::io::Cursor::new(body), SealOptions::mode(mode))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.inbox_len().await, 80);
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

#[tokio::test]
async fn pipelined_messages_on_one_connection_are_all_acked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let msgs: Vec<_> = (0..20u8)
        .map(|i| seal_to_server(CLIENT, &data(1000 + i as usize), [i + 100; 16], now))
        .collect();
    let mut client = server.client(CLIENT).await.unwrap();
    let delivered = client.send_sealed_many(&msgs).await.unwrap();
    assert_eq!(delivered.len(), 20);
    assert_eq!(server.inbox_len().await, 20);
    server.stop().await;
}

/// Messages opened together share commits: the server announces each message it verifies to
/// its store (`Store::write_coming`), and the store's writer holds a write back while others
/// are on their way, within its commit spacing. One message alone commits at once; the next 19,
/// sent together right after it, wait for the spacing to pass since that commit and then share
/// one. Without the announcement nothing would wait: they would be stored as soon as verified.
#[tokio::test]
async fn messages_opened_together_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let spacing = Duration::from_secs(4);
    let options = SqliteOptions {
        commit_spacing: spacing,
    };
    let server = TestServer::start_over(dir.path(), ServerConfig::default(), options).await;
    let now = envelope::unix_now();
    let msgs: Vec<_> = (0..20u8)
        .map(|i| seal_to_server(CLIENT, &data(500 + i as usize), [i + 60; 16], now))
        .collect();
    let mut client = server.client(CLIENT).await.unwrap();
    let before = server.store.stats();
    let alone = std::time::Instant::now();
    assert_eq!(client.send_sealed_many(&msgs[..1]).await.unwrap().len(), 1);
    assert!(alone.elapsed() < spacing, "a lone message waited");
    let together = std::time::Instant::now();
    assert_eq!(client.send_sealed_many(&msgs[1..]).await.unwrap().len(), 19);
    let waited = together.elapsed();
    let after = server.store.stats();
    assert_eq!(after.writes_committed - before.writes_committed, 20);
    let commits = after.batches_committed - before.batches_committed;
    assert!(commits <= 3, "20 messages took {commits} commits");
    assert!(
        waited >= spacing - Duration::from_secs(1),
        "19 messages sent together were stored after {waited:?}, without waiting for each other"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_file_under_a_message_name_is_not_taken_for_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let sealed = server
        .queue_for_client(&b"the real message"[..], &SealOptions::default())
        .await;
    let out = dir.path().join("inbox");
    std::fs::create_dir_all(&out).unwrap();
    let planted = letterlock::client::message_path(&out, &sealed.header.message_id);
    std::fs::write(&planted, b"something else").unwrap();
    let mut client = server.client(CLIENT).await.unwrap();
    let err = client
        .fetch(&Output::Dir(out.clone()), |_| Ok(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("other content"), "{err}");
    assert_eq!(std::fs::read(&planted).unwrap(), b"something else");
    // Not acknowledged: still waiting on the server; once the file is moved away it arrives.
    // Leased to the first connection until the server has seen it end (a fetch with the same
    // key meanwhile gets nothing), so the next fetch may have to ask again.
    drop(client);
    std::fs::remove_file(&planted).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let n = loop {
        let mut client = server.client(CLIENT).await.unwrap();
        let n = client
            .fetch(&Output::Dir(out.clone()), |_| Ok(()))
            .await
            .unwrap();
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(n, 1);
    assert_eq!(std::fs::read(&planted).unwrap(), b"the real message");
    server.stop().await;
}

#[tokio::test]
async fn fetch_recorded_sets_aside_a_message_shorter_than_a_header_and_records_the_rest() {
    use letterlock::client::{FetchEvent, FetchReport};
    use letterlock::received::{Kind, ReceivedRecord};
    use letterlock::store::{OutboxRecord, Store};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // Garbage under a message id, shorter than a header, then a real message.
    let mut blob = server.store.blob_writer();
    std::io::Write::write_all(&mut blob, b"not a sealed message").unwrap();
    server
        .store
        .enqueue_outbox(OutboxRecord {
            recipient_key_id: public(CLIENT).id().0,
            recipient_name: "client".into(),
            message_id: [0xEE; 16],
            created: envelope::unix_now(),
            mode: 2,
            plaintext_len: 0,
            expected_ack_tag: [0; 32],
            body: blob.finish().unwrap(),
        })
        .await
        .unwrap();
    let sealed = server
        .queue_for_client(b"behind the garbage", &SealOptions::default())
        .await;

    let path = dir.path().join("received");
    let mut record = ReceivedRecord::open(&path, envelope::unix_now()).unwrap();
    let mut client = server.client(CLIENT).await.unwrap();
    let mut new = Vec::new();
    let mut aside = 0;
    let report = client
        .fetch_recorded(&Output::Memory { limit: 1 << 20 }, &mut record, |e| {
            match e {
                FetchEvent::New(r) => new.push(r.header.message_id),
                FetchEvent::SetAside { id: None, .. } => aside += 1,
                other => panic!("unexpected {other:?}"),
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        report,
        FetchReport {
            new: 1,
            repeats: 0,
            set_aside: 1,
            // Its header could not be read: never news to a client waiting for a message.
            set_aside_again: 1,
        }
    );
    assert_eq!((new, aside), (vec![sealed.header.message_id], 1));
    // Recorded durably: a fresh open of the file knows it.
    let reopened = ReceivedRecord::open(&path, envelope::unix_now()).unwrap();
    let server_id = public(SERVER).id().0;
    let entry = reopened
        .get(&server_id, &sealed.header.message_id.0)
        .unwrap();
    assert_eq!(entry.kind, Kind::Received);
    server.stop().await;
}

/// A server that stops taking our bytes in the middle of a message (a stopped process, a wedged
/// path) ends the send with the client's timeout, as a silent server does at every other step;
/// before, the write waited for as long as anyone let it (found by a trial run: a `kill
/// -STOP`ped server hung a large `send_msg`). Here a relay stops reading from the client once
/// the connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_taking_data_mid_message_times_the_send_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let (server_addr, stop, task) = common::net::v2_server(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let frozen = Arc::new(AtomicBool::new(false));
    let freeze = frozen.clone();
    let relay = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = async move {
            let mut buf = vec![0u8; 16 * 1024];
            // Once frozen, nothing more is read: the client's writes fill the windows.
            while !freeze.load(Ordering::SeqCst) {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            std::future::pending::<()>().await;
        };
        let down = async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        };
        tokio::join!(up, down);
    });
    let timeout = Duration::from_secs(2);
    let mut client = letterlock::client::Client::connect_tls(
        &addr,
        private(CLIENT),
        public(SERVER),
        letterlock::client::ClientConfig {
            timeout,
            ..Default::default()
        },
        letterlock::tls::TlsOptions::default(),
    )
    .await
    .unwrap();
    frozen.store(true, Ordering::SeqCst);
    let message = std::io::Cursor::new(data(32 << 20));
    let started = Instant::now();
    let sending = client.send(message, SealOptions::default());
    let sent = tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .expect("the send was still waiting after 60 s");
    let took = started.elapsed();
    match sent {
        Err(ClientError::Timeout { addr: a, after }) => {
            assert_eq!(a, addr);
            assert_eq!(after, timeout);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took >= timeout, "gave up after {took:?}");
    relay.abort();
    let _ = stop.send(());
    let _ = task.await;
}
