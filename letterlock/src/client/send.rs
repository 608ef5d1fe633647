//! Sending: seal, send, and report "delivered" only once the server's ack tag matches the one
//! computed while sealing.

use std::collections::HashMap;
use std::io::{self, Read, Seek, Write};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::envelope::{self, HEADER_LEN, Header, MessageId, Mode, SealError, SealOptions, Sealed};
use crate::keys::PublicKey;
use crate::wire::{ConnError, DATA_FRAME, ErrorCode, Frame};

use super::connect::jitter;
use super::{Backoff, Client, ClientError, Retry, RetryCause, unexpected};

/// A message the server proved it received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: MessageId,
    pub header: Header,
    pub plaintext_len: u64,
}

impl Client {
    /// Seals everything `input` yields (on the blocking pool, streaming) and sends it; returns
    /// once the server's proof of delivery checked out. If the sealing fails (`input` cannot be
    /// read) after part of the message went out, this connection is ended (the server stores
    /// nothing): connect again for the next message.
    pub async fn send<R: Read + Send + 'static>(
        &mut self,
        input: R,
        opts: SealOptions,
    ) -> Result<Delivery, ClientError> {
        self.send_streaming(input, opts, None).await.0
    }

    /// Sends like [`Client::send`], and when the server answers `Unavailable` after the
    /// handshake (its mailbox database could not be reached, or this client's asymmetric-mode
    /// budget is spent: nothing was acked), or the connection breaks before the ack (the server
    /// stopped or restarted, the network failed), connects again and resends the very same
    /// sealed bytes, after the waits `backoff` gives and never past its deadline (counted from
    /// the first failure). The same bytes carry the same message id, so a server that did store the
    /// message meanwhile acks it again instead of storing it twice. `on_retry` hears of each
    /// wait before it starts, resends and busy reconnects alike.
    ///
    /// The sealed bytes are kept for this in an unnamed temporary file (ciphertext only,
    /// deleted when the send ends, whatever happens), written as they are sent: the message is
    /// still sealed and sent as it is read, in constant memory. If no temporary file can be
    /// made or written, the send goes ahead without it and is not resent.
    pub async fn send_retrying<R: Read + Send + 'static>(
        &mut self,
        input: R,
        opts: SealOptions,
        backoff: Backoff,
        mut on_retry: impl FnMut(&Retry),
    ) -> Result<Delivery, ClientError> {
        let spool = match tempfile::tempfile() {
            Ok(file) => Some(file),
            Err(e) => {
                // Said without -v (found by a trial run): the send goes ahead, unprotected.
                warn!(
                    error = %e,
                    "no temporary file for the sealed message (is TMPDIR a writable folder?): \
                     if the connection breaks, it cannot be sent again"
                );
                None
            }
        };
        let (result, kept) = self.send_streaming(input, opts, spool).await;
        let Some(kept) = kept else {
            return result;
        };
        let again = Again::Spool(&kept);
        self.resend_while_worth_it(result, &again, backoff, &mut on_retry)
            .await
    }

    /// [`Client::send_sealed`] of a message sealed ahead in memory, resent byte for byte after
    /// `Unavailable` or a broken connection as [`Client::send_retrying`] resends a streamed one.
    pub async fn send_sealed_retrying(
        &mut self,
        sealed_bytes: &[u8],
        sealed: &Sealed,
        backoff: Backoff,
        mut on_retry: impl FnMut(&Retry),
    ) -> Result<Delivery, ClientError> {
        let result = self.send_sealed(sealed_bytes, sealed).await;
        let again = Again::Memory(sealed_bytes, sealed);
        self.resend_while_worth_it(result, &again, backoff, &mut on_retry)
            .await
    }

    /// Sends a message [`Sealing`] is sealing, resent byte for byte after `Unavailable` or a
    /// broken connection as [`Client::send_sealed_retrying`] resends one sealed before.
    ///
    /// The header and the wrapped content key go out alone as soon as they are sealed and the
    /// connection is made, before the rest: while the signature is still being made, the
    /// server decrypts the content key (an RSA private operation) meanwhile instead of
    /// after it. A one-shot send waits for both, so this takes one off its path.
    ///
    /// If the sealing fails after the head went out, this connection is ended (the server
    /// stores nothing): connect again for the next message.
    pub async fn send_sealing(
        &mut self,
        sealing: Sealing,
        backoff: Backoff,
        mut on_retry: impl FnMut(&Retry),
    ) -> Result<Delivery, ClientError> {
        let Sealing { head, sealing } = sealing;
        let mut written = 0;
        let mut write_failed = None;
        // No head (asymmetric mode, or the sealing failed first): it all goes at once. A head
        // goes alone even when the whole message is sealed already: one write instead of two
        // measured slower (docs/PERFORMANCE-HISTORY.md, "Previous full run (commit ecb5980)",
        // "What else was measured, and not kept").
        if let Ok(head) = head.await {
            let len = head.len();
            match self.writer.write_frame(&Frame::Send(head)).await {
                Ok(()) => {
                    debug!(bytes = len, "sent the header and the wrapped key");
                    written = len;
                }
                Err(e) => write_failed = Some(e),
            }
        }
        let done = match sealing.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(e.into()),
            Err(source) => {
                let task = "sealing";
                Err(ClientError::Task { task, source })
            }
        };
        let (bytes, sealed) = match done {
            Ok(done) => done,
            Err(e) => {
                if written > 0 {
                    self.abandon_message().await;
                }
                return Err(e);
            }
        };
        debug!(bytes = bytes.len(), "sealed; sending the rest");
        let result = match write_failed {
            Some(e) => Err(self.reason_for(e).await),
            None => {
                // The head is the sealed bytes' beginning (`AheadWriter`).
                self.queue_sealed(bytes.get(written..).unwrap_or_default());
                match self.writer.flush().await {
                    Ok(()) => self.await_ack(&sealed).await,
                    Err(e) => Err(self.reason_for(e).await),
                }
            }
        };
        let again = Again::Memory(&bytes, &sealed);
        self.resend_while_worth_it(result, &again, backoff, &mut on_retry)
            .await
    }

    /// While `result` is worth sending again ([`resend_cause`]: the server's `Unavailable`,
    /// or a connection that broke before the answer), waits as `backoff` says, connects again
    /// and sends `again` once more, until another answer or the deadline. The deadline counts
    /// from now, the first failure, not from the start of the send: a long upload that breaks
    /// late is given the same time to go through again as a short one (found by a trial run:
    /// a stream that broke after the deadline was never resent).
    ///
    /// What it gives up with says "may or may not have been stored" (a [`ClientError::NoAck`])
    /// whenever any attempt may have stored the message, whatever the last one ended with: a
    /// later attempt cut short, or refused, says nothing of an earlier one whose answer was
    /// lost.
    pub(super) async fn resend_while_worth_it<A: SendAgain>(
        &mut self,
        mut result: Result<A::Answer, ClientError>,
        again: &A,
        backoff: Backoff,
        on_retry: &mut impl FnMut(&Retry),
    ) -> Result<A::Answer, ClientError> {
        let start = tokio::time::Instant::now();
        let id = again.id();
        let mut fate = Fate::of(id, &result);
        let mut failed: u32 = 0;
        while let Some(cause) = resend_cause(&result, id) {
            match self
                .reconnect_to_resend(&mut failed, cause, start, backoff, on_retry)
                .await
            {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return fate.give_up(Err(e)),
            }
            result = again.send_on(self).await;
            fate.saw(&result);
        }
        fate.give_up(result)
    }

    /// After a send failed for `cause` (`failed` failures so far, counted up here): waits as
    /// `backoff` says (counted from `start`) and connects again, replacing this connection.
    /// `Ok(false)`: the deadline came first, or the server turned every reconnection away as
    /// busy (the refusal then says more than "busy"): give up with the send's own failure.
    ///
    /// After a broken connection, a server that is restarting refuses connections for a
    /// moment (TCP "connection refused"): that is waited out too, within the deadline. If the
    /// deadline comes while it still refuses, that refusal is returned: "cannot connect", with
    /// its address, says more than the break that led to it (found by a trial run: a send
    /// through the agent to a server that had stopped ended, after half a minute, with "Broken
    /// pipe"). Any other failure to reconnect is returned at once.
    async fn reconnect_to_resend(
        &mut self,
        failed: &mut u32,
        cause: RetryCause,
        start: tokio::time::Instant,
        backoff: Backoff,
        on_retry: &mut impl FnMut(&Retry),
    ) -> Result<bool, ClientError> {
        let mut refused = None;
        loop {
            *failed = failed.saturating_add(1);
            let wait = match backoff.wait(*failed, start.elapsed(), jitter()) {
                None => return refused.map_or(Ok(false), Err),
                // A connection that broke says nothing of a loaded server (a kept one the
                // server closed when idle, say): the first new one is made at once.
                Some(_) if *failed == 1 && matches!(cause, RetryCause::ConnectionLost { .. }) => {
                    std::time::Duration::ZERO
                }
                Some(wait) => wait,
            };
            on_retry(&Retry {
                attempt: failed.saturating_add(1),
                wait,
                cause,
            });
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            // The connection ended with the failure: a new one, busy answers retried within
            // what is left of the deadline.
            let reconnect = Backoff {
                deadline: backoff.deadline.saturating_sub(start.elapsed()),
                ..backoff
            };
            let connected = self.connect_again(reconnect, &mut *on_retry).await;
            return match (connected, cause) {
                (Ok(client), _) => {
                    *self = client;
                    Ok(true)
                }
                // Turned away until the deadline (a server without its database cannot check
                // our key either): the refusal says more than "busy". A last attempt that ran
                // out of time says less than the failure that led to it (found by a review).
                (Err(ClientError::Busy { .. } | ClientError::Timeout { .. }), _) => Ok(false),
                (Err(e @ ClientError::Connect { .. }), RetryCause::ConnectionLost { .. })
                    if e.is_refused_connection() =>
                {
                    debug!(error = %e, "not listening yet; trying again");
                    refused = Some(e);
                    continue;
                }
                (Err(e), _) => Err(e),
            };
        }
    }

    /// Seals `input` and sends it as it is sealed, writing the sealed bytes to `spool` too if
    /// given. Returns how the send ended, and the message kept whole in the spool when the
    /// sealing finished and every byte reached the spool (even if the send failed early: the
    /// sealing then goes on into the spool alone).
    async fn send_streaming<R: Read + Send + 'static>(
        &mut self,
        input: R,
        opts: SealOptions,
        spool: Option<std::fs::File>,
    ) -> (Result<Delivery, ClientError>, Option<Kept>) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let identity = self.identity.clone();
        let server = self.server.clone();
        let sealing = tokio::task::spawn_blocking(move || {
            let mut sink = FrameSink {
                tx: Some(tx),
                buf: Vec::with_capacity(DATA_FRAME),
                spool,
            };
            let sealed = envelope::seal(identity.as_ref(), &server, &opts, input, &mut sink)?;
            sink.flush()?;
            Ok::<_, SealError>((sealed, sink.spool))
        });
        let (sent_some, write_failed) = self.send_frames(rx).await;
        let sealed = match sealing.await {
            Ok(sealed) => sealed,
            Err(source) => {
                if sent_some && write_failed.is_none() {
                    self.abandon_message().await;
                }
                let task = "sealing";
                return (Err(ClientError::Task { task, source }), None);
            }
        };
        let (sealed, spool) = match sealed {
            Ok(done) => done,
            Err(e) => {
                let e = match write_failed {
                    // The server may have said why before closing.
                    Some(w) => self.reason_for(w).await,
                    None => {
                        if sent_some {
                            self.abandon_message().await;
                        }
                        e.into()
                    }
                };
                return (Err(e), None);
            }
        };
        let kept = spool.map(|spool| Kept {
            sealed: sealed.clone(),
            spool,
        });
        if let Some(e) = write_failed {
            return (Err(self.reason_for(e).await), kept);
        }
        if let Err(e) = self.writer.write_frame(&Frame::SendEnd).await {
            return (Err(self.reason_for(e).await), kept);
        }
        (self.await_ack(&sealed).await, kept)
    }

    /// Sends a kept message again from its spool, byte for byte, and waits for its proven ack.
    async fn resend(&mut self, kept: &Kept) -> Result<Delivery, ClientError> {
        self.send_spooled(kept).await?;
        self.await_ack(&kept.sealed).await
    }

    /// Writes a kept message from its spool as `Send` frames, then `SendEnd`.
    pub(super) async fn send_spooled(&mut self, kept: &Kept) -> Result<(), ClientError> {
        let mut file = kept.spool.try_clone()?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let reading = tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.seek(io::SeekFrom::Start(0))?;
            loop {
                let mut data = vec![0u8; DATA_FRAME];
                let n = envelope::read_full(&mut file, &mut data)?;
                if n == 0 {
                    return Ok(());
                }
                data.truncate(n);
                if tx.blocking_send(data).is_err() {
                    return Ok(());
                }
            }
        });
        let (_, write_failed) = self.send_frames(rx).await;
        reading.await.map_err(|source| ClientError::Task {
            task: "reading the sealed message",
            source,
        })??;
        if let Some(e) = write_failed {
            return Err(self.reason_for(e).await);
        }
        if let Err(e) = self.writer.write_frame(&Frame::SendEnd).await {
            return Err(self.reason_for(e).await);
        }
        Ok(())
    }

    /// Writes every piece `rx` yields as a `Send` frame, until it ends or a write fails: whether
    /// any frame went out, and the failure, if any. `rx` is dropped on return, so its producer
    /// stops at its next send.
    async fn send_frames(&mut self, mut rx: mpsc::Receiver<Vec<u8>>) -> (bool, Option<ConnError>) {
        let mut sent_some = false;
        while let Some(data) = rx.recv().await {
            if let Err(e) = self.writer.write_frame(&Frame::Send(data)).await {
                return (sent_some, Some(e));
            }
            sent_some = true;
        }
        (sent_some, None)
    }

    /// Ends this connection's writing direction after part of a message went out and its rest
    /// never will: nothing sent on it later can be read as that rest (and refused as a message
    /// that failed verification), and the server, seeing the close mid-message, stores nothing.
    /// The next send on this client fails with the write error: connect again.
    async fn abandon_message(&mut self) {
        let _ = self.writer.shutdown().await;
    }

    /// After a failed write, the server's Error frame (if any) says more than "broken pipe".
    pub(super) async fn reason_for(&mut self, e: ConnError) -> ClientError {
        let e = ClientError::from(e);
        // A server that took nothing for the whole timeout is not waited for again.
        if matches!(e, ClientError::Timeout { .. }) {
            return e;
        }
        match self.read().await {
            Err(refused @ ClientError::Refused { .. }) => refused,
            _ => e,
        }
    }

    /// Sends one pre-sealed message and waits for its proven ack.
    pub async fn send_sealed(
        &mut self,
        sealed_bytes: &[u8],
        sealed: &Sealed,
    ) -> Result<Delivery, ClientError> {
        self.queue_sealed(sealed_bytes);
        self.writer.flush().await?;
        self.await_ack(sealed).await
    }

    /// Sends many pre-sealed messages back to back, then collects their acks (in any order):
    /// the server works on them while the rest arrive.
    pub async fn send_sealed_many(
        &mut self,
        messages: &[(Vec<u8>, Sealed)],
    ) -> Result<Vec<Delivery>, ClientError> {
        let mut expected: HashMap<MessageId, &Sealed> = HashMap::new();
        for (bytes, sealed) in messages {
            self.queue_sealed(bytes);
            expected.insert(sealed.header.message_id, sealed);
        }
        self.writer.flush().await?;
        let mut out = Vec::with_capacity(messages.len());
        while !expected.is_empty() {
            let (id, tag) = match self.read().await? {
                Frame::Ack { id, tag } => (id, tag),
                other => return Err(unexpected(other)),
            };
            let sealed = expected.remove(&id).ok_or_else(|| ClientError::NotProven {
                id: None,
                why: format!("ack for unknown message {id}"),
            })?;
            out.push(check_ack(sealed, &id, &tag)?);
        }
        Ok(out)
    }

    fn queue_sealed(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(DATA_FRAME) {
            self.writer.queue_frame(&Frame::Send(chunk.to_vec()));
        }
        self.writer.queue_frame(&Frame::SendEnd);
    }

    async fn await_ack(&mut self, sealed: &Sealed) -> Result<Delivery, ClientError> {
        match self.read().await {
            Ok(Frame::Ack { id, tag }) => check_ack(sealed, &id, &tag),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Refused { code, message }) => {
                Err(ClientError::Refused { code, message })
            }
            Err(e) => Err(ClientError::NoAck {
                id: sealed.header.message_id,
                why: Box::new(e),
            }),
        }
    }
}

