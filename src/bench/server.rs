//! The server section: a real [`Server`] on loopback TCP with the durable [`SqliteStore`] in a
//! temporary folder, driven by [`Client`]s in the same process.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tracing::Dispatch;

use std::future::Future;

use letterlock::client::{Client, ClientConfig, ClientError};
use letterlock::envelope::{self, SealOptions, Sealed};
use letterlock::keys::{Identity, PrivateKey, PublicKey, TrustList};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::{SqliteStore, Store};
use letterlock::tls::TlsOptions;

use super::bounds::{decrypt_rate, sign_rate};
use super::measurements::{
    Generated, check_len, peak_rss_kib, process_peak_rss_kib, reset_peak_rss,
};
use super::{
    BenchError, BenchOptions, BigSend, CONNECTIONS, GIB, HANDSHAKE_CLIENTS, Latency, MB, RelayRate,
    SERVER_MESSAGE, SERVER_ROUNDS, ServerRate, ServerReport, TLS_CONNECTIONS, TlsReport, crypt,
    over_bound_note, progress,
};

/// Fewest messages each connection sends per round of a rate run. With fewer, a round at many
/// connections is one message each: its time is one message's latency (connect the round,
/// decrypt, commit, ack) rather than the server's rate, and `--quick` at 64 connections sent
/// exactly one.
const MIN_PER_CONNECTION: usize = 4;

/// Runs a server and its clients in this process.
pub(super) fn measure_server(opts: &BenchOptions) -> Result<ServerReport, BenchError> {
    on_quiet_runtime(server_section(opts))
}

/// Runs `section` on a multi-thread runtime of its own with only warnings and errors logged:
/// a server logs every message at info level, which in a benchmark is noise on stderr and time
/// on the clock. Used by every section that runs a server.
pub(super) fn on_quiet_runtime<T>(
    section: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    let quiet = Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(io::stderr)
            .finish(),
    );
    let on_start = quiet.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&on_start);
            QUIET.with(|held| *held.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| QUIET.with(|held| drop(held.borrow_mut().take())))
        .build()?;
    let _quiet = tracing::dispatcher::set_default(&quiet);
    let report = runtime.block_on(section);
    // Every worker drops its guard as it stops, before this thread's guard goes.
    drop(runtime);
    report
}

/// A bench server on an ephemeral loopback port, serving until [`Serving::stop`].
pub(super) struct Serving {
    /// Where it listens, `127.0.0.1:PORT`.
    pub(super) addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Serving {
    pub(super) async fn start<S: Store>(server: Arc<Server<S>>) -> Result<Serving, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Ok(Serving { addr, stop, task })
    }

    /// Stops the server and waits for it to end; its own error, if it failed, is the result.
    pub(super) async fn stop(self) -> Result<(), BenchError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| BenchError::Wrong(format!("the server task failed: {e}")))??;
        Ok(())
    }
}

/// A bench server's limits: room for `max_connections`, and no per-source admission bucket.
/// Every bench client connects from 127.0.0.1, so the bucket, which stops one source from
/// making the server sign without end, would measure itself.
pub(super) fn bench_config(max_connections: usize) -> ServerConfig {
    ServerConfig {
        max_connections,
        source_burst: u32::MAX,
        source_rate: u32::MAX,
        ..ServerConfig::default()
    }
}

thread_local! {
    /// The quiet subscriber's guard on a runtime thread: set when the thread starts, held for
    /// as long as it runs, dropped when it stops (a guard must be dropped on its own thread).
    static QUIET: std::cell::RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { std::cell::RefCell::new(None) };
}

