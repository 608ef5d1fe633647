//! The `letterlock` binary: everything lives in the library; see `letterlock --help`.

fn main() -> std::process::ExitCode {
    letterlock::cli::run()
}
