//! The `letterlock` binary from tests, one copy of each step the binary tests repeat: a folder
//! with the classroom key files, a server on 127.0.0.1 port 0 that is killed when the test ends,
//! and a command run in a folder with what it printed.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};

use super::{BIN, spawn_server, spawn_server_logging};

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
