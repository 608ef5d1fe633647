//! How letterlock treats secrets: key file modes, weak keys, what Debug and logs show, and the
//! proof-of-delivery comparison.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use letterlock::keys::{self, Identity, KeyError};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_the_private_key_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    keys::generate_pair_files(dir.path(), "k", 2048, false).unwrap();
    let (private, public) = keys::pair_paths(dir.path(), "k");
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(&public), 0o644);
    let before = std::fs::read(&private).unwrap();
    let err = keys::generate_pair_files(dir.path(), "k", 2048, false).unwrap_err();
    assert!(matches!(err, KeyError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&private).unwrap(), before);
    keys::generate_pair_files(dir.path(), "k", 2048, true).unwrap();
    assert_ne!(std::fs::read(&private).unwrap(), before, "--force replaces");
    assert_eq!(mode(&private), 0o600);
}

/// `keygen --force` (and `generate_key_pair --force`, the same code) keeps the old pair beside
/// the new one, never over an earlier kept pair, the private key mode 0600 whatever the old
/// file's mode, and says that messages sealed to the old key open only with it; `open` of such
/// a message names the kept key (found by a trial run: --force lost the old key silently).
#[test]
fn keygen_force_keeps_the_old_pair_aside_and_open_names_it() {
    use common::cli::{letterlock, put_private, put_public};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_private(d, "alice2048", "alice_private.pem");
    put_public(d, "alice2048", "alice_public.pem");
    put_private(d, "bob2048", "bob_private.pem");
    put_public(d, "bob2048", "bob_public.pem");
    // A loosely kept old key is still kept owner-only.
    std::fs::set_permissions(
        d.join("bob_private.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let old_private = std::fs::read(d.join("bob_private.pem")).unwrap();
    let old_public = std::fs::read(d.join("bob_public.pem")).unwrap();
    let run = |args: &[&str]| {
        let out = letterlock(d, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (out, err)
    };
    std::fs::write(d.join("note.txt"), "hi\n").unwrap();
    let (out, _) = run(&[
        "seal",
        "-i",
        "alice_private.pem",
        "-r",
        "bob_public.pem",
        "-o",
        "msg.ll",
        "note.txt",
    ]);
    assert!(out.status.success());
    let kept = |prefix: &str| -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.starts_with(&format!("{prefix}.replaced-"))
            })
            .collect();
        found.sort();
        found
    };

    let (out, err) = run(&["keygen", "--name", "bob", "--bits", "2048", "--force"]);
    assert!(out.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (private, public) = (kept("bob_private.pem"), kept("bob_public.pem"));
    assert_eq!((private.len(), public.len()), (1, 1), "{stdout}");
    let name = private[0].file_name().unwrap().to_str().unwrap().to_owned();
    // NAME_private.pem.replaced-YYYYMMDDTHHMMSSZ
    let stamp = name.strip_prefix("bob_private.pem.replaced-").unwrap();
    assert_eq!(stamp.len(), 16, "{name}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{name}"
    );
    assert_eq!(std::fs::read(&private[0]).unwrap(), old_private);
    assert_eq!(std::fs::read(&public[0]).unwrap(), old_public);
    assert_eq!(mode(&private[0]), 0o600);
    assert_ne!(
        std::fs::read(d.join("bob_private.pem")).unwrap(),
        old_private
    );
    assert!(
        stdout.contains(&format!("kept the old private key as ./{name} (mode 0600)")),
        "{stdout}"
    );
    let old_id = common::public("bob2048").id().to_string();
    assert!(
        err.contains(&old_id) && err.contains("open only with it"),
        "{err}"
    );
    assert!(err.contains("must trust the new ./bob_public.pem"), "{err}");

    // The message sealed to the old key: refused with the new one, the hint naming the kept one.
    let (out, err) = run(&[
        "open",
        "-i",
        "bob_private.pem",
        "--from",
        "alice_public.pem",
        "msg.ll",
    ]);
    assert!(!out.status.success());
    assert!(err.contains("as its recipient, not ours"), "{err}");
    assert!(
        err.contains("hint: that is the key bob_private.pem held before it was replaced"),
        "{err}"
    );
    assert!(
        err.contains(&format!("open it with `-i ./{name}`")),
        "{err}"
    );
    let (out, err) = run(&["open", "-i", &name, "--from", "alice_public.pem", "msg.ll"]);
    assert!(out.status.success(), "{err}");
    assert_eq!(out.stdout, b"hi\n");

    // Again: the first kept pair stays as it was, the second is kept beside it.
    let (out, err) = run(&["keygen", "--name", "bob", "--bits", "2048", "--force"]);
    assert!(out.status.success(), "{err}");
    let private = kept("bob_private.pem");
    assert_eq!(private.len(), 2, "{private:?}");
    assert_eq!(std::fs::read(d.join(&name)).unwrap(), old_private);
    assert_eq!(kept("bob_public.pem").len(), 2);
}

#[test]
fn a_private_key_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    keys::generate_pair_files(dir.path(), "k", 2048, false).unwrap();
    let (private, _) = keys::pair_paths(dir.path(), "k");
    for loose in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(loose)).unwrap();
        let err = keys::load_private(&private).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{loose:04o}")), "{err}");
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    keys::load_private(&private).unwrap();
}

