//! A throwaway PostgreSQL for tests.
//!
//! [`database`] hands each test a fresh, empty database (`CREATE DATABASE`), so tests sharing a
//! server never see each other's rows. The server is, by order of preference:
//! - the one `LETTERLOCK_TEST_POSTGRES=postgres://user@host[:port]/db` names (an existing server
//!   the user runs; its databases made here are dropped again when the test ends);
//! - else one cluster per test binary ([`letterlock_cli::pgcluster`], shared with the bench),
//!   made with the installed server binaries (`initdb`, `pg_ctl`) in a temporary folder (its
//!   data folder a copy of one `initdb` made once and kept in the target's `tmp` folder),
//!   listening on a Unix socket in that folder only (no TCP port, so no port to race for), trust
//!   authentication, and stopped (`pg_ctl stop -m immediate`) and deleted when the test binary
//!   exits, however it exits: a watcher process waits for the test binary to end, since a
//!   static is never dropped.
//!
//! A test that stops and starts the server itself ([`Database::stop_server`],
//! [`Database::start_server`]: PostgreSQL restarted under load) takes its database with
//! [`exclusive_database`]: it waits until no other test of its binary holds a database, and
//! every other test waits for it, so a restart only ever interrupts the test that asked for it.
//! That needs the throwaway cluster: with `LETTERLOCK_TEST_POSTGRES` set such a test fails and
//! says so (a user's server is not ours to stop).
//!
//! `initdb` refuses to run as root, and the project's machines and CI run as root: there the
//! cluster runs as the `postgres` system user (`runuser -u postgres`), which Debian's
//! `postgresql` package creates. Missing server binaries fail the test with the fix in the
//! message; they never skip it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use letterlock_cli::pgcluster::Cluster;

/// Environment variable naming an existing server to use instead of a throwaway cluster.
pub const SERVER_VAR: &str = "LETTERLOCK_TEST_POSTGRES";

/// What to do when PostgreSQL is missing, said in every such failure.
const INSTALL_HINT: &str = "install PostgreSQL's server binaries (Debian/Ubuntu: `apt-get install postgresql`; \
     `.ci/run` does this itself), or set LETTERLOCK_TEST_POSTGRES=postgres://USER@HOST/DB to use a \
     running server whose USER may create databases";

/// A server the tests may create databases on.
struct Server {
    /// URL of its maintenance database, for `CREATE DATABASE`.
    admin_url: String,
    /// True for a user's server: the databases made here are dropped after each test.
    external: bool,
    /// The throwaway cluster, to stop and start again; `None` for a user's server. (A static:
    /// never dropped, its watcher removes it when the test binary exits.)
    cluster: Option<Cluster>,
}

/// Shared by every test's database; exclusive for a test that restarts the server.
fn turns() -> Arc<tokio::sync::RwLock<()>> {
    static TURNS: OnceLock<Arc<tokio::sync::RwLock<()>>> = OnceLock::new();
    TURNS.get_or_init(Default::default).clone()
}

/// A test's hold on the server: shared with other tests, or the whole server to itself.
enum Turn {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// The server of this test binary, started on first use.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(SERVER_VAR) {
        Ok(url) if !url.trim().is_empty() => Server {
            admin_url: url.trim().to_owned(),
            external: true,
            cluster: None,
        },
        _ => start_cluster(),
    })
}

/// A fresh database on the test server, dropped (on a user's server) when this is dropped.
pub struct Database {
    /// Connection URL of the database, as `--store` and `PostgresStore::connect` take it.
    pub url: String,
    name: String,
    /// Held until the test ends (see [`exclusive_database`]).
    turn: Turn,
}

impl Drop for Database {
    fn drop(&mut self) {
        let server = server();
        if !server.external {
            // The whole cluster goes when the test binary ends.
            return;
        }
        // Drop runs inside a test's runtime: a thread of its own may block on a small runtime.
        let admin = server.admin_url.clone();
        let name = self.name.clone();
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(admin_execute(&admin, &sql)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop the test database {name} on {SERVER_VAR}");
        }
    }
}

/// A fresh, empty database for one test.
pub async fn database() -> Database {
    let turn = Turn::Shared(turns().read_owned().await);
    create_database(turn).await
}

/// A fresh, empty database for a test that stops and starts the server
/// ([`Database::stop_server`]): no other test of this binary holds a database meanwhile.
pub async fn exclusive_database() -> Database {
    let turn = Turn::Exclusive(turns().write_owned().await);
    create_database(turn).await
}

async fn create_database(turn: Turn) -> Database {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let server = server();
    let name = format!(
        "letterlock_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    admin_execute(&server.admin_url, &format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "could not create a test database on {}: {e:?}; {INSTALL_HINT}",
                server.admin_url
            )
        });
    Database {
        url: with_database(&server.admin_url, &name),
        name,
        turn,
    }
}

impl Database {
    /// The throwaway cluster, for a test that holds it alone.
    fn cluster(&self) -> &'static Cluster {
        assert!(
            matches!(self.turn, Turn::Exclusive(_)),
            "a test that stops the server must take its database with exclusive_database()"
        );
        server().cluster.as_ref().unwrap_or_else(|| {
            panic!(
                "this test stops and restarts PostgreSQL, which it only does to the throwaway \
                 cluster it starts itself: unset {SERVER_VAR} to run it"
            )
        })
    }

    /// Stops the server as an operator's restart does (`pg_ctl stop -m fast`) and waits until
    /// it is down.
    pub fn stop_server(&self) {
        if let Err(e) = self.cluster().stop() {
            panic!("stopping the test cluster: {e}");
        }
    }

    /// Starts the server again on the same socket and port, with the same options, and waits
    /// until it accepts connections.
    pub fn start_server(&self) {
        if let Err(e) = self.cluster().start_again() {
            panic!("starting the test cluster again: {e}");
        }
    }
}

/// Runs one statement on the server's maintenance database.
async fn admin_execute(admin_url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await;
    drop(client);
    let _ = driver.await;
    result
}

/// `url` with its database name replaced by `name` (the path of a `postgres://` URL).
pub fn with_database(url: &str, name: &str) -> String {
    letterlock_cli::pgcluster::with_database(url, name).unwrap_or_else(|| {
        panic!("{SERVER_VAR} must be a postgres://USER@HOST/DB URL, not {url:?}")
    })
}

/// Makes and starts this test binary's cluster (with room for the tests' many connections).
fn start_cluster() -> Server {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    match Cluster::start_from_cache("letterlock-pg-", "-c max_connections=200", cache) {
        Ok(cluster) => Server {
            admin_url: cluster.admin_url().to_owned(),
            external: false,
            cluster: Some(cluster),
        },
        Err(e) => panic!("could not start a throwaway PostgreSQL: {e}; {INSTALL_HINT}"),
    }
}
