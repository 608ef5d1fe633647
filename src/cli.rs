//! The command line: clap definitions and what each command does. The binary only calls [`run`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use letterlock::envelope::{self, Mode, OpenError, OpenOptions, SealError, SealOptions, armor};
use letterlock::files::{self, AtomicFile, WriteOptions};
use letterlock::keys::{self, Identity, KeyError, PublicKey};

/// Largest message `open` holds in memory to print on stdout: above it, use `-o FILE`, which
/// streams to disk and renames only once the message verified.
pub const STDOUT_LIMIT: u64 = 64 * 1024 * 1024;
/// Inputs larger than this get a progress bar when stderr is a terminal.
const PROGRESS_THRESHOLD: u64 = 4 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "letterlock",
    version,
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
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an RSA key pair: DIR/NAME_private.pem (mode 0600) and DIR/NAME_public.pem.
    Keygen(KeygenArgs),
    /// Print the SHA256 fingerprint (key id) of a public or private key file.
    Fingerprint {
        /// A PEM key file (public or private).
        file: PathBuf,
    },
    /// Seal a message offline: encrypt it for RECIPIENT and sign it as SENDER.
    Seal(SealArgs),
    /// Open a sealed message offline: decrypt it, verify the sender's signature.
    Open(OpenArgs),
    /// The client side of the original walk-through.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The server: with no subcommand, run it; or manage its keys and mailbox.
    #[command(args_conflicts_with_subcommands = true)]
    Server {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(subcommand)]
        command: Option<ServerCommand>,
    },
    /// A keyless man-in-the-middle: relay, record and print frames, search for a plaintext,
    /// or attack the traffic (--tamper).
    Intercept(InterceptArgs),
    /// The one-command tour: keys, a server, an interceptor, every attack, a PASS/FAIL table.
    Demo,
    /// Measure seal, open and the server on this machine, each beside the bound it could reach.
    Bench(BenchArgs),
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
    /// Record every byte to FILE (print it later with --show FILE).
    #[arg(long)]
    capture: Option<PathBuf>,
    /// Search the captured bytes for this plaintext (raw, UTF-16, base64, hex); exit 1 if found.
    #[arg(long)]
    expect: Option<String>,
    /// The server's RSA modulus in bytes (256 for 2048 bits), to locate chunks for truncate
    /// and reorder; default: assume the client's, seen in its Auth frame.
    #[arg(long)]
    key_bytes: Option<usize>,
    /// Print a capture file instead of running a proxy.
    #[arg(long, conflicts_with_all = ["listen", "upstream", "tamper", "capture", "key_bytes"])]
    show: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// A reduced set (smaller sizes, fewer iterations, no 1 GiB): well under 30 s in release.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw throughput against message size as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// RSA key size of the keys the bench generates.
    #[arg(long, default_value_t = keys::DEFAULT_BITS)]
    bits: usize,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Name of the pair: files NAME_private.pem and NAME_public.pem.
    #[arg(long)]
    name: String,
    /// Folder to write the files into.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Modulus size in bits: 2048, 3072 or 4096.
    #[arg(long, default_value_t = keys::DEFAULT_BITS)]
    bits: usize,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct PairArgs {
    /// Folder that holds the key files.
    #[arg(long, default_value = ".")]
    keys: PathBuf,
    /// Modulus size in bits: 2048, 3072 or 4096.
    #[arg(long, default_value_t = keys::DEFAULT_BITS)]
    bits: usize,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Generate the client's key pair: client_private.pem and client_public.pem.
    #[command(name = "generate_key_pair")]
    GenerateKeyPair(PairArgs),
    /// Seal a message for the server and send it; prints "delivered" only once the server
    /// proved it decrypted and stored the message.
    #[command(name = "send_msg")]
    SendMsg(ClientSendArgs),
    /// Fetch, verify and print (or save) every message the server holds for this client.
    #[command(name = "recv_msg")]
    RecvMsg(RecvArgs),
}

#[derive(Args, Debug)]
struct ClientConn {
    /// Folder with client_private.pem and server_public.pem.
    #[arg(long, default_value = ".")]
    keys: PathBuf,
    /// Address of the server.
    #[arg(long, default_value = "127.0.0.1:8000")]
    server: String,
}

