//! `letterlock client agent`: a process that keeps the client's key and a connection to the
//! server for the `client send_msg` commands that follow, as ssh's ControlMaster does for
//! `ssh`; and [`hand_over`], the part of `send_msg` that gives its message to it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use letterlock::client::ClientConfig;
use letterlock::client::agent::{
    self, AgentConfig, AgentError, AgentSocket, AskError, Reply, Request, SOCKET_TIMEOUT,
    SendRequest,
};
use zeroize::Zeroizing;

use letterlock::keys::KeyError;
use letterlock::text::{ByteCount, TimeSpan};

use super::client::{
    ClientConn, ClientKeys, ClientSendArgs, SEND_TIMEOUT_HELP, backoff, connect_with,
    print_delivered, print_not_delivered, wait_duration,
};
use super::hints::{NO_ACK_HINT, hinted_over, say_hint};

/// The agent's socket, in the keys folder: one agent per client key.
pub(super) const AGENT_SOCKET: &str = "client_agent.sock";

#[derive(Args, Debug)]
#[command(mut_arg("timeout", |a| a.help(SEND_TIMEOUT_HELP)))]
pub(super) struct AgentArgs {
    #[command(flatten)]
    conn: ClientConn,
    /// Stop after DURATION without a message (seconds, e.g. 600, or with a unit: 10m, 1h);
    /// 0: only when stopped.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = wait_duration)]
    persist: Duration,
    /// Stop the agent running for --keys instead of starting one.
    #[arg(long)]
    stop: bool,
}

/// `DIR/client_agent.sock` for `--keys DIR`.
fn socket_path(keys: &Path) -> PathBuf {
    keys.join(AGENT_SOCKET)
}

/// `letterlock client agent`: loads (and unlocks) the key, connects, then serves `send_msg`
/// commands on the socket until stopped or idle for `--persist`.
pub(super) async fn run(a: AgentArgs) -> Result<ExitCode> {
    let path = socket_path(&a.conn.keys);
    if a.stop {
        return stop(&path);
    }
    if a.conn.plain_v1 {
        bail!("the agent speaks TLS 1.3 (protocol version 2) only; drop --plain-v1");
    }
    // Before the key is read: no copy of it, unlocked, may reach a core file or a debugger.
    super::keep_memory_private()?;
    // The folder's lock before the key is read: a second agent is refused as such, before it
    // asks for a passphrase or connects; and only in a client's keys folder, where the lock
    // file is made.
    super::own_key_path(&a.conn.keys, "client")?;
    let lock = AgentSocket::lock(&path).map_err(|e| match e {
        AgentError::AlreadyRunning(_) => anyhow::anyhow!(
            "{e}; stop it first with `letterlock client agent --stop --keys {}`",
            a.conn.keys.display()
        ),
        e => e.into(),
    })?;
    // The files' metadata before they are read: a file replaced meanwhile is read again at the
    // first message, and compared with what was loaded.
    let watch = KeyWatch::before_load(&a.conn.keys);
    let keys = ClientKeys::load(&a.conn)?;
    let keys_current = watch.holding(&keys);
    let identity = keys.identity.clone();
    let server = keys.server.clone();
    let handshake_key_cache = keys.handshake_key_cache.clone();
    // Before the connection and the "listening" line: a signal after it stops us cleanly.
    let mut signals = std::pin::pin!(super::stop_signals()?);
    // Connected first, the socket then: no command waits on an agent that cannot reach its
    // server.
    let client = tokio::select! {
        connected = connect_with(&a.conn, keys) => connected?,
        () = &mut signals => return Ok(ExitCode::SUCCESS),
    };
    let socket = lock.bind()?;
    let persist = (!a.persist.is_zero()).then_some(a.persist);
    println!(
        "letterlock client agent: listening on {} for messages to {} ({}); stop it with \
         `letterlock client agent --stop --keys {}` or Ctrl-C",
        path.display(),
        a.conn.server,
        match persist {
            Some(p) => format!("stops after {} without one", TimeSpan(p)),
            None => "until stopped".to_owned(),
        },
        a.conn.keys.display(),
    );
    let config = AgentConfig {
        server_addr: a.conn.server.clone(),
        identity,
        server,
        client: ClientConfig {
            handshake_key_cache,
            ..ClientConfig::default()
        },
        tls: letterlock::tls::TlsOptions::default(),
        backoff: backoff(a.conn.timeout),
        persist,
        keys_current: Some(keys_current),
        // The hint its command would have shown for its own failure.
        hint: Some(Box::new(|e| super::hints::send_hint(e))),
    };
    agent::serve(socket, config, Some(client), signals)
        .await
        .map_err(|e| match e {
            AgentError::KeysChanged(_) => super::hints::hinted(
                e.to_string(),
                format!(
                    "start `letterlock client agent --keys {}` again to send under the keys kept \
                     there now; the commands it declined sent their messages themselves, under \
                     those keys",
                    a.conn.keys.display()
                ),
            ),
            e => e.into(),
        })?;
    Ok(ExitCode::SUCCESS)
}

