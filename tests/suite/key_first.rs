//! A hybrid message's header and wrapped key may arrive before the rest of it (a one-shot client
//! sends them first, while its signature may still be being made): the server starts
//! decrypting the content key at once. The
//! message is still accepted only whole and verified, and a failure says the same words
//! whichever part failed.

use crate::common;

use std::time::{Duration, Instant};

use common::data;
use common::net::{CLIENT, SERVER, TestServer, seal_to_server};
use common::peer::{Raw, assert_no_server_panic, authed, refused, served, setup};
use letterlock::client::Sealing;
use letterlock::envelope::{self, HEADER_LEN, Mode, SealError, SealOptions};
use letterlock::store::Store;
use letterlock::wire::{DATA_FRAME, ErrorCode, Frame};

/// The header and the key wrapped for the test server (a 2048-bit key: 256 bytes).
const HEAD_LEN: usize = HEADER_LEN + 256;

/// Waits until the server has started decrypting `n` content keys ahead of their messages.
async fn keys_ahead(server: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.server.receive_stats().keys_ahead < n {
        assert!(Instant::now() < deadline, "the key was not decrypted ahead");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends the head of `bytes` alone and waits for the server to start on its key.
async fn send_head(server: &TestServer, raw: &mut Raw, bytes: &[u8]) {
    let before = server.server.receive_stats().keys_ahead;
    raw.w
        .write_frame(&Frame::Send(bytes[..HEAD_LEN].to_vec()))
        .await
        .unwrap();
    keys_ahead(server, before + 1).await;
}

/// The rest of `bytes` after its head, as `Send` frames and `SendEnd`.
async fn send_rest(raw: &mut Raw, bytes: &[u8]) {
    for chunk in bytes[HEAD_LEN..].chunks(DATA_FRAME) {
        raw.w.queue_frame(&Frame::Send(chunk.to_vec()));
    }
    raw.w.queue_frame(&Frame::SendEnd);
    raw.w.flush().await.unwrap();
}

#[tokio::test]
async fn a_key_that_arrives_first_is_decrypted_meanwhile_and_the_whole_message_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // Larger than one batch (256 KiB): the batch waits for the key's decryption first.
    let plain = data(300 * 1024);
    let (bytes, sealed) = seal_to_server(CLIENT, &plain, [1; 16], envelope::unix_now());
    let mut raw = authed(&server.addr).await;
    send_head(&server, &mut raw, &bytes).await;
    assert_eq!(server.inbox_len().await, 0, "stored before it was whole");
    send_rest(&mut raw, &bytes).await;
    match raw.r.read_frame().await.unwrap() {
        Frame::Ack { id, tag } => {
            assert_eq!(id, sealed.header.message_id);
            assert_eq!(tag, sealed.ack_tag, "the ack proves the same message");
        }
        other => panic!("expected an Ack, got {other:?}"),
    }
    let stats = server.server.receive_stats();
    assert_eq!((stats.opened, stats.keys_ahead), (1, 1));
    let message = server
        .store
        .find_inbox(&sealed.header.message_id.to_string())
        .await
        .unwrap();
    let mut stored = Vec::new();
    std::io::Read::read_to_end(&mut { message.body }, &mut stored).unwrap();
    assert!(
        stored == bytes,
        "the stored bytes are not the sealed message"
    );
    server.stop().await;
}

/// Sends `bytes` (a message altered somewhere) key first and returns the server's refusal.
async fn refusal_of(server: &TestServer, bytes: &[u8]) -> String {
    let mut raw = authed(&server.addr).await;
    send_head(server, &mut raw, bytes).await;
    send_rest(&mut raw, bytes).await;
    refused(&mut raw, ErrorCode::Refused).await
}

#[tokio::test]
async fn a_message_altered_in_its_key_or_after_it_is_refused_in_the_same_words() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = envelope::unix_now();
    let (bytes, sealed) = seal_to_server(CLIENT, &data(2000), [2; 16], now);

    // The wrapped key: its decryption, started ahead, fails.
    let mut key = bytes.clone();
    key[HEADER_LEN + 100] ^= 1;
    // A byte of the body, after the key decrypted fine.
    let mut body = bytes.clone();
    body[HEAD_LEN + 10] ^= 1;
    // The last byte: the tag over the signature.
    let mut last = bytes.clone();
    *last.last_mut().unwrap() ^= 1;

    let words = refusal_of(&server, &key).await;
    assert_eq!(refusal_of(&server, &body).await, words);
    assert_eq!(refusal_of(&server, &last).await, words);
    assert_eq!(words, "message failed verification");
    assert_eq!(server.inbox_len().await, 0, "an altered message was stored");
    assert_eq!(server.server.receive_stats().keys_ahead, 3);
    // The unaltered message is still accepted: nothing was recorded for its id.
    let mut client = server.client(CLIENT).await.unwrap();
    client.send_sealed(&bytes, &sealed).await.unwrap();
    assert_eq!(server.inbox_len().await, 1);
    assert_no_server_panic();
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_after_sending_its_key_leaves_nothing_behind() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bytes, _) = seal_to_server(CLIENT, &data(2000), [3; 16], envelope::unix_now());
    let mut raw = authed(&server.addr).await;
    send_head(&server, &mut raw, &bytes).await;
    drop(raw);
    // The server goes on serving; the half message is in no inbox.
    served(&server).await;
    assert_eq!(server.inbox_len().await, 1);
    assert_no_server_panic();
    server.stop().await;
}

