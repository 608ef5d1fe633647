//! Protocol version 2: TLS 1.3 under the frames, over real TCP on 127.0.0.1 (issue 10, first
//! slice). The handshake-level cases without a server (groups, ALPN, require_pq) are unit tests
//! in `letterlock/src/tls`; here the real server and client, and the `openssl` binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use common::net::{CLIENT, SERVER, clients, recording_relay};
use common::{private, public};
use letterlock::client::{Client, ClientConfig, ClientError, Content, Output as Out};
use letterlock::envelope::{Mode, SealOptions};
use letterlock::keys::Identity;
use letterlock::server::{Server, ServerConfig};
use letterlock::store::{SqliteStore, Store};
use letterlock::tls::{NamedGroup, ProtocolVersion, TlsOptions};
use letterlock::wire::ErrorCode;
use tokio::sync::oneshot;

/// A version 2 server on 127.0.0.1:0 with the test keys, until dropped or stopped.
struct TlsServer {
    addr: String,
    store: Arc<SqliteStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TlsServer {
    async fn start(dir: &Path, options: TlsOptions) -> TlsServer {
        Self::start_with(dir, options, ServerConfig::default()).await
    }

    async fn start_with(dir: &Path, options: TlsOptions, config: ServerConfig) -> TlsServer {
        let store = Arc::new(SqliteStore::open(dir.join("server.db")).unwrap());
        let server = Server::new(private(SERVER), clients(), store.clone(), config)
            .with_tls(options)
            .unwrap();
        let common::net::Running { addr, stop, task } =
            common::net::run_on_loopback(Arc::new(server)).await;
        TlsServer {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn client(&self, name: &str, options: TlsOptions) -> Result<Client, ClientError> {
        let identity: Arc<dyn Identity> = private(name);
        Client::connect_tls(
            &self.addr,
            identity,
            public(SERVER),
            ClientConfig::default(),
            options,
        )
        .await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// Multi-threaded, as the `letterlock` server runs (handshake signatures via `block_in_place`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_and_a_fetch_travel_inside_tls_1_3_with_x25519mlkem768() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(dir.path(), TlsOptions::default()).await;
    let mut client = server.client(CLIENT, TlsOptions::default()).await.unwrap();
    let session = client.tls_session().expect("a TLS session").clone();
    assert_eq!(session.version, ProtocolVersion::TLSv1_3);
    assert_eq!(session.group, NamedGroup::X25519MLKEM768);
    assert_eq!(session.peer, public(SERVER).id());

    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let text = format!("over TLS in {mode} mode").into_bytes();
        let d = client
            .send(std::io::Cursor::new(text.clone()), SealOptions::mode(mode))
            .await
            .unwrap();
        assert_eq!(d.plaintext_len, text.len() as u64);
    }
    assert_eq!(server.store.list_inbox().await.unwrap().len(), 2);

    let to = clients().by_name("client").unwrap().clone();
    letterlock::server::queue_for_client(
        server.store.as_ref(),
        private(SERVER),
        &to,
        std::io::Cursor::new(b"reply over TLS".to_vec()),
        &SealOptions::default(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let n = client
        .fetch(&Out::Memory { limit: 1 << 20 }, |r| {
            if let Content::Memory(m) = &r.content {
                got.push(m.to_vec());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(got, vec![b"reply over TLS".to_vec()]);
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_untrusted_client_key_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(dir.path(), TlsOptions::default()).await;
    match server.client("mallory", TlsOptions::default()).await {
        Err(ClientError::Refused {
            code: ErrorCode::AuthFailed,
            ..
        }) => {}
        other => panic!("expected a refusal of our key, got {other:?}"),
    }
    assert!(server.store.list_inbox().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_server_key_other_than_the_pinned_one_fails_at_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(dir.path(), TlsOptions::default()).await;
    let identity: Arc<dyn Identity> = private(CLIENT);
    let pinned = public("bob3072");
    let r = Client::connect_tls(
        &server.addr,
        identity,
        pinned.clone(),
        ClientConfig::default(),
        TlsOptions::default(),
    )
    .await;
    match r {
        Err(ClientError::WrongServer { got, expected }) => {
            assert_eq!(got, public(SERVER).id());
            assert_eq!(expected, pinned.id());
        }
        other => panic!("expected WrongServer, got {:?}", other.err()),
    }
    server.stop().await;
}

#[tokio::test]
async fn no_silent_fallback_between_versions_1_and_2() {
    let dir = tempfile::tempdir().unwrap();
    // A version 1 client at a version 2 server: it waits for a Hello that never comes, the
    // server for a ClientHello that never comes, until the server's handshake timeout.
    let config = ServerConfig {
        handshake_timeout: std::time::Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let server = TlsServer::start_with(dir.path(), TlsOptions::default(), config).await;
    let identity: Arc<dyn Identity> = private(CLIENT);
    let r = Client::connect(
        &server.addr,
        identity.clone(),
        public(SERVER),
        ClientConfig {
            timeout: std::time::Duration::from_secs(30),
            ..ClientConfig::default()
        },
    )
    .await;
    assert!(
        matches!(r, Err(ClientError::NotLetterlock(_))),
        "a v1 client at a v2 server: {:?}",
        r.err()
    );
    server.stop().await;

    // A version 2 client at a version 1 server: the server's Hello is not a TLS ServerHello
    // (its first byte, a frame length's high byte, is no TLS content type).
    let v1 = common::net::TestServer::start(dir.path()).await;
    let r = Client::connect_tls(
        &v1.addr,
        identity,
        public(SERVER),
        ClientConfig::default(),
        TlsOptions::default(),
    )
    .await;
    assert!(
        matches!(r, Err(ClientError::PlainV1Server)),
        "{:?}",
        r.err()
    );
    v1.stop().await;
}

#[tokio::test]
async fn require_pq_on_both_ends_still_connects_post_quantum() {
    let dir = tempfile::tempdir().unwrap();
    let strict = TlsOptions { require_pq: true };
    let server = TlsServer::start(dir.path(), strict).await;
    let client = server.client(CLIENT, strict).await.unwrap();
    assert_eq!(
        client.tls_session().unwrap().group,
        NamedGroup::X25519MLKEM768
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Interoperability with a standard TLS 1.3 client: the `openssl` binary (OpenSSL 3).

/// Frames as bytes on the wire (docs/PROTOCOL.md): length u32 BE (type + payload), type, payload.
const READY: &[u8] = &[0, 0, 0, 1, 0x03];
const FETCH: &[u8] = &[0, 0, 0, 1, 0x20];
const FETCH_DONE_0: &[u8] = &[0, 0, 0, 5, 0x23, 0, 0, 0, 0];

/// Runs `openssl ARGS` with `stdin`; panics with an install hint if the binary is missing: an
/// interop test that quietly passes without its counterpart proves nothing.
fn openssl(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}): the TLS interoperability test needs the OpenSSL 3 \
                 command-line tool on PATH (apt-get install openssl; .ci/run installs it)"
            )
        });
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The path of a fixed test private key, tightened to 0600 (as `common::private` does).
fn key_path(name: &str) -> PathBuf {
    let _ = private(name);
    common::keys_dir().join(format!("{name}_private.pem"))
}

/// A self-signed certificate for a letterlock key, made by `openssl req` as any user would.
fn openssl_cert(dir: &Path, name: &str) -> PathBuf {
    let cert = dir.join(format!("{name}.crt"));
    let out = openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key_path(name).to_str().unwrap(),
            "-subj",
            "/CN=openssl interop",
            "-days",
            "1",
            "-out",
            cert.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

/// `openssl s_client` to `addr` as `name`, sending `input` after the handshake; returns its
/// output once the server closes.
async fn s_client(addr: &str, dir: &Path, name: &str, extra: &[&str], input: &[u8]) -> Output {
    let cert = openssl_cert(dir, name);
    let key = key_path(name);
    let identity = [
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    s_client_args(addr, &[&identity[..], extra].concat(), input).await
}

/// `openssl s_client -tls1_3 -ign_eof` to `addr` with `extra` arguments.
async fn s_client_args(addr: &str, extra: &[&str], input: &[u8]) -> Output {
    let mut args: Vec<String> = ["s_client", "-connect", addr, "-tls1_3", "-ign_eof"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(&args, &input)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn openssl_s_client_speaks_version_2_with_a_letterlock_client_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(dir.path(), TlsOptions::default()).await;
    // Fetch (nothing waits: FetchDone 0), then a Ready the server does not expect, so it answers
    // with an Error frame and closes, which ends s_client.
    let mut input = FETCH.to_vec();
    input.extend_from_slice(READY);
    let out = s_client(
        &server.addr,
        dir.path(),
        CLIENT,
        &["-alpn", "letterlock/2"],
        &input,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("New, TLSv1.3"), "{text}");
    assert!(text.contains("ALPN protocol: letterlock/2"), "{text}");
    assert!(text.contains("Peer signature type: RSA-PSS"), "{text}");
    // The certificate names the key id a user compares with `letterlock fingerprint`.
    let id = public(SERVER).id();
    assert!(text.contains(&format!("CN = letterlock {id}")), "{text}");
    // OpenSSL 3.0 has no ML-KEM: the fallback group.
    assert!(text.contains("Server Temp Key: X25519"), "{text}");
    // Ready and its padding to 512 bytes (PROTOCOL.md §13 "Frame padding", the test vector),
    // then FetchDone{0} (padded too), then an Error frame (type 0x7f, code 1 = Protocol).
    let ready = out
        .stdout
        .windows(READY.len())
        .position(|w| w == READY)
        .expect("Ready");
    let rest = &out.stdout[ready + READY.len()..];
    assert!(rest.starts_with(&[0, 0, 1, 0xf7, 0x7e]), "{text}");
    assert!(rest[5..507].iter().all(|&b| b == 0), "{text}");
    let rest = &rest[507..];
    assert!(rest.starts_with(FETCH_DONE_0), "{text}");
    assert!(contains(rest, &[0x7f, 0x00, 0x01]), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn openssl_s_client_is_refused_without_a_trusted_key_certificate_alpn_or_ml_kem() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(dir.path(), TlsOptions::default()).await;
    let alpn = ["-alpn", "letterlock/2"];
    // The control: the same command with the trusted key gets Ready.
    let out = s_client(&server.addr, dir.path(), CLIENT, &alpn, READY).await;
    assert!(
        contains(&out.stdout, READY),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let untrusted = s_client(&server.addr, dir.path(), "mallory", &alpn, READY).await;
    let no_alpn = s_client(&server.addr, dir.path(), CLIENT, &[], READY).await;
    let other_alpn = s_client(&server.addr, dir.path(), CLIENT, &["-alpn", "h2"], READY).await;
    let no_cert = s_client_args(&server.addr, &alpn, READY).await;
    server.stop().await;

    let dir2 = tempfile::tempdir().unwrap();
    let strict = TlsServer::start(dir2.path(), TlsOptions { require_pq: true }).await;
    let classical = s_client(&strict.addr, dir2.path(), CLIENT, &alpn, READY).await;
    strict.stop().await;

    for (what, out, alert) in [
        ("untrusted key", &untrusted, "alert access denied"),
        ("no ALPN", &no_alpn, "alert access denied"),
        ("ALPN h2", &other_alpn, "alert no application protocol"),
        ("no certificate", &no_cert, "alert certificate required"),
        (
            "X25519 only at a require_pq server",
            &classical,
            "alert handshake failure",
        ),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !contains(&out.stdout, READY),
            "{what}: the server said Ready"
        );
        assert!(stderr.contains(alert), "{what}: no {alert:?} in\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// The Python client of docs/examples/v2_fetch.py: PROTOCOL.md section 13 is enough for a
// standard library TLS stack.

/// Runs the example with python3; panics with an install hint if python3 is missing.
async fn python_fetch(addr: &str, dir: &Path, server_pem: &str, client: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/v2_fetch.py");
    let cert = openssl_cert(dir, client);
    let args: Vec<String> = vec![
        script.to_str().unwrap().into(),
        addr.into(),
        common::keys_dir()
            .join(format!("{server_pem}_public.pem"))
            .to_str()
            .unwrap()
            .into(),
        cert.to_str().unwrap().into(),
        key_path(client).to_str().unwrap().into(),
    ];
    tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `python3` ({e}): this test runs the Python example client of \
                     docs/PROTOCOL.md (apt-get install python3)"
                )
            })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_python_example_fetches_over_version_2_and_pins_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsServer::start(dir.path(), TlsOptions::default()).await;
    let to = clients().by_name("client").unwrap().clone();
    letterlock::server::queue_for_client(
        server.store.as_ref(),
        private(SERVER),
        &to,
        std::io::Cursor::new(b"for python".to_vec()),
        &SealOptions::default(),
    )
    .await
    .unwrap();

    let out = python_fetch(&server.addr, dir.path(), SERVER, CLIENT).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ready TLSv1.3"), "{stdout}");
    assert!(
        stdout.contains("fetch done: 1 messages (1 received)"),
        "{stdout}"
    );

    // Pinned to another key, it refuses the real server before sending a frame.
    let out = python_fetch(&server.addr, dir.path(), "bob3072", CLIENT).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not the pinned one"), "{stderr}");

    // An untrusted key never gets Ready.
    let out = python_fetch(&server.addr, dir.path(), SERVER, "mallory").await;
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// What an eavesdropper records.

const SECRET: &[u8] = b"the recorded secret: meet at the old mill at nine";

/// Sends SECRET through a recording relay, over version 1 or 2; the recordings and the id.
async fn record_one_message(tls: bool) -> (Vec<u8>, Vec<u8>, [u8; 16]) {
    let dir = tempfile::tempdir().unwrap();
    let (v2, v1);
    let server_addr = if tls {
        v2 = Some(TlsServer::start(dir.path(), TlsOptions::default()).await);
        v1 = None;
        v2.as_ref().unwrap().addr.clone()
    } else {
        v1 = Some(common::net::TestServer::start(dir.path()).await);
        v2 = None;
        v1.as_ref().unwrap().addr.clone()
    };
    let (relay, recording) = recording_relay(server_addr).await;
    let identity: Arc<dyn Identity> = private(CLIENT);
    let config = ClientConfig::default();
    let mut client = if tls {
        Client::connect_tls(
            &relay,
            identity,
            public(SERVER),
            config,
            TlsOptions::default(),
        )
        .await
        .unwrap()
    } else {
        Client::connect(&relay, identity, public(SERVER), config)
            .await
            .unwrap()
    };
    let delivery = client
        .send(
            std::io::Cursor::new(SECRET.to_vec()),
            SealOptions::default(),
        )
        .await
        .unwrap();
    client.close().await.unwrap();
    let (c2s, s2c) = recording.await.unwrap();
    if let Some(s) = v2 {
        s.stop().await;
    }
    if let Some(s) = v1 {
        s.stop().await;
    }
    (c2s, s2c, delivery.id.0)
}

#[tokio::test]
async fn a_recorded_session_yields_nothing_even_with_both_private_keys() {
    use letterlock::envelope::MAGIC;
    // The control: on the version 1 wire the recording holds the sealed message, which the
    // server's private key opens (with the client's public key to verify it).
    let (c2s, s2c, id) = record_one_message(false).await;
    let at = c2s
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .expect("v1: a sealed header");
    // The Send frame around it: length (u32 BE) and type 0x10 just before the header.
    let len = u32::from_be_bytes(c2s[at - 5..at - 1].try_into().unwrap()) as usize;
    assert_eq!(c2s[at - 1], 0x10);
    let sealed = &c2s[at..at + len - 1];
    assert_eq!(
        common::open(private(SERVER), &public(CLIENT), sealed).unwrap(),
        SECRET
    );
    assert!(
        contains(&s2c, &id),
        "v1: the Ack names the message id in the clear"
    );

    // Version 2: the same exchange, recorded the same way. Given both private keys there is
    // still nothing to open: TLS 1.3 keys come from ephemeral X25519MLKEM768 shares, never from
    // the RSA keys, and no sealed header, message id, plaintext or frame is in the clear.
    let (c2s, s2c, id) = record_one_message(true).await;
    assert!(c2s.len() > SECRET.len() && !s2c.is_empty());
    for (direction, bytes) in [("client→server", &c2s), ("server→client", &s2c)] {
        assert!(
            !contains(bytes, &MAGIC),
            "{direction}: a sealed header in the clear"
        );
        assert!(
            !contains(bytes, &id),
            "{direction}: the message id in the clear"
        );
        assert!(
            !contains(bytes, SECRET),
            "{direction}: the plaintext in the clear"
        );
        assert!(
            !contains(bytes, READY),
            "{direction}: a Ready frame in the clear"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Admission, as far as this slice goes: the version 1 limits apply to the TLS handshake.

/// Only a deadlock would reach it.
const DEADLOCK: std::time::Duration = std::time::Duration::from_secs(60);

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_handshake_timeout_without_a_byte() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        handshake_timeout: std::time::Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = TlsServer::start_with(dir.path(), TlsOptions::default(), config).await;
    let mut socket = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(DEADLOCK, socket.read_to_end(&mut got))
        .await
        .expect("the server never closed the silent connection")
        .unwrap();
    assert!(got.is_empty(), "a silent peer was sent {} bytes", got.len());
    server.stop().await;
}

#[tokio::test]
async fn a_full_version_2_server_closes_new_connections_and_serves_the_admitted_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = TlsServer::start_with(dir.path(), TlsOptions::default(), config).await;
    let mut first = server.client(CLIENT, TlsOptions::default()).await.unwrap();
    let second = tokio::time::timeout(DEADLOCK, server.client(CLIENT, TlsOptions::default()))
        .await
        .expect("the busy server left the second client hanging");
    assert!(
        matches!(second, Err(ClientError::Busy { attempts: 1 })),
        "{:?}",
        second.err()
    );
    // The admitted client is still served.
    first
        .send(
            std::io::Cursor::new(b"still here".to_vec()),
            SealOptions::default(),
        )
        .await
        .unwrap();
    server.stop().await;
}

/// A client turned away by a full server backs off and tries again, saying so each time, and
/// is served once a slot frees; the busy answers counted are exactly the retries announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_retries_a_full_server_with_backoff_until_a_slot_frees() {
    use letterlock::client::{Backoff, Retry, Transport};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = TlsServer::start_with(dir.path(), TlsOptions::default(), config).await;
    let holder = server.client(CLIENT, TlsOptions::default()).await.unwrap();
    // The slot stays taken until the retrying client has been turned away twice.
    let (two_retries, release) = oneshot::channel::<()>();
    let freed = tokio::spawn(async move {
        let _ = release.await;
        holder.close().await.unwrap();
    });
    let backoff = Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(200),
        // Generous: only a server that never frees the slot would reach it.
        deadline: Duration::from_secs(60),
    };
    let mut retries: Vec<Retry> = Vec::new();
    let mut two_retries = Some(two_retries);
    let client = Client::connect_retrying(
        &server.addr,
        private(CLIENT),
        public(SERVER),
        ClientConfig::default(),
        Transport::Tls(TlsOptions::default()),
        backoff,
        |r| {
            retries.push(*r);
            if r.attempt == 3
                && let Some(tx) = two_retries.take()
            {
                let _ = tx.send(());
            }
        },
    )
    .await;
    freed.await.unwrap();
    let mut client = client.expect("served once the slot was freed");
    assert!(retries.len() >= 2, "{retries:?}");
    for (i, r) in retries.iter().enumerate() {
        assert_eq!(r.attempt, i as u32 + 2);
        // Each wait within its jitter range: [base / 2, base], base doubling from 20 ms to 200.
        let base = (Duration::from_millis(20) * (1 << i.min(10))).min(backoff.max);
        assert!(r.wait >= base / 2 && r.wait <= base, "{i}: {r:?}");
    }
    assert_eq!(
        client.tls_session().unwrap().group,
        NamedGroup::X25519MLKEM768
    );
    client
        .send(
            std::io::Cursor::new(b"after the wait".to_vec()),
            SealOptions::default(),
        )
        .await
        .unwrap();
    server.stop().await;
}

/// Busy is the only failure retried: a client the server does not trust fails at once, and a
/// server that stays full ends the wait at the deadline with the attempts counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_busy_is_retried_and_never_past_the_deadline() {
    use letterlock::client::{Backoff, Transport};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = TlsServer::start_with(dir.path(), TlsOptions::default(), config).await;
    let backoff = Backoff {
        first: Duration::from_millis(10),
        max: Duration::from_millis(50),
        deadline: Duration::from_millis(400),
    };
    let connect = |who: &'static str| {
        let addr = server.addr.clone();
        async move {
            let mut retried = 0u32;
            let r = Client::connect_retrying(
                &addr,
                private(who),
                public(SERVER),
                ClientConfig::default(),
                Transport::Tls(TlsOptions::default()),
                backoff,
                |_| retried += 1,
            )
            .await;
            (r, retried)
        }
    };
    // An untrusted key (the server is not full): refused once, no retry.
    let (refused, retried) = connect("mallory").await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            })
        ),
        "{:?}",
        refused.err()
    );
    assert_eq!(retried, 0);
    // Full for good: busy until the deadline, each turn-away counted.
    let holder = server.client(CLIENT, TlsOptions::default()).await.unwrap();
    let (busy, retried) = connect(CLIENT).await;
    match busy {
        Err(ClientError::Busy { attempts }) => {
            assert!(attempts >= 2, "{attempts}");
            assert_eq!(attempts, retried + 1);
        }
        other => panic!("expected Busy, got {:?}", other.err()),
    }
    drop(holder);
    server.stop().await;
}
