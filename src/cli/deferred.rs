//! Parts of the command tree that clap defines only when the command line reaches them.
//!
//! clap's derive builds the whole tree before it parses a word: every subcommand and every
//! argument with its help text, a few hundred of them here. Every process paid for it, a
//! one-shot command too: `letterlock --version` took 1.7–2.9 ms of CPU and about 300 page faults
//! with the whole tree, 1.3–2.1 ms and about 240 without (`perf stat -r 200`, the two builds
//! taking turns, six rounds each, docs/PERFORMANCE-HISTORY.md, "Seventh session"). Wrapped in
//! [`Deferred`], a subcommand's arguments, or a command's subcommands, are added by
//! [`clap::Command::defer`] when clap builds that command: when the command line names it.
//! What is parsed, and every help and error text, is the same (the tests below compare them
//! with the tree built whole), with one exception: clap adds the global arguments (`-v`, `-q`,
//! `--passphrase-file`) to a command before its deferred arguments instead of after them, and
//! when a mistyped flag is exactly as close to a global flag as to one of the command's own,
//! its tip may name the other (`bench --quict`: `--quick` now, `--quiet` before).
//!
//! What walks the whole tree (the completions and the man pages) asks for it whole,
//! [`whole_tree`]: clap makes the tree of its `help` subcommand from the subcommands defined at
//! that moment, so deferred ones would be missing from it.

use std::cell::Cell;

use clap::builder::{Resettable, StyledStr};
use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, Subcommand};

/// `T`'s arguments (`T: Args`) or subcommands (`T: Subcommand`), defined when clap builds the
/// command that holds them. Use it for a whole variant (`SendMsg(Deferred<SendArgs>)`) or a
/// whole `#[command(subcommand)]` field, and at most once per command: never inside
/// `#[command(flatten)]`, nor inside what another `Deferred` defines for the same command. A
/// command keeps one deferred definition: a second one beside it replaces the first, and one
/// made while the first runs is never run (clap marks the command built), so its arguments
/// would be missing from the parser while the whole tree still shows them. Debug builds panic
/// on the second case ([`define`]).
#[derive(Debug)]
pub(crate) struct Deferred<T>(pub(crate) T);

thread_local! {
    /// Set by [`whole_tree`] while it builds the tree.
    static WHOLE: Cell<bool> = const { Cell::new(false) };
    /// The name of the command whose deferred definition is running, for [`define`]'s check.
    static DEFINING: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The command tree with nothing deferred, for what shows all of it (completions, manual).
pub(crate) fn whole_tree() -> Command {
    /// Clears the flag however `Cli::command` returns.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            WHOLE.set(false);
        }
    }
    WHOLE.set(true);
    let _reset = Reset;
    super::Cli::command()
}

/// `define(cmd)` now when building the whole tree, else when clap builds `cmd`.
fn define(cmd: Command, define: fn(Command) -> Command) -> Command {
    debug_assert!(
        WHOLE.get() || DEFINING.with_borrow(|d| d.as_deref() != Some(cmd.get_name())),
        "a second Deferred inside the deferred definition of `{}` would never run",
        cmd.get_name()
    );
    if WHOLE.get() {
        define(cmd)
    } else {
        cmd.defer(define)
    }
}

/// `define(cmd)`, keeping the texts `cmd` was given before. The derive gives a variant's doc
/// comment and attributes to its command *after* the contents' own (an `Args` struct's doc
/// comment is an `about` too); deferred, the contents come last, so the variant's are put back.
fn keeping_texts(cmd: Command, define: fn(Command) -> Command) -> Command {
    let about = cmd.get_about().cloned();
    let long_about = cmd.get_long_about().cloned();
    let before = cmd.get_before_help().cloned();
    let before_long = cmd.get_before_long_help().cloned();
    let after = cmd.get_after_help().cloned();
    let after_long = cmd.get_after_long_help().cloned();
    let outer = DEFINING.replace(Some(cmd.get_name().to_owned()));
    let mut cmd = define(cmd);
    DEFINING.set(outer);
    if let Some(about) = about {
        // A one-paragraph doc comment sets `long_about(None)` on purpose: put back as given.
        cmd = cmd.about(about).long_about(resettable(long_about));
    }
    if let Some(text) = before {
        cmd = cmd.before_help(text);
    }
    if let Some(text) = before_long {
        cmd = cmd.before_long_help(text);
    }
    if let Some(text) = after {
        cmd = cmd.after_help(text);
    }
    if let Some(text) = after_long {
        cmd = cmd.after_long_help(text);
    }
    cmd
}

/// `None` as clap's reset, so that putting it back clears what the contents set.
fn resettable(text: Option<StyledStr>) -> Resettable<StyledStr> {
    text.map_or(Resettable::Reset, Resettable::Value)
}

fn define_args<T: Args>(cmd: Command) -> Command {
    keeping_texts(cmd, T::augment_args)
}

fn define_args_for_update<T: Args>(cmd: Command) -> Command {
    keeping_texts(cmd, T::augment_args_for_update)
}

fn define_subcommands<T: Subcommand>(cmd: Command) -> Command {
    keeping_texts(cmd, T::augment_subcommands)
}

fn define_subcommands_for_update<T: Subcommand>(cmd: Command) -> Command {
    keeping_texts(cmd, T::augment_subcommands_for_update)
}

impl<T: FromArgMatches> FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Deferred)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: Args> Args for Deferred<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(cmd: Command) -> Command {
        define(cmd, define_args::<T>)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        define(cmd, define_args_for_update::<T>)
    }
}

