//! One-shot commands: what a user waits for when they run the binary once. `letterlock seal` of
//! 100 bytes per process, and `letterlock client send_msg "hello"` end to end on loopback against
//! a `letterlock server` started as a child process, each run as its own process under the
//! measuring wrapper ([`super::child`]).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde::Serialize;

use super::child::run_measured;
use super::folder::{Folder, NET, cmd, letterlock, shown};
use super::{BenchError, BenchOptions, progress};

/// Plaintext of the one-shot seal.
pub(super) const ONESHOT_SIZE: u64 = 100;
/// The goal for each one-shot command, per process.
pub(super) const ONESHOT_GOAL_MS: f64 = 10.0;
/// The pause after each `send_msg`: the server admits a burst of 64 connections from one
/// source, then 20 a second, and the two variants' runs together exceed the burst; at this
/// pace no run waits for a "busy" retry.
const SOURCE_PACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Per-process figures of one command run many times.
#[derive(Clone, Debug, Serialize)]
pub struct OneShot {
    /// The command, as a shell line run in the bench's temporary folder.
    pub command: String,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The median CPU time (user + system) of a process and its children: what the command
    /// costs the machine, without the waiting (for a server, the network, a free core).
    pub cpu_p50_ms: f64,
    /// 1000 / p50: processes per second one after another.
    pub ops_s: f64,
    /// The largest peak RSS of any of its processes.
    pub peak_rss_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OneShotReport {
    /// `letterlock seal` of [`ONESHOT_SIZE`] bytes from a file to a file.
    pub seal: OneShot,
    /// `letterlock client send_msg hello` to the server below (TLS 1.3, the default wire), as
    /// a user runs it: the client's handshake key kept from an untimed first run
    /// (`net/client_handshake.pem`).
    pub send_msg: OneShot,
    /// The same with that file removed before each run: the first command of the day, which
    /// certifies a new handshake key (one more RSA signature).
    pub send_msg_fresh: OneShot,
    /// The same message handed to a running `letterlock client agent` (ssh's ControlMaster):
    /// the agent seals and sends it on its kept connection, so this process neither reads the
    /// key nor connects. The agent's work is not in this process's CPU time.
    pub send_msg_agent: OneShot,
    /// How the agent was started (a child process, in the temporary folder).
    pub agent_command: String,
    /// How the server was started (a child process, in the temporary folder).
    pub server_command: String,
}

/// Runs `command` `samples` times; `before` runs untimed before each (to remove outputs).
pub(super) fn sample(
    folder: &Folder,
    command: &[OsString],
    samples: usize,
    before: impl FnMut() -> Result<(), BenchError>,
) -> Result<OneShot, BenchError> {
    let [shot] = sample_alternating(folder, [(command, before)], samples, None)?;
    Ok(shot)
}

/// Runs each of `variants` (a command, and an untimed step before each of its runs that sets
/// the variant up) `samples` times, taking turns, so that a machine that drifts during the runs
/// weighs on every variant alike; waits `pause` after each run, if given.
fn sample_alternating<const N: usize>(
    folder: &Folder,
    mut variants: [(&[OsString], impl FnMut() -> Result<(), BenchError>); N],
    samples: usize,
    pause: Option<std::time::Duration>,
) -> Result<[OneShot; N], BenchError> {
    let mut times = [(); N].map(|()| Vec::with_capacity(samples));
    let mut cpu = [(); N].map(|()| Vec::with_capacity(samples));
    let mut peaks = [0; N];
    for _ in 0..samples {
        for (i, (command, before)) in variants.iter_mut().enumerate() {
            before()?;
            let run = run_measured(folder.path(), command).map_err(BenchError::Wrong)?;
            times[i].push(run.seconds * 1000.0);
            cpu[i].push(run.cpu_seconds * 1000.0);
            peaks[i] = peaks[i].max(run.peak_rss_kib);
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
        }
    }
    Ok(std::array::from_fn(|i| {
        let times = &mut times[i];
        times.sort_by(f64::total_cmp);
        let p50_ms = percentile(times, 0.5);
        cpu[i].sort_by(f64::total_cmp);
        OneShot {
            command: shown(variants[i].0),
            samples,
            p50_ms,
            p99_ms: percentile(times, 0.99),
            cpu_p50_ms: percentile(&cpu[i], 0.5),
            ops_s: 1000.0 / p50_ms,
            peak_rss_kib: peaks[i],
        }
    }))
}

/// The one-shot section.
pub(super) fn measure_oneshot(
    opts: &BenchOptions,
    folder: &Folder,
) -> Result<OneShotReport, BenchError> {
    let samples = opts.oneshot_samples();
    folder.input("oneshot.txt", ONESHOT_SIZE)?;
    progress(&format!(
        "  letterlock seal of {ONESHOT_SIZE} B, {samples} processes"
    ));
    let seal_cmd = cmd(
        letterlock()?,
        &[
            "seal",
            "--from",
            "alice_private.pem",
            "--to",
            "bob_public.pem",
            "-o",
            "oneshot.sealed",
            "oneshot.txt",
        ],
    );
    let seal = sample(folder, &seal_cmd, samples, || {
        folder.remove(&["oneshot.sealed"])
    })?;

    let server_cmd = cmd(
        letterlock()?,
        &[
            "server",
            "--keys",
            NET,
            "--listen",
            "127.0.0.1:0",
            "--store",
            &format!("{NET}/server.db"),
            "--no-log-text",
        ],
    );
    let (server, addr) = start_server(folder, &server_cmd)?;
    progress(&format!(
        "  letterlock client send_msg to {addr}: with and without a kept handshake key, and \
         through a client agent, {samples} processes each"
    ));
    let send_args = ["client", "send_msg", "--keys", NET, "--server", &addr];
    let send_cmd = cmd(
        letterlock()?,
        &[&send_args[..], &["--no-agent", "hello"]].concat(),
    );
    let agent_send_cmd = cmd(letterlock()?, &[&send_args[..], &["hello"]].concat());
    let agent_cmd = cmd(
        letterlock()?,
        &[
            "client",
            "agent",
            "--keys",
            NET,
            "--server",
            &addr,
            "--persist",
            "0",
        ],
    );
    // Three variants, taking turns: the handshake key kept from the run before (as a user's
    // second command finds it); removed first (the first command of the day, which makes and
    // keeps a new one); and the message handed to the agent, which runs beside the other two
    // (they pass --no-agent) holding its connection. One untimed run keeps the first key.
    let cache = format!("{NET}/client_handshake.pem");
    folder.remove(&[&cache])?;
    run_measured(folder.path(), &send_cmd).map_err(BenchError::Wrong)?;
    let (agent, _) = start_child(folder, &agent_cmd)?;
    check_handed_over(folder, &agent_send_cmd)?;
    let [send_msg, send_msg_fresh, send_msg_agent] = sample_alternating(
        folder,
        [
            (
                &send_cmd[..],
                Box::new(|| Ok(())) as Box<dyn FnMut() -> Result<(), BenchError>>,
            ),
            (&send_cmd[..], Box::new(|| folder.remove(&[&cache]))),
            (&agent_send_cmd[..], Box::new(|| Ok(()))),
        ],
        samples,
        Some(SOURCE_PACE),
    )?;
    drop(agent);
    drop(server);
    Ok(OneShotReport {
        seal,
        send_msg,
        send_msg_fresh,
        send_msg_agent,
        agent_command: shown(&agent_cmd),
        server_command: shown(&server_cmd),
    })
}

/// Runs `command` (a `send_msg` meant for the agent) once, untimed, with `-v`, and fails unless
/// its log says the agent sent the message: a row named for the agent must not time commands
/// that quietly sent by themselves.
fn check_handed_over(folder: &Folder, command: &[OsString]) -> Result<(), BenchError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| BenchError::Wrong("empty command".into()))?;
    let out = Command::new(program)
        .arg("-v")
        .args(args)
        .current_dir(folder.path())
        .stdin(Stdio::null())
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && log.contains("sent by the agent") {
        Ok(())
    } else {
        Err(BenchError::Wrong(format!(
            "`{}` did not hand its message to the agent: {log}",
            shown(command)
        )))
    }
}

