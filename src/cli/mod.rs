//! The command line: clap definitions and what each command does. The binary only calls [`run`].
//!
//! This file holds the top-level command tree, [`run`] and what every command shares (the
//! runtime, logging, key loading); `offline.rs` has the key and seal/open commands,
//! `client.rs` and `server.rs` the two sides of the walk-through, `hints.rs` the advice the
//! command line adds to library errors.

use std::io::{self, IsTerminal};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use letterlock::envelope::Mode;
use letterlock::keys::{self, PublicKey};

/// Whether `-q` was given: status lines on stderr are left out (errors are always shown).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether `-q` was given ([`status!`] prints nothing then).
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A status line on stderr (what happened, where a file went), left out under `-q`. Errors and
/// warnings use `eprintln!`/`tracing` and are never silenced. Defined before the submodules so
/// that they can use it.
macro_rules! status {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// What a command that has no exit status of its own says at the end of its --help: the one
/// sentence every such command shares, and the start of the top-level help's. A macro, not a
/// const, so that `concat!` can build on it.
macro_rules! exit_status {
    () => {
        "Exit status: 0 success, 1 failure (the error is on stderr), 2 wrong usage."
    };
}

mod agent;
mod client;
mod completions;
mod contacts;
mod deferred;
mod hints;
mod mailbox;
mod offline;
mod passphrase;
mod replaced;
mod server;
mod server_key;
mod store_admin;
mod terminal;
mod trust_server;

use client::{ClientCommand, client_recv, client_send};
use deferred::Deferred;
use hints::print_hint;
pub use offline::time_text;
use offline::{KeygenArgs, OpenArgs, PairArgs, SealArgs, fingerprint, keygen, open, seal};
use passphrase::{PassphraseArgs, PassphraseCmdArgs, change_passphrase};
use server::{ServeArgs, ServerCommand, serve_cmd};
pub use terminal::colour;

/// Largest message `open` holds in memory to print on stdout: above it, use `-o FILE`, which
/// streams to disk and renames only once the message verified.
pub const STDOUT_LIMIT: u64 = 64 * 1024 * 1024;

/// What `letterlock --help` ends with: the exit status of every command that has no other (each
/// command's --help says its own) and the environment variables read.
const GENERAL_HELP: &str = concat!(
    exit_status!(),
    " Some commands have more (e.g. `client recv_msg`, `client contacts`): each one's --help \
     lists them.\n\
     Environment: LETTERLOCK_SERVER (--server), LETTERLOCK_KEYS (--keys), LETTERLOCK_STORE \
     (--store), LETTERLOCK_PASSPHRASE (a private key's passphrase, when no --passphrase-file), \
     LETTERLOCK_NEW_PASSPHRASE (`passphrase`'s new one); RUST_LOG overrides -v/-q; NO_COLOR \
     (set, not empty) or TERM=dumb: no colour."
);

#[derive(Parser, Debug)]
#[command(
    name = "letterlock",
    version,
    long_version = concat!(env!("CARGO_PKG_VERSION"), "\nrandom seeding: ", env!("LETTERLOCK_ENTROPY")),
    // `letterlock client send_msg --version` works too, as with every subcommand.
    propagate_version = true,
    after_help = GENERAL_HELP,
    about = "Secure messages between a client and a server: confidential, signed, tamper-evident.",
    long_about = "letterlock seals a message for one recipient with RSA-OAEP (asymmetric mode) or \
                  AES-256-GCM under a fresh key wrapped with RSA-OAEP (hybrid mode), and signs it \
                  with the sender's RSA-PSS key. Only the recipient can read it, the recipient \
                  knows who sent it, and any change on the way is refused.\n\n\
                  Start with `letterlock demo`, or the walk-through:\n  \
                  letterlock server generate_key_pair\n  \
                  letterlock client generate_key_pair\n  \
                  letterlock server &\n  \
                  letterlock client send_msg \"hello\"\n  \
                  letterlock client recv_msg"
)]
pub struct Cli {
    /// More log output on stderr (-v: debug: connections, TLS version and key exchange, key
    /// ids; -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// No status lines on stderr, and only warnings and errors in the log; errors are still
    /// shown, and content (stdout) is unchanged.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an RSA key pair: DIR/NAME_private.pem (mode 0600) and DIR/NAME_public.pem.
    ///
    /// On a terminal it asks for a passphrase for the private key (hidden, twice; empty for
    /// none). Scripts give one with --passphrase-file FILE or LETTERLOCK_PASSPHRASE; with
    /// neither and no terminal the key is written unencrypted.
    #[command(
        after_help = exit_status!(),
        examples = &[
            "letterlock keygen --name alice",
            "letterlock keygen --name bob --keys bob-keys --bits 4096",
        ]
    )]
    Keygen(Deferred<KeygenArgs>),
    /// Print a key's OpenSSH fingerprint (SHA256:…, as `ssh-keygen -l` prints it) and its
    /// letterlock key id (SPKI-SHA256:…), from a public or private key file.
    #[command(after_help = exit_status!())]
    Fingerprint {
        /// A PEM key file (public or private; an encrypted private key needs its passphrase).
        file: PathBuf,
        /// Print JSON: {"openssh", "key_id", "bits", "file"}.
        #[arg(long)]
        json: bool,
    },
    /// Add, change or remove the passphrase of a private key file (rewritten atomically,
    /// mode 0600).
    #[command(after_help = exit_status!())]
    Passphrase(Deferred<PassphraseCmdArgs>),
    /// Seal a message offline: encrypt it for RECIPIENT and sign it as SENDER.
    #[command(
        after_help = exit_status!(),
        examples = &[
            "letterlock seal -i alice_private.pem -r bob_public.pem -o note.sealed note.txt",
            "echo hello | letterlock seal -i alice_private.pem -r bob_public.pem --armor",
        ]
    )]
    Seal(Deferred<SealArgs>),
    /// Open a sealed message offline: decrypt it, verify the sender's signature.
    #[command(
        after_help = "Exit status: 0 the message verified and its plaintext was written; 1 it \
                      was not opened: it did not verify (changed on the way, signed by another \
                      key than --from's, or sealed to another key; no plaintext is written \
                      then), or it could not be read (a missing file, a wrong passphrase, too \
                      large for stdout): the error on stderr says which; 2 wrong usage.",
        examples = &[
            "letterlock open -i bob_private.pem --from alice_public.pem note.sealed",
            "letterlock open -i bob_private.pem --from alice_public.pem -o note-copy.txt note.sealed",
        ]
    )]
    Open(Deferred<OpenArgs>),
    /// The client: send to the server, or through it to a person (which it cannot read), and
    /// receive; the mailbox, contacts (pinned or from the server's directory) and receipts.
    #[command(
        after_help = "Exit status: each command's own --help says it (`letterlock client COMMAND \
                      --help`); without a command, 2 wrong usage."
    )]
    Client {
        #[command(subcommand)]
        command: Deferred<ClientCommand>,
    },
    /// The server: with no subcommand, run it; or manage its keys and mailbox.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Exit status (running the server): 0 stopped by Ctrl-C or SIGTERM once the \
                      messages in flight were finished; 130 interrupted a second time, stopped \
                      at once (every acknowledged message is already stored); 1 it could not \
                      start or failed (the error is on stderr); 2 wrong usage. Each subcommand's \
                      --help gives its own.",
        examples = &[
            "letterlock server generate_key_pair && letterlock server",
            "letterlock server --listen 0.0.0.0:8000 --retention 30",
        ]
    )]
    Server {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(subcommand)]
        command: Option<Deferred<ServerCommand>>,
    },
    /// A keyless man-in-the-middle: relay, record and print frames, search for a plaintext,
    /// or attack the traffic (--tamper).
    #[command(
        after_help = "Exit status: 0 success (with --expect: the text was NOT found in the \
                            captured bytes); 3 with --expect, the text WAS found; 1 failure (the \
                            error is on stderr); 2 wrong usage.",
        hide_passphrase_file = true
    )]
    Intercept(Deferred<InterceptArgs>),
    /// The one-command tour: keys, a server, an interceptor, every attack, a PASS/FAIL table.
    #[command(
        after_help = "Exit status: 0 when every attack was detected (all PASS), 1 when \
                            one was not or the tour failed; 2 wrong usage.",
        hide_passphrase_file = true
    )]
    Demo,
    /// Measure seal, open and the server on this machine, each beside the bound it could reach.
    #[command(after_help = exit_status!(), hide_passphrase_file = true)]
    Bench(Deferred<BenchArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); docs/DEPLOY.md
    /// says where each shell looks for it.
    #[command(after_help = exit_status!(), hide_passphrase_file = true)]
    Completions(Deferred<completions::CompletionsArgs>),
    /// Write the manual pages (roff), made from these same definitions: to stdout, or one page
    /// per command into DIR with -o DIR (then `man -l DIR/letterlock.1`).
    #[command(after_help = exit_status!(), hide_passphrase_file = true)]
    Man(Deferred<completions::ManArgs>),
}

