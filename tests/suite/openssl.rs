//! Interoperability with the real `openssl` binary (OpenSSL 3): keys it makes load here, keys we
//! write load there, and every RSA operation of the format (OAEP with our labels, PSS with salt
//! 32) is understood in both directions.
//!
//! These tests need `openssl` on PATH, and one needs python3 with the `rsa` package. If either is
//! missing they fail (`.ci/run` installs both): an interop check that quietly passes without its
//! counterpart proves nothing.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{open, private, public, seal};
use letterlock::envelope::{
    FixedRandomness, HEADER_LEN, Mode, SealOptions, chunk_label, header_hash, transcript,
};
use letterlock::keys::{self, Identity, KeyId, PrivateKey};

/// Runs `openssl ARGS` (with `stdin` piped in if given) and returns its output, whatever its
/// exit status. Panics if the binary cannot be started.
fn openssl_raw(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}): the interoperability tests need the OpenSSL 3 \
                 command-line tool on PATH (apt-get install openssl; .ci/run installs it)"
            )
        });
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs `openssl ARGS` and returns its stdout; panics with its stderr if it fails.
fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = openssl_raw(args, stdin);
    assert!(
        out.status.success(),
        "openssl {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, contents).unwrap();
    p
}

/// `openssl genpkey` a 2048-bit RSA key into `dir/NAME` with mode 0600.
fn genpkey(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_str(&p),
        ],
        None,
    );
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// SHA-256 computed by OpenSSL, so the test does not trust our own hashing.
fn openssl_sha256(data: &[u8]) -> Vec<u8> {
    let d = openssl(&["dgst", "-sha256", "-binary"], Some(data));
    assert_eq!(d.len(), 32);
    d
}

/// Round trips `plain` in both modes from `sender` to `recipient`.
fn round_trip_both_modes(sender: &PrivateKey, recipient: std::sync::Arc<PrivateKey>, what: &str) {
    let plain = common::data(1000);
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let sealed = seal(sender, recipient.public(), &SealOptions::mode(mode), &plain);
        let back = open(recipient.clone(), sender.public(), &sealed)
            .unwrap_or_else(|e| panic!("{what}, {mode}: {e}"));
        assert_eq!(back, plain, "{what}, {mode}");
    }
}

#[test]
fn genpkey_key_loads_and_round_trips_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = genpkey(dir.path(), "ossl_private.pem");
    let text = fs::read_to_string(&key_path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    let ossl = std::sync::Arc::new(keys::load_private(&key_path).unwrap());
    assert_eq!(ossl.public().bits(), 2048);

    // Its public half, as OpenSSL writes it, is the same key to us.
    let pub_path = dir.path().join("ossl_public.pem");
    openssl(
        &[
            "pkey",
            "-in",
            path_str(&key_path),
            "-pubout",
            "-out",
            path_str(&pub_path),
        ],
        None,
    );
    assert_eq!(
        keys::load_public(&pub_path).unwrap().id(),
        ossl.public().id()
    );

    // As recipient and as sender.
    let alice = private("alice2048");
    round_trip_both_modes(&alice, ossl.clone(), "alice -> openssl key");
    let bob = private("bob2048");
    round_trip_both_modes(&ossl, bob, "openssl key -> bob");
}

#[test]
fn our_public_key_reads_in_openssl_with_the_same_key_id() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["alice2048", "bob3072", "alice4096"] {
        let ours = private(name).public().clone();
        let pem = write(dir.path(), "pub.pem", ours.to_pem().as_bytes());
        openssl(&["pkey", "-pubin", "-in", path_str(&pem), "-noout"], None);

        let der = openssl(
            &["pkey", "-pubin", "-in", path_str(&pem), "-outform", "DER"],
            None,
        );
        assert_eq!(der, ours.spki_der(), "{name}: SPKI DER differs");
        assert_eq!(KeyId::of_spki(&der), ours.id(), "{name}");

        // The fingerprint shown to users, computed entirely by OpenSSL.
        let digest = openssl_sha256(&der);
        let b64 = openssl(&["base64", "-A"], Some(&digest));
        let b64 = String::from_utf8(b64).unwrap();
        let expected = format!("SPKI-SHA256:{}", b64.trim().trim_end_matches('='));
        assert_eq!(ours.id().to_string(), expected, "{name}");
    }
}

