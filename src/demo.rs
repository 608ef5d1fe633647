//! `letterlock demo`: the one command a newcomer runs. In a temporary folder it generates
//! keys, starts a protocol version 2 server (TLS 1.3, X25519MLKEM768) with an interceptor
//! ([`crate::intercept`]) in front of it, sends secrets through the interceptor in both modes,
//! runs every attack through the real proxy, tampers a sealed message at rest (the one place
//! the message's own signature is what refuses it: on v2 TLS refuses every change on the wire
//! first), delivers a message from the server, and ends with a PASS/FAIL table; the exit code is
//! non-zero if anything failed. Everything on the network is v2; the at-rest section says so.
//!
//! Keys are 2048 bits so the demo takes seconds (letterlock's default is 3072). Everything
//! runs in this process on 127.0.0.1 with free ports; nothing outlives the temporary folder.

use std::io::{Cursor, IsTerminal};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::intercept::{self, Config, Direction, Event, Proxy, Tamper, tls};
use letterlock::client::{Client, ClientConfig, ClientError, Content, Output};
use letterlock::envelope::{self, Mode, OpenOptions, SealOptions};
use letterlock::keys::{self, Identity, KeyError, PrivateKey, PublicKey, TrustList, Trusted};
use letterlock::server::{self, Server, ServerConfig};
use letterlock::store::{SqliteStore, Store, StoreError, TrustRequest};
use letterlock::text::ByteCount;
use letterlock::tls::{NamedGroup, TlsError, TlsOptions};
use letterlock::wire::ErrorCode;

/// Key size used by the demo: fast to generate; still NIST's 112-bit level.
pub const DEMO_BITS: usize = 2048;
/// Longest the demo waits for any one thing.
const WAIT: Duration = Duration::from_secs(10);
/// Hybrid chunk size for the attack messages, so a short message has several chunks to
/// truncate and reorder.
const ATTACK_CHUNK: u32 = 1024;

/// Why the demo could not run at all (a failed property is a FAIL row, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Intercept(#[from] intercept::InterceptError),
    #[error(transparent)]
    Queue(#[from] server::QueueError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("a background task failed")]
    Task,
    #[error("client to client: {0}")]
    Step(String),
}

/// ANSI colour when stdout is a terminal, plain text otherwise.
#[derive(Clone, Copy)]
struct Paint {
    on: bool,
}

impl Paint {
    fn detect() -> Self {
        Paint {
            on: crate::cli::colour(std::io::stdout().is_terminal()),
        }
    }

    fn code(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    fn head(&self, s: &str) -> String {
        self.code("1;36", s)
    }

    fn good(&self, s: &str) -> String {
        self.code("32", s)
    }

    fn bad(&self, s: &str) -> String {
        self.code("1;31", s)
    }

    fn dim(&self, s: &str) -> String {
        self.code("2", s)
    }

    fn verdict(&self, pass: bool) -> String {
        if pass {
            self.code("1;32", "PASS")
        } else {
            self.bad("FAIL")
        }
    }
}

/// One row of the final table.
struct Check {
    property: String,
    how: String,
    pass: bool,
}

/// The parties and the running server.
struct World {
    dir: tempfile::TempDir,
    server_key: Arc<PrivateKey>,
    client_key: Arc<PrivateKey>,
    mallory_key: Arc<PrivateKey>,
    /// Two more clients, for client-to-client messages (section 7).
    alice_key: Arc<PrivateKey>,
    bob_key: Arc<PrivateKey>,
    client: Trusted,
    store: Arc<SqliteStore>,
    server_addr: SocketAddr,
}

impl World {
    fn server_public(&self) -> PublicKey {
        self.server_key.public().clone()
    }

    async fn connect(&self, proxy: &Proxy, who: &Arc<PrivateKey>) -> Result<Client, ClientError> {
        self.connect_as(proxy, who.clone()).await
    }

    /// Connects through `proxy` as whoever `identity` says it is.
    async fn connect_as(
        &self,
        proxy: &Proxy,
        identity: Arc<dyn Identity>,
    ) -> Result<Client, ClientError> {
        Client::connect_tls(
            &proxy.local_addr().to_string(),
            identity,
            self.server_public(),
            ClientConfig {
                timeout: WAIT,
                ..ClientConfig::default()
            },
            TlsOptions::default(),
        )
        .await
    }

    async fn proxy(&self, tamper: Option<Tamper>) -> Result<Proxy, DemoError> {
        Ok(Proxy::start(
            "127.0.0.1:0",
            &self.server_addr.to_string(),
            Config {
                tamper,
                // Public: the size of the server's public key.
                key_bytes: Some(self.server_key.public().modulus_len()),
                spoof_sender: Some(self.mallory_key.public().id()),
                ..Config::default()
            },
        )
        .await?)
    }

