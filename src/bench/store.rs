//! The store section: how many messages per second each mailbox store commits on its own, and
//! what the whole server does over each, measured side by side in this run.
//!
//! - **Store alone**: committed inserts of 1 KiB messages ([`Store::insert_inbox`], which
//!   returns after the commit) by 1 and by [`MANY_WRITERS`] concurrent writers, for the SQLite
//!   store and the PostgreSQL store (both group-commit concurrent writes; the row says how many
//!   transactions the inserts took).
//! - **Server over each store**: the server section's message-rate run (`server::rate_run`,
//!   1 KiB hybrid messages sealed ahead, the all-core RSA decrypt bound measured right before),
//!   at [`SERVER_CONNECTIONS`] connections, once over SQLite and once over PostgreSQL.
//!
//! PostgreSQL is the server `--store-url postgres://...` names (the bench works in a database
//! of its own there, dropped afterwards), else a throwaway cluster the bench makes from the
//! installed server binaries (`initdb`, `pg_ctl`; as the `postgres` system user when run as
//! root, since initdb refuses root) in a temporary folder, on a Unix socket only, stopped and
//! deleted at the end. Where neither is possible, the PostgreSQL rows are not run and the report
//! says why, with the fix; nothing is estimated.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use letterlock::client::{Client, ClientConfig};
use letterlock::keys::{Identity, PrivateKey, TrustList};
use letterlock::server::Server;
use letterlock::store::{
    Body, InboxRecord, InsertOutcome, MODE_HYBRID, SqliteStore, Store, StoreStats,
};

use super::report::{ServerRate, human_size};
use super::server::{Serving, bench_config, on_quiet_runtime};
use super::{BenchError, BenchOptions, KIB, progress};

/// Plaintext-sized body of every store message (a 1 KiB message sealed is a little larger, but
/// the store's cost is per row and commit, not per byte, at this size).
const STORE_MESSAGE: u64 = KIB;
/// The concurrent writers of the "many" row: as many as the server section's largest run.
pub const MANY_WRITERS: usize = 64;
/// Connections of the server-over-each-store runs.
pub const SERVER_CONNECTIONS: usize = 16;

/// What the section measured.
#[derive(Clone, Debug, Serialize)]
pub struct StoreReport {
    /// Body size of every inserted message.
    pub message_size: u64,
    /// Where PostgreSQL came from (no password), or why its rows did not run.
    pub postgres: String,
    /// True when the PostgreSQL rows ran.
    pub postgres_ran: bool,
    /// Store alone: one row per store and writer count.
    pub rows: Vec<StoreRate>,
    /// The server's message rate over each store.
    pub server: Vec<ServerOverStore>,
}

/// Committed inserts of one store with some writers at once.
#[derive(Clone, Debug, Serialize)]
pub struct StoreRate {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    pub writers: usize,
    /// Inserts timed, all acknowledged as new.
    pub messages: usize,
    pub seconds: f64,
    pub msgs_s: f64,
    /// Transactions the inserts took (group commit: fewer than `messages` when batches formed).
    pub transactions: u64,
}

/// The server section's rate run over one store.
#[derive(Clone, Debug, Serialize)]
pub struct ServerOverStore {
    pub store: &'static str,
    pub rate: ServerRate,
}

/// Inserts timed per row: (one writer, [`MANY_WRITERS`] writers).
fn store_messages(opts: &BenchOptions) -> (usize, usize) {
    if opts.quick {
        (100, 10 * MANY_WRITERS)
    } else {
        (1000, 100 * MANY_WRITERS)
    }
}

/// Runs the section on a runtime of its own, with only warnings and errors logged
/// ([`on_quiet_runtime`]).
pub(super) fn measure_store(
    opts: &BenchOptions,
    server_key: &Arc<PrivateKey>,
    client_key: &Arc<PrivateKey>,
) -> Result<StoreReport, BenchError> {
    on_quiet_runtime(store_section(opts, server_key, client_key))
}