/// What the `#[command(name = value)]` attributes here and in the submodules call beside clap's
/// own methods.
trait CommandSteps {
    /// `examples = &[LINE, …]`: command lines to copy, shown by `--help` (not `-h`) under
    /// "Examples:", followed by the command's `after_help` (its exit status), so give
    /// `after_help` first in the attribute. A newcomer starts sooner from a line that works than
    /// from the list of options.
    fn examples(self, lines: &[&str]) -> Self;
    /// `--passphrase-file` on a command that reads no key of the user's (demo, bench,
    /// intercept, completions, man): still accepted there, as the global flag is everywhere, but
    /// hidden from its help, where it would promise what it does not do. clap propagates a
    /// global argument only to a command without one of its id, so this one takes its place
    /// there, taking the same value (a path, which these commands never read). It is added
    /// with display orders off, and their count restarted at 0 after it, so that the command's
    /// own arguments are listed in the same order whether they are defined before it or
    /// deferred after it (`deferred.rs`).
    fn hide_passphrase_file(self, hidden: bool) -> Self;
}

impl CommandSteps for clap::Command {
    fn examples(self, lines: &[&str]) -> Self {
        let mut text = String::from("Examples:");
        for line in lines {
            text.push_str("\n  ");
            text.push_str(line);
        }
        if let Some(after) = self.get_after_help() {
            text.push_str("\n\n");
            text.push_str(&after.to_string());
        }
        self.after_long_help(text)
    }

