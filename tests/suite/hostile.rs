//! Hostile peers (issue #6, part 5): raw sockets that break the protocol on purpose. For every
//! case the server answers with a clear `Error` frame or closes, nothing is stored, no server
//! task panics, and a well-behaved `Client` is served normally afterwards (or at the same time).
//! The cases that also bound memory are in tests/memory_*.rs, one per test binary; the helpers
//! are in tests/common/peer.rs.

use crate::common;

use std::time::{Duration, Instant};

use common::net::{CLIENT, TestServer, seal_to_server};
use common::peer::*;
use common::{data, private};
use letterlock::client::ClientError;
use letterlock::envelope::{HEADER_LEN, Mode, SealOptions};
use letterlock::keys::{Identity, KeyId};
use letterlock::server::ServerConfig;
use letterlock::wire::{self, DATA_FRAME, ErrorCode, Frame};

// ---------------------------------------------------------------------------------------------
// Framing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefix_zero() {
    case(|addr| async move {
        let mut raw = raw(&addr).await;
        raw.w.write_raw(&[0, 0, 0, 0]).await.unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("empty"), "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_one_byte_over_the_limit() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        let len = (wire::DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes();
        raw.w.write_raw(&len).await.unwrap();
        refused(&mut raw, ErrorCode::Protocol).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_types_before_and_after_auth() {
    case(|addr| async move {
        for t in [0x00u8, 0x04, 0x55, 0x7e, 0x80, 0xff] {
            let mut raw = raw(&addr).await;
            raw.w.write_raw(&[0, 0, 0, 3, t, 1, 2]).await.unwrap();
            let m = refused(&mut raw, ErrorCode::Protocol).await;
            assert!(m.contains("unknown frame type"), "{m}");
            let mut raw = authed(&addr).await;
            raw.w.write_raw(&[0, 0, 0, 1, t]).await.unwrap();
            refused(&mut raw, ErrorCode::Protocol).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_size_frame_with_extra_payload() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        // Fetch takes no payload.
        raw.w.write_raw(&[0, 0, 0, 2, 0x20, 0]).await.unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("malformed Fetch"), "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_before_and_after_auth() {
    case(|addr| async move {
        let junk = data(4096);
        let mut raw = raw(&addr).await;
        let _ = raw.w.write_raw(&junk).await;
        refused_or_closed(&mut raw, ErrorCode::Protocol).await;
        let mut raw = authed(&addr).await;
        let _ = raw.w.write_raw(&junk).await;
        refused_or_closed(&mut raw, ErrorCode::Protocol).await;
        // HTTP at a letterlock port.
        let mut raw = raw_http(&addr).await;
        refused_or_closed(&mut raw, ErrorCode::Protocol).await;
    })
    .await;
}

async fn raw_http(addr: &str) -> Raw {
    let mut raw = raw(addr).await;
    let _ = raw.w.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw
}

// ---------------------------------------------------------------------------------------------
// Handshake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_first_frames() {
    case(|addr| async move {
        let firsts = [
            Frame::Send(sealed(10, Mode::Hybrid)),
            Frame::SendEnd,
            Frame::Fetch,
            Frame::Ready,
            Frame::Hello {
                version: 1,
                server: KeyId([0; 32]),
                challenge: [0; 32],
            },
            Frame::Ack {
                id: letterlock::envelope::MessageId([1; 16]),
                tag: [2; 32],
            },
            Frame::Deliver(vec![1, 2, 3]),
            Frame::error(ErrorCode::Internal, "client error first"),
        ];
        for f in firsts {
            let mut raw = raw(&addr).await;
            raw.w.write_frame(&f).await.unwrap();
            let m = refused(&mut raw, ErrorCode::Protocol).await;
            assert!(m.contains("expected Auth"), "{}: {m}", f.name());
        }
    })
    .await;
}

/// Sends `auth` as the handshake on `raw`: the server must refuse it with `AuthFailed`.
async fn auth_refused(raw: &mut Raw, auth: Frame) {
    raw.w.write_frame(&auth).await.unwrap();
    refused(raw, ErrorCode::AuthFailed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_key() {
    case(|addr| async move {
        let mut raw = raw(&addr).await;
        let auth = auth_frame(&raw, "mallory");
        auth_refused(&mut raw, auth).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature() {
    case(|addr| async move {
        let mut raw = raw(&addr).await;
        let Frame::Auth {
            client,
            mut signature,
        } = auth_frame(&raw, CLIENT)
        else {
            unreachable!()
        };
        signature[100] ^= 1;
        auth_refused(&mut raw, Frame::Auth { client, signature }).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_key_id_with_anothers_signature() {
    case(|addr| async move {
        let mut raw = raw(&addr).await;
        // Mallory signs a transcript naming alice's key id.
        let alice = private(CLIENT).public().id();
        let t = wire::handshake::transcript(&raw.server, &raw.challenge, &alice);
        let signature = private("mallory").sign(&t).unwrap();
        let auth = Frame::Auth {
            client: alice,
            signature,
        };
        auth_refused(&mut raw, auth).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replayed_from_another_connection() {
    case(|addr| async move {
        // A real, successful handshake, captured.
        let mut first = raw(&addr).await;
        let captured = auth_frame(&first, CLIENT);
        first.w.write_frame(&captured).await.unwrap();
        assert_eq!(first.r.read_frame().await.unwrap(), Frame::Ready);
        // Replayed on a new connection: new challenge, refused.
        let mut second = raw(&addr).await;
        assert_ne!(first.challenge, second.challenge, "challenge not fresh");
        auth_refused(&mut second, captured).await;
        // And the replay did not disturb the original connection.
        drop(first);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_10_and_5000_byte_signatures() {
    case(|addr| async move {
        let client = private(CLIENT).public().id();
        for len in [0usize, 10, 255, 1025, 5000] {
            let mut raw = raw(&addr).await;
            let mut body = vec![0x02];
            body.extend_from_slice(&client.0);
            body.extend_from_slice(&vec![0xa5; len]);
            let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            raw.w.write_raw(&bytes).await.unwrap();
            let m = refused(&mut raw, ErrorCode::Protocol).await;
            // Longer than any signature: refused from the length prefix, before the handshake
            // reads it (an unauthenticated peer may send only a handshake-sized frame).
            let expected = if len > 1024 {
                "over the limit"
            } else {
                "malformed Auth"
            };
            assert!(m.contains(expected), "{len}: {m}");
        }
        // A well-formed length but not a signature (a 384-byte one against a 2048-bit key).
        let mut raw = raw(&addr).await;
        let auth = Frame::Auth {
            client,
            signature: vec![0x5a; 384],
        };
        auth_refused(&mut raw, auth).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_twice() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        let again = auth_frame(&raw, CLIENT);
        raw.w.write_frame(&again).await.unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("unexpected Auth"), "{m}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Frames out of order after the handshake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_frames_from_the_client() {
    case(|addr| async move {
        let frames = [
            Frame::Ready,
            Frame::Ack {
                id: letterlock::envelope::MessageId([1; 16]),
                tag: [2; 32],
            },
            Frame::Deliver(vec![0; 10]),
            Frame::DeliverEnd,
            Frame::FetchDone { count: 1 },
            Frame::Removed {
                id: letterlock::envelope::MessageId([1; 16]),
            },
            Frame::Hello {
                version: 1,
                server: KeyId([0; 32]),
                challenge: [0; 32],
            },
        ];
        for f in frames {
            let mut raw = authed(&addr).await;
            raw.w.write_frame(&f).await.unwrap();
            let m = refused(&mut raw, ErrorCode::Protocol).await;
            assert!(m.contains(&format!("unexpected {}", f.name())), "{m}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_ack_for_an_unknown_id() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        raw.w
            .write_frame(&Frame::DeliveryAck {
                id: letterlock::envelope::MessageId([9; 16]),
                tag: [9; 32],
            })
            .await
            .unwrap();
        refused(&mut raw, ErrorCode::BadAck).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_end_with_no_send() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        raw.w.write_frame(&Frame::SendEnd).await.unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("unexpected SendEnd"), "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_inside_a_message() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        let s = sealed(1000, Mode::Hybrid);
        let mut bytes = encode(&Frame::Send(s[..500].to_vec()));
        Frame::Fetch.encode(&mut bytes);
        raw.w.write_raw(&bytes).await.unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("inside a message"), "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frame_from_the_client() {
    case(|addr| async move {
        let mut raw = authed(&addr).await;
        raw.w
            .write_frame(&Frame::error(ErrorCode::Internal, "client gives up"))
            .await
            .unwrap();
        // The server closes quietly: a client's Error ends the connection.
        assert_eq!(end(&mut raw).await, End::Closed);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Malformed messages inside Send

/// Sends `sealed` on an authenticated connection and expects `code`.
async fn send_expect(addr: &str, sealed: &[u8], code: ErrorCode) -> String {
    let mut raw = authed(addr).await;
    let _ = raw.w.write_raw(&message_frames(sealed, DATA_FRAME)).await;
    refused(&mut raw, code).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_inside_send() {
    case(|addr| async move {
        let good = sealed(3000, Mode::Hybrid);
        let cases: [(&str, usize, u8, &str); 6] = [
            ("bad magic", 0, 0x00, "bad magic"),
            ("wrong version", 8, 0x09, "version"),
            ("unknown mode", 9, 0x07, "mode"),
            ("reserved bits", 10, 0x80, "reserved"),
            ("reserved bits 2", 11, 0x01, "reserved"),
            ("chunk size", 100, 0xff, "chunk size"),
        ];
        for (what, at, value, expect) in cases {
            let mut m = good.clone();
            m[at] = value;
            let text = send_expect(&addr, &m, ErrorCode::Refused).await;
            assert!(text.contains(expect), "{what}: {text}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_fields() {
    case(|addr| async move {
        let good = sealed(3000, Mode::Hybrid);
        // created = u64::MAX: far outside the window (and no overflow in the check).
        let mut m = good.clone();
        m[92..100].copy_from_slice(&u64::MAX.to_be_bytes());
        send_expect(&addr, &m, ErrorCode::Stale).await;
        // created = 0.
        let mut m = good.clone();
        m[92..100].copy_from_slice(&0u64.to_be_bytes());
        send_expect(&addr, &m, ErrorCode::Stale).await;
        // chunk size u32::MAX.
        let mut m = good.clone();
        m[100..104].copy_from_slice(&u32::MAX.to_be_bytes());
        send_expect(&addr, &m, ErrorCode::Refused).await;
        // Asymmetric message claiming a chunk size.
        let mut m = sealed(100, Mode::Asymmetric);
        m[100..104].copy_from_slice(&65536u32.to_be_bytes());
        send_expect(&addr, &m, ErrorCode::Refused).await;
        // Sender is not the authenticated client; recipient is not this server.
        let mut m = good.clone();
        m[12] ^= 1;
        let t = send_expect(&addr, &m, ErrorCode::Refused).await;
        assert!(t.contains("sender"), "{t}");
        let mut m = good.clone();
        m[44] ^= 1;
        let t = send_expect(&addr, &m, ErrorCode::Refused).await;
        assert!(t.contains("not sealed for this server"), "{t}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_and_shorter_than_a_header() {
    case(|addr| async move {
        let good = sealed(3000, Mode::Hybrid);
        send_expect(&addr, &good[..HEADER_LEN], ErrorCode::Refused).await;
        let good = sealed(100, Mode::Asymmetric);
        send_expect(&addr, &good[..HEADER_LEN], ErrorCode::Refused).await;
        let t = send_expect(&addr, &good[..50], ErrorCode::Refused).await;
        assert!(t.contains("shorter than a header"), "{t}");
        // A single empty Send.
        let mut raw = authed(&addr).await;
        let mut bytes = encode(&Frame::Send(Vec::new()));
        Frame::SendEnd.encode(&mut bytes);
        raw.w.write_raw(&bytes).await.unwrap();
        let t = refused(&mut raw, ErrorCode::Refused).await;
        assert!(t.contains("shorter than a header"), "{t}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_and_extended_bodies() {
    case(|addr| async move {
        for mode in [Mode::Hybrid, Mode::Asymmetric] {
            let good = sealed(5000, mode);
            let mut m = good.clone();
            let at = m.len() / 2;
            m[at] ^= 0x40;
            send_expect(&addr, &m, ErrorCode::Refused).await;
            send_expect(&addr, &good[..good.len() - 1], ErrorCode::Refused).await;
            let mut m = good.clone();
            m.push(0);
            send_expect(&addr, &m, ErrorCode::Refused).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_other_content_is_a_replay() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = letterlock::envelope::unix_now();
    let (a, sa) = seal_to_server(CLIENT, b"first", [42; 16], now);
    let (b, _) = seal_to_server(CLIENT, b"second", [42; 16], now);
    let mut raw = authed(&server.addr).await;
    raw.w
        .write_raw(&message_frames(&a, DATA_FRAME))
        .await
        .unwrap();
    match raw.r.read_frame().await.unwrap() {
        Frame::Ack { id, tag } => {
            assert_eq!(id, sa.header.message_id);
            assert_eq!(tag, sa.ack_tag);
        }
        other => panic!("{other:?}"),
    }
    raw.w
        .write_raw(&message_frames(&b, DATA_FRAME))
        .await
        .unwrap();
    refused(&mut raw, ErrorCode::Replay).await;
    assert_eq!(server.inbox_len().await, 1);
    served(&server).await;
    assert_no_server_panic();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Volume: many tiny frames

// ---------------------------------------------------------------------------------------------
// Connections that end badly

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_mid_message() {
    case(|addr| async move {
        let s = sealed(100_000, Mode::Hybrid);
        let mut raw = authed(&addr).await;
        raw.w
            .write_raw(&encode(&Frame::Send(s[..40_000].to_vec())))
            .await
            .unwrap();
        raw.w.shutdown().await.unwrap();
        // We still read: the server says why and closes.
        let t = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(t.contains("closed"), "{t}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_mid_frame() {
    case(|addr| async move {
        let s = sealed(100_000, Mode::Hybrid);
        let frame = encode(&Frame::Send(s.clone()));
        let mut raw = authed(&addr).await;
        raw.w.write_raw(&frame[..frame.len() / 2]).await.unwrap();
        raw.w.shutdown().await.unwrap();
        refused(&mut raw, ErrorCode::Protocol).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_message_stores_nothing() {
    case(|addr| async move {
        for mode in [Mode::Hybrid, Mode::Asymmetric] {
            // Everything but SendEnd, then the socket is dropped.
            let s = sealed(
                if mode == Mode::Asymmetric {
                    50_000
                } else {
                    200_000
                },
                mode,
            );
            let mut raw = authed(&addr).await;
            let frames = message_frames(&s, 16 * 1024);
            raw.w.write_raw(&frames[..frames.len() - 5]).await.unwrap();
            drop(raw);
            // And a partial frame, then dropped.
            let mut raw = authed(&addr).await;
            raw.w.write_raw(&frames[..1000]).await.unwrap();
            drop(raw);
        }
        // Give the server time to notice; `case` then checks the inbox is empty.
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Resource exhaustion

/// A client that asks for a large delivery and then never reads it: the server's writes stall,
/// and after the idle timeout it drops the connection and frees the slot for others (the
/// timeout itself, on the paused clock, is in tests/suite/timeouts.rs; this is the TCP slot).
#[tokio::test]
async fn a_stalled_reader_loses_its_connection_slot() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_connections: 1,
        idle_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    // 16 MiB waiting for the client: far more than socket buffers hold.
    server
        .queue_for_client(&vec![7u8; 16 << 20][..], &SealOptions::default())
        .await;
    let mut stalled = authed(&server.addr).await;
    stalled.w.write_frame(&Frame::Fetch).await.unwrap();
    // While the stalled connection holds the only slot, others are told "busy".
    let t = Instant::now();
    let mut good = loop {
        match server.client(CLIENT).await {
            Ok(c) => break c,
            Err(ClientError::Busy { .. }) => {
                // No limit of our own: if the slot were never freed this would never end.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    eprintln!("slot freed {:?} after the reader stalled", t.elapsed());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "freed before the timeout"
    );
    good.send(&b"served after the stall"[..], SealOptions::default())
        .await
        .unwrap();
    drop(stalled);
    server.stop().await;
}

/// A fetch under way when the server stops (Ctrl-C, SIGTERM): the message being delivered is
/// finished, as one being received is (found by a trial run: it was cut at once), then the
/// fetch ends with `Unavailable`, "the server is stopping" instead of the next message: a
/// reason to fetch again, not the server's own error (it was "internal" "connection closed").
/// Both messages stay waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_under_way_at_shutdown_finishes_its_message_and_is_told_the_server_is_stopping() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // Far more than the delivery window and the socket buffers: still being delivered when the
    // server stops.
    let big = vec![7u8; 16 << 20];
    for _ in 0..2 {
        server
            .queue_for_client(&big[..], &SealOptions::default())
            .await;
    }
    let mut fetching = authed(&server.addr).await;
    fetching.w.write_frame(&Frame::Fetch).await.unwrap();
    let mut delivered = match fetching.r.read_frame().await.unwrap() {
        Frame::Deliver(data) => data.len(),
        other => panic!("expected the delivery to start, got {other:?}"),
    };
    let store = server.store.clone();
    let stopped = tokio::spawn(server.stop());
    let mut ends = 0;
    let (code, message) = loop {
        match fetching.r.read_frame().await {
            Ok(Frame::Deliver(data)) => delivered += data.len(),
            Ok(Frame::DeliverEnd) => ends += 1,
            Ok(Frame::Error { code, message }) => break (code, message),
            other => panic!("expected an Error frame at shutdown, got {other:?}"),
        }
    };
    assert_eq!(ends, 1, "the first message whole, the second not started");
    assert!(
        delivered > big.len(),
        "the whole first message (sealed): {delivered}"
    );
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    assert!(message.contains("stopping"), "{message}");
    stopped.await.unwrap();
    use letterlock::store::Store;
    let waiting = store
        .pending_outbox(&private(CLIENT).public().id().0)
        .await
        .unwrap();
    assert_eq!(
        waiting.len(),
        2,
        "nothing acked: both wait for the next fetch"
    );
    assert_no_server_panic();
}

/// Before it is authenticated, a peer may send only a handshake-sized frame: a 64 KiB frame
/// (which would be fine after `Ready`) is refused from its length prefix, nothing buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_get_only_a_handshake_sized_frame() {
    case(|addr| async move {
        let mut raw = raw(&addr).await;
        let mut bytes = (64u32 * 1024).to_be_bytes().to_vec();
        bytes.push(0x02);
        raw.w.write_raw(&bytes).await.unwrap();
        let m = refused(&mut raw, ErrorCode::Protocol).await;
        assert!(m.contains("over the limit"), "{m}");
    })
    .await;
}