async fn store_section(
    opts: &BenchOptions,
    server_key: &Arc<PrivateKey>,
    client_key: &Arc<PrivateKey>,
) -> Result<StoreReport, BenchError> {
    let (one, many) = store_messages(opts);
    let mut rows = Vec::new();
    let mut server = Vec::new();

    let dir = super::stopping::tempdir()?;
    progress("  SQLite store alone");
    let sqlite = Arc::new(SqliteStore::open(dir.path().join("store-bench.db"))?);
    rows.push(store_rate(&sqlite, "sqlite", 1, one, SqliteStore::stats).await?);
    rows.push(store_rate(&sqlite, "sqlite", MANY_WRITERS, many, SqliteStore::stats).await?);
    progress("  server over SQLite");
    server.push(ServerOverStore {
        store: "sqlite",
        rate: server_rate(sqlite.clone(), opts, server_key, client_key).await?,
    });
    if let Ok(store) = Arc::try_unwrap(sqlite) {
        store.close().await?;
    }

    let postgres = postgres_rows(opts, server_key, client_key, one, many).await?;
    let (postgres, postgres_ran) = match postgres {
        Ok((source, pg_rows, pg_server)) => {
            rows.extend(pg_rows);
            server.push(pg_server);
            (source, true)
        }
        Err(why) => (why, false),
    };
    drop(dir);
    Ok(StoreReport {
        message_size: STORE_MESSAGE,
        postgres,
        postgres_ran,
        rows,
        server,
    })
}

/// The PostgreSQL rows, or why they did not run (`Ok(Err(reason))`, with the fix).
#[cfg(feature = "postgres")]
async fn postgres_rows(
    opts: &BenchOptions,
    server_key: &Arc<PrivateKey>,
    client_key: &Arc<PrivateKey>,
    one: usize,
    many: usize,
) -> Result<Result<(String, Vec<StoreRate>, ServerOverStore), String>, BenchError> {
    use letterlock::store::PostgresStore;

    progress("  PostgreSQL store alone");
    let (cluster, admin_url, source) = match &opts.store_url {
        Some(url) => {
            let shown = postgres::without_password(url);
            (None, url.clone(), format!("--store-url {shown}"))
        }
        None => match tokio::task::spawn_blocking(postgres::cluster)
            .await
            .map_err(|e| BenchError::Wrong(format!("starting PostgreSQL: {e}")))?
        {
            Ok(cluster) => {
                let url = cluster.admin_url().to_owned();
                let source = format!(
                    "a throwaway cluster made here with {}",
                    cluster.binaries().display()
                );
                (
                    Some(super::stopping::ClusterHeld::new(cluster)),
                    url,
                    source,
                )
            }
            Err(why) => return Ok(Err(why)),
        },
    };
    let scratch = match postgres::Scratch::create(&admin_url).await {
        Ok(scratch) => scratch,
        // The user's own server worked before the run (`check_store_url`): its failure now is
        // the bench's, with its cause; the fix for a missing PostgreSQL would be wrong advice.
        Err(why) if cluster.is_none() => return Err(BenchError::StoreUrl(why)),
        Err(why) => return Ok(Err(format!("not run: {why}; {}", postgres::FIX))),
    };
    let store = Arc::new(PostgresStore::connect(&scratch.url).await?);
    let rows = vec![
        store_rate(&store, "postgres", 1, one, PostgresStore::stats).await?,
        store_rate(&store, "postgres", MANY_WRITERS, many, PostgresStore::stats).await?,
    ];
    progress("  server over PostgreSQL");
    let rate = server_rate(store.clone(), opts, server_key, client_key).await?;
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    scratch.drop_database().await;
    Ok(Ok((
        source,
        rows,
        ServerOverStore {
            store: "postgres",
            rate,
        },
    )))
}

/// Checks, before the run, that the server `--store-url` names takes what section 7 does: a
/// connection, and a scratch database of the bench's own (created and dropped again). A server
/// that cannot be reached or refuses is the user's to fix, and a run of minutes ending without
/// its PostgreSQL rows would not say so.
#[cfg(feature = "postgres")]
pub fn check_store_url(url: &str) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let scratch = postgres::Scratch::create(url)
            .await
            .map_err(BenchError::StoreUrl)?;
        scratch.drop_database().await;
        Ok(())
    })
}

