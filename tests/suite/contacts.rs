//! The client's contacts through the binary, with no server (issue 14): `client trust` pins a
//! peer's key and prints its key id and fingerprint, refuses a name taken by another key
//! without --replace and a key already pinned under another name; `client untrust` forgets;
//! `client contacts --offline` lists them (text and JSON); the mailbox database stays
//! owner-only; `send_msg --to` and `client receipts` need no server to refuse what they must.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::cli::{classroom_folder, run};
use common::{public, public_path};

/// Exit status of `client contacts` / `client receipts` when something needs attention
/// (src/cli/contacts.rs, their --help).
const EXIT_ATTENTION: i32 = 6;

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    classroom_folder(dir.path());
    dir
}

fn trust(dir: &Path, key: &str, name: &str, extra: &[&str]) -> (i32, String, String) {
    let file = public_path(key);
    let mut args = vec!["client", "trust", file.to_str().unwrap(), "--name", name];
    args.extend_from_slice(extra);
    let (code, out, err) = run(dir, &args);
    (code, String::from_utf8(out).unwrap(), err)
}

fn contacts_json(dir: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = run(dir, &["client", "contacts", "--offline", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_slice::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn trust_pins_a_key_prints_its_id_and_fingerprint_and_contacts_lists_it() {
    let dir = folder();
    let d = dir.path();
    let bob = public("bob3072");
    let (code, out, err) = trust(d, "bob3072", "bob", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&bob.id().to_string()), "{out}");
    assert!(out.contains(&bob.ssh_fingerprint().to_string()), "{out}");
    let list = contacts_json(d);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "bob");
    assert_eq!(list[0]["key_id"], bob.id().to_string());
    assert_eq!(list[0]["openssh"], bob.ssh_fingerprint().to_string());
    assert_eq!(list[0]["source"], "pinned");
    assert_eq!(list[0]["state"], "usable");
    // The text listing names the contact, its source and key id.
    let (code, out, err) = run(d, &["client", "contacts", "--offline"]);
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8(out).unwrap();
    let line = out.lines().find(|l| l.starts_with("bob ")).unwrap();
    assert!(
        line.contains("pinned") && line.contains(&bob.id().to_string()),
        "{out}"
    );
    // The database holding the contacts is owner-only.
    let mode = std::fs::metadata(d.join("letterlock-client.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_name_taken_by_another_key_needs_replace_and_a_key_is_pinned_under_one_name() {
    let dir = folder();
    let d = dir.path();
    assert_eq!(trust(d, "bob3072", "bob", &[]).0, 0);
    // Pinning the same key again is fine.
    assert_eq!(trust(d, "bob3072", "bob", &[]).0, 0);
    let (code, _, err) = trust(d, "mallory", "bob", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(
        contacts_json(d)[0]["key_id"],
        public("bob3072").id().to_string()
    );
    let (code, _, err) = trust(d, "bob3072", "robert", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("already pinned as bob"), "{err}");
    let (code, _, err) = trust(d, "mallory", "bob", &["--replace"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&public("bob3072").id().to_string()),
        "the replaced key is named: {err}"
    );
    assert_eq!(
        contacts_json(d)[0]["key_id"],
        public("mallory").id().to_string()
    );
    let (code, _, err) = trust(d, "bob3072", "no/slash", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not a usable contact name"), "{err}");
}

#[test]
fn untrust_forgets_a_contact_and_refuses_an_unknown_name() {
    let dir = folder();
    let d = dir.path();
    assert_eq!(trust(d, "alice2048", "alice", &[]).0, 0);
    assert_eq!(trust(d, "bob3072", "bob", &[]).0, 0);
    let (code, out, err) = run(d, &["client", "untrust", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8(out).unwrap().contains("removed alice"));
    let names: Vec<_> = contacts_json(d)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["bob"]);
    let (code, _, err) = run(d, &["client", "untrust", "alice"]);
    assert_eq!(code, 1);
    assert!(err.contains("no contact named alice"), "{err}");
}

#[test]
fn offline_commands_with_nothing_yet_and_accept_without_a_change() {
    let dir = folder();
    let d = dir.path();
    assert!(contacts_json(d).is_empty());
    let (code, _, err) = run(d, &["client", "receipts", "--offline", "--json"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(d, &["client", "contacts", "--offline", "--accept", "bob"]);
    assert_eq!(code, 1);
    assert!(err.contains("no contact named bob"), "{err}");
    assert_eq!(trust(d, "bob3072", "bob", &[]).0, 0);
    let (code, _, err) = run(d, &["client", "contacts", "--offline", "--accept", "bob"]);
    assert_eq!(code, 1);
    assert!(err.contains("no changed key"), "{err}");
    // Not an attention exit for a clean list.
    let (code, _, _) = run(d, &["client", "contacts", "--offline"]);
    assert_ne!(code, EXIT_ATTENTION);
}

#[test]
fn send_to_an_unknown_name_with_no_server_fails_and_sends_nothing() {
    let dir = folder();
    let d = dir.path();
    // Nothing listens on port 1: the send fails before anything is recorded as sent.
    let (code, _, err) = run(
        d,
        &[
            "client",
            "send_msg",
            "--to",
            "bob",
            "--server",
            "127.0.0.1:1",
            "--timeout",
            "1",
            "hello",
        ],
    );
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = run(d, &["client", "receipts", "--offline", "--json"]);
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(sent.as_array().unwrap().len(), 0);
}

#[test]
fn the_help_of_each_command_says_what_the_server_learns_and_what_to_check() {
    let dir = folder();
    let d = dir.path();
    let help = |args: &[&str]| {
        let (code, out, _) = run(d, args);
        assert_eq!(code, 0);
        String::from_utf8(out).unwrap()
    };
    let send = help(&["client", "send_msg", "--help"]);
    assert!(send.contains("--to"), "{send}");
    assert!(send.contains("The server learns"), "{send}");
    // The server sees the sealed size; padding is only the network's (inside TLS).
    assert!(send.contains("the sealed size"), "{send}");
    assert!(!send.contains("padded to a bucket"), "{send}");
    let client = help(&["client", "--help"]);
    assert!(!client.contains("walk-through"), "{client}");
    assert!(client.contains("receipts"), "{client}");
    let top = help(&["--help"]);
    assert!(top.contains("each one's --help lists them"), "{top}");
    assert!(send.contains("Exit status"), "{send}");
    let contacts = help(&["client", "contacts", "--help"]);
    assert!(contacts.contains("fingerprint"), "{contacts}");
    assert!(contacts.contains("changed host key"), "{contacts}");
    let trust = help(&["client", "trust", "--help"]);
    assert!(trust.contains("fingerprint"), "{trust}");
    let receipts = help(&["client", "receipts", "--help"]);
    assert!(receipts.contains("cannot make one"), "{receipts}");
}

#[test]
fn the_servers_own_key_cannot_be_pinned_as_a_contact() {
    let dir = folder();
    let d = dir.path();
    let (code, out, err) = trust(d, common::net::SERVER, "server", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("that is the server's key"), "{err}");
    assert!(err.contains("not a person's"), "{err}");
    assert!(contacts_json(d).is_empty());
}

/// A private key given to `client trust` is refused, as `server trust` refuses one, whatever
/// its file's mode (the trial run's was 0644): nothing is pinned, and the hint says to ask for
/// the public key and that the owner of a shared private key needs a new pair.
#[test]
fn a_private_key_is_refused_as_a_contact_with_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let dir = folder();
    let d = dir.path();
    for mode in [0o644, 0o600] {
        let file = d.join("bob_private.pem");
        std::fs::copy(common::private_path("bob3072"), &file).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, out, err) = run(d, &["client", "trust", "bob_private.pem", "--name", "bob"]);
        assert_eq!(code, 1, "mode {mode:o}: {out:?}{err}");
        assert!(
            err.contains("bob_private.pem: expected a public key, found a `PRIVATE KEY`"),
            "{err}"
        );
        assert!(err.contains("ask bob's owner for theirs"), "{err}");
        assert!(err.contains("they need a new key pair"), "{err}");
        assert!(
            err.contains("`openssl pkey -in bob_private.pem -pubout`"),
            "{err}"
        );
        assert!(contacts_json(d).is_empty());
    }
    // The help no longer offers a private key file.
    let (_, help, _) = run(d, &["client", "trust", "--help"]);
    let help = String::from_utf8(help).unwrap();
    assert!(!help.contains("private key file works"), "{help}");
    assert!(help.contains("A private key is refused"), "{help}");
}
