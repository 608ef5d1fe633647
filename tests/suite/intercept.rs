//! The interception proxy against a real in-process server: every attack is refused (nothing
//! stored) or leaves the client without a proven delivery; the eavesdropper finds no plaintext
//! in letterlock traffic, and does find it in traffic that is not encrypted.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::net::{echo_server, proxy_to_echo};
use letterlock::client::{Client, ClientConfig, ClientError};
use letterlock::envelope::{Mode, SealOptions};
use letterlock::keys::{Identity, TrustList};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::{SqliteStore, Store};
use letterlock::wire::ErrorCode;
use letterlock_cli::intercept::{self, Config, Direction, Encoding, Event, Proxy, Tamper};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const SERVER: &str = "bob2048";
const CLIENT: &str = "alice2048";
/// How long a test waits for an event before it reports a hang. Not a speed claim: events come
/// in milliseconds, and this is long enough that a busy machine never trips it.
const WAIT: Duration = Duration::from_secs(120);

/// A server on 127.0.0.1:0 with its store in a temporary folder, trusting the client key.
struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
    let mut clients = TrustList::new();
    clients.add("alice", common::public(CLIENT)).unwrap();
    let identity = common::private_key(SERVER);
    let server = Arc::new(Server::new(
        Arc::new(identity),
        clients,
        store.clone(),
        ServerConfig::default(),
    ));
    let running = common::net::run_on_loopback(server).await;
    let (addr, stop) = (running.addr.parse().unwrap(), running.stop);
    Rig {
        _dir: dir,
        store,
        addr,
        _stop: stop,
    }
}

async fn proxy(rig: &Rig, tamper: Option<Tamper>) -> Proxy {
    Proxy::start(
        "127.0.0.1:0",
        &rig.addr.to_string(),
        Config {
            tamper,
            ..Config::default()
        },
    )
    .await
    .unwrap()
}

async fn connect(proxy: &Proxy, who: &str) -> Result<Client, ClientError> {
    let identity: Arc<dyn Identity> = common::private(who);
    Client::connect(
        &proxy.local_addr().to_string(),
        identity,
        common::public(SERVER),
        ClientConfig {
            timeout: WAIT,
            ..ClientConfig::default()
        },
    )
    .await
}

/// A secret long enough for several chunks in both modes: 4 STREAM chunks of 1 KiB (hybrid),
/// 5 OAEP blocks (asymmetric, 2048-bit keys).
fn secret(mode: Mode) -> (Vec<u8>, SealOptions) {
    let text = "the vault code is 4-8-15-16-23-42. ";
    match mode {
        Mode::Hybrid => (
            text.repeat(90).into_bytes(),
            SealOptions {
                chunk_size: 1024,
                ..SealOptions::mode(Mode::Hybrid)
            },
        ),
        Mode::Asymmetric => (
            text.repeat(18).into_bytes(),
            SealOptions::mode(Mode::Asymmetric),
        ),
    }
}

async fn inbox_len(rig: &Rig) -> usize {
    rig.store.list_inbox().await.unwrap().len()
}

fn tampered(proxy: &Proxy, mode: Tamper) -> Option<String> {
    proxy.events().into_iter().find_map(|e| match e {
        Event::Tampered {
            mode: m, detail, ..
        } if m == mode => Some(detail),
        _ => None,
    })
}

