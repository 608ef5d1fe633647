//! Trusted clients kept in the store, through the binary: a running server honours `server
//! trust`, `server untrust` and `server trust --replace` at the next connection, without a
//! restart; old messages stay readable after a rotation; the classroom key files are imported;
//! `server clients --json` says who is trusted since when with how many messages.
//!
//! Layout: one folder for the server (`srv/`, key bob2048) and one per client key: `alice/`
//! (alice2048, trusted through the classroom file srv/client_public.pem as `client`), `bob/`
//! (mallory's key, the client called bob) and `bob2/` (alice3072, bob's rotated key).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::cli::{BinServer, fails_text, letterlock, ok_text, put_private, put_public};

/// The folders: a server with the classroom file client_public.pem (alice) and three clients.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let srv = root.join("srv");
        std::fs::create_dir(&srv).unwrap();
        put_private(&srv, "bob2048", "server_private.pem");
        put_public(&srv, "bob2048", "server_public.pem");
        put_public(&srv, "alice2048", "client_public.pem");
        for (folder, key) in [
            ("alice", "alice2048"),
            ("bob", "mallory"),
            ("bob2", "alice3072"),
        ] {
            let d = root.join(folder);
            std::fs::create_dir(&d).unwrap();
            put_private(&d, key, "client_private.pem");
            put_public(&d, key, "client_public.pem");
            put_public(&d, "bob2048", "server_public.pem");
        }
        Setup { _dir: dir, root }
    }

    fn dir(&self, folder: &str) -> PathBuf {
        self.root.join(folder)
    }

    /// A server command run from the root folder with --keys srv (the store defaults to
    /// srv/letterlock-server.db).
    fn server(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--keys".into(), "srv".into()]);
        all
    }

    fn server_ok(&self, args: &[&str]) -> String {
        let args = self.server(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok_text(&self.root, &args)
    }

    fn server_fails(&self, args: &[&str]) -> String {
        let args = self.server(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_text(&self.root, &args)
    }

    /// The server run from the root folder with --keys srv and `flags`.
    fn start(&self, flags: &[&str]) -> (BinServer, String) {
        let server = BinServer::start(&self.root, &self.server_args(flags));
        let addr = server.addr.clone();
        (server, addr)
    }

    /// `client send_msg TEXT` from the client folder `who`.
    fn send(&self, who: &str, addr: &str, text: &str) -> Output {
        letterlock(
            &self.dir(who),
            &["client", "send_msg", text, "--server", addr, "--keys", "."],
        )
    }

    /// `client send_msg TEXT` from the client folder `who`, which must succeed.
    fn send_ok(&self, who: &str, addr: &str, text: &str) {
        let out = self.send(who, addr, text);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// One message from alice, through a server started for it and stopped after it.
    fn deliver_one(&self, text: &str) {
        let (_server, addr) = self.start(&[]);
        self.send_ok("alice", &addr, text);
    }

    fn clients_json(&self, all: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["server", "clients", "--json"];
        if all {
            args.push("--all");
        }
        let out = letterlock(&self.root, &self.server_args(&args));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn server_args<'a>(&self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--keys", "srv"]);
        all
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The id `client send_msg` printed ("message id HEX").
fn sent_id(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("message id "))
        .unwrap_or_else(|| panic!("no message id in {text}"))
        .trim()
        .to_owned()
}

#[test]
fn trust_and_untrust_take_effect_on_a_running_server_without_restart() {
    let s = Setup::new();
    let (_server, addr) = s.start(&[]);

    // alice came from the classroom file; bob is not trusted yet.
    s.send_ok("alice", &addr, "from alice");
    let refused = s.send("bob", &addr, "too early");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("refused our key"),
        "{}",
        stderr(&refused)
    );
    // The hint's command works for a rotated key too (found by a trial run).
    assert!(
        stderr(&refused).contains("with --replace if NAME is trusted with another key"),
        "{}",
        stderr(&refused)
    );

    let said = s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    assert!(said.contains("trusting bob"), "{said}");
    // The same server process, no restart.
    let sent = s.send("bob", &addr, "hello from bob");
    assert!(sent.status.success(), "{}", stderr(&sent));
    let id = sent_id(&sent);

    let said = s.server_ok(&["server", "untrust", "bob"]);
    assert!(said.contains("no longer trusted"), "{said}");
    assert!(said.contains("1 stored message"), "{said}");
    let refused = s.send("bob", &addr, "after untrust");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("refused our key"),
        "{}",
        stderr(&refused)
    );
    // alice is not affected.
    s.send_ok("alice", &addr, "still here");

    // bob's message is kept and still readable.
    let read = s.server_ok(&["server", "read", &id]);
    assert!(read.contains("hello from bob"), "{read}");
}

#[test]
fn the_plain_v1_server_follows_trust_changes_too() {
    let s = Setup::new();
    let (_server, addr) = s.start(&["--plain-v1"]);
    let send = |text: &str| {
        letterlock(
            &s.dir("bob"),
            &[
                "client",
                "send_msg",
                text,
                "--server",
                &addr,
                "--keys",
                ".",
                "--plain-v1",
            ],
        )
    };
    assert!(!send("too early").status.success());
    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    let sent = send("now trusted");
    assert!(sent.status.success(), "{}", stderr(&sent));
    s.server_ok(&["server", "untrust", "bob"]);
    assert!(!send("untrusted again").status.success());
}

#[test]
fn a_rotated_key_works_the_old_one_is_refused_and_old_messages_stay_readable() {
    let s = Setup::new();
    let (_server, addr) = s.start(&[]);
    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    let old = s.send("bob", &addr, "signed with the old key");
    assert!(old.status.success(), "{}", stderr(&old));
    let old_id = sent_id(&old);

    // Without --replace the name is taken: refused, with what to do.
    let said = s.server_fails(&["server", "trust", "bob2/client_public.pem", "--name", "bob"]);
    assert!(said.contains("already trusted with another key"), "{said}");
    assert!(said.contains("--replace"), "{said}");
    // A key already trusted under another name is refused too.
    let said = s.server_fails(&[
        "server",
        "trust",
        "bob/client_public.pem",
        "--name",
        "robert",
    ]);
    assert!(said.contains("already trusted as bob"), "{said}");
    assert!(said.contains("untrust bob"), "{said}");

    let said = s.server_ok(&[
        "server",
        "trust",
        "bob2/client_public.pem",
        "--name",
        "bob",
        "--replace",
    ]);
    assert!(said.contains("instead of"), "{said}");
    let new = s.send("bob2", &addr, "signed with the new key");
    assert!(new.status.success(), "{}", stderr(&new));
    let refused = s.send("bob", &addr, "old key again");
    assert!(!refused.status.success(), "the replaced key still got in");

    // The old message is verified with the key it arrived under.
    let read = s.server_ok(&["server", "read", &old_id]);
    assert!(read.contains("signed with the old key"), "{read}");
    assert!(read.contains("verified"), "{read}");
    let read = s.server_ok(&["server", "read", &sent_id(&new)]);
    assert!(read.contains("signed with the new key"), "{read}");

    // The history keeps both keys; only the new one is trusted.
    let all = s.clients_json(true);
    let bobs: Vec<_> = all.iter().filter(|c| c["name"] == "bob").collect();
    assert_eq!(bobs.len(), 2, "{all:?}");
    assert_eq!(bobs.iter().filter(|c| c["status"] == "trusted").count(), 1);
    assert_eq!(bobs.iter().filter(|c| c["status"] == "replaced").count(), 1);
    let trusted = s.clients_json(false);
    assert!(
        trusted.iter().all(|c| c["status"] == "trusted"),
        "{trusted:?}"
    );
}

#[test]
fn the_classroom_layout_is_imported_and_clients_json_lists_it() {
    let s = Setup::new();
    // A key file in srv/clients/ as well as client_public.pem.
    std::fs::create_dir(s.dir("srv").join("clients")).unwrap();
    put_public(&s.dir("srv").join("clients"), "mallory", "bob.pem");
    let (_server, addr) = s.start(&[]);
    s.send_ok("alice", &addr, "one");
    s.send_ok("alice", &addr, "two");
    s.send_ok("bob", &addr, "three");

    let list = s.clients_json(false);
    assert_eq!(list.len(), 2, "{list:?}");
    let client = list.iter().find(|c| c["name"] == "client").unwrap();
    let bob = list.iter().find(|c| c["name"] == "bob").unwrap();
    assert_eq!(client["messages"], 2);
    assert_eq!(bob["messages"], 1);
    assert_eq!(client["status"], "trusted");
    assert!(client["since"].as_u64().unwrap() > 1_700_000_000);
    assert!(client["ended"].is_null());
    let alice_id = letterlock::keys::load_public(&common::public_path("alice2048"))
        .unwrap()
        .id()
        .to_string();
    assert_eq!(client["key"], alice_id.as_str());

    // Removing the file by hand changes nothing: the store is the truth once imported.
    std::fs::remove_file(s.dir("srv").join("clients/bob.pem")).unwrap();
    assert!(
        s.send("bob", &addr, "file gone, still trusted")
            .status
            .success()
    );
    // And a file the store knows as removed is not imported again.
    put_public(&s.dir("srv").join("clients"), "mallory", "bob.pem");
    s.server_ok(&["server", "untrust", "bob"]);
    assert_eq!(s.clients_json(false).len(), 1);
    assert!(!s.send("bob", &addr, "untrusted").status.success());
}

/// A classroom file holding a new key for its client is not imported, and server commands say
/// how to rotate; the rotation itself (`server trust THAT_FILE --replace`) does not tell the
/// user to run the very command they ran (found by a trial run).
#[test]
fn rotating_to_the_classroom_file_does_not_warn_to_rotate_to_it() {
    let s = Setup::new();
    // The mailbox made (`server clients` makes none), then the classroom file imported.
    s.server_ok(&["server", "migrate"]);
    s.server_ok(&["server", "clients"]);
    put_public(&s.dir("srv"), "alice3072", "client_public.pem");
    let listed = s.server_ok(&["server", "clients"]);
    assert!(
        listed.contains("not imported") && listed.contains("--replace"),
        "{listed}"
    );
    let said = s.server_ok(&[
        "server",
        "trust",
        "srv/client_public.pem",
        "--name",
        "client",
        "--replace",
    ]);
    assert!(!said.contains("not imported"), "{said}");
    assert!(!said.contains("To rotate"), "{said}");
    assert!(said.contains("client is now trusted with key"), "{said}");
    let list = s.clients_json(false);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["key"],
        common::public("alice3072").id().to_string().as_str()
    );
    // Once trusted, the file is the store's key: no more warnings.
    let listed = s.server_ok(&["server", "clients"]);
    assert!(!listed.contains("not imported"), "{listed}");
}

