//! The original classroom walk-through, verbatim, with letterlock's commands in one folder:
//! generate both key pairs, start the server, send_msg, recv_msg, in both modes.

use crate::common;

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::{BinServer, assert_fails, letterlock, ok, ok_text};

/// The walk-through: both key pairs, the server, send_msg, recv_msg in both modes, inbox and
/// read, with `flags` given to the server and to every client command.
fn walk_through(flags: &[&str]) {
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

    let server = BinServer::start(d, flags);
    let addr = server.addr.clone();
    // `letterlock client ARGS --server ADDR FLAGS`: its stdout, or with the status lines too.
    let run = |args: &[&str], with_status: bool| {
        let mut all = vec!["client"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &addr]);
        all.extend_from_slice(flags);
        if with_status {
            ok_text(d, &all)
        } else {
            ok(d, &all)
        }
    };
    let client = |args: &[&str]| run(args, false);
    let client_with_status = |args: &[&str]| run(args, true);

    for mode in ["asymmetric", "hybrid"] {
        let text = format!("hello from the client in {mode} mode");
        let out = client(&["send_msg", &text, "--mode", mode]);
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
        let got = client_with_status(&["recv_msg"]);
        assert!(got.contains("reply from the server"), "{got}");
        assert!(got.contains(mode), "{got}");
        // Already delivered: a second recv_msg finds nothing.
        let again = client_with_status(&["recv_msg"]);
        assert!(again.contains("no messages"), "{again}");
    }
    // On version 2 the client kept its TLS handshake key beside its private key, readable by
    // its owner only (PROTOCOL.md, "The handshake key cache"); the bare wire has no TLS.
    let cache = d.join("client_handshake.pem");
    if flags.contains(&"--plain-v1") {
        assert!(!cache.exists());
    } else {
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read_to_string(&cache).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{text}");
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let inbox = ok(d, &["server", "inbox", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&inbox).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let id = rows[0]["id"].as_str().unwrap();
    let text = ok(d, &["server", "read", &id[..10]]);
    assert!(text.starts_with("hello from the client"), "{text}");
    drop(server);
}

/// The walk-through as a newcomer types it: protocol version 2, TLS 1.3, no flag.
#[test]
fn the_original_walk_through_works_in_one_folder() {
    walk_through(&[]);
}

/// The bare version 1 wire, kept for class, works with the flag on both ends.
#[test]
fn the_walk_through_runs_on_the_plain_v1_wire_with_the_flag_on_both_ends() {
    walk_through(&["--plain-v1"]);
}

/// A folder with both key pairs, and a running server started with `flags`.
fn folder_with_server(flags: &[&str]) -> (tempfile::TempDir, BinServer, String) {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["server", "generate_key_pair", "--bits", "2048"],
    );
    ok(
        dir.path(),
        &["client", "generate_key_pair", "--bits", "2048"],
    );
    let server = BinServer::start(dir.path(), flags);
    let addr = server.addr.clone();
    (dir, server, addr)
}