/// Runs `ssh-keygen ARGS` and returns its stdout; fails with how to install it if absent.
fn ssh_keygen(args: &[&str]) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `ssh-keygen` ({e}): the fingerprint test compares with OpenSSH's own \
                 output; install it with `apt-get install openssh-client`"
            )
        });
    assert!(
        out.status.success(),
        "ssh-keygen {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `PublicKey::ssh_fingerprint` and `letterlock fingerprint` print what `ssh-keygen -l` prints
/// for the same key (converted with `ssh-keygen -i -m PKCS8`), and the key id is labelled as
/// something else.
#[test]
fn our_openssh_fingerprint_is_what_ssh_keygen_prints() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    for name in ["alice2048", "bob3072", "alice4096", "mallory"] {
        let pem = common::public_path(name);
        let ours = public(name);
        let line = ssh_keygen(&["-i", "-m", "PKCS8", "-f", path_str(&pem)]);
        // `ssh-rsa BLOB`: the blob is ours byte for byte.
        let blob = line.split_whitespace().nth(1).unwrap();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .unwrap();
        assert_eq!(blob, ours.ssh_blob().unwrap(), "{name}");
        let ssh_pub = write(dir.path(), &format!("{name}.pub"), line.as_bytes());
        let listed = ssh_keygen(&["-l", "-E", "sha256", "-f", path_str(&ssh_pub)]);
        // `BITS SHA256:... COMMENT (RSA)`
        let theirs = listed.split_whitespace().nth(1).unwrap();
        assert_eq!(ours.ssh_fingerprint().to_string(), theirs, "{name}");
        assert_eq!(
            listed.split_whitespace().next().unwrap(),
            ours.bits().to_string()
        );

        // Through the binary: both, labelled; and either form parses back to this key.
        let out = Command::new(common::BIN)
            .args(["fingerprint", path_str(&pem)])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains(&format!("{theirs} (OpenSSH fingerprint")),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("{} (letterlock key id)", ours.id())),
            "{name}: {text}"
        );
        for form in [theirs.to_owned(), ours.id().to_string()] {
            let parsed: keys::Fingerprint = form.parse().unwrap();
            assert!(parsed.matches(&ours), "{name}: {form}");
            assert!(!parsed.matches(&public("bob2048")) || name == "bob2048");
        }
        // The key id is a different hash, and no longer looks like OpenSSH's.
        assert!(ours.id().to_string().starts_with("SPKI-SHA256:"));
        assert_ne!(ours.id().0, ours.ssh_fingerprint().0);
    }
}

/// `openssl pkeyutl -decrypt` with RSA-OAEP-SHA-256 and the given label.
fn openssl_oaep_decrypt(dir: &Path, key: &Path, ciphertext: &[u8], label: &[u8]) -> Output {
    let ct = write(dir, "ct.bin", ciphertext);
    let label_opt = format!("rsa_oaep_label:{}", hex::encode(label));
    openssl_raw(
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            path_str(key),
            "-in",
            path_str(&ct),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-pkeyopt",
            &label_opt,
        ],
        None,
    )
}

