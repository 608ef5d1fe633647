//! The client's mailbox (issue 11, "A client mailbox"), mostly through the binary: `recv_msg`
//! keeps every message, sealed, in KEYS/letterlock-client.db before acknowledging it;
//! `client inbox` and `client read` read it later with no server running; the mailbox survives
//! a server restart and a second `recv_msg`; a repeat is not kept twice. And `recv_msg`'s output:
//! exact bytes to a file, binary content kept but not printed on a terminal, `-o` refusing a
//! file, messages over 64 MiB explained rather than "refused".

use crate::common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::cli::{BinServer, classroom_folder, recv_msg_into, run};
use common::net::{CLIENT, SERVER, TestServer};
use common::outbox::{ack_tag_of, enqueue, pending_bodies};
use common::public;
use letterlock::client::{Content, FetchEvent, Mailbox, Output as FetchOutput};
use letterlock::envelope::{self, SealOptions};
use letterlock::received::ReceivedRecord;
use letterlock::store::SqliteStore;

/// Exit statuses of `recv_msg` (src/cli/client.rs, `recv_msg --help`).
const EXIT_REPEAT: i32 = 3;
const EXIT_NOT_SHOWN: i32 = 5;

/// The client's mailbox file in its key folder.
const MAILBOX: &str = "letterlock-client.db";

fn recv(dir: &Path, addr: &str, extra: &[&str]) -> (i32, Vec<u8>, String) {
    let mut args = vec!["client", "recv_msg", "--server", addr];
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// Queues `file`'s contents (or `text`) for the client with `server send_msg`.
fn queue(dir: &Path, text: &str) {
    let (code, out, err) = run(dir, &["server", "send_msg", "--to", "client", text]);
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
}

fn queue_file(dir: &Path, file: &Path) {
    let file = file.to_str().unwrap();
    let (code, out, err) = run(
        dir,
        &["server", "send_msg", "--to", "client", "--file", file],
    );
    assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));
}

/// A classroom folder (see [`classroom_folder`]) with the server running in it, and its
/// address.
fn classroom_with_server() -> (tempfile::TempDir, BinServer, String) {
    let dir = tempfile::tempdir().unwrap();
    classroom_folder(dir.path());
    let server = BinServer::start(dir.path(), &[]);
    let addr = server.addr.clone();
    (dir, server, addr)
}