/// Seals `plain` for the test server on the blocking pool, as the command line does.
fn sealing(plain: Vec<u8>, mode: Mode) -> Sealing {
    let server = common::public(SERVER);
    Sealing::start(&server.clone(), mode, move |out| {
        let me = common::private(CLIENT);
        envelope::seal_slice(me.as_ref(), &server, &SealOptions::mode(mode), &plain, out)
    })
}

#[tokio::test]
async fn a_message_sent_while_it_is_sealed_is_delivered_in_either_mode() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client(CLIENT).await.unwrap();
    let backoff = letterlock::client::Backoff::default();
    for (mode, len) in [
        (Mode::Hybrid, 100),
        (Mode::Hybrid, 200_000),
        (Mode::Asymmetric, 500),
    ] {
        let d = client
            .send_sealing(sealing(data(len), mode), backoff, |_| {})
            .await
            .unwrap();
        assert_eq!((d.header.mode, d.plaintext_len), (mode, len as u64));
        let stored = server
            .store
            .find_inbox(&d.id.to_string())
            .await
            .unwrap()
            .summary
            .plaintext_len;
        assert_eq!(stored, len as u64);
    }
    assert_eq!(server.inbox_len().await, 3);
    server.stop().await;
}

/// A message whose key went ahead and which then breaks the protocol, goes silent, or turns out
/// larger than the server accepts ends its connection with the usual answer; nothing of it is
/// stored, no task panics, and the server goes on serving.
#[tokio::test]
async fn a_message_that_fails_after_its_key_went_ahead_is_answered_as_before() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let config = letterlock::server::ServerConfig {
        idle_timeout: Duration::from_millis(300),
        max_hybrid: 1000,
        ..letterlock::server::ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let now = envelope::unix_now();

    // A frame that has no place inside a message.
    let (bytes, _) = seal_to_server(CLIENT, &data(500), [4; 16], now);
    let mut raw = authed(&server.addr).await;
    send_head(&server, &mut raw, &bytes).await;
    raw.w.write_frame(&Frame::Fetch).await.unwrap();
    refused(&mut raw, ErrorCode::Protocol).await;

    // Silence until the idle timeout.
    let (bytes, _) = seal_to_server(CLIENT, &data(500), [5; 16], now);
    let mut raw = authed(&server.addr).await;
    send_head(&server, &mut raw, &bytes).await;
    refused(&mut raw, ErrorCode::Timeout).await;

    // A plaintext over the server's limit: its opener says so once the rest is fed.
    let (bytes, _) = seal_to_server(CLIENT, &data(2000), [6; 16], now);
    let mut raw = authed(&server.addr).await;
    send_head(&server, &mut raw, &bytes).await;
    send_rest(&mut raw, &bytes).await;
    refused(&mut raw, ErrorCode::TooLarge).await;

    // The header and key alone, then the end: a message cut short.
    let (bytes, _) = seal_to_server(CLIENT, &data(500), [7; 16], now);
    let mut raw = authed(&server.addr).await;
    send_head(&server, &mut raw, &bytes).await;
    raw.w.write_frame(&Frame::SendEnd).await.unwrap();
    let words = refused(&mut raw, ErrorCode::Refused).await;
    assert_eq!(words, "message failed verification");

    assert_eq!(server.server.receive_stats().keys_ahead, 4);
    assert_eq!(server.inbox_len().await, 0, "a failed message was stored");
    served(&server).await;
    assert_no_server_panic();
    server.stop().await;
}

