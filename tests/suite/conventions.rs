//! The conventions users bring from age, gpg and ssh, through the binary (issue 11): stdin for
//! `send_msg`, `-o -`, short flags, kebab-case aliases, `--version` on subcommands, `-q`/`-v`,
//! `--json`, exit codes in `--help`, configuration from the environment, completions and the
//! man page, and the server's plaintext logging default.

use crate::common;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::BIN;
use common::cli::{BinServer, put_private, put_public};

/// Runs `letterlock ARGS` with `stdin` as its input.
fn run_with_input(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("LETTERLOCK_KEYS")
        .env_remove("LETTERLOCK_SERVER")
        .env_remove("LETTERLOCK_STORE")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_with_input(args, b"", &[])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A server folder (bob2048 as the server, trusting alice2048 as `client`) and a client folder
/// (alice2048, pinning bob2048).
struct Folders {
    _dir: tempfile::TempDir,
    server: PathBuf,
    client: PathBuf,
    store: PathBuf,
}

fn folders() -> Folders {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    let client = dir.path().join("client");
    std::fs::create_dir(&server).unwrap();
    put_private(&server, "bob2048", "server_private.pem");
    put_public(&server, "bob2048", "server_public.pem");
    put_public(&server, "alice2048", "client_public.pem");
    std::fs::create_dir(&client).unwrap();
    put_private(&client, "alice2048", "client_private.pem");
    put_public(&client, "alice2048", "client_public.pem");
    put_public(&client, "bob2048", "server_public.pem");
    let store = dir.path().join("server.db");
    Folders {
        _dir: dir,
        server,
        client,
        store,
    }
}

/// A running `letterlock server`, killed when dropped; its log (stderr) goes to a file.
struct Server {
    addr: String,
    log: PathBuf,
    _server: BinServer,
}

impl Server {
    fn start(f: &Folders, flags: &[&str]) -> Server {
        let log = f.server.with_file_name("server.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--listen", "127.0.0.1:0"])
            .arg("--keys")
            .arg(&f.server)
            .arg("--store")
            .arg(&f.store)
            .args(flags);
        let server = BinServer::spawn_logging(cmd, &log);
        Server {
            addr: server.addr.clone(),
            log,
            _server: server,
        }
    }

    /// The server's log once it holds a "received" line (the line is written around the
    /// delivery; polled, with a bound only against a hang).
    fn log_after_receipt(&self) -> String {
        for _ in 0..600 {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("received") {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "no \"received\" line in the server log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// `client send_msg ARGS --keys CLIENT --server ADDR` with `stdin`.
fn send(f: &Folders, server: &Server, args: &[&str], stdin: &[u8]) -> Output {
    let keys = f.client.to_str().unwrap();
    let mut all = vec!["client", "send_msg"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--keys", keys, "--server", &server.addr]);
    run_with_input(&all, stdin, &[])
}

/// The plaintext of message `id` in the server's store.
fn server_read(f: &Folders, id: &str) -> Vec<u8> {
    let out = run(&[
        "server",
        "read",
        id,
        "--keys",
        f.server.to_str().unwrap(),
        "--store",
        f.store.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "server read: {}", stderr(&out));
    out.stdout
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn send_msg_reads_stdin_without_text_or_with_a_dash_and_says_so_in_json() {
    let f = folders();
    let server = Server::start(&f, &[]);
    for (args, input) in [
        (&["--json"][..], &b"from stdin, no TEXT"[..]),
        (&["--json", "-"][..], &b"from stdin, TEXT is -"[..]),
        (&["--json", "--file", "-"][..], &b"from stdin, --file -"[..]),
    ] {
        let out = ok(send(&f, &server, args, input));
        let v = json(&out);
        assert_eq!(v["delivered"], true, "{out}");
        assert_eq!(v["bytes"], input.len() as u64, "{out}");
        assert_eq!(v["mode"], "hybrid", "{out}");
        let id = v["id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{out}");
        // What the server stored is what stdin held, not the one-character message "-".
        assert_eq!(server_read(&f, id), input);
    }
    // TEXT itself still works, and wins over stdin.
    let out = ok(send(&f, &server, &["--json", "typed"], b"ignored"));
    let id = json(&out)["id"].as_str().unwrap().to_owned();
    assert_eq!(server_read(&f, &id), b"typed");
}

/// TEXT that names an existing file is still sent as text (the classroom's `send_msg "text"`),
/// with a note that `--file` sends the file; an empty message is sent too, with a note. Both
/// notes are status lines: -q leaves them out.
#[test]
fn send_msg_notes_a_text_that_names_a_file_and_an_empty_message() {
    let f = folders();
    let server = Server::start(&f, &[]);
    let file = f.client.join("a.txt");
    std::fs::write(&file, b"the file's contents").unwrap();
    let name = file.to_str().unwrap();
    let out = send(&f, &server, &["--json", name], b"");
    let v = json(&ok(out.clone()));
    assert_eq!(server_read(&f, v["id"].as_str().unwrap()), name.as_bytes());
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "note: sending the text \"{name}\" itself as the message, not the file"
        )),
        "{said}"
    );
    assert!(said.contains(&format!("use --file \"{name}\"")), "{said}");
    assert!(!said.contains("empty"), "{said}");
    // Text that names no file, and -q: no note.
    for args in [&["not a file name"][..], &["-q", name]] {
        let out = send(&f, &server, args, b"");
        ok(out.clone());
        assert!(
            !stderr(&out).contains("note:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // Empty: TEXT "", stdin that ends at once, an empty file.
    std::fs::write(f.client.join("empty.txt"), b"").unwrap();
    let empty_file = f.client.join("empty.txt");
    for (args, input) in [
        (&[""][..], &b"ignored"[..]),
        (&[][..], &b""[..]),
        (&["--file", empty_file.to_str().unwrap()][..], &b""[..]),
    ] {
        let out = send(&f, &server, args, input);
        let said = stderr(&out);
        assert!(ok(out).contains("stored 0 bytes"), "{args:?}");
        assert!(
            said.contains("note: the message was empty (0 bytes"),
            "{args:?}: {said}"
        );
    }
    let out = send(&f, &server, &["-q", ""], b"");
    assert!(!stderr(&out).contains("note:"), "{}", stderr(&out));
    ok(out);
}

/// A message over an asymmetric-mode limit, the command's own or the server's, is refused with
/// the hint to send it in hybrid mode; `server send_msg` gives it too.
#[test]
fn a_message_over_the_asymmetric_limit_gets_the_hint_to_use_hybrid_mode() {
    let f = folders();
    let server = Server::start(&f, &["--max-asymmetric", "100"]);
    let out = send(
        &f,
        &server,
        &["--mode", "asymmetric", "--max-asymmetric", "4", "too long"],
        b"",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("larger than the asymmetric-mode limit of 4 bytes"),
        "{err}"
    );
    assert!(
        err.contains("hint: use --mode hybrid for large messages"),
        "{err}"
    );
    // A file over the limit: refused before anything is sent, naming the file and its size,
    // and in JSON too.
    let file = f.client.join("over.txt");
    std::fs::write(&file, "x".repeat(10)).unwrap();
    let file = file.to_str().unwrap();
    let args = [
        "--mode",
        "asymmetric",
        "--max-asymmetric",
        "4",
        "--json",
        "--file",
        file,
    ];
    let out = send(&f, &server, &args, b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{file} is 10 bytes")), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["delivered"], false, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("is 10 bytes"),
        "{json}"
    );
    // The server's limit.
    let long = "x".repeat(200);
    let out = send(&f, &server, &["--mode", "asymmetric", &long], b"");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("code 6, too large"), "{err}");
    assert!(
        err.contains("hint: the server refuses messages this large"),
        "{err}"
    );
    assert!(err.contains("--mode hybrid"), "{err}");
    // `server send_msg` (which has no --max-asymmetric).
    let big = f.server.join("big.bin");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    let out = run(&[
        "server",
        "send_msg",
        "--to",
        "client",
        "--mode",
        "asymmetric",
        "--file",
        big.to_str().unwrap(),
        "--keys",
        f.server.to_str().unwrap(),
        "--store",
        f.store.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("asymmetric-mode limit"), "{err}");
    assert!(
        err.contains("hint: use --mode hybrid for large messages\n"),
        "{err}"
    );
}

/// `server send_msg --to` a name it does not trust lists the names it does, as plain text.
#[test]
fn server_send_msg_to_an_unknown_name_lists_the_trusted_names_as_text() {
    let f = folders();
    // The mailbox, with client_public.pem imported as "client".
    let _server = Server::start(&f, &[]);
    let server_cmd = |to: &str| {
        run(&[
            "server",
            "send_msg",
            "--to",
            to,
            "hi",
            "--keys",
            f.server.to_str().unwrap(),
            "--store",
            f.store.to_str().unwrap(),
        ])
    };
    let out = server_cmd("nobody");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no trusted client named \"nobody\" (trusted: client); add one"),
        "{err}"
    );
    assert!(!err.contains('['), "{err}");
    ok(server_cmd("client"));
}

#[test]
fn send_msg_json_says_not_delivered_when_it_fails() {
    let f = folders();
    // Nothing listens on the port of a listener just closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("127.0.0.1:{port}");
    let out = run_with_input(
        &[
            "client",
            "send_msg",
            "--json",
            "hi",
            "--timeout",
            "1",
            "--keys",
            f.client.to_str().unwrap(),
            "--server",
            &server,
        ],
        b"",
        &[],
    );
    assert!(!out.status.success());
    // A connection failure is an error before anything is sent: the error is on stderr, and
    // stdout still gives a script its answer.
    let answer = json(stdout(&out).trim());
    assert_eq!(answer["delivered"], false, "{}", stdout(&out));
    assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(!stderr(&out).is_empty());
}

/// `send_msg` parses its private key on the thread that signs the message, while it connects
/// (`LazyPrivateKey`), when its TLS handshake key comes from the cache. A key that turns out
/// damaged, or not the pair of client_public.pem, still fails the command with the error
/// loading it gives, said once, before the server stores anything.
#[test]
fn send_msg_refuses_a_damaged_key_or_one_that_is_not_its_public_files_pair() {
    let f = folders();
    let server = Server::start(&f, &[]);
    let cached = f.client.join("client_handshake.pem");
    let received = || {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .matches("received")
            .count()
    };
    // Once sent, the client's TLS handshake key is in its cache: the handshake then needs only
    // client_public.pem, and the private key is first parsed by the signing thread.
    let first = ok(send(&f, &server, &["--json", "first"], b""));
    assert_eq!(json(&first)["delivered"], true, "{first}");
    assert!(cached.exists());
    let before = received();
    // The command fails with `words`, said once, and with nothing else on stderr.
    let refused = |out: &Output, words: &str| {
        assert!(!out.status.success(), "sent: {}", stdout(out));
        assert_eq!(json(&stdout(out))["delivered"], false, "{}", stdout(out));
        let err = stderr(out);
        assert_eq!(err.matches(words).count(), 1, "{err}");
        assert!(
            !err.contains("NOT delivered") && !err.contains("ERROR"),
            "{err}"
        );
    };

    let private = f.client.join("client_private.pem");
    let good = std::fs::read_to_string(&private).unwrap();
    std::fs::write(&private, good.replacen("MII", "MIJ", 1)).unwrap();
    let loading = run(&["fingerprint", private.to_str().unwrap()]);
    assert!(!loading.status.success(), "the damaged key still parses");
    // The words of loading the key at the start (as `fingerprint` reads it), naming the file.
    let cause = stderr(&loading).lines().next().unwrap().to_owned();
    let cause = cause.rsplit(": ").next().unwrap();
    refused(&send(&f, &server, &["--json", "damaged"], b""), cause);
    // Without a kept handshake key, the key is loaded first, as before: the same error.
    std::fs::rename(&cached, f.client.join("kept.pem")).unwrap();
    refused(
        &send(&f, &server, &["--json", "damaged, no cache"], b""),
        cause,
    );
    std::fs::rename(f.client.join("kept.pem"), &cached).unwrap();

    // Another key in client_private.pem, beside alice's public key and handshake key: the
    // handshake goes through as alice, and the signing thread refuses to sign.
    put_private(&f.client, "mallory", "client_private.pem");
    let out = send(&f, &server, &["--json", "not alice"], b"");
    refused(&out, "is not the private key of");
    assert!(
        stderr(&out).contains("openssl pkey -in"),
        "no hint: {}",
        stderr(&out)
    );
    assert_eq!(
        received(),
        before,
        "the server stored a message it should never have had"
    );
    // Without the kept key, mallory's key is loaded first and the server refuses it: the
    // error says the two files are not a pair, not to trust client_public.pem (alice's, which
    // the server trusts already).
    std::fs::rename(&cached, f.client.join("kept.pem")).unwrap();
    let out = send(&f, &server, &["not alice, no cache"], b"");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the two files are not a pair"), "{err}");
    assert!(err.contains("openssl pkey -in"), "{err}");
    std::fs::rename(f.client.join("kept.pem"), &cached).unwrap();

    // A client_public.pem that is not alice's leaves the kept key unused (it is alice's), and
    // the key is loaded first: sending works as it did before the files were read lazily.
    std::fs::write(&private, &good).unwrap();
    put_public(&f.client, "bob2048", "client_public.pem");
    ok(send(&f, &server, &["public file of another key"], b""));
    std::fs::remove_file(f.client.join("client_public.pem")).unwrap();
    ok(send(&f, &server, &["without the public key file"], b""));
    put_public(&f.client, "alice2048", "client_public.pem");
    ok(send(&f, &server, &["put right"], b""));
    assert_eq!(received(), before + 3);
}

#[test]
fn the_environment_gives_server_keys_and_store() {
    let f = folders();
    let server = Server::start(&f, &[]);
    let env = [
        ("LETTERLOCK_SERVER", server.addr.as_str()),
        ("LETTERLOCK_KEYS", f.client.to_str().unwrap()),
    ];
    let out = ok(run_with_input(
        &["client", "send-msg", "--json", "by the environment"],
        b"",
        &env,
    ));
    let id = json(&out)["id"].as_str().unwrap().to_owned();
    let env = [
        ("LETTERLOCK_KEYS", f.server.to_str().unwrap()),
        ("LETTERLOCK_STORE", f.store.to_str().unwrap()),
    ];
    let out = ok(run_with_input(&["server", "read", &id], b"", &env));
    assert_eq!(out, "by the environment");
    // And `--help` says which variable sets which flag.
    let help = ok(run(&["client", "send_msg", "--help"]));
    assert!(help.contains("[env: LETTERLOCK_SERVER="), "{help}");
    assert!(help.contains("[env: LETTERLOCK_KEYS="), "{help}");
    let help = ok(run(&["server", "--help"]));
    assert!(help.contains("[env: LETTERLOCK_STORE="), "{help}");
    // A bad value from the environment is said to come from there, not from a flag nobody
    // typed; the same value on the command line is not.
    let tip = "came from the environment variable LETTERLOCK_SERVER";
    let args = ["client", "contacts", "--offline"];
    let out = run_with_input(&args, b"", &[("LETTERLOCK_SERVER", "nohost")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(tip), "{}", stderr(&out));
    let out = run(&["client", "contacts", "--offline", "--server=nohost"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains(tip), "{}", stderr(&out));
}

/// `--timeout` is described for the command at hand: recv_msg's help does not talk about
/// resending a message, send_msg's and the agent's do; only recv_msg's speaks of waiting for
/// another recv_msg (found by a trial run: `client contacts --help` did too).
#[test]
fn timeout_help_describes_the_command_it_is_on() {
    for command in ["recv_msg", "send_msg", "agent", "contacts", "receipts"] {
        let help = ok(run(&["client", command, "--help"]));
        let timeout = help
            .split("--timeout <SECONDS>")
            .nth(1)
            .and_then(|rest| rest.split("--plain-v1").next())
            .unwrap_or_else(|| panic!("no --timeout in {command} --help: {help}"));
        assert!(!timeout.contains("(send_msg)"), "{command}: {timeout}");
        assert!(
            timeout.contains("retries with growing"),
            "{command}: {timeout}"
        );
        assert_eq!(
            timeout.contains("resends the same message"),
            ["send_msg", "agent"].contains(&command),
            "{command}: {timeout}"
        );
        assert_eq!(
            timeout.contains("another recv_msg on the same --keys folder"),
            command == "recv_msg",
            "{command}: {timeout}"
        );
    }
}

#[test]
fn verbose_logs_the_connection_and_quiet_leaves_only_content() {
    let f = folders();
    let server = Server::start(&f, &[]);
    let out = send(&f, &server, &["-v", "hello"], b"");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("connecting"), "{err}");
    assert!(err.contains("X25519MLKEM768"), "{err}");
    // The key ids of both ends.
    let alice = common::public("alice2048").id().to_string();
    let bob = common::public("bob2048").id().to_string();
    assert!(err.contains(&alice) && err.contains(&bob), "{err}");

    let out = send(&f, &server, &["hello"], b"");
    assert!(!stderr(&out).contains("connecting"), "{}", stderr(&out));
}

#[test]
fn seal_and_open_take_short_flags_and_dash_for_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let alice = common::private_path("alice2048");
    let bob = common::private_path("bob2048");
    let (alice, bob) = (alice.to_str().unwrap(), bob.to_str().unwrap());
    let alice_pub = common::public_path("alice2048");
    let bob_pub = common::public_path("bob2048");
    let seal = |extra: &[&str]| {
        let mut args = vec!["seal", "-a", "-i", alice, "-r", bob_pub.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"short flags")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = seal(&["-o", "-"]);
    let armored = ok(out);
    assert!(armored.starts_with("-----BEGIN"), "{armored}");
    // `-o -` is stdout: no file named "-" appeared.
    assert!(!dir.path().join("-").exists());

    let open = |extra: &[&str]| {
        let mut args = vec!["open", "-i", bob, "--from", alice_pub.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_with_input(&args, armored.as_bytes(), &[])
    };
    let out = open(&["-o", "-"]);
    assert_eq!(ok(out), "short flags");
    // The long names age and gpg use work too.
    let out = run_with_input(
        &[
            "open",
            "--identity",
            bob,
            "--from",
            alice_pub.to_str().unwrap(),
        ],
        armored.as_bytes(),
        &[],
    );
    assert_eq!(ok(out), "short flags");

    // -q: the status lines go, the content stays, errors still show.
    let loud = open(&[]);
    assert!(stderr(&loud).contains("verified"), "{}", stderr(&loud));
    let quiet = open(&["-q"]);
    assert_eq!(stderr(&quiet), "");
    assert_eq!(ok(quiet), "short flags");
    let sealed_quiet = seal(&["-q"]);
    assert_eq!(stderr(&sealed_quiet), "");
    let wrong = run_with_input(
        &[
            "open",
            "-q",
            "-i",
            alice,
            "--from",
            bob_pub.to_str().unwrap(),
        ],
        armored.as_bytes(),
        &[],
    );
    assert!(!wrong.status.success());
    assert!(!stderr(&wrong).is_empty(), "errors are shown under -q");
}

#[test]
fn kebab_case_aliases_and_version_on_every_subcommand() {
    let version = env!("CARGO_PKG_VERSION");
    for args in [
        &["client", "send-msg", "--help"][..],
        &["client", "recv-msg", "--help"],
        &["client", "generate-key-pair", "--help"],
        &["server", "send-msg", "--help"],
        &["server", "generate-key-pair", "--help"],
        &["client", "trust-server", "--help"],
    ] {
        ok(run(args));
    }
    // The snake_case names stay the ones shown.
    let help = ok(run(&["client", "--help"]));
    for name in ["send_msg", "recv_msg", "generate_key_pair"] {
        assert!(help.contains(&format!("  {name} ")), "{help}");
    }
    for args in [
        &["client", "send_msg", "--version"][..],
        &["server", "inbox", "--version"],
        &["seal", "--version"],
    ] {
        let out = ok(run(args));
        assert!(out.contains(version), "{args:?}: {out}");
        // The program's name, not clap's name for the place in the tree
        // ("letterlock-client-send_msg"), which no one can run (found by a trial run).
        assert!(out.starts_with("letterlock "), "{args:?}: {out}");
        let short = ok(run(&[&args[..args.len() - 1], &["-V"]].concat()));
        assert_eq!(short, format!("letterlock {}\n", env!("CARGO_PKG_VERSION")));
    }
}

/// The subcommands `letterlock ARGS --help` lists (the first word of each line under
/// "Commands:").
fn subcommands(args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.push("--help");
    let help = ok(run(&all));
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every subcommand of two or more words, at every level, answers to both its snake_case and
/// its kebab-case name (found by a review: `server copy-store` had no `copy_store`), and is
/// listed once, its other name as its alias.
#[test]
fn every_multi_word_subcommand_takes_both_spellings_and_is_listed_once() {
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    groups.extend(
        subcommands(&[])
            .into_iter()
            .filter(|c| c != "help")
            .map(|c| vec![c]),
    );
    let mut checked = 0;
    for group in &groups {
        let group: Vec<&str> = group.iter().map(String::as_str).collect();
        let names = subcommands(&group);
        let mut help_args = group.clone();
        help_args.push("--help");
        let help = ok(run(&help_args));
        for name in names.iter().filter(|n| n.contains(['_', '-'])) {
            let other = if name.contains('_') {
                name.replace('_', "-")
            } else {
                name.replace('-', "_")
            };
            assert!(
                !names.contains(&other),
                "{group:?}: both {name} and {other} listed"
            );
            assert!(
                help.lines().any(|l| l.starts_with(&format!("  {name} "))
                    && l.contains(&format!("[alias: {other}]"))),
                "{group:?}: {name} does not show {other} as its alias:\n{help}"
            );
            for spelling in [name, &other] {
                let mut args = group.clone();
                args.extend([spelling.as_str(), "--help"]);
                ok(run(&args));
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} multi-word subcommands found");
}

#[test]
fn keygen_takes_keys_like_every_other_command_and_out_still_works() {
    let help = ok(run(&["keygen", "--help"]));
    assert!(help.contains("--keys <KEYS>"), "{help}");
    assert!(
        !help.contains("--out <"),
        "the old name stays hidden: {help}"
    );
    // Both names parse: the only usage error is the odd size, which comes after them (an
    // unknown flag would be the error instead), and no key is made.
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--keys", "--out"] {
        let out = run(&[
            "keygen",
            "--name",
            "k",
            flag,
            dir.path().to_str().unwrap(),
            "--bits",
            "1000",
        ]);
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag}: {said}");
        assert!(said.contains("for '--bits <BITS>'"), "{flag}: {said}");
        assert!(!dir.path().join("k_private.pem").exists());
    }
}

/// A usage error shows the command's usage as its --help does, not the options given as if they
/// were required (clap's own line for a mistyped flag or a conflict), nor nothing (clap's own
/// for a missing or unparsable value), and the hint to run --help; exit status 2.
#[test]
fn a_usage_error_shows_the_usage_of_help_not_the_options_given() {
    for (args, usage) in [
        (
            &[
                "client",
                "send_msg",
                "--server",
                "127.0.0.1:1",
                "hi",
                "--fle",
                "f",
            ][..],
            "Usage: letterlock client send_msg [OPTIONS] [TEXT]\n",
        ),
        (
            &[
                "client",
                "send_msg",
                "--server",
                "127.0.0.1:1",
                "--file",
                "f",
                "hi",
            ],
            "Usage: letterlock client send_msg [OPTIONS] [TEXT]\n",
        ),
        (
            &[
                "client",
                "send_msg",
                "--server",
                "127.0.0.1:1",
                "--wait",
                "3",
                "hi",
            ],
            "Usage: letterlock client send_msg [OPTIONS] [TEXT]\n",
        ),
        (
            &["server", "inbox", "--keys", ".", "--frm", "x"],
            "Usage: letterlock server inbox [OPTIONS]\n",
        ),
        (&["--bogus"], "Usage: letterlock [OPTIONS] <COMMAND>\n"),
        // A value missing at the end, or one that does not parse.
        (
            &["seal", "--to"],
            "Usage: letterlock seal [OPTIONS] --from <PRIVATE_KEY> --to <PUBLIC_KEY> [INPUT]\n",
        ),
        (
            &["client", "send_msg", "--server"],
            "Usage: letterlock client send_msg [OPTIONS] [TEXT]\n",
        ),
        (
            &["open", "-i", "k.pem", "--from", "p.pem", "-o"],
            "Usage: letterlock open [OPTIONS] --key <PRIVATE_KEY> --from <PUBLIC_KEY> [INPUT]\n",
        ),
        (
            &["keygen", "--name", "k", "--bits", "many"],
            "Usage: letterlock keygen [OPTIONS] --name <NAME>\n",
        ),
        (
            &["seal", "--mode", "rot13"],
            "Usage: letterlock seal [OPTIONS] --from <PRIVATE_KEY> --to <PUBLIC_KEY> [INPUT]\n",
        ),
        (
            &["server", "--listen"],
            "Usage: letterlock server [OPTIONS]\n",
        ),
        (
            &["client", "sendmsg"],
            "Usage: letterlock client [OPTIONS] <COMMAND>\n",
        ),
        // Addresses and times are checked as the line is parsed (found by a trial run: these
        // exited 1, some after a hint that asked whether a server runs there).
        (
            &["client", "send_msg", "--server", "127.0.0.1", "hi"],
            "Usage: letterlock client send_msg [OPTIONS] [TEXT]\n",
        ),
        (
            &["client", "recv_msg", "--server", "127.0.0.1:99999"],
            "Usage: letterlock client recv_msg [OPTIONS]\n",
        ),
        (
            &["client", "trust-server", "localhost"],
            "Usage: letterlock client trust-server [OPTIONS] <HOST:PORT>\n",
        ),
        (
            &["server", "--listen", "127.0.0.1"],
            "Usage: letterlock server [OPTIONS]\n",
        ),
        (
            &["server", "inbox", "--since", "yesterdayish"],
            "Usage: letterlock server inbox [OPTIONS]\n",
        ),
    ] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(usage), "{args:?}: {err}");
        assert!(
            err.ends_with("\n\nFor more information, try '--help'.\n"),
            "{args:?}: {err}"
        );
        let line = err.lines().find(|l| l.starts_with("Usage:")).unwrap_or("");
        assert!(!line.contains("<SERVER>"), "{args:?}: {err}");
        assert!(!line.contains("<KEYS>"), "{args:?}: {err}");
    }
    // What clap says besides is kept: here, the missing argument.
    let err = stderr(&run(&["client", "send_msg", "--wait", "3", "hi"]));
    assert!(
        err.contains("required arguments were not provided:\n  --to <NAME>"),
        "{err}"
    );
}

/// `--passphrase-file` is not offered in the help of the commands that read no key of the
/// user's, and is still accepted there (it is global); the others still show it.
#[test]
fn passphrase_file_is_shown_only_where_a_key_is_read() {
    for command in ["demo", "man", "completions", "bench", "intercept"] {
        let help = ok(run(&[command, "--help"]));
        assert!(!help.contains("--passphrase-file"), "{command}: {help}");
    }
    for command in [
        &["seal"][..],
        &["client", "send_msg"],
        &["server"],
        &["keygen"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = ok(run(&args));
        assert!(help.contains("--passphrase-file"), "{command:?}: {help}");
    }
    for args in [
        &["completions", "bash", "--passphrase-file", "unused.txt"][..],
        &["--passphrase-file", "unused.txt", "completions", "bash"],
    ] {
        assert!(ok(run(args)).contains("_letterlock()"), "{args:?}");
    }
}

/// Every command with its path (`["client", "send_msg"]`), the top level (`[]`) first: the
/// commands `letterlock --help` lists and those each of them lists, clap's `help` left out.
fn all_commands() -> Vec<Vec<String>> {
    let mut all = vec![Vec::new()];
    for name in subcommands(&[]).into_iter().filter(|c| c != "help") {
        all.push(vec![name.clone()]);
        for sub in subcommands(&[&name]).into_iter().filter(|c| c != "help") {
            all.push(vec![name.clone(), sub]);
        }
    }
    all
}

/// Every command's help, short and long, says how it exits (found by a trial run: only the top
/// level and the commands with statuses of their own did), 2 for wrong usage included (found
/// by another: nine commands with statuses of their own left it out), and those with more
/// statuses than 0, 1 and 2 name them.
#[test]
fn exit_codes_are_documented_in_help() {
    let all = all_commands();
    assert!(
        all.len() > 30,
        "{} commands: the walk missed some",
        all.len()
    );
    for command in &all {
        for flag in ["--help", "-h"] {
            let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
            args.push(flag);
            let help = ok(run(&args));
            assert!(help.contains("Exit status"), "{args:?}:\n{help}");
            assert!(help.contains("2 wrong usage"), "{args:?}:\n{help}");
        }
    }
    let help = ok(run(&["client", "recv_msg", "--help"]));
    assert!(
        help.contains("3 a repeat") && help.contains("4 a message"),
        "{help}"
    );
    let help = ok(run(&["intercept", "--help"]));
    assert!(
        help.contains("3 with --expect, the text WAS found"),
        "{help}"
    );
    let help = ok(run(&["server", "--help"]));
    assert!(help.contains("130 interrupted a second time"), "{help}");
    let help = ok(run(&["--help"]));
    assert!(help.contains("Exit status: 0 success, 1 failure"), "{help}");
}

/// The commands a newcomer runs first show command lines to copy in --help, before the exit
/// status; -h stays short (found by a trial run: no help had an example).
#[test]
fn the_first_commands_show_examples_in_long_help() {
    for command in [
        &["seal"][..],
        &["open"],
        &["keygen"],
        &["client", "send_msg"],
        &["client", "recv_msg"],
        &["server"],
    ] {
        let long = ok(run(&[command, &["--help"]].concat()));
        let examples = long.find("\nExamples:\n  ");
        let status = long.find("Exit status");
        assert!(
            examples.is_some() && examples < status,
            "{command:?} --help:\n{long}"
        );
        let short = ok(run(&[command, &["-h"]].concat()));
        assert!(!short.contains("Examples:"), "{command:?} -h:\n{short}");
    }
}

#[test]
fn completions_are_made_from_the_command_definitions() {
    let bash = ok(run(&["completions", "bash"]));
    assert!(
        bash.contains("send_msg") && bash.contains("--keys"),
        "{bash}"
    );
    let zsh = ok(run(&["completions", "zsh"]));
    assert!(zsh.contains("#compdef letterlock"), "{zsh}");
    let fish = ok(run(&["completions", "fish"]));
    assert!(fish.contains("trust-server"), "{fish}");
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn the_man_page_is_roff_and_one_page_per_command_in_a_folder() {
    let page = ok(run(&["man"]));
    assert!(
        page.lines()
            .take(5)
            .any(|l| l.starts_with(".TH letterlock 1")),
        "{page}"
    );
    assert!(
        page.contains("send_msg") || page.contains("client"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = ok(run(&["man", "-o", dir.path().to_str().unwrap()]));
    assert_eq!(out, "");
    for name in [
        "letterlock.1",
        "letterlock-client-send_msg.1",
        "letterlock-seal.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH "), "{name}");
    }
    // The synopsis shows what --help shows: an option with its value, no internal argument
    // (found by a trial run: `[--plot]` without its FILE.svg, and bench's hidden `[CHILD]`).
    let bench = std::fs::read_to_string(dir.path().join("letterlock-bench.1")).unwrap();
    let synopsis = bench
        .split(".SH ")
        .find(|s| s.starts_with("SYNOPSIS"))
        .unwrap_or_else(|| panic!("no synopsis: {bench}"));
    assert!(
        synopsis.contains(r"[\fB\-\-plot\fR \fIFILE.svg\fR]"),
        "{synopsis}"
    );
    assert!(
        !synopsis.contains("CHILD") && !synopsis.contains("measure"),
        "{synopsis}"
    );
    assert!(!bench.contains("CHILD"), "{bench}");
    // Every page is ASCII (troff reads Latin-1: the help texts' "…" drew warnings), and where
    // groff is installed, it reads every page without a warning.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let page = entry.unwrap().file_name().into_string().unwrap();
        let text = std::fs::read_to_string(dir.path().join(&page)).unwrap();
        assert!(text.is_ascii(), "{page} is not ASCII");
        let groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.path().join(&page))
            .output();
        if let Ok(g) = groff {
            assert!(
                g.status.success(),
                "{page}: {}",
                String::from_utf8_lossy(&g.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&g.stderr), "", "{page}");
        }
        // The escape groff reads back as the character.
        if page == "letterlock-fingerprint.1" {
            assert!(text.contains(r"SHA256:\[u2026]"), "{text}");
        }
        // The sections of a manual page, not clap_mangen's "EXTRA" (found by a trial run).
        assert!(text.contains(".SH \"EXIT STATUS\"\n"), "{page}: {text}");
        assert!(!text.contains(".SH EXTRA"), "{page}: {text}");
    }
    let top = std::fs::read_to_string(dir.path().join("letterlock.1")).unwrap();
    assert!(top.contains(".SH ENVIRONMENT\nLETTERLOCK_SERVER"), "{top}");
    // Examples one per line, not run together into a paragraph.
    let send = std::fs::read_to_string(dir.path().join("letterlock-client-send_msg.1")).unwrap();
    assert!(
        send.contains(".SH EXAMPLES\n.nf\nletterlock client send_msg \"hello\"\n"),
        "{send}"
    );
}

#[test]
fn the_server_logs_message_text_only_on_a_terminal_unless_told() {
    const TEXT: &str = "the text of a short message";
    // Its log (stderr) is a file here, as in a service's journal: no text by default.
    for (flags, logged) in [
        (&[][..], false),
        (&["--log-text"][..], true),
        (&["--no-log-text"][..], false),
    ] {
        let f = folders();
        let server = Server::start(&f, flags);
        ok(send(&f, &server, &[TEXT], b""));
        let log = server.log_after_receipt();
        assert_eq!(log.contains(TEXT), logged, "{flags:?}:\n{log}");
    }
    // Both at once is a usage error.
    let out = run(&["server", "--log-text", "--no-log-text"]);
    assert_eq!(out.status.code(), Some(2));
}

/// On a terminal (a pseudo-terminal from util-linux `script`), a bare
/// `send_msg` says it reads until Ctrl-D, and sends what was typed.
#[test]
fn on_a_terminal_send_msg_says_it_reads_until_ctrl_d() {
    require_script();
    let f = folders();
    let server = Server::start(&f, &[]);
    let command = format!(
        "{BIN} client send_msg --json --keys {} --server {}",
        f.client.display(),
        server.addr
    );
    // Typed: one line, then Ctrl-D (EOT) at the start of the next.
    let out = run_script(&command, b"typed on a terminal\n\x04");
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{all}");
    assert!(all.contains("then Ctrl-D"), "{all}");
    let line = all
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{all}"));
    let v = json(line);
    assert_eq!(v["delivered"], true, "{all}");
    let id = v["id"].as_str().unwrap();
    assert_eq!(server_read(&f, id), b"typed on a terminal\n");
}

/// On a terminal, `seal` and `open` without INPUT say what they wait for (found by a trial run:
/// both waited without a word), and read what is typed or pasted up to Ctrl-D.
#[test]
fn on_a_terminal_seal_and_open_say_they_read_until_ctrl_d() {
    require_script();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = |f: fn(&str) -> PathBuf, name: &str| f(name).display().to_string();
    let sealed = d.join("typed.ll");
    let command = format!(
        "{BIN} seal --armor -i {} -r {} -o {}",
        key(common::private_path, "alice2048"),
        key(common::public_path, "bob2048"),
        sealed.display()
    );
    let out = run_script(&command, b"typed on a terminal\n\x04");
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("type the message to seal, then Ctrl-D"),
        "{all}"
    );
    let mut pasted = std::fs::read(&sealed).unwrap();
    pasted.push(0x04);
    let opened = d.join("typed.txt");
    let command = format!(
        "{BIN} open -i {} --from {} -o {}",
        key(common::private_path, "bob2048"),
        key(common::public_path, "alice2048"),
        opened.display()
    );
    let out = run_script(&command, &pasted);
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{all}");
    assert!(all.contains("paste the armored message"), "{all}");
    assert_eq!(std::fs::read(&opened).unwrap(), b"typed on a terminal\n");

    // Pasted with a mail's first lines before it, which a terminal hands over line by line:
    // the line it starts at is still found.
    let mut mail = b"From: alice\n\n".to_vec();
    mail.extend_from_slice(&pasted);
    std::fs::remove_file(&opened).unwrap();
    let out = run_script(&command, &mail);
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("an armored message starts at line 3, after other text"),
        "{all}"
    );
    assert!(!opened.exists(), "{all}");
}

/// Armor cut short is a damaged message, said as one, not "I/O error"; armor pasted with text
/// around it is pointed at, not read as binary ("bad magic") (both found by a trial run).
#[test]
fn cut_short_or_pasted_armor_is_explained_not_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("note.txt"), "a note").unwrap();
    let (alice, bob) = (
        common::private_path("alice2048"),
        common::private_path("bob2048"),
    );
    let (alice_pub, bob_pub) = (
        common::public_path("alice2048"),
        common::public_path("bob2048"),
    );
    let s = |p: &PathBuf| p.display().to_string();
    let (code, _, err) = common::cli::run(
        d,
        &[
            "seal",
            "--armor",
            "-i",
            &s(&alice),
            "-r",
            &s(&bob_pub),
            "-o",
            "note.ll",
            "note.txt",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let armored = std::fs::read_to_string(d.join("note.ll")).unwrap();
    let cut: String = armored.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("cut.ll"), cut).unwrap();
    let open = |out: &str, input: &str| {
        common::cli::run(
            d,
            &[
                "open",
                "-i",
                &s(&bob),
                "--from",
                &s(&alice_pub),
                "-o",
                out,
                input,
            ],
        )
    };
    let (code, _, err) = open("out.txt", "cut.ll");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "not a valid letterlock message: bad armor: the input ends before the END line"
        ) && err.contains("from its BEGIN line to its END line"),
        "{err}"
    );
    assert!(
        !err.contains("I/O error") && !d.join("out.txt").exists(),
        "{err}"
    );

    // Pasted from an email, with text before and after it: the line it starts at is named.
    let mail = format!("From: alice\nSubject: a note\n\n{armored}-- \nalice\n");
    std::fs::write(d.join("mail.txt"), mail).unwrap();
    let (code, _, err) = open("out.txt", "mail.txt");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("an armored message starts at line 4, after other text"),
        "{err}"
    );
    assert!(!d.join("out.txt").exists(), "{err}");

    // An output folder that does not exist is said as such, before anything is opened.
    let (code, _, err) = open("nodir/x", "note.ll");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot write nodir/x: the folder nodir does not exist"),
        "{err}"
    );
}

