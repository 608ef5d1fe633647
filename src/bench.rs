//! `letterlock bench`: how fast letterlock is on this machine, each figure beside the bound the
//! machine allows, all measured in the same run (these machines are noisy: ratios measured side
//! by side hold where absolute times do not).
//!
//! Sections:
//! 1. **Bounds**, with aws-lc-rs directly: RSA private operations (OAEP decrypt, PSS sign) on one
//!    core and on all cores, RSA public operations, AES-256-GCM and SHA-256 on 64 KiB buffers,
//!    and one pass doing both (the single-stream sealing bound).
//! 2. **Envelope**: [`envelope::seal`] and [`envelope::open`] in both modes across sizes. The
//!    bound beside each row is built from section 1: the RSA operations the message needs plus
//!    its bytes through the single-stream bound. The asymmetric mode is run only up to its limit.
//! 3. **Server**: a real [`Server`] on loopback TCP with the durable [`SqliteStore`] in a
//!    temporary folder, driven by [`Client`]s in the same process.
//!
//! Invariants: every figure printed is a measurement of this run, or "not run" with the reason;
//! nothing is extrapolated. Speed goals are reported, never asserted.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest;
use serde::Serialize;
use tracing::Dispatch;

use letterlock::client::{Client, ClientConfig, ClientError};
use letterlock::envelope::{
    self, DEFAULT_ASYMMETRIC_LIMIT, Mode, OpenError, OpenOptions, SealError, SealOptions, Sealed,
};
use letterlock::keys::{Identity, KeyError, PrivateKey, PublicKey, TrustList};
use letterlock::server::{Server, ServerConfig};
use letterlock::store::{SqliteStore, StoreError};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Bytes per MB in every MB/s figure (decimal, as `openssl speed` and disks count).
const MB: f64 = 1e6;
/// Buffer size of the symmetric bounds: the envelope's default chunk size.
const BOUND_BUF: usize = 64 * 1024;
/// Message sizes of the full run. The asymmetric mode runs only up to its limit.
const FULL_SIZES: &[u64] = &[100, KIB, 64 * KIB, MIB, 16 * MIB, GIB];
/// Message sizes of `--quick`: no 16 MiB, no 1 GiB, asymmetric only up to 64 KiB.
const QUICK_SIZES: &[u64] = &[100, KIB, 64 * KIB, MIB];
const QUICK_ASYMMETRIC_MAX: u64 = 64 * KIB;
/// Concurrent connections of the server message-rate runs.
const CONNECTIONS: &[usize] = &[1, 4, 16, 64];
/// Rounds of each server rate run; the best is reported, as with [`BATCHES`].
const SERVER_ROUNDS: usize = 3;
/// Plaintext of each server message.
const SERVER_MESSAGE: u64 = KIB;
/// The peak-RSS goal for 1 GiB messages.
const RSS_GOAL_KIB: u64 = 64 * 1024;
/// The share of a bound the goals ask for.
const GOAL_SHARE: f64 = 0.8;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The reduced set: fewer sizes and iterations, no 1 GiB, well under 30 s in release.
    pub quick: bool,
    /// RSA key size of every key the bench generates.
    pub bits: usize,
}

impl BenchOptions {
    /// Time each measurement runs for, at least.
    fn min_time(&self) -> Duration {
        if self.quick {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(1500)
        }
    }

    /// Time of each bound measured again beside a row or a server run.
    fn bound_refresh_time(&self) -> Duration {
        if self.quick {
            Duration::from_millis(40)
        } else {
            Duration::from_millis(1000)
        }
    }

    /// Messages per concurrency level in the server rate runs.
    fn server_messages(&self) -> usize {
        if self.quick { 64 } else { 3000 }
    }

    /// Complete sends timed for the latency percentiles.
    fn latency_samples(&self) -> usize {
        if self.quick { 10 } else { 200 }
    }
}

/// Why the bench could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("key: {0}")]
    Key(#[from] KeyError),
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    #[error("open: {0}")]
    Open(#[from] OpenError),
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("an aws-lc primitive failed")]
    Crypto,
    #[error("wrong result: {0}")]
    Wrong(String),
    #[error("cannot draw the plot: {0}")]
    Plot(String),
}

