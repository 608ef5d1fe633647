//! A keyless man-in-the-middle, to show what an eavesdropper and a tamperer get.
//!
//! [`Proxy`] listens on one address and relays every connection to an upstream server, both
//! ways. It holds no keys: it cuts the byte stream into frames from the framing alone
//! (`length u32 BE || type u8 || payload`, see [`letterlock::wire`]), reports one [`Event::Frame`]
//! per frame (direction, type, size, hex excerpt, byte entropy of the payload), records every
//! byte it reads, and can attack the traffic ([`Tamper`]). Bytes that are not letterlock frames
//! (a length over the limit, an unknown type byte) switch that direction to a plain relay, so
//! the proxy also sits in front of any TCP service (the tests put it before an echo server).
//!
//! # Capture file (`--capture FILE`)
//! ```text
//! file   = "LETRLOCK-CAPTURE v1\n" || record*
//! record = direction (u8: '>' client → server, '<' server → client)
//!       || connection number (u32 BE, from 1)
//!       || length (u32 BE) || the bytes, exactly as read from that side
//! ```
//! Records are what the proxy *received* (before any tampering): what a passive eavesdropper on
//! that side of the proxy sees.
//!
//! # Tampering
//! Message attacks (`flip`, `flip-header`, `truncate`, `reorder`, `spoof-sender`) hold a
//! message's `Send` frames until `SendEnd`, change the sealed message, and re-frame it. Locating
//! OAEP blocks and STREAM chunks needs `k`, the recipient's modulus length in bytes: public (it
//! is the server's public key size) but not on the wire. It comes from [`Config::key_bytes`]
//! or, failing that, is assumed equal to the client's modulus length, which *is* on the wire
//! (the size of the signature in its `Auth` frame); every line that relies on it says so. An
//! attack that cannot be placed on a message (too short to reorder, say) is reported as not done
//! and the message goes through unchanged: the proxy never claims an attack it did not make.
//!
//! Invariants: the proxy never blocks a direction on the other; it holds at most one message
//! per connection ([`MAX_HELD`]); all parsing is bounded by [`wire::DEFAULT_MAX_FRAME`].

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::debug;

use letterlock::envelope::{HEADER_LEN, Header, Mode};
use letterlock::keys::KeyId;
use letterlock::wire::{self, DATA_FRAME, ErrorCode, Frame, FrameReader, FrameType};

/// First bytes of a capture file.
pub const CAPTURE_MAGIC: &[u8; 20] = b"LETRLOCK-CAPTURE v1\n";
/// Payload bytes shown in hex per frame line.
pub const EXCERPT_BYTES: usize = 16;
/// Largest message held for tampering; a larger one is forwarded unchanged (and said so).
pub const MAX_HELD: usize = 64 * 1024 * 1024;
/// How long a replayed connection waits for the server's answer.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket read size.
const READ_BUF: usize = 64 * 1024;
/// Header offsets the attacks use (docs/PROTOCOL.md §3).
const SENDER_ID: std::ops::Range<usize> = 12..44;
const MESSAGE_ID_BYTE: usize = 76;
/// Shortest sealed STREAM chunk: one byte and its tag.
const MIN_SEALED_CHUNK: usize = 1 + letterlock::envelope::stream::TAG_LEN;

/// An attack on the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Tamper {
    /// Flip one bit in a sealed message's body (past the header).
    Flip,
    /// Flip one bit in a sealed message's header (the message id).
    FlipHeader,
    /// Drop the final chunk (the last OAEP block, or the final STREAM chunk).
    Truncate,
    /// Swap the first two chunks (OAEP blocks, or full STREAM chunks).
    Reorder,
    /// Record a client's send and replay it on a fresh connection.
    Replay,
    /// Rewrite the sender key id in the header.
    SpoofSender,
    /// Alter the tag of the server's Ack on its way back.
    ForgeAck,
}

impl Tamper {
    /// Every mode, in the order the demo runs them.
    pub const ALL: [Tamper; 7] = [
        Tamper::Flip,
        Tamper::FlipHeader,
        Tamper::Truncate,
        Tamper::Reorder,
        Tamper::SpoofSender,
        Tamper::Replay,
        Tamper::ForgeAck,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tamper::Flip => "flip",
            Tamper::FlipHeader => "flip-header",
            Tamper::Truncate => "truncate",
            Tamper::Reorder => "reorder",
            Tamper::Replay => "replay",
            Tamper::SpoofSender => "spoof-sender",
            Tamper::ForgeAck => "forge-ack",
        }
    }

    /// Whether the attack rewrites a sealed message (held until `SendEnd`).
    fn on_message(self) -> bool {
        matches!(
            self,
            Tamper::Flip
                | Tamper::FlipHeader
                | Tamper::Truncate
                | Tamper::Reorder
                | Tamper::SpoofSender
        )
    }
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which way bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::ToServer => b'>',
            Direction::ToClient => b'<',
        }
    }

    fn from_byte(b: u8) -> Option<Direction> {
        match b {
            b'>' => Some(Direction::ToServer),
            b'<' => Some(Direction::ToClient),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToServer => "client -> server",
            Direction::ToClient => "server -> client",
        })
    }
}

