//! Client to client (docs/PROTOCOL.md §15): messages one client seals for another, which this
//! server stores and delivers but cannot open; the receipts that prove their delivery; and the
//! signed directory of the clients it trusts.
//!
//! A relayed message (`Relay{commitment}`, then `Send`… `SendEnd`) is checked from its header
//! alone, in the spec's order: the sender is the authenticated client (code 3), the recipient
//! a client trusted now (code 12; the server itself is code 3), the mode accepted (7), the time
//! within the window (5); its size is counted as it arrives (6). Its bytes are streamed into
//! the store's blob writer on the blocking pool while its [`SealedIdentity`] (with the
//! RECIPIENT's modulus length) is computed from them; once `SendEnd` is read a task stores it
//! (`Store::enqueue_relay`) and only then answers `Stored`, while the loop already reads the
//! next frame (pipelining, under the same in-flight permits as received messages).
//!
//! Invariants: no RSA private operation and no decryption for a relayed message (the server
//! has no key that opens it); nothing of its content is logged; `Stored` only after the store
//! returned, i.e. after the commit.
//!
//! The directory: entries signed once per trust generation on the blocking pool and cached
//! ([`DirectoryCache`]); a request while the trust list is unchanged costs no RSA operation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::directory::{Entry, SignedEntry};
use crate::envelope::{self, HEADER_LEN, Header, MessageId, Mode};
use crate::keys::{Identity, KeyId, TrustList, Trusted};
use crate::store::{self, Body, RelayOutcome, RelayRecord, SealedIdentity, Store};
use crate::wire::{ErrorCode, Frame, MAX_DIRECTORY_PART, ReceiptInfo};

use super::handler::{Handler, send};
use super::receive::{FEED_BATCH, SEALING_OVERHEAD};
use super::{Fail, Server, on_blocking_pool};

/// What a version 1 connection is told when it asks for client-to-client messaging.
const NEEDS_VERSION_2: &str = "client-to-client messaging needs protocol version 2 (TLS)";

/// The directory entries signed for one trust list, kept until the list changes.
#[derive(Default)]
pub(super) struct DirectoryCache {
    /// The last signing. A tokio mutex, held while signing, so requests arriving together
    /// wait for one signing instead of each signing again.
    signed: tokio::sync::Mutex<Option<SignedDirectory>>,
}

/// The entries signed for one trust generation.
struct SignedDirectory {
    /// The trust generation they were signed at (`None`: a fixed list, which never changes).
    generation: Option<u64>,
    /// One per trusted client, sorted by name.
    entries: Arc<Vec<SignedEntry>>,
}

