//! The server's outbox seen from a test: what it holds for the client, and a delivery put back
//! in it, byte for byte, as a server that replays or forges deliveries would send it.
#![allow(dead_code)]

use std::io::{Read, Write};

use letterlock::envelope;
use letterlock::store::{OutboxRecord, SqliteStore, Store};

use super::net::{CLIENT, SERVER};
use super::{private, public};

/// The sealed bytes of every message waiting for the fixed client key, oldest first.
pub async fn pending_bodies(store: &SqliteStore) -> Vec<Vec<u8>> {
    let me = public(CLIENT).id().0;
    let mut bodies = Vec::new();
    for entry in store.pending_outbox(&me).await.unwrap() {
        let mut body = store
            .open_outbox_body(&me, &entry.message_id)
            .await
            .unwrap();
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes).unwrap();
        bodies.push(bytes);
    }
    bodies
}

/// Puts `sealed` (from the fixed server key to the client, called `client`) in the outbox,
/// expecting `ack_tag` back.
pub async fn enqueue(store: &SqliteStore, sealed: &[u8], ack_tag: [u8; 32]) {
    enqueue_for(store, sealed, ack_tag, &public(CLIENT), "client").await;
}

/// Puts `sealed` in the outbox for `recipient`, under `name`, expecting `ack_tag` back.
pub async fn enqueue_for(
    store: &SqliteStore,
    sealed: &[u8],
    ack_tag: [u8; 32],
    recipient: &letterlock::keys::PublicKey,
    name: &str,
) {
    let header = envelope::Header::parse(sealed).unwrap();
    let mut blob = store.blob_writer();
    blob.write_all(sealed).unwrap();
    store
        .enqueue_outbox(OutboxRecord {
            recipient_key_id: recipient.id().0,
            recipient_name: name.into(),
            message_id: header.message_id.0,
            created: header.created,
            mode: header.mode.to_byte(),
            plaintext_len: 0,
            expected_ack_tag: ack_tag,
            body: blob.finish().unwrap(),
        })
        .await
        .unwrap();
}

/// The ack tag the client computes for `sealed`: what the server expects back.
pub fn ack_tag_of(sealed: &[u8]) -> [u8; 32] {
    let opts = envelope::OpenOptions::default();
    let (_, opened) =
        envelope::open_to_vec(private(CLIENT), &public(SERVER), &opts, sealed).unwrap();
    opened.ack_tag
}