/// `server generate_key_pair --force` keeps the old pair beside the new one and says what that
/// means; `server read` of a message sealed to the old key then names the kept key that opens
/// it, and the kept key does (found by a trial run: the inbox was unreadable, and nothing said
/// why).
#[test]
fn a_replaced_server_key_is_kept_and_named_when_an_old_message_will_not_open() {
    let s = Setup::new();
    let (server, addr) = s.start(&[]);
    let id = sent_id(&s.send("alice", &addr, "sealed to the old key"));
    drop(server);
    let said = s.server_ok(&["server", "generate_key_pair", "--bits", "2048", "--force"]);
    assert!(said.contains("kept the old private key as srv/server_private.pem.replaced-"));
    assert!(said.contains("open only with it"), "{said}");
    assert!(
        said.contains("client trust-server HOST:PORT --replace"),
        "{said}"
    );
    assert!(
        said.contains("`letterlock server` already running keeps the old key: restart it"),
        "{said}"
    );
    let said = s.server_fails(&["server", "read", &id]);
    assert!(said.contains("as its recipient, not ours"), "{said}");
    assert!(
        said.contains("hint: that is the key srv/server_private.pem held before it was replaced"),
        "{said}"
    );
    assert!(said.contains("server_private.pem.replaced-"), "{said}");
    // The kept key, back in place in a copy of the folder, opens it.
    let kept = std::fs::read_dir(s.dir("srv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().contains("server_private.pem.replaced-"))
        .unwrap();
    let copy = s.dir("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(&kept, copy.join("server_private.pem")).unwrap();
    let out = letterlock(
        &s.root,
        &[
            "server",
            "read",
            &id,
            "--keys",
            "copy",
            "--store",
            "srv/letterlock-server.db",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"sealed to the old key");
}

#[test]
fn inbox_filters_read_from_and_rm() {
    let s = Setup::new();
    std::fs::create_dir(s.dir("srv").join("clients")).unwrap();
    put_public(&s.dir("srv").join("clients"), "mallory", "bob.pem");
    let (_server, addr) = s.start(&[]);
    let a = sent_id(&s.send("alice", &addr, "alice's note"));
    let b = sent_id(&s.send("bob", &addr, "bob's note"));

    let inbox = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["server", "inbox", "--json"];
        args.extend_from_slice(extra);
        let out = letterlock(&s.root, &s.server_args(&args));
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(inbox(&[]).len(), 2);
    let from_bob = inbox(&["--from", "bob"]);
    assert_eq!(from_bob.len(), 1);
    assert_eq!(from_bob[0]["id"], b.as_str());
    // A filter that matches nothing says so, not that the inbox is empty.
    let said = s.server_ok(&["server", "inbox", "--since", "4102444800"]);
    assert!(
        said.contains("no message matches (the inbox holds 2)"),
        "{said}"
    );
    // A name no client ever had is an error, not an empty inbox.
    let said = s.server_fails(&["server", "inbox", "--from", "nobody"]);
    assert!(said.contains("no client named nobody"), "{said}");
    assert_eq!(inbox(&["--since", "2000-01-01"]).len(), 2);
    assert_eq!(inbox(&["--since", "1h"]).len(), 2);
    assert_eq!(
        inbox(&["--since", "4102444800"]).len(),
        0,
        "2100 is in the future"
    );
    let bad = s.server_fails(&["server", "inbox", "--since", "yesterday-ish"]);
    assert!(bad.contains("unix seconds"), "{bad}");

    // --from picks among senders.
    let read = s.server_ok(&["server", "read", &a, "--from", "client"]);
    assert!(read.contains("alice's note"), "{read}");
    let wrong = s.server_fails(&["server", "read", &a, "--from", "bob"]);
    assert!(wrong.contains("no inbox message"), "{wrong}");

    // rm removes the message (and its row: it is gone from the inbox).
    // Too short a prefix to delete by: refused, nothing deleted.
    // Too short, not hexadecimal or too long: the one rule of a deletion, stated whole (not
    // the 1 to 32 digits `server read` takes), as `server outbox --remove` states it.
    for bad in [&b[..3], "zzzz", &format!("{b}0")] {
        let said = s.server_fails(&["server", "rm", bad]);
        assert!(
            said.contains("give 4 to 32 hexadecimal digits of the id (at least 4,"),
            "{said}"
        );
        assert!(!said.contains("1 to 32"), "{said}");
        // Its advice on a hint line, as `server outbox --remove` gives it.
        assert!(
            said.contains("\nletterlock: hint: `letterlock server inbox` lists the message ids"),
            "{said}"
        );
    }
    assert_eq!(inbox(&[]).len(), 2);
    let said = s.server_ok(&["server", "rm", &b]);
    // Worded as `server outbox --remove` words it.
    assert!(
        said.contains(&format!("deleted inbox message {b} (from bob, ")),
        "{said}"
    );
    assert_eq!(inbox(&[]).len(), 1);
    let gone = s.server_fails(&["server", "read", &b]);
    assert!(gone.contains("no inbox message"), "{gone}");
}

#[test]
fn the_store_is_created_beside_the_keys_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    s.deliver_one("hi");
    let db = s.dir("srv").join("letterlock-server.db");
    assert!(db.is_file(), "no store beside the keys");
    assert!(!s.root.join("letterlock-server.db").exists());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600);
    assert_eq!(
        mode(&s.dir("srv").join("letterlock-server.db.blobs")),
        0o700
    );

    // An existing store with wider modes is tightened when opened.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let blobs = s.dir("srv").join("letterlock-server.db.blobs");
    std::fs::set_permissions(&blobs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let said = s.server_ok(&["server", "inbox"]);
    assert!(said.contains("restricted it to its owner"), "{said}");
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&blobs), 0o700);
}

/// A mailbox at the old default place (the working folder) and none beside the keys: the
/// server commands refuse and say how to choose, since it may be another server identity's
/// mailbox (its trusted clients, its queued messages); `--store` names either.
#[test]
fn a_mailbox_at_the_old_default_place_is_not_used_without_being_named() {
    let s = Setup::new();
    // A store in the working folder, as the old default made it.
    ok_text(
        &s.root,
        &[
            "server",
            "trust",
            "bob/client_public.pem",
            "--name",
            "bob",
            "--keys",
            "srv",
            "--store",
            "letterlock-server.db",
        ],
    );
    for command in [
        &["server", "clients"][..],
        &["server", "inbox"],
        &["server", "migrate"],
    ] {
        let said = s.server_fails(command);
        assert!(said.contains("old default place"), "{command:?}: {said}");
        assert!(said.contains("mv letterlock-server.db"), "{said}");
        assert!(said.contains("--store srv/letterlock-server.db"), "{said}");
    }
    assert!(!s.dir("srv").join("letterlock-server.db").exists());

    // Named, it is used.
    let said = s.server_ok(&["server", "clients", "--store", "letterlock-server.db"]);
    assert!(said.contains("bob"), "the old mailbox was not used: {said}");
    // A new one beside the keys, named once, is the default from then on.
    s.server_ok(&["server", "migrate", "--store", "srv/letterlock-server.db"]);
    let said = s.server_ok(&["server", "clients"]);
    assert!(!said.contains("bob"), "the old mailbox was used: {said}");
}

/// A mailbox in the working folder beside server keys is that server's, where a server run
/// there without --keys keeps it today: a server command for another keys folder says so, and
/// neither calls it the old default place nor tells to move it.
#[test]
fn the_mailbox_of_the_server_in_the_working_folder_is_called_its_own() {
    let s = Setup::new();
    put_private(&s.root, "alice3072", "server_private.pem");
    put_public(&s.root, "alice3072", "server_public.pem");
    ok_text(&s.root, &["server", "migrate"]);
    assert!(s.root.join("letterlock-server.db").exists());
    let said = s.server_fails(&["server", "clients"]);
    assert!(!said.contains("old default place"), "{said}");
    assert!(!said.contains("mv "), "{said}");
    assert!(
        said.contains("it is the mailbox of the server whose keys are here (./server_private.pem"),
        "{said}"
    );
    assert!(said.contains("drop --keys srv"), "{said}");
    assert!(said.contains("--store srv/letterlock-server.db"), "{said}");
    assert!(!s.dir("srv").join("letterlock-server.db").exists());
}

/// `--keys` naming no folder is an error, not the working folder's mailbox.
#[test]
fn server_commands_refuse_a_keys_folder_that_does_not_exist() {
    let s = Setup::new();
    let said = fails_text(&s.root, &["server", "inbox", "--keys", "typo"]);
    assert!(said.contains("no folder typo (--keys)"), "{said}");
}

/// Two clients' messages with the same id (ids are unique per sender only): `server read ID`
/// lists both and asks for --from; `--from` reads each; `server rm ID --from` deletes one.
#[test]
fn colliding_ids_of_two_senders_are_told_apart_with_from() {
    use letterlock::envelope::{FixedRandomness, SealOptions};
    use letterlock::store::{InboxRecord, SqliteStore, Store};
    let s = Setup::new();
    std::fs::create_dir(s.dir("srv").join("clients")).unwrap();
    put_public(&s.dir("srv").join("clients"), "mallory", "bob.pem");
    let id = [0x5a; 16];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let db = s.dir("srv").join("letterlock-server.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        for (key, name, text) in [
            ("alice2048", "client", "same id, from alice"),
            ("mallory", "bob", "same id, from bob"),
        ] {
            let fixed = FixedRandomness {
                message_id: id,
                created: now,
                content_key: [3; 32],
            };
            let (sealed, info) = common::seal_fixed(
                common::private(key),
                &common::public("bob2048"),
                &SealOptions::default(),
                &fixed,
                text.as_bytes(),
            );
            let body = letterlock::store::Body::from_bytes(sealed);
            store
                .insert_inbox(InboxRecord {
                    sender_key_id: common::public(key).id().0,
                    sender_name: name.into(),
                    message_id: id,
                    created: now,
                    received: now,
                    mode: letterlock::store::MODE_HYBRID,
                    plaintext_len: info.plaintext_len,
                    content_hash: body.sha256().expect("a store writer hashes"),
                    ack_tag: info.ack_tag,
                    body,
                })
                .await
                .unwrap();
        }
        store.close().await.unwrap();
    });
    let hex_id = "5a".repeat(16);
    let said = s.server_fails(&["server", "read", &hex_id[..6]]);
    assert!(said.contains("more than one inbox message"), "{said}");
    assert!(
        said.contains("from client") && said.contains("from bob"),
        "{said}"
    );
    assert!(said.contains("--from NAME"), "{said}");
    let read = s.server_ok(&["server", "read", &hex_id, "--from", "bob"]);
    assert!(read.contains("same id, from bob"), "{read}");
    let read = s.server_ok(&["server", "read", &hex_id, "--from", "client"]);
    assert!(read.contains("same id, from alice"), "{read}");
    s.server_ok(&["server", "rm", &hex_id, "--from", "client"]);
    // One left: the id alone is enough now.
    let read = s.server_ok(&["server", "read", &hex_id]);
    assert!(read.contains("same id, from bob"), "{read}");
}