/// Without PostgreSQL support built in, `--store-url` cannot be used: said before the run.
#[cfg(not(feature = "postgres"))]
pub fn check_store_url(_url: &str) -> Result<(), BenchError> {
    Err(BenchError::StoreUrl(
        "this letterlock was built without PostgreSQL support (build it with the default \
         features, or `--features postgres`)"
            .to_owned(),
    ))
}

/// Without PostgreSQL support built in, the rows cannot run: said, with the fix.
#[cfg(not(feature = "postgres"))]
async fn postgres_rows(
    _opts: &BenchOptions,
    _server_key: &Arc<PrivateKey>,
    _client_key: &Arc<PrivateKey>,
    _one: usize,
    _many: usize,
) -> Result<Result<(String, Vec<StoreRate>, ServerOverStore), String>, BenchError> {
    Ok(Err(
        "not run: this letterlock was built without PostgreSQL support (build it with the \
         default features, or `--features postgres`)"
            .to_owned(),
    ))
}

/// `messages` committed 1 KiB inserts into `store` by `writers` tasks at once, each new.
async fn store_rate<S: Store>(
    store: &Arc<S>,
    name: &'static str,
    writers: usize,
    messages: usize,
    stats: fn(&S) -> StoreStats,
) -> Result<StoreRate, BenchError> {
    let each = messages.div_ceil(writers);
    let body = vec![0x5a_u8; STORE_MESSAGE as usize];
    let before = stats(store).batches_committed;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let (store, body) = (store.clone(), body.clone());
        tasks.spawn(async move {
            for n in 0..each {
                let outcome = store
                    .insert_inbox(record(writers, writer, n, body.clone()))
                    .await?;
                if outcome != InsertOutcome::Inserted {
                    return Err(BenchError::Wrong(format!(
                        "a new message was answered {outcome:?} by the {name} store"
                    )));
                }
            }
            Ok(each)
        });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        done += joined.map_err(|e| BenchError::Wrong(format!("a store writer failed: {e}")))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(StoreRate {
        store: name,
        writers,
        messages: done,
        seconds,
        msgs_s: done as f64 / seconds,
        transactions: stats(store).batches_committed - before,
    })
}

/// Inbox record `n` of `writer` in a run of `writers`: ids never repeat within a store.
fn record(writers: usize, writer: usize, n: usize, body: Vec<u8>) -> InboxRecord {
    let mut message_id = [0u8; 16];
    message_id[..8].copy_from_slice(&(writers as u64).to_be_bytes());
    message_id[8..12].copy_from_slice(&(writer as u32).to_be_bytes());
    message_id[12..].copy_from_slice(&(n as u32).to_be_bytes());
    let body = Body::from_bytes(body);
    InboxRecord {
        sender_key_id: [0xb5; 32],
        sender_name: "bench".to_owned(),
        message_id,
        created: 1_700_000_000,
        received: 1_700_000_000,
        mode: MODE_HYBRID,
        plaintext_len: body.len(),
        // Not a sealed message, so no sealed identity: the store keeps whatever 32 bytes it is
        // given, and the body's SHA-256 (always computed for bytes in memory) is as good.
        content_hash: body.sha256().unwrap_or([0; 32]),
        ack_tag: [0; 32],
        body,
    }
}

/// The server section's message-rate run against a server over `store`.
async fn server_rate<S: Store>(
    store: Arc<S>,
    opts: &BenchOptions,
    server_key: &Arc<PrivateKey>,
    client_key: &Arc<PrivateKey>,
) -> Result<ServerRate, BenchError> {
    let server_public = server_key.public().clone();
    let mut clients = TrustList::new();
    clients.add("bench", client_key.public().clone())?;
    let config = bench_config(4 * SERVER_CONNECTIONS);
    let server = Arc::new(Server::new(server_key.clone(), clients, store, config));
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
    let rate = super::server::rate_run(
        &connect,
        SERVER_CONNECTIONS,
        opts,
        client_key,
        &server_public,
    )
    .await;
    serving.stop().await?;
    rate
}

