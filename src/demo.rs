//! `letterlock demo`: not built yet.

use std::process::ExitCode;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn run() -> Result<ExitCode, DemoError> {
    eprintln!("letterlock demo: not built yet");
    Ok(ExitCode::FAILURE)
}
