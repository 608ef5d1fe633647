//! One incoming message, from its first `Send` to its `Ack`.
//!
//! The connection's loop reads the message's frames ([`Handler::start_receive`]); the header is
//! checked against the connection before anything is decrypted; decryption and verification run
//! on the blocking pool, batch by batch, as the bytes arrive. Once `SendEnd` is read, a task
//! ([`ReceiveJob::complete`]) waits for the verification, stores the message durably and only
//! then acknowledges it, while the loop already reads the next message (pipelining).
//!
//! Repeats are cheap: as soon as the header is parsed, (sender, message id) is looked up in the
//! store; for a known id the rest of the bytes are only hashed and compared with the stored
//! content hash. A repeat of the stored message (an honest client that lost its ack) gets the
//! stored ack again; a different message under a known id is refused (`Replay`). Neither is
//! decrypted, verified or written.
//!
//! Each received byte is hashed once. The content hash the inbox keeps is the message's
//! [`SealedIdentity`] (header, wrapped key and chunk tags, not every byte), so a new message
//! costs one SHA-256 pass, the opener's over the plaintext for the signature, and not a second
//! one over the sealed bytes; `SealedIdentity` says why that still tells a repeat from a
//! different message. Asymmetric-mode decryption, one RSA private operation per block, is
//! budgeted per client ([`AsymmetricBudget`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::envelope::{self, HEADER_LEN, Header, Mode, OpenError, OpenOptions, Opened, Opener};
use crate::keys::Trusted;
use crate::store::{
    self, Body, InboxRecord, InsertOutcome, KnownMessage, SealedIdentity, Store, WriteComing,
};
use crate::wire::{ErrorCode, Frame};

use super::handler::{Handler, send};
use super::{Fail, Server, joined, on_blocking_pool};

/// Bytes of a message gathered before they go to the blocking pool (see `receive`).
pub(super) const FEED_BATCH: usize = 256 * 1024;

/// Short UTF-8 messages are logged in full, as the classroom server printed them; anything
/// longer or binary is logged by size and id only.
const LOG_TEXT_MAX: usize = 200;

/// Room for what sealing adds to the plaintext (wrapped key, tags, signature): generous, since
/// it only bounds how much of an oversized message is read before it is refused.
pub(super) const SEALING_OVERHEAD: u64 = 64 << 20;

/// How many asymmetric-mode bytes one client may have decrypted, per second and at once.
///
/// An asymmetric message costs one RSA private operation per block (about 0.6 ms per 190 bytes
/// with a 2048-bit key, so about 3.5 s of CPU per MiB); without a budget one client sending
/// them back to back keeps a core busy for everyone. The budget is a token bucket per client
/// key: a message's bytes are charged batch by batch before they are decrypted, and when the
/// bucket is empty the connection waits (stops reading) until it refills. A client that would
/// have to wait longer than [`ServerConfig::idle_timeout`](super::ServerConfig) is refused
/// with `Unavailable` ("busy") instead. Hybrid messages cost one RSA operation each and are not charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsymmetricBudget {
    /// Bytes per second a client's bucket refills with.
    pub bytes_per_sec: u64,
    /// Bucket size: what a client with a full bucket may have decrypted at once. At least one
    /// largest asymmetric message, so a single message is never throttled.
    pub burst: u64,
}

impl Default for AsymmetricBudget {
    /// 128 KiB/s (about 0.45 s of one core per second per client) with a burst of 1.5 MiB, one
    /// largest default asymmetric message with its sealing overhead.
    fn default() -> Self {
        AsymmetricBudget {
            bytes_per_sec: 128 * 1024,
            burst: 1536 * 1024,
        }
    }
}

/// Counters of the receive path, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Messages given to an opener (decrypted and verified, or refused trying).
    pub opened: u64,
    /// Repeats of a stored message answered from its content hash, without opening.
    pub repeats_answered: u64,
    /// Messages under a known id whose bytes differ, refused without opening.
    pub repeats_refused: u64,
    /// Times a connection waited for its client's asymmetric budget.
    pub budget_waits: u64,
    /// Hybrid messages whose content key was decrypted before the rest of them arrived (the
    /// connection had nothing else to read meanwhile).
    pub keys_ahead: u64,
    /// Messages relayed from one client to another and stored, unopened (`relay.rs`).
    pub relayed: u64,
    /// Repeats of a relayed message answered `Stored` again, nothing written.
    pub relay_repeats: u64,
}