    async fn inbox_len(&self) -> Result<usize, DemoError> {
        Ok(self.store.list_inbox().await?.len())
    }
}

/// Runs the demo; exit code 0 only if every property held.
pub async fn run() -> Result<ExitCode, DemoError> {
    let p = Paint::detect();
    let started = Instant::now();
    let mut checks = Vec::new();
    println!(
        "{}",
        p.head("letterlock demo: what an eavesdropper and a tamperer get")
    );
    println!(
        "{}",
        p.dim("(server logs go to stderr; run with 2>/dev/null for the tour alone)")
    );

    let (world, stop, server_task) = setup(p).await?;
    eavesdrop(p, &world, &mut checks).await?;
    attacks(p, &world, &mut checks).await?;
    mallory(p, &world, &mut checks).await?;
    at_rest(p, &world, &mut checks).await?;
    from_server(p, &world, &mut checks).await?;
    client_to_client(p, &world, &mut checks).await?;

    let _ = stop.send(());
    let _ = server_task.await;
    let all = checks.iter().all(|c| c.pass);
    table(p, &checks);
    println!(
        "{} in {:.1} s; the temporary folder {} is removed now.",
        if all {
            p.good("every property held")
        } else {
            p.bad("SOME PROPERTIES FAILED")
        },
        started.elapsed().as_secs_f64(),
        world.dir.path().display()
    );
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn section(p: Paint, title: &str) {
    println!("\n{}", p.head(&format!("== {title}")));
}

async fn setup(
    p: Paint,
) -> Result<
    (
        World,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    DemoError,
> {
    section(p, "1. Keys");
    let dir = tempfile::Builder::new()
        .prefix("letterlock-demo")
        .tempdir()?;
    println!("temporary folder {}", dir.path().display());
    let mut made = Vec::new();
    for name in ["server", "client", "mallory", "alice", "bob"] {
        let path = dir.path().to_owned();
        let key = tokio::task::spawn_blocking(move || {
            keys::generate_pair_files(&path, name, DEMO_BITS, false)
        })
        .await
        .map_err(|_| DemoError::Task)??;
        println!(
            "{name:<8} {} ({DEMO_BITS}-bit RSA, for speed; letterlock's default is {})",
            key.public().id(),
            keys::DEFAULT_BITS
        );
        made.push(Arc::new(key));
    }
    let bob_key = made.pop().ok_or(DemoError::Task)?;
    let alice_key = made.pop().ok_or(DemoError::Task)?;
    let mallory_key = made.pop().ok_or(DemoError::Task)?;
    let client_key = made.pop().ok_or(DemoError::Task)?;
    let server_key = made.pop().ok_or(DemoError::Task)?;
    println!(
        "the server trusts \"client\", alice and bob; nobody trusts mallory; every client pins \
         the server's key"
    );

    section(p, "2. Server and interceptor");
    let store = Arc::new(SqliteStore::open(dir.path().join("server.db"))?);
    let mut clients = TrustList::new();
    clients.add("client", client_key.public().clone())?;
    let client = clients.by_name("client").cloned().ok_or(DemoError::Task)?;
    // The trusted clients live in the store, as `letterlock server` keeps them: a change made
    // there while the server runs (section 7's key swap) reaches its directory at once.
    for (name, key) in [
        ("client", &client_key),
        ("alice", &alice_key),
        ("bob", &bob_key),
    ] {
        trust(&store, name, key.public(), false).await?;
    }
    let server = Arc::new(
        Server::new(
            server_key.clone(),
            clients,
            store.clone(),
            ServerConfig {
                // As `letterlock server` does: the text only on a terminal, never in a file
                // the demo's output was redirected to (found by a trial run).
                log_text: std::io::stderr().is_terminal(),
                ..ServerConfig::default()
            },
        )
        .trust_from_store()
        .with_tls(TlsOptions::default())?,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    println!(
        "server listening on {server_addr}: protocol version 2 (TLS 1.3, X25519MLKEM768, ALPN \
         letterlock/2, both sides pinned by key id); mailbox server.db in the temporary folder"
    );
    println!(
        "every connection below goes client -> interceptor -> server on version 2; the \
         interceptor holds no keys"
    );
    Ok((
        World {
            dir,
            server_key,
            client_key,
            mallory_key,
            alice_key,
            bob_key,
            client,
            store,
            server_addr,
        },
        stop,
        server_task,
    ))
}

/// Waits until `n` connections of `proxy` closed.
async fn closed(proxy: &Proxy, n: usize) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let count = proxy
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Closed { .. }))
            .count();
        if count >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The interceptor's TLS record lines of `conn`.
fn tls_lines(proxy: &Proxy, conn: u32) -> Vec<tls::TlsInfo> {
    proxy
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Tls(i) if i.conn == conn => Some(i),
            _ => None,
        })
        .collect()
}