fn not_tampered(proxy: &Proxy) -> Vec<String> {
    proxy
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::NotTampered { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// A message attack: the server refuses it with an Error frame the proxy sees, stores
/// nothing, and the client has no delivery.
async fn message_attack(tamper: Tamper, mode: Mode) {
    let rig = rig().await;
    let proxy = proxy(&rig, Some(tamper)).await;
    let mut client = connect(&proxy, CLIENT).await.unwrap();
    let (plain, opts) = secret(mode);
    let result = client.send(std::io::Cursor::new(plain), opts).await;
    assert!(
        not_tampered(&proxy).is_empty(),
        "attack not made: {:?}",
        not_tampered(&proxy)
    );
    assert!(
        tampered(&proxy, tamper).is_some(),
        "no tamper event: {:?}",
        proxy.events()
    );
    match result {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::Refused),
        other => panic!("{tamper} on {mode}: expected a refusal, got {other:?}"),
    }
    let error = proxy
        .wait_for(|e| matches!(e, Event::ServerError { .. }), WAIT)
        .await;
    assert!(
        matches!(
            error,
            Some(Event::ServerError {
                code: ErrorCode::Refused,
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!(
        inbox_len(&rig).await,
        0,
        "{tamper} on {mode}: something was stored"
    );
}

#[tokio::test]
async fn untampered_traffic_is_delivered_and_carries_no_plaintext() {
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("traffic.cap");
    let proxy = Proxy::start(
        "127.0.0.1:0",
        &rig.addr.to_string(),
        Config {
            capture: Some(capture.clone()),
            ..Config::default()
        },
    )
    .await
    .unwrap();
    for mode in [Mode::Asymmetric, Mode::Hybrid] {
        let mut client = connect(&proxy, CLIENT).await.unwrap();
        let (plain, opts) = secret(mode);
        let delivery = client.send(std::io::Cursor::new(plain), opts).await;
        assert!(delivery.is_ok(), "{mode}: {delivery:?}");
    }
    assert_eq!(inbox_len(&rig).await, 2);
    let closed = |n| move |e: &Event| matches!(e, Event::Closed { conn } if *conn == n);
    assert!(proxy.wait_for(closed(1), WAIT).await.is_some());
    assert!(proxy.wait_for(closed(2), WAIT).await.is_some());
    for needle in ["the vault code is 4-8-15-16-23-42", "4-8-15-16-23-42"] {
        let s = proxy.search(needle).unwrap();
        assert!(!s.is_found(), "{s}");
        assert!(s.scanned > 4000, "{s}");
    }
    // The frames were recognised, and the file holds exactly what was captured.
    let kinds: Vec<&str> = proxy
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Frame(f) => Some(f.kind),
            _ => None,
        })
        .collect();
    for k in ["Hello", "Auth", "Ready", "Send", "SendEnd", "Ack"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let captured = proxy.captured_len();
    proxy.stop().await;
    let records = intercept::read_capture(&capture).unwrap();
    let in_file: usize = records.iter().map(|r| r.bytes.len()).sum();
    assert_eq!(in_file, captured, "every byte read is in the file");
    let described = intercept::describe(&records, letterlock::wire::DEFAULT_MAX_FRAME);
    // Nothing lost or doubled: each direction's stream in the file cuts into whole frames.
    assert!(
        !described.iter().any(|e| matches!(e, Event::Raw { .. })),
        "{described:?}"
    );
    let sends: Vec<_> = described
        .iter()
        .filter_map(|e| match e {
            Event::Frame(f) if f.kind == "Send" => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().all(|f| f.entropy > 7.0), "{sends:?}");
}

macro_rules! message_attacks {
    ($($name:ident: $tamper:expr, $mode:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            message_attack($tamper, $mode).await;
        }
    )*};
}

message_attacks! {
    flip_hybrid_is_refused: Tamper::Flip, Mode::Hybrid;
    flip_asymmetric_is_refused: Tamper::Flip, Mode::Asymmetric;
    flip_header_hybrid_is_refused: Tamper::FlipHeader, Mode::Hybrid;
    flip_header_asymmetric_is_refused: Tamper::FlipHeader, Mode::Asymmetric;
    truncate_hybrid_is_refused: Tamper::Truncate, Mode::Hybrid;
    truncate_asymmetric_is_refused: Tamper::Truncate, Mode::Asymmetric;
    reorder_hybrid_is_refused: Tamper::Reorder, Mode::Hybrid;
    reorder_asymmetric_is_refused: Tamper::Reorder, Mode::Asymmetric;
    spoof_sender_hybrid_is_refused: Tamper::SpoofSender, Mode::Hybrid;
    spoof_sender_asymmetric_is_refused: Tamper::SpoofSender, Mode::Asymmetric;
}

#[tokio::test]
async fn replay_on_a_fresh_connection_fails_at_authentication() {
    let rig = rig().await;
    let proxy = proxy(&rig, Some(Tamper::Replay)).await;
    let mut client = connect(&proxy, CLIENT).await.unwrap();
    let (plain, opts) = secret(Mode::Hybrid);
    // The original goes through: the attacker only watches it.
    assert!(client.send(std::io::Cursor::new(plain), opts).await.is_ok());
    drop(client);
    let replayed = proxy
        .wait_for(|e| matches!(e, Event::Replayed { .. }), WAIT)
        .await;
    let Some(Event::Replayed { conn, accepted, .. }) = replayed else {
        panic!("no replay: {:?}", proxy.events());
    };
    assert!(!accepted);
    assert!(
        proxy.events().iter().any(|e| matches!(
            e,
            Event::ServerError { conn: c, code: ErrorCode::AuthFailed, .. } if *c == conn
        )),
        "{:?}",
        proxy.events()
    );
    // The replayed bytes did reach the server: a Send frame went out on the replay connection.
    let replayed_bytes: usize = proxy
        .records()
        .unwrap()
        .iter()
        .filter(|r| r.conn == conn && r.dir == Direction::ToServer)
        .map(|r| r.bytes.len())
        .sum();
    assert!(replayed_bytes > 3000, "{replayed_bytes}");
    assert_eq!(inbox_len(&rig).await, 1, "only the original is stored");
}

/// The command line, given a forged ack (version 1, where a keyless attacker can): "delivery
/// NOT proven", with the message's id and "stored": null in JSON and the hint not to send it
/// again as a new message, as for a missing ack: the message may well be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_forged_ack_gives_a_script_the_id() {
    let rig = rig().await;
    let proxy = proxy(&rig, Some(Tamper::ForgeAck)).await;
    let dir = tempfile::tempdir().unwrap();
    common::cli::classroom_folder(dir.path());
    let (d, addr) = (dir.path().to_path_buf(), proxy.local_addr().to_string());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let args = [
            "client",
            "send_msg",
            "--plain-v1",
            "--json",
            "--server",
            &addr,
            "hi",
        ];
        common::cli::run(&d, &args)
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{err}");
    let id = common::cli::unproven_id(&out);
    assert!(
        err.contains(&format!("message {id} (wrong ack tag")),
        "{err}"
    );
    assert!(err.contains("could deliver it twice"), "{err}");
    assert_eq!(inbox_len(&rig).await, 1, "the server did store it");
}

#[tokio::test]
async fn forged_ack_leaves_delivery_unproven() {
    let rig = rig().await;
    let proxy = proxy(&rig, Some(Tamper::ForgeAck)).await;
    let mut client = connect(&proxy, CLIENT).await.unwrap();
    let (plain, opts) = secret(Mode::Hybrid);
    let result = client.send(std::io::Cursor::new(plain), opts).await;
    // Not proven because the tag is wrong, not because the connection failed.
    assert!(
        matches!(&result, Err(ClientError::NotProven { why, .. }) if why.contains("wrong ack tag")),
        "{result:?}"
    );
    // It names the message, and does not claim it was not stored (found by a trial run); the
    // id is there for `send_msg --json` too ("stored": null).
    let id = result.as_ref().err().and_then(ClientError::unproven_id);
    let said = result.err().map(|e| e.to_string()).unwrap_or_default();
    let id = id.unwrap_or_else(|| panic!("no unproven id: {said}"));
    assert!(said.contains(&id.to_string()), "{said}");
    assert!(
        said.contains("may or may not have been stored")
            && said
                .split_whitespace()
                .any(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit())),
        "{said}"
    );
    assert!(tampered(&proxy, Tamper::ForgeAck).is_some());
    // The server did receive it (the attack is on the way back); the client just cannot
    // tell, so it does not claim delivery.
    assert_eq!(inbox_len(&rig).await, 1);
}

#[tokio::test]
async fn untrusted_client_is_refused_at_the_handshake() {
    let rig = rig().await;
    let proxy = proxy(&rig, None).await;
    let result = connect(&proxy, "mallory").await;
    assert!(
        matches!(
            result,
            Err(ClientError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            })
        ),
        "{:?}",
        result.err()
    );
    assert_eq!(inbox_len(&rig).await, 0);
}

/// Sends `payload` through a fresh proxy to the echo server; returns the proxy once the
/// connection closed.
async fn through_echo(payload: &[u8]) -> Proxy {
    let proxy = proxy_to_echo(Config {
        expect: Some(PLAIN.into()),
        ..Config::default()
    })
    .await;
    let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload, "the proxy relays unchanged");
    assert!(
        proxy
            .wait_for(|e| matches!(e, Event::Expect(_)), WAIT)
            .await
            .is_some()
    );
    proxy
}

