//! A hostile peer's tools for tests/suite/hostile.rs and the memory checks (tests/memory_*.rs): raw
//! connections that speak the frame layer directly, the checks every hostile case ends with (an
//! Error frame or a close, no server task panicked, a good client still served).

use letterlock::envelope::{Mode, SealOptions};
use letterlock::keys::{Identity, KeyId};
use letterlock::server::ServerConfig;
use letterlock::wire::{
    self, CHALLENGE_LEN, ConnError, ErrorCode, Frame, FrameReader, FrameWriter,
};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::net::{CLIENT, SERVER, TestServer};
use super::{data, private, public};

/// Starts counting panics of the server under test ([`super::panics`]).
pub fn setup() {
    super::panics::count();
}

/// Fails if a server task (or any code under test) panicked.
pub fn assert_no_server_panic() {
    super::panics::assert_none();
}

/// A raw connection: what a hostile peer holds.
pub struct Raw {
    pub r: FrameReader<OwnedReadHalf>,
    pub w: FrameWriter<OwnedWriteHalf>,
    pub server: KeyId,
    pub challenge: [u8; CHALLENGE_LEN],
}

/// Connects and reads the server's Hello.
pub async fn raw(addr: &str) -> Raw {
    let s = TcpStream::connect(addr).await.unwrap();
    let (r, w) = s.into_split();
    let mut r = FrameReader::new(r, wire::DEFAULT_MAX_FRAME);
    let w = FrameWriter::new(w);
    match r.read_frame().await.unwrap() {
        Frame::Hello {
            version,
            server,
            challenge,
        } => {
            assert_eq!(version, wire::PROTOCOL_VERSION);
            Raw {
                r,
                w,
                server,
                challenge,
            }
        }
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// The Auth frame `name` would send on `raw`.
pub fn auth_frame(raw: &Raw, name: &str) -> Frame {
    auth(&raw.server, &raw.challenge, name)
}

/// The Auth frame `name` (a key in tests/keys) answers the Hello of `server` with `challenge`.
pub fn auth(server: &KeyId, challenge: &[u8; CHALLENGE_LEN], name: &str) -> Frame {
    let me = private(name);
    let client = me.public().id();
    let t = wire::handshake::transcript(server, challenge, &client);
    Frame::Auth {
        client,
        signature: me.sign(&t).unwrap(),
    }
}

/// A raw connection authenticated as the trusted test client.
pub async fn authed(addr: &str) -> Raw {
    let mut raw = raw(addr).await;
    let auth = auth_frame(&raw, CLIENT);
    raw.w.write_frame(&auth).await.unwrap();
    assert_eq!(raw.r.read_frame().await.unwrap(), Frame::Ready);
    raw
}

pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

/// A sealed message as `Send` frames and `SendEnd`.
pub fn message_frames(sealed: &[u8], frame_size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in sealed.chunks(frame_size) {
        Frame::Send(chunk.to_vec()).encode(&mut out);
    }
    Frame::SendEnd.encode(&mut out);
    out
}

/// A real sealed message from the trusted client to the test server.
pub fn sealed(len: usize, mode: Mode) -> Vec<u8> {
    super::seal(
        private(CLIENT).as_ref(),
        &public(SERVER),
        &SealOptions::mode(mode),
        &data(len),
    )
}

/// How the server ended a hostile connection.
#[derive(Debug, PartialEq)]
pub enum End {
    Error(ErrorCode, String),
    Closed,
}

/// Reads until the server sends an Error frame or closes; anything else fails. After an Error
/// frame the connection must close too. No timeout of our own: a server that neither answers nor
/// closes ends the connection itself after its handshake or idle timeout, with an Error frame
/// (`Timeout`) that no case here expects.
pub async fn end(raw: &mut Raw) -> End {
    match raw.r.read_frame().await {
        Ok(Frame::Error { code, message }) => {
            match raw.r.read_frame().await {
                Err(ConnError::Closed) | Err(ConnError::Io(_)) => {}
                other => panic!("after Error the connection must close, got {other:?}"),
            }
            End::Error(code, message)
        }
        Ok(other) => panic!("expected an Error frame or a close, got {other:?}"),
        Err(ConnError::Closed) | Err(ConnError::Io(_)) => End::Closed,
        Err(e) => panic!("unexpected read error {e:?}"),
    }
}

/// Expects an Error frame with `code`.
pub async fn refused(raw: &mut Raw, code: ErrorCode) -> String {
    match end(raw).await {
        End::Error(c, m) if c == code => m,
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

/// Expects an Error frame with `code`, or (if the peer's unread bytes made the kernel reset the
/// connection first) a close.
pub async fn refused_or_closed(raw: &mut Raw, code: ErrorCode) {
    match end(raw).await {
        End::Error(c, _) if c == code => {}
        End::Closed => {}
        other => panic!("expected Error {code:?} or a close, got {other:?}"),
    }
}

/// A well-behaved client sends a message and gets a proven ack; the inbox grows by one.
pub async fn served(server: &TestServer) {
    let before = server.inbox_len().await;
    let mut client = server.client(CLIENT).await.expect("good client refused");
    let text = format!("well-behaved message {}", before).into_bytes();
    let d = client
        .send(std::io::Cursor::new(text.clone()), SealOptions::default())
        .await
        .expect("good client's message not acknowledged");
    assert_eq!(d.plaintext_len, text.len() as u64);
    use letterlock::store::Store;
    let inbox = server.store.list_inbox().await.unwrap();
    assert!(
        inbox.iter().any(|m| m.message_id == d.id.0),
        "acked but not stored"
    );
}

/// One hostile case: start a server, run `attack`, check nothing hostile was stored, no panic,
/// and a good client is still served.
pub async fn case<F, Fut>(attack: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    case_with(ServerConfig::default(), attack).await
}

pub async fn case_with<F, Fut>(config: ServerConfig, attack: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    setup();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), config).await;
    attack(server.addr.clone()).await;
    assert_eq!(server.inbox_len().await, 0, "a hostile message was stored");
    served(&server).await;
    assert_no_server_panic();
    server.stop().await;
}