/// Messages pipelined behind one whose key went ahead are each opened and acked, with one
/// message in flight per connection or several: the key's decryption in the background neither
/// loses nor reorders a frame of the next messages, whose own keys go ahead in turn while the
/// one before is still being verified.
#[tokio::test]
async fn messages_pipelined_behind_a_key_that_went_ahead_are_all_acked() {
    for max_in_flight in [1, letterlock::server::ServerConfig::default().max_in_flight] {
        let dir = tempfile::tempdir().unwrap();
        let config = letterlock::server::ServerConfig {
            max_in_flight,
            ..letterlock::server::ServerConfig::default()
        };
        let server = TestServer::start_with(dir.path(), config).await;
        let now = envelope::unix_now();
        let messages: Vec<_> = (0..4u8)
            .map(|i| seal_to_server(CLIENT, &data(3000 + usize::from(i)), [0x40 + i; 16], now))
            .collect();
        let mut raw = authed(&server.addr).await;
        send_head(&server, &mut raw, &messages[0].0).await;
        for i in 1..messages.len() {
            // The rest of one message and the head of the next in one write; the last whole.
            for chunk in messages[i - 1].0[HEAD_LEN..].chunks(DATA_FRAME) {
                raw.w.queue_frame(&Frame::Send(chunk.to_vec()));
            }
            raw.w.queue_frame(&Frame::SendEnd);
            if i + 1 < messages.len() {
                send_head(&server, &mut raw, &messages[i].0).await;
            } else {
                raw.w.queue_frame(&Frame::Send(messages[i].0.clone()));
                raw.w.queue_frame(&Frame::SendEnd);
                raw.w.flush().await.unwrap();
            }
        }
        let mut acked = std::collections::HashMap::new();
        for _ in 0..messages.len() {
            match raw.r.read_frame().await.unwrap() {
                Frame::Ack { id, tag } => {
                    acked.insert(id, tag);
                }
                other => panic!("expected an Ack, got {other:?}"),
            }
        }
        for (_, sealed) in &messages {
            assert_eq!(
                acked.get(&sealed.header.message_id),
                Some(&sealed.ack_tag),
                "a pipelined message was not acked with its own tag ({max_in_flight} in flight)"
            );
        }
        assert_eq!(server.inbox_len().await, messages.len());
        server.stop().await;
    }
}

/// A repeat of a stored message, and an asymmetric message, sent head first: nothing is
/// decrypted ahead (a known id is only hashed; an asymmetric header alone gives nothing to
/// decrypt), and each gets its usual answer.
#[tokio::test]
async fn a_known_id_or_an_asymmetric_message_sent_head_first_is_not_decrypted_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bytes, sealed) = seal_to_server(CLIENT, &data(2000), [8; 16], envelope::unix_now());
    let mut client = server.client(CLIENT).await.unwrap();
    client.send_sealed(&bytes, &sealed).await.unwrap();
    drop(client);
    let before = server.server.receive_stats();

    let mut raw = authed(&server.addr).await;
    raw.w
        .write_frame(&Frame::Send(bytes[..HEAD_LEN].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_rest(&mut raw, &bytes).await;
    match raw.r.read_frame().await.unwrap() {
        Frame::Ack { id, tag } => assert_eq!((id, tag), (sealed.header.message_id, sealed.ack_tag)),
        other => panic!("expected the stored Ack again, got {other:?}"),
    }

    let asym = common::peer::sealed(300, Mode::Asymmetric);
    raw.w
        .write_frame(&Frame::Send(asym[..HEAD_LEN].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_rest(&mut raw, &asym).await;
    assert!(matches!(
        raw.r.read_frame().await.unwrap(),
        Frame::Ack { .. }
    ));

    let after = server.server.receive_stats();
    assert_eq!(after.keys_ahead, before.keys_ahead, "decrypted ahead");
    assert_eq!(after.repeats_answered, before.repeats_answered + 1);
    assert_eq!(server.inbox_len().await, 2);
    server.stop().await;
}

/// Stands in front of `upstream` (the test server): the first connection it accepts it answers
/// itself, as a server that lost its database would, with `Unavailable` as soon as the first
/// `Send` frame arrives, then reads the rest until the client leaves; every later connection
/// goes through to `upstream`. Returns its address and, once the first connection ended, the
/// `Send` payloads it got, in order.
async fn unavailable_once(upstream: String) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    use letterlock::keys::Identity;
    use letterlock::wire::{self, FrameReader, FrameWriter};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let first = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        // Any later connection: to the test server.
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut to = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut to).await;
                });
            }
        });
        let (r, w) = socket.into_split();
        let (mut r, mut w) = (
            FrameReader::new(r, wire::DEFAULT_MAX_FRAME),
            FrameWriter::new(w),
        );
        let hello = Frame::Hello {
            version: wire::PROTOCOL_VERSION,
            server: common::private(SERVER).public().id(),
            challenge: [9; wire::CHALLENGE_LEN],
        };
        w.write_frame(&hello).await.unwrap();
        assert!(matches!(r.read_frame().await.unwrap(), Frame::Auth { .. }));
        w.write_frame(&Frame::Ready).await.unwrap();
        let mut got = Vec::new();
        let mut answered = false;
        // Until the client closes (reading all it sends, so that nothing resets the socket).
        while let Ok(frame) = r.read_frame().await {
            if let Frame::Send(data) = frame {
                got.push(data);
                if !answered {
                    let no = Frame::Error {
                        code: ErrorCode::Unavailable,
                        message: "the mailbox database is unavailable".into(),
                    };
                    w.write_frame(&no).await.unwrap();
                    answered = true;
                }
            }
        }
        got
    });
    (addr, first)
}