#[test]
fn openssl_recovers_the_wrapped_content_key() {
    let dir = tempfile::tempdir().unwrap();
    let alice = private("alice2048");
    let bob = private("bob2048");
    let fixed = FixedRandomness {
        message_id: [0x11; 16],
        created: 1_767_225_600,
        content_key: *b"letterlock interop content key!!",
    };
    let (sealed, _) = common::seal_fixed(
        alice.clone(),
        bob.public(),
        &SealOptions::mode(Mode::Hybrid),
        &fixed,
        b"hello",
    );
    let header = &sealed[..HEADER_LEN];
    let k = bob.public().modulus_len();
    let wrapped = &sealed[HEADER_LEN..HEADER_LEN + k];

    let label = openssl_sha256(header);
    assert_eq!(label, header_hash(header.try_into().unwrap()));
    let bob_path = common::private_path("bob2048");
    let out = openssl_oaep_decrypt(dir.path(), &bob_path, wrapped, &label);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, fixed.content_key);

    // The label matters: without it (or with another) OpenSSL refuses the block.
    let wrong = openssl_oaep_decrypt(dir.path(), &bob_path, wrapped, &[0u8; 32]);
    assert!(!wrong.status.success(), "decrypted under a wrong label");
}

#[test]
fn openssl_recovers_asymmetric_chunks_and_verifies_their_signature() {
    let dir = tempfile::tempdir().unwrap();
    let alice = private("alice2048");
    let bob = private("bob2048");
    // k = 256, so chunks carry 190 bytes; 300 bytes + a 256-byte signature make 3 chunks,
    // and chunk 0 is plaintext only.
    let plain = common::data(300);
    let fixed = FixedRandomness {
        message_id: [0x22; 16],
        created: 1_767_225_600,
        content_key: [0; 32],
    };
    let (sealed, _) = common::seal_fixed(
        alice.clone(),
        bob.public(),
        &SealOptions::mode(Mode::Asymmetric),
        &fixed,
        &plain,
    );
    let header: &[u8; HEADER_LEN] = sealed[..HEADER_LEN].try_into().unwrap();
    let k = bob.public().modulus_len();
    let body = &sealed[HEADER_LEN..];
    assert_eq!(body.len(), 3 * k);
    let hh = openssl_sha256(header);
    let bob_path = common::private_path("bob2048");

    let mut data_block = Vec::new();
    for (index, block) in (0u32..).zip(body.chunks(k)) {
        let mut label = hh.clone();
        label.extend_from_slice(&index.to_be_bytes());
        label.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(label, chunk_label(&header_hash(header), index, 3));
        let out = openssl_oaep_decrypt(dir.path(), &bob_path, block, &label);
        assert!(
            out.status.success(),
            "chunk {index}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        data_block.extend_from_slice(&out.stdout);
    }
    assert_eq!(
        data_block[..190],
        plain[..190],
        "chunk 0 is the plaintext start"
    );
    assert_eq!(data_block.len(), plain.len() + 256);
    assert_eq!(data_block[..plain.len()], plain[..]);

    // A chunk moved to another position does not decrypt.
    let moved = openssl_oaep_decrypt(
        dir.path(),
        &bob_path,
        &body[k..2 * k],
        &chunk_label(&header_hash(header), 0, 3),
    );
    assert!(!moved.status.success(), "chunk 1 decrypted as chunk 0");

    // The signature carried in the data block verifies in OpenSSL over the transcript.
    let signature = &data_block[plain.len()..];
    let t = transcript(header, plain.len() as u64, &openssl_sha256(&plain));
    let alice_pub = write(dir.path(), "alice.pem", alice.public().to_pem().as_bytes());
    assert!(openssl_dgst_verify(dir.path(), &alice_pub, &t, signature));
}

const PSS_OPTS: [&str; 6] = [
    "-sigopt",
    "rsa_padding_mode:pss",
    "-sigopt",
    "rsa_pss_saltlen:32",
    "-sigopt",
    "rsa_mgf1_md:sha256",
];

/// `openssl dgst -sha256 -verify` with PSS/salt 32; true iff it prints `Verified OK`.
fn openssl_dgst_verify(dir: &Path, public_pem: &Path, message: &[u8], signature: &[u8]) -> bool {
    let msg = write(dir, "msg.bin", message);
    let sig = write(dir, "sig.bin", signature);
    let mut args = vec!["dgst", "-sha256"];
    args.extend(PSS_OPTS);
    args.extend([
        "-verify",
        path_str(public_pem),
        "-signature",
        path_str(&sig),
        path_str(&msg),
    ]);
    let out = openssl_raw(&args, None);
    let ok = String::from_utf8_lossy(&out.stdout).contains("Verified OK");
    assert_eq!(ok, out.status.success(), "{out:?}");
    ok
}

/// `openssl pkeyutl -verify` over a SHA-256 digest with PSS/salt 32.
fn openssl_pkeyutl_verify(dir: &Path, public_pem: &Path, message: &[u8], signature: &[u8]) -> bool {
    let digest = write(dir, "digest.bin", &openssl_sha256(message));
    let sig = write(dir, "sig.bin", signature);
    let out = openssl_raw(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            path_str(public_pem),
            "-in",
            path_str(&digest),
            "-sigfile",
            path_str(&sig),
            "-pkeyopt",
            "digest:sha256",
            "-pkeyopt",
            "rsa_padding_mode:pss",
            "-pkeyopt",
            "rsa_pss_saltlen:32",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ],
        None,
    );
    let ok = String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully");
    assert_eq!(ok, out.status.success(), "{out:?}");
    ok
}

