//! A connection that breaks under a send (the server stopped or restarted, the network failed):
//! the client sends the very same bytes again on a new connection, under the same message id,
//! within its deadline. The server stores the message once, whether the break came before it
//! stored the message or after (its acknowledgement lost on the way), and a send whose server
//! never comes back ends at the deadline with the break, not a hang.
//!
//! A relay in front of a version 2 server breaks the first connection as each test says, and
//! passes the later ones, breaks them too, or stops listening.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cli::{BinServer, classroom_folder, run};
use common::data;
use common::net::{CLIENT, Running, SERVER, run_on_loopback, tls_client, tls_server};
use letterlock::client::{Backoff, Client, ClientError, Retry, RetryCause, Sealing};
use letterlock::envelope::{self, Mode, SealOptions};
use letterlock::server::ServerConfig;
use letterlock::store::{SqliteStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does to a connection.
#[derive(Clone, Copy, Debug)]
enum Break {
    /// Ends it once this many bytes went from the client to the server: part of the message
    /// arrived, and the server stores nothing.
    After(usize),
    /// Passes every byte from the client; the first bytes from the server once this many went
    /// from the client are dropped and the connection ended. For a message longer than that,
    /// those bytes are its acknowledgement, which the server sends once the message is
    /// committed: the message is stored, and the client never hears so.
    AckLost(usize),
    /// As [`Break::AckLost`], but the connection stays open and silent instead of ending: the
    /// answer never comes, and the client waits until its own time runs out.
    AckHeld(usize),
    /// Ends it once this many bytes went from the server to the client: a fetch cut short.
    AnswerCut(usize),
}

/// What the relay does after its first connection.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Passes every later connection untouched.
    Pass,
    /// Stops listening, as a server that never came back.
    Gone,
    /// Breaks every later connection too.
    Break(Break),
}

/// The relay, on 127.0.0.1:0.
struct Relay {
    addr: String,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Whether an [`Break::AckLost`] connection dropped the server's answer.
    dropped_answer: Arc<AtomicBool>,
}

/// A relay to `to` that breaks its first connection as `first` says, and the later ones as
/// `then` says.
async fn relay(to: String, first: Break, then: Then) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let dropped_answer = Arc::new(AtomicBool::new(false));
    let (count, dropped) = (connections.clone(), dropped_answer.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let how = match (count.fetch_add(1, Ordering::SeqCst), then) {
                (0, _) => first,
                (_, Then::Pass) => {
                    tokio::spawn(pass(client, connect(&to, None).await));
                    continue;
                }
                (_, Then::Gone) => return,
                (_, Then::Break(how)) => how,
            };
            let server = connect(&to, Some(how)).await;
            tokio::spawn(broken(client, server, how, dropped.clone()));
            if matches!(then, Then::Gone) {
                return;
            }
        }
    });
    Relay {
        addr,
        connections,
        dropped_answer,
    }
}

/// The relay's connection to the server. One that cuts the server's answer reads it through a
/// small receive buffer (loopback's grows to 32 MiB here): what the server has written and the
/// relay not read then stays in the server's own send buffer (at most 4 MiB), so a message a
/// few MiB larger is still being written when the cut comes.
async fn connect(to: &str, how: Option<Break>) -> TcpStream {
    let addr: std::net::SocketAddr = to.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if matches!(how, Some(Break::AnswerCut(_))) {
        socket.set_recv_buffer_size(64 * 1024).unwrap();
    }
    socket.connect(addr).await.unwrap()
}

/// The largest TCP send buffer the kernel gives a socket (the last of tcp_wmem's three; 4 MiB
/// by default), so that a test can send more than a sender's socket holds.
fn largest_send_buffer() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
    wmem.split_whitespace().last().unwrap().parse().unwrap()
}

/// Relays both ways until either side ends.
async fn pass(client: TcpStream, server: TcpStream) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut sw) => {}
        _ = tokio::io::copy(&mut sr, &mut cw) => {}
    }
}