/// What tells a key file unchanged without reading it: device, inode, size, and the times of
/// its last modification and last status change (a file rewritten in place, or renamed over,
/// changes one of them).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Tells whether the file at a path holds what the agent holds: `Err(why)` if not.
type Holds = Box<dyn Fn(&Path) -> std::result::Result<(), String> + Send + Sync>;

/// A key file the agent holds what it read from: read again only when its [`Stamp`] changed.
struct Watched {
    path: PathBuf,
    /// Its stamp when it was last found to hold what the agent holds (or just before it was
    /// loaded); `None` if it could not be taken then.
    seen: Option<Stamp>,
    holds: Holds,
}

impl Watched {
    fn check(&mut self) -> std::result::Result<(), String> {
        let now = Stamp::of(&self.path)
            .map_err(|e| format!("{} cannot be read: {e}", self.path.display()))?;
        if self.seen == Some(now) {
            return Ok(());
        }
        tracing::debug!(path = %self.path.display(), "changed since last looked at; reading it again");
        (self.holds)(&self.path)?;
        self.seen = Some(now);
        Ok(())
    }
}

/// The agent's check that the pinned server key and the client's private key are still the
/// ones in `--keys` ([`letterlock::client::agent::KeyCheck`]).
struct KeyWatch {
    server: (PathBuf, Option<Stamp>),
    client: (PathBuf, Option<Stamp>),
    /// SHA-256 of the private key file as it was before it was loaded: a passphrase-protected
    /// key cannot be compared without its passphrase, only its file.
    client_digest: Option<[u8; 32]>,
}

impl KeyWatch {
    /// The stamps of `KEYS/server_public.pem` and `KEYS/client_private.pem`, taken before they
    /// are loaded.
    fn before_load(keys: &Path) -> KeyWatch {
        let (_, server) = letterlock::keys::pair_paths(keys, "server");
        let (client, _) = letterlock::keys::pair_paths(keys, "client");
        let (server_stamp, client_stamp) = (Stamp::of(&server).ok(), Stamp::of(&client).ok());
        let client_digest = digest_of(&client);
        KeyWatch {
            server: (server, server_stamp),
            client: (client, client_stamp),
            client_digest,
        }
    }