    fn hide_passphrase_file(self, hidden: bool) -> Self {
        let arg = clap::Arg::new("passphrase_file")
            .long("passphrase-file")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .hide(hidden);
        self.next_display_order(None::<usize>)
            .arg(arg)
            .next_display_order(0)
    }
}

#[derive(Args, Debug)]
struct InterceptArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, required_unless_present = "show")]
    listen: Option<String>,
    /// The server to relay to.
    #[arg(long, required_unless_present = "show")]
    upstream: Option<String>,
    /// Attack the traffic this way.
    #[arg(long, value_enum)]
    tamper: Option<crate::intercept::Tamper>,
    /// Record every byte to FILE (print it later with --show FILE). An existing FILE is
    /// refused unless --force; a symbolic link always is. Not `-`: the frames are printed on
    /// stdout.
    #[arg(long, value_name = "FILE", value_parser = capture_file)]
    capture: Option<PathBuf>,
    /// Replace an existing regular file given to --capture (never a symbolic link, a folder,
    /// a device or a pipe).
    #[arg(long, requires = "capture")]
    force: bool,
    /// Search the captured bytes for this plaintext (raw, UTF-16, base64, hex); exit 3 if found.
    /// At least 6 bytes: a shorter text turns up in ciphertext by chance.
    #[arg(long, value_parser = expect_text)]
    expect: Option<String>,
    /// The server's RSA modulus in bytes (256 for 2048 bits), to locate chunks for truncate
    /// and reorder; default: assume the client's, seen in its Auth frame.
    #[arg(long)]
    key_bytes: Option<usize>,
    /// Print a capture file instead of running a proxy; `-` reads it from stdin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "upstream", "tamper", "capture", "key_bytes"])]
    show: Option<PathBuf>,
}

/// `intercept --capture`'s FILE: not stdout (`-`, `/dev/stdout`, …), where intercept prints a
/// line per frame; binary records among those lines would spoil both, and `--show` could not
/// read them back (found by a trial run: `--capture -` made a file named `-`).
fn capture_file(s: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if offline::names_stdout(&path) {
        return Err(
            "not stdout: intercept prints its frames there, and a binary capture would be \
             mixed with them; give a file (then --show FILE, or --show - to read one from stdin)"
                .to_owned(),
        );
    }
    Ok(path)
}

/// `intercept --expect`'s text: at least [`MIN_EXPECT`] bytes. A 1-byte text is in almost any
/// capture, and 4 bytes in one ciphertext byte in four thousand million: a "FOUND" would be
/// chance, not a leak (found by a trial run: `--expect a` reported a plaintext leak).
fn expect_text(s: &str) -> std::result::Result<String, String> {
    if s.len() < MIN_EXPECT {
        return Err(format!(
            "give a text of at least {MIN_EXPECT} bytes (this one has {}): a shorter one turns up \
             in encrypted bytes by chance",
            s.len()
        ));
    }
    Ok(s.to_owned())
}

const MIN_EXPECT: usize = 6;

#[derive(Args, Debug)]
struct BenchArgs {
    /// A reduced set: messages up to 1 MiB (no 16 MiB, no 1 GiB), fewer and shorter runs of
    /// each measurement, every section still run; about a minute in release on a busy 2-core
    /// machine, instead of several.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw throughput against message size as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// RSA key size of the keys the bench generates.
    #[arg(long, default_value_t = keys::DEFAULT_BITS, value_parser = generated_bits())]
    bits: usize,
    /// Also run gpg, `openssl cms`, rage and age where installed, on the same files in the
    /// same run (1 GiB file to file, 4 MiB with --quick, and a 100-byte seal per process),
    /// each command shown with its setup, to run again by hand, and `cp` (no crypto: the
    /// folder's own rate, in the same rounds). The files go to $TMPDIR, which needs about 4
    /// times the file's size free: checked before the run.
    #[arg(long)]
    compare: bool,
    /// The PostgreSQL server of the store section (the bench works in a database of its own
    /// there, dropped afterwards); without it, a throwaway cluster from the installed binaries.
    /// Checked before the run: the bench stops at once when it cannot connect or create a
    /// database there.
    #[arg(long, value_name = "postgres://USER@HOST/DB", value_parser = postgres_url)]
    store_url: Option<String>,
    /// Replace the --plot file if it exists.
    #[arg(long, requires = "plot")]
    force: bool,
    /// Internal: run CMD and print its time and peak RSS (the bench measures other programs
    /// this way; see src/bench/child.rs).
    #[arg(long = "measure-child", hide = true)]
    measure_child: bool,
    /// The command for --measure-child, after `--`.
    #[arg(last = true, hide = true, requires = "measure_child")]
    child: Vec<std::ffi::OsString>,
}

/// `--bits` of a command that generates keys: the sizes [`keys::PrivateKey::generate`] makes,
/// refused as a usage error before anything runs (found by a trial run: `bench --bits 1024`
/// said it was generating keys, then failed).
pub(super) fn generated_bits() -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["2048", "3072", "4096"])
        .try_map(|bits| bits.parse::<usize>())
}

