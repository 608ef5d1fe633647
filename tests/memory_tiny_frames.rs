//! Volume: 10,000 empty Send frames are refused as "shorter than a header", and a real message
//! cut into one-byte Send frames is stored and acknowledged, with bounded memory. Alone in its
//! own test binary so that the resident set size it measures belongs to this test only.

mod common;

use common::net::TestServer;
use common::peer::*;
use letterlock::envelope::Mode;
use letterlock::wire::{ErrorCode, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tiny_send_frames() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let before = common::rss_kib();
    // 10,000 empty Send frames, then SendEnd: never a header.
    let mut raw = authed(&server.addr).await;
    let mut bytes = Vec::new();
    for _ in 0..10_000 {
        Frame::Send(Vec::new()).encode(&mut bytes);
    }
    Frame::SendEnd.encode(&mut bytes);
    raw.w.write_raw(&bytes).await.unwrap();
    let t = refused(&mut raw, ErrorCode::Refused).await;
    assert!(t.contains("shorter than a header"), "{t}");
    // A real 10,000-byte-plus message cut into 1-byte Send frames: slow to parse, but
    // legitimate, so it is stored and acknowledged.
    let s = sealed(10_000, Mode::Hybrid);
    assert!(s.len() >= 10_000);
    let mut raw = authed(&server.addr).await;
    raw.w.write_raw(&message_frames(&s, 1)).await.unwrap();
    match raw.r.read_frame().await.unwrap() {
        Frame::Ack { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.inbox_len().await, 1);
    let grew = common::rss_kib().saturating_sub(before);
    eprintln!(
        "10,000 empty and {} one-byte Send frames: RSS +{grew} KiB",
        s.len()
    );
    assert!(grew < 64 * 1024, "tiny frames cost {grew} KiB");
    served(&server).await;
    assert_no_server_panic();
    server.stop().await;
}