#[test]
fn our_pss_signature_verifies_in_openssl() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["alice2048", "alice3072"] {
        let key = private(name);
        let message = b"letterlock signature interop".to_vec();
        let sig = key.sign(&message).unwrap();
        let pem = write(dir.path(), "pub.pem", key.public().to_pem().as_bytes());
        assert!(
            openssl_dgst_verify(dir.path(), &pem, &message, &sig),
            "{name} dgst"
        );
        assert!(
            openssl_pkeyutl_verify(dir.path(), &pem, &message, &sig),
            "{name} pkeyutl"
        );

        let mut other = message.clone();
        other[0] ^= 1;
        assert!(
            !openssl_dgst_verify(dir.path(), &pem, &other, &sig),
            "{name} altered"
        );
        assert!(
            !openssl_pkeyutl_verify(dir.path(), &pem, &other, &sig),
            "{name} altered"
        );
    }
}

#[test]
fn openssl_pss_signature_verifies_with_us() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = genpkey(dir.path(), "signer.pem");
    let signer = keys::load_private(&key_path).unwrap();
    let message = b"signed by openssl".to_vec();
    let msg = write(dir.path(), "msg.bin", &message);
    let sig_path = dir.path().join("sig.bin");
    let mut args = vec!["dgst", "-sha256"];
    args.extend(PSS_OPTS);
    args.extend([
        "-sign",
        path_str(&key_path),
        "-out",
        path_str(&sig_path),
        path_str(&msg),
    ]);
    openssl(&args, None);
    let sig = fs::read(&sig_path).unwrap();
    assert_eq!(sig.len(), 256);
    assert!(signer.public().verify_pss(&message, &sig));
    assert!(!signer.public().verify_pss(b"signed by openssL", &sig));
    // And not under another key.
    assert!(!public("alice2048").verify_pss(&message, &sig));
}

#[test]
fn pkcs1_keys_from_openssl_load_with_the_same_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let pkcs8 = genpkey(dir.path(), "pkcs8.pem");
    let rsa_priv = dir.path().join("rsa_private.pem");
    openssl(
        &[
            "pkey",
            "-in",
            path_str(&pkcs8),
            "-traditional",
            "-out",
            path_str(&rsa_priv),
        ],
        None,
    );
    fs::set_permissions(&rsa_priv, fs::Permissions::from_mode(0o600)).unwrap();
    let rsa_pub = dir.path().join("rsa_public.pem");
    openssl(
        &[
            "rsa",
            "-in",
            path_str(&pkcs8),
            "-RSAPublicKey_out",
            "-out",
            path_str(&rsa_pub),
        ],
        None,
    );
    assert!(
        fs::read_to_string(&rsa_priv)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(
        fs::read_to_string(&rsa_pub)
            .unwrap()
            .starts_with("-----BEGIN RSA PUBLIC KEY-----")
    );
    check_pkcs1_pair(&pkcs8, &rsa_priv, &rsa_pub, "openssl");
}