/// `bench --store-url`: a `postgres://` URL the driver can read, else a usage error before
/// anything runs (found by a trial run: `--store-url garbage` was taken, and said so only in
/// the last section).
fn postgres_url(s: &str) -> std::result::Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err("give a URL such as postgres://USER@HOST/DB".into());
    }
    #[cfg(feature = "postgres")]
    s.parse::<tokio_postgres::Config>()
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    Ok(s.to_owned())
}

/// The two ways to encrypt a message.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// RSA-OAEP on every chunk (Part 1): slow, limited to 1 MiB by default.
    Asymmetric,
    /// AES-256-GCM under a fresh key, the key wrapped with RSA-OAEP (Part 2): any size.
    Hybrid,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Asymmetric => Mode::Asymmetric,
            ModeArg::Hybrid => Mode::Hybrid,
        }
    }
}

/// Parses the command line, runs the command, and turns errors into a message and exit code.
pub fn run() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayVersion => {
            let _ = io::Write::write_all(&mut io::stdout(), program_version(&e).as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => help_usage(e, &args).exit(),
    };
    QUIET.store(cli.quiet, Ordering::Relaxed);
    init_logging(cli.verbose, cli.quiet);
    quiet_broken_pipe();
    passphrase::configure(cli.passphrase);
    letterlock::files::on_first_named_file(remove_unfinished_on_signals);
    match dispatch(cli.command) {
        Ok(code) => code,
        // `letterlock … | head`: the reader left; stop quietly, as a SIGPIPE death would.
        Err(e) if closed_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            terminal::print_error(&error_chain(&e));
            print_hint(e.chain());
            // Wrong usage found once running (`intercept --show -` on a terminal): 2, as the
            // --help says, like the usage errors clap finds (found by a review).
            let usage = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<crate::intercept::InterceptError>(),
                    Some(crate::intercept::InterceptError::Usage(_))
                )
            });
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The text of a `--version` (or `-V`) clap made, under the program's name: for a subcommand
/// clap names it by its place in the tree ("letterlock-client-send_msg 0.1.0"), a name no one
/// can run (found by a trial run).
fn program_version(e: &clap::Error) -> String {
    let text = e.render().to_string();
    match text.split_once(' ') {
        Some((_, rest)) => format!("letterlock {rest}"),
        None => text,
    }
}

/// Puts in the usage error `e` the usage line of the command it concerns, as that command's
/// --help shows it, and the hint to run --help: the same for every usage error. clap leaves the
/// line out of some (a missing value, `seal --to`; a value it cannot parse, `--bits x`), and
/// for others (a mistyped flag, a conflict) writes the arguments given instead, each as if it
/// were required (`letterlock client send_msg --server <SERVER> <TEXT>` for `send_msg --server
/// H:P hi --fle f`), which sends a newcomer looking for a rule that does not exist. The command
/// is found by parsing `args` again with errors ignored; the whole tree is built for it, on
/// this error path only. Help and version output pass unchanged.
fn help_usage(mut e: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) || !e.use_stderr()
    {
        return e;
    }
    let mut tree = deferred::whole_tree();
    // Parsed as far as it goes: each subcommand reached, whatever went wrong inside it.
    let Ok(matches) = tree.clone().ignore_errors(true).try_get_matches_from(args) else {
        return e;
    };
    let mut path = Vec::new();
    let mut reached = &matches;
    while let Some((name, sub)) = reached.subcommand() {
        path.push(name);
        reached = sub;
    }
    tree.build();
    let mut cmd = &mut tree;
    for name in path {
        match cmd.find_subcommand_mut(name) {
            Some(sub) => cmd = sub,
            None => return e,
        }
    }
    e.insert(
        ContextKind::Usage,
        ContextValue::StyledStr(cmd.render_usage()),
    );
    if let Some(var) = refused_from_environment(&e, cmd, args) {
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![
                format!(
                    "the value came from the environment variable {var}, not the command line: \
                     fix it, or unset it (`unset {var}`)"
                )
                .into(),
            ]),
        );
    }
    // The hint to run --help, which clap leaves out of an error it makes without the command.
    e.with_cmd(cmd)
}

/// The environment variable an invalid value `e` came from, when the flag it names was not on
/// the command line but is read from a variable that is set (found by a trial run: a bad
/// LETTERLOCK_SERVER was reported as an invalid `--server` to someone who never typed one).
fn refused_from_environment(
    e: &clap::Error,
    cmd: &clap::Command,
    args: &[std::ffi::OsString],
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split(' ').next()?;
    let given = args.iter().filter_map(|a| a.to_str()).any(|a| {
        a.strip_prefix("--")
            .is_some_and(|rest| rest == long || rest.starts_with(&format!("{long}=")))
    });
    let var = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?;
    (!given && std::env::var_os(var).is_some()).then(|| var.to_owned())
}

/// A `--keys` or `--store` value, `~` or `~/…` at its start taken as the home folder (`$HOME`),
/// as gpg takes its `--homedir`: such a value reaches us unexpanded from a quoted argument or
/// an environment variable (`LETTERLOCK_KEYS=~/keys` in a unit file), and was a folder named
/// `~` made in the working folder, said as `~/keys` as if it were the home one (found by a
/// trial run; a later `rm -rf ~/…` would hit the real one). Without a home folder it is wrong
/// usage. Any other value is taken as it is, in any encoding.
fn home_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().try_map(expand_home)
}