const PLAIN: &str = "attack at dawn, bring the maps";

#[tokio::test]
async fn expect_finds_raw_plaintext() {
    let proxy = through_echo(format!("hello! {PLAIN}\n").as_bytes()).await;
    let s = proxy.search(PLAIN).unwrap();
    assert!(s.found_as(Encoding::Raw), "{s}");
    assert!(s.to_string().contains("FOUND"));
    // Both ways: the echo sent it back.
    let dirs: Vec<_> = s.found.iter().map(|f| f.dir).collect();
    assert!(dirs.contains(&Direction::ToServer) && dirs.contains(&Direction::ToClient));
    assert!(
        proxy
            .events()
            .iter()
            .any(|e| matches!(e, Event::Raw { .. }))
    );
}

#[tokio::test]
async fn expect_finds_base64_hex_and_utf16_plaintext() {
    use base64::Engine;
    for prefix in ["", "x", "xy"] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{PLAIN}"));
        let proxy = through_echo(format!("token={encoded}\n").as_bytes()).await;
        let s = proxy.search(PLAIN).unwrap();
        assert!(
            s.found
                .iter()
                .any(|f| matches!(f.encoding, Encoding::Base64(_))),
            "prefix {prefix:?}: {s}"
        );
        assert!(!s.found_as(Encoding::Raw), "{s}");
    }
    let proxy = through_echo(format!("data={}", hex::encode_upper(PLAIN)).as_bytes()).await;
    assert!(proxy.search(PLAIN).unwrap().found_as(Encoding::HexUpper));
    let utf16: Vec<u8> = PLAIN.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let proxy = through_echo(&[b"ZZZZ".as_slice(), &utf16].concat()).await;
    assert!(proxy.search(PLAIN).unwrap().found_as(Encoding::Utf16Le));
}