async fn server_section(opts: &BenchOptions) -> Result<ServerReport, BenchError> {
    let server_key = PrivateKey::generate(opts.bits)?;
    let server_public = server_key.public().clone();
    let client_key = Arc::new(PrivateKey::generate(opts.bits)?);
    // The recipient of the relayed messages (client to client): trusted, never connected.
    let peer_key = PrivateKey::generate(opts.bits)?;
    let mut clients = TrustList::new();
    clients.add("bench", client_key.public().clone())?;
    let dir = super::stopping::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path().join("mailbox.db"))?);
    let config = bench_config(4 * CONNECTIONS[CONNECTIONS.len() - 1]);
    let server_key = Arc::new(server_key);
    let server = Arc::new(Server::new(
        server_key.clone(),
        clients.clone(),
        store.clone(),
        config.clone(),
    ));
    let serving = Serving::start(server).await?;
    let addr = serving.addr.clone();
    let identity: Arc<dyn Identity> = client_key.clone();
    let connect = || {
        Client::connect(
            &addr,
            identity.clone(),
            server_public.clone(),
            ClientConfig::default(),
        )
    };

    let mut rates = Vec::new();
    for &connections in CONNECTIONS {
        progress(&format!("  {connections} connection(s)"));
        rates.push(rate_run(&connect, connections, opts, &client_key, &server_public).await?);
    }

    progress("  latency of complete sends");
    let mut samples = Vec::with_capacity(opts.latency_samples());
    let body = vec![b'x'; SERVER_MESSAGE as usize];
    for _ in 0..opts.latency_samples() {
        let t = Instant::now();
        let mut client = connect().await?;
        client
            .send(io::Cursor::new(body.clone()), SealOptions::default())
            .await?;
        drop(client);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let latency = Latency {
        samples: samples.len(),
        p50_ms: percentile(&samples, 0.50),
        p99_ms: percentile(&samples, 0.99),
        mean_ms: samples.iter().sum::<f64>() / samples.len() as f64,
    };

    let big_send = if opts.quick {
        None
    } else {
        progress("  one 1 GiB message");
        let mut client = connect().await?;
        let rss_before_kib = reset_peak_rss().unwrap_or(0);
        let t = Instant::now();
        let delivery = client
            .send(Generated::new(GIB), SealOptions::default())
            .await?;
        let seconds = t.elapsed().as_secs_f64();
        check_len(delivery.plaintext_len, GIB)?;
        Some(BigSend {
            bytes: GIB,
            seconds,
            mb_s: GIB as f64 / MB / seconds,
            peak_rss_kib: peak_rss_kib().unwrap_or(0),
            rss_before_kib,
        })
    };

    serving.stop().await?;

    progress("  version 2 (TLS 1.3)");
    clients.add("bench-peer", peer_key.public().clone())?;
    let tls_server = Arc::new(
        Server::new(server_key.clone(), clients, store.clone(), config)
            .with_tls(TlsOptions::default())?,
    );
    let serving = Serving::start(tls_server.clone()).await?;
    let tls_addr = serving.addr.clone();
    let connect_tls = || {
        Client::connect_tls(
            &tls_addr,
            identity.clone(),
            server_public.clone(),
            ClientConfig::default(),
            TlsOptions::default(),
        )
    };
    let mut tls = tls_section(
        &connect_tls,
        (&tls_addr, &identity),
        opts,
        &server_key,
        &client_key,
        &server_public,
    )
    .await?;
    progress(&format!(
        "  {TLS_CONNECTIONS} connection(s) relaying to another client"
    ));
    tls.relayed = Some(
        relay_run(
            &connect_tls,
            &tls_server,
            opts,
            &client_key,
            peer_key.public(),
            tls.rate.bound_msgs_s,
        )
        .await?,
    );
    serving.stop().await?;
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    drop(dir);
    Ok(ServerReport {
        message_size: SERVER_MESSAGE,
        rates,
        latency,
        big_send,
        tls,
        process_peak_rss_kib: process_peak_rss_kib().unwrap_or(0),
        note: "server and clients run in this one process: every RSS figure counts both".into(),
    })
}

