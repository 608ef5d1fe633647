//! Shared test helpers, one copy of each: the fixed keys in `tests/keys`, the data generator,
//! SHA-256, the RSS reader, a sealer built by hand from the library's public pieces, and a
//! parallel loop for CPU-bound checks. Tests call the library's key, seal and open entry points
//! through these helpers, so an API change is one edit here.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub mod cli;
pub mod net;
pub mod outbox;
pub mod panics;
pub mod peer;
pub mod postgres;
pub mod records;
pub mod v2;

use letterlock::envelope::stream::{self, Stream};
use letterlock::envelope::{HEADER_LEN, Header, Mode, chunk_label, header_hash, transcript};
use letterlock::keys::{self, Identity, PrivateKey, PublicKey};

// ---------------------------------------------------------------------------------------------
// Keys

/// Folder of the fixed test keys.
pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// The PEM text of `tests/keys/NAME_private.pem`.
fn private_pem(name: &str) -> String {
    let path = keys_dir().join(format!("{name}_private.pem"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh copy of the fixed key `tests/keys/NAME_private.pem`, for an API that takes a key by
/// value.
///
/// Parsed from the PEM text: git checks the file out group- and world-readable (0644), which
/// [`keys::load_private`] rightly refuses, and a test must not change the mode of a tracked
/// file. The mode check itself is tested in tests/suite/secrets.rs; [`private_path`] gives a 0600 copy
/// for code that loads keys from a path.
pub fn private_key(name: &str) -> PrivateKey {
    PrivateKey::from_pem(&private_pem(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The fixed key `tests/keys/NAME_private.pem`, parsed once per test binary (see
/// [`private_key`]).
pub fn private(name: &str) -> Arc<PrivateKey> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<PrivateKey>>>> = OnceLock::new();
    let mut map = CACHE.get_or_init(Default::default).lock().unwrap();
    map.entry(name.to_owned())
        .or_insert_with(|| Arc::new(private_key(name)))
        .clone()
}

/// A path to a 0600 copy of `tests/keys/NAME_private.pem`, for the binary and other code that
/// loads private keys from files. The copies live in one temporary folder per test binary;
/// the tracked files keep their mode.
pub fn private_path(name: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let path = dir.path().join(format!("{name}_private.pem"));
    let _guard = LOCK.lock().unwrap();
    if !path.exists() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, private_pem(name).as_bytes()).unwrap();
    }
    path
}

/// A 1024-bit RSA key pair made by openssl (letterlock refuses to make one) in `dir`:
/// NAME_private.pem (0600) and NAME_public.pem, paths returned in that order.
pub fn openssl_1024_bit_pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let private = dir.join(format!("{name}_private.pem"));
    let public = dir.join(format!("{name}_public.pem"));
    let openssl = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl is needed for this test (CI installs it)");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "RSA".as_ref(),
        "-pkeyopt".as_ref(),
        "rsa_keygen_bits:1024".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ]);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    openssl(&[
        "pkey".as_ref(),
        "-pubout".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    (private, public)
}

/// The path of `tests/keys/NAME_public.pem`.
pub fn public_path(name: &str) -> PathBuf {
    keys_dir().join(format!("{name}_public.pem"))
}

/// The public half of `tests/keys/NAME_public.pem`.
pub fn public(name: &str) -> PublicKey {
    keys::load_public(&public_path(name)).unwrap()
}

/// Trusts `key` under `name` in `store` (replacing NAME's key if `replace`), as `server trust`
/// does, at `now`.
pub async fn trust_in(
    store: &impl letterlock::store::Store,
    name: &str,
    key: &PublicKey,
    replace: bool,
    now: u64,
) {
    store
        .trust_client(letterlock::store::TrustRequest {
            name: name.into(),
            key_id: key.id().0,
            public_key: key.spki_der().to_vec(),
            replace,
            now,
        })
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Sealing and opening through the library

/// Seals `plain` from `sender` to `recipient`, returning the sealed bytes.
pub fn seal(
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &letterlock::envelope::SealOptions,
    plain: &[u8],
) -> Vec<u8> {
    seal_with_info(sender, recipient, opts, plain).0
}

/// Seals `plain` like [`seal`], also returning what the sealer reports (header, id).
pub fn seal_with_info(
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &letterlock::envelope::SealOptions,
    plain: &[u8],
) -> (Vec<u8>, letterlock::envelope::Sealed) {
    let mut out = Vec::new();
    let sealed = letterlock::envelope::seal(sender, recipient, opts, plain, &mut out).unwrap();
    (out, sealed)
}

/// Seals `plain` like [`seal_with_info`] but with chosen "random" values (message id, creation
/// time, content key): for replays, clock checks and interop tests that need known values.
pub fn seal_fixed(
    sender: Arc<PrivateKey>,
    recipient: &PublicKey,
    opts: &letterlock::envelope::SealOptions,
    fixed: &letterlock::envelope::FixedRandomness,
    plain: &[u8],
) -> (Vec<u8>, letterlock::envelope::Sealed) {
    let (mut sealer, mut out) =
        letterlock::envelope::Sealer::with_randomness(sender, recipient, opts, fixed).unwrap();
    sealer.update(plain, &mut out).unwrap();
    let sealed = sealer.finish(&mut out).unwrap();
    (out, sealed)
}

/// Opens `sealed` as `recipient` trusting `sender`; the plaintext only if it verified.
pub fn open(
    recipient: Arc<PrivateKey>,
    sender: &PublicKey,
    sealed: &[u8],
) -> Result<Vec<u8>, letterlock::envelope::OpenError> {
    let opts = letterlock::envelope::OpenOptions::default();
    letterlock::envelope::open_to_vec(recipient, sender, &opts, sealed)
        .map(|(plain, _)| plain.to_vec())
}

/// The data block `plain || signature` that the sealer encrypts after `header`: `signer`'s
/// signature over the transcript of `header`, the plaintext length and its SHA-256. Tests that
/// sign with a key or over a header the sealer would not use (a forger, a forwarded header, an
/// extreme header value) build the block here and seal it with [`seal_by_hand`].
pub fn signed_block(signer: &dyn Identity, header: &[u8; HEADER_LEN], plain: &[u8]) -> Vec<u8> {
    let signature = signer
        .sign(&transcript(header, plain.len() as u64, &sha256(plain)))
        .unwrap();
    [plain, &signature[..]].concat()
}

/// A whole sealed message built by hand around the encoded `header` (which must parse): the
/// header, in hybrid mode `content_key` wrapped to `to` with OAEP labelled by the header hash,
/// then `data_block` encrypted by [`seal_data_block`] with the header's mode, message id and
/// chunk size. Nothing checks that `header` names `to` or that `data_block` is signed: that is
/// what the tests that call this want to vary.
pub fn seal_by_hand(
    header: &[u8; HEADER_LEN],
    to: &PublicKey,
    content_key: &[u8; 32],
    data_block: &[u8],
) -> Vec<u8> {
    let h = Header::parse(header).unwrap();
    let hh = header_hash(header);
    let mut out = header.to_vec();
    if h.mode == Mode::Hybrid {
        out.extend_from_slice(&to.encrypt_oaep(content_key, &hh).unwrap());
    }
    out.extend_from_slice(&seal_data_block(
        h.mode,
        hh,
        to,
        content_key,
        &h.message_id.0,
        h.chunk_size as usize,
        data_block,
    ));
    out
}

/// Encrypts `data_block` (plaintext || signature) the way the sealer does after the header
/// (and, in hybrid mode, after the wrapped content key), from the library's public pieces:
/// `stream` chunks of `chunk_size` under the payload key of `content_key` and `message_id`, or
/// RSA-OAEP blocks to `to` labelled with `chunk_label`. Tests that must build a message the
/// sealer would never make (a fixed key, a foreign signature) start here.
pub fn seal_data_block(
    mode: Mode,
    header_hash: [u8; 32],
    to: &PublicKey,
    content_key: &[u8; 32],
    message_id: &[u8; 16],
    chunk_size: usize,
    data_block: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    match mode {
        Mode::Hybrid => {
            let key = stream::payload_key(content_key, message_id).unwrap();
            let mut s = Stream::new(&key, header_hash).unwrap();
            let chunks: Vec<&[u8]> = data_block.chunks(chunk_size).collect();
            for (i, c) in chunks.iter().enumerate() {
                let mut c = c.to_vec();
                let tag = s.seal_chunk(&mut c, i + 1 == chunks.len()).unwrap();
                out.extend_from_slice(&c);
                out.extend_from_slice(tag.as_ref());
            }
        }
        Mode::Asymmetric => {
            let max = to.max_oaep_plaintext();
            let count = data_block.len().div_ceil(max) as u32;
            for (i, c) in (0u32..).zip(data_block.chunks(max)) {
                let label = chunk_label(&header_hash, i, count);
                out.extend_from_slice(&to.encrypt_oaep(c, &label).unwrap());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The binary

/// The `letterlock` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_letterlock");

/// Starts `cmd`, a `letterlock server --listen 127.0.0.1:0 ...` command, and returns the child
/// with the address it printed on its first line. The rest of its stdout is drained in the
/// background so it never blocks on a full pipe; its stderr (the log) is discarded.
pub fn spawn_server(cmd: std::process::Command) -> (std::process::Child, String) {
    spawn_server_logging(cmd, std::process::Stdio::null())
}

/// As [`spawn_server`], with the server's stderr (its log) sent to `log`.
pub fn spawn_server_logging(
    mut cmd: std::process::Command,
    log: std::process::Stdio,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("letterlock server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

// ---------------------------------------------------------------------------------------------
// Data, hashes, memory, threads

/// SHA-256 of `data` (aws-lc-rs).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().try_into().unwrap()
}

/// `len` bytes of deterministic, incompressible-looking test data (the same for the same `len`).
pub fn data(len: usize) -> Vec<u8> {
    Rng(0x1234_5678_9abc_def0 ^ len as u64).bytes(len)
}

/// Yields `remaining` bytes of a cheap pattern without holding them: a message of hundreds of
/// MiB whose own size does not count in the memory a test measures.
pub struct Generated {
    pub remaining: u64,
    pub counter: u8,
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        self.counter = self.counter.wrapping_add(1);
        buf[..n].fill(self.counter);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// xorshift64*: reproducible sizes and contents for tests, without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"); 0 if /proc says nothing.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This process's resident set size now (VmRSS), in KiB. A memory check belongs in a test
/// binary of its own (tests/memory_*.rs): other tests' allocations would count too.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// This process's peak resident set size so far (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

/// Runs `f(0..n)` on every core: for CPU-bound checks (thousands of opens) that would take a
/// single thread too long.
pub fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || (t..n).step_by(threads).for_each(f));
        }
    });
}