/// Relays a connection and breaks it as `how` says, noting in `dropped` an answer it dropped;
/// both sockets are dropped when it returns, which ends the connection on both sides.
async fn broken(client: TcpStream, server: TcpStream, how: Break, dropped: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let from_client = AtomicUsize::new(0);
    let (limit, answers_until, answer_limit) = match how {
        Break::After(n) => (n, usize::MAX, usize::MAX),
        Break::AckLost(n) | Break::AckHeld(n) => (usize::MAX, n, usize::MAX),
        Break::AnswerCut(n) => (usize::MAX, usize::MAX, n),
    };
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let seen = from_client.load(Ordering::SeqCst);
            if seen >= limit {
                return;
            }
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n.min(limit - seen),
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            from_client.fetch_add(n, Ordering::SeqCst);
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut answered = 0;
        loop {
            if answered >= answer_limit {
                return;
            }
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n.min(answer_limit - answered),
            };
            answered += n;
            if from_client.load(Ordering::SeqCst) >= answers_until {
                dropped.store(true, Ordering::SeqCst);
                if matches!(how, Break::AckHeld(_)) {
                    // Until the client gives up and closes its end (`upstream` then returns).
                    std::future::pending::<()>().await;
                }
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// A version 2 server on 127.0.0.1:0 over its own SQLite mailbox in `dir`.
async fn server(dir: &std::path::Path) -> (Running, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open(dir.join("server.db")).unwrap());
    let running = run_on_loopback(tls_server(store.clone(), ServerConfig::default())).await;
    (running, store)
}

/// The deadline of the tests that give up: long enough for a new connection's handshake on a
/// loaded machine after the last wait.
const SHORT: Duration = Duration::from_secs(1);

/// Short waits and a deadline of `deadline`.
fn backoff(deadline: Duration) -> Backoff {
    Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(100),
        deadline,
    }
}

/// A hybrid message of `len` bytes being sealed in memory from [`CLIENT`] to [`SERVER`], as
/// `client send_msg` seals a small one while it connects.
fn sealing(plain: Vec<u8>) -> Sealing {
    let server = common::public(SERVER);
    let identity = common::private(CLIENT);
    let to = server.clone();
    Sealing::start(&server, Mode::Hybrid, move |out| {
        envelope::seal_slice(identity.as_ref(), &to, &SealOptions::default(), &plain, out)
    })
}

async fn client(relay: &Relay) -> Client {
    tls_client(&relay.addr, CLIENT).await.unwrap()
}

/// The message reached the server, which stored it, but its acknowledgement never came back:
/// the same bytes go again at once on a new connection, and the server acknowledges them
/// again (a proven ack) instead of storing them twice. Streamed from a reader, resent from the
/// spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_answered_again_and_the_message_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let plain = data(300 * 1024);
    let (_upstream, store, relay, mut client) =
        behind_relay(dir.path(), Break::AckLost(300 * 1024), Then::Pass).await;
    let mut retries: Vec<Retry> = Vec::new();
    let sent = client
        .send_retrying(
            std::io::Cursor::new(plain.clone()),
            SealOptions::default(),
            backoff(Duration::from_secs(20)),
            |r| retries.push(*r),
        )
        .await;
    let delivery = sent.expect("delivered on the second connection");
    assert_eq!(
        retries,
        vec![Retry {
            attempt: 2,
            wait: Duration::ZERO,
            cause: RetryCause::ConnectionLost { id: delivery.id },
        }],
        "one resend, at once"
    );
    assert_eq!(relay.connections.load(Ordering::SeqCst), 2);
    assert!(
        relay.dropped_answer.load(Ordering::SeqCst),
        "the first connection's answer was not dropped"
    );
    let inbox = store.list_inbox().await.unwrap();
    assert_eq!(inbox.len(), 1, "stored twice");
    assert_eq!(delivery.plaintext_len, plain.len() as u64);
}