// ---------------------------------------------------------------------------------------------
// The report

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub bounds: Bounds,
    pub envelope: Vec<EnvelopeRow>,
    /// Hybrid speed over asymmetric speed, per size where both ran.
    pub ratios: Vec<Ratio>,
    /// The asymmetric mode round-tripped at every size it ran, and refused its limit + 1 byte.
    pub asymmetric_correct: AsymmetricCheck,
    pub server: ServerReport,
    pub goals: Vec<Goal>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub bits: usize,
    pub quick: bool,
    pub release_build: bool,
    pub total_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bounds {
    /// RSA-OAEP-SHA-256 decryptions per second, one core.
    pub rsa_decrypt_1core: f64,
    /// The same on `threads` threads at once.
    pub rsa_decrypt_all: f64,
    /// RSA-PSS-SHA-256 signatures per second, one core.
    pub rsa_sign_1core: f64,
    pub rsa_sign_all: f64,
    /// Public operations, one core: they enter the envelope bounds.
    pub rsa_encrypt_1core: f64,
    pub rsa_verify_1core: f64,
    /// MB/s on 64 KiB buffers, one core.
    pub aes_gcm_mb_s: f64,
    pub sha256_mb_s: f64,
    /// SHA-256 and AES-256-GCM over each buffer in turn: the single-stream sealing bound.
    pub seal_pass_mb_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnvelopeRow {
    pub mode: &'static str,
    pub op: &'static str,
    pub size: u64,
    /// Why the row was not run (`None` when it was).
    pub not_run: Option<String>,
    /// Operations timed, in all batches, and the time they took.
    pub iterations: u64,
    pub seconds: f64,
    /// Messages per second of the best batch.
    pub msgs_s: f64,
    pub mb_s: f64,
    /// The bound for this message: its RSA operations plus its bytes at the sealing bound.
    pub bound_msgs_s: f64,
    pub bound_mb_s: f64,
    /// Measured over bound.
    pub of_bound: f64,
    /// The single-stream sealing bound measured right before this size ran (MB/s).
    pub seal_pass_mb_s: f64,
    /// Peak RSS while this row ran (KiB), where it was measured (1 GiB rows).
    pub peak_rss_kib: Option<u64>,
    /// RSS when the row began (KiB): resident before it, part of the peak.
    pub rss_before_kib: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub size: u64,
    pub seal: f64,
    pub open: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AsymmetricCheck {
    /// Sizes that sealed, opened and compared equal.
    pub sizes_checked: Vec<u64>,
    pub limit: u64,
    pub refuses_over_limit: bool,
    pub all_correct: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    pub message_size: u64,
    pub rates: Vec<ServerRate>,
    pub latency: Latency,
    pub big_send: Option<BigSend>,
    /// VmHWM of the whole process at the end: server, clients and everything before.
    pub process_peak_rss_kib: u64,
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerRate {
    pub connections: usize,
    /// Messages acknowledged in all rounds, and the time they took.
    pub messages: usize,
    pub seconds: f64,
    /// Messages per second of the best round.
    pub msgs_s: f64,
    /// The all-core RSA decrypt bound, measured right before this run.
    pub bound_msgs_s: f64,
    pub of_bound: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BigSend {
    pub bytes: u64,
    pub seconds: f64,
    pub mb_s: f64,
    /// Peak RSS while sending and receiving it (server and client in this one process).
    pub peak_rss_kib: u64,
    /// RSS when the send began (KiB): resident before it, part of the peak.
    pub rss_before_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    /// `None` when the run did not measure it (as `--quick` does not measure 1 GiB).
    pub met: Option<bool>,
    pub detail: String,
}

// ---------------------------------------------------------------------------------------------
// Running

/// Runs every section; progress goes to stderr.
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    let started = Instant::now();
    progress(&format!("generating two {}-bit RSA keys", opts.bits));
    let alice = Arc::new(PrivateKey::generate(opts.bits)?);
    let bob = Arc::new(PrivateKey::generate(opts.bits)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    progress("bounds");
    let bounds = measure_bounds(opts.min_time(), &alice, Some(threads))?;
    progress("seal and open");
    let (envelope, asymmetric_correct) = measure_envelope(opts, &alice, &bob)?;
    let ratios = ratios(&envelope);
    progress("server");
    let server = measure_server(opts)?;
    let machine = Machine {
        cpu: cpu_name(),
        threads,
        bits: opts.bits,
        quick: opts.quick,
        release_build: !cfg!(debug_assertions),
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let goals = goals(&bounds, &envelope, &asymmetric_correct, &server);
    Ok(Report {
        machine,
        bounds,
        envelope,
        ratios,
        asymmetric_correct,
        server,
        goals,
    })
}

fn progress(what: &str) {
    eprintln!("letterlock bench: {what}…");
}

/// Timed batches each figure is the best of. This machine is shared: other work steals the CPU
/// in bursts, and the best batch is the one least disturbed, for a figure and its bound alike.
const BATCHES: u32 = 5;

/// How a measurement went.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Operations in all batches.
    iterations: u64,
    /// Time inside the operation, all batches.
    seconds: f64,
    /// Operations per second of the best batch.
    best_per_s: f64,
}

/// Runs `op` in [`BATCHES`] batches of at least `min / BATCHES` (and one operation) each;
/// times only `op`, which gets the index of its call.
fn repeat(
    min: Duration,
    mut op: impl FnMut(u64) -> Result<(), BenchError>,
) -> Result<Timing, BenchError> {
    let slice = min / BATCHES;
    let mut iterations = 0;
    let mut total = Duration::ZERO;
    let mut best_per_s = 0f64;
    for _ in 0..BATCHES {
        let (mut n, mut spent) = (0u64, Duration::ZERO);
        while n == 0 || spent < slice {
            let t = Instant::now();
            op(iterations)?;
            spent += t.elapsed();
            n += 1;
            iterations += 1;
        }
        total += spent;
        best_per_s = best_per_s.max(n as f64 / spent.as_secs_f64());
    }
    Ok(Timing {
        iterations,
        seconds: total.as_secs_f64(),
        best_per_s,
    })
}

/// Runs `op` on `threads` threads at once, in [`BATCHES`] batches the threads start together;
/// returns the operations per second of all threads in the best batch.
fn rate_on(
    threads: usize,
    min: Duration,
    op: impl Fn() -> Result<(), BenchError> + Sync,
) -> Result<f64, BenchError> {
    let slice = min / BATCHES;
    let barrier = std::sync::Barrier::new(threads);
    let one_thread = || -> Result<Vec<f64>, BenchError> {
        let mut rates = Vec::with_capacity(BATCHES as usize);
        for _ in 0..BATCHES {
            barrier.wait();
            let t = Instant::now();
            let mut n = 0u64;
            while n == 0 || t.elapsed() < slice {
                op()?;
                n += 1;
            }
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        Ok(rates)
    };
    let results: Vec<Result<Vec<f64>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(one_thread)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::Crypto)))
            .collect()
    });
    let mut per_batch = vec![0f64; BATCHES as usize];
    for r in results {
        for (sum, rate) in per_batch.iter_mut().zip(r?) {
            *sum += rate;
        }
    }
    Ok(per_batch.into_iter().fold(0.0, f64::max))
}