    /// The check for the agent holding `keys`, loaded after [`KeyWatch::before_load`].
    fn holding(self, keys: &ClientKeys) -> letterlock::client::agent::KeyCheck {
        let pinned = keys.server.clone();
        let server = Watched {
            path: self.server.0,
            seen: self.server.1,
            holds: Box::new(move |path| {
                let now = letterlock::keys::load_public(path).map_err(|e| {
                    format!(
                        "the pinned server key, {}, cannot be read: {e}",
                        path.display()
                    )
                })?;
                if now == pinned {
                    return Ok(());
                }
                Err(format!(
                    "the pinned server key, {}, is now {}, not {}, the one the agent started with",
                    path.display(),
                    now.id(),
                    pinned.id()
                ))
            }),
        };
        let mine = keys.identity.public().id();
        let digest = self.client_digest;
        let client = Watched {
            path: self.client.0,
            seen: self.client.1,
            holds: Box::new(move |path| {
                // Rewritten with the same bytes (touched, copied back): the same key.
                if digest.is_some() && digest_of(path) == digest {
                    return Ok(());
                }
                let changed = format!(
                    "the client's private key, {}, changed since the agent started",
                    path.display()
                );
                match letterlock::keys::load_any_public(path) {
                    Ok(now) if now.id() == mine => Ok(()),
                    Ok(now) => Err(format!("{changed}: it is now {}, not {mine}", now.id())),
                    Err(e) if matches!(e.cause(), KeyError::Encrypted) => Err(format!(
                        "{changed}, and being passphrase-protected it cannot be told to be the \
                         same key without its passphrase"
                    )),
                    Err(e) => Err(format!("{changed}, and cannot be read: {e}")),
                }
            }),
        };
        let mut watched = [server, client];
        Box::new(move || watched.iter_mut().try_for_each(Watched::check))
    }
}

/// SHA-256 of the file at `path`, if it can be read (a key file: small).
fn digest_of(path: &Path) -> Option<[u8; 32]> {
    let bytes = Zeroizing::new(std::fs::read(path).ok()?);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    d.as_ref().try_into().ok()
}

