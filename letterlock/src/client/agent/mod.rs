//! The client agent: a process that keeps the client's key loaded and checked and one
//! authenticated TLS connection to the server open, so that a one-shot `send_msg` hands its
//! message over a Unix socket instead of paying, in every process, for reading and checking an
//! RSA key, blinding it, and a TLS handshake. It is to `letterlock client send_msg` what ssh's
//! ControlMaster is to `ssh`: the same command, faster when a master is running, unchanged when
//! none is.
//!
//! What crosses the socket is plaintext and a verdict, never a key: the agent seals and signs
//! each message itself, sends it on its connection, and answers "delivered" only once the
//! server's ack tag matched (as [`Client::send_sealed`](super::Client::send_sealed) does). So the
//! agent speaks for the key it holds to any process allowed on its socket: only processes of
//! the user the agent was started for ([`serve`] checks the peer's user id on every
//! connection, beside the socket file's 0600 mode). docs/SECURITY.md, "The client agent", says
//! what that means; docs/PROTOCOL.md, "The client agent's socket", gives the bytes.
//!
//! Layout: this file holds the requests and replies and their encoding (plain functions over
//! byte slices, which the fuzzer calls) and [`ask`], the side of a command that hands a message
//! over; `serve.rs` the agent's side.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::envelope::{MessageId, Mode};

mod serve;

pub use serve::{
    AgentConfig, AgentError, AgentLock, AgentSocket, HintFor, KeyCheck, SOCKET_TIMEOUT, serve,
};

/// The first bytes of every request and reply body: "LLA" and the version of this encoding.
pub const MAGIC: [u8; 4] = *b"LLA1";

/// The largest message an agent takes: larger ones are sealed by the command itself, streamed.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The longest server address a request can name (HOST:PORT, UTF-8).
pub const MAX_SERVER: usize = 255;

/// The longest text in a reply, in bytes; an agent cuts longer ones at a character boundary.
pub const MAX_TEXT: usize = 1024;

/// `text` (what failed) followed by a line feed and `hint` (what the user can do about it), as
/// a `not delivered` or `not proven` reply carries them, if both fit in [`MAX_TEXT`]; `text`
/// alone otherwise. A line feed in `text` becomes a space, so that the first one in the reply
/// is where the hint starts. The command shows the hint as it shows its own ([`split_hint`]).
pub fn with_hint(text: &str, hint: Option<&str>) -> String {
    let text = text.replace('\n', " ");
    match hint {
        Some(hint) if text.len() + 1 + hint.len() <= MAX_TEXT => format!("{text}\n{hint}"),
        _ => text,
    }
}

/// A reply's text split into what failed and, after its first line feed, what the user can do
/// about it ([`with_hint`]); an agent that gives no hint sends one line.
pub fn split_hint(text: &str) -> (&str, Option<&str>) {
    match text.split_once('\n') {
        Some((text, hint)) => (text, Some(hint)),
        None => (text, None),
    }
}

/// How an agent's [`Reply::Declined`] for a request naming another server starts, followed by
/// "ADDR, not OTHER": a reply carries text only, and a command that then fails without the
/// agent tells this decline from the others by it, to name the address the agent takes.
pub const DECLINED_OTHER_SERVER: &str = "this agent sends to ";

/// The server address an agent's decline names as its own, if `reason` is a
/// [`DECLINED_OTHER_SERVER`] decline.
pub fn declined_for_other_server(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix(DECLINED_OTHER_SERVER)?;
    Some(rest.split_once(", not ").map_or(rest, |(ours, _)| ours))
}

/// How an agent's [`Reply::Declined`] starts when the keys it holds are no longer the ones its
/// user keeps ([`KeyCheck`]), followed by why: it stepped aside for good, and stops. A command
/// tells this decline from the others by it, to say that its agent has stopped and why.
pub const DECLINED_KEYS_CHANGED: &str = "the agent stepped aside for good: ";

/// Why an agent stepped aside, if `reason` is a [`DECLINED_KEYS_CHANGED`] decline.
pub fn declined_for_changed_keys(reason: &str) -> Option<&str> {
    reason.strip_prefix(DECLINED_KEYS_CHANGED)
}

