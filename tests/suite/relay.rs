//! A relay that outlives the client (issue 10, "Session hijack"). On version 1 a keyless relay
//! between client and server kept the authenticated TCP session after the client printed
//! "delivered" and left, re-sent the client's message on it (acked again each time) and sent a
//! Fetch of its own that returned the client's waiting message. On version 2 every byte of the
//! session is protected by TLS 1.3 keys the relay never has, so the kept connection is worth
//! nothing to it.
//!
//! Each case: a server with one message waiting for the client in its outbox; a client that
//! sends one message through a relay (acked) and closes; the relay withholds the close from the
//! server and keeps its server-side connection. Then the relay (a) re-sends the recorded client
//! records on that kept connection, (b) replays the whole recording on a fresh connection, or
//! (c) writes a hand-made plaintext Fetch frame on the kept connection. The verdict comes from
//! the server's own counters ([`Server::receive_stats`]) and its store, not from timing.
//!
//! The same attack on a version 1 pair (the control) gets the re-sent message acked again and the
//! waiting message delivered to the relay: the assertions can fail, and v2's result is not an
//! accident of the harness.

use crate::common;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use common::net::{CLIENT, SERVER};
use letterlock::client::{Client, ClientConfig};
use letterlock::envelope::SealOptions;
use letterlock::keys::Identity;
use letterlock::server::ServerConfig;
use letterlock::store::{SqliteStore, Store};
use letterlock::wire::{self, Frame, FrameType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Hang guard only: every read here ends long before on a working server.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// TLS record header: content type, legacy version (2), length (2).
const TLS_HEADER: usize = 5;
/// TLS content type `application_data`: in TLS 1.3 every protected record, alerts included.
const TLS_APPLICATION_DATA: u8 = 0x17;
/// Length of a protected TLS 1.3 record carrying an alert (2 bytes, the inner content type,
/// the 16-byte AEAD tag; rustls adds no record padding): the client's `close_notify`. A record
/// carrying a letterlock frame is longer (a frame is at least 5 bytes, padded to a bucket).
const TLS_ALERT_RECORD: usize = 2 + 1 + 16;

/// What the relay does once the client has gone.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// (a) Re-send the client's records after its handshake on the kept connection.
    ResendOnKeptSession,
    /// (b) Replay the whole recording on a fresh connection.
    ReplayOnFreshConnection,
    /// (c) Write a plaintext `Fetch` frame on the kept connection.
    PlaintextFetch,
}

/// What the relay got and what the server did.
#[derive(Debug)]
struct Outcome {
    /// Letterlock frames the relay could read in the clear from the server's reply.
    frames_in_clear: Vec<FrameType>,
    /// The reply parses as whole TLS records and nothing else.
    reply_is_tls_records: bool,
    /// Content types of the TLS records in the reply (empty on v1 or when the server said nothing).
    reply_records: Vec<u8>,
    /// The waiting message's sealed header appears in the reply: the relay got the client's mail.
    waiting_header_in_reply: bool,
    /// The server ended the connection (close, reset, or after a TLS alert).
    server_closed: bool,
    /// Messages the server decrypted and verified, over the whole run (the client's is one).
    opened: u64,
    /// Repeats of a stored message the server answered with an Ack from its hash.
    repeats_answered: u64,
    /// Messages in the server's inbox.
    inbox: usize,
    /// Messages still waiting for the client.
    pending_for_client: usize,
}

/// The relay's state once the client has closed: the server-side connection it kept, and the
/// client's bytes it forwarded (the close withheld).
struct Kept {
    server: TcpStream,
    forwarded: Vec<u8>,
    /// Protected alert records held back from the server (on TLS, the client's `close_notify`).
    withheld: usize,
}

