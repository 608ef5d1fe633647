//! The client's record of received messages (issue 10, "Replays to the client"), through the
//! binary: a server that delivers a recorded message again gets it acknowledged but neither
//! saved nor shown again, with `-o DIR` and with stdout; a server message dated 2001 is refused;
//! a message that cannot be opened is set aside and the messages behind it are delivered.
//!
//! The replaying server is the real one whose outbox the test refills with the very bytes it
//! delivered before: on the wire that is exactly a recorded delivery played back.

use crate::common;

use std::path::Path;

use common::cli::{BinServer, classroom_folder, letterlock, run};
use common::net::{CLIENT, SERVER};
use common::outbox::{ack_tag_of, enqueue, pending_bodies};
use common::{private, public};
use letterlock::envelope::{FixedRandomness, SealOptions};
use letterlock::store::SqliteStore;

/// Exit statuses of `recv_msg` (src/cli/client.rs, docs/PROTOCOL.md).
const EXIT_REPEAT: i32 = 3;
const EXIT_SET_ASIDE: i32 = 4;

/// A folder with the fixed server and client keys under the walk-through's names, and the
/// server started in it.
fn setup(d: &Path) -> (BinServer, String) {
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    let addr = server.addr.clone();
    (server, addr)
}

fn recv(dir: &Path, addr: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["client", "recv_msg", "--server", addr];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run(dir, &args);
    (code, String::from_utf8_lossy(&stdout).into_owned(), stderr)
}

fn queue(dir: &Path, text: &str) {
    let out = letterlock(dir, &["server", "send_msg", "--to", "client", text]);
    assert!(out.status.success(), "{out:?}");
}

/// The server started in `d` (see [`setup`]) with "pay 10 coins" queued for the client: the
/// server, its address, its store and the sealed bytes it will deliver, kept for a replay.
async fn one_recorded_delivery(d: &Path) -> (BinServer, String, SqliteStore, Vec<u8>) {
    let (server, addr) = setup(d);
    queue(d, "pay 10 coins");
    let store = SqliteStore::open(d.join("letterlock-server.db")).unwrap();
    let recorded = pending_bodies(&store).await.remove(0);
    (server, addr, store, recorded)
}

#[tokio::test]
async fn a_replayed_delivery_is_not_saved_again_with_an_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, addr, store, recorded) = one_recorded_delivery(d).await;

    let (code, out, err) = recv(d, &addr, &["-o", "inbox"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("saved to"), "{err}");
    // The user reads the message and moves it away.
    let saved: Vec<_> = std::fs::read_dir(d.join("inbox")).unwrap().collect();
    assert_eq!(saved.len(), 1);
    std::fs::remove_file(saved[0].as_ref().unwrap().path()).unwrap();

    // The same delivery again.
    enqueue(&store, &recorded, ack_tag_of(&recorded)).await;
    let (code, out, err) = recv(d, &addr, &["-o", "inbox"]);
    assert_eq!(code, EXIT_REPEAT, "{out}{err}");
    assert!(err.contains("already received"), "{err}");
    assert!(err.contains("no new messages"), "{err}");
    assert_eq!(
        std::fs::read_dir(d.join("inbox")).unwrap().count(),
        0,
        "the replay was saved again"
    );
    // Acknowledged all the same: an honest server whose Removed was lost stops repeating it.
    assert!(pending_bodies(&store).await.is_empty());
}

#[tokio::test]
async fn a_replayed_delivery_is_not_shown_again_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, addr, store, recorded) = one_recorded_delivery(d).await;

    let (code, out, _) = recv(d, &addr, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("pay 10 coins"), "{out}");

    enqueue(&store, &recorded, ack_tag_of(&recorded)).await;
    let (code, out, err) = recv(d, &addr, &[]);
    assert_eq!(code, EXIT_REPEAT, "{out}{err}");
    assert!(err.contains("already received"), "{err}");
    assert!(
        !out.contains("pay 10 coins"),
        "the replay was shown again: {out}"
    );

    // The record is the same file for both modes: the stdout receipt also stops `-o`.
    enqueue(&store, &recorded, ack_tag_of(&recorded)).await;
    let (code, out, _) = recv(d, &addr, &["-o", "inbox"]);
    assert_eq!(code, EXIT_REPEAT, "{out}");
    assert!(!d.join("inbox").exists() || std::fs::read_dir(d.join("inbox")).unwrap().count() == 0);
}

#[tokio::test]
async fn a_stale_or_unopenable_message_is_set_aside_and_the_next_one_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, addr) = setup(d);
    let store = SqliteStore::open(d.join("letterlock-server.db")).unwrap();

    // Signed by the real server key, dated 2001-01-01.
    let fixed = FixedRandomness {
        message_id: [0x20; 16],
        created: 978_307_200,
        content_key: [5; 32],
    };
    let (stale, sealed) = common::seal_fixed(
        private(SERVER),
        &public(CLIENT),
        &SealOptions::default(),
        &fixed,
        b"an old order, replayed",
    );
    enqueue(&store, &stale, sealed.ack_tag).await;
    // A current message altered on the way (or at rest): it cannot be opened.
    let (mut tampered, sealed) = common::seal_with_info(
        private(SERVER).as_ref(),
        &public(CLIENT),
        &SealOptions::default(),
        b"altered",
    );
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    enqueue(&store, &tampered, sealed.ack_tag).await;
    // And a good one behind them.
    queue(d, "the message behind");

    let (code, out, err) = recv(d, &addr, &["-o", "inbox"]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert_eq!(err.matches("set aside, NOT received").count(), 2, "{err}");
    assert!(err.contains("stale"), "{err}");
    assert!(err.contains("saved to"), "{err}");
    let saved: Vec<_> = std::fs::read_dir(d.join("inbox")).unwrap().collect();
    assert_eq!(saved.len(), 1);
    let text = std::fs::read(saved[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(text, b"the message behind");
    // The two set aside were not acknowledged: they stay on the server.
    assert_eq!(pending_bodies(&store).await.len(), 2);

    // Stdout too: the stale message is refused, not printed.
    let (code, out, _) = recv(d, &addr, &[]);
    assert_eq!(code, EXIT_SET_ASIDE);
    assert!(!out.contains("an old order"), "{out}");
}
