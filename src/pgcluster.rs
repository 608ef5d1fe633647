//! A throwaway PostgreSQL cluster, made from the installed server binaries in a temporary
//! folder: what `letterlock bench`'s store section and the PostgreSQL tests run against when
//! no server is named.
//!
//! `initdb` then `pg_ctl start` into a fresh folder; the server listens on a Unix socket in
//! that folder only (no TCP port, so no port to race for), with trust authentication, fsync and
//! `synchronous_commit` on (what is measured and tested is the real commit). `initdb` refuses
//! to run as root, and the project's machines and CI run as root: there the cluster runs as the
//! `postgres` system user (`runuser -u postgres`), which Debian's `postgresql` package creates.
//! A detached watcher stops the cluster and deletes its folder once the process that made it
//! has exited, however it exits (a static is never dropped; a killed bench runs no `Drop`).
//!
//! Every failure is an `Err` saying what failed (with the server's log when it has one); the
//! caller adds how to fix it for its audience.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The system user a cluster runs as when this process runs as root.
pub const CLUSTER_USER: &str = "postgres";

/// Port number in the socket file's name (`.s.PGSQL.PORT`); nothing listens on TCP.
const SOCKET_PORT: u16 = 5432;

/// A running throwaway cluster. Dropping it stops the server (`-m immediate`); its folder goes
/// with it.
pub struct Cluster {
    /// The folder of the installed server binaries used.
    bin: PathBuf,
    /// `pg_ctl` of the installed server binaries.
    pg_ctl: PathBuf,
    /// Its maintenance database, over the Unix socket in its folder.
    admin_url: String,
    /// The cluster's data folder.
    data: PathBuf,
    /// The server log, shown when a start or stop fails.
    log: PathBuf,
    /// The `-o` options the server was first started with, for a restart in place.
    options: String,
    /// True when the cluster runs as [`CLUSTER_USER`] because we run as root.
    as_root: bool,
    /// Deleted after the server stops (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Makes and starts a cluster in a temporary folder named `prefix…`, with `options`
    /// (`-c name=value …`) added to the server's own. Blocking; `Err` says what failed.
    pub fn start(prefix: &str, options: &str) -> Result<Cluster, String> {
        Self::make(prefix, options, None)
    }

    /// [`Cluster::start`], but the data folder is a copy of one `initdb` made before and kept
    /// in `cache` (made there by the first call, one per PostgreSQL version). `initdb` takes
    /// about 1.5 s here, a copy a tenth of that; the tests start one cluster per test binary.
    pub fn start_from_cache(prefix: &str, options: &str, cache: &Path) -> Result<Cluster, String> {
        Self::make(prefix, options, Some(cache))
    }

    fn make(prefix: &str, options: &str, cache: Option<&Path>) -> Result<Cluster, String> {
        let bin = server_binaries().ok_or_else(|| {
            "PostgreSQL's server binaries (initdb, pg_ctl) were not found through `pg_config \
             --bindir` or in /usr/lib/postgresql/*/bin"
                .to_owned()
        })?;
        let as_root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| format!("no temporary folder for PostgreSQL: {e}"))?;
        if as_root {
            let (uid, gid) = ids_of(CLUSTER_USER).ok_or_else(|| {
                format!(
                    "this process runs as root and initdb refuses root, but there is no \
                     `{CLUSTER_USER}` system user to run PostgreSQL as"
                )
            })?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                format!(
                    "could not give {} to {CLUSTER_USER}: {e}",
                    dir.path().display()
                )
            })?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        match cache {
            None => initdb(&bin, as_root, &data)?,
            Some(cache) => copy_of_initdb(&bin, as_root, &data, cache)?,
        }
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -p {SOCKET_PORT} \
             -c fsync=on -c synchronous_commit=on {options}",
            dir.path().display()
        );
        let cluster = Cluster {
            pg_ctl: bin.join("pg_ctl"),
            bin,
            admin_url: format!(
                // No host before the `?`: a host there would be tried first, over TCP.
                "postgres://postgres@/postgres?host={}&port={SOCKET_PORT}",
                dir.path().display()
            ),
            data,
            log,
            options,
            as_root,
            _dir: dir,
        };
        cluster.start_again()?;
        watch_for_exit(&cluster.pg_ctl, &cluster.data, cluster._dir.path(), as_root);
        Ok(cluster)
    }

    /// The folder of the server binaries it runs (shown in reports).
    pub fn binaries(&self) -> &Path {
        &self.bin
    }

    /// URL of the maintenance database, for `CREATE DATABASE`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Stops the server as an operator's restart does (`pg_ctl stop -m fast`: open
    /// transactions are rolled back, every connection is closed, a checkpoint is written), and
    /// waits until it is down.
    pub fn stop(&self) -> Result<(), String> {
        let mut stop = command(&self.pg_ctl, self.as_root);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(stop, "pg_ctl stop", Some(&self.log))
    }

    /// Starts the server (again) on the same socket and port with the same options, and waits
    /// until it accepts connections: every URL handed out stays valid across a restart.
    pub fn start_again(&self) -> Result<(), String> {
        let mut start = command(&self.pg_ctl, self.as_root);
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &self.options, "-w", "-t", "60", "start"]);
        run(start, "pg_ctl start", Some(&self.log))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = command(&self.pg_ctl, self.as_root);
        stop.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Should it fail, the watcher stops the cluster once this process exits.
        let _ = stop.status();
    }
}

