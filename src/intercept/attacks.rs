//! The attacks: rewriting a held message, forging the server's acknowledgement, and replaying a
//! recorded connection. See the module doc of [`super`] for what each needs and promises.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use letterlock::envelope::{HEADER_LEN, Header, Mode};
use letterlock::keys::KeyId;
use letterlock::wire::{DATA_FRAME, Frame, FrameReader, FrameType};

use super::frames::{RawFrame, frame_info};
use super::proxy::Shared;
use super::tls::{self, APPLICATION_DATA, TlsRecord, TlsWalked, TlsWalker, tls_info};
use super::{Direction, Event, MAX_HELD};

/// How long a replayed connection waits for the server's answer.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);
/// Header offsets the attacks use (docs/PROTOCOL.md §3).
const SENDER_ID: std::ops::Range<usize> = 12..44;
const MESSAGE_ID_BYTE: usize = 76;
/// Shortest sealed STREAM chunk: one byte and its tag.
const MIN_SEALED_CHUNK: usize = 1 + letterlock::envelope::stream::TAG_LEN;

/// An attack on the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Tamper {
    /// Flip one bit in a sealed message's body (past the header); on TLS, in the client's
    /// first record after the handshake.
    Flip,
    /// Flip one bit in a sealed message's header (the message id); on TLS, the first
    /// ciphertext byte of that record.
    FlipHeader,
    /// Drop the final chunk (the last OAEP block, or the final STREAM chunk); on TLS, cut the
    /// end of that record.
    Truncate,
    /// Swap the first two chunks (OAEP blocks, or full STREAM chunks); on TLS, the client's
    /// first two records after the handshake.
    Reorder,
    /// Record a client's send and replay it on a fresh connection (on TLS, every byte the
    /// client sent).
    Replay,
    /// Rewrite the sender key id in the header; on TLS (where it is encrypted), flip a bit of
    /// the client's certificate flight.
    SpoofSender,
    /// Alter the tag of the server's Ack on its way back; on TLS, a bit of the server's first
    /// record after the client's message.
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

/// Where a TLS connection stands, as both directions of the proxy see it from the records'
/// content types and order alone (see "Tampering on TLS" in [`super`]).
#[derive(Debug, Default)]
pub(super) struct TlsState {
    /// The client sent its first encrypted record: its handshake flight.
    client_flight: AtomicBool,
    /// The server sent an encrypted record after that flight: the handshake is over (the
    /// server answers only once the client's Finished checked), so the client's next records
    /// carry frames.
    session: AtomicBool,
    /// The client sent a record inside the session: its message.
    client_message: AtomicBool,
}

/// The attacks on one direction of one connection: what they hold, and how they change each
/// frame on its way.
pub(super) struct Attacker {
    shared: Arc<Shared>,
    conn: u32,
    dir: Direction,
    /// The connection's TLS progress, shared by both directions.
    state: Arc<TlsState>,
    /// This direction is TLS.
    saw_tls: bool,
    /// The TLS attack on this direction was made (or given up): it is made once.
    tls_done: bool,
    /// A TLS record held by `reorder` until the next one.
    held_record: Option<TlsRecord>,
    /// Every byte the client sent, for a TLS replay (up to [`MAX_HELD`]).
    tls_log: Vec<u8>,
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
    /// The first message was over [`MAX_HELD`]: nothing is recorded for a replay.
    replay_dropped: bool,
}

impl Attacker {
    pub(super) fn new(
        shared: Arc<Shared>,
        conn: u32,
        dir: Direction,
        state: Arc<TlsState>,
    ) -> Self {
        Attacker {
            shared,
            conn,
            dir,
            state,
            saw_tls: false,
            tls_done: false,
            held_record: None,
            tls_log: Vec::new(),
            auth_key_bytes: None,
            held: Vec::new(),
            holding: false,
            replay_log: Vec::new(),
            replay_complete: false,
            replay_dropped: false,
        }
    }

    fn tamper(&self) -> Option<Tamper> {
        self.shared.config.tamper
    }

