//! Fetching: open and verify each waiting message, put it where the caller said, keep the record
//! of received messages, and only then acknowledge it; set aside what cannot be opened.

use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::debug;
use zeroize::Zeroizing;

use crate::directory;
use crate::envelope::{self, HEADER_LEN, Header, MessageId, OpenError, OpenOptions, Opener};
use crate::files::{AtomicFile, WriteOptions};
use crate::keys::{Identity, KeyId, PublicKey};
use crate::received::{self, Entry, Kind, ReceivedRecord};
use crate::wire::{DATA_FRAME, ErrorCode, Frame};

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
    /// Who sent it: the server, or a contact (relayed messages).
    pub sender: Sender,
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
        self.fetch_kept(output, record, None, None, event).await
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
        self.fetch_kept(output, record, Some(mailbox), None, event)
            .await
    }

    /// [`Client::fetch_to_mailbox`] for a client that also receives from other clients: a
    /// delivered message whose header names another sender than the server is opened with
    /// that sender's key as `senders` (the client's contacts) knows it: a pinned key, or an
    /// accepted directory key. A key it does not know sends for the server's directory once
    /// (over this connection, after the other messages; version 2 only), which `senders`
    /// learns from; each message is then kept in the mailbox under its sender's name. A
    /// sender still unknown ([`ClientError::UnknownKey`]), a key only offered as a change, or
    /// one in conflict with a pin ([`ClientError::UnknownSender`]): the message is set aside,
    /// not acknowledged.
    pub async fn fetch_from_contacts<F>(
        &mut self,
        output: &Output,
        record: &mut ReceivedRecord,
        mailbox: &Mailbox,
        senders: Arc<dyn Senders>,
        event: F,
    ) -> Result<FetchReport, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        self.fetch_kept(output, record, Some(mailbox), Some(senders), event)
            .await
    }

    async fn fetch_kept<F>(
        &mut self,
        output: &Output,
        record: &mut ReceivedRecord,
        mailbox: Option<&Mailbox>,
        senders: Option<Arc<dyn Senders>>,
        mut event: F,
    ) -> Result<FetchReport, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        let listing = self.listing(senders.as_ref()).await?;
        self.writer.write_frame(&Frame::Fetch).await?;
        let mut acked = Vec::new();
        let mut report = FetchReport::default();
        // Messages from keys not known yet, spooled whole until the directory was asked.
        let mut deferred: Vec<Deferred> = Vec::new();
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
                        sender: None,
                        error: &error,
                        again: false,
                    })?;
                    // Never news: without a header it can never be opened, nor recorded.
                    report.set_aside += 1;
                    report.set_aside_again += 1;
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
                Ok(()) => match self.signer(&header, senders.as_ref(), &listing).await? {
                    Signer::Known(key, sender) => {
                        let repeat = known == Some(Kind::Received);
                        let out = if repeat { None } else { Some(output) };
                        // A repeat is not kept twice: the mailbox got it the first time.
                        let copy = if repeat {
                            None
                        } else {
                            mailbox.map(Mailbox::copy)
                        };
                        match self.open_delivery(head, &key, out, copy).await {
                            Ok((mut received, staged)) => {
                                received.sender = sender;
                                keep(mailbox, staged, &mut received, now)
                                    .await
                                    .map(|()| received)
                            }
                            Err(e) => Err(from_whom(e, &header, self.server.id(), &sender)),
                        }
                    }
                    // Not known yet: asked of the directory once the fetch is done. Beyond
                    // MAX_DEFERRED such messages in one fetch (each holds an open file),
                    // the rest are set aside: the next fetch knows their senders.
                    Signer::AskDirectory if deferred.len() >= MAX_DEFERRED => {
                        self.skip_message().await?;
                        let key = header.sender;
                        Err(ClientError::UnknownSender(format!(
                            "from key {key}, not known yet: more than {MAX_DEFERRED} messages \
                             from keys not known yet came in this fetch, and only that many \
                             wait for the directory, read at its end; the next recv_msg \
                             knows the senders that directory taught"
                        )))
                    }
                    Signer::AskDirectory => match self.spool_message(head).await {
                        Ok(spool) => {
                            deferred.push(Deferred {
                                header,
                                known,
                                spool,
                            });
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                    Signer::NotUsable(lookup) => {
                        self.skip_message().await?;
                        Err(not_usable(&header, &lookup, self.server.id(), None))
                    }
                },
            };
            let received = match refused {
                Ok(r) => r,
                Err(error) if is_set_aside(&error) => {
                    set_aside(record, known, &header, now, &error, &mut event, &mut report)?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            self.accepted(
                received,
                &header,
                known,
                now,
                record,
                &mut event,
                &mut report,
            )?;
            acked.push(id);
        };
        let delivered = acked.len() + report.set_aside + deferred.len();
        if count as usize != delivered {
            return Err(ClientError::CountMismatch {
                announced: count,
                sent: delivered,
            });
        }
        self.confirm_removals(&acked).await?;
        if let (false, Some(senders)) = (deferred.is_empty(), senders) {
            let acked = self
                .open_deferred(
                    deferred,
                    output,
                    record,
                    mailbox,
                    senders,
                    &mut event,
                    &mut report,
                )
                .await?;
            self.confirm_removals(&acked).await?;
        }
        Ok(report)
    }

    /// Sends the queued acknowledgements and waits for the server to confirm each removal,
    /// so a second fetch will not repeat them.
    async fn confirm_removals(&mut self, acked: &[MessageId]) -> Result<(), ClientError> {
        self.writer.flush().await?;
        for _ in acked {
            match self.read().await {
                Ok(Frame::Removed { id }) if acked.contains(&id) => {}
                Ok(other) => return Err(unexpected(other)),
                // Said for what it most likely is, not as the server's bare refusal (found by
                // a trial run, when two recv_msg on one folder both fetched everything).
                Err(ClientError::Refused {
                    code: ErrorCode::BadAck,
                    message,
                }) => return Err(ClientError::AckedElsewhere { message }),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reports, records and queues the acknowledgement of a message that verified (and is
    /// kept, if there is a mailbox).
    #[allow(clippy::too_many_arguments)]
    fn accepted<F>(
        &mut self,
        received: Received,
        header: &Header,
        known: Option<Kind>,
        now: u64,
        record: &mut ReceivedRecord,
        event: &mut F,
        report: &mut FetchReport,
    ) -> Result<(), ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        let id = header.message_id;
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
            record.add(entry(Kind::Received, header, now))?;
        }
        // Queued, and sent once FetchDone came: the server reads nothing while it streams
        // a fetch, so acks written during it would wait in the TCP buffers, and enough of
        // them would fill both directions (PROTOCOL.md, "Keep reading while writing").
        self.writer.queue_frame(&Frame::DeliveryAck {
            id,
            tag: received.ack_tag,
        });
        Ok(())
    }

    /// The server's directory, read before a fetch whose `senders` hold keys taken from it
    /// (TLS connections only): those keys are used only while it lists them. `Ok(None)` when
    /// not needed; `Err` (inside) says why it could not be read, and those keys' messages are
    /// then set aside.
    async fn listing(
        &mut self,
        senders: Option<&Arc<dyn Senders>>,
    ) -> Result<Listing, ClientError> {
        let Some(senders) = senders.filter(|_| self.tls.is_some()) else {
            return Ok(None);
        };
        if let Some((read, entries)) = &self.listing
            && read.elapsed() < super::LISTING_FRESH
        {
            return Ok(Some(Ok(entries.clone())));
        }
        let s = senders.clone();
        if !on_blocking_pool(move || s.any_from_directory()).await? {
            return Ok(None);
        }
        Ok(Some(match self.directory().await {
            Ok(mut entries) => {
                // Our own entry is not a contact's.
                let own = self.own_key_id();
                entries.retain(|e| e.key.id() != own);
                let entries = Arc::new(entries);
                self.listing = Some((std::time::Instant::now(), entries.clone()));
                Ok(entries)
            }
            // A refused answer (bad signature, too many entries) was read to its end: the
            // connection goes on. Anything else broke it, and the fetch fails.
            Err(ClientError::BadDirectory(why)) => Err(why),
            Err(e) => return Err(e),
        }))
    }

    /// The key to open a delivered message with, and who sent it; a directory contact's key
    /// only if `listing` (read before this fetch) still lists it.
    async fn signer(
        &self,
        header: &Header,
        senders: Option<&Arc<dyn Senders>>,
        listing: &Listing,
    ) -> Result<Signer, ClientError> {
        let server = self.server.id();
        let senders = match senders {
            Some(s) if header.sender != server => s.clone(),
            // The server's key, or no contacts: today's path (a message from another client
            // then fails to verify and is set aside).
            _ => return Ok(Signer::Known(self.server.clone(), Sender::Server)),
        };
        let key = header.sender;
        let lookup = on_blocking_pool(move || senders.lookup(&key)).await?;
        let lookup = match listing {
            Some(Ok(entries)) => still_listed(lookup, &key, entries),
            Some(Err(why)) => unconfirmed(lookup, || {
                format!(
                    "the server's directory was REFUSED: {why}; someone may be tampering with \
                     the server or the connection"
                )
            }),
            None if self.tls.is_none() => unconfirmed(lookup, || {
                "a version 1 connection (--plain-v1) has no directory: receive without \
                 --plain-v1"
                    .to_owned()
            }),
            None => unconfirmed(lookup, || "the directory was not read".to_owned()),
        };
        Ok(match lookup {
            SenderLookup::Usable { key, name, pinned } => {
                Signer::Known(key, Sender::Peer { name, pinned })
            }
            SenderLookup::Unknown if self.tls.is_some() => Signer::AskDirectory,
            other => Signer::NotUsable(other),
        })
    }

    /// Writes a delivered message (its first bytes `head`, the rest still to read) whole to
    /// an unnamed temporary file: ciphertext only, gone when dropped. Bounded by what the
    /// client would accept opening.
    async fn spool_message(&mut self, head: Vec<u8>) -> Result<std::fs::File, ClientError> {
        // Sealing overhead: asymmetric mode's RSA blocks are at most ~1.5 times the plaintext.
        let limit = self
            .config
            .max_message
            .saturating_mul(2)
            .saturating_add(1 << 20);
        let mut written = head.len() as u64;
        let mut spool = on_blocking_pool(move || {
            let mut f = tempfile::tempfile()?;
            f.write_all(&head)?;
            Ok(f)
        })
        .await?;
        loop {
            match self.read().await? {
                Frame::Deliver(data) => {
                    written = written.saturating_add(data.len() as u64);
                    if written > limit {
                        self.skip_message().await?;
                        return Err(ClientError::Open(OpenError::TooLarge { limit }));
                    }
                    spool = on_blocking_pool(move || {
                        let mut f = spool;
                        f.write_all(&data)?;
                        Ok(f)
                    })
                    .await?;
                }
                Frame::DeliverEnd => return Ok(spool),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// After the fetch: asks the server's directory once, lets `senders` learn from it, and
    /// opens each deferred message whose sender is now known and, if known from the directory
    /// only, still listed by it (kept, recorded, acks queued); the others are set aside.
    /// Returns the ids acknowledged.
    #[allow(clippy::too_many_arguments)]
    async fn open_deferred<F>(
        &mut self,
        deferred: Vec<Deferred>,
        output: &Output,
        record: &mut ReceivedRecord,
        mailbox: Option<&Mailbox>,
        senders: Arc<dyn Senders>,
        event: &mut F,
        report: &mut FetchReport,
    ) -> Result<Vec<MessageId>, ClientError>
    where
        F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
    {
        let mut learnt = Arc::new(Vec::new());
        let directory_error = match self.directory().await {
            Ok(mut entries) => {
                // Our own entry is not a contact (nor a key to trust): left out.
                let own = self.own_key_id();
                entries.retain(|e| e.key.id() != own);
                let (learner, entries) = (senders.clone(), Arc::new(entries));
                learnt = entries.clone();
                // The newest answer, for the fetches that judge directory keys against it.
                self.listing = Some((std::time::Instant::now(), entries.clone()));
                match on_blocking_pool(move || learner.learn(&entries)).await {
                    Ok(notes) => {
                        if !notes.is_empty() {
                            event(FetchEvent::Directory { notes: &notes })?;
                        }
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
            // A refused answer was read to its end: the connection goes on. Anything else
            // broke it.
            Err(ClientError::BadDirectory(why)) => Some(why),
            Err(e) => return Err(e),
        };
        let mut acked = Vec::new();
        for d in deferred {
            let header = d.header;
            let now = envelope::unix_now();
            let (s, key, entries) = (senders.clone(), header.sender, learnt.clone());
            let lookup = match &directory_error {
                Some(why) => unconfirmed(on_blocking_pool(move || s.lookup(&key)).await?, || {
                    format!("the directory could not be used: {why}")
                }),
                None => {
                    let found = on_blocking_pool(move || s.lookup_after(&key, &entries)).await?;
                    still_listed(found, &key, &learnt)
                }
            };
            let opened = match lookup {
                SenderLookup::Usable { key, name, pinned } => {
                    let repeat = d.known == Some(Kind::Received);
                    let out = (!repeat).then(|| output.clone());
                    let copy = if repeat {
                        None
                    } else {
                        mailbox.map(Mailbox::copy)
                    };
                    let capped = copy.is_some();
                    let opts = self.open_options(out.as_ref(), capped);
                    let identity = self.identity.clone();
                    let spool = d.spool;
                    let opened = on_blocking_pool(move || {
                        open_spooled(spool, identity, &key, &opts, out.as_ref(), capped, copy)
                    })
                    .await;
                    let sender = Sender::Peer { name, pinned };
                    match opened {
                        Ok((mut received, staged)) => {
                            received.sender = sender;
                            keep(mailbox, staged, &mut received, now)
                                .await
                                .map(|()| received)
                        }
                        Err(e) => Err(from_whom(e, &header, self.server.id(), &sender)),
                    }
                }
                other => Err(not_usable(
                    &header,
                    &other,
                    self.server.id(),
                    directory_error.as_deref(),
                )),
            };
            match opened {
                Ok(received) => {
                    self.accepted(received, &header, d.known, now, record, event, report)?;
                    acked.push(header.message_id);
                }
                Err(error) if is_set_aside(&error) => {
                    set_aside(record, d.known, &header, now, &error, event, report)?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(acked)
    }

    /// The opening limits for a message going to `output` (`None`: only verified);
    /// `capped`: a mailbox keeps it, so a message over a memory limit is not an error.
    fn open_options(&self, output: Option<&Output>, capped: bool) -> OpenOptions {
        OpenOptions {
            max_plaintext: match output {
                Some(Output::Memory { limit }) if !capped => (*limit).min(self.config.max_message),
                Some(_) | None => self.config.max_message,
            },
            asymmetric_limit: self.config.max_asymmetric,
        }
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
        key: &PublicKey,
        output: Option<&Output>,
        copy: Option<SealedCopy>,
    ) -> Result<(Received, Option<StagedCopy>), ClientError> {
        let mut head = head;
        let rest = if head.len() > HEADER_LEN {
            head.split_off(HEADER_LEN)
        } else {
            Vec::new()
        };
        // With a mailbox, the memory limit is the output's, not the message's: what is over it
        // is still verified and kept (`PlainSink::Capped`).
        let capped = copy.is_some();
        let opts = self.open_options(output, capped);
        let output = output.cloned();
        let started = Opener::new(&head, self.identity.clone(), key, &opts)
            .map_err(ClientError::from)
            .map(|opener| (opener, output));
        let mut state: Result<Unpack, ClientError> = match started {
            Ok((opener, output)) => {
                on_blocking_pool(move || {
                    let mut u = Unpack::start(opener, &head, output.as_ref(), capped, copy)?;
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
    /// Of `set_aside`, those that are no news, so that a client waiting for a message waits on
    /// past them: the record held them already (set aside, or received, by an earlier fetch),
    /// or not even their header could be read (they can never be opened, nor recorded).
    pub set_aside_again: usize,
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
    /// A message set aside, with why; `id` and `sender` (the key id its header names as
    /// signer) are `None` if not even its header could be read.
    SetAside {
        id: Option<MessageId>,
        sender: Option<KeyId>,
        error: &'a ClientError,
        /// The client's record holds it already, from an earlier fetch that set it aside or
        /// received it: a script or a person can tell a message still waiting from a new one.
        /// `false` when not even the header could be read (there is nothing to look up).
        again: bool,
    },
    /// The server's directory was fetched (a message came from a key not known yet) and
    /// changed the contacts: one line per new name, change or conflict, to tell the user.
    Directory { notes: &'a [String] },
}

/// Who sent a fetched message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The server (its own key signed the message).
    Server,
    /// Another client, under its contact name; `pinned`: its key was pinned by the user
    /// (else it came from the server's directory).
    Peer { name: String, pinned: bool },
}

/// What the client's contacts say about the key that signed a message from another client.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SenderLookup {
    /// A pinned key, or an accepted directory key: open with it. A directory key is used for
    /// a delivery only once the directory read after the fetch still lists it under `name`
    /// (else [`SenderLookup::Unlisted`]).
    Usable {
        key: PublicKey,
        name: String,
        pinned: bool,
    },
    /// The key of `name`, a contact taken from the server's directory, which the directory no
    /// longer lists under that name: the server stopped vouching for it (its client was
    /// untrusted, or its key replaced by `listed`). Its messages are set aside: the signature
    /// does not say when it was made, so one made after the key was given up (lost, stolen)
    /// cannot be told from one made before. Pinning the key is the user's own word for it.
    Unlisted {
        name: String,
        /// The key the directory lists for `name` now, if it lists the name at all.
        listed: Option<KeyId>,
    },
    /// The key of `name`, a contact from the directory, when the directory could not be read
    /// to check that it still lists it (`why`): set aside until it can be.
    Unconfirmed { name: String, why: String },
    /// Only offered by the directory as a changed key for `name`, not accepted.
    Changed { name: String },
    /// Offered by the directory for `name`, whom the user pinned with another key (`pinned`):
    /// the server (or whoever controls it) substitutes a key. Never usable, and never to be
    /// pinned on the directory's word.
    ConflictsWithPin { name: String, pinned: KeyId },
    /// The key of a contact stored under a reserved name (`server`) before that name was
    /// refused: never used, so nothing from it shows as from the server.
    Reserved { name: String },
    /// Not a key of any contact.
    Unknown,
}

/// The client's contacts, as fetching needs them ([`super::contacts::Contacts`] is one).
/// Called on the blocking pool.
pub trait Senders: Send + Sync {
    /// What the contacts know about `key`.
    fn lookup(&self, key: &KeyId) -> Result<SenderLookup, ClientError>;
    /// [`Senders::lookup`] once the server's verified directory `entries` were learnt: a key
    /// the directory offers for a name pinned with another key is
    /// [`SenderLookup::ConflictsWithPin`] (nothing about it is recorded, so only the
    /// directory answer can say so). By default, [`Senders::lookup`].
    fn lookup_after(
        &self,
        key: &KeyId,
        entries: &[directory::Entry],
    ) -> Result<SenderLookup, ClientError> {
        let _ = entries;
        self.lookup(key)
    }
    /// Applies a verified directory; returns a line for each thing worth telling the user
    /// (a new name, a changed key, a conflict with a pin).
    fn learn(&self, entries: &[directory::Entry]) -> Result<Vec<String>, ClientError>;
    /// Whether any usable key was taken from the directory ([`SenderLookup::Usable`] with
    /// `pinned` false): a fetch then reads the directory first, as such a key is used only
    /// while the directory lists it. By default `true` (read it every time).
    fn any_from_directory(&self) -> Result<bool, ClientError> {
        Ok(true)
    }
}

/// How a delivered message is to be opened.
enum Signer {
    Known(PublicKey, Sender),
    /// A key not known yet: spooled, and opened only if the directory, asked once the fetch
    /// is done, lists it (TLS connections only).
    AskDirectory,
    NotUsable(SenderLookup),
}

/// Messages from keys not known yet that one fetch keeps aside (an open temporary file each)
/// until the directory was read; more are set aside and come with the next fetch.
const MAX_DEFERRED: usize = 64;

/// The directory as read before a fetch ([`Client::listing`]): `None` when not read, else its
/// verified entries or why it was refused.
type Listing = Option<Result<Arc<Vec<directory::Entry>>, String>>;

/// A message from a key not known yet, kept aside (sealed, in a temporary file) until the
/// directory was asked.
struct Deferred {
    header: Header,
    known: Option<Kind>,
    spool: std::fs::File,
}

/// `found`, unless it is a directory contact's key that the directory's `entries`, read just
/// now, no longer list under the contact's name: the server vouches for a key only while it
/// lists it. A pinned key is the user's own word and stands.
fn still_listed(found: SenderLookup, key: &KeyId, entries: &[directory::Entry]) -> SenderLookup {
    match found {
        SenderLookup::Usable {
            name,
            pinned: false,
            ..
        } if !entries.iter().any(|e| e.name == name && e.key.id() == *key) => {
            let listed = entries.iter().find(|e| e.name == name).map(|e| e.key.id());
            SenderLookup::Unlisted { name, listed }
        }
        other => other,
    }
}

/// `found`, unless it is a directory contact's key and the directory could not be read to
/// check it (`why`): [`SenderLookup::Unconfirmed`]. A pinned key stands.
fn unconfirmed(found: SenderLookup, why: impl FnOnce() -> String) -> SenderLookup {
    match found {
        SenderLookup::Usable {
            name,
            pinned: false,
            ..
        } => SenderLookup::Unconfirmed { name, why: why() },
        other => other,
    }
}

/// The set-aside error for a message whose signer's key is not usable; `server` is the server
/// key this client trusts.
fn not_usable(
    header: &Header,
    lookup: &SenderLookup,
    server: KeyId,
    directory: Option<&str>,
) -> ClientError {
    let key = header.sender;
    ClientError::UnknownSender(match lookup {
        SenderLookup::Changed { name } => format!(
            "from key {key}, which the server's directory offers as a CHANGED key for {name}, not \
             accepted; if {name} really has a new key (check its fingerprint with {name}), \
             `letterlock client contacts --accept {name} --key {key}`, then receive again"
        ),
        SenderLookup::ConflictsWithPin { name, pinned } => format!(
            "from key {key}: this key is offered for {name}, whom you pinned as {pinned}; it is \
             not {name}'s pinned key: do not trust it without checking with {name} (someone may \
             be substituting {name}'s key)"
        ),
        SenderLookup::Reserved { name } => format!(
            "from key {key}, the key of the contact stored as {name:?}, a name reserved for the \
             server's own messages (stored before letterlock refused it): not shown, so it cannot \
             pass for the server's. `letterlock client untrust {name}`, pin the key under \
             another name (`letterlock client trust FILE --name NAME`), then receive again"
        ),
        SenderLookup::Unlisted {
            name,
            listed: Some(now),
        } => format!(
            "from key {key}, {name}'s key until the server's directory replaced it with {now}: \
             the server no longer vouches for the old key, so a message signed with it is not \
             accepted. Ask {name} to send it again (their `letterlock client receipts` shows \
             it undelivered); it will come signed with the new key, used once you accept it \
             (`letterlock client contacts` shows it, `letterlock client contacts --accept \
             {name}` takes it after you checked it with {name})"
        ),
        SenderLookup::Unlisted { name, listed: None } => format!(
            "from key {key}, the key of {name}, a contact taken from the server's directory, \
             which no longer lists {name}: the server stopped vouching for that key (its \
             operator removed {name}), so a message signed with it is not accepted. If you know \
             the key is {name}'s and was not lost or stolen, pin it yourself: `letterlock \
             client trust FILE --name {name}` (FILE: {name}'s public key, checked with {name} \
             out of band), then receive again"
        ),
        SenderLookup::Unconfirmed { name, why } => format!(
            "from key {key}, the key of {name}, a contact taken from the server's directory, \
             which could not be checked to still list {name} ({why}); receive again once it \
             can be. If you know the key is {name}'s, pinning it yourself (`letterlock client \
             trust FILE --name {name}`) makes the directory unneeded"
        ),
        SenderLookup::Usable { .. } | SenderLookup::Unknown => {
            return ClientError::UnknownKey {
                key,
                server,
                directory: directory.map(str::to_owned),
            };
        }
    })
}

/// Records, counts and reports a message set aside (not acknowledged: it stays on the
/// server).
fn set_aside<F>(
    record: &mut ReceivedRecord,
    known: Option<Kind>,
    header: &Header,
    now: u64,
    error: &ClientError,
    event: &mut F,
    report: &mut FetchReport,
) -> Result<(), ClientError>
where
    F: FnMut(FetchEvent<'_>) -> Result<(), ClientError>,
{
    report.set_aside += 1;
    match known {
        None => record.add(entry(Kind::SetAside, header, now))?,
        // Received before (it is a repeat, set aside now: stale, or its sender's key changed)
        // or set aside before: either way seen already.
        Some(Kind::SetAside | Kind::Received) => report.set_aside_again += 1,
    }
    event(FetchEvent::SetAside {
        id: Some(header.message_id),
        sender: Some(header.sender),
        error,
        again: known.is_some(),
    })
}

/// Opens a spooled message (header first) with `key`, as [`Client::open_delivery`] opens one
/// arriving in frames. Blocking.
fn open_spooled(
    mut file: std::fs::File,
    identity: Arc<dyn Identity>,
    key: &PublicKey,
    opts: &OpenOptions,
    output: Option<&Output>,
    capped: bool,
    copy: Option<SealedCopy>,
) -> Result<(Received, Option<StagedCopy>), ClientError> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut head = vec![0u8; HEADER_LEN];
    let n = envelope::read_full(&mut file, &mut head)?;
    head.truncate(n);
    let opener = Opener::new(&head, identity, key, opts)?;
    let mut u = Unpack::start(opener, &head, output, capped, copy)?;
    let mut buf = vec![0u8; DATA_FRAME];
    loop {
        let n = envelope::read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        u.feed(buf.get(..n).unwrap_or_default())?;
    }
    u.finish()
}

/// An opening failure of a message another client signed (its header names another sender
/// than the server) says so, with the sender's key id and contact name: "a message from the
/// server was refused" would blame the wrong party.
fn from_whom(e: ClientError, header: &Header, server: KeyId, sender: &Sender) -> ClientError {
    match (e, sender) {
        (ClientError::Open(source), Sender::Peer { name, .. }) => ClientError::PeerOpen {
            key: Box::new(header.sender),
            name: Some(name.clone()),
            source,
        },
        (ClientError::Open(source), Sender::Server) if header.sender != server => {
            ClientError::PeerOpen {
                key: Box::new(header.sender),
                name: None,
                source,
            }
        }
        (e, _) => e,
    }
}

/// Whether a failure concerns the one message (set it aside, deliver the next) rather than the
/// connection or this machine (stop).
fn is_set_aside(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Open(_)
            | ClientError::PeerOpen { .. }
            | ClientError::Stale(_)
            | ClientError::MailboxConflict { .. }
            | ClientError::UnknownSender(_)
            | ClientError::UnknownKey { .. }
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
    // A relayed message is kept under its sender's contact name; the server's, under the
    // mailbox's name for the server.
    let name = match &received.sender {
        Sender::Peer { name, .. } => Some(name.clone()),
        Sender::Server => None,
    };
    let kept = mailbox
        .keep(
            staged,
            name.as_deref(),
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
    /// Starts opening with `opener` (made from `head`): the plaintext to `output` (`None`:
    /// only verified), the sealed bytes, header first, to `copy`.
    fn start(
        opener: Opener,
        head: &[u8],
        output: Option<&Output>,
        capped: bool,
        copy: Option<SealedCopy>,
    ) -> Result<Self, ClientError> {
        let header = *opener.header();
        let sink = match output {
            Some(output) => PlainSink::new(output, &header, capped)?,
            None => PlainSink::Discard,
        };
        let mut copy = copy;
        if let Some(copy) = &mut copy {
            copy.write(head)?;
        }
        Ok(Unpack {
            opener,
            sink,
            plain: Zeroizing::new(Vec::new()),
            copy,
        })
    }

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
            sender: Sender::Server,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PublicKey {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/");
        crate::keys::load_public(Path::new(&format!("{path}{name}_public.pem"))).unwrap()
    }

    fn listed(name: &str, key: &PublicKey) -> directory::Entry {
        directory::Entry {
            serial: 1,
            since: 1_800_000_000,
            name: name.to_owned(),
            key: key.clone(),
        }
    }

    fn usable(name: &str, key: &PublicKey, pinned: bool) -> SenderLookup {
        SenderLookup::Usable {
            key: key.clone(),
            name: name.to_owned(),
            pinned,
        }
    }

    /// A directory contact is usable only while the directory lists its key under its name;
    /// a pinned one whatever the directory says.
    #[test]
    fn a_directory_key_stands_only_while_listed_under_its_name() {
        let (bob, rotated, mallory) = (key("bob3072"), key("bob4096"), key("mallory"));
        let id = bob.id();
        let still = still_listed(usable("bob", &bob, false), &id, &[listed("bob", &bob)]);
        assert!(matches!(still, SenderLookup::Usable { ref name, .. } if name == "bob"));
        let gone = still_listed(usable("bob", &bob, false), &id, &[listed("m", &mallory)]);
        assert!(matches!(gone, SenderLookup::Unlisted { ref name, listed: None } if name == "bob"));
        let replaced = still_listed(usable("bob", &bob, false), &id, &[listed("bob", &rotated)]);
        assert!(
            matches!(replaced, SenderLookup::Unlisted { listed: Some(now), .. } if now == rotated.id())
        );
        // The same key under another name is not this contact listed.
        let renamed = still_listed(usable("bob", &bob, false), &id, &[listed("robert", &bob)]);
        assert!(matches!(
            renamed,
            SenderLookup::Unlisted { listed: None, .. }
        ));
        let pinned = still_listed(usable("bob", &bob, true), &id, &[]);
        assert!(matches!(pinned, SenderLookup::Usable { pinned: true, .. }));
    }
}