#[test]
fn retention_keeps_recent_messages_and_refuses_zero_days() {
    let s = Setup::new();
    s.deliver_one("kept");
    // Received just now: a retention of one day keeps it.
    let (server, _) = s.start(&["--retention", "1"]);
    drop(server);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(
            &String::from_utf8(
                letterlock(&s.root, &s.server_args(&["server", "inbox", "--json"])).stdout
            )
            .unwrap()
        )
        .unwrap()
        .len(),
        1
    );
    let zero = fails_text(
        &s.root,
        &[
            "server",
            "--retention",
            "0",
            "--keys",
            "srv",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(zero.contains("--retention"), "{zero}");
}

/// A connection opened while the key was trusted does not outlive an untrust: its next message
/// is refused with `AuthFailed`, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_connection_is_refused_at_its_next_message_after_untrust() {
    use std::sync::Arc;
    use std::time::Duration;

    use letterlock::client::{Client, ClientConfig, ClientError};
    use letterlock::envelope::SealOptions;
    use letterlock::keys::TrustList;
    use letterlock::server::{Server, ServerConfig};
    use letterlock::store::{SqliteStore, Store};
    use letterlock::tls::TlsOptions;
    use letterlock::wire::ErrorCode;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
    let alice = common::public("alice2048");
    common::trust_in(store.as_ref(), "client", &alice, false, 1).await;
    let config = ServerConfig {
        // Check the store before every request: no waiting in the test.
        trust_recheck: Duration::ZERO,
        ..ServerConfig::default()
    };
    let server = Server::new(
        common::private("bob2048"),
        TrustList::new(),
        store.clone(),
        config,
    )
    .trust_from_store()
    .with_tls(TlsOptions::default())
    .unwrap();
    let running = common::net::run_on_loopback(Arc::new(server)).await;
    let mut client = Client::connect_tls(
        &running.addr,
        common::private("alice2048"),
        common::public("bob2048"),
        ClientConfig::default(),
        TlsOptions::default(),
    )
    .await
    .unwrap();
    let send = |text: &'static str| std::io::Cursor::new(text.as_bytes().to_vec());
    client
        .send(send("while trusted"), SealOptions::default())
        .await
        .unwrap();

    assert!(store.untrust_client("client", 2).await.unwrap().is_some());
    let refused = client
        .send(send("after untrust"), SealOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(store.list_inbox().await.unwrap().len(), 1);
    let _ = running.stop.send(());
}

/// `server trust` in a folder that is not a server's (no server_private.pem, no mailbox) is
/// refused and creates nothing: it would start a mailbox no running server reads.
#[test]
fn trust_outside_a_server_folder_is_refused_and_creates_nothing() {
    let s = Setup::new();
    let out = letterlock(
        &s.dir("alice"),
        &["server", "trust", "client_public.pem", "--name", "alice"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("server's folder"), "{}", stderr(&out));
    assert!(!s.dir("alice").join("letterlock-server.db").exists());
}

/// `server trust` refuses a private key file, with the same hint as `client trust`: ask for
/// the public key, and the owner of a shared private key needs a new pair.
#[test]
fn server_trust_refuses_a_private_key_with_what_to_do() {
    let s = Setup::new();
    let said = s.server_fails(&["server", "trust", "bob/client_private.pem", "--name", "bob"]);
    assert!(said.contains("expected a public key"), "{said}");
    assert!(said.contains("ask bob's owner for theirs"), "{said}");
    assert!(said.contains("they need a new key pair"), "{said}");
    // A public key with the private key after it (`cat` of the pair) is refused the same way.
    let pair = [
        std::fs::read_to_string(s.root.join("bob/client_public.pem")).unwrap(),
        std::fs::read_to_string(s.root.join("bob/client_private.pem")).unwrap(),
    ];
    std::fs::write(s.root.join("both.pem"), pair.concat()).unwrap();
    let said = s.server_fails(&["server", "trust", "both.pem", "--name", "bob"]);
    assert!(said.contains("expected a public key"), "{said}");
    assert!(said.contains("they need a new key pair"), "{said}");
    // Nothing trusted, nor a mailbox made for it.
    let said = s.server_fails(&["server", "clients"]);
    assert!(said.contains("no mailbox at"), "{said}");
}

/// `server read -o FILE` behaves like `open` and `client read`: an existing file is kept
/// unless --force, and `-o -` is stdout.
#[test]
fn server_read_keeps_an_existing_file_unless_forced_and_dash_is_stdout() {
    let s = Setup::new();
    let (server, addr) = s.start(&[]);
    let id = sent_id(&s.send("alice", &addr, "to a file"));
    drop(server);
    let file = s.root.join("out.txt");
    std::fs::write(&file, b"mine").unwrap();
    let refused = s.server_fails(&["server", "read", &id, "-o", "out.txt"]);
    assert!(refused.contains("--force"), "{refused}");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    s.server_ok(&["server", "read", &id, "-o", "out.txt", "--force"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"to a file");
    let printed = s.server_ok(&["server", "read", &id, "-o", "-"]);
    assert!(printed.contains("to a file"), "{printed}");
    assert!(!s.root.join("-").exists());
}

/// Rotating a client's key says how many messages queued for the old key stay undelivered;
/// `server outbox` marks them stranded, and `--remove` deletes one.
#[test]
fn a_rotation_tells_of_messages_queued_for_the_old_key() {
    let s = Setup::new();
    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    s.server_ok(&[
        "server",
        "send_msg",
        "--to",
        "bob",
        "queued before the rotation",
    ]);
    let out = letterlock(
        &s.root,
        &s.server_args(&[
            "server",
            "trust",
            "bob2/client_public.pem",
            "--name",
            "bob",
            "--replace",
        ]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 message(s) this server queued for bob's old key"),
        "{}",
        stderr(&out)
    );
    // `server outbox` lists it, stranded; one queued for the new key waits.
    s.server_ok(&["server", "send_msg", "--to", "bob", "after the rotation"]);
    let listed = s.server_ok(&["server", "outbox"]);
    assert_eq!(listed.matches("STRANDED").count(), 1, "{listed}");
    assert_eq!(listed.matches("waiting").count(), 1, "{listed}");
    let out = letterlock(&s.root, &s.server_args(&["server", "outbox", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["to"] == "bob" && r["from"] == "server")
    );
    assert_eq!(
        rows.iter().filter(|r| r["stranded"] == true).count(),
        1,
        "{rows:?}"
    );

    // The stranded one can be removed, by a unique prefix of at least 4 characters; the
    // waiting one stays.
    let stranded = rows.iter().find(|r| r["stranded"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Advice on a hint line, as `server rm` gives it, not in parentheses.
    let hint = "\nletterlock: hint: `letterlock server outbox` lists the message ids";
    // The one rule of a deletion, stated as `server rm` states it.
    for bad in [&stranded[..3], "zzzz", &format!("{stranded}0")] {
        let said = s.server_fails(&["server", "outbox", "--remove", bad]);
        assert!(
            said.contains("give 4 to 32 hexadecimal digits of the id (at least 4,"),
            "{said}"
        );
        assert!(said.contains(hint) && !said.contains("(`"), "{said}");
    }
    let other = s.server_fails(&["server", "outbox", "--remove", &stranded, "--to", "alice"]);
    assert!(
        other.contains("no outbox message id starts with"),
        "{other}"
    );
    assert!(other.contains(hint) && !other.contains("(`"), "{other}");
    let removed = s.server_ok(&[
        "server",
        "outbox",
        "--remove",
        &stranded[..8],
        "--to",
        "bob",
    ]);
    // Worded as `server rm` words it.
    assert!(
        removed.contains(&format!(
            "deleted outbox message {stranded} (for bob, stranded, "
        )),
        "{removed}"
    );
    let again = s.server_fails(&["server", "outbox", "--remove", &stranded]);
    assert!(
        again.contains("no outbox message id starts with"),
        "{again}"
    );
    let listed = s.server_ok(&["server", "outbox"]);
    assert_eq!(listed.matches("STRANDED").count(), 0, "{listed}");
    assert_eq!(listed.matches("waiting").count(), 1, "{listed}");

    // One bob can still fetch is removed only with --force.
    let out = letterlock(&s.root, &s.server_args(&["server", "outbox", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let waiting = rows[0]["id"].as_str().unwrap().to_owned();
    let refused = s.server_fails(&["server", "outbox", "--remove", &waiting]);
    assert!(
        refused.contains("not stranded") && refused.contains("hint: pass --force"),
        "{refused}"
    );
    s.server_ok(&["server", "outbox", "--remove", &waiting, "--force"]);
    let listed = s.server_ok(&["server", "outbox"]);
    assert!(listed.contains("outbox is empty"), "{listed}");
}

/// Replacing the server's key pair leaves the messages it queued for clients signed by the old
/// key, which it cannot sign again (they are sealed to the clients): `server generate_key_pair
/// --force` and `keygen --name server --force` count them and say what to do, `server outbox`
/// marks and counts them, and `--remove` deletes one without --force (no client accepts it).
/// Without a mailbox, a replacement says nothing about one.
#[test]
fn a_server_key_replacement_tells_of_the_messages_queued_with_the_old_key() {
    let s = Setup::new();
    // No mailbox yet: nothing to count, and no error.
    let said = s.server_ok(&["server", "generate_key_pair", "--bits", "2048", "--force"]);
    assert!(!said.contains("queued for clients"), "{said}");
    assert!(!said.contains("mailbox"), "{said}");
    let first = letterlock::keys::load_public(&s.dir("srv").join("server_public.pem"))
        .unwrap()
        .id();

    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    for text in ["queued with the old key", "and another one"] {
        s.server_ok(&["server", "send_msg", "--to", "bob", text]);
    }
    // Nothing replaced yet: the outbox marks nothing.
    let listed = s.server_ok(&["server", "outbox"]);
    assert_eq!(listed.matches("waiting").count(), 2, "{listed}");
    assert!(
        listed.contains("2 message(s): 0 stranded, 0 signed by a replaced server key"),
        "{listed}"
    );

    let said = s.server_ok(&["server", "generate_key_pair", "--bits", "2048", "--force"]);
    assert!(
        said.contains(&format!(
            "2 message(s) queued for clients in the mailbox srv/letterlock-server.db (for bob) \
             were signed by the replaced server key {first}: they will not verify at clients \
             that trust only the new key"
        )),
        "{said}"
    );
    assert!(
        said.contains("`letterlock server send_msg --to NAME --keys srv`")
            && said.contains("`letterlock server outbox --remove ID --keys srv`"),
        "{said}"
    );

    // One sent again, with the new key, waits; the two old ones are marked and counted.
    s.server_ok(&["server", "send_msg", "--to", "bob", "sent again"]);
    let listed = s.server_ok(&["server", "outbox"]);
    assert_eq!(
        listed
            .matches("SIGNED BY A REPLACED SERVER KEY: clients will set it aside; send it again")
            .count(),
        2,
        "{listed}"
    );
    assert_eq!(listed.matches("waiting").count(), 1, "{listed}");
    assert!(
        listed.contains("3 message(s): 0 stranded, 2 signed by a replaced server key"),
        "{listed}"
    );
    let out = letterlock(&s.root, &s.server_args(&["server", "outbox", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let old: Vec<&str> = rows
        .iter()
        .filter(|r| r["replaced_server_key"] == true)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(old.len(), 2, "{rows:?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r["replaced_server_key"] == false)
            .count(),
        1,
        "{rows:?}"
    );

    // No client accepts one: removed without --force.
    let removed = s.server_ok(&["server", "outbox", "--remove", old[0]]);
    assert!(
        removed.contains(&format!(
            "deleted outbox message {} (for bob, signed by a replaced server key, ",
            old[0]
        )),
        "{removed}"
    );

    // `keygen --name server` replaces the same pair: counted the same, now under two replaced
    // keys (the one just replaced signed only the message sent again).
    let said = s.server_ok(&["keygen", "--name", "server", "--bits", "2048", "--force"]);
    assert!(
        said.contains(
            "2 message(s) queued for clients in the mailbox srv/letterlock-server.db (for bob) \
             were signed by a replaced server key:"
        ),
        "{said}"
    );
}

/// Only a key the folder replaced (kept aside by `--force`) makes a message "signed by a
/// replaced server key": with the wrong --keys (another server's folder over the same store, a
/// typo), the server's own messages are signed by a key that folder does not know, marked so,
/// and not removed without --force; after a real rotation of the right folder they are.
#[test]
fn a_server_key_the_folder_does_not_know_is_not_a_replaced_one() {
    let s = Setup::new();
    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    s.server_ok(&["server", "send_msg", "--to", "bob", "queued by srv"]);
    // Another server's folder, with its own key, pointed at srv's mailbox.
    let other = s.dir("other");
    std::fs::create_dir(&other).unwrap();
    put_private(&other, "bob3072", "server_private.pem");
    put_public(&other, "bob3072", "server_public.pem");
    let signer = letterlock::keys::load_public(&s.dir("srv").join("server_public.pem"))
        .unwrap()
        .id();
    fn wrong<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--keys", "other", "--store", "srv/letterlock-server.db"]);
        all
    }

    let listed = ok_text(&s.root, &wrong(&["server", "outbox"]));
    assert!(!listed.contains("REPLACED"), "{listed}");
    assert!(
        listed.contains(
            "waiting, signed by a server key this folder does not know (another server's, or \
             the wrong --keys?)"
        ) && listed.contains(
            "1 message(s): 0 stranded, 0 signed by a replaced server key, 1 signed by a server \
             key other does not know"
        ),
        "{listed}"
    );
    let out = letterlock(&s.root, &wrong(&["server", "outbox", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows[0]["replaced_server_key"],
        serde_json::Value::Null,
        "{rows}"
    );
    assert_eq!(rows[0]["unknown_server_key"], true, "{rows}");
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    let refused = fails_text(&s.root, &wrong(&["server", "outbox", "--remove", &id]));
    assert!(
        refused.contains(&format!(
            "is waiting, not stranded: bob's client can still fetch it (it is signed by the \
             server key {signer}, which other neither holds nor replaced)"
        )) && refused.contains("pass --force to delete it anyway"),
        "{refused}"
    );
    // From the right folder it is an ordinary waiting one.
    let out = letterlock(&s.root, &s.server_args(&["server", "outbox", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["replaced_server_key"], false, "{rows}");
    assert_eq!(rows[0]["unknown_server_key"], false, "{rows}");

    // A real rotation of srv keeps the old key: now it is known as replaced, and goes
    // without --force.
    s.server_ok(&["server", "generate_key_pair", "--bits", "2048", "--force"]);
    let out = letterlock(&s.root, &s.server_args(&["server", "outbox", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["replaced_server_key"], true, "{rows}");
    assert_eq!(rows[0]["unknown_server_key"], false, "{rows}");
    let removed = s.server_ok(&["server", "outbox", "--remove", &id]);
    assert!(
        removed.contains("signed by a replaced server key"),
        "{removed}"
    );
}

/// A client trusted under the name `server` in a store written before that name was refused
/// (put there with the store's API: `server trust` refuses it now) could pass its messages off
/// as the server's. The server refuses its connections and says at start how to rename it;
/// `server clients` lists it as refused, with the same way out; `server send_msg --to server`
/// refuses it. Untrusted and trusted again under another name, the same key gets in.
#[test]
fn a_client_stored_under_the_server_s_name_is_refused_until_trusted_under_another() {
    let s = Setup::new();
    let mallory = common::public("mallory");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = letterlock::store::SqliteStore::open(s.dir("srv").join("letterlock-server.db"))
            .unwrap();
        common::trust_in(&store, "server", &mallory, false, 1).await;
        store.close().await.unwrap();
    });
    let way_out = format!(
        "the client \"server\" ({}) was trusted under a name that reads as this server, from \
         before such names were refused: it is refused (its connections, and messages to it). \
         To let it in under another name: `letterlock server untrust server --keys srv`, then \
         `letterlock server trust ITS_PUBLIC_KEY.pem --name NEWNAME --keys srv`",
        mallory.id()
    );

    let listed = s.server_ok(&["server", "clients"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with("server "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains(" refused "), "{listed}");
    assert!(listed.contains(&way_out), "{listed}");
    let rows = s.clients_json(false);
    let server_row = rows.iter().find(|r| r["name"] == "server").unwrap();
    assert_eq!(server_row["status"], "refused", "{rows:?}");
    let client_row = rows.iter().find(|r| r["name"] == "client").unwrap();
    assert_eq!(client_row["status"], "trusted", "{rows:?}");
    let refused = s.server_fails(&["server", "send_msg", "--to", "server", "hi"]);
    assert!(refused.contains(&way_out), "{refused}");

    let log = s.root.join("server.log");
    let server = BinServer::spawn_logging(
        common::cli::server_command(&s.root, &s.server_args(&[])),
        &log,
    );
    let out = s.send("bob", &server.addr, "from the client called server");
    assert!(!out.status.success(), "{}", stderr(&out));
    // Written before the server serves: there by the time it refused the connection.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains(&way_out), "{logged}");
    let inbox = s.server_ok(&["server", "inbox"]);
    assert!(!inbox.contains("from the client called server"), "{inbox}");

    s.server_ok(&["server", "untrust", "server"]);
    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    s.send_ok("bob", &server.addr, "now as bob");
    let out = letterlock(
        &s.root,
        &s.server_args(&["server", "inbox", "--from", "bob", "--json"]),
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
}

/// Untrusting a client says how many messages queued for its key stay undelivered, as a
/// rotation does (the same report): nobody can fetch them now, and `server outbox` marks them
/// stranded.
#[test]
fn an_untrust_tells_of_messages_queued_for_the_key() {
    let s = Setup::new();
    s.server_ok(&["server", "trust", "bob/client_public.pem", "--name", "bob"]);
    s.server_ok(&[
        "server",
        "send_msg",
        "--to",
        "bob",
        "queued before the untrust",
    ]);
    let out = letterlock(&s.root, &s.server_args(&["server", "untrust", "bob"]));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 message(s) this server queued for bob's key stay undelivered")
            && err.contains("`--remove ID` deletes one"),
        "{err}"
    );
    // bob has no key to send them to until trusted again.
    assert!(
        err.contains("once bob is trusted again with a new key"),
        "{err}"
    );
    let listed = s.server_ok(&["server", "outbox"]);
    assert_eq!(listed.matches("STRANDED").count(), 1, "{listed}");
    // Nothing queued, nothing said.
    s.server_ok(&["server", "trust", "bob2/client_public.pem", "--name", "bob"]);
    let out = letterlock(&s.root, &s.server_args(&["server", "untrust", "bob"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("undelivered"), "{}", stderr(&out));
}

/// A second `letterlock server` on the same SQLite mailbox is refused while the first runs
/// (each sweeps unfinished body files at start); the operator's commands still work.
#[test]
fn a_second_server_on_the_same_sqlite_mailbox_is_refused() {
    let s = Setup::new();
    let (_first, _addr) = s.start(&[]);
    // The second server's stderr; it must exit (status 1) within 30 s.
    let second = |extra: &[&str]| {
        let mut args = vec!["server", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut second = common::cli::command(&s.root, &s.server_args(&args))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = second.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = second.kill();
                panic!("a second server on the same mailbox kept running ({extra:?})");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let out = second.wait_with_output().unwrap();
        assert_eq!(status.code(), Some(1), "{}", stderr(&out));
        stderr(&out)
    };
    let said = second(&[]);
    assert!(said.contains("already running on the mailbox"), "{said}");
    // Through a symbolic link to the same file: the same lock, refused alike (its bodies
    // would have gone to a folder beside the link, where the first server never looks).
    std::fs::create_dir(s.dir("alias")).unwrap();
    std::os::unix::fs::symlink(
        s.dir("srv").join("letterlock-server.db"),
        s.dir("alias").join("mail.db"),
    )
    .unwrap();
    let said = second(&["--store", "alias/mail.db"]);
    assert!(said.contains("already running on the mailbox"), "{said}");
    assert!(!s.dir("alias").join("mail.db.blobs").exists());
    // Through a hard link: refused by every command (each name would get its own
    // write-ahead log).
    std::fs::hard_link(
        s.dir("srv").join("letterlock-server.db"),
        s.dir("alias").join("linked.db"),
    )
    .unwrap();
    let said = second(&["--store", "alias/linked.db"]);
    assert!(said.contains("hard links"), "{said}");
    let said = s.server_fails(&["server", "clients"]);
    assert!(said.contains("hard links"), "{said}");
    std::fs::remove_file(s.dir("alias").join("linked.db")).unwrap();
    s.server_ok(&["server", "clients"]);
}

/// A server with no trusted client says how to trust one, with its own --store: the same
/// command without it trusts into another mailbox, and the running server keeps refusing the
/// client (found by a trial run). A PostgreSQL URL is not repeated in the log (a password).
#[test]
fn a_server_without_clients_says_how_to_trust_one_in_its_own_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_private(d, common::net::SERVER, "server_private.pem");
    put_public(d, common::net::SERVER, "server_public.pem");
    let log = d.join("server.log");
    let cmd = common::cli::server_command(d, &["--store", "small.db"]);
    let server = BinServer::spawn_logging(cmd, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("no trusted clients yet")
            && said.contains("--name NAME --keys . --store small.db`"),
        "{said}"
    );
    drop(server);
}

/// The server's own public key, now or one it replaced, is not trusted as a client's: a client
/// so keyed could pass its relayed messages off as the server's, as the reserved name `server`
/// could (found by a trial run: `server trust server_public.pem` was accepted).
#[test]
fn the_servers_own_key_is_not_trusted_as_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_private(d, common::net::SERVER, "server_private.pem");
    put_public(d, common::net::SERVER, "server_public.pem");
    std::fs::copy(d.join("server_public.pem"), d.join("copy.pem")).unwrap();
    let said = fails_text(d, &["server", "trust", "copy.pem", "--name", "srvself"]);
    assert!(said.contains("is this server's own key"), "{said}");
    // After a replacement, the key it replaced (kept in the folder) is refused too.
    ok_text(
        d,
        &["server", "generate_key_pair", "--force", "--bits", "2048"],
    );
    let said = fails_text(d, &["server", "trust", "copy.pem", "--name", "srvself"]);
    assert!(said.contains("is this server's own key"), "{said}");
    // A client's key is trusted as before.
    put_public(d, common::net::CLIENT, "client.pem");
    ok_text(d, &["server", "trust", "client.pem", "--name", "alice"]);
}

/// A server says, as it starts, how to read a message its log shows as stored but not its
/// text, with its own --keys and --store (found by a trial run: the log's hint named `server
/// read ID` alone, which in the working folder found no key, or another mailbox).
#[test]
fn a_server_says_how_to_read_a_stored_message_with_its_own_folders() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("srv")).unwrap();
    put_private(&d.join("srv"), common::net::SERVER, "server_private.pem");
    let mut cmd = common::cli::server_command(d, &["--keys", "srv", "--store", "m.db"]);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let said = lines
        .map_while(Result::ok)
        .find(|l| l.starts_with("read a stored message"));
    let _ = child.kill();
    let _ = child.wait();
    // As absolute paths: the line is read later, in a journal, from any folder.
    let expected = format!(
        "read a stored message with `letterlock server read --keys {} --store {} ID`",
        d.join("srv").display(),
        d.join("m.db").display()
    );
    assert_eq!(said.as_deref(), Some(expected.as_str()));
}