/// Measures every bound; the all-core ones only with `threads` (else they are 0).
fn measure_bounds(
    min: Duration,
    key: &PrivateKey,
    threads: Option<usize>,
) -> Result<Bounds, BenchError> {
    let public = key.public().clone();
    let label = [7u8; 32];
    let ciphertext = public.encrypt_oaep(&[1u8; 32], &label)?;
    // About the size of a signature transcript.
    let message = [3u8; 119];
    let signature = key.sign(&message)?;
    let decrypt = || {
        key.decrypt_oaep(&ciphertext, &label)?;
        Ok(())
    };
    let sign = || {
        key.sign(&message)?;
        Ok(())
    };
    let rsa_decrypt_1core = rate_on(1, min, decrypt)?;
    let rsa_decrypt_all = match threads {
        Some(n) => rate_on(n, min, decrypt)?,
        None => 0.0,
    };
    let rsa_sign_1core = rate_on(1, min, sign)?;
    let rsa_sign_all = match threads {
        Some(n) => rate_on(n, min, sign)?,
        None => 0.0,
    };
    let rsa_encrypt_1core = rate_on(1, min, || {
        public.encrypt_oaep(&[1u8; 32], &label)?;
        Ok(())
    })?;
    let rsa_verify_1core = rate_on(1, min, || {
        if public.verify_pss(&message, &signature) {
            Ok(())
        } else {
            Err(BenchError::Wrong("a PSS signature did not verify".into()))
        }
    })?;

    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).map_err(|_| crypt())?);
    let mut buf = vec![5u8; BOUND_BUF];
    let mut counter = 0u64;
    let mut aes = |buf: &mut [u8]| -> Result<(), BenchError> {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&counter.to_be_bytes());
        counter += 1;
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from([0u8; 32]), buf)
            .map_err(|_| crypt())?;
        let _ = std::hint::black_box(tag);
        Ok(())
    };
    let mb_s = |t: Timing| t.best_per_s * BOUND_BUF as f64 / MB;
    let aes_gcm_mb_s = mb_s(repeat(min, |_| aes(&mut buf))?);
    let sha256_mb_s = mb_s(repeat(min, |_| {
        std::hint::black_box(digest::digest(&digest::SHA256, &buf));
        Ok(())
    })?);
    let mut hasher = digest::Context::new(&digest::SHA256);
    let seal_pass_mb_s = mb_s(repeat(min, |_| {
        hasher.update(&buf);
        aes(&mut buf)
    })?);
    std::hint::black_box(hasher.finish());
    Ok(Bounds {
        rsa_decrypt_1core,
        rsa_decrypt_all,
        rsa_sign_1core,
        rsa_sign_all,
        rsa_encrypt_1core,
        rsa_verify_1core,
        aes_gcm_mb_s,
        sha256_mb_s,
        seal_pass_mb_s,
    })
}

/// RSA-OAEP decryptions per second on `threads` threads.
fn decrypt_rate(key: &PrivateKey, threads: usize, min: Duration) -> Result<f64, BenchError> {
    let label = [7u8; 32];
    let ciphertext = key.public().encrypt_oaep(&[1u8; 32], &label)?;
    rate_on(threads, min, || {
        key.decrypt_oaep(&ciphertext, &label)?;
        Ok(())
    })
}

fn crypt() -> BenchError {
    BenchError::Crypto
}

/// The fastest one core could seal or open a message of `size` bytes: the RSA operations it
/// needs at their measured rates, plus its bytes at the measured symmetric rates.
fn envelope_bound(b: &Bounds, mode: Mode, seal: bool, size: u64, modulus: u64) -> f64 {
    let sig = modulus;
    let seconds = match mode {
        Mode::Hybrid => {
            let rsa = if seal {
                1.0 / b.rsa_encrypt_1core + 1.0 / b.rsa_sign_1core
            } else {
                1.0 / b.rsa_decrypt_1core + 1.0 / b.rsa_verify_1core
            };
            rsa + (size + sig) as f64 / (b.seal_pass_mb_s * MB)
        }
        Mode::Asymmetric => {
            let chunks =
                (size + sig).div_ceil(modulus - letterlock::keys::OAEP_OVERHEAD as u64) as f64;
            let rsa = if seal {
                chunks / b.rsa_encrypt_1core + 1.0 / b.rsa_sign_1core
            } else {
                chunks / b.rsa_decrypt_1core + 1.0 / b.rsa_verify_1core
            };
            rsa + size as f64 / (b.sha256_mb_s * MB)
        }
    };
    1.0 / seconds
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Hybrid => "hybrid",
        Mode::Asymmetric => "asymmetric",
    }
}

