//! Terminal safety (issue 10, "False delivered" and "Peer text on the terminal"): the real
//! binary on a pseudo-terminal, made with `script` from util-linux. A peer's text reaches the
//! screen only escaped and labelled; content goes raw only to pipes and files; status lines go
//! to stderr.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::cli::{
    BinServer, classroom_folder, letterlock, put_private, put_public, recv_msg_into,
};
use common::net::{CLIENT, SERVER, clients};
use common::{private, private_path, public_path};
use letterlock::keys::Identity;
use letterlock::tls::{self, TlsOptions};
use letterlock::wire::{CHALLENGE_LEN, ErrorCode, Frame, FrameReader, FrameWriter};
use tokio::io::{AsyncRead, AsyncWrite};

/// What the hostile server says: erase the line, then a fake success line.
const HOSTILE: &str =
    "\r\x1b[2Kdelivered: the server proved it decrypted and stored 26 bytes (hybrid mode)";

/// Runs the binary with `args` in `dir` with stdin, stdout and stderr on one pseudo-terminal;
/// everything the terminal received, and the exit status.
fn on_terminal(dir: &Path, args: &[&str]) -> (bool, Vec<u8>) {
    let out = common::cli::on_terminal(dir, args);
    (out.status.success(), out.stdout)
}

/// The screen's lines: split at LF and at CR, since a CR returns to the start of the line
/// and what follows overwrites it.
fn screen_lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .split(['\n', '\r'])
        .map(str::to_owned)
        .collect()
}

/// Asserts that nothing a terminal acts on (ESC, a CR other than the terminal's own CR LF,
/// bidi overrides) is in `out`.
fn assert_inert(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(!out.contains(&0x1b), "ESC reached the terminal: {text:?}");
    assert!(
        !text.replace("\r\n", "\n").contains('\r'),
        "a bare CR reached the terminal: {text:?}"
    );
    assert!(!text.contains('\u{202e}'), "{text:?}");
}

/// A folder with the client's side of the walk-through (fixed test keys).
fn client_keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path();
    put_private(keys, CLIENT, "client_private.pem");
    put_public(keys, CLIENT, "client_public.pem");
    put_public(keys, SERVER, "server_public.pem");
    dir
}

/// A hostile server for one connection: it answers the client's message with an Error frame
/// whose text is [`HOSTILE`]. It speaks whichever version the client does: a version 2 client
/// speaks first (a TLS ClientHello; the hostile server then holds the server key, as a
/// compromised or malicious server would), a version 1 client waits for `Hello` (a keyless
/// fake server can send it: the server's key id is public).
async fn hostile_server(listener: tokio::net::TcpListener) {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut first = [0u8; 1];
    let v2 = tokio::time::timeout(Duration::from_millis(500), tcp.peek(&mut first))
        .await
        .is_ok();
    if v2 {
        let identity: Arc<dyn Identity> = private(SERVER);
        let trusted = clients();
        let config =
            tls::server_config(identity, Arc::new(trusted.clone()), &TlsOptions::default())
                .unwrap();
        let (stream, _, _) = tls::accept(config, &trusted, tcp, Duration::from_secs(10))
            .await
            .unwrap();
        let (r, w) = tokio::io::split(stream);
        let r = FrameReader::new(r, 1 << 20).with_padding();
        answer(r, FrameWriter::new(w).with_padding(), None).await;
    } else {
        let (r, w) = tcp.into_split();
        let hello = Frame::Hello {
            version: 1,
            server: common::public(SERVER).id(),
            challenge: [9; CHALLENGE_LEN],
        };
        answer(
            FrameReader::new(r, 1 << 20),
            FrameWriter::new(w),
            Some(hello),
        )
        .await;
    }
}

/// Sends `hello` (version 1) or nothing, reads `Auth` (version 1), says `Ready`, reads the
/// message up to `SendEnd`, answers with the hostile Error and waits for the client to leave.
async fn answer<R, W>(mut r: FrameReader<R>, mut w: FrameWriter<W>, hello: Option<Frame>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Some(hello) = hello {
        w.write_frame(&hello).await.unwrap();
        assert!(matches!(r.read_frame().await, Ok(Frame::Auth { .. })));
    }
    w.write_frame(&Frame::Ready).await.unwrap();
    while let Ok(f) = r.read_frame().await {
        if f == Frame::SendEnd {
            break;
        }
    }
    let _ = w
        .write_frame(&Frame::error(ErrorCode::Refused, HOSTILE))
        .await;
    while r.read_frame().await.is_ok() {}
}