/// The command line, end to end: a live proxy stopped with SIGINT, then `--show` of its
/// capture. Both exit 3 because the plaintext crossed in the clear, and not 1, a failure to look.
#[tokio::test]
async fn command_line_proxy_captures_and_show_finds_plaintext() {
    use tokio::io::AsyncBufReadExt;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("echo.cap");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["intercept", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(echo.to_string())
        .arg("--capture")
        .arg(&capture)
        .args(["--expect", PLAIN])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr = first
        .strip_prefix("intercepting ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /?q={PLAIN}\n").as_bytes())
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.contains("FOUND") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen:#?}");
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(3), "a plaintext was found: exit 3");

    let show = |expect: &str| show_capture(&capture, expect);
    let out = show(PLAIN);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("not letterlock frames"), "{text}");
    assert!(text.contains("!!! FOUND !!!"), "{text}");
    let out = show("never sent");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("plaintext not found"));
}

/// A search that could not look is a failure (1), never taken for "found" (3) nor "not found"
/// (0): a script tells a leak from a broken capture (found by a trial run: both exited 1).
#[test]
fn expect_on_a_capture_that_cannot_be_read_exits_1_not_found_or_found() {
    let dir = tempfile::tempdir().unwrap();
    let out = show_capture(&dir.path().join("missing.cap"), PLAIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing.cap"), "{err}");
    let damaged = dir.path().join("damaged.cap");
    std::fs::write(&damaged, b"not a capture at all").unwrap();
    let out = show_capture(&damaged, PLAIN);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A capture cut in the middle of a record is said to be cut short, not to be something
    // else than a capture (found by a trial run).
    let mut cut = letterlock_cli::intercept::capture::CAPTURE_MAGIC.to_vec();
    cut.extend_from_slice(&[b'>', 0, 0, 0, 7, 0, 0, 0, 10, b'h', b'i']);
    let cut_path = dir.path().join("cut.cap");
    std::fs::write(&cut_path, &cut).unwrap();
    let out = show_capture(&cut_path, PLAIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cut.cap ends in the middle of a record, after 0 whole one(s)"),
        "{err}"
    );
}

/// `letterlock intercept --show CAPTURE --expect EXPECT`.
fn show_capture(capture: &std::path::Path, expect: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["intercept", "--show"])
        .arg(capture)
        .args(["--expect", expect])
        .output()
        .unwrap()
}