#[test]
fn keys_under_2048_bits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = common::openssl_1024_bit_pair(dir.path(), "weak");
    let err = keys::load_private(&path).unwrap_err();
    assert!(matches!(err.cause(), KeyError::TooSmall), "{err}");
    assert!(err.to_string().contains("2048"), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{err}"
    );
}

#[test]
fn debug_output_of_a_private_key_shows_only_the_public_id() {
    let key = common::private("alice2048");
    let shown = format!("{key:?}");
    let pem = key_pem_body("alice2048");
    assert!(shown.contains(&key.public().id().to_string()), "{shown}");
    for line in pem.lines() {
        assert!(!shown.contains(line), "Debug leaks key material: {shown}");
    }
}

/// The base64 lines of a private key file, each long enough to be unmistakable.
fn key_pem_body(name: &str) -> String {
    std::fs::read_to_string(common::keys_dir().join(format!("{name}_private.pem")))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn trace_logs_never_contain_the_private_key_or_the_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = common::BIN;
    std::fs::write(d.join("m.txt"), "attack at dawn, a secret").unwrap();
    let seal = Command::new(bin)
        .arg("-vv")
        .args(["seal", "--from"])
        .arg(common::private_path("alice2048"))
        .arg("--to")
        .arg(common::public_path("bob2048"))
        .arg("-o")
        .arg(d.join("m.ll"))
        .arg(d.join("m.txt"))
        .output()
        .unwrap();
    assert!(seal.status.success());
    let open = Command::new(bin)
        .arg("-vv")
        .args(["open", "--key"])
        .arg(common::private_path("bob2048"))
        .arg("--from")
        .arg(common::public_path("alice2048"))
        .arg("-o")
        .arg(d.join("back.txt"))
        .arg(d.join("m.ll"))
        .output()
        .unwrap();
    assert!(open.status.success());
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&seal.stderr),
        String::from_utf8_lossy(&open.stderr)
    );
    for name in ["alice2048", "bob2048"] {
        for line in key_pem_body(name).lines() {
            assert!(!logs.contains(line), "a private key line reached the logs");
        }
    }
    assert!(
        !logs.contains("attack at dawn"),
        "plaintext reached the logs: {logs}"
    );
    // And the sealed file does not contain it either.
    let sealed = std::fs::read(d.join("m.ll")).unwrap();
    assert!(!sealed.windows(14).any(|w| w == b"attack at dawn"));
}

#[test]
fn ack_tags_are_compared_over_every_byte() {
    let a = [0x5au8; 32];
    assert!(letterlock::envelope::ack_tags_match(&a, &a));
    for i in 0..32 {
        let mut b = a;
        b[i] ^= 1;
        assert!(!letterlock::envelope::ack_tags_match(&a, &b), "byte {i}");
    }
}

