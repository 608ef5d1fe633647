//! The client's one error type: what failed, for a caller to match.

use std::io;
use std::time::Duration;

use crate::envelope::{MessageId, OpenError, SealError};
use crate::keys::KeyId;
use crate::received::RecordError;
use crate::text::TimeSpan;
use crate::tls::TlsError;
use crate::wire::handshake::HandshakeError;
use crate::wire::{ConnError, ErrorCode, WireError};

use super::deadline::Stalled;

/// What can go wrong for a client; each says what was or was not proven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error(
        "the server presented key {got}, but the trusted server key is {expected}; refusing to \
         talk to it"
    )]
    WrongServer { got: KeyId, expected: KeyId },
    /// `message` is the server's own text, shown escaped and quoted as its words: a fake
    /// server must not be able to print "delivered" on our terminal.
    #[error("the server refused (code {code}); the server says: {}", crate::text::quoted(.message))]
    Refused { code: ErrorCode, message: String },
    /// An answer that does not prove delivery: an acknowledgement of another message, or with
    /// a wrong ack tag. `id`: our message, which may or may not have been stored, when the
    /// answer concerned one.
    #[error("delivery NOT proven: {why}")]
    NotProven {
        id: Option<crate::envelope::MessageId>,
        why: String,
    },
    /// A message went out and the connection ended, or timed out, before its acknowledgement:
    /// the server may or may not have stored it. Sending the very same bytes again is safe (a
    /// stored message id is acked again, never stored twice); a wrong acknowledgement is
    /// [`ClientError::NotProven`] instead.
    #[error(
        "delivery NOT proven: no acknowledgement from the server for message {id} ({why}); \
         it may or may not have been stored"
    )]
    NoAck {
        id: crate::envelope::MessageId,
        why: Box<ClientError>,
    },
    /// The server closed the connection where a frame was due.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent bytes that are not a valid frame.
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// The server sent a valid frame where the protocol has no place for it.
    #[error("unexpected {frame} frame from the server")]
    Unexpected { frame: &'static str },
    /// The TLS 1.3 handshake of protocol version 2 failed (other than a wrong server key, which
    /// is [`ClientError::WrongServer`], or our key refused, which is [`ClientError::Refused`]).
    #[error(transparent)]
    Tls(TlsError),
    /// Whatever answered at the address did not open with a letterlock `Hello`.
    #[error("the peer does not speak the letterlock protocol (is this the right address?): {0}")]
    NotLetterlock(#[source] Box<ClientError>),
    /// The handshake failed for another reason than the server's key (see
    /// [`ClientError::WrongServer`]), e.g. another protocol version.
    #[error("handshake failed: {0}")]
    Handshake(#[source] HandshakeError),
    /// The server answered a `DeliveryAck` of this fetch with `Error` code BadAck: it no
    /// longer holds a message this client has just opened (and kept, with a mailbox). With
    /// one process per keys folder at a time (`recv_msg` locks it), what is left is another
    /// fetch with the same client key, from another machine or another copy of the keys,
    /// that acknowledged it first (a server that leases deliveries, PostgreSQL, keeps them
    /// apart; SQLite delivers every waiting message to each fetch). The acknowledgements
    /// before it were confirmed; nothing after it was sent.
    #[error(
        "the server no longer holds a message this fetch received (code {}; the server \
         says: {}): another fetch with the same client key, from another machine or another \
         copy of its keys folder, most likely received and acknowledged it at the same time",
        ErrorCode::BadAck,
        crate::text::quoted(.message)
    )]
    AckedElsewhere { message: String },
    /// The server announced another number of messages than it delivered.
    #[error("server announced {announced} messages, sent {sent}")]
    CountMismatch { announced: u32, sent: usize },
    /// Work the client runs on the blocking pool (sealing, signing, opening) panicked or was
    /// cancelled.
    #[error("the {task} task failed: {source}")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The server at `addr` did not answer within `after`: not the TCP connection, not the
    /// TLS handshake, not a frame that was due. One error wherever it stalled, since a silent
    /// server looks the same from here at every step, and the step that noticed first is a
    /// matter of which timer fired first.
    #[error("the server at {addr} did not answer within {}", TimeSpan(*.after))]
    Timeout { addr: String, after: Duration },
    /// The server is full and turned the connection away before any handshake: under version 2
    /// it closed (or reset) the TCP connection before sending a single TLS byte, under version
    /// 1 it sent an `Unavailable` error instead of its `Hello`. Unlike every other failure,
    /// worth trying again a little later ([`Client::connect_retrying`](super::Client::connect_retrying) does).
    #[error("the server is busy (turned away {attempts} time(s)); try again shortly")]
    Busy { attempts: u32 },
    /// A version 2 (TLS) client reached a server on the plain version 1 wire: the first bytes
    /// that came back are a letterlock frame, not a TLS record.
    #[error("the server speaks the plain version 1 wire, not TLS 1.3 (protocol version 2)")]
    PlainV1Server,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("a message from the server was refused: {0}")]
    Open(#[from] OpenError),
    /// A message another client signed (relayed by the server) did not open or verify: the
    /// sending client's key id, and its contact name when it is a contact.
    #[error(
        "a message from another client ({}) was refused: {source}",
        peer(.name.as_deref(), .key)
    )]
    PeerOpen {
        /// Boxed: a key id and a name would make every `ClientError` large.
        key: Box<KeyId>,
        name: Option<String>,
        #[source]
        source: OpenError,
    },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The record of received messages could not be read or written: nothing is acknowledged
    /// without it.
    #[error("record of received messages: {0}")]
    Record(#[from] RecordError),
    /// A server message signed at a time outside the client's window ([`crate::received`]).
    #[error("stale message from the server: {0}")]
    Stale(String),
    /// The client's mailbox could not keep a message: nothing is acknowledged without it, so
    /// the message stays on the server.
    #[cfg(feature = "server")]
    #[error("the client's mailbox could not keep the message (not acknowledged): {0}")]
    Mailbox(#[source] crate::store::StoreError),
    /// The client's mailbox holds another message under this id from this server: the server
    /// signed two messages with one id. Set aside, not acknowledged, as the server refuses a
    /// client that reuses an id.
    #[error(
        "the client's mailbox already holds a different message {id} from this server; this one \
         is set aside"
    )]
    MailboxConflict { id: MessageId },
    /// The server's directory answer was refused whole (a bad signature, mixed serials, too
    /// many entries): nothing in it is used.
    #[error("{0}")]
    BadDirectory(String),
    /// A client-to-client request on the plain version 1 wire, which has none.
    #[error("{0} needs protocol version 2 (TLS 1.3); drop --plain-v1")]
    NeedsTls(&'static str),
    /// A message from another client whose key this client cannot use (only offered as a
    /// change, or in conflict with a pin): set aside, not acknowledged.
    #[error("{0}")]
    UnknownSender(String),
    /// A message signed by a key that is neither the server key this client trusts nor a
    /// contact's (pinned, or from the directory): set aside, not acknowledged. A delivery does
    /// not say who signed it beyond the header's key id, so the client cannot tell a server key
    /// that was replaced (the server's messages queued before the change) from a client key it
    /// never knew or one that changed since: what to do about it is the caller's to say.
    #[error(
        "from an unknown key {key}, neither the server key this client trusts ({server}) nor a \
         contact's{}",
        .directory.as_deref().map(|e| format!(" (the directory could not be used: {e})")).unwrap_or_default()
    )]
    UnknownKey {
        /// The key id the message's header names as its signer.
        key: KeyId,
        /// The server key this client trusts (server_public.pem), which did not sign it.
        server: KeyId,
        /// Why the server's directory could not be asked about the key, if it could not.
        directory: Option<String>,
    },
    /// The client's contacts or its record of relayed messages could not be read or written.
    #[cfg(feature = "sqlite")]
    #[error(transparent)]
    Contacts(#[from] super::contacts::ContactsError),
}