/// `--capture` never writes over an existing file nor through a symbolic link, and refuses
/// before it listens (found by a trial run: it truncated both, so anyone could plant a link in
/// a shared /tmp and have a proxy run as root wipe the file it led to); `--force` replaces a
/// regular file, never a link.
#[test]
fn capture_refuses_an_existing_file_and_a_link_before_listening() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("cap.existing");
    std::fs::write(&existing, b"precious").unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"victim").unwrap();
    let link = dir.path().join("caplink");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    // Taken: a proxy that listened before it looked at the capture would fail on this instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let intercept = |listen: &str, capture: &std::path::Path, force: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_letterlock"));
        cmd.args(["intercept", "--listen", listen, "--upstream", "127.0.0.1:9"])
            .arg("--capture")
            .arg(capture)
            .args(force.then_some("--force"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let refused = |capture: &std::path::Path, force: bool| {
        let child = intercept(&taken, capture, force).spawn().unwrap();
        let out = finished_within(child, WAIT);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("cannot listen"), "{err}");
        err
    };
    let err = refused(&existing, false);
    assert!(
        err.contains("cap.existing already exists; pass --force to replace it"),
        "{err}"
    );
    for force in [false, true] {
        let err = refused(&link, force);
        assert!(err.contains("caplink is a symbolic link to"), "{err}");
    }
    // A capture in a folder that does not exist is refused before listening too.
    let err = refused(&dir.path().join("no-such-folder").join("cap"), false);
    assert!(
        err.contains("no-such-folder does not exist; create it first"),
        "{err}"
    );
    // With --force and a port in use, the old capture stays as it was (found by a trial run:
    // it was removed before the proxy tried to listen).
    let out = finished_within(intercept(&taken, &existing, true).spawn().unwrap(), WAIT);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());

    let mut child = intercept("127.0.0.1:0", &existing, true).spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("intercepting "), "{first}");
    let capture = std::fs::read(&existing).unwrap();
    assert_eq!(
        capture,
        letterlock_cli::intercept::capture::CAPTURE_MAGIC,
        "replaced by a new capture"
    );
}

/// `-` where intercept takes a file: `--show -` reads the capture from stdin, as age and gpg
/// read `-`; `--capture -` is refused as usage (2), since the frame lines go to stdout, and
/// makes no file named `-` (found by a trial run: `--show -` looked for a file named `-`, and
/// `--capture -` created one).
#[test]
fn a_dash_shows_a_capture_from_stdin_and_is_refused_as_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("one.cap");
    let mut bytes = letterlock_cli::intercept::capture::CAPTURE_MAGIC.to_vec();
    bytes.push(b'>');
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&(PLAIN.len() as u32).to_be_bytes());
    bytes.extend_from_slice(PLAIN.as_bytes());
    std::fs::write(&capture, &bytes).unwrap();
    let damaged = dir.path().join("damaged.cap");
    std::fs::write(&damaged, b"not a capture at all").unwrap();
    let show = |from: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_letterlock"))
            .args(["intercept", "--show", "-", "--expect", PLAIN])
            .current_dir(dir.path())
            .stdin(std::fs::File::open(from).unwrap())
            .output()
            .unwrap()
    };
    let out = show(&capture);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&format!("1 records, {} bytes", PLAIN.len())),
        "{text}"
    );
    assert!(text.contains("!!! FOUND !!!"), "{text}");
    let out = show(&damaged);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stdin is not a letterlock capture"), "{err}");

    // A taken address: refused at parsing, before anything is listened on or created.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for stdout in ["-", "/dev/stdout"] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_letterlock"))
            .args(["intercept", "--listen", &taken, "--upstream", "127.0.0.1:9"])
            .args(["--capture", stdout])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = finished_within(child, WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stdout}: {err}");
        assert!(err.contains("intercept prints its frames there"), "{err}");
    }
    assert!(!dir.path().join("-").exists(), "a file named - was made");
}