impl<T: Subcommand> Subcommand for Deferred<T> {
    fn augment_subcommands(cmd: Command) -> Command {
        define(cmd, define_subcommands::<T>)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        define(cmd, define_subcommands_for_update::<T>)
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command's path from the top (`["client", "send_msg"]`), from the whole tree.
    fn paths(cmd: &Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            paths(sub, &path, out);
            out.push(path);
        }
    }

    /// What `letterlock PATH… FLAG` prints (help, version) or the error it gives.
    fn shown(cmd: Command, path: &[String], flag: &str) -> String {
        let args = std::iter::once("letterlock")
            .chain(path.iter().map(String::as_str))
            .chain([flag]);
        match cmd.try_get_matches_from(args) {
            Ok(_) => "parsed".to_owned(),
            Err(e) => format!("{:?}: {}", e.kind(), e.render()),
        }
    }

    #[test]
    fn the_deferred_tree_shows_every_help_as_the_whole_tree_does() {
        let whole = whole_tree();
        let mut all = Vec::new();
        paths(&whole, &[], &mut all);
        all.push(Vec::new());
        assert!(
            all.len() > 30,
            "{} commands: the walk missed some",
            all.len()
        );
        assert!(all.contains(&vec!["client".to_owned(), "send_msg".to_owned()]));
        for path in &all {
            for flag in ["--help", "-h", "--no-such-flag"] {
                assert_eq!(
                    shown(super::super::Cli::command(), path, flag),
                    shown(whole_tree(), path, flag),
                    "letterlock {} {flag}",
                    path.join(" ")
                );
            }
        }
    }

    /// `letterlock ARGS…` parsed into the command line's types (`Debug`), or the error shown.
    fn parsed(whole: bool, args: &[&str]) -> String {
        let args = std::iter::once(&"letterlock").chain(args);
        let cmd = if whole {
            whole_tree()
        } else {
            super::super::Cli::command()
        };
        match cmd
            .try_get_matches_from(args)
            .and_then(|m| super::super::Cli::from_arg_matches(&m))
        {
            Ok(cli) => format!("{cli:?}"),
            Err(e) => format!("{:?}: {}", e.kind(), e.render()),
        }
    }

    #[test]
    fn command_lines_parse_and_fail_as_with_the_whole_tree() {
        let lines: &[&[&str]] = &[
            &[
                "client", "send_msg", "--keys", "k", "--server", "h:1", "-v", "hi",
            ],
            &["-q", "client", "recv_msg", "--keys", "k"],
            &[
                "client",
                "send_msg",
                "--passphrase-file",
                "f",
                "--to",
                "bob",
                "hi",
            ],
            &["client", "contacts", "--accept", "bob", "--key", "SHA256:x"],
            &[
                "seal", "--from", "a.pem", "--to", "b.pem", "-o", "out", "in",
            ],
            &["server", "--listen", "127.0.0.1:0", "-v"],
            &["server", "inbox", "--json", "--from", "alice"],
            &["server", "copy-store", "--help"],
            &["bench", "--quick", "--json"],
            &["passphrase", "--remove", "key.pem"],
            &["help"],
            &["help", "client", "send_msg"],
            &["client", "help"],
            &["client", "help", "send_msg"],
            &["client"],
            &["server", "inbox", "extra"],
            &["--version"],
            &["client", "send_msg", "-v", "--help"],
            &["client", "sendmsg"],
            &["clinet"],
            &["seal", "--form", "a.pem"],
            &["client", "send_msg", "--servr", "h:1"],
        ];
        for line in lines {
            assert_eq!(
                parsed(false, line),
                parsed(true, line),
                "letterlock {}",
                line.join(" ")
            );
        }
    }

    #[test]
    fn a_tie_between_an_own_and_a_global_flag_may_tip_the_other_way() {
        // The one difference the module's doc names: still an unknown flag, still a tip.
        for whole in [false, true] {
            let shown = parsed(whole, &["bench", "--quict"]);
            assert!(shown.starts_with("UnknownArgument: "), "{shown}");
            assert!(
                shown.contains("'--quick'") || shown.contains("'--quiet'"),
                "{shown}"
            );
        }
    }

    #[derive(clap::Args, Debug)]
    struct Inner {
        #[arg(long)]
        x: bool,
    }

    #[derive(clap::Args, Debug)]
    struct Outer {
        #[command(flatten)]
        inner: Deferred<Inner>,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Nested {
        Thing(Deferred<Outer>),
    }

    #[derive(clap::Parser, Debug)]
    struct Top {
        #[command(subcommand)]
        sub: Nested,
    }

    #[test]
    #[should_panic(expected = "would never run")]
    fn a_deferred_inside_a_deferred_definition_of_the_same_command_panics_in_debug() {
        // Without the check `--x` would be refused: `Inner` is never defined.
        let _ = <Top as clap::Parser>::try_parse_from(["top", "thing", "--x"]);
    }

    #[test]
    fn only_the_named_command_is_defined() {
        let mut cmd = super::super::Cli::command();
        let client = cmd.find_subcommand_mut("client").expect("a client command");
        // Deferred: no subcommands until clap builds `client`.
        assert_eq!(client.get_subcommands().count(), 0);
        let whole = whole_tree();
        let client = whole.find_subcommand("client").expect("a client command");
        assert!(client.get_subcommands().count() > 5);
        let send = client.find_subcommand("send_msg").expect("client send_msg");
        assert!(send.get_arguments().any(|a| a.get_long() == Some("server")));
    }
}
