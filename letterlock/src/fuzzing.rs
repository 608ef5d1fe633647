//! Bodies of the fuzz targets in `fuzz/`, as plain functions, so that the fuzz targets and the
//! corpus replay test (`tests/suite/fuzz_corpus.rs`) run exactly the same code. Not an API: each
//! function panics when the property it checks is broken, which is what a fuzzer looks for.
//! docs/FUZZING.md says how to run the targets.

use std::io::{BufReader, Read, Write};
use std::sync::{Arc, OnceLock};

use crate::envelope::armor::{ArmorReader, ArmorWriter, is_armored};
use crate::envelope::{
    self, HEADER_LEN, Header, HeaderError, MAGIC, MessageId, Mode, OpenError, OpenOptions, Opener,
    header_hash,
};
use crate::keys::{Identity, PrivateKey, PublicKey};

/// `Header::parse` on arbitrary bytes: never panics; short input is `Magic` or `Truncated(len)`;
/// whatever parses re-encodes to exactly the bytes it was parsed from.
pub fn header(data: &[u8]) {
    match Header::parse(data) {
        Ok(h) => assert_eq!(
            h.encode()[..],
            data[..HEADER_LEN],
            "a parsed header re-encodes differently"
        ),
        Err(HeaderError::Truncated(n)) => {
            assert!(
                data.len() < HEADER_LEN && n == data.len() && MAGIC.starts_with(&data[..n.min(8)]),
                "bad Truncated({n})"
            )
        }
        // A wrong magic is reported at any length; every other field only on a whole header.
        Err(HeaderError::Magic) => {}
        Err(_) => assert!(
            data.len() >= HEADER_LEN,
            "a short header gave a field error"
        ),
    }
}

/// The fixed keys the open targets use: who receives, who is trusted as the sender.
pub struct Fixture {
    recipient: Arc<PrivateKey>,
    sender: PublicKey,
    /// A valid content key wrapped to the recipient under the fixed hybrid header, so inputs
    /// can start past the RSA step.
    wrapped_key: Vec<u8>,
}

impl Fixture {
    /// `recipient` opens; `sender` is the only trusted sender.
    pub fn new(recipient: Arc<PrivateKey>, sender: PublicKey) -> Fixture {
        let header = fixed_header(&recipient, &sender, Mode::Hybrid);
        let wrapped_key = recipient
            .public()
            .encrypt_oaep(&Fixture::CONTENT_KEY, &header_hash(&header))
            .expect("wrapping a content key");
        Fixture {
            recipient,
            sender,
            wrapped_key,
        }
    }

    /// From PEM text: the recipient's private key and the sender's public key.
    pub fn from_pem(recipient_private: &str, sender_public: &str) -> Fixture {
        Fixture::new(
            Arc::new(PrivateKey::from_pem(recipient_private).expect("recipient key")),
            PublicKey::from_pem(sender_public).expect("sender key"),
        )
    }

    /// The valid header [`open_after_header`] puts before its input in `mode`.
    pub fn header(&self, mode: Mode) -> [u8; HEADER_LEN] {
        fixed_header(&self.recipient, &self.sender, mode)
    }

    /// The content key inside [`Fixture::wrapped_key`].
    pub const CONTENT_KEY: [u8; 32] = [0x42; 32];

    /// The content key wrapped to the recipient under the hybrid [`Fixture::header`].
    pub fn wrapped_key(&self) -> &[u8] {
        &self.wrapped_key
    }
}

/// The valid header the open targets put before the fuzz input.
fn fixed_header(recipient: &PrivateKey, sender: &PublicKey, mode: Mode) -> [u8; HEADER_LEN] {
    Header {
        mode,
        sender: sender.id(),
        recipient: recipient.public().id(),
        message_id: MessageId([0x11; 16]),
        created: 1_800_000_000,
        chunk_size: if mode == Mode::Hybrid { 1024 } else { 0 },
    }
    .encode()
}