/// `client inbox --json`, parsed.
fn inbox(dir: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = run(dir, &["client", "inbox", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_slice::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `recv_msg --json` and `client inbox --json` say who sent the same message from the server
/// alike: sender "server" (a name no contact can have), sender_source "server", and the
/// address it was fetched from as server_address.
#[test]
fn recv_msg_and_inbox_json_name_the_server_alike() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "from the server");
    let (code, out, err) = recv(d, &addr, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let received: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let rows = inbox(d);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let kept = &rows[0];
    assert_eq!(kept["id"], received["id"], "{kept} {received}");
    for field in ["sender", "sender_source", "server_address", "sender_key"] {
        assert_eq!(kept[field], received[field], "{field}: {kept} {received}");
    }
    assert_eq!(kept["sender"], "server");
    assert_eq!(kept["sender_source"], "server");
    assert_eq!(kept["server_address"], addr.as_str());
}

#[test]
fn recv_msg_keeps_each_message_and_client_read_opens_it_with_no_server_running() {
    let (dir, server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "the first message");
    let (code, out, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"the first message", "{err}");
    assert!(err.contains("kept in the mailbox"), "{err}");
    // Acknowledged: the server deleted its copy.
    let (code, _, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no messages"), "{err}");
    drop(server);

    // Owner-only, like the private key beside it.
    assert_eq!(mode(&d.join(MAILBOX)), 0o600);
    assert_eq!(mode(&d.join(format!("{MAILBOX}.blobs"))), 0o700);

    let rows = inbox(d);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["bytes"], 17);
    assert_eq!(rows[0]["mode"], "hybrid");
    assert_eq!(rows[0]["sender"], "server");
    assert_eq!(rows[0]["server_address"], addr.as_str());
    assert_eq!(rows[0]["sender_source"], "server");
    assert_eq!(rows[0]["sender_key"], public(SERVER).id().to_string());
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    // Kept sealed, as delivered: the plaintext is nowhere in the database.
    let db = std::fs::read(d.join(MAILBOX)).unwrap();
    assert!(!db.windows(17).any(|w| w == b"the first message"));

    // Read again, opened and verified anew, by a unique prefix.
    let (code, out, err) = run(d, &["client", "read", &id[..6]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"the first message");
    assert!(err.contains("verified"), "{err}");
    let (code, _, err) = run(d, &["client", "read", &id, "-o", "saved.txt"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(d.join("saved.txt")).unwrap(),
        b"the first message"
    );
    // An existing file is not replaced without --force.
    std::fs::write(d.join("saved.txt"), b"mine").unwrap();
    let (code, _, err) = run(d, &["client", "read", &id, "-o", "saved.txt"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("saved.txt already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("saved.txt")).unwrap(), b"mine");
    let (code, _, err) = run(d, &["client", "read", &id, "-o", "saved.txt", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(d.join("saved.txt")).unwrap(),
        b"the first message"
    );
    // A prefix nothing has says where the ids are.
    let other = if id.starts_with('0') { "1" } else { "0" };
    let (code, _, err) = run(d, &["client", "read", &format!("{other}{}", &id[1..6])]);
    assert_eq!(code, 1);
    assert!(err.contains("client inbox"), "{err}");
}

/// After `client generate_key_pair --force`, a message kept in the mailbox, sealed to the old
/// key, no longer opens with the new one: `client read` says which kept key it is for, and that
/// key, put back in a copy of the folder, reads it (found by a trial run: the whole mailbox
/// became unreadable, and nothing said why).
#[test]
fn client_read_names_the_kept_key_a_message_is_for_after_the_pair_was_replaced() {
    let (dir, server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "for the old key");
    let (code, _, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    drop(server);
    let id = inbox(d)[0]["id"].as_str().unwrap().to_owned();
    let (code, _, err) = run(
        d,
        &["client", "generate_key_pair", "--bits", "2048", "--force"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("server trust client_public.pem --name NAME --replace"),
        "{err}"
    );
    assert!(
        err.contains("`letterlock client agent` already running steps aside and stops"),
        "{err}"
    );
    // What still waits on the server for the old key is stranded by the switch: said, not
    // promised to open later (found by a trial run).
    assert!(
        err.contains("Messages still waiting on the server for the old key are stranded")
            && !err.contains("sent before the new key is trusted"),
        "{err}"
    );

    let (code, out, err) = run(d, &["client", "read", &id]);
    assert_eq!(code, 1, "{}", String::from_utf8_lossy(&out));
    assert!(err.contains("as its recipient, not ours"), "{err}");
    assert!(
        err.contains("hint: that is the key ./client_private.pem held before it was replaced"),
        "{err}"
    );
    assert!(
        err.contains(&format!("client read {id} --keys COPY")),
        "{err}"
    );
    let kept = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().contains("client_private.pem.replaced-"))
        .unwrap();
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(common::private_path(CLIENT)).unwrap()
    );

    // As the hint says: a copy of the folder with the kept key as client_private.pem.
    let copy = tempfile::tempdir().unwrap();
    let c = copy.path();
    for file in ["server_public.pem", MAILBOX] {
        std::fs::copy(d.join(file), c.join(file)).unwrap();
    }
    let blobs = format!("{MAILBOX}.blobs");
    std::fs::create_dir(c.join(&blobs)).unwrap();
    for entry in std::fs::read_dir(d.join(&blobs)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), c.join(&blobs).join(entry.file_name())).unwrap();
    }
    std::fs::copy(&kept, c.join("client_private.pem")).unwrap();
    let (code, out, err) = run(c, &["client", "read", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"for the old key");
}

#[test]
fn client_read_lists_the_candidates_of_an_ambiguous_prefix() {
    let (dir, server, addr) = classroom_with_server();
    let d = dir.path();
    // 17 messages: by the pigeonhole principle, two share their first hexadecimal digit.
    for i in 0..17 {
        queue(d, &format!("message {i}"));
    }
    let (code, _, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    drop(server);
    let ids: Vec<String> = inbox(d)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 17);
    let digit = ids
        .iter()
        .map(|i| &i[..1])
        .find(|&digit| ids.iter().filter(|i| i.starts_with(digit)).count() > 1)
        .unwrap()
        .to_owned();
    let (code, _, err) = run(d, &["client", "read", &digit]);
    assert_eq!(code, 1);
    assert!(err.contains("give more digits"), "{err}");
    for id in ids.iter().filter(|i| i.starts_with(&digit)) {
        assert!(err.contains(id.as_str()), "{id} missing from {err}");
    }
}

#[tokio::test]
async fn the_mailbox_survives_a_restart_and_a_second_recv_msg_and_keeps_a_repeat_once() {
    let (dir, server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "before the restart");
    let store = SqliteStore::open(d.join("letterlock-server.db")).unwrap();
    let first = pending_bodies(&store).await.remove(0);
    let (code, _, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    store.close().await.unwrap();
    drop(server);

    // The server restarts; a second message comes with a second recv_msg.
    let server = BinServer::start(d, &[]);
    let addr = server.addr.clone();
    queue(d, "after the restart");
    let (code, out, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"after the restart");
    let rows = inbox(d);
    assert_eq!(rows.len(), 2, "{rows:?}");

    // The first delivery played back: acknowledged as a repeat, not kept twice.
    let store = SqliteStore::open(d.join("letterlock-server.db")).unwrap();
    enqueue(&store, &first, ack_tag_of(&first)).await;
    let (code, out, err) = recv(d, &addr, &[]);
    assert_eq!(code, EXIT_REPEAT, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("already received"), "{err}");
    assert_eq!(inbox(d).len(), 2);
    store.close().await.unwrap();

    for (row, text) in rows.iter().zip(["before the restart", "after the restart"]) {
        let (code, out, err) = run(d, &["client", "read", row["id"].as_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, text.as_bytes());
    }
}

#[test]
fn recv_msg_into_a_file_gets_exactly_the_message_bytes() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    // No final line break: nothing is added to it.
    let content = "line one\r\nline two, no final line break";
    queue(d, content);
    let file = d.join("got.txt");
    let out = recv_msg_into(d, &addr, &file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), content.as_bytes());
    let status = String::from_utf8_lossy(&out.stderr);
    assert!(status.contains("signature verified"), "{status}");
}

/// Runs the binary with stdin, stdout and stderr on one pseudo-terminal (`script`, from
/// util-linux, as tests/suite/terminal.rs does): its exit status and everything the terminal got.
fn on_terminal(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = common::cli::on_terminal(dir, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn binary_content_for_a_terminal_is_kept_acknowledged_and_explained() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    let binary: Vec<u8> = vec![0x00, 0xff, 0x1b, b'[', b'2', b'J', 0xfe, 0x80];
    std::fs::write(d.join("binary.dat"), &binary).unwrap();
    queue_file(d, &d.join("binary.dat"));
    let (code, screen) = on_terminal(d, &["client", "recv_msg", "--server", &addr]);
    assert_eq!(code, EXIT_NOT_SHOWN, "{screen}");
    assert!(screen.contains("is binary: not printed"), "{screen}");
    assert!(screen.contains("client read"), "{screen}");
    assert!(!screen.contains('\u{1b}'), "{screen:?}");
    // Nothing lost: acknowledged (the server has nothing more), and in the mailbox.
    let (code, _, err) = recv(d, &addr, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no messages"), "{err}");
    let rows = inbox(d);
    assert_eq!(rows.len(), 1);
    let id = rows[0]["id"].as_str().unwrap();
    // The hint names the commands that get it now, and nothing that would say "no messages".
    assert!(
        screen.contains(&format!("`letterlock client read {id} -o FILE`")),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("pipe `letterlock client read {id}`")),
        "{screen}"
    );
    assert!(!screen.contains("pipe recv_msg"), "{screen}");
    let (code, _, err) = run(d, &["client", "read", id, "-o", "binary.out"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(d.join("binary.out")).unwrap(), binary);
    // `client read` refuses it on a terminal too, and writes it to a pipe.
    let (code, screen) = on_terminal(d, &["client", "read", id]);
    assert_ne!(code, 0, "{screen}");
    assert!(screen.contains("-o"), "{screen}");
    assert!(
        screen.contains("pass -o - to show it here escaped"),
        "{screen}"
    );
    let (code, out, err) = run(d, &["client", "read", id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, binary);
    // `-o -` asks for stdout by name: shown on the terminal, escaped.
    let (code, screen) = on_terminal(d, &["client", "read", id, "-o", "-"]);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains(r"\x00\xff\x1b[2J\xfe\x80"), "{screen:?}");
    assert!(!screen.contains('\u{1b}'), "{screen:?}");
    // `-o /dev/stdout` is stdout (a pipe here), and `-o /dev/null` is written in place, once
    // verified, as stdout is; neither refused as a file that cannot be replaced.
    let (code, out, err) = run(d, &["client", "read", id, "-o", "/dev/stdout"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, binary);
    let (code, _, err) = run(d, &["client", "read", id, "-o", "/dev/null"]);
    assert_eq!(code, 0, "{err}");
    // A folder is refused, with what -o takes.
    let (code, _, err) = run(d, &["client", "read", id, "-o", "."]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a folder"), "{err}");
}

#[test]
fn recv_msg_o_refuses_a_file_and_creates_a_missing_folder() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "to a folder");
    std::fs::write(d.join("out.txt"), b"mine").unwrap();
    let (code, _, err) = recv(d, &addr, &["-o", "out.txt"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("out.txt exists and is not a folder"), "{err}");
    assert_eq!(std::fs::read(d.join("out.txt")).unwrap(), b"mine");
    // A device is no folder either: refused, naming the command that writes one message.
    let (code, _, err) = recv(d, &addr, &["-o", "/dev/null"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("/dev/null exists and is not a folder"),
        "{err}"
    );
    assert!(err.contains("client read ID -o FILE"), "{err}");
    // Refused before anything was fetched: the message is still waiting, and not in the mailbox.
    assert!(inbox(d).is_empty());

    let (code, out, err) = recv(d, &addr, &["-o", "new/folder"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("created folder new/folder"), "{err}");
    // Owner-only, as the plaintext it holds.
    use std::os::unix::fs::PermissionsExt;
    for folder in ["new", "new/folder"] {
        let mode = std::fs::metadata(d.join(folder))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{folder}");
    }
    let saved: Vec<_> = std::fs::read_dir(d.join("new/folder"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(std::fs::read(&saved[0]).unwrap(), b"to a folder");
    assert_eq!(inbox(d).len(), 1);
}

#[test]
fn recv_msg_json_prints_one_object_per_message() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "caf\u{e9} \u{1b}[2J");
    std::fs::write(d.join("binary.dat"), [0xffu8, 0]).unwrap();
    queue_file(d, &d.join("binary.dat"));
    let (code, out, err) = recv(d, &addr, &["--json"]);
    assert_eq!(code, EXIT_NOT_SHOWN, "{err}");
    assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["status"], "new");
    assert_eq!(rows[0]["text"], "caf\u{e9} \u{1b}[2J");
    assert_eq!(rows[0]["in_mailbox"], true);
    assert_eq!(rows[1]["bytes"], 2);
    assert!(rows[1].get("text").is_none(), "{rows:?}");
}

/// Writes `len` bytes of text to `path` without holding them.
fn write_big(path: &Path, len: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let line = [b'a'; 1023];
    let mut left = len;
    while left > 0 {
        let n = left.min(1024) as usize;
        file.write_all(&line[..n - 1]).unwrap();
        file.write_all(b"\n").unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

#[test]
#[ignore = "slow: seals, sends and opens 64 MiB messages in both directions"]
fn a_message_over_64_mib_is_kept_and_explained_never_refused() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    let len = 64 * 1024 * 1024 + 1024;
    let big = d.join("big.txt");
    write_big(&big, len);

    // Server to client.
    queue_file(d, &big);
    let (code, out, err) = recv(d, &addr, &[]);
    assert_eq!(code, EXIT_NOT_SHOWN, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("larger than the 64 MiB"), "{err}");
    // Its size with its unit, as every other line says it (found by a trial run: a bare number).
    assert!(
        err.contains(&format!("hybrid mode, {len} bytes, signature verified")),
        "{err}"
    );
    assert!(err.contains("client read"), "{err}");
    assert!(!err.contains("refused"), "{err}");
    let id = inbox(d)[0]["id"].as_str().unwrap().to_owned();
    let (code, out, err) = run(d, &["client", "read", &id]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("-o FILE"), "{err}");
    assert!(!err.contains("refused"), "{err}");
    let (code, _, err) = run(d, &["client", "read", &id, "-o", "big.out"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(d.join("big.out")).unwrap().len(), len);

    // Client to server: `server read` says the same.
    let big = big.to_str().unwrap();
    let (code, _, err) = run(d, &["client", "send_msg", "--server", &addr, "--file", big]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(d, &["server", "inbox", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let id = rows[0]["id"].as_str().unwrap();
    let (code, _, err) = run(d, &["server", "read", id]);
    assert_eq!(code, 1);
    assert!(err.contains("-o FILE"), "{err}");
    assert!(!err.contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_in_the_mailbox_before_it_is_reported_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = TestServer::start(d).await;
    server
        .queue_for_client(b"kept first", &SealOptions::default())
        .await;
    let mailbox = Mailbox::open(&d.join("client.db"), "test server").unwrap();
    let now = envelope::unix_now();
    let mut record = ReceivedRecord::open(&d.join("received"), now).unwrap();
    let mut client = server.client(CLIENT).await.unwrap();
    // Plain connections beside the store and the server: what is on disk when `event` runs.
    let kept = rusqlite::Connection::open(d.join("client.db")).unwrap();
    let outbox = rusqlite::Connection::open(d.join("server.db")).unwrap();
    let count = |conn: &rusqlite::Connection, table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let mut seen = 0;
    let report = client
        .fetch_to_mailbox(
            &FetchOutput::Memory { limit: 1 << 20 },
            &mut record,
            &mailbox,
            |event| {
                if let FetchEvent::New(r) = event {
                    seen += 1;
                    assert!(r.in_mailbox);
                    assert!(matches!(&r.content, Content::Memory(m) if &m[..] == b"kept first"));
                    // Committed in the mailbox, not yet acknowledged to the server.
                    assert_eq!(count(&kept, "inbox"), 1);
                    assert_eq!(count(&outbox, "outbox"), 1);
                }
                Ok(())
            },
        )
        .await
        .unwrap();
    assert_eq!((report.new, seen), (1, 1));
    assert_eq!(count(&outbox, "outbox"), 0);
    mailbox.close().await.unwrap();
    server.stop().await;
}

/// A relay on 127.0.0.1 for one plain version 1 connection to `to` that cuts the connection
/// (both directions) when the client's first `DeliveryAck` frame reaches it, before the server
/// sees it: the acknowledgement is lost, as when the client dies right after keeping a message.
async fn relay_cutting_the_first_ack(to: String) -> String {
    use letterlock::wire::{DEFAULT_MAX_FRAME, Frame, frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(to).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let down = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        // Client to server, frame by frame, up to the first DeliveryAck.
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        'up: loop {
            let n = cr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some((frame, used)) = frame::decode(&pending, DEFAULT_MAX_FRAME).unwrap() {
                if matches!(frame, Frame::DeliveryAck { .. }) {
                    break 'up;
                }
                sw.write_all(&pending[..used]).await.unwrap();
                pending.drain(..used);
            }
        }
        // Dropping every half closes both connections.
        down.abort();
    });
    addr
}

/// `recv_msg --plain-v1` from `d` through [`relay_cutting_the_first_ack`] to the server at
/// `addr` (run off the async runtime, which the relay needs meanwhile).
async fn recv_through_ack_cutter(d: &Path, addr: &str) -> (i32, Vec<u8>, String) {
    let relay = relay_cutting_the_first_ack(addr.to_owned()).await;
    let d = d.to_owned();
    tokio::task::spawn_blocking(move || recv(&d, &relay, &["--plain-v1", "--timeout", "5"]))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_kept_but_never_acknowledged_is_readable_and_kept_once_when_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    classroom_folder(&d);
    let server = BinServer::start(&d, &["--plain-v1"]);
    let addr = server.addr.clone();
    queue(&d, "kept before the ack");
    let (code, out, err) = recv_through_ack_cutter(&d, &addr).await;
    // The acknowledgement never arrived: the fetch failed after the message was kept and shown.
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, b"kept before the ack", "{err}");
    let rows = inbox(&d);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    let (code, out, err) = run(&d, &["client", "read", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"kept before the ack");
    // A crash after keeping, before recording: the record is gone. Delivered again (and cut
    // again), the message is shown again but kept once.
    std::fs::remove_file(d.join(".letterlock-received")).unwrap();
    let (code, out, err) = recv_through_ack_cutter(&d, &addr).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, b"kept before the ack", "{err}");
    assert_eq!(inbox(&d).len(), 1);
    // The server still has it; the next fetch delivers it again: the record knows it (it was
    // recorded before the ack was due), so it is a repeat: acknowledged, not shown or kept again.
    let (code, out, err) = recv(&d, &addr, &["--plain-v1"]);
    assert_eq!(code, EXIT_REPEAT, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("already received"), "{err}");
    assert_eq!(inbox(&d).len(), 1);
    let (code, _, err) = recv(&d, &addr, &["--plain-v1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no messages"), "{err}");
}

/// Found by a trial run: three `recv_msg` started at once on one keys folder each printed every
/// waiting message as new, and all but one then failed with the server's BadAck. Each message
/// is shown as new once for the folder; a run that found the folder busy waits for the other
/// (and says so) and every run exits 0.
#[test]
fn concurrent_recv_msg_on_one_folder_show_each_message_once() {
    const MESSAGES: usize = 6;
    const RUNS: usize = 3;
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    for i in 0..MESSAGES {
        queue(d, &format!("message {i}"));
    }
    assert_each_shown_as_new_once(&[d; RUNS], &addr, MESSAGES);
    assert_eq!(inbox(d).len(), MESSAGES);
}

/// Runs `recv_msg --json` in each of `folders` at once: each exits 0, and together they showed
/// `messages` messages, each as new, none twice.
fn assert_each_shown_as_new_once(folders: &[&Path], addr: &str, messages: usize) {
    let children: Vec<_> = folders
        .iter()
        .map(|folder| {
            common::cli::command(folder, &["client", "recv_msg", "--server", addr, "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut new_ids = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["status"], "new", "{row}");
            new_ids.push(row["id"].as_str().unwrap().to_owned());
        }
    }
    new_ids.sort();
    let shown = new_ids.len();
    new_ids.dedup();
    assert_eq!(shown, new_ids.len(), "a message was shown as new twice");
    assert_eq!(new_ids.len(), messages, "{new_ids:?}");
}

/// Two copies of one client's keys (two folders, or two machines) fetching at once from a
/// server on SQLite: each waiting message goes to one fetch, which shows it as new; the other
/// fetch gets the rest or nothing, and no run fails on an acknowledgement the other made first
/// (found by a trial run: both showed every message, and the later acks were refused).
#[test]
fn concurrent_recv_msg_from_copies_of_one_key_deliver_each_message_once() {
    const MESSAGES: usize = 12;
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    for i in 0..MESSAGES {
        queue(d, &format!("message {i}"));
    }
    let copies: Vec<tempfile::TempDir> = (0..2)
        .map(|_| {
            let copy = tempfile::tempdir().unwrap();
            for file in [
                "client_private.pem",
                "client_public.pem",
                "server_public.pem",
            ] {
                std::fs::copy(d.join(file), copy.path().join(file)).unwrap();
            }
            copy
        })
        .collect();
    let folders: Vec<&Path> = std::iter::once(d)
        .chain(copies.iter().map(|c| c.path()))
        .collect();
    assert_each_shown_as_new_once(&folders, &addr, MESSAGES);
    // Every one acknowledged: nothing waits any more.
    let (code, out, err) = recv(d, &addr, &["--json"]);
    assert_eq!((code, out.len()), (0, 0), "{err}");
}

/// While another process holds the keys folder's recv_msg lock, `recv_msg` says once that it
/// waits (not with -q), gives up after --timeout naming the lock file, and fetches nothing;
/// once the lock is free it receives as usual.
#[test]
fn recv_msg_waits_for_the_folder_lock_within_its_timeout() {
    let (dir, _server, addr) = classroom_with_server();
    let d = dir.path();
    queue(d, "waits its turn");
    let held = letterlock::files::FileLock::try_acquire(&d.join("client_recv.lock"))
        .unwrap()
        .unwrap();
    let (code, out, err) = recv(d, &addr, &["--timeout", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(err.contains("waiting for another"), "{err}");
    assert!(err.contains("client_recv.lock"), "{err}");
    assert!(err.contains("--timeout"), "{err}");
    let (code, _, err) = recv(d, &addr, &["--timeout", "0", "-q"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("waiting for another"), "{err}");
    // --timeout takes a unit as --wait does (found by a trial run: `--timeout 2s` was refused).
    let (code, _, err) = recv(d, &addr, &["--timeout", "300ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("after waiting 300 milliseconds"), "{err}");
    drop(held);
    // A --timeout too long for the clock ("for ever") is no panic (found by a review).
    let (code, out, err) = recv(d, &addr, &["--timeout", "99999999999999999"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"waits its turn");
}