/// Version 2: full handshakes per second, one at a time and [`HANDSHAKE_CLIENTS`] at once,
/// beside the all-core sign bound; then the message rate at [`TLS_CONNECTIONS`].
async fn tls_section<F, Fut>(
    connect: &F,
    (addr, identity): (&str, &Arc<dyn Identity>),
    opts: &BenchOptions,
    server_key: &Arc<PrivateKey>,
    client_key: &Arc<PrivateKey>,
    server_public: &PublicKey,
) -> Result<TlsReport, BenchError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Client, ClientError>>,
{
    let handshakes = opts.handshakes();
    progress(&format!("  {handshakes} full handshakes, one at a time"));
    let started = Instant::now();
    for _ in 0..handshakes {
        connect().await?.close().await?;
    }
    let handshakes_s_sequential = handshakes as f64 / started.elapsed().as_secs_f64();

    let key = server_key.clone();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let min = opts.bound_refresh_time() * 2;
    let sign_bound_s = tokio::task::spawn_blocking(move || sign_rate(&key, threads, min))
        .await
        .map_err(|_| crypt())??;
    progress(&format!(
        "  {handshakes} full handshakes, {HANDSHAKE_CLIENTS} clients at once"
    ));
    let per = handshakes.div_ceil(HANDSHAKE_CLIENTS);
    let started = Instant::now();
    // Each client on its own task, so the clients' signatures spread over the workers as the
    // server's do.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..HANDSHAKE_CLIENTS {
        let (addr, identity, server) = (addr.to_owned(), identity.clone(), server_public.clone());
        tasks.spawn(async move {
            for _ in 0..per {
                Client::connect_tls(
                    &addr,
                    identity.clone(),
                    server.clone(),
                    ClientConfig::default(),
                    TlsOptions::default(),
                )
                .await?
                .close()
                .await?;
            }
            Ok::<usize, BenchError>(per)
        });
    }
    let mut done = 0;
    while let Some(made) = tasks.join_next().await {
        done += made.map_err(|_| crypt())??;
    }
    let handshakes_s = done as f64 / started.elapsed().as_secs_f64();

    progress(&format!("  {TLS_CONNECTIONS} connection(s) over TLS"));
    let rate = rate_run(connect, TLS_CONNECTIONS, opts, client_key, server_public).await?;
    Ok(TlsReport {
        handshakes: done,
        handshake_clients: HANDSHAKE_CLIENTS,
        handshakes_s,
        handshakes_s_sequential,
        sign_bound_s,
        resumed_handshakes_s: None,
        resumption: "letterlock does not resume TLS sessions (every connection is a full \
                     handshake with a fresh X25519MLKEM768 exchange)"
            .into(),
        rate,
        relayed: None,
    })
}

/// Client to client: [`TLS_CONNECTIONS`] clients relay pre-sealed 1 KiB messages to another
/// client, each waiting for its `Stored` before the next (relays are not pipelined by the
/// client), for [`SERVER_ROUNDS`] rounds; the best round's rate, beside `rsa_bound` (the
/// all-core RSA decrypt bound of the run before) for comparison only: the server opens none
/// of them (its counters say so), so what bounds it is the store's commits and the TLS record
/// layer.
async fn relay_run<F, Fut, S>(
    connect: &F,
    server: &Server<S>,
    opts: &BenchOptions,
    client_key: &Arc<PrivateKey>,
    peer: &PublicKey,
    rsa_bound: f64,
) -> Result<RelayRate, BenchError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Client, ClientError>>,
    S: letterlock::store::Store,
{
    let connections = TLS_CONNECTIONS;
    let mut conns = Vec::with_capacity(connections);
    let batches = sealed_batches(opts, connections, client_key, peer).await?;
    for _ in 0..connections {
        conns.push(connect().await?);
    }
    let before = server.receive_stats();
    let (relayed, seconds, msgs_s) =
        timed_rounds(&mut conns, batches, |mut client, batch| async move {
            for (bytes, sealed) in &batch {
                client.relay_sealed(bytes, sealed).await?;
            }
            Ok((client, batch.len()))
        })
        .await?;
    for client in conns {
        client.close().await?;
    }
    let after = server.receive_stats();
    Ok(RelayRate {
        connections,
        messages: relayed,
        seconds,
        msgs_s,
        rsa_bound_msgs_s: rsa_bound,
        server_relayed: after.relayed - before.relayed,
        server_opened: after.opened - before.opened,
    })
}

/// One message-rate run: `connections` clients send pre-sealed 1 KiB messages (at least
/// [`MIN_PER_CONNECTION`] each) for [`SERVER_ROUNDS`] rounds; the best round's rate beside the
/// all-core RSA decrypt bound, measured right before and right after (the higher counts: other
/// load on the machine only ever lowers a bound, and the run's rate is its best round too).
pub(super) async fn rate_run<F, Fut>(
    connect: &F,
    connections: usize,
    opts: &BenchOptions,
    client_key: &Arc<PrivateKey>,
    server_public: &PublicKey,
) -> Result<ServerRate, BenchError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Client, ClientError>>,
{
    let batches = sealed_batches(opts, connections, client_key, server_public).await?;
    let key = client_key.clone();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let min = opts.bound_refresh_time() * 2;
    let bound = tokio::task::spawn_blocking(move || decrypt_rate(&key, threads, min))
        .await
        .map_err(|_| crypt())??;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(connect().await?);
    }
    let (delivered, seconds, msgs_s) =
        timed_rounds(&mut conns, batches, |mut client, batch| async move {
            let sent = client.send_sealed_many(&batch).await.map(|d| d.len());
            sent.map(|n| (client, n))
        })
        .await?;
    let key = client_key.clone();
    let after = tokio::task::spawn_blocking(move || decrypt_rate(&key, threads, min))
        .await
        .map_err(|_| crypt())??;
    // A rate still over its bound means the bound was measured while the machine was busier:
    // measure it again, longer, and keep the better figure. Whatever remains over is shown as
    // it is, with a note.
    let mut bound = bound.max(after);
    let mut bound_note = None;
    if msgs_s > bound {
        let key = client_key.clone();
        let longer = opts.min_time() * 2;
        let again = tokio::task::spawn_blocking(move || decrypt_rate(&key, threads, longer))
            .await
            .map_err(|_| crypt())??;
        bound = bound.max(again);
        if msgs_s > bound {
            bound_note = Some(over_bound_note());
        }
    }
    Ok(ServerRate {
        connections,
        messages: delivered,
        seconds,
        msgs_s,
        bound_msgs_s: bound,
        of_bound: msgs_s / bound,
        bound_note,
    })
}

