//! The report of one run: what it measured, the goals judged from it, and the two ways it is
//! written out (a table for people, JSON for programs).

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use super::compare::CompareReport;
use super::oneshot::{ONESHOT_GOAL_MS, OneShotReport};
use super::{BenchError, GIB, GOAL_SHARE, KIB, MIB, RSS_GOAL_KIB};

/// File to file: letterlock's rate over rage's (or age's), measured in the same run.
const FILE_VS_AGE_GOAL: f64 = 1.5;
/// File to file: letterlock's rate over its own in-memory rate.
const FILE_VS_MEMORY_GOAL: f64 = 0.8;
/// File to file: the largest peak RSS of letterlock's seal or open process.
const FILE_RSS_GOAL_KIB: u64 = 16 * 1024;

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
    /// The binary run once per command (section 5).
    pub oneshot: OneShotReport,
    /// The other tools on the same files (section 6); `None` without `--compare`.
    pub compare: Option<CompareReport>,
    /// The mailbox stores alone and the server over each (section 7).
    pub store: super::StoreReport,
    pub goals: Vec<Goal>,
    /// How much the machine's speed moved during the run.
    pub steadiness: Steadiness,
}

/// Every all-core RSA decrypt bound the run measured (section 1, then right before or around
/// each server run), and the highest over the lowest. The goals divide figures measured
/// minutes apart (a rate by the bound measured before it, file to file by in memory): on a
/// machine whose speed moves during the run, such a ratio moves with it, and this says by how
/// much. A busy or shared machine shows here first (docs/PERFORMANCE-HISTORY.md, "Seventh
/// session").
#[derive(Clone, Debug, Serialize)]
pub struct Steadiness {
    pub rsa_decrypt_all: Vec<f64>,
    /// Highest over lowest: 1.0 on a perfectly steady machine.
    pub spread: f64,
}

/// Above this spread the steadiness line warns: wider than the goals' own margins (90 %).
const STEADY_SPREAD: f64 = 1.10;

impl Steadiness {
    /// From the bounds in measuring order; positive finite ones only.
    pub(super) fn of(bounds: impl IntoIterator<Item = f64>) -> Steadiness {
        let rsa_decrypt_all: Vec<f64> = bounds
            .into_iter()
            .filter(|b| b.is_finite() && *b > 0.0)
            .collect();
        let spread = match Self::range(&rsa_decrypt_all) {
            Some((lowest, highest)) => highest / lowest,
            None => 1.0,
        };
        Steadiness {
            rsa_decrypt_all,
            spread,
        }
    }

    /// The lowest and the highest of `bounds`; `None` when there are none.
    fn range(bounds: &[f64]) -> Option<(f64, f64)> {
        let lowest = bounds.iter().copied().reduce(f64::min)?;
        let highest = bounds.iter().copied().reduce(f64::max)?;
        Some((lowest, highest))
    }

    /// The bounds of a whole report: section 1's, then each server run's.
    pub(super) fn of_run(
        bounds: &Bounds,
        server: &ServerReport,
        store: &super::StoreReport,
    ) -> Steadiness {
        Steadiness::of(
            std::iter::once(bounds.rsa_decrypt_all)
                .chain(server.rates.iter().map(|r| r.bound_msgs_s))
                .chain(std::iter::once(server.tls.rate.bound_msgs_s))
                .chain(store.server.iter().map(|s| s.rate.bound_msgs_s)),
        )
    }

    /// The heading of the goals: an unsteady machine is said before the verdicts, not only under
    /// them (found by a trial run: a run slowed by other work printed MISSED lines whose caveat
    /// came only on the last line).
    fn goals_heading(&self) -> &'static str {
        if self.spread > STEADY_SPREAD {
            "Goals (the machine was NOT steady during this run: read these verdicts with the last \
             line)"
        } else {
            "Goals"
        }
    }

    /// The line under the goals; `None` when no bound was measured.
    fn line(&self) -> Option<String> {
        let (lowest, highest) = Self::range(&self.rsa_decrypt_all)?;
        let verdict = if self.spread > STEADY_SPREAD {
            "NOT steady: the machine's speed moved during the run, and a goal that divides two \
             figures measured minutes apart moved with it; measure again on a quieter machine"
        } else {
            "steady"
        };
        Some(format!(
            "machine: the all-core RSA decrypt bound, measured {} times in this run, ranged \
             {lowest:.0}-{highest:.0}/s (highest {:.2}x the lowest): {verdict}",
            self.rsa_decrypt_all.len(),
            self.spread
        ))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub bits: usize,
    pub quick: bool,
    pub release_build: bool,
    /// How this binary's aws-lc seeds its random generator (recorded by build.rs): every
    /// one-shot figure depends on it (docs/SECURITY.md, "Entropy at process start").
    pub entropy: String,
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
    /// Set when the figure stayed over its bound, measured again ([`super::over_bound_note`]).
    pub bound_note: Option<String>,
    /// Peak RSS of the process while this row ran (KiB); `None` where the kernel's peak mark
    /// could not be reset (then no figure would be this row's alone).
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
    /// Protocol version 2: handshakes and the message rate over TLS 1.3.
    pub tls: TlsReport,
    /// VmHWM of the whole process at the end: server, clients and everything before.
    pub process_peak_rss_kib: u64,
    pub note: String,
}