/// What to send and how: the message arguments `client send_msg` and `server send_msg` share.
#[derive(Args, Debug)]
struct MessageArgs {
    /// The message text (or use --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    text: Option<String>,
    /// Send the contents of a file instead (`-` for stdin); any size in hybrid mode.
    #[arg(long)]
    file: Option<PathBuf>,
    /// How to encrypt: hybrid (AES-256-GCM, any size) or asymmetric (RSA only, up to 1 MiB).
    #[arg(long, value_enum, default_value = "hybrid")]
    mode: ModeArg,
}

impl MessageArgs {
    /// The message's bytes: the text argument, or `--file` (`-` for stdin).
    fn input(&self) -> Result<Box<dyn Read + Send>> {
        Ok(match (&self.text, &self.file) {
            (Some(text), _) => Box::new(io::Cursor::new(text.as_bytes().to_vec())),
            (None, Some(p)) if p == Path::new("-") => Box::new(io::stdin()),
            (None, Some(p)) if p.is_dir() => bail!("{} is a folder, not a file", p.display()),
            (None, Some(p)) => file_reader(p)?,
            (None, None) => bail!("give the message text or --file"),
        })
    }
}

#[derive(Args, Debug)]
struct ClientSendArgs {
    #[command(flatten)]
    message: MessageArgs,
    /// Largest plaintext to send in asymmetric mode, in bytes (the server has its own limit).
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    max_asymmetric: u64,
    #[command(flatten)]
    conn: ClientConn,
}

