//! `letterlock bench --quick --json` runs end to end and reports every section with positive
//! figures, with and without `--compare`. It asserts nothing about speed: speed goals live in
//! the benchmark's own output. What the command line asks for (`--plot`, `--store-url`,
//! `--bits`) is checked before the run starts.

use crate::common;

use std::process::Command;

use serde_json::Value;

use common::cli::{Watched, command, run};

fn positive(v: &Value, path: &str) {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number"));
    assert!(x > 0.0 && x.is_finite(), "{path} = {x}, expected > 0");
}

#[test]
#[ignore = "runs the whole benchmark (--quick): over 10 s in a debug build; .ci/run runs it"]
fn quick_json_has_every_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["bench", "--quick", "--json", "--bits", "2048"])
        .output()
        .expect("the letterlock binary runs");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");

    assert_eq!(v.pointer("/machine/quick"), Some(&Value::Bool(true)));
    for field in [
        "rsa_decrypt_1core",
        "rsa_decrypt_all",
        "rsa_sign_1core",
        "rsa_sign_all",
        "rsa_encrypt_1core",
        "rsa_verify_1core",
        "aes_gcm_mb_s",
        "sha256_mb_s",
        "seal_pass_mb_s",
    ] {
        positive(&v, &format!("/bounds/{field}"));
    }

    let rows = v["envelope"].as_array().expect("envelope rows");
    for mode in ["hybrid", "asymmetric"] {
        for op in ["seal", "open"] {
            let ran: Vec<&Value> = rows
                .iter()
                .filter(|r| r["mode"] == mode && r["op"] == op && r["not_run"].is_null())
                .collect();
            assert!(ran.len() >= 3, "{mode} {op}: {} sizes ran", ran.len());
            for r in ran {
                for f in ["msgs_s", "mb_s", "bound_msgs_s", "bound_mb_s", "of_bound"] {
                    assert!(r[f].as_f64().unwrap() > 0.0, "{mode} {op} {f}: {r}");
                }
            }
        }
    }
    // Past the asymmetric limit nothing is estimated: the row says why it did not run.
    for r in rows.iter().filter(|r| r["mode"] == "asymmetric") {
        if r["size"].as_u64().unwrap() > 64 * 1024 {
            assert!(r["not_run"].is_string(), "{r}");
            assert_eq!(r["msgs_s"].as_f64(), Some(0.0), "{r}");
        }
    }
    let ratios = v["ratios"].as_array().expect("ratios");
    assert!(!ratios.is_empty());
    for r in ratios {
        assert!(r["seal"].as_f64().unwrap() > 0.0 && r["open"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        v.pointer("/asymmetric_correct/all_correct"),
        Some(&Value::Bool(true))
    );

    let rates = v
        .pointer("/server/rates")
        .and_then(Value::as_array)
        .unwrap();
    let conns: Vec<u64> = rates
        .iter()
        .map(|r| r["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(conns, [1, 4, 16, 64]);
    for i in 0..rates.len() {
        positive(&v, &format!("/server/rates/{i}/msgs_s"));
        positive(&v, &format!("/server/rates/{i}/bound_msgs_s"));
    }
    positive(&v, "/server/latency/p50_ms");
    positive(&v, "/server/latency/p99_ms");
    positive(&v, "/server/process_peak_rss_kib");
    // Protocol version 2: handshakes per second beside the sign bound, and the 1 KiB message
    // rate over TLS at 16 connections beside the decrypt bound. No resumption: null.
    for field in [
        "/server/tls/handshakes_s",
        "/server/tls/handshakes_s_sequential",
        "/server/tls/sign_bound_s",
        "/server/tls/rate/msgs_s",
        "/server/tls/rate/bound_msgs_s",
        "/server/tls/rate/of_bound",
    ] {
        positive(&v, field);
    }
    assert_eq!(
        v.pointer("/server/tls/rate/connections"),
        Some(&Value::from(16))
    );
    assert!(
        v.pointer("/server/tls/handshakes")
            .unwrap()
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        v.pointer("/server/tls/resumed_handshakes_s")
            .unwrap()
            .is_null(),
        "resumption is not built"
    );
    assert!(
        v.pointer("/server/big_send").unwrap().is_null(),
        "no 1 GiB in --quick"
    );

    // Section 5 runs in every run; section 6 only with --compare.
    one_shot_section(&v);
    assert!(v["compare"].is_null(), "no --compare: no comparison");
    store_section(&v);

    let goals = v["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 10, "{goals:?}");
    // --quick stops the asymmetric mode below its limit: not "met" for every size up to it.
    let asym = goals
        .iter()
        .find(|g| {
            g["goal"]
                .as_str()
                .is_some_and(|t| t.starts_with("asymmetric mode"))
        })
        .expect("the asymmetric goal");
    assert!(asym["met"].is_null(), "{asym}");
    assert!(
        asym["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not at the limit")),
        "{asym}"
    );
    for g in goals.iter().filter(|g| {
        g["goal"]
            .as_str()
            .is_some_and(|t| t.starts_with("file to file"))
    }) {
        assert!(g["met"].is_null(), "without --compare: not measured: {g}");
    }

    // Every all-core decrypt bound the run measured: section 1's, the four server runs', the
    // TLS run's and the two over each store; the spread is the highest over the lowest.
    let bounds: Vec<f64> = v
        .pointer("/steadiness/rsa_decrypt_all")
        .and_then(Value::as_array)
        .expect("steadiness")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(bounds.len(), 8, "{bounds:?}");
    let spread = v.pointer("/steadiness/spread").and_then(Value::as_f64);
    let expected = bounds.iter().copied().fold(0.0, f64::max)
        / bounds.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        spread.is_some_and(|s| s >= 1.0 && (s - expected).abs() < 1e-9),
        "{spread:?} against {bounds:?}"
    );
}

/// Section 7: both stores alone at 1 and 64 writers, and the server over each, with positive
/// figures. PostgreSQL must have run (a throwaway cluster from the installed binaries): where
/// it is missing, the failure says why and how to install it.
fn store_section(v: &Value) {
    assert_eq!(
        v.pointer("/store/postgres_ran"),
        Some(&Value::Bool(true)),
        "the PostgreSQL rows did not run: {}",
        v.pointer("/store/postgres").unwrap_or(&Value::Null)
    );
    let rows = v.pointer("/store/rows").and_then(Value::as_array).unwrap();
    let mut seen: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["store"].as_str().unwrap().to_owned(),
                r["writers"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, u64)> = [
        ("postgres", 1),
        ("postgres", 64),
        ("sqlite", 1),
        ("sqlite", 64),
    ]
    .iter()
    .map(|(s, w)| ((*s).to_owned(), *w))
    .collect();
    assert_eq!(seen, expected);
    for i in 0..rows.len() {
        positive(v, &format!("/store/rows/{i}/msgs_s"));
        positive(v, &format!("/store/rows/{i}/messages"));
        positive(v, &format!("/store/rows/{i}/transactions"));
    }
    let server = v
        .pointer("/store/server")
        .and_then(Value::as_array)
        .unwrap();
    let stores: Vec<&str> = server
        .iter()
        .map(|r| r["store"].as_str().unwrap())
        .collect();
    assert_eq!(stores, ["sqlite", "postgres"]);
    for i in 0..server.len() {
        positive(v, &format!("/store/server/{i}/rate/msgs_s"));
        positive(v, &format!("/store/server/{i}/rate/bound_msgs_s"));
    }
}

/// Section 5: the commands ran as processes, with positive figures and the command shown; the
/// agent's row handed its messages to the agent, the others did not.
fn one_shot_section(v: &Value) {
    for cmd in ["seal", "send_msg", "send_msg_fresh", "send_msg_agent"] {
        for field in ["p50_ms", "p99_ms", "cpu_p50_ms", "ops_s", "peak_rss_kib"] {
            positive(v, &format!("/oneshot/{cmd}/{field}"));
        }
        let line = v["oneshot"][cmd]["command"].as_str().unwrap();
        assert!(line.starts_with("letterlock "), "{line}");
    }
    assert!(
        v.pointer("/oneshot/server_command")
            .and_then(Value::as_str)
            .unwrap()
            .contains("--listen 127.0.0.1:0")
    );
    let direct = v["oneshot"]["send_msg"]["command"].as_str().unwrap();
    assert!(direct.contains("--no-agent"), "{direct}");
    let through = v["oneshot"]["send_msg_agent"]["command"].as_str().unwrap();
    assert!(!through.contains("--no-agent"), "{through}");
    let agent = v["oneshot"]["agent_command"].as_str().unwrap();
    assert!(agent.contains("client agent"), "{agent}");
}

/// Runs every tool's setup, seal and open commands as the comparison shows them, in an empty
/// folder with a file of the name they use: each must work there and give the file back
/// (found by a trial run: gpg's home was the run's deleted folder, rage's recipient the run's).
fn rerun_as_shown(tools: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_letterlock"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plain = b"the comparison's commands, run again by hand\n";
    // gpg's agent, started by the commands, is stopped however the checks end.
    struct StopAgent<'a>(&'a std::path::Path);
    impl Drop for StopAgent<'_> {
        fn drop(&mut self) {
            if self.0.join("gnupg").exists() {
                let _ = Command::new("gpgconf")
                    .args(["--homedir", "gnupg", "--kill", "gpg-agent"])
                    .current_dir(self.0)
                    .status();
            }
        }
    }
    let _agent = StopAgent(dir.path());
    let mut ran = 0;
    for t in tools.iter().filter(|t| t["status"] == "ran") {
        let name = t["tool"].as_str().unwrap();
        let lines = |list: &str| -> Vec<String> {
            t[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned())
                .collect()
        };
        let (seal, open) = (lines("seal_commands"), lines("open_commands"));
        // The file names they use: the input follows -in in the first seal command, or ends
        // it; the output follows -o/--output/-out in the last open command (for cp: `cp ...
        // FROM TO`).
        let first: Vec<&str> = seal[0].split(' ').collect();
        let input = if name == "cp" {
            first[first.len() - 2]
        } else {
            first
                .windows(2)
                .find(|w| w[0] == "-in")
                .map_or(first[first.len() - 1], |w| w[1])
        }
        .to_owned();
        std::fs::write(dir.path().join(&input), plain).unwrap();
        for line in lines("setup").iter().chain(&seal).chain(&open) {
            let out = Command::new("sh")
                .args(["-c", line])
                .current_dir(dir.path())
                .env("PATH", &path)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: `{line}` failed as shown: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let last = open.last().unwrap();
        let words: Vec<&str> = last.split(' ').collect();
        let opened = words
            .windows(2)
            .find(|w| ["-o", "--output", "-out"].contains(&w[0]))
            .map(|w| w[1])
            .or_else(|| (name == "cp").then(|| words[words.len() - 1]))
            .unwrap_or_else(|| panic!("{name}: no output file in `{last}`"));
        assert_eq!(
            std::fs::read(dir.path().join(opened)).unwrap(),
            plain,
            "{name}: `{last}`"
        );
        ran += 1;
    }
    assert!(ran >= 1, "no tool ran");
}

/// Whether `program --version` runs here.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "runs the whole benchmark (--quick --compare): over 30 s in a debug build; .ci/run runs it"]
fn quick_compare_runs_the_installed_tools_and_reports_the_missing_ones() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_letterlock"));
    bench
        .args([
            "bench",
            "--quick",
            "--compare",
            "--json",
            "--bits",
            "2048",
            "--plot",
        ])
        .arg(&svg);
    // The usual umask, whatever the test's own: the plot is made as any new file is.
    // SAFETY: umask is async-signal-safe and touches nothing of the parent's.
    unsafe {
        bench.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    let out = bench.output().expect("the letterlock binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        stderr.contains(&format!("wrote {}", svg.display())),
        "{stderr}"
    );
    let mode = std::fs::metadata(&svg).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o644,
        "a plot is for sharing: 0666 less the umask, {mode:o}"
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("MiB") && text.contains("bound"));
    // A bound's name ends where its line ends (never past the right edge); a mode's seal and
    // open bounds, which meet at large sizes, are named at different heights.
    let label = |name: &str| {
        text.split("<text")
            .find(|t| {
                let inner = t.split("</text>").next().and_then(|x| x.split('>').nth(1));
                inner.map(str::trim) == Some(name)
            })
            .unwrap_or_else(|| panic!("no {name} label: {text}"))
            .to_owned()
    };
    let (seal, open) = (label("hybrid seal bound"), label("hybrid open bound"));
    assert!(seal.contains("text-anchor=\"end\""), "{seal}");
    assert!(open.contains("text-anchor=\"end\""), "{open}");
    // Above its line (the text's bottom on it: plotters' dy of -0.5ex) and below (its top:
    // 0.76em).
    assert!(seal.contains("dy=\"-0.5ex\""), "{seal}");
    assert!(open.contains("dy=\"0.76em\""), "{open}");
    // The machine's two bounds are named standing on their lines, not struck through by them
    // (found by looking at the plot: the line ran through the middle of the text).
    for name in ["single-stream sealing bound:", "AES-256-GCM bound:"] {
        let t = text
            .split("<text")
            .find(|t| t.contains(name))
            .unwrap_or_else(|| panic!("no {name} label: {text}"));
        assert!(t.contains("dy=\"-0.5ex\""), "{t}");
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    one_shot_section(&v);

    let tools = v
        .pointer("/compare/tools")
        .and_then(Value::as_array)
        .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["tool"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["letterlock", "gpg", "openssl cms", "rage", "age", "cp"]
    );
    for t in tools {
        let name = t["tool"].as_str().unwrap();
        let program = name.split(' ').next().unwrap();
        let here = name == "letterlock"
            || if program == "openssl" {
                Command::new("openssl")
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            } else {
                installed(program)
            };
        if !here {
            // Never guessed: a missing tool has a status and no figure.
            assert_eq!(t["status"], "not installed", "{t}");
            assert!(t["file"].is_null() && t["oneshot"].is_null(), "{t}");
            continue;
        }
        assert_eq!(t["status"], "ran", "{t}");
        for f in [
            "seal_mb_s",
            "open_mb_s",
            "seal_peak_rss_kib",
            "open_peak_rss_kib",
        ] {
            assert!(t["file"][f].as_f64().unwrap() > 0.0, "{name} {f}: {t}");
        }
        for f in ["p50_ms", "cpu_p50_ms", "ops_s", "peak_rss_kib"] {
            assert!(t["oneshot"][f].as_f64().unwrap() > 0.0, "{name} {f}: {t}");
        }
        // Each command is shown so it can be run again.
        for list in ["seal_commands", "open_commands"] {
            let lines = t[list].as_array().unwrap();
            assert!(!lines.is_empty(), "{name} {list}");
            for l in lines {
                assert!(l.as_str().unwrap().starts_with(program), "{name}: {l}");
            }
        }
    }
    rerun_as_shown(tools);
    let file_goals: Vec<&Value> = v["goals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["goal"].as_str().unwrap().starts_with("file to file"))
        .collect();
    assert_eq!(file_goals.len(), 3);
    // --quick's 4 MiB file is not judged against the goals' 1 GiB, but its figures are shown
    // (the rage ratio only where rage or age ran).
    let rage = installed("rage") || installed("age");
    for (i, g) in file_goals.iter().enumerate() {
        assert!(g["met"].is_null(), "{g}");
        let detail = g["detail"].as_str().unwrap();
        if i == 0 && !rage {
            assert!(detail.starts_with("not measured: "), "{detail}");
            continue;
        }
        assert!(
            detail.starts_with("not judged: this run's file is 4 MiB"),
            "{detail}"
        );
        assert!(
            detail.contains("MB/s") || detail.contains("MiB,"),
            "{detail}"
        );
    }
}

#[test]
fn an_existing_plot_file_is_refused_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("old.svg");
    std::fs::write(&svg, "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["bench", "--quick", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );
    // Refused before anything ran: no progress line, the file untouched.
    assert!(!stderr.contains("generating"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), "keep me");

    // The plot is SVG: another extension is refused, naming the .svg it could be.
    let png = dir.path().join("out.png");
    let out = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["bench", "--quick", "--plot"])
        .arg(&png)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not end in .svg") && stderr.contains("out.svg"),
        "{stderr}"
    );
    assert!(!stderr.contains("generating") && !png.exists(), "{stderr}");

    let missing = dir.path().join("no-such-folder").join("a.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .args(["bench", "--quick", "--plot"])
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
}

/// A folder that exists but takes no new file (root cannot write in /proc either) is refused
/// before the run, naming the user's path, not the name of a temporary file (found by a trial
/// run: refused only after the whole run, with the results thrown away).
#[test]
fn a_plot_folder_that_takes_no_file_is_refused_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run(dir.path(), &["bench", "--quick", "--plot", "/proc/x.svg"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot write /proc/x.svg"), "{stderr}");
    assert!(!stderr.contains(".letterlock-plot"), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
    assert!(stdout.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// The results are printed before the plot is written: a plot that fails at the end (its folder
/// removed during the run) costs the plot, not the run; the error names the user's path.
#[test]
#[ignore = "runs the whole benchmark (--quick): over 10 s in a debug build; .ci/run runs it"]
fn a_plot_that_fails_after_the_run_keeps_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("plots");
    std::fs::create_dir(&folder).unwrap();
    let svg = folder.join("x.svg");
    let svg_arg = svg.to_str().unwrap().to_owned();
    let mut bench = Watched::spawn(command(
        dir.path(),
        &[
            "bench", "--quick", "--json", "--bits", "2048", "--plot", &svg_arg,
        ],
    ));
    bench.wait_for("generating");
    std::fs::remove_dir(&folder).unwrap();
    let (out, said) = bench.finish();
    let stderr = said.join("\n");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("the results on stdout, as JSON");
    assert_eq!(v.pointer("/machine/quick"), Some(&Value::Bool(true)));
    assert!(stderr.contains(&svg_arg), "{stderr}");
    assert!(!stderr.contains(".letterlock-plot"), "{stderr}");
}

/// A `--store-url` server that cannot be reached stops the bench before it runs, with the cause
/// (nothing listens on port 1) and not the advice to install PostgreSQL, which the user did not
/// need (found by a trial run: the whole run, then "not run … install PostgreSQL", exit 0).
#[test]
fn an_unreachable_store_url_is_refused_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "bench",
            "--quick",
            "--store-url",
            "postgres://nobody@127.0.0.1:1/x",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--store-url"), "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("apt-get"), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
    assert!(stdout.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// A `--store-url` that is no PostgreSQL URL is a usage error (exit 2), before anything runs.
#[test]
fn a_store_url_that_is_no_url_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dir.path(), &["bench", "--quick", "--store-url", "garbage"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("postgres://"), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
    assert!(stdout.is_empty());
}

/// A key size the bench cannot generate is a usage error (exit 2) naming the sizes it can,
/// before anything runs (found by a trial run: refused after "generating two 1024-bit RSA
/// keys…").
#[test]
fn an_unsupported_key_size_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dir.path(), &["bench", "--quick", "--bits", "1024"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("1024") && stderr.contains("2048, 3072, 4096"),
        "{stderr}"
    );
    assert!(!stderr.contains("generating"), "{stderr}");
    assert!(stdout.is_empty());
}

/// `--compare` with less free space in $TMPDIR than its files take is refused before the run,
/// naming the folder and TMPDIR (/proc has no free space at all).
#[test]
fn compare_without_room_in_tmpdir_is_refused_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &["bench", "--quick", "--compare"])
        .env("TMPDIR", "/proc")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--compare needs about 16 MiB free in the temporary folder /proc (TMPDIR)"),
        "{stderr}"
    );
    assert!(!stderr.contains("generating"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Ctrl-C or SIGTERM while the bench runs: it exits as the signal would have (130, 143) and
/// leaves nothing in $TMPDIR; stopped while the SQLite mailbox is measured, and while the
/// one-shot section's server and agent run (found by a trial run: the mailbox, its -wal, -shm
/// and .blobs/, stayed in $TMPDIR after a Ctrl-C).
#[test]
#[ignore = "runs the benchmark (--quick) up to its last section: over 10 s in a debug build"]
fn a_stopped_bench_leaves_nothing_in_tmpdir() {
    for (signal, status, during) in [
        ("-INT", 130, "SQLite store alone"),
        ("-TERM", 143, "one-shot commands"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let mut cmd = command(dir.path(), &["bench", "--quick", "--bits", "2048"]);
        cmd.env("TMPDIR", &tmp);
        let mut bench = Watched::spawn(cmd);
        bench.wait_for(during);
        // Let the section make its files first.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let made = leftovers(&tmp);
        assert!(
            !made.is_empty(),
            "{signal}: the run made nothing in $TMPDIR"
        );
        let killed = Command::new("kill")
            .args([signal, &bench.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let (out, said) = bench.finish();
        assert_eq!(out.status.code(), Some(status), "{signal}: {said:?}");
        assert!(
            said.iter().any(|l| l.contains("stopped")),
            "{signal}: {said:?}"
        );
        assert_eq!(
            leftovers(&tmp),
            Vec::<String>::new(),
            "{signal} during {during:?}; there were {made:?}"
        );
    }
}

/// Every path under `dir`, relative to it.
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().map(Result::unwrap) {
            let path = entry.path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                folders.push(path);
            }
        }
    }
    found.sort();
    found
}