/// What `child` printed and how it ended, once it has; killed (and the test failed) if it
/// runs past `limit`, so a command that should have refused does not hang the test.
fn finished_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `--expect` takes no text so short that ciphertext holds it by chance, and a search says
/// which encodings it tried (found by a trial run: `--expect a` reported a leak, `--expect ""`
/// was taken, and the list named encodings a short text skips).
#[test]
fn expect_refuses_a_text_found_by_chance_and_names_the_encodings_it_searched() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("empty.cap");
    std::fs::write(&capture, letterlock_cli::intercept::capture::CAPTURE_MAGIC).unwrap();
    let show = |expect: &str| show_capture(&capture, expect);
    for short in ["", "a", "abcde"] {
        let out = show(short);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{short:?}: {err}");
        assert!(err.contains("at least 6 bytes"), "{short:?}: {err}");
    }
    let search = letterlock_cli::intercept::search::needles("abcdef");
    let out = show("abcdef");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "searched {} encodings: raw bytes, UTF-16LE",
            search.len()
        )),
        "{text}"
    );
}

/// An attack that cannot be placed is said so, and the message goes through byte for byte:
/// the proxy re-frames a held message exactly once (one SendEnd), so the server accepts it.
#[tokio::test]
async fn an_attack_that_cannot_be_placed_forwards_the_message_unchanged() {
    let rig = rig().await;
    let proxy = proxy(&rig, Some(Tamper::Reorder)).await;
    let mut client = connect(&proxy, CLIENT).await.unwrap();
    // One STREAM chunk: nothing to swap.
    let first = client
        .send(
            std::io::Cursor::new(b"short".to_vec()),
            SealOptions::mode(Mode::Hybrid),
        )
        .await;
    assert!(first.is_ok(), "{first:?}");
    // The connection is still in step: a second message on it is delivered too.
    let second = client
        .send(
            std::io::Cursor::new(b"again".to_vec()),
            SealOptions::mode(Mode::Hybrid),
        )
        .await;
    assert!(second.is_ok(), "{second:?}");
    assert_eq!(not_tampered(&proxy).len(), 2, "{:?}", proxy.events());
    assert!(tampered(&proxy, Tamper::Reorder).is_none());
    assert!(
        !proxy
            .events()
            .iter()
            .any(|e| matches!(e, Event::ServerError { .. })),
        "{:?}",
        proxy.events()
    );
    assert_eq!(inbox_len(&rig).await, 2);
}