#[tokio::test]
async fn a_hostile_servers_error_text_reaches_the_terminal_only_escaped_and_labelled() {
    let keys = client_keys();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(hostile_server(listener));
    let dir = keys.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        on_terminal(&dir, &["client", "send_msg", "hello", "--server", &addr])
    })
    .await
    .unwrap();
    server.await.unwrap();
    let text = String::from_utf8_lossy(&out);
    println!("{text}");
    assert!(!ok, "the client exited 0: {text}");
    assert_inert(&out);
    // The server's words are there, escaped, quoted and labelled as the server's.
    assert!(
        text.contains(r#"the server says: "\r\x1b[2Kdelivered: the server proved"#),
        "{text}"
    );
    // No line of the screen says "delivered" on its own.
    for line in screen_lines(&out) {
        assert!(
            !line.trim_start().starts_with("delivered"),
            "a line claims delivery: {line:?} in {text:?}"
        );
    }
    assert!(text.contains("NOT delivered"), "{text}");
}

/// Seals `plain` from the client to the server key into `dir/m.ll`.
fn seal_into(dir: &Path, plain: &[u8]) {
    std::fs::write(dir.join("plain"), plain).unwrap();
    let from = private_path(CLIENT);
    let to = public_path(SERVER);
    let out = letterlock(
        dir,
        &[
            "seal",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
            "-o",
            "m.ll",
            "plain",
        ],
    );
    assert!(out.status.success(), "{out:?}");
}

fn open_args() -> Vec<String> {
    [
        "open".to_string(),
        "--key".into(),
        private_path(SERVER).to_str().unwrap().into(),
        "--from".into(),
        public_path(CLIENT).to_str().unwrap().into(),
        "m.ll".into(),
    ]
    .to_vec()
}

#[test]
fn a_message_with_escape_sequences_is_escaped_on_a_terminal_and_exact_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let plain = "pay 10 coins\r\x1b[2Kpay 10000 coins\n\u{202e}txt.exe\n";
    seal_into(dir.path(), plain.as_bytes());
    let args = open_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let (ok, out) = on_terminal(dir.path(), &args);
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{text}");
    assert_inert(&out);
    assert!(
        text.contains(r"pay 10 coins\r\x1b[2Kpay 10000 coins"),
        "{text}"
    );
    assert!(text.contains(r"\u{202e}txt.exe"), "{text}");
    assert!(text.contains("verified:"), "{text}");

    // A pipe gets the exact bytes on stdout, and the status line on stderr only.
    let out = letterlock(dir.path(), &args);
    assert!(out.status.success());
    assert_eq!(out.stdout, plain.as_bytes());
    assert!(String::from_utf8_lossy(&out.stderr).contains("verified:"));
}

#[test]
fn binary_plaintext_is_refused_on_a_terminal_with_a_hint_and_written_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let plain = b"\x00\xff\xfe binary \x1b[2J";
    seal_into(dir.path(), plain);
    let args = open_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let (ok, out) = on_terminal(dir.path(), &args);
    let text = String::from_utf8_lossy(&out);
    assert!(!ok, "{text}");
    assert_inert(&out);
    assert!(
        text.contains("refusing to print a binary message"),
        "{text}"
    );
    assert!(text.contains("save it with -o"), "{text}");
    assert!(text.contains("pass -o - to show it here escaped"), "{text}");
    // Not an I/O error while opening: the message opened (found by a trial run).
    assert!(!text.contains("I/O error"), "{text}");

    let out = letterlock(dir.path(), &args);
    assert!(out.status.success());
    assert_eq!(out.stdout, plain);

    // `-o -` asks for stdout by name, as age's does: shown on the terminal, but escaped.
    let args: Vec<&str> = [&args[..], &["-o", "-"]].concat();
    let (ok, out) = on_terminal(dir.path(), &args);
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{text}");
    assert_inert(&out);
    assert!(text.contains(r"\x00\xff\xfe binary \x1b[2J"), "{text}");
    // And to a pipe, the exact bytes as without it.
    let out = letterlock(dir.path(), &args);
    assert!(out.status.success());
    assert_eq!(out.stdout, plain);
}

/// `server read -o -` shows a binary message on a terminal, escaped, as `open -o -` does;
/// without `-o -` it is refused with the same hint.
#[test]
fn server_read_shows_binary_plaintext_escaped_with_o_dash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    std::fs::write(d.join("b.bin"), b"bin\xff\xfe\x1b[2J").unwrap();
    let send = [
        "client",
        "send_msg",
        "--server",
        &server.addr,
        "--file",
        "b.bin",
    ];
    assert!(letterlock(d, &send).status.success());
    let out = letterlock(d, &["server", "inbox", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = rows[0]["id"].as_str().unwrap();

    let (ok, out) = on_terminal(d, &["server", "read", id]);
    let text = String::from_utf8_lossy(&out);
    assert!(!ok, "{text}");
    assert!(text.contains("pass -o - to show it here escaped"), "{text}");
    let (ok, out) = on_terminal(d, &["server", "read", id, "-o", "-"]);
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{text}");
    assert_inert(&out);
    assert!(text.contains(r"bin\xff\xfe\x1b[2J"), "{text}");
}

/// `seal` refuses to write a binary message to a terminal, with a hint that names `-o -`, and
/// writes it there with `-o -` (age's convention; found by a trial run: `seal -o -` was refused
/// as `seal` without -o is).
#[test]
fn seal_writes_a_binary_message_to_a_terminal_only_when_o_dash_asks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain"), "hi\n").unwrap();
    let from = private_path(CLIENT);
    let to = public_path(SERVER);
    let seal = [
        "seal",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "plain",
    ];
    let (ok, out) = on_terminal(dir.path(), &seal);
    let text = String::from_utf8_lossy(&out);
    assert!(!ok, "{text}");
    assert!(
        text.contains("refusing to write a binary message to a terminal"),
        "{text}"
    );
    assert!(text.contains("-o - to write it there anyway"), "{text}");

    let (ok, out) = on_terminal(dir.path(), &[&seal[..], &["-o", "-"]].concat());
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{text}");
    assert!(!text.contains("refusing"), "{text}");
    // The sealed message is written: far more than the status line.
    assert!(out.len() > 384, "{text}");
}