/// PostgreSQL for the bench: a throwaway cluster, and a scratch database on any server.
/// The bench's scratch database on a PostgreSQL server: its own or a throwaway cluster
/// ([`crate::pgcluster`]).
#[cfg(feature = "postgres")]
mod postgres {
    pub(super) use crate::pgcluster::without_password;

    /// The fix for a missing or unusable PostgreSQL, said with every such reason when the user
    /// named no server (when they did, the cause alone is said: they chose that server).
    pub(super) const FIX: &str = "install PostgreSQL's server (Debian/Ubuntu: `apt-get install \
         postgresql`), or pass --store-url postgres://USER@HOST/DB naming a server whose USER \
         may create databases";

    /// Makes and starts a throwaway cluster; `Err` says why not, with the fix. Blocking.
    pub(super) fn cluster() -> Result<crate::pgcluster::Cluster, String> {
        crate::pgcluster::Cluster::start("letterlock-bench-pg-", "")
            .map_err(|why| format!("not run: {why}: {FIX}"))
    }

    /// A database made for this run on a PostgreSQL server, so the bench never writes into a
    /// real mailbox; dropped again by [`Scratch::drop_database`].
    pub(super) struct Scratch {
        /// URL of the scratch database.
        pub(super) url: String,
        admin_url: String,
        name: String,
    }

    impl Scratch {
        /// Creates `letterlock_bench_PID` on the server `admin_url` names; `Err` says what
        /// failed, with every cause the driver gives ("connection refused", a denied
        /// permission).
        pub(super) async fn create(admin_url: &str) -> Result<Scratch, String> {
            let name = format!("letterlock_bench_{}", std::process::id());
            let url = crate::pgcluster::with_database(admin_url, &name).ok_or_else(|| {
                "the PostgreSQL server must be named as postgres://USER@HOST/DB".to_owned()
            })?;
            execute(admin_url, &format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| {
                    format!(
                        "could not create the scratch database {name} on {}: {}",
                        without_password(admin_url),
                        with_causes(&e)
                    )
                })?;
            Ok(Scratch {
                url,
                admin_url: admin_url.to_owned(),
                name,
            })
        }

        /// Drops the scratch database (its connections are closed first by `WITH (FORCE)`).
        pub(super) async fn drop_database(self) {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if let Err(e) = execute(&self.admin_url, &sql).await {
                tracing::warn!(database = %self.name, %e, "could not drop the bench's scratch database");
            }
        }
    }

    /// `e` and its causes: tokio-postgres says "error connecting to server" and keeps the
    /// reason ("Connection refused") in its source.
    fn with_causes(e: &tokio_postgres::Error) -> String {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let part = c.to_string();
            if !text.contains(&part) {
                text = format!("{text}: {part}");
            }
            cause = c.source();
        }
        text
    }

    /// Runs one statement on the database `url` names.
    async fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        result
    }
}

/// The section as text for the report's table.
pub(super) fn table(s: &mut String, r: &StoreReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\n7. Mailbox stores: committed {} inserts per second, each store alone; PostgreSQL: {}",
        human_size(r.message_size),
        r.postgres
    );
    let _ = writeln!(
        s,
        "  {:<9} {:>8} {:>9} {:>10} {:>13}",
        "store", "writers", "messages", "msg/s", "transactions"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "  {:<9} {:>8} {:>9} {:>10.0} {:>13}",
            row.store, row.writers, row.messages, row.msgs_s, row.transactions
        );
    }
    let _ = writeln!(
        s,
        "  server over each store, {} connections, {} hybrid messages sealed ahead; bound = \
         all-core RSA decrypt, measured right before each run",
        SERVER_CONNECTIONS,
        human_size(r.message_size)
    );
    for row in &r.server {
        let _ = writeln!(
            s,
            "  {:<9} {:>10.0} msg/s, RSA bound {:>8.0}/s ({:.0}% of it){}",
            row.store,
            row.rate.msgs_s,
            row.rate.bound_msgs_s,
            row.rate.of_bound * 100.0,
            row.rate
                .bound_note
                .as_ref()
                .map_or(String::new(), |n| format!(": {n}"))
        );
    }
    if !r.postgres_ran {
        let _ = writeln!(s, "  PostgreSQL rows: {}", r.postgres);
    }
}
