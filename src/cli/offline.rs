//! The commands that need no network: keygen, fingerprint, seal and open, and the input and
//! output handling they share with the client and server commands (stdin or a file, plaintext
//! to a terminal, readable times).

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use zeroize::Zeroizing;

use letterlock::envelope::{self, Mode, OpenError, OpenOptions, SealOptions, armor};
use letterlock::files::{self, AtomicFile, WriteOptions};
use letterlock::keys::{self, Identity, PublicKey};
use letterlock::mapped::MappedReader;
use letterlock::text::ByteCount;

use super::{ModeArg, STDOUT_LIMIT, terminal};

/// Inputs larger than this get a progress bar when stderr is a terminal.
pub(super) const PROGRESS_THRESHOLD: u64 = 4 * 1024 * 1024;

#[derive(Args, Debug)]
pub(super) struct KeygenArgs {
    /// Name of the pair: files NAME_private.pem and NAME_public.pem.
    #[arg(long)]
    pub(super) name: String,
    /// Folder to write the files into. (`--out`, its older name, is still accepted.)
    #[arg(
        long = "keys",
        alias = "out",
        value_name = "KEYS",
        env = "LETTERLOCK_KEYS",
        default_value = ".",
        value_parser = super::home_path()
    )]
    pub(super) out: PathBuf,
    /// Modulus size in bits: 2048, 3072 or 4096.
    #[arg(long, default_value_t = keys::DEFAULT_BITS, value_parser = super::generated_bits())]
    pub(super) bits: usize,
    /// Make a new pair even if the files exist: the old ones are kept beside them, as
    /// NAME_private.pem.replaced-TIME (mode 0600) and NAME_public.pem.replaced-TIME, since
    /// messages sealed to the old key open only with it.
    #[arg(long)]
    pub(super) force: bool,
}

#[derive(Args, Debug)]
pub(super) struct PairArgs {
    /// Folder that holds the key files.
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
    /// Modulus size in bits: 2048, 3072 or 4096.
    #[arg(long, default_value_t = keys::DEFAULT_BITS, value_parser = super::generated_bits())]
    pub(super) bits: usize,
    /// Make a new pair even if the files exist: the old ones are kept beside them, as
    /// *_private.pem.replaced-TIME (mode 0600) and *_public.pem.replaced-TIME, since messages
    /// sealed to the old key open only with it.
    #[arg(long)]
    pub(super) force: bool,
}

#[derive(Args, Debug)]
pub(super) struct SealArgs {
    /// The sender's private key, your identity (signs the message). Here `--from` is YOUR
    /// private key; in `open`, `--from` is the sender's public key.
    #[arg(
        short = 'i',
        long,
        visible_alias = "identity",
        value_name = "PRIVATE_KEY"
    )]
    pub(super) from: PathBuf,
    /// The recipient's public key (only its private key can open the message).
    #[arg(
        short = 'r',
        long,
        visible_alias = "recipient",
        value_name = "PUBLIC_KEY"
    )]
    pub(super) to: PathBuf,
    /// How to encrypt: hybrid (AES-256-GCM, any size) or asymmetric (RSA only, up to 1 MiB).
    #[arg(long, value_enum, default_value = "hybrid")]
    pub(super) mode: ModeArg,
    /// Where to write the sealed message (default: stdout, refused on a terminal without -a;
    /// `-`: stdout even on a terminal, as age's `-o -`). A device or a named pipe (`/dev/null`,
    /// a FIFO) is written as the message is sealed. A new file is made mode 0600 (less the umask,
    /// never more), as `open -o` makes the plaintext (the header names sender and recipient):
    /// `chmod` it to share it.
    #[arg(short, long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    /// Write base64 text between BEGIN/END lines instead of binary.
    #[arg(short, long)]
    pub(super) armor: bool,
    /// Largest plaintext accepted in asymmetric mode, in bytes. Raised above the default,
    /// it makes messages that `open` refuses unless given a --max-asymmetric as large: tell
    /// the recipient, or use --mode hybrid.
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    pub(super) max_asymmetric: u64,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub(super) force: bool,
    /// The message to seal; `-` or nothing reads stdin.
    pub(super) input: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct OpenArgs {
    /// The recipient's private key, your identity.
    #[arg(
        short = 'i',
        long,
        visible_alias = "identity",
        value_name = "PRIVATE_KEY"
    )]
    pub(super) key: PathBuf,
    /// The public key of the sender you expect; anything signed by another key is refused.
    /// Here `--from` is the SENDER's public key; in `seal`, `--from` (`-i`) is your private key.
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub(super) from: PathBuf,
    /// Where to write the plaintext. It appears only once the message verified.
    /// Without it, plaintext goes to stdout, up to 64 MiB (binary plaintext refused on a
    /// terminal; `-` shows it there escaped); a device or a named pipe (`/dev/stdout`, a FIFO)
    /// gets it as stdout does.
    #[arg(short, long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    /// Largest plaintext accepted in asymmetric mode, in bytes. An asymmetric message costs
    /// one RSA decryption per 190-odd bytes (with RSA-3072, seconds of CPU per MiB), and one
    /// forged or damaged near its end is refused only after all of them: raise it only for
    /// senders you expect such messages from.
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    pub(super) max_asymmetric: u64,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub(super) force: bool,
    /// The sealed message (binary or armored); `-` or nothing reads stdin.
    pub(super) input: Option<PathBuf>,
}