/// Bytes read from one side of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub conn: u32,
    pub dir: Direction,
    pub bytes: Vec<u8>,
}

/// One frame as the proxy saw it.
#[derive(Clone, Debug)]
pub struct FrameInfo {
    pub conn: u32,
    pub dir: Direction,
    /// Frame type name from the type byte.
    pub kind: &'static str,
    /// Payload bytes (after length and type).
    pub size: usize,
    /// The first [`EXCERPT_BYTES`] payload bytes, hex.
    pub excerpt: String,
    /// Shannon entropy of the payload's bytes, bits per byte (8 is random-looking).
    pub entropy: f64,
}

/// Something the proxy saw or did.
#[derive(Clone, Debug)]
pub enum Event {
    Opened {
        conn: u32,
        peer: SocketAddr,
    },
    /// The upstream could not be reached.
    Failed {
        conn: u32,
        error: String,
    },
    Frame(FrameInfo),
    /// Bytes that are not letterlock frames, relayed as they are.
    Raw {
        conn: u32,
        dir: Direction,
        len: usize,
    },
    Tampered {
        conn: u32,
        mode: Tamper,
        detail: String,
    },
    /// The attack could not be placed; the traffic went through unchanged.
    NotTampered {
        conn: u32,
        mode: Tamper,
        reason: String,
    },
    /// The server's `Error` frame.
    ServerError {
        conn: u32,
        code: ErrorCode,
        message: String,
    },
    /// What came of a replay.
    Replayed {
        conn: u32,
        /// The server acknowledged the replayed message: the attack worked.
        accepted: bool,
        outcome: String,
    },
    Closed {
        conn: u32,
    },
    /// An `--expect` search after a connection closed.
    Expect(Search),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Opened { conn, peer } => write!(f, "[conn {conn}] opened by {peer}"),
            Event::Failed { conn, error } => write!(f, "[conn {conn}] upstream failed: {error}"),
            Event::Frame(i) => write!(
                f,
                "[conn {}] {} {:<11} {:>7} B  {:<32}  entropy {:.2} bits/byte",
                i.conn, i.dir, i.kind, i.size, i.excerpt, i.entropy
            ),
            Event::Raw { conn, dir, len } => {
                write!(
                    f,
                    "[conn {conn}] {dir} {len} bytes that are not letterlock frames"
                )
            }
            Event::Tampered { conn, mode, detail } => {
                write!(f, "[conn {conn}] TAMPER {mode}: {detail}")
            }
            Event::NotTampered { conn, mode, reason } => write!(
                f,
                "[conn {conn}] TAMPER {mode} NOT DONE: {reason}; forwarded unchanged"
            ),
            Event::ServerError {
                conn,
                code,
                message,
            } => write!(
                f,
                "[conn {conn}] server answered Error {code:?}: {message:?}"
            ),
            Event::Replayed {
                conn,
                accepted,
                outcome,
            } => write!(
                f,
                "[conn {conn}] REPLAY {}: {outcome}",
                if *accepted { "ACCEPTED" } else { "refused" }
            ),
            Event::Closed { conn } => write!(f, "[conn {conn}] closed"),
            Event::Expect(s) => write!(f, "{s}"),
        }
    }
}

/// How a plaintext may appear on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Raw,
    Utf16Le,
    Utf16Be,
    /// Standard base64, the text starting at this byte offset modulo 3.
    Base64(u8),
    HexLower,
    HexUpper,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Raw => f.write_str("raw bytes"),
            Encoding::Utf16Le => f.write_str("UTF-16LE"),
            Encoding::Utf16Be => f.write_str("UTF-16BE"),
            Encoding::Base64(a) => write!(f, "base64 (alignment {a})"),
            Encoding::HexLower => f.write_str("hex (lower)"),
            Encoding::HexUpper => f.write_str("hex (upper)"),
        }
    }
}

/// Where a plaintext was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub encoding: Encoding,
    pub conn: u32,
    pub dir: Direction,
    /// Offset in that direction's byte stream.
    pub offset: usize,
}

/// The result of searching captured bytes for a plaintext.
#[derive(Clone, Debug)]
pub struct Search {
    pub text: String,
    /// Captured bytes searched.
    pub scanned: usize,
    /// The encodings searched (some are skipped for very short texts).
    pub encodings: Vec<Encoding>,
    pub found: Vec<Finding>,
}

impl Search {
    pub fn is_found(&self) -> bool {
        !self.found.is_empty()
    }

    /// Whether it was found in this encoding.
    pub fn found_as(&self, e: Encoding) -> bool {
        self.found.iter().any(|f| f.encoding == e)
    }
}

