//! A keyless man-in-the-middle, to show what an eavesdropper and a tamperer get.
//!
//! [`Proxy`] listens on one address and relays every connection to an upstream server, both
//! ways. It holds no keys: it cuts the byte stream into frames from the framing alone
//! (`length u32 BE || type u8 || payload`, see [`letterlock::wire`]), reports one [`Event::Frame`]
//! per frame (direction, type, size, hex excerpt, byte entropy of the payload), writes every
//! byte it reads to a capture file as it reads it, and can attack the traffic ([`Tamper`]).
//! Bytes that are not letterlock frames (a length over the limit, an unknown type byte) switch
//! that direction to a plain relay, so the proxy also sits in front of any TCP service (the
//! tests put it before an echo server).
//!
//! A direction that starts with a TLS record header (protocol version 2) is cut into TLS records
//! instead ([`tls`]): one [`Event::Tls`] per record with its content type, size and what the
//! handshake shows in the clear (ALPN, groups, versions); the letterlock frames inside are
//! encrypted and never reported. On TLS every attack works on records, since the sealed message
//! cannot be found: see "Tampering on TLS" below.
//!
//! # Layout
//! - this module: the public types ([`Config`], [`Event`], [`Direction`]) and the
//!   `letterlock intercept` command ([`command`]);
//! - [`frames`]: the frame walker, shared with the demo, and what a frame line shows;
//! - `proxy`: the listener, relaying both ways, and recording what is read;
//! - `attacks`: the tampering and the replay;
//! - [`capture`]: the capture file, written and read a record at a time;
//! - [`search`](mod@search): searching captured bytes for a plaintext as they arrive.
//! - [`tls`]: TLS records (protocol version 2): the record walker and what a handshake shows.
//!
//! # Capture
//! Every byte read goes to the capture file (`--capture FILE`, or a temporary file removed when
//! the proxy goes) as it is read; see [`capture`] for the format. Nothing captured is kept in
//! memory: [`Proxy::records`] and [`Proxy::search`] read the file back, and an `--expect` text
//! is searched as the bytes arrive ([`search::StreamSearch`]), so its result is ready at any
//! time. The event history is bounded too ([`MAX_EVENTS`], the oldest go first).
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
//! # Tampering on TLS (protocol version 2)
//! The proxy cannot see a message inside TLS, so each mode does the nearest thing it can to the
//! records, and says which: `flip` flips a bit in the middle of the first record the client sends
//! inside the session (after the server's first record that follows the client's handshake
//! flight: its `Ready`), `flip-header` the first byte of that record's ciphertext, `truncate`
//! cuts that record's last byte (its AEAD tag no longer checks), `reorder` swaps it with the
//! next record, `spoof-sender` flips a bit in the client's encrypted handshake flight (its
//! certificate and signature: the sender's identity), `forge-ack` flips a bit of the first record
//! the server sends after the client's message, and `replay` sends every byte the client sent
//! on a fresh connection. Each breaks a record's authentication or the handshake transcript: the
//! connection fails, and the message is not stored.
//!
//! Invariants: the proxy never blocks a direction on the other; it holds at most one message
//! per connection ([`MAX_HELD`]), and for a replay at most one more; all parsing is bounded by
//! [`Config::max_frame`]. Memory does not grow with the traffic: per connection it is one read,
//! one frame, and what an attack holds.

mod attacks;
pub mod capture;
pub mod frames;
mod proxy;
pub mod search;
pub mod tls;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use letterlock::keys::KeyId;
use letterlock::wire::{self, ErrorCode};

pub use attacks::{Tamper, tamper_sealed};
pub use capture::{CAPTURE_MAGIC, CaptureReader, Record, read_capture};
pub use frames::{
    EXCERPT_BYTES, FrameInfo, FrameWalker, RawFrame, Walked, describe, entropy, frame_info,
};
pub use proxy::{MAX_EVENTS, Proxy};
pub use search::{Encoding, Finding, Search, needles, search};
pub use tls::{TlsInfo, TlsRecord, TlsWalked, TlsWalker, looks_like_tls, tls_info};