/// The PKCS#1 files load, name the same key as the PKCS#8 private key, and work.
fn check_pkcs1_pair(pkcs8: &Path, rsa_priv: &Path, rsa_pub: &Path, what: &str) {
    let from_pkcs8 = keys::load_private(pkcs8).unwrap();
    let from_pkcs1 = std::sync::Arc::new(keys::load_private(rsa_priv).unwrap());
    let pub_pkcs1 = keys::load_public(rsa_pub).unwrap();
    assert_eq!(from_pkcs1.public().id(), from_pkcs8.public().id(), "{what}");
    assert_eq!(pub_pkcs1.id(), from_pkcs8.public().id(), "{what}");
    assert_eq!(
        pub_pkcs1.spki_der(),
        from_pkcs8.public().spki_der(),
        "{what}"
    );

    // Sealed to the PKCS#1 public key, opened with the PKCS#1 private key; and signed by it.
    let alice = private("alice2048");
    let plain = b"keys from the Python version still work".to_vec();
    for mode in [Mode::Hybrid, Mode::Asymmetric] {
        let sealed = seal(alice.as_ref(), &pub_pkcs1, &SealOptions::mode(mode), &plain);
        let back = open(from_pkcs1.clone(), alice.public(), &sealed).unwrap();
        assert_eq!(back, plain, "{what} {mode}");
        let sealed = seal(
            from_pkcs1.as_ref(),
            alice.public(),
            &SealOptions::mode(mode),
            &plain,
        );
        let back = open(alice.clone(), &pub_pkcs1, &sealed).unwrap();
        assert_eq!(back, plain, "{what} {mode}, as sender");
    }
}

/// The same check with keys written by the real Python `rsa` package (the classroom version's
/// key library). The package is a test requirement, like `openssl`: `.ci/run` installs it, and
/// without it this test fails and says how to install it.
#[test]
fn pkcs1_keys_from_python_rsa_package_load() {
    let probe = Command::new("python3")
        .args(["-c", "import rsa"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(probe, Ok(s) if s.success()),
        "python3 with the `rsa` package is needed: `apt-get install python3-rsa` or \
         `python3 -m pip install rsa` (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let rsa_priv = dir.path().join("py_private.pem");
    let rsa_pub = dir.path().join("py_public.pem");
    // The package writes the files; the numbers come from a fixed test key (its own
    // `rsa.newkeys(2048)`, pure Python, takes a second or more).
    let numbers = dir.path().join("numbers.pem");
    openssl(
        &[
            "rsa",
            "-traditional",
            "-in",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/keys/bob2048_private.pem"
            ),
            "-out",
            path_str(&numbers),
        ],
        None,
    );
    let script = "import rsa, sys\n\
                  k = rsa.PrivateKey.load_pkcs1(open(sys.argv[1], 'rb').read())\n\
                  priv = rsa.PrivateKey(k.n, k.e, k.d, k.p, k.q)\n\
                  pub = rsa.PublicKey(k.n, k.e)\n\
                  open(sys.argv[2], 'wb').write(priv.save_pkcs1())\n\
                  open(sys.argv[3], 'wb').write(pub.save_pkcs1())\n";
    let status = Command::new("python3")
        .args([
            "-c",
            script,
            path_str(&numbers),
            path_str(&rsa_priv),
            path_str(&rsa_pub),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "python rsa save_pkcs1 failed");
    fs::set_permissions(&rsa_priv, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        fs::read_to_string(&rsa_priv)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    // A PKCS#8 form of the same key, made by OpenSSL, to compare key ids against.
    let pkcs8 = dir.path().join("py_pkcs8.pem");
    openssl(
        &["pkey", "-in", path_str(&rsa_priv), "-out", path_str(&pkcs8)],
        None,
    );
    fs::set_permissions(&pkcs8, fs::Permissions::from_mode(0o600)).unwrap();
    check_pkcs1_pair(&pkcs8, &rsa_priv, &rsa_pub, "python rsa");
}