/// A relay for one connection to `to`: forwards both ways, records what the client sent, and when
/// the client closes keeps the server-side connection open instead of passing the close on. On
/// TLS it also holds back the client's final `close_notify` record (recognised by its length), as
/// a relay that wants the session would.
async fn keeping_relay(listener: TcpListener, to: String, tls: bool) -> Kept {
    let (client, _) = listener.accept().await.unwrap();
    let server = TcpStream::connect(to).await.unwrap();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut cbuf, mut sbuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let (mut pending, mut forwarded) = (Vec::new(), Vec::new());
    let mut withheld = 0;
    loop {
        tokio::select! {
            n = cr.read(&mut cbuf) => {
                let n = match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&cbuf[..n]);
                // Forward whole TLS records (on v1, whatever arrived), each as it completes.
                let cut = if tls { whole_records(&pending) } else { pending.len() };
                let out: Vec<u8> = pending.drain(..cut).collect();
                let out = if tls {
                    let kept = strip_close_notify(&out);
                    withheld += records(&out).len() - records(&kept).len();
                    kept
                } else {
                    out
                };
                sw.write_all(&out).await.unwrap();
                forwarded.extend_from_slice(&out);
            }
            n = sr.read(&mut sbuf) => {
                match n {
                    Ok(0) | Err(_) => panic!("the server closed while the client was there"),
                    // The client may already be gone: its half of the relay is best effort.
                    Ok(n) => drop(cw.write_all(&sbuf[..n]).await),
                }
            }
        }
    }
    Kept {
        server: sr.reunite(sw).unwrap(),
        forwarded,
        withheld,
    }
}

/// Length of the longest prefix of `buf` made of whole TLS records.
fn whole_records(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = buf.get(at..at + TLS_HEADER) {
        let len = TLS_HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if buf.len() < at + len {
            break;
        }
        at += len;
    }
    at
}

/// The TLS records of `buf` (whole records only), as (content type, record bytes).
fn records(buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < whole_records(buf) {
        let len = TLS_HEADER + usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
        out.push((buf[at], &buf[at..at + len]));
        at += len;
    }
    out
}

/// `out` without protected records of the length of an alert (the client's `close_notify`).
fn strip_close_notify(out: &[u8]) -> Vec<u8> {
    records(out)
        .into_iter()
        .filter(|(kind, r)| {
            !(*kind == TLS_APPLICATION_DATA && r.len() == TLS_HEADER + TLS_ALERT_RECORD)
        })
        .flat_map(|(_, r)| r.to_vec())
        .collect()
}

/// The part of the recording that carried the client's message, for re-sending on the kept
/// session: on v2 the protected records (the plaintext ClientHello cannot follow a handshake);
/// on v1 every frame but the `Auth` that opened the session.
fn message_part(tls: bool, forwarded: &[u8]) -> Vec<u8> {
    if tls {
        return records(forwarded)
            .into_iter()
            .filter(|(kind, _)| *kind == TLS_APPLICATION_DATA)
            .flat_map(|(_, r)| r.to_vec())
            .collect();
    }
    let (mut out, mut at) = (Vec::new(), 0);
    while let Ok(Some((frame, used))) = wire::decode(&forwarded[at..], wire::DEFAULT_MAX_FRAME) {
        if frame.frame_type() != FrameType::Auth {
            out.extend_from_slice(&forwarded[at..at + used]);
        }
        at += used;
    }
    assert_eq!(at, forwarded.len(), "the v1 recording is whole frames");
    assert!(!out.is_empty());
    out
}

/// Reads the server's reply until it closes, or (on v1, where the reply is readable) until a
/// frame that ends the exchange: `Ack`, `DeliverEnd`, `FetchDone` or `Error`. Returns the bytes and
/// whether the server closed.
async fn read_reply(conn: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
            let done = clear_frames(&reply).iter().any(|t| {
                matches!(
                    t,
                    FrameType::Ack
                        | FrameType::DeliverEnd
                        | FrameType::FetchDone
                        | FrameType::Error
                )
            });
            if done {
                return false;
            }
        }
    })
    .await
    .expect("hang guard: the server neither answered nor closed");
    (reply, closed)
}