async fn eavesdrop(p: Paint, w: &World, checks: &mut Vec<Check>) -> Result<(), DemoError> {
    section(p, "3. A passive eavesdropper (version 2)");
    let proxy = w.proxy(None).await?;
    for (n, mode) in [Mode::Asymmetric, Mode::Hybrid].into_iter().enumerate() {
        let conn = n as u32 + 1;
        let secret = format!("The spare key is under the blue flowerpot ({mode} secret)");
        println!(
            "\n{}",
            p.head(&format!("-- {mode} mode: sending {secret:?}"))
        );
        let mut group = None;
        let sent = match w.connect(&proxy, &w.client_key).await {
            Ok(mut c) => {
                group = c.tls_session().map(|s| s.group);
                let sent = c
                    .send(
                        Cursor::new(secret.clone().into_bytes()),
                        SealOptions::mode(mode),
                    )
                    .await;
                let _ = c.close().await;
                sent
            }
            Err(e) => Err(e),
        };
        let ok_closed = closed(&proxy, n + 1).await;
        println!("what the interceptor saw on connection {conn}:");
        let lines = tls_lines(&proxy, conn);
        for line in &lines {
            println!("  {line}");
        }
        let frames = proxy
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Frame(f) if f.conn == conn))
            .count();
        let search = proxy.search(&secret)?;
        let hidden = !search.is_found() && ok_closed;
        println!(
            "  {}",
            if hidden {
                p.good(&search.to_string())
            } else {
                p.bad(&search.to_string())
            }
        );
        let sizes: Vec<String> = lines
            .iter()
            .filter(|l| l.dir == Direction::ToServer && l.content_type == tls::APPLICATION_DATA)
            .map(|l| l.size.to_string())
            .collect();
        println!(
            "  sizes on the wire: only the client's encrypted TLS records, [{}] bytes; the frames \
             inside are padded to buckets where the build pads them (PROTOCOL.md §13), and no \
             frame boundary or type is visible",
            sizes.join(", ")
        );
        checks.push(Check {
            property: format!("Confidentiality ({mode}, v2)"),
            how: format!(
                "plaintext not found in {} captured bytes (raw, UTF-16, base64, hex)",
                search.scanned
            ),
            pass: hidden,
        });
        let hello = |needle: &str| lines.iter().any(|l| l.to_string().contains(needle));
        let types_hidden = frames == 0
            && !lines.is_empty()
            && hello("ServerHello:")
            && lines
                .iter()
                .filter(|l| l.content_type == tls::APPLICATION_DATA)
                .count()
                >= 2;
        checks.push(Check {
            property: format!("Frame types hidden ({mode}, v2)"),
            how: format!(
                "0 letterlock frames parsed, {} TLS records seen: only record type and size",
                lines.len()
            ),
            pass: types_hidden,
        });
        if n == 0 {
            let pq =
                group == Some(NamedGroup::X25519MLKEM768) && hello("group chosen X25519MLKEM768");
            println!(
                "  key exchange: the client negotiated {}; the interceptor read the same in the \
                 ServerHello",
                group.map_or("nothing".to_owned(), |g| format!("{g:?}"))
            );
            checks.push(Check {
                property: "Post-quantum, forward-secret keys (v2)".into(),
                how: "X25519MLKEM768 negotiated (client session and ServerHello agree)".into(),
                pass: pq,
            });
        }
        let (proven, how) = match &sent {
            Ok(d) => {
                println!(
                    "  client: {} message {}: the server's ack tag matched",
                    p.good("delivery proven"),
                    d.id
                );
                (true, "client checked the server's ack tag".to_owned())
            }
            Err(e) => {
                println!("  client: {}", p.bad(&e.to_string()));
                (false, e.to_string())
            }
        };
        checks.push(Check {
            property: format!("Proof of delivery ({mode}, v2)"),
            how,
            pass: proven,
        });
        let verified = match &sent {
            Ok(d) => server_reads(w, &d.id.to_string(), &secret).await,
            Err(_) => Err("nothing was delivered".into()),
        };
        match &verified {
            Ok(line) => println!("  server: {}", p.good(line)),
            Err(e) => println!("  server: {}", p.bad(e)),
        }
        checks.push(Check {
            property: format!("Authenticity + integrity ({mode}, v2)"),
            how: "server opened the stored message, signature verified, text matches".into(),
            pass: verified.is_ok(),
        });
    }
    proxy.stop().await;
    Ok(())
}

/// The server opens a stored message again, as `letterlock server read` does.
async fn server_reads(w: &World, id: &str, expected: &str) -> Result<String, String> {
    let msg = w.store.find_inbox(id).await.map_err(|e| e.to_string())?;
    let identity: Arc<dyn Identity> = w.server_key.clone();
    let client = w.client.key.clone();
    let sender = msg.summary.sender_name.clone();
    let body = msg.body;
    let (plain, opened) = tokio::task::spawn_blocking(move || {
        envelope::open_to_vec(identity, &client, &OpenOptions::default(), body)
    })
    .await
    .map_err(|_| "the open task failed".to_owned())?
    .map_err(|e| e.to_string())?;
    if plain.as_slice() != expected.as_bytes() {
        return Err("the stored message opened to a different text".into());
    }
    Ok(format!(
        "stored message {id} opened: {} from {sender:?}, {} mode, signature verified: {:?}",
        ByteCount(opened.plaintext_len),
        opened.header.mode,
        String::from_utf8_lossy(&plain)
    ))
}

