//! Client to client through a server that cannot read (issue 14), through the binary and a
//! real server: alice writes to bob (text and a file, both modes), the server's store holds no
//! plaintext, bob's recv shows the message as from alice, verified; alice's receipts say "read
//! by bob" (and `send_msg --wait` waits for it); a message to a key the server does not trust is
//! refused with code 12; a server that substitutes bob's key is refused by a client that pinned
//! bob and shown as a change (nothing sent until accepted) to one that saw bob before; receipts
//! forged in the server's store are never shown as read; an unknown sender's message is set
//! aside, not acknowledged, and delivered once its key is pinned (one such message is put in the
//! outbox by hand, as a server could, the other relayed by a client the server later untrusts).

use crate::common;

use std::path::Path;

use common::cli::{BinServer, classroom_folder, run};
use common::net::CLIENT;
use common::outbox::{enqueue, enqueue_for};
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

#[test]
fn a_relayed_message_that_does_not_verify_is_blamed_on_the_client_that_signed_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    let file = public_path("mallory");
    let (code, _, err) = run(
        d,
        &["client", "trust", file.to_str().unwrap(), "--name", "carol"],
    );
    assert_eq!(code, 0, "{err}");
    // Carol's message, its last byte changed on the way (in the encrypted part).
    let (mut sealed, info) = common::seal_with_info(
        private("mallory").as_ref(),
        &public(CLIENT),
        &SealOptions::default(),
        b"from carol, damaged",
    );
    *sealed.last_mut().unwrap() ^= 1;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(d.join(SERVER_STORE)).unwrap();
        enqueue(&store, &sealed, info.ack_tag).await;
        store.close().await.unwrap();
    });
    let (code, out, err) = recv(d, &server.addr);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    let carol = public("mallory").id().to_string();
    assert!(
        err.contains(&format!(
            "a message from another client (carol, key {carol}) was refused"
        )),
        "{err}"
    );
    assert!(!err.contains("from the server"), "{err}");
    assert_eq!(outbox_len(d), 1, "not acknowledged");
}

