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
    let mut cmd = whole_tree().disable_help_subcommand(true);
    cmd.build();
    match a
        .output
        .as_deref()
        .filter(|p| *p != std::path::Path::new("-"))
    {
        None => {
            let mut out = io::stdout().lock();
            out.write_all(&page(&cmd)?)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the folder {}", dir.display()))?;
            write_pages(&cmd, dir)
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

/// Writes the page of `cmd` and of every command under it that is not hidden into `dir`, named
/// as clap_mangen names them (`letterlock-client-send_msg.1`).
fn write_pages(cmd: &clap::Command, dir: &std::path::Path) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let name = clap_mangen::Man::new(cmd.clone()).get_filename();
    std::fs::write(dir.join(name), page(cmd)?)
}

/// The manual page of `cmd` (built): clap_mangen's, with the synopsis replaced by
/// [`synopsis`]'s, in ASCII. clap_mangen's lists a hidden positional argument (bench's internal
/// `[CHILD]`) and no option's value (`[--plot]` for `--plot FILE.svg`).
fn page(cmd: &clap::Command) -> io::Result<Vec<u8>> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut roff)?;
    let text = String::from_utf8_lossy(&roff);
    let text = match text.find(".SH SYNOPSIS\n") {
        Some(start) => {
            let end = text[start + 1..]
                .find("\n.SH ")
                .map_or(text.len(), |i| start + 1 + i + 1);
            format!("{}{}{}", &text[..start], synopsis(cmd), &text[end..])
        }
        None => text.into_owned(),
    };
    Ok(ascii_roff(&man_sections(&text)).into_bytes())
}

/// `roff` with clap_mangen's EXTRA section (the text after the options in --help) given the
/// sections a manual page has: NOTES for its prose, EXIT STATUS, ENVIRONMENT, and EXAMPLES
/// kept line by line (found by a trial run: exit status and environment were under "EXTRA",
/// and the examples ran together into one paragraph).
fn man_sections(roff: &str) -> String {
    const EXTRA: &str = ".SH EXTRA\n";
    let Some(start) = roff.find(EXTRA) else {
        return roff.to_owned();
    };
    let body_start = start + EXTRA.len();
    let end = roff[body_start..]
        .find("\n.SH ")
        .map_or(roff.len(), |i| body_start + i + 1);
    let (mut notes, mut status, mut environment, mut examples) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut in_examples = false;
    for line in roff[body_start..end].lines() {
        if let Some(rest) = line.strip_prefix("Examples:") {
            in_examples = true;
            if !rest.trim().is_empty() {
                examples.push(rest.trim().to_owned());
            }
        } else if in_examples && line.starts_with("  ") {
            examples.push(line.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Exit status") {
            in_examples = false;
            status.push(rest.trim_start_matches(':').trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Environment:") {
            in_examples = false;
            environment.push(rest.trim().to_owned());
        } else {
            in_examples = false;
            notes.push(if line.trim().is_empty() {
                ".PP".to_owned()
            } else {
                line.to_owned()
            });
        }
    }
    while notes.first().is_some_and(|l| l == ".PP") {
        notes.remove(0);
    }
    while notes.last().is_some_and(|l| l == ".PP") {
        notes.pop();
    }
    let mut out = roff[..start].to_owned();
    let mut section = |title: &str, lines: &[String]| {
        if !lines.is_empty() {
            out.push_str(&format!(".SH {title}\n{}\n", lines.join("\n")));
        }
    };
    section("NOTES", &notes);
    section("\"EXIT STATUS\"", &status);
    section("ENVIRONMENT", &environment);
    if !examples.is_empty() {
        examples.insert(0, ".nf".to_owned());
        examples.push(".fi".to_owned());
    }
    section("EXAMPLES", &examples);
    out.push_str(&roff[end..]);
    out
}

/// `roff` with every character outside ASCII written as groff's `\[uXXXX]` escape: troff reads
/// its input as Latin-1 and warned of the help texts' "…" (found by a trial run, `groff -ww`).
fn ascii_roff(roff: &str) -> String {
    let mut out = String::with_capacity(roff.len());
    for c in roff.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

/// The SYNOPSIS section of `cmd` in roff: every argument its --help shows, an option with its
/// value name (`[--plot FILE.svg]`), a required one without brackets.
fn synopsis(cmd: &clap::Command) -> String {
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    let mut line = format!("\\fB{}\\fR", roff_escape(name));
    let shown = |a: &&clap::Arg| !a.is_hide_set();
    let options = cmd.get_arguments().filter(|a| !a.is_positional());
    let positionals = cmd.get_positionals();
    for arg in options.chain(positionals).filter(shown) {
        let mut item = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => format!(
                "\\fB\\-{}\\fR|\\fB\\-\\-{}\\fR",
                roff_escape(&short.to_string()),
                roff_escape(long)
            ),
            (None, Some(long)) => format!("\\fB\\-\\-{}\\fR", roff_escape(long)),
            (Some(short), None) => format!("\\fB\\-{}\\fR", roff_escape(&short.to_string())),
            (None, None) => String::new(),
        };
        let takes = arg.get_num_args().is_some_and(|n| n.takes_values());
        if takes || arg.is_positional() {
            let value = arg.get_value_names().map_or_else(
                || arg.get_id().as_str().to_uppercase(),
                |names| {
                    names
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            );
            if !item.is_empty() {
                item.push(' ');
            }
            item.push_str(&format!("\\fI{}\\fR", roff_escape(&value)));
            if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
                item.push_str("...");
            }
        }
        if matches!(arg.get_action(), clap::ArgAction::Count) {
            item.push_str("...");
        }
        line.push(' ');
        if arg.is_required_set() {
            line.push_str(&item);
        } else {
            line.push_str(&format!("[{item}]"));
        }
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let command = format!("\\fI{}\\fR", "COMMAND");
        if cmd.is_subcommand_required_set() {
            line.push_str(&format!(" {command}"));
        } else {
            line.push_str(&format!(" [{command}]"));
        }
    }
    format!(".SH SYNOPSIS\n{line}\n")
}

/// `text` as roff text: backslashes and hyphens escaped (a `-` would be a hyphen, not a minus).
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}