/// One connection's pre-sealed messages: the sealed bytes and what checks their acks.
type Batch = Vec<(Vec<u8>, Sealed)>;

/// A batch of pre-sealed 1 KiB messages to `to` for each of `connections` clients and each of
/// [`SERVER_ROUNDS`] rounds, at least [`MIN_PER_CONNECTION`] per batch, sealed on every core
/// before anything is timed.
async fn sealed_batches(
    opts: &BenchOptions,
    connections: usize,
    client_key: &Arc<PrivateKey>,
    to: &PublicKey,
) -> Result<Vec<Batch>, BenchError> {
    let per = opts
        .server_messages()
        .div_ceil(connections * SERVER_ROUNDS)
        .max(MIN_PER_CONNECTION);
    let (key, to) = (client_key.clone(), to.clone());
    tokio::task::spawn_blocking(move || presealed(&key, &to, connections * SERVER_ROUNDS, per))
        .await
        .map_err(|_| crypt())?
}

/// [`SERVER_ROUNDS`] timed rounds: in each, every connection of `conns` runs `job` on its next
/// batch, all at once on their own tasks, and is handed back. Returns the messages of all
/// rounds, their time, and the best round's rate.
async fn timed_rounds<J, Fut>(
    conns: &mut Vec<Client>,
    batches: Vec<Batch>,
    job: J,
) -> Result<(usize, f64, f64), BenchError>
where
    J: Fn(Client, Batch) -> Fut,
    Fut: Future<Output = Result<(Client, usize), ClientError>> + Send + 'static,
{
    let (mut messages, mut seconds, mut msgs_s) = (0, 0.0, 0f64);
    let mut batches = batches.into_iter();
    for _ in 0..SERVER_ROUNDS {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (client, batch) in conns.drain(..).zip(batches.by_ref()) {
            tasks.spawn(job(client, batch));
        }
        let mut round = 0;
        while let Some(done) = tasks.join_next().await {
            let (client, n) = done.map_err(|_| crypt())??;
            conns.push(client);
            round += n;
        }
        let elapsed = started.elapsed().as_secs_f64();
        messages += round;
        seconds += elapsed;
        msgs_s = msgs_s.max(round as f64 / elapsed);
    }
    Ok((messages, seconds, msgs_s))
}

/// `connections` batches of `per` 1 KiB hybrid messages sealed ahead of time, on every core.
fn presealed(
    key: &Arc<PrivateKey>,
    to: &PublicKey,
    connections: usize,
    per: usize,
) -> Result<Vec<Batch>, BenchError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = connections * per;
    let body = vec![b'm'; SERVER_MESSAGE as usize];
    let seal_some = |n: usize| -> Result<Batch, BenchError> {
        (0..n)
            .map(|_| {
                let mut out = Vec::with_capacity(SERVER_MESSAGE as usize + 1024);
                let sealed = envelope::seal(
                    key.as_ref(),
                    to,
                    &SealOptions::default(),
                    &body[..],
                    &mut out,
                )?;
                Ok((out, sealed))
            })
            .collect()
    };
    let parts: Vec<Result<Vec<_>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = total / threads + usize::from(t < total % threads);
                s.spawn(move || seal_some(n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::Crypto)))
            .collect()
    });
    let mut all = Vec::with_capacity(total);
    for p in parts {
        all.extend(p?);
    }
    let mut batches = Vec::with_capacity(connections);
    let mut all = all.into_iter();
    for _ in 0..connections {
        batches.push(all.by_ref().take(per).collect());
    }
    Ok(batches)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
