//! One incoming message, from its first `Send` to its `Ack`.
//!
//! The connection's loop reads the message's frames ([`Handler::start_receive`]); the header is
//! checked against the connection before anything is decrypted; decryption and verification run
//! on the blocking pool, batch by batch, as the bytes arrive. Once `SendEnd` is read, a task
//! ([`ReceiveJob::complete`]) waits for the verification, stores the message durably and only
//! then acknowledges it, while the loop already reads the next message (pipelining).

use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::envelope::{self, HEADER_LEN, Header, OpenError, OpenOptions, Opened, Opener};
use crate::keys::Trusted;
use crate::store::{self, Body, InboxRecord, InsertOutcome, Store};
use crate::wire::{ErrorCode, Frame};

use super::handler::{Handler, send};
use super::{Fail, Server, on_blocking_pool};

/// Bytes of a message gathered before they go to the blocking pool (see `receive`).
const FEED_BATCH: usize = 256 * 1024;

/// Short UTF-8 messages are logged in full, as the classroom server printed them; anything
/// longer or binary is logged by size and id only.
const LOG_TEXT_MAX: usize = 200;

/// Room for what sealing adds to the plaintext (wrapped key, tags, signature): generous, since
/// it only bounds how much of an oversized message is read before it is refused.
const SEALING_OVERHEAD: u64 = 64 << 20;

impl<S: Store, R: AsyncRead + Unpin + Send + 'static> Handler<S, R> {
    /// Receives one message and leaves its verification, storage and ack to a task, so the
    /// next message can arrive meanwhile (pipelining), at most `max_in_flight` at once.
    pub(super) async fn start_receive(&mut self, first: Vec<u8>) -> Result<(), Fail> {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::internal())?;
        // And one of the server-wide permits: what in-flight messages hold in memory (up to a
        // batch, or a whole asymmetric body, each) is bounded for the server as a whole, not
        // only per connection.
        let global = self
            .server
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Fail::internal())?;
        let job = self.receive(first).await?;
        self.work.spawn(async move {
            let _permits = (permit, global);
            job.complete().await
        });
        Ok(())
    }

    /// Reads one sealed message (`Send`… `SendEnd`), checking its header against this
    /// connection first, and decrypting and verifying it on the blocking pool frame by frame as
    /// it arrives. Returns once `SendEnd` is read; the job then finishes the verification.
    ///
    /// If the message fails part-way, the rest of it is still read (and discarded) up to
    /// `SendEnd`: the peer learns of the failure at the same point whatever its cause.
    async fn receive(&mut self, first: Vec<u8>) -> Result<ReceiveJob<S>, Fail> {
        // The header may span frames.
        let mut head = first;
        while head.len() < HEADER_LEN {
            match self.next_data().await? {
                Some(more) => head.extend_from_slice(&more),
                None => return Err(Fail::refused("message shorter than a header")),
            }
        }
        let header = Header::parse(&head)
            .map_err(|e| Fail::new(ErrorCode::Refused, format!("bad header: {e}")))?;
        self.check_header(&header)?;
        let config = &self.server.config;
        let opts = OpenOptions {
            max_plaintext: config.max_hybrid,
            asymmetric_limit: config.max_asymmetric,
        };
        let sender = self.client.key.clone();
        let opener = Opener::new(
            head.get(..HEADER_LEN).unwrap_or_default(),
            self.server.identity.clone(),
            &sender,
            &opts,
        )
        .map_err(|e| Fail::refused(&e.to_string()))?;
        let intake = Intake {
            opener,
            blob: self.server.store.blob_writer(),
            plain: Zeroizing::new(Vec::new()),
            // Sized once for the whole preview, so appending never reallocates and leaves a copy.
            preview: config
                .log_text
                .then(|| Zeroizing::new(Vec::with_capacity(LOG_TEXT_MAX + 1))),
            header_left: HEADER_LEN,
        };
        let mut state: Result<Intake, OpenError> = Ok(intake);
        // Bytes are handed to the blocking pool in batches: a small message goes over in one
        // piece with its verification, after `SendEnd`, so the connection reads the next message
        // while this one is decrypted (pipelining), and a large one costs one hop per batch.
        let mut pending = head;
        let cap = config.max_hybrid.saturating_add(SEALING_OVERHEAD);
        let mut seen = pending.len() as u64;
        while let Some(more) = self.next_data().await? {
            seen = seen.saturating_add(more.len() as u64);
            if seen > cap {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    "message larger than this server accepts",
                ));
            }
            if state.is_err() {
                // Failed already: read the rest of the message to its end, keep nothing.
                continue;
            }
            pending.extend_from_slice(&more);
            if pending.len() >= FEED_BATCH {
                let batch = std::mem::take(&mut pending);
                state = match state {
                    Ok(intake) => {
                        on_blocking_pool(move || {
                            let mut intake = intake;
                            intake.feed(&batch).map(|()| intake)
                        })
                        .await?
                    }
                    failed => failed,
                };
            }
        }
        let worker = tokio::task::spawn_blocking(move || {
            let mut intake = state?;
            intake.feed(&pending)?;
            intake.finish()
        });
        Ok(ReceiveJob {
            header,
            worker,
            server: self.server.clone(),
            client: self.client.clone(),
            out: self.conn.out.clone(),
        })
    }

    /// The next `Send` payload, or `None` at `SendEnd`.
    async fn next_data(&mut self) -> Result<Option<Vec<u8>>, Fail> {
        let frame = tokio::time::timeout(
            self.server.config.idle_timeout,
            self.conn.reader.read_frame(),
        )
        .await
        .map_err(|_| Fail::new(ErrorCode::Timeout, "idle timeout inside a message"))?
        .map_err(Fail::from_conn)?;
        match frame {
            Frame::Send(data) => Ok(Some(data)),
            Frame::SendEnd => Ok(None),
            other => Err(Fail::new(
                ErrorCode::Protocol,
                format!("unexpected {} frame inside a message", other.name()),
            )),
        }
    }

    /// The header must name this client as sender and us as recipient, use an accepted mode,
    /// and be recent.
    fn check_header(&self, h: &Header) -> Result<(), Fail> {
        if h.sender != self.client.key.id() {
            return Err(Fail::refused(
                "the message's sender is not the authenticated client",
            ));
        }
        if h.recipient != self.server.identity.public().id() {
            return Err(Fail::refused("the message is not sealed for this server"));
        }
        let config = &self.server.config;
        if !config.accept.allows(h.mode) {
            return Err(Fail::new(
                ErrorCode::ModeNotAccepted,
                format!("this server does not accept {} messages", h.mode),
            ));
        }
        let now = envelope::unix_now();
        let window = config.time_window.as_secs();
        if h.created.abs_diff(now) > window {
            return Err(Fail::new(
                ErrorCode::Stale,
                format!(
                    "message time {} is outside the server's window of ±{window} s around {now}",
                    h.created
                ),
            ));
        }
        Ok(())
    }
}

