//! A 256 MiB message streams client → server with bounded memory. Alone in its own test binary
//! so the process's peak RSS belongs to this test only.

mod common;

use common::Generated;
use common::net::{CLIENT, TestServer};
use letterlock::envelope::SealOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: streams 256 MiB through a server"]
async fn a_256_mib_message_streams_with_bounded_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client(CLIENT).await.unwrap();
    let before = common::peak_rss_kib();
    assert!(before > 0, "no VmHWM in /proc/self/status");
    let delivered = client
        .send(
            Generated {
                remaining: SIZE,
                counter: 0,
            },
            SealOptions::default(),
        )
        .await
        .unwrap();
    let grew = common::peak_rss_kib().saturating_sub(before) * 1024;
    assert_eq!(delivered.plaintext_len, SIZE);
    assert_eq!(server.inbox_len().await, 1);
    assert!(
        grew < 64 * 1024 * 1024,
        "peak RSS grew by {} MiB while streaming 256 MiB",
        grew >> 20
    );
    eprintln!("peak RSS grew by {} MiB for a 256 MiB message", grew >> 20);
    server.stop().await;
}