/// A client's token bucket (see [`AsymmetricBudget`]).
#[derive(Debug)]
struct Bucket {
    /// Bytes that may still be decrypted now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

/// The server-wide state of the receive path: per-client budgets and counters.
#[derive(Debug)]
pub(super) struct Receiving {
    budget: AsymmetricBudget,
    /// One bucket per client key id; as many entries as trusted clients at most.
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
    opened: AtomicU64,
    repeats_answered: AtomicU64,
    repeats_refused: AtomicU64,
    budget_waits: AtomicU64,
    keys_ahead: AtomicU64,
    pub(super) relayed: AtomicU64,
    pub(super) relay_repeats: AtomicU64,
}

impl Receiving {
    pub(super) fn new(budget: &AsymmetricBudget) -> Self {
        Receiving {
            budget: *budget,
            buckets: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            repeats_answered: AtomicU64::new(0),
            repeats_refused: AtomicU64::new(0),
            budget_waits: AtomicU64::new(0),
            keys_ahead: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            relay_repeats: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` from `client`'s bucket; returns how long to wait before decrypting them,
    /// or `None` (and takes nothing) if that would be longer than `max_wait`.
    fn charge(&self, client: &[u8; 32], bytes: u64, max_wait: Duration) -> Option<Duration> {
        let rate = self.budget.bytes_per_sec.max(1) as f64;
        let burst = self.budget.burst as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(*client).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        // The bucket may go into debt: connections of the same client then wait in turn.
        let after = bucket.tokens - bytes as f64;
        // `try_from`: no panic path even for absurd configured values.
        let wait = Duration::try_from_secs_f64((-after).max(0.0) / rate).unwrap_or(Duration::MAX);
        if wait > max_wait {
            return None;
        }
        bucket.tokens = after;
        Some(wait)
    }
}

impl<S> Server<S> {
    /// Counters of the receive path (how many messages were opened, how many repeats were
    /// answered from the store without opening), for tests and metrics.
    pub fn receive_stats(&self) -> ReceiveStats {
        let r = &self.receiving;
        ReceiveStats {
            opened: r.opened.load(Ordering::Relaxed),
            repeats_answered: r.repeats_answered.load(Ordering::Relaxed),
            repeats_refused: r.repeats_refused.load(Ordering::Relaxed),
            budget_waits: r.budget_waits.load(Ordering::Relaxed),
            keys_ahead: r.keys_ahead.load(Ordering::Relaxed),
            relayed: r.relayed.load(Ordering::Relaxed),
            relay_repeats: r.relay_repeats.load(Ordering::Relaxed),
        }
    }
}

impl<S: Store, R: AsyncRead + Unpin + Send + 'static> Handler<S, R> {
    /// Receives one message and leaves its verification, storage and ack to a task, so the
    /// next message can arrive meanwhile (pipelining), at most `max_in_flight` at once.
    pub(super) async fn start_receive(&mut self, first: Vec<u8>) -> Result<(), Fail> {
        let permits = self.in_flight_permits().await?;
        let job = self.receive(first).await?;
        self.work.spawn(async move {
            let _permits = permits;
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
        let (head, header) = self.read_head(first).await?;
        self.check_header(&header)?;
        let known = self
            .server
            .store
            .known_inbox(&header.sender.0, &header.message_id.0)
            .await
            .map_err(Fail::store)?;
        if let Some(known) = known {
            return self.receive_known(head, header, known).await;
        }
        self.server.receiving.opened.fetch_add(1, Ordering::Relaxed);
        let asymmetric = header.mode == Mode::Asymmetric;
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
            identity: SealedIdentity::new(&header, self.wrapped_key_len()),
            // The identity stands in for a SHA-256 of the sealed bytes: not computed.
            blob: self.server.store.blob_writer().without_sha256(),
            plain: Zeroizing::new(Vec::new()),
            // Sized once for the whole preview, so appending never reallocates and leaves a copy.
            preview: config
                .log_text
                .then(|| Zeroizing::new(Vec::with_capacity(LOG_TEXT_MAX + 1))),
            header_left: HEADER_LEN,
        };
        let mut state = Feeding::Idle(Ok(intake));
        // Bytes are handed to the blocking pool in batches: a small message goes over in one
        // piece with its verification, after `SendEnd`, so the connection reads the next message
        // while this one is decrypted (pipelining), and a large one costs one hop per batch.
        // One exception: a hybrid message whose content key has arrived while its next frame
        // has not (a one-shot client sends its header and key first, while it signs) starts
        // the key's RSA decryption now instead of after the rest has come.
        let key_end = (!asymmetric).then(|| HEADER_LEN + self.wrapped_key_len());
        let mut pending = head;
        let mut seen = pending.len() as u64;
        let server = self.server.clone();
        loop {
            let more = {
                let mut next = std::pin::pin!(self.next_data_capped(&mut seen));
                match ready_now(&mut next).await {
                    Some(more) => more,
                    None => {
                        if key_end.is_some_and(|end| pending.len() >= end) && state.is_untouched() {
                            state = state.feed_in_background(std::mem::take(&mut pending));
                            server.receiving.keys_ahead.fetch_add(1, Ordering::Relaxed);
                            debug!(id = %header.message_id, "content key arrived first: decrypting it meanwhile");
                        }
                        next.await
                    }
                }
            };
            let Some(more) = more? else {
                break;
            };
            if state.has_failed() {
                // Failed already: read the rest of the message to its end, keep nothing.
                continue;
            }
            pending.extend_from_slice(&more);
            if pending.len() >= FEED_BATCH {
                let batch = std::mem::take(&mut pending);
                if asymmetric {
                    self.asymmetric_budget(batch.len()).await?;
                }
                state = match state.settle().await? {
                    Ok(intake) => Feeding::Idle(
                        on_blocking_pool(move || {
                            let mut intake = intake;
                            intake.feed(&batch).map(|()| intake)
                        })
                        .await?,
                    ),
                    failed => Feeding::Idle(failed),
                };
            }
        }
        if asymmetric && !state.has_failed() {
            self.asymmetric_budget(pending.len()).await?;
        }
        // All its bytes are here: from now until its verification ends, the store may expect
        // this message's write (`Store::write_coming`).
        let coming = self.server.store.write_coming();
        let worker = Box::pin(async move {
            let state = state.settle().await?;
            on_blocking_pool(move || {
                let mut intake = state?;
                intake.feed(&pending)?;
                intake.finish()
            })
            .await
        });
        Ok(ReceiveJob {
            header,
            work: Work::Open(worker, coming),
            server: self.server.clone(),
            client: self.client.clone(),
            out: self.conn.out.clone(),
        })
    }

    /// The first bytes of a message, starting with `first`, until its whole header is there
    /// (it may span frames), and the header parsed from them.
    pub(super) async fn read_head(&mut self, first: Vec<u8>) -> Result<(Vec<u8>, Header), Fail> {
        let mut head = first;
        while head.len() < HEADER_LEN {
            match self.next_data().await? {
                Some(more) => head.extend_from_slice(&more),
                None => return Err(Fail::refused("message shorter than a header")),
            }
        }
        let header = Header::parse(&head)
            .map_err(|e| Fail::new(ErrorCode::Refused, format!("bad header: {e}")))?;
        Ok((head, header))
    }

    /// The length of a wrapped key sealed for this server: its modulus length.
    fn wrapped_key_len(&self) -> usize {
        self.server.identity.public().modulus_len()
    }

    /// The rest of a message whose (sender, id) the store already holds: its bytes are only
    /// hashed, to tell a repeat (same ack again) from a different message under the same id
    /// (refused). Nothing is decrypted, verified or written.
    ///
    /// The stored content hash is the first copy's [`SealedIdentity`], or, for a message
    /// stored by a letterlock from before identities, SHA-256 of all its sealed bytes: both
    /// are computed, each byte still hashed once (the identity takes only the header, the
    /// wrapped key and the tags besides). Matching either is safe: the identity's input starts
    /// with its context string and sealed bytes with the magic, so one equal to the other
    /// would be a SHA-256 collision.
    async fn receive_known(
        &mut self,
        head: Vec<u8>,
        header: Header,
        known: KnownMessage,
    ) -> Result<ReceiveJob<S>, Fail> {
        let mut identity = SealedIdentity::new(&header, self.wrapped_key_len());
        let mut legacy = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        identity.update(&head);
        legacy.update(&head);
        let mut seen = head.len() as u64;
        while let Some(more) = self.next_data_capped(&mut seen).await? {
            identity.update(&more);
            legacy.update(&more);
        }
        // Content hashes are not secret; compared in constant time all the same.
        let matches = |hash: &[u8]| {
            aws_lc_rs::constant_time::verify_slices_are_equal(hash, &known.content_hash).is_ok()
        };
        let same = matches(&identity.finish()) | matches(legacy.finish().as_ref());
        Ok(ReceiveJob {
            header,
            work: Work::Known {
                same,
                ack_tag: known.ack_tag,
            },
            server: self.server.clone(),
            client: self.client.clone(),
            out: self.conn.out.clone(),
        })
    }

    /// Charges `bytes` of asymmetric-mode work to this client's budget, waiting for it to
    /// refill if need be ([`AsymmetricBudget`]).
    async fn asymmetric_budget(&self, bytes: usize) -> Result<(), Fail> {
        let receiving = &self.server.receiving;
        let wait = receiving
            .charge(
                &self.client.key.id().0,
                bytes as u64,
                self.server.config.idle_timeout,
            )
            .ok_or_else(|| {
                Fail::new(
                    ErrorCode::Unavailable,
                    "this client's asymmetric-mode budget is spent; send later or use hybrid mode",
                )
            })?;
        if !wait.is_zero() {
            receiving.budget_waits.fetch_add(1, Ordering::Relaxed);
            debug!(client = %self.client.name, wait_ms = wait.as_millis() as u64, "asymmetric budget: waiting");
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The next `Send` payload, or `None` at `SendEnd`.
    /// [`Self::next_data`], adding its length to `seen` (the message's bytes so far) and refusing
    /// a message past the largest this server accepts, before it is kept or hashed.
    async fn next_data_capped(&mut self, seen: &mut u64) -> Result<Option<Vec<u8>>, Fail> {
        let cap = self
            .server
            .config
            .max_hybrid
            .saturating_add(SEALING_OVERHEAD);
        let more = self.next_data().await?;
        if let Some(more) = &more {
            *seen = seen.saturating_add(more.len() as u64);
            if *seen > cap {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    "message larger than this server accepts",
                ));
            }
        }
        Ok(more)
    }

    pub(super) async fn next_data(&mut self) -> Result<Option<Vec<u8>>, Fail> {
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
        self.check_mode_and_time(h)
    }

    /// The checks every message's header gets, received or relayed: a mode this server
    /// accepts, and a creation time within its window.
    pub(super) fn check_mode_and_time(&self, h: &Header) -> Result<(), Fail> {
        let config = &self.server.config;
        if !config.accept.allows(h.mode) {
            return Err(Fail::new(
                ErrorCode::ModeNotAccepted,
                format!("this server does not accept {} messages", h.mode),
            ));
        }
        let now = envelope::unix_now();
        if h.created.abs_diff(now) > config.time_window.as_secs() {
            return Err(Fail::new(
                ErrorCode::Stale,
                format!(
                    "message time {} is outside the server's window of ±{} around {now}",
                    h.created,
                    crate::text::TimeSpan(config.time_window)
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
    work: Work,
    /// For the store.
    server: Arc<Server<S>>,
    /// The sender, for the inbox record and the logs.
    client: Trusted,
    /// Where the ack goes.
    out: mpsc::Sender<Frame>,
}

/// The end of a new message's opening: the message verified, or why not (`OpenError`), or a
/// failure of the server's own (`Fail`).
type Opening = Pin<Box<dyn Future<Output = Result<Result<Verified, OpenError>, Fail>> + Send>>;

/// What is left to do for a message once its bytes have arrived.
enum Work {
    /// A new id: the rest of its decryption and its verification, on the blocking pool, and
    /// the store told that its write is on the way until just before it is made.
    Open(Opening, WriteComing),
    /// An id the store holds: whether the bytes were the same, and the stored ack tag.
    Known { same: bool, ack_tag: [u8; 32] },
}

impl<S: Store> ReceiveJob<S> {
    /// Waits for verification, stores durably, then acknowledges.
    async fn complete(self) -> Result<(), Fail> {
        let ReceiveJob {
            header,
            work,
            server,
            client,
            out,
        } = self;
        let (worker, coming) = match work {
            Work::Open(worker, coming) => (worker, coming),
            Work::Known { same, ack_tag } => {
                let id = header.message_id;
                let receiving = &server.receiving;
                if !same {
                    receiving.repeats_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(client = %client.name, %id, "message id already used for different content; refused unopened");
                    return Err(Fail::new(
                        ErrorCode::Replay,
                        "this message id was already used for a different message",
                    ));
                }
                receiving.repeats_answered.fetch_add(1, Ordering::Relaxed);
                info!(client = %client.name, %id, "repeat of a stored message: same ack again, unopened");
                return send(&out, Frame::Ack { id, tag: ack_tag }).await;
            }
        };
        let verified = match worker.await? {
            Ok(v) => v,
            Err(OpenError::TooLarge { limit }) => {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    format!(
                        "message larger than this server's limit of {}",
                        crate::text::ByteCount(limit)
                    ),
                ));
            }
            // The store's writer failed, not the message (pgkill: database lost mid-body).
            Err(OpenError::Io(e)) => return Err(Fail::store_write(e)),
            Err(e) => {
                // Whatever the cause, the peer sees the same words.
                warn!(client = %crate::text::quoted(&client.name), id = %header.message_id, error = %e, "message refused");
                return Err(Fail::refused("message failed verification"));
            }
        };
        let Verified {
            opened,
            body,
            identity,
            preview,
        } = verified;
        let id = opened.header.message_id;
        let size = body.len();
        // Announced until now: the store waits for announced writes, not for this one.
        drop(coming);
        let record = InboxRecord {
            sender_key_id: client.key.id().0,
            sender_name: client.name.clone(),
            message_id: id.0,
            created: opened.header.created,
            received: envelope::unix_now(),
            mode: opened.header.mode.to_byte(),
            plaintext_len: opened.plaintext_len,
            content_hash: identity,
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
        // How to read it is the command line's to say (it knows its --keys and --store).
        None => "; stored, not shown here (binary, long, with control characters, or the text \
                 log off)"
            .to_owned(),
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

/// Where a message's opening stands between the batches the connection hands over.
// The intake is large, and moves whole between the connection and the blocking pool as it
// always did; boxing it would add an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Feeding {
    /// Waiting for bytes: the intake, or why the message already failed.
    Idle(Result<Intake, OpenError>),
    /// Working on the bytes fed ahead (the content key) on the blocking pool.
    Busy(tokio::task::JoinHandle<Result<Intake, OpenError>>),
}

impl Feeding {
    /// Nothing fed yet and nothing failed: the content key may still be fed ahead.
    fn is_untouched(&self) -> bool {
        matches!(self, Feeding::Idle(Ok(intake)) if intake.header_left == HEADER_LEN)
    }

    /// The message already failed: its remaining bytes are only read and dropped.
    fn has_failed(&self) -> bool {
        matches!(self, Feeding::Idle(Err(_)))
    }

    /// Feeds `bytes` on the blocking pool without waiting for it; [`Feeding::settle`] does.
    fn feed_in_background(self, bytes: Vec<u8>) -> Feeding {
        match self {
            Feeding::Idle(Ok(mut intake)) => {
                Feeding::Busy(tokio::task::spawn_blocking(move || {
                    intake.feed(&bytes).map(|()| intake)
                }))
            }
            other => other,
        }
    }

    /// The intake once the bytes fed in the background are done with.
    async fn settle(self) -> Result<Result<Intake, OpenError>, Fail> {
        match self {
            Feeding::Idle(state) => Ok(state),
            Feeding::Busy(job) => joined(job).await,
        }
    }
}

/// `fut`'s output if it is ready without waiting, else `None`; `fut` is kept, to be awaited
/// after all (polling it here registered this task for its wake-up).
async fn ready_now<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await;
    match polled {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// The blocking side of receiving one message: the opener, and the store's writer that keeps
/// the sealed bytes (messages stay encrypted at rest).
struct Intake {
    opener: Opener,
    /// The content hash the inbox keeps, computed from the same bytes as they pass.
    identity: SealedIdentity,
    /// Keeps the sealed bytes, without hashing them.
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
        self.identity.update(data);
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
            identity,
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
            identity: identity.finish(),
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
    /// The message's [`SealedIdentity`], its inbox content hash.
    identity: [u8; 32],
    /// The first bytes of plaintext, for the log line (when the server logs text).
    preview: Option<Zeroizing<Vec<u8>>>,
}