/// A message whose bytes have all arrived, being verified on the blocking pool, with what its
/// task needs to store and acknowledge it.
struct ReceiveJob<S> {
    header: Header,
    worker: tokio::task::JoinHandle<Result<Verified, OpenError>>,
    /// For the store.
    server: Arc<Server<S>>,
    /// The sender, for the inbox record and the logs.
    client: Trusted,
    /// Where the ack goes.
    out: mpsc::Sender<Frame>,
}

impl<S: Store> ReceiveJob<S> {
    /// Waits for verification, stores durably, then acknowledges.
    async fn complete(self) -> Result<(), Fail> {
        let ReceiveJob {
            header,
            worker,
            server,
            client,
            out,
        } = self;
        let verified = match worker.await {
            Ok(Ok(v)) => v,
            Ok(Err(OpenError::TooLarge { limit })) => {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    format!("message larger than this server's limit of {limit} bytes"),
                ));
            }
            Ok(Err(e)) => {
                // Whatever the cause, the peer sees the same words.
                warn!(client = %crate::text::quoted(&client.name), id = %header.message_id, error = %e, "message refused");
                return Err(Fail::refused("message failed verification"));
            }
            Err(_) => return Err(Fail::internal()),
        };
        let Verified {
            opened,
            body,
            preview,
        } = verified;
        let id = opened.header.message_id;
        let size = body.len();
        let record = InboxRecord {
            sender_key_id: client.key.id().0,
            sender_name: client.name.clone(),
            message_id: id.0,
            created: opened.header.created,
            received: envelope::unix_now(),
            mode: opened.header.mode.to_byte(),
            plaintext_len: opened.plaintext_len,
            content_hash: body.sha256(),
            ack_tag: opened.ack_tag,
            body,
        };
        let tag = match server
            .store
            .insert_inbox(record)
            .await
            .map_err(Fail::store)?
        {
            InsertOutcome::Inserted => {
                log_received(
                    &client,
                    &opened,
                    size,
                    preview.as_deref().map(|p| p.as_slice()),
                );
                opened.ack_tag
            }
            InsertOutcome::Duplicate { ack_tag } => {
                info!(client = %crate::text::quoted(&client.name), %id, "retry of a stored message: same ack again");
                ack_tag
            }
            InsertOutcome::Conflict => {
                warn!(client = %crate::text::quoted(&client.name), %id, "replayed message id with different content");
                return Err(Fail::new(
                    ErrorCode::Replay,
                    "this message id was already used for a different message",
                ));
            }
        };
        send(&out, Frame::Ack { id, tag }).await
    }
}