/// Seals and opens every size in both modes.
fn measure_envelope(
    opts: &BenchOptions,
    alice: &Arc<PrivateKey>,
    bob: &Arc<PrivateKey>,
) -> Result<(Vec<EnvelopeRow>, AsymmetricCheck), BenchError> {
    let sizes = if opts.quick { QUICK_SIZES } else { FULL_SIZES };
    let modulus = alice.public().modulus_len() as u64;
    let mut rows = Vec::new();
    let mut checked = Vec::new();
    for &size in sizes {
        // This machine is shared and noisy: the bounds each row is set beside are measured again
        // right before its size runs, so measurement and bound see the same conditions.
        let local = measure_bounds(opts.bound_refresh_time(), alice, None)?;
        for mode in [Mode::Hybrid, Mode::Asymmetric] {
            let row = |op, not_run: Option<String>| EnvelopeRow {
                mode: mode_name(mode),
                op,
                size,
                not_run,
                iterations: 0,
                seconds: 0.0,
                msgs_s: 0.0,
                mb_s: 0.0,
                bound_msgs_s: envelope_bound(&local, mode, op == "seal", size, modulus),
                seal_pass_mb_s: local.seal_pass_mb_s,
                bound_mb_s: 0.0,
                of_bound: 0.0,
                peak_rss_kib: None,
                rss_before_kib: None,
            };
            let skip = match mode {
                Mode::Asymmetric if size > DEFAULT_ASYMMETRIC_LIMIT => Some(format!(
                    "not run: over the asymmetric limit of {}",
                    human_size(DEFAULT_ASYMMETRIC_LIMIT)
                )),
                Mode::Asymmetric if opts.quick && size > QUICK_ASYMMETRIC_MAX => {
                    Some("not run in --quick".to_owned())
                }
                _ => None,
            };
            if let Some(reason) = skip {
                rows.push(row("seal", Some(reason.clone())));
                rows.push(row("open", Some(reason)));
                continue;
            }
            progress(&format!("  {} {}", mode_name(mode), human_size(size)));
            let (seal, open) = if size >= GIB {
                streamed_round_trip(opts, alice, bob, mode, size)?
            } else {
                in_memory_round_trip(opts, alice, bob, mode, size)?
            };
            if mode == Mode::Asymmetric {
                checked.push(size);
            }
            for (op, m) in [("seal", seal), ("open", open)] {
                let mut r = row(op, None);
                r.iterations = m.timing.iterations;
                r.seconds = m.timing.seconds;
                r.msgs_s = m.timing.best_per_s;
                r.mb_s = r.msgs_s * size as f64 / MB;
                r.bound_mb_s = r.bound_msgs_s * size as f64 / MB;
                r.of_bound = r.msgs_s / r.bound_msgs_s;
                r.peak_rss_kib = m.peak_rss_kib;
                r.rss_before_kib = m.rss_before_kib;
                rows.push(r);
            }
        }
    }
    let refuses_over_limit = refuses_over_limit(alice, bob)?;
    let ran_asym = sizes
        .iter()
        .filter(|&&s| s <= DEFAULT_ASYMMETRIC_LIMIT && (!opts.quick || s <= QUICK_ASYMMETRIC_MAX))
        .count();
    let check = AsymmetricCheck {
        all_correct: refuses_over_limit && checked.len() == ran_asym,
        sizes_checked: checked,
        limit: DEFAULT_ASYMMETRIC_LIMIT,
        refuses_over_limit,
    };
    Ok((rows, check))
}

struct Measured {
    timing: Timing,
    rss_before_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
}

/// Seals and opens in memory, checking the first round trip byte for byte.
fn in_memory_round_trip(
    opts: &BenchOptions,
    alice: &Arc<PrivateKey>,
    bob: &Arc<PrivateKey>,
    mode: Mode,
    size: u64,
) -> Result<(Measured, Measured), BenchError> {
    let mut input = vec![0u8; size as usize];
    Generated::new(size).read_exact(&mut input)?;
    let seal_opts = SealOptions::mode(mode);
    let recipient = bob.public().clone();
    let sender = alice.public().clone();
    let mut sealed = Vec::new();
    let timing = repeat(opts.min_time(), |_| {
        sealed.clear();
        envelope::seal(
            alice.as_ref(),
            &recipient,
            &seal_opts,
            &input[..],
            &mut sealed,
        )?;
        Ok(())
    })?;
    let seal = Measured {
        timing,
        peak_rss_kib: None,
        rss_before_kib: None,
    };
    let identity: Arc<dyn Identity> = bob.clone();
    let open_opts = OpenOptions::default();
    let mut plain = Vec::with_capacity(size as usize);
    let timing = repeat(opts.min_time(), |i| {
        plain.clear();
        envelope::open(
            identity.clone(),
            &sender,
            &open_opts,
            &sealed[..],
            &mut plain,
        )?;
        if i == 0 && plain != input {
            return Err(BenchError::Wrong(format!(
                "{} {} did not round-trip",
                mode_name(mode),
                human_size(size)
            )));
        }
        Ok(())
    })?;
    let open = Measured {
        timing,
        peak_rss_kib: None,
        rss_before_kib: None,
    };
    Ok((seal, open))
}

