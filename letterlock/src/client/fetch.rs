//! Fetching: open and verify each waiting message, put it where the caller said, keep the record
//! of received messages, and only then acknowledge it; set aside what cannot be opened.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::debug;
use zeroize::Zeroizing;

use crate::envelope::{self, HEADER_LEN, Header, MessageId, OpenError, OpenOptions, Opener};
use crate::files::{AtomicFile, WriteOptions};
use crate::received::{self, Entry, Kind, ReceivedRecord};
use crate::wire::Frame;

use super::mailbox::{Kept, Mailbox, SealedCopy, StagedCopy};
use super::{Client, ClientError, on_blocking_pool, unexpected};

/// Where fetched plaintext goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Held in memory (for printing), up to this many bytes per message. Without a mailbox a
    /// larger message is set aside; with one ([`Client::fetch_to_mailbox`]) it is kept there
    /// and reported as [`Content::OverLimit`].
    Memory { limit: u64 },
    /// Written to `DIR/<message id>.msg`, appearing only once verified.
    Dir(PathBuf),
}

/// A fetched message that verified.
#[derive(Debug)]
pub struct Received {
    pub header: Header,
    pub plaintext_len: u64,
    pub content: Content,
    /// Already received before (same id): at-least-once delivery repeated it.
    pub duplicate: bool,
    /// Our proof of delivery, sent back to the server.
    pub ack_tag: [u8; 32],
    /// The client's mailbox holds the sealed message (committed before it was reported): kept
    /// by this fetch, or held already. Always false without a mailbox, and for a repeat the
    /// record recognised (not kept again).
    pub in_mailbox: bool,
}

/// Where a fetched message's plaintext is.
#[derive(Debug)]
pub enum Content {
    /// In memory ([`Output::Memory`]), in a buffer wiped when dropped.
    Memory(Zeroizing<Vec<u8>>),
    /// In this file ([`Output::Dir`]).
    File(PathBuf),
    /// Larger than [`Output::Memory`]'s limit: not held (what was decrypted was wiped); the
    /// verified message is in the mailbox, to be read from there to a file.
    OverLimit { limit: u64 },
}

impl Client {
    /// Fetches every message waiting for us. Each is opened and verified, put where `output`
    /// says, passed to `handle` (which must make it durable or shown before returning), and
    /// only then acknowledged. Keeps no record of received messages and stops at the first
    /// message it cannot open: programs that receive for a user take
    /// [`Client::fetch_recorded`].
    pub async fn fetch<F>(&mut self, output: &Output, mut handle: F) -> Result<usize, ClientError>
    where
        F: FnMut(&Received) -> Result<(), ClientError>,
    {
        self.writer.write_frame(&Frame::Fetch).await?;
        let mut acked = Vec::new();
        let count = loop {
            match self.read().await? {
                Frame::Deliver(first) => {
                    let received = self.receive_one(first, output).await?;
                    handle(&received)?;
                    let id = received.header.message_id;
                    // Queued, sent after FetchDone: see `fetch_recorded`.
                    self.writer.queue_frame(&Frame::DeliveryAck {
                        id,
                        tag: received.ack_tag,
                    });
                    acked.push(id);
                }
                Frame::FetchDone { count } => break count,
                other => return Err(unexpected(other)),
            }
        };
        if count as usize != acked.len() {
            return Err(ClientError::CountMismatch {
                announced: count,
                sent: acked.len(),
            });
        }
        self.writer.flush().await?;
        // Wait for the server to confirm each removal, so a second fetch will not repeat them.
        for _ in &acked {
            match self.read().await? {
                Frame::Removed { id } if acked.contains(&id) => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(acked.len())
    }

    /// Fetches every message waiting for us, keeping `record` (the durable record of received
    /// messages, [`crate::received`]) and reporting each message to `event`:
    /// - a new message is opened and verified, put where `output` says, passed to `event`
    ///   (which must make it durable or shown), recorded (fsynced), and only then acknowledged;
    /// - a message the record already holds is a repeat: opened to prove receipt to the server
    ///   (a byte-identical replay earns an ack tag that was already sent), acknowledged, but
    ///   neither saved nor shown again;
    /// - a message signed outside the client's window, or one that cannot be opened, is set
    ///   aside: reported, recorded as set aside, not acknowledged (it stays in the server's
    ///   outbox, where its operator can remove it), and the messages behind it are delivered.
    pub async fn fetch_recorded<F>(
        &mut self,
        output: &Output,
        record: &mut ReceivedRecord,
        event: F,
    ) -> Result<FetchReport, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        self.fetch_kept(output, record, None, event).await
    }

    /// [`Client::fetch_recorded`], keeping every new message in `mailbox` too: its sealed bytes
    /// stream into the mailbox as they arrive (in bounded memory, whatever the size) and are
    /// committed (fsynced) before the message is reported to `event`, recorded and
    /// acknowledged. A message the mailbox cannot keep is not acknowledged. With
    /// [`Output::Memory`], a message over the limit is no longer set aside: it is verified,
    /// kept, and reported as [`Content::OverLimit`].
    pub async fn fetch_to_mailbox<F>(
        &mut self,
        output: &Output,
        record: &mut ReceivedRecord,
        mailbox: &Mailbox,
        event: F,
    ) -> Result<FetchReport, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        self.fetch_kept(output, record, Some(mailbox), event).await
    }