/// One log line per message. With `preview` (the server logs text), a short UTF-8 message is
/// shown as the classroom server printed it; anything else by size and id only.
fn log_received(client: &Trusted, opened: &Opened, size: u64, preview: Option<&[u8]>) {
    let text = preview
        .filter(|p| p.len() <= LOG_TEXT_MAX)
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|t| !t.chars().any(|c| c.is_control() && c != '\n'));
    // The client's words, escaped (crate::text): a message cannot forge or hide a log line.
    let shown = match text {
        Some(text) => format!(": {}", crate::text::quoted(text)),
        None => format!(
            "; stored (read it with `letterlock server read {}`)",
            opened.header.message_id
        ),
    };
    info!(
        from = %crate::text::quoted(&client.name),
        key = %client.key.id(),
        mode = %opened.header.mode,
        bytes = opened.plaintext_len,
        sealed = size,
        id = %opened.header.message_id,
        "received: confidentiality, integrity and sender authentication verified{shown}"
    );
}

/// The blocking side of receiving one message: the opener, and the store's writer that keeps
/// the sealed bytes (messages stay encrypted at rest).
struct Intake {
    opener: Opener,
    blob: store::BlobWriter,
    /// Decrypted bytes of the current frame (wiped when dropped).
    plain: Zeroizing<Vec<u8>>,
    /// The first bytes of plaintext for the log line, when the server logs text.
    preview: Option<Zeroizing<Vec<u8>>>,
    /// Header bytes still to come, which the opener does not take.
    header_left: usize,
}

impl Intake {
    /// Takes the next sealed bytes (the header included, first).
    fn feed(&mut self, data: &[u8]) -> Result<(), OpenError> {
        use std::io::Write;
        self.blob.write_all(data)?;
        // The blob keeps the header too; the opener has it already.
        let skip = self.header_left.min(data.len());
        self.header_left -= skip;
        self.opener.update(&data[skip..], &mut self.plain)?;
        keep_preview(&mut self.preview, &mut self.plain);
        Ok(())
    }

    /// Verifies the signature and makes the sealed bytes durable in the store's folder.
    fn finish(self) -> Result<Verified, OpenError> {
        let Intake {
            opener,
            blob,
            mut plain,
            mut preview,
            ..
        } = self;
        let opened = opener.finish(&mut plain)?;
        keep_preview(&mut preview, &mut plain);
        let body = blob
            .finish()
            .map_err(|e| OpenError::Io(std::io::Error::other(e)))?;
        Ok(Verified {
            opened,
            body,
            preview,
        })
    }
}

/// Keeps the first bytes of `plain` for the log line (one more than fits, to know it did not
/// fit), then clears `plain`.
fn keep_preview(preview: &mut Option<Zeroizing<Vec<u8>>>, plain: &mut Zeroizing<Vec<u8>>) {
    if let Some(preview) = preview
        && preview.len() <= LOG_TEXT_MAX
    {
        let take = (LOG_TEXT_MAX + 1 - preview.len()).min(plain.len());
        preview.extend_from_slice(&plain[..take]);
    }
    plain.clear();
}

/// What the blocking side hands back for a verified message.
struct Verified {
    opened: Opened,
    body: Body,
    /// The first bytes of plaintext, for the log line (when the server logs text).
    preview: Option<Zeroizing<Vec<u8>>>,
}