/// Seals a generated `size`-byte input into a sink (timed), seals it again into a temporary
/// file, then opens that file into a sink (timed): memory stays constant whatever the size.
fn streamed_round_trip(
    opts: &BenchOptions,
    alice: &Arc<PrivateKey>,
    bob: &Arc<PrivateKey>,
    mode: Mode,
    size: u64,
) -> Result<(Measured, Measured), BenchError> {
    let seal_opts = SealOptions::mode(mode);
    let recipient = bob.public().clone();
    let rss_before_kib = reset_peak_rss();
    let timing = repeat(opts.min_time(), |_| {
        let sealed = envelope::seal(
            alice.as_ref(),
            &recipient,
            &seal_opts,
            Generated::new(size),
            io::sink(),
        )?;
        check_len(sealed.plaintext_len, size)
    })?;
    let seal = Measured {
        timing,
        peak_rss_kib: peak_rss_kib(),
        rss_before_kib,
    };
    let file = tempfile::tempfile()?;
    let mut writer = io::BufWriter::new(file);
    envelope::seal(
        alice.as_ref(),
        &recipient,
        &seal_opts,
        Generated::new(size),
        &mut writer,
    )?;
    let mut file = writer.into_inner().map_err(|e| e.into_error())?;
    let identity: Arc<dyn Identity> = bob.clone();
    let sender = alice.public().clone();
    let rss_before_kib = reset_peak_rss();
    let timing = repeat(opts.min_time(), |_| {
        io::Seek::rewind(&mut file)?;
        // The signature covers SHA-256 of the plaintext, so a message that opens is the one
        // sealed: comparing the length is enough.
        let opened = envelope::open(
            identity.clone(),
            &sender,
            &OpenOptions::default(),
            io::BufReader::with_capacity(256 * 1024, &file),
            io::sink(),
        )?;
        check_len(opened.plaintext_len, size)
    })?;
    let open = Measured {
        timing,
        peak_rss_kib: peak_rss_kib(),
        rss_before_kib,
    };
    Ok((seal, open))
}

fn check_len(got: u64, want: u64) -> Result<(), BenchError> {
    if got == want {
        Ok(())
    } else {
        Err(BenchError::Wrong(format!("{got} bytes came out of {want}")))
    }
}

/// The asymmetric mode refuses one byte over its limit.
fn refuses_over_limit(alice: &PrivateKey, bob: &PrivateKey) -> Result<bool, BenchError> {
    let result = envelope::seal(
        alice,
        bob.public(),
        &SealOptions::mode(Mode::Asymmetric),
        Generated::new(DEFAULT_ASYMMETRIC_LIMIT + 1),
        io::sink(),
    );
    Ok(matches!(
        result,
        Err(SealError::TooLargeForAsymmetric { .. })
    ))
}

fn ratios(rows: &[EnvelopeRow]) -> Vec<Ratio> {
    let find = |mode, op, size| {
        rows.iter()
            .find(|r| r.mode == mode && r.op == op && r.size == size && r.not_run.is_none())
            .map(|r| r.msgs_s)
    };
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size).collect();
    sizes.dedup();
    sizes
        .into_iter()
        .filter_map(|size| {
            let seal = find("hybrid", "seal", size)? / find("asymmetric", "seal", size)?;
            let open = find("hybrid", "open", size)? / find("asymmetric", "open", size)?;
            Some(Ratio { size, seal, open })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server

/// Runs a server and its clients in this process.
fn measure_server(opts: &BenchOptions) -> Result<ServerReport, BenchError> {
    // The server logs every message at info level: in a benchmark that is noise on stderr and
    // time on the clock, so only warnings and errors are shown while it runs.
    let quiet = Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(io::stderr)
            .finish(),
    );
    let on_start = quiet.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            // Lives as long as the thread: the guard is never dropped.
            std::mem::forget(tracing::dispatcher::set_default(&on_start));
        })
        .build()?;
    let _quiet = tracing::dispatcher::set_default(&quiet);
    runtime.block_on(server_section(opts))
}

