//! `letterlock bench --compare`: the tools a user would otherwise pick (gpg, `openssl cms`, rage
//! or age), when installed, on the same files in the same run as letterlock's own binary. File to
//! file seal and open, and a 100-byte one-shot seal per process; MB/s, per-process latency and
//! each child's peak RSS ([`super::child`]). Every command is kept as the shell line that reruns it
//! in the bench's temporary folder. A tool that is not installed is reported as such; nothing is
//! estimated for it. A `cp` row, no crypto, shows the temporary folder's own rate in the same
//! rounds.
//!
//! Like for like, as far as the tools allow: every tool signs and encrypts (age and rage only
//! encrypt: they have no signatures), gpg and OpenSSL use RSA keys of the run's size (OpenSSL the
//! very keys letterlock uses, in self-signed certificates), no compression, AES-256.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use super::child::{run_measured, version_of};
use super::folder::{Folder, cmd, letterlock, shown};
use super::oneshot::{ONESHOT_SIZE, percentile, sample};
use super::{BenchError, BenchOptions, MB, MIB, human_size, progress};

/// One tool's row.
#[derive(Clone, Debug, Serialize)]
pub struct ToolRow {
    pub tool: String,
    /// First line of its `--version`, when installed.
    pub version: Option<String>,
    /// What its seal does: sign + encrypt, key type, cipher.
    pub what: String,
    /// "ran", "not installed", or "failed: WHY".
    pub status: String,
    /// Commands run once before (key generation, certificates).
    pub setup: Vec<String>,
    /// File to file, as shell lines run in the bench's temporary folder.
    pub seal_commands: Vec<String>,
    pub open_commands: Vec<String>,
    pub file: Option<FileFigures>,
    /// The 100-byte seal, one process (or pipeline) each time.
    pub oneshot: Option<OneShotFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileFigures {
    /// Median of the runs, MB/s of plaintext.
    pub seal_mb_s: f64,
    pub open_mb_s: f64,
    /// Largest child peak RSS of any run (KiB).
    pub seal_peak_rss_kib: u64,
    pub open_peak_rss_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OneShotFigures {
    pub commands: Vec<String>,
    pub p50_ms: f64,
    /// Median CPU time (user + system) of its processes, as in the one-shot section.
    pub cpu_p50_ms: f64,
    pub ops_s: f64,
    pub peak_rss_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Plaintext of the file-to-file runs.
    pub file_size: u64,
    /// Runs of each file-to-file command; the median is reported.
    pub runs: usize,
    pub oneshot_size: u64,
    pub oneshot_samples: usize,
    pub tools: Vec<ToolRow>,
    pub note: String,
}

/// Names of the files of one tool: the input `IN`, `IN.EXT` sealed, `IN.EXT.out` opened, and
/// `IN.EXT.tmp` between the two steps of a two-step tool.
struct Names {
    input: String,
    sealed: String,
    opened: String,
    between: String,
}

impl Names {
    fn new(input: &str, ext: &str) -> Self {
        Names {
            input: input.to_owned(),
            sealed: format!("{input}.{ext}"),
            opened: format!("{input}.{ext}.out"),
            between: format!("{input}.{ext}.tmp"),
        }
    }
}

type Steps = Box<dyn Fn(&Names) -> Vec<Vec<OsString>>>;

/// A tool ready to run: installed, its keys made.
struct Tool {
    name: String,
    version: Option<String>,
    what: String,
    ext: &'static str,
    setup: Vec<String>,
    seal: Steps,
    open: Steps,
}

/// Files the comparison holds at once, each about the input's size: the input, a tool's sealed
/// file and its opened copy, and room for one more (gpg and `openssl cms` write through
/// temporary files of their own).
const FILES_AT_ONCE: u64 = 4;

/// Refuses a `--compare` run whose temporary folder ($TMPDIR, else /tmp) has less free space
/// than its files take: checked before the run, as it would otherwise fail after minutes, or
/// fill the disk it shares.
pub fn check_free_space(opts: &BenchOptions) -> Result<(), BenchError> {
    if !opts.compare {
        return Ok(());
    }
    let dir = std::env::temp_dir();
    let stat = nix::sys::statvfs::statvfs(&dir).map_err(|e| {
        BenchError::Usage(format!(
            "--compare: cannot see how much space the temporary folder {} (TMPDIR) has: {e}",
            dir.display()
        ))
    })?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    enough_space(&dir, free, FILES_AT_ONCE * opts.compare_file_size())
}

/// `Err` saying how much is needed, where, and how to give more, when `free` < `need`.
fn enough_space(dir: &Path, free: u64, need: u64) -> Result<(), BenchError> {
    if free >= need {
        return Ok(());
    }
    let mib = free as f64 / MIB as f64;
    Err(BenchError::Usage(format!(
        "--compare needs about {} free in the temporary folder {} (TMPDIR) and it has {mib:.0} \
         MiB: free some space there, or set TMPDIR to a folder with more",
        human_size(need),
        dir.display(),
    )))
}

/// The comparison section.
pub(super) fn measure_compare(
    opts: &BenchOptions,
    folder: &Folder,
) -> Result<CompareReport, BenchError> {
    let file_size = opts.compare_file_size();
    let runs = opts.compare_runs();
    let samples = opts.oneshot_samples();
    progress(&format!("  writing the {} input", human_size(file_size)));
    folder.input("data.bin", file_size)?;
    folder.input("small.txt", ONESHOT_SIZE)?;
    let candidates: Vec<(&str, Result<Option<Tool>, String>)> = vec![
        ("letterlock", Ok(Some(letterlock_tool(opts)?))),
        ("gpg", gpg_tool(opts, folder)),
        ("openssl cms", openssl_tool(folder)),
        ("rage", age_tool(folder, "rage", "rage-keygen")),
        ("age", age_tool(folder, "age", "age-keygen")),
        ("cp", Ok(copy_tool())),
    ];
    // The file-to-file runs go round the tools, one run of each in turn, rather than all of
    // one tool's runs and then the next tool's: this machine's speed drifts by several percent
    // over minutes, and taking turns lets the drift fall on every tool alike, so the ratios
    // between them (the goals) are measured, not the drift.
    let mut trials: Vec<Option<FileTrial>> = candidates
        .iter()
        .map(|(_, c)| matches!(c, Ok(Some(_))).then(FileTrial::default))
        .collect();
    progress(&format!(
        "  file to file, {runs} round(s), the tools taking turns"
    ));
    for run in 0..runs {
        for ((name, candidate), trial) in candidates.iter().zip(trials.iter_mut()) {
            let (Ok(Some(tool)), Some(trial)) = (candidate, trial) else {
                continue;
            };
            if trial.failed.is_some() {
                continue;
            }
            progress(&format!("    {name}, round {}", run + 1));
            if let Err(why) = trial.round(folder, tool, run) {
                if *name == "letterlock" {
                    // The product's own failure is the bench's failure, not a row.
                    return Err(BenchError::Wrong(why));
                }
                trial.failed = Some(why);
            }
        }
    }
    let mut rows = Vec::new();
    for ((name, candidate), trial) in candidates.into_iter().zip(trials) {
        let row = match (candidate, trial) {
            (Ok(Some(tool)), Some(trial)) => match trial.failed {
                Some(why) => failed_row(name, tool.version.clone(), format!("failed: {why}")),
                None => {
                    progress(&format!("  {name}: {samples} one-shot seals"));
                    let measured = tool_row(folder, &tool, trial, file_size, samples);
                    if name == "letterlock" {
                        measured.map_err(BenchError::Wrong)?
                    } else {
                        measured.unwrap_or_else(|why| {
                            failed_row(name, tool.version.clone(), format!("failed: {why}"))
                        })
                    }
                }
            },
            (Err(why), _) => failed_row(name, None, format!("failed: {why}")),
            _ => not_installed(name),
        };
        rows.push(row);
    }
    stop_gpg_agent(folder);
    Ok(CompareReport {
        file_size,
        runs,
        oneshot_size: ONESHOT_SIZE,
        oneshot_samples: samples,
        tools: rows,
        note: "files in the bench's temporary folder ($TMPDIR or /tmp, which needs about 4x \
               the file size free, checked before the run); time from start to exit of each process; CPU ms = user + \
               system time of the process and the children it waited for (not a daemon it \
               talks to, as gpg's gpg-agent); peak RSS = ru_maxrss of the child and its \
               children; the median of the runs, which go round the tools in turn; a two-step \
               tool's time is the sum of its steps"
            .into(),
    })
}

fn not_installed(name: &str) -> ToolRow {
    failed_row(name, None, "not installed".into())
}

fn failed_row(name: &str, version: Option<String>, status: String) -> ToolRow {
    ToolRow {
        tool: name.into(),
        version,
        what: String::new(),
        status,
        setup: Vec::new(),
        seal_commands: Vec::new(),
        open_commands: Vec::new(),
        file: None,
        oneshot: None,
    }
}

/// One tool's file-to-file runs so far.
#[derive(Default)]
struct FileTrial {
    seal_times: Vec<f64>,
    open_times: Vec<f64>,
    seal_rss: u64,
    open_rss: u64,
    /// Why a run failed: no more runs, and the row says so.
    failed: Option<String>,
}

impl FileTrial {
    /// One run of `tool`: seal the input file, open the result, check it came back.
    fn round(&mut self, folder: &Folder, tool: &Tool, run: usize) -> Result<(), String> {
        let err = |e: BenchError| e.to_string();
        let names = Names::new("data.bin", tool.ext);
        folder
            .remove(&[&names.sealed, &names.between, &names.opened])
            .map_err(err)?;
        let (t, _, rss) = run_steps(folder, &(tool.seal)(&names))?;
        self.seal_times.push(t);
        self.seal_rss = self.seal_rss.max(rss);
        folder.remove(&[&names.between]).map_err(err)?;
        let (t, _, rss) = run_steps(folder, &(tool.open)(&names))?;
        self.open_times.push(t);
        self.open_rss = self.open_rss.max(rss);
        // The first round trip is compared byte for byte, the others by length.
        same_file(folder.path(), &names.input, &names.opened, run == 0).map_err(err)?;
        folder
            .remove(&[&names.sealed, &names.between, &names.opened])
            .map_err(err)
    }
}

/// A tool's row: the median of its file-to-file runs, and its one-shot seal measured now.
fn tool_row(
    folder: &Folder,
    tool: &Tool,
    mut trial: FileTrial,
    file_size: u64,
    samples: usize,
) -> Result<ToolRow, String> {
    let err = |e: BenchError| e.to_string();
    let names = Names::new("data.bin", tool.ext);
    let seal_steps = (tool.seal)(&names);
    let open_steps = (tool.open)(&names);
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        percentile(t, 0.5)
    };
    let file = FileFigures {
        seal_mb_s: file_size as f64 / MB / median(&mut trial.seal_times),
        open_mb_s: file_size as f64 / MB / median(&mut trial.open_times),
        seal_peak_rss_kib: trial.seal_rss,
        open_peak_rss_kib: trial.open_rss,
    };

    let small = Names::new("small.txt", tool.ext);
    let small_steps = (tool.seal)(&small);
    let shot = match small_steps.as_slice() {
        [one] => sample(folder, one, samples, || {
            folder.remove(&[&small.sealed, &small.between])
        })
        .map_err(err)?,
        _ => {
            // Two steps: time both, one after the other, as one sample.
            let mut times = Vec::with_capacity(samples);
            let mut cpu = Vec::with_capacity(samples);
            let mut peak = 0;
            for _ in 0..samples {
                folder
                    .remove(&[&small.sealed, &small.between])
                    .map_err(err)?;
                let (t, c, rss) = run_steps(folder, &small_steps)?;
                times.push(t * 1000.0);
                cpu.push(c * 1000.0);
                peak = peak.max(rss);
            }
            let p50_ms = median(&mut times);
            super::oneshot::OneShot {
                command: String::new(),
                samples,
                p50_ms,
                p99_ms: percentile(&times, 0.99),
                cpu_p50_ms: median(&mut cpu),
                ops_s: 1000.0 / p50_ms,
                peak_rss_kib: peak,
            }
        }
    };
    folder
        .remove(&[&small.sealed, &small.between])
        .map_err(err)?;
    Ok(ToolRow {
        tool: tool.name.clone(),
        version: tool.version.clone(),
        what: tool.what.clone(),
        status: "ran".into(),
        setup: tool.setup.clone(),
        seal_commands: seal_steps.iter().map(|c| shown(c)).collect(),
        open_commands: open_steps.iter().map(|c| shown(c)).collect(),
        file: Some(file),
        oneshot: Some(OneShotFigures {
            commands: small_steps.iter().map(|c| shown(c)).collect(),
            p50_ms: shot.p50_ms,
            cpu_p50_ms: shot.cpu_p50_ms,
            ops_s: shot.ops_s,
            peak_rss_kib: shot.peak_rss_kib,
        }),
    })
}

/// Runs the steps one after another: total seconds, total CPU seconds and the largest peak RSS.
fn run_steps(folder: &Folder, steps: &[Vec<OsString>]) -> Result<(f64, f64, u64), String> {
    let (mut seconds, mut cpu_seconds) = (0.0, 0.0);
    let mut peak = 0;
    for step in steps {
        let run = run_measured(folder.path(), step)?;
        seconds += run.seconds;
        cpu_seconds += run.cpu_seconds;
        peak = peak.max(run.peak_rss_kib);
    }
    Ok((seconds, cpu_seconds, peak))
}

/// `b` has the bytes of `a` (all of them compared when `fully`, else the length).
fn same_file(dir: &Path, a: &str, b: &str, fully: bool) -> Result<(), BenchError> {
    let (pa, pb) = (dir.join(a), dir.join(b));
    let (la, lb) = (fs::metadata(&pa)?.len(), fs::metadata(&pb)?.len());
    if la != lb {
        return Err(BenchError::Wrong(format!(
            "{b} has {lb} bytes, {a} had {la}"
        )));
    }
    if !fully {
        return Ok(());
    }
    let (mut ra, mut rb) = (
        io::BufReader::new(fs::File::open(pa)?),
        io::BufReader::new(fs::File::open(pb)?),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(());
        }
        rb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Err(BenchError::Wrong(format!("{b} differs from {a}")));
        }
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn letterlock_tool(opts: &BenchOptions) -> Result<Tool, BenchError> {
    let me = letterlock()?;
    let me2 = me.clone();
    Ok(Tool {
        name: "letterlock".into(),
        version: Some(format!("letterlock {}", env!("CARGO_PKG_VERSION"))),
        what: format!(
            "sign + encrypt (hybrid: RSA-{} OAEP and PSS, AES-256-GCM), this binary",
            opts.bits
        ),
        ext: "ll",
        // The run's keys are made in-process; these make the same files.
        setup: ["alice", "bob"]
            .iter()
            .map(|who| {
                format!(
                    "letterlock keygen --name {who} --bits {} --keys . </dev/null",
                    opts.bits
                )
            })
            .collect(),
        seal: Box::new(move |n| {
            vec![cmd(
                me.clone(),
                &[
                    "seal",
                    "--from",
                    "alice_private.pem",
                    "--to",
                    "bob_public.pem",
                    "-o",
                    &n.sealed,
                    &n.input,
                ],
            )]
        }),
        open: Box::new(move |n| {
            vec![cmd(
                me2.clone(),
                &[
                    "open",
                    "--key",
                    "bob_private.pem",
                    "--from",
                    "alice_public.pem",
                    "-o",
                    &n.opened,
                    &n.sealed,
                ],
            )]
        }),
    })
}

/// Runs a setup command in the folder (not timed); says what failed.
fn setup_run(folder: &Folder, command: &[OsString]) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(folder.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", shown(command)))?;
    if out.status.success() {
        Ok(shown(command))
    } else {
        Err(format!(
            "`{}` failed: {}",
            shown(command),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// gpg 2 with a throwaway home in the folder and one generated RSA key pair (a signing primary
/// key and an encryption subkey of the run's size, no passphrase), signing and encrypting to
/// itself. Its agent is stopped at the end ([`stop_gpg_agent`]).
fn gpg_tool(opts: &BenchOptions, folder: &Folder) -> Result<Option<Tool>, String> {
    let Some(version) = version_of("gpg", "--version") else {
        return Ok(None);
    };
    let home = GPG_HOME.to_owned();
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
        .create(folder.path().join(GPG_HOME))
        .map_err(|e| e.to_string())?;
    let params = format!(
        "%no-protection\nKey-Type: RSA\nKey-Length: {b}\nKey-Usage: sign\nSubkey-Type: RSA\n\
         Subkey-Length: {b}\nSubkey-Usage: encrypt\nName-Real: letterlock bench\n\
         Name-Email: {GPG_USER}\nExpire-Date: 0\n%commit\n",
        b = opts.bits
    );
    fs::write(folder.path().join("gpg-key.params"), &params).map_err(|e| e.to_string())?;
    progress(&format!("  generating a gpg RSA-{} key pair", opts.bits));
    let keygen = setup_run(
        folder,
        &os(&[
            "gpg",
            "--homedir",
            &home,
            "--batch",
            "--gen-key",
            "gpg-key.params",
        ]),
    )?;
    let (h1, h2) = (home.clone(), home.clone());
    Ok(Some(Tool {
        name: "gpg".into(),
        version: Some(version),
        what: format!(
            "sign + encrypt (RSA-{}, AES-256, SHA-256, no compression)",
            opts.bits
        ),
        ext: "gpg",
        setup: vec![
            format!("mkdir -m 700 {home}"),
            format!("printf '{}' > gpg-key.params", printf_escaped(&params)),
            keygen,
        ],
        seal: Box::new(move |n| {
            vec![os(&[
                "gpg",
                "--homedir",
                &h1,
                "--batch",
                "--yes",
                "--trust-model",
                "always",
                "--compress-algo",
                "none",
                "--cipher-algo",
                "AES256",
                "--digest-algo",
                "SHA256",
                "--local-user",
                GPG_USER,
                "--recipient",
                GPG_USER,
                "--output",
                &n.sealed,
                "--sign",
                "--encrypt",
                &n.input,
            ])]
        }),
        open: Box::new(move |n| {
            vec![os(&[
                "gpg",
                "--homedir",
                &h2,
                "--batch",
                "--yes",
                "--output",
                &n.opened,
                "--decrypt",
                &n.sealed,
            ])]
        }),
    }))
}

const GPG_USER: &str = "bench@letterlock.invalid";

/// gpg's home, relative to the folder every command runs in, so that the commands shown can be
/// pasted into any empty folder (gpg makes it absolute itself, from the working directory with
/// links resolved, and names its agent's socket after that).
const GPG_HOME: &str = "gnupg";

/// `text` as the format of a shell `printf '…'`: `%` doubled, newlines as `\n` (the text has
/// no quote or backslash).
fn printf_escaped(text: &str) -> String {
    text.replace('%', "%%").replace('\n', "\\n")
}

/// Stops the gpg agent the bench's gpg runs started (it is a daemon, not a child to wait for).
fn stop_gpg_agent(folder: &Folder) {
    if folder.path().join(GPG_HOME).exists() {
        // The home as gpg was given it, so that the socket named after it is found.
        let _ = std::process::Command::new("gpgconf")
            .args(["--homedir", GPG_HOME, "--kill", "gpg-agent"])
            .current_dir(folder.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `openssl cms` with the run's own RSA keys in self-signed certificates made by the `openssl`
/// binary: sign (alice), then encrypt the signed data (to bob) with AES-256-GCM; open is
/// decrypt, then verify against alice's certificate.
fn openssl_tool(folder: &Folder) -> Result<Option<Tool>, String> {
    let Some(version) = version_of("openssl", "version") else {
        return Ok(None);
    };
    let mut setup = Vec::new();
    for who in ["alice", "bob"] {
        setup.push(setup_run(
            folder,
            &os(&[
                "openssl",
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{who}_private.pem"),
                "-subj",
                &format!("/CN=letterlock bench {who}"),
                "-days",
                "2",
                "-out",
                &format!("{who}.crt"),
            ]),
        )?);
    }
    Ok(Some(Tool {
        name: "openssl cms".into(),
        version: Some(version),
        what: "sign, then encrypt (the same RSA keys, PKCS#1 v1.5 signature, RSA key \
               transport, AES-256-GCM)"
            .into(),
        ext: "cms",
        setup,
        seal: Box::new(|n| {
            vec![
                os(&[
                    "openssl",
                    "cms",
                    "-sign",
                    "-binary",
                    "-nodetach",
                    "-md",
                    "sha256",
                    "-in",
                    &n.input,
                    "-signer",
                    "alice.crt",
                    "-inkey",
                    "alice_private.pem",
                    "-outform",
                    "DER",
                    "-out",
                    &n.between,
                ]),
                os(&[
                    "openssl",
                    "cms",
                    "-encrypt",
                    "-binary",
                    "-aes-256-gcm",
                    "-in",
                    &n.between,
                    "-outform",
                    "DER",
                    "-out",
                    &n.sealed,
                    "bob.crt",
                ]),
            ]
        }),
        open: Box::new(|n| {
            vec![
                os(&[
                    "openssl",
                    "cms",
                    "-decrypt",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    &n.sealed,
                    "-recip",
                    "bob.crt",
                    "-inkey",
                    "bob_private.pem",
                    "-out",
                    &n.between,
                ]),
                os(&[
                    "openssl",
                    "cms",
                    "-verify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    &n.between,
                    "-CAfile",
                    "alice.crt",
                    "-out",
                    &n.opened,
                ]),
            ]
        }),
    }))
}

/// `cp`, no crypto at all: the rate at which the temporary folder takes a copy of the file, in
/// the same rounds as the tools. Every tool here reads the whole file and writes as many bytes
/// into new pages, so this row shows what the folder costs in this run (on the project's
/// machine its speed moves with how fast the kernel hands out fresh memory) beside what the
/// crypto costs.
fn copy_tool() -> Option<Tool> {
    let version = version_of("cp", "--version")?;
    Some(Tool {
        name: "cp".into(),
        version: Some(version),
        what: "a plain copy, no crypto: the folder's own rate, reading the file and writing as \
               many bytes"
            .into(),
        ext: "cp",
        setup: Vec::new(),
        // A real copy even where the folder could share the file's blocks instead (btrfs, XFS),
        // which GNU cp 9 does by default (found by a review).
        seal: Box::new(|n| vec![os(&["cp", "--reflink=never", &n.input, &n.sealed])]),
        open: Box::new(|n| vec![os(&["cp", "--reflink=never", &n.sealed, &n.opened])]),
    })
}

/// rage or age (the same command line): an X25519 identity made by its keygen; encrypt only,
/// age has no signatures.
fn age_tool(folder: &Folder, program: &'static str, keygen: &str) -> Result<Option<Tool>, String> {
    let Some(version) = version_of(program, "--version") else {
        return Ok(None);
    };
    let identity = format!("{program}-identity.txt");
    let made = setup_run(folder, &os(&[keygen, "-o", &identity]))?;
    let text = fs::read_to_string(folder.path().join(&identity)).map_err(|e| e.to_string())?;
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .map(|r| r.trim().to_owned())
        .ok_or_else(|| format!("{identity} has no \"# public key:\" line"))?;
    // The recipient in a file, as `KEYGEN -y` writes it, so that the seal shown works with
    // the identity its setup makes, not only with this run's.
    let recipients = format!("{program}-recipient.txt");
    fs::write(folder.path().join(&recipients), format!("{recipient}\n"))
        .map_err(|e| e.to_string())?;
    let id2 = identity.clone();
    Ok(Some(Tool {
        name: program.into(),
        version: Some(version),
        what: "encrypt only (X25519, ChaCha20-Poly1305; age has no signature)".into(),
        ext: program,
        setup: vec![made, format!("{keygen} -y {identity} > {recipients}")],
        seal: Box::new(move |n| vec![os(&[program, "-R", &recipients, "-o", &n.sealed, &n.input])]),
        open: Box::new(move |n| vec![os(&[program, "-d", "-i", &id2, "-o", &n.opened, &n.sealed])]),
    }))
}