    async fn fetch_kept<F>(
        &mut self,
        output: &Output,
        record: &mut ReceivedRecord,
        mailbox: Option<&Mailbox>,
        mut event: F,
    ) -> Result<FetchReport, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        self.writer.write_frame(&Frame::Fetch).await?;
        let mut acked = Vec::new();
        let mut report = FetchReport::default();
        let count = loop {
            let first = match self.read().await? {
                Frame::Deliver(first) => first,
                Frame::FetchDone { count } => break count,
                other => return Err(unexpected(other)),
            };
            let (head, ended) = self.read_header(first).await?;
            let header = match Header::parse(&head) {
                Ok(h) if !ended => h,
                parsed => {
                    if !ended {
                        self.skip_message().await?;
                    }
                    let e = match parsed {
                        Err(e) => OpenError::Header(e),
                        Ok(_) => OpenError::Verification,
                    };
                    let error = ClientError::Open(e);
                    event(FetchEvent::SetAside {
                        id: None,
                        error: &error,
                    })?;
                    report.set_aside += 1;
                    continue;
                }
            };
            let id = header.message_id;
            let now = envelope::unix_now();
            let known = record.get(&header.sender.0, &id.0).map(|e| e.kind);
            let refused = match received::check_time(header.created, now) {
                Err(why) => {
                    self.skip_message().await?;
                    Err(ClientError::Stale(why))
                }
                Ok(()) => {
                    let repeat = known == Some(Kind::Received);
                    let out = if repeat { None } else { Some(output) };
                    // A repeat is not kept twice: the mailbox got it the first time.
                    let copy = if repeat {
                        None
                    } else {
                        mailbox.map(Mailbox::copy)
                    };
                    match self.open_delivery(head, out, copy).await {
                        Ok((mut received, staged)) => keep(mailbox, staged, &mut received, now)
                            .await
                            .map(|()| received),
                        Err(e) => Err(e),
                    }
                }
            };
            let received = match refused {
                Ok(r) => r,
                Err(error) if is_set_aside(&error) => {
                    if known.is_none() {
                        record.add(entry(Kind::SetAside, &header, now))?;
                    }
                    event(FetchEvent::SetAside {
                        id: Some(id),
                        error: &error,
                    })?;
                    report.set_aside += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if known == Some(Kind::Received) || received.duplicate {
                event(FetchEvent::Repeat {
                    received: &received,
                    recorded: record.get(&header.sender.0, &id.0).map(|e| e.recorded),
                })?;
                report.repeats += 1;
            } else {
                event(FetchEvent::New(&received))?;
                report.new += 1;
            }
            if known != Some(Kind::Received) {
                // Durable before the ack: after it, the server forgets the message.
                record.add(entry(Kind::Received, &header, now))?;
            }
            // Queued, and sent once FetchDone came: the server reads nothing while it streams
            // a fetch, so acks written during it would wait in the TCP buffers, and enough of
            // them would fill both directions (PROTOCOL.md, "Keep reading while writing").
            self.writer.queue_frame(&Frame::DeliveryAck {
                id,
                tag: received.ack_tag,
            });
            acked.push(id);
        };
        let delivered = acked.len() + report.set_aside;
        if count as usize != delivered {
            return Err(ClientError::CountMismatch {
                announced: count,
                sent: delivered,
            });
        }
        self.writer.flush().await?;
        for _ in &acked {
            match self.read().await? {
                Frame::Removed { id } if acked.contains(&id) => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(report)
    }

    /// The first `HEADER_LEN` bytes or more of a delivered message, and whether its
    /// `DeliverEnd` came already (a message shorter than a header, or exactly one).
    async fn read_header(&mut self, first: Vec<u8>) -> Result<(Vec<u8>, bool), ClientError> {
        let mut head = first;
        while head.len() < HEADER_LEN {
            match self.read().await? {
                Frame::Deliver(more) => head.extend_from_slice(&more),
                Frame::DeliverEnd => return Ok((head, true)),
                other => return Err(unexpected(other)),
            }
        }
        Ok((head, false))
    }

    /// Reads and drops the rest of a delivered message, up to its `DeliverEnd`.
    async fn skip_message(&mut self) -> Result<(), ClientError> {
        loop {
            match self.read().await? {
                Frame::Deliver(_) => {}
                Frame::DeliverEnd => return Ok(()),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Opens one delivered message whose first bytes (at least its header, unless it ended
    /// early) are `head`, to `output`, or, with `None`, only to verify it and compute its ack
    /// tag. On an opening failure the rest of the message is still read, so the next one can
    /// follow.
    ///
    /// With `copy`, every delivered byte (header included) is also written there, and the
    /// finished copy comes back with the message once it verified.
    async fn open_delivery(
        &mut self,
        head: Vec<u8>,
        output: Option<&Output>,
        copy: Option<SealedCopy>,
    ) -> Result<(Received, Option<StagedCopy>), ClientError> {
        let mut head = head;
        let rest = if head.len() > HEADER_LEN {
            head.split_off(HEADER_LEN)
        } else {
            Vec::new()
        };
        let server = self.server.clone();
        // With a mailbox, the memory limit is the output's, not the message's: what is over it
        // is still verified and kept (`PlainSink::Capped`).
        let capped = copy.is_some();
        let opts = OpenOptions {
            max_plaintext: match output {
                Some(Output::Memory { limit }) if !capped => (*limit).min(self.config.max_message),
                Some(_) | None => self.config.max_message,
            },
            asymmetric_limit: self.config.max_asymmetric,
        };
        let output = output.cloned();
        let started = Opener::new(&head, self.identity.clone(), &server, &opts)
            .map_err(ClientError::from)
            .map(|opener| (opener, output));
        let mut state: Result<Unpack, ClientError> = match started {
            Ok((opener, output)) => {
                let header = *opener.header();
                on_blocking_pool(move || {
                    let sink = match &output {
                        Some(output) => PlainSink::new(output, &header, capped)?,
                        None => PlainSink::Discard,
                    };
                    let mut copy = copy;
                    if let Some(copy) = &mut copy {
                        copy.write(&head)?;
                    }
                    let mut u = Unpack {
                        opener,
                        sink,
                        plain: Zeroizing::new(Vec::new()),
                        copy,
                    };
                    u.feed(&rest)?;
                    Ok(u)
                })
                .await
            }
            Err(e) => Err(e),
        };
        loop {
            match self.read().await? {
                Frame::Deliver(data) => {
                    if let Ok(unpack) = state {
                        state = on_blocking_pool(move || {
                            let mut u = unpack;
                            u.feed(&data)?;
                            Ok(u)
                        })
                        .await;
                    }
                }
                Frame::DeliverEnd => break,
                other => return Err(unexpected(other)),
            }
        }
        on_blocking_pool(move || state?.finish()).await
    }

    /// Receives one delivered message (`Deliver`… `DeliverEnd`) and opens it.
    async fn receive_one(
        &mut self,
        first: Vec<u8>,
        output: &Output,
    ) -> Result<Received, ClientError> {
        let mut head = first;
        let mut rest = Vec::new();
        while head.len() < HEADER_LEN {
            match self.read().await? {
                Frame::Deliver(more) => head.extend_from_slice(&more),
                other => return Err(unexpected(other)),
            }
        }
        if head.len() > HEADER_LEN {
            rest = head.split_off(HEADER_LEN);
        }
        let server = self.server.clone();
        let opts = OpenOptions {
            max_plaintext: match output {
                Output::Memory { limit } => (*limit).min(self.config.max_message),
                Output::Dir(_) => self.config.max_message,
            },
            asymmetric_limit: self.config.max_asymmetric,
        };
        let opener = Opener::new(&head, self.identity.clone(), &server, &opts)?;
        let header = *opener.header();
        // Decryption, verification and file writes run on the blocking pool, frame by frame.
        let output = output.clone();
        let mut unpack = on_blocking_pool(move || {
            let mut u = Unpack {
                opener,
                sink: PlainSink::new(&output, &header, false)?,
                plain: Zeroizing::new(Vec::new()),
                copy: None,
            };
            u.feed(&rest)?;
            Ok(u)
        })
        .await?;
        loop {
            match self.read().await? {
                Frame::Deliver(data) => {
                    unpack = on_blocking_pool(move || {
                        let mut u = unpack;
                        u.feed(&data)?;
                        Ok(u)
                    })
                    .await?;
                }
                Frame::DeliverEnd => break,
                other => return Err(unexpected(other)),
            }
        }
        let (received, _) = on_blocking_pool(move || unpack.finish()).await?;
        debug!(id = %header.message_id, "received and verified");
        Ok(received)
    }
}

/// What [`Client::fetch_recorded`] did with one fetch's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// New messages, saved or shown, recorded and acknowledged.
    pub new: usize,
    /// Messages the record (or the output folder) already held: acknowledged, not shown again.
    pub repeats: usize,
    /// Messages set aside: stale or not openable; not acknowledged, left on the server.
    pub set_aside: usize,
}

/// One message of a fetch, as [`Client::fetch_recorded`] reports it.
#[derive(Debug)]
pub enum FetchEvent<'a> {
    /// A new message, verified: show or save it durably before returning.
    New(&'a Received),
    /// A message received before (a replay, or at-least-once delivery repeating itself), with
    /// when it was first recorded.
    Repeat {
        received: &'a Received,
        recorded: Option<u64>,
    },
    /// A message set aside, with why; `id` is `None` if not even its header could be read.
    SetAside {
        id: Option<MessageId>,
        error: &'a ClientError,
    },
}

/// Whether a failure concerns the one message (set it aside, deliver the next) rather than the
/// connection or this machine (stop).
fn is_set_aside(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Open(_) | ClientError::Stale(_) | ClientError::MailboxConflict { .. }
    )
}

/// Commits a verified message's sealed copy to the mailbox, if it has one, before the message
/// is reported, recorded or acknowledged.
async fn keep(
    mailbox: Option<&Mailbox>,
    staged: Option<StagedCopy>,
    received: &mut Received,
    now: u64,
) -> Result<(), ClientError> {
    let (Some(mailbox), Some(staged)) = (mailbox, staged) else {
        return Ok(());
    };
    let kept = mailbox
        .keep(
            staged,
            &received.header,
            received.plaintext_len,
            received.ack_tag,
            now,
        )
        .await?;
    debug!(id = %received.header.message_id, ?kept, "kept in the mailbox");
    // Stored now or held already: either way the mailbox has it, committed.
    received.in_mailbox = matches!(kept, Kept::Stored | Kept::AlreadyHeld);
    Ok(())
}

/// A record entry for a message with `header`, made `now`.
fn entry(kind: Kind, header: &Header, now: u64) -> Entry {
    Entry {
        kind,
        sender: header.sender.0,
        message_id: header.message_id.0,
        created: header.created,
        recorded: now,
    }
}

/// One delivered message being opened: the opener, where its plaintext goes, and where its
/// sealed bytes are copied.
struct Unpack {
    opener: Opener,
    sink: PlainSink,
    /// Decrypted bytes of the current frame (wiped when dropped).
    plain: Zeroizing<Vec<u8>>,
    /// The sealed bytes, on their way into the mailbox; dropped (and its file removed) if the
    /// message does not verify.
    copy: Option<SealedCopy>,
}

impl Unpack {
    fn feed(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if let Some(copy) = &mut self.copy {
            copy.write(data)?;
        }
        self.opener.update(data, &mut self.plain)?;
        self.sink.write(&mut self.plain)
    }

    fn finish(mut self) -> Result<(Received, Option<StagedCopy>), ClientError> {
        let header = *self.opener.header();
        let opened = self.opener.finish(&mut self.plain)?;
        self.sink.write(&mut self.plain)?;
        // The copy is made durable before the plaintext file is renamed into place: a failure
        // here leaves no file behind that would make a later fetch look like a repeat.
        let staged = self.copy.map(SealedCopy::finish).transpose()?;
        let (content, duplicate) = self.sink.commit()?;
        let received = Received {
            header,
            plaintext_len: opened.plaintext_len,
            content,
            duplicate,
            ack_tag: opened.ack_tag,
            in_mailbox: false,
        };
        Ok((received, staged))
    }
}

/// Where plaintext of one fetched message goes while it is still unverified.
enum PlainSink {
    Memory(Zeroizing<Vec<u8>>),
    /// In memory up to `limit` bytes; past it the bytes are wiped and dropped
    /// ([`PlainSink::Over`]): a mailbox keeps the message, the caller is told where it is.
    Capped {
        held: Zeroizing<Vec<u8>>,
        limit: u64,
    },
    /// Was [`PlainSink::Capped`], went over its limit: decrypted only to verify.
    Over {
        limit: u64,
    },
    /// A temporary file beside the target, renamed into place once verified. Written without a
    /// user-space buffer: frames are large, and a buffer would hold plaintext unwiped.
    File {
        tmp: AtomicFile,
        target: PathBuf,
    },
    /// A repeat: verified for its ack tag, the plaintext dropped as it is decrypted.
    Discard,
    /// The target exists already: decrypt and verify, and hash, to compare with it.
    Existing {
        target: PathBuf,
        hash: aws_lc_rs::digest::Context,
    },
}

impl PlainSink {
    /// The sink for `output`; `capped`: a message over a memory limit is not an error (the
    /// mailbox keeps it).
    fn new(output: &Output, header: &Header, capped: bool) -> Result<Self, ClientError> {
        Ok(match output {
            // Grows through `extend_wiping`: no reallocation leaves plaintext behind.
            Output::Memory { limit } if capped => PlainSink::Capped {
                held: Zeroizing::new(Vec::new()),
                limit: *limit,
            },
            Output::Memory { .. } => PlainSink::Memory(Zeroizing::new(Vec::new())),
            Output::Dir(dir) => {
                let target = message_path(dir, &header.message_id);
                if target.exists() {
                    PlainSink::Existing {
                        target,
                        hash: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
                    }
                } else {
                    let opts = WriteOptions {
                        create_dirs: true,
                        ..WriteOptions::default()
                    };
                    let tmp = AtomicFile::create(&target, &opts)?;
                    PlainSink::File { tmp, target }
                }
            }
        })
    }

    fn write(&mut self, plain: &mut Zeroizing<Vec<u8>>) -> Result<(), ClientError> {
        match self {
            PlainSink::Memory(v) => crate::secret::extend_wiping(v, plain),
            PlainSink::Capped { held, limit } => {
                if (held.len() as u64).saturating_add(plain.len() as u64) > *limit {
                    // Dropping a `Zeroizing` buffer wipes it.
                    *self = PlainSink::Over { limit: *limit };
                } else {
                    crate::secret::extend_wiping(held, plain);
                }
            }
            PlainSink::File { tmp, .. } => tmp.write_all(plain)?,
            PlainSink::Existing { hash, .. } => hash.update(plain),
            PlainSink::Discard | PlainSink::Over { .. } => {}
        }
        plain.clear();
        Ok(())
    }

    /// The message verified: make it visible (and durable). Returns whether it was a repeat.
    fn commit(self) -> Result<(Content, bool), ClientError> {
        Ok(match self {
            PlainSink::Memory(v) | PlainSink::Capped { held: v, .. } => (Content::Memory(v), false),
            PlainSink::Over { limit } => (Content::OverLimit { limit }, false),
            PlainSink::Discard => (Content::Memory(Zeroizing::new(Vec::new())), true),
            PlainSink::File { tmp, target } => {
                // fsync, a no-clobber rename, fsync of the folder.
                tmp.commit()?;
                (Content::File(target), false)
            }
            PlainSink::Existing { target, hash } => {
                // A repeat only if the file holds exactly this message; anything else there is
                // not ours to overwrite, and acknowledging would lose the message.
                let mut existing = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut file = std::fs::File::open(&target)?;
                envelope::for_each_read(&mut file, |b| -> io::Result<()> {
                    existing.update(b);
                    Ok(())
                })?;
                if existing.finish().as_ref() != hash.finish().as_ref() {
                    return Err(ClientError::Io(io::Error::other(format!(
                        "{} exists with other content; move it away and fetch again (the \
                         message stays on the server)",
                        target.display()
                    ))));
                }
                (Content::File(target), true)
            }
        })
    }
}

/// The file a fetched message is written to.
pub fn message_path(dir: &Path, id: &MessageId) -> PathBuf {
    dir.join(format!("{id}.msg"))
}