impl<S: Store, R: AsyncRead + Unpin + Send + 'static> Handler<S, R> {
    /// Refuses client-to-client frames on a version 1 connection (code 1).
    fn needs_tls(&self) -> Result<(), Fail> {
        if self.server.tls {
            Ok(())
        } else {
            Err(Fail::new(ErrorCode::Protocol, NEEDS_VERSION_2))
        }
    }

    /// `Relay{commitment}`: the next frame must be the message's first `Send`; the message is
    /// read here and stored by a task (pipelining), at most `max_in_flight` at once.
    pub(super) async fn start_relay(&mut self, commitment: [u8; 32]) -> Result<(), Fail> {
        self.needs_tls()?;
        let first = match self.next_frame().await? {
            Frame::Send(first) => first,
            other => {
                return Err(Fail::new(
                    ErrorCode::Protocol,
                    format!("expected Send after Relay, got {}", other.name()),
                ));
            }
        };
        let permits = self.in_flight_permits().await?;
        let job = self.relay(first, commitment).await?;
        self.work.spawn(async move {
            let _permits = permits;
            job.complete().await
        });
        Ok(())
    }

    /// Reads one relayed message to its `SendEnd`: header checks first, then its bytes into
    /// the store's blob writer, batch by batch on the blocking pool, with its identity.
    async fn relay(&mut self, first: Vec<u8>, commitment: [u8; 32]) -> Result<RelayJob<S>, Fail> {
        let (head, header) = self.read_head(first).await?;
        let recipient = self.check_relay_header(&header).await?;
        let config = &self.server.config;
        // Before any byte is stored. Concurrent relays to one recipient may each pass this
        // check, so the bound can be passed by as many as are in flight at once: a bound on
        // the disk a sender can take, not an exact quota.
        let waiting = self
            .server
            .store
            .waiting_relayed(&recipient.key.id().0)
            .await
            .map_err(Fail::store)?;
        if waiting >= config.max_waiting_relayed {
            warn!(sender = %crate::text::quoted(&self.client.name), recipient = %crate::text::quoted(&recipient.name), waiting, "relay refused: the recipient's mailbox is full");
            return Err(Fail::new(
                ErrorCode::Unavailable,
                "the recipient's mailbox on this server is full; try later",
            ));
        }
        let cap = match header.mode {
            Mode::Hybrid => config.max_hybrid.saturating_add(SEALING_OVERHEAD),
            Mode::Asymmetric => {
                asymmetric_cap(config.max_asymmetric, recipient.key.modulus_len() as u64)
            }
        };
        let mut intake = Ok(RelayIntake {
            identity: SealedIdentity::new(&header, recipient.key.modulus_len()),
            // The identity stands in for a SHA-256 of the sealed bytes: not computed.
            blob: self.server.store.blob_writer().without_sha256(),
        });
        let too_large = || {
            Fail::new(
                ErrorCode::TooLarge,
                format!(
                    "message larger than this server accepts for {} messages",
                    header.mode
                ),
            )
        };
        let mut pending = head;
        let mut seen = pending.len() as u64;
        if seen > cap {
            return Err(too_large());
        }
        while let Some(more) = self.next_data().await? {
            // Counted as they arrive, refused before they are kept.
            seen = seen.saturating_add(more.len() as u64);
            if seen > cap {
                return Err(too_large());
            }
            if intake.is_err() {
                // The store's writer failed: read the message to its end, keep nothing.
                continue;
            }
            pending.extend_from_slice(&more);
            if pending.len() >= FEED_BATCH {
                let batch = std::mem::take(&mut pending);
                intake = match intake {
                    Ok(mut relay) => {
                        on_blocking_pool(move || relay.feed(&batch).map(|()| relay)).await?
                    }
                    failed => failed,
                };
            }
        }
        let worker = tokio::task::spawn_blocking(move || {
            let mut relay = intake?;
            relay.feed(&pending)?;
            relay.finish()
        });
        Ok(RelayJob {
            header,
            commitment,
            recipient,
            worker,
            server: self.server.clone(),
            client: self.client.clone(),
            out: self.conn.out.clone(),
        })
    }

    /// The spec's checks of a relayed message's header, in order; returns the recipient.
    async fn check_relay_header(&self, h: &Header) -> Result<Trusted, Fail> {
        if h.sender != self.client.key.id() {
            return Err(Fail::refused(
                "the message's sender is not the authenticated client",
            ));
        }
        if h.recipient == self.server.identity.public().id() {
            return Err(Fail::refused(
                "a message for the server is sent without Relay",
            ));
        }
        let snapshot = self
            .server
            .trust
            .recent(&*self.server.store, self.server.config.trust_recheck)
            .await
            .map_err(|e| super::handler::trust_unreadable(self.conn.peer, e))?;
        let Some(recipient) = snapshot.clients.get(&h.recipient).cloned() else {
            return Err(Fail::new(
                ErrorCode::UnknownRecipient,
                "the recipient is not a client this server trusts",
            ));
        };
        self.check_mode_and_time(h)?;
        Ok(recipient)
    }

    /// The next frame, within the idle timeout.
    async fn next_frame(&mut self) -> Result<Frame, Fail> {
        tokio::time::timeout(
            self.server.config.idle_timeout,
            self.conn.reader.read_frame(),
        )
        .await
        .map_err(|_| Fail::new(ErrorCode::Timeout, "idle timeout"))?
        .map_err(Fail::from_conn)
    }

    /// `Receipts{ids}`: one `ReceiptList` with the receipts of those ids among the messages
    /// THIS client relayed: with its authenticated key, or with a key its name had before
    /// (`server trust NEW --name NAME --replace`), so a rotation does not cost the receipts of
    /// what was relayed before it ([`own_keys`]).
    pub(super) async fn send_receipts(&mut self, ids: Vec<MessageId>) -> Result<(), Fail> {
        self.needs_tls()?;
        let ids: Vec<store::MessageId> = ids.iter().map(|id| id.0).collect();
        let current = self.client.key.id().0;
        let history = self.server.store.client_keys().await.map_err(Fail::store)?;
        let mut receipts = Vec::new();
        for key in own_keys(&history, &self.client.name, &current) {
            let mut found = self
                .server
                .store
                .receipts(&key, &ids)
                .await
                .map_err(Fail::store)?;
            // Ids are random (16 bytes): the same id under two keys of one client is not
            // expected; the first key's receipt (the newest) is kept, once.
            found.retain(|r| {
                !receipts
                    .iter()
                    .any(|k: &store::Receipt| k.message_id == r.message_id)
            });
            receipts.append(&mut found);
        }
        let receipts = receipts
            .into_iter()
            .map(|r| ReceiptInfo {
                id: MessageId(r.message_id),
                recipient: KeyId(r.recipient_key_id),
                tag: r.ack_tag,
                delivered: r.delivered,
            })
            .collect();
        send(&self.conn.out, Frame::ReceiptList { receipts }).await
    }

    /// `Directory`: the trusted clients as of now, each entry signed by the server's key, in
    /// parts of at most [`MAX_DIRECTORY_PART`] entries (one empty part when nobody is
    /// trusted).
    pub(super) async fn send_directory(&mut self) -> Result<(), Fail> {
        self.needs_tls()?;
        let entries = self.server.directory().await?;
        for part in directory_parts(&entries) {
            send(&self.conn.out, part).await?;
        }
        debug!(client = %crate::text::quoted(&self.client.name), entries = entries.len(), "directory sent");
        Ok(())
    }
}