/// `value` as a path, a `~` or `~/…` at its start replaced by `$HOME` ([`home_path`]).
fn expand_home(value: std::ffi::OsString) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    let Ok(rest) = path.strip_prefix("~") else {
        return Ok(path);
    };
    match std::env::var_os("HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => Ok(home.join(rest)),
        _ => Err(format!(
            "{} starts with ~, but HOME names no home folder to put in its place: give the \
             folder's full path",
            path.display()
        )),
    }
}

/// A `--server` value: HOST:PORT with a port from 1 to 65535, checked as the line is parsed so
/// that a mistyped address is wrong usage (exit status 2), said before any key is read or
/// passphrase asked (found by a trial run: no port, or port 99999, exited 1 after a hint that
/// asked whether a server runs there).
pub(super) fn server_address(text: &str) -> Result<String, String> {
    host_port(text, 1)
}

/// A `--listen` value: HOST:PORT, where port 0 picks a free one.
pub(super) fn listen_address(text: &str) -> Result<String, String> {
    host_port(text, 0)
}

/// HOST:PORT (an IPv6 host in brackets: `[::1]:8000`), the port at least `lowest`.
fn host_port(text: &str, lowest: u16) -> Result<String, String> {
    let example = "give HOST:PORT, e.g. 127.0.0.1:8000";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("no port: {example}"));
    };
    if host.is_empty() {
        return Err(format!("no host: {example}"));
    }
    // Brackets hold an IPv6 address, with its scope if any (`[fe80::1%2]`), and nothing else
    // (`[]:80` passed once, to fail later).
    if host.starts_with('[') && host.ends_with(']') {
        if format!("{host}:0")
            .parse::<std::net::SocketAddrV6>()
            .is_err()
        {
            return Err(format!(
                "{host} is not an IPv6 address in brackets, e.g. [::1]:8000; {example}"
            ));
        }
    } else if host.contains([':', '[', ']']) {
        return Err(format!(
            "an IPv6 address goes in brackets, e.g. [::1]:8000; {example}"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p >= lowest => Ok(text.to_owned()),
        _ => Err(format!(
            "the port must be a number from {lowest} to 65535; {example}"
        )),
    }
}

/// `e`, said as a full disk under `output` when that is what it is: the library's I/O error
/// names no file, and a full disk is about where the output goes (found by a trial run: "No
/// space left on device" without a path).
pub(super) fn full_disk_names(e: anyhow::Error, output: &Path) -> anyhow::Error {
    if has_io_error(e.as_ref(), io::ErrorKind::StorageFull) {
        e.context(format!(
            "cannot write {}: the disk it is on is full",
            output.display()
        ))
    } else {
        e
    }
}

/// Whether `e` comes from writing to stdout, a pipe whose reader has gone. A broken pipe alone
/// is not enough: a connection to the server that broke says so too, and must be reported,
/// not taken for `| head` leaving.
pub(super) fn closed_pipe(e: &anyhow::Error) -> bool {
    has_io_error(e.as_ref(), io::ErrorKind::BrokenPipe) && reader_gone(io::stdout().as_fd())
}

/// Whether an I/O error of `kind` is `e` or one of its causes.
fn has_io_error(e: &(dyn std::error::Error + 'static), kind: io::ErrorKind) -> bool {
    hints::chain(e).any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// Whether `fd` is the write end of a pipe with no reader left (Linux reports `POLLERR` on it),
/// or a socket whose peer has gone (`POLLHUP`).
fn reader_gone(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds
            .first()
            .and_then(PollFd::revents)
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// The error and its causes, each cause shown once: library errors often already quote their
/// source, and repeating it ("…: Address in use: Address in use") only adds noise.
pub(super) fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// `letterlock … | head` closes our stdout early; `println!` then panics with a backtrace.
/// Behave like other Unix tools instead: stop quietly with the status a SIGPIPE death gives.
/// Nothing is lost by stopping there: a message is acknowledged only after it was shown.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let printing = message.contains("failed printing to stdout")
            || message.contains("failed printing to stderr");
        if printing && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match verbose {
        _ if quiet => "warn",
        // PostgreSQL's notices ("relation … already exists, skipping" at every migration)
        // come through tokio-postgres at info: seen with -v.
        0 => "info,tokio_postgres=warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(e) => {
            // Said, not passed over (found by a trial run): a typo in RUST_LOG would otherwise
            // leave the user wondering where the log went.
            if std::env::var_os("RUST_LOG").is_some() {
                eprintln!(
                    "letterlock: warning: RUST_LOG is not a log filter ({}); using -v/-q's",
                    letterlock::text::line(&e.to_string())
                );
            }
            tracing_subscriber::EnvFilter::new(default)
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .with_ansi(terminal::colour(io::stderr().is_terminal()))
        .try_init();
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Keygen(Deferred(a)) => {
            // `keygen --name server` makes the server's pair as `server generate_key_pair`
            // does; its mailbox is where server commands find it (LETTERLOCK_STORE, else
            // beside the keys).
            let store = std::env::var_os("LETTERLOCK_STORE")
                .map(expand_home)
                .transpose()
                .map_err(|e| anyhow::anyhow!("LETTERLOCK_STORE: {e}"))?;
            keygen(&a.out, &a.name, a.bits, a.force, store.as_deref())
        }
        Command::Fingerprint { file, json } => fingerprint(&file, json),
        Command::Passphrase(Deferred(a)) => change_passphrase(a),
        Command::Seal(Deferred(a)) => seal(a),
        Command::Open(Deferred(a)) => open(a),
        Command::Bench(Deferred(a)) => {
            if a.measure_child {
                return Ok(crate::bench::measure_child(&a.child)?);
            }
            let opts = crate::bench::BenchOptions {
                quick: a.quick,
                bits: a.bits,
                compare: a.compare,
                store_url: a.store_url,
            };
            // Checked before a run of minutes, not after it.
            if let Some(path) = &a.plot {
                crate::bench::check_plot_path(path, a.force)?;
            }
            if let Some(url) = &opts.store_url {
                crate::bench::check_store_url(url)?;
            }
            crate::bench::check_free_space(&opts)?;
            let report = bench_until_stopped(opts)?;
            // The results first: should the plot fail now, the run is not lost.
            if a.json {
                crate::bench::write_json(&report, io::stdout().lock())?;
            } else {
                print!("{}", crate::bench::table(&report));
            }
            if let Some(path) = &a.plot {
                io::Write::flush(&mut io::stdout())?;
                crate::bench::plot(&report, path, a.force)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Client {
            command: Deferred(command),
        } => match command {
            ClientCommand::GenerateKeyPair(Deferred(a)) => {
                keygen(&a.keys, "client", a.bits, a.force, None)
            }
            ClientCommand::SendMsg(Deferred(a)) => {
                a.message.note_text_naming_a_file();
                client::refuse_over_asymmetric(&a)?;
                let not_taken = match agent::hand_over(&a)? {
                    agent::HandOver::Answered(code) => return Ok(code),
                    agent::HandOver::NotTaken(not_taken) => not_taken,
                };
                // `--to` records what it relays on a worker thread (`block_in_place`).
                let sent = if a.to.is_some() {
                    runtime()?.block_on(client_send(a))
                } else {
                    run_once(client_send(a))
                };
                sent.map_err(|e| match not_taken {
                    Some(not_taken) => not_taken.explain(e),
                    None => e,
                })
                .or_else(client::said_as_a_send)
            }
            ClientCommand::Agent(Deferred(a)) => one_shot_runtime()?.block_on(agent::run(a)),
            ClientCommand::RecvMsg(Deferred(a)) => run_once(client_recv(a)),
            ClientCommand::Inbox(Deferred(a)) => runtime()?.block_on(mailbox::client_inbox(a)),
            ClientCommand::Read(Deferred(a)) => runtime()?.block_on(mailbox::client_read(a)),
            ClientCommand::TrustServer(Deferred(a)) => trust_server::run(a),
            ClientCommand::Trust(Deferred(a)) => contacts::trust(&a),
            ClientCommand::Untrust(Deferred(a)) => contacts::untrust(&a),
            ClientCommand::Contacts(Deferred(a)) => runtime()?.block_on(contacts::contacts(a)),
            ClientCommand::Receipts(Deferred(a)) => runtime()?.block_on(contacts::receipts(a)),
        },
        Command::Server { serve, command } => match command {
            None => runtime()?.block_on(serve_cmd(serve)),
            Some(Deferred(command)) => server::command(command),
        },
        Command::Intercept(Deferred(a)) => Ok(runtime()?.block_on(crate::intercept::command(
            crate::intercept::Options {
                listen: a.listen,
                upstream: a.upstream,
                tamper: a.tamper,
                capture: a.capture,
                force: a.force,
                expect: a.expect,
                key_bytes: a.key_bytes,
                show: a.show,
            },
        ))?),
        Command::Demo => Ok(runtime()?.block_on(crate::demo::run())?),
        Command::Completions(Deferred(a)) => completions::completions(&a),
        Command::Man(Deferred(a)) => completions::man(&a),
    }
}

// Network commands

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from this call on: the future completes on either.
/// Call it before telling anyone the command is ready (the server's "listening" line, the
/// interceptor's "intercepting"): a signal that comes before a handler is installed takes its
/// default action and kills the process, so a script that stops it right after that line would
/// get no clean shutdown, no summary and no exit status of ours. Within a Tokio runtime.
pub(crate) fn stop_signals() -> io::Result<impl std::future::Future<Output = ()>> {
    let stop = stop_signal_status()?;
    Ok(async move {
        stop.await;
    })
}

/// [`stop_signals`], completing with the exit status a shell gives a command that signal
/// killed (130 for Ctrl-C, 143 for SIGTERM), for a command that stops by exiting with it.
fn stop_signal_status() -> io::Result<impl std::future::Future<Output = i32>> {
    use tokio::signal::unix::{SignalKind, signal};
    STOPS_ON_SIGNALS.store(true, Ordering::Relaxed);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => 128 + signal_hook::consts::SIGINT,
            _ = terminate.recv() => 128 + signal_hook::consts::SIGTERM,
        }
    })
}

/// Runs the bench on a thread of its own, and waits for it or for Ctrl-C or SIGTERM. Stopped,
/// it removes what the run made ([`crate::bench::undo_run`]: temporary files, the programs
/// and the throwaway PostgreSQL it started) and exits as the signal would have (130, 143);
/// killed by the signal instead, it left a mailbox in $TMPDIR (found by a trial run).
fn bench_until_stopped(opts: crate::bench::BenchOptions) -> Result<crate::bench::Report> {
    let runtime = one_shot_runtime()?;
    runtime.block_on(async {
        let stop = stop_signal_status()?;
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("letterlock-bench".into())
            .spawn(move || {
                let _ = done.send(crate::bench::run(&opts));
            })?;
        tokio::select! {
            report = result => {
                let report = report.map_err(|_| anyhow::anyhow!("the bench ended without a result"))?;
                Ok(report?)
            }
            status = stop => {
                crate::bench::undo_run();
                eprintln!("letterlock bench: stopped; its temporary files are removed");
                std::process::exit(status)
            }
        }
    })
}

/// Set once a command handles Ctrl-C and SIGTERM itself ([`stop_signals`]): it stops cleanly
/// and lets the files it writes finish, so [`remove_unfinished_on_signals`] leaves them be.
static STOPS_ON_SIGNALS: AtomicBool = AtomicBool::new(false);

/// Where output files cannot be written without a name ([`letterlock::files`]: another file
/// system than Linux's usual ones), a command stopped by Ctrl-C, SIGTERM or SIGHUP removes the
/// named temporary files it is writing, an opened plaintext not yet verified among them, then
/// takes the signal's default action (a shell sees it killed by that signal, as before). Set
/// as the library's hook ([`letterlock::files::on_first_named_file`]): started only when such a
/// file is about to be written, so a command whose files have no name pays nothing.
fn remove_unfinished_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let watching = std::thread::Builder::new()
        .name("letterlock-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if STOPS_ON_SIGNALS.load(Ordering::Relaxed) {
                    continue;
                }
                letterlock::files::remove_unfinished();
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            }
        });
    if let Err(e) = watching {
        tracing::debug!(%e, "cannot watch for signals");
    }
}