/// A contact stored under the reserved name `server` before the client refused that name
/// (written here straight into the database, as an older client could) is never used: its
/// messages are set aside (left on the server) with a message naming it and how to fix it,
/// never shown as from the server; `send_msg --to server` is refused the same way; once it is
/// untrusted and pinned under another name, the message comes, from that name.
#[test]
fn a_contact_stored_as_server_before_the_rule_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    let file = public_path("mallory");
    let file = file.to_str().unwrap();
    let (code, _, err) = run(d, &["client", "trust", file, "--name", "carol"]);
    assert_eq!(code, 0, "{err}");
    let db = rusqlite::Connection::open(d.join("letterlock-client.db")).unwrap();
    let renamed = db
        .execute(
            "UPDATE client_contacts SET name = 'server' WHERE name = 'carol'",
            [],
        )
        .unwrap();
    assert_eq!(renamed, 1);
    drop(db);
    // Listed as what it is, needing attention, with the way out.
    let (code, out, err) = run(d, &["client", "contacts", "--offline"]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 6, "{out}{err}");
    assert!(out.contains("reserved"), "{out}");
    assert!(out.contains("`letterlock client untrust server`"), "{out}");
    queue_from(d, "mallory", b"not the server's words");

    let (code, out, err) = recv(d, &server.addr);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(!out.contains("not the server's words"), "{out}");
    assert!(err.contains("the contact stored as \"server\""), "{err}");
    assert!(err.contains("`letterlock client untrust server`"), "{err}");
    assert_eq!(outbox_len(d), 1, "not acknowledged");

    let (code, out, err) = run(
        d,
        &[
            "client",
            "send_msg",
            "--server",
            &server.addr,
            "--to",
            "server",
            "hi",
        ],
    );
    assert_ne!(code, 0, "{out:?}");
    assert!(
        err.contains("stored under the name \"server\", which is reserved"),
        "{err}"
    );
    assert!(err.contains("`letterlock client untrust server`"), "{err}");

    let (code, _, err) = run(d, &["client", "untrust", "server"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(d, &["client", "trust", file, "--name", "carol"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = recv(d, &server.addr);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("not the server's words"), "{out}");
    assert!(format!("{out}{err}").contains("carol"), "{out}{err}");
    assert_eq!(outbox_len(d), 0);

    // A mailbox that holds a message from such a contact is still listed, that message shown
    // as from a reserved contact (found by a review: the whole listing failed).
    let db = rusqlite::Connection::open(d.join("letterlock-client.db")).unwrap();
    db.execute(
        "UPDATE client_contacts SET name = 'server' WHERE name = 'carol'",
        [],
    )
    .unwrap();
    drop(db);
    let (code, out, err) = run(d, &["client", "inbox", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["sender_source"], "reserved", "{rows:?}");
}

/// `send_msg` to the server reads a small message whole (up to 64 KiB) and seals it in one
/// call; the server gets every byte either side of that size, in both modes where they fit.
#[test]
fn messages_either_side_of_the_whole_read_size_reach_the_server_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    let server = BinServer::start(d, &[]);
    for (len, mode) in [
        (0, "hybrid"),
        (65_536, "hybrid"),
        (65_537, "hybrid"),
        (65_536, "asymmetric"),
    ] {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let file = d.join(format!("m{len}{mode}"));
        std::fs::write(&file, &body).unwrap();
        let (code, out, err) = run(
            d,
            &[
                "client",
                "send_msg",
                "--json",
                "--mode",
                mode,
                "--file",
                file.to_str().unwrap(),
                "--server",
                &server.addr,
            ],
        );
        assert_eq!(code, 0, "{len} {mode}: {err}");
        let sent: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(sent["bytes"], len, "{sent}");
        let id = sent["id"].as_str().unwrap().to_owned();
        let saved = d.join(format!("got{len}{mode}"));
        let (code, _, err) = run(d, &["server", "read", &id, "-o", saved.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(std::fs::read(&saved).unwrap() == body, "{len} {mode}");
        // `-o` as `open` and `client read` take it (found by a review): a device is written
        // in place, a link or a folder refused saying what it is.
        if len == 0 {
            let (code, _, err) = run(d, &["server", "read", &id, "-o", "/dev/null"]);
            assert_eq!(code, 0, "{err}");
            std::os::unix::fs::symlink(&saved, d.join("link")).unwrap();
            let (code, _, err) = run(d, &["server", "read", &id, "-o", "link", "--force"]);
            assert_eq!(code, 1, "{err}");
            assert!(
                err.contains("cannot write link: link is a symbolic link"),
                "{err}"
            );
            assert!(err.contains("hint: server read -o names a file"), "{err}");
        }
    }
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
    assert_eq!(rows[0]["sender"], "carol");
    assert_eq!(rows[0]["sender_source"], "pinned");
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

// ---------------------------------------------------------------------------------------------
// Relaying through the real server: alice writes to bob.

/// Fixed keys: the server's, and its clients alice and bob (mallory is the key a dishonest
/// server slips in).
const SERVER_KEY: &str = "bob3072";
const ALICE: &str = "alice2048";
const BOB: &str = "bob2048";

/// A server trusting alice and bob (imported from its clients/ folder), and one key folder
/// per client (its own key pair and the server's public key), each with its own mailbox.
struct World {
    server_dir: tempfile::TempDir,
    alice: tempfile::TempDir,
    bob: tempfile::TempDir,
    server: BinServer,
}

impl World {
    /// `client send_msg --to bob ARGS` from alice, started and left running (stdout and stderr
    /// piped), for a test that acts while it waits.
    fn sending_to_bob(&self, args: &[&str]) -> std::process::Child {
        let addr = self.server.addr.as_str();
        let line = [
            &["client", "send_msg", "--to", "bob", "--server", addr][..],
            args,
        ]
        .concat();
        common::cli::command(self.alice.path(), &line)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn start() -> World {
        use common::cli::{put_private, put_public};
        let server_dir = tempfile::tempdir().unwrap();
        let s = server_dir.path();
        put_private(s, SERVER_KEY, "server_private.pem");
        put_public(s, SERVER_KEY, "server_public.pem");
        std::fs::create_dir(s.join("clients")).unwrap();
        put_public(s, ALICE, "clients/alice.pem");
        put_public(s, BOB, "clients/bob.pem");
        let client = |key: &str| {
            let dir = tempfile::tempdir().unwrap();
            put_private(dir.path(), key, "client_private.pem");
            put_public(dir.path(), key, "client_public.pem");
            put_public(dir.path(), SERVER_KEY, "server_public.pem");
            dir
        };
        let (alice, bob) = (client(ALICE), client(BOB));
        let server = BinServer::start(s, &[]);
        World {
            server_dir,
            alice,
            bob,
            server,
        }
    }

    /// A third client folder, for a key the server trusts under `name` (added now).
    fn another_client(&self, key: &str, name: &str) -> tempfile::TempDir {
        use common::cli::{put_private, put_public};
        let dir = tempfile::tempdir().unwrap();
        put_private(dir.path(), key, "client_private.pem");
        put_public(dir.path(), key, "client_public.pem");
        put_public(dir.path(), SERVER_KEY, "server_public.pem");
        self.server_cmd(&["trust", public_path(key).to_str().unwrap(), "--name", name]);
        dir
    }

    /// The client in `dir` sees bob in the directory; then the server puts mallory's key in
    /// bob's place, and the client is shown the change.
    fn offer_mallory_as_bob_to(&self, dir: &Path) {
        let (code, _, err) = self.client(dir, &["contacts"]);
        assert_eq!(code, 0, "{err}");
        let mallory_file = public_path("mallory");
        self.server_cmd(&[
            "trust",
            mallory_file.to_str().unwrap(),
            "--name",
            "bob",
            "--replace",
        ]);
        let (code, _, err) = self.client(dir, &["contacts"]);
        assert_eq!(code, 6, "{err}");
        assert!(err.contains("WARNING"), "{err}");
    }

    /// `letterlock server ARGS` in the server's folder (its store), which must succeed.
    fn server_cmd(&self, args: &[&str]) -> String {
        let mut all = vec!["server"];
        all.extend_from_slice(args);
        let (code, out, err) = run(self.server_dir.path(), &all);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(code, 0, "server {args:?}: {out}{err}");
        out
    }

    /// `letterlock client ARGS --server ADDR` in `dir`: exit status, stdout, stderr.
    fn client(&self, dir: &Path, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["client"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &self.server.addr]);
        let (code, out, err) = run(dir, &all);
        (code, String::from_utf8_lossy(&out).into_owned(), err)
    }

    fn send(&self, dir: &Path, to: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["send_msg", "--to", to];
        args.extend_from_slice(extra);
        self.client(dir, &args)
    }

    /// `recv_msg` until something came (the lease of a message set aside by the previous
    /// connection is released when the server notices that connection's end).
    fn recv(&self, dir: &Path, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["recv_msg"];
        args.extend_from_slice(extra);
        for _ in 0..50 {
            let got = self.client(dir, &args);
            if !got.2.contains("no messages") {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("no message came");
    }

    /// `client receipts --json`, parsed, with its exit status and stderr.
    fn receipts(&self, dir: &Path) -> (i32, Vec<serde_json::Value>, String) {
        let (code, out, err) = self.client(dir, &["receipts", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("receipts --json: {e}: {out}{err}");
        });
        (code, rows.as_array().unwrap().clone(), err)
    }
}

/// The message id `send_msg` printed.
fn sent_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("message id "))
        .unwrap_or_else(|| panic!("no message id in {out}"))
        .to_owned()
}

/// Every byte of the server's store: database, its WAL, and its blob folder.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name.starts_with(SERVER_STORE) {
                    stack.push(path);
                }
            } else if p != dir || name.starts_with(SERVER_STORE) {
                all.extend(std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn alice_writes_to_bob_in_both_modes_the_server_holds_no_plaintext_and_bob_reads_it() {
    let w = World::start();
    let (a, b) = (w.alice.path(), w.bob.path());
    for mode in ["hybrid", "asymmetric"] {
        let text = format!("the {mode} secret for bob only");
        let (code, out, err) = w.send(a, "bob", &["--mode", mode, &text]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("stored for bob on the server (not yet read)"),
            "{out}"
        );
        let id = sent_id(&out);
        // Stored, sealed: nothing readable in any file of the server's store.
        assert!(!contains(
            &store_bytes(w.server_dir.path()),
            text.as_bytes()
        ));
        let (_, rows, _) = w.receipts(a);
        let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
        assert_eq!(row["read"], false);
        assert_eq!(row["to"], "bob");

        let (code, out, err) = w.recv(b, &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out, text);
        assert!(err.contains(&id), "{err}");
        assert!(
            err.contains("from alice (key from the server's directory)"),
            "{err}"
        );
        assert!(err.contains("signature verified"), "{err}");
        assert!(err.contains(&format!("{mode} mode")), "{err}");

        let (code, rows, err) = w.receipts(a);
        assert_eq!(code, 0, "{err}");
        let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
        assert_eq!(row["read"], true, "{rows:?}");
        let (_, out, _) = w.client(a, &["receipts"]);
        assert!(out.contains("read by bob at"), "{out}");
    }
    // Bob's mailbox keeps them under alice's name.
    let (code, out, err) = run(b, &["client", "inbox", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(
        rows[0]["sender"], "alice",
        "the bare name, as recv_msg --json"
    );
    assert_eq!(rows[0]["sender_source"], "directory");
    // The text listing still says how the key is known.
    let (code, out, err) = run(b, &["client", "inbox"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("alice (directory)"),
        "{err}"
    );
}

/// The names and key ids of `dir`'s contacts, as `client contacts --offline --json` lists them.
fn contact_names(dir: &Path) -> Vec<(String, String)> {
    let (code, out, err) = run(dir, &["client", "contacts", "--offline", "--json"]);
    assert!(code == 0 || code == 6, "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("name"), s("key_id"))
        })
        .collect()
}

#[test]
fn a_client_never_takes_its_own_directory_entry_for_a_contact() {
    let w = World::start();
    let (a, b) = (w.alice.path(), w.bob.path());
    let (alice_id, bob_id) = (public(ALICE).id().to_string(), public(BOB).id().to_string());
    // `client contacts` reads the directory (which lists alice too).
    let (code, out, err) = w.client(a, &["contacts"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("new contact from the server's directory: bob"),
        "{err}"
    );
    assert!(!err.contains("directory: alice"), "{err}");
    assert!(!out.contains(&alice_id), "{out}");
    assert_eq!(contact_names(a), vec![("bob".to_owned(), bob_id)]);
    // A fetch that asks the directory for an unknown sender (bob learns alice's key) does not
    // add bob himself either.
    let (code, out, err) = w.send(a, "bob", &["hello"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!((code, out.as_str()), (0, "hello"), "{err}");
    assert!(!err.contains("directory: bob"), "{err}");
    assert_eq!(contact_names(b), vec![("alice".to_owned(), alice_id)]);
}

/// "server" (in any case) reads as the server itself: a client trusted under it could pass its
/// messages off as the server's (found by a trial run). The server refuses to trust one under
/// it, a client refuses to pin one, and one a store trusts anyway (written before the rule) is
/// not published in the directory (a client refuses such an entry too, should a server list
/// one: `a_directory_entry_named_as_the_server_is_refused_and_records_nothing`).
#[test]
fn no_client_passes_as_the_server_by_its_name() {
    let w = World::start();
    let a = w.alice.path();
    let mallory = public_path("mallory");
    let mallory = mallory.to_str().unwrap();
    for name in ["server", "Server"] {
        let (code, _, err) = run(
            w.server_dir.path(),
            &["server", "trust", mallory, "--name", name],
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is reserved"), "{err}");
        let (code, _, err) = run(a, &["client", "trust", mallory, "--name", name]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is reserved"), "{err}");
    }
    // A store that trusts one anyway (written by hand, or before the rule).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(w.server_dir.path().join(SERVER_STORE)).unwrap();
        let now = letterlock::envelope::unix_now();
        common::trust_in(&store, "server", &public("mallory"), false, now).await;
        store.close().await.unwrap();
    });
    let (code, out, err) = w.client(a, &["contacts", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("REFUSED"), "not even offered: {err}");
    let names: Vec<_> = contact_names(a).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["bob".to_owned()], "{err}");
}

#[test]
fn a_file_larger_than_a_frame_goes_from_alice_to_bob_and_bob_saves_it() {
    let w = World::start();
    let (a, b) = (w.alice.path(), w.bob.path());
    let data = common::data(700 * 1024);
    let file = a.join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let (code, out, err) = w.send(a, "bob", &["--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let id = sent_id(&out);
    assert!(!contains(&store_bytes(w.server_dir.path()), &data[..4096]));
    let saved = b.join("saved");
    let (code, out, err) = w.recv(b, &["-o", saved.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("from alice"), "{err}");
    assert_eq!(
        std::fs::read(saved.join(format!("{id}.msg"))).unwrap(),
        data
    );
}

/// `send_msg --to --wait` whose receipt cannot be checked once the message is stored (the
/// server stopped meanwhile) says so and exits 0, "read": null in JSON: the message is stored,
/// and a failure there would have had it sent twice (found by a review).
#[test]
fn a_receipt_that_cannot_be_checked_after_the_message_was_stored_is_not_a_failure() {
    use std::io::BufRead;
    let w = World::start();
    let a = w.alice.path();
    let waiting = w.sending_to_bob(&["--wait", "60s", "--json", "stored, then the server goes"]);
    // Stored once the sender's mailbox marks it: then the server goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, out, err) = w.client(a, &["receipts", "--offline"]);
        assert_eq!(code, 0, "{err}");
        if out.contains("stored on the server") || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let World { server, .. } = w;
    drop(server);
    let out = waiting.wait_with_output().unwrap();
    let text = common::cli::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("its receipt could not be checked"), "{text}");
    assert!(text.contains("do not send it again"), "{text}");
    let json = std::io::BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON: {text}"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["stored"], true, "{json}");
    assert!(v["read"].is_null(), "{json}");
}

#[test]
fn send_msg_wait_says_read_by_bob_once_bob_received_it() {
    let w = World::start();
    let (a, b) = (w.alice.path(), w.bob.path());
    // Too long for the clock to add: no panic (found by a trial run), it waits on.
    let waiting = w.sending_to_bob(&["--wait", "18446744073709551615", "are you there?"]);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "are you there?");
    let done = waiting.wait_with_output().unwrap();
    let text = common::cli::text(&done);
    assert!(done.status.success(), "{text}");
    assert!(text.contains("read by bob at"), "{text}");
    // With no reader, --wait ends after its time, exit 0, saying it was not read.
    let (code, out, err) = w.send(a, "bob", &["--wait", "300ms", "nobody reads this"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("not read by bob within 300 milliseconds"),
        "{out}"
    );
    // Both commands take both forms: plain seconds, or a unit.
    let (code, out, err) = w.send(a, "bob", &["--wait", "1", "nor this"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("not read by bob within 1 second"), "{out}");
    // Two messages wait: a --wait too long for the clock returns with them at once.
    let (code, out, err) = w.client(b, &["recv_msg", "--wait", "18446744073709551615"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nobody reads this"), "{out}{err}");
    let (code, _, err) = w.client(b, &["recv_msg", "--wait", "300ms"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = w.client(a, &["recv_msg", "--wait", "0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = w.client(a, &["recv_msg", "--wait", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a duration: give seconds (30)"), "{err}");
}

#[test]
fn a_message_to_a_key_the_server_does_not_trust_is_refused_with_code_12() {
    let w = World::start();
    let a = w.alice.path();
    let mallory = public_path("mallory");
    let (code, _, err) = run(
        a,
        &[
            "client",
            "trust",
            mallory.to_str().unwrap(),
            "--name",
            "mallory",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = w.send(a, "mallory", &["hello?"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("code 12"), "{err}");
    assert!(err.contains("NOT sent to mallory"), "{err}");
    // One sentence, said once: no chain repeating the refusal in the server's words.
    assert_eq!(err.matches("code 12").count(), 1, "{err}");
    assert!(
        !err.contains("the server refused") && !err.contains("the server says"),
        "{err}"
    );
    // Refused outright: not kept among the sent messages waiting for a receipt.
    let (code, out, err) = run(a, &["client", "receipts", "--offline", "--json"]);
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(sent.as_array().unwrap().len(), 0, "{sent}");
    // An unknown name is refused before anything is sent.
    let (code, _, err) = w.send(a, "nobody", &["hello?"]);
    assert_eq!(code, 1);
    assert!(err.contains("no contact named nobody"), "{err}");
}

#[test]
fn a_server_substituting_bobs_key_is_refused_by_a_pin_and_shown_as_a_change_otherwise() {
    let w = World::start();
    let a = w.alice.path();
    // Carol has seen bob's directory key; alice pinned bob's real key out of band.
    let carol = w.another_client("alice3072", "carol");
    let c = carol.path();
    let (code, _, err) = w.client(c, &["contacts"]);
    assert_eq!(code, 0, "{err}");
    let bob_file = public_path(BOB);
    let (code, _, err) = run(
        a,
        &[
            "client",
            "trust",
            bob_file.to_str().unwrap(),
            "--name",
            "bob",
        ],
    );
    assert_eq!(code, 0, "{err}");

    // The server swaps bob's key for mallory's.
    let mallory_file = public_path("mallory");
    w.server_cmd(&[
        "trust",
        mallory_file.to_str().unwrap(),
        "--name",
        "bob",
        "--replace",
    ]);
    let (bob_id, mallory_id) = (
        public(BOB).id().to_string(),
        public("mallory").id().to_string(),
    );

    // Alice: the directory conflicts with her pin: refused loudly, her pin stays.
    let (code, out, err) = w.client(a, &["contacts", "--json"]);
    assert_eq!(code, 6, "{out}{err}");
    assert!(err.contains("REFUSED"), "{err}");
    assert!(err.contains(&bob_id) && err.contains(&mallory_id), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bob = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "bob")
        .unwrap();
    assert_eq!(bob["key_id"], bob_id);
    assert_eq!(bob["source"], "pinned");
    // Her message stays sealed to bob's real key: the server can only refuse it.
    let (code, _, err) = w.send(a, "bob", &["for the real bob"]);
    assert_eq!(code, 1);
    assert!(err.contains("code 12"), "{err}");
    // A name the directory does not have is no contact, whatever else conflicts.
    let (code, _, err) = w.send(a, "nobody", &["x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no contact named nobody"), "{err}");
    // ... and bob's conflict, not what this send is about, takes one line.
    assert!(
        err.contains("disagrees with the key you pinned for bob") && !err.contains("NASTY"),
        "{err}"
    );

    // Carol: shown as a change, ssh-style, and nothing is sent until she accepts it.
    let (code, out, err) = w.client(c, &["contacts"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("WARNING"), "{err}");
    assert!(err.contains(&bob_id) && err.contains(&mallory_id), "{err}");
    // The warning leads with the form `letterlock fingerprint` leads with.
    let mallory_ssh = public("mallory").ssh_fingerprint().to_string();
    assert!(
        err.contains(&format!("--accept bob --key {mallory_ssh}")),
        "{err}"
    );
    assert!(
        out.contains(&format!("offered instead: {mallory_id} ({mallory_ssh})")),
        "{out}"
    );
    // A send to someone else mentions bob's change in one line, not the whole warning.
    let (code, _, err) = w.send(c, "nobody", &["x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another key for bob"), "{err}");
    assert!(!err.contains("THE KEY OF bob"), "{err}");
    let (code, out, err) = w.send(c, "bob", &["hi bob"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("NOT sent"), "{err}");
    assert!(err.contains("--accept bob"), "{err}");
    // What the new "bob" (mallory's key) sends carol is set aside, not shown, until then.
    let fake_bob = tempfile::tempdir().unwrap();
    {
        use common::cli::{put_private, put_public};
        put_private(fake_bob.path(), "mallory", "client_private.pem");
        put_public(fake_bob.path(), "mallory", "client_public.pem");
        put_public(fake_bob.path(), SERVER_KEY, "server_public.pem");
    }
    let (code, out, err) = w.send(fake_bob.path(), "carol", &["it is really me, bob"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.recv(c, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(err.contains("CHANGED key for bob"), "{err}");
    assert!(!out.contains("really me"), "{out}");
    let (code, _, err) = w.client(c, &["contacts", "--accept", "bob"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("THE KEY OF bob"),
        "the accept does not warn again of what it accepts: {err}"
    );
    let (code, out, err) = w.recv(c, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "it is really me, bob");
    assert!(
        err.contains("from bob (key from the server's directory)"),
        "{err}"
    );
    let (code, out, err) = w.send(c, "bob", &["hi new bob"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&mallory_id),
        "sealed to the accepted key: {out}"
    );

    // What the fake bob sends alice, who pinned the real bob, is set aside as a key in
    // conflict with her pin: never with advice to trust (pin) it.
    let (code, out, err) = w.send(fake_bob.path(), "alice", &["alice, it is bob"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.recv(a, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(!out.contains("it is bob"), "{out}");
    assert!(
        err.contains(&format!(
            "this key is offered for bob, whom you pinned as {bob_id}; it is not bob's pinned key"
        )),
        "{err}"
    );
    assert!(err.contains(&mallory_id), "{err}");
    assert!(
        err.contains("do not trust it without checking with bob"),
        "{err}"
    );
    assert!(
        !err.contains("client trust") && !err.contains("unknown key"),
        "no advice to pin the substituted key: {err}"
    );
}

#[test]
fn untrust_of_a_contact_whose_key_change_waits_needs_force() {
    let w = World::start();
    let a = w.alice.path();
    w.offer_mallory_as_bob_to(a);
    let (bob_id, mallory_id) = (
        public(BOB).id().to_string(),
        public("mallory").id().to_string(),
    );
    // Forgetting bob now would make mallory's key a brand-new "bob": refused.
    let (code, _, err) = run(a, &["client", "untrust", "bob"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("changed key waiting") && err.contains("--force"),
        "{err}"
    );
    assert!(err.contains(&mallory_id), "{err}");
    assert_eq!(contact_names(a), vec![("bob".to_owned(), bob_id)]);
    let (code, out, err) = run(a, &["client", "contacts", "--offline", "--json"]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 6, "a change waits: {out}{err}");
    assert!(out.contains("\"changed\""), "the change still waits: {out}");
    // With --force, the user's choice: bob is forgotten.
    let (code, _, err) = run(a, &["client", "untrust", "bob", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(contact_names(a).is_empty());
}

/// A directory contact the server no longer trusts is no longer in the directory: a send to it
/// says so (found by a trial run: it said the key had changed, "see the warning above", with no
/// warning above and a stale key), and `contacts` shows it as unlisted.
#[test]
fn a_contact_the_directory_no_longer_lists_is_said_to_be_gone() {
    let w = World::start();
    let a = w.alice.path();
    // A change offered, never accepted, then bob is removed from the server.
    w.offer_mallory_as_bob_to(a);
    w.server_cmd(&["untrust", "bob"]);
    let (code, out, err) = w.send(a, "bob", &["still there?"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("the server's directory no longer lists bob"),
        "{err}"
    );
    assert!(!err.contains("see the warning above"), "{err}");
    let (_, out, err) = w.client(a, &["contacts", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["name"], "bob", "{out}{err}");
    assert_eq!(rows[0]["state"], "unlisted", "{out}{err}");
    // Offline, the client cannot tell: it shows what it knows.
    let (_, out, _) = run(a, &["client", "contacts", "--offline", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(rows[0]["state"], "changed");
}

/// Rotating a recipient's key on the server strands what other clients relayed to the old
/// key: the server says so, and that only their senders can send them again (it cannot read
/// them to resend them itself).
#[test]
fn a_rotation_names_the_senders_of_relayed_messages_it_strands() {
    let w = World::start();
    let (code, out, err) = w.send(w.alice.path(), "bob", &["before the rotation"]);
    assert_eq!(code, 0, "{out}{err}");
    let file = public_path("bob4096");
    let (code, out, err) = run(
        w.server_dir.path(),
        &[
            "server",
            "trust",
            file.to_str().unwrap(),
            "--name",
            "bob",
            "--replace",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 message(s) other clients relayed to bob's old key")
            && err.contains("only their senders can send them again (alice)"),
        "{err}"
    );
    assert!(
        !err.contains("server send_msg"),
        "the server cannot resend these: {err}"
    );
    let _ = out;
    let listed = w.server_cmd(&["outbox"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("bob") && l.contains("alice") && l.contains("STRANDED")),
        "{listed}"
    );
}

/// `contacts --accept NAME` accepts only the changed key the user was shown by an earlier
/// `contacts`: a server that swaps the key again between the user's check and the accept gets
/// nothing accepted, and a key first seen by the accepting command itself is shown, not taken.
#[test]
fn accept_takes_only_the_changed_key_the_user_was_shown() {
    let w = World::start();
    let a = w.alice.path();
    let key_of_bob = |dir: &Path| {
        let (_, out, err) = w.client(dir, &["contacts", "--offline", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("contacts --json: {e}: {out}{err}");
        });
        let bob = rows.as_array().unwrap().iter().find(|r| r["name"] == "bob");
        bob.unwrap()["key_id"].as_str().unwrap().to_owned()
    };
    let swap_bob_to = |key: &str| {
        let file = public_path(key);
        w.server_cmd(&[
            "trust",
            file.to_str().unwrap(),
            "--name",
            "bob",
            "--replace",
        ]);
    };
    let id = |key: &str| public(key).id().to_string();
    let (code, _, err) = w.client(a, &["contacts"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(key_of_bob(a), id(BOB));

    // Shown mallory's key as bob's; the server swaps again before alice accepts.
    swap_bob_to("mallory");
    let (code, _, err) = w.client(a, &["contacts"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains(&id("mallory")), "{err}");
    swap_bob_to("bob4096");
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("now offers bob the key") && err.contains(&id("bob4096")),
        "{err}"
    );
    assert!(err.contains("nothing was accepted"), "{err}");
    assert_eq!(
        key_of_bob(a),
        id(BOB),
        "a key the user was not shown was accepted"
    );
    // The error showed the new key: accepting now takes it.
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("accepted the new key of bob: {}", id("bob4096"))),
        "{err}"
    );
    assert_eq!(key_of_bob(a), id("bob4096"));

    // A change first seen by `--accept` itself is shown, not accepted.
    swap_bob_to("alice4096");
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("not been shown before") && err.contains(&id("alice4096")),
        "{err}"
    );
    assert_eq!(key_of_bob(a), id("bob4096"));
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(key_of_bob(a), id("alice4096"));

    // Naming the checked key: only that one is accepted, by key id or OpenSSH fingerprint,
    // whatever the contacts recorded before; the banner gives the command with it.
    swap_bob_to("mallory");
    let (code, _, err) = w.client(a, &["contacts"]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains(&format!(
            "contacts --accept bob --key {}",
            public("mallory").ssh_fingerprint()
        )),
        "{err}"
    );
    // The recorded offer and the directory's agree (mallory), but the user checked another
    // key: nothing is accepted (without --key, mallory would be).
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob", "--key", &id("bob4096")]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("not {}; nothing was accepted", id("bob4096"))),
        "{err}"
    );
    assert_eq!(key_of_bob(a), id("alice4096"));
    // Mallory recorded, the directory now offers bob4096, which the user checked: accepted
    // (without --key, refused as not the recorded offer).
    swap_bob_to("bob4096");
    let ssh = public("bob4096").ssh_fingerprint().to_string();
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob", "--key", &ssh]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(key_of_bob(a), id("bob4096"));

    // Nothing to accept, and no such contact, say so.
    let (code, _, err) = w.client(a, &["contacts", "--accept", "bob"]);
    assert_ne!(code, 0);
    assert!(err.contains("no changed key waiting"), "{err}");
    let (code, _, err) = w.client(a, &["contacts", "--accept", "nobody"]);
    assert_ne!(code, 0);
    assert!(err.contains("no contact named nobody"), "{err}");
}

#[test]
fn messages_kept_before_a_contacts_key_change_still_read_after_accept() {
    let w = World::start();
    let (a, b) = (w.alice.path(), w.bob.path());
    let (code, out, err) = w.send(a, "bob", &["before the change"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = sent_id(&out);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!((code, out.as_str()), (0, "before the change"), "{err}");
    // Alice's key changes in the directory; bob accepts the change.
    let mallory_file = public_path("mallory");
    w.server_cmd(&[
        "trust",
        mallory_file.to_str().unwrap(),
        "--name",
        "alice",
        "--replace",
    ]);
    let (code, _, err) = w.client(b, &["contacts"]);
    assert_eq!(code, 6, "{err}");
    let (code, _, err) = w.client(b, &["contacts", "--accept", "alice"]);
    assert_eq!(code, 0, "{err}");
    // The message bob kept still opens, with alice's earlier key, said as such.
    let (code, out, err) = run(b, &["client", "read", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"before the change");
    assert!(
        err.contains("from alice (directory, an earlier key"),
        "{err}"
    );
    // The earlier key is no contact: not listed, not a recipient.
    let mallory_id = public("mallory").id().to_string();
    assert_eq!(
        contact_names(b),
        vec![("alice".to_owned(), mallory_id.clone())]
    );
    let (code, out, err) = w.send(b, "alice", &["to the new alice"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&mallory_id),
        "sealed to the current key only: {out}"
    );
}

#[test]
fn pinning_another_key_for_a_directory_name_says_so_and_needs_replace() {
    let w = World::start();
    let a = w.alice.path();
    let (code, _, err) = w.client(a, &["contacts"]);
    assert_eq!(code, 0, "{err}");
    let file = public_path("mallory");
    let (code, _, err) = run(
        a,
        &["client", "trust", file.to_str().unwrap(), "--name", "bob"],
    );
    assert_eq!(code, 1, "{err}");
    let bob_id = public(BOB).id().to_string();
    assert!(
        err.contains(&format!(
            "bob is known from the server's directory with another key ({bob_id}); pinning"
        )),
        "{err}"
    );
    assert!(err.contains("add --replace"), "{err}");
    assert!(!err.contains("already pinned"), "{err}");
    assert_eq!(contact_names(a), vec![("bob".to_owned(), bob_id)]);
}

/// mallory sends bob "psst", then the server stops listing mallory: bob's client cannot learn
/// the key from it, so the message waits for bob from a key he does not know.
fn mallory_sends_bob_then_is_untrusted(w: &World) {
    let mallory = w.another_client("mallory", "mallory");
    let (code, out, err) = w.send(mallory.path(), "bob", &["psst"]);
    assert_eq!(code, 0, "{out}{err}");
    w.server_cmd(&["untrust", "mallory"]);
}

/// `recv_msg --wait` waits past a message an earlier run set aside: it is reported again, once,
/// but it is not news (found by a trial run: a loop of `recv_msg --wait` reconnected without a
/// pause while such a message stayed on the server).
#[test]
fn recv_msg_wait_waits_past_a_message_set_aside_before() {
    let w = World::start();
    let b = w.bob.path();
    mallory_sends_bob_then_is_untrusted(&w);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    let started = std::time::Instant::now();
    let (code, out, err) = w.client(b, &["recv_msg", "--wait", "2"]);
    let waited = started.elapsed();
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "{waited:?}: {err}"
    );
    // Reported once, as one an earlier run set aside.
    assert_eq!(
        err.matches("set aside again (an earlier recv_msg saw it too), NOT received")
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("0 new, 1 set aside"), "{err}");
}

#[test]
fn an_unknown_senders_relayed_message_is_set_aside_then_delivered_once_pinned() {
    let w = World::start();
    let b = w.bob.path();
    mallory_sends_bob_then_is_untrusted(&w);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(err.contains("unknown key"), "{err}");
    assert!(err.contains(&public("mallory").id().to_string()), "{err}");
    assert!(!out.contains("psst"));
    // The summary counts it, rather than "no new messages" after the report.
    assert!(err.contains("0 new, 1 set aside"), "{err}");
    assert!(!err.contains("no new messages"), "{err}");
    // --json: the set-aside object names the signer's key, as the help says.
    let (code, out, err) = w.recv(b, &["--json"]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["status"], "set_aside");
    assert_eq!(line["sender_key"], public("mallory").id().to_string());
    assert_eq!(
        line["again"], true,
        "the first recv_msg set it aside: {line}"
    );
    bob_pins_mallory_and_gets_psst(&w, &[]);
}

/// bob reads the directory (learning mallory, whom the server trusts now), then mallory writes
/// `text` to bob; mallory's folder.
fn bob_learns_mallory_who_writes(w: &World, text: &str) -> tempfile::TempDir {
    let mallory = w.another_client("mallory", "mallory");
    let (code, _, err) = w.client(w.bob.path(), &["contacts"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("new contact from the server's directory: mallory"),
        "{err}"
    );
    let (code, out, err) = w.send(mallory.path(), "bob", &[text]);
    assert_eq!(code, 0, "{out}{err}");
    mallory
}

/// The client in `b` pins mallory's key itself (`client trust … EXTRA`).
fn pin_mallory(b: &Path, extra: &[&str]) {
    let file = public_path("mallory");
    let pin = [
        "client",
        "trust",
        file.to_str().unwrap(),
        "--name",
        "mallory",
    ];
    let (code, _, err) = run(b, &[&pin[..], extra].concat());
    assert_eq!(code, 0, "{err}");
}

/// bob pins mallory's key himself, and "psst" comes, from the pinned key.
fn bob_pins_mallory_and_gets_psst(w: &World, extra: &[&str]) {
    let b = w.bob.path();
    pin_mallory(b, extra);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "psst");
    assert!(err.contains("from mallory (pinned key)"), "{err}");
}

/// The directory vouches for a key only while it lists it: bob learnt mallory from it, mallory
/// wrote to bob, then the server untrusted mallory (its key lost, say). bob's client sets the
/// message aside, saying why, until bob pins the key himself (found by a review: a contact once
/// learnt from the directory stayed usable after the server stopped listing it).
#[test]
fn a_directory_contact_the_server_untrusted_sends_nothing_on_the_directorys_word() {
    let w = World::start();
    let b = w.bob.path();
    let _mallory = bob_learns_mallory_who_writes(&w, "psst");
    w.server_cmd(&["untrust", "mallory"]);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(!out.contains("psst"), "{out}");
    assert!(
        err.contains("a contact taken from the server's directory, which no longer lists mallory")
            && err.contains("pin it yourself"),
        "{err}"
    );
    assert!(err.contains("0 new, 1 set aside"), "{err}");
    // Pinned over the directory contact: --replace.
    bob_pins_mallory_and_gets_psst(&w, &["--replace"]);
}

/// mallory's key is replaced on the server after mallory wrote to bob: the old key's message
/// is set aside, naming the new key and what to do (ask mallory again), not suggesting a pin of
/// the old key (found by a review: that pin would then conflict with the new key).
#[test]
fn a_message_signed_by_a_directory_contacts_replaced_key_is_set_aside() {
    let w = World::start();
    let b = w.bob.path();
    let _mallory = bob_learns_mallory_who_writes(&w, "before the rotation");
    let rotated = public_path("alice4096");
    w.server_cmd(&[
        "trust",
        rotated.to_str().unwrap(),
        "--name",
        "mallory",
        "--replace",
    ]);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    let now = public("alice4096").id().to_string();
    assert!(
        err.contains(&format!(
            "mallory's key until the server's directory replaced it with {now}"
        )) && err.contains("Ask mallory to send it again"),
        "{err}"
    );
    assert!(!err.contains("pin it yourself"), "{err}");
}

/// A plain version 1 connection has no directory: a key taken from it is not used there, a
/// pinned one is (found by a review: over `--plain-v1` the directory key was still used).
#[test]
fn over_version_1_a_directory_key_is_not_used_a_pinned_one_is() {
    let w = World::start();
    let b = w.bob.path().to_owned();
    let _mallory = bob_learns_mallory_who_writes(&w, "psst");
    let World {
        server_dir,
        bob: _bob,
        server,
        ..
    } = w;
    drop(server);
    let v1 = BinServer::start(server_dir.path(), &["--plain-v1"]);
    let recv = || {
        run(
            &b,
            &["client", "recv_msg", "--plain-v1", "--server", &v1.addr],
        )
    };
    let (code, out, err) = recv();
    assert_eq!(code, EXIT_SET_ASIDE, "{err}");
    assert!(out.is_empty(), "{err}");
    assert!(
        err.contains("a version 1 connection (--plain-v1) has no directory"),
        "{err}"
    );
    pin_mallory(&b, &["--replace"]);
    // The lease of the message set aside ends when the server sees that connection close.
    let mut got = recv();
    for _ in 0..50 {
        if got.0 == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = recv();
    }
    let (code, out, err) = got;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"psst");
}

/// Messages from a key not known yet wait in temporary files, one open file each, until the
/// directory is read after the fetch: at most 64 of them; the rest are set aside, saying so,
/// and come with the next fetch (found by a review: a backlog beyond the open-file limit
/// failed every fetch).
#[test]
fn at_most_64_messages_from_unknown_keys_wait_for_the_directory_in_one_fetch() {
    let w = World::start();
    let _mallory = w.another_client("mallory", "mallory");
    // Queued with the server stopped, as the store allows one server at a time.
    let World {
        server_dir,
        alice,
        bob,
        server,
    } = w;
    drop(server);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(server_dir.path().join(SERVER_STORE)).unwrap();
        for i in 0..66 {
            let text = format!("m{i:02} ");
            let (sealed, info) = common::seal_with_info(
                private("mallory").as_ref(),
                &public(BOB),
                &SealOptions::default(),
                text.as_bytes(),
            );
            enqueue_for(&store, &sealed, info.ack_tag, &public(BOB), "bob").await;
        }
        store.close().await.unwrap();
    });
    let server = BinServer::start(server_dir.path(), &[]);
    let w = World {
        server_dir,
        alice,
        bob,
        server,
    };
    let b = w.bob.path();
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, EXIT_SET_ASIDE, "{err}");
    assert_eq!(out.matches("m").count(), 64, "{out}");
    assert_eq!(
        err.matches("more than 64 messages from keys not known yet came in this fetch")
            .count(),
        2,
        "{err}"
    );
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("m").count(), 2, "{out}");
}

/// A directory contact still listed is received from as before, through the same check.
#[test]
fn a_directory_contact_still_listed_is_received_from() {
    let w = World::start();
    let b = w.bob.path();
    let (code, _, err) = w.client(b, &["contacts"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = w.send(w.alice.path(), "bob", &["hello bob"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "hello bob");
    assert!(err.contains("from alice"), "{err}");
}

#[test]
fn a_receipt_forged_in_the_servers_store_is_never_shown_as_read() {
    let w = World::start();
    let (a, b) = (w.alice.path(), w.bob.path());
    let (code, out, err) = w.send(a, "bob", &["first"]);
    assert_eq!(code, 0, "{out}{err}");
    let first = sent_id(&out);
    let (code, out, err) = w.recv(b, &[]);
    assert_eq!((code, out.as_str()), (0, "first"), "{err}");
    let (code, out, err) = w.send(a, "bob", &["second, never fetched"]);
    assert_eq!(code, 0, "{out}{err}");
    let second = sent_id(&out);

    // The server's operator edits its store: bob's true tag for the first message is replaced
    // by another, and a receipt is made up for the second (undelivered) one, reusing that
    // true tag of the first.
    let db = rusqlite::Connection::open(w.server_dir.path().join(SERVER_STORE)).unwrap();
    let true_tag: Vec<u8> = db
        .query_row(
            &format!("SELECT ack_tag FROM receipts WHERE message_id = X'{first}'"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        &format!("UPDATE receipts SET ack_tag = randomblob(32) WHERE message_id = X'{first}'"),
        [],
    )
    .unwrap();
    db.execute(
        &format!(
            "INSERT INTO receipts (sender_key_id, message_id, recipient_key_id, recipient_name, \
             content_hash, ack_tag, delivered) SELECT sender_key_id, X'{second}', \
             recipient_key_id, recipient_name, content_hash, ?1, delivered FROM receipts \
             WHERE message_id = X'{first}'"
        ),
        [&true_tag],
    )
    .unwrap();

    let (code, rows, err) = w.receipts(a);
    assert_eq!(code, 6, "{err}");
    for id in [&first, &second] {
        let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
        assert_eq!(row["read"], false, "{id}: {rows:?}");
        assert!(
            err.contains(&format!("receipt for {id} that does not check out")),
            "{err}"
        );
    }
    let (_, out, _) = w.client(a, &["receipts"]);
    assert!(!out.contains("read by"), "{out}");

    // Bob's true receipt put back: now, and only now, the first reads as read.
    db.execute(
        &format!("UPDATE receipts SET ack_tag = ?1 WHERE message_id = X'{first}'"),
        [&true_tag],
    )
    .unwrap();
    let (_, rows, _) = w.receipts(a);
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(row(&first)["read"], true);
    assert_eq!(row(&second)["read"], false);
}

/// `send_msg --to bob` whose relayed message the server cannot store (its PostgreSQL stopped
/// after the handshake: `Unavailable`) says so, reconnects, and resends the very same sealed
/// bytes under the same id until the database is back: stored once, under the id it announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_msg_to_resends_the_same_relayed_message_after_unavailable() {
    use letterlock::store::{PostgresStore, Store};
    use std::io::Write;
    let db = common::postgres::exclusive_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    std::fs::create_dir(d.join("clients")).unwrap();
    common::cli::put_public(d, "alice3072", "clients/bob.pem");
    let (code, _, err) = run(d, &["server", "migrate", "--store", &db.url]);
    assert_eq!(code, 0, "{err}");
    let server = BinServer::start(d, &["--store", &db.url]);
    // Alice (the classroom client) pins bob: nothing to ask the directory before sending.
    let bob_file = public_path("alice3072");
    let (code, _, err) = run(
        d,
        &[
            "client",
            "trust",
            bob_file.to_str().unwrap(),
            "--name",
            "bob",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let text = "relayed while PostgreSQL restarted";
    let mut watched = common::cli::Watched::spawn(common::cli::command(
        d,
        &[
            "-v",
            "client",
            "send_msg",
            "--to",
            "bob",
            "--server",
            &server.addr,
            "--timeout",
            "120",
        ],
    ));
    // Connected: the message (stdin) is sealed and relayed only once it is written.
    watched.wait_for("connected; the server proved its key");
    tokio::task::block_in_place(|| db.stop_server());
    let mut stdin = watched.child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let resending = watched.wait_for("resending it");
    assert!(resending.contains("unavailable"), "{resending}");
    tokio::task::block_in_place(|| db.start_server());
    let (out, _) = watched.finish();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("stored for bob on the server"), "{stdout}");
    let id = sent_id(&stdout);
    assert!(resending.contains(&id), "resent another id: {resending}");

    let store = PostgresStore::connect(&db.url).await.unwrap();
    let waiting = store
        .pending_outbox(&public("alice3072").id().0)
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1, "stored once: {waiting:?}");
    assert_eq!(hex::encode(waiting[0].message_id), id);
    drop(server);
}
