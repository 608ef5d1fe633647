//! Passphrase-protected private keys through the binary: keys OpenSSL encrypted are used with
//! `--passphrase-file` and `LETTERLOCK_PASSPHRASE`; keys letterlock encrypted are read by
//! `openssl pkey -passin`; a wrong or missing passphrase is refused with a message saying so;
//! `letterlock passphrase` changes and removes one; and the walk-through runs with encrypted
//! keys on both sides.
//!
//! The keys are the fixed test keys, encrypted at test time (no RSA key is generated). These
//! tests need `openssl` on PATH (OpenSSL 3); without it they fail, as tests/suite/openssl.rs does.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cli::{BinServer, assert_fails, assert_ok, command, text};

const ALICE: &str = "alice2048";
const BOB: &str = "bob2048";

/// Runs `letterlock ARGS` in `dir` with `env` set (and LETTERLOCK_PASSPHRASE* cleared unless
/// given), stdin closed and no terminal, so a missing passphrase is an error, never a prompt.
fn letterlock(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(dir, args);
    cmd.env_remove("LETTERLOCK_PASSPHRASE")
        .env_remove("LETTERLOCK_NEW_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    assert_ok(args, &letterlock(dir, args, env))
}

/// Runs and expects failure; returns stderr, checked for the absence of a panic.
fn fails(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    assert_fails(args, &letterlock(dir, args, env))
}

/// A folder holding alice's fixed private key, unencrypted, as alice.pem; its path.
fn folder_with_alice() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alice.pem");
    fs::copy(common::private_path(ALICE), &key).unwrap();
    (dir, key)
}

/// Runs `openssl ARGS`; panics with its stderr (or how to install it) if it fails.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `openssl` ({e}): these tests need it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes a one-line passphrase file (with its newline, as `echo` writes it).
fn pass_file(dir: &Path, name: &str, pass: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("{pass}\n")).unwrap();
    path
}

fn chmod_600(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The `SPKI-SHA256:` key id `letterlock fingerprint --json` prints for `file`, after checking
/// the other fields of the JSON.
fn key_id_of(dir: &Path, file: &Path, env: &[(&str, &str)]) -> String {
    let out = ok(dir, &["fingerprint", "--json", s(file)], env);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["file"].as_str(), Some(s(file)), "{out}");
    assert_eq!(v["bits"].as_u64(), Some(2048), "{out}");
    assert!(
        v["openssh"].as_str().unwrap().starts_with("SHA256:"),
        "{out}"
    );
    v["key_id"].as_str().unwrap().to_owned()
}

fn expected_id(name: &str) -> String {
    common::public(name).id().to_string()
}

/// `tests/keys/NAME_private.pem` encrypted by `openssl ARGS…` (the input and output paths and
/// the passphrase are added), into `dir/out`, mode 0600.
fn openssl_encrypt(dir: &Path, name: &str, out: &str, how: &[&str], pass: &str) -> PathBuf {
    let path = dir.join(out);
    let passout = format!("pass:{pass}");
    let mut args: Vec<&str> = how.to_vec();
    let input = common::private_path(name);
    args.extend_from_slice(&["-in", s(&input), "-out", s(&path), "-passout", &passout]);
    openssl(&args);
    chmod_600(&path);
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{how:?}: {text}"
    );
    path
}

#[test]
fn keys_openssl_encrypted_work_with_a_passphrase_file_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pass = "open sesame, with spaces";
    let file = pass_file(d, "pass.txt", pass);
    // `openssl pkey -aes256` and the form `openssl genpkey -aes-256-cbc` writes (both PBKDF2
    // with HMAC-SHA-256, OpenSSL 3's default), explicit PBES2 through `pkcs8 -topk8`, AES-128,
    // and scrypt (OpenSSL's defaults: N = 16384, r = 8, p = 1).
    let cases: &[(&str, &[&str])] = &[
        ("pkey-aes256.pem", &["pkey", "-aes256"]),
        ("pkey-aes-256-cbc.pem", &["pkey", "-aes-256-cbc"]),
        (
            "pkcs8-v2.pem",
            &[
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-v2prf",
                "hmacWithSHA256",
            ],
        ),
        (
            "pkcs8-aes128.pem",
            &["pkcs8", "-topk8", "-v2", "aes-128-cbc"],
        ),
        ("pkcs8-scrypt.pem", &["pkcs8", "-topk8", "-scrypt"]),
    ];
    for (out, how) in cases {
        let key = openssl_encrypt(d, ALICE, out, how, pass);
        // Through the file, and through the variable.
        let by_file = ok(
            d,
            &["--passphrase-file", s(&file), "fingerprint", s(&key)],
            &[],
        );
        assert!(by_file.contains(&expected_id(ALICE)), "{out}: {by_file}");
        assert_eq!(
            key_id_of(d, &key, &[("LETTERLOCK_PASSPHRASE", pass)]),
            expected_id(ALICE),
            "{out}"
        );
    }
}