/// The runtime of a command that makes one connection and ends: a single thread, which does
/// the network I/O and the handshake, while sealing and opening still run on the blocking pool.
/// Worker threads cost such a command more than they give: starting and stopping them, and a
/// hand-over between threads at every step of the exchange (`client send_msg` p50 14.2 ms with
/// worker threads, 12.2 ms without, the two taking turns on 2 cores:
/// docs/PERFORMANCE-HISTORY.md, "Previous full run (commit 352946c)"). Not for code that calls
/// `block_in_place`.
fn one_shot_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs a one-shot command on [`one_shot_runtime`], then ends without waiting for the blocking
/// pool's idle threads to wake and exit (0.3–0.6 ms of a `send_msg` with strace, and about 60
/// page faults; `recv_msg` −1.9 ms paired: docs/PERFORMANCE-HISTORY.md, "Eighth session"): the
/// process ends right after, and ending it stops them. Only for commands that await all the
/// work they start, as `send_msg` and `recv_msg` do (their sealing, opening and mailbox writes
/// are awaited before they print their outcome); a task still running is one whose result the
/// command no longer wants, and it writes nothing that outlives the process.
fn run_once(command: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    let runtime = one_shot_runtime()?;
    let outcome = runtime.block_on(command);
    runtime.shutdown_background();
    outcome
}

