//! The command line: clap definitions and what each command does. The binary only calls [`run`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::envelope::{self, Mode, OpenError, OpenOptions, SealOptions, armor};
use crate::keys::{self, Identity, PublicKey};

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
    /// The server side of the original walk-through.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
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
}

#[derive(Subcommand, Debug)]
enum ServerCommand {
    /// Generate the server's key pair: server_private.pem and server_public.pem.
    #[command(name = "generate_key_pair")]
    GenerateKeyPair(PairArgs),
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
    /// The sealed message (binary or armored); `-` or nothing reads stdin.
    input: Option<PathBuf>,
}

/// Parses the command line, runs the command, and turns errors into a message and exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("letterlock: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Client {
            command: ClientCommand::GenerateKeyPair(a),
        } => keygen(&a.keys, "client", a.bits, a.force),
        Command::Server {
            command: ServerCommand::GenerateKeyPair(a),
        } => keygen(&a.keys, "server", a.bits, a.force),
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

/// Opens the input: a file, or stdin for `-` / nothing. Adds a progress bar for large files when
/// stderr is a terminal.
fn input(path: Option<&Path>) -> Result<Box<dyn Read>> {
    match path {
        None => Ok(Box::new(io::stdin().lock())),
        Some(p) if p == Path::new("-") => Ok(Box::new(io::stdin().lock())),
        Some(p) => {
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
    }
}

fn seal(a: SealArgs) -> Result<ExitCode> {
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
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            let tmp = tempfile::Builder::new()
                .prefix(".letterlock-seal")
                .tempfile_in(dir.unwrap_or(Path::new(".")))?;
            let mut w = io::BufWriter::new(tmp);
            let sealed = seal_into(&sender, &recipient, &opts, reader, &mut w, a.armor)?;
            let tmp = w.into_inner().map_err(|e| e.into_error())?;
            tmp.as_file().sync_all()?;
            tmp.persist(path)
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
    let trusted = |id: &keys::KeyId| (*id == expected.id()).then(|| expected.clone());
    let mut opts = OpenOptions {
        asymmetric_limit: a.max_asymmetric,
        ..OpenOptions::default()
    };
    let opened = match &a.output {
        Some(path) => envelope::open_to_file(identity, trusted, &opts, reader, path),
        None => {
            opts.max_plaintext = STDOUT_LIMIT;
            envelope::open_to_vec(identity, trusted, &opts, reader).and_then(|(plain, o)| {
                let mut out = io::stdout().lock();
                out.write_all(&plain)?;
                out.flush()?;
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
        opened.header.created
    );
    Ok(ExitCode::SUCCESS)
}