/// The connection broke part-way through the message: the server stored nothing of it, and
/// the same bytes (sealed ahead in memory) are stored once from the second connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cut_part_way_is_sent_again_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let plain = data(200 * 1024);
    // Past the handshake (a few KiB), well before the message's end.
    let (_upstream, store, relay, mut client) =
        behind_relay(dir.path(), Break::After(100 * 1024), Then::Pass).await;
    let mut retries: Vec<Retry> = Vec::new();
    let delivery = client
        .send_sealing(
            sealing(plain.clone()),
            backoff(Duration::from_secs(20)),
            |r| retries.push(*r),
        )
        .await
        .expect("delivered on the second connection");
    assert!(
        matches!(retries.as_slice(), [Retry { cause: RetryCause::ConnectionLost { id }, .. }] if *id == delivery.id),
        "{retries:?}"
    );
    assert_eq!(relay.connections.load(Ordering::SeqCst), 2);
    assert_eq!(store.list_inbox().await.unwrap().len(), 1);
    assert_eq!(delivery.plaintext_len, plain.len() as u64);
}

/// A server that does not come back: the client keeps trying (each new connection refused)
/// until its deadline, then gives up saying that nothing listens there any more (not with the
/// break that led to it: "Broken pipe" does not tell the user the server is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_comes_back_ends_the_send_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, _store, relay, mut client) =
        behind_relay(dir.path(), Break::After(100 * 1024), Then::Gone).await;
    let mut retries: Vec<Retry> = Vec::new();
    let deadline = SHORT;
    let started = Instant::now();
    let failed = client
        .send_sealing(sealing(data(200 * 1024)), backoff(deadline), |r| {
            retries.push(*r)
        })
        .await
        .expect_err("nothing listens any more");
    let took = started.elapsed();
    // Refused, or an acknowledgement that never came ("may or may not have been stored")
    // because of it, depending on how much the socket had taken when the relay went.
    let refused = match &failed {
        ClientError::NoAck { why, .. } => why,
        failed => failed,
    };
    assert!(refused.is_refused_connection(), "{failed:?}");
    assert_backs_off(&retries);
    assert!(
        retries
            .iter()
            .all(|r| matches!(r.cause, RetryCause::ConnectionLost { .. })),
        "{retries:?}"
    );
    assert!(took < deadline + Duration::from_secs(5), "took {took:?}");
    assert_eq!(relay.connections.load(Ordering::SeqCst), 1);
}

/// Kept trying, and backed off: the first new connection at once, every later one after a
/// wait of at least half the first backoff step (10 ms), and no more of them than the deadline
/// ([`SHORT`]) holds with the waits at their least (10, 20, 40, then 50 ms each).
fn assert_backs_off(retries: &[Retry]) {
    assert!(retries.len() >= 3, "kept trying: {retries:?}");
    assert!(retries.len() <= 45, "too many: {retries:?}");
    assert!(
        retries
            .iter()
            .skip(1)
            .all(|r| r.wait >= Duration::from_millis(10)),
        "{retries:?}"
    );
}

/// A network that cuts every connection part-way through the message, forever: the client
/// backs off between attempts and ends at its deadline; the server stored nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_that_cuts_every_connection_is_retried_with_backoff_until_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cut = Break::After(100 * 1024);
    let (_upstream, store, relay, mut client) =
        behind_relay(dir.path(), cut, Then::Break(cut)).await;
    let mut retries: Vec<Retry> = Vec::new();
    let failed = client
        .send_sealing(sealing(data(200 * 1024)), backoff(SHORT), |r| {
            retries.push(*r)
        })
        .await
        .expect_err("every connection is cut");
    // Whether the client had handed all of it to its socket when the cut came decides between
    // "NOT delivered" and "may or may not have been stored": both are a lost connection.
    assert!(failed.is_connection_lost(), "{failed:?}");
    assert_backs_off(&retries);
    assert_eq!(
        relay.connections.load(Ordering::SeqCst),
        retries.len() + 1,
        "one connection per attempt"
    );
    assert!(store.list_inbox().await.unwrap().is_empty());
}

/// A version 2 server behind a relay that breaks its first connection as `first` says and the
/// later ones as `then` says: the server, its store, the relay, and a client connected through
/// the relay.
async fn behind_relay(
    dir: &std::path::Path,
    first: Break,
    then: Then,
) -> (Running, Arc<SqliteStore>, Relay, Client) {
    let (upstream, store) = server(dir).await;
    let relay = relay(upstream.addr.clone(), first, then).await;
    let client = client(&relay).await;
    (upstream, store, relay, client)
}