/// Largest message held for tampering (or recorded for a replay); a larger one is forwarded
/// unchanged (and said so).
pub const MAX_HELD: usize = 64 * 1024 * 1024;

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
    /// A TLS record (protocol version 2): the frames inside are encrypted.
    Tls(TlsInfo),
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
            Event::Tls(i) => write!(f, "{i}"),
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
                "[conn {conn}] server answered Error (code {code}): {message:?}"
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

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterceptError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("capture file {}: {source}", path.display())]
    Capture { path: PathBuf, source: io::Error },
    /// Said as `seal -o` says it: nothing is overwritten unless asked.
    #[error("{} already exists; pass --force to replace it", path.display())]
    CaptureExists { path: PathBuf },
    #[error("{} is not a letterlock capture: {reason}", path.display())]
    BadCapture { path: PathBuf, reason: String },
    /// A capture that ends in the middle of a record: cut short, not another kind of file.
    #[error(
        "{} ends in the middle of a record, after {records} whole one(s): a capture cut short \
         (copied while the proxy was writing it, or cut with head)",
        path.display()
    )]
    CaptureCut { path: PathBuf, records: u64 },
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
    /// Write the capture to this file; without it, to a temporary file removed with the proxy.
    pub capture: Option<PathBuf>,
    /// Replace an existing regular file at [`Config::capture`] (`--force`); a symbolic link, a
    /// folder, a device or a pipe there is refused all the same.
    pub replace_capture: bool,
    /// Search everything captured for this plaintext as it arrives, and report the search
    /// after each connection.
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
            replace_capture: false,
            expect: None,
            key_bytes: None,
            spoof_sender: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
            print: false,
        }
    }
}

/// What `letterlock intercept` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub tamper: Option<Tamper>,
    pub capture: Option<PathBuf>,
    /// Replace an existing regular file at `capture`.
    pub force: bool,
    pub expect: Option<String>,
    pub key_bytes: Option<usize>,
    /// Print this capture instead of running a proxy.
    pub show: Option<PathBuf>,
}

/// Exit status of `intercept --expect` when the text was found in the captured bytes: its own
/// number, so a script tells a leak from a failure to look (1, as every command's error).
pub const EXIT_FOUND: u8 = 3;

/// `letterlock intercept`: runs the proxy until Ctrl-C, or prints a capture. Exits
/// [`EXIT_FOUND`] when an `--expect` plaintext was found on the wire.
pub async fn command(o: Options) -> Result<ExitCode, InterceptError> {
    if let Some(path) = &o.show {
        // A record at a time: a capture of any size is shown in bounded memory.
        let mut describe = frames::Describe::new(wire::DEFAULT_MAX_FRAME);
        let mut searching = o.expect.as_deref().map(search::RecordSearch::new);
        let (mut records, mut total) = (0usize, 0usize);
        for record in show_reader(path)? {
            let record = record?;
            for event in describe.record(&record) {
                println!("{event}");
            }
            if let Some(s) = searching.as_mut() {
                s.feed(&record);
            }
            records += 1;
            total += record.bytes.len();
        }
        println!("{records} records, {total} bytes");
        return Ok(match searching {
            Some(s) => expect_result(&s.finish()),
            None => ExitCode::SUCCESS,
        });
    }
    let (Some(listen), Some(upstream)) = (&o.listen, &o.upstream) else {
        return Err(InterceptError::Usage(
            "give --listen and --upstream, or --show FILE",
        ));
    };
    // Listened for before the line that says we intercept (`stop_signals`).
    let stop = crate::cli::stop_signals()?;
    let proxy = Proxy::start(
        listen,
        upstream,
        Config {
            tamper: o.tamper,
            capture: o.capture.clone(),
            replace_capture: o.force,
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
            .map_or("a temporary file, removed on exit".into(), |p| p
                .display()
                .to_string())
    );
    stop.await;
    // The --expect text was searched as it arrived: this reads no file.
    let result = match &o.expect {
        Some(text) => Some(proxy.search(text)?),
        None => None,
    };
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

/// The capture `--show` prints: the file, or stdin for `-` (`… | letterlock intercept --show
/// -`, as age and gpg read `-`), refused when stdin is a terminal, where nobody types a binary
/// capture (found by a trial run: `-` was looked for as a file named `-`).
fn show_reader(path: &std::path::Path) -> Result<CaptureReader, InterceptError> {
    use std::io::IsTerminal;
    if path != std::path::Path::new("-") {
        return CaptureReader::open(path);
    }
    if io::stdin().is_terminal() {
        return Err(InterceptError::Usage(
            "--show - reads a capture from stdin, which is a terminal here: pipe one in \
             (--show - < FILE), or give the FILE",
        ));
    }
    CaptureReader::from_reader(
        Box::new(io::stdin()),
        std::path::Path::new("stdin"),
        u64::MAX,
    )
}

fn expect_result(s: &Search) -> ExitCode {
    println!("{s}");
    if s.is_found() {
        ExitCode::from(EXIT_FOUND)
    } else {
        ExitCode::SUCCESS
    }
}