/// `url` with its database name replaced by `name` (the path of a `postgres://` URL, its
/// query kept); `None` when `url` has no `scheme://`.
pub fn with_database(url: &str, name: &str) -> Option<String> {
    let scheme_end = url.find("://")? + 3;
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    let query = path_and_query
        .find('?')
        .map_or("", |q| &path_and_query[q..]);
    Some(format!("{scheme}{authority}/{name}{query}"))
}

/// `url` as shown to people: the password, if any, replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let (user_info, host) = authority.split_at(at);
            let user = user_info.split(':').next().unwrap_or("");
            if user_info.contains(':') {
                format!("{scheme}{user}:***{host}{tail}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// Makes a new data folder `data` with `initdb`.
fn initdb(bin: &Path, as_root: bool, data: &Path) -> Result<(), String> {
    let mut initdb = command(&bin.join("initdb"), as_root);
    // --no-sync: the cluster is thrown away, its creation need not survive a power cut; the
    // running server still fsyncs every commit.
    initdb
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb", None)
}

/// Makes `data` as a copy of the data folder kept in `cache` for this version of `initdb`; when
/// there is none yet, runs `initdb` and keeps a copy first. The copy is made under a temporary
/// name and renamed into place, so a concurrent or interrupted run never leaves half a folder
/// under the kept name. `cp -a` keeps the owner (the cluster's user) and the folder's mode.
fn copy_of_initdb(bin: &Path, as_root: bool, data: &Path, cache: &Path) -> Result<(), String> {
    let version = Command::new(bin.join("initdb"))
        .arg("--version")
        .output()
        .map_err(|e| format!("could not run initdb --version: {e}"))?;
    // "initdb (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "initdb-PostgreSQL-15.18-…"
    let version = String::from_utf8_lossy(&version.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if version.is_empty() {
        return Err(format!(
            "{} --version said nothing",
            bin.join("initdb").display()
        ));
    }
    let kept = cache.join(&version);
    if !kept.is_dir() {
        initdb(bin, as_root, data)?;
        std::fs::create_dir_all(cache)
            .map_err(|e| format!("could not make {}: {e}", cache.display()))?;
        let staging = cache.join(format!("{version}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        copy_folder(data, &staging)?;
        if std::fs::rename(&staging, &kept).is_err() {
            // Another process kept its copy first: ours is not needed.
            let _ = std::fs::remove_dir_all(&staging);
        }
        return Ok(());
    }
    copy_folder(&kept, data)
}

/// `cp -a from to`.
fn copy_folder(from: &Path, to: &Path) -> Result<(), String> {
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(from).arg(to);
    run(cp, "cp -a (a kept PostgreSQL data folder)", None)
}

/// The installed server binaries: `pg_config --bindir`, else the newest
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
fn command(bin: &Path, as_root: bool) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", CLUSTER_USER, "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// Runs `cmd` to completion; `Err` with its output (and the server log) when it fails.
fn run(mut cmd: Command, what: &str, log: Option<&Path>) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let log_text = log
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    Err(format!(
        "{what} failed ({}): {} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim(),
        log_text.trim()
    ))
}

/// Starts a detached shell that waits for this process to exit, then stops the cluster and
/// deletes its folder.
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
    // `setsid -f`: the watcher runs in a session of its own (a Ctrl-C to this process does not
    // reach it before it cleans up) and `setsid` itself returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !started.is_ok_and(|s| s.success()) {
        tracing::warn!(
            folder = %dir.display(),
            "could not start the watcher that removes the throwaway PostgreSQL; stop it with \
             pg_ctl stop -D DATA if this process is killed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_the_server_and_query() {
        assert_eq!(
            with_database("postgres://u@/postgres?host=/tmp/x&port=5432", "t1").as_deref(),
            Some("postgres://u@/t1?host=/tmp/x&port=5432")
        );
        assert_eq!(
            with_database("postgres://u:pw@db:5433", "t2").as_deref(),
            Some("postgres://u:pw@db:5433/t2")
        );
        assert_eq!(with_database("not a url", "t"), None);
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            without_password("postgres://u:secret@db/mail?host=/x"),
            "postgres://u:***@db/mail?host=/x"
        );
        assert_eq!(
            without_password("postgres://u@db/mail"),
            "postgres://u@db/mail"
        );
    }
}
