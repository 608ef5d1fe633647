//! The client's mailbox keeps a 1 GiB message from the server in bounded memory (issue 11, "A
//! client mailbox"). Its own test binary: it measures this process's peak RSS, which tests
//! running beside it in one binary would raise.

mod common;

use common::net::{CLIENT, SERVER, TestServer};
use common::{private, public};
use letterlock::client::{Content, FetchEvent, Mailbox, Output as FetchOutput};
use letterlock::envelope::{self, SealOptions};
use letterlock::received::ReceivedRecord;
use letterlock::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a 1 GiB hybrid message from the server into the client's mailbox"]
async fn a_1_gib_message_is_kept_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = TestServer::start(d).await;
    let to = common::net::clients().by_name("client").unwrap().clone();
    letterlock::server::queue_for_client(
        server.store.as_ref(),
        private(SERVER),
        &to,
        common::Generated {
            remaining: SIZE,
            counter: 0,
        },
        &SealOptions::default(),
    )
    .await
    .unwrap();
    let mailbox = Mailbox::open(&d.join("client.db"), "test server").unwrap();
    let mut record = ReceivedRecord::open(&d.join("received"), envelope::unix_now()).unwrap();
    let mut client = server.client(CLIENT).await.unwrap();
    let before = common::peak_rss_kib();
    assert!(before > 0, "no VmHWM in /proc/self/status");
    let mut over = false;
    let report = client
        .fetch_to_mailbox(
            &FetchOutput::Memory { limit: 1 << 20 },
            &mut record,
            &mailbox,
            |event| {
                if let FetchEvent::New(r) = event {
                    over = matches!(r.content, Content::OverLimit { limit: 1048576 })
                        && r.in_mailbox
                        && r.plaintext_len == SIZE;
                }
                Ok(())
            },
        )
        .await
        .unwrap();
    let grew = common::peak_rss_kib().saturating_sub(before) * 1024;
    assert_eq!(report.new, 1);
    assert!(over, "not reported as kept and over the limit");
    assert!(
        grew < 64 * 1024 * 1024,
        "peak RSS grew by {} MiB while keeping 1 GiB",
        grew >> 20
    );
    eprintln!("peak RSS grew by {} MiB for a 1 GiB message", grew >> 20);
    // Kept whole: it opens and verifies again from the mailbox, streaming.
    let kept = mailbox.store().list_inbox().await.unwrap();
    assert_eq!(kept.len(), 1);
    let body = mailbox
        .store()
        .find_inbox(&hex::encode(kept[0].message_id))
        .await
        .unwrap()
        .body;
    let opened = tokio::task::spawn_blocking(move || {
        envelope::open(
            private(CLIENT),
            &public(SERVER),
            &envelope::OpenOptions::default(),
            body,
            std::io::sink(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(opened.plaintext_len, SIZE);
    mailbox.close().await.unwrap();
    server.stop().await;
}