async fn attacks(p: Paint, w: &World, checks: &mut Vec<Check>) -> Result<(), DemoError> {
    section(p, "4. An active attacker on the wire (version 2)");
    println!(
        "{}",
        p.dim(
            "inside TLS the interceptor cannot find the sealed message: each attack changes the \
             TLS records instead (it says what it did); the message's own signature is shown \
             at rest in section 5"
        )
    );
    for tamper in Tamper::ALL {
        let check = attack(p, w, tamper).await?;
        checks.push(check);
    }
    Ok(())
}

fn attack_text() -> String {
    "Transfer 100 coins to account 7731. ".repeat(60)
}

async fn attack(p: Paint, w: &World, tamper: Tamper) -> Result<Check, DemoError> {
    println!("\n{}", p.head(&format!("-- {tamper}: {}", explain(tamper))));
    let proxy = w.proxy(Some(tamper)).await?;
    let before = w.inbox_len().await?;
    let result = match w.connect(&proxy, &w.client_key).await {
        Ok(mut c) => {
            let sent = c
                .send(
                    Cursor::new(attack_text().into_bytes()),
                    SealOptions::mode(Mode::Hybrid),
                )
                .await;
            if sent.is_ok() {
                let _ = c.close().await;
            }
            sent
        }
        Err(e) => Err(e),
    };
    closed(&proxy, 1).await;
    if tamper == Tamper::Replay {
        proxy
            .wait_for(|e| matches!(e, Event::Replayed { .. }), WAIT)
            .await;
    }
    let after = w.inbox_len().await?;
    let mut attacked = false;
    let mut replayed = false;
    for e in &proxy.events() {
        match e {
            Event::Tampered { .. } => {
                attacked = true;
                println!("  interceptor: {}", p.code("33", &e.to_string()));
            }
            Event::NotTampered { .. } => println!("  interceptor: {}", p.bad(&e.to_string())),
            Event::Replayed { .. } => {
                replayed = true;
                println!("  interceptor: {e}");
            }
            _ => {}
        }
    }
    proxy.stop().await;
    let client_line = match &result {
        Ok(d) => format!("delivered, ack proven (message {})", d.id),
        Err(e) => format!("no delivery claimed: {e}"),
    };
    println!("  client: {client_line}");
    let stored = after.saturating_sub(before);
    println!("  store: {stored} new message(s) in the inbox");
    let (pass, how) = match tamper {
        // The original is the client's own, legitimately delivered; the replay must not be.
        Tamper::Replay => (
            attacked && replayed && result.is_ok() && stored == 1,
            "replayed bytes fail the fresh TLS handshake; only the original stored".to_owned(),
        ),
        // The server stored it (the attack is on the way back); the client must not believe it.
        Tamper::ForgeAck => (
            attacked && result.is_err(),
            "altered record fails its AEAD tag: client claims no delivery".into(),
        ),
        Tamper::SpoofSender => (
            attacked && result.is_err() && stored == 0,
            "identity is inside TLS; altered flight fails the handshake; nothing stored".into(),
        ),
        _ => (
            attacked && result.is_err() && stored == 0,
            "altered record fails its AEAD tag: connection fails, no delivery, nothing stored"
                .into(),
        ),
    };
    println!("  {}", p.verdict(pass));
    Ok(Check {
        property: format!("{} (v2 wire)", property(tamper)),
        how,
        pass,
    })
}

fn explain(t: Tamper) -> &'static str {
    match t {
        Tamper::Flip => "flip one bit of the client's first record after the handshake",
        Tamper::FlipHeader => "flip the first encrypted byte of that record",
        Tamper::Truncate => "cut the end of that record",
        Tamper::Reorder => "swap the client's first two records after the handshake",
        Tamper::Replay => "record the client's connection and play it again later",
        Tamper::SpoofSender => "change the client's identity (its encrypted certificate flight)",
        Tamper::ForgeAck => "alter the server's acknowledgement on its way back",
    }
}

fn property(t: Tamper) -> &'static str {
    match t {
        Tamper::Flip => "Integrity: flipped bit",
        Tamper::FlipHeader => "Integrity: flipped first byte",
        Tamper::Truncate => "Integrity: truncation",
        Tamper::Reorder => "Integrity: reordered records",
        Tamper::Replay => "No replay",
        Tamper::SpoofSender => "Integrity: altered identity flight",
        Tamper::ForgeAck => "Unforgeable proof of delivery",
    }
}