/// The size of `path` when it names a regular file: not `-` (stdin), a device, a pipe or
/// something missing. A size known before reading lets a command decide how to read, or
/// refuse, first.
fn regular_file_len(path: &Path) -> Option<u64> {
    if path == Path::new("-") {
        return None;
    }
    std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
}

/// The refusal of a message known before it is read to be over the asymmetric limit, `what`
/// (its file) named with its size: made before the message is read, the key loaded (no
/// passphrase asked for it) or a connection made.
fn over_asymmetric_limit(limit: u64, what: &str, len: u64) -> anyhow::Error {
    let e = letterlock::envelope::SealError::TooLargeForAsymmetric { limit };
    let said = format!("{e}: {what} is {}", letterlock::text::ByteCount(len));
    anyhow::Error::new(e).context(said)
}

/// Loads `DIR/NAME_private.pem`, saying which command makes it when it is missing.
fn own_key(dir: &Path, name: &str) -> Result<keys::PrivateKey> {
    Ok(own_key_protected(dir, name)?.0)
}

/// Loads a private key the user owns, asking for its passphrase only if it is encrypted
/// ([`passphrase::for_key`]: `--passphrase-file`, `LETTERLOCK_PASSPHRASE`, the terminal, which
/// gets three tries).
/// Every command that reads a private key goes through here.
fn load_own_private(path: &Path) -> Result<keys::PrivateKey> {
    Ok(load_own_private_protected(path)?.0)
}

/// Makes this process non-dumpable and its core file size 0, as ssh-agent and gpg-agent do,
/// before it reads a private key: neither a core file (after a crash, or a `SIGBUS` from an
/// input file truncated under a mapped read, `letterlock::mapped`) nor a process of the same
/// user (ptrace, `/proc/PID/mem`, `/proc/PID/environ`) may read the key. Root still can.
fn keep_memory_private() -> Result<()> {
    use anyhow::Context as _;
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .context("cannot set the core file size limit to 0 (RLIMIT_CORE)")?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    nix::sys::prctl::set_dumpable(false)
        .context("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE)")?;
    Ok(())
}

