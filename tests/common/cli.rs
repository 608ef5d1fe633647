//! The `letterlock` binary from tests, one copy of each step the binary tests repeat: a folder
//! with the classroom key files, a server on 127.0.0.1 port 0 that is killed when the test ends,
//! and a command run in a folder with what it printed.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};

use super::net::{CLIENT, SERVER};
use super::{BIN, private_path, public_path, spawn_server, spawn_server_logging};

// ---------------------------------------------------------------------------------------------
// Servers

/// A running `letterlock server`, killed when dropped, so a failing test leaves no server
/// behind.
pub struct BinServer {
    child: Child,
    /// The address it listens on, as it printed it.
    pub addr: String,
}

impl BinServer {
    /// `letterlock server --listen 127.0.0.1:0 ARGS` run in `dir` (the classroom layout: its
    /// keys and its store there unless ARGS say otherwise).
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::spawn(server_command(dir, args))
    }

    /// Starts `cmd`, a `letterlock server --listen 127.0.0.1:0 ...` command (for one that needs
    /// its environment or arguments set by hand); its log is discarded.
    pub fn spawn(cmd: Command) -> Self {
        let (child, addr) = spawn_server(cmd);
        BinServer { child, addr }
    }

    /// As [`BinServer::spawn`], with the server's log (stderr) written to `log`.
    pub fn spawn_logging(cmd: Command, log: &Path) -> Self {
        let (child, addr) = spawn_server_logging(cmd, std::fs::File::create(log).unwrap().into());
        BinServer { child, addr }
    }

    /// A server started some other way (under `script`, say) whose `child` should be killed
    /// when the test ends like any other.
    pub fn adopt(child: Child, addr: String) -> Self {
        BinServer { child, addr }
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command `letterlock server --listen 127.0.0.1:0 ARGS` in `dir`, not started.
pub fn server_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Key folders

/// Writes the fixed key `tests/keys/KEY_private.pem` as DIR/FILE, mode 0600 (the binary refuses
/// a private key others can read).
pub fn put_private(dir: &Path, key: &str, file: &str) {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.join(file);
    std::fs::copy(private_path(key), &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes the fixed key `tests/keys/KEY_public.pem` as DIR/FILE.
pub fn put_public(dir: &Path, key: &str, file: &str) {
    std::fs::copy(public_path(key), dir.join(file)).unwrap();
}

/// Puts both sides of the classroom walk-through in `dir` under its file names: the fixed
/// [`SERVER`] and [`CLIENT`] keys as server_private.pem, server_public.pem,
/// client_private.pem and client_public.pem. The server and the client commands then run in
/// `dir` with no `--keys`.
pub fn classroom_folder(dir: &Path) {
    put_private(dir, SERVER, "server_private.pem");
    put_public(dir, SERVER, "server_public.pem");
    put_private(dir, CLIENT, "client_private.pem");
    put_public(dir, CLIENT, "client_public.pem");
}
