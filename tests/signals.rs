//! A long-running command stopped the moment it says it is ready stops cleanly: its Ctrl-C and
//! SIGTERM handlers are in place before that line (a signal before them would kill it, with no
//! summary and no exit status of its own).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::cli::{classroom_folder, command, server_command};

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