fn check_ack(sealed: &Sealed, id: &MessageId, tag: &[u8; 32]) -> Result<Delivery, ClientError> {
    let ours = sealed.header.message_id;
    if *id != ours {
        return Err(ClientError::NotProven {
            id: Some(ours),
            why: format!(
                "the server acknowledged message {id}, not {ours}; {ours} may or may not have \
                 been stored"
            ),
        });
    }
    if !envelope::ack_tags_match(tag, &sealed.ack_tag) {
        return Err(ClientError::NotProven {
            id: Some(ours),
            why: format!(
                "the server's acknowledgement does not prove it decrypted message {id} (wrong \
                 ack tag: a forged or altered ack); it may or may not have been stored"
            ),
        });
    }
    Ok(Delivery {
        id: *id,
        header: sealed.header,
        plaintext_len: sealed.plaintext_len,
    })
}

/// A sent message kept to be sent again, byte for byte.
enum Again<'a> {
    /// Sealed as it was sent, and spooled.
    Spool(&'a Kept),
    /// Sealed ahead, in memory.
    Memory(&'a [u8], &'a Sealed),
}

/// A message that can be sent again, byte for byte, on a new connection
/// ([`Client::resend_while_worth_it`]): a message to the server ([`Again`]) or a relay.
pub(super) trait SendAgain {
    /// What the server's answer proves.
    type Answer;
    /// The message's id, the same in every copy.
    fn id(&self) -> MessageId;
    /// Sends it once on `client` and waits for the answer.
    async fn send_on(&self, client: &mut Client) -> Result<Self::Answer, ClientError>;
}