impl fmt::Display for Search {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.found.is_empty() {
            return write!(
                f,
                "expect {:?}: plaintext not found in {} captured bytes (searched {} encodings: \
                 raw, UTF-16LE/BE, base64 x3 alignments, hex lower/upper)",
                self.text,
                self.scanned,
                self.encodings.len()
            );
        }
        write!(
            f,
            "!!! FOUND !!! expect {:?}: the plaintext IS on the wire ({} hits in {} captured bytes)",
            self.text,
            self.found.len(),
            self.scanned
        )?;
        for hit in &self.found {
            write!(
                f,
                "\n!!!   as {} in conn {} {} at offset {}",
                hit.encoding, hit.conn, hit.dir, hit.offset
            )?;
        }
        Ok(())
    }
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterceptError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("capture file {}: {source}", path.display())]
    Capture { path: PathBuf, source: io::Error },
    #[error("{} is not a letterlock capture: {reason}", path.display())]
    BadCapture { path: PathBuf, reason: String },
    #[error("{0}")]
    Usage(&'static str),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What the proxy does.
#[derive(Clone, Debug)]
pub struct Config {
    /// The attack, if any.
    pub tamper: Option<Tamper>,
    /// Also write every record to this file.
    pub capture: Option<PathBuf>,
    /// After each connection, search the capture for this plaintext.
    pub expect: Option<String>,
    /// The recipient's RSA modulus in bytes (public); see the module doc for the default.
    pub key_bytes: Option<usize>,
    /// The sender id `spoof-sender` writes; default: the real one with every bit inverted.
    pub spoof_sender: Option<KeyId>,
    /// Largest frame parsed; a larger length prefix switches to a plain relay.
    pub max_frame: usize,
    /// Print each event on stdout as it happens (the command line does).
    pub print: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tamper: None,
            capture: None,
            expect: None,
            key_bytes: None,
            spoof_sender: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
            print: false,
        }
    }
}

/// What every connection of one proxy shares.
struct Shared {
    config: Config,
    upstream: String,
    /// Everything that happened, in order.
    events: Mutex<Vec<Event>>,
    /// Every byte read, in order.
    records: Mutex<Vec<Record>>,
    /// The capture file, when asked for.
    file: Mutex<Option<BufWriter<File>>>,
    /// Connection numbers, from 1.
    next_conn: AtomicU32,
    /// A replay happens once per proxy.
    replayed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn emit(&self, event: Event) {
        debug!(%event, "intercept");
        if self.config.print {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{event}");
            let _ = out.flush();
        }
        lock(&self.events).push(event);
    }

    fn record(&self, conn: u32, dir: Direction, bytes: &[u8]) {
        if let Some(file) = lock(&self.file).as_mut() {
            let written = write_record(file, conn, dir, bytes).and_then(|()| file.flush());
            if let Err(e) = written {
                tracing::warn!(error = %e, "writing the capture file failed");
            }
        }
        lock(&self.records).push(Record {
            conn,
            dir,
            bytes: bytes.to_vec(),
        });
    }

