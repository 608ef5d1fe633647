//! An in-process server on 127.0.0.1:0 for the network tests, messages sealed to it with a
//! chosen id and time, and an echo server with the interception proxy in front of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use letterlock::client::{Client, ClientConfig};
use letterlock::envelope::{FixedRandomness, SealOptions, Sealed};
use letterlock::keys::{Identity, TrustList};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::{SqliteOptions, SqliteStore};
use tokio::sync::oneshot;

/// Names of the fixed keys the network tests use: 2048 bits keeps them fast.
pub const SERVER: &str = "bob2048";
pub const CLIENT: &str = "alice2048";

/// Seals `plain` from the fixed key `sender` to the test server ([`SERVER`]) with default
/// options and a chosen message id and creation time: for the replay and clock checks.
pub fn seal_to_server(sender: &str, plain: &[u8], id: [u8; 16], created: u64) -> (Vec<u8>, Sealed) {
    let fixed = FixedRandomness {
        message_id: id,
        created,
        content_key: [7; 32],
    };
    super::seal_fixed(
        super::private(sender),
        &super::public(SERVER),
        &SealOptions::default(),
        &fixed,
        plain,
    )
}

pub struct TestServer {
    pub addr: String,
    pub store: Arc<SqliteStore>,
    pub store_path: PathBuf,
    /// The server itself, for its counters ([`Server::receive_stats`]).
    pub server: Arc<Server<SqliteStore>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The trust list of the test server: alice2048 as "client", alice3072 as "carol".
pub fn clients() -> TrustList {
    let mut t = TrustList::new();
    t.add("client", super::public(CLIENT)).unwrap();
    t.add("carol", super::public("alice3072")).unwrap();
    t
}

/// The test server over `store`, with the [`SERVER`] key and the [`clients`] trust list: the
/// one place the network tests construct a server.
pub fn server(store: Arc<SqliteStore>, config: ServerConfig) -> Arc<Server<SqliteStore>> {
    Arc::new(Server::new(
        super::private(SERVER),
        clients(),
        store,
        config,
    ))
}

/// A server running on 127.0.0.1:0 until `stop` is sent or dropped; `task` panics if the
/// server failed.
pub struct Running {
    pub addr: String,
    pub stop: oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Runs `server` on a fresh loopback listener: the one place the tests start a server task.
pub async fn run_on_loopback(server: Arc<Server<SqliteStore>>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Running { addr, stop, task }
}

impl TestServer {
    pub async fn start(dir: &Path) -> TestServer {
        Self::start_with(dir, ServerConfig::default()).await
    }

    pub async fn start_with(dir: &Path, config: ServerConfig) -> TestServer {
        Self::start_over(dir, config, SqliteOptions::default()).await
    }

    /// [`TestServer::start_with`], its store opened with `options`.
    pub async fn start_over(
        dir: &Path,
        config: ServerConfig,
        options: SqliteOptions,
    ) -> TestServer {
        let store_path = dir.join("server.db");
        let store = Arc::new(SqliteStore::open_with(&store_path, options).unwrap());
        let server = server(store.clone(), config);
        let Running { addr, stop, task } = run_on_loopback(server.clone()).await;
        TestServer {
            addr,
            store,
            store_path,
            server,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// A client authenticated as `name` (a key in tests/keys), trusting the real server key.
    pub async fn client(&self, name: &str) -> Result<Client, letterlock::client::ClientError> {
        let identity: Arc<dyn Identity> = super::private(name);
        Client::connect(
            &self.addr,
            identity,
            super::public(SERVER),
            ClientConfig::default(),
        )
        .await
    }

    /// Seals `text` from the server to the trusted "client" and queues it for its next fetch.
    pub async fn queue_for_client(
        &self,
        text: &[u8],
        opts: &letterlock::envelope::SealOptions,
    ) -> letterlock::envelope::Sealed {
        let to = clients().by_name("client").unwrap().clone();
        letterlock::server::queue_for_client(
            self.store.as_ref(),
            super::private(SERVER),
            &to,
            std::io::Cursor::new(text.to_vec()),
            opts,
        )
        .await
        .unwrap()
    }

    pub async fn inbox_len(&self) -> usize {
        use letterlock::store::Store;
        self.store.list_inbox().await.unwrap().len()
    }
}

/// A test-only echo server on 127.0.0.1:0 that sends every connection's bytes back and closes
/// its side when the peer does: the upstream of the interceptor tests.
pub async fn echo_server() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The interception proxy on 127.0.0.1:0 with `config`, relaying to a fresh [`echo_server`].
pub async fn proxy_to_echo(
    config: letterlock_cli::intercept::Config,
) -> letterlock_cli::intercept::Proxy {
    let echo = echo_server().await;
    letterlock_cli::intercept::Proxy::start("127.0.0.1:0", &echo.to_string(), config)
        .await
        .unwrap()
}

/// A relay on 127.0.0.1 for one connection to `to`, recording each direction; the recordings
/// (client→server, server→client) once both directions ended.
pub async fn recording_relay(to: String) -> (String, tokio::task::JoinHandle<(Vec<u8>, Vec<u8>)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown().await;
        seen
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(to).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::join!(pump(cr, sw), pump(sr, cw))
    });
    (addr, task)
}

/// A version 2 server on 127.0.0.1:0; stops when `stop` is sent or dropped.
pub async fn v2_server(dir: &Path) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let store = Arc::new(SqliteStore::open(dir.join("server.db")).unwrap());
    let Running { addr, stop, task } =
        run_on_loopback(tls_server(store, ServerConfig::default())).await;
    (addr, stop, task)
}

/// The test server on protocol version 2 (TLS 1.3, default options): as [`server`], with TLS.
pub fn tls_server(store: Arc<SqliteStore>, config: ServerConfig) -> Arc<Server<SqliteStore>> {
    let server = Server::new(super::private(SERVER), clients(), store, config)
        .with_tls(letterlock::tls::TlsOptions::default())
        .unwrap();
    Arc::new(server)
}

/// A version 2 client authenticated as `name` to the server at `addr` (the test server's key
/// pinned), with a generous timeout.
pub async fn tls_client(addr: &str, name: &str) -> Result<Client, letterlock::client::ClientError> {
    let identity: Arc<dyn Identity> = super::private(name);
    Client::connect_tls(
        addr,
        identity,
        super::public(SERVER),
        ClientConfig {
            timeout: std::time::Duration::from_secs(120),
            ..ClientConfig::default()
        },
        letterlock::tls::TlsOptions::default(),
    )
    .await
}