async fn server_section(opts: &BenchOptions) -> Result<ServerReport, BenchError> {
    let server_key = PrivateKey::generate(opts.bits)?;
    let server_public = server_key.public().clone();
    let client_key = Arc::new(PrivateKey::generate(opts.bits)?);
    let mut clients = TrustList::new();
    clients.add("bench", client_key.public().clone())?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path().join("mailbox.db"))?);
    let config = ServerConfig {
        max_connections: 4 * CONNECTIONS[CONNECTIONS.len() - 1],
        ..ServerConfig::default()
    };
    let server = Arc::new(Server::new(server_key, clients, store.clone(), config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    let identity: Arc<dyn Identity> = client_key.clone();
    let connect = || {
        Client::connect(
            &addr,
            identity.clone(),
            server_public.clone(),
            ClientConfig::default(),
        )
    };

    let mut rates = Vec::new();
    for &connections in CONNECTIONS {
        progress(&format!("  {connections} connection(s)"));
        let per = opts.server_messages().div_ceil(connections * SERVER_ROUNDS);
        let key = client_key.clone();
        let to = server_public.clone();
        let batches = tokio::task::spawn_blocking(move || {
            presealed(&key, &to, connections * SERVER_ROUNDS, per)
        })
        .await
        .map_err(|_| crypt())??;
        let key = client_key.clone();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let min = opts.bound_refresh_time() * 2;
        let bound = tokio::task::spawn_blocking(move || decrypt_rate(&key, threads, min))
            .await
            .map_err(|_| crypt())??;
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(connect().await?);
        }
        let (mut delivered, mut seconds, mut msgs_s) = (0, 0.0, 0f64);
        let mut batches = batches.into_iter();
        for _ in 0..SERVER_ROUNDS {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for (mut client, batch) in conns.drain(..).zip(batches.by_ref()) {
                tasks.spawn(async move {
                    let sent = client.send_sealed_many(&batch).await.map(|d| d.len());
                    sent.map(|n| (client, n))
                });
            }
            let mut round = 0;
            while let Some(done) = tasks.join_next().await {
                let (client, n) = done.map_err(|_| crypt())??;
                conns.push(client);
                round += n;
            }
            let elapsed = started.elapsed().as_secs_f64();
            delivered += round;
            seconds += elapsed;
            msgs_s = msgs_s.max(round as f64 / elapsed);
        }
        rates.push(ServerRate {
            connections,
            messages: delivered,
            seconds,
            msgs_s,
            bound_msgs_s: bound,
            of_bound: msgs_s / bound,
        });
    }

    progress("  latency of complete sends");
    let mut samples = Vec::with_capacity(opts.latency_samples());
    let body = vec![b'x'; SERVER_MESSAGE as usize];
    for _ in 0..opts.latency_samples() {
        let t = Instant::now();
        let mut client = connect().await?;
        client
            .send(io::Cursor::new(body.clone()), SealOptions::default())
            .await?;
        drop(client);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let latency = Latency {
        samples: samples.len(),
        p50_ms: percentile(&samples, 0.50),
        p99_ms: percentile(&samples, 0.99),
        mean_ms: samples.iter().sum::<f64>() / samples.len() as f64,
    };

    let big_send = if opts.quick {
        None
    } else {
        progress("  one 1 GiB message");
        let mut client = connect().await?;
        let rss_before_kib = reset_peak_rss().unwrap_or(0);
        let t = Instant::now();
        let delivery = client
            .send(Generated::new(GIB), SealOptions::default())
            .await?;
        let seconds = t.elapsed().as_secs_f64();
        check_len(delivery.plaintext_len, GIB)?;
        Some(BigSend {
            bytes: GIB,
            seconds,
            mb_s: GIB as f64 / MB / seconds,
            peak_rss_kib: peak_rss_kib().unwrap_or(0),
            rss_before_kib,
        })
    };

    let _ = stop.send(());
    running.await.map_err(|_| crypt())??;
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    drop(dir);
    Ok(ServerReport {
        message_size: SERVER_MESSAGE,
        rates,
        latency,
        big_send,
        process_peak_rss_kib: process_peak_rss_kib().unwrap_or(0),
        note: "server and clients run in this one process: every RSS figure counts both".into(),
    })
}

/// One connection's pre-sealed messages: the sealed bytes and what checks their acks.
type Batch = Vec<(Vec<u8>, Sealed)>;

/// `connections` batches of `per` 1 KiB hybrid messages sealed ahead of time, on every core.
fn presealed(
    key: &Arc<PrivateKey>,
    to: &PublicKey,
    connections: usize,
    per: usize,
) -> Result<Vec<Batch>, BenchError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = connections * per;
    let body = vec![b'm'; SERVER_MESSAGE as usize];
    let seal_some = |n: usize| -> Result<Batch, BenchError> {
        (0..n)
            .map(|_| {
                let mut out = Vec::with_capacity(SERVER_MESSAGE as usize + 1024);
                let sealed = envelope::seal(
                    key.as_ref(),
                    to,
                    &SealOptions::default(),
                    &body[..],
                    &mut out,
                )?;
                Ok((out, sealed))
            })
            .collect()
    };
    let parts: Vec<Result<Vec<_>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = total / threads + usize::from(t < total % threads);
                s.spawn(move || seal_some(n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::Crypto)))
            .collect()
    });
    let mut all = Vec::with_capacity(total);
    for p in parts {
        all.extend(p?);
    }
    let mut batches = Vec::with_capacity(connections);
    let mut all = all.into_iter();
    for _ in 0..connections {
        batches.push(all.by_ref().take(per).collect());
    }
    Ok(batches)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// Goals, memory, machine

