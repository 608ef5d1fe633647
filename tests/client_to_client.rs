//! Client to client through a server that cannot read (issue 14), through the binary: what a
//! receiving client does with a message signed by another client's key: opened with the key
//! it pinned (or accepted from the directory), shown and kept under that contact's name; an
//! unknown key's message set aside and left on the server, then delivered once trusted.

mod common;

use std::path::Path;

use common::cli::{BinServer, classroom_folder, run};
use common::net::CLIENT;
use common::outbox::enqueue;
use common::{private, public, public_path};
use letterlock::envelope::SealOptions;
use letterlock::store::SqliteStore;

/// Exit status of `recv_msg` when a message was set aside (src/cli/client.rs).
const EXIT_SET_ASIDE: i32 = 4;

/// The server's store in a classroom folder.
const SERVER_STORE: &str = "letterlock-server.db";

/// Puts a message sealed by the fixed key `sender` for the classroom client in the running
/// server's outbox, as a relayed message waits there; returns its id.
fn queue_from(dir: &Path, sender: &str, text: &[u8]) -> String {
    let (sealed, info) = common::seal_with_info(
        private(sender).as_ref(),
        &public(CLIENT),
        &SealOptions::default(),
        text,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(dir.join(SERVER_STORE)).unwrap();
        enqueue(&store, &sealed, info.ack_tag).await;
        store.close().await.unwrap();
    });
    info.header.message_id.to_string()
}

/// `recv_msg`, asked again while the server still holds the last connection's lease on the
/// message (it is released when that connection's end is noticed).
fn recv(dir: &Path, addr: &str) -> (i32, String, String) {
    for _ in 0..50 {
        let (code, out, err) = run(dir, &["client", "recv_msg", "--server", addr]);
        if !err.contains("no messages") {
            return (code, String::from_utf8(out).unwrap(), err);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the message never came back");
}

fn outbox_len(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(SERVER_STORE)).unwrap();
    conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn an_unknown_senders_message_is_set_aside_not_acked_then_delivered_once_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    let id = queue_from(d, "mallory", b"hello from carol");
    let carol = public("mallory").id().to_string();

    let (code, out, err) = recv(d, &server.addr);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(err.contains(&id) && err.contains("set aside"), "{err}");
    assert!(err.contains(&carol), "the unknown key is named: {err}");
    assert!(err.contains("client trust"), "what to do is said: {err}");
    assert!(!out.contains("hello from carol"), "never shown: {out}");
    assert_eq!(outbox_len(d), 1, "not acknowledged: still on the server");

    let file = public_path("mallory");
    let (code, _, err) = run(
        d,
        &["client", "trust", file.to_str().unwrap(), "--name", "carol"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = recv(d, &server.addr);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "hello from carol");
    assert!(err.contains("from carol (pinned key)"), "{err}");
    assert!(err.contains("signature verified"), "{err}");
    assert_eq!(outbox_len(d), 0, "acknowledged and removed");

    // Kept under carol's name; read again with carol's key, no server needed.
    drop(server);
    let (code, out, err) = run(d, &["client", "inbox", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(rows[0]["sender"], "carol (pinned)");
    assert_eq!(rows[0]["sender_key"], carol);
    let (code, out, err) = run(d, &["client", "read", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"hello from carol");
    assert!(err.contains("from carol (pinned)"), "{err}");
}

#[test]
fn a_message_from_the_server_still_shows_as_from_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    let (code, _, err) = run(
        d,
        &["server", "send_msg", "--to", "client", "from the server"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = recv(d, &server.addr);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from the server");
    assert!(err.contains("from the server ("), "{err}");
}