    /// What a replay sends, and whether it is TLS: on v1 the recorded `Auth` and first message,
    /// when a whole one was recorded; on TLS every byte the client sent.
    pub(super) fn into_replay(self) -> Option<(Vec<u8>, bool)> {
        if self.saw_tls {
            return (!self.tls_log.is_empty()).then_some((self.tls_log, true));
        }
        self.replay_complete.then_some((self.replay_log, false))
    }

    /// Keeps the client's bytes for a TLS replay (the frames are not visible, so all of them).
    pub(super) fn log_tls_bytes(&mut self, bytes: &[u8]) {
        if self.dir == Direction::ToServer
            && self.tamper() == Some(Tamper::Replay)
            && self.tls_log.len() + bytes.len() <= MAX_HELD
        {
            self.tls_log.extend_from_slice(bytes);
        }
    }

    /// `reorder` holds a TLS record and waits for the next one.
    pub(super) fn waiting_for_record(&self) -> bool {
        self.held_record.is_some()
    }

    /// No second record came in time: the held one goes on unchanged.
    pub(super) fn give_up_waiting(&mut self, out: &mut Vec<u8>) {
        if let Some(held) = self.held_record.take() {
            self.shared.emit(Event::NotTampered {
                conn: self.conn,
                mode: Tamper::Reorder,
                reason: "the client sent no second record to swap with".into(),
            });
            out.extend_from_slice(held.as_bytes());
        }
    }

    /// One whole TLS record: appends what to forward to `out`.
    pub(super) fn tls_record(&mut self, record: TlsRecord, out: &mut Vec<u8>) {
        self.saw_tls = true;
        let encrypted = record.content_type() == APPLICATION_DATA;
        // Where the connection stands before this record (see [`TlsState`]).
        let (flight, session, message) = (
            self.state.client_flight.load(Ordering::SeqCst),
            self.state.session.load(Ordering::SeqCst),
            self.state.client_message.load(Ordering::SeqCst),
        );
        let target = match (self.dir, encrypted) {
            (_, false) => false,
            (Direction::ToServer, true) => {
                self.state.client_flight.store(true, Ordering::SeqCst);
                if session {
                    self.state.client_message.store(true, Ordering::SeqCst);
                }
                match self.tamper() {
                    Some(Tamper::SpoofSender) => !flight,
                    Some(
                        Tamper::Flip | Tamper::FlipHeader | Tamper::Truncate | Tamper::Reorder,
                    ) => session,
                    _ => false,
                }
            }
            (Direction::ToClient, true) => {
                if flight {
                    self.state.session.store(true, Ordering::SeqCst);
                }
                self.tamper() == Some(Tamper::ForgeAck) && message
            }
        };
        if let Some(held) = self.held_record.take() {
            // `reorder`: this record first, then the held one.
            self.shared.emit(Event::Tampered {
                conn: self.conn,
                mode: Tamper::Reorder,
                detail: format!(
                    "swapped the client's first two records inside the session ({} and {} bytes): each is sealed under its sequence number, so neither decrypts",
                    held.as_bytes().len(),
                    record.as_bytes().len()
                ),
            });
            out.extend_from_slice(record.as_bytes());
            out.extend_from_slice(held.as_bytes());
            return;
        }
        let Some(mode) = self.tamper().filter(|_| target && !self.tls_done) else {
            out.extend_from_slice(record.as_bytes());
            return;
        };
        self.tls_done = true;
        let (record, detail) = match tamper_record(mode, record) {
            Ok(done) => done,
            Err(held) => {
                self.held_record = Some(held);
                return;
            }
        };
        self.shared.emit(Event::Tampered {
            conn: self.conn,
            mode,
            detail,
        });
        out.extend_from_slice(record.as_bytes());
    }

    /// A message held without its end goes on as it is (re-framed).
    pub(super) fn release(&mut self, out: &mut Vec<u8>) {
        if let Some(held) = self.held_record.take() {
            out.extend_from_slice(held.as_bytes());
        }
        if self.holding && !self.held.is_empty() {
            frame_message(&self.held, out);
        }
        self.held = Vec::new();
        self.holding = false;
    }