/// A passphrase file others may read is used, with a warning naming the fix; an owner-only
/// one without (found by a trial run: a 0644 file went unremarked).
#[test]
fn a_passphrase_file_others_may_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pass = "shared too widely";
    let file = pass_file(d, "pass.txt", pass);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let key = openssl_encrypt(d, ALICE, "alice.pem", &["pkey", "-aes256"], pass);
    let args = ["--passphrase-file", s(&file), "fingerprint", s(&key)];
    let out = letterlock(d, &args, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("is readable by group or others (mode 0644)")
            && err.contains(&format!("chmod 600 {}", file.display())),
        "{err}"
    );
    chmod_600(&file);
    let out = letterlock(d, &args, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("readable by group"), "{err}");
}

/// The key `openssl genpkey -aes-256-cbc` writes for a key it generates (fast in OpenSSL).
#[test]
fn a_key_openssl_genpkey_encrypted_is_used_by_seal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("gen.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-aes-256-cbc",
        "-pass",
        "pass:genpkey pass",
        "-out",
        s(&key),
    ]);
    chmod_600(&key);
    let public = d.join("gen_public.pem");
    openssl(&[
        "pkey",
        "-in",
        s(&key),
        "-passin",
        "pass:genpkey pass",
        "-pubout",
        "-out",
        s(&public),
    ]);
    let file = pass_file(d, "pass", "genpkey pass");
    fs::write(d.join("m.txt"), "sealed with a genpkey key").unwrap();
    let env = [("LETTERLOCK_PASSPHRASE", "genpkey pass")];
    ok(
        d,
        &[
            "seal",
            "--from",
            s(&key),
            "--to",
            s(&common::public_path(BOB)),
            "-o",
            "m.sealed",
            "m.txt",
        ],
        &env,
    );
    let bob = common::private_path(BOB);
    ok(
        d,
        &[
            "open",
            "--key",
            s(&bob),
            "--from",
            s(&public),
            "-o",
            "m.out",
            "m.sealed",
        ],
        &[],
    );
    assert_eq!(
        fs::read_to_string(d.join("m.out")).unwrap(),
        "sealed with a genpkey key"
    );
    // The encrypted key opens too: bob's key encrypted, given by file.
    let bob_enc = openssl_encrypt(d, BOB, "bob_enc.pem", &["pkey", "-aes256"], "genpkey pass");
    ok(
        d,
        &[
            "--passphrase-file",
            s(&file),
            "open",
            "--key",
            s(&bob_enc),
            "--from",
            s(&public),
            "-o",
            "m2.out",
            "m.sealed",
        ],
        &[],
    );
    assert_eq!(
        fs::read_to_string(d.join("m2.out")).unwrap(),
        "sealed with a genpkey key"
    );
}

