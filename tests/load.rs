//! Load (issue #6, part 3): concurrent clients pipelining messages of random sizes in both
//! modes against one server. Every message is stored exactly once with the content hash (the
//! sealed identity) of the sealed bytes that were sent: 0 lost, 0 duplicated; memory stays
//! bounded.
//!
//! Slow, so ignored in `cargo test`: `cargo test --test load -- --ignored` runs 8 clients × 20
//! messages of 1 B–64 KiB (and `.ci/run` does). The full run, 64 × 250 of 1 B–256 KiB, is
//! `LETTERLOCK_LOAD=full cargo test --release --test load -- --ignored --nocapture`. Alone in its
//! test binary, so the peak RSS it measures is its own.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use common::net::{CLIENT, SERVER, TestServer};
use common::{private, public};
use letterlock::envelope::{Mode, SealOptions, Sealed};
use letterlock::store::{SealedIdentity, Store};

async fn run_load(clients: usize, per_client: usize, max_size: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Every message is sealed before its client starts sending, and the full run's asymmetric
    // messages (up to 256 KiB: hundreds of RSA operations each) take many minutes to get
    // through: a window wide enough that no message goes stale while it waits its turn. The
    // window itself is tested in tests/suite/network.rs.
    let config = letterlock::server::ServerConfig {
        time_window: std::time::Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    let server = Arc::new(TestServer::start_with(dir.path(), config).await);
    let rss_before = common::rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(common::rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            // Seal on the blocking pool: sizes 1..=max_size, modes alternating.
            let batch = tokio::task::spawn_blocking(move || {
                let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                (0..per_client)
                    .map(|i| {
                        let size = 1 + (rng.next() as usize % max_size);
                        let mode = if i % 2 == 0 {
                            Mode::Hybrid
                        } else {
                            Mode::Asymmetric
                        };
                        let plain = rng.bytes(size);
                        common::seal_with_info(
                            private(CLIENT).as_ref(),
                            &public(SERVER),
                            &SealOptions::mode(mode),
                            &plain,
                        )
                    })
                    .collect::<Vec<(Vec<u8>, Sealed)>>()
            })
            .await
            .unwrap();
            let mut client = server.client(CLIENT).await.unwrap();
            let mut acked = Vec::new();
            // Pipelined in groups of 10: the server works while the rest arrive.
            for group in batch.chunks(10) {
                let d = client.send_sealed_many(group).await.unwrap();
                assert_eq!(d.len(), group.len());
                acked.extend(d.into_iter().map(|d| d.id));
            }
            // A retry of the first message (as after a lost ack): acked again, not stored again.
            let (bytes, sealed) = &batch[0];
            client.send_sealed(bytes, sealed).await.unwrap();
            let sent: Vec<_> = batch
                .iter()
                .map(|(b, s)| {
                    let wrapped_key_len = public(SERVER).modulus_len();
                    let identity =
                        SealedIdentity::of(b, wrapped_key_len).expect("a sealed message");
                    (s.header.message_id, identity, s.header.mode)
                })
                .collect();
            (
                sent,
                acked,
                batch.iter().map(|(b, _)| b.len()).sum::<usize>(),
            )
        }));
    }
    let mut sent = HashMap::new();
    let mut acked = 0;
    let mut bytes = 0;
    let mut modes = [0usize; 2];
    for t in tasks {
        let (s, a, b) = t.await.unwrap();
        acked += a.len();
        bytes += b;
        for (id, hash, mode) in s {
            modes[(mode == Mode::Hybrid) as usize] += 1;
            assert!(sent.insert(id.0, hash).is_none(), "random id collision");
        }
    }
    let elapsed = start.elapsed();
    sampling.abort();
    let inbox = server.store.list_inbox().await.unwrap();
    let mut seen = HashMap::new();
    for m in &inbox {
        *seen.entry(m.message_id).or_insert(0) += 1;
        assert_eq!(
            sent.get(&m.message_id),
            Some(&m.content_hash),
            "stored message not sent, or its content differs"
        );
    }
    let lost = sent.keys().filter(|id| !seen.contains_key(*id)).count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let peak_growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(rss_before);
    eprintln!(
        "load: {clients} clients × {per_client} messages (1 B–{max_size} B; {} hybrid, {} \
         asymmetric), {:.1} MiB sealed, in {elapsed:?}: {} stored, {lost} lost, {duplicated} \
         duplicated; peak RSS growth {} MiB",
        modes[1],
        modes[0],
        bytes as f64 / 1048576.0,
        inbox.len(),
        peak_growth / 1024
    );
    assert_eq!(acked, clients * per_client);
    assert_eq!(inbox.len(), clients * per_client);
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert!(server.store.integrity_check().await.unwrap());
    // Bounded: the server never holds a whole message, let alone all of them; the test's own
    // pre-sealed batches are most of this.
    assert!(
        (peak_growth as usize) < 2 * bytes / 1024 + 256 * 1024,
        "peak RSS growth {peak_growth} KiB for {bytes} bytes sent"
    );
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 8 clients x 20 messages in both modes (~7 s); tests/suite/network.rs has a fast concurrent case"]
async fn concurrent_clients_every_message_stored_once() {
    if std::env::var("LETTERLOCK_LOAD").as_deref() == Ok("full") {
        run_load(64, 250, 256 * 1024).await;
    } else {
        run_load(8, 20, 64 * 1024).await;
    }
}