/// Arbitrary bytes fed to an [`Opener`] after a valid header for the fixture's keys.
///
/// The first input byte steers: bit 0 set (hybrid) puts the fixture's valid wrapped content key
/// first, so the rest reaches the STREAM decoder; bits 1..8 pick the size of the pieces fed to
/// `update` (1 to 127 bytes, 0 = all at once), exercising every split of the streaming state.
/// Checks: no panic; the only errors possible after a valid header are `Verification` and
/// `TooLarge`; an accepted message released exactly `plaintext_len` bytes. Returns whether
/// the message was accepted (only valid seeds are).
pub fn open_after_header(fx: &Fixture, mode: Mode, data: &[u8]) -> bool {
    let Some((&steer, rest)) = data.split_first() else {
        return false;
    };
    let header = fx.header(mode);
    let identity: Arc<dyn Identity> = fx.recipient.clone();
    let mut opener = Opener::new(&header, identity, &fx.sender, &OpenOptions::default())
        .expect("the fixed header is valid");
    let mut body = Vec::with_capacity(fx.wrapped_key.len() + rest.len());
    if mode == Mode::Hybrid && steer & 1 == 1 {
        body.extend_from_slice(&fx.wrapped_key);
    }
    body.extend_from_slice(rest);
    let piece = usize::from(steer >> 1);
    let piece = if piece == 0 { body.len().max(1) } else { piece };
    let mut out = Vec::new();
    let result = body
        .chunks(piece)
        .try_for_each(|p| opener.update(p, &mut out))
        .and_then(|()| opener.finish(&mut out));
    check_open(result.map(|o| o.plaintext_len), out.len())
}

/// Arbitrary bytes as a whole sealed message through [`envelope::open`]: no panic, and an
/// accepted message released exactly `plaintext_len` bytes. Returns whether it was accepted.
pub fn open_whole(fx: &Fixture, data: &[u8]) -> bool {
    let mut out = Vec::new();
    let identity: Arc<dyn Identity> = fx.recipient.clone();
    match envelope::open(
        identity,
        &fx.sender,
        &OpenOptions::default(),
        data,
        &mut out,
    ) {
        Ok(opened) => {
            assert_eq!(opened.plaintext_len, out.len() as u64);
            true
        }
        Err(OpenError::Io(e)) => panic!("reading from memory cannot fail: {e}"),
        Err(_) => false,
    }
}

fn check_open(result: Result<u64, OpenError>, released: usize) -> bool {
    match result {
        Ok(len) => {
            assert_eq!(
                len, released as u64,
                "released bytes differ from plaintext_len"
            );
            true
        }
        Err(OpenError::Verification | OpenError::TooLarge { .. }) => false,
        Err(e) => panic!("unexpected error after a valid header: {e:?}"),
    }
}

/// [`crate::directory::parse_entry`] on arbitrary bytes: never panics; whatever parses
/// re-encodes to exactly the bytes it was parsed from (one entry, one encoding: what a server
/// signs means one thing).
pub fn directory_entry(data: &[u8]) {
    if let Ok(entry) = crate::directory::parse_entry(data) {
        let again = entry.encode().expect("a parsed entry encodes");
        assert_eq!(
            again, data,
            "a parsed directory entry re-encodes differently"
        );
    }
}

/// The client agent's request and reply decoders ([`crate::client::agent`]) on arbitrary
/// bytes: never panic; whatever decodes re-encodes to exactly the bytes it came from (one
/// encoding per request: what a command hands over means one thing).
pub fn agent_frames(data: &[u8]) {
    use crate::client::agent::{Reply, Request};
    if let Ok(request) = Request::decode(data) {
        let again = request.encode().expect("a decoded request encodes");
        assert_eq!(
            &again[..],
            data,
            "a decoded agent request re-encodes differently"
        );
    }
    if let Ok(reply) = Reply::decode(data) {
        assert_eq!(
            reply.encode(),
            data,
            "a decoded agent reply re-encodes differently"
        );
    }
}

