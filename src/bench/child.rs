//! Running a program the way a user does, measured: the wall time from its start to its exit
//! and its peak resident memory.
//!
//! The peak RSS of one child is what `getrusage(RUSAGE_CHILDREN)` reports in a process whose
//! only child it was (the largest `ru_maxrss` of the children it waited for, their own waited-for
//! children included: a shell pipeline counts). The bench has many children, so each measured
//! command runs under a small wrapper, this same binary as `letterlock bench --measure-child --
//! CMD…`: the wrapper starts CMD, waits for it, and prints one line with the time and the peak.
//! The wrapper's own start-up is outside the time it reports, and it never touches aws-lc, so its
//! own memory stays far below any child's peak it could hide.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use super::BenchError;

/// The hidden flag of `letterlock bench` that runs the wrapper.
pub const MEASURE_FLAG: &str = "--measure-child";
/// Start of the wrapper's one line on stdout.
const LINE_PREFIX: &str = "letterlock-measured";

/// One measured run of a command.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChildRun {
    /// From just before the child was started to just after it was waited for.
    pub(super) seconds: f64,
    /// The CPU time (user + system) of the child and its waited-for children.
    pub(super) cpu_seconds: f64,
    /// `ru_maxrss` of the child (KiB on Linux).
    pub(super) peak_rss_kib: u64,
}

/// The wrapper: runs `cmd` (stdin and stdout closed, stderr passed through), waits, prints
/// `letterlock-measured seconds=S cpu_seconds=C peak_rss_kib=K` and exits with the child's
/// status.
pub fn measure_child(cmd: &[OsString]) -> Result<ExitCode, BenchError> {
    let Some((program, args)) = cmd.split_first() else {
        return Err(BenchError::Usage(format!(
            "{MEASURE_FLAG} needs a command after `--`"
        )));
    };
    // A child started the fast way (posix_spawn, sharing this process's memory until its exec)
    // inherits this process's peak RSS as its own `ru_maxrss`. Setting the user id, to the one
    // this process already has, makes std fork and exec instead: the child's peak before its
    // exec is then only the anonymous memory it copied, a few hundred KiB.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .uid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            BenchError::Wrong(format!("cannot start {}: {e}", program.to_string_lossy()))
        })?;
    let seconds = started.elapsed().as_secs_f64();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| BenchError::Io(e.into()))?;
    let cpu = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu_seconds = cpu(usage.user_time()) + cpu(usage.system_time());
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{LINE_PREFIX} seconds={seconds:.9} cpu_seconds={cpu_seconds:.6} peak_rss_kib={}",
        usage.max_rss()
    )?;
    out.flush()?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Runs `cmd` in `dir` under the wrapper. `Err` says what failed, with the command's stderr.
pub(super) fn run_measured(dir: &Path, cmd: &[OsString]) -> Result<ChildRun, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let out = Command::new(exe)
        .args(["bench", MEASURE_FLAG, "--"])
        .args(cmd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the measuring wrapper: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(4).collect();
        return Err(format!(
            "`{}` failed ({}): {}",
            shell_line(cmd),
            out.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    parse_line(&stdout).ok_or_else(|| format!("the measuring wrapper printed {stdout:?}"))
}

fn parse_line(stdout: &str) -> Option<ChildRun> {
    let line = stdout.lines().find(|l| l.starts_with(LINE_PREFIX))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    Some(ChildRun {
        seconds: field("seconds")?.parse().ok()?,
        cpu_seconds: field("cpu_seconds")?.parse().ok()?,
        peak_rss_kib: field("peak_rss_kib")?.parse().ok()?,
    })
}

/// Whether `program` runs at all (`program ARG` exits 0); its first line of output if so.
pub(super) fn version_of(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or(program).trim().to_owned())
}

/// `cmd` as a line to paste into a POSIX shell.
pub(super) fn shell_line(cmd: &[OsString]) -> String {
    cmd.iter()
        .map(|a| crate::shell::quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_line_parses_and_garbage_does_not() {
        let run = parse_line(
            "noise\nletterlock-measured seconds=0.012500000 cpu_seconds=0.009000 peak_rss_kib=5120\n",
        )
        .unwrap();
        assert_eq!(run.peak_rss_kib, 5120);
        assert!((run.seconds - 0.0125).abs() < 1e-12);
        assert!((run.cpu_seconds - 0.009).abs() < 1e-12);
        assert!(
            parse_line("letterlock-measured seconds=x cpu_seconds=0.1 peak_rss_kib=1").is_none()
        );
        assert!(parse_line("letterlock-measured seconds=0.1 peak_rss_kib=1").is_none());
        assert!(parse_line("").is_none());
    }

    #[test]
    fn shell_lines_quote_what_a_shell_would_split() {
        let cmd: Vec<OsString> = ["gpg", "--output", "a b", "it's", "-r", "x@y.invalid"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            shell_line(&cmd),
            r"gpg --output 'a b' 'it'\''s' -r x@y.invalid"
        );
    }
}