/// `keygen` and `generate_key_pair`: a new pair `name` in `dir`. For the server's pair
/// (`server`), `store` is the server's mailbox (its `--store`; by default the one beside the
/// keys), whose queued messages signed by another key are counted once the pair is written.
pub(super) fn keygen(
    dir: &Path,
    name: &str,
    bits: usize,
    force: bool,
    store: Option<&Path>,
) -> Result<ExitCode> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("key name {name:?} is not a plain file name");
    }
    let (private, public) = keys::pair_paths(dir, name);
    // Asked before the (slow) generation; refused early if the files exist, so nobody types a
    // passphrase twice for nothing.
    if !force {
        for p in [&private, &public] {
            if p.exists() {
                return Err(keys::KeyError::Exists { path: p.clone() }.into());
            }
        }
    }
    let pass = super::passphrase::for_new_key(&private.display().to_string())?;
    // Replacing a protected key with one left unprotected (no terminal to ask, no passphrase
    // given) is said, not done silently (found by a trial run).
    let unprotected_now = force
        && pass.is_none()
        && std::fs::read_to_string(&private).is_ok_and(|text| keys::is_encrypted_pem(&text));
    let key = keys::PrivateKey::generate(bits)?;
    // Only once the new key exists: a failed generation leaves the old pair as it was.
    let kept = if force {
        Some(super::replaced::keep_aside(&private, &public)?)
    } else {
        None
    };
    keys::write_pair_files(dir, name, &key, force, pass.as_ref())?;
    if let Some(kept) = &kept {
        if let Some(p) = &kept.private {
            println!("kept the old private key as {} (mode 0600)", p.display());
        }
        if let Some(p) = &kept.public {
            println!("kept the old public key as {}", p.display());
        }
    }
    match pass {
        Some(_) => println!(
            "wrote {} (passphrase-protected, mode 0600)",
            private.display()
        ),
        None => println!("wrote {} (keep it secret, mode 0600)", private.display()),
    }
    println!("wrote {}", public.display());
    println!("key id {} ({bits} bits)", key.public().id());
    println!(
        "OpenSSH fingerprint {} (as ssh-keygen -l prints it)",
        key.public().ssh_fingerprint()
    );
    let old = kept.as_ref().and_then(|k| k.id);
    if let Some(kept) = kept {
        warn_replaced(&kept, name, &public);
    }
    if name == "server" {
        // The pair is written: what is left is a report, so a failure is only a warning.
        let new = key.public().id();
        match super::runtime() {
            Ok(runtime) => runtime.block_on(super::server_key::report_replaced(
                dir,
                store,
                &new,
                old.as_ref(),
            )),
            Err(e) => eprintln!(
                "letterlock: could not check the server's mailbox for messages queued with the \
                 replaced key ({e:#}); `letterlock server outbox` marks them"
            ),
        }
    }
    if unprotected_now {
        eprintln!(
            "letterlock: the key you replaced was passphrase-protected; the new one is not (no \
             passphrase was given): protect it with `letterlock passphrase {}`",
            private.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr what replacing the key pair `name` means: messages sealed to the old key open
/// only with the kept copy, and whoever trusted the old public key must trust the new one
/// (which command that is depends on the side). Said every time: nothing else would tell.
fn warn_replaced(kept: &super::replaced::Kept, name: &str, public: &Path) {
    let Some(old) = &kept.private else {
        return;
    };
    let id = kept
        .id
        .as_ref()
        .map(|id| format!(" {id}"))
        .unwrap_or_default();
    let public = public.display();
    let who = match name {
        "client" => format!(
            "The server's operator must trust the new {public} in its place (`letterlock server \
             trust client_public.pem --name NAME --replace`), or the server refuses this client. \
             Messages still waiting on the server for the old key are stranded from then on \
             (never delivered: `server outbox` shows them, and their senders must send them \
             again): fetch them with the old pair first if you can. A `letterlock client agent` \
             already running steps aside and stops at its next message: start it again"
        ),
        "server" => "Every client must trust the new server key (`letterlock client trust-server \
             HOST:PORT --replace`, checking its fingerprint), or it refuses this server. A \
             `letterlock server` already running keeps the old key: restart it"
            .to_owned(),
        _ => format!("Whoever trusted the old public key must trust the new {public} instead"),
    };
    eprintln!(
        "letterlock: replaced the {name} key pair; the old key{id} is kept as {}. Messages \
         sealed to it (received already) open only with it: keep it as long as you need them. \
         {who}.",
        old.display()
    );
}

/// `letterlock fingerprint FILE`: both names of the key, labelled, so nobody compares a key
/// id with an OpenSSH fingerprint.
pub(super) fn fingerprint(file: &Path, json: bool) -> Result<ExitCode> {
    let ask = |attempt| super::passphrase::for_key(file, attempt);
    let key = keys::load_any_public_with(file, super::passphrase::source(&ask))?;
    if json {
        let value = serde_json::json!({
            "openssh": key.ssh_fingerprint().to_string(),
            "key_id": key.id().to_string(),
            "bits": key.bits(),
            "file": file.display().to_string(),
        });
        println!("{value}");
    } else {
        println!(
            "{} (OpenSSH fingerprint, as ssh-keygen -l prints it)",
            key.ssh_fingerprint()
        );
        println!("{} (letterlock key id)", key.id());
        println!("{} bits RSA, {}", key.bits(), file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the input: a file, or stdin for `-` / nothing. `Send`, so a reader thread can read
/// ahead of the sealing or opening ([`envelope::seal_pipelined`]).
///
/// On a terminal, stdin is announced with `typing` (what to type or paste): a bare `seal` or
/// `open` would otherwise wait without a word (found by a trial run; `send_msg` says so too).
pub(super) fn input(path: Option<&Path>, typing: &str) -> Result<Box<dyn Read + Send>> {
    match path {
        Some(p) if p != Path::new("-") => Ok(file_reader(p)?),
        _ => {
            if io::stdin().is_terminal() {
                status!(
                    "letterlock: reading from the terminal: {typing}, then Ctrl-D on a line of \
                     its own (or give INPUT, a file)"
                );
            }
            Ok(Box::new(io::stdin()))
        }
    }
}

/// A file reader, with a progress bar on stderr for large files when stderr is a terminal
/// (long transfers should show they are moving). A regular file of a megabyte or more is read
/// through a memory map ([`letterlock::mapped`]): on tmpfs that sealed 1 GiB in 0.95 s instead
/// of 1.19 s, as `read` costs more than the hashing.
#[allow(unsafe_code)]
pub(super) fn file_reader(p: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // SAFETY: the one risk is SIGBUS, if another process truncates the file while its bytes
    // are copied out; that ends this process, which wrote no core file (it made itself
    // non-dumpable before loading its key), and a command's output is an unnamed file until
    // complete (`letterlock::files`), so nothing is left half-written. A truncation at any
    // other moment reads as `read` would. docs/SECURITY.md, "The one `unsafe` module".
    let reader: Box<dyn Read + Send> = match unsafe { MappedReader::try_map(file) } {
        Ok(mapped) => Box::new(mapped),
        Err(file) => Box::new(BufReader::new(file)),
    };
    if len > PROGRESS_THRESHOLD && io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Ok(Box::new(bar.wrap_read(reader)))
    } else {
        Ok(reader)
    }
}

/// Where `-o` sends what a command writes.
#[derive(Debug)]
pub(super) enum Output {
    /// No `-o`, or a name of stdout (`/dev/stdout`): binary output refused on a terminal.
    Stdout,
    /// `-o -`: stdout asked for by name, on a terminal too, as age's `-o -` forces binary
    /// output there (found by a trial run: `seal -o -` was refused like `seal`). `seal` writes
    /// the binary message; `open` and `client read` show binary plaintext escaped.
    StdoutAsked,
    /// A character device or a named pipe (`/dev/null`, `/dev/tty`, a FIFO), open for
    /// writing, or stderr (`/dev/stderr`, whatever it is, the status lines then left out): it
    /// cannot be replaced by a new file, so it is written in place, as a shell's `>` writes it
    /// ([`files::open_stream`]).
    Stream(PathBuf, File),
    /// A regular file, new or replaced (with `--force`): written beside it and renamed into
    /// place once complete ([`AtomicFile`]).
    File(PathBuf),
}

/// `-` and the names of stdout itself (`/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1`): written
/// as stdout is, whatever it is. A file the shell redirected stdout to is written in place,
/// not replaced by a new file (found by a trial run: `open -o /dev/stdout > out.txt` was
/// refused, as if /dev/stdout were a file to replace).
pub(super) fn names_stdout(path: &Path) -> bool {
    matches!(
        path.to_str(),
        Some("-" | "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1")
    )
}

/// The names of stderr (`/dev/stderr`, `/dev/fd/2`, `/proc/self/fd/2`): written in place on
/// the descriptor this process holds, whatever it is, as the names of stdout are (found by a
/// trial run: with stderr sent to a file, `-o /dev/stderr` was refused as a file that exists,
/// and `--force` would have replaced the file the shell had opened).
fn names_stderr(path: &Path) -> bool {
    matches!(
        path.to_str(),
        Some("/dev/stderr" | "/dev/fd/2" | "/proc/self/fd/2")
    )
}

impl Output {
    /// What `-o path` names for `command` (`seal`, `open`, `client read`): refuses an existing
    /// regular file unless `force` (nothing is overwritten silently), a folder or anything else
    /// that is neither a file, a device nor a pipe, and a path whose folder cannot take a file.
    /// A pipe is opened here, which waits for its reader.
    pub(super) fn of(path: Option<&Path>, force: bool, command: &str) -> Result<Output> {
        let Some(path) = path.filter(|p| !names_stdout(p)) else {
            return Ok(if path == Some(Path::new("-")) {
                Output::StdoutAsked
            } else {
                Output::Stdout
            });
        };
        let cannot = || format!("cannot write {}", path.display());
        if names_stderr(path) {
            use std::os::fd::AsFd;
            // The content goes where the status lines would: to a file or a pipe they are left
            // out, as with -q, so that what is written there is the content alone (found by a
            // trial run: a sealed message with "sealed … bytes" after it, which then failed to
            // open). On a terminal they stay: a prompt to type the input is one of them.
            if !io::stderr().is_terminal() {
                super::QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let fd = io::stderr().as_fd().try_clone_to_owned();
            return Ok(Output::Stream(
                path.to_owned(),
                fd.with_context(cannot)?.into(),
            ));
        }
        if let Some(file) = files::open_stream(path).with_context(cannot)? {
            return Ok(Output::Stream(path.to_owned(), file));
        }
        // The refusal says what is there (a folder, a link and where it leads); the hint what
        // -o takes (found by a trial run: a link was told it was "not a folder or a socket").
        files::check_replaceable(path).map_err(|e| {
            super::hints::hinted_over(
                cannot(),
                format!(
                    "{command} -o names a file to write (a device or a pipe is written in \
                     place); leave -o out to write to stdout"
                ),
                e.into(),
            )
        })?;
        if path.symlink_metadata().is_ok() && !force {
            bail!(
                "{} already exists; pass --force to replace it (or -o - for stdout)",
                path.display()
            );
        }
        // Said before any key is read or byte opened (found by a trial run: it came out as an
        // I/O error while opening, once the message had been read).
        let folder = files::folder_of(path);
        match std::fs::metadata(folder) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{}: {} is not a folder; choose another -o",
                cannot(),
                folder.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "{}: the folder {} does not exist; create it first, or choose another -o",
                cannot(),
                folder.display()
            ),
            Err(e) => bail!("{}: {}: {e}", cannot(), folder.display()),
        }
        Ok(Output::File(path.to_owned()))
    }

    /// The path named, for messages and logs ("stdout" for stdout).
    pub(super) fn name(&self) -> String {
        match self {
            Output::Stdout | Output::StdoutAsked => "stdout".to_owned(),
            Output::Stream(path, _) | Output::File(path) => path.display().to_string(),
        }
    }
}

/// Writes verified plaintext, held in memory until verified, to stdout or to the device or pipe
/// `-o` named: raw, or escaped on a terminal, binary refused there ([`terminal`]). (A regular
/// file is written by [`envelope::open_to_file`] instead; given one, this writes to stdout.)
pub(super) fn write_verified(to: &mut Output, plain: &[u8]) -> io::Result<()> {
    match to {
        Output::Stream(_, file) => terminal::write_content_to(file, plain, false),
        Output::StdoutAsked => terminal::write_content_asked(plain),
        Output::Stdout | Output::File(_) => print_plaintext(plain),
    }
}

/// The error for plaintext over [`STDOUT_LIMIT`], held for stdout or a device or pipe until
/// verified: `command` (`open`, `client read ID`) with `-o FILE` saves it.
pub(super) fn too_large_to_hold(e: OpenError, to: &Output, command: &str) -> anyhow::Error {
    match e {
        OpenError::TooLarge { limit } if limit == STDOUT_LIMIT => {
            let held = match to {
                Output::Stream(path, _) => format!(
                    "{} (not a regular file: what goes there is held in memory until verified, \
                     as for stdout)",
                    path.display()
                ),
                Output::Stdout | Output::StdoutAsked | Output::File(_) => "stdout".to_owned(),
            };
            anyhow::anyhow!(
                "the message is larger than the {} MiB held until verified for {held}; save it \
                 to a regular file with `letterlock {command} -o FILE`",
                STDOUT_LIMIT >> 20
            )
        }
        e => e.into(),
    }
}

pub(super) fn seal(a: SealArgs) -> Result<ExitCode> {
    let output = Output::of(a.output.as_deref(), a.force, "seal")?;
    // A file over the asymmetric limit is refused before any of it is read, with its size, and
    // before the key is loaded (nobody types a passphrase for a refusal).
    if Mode::from(a.mode) == Mode::Asymmetric
        && let Some(path) = a.input.as_deref()
        && let Some(size) = super::regular_file_len(path)
        && size > a.max_asymmetric
    {
        let what = path.display().to_string();
        return Err(super::over_asymmetric_limit(a.max_asymmetric, &what, size));
    }
    let sender: Arc<dyn Identity> = Arc::new(super::load_own_private(&a.from)?);
    let recipient = keys::load_public(&a.to)?;
    let opts = SealOptions {
        mode: a.mode.into(),
        asymmetric_limit: a.max_asymmetric,
        ..SealOptions::default()
    };
    tracing::debug!(
        sender = %sender.public().id(),
        recipient = %recipient.id(),
        mode = %opts.mode,
        armor = a.armor,
        output = %output.name(),
        "sealing"
    );
    // Before stdin is read (or announced on a terminal): binary output is refused there,
    // unless `-o -` asked for stdout by name.
    let to_terminal = match &output {
        Output::File(_) | Output::StdoutAsked => false,
        Output::Stream(_, file) => file.is_terminal(),
        Output::Stdout => io::stdout().is_terminal(),
    };
    if !a.armor && to_terminal {
        bail!(
            "refusing to write a binary message to a terminal; use -o FILE or -a (--armor), or \
             -o - to write it there anyway"
        );
    }
    let reader = match a.input.as_deref().map(read_small).transpose()?.flatten() {
        Some(whole) => Plain::Whole(whole),
        None => Plain::Stream(input(a.input.as_deref(), "type the message to seal")?),
    };
    let sealed = match output {
        Output::File(path) => {
            // Sealed output is not secret, but a half-written file should not look like a
            // message: write beside, rename when complete.
            let file = WriteOptions {
                replace: a.force,
                ..WriteOptions::default()
            };
            let tmp = AtomicFile::create(&path, &file)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let w = io::BufWriter::new(tmp);
            let (sealed, w) = seal_into(sender, &recipient, &opts, reader, w, a.armor)
                .map_err(|e| super::full_disk_names(e, &path))?;
            let tmp = w
                .into_inner()
                .map_err(|e| super::full_disk_names(e.into_error().into(), &path))?;
            tmp.commit()
                .with_context(|| format!("cannot write {}", path.display()))?;
            sealed
        }
        // A device or a pipe: sealed bytes are not secret, and a reader there sees a message
        // cut short by an error as one that does not open, so they go straight to it.
        Output::Stream(_, file) => {
            let w = io::BufWriter::new(file);
            seal_into(sender, &recipient, &opts, reader, w, a.armor)?.0
        }
        Output::Stdout | Output::StdoutAsked => {
            let w = io::BufWriter::new(io::stdout());
            seal_into(sender, &recipient, &opts, reader, w, a.armor)?.0
        }
    };
    status!(
        "sealed {} ({} mode) for {}, message id {}",
        ByteCount(sealed.plaintext_len),
        sealed.header.mode,
        recipient.id(),
        sealed.header.message_id
    );
    if sealed.header.mode == Mode::Asymmetric
        && sealed.plaintext_len > envelope::DEFAULT_ASYMMETRIC_LIMIT
    {
        status!(
            "letterlock: note: `open` refuses an asymmetric message over {} unless it is given \
             --max-asymmetric {} or more: tell the recipient, or seal it with --mode hybrid",
            ByteCount(envelope::DEFAULT_ASYMMETRIC_LIMIT),
            sealed.plaintext_len
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Files up to this size are read whole and sealed in one call ([`envelope::seal_slice`]): a
/// message of a few bytes then costs no reader and writer threads and none of their buffers
/// ([`envelope::PIECE`] each, eight of them), whose wiping alone faults in megabytes (one-shot
/// latency, issue 13).
const SMALL_FILE: u64 = 64 * 1024;

/// A message to seal: read whole already, or to be read as it is sealed.
enum Plain {
    Whole(Zeroizing<Vec<u8>>),
    Stream(Box<dyn Read + Send>),
}

/// The whole content of `path` when it is a regular file of at most [`SMALL_FILE`] bytes, in a
/// buffer sized once (it never reallocates, so no copy is left unwiped) and wiped when dropped;
/// `None` for stdin, anything else, or a file that grew past the limit while it was read (it is
/// then streamed from the start).
fn read_small(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if path == Path::new("-") {
        return Ok(None);
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() || meta.len() > SMALL_FILE {
        return Ok(None);
    }
    // One byte of room more than the file has, to see whether it grew meanwhile.
    let room = meta.len() + 1;
    let mut whole = Zeroizing::new(Vec::with_capacity(room as usize));
    file.take(room)
        .read_to_end(&mut whole)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(((whole.len() as u64) < room).then_some(whole))
}

/// Seals `plain` into `out` (armored if asked): a small message in one call, a stream reading,
/// sealing and writing on three threads ([`envelope::seal_pipelined`]); returns the receipt and
/// `out`, flushed.
fn seal_into<W: Write + Send>(
    sender: Arc<dyn Identity>,
    recipient: &PublicKey,
    opts: &SealOptions,
    plain: Plain,
    out: W,
    armored: bool,
) -> Result<(envelope::Sealed, W)> {
    let reader = match plain {
        Plain::Whole(bytes) => {
            let sender = sender.as_ref();
            return Ok(if armored {
                let mut w = armor::ArmorWriter::new(out);
                let sealed = envelope::seal_slice(sender, recipient, opts, &bytes, &mut w)?;
                (sealed, w.finish()?)
            } else {
                let mut out = out;
                let sealed = envelope::seal_slice(sender, recipient, opts, &bytes, &mut out)?;
                (sealed, out)
            });
        }
        Plain::Stream(reader) => reader,
    };
    let (sealer, prefix) = envelope::Sealer::new(sender, recipient, opts)?;
    if armored {
        let w = armor::ArmorWriter::new(out);
        let (sealed, w) = envelope::seal_pipelined(sealer, &prefix, reader, w)?;
        Ok((sealed, w.finish()?))
    } else {
        Ok(envelope::seal_pipelined(sealer, &prefix, reader, out)?)
    }
}

pub(super) fn open(a: OpenArgs) -> Result<ExitCode> {
    let mut output = Output::of(a.output.as_deref(), a.force, "open")?;
    let identity: Arc<dyn Identity> = Arc::new(super::load_own_private(&a.key)?);
    let expected = keys::load_public(&a.from)?;
    let mut raw = BufReader::new(input(
        a.input.as_deref(),
        "paste the armored message (BEGIN to END line)",
    )?);
    // Binary messages start with the magic; armored ones with the BEGIN line. Anything else
    // may be an armored message pasted from an email with text before it (found by a trial
    // run: read as a binary message, "bad magic"): its first bytes, up to PASTED_TEXT_SCAN,
    // are read ahead (one read may hold one line) and looked through for a BEGIN line, then
    // put back in front of the rest. Taken as it is, never cut out silently.
    let first = raw.fill_buf()?;
    let mut reader: Box<dyn BufRead + Send> =
        if armor::is_armored(first) || first.starts_with(&envelope::MAGIC) {
            Box::new(raw)
        } else {
            let mut ahead = Vec::new();
            (&mut raw).take(PASTED_TEXT_SCAN).read_to_end(&mut ahead)?;
            if let Some(line) = begin_line_after_text(&ahead) {
                bail!(
                    "not a valid letterlock message: an armored message starts at line {line}, \
                     after other text; save only its block, from the BEGIN line to the END \
                     line, and open that"
                );
            }
            Box::new(io::Cursor::new(ahead).chain(raw))
        };
    let armored = armor::is_armored(reader.fill_buf()?);
    tracing::debug!(
        recipient = %identity.public().id(),
        expected_sender = %expected.id(),
        armored,
        output = %output.name(),
        "opening"
    );
    let reader: Box<dyn Read + Send> = if armored {
        Box::new(armor::ArmorReader::new(reader))
    } else {
        Box::new(reader)
    };
    let mut opts = OpenOptions {
        asymmetric_limit: a.max_asymmetric,
        ..OpenOptions::default()
    };
    let opened = match &mut output {
        Output::File(path) => {
            let file = WriteOptions {
                replace: a.force,
                ..WriteOptions::default()
            };
            envelope::open_to_file(identity, &expected, &opts, reader, path, &file)
        }
        // Stdout, or a device or a pipe in its place: nothing reaches it before the signature
        // at the end is verified, so the plaintext is held until then, up to a limit.
        to => {
            opts.max_plaintext = STDOUT_LIMIT;
            let held = envelope::open_to_vec(identity, &expected, &opts, reader);
            // A failed write is no failure to open: said as what it is (found by a trial run:
            // binary content refused on a terminal read as an I/O error while opening).
            if let Ok((plain, _)) = &held {
                write_verified(to, plain)?;
            }
            held.map(|(_, o)| o)
        }
    };
    let opened = opened.map_err(|e| {
        // Armor that does not decode is a damaged message, not an I/O error (found by a trial
        // run: a cut-short armored block read as "I/O error while opening").
        if let OpenError::Io(io) = &e
            && let Some(why) = armor::ArmorError::of(io)
        {
            return anyhow::anyhow!(
                "not a valid letterlock message: {why}; copy the whole armored block, from its \
                 BEGIN line to its END line, or ask for it again"
            );
        }
        match e {
            OpenError::TooLarge { limit }
                if limit == STDOUT_LIMIT && !matches!(output, Output::File(_)) =>
            {
                too_large_to_hold(e, &output, "open")
            }
            // Over --max-asymmetric: the sealed file's size bounds the plaintext, which tells
            // the reader what limit would open it (found by a trial run: the refusal gave no
            // size at all).
            OpenError::TooLarge { limit }
                if limit == a.max_asymmetric
                    && let Some(path) = a.input.as_deref()
                    && let Some(size) = super::regular_file_len(path) =>
            {
                let said = format!(
                    "{e} (asymmetric mode); {} is {} sealed, so its plaintext is at most that",
                    path.display(),
                    ByteCount(size)
                );
                anyhow::Error::new(e).context(said)
            }
            e => {
                let e = super::replaced::name_kept_key(e.into(), &a.key, |kept| {
                    format!("open it with `-i {}`", kept.display())
                });
                match &output {
                    Output::File(path) => super::full_disk_names(e, path),
                    _ => e,
                }
            }
        }
    })?;
    status!(
        "verified: {} from {} ({} mode, message id {}, sealed at {})",
        ByteCount(opened.plaintext_len),
        opened.header.sender,
        opened.header.mode,
        opened.header.message_id,
        time_text(opened.header.created)
    );
    Ok(ExitCode::SUCCESS)
}

/// How far into an input that is neither a binary nor an armored message `open` looks for the
/// BEGIN line of one pasted after other text.
const PASTED_TEXT_SCAN: u64 = 64 * 1024;

/// The line (from 1) where an armored message's BEGIN line stands in `head`, the first bytes of
/// an input that does not start with it: text around a pasted message. `None` when there is
/// none in `head`.
fn begin_line_after_text(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n')
        .position(|line| line.trim_ascii() == armor::BEGIN.as_bytes())
        .map(|i| i + 1)
}

/// Writes plaintext to stdout: pipes and files get the exact bytes; a terminal gets it escaped
/// and ending with a newline, and binary plaintext is refused there (see [`super::terminal`]).
pub(super) fn print_plaintext(plain: &[u8]) -> io::Result<()> {
    terminal::write_content(plain, false)
}

/// Writes plaintext straight to file descriptor 1 (never through stdout's buffer, which nothing
/// wipes), adding `newline` on a pipe; a terminal gets it escaped, binary refused
/// ([`super::terminal::write_content`]).
pub(super) fn write_stdout_unbuffered(plain: &[u8], newline: bool) -> io::Result<()> {
    terminal::write_content(plain, newline)
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): its years have four digits.
pub(super) const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

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