#[test]
fn recv_msg_to_a_file_gets_only_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for side in ["server", "client"] {
        let out = letterlock(d, &[side, "generate_key_pair", "--bits", "2048"]);
        assert!(out.status.success(), "{out:?}");
    }
    let server = BinServer::start(d, &[]);
    let addr = server.addr.clone();
    let content = "the reply\r\x1b[2K, with its own line break\n";
    let out = letterlock(d, &["server", "send_msg", "--to", "client", content]);
    assert!(out.status.success(), "{out:?}");

    let file = d.join("received");
    let out = recv_msg_into(d, &addr, &file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), content.as_bytes());
    let status = String::from_utf8_lossy(&out.stderr);
    assert!(status.contains("signature verified"), "{status}");
}

/// The log, captured: what `letterlock server -v` would print on stderr.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// A log line the client tries to forge.
const FORGED: &str = "2026-11-28T12:00:00.000000Z  INFO received: confidentiality, integrity \
                      and sender authentication verified: \"transfer approved\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_error_text_cannot_forge_a_server_log_line_at_debug_level() {
    // The CLI's logging (src/cli/mod.rs init_logging) at -v, without colours, into a buffer.
    let log = LogBuf::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(log.clone())
        .with_target(false)
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, task) = common::net::v2_server(dir.path()).await;

    let identity: Arc<dyn Identity> = private(CLIENT);
    let config =
        tls::client_config(identity, &common::public(SERVER), &TlsOptions::default()).unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (stream, _) = tls::connect(config, tcp, Duration::from_secs(10))
        .await
        .unwrap();
    let (r, w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r, 1 << 20).with_padding();
    let mut w = FrameWriter::new(w).with_padding();
    assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
    let text = format!("bye\r\n{FORGED}\n\x1b[1A\x1b[2K");
    w.write_frame(&Frame::error(ErrorCode::Protocol, text))
        .await
        .unwrap();
    // The server logs the client's error and closes; wait for the line (a deadlock would hang
    // here: no time limit asserted).
    while r.read_frame().await.is_ok() {}
    let logged = loop {
        let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        if logged.contains("client reported an error") {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = stop.send(());
    task.await.unwrap();
    println!("{logged}");
    assert!(!logged.contains('\x1b'), "{logged:?}");
    assert!(!logged.contains('\r'), "{logged:?}");
    let line = logged
        .lines()
        .find(|l| l.contains("client reported an error"))
        .unwrap();
    assert!(line.contains(r#"error_text="bye\r\n2026-11-28"#), "{line}");
    assert!(line.contains(r#"\x1b[1A\x1b[2K""#), "{line}");
    for l in logged.lines() {
        assert!(!l.starts_with("2026-11-28T12:00:00"), "forged line: {l:?}");
    }
}

/// The log is coloured on a terminal, and not when the user asked for no colour: `NO_COLOR`
/// set (to anything but "") or `TERM=dumb` (found by a trial run: `NO_COLOR` was ignored by
/// the log while clap's own messages obeyed it).
#[test]
fn the_log_is_coloured_on_a_terminal_unless_no_color_says_not() {
    let dir = client_keys();
    let args = ["-v", "client", "send_msg", "--server", "127.0.0.1:1", "hi"];
    let shown = |env: &[(&str, &str)]| {
        let mut cmd = common::cli::terminal_command(dir.path(), &args);
        cmd.env_remove("NO_COLOR").env("TERM", "xterm");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(common::cli::no_script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("connecting"), "{text}");
        text
    };
    assert!(shown(&[]).contains('\x1b'), "no colour on a terminal");
    assert!(
        shown(&[("NO_COLOR", "")]).contains('\x1b'),
        "an empty NO_COLOR"
    );
    for env in [("NO_COLOR", "1"), ("TERM", "dumb")] {
        let text = shown(&[env]);
        assert!(!text.contains('\x1b'), "{env:?}: {text:?}");
    }
}

/// `intercept --show -` with stdin on a terminal is wrong usage, exit 2 as its --help says
/// (found by a review: it exited 1).
#[test]
fn intercept_show_dash_on_a_terminal_is_wrong_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::cli::on_terminal(dir.path(), &["intercept", "--show", "-"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("reads a capture from stdin"), "{text}");
}
