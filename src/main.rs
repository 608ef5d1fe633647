//! The `letterlock` binary: the command line lives in this crate's library; see `letterlock --help`.

fn main() -> std::process::ExitCode {
    letterlock_cli::cli::run()
}
