//! A long-running command stopped the moment it says it is ready stops cleanly: its Ctrl-C and
//! SIGTERM handlers are in place before that line (a signal before them would kill it, with no
//! summary and no exit status of its own). A command stopped part-way leaves no unverified
//! plaintext behind.

use crate::common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::cli::{BinServer, Watched, classroom_folder, command, ok, server_command};

/// Starts `cmd` with its stdout piped, waits for its first line, sends `signal` at once, and
/// returns the first line, everything printed after it, and the exit code.
fn stopped_right_after_first_line(mut cmd: Command, signal: &str) -> (String, String, Option<i32>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    (first, rest, status.code())
}

#[test]
fn a_server_stopped_as_soon_as_it_listens_shuts_down_cleanly() {
    for signal in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        classroom_folder(dir.path());
        let (first, rest, code) =
            stopped_right_after_first_line(server_command(dir.path(), &[]), signal);
        assert!(
            first.starts_with("letterlock server listening on "),
            "{first}"
        );
        assert_eq!(
            code,
            Some(0),
            "{signal}: killed instead of stopped; printed {rest}"
        );
        assert!(
            rest.contains("server stopped; store closed"),
            "{signal}: {rest}"
        );
    }
}

#[test]
fn an_interceptor_stopped_as_soon_as_it_intercepts_says_so_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = command(
        dir.path(),
        &[
            "intercept",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
        ],
    );
    let (first, rest, code) = stopped_right_after_first_line(cmd, "-INT");
    assert!(first.starts_with("intercepting "), "{first}");
    assert_eq!(code, Some(0), "killed instead of stopped; printed {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

/// `recv_msg --wait` stopped by Ctrl-C or SIGTERM while it waits says "interrupted" and exits
/// as the signal would have, 130 or 143 (found by a trial run: started with `&` by a script,
/// which ignores Ctrl-C in it, it waited out its time, said "no messages" and exited 0). The
/// message it showed before stays in the mailbox, and a message sent after is the next run's.
#[test]
fn a_waiting_recv_msg_stopped_says_interrupted_and_exits_as_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    let recv = ["client", "recv_msg", "--server", &server.addr];
    ok(d, &["server", "send_msg", "--to", "client", "shown first"]);
    assert_eq!(ok(d, &recv), "shown first");
    for (signal, status) in [("-INT", 130), ("-TERM", 143)] {
        let waiting = command(d, &[&["-v"], &recv[..], &["--wait", "60"]].concat());
        let mut waiting = Watched::spawn(waiting);
        // Said once the mailbox is open: recv_msg is in its --wait loop.
        waiting.wait_for("mailbox writer started");
        let killed = Command::new("kill")
            .args([signal, &waiting.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let (out, said) = waiting.finish();
        let said = said.join("\n");
        assert_eq!(out.status.code(), Some(status), "{signal}: {said}");
        assert!(said.contains("letterlock: interrupted"), "{signal}: {said}");
        assert!(!said.contains("no messages"), "{signal}: {said}");
        assert!(out.stdout.is_empty(), "{signal}");
    }
    let inbox: serde_json::Value =
        serde_json::from_str(&ok(d, &["client", "inbox", "--json"])).unwrap();
    assert_eq!(inbox.as_array().map(Vec::len), Some(1), "{inbox}");
    ok(d, &["server", "send_msg", "--to", "client", "sent after"]);
    assert_eq!(ok(d, &recv), "sent after");
}

/// `open` writes the plaintext as it decrypts it, before the signature at the end is checked,
/// into a file that becomes the output only once it is. Stopped part-way (Ctrl-C, a `kill`),
/// it must leave nothing of that unverified plaintext in the folder, not even a hidden file:
/// the file has no name until the commit (`files::AtomicFile`).
#[test]
fn an_open_stopped_part_way_leaves_no_plaintext_behind() {
    use std::time::Duration;

    let half = half_a_message();
    for signal in ["-INT", "-TERM", "-KILL"] {
        let (_dir, out, mut child, input) = a_waiting_open(&[], &half);
        let writing = wait_for_output_fd(child.id(), &out, Duration::from_secs(30));
        assert!(
            fs::metadata(&writing).unwrap().len() > 0,
            "{signal}: nothing written yet"
        );
        assert_eq!(
            listing(&out),
            Vec::<String>::new(),
            "{signal}: while open runs"
        );
        stopped_leaving_nothing(signal, child.id(), &mut child, input, &out);
    }
}

/// Where files cannot be made without a name (NFS, vfat, some FUSE file systems: here the
/// system call is made to fail with strace), `open` writes a named `.letterlock-tmp…` file; on
/// Ctrl-C or SIGTERM it removes that file before it dies (found by a trial run: it stayed,
/// holding the plaintext decrypted so far).
#[test]
fn without_unnamed_files_an_open_stopped_part_way_removes_its_temporary_file() {
    use std::time::Duration;

    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace, to make unnamed files fail: apt-get install strace"
    );
    let half = half_a_message();
    for signal in ["-INT", "-TERM"] {
        // Only the unnamed file is made with `open(2)` (std uses `openat`): failing every
        // `open` fails just that one. The listing below checks that it did.
        let tracer = [
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=open",
            "-e",
            "inject=open:error=EOPNOTSUPP",
        ];
        let (_dir, out, mut strace, input) = a_waiting_open(&tracer, &half);
        let pid = traced_child(strace.id(), Duration::from_secs(30));
        wait_for_output_fd(pid, &out, Duration::from_secs(30));
        let during = listing(&out);
        assert!(
            during.len() == 1 && during[0].starts_with(".letterlock-tmp"),
            "{signal}: the named fallback was not used: {during:?}"
        );
        stopped_leaving_nothing(signal, pid, &mut strace, input, &out);
    }
}

/// The first half of a 4 MiB message sealed from alice to bob: `open` given it waits for the
/// rest with part of the plaintext written.
fn half_a_message() -> Vec<u8> {
    let mut sealed = common::seal(
        &*common::private("alice2048"),
        &common::public("bob2048"),
        &letterlock::envelope::SealOptions::default(),
        &common::data(4 << 20),
    );
    sealed.truncate(sealed.len() / 2);
    sealed
}

/// `open` of bob's message into `out/plain.bin` of a new folder, run through `wrapper` (a
/// tracer's command line, or nothing), given `input` and left waiting for the rest: the folder,
/// its `out`, the process started, and its stdin (kept open while it lives).
fn a_waiting_open(
    wrapper: &[&str],
    input: &[u8],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::process::Child,
    std::process::ChildStdin,
) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let bob = common::private_path("bob2048");
    let alice = common::public_path("alice2048");
    let (program, before) = match wrapper.split_first() {
        Some((program, args)) => (*program, [args, &[common::BIN]].concat()),
        None => (common::BIN, Vec::new()),
    };
    let mut command = Command::new(program);
    command
        .args(before)
        .args(["open", "-q", "-i", bob.to_str().unwrap(), "--from"])
        .args([alice.to_str().unwrap(), "-o", "out/plain.bin"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Ctrl-C and SIGTERM as a terminal's command gets them, whatever this test inherited: run
    // as a background job of a script, it ignores SIGINT, `open` would too (as it should), and
    // the test would wait for ever for it to stop.
    // SAFETY: between fork and exec only `signal(2)`, which is async-signal-safe, is called.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            use nix::sys::signal::{SigHandler, Signal, signal};
            for s in [Signal::SIGINT, Signal::SIGTERM] {
                signal(s, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    stdin.flush().unwrap();
    (dir, out, child, stdin)
}

/// Sends `signal` to `pid` and waits, at most 30 s, for `child` (that process, or the tracer
/// it runs under) to stop, which it must do unsuccessfully; then closes its input. Nothing may
/// be left in `out`. A signal that does not stop it fails the test (the child killed) instead
/// of hanging it.
fn stopped_leaving_nothing(
    signal: &str,
    pid: u32,
    child: &mut std::process::Child,
    input: std::process::ChildStdin,
    out: &std::path::Path,
) {
    let killed = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let wait = std::time::Duration::from_secs(30);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > wait {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{signal} did not stop the process within {wait:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success(), "{signal}: {status:?}");
    drop(input);
    assert_eq!(
        listing(out),
        Vec::<String>::new(),
        "{signal}: after it stopped"
    );
}

/// The pid of the process strace (`tracer`) started, once it has one.
fn traced_child(tracer: u32, wait: std::time::Duration) -> u32 {
    let start = std::time::Instant::now();
    loop {
        let children = fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"));
        if let Some(pid) = children
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            return pid;
        }
        assert!(start.elapsed() < wait, "strace started nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The names in `dir`, hidden ones too.
fn listing(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The `/proc` path of the open file that process `pid` writes in `dir`, once it has one (the
/// link's target names the folder, even for a file without a name); panics after `wait`.
fn wait_for_output_fd(
    pid: u32,
    dir: &std::path::Path,
    wait: std::time::Duration,
) -> std::path::PathBuf {
    let start = std::time::Instant::now();
    let dir = fs::canonicalize(dir).unwrap();
    loop {
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && target.starts_with(&dir)
                && fs::metadata(fd.path()).is_ok_and(|m| m.len() > 0)
            {
                return fd.path();
            }
        }
        assert!(
            start.elapsed() < wait,
            "open never wrote in {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