/// The relay of [`a_send_that_may_have_been_stored_never_gives_up_as_not_delivered`] and its
/// relay twin: the answer to the first connection's message of `len` bytes is lost (the server
/// stored it), and every later connection is cut part-way, so the message may have been stored
/// and there is no way to learn it before the deadline.
fn answer_lost_then_cut(len: usize) -> (Break, Then) {
    (Break::AckLost(len), Then::Break(Break::After(100 * 1024)))
}

/// The first attempt's acknowledgement was lost (the server stored the message), and every
/// later attempt is cut part-way: at the deadline the send must not say "NOT delivered" after
/// the last cut, but that message ID may or may not have been stored. The message (16 MiB) is
/// more than the sockets on the way hold, so a later attempt fails writing, not waiting for an
/// answer: only the first attempt says the message may have been stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_may_have_been_stored_never_gives_up_as_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let len = 16 * 1024 * 1024;
    let (first, then) = answer_lost_then_cut(len);
    let (_upstream, store, relay, mut client) = behind_relay(dir.path(), first, then).await;
    let mut retries: Vec<Retry> = Vec::new();
    let failed = client
        .send_retrying(
            std::io::Cursor::new(data(len)),
            SealOptions::default(),
            backoff(SHORT),
            |r| retries.push(*r),
        )
        .await
        .expect_err("every later connection is cut");
    let Some(RetryCause::ConnectionLost { id }) = retries.first().map(|r| r.cause) else {
        panic!("no resend: {retries:?}");
    };
    let ClientError::NoAck { why, .. } = &failed else {
        panic!("{failed:?}");
    };
    assert!(
        !matches!(**why, ClientError::NoAck { .. }),
        "the last attempt's own failure is kept: {why:?}"
    );
    let said = failed.to_string();
    assert!(
        said.starts_with("delivery NOT proven")
            && said.contains(&id.to_string())
            && said.contains("may or may not have been stored"),
        "{said}"
    );
    assert!(relay.dropped_answer.load(Ordering::SeqCst));
    assert_eq!(store.list_inbox().await.unwrap().len(), 1);
}

/// A reader that gives nothing for a while, then `data`: a slow stdin.
struct Slow {
    first: Option<Duration>,
    data: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(pause) = self.first.take() {
            std::thread::sleep(pause);
        }
        std::io::Read::read(&mut self.data, buf)
    }
}

/// The time to try again counts from the break, not from the start of the send: a stream that
/// took longer than the whole deadline to arrive, then broke, still goes again (found by a
/// trial run: it was never resent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_breaks_after_its_deadline_is_still_resent() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, store, _relay, mut client) =
        behind_relay(dir.path(), Break::After(100 * 1024), Then::Pass).await;
    let input = Slow {
        first: SHORT.checked_add(Duration::from_millis(500)),
        data: std::io::Cursor::new(data(300 * 1024)),
    };
    let mut retries: Vec<Retry> = Vec::new();
    client
        .send_retrying(input, SealOptions::default(), backoff(SHORT), |r| {
            retries.push(*r)
        })
        .await
        .expect("resent after the break");
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(store.list_inbox().await.unwrap().len(), 1);
}

/// A message to another client (a relay) whose `Stored` answer was lost: sent again on a new
/// connection, answered `Stored` again, and waiting once in the recipient's outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_answer_was_lost_is_sent_again_and_waits_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, store, relay, mut client) =
        behind_relay(dir.path(), Break::AckLost(300 * 1024), Then::Pass).await;
    let carol = common::public("alice3072");
    let mut retries: Vec<Retry> = Vec::new();
    let relayed = client
        .relay(
            std::io::Cursor::new(data(300 * 1024)),
            SealOptions::default(),
            &carol,
            backoff(Duration::from_secs(20)),
            |r| retries.push(*r),
            |_| Ok(()),
        )
        .await
        .expect("stored on the second connection");
    assert!(
        matches!(retries.as_slice(), [Retry { cause: RetryCause::ConnectionLost { id }, .. }] if *id == relayed.id),
        "{retries:?}"
    );
    assert!(relay.dropped_answer.load(Ordering::SeqCst));
    assert_eq!(relay.connections.load(Ordering::SeqCst), 2);
    let waiting = store.pending_outbox(&carol.id().0).await.unwrap();
    assert_eq!(waiting.len(), 1, "stored twice");
}