/// Tens of MiB through the proxy: the capture file holds every byte of both directions in
/// order, and the `--expect` search, made as the bytes arrive, finds a marker cut across two
/// reads (as does a search of the file for another text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stream_is_captured_whole_and_searched_across_reads() {
    const TOTAL: usize = 16 << 20;
    const MARKER: &str = "a marker cut across two reads: 7f3a-19c2";
    // The marker's middle falls on the read boundary `split`.
    let split = TOTAL / 2;
    let at = split - MARKER.len() / 2;
    let mut data = common::Rng(0x5eed).bytes(TOTAL);
    // Text first: not a letterlock frame, so the proxy relays it as it is.
    data[..4].copy_from_slice(b"GET ");
    data[at..at + MARKER.len()].copy_from_slice(MARKER.as_bytes());
    let data = Arc::new(data);

    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("large.cap");
    let proxy = proxy_to_echo(Config {
        capture: Some(capture.clone()),
        expect: Some(MARKER.into()),
        ..Config::default()
    })
    .await;
    let (mut r, mut w) = TcpStream::connect(proxy.local_addr())
        .await
        .unwrap()
        .into_split();
    let echoed = tokio::spawn(async move {
        let mut back = Vec::with_capacity(TOTAL);
        r.read_to_end(&mut back).await.unwrap();
        back
    });
    w.write_all(&data[..split]).await.unwrap();
    // Every byte before the split went there and back before the rest is written, so the
    // proxy's reads towards the server end exactly at the split.
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.captured_len() < 2 * split {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first half did not come back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(proxy.captured_len(), 2 * split);
    w.write_all(&data[split..]).await.unwrap();
    w.shutdown().await.unwrap();
    let back = echoed.await.unwrap();
    assert!(back == *data, "the proxy relays unchanged");
    assert!(
        proxy
            .wait_for(|e| matches!(e, Event::Expect(_)), WAIT)
            .await
            .is_some()
    );

    // Searched as it arrived: found in both directions, at the marker's offset.
    let live = proxy.search(MARKER).unwrap();
    assert_eq!(live.scanned, 2 * TOTAL);
    let raw: Vec<_> = live
        .found
        .iter()
        .filter(|f| f.encoding == Encoding::Raw)
        .map(|f| (f.dir, f.offset))
        .collect();
    assert_eq!(
        raw,
        [(Direction::ToServer, at), (Direction::ToClient, at)],
        "{live}"
    );
    // Another text is searched in the file, a record at a time.
    let tail = &MARKER[10..];
    let scanned = proxy.search(tail).unwrap();
    assert_eq!(scanned.scanned, 2 * TOTAL);
    assert!(
        scanned
            .found
            .iter()
            .any(|f| f.dir == Direction::ToServer && f.offset == at + 10),
        "{scanned}"
    );
    proxy.stop().await;

    // The file holds both directions whole, and a record ends at the split.
    let mut got = [0usize; 2];
    let mut boundary_at_split = false;
    for record in intercept::CaptureReader::open(&capture).unwrap() {
        let record = record.unwrap();
        let i = usize::from(record.dir == Direction::ToClient);
        let end = got[i] + record.bytes.len();
        assert!(
            data.get(got[i]..end) == Some(record.bytes.as_slice()),
            "{:?} bytes {}..{end} differ",
            record.dir,
            got[i]
        );
        boundary_at_split |= i == 0 && end == split;
        got[i] = end;
    }
    assert_eq!(got, [TOTAL, TOTAL]);
    assert!(boundary_at_split, "no read ended at the split");
    // The search made as the bytes arrived is the search of the file.
    let records = intercept::read_capture(&capture).unwrap();
    assert_eq!(intercept::search(&records, MARKER), live);
}

// ---- Protocol version 2: the proxy in front of a TLS 1.3 server ----

/// A version 2 server on 127.0.0.1:0 (the shared test server's keys and trust list).
async fn tls_rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
    let server = common::net::tls_server(store.clone(), ServerConfig::default());
    let running = common::net::run_on_loopback(server).await;
    let (addr, stop) = (running.addr.parse().unwrap(), running.stop);
    Rig {
        _dir: dir,
        store,
        addr,
        _stop: stop,
    }
}

/// Connects through `proxy` on version 2 and sends the hybrid secret.
async fn tls_send(proxy: &Proxy) -> Result<letterlock::client::Delivery, ClientError> {
    let mut client =
        common::net::tls_client(&proxy.local_addr().to_string(), common::net::CLIENT).await?;
    let (plain, opts) = secret(Mode::Hybrid);
    client.send(std::io::Cursor::new(plain), opts).await
}