impl SendAgain for Again<'_> {
    type Answer = Delivery;

    fn id(&self) -> MessageId {
        match self {
            Again::Spool(kept) => kept.sealed.header.message_id,
            Again::Memory(_, sealed) => sealed.header.message_id,
        }
    }

    async fn send_on(&self, client: &mut Client) -> Result<Delivery, ClientError> {
        match self {
            Again::Spool(kept) => client.resend(kept).await,
            Again::Memory(bytes, sealed) => client.send_sealed(bytes, sealed).await,
        }
    }
}

/// What the attempts at sending one message tell of its fate: whether any of them may have
/// stored it (all of it went out, and the answer never came).
struct Fate {
    id: MessageId,
    maybe_stored: bool,
}

impl Fate {
    fn of<T>(id: MessageId, first: &Result<T, ClientError>) -> Fate {
        let mut fate = Fate {
            id,
            maybe_stored: false,
        };
        fate.saw(first);
        fate
    }

    fn saw<T>(&mut self, result: &Result<T, ClientError>) {
        self.maybe_stored |= matches!(result, Err(ClientError::NoAck { .. }));
    }

    /// `last`, said as a missing answer if an earlier attempt may have stored the message:
    /// "NOT delivered" would be wrong, and sending it again as a new message a duplicate.
    fn give_up<T>(&self, last: Result<T, ClientError>) -> Result<T, ClientError> {
        match last {
            Err(e)
                if self.maybe_stored
                    && !matches!(e, ClientError::NoAck { .. } | ClientError::NotProven { .. }) =>
            {
                Err(ClientError::NoAck {
                    id: self.id,
                    why: Box::new(e),
                })
            }
            last => last,
        }
    }
}