#[test]
fn a_key_path_that_is_not_a_regular_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("k.pem");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    for result in [
        keys::load_public(&link).map(|_| ()),
        keys::load_private(&link).map(|_| ()),
        keys::load_any_public(&link).map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 100 * 1024]).unwrap();
    let err = keys::load_public(&big).unwrap_err();
    assert!(err.to_string().contains("over 64 KiB"), "{err}");
}

/// Starts `cmd` (stdin a pipe it may wait on), and asserts that its core file size limit
/// becomes 0, soft and hard, within 10 s while it runs; then stops it.
fn assert_no_core_file(mut cmd: std::process::Command) {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = core_limit_soon(&child);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.as_deref(),
        Some("0 0"),
        "core file size limit (soft, hard)"
    );
}

/// The core file size limit (soft, hard) of the running `child` once it reads "0 0", or what
/// it last read after 10 s.
fn core_limit_soon(child: &std::process::Child) -> Option<String> {
    let limits = std::path::Path::new("/proc")
        .join(child.id().to_string())
        .join("limits");
    let read = || {
        let limits = std::fs::read_to_string(&limits).unwrap_or_default();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(str::to_owned);
        line.map(|l| {
            l.split_whitespace()
                .skip(4)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    let started = std::time::Instant::now();
    let mut seen = read();
    while seen.as_deref() != Some("0 0") && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = read();
    }
    seen
}

/// A command that holds a private key writes no core file: `seal`, waiting for its input on
/// stdin with the key loaded, has a core file size limit of 0 (a crash, or a SIGBUS from an
/// input file truncated under its mapped read, must not write the key to disk).
#[test]
fn a_command_holding_a_private_key_writes_no_core_file() {
    use common::cli::{command, put_private, put_public};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put_private(d, "alice2048", "alice.pem");
    put_public(d, "bob2048", "bob_public.pem");
    assert_no_core_file(command(
        d,
        &["seal", "--from", "alice.pem", "--to", "bob_public.pem"],
    ));
}

/// The same for `send_msg` of a small message with its handshake key kept, which reads the
/// private key early and parses it later (found by a review: that path skipped the step). It
/// is held here on a server that accepts and never answers.
#[test]
fn send_msg_reading_its_key_lazily_writes_no_core_file_either() {
    use common::cli::{BinServer, classroom_folder, command, run};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    classroom_folder(d);
    {
        // One send keeps the handshake key that the lazy path needs.
        let server = BinServer::start(d, &[]);
        let args = [
            "client",
            "send_msg",
            "--no-agent",
            "--server",
            &server.addr,
            "hi",
        ];
        let (code, _, err) = run(d, &args);
        assert_eq!(code, 0, "{err}");
    }
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    assert_no_core_file(command(
        d,
        &[
            "client",
            "send_msg",
            "--no-agent",
            "--server",
            &addr,
            "--timeout",
            "20",
            "hello",
        ],
    ));
}

/// Both crates deny `unsafe` code, with exactly the two exceptions docs/SECURITY.md names ("The
/// one `unsafe` module"): the mapped file reader and the command line's choice of it. A third
/// `allow(unsafe_code)` fails here, to be reviewed and written into SECURITY.md first.
#[test]
fn unsafe_code_is_allowed_only_where_security_md_says() {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("letterlock/src"), &mut files);
    let mut allowed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("allow(unsafe_code)") {
                let next = text.lines().nth(i + 1).unwrap_or("").trim().to_owned();
                let name = file.strip_prefix(root).unwrap().display().to_string();
                allowed.push(format!("{name}: {next}"));
            }
        }
    }
    allowed.sort();
    assert_eq!(
        allowed,
        [
            "letterlock/src/lib.rs: pub mod mapped;",
            "src/cli/offline.rs: pub(super) fn file_reader(p: &Path) -> Result<Box<dyn Read + Send>> {",
        ]
    );
    for lib in ["src/lib.rs", "letterlock/src/lib.rs"] {
        let text = std::fs::read_to_string(root.join(lib)).unwrap();
        assert!(text.contains("#![deny(unsafe_code)]"), "{lib}");
    }
}
