//! Slowloris: 1,000 TCP connections that never authenticate cost bounded memory, and a good
//! client is served once the admitted ones time out. Alone in its own test binary so that the
//! resident set size it measures belongs to this test only.

mod common;

use std::time::{Duration, Instant};

use common::net::{CLIENT, TestServer};
use common::peer::*;
use letterlock::client::ClientError;
use letterlock::envelope::SealOptions;
use letterlock::server::ServerConfig;
use letterlock::wire::{self, ErrorCode, Frame, FrameReader};
use tokio::net::TcpStream;

/// Slowloris: 1,000 TCP connections that never authenticate. With `max_connections` 64 the
/// rest are told "busy" (Unavailable) at once; the 64 time out after `handshake_timeout`. A
/// good client is told busy or served, and is served on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: opens 1,000 sockets"]
async fn thousand_idle_connections() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        max_connections: 64,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let before = common::rss_kib();
    let start = Instant::now();
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    let opened = start.elapsed();
    // Each idle socket hears Hello (64 of them) or a busy Error (the others).
    let mut hello = 0;
    let mut busy = 0;
    for s in idle.iter_mut() {
        let (r, _w) = s.split();
        let mut r = FrameReader::new(r, wire::DEFAULT_MAX_FRAME);
        match r.read_frame().await {
            Ok(Frame::Hello { .. }) => hello += 1,
            Ok(Frame::Error {
                code: ErrorCode::Unavailable,
                ..
            }) => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(hello + busy, 1000);
    assert!(hello <= 64, "{hello} connections admitted past the limit");
    assert!(busy >= 1000 - 64 - 1);
    // The good client: busy until the idle ones time out, then served.
    let mut refusals = 0;
    let served_at = loop {
        match server.client(CLIENT).await {
            Ok(mut c) => {
                c.send(
                    std::io::Cursor::new(b"through".to_vec()),
                    SealOptions::default(),
                )
                .await
                .unwrap();
                break start.elapsed();
            }
            Err(ClientError::Busy { .. }) => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let grew = common::rss_kib().saturating_sub(before);
    eprintln!(
        "1000 idle connections opened in {opened:?}: {hello} admitted, {busy} told busy; good \
         client told busy {refusals} times, served at {served_at:?}; RSS +{grew} KiB"
    );
    assert!(grew < 128 * 1024, "idle connections cost {grew} KiB");
    // The admitted idle ones were closed by the handshake timeout (the good client was
    // served, so their slots are free: each has its Error frame by now, or gets it soon); the
    // busy ones are closed.
    let mut timeouts = 0;
    for s in idle.iter_mut() {
        let (r, _w) = s.split();
        let mut r = FrameReader::new(r, wire::DEFAULT_MAX_FRAME);
        if let Ok(Frame::Error {
            code: ErrorCode::Timeout,
            ..
        }) = r.read_frame().await
        {
            timeouts += 1;
        }
    }
    assert_eq!(timeouts, hello, "every admitted idle connection timed out");
    drop(idle);
    assert_eq!(server.inbox_len().await, 1);
    served(&server).await;
    assert_no_server_panic();
    server.stop().await;
}
