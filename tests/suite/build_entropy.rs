//! The binaries this repository builds seed aws-lc from the kernel, without CPU jitter entropy
//! (`.cargo/config.toml`, docs/SECURITY.md "Entropy at process start"), and say so.

use std::process::Command;

#[test]
fn the_repository_build_says_jitter_entropy_is_off() {
    let out = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .arg("--version")
        .output()
        .expect("the letterlock binary runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        text.contains("random seeding: kernel getrandom")
            && text.contains("CPU jitter entropy off"),
        "{text}"
    );
    // The short form stays the bare version, for scripts.
    let short = Command::new(env!("CARGO_BIN_EXE_letterlock"))
        .arg("-V")
        .output()
        .expect("the letterlock binary runs");
    let short = String::from_utf8(short.stdout).expect("UTF-8");
    assert_eq!(
        short.trim(),
        format!("letterlock {}", env!("CARGO_PKG_VERSION"))
    );
}