impl ClientError {
    /// The id of a message that may or may not have been stored: all of it went out and no
    /// answer came ([`ClientError::NoAck`]), or the answer did not prove it
    /// ([`ClientError::NotProven`]). A caller says so with the id, so that nobody sends
    /// it again as a new message.
    pub fn unproven_id(&self) -> Option<crate::envelope::MessageId> {
        match self {
            ClientError::NoAck { id, .. } | ClientError::NotProven { id: Some(id), .. } => {
                Some(*id)
            }
            _ => None,
        }
    }

    /// Whether the connection itself broke under the exchange, as opposed to an answer, a
    /// refusal or a silence: the peer closed it or reset it, or it ended part-way (a server that
    /// stopped or restarted, a network that failed). Also a missing acknowledgement for that
    /// reason. A timeout is not: its time is spent.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ClientError::Closed => true,
            ClientError::Io(e) => crate::wire::is_broken_connection(e.kind()),
            ClientError::NoAck { why, .. } => why.is_connection_lost(),
            _ => false,
        }
    }

    /// Whether nothing listened at the server's address: TCP "connection refused", from a
    /// server that is not running (or is restarting), or a wrong port.
    pub fn is_refused_connection(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
    }
}

impl From<ConnError> for ClientError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Closed => ClientError::Closed,
            ConnError::Wire(w) => ClientError::Wire(w),
            // A write the server took nothing of for the whole timeout: said as a silent
            // server is said at every other step.
            ConnError::Io(e) => match e.get_ref().and_then(|s| s.downcast_ref::<Stalled>()) {
                Some(Stalled { addr, after }) => ClientError::Timeout {
                    addr: addr.clone(),
                    after: *after,
                },
                None => ClientError::Io(e),
            },
        }
    }
}

impl From<HandshakeError> for ClientError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::WrongServer { got, expected } => {
                ClientError::WrongServer { got, expected }
            }
            HandshakeError::Key(e) => ClientError::Seal(SealError::Key(e)),
            other => ClientError::Handshake(other),
        }
    }
}

impl From<TlsError> for ClientError {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::WrongServer { got, expected } => ClientError::WrongServer { got, expected },
            e if e.is_access_denied() => ClientError::Refused {
                code: ErrorCode::AuthFailed,
                // What the server said, and all it said: its TLS alert.
                message: "TLS alert access_denied".into(),
            },
            e => ClientError::Tls(e),
        }
    }
}

/// How [`ClientError::PeerOpen`] names the sending client.
fn peer(name: Option<&str>, key: &KeyId) -> String {
    match name {
        Some(name) => format!("{name}, key {key}"),
        None => format!("key {key}, not a contact"),
    }
}
