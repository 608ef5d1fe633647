//! Store records for the store tests (tests/suite/store.rs, tests/suite/store_conformance.rs): bodies staged
//! through a store's own writer, outbox records and message ids, the same for every backend.

use std::io::Write;

use letterlock::store::{Body, MODE_HYBRID, OutboxRecord, Store};

/// Streams `bytes` into `store` in odd-sized pieces, as a network read would.
pub fn stage(store: &impl Store, bytes: &[u8]) -> Body {
    let mut writer = store.blob_writer();
    for piece in bytes.chunks(10_007) {
        writer.write_all(piece).expect("write body piece");
    }
    writer.finish().expect("finish body")
}

/// A hybrid message sealed for client `recipient`, waiting for delivery with ack tag `tag`.
pub fn outbox_record(recipient: u8, id: [u8; 16], body: Body, tag: [u8; 32]) -> OutboxRecord {
    OutboxRecord {
        recipient_key_id: [recipient; 32],
        recipient_name: format!("client-{recipient}"),
        message_id: id,
        created: 1_700_000_200,
        mode: MODE_HYBRID,
        plaintext_len: body.len(),
        expected_ack_tag: tag,
        body,
    }
}

/// Message id number `n`.
pub fn id(n: u8) -> [u8; 16] {
    let mut id = [0x11; 16];
    id[0] = n;
    id
}
