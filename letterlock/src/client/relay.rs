//! Client to client through the server (docs/PROTOCOL.md section 15): the server's signed
//! directory, relaying a message sealed for another client, and the receipts only that client
//! can produce.
//!
//! Invariants: a directory answer is believed only when every entry verifies under the pinned
//! server key and all carry one serial (one bad entry refuses the whole answer); a relayed
//! message is sealed whole (into an unnamed temporary file, constant memory) before anything
//! is sent, because its receipt commitment, computed from the ack tag that only the finished
//! signature gives, goes first; `Stored` is reported as the server's word only (it cannot
//! open the message), never as "delivered"; a receipt counts only once its tag matched the
//! one kept at sealing ([`super::contacts::Contacts::check_receipts`]).

use std::io::{self, Read};

use tracing::debug;

use crate::directory::Entry;
use crate::envelope::{self, Header, MessageId, SealOptions, Sealed};
use crate::keys::PublicKey;
use crate::wire::{self, Frame, MAX_RECEIPT_IDS, ReceiptInfo};

use super::send::{Kept, SendAgain};
use super::{Backoff, Client, ClientError, Retry, on_blocking_pool, unexpected};

/// Most entries a directory answer may have in all: a bound on what a server can make the
/// client hold (each entry is at most about 2 KiB with its signature: 32 MiB at most).
pub const MAX_DIRECTORY_ENTRIES: usize = 16 * 1024;

/// Longest a connection is left silent while a relayed message is sealed before it is
/// replaced by a new one: well under the server's default idle timeout (120 s).
const IDLE_WHILE_SEALING: std::time::Duration = std::time::Duration::from_secs(30);

/// A relayed message the server says it stored for its recipient.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub id: MessageId,
    pub header: Header,
    pub plaintext_len: u64,
    /// The ack tag computed at sealing: the recipient's receipt must carry it.
    pub ack_tag: [u8; 32],
}