/// A message whose head went out alone and was answered `Unavailable` is sent again whole on a
/// new connection, byte for byte: the same id, stored once, and what went out first was
/// exactly its beginning.
#[tokio::test]
async fn a_head_first_send_answered_unavailable_is_resent_whole_and_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (front, first) = unavailable_once(server.addr.clone()).await;
    let identity: std::sync::Arc<dyn letterlock::keys::Identity> = common::private(CLIENT);
    let mut client = letterlock::client::Client::connect(
        &front,
        identity,
        common::public(SERVER),
        letterlock::client::ClientConfig::default(),
    )
    .await
    .unwrap();
    let mut retries = Vec::new();
    let d = client
        .send_sealing(
            sealing(data(5000), Mode::Hybrid),
            letterlock::client::Backoff::default(),
            |r| retries.push(r.attempt),
        )
        .await
        .unwrap();
    assert_eq!(retries, [2], "one resend after Unavailable");
    drop(client);
    let got = first.await.unwrap();
    assert_eq!(got[0].len(), HEAD_LEN, "the head went out alone");

    let stored = server.store.find_inbox(&d.id.to_string()).await.unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut { stored.body }, &mut bytes).unwrap();
    assert_eq!(
        got.concat(),
        bytes,
        "the first attempt and the resend differ"
    );
    assert_eq!(server.inbox_len().await, 1);
    server.stop().await;
}

/// Yields `left` bytes, then fails: a file whose disk went away while it was read.
struct FailsAfter(usize);

impl std::io::Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = self.0.min(buf.len());
        buf[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

/// After a send that failed because its input did: the failure was the sealing's, and the
/// next message on the same client is not taken as the rest of the failed one (refused as a
/// message that "failed verification"); it fails on its own account or is stored, alone.
async fn nothing_left_half_sent(
    server: &TestServer,
    client: &mut letterlock::client::Client,
    failed: Result<letterlock::client::Delivery, letterlock::client::ClientError>,
    next_id: [u8; 16],
) {
    match failed {
        Err(letterlock::client::ClientError::Seal(SealError::Io(e))) => {
            assert_eq!(e.to_string(), "the disk went away")
        }
        other => panic!("expected the sealing's failure, got {other:?}"),
    }
    let (bytes, sealed) = seal_to_server(CLIENT, &data(100), next_id, envelope::unix_now());
    let next = client.send_sealed(&bytes, &sealed).await;
    assert!(
        !matches!(next, Err(letterlock::client::ClientError::Refused { .. })),
        "the next message was taken as the rest of the failed one: {next:?}"
    );
    assert_eq!(server.inbox_len().await, usize::from(next.is_ok()));
}

/// A sealing that fails after its head went out (the input could not be read to its end)
/// leaves no half message on the connection.
#[tokio::test]
async fn a_sealing_that_fails_after_its_head_went_out_leaves_no_half_message_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client(CLIENT).await.unwrap();
    let recipient = common::public(SERVER);
    let failing = Sealing::start(&recipient.clone(), Mode::Hybrid, move |out| {
        let me = common::private(CLIENT);
        let opts = SealOptions::mode(Mode::Hybrid);
        envelope::seal(me.as_ref(), &recipient, &opts, FailsAfter(100_000), out)
    });
    let backoff = letterlock::client::Backoff::default();
    let failed = client.send_sealing(failing, backoff, |_| {}).await;
    nothing_left_half_sent(&server, &mut client, failed, [9; 16]).await;
    server.stop().await;
}

/// The same for a message sealed as it is sent (`Client::send`, streamed in 256 KiB frames):
/// the input fails after more than a frame went out.
#[tokio::test]
async fn a_streamed_message_whose_input_fails_midway_leaves_no_half_message_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client(CLIENT).await.unwrap();
    let failed = client
        .send(FailsAfter(600_000), SealOptions::mode(Mode::Hybrid))
        .await;
    nothing_left_half_sent(&server, &mut client, failed, [10; 16]).await;
    server.stop().await;
}