/// These tests need util-linux `script` to make a pseudo-terminal: a missing one is a failure
/// that says how to install it, never a silent skip.
fn require_script() {
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "`script` (util-linux) is needed to test behaviour on a terminal: install it with \
         `apt-get install bsdutils` (Debian/Ubuntu) or `util-linux` elsewhere"
    );
}

/// Runs `command` under `script -qec` (a pseudo-terminal for stdin, stdout and stderr) with
/// `typed` as what is typed.
fn run_script(command: &str, typed: &[u8]) -> Output {
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(typed).unwrap();
    child.wait_with_output().unwrap()
}

/// The other half of the logging default: with its log on a terminal (a pseudo-terminal from
/// util-linux `script`), the server shows the text as the classroom did.
#[test]
fn on_a_terminal_the_server_logs_message_text() {
    const TEXT: &str = "shown in class";
    require_script();
    let f = folders();
    // `exec`: the server is script's child itself, and ends with the terminal (SIGHUP). The
    // shell says its pid first, which `exec` hands to the server, so that the test kills the
    // server itself too: a hang-up does not stop one whose SIGHUP is ignored, as under nohup
    // (found when CI runs started with nohup each left a server behind).
    let command = format!(
        "echo $$; exec {BIN} server --listen 127.0.0.1:0 --keys {} --store {}",
        f.server.display(),
        f.store.display()
    );
    let mut script = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stdin = script.stdin.take();
    let mut lines = std::io::BufReader::new(script.stdout.take().unwrap()).lines();
    let pid = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.trim().parse::<i32>().ok())
        .expect("the server's pid");
    let _kill_server = KillOnDrop(pid);
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("letterlock server listening on ")
                .map(str::to_owned)
        })
        .expect("the server's address");
    let server = Server {
        addr: addr.clone(),
        log: PathBuf::new(),
        _server: BinServer::adopt(script, addr),
    };
    ok(send(&f, &server, &[TEXT], b""));
    let received = lines
        .map_while(Result::ok)
        .find(|l| l.contains("received"))
        .expect("a received line");
    assert!(received.contains(TEXT), "{received}");
}