impl<S: Store> Server<S> {
    /// The signed directory of the clients trusted now: from the cache while the trust
    /// generation is the one it was signed at, else signed again (on the blocking pool, one
    /// signature per entry) and cached.
    async fn directory(&self) -> Result<Arc<Vec<SignedEntry>>, Fail> {
        let snapshot = self.trust.now(&*self.store).await.map_err(|e| {
            warn!(error = %e, "cannot read the trusted clients for the directory");
            match e {
                super::trust::TrustError::Store(e) => Fail::store(e),
                super::trust::TrustError::Tls(_) => Fail::internal(),
            }
        })?;
        let generation = snapshot.generation();
        let mut cached = self.directory.signed.lock().await;
        if let Some(signed) = cached.as_ref()
            && signed.generation == generation
        {
            return Ok(signed.entries.clone());
        }
        let clients = snapshot.clients.clone();
        let since = snapshot.since.clone();
        let identity = self.identity.clone();
        let serial = generation.unwrap_or(0);
        let entries =
            on_blocking_pool(move || sign_directory(&clients, &since, serial, &*identity))
                .await?
                .map_err(|e| {
                    warn!(error = %e, "cannot sign the directory");
                    Fail::internal()
                })?;
        let entries = Arc::new(entries);
        info!(serial, entries = entries.len(), "directory signed");
        *cached = Some(SignedDirectory {
            generation,
            entries: entries.clone(),
        });
        Ok(entries)
    }
}

/// The `DirectoryPart` frames of one answer: at most [`MAX_DIRECTORY_PART`] entries each, in
/// order, `last` on the final one; one empty last part when there is no entry.
fn directory_parts(entries: &[SignedEntry]) -> Vec<Frame> {
    if entries.is_empty() {
        return vec![Frame::DirectoryPart {
            last: true,
            entries: Vec::new(),
        }];
    }
    let count = entries.len().div_ceil(MAX_DIRECTORY_PART);
    entries
        .chunks(MAX_DIRECTORY_PART)
        .enumerate()
        .map(|(n, part)| Frame::DirectoryPart {
            last: n + 1 == count,
            entries: part.to_vec(),
        })
        .collect()
}

/// One signed entry per trusted client, sorted by name, all with `serial`.
fn sign_directory(
    clients: &TrustList,
    since: &HashMap<[u8; 32], u64>,
    serial: u64,
    identity: &dyn Identity,
) -> Result<Vec<SignedEntry>, crate::directory::DirectoryError> {
    let mut trusted: Vec<&Trusted> = clients.iter().collect();
    trusted.sort_by(|a, b| a.name.cmp(&b.name));
    trusted
        .into_iter()
        .map(|client| {
            Entry {
                serial,
                since: since.get(&client.key.id().0).copied().unwrap_or(0),
                name: client.name.clone(),
                key: client.key.clone(),
            }
            .sign(identity)
        })
        .collect()
}

/// A relayed message whose bytes have all arrived, being written out on the blocking pool,
/// with what its task needs to store it and answer `Stored`.
struct RelayJob<S> {
    header: Header,
    commitment: [u8; 32],
    recipient: Trusted,
    worker: tokio::task::JoinHandle<Result<Relayed, std::io::Error>>,
    server: Arc<Server<S>>,
    /// The sender, for the record and the log.
    client: Trusted,
    /// Where `Stored` goes.
    out: mpsc::Sender<Frame>,
}