/// A server or agent child: killed and waited for when dropped; recorded meanwhile so that a
/// bench stopped by a signal kills it too ([`super::stopping`]).
struct BackgroundChild(Child);

impl BackgroundChild {
    fn new(child: Child) -> BackgroundChild {
        super::stopping::child_started(child.id());
        BackgroundChild(child)
    }
}

impl Drop for BackgroundChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        super::stopping::child_ended(self.0.id());
    }
}

/// Starts the server and reads the address from its first line ("… listening on ADDR").
fn start_server(
    folder: &Folder,
    command: &[OsString],
) -> Result<(BackgroundChild, String), BenchError> {
    let (child, first) = start_child(folder, command)?;
    let addr = first
        .split_once("listening on ")
        .map(|(_, a)| a.trim().to_owned())
        .filter(|a| a.contains(':'))
        .ok_or_else(|| {
            BenchError::Wrong(format!(
                "`{}` printed {first:?} instead of its address",
                shown(command)
            ))
        })?;
    Ok((child, addr))
}

/// Starts a long-running child (the server, the agent) and returns its first line, which each
/// prints once it is ready ("… listening on …"); the rest of its output is read and dropped in
/// the background so it never blocks on a full pipe.
fn start_child(
    folder: &Folder,
    command: &[OsString],
) -> Result<(BackgroundChild, String), BenchError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| BenchError::Wrong("empty command".into()))?;
    let mut child = BackgroundChild::new(
        Command::new(program)
            .args(args)
            .current_dir(folder.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| BenchError::Wrong("the child's stdout was not piped".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    if !first.contains("listening on ") {
        return Err(BenchError::Wrong(format!(
            "`{}` printed {first:?} instead of its \"listening on\" line",
            shown(command)
        )));
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, first))
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
