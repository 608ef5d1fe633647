//! The original classroom walk-through, verbatim, with letterlock's commands in one folder:
//! generate both key pairs, start the server, send_msg, recv_msg, in both modes.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn letterlock(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = letterlock(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "letterlock {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// As [`ok`], with the status lines too: they go to stderr, content to stdout.
fn ok_with_status(dir: &Path, args: &[&str]) -> String {
    let out = letterlock(dir, args);
    assert!(out.status.success(), "letterlock {args:?} failed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// Kills the server when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_original_walk_through_works_in_one_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["server", "generate_key_pair", "--bits", "2048"]);
    ok(d, &["client", "generate_key_pair", "--bits", "2048"]);
    // Generating again without --force is refused: keys are never silently replaced.
    assert!(
        !letterlock(d, &["client", "generate_key_pair"])
            .status
            .success()
    );

    let mut cmd = Command::new(common::BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .current_dir(d);
    let (child, addr) = common::spawn_server(cmd);
    let server = Server(child);

    for mode in ["asymmetric", "hybrid"] {
        let text = format!("hello from the client in {mode} mode");
        let out = ok(
            d,
            &[
                "client", "send_msg", &text, "--mode", mode, "--server", &addr,
            ],
        );
        assert!(out.contains("delivered"), "{out}");
        ok(
            d,
            &[
                "server",
                "send_msg",
                "--to",
                "client",
                "--mode",
                mode,
                "reply from the server",
            ],
        );
        let got = ok_with_status(d, &["client", "recv_msg", "--server", &addr]);
        assert!(got.contains("reply from the server"), "{got}");
        assert!(got.contains(mode), "{got}");
        // Already delivered: a second recv_msg finds nothing.
        let again = ok_with_status(d, &["client", "recv_msg", "--server", &addr]);
        assert!(again.contains("no messages"), "{again}");
    }
    let inbox = ok(d, &["server", "inbox", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&inbox).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let id = rows[0]["id"].as_str().unwrap();
    let text = ok(d, &["server", "read", &id[..10]]);
    assert!(text.starts_with("hello from the client"), "{text}");
    drop(server);
}

fn fails_with(dir: &Path, args: &[&str], expected: &str) {
    let out = letterlock(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "letterlock {args:?} succeeded");
    assert!(
        stderr.contains(expected),
        "letterlock {args:?}: expected {expected:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `letterlock open --key bob_private.pem --from alice_public.pem ARGS` fails saying `expected`.
fn bob_open_fails_with(dir: &Path, args: &[&str], expected: &str) {
    let mut all = vec![
        "open",
        "--key",
        "bob_private.pem",
        "--from",
        "alice_public.pem",
    ];
    all.extend_from_slice(args);
    fails_with(dir, &all, expected);
}

#[test]
fn newcomer_mistakes_get_errors_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen", "--name", "alice", "--bits", "2048"]);
    ok(d, &["keygen", "--name", "bob", "--bits", "2048"]);
    std::fs::write(d.join("m.txt"), "hello").unwrap();
    ok(
        d,
        &[
            "seal",
            "--from",
            "alice_private.pem",
            "--to",
            "bob_public.pem",
            "-o",
            "m.ll",
            "m.txt",
        ],
    );
    // A public key where the private one belongs: named as such, not as a mode problem.
    fails_with(
        d,
        &[
            "open",
            "--key",
            "bob_public.pem",
            "--from",
            "alice_public.pem",
            "m.ll",
        ],
        "expected a private key",
    );
    // An existing output file is not replaced without --force.
    bob_open_fails_with(d, &["-o", "m.txt", "m.ll"], "pass --force");
    // A device or pipe is never replaced by the output's rename (as root, `-o /dev/null` once
    // turned /dev/null into a regular file): a FIFO stands in for the device here.
    assert!(
        Command::new("mkfifo")
            .arg(d.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    bob_open_fails_with(d, &["-o", "fifo", "--force", "m.ll"], "not a regular file");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(d.join("fifo"))
            .unwrap()
            .file_type()
    ));
    // A text file is "not a letterlock message", however short.
    bob_open_fails_with(d, &["m.txt"], "not a letterlock message");
    // A mistyped store is refused, and not created.
    fails_with(
        d,
        &["server", "inbox", "--store", "typo.db"],
        "no mailbox at typo.db",
    );
    assert!(!d.join("typo.db").exists());
    // A server address without a port.
    ok(d, &["client", "generate_key_pair", "--bits", "2048"]);
    ok(d, &["server", "generate_key_pair", "--bits", "2048"]);
    fails_with(
        d,
        &["client", "send_msg", "hi", "--server", "localhost"],
        "has no port",
    );
    // Output cut short by a closed pipe ends quietly, without a panic.
    let mut child = Command::new(common::BIN)
        .args(["--help"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
