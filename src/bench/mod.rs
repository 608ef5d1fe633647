//! `letterlock bench`: how fast letterlock is on this machine, each figure beside the bound the
//! machine allows, all measured in the same run (these machines are noisy: ratios measured side
//! by side hold where absolute times do not).
//!
//! Sections:
//! 1. **Bounds**, with aws-lc-rs directly: RSA private operations (OAEP decrypt, PSS sign) on one
//!    core and on all cores, RSA public operations, AES-256-GCM and SHA-256 on 64 KiB buffers,
//!    and one pass doing both (the single-stream sealing bound).
//! 2. **Envelope**: [`letterlock::envelope::seal`] and [`letterlock::envelope::open`] in both modes across sizes. The
//!    bound beside each row is built from section 1: the RSA operations the message needs plus
//!    its bytes through the single-stream bound. The asymmetric mode is run only up to its limit.
//! 3. **Server**: a real [`letterlock::server::Server`] on loopback TCP with the durable [`letterlock::store::SqliteStore`] in a
//!    temporary folder, driven by [`letterlock::client::Client`]s in the same process.
//! 4. **Server on version 2**: the same on TLS 1.3: full handshakes per second (one client, and
//!    many at once) beside the all-core RSA sign bound, and the 1 KiB message rate at 16
//!    connections beside the all-core RSA decrypt bound. Resumed handshakes are not measured:
//!    letterlock does not resume TLS sessions (the report says so).
//! 5. **One-shot commands**: the binary run once per command, as a user runs it: `letterlock
//!    seal` of 100 bytes per process, and `letterlock client send_msg` end to end on loopback
//!    against a `letterlock server` child; p50 and p99 beside the 10 ms goal.
//! 6. **Comparison** (`--compare` only): gpg, `openssl cms`, rage and age when installed, on the
//!    same files in the same run as letterlock's binary, each command shown to rerun it, and
//!    `cp` (no crypto: the temporary folder's own rate in the same rounds).
//! 7. **Mailbox stores**: committed 1 KiB inserts per second of the SQLite and the PostgreSQL
//!    store alone (1 and 64 writers), and the server's message rate over each beside the
//!    all-core RSA bound; PostgreSQL from `--store-url` or a throwaway cluster (`store`).
//!
//! Invariants: every figure printed is a measurement of this run, or "not run" with the reason;
//! nothing is extrapolated. Speed goals are reported, never asserted.
//!
//! # Layout
//! - this module: the options, the error, the constants every section shares, and [`run`];
//! - `bounds`: what this machine allows: timed repetition, the multi-threaded rate, aws-lc-rs
//!   directly, and the bound of one message built from them;
//! - `measurements`: seal and open across sizes and modes, the generated input, peak RSS;
//! - `server`: a real server and its clients in this process;
//! - `child`: a program run and measured (time, peak RSS) under a small wrapper;
//! - `folder`: the temporary folder of the sections that run programs, with the run's keys;
//! - `stopping`: the run's temporary folder, and what a run stopped by a signal undoes;
//! - `oneshot`: section 5; `compare`: section 6; `store`: section 7;
//! - `report`: the [`Report`], its goals, and the table and JSON for people and programs;
//! - `plot`: the SVG.

mod bounds;
mod child;
mod compare;
mod folder;
mod measurements;
mod oneshot;
mod plot;
mod report;
mod server;
mod stopping;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use letterlock::client::ClientError;
use letterlock::envelope::{OpenError, SealError};
use letterlock::keys::{KeyError, PrivateKey};
use letterlock::store::StoreError;