fn goals(
    b: &Bounds,
    rows: &[EnvelopeRow],
    asym: &AsymmetricCheck,
    server: &ServerReport,
) -> Vec<Goal> {
    let mut goals = Vec::new();
    let best = server
        .rates
        .iter()
        .max_by(|x, y| x.msgs_s.total_cmp(&y.msgs_s));
    goals.push(Goal {
        goal: format!(
            "server message rate >= {:.0}% of the all-core RSA decrypt bound",
            GOAL_SHARE * 100.0
        ),
        met: best.map(|r| r.of_bound >= GOAL_SHARE),
        detail: best.map_or("not run".into(), |r| {
            format!(
                "best {:.0} msg/s at {} connections = {:.0}% of {:.0}/s",
                r.msgs_s,
                r.connections,
                r.of_bound * 100.0,
                b.rsa_decrypt_all
            )
        }),
    });
    let big: Vec<&EnvelopeRow> = rows
        .iter()
        .filter(|r| r.mode == "hybrid" && r.size >= MIB && r.not_run.is_none())
        .collect();
    let worst = big
        .iter()
        .map(|r| (r, r.mb_s / r.seal_pass_mb_s))
        .min_by(|x, y| x.1.total_cmp(&y.1));
    goals.push(Goal {
        goal: format!(
            "hybrid seal/open of >= 1 MiB at >= {:.0}% of the single-stream sealing bound",
            GOAL_SHARE * 100.0
        ),
        met: worst.map(|(_, share)| share >= GOAL_SHARE),
        detail: worst.map_or("not run".into(), |(r, share)| {
            format!(
                "furthest: {} {} at {:.0} MB/s = {:.0}% of {:.0} MB/s measured beside it",
                r.op,
                human_size(r.size),
                r.mb_s,
                share * 100.0,
                r.seal_pass_mb_s
            )
        }),
    });
    let mut rss: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r.size >= GIB)
        .filter_map(|r| Some((format!("{} {}", r.op, r.mode), r.peak_rss_kib?)))
        .collect();
    if let Some(s) = &server.big_send {
        rss.push(("send+receive".into(), s.peak_rss_kib));
    }
    let measured = rss.len() == 3 && rss.iter().all(|(_, k)| *k > 0);
    goals.push(Goal {
        goal: "1 GiB sealed, opened, sent and received in < 64 MiB peak RSS".into(),
        met: measured.then(|| rss.iter().all(|(_, k)| *k < RSS_GOAL_KIB)),
        detail: if rss.is_empty() {
            "not run (no 1 GiB in --quick)".into()
        } else {
            rss.iter()
                .map(|(what, k)| format!("{what} {:.1} MiB", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        },
    });
    goals.push(Goal {
        goal: "asymmetric mode correct at every size up to its limit".into(),
        met: Some(asym.all_correct),
        detail: format!(
            "round-tripped at {}; limit + 1 byte refused: {}",
            asym.sizes_checked
                .iter()
                .map(|s| human_size(*s))
                .collect::<Vec<_>>()
                .join(", "),
            asym.refuses_over_limit
        ),
    });
    goals
}

/// Resets the kernel's peak-RSS mark of this process (`/proc/self/clear_refs`, value 5), so the
/// next [`peak_rss_kib`] covers only what ran in between. Returns the RSS at that moment (KiB):
/// the floor of the peak that follows, resident before the phase began.
fn reset_peak_rss() -> Option<u64> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:")
}

/// Peak RSS since the last reset (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    process_peak_rss_kib()
}

fn process_peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Input

/// `len` bytes of a fixed pseudo-random pattern, produced as they are read: a message of any
/// size without holding it in memory.
pub struct Generated {
    left: u64,
    pattern: Vec<u8>,
    pos: usize,
}