/// A relay whose `Stored` was lost, then cut part-way on every later connection: at the
/// deadline it may or may not have been stored (the recipient may get it), never "NOT sent",
/// which would invite a second copy under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_may_have_been_stored_never_gives_up_as_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let len = 16 * 1024 * 1024;
    let (first, then) = answer_lost_then_cut(len);
    let (_upstream, store, relay, mut client) = behind_relay(dir.path(), first, then).await;
    let carol = common::public("alice3072");
    let failed = client
        .relay(
            std::io::Cursor::new(data(len)),
            SealOptions::default(),
            &carol,
            backoff(SHORT),
            |_| {},
            |_| Ok(()),
        )
        .await
        .expect_err("every later connection is cut");
    assert!(matches!(failed, ClientError::NoAck { .. }), "{failed:?}");
    assert!(
        failed
            .to_string()
            .contains("may or may not have been stored"),
        "{failed}"
    );
    assert!(relay.dropped_answer.load(Ordering::SeqCst));
    assert_eq!(store.pending_outbox(&carol.id().0).await.unwrap().len(), 1);
}

/// What is not worth sending again is not: a refusal, a wrong acknowledgement, a timeout (its
/// time is spent), a local I/O error.
#[test]
fn only_a_broken_connection_counts_as_lost() {
    use std::io::ErrorKind;
    for kind in [
        ErrorKind::BrokenPipe,
        ErrorKind::ConnectionReset,
        ErrorKind::ConnectionAborted,
        ErrorKind::UnexpectedEof,
    ] {
        assert!(
            ClientError::Io(kind.into()).is_connection_lost(),
            "{kind:?}"
        );
    }
    assert!(ClientError::Closed.is_connection_lost());
    let id = letterlock::envelope::MessageId([1; 16]);
    let no_ack = |why| ClientError::NoAck {
        id,
        why: Box::new(why),
    };
    assert!(no_ack(ClientError::Closed).is_connection_lost());
    let timeout = || ClientError::Timeout {
        addr: "127.0.0.1:1".into(),
        after: Duration::from_secs(1),
    };
    assert!(!no_ack(timeout()).is_connection_lost());
    for not_lost in [
        timeout(),
        ClientError::Io(ErrorKind::PermissionDenied.into()),
        ClientError::NotProven {
            id: None,
            why: "wrong ack tag".into(),
        },
        ClientError::Refused {
            code: letterlock::wire::ErrorCode::TooLarge,
            message: "too large".into(),
        },
    ] {
        assert!(!not_lost.is_connection_lost(), "{not_lost:?}");
    }
}

/// `letterlock client send_msg --server RELAY --file big.bin EXTRA` in `dir`, off the runtime's
/// threads (the relay runs on them): exit status, stdout, stderr.
async fn send_big(dir: &std::path::Path, relay: &Relay, extra: &[&str]) -> (i32, Vec<u8>, String) {
    let mut args = vec![
        "client",
        "send_msg",
        "--server",
        &relay.addr,
        "--file",
        "big.bin",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&dir, &args)
    })
    .await
    .unwrap()
}