impl<S: Store> RelayJob<S> {
    /// Waits for the body, stores the message durably, then answers `Stored`.
    async fn complete(self) -> Result<(), Fail> {
        let RelayJob {
            header,
            commitment,
            recipient,
            worker,
            server,
            client,
            out,
        } = self;
        let Relayed { body, identity } = match worker.await {
            Ok(Ok(relayed)) => relayed,
            Ok(Err(e)) => return Err(Fail::store_write(e)),
            Err(_) => return Err(Fail::internal()),
        };
        let id = header.message_id;
        let size = body.len();
        let record = RelayRecord {
            sender_key_id: client.key.id().0,
            sender_name: client.name.clone(),
            recipient_key_id: recipient.key.id().0,
            recipient_name: recipient.name.clone(),
            message_id: id.0,
            created: header.created,
            received: envelope::unix_now(),
            mode: header.mode.to_byte(),
            content_hash: identity,
            commitment,
            body,
        };
        let counters = &server.receiving;
        match server
            .store
            .enqueue_relay(record)
            .await
            .map_err(Fail::store)?
        {
            RelayOutcome::Stored => {
                counters.relayed.fetch_add(1, Ordering::Relaxed);
                // Routing only: who, to whom, how much; never a byte of content.
                info!(
                    from = %crate::text::quoted(&client.name),
                    to = %crate::text::quoted(&recipient.name),
                    mode = %header.mode,
                    sealed = size,
                    %id,
                    "relayed: stored for the recipient, unopened"
                );
            }
            RelayOutcome::Duplicate => {
                counters.relay_repeats.fetch_add(1, Ordering::Relaxed);
                info!(from = %crate::text::quoted(&client.name), %id, "repeat of a relayed message: stored already");
            }
            RelayOutcome::Conflict => {
                warn!(from = %crate::text::quoted(&client.name), %id, "relayed message id already used for another message");
                return Err(Fail::new(
                    ErrorCode::Replay,
                    "this message id was already used for a different message",
                ));
            }
        }
        send(&out, Frame::Stored { id }).await
    }
}

/// The blocking side of relaying one message: the store's writer keeps the sealed bytes as
/// they are, and the identity is computed from the same bytes as they pass. Nothing is
/// decrypted.
struct RelayIntake {
    identity: SealedIdentity,
    blob: store::BlobWriter,
}

impl RelayIntake {
    fn feed(&mut self, data: &[u8]) -> Result<(), std::io::Error> {
        use std::io::Write;
        self.blob.write_all(data)?;
        self.identity.update(data);
        Ok(())
    }

    /// Makes the sealed bytes durable in the store's folder (or database chunks).
    fn finish(self) -> Result<Relayed, std::io::Error> {
        let body = self.blob.finish().map_err(std::io::Error::other)?;
        Ok(Relayed {
            body,
            identity: self.identity.finish(),
        })
    }
}

/// What the blocking side hands back for a relayed message.
struct Relayed {
    body: Body,
    /// The message's [`SealedIdentity`] with the recipient's modulus length.
    identity: [u8; 32],
}

/// The largest sealed asymmetric message for a recipient with a `k`-byte modulus whose
/// plaintext is within `limit` (PROTOCOL.md section 5): the header, then one `k`-byte OAEP
/// block per `k - 66` bytes of plaintext and signature (at most 1024 bytes, an 8192-bit
/// sender's). The server cannot open the message to check its plaintext, but its size gives
/// the plaintext away to within a block: anything larger is refused as it arrives, instead of
/// being stored for a recipient that would refuse it.
fn asymmetric_cap(limit: u64, k: u64) -> u64 {
    let per_block = k.saturating_sub(crate::keys::OAEP_OVERHEAD as u64).max(1);
    let data = limit.saturating_add(crate::keys::MAX_BITS as u64 / 8);
    let blocks = data.div_ceil(per_block);
    (HEADER_LEN as u64).saturating_add(blocks.saturating_mul(k))
}

