//! Records how the aws-lc in this binary seeds its random generator, so that the binary can say
//! it (`letterlock --version`, the bench's header) and the claim in docs/SECURITY.md ("Entropy
//! at process start") can be checked on any copy.
//!
//! aws-lc-sys reads `AWS_LC_SYS_NO_JITTER_ENTROPY` in its own build script; builds from this
//! repository get it from `.cargo/config.toml` (`[env]`), which cargo passes to every build
//! script of the same build, this one included.

fn main() {
    println!("cargo:rerun-if-env-changed=AWS_LC_SYS_NO_JITTER_ENTROPY");
    let off = std::env::var("AWS_LC_SYS_NO_JITTER_ENTROPY").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "true" | "yes"
        )
    });
    let entropy = if off {
        "kernel getrandom + RDRAND/RNDR where present; CPU jitter entropy off \
         (built with AWS_LC_SYS_NO_JITTER_ENTROPY=1)"
    } else {
        "CPU jitter entropy + kernel getrandom (aws-lc's default build)"
    };
    println!("cargo:rustc-env=LETTERLOCK_ENTROPY={entropy}");
}