/// The server on protocol version 2 (TLS 1.3, X25519MLKEM768, both sides' RSA keys).
#[derive(Clone, Debug, Serialize)]
pub struct TlsReport {
    /// Full handshakes timed (TLS 1.3 and the server's `Ready`), all connections together.
    pub handshakes: usize,
    /// Concurrent clients making them.
    pub handshake_clients: usize,
    /// Full handshakes per second the server completed with that many clients at once.
    pub handshakes_s: f64,
    /// Full handshakes per second, one client, one at a time.
    pub handshakes_s_sequential: f64,
    /// The all-core RSA-PSS sign rate, measured right before: each full handshake costs the
    /// server one signature (and the client another, in this same process).
    pub sign_bound_s: f64,
    /// Resumed handshakes per second: `None`, resumption is not built (see `resumption`).
    pub resumed_handshakes_s: Option<f64>,
    pub resumption: String,
    /// Messages over TLS at 16 connections, beside the all-core RSA decrypt bound.
    pub rate: ServerRate,
    /// Client-to-client messages relayed over TLS at 16 connections (issue 14).
    pub relayed: Option<RelayRate>,
}

/// Relayed (client to client) 1 KiB messages: the server stores them unopened, so the RSA
/// decrypt bound is shown for comparison, not as their bound.
#[derive(Clone, Debug, Serialize)]
pub struct RelayRate {
    pub connections: usize,
    /// Messages the server answered `Stored` for in all rounds, and the time they took.
    pub messages: usize,
    pub seconds: f64,
    /// Messages per second of the best round.
    pub msgs_s: f64,
    /// The all-core RSA decrypt bound of the message run before.
    pub rsa_bound_msgs_s: f64,
    /// The server's own counters over the run: messages it relayed, and messages it opened
    /// (decrypted): none, for relays.
    pub server_relayed: u64,
    pub server_opened: u64,
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
    /// Set when the rate stayed over its bound, measured again ([`super::over_bound_note`]).
    pub bound_note: Option<String>,
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
// Goals

/// The goals, each judged against the same figure and bound as the table row it cites.
pub(super) fn goals(
    rows: &[EnvelopeRow],
    asym: &AsymmetricCheck,
    server: &ServerReport,
    oneshot: &OneShotReport,
    compare: Option<&CompareReport>,
) -> Vec<Goal> {
    let mut goals = Vec::new();
    goals.push(server_goal(server));
    goals.push(in_memory_goal(rows));
    // The 1 GiB open runs from the sealed message held in memory (section 2 opens from memory,
    // as the seal seals from memory): what the open itself costs is its growth over what was
    // resident when it began, the held message included.
    let mut rss: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r.size >= GIB)
        .filter_map(|r| match (r.op, r.rss_before_kib) {
            ("open", Some(before)) => Some((
                format!(
                    "{} {} (growth over the {:.1} MiB resident before it, the sealed message \
                     held in memory)",
                    r.op,
                    r.mode,
                    before as f64 / 1024.0
                ),
                r.peak_rss_kib?.saturating_sub(before),
            )),
            _ => Some((format!("{} {}", r.op, r.mode), r.peak_rss_kib?)),
        })
        .collect();
    // The send runs inside the bench's own process, which still holds what earlier sections
    // allocated (the 16 MiB rows' buffers stay with the allocator): what the send itself costs
    // is its growth over what was resident when it began, reported beside that figure.
    if let Some(s) = &server.big_send {
        rss.push((
            format!(
                "send+receive (growth over the {:.1} MiB resident before it)",
                s.rss_before_kib as f64 / 1024.0
            ),
            s.peak_rss_kib.saturating_sub(s.rss_before_kib),
        ));
    }
    // Measured when both 1 GiB rows that ran (hybrid; asymmetric stops at its limit) have a
    // peak (never 0 when read) and the send ran; a growth
    // (the open's, the send's) may well be 0.
    let measured = rss.len() == 3
        && rows
            .iter()
            .filter(|r| r.size >= GIB && r.not_run.is_none())
            .all(|r| r.peak_rss_kib.is_some_and(|k| k > 0));
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
    // "Every size up to its limit" is met only when the limit itself round-tripped: --quick
    // stops below it, and then says so rather than "met" (found by a trial run).
    let at_limit = asym.sizes_checked.contains(&asym.limit);
    goals.push(Goal {
        goal: "asymmetric mode correct at every size up to its limit".into(),
        met: if asym.all_correct {
            at_limit.then_some(true)
        } else {
            Some(false)
        },
        detail: format!(
            "round-tripped at {}{}; limit + 1 byte refused: {}",
            asym.sizes_checked
                .iter()
                .map(|s| human_size(*s))
                .collect::<Vec<_>>()
                .join(", "),
            if at_limit {
                String::new()
            } else {
                format!(
                    " (not at the limit, {}: not run in --quick)",
                    human_size(asym.limit)
                )
            },
            asym.refuses_over_limit
        ),
    });
    for (what, shot) in [
        ("`letterlock seal` of 100 B", &oneshot.seal),
        (
            "`letterlock client send_msg` end to end on loopback",
            &oneshot.send_msg,
        ),
        (
            "`letterlock client send_msg` end to end on loopback, through `client agent`",
            &oneshot.send_msg_agent,
        ),
    ] {
        goals.push(Goal {
            goal: format!("{what}: p50 <= {ONESHOT_GOAL_MS:.0} ms per process"),
            met: Some(shot.p50_ms <= ONESHOT_GOAL_MS),
            detail: format!(
                "p50 {} ms, p99 {:.1} ms over {} processes (section 5)",
                beside(shot.p50_ms, 1, |ms| ms <= ONESHOT_GOAL_MS),
                shot.p99_ms,
                shot.samples
            ),
        });
    }
    goals.extend(file_goals(rows, compare));
    goals
}