    fn conn_id(&self) -> u32 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn write_record(w: &mut impl Write, conn: u32, dir: Direction, bytes: &[u8]) -> io::Result<()> {
    // Reads are at most READ_BUF bytes, so the length fits.
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("record too long"))?;
    w.write_all(&[dir.byte()])?;
    w.write_all(&conn.to_be_bytes())?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

/// A running proxy. Dropping it stops accepting.
pub struct Proxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one: see [`Proxy::local_addr`]) and relays each
    /// connection to `upstream`.
    pub async fn start(
        listen: &str,
        upstream: &str,
        config: Config,
    ) -> Result<Proxy, InterceptError> {
        let file = match &config.capture {
            Some(path) => {
                let capture_err = |source| InterceptError::Capture {
                    path: path.clone(),
                    source,
                };
                let mut f = BufWriter::new(File::create(path).map_err(capture_err)?);
                f.write_all(CAPTURE_MAGIC)
                    .and_then(|()| f.flush())
                    .map_err(capture_err)?;
                Some(f)
            }
            None => None,
        };
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| InterceptError::Listen {
                    addr: listen.to_owned(),
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            upstream: upstream.to_owned(),
            events: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            next_conn: AtomicU32::new(0),
            replayed: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(Proxy {
            local_addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Everything that happened so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.events).clone()
    }

    /// Every byte read so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.records).clone()
    }

    /// Number of bytes captured so far.
    pub fn captured_len(&self) -> usize {
        lock(&self.shared.records)
            .iter()
            .map(|r| r.bytes.len())
            .sum()
    }

    /// Searches everything captured so far for `text`.
    pub fn search(&self, text: &str) -> Search {
        search(&lock(&self.shared.records), text)
    }

    /// Waits until an event matching `pred` happened (already, or within `timeout`).
    pub async fn wait_for(
        &self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = lock(&self.shared.events).iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting and closes every relayed connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tasks.spawn(connection(shared.clone(), socket, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// One relayed connection: both directions, then (in replay mode) the replay.
async fn connection(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let conn = shared.conn_id();
    shared.emit(Event::Opened { conn, peer });
    let upstream = match TcpStream::connect(&shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            shared.emit(Event::Failed {
                conn,
                error: format!("cannot connect to {}: {e}", shared.upstream),
            });
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let to_server = Pump::new(shared.clone(), conn, Direction::ToServer);
    let to_client = Pump::new(shared.clone(), conn, Direction::ToClient);
    let (to_server, _) = tokio::join!(to_server.run(cr, uw), to_client.run(ur, cw));
    shared.emit(Event::Closed { conn });
    if shared.config.tamper == Some(Tamper::Replay)
        && to_server.replay_complete
        && !shared.replayed.swap(true, Ordering::Relaxed)
    {
        replay(&shared, conn, &to_server.replay_log).await;
    }
    if let Some(text) = &shared.config.expect {
        let s = search(&lock(&shared.records), text);
        shared.emit(Event::Expect(s));
    }
}

/// One direction of one connection.
struct Pump {
    shared: Arc<Shared>,
    conn: u32,
    dir: Direction,
    /// Signature length in the client's `Auth`: the client's modulus length.
    auth_key_bytes: Option<usize>,
    /// Payloads of the `Send` frames of the message being held for tampering.
    held: Vec<u8>,
    /// Holding a message now.
    holding: bool,
    /// The frames a replay sends: `Auth` and the first message.
    replay_log: Vec<u8>,
    /// `replay_log` holds a whole message.
    replay_complete: bool,
}

impl Pump {
    fn new(shared: Arc<Shared>, conn: u32, dir: Direction) -> Self {
        Pump {
            shared,
            conn,
            dir,
            auth_key_bytes: None,
            held: Vec::new(),
            holding: false,
            replay_log: Vec::new(),
            replay_complete: false,
        }
    }

    fn tamper(&self) -> Option<Tamper> {
        self.shared.config.tamper
    }

    async fn run(mut self, mut src: OwnedReadHalf, mut dst: OwnedWriteHalf) -> Self {
        let mut buf: Vec<u8> = Vec::new();
        let mut raw = false;
        let mut chunk = vec![0u8; READ_BUF];
        loop {
            let n = match src.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = &chunk[..n];
            self.shared.record(self.conn, self.dir, data);
            let mut out = Vec::new();
            if raw {
                self.raw(data.len());
                out.extend_from_slice(data);
            } else {
                buf.extend_from_slice(data);
                raw = self.frames(&mut buf, &mut out);
            }
            if !out.is_empty() && dst.write_all(&out).await.is_err() {
                break;
            }
        }
        // Whatever is left (a partial frame, a message held without its end) goes on as it is.
        let mut rest = std::mem::take(&mut buf);
        if self.holding && !self.held.is_empty() {
            let mut framed = Vec::new();
            frame_message(&self.held, &mut framed);
            framed.extend_from_slice(&rest);
            rest = framed;
        }
        if !rest.is_empty() {
            let _ = dst.write_all(&rest).await;
        }
        let _ = dst.shutdown().await;
        self
    }

    fn raw(&self, len: usize) {
        self.shared.emit(Event::Raw {
            conn: self.conn,
            dir: self.dir,
            len,
        });
    }

    /// Takes every whole frame off the front of `buf`, appending what to forward to `out`.
    /// Returns true when the bytes are not letterlock frames (everything left is moved to
    /// `out`, and the direction becomes a plain relay).
    fn frames(&mut self, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
        loop {
            let len = match wire::frame_len(buf, self.shared.config.max_frame) {
                Ok(Some(len)) => len,
                Ok(None) => return false,
                Err(_) => break,
            };
            match buf.get(4) {
                Some(&t) if FrameType::try_from(t).is_err() => break,
                Some(_) if buf.len() >= 4 + len => {
                    let frame: Vec<u8> = buf.drain(..4 + len).collect();
                    self.frame(frame, out);
                }
                _ => return false,
            }
        }
        self.raw(buf.len());
        out.append(buf);
        true
    }

    /// One whole frame (length, type, payload).
    fn frame(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) {
        self.shared
            .emit(Event::Frame(frame_info(self.conn, self.dir, &frame)));
        let t = frame[4];
        let payload = &frame[5..];
        match self.dir {
            Direction::ToServer => {
                if t == u8::from(FrameType::Auth) {
                    self.auth_key_bytes = Some(payload.len().saturating_sub(32));
                }
                if self.tamper() == Some(Tamper::Replay)
                    && !self.replay_complete
                    && [
                        u8::from(FrameType::Auth),
                        u8::from(FrameType::Send),
                        u8::from(FrameType::SendEnd),
                    ]
                    .contains(&t)
                {
                    self.replay_log.extend_from_slice(&frame);
                    self.replay_complete = t == u8::from(FrameType::SendEnd);
                }
                if let Some(mode) = self.tamper().filter(|m| m.on_message()) {
                    if t == u8::from(FrameType::Send) {
                        self.holding = true;
                        self.held.extend_from_slice(payload);
                        if self.held.len() > MAX_HELD {
                            self.shared.emit(Event::NotTampered {
                                conn: self.conn,
                                mode,
                                reason: format!("message over {MAX_HELD} bytes"),
                            });
                            frame_message(&self.held, out);
                            self.held.clear();
                            self.holding = false;
                        }
                        return;
                    }
                    if t == u8::from(FrameType::SendEnd) && self.holding {
                        let message = std::mem::take(&mut self.held);
                        self.holding = false;
                        let message = self.tamper_message(mode, message);
                        // frame_message ends with the SendEnd: this one is not forwarded again.
                        frame_message(&message, out);
                        return;
                    }
                }
            }
            Direction::ToClient => {
                if t == u8::from(FrameType::Error)
                    && let Ok(Frame::Error { code, message }) = Frame::parse(&frame[4..])
                {
                    self.shared.emit(Event::ServerError {
                        conn: self.conn,
                        code,
                        message,
                    });
                }
                if t == u8::from(FrameType::Ack) && self.tamper() == Some(Tamper::ForgeAck) {
                    let mut forged = frame;
                    let last = forged.len() - 1;
                    forged[last] ^= 0x01;
                    self.shared.emit(Event::Tampered {
                        conn: self.conn,
                        mode: Tamper::ForgeAck,
                        detail: format!(
                            "flipped the low bit of the Ack's tag (last byte {:02x} -> {:02x})",
                            forged[last] ^ 0x01,
                            forged[last]
                        ),
                    });
                    out.extend_from_slice(&forged);
                    return;
                }
            }
        }
        out.extend_from_slice(&frame);
    }

    /// The recipient's modulus length, and where it came from.
    fn key_bytes(&self) -> Option<(usize, &'static str)> {
        match (self.shared.config.key_bytes, self.auth_key_bytes) {
            (Some(k), _) => Some((k, "given")),
            (None, Some(k)) => Some((k, "assumed equal to the client's, from its Auth")),
            (None, None) => None,
        }
    }

    /// Applies a message attack, emitting what was done (or why not).
    fn tamper_message(&self, mode: Tamper, message: Vec<u8>) -> Vec<u8> {
        match attack(
            mode,
            message,
            self.key_bytes(),
            self.shared.config.spoof_sender,
        ) {
            Ok((message, detail)) => {
                self.shared.emit(Event::Tampered {
                    conn: self.conn,
                    mode,
                    detail,
                });
                message
            }
            Err((message, reason)) => {
                self.shared.emit(Event::NotTampered {
                    conn: self.conn,
                    mode,
                    reason,
                });
                message
            }
        }
    }
}

/// Appends a sealed message as `Send` frames and a `SendEnd`, as the client cuts them.
fn frame_message(message: &[u8], out: &mut Vec<u8>) {
    for chunk in message.chunks(DATA_FRAME) {
        Frame::Send(chunk.to_vec()).encode(out);
    }
    Frame::SendEnd.encode(out);
}

/// Where the blocks of a sealed message are, from its public header and length.
enum Layout {
    /// `blocks` OAEP blocks of `k` bytes after the header.
    Asymmetric { k: usize, blocks: usize },
    /// The wrapped key (`k` bytes), then `full` sealed chunks of `per` bytes, then the final
    /// sealed chunk of `last` bytes.
    Hybrid {
        k: usize,
        per: usize,
        full: usize,
        last: usize,
    },
}

fn layout(h: &Header, len: usize, k: usize, source: &str) -> Result<Layout, String> {
    let body = len - HEADER_LEN;
    match h.mode {
        Mode::Asymmetric => {
            if body == 0 || !body.is_multiple_of(k) {
                return Err(format!(
                    "the {body}-byte body is not a whole number of {k}-byte OAEP blocks \
                     (k {source}; pass --key-bytes)"
                ));
            }
            Ok(Layout::Asymmetric {
                k,
                blocks: body / k,
            })
        }
        Mode::Hybrid => {
            let per = h.chunk_size as usize + letterlock::envelope::stream::TAG_LEN;
            let rest = body
                .checked_sub(k)
                .filter(|r| *r >= MIN_SEALED_CHUNK)
                .ok_or_else(|| {
                    format!("the {body}-byte body is too short for a {k}-byte wrapped key and a chunk (k {source})")
                })?;
            let (mut full, mut last) = (rest / per, rest % per);
            if last == 0 {
                full -= 1;
                last = per;
            }
            if last < MIN_SEALED_CHUNK {
                return Err(format!(
                    "a final chunk of {last} bytes cannot be (k {source}; pass --key-bytes)"
                ));
            }
            Ok(Layout::Hybrid { k, per, full, last })
        }
    }
}

type Attacked = Result<(Vec<u8>, String), (Vec<u8>, String)>;

/// One message attack: the changed message and what was done, or the message unchanged and
/// why not.
fn attack(
    mode: Tamper,
    mut m: Vec<u8>,
    key_bytes: Option<(usize, &'static str)>,
    spoof: Option<KeyId>,
) -> Attacked {
    let header = match Header::parse(&m) {
        Ok(h) => h,
        Err(e) => return Err((m, format!("not a sealed message: {e}"))),
    };
    let what = format!("{} message {}", header.mode, header.message_id);
    match mode {
        Tamper::Flip => {
            let at = HEADER_LEN + (m.len() - HEADER_LEN) / 2;
            if at >= m.len() {
                return Err((m, "the message has no body".into()));
            }
            m[at] ^= 0x01;
            let detail = format!(
                "flipped bit 0 of byte {at} of {what} ({} bytes; body byte {})",
                m.len(),
                at - HEADER_LEN
            );
            Ok((m, detail))
        }
        Tamper::FlipHeader => {
            m[MESSAGE_ID_BYTE] ^= 0x01;
            Ok((
                m,
                format!(
                    "flipped bit 0 of header byte {MESSAGE_ID_BYTE} (the message id) of {what}: \
                     the header still parses"
                ),
            ))
        }
        Tamper::SpoofSender => {
            let new = spoof.unwrap_or_else(|| {
                let mut inverted = header.sender.0;
                inverted.iter_mut().for_each(|b| *b = !*b);
                KeyId(inverted)
            });
            m[SENDER_ID].copy_from_slice(&new.0);
            Ok((
                m,
                format!(
                    "rewrote the sender id of {what}: {} -> {}",
                    header.sender, new
                ),
            ))
        }
        Tamper::Truncate | Tamper::Reorder => {
            let Some((k, source)) = key_bytes else {
                return Err((
                    m,
                    "the recipient's modulus length is unknown (pass --key-bytes)".into(),
                ));
            };
            let layout = match layout(&header, m.len(), k, source) {
                Ok(l) => l,
                Err(reason) => return Err((m, reason)),
            };
            if mode == Tamper::Truncate {
                truncate(m, &layout, &what, source)
            } else {
                reorder(m, &layout, &what, source)
            }
        }
        Tamper::Replay | Tamper::ForgeAck => Err((m, "not a message attack".into())),
    }
}

fn truncate(mut m: Vec<u8>, layout: &Layout, what: &str, source: &str) -> Attacked {
    let detail = match *layout {
        Layout::Asymmetric { k, blocks } => {
            m.truncate(m.len() - k);
            format!("dropped the last of {blocks} OAEP blocks ({k} bytes, k {source}) of {what}")
        }
        Layout::Hybrid { full, last, .. } => {
            m.truncate(m.len() - last);
            format!(
                "dropped the final STREAM chunk ({last} bytes) of {what}: {}",
                if full == 0 {
                    "it now ends right after the wrapped key".to_owned()
                } else {
                    format!(
                        "it now ends with chunk {} of {}, sealed as not final",
                        full,
                        full + 1
                    )
                }
            )
        }
    };
    Ok((m, detail))
}

fn reorder(mut m: Vec<u8>, layout: &Layout, what: &str, source: &str) -> Attacked {
    let (start, size, detail) = match *layout {
        Layout::Asymmetric { k, blocks } if blocks >= 2 => (
            HEADER_LEN,
            k,
            format!(
                "swapped OAEP blocks 0 and 1 (of {blocks}, {k} bytes each, k {source}) of {what}"
            ),
        ),
        Layout::Hybrid { k, per, full, .. } if full >= 2 => (
            HEADER_LEN + k,
            per,
            format!(
                "swapped STREAM chunks 0 and 1 (of {}, {per} bytes each, after a {k}-byte wrapped key) of {what}",
                full + 1
            ),
        ),
        _ => {
            return Err((
                m,
                "the message has fewer than two equal-size chunks to swap".into(),
            ));
        }
    };
    let (a, b) = m.split_at_mut(start + size);
    a[start..].swap_with_slice(&mut b[..size]);
    Ok((m, detail))
}

/// Sends the recorded `Auth` and message on a fresh connection and reports the answer.
async fn replay(shared: &Shared, from: u32, log: &[u8]) {
    let conn = shared.conn_id();
    shared.emit(Event::Tampered {
        conn,
        mode: Tamper::Replay,
        detail: format!(
            "replaying the {} bytes of Auth + message recorded on conn {from}, on a fresh connection",
            log.len()
        ),
    });
    let (accepted, outcome) = match replay_once(shared, conn, log).await {
        Ok(answer) => answer,
        Err(e) => (false, format!("the connection failed: {e}")),
    };
    shared.emit(Event::Replayed {
        conn,
        accepted,
        outcome,
    });
}

async fn replay_once(shared: &Shared, conn: u32, log: &[u8]) -> io::Result<(bool, String)> {
    let stream = TcpStream::connect(&shared.upstream).await?;
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, shared.config.max_frame);
    let note = |frame: &Frame| {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        shared.record(conn, Direction::ToClient, &bytes);
        shared.emit(Event::Frame(frame_info(conn, Direction::ToClient, &bytes)));
    };
    match tokio::time::timeout(REPLAY_TIMEOUT, reader.read_frame()).await {
        Ok(Ok(hello @ Frame::Hello { .. })) => note(&hello),
        Ok(Ok(other)) => return Ok((false, format!("the server opened with {}", other.name()))),
        Ok(Err(e)) => return Ok((false, format!("no Hello: {e}"))),
        Err(_) => return Ok((false, "no Hello in time".into())),
    }
    shared.record(conn, Direction::ToServer, log);
    // The server may close as soon as Auth fails; its answer is what counts.
    let _ = w.write_all(log).await;
    let _ = w.flush().await;
    loop {
        match tokio::time::timeout(REPLAY_TIMEOUT, reader.read_frame()).await {
            Ok(Ok(frame)) => {
                note(&frame);
                match frame {
                    Frame::Error { code, message } => {
                        shared.emit(Event::ServerError {
                            conn,
                            code,
                            message: message.clone(),
                        });
                        return Ok((
                            false,
                            format!(
                                "the server refused it: {message:?} ({code:?}): the handshake \
                                 challenge is fresh per connection, so the recorded Auth \
                                 signature is worthless"
                            ),
                        ));
                    }
                    Frame::Ack { id, .. } => {
                        return Ok((true, format!("the server acknowledged message {id}")));
                    }
                    _ => {}
                }
            }
            Ok(Err(e)) => return Ok((false, format!("the server closed without an ack ({e})"))),
            Err(_) => return Ok((false, "no answer in time".into())),
        }
    }
}

/// Describes one whole frame.
pub fn frame_info(conn: u32, dir: Direction, frame: &[u8]) -> FrameInfo {
    let payload = frame.get(5..).unwrap_or(&[]);
    let kind = frame
        .get(4)
        .and_then(|t| FrameType::try_from(*t).ok())
        .map_or("Unknown", FrameType::name);
    let mut excerpt = hex::encode(&payload[..payload.len().min(EXCERPT_BYTES)]);
    if payload.len() > EXCERPT_BYTES {
        excerpt.push_str("...");
    }
    FrameInfo {
        conn,
        dir,
        kind,
        size: payload.len(),
        excerpt,
        entropy: entropy(payload),
    }
}

/// Shannon entropy of the byte values, in bits per byte (0 for empty input).
pub fn entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    for b in bytes {
        counts[*b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Every form of `text` searched for, with its encoding.
pub fn needles(text: &str) -> Vec<(Encoding, Vec<u8>)> {
    let raw = text.as_bytes();
    let mut out = vec![(Encoding::Raw, raw.to_vec())];
    out.push((
        Encoding::Utf16Le,
        text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
    ));
    out.push((
        Encoding::Utf16Be,
        text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
    ));
    // In base64 the text's characters depend on where it starts modulo 3: encode it after 0, 1
    // or 2 filler bytes and keep only the characters that depend on the text alone.
    for align in 0..3usize {
        let mut padded = vec![0u8; align];
        padded.extend_from_slice(raw);
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&padded);
        let skip = (align * 8).div_ceil(6);
        let end = padded.len() * 8 / 6;
        if end > skip + 3 {
            out.push((
                Encoding::Base64(align as u8),
                encoded.as_bytes()[skip..end].to_vec(),
            ));
        }
    }
    out.push((Encoding::HexLower, hex::encode(raw).into_bytes()));
    out.push((Encoding::HexUpper, hex::encode_upper(raw).into_bytes()));
    out
}

/// Searches every direction's byte stream (records joined in order) for every form of `text`.
pub fn search(records: &[Record], text: &str) -> Search {
    let mut streams: Vec<((u32, Direction), Vec<u8>)> = Vec::new();
    for r in records {
        match streams.iter_mut().find(|(key, _)| *key == (r.conn, r.dir)) {
            Some((_, s)) => s.extend_from_slice(&r.bytes),
            None => streams.push(((r.conn, r.dir), r.bytes.clone())),
        }
    }
    let needles = needles(text);
    let mut found = Vec::new();
    for ((conn, dir), stream) in &streams {
        for (encoding, needle) in &needles {
            if needle.is_empty() {
                continue;
            }
            if let Some(offset) = stream.windows(needle.len()).position(|w| w == needle) {
                found.push(Finding {
                    encoding: *encoding,
                    conn: *conn,
                    dir: *dir,
                    offset,
                });
            }
        }
    }
    Search {
        text: text.to_owned(),
        scanned: streams.iter().map(|(_, s)| s.len()).sum(),
        encodings: needles.iter().map(|(e, _)| *e).collect(),
        found,
    }
}

/// Reads a capture file written with `--capture`.
pub fn read_capture(path: &Path) -> Result<Vec<Record>, InterceptError> {
    let bad = |reason: &str| InterceptError::BadCapture {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|source| InterceptError::Capture {
            path: path.to_owned(),
            source,
        })?;
    let mut rest = data
        .strip_prefix(CAPTURE_MAGIC.as_slice())
        .ok_or_else(|| bad("it does not start with the capture magic"))?;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_at_checked(9)
            .ok_or_else(|| bad("truncated record header"))?;
        let dir = Direction::from_byte(head[0]).ok_or_else(|| bad("unknown direction byte"))?;
        let conn = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let (bytes, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| bad("truncated record"))?;
        records.push(Record {
            conn,
            dir,
            bytes: bytes.to_vec(),
        });
        rest = tail;
    }
    Ok(records)
}

/// The frame lines of a capture: each direction's stream cut into frames, in capture order.
pub fn describe(records: &[Record], max_frame: usize) -> Vec<Event> {
    let mut streams: HashMap<(u32, Direction), (Vec<u8>, bool)> = HashMap::new();
    let mut events = Vec::new();
    for r in records {
        let (buf, raw) = streams.entry((r.conn, r.dir)).or_default();
        if *raw {
            events.push(Event::Raw {
                conn: r.conn,
                dir: r.dir,
                len: r.bytes.len(),
            });
            continue;
        }
        buf.extend_from_slice(&r.bytes);
        loop {
            let len = match wire::frame_len(buf, max_frame) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(_) => {
                    *raw = true;
                    break;
                }
            };
            match buf.get(4) {
                Some(&t) if FrameType::try_from(t).is_err() => {
                    *raw = true;
                    break;
                }
                Some(_) if buf.len() >= 4 + len => {
                    let frame: Vec<u8> = buf.drain(..4 + len).collect();
                    events.push(Event::Frame(frame_info(r.conn, r.dir, &frame)));
                }
                _ => break,
            }
        }
        if *raw {
            events.push(Event::Raw {
                conn: r.conn,
                dir: r.dir,
                len: buf.len(),
            });
            buf.clear();
        }
    }
    events
}

/// What `letterlock intercept` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub tamper: Option<Tamper>,
    pub capture: Option<PathBuf>,
    pub expect: Option<String>,
    pub key_bytes: Option<usize>,
    /// Print this capture instead of running a proxy.
    pub show: Option<PathBuf>,
}

/// `letterlock intercept`: runs the proxy until Ctrl-C, or prints a capture. Exits 1 when an
/// `--expect` plaintext was found on the wire.
pub async fn command(o: Options) -> Result<ExitCode, InterceptError> {
    if let Some(path) = &o.show {
        let records = read_capture(path)?;
        for event in describe(&records, wire::DEFAULT_MAX_FRAME) {
            println!("{event}");
        }
        let total: usize = records.iter().map(|r| r.bytes.len()).sum();
        println!("{} records, {total} bytes", records.len());
        return Ok(match &o.expect {
            Some(text) => expect_result(&search(&records, text)),
            None => ExitCode::SUCCESS,
        });
    }
    let (Some(listen), Some(upstream)) = (&o.listen, &o.upstream) else {
        return Err(InterceptError::Usage(
            "give --listen and --upstream, or --show FILE",
        ));
    };
    let proxy = Proxy::start(
        listen,
        upstream,
        Config {
            tamper: o.tamper,
            capture: o.capture.clone(),
            expect: o.expect.clone(),
            key_bytes: o.key_bytes,
            print: true,
            ..Config::default()
        },
    )
    .await?;
    println!(
        "intercepting {} -> {upstream} (tamper: {}; capture: {}); Ctrl-C to stop",
        proxy.local_addr(),
        o.tamper.map_or("none", Tamper::name),
        o.capture
            .as_ref()
            .map_or("memory only".into(), |p| p.display().to_string())
    );
    let _ = tokio::signal::ctrl_c().await;
    let result = o.expect.as_ref().map(|text| proxy.search(text));
    proxy.stop().await;
    Ok(match result {
        Some(s) => {
            println!("stopped; over everything captured:");
            expect_result(&s)
        }
        None => {
            println!("stopped");
            ExitCode::SUCCESS
        }
    })
}

fn expect_result(s: &Search) -> ExitCode {
    println!("{s}");
    if s.is_found() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_constant_and_uniform_bytes() {
        assert_eq!(entropy(&[7; 100]), 0.0);
        let all: Vec<u8> = (0..=255).collect();
        assert!((entropy(&all) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn base64_needles_match_every_alignment() {
        let text = "attack at dawn";
        for prefix in ["", "x", "xy", "xyz"] {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{text}!"));
            let records = [Record {
                conn: 1,
                dir: Direction::ToServer,
                bytes: encoded.into_bytes(),
            }];
            let s = search(&records, text);
            assert!(
                s.found
                    .iter()
                    .any(|f| matches!(f.encoding, Encoding::Base64(_))),
                "prefix {prefix:?}: {s}"
            );
            assert!(!s.found_as(Encoding::Raw));
        }
    }

    #[test]
    fn capture_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.cap");
        let mut f = Vec::new();
        f.extend_from_slice(CAPTURE_MAGIC);
        write_record(&mut f, 3, Direction::ToClient, b"hello").unwrap();
        write_record(&mut f, 4, Direction::ToServer, b"").unwrap();
        std::fs::write(&path, &f).unwrap();
        let records = read_capture(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].bytes, b"hello");
        assert_eq!((records[1].conn, records[1].dir), (4, Direction::ToServer));
        std::fs::write(&path, &f[..f.len() - 3]).unwrap();
        assert!(read_capture(&path).is_err());
    }
}
