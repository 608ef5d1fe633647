//! A throwaway PostgreSQL for tests.
//!
//! [`database`] hands each test a fresh, empty database (`CREATE DATABASE`), so tests sharing a
//! server never see each other's rows. The server is, by order of preference:
//! - the one `LETTERLOCK_TEST_POSTGRES=postgres://user@host[:port]/db` names (an existing server
//!   the user runs; its databases made here are dropped again when the test ends);
//! - else one cluster per test binary, made with the installed server binaries (`initdb`,
//!   `pg_ctl`) in a temporary folder, listening on a Unix socket in that folder only (no TCP
//!   port, so no port to race for), trust authentication, and stopped (`pg_ctl stop -m
//!   immediate`) and deleted when the test binary exits, however it exits: a watcher process
//!   waits for the test binary to end, since a static is never dropped.
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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Environment variable naming an existing server to use instead of a throwaway cluster.
pub const SERVER_VAR: &str = "LETTERLOCK_TEST_POSTGRES";

/// The system user the throwaway cluster runs as when the tests run as root.
const CLUSTER_USER: &str = "postgres";

/// Port number in the socket file's name (`.s.PGSQL.PORT`); nothing listens on TCP.
const SOCKET_PORT: u16 = 5432;

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
    /// The throwaway cluster's folder, kept until the watcher deletes it.
    _cluster: Option<tempfile::TempDir>,
    /// How to stop and start the throwaway cluster again; `None` for a user's server.
    control: Option<Control>,
}

/// What `pg_ctl stop` and `pg_ctl start` need to restart the throwaway cluster in place: the
/// same data folder, socket and port, so every client's URL stays valid.
struct Control {
    /// `pg_ctl` of the installed server binaries.
    pg_ctl: PathBuf,
    /// The cluster's data folder.
    data: PathBuf,
    /// The server log, shown when a start fails.
    log: PathBuf,
    /// The `-o` options the cluster was first started with.
    options: String,
    /// True when the cluster runs as [`CLUSTER_USER`] because the tests run as root.
    as_root: bool,
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
            _cluster: None,
            control: None,
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
    /// The throwaway cluster's controls, for a test that holds it alone.
    fn control(&self) -> &'static Control {
        assert!(
            matches!(self.turn, Turn::Exclusive(_)),
            "a test that stops the server must take its database with exclusive_database()"
        );
        server().control.as_ref().unwrap_or_else(|| {
            panic!(
                "this test stops and restarts PostgreSQL, which it only does to the throwaway \
                 cluster it starts itself: unset {SERVER_VAR} to run it"
            )
        })
    }

    /// Stops the server as an operator's restart does (`pg_ctl stop -m fast`: open
    /// transactions are rolled back, every connection is closed, a checkpoint is written),
    /// and waits until it is down.
    pub fn stop_server(&self) {
        let c = self.control();
        let mut stop = cluster_command(&c.pg_ctl, c.as_root);
        stop.arg("-D")
            .arg(&c.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(stop, "pg_ctl stop", Some(&c.log));
    }

    /// Starts the server again on the same socket and port, with the same options, and waits
    /// until it accepts connections.
    pub fn start_server(&self) {
        let c = self.control();
        let mut start = cluster_command(&c.pg_ctl, c.as_root);
        start
            .arg("-D")
            .arg(&c.data)
            .arg("-l")
            .arg(&c.log)
            .args(["-o", &c.options, "-w", "-t", "60", "start"]);
        run(start, "pg_ctl start", Some(&c.log));
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
    let Some(scheme_end) = url.find("://") else {
        panic!("{SERVER_VAR} must be a postgres://USER@HOST/DB URL, not {url:?}");
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after_path = rest[authority_end..]
        .find('?')
        .map_or("", |q| &rest[authority_end + q..]);
    format!(
        "{}{}/{name}{after_path}",
        &url[..scheme_end + 3],
        &rest[..authority_end]
    )
}

/// The folder of the installed server binaries: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), if it holds `initdb` and `pg_ctl`.
fn server_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_both(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// True when this process runs as root (initdb refuses root).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The numeric uid and gid of `user`, from `id`.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A command for one of the server binaries, run as [`CLUSTER_USER`] when we are root.
fn cluster_command(bin: &Path, as_root: bool) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", CLUSTER_USER, "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// Runs `cmd` to completion; panics with its output and the hint when it fails.
fn run(mut cmd: Command, what: &str, log: Option<&Path>) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run {what} ({cmd:?}): {e}; {INSTALL_HINT}"));
    if !out.status.success() {
        let log_text = log
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default();
        panic!(
            "{what} failed ({}):\n{}{}\n{log_text}\n{INSTALL_HINT}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Makes and starts this test binary's cluster, and the watcher that removes it.
fn start_cluster() -> Server {
    let Some(bin) = server_binaries() else {
        panic!(
            "PostgreSQL's server binaries (initdb, pg_ctl) were not found through `pg_config \
             --bindir` or in /usr/lib/postgresql/*/bin: {INSTALL_HINT}"
        );
    };
    let as_root = running_as_root();
    let dir = tempfile::Builder::new()
        .prefix("letterlock-pg-")
        .tempdir()
        .expect("a temporary folder for the test cluster");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    if as_root {
        let Some((uid, gid)) = ids_of(CLUSTER_USER) else {
            panic!(
                "the tests run as root and initdb refuses root, but there is no `{CLUSTER_USER}` \
                 system user to run the cluster as: {INSTALL_HINT}"
            );
        };
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .expect("giving the test cluster's folder to the postgres user");
    }
    let mut initdb = cluster_command(&bin.join("initdb"), as_root);
    // --no-sync: the cluster is thrown away, its creation need not survive a power cut; the
    // running server still fsyncs every commit (the store's guarantees are tested, and timed,
    // as in production).
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb", None);

    let options = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -p {SOCKET_PORT} \
         -c max_connections=200 -c fsync=on -c synchronous_commit=on",
        dir.path().display()
    );
    let mut start = cluster_command(&bin.join("pg_ctl"), as_root);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-o", &options, "-w", "-t", "60", "start"]);
    run(start, "pg_ctl start", Some(&log));

    watch_for_exit(&bin.join("pg_ctl"), &data, dir.path(), as_root);
    let control = Control {
        pg_ctl: bin.join("pg_ctl"),
        data,
        log,
        options,
        as_root,
    };
    Server {
        admin_url: format!(
            "postgres://postgres@localhost/postgres?host={}&port={SOCKET_PORT}",
            dir.path().display()
        ),
        external: false,
        _cluster: Some(dir),
        control: Some(control),
    }
}

/// Starts a detached shell that waits for this test binary to exit, then stops the cluster
/// and deletes its folder: statics are never dropped, and a crashed or killed test binary must
/// not leave a server running either.
fn watch_for_exit(pg_ctl: &Path, data: &Path, dir: &Path, as_root: bool) {
    let user = if as_root {
        format!("runuser -u {CLUSTER_USER} -- ")
    } else {
        String::new()
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
         {user}'{pg_ctl}' stop -D '{data}' -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    // `setsid -f`: the watcher runs in a session of its own (a Ctrl-C to the tests does not
    // reach it before it cleans up) and `setsid` itself returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("starting the watcher that removes the test cluster");
    assert!(
        started.success(),
        "starting the watcher that removes the test cluster: {started}"
    );
}
