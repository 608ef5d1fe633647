//! Several servers over one PostgreSQL (issue 12), through the real binary: three
//! `letterlock server --store postgres://...` processes over one throwaway database, clients
//! spread across them.
//!
//! - Load: 64 clients in both modes; every acked message is stored exactly once, its stored body
//!   byte for byte what was sent.
//! - SIGKILL one server mid-load, three times, restarting it on a new port: clients of the
//!   killed server resend to another server under the same message id (as an honest client
//!   that lost its ack does); nothing acked is lost, no resend is stored twice.
//! - PostgreSQL restarted mid-load (`pg_ctl stop -m fast`, then `start`): the servers carry on
//!   without a restart of their own, the clients see `Unavailable` and retry; nothing acked is
//!   lost.
//! - A message waiting for a client, fetched through two servers at once: delivered and removed
//!   once. A replay sent to another server than the original: acked again with the same ack,
//!   stored once.
//! - The client binary resends a message the server could not store (`Unavailable` after the
//!   handshake) under the same id, within its `--timeout`, and says so.
//!
//! The load tests print their figures (messages sent, acked, stored, duplicates, time) on
//! stderr: `cargo test --test suite scaling:: -- --ignored --nocapture --test-threads=1` (one at a
//! time, so each has the machine to itself). They are slow (ignored in `cargo test`; `.ci/run`
//! runs them with `--ignored`): 64 clients × 8 messages (hybrid up to 32 KiB, asymmetric up to
//! 2 KiB) each; `LETTERLOCK_SCALING=full` makes it 64 × 40 with hybrid messages up to 256 KiB.
//! The other tests are fast. The tests that restart PostgreSQL need the throwaway cluster (not
//! `LETTERLOCK_TEST_POSTGRES`) and have it to themselves while they run.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cli::{BinServer, classroom_folder, ok, server_command};
use common::net::{CLIENT, SERVER};
use common::postgres::Database;
use common::sha256;
use letterlock::client::{Client, ClientConfig, ClientError};
use letterlock::envelope::{Mode, SealOptions, Sealed};
use letterlock::store::{PostgresStore, SealedIdentity, Store};
use letterlock::wire::ErrorCode;

/// What a server logs when it answers a resend of a message it already stored (the same ack
/// again): counted to show how many acks the kills cut off.
const REPEAT_LOGGED: &str = "repeat of a stored message";

/// Servers over the one database.
const SERVERS: usize = 3;

/// Clients of the load tests, spread evenly over the servers.
const CLIENTS: usize = 64;

/// A folder with the classroom keys (the [`SERVER`] key serves, the [`CLIENT`] key is trusted
/// from its client_public.pem) and a migrated database, and the servers started over it.
struct Group {
    db: Database,
    dir: tempfile::TempDir,
    /// The running servers; `None` while one is down.
    servers: Vec<Option<BinServer>>,
    /// Where each server listens now, shared with the clients (a restart moves it).
    addrs: Arc<Mutex<Vec<String>>>,
    /// Servers started so far, to give each log its own file.
    started: usize,
}

impl Group {
    async fn start(db: Database) -> Group {
        let dir = tempfile::tempdir().unwrap();
        classroom_folder(dir.path());
        ok(dir.path(), &["server", "migrate", "--store", &db.url]);
        let mut group = Group {
            db,
            dir,
            servers: Vec::new(),
            addrs: Arc::default(),
            started: 0,
        };
        for _ in 0..SERVERS {
            let server = group.spawn();
            group.addrs.lock().unwrap().push(server.addr.clone());
            group.servers.push(Some(server));
        }
        group
    }

    /// One more `letterlock server --store URL` in the group's folder, its log in a file there.
    fn spawn(&mut self) -> BinServer {
        self.started += 1;
        let log = self.dir.path().join(format!("server-{}.log", self.started));
        BinServer::spawn_logging(
            server_command(self.dir.path(), &["--store", &self.db.url]),
            &log,
        )
    }

    /// SIGKILLs server `i` and starts it again on a fresh port: its address changes.
    fn kill_and_restart(&mut self, i: usize) {
        // Dropping a BinServer kills it (SIGKILL) and waits for it.
        drop(self.servers[i].take());
        let server = self.spawn();
        self.addrs.lock().unwrap()[i] = server.addr.clone();
        self.servers[i] = Some(server);
    }