/// [`load_own_private`], and whether the file was passphrase-protected.
fn load_own_private_protected(path: &Path) -> Result<(keys::PrivateKey, bool)> {
    keep_memory_private()?;
    let protected = std::cell::Cell::new(false);
    let ask = |attempt| {
        protected.set(true);
        passphrase::for_key(path, attempt)
    };
    let key = keys::load_private_with(path, passphrase::source(&ask))?;
    // A key stored without its passphrase, where one was expected (found by a trial run: a
    // server key replaced by `generate_key_pair --force` without one ran on, the service's
    // --passphrase-file unread, and nothing said so).
    if let Some(file) = passphrase::file_flag().filter(|_| !protected.get()) {
        tracing::warn!(
            key = %path.display(),
            passphrase_file = %file.display(),
            "--passphrase-file was given, but the private key is not passphrase-protected: \
             anyone who can read the key file has the key (`letterlock passphrase` adds one)"
        );
    }
    Ok((key, protected.get()))
}

/// [`own_key`], and whether its file is passphrase-protected.
fn own_key_protected(dir: &Path, name: &str) -> Result<(keys::PrivateKey, bool)> {
    load_own_private_protected(&own_key_path(dir, name)?)
}

/// `DIR/NAME_private.pem`, if it exists; otherwise an error saying which command makes it.
fn own_key_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let (path, _) = keys::pair_paths(dir, name);
    if !path.exists() {
        bail!(
            "{} not found; pass --keys DIR, the folder that holds it (or, to start afresh, \
             create one with `letterlock {name} generate_key_pair --keys {}`)",
            path.display(),
            dir.display()
        );
    }
    Ok(path)
}

/// Loads the public key file a trust command is given (`client trust`, `server trust`) for the
/// peer `name`. A private key is refused, whatever its file's mode: trusting a peer takes their
/// public key only, and a private key that reached us is no longer its owner's alone, which
/// they need to hear (the hint says so) rather than have it kept quietly.
fn peer_public_key_file(file: &Path, name: &str) -> Result<PublicKey> {
    keys::load_public(file).map_err(|e| match e.cause() {
        keys::KeyError::WrongPemBlock {
            expected: keys::KeyKind::Public,
            found,
        } if found.contains("PRIVATE KEY") => hints::hinted(
            e.to_string(),
            format!(
                "trust takes a public key: ask {name}'s owner for theirs (their *_public.pem). \
                 This private key has been shared: if it is theirs, tell them, as they need a \
                 new key pair; if it is your own, its public key is `openssl pkey -in {} \
                 -pubout`",
                file.display()
            ),
        ),
        _ => e.into(),
    })
}

fn peer_key(dir: &Path, name: &str) -> Result<PublicKey> {
    let (_, path) = keys::pair_paths(dir, name);
    if !path.exists() {
        // The client can fetch the server's key itself, checking its fingerprint.
        let fetch = if name == "server" {
            format!(
                ", or fetch it with `letterlock client trust-server HOST:PORT --keys {}`",
                dir.display()
            )
        } else {
            String::new()
        };
        bail!(
            "{} not found; copy the {name}'s public key there (the {name} makes it with \
             `letterlock {name} generate_key_pair`){fetch}",
            path.display()
        );
    }
    Ok(keys::load_public(&path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk names the output it was for; any other failure is left as it was.
    #[test]
    fn a_full_disk_names_the_output() {
        let output = Path::new("/somewhere/out.sealed");
        let full = anyhow::Error::new(io::Error::from(io::ErrorKind::StorageFull))
            .context("I/O error while sealing");
        let said = error_chain(&full_disk_names(full, output));
        assert!(
            said.starts_with("cannot write /somewhere/out.sealed: the disk it is on is full"),
            "{said}"
        );
        let other = anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied));
        let said = error_chain(&full_disk_names(other, output));
        assert!(!said.contains("out.sealed"), "{said}");
    }

    #[test]
    fn an_address_needs_a_host_and_a_port_in_range() {
        for good in [
            "127.0.0.1:8000",
            "localhost:1",
            "[::1]:65535",
            "[fe80::1]:8000",
            "[fe80::1%2]:8000",
            "example.org:443",
        ] {
            assert_eq!(server_address(good).as_deref(), Ok(good));
        }
        for bad in [
            "127.0.0.1",
            ":8000",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "h:0",
            "::1:8000",
            "h:x",
            "[]:80",
            "[localhost]:80",
            "[::1:80",
        ] {
            assert!(server_address(bad).is_err(), "{bad}");
        }
        assert_eq!(listen_address("127.0.0.1:0").as_deref(), Ok("127.0.0.1:0"));
        assert!(listen_address("127.0.0.1").is_err());
    }

    /// Only a pipe whose reader has gone counts as `| head` leaving; a pipe still read does not
    /// (nor does a broken connection to the server, whose error says "broken pipe" too).
    #[test]
    fn a_pipe_counts_as_closed_only_once_its_reader_has_gone() {
        let (reader, writer) = io::pipe().unwrap();
        assert!(!reader_gone(writer.as_fd()));
        drop(reader);
        assert!(reader_gone(writer.as_fd()));
    }
}
