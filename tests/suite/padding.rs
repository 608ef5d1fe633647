//! Frame padding inside TLS (issue 10, "Length"; docs/PROTOCOL.md §13 "Frame padding"): what an
//! eavesdropper records of a version 2 session shows size buckets, not exact lengths, and the
//! server refuses malformed padding.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::net::{CLIENT, SERVER, recording_relay, v2_server};
use common::{private, public};
use letterlock::client::{Client, ClientConfig};
use letterlock::envelope::SealOptions;
use letterlock::keys::Identity;
use letterlock::tls::{self, TlsOptions};
use letterlock::wire::{
    ErrorCode, Frame, FrameReader, FrameWriter, LENGTH_PREFIX, MAX_PADDING_BODY, PADDING_TYPE,
};

/// The TLS records in one direction of a recording: (content type, length) each.
fn records(mut wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    while wire.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        out.push((wire[0], len));
        wire = &wire[(5 + len).min(wire.len())..];
    }
    assert!(wire.is_empty(), "a partial TLS record at the end");
    out
}

/// Sends `text` over version 2 through a recording relay; the TLS records each way.
async fn record_send(server: &str, text: &[u8]) -> (Vec<(u8, usize)>, Vec<(u8, usize)>) {
    let (relay, recording) = recording_relay(server.to_string()).await;
    let identity: Arc<dyn Identity> = private(CLIENT);
    let mut client = Client::connect_tls(
        &relay,
        identity,
        public(SERVER),
        ClientConfig::default(),
        TlsOptions::default(),
    )
    .await
    .unwrap();
    let d = client
        .send(std::io::Cursor::new(text.to_vec()), SealOptions::default())
        .await
        .unwrap();
    assert_eq!(d.plaintext_len, text.len() as u64);
    client.close().await.unwrap();
    let (c2s, s2c) = recording.await.unwrap();
    (records(&c2s), records(&s2c))
}

/// Same record count and types, and the same length each, but for the first encrypted record,
/// which may differ by the spread of an ECDSA signature's DER length (8 bytes).
fn assert_same_sizes(a: &[(u8, usize)], b: &[(u8, usize)]) {
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    let first_encrypted = a.iter().position(|(t, _)| *t == 0x17);
    for (i, ((ta, la), (tb, lb))) in a.iter().zip(b).enumerate() {
        assert_eq!(ta, tb, "record {i}: {a:?}\n{b:?}");
        if Some(i) == first_encrypted {
            assert!(la.abs_diff(*lb) <= 8, "record {i}: {a:?}\n{b:?}");
        } else {
            assert_eq!(la, lb, "record {i}: {a:?}\n{b:?}");
        }
    }
}

#[tokio::test]
async fn yes_and_no_have_identical_sizes_on_the_version_2_wire() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, task) = v2_server(dir.path()).await;
    let (yes_up, yes_down) = record_send(&addr, b"yes").await;
    let (no_up, no_down) = record_send(&addr, b"no").await;
    println!("yes: client→server {yes_up:?}\n     server→client {yes_down:?}");
    println!("no:  client→server {no_up:?}\n     server→client {no_down:?}");
    // Every record in both directions, handshake included: same count, same sizes; except that
    // the first encrypted record each way (that side's encrypted handshake flight) carries an
    // ECDSA signature by a handshake key (PROTOCOL.md section 13, "Delegated handshake keys"),
    // whose DER encoding is 72 bytes at most and shorter at random (68 to 72 in 200,000
    // signatures; below 64 about once in 2^32), whatever the message.
    assert_same_sizes(&yes_up, &no_up);
    assert_same_sizes(&yes_down, &no_down);
    // And the application data is there to compare (not only the handshake): the client's
    // Send and SendEnd writes each fill a bucket, at least 512 bytes plus TLS's own overhead
    // (5-byte header, 1-byte inner type, 16-byte tag).
    let app: Vec<usize> = yes_up
        .iter()
        .filter(|(t, _)| *t == 0x17)
        .map(|(_, l)| *l)
        .collect();
    assert!(
        app.iter().filter(|&&l| l >= 512 + 17).count() >= 2,
        "{app:?}"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

/// Connects over version 2 as the trusted client, reads `Ready`, sends `bytes` as they are
/// and returns what the server answers.
async fn server_answer_to(addr: &str, bytes: &[u8]) -> Frame {
    let identity: Arc<dyn Identity> = private(CLIENT);
    let config = tls::client_config(identity, &public(SERVER), &TlsOptions::default()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (stream, _) = tls::connect(config, tcp, Duration::from_secs(10))
        .await
        .unwrap();
    let (r, w) = tokio::io::split(stream);
    let mut r = FrameReader::new(r, 1 << 20).with_padding();
    let mut w = FrameWriter::new(w);
    assert_eq!(r.read_frame().await.unwrap(), Frame::Ready);
    w.write_raw(bytes).await.unwrap();
    r.read_frame().await.unwrap()
}

fn padding_frame(zeros: usize) -> Vec<u8> {
    let mut out = ((1 + zeros) as u32).to_be_bytes().to_vec();
    out.push(PADDING_TYPE);
    out.resize(LENGTH_PREFIX + 1 + zeros, 0);
    out
}

#[tokio::test]
async fn the_server_drops_good_padding_and_refuses_malformed_padding() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, task) = v2_server(dir.path()).await;

    // Unpadded and padded Fetch frames are both served.
    let mut fetch = Vec::new();
    Frame::Fetch.encode(&mut fetch);
    assert_eq!(
        server_answer_to(&addr, &fetch).await,
        Frame::FetchDone { count: 0 }
    );
    let mut padded = padding_frame(0);
    padded.extend_from_slice(&fetch);
    padded.extend_from_slice(&padding_frame(502));
    assert_eq!(
        server_answer_to(&addr, &padded).await,
        Frame::FetchDone { count: 0 }
    );

    // A non-zero padding byte, and padding longer than any bucket needs.
    let mut dirty = padding_frame(100);
    dirty[50] = 0xaa;
    let long = padding_frame(MAX_PADDING_BODY);
    for bad in [dirty, long] {
        match server_answer_to(&addr, &bad).await {
            Frame::Error { code, message } => {
                assert_eq!(code, ErrorCode::Protocol);
                assert!(message.contains("Padding"), "{message}");
            }
            other => panic!("expected an Error frame, got {other:?}"),
        }
    }
    let _ = stop.send(());
    task.await.unwrap();
}
