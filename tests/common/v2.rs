//! A version 2 (TLS) server for the tests, whose key counts its signatures, and connections
//! from chosen loopback source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use letterlock::keys::{Identity, KeyError, PrivateKey, PublicKey};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::SqliteStore;
use letterlock::tls::TlsOptions;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::net::{SERVER, clients};
use super::private;

/// The server's key, counting its private-key operations of both kinds: signatures (a TLS
/// server signs once per full handshake, so this counts the handshakes an attacker made it do;
/// also one per directory entry) and decryptions (none may happen for a relayed message).
pub struct Counting {
    pub key: Arc<PrivateKey>,
    pub signatures: AtomicUsize,
    pub decryptions: AtomicUsize,
}

#[allow(dead_code)]
impl Counting {
    /// The key in `tests/keys` named `name`, nothing counted yet.
    pub fn new(name: &str) -> Counting {
        Counting {
            key: private(name),
            signatures: AtomicUsize::new(0),
            decryptions: AtomicUsize::new(0),
        }
    }
}

impl Identity for Counting {
    fn public(&self) -> &PublicKey {
        self.key.public()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.signatures.fetch_add(1, Ordering::SeqCst);
        self.key.sign(message)
    }
    fn decrypt_oaep(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.decryptions.fetch_add(1, Ordering::SeqCst);
        self.key.decrypt_oaep(ciphertext, label)
    }
}

pub struct V2Server {
    pub addr: SocketAddr,
    pub key: Arc<Counting>,
    pub store: Arc<SqliteStore>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl V2Server {
    /// A version 2 server on 127.0.0.1:0 with the [`SERVER`] key (counted) and the [`clients`]
    /// trust list.
    pub async fn start(config: ServerConfig) -> V2Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
        let key = Arc::new(Counting::new(SERVER));
        let server = Server::new(key.clone(), clients(), store.clone(), config)
            .with_tls(TlsOptions::default())
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Arc::new(server)
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        V2Server {
            addr,
            key,
            store,
            stop,
            task,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(to).await
}