/// Connections at which the server's rate is judged (issue 13: "at 4-64 connections"; one
/// connection is bounded by one client's round trips, not by the server).
const SERVER_GOAL_CONNECTIONS: [usize; 3] = [4, 16, 64];

/// The server's 1 KiB rate at each of [`SERVER_GOAL_CONNECTIONS`] against the all-core RSA
/// decrypt bound measured right before that row (section 3's "of" column).
fn server_goal(server: &ServerReport) -> Goal {
    let judged: Vec<&ServerRate> = server
        .rates
        .iter()
        .filter(|r| SERVER_GOAL_CONNECTIONS.contains(&r.connections))
        .collect();
    Goal {
        goal: format!(
            "server {} message rate >= {:.0}% of the all-core RSA decrypt bound at 4, 16 and 64 \
             connections",
            human_size(server.message_size),
            GOAL_SHARE * 100.0
        ),
        met: (!judged.is_empty()).then(|| judged.iter().all(|r| r.of_bound >= GOAL_SHARE)),
        detail: if judged.is_empty() {
            "not run".into()
        } else {
            judged
                .iter()
                .map(|r| {
                    format!(
                        "{} conn {:.0} msg/s = {}",
                        r.connections,
                        r.msgs_s,
                        of_goal(r.of_bound, &r.bound_note)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
                + " of the bound measured right before each (section 3)"
        },
    }
}

/// Hybrid 1 GiB sealed and opened in memory (section 2's 1 GiB rows), each against that row's
/// bound: the message's two RSA operations plus its bytes at the single-stream SHA-256 +
/// AES-256-GCM bound measured right before the size (at 1 GiB the RSA operations are 0.2 %).
fn in_memory_goal(rows: &[EnvelopeRow]) -> Goal {
    let big: Vec<&EnvelopeRow> = rows
        .iter()
        .filter(|r| r.mode == "hybrid" && r.size >= GIB && r.not_run.is_none())
        .collect();
    Goal {
        goal: format!(
            "in memory, hybrid 1 GiB: seal and open >= {:.0}% of the single-stream bound \
             (section 2)",
            GOAL_SHARE * 100.0
        ),
        met: (!big.is_empty()).then(|| big.iter().all(|r| r.of_bound >= GOAL_SHARE)),
        detail: if big.is_empty() {
            "not run (no 1 GiB in --quick)".into()
        } else {
            big.iter()
                .map(|r| {
                    format!(
                        "{} {:.0} MB/s = {} of {:.0} MB/s",
                        r.op,
                        r.mb_s,
                        of_goal(r.of_bound, &r.bound_note),
                        r.bound_mb_s
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
    }
}

/// The file-to-file goals, from section 6; "not measured" without `--compare`. They are for a
/// 1 GiB file: a smaller one (`--quick`'s 4 MiB) shows its figures but is not judged (found by
/// a trial run: a quick run on a fresh install printed "[MISSED] file to file, 4 MiB", which
/// read as a fault of the install).
fn file_goals(rows: &[EnvelopeRow], compare: Option<&CompareReport>) -> Vec<Goal> {
    let goals = file_goals_as_run(rows, compare);
    match compare {
        Some(c) if c.file_size < GIB => goals
            .into_iter()
            .map(|g| match g.met {
                // Measured, but on a smaller file: shown, not judged.
                Some(_) => Goal {
                    goal: g.goal,
                    met: None,
                    detail: format!(
                        "{NOT_JUDGED} this run's file is {}, the goal's 1 GiB (--quick); \
                         measured: {}",
                        human_size(c.file_size),
                        g.detail
                    ),
                },
                None => g,
            })
            .collect(),
        _ => goals,
    }
}

/// How the detail of a goal measured but not judged starts (`--quick`'s smaller file): the
/// verdict then reads "not judged", not "not measured".
const NOT_JUDGED: &str = "not judged:";

/// [`file_goals`], each judged on the run's figures as they are, under the 1 GiB goals' names.
fn file_goals_as_run(rows: &[EnvelopeRow], compare: Option<&CompareReport>) -> Vec<Goal> {
    let names = [
        format!(
            "file to file, {} hybrid: seal and open >= {FILE_VS_AGE_GOAL}x rage's (or age's) \
             rate in the same run",
            human_size(GIB)
        ),
        format!(
            "file to file, {} hybrid: seal and open >= {FILE_VS_MEMORY_GOAL}x the in-memory \
             rate",
            human_size(GIB)
        ),
        format!(
            "file to file, {} hybrid: peak RSS <= {} MiB",
            human_size(GIB),
            FILE_RSS_GOAL_KIB / 1024
        ),
    ];
    let Some(c) = compare else {
        return names
            .into_iter()
            .map(|goal| Goal {
                goal,
                met: None,
                detail: "not run (needs --compare)".into(),
            })
            .collect();
    };
    let ran = |name: &str| {
        c.tools
            .iter()
            .find(|t| t.tool == name)
            .and_then(|t| t.file.as_ref())
    };
    let ours = ran("letterlock");
    let [vs_age, vs_memory, rss] = names;
    let mut goals = Vec::new();
    let age = ["rage", "age"]
        .into_iter()
        .find_map(|name| Some((name, ran(name)?)));
    goals.push(match (ours, age) {
        (Some(o), Some((name, a))) => {
            let (seal, open) = (o.seal_mb_s / a.seal_mb_s, o.open_mb_s / a.open_mb_s);
            let ratio = |x| beside(x, 2, |r| r >= FILE_VS_AGE_GOAL);
            Goal {
                goal: vs_age,
                met: Some(seal >= FILE_VS_AGE_GOAL && open >= FILE_VS_AGE_GOAL),
                detail: format!(
                    "seal {:.0} MB/s = {}x {name}'s {:.0}; open {:.0} MB/s = {}x {name}'s {:.0} \
                     (section 6)",
                    o.seal_mb_s,
                    ratio(seal),
                    a.seal_mb_s,
                    o.open_mb_s,
                    ratio(open),
                    a.open_mb_s
                ),
            }
        }
        _ => Goal {
            goal: vs_age,
            met: None,
            detail: format!(
                "not measured: {}",
                c.tools
                    .iter()
                    .filter(|t| t.tool == "rage" || t.tool == "age")
                    .map(|t| format!("{} {}", t.tool, t.status))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    });
    // The in-memory row of the largest size section 2 ran: the one its table shows.
    let memory = |op: &str| {
        rows.iter()
            .filter(|r| r.mode == "hybrid" && r.op == op && r.not_run.is_none())
            .max_by_key(|r| r.size)
    };
    goals.push(match (ours, memory("seal"), memory("open")) {
        (Some(o), Some(ms), Some(mo)) => {
            let (seal, open) = (o.seal_mb_s / ms.mb_s, o.open_mb_s / mo.mb_s);
            let ratio = |x| beside(x, 2, |r| r >= FILE_VS_MEMORY_GOAL);
            Goal {
                goal: vs_memory,
                met: Some(seal >= FILE_VS_MEMORY_GOAL && open >= FILE_VS_MEMORY_GOAL),
                detail: format!(
                    "seal {:.0} MB/s = {}x the in-memory {:.0} MB/s ({}); open {:.0} MB/s = {}x \
                     {:.0} MB/s ({}) (sections 6 and 2)",
                    o.seal_mb_s,
                    ratio(seal),
                    ms.mb_s,
                    human_size(ms.size),
                    o.open_mb_s,
                    ratio(open),
                    mo.mb_s,
                    human_size(mo.size)
                ),
            }
        }
        _ => Goal {
            goal: vs_memory,
            met: None,
            detail: "not measured".into(),
        },
    });
    goals.push(match ours {
        Some(o) => {
            let peak = o.seal_peak_rss_kib.max(o.open_peak_rss_kib);
            Goal {
                goal: rss,
                met: Some(peak <= FILE_RSS_GOAL_KIB),
                detail: {
                    // Not [`mib`]: the decimals beside the goal.
                    let in_mib = |kib: u64| {
                        let under = |mib: f64| mib * 1024.0 <= FILE_RSS_GOAL_KIB as f64;
                        beside(kib as f64 / 1024.0, 1, under)
                    };
                    format!(
                        "seal {} MiB, open {} MiB (section 6)",
                        in_mib(o.seal_peak_rss_kib),
                        in_mib(o.open_peak_rss_kib)
                    )
                },
            }
        }
        None => Goal {
            goal: rss,
            met: None,
            detail: "not measured".into(),
        },
    });
    goals
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

/// `x` to `places` decimals, or to up to three more where that rounding would put the figure
/// shown on the other side of its goal (`met`); at three more, cut toward `x`'s own side
/// instead of rounded. A missed goal never shows its own threshold ("1.498x", not "1.50x",
/// under a goal of 1.5x), nor a met one a figure that misses it.
fn beside(x: f64, places: usize, met: impl Fn(f64) -> bool) -> String {
    let agrees = |shown: &str| shown.parse::<f64>().is_ok_and(|back| met(back) == met(x));
    for shown_places in places..places + 3 {
        let shown = format!("{x:.shown_places$}");
        if agrees(&shown) {
            return shown;
        }
    }
    let last = places + 3;
    let scale = 10f64.powi(i32::try_from(last).unwrap_or(i32::MAX));
    [(x * scale).floor() / scale, (x * scale).ceil() / scale]
        .into_iter()
        .map(|cut| format!("{cut:.last$}"))
        .find(|shown| agrees(shown))
        .unwrap_or_else(|| format!("{x:.last$}"))
}

/// A share of a bound against the goal share [`GOAL_SHARE`], as [`of`] shows it in a table,
/// with the decimals [`beside`] needs.
fn of_goal(x: f64, note: &Option<String>) -> String {
    let shown = beside(x * 100.0, 0, |percent| percent / 100.0 >= GOAL_SHARE);
    starred(format!("{shown}%"), note)
}

/// A share of a bound, marked `*` when it stayed over its bound measured again.
fn of(x: f64, note: &Option<String>) -> String {
    starred(pct(x), note)
}

/// `shown`, marked `*` when the bound it is a share of has a note.
fn starred(shown: String, note: &Option<String>) -> String {
    match note {
        Some(_) => format!("{shown}*"),
        None => shown,
    }
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
    let _ = writeln!(s, "random seeding: {}", m.entropy);
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
    // The peak-RSS column only where the kernel let the bench measure it per row.
    let rss_column = r.envelope.iter().any(|row| row.peak_rss_kib.is_some());
    let _ = writeln!(
        s,
        "  {:<10} {:<5} {:>7} {:>10} {:>10} {:>9} {:>9} {:>7} {:>9}",
        "mode",
        "op",
        "size",
        "msg/s",
        "bound",
        "MB/s",
        "bound",
        "of",
        if rss_column { "peak RSS" } else { "" }
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
        let line = format!(
            "  {:<10} {:<5} {:>7} {:>10.1} {:>10.1} {:>9.1} {:>9.1} {:>7} {:>9}",
            row.mode,
            row.op,
            human_size(row.size),
            row.msgs_s,
            row.bound_msgs_s,
            row.mb_s,
            row.bound_mb_s,
            of(row.of_bound, &row.bound_note),
            if rss_column {
                row.peak_rss_kib.map_or("n/a".into(), mib)
            } else {
                String::new()
            }
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if !rss_column {
        let _ = writeln!(
            s,
            "  (no peak RSS per row: /proc/self/clear_refs could not be written here)"
        );
    } else {
        let _ = writeln!(
            s,
            "  (peak RSS: the whole process while the row ran, its input and output buffers \
             included)"
        );
    }
    if r.envelope.iter().any(|row| row.bound_note.is_some()) {
        let _ = writeln!(s, "  * {}", super::over_bound_note());
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
            "  {:>11} {:>9} {:>10.0} {:>10.0}/s {:>7}",
            rate.connections,
            rate.messages,
            rate.msgs_s,
            rate.bound_msgs_s,
            of(rate.of_bound, &rate.bound_note)
        );
    }
    if srv.rates.iter().any(|rate| rate.bound_note.is_some()) {
        let _ = writeln!(s, "  * {}", super::over_bound_note());
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
    let tls = &srv.tls;
    let _ = writeln!(
        s,
        "\n4. Server on protocol version 2 (TLS 1.3, X25519MLKEM768, mutual RSA-PSS)"
    );
    let _ = writeln!(
        s,
        "  full handshakes: {:.0}/s with {} clients at once ({} timed), {:.0}/s one at a time; \
         all-core RSA sign bound {:.0}/s (one RSA signature per handshake: each client here \
         certifies a new handshake key, keeping none; both sides sign the handshake itself with \
         ECDSA handshake keys; both sides in this process)",
        tls.handshakes_s,
        tls.handshake_clients,
        tls.handshakes,
        tls.handshakes_s_sequential,
        tls.sign_bound_s
    );
    let _ = writeln!(s, "  resumed handshakes: not measured: {}", tls.resumption);
    let _ = writeln!(
        s,
        "  {} messages over TLS at {} connections: {:.0} msg/s, all-core RSA decrypt bound \
         {:.0}/s ({} of it){}",
        human_size(srv.message_size),
        tls.rate.connections,
        tls.rate.msgs_s,
        tls.rate.bound_msgs_s,
        pct(tls.rate.of_bound),
        tls.rate
            .bound_note
            .as_ref()
            .map_or(String::new(), |n| format!(": {n}"))
    );
    if let Some(r) = &tls.relayed {
        let _ = writeln!(
            s,
            "  {} messages relayed client to client at {} connections (each waits for its \
             Stored): {:.0} msg/s = {:.1}x the RSA decrypt bound above; the server opened {} of \
             {} relayed (no RSA private operation): the store's commits and TLS bound it",
            human_size(srv.message_size),
            r.connections,
            r.msgs_s,
            r.msgs_s / r.rsa_bound_msgs_s.max(f64::MIN_POSITIVE),
            r.server_opened,
            r.server_relayed
        );
    }
    let _ = writeln!(
        s,
        "  process peak RSS {:.1} MiB ({})",
        srv.process_peak_rss_kib as f64 / 1024.0,
        srv.note
    );
    oneshot_table(&mut s, &r.oneshot);
    compare_section(&mut s, r.compare.as_ref());
    super::store::table(&mut s, &r.store);
    let _ = writeln!(s, "\n{}", r.steadiness.goals_heading());
    for g in &r.goals {
        let verdict = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None if g.detail.starts_with(NOT_JUDGED) => "not judged",
            None => "not measured",
        };
        let _ = writeln!(s, "  [{verdict}] {}: {}", g.goal, g.detail);
    }
    if let Some(line) = r.steadiness.line() {
        let _ = writeln!(s, "  {line}");
    }
    s
}

fn oneshot_table(s: &mut String, o: &OneShotReport) {
    let _ = writeln!(
        s,
        "\n5. One-shot commands: this binary, one process per command, in the bench's \
         temporary folder"
    );
    let _ = writeln!(
        s,
        "  {:<44} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "samples", "p50 ms", "p99 ms", "CPU ms", "ops/s", "peak RSS"
    );
    for (what, shot) in [
        ("seal of 100 B, file to file", &o.seal),
        ("client send_msg \"hello\" (TLS 1.3, loopback)", &o.send_msg),
        ("  the same, no handshake key kept yet", &o.send_msg_fresh),
        ("  the same, through `client agent`", &o.send_msg_agent),
    ] {
        let _ = writeln!(
            s,
            "  {what:<44} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
            shot.samples,
            shot.p50_ms,
            shot.p99_ms,
            shot.cpu_p50_ms,
            shot.ops_s,
            mib(shot.peak_rss_kib)
        );
    }
    let _ = writeln!(
        s,
        "  goal: each <= {ONESHOT_GOAL_MS:.0} ms per process (p50); send_msg keeps its TLS \
         handshake key in net/client_handshake.pem (made by an untimed first run); the second \
         row removes it before each run: the first send of the day; the third hands the \
         message to a `client agent` that runs beside them (the first two pass --no-agent), \
         which seals and sends it on its kept connection; the three rows take turns; CPU ms: \
         the median user + system time of the process, without the waiting (send_msg's alone: \
         neither the server's work nor the agent's is in it); p99 by nearest rank: over fewer \
         than 100 processes, the slowest of them"
    );
    let _ = writeln!(s, "  $ {}", o.seal.command);
    let _ = writeln!(s, "  $ {} &", o.server_command);
    let _ = writeln!(s, "  $ {}", o.send_msg.command);
    let _ = writeln!(s, "  $ {} &", o.agent_command);
    let _ = writeln!(s, "  $ {}", o.send_msg_agent.command);
}

/// Section 6, or the line that says it was not run: a table going from 5 to 7 would read as a
/// section lost (found by a trial run of `--quick`).
fn compare_section(s: &mut String, compare: Option<&CompareReport>) {
    match compare {
        Some(c) => compare_table(s, c),
        None => {
            let _ = writeln!(
                s,
                "\n6. Comparison with gpg, openssl cms, rage, age and cp: not run (pass --compare)"
            );
        }
    }
}

fn compare_table(s: &mut String, c: &CompareReport) {
    let _ = writeln!(
        s,
        "\n6. Comparison: file to file ({}, median of {} run{}), and a {}-byte seal per process \
         ({} processes)",
        human_size(c.file_size),
        c.runs,
        if c.runs == 1 { "" } else { "s" },
        c.oneshot_size,
        c.oneshot_samples
    );
    // Which columns belong to which measurement (found by a trial run: the last four read as
    // more file figures).
    let file = format!(" file to file, {} ", human_size(c.file_size));
    let shot = format!(" {}-byte seal, per process ", c.oneshot_size);
    let _ = writeln!(s, "  {:<12} {file:-^39} {shot:-^40}", "");
    let _ = writeln!(
        s,
        "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "tool",
        "seal MB/s",
        "open MB/s",
        "seal RSS",
        "open RSS",
        "100 B ms",
        "CPU ms",
        "ops/s",
        "RSS"
    );
    for t in &c.tools {
        match (&t.file, &t.oneshot) {
            (Some(f), Some(o)) => {
                let _ = writeln!(
                    s,
                    "  {:<12} {:>9.0} {:>9.0} {:>9} {:>9} {:>10.1} {:>9.1} {:>9.1} {:>9}",
                    t.tool,
                    f.seal_mb_s,
                    f.open_mb_s,
                    mib(f.seal_peak_rss_kib),
                    mib(f.open_peak_rss_kib),
                    o.p50_ms,
                    o.cpu_p50_ms,
                    o.ops_s,
                    mib(o.peak_rss_kib)
                );
            }
            _ => {
                let _ = writeln!(s, "  {:<12} {}", t.tool, t.status);
            }
        }
    }
    if c.tools
        .iter()
        .any(|t| t.tool == "cp" && t.file.is_some() && t.oneshot.is_some())
    {
        let _ = writeln!(
            s,
            "  (cp: no crypto, a plain copy: the folder's own rate beside the tools'; its {}-byte \
             figure is a process copying that file)",
            c.oneshot_size
        );
    }
    let _ = writeln!(s, "  ({})", c.note);
    for t in c.tools.iter().filter(|t| t.file.is_some()) {
        let _ = writeln!(
            s,
            "  {}: {}, {}",
            t.tool,
            t.version.as_deref().unwrap_or("version unknown"),
            t.what
        );
        for line in t
            .setup
            .iter()
            .map(|l| format!("    setup: $ {l}"))
            .chain(t.seal_commands.iter().map(|l| format!("    seal:  $ {l}")))
            .chain(t.open_commands.iter().map(|l| format!("    open:  $ {l}")))
        {
            let _ = writeln!(s, "{line}");
        }
    }
}

/// KiB as `12.3 MiB`.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Writes the report as JSON to `out`.
pub fn write_json(r: &Report, mut out: impl Write) -> Result<(), BenchError> {
    serde_json::to_writer_pretty(&mut out, r).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::compare::{FileFigures, ToolRow};
    use super::*;

    fn row(op: &'static str, size: u64, mb_s: f64) -> EnvelopeRow {
        EnvelopeRow {
            mode: "hybrid",
            op,
            size,
            not_run: None,
            iterations: 1,
            seconds: 1.0,
            msgs_s: 1.0,
            mb_s,
            bound_msgs_s: 1.0,
            bound_mb_s: mb_s,
            of_bound: 1.0,
            seal_pass_mb_s: mb_s,
            bound_note: None,
            peak_rss_kib: None,
            rss_before_kib: None,
        }
    }

    fn tool(name: &str, seal: f64, open: f64, rss: u64) -> ToolRow {
        ToolRow {
            tool: name.into(),
            version: None,
            what: String::new(),
            status: "ran".into(),
            setup: Vec::new(),
            seal_commands: Vec::new(),
            open_commands: Vec::new(),
            file: Some(FileFigures {
                seal_mb_s: seal,
                open_mb_s: open,
                seal_peak_rss_kib: rss,
                open_peak_rss_kib: rss,
            }),
            oneshot: None,
        }
    }

    fn missing(name: &str) -> ToolRow {
        ToolRow {
            status: "not installed".into(),
            file: None,
            ..tool(name, 0.0, 0.0, 0)
        }
    }

    fn compare(tools: Vec<ToolRow>) -> CompareReport {
        CompareReport {
            file_size: GIB,
            runs: 3,
            oneshot_size: 100,
            oneshot_samples: 5,
            tools,
            note: String::new(),
        }
    }

    #[test]
    fn steadiness_is_the_highest_bound_over_the_lowest_and_warns_past_ten_percent() {
        // The seventh session's run 1: section 1, then the server runs' bounds.
        let moved = Steadiness::of([720.0, 834.0, 810.0, 927.0, 938.0, 925.0, f64::NAN, 0.0]);
        assert_eq!(
            moved.rsa_decrypt_all.len(),
            6,
            "not measured values are left out"
        );
        assert!((moved.spread - 938.0 / 720.0).abs() < 1e-9);
        let line = moved.line().unwrap_or_default();
        assert!(line.contains("measured 6 times"), "{line}");
        assert!(line.contains("720-938/s"), "{line}");
        assert!(
            line.contains("1.30x") && line.contains("NOT steady"),
            "{line}"
        );
        assert!(moved.goals_heading().contains("NOT steady"));
        assert_eq!(
            Steadiness::of([883.0, 885.0, 884.0, 881.0]).goals_heading(),
            "Goals"
        );
        let steady = Steadiness::of([883.0, 885.0, 884.0, 881.0]).line();
        assert!(
            steady.as_deref().is_some_and(|l| l.ends_with(": steady")),
            "{steady:?}"
        );
        assert_eq!(Steadiness::of([]).spread, 1.0);
        assert_eq!(Steadiness::of([]).line(), None);
    }

    #[test]
    fn without_compare_section_6_says_it_was_not_run_and_how_to_run_it() {
        let mut s = String::new();
        compare_section(&mut s, None);
        assert!(s.starts_with("\n6. Comparison"), "{s}");
        assert!(s.contains("not run (pass --compare)"), "{s}");
        let mut s = String::new();
        compare_section(&mut s, Some(&compare(Vec::new())));
        assert!(s.starts_with("\n6. Comparison: file to file"), "{s}");
    }

    #[test]
    fn file_goals_are_not_measured_without_compare_or_without_rage() {
        let rows = [row("seal", MIB, 100.0), row("open", MIB, 100.0)];
        let goals = file_goals(&rows, None);
        assert_eq!(goals.len(), 3);
        assert!(goals.iter().all(|g| g.met.is_none()));

        let c = compare(vec![
            tool("letterlock", 90.0, 90.0, 8 * 1024),
            missing("rage"),
            missing("age"),
        ]);
        let goals = file_goals(&rows, Some(&c));
        assert_eq!(goals[0].met, None, "{}", goals[0].detail);
        assert!(goals[0].detail.contains("not installed"));
        assert_eq!(goals[1].met, Some(true), "0.9x of the in-memory rate");
        assert_eq!(goals[2].met, Some(true), "8 MiB peak");
    }

    #[test]
    fn file_goals_cite_rage_and_the_largest_in_memory_row() {
        // The 1 GiB rows are the ones the table shows beside a 1 GiB file run, not 1 MiB.
        let rows = [
            row("seal", MIB, 1000.0),
            row("open", MIB, 1000.0),
            row("seal", GIB, 200.0),
            row("open", GIB, 200.0),
        ];
        let c = compare(vec![
            tool("letterlock", 150.0, 170.0, 20 * 1024),
            tool("rage", 100.0, 100.0, 5 * 1024),
        ]);
        let goals = file_goals(&rows, Some(&c));
        assert_eq!(goals[0].met, Some(true), "1.5x and 1.7x rage");
        assert!(goals[0].detail.contains("rage's"), "{}", goals[0].detail);
        assert_eq!(goals[1].met, Some(false), "150 of 200 MB/s is 0.75x");
        assert!(goals[1].detail.contains("1 GiB"), "{}", goals[1].detail);
        assert_eq!(goals[2].met, Some(false), "20 MiB is over 16 MiB");
    }

    /// A file smaller than the goals' 1 GiB (`--quick`) shows its figures but is not judged.
    #[test]
    fn file_goals_on_a_small_file_are_shown_not_judged() {
        let rows = [row("seal", MIB, 1000.0), row("open", MIB, 1000.0)];
        let c = CompareReport {
            file_size: 4 * MIB,
            ..compare(vec![
                tool("letterlock", 50.0, 50.0, 20 * 1024),
                tool("rage", 100.0, 100.0, 5 * 1024),
            ])
        };
        for g in file_goals(&rows, Some(&c)) {
            assert_eq!(g.met, None, "{}", g.detail);
            assert!(g.goal.contains("1 GiB"), "{}", g.goal);
            assert!(
                g.detail.starts_with("not judged: this run's file is 4 MiB"),
                "{}",
                g.detail
            );
        }
        // What was not measured at all (no rage) stays "not measured", not wrapped.
        let c = CompareReport {
            tools: vec![tool("letterlock", 50.0, 50.0, 20 * 1024), missing("rage")],
            ..c
        };
        let goals = file_goals(&rows, Some(&c));
        assert!(
            goals[0].detail.starts_with("not measured: "),
            "{}",
            goals[0].detail
        );
    }

    /// A goal's figure is rounded to a number on its own side of the goal.
    #[test]
    fn a_figure_beside_its_goal_never_rounds_onto_it() {
        let at_least = |r: f64| r >= 1.5;
        assert_eq!(beside(962.1 / 642.0, 2, at_least), "1.499");
        assert_eq!(beside(1.4984, 2, at_least), "1.498");
        assert_eq!(beside(1.5, 2, at_least), "1.50");
        assert_eq!(beside(1.54, 2, at_least), "1.54");
        assert_eq!(beside(10.04, 1, |ms| ms <= 10.0), "10.04");
        // 10.0 meets "at most 10" as 9.96 does.
        assert_eq!(beside(9.96, 1, |ms| ms <= 10.0), "10.0");
        assert_eq!(beside(10.8, 1, |ms| ms <= 10.0), "10.8");
        // Never more than three more places: there cut toward its own side.
        assert_eq!(beside(1.499_999_9, 2, at_least), "1.49999");
        assert_eq!(beside(10.000_001, 1, |ms| ms <= 10.0), "10.0001");
        assert_eq!(of_goal(0.8996, &None), "89.96%");
        assert_eq!(of_goal(0.9, &None), "90%");
        assert_eq!(of_goal(0.913, &None), "91%");
    }

    fn rate(connections: usize, of_bound: f64) -> ServerRate {
        ServerRate {
            connections,
            messages: 64,
            seconds: 1.0,
            msgs_s: 1000.0 * of_bound,
            bound_msgs_s: 1000.0,
            of_bound,
            bound_note: None,
        }
    }

    #[test]
    fn the_server_goal_needs_every_level_from_4_to_64() {
        let server = |rates| ServerReport {
            message_size: KIB,
            rates,
            latency: Latency {
                samples: 0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                mean_ms: 0.0,
            },
            big_send: None,
            tls: TlsReport {
                handshakes: 0,
                handshake_clients: 0,
                handshakes_s: 0.0,
                handshakes_s_sequential: 0.0,
                sign_bound_s: 0.0,
                resumed_handshakes_s: None,
                resumption: String::new(),
                rate: rate(16, 1.0),
                relayed: None,
            },
            process_peak_rss_kib: 0,
            note: String::new(),
        };
        // One connection is not judged; 64 at 89 % misses.
        let g = server_goal(&server(vec![
            rate(1, 0.5),
            rate(4, 0.95),
            rate(16, 0.92),
            rate(64, 0.89),
        ]));
        assert_eq!(g.met, Some(false), "{}", g.detail);
        assert!(g.detail.contains("64 conn 890 msg/s = 89%"), "{}", g.detail);
        let g = server_goal(&server(vec![
            rate(1, 0.5),
            rate(4, 0.9),
            rate(16, 0.92),
            rate(64, 0.95),
        ]));
        assert_eq!(g.met, Some(true), "{}", g.detail);
    }

    #[test]
    fn the_in_memory_goal_judges_the_1_gib_rows_only() {
        let quick = [row("seal", MIB, 100.0), row("open", MIB, 100.0)];
        assert_eq!(in_memory_goal(&quick).met, None);
        let mut open = row("open", GIB, 1100.0);
        open.of_bound = 0.81;
        let full = [row("seal", MIB, 100.0), row("seal", GIB, 1400.0), open];
        let g = in_memory_goal(&full);
        assert_eq!(g.met, Some(false), "{}", g.detail);
        assert!(g.detail.contains("open 1100 MB/s = 81%"), "{}", g.detail);
    }

    #[test]
    fn a_share_over_its_bound_is_marked() {
        assert_eq!(of(1.07, &None), "107%");
        assert_eq!(of(1.07, &Some("why".into())), "107%*");
    }
}