impl Generated {
    pub fn new(len: u64) -> Self {
        // xorshift64: incompressible enough, and the same every run.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let pattern = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Generated {
            left: len,
            pattern,
            pos: 0,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.pattern.len() - self.pos)
            .min(buf.len())
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.pattern[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.pattern.len();
        self.left -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Output

/// `1 KiB`, `100 B`, `16 MiB`.
pub fn human_size(n: u64) -> String {
    match n {
        n if n >= GIB && n.is_multiple_of(GIB) => format!("{} GiB", n / GIB),
        n if n >= MIB && n.is_multiple_of(MIB) => format!("{} MiB", n / MIB),
        n if n >= KIB && n.is_multiple_of(KIB) => format!("{} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    let b = &r.bounds;
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "letterlock bench{}: {} ({} threads), RSA-{}, {} build, {:.0} s",
        if m.quick { " --quick" } else { "" },
        m.cpu,
        m.threads,
        m.bits,
        if m.release_build { "release" } else { "debug" },
        m.total_seconds
    );
    let _ = writeln!(
        s,
        "MB = 10^6 bytes. Every figure below was measured in this run."
    );
    let _ = writeln!(s, "\n1. Bounds (aws-lc-rs on this machine)");
    let _ = writeln!(s, "  {:<34} {:>12} {:>12}", "", "1 core", "all cores");
    let _ = writeln!(
        s,
        "  {:<34} {:>10.0}/s {:>10.0}/s",
        format!("RSA-{} OAEP decrypt", m.bits),
        b.rsa_decrypt_1core,
        b.rsa_decrypt_all
    );
    let _ = writeln!(
        s,
        "  {:<34} {:>10.0}/s {:>10.0}/s",
        format!("RSA-{} PSS sign", m.bits),
        b.rsa_sign_1core,
        b.rsa_sign_all
    );
    let _ = writeln!(
        s,
        "  {:<34} {:>10.0}/s",
        format!("RSA-{} OAEP encrypt", m.bits),
        b.rsa_encrypt_1core
    );
    let _ = writeln!(
        s,
        "  {:<34} {:>10.0}/s",
        format!("RSA-{} PSS verify", m.bits),
        b.rsa_verify_1core
    );
    for (what, v) in [
        ("AES-256-GCM, 64 KiB buffers", b.aes_gcm_mb_s),
        ("SHA-256, 64 KiB buffers", b.sha256_mb_s),
        ("SHA-256 + AES-256-GCM in one pass", b.seal_pass_mb_s),
    ] {
        let _ = writeln!(s, "  {what:<34} {v:>7.0} MB/s");
    }
    let _ = writeln!(
        s,
        "\n2. Seal and open, one core (bound = the message's RSA operations + its bytes, at the \
         bounds measured again right before each size)"
    );
    let _ = writeln!(
        s,
        "  {:<10} {:<5} {:>7} {:>10} {:>10} {:>9} {:>9} {:>6} {:>9}",
        "mode", "op", "size", "msg/s", "bound", "MB/s", "bound", "of", "peak RSS"
    );
    for row in &r.envelope {
        if let Some(reason) = &row.not_run {
            let _ = writeln!(
                s,
                "  {:<10} {:<5} {:>7}  {}",
                row.mode,
                row.op,
                human_size(row.size),
                reason
            );
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<10} {:<5} {:>7} {:>10.1} {:>10.1} {:>9.1} {:>9.1} {:>6} {:>9}",
            row.mode,
            row.op,
            human_size(row.size),
            row.msgs_s,
            row.bound_msgs_s,
            row.mb_s,
            row.bound_mb_s,
            pct(row.of_bound),
            row.peak_rss_kib
                .map_or(String::new(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
    }
    let _ = writeln!(s, "\n  hybrid / asymmetric speed");
    for ratio in &r.ratios {
        let _ = writeln!(
            s,
            "  {:>7}  seal {:>7.1}x  open {:>7.1}x",
            human_size(ratio.size),
            ratio.seal,
            ratio.open
        );
    }
    let srv = &r.server;
    let _ = writeln!(
        s,
        "\n3. Server: loopback TCP, SQLite store, {} hybrid messages sealed ahead; bound = \
         all-core RSA decrypt, measured right before each run",
        human_size(srv.message_size)
    );
    let _ = writeln!(
        s,
        "  {:>11} {:>9} {:>10} {:>12} {:>6}",
        "connections", "messages", "msg/s", "RSA bound", "of"
    );
    for rate in &srv.rates {
        let _ = writeln!(
            s,
            "  {:>11} {:>9} {:>10.0} {:>10.0}/s {:>6}",
            rate.connections,
            rate.messages,
            rate.msgs_s,
            rate.bound_msgs_s,
            pct(rate.of_bound)
        );
    }
    let _ = writeln!(
        s,
        "  complete send (connect, handshake, seal, send, proven ack), {} samples: p50 {:.2} ms, \
         p99 {:.2} ms",
        srv.latency.samples, srv.latency.p50_ms, srv.latency.p99_ms
    );
    match &srv.big_send {
        Some(big) => {
            let _ = writeln!(
                s,
                "  one {} message client -> server: {:.1} s, {:.0} MB/s, peak RSS {:.1} MiB \
                 ({:.1} MiB resident before it began)",
                human_size(big.bytes),
                big.seconds,
                big.mb_s,
                big.peak_rss_kib as f64 / 1024.0,
                big.rss_before_kib as f64 / 1024.0
            );
        }
        None => {
            let _ = writeln!(s, "  one 1 GiB message client -> server: not run (--quick)");
        }
    }
    let _ = writeln!(
        s,
        "  process peak RSS {:.1} MiB ({})",
        srv.process_peak_rss_kib as f64 / 1024.0,
        srv.note
    );
    let _ = writeln!(s, "\nGoals");
    for g in &r.goals {
        let verdict = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(s, "  [{verdict}] {}: {}", g.goal, g.detail);
    }
    s
}

/// Draws MB/s against message size, both modes, with the bounds, as an SVG.
pub fn plot(r: &Report, path: &Path) -> Result<(), BenchError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| BenchError::Plot(e.to_string());
    let measured: Vec<&EnvelopeRow> = r.envelope.iter().filter(|x| x.not_run.is_none()).collect();
    let (lo_x, hi_x) = measured.iter().fold((f64::MAX, 0f64), |(lo, hi), x| {
        (lo.min(x.size as f64), hi.max(x.size as f64))
    });
    let ys = measured
        .iter()
        .flat_map(|x| [x.mb_s, x.bound_mb_s])
        .chain([r.bounds.seal_pass_mb_s, r.bounds.aes_gcm_mb_s]);
    let (lo_y, hi_y) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if measured.is_empty() || lo_y <= 0.0 {
        return Err(BenchError::Plot("nothing measured to draw".into()));
    }
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "letterlock seal/open throughput, RSA-{}, {}",
                r.machine.bits, r.machine.cpu
            ),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (lo_x / 2.0..hi_x * 2.0).log_scale(),
            (lo_y / 2.0..hi_y * 2.0).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes)")
        .y_desc("MB/s (one core)")
        .x_label_formatter(&|x| human_size(*x as u64))
        .draw()
        .map_err(|e| err(&e))?;
    let series = [
        ("hybrid", "seal", RED),
        ("hybrid", "open", BLUE),
        ("asymmetric", "seal", MAGENTA),
        ("asymmetric", "open", CYAN),
    ];
    for (mode, op, color) in series {
        let points: Vec<(f64, f64)> = measured
            .iter()
            .filter(|x| x.mode == mode && x.op == op)
            .map(|x| (x.size as f64, x.mb_s))
            .collect();
        let bound: Vec<(f64, f64)> = measured
            .iter()
            .filter(|x| x.mode == mode && x.op == op)
            .map(|x| (x.size as f64, x.bound_mb_s))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{mode} {op}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(PointSeries::of_element(points, 4, color, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(bound, color.mix(0.35).stroke_width(1)))
            .map_err(|e| err(&e))?
            .label(format!("{mode} {op} bound"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.35)));
    }
    for (what, v, color) in [
        (
            "single-stream sealing bound",
            r.bounds.seal_pass_mb_s,
            BLACK,
        ),
        (
            "AES-256-GCM bound",
            r.bounds.aes_gcm_mb_s,
            RGBColor(120, 120, 120),
        ),
    ] {
        chart
            .draw_series(LineSeries::new(
                [(lo_x / 2.0, v), (hi_x * 2.0, v)],
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{what} ({v:.0} MB/s)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Writes the report as JSON to `out`.
pub fn write_json(r: &Report, mut out: impl Write) -> Result<(), BenchError> {
    serde_json::to_writer_pretty(&mut out, r).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