/// The largest request body: magic, kind, mode, asymmetric limit, wait, server length, server,
/// message.
pub const MAX_REQUEST: usize = 4 + 1 + 1 + 8 + 4 + 1 + MAX_SERVER + MAX_MESSAGE;

/// The largest reply body: magic, status, a message id, text (the others are shorter).
pub const MAX_REPLY: usize = 4 + 1 + 16 + MAX_TEXT;

/// What a command asks of the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Seal `message` and send it to the server; answer once the server proved it stored it.
    Send(SendRequest),
    /// Stop: answer [`Reply::Stopping`], close the connection to the server, remove the socket.
    Stop,
}

/// One message to seal and send.
#[derive(PartialEq, Eq)]
pub struct SendRequest {
    /// The server the command would have connected to (its `--server`): an agent sends only to
    /// the one it was started for and declines a request naming another.
    pub server: String,
    pub mode: Mode,
    /// The command's limit on an asymmetric message's size
    /// ([`SealOptions::asymmetric_limit`](crate::envelope::SealOptions::asymmetric_limit)).
    pub max_asymmetric: u64,
    /// How many seconds the command waits for the answer once it wrote the request: the agent
    /// does not start a message whose command is gone, and gives up on one it could not prove
    /// delivered in that time.
    pub wait_s: u32,
    /// The plaintext, at most [`MAX_MESSAGE`] bytes; wiped when dropped.
    pub message: Zeroizing<Vec<u8>>,
}

impl SendRequest {
    /// The `wait_s` of a command that keeps trying for `retries` (its `--timeout`): that long,
    /// plus the time of one answer ([`ClientConfig::default`](super::ClientConfig)'s timeout),
    /// in whole seconds rounded up, so that `--timeout 500ms` still leaves the agent half a
    /// second (found by a review: it was rounded down to none).
    pub fn wait_for(retries: Duration) -> u32 {
        let allowance = retries.saturating_add(super::ClientConfig::default().timeout);
        let whole = allowance
            .as_secs()
            .saturating_add(u64::from(allowance.subsec_nanos() > 0));
        u32::try_from(whole).unwrap_or(u32::MAX)
    }

    /// How long the agent may keep trying this request's message (connecting again, sending
    /// it again): its command's `--timeout`, which [`SendRequest::wait_for`] added the time
    /// of one answer to.
    pub fn retries(&self) -> Duration {
        Duration::from_secs(self.wait_s.into())
            .saturating_sub(super::ClientConfig::default().timeout)
    }
}

/// Everything but the plaintext, which must not reach a log.
impl std::fmt::Debug for SendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRequest")
            .field("server", &self.server)
            .field("mode", &self.mode)
            .field("max_asymmetric", &self.max_asymmetric)
            .field("wait_s", &self.wait_s)
            .field("message_len", &self.message.len())
            .finish()
    }
}

/// What the agent answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The server proved it decrypted and stored the message.
    Delivered {
        id: MessageId,
        plaintext_len: u64,
        mode: Mode,
    },
    /// The message was not delivered: refused, not sent, or failed before all of it went out
    /// (one that may have been stored is [`Reply::NotProven`]); why, for the user.
    NotDelivered(String),
    /// Message `id` may or may not have been stored: all of it went out and no acknowledgement
    /// came, or one that did not prove it ([`crate::client::ClientError::unproven_id`]). The
    /// id is what a script needs to tell later whether it arrived (`send_msg --json`).
    NotProven { id: MessageId, text: String },
    /// Not for this agent (another server, or a request it cannot take): nothing was sent, and
    /// the command sends the message itself.
    Declined(String),
    /// The answer to [`Request::Stop`].
    Stopping,
}

const KIND_SEND: u8 = 0x01;
const KIND_STOP: u8 = 0x02;
const STATUS_DELIVERED: u8 = 0x00;
const STATUS_NOT_DELIVERED: u8 = 0x01;
const STATUS_DECLINED: u8 = 0x02;
const STATUS_STOPPING: u8 = 0x03;
const STATUS_NOT_PROVEN: u8 = 0x04;