fn at_rest_property(t: Tamper) -> &'static str {
    match t {
        Tamper::Flip => "flipped body bit",
        Tamper::FlipHeader => "flipped header bit",
        Tamper::Truncate => "truncation",
        Tamper::Reorder => "reordered chunks",
        _ => "spoofed sender id",
    }
}

/// The message-level protection, shown at rest: a sealed message tampered the way the
/// interceptor tampers one on a version 1 wire, then opened with the right keys.
async fn at_rest(p: Paint, w: &World, checks: &mut Vec<Check>) -> Result<(), DemoError> {
    section(
        p,
        "5. A tampered sealed message at rest (no network: the message's own signature)",
    );
    println!(
        "{}",
        p.dim(&format!(
            "a {}-byte message sealed from \"client\" to the server ({ATTACK_CHUNK}-byte chunks \
             in hybrid mode), changed with the interceptor's own attacks, then opened with the \
             server's key",
            attack_text().len()
        ))
    );
    let k = w.server_key.public().modulus_len();
    for tamper in [
        Tamper::Flip,
        Tamper::FlipHeader,
        Tamper::Truncate,
        Tamper::Reorder,
        Tamper::SpoofSender,
    ] {
        let mut all = true;
        for mode in [Mode::Asymmetric, Mode::Hybrid] {
            let sender = w.client_key.clone();
            let to = w.server_public();
            let opts = SealOptions {
                chunk_size: ATTACK_CHUNK,
                ..SealOptions::mode(mode)
            };
            let sealed = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                envelope::seal(
                    sender.as_ref(),
                    &to,
                    &opts,
                    Cursor::new(attack_text().into_bytes()),
                    &mut out,
                )
                .map(|_| out)
            })
            .await
            .map_err(|_| DemoError::Task)?;
            let Ok(sealed) = sealed else {
                all = false;
                continue;
            };
            let (changed, detail) = match intercept::tamper_sealed(
                tamper,
                sealed,
                k,
                Some(w.mallory_key.public().id()),
            ) {
                Ok(done) => done,
                Err((_, why)) => {
                    println!(
                        "  {tamper} ({mode}): {}",
                        p.bad(&format!("not done: {why}"))
                    );
                    all = false;
                    continue;
                }
            };
            let identity: Arc<dyn Identity> = w.server_key.clone();
            let client = w.client.key.clone();
            let opened = tokio::task::spawn_blocking(move || {
                envelope::open_to_vec(
                    identity,
                    &client,
                    &OpenOptions::default(),
                    Cursor::new(changed),
                )
            })
            .await
            .map_err(|_| DemoError::Task)?;
            let refused = opened.is_err();
            all &= refused;
            println!(
                "  {tamper} ({mode}): {detail}\n    open: {}",
                match &opened {
                    Err(e) => p.good(&format!("refused: {e}")),
                    Ok(_) => p.bad("OPENED"),
                }
            );
        }
        checks.push(Check {
            property: format!("At rest: {}", at_rest_property(tamper)),
            how: "tampered sealed file refused when opened (both modes)".into(),
            pass: all,
        });
    }
    Ok(())
}

async fn mallory(p: Paint, w: &World, checks: &mut Vec<Check>) -> Result<(), DemoError> {
    println!(
        "\n{}",
        p.head("-- mallory: an untrusted key tries to connect and send")
    );
    let pass = refused_at_the_door(p, w, w.mallory_key.clone(), "mallory", |e| {
        matches!(
            e,
            ClientError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            }
        )
    })
    .await?;
    checks.push(Check {
        property: "Only trusted clients".into(),
        how: "mallory refused in the TLS handshake (access_denied); nothing stored".into(),
        pass,
    });

    println!(
        "\n{}",
        p.head(
            "-- mallory as \"client\": she presents the client's public key (anyone may have \
             it) and signs with her own"
        )
    );
    let impostor = Arc::new(Impostor {
        claims: w.client_key.public().clone(),
        signs_with: w.mallory_key.clone(),
    });
    // The server's verifier finds her signature bad: TLS answers that with decrypt_error.
    let pass = refused_at_the_door(
        p,
        w,
        impostor,
        "impostor",
        |e| matches!(e, ClientError::Tls(t) if t.is_signature_refused()),
    )
    .await?;
    checks.push(Check {
        property: "Sender authentication (v2 wire)".into(),
        how: "the client's public key without its private key: her handshake signature fails \
              (decrypt_error); nothing stored"
            .into(),
        pass,
    });
    Ok(())
}