#[derive(Args, Debug)]
struct RecvArgs {
    #[command(flatten)]
    conn: ClientConn,
    /// Save each message as DIR/<message id>.msg instead of printing it.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// If nothing is waiting, keep asking for up to this many seconds.
    #[arg(long, default_value_t = 0)]
    wait: u64,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Folder with server_private.pem and the trusted client keys (client_public.pem,
    /// clients/NAME.pem).
    #[arg(long, default_value = ".")]
    keys: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// The mailbox database (bodies over 64 KiB live in a folder beside it).
    #[arg(long, default_value = "letterlock-server.db")]
    store: PathBuf,
    /// Which modes to accept.
    #[arg(long, value_enum, default_value = "both")]
    accept: AcceptArg,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a message's creation time may differ from the server's clock.
    #[arg(long, default_value_t = 600)]
    time_window: u64,
    /// Largest hybrid message accepted, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_message: u64,
    /// Largest asymmetric message accepted, in bytes.
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    max_asymmetric: u64,
    /// Do not log the text of short messages (by default the server prints it, as the
    /// classroom server did); log only sender, size and id.
    #[arg(long)]
    no_log_text: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AcceptArg {
    Both,
    Hybrid,
    Asymmetric,
}

#[derive(Subcommand, Debug)]
enum ServerCommand {
    /// Generate the server's key pair: server_private.pem and server_public.pem.
    #[command(name = "generate_key_pair")]
    GenerateKeyPair(PairArgs),
    /// Seal a message from the server to client NAME and queue it in the store; a running
    /// server delivers it at that client's next recv_msg.
    #[command(name = "send_msg")]
    SendMsg(ServerSendArgs),
    /// List the messages clients sent.
    Inbox {
        /// The server's mailbox database (its --store).
        #[arg(long, default_value = "letterlock-server.db")]
        store: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Open a received message again (it is kept sealed at rest).
    Read {
        /// Message id, or a unique prefix of it.
        id: String,
        /// Folder with server_private.pem and the trusted client keys.
        #[arg(long, default_value = ".")]
        keys: PathBuf,
        /// The server's mailbox database (its --store).
        #[arg(long, default_value = "letterlock-server.db")]
        store: PathBuf,
        /// Write the plaintext to FILE instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Trust a client's public key under NAME (copies it to KEYS/clients/NAME.pem).
    Trust {
        /// The client's public key file.
        public_key: PathBuf,
        /// The name the client is known by (logs, `server send_msg --to NAME`).
        #[arg(long)]
        name: String,
        /// The server's key folder; the key is written to KEYS/clients/NAME.pem.
        #[arg(long, default_value = ".")]
        keys: PathBuf,
    },
}

#[derive(Args, Debug)]
struct ServerSendArgs {
    /// The trusted client to send to (`client` for client_public.pem).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    message: MessageArgs,
    /// Folder with server_private.pem and the trusted client keys.
    #[arg(long, default_value = ".")]
    keys: PathBuf,
    /// The server's mailbox database (its --store).
    #[arg(long, default_value = "letterlock-server.db")]
    store: PathBuf,
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

#[derive(Args, Debug)]
struct SealArgs {
    /// The sender's private key (signs the message).
    #[arg(long)]
    from: PathBuf,
    /// The recipient's public key (only its private key can open the message).
    #[arg(long)]
    to: PathBuf,
    /// How to encrypt: hybrid (AES-256-GCM, any size) or asymmetric (RSA only, up to 1 MiB).
    #[arg(long, value_enum, default_value = "hybrid")]
    mode: ModeArg,
    /// Where to write the sealed message (default: stdout).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write base64 text between BEGIN/END lines instead of binary.
    #[arg(long)]
    armor: bool,
    /// Largest plaintext accepted in asymmetric mode, in bytes.
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    max_asymmetric: u64,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// The message to seal; `-` or nothing reads stdin.
    input: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct OpenArgs {
    /// The recipient's private key.
    #[arg(long)]
    key: PathBuf,
    /// The public key of the sender you expect; anything signed by another key is refused.
    #[arg(long)]
    from: PathBuf,
    /// Where to write the plaintext. It appears only once the message verified.
    /// Without it, plaintext goes to stdout, up to 64 MiB.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Largest plaintext accepted in asymmetric mode, in bytes.
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    max_asymmetric: u64,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// The sealed message (binary or armored); `-` or nothing reads stdin.
    input: Option<PathBuf>,
}

/// Parses the command line, runs the command, and turns errors into a message and exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    quiet_broken_pipe();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("letterlock: error: {}", error_chain(&e));
            print_hint(e.chain());
            ExitCode::FAILURE
        }
    }
}

/// Prints the hint for the first error in `chain` (an error and its causes) that has one.
fn print_hint<'a>(mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) {
    if let Some(hint) = chain.find_map(hint) {
        eprintln!("letterlock: hint: {hint}");
    }
}

/// What the user can do about a library error, in terms of this command line. The library says
/// what failed; only the command line knows its flags and commands (as rage does).
fn hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = e.downcast_ref::<KeyError>() {
        return key_hint(e.cause(), e);
    }
    if let Some(e) = e.downcast_ref::<SealError>() {
        return match e {
            SealError::TooLargeForAsymmetric { .. } => {
                Some("use --mode hybrid for large messages (or raise --max-asymmetric)".into())
            }
            SealError::Key(k) => key_hint(k.cause(), k),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<letterlock::store::StoreError>() {
        use letterlock::store::StoreError;
        return match e {
            StoreError::BadIdPrefix { .. } | StoreError::NotFound { .. } => {
                Some("`letterlock server inbox` lists the message ids".into())
            }
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<letterlock::client::ClientError>() {
        use letterlock::client::ClientError;
        return match e {
            ClientError::Connect { .. } => {
                Some("is `letterlock server` running there? Check --server (HOST:PORT)".into())
            }
            ClientError::WrongServer { .. } => Some(
                "check server_public.pem: it must be the public key of the server you meant".into(),
            ),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<OpenError>() {
        return match e {
            OpenError::UntrustedSender { .. } => Some(
                "check --from (the sender's public key), or the server's trusted clients \
                 (`letterlock server trust`)"
                    .into(),
            ),
            OpenError::TooLarge { .. } => {
                Some("raise --max-asymmetric if you expect a message this large".into())
            }
            _ => None,
        };
    }
    None
}

/// The hint for a key error; `outer` is the error with the file it came from, if any.
fn key_hint(e: &KeyError, outer: &KeyError) -> Option<String> {
    let path = match outer {
        KeyError::InFile { path, .. } => Some(path.display().to_string()),
        _ => None,
    };
    Some(match e {
        KeyError::Exists { .. } => "pass --force to replace it".into(),
        KeyError::Permissions { path, .. } => {
            format!("run `chmod 600 {}` and try again", path.display())
        }
        KeyError::TooSmall => {
            "make a new key with `letterlock keygen` (3072 bits by default)".into()
        }
        KeyError::GenerateSize { .. } => "choose --bits 2048, 3072 or 4096".into(),
        KeyError::Encrypted => {
            let key = path.unwrap_or_else(|| "KEY".into());
            format!(
                "write an unencrypted copy with `openssl pkey -in {key} -out {key}.plain` \
                 and keep it mode 0600"
            )
        }
        KeyError::WrongPemBlock {
            expected: keys::KeyKind::Public,
            ..
        } => "use the *_public.pem file".into(),
        KeyError::WrongPemBlock {
            expected: keys::KeyKind::Private,
            ..
        } => "use the *_private.pem file".into(),
        KeyError::NotRegularFile { .. } => {
            "key files are regular files; choose another path".into()
        }
        KeyError::FileTooLarge { .. } => "key files are a few KiB; is this the right file?".into(),
        KeyError::TrustedTwice { .. } => "remove one of the files".into(),
        KeyError::NameTaken { .. } => "rename one of the files".into(),
        KeyError::BadName { .. } => {
            "name client keys NAME.pem with letters, digits, '-', '_' or '.'".into()
        }
        _ => return None,
    })
}

/// The error and its causes, each cause shown once: library errors often already quote their
/// source, and repeating it ("…: Address in use: Address in use") only adds noise.
fn error_chain(e: &anyhow::Error) -> String {
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
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Keygen(a) => keygen(&a.out, &a.name, a.bits, a.force),
        Command::Fingerprint { file } => {
            let key = keys::load_any_public(&file)?;
            println!("{} ({} bits, RSA) {}", key.id(), key.bits(), file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Seal(a) => seal(a),
        Command::Open(a) => open(a),
        Command::Bench(a) => {
            let report = crate::bench::run(&crate::bench::BenchOptions {
                quick: a.quick,
                bits: a.bits,
            })?;
            if let Some(path) = &a.plot {
                crate::bench::plot(&report, path)?;
            }
            if a.json {
                crate::bench::write_json(&report, io::stdout().lock())?;
            } else {
                print!("{}", crate::bench::table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Client { command } => match command {
            ClientCommand::GenerateKeyPair(a) => keygen(&a.keys, "client", a.bits, a.force),
            ClientCommand::SendMsg(a) => runtime()?.block_on(client_send(a)),
            ClientCommand::RecvMsg(a) => runtime()?.block_on(client_recv(a)),
        },
        Command::Server { serve, command } => match command {
            None => runtime()?.block_on(serve_cmd(serve)),
            Some(ServerCommand::GenerateKeyPair(a)) => keygen(&a.keys, "server", a.bits, a.force),
            Some(ServerCommand::SendMsg(a)) => runtime()?.block_on(server_send(a)),
            Some(ServerCommand::Inbox { store, json }) => runtime()?.block_on(inbox(&store, json)),
            Some(ServerCommand::Read {
                id,
                keys,
                store,
                output,
            }) => runtime()?.block_on(read_inbox(&id, &keys, &store, output.as_deref())),
            Some(ServerCommand::Trust {
                public_key,
                name,
                keys,
            }) => trust(&public_key, &name, &keys),
        },
        Command::Intercept(a) => Ok(runtime()?.block_on(crate::intercept::command(
            crate::intercept::Options {
                listen: a.listen,
                upstream: a.upstream,
                tamper: a.tamper,
                capture: a.capture,
                expect: a.expect,
                key_bytes: a.key_bytes,
                show: a.show,
            },
        ))?),
        Command::Demo => Ok(runtime()?.block_on(crate::demo::run())?),
    }
}

fn keygen(dir: &Path, name: &str, bits: usize, force: bool) -> Result<ExitCode> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("key name {name:?} is not a plain file name");
    }
    let key = keys::generate_pair_files(dir, name, bits, force)?;
    let (private, public) = keys::pair_paths(dir, name);
    println!("wrote {} (keep it secret, mode 0600)", private.display());
    println!("wrote {}", public.display());
    println!("fingerprint {} ({bits} bits)", key.public().id());
    Ok(ExitCode::SUCCESS)
}

/// Opens the input: a file, or stdin for `-` / nothing.
fn input(path: Option<&Path>) -> Result<Box<dyn Read>> {
    match path {
        None => Ok(Box::new(io::stdin().lock())),
        Some(p) if p == Path::new("-") => Ok(Box::new(io::stdin().lock())),
        Some(p) => Ok(file_reader(p)?),
    }
}

/// A buffered file reader, with a progress bar on stderr for large files when stderr is a
/// terminal (long transfers should show they are moving).
fn file_reader(p: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > PROGRESS_THRESHOLD && io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Ok(Box::new(bar.wrap_read(BufReader::new(file))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Refuses to replace an existing output file unless `--force`: as with keys, nothing is
/// overwritten silently.
fn check_output(path: Option<&Path>, force: bool) -> Result<()> {
    if let Some(p) = path {
        files::check_replaceable(p)?;
        if p.exists() && !force {
            bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    Ok(())
}

fn seal(a: SealArgs) -> Result<ExitCode> {
    check_output(a.output.as_deref(), a.force)?;
    let sender = keys::load_private(&a.from)?;
    let recipient = keys::load_public(&a.to)?;
    let opts = SealOptions {
        mode: a.mode.into(),
        asymmetric_limit: a.max_asymmetric,
        ..SealOptions::default()
    };
    let reader = input(a.input.as_deref())?;
    let sealed = match &a.output {
        Some(path) => {
            // Sealed output is not secret, but a half-written file should not look like a
            // message: write beside, rename when complete.
            let file = WriteOptions {
                replace: a.force,
                ..WriteOptions::default()
            };
            let tmp = AtomicFile::create(path, &file)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut w = io::BufWriter::new(tmp);
            let sealed = seal_into(&sender, &recipient, &opts, reader, &mut w, a.armor)?;
            let tmp = w.into_inner().map_err(|e| e.into_error())?;
            tmp.commit()
                .with_context(|| format!("cannot write {}", path.display()))?;
            sealed
        }
        None => {
            let stdout = io::stdout();
            if !a.armor && stdout.is_terminal() {
                bail!("refusing to write a binary message to a terminal; use -o FILE or --armor");
            }
            let mut w = io::BufWriter::new(stdout.lock());
            seal_into(&sender, &recipient, &opts, reader, &mut w, a.armor)?
        }
    };
    eprintln!(
        "sealed {} bytes ({} mode) for {}, message id {}",
        sealed.plaintext_len,
        sealed.header.mode,
        recipient.id(),
        sealed.header.message_id
    );
    Ok(ExitCode::SUCCESS)
}

fn seal_into<W: Write>(
    sender: &dyn Identity,
    recipient: &PublicKey,
    opts: &SealOptions,
    reader: impl Read,
    out: &mut W,
    armored: bool,
) -> Result<envelope::Sealed> {
    if armored {
        let mut w = armor::ArmorWriter::new(out);
        let sealed = envelope::seal(sender, recipient, opts, reader, &mut w)?;
        w.finish()?;
        Ok(sealed)
    } else {
        Ok(envelope::seal(sender, recipient, opts, reader, out)?)
    }
}

fn open(a: OpenArgs) -> Result<ExitCode> {
    check_output(a.output.as_deref(), a.force)?;
    let identity: Arc<dyn Identity> = Arc::new(keys::load_private(&a.key)?);
    let expected = keys::load_public(&a.from)?;
    let mut reader = BufReader::new(input(a.input.as_deref())?);
    // Binary messages start with the magic; armored ones with the BEGIN line.
    let armored = armor::is_armored(reader.fill_buf()?);
    let reader: Box<dyn Read> = if armored {
        Box::new(armor::ArmorReader::new(reader))
    } else {
        Box::new(reader)
    };
    let mut opts = OpenOptions {
        asymmetric_limit: a.max_asymmetric,
        ..OpenOptions::default()
    };
    let opened = match &a.output {
        Some(path) => {
            let file = WriteOptions {
                replace: a.force,
                ..WriteOptions::default()
            };
            envelope::open_to_file(identity, &expected, &opts, reader, path, &file)
        }
        None => {
            opts.max_plaintext = STDOUT_LIMIT;
            envelope::open_to_vec(identity, &expected, &opts, reader).and_then(|(plain, o)| {
                print_plaintext(&plain)?;
                Ok(o)
            })
        }
    };
    let opened = opened.map_err(|e| match e {
        OpenError::TooLarge { limit } if a.output.is_none() && limit == STDOUT_LIMIT => {
            anyhow::anyhow!(
                "the message is larger than 64 MiB, too large to hold for stdout; \
                 write it to a file with -o FILE"
            )
        }
        e => e.into(),
    })?;
    eprintln!(
        "verified: {} bytes from {} ({} mode, message id {}, sealed at {})",
        opened.plaintext_len,
        opened.header.sender,
        opened.header.mode,
        opened.header.message_id,
        time_text(opened.header.created)
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes plaintext to stdout as it is; on a terminal, ends it with a newline if it lacks one,
/// so the prompt does not land on the message's last line (pipes get the exact bytes).
fn print_plaintext(plain: &[u8]) -> io::Result<()> {
    let newline = io::stdout().is_terminal() && !plain.is_empty() && !plain.ends_with(b"\n");
    write_stdout_unbuffered(plain, newline)
}

/// Writes plaintext straight to file descriptor 1, after what stdout already holds: stdout's
/// own buffer would keep the last partial line of the plaintext, and nothing wipes it.
fn write_stdout_unbuffered(plain: &[u8], newline: bool) -> io::Result<()> {
    use std::os::fd::AsFd;
    // Held throughout, so nothing else printed lands in the middle.
    let mut stdout = io::stdout().lock();
    stdout.flush()?;
    let mut out = File::from(stdout.as_fd().try_clone_to_owned()?);
    out.write_all(plain)?;
    if newline {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): its years have four digits.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// Unix seconds as UTC RFC 3339, for people (JSON keeps the number). A header's time is
/// whatever the sender signed, up to 2^64 − 1: past year 9999 (which RFC 3339 cannot write, and
/// where `SystemTime` arithmetic can overflow) it is shown as the number itself.
pub fn time_text(unix: u64) -> String {
    let t = (unix <= LAST_RFC3339_SECOND)
        .then(|| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(unix)))
        .flatten();
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => format!("Unix time {unix} (after year 9999)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Network commands

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Loads `DIR/NAME_private.pem`, saying which command makes it when it is missing.
fn own_key(dir: &Path, name: &str) -> Result<keys::PrivateKey> {
    let (path, _) = keys::pair_paths(dir, name);
    if !path.exists() {
        bail!(
            "{} not found; pass --keys DIR, the folder that holds it (or, to start afresh, \
             create one with `letterlock {name} generate_key_pair --keys {}`)",
            path.display(),
            dir.display()
        );
    }
    Ok(keys::load_private(&path)?)
}

fn peer_key(dir: &Path, name: &str) -> Result<PublicKey> {
    let (_, path) = keys::pair_paths(dir, name);
    if !path.exists() {
        bail!(
            "{} not found; copy the {name}'s public key there (the {name} makes it with \
             `letterlock {name} generate_key_pair`)",
            path.display()
        );
    }
    Ok(keys::load_public(&path)?)
}

async fn serve_cmd(a: ServeArgs) -> Result<ExitCode> {
    use letterlock::server::{Accept, Server, ServerConfig};
    let identity = own_key(&a.keys, "server")?;
    let clients = keys::TrustList::load_clients(&a.keys)?;
    if clients.is_empty() {
        tracing::warn!(
            "no trusted clients: put client_public.pem in {} or use `letterlock server trust`",
            a.keys.display()
        );
    }
    // Listen first: a server that cannot bind leaves no mailbox behind.
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let store = Arc::new(create_store(&a.store)?);
    let config = ServerConfig {
        accept: match a.accept {
            AcceptArg::Both => Accept::Both,
            AcceptArg::Hybrid => Accept::Hybrid,
            AcceptArg::Asymmetric => Accept::Asymmetric,
        },
        max_connections: a.max_connections,
        time_window: std::time::Duration::from_secs(a.time_window),
        max_hybrid: a.max_message,
        max_asymmetric: a.max_asymmetric,
        log_text: !a.no_log_text,
        ..ServerConfig::default()
    };
    println!("letterlock server listening on {}", listener.local_addr()?);
    println!("server key {}", identity.public().id());
    for c in clients.iter() {
        println!("trusts client {:?} {}", c.name, c.key.id());
    }
    io::stdout().flush()?;
    let server = Arc::new(Server::new(
        Arc::new(identity),
        clients,
        store.clone(),
        config,
    ));
    let shutdown = async {
        shutdown_signal().await;
        eprintln!(
            "letterlock: stopping: finishing messages in flight (interrupt again to stop now)"
        );
        // A second interrupt stops at once: everything acknowledged is already on disk.
        tokio::spawn(async {
            shutdown_signal().await;
            eprintln!("letterlock: stopped at once");
            std::process::exit(130);
        });
    };
    server.run(listener, shutdown).await?;
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    println!("server stopped; store closed");
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn connect(conn: &ClientConn) -> Result<letterlock::client::Client> {
    use letterlock::client::ClientError;
    if !conn.server.contains(':') {
        bail!(
            "--server {} has no port; give HOST:PORT, e.g. 127.0.0.1:8000",
            conn.server
        );
    }
    let identity: Arc<dyn Identity> = Arc::new(own_key(&conn.keys, "client")?);
    let me = identity.public().id();
    let server = peer_key(&conn.keys, "server")?;
    match letterlock::client::Client::connect(
        &conn.server,
        identity,
        server,
        letterlock::client::ClientConfig::default(),
    )
    .await
    {
        Ok(c) => Ok(c),
        Err(ClientError::Refused {
            code: letterlock::wire::ErrorCode::AuthFailed,
            ..
        }) => bail!(
            "the server at {} refused our key {me} (authentication failed): its operator must \
             trust client_public.pem (`letterlock server trust client_public.pem --name NAME`)",
            conn.server
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("server {}", conn.server))),
    }
}

/// Opens an existing mailbox. Only the server creates one: a mistyped --store elsewhere must
/// not quietly answer from a new, empty mailbox.
fn open_store(path: &Path) -> Result<letterlock::store::SqliteStore> {
    if !path.exists() {
        bail!(
            "no mailbox at {}; pass --store PATH (the server's --store), or start \
             `letterlock server` once to create it",
            path.display()
        );
    }
    create_store(path)
}

/// Opens the mailbox, creating it if needed (the server), in a folder that must exist.
fn create_store(path: &Path) -> Result<letterlock::store::SqliteStore> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent
        && !dir.is_dir()
    {
        bail!(
            "cannot create the mailbox {}: {} is not a folder",
            path.display(),
            dir.display()
        );
    }
    letterlock::store::SqliteStore::open(path)
        .with_context(|| format!("cannot open the store {}", path.display()))
}

async fn client_send(a: ClientSendArgs) -> Result<ExitCode> {
    let mut client = connect(&a.conn).await?;
    let opts = SealOptions {
        asymmetric_limit: a.max_asymmetric,
        ..SealOptions::mode(a.message.mode.into())
    };
    let input = a.message.input()?;
    match client.send(input, opts).await {
        Ok(d) => {
            println!("message id {}", d.id);
            println!(
                "delivered: the server proved it decrypted and stored {} bytes ({} mode)",
                d.plaintext_len, d.header.mode
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("letterlock: NOT delivered: {e}");
            print_hint(std::iter::successors(
                Some(&e as &(dyn std::error::Error + 'static)),
                |c| c.source(),
            ));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Ids of messages this client already printed, so an at-least-once repeat is not shown twice.
fn seen_path(keys: &Path) -> PathBuf {
    keys.join(".letterlock-received")
}

async fn client_recv(a: RecvArgs) -> Result<ExitCode> {
    use letterlock::client::{Content, Output};
    let mut client = connect(&a.conn).await?;
    let output = match &a.output {
        Some(dir) => Output::Dir(dir.clone()),
        None => Output::Memory {
            limit: STDOUT_LIMIT,
        },
    };
    let seen_file = seen_path(&a.conn.keys);
    let mut seen: std::collections::HashSet<String> = std::fs::read_to_string(&seen_file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait);
    let mut total = 0;
    loop {
        let got = client
            .fetch(&output, |r| {
                let id = r.header.message_id.to_string();
                match &r.content {
                    Content::Memory(_) if seen.contains(&id) => {
                        println!("message {id}: already received (repeat suppressed)");
                    }
                    Content::Memory(text) => {
                        println!(
                            "message {id} from the server ({} mode, {} bytes, signature verified):",
                            r.header.mode, r.plaintext_len
                        );
                        write_stdout_unbuffered(text, !text.ends_with(b"\n"))?;
                        // Remember it durably before the ack goes out.
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&seen_file)?;
                        writeln!(f, "{id}")?;
                        f.sync_all()?;
                        seen.insert(id);
                    }
                    Content::File(path) if r.duplicate => {
                        println!("message {id}: already saved as {} (repeat)", path.display());
                    }
                    Content::File(path) => println!(
                        "message {id} ({} mode, {} bytes, signature verified) saved to {}",
                        r.header.mode,
                        r.plaintext_len,
                        path.display()
                    ),
                }
                Ok(())
            })
            .await?;
        total += got;
        if total > 0 || std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    if total == 0 {
        println!("no messages");
    }
    Ok(ExitCode::SUCCESS)
}

async fn server_send(a: ServerSendArgs) -> Result<ExitCode> {
    let identity = own_key(&a.keys, "server")?;
    let clients = keys::TrustList::load_clients(&a.keys)?;
    let Some(to) = clients.by_name(&a.to).cloned() else {
        let names: Vec<_> = clients.iter().map(|c| c.name.clone()).collect();
        bail!(
            "no trusted client named {:?} (trusted: {names:?}); add one with `letterlock server trust`",
            a.to
        );
    };
    let store = open_store(&a.store)?;
    let opts = SealOptions::mode(a.message.mode.into());
    let input = a.message.input()?;
    let sealed =
        letterlock::server::queue_for_client(&store, Arc::new(identity), &to, input, &opts).await?;
    store.close().await?;
    println!(
        "queued message {} for {} ({} bytes, {} mode); delivered at its next recv_msg",
        sealed.header.message_id, to.name, sealed.plaintext_len, sealed.header.mode
    );
    Ok(ExitCode::SUCCESS)
}

async fn inbox(store_path: &Path, json: bool) -> Result<ExitCode> {
    use letterlock::store::Store;
    let store = open_store(store_path)?;
    let list = store.list_inbox().await?;
    let mode_name = |m: u8| Mode::from_byte(m).map_or("unknown", Mode::name);
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": hex::encode(m.message_id),
                    "sender": m.sender_name,
                    "sender_key": keys::KeyId(m.sender_key_id).to_string(),
                    "created": m.created,
                    "received": m.received,
                    "mode": mode_name(m.mode),
                    "bytes": m.plaintext_len,
                    "sealed_bytes": m.body_size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if list.is_empty() {
        println!("inbox is empty");
    } else {
        println!(
            "{:<32}  {:<12} {:<10} {:>10}  {:<20}  sender key",
            "id", "sender", "mode", "bytes", "created (UTC)"
        );
        for m in &list {
            println!(
                "{:<32}  {:<12} {:<10} {:>10}  {:<20}  {}",
                hex::encode(m.message_id),
                m.sender_name,
                mode_name(m.mode),
                m.plaintext_len,
                time_text(m.created),
                keys::KeyId(m.sender_key_id)
            );
        }
    }
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

async fn read_inbox(
    id: &str,
    keys_dir: &Path,
    store_path: &Path,
    output: Option<&Path>,
) -> Result<ExitCode> {
    use letterlock::store::Store;
    let identity: Arc<dyn Identity> = Arc::new(own_key(keys_dir, "server")?);
    let clients = keys::TrustList::load_clients(keys_dir)?;
    let store = open_store(store_path)?;
    let msg = store.find_inbox(id).await?;
    let opts = OpenOptions::default();
    let body = msg.body;
    let opened = match output {
        Some(path) => {
            // As before the atomic writer existed: `server read -o` replaces its output.
            let file = WriteOptions {
                replace: true,
                ..WriteOptions::default()
            };
            envelope::open_to_file(identity, &clients, &opts, body, path, &file)?
        }
        None => {
            let opts = OpenOptions {
                max_plaintext: STDOUT_LIMIT,
                ..opts
            };
            let (plain, opened) = envelope::open_to_vec(identity, &clients, &opts, body)?;
            print_plaintext(&plain)?;
            opened
        }
    };
    eprintln!(
        "verified: {} bytes from {} ({}), {} mode",
        opened.plaintext_len, msg.summary.sender_name, opened.header.sender, opened.header.mode
    );
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

fn trust(public_key: &Path, name: &str, keys_dir: &Path) -> Result<ExitCode> {
    if !keys::valid_name(name) {
        bail!("client name {name:?} must be letters, digits, '-', '_' or '.', up to 64");
    }
    let key = keys::load_public(public_key)?;
    let mut existing = keys::TrustList::load_clients(keys_dir)?;
    if existing.get(&key.id()).is_some_and(|t| t.name == name) {
        println!("{name} is already trusted: {}", key.id());
        return Ok(ExitCode::SUCCESS);
    }
    existing.add(name, key.clone())?;
    let target = keys_dir.join(keys::CLIENTS_DIR).join(format!("{name}.pem"));
    keys::write_atomic(&target, key.to_pem().as_bytes(), 0o644, false)?;
    println!("trusting {name} {} ({})", key.id(), target.display());
    Ok(ExitCode::SUCCESS)
}