/// A message being sealed into memory on the blocking pool, for [`Client::send_sealing`]: its
/// header and wrapped content key are handed over as soon as they exist, before the signature.
///
/// Start it before connecting: the signature, the costly part, is then made while the
/// connection is (the TLS handshake leaves the cores idle much of the time, waiting on the
/// network), and what of it is left when the connection is ready overlaps the server's
/// decryption of the content key. Holding the signature back until the connection was made,
/// so that it would overlap that decryption only, was measured slower: 0.7 ms per one-shot
/// `send_msg` with a kept handshake key, 1.8 ms without (docs/PERFORMANCE-HISTORY.md,
/// "`send_msg` signs at once"). An asymmetric message, with nothing to send before its
/// signature, hands over no head.
pub struct Sealing {
    head: oneshot::Receiver<Vec<u8>>,
    sealing: tokio::task::JoinHandle<Result<(Vec<u8>, Sealed), SealError>>,
}

impl Sealing {
    /// Runs `seal` on the blocking pool. `seal` writes the whole sealed message for
    /// `recipient`, from its first byte, into the [`AheadWriter`] it is given, as
    /// [`envelope::seal`] and [`envelope::seal_slice`] do; `mode` is the mode it seals in.
    /// Must be called within a Tokio runtime.
    pub fn start<F>(recipient: &PublicKey, mode: Mode, seal: F) -> Sealing
    where
        F: FnOnce(&mut AheadWriter) -> Result<Sealed, SealError> + Send + 'static,
    {
        let (head_tx, head) = oneshot::channel();
        // In hybrid mode the server can decrypt the content key from these bytes alone; an
        // asymmetric message's header alone gives it nothing to do.
        let head_len = (mode == Mode::Hybrid).then(|| HEADER_LEN + recipient.modulus_len());
        let sealing = tokio::task::spawn_blocking(move || {
            let mut writer = AheadWriter {
                bytes: Vec::new(),
                head: head_len.map(|len| (len, head_tx)),
            };
            let sealed = seal(&mut writer)?;
            Ok((writer.bytes, sealed))
        });
        Sealing { head, sealing }
    }
}

