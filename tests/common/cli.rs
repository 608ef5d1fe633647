//! The `letterlock` binary from tests, one copy of each step the binary tests repeat: a folder
//! with the classroom key files, a server on 127.0.0.1 port 0 that is killed when the test ends,
//! and a command run in a folder with what it printed.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

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

    /// True while the server process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

// ---------------------------------------------------------------------------------------------
// Running the binary

/// The command `letterlock ARGS` in `dir` with stdin closed (a command that would wait for
/// input sees its end instead), not started.
pub fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    cmd
}

/// Runs `letterlock ARGS` in `dir` (see [`command`]); what it printed and how it ended.
pub fn letterlock(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().unwrap()
}

/// Runs `letterlock ARGS` in `dir`: its exit status (-1 if killed by a signal), stdout as
/// bytes and stderr as text, after checking that it did not panic.
pub fn run(dir: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = letterlock(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

/// What `out` printed, stdout then stderr (content, then status lines), as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `letterlock ARGS` succeeded, showing both outputs if not; its stdout.
pub fn assert_ok(args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "letterlock {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts that `letterlock ARGS` failed without a panic; its stderr.
pub fn assert_fails(args: &[&str], out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "letterlock {args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Runs a command in `dir` that must succeed; its stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    assert_ok(args, &letterlock(dir, args))
}

/// Runs a command in `dir` that must succeed; stdout and stderr together (see [`text`]).
pub fn ok_text(dir: &Path, args: &[&str]) -> String {
    let out = letterlock(dir, args);
    let text = text(&out);
    assert!(out.status.success(), "letterlock {args:?} failed:\n{text}");
    text
}

/// Runs a command in `dir` that must fail; stdout and stderr together (see [`text`]).
pub fn fails_text(dir: &Path, args: &[&str]) -> String {
    let out = letterlock(dir, args);
    let text = text(&out);
    assert!(
        !out.status.success(),
        "letterlock {args:?} succeeded:\n{text}"
    );
    text
}

// ---------------------------------------------------------------------------------------------
// On a terminal

/// The command that runs `letterlock ARGS` in `dir` under util-linux `script`, with its stdin,
/// stdout and stderr on one pseudo-terminal, not started: everything the terminal showed comes
/// out on the command's stdout.
pub fn terminal_command(dir: &Path, args: &[&str]) -> Command {
    let quoted: Vec<String> = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"])
        .current_dir(dir);
    cmd
}

/// The failure when `script` cannot be started: what is missing and how to install it.
pub fn no_script<T>(e: std::io::Error) -> T {
    panic!(
        "cannot run `script` ({e}): these tests need a pseudo-terminal; install util-linux \
         (Debian/Ubuntu: apt-get install bsdutils; Fedora: dnf install util-linux-script)"
    )
}

/// Runs `letterlock ARGS` in `dir` on a pseudo-terminal with nothing typed (see
/// [`terminal_command`]).
pub fn on_terminal(dir: &Path, args: &[&str]) -> Output {
    terminal_command(dir, args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(no_script)
}

/// `letterlock client recv_msg --server ADDR` in `dir` with its stdout redirected to the file
/// `file` (a shell's `> file`, not `-o`).
pub fn recv_msg_into(dir: &Path, addr: &str, file: &Path) -> Output {
    command(dir, &["client", "recv_msg", "--server", addr])
        .stdout(std::fs::File::create(file).unwrap())
        .output()
        .unwrap()
}

/// A running command whose stderr is read line by line as it comes, so a test can wait for
/// what it says (a resend, a connection) before acting.
#[allow(dead_code)]
pub struct Watched {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Every stderr line read so far.
    pub said: Vec<String>,
}

#[allow(dead_code)]
impl Watched {
    /// Starts `cmd` with stdin, stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Watched {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Watched {
            child,
            lines,
            reader: Some(reader),
            said: Vec::new(),
        }
    }

    /// The first stderr line from now on that contains `needle`; panics with everything said
    /// if the command ends first.
    pub fn wait_for(&mut self, needle: &str) -> String {
        while let Ok(line) = self.lines.recv() {
            self.said.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!(
            "the command ended without saying {needle:?}:\n{}",
            self.said.join("\n")
        );
    }

    /// Waits for the command to end; its output, and every stderr line in `said`.
    pub fn finish(mut self) -> (Output, Vec<String>) {
        let out = self.child.wait_with_output().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.said.extend(self.lines.try_iter());
        (out, self.said)
    }
}

/// The id in `send_msg --json`'s answer (`out`) for a message that may or may not have been
/// stored: not delivered, "stored": null, and its id.
pub fn unproven_id(out: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(out).unwrap();
    assert_eq!(json["delivered"], false, "{json}");
    assert!(json["stored"].is_null(), "{json}");
    json["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {json}"))
        .to_owned()
}
