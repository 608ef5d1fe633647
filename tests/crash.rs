//! Crashes (issue #6, part 4): the server binary as a child process, under load from
//! in-process clients, killed with SIGKILL at random moments and restarted, five times.
//! Afterwards every message whose ack a client verified is in the store, retries of
//! unacknowledged messages (the same pre-sealed bytes, so the same id) made no duplicates, and
//! `PRAGMA integrity_check` passes.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use letterlock::client::{Client, ClientConfig};
use letterlock::envelope::{Mode, SealOptions, Sealed};
use letterlock::keys::Identity;
use letterlock::store::{SqliteStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_letterlock");

fn run(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

/// Starts the server; returns the child and the address it printed.
fn start(keys: &Path, store: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--keys"])
        .arg(keys)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("letterlock server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .try_into()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: SIGKILLs the server binary under load six times (~13 s)"]
async fn sigkill_under_load_five_times() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let k = keys.to_str().unwrap();
    run(&["server", "generate_key_pair", "--bits", "2048", "--keys", k]);
    run(&["client", "generate_key_pair", "--bits", "2048", "--keys", k]);
    let store_path = dir.path().join("server.db");
    let identity: Arc<dyn Identity> =
        Arc::new(letterlock::keys::load_private(&keys.join("client_private.pem")).unwrap());
    let server_key = letterlock::keys::load_public(&keys.join("server_public.pem")).unwrap();

    // Pre-sealed messages: a retry resends the very same bytes (same id, same content).
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 60;
    let mut rng = common::Rng(0x5eed);
    let mut batches: Vec<Vec<(Vec<u8>, Sealed)>> = Vec::new();
    for _ in 0..CLIENTS {
        let mut b = Vec::new();
        for i in 0..PER_CLIENT {
            let size = 1 + rng.next() as usize % (96 * 1024);
            let plain: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            let mode = if i % 3 == 0 {
                Mode::Asymmetric
            } else {
                Mode::Hybrid
            };
            let mut out = Vec::new();
            let s = letterlock::envelope::seal(
                identity.as_ref(),
                &server_key,
                &SealOptions::mode(mode),
                plain.as_slice(),
                &mut out,
            )
            .unwrap();
            b.push((out, s));
        }
        batches.push(b);
    }
    let expected: HashMap<[u8; 16], [u8; 32]> = batches
        .iter()
        .flatten()
        .map(|(b, s)| (s.header.message_id.0, sha256(b)))
        .collect();

    let (mut child, addr) = start(&keys, &store_path);
    let addr = Arc::new(Mutex::new(addr));
    let verified: Arc<Mutex<HashSet<[u8; 16]>>> = Default::default();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start_time = Instant::now();
    let mut tasks = Vec::new();
    for batch in batches {
        let (addr, verified, identity, server_key, attempts) = (
            addr.clone(),
            verified.clone(),
            identity.clone(),
            server_key.clone(),
            attempts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let config = ClientConfig {
                timeout: Duration::from_secs(5),
                ..ClientConfig::default()
            };
            let mut next = 0;
            let mut client: Option<Client> = None;
            while next < batch.len() {
                assert!(
                    start_time.elapsed() < Duration::from_secs(60),
                    "clients never finished"
                );
                if client.is_none() {
                    let a = addr.lock().unwrap().clone();
                    match Client::connect(&a, identity.clone(), server_key.clone(), config.clone())
                        .await
                    {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let (bytes, sealed) = &batch[next];
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match client.as_mut().unwrap().send_sealed(bytes, sealed).await {
                    // A verified ack: this message must survive any crash from now on.
                    Ok(d) => {
                        assert_eq!(d.id, sealed.header.message_id);
                        verified.lock().unwrap().insert(d.id.0);
                        next += 1;
                    }
                    // No proof: reconnect and retry the same bytes.
                    Err(_) => client = None,
                }
            }
        }));
    }

    let mut rng = common::Rng(0xdead_beef);
    let mut kills = Vec::new();
    for _ in 0..5 {
        let wait = Duration::from_millis(300 + rng.next() % 900);
        tokio::time::sleep(wait).await;
        let acked_before = verified.lock().unwrap().len();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills.push((wait, acked_before));
        let (c, a) = start(&keys, &store_path);
        child = c;
        *addr.lock().unwrap() = a;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start_time.elapsed();
    // The final kill, and the store examined as the server left it.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = SqliteStore::open(&store_path).unwrap();
    let inbox = store.list_inbox().await.unwrap();
    let mut count: HashMap<[u8; 16], usize> = HashMap::new();
    for m in &inbox {
        *count.entry(m.message_id).or_default() += 1;
        assert_eq!(
            expected.get(&m.message_id),
            Some(&m.content_hash),
            "stored message unknown or altered"
        );
    }
    let verified = verified.lock().unwrap().clone();
    let missing = verified
        .iter()
        .filter(|id| !count.contains_key(*id))
        .count();
    let duplicates = count.values().filter(|&&n| n > 1).count();
    eprintln!(
        "crash: {} messages, {} send attempts, 6 SIGKILLs (at {:?} after each start, acks \
         verified before each: {:?}), {elapsed:?}: {} verified, {} stored, {missing} missing, \
         {duplicates} duplicated",
        expected.len(),
        attempts.load(std::sync::atomic::Ordering::Relaxed),
        kills.iter().map(|k| k.0).collect::<Vec<_>>(),
        kills.iter().map(|k| k.1).collect::<Vec<_>>(),
        verified.len(),
        inbox.len()
    );
    assert_eq!(verified.len(), expected.len());
    assert_eq!(missing, 0, "a message with a verified ack was lost");
    assert_eq!(duplicates, 0);
    assert_eq!(inbox.len(), expected.len());
    assert!(store.integrity_check().await.unwrap());
    // The kills really interrupted the load.
    assert!(
        kills.iter().any(|k| k.1 < expected.len()),
        "every kill came after the load finished"
    );
}