/// The letterlock frames readable in the clear at the start of `bytes`.
fn clear_frames(bytes: &[u8]) -> Vec<FrameType> {
    let (mut out, mut at) = (Vec::new(), 0);
    while let Ok(Some((frame, used))) = wire::decode(&bytes[at..], wire::DEFAULT_MAX_FRAME) {
        out.push(frame.frame_type());
        at += used;
    }
    out
}

async fn run(tls: bool, attack: Attack) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
    let server = if tls {
        common::net::tls_server(store.clone(), ServerConfig::default())
    } else {
        common::net::server(store.clone(), ServerConfig::default())
    };
    let common::net::Running { addr, stop, task } =
        common::net::run_on_loopback(server.clone()).await;

    // A message waiting for the client: the prize of a Fetch on its session.
    let to = common::net::clients().by_name("client").unwrap().clone();
    let waiting = letterlock::server::queue_for_client(
        store.as_ref(),
        common::private(SERVER),
        &to,
        Cursor::new(b"waiting for the client only".to_vec()),
        &SealOptions::default(),
    )
    .await
    .unwrap();

    let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = relay_listener.local_addr().unwrap().to_string();
    let relay = tokio::spawn(keeping_relay(relay_listener, addr.clone(), tls));
    let mut client = if tls {
        common::net::tls_client(&via, CLIENT).await.unwrap()
    } else {
        let identity: Arc<dyn Identity> = common::private(CLIENT);
        let config = ClientConfig {
            timeout: HANG_GUARD,
            ..ClientConfig::default()
        };
        Client::connect(&via, identity, common::public(SERVER), config)
            .await
            .unwrap()
    };
    client
        .send(
            Cursor::new(b"the client's one message".to_vec()),
            SealOptions::default(),
        )
        .await
        .expect("the honest send is acked");
    client.close().await.unwrap();
    let Kept {
        server: mut kept,
        forwarded,
        withheld,
    } = tokio::time::timeout(HANG_GUARD, relay)
        .await
        .expect("hang guard: relay")
        .unwrap();
    assert_eq!(server.receive_stats().opened, 1, "the honest message");
    assert_eq!(
        withheld,
        usize::from(tls),
        "the client's close_notify held back"
    );
    // The session the relay kept is still open on the server's side: nothing to read, no close.
    let mut probe = [0u8; 1];
    assert!(
        matches!(kept.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the server kept the session open for the relay"
    );

    let (reply, server_closed) = match attack {
        Attack::ResendOnKeptSession => {
            kept.write_all(&message_part(tls, &forwarded))
                .await
                .unwrap();
            read_reply(&mut kept).await
        }
        Attack::ReplayOnFreshConnection => {
            let mut fresh = TcpStream::connect(&addr).await.unwrap();
            if !tls {
                fresh.write_all(&forwarded).await.unwrap();
                read_reply(&mut fresh).await
            } else {
                // In the client's own rhythm: its hello, then the rest once the server has
                // answered. (Written all at once, the replayed flight would sit unread behind
                // the hello until the server's handshake timeout ended the connection: refused
                // all the same, by the clock rather than by the keys.)
                let hello = records(&forwarded).first().map_or(0, |(_, r)| r.len());
                fresh.write_all(&forwarded[..hello]).await.unwrap();
                let mut first = vec![0u8; 64 * 1024];
                let n = tokio::time::timeout(HANG_GUARD, fresh.read(&mut first))
                    .await
                    .expect("hang guard: the server's answer to the hello")
                    .unwrap();
                fresh.write_all(&forwarded[hello..]).await.unwrap();
                let (rest, closed) = read_reply(&mut fresh).await;
                ([&first[..n], &rest[..]].concat(), closed)
            }
        }
        Attack::PlaintextFetch => {
            kept.write_all(&common::peer::encode(&Frame::Fetch))
                .await
                .unwrap();
            read_reply(&mut kept).await
        }
    };

    let stats = server.receive_stats();
    let outcome = Outcome {
        frames_in_clear: clear_frames(&reply),
        reply_records: if tls {
            records(&reply).iter().map(|(kind, _)| *kind).collect()
        } else {
            Vec::new()
        },
        reply_is_tls_records: whole_records(&reply) == reply.len()
            && records(&reply)
                .iter()
                .all(|(kind, r)| (0x14..=0x17).contains(kind) && r[1..3] == [0x03, 0x03]),
        waiting_header_in_reply: reply
            .windows(waiting.header_bytes.len())
            .any(|w| w == waiting.header_bytes),
        server_closed,
        opened: stats.opened,
        repeats_answered: stats.repeats_answered,
        inbox: store.list_inbox().await.unwrap().len(),
        pending_for_client: store.pending_outbox(&to.key.id().0).await.unwrap().len(),
    };
    drop(kept);
    let _ = stop.send(());
    let _ = task.await;
    println!("{}, {attack:?}: {outcome:?}", if tls { "v2" } else { "v1" });
    outcome
}