/// The command line: a `client send_msg` whose acknowledgement was lost after the server stored
/// the message says on stderr that it sends it again, exits 0, and the message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_msg_says_it_sends_again_and_the_message_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    classroom_folder(&d);
    let server = BinServer::start(&d, &[]);
    let relay = relay(server.addr.clone(), Break::AckLost(300 * 1024), Then::Pass).await;
    let plain = data(300 * 1024);
    std::fs::write(d.join("big.bin"), &plain).unwrap();
    let (code, out, err) = send_big(&d, &relay, &[]).await;
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("message id "))
        .unwrap_or_else(|| panic!("no message id in {out:?}"));
    assert!(
        err.contains(&format!(
            "the connection to the server broke while sending message {id}"
        )) && err.contains("attempt 2, now"),
        "{err}"
    );
    assert_eq!(relay.connections.load(Ordering::SeqCst), 2);
    let (code, stored, err) = run(&d, &["server", "read", id]);
    assert_eq!(code, 0, "{err}");
    assert!(stored == plain, "the stored message is not the file sent");
    let (code, listed, err) = run(&d, &["server", "inbox", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed = String::from_utf8(listed).unwrap();
    assert_eq!(listed.matches(id).count(), 1, "{listed}");
}

/// The command line, when the acknowledgement was lost and the server never came back: not
/// "NOT delivered" but "delivery NOT proven … may or may not have been stored", a hint not to
/// send it again as a new message, and with --json the id and "stored": null for a script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_msg_that_may_have_been_stored_says_so_and_gives_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    classroom_folder(&d);
    let server = BinServer::start(&d, &[]);
    let relay = relay(server.addr.clone(), Break::AckLost(300 * 1024), Then::Gone).await;
    std::fs::write(d.join("big.bin"), data(300 * 1024)).unwrap();
    let (code, out, err) = send_big(&d, &relay, &["--timeout", "1s", "--json"]).await;
    assert_eq!(code, 1, "{err}");
    said_unproven_and_stored(&d, &out, &err, 300 * 1024);
}

/// What `send_msg --json` says of a message whose acknowledgement never came, on stdout
/// (`out`: not delivered, "stored": null, its id) and stderr (`err`: "delivery NOT proven" for
/// that id, not "NOT delivered", and the hint not to send it again as new); and that the
/// server in `d` did store it, `len` bytes.
fn said_unproven_and_stored(d: &std::path::Path, out: &[u8], err: &str, len: usize) {
    let id = common::cli::unproven_id(out);
    let id = id.as_str();
    assert!(
        err.contains(&format!(
            "delivery NOT proven: no acknowledgement from the server for message {id}"
        )) && err.contains("could deliver it twice")
            && !err.contains("NOT delivered"),
        "{err}"
    );
    let (code, stored, said) = run(d, &["server", "read", id]);
    assert_eq!(code, 0, "{said}");
    assert_eq!(stored.len(), len);
}

/// The same through `client agent`: the agent answers "not proven" with the message's id
/// (docs/PROTOCOL.md, section 16), and the command gives it as it does for its own send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_agent_a_message_that_may_have_been_stored_gives_its_id() {
    let (dir, _server, relay, _agent) = agent_behind_relay(Break::AckLost(AGENT_BREAK)).await;
    let d = dir.path().to_path_buf();
    std::fs::write(d.join("big.bin"), data(AGENT_MESSAGE)).unwrap();
    let (code, out, err) = send_big(&d, &relay, &["--timeout", "1s", "--json"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("(sent by the agent)"),
        "the agent sent it: {err}"
    );
    said_unproven_and_stored(&d, &out, &err, AGENT_MESSAGE);
}

/// The agent's messages in these tests: at most 64 KiB (what a command hands over), and the
/// relay breaks once 40 KiB of it went out.
const AGENT_MESSAGE: usize = 60 * 1024;
const AGENT_BREAK: usize = 40 * 1024;

/// A classroom folder with a server, a relay in front of it that breaks as `how` says, and a
/// `client agent` that sends through the relay.
async fn agent_behind_relay(
    how: Break,
) -> (tempfile::TempDir, BinServer, Relay, super::agent::Agent) {
    let dir = tempfile::tempdir().unwrap();
    classroom_folder(dir.path());
    let server = BinServer::start(dir.path(), &[]);
    let relay = relay(server.addr.clone(), how, Then::Gone).await;
    let (d, addr) = (dir.path().to_path_buf(), relay.addr.clone());
    let agent = tokio::task::spawn_blocking(move || super::agent::Agent::start(&d, &addr, &[]))
        .await
        .unwrap();
    (dir, server, relay, agent)
}