/// [`ArmorReader`] on arbitrary text: no panic; whatever decodes re-armors and decodes to the
/// same bytes.
pub fn armor(data: &[u8]) {
    let _ = is_armored(data);
    let mut decoded = Vec::new();
    // A small buffer so lines straddle buffer refills.
    let reader = BufReader::with_capacity(16, data);
    if ArmorReader::new(reader).read_to_end(&mut decoded).is_err() {
        return;
    }
    let mut w = ArmorWriter::new(Vec::new());
    w.write_all(&decoded).expect("armoring to memory");
    let text = w.finish().expect("armoring to memory");
    assert!(is_armored(&text));
    let mut back = Vec::new();
    ArmorReader::new(&text[..])
        .read_to_end(&mut back)
        .expect("our own armor reads back");
    assert_eq!(back, decoded, "re-armored bytes differ");
}

/// The escaping of peer text ([`crate::text`]) on arbitrary bytes: no unsafe character comes
/// out in any style (LF and tab only in `content`); a quoted text is one quote, from its first
/// byte to its last, with every inner `"` and `\\` escaped; `write_to` writes what `Display`
/// shows; safe text without backslashes passes unchanged.
pub fn text(data: &[u8]) {
    use crate::text::{content, is_unsafe, line, quoted};
    let q = quoted(data).to_string();
    assert!(!q.chars().any(is_unsafe), "unsafe character in {q:?}");
    let inner = q
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .expect("quoted text is in quotes");
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        assert_ne!(c, '"', "an unescaped quote in {q:?}");
        if c == '\\' {
            assert!(
                chars.next().is_some(),
                "a lone backslash before the closing quote"
            );
        }
    }
    let c = content(data).to_string();
    assert!(
        !c.chars()
            .any(|ch| is_unsafe(ch) && ch != '\n' && ch != '\t'),
        "unsafe character in {c:?}"
    );
    let mut written = Vec::new();
    content(data)
        .write_to(&mut written)
        .expect("writing to memory");
    assert_eq!(written, c.as_bytes(), "write_to differs from Display");
    if let Ok(s) = std::str::from_utf8(data) {
        let l = line(s).to_string();
        assert!(!l.chars().any(is_unsafe), "unsafe character in {l:?}");
        if !s
            .chars()
            .any(|ch| ch == '\\' || (is_unsafe(ch) && ch != '\n' && ch != '\t'))
        {
            assert_eq!(c, s, "safe text changed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The network side: frames, the handshake check, and the server's connection handling.

/// Frame limit for [`frames`]: small, so the length check is exercised as often as frames.
const FUZZ_MAX_FRAME: usize = 4096;

/// `wire::decode` frame after frame on arbitrary bytes: never panics, never claims bytes it does
/// not have, and every frame but `Error` (whose text is decoded lossily) re-encodes to exactly
/// the bytes it came from, so the codec has one encoding per frame.
pub fn frames(data: &[u8]) {
    use crate::wire::{self, Frame};
    let mut rest = data;
    loop {
        match wire::decode(rest, FUZZ_MAX_FRAME) {
            Ok(Some((frame, used))) => {
                assert!(used > 4 && used <= rest.len(), "decode used {used} bytes");
                if !matches!(frame, Frame::Error { .. }) {
                    let mut again = Vec::new();
                    frame.encode(&mut again);
                    assert_eq!(again, rest[..used], "a frame re-encodes differently");
                }
                rest = &rest[used..];
            }
            Ok(None) => return,
            Err(_) => return,
        }
    }
}

/// The challenge [`handshake`] checks signatures against.
pub const FIXED_CHALLENGE: [u8; 32] = [0x5c; 32];

/// The keys of the network targets: the server's, and the one client it trusts.
pub struct NetFixture {
    server: Arc<PrivateKey>,
    client: Arc<PrivateKey>,
    clients: crate::keys::TrustList,
}

impl NetFixture {
    pub fn new(server: Arc<PrivateKey>, client: Arc<PrivateKey>) -> NetFixture {
        let mut clients = crate::keys::TrustList::new();
        clients
            .add("client", client.public().clone())
            .expect("one trusted client");
        NetFixture {
            server,
            client,
            clients,
        }
    }

    pub fn from_pem(server_private: &str, client_private: &str) -> NetFixture {
        NetFixture::new(
            Arc::new(PrivateKey::from_pem(server_private).expect("server key")),
            Arc::new(PrivateKey::from_pem(client_private).expect("client key")),
        )
    }

    /// The `Auth` frame body the trusted client sends for [`FIXED_CHALLENGE`] (a seed).
    pub fn valid_auth(&self) -> crate::wire::Frame {
        crate::wire::handshake::sign_auth(
            self.client.as_ref(),
            &self.server.public().id(),
            &FIXED_CHALLENGE,
        )
        .expect("signing")
    }
}

/// The server's handshake check on an arbitrary frame: never panics, and accepts only the
/// trusted client's key with a signature over this server and [`FIXED_CHALLENGE`]. Returns
/// whether it accepted.
pub fn handshake(fx: &NetFixture, data: &[u8]) -> bool {
    use crate::wire::{self, Frame, handshake};
    let Ok(Some((Frame::Auth { client, signature }, _))) = wire::decode(data, FUZZ_MAX_FRAME)
    else {
        return false;
    };
    let server = fx.server.public().id();
    match handshake::authenticate(&fx.clients, &server, &FIXED_CHALLENGE, &client, &signature) {
        Some(t) => {
            let t_ok = handshake::transcript(&server, &FIXED_CHALLENGE, &client);
            assert_eq!(t.key.id(), client, "accepted under another key");
            assert!(
                t.key.verify_pss(&t_ok, &signature),
                "accepted a bad signature"
            );
            true
        }
        None => false,
    }
}

/// A real server (SQLite store in a temporary folder) and a runtime to drive it.
pub struct ServerFixture {
    runtime: tokio::runtime::Runtime,
    server: Arc<crate::server::Server<crate::store::SqliteStore>>,
    net: NetFixture,
    /// Keeps the store's folder alive.
    _dir: tempfile::TempDir,
}

impl ServerFixture {
    pub fn new(net: NetFixture) -> ServerFixture {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = Arc::new(
            crate::store::SqliteStore::open(dir.path().join("fuzz.db")).expect("the store"),
        );
        let config = crate::server::ServerConfig {
            // Seeds are sealed once, with a fixed time: keep them inside the window.
            time_window: std::time::Duration::from_secs(u64::from(u32::MAX)),
            handshake_timeout: std::time::Duration::from_secs(2),
            idle_timeout: std::time::Duration::from_secs(2),
            ..crate::server::ServerConfig::default()
        };
        let server = Arc::new(crate::server::Server::new(
            net.server.clone(),
            net.clients.clone(),
            store,
            config,
        ));
        ServerFixture {
            runtime,
            server,
            net,
            _dir: dir,
        }
    }

    /// The trusted client's key, for building seeds.
    pub fn client(&self) -> &Arc<PrivateKey> {
        &self.net.client
    }

    /// The server's public key, for sealing seeds to it.
    pub fn server_public(&self) -> PublicKey {
        self.net.server.public().clone()
    }
}

/// The server's connection handling driven by arbitrary client bytes, in memory. The first byte
/// steers: bit 0 set, the harness first authenticates as the trusted client (answering the
/// server's fresh challenge), so the rest reaches the message and fetch paths. Checks: the
/// server sends only well-formed frames, ends the connection within a bound (no hang), and
/// never panics (a panic aborts under the fuzzer; the replay test counts them). Returns how many
/// messages the server acknowledged (only valid ones can be).
pub fn server_connection(fx: &ServerFixture, data: &[u8]) -> usize {
    use crate::wire::{Frame, FrameReader, FrameWriter};
    let (authenticate_first, bytes) = match data.split_first() {
        Some((steer, rest)) => (steer & 1 == 1, rest),
        None => (false, data),
    };
    let mut acks = 0;
    fx.runtime.block_on(async {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (sr, sw) = tokio::io::split(server_io);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let task = tokio::spawn(fx.server.clone().serve_stream(sr, sw, peer));
        let (cr, cw) = tokio::io::split(client_io);
        let mut reader = FrameReader::new(cr, crate::wire::DEFAULT_MAX_FRAME);
        let mut writer = FrameWriter::new(cw);
        let exchange = async {
            let Ok(Frame::Hello {
                server, challenge, ..
            }) = reader.read_frame().await
            else {
                panic!("the server did not start with Hello");
            };
            if authenticate_first {
                let auth =
                    crate::wire::handshake::sign_auth(fx.net.client.as_ref(), &server, &challenge)
                        .expect("signing");
                if writer.write_frame(&auth).await.is_err() {
                    return;
                }
            }
            // Write the input while reading every answer, so neither side can block the other.
            let write = async {
                let _ = writer.write_raw(bytes).await;
                let _ = writer.shutdown().await;
            };
            let read = async {
                loop {
                    match reader.read_frame().await {
                        Ok(Frame::Ack { .. }) => acks += 1,
                        Ok(_) => {}
                        Err(crate::wire::ConnError::Wire(e)) => {
                            panic!("the server sent a malformed frame: {e}")
                        }
                        Err(_) => return,
                    }
                }
            };
            tokio::join!(write, read);
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
            .await
            .expect("the server did not finish the connection in time");
        let joined = tokio::time::timeout(std::time::Duration::from_secs(20), task)
            .await
            .expect("the connection task hung");
        if let Err(e) = joined {
            assert!(!e.is_panic(), "the connection task panicked");
        }
    });
    acks
}

// ---------------------------------------------------------------------------------------------
// The fuzz targets' entry points: each target in `fuzz/fuzz_targets/` is one call to one of
// these, with the fixture built once per process from the fixed test keys.

/// The fixed test keys of the fuzz targets, compiled in so that a target reads no files: Bob
/// (2048 bits) receives and serves, Alice (2048 bits) is the trusted sender and client.
const BOB_PRIVATE: &str = include_str!("../../tests/keys/bob2048_private.pem");
const ALICE_PRIVATE: &str = include_str!("../../tests/keys/alice2048_private.pem");
const ALICE_PUBLIC: &str = include_str!("../../tests/keys/alice2048_public.pem");

/// The `open_hybrid` and `open_asymmetric` targets: `data` after a valid header in `mode`
/// ([`open_after_header`]) and as a whole message ([`open_whole`]), Bob opening, Alice trusted.
pub fn open_target(mode: Mode, data: &[u8]) {
    static FX: OnceLock<Fixture> = OnceLock::new();
    let fx = FX.get_or_init(|| Fixture::from_pem(BOB_PRIVATE, ALICE_PUBLIC));
    let _ = open_after_header(fx, mode, data);
    let _ = open_whole(fx, data);
}

/// The `handshake` target: [`handshake`] with Bob serving and Alice the trusted client.
pub fn handshake_target(data: &[u8]) {
    static FX: OnceLock<NetFixture> = OnceLock::new();
    let _ = handshake(
        FX.get_or_init(|| NetFixture::from_pem(BOB_PRIVATE, ALICE_PRIVATE)),
        data,
    );
}

/// The `server_connection` target: [`server_connection`] with Bob serving and Alice the
/// trusted client.
pub fn server_connection_target(data: &[u8]) {
    static FX: OnceLock<ServerFixture> = OnceLock::new();
    let fx =
        FX.get_or_init(|| ServerFixture::new(NetFixture::from_pem(BOB_PRIVATE, ALICE_PRIVATE)));
    let _ = server_connection(fx, data);
}