pub use child::{MEASURE_FLAG, measure_child};
pub use compare::{CompareReport, FileFigures, OneShotFigures, ToolRow, check_free_space};
pub use measurements::Generated;
pub use oneshot::{OneShot, OneShotReport};
pub use plot::{check_plot_path, plot};
pub use report::{
    AsymmetricCheck, BigSend, Bounds, EnvelopeRow, Goal, Latency, Machine, Ratio, RelayRate,
    Report, ServerRate, ServerReport, TlsReport, human_size, table, write_json,
};
pub use stopping::undo_run;
pub use store::{ServerOverStore, StoreRate, StoreReport, check_store_url};

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
/// Concurrent connections of the version 2 (TLS) message-rate run.
const TLS_CONNECTIONS: usize = 16;
/// Concurrent clients of the handshake-rate run.
const HANDSHAKE_CLIENTS: usize = 16;
/// Rounds of each server rate run; the best is reported, as with [`BATCHES`].
const SERVER_ROUNDS: usize = 3;
/// Plaintext of each server message.
const SERVER_MESSAGE: u64 = KIB;
/// The peak-RSS goal for 1 GiB messages.
const RSS_GOAL_KIB: u64 = 64 * 1024;
/// The share of a bound the goals ask for (issue 13: the server's rate at 4-64 connections,
/// and 1 GiB sealed and opened in memory).
const GOAL_SHARE: f64 = 0.9;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The reduced set: sizes up to 1 MiB, fewer and shorter runs of each measurement.
    pub quick: bool,
    /// RSA key size of every key the bench generates.
    pub bits: usize,
    /// Also run the other tools installed here on the same files (section 6).
    pub compare: bool,
    /// The PostgreSQL server of section 7 (`postgres://...`); `None`: a throwaway cluster.
    pub store_url: Option<String>,
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

    /// Full TLS handshakes timed, per clients-at-once setting.
    fn handshakes(&self) -> usize {
        if self.quick { 64 } else { 800 }
    }

    /// Complete sends timed for the latency percentiles.
    fn latency_samples(&self) -> usize {
        if self.quick { 10 } else { 200 }
    }

    /// Processes per one-shot command. At most 60: every `send_msg` is a new connection from
    /// 127.0.0.1, and the server admits a burst of 64 from one source (then 20 a second).
    fn oneshot_samples(&self) -> usize {
        if self.quick { 5 } else { 50 }
    }

    /// Plaintext of the file-to-file comparison.
    fn compare_file_size(&self) -> u64 {
        if self.quick { 4 * MIB } else { GIB }
    }

    /// Runs of each file-to-file command (the median is reported).
    fn compare_runs(&self) -> usize {
        if self.quick { 1 } else { 3 }
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
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] letterlock::tls::TlsError),
    #[error("an aws-lc primitive failed")]
    Crypto,
    #[error("wrong result: {0}")]
    Wrong(String),
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// The PostgreSQL server `--store-url` names cannot be used: why, with the driver's cause.
    #[error("--store-url: {0}")]
    StoreUrl(String),
    /// The command line asked for something the bench cannot do.
    #[error("{0}")]
    Usage(String),
}

/// Runs every section; progress goes to stderr.
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    let started = Instant::now();
    // Every temporary folder of the run is made in this one ([`stopping`]).
    let _run_folder = stopping::RunFolder::new()?;
    progress(&format!("generating two {}-bit RSA keys", opts.bits));
    let alice = Arc::new(PrivateKey::generate(opts.bits)?);
    let bob = Arc::new(PrivateKey::generate(opts.bits)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    progress("bounds");
    let bounds = bounds::measure_bounds(opts.min_time(), &alice, Some(threads))?;
    progress("seal and open");
    let (envelope, asymmetric_correct) = measurements::measure_envelope(opts, &alice, &bob)?;
    let ratios = measurements::ratios(&envelope);
    progress("server");
    let server = server::measure_server(opts)?;
    let folder = folder::Folder::new(&alice, &bob)?;
    progress("one-shot commands");
    let oneshot = oneshot::measure_oneshot(opts, &folder)?;
    let compare = if opts.compare {
        progress("comparison with other tools");
        Some(compare::measure_compare(opts, &folder)?)
    } else {
        None
    };
    drop(folder);
    progress("mailbox stores");
    let store = store::measure_store(opts, &alice, &bob)?;
    let machine = Machine {
        cpu: cpu_name(),
        threads,
        bits: opts.bits,
        quick: opts.quick,
        release_build: !cfg!(debug_assertions),
        entropy: env!("LETTERLOCK_ENTROPY").into(),
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let goals = report::goals(
        &envelope,
        &asymmetric_correct,
        &server,
        &oneshot,
        compare.as_ref(),
    );
    let steadiness = report::Steadiness::of_run(&bounds, &server, &store);
    Ok(Report {
        steadiness,
        machine,
        bounds,
        envelope,
        ratios,
        asymmetric_correct,
        server,
        oneshot,
        compare,
        store,
        goals,
    })
}

fn progress(what: &str) {
    eprintln!("letterlock bench: {what}…");
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

/// Why a figure is shown over its bound: measured twice (the second time longer, and the better
/// of the two kept), the bound stayed under the figure, so the machine was busier while the
/// bound ran than while the figure did. Both are shown as measured.
fn over_bound_note() -> String {
    "over its bound, measured twice: the machine was busier while the bound ran".into()
}

fn crypt() -> BenchError {
    BenchError::Crypto
}
