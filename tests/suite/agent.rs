//! `letterlock client agent` and the `send_msg` commands that hand their messages to it: the
//! same answers as without it, only what the agent proved is reported delivered, and whatever it
//! cannot take is sent by the command itself.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Stdio};

use common::cli::{BinServer, classroom_folder, command, put_private, put_public, run};

/// A running `letterlock client agent`, killed when dropped.
pub(crate) struct Agent {
    child: Child,
    /// Its "listening" line, which says when it stops.
    listening: String,
}

impl Agent {
    /// Starts `letterlock client agent --server ADDR ARGS` in `dir` and waits for its
    /// "listening" line.
    pub(crate) fn start(dir: &Path, addr: &str, args: &[&str]) -> Agent {
        let mut cmd = command(dir, &["client", "agent", "--server", addr]);
        cmd.args(args);
        Agent::spawn(cmd)
    }

    /// Starts `cmd`, a `letterlock client agent`, and waits for its "listening" line.
    fn spawn(mut cmd: std::process::Command) -> Agent {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => line,
            other => {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the agent did not start: {other:?}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Agent { child, listening }
    }

    /// Waits for the agent to end on its own; its exit status and stderr.
    fn wait(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A classroom folder with a server running on it.
fn folder_with_server() -> (tempfile::TempDir, BinServer) {
    let dir = tempfile::tempdir().unwrap();
    classroom_folder(dir.path());
    let server = BinServer::start(dir.path(), &[]);
    (dir, server)
}

/// A classroom folder with a server running on it and an agent for that server.
fn folder_with_agent() -> (tempfile::TempDir, BinServer, Agent) {
    let (dir, server) = folder_with_server();
    let agent = Agent::start(dir.path(), &server.addr, &[]);
    (dir, server, agent)
}

/// `send_msg -v --server ADDR ARGS`: exit status, stdout, stderr; the log says whether the
/// agent sent it.
fn send(dir: &Path, addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["-v", "client", "send_msg", "--server", addr];
    full.extend_from_slice(args);
    let (code, out, err) = run(dir, &full);
    (code, String::from_utf8(out).unwrap(), err)
}

const BY_AGENT: &str = "sent by the agent";

/// The message id `send_msg` printed.
fn id_in(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("message id "))
        .unwrap_or_else(|| panic!("no message id in {out:?}"))
        .to_owned()
}

/// Sends `text` to the server at `addr` and requires it sent by the command itself, not the
/// agent, and stored as sent; what the command said on stderr.
fn sent_directly(dir: &Path, addr: &str, text: &str) -> String {
    let (code, out, err) = send(dir, addr, &[text]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(BY_AGENT), "{err}");
    assert_eq!(stored(dir, &id_in(&out)), text);
    err
}

/// What the server stored under `id`.
fn stored(dir: &Path, id: &str) -> String {
    let (code, out, err) = run(dir, &["server", "read", id]);
    assert_eq!(code, 0, "{err}");
    String::from_utf8(out).unwrap()
}

#[test]
fn send_msg_hands_its_message_to_the_agent_and_says_what_it_would_have_said() {
    let (dir, server, agent) = folder_with_agent();
    let d = dir.path();
    let socket = d.join("client_agent.sock");
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    for (i, mode) in ["hybrid", "asymmetric", "hybrid"].iter().enumerate() {
        let text = format!("message {i} through the agent");
        let (code, out, err) = send(d, &server.addr, &["--mode", mode, &text]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(BY_AGENT), "{err}");
        assert!(
            out.contains(&format!(
                "delivered: the server proved it decrypted and stored {} bytes ({mode} mode)",
                text.len()
            )),
            "{out}"
        );
        assert_eq!(stored(d, &id_in(&out)), text);
    }
    // A file, and --json.
    std::fs::write(d.join("note.txt"), b"from a file").unwrap();
    let (code, out, err) = send(d, &server.addr, &["--json", "--file", "note.txt"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(BY_AGENT), "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["delivered"], true);
    assert_eq!(json["bytes"], 11);
    assert_eq!(stored(d, json["id"].as_str().unwrap()), "from a file");

    // --stop: the agent answers, ends with 0 and removes its socket.
    let (code, out, err) = run(d, &["client", "agent", "--stop"]);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("stopped"));
    let (code, err) = agent.wait();
    assert_eq!(code, 0, "{err}");
    assert!(!socket.exists());
    // Without it, the same command sends by itself.
    sent_directly(d, &server.addr, "after the agent");
}

#[test]
fn what_the_agent_does_not_take_is_sent_by_the_command_itself() {
    let (dir, server, _agent) = folder_with_agent();
    let d = dir.path();
    let port = server.addr.rsplit(':').next().unwrap();
    let other_name = format!("localhost:{port}");
    let big = vec![b'x'; 64 * 1024 + 1];
    std::fs::write(d.join("big.txt"), &big).unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (&server.addr, &["--no-agent", "not for the agent"]),
        (&server.addr, &["--file", "big.txt"]),
        // Another name for the server: the agent declines it, and the command connects.
        (&other_name, &["to another address"]),
    ];
    for (addr, args) in cases {
        let (code, out, err) = send(d, addr, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!err.contains(BY_AGENT), "{args:?}: {err}");
        assert!(out.contains("delivered"), "{args:?}: {out}");
    }
    let (code, _, err) = send(d, &other_name, &["x"]);
    assert_eq!(code, 0);
    assert!(err.contains("the agent declined"), "{err}");
    // Stdin is read by the command as it comes.
    let out = command(d, &["-v", "client", "send_msg", "--server", &server.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            drop(c.stdin.take());
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains(BY_AGENT));
}

#[test]
fn a_message_the_agent_cannot_send_is_reported_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &["--max-asymmetric", "100"]);
    let _agent = Agent::start(d, &server.addr, &[]);
    // Over the server's asymmetric limit: the server refuses it.
    let long = "x".repeat(200);
    let (code, out, err) = send(d, &server.addr, &["--mode", "asymmetric", &long]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("NOT delivered"), "{err}");
    assert!(err.contains("code 6, too large"), "{err}");
    assert!(err.contains("sent by the agent"), "{err}");
    // With the hint the command gives when it sends by itself.
    assert!(
        err.contains("hint: the server refuses messages this large"),
        "{err}"
    );
    assert!(!out.contains("delivered"), "{out}");
    // Over the command's own limit: refused before it is offered to the agent, naming its
    // size, with the hint to use hybrid mode.
    let (code, out, err) = send(
        d,
        &server.addr,
        &["--mode", "asymmetric", "--max-asymmetric", "4", "too long"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("limit of 4 bytes: TEXT is 8 bytes"), "{err}");
    assert!(!err.contains("sent by the agent"), "{err}");
    assert!(err.contains("hint: use --mode hybrid"), "{err}");
}

#[test]
fn one_agent_per_key_folder_and_a_dead_agent_socket_is_replaced() {
    let (dir, server) = folder_with_server();
    let d = dir.path();
    let socket = d.join("client_agent.sock");
    // A socket left by an agent that was killed: commands send by themselves, a new agent
    // takes its place.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    sent_directly(d, &server.addr, "no agent behind the socket");
    let _agent = Agent::start(d, &server.addr, &[]);
    let (code, _, err) = send(d, &server.addr, &["to the new agent"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(BY_AGENT), "{err}");
    // A second agent for the same folder is refused, also for another server: before it
    // connects (nothing listens on port 1).
    let (code, _, err) = run(d, &["client", "agent", "--server", &server.addr]);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");
    let (code, _, err) = run(d, &["client", "agent", "--server", "127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");
    // And so is a socket path that is a file.
    let other = tempfile::tempdir().unwrap();
    classroom_folder(other.path());
    std::fs::write(other.path().join("client_agent.sock"), b"not a socket").unwrap();
    let (code, _, err) = run(other.path(), &["client", "agent", "--server", &server.addr]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a socket"), "{err}");
    // A folder with no client key: said so, and no lock file left in it.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(empty.path(), &["client", "agent", "--server", &server.addr]);
    assert_eq!(code, 1);
    assert!(err.contains("client_private.pem not found"), "{err}");
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "the agent left a file in a folder that holds no client key"
    );
}

#[test]
fn a_file_where_the_socket_should_be_is_ignored() {
    let (dir, server) = folder_with_server();
    let d = dir.path();
    std::fs::write(d.join("client_agent.sock"), b"not a socket").unwrap();
    let err = sent_directly(d, &server.addr, "sent directly");
    assert!(err.contains("ignoring the agent socket"), "{err}");
    assert!(err.contains("not a socket"), "{err}");
}

/// 32 connections that never write hold every reader; the next command is declined as busy,
/// sends by itself, and its message arrives.
#[test]
fn more_commands_than_readers_are_declined_not_lost() {
    let (dir, server, _agent) = folder_with_agent();
    let d = dir.path();
    let socket = d.join("client_agent.sock");
    let idle: Vec<_> = (0..32)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    // Let the agent accept them all.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let err = sent_directly(d, &server.addr, "the 33rd");
    // Declined as busy: read as such, or, when the agent closed before the command wrote, a
    // request that could not be handed over; either way the command sent it.
    assert!(
        err.contains("busy") || err.contains("cannot hand the message to the agent"),
        "{err}"
    );
    drop(idle);
}

/// After the pinned server key was replaced under a running agent, no message goes under the old
/// pin: the agent declines it and stops, and the command sends it itself under the new pin,
/// failing as it does with --no-agent (the server's key is not the pinned one), and saying why
/// the agent did not take it. A file touched, with the same key in it, changes nothing.
#[test]
fn an_agent_whose_pinned_server_key_was_replaced_steps_aside_and_stops() {
    let (dir, server, agent) = folder_with_agent();
    let d = dir.path();
    let pin = d.join("server_public.pem");
    std::fs::File::options()
        .append(true)
        .open(&pin)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let (code, _, err) = send(d, &server.addr, &["the same pin, touched"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(BY_AGENT), "{err}");

    put_public(d, "alice3072", "server_public.pem");
    let (code, out, err) = send(d, &server.addr, &["under the new pin"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(!err.contains(BY_AGENT), "{err}");
    assert!(!out.contains("message id"), "{out}");
    assert!(err.contains("stepped aside"), "{err}");
    assert!(err.contains("server_public.pem"), "{err}");
    assert!(err.contains("but the trusted server key is"), "{err}");
    let (no_agent, _, no_agent_err) = send(d, &server.addr, &["--no-agent", "under the new pin"]);
    assert_eq!(code, no_agent, "{no_agent_err}");
    assert!(
        no_agent_err.contains("but the trusted server key is"),
        "{no_agent_err}"
    );

    let (code, err) = agent.wait();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no longer the ones kept"), "{err}");
    assert!(err.contains("server_public.pem"), "{err}");
    assert!(!d.join("client_agent.sock").exists());
}

/// The client's private key replaced under a running agent (`generate_key_pair --force`): the
/// agent, which holds the old one, steps aside and stops the same way.
#[test]
fn an_agent_whose_client_key_was_replaced_steps_aside_and_stops() {
    let (dir, server, agent) = folder_with_agent();
    let d = dir.path();
    put_private(d, "alice3072", "client_private.pem");
    put_public(d, "alice3072", "client_public.pem");
    let (_, _, err) = send(d, &server.addr, &["from the new key"]);
    assert!(!err.contains(BY_AGENT), "{err}");
    assert!(err.contains("stepped aside"), "{err}");
    assert!(err.contains("client_private.pem"), "{err}");
    let (code, err) = agent.wait();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("client_private.pem"), "{err}");
}

/// The agent, which holds the client's key unlocked, writes no core file and cannot be read by
/// processes of its own user (ptrace, /proc/PID/mem, /proc/PID/environ): the kernel makes
/// /proc/PID's files root's when a process is not dumpable. As root, whom that does not stop,
/// the agent runs as `nobody` (through util-linux `setpriv`, as tests/suite/store.rs does), where the
/// owner tells a dumpable process (nobody's files) from one that is not (root's).
#[test]
fn the_agent_writes_no_core_file_and_is_not_readable_by_its_own_user() {
    use std::os::unix::fs::MetadataExt;
    const NOBODY: u32 = 65534;
    let (dir, server) = folder_with_server();
    let d = dir.path();
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let agent = if me == 0 {
        let owner = format!("{NOBODY}:{NOBODY}");
        let chown = std::process::Command::new("chown")
            .args(["-R", &owner])
            .arg(d)
            .status()
            .unwrap();
        assert!(chown.success());
        // Inside the folder: no folder above it need be searchable by nobody.
        let bin = d.join("letterlock-bin");
        if std::fs::hard_link(common::BIN, &bin).is_err() {
            std::fs::copy(common::BIN, &bin).unwrap();
        }
        let mut cmd = std::process::Command::new("setpriv");
        cmd.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .args(["--clear-groups", "--"])
            .arg(&bin)
            .args(["client", "agent", "--server", &server.addr])
            .current_dir(d)
            .stdin(Stdio::null());
        Agent::spawn(cmd)
    } else {
        Agent::start(d, &server.addr, &[])
    };
    let proc = Path::new("/proc").join(agent.child.id().to_string());
    let status = std::fs::read_to_string(proc.join("status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "the agent must run as another user than root here");
    let limits = std::fs::read_to_string(proc.join("limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields.get(4..6), Some(&["0", "0"][..]), "{core}");
    for file in ["environ", "mem"] {
        let owner = std::fs::metadata(proc.join(file)).unwrap().uid();
        assert_eq!(
            owner, 0,
            "/proc/PID/{file} of the agent (user {uid}) is user {owner}'s"
        );
    }
    if me != 0 {
        assert!(std::fs::read(proc.join("environ")).is_err());
    }
}

#[test]
fn the_agent_stops_after_its_persist_time_without_a_message() {
    let (dir, server) = folder_with_server();
    let d = dir.path();
    let agent = Agent::start(d, &server.addr, &["--persist", "1"]);
    assert!(
        agent.listening.contains("stops after 1 second without one"),
        "{}",
        agent.listening
    );
    let (code, _, err) = send(d, &server.addr, &["one"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = agent.wait();
    assert_eq!(code, 0, "{err}");
    assert!(!d.join("client_agent.sock").exists());
}

/// The agent says its --persist time back in words: `1y` as "1 year", not humantime's
/// "1year".
#[test]
fn the_agent_says_its_persist_time_in_words() {
    let (dir, server) = folder_with_server();
    let agent = Agent::start(dir.path(), &server.addr, &["--persist", "1y"]);
    assert!(
        agent.listening.contains("stops after 1 year without one"),
        "{}",
        agent.listening
    );
}

#[test]
fn an_agent_whose_server_restarted_sends_on_a_new_connection() {
    let (dir, server) = folder_with_server();
    let d = dir.path();
    let addr = server.addr.clone();
    let _agent = Agent::start(d, &addr, &[]);
    let (code, _, err) = send(d, &addr, &["before the restart"]);
    assert_eq!(code, 0, "{err}");
    // The kept connection dies with the server; the next message finds it gone, connects again
    // and sends the same bytes there.
    drop(server);
    let mut restarted = std::process::Command::new(common::BIN);
    restarted.args(["server", "--listen", &addr]).current_dir(d);
    let _server = BinServer::spawn(restarted);
    // Even with a --timeout under a second, which the agent once took as none (a review).
    let (code, out, err) = send(d, &addr, &["--timeout", "500ms", "after the restart"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(BY_AGENT), "{err}");
    assert_eq!(stored(d, &id_in(&out)), "after the restart");
}

/// The agent resends a message whose connection broke for no longer than the command's own
/// --timeout, not its own (found by a trial run: `send_msg --timeout 3s` through an agent whose
/// server had gone took 29 s), and says in its log that it tries again. The command then says
/// what it would have said sending by itself: that nothing listens there, with the same hint
/// (found by a trial run: it said "Broken pipe", with no hint).
#[test]
fn an_agent_gives_up_on_a_gone_server_within_the_commands_timeout() {
    let (dir, server) = folder_with_server();
    let d = dir.path();
    let addr = server.addr.clone();
    let agent = Agent::start(d, &addr, &[]);
    let (code, _, err) = send(d, &addr, &["before the server went"]);
    assert_eq!(code, 0, "{err}");
    drop(server);
    let started = std::time::Instant::now();
    let (code, _, err) = send(d, &addr, &["--timeout", "2s", "after it went"]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(BY_AGENT) || err.contains("sent by the agent"),
        "{err}"
    );
    assert!(
        took < std::time::Duration::from_secs(12),
        "took {took:?} for --timeout 2s: {err}"
    );
    assert!(err.contains(&format!("cannot connect to {addr}")), "{err}");
    // The message may have gone out whole before the break showed: then it may be stored, and
    // the hint is not to send it again as a new message.
    let hint = if err.contains("delivery NOT proven") {
        "hint: the server may hold it under that id"
    } else {
        "hint: is `letterlock server` running there?"
    };
    assert!(err.contains(hint), "{err}");
    // Without a kept connection, the first attempt is refused at once, hinted alike.
    let (code, _, err) = send(d, &addr, &["--timeout", "2s", "again"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(BY_AGENT), "{err}");
    assert!(
        err.contains(&format!("NOT delivered: cannot connect to {addr}")),
        "{err}"
    );
    assert!(
        err.contains("hint: is `letterlock server` running there?"),
        "{err}"
    );
    let (code, _, said) = run(d, &["client", "agent", "--stop"]);
    assert_eq!(code, 0, "{said}");
    let (_, log) = agent.wait();
    assert!(log.contains("trying again"), "{log}");
}

/// Another user's process is turned away even when it can open the socket: the agent checks the
/// peer's user id. Needs root (to run a command as the `postgres` user, as the PostgreSQL tests
/// do).
#[test]
#[ignore = "slow tier: runs a command as another user (root and runuser needed)"]
fn another_users_process_is_turned_away() {
    require_root();
    let (dir, server, _agent) = folder_with_agent();
    let d = dir.path();
    let socket = d.join("client_agent.sock");
    // Open the folder and the socket to everyone: only the user id check is left.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
body = b"LLA1\x01\x02" + (1 << 20).to_bytes(8, "big") + (90).to_bytes(4, "big") + bytes([len(sys.argv[2])]) + sys.argv[2].encode() + b"hi"
try:
    s.sendall(struct.pack(">I", len(body)) + body)
    print("answered" if s.recv(64) else "closed")
except (BrokenPipeError, ConnectionResetError):
    print("closed")
"#;
    let out = as_postgres(probe)
        .arg(&socket)
        .arg(&server.addr)
        .output()
        .expect(NEEDS_RUNUSER);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.trim() == "closed",
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same bytes from our own user are served.
    let out = std::process::Command::new("python3")
        .args(["-c", probe])
        .arg(&socket)
        .arg(&server.addr)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answered");
}

/// A socket at the agent's path that another user made (in a folder anyone can write to), or
/// that root owns but another user serves, gets no byte of the message: the command checks the
/// socket's owner and the serving process's user id, and sends the message itself.
#[test]
#[ignore = "slow tier: runs a listener as another user (root and runuser needed)"]
fn a_socket_that_is_not_the_users_agent_gets_nothing() {
    require_root();
    let (dir, server) = folder_with_server();
    let d = dir.path();
    // Sticky, as /tmp is: the other user can make its socket here, and letterlock still reads
    // our keys from the folder (it refuses keys in one every user can write without the bit).
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = d.join("client_agent.sock");
    let record = d.join("received.bin");
    let listener = r#"
import os, signal, socket, sys
signal.alarm(30)  # runuser's child outlives a kill of runuser: it ends by itself
path, record = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX); s.bind(path); os.chmod(path, 0o777); s.listen(8)
open(record, "ab").close()
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(2); data = b""
    try:
        while True:
            d = c.recv(65536)
            if not d: break
            data += d
    except OSError:
        pass
    open(record, "ab").write(data); c.close()
"#;
    let mut fake = as_postgres(listener)
        .arg(&socket)
        .arg(&record)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect(NEEDS_RUNUSER);
    let mut ready = String::new();
    BufReader::new(fake.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let err = sent_directly(d, &server.addr, "top secret, owned by postgres");
    assert!(err.contains("owned by user id"), "{err}");
    // Root owns the socket file now, but the process behind it is still postgres's.
    std::os::unix::fs::chown(&socket, Some(0), Some(0)).unwrap();
    let err = sent_directly(d, &server.addr, "top secret, served by postgres");
    assert!(err.contains("served by user id"), "{err}");
    let _ = fake.kill();
    let _ = fake.wait();
    let got = std::fs::read(&record).unwrap();
    assert!(
        got.is_empty(),
        "the fake agent received {} bytes",
        got.len()
    );
}

/// The slow tier's tests of another user run as root, as `.ci/run` does (and as the PostgreSQL
/// tests do, to start `initdb` as `postgres`).
fn require_root() {
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    assert_eq!(
        uid, 0,
        "this test runs a program as the `postgres` user: run it as root (as .ci/run does)"
    );
}

const NEEDS_RUNUSER: &str =
    "runuser (util-linux) and python3 are needed: apt-get install util-linux python3";

/// `python3 -c SCRIPT` as the `postgres` user.
fn as_postgres(script: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", "postgres", "--", "python3", "-c", script]);
    cmd
}

/// With a passphrase-protected key and an agent holding it, a message the agent does not take
/// fails for want of the passphrase; the error says why the agent did not send it (stdin, a
/// file over 64 KiB, another --server than the agent's) and what to do. After the agent
/// stopped, a message it would have taken says so; without one ever, nothing is said of one.
#[test]
fn a_message_past_the_agent_that_needs_the_passphrase_says_why_the_agent_did_not_send_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    std::fs::write(d.join("pass.txt"), "correct horse\n").unwrap();
    let (code, _, err) = run(
        d,
        &[
            "passphrase",
            "client_private.pem",
            "--new-passphrase-file",
            "pass.txt",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let server = BinServer::start(d, &[]);
    let agent = Agent::start(d, &server.addr, &["--passphrase-file", "pass.txt"]);
    let sent = |args: &[&str]| {
        let out = command(d, &["client", "send_msg", "--server", &server.addr])
            .args(args)
            .env_remove("LETTERLOCK_PASSPHRASE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (out.status.code(), err)
    };
    // TEXT goes through the agent, which holds the key unlocked.
    let (code, err) = sent(&["through the agent"]);
    assert_eq!(code, Some(0), "{err}");

    let socket = "client_agent.sock";
    let (code, err) = sent(&[]);
    assert_eq!(code, Some(1), "{err}");
    for said in [
        socket,
        "not sent through the client agent",
        "the message comes from stdin",
        "no passphrase was given",
        "hint: give the message as TEXT, or in a file of up to 64 KiB with --file FILE",
        "--passphrase-file FILE",
    ] {
        assert!(err.contains(said), "stdin: {said:?} missing: {err}");
    }

    std::fs::write(d.join("big.bin"), vec![b'x'; 100_000]).unwrap();
    let (code, err) = sent(&["--file", "big.bin"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not sent through the client agent"), "{err}");
    assert!(err.contains("big.bin is 100000 bytes"), "{err}");
    assert!(err.contains("up to 64 KiB"), "{err}");

    let port = server.addr.rsplit(':').next().unwrap();
    let other = format!("localhost:{port}");
    let out = command(d, &["client", "send_msg", "--server", &other, "hi"])
        .env_remove("LETTERLOCK_PASSPHRASE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "it sends only to {}, the --server it was started with, and this command names \
             {other}",
            server.addr
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("hint: pass --server {}", server.addr)),
        "{err}"
    );

    // --no-agent, with the agent running: said too.
    let (code, err) = sent(&["--no-agent", "hi"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("(--no-agent was given)"), "{err}");

    // The agent stopped (as it does after its --persist idle time): a message it would have
    // taken says so (found by a trial run: nothing told a stopped agent from none); one it
    // would not have taken gets the passphrase error alone.
    let (code, _, err) = run(d, &["client", "agent", "--stop"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = agent.wait();
    assert_eq!(code, 0, "{err}");
    let (code, err) = sent(&["hi"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no passphrase was given"), "{err}");
    assert!(err.contains("one ran before, and has stopped"), "{err}");
    assert!(
        err.contains("hint: start `letterlock client agent` again"),
        "{err}"
    );
    for args in [&[][..], &["--no-agent", "hi"], &["--file", "big.bin"]] {
        let (code, err) = sent(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("no passphrase was given"), "{args:?}: {err}");
        assert!(!err.contains("agent"), "{args:?}: {err}");
    }
    // No agent ever ran for the folder: the passphrase error alone.
    std::fs::remove_file(d.join("client_agent.lock")).unwrap();
    let (code, err) = sent(&["hi"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no passphrase was given"), "{err}");
    assert!(!err.contains("agent"), "{err}");

    // An agent killed without removing its socket: nobody answers there, and that is said
    // (found by a trial run: only the passphrase error showed).
    drop(std::os::unix::net::UnixListener::bind(d.join(socket)).unwrap());
    let (code, err) = sent(&["hi"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no agent answers on it"), "{err}");
    assert!(
        err.contains("hint: start `letterlock client agent` again"),
        "{err}"
    );
}