/// Why bytes on the agent's socket were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("not a letterlock agent message (magic)")]
    Magic,
    #[error("agent message of {} is over the limit of {}", crate::text::ByteCount::from(*.0), .1)]
    TooLarge(usize, usize),
    #[error("truncated agent message")]
    Truncated,
    #[error("unknown agent {what} {value:#04x}")]
    Unknown { what: &'static str, value: u8 },
    #[error("agent {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("agent request names no server")]
    NoServer,
    #[error("{} of trailing data after an agent message", crate::text::ByteCount::from(*.0))]
    Trailing(usize),
}

impl Request {
    /// The body of this request (without the length that frames it on the socket). A send's
    /// server and message must be within [`MAX_SERVER`] and [`MAX_MESSAGE`]: longer ones are
    /// an error, not cut.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, CodecError> {
        let mut out = Zeroizing::new(Vec::new());
        out.extend_from_slice(&MAGIC);
        match self {
            Request::Stop => out.push(KIND_STOP),
            Request::Send(s) => {
                if s.server.is_empty() {
                    return Err(CodecError::NoServer);
                }
                let server_len = u8::try_from(s.server.len())
                    .map_err(|_| CodecError::TooLarge(s.server.len(), MAX_SERVER))?;
                if s.message.len() > MAX_MESSAGE {
                    return Err(CodecError::TooLarge(s.message.len(), MAX_MESSAGE));
                }
                out.reserve(1 + 1 + 8 + 4 + 1 + s.server.len() + s.message.len());
                out.push(KIND_SEND);
                out.push(s.mode.to_byte());
                out.extend_from_slice(&s.max_asymmetric.to_be_bytes());
                out.extend_from_slice(&s.wait_s.to_be_bytes());
                out.push(server_len);
                out.extend_from_slice(s.server.as_bytes());
                out.extend_from_slice(&s.message);
            }
        }
        Ok(out)
    }

    /// Parses a request body. Never panics; copies nothing before every length checked out.
    pub fn decode(body: &[u8]) -> Result<Request, CodecError> {
        let mut r = Bytes::open(body, MAX_REQUEST)?;
        match r.byte()? {
            KIND_STOP => {
                r.end()?;
                Ok(Request::Stop)
            }
            KIND_SEND => {
                let mode = r.mode()?;
                let max_asymmetric = u64::from_be_bytes(r.array()?);
                let wait_s = u32::from_be_bytes(r.array()?);
                let server_len = usize::from(r.byte()?);
                if server_len == 0 {
                    return Err(CodecError::NoServer);
                }
                let server = std::str::from_utf8(r.take(server_len)?)
                    .map_err(|_| CodecError::NotUtf8("server address"))?
                    .to_owned();
                let message = r.rest();
                if message.len() > MAX_MESSAGE {
                    return Err(CodecError::TooLarge(message.len(), MAX_MESSAGE));
                }
                Ok(Request::Send(SendRequest {
                    server,
                    mode,
                    max_asymmetric,
                    wait_s,
                    message: Zeroizing::new(message.to_vec()),
                }))
            }
            other => Err(CodecError::Unknown {
                what: "request kind",
                value: other,
            }),
        }
    }
}

impl Reply {
    /// The body of this reply. A text longer than [`MAX_TEXT`] bytes is cut at the last
    /// character boundary within it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match self {
            Reply::Delivered {
                id,
                plaintext_len,
                mode,
            } => {
                out.push(STATUS_DELIVERED);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&plaintext_len.to_be_bytes());
                out.push(mode.to_byte());
            }
            Reply::NotDelivered(text) => {
                out.push(STATUS_NOT_DELIVERED);
                out.extend_from_slice(cut(text).as_bytes());
            }
            Reply::NotProven { id, text } => {
                out.push(STATUS_NOT_PROVEN);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(cut(text).as_bytes());
            }
            Reply::Declined(text) => {
                out.push(STATUS_DECLINED);
                out.extend_from_slice(cut(text).as_bytes());
            }
            Reply::Stopping => out.push(STATUS_STOPPING),
        }
        out
    }

    /// Parses a reply body. Never panics.
    pub fn decode(body: &[u8]) -> Result<Reply, CodecError> {
        let mut r = Bytes::open(body, MAX_REPLY)?;
        // Refused over MAX_TEXT, as `encode` cuts it there: every reply has one encoding, also
        // now that MAX_REPLY leaves room for a longer text beside no id.
        let text = |r: &mut Bytes| {
            let rest = r.rest();
            if rest.len() > MAX_TEXT {
                return Err(CodecError::TooLarge(rest.len(), MAX_TEXT));
            }
            std::str::from_utf8(rest)
                .map(str::to_owned)
                .map_err(|_| CodecError::NotUtf8("reply text"))
        };
        match r.byte()? {
            STATUS_DELIVERED => {
                let id = MessageId(r.array()?);
                let plaintext_len = u64::from_be_bytes(r.array()?);
                let mode = r.mode()?;
                r.end()?;
                Ok(Reply::Delivered {
                    id,
                    plaintext_len,
                    mode,
                })
            }
            STATUS_NOT_DELIVERED => Ok(Reply::NotDelivered(text(&mut r)?)),
            STATUS_NOT_PROVEN => {
                let id = MessageId(r.array()?);
                Ok(Reply::NotProven {
                    id,
                    text: text(&mut r)?,
                })
            }
            STATUS_DECLINED => Ok(Reply::Declined(text(&mut r)?)),
            STATUS_STOPPING => {
                r.end()?;
                Ok(Reply::Stopping)
            }
            other => Err(CodecError::Unknown {
                what: "reply status",
                value: other,
            }),
        }
    }
}

