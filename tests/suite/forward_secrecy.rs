//! Forward secrecy of protocol version 2 (issue 10): a session recorded by the interceptor is
//! handed, with BOTH RSA private keys, to someone who wants its plaintext. Inside TLS 1.3 the
//! traffic keys came from an ephemeral X25519MLKEM768 exchange that the RSA keys only signed, so
//! the capture holds no plaintext and no letterlock message that the keys could open.
//!
//! The same search run on a version 1 capture (the control) does find the sealed messages and
//! opens them with the keys: so the search is able to fail, and v2's result is not an accident
//! of how it looks.

use crate::common;

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use common::net::{CLIENT, SERVER};
use letterlock::client::{Client, ClientConfig, Content, Output};
use letterlock::envelope::{self, MAGIC, Mode, OpenOptions, SealOptions};
use letterlock::keys::{Identity, PublicKey};
use letterlock::server::ServerConfig;
use letterlock::store::SqliteStore;
use letterlock::wire::{self, FrameType};
use letterlock_cli::intercept::{Config, Direction, FrameWalker, Proxy, Walked};

const TO_SERVER: [&str; 2] = [
    "the launch code is 0000 (asymmetric)",
    "the launch code is 0000 (hybrid)",
];
const TO_CLIENT: &str = "meet at the old mill at nine";

/// What the attacker got out of one capture.
#[derive(Debug, Default)]
struct Loot {
    /// Plaintexts found in the captured bytes (raw, UTF-16, base64, hex).
    plaintexts: Vec<String>,
    /// Occurrences of the envelope magic `LETRLOCK` (the start of every sealed header).
    headers: usize,
    /// Sealed messages cut out of letterlock frames (`Send`…`SendEnd`, `Deliver`…`DeliverEnd`).
    sealed: usize,
    /// Those the stolen keys opened, as text.
    opened: Vec<String>,
}

/// Records one session through the interceptor: two messages to the server and one fetched
/// from it, on version 2 (`tls`) or version 1; returns the capture's bytes per direction.
async fn record_session(tls: bool) -> HashMap<(u32, Direction), Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("server.db")).unwrap());
    let server = if tls {
        common::net::tls_server(store.clone(), ServerConfig::default())
    } else {
        common::net::server(store.clone(), ServerConfig::default())
    };
    let common::net::Running { addr, stop, task } = common::net::run_on_loopback(server).await;
    let proxy = Proxy::start("127.0.0.1:0", &addr, Config::default())
        .await
        .unwrap();
    let via = proxy.local_addr().to_string();

    let mut client = if tls {
        common::net::tls_client(&via, CLIENT).await.unwrap()
    } else {
        let identity: Arc<dyn Identity> = common::private(CLIENT);
        Client::connect(
            &via,
            identity,
            common::public(SERVER),
            ClientConfig::default(),
        )
        .await
        .unwrap()
    };
    for (text, mode) in TO_SERVER.iter().zip([Mode::Asymmetric, Mode::Hybrid]) {
        client
            .send(
                Cursor::new(text.as_bytes().to_vec()),
                SealOptions::mode(mode),
            )
            .await
            .unwrap();
    }
    let to = common::net::clients().by_name("client").unwrap().clone();
    letterlock::server::queue_for_client(
        store.as_ref(),
        common::private(SERVER),
        &to,
        Cursor::new(TO_CLIENT.as_bytes().to_vec()),
        &SealOptions::default(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    client
        .fetch(&Output::Memory { limit: 1 << 20 }, |r| {
            if let Content::Memory(m) = &r.content {
                got.push(m.to_vec());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![TO_CLIENT.as_bytes().to_vec()],
        "the session worked"
    );
    client.close().await.unwrap();
    drop(
        proxy
            .wait_for(
                |e| matches!(e, letterlock_cli::intercept::Event::Closed { .. }),
                std::time::Duration::from_secs(120),
            )
            .await,
    );

    let mut streams: HashMap<(u32, Direction), Vec<u8>> = HashMap::new();
    for r in proxy.records().unwrap() {
        streams.entry((r.conn, r.dir)).or_default().extend(r.bytes);
    }
    proxy.stop().await;
    let _ = stop.send(());
    let _ = task.await;
    streams
}

/// Everything the attacker can do with the capture and both private keys.
fn attack(streams: &HashMap<(u32, Direction), Vec<u8>>) -> Loot {
    let mut loot = Loot::default();
    let records: Vec<_> = streams
        .iter()
        .map(|((conn, dir), bytes)| letterlock_cli::intercept::Record {
            conn: *conn,
            dir: *dir,
            bytes: bytes.clone(),
        })
        .collect();
    for text in TO_SERVER.iter().chain([&TO_CLIENT]) {
        if letterlock_cli::intercept::search(&records, text).is_found() {
            loot.plaintexts.push((*text).to_owned());
        }
    }
    for ((_, dir), bytes) in streams {
        loot.headers += bytes.windows(MAGIC.len()).filter(|w| *w == MAGIC).count();
        // The stolen keys: the recipient's private key opens, the sender's public key verifies.
        let (recipient, sender): (Arc<dyn Identity>, PublicKey) = match dir {
            Direction::ToServer => (common::private(SERVER), common::public(CLIENT)),
            Direction::ToClient => (common::private(CLIENT), common::public(SERVER)),
        };
        for sealed in sealed_messages(bytes) {
            loot.sealed += 1;
            if let Ok((plain, _)) = envelope::open_to_vec(
                recipient.clone(),
                &sender,
                &OpenOptions::default(),
                Cursor::new(sealed),
            ) {
                loot.opened
                    .push(String::from_utf8_lossy(plain.as_slice()).into_owned());
            }
        }
    }
    loot
}

/// The sealed messages carried by the letterlock frames of one direction, cut by the
/// interceptor's frame walker (nothing, when the bytes are not frames).
fn sealed_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut walker = FrameWalker::new(wire::DEFAULT_MAX_FRAME);
    walker.push(bytes);
    let (mut found, mut current) = (Vec::new(), Vec::new());
    for walked in walker {
        let Walked::Frame(frame) = walked else { break };
        match frame.frame_type() {
            Some(FrameType::Send | FrameType::Deliver) => {
                current.extend_from_slice(frame.payload())
            }
            Some(FrameType::SendEnd | FrameType::DeliverEnd) => {
                found.push(std::mem::take(&mut current))
            }
            _ => {}
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_v2_session_stays_sealed_after_both_rsa_keys_are_stolen() {
    let loot = attack(&record_session(true).await);
    assert!(loot.plaintexts.is_empty(), "{loot:?}");
    assert_eq!(loot.headers, 0, "a letterlock header on the wire: {loot:?}");
    assert_eq!(loot.sealed, 0, "sealed messages on the wire: {loot:?}");
    assert!(loot.opened.is_empty(), "{loot:?}");
}

/// The control: on version 1 the sealed messages are on the wire, and the stolen keys open all
/// three. This is what v2's ephemeral key exchange takes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_attack_on_a_v1_capture_opens_every_message() {
    let loot = attack(&record_session(false).await);
    assert!(loot.plaintexts.is_empty(), "v1 seals too: {loot:?}");
    assert_eq!(loot.headers, 3, "{loot:?}");
    assert_eq!(loot.sealed, 3, "{loot:?}");
    let mut opened = loot.opened.clone();
    opened.sort();
    let mut want: Vec<String> = TO_SERVER
        .iter()
        .chain([&TO_CLIENT])
        .map(|s| (*s).to_owned())
        .collect();
    want.sort();
    assert_eq!(opened, want);
}
