//! `letterlock client trust-server HOST:PORT` through the binary, against a real server: the
//! server's key on first contact, written only when confirmed, never replaced silently.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::BIN;
use common::cli::{BinServer, put_private, put_public};

/// A running `letterlock server` with bob2048 as its key, trusting alice2048; killed on drop.
struct Server {
    addr: String,
    _server: BinServer,
    _dir: tempfile::TempDir,
}

fn start_server(flags: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    put_private(dir.path(), "bob2048", "server_private.pem");
    put_public(dir.path(), "alice2048", "client_public.pem");
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--keys"])
        .arg(dir.path())
        .arg("--store")
        .arg(dir.path().join("server.db"))
        .args(flags);
    let server = BinServer::spawn(cmd);
    Server {
        addr: server.addr.clone(),
        _server: server,
        _dir: dir,
    }
}

/// A client folder with alice2048's pair and no server key yet.
fn client_folder() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    put_private(dir.path(), "alice2048", "client_private.pem");
    let server_pem = dir.path().join("server_public.pem");
    (dir, server_pem)
}

/// `letterlock client trust-server ADDR --keys DIR ARGS`, stdin not a terminal.
fn trust_server(addr: &str, keys: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["client", "trust-server", addr, "--keys"])
        .arg(keys)
        .args(args)
        .env_remove("LETTERLOCK_KEYS")
        .env_remove("LETTERLOCK_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `letterlock client trust-server --fingerprint FINGERPRINT` for `server`'s address.
fn trust_with_fingerprint(server: &Server, keys: &Path, fingerprint: &str) -> Output {
    trust_server(&server.addr, keys, &["--fingerprint", fingerprint])
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `out` ended with status 1 (refused) and said each of `says`.
fn assert_refused(out: &Output, says: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    for said in says {
        assert!(text(out).contains(said), "{}", text(out));
    }
}

/// Asserts that `pem` holds the server's key (bob2048).
fn assert_holds_bob(pem: &Path) {
    assert_eq!(
        letterlock::keys::load_public(pem).unwrap().id(),
        common::public("bob2048").id()
    );
}

fn bob_fingerprint() -> String {
    common::public("bob2048").id().to_string()
}

fn mallory_fingerprint() -> String {
    common::public("mallory").id().to_string()
}

#[test]
fn a_matching_fingerprint_writes_the_key_and_the_client_then_sends() {
    let server = start_server(&[]);
    let (dir, pem) = client_folder();
    let out = trust_with_fingerprint(&server, dir.path(), &bob_fingerprint());
    assert!(out.status.success(), "{}", text(&out));
    // The fingerprint is shown, for a person to compare.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&bob_fingerprint()),
        "{}",
        text(&out)
    );
    assert_holds_bob(&pem);

    // The server went on serving after the probe it refused, and the pinned key works.
    let sent = Command::new(BIN)
        .args(["client", "send_msg", "after trust-server", "--server"])
        .arg(&server.addr)
        .arg("--keys")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", text(&sent));

    // Again: the same key is kept, nothing to do.
    let out = trust_with_fingerprint(&server, dir.path(), &bob_fingerprint());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already holds this key"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_wrong_fingerprint_or_no_confirmation_writes_nothing() {
    let server = start_server(&[]);
    let (dir, pem) = client_folder();
    let out = trust_with_fingerprint(&server, dir.path(), &mallory_fingerprint());
    assert_refused(&out, &["not the expected"]);
    assert!(!pem.exists());

    // No terminal to ask on, and neither --fingerprint nor --yes: refused, with the way out.
    let out = trust_server(&server.addr, dir.path(), &[]);
    assert_refused(&out, &["--fingerprint"]);
    assert!(!pem.exists());

    // --yes: trust on first use, on purpose.
    let out = trust_server(&server.addr, dir.path(), &["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_holds_bob(&pem);
}

#[test]
fn another_kept_key_is_replaced_only_with_replace_and_a_loud_warning() {
    let server = start_server(&[]);
    let (dir, pem) = client_folder();
    std::fs::copy(common::public_path("mallory"), &pem).unwrap();
    let before = std::fs::read(&pem).unwrap();
    let out = trust_with_fingerprint(&server, dir.path(), &bob_fingerprint());
    assert_refused(&out, &["ANOTHER server key", "--replace"]);
    assert_eq!(std::fs::read(&pem).unwrap(), before, "kept key untouched");

    // --replace still needs the confirmation.
    let out = trust_server(&server.addr, dir.path(), &["--replace"]);
    assert_refused(&out, &[]);
    assert_eq!(std::fs::read(&pem).unwrap(), before, "kept key untouched");

    let out = trust_server(
        &server.addr,
        dir.path(),
        &["--replace", "--fingerprint", &bob_fingerprint()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("THE SERVER'S KEY HAS CHANGED"),
        "{}",
        text(&out)
    );
    assert_holds_bob(&pem);
}

#[test]
fn a_plain_version_1_server_or_no_server_is_a_clear_error() {
    let server = start_server(&["--plain-v1"]);
    let (dir, pem) = client_folder();
    let out = trust_server(&server.addr, dir.path(), &["--yes", "--timeout", "5"]);
    assert_refused(&out, &["--plain-v1"]);
    assert!(!pem.exists());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = trust_server(&format!("127.0.0.1:{port}"), dir.path(), &["--yes"]);
    // The reason first, then what to check (not "…address?: Connection refused").
    assert_refused(
        &out,
        &[
            "cannot connect",
            "Connection refused",
            ". Is `letterlock server` running there",
        ],
    );
    assert!(!pem.exists());
}

#[test]
fn a_missing_folder_or_port_is_refused_and_nothing_is_created() {
    let server = start_server(&[]);
    let (dir, _) = client_folder();
    let missing = dir.path().join("no-such-folder");
    let out = trust_server(&server.addr, &missing, &["--yes"]);
    assert_refused(&out, &["does not exist"]);
    assert!(!missing.exists());
    let out = trust_server("127.0.0.1", dir.path(), &["--yes"]);
    assert!(text(&out).contains("no port"), "{}", text(&out));
}

#[test]
fn a_client_without_the_server_key_is_pointed_to_trust_server() {
    let (dir, pem) = client_folder();
    let out = Command::new(BIN)
        .args([
            "client",
            "send_msg",
            "hi",
            "--server",
            "127.0.0.1:9",
            "--keys",
        ])
        .arg(dir.path())
        .env_remove("LETTERLOCK_KEYS")
        .env_remove("LETTERLOCK_SERVER")
        .output()
        .unwrap();
    assert_refused(&out, &[]);
    assert!(
        text(&out).contains("client trust-server HOST:PORT"),
        "{}",
        text(&out)
    );
    assert!(!pem.exists());
}

/// A script asking "is this the key the operator read out?" never hears yes for another key,
/// even when the key presented is the one already kept.
#[test]
fn a_wrong_fingerprint_is_refused_even_when_the_presented_key_is_already_kept() {
    let server = start_server(&[]);
    let (dir, pem) = client_folder();
    let out = trust_server(
        &server.addr,
        dir.path(),
        &["--fingerprint", &bob_fingerprint()],
    );
    assert!(out.status.success(), "{}", text(&out));
    for wrong in [mallory_fingerprint(), "garbage".to_owned()] {
        let out = trust_server(&server.addr, dir.path(), &["--fingerprint", &wrong]);
        assert_eq!(out.status.code(), Some(1), "{wrong}: {}", text(&out));
        assert!(text(&out).contains("not the expected"), "{}", text(&out));
    }
    // Refusals name the presented key in the OpenSSH form the operator reads out, too.
    let out = trust_server(
        &server.addr,
        dir.path(),
        &["--fingerprint", &mallory_fingerprint()],
    );
    let ssh = common::public("bob2048").ssh_fingerprint().to_string();
    assert!(text(&out).contains(&ssh), "{}", text(&out));
    assert!(pem.exists());
}

/// `--replace` keeps the replaced key beside the new one, where `client read` finds it for the
/// messages it signed.
#[test]
fn a_replaced_server_key_is_kept_beside_the_new_one() {
    let server = start_server(&[]);
    let (dir, pem) = client_folder();
    std::fs::copy(common::public_path("mallory"), &pem).unwrap();
    let out = trust_server(
        &server.addr,
        dir.path(),
        &["--replace", "--fingerprint", &bob_fingerprint()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let old = common::public("mallory").id();
    let kept = dir
        .path()
        .join(format!("server_public.{}.pem", old.short()));
    assert_eq!(letterlock::keys::load_public(&kept).unwrap().id(), old);
    assert!(
        text(&out).contains("kept the replaced key"),
        "{}",
        text(&out)
    );
}

/// What a server queued before its key was replaced is signed by the old key, which it cannot
/// sign again (the messages are sealed to the client). A client that trusts only the new key
/// sets them aside, and the hint says so: when `--replace` kept the old key, that it is the
/// server's replaced key; without it, that a server whose key was replaced leaves such
/// messages; both times, to ask the server's operator to send it again, never to trust a key
/// on the message's word. Said once per key, not once per message.
#[test]
fn messages_signed_by_a_replaced_server_key_are_set_aside_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let srv = root.join("srv");
    std::fs::create_dir(&srv).unwrap();
    // The server's old key is mallory's; it queues two messages for alice (`client`).
    put_private(&srv, "mallory", "server_private.pem");
    put_public(&srv, "alice2048", "client_public.pem");
    let server_cmd = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--keys", "srv"])
            .current_dir(root)
            .env_remove("LETTERLOCK_KEYS")
            .env_remove("LETTERLOCK_STORE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    server_cmd(&["server", "migrate"]);
    for message in [
        "first, signed by the old key",
        "second, signed by the old key",
    ] {
        server_cmd(&["server", "send_msg", "--to", "client", message]);
    }
    // The key is replaced (bob2048), and the server started with it on the same mailbox.
    put_private(&srv, "bob2048", "server_private.pem");
    let server = BinServer::start(root, &["--keys", "srv"]);

    // alice trusted the old key, and takes the new one with --replace, which keeps the old.
    let (client, pem) = client_folder();
    std::fs::copy(common::public_path("mallory"), &pem).unwrap();
    let out = trust_server(
        &server.addr,
        client.path(),
        &["--replace", "--fingerprint", &bob_fingerprint()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let recv = || {
        Command::new(BIN)
            .args(["client", "recv_msg", "--server", &server.addr, "--keys"])
            .arg(client.path())
            .env_remove("LETTERLOCK_KEYS")
            .env_remove("LETTERLOCK_SERVER")
            .output()
            .unwrap()
    };
    let old = common::public("mallory").id();
    let new = common::public("bob2048").id().to_string();
    let out = recv();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(4), "set aside: {said}");
    assert_eq!(said.matches("set aside, NOT received").count(), 2, "{said}");
    assert!(
        said.contains(&format!(
            "from an unknown key {old}, neither the server key this client trusts ({new}) nor \
             a contact's"
        )),
        "{said}"
    );
    assert_eq!(said.matches("hint:").count(), 1, "once per key: {said}");
    assert!(
        said.contains(&format!(
            "hint: {old} is the server key this client trusted before `letterlock client \
             trust-server --replace` (kept as {}), not the server's current key {new}",
            client
                .path()
                .join(format!("server_public.{}.pem", old.short()))
                .display()
        )),
        "{said}"
    );
    assert!(
        said.contains("Ask the server's operator to send it again")
            && said.contains("Do not pin the old key"),
        "{said}"
    );
    assert!(
        !said.contains("client trust FILE") && !said.contains("--name NAME"),
        "no advice to trust the old key: {said}"
    );

    // Without the kept key, the client cannot tell the server's old key from a stranger's:
    // the hint names both, and pinning only after checking a fingerprint out of band.
    std::fs::remove_file(
        client
            .path()
            .join(format!("server_public.{}.pem", old.short())),
    )
    .unwrap();
    let out = recv();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(4), "set aside: {said}");
    assert_eq!(said.matches("hint:").count(), 1, "once per key: {said}");
    assert!(
        said.contains(&format!(
            "hint: it is signed by a key that is not the server's current trusted key ({new}, \
             in server_public.pem) nor a contact's. A server whose key was replaced leaves the \
             messages it queued before the change signed so"
        )),
        "{said}"
    );
    assert!(
        said.contains("ask the server's operator, or the sender if you know who, to send it again")
            && said.contains(
                "only once you have checked its fingerprint with its owner over another channel"
            ),
        "{said}"
    );
}