    /// Lines of every server log so far (killed servers' too) that contain `needle`.
    fn logged(&self, needle: &str) -> usize {
        (1..=self.started)
            .map(|n| {
                let log = self.dir.path().join(format!("server-{n}.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.lines().filter(|l| l.contains(needle)).count()
            })
            .sum()
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.db.url).await.unwrap()
    }
}

/// What a client does when a send fails without a proven ack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    /// Nothing should fail: any failure fails the test.
    Panic,
    /// Resend to the next server of the group (its own may have died).
    NextServer,
    /// Resend to the same server after a short pause (its database may be restarting).
    SameServer,
}

/// What the clients did, counted across all of them.
#[derive(Default)]
struct Counters {
    /// Ids of the messages whose ack a client verified.
    acked: Mutex<HashSet<[u8; 16]>>,
    /// Sends made, first ones and resends.
    attempts: AtomicUsize,
    /// Sends of a message made after one of its sends had failed.
    resends: AtomicUsize,
    /// Failed sends and connections by cause: a refusal's code, else the error's kind.
    failures: Mutex<HashMap<String, usize>>,
}

impl Counters {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn failed(&self, e: &ClientError) {
        let cause = match e {
            ClientError::Refused { code, .. } => format!("refused {code:?}"),
            ClientError::NotProven { .. } | ClientError::NoAck { .. } => "no ack".to_owned(),
            ClientError::Busy { .. } => "busy".to_owned(),
            ClientError::Connect { .. } => "cannot connect".to_owned(),
            ClientError::Timeout { .. } => "timeout".to_owned(),
            other => format!("other: {other}"),
        };
        *self.failures.lock().unwrap().entry(cause).or_default() += 1;
    }

    fn failures(&self, cause: &str) -> usize {
        self.failures
            .lock()
            .unwrap()
            .get(cause)
            .copied()
            .unwrap_or(0)
    }
}

/// The messages of client `c`: `per_client` of random content, modes alternating (hybrid up to
/// `max_hybrid` bytes, asymmetric up to 2 KiB: each 190 bytes of it is an RSA operation on the
/// server), sealed once: every resend is the same bytes under the same id.
fn messages(c: usize, per_client: usize, max_hybrid: usize) -> Vec<(Vec<u8>, Sealed)> {
    let mut rng = common::Rng(0x5ca1_ab1e ^ (c as u64 + 1));
    let identity = common::private(CLIENT);
    let server = common::public(SERVER);
    (0..per_client)
        .map(|i| {
            let (mode, max) = if (c + i).is_multiple_of(2) {
                (Mode::Hybrid, max_hybrid)
            } else {
                (Mode::Asymmetric, 2048)
            };
            let len = 1 + rng.next() as usize % max;
            let plain = rng.bytes(len);
            common::seal_with_info(identity.as_ref(), &server, &SealOptions::mode(mode), &plain)
        })
        .collect()
}

