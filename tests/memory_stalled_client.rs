//! A client that pipelines messages and never reads its acks costs the server bounded memory,
//! and others are served meanwhile. Alone in its own test binary so that the resident set size
//! it measures belongs to this test only.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::net::{CLIENT, TestServer};
use common::peer::*;
use letterlock::envelope::Mode;
use letterlock::keys::KeyId;
use letterlock::server::ServerConfig;
use letterlock::wire::{self, DATA_FRAME, Frame, FrameReader, FrameWriter};

/// A client that pipelines messages and never reads its acks. Its receive buffer is tiny, so
/// the acks back up into the server; the server must not buffer without bound (it has
/// `max_in_flight`) and must keep serving others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_in_flight: 8,
        ..ServerConfig::default()
    };
    let server = Arc::new(TestServer::start_with(dir.path(), config).await);
    let before = common::rss_kib();

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(server.addr.parse().unwrap()).await.unwrap();
    let (r, w) = stream.into_split();
    let mut raw = Raw {
        r: FrameReader::new(r, wire::DEFAULT_MAX_FRAME),
        w: FrameWriter::new(w),
        server: KeyId([0; 32]),
        challenge: [0; 32],
    };
    match raw.r.read_frame().await.unwrap() {
        Frame::Hello {
            server, challenge, ..
        } => {
            raw.server = server;
            raw.challenge = challenge;
        }
        other => panic!("{other:?}"),
    }
    let auth = auth_frame(&raw, CLIENT);
    raw.w.write_frame(&auth).await.unwrap();
    assert_eq!(raw.r.read_frame().await.unwrap(), Frame::Ready);

    // The same small message again and again (a retry: same ack each time, stored once).
    let one = message_frames(&sealed(2000, Mode::Hybrid), DATA_FRAME);
    let copies = 3000;
    let Raw { r: reader, w, .. } = raw;
    let writer = tokio::spawn(async move {
        let mut w = w;
        let mut sent = 0usize;
        for _ in 0..copies {
            match tokio::time::timeout(Duration::from_secs(3), w.write_raw(&one)).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        (sent, w)
    });
    // Meanwhile, a good client is served.
    let t = Instant::now();
    served(&server).await;
    let good = t.elapsed();
    let (sent, w) = writer.await.unwrap();
    let grew = common::rss_kib().saturating_sub(before);
    eprintln!(
        "stalled reader: {sent} of {copies} pipelined messages written before the server \
         stopped reading; good client served in {good:?}; RSS +{grew} KiB"
    );
    assert!(grew < 128 * 1024, "a non-reading client cost {grew} KiB");
    // The hostile message is stored once, whatever was sent.
    assert!(server.inbox_len().await <= 2);
    drop(reader);
    drop(w);
    served(&server).await;
    assert_no_server_panic();
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}