impl Client {
    /// Asks the server for its directory and verifies it: every entry under the pinned server
    /// key, all of one serial. Returns the entries in the server's order (sorted by name).
    /// Version 2 (TLS) only: a version 1 server ends the connection on the request.
    pub async fn directory(&mut self) -> Result<Vec<Entry>, ClientError> {
        if self.tls.is_none() {
            return Err(ClientError::NeedsTls("the directory"));
        }
        self.writer.write_frame(&Frame::Directory).await?;
        let mut signed = Vec::new();
        // Past the limit the parts are still read (and dropped) to the last one, so that the
        // connection can go on after the refusal; but no more parts than the limit needs at
        // the fewest entries a part may carry (1), so a server cannot keep us reading (that is
        // a broken protocol, and ends the connection, not a refused answer).
        let mut too_many = false;
        let mut parts = 0usize;
        loop {
            parts += 1;
            if parts > MAX_DIRECTORY_ENTRIES + 1 {
                return Err(ClientError::Unexpected {
                    frame: "DirectoryPart",
                });
            }
            match self.read().await? {
                Frame::DirectoryPart { last, entries } => {
                    if signed.len().saturating_add(entries.len()) > MAX_DIRECTORY_ENTRIES {
                        too_many = true;
                        signed = Vec::new();
                    }
                    if !too_many {
                        signed.extend(entries);
                    }
                    if last {
                        break;
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        if too_many {
            return Err(ClientError::BadDirectory(format!(
                "more than {MAX_DIRECTORY_ENTRIES} entries"
            )));
        }
        let server = self.server.clone();
        on_blocking_pool(move || verify_directory(&signed, &server)).await
    }

    /// Seals everything `input` yields for `recipient` (signed with our key), records it with
    /// `before_send` (which must make the id and ack tag durable: a crash after `Stored`
    /// must still let the receipt be checked), then relays it: `Relay{commitment}`, the
    /// sealed bytes as `Send` frames, `SendEnd`, and waits for `Stored`. After `Unavailable`,
    /// or a connection that broke before `Stored`, it connects again and resends the very same
    /// bytes (same id) as [`Client::send_retrying`] does, within `backoff`'s deadline.
    ///
    /// The message is sealed whole into an unnamed temporary file first (ciphertext only,
    /// deleted when this returns): the commitment that goes first needs the finished
    /// signature. Memory stays constant whatever the size.
    pub async fn relay<R: Read + Send + 'static>(
        &mut self,
        input: R,
        opts: SealOptions,
        recipient: &PublicKey,
        backoff: Backoff,
        mut on_retry: impl FnMut(&Retry),
        before_send: impl FnOnce(&Sealed) -> Result<(), ClientError>,
    ) -> Result<Relayed, ClientError> {
        if self.tls.is_none() {
            return Err(ClientError::NeedsTls("sending to another client"));
        }
        let start = tokio::time::Instant::now();
        let identity = self.identity.clone();
        let recipient = recipient.clone();
        let kept = on_blocking_pool(move || {
            let spool = tempfile::tempfile()?;
            let mut out = io::BufWriter::new(spool);
            let sealed = envelope::seal(identity.as_ref(), &recipient, &opts, input, &mut out)?;
            let spool = out
                .into_inner()
                .map_err(|e| ClientError::Io(e.into_error()))?;
            Ok(Kept { sealed, spool })
        })
        .await?;
        before_send(&kept.sealed)?;
        if start.elapsed() > IDLE_WHILE_SEALING {
            // The connection sat silent while a large message was sealed: the server may have
            // ended it (its idle timeout). A fresh one costs a handshake, not the message.
            debug!(elapsed = ?start.elapsed(), "sealing took long; connecting again");
            *self = self.connect_again(backoff, &mut on_retry).await?;
        }
        let again = RelayAgain(&kept);
        let result = again.send_on(self).await;
        self.resend_while_worth_it(result, &again, backoff, &mut on_retry)
            .await
    }

    /// Relays a message sealed ahead (`sealed_bytes`, with what its sealer reported) once:
    /// the caller records it first. No resend after `Unavailable`.
    pub async fn relay_sealed(
        &mut self,
        sealed_bytes: &[u8],
        sealed: &Sealed,
    ) -> Result<Relayed, ClientError> {
        self.writer.queue_frame(&Frame::Relay {
            commitment: wire::receipt_commitment(&sealed.ack_tag),
        });
        for chunk in sealed_bytes.chunks(wire::DATA_FRAME) {
            self.writer.queue_frame(&Frame::Send(chunk.to_vec()));
        }
        self.writer.queue_frame(&Frame::SendEnd);
        self.writer.flush().await?;
        self.await_stored(sealed).await
    }

    /// One attempt: `Relay`, the spooled bytes, `SendEnd`, then `Stored`.
    async fn relay_once(&mut self, kept: &Kept) -> Result<Relayed, ClientError> {
        let relay = Frame::Relay {
            commitment: wire::receipt_commitment(&kept.sealed.ack_tag),
        };
        if let Err(e) = self.writer.write_frame(&relay).await {
            return Err(self.reason_for(e).await);
        }
        self.send_spooled(kept).await?;
        self.await_stored(&kept.sealed).await
    }

    /// The server's `Stored` for `sealed`. A connection that ends or stalls before it leaves
    /// the relay's fate unknown: said as a missing answer ([`ClientError::NoAck`]), as a send's
    /// missing ack is.
    async fn await_stored(&mut self, sealed: &Sealed) -> Result<Relayed, ClientError> {
        let want = sealed.header.message_id;
        let answer = match self.read().await {
            Ok(frame) => frame,
            Err(refused @ ClientError::Refused { .. }) => return Err(refused),
            Err(e) => {
                return Err(ClientError::NoAck {
                    id: want,
                    why: Box::new(e),
                });
            }
        };
        match answer {
            Frame::Stored { id } if id == want => {
                debug!(%id, "relayed message stored by the server");
                Ok(Relayed {
                    id,
                    header: sealed.header,
                    plaintext_len: sealed.plaintext_len,
                    ack_tag: sealed.ack_tag,
                })
            }
            Frame::Stored { id } => Err(ClientError::NotProven {
                id: Some(want),
                why: format!(
                    "the server said it stored message {id}, not {want}; {want} may or may not \
                     have been stored"
                ),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The receipts the server holds for `ids` among the messages this client relayed (ids
    /// without one are left out), asked in requests of at most [`MAX_RECEIPT_IDS`] ids. NOT
    /// checked here: only the ack tags kept at sealing tell a true receipt from a forged one
    /// ([`super::contacts::Contacts::check_receipts`]). Version 2 only.
    pub async fn receipts(&mut self, ids: &[MessageId]) -> Result<Vec<ReceiptInfo>, ClientError> {
        if self.tls.is_none() {
            return Err(ClientError::NeedsTls("receipts"));
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            self.writer
                .write_frame(&Frame::Receipts {
                    ids: chunk.to_vec(),
                })
                .await?;
            match self.read().await? {
                Frame::ReceiptList { receipts } => {
                    // Only answers to what was asked: anything else is the server's invention.
                    out.extend(receipts.into_iter().filter(|r| chunk.contains(&r.id)));
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(out)
    }
}

/// Verifies every signed entry under `server` and checks they share one serial; one failure
/// refuses the whole answer.
fn verify_directory(
    signed: &[crate::directory::SignedEntry],
    server: &PublicKey,
) -> Result<Vec<Entry>, ClientError> {
    let mut entries = Vec::with_capacity(signed.len());
    for s in signed {
        let entry = s.verify(server).map_err(|e| {
            ClientError::BadDirectory(format!(
                "the directory is not signed by the pinned server key ({e}); nothing in it is \
                 used"
            ))
        })?;
        if let Some(first) = entries.first().map(|e: &Entry| e.serial)
            && entry.serial != first
        {
            return Err(ClientError::BadDirectory(format!(
                "the directory mixes serials {first} and {}; nothing in it is used",
                entry.serial
            )));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// A relay kept in its spool, sent again on a new connection by
/// [`Client::resend_while_worth_it`]: `Relay`, the same bytes, `SendEnd`, then `Stored`.
struct RelayAgain<'a>(&'a Kept);

impl SendAgain for RelayAgain<'_> {
    type Answer = Relayed;

    fn id(&self) -> MessageId {
        self.0.sealed.header.message_id
    }

    async fn send_on(&self, client: &mut Client) -> Result<Relayed, ClientError> {
        client.relay_once(self.0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Identity, PrivateKey};

    fn key(name: &str) -> PrivateKey {
        let path = format!(
            "{}/../tests/keys/{name}_private.pem",
            env!("CARGO_MANIFEST_DIR")
        );
        PrivateKey::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn signed(
        server: &PrivateKey,
        name: &str,
        k: &PrivateKey,
        serial: u64,
    ) -> crate::directory::SignedEntry {
        Entry {
            serial,
            since: 1,
            name: name.into(),
            key: k.public().clone(),
        }
        .sign(server)
        .unwrap()
    }

    #[test]
    fn one_bad_entry_or_mixed_serials_refuse_the_whole_directory() {
        let (server, alice, bob) = (key("mallory"), key("alice2048"), key("bob2048"));
        let good = vec![
            signed(&server, "alice", &alice, 3),
            signed(&server, "bob", &bob, 3),
        ];
        let entries = verify_directory(&good, server.public()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "bob");
        // Signed by another key (alice posing as the server): refused whole.
        let mut forged = good.clone();
        forged[1] = signed(&alice, "bob", &alice, 3);
        assert!(matches!(
            verify_directory(&forged, server.public()),
            Err(ClientError::BadDirectory(_))
        ));
        let mixed = vec![
            signed(&server, "alice", &alice, 3),
            signed(&server, "bob", &bob, 4),
        ];
        assert!(matches!(
            verify_directory(&mixed, server.public()),
            Err(ClientError::BadDirectory(_))
        ));
        assert!(verify_directory(&[], server.public()).unwrap().is_empty());
    }
}