/// The key ids whose relayed messages' receipts the client `name`, authenticated with
/// `current`, may read: `current` first, then the keys its name had before, newest first, as
/// long as each was ended by a replacement (`server trust NEW --name NAME --replace`, the same
/// client rotating its key). A key ended by `server untrust` ends the chain: a key trusted
/// later under the same name may be someone else, and gets none of the earlier receipts.
/// `history` is [`Store::client_keys`], oldest first.
fn own_keys(history: &[store::ClientKey], name: &str, current: &store::KeyId) -> Vec<store::KeyId> {
    let mut keys = vec![*current];
    let named: Vec<&store::ClientKey> = history.iter().filter(|k| k.name == name).collect();
    let Some(at) = named.iter().rposition(|k| k.key_id == *current) else {
        return keys;
    };
    for earlier in named[..at].iter().rev() {
        match earlier.ended {
            Some((_, store::KeyEnd::Replaced)) => {
                if !keys.contains(&earlier.key_id) {
                    keys.push(earlier.key_id);
                }
            }
            _ => break,
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, id: u8, ended: Option<store::KeyEnd>) -> store::ClientKey {
        store::ClientKey {
            name: name.into(),
            key_id: [id; 32],
            public_key: Vec::new(),
            since: u64::from(id),
            ended: ended.map(|how| (u64::from(id) + 1, how)),
        }
    }

    /// A name's replaced keys are its own; a removal ends the chain (a later key under the
    /// name may be someone else); other names' keys never count.
    #[test]
    fn receipts_follow_replacements_of_a_name_not_removals() {
        use store::KeyEnd::{Removed, Replaced};
        let history = [
            key("alice", 1, Some(Removed)),
            key("bob", 2, Some(Replaced)),
            key("alice", 3, Some(Replaced)),
            key("alice", 4, Some(Replaced)),
            key("bob", 5, None),
            key("alice", 6, None),
        ];
        assert_eq!(
            own_keys(&history, "alice", &[6; 32]),
            [[6; 32], [4; 32], [3; 32]]
        );
        assert_eq!(own_keys(&history, "bob", &[5; 32]), [[5; 32], [2; 32]]);
        // A key the history does not know under the name (a fixed trust list): only itself.
        assert_eq!(own_keys(&history, "carol", &[7; 32]), [[7; 32]]);
        assert_eq!(own_keys(&[], "alice", &[6; 32]), [[6; 32]]);
    }

    /// The asymmetric cap admits the largest message a sealer makes within the limit (here
    /// from a 4096-bit sender, whose signature is 512 bytes, to a 2048-bit recipient) and is
    /// within one block and the largest signature's blocks of it.
    #[test]
    fn the_asymmetric_cap_fits_the_largest_message_within_the_limit() {
        let key = crate::keys::PrivateKey::from_pem;
        let alice = key(include_str!("../../../tests/keys/alice4096_private.pem")).unwrap();
        let bob = key(include_str!("../../../tests/keys/bob2048_private.pem")).unwrap();
        let limit = 5000u64;
        let opts = crate::envelope::SealOptions {
            asymmetric_limit: limit,
            ..crate::envelope::SealOptions::mode(Mode::Asymmetric)
        };
        let plain = vec![7u8; limit as usize];
        let mut sealed = Vec::new();
        crate::envelope::seal_slice(&alice, bob.public(), &opts, &plain, &mut sealed).unwrap();
        let k = bob.public().modulus_len() as u64;
        let cap = asymmetric_cap(limit, k);
        assert!(sealed.len() as u64 <= cap, "{} > {cap}", sealed.len());
        // Slack: the signature room past 512 bytes (8192-bit senders) and one partial block.
        assert!(cap - (sealed.len() as u64) <= (512 / (k - 66) + 2) * k);
        assert_eq!((cap - HEADER_LEN as u64) % k, 0);
    }

    fn entries(n: usize) -> Vec<SignedEntry> {
        (0..n)
            .map(|i| SignedEntry {
                entry: i.to_be_bytes().to_vec(),
                signature: vec![1],
            })
            .collect()
    }

    /// Parts hold at most MAX_DIRECTORY_PART entries, in order, and only the final one is
    /// marked last; no entry is one empty last part.
    #[test]
    fn the_directory_is_cut_into_parts_with_the_last_marked() {
        for n in [
            0,
            1,
            MAX_DIRECTORY_PART,
            MAX_DIRECTORY_PART + 1,
            3 * MAX_DIRECTORY_PART + 5,
        ] {
            let all = entries(n);
            let parts = directory_parts(&all);
            assert_eq!(
                parts.len(),
                n.div_ceil(MAX_DIRECTORY_PART).max(1),
                "{n} entries"
            );
            let mut joined = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let Frame::DirectoryPart { last, entries } = part else {
                    panic!("not a DirectoryPart");
                };
                assert_eq!(*last, i + 1 == parts.len());
                assert!(entries.len() <= MAX_DIRECTORY_PART);
                assert!(!entries.is_empty() || n == 0);
                joined.extend(entries.iter().cloned());
            }
            assert_eq!(joined, all);
        }
    }
}
