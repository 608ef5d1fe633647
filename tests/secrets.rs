//! How letterlock treats secrets: key file modes, weak keys, what Debug and logs show, and the
//! proof-of-delivery comparison.

mod common;

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
    let path = dir.path().join("weak.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
        ])
        .arg(&path)
        .status()
        .expect("openssl is needed for this test (CI installs it)");
    assert!(status.success());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = keys::load_private(&path).unwrap_err();
    assert!(matches!(err, KeyError::TooSmall), "{err}");
    assert!(err.to_string().contains("2048"), "{err}");
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