/// Through `client agent`, an answer that never comes within the time the command waits: the
/// agent answers "not proven" with the id of the message it sealed (docs/PROTOCOL.md, section
/// 16), not a bare "not delivered" (found by review). The request is made with the library, to
/// wait 2 s rather than the command's --timeout + 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_answer_never_comes_gives_the_id_when_its_time_runs_out() {
    use letterlock::client::agent::{self, Reply, Request, SendRequest};
    let (dir, _server, relay, _agent) = agent_behind_relay(Break::AckHeld(AGENT_BREAK)).await;
    let d = dir.path().to_path_buf();
    let request = Request::Send(SendRequest {
        server: relay.addr.clone(),
        mode: Mode::Hybrid,
        max_asymmetric: envelope::DEFAULT_ASYMMETRIC_LIMIT,
        wait_s: 2,
        message: data(AGENT_MESSAGE).into(),
    });
    let socket = d.join("client_agent.sock");
    let reply =
        tokio::task::spawn_blocking(move || agent::ask(&socket, &request, Duration::from_secs(20)))
            .await
            .unwrap()
            .unwrap();
    let Reply::NotProven { id, text } = reply else {
        panic!("expected not proven, got {reply:?}");
    };
    assert!(
        text.contains("within the 2 seconds the command waits"),
        "{text}"
    );
    assert!(
        relay.dropped_answer.load(Ordering::SeqCst),
        "the answer was held"
    );
    let (code, stored, said) = run(&d, &["server", "read", &id.to_string()]);
    assert_eq!(code, 0, "the server stored it: {said}");
    assert_eq!(stored.len(), AGENT_MESSAGE);
}

/// A fetch cut short by the network is the client's connection ending, not the server's
/// error: its log says nothing at the default level of an outbox that could not be read or
/// an "internal server error" (found by a trial run), and the message is delivered whole at
/// the next fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_cut_short_is_not_logged_as_the_servers_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    classroom_folder(&d);
    let log = d.join("server.log");
    let server = BinServer::spawn_logging(common::cli::server_command(&d, &["-v"]), &log);
    // More than the sockets on the way hold (`connect`: the server's send buffer, at most
    // tcp_wmem's largest), cut early: the server is still writing it when the connection goes.
    let plain = data(largest_send_buffer() + 4 * 1024 * 1024);
    std::fs::write(d.join("big.bin"), &plain).unwrap();
    let (code, _, err) = run(
        &d,
        &["server", "send_msg", "--to", "client", "--file", "big.bin"],
    );
    assert_eq!(code, 0, "{err}");
    let relay = relay(
        server.addr.clone(),
        Break::AnswerCut(256 * 1024),
        Then::Pass,
    )
    .await;
    let (folder, addr) = (d.clone(), relay.addr.clone());
    let cut = tokio::task::spawn_blocking(move || {
        common::cli::recv_msg_into(&folder, &addr, &folder.join("cut.out"))
    })
    .await
    .unwrap();
    assert!(!cut.status.success(), "the fetch was not cut");
    let (folder, addr) = (d.clone(), relay.addr.clone());
    let whole = tokio::task::spawn_blocking(move || {
        common::cli::recv_msg_into(&folder, &addr, &folder.join("whole.out"))
    })
    .await
    .unwrap();
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    assert!(std::fs::read(d.join("whole.out")).unwrap() == plain);
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("closing connection") && logged.contains("error=connection closed"),
        "the delivery was not cut while the server wrote it: {logged}"
    );
    assert!(
        !logged.contains("reading an outbox message failed")
            && !logged.contains("internal server error"),
        "{logged}"
    );
}

/// A connection cut short under the handshake, after the server's first bytes (a server
/// stopping or restarting): connecting tries again within the deadline instead of giving up at
/// once (found by a trial run), announced as a connection turned away, and the second
/// connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_cut_short_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _store) = server(dir.path()).await;
    let relay = relay(upstream.addr.clone(), Break::AnswerCut(500), Then::Pass).await;
    let mut retries: Vec<Retry> = Vec::new();
    let client = Client::connect_retrying(
        &relay.addr,
        common::private(CLIENT),
        common::public(SERVER),
        letterlock::client::ClientConfig::default(),
        letterlock::client::Transport::Tls(letterlock::tls::TlsOptions::default()),
        backoff(Duration::from_secs(20)),
        |r| retries.push(*r),
    )
    .await;
    assert!(client.is_ok(), "{:?}", client.err());
    assert!(
        matches!(
            retries.as_slice(),
            [Retry {
                cause: RetryCause::Busy,
                ..
            }]
        ),
        "{retries:?}"
    );
    assert_eq!(relay.connections.load(Ordering::SeqCst), 2);
}