/// Where [`Sealing`] seals to: memory, and a copy of the first bytes (the header and the
/// wrapped key) sent on as soon as they are written.
pub struct AheadWriter {
    bytes: Vec<u8>,
    /// The head's length and where it goes; `None` once sent (or never).
    head: Option<(usize, oneshot::Sender<Vec<u8>>)>,
}

impl Write for AheadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(data);
        if let Some((len, ..)) = &self.head
            && let Some(head) = self.bytes.get(..*len)
            && let Some((_, tx)) = self.head.take()
        {
            // A send that gave up already no longer listens: nothing to do.
            let _ = tx.send(head.to_vec());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sealed message kept whole for a resend ([`Client::send_retrying`]), or sealed whole
/// before a relayed send (its commitment goes first).
pub(super) struct Kept {
    /// What the sealer reported: the id and the ack tag the resend's ack must prove.
    pub(super) sealed: Sealed,
    /// Every sealed byte, as first sent; an unnamed temporary file, gone when dropped.
    pub(super) spool: std::fs::File,
}

/// Why a send of message `id` that ended with `result` is worth making again, byte for byte,
/// on a new connection, if it is:
/// - the server answered `Unavailable` (nothing was acked);
/// - the connection broke before the answer ([`ClientError::is_connection_lost`]): the server
///   may have stored the message, and then acks the same id again instead of storing it twice;
/// - the server answered `Error` code timeout: it closed the connection for silence (a kept
///   connection idle too long, or a message whose input came too slowly), and stores nothing
///   of a message it did not receive whole.
///
/// Not another answer or refusal, a wrong ack, or our own timeout (its time is spent).
fn resend_cause<T>(result: &Result<T, ClientError>, id: MessageId) -> Option<RetryCause> {
    match result {
        Err(ClientError::Refused {
            code: ErrorCode::Unavailable,
            ..
        }) => Some(RetryCause::Unavailable { id }),
        Err(ClientError::Refused {
            code: ErrorCode::Timeout,
            ..
        }) => Some(RetryCause::ConnectionLost { id }),
        Err(e) if e.is_connection_lost() => Some(RetryCause::ConnectionLost { id }),
        _ => None,
    }
}

/// A `Write` that cuts sealed output into `Send` frames for the async side, and writes it to
/// a spool too when there is one.
struct FrameSink {
    /// To the async side; `None` once it stopped listening (the send failed) while the
    /// sealing goes on into the spool.
    tx: Option<mpsc::Sender<Vec<u8>>>,
    buf: Vec<u8>,
    /// Every byte sealed, for a resend; dropped (no resend) if a write to it fails.
    spool: Option<std::fs::File>,
}

impl Write for FrameSink {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (DATA_FRAME - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == DATA_FRAME {
                self.flush()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(DATA_FRAME));
        if let Some(spool) = &mut self.spool
            && let Err(e) = spool.write_all(&full)
        {
            debug!(error = %e, "could not keep the sealed message for a resend");
            self.spool = None;
        }
        if let Some(tx) = &self.tx
            && tx.blocking_send(full).is_err()
        {
            self.tx = None;
        }
        // Nobody to send to and nothing to keep: stop sealing.
        if self.tx.is_none() && self.spool.is_none() {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink over a fresh channel (room for `room` frames) and, if `spool`, a temporary file.
    fn new_sink(room: usize, spool: bool) -> (FrameSink, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(room);
        let sink = FrameSink {
            tx: Some(tx),
            buf: Vec::new(),
            spool: spool.then(|| tempfile::tempfile().unwrap()),
        };
        (sink, rx)
    }

    fn spooled(sink: FrameSink) -> Vec<u8> {
        let mut file = sink.spool.expect("the spool was kept");
        file.seek(io::SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        file.read_to_end(&mut all).unwrap();
        all
    }

    /// What is sent is what is spooled: the same bytes, cut into frames of `DATA_FRAME`.
    #[test]
    fn the_spool_holds_exactly_the_bytes_sent() {
        let data: Vec<u8> = (0..DATA_FRAME * 2 + 5).map(|i| i as u8).collect();
        let (mut sink, mut rx) = new_sink(4, true);
        sink.write_all(&data).unwrap();
        sink.flush().unwrap();
        let mut sent = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            assert!(frame.len() <= DATA_FRAME);
            sent.extend(frame);
        }
        assert_eq!(sent, data);
        assert_eq!(spooled(sink), data);
    }

    /// The send failed (nobody listens any more): with a spool the sealing goes on into it, so
    /// the message can be resent whole; without one it stops.
    #[test]
    fn a_failed_send_keeps_sealing_only_into_a_spool() {
        let data = vec![0x5a; DATA_FRAME * 3];
        let (mut sink, rx) = new_sink(1, true);
        drop(rx);
        sink.write_all(&data).unwrap();
        sink.flush().unwrap();
        assert!(sink.tx.is_none());
        assert_eq!(spooled(sink), data);

        let (mut sink, rx) = new_sink(1, false);
        drop(rx);
        let e = sink.write_all(&data).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    /// A sealing started with the 2048-bit test keys, 100 bytes of `mode`.
    fn hundred_bytes(mode: Mode) -> Sealing {
        use crate::keys::Identity;
        let key = crate::keys::PrivateKey::from_pem;
        let alice = key(include_str!("../../../tests/keys/alice2048_private.pem")).unwrap();
        let bob = key(include_str!("../../../tests/keys/bob2048_private.pem")).unwrap();
        let to = bob.public().clone();
        Sealing::start(&to.clone(), mode, move |out| {
            envelope::seal_slice(&alice, &to, &SealOptions::mode(mode), &[1; 100], out)
        })
    }

    /// In hybrid mode the head is handed over, and the whole message is sealed with nobody
    /// sending it yet; the head is the sealed message's beginning.
    #[tokio::test]
    async fn a_hybrid_sealing_hands_over_its_head_and_signs_without_waiting_for_the_send() {
        let Sealing { head, sealing } = hundred_bytes(Mode::Hybrid);
        let wait = std::time::Duration::from_secs(10);
        let sealed = tokio::time::timeout(wait, sealing).await;
        let (bytes, sealed) = sealed.expect("the sealing waited").unwrap().unwrap();
        let head = head.await.expect("the head came");
        assert_eq!(head.len(), HEADER_LEN + 256);
        assert_eq!(bytes.get(..head.len()), Some(&head[..]));
        assert_eq!(sealed.header.mode, Mode::Hybrid);
    }

    /// Asymmetric mode hands over no head (nothing to send before its signature).
    #[tokio::test]
    async fn an_asymmetric_sealing_hands_over_no_head() {
        let Sealing { head, sealing } = hundred_bytes(Mode::Asymmetric);
        assert!(sealing.await.unwrap().is_ok());
        assert!(head.await.is_err(), "an asymmetric head was handed over");
    }
}
