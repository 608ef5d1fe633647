//! `letterlock completions SHELL` and `letterlock man`: shell completions and manual pages made
//! from the clap definitions themselves (clap_complete, clap_mangen), so they can never
//! describe a flag the program does not have.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::deferred::whole_tree;

#[derive(Args, Debug)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub(super) shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(super) struct ManArgs {
    /// Write one page per command into this folder (letterlock.1, letterlock-client.1,
    /// letterlock-client-send_msg.1, …) instead of the top-level page to stdout; `-` is stdout.
    #[arg(short, long, value_name = "DIR")]
    pub(super) output: Option<PathBuf>,
}

/// Prints the completion script for `a.shell` on stdout.
pub(super) fn completions(a: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = whole_tree();
    // Generated into memory first: clap_complete panics when its writer fails (a closed pipe,
    // a full disk), and writing ourselves turns that into an ordinary error.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "letterlock", &mut script);
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the manual: the top-level page to stdout, or every command's page into a folder.
pub(super) fn man(a: &ManArgs) -> Result<ExitCode> {
    let cmd = whole_tree();
    match a
        .output
        .as_deref()
        .filter(|p| *p != std::path::Path::new("-"))
    {
        None => {
            let mut out = io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the folder {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            status!(
                "wrote the manual pages into {}; read one with `man -l {}`",
                dir.display(),
                dir.join("letterlock.1").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
