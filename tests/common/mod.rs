//! Shared test helpers: the fixed keys in `tests/keys`, loaded once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub mod net;

use letterlock::keys::{self, Identity, PrivateKey, PublicKey};

/// Folder of the fixed test keys.
pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// Loads `tests/keys/NAME_private.pem`, first tightening its mode to 0600 (git keeps 0644).
pub fn private(name: &str) -> Arc<PrivateKey> {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<PrivateKey>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap();
    map.entry(name.to_owned())
        .or_insert_with(|| {
            let path = keys_dir().join(format!("{name}_private.pem"));
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            Arc::new(keys::load_private(&path).unwrap())
        })
        .clone()
}

/// The public half of `tests/keys/NAME_public.pem`.
pub fn public(name: &str) -> PublicKey {
    keys::load_public(&keys_dir().join(format!("{name}_public.pem"))).unwrap()
}

/// Deterministic, incompressible-looking test data.
pub fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678 ^ len as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Seals `plain` from `sender` to `recipient`, returning the sealed bytes.
pub fn seal(
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &letterlock::envelope::SealOptions,
    plain: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    letterlock::envelope::seal(sender, recipient, opts, plain, &mut out).unwrap();
    out
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

/// This process's resident set size now (VmRSS), in KiB; 0 if /proc says nothing.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// xorshift64*: reproducible sizes and contents for the load and crash tests, without a
/// dependency.
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
