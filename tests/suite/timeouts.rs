//! The server's timeouts on tokio's paused clock: one connection served over an in-memory
//! stream (`Server::serve_stream`), the peer silent on purpose. Time advances only when every
//! task waits, straight to the next timer, so each test checks when a timeout fires (never
//! before it is due) without waiting for it and without a wall-clock limit that a busy machine
//! could break.

use crate::common;

use std::time::Duration;

use common::net::CLIENT;
use letterlock::server::ServerConfig;
use letterlock::store::SqliteStore;
use letterlock::wire::{self, ConnError, ErrorCode, Frame, FrameReader, FrameWriter};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The peer's side of one connection, and the server task serving it.
struct Conn {
    r: FrameReader<ReadHalf<DuplexStream>>,
    w: FrameWriter<WriteHalf<DuplexStream>>,
    server: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Serves one in-memory connection with `config`; returns once the Hello is read, and the
/// Hello's server key id and challenge.
async fn connect(config: ServerConfig) -> (Conn, Frame) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
    let server = common::net::server(store, config);
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (sr, sw) = tokio::io::split(theirs);
    let peer = "127.0.0.1:1".parse().unwrap();
    let task = tokio::spawn(server.serve_stream(sr, sw, peer));
    let (r, w) = tokio::io::split(ours);
    let mut conn = Conn {
        r: FrameReader::new(r, wire::DEFAULT_MAX_FRAME),
        w: FrameWriter::new(w),
        server: task,
        _dir: dir,
    };
    let hello = conn.r.read_frame().await.unwrap();
    assert!(matches!(hello, Frame::Hello { .. }), "{hello:?}");
    (conn, hello)
}

/// Connects and authenticates as the trusted test client.
async fn authenticated(config: ServerConfig) -> Conn {
    let (mut conn, hello) = connect(config).await;
    let Frame::Hello {
        server, challenge, ..
    } = hello
    else {
        unreachable!()
    };
    let auth = common::peer::auth(&server, &challenge, CLIENT);
    conn.w.write_frame(&auth).await.unwrap();
    assert_eq!(conn.r.read_frame().await.unwrap(), Frame::Ready);
    conn
}

/// Reads the server's Error frame; it must say `Timeout` and `what`, and the connection must
/// then end.
async fn timed_out(conn: &mut Conn, what: &str) {
    match conn.r.read_frame().await.unwrap() {
        Frame::Error {
            code: ErrorCode::Timeout,
            message,
        } => assert!(message.contains(what), "{message}"),
        other => panic!("expected a Timeout error, got {other:?}"),
    }
    match conn.r.read_frame().await {
        Err(ConnError::Closed) | Err(ConnError::Io(_)) => {}
        other => panic!("after the Error the connection must close, got {other:?}"),
    }
}

/// The handshake timeout, and the idle timeout, from a config.
fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_authenticates_is_dropped_at_the_handshake_timeout() {
    let (mut conn, _) = connect(config()).await;
    let start = Instant::now();
    timed_out(&mut conn, "handshake").await;
    let waited = start.elapsed();
    assert!(
        waited >= config().handshake_timeout,
        "fired after {waited:?}"
    );
    // Not the idle timeout either: the handshake has its own, shorter one.
    assert!(waited < config().idle_timeout, "fired after {waited:?}");
    conn.server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_authenticated_peer_silent_past_the_idle_timeout_is_dropped() {
    let mut conn = authenticated(config()).await;
    let start = Instant::now();
    timed_out(&mut conn, "idle timeout").await;
    let waited = start.elapsed();
    assert!(waited >= config().idle_timeout, "fired after {waited:?}");
    conn.server.await.unwrap();
}

/// The idle timeout counts from the last frame, not from the start of the connection.
#[tokio::test(start_paused = true)]
async fn each_frame_restarts_the_idle_timeout() {
    let idle = config().idle_timeout;
    let mut conn = authenticated(config()).await;
    let start = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(idle * 2 / 3).await;
        conn.w.write_frame(&Frame::Fetch).await.unwrap();
        assert_eq!(
            conn.r.read_frame().await.unwrap(),
            Frame::FetchDone { count: 0 }
        );
    }
    // Twice the idle timeout has passed since the handshake, the connection still served.
    assert!(start.elapsed() >= idle * 2);
    let last = Instant::now();
    timed_out(&mut conn, "idle timeout").await;
    assert!(
        last.elapsed() >= idle,
        "fired {:?} after the last frame",
        last.elapsed()
    );
    conn.server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_inside_a_message_is_dropped_at_the_idle_timeout() {
    let mut conn = authenticated(config()).await;
    let sealed = common::seal(
        common::private(CLIENT).as_ref(),
        &common::public(common::net::SERVER),
        &letterlock::envelope::SealOptions::default(),
        &common::data(10_000),
    );
    // Half the message, then nothing.
    conn.w
        .write_frame(&Frame::Send(sealed[..sealed.len() / 2].to_vec()))
        .await
        .unwrap();
    let start = Instant::now();
    timed_out(&mut conn, "idle timeout inside a message").await;
    assert!(start.elapsed() >= config().idle_timeout);
    conn.server.await.unwrap();
}