/// Kills the process with this pid when dropped, however the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// A completion script that cannot be written is an error, not a panic.
#[test]
fn completions_to_a_full_disk_fail_with_an_error() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

/// `client inbox` and `client read` find the mailbox through LETTERLOCK_KEYS like every other
/// client command.
#[test]
fn the_client_mailbox_commands_take_the_keys_folder_from_the_environment() {
    let f = folders();
    let keys = f.client.to_str().unwrap();
    let out = run_with_input(&["client", "inbox"], b"", &[("LETTERLOCK_KEYS", keys)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(keys), "{}", stderr(&out));
    let out = run_with_input(&["client", "read", "ab"], b"", &[("LETTERLOCK_KEYS", keys)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(keys), "{}", stderr(&out));
}

/// `recv_msg -o -` is refused before anything is fetched (no folder named "-"): without -o it
/// prints on stdout already.
#[test]
fn recv_msg_o_dash_is_refused_and_creates_nothing() {
    let f = folders();
    let out = run_with_input(
        &[
            "client",
            "recv_msg",
            "-o",
            "-",
            "--keys",
            f.client.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    // Wrong usage, as every `-` refused where it means nothing (found by a trial run: 1).
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("without -o"), "{}", stderr(&out));
    assert!(!std::path::Path::new("-").exists() && !f.client.join("-").exists());
}

/// A failed TLS handshake (here an HTTP request) is in the server's log at its default level,
/// for the operator to see an attack; a peer that connects and leaves (a port check) is not.
#[test]
fn a_failed_handshake_is_logged_and_a_port_check_is_not() {
    use std::io::{Read, Write};
    let f = folders();
    let server = Server::start(&f, &[]);
    drop(std::net::TcpStream::connect(&server.addr).unwrap());
    let mut http = std::net::TcpStream::connect(&server.addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = http.read(&mut [0u8; 64]);
    drop(http);
    let mut log = String::new();
    for _ in 0..600 {
        log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log.contains("TLS handshake failed") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake"))
        .collect();
    assert!(!failed.is_empty(), "{log}");
    // Each one is the HTTP request's, at INFO: the port check is not among them; and the
    // line says "TLS handshake failed" once, in the error.
    for line in failed {
        assert!(
            line.contains(" INFO ") && line.contains("InvalidContentType"),
            "{log}"
        );
        assert_eq!(line.matches("TLS handshake failed").count(), 1, "{line}");
    }
}

/// `letterlock … | head`: when stdout's reader leaves, the command stops quietly with the
/// status a SIGPIPE death gives (141), as other Unix tools do, and prints no error. (Since a
/// broken connection to the server also says "broken pipe", the command checks that stdout's
/// reader is really gone before it takes the error for this.)
#[test]
fn a_reader_that_leaves_stops_the_command_quietly_with_141() {
    use std::io::Read;
    // Over 64 KiB, written at once: the write waits for the reader, which leaves first.
    let mut child = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

/// `--keys` and `--store` starting with `~` (quoted, or from LETTERLOCK_KEYS in a unit file)
/// mean the home folder, as gpg's `--homedir` does: the files go there, said with the full
/// path, and no folder named `~` is made in the working one (found by a trial run). Without a
/// home folder it is wrong usage.
#[test]
fn a_keys_folder_starting_with_a_tilde_is_in_the_home_folder() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let keygen = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(BIN)
            .args(["keygen", "--name", "t", "--bits", "2048"])
            .args(args)
            .env_remove("LETTERLOCK_KEYS")
            .envs(env.iter().copied())
            .current_dir(work.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let home_env = ("HOME", home.path().to_str().unwrap());
    let said = ok(keygen(&["--keys", "~/by_flag"], &[home_env]));
    let wrote = home.path().join("by_flag/t_private.pem");
    assert!(wrote.is_file(), "{said}");
    assert!(said.contains(&wrote.display().to_string()), "{said}");
    ok(keygen(&[], &[home_env, ("LETTERLOCK_KEYS", "~/by_env")]));
    assert!(home.path().join("by_env/t_public.pem").is_file());
    assert!(!work.path().join("~").exists());
    let out = Command::new(BIN)
        .args(["keygen", "--name", "t", "--keys", "~/k"])
        .env_remove("HOME")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("HOME names no home folder"),
        "{}",
        stderr(&out)
    );
    // `keygen --name server` reads LETTERLOCK_STORE itself (found by a review): the same rule.
    let out = Command::new(BIN)
        .args(["keygen", "--name", "server", "--keys", "k"])
        .env_remove("HOME")
        .env("LETTERLOCK_STORE", "~/s.db")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("LETTERLOCK_STORE: ~/s.db starts with ~"),
        "{}",
        stderr(&out)
    );
    assert!(!work.path().join("~").exists());
}

/// A RUST_LOG that is not a log filter is said, and the command still runs with its -v/-q
/// level (found by a trial run: it was passed over without a word).
#[test]
fn an_invalid_rust_log_is_warned_about() {
    let out = run_with_input(&["completions", "bash"], b"", &[("RUST_LOG", "bogus=::,[")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: RUST_LOG is not a log filter"),
        "{}",
        stderr(&out)
    );
    let out = run_with_input(&["completions", "bash"], b"", &[("RUST_LOG", "debug")]);
    assert!(!stderr(&out).contains("RUST_LOG"), "{}", stderr(&out));
}
