//! A client that fetches and stops reading holds a small, fixed amount of server memory
//! ([`ServerConfig::delivery_window`]), not the whole outbound queue (about 18 MiB a connection
//! before). Alone in its own test binary so that the resident set size it measures belongs to
//! this test only. Over version 2 (TLS); the delivery path is the same for version 1.
//!
//! Slow (seals a 32 MiB message, waits for the server to settle):
//! `cargo test --test memory_stalled_fetch -- --ignored --nocapture` prints the figure recorded
//! in docs/SECURITY.md.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::net::{CLIENT, SERVER, clients};
use common::v2::V2Server;
use common::{private, public};
use letterlock::envelope::SealOptions;
use letterlock::keys::Identity;
use letterlock::server::ServerConfig;
use letterlock::tls::{self, TlsOptions};
use letterlock::wire::{self, Frame, FrameReader, FrameWriter};
use tokio::net::TcpSocket;

/// Stalled fetches measured together (their RSS growth is divided among them).
const STALLED: usize = 8;

/// A fetch whose client never reads: a tiny receive buffer, `Ready` read, `Fetch` sent, then
/// nothing. Returns the halves so the connection stays open.
async fn stalled_fetch(addr: std::net::SocketAddr) -> Box<dyn std::any::Any + Send> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let identity: Arc<dyn Identity> = private(CLIENT);
    let config = tls::client_config(identity, &public(SERVER), &TlsOptions::default()).unwrap();
    let (stream, _) = tls::connect(config, stream, Duration::from_secs(30))
        .await
        .unwrap();
    let (r, w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r, wire::DEFAULT_MAX_FRAME);
    assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
    let mut w = FrameWriter::new(w);
    w.write_frame(&Frame::Fetch).await.unwrap();
    Box::new((r, w))
}

/// Waits until the resident set size stops growing (the server has filled what it will hold
/// for the stalled connections), at most `limit`; returns it.
async fn settled_rss_kib(limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = common::rss_kib();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = common::rss_kib();
        if now.abs_diff(last) < 256 || start.elapsed() > limit {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: seals a 32 MiB message and waits for the server's memory to settle"]
async fn a_stalled_fetch_holds_a_small_fixed_amount_of_server_memory() {
    common::peer::setup();
    let config = ServerConfig::default();
    let window = config.delivery_window;
    let server = V2Server::start(config).await;
    // One message much larger than the old outbound queue (64 frames of 256 KiB).
    let to = clients().by_name("client").unwrap().clone();
    let message = vec![0x5au8; 32 << 20];
    letterlock::server::queue_for_client(
        server.store.as_ref(),
        private(SERVER),
        &to,
        std::io::Cursor::new(message),
        &SealOptions::default(),
    )
    .await
    .unwrap();

    // A first stalled fetch warms up what is paid once (blocking threads, TLS tables).
    let warm = stalled_fetch(server.addr).await;
    let before = settled_rss_kib(Duration::from_secs(10)).await;
    let mut held = Vec::new();
    for _ in 0..STALLED {
        held.push(stalled_fetch(server.addr).await);
    }
    let after = settled_rss_kib(Duration::from_secs(20)).await;
    let per_fetch = after.saturating_sub(before) * 1024 / STALLED as u64;
    eprintln!(
        "stalled fetch: {STALLED} clients that fetch a 32 MiB message and stop reading grew \
         the server's RSS by {} KiB: {} KiB ({per_fetch} bytes) per stalled fetch (delivery \
         window {} KiB)",
        after.saturating_sub(before),
        per_fetch / 1024,
        window / 1024
    );
    // The old code held up to 64 queued 256 KiB frames and a 1 MiB write batch: ~17 MiB each.
    assert!(
        per_fetch < 4 << 20,
        "a stalled fetch holds {per_fetch} bytes of server memory"
    );
    // Closing the stalled clients ends their deliveries at once (not at the stall timeout).
    drop(held);
    drop(warm);
    common::peer::assert_no_server_panic();
    server.stop().await;
}
