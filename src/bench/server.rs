//! The server section: a real [`Server`] on loopback TCP with the durable [`SqliteStore`] in a
//! temporary folder, driven by [`Client`]s in the same process.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tracing::Dispatch;

use letterlock::client::{Client, ClientConfig};
use letterlock::envelope::{self, SealOptions, Sealed};
use letterlock::keys::{Identity, PrivateKey, PublicKey, TrustList};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::SqliteStore;

use super::bounds::decrypt_rate;
use super::measurements::{
    Generated, check_len, peak_rss_kib, process_peak_rss_kib, reset_peak_rss,
};
use super::{
    BenchError, BenchOptions, BigSend, CONNECTIONS, GIB, Latency, MB, SERVER_MESSAGE,
    SERVER_ROUNDS, ServerRate, ServerReport, crypt, progress,
};

/// Runs a server and its clients in this process.
pub(super) fn measure_server(opts: &BenchOptions) -> Result<ServerReport, BenchError> {
    // The server logs every message at info level: in a benchmark that is noise on stderr and
    // time on the clock, so only warnings and errors are shown while it runs.
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
    let report = runtime.block_on(server_section(opts));
    // Every worker drops its guard as it stops, before this thread's guard goes.
    drop(runtime);
    report
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
    let mut clients = TrustList::new();
    clients.add("bench", client_key.public().clone())?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path().join("mailbox.db"))?);
    let config = ServerConfig {
        max_connections: 4 * CONNECTIONS[CONNECTIONS.len() - 1],
        ..ServerConfig::default()
    };
    let server = Arc::new(Server::new(
        Arc::new(server_key),
        clients,
        store.clone(),
        config,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
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
        let per = opts.server_messages().div_ceil(connections * SERVER_ROUNDS);
        let key = client_key.clone();
        let to = server_public.clone();
        let batches = tokio::task::spawn_blocking(move || {
            presealed(&key, &to, connections * SERVER_ROUNDS, per)
        })
        .await
        .map_err(|_| crypt())??;
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
        let (mut delivered, mut seconds, mut msgs_s) = (0, 0.0, 0f64);
        let mut batches = batches.into_iter();
        for _ in 0..SERVER_ROUNDS {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for (mut client, batch) in conns.drain(..).zip(batches.by_ref()) {
                tasks.spawn(async move {
                    let sent = client.send_sealed_many(&batch).await.map(|d| d.len());
                    sent.map(|n| (client, n))
                });
            }
            let mut round = 0;
            while let Some(done) = tasks.join_next().await {
                let (client, n) = done.map_err(|_| crypt())??;
                conns.push(client);
                round += n;
            }
            let elapsed = started.elapsed().as_secs_f64();
            delivered += round;
            seconds += elapsed;
            msgs_s = msgs_s.max(round as f64 / elapsed);
        }
        rates.push(ServerRate {
            connections,
            messages: delivered,
            seconds,
            msgs_s,
            bound_msgs_s: bound,
            of_bound: msgs_s / bound,
        });
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

    let _ = stop.send(());
    running.await.map_err(|_| crypt())??;
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    drop(dir);
    Ok(ServerReport {
        message_size: SERVER_MESSAGE,
        rates,
        latency,
        big_send,
        process_peak_rss_kib: process_peak_rss_kib().unwrap_or(0),
        note: "server and clients run in this one process: every RSS figure counts both".into(),
    })
}

/// One connection's pre-sealed messages: the sealed bytes and what checks their acks.
type Batch = Vec<(Vec<u8>, Sealed)>;

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