/// `letterlock client agent --stop`.
fn stop(path: &Path) -> Result<ExitCode> {
    match agent::ask(path, &Request::Stop, SOCKET_TIMEOUT) {
        Ok(Reply::Stopping) => {
            println!(
                "letterlock client agent: stopped the agent on {}",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => bail!(
            "unexpected answer from the agent on {}: {other:?}",
            path.display()
        ),
        // No socket, but an agent may hold the folder while it asks for its passphrase or
        // connects: it listens only after that.
        Err(AskError::NotRunning(_))
            if path.with_extension("lock").exists()
                && matches!(AgentSocket::lock(path), Err(AgentError::AlreadyRunning(_))) =>
        {
            bail!(
                "an agent for {} holds the folder but does not listen: it is starting (asking for \
                 its passphrase, or connecting; run --stop again once it listens, or Ctrl-C \
                 where it runs), or stopping",
                path.display()
            )
        }
        Err(AskError::NotRunning(_)) => bail!("no agent is running on {}", path.display()),
        Err(e) => Err(e.into()),
    }
}

/// What became of a `send_msg` message offered to the agent ([`hand_over`]).
pub(super) enum HandOver {
    /// The agent answered for it: the command's exit status (its outcome is printed).
    Answered(ExitCode),
    /// Nothing was handed over: the command sends the message itself; why, unless there is
    /// nothing to explain (the agent is stopping, or the socket is another user's).
    NotTaken(Option<NotTaken>),
}

/// Why the agent did not send a message, kept for the one failure it explains: the command that
/// then sends it itself needs the key's passphrase, which the agent had spared the user so far
/// ([`NotTaken::explain`]).
pub(super) struct NotTaken {
    socket: PathBuf,
    why: Why,
    /// Where the message came from, as the explanation names it.
    source: Source,
    /// The command's --server.
    server: String,
}

/// Why a message went past the agent.
enum Why {
    /// `--no-agent`.
    Refused,
    /// `--to NAME`: the agent sends only to the server.
    To,
    /// `--plain-v1`: the agent speaks TLS only.
    PlainV1,
    /// Stdin, or TEXT or a file over [`agent::MAX_MESSAGE`] (or not a regular file).
    NotSmall,
    /// The agent declined it, in its words (another --server, busy...), or it could not be
    /// handed over.
    Declined(String),
    /// Its socket is there but nobody answers on it: the agent was killed, or crashed.
    NotRunning,
    /// No socket. Explained only if an agent ran for this folder before (its lock file stays)
    /// and would have taken the message: it stopped, after its --persist idle time, say.
    NoSocket,
}

impl NotTaken {
    /// `e`, explained when the command failed for want of the key's passphrase while an agent,
    /// which holds the key unlocked, runs for `--keys`: said first, why the agent did not send
    /// this message, and the hint says how to have it sent (through the agent, or with the
    /// passphrase). Any other error is returned as it is. A socket is looked for only here,
    /// on that failure, when it was not already found.
    pub(super) fn explain(self, e: anyhow::Error) -> anyhow::Error {
        let wanted = e.chain().any(|c| {
            c.downcast_ref::<KeyError>()
                .is_some_and(|k| matches!(k.cause(), KeyError::PassphraseUnavailable { .. }))
        });
        if !wanted {
            return e;
        }
        let early = matches!(self.why, Why::Refused | Why::To | Why::PlainV1);
        if early && std::fs::symlink_metadata(&self.socket).is_err() {
            return e;
        }
        if matches!(self.why, Why::NoSocket)
            && !(self.socket.with_extension("lock").is_file() && self.source.fits_agent())
        {
            return e;
        }
        let socket = self.socket.display();
        let max = agent::MAX_MESSAGE >> 10;
        let passphrase = format!(
            "give this command the key's passphrase with --passphrase-file FILE or {} (or run \
             it on a terminal to be asked)",
            super::passphrase::ENV
        );
        let (why, hint) = match &self.why {
            Why::Refused => (
                "--no-agent was given".to_owned(),
                format!("drop --no-agent and the agent sends it; or {passphrase}"),
            ),
            Why::To => (
                "it sends only to the server, not --to a contact".to_owned(),
                passphrase,
            ),
            Why::PlainV1 => (
                "it speaks TLS 1.3 only, not --plain-v1".to_owned(),
                passphrase,
            ),
            Why::NotSmall => (
                format!(
                    "it takes only TEXT or --file FILE of up to {max} KiB, and {}",
                    self.source
                ),
                match self.source {
                    Source::Stdin => format!(
                        "give the message as TEXT, or in a file of up to {max} KiB with --file \
                         FILE, and the agent sends it; or {passphrase}"
                    ),
                    _ => passphrase,
                },
            ),
            Why::NoSocket => (
                "no agent runs for this folder now; one ran before, and has stopped: after its \
                 --persist idle time, on --stop or Ctrl-C"
                    .to_owned(),
                format!(
                    "start `letterlock client agent` again (it asks for the passphrase once) and \
                     it sends such messages; or {passphrase}"
                ),
            ),
            Why::NotRunning => (
                "its socket is there, but no agent answers on it: it was stopped without \
                 removing it (killed, or crashed)"
                    .to_owned(),
                format!("start `letterlock client agent` again; or {passphrase}"),
            ),
            Why::Declined(reason) => match agent::declined_for_other_server(reason) {
                _ if agent::declined_for_changed_keys(reason).is_some() => (
                    format!(
                        "it stepped aside and stopped, as {}",
                        letterlock::text::line(
                            agent::declined_for_changed_keys(reason).unwrap_or_default()
                        )
                    ),
                    format!(
                        "start `letterlock client agent` again (it asks for the passphrase \
                         once); or {passphrase}"
                    ),
                ),
                Some(theirs) => {
                    let theirs = letterlock::text::line(theirs);
                    (
                        format!(
                            "it sends only to {theirs}, the --server it was started with, and \
                             this command names {}, which it takes for another server",
                            letterlock::text::line(&self.server)
                        ),
                        format!(
                            "pass --server {theirs}, as the agent was started, and it sends the \
                             message; or {passphrase}"
                        ),
                    )
                }
                None => (
                    format!("it did not take it: {}", letterlock::text::line(reason)),
                    format!("try again; or {passphrase}"),
                ),
            },
        };
        hinted_over(
            format!(
                "not sent through the client agent on {socket} ({why}); sending it without the \
                 agent needs the key"
            ),
            hint,
            e,
        )
    }
}

/// Where the message came from, as [`NotTaken::explain`] names it.
enum Source {
    Stdin,
    Text(usize),
    File(PathBuf),
}

impl Source {
    /// What `a` says about where its message comes from; no system call.
    fn of(a: &ClientSendArgs) -> Source {
        match (a.message.text.as_deref(), &a.message.file) {
            (Some("-"), _) | (None, None) => Source::Stdin,
            (Some(text), _) => Source::Text(text.len()),
            (None, Some(f)) if f.as_os_str() == "-" => Source::Stdin,
            (None, Some(f)) => Source::File(f.clone()),
        }
    }
}

impl Source {
    /// Whether an agent would take this message (TEXT, or a regular file, of at most
    /// [`agent::MAX_MESSAGE`] bytes); looked at after a failure, not on the way to it.
    fn fits_agent(&self) -> bool {
        match self {
            Source::Stdin => false,
            Source::Text(len) => *len <= agent::MAX_MESSAGE,
            Source::File(path) => std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.len() <= agent::MAX_MESSAGE as u64),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Stdin => f.write_str("the message comes from stdin"),
            Source::Text(len) => write!(f, "TEXT is {}", ByteCount::from(*len)),
            // After the failure, not on the way to it: one more look at the file.
            Source::File(path) => match std::fs::metadata(path) {
                Ok(m) if m.is_file() => write!(f, "{} is {}", path.display(), ByteCount(m.len())),
                _ => write!(f, "{} is not a regular file", path.display()),
            },
        }
    }
}

/// Hands a `send_msg` message to the agent running for `--keys`, if there is one and the
/// message is for it: TEXT or a regular file of at most [`agent::MAX_MESSAGE`] bytes, to the
/// agent's server, on TLS, not `--to`, not `--no-agent`. [`HandOver::NotTaken`]: nothing was
/// handed over; the command sends the message itself. Blocking, without a runtime: a command
/// whose message the agent takes does nothing else.
pub(super) fn hand_over(a: &ClientSendArgs) -> Result<HandOver> {
    let path = socket_path(&a.conn.keys);
    let not_taken = |why| {
        Ok(HandOver::NotTaken(Some(NotTaken {
            socket: path.clone(),
            why,
            source: Source::of(a),
            server: a.conn.server.clone(),
        })))
    };
    if a.no_agent {
        return not_taken(Why::Refused);
    }
    if a.to.is_some() {
        return not_taken(Why::To);
    }
    if a.conn.plain_v1 {
        return not_taken(Why::PlainV1);
    }
    if std::fs::symlink_metadata(&path).is_err() {
        return not_taken(Why::NoSocket);
    }
    let Some(message) = small_message(a)? else {
        return not_taken(Why::NotSmall);
    };
    let (len, mode) = (message.len() as u64, a.message.mode.into());
    // The agent may retry for this command's --timeout, then wait for the ack: this command
    // allows as much, and the agent gives up on the message when the command would.
    let wait_s = SendRequest::wait_for(a.conn.timeout);
    let request = Request::Send(SendRequest {
        server: a.conn.server.clone(),
        mode,
        max_asymmetric: a.max_asymmetric,
        wait_s,
        message,
    });
    let wait = Duration::from_secs(u64::from(wait_s)).saturating_add(SOCKET_TIMEOUT);
    match agent::ask(&path, &request, wait) {
        Ok(Reply::Delivered {
            id,
            plaintext_len,
            mode: sent,
        }) if plaintext_len == len && sent == mode => {
            tracing::debug!(socket = %path.display(), "sent by the agent");
            print_delivered(a.json, &id, plaintext_len, sent);
            Ok(HandOver::Answered(ExitCode::SUCCESS))
        }
        Ok(Reply::Delivered {
            plaintext_len,
            mode: sent,
            ..
        }) => {
            let error = format!(
                "the agent reported delivering {} in {sent} mode, not this message's {} in \
                 {mode} mode",
                ByteCount(plaintext_len),
                ByteCount(len)
            );
            print_not_delivered(a.json, &error, None);
            Ok(HandOver::Answered(ExitCode::FAILURE))
        }
        Ok(Reply::NotProven { id, text }) => {
            let (error, _) = agent::split_hint(&text);
            let error = letterlock::text::line(error);
            print_not_delivered(a.json, &format!("{error} (sent by the agent)"), Some(id));
            // Always this command's own: what "not proven" means is not an agent's to say
            // (found by a review: an agent of another version could have advised sending it
            // again).
            say_hint(NO_ACK_HINT);
            Ok(HandOver::Answered(ExitCode::FAILURE))
        }
        Ok(Reply::NotDelivered(text)) => {
            // The agent's words are text. A message over the command's own asymmetric limit
            // never gets here: it is refused before it is offered (`refuse_over_asymmetric`).
            let (error, hint) = agent::split_hint(&text);
            let error = letterlock::text::line(error);
            print_not_delivered(a.json, &format!("{error} (sent by the agent)"), None);
            if let Some(hint) = hint {
                say_hint(&letterlock::text::line(hint).to_string());
            }
            Ok(HandOver::Answered(ExitCode::FAILURE))
        }
        Ok(Reply::Declined(why)) => {
            if let Some(changed) = agent::declined_for_changed_keys(&why) {
                // Said whatever comes of the message: the agent has stopped, and the next
                // commands will need the key's passphrase if it has one.
                status!(
                    "letterlock: the client agent on {} stepped aside and stops: {}; sending the \
                     message from here, under the keys kept now",
                    path.display(),
                    letterlock::text::line(changed)
                );
            }
            tracing::debug!(why = %letterlock::text::line(&why), "the agent declined the message; sending it from here");
            not_taken(Why::Declined(why))
        }
        Ok(Reply::Stopping) => {
            tracing::debug!("the agent is stopping; sending the message from here");
            Ok(HandOver::NotTaken(None))
        }
        Err(e @ AskError::NotOurs(..)) => {
            status!("letterlock: ignoring the agent socket: {e}; sending the message from here");
            Ok(HandOver::NotTaken(None))
        }
        Err(e @ AskError::NotRunning(_)) => {
            tracing::debug!(error = %e, "sending the message from here");
            not_taken(Why::NotRunning)
        }
        Err(e @ AskError::NotHandedOver(_)) => {
            tracing::debug!(error = %e, "sending the message from here");
            not_taken(Why::Declined(e.to_string()))
        }
        Err(e @ AskError::NoAnswer(_)) => {
            let error = format!(
                "{e}; the message was handed to the agent on {}, and may or may not have been \
                 delivered",
                path.display()
            );
            print_not_delivered(a.json, &error, None);
            Ok(HandOver::Answered(ExitCode::FAILURE))
        }
    }
}

/// The message, when it is TEXT or a regular file of at most [`agent::MAX_MESSAGE`] bytes, read
/// into one buffer sized once (no reallocation leaves an unwiped copy); `None` for anything
/// else, which the command streams itself.
fn small_message(a: &ClientSendArgs) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let limit = agent::MAX_MESSAGE;
    if a.message.small_len(limit as u64).is_none() {
        return Ok(None);
    }
    let mut message = Zeroizing::new(Vec::with_capacity(limit + 1));
    match (&a.message.text, &a.message.file) {
        (Some(text), _) => message.extend_from_slice(text.as_bytes()),
        (None, Some(file)) => {
            let opened =
                std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
            opened.take(limit as u64 + 1).read_to_end(&mut message)?;
        }
        (None, None) => return Ok(None),
    }
    // A file that grew since it was looked at is streamed by the command.
    Ok((message.len() <= limit).then_some(message))
}