/// Connects as `who` through a proxy that changes nothing, and tries to send: true when the
/// attempt failed as `refused` expects and nothing was stored.
async fn refused_at_the_door(
    p: Paint,
    w: &World,
    who: Arc<dyn Identity>,
    name: &str,
    refused: impl Fn(&ClientError) -> bool,
) -> Result<bool, DemoError> {
    let proxy = w.proxy(None).await?;
    let before = w.inbox_len().await?;
    let result = match w.connect_as(&proxy, who).await {
        Ok(mut c) => c
            .send(
                Cursor::new(b"I am the client, honest".to_vec()),
                SealOptions::default(),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    proxy.stop().await;
    let stored = w.inbox_len().await?.saturating_sub(before);
    let pass = result.as_ref().is_err_and(refused) && stored == 0;
    match &result {
        Ok(()) => println!("  {name}: {}", p.bad("the server accepted the message")),
        Err(e) => println!("  {name}: {e}"),
    }
    println!("  store: {stored} new message(s)");
    println!("  {}", p.verdict(pass));
    Ok(pass)
}

/// Who mallory is when she claims to be someone else: that one's public key, her own private
/// key. Every signature she makes is hers; the peer checks it against the key claimed.
struct Impostor {
    claims: PublicKey,
    signs_with: Arc<PrivateKey>,
}

impl Identity for Impostor {
    fn public(&self) -> &PublicKey {
        &self.claims
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.signs_with.sign(message)
    }

    fn decrypt_oaep(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        self.signs_with.decrypt_oaep(ciphertext, label)
    }
}

async fn from_server(p: Paint, w: &World, checks: &mut Vec<Check>) -> Result<(), DemoError> {
    section(p, "6. A message from the server (version 2)");
    let secret = "Your parcel is at the north gate; the code is 9163.";
    let server_key = w.server_key.clone();
    let store = w.store.clone();
    let to = w.client.clone();
    let sealed = server::queue_for_client(
        store.as_ref(),
        server_key,
        &to,
        Cursor::new(secret.as_bytes().to_vec()),
        &SealOptions::mode(Mode::Hybrid),
    )
    .await?;
    println!(
        "server queued message {} for \"client\" ({}, hybrid), sealed at rest",
        sealed.header.message_id,
        ByteCount(sealed.plaintext_len)
    );
    let proxy = w.proxy(None).await?;
    let mut got = Vec::new();
    let fetched = match w.connect(&proxy, &w.client_key).await {
        Ok(mut c) => {
            c.fetch(&Output::Memory { limit: 1 << 20 }, |r| {
                if let Content::Memory(text) = &r.content {
                    got.push(String::from_utf8_lossy(text).into_owned());
                }
                Ok(())
            })
            .await
        }
        Err(e) => Err(e),
    };
    closed(&proxy, 1).await;
    for line in tls_lines(&proxy, 1) {
        if line.dir == Direction::ToClient && line.content_type == tls::APPLICATION_DATA {
            println!("  interceptor: {line}");
        }
    }
    let search = proxy.search(secret)?;
    proxy.stop().await;
    let pending = w.store.pending_outbox(&w.client.key.id().0).await?.len();
    match &fetched {
        Ok(n) => println!("  client: recv_msg got {n} message(s): {got:?} (signature verified)"),
        Err(e) => println!("  client: {}", p.bad(&e.to_string())),
    }
    println!("  {search}");
    println!(
        "  server: {pending} message(s) still pending (removed once the client proved receipt)"
    );
    let pass = matches!(fetched, Ok(1))
        && got.first().map(String::as_str) == Some(secret)
        && !search.is_found()
        && pending == 0;
    println!("  {}", p.verdict(pass));
    checks.push(Check {
        property: "Server -> client delivery (v2)".into(),
        how: "recv_msg opened and verified it; plaintext not on the wire; removed on proof".into(),
        pass,
    });
    Ok(())
}

fn table(p: Paint, checks: &[Check]) {
    section(p, "8. Summary");
    let pw = checks
        .iter()
        .map(|c| c.property.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!("{:<pw$}  {:<6}  how it was shown", "property", "result");
    println!("{}", "-".repeat(pw + 2 + 6 + 2 + 40));
    for c in checks {
        // Pad before colouring: escape codes have no width.
        let verdict = format!("{:<6}", if c.pass { "PASS" } else { "FAIL" });
        let verdict = if c.pass {
            p.good(&verdict)
        } else {
            p.bad(&verdict)
        };
        println!("{:<pw$}  {verdict}  {}", c.property, c.how);
    }
}

/// Trusts `key` under `name` in the server's store (`letterlock server trust`), or replaces
/// the name's key (`--replace`).
async fn trust(
    store: &SqliteStore,
    name: &str,
    key: &PublicKey,
    replace: bool,
) -> Result<(), DemoError> {
    store
        .trust_client(TrustRequest {
            name: name.to_owned(),
            key_id: key.id().0,
            public_key: key.spki_der().to_vec(),
            replace,
            now: envelope::unix_now(),
        })
        .await?;
    Ok(())
}

/// Whether `needle` appears in any file of the server's store (the database, its WAL and the
/// blob folder): what an operator, or whoever took the machine, can read at rest.
fn store_holds(dir: &std::path::Path, needle: &[u8]) -> std::io::Result<bool> {
    let mut found = false;
    let mut visit = vec![dir.to_owned()];
    while let Some(d) = visit.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if path.is_dir() {
                if name.as_deref().is_some_and(|n| n.starts_with("server.db")) {
                    visit.push(path);
                }
            } else if d != dir || name.as_deref().is_some_and(|n| n.starts_with("server.db")) {
                let bytes = std::fs::read(&path)?;
                found |= bytes.windows(needle.len()).any(|w| w == needle);
            }
        }
    }
    Ok(found)
}

/// Section 7: alice writes to bob through the server. The server stores and forwards what it
/// cannot open; bob verifies alice's signature with her key from the server's signed
/// directory; alice sees "read by bob" only from bob's own proof; a key swapped in the
/// directory is caught.
async fn client_to_client(p: Paint, w: &World, checks: &mut Vec<Check>) -> Result<(), DemoError> {
    use letterlock::client::contacts::{Applied, Contacts, ReceiptCheck, SentMessage};
    use letterlock::client::{FetchEvent, Sender, Senders};
    use letterlock::wire::ReceiptInfo;

    section(
        p,
        "7. Client to client: alice writes to bob through a server that cannot read",
    );
    let secret = "Bob, the meeting moved to the boathouse at six. Alice";
    let dir = w.dir.path();
    let (alice_book, bob_book) = (
        Contacts::open(&dir.join("alice.db")).map_err(c2c)?,
        Contacts::open(&dir.join("bob.db")).map_err(c2c)?,
    );
    let proxy = w.proxy(None).await?;

    // Alice: the directory, verified under the pinned server key; bob is new to her.
    let mut alice = w.connect(&proxy, &w.alice_key).await.map_err(c2c)?;
    let entries = alice.directory().await.map_err(c2c)?;
    for applied in alice_book.apply_directory(&entries).map_err(c2c)? {
        if let Applied::New { name, key } = applied {
            println!("  alice: directory entry {name} {key}: signature by the server verified");
        }
    }
    let bob_key = alice_book
        .get("bob")
        .map_err(c2c)?
        .map(|c| c.key)
        .ok_or_else(|| c2c("bob is not in the directory"))?;
    let found_bob = bob_key == *w.bob_key.public();

    // Sealed on alice's machine, to bob's key, signed with hers; the server gets a commitment
    // to the ack tag, not the tag.
    let (sender, to) = (w.alice_key.clone(), bob_key.clone());
    let (bytes, sealed) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        envelope::seal_slice(
            sender.as_ref(),
            &to,
            &SealOptions::mode(Mode::Hybrid),
            secret.as_bytes(),
            &mut out,
        )
        .map(|s| (out, s))
    })
    .await
    .map_err(|_| DemoError::Task)?
    .map_err(c2c)?;
    alice_book
        .record_sent(&SentMessage {
            id: sealed.header.message_id,
            recipient_name: "bob".into(),
            recipient: bob_key.id(),
            ack_tag: sealed.ack_tag,
            mode: Mode::Hybrid.to_byte(),
            bytes: sealed.plaintext_len,
            sent: envelope::unix_now(),
            stored: None,
            delivered: None,
        })
        .map_err(c2c)?;
    let relayed = alice.relay_sealed(&bytes, &sealed).await.map_err(c2c)?;
    println!(
        "  alice: message {} stored for bob by the server (\"Stored\", not a proof of reading)",
        relayed.id
    );

    // What the server and the network hold: sealed bytes only.
    let server_identity: Arc<dyn Identity> = w.server_key.clone();
    let alice_public = w.alice_key.public().clone();
    let copy = bytes.clone();
    let server_opens = tokio::task::spawn_blocking(move || {
        envelope::open_to_vec(
            server_identity,
            &alice_public,
            &OpenOptions::default(),
            Cursor::new(copy),
        )
        .is_ok()
    })
    .await
    .map_err(|_| DemoError::Task)?;
    let at_rest = store_holds(dir, secret.as_bytes())?;
    let on_wire = proxy.search(secret)?;
    println!(
        "  server: its store holds the text: {}; its own key opens the message: {}",
        if at_rest { p.bad("YES") } else { p.good("no") },
        if server_opens {
            p.bad("YES")
        } else {
            p.good("no")
        },
    );
    println!("  interceptor: {on_wire}");
    let unreadable = !at_rest && !server_opens && !on_wire.is_found();
    checks.push(Check {
        property: "Client to client: server cannot read".into(),
        how: "text in neither the server's store nor the wire; the server's key cannot open it"
            .into(),
        pass: unreadable,
    });

    // Bob fetches: alice's key from the directory verifies her signature.
    let mut bob = w.connect(&proxy, &w.bob_key).await.map_err(c2c)?;
    let mailbox = letterlock::client::Mailbox::open(&dir.join("bob-mailbox.db"), "server")?;
    let mut record =
        letterlock::received::ReceivedRecord::open(&dir.join("bob.received"), envelope::unix_now())
            .map_err(c2c)?;
    let senders: Arc<dyn Senders> = Arc::new(bob_book.clone());
    let mut got = Vec::new();
    bob.fetch_from_contacts(
        &Output::Memory { limit: 1 << 20 },
        &mut record,
        &mailbox,
        senders,
        |event| {
            if let FetchEvent::New(r) = event
                && let (Content::Memory(text), Sender::Peer { name, .. }) = (&r.content, &r.sender)
            {
                got.push((name.clone(), String::from_utf8_lossy(text).into_owned()));
            }
            Ok(())
        },
    )
    .await
    .map_err(c2c)?;
    mailbox.close().await?;
    let from_alice = got
        .iter()
        .any(|(name, text)| name == "alice" && text == secret);
    println!(
        "  bob: {} (signature checked with alice's key from the directory)",
        match got.first() {
            Some((name, text)) => format!("from {name}: {text:?}"),
            None => p.bad("nothing received"),
        }
    );
    checks.push(Check {
        property: "Client to client: sender verified".into(),
        how: "bob opened it and verified alice's signature; the server only forwarded it".into(),
        pass: found_bob && from_alice,
    });

    // Alice asks for receipts: bob's ack tag, which only bob could compute, against hers.
    let receipts = alice.receipts(&[relayed.id]).await.map_err(c2c)?;
    let now = envelope::unix_now();
    let checked = alice_book.check_receipts(&receipts, now).map_err(c2c)?;
    let read = checked
        .iter()
        .any(|c| matches!(c, ReceiptCheck::Read { recipient_name, .. } if recipient_name == "bob"));
    println!(
        "  alice: receipt for {}: {}",
        relayed.id,
        if read {
            p.good("read by bob (his ack tag equals the one alice computed while sealing)")
        } else {
            p.bad("no receipt that checks out")
        }
    );
    // A server that wants alice to believe bob read a message he never saw has to make up a
    // tag; alice compares it with hers.
    let (sender, to) = (w.alice_key.clone(), bob_key.clone());
    let unread = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        envelope::seal_slice(
            sender.as_ref(),
            &to,
            &SealOptions::default(),
            b"a second note",
            &mut out,
        )
    })
    .await
    .map_err(|_| DemoError::Task)?
    .map_err(c2c)?;
    alice_book
        .record_sent(&SentMessage {
            id: unread.header.message_id,
            recipient_name: "bob".into(),
            recipient: bob_key.id(),
            ack_tag: unread.ack_tag,
            mode: Mode::Hybrid.to_byte(),
            bytes: unread.plaintext_len,
            sent: now,
            stored: None,
            delivered: None,
        })
        .map_err(c2c)?;
    let mut made_up = [0u8; 32];
    aws_lc_rs::rand::fill(&mut made_up).map_err(|_| c2c("no randomness"))?;
    let forged = ReceiptInfo {
        id: unread.header.message_id,
        recipient: bob_key.id(),
        tag: made_up,
        delivered: now,
    };
    let refused = alice_book
        .check_receipts(&[forged], now)
        .map_err(c2c)?
        .iter()
        .all(|c| matches!(c, ReceiptCheck::Forged { .. }));
    println!(
        "  a receipt a lying server could send for the unread second message (a made-up tag): {}",
        if refused {
            p.good("refused, not shown as read")
        } else {
            p.bad("ACCEPTED")
        }
    );
    checks.push(Check {
        property: "Receipts only from the recipient".into(),
        how: "bob's receipt checks out against alice's tag; a made-up one does not".into(),
        pass: read && refused,
    });

    // The operator swaps bob's key for mallory's: alice sees a change, and will not use it.
    trust(&w.store, "bob", w.mallory_key.public(), true).await?;
    let entries = alice.directory().await.map_err(c2c)?;
    let changed = alice_book
        .apply_directory(&entries)
        .map_err(c2c)?
        .into_iter()
        .any(|a| matches!(a, Applied::Changed { ref name, now, .. } if name == "bob" && now == w.mallory_key.public().id()));
    let still_bob = alice_book
        .get("bob")
        .map_err(c2c)?
        .is_some_and(|c| c.key == *w.bob_key.public() && c.offered.is_some());
    println!(
        "  the server now offers another key for bob: alice {}",
        if changed && still_bob {
            p.good("is told bob's key CHANGED, and will not use the new one until she checks and accepts it")
        } else {
            p.bad("took the new key")
        }
    );
    checks.push(Check {
        property: "Directory key swap caught".into(),
        how: "a key changed by the server is shown as a change, not used until accepted".into(),
        pass: changed && still_bob,
    });
    trust(&w.store, "bob", w.bob_key.public(), true).await?;
    let _ = alice.close().await;
    let _ = bob.close().await;
    proxy.stop().await;
    Ok(())
}

/// A client-to-client step that could not run: the demo reports it and stops the section.
fn c2c(e: impl std::fmt::Display) -> DemoError {
    DemoError::Step(e.to_string())
}