/// No silent fallback: a client and a server on different versions fail, and the error names
/// the flag that makes them agree.
#[test]
fn a_version_mismatch_fails_and_names_the_flag() {
    // A version 2 client (the default) and a --plain-v1 server: the first byte back is not
    // TLS, so it fails at once.
    let (dir, server, addr) = folder_with_server(&["--plain-v1"]);
    let d = dir.path();
    for cmd in [&["send_msg", "hi"][..], &["recv_msg"]] {
        let mut args = vec!["client"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--server", &addr]);
        fails_saying(d, &args, &["speaks the plain version 1 wire", "--plain-v1"]);
    }
    drop(server);
    // A --plain-v1 client and a version 2 server: the server waits for a TLS ClientHello and
    // the client for a version 1 Hello, until the client's --timeout.
    let server = BinServer::start(d, &[]);
    let addr = server.addr.clone();
    for cmd in [&["send_msg", "hi"][..], &["recv_msg"]] {
        let mut args = vec!["client"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--server", &addr, "--plain-v1", "--timeout", "1"]);
        fails_saying(
            d,
            &args,
            &[
                "no version 1 Hello",
                "within 1 second",
                "waits for a TLS handshake",
                "drop --plain-v1",
            ],
        );
    }
    // Nothing was delivered either way.
    let inbox = ok(d, &["server", "inbox", "--json"]);
    assert_eq!(inbox.trim(), "[]");
}

/// A listener that closes every connection before a byte, as a busy or stopping server does,
/// and as a proxy or load balancer does when its server is not running: the error does not
/// claim the server is busy (found by a trial run, through `intercept` to a dead upstream).
#[test]
fn a_connection_closed_before_the_handshake_is_not_only_called_busy() {
    let (dir, server, _) = folder_with_server(&[]);
    drop(server);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    fails_saying(
        dir.path(),
        &[
            "client",
            "send_msg",
            "--server",
            &addr,
            "--timeout",
            "1",
            "hi",
        ],
        &[
            "turned the connection away",
            "a proxy or load balancer whose server is not running",
            "--timeout SECONDS",
        ],
    );
}

/// `--require-pq` serves letterlock clients (they always offer X25519MLKEM768), and makes no
/// sense on the plain wire.
#[test]
fn a_server_requiring_post_quantum_key_exchange_serves_the_walk_through() {
    let (dir, server, addr) = folder_with_server(&["--require-pq"]);
    let d = dir.path();
    let out = ok(
        d,
        &["client", "send_msg", "post-quantum", "--server", &addr],
    );
    assert!(out.contains("delivered"), "{out}");
    drop(server);
    fails_with(
        d,
        &[
            "server",
            "--require-pq",
            "--plain-v1",
            "--listen",
            "127.0.0.1:0",
        ],
        "cannot be used with",
    );
    let help = ok(d, &["server", "--help"]);
    assert!(help.contains("--require-pq"), "{help}");
    assert!(help.contains("fake deliveries"), "{help}");
    let help = ok(d, &["client", "send_msg", "--help"]);
    assert!(help.contains("fake deliveries"), "{help}");
}

/// A full server turns the CLI client away; the client says it is retrying, with the attempt
/// and the wait, and is served once the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_msg_retries_a_busy_server_and_says_so() {
    use std::io::BufRead;
    use std::sync::Arc;
    let (dir, server, addr) = folder_with_server(&["--max-connections", "1"]);
    let d = dir.path().to_owned();
    // Holds the only slot: a real client of the server.
    let identity: Arc<dyn letterlock::keys::Identity> =
        Arc::new(letterlock::keys::load_private(&d.join("client_private.pem")).unwrap());
    let server_key = letterlock::keys::load_public(&d.join("server_public.pem")).unwrap();
    let holder = letterlock::client::Client::connect_tls(
        &addr,
        identity,
        server_key,
        letterlock::client::ClientConfig::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut child = Command::new(common::BIN)
        .args(["client", "send_msg", "after the wait", "--server", &addr])
        .current_dir(&d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read stderr until the first retry is announced, then free the slot.
    let (announced, retry) = tokio::sync::oneshot::channel::<String>();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines().map(Result::unwrap);
        let first = lines.by_ref().find(|l| l.contains("retrying"));
        if let Some(line) = first {
            let _ = announced.send(line);
        }
        lines.collect::<Vec<String>>()
    });
    let first = retry.await.expect("no retry announced on stderr");
    holder.close().await.unwrap();
    let stderr = reader.await.unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{first}\n{stderr:?}");
    assert!(stdout.contains("delivered"), "{stdout}");
    assert!(first.contains("attempt 2, waiting "), "{first}");
    assert!(
        first.contains(" millisecond") || first.contains(" second"),
        "{first}"
    );
    drop(server);
}

/// `letterlock ARGS` fails saying `expected`.
fn fails_with(dir: &Path, args: &[&str], expected: &str) {
    fails_saying(dir, args, &[expected]);
}

/// `letterlock ARGS` fails saying each of `expected` (one run: some failures wait for a timeout).
fn fails_saying(dir: &Path, args: &[&str], expected: &[&str]) {
    let stderr = assert_fails(args, &letterlock(dir, args));
    for expected in expected {
        assert!(
            stderr.contains(expected),
            "letterlock {args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
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
    // A file of two keys is not read as its first (found by a trial run: `cat alice bob` sealed
    // to alice alone).
    let two = [
        std::fs::read_to_string(d.join("alice_public.pem")).unwrap(),
        std::fs::read_to_string(d.join("bob_public.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("two_public.pem"), two).unwrap();
    let refused = [
        "2 PEM blocks, and a key file holds one key",
        "a file of its own",
    ];
    fails_saying(
        d,
        &[
            "seal",
            "--from",
            "alice_private.pem",
            "--to",
            "two_public.pem",
            "m.txt",
        ],
        &refused,
    );
    fails_saying(d, &["fingerprint", "two_public.pem"], &refused);
    // Nor when the first has no final newline, so the second BEGIN follows an END on its line
    // (found by a review); a private key so hidden is refused as one.
    let alice = std::fs::read_to_string(d.join("alice_public.pem")).unwrap();
    let joined = |second: &str| {
        let second = std::fs::read_to_string(d.join(second)).unwrap();
        std::fs::write(d.join("joined.pem"), [alice.trim_end(), &second].concat()).unwrap();
    };
    joined("bob_public.pem");
    fails_with(d, &["fingerprint", "joined.pem"], refused[0]);
    joined("bob_private.pem");
    fails_with(
        d,
        &[
            "seal",
            "--from",
            "alice_private.pem",
            "--to",
            "joined.pem",
            "m.txt",
        ],
        "found a `PRIVATE KEY` PEM block",
    );
    fails_with(
        d,
        &[
            "open",
            "-i",
            "bob_private.pem",
            "--from",
            "two_public.pem",
            "m.ll",
        ],
        refused[0],
    );
    // An existing output file is not replaced without --force.
    bob_open_fails_with(d, &["-o", "m.txt", "m.ll"], "pass --force");
    // A folder is not an output file, and the error says what -o takes.
    bob_open_fails_with(d, &["-o", ".", "--force", "m.ll"], "is a folder");
    bob_open_fails_with(d, &["-o", ".", "m.ll"], "leave -o out to write to stdout");
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
        "no port: give HOST:PORT",
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

/// A folder with alice's and bob's fixed 2048-bit keys, as keygen names them.
fn alice_and_bob() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["alice", "bob"] {
        let key = format!("{name}2048");
        common::cli::put_private(dir.path(), &key, &format!("{name}_private.pem"));
        common::cli::put_public(dir.path(), &key, &format!("{name}_public.pem"));
    }
    dir
}

/// `letterlock seal -i alice_private.pem -r bob_public.pem ARGS` in `dir`.
fn alice_seals(dir: &Path, args: &[&str]) -> std::process::Output {
    letterlock(dir, &[&ALICE_SEALS[..], args].concat())
}

/// `letterlock open -i bob_private.pem --from alice_public.pem ARGS` in `dir`.
fn bob_opens(dir: &Path, args: &[&str]) -> std::process::Output {
    letterlock(dir, &[&BOB_OPENS[..], args].concat())
}

/// The command line of [`alice_seals`], before its own arguments.
const ALICE_SEALS: [&str; 5] = ["seal", "-i", "alice_private.pem", "-r", "bob_public.pem"];
/// The command line of [`bob_opens`], before its own arguments.
const BOB_OPENS: [&str; 5] = [
    "open",
    "-i",
    "bob_private.pem",
    "--from",
    "alice_public.pem",
];

/// A named pipe at `path`, and a thread that reads it whole once a writer opens it.
fn fifo_reader(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let made = Command::new("mkfifo").arg(path).status();
    assert!(made.unwrap().success(), "mkfifo is needed for this test");
    let path = path.to_owned();
    std::thread::spawn(move || std::fs::read(path).unwrap())
}

#[test]
fn a_one_byte_message_is_one_byte() {
    let dir = alice_and_bob();
    let d = dir.path();
    std::fs::write(d.join("one.txt"), "x").unwrap();
    let out = alice_seals(d, &["-o", "one.ll", "one.txt"]);
    let said = common::cli::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("sealed 1 byte (hybrid mode)"), "{said}");
    let out = bob_opens(d, &["one.ll"]);
    let said = common::cli::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("verified: 1 byte from"), "{said}");
    assert!(!said.contains("1 bytes"), "{said}");
}

/// Sealed output is not secret: a device or a named pipe gets it as it is written, and stays
/// what it was (as root, a rename once turned /dev/null into a regular file).
#[test]
fn seal_writes_straight_to_a_device_or_a_pipe() {
    let dir = alice_and_bob();
    let d = dir.path();
    std::fs::write(d.join("m.txt"), "to a device").unwrap();
    let out = alice_seals(d, &["-o", "/dev/null", "m.txt"]);
    assert!(out.status.success(), "{}", common::cli::text(&out));
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // /dev/stdout, a pipe here: what it got opens.
    let out = alice_seals(d, &["-o", "/dev/stdout", "m.txt"]);
    assert!(out.status.success(), "{}", common::cli::text(&out));
    std::fs::write(d.join("from_stdout.ll"), &out.stdout).unwrap();
    let opened = bob_opens(d, &["from_stdout.ll"]);
    assert_eq!(
        opened.stdout,
        b"to a device",
        "{}",
        common::cli::text(&opened)
    );
    // A FIFO, armored: its reader gets the message.
    let pipe = d.join("fifo");
    let reader = fifo_reader(&pipe);
    let out = alice_seals(d, &["-a", "-o", "fifo", "m.txt"]);
    assert!(out.status.success(), "{}", common::cli::text(&out));
    let got = reader.join().unwrap();
    assert!(
        got.starts_with(b"-----BEGIN"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    std::fs::write(d.join("from_fifo.ll"), &got).unwrap();
    let opened = bob_opens(d, &["from_fifo.ll"]);
    assert_eq!(
        opened.stdout,
        b"to a device",
        "{}",
        common::cli::text(&opened)
    );
    assert!(
        std::fs::symlink_metadata(&pipe)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A folder and a socket are still refused, saying so.
    let out = alice_seals(d, &["-o", ".", "--force", "m.txt"]);
    let err = assert_fails(&["seal", "-o", "."], &out);
    assert!(err.contains(". is a folder"), "{err}");
    let _socket = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let out = alice_seals(d, &["-o", "sock", "--force", "m.txt"]);
    let err = assert_fails(&["seal", "-o", "sock"], &out);
    assert!(err.contains("sock is not a regular file"), "{err}");
    assert!(err.contains("leave -o out to write to stdout"), "{err}");
    assert!(
        std::fs::symlink_metadata(d.join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
}

/// `-o /dev/stdout` is stdout, also when the shell sent stdout to a file: written in place,
/// not refused as a file to replace (found by a trial run).
#[test]
fn dash_o_dev_stdout_writes_to_a_file_stdout_was_redirected_to() {
    let dir = alice_and_bob();
    let d = dir.path();
    std::fs::write(d.join("m.txt"), "through a redirect").unwrap();
    let redirected = |name: &str, args: &[&str]| {
        let file = std::fs::File::create(d.join(name)).unwrap();
        let out = Command::new(common::BIN)
            .args(args)
            .current_dir(d)
            .stdout(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            common::cli::text(&out)
        );
        std::fs::read(d.join(name)).unwrap()
    };
    let sealed = redirected(
        "sealed.ll",
        &[&ALICE_SEALS[..], &["-o", "/dev/stdout", "m.txt"]].concat(),
    );
    assert!(!sealed.is_empty());
    let opened = redirected(
        "opened.txt",
        &[&BOB_OPENS[..], &["-o", "/dev/stdout", "sealed.ll"]].concat(),
    );
    assert_eq!(opened, b"through a redirect");
}

/// `-o /dev/stderr` is stderr, also when the shell sent stderr to a file: written in place on
/// it, as `-o /dev/stdout` is (found by a trial run: it was refused as a file that exists).
#[test]
fn dash_o_dev_stderr_writes_to_a_file_stderr_was_redirected_to() {
    let dir = alice_and_bob();
    let d = dir.path();
    std::fs::write(d.join("m.txt"), "to stderr").unwrap();
    // `letterlock ARGS -o /dev/stderr 2> NAME`: its exit status and what NAME holds.
    let to_stderr = |args: &[&str], name: &str| {
        let file = std::fs::File::create(d.join(name)).unwrap();
        let out = Command::new(common::BIN)
            .args([args, &["-o", "/dev/stderr"]].concat())
            .env_remove("RUST_LOG")
            .current_dir(d)
            .stderr(file)
            .output()
            .unwrap();
        (out.status.success(), std::fs::read(d.join(name)).unwrap())
    };
    // The content alone, with no status line beside it (as if -q): a sealed message written
    // there opens (found by a trial run: "sealed … bytes" followed it, and it did not open).
    let (ok, sealed) = to_stderr(&[&ALICE_SEALS[..], &["m.txt"]].concat(), "m.ll");
    assert!(ok, "{}", String::from_utf8_lossy(&sealed));
    let (ok, opened) = to_stderr(&[&BOB_OPENS[..], &["m.ll"]].concat(), "err.txt");
    assert!(ok, "{}", String::from_utf8_lossy(&opened));
    assert_eq!(opened, b"to stderr");
}

/// Plaintext to a device or a named pipe is held until the signature at the end is verified,
/// as for stdout: a reader there never gets unverified plaintext, and a message that fails
/// leaves it nothing.
#[test]
fn open_writes_to_a_device_or_a_pipe_only_once_verified() {
    let dir = alice_and_bob();
    let d = dir.path();
    std::fs::write(d.join("m.txt"), "verified first").unwrap();
    assert!(alice_seals(d, &["-o", "m.ll", "m.txt"]).status.success());
    let out = bob_opens(d, &["-o", "/dev/null", "m.ll"]);
    assert!(out.status.success(), "{}", common::cli::text(&out));
    let out = bob_opens(d, &["-o", "/dev/stdout", "m.ll"]);
    assert_eq!(out.stdout, b"verified first", "{}", common::cli::text(&out));
    let reader = fifo_reader(&d.join("fifo"));
    let out = bob_opens(d, &["-o", "fifo", "m.ll"]);
    assert!(out.status.success(), "{}", common::cli::text(&out));
    assert_eq!(reader.join().unwrap(), b"verified first");
    // The last byte (inside the signature) changed: refused, and the reader got nothing.
    let mut sealed = std::fs::read(d.join("m.ll")).unwrap();
    *sealed.last_mut().unwrap() ^= 1;
    std::fs::write(d.join("bad.ll"), &sealed).unwrap();
    std::fs::remove_file(d.join("fifo")).unwrap();
    let reader = fifo_reader(&d.join("fifo"));
    let out = bob_opens(d, &["-o", "fifo", "bad.ll"]);
    let err = assert_fails(&["open", "-o", "fifo", "bad.ll"], &out);
    assert!(err.contains("failed verification"), "{err}");
    // Had open not opened the pipe at all, its reader would wait for ever: a writer that
    // writes nothing ends that wait (it fails, harmlessly, if the reader is gone).
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(d.join("fifo"));
    assert_eq!(reader.join().unwrap(), b"");
}