#[test]
fn a_key_letterlock_encrypted_is_read_by_openssl_and_not_without_the_passphrase() {
    let (dir, key) = folder_with_alice();
    let d = dir.path();
    let file = pass_file(d, "new.txt", "letterlock pass");
    ok(
        d,
        &["passphrase", s(&key), "--new-passphrase-file", s(&file)],
        &[],
    );
    assert_eq!(mode(&key), 0o600);
    let text = fs::read_to_string(&key).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
        "{text}"
    );
    // What we write, as OpenSSL sees it: PBES2, PBKDF2 with HMAC-SHA-256 and 600,000
    // iterations (0x0927C0), AES-256-CBC.
    let asn1 = String::from_utf8(openssl(&["asn1parse", "-in", s(&key)])).unwrap();
    for part in [
        ":PBES2",
        ":PBKDF2",
        ":hmacWithSHA256",
        ":0927C0",
        ":aes-256-cbc",
    ] {
        assert!(asn1.contains(part), "{part} missing:\n{asn1}");
    }
    // OpenSSL decrypts it to the same key, with the passphrase from the file.
    let passin = format!("file:{}", s(&file));
    let public = openssl(&["pkey", "-in", s(&key), "-passin", &passin, "-pubout"]);
    assert_eq!(
        String::from_utf8(public).unwrap(),
        fs::read_to_string(common::public_path(ALICE)).unwrap()
    );
    // And refuses it with a wrong one.
    let wrong = Command::new("openssl")
        .args(["pkey", "-in", s(&key), "-passin", "pass:nope", "-noout"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

/// `-` is refused as a passphrase file, as usage (2), saying why and what to give instead:
/// stdin may carry the message (found by a trial run: `-` was looked for as a file named `-`,
/// "No such file or directory"). `/dev/stdin`, which the refusal names, is read.
#[test]
fn a_dash_for_a_passphrase_file_is_refused_and_dev_stdin_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = openssl_encrypt(d, ALICE, "enc.pem", &["pkey", "-aes256"], "right");
    let dash_for_the_key = ["--passphrase-file", "-", "fingerprint", s(&key)];
    let dash_for_a_new_one = ["passphrase", s(&key), "--new-passphrase-file", "-"];
    for args in [dash_for_the_key, dash_for_a_new_one] {
        let out = letterlock(d, &args, &[("LETTERLOCK_PASSPHRASE", "right")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("a message may come on stdin"),
            "{args:?}: {err}"
        );
        assert!(err.contains("/dev/stdin"), "{args:?}: {err}");
    }
    let args = ["--passphrase-file", "/dev/stdin", "fingerprint", s(&key)];
    let mut child = command(d, &args)
        .env_remove("LETTERLOCK_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"right\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(assert_ok(&args, &out).contains(&expected_id(ALICE)));
}

#[test]
fn a_wrong_or_missing_passphrase_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = openssl_encrypt(d, ALICE, "enc.pem", &["pkey", "-aes256"], "right");
    let wrong = pass_file(d, "wrong.txt", "wrong");
    let err = fails(
        d,
        &["--passphrase-file", s(&wrong), "fingerprint", s(&key)],
        &[],
    );
    assert!(
        err.contains("wrong passphrase, or the file is damaged"),
        "{err}"
    );
    let err = fails(
        d,
        &["fingerprint", s(&key)],
        &[("LETTERLOCK_PASSPHRASE", "Right")],
    );
    assert!(
        err.contains("wrong passphrase, or the file is damaged"),
        "{err}"
    );
    // No passphrase and no terminal: says so, and how to give one.
    let err = fails(d, &["fingerprint", s(&key)], &[]);
    assert!(
        err.contains("passphrase-protected and no passphrase was given"),
        "{err}"
    );
    assert!(err.contains("--passphrase-file"), "{err}");
    assert!(err.contains("LETTERLOCK_PASSPHRASE"), "{err}");
    // A passphrase file that is not there.
    let err = fails(
        d,
        &["--passphrase-file", "missing.txt", "fingerprint", s(&key)],
        &[],
    );
    assert!(err.contains("missing.txt"), "{err}");
    // OpenSSL's legacy encryption (`openssl rsa -aes256 -traditional`) is refused, with how to
    // convert it.
    let legacy = d.join("legacy.pem");
    openssl(&[
        "rsa",
        "-in",
        s(&common::private_path(ALICE)),
        "-aes256",
        "-traditional",
        "-passout",
        "pass:right",
        "-out",
        s(&legacy),
    ]);
    chmod_600(&legacy);
    let err = fails(
        d,
        &["fingerprint", s(&legacy)],
        &[("LETTERLOCK_PASSPHRASE", "right")],
    );
    assert!(err.contains("legacy encryption"), "{err}");
    assert!(err.contains("openssl pkey -in"), "{err}");
    // seal reads its key through the same path.
    fs::write(d.join("m.txt"), "x").unwrap();
    let to = common::public_path(BOB);
    let err = fails(
        d,
        &[
            "seal",
            "--from",
            s(&key),
            "--to",
            s(&to),
            "-o",
            "m.sealed",
            "m.txt",
        ],
        &[("LETTERLOCK_PASSPHRASE", "wrong")],
    );
    assert!(
        err.contains("wrong passphrase, or the file is damaged"),
        "{err}"
    );
    assert!(!d.join("m.sealed").exists());
}

#[test]
fn change_and_remove_a_passphrase() {
    let (dir, key) = folder_with_alice();
    let d = dir.path();
    let first = pass_file(d, "first", "first pass");
    let id = expected_id(ALICE);

    // Set: from unencrypted to "first pass".
    ok(
        d,
        &["passphrase", s(&key), "--new-passphrase-file", s(&first)],
        &[],
    );
    assert_eq!(
        key_id_of(d, &key, &[("LETTERLOCK_PASSPHRASE", "first pass")]),
        id
    );
    // Change: the current one by file, the new one by LETTERLOCK_NEW_PASSPHRASE.
    ok(
        d,
        &["--passphrase-file", s(&first), "passphrase", s(&key)],
        &[("LETTERLOCK_NEW_PASSPHRASE", "second pass")],
    );
    assert_eq!(mode(&key), 0o600);
    let err = fails(
        d,
        &["fingerprint", s(&key)],
        &[("LETTERLOCK_PASSPHRASE", "first pass")],
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(
        key_id_of(d, &key, &[("LETTERLOCK_PASSPHRASE", "second pass")]),
        id
    );
    // Changing needs the current passphrase: a wrong one changes nothing.
    let before = fs::read(&key).unwrap();
    fails(
        d,
        &["passphrase", s(&key), "--remove"],
        &[("LETTERLOCK_PASSPHRASE", "first pass")],
    );
    assert_eq!(fs::read(&key).unwrap(), before);
    // No new passphrase and no terminal: refused, pointing at --remove.
    let err = fails(
        d,
        &["passphrase", s(&key)],
        &[("LETTERLOCK_PASSPHRASE", "second pass")],
    );
    assert!(err.contains("--remove"), "{err}");
    // Remove: back to an unencrypted PKCS#8 key, mode 0600, read with no passphrase.
    ok(
        d,
        &["passphrase", s(&key), "--remove"],
        &[("LETTERLOCK_PASSPHRASE", "second pass")],
    );
    assert_eq!(mode(&key), 0o600);
    assert!(
        fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    assert_eq!(key_id_of(d, &key, &[]), id);
}

/// The walk-through with both private keys passphrase-protected: the server reads its
/// passphrase once at start (from the variable), the client commands take theirs from a file.
#[test]
fn the_walk_through_runs_with_encrypted_keys_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Alice is the server, Bob the client: the classroom file names, keys encrypted.
    openssl_encrypt(d, ALICE, "server_private.pem", &["pkey", "-aes256"], "srv");
    openssl_encrypt(d, BOB, "client_private.pem", &["pkey", "-aes256"], "cli");
    fs::copy(common::public_path(ALICE), d.join("server_public.pem")).unwrap();
    fs::copy(common::public_path(BOB), d.join("client_public.pem")).unwrap();
    let cli_pass = pass_file(d, "client.pass", "cli");

    // Without its passphrase, the server does not start, and says why.
    let err = fails(d, &["server", "--listen", "127.0.0.1:0"], &[]);
    assert!(err.contains("no passphrase was given"), "{err}");

    let mut cmd = Command::new(common::BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .current_dir(d)
        .env("LETTERLOCK_PASSPHRASE", "srv")
        .env_remove("LETTERLOCK_NEW_PASSPHRASE")
        .stdin(Stdio::null());
    let server = BinServer::spawn(cmd);
    let addr = server.addr.clone();
    let client = |args: &[&str]| {
        let mut all = vec!["--passphrase-file", s(&cli_pass), "client"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &addr]);
        let out = letterlock(d, &all, &[]);
        let text = text(&out);
        assert!(out.status.success(), "client {args:?}: {text}");
        text
    };
    let sent = client(&["send_msg", "hello under a passphrase"]);
    assert!(sent.contains("delivered"), "{sent}");
    // A passphrase-protected key keeps no TLS handshake key on disk (SECURITY.md, "The
    // handshake key cache"): that would hand out, for days, what the passphrase guards.
    assert!(!d.join("client_handshake.pem").exists());
    // The server's own commands read its key with its passphrase too.
    let srv = [("LETTERLOCK_PASSPHRASE", "srv")];
    ok(
        d,
        &[
            "server",
            "send_msg",
            "--to",
            "client",
            "reply under a passphrase",
        ],
        &srv,
    );
    let got = client(&["recv_msg"]);
    assert!(got.contains("reply under a passphrase"), "{got}");
    let inbox = ok(d, &["server", "inbox", "--json"], &[]);
    let rows: serde_json::Value = serde_json::from_str(&inbox).unwrap();
    let id = rows[0]["id"].as_str().unwrap();
    let text = ok(d, &["server", "read", &id[..10]], &srv);
    assert!(text.contains("hello under a passphrase"), "{text}");
    // The client with the wrong passphrase is refused before it connects.
    let wrong = pass_file(d, "wrong.pass", "nope");
    let out = letterlock(
        d,
        &[
            "--passphrase-file",
            s(&wrong),
            "client",
            "send_msg",
            "x",
            "--server",
            &addr,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong passphrase"),
        "{err}"
    );
}

/// A TLS handshake key kept while the client key had no passphrase is deleted once it has
/// one: by `letterlock passphrase`, and, for a key encrypted by other means, by the next client
/// command. Left behind, it would let anyone who reads it make TLS handshakes as the client
/// for days without the passphrase (SECURITY.md, "The handshake key cache").
#[test]
fn a_handshake_key_kept_from_before_a_passphrase_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::copy(common::private_path(ALICE), d.join("server_private.pem")).unwrap();
    fs::copy(common::private_path(BOB), d.join("client_private.pem")).unwrap();
    chmod_600(&d.join("server_private.pem"));
    chmod_600(&d.join("client_private.pem"));
    fs::copy(common::public_path(ALICE), d.join("server_public.pem")).unwrap();
    fs::copy(common::public_path(BOB), d.join("client_public.pem")).unwrap();
    let mut cmd = Command::new(common::BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .current_dir(d)
        .stdin(Stdio::null());
    let server = BinServer::spawn(cmd);
    let cache = d.join("client_handshake.pem");
    // stdout and stderr: the deletion is said on stderr.
    let ok = |args: &[&str], env: &[(&str, &str)]| {
        let out = letterlock(d, args, env);
        let said = text(&out);
        assert!(out.status.success(), "{args:?}: {said}");
        said
    };

    let sent = ok(
        &["client", "send_msg", "one", "--server", &server.addr],
        &[],
    );
    assert!(sent.contains("delivered"), "{sent}");
    let kept = fs::read(&cache).expect("no handshake key kept for an unencrypted key");

    // As if an agent ran for the folder (its socket): it is named, with how to stop it.
    let agent = std::os::unix::net::UnixListener::bind(d.join("client_agent.sock")).unwrap();
    let said = ok(
        &["passphrase", "client_private.pem"],
        &[("LETTERLOCK_NEW_PASSPHRASE", "cli")],
    );
    assert!(
        said.contains("deleted") && said.contains("client_handshake.pem"),
        "{said}"
    );
    assert!(said.contains("client agent --stop --keys ."), "{said}");
    drop(agent);
    fs::remove_file(d.join("client_agent.sock")).unwrap();
    assert!(
        !cache.exists(),
        "letterlock passphrase left the handshake key behind"
    );

    // As if the key had been encrypted with `openssl pkey -aes256`: the file is still there.
    fs::write(&cache, &kept).unwrap();
    chmod_600(&cache);
    let cli = [("LETTERLOCK_PASSPHRASE", "cli")];
    let sent = ok(
        &["client", "send_msg", "two", "--server", &server.addr],
        &cli,
    );
    assert!(sent.contains("delivered"), "{sent}");
    assert!(sent.contains("deleted"), "{sent}");
    assert!(!cache.exists(), "the client left the handshake key behind");
}

/// keygen with a passphrase given non-interactively writes an encrypted key that opens with
/// it. Generates an RSA key, slow in debug builds: run with --ignored.
#[test]
#[ignore]
fn keygen_with_a_passphrase_file_writes_an_encrypted_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = pass_file(d, "pass", "keygen pass");
    let out = ok(
        d,
        &[
            "--passphrase-file",
            s(&file),
            "keygen",
            "--name",
            "k",
            "--bits",
            "2048",
        ],
        &[],
    );
    assert!(out.contains("passphrase-protected"), "{out}");
    let key = d.join("k_private.pem");
    assert_eq!(mode(&key), 0o600);
    assert!(
        fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    );
    let passin = format!("file:{}", s(&file));
    let public = openssl(&["pkey", "-in", s(&key), "-passin", &passin, "-pubout"]);
    assert_eq!(public, fs::read(d.join("k_public.pem")).unwrap());
    // Without a terminal or a passphrase, keygen writes an unencrypted key, as before.
    ok(d, &["keygen", "--name", "plain", "--bits", "2048"], &[]);
    assert!(
        fs::read_to_string(d.join("plain_private.pem"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    // Replacing the protected key that way says the new one is not protected, and how to.
    let args = ["keygen", "--name", "k", "--bits", "2048", "--force"];
    let out = letterlock(d, &args, &[]);
    assert_ok(&args, &out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("the key you replaced was passphrase-protected; the new one is not"),
        "{err}"
    );
    assert!(
        err.contains("letterlock passphrase ./k_private.pem"),
        "{err}"
    );
}

/// An empty passphrase given for a new key (an empty file, a file whose first line is empty,
/// an empty variable) is refused before anything is generated or written, with how to write a
/// key without one if that was meant: it never quietly writes an unencrypted key.
#[test]
fn an_empty_passphrase_for_a_new_key_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for content in ["", "\n", "\nsecond line\n"] {
        let file = d.join("empty.txt");
        fs::write(&file, content).unwrap();
        for cmd in [
            &["keygen", "--name", "e1", "--bits", "2048"][..],
            &["client", "generate_key_pair", "--bits", "2048"],
            &["server", "generate_key_pair", "--bits", "2048"],
        ] {
            let mut args = vec!["--passphrase-file", s(&file)];
            args.extend_from_slice(cmd);
            let err = fails(d, &args, &[]);
            assert!(
                err.contains("gives an empty passphrase"),
                "{content:?}: {err}"
            );
            assert!(err.contains("nothing was written"), "{err}");
            assert!(
                err.contains("hint: ") && err.contains("leave out --passphrase-file"),
                "{err}"
            );
        }
    }
    let err = fails(
        d,
        &["keygen", "--name", "e1", "--bits", "2048"],
        &[("LETTERLOCK_PASSPHRASE", "")],
    );
    assert!(
        err.contains("LETTERLOCK_PASSPHRASE gives an empty passphrase"),
        "{err}"
    );
    assert!(err.contains("unset LETTERLOCK_PASSPHRASE"), "{err}");
    let written: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "empty.txt")
        .collect();
    assert!(written.is_empty(), "{written:?}");

    // Changing a passphrase to an empty one is refused too, pointing at --remove.
    let (dir, key) = folder_with_alice();
    let d = dir.path();
    chmod_600(&key);
    let before = fs::read(&key).unwrap();
    let empty = pass_file(d, "empty", "");
    let err = fails(
        d,
        &["passphrase", s(&key), "--new-passphrase-file", s(&empty)],
        &[],
    );
    assert!(err.contains("gives an empty passphrase"), "{err}");
    assert!(err.contains("--remove"), "{err}");
    let err = fails(
        d,
        &["passphrase", s(&key)],
        &[("LETTERLOCK_NEW_PASSPHRASE", "")],
    );
    assert!(
        err.contains("LETTERLOCK_NEW_PASSPHRASE gives an empty passphrase"),
        "{err}"
    );
    assert_eq!(fs::read(&key).unwrap(), before);
}

/// Runs `letterlock ARGS` on a pseudo-terminal (util-linux `script`) with `env` set, typing
/// `input`: what a person at a terminal sees. Returns the exit status and everything the terminal showed.
fn on_a_terminal(dir: &Path, args: &[&str], input: &str, env: &[(&str, &str)]) -> (bool, String) {
    use std::io::Write;
    let mut cmd = common::cli::terminal_command(dir, args);
    cmd.env_remove("LETTERLOCK_PASSPHRASE")
        .env_remove("LETTERLOCK_NEW_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(common::cli::no_script);
    // `script` exits only after the pseudo-terminal's unread input has drained, up to 2 s, once
    // its own input has ended: so the input stays open until the command exits, and is closed
    // after 10 s only for a command that waits for a line it was not given (which then fails).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let (exited, wait) = std::sync::mpsc::channel::<()>();
    let typist = std::thread::spawn(move || {
        let _ = wait.recv_timeout(std::time::Duration::from_secs(10));
        drop(stdin);
    });
    let out = child.wait_with_output().unwrap();
    drop(exited);
    typist.join().unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), shown)
}

/// On a terminal the passphrase is asked for: twice for a new one (a mismatch writes nothing),
/// once to read a key.
#[test]
fn on_a_terminal_the_passphrase_is_asked_for() {
    let (dir, key) = folder_with_alice();
    let d = dir.path();

    let (ok_, shown) = on_a_terminal(d, &["passphrase", s(&key)], "typed one\ntyped two\n", &[]);
    assert!(!ok_, "{shown}");
    assert!(shown.contains("The same passphrase again"), "{shown}");
    assert!(shown.contains("the two passphrases differ"), "{shown}");
    assert!(
        fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    let (ok_, shown) = on_a_terminal(d, &["passphrase", s(&key)], "typed one\ntyped one\n", &[]);
    assert!(ok_, "{shown}");
    assert!(shown.contains("passphrase set"), "{shown}");
    assert_eq!(
        key_id_of(d, &key, &[("LETTERLOCK_PASSPHRASE", "typed one")]),
        expected_id(ALICE)
    );

    let (ok_, shown) = on_a_terminal(d, &["fingerprint", s(&key)], "typed one\n", &[]);
    assert!(ok_, "{shown}");
    assert!(
        shown.contains(&format!("Passphrase for {}", s(&key))),
        "{shown}"
    );
    assert!(shown.contains(&expected_id(ALICE)), "{shown}");
}

/// A passphrase typed on the terminal gets three tries: wrong then right succeeds after one
/// "try again"; three wrong fail with the wrong-passphrase error, a fourth line typed never
/// asked for. One from the file or the variable gets one try: a wrong one fails at once, the
/// right passphrase typed on the terminal after it is never asked for, and the file is read
/// once (a file others may read is warned about each time it is read).
#[test]
fn a_passphrase_typed_on_the_terminal_gets_three_tries_a_given_one_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = openssl_encrypt(d, ALICE, "enc.pem", &["pkey", "-aes256"], "right");
    let id = expected_id(ALICE);
    let args = ["fingerprint", s(&key)];
    let prompts = |shown: &str| shown.matches("Passphrase for").count();

    let (ok_, shown) = on_a_terminal(d, &args, "wrong\nright\n", &[]);
    assert!(ok_, "{shown}");
    assert_eq!(shown.matches("try again").count(), 1, "{shown}");
    assert!(
        shown.contains("wrong passphrase, try again (2 tries left)"),
        "{shown}"
    );
    assert_eq!(prompts(&shown), 2, "{shown}");
    assert!(shown.contains(&id), "{shown}");

    let (ok_, shown) = on_a_terminal(d, &args, "one\ntwo\nthree\nright\n", &[]);
    assert!(!ok_, "{shown}");
    assert_eq!(prompts(&shown), 3, "{shown}");
    assert!(shown.contains("try again (1 try left)"), "{shown}");
    assert!(
        shown.contains("wrong passphrase, or the file is damaged"),
        "{shown}"
    );
    assert!(!shown.contains(&id), "{shown}");

    let wrong = pass_file(d, "wrong.txt", "wrong");
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o644)).unwrap();
    let from_file = ["--passphrase-file", s(&wrong), "fingerprint", s(&key)];
    for (args, env) in [
        (&from_file[..], &[][..]),
        (&args[..], &[("LETTERLOCK_PASSPHRASE", "wrong")][..]),
    ] {
        let (ok_, shown) = on_a_terminal(d, args, "right\n", env);
        assert!(!ok_, "{args:?} {env:?}: {shown}");
        assert!(
            shown.contains("wrong passphrase, or the file is damaged"),
            "{args:?} {env:?}: {shown}"
        );
        assert_eq!(prompts(&shown), 0, "{args:?} {env:?}: {shown}");
        assert!(!shown.contains("try again"), "{args:?} {env:?}: {shown}");
    }
    let (_, shown) = on_a_terminal(d, &from_file, "right\n", &[]);
    assert_eq!(
        shown.matches("is readable by group or others").count(),
        1,
        "{shown}"
    );
}

/// `--remove` on a key without a passphrase changes nothing and says so, rather than claiming
/// to have removed one.
#[test]
fn removing_a_passphrase_a_key_does_not_have_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("alice.pem");
    fs::copy(common::private_path(ALICE), &key).unwrap();
    chmod_600(&key);
    let before = fs::read(&key).unwrap();
    let out = letterlock(d, &["passphrase", s(&key), "--remove"], &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no passphrase"), "{stderr}");
    assert_eq!(fs::read(&key).unwrap(), before);
}

/// `passphrase` on a symbolic link to a key refuses to replace the link, saying it is one,
/// where it leads, and to give that path (found by a trial run: it said "not a regular file"
/// and "choose another path"); the key it leads to is unchanged, and the real path works.
#[test]
fn a_passphrase_for_a_key_reached_through_a_link_names_the_link_and_its_target() {
    let (dir, key) = folder_with_alice();
    let d = dir.path();
    chmod_600(&key);
    std::os::unix::fs::symlink("alice.pem", d.join("link.pem")).unwrap();
    let before = fs::read(&key).unwrap();
    let new = [("LETTERLOCK_NEW_PASSPHRASE", "a new pass")];
    let err = fails(d, &["passphrase", "link.pem"], &new);
    assert!(
        err.contains("link.pem is a symbolic link to alice.pem"),
        "{err}"
    );
    assert!(err.contains("give the path it leads to"), "{err}");
    assert!(!err.contains("choose another path"), "{err}");
    assert_eq!(fs::read(&key).unwrap(), before);
    ok(d, &["passphrase", "alice.pem"], &new);
}

/// A server given --passphrase-file whose key has no passphrase says so in its log (found by a
/// trial run: a server key replaced without one ran on as if protected); one whose key has one
/// does not.
#[test]
fn a_passphrase_file_for_a_key_without_one_is_warned_about() {
    use common::cli::{BinServer, put_private, server_command};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_private(d, common::net::SERVER, "server_private.pem");
    let pw = pass_file(d, "pw", "a passphrase");
    let log = d.join("server.log");
    let cmd = server_command(d, &["--passphrase-file", s(&pw)]);
    let server = BinServer::spawn_logging(cmd, &log);
    drop(server);
    let said = fs::read_to_string(&log).unwrap();
    assert!(
        said.contains(
            "--passphrase-file was given, but the private key is not passphrase-protected"
        ),
        "{said}"
    );
    // Protected now: no warning.
    ok(
        d,
        &["passphrase", "server_private.pem"],
        &[("LETTERLOCK_NEW_PASSPHRASE", "a passphrase")],
    );
    let cmd = server_command(d, &["--passphrase-file", s(&pw)]);
    let server = BinServer::spawn_logging(cmd, &log);
    drop(server);
    let said = fs::read_to_string(&log).unwrap();
    assert!(!said.contains("is not passphrase-protected"), "{said}");
}

/// `--passphrase-file /dev/stdin` reads a pipe another user made, as docs/DEPLOY.md's `sudo cat
/// … | sudo -u letterlock letterlock … --passphrase-file /dev/stdin` does: the descriptor is
/// read, not opened again by its name, which the kernel refuses to another user (found by a
/// trial run: "Permission denied", no key). Needs root, to run the command as another user.
#[test]
#[ignore = "slow tier: runs a command as another user (root needed)"]
fn a_passphrase_piped_in_by_another_user_is_read_from_dev_stdin() {
    use std::io::Write;
    const NOBODY: u32 = 65534;
    let uid = std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap());
    assert_eq!(
        uid, 0,
        "this test runs a command as another user: run it as root (as .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("letterlock-bin");
    if fs::hard_link(common::BIN, &bin).is_err() {
        fs::copy(common::BIN, &bin).unwrap();
    }
    std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(&bin)
        .args(["keygen", "--name", "svc", "--bits", "2048", "--keys"])
        .arg(d)
        .args(["--passphrase-file", "/dev/stdin"])
        .env_remove("LETTERLOCK_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) is needed: apt-get install util-linux");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let key = fs::read_to_string(d.join("svc_private.pem")).unwrap();
    assert!(key.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{key}");
}

/// An empty passphrase file for an encrypted key is said to be empty, not a wrong passphrase
/// (found by a trial run).
#[test]
fn an_empty_passphrase_file_for_a_key_is_said_to_be_empty() {
    let (dir, key) = folder_with_alice();
    let d = dir.path();
    chmod_600(&key);
    ok(
        d,
        &["passphrase", s(&key)],
        &[("LETTERLOCK_NEW_PASSPHRASE", "a passphrase")],
    );
    let empty = pass_file(d, "empty", "");
    let err = fails(
        d,
        &["--passphrase-file", s(&empty), "fingerprint", s(&key)],
        &[],
    );
    assert!(err.contains("gives an empty passphrase"), "{err}");
    assert!(!err.contains("wrong passphrase"), "{err}");
}