/// On version 2 the relay gets nothing from the kept connection, a fresh one, or a plaintext
/// frame: no frame in the clear, the server ends the connection, stores and opens nothing more
/// than the client's one message, and the client's waiting message stays waiting.
fn assert_v2_refused(o: &Outcome) {
    assert!(
        o.frames_in_clear.is_empty(),
        "letterlock frames in the clear: {o:?}"
    );
    assert!(
        o.reply_is_tls_records,
        "the reply is TLS records only: {o:?}"
    );
    assert!(o.server_closed, "the server ends the connection: {o:?}");
    assert!(
        !o.waiting_header_in_reply,
        "the waiting message reached the relay: {o:?}"
    );
    assert_eq!(
        o.opened, 1,
        "nothing opened but the client's message: {o:?}"
    );
    assert_eq!(o.repeats_answered, 0, "no repeat acked: {o:?}");
    assert_eq!(o.inbox, 1, "{o:?}");
    assert_eq!(
        o.pending_for_client, 1,
        "the waiting message still waits: {o:?}"
    );
}

/// On the kept session the server answers, if at all, only with protected records (its alert,
/// sealed under the session's keys), never with a plaintext record.
fn kept_session_answer_is_protected(o: &Outcome) {
    assert!(
        o.reply_records.iter().all(|t| *t == TLS_APPLICATION_DATA),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_relay_resending_on_the_kept_session_gets_nothing() {
    let o = run(true, Attack::ResendOnKeptSession).await;
    assert_v2_refused(&o);
    kept_session_answer_is_protected(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_relay_replaying_the_session_on_a_fresh_connection_gets_nothing() {
    assert_v2_refused(&run(true, Attack::ReplayOnFreshConnection).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_relay_sending_a_plaintext_fetch_on_the_kept_session_gets_nothing() {
    let o = run(true, Attack::PlaintextFetch).await;
    assert_v2_refused(&o);
    kept_session_answer_is_protected(&o);
}

/// The control: on version 1 the kept session is still the client's. The re-sent message is
/// acked again (answered from its hash now, but acked), and a Fetch of the relay's own gets the
/// client's waiting message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_control_the_kept_session_acks_the_resent_message_again() {
    let o = run(false, Attack::ResendOnKeptSession).await;
    assert_eq!(o.frames_in_clear, vec![FrameType::Ack], "{o:?}");
    assert!(
        !o.server_closed,
        "the session stays open for the relay: {o:?}"
    );
    assert_eq!(o.repeats_answered, 1, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_control_a_fetch_on_the_kept_session_gets_the_waiting_message() {
    let o = run(false, Attack::PlaintextFetch).await;
    assert!(o.frames_in_clear.contains(&FrameType::Deliver), "{o:?}");
    assert!(o.frames_in_clear.contains(&FrameType::DeliverEnd), "{o:?}");
    assert!(
        o.waiting_header_in_reply,
        "the relay holds the client's sealed mail: {o:?}"
    );
    assert!(!o.server_closed, "{o:?}");
}