/// `text` within [`MAX_TEXT`] bytes, cut at a character boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// A cursor over a body: every read is checked against what is left.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    /// A cursor after the magic of a body of at most `limit` bytes.
    fn open(body: &'a [u8], limit: usize) -> Result<Bytes<'a>, CodecError> {
        if body.len() > limit {
            return Err(CodecError::TooLarge(body.len(), limit));
        }
        let mut r = Bytes(body);
        if r.take(4)? != MAGIC {
            return Err(CodecError::Magic);
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(CodecError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A mode byte, as the header's.
    fn mode(&mut self) -> Result<Mode, CodecError> {
        let byte = self.byte()?;
        Mode::from_byte(byte).ok_or(CodecError::Unknown {
            what: "mode",
            value: byte,
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn end(&self) -> Result<(), CodecError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

/// `body` framed by its length (4 bytes, big-endian); bodies are bounded far below 4 GiB.
fn framed(body: &[u8]) -> Zeroizing<Vec<u8>> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body length a frame announces, refused over `limit` before anything is allocated.
fn check_len(len: [u8; 4], limit: usize) -> io::Result<usize> {
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            CodecError::TooLarge(len, limit),
        ));
    }
    Ok(len)
}

/// Reads one length-framed body of at most `limit` bytes.
fn read_framed(r: &mut impl Read, limit: usize) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0; 4];
    r.read_exact(&mut len)?;
    let mut body = Zeroizing::new(vec![0; check_len(len, limit)?]);
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Why [`ask`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No agent listens on the socket (no socket file, or one left by an agent that is gone):
    /// nothing was handed over.
    #[error("no agent is running at {0}")]
    NotRunning(String),
    /// What is at the socket's path is not an agent of this user's (another user's socket, a
    /// symbolic link, a file, or a process of another user behind it): nothing was handed over,
    /// and nothing should be.
    #[error("{0} is not an agent socket of yours: {1}")]
    NotOurs(String, String),
    /// The request could not be made or handed over: nothing reached the agent.
    #[error("cannot hand the message to the agent: {0}")]
    NotHandedOver(String),
    /// The request was handed over, and no answer came: the message may or may not have been
    /// delivered.
    #[error("no answer from the agent: {0}")]
    NoAnswer(String),
}

/// Hands `request` to the agent listening on `socket` and waits up to `timeout` for its
/// answer. Blocking (no runtime): a command that hands its message over does nothing else.
///
/// The agent must be this user's: the socket a socket (not a link) owned by this user, and the
/// process behind it running as this user (its credentials read from the connection). Anyone
/// who can write in the keys folder could otherwise put a socket there and collect the
/// plaintext, or print "delivered" for a message that went nowhere.
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, AskError> {
    let shown = || socket.display().to_string();
    let body = request
        .encode()
        .map_err(|e| AskError::NotHandedOver(e.to_string()))?;
    let me = nix::unistd::getuid().as_raw();
    let meta = std::fs::symlink_metadata(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AskError::NotRunning(shown()),
        _ => AskError::NotHandedOver(format!("{}: {e}", shown())),
    })?;
    if !meta.file_type().is_socket() {
        return Err(AskError::NotOurs(shown(), "not a socket".to_owned()));
    }
    if meta.uid() != me {
        let owner = meta.uid();
        return Err(AskError::NotOurs(
            shown(),
            format!("owned by user id {owner}"),
        ));
    }
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AskError::NotRunning(shown()),
        _ => AskError::NotHandedOver(format!("{}: {e}", shown())),
    })?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| AskError::NotHandedOver(format!("{}: {e}", shown())))?;
    if peer.uid() != me {
        let uid = peer.uid();
        return Err(AskError::NotOurs(
            shown(),
            format!("served by user id {uid}"),
        ));
    }
    let handed = stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(&framed(&body)));
    // An agent that closed before reading its request (it was stopping) took nothing in.
    handed.map_err(|e| AskError::NotHandedOver(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| AskError::NoAnswer(e.to_string()))?;
    let reply = read_framed(&mut stream, MAX_REPLY).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            AskError::NoAnswer(format!("none within {}", crate::text::TimeSpan(timeout)))
        }
        io::ErrorKind::UnexpectedEof => {
            AskError::NoAnswer("the agent closed the connection".to_owned())
        }
        _ => AskError::NoAnswer(e.to_string()),
    })?;
    Reply::decode(&reply).map_err(|e| AskError::NoAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(server: &str, message: &[u8]) -> Request {
        Request::Send(SendRequest {
            server: server.to_owned(),
            mode: Mode::Hybrid,
            max_asymmetric: 1 << 20,
            wait_s: 90,
            message: Zeroizing::new(message.to_vec()),
        })
    }

    /// A reply's hint is found again after the failure it follows; a line feed in the failure
    /// cannot start a hint, and a hint that does not fit is left out, not cut.
    #[test]
    fn a_failure_and_its_hint_share_a_reply_text() {
        let text = with_hint("cannot connect", Some("is it running?"));
        assert_eq!(
            split_hint(&text),
            ("cannot connect", Some("is it running?"))
        );
        let text = with_hint("two\nlines", None);
        assert_eq!(split_hint(&text), ("two lines", None));
        let text = with_hint("two\nlines", Some("hint"));
        assert_eq!(split_hint(&text), ("two lines", Some("hint")));
        let long = "h".repeat(MAX_TEXT);
        let text = with_hint("failed", Some(&long));
        assert_eq!(split_hint(&text), ("failed", None));
        let fits = "h".repeat(MAX_TEXT - "failed".len() - 1);
        let text = with_hint("failed", Some(&fits));
        assert_eq!(text.len(), MAX_TEXT);
        let body = Reply::NotDelivered(text.clone()).encode();
        assert_eq!(Reply::decode(&body).unwrap(), Reply::NotDelivered(text));
    }

    /// The agent gets back at least the command's --timeout for its retries, and less than a
    /// second more, whatever the fraction of a second given.
    #[test]
    fn a_request_gives_the_agent_the_commands_timeout() {
        for ms in [0, 1, 500, 999, 1000, 2500, 30_000] {
            let timeout = Duration::from_millis(ms);
            let Request::Send(mut request) = send("127.0.0.1:1", b"m") else {
                unreachable!()
            };
            request.wait_s = SendRequest::wait_for(timeout);
            let back = request.retries();
            assert!(back >= timeout, "{ms} ms: {back:?}");
            assert!(back < timeout + Duration::from_secs(1), "{ms} ms: {back:?}");
        }
    }

    /// The words docs/PROTOCOL.md quotes, and the address a command reads back from them.
    #[test]
    fn a_decline_for_another_server_names_the_agents_address() {
        let reason = format!("{DECLINED_OTHER_SERVER}127.0.0.1:8000, not localhost:8000");
        assert_eq!(
            reason,
            "this agent sends to 127.0.0.1:8000, not localhost:8000"
        );
        assert_eq!(declined_for_other_server(&reason), Some("127.0.0.1:8000"));
        assert_eq!(declined_for_other_server("the agent is busy"), None);
    }

    #[test]
    fn requests_and_replies_decode_to_what_was_encoded() {
        for request in [
            send("127.0.0.1:8000", b"hello"),
            send("h:1", b""),
            Request::Stop,
        ] {
            let body = request.encode().unwrap();
            assert_eq!(Request::decode(&body).unwrap(), request);
        }
        for reply in [
            Reply::Delivered {
                id: MessageId([7; 16]),
                plaintext_len: 5,
                mode: Mode::Asymmetric,
            },
            Reply::NotDelivered("the server refused".to_owned()),
            Reply::NotProven {
                id: MessageId([9; 16]),
                text: "no acknowledgement".to_owned(),
            },
            Reply::Declined(String::new()),
            Reply::Stopping,
        ] {
            assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        }
        // The longest reply there is.
        let longest = Reply::NotProven {
            id: MessageId([9; 16]),
            text: "é".repeat(MAX_TEXT / 2),
        };
        assert_eq!(longest.encode().len(), MAX_REPLY);
        assert_eq!(Reply::decode(&longest.encode()).unwrap(), longest);
    }

    #[test]
    fn limits_are_refused_not_cut() {
        let long_server = "a".repeat(MAX_SERVER + 1);
        assert!(matches!(
            send(&long_server, b"x").encode(),
            Err(CodecError::TooLarge(256, MAX_SERVER))
        ));
        assert!(
            send(&"a".repeat(MAX_SERVER), &[0; MAX_MESSAGE])
                .encode()
                .is_ok()
        );
        assert!(matches!(
            send("h:1", &[0; MAX_MESSAGE + 1]).encode(),
            Err(CodecError::TooLarge(..))
        ));
        assert_eq!(send("", b"x").encode().unwrap_err(), CodecError::NoServer);
        let mut body = send("h:1", b"x").encode().unwrap().to_vec();
        body.extend(std::iter::repeat_n(0, MAX_MESSAGE));
        assert!(matches!(
            Request::decode(&body),
            Err(CodecError::TooLarge(..))
        ));
    }

    #[test]
    fn every_truncation_of_a_request_is_refused() {
        let body = send("127.0.0.1:8000", b"").encode().unwrap();
        // A send's message may be empty, so the whole body is the shortest valid one.
        for n in 0..body.len() {
            assert!(Request::decode(&body[..n]).is_err(), "{n} bytes");
        }
        let delivered = Reply::Delivered {
            id: MessageId([1; 16]),
            plaintext_len: 1,
            mode: Mode::Hybrid,
        }
        .encode();
        for n in 0..delivered.len() {
            assert!(Reply::decode(&delivered[..n]).is_err(), "{n} bytes");
        }
        let mut longer = delivered.clone();
        longer.push(0);
        assert_eq!(Reply::decode(&longer), Err(CodecError::Trailing(1)));
        // A `not proven` is refused shorter than its id, even with no text.
        let not_proven = Reply::NotProven {
            id: MessageId([1; 16]),
            text: String::new(),
        }
        .encode();
        for n in 0..not_proven.len() {
            assert!(Reply::decode(&not_proven[..n]).is_err(), "{n} bytes");
        }
    }

    /// A text over MAX_TEXT is refused, not cut: `encode` would cut it, so a reply that
    /// decoded would not re-encode to its own bytes (found by review: MAX_REPLY grew with
    /// `not proven`'s id, and the text was bounded only by it).
    #[test]
    fn a_reply_text_over_its_limit_is_refused() {
        for status in [STATUS_NOT_DELIVERED, STATUS_DECLINED] {
            let mut body = MAGIC.to_vec();
            body.push(status);
            body.extend_from_slice(&[b'a'; MAX_TEXT + 1]);
            assert_eq!(
                Reply::decode(&body),
                Err(CodecError::TooLarge(MAX_TEXT + 1, MAX_TEXT))
            );
        }
    }

    #[test]
    fn a_long_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT);
        let body = Reply::NotDelivered(text).encode();
        let Reply::NotDelivered(cut) = Reply::decode(&body).unwrap() else {
            panic!("not a NotDelivered")
        };
        assert_eq!(cut.len(), MAX_TEXT);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_frame_longer_than_its_limit_is_refused_before_reading_it() {
        let mut framed = u32::MAX.to_be_bytes().to_vec();
        framed.extend_from_slice(b"LLA1");
        let e = read_framed(&mut &framed[..], MAX_REPLY).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