async fn wait_closed(proxy: &Proxy) {
    proxy
        .wait_for(|e| matches!(e, Event::Closed { .. }), WAIT)
        .await
        .expect("the connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_v2_the_eavesdropper_sees_tls_records_not_frames_nor_plaintext() {
    let rig = tls_rig().await;
    let proxy = proxy(&rig, None).await;
    let delivery = tls_send(&proxy).await.unwrap();
    assert_eq!(inbox_len(&rig).await, 1);
    assert!(delivery.plaintext_len > 0);
    wait_closed(&proxy).await;
    let events = proxy.events();
    // Not one letterlock frame parsed, nor bytes given up on: every byte was a TLS record.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Frame(_) | Event::Raw { .. })),
        "{events:#?}"
    );
    let lines: Vec<String> = events
        .iter()
        .filter(|e| matches!(e, Event::Tls(_)))
        .map(ToString::to_string)
        .collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    // rustls shuffles its ClientHello extensions: each fact is looked for on its own.
    assert!(
        has("ClientHello:") && has("ALPN offered [letterlock/2, letterlock/2+delegated]"),
        "{lines:#?}"
    );
    assert!(has("key shares [X25519MLKEM768"), "{lines:#?}");
    assert!(
        has("ServerHello:") && has("group chosen X25519MLKEM768"),
        "{lines:#?}"
    );
    assert!(has("version TLS 1.3"), "{lines:#?}");
    // Both directions carry encrypted records after the handshake.
    for dir in [Direction::ToServer, Direction::ToClient] {
        assert!(
            events.iter().any(|e| matches!(e, Event::Tls(i)
                if i.dir == dir && i.content_type == intercept::tls::APPLICATION_DATA)),
            "no application data {dir}"
        );
    }
    let (plain, _) = secret(Mode::Hybrid);
    let search = proxy.search(std::str::from_utf8(&plain).unwrap()).unwrap();
    assert!(!search.is_found(), "{search}");
    assert!(search.scanned > plain.len(), "{search}");
    // `intercept --show` reads the capture back the same way: TLS records, no frames.
    let shown = intercept::describe(
        &proxy.records().unwrap(),
        letterlock::wire::DEFAULT_MAX_FRAME,
    );
    let tls_shown = shown.iter().filter(|e| matches!(e, Event::Tls(_))).count();
    assert_eq!(tls_shown, lines.len(), "{shown:#?}");
    assert!(
        !shown
            .iter()
            .any(|e| matches!(e, Event::Frame(_) | Event::Raw { .. })),
        "{shown:#?}"
    );
}

/// Every mode through the real proxy on version 2: the attack is made on a record, the client
/// does not claim delivery, and the server stores nothing (the replay: only the original, which
/// the client sent untouched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_v2_every_tamper_mode_is_refused_and_nothing_is_stored() {
    for tamper in Tamper::ALL {
        let rig = tls_rig().await;
        let proxy = proxy(&rig, Some(tamper)).await;
        let result = tls_send(&proxy).await;
        wait_closed(&proxy).await;
        if tamper == Tamper::Replay {
            proxy
                .wait_for(|e| matches!(e, Event::Replayed { .. }), WAIT)
                .await
                .expect("the replay ran");
        }
        assert!(
            not_tampered(&proxy).is_empty(),
            "{tamper}: attack not made: {:?}",
            not_tampered(&proxy)
        );
        let detail = tampered(&proxy, tamper);
        assert!(detail.is_some(), "{tamper}: no tamper event");
        let stored = inbox_len(&rig).await;
        match tamper {
            Tamper::Replay => {
                assert!(result.is_ok(), "the original went through: {result:?}");
                assert_eq!(stored, 1, "the replay was stored");
            }
            // The server stored the message; the attack is on its answer.
            Tamper::ForgeAck => {
                assert!(result.is_err(), "forge-ack: delivery claimed: {result:?}");
                assert_eq!(stored, 1);
            }
            _ => {
                assert!(result.is_err(), "{tamper}: delivery claimed: {result:?}");
                assert_eq!(stored, 0, "{tamper}: something was stored");
            }
        }
        assert!(
            !proxy.events().iter().any(|e| matches!(e, Event::Frame(_))),
            "{tamper}: TLS taken for frames"
        );
    }
}