    /// One whole frame: appends what to forward to `out`.
    pub(super) fn frame(&mut self, frame: RawFrame, out: &mut Vec<u8>) {
        let t = frame.frame_type();
        match self.dir {
            Direction::ToServer => {
                if t == Some(FrameType::Auth) {
                    self.auth_key_bytes = Some(frame.payload().len().saturating_sub(32));
                }
                if self.tamper() == Some(Tamper::Replay)
                    && !self.replay_complete
                    && !self.replay_dropped
                    && matches!(
                        t,
                        Some(FrameType::Auth | FrameType::Send | FrameType::SendEnd)
                    )
                {
                    self.log_for_replay(&frame);
                }
                if let Some(mode) = self.tamper().filter(|m| m.on_message()) {
                    if t == Some(FrameType::Send) {
                        self.holding = true;
                        self.held.extend_from_slice(frame.payload());
                        if self.held.len() > MAX_HELD {
                            self.shared.emit(Event::NotTampered {
                                conn: self.conn,
                                mode,
                                reason: format!("message over {MAX_HELD} bytes"),
                            });
                            frame_message(&self.held, out);
                            self.held = Vec::new();
                            self.holding = false;
                        }
                        return;
                    }
                    if t == Some(FrameType::SendEnd) && self.holding {
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
                if t == Some(FrameType::Error)
                    && let Ok(Frame::Error { code, message }) = Frame::parse(frame.body())
                {
                    self.shared.emit(Event::ServerError {
                        conn: self.conn,
                        code,
                        message,
                    });
                }
                if t == Some(FrameType::Ack) && self.tamper() == Some(Tamper::ForgeAck) {
                    let mut forged = frame.into_bytes();
                    if let Some(last) = forged.last_mut() {
                        let was = *last;
                        *last ^= 0x01;
                        self.shared.emit(Event::Tampered {
                            conn: self.conn,
                            mode: Tamper::ForgeAck,
                            detail: format!(
                                "flipped the low bit of the Ack's tag (last byte {was:02x} -> {:02x})",
                                *last
                            ),
                        });
                    }
                    out.extend_from_slice(&forged);
                    return;
                }
            }
        }
        out.extend_from_slice(frame.as_bytes());
    }

    /// Records a frame of the `Auth` and first message for the replay, up to [`MAX_HELD`].
    fn log_for_replay(&mut self, frame: &RawFrame) {
        if self.replay_log.len() + frame.as_bytes().len() > MAX_HELD {
            self.replay_log = Vec::new();
            self.replay_dropped = true;
            self.shared.emit(Event::NotTampered {
                conn: self.conn,
                mode: Tamper::Replay,
                reason: format!("message over {MAX_HELD} bytes: not recorded for a replay"),
            });
            return;
        }
        self.replay_log.extend_from_slice(frame.as_bytes());
        self.replay_complete = frame.frame_type() == Some(FrameType::SendEnd);
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

/// One TLS record attack: the changed record and what was done, or (for `reorder`) the record
/// to hold until the next.
fn tamper_record(mode: Tamper, record: TlsRecord) -> Result<(TlsRecord, String), TlsRecord> {
    let len = record.payload().len();
    let version = record.version();
    let mut payload = record.payload().to_vec();
    let detail = match mode {
        Tamper::Reorder => return Err(record),
        Tamper::Truncate => {
            payload.pop();
            format!(
                "cut the last byte of the client's first record inside the session ({len} -> {} bytes, length fixed): its AEAD tag no longer checks",
                payload.len()
            )
        }
        Tamper::FlipHeader => {
            if let Some(b) = payload.first_mut() {
                *b ^= 0x01;
            }
            "flipped bit 0 of the first ciphertext byte of the client's first record inside the session (where its first frame's length is sealed)"
                .into()
        }
        _ => {
            if let Some(b) = payload.get_mut(len / 2) {
                *b ^= 0x01;
            }
            match mode {
                Tamper::SpoofSender => format!(
                    "the sender's identity travels encrypted (certificate and signature in the client's first encrypted flight): cannot rewrite it, flipped bit 0 of byte {} of that {len}-byte record instead",
                    len / 2
                ),
                Tamper::ForgeAck => format!(
                    "flipped bit 0 of byte {} of the server's first {len}-byte record after the client's message (its Ack)",
                    len / 2
                ),
                _ => format!(
                    "flipped bit 0 of byte {} (the middle) of the client's first {len}-byte record inside the session, which carries the start of its message",
                    len / 2
                ),
            }
        }
    };
    Ok((
        TlsRecord::rebuild(record.content_type(), version, &payload),
        detail,
    ))
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

/// A message attack on a whole sealed message, outside any connection (the demo tampers a
/// sealed message at rest with it): the changed message and what was done, or the message
/// unchanged and why not. `key_bytes` is the recipient's modulus length (public); `spoof` the
/// sender id `spoof-sender` writes.
pub fn tamper_sealed(
    mode: Tamper,
    message: Vec<u8>,
    key_bytes: usize,
    spoof: Option<KeyId>,
) -> Attacked {
    attack(mode, message, Some((key_bytes, "given")), spoof)
}

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
pub(super) async fn replay(shared: &Shared, from: u32, log: &[u8]) {
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
    let mut to_client = shared.recording(conn, Direction::ToClient);
    let mut to_server = shared.recording(conn, Direction::ToServer);
    let mut note = |frame: &Frame| {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        shared.record(&mut to_client, &bytes);
        shared.emit(Event::Frame(frame_info(conn, Direction::ToClient, &bytes)));
    };
    match tokio::time::timeout(REPLAY_TIMEOUT, reader.read_frame()).await {
        Ok(Ok(hello @ Frame::Hello { .. })) => note(&hello),
        Ok(Ok(other)) => return Ok((false, format!("the server opened with {}", other.name()))),
        Ok(Err(e)) => return Ok((false, format!("no Hello: {e}"))),
        Err(_) => return Ok((false, "no Hello in time".into())),
    }
    shared.record(&mut to_server, log);
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
                                "the server refused it: {message:?} (code {code}): the handshake \
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

/// Sends every byte the client sent on a TLS connection again, on a fresh connection, and
/// reports what the server answered. The records the server sends back are encrypted, so the
/// interceptor cannot see an ack: it reports that the server closed and how, and the store
/// tells the rest (the demo checks it).
pub(super) async fn replay_tls(shared: &Shared, from: u32, log: &[u8]) {
    let conn = shared.conn_id();
    shared.emit(Event::Tampered {
        conn,
        mode: Tamper::Replay,
        detail: format!(
            "replaying the {} bytes the client sent on conn {from} (TLS), on a fresh connection",
            log.len()
        ),
    });
    let outcome = match replay_tls_once(shared, conn, log).await {
        Ok(outcome) => outcome,
        Err(e) => format!("the connection failed: {e}"),
    };
    shared.emit(Event::Replayed {
        conn,
        accepted: false,
        outcome,
    });
}

async fn replay_tls_once(shared: &Shared, conn: u32, log: &[u8]) -> io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(&shared.upstream).await?;
    let mut to_server = shared.recording(conn, Direction::ToServer);
    let mut to_client = shared.recording(conn, Direction::ToClient);
    shared.record(&mut to_server, log);
    // The server may close as soon as the recorded flight fails; its answer is what counts.
    let _ = stream.write_all(log).await;
    let _ = stream.flush().await;
    let mut walker = TlsWalker::new();
    let (mut records, mut bytes) = (0usize, 0usize);
    let mut buf = vec![0u8; tls::MAX_RECORD];
    let closed = loop {
        match tokio::time::timeout(REPLAY_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                let data = buf.get(..n).unwrap_or(&[]);
                shared.record(&mut to_client, data);
                bytes += n;
                walker.push(data);
                for walked in walker.by_ref() {
                    if let TlsWalked::Record(r) = walked {
                        records += 1;
                        shared.emit(Event::Tls(tls_info(conn, Direction::ToClient, &r)));
                    }
                }
            }
            Err(_) => break false,
        }
    };
    Ok(format!(
        "the server answered {bytes} bytes ({records} TLS records) and {}: a TLS 1.3 server \
         picks a fresh random and key share per handshake, so the recorded client flight does \
         not decrypt (the interceptor cannot see inside; the store shows nothing new)",
        if closed {
            "closed the connection"
        } else {
            "stopped answering"
        }
    ))
}