/// Sends `batch` one message at a time through server `home` of `addrs`, each until its ack
/// is proven, reconnecting and resending after a failure as `on_failure` says.
async fn client(
    batch: Vec<(Vec<u8>, Sealed)>,
    home: usize,
    addrs: Arc<Mutex<Vec<String>>>,
    on_failure: OnFailure,
    counters: Arc<Counters>,
) {
    // The default frame timeout (60 s): a loaded machine answers late, not never; a killed
    // server or a lost database is noticed at once (a closed connection, `Unavailable`).
    let config = ClientConfig::default();
    let mut target = home;
    let mut client: Option<Client> = None;
    let mut rng = common::Rng(home as u64 + 7);
    for (bytes, sealed) in &batch {
        let mut failed = 0;
        let mut last_error = String::new();
        loop {
            // A server down, or its database, fails a message's sends a few times in a row:
            // hundreds of failures mean it is not coming back.
            assert!(failed < 200, "a message still unacked after {failed} sends");
            if failed > 0 {
                match on_failure {
                    OnFailure::Panic => panic!("a send failed under plain load: {last_error}"),
                    OnFailure::NextServer => target = (target + 1) % SERVERS,
                    OnFailure::SameServer => {
                        let pause = 50 + rng.next() % 100;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
            if client.is_none() {
                let addr = addrs.lock().unwrap()[target].clone();
                let connected = Client::connect_tls(
                    &addr,
                    common::private(CLIENT),
                    common::public(SERVER),
                    config.clone(),
                    Default::default(),
                )
                .await;
                match connected {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        counters.failed(&e);
                        last_error = format!("connecting: {e}");
                        failed += 1;
                        continue;
                    }
                }
            }
            let Some(connection) = client.as_mut() else {
                continue;
            };
            counters.attempts.fetch_add(1, Ordering::Relaxed);
            if failed > 0 {
                counters.resends.fetch_add(1, Ordering::Relaxed);
            }
            match connection.send_sealed(bytes, sealed).await {
                // Proven: the server decrypted and committed this message.
                Ok(d) => {
                    assert_eq!(d.id, sealed.header.message_id);
                    counters.acked.lock().unwrap().insert(d.id.0);
                    break;
                }
                // Not proven: the same bytes again, on a new connection.
                Err(e) => {
                    // A refusal other than Unavailable tells the client not to try again: a
                    // message sent correctly must never get one, whatever fails around it.
                    if let ClientError::Refused { code, .. } = &e {
                        assert_eq!(
                            *code,
                            ErrorCode::Unavailable,
                            "a send must be acked, or refused as retryable: {e}"
                        );
                    }
                    counters.failed(&e);
                    last_error = e.to_string();
                    client = None;
                    failed += 1;
                }
            }
        }
    }
}

/// The load: `CLIENTS` clients of `per_client` messages each, client `c` starting on server
/// `c % SERVERS`, all messages sealed first.
fn start_load(
    group: &Group,
    per_client: usize,
    max_hybrid: usize,
    on_failure: OnFailure,
    counters: &Arc<Counters>,
) -> Load {
    let batches: Vec<_> = (0..CLIENTS)
        .map(|c| messages(c, per_client, max_hybrid))
        .collect();
    let mut sent = HashMap::new();
    for (bytes, sealed) in batches.iter().flatten() {
        let fresh = sent.insert(sealed.header.message_id.0, sha256(bytes));
        assert!(fresh.is_none(), "two messages drew one random id");
    }
    let started = Instant::now();
    let tasks = batches
        .into_iter()
        .enumerate()
        .map(|(c, batch)| {
            tokio::spawn(client(
                batch,
                c % SERVERS,
                group.addrs.clone(),
                on_failure,
                counters.clone(),
            ))
        })
        .collect();
    Load {
        sent,
        tasks,
        started,
    }
}

/// A load under way.
struct Load {
    /// What was sent: message id to SHA-256 of the sealed bytes.
    sent: HashMap<[u8; 16], [u8; 32]>,
    /// The clients.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// When the clients started (after the sealing).
    started: Instant,
}

/// Waits until the clients have `n` acks in all (or all of them ended).
async fn until_acked(counters: &Counters, n: usize, tasks: &[tokio::task::JoinHandle<()>]) {
    while counters.acked() < n && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the database holds, checked against what was sent and acked.
struct Stored {
    /// Rows in the inbox.
    rows: usize,
    /// Acked messages with no row.
    lost: usize,
    /// Messages with more than one row, counted by id and by the body's content.
    duplicates: usize,
}

/// Reads every stored message back: each row is a message that was sent, its body byte for
/// byte the sealed bytes sent under its id; no id and no body twice.
async fn check_store(
    store: &PostgresStore,
    sent: &HashMap<[u8; 16], [u8; 32]>,
    acked: &HashSet<[u8; 16]>,
) -> Stored {
    let inbox = store.list_inbox().await.unwrap();
    let mut by_id: HashMap<[u8; 16], usize> = HashMap::new();
    let mut by_body: HashMap<[u8; 32], usize> = HashMap::new();
    for m in &inbox {
        *by_id.entry(m.message_id).or_default() += 1;
        let expected = sent
            .get(&m.message_id)
            .unwrap_or_else(|| panic!("a stored message was never sent: {:?}", m.message_id));
        let mut body = Vec::new();
        let mut found = store.find_inbox(&hex::encode(m.message_id)).await.unwrap();
        std::io::Read::read_to_end(&mut found.body, &mut body).unwrap();
        let hash = sha256(&body);
        assert_eq!(&hash, expected, "a stored body is not the bytes sent");
        // The row's content hash is the sealed identity of those bytes (PROTOCOL.md).
        let identity = SealedIdentity::of(&body, common::public(SERVER).modulus_len()).unwrap();
        assert_eq!(m.content_hash, identity, "a stored content hash differs");
        *by_body.entry(hash).or_default() += 1;
    }
    assert!(store.integrity_check().await.unwrap());
    fn twice<K>(counts: &HashMap<K, usize>) -> usize {
        counts.values().filter(|&&n| n > 1).count()
    }
    Stored {
        rows: inbox.len(),
        lost: acked.iter().filter(|id| !by_id.contains_key(*id)).count(),
        duplicates: twice(&by_id).max(twice(&by_body)),
    }
}

/// Prints a load test's figures and asserts them: every message acked, every acked message
/// stored, none twice.
fn report(
    what: &str,
    sent: &HashMap<[u8; 16], [u8; 32]>,
    counters: &Counters,
    stored: &Stored,
    elapsed: Duration,
) {
    let acked = counters.acked();
    let mut failures: Vec<_> = counters
        .failures
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    failures.sort();
    eprintln!(
        "{what}: {SERVERS} servers, {CLIENTS} clients, {} messages sent, {} send attempts \
         ({} resends), {acked} acked, {} stored, {} lost, {} duplicates, in {:.1} s; failed \
         sends and connections: [{}]",
        sent.len(),
        counters.attempts.load(Ordering::Relaxed),
        counters.resends.load(Ordering::Relaxed),
        stored.rows,
        stored.lost,
        stored.duplicates,
        elapsed.as_secs_f64(),
        failures.join(", ")
    );
    assert_eq!(acked, sent.len(), "every message ends acked");
    assert_eq!(stored.lost, 0, "an acked message was lost");
    assert_eq!(stored.duplicates, 0, "a message was stored twice");
    assert_eq!(stored.rows, sent.len());
}

/// Messages per client and the largest hybrid message: `LETTERLOCK_SCALING=full` for a longer
/// run than the default.
fn load_size() -> (usize, usize) {
    if std::env::var("LETTERLOCK_SCALING").as_deref() == Ok("full") {
        (40, 256 * 1024)
    } else {
        (8, 32 * 1024)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 64 clients over three server processes and one PostgreSQL"]
async fn three_servers_store_every_acked_message_once() {
    let group = Group::start(common::postgres::database().await).await;
    let counters = Arc::new(Counters::default());
    let (per_client, max_hybrid) = load_size();
    let Load {
        sent,
        tasks,
        started,
    } = start_load(&group, per_client, max_hybrid, OnFailure::Panic, &counters);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let acked = counters.acked.lock().unwrap().clone();
    let stored = check_store(&group.store().await, &sent, &acked).await;
    report("load", &sent, &counters, &stored, elapsed);
    assert_eq!(counters.resends.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: SIGKILLs a server process three times under load from 64 clients"]
async fn sigkill_one_server_three_times_under_load() {
    let mut group = Group::start(common::postgres::database().await).await;
    let counters = Arc::new(Counters::default());
    let (per_client, max_hybrid) = load_size();
    let Load {
        sent,
        tasks,
        started,
    } = start_load(
        &group,
        per_client,
        max_hybrid,
        OnFailure::NextServer,
        &counters,
    );
    // Kills at a fifth, two fifths and three fifths of the acks, a random moment after each:
    // always mid-load, however fast the machine.
    let mut rng = common::Rng(0xdead_beef);
    let mut kills = Vec::new();
    for k in 0..3 {
        until_acked(&counters, sent.len() * (k + 1) / 5, &tasks).await;
        tokio::time::sleep(Duration::from_millis(rng.next() % 200)).await;
        let acked_before = counters.acked();
        let old = group.addrs.lock().unwrap()[k % SERVERS].clone();
        group.kill_and_restart(k % SERVERS);
        let new = group.addrs.lock().unwrap()[k % SERVERS].clone();
        kills.push((acked_before, old, new));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let acked = counters.acked.lock().unwrap().clone();
    let stored = check_store(&group.store().await, &sent, &acked).await;
    eprintln!(
        "kills (acks verified before each, old and new address): {kills:?}; resends acked as \
         repeats of a stored message (their first ack was lost): {}",
        group.logged(REPEAT_LOGGED)
    );
    report("sigkill", &sent, &counters, &stored, elapsed);
    assert!(
        kills.iter().all(|(before, _, _)| *before < sent.len()),
        "a kill came after the load finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: restarts PostgreSQL under load from 64 clients over three servers"]
async fn postgres_restart_under_load_loses_nothing() {
    let mut group = Group::start(common::postgres::exclusive_database().await).await;
    let counters = Arc::new(Counters::default());
    // Hybrid messages up to 256 KiB whatever the size: many of them are past the largest body
    // kept in its row, so the stop also cuts off bodies being streamed into the database.
    let (per_client, _) = load_size();
    let max_hybrid = 256 * 1024;
    let Load {
        sent,
        tasks,
        started,
    } = start_load(
        &group,
        per_client,
        max_hybrid,
        OnFailure::SameServer,
        &counters,
    );
    until_acked(&counters, sent.len() / 4, &tasks).await;
    let acked_before = counters.acked();
    let db = &group.db;
    tokio::task::block_in_place(|| {
        db.stop_server();
        // Down long enough for every client to notice.
        std::thread::sleep(Duration::from_secs(2));
        db.start_server();
    });
    let acked_during = counters.acked() - acked_before;
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let acked = counters.acked.lock().unwrap().clone();
    let stored = check_store(&group.store().await, &sent, &acked).await;
    eprintln!(
        "postgres restart: {acked_before} acks before the stop, {acked_during} while it \
         stopped and started"
    );
    report("postgres restart", &sent, &counters, &stored, elapsed);
    assert!(
        acked_before < sent.len(),
        "the restart came after the load finished"
    );
    assert!(
        counters.failures("refused Unavailable") > 0,
        "no client was told the database was unavailable"
    );
    // The same three servers served it all: none was restarted, none died.
    for server in group.servers.iter_mut().flatten() {
        assert!(server.is_running(), "a server exited");
    }
}

/// Sends `bytes` through the server at `addr` on a new connection: the proven ack, or why not.
async fn send_once(
    addr: &str,
    bytes: &[u8],
    sealed: &Sealed,
) -> Result<letterlock::client::Delivery, ClientError> {
    let mut client = Client::connect_tls(
        addr,
        common::private(CLIENT),
        common::public(SERVER),
        ClientConfig::default(),
        Default::default(),
    )
    .await?;
    client.send_sealed(bytes, sealed).await
}

/// A message sent to one server, then the same bytes to another (a replay, or an honest resend
/// after a lost ack): acked again with the same proven ack, stored once. Different bytes
/// under the same id, to a third server: refused as a replay, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_another_server_is_acked_once_and_stored_once() {
    let group = Group::start(common::postgres::database().await).await;
    let addrs = group.addrs.lock().unwrap().clone();
    let id = [0x3c; 16];
    let now = letterlock::envelope::unix_now();
    let (bytes, sealed) = common::net::seal_to_server(CLIENT, b"sent to A, replayed to B", id, now);

    let first = send_once(&addrs[0], &bytes, &sealed).await.unwrap();
    // The ack is proven against the tag computed while sealing: the same ack as the first.
    let again = send_once(&addrs[1], &bytes, &sealed).await.unwrap();
    assert_eq!(
        (first.id, again.id),
        (sealed.header.message_id, sealed.header.message_id)
    );

    let (other, other_sealed) =
        common::net::seal_to_server(CLIENT, b"another message, the same id", id, now);
    assert_ne!(other, bytes);
    match send_once(&addrs[2], &other, &other_sealed).await {
        Err(ClientError::Refused {
            code: ErrorCode::Replay,
            ..
        }) => {}
        other => panic!("a second message under a used id must be refused: {other:?}"),
    }

    let store = group.store().await;
    let sent = HashMap::from([(id, sha256(&bytes))]);
    let stored = check_store(&store, &sent, &HashSet::from([id])).await;
    assert_eq!((stored.rows, stored.lost, stored.duplicates), (1, 0, 0));
    assert_eq!(
        group.logged(REPEAT_LOGGED),
        1,
        "the replay was not answered as a repeat"
    );
}

/// Messages waiting for a client, fetched through two servers at once by two copies of the
/// client (two key folders, one key), several rounds: each message is delivered to exactly one
/// of them, and once both have acked, the outbox is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_fetched_through_two_servers_at_once_is_delivered_once() {
    const ROUNDS: usize = 4;
    const PER_ROUND: usize = 3;
    let group = Group::start(common::postgres::database().await).await;
    let addrs = group.addrs.lock().unwrap().clone();
    let store = group.store().await;
    let to = common::net::clients().by_name("client").unwrap().clone();
    let copies: Vec<tempfile::TempDir> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            classroom_folder(dir.path());
            dir
        })
        .collect();

    let mut queued = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for round in 0..ROUNDS {
        for n in 0..PER_ROUND {
            let text = format!("round {round}, message {n}");
            letterlock::server::queue_for_client(
                &store,
                common::private(SERVER),
                &to,
                std::io::Cursor::new(text.clone().into_bytes()),
                &SealOptions::default(),
            )
            .await
            .unwrap();
            queued.insert(text);
        }
        // Both fetches at once, each through its own server.
        let fetches: Vec<_> = copies
            .iter()
            .zip(&addrs)
            .map(|(dir, addr)| {
                common::cli::command(
                    dir.path(),
                    &["client", "recv_msg", "--json", "--server", addr],
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let mut split = Vec::new();
        for fetch in fetches {
            let out = fetch.wait_with_output().unwrap();
            let stdout = common::cli::assert_ok(&["client", "recv_msg"], &out);
            split.push(stdout.lines().count());
            for line in stdout.lines() {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(row["status"], "new", "{line}");
                *seen
                    .entry(row["text"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        eprintln!("round {round}: messages delivered through each server: {split:?}");
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let seen: HashSet<String> = seen.into_keys().collect();
    assert_eq!(seen, queued, "every queued message is delivered");
    let left = store.pending_outbox(&to.key.id().0).await.unwrap();
    assert!(
        left.is_empty(),
        "acked messages left in the outbox: {left:?}"
    );
}

/// `client send_msg` whose message the server cannot store (the database stopped after the
/// handshake, so the send is answered `Unavailable`) says so, reconnects and resends the same
/// message with backoff within its `--timeout`, and ends delivered once the database is back:
/// exit 0, one copy stored, under the id it announced while resending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_msg_resends_after_unavailable_until_the_database_is_back() {
    use std::io::Write;
    let group = Group::start(common::postgres::exclusive_database().await).await;
    let addr = group.addrs.lock().unwrap()[0].clone();
    let text = "kept and resent while PostgreSQL restarted";
    // The message comes from stdin, streamed: the client connects first, then waits for it.
    let cmd = common::cli::command(
        group.dir.path(),
        &[
            "-v",
            "client",
            "send_msg",
            "--server",
            &addr,
            "--timeout",
            "120",
        ],
    );
    let mut watched = common::cli::Watched::spawn(cmd);
    watched.wait_for("connected; the server proved its key");

    let db = &group.db;
    tokio::task::block_in_place(|| db.stop_server());
    let mut stdin = watched.child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let resending = watched.wait_for("resending it");
    assert!(resending.contains("unavailable"), "{resending}");
    tokio::task::block_in_place(|| db.start_server());

    let (out, said) = watched.finish();
    // What a person sees (the log lines of -v left out).
    for line in said.iter().filter(|l| l.starts_with("letterlock:")) {
        eprintln!("{line}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "send_msg failed:\n{stdout}\n{}",
        said.join("\n")
    );
    assert!(stdout.contains("delivered"), "{stdout}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("message id "))
        .unwrap_or_else(|| panic!("no message id in {stdout}"));
    assert!(
        resending.contains(id),
        "resent another id than delivered: {resending}"
    );

    let store = group.store().await;
    let inbox = store.list_inbox().await.unwrap();
    assert_eq!(inbox.len(), 1, "the resent message must be stored once");
    assert_eq!(hex::encode(inbox[0].message_id), id);
    let read = ok(
        group.dir.path(),
        &["server", "read", id, "--store", &group.db.url],
    );
    assert!(read.starts_with(text), "{read}");
}
