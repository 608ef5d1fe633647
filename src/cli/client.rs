//! `letterlock client ...`: the client: its key pair, sending to the server or (relayed by
//! it) to a person, receiving into its mailbox, contacts and receipts.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use letterlock::client::Sealing;
use letterlock::envelope::{self, SealOptions};
use letterlock::files::FileLock;
use letterlock::keys::Identity;
use letterlock::text::{ByteCount, TimeSpan};

use super::mailbox::{InboxArgs, ReadArgs, ascii_json, open_mailbox};
use super::offline::{file_reader, write_stdout_unbuffered};
use super::{CommandSteps, Deferred, ModeArg, PairArgs, STDOUT_LIMIT, peer_key};

#[derive(Subcommand, Debug)]
pub(super) enum ClientCommand {
    /// Generate the client's key pair: client_private.pem and client_public.pem.
    #[command(
        name = "generate_key_pair",
        visible_alias = "generate-key-pair",
        after_help = exit_status!()
    )]
    GenerateKeyPair(Deferred<PairArgs>),
    /// Seal a message for the server and send it; prints "delivered" only once the server
    /// proved it decrypted and stored the message. The message is TEXT, --file FILE, or stdin
    /// (no TEXT, or `-`): `echo hi | letterlock client send_msg`. With --to NAME, the message
    /// is for another client instead, relayed by the server, which cannot read it.
    #[command(
        name = "send_msg",
        visible_alias = "send-msg",
        after_help = "With --to NAME the message is sealed to NAME's key (pinned with `client \
                      trust`, or from the server's signed directory) and signed with yours; the \
                      server stores it for NAME and cannot open it. The server learns who writes \
                      to whom, when, and the sealed size (the message's length to within the \
                      format's overhead; only the network, inside TLS, sees padded sizes), never \
                      the content. It \
                      answers \"stored\", its word only; \"read by NAME\" comes later from \
                      NAME's receipt, which only NAME can make (`client receipts`, or --wait). \
                      If the directory's key for NAME changed since you last saw it, nothing is \
                      sent until you accept it (`client contacts --accept NAME`, after comparing \
                      fingerprints with NAME out of band).\n\n\
                      Exit status: 0 delivered (to the server), or with --to stored for NAME \
                      (with --wait: whether or not NAME read it in time, as the last line says); \
                      1 not sent or not proven; 2 wrong usage.",
        examples = &[
            "letterlock client send_msg \"hello\"",
            "letterlock client send_msg --file report.pdf --server 127.0.0.1:8000 --keys .",
            "echo \"hi bob\" | letterlock client send_msg --to bob --wait 30s",
        ]
    )]
    SendMsg(Deferred<ClientSendArgs>),
    /// Fetch, verify, keep in the client's mailbox and print (or save) every message the
    /// server holds for this client.
    #[command(
        name = "recv_msg",
        visible_alias = "recv-msg",
        after_help = "Each message is kept in the client's mailbox (KEYS/letterlock-client.db) \
                      before the server is told to delete it; `client inbox` and `client read` \
                      read it again later. Text goes to stdout (escaped on a terminal, exact \
                      bytes to a pipe or file), status lines to stderr. A message from another \
                      client is verified with that client's key, pinned with `client trust` or \
                      from the server's signed directory (read when a sender's key is new to \
                      this client), and shown as from its name; the server cannot read it. \
                      Two recv_msg on one --keys folder take turns: the second says it waits \
                      (up to --timeout seconds), then shows only what is still new.\n\n\
                      Exit status: 0 every message new and shown or saved (or none waiting); \
                      3 a repeat was ignored; 4 a message was set aside, not received: stale, \
                      not openable, or from another client whose key you have not pinned or \
                      accepted (see docs/PROTOCOL.md, \"The client's record of received \
                      messages\" and \"Receiving\"); 5 a \
                      message was received and kept but not printed (binary on a terminal or \
                      with --json, or over 64 MiB): `letterlock client read ID -o FILE` gets \
                      it; 130 interrupted by Ctrl-C (143 by SIGTERM): the messages shown \
                      are kept, the others stay on the server for the next recv_msg; 1 an \
                      error; 2 wrong usage.",
        examples = &[
            "letterlock client recv_msg",
            "letterlock client recv_msg --wait 2m -o received",
            "letterlock client recv_msg --json",
        ]
    )]
    RecvMsg(Deferred<RecvArgs>),
    /// List the messages kept in the client's mailbox (every message recv_msg received).
    #[command(after_help = exit_status!())]
    Inbox(Deferred<InboxArgs>),
    /// Open and verify a message kept in the client's mailbox again; print it or save it.
    #[command(after_help = exit_status!())]
    Read(Deferred<ReadArgs>),
    /// Fetch the server's public key on first contact and keep it as KEYS/server_public.pem
    /// once you confirm its fingerprint (as ssh's known_hosts): the TLS handshake proves the
    /// server holds that key, but only you can tell it is the right server.
    #[command(
        name = "trust-server",
        visible_alias = "trust_server",
        after_help = "Exit status: 0 the key was written (or was already the one kept), 1 \
                      refused: not confirmed, --fingerprint did not match, another key is kept \
                      (see --replace), or the server could not be reached; 2 wrong usage."
    )]
    TrustServer(Deferred<super::trust_server::TrustServerArgs>),
    /// Pin another client's public key under a name, for `send_msg --to NAME` and to verify
    /// what they send you. Prints the key id and the OpenSSH fingerprint: compare it with the
    /// owner out of band (in person, on the phone); a pinned key always wins over the server's
    /// directory, so a server cannot swap it.
    #[command(
        after_help = "Exit status: 0 pinned (or already pinned), 1 refused: NAME has another \
                      key (see --replace), the key is pinned under another name, or the file is \
                      not a key; 2 wrong usage."
    )]
    Trust(Deferred<super::contacts::TrustArgs>),
    /// Forget a contact (pinned, or from the directory).
    #[command(
        after_help = "Exit status: 0 removed, 1 no such contact (or an error), 2 wrong usage."
    )]
    Untrust(Deferred<super::contacts::UntrustArgs>),
    /// Read the server's signed directory of the clients it trusts, verify it against the
    /// pinned server key, and list your contacts: pinned keys and directory keys.
    #[command(
        after_help = "The directory is signed by the server's key: nobody between you and the \
                      server can slip a key in. But the server itself can lie: a name seen for \
                      the first time is trusted on the server's word (compare the fingerprint \
                      with the person out of band, then `client trust` it to pin it). A key \
                      that changes for a name you saw before is shown as a change, as ssh shows \
                      a changed host key, and is not used until you --accept it. A directory \
                      entry that disagrees with a key you pinned is refused and never used.\n\n\
                      Exit status: 0 fine; 6 something needs your attention: the directory \
                      conflicts with a pinned key, a changed key waits for --accept, or a \
                      contact is stored under the reserved name `server` (from before that name \
                      was refused; never used: untrust it); 1 an \
                      error (the directory did not verify, the server could not be reached); 2 \
                      wrong usage."
    )]
    Contacts(Deferred<super::contacts::ContactsArgs>),
    /// List the messages you sent to other clients and whether each was read: asks the server
    /// for the receipts not verified yet, and checks each against the proof computed when the
    /// message was sealed.
    #[command(
        after_help = "A receipt is the recipient's ack tag, which only someone who decrypted the \
                      message can compute; the server stores it but cannot make one. \"read by \
                      NAME\" is shown only when the tag matches the one this client kept; any \
                      other receipt is reported as not checking out.\n\n\
                      Exit status: 0 fine; 6 the server returned a receipt that does not check \
                      out (never counted as read); 1 an error; 2 wrong usage."
    )]
    Receipts(Deferred<super::contacts::ReceiptsArgs>),
    /// Keep the client's key and a connection to the server for the send_msg commands that
    /// follow, as ssh's ControlMaster does: each hands its message over a socket in the keys
    /// folder (KEYS/client_agent.sock) instead of reading the key and connecting itself.
    #[command(
        after_help = "Run it in the background (`letterlock client agent &`) or in another \
                      terminal. A passphrase-protected key is asked for once, here, on the \
                      terminal: start such an agent in the foreground of one, or give the \
                      passphrase with --passphrase-file or LETTERLOCK_PASSPHRASE. While it runs, \
                      `client send_msg` with the same --keys and --server hands it any message \
                      of up to 64 KiB given as TEXT or --file, and prints what it would have \
                      printed: \"delivered\" still means the server proved it decrypted and \
                      stored the message. Larger messages, stdin, --to and --no-agent are sent \
                      by the command itself, as when no agent runs (reading the key, and so \
                      needing its passphrase, itself). If server_public.pem or \
                      client_private.pem is replaced while it runs, it steps aside and stops \
                      before its next message (which the command then sends itself, under the \
                      new keys): start it again.\n\n\
                      The agent signs and sends whatever a process of your user hands it; other \
                      users cannot connect (the socket is 0600 and every peer's user id is \
                      checked). See docs/SECURITY.md, \"The client agent\".\n\n\
                      Exit status: 0 stopped (--stop, Ctrl-C, or --persist without a message); \
                      1 it could not start (no key, the server unreachable or refusing us, an \
                      agent already running), or --stop found no agent to stop; 2 wrong usage."
    )]
    Agent(Deferred<super::agent::AgentArgs>),
}

#[derive(Args, Debug)]
pub(super) struct ClientConn {
    /// Folder with client_private.pem and server_public.pem. The client also keeps its TLS
    /// handshake key there, in client_handshake.pem (0600, replaced daily; never for a
    /// passphrase-protected key), so that each command does not pay an RSA signature for it.
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
    /// Address of the server, HOST:PORT.
    #[arg(long, env = "LETTERLOCK_SERVER", default_value = "127.0.0.1:8000", value_parser = super::server_address)]
    pub(super) server: String,
    // The commands that send a message say more (`SEND_TIMEOUT_HELP`), and so does recv_msg
    // (`RECV_TIMEOUT_HELP`).
    /// How long to keep trying (seconds, or with a unit: 500ms, 2m) while the server turns the
    /// connection away (busy, or its mailbox database away): it retries with growing, jittered
    /// waits and says so on stderr; also the longest wait for the connection to be set up.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = wait_duration)]
    pub(super) timeout: Duration,
    /// Speak the plain version 1 wire instead of TLS 1.3, to a server started with
    /// --plain-v1. It exists to show message-level protection on a bare wire in class: the
    /// messages stay sealed and signed, but the server is not authenticated before we send,
    /// frames travel in the clear, and a network attacker can fake deliveries and replay.
    #[arg(long)]
    pub(super) plain_v1: bool,
}

/// What to send and how: the message arguments `client send_msg` and `server send_msg` share.
#[derive(Args, Debug)]
pub(super) struct MessageArgs {
    /// The message text, sent as it is even when it names a file (--file sends a file);
    /// without it, or with `-`, the message is read from stdin (as `seal` and age do).
    #[arg(conflicts_with = "file")]
    pub(super) text: Option<String>,
    /// Send the contents of a file instead (`-` for stdin); any size in hybrid mode.
    #[arg(long)]
    pub(super) file: Option<PathBuf>,
    /// How to encrypt: hybrid (AES-256-GCM, any size) or asymmetric (RSA only, up to 1 MiB).
    #[arg(long, value_enum, default_value = "hybrid")]
    pub(super) mode: ModeArg,
}

impl MessageArgs {
    /// Whether the message is known to be at most `limit` bytes before it is read: TEXT, or a
    /// regular file that small. Stdin is not (it is read as it comes).
    pub(super) fn is_small(&self, limit: u64) -> bool {
        self.small_len(limit).is_some()
    }

    /// The message's length when it is known before it is read and at most `limit`: TEXT, or
    /// a regular file that small (which may still change before it is read).
    pub(super) fn small_len(&self, limit: u64) -> Option<u64> {
        let len = match (self.text.as_deref(), &self.file) {
            (Some("-"), _) | (None, None) => return None,
            (Some(text), _) => text.len() as u64,
            (None, Some(p)) => super::regular_file_len(p)?,
        };
        (len <= limit).then_some(len)
    }

    /// Says on stderr (a status line: not under -q) that TEXT is sent as it is when it names
    /// an existing file: the classroom's `send_msg "text"` must keep sending the text, but
    /// someone with a file of that name most likely meant its contents. One metadata call, and
    /// none under -q.
    pub(super) fn note_text_naming_a_file(&self) {
        let Some(text) = self.text.as_deref() else {
            return;
        };
        if super::quiet() || text.is_empty() || text == "-" || !Path::new(text).is_file() {
            return;
        }
        let name = letterlock::text::quoted(text);
        status!(
            "letterlock: note: sending the text {name} itself as the message, not the file of \
             that name; to send the file's contents, use --file {name}"
        );
    }

    /// The message's bytes: the text argument, `--file`, or stdin (no text, `-`, `--file -`).
    pub(super) fn input(&self) -> Result<Box<dyn Read + Send>> {
        Ok(match (self.text.as_deref(), &self.file) {
            (Some("-"), _) | (None, None) => stdin_message()?,
            (Some(text), _) => Box::new(io::Cursor::new(text.as_bytes().to_vec())),
            (None, Some(p)) if p == Path::new("-") => stdin_message()?,
            (None, Some(p)) if p.is_dir() => bail!("{} is a folder, not a file", p.display()),
            (None, Some(p)) => file_reader(p)?,
        })
    }
}

/// Largest message read from a terminal: typed or pasted text, held in memory (wiped) before
/// sending; anything larger belongs in a file (`--file`), which is streamed.
const TERMINAL_MESSAGE_LIMIT: u64 = 16 * 1024 * 1024;

/// Stdin as the message: streamed from a pipe or file. On a terminal a bare `send_msg` would
/// otherwise wait without a word: say what it waits for (as gpg does), and read all that is
/// typed before connecting, so that no connection sits idle (and times out) while a person types.
fn stdin_message() -> Result<Box<dyn Read + Send>> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Ok(Box::new(stdin));
    }
    status!(
        "letterlock: reading the message from the terminal: type it, then Ctrl-D on a line of \
         its own (or give TEXT or --file FILE)"
    );
    let mut typed = zeroize::Zeroizing::new(Vec::new());
    stdin
        .lock()
        .take(TERMINAL_MESSAGE_LIMIT + 1)
        .read_to_end(&mut typed)?;
    if typed.len() as u64 > TERMINAL_MESSAGE_LIMIT {
        bail!(
            "more than {} MiB typed on the terminal; send a file with --file FILE",
            TERMINAL_MESSAGE_LIMIT >> 20
        );
    }
    Ok(Box::new(io::Cursor::new(typed)))
}

/// `--timeout` of the commands that send a message (`send_msg`, `agent`), which also resend one
/// the server answered "unavailable"; recv_msg has its own ([`RECV_TIMEOUT_HELP`]), every other
/// client command [`ClientConn`]'s, which say only what it does.
pub(super) const SEND_TIMEOUT_HELP: &str = "How long to keep trying (seconds, or with a unit: \
     500ms, 2m) while the server is busy, answers \"unavailable\" because its mailbox database \
     is away, or the connection breaks under the send (a server restarting): it retries with \
     growing, jittered waits for this long after the first failure, resends the same message \
     under the same id (a server that stored it only acknowledges it again), and says so on \
     stderr; also the longest wait for the connection to be set up";

#[derive(Args, Debug)]
#[command(mut_arg("timeout", |a| a.help(SEND_TIMEOUT_HELP)))]
pub(super) struct ClientSendArgs {
    #[command(flatten)]
    pub(super) message: MessageArgs,
    /// Largest plaintext to send in asymmetric mode, in bytes (the server has its own limit).
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    pub(super) max_asymmetric: u64,
    /// Print the outcome as one JSON object on stdout: {"id", "bytes", "mode", "delivered"}
    /// (and "error" when not delivered, with "id" and "stored": null when the message may or may
    /// not have been stored); with --to: {"id", "bytes", "mode", "to", "to_key", "stored",
    /// "read"} (and "error"; "stored": null when unknown; "read": null when --wait could not
    /// check the receipt).
    #[arg(long)]
    pub(super) json: bool,
    /// Send to this contact (another client, through the server) instead of to the server.
    #[arg(long, value_name = "NAME")]
    pub(super) to: Option<String>,
    /// With --to: wait up to DURATION (seconds, e.g. 30, or with a unit: 30s, 2m) for NAME's
    /// receipt, asking every half second, and say whether NAME read it.
    #[arg(long, value_name = "DURATION", requires = "to", value_parser = wait_duration)]
    pub(super) wait: Option<Duration>,
    /// Send from this process even when a `client agent` runs for --keys (by default a message
    /// of up to 64 KiB given as TEXT or --file is handed to it, and it answers as this command
    /// would).
    #[arg(long)]
    pub(super) no_agent: bool,
    #[command(flatten)]
    pub(super) conn: ClientConn,
}

/// `--timeout` of `recv_msg`, which also waits for another recv_msg on the same folder (it holds
/// the folder while it receives, [`lock_keys_for_recv`]); every other command's help keeps
/// [`ClientConn`]'s words, which do not mention it (found by a trial run: `client contacts
/// --help` spoke of recv_msg).
const RECV_TIMEOUT_HELP: &str = "How long to keep trying (seconds, or with a unit: 500ms, 2m) \
     while the server turns the connection \
     away (busy, or its mailbox database away): it retries with growing, jittered waits and says \
     so on stderr; also the longest wait for the connection to be set up, and for another \
     recv_msg on the same --keys folder to finish (0: refuse at once)";

#[derive(Args, Debug)]
#[command(mut_arg("timeout", |a| a.help(RECV_TIMEOUT_HELP)))]
pub(super) struct RecvArgs {
    #[command(flatten)]
    pub(super) conn: ClientConn,
    /// Save each message as DIR/<message id>.msg instead of printing it. DIR must be a folder;
    /// a missing one is created.
    #[arg(short, long, value_name = "DIR", value_parser = output_dir)]
    pub(super) output: Option<PathBuf>,
    /// If nothing is waiting, keep asking for up to DURATION (seconds, e.g. 30, or with a
    /// unit: 30s, 2m). A message set aside by an earlier recv_msg is reported again, and the
    /// wait goes on past it.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = wait_duration)]
    pub(super) wait: Duration,
    /// Print one JSON object per message on stdout, one per line: {status ("new", "repeat" or
    /// "set_aside"), id, sender_key, sender (a contact's name, or "server"), sender_source
    /// ("server", "pinned" or "directory"), server_address (only for a message from the server:
    /// the --server it was fetched from), created, mode, bytes, in_mailbox, and "text" (a UTF-8
    /// message), "file" (with -o) or neither (binary or over 64 MiB: `client read ID -o
    /// FILE`); a message set aside has only status, id, sender_key (null if not even its
    /// header could be read), "error" and "again" (true if an earlier recv_msg saw it too;
    /// such a message, and one whose header cannot be read, does not end a --wait)}.
    /// Non-ASCII is written as \u escapes.
    #[arg(long)]
    pub(super) json: bool,
}

/// A `--wait`, `--timeout` or `--persist` value: a plain number is seconds (`30`), anything else
/// a duration with its unit (`30s`, `2m`, `1h 30m`, `500ms`), so every such option takes both
/// forms (found by a trial run: `--timeout 2s` was refused while `--wait 2s` was taken).
pub(super) fn wait_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    // humantime's own text ("expected number at 0") says where, not what to give.
    humantime::parse_duration(text).map_err(|_| {
        "not a duration: give seconds (30) or a number with its unit (30s, 2m, 1h)".into()
    })
}

/// The end of a wait the user gave (`--wait`, `--timeout`). A wait too long for the clock to
/// add (`--wait 18446744073709551615`, someone meaning "for ever") never ends, instead of
/// panicking on the addition (found by a trial run: `send_msg --to bob --wait` that long
/// panicked after the message was stored).
#[derive(Clone, Copy, Debug)]
struct Deadline(Option<std::time::Instant>);

impl Deadline {
    fn after(wait: Duration) -> Self {
        Deadline(std::time::Instant::now().checked_add(wait))
    }

    fn passed(self) -> bool {
        self.0.is_some_and(|end| std::time::Instant::now() >= end)
    }
}

/// Connects as the client: protocol version 2 (TLS 1.3) unless `--plain-v1`, retrying while
/// the server is busy, and turns the failures a newcomer meets into what to do about them.
pub(super) async fn connect(conn: &ClientConn) -> Result<letterlock::client::Client> {
    let keys = ClientKeys::load(conn)?;
    connect_with(conn, keys).await
}

/// The two keys a connection needs, read (and unlocked) once: `send_msg` also seals with them
/// while the connection is being made.
pub(super) struct ClientKeys {
    pub(super) identity: Arc<dyn Identity>,
    pub(super) server: letterlock::keys::PublicKey,
    /// `DIR/client_handshake.pem`, for a private key that is not passphrase-protected
    /// (docs/SECURITY.md, "The handshake key cache").
    pub(super) handshake_key_cache: Option<letterlock::tls::HandshakeKeyCache>,
}

impl ClientKeys {
    /// The client's private key and the pinned server key from `--keys`; checks `--server`
    /// first, so a mistyped address fails before a passphrase is asked.
    pub(super) fn load(conn: &ClientConn) -> Result<ClientKeys> {
        let (identity, protected) = super::own_key_protected(&conn.keys, "client")?;
        let cache = handshake_key_cache(&conn.keys);
        if protected {
            // Kept from before the key had a passphrase (given by other means than
            // `letterlock passphrase`, which removes it).
            discard_handshake_key(&cache)?;
        }
        Ok(ClientKeys {
            identity: Arc::new(identity),
            server: peer_key(&conn.keys, "server")?,
            handshake_key_cache: (!protected).then_some(cache),
        })
    }

    /// As [`ClientKeys::load`], except that the private key is parsed at its first use, not
    /// now ([`letterlock::keys::LazyPrivateKey`]), when the handshake can do without it: the key
    /// is not passphrase-protected, its public key file is beside it, and the handshake key
    /// cache holds a fresh key that this public key certified. `send_msg` then uses the private
    /// key first on the thread that signs the message, while this one connects. Otherwise
    /// the handshake would sign a new handshake key with it first thing, and the key is loaded
    /// now, as `load` does. The lazy key is returned as well: if it turns out to be damaged,
    /// [`ClientKeys::key_error`] says so as loading it would have.
    pub(super) fn load_lazily(
        conn: &ClientConn,
    ) -> Result<(ClientKeys, Option<Arc<letterlock::keys::LazyPrivateKey>>)> {
        let dir = &conn.keys;
        let private = super::own_key_path(dir, "client")?;
        let (_, public) = letterlock::keys::pair_paths(dir, "client");
        let cache = handshake_key_cache(dir);
        // Read here, parsed later: the process holds the key from now on.
        super::keep_memory_private()?;
        let lazy = match letterlock::keys::LazyPrivateKey::read(&private, &public)? {
            Some(lazy) if cache.is_fresh_for(lazy.public()) => Arc::new(lazy),
            _ => return Ok((ClientKeys::load(conn)?, None)),
        };
        let keys = ClientKeys {
            identity: lazy.clone(),
            server: peer_key(dir, "server")?,
            handshake_key_cache: Some(cache),
        };
        Ok((keys, Some(lazy)))
    }

    /// The error of a key read lazily that could not be used (damaged, or not the pair of its
    /// public key file), as loading it at the start would have given it: it comes before
    /// whatever failed because of it.
    pub(super) fn key_error(
        lazy: Option<&letterlock::keys::LazyPrivateKey>,
    ) -> Option<anyhow::Error> {
        lazy.and_then(|k| k.key().err()).map(anyhow::Error::new)
    }
}

/// The file in the keys folder where a client keeps its TLS handshake key: written when the key
/// is made, even if the server then refuses us (harmless: `letterlock::tls::cache` says why).
const HANDSHAKE_KEY_CACHE: &str = "client_handshake.pem";

/// `DIR/client_handshake.pem`.
pub(super) fn handshake_key_cache(keys: &Path) -> letterlock::tls::HandshakeKeyCache {
    letterlock::tls::HandshakeKeyCache::new(keys.join(HANDSHAKE_KEY_CACHE))
}

/// Deletes the handshake key kept for a client key that now has a passphrase
/// (docs/SECURITY.md, "The handshake key cache"), saying so.
pub(super) fn discard_handshake_key(cache: &letterlock::tls::HandshakeKeyCache) -> Result<()> {
    let path = cache.path();
    if cache.discard().with_context(|| {
        format!(
            "cannot delete {}, the TLS handshake key kept from before the key had a passphrase; \
             delete it by hand",
            path.display()
        )
    })? {
        status!(
            "letterlock: deleted {}: the TLS handshake key kept from before the key had a \
             passphrase (none is kept for a passphrase-protected key)",
            path.display()
        );
    }
    Ok(())
}

/// Connects with keys already loaded ([`ClientKeys::load`]).
pub(super) async fn connect_with(
    conn: &ClientConn,
    keys: ClientKeys,
) -> Result<letterlock::client::Client> {
    use letterlock::client::{Client, ClientConfig, ClientError, Transport};
    use letterlock::tls::TlsOptions;
    let ClientKeys {
        identity,
        server,
        handshake_key_cache,
    } = keys;
    let me = identity.public().id();
    tracing::debug!(
        server = %conn.server,
        client_key = %me,
        server_key = %server.id(),
        transport = if conn.plain_v1 { "plain v1" } else { "TLS 1.3" },
        "connecting"
    );
    let transport = if conn.plain_v1 {
        Transport::PlainV1
    } else {
        Transport::Tls(TlsOptions::default())
    };
    let backoff = backoff(conn.timeout);
    let result = Client::connect_retrying(
        &conn.server,
        identity,
        server,
        ClientConfig {
            handshake_key_cache,
            ..ClientConfig::default()
        },
        transport,
        backoff,
        report_retry,
    )
    .await;
    let addr = &conn.server;
    match result {
        Ok(c) => {
            match c.tls_session() {
                Some(s) => tracing::debug!(
                    server = %addr,
                    version = ?s.version,
                    group = ?s.group,
                    cipher_suite = ?s.cipher_suite,
                    server_key = %s.peer,
                    "connected; the server proved its key in the handshake"
                ),
                None => tracing::debug!(server = %addr, "connected (plain version 1 wire)"),
            }
            Ok(c)
        }
        Err(ClientError::Refused {
            code: letterlock::wire::ErrorCode::AuthFailed,
            ..
        }) => {
            // A client_public.pem of another key would send the operator to trust the wrong
            // file: say that the two files are not a pair instead.
            let (private, public) = letterlock::keys::pair_paths(&conn.keys, "client");
            match letterlock::keys::load_public(&public) {
                Ok(other) if other.id() != me => bail!(
                    "the server at {addr} refused our key {me} (authentication failed), the key \
                     of {private}; {public} beside it is another key ({other}): the two files \
                     are not a pair. If {private} is the right key, write its public half with \
                     `openssl pkey -in {private} -pubout -out {public}` and have the server's \
                     operator trust that",
                    private = private.display(),
                    public = public.display(),
                    other = other.id(),
                ),
                _ => bail!(
                    "the server at {addr} refused our key {me} (authentication failed): its \
                     operator must trust client_public.pem (`letterlock server trust \
                     client_public.pem --name NAME`, with --replace if NAME is trusted with \
                     another key already)"
                ),
            }
        }
        Err(ClientError::Busy { attempts }) => bail!(
            "the server at {addr} turned the connection away {attempts} time(s) in {}: it \
             closed it before the handshake, as a busy or stopping server does (and a proxy or \
             load balancer whose server is not running); try again later, or wait longer with \
             --timeout SECONDS",
            TimeSpan(conn.timeout)
        ),
        Err(ClientError::PlainV1Server) => bail!(
            "the server at {addr} speaks the plain version 1 wire (it was started with \
             --plain-v1), and this client speaks TLS 1.3 (version 2): restart the server \
             without --plain-v1, or, only to show the bare wire, pass --plain-v1 here too"
        ),
        // A server started without --plain-v1 waits for a TLS handshake, as this client waits
        // for a Hello: from here it looks silent (found by a trial run: this was said as a
        // closed connection).
        Err(ClientError::Timeout { after, .. }) if conn.plain_v1 => bail!(
            "no version 1 Hello from the server at {addr} within {}: either nothing answers \
             there, or it is a server started without --plain-v1, which speaks TLS 1.3 \
             (version 2) and waits for a TLS handshake; drop --plain-v1 here, or start the \
             server with --plain-v1 too",
            TimeSpan(after)
        ),
        Err(ClientError::NotLetterlock(_)) if conn.plain_v1 => bail!(
            "no version 1 Hello from the server at {addr}: with --plain-v1 this client \
             speaks the plain version 1 wire, and a server started without --plain-v1 speaks \
             TLS 1.3 (version 2) and closes the connection; drop --plain-v1 here, or start \
             the server with --plain-v1 too"
        ),
        // These name the server themselves: once is enough.
        Err(e @ (ClientError::Connect { .. } | ClientError::Timeout { .. })) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("server {addr}"))),
    }
}

/// Refuses a message known before it is read to be over `--max-asymmetric` in asymmetric mode,
/// before the agent, the key or a connection (found by review: it was found out part-way
/// through sealing, without the file's size); with --json, said in JSON too.
pub(super) fn refuse_over_asymmetric(a: &ClientSendArgs) -> Result<()> {
    if envelope::Mode::from(a.message.mode) != envelope::Mode::Asymmetric {
        return Ok(());
    }
    let Some(len) = a.message.small_len(u64::MAX) else {
        return Ok(());
    };
    if len <= a.max_asymmetric {
        return Ok(());
    }
    let what = match &a.message.file {
        Some(path) => path.display().to_string(),
        None => "TEXT".to_owned(),
    };
    let e = super::over_asymmetric_limit(a.max_asymmetric, &what, len);
    if a.json {
        print_json_not_delivered(&super::error_chain(&e), None);
    }
    Err(e)
}

pub(super) async fn client_send(a: ClientSendArgs) -> Result<ExitCode> {
    if let Some(name) = a.to.clone() {
        return send_to(a, &name).await;
    }
    let json = a.json;
    let sent = send_to_server(a).await;
    // A script reading --json gets its answer whatever failed; the error and its hint still go
    // to stderr.
    if let (true, Err(e)) = (json, &sent) {
        print_json_not_delivered(&super::error_chain(e), None);
    }
    sent
}

/// Says a send's failure as every failure is said, with the hint for a send
/// ([`super::hints::send_hint`]: a connection that broke is explained in a sender's terms; found
/// by a review, a handshake cut short while connecting to send spoke of received messages).
/// A closed stdout is left to [`super::run`], which ends quietly.
pub(super) fn said_as_a_send(e: anyhow::Error) -> Result<ExitCode> {
    if super::closed_pipe(&e) {
        return Err(e);
    }
    super::terminal::print_error(&super::error_chain(&e));
    super::hints::print_send_hint(e.as_ref());
    Ok(ExitCode::FAILURE)
}

/// `send_msg` without `--to`: seals for the server and sends; `Ok(FAILURE)` when the server
/// did not prove delivery (said on stderr, and in JSON with --json), an error when the message
/// could not be sent at all.
async fn send_to_server(a: ClientSendArgs) -> Result<ExitCode> {
    // The input first: a missing file fails before any connection, and text typed on a
    // terminal is complete before the connection starts.
    let input = a.message.input()?;
    let opts = SealOptions {
        asymmetric_limit: a.max_asymmetric,
        ..SealOptions::mode(a.message.mode.into())
    };
    // A small message is sealed into memory on another thread while the connection is made
    // (`Sealing`; in hybrid mode its header and wrapped key go first), and that thread is the
    // first to use the private key: it parses it too. A large one is sealed as it is sent, in
    // constant memory (one-shot latency: docs/PERFORMANCE.md, "What was tried").
    let small = a.message.is_small(SEAL_AHEAD_LIMIT);
    let (keys, lazy) = if small {
        ClientKeys::load_lazily(&a.conn)?
    } else {
        (ClientKeys::load(&a.conn)?, None)
    };
    let outgoing = if small {
        let (identity, server, opts) = (keys.identity.clone(), keys.server.clone(), opts.clone());
        let whole_len = a.message.small_len(SEAL_WHOLE_LIMIT);
        Outgoing::Sealing(Sealing::start(&keys.server, opts.mode, move |out| {
            seal_ahead(identity.as_ref(), &server, &opts, input, whole_len, out)
        }))
    } else {
        Outgoing::Stream(input)
    };
    let mut client = match connect_with(&a.conn, keys).await {
        Ok(client) => client,
        Err(e) => return Err(ClientKeys::key_error(lazy.as_deref()).unwrap_or(e)),
    };
    let resend = report_retry;
    let backoff = backoff(a.conn.timeout);
    let sent = match outgoing {
        Outgoing::Stream(input) => client.send_retrying(input, opts, backoff, resend).await,
        Outgoing::Sealing(sealing) => client.send_sealing(sealing, backoff, resend).await,
    };
    match sent {
        Ok(d) => {
            print_delivered(a.json, &d.id, d.plaintext_len, d.header.mode);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if let Some(key) = ClientKeys::key_error(lazy.as_deref()) {
                // The message never had its signature: nothing was stored.
                return Err(key);
            }
            print_not_delivered(a.json, &e.to_string(), unproven_id(&e));
            super::hints::print_send_hint(&e);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Says on stderr (a status line) that a message sent was empty: legal, but more often an empty
/// `"$VAR"` or a pipe that gave nothing than what was meant, and "0 bytes" is easy to miss.
pub(super) fn note_empty(bytes: u64) {
    if bytes == 0 {
        status!(
            "letterlock: note: the message was empty (0 bytes: an empty TEXT, file or stdin); \
             if you meant to send something, give it as TEXT, --file FILE or on stdin"
        );
    }
}

/// What `send_msg` prints once the server proved it stored the message, whether this process
/// or the agent sent it.
pub(super) fn print_delivered(
    json: bool,
    id: &envelope::MessageId,
    bytes: u64,
    mode: envelope::Mode,
) {
    if json {
        let out = serde_json::json!({
            "id": id.to_string(),
            "bytes": bytes,
            "mode": mode.to_string(),
            "delivered": true,
        });
        println!("{out}");
    } else {
        println!("message id {id}");
        println!(
            "delivered: the server proved it decrypted and stored {} ({mode} mode)",
            ByteCount(bytes)
        );
    }
    note_empty(bytes);
}

/// What `send_msg` prints when the message was not delivered or its delivery not proven. An
/// unproven delivery says so itself, with the message's id and that it may have been stored:
/// "NOT delivered" before it would claim more than the client knows (found by a trial run).
/// `unproven`: the id of a message that may or may not have been stored, for --json.
pub(super) fn print_not_delivered(json: bool, error: &str, unproven: Option<envelope::MessageId>) {
    if json {
        print_json_not_delivered(error, unproven);
    }
    if unproven.is_some() || error.starts_with("delivery NOT proven") {
        eprintln!("letterlock: {error}");
    } else {
        eprintln!("letterlock: NOT delivered: {error}");
    }
}

/// `send_msg --json`'s answer when nothing was proven delivered; `unproven` is the id of a
/// message that may or may not have been stored, said so ("stored": null) for a script that
/// must not send it again as a new one.
fn print_json_not_delivered(error: &str, unproven: Option<envelope::MessageId>) {
    let out = match unproven {
        Some(id) => serde_json::json!({
            "delivered": false, "error": error, "id": id.to_string(), "stored": null
        }),
        None => serde_json::json!({ "delivered": false, "error": error }),
    };
    println!("{out}");
}

/// The id of a message that may or may not have been stored, if `e` or a cause of it is a
/// client error that says so ([`letterlock::client::ClientError::unproven_id`]).
fn unproven_id(e: &(dyn std::error::Error + 'static)) -> Option<envelope::MessageId> {
    super::hints::chain(e).find_map(|c| {
        c.downcast_ref::<letterlock::client::ClientError>()?
            .unproven_id()
    })
}

/// `send_msg --to NAME`: resolves NAME (pinned, else the server's directory, over the same
/// connection), seals to its key, records the message (with its ack tag) before sending it,
/// relays it, and with `--wait` polls for NAME's receipt.
async fn send_to(a: ClientSendArgs, name: &str) -> Result<ExitCode> {
    use super::contacts::{Recipient, check_receipts, on_contacts, open_contacts, resolve};
    use letterlock::client::contacts::{ReceiptCheck, SentMessage};
    let input = a.message.input()?;
    let opts = SealOptions {
        asymmetric_limit: a.max_asymmetric,
        ..SealOptions::mode(a.message.mode.into())
    };
    let contacts = open_contacts(&a.conn.keys)?;
    let fail = |e: anyhow::Error| -> Result<ExitCode> {
        if a.json {
            let error = super::error_chain(&e);
            let out = match unproven_id(e.as_ref()) {
                Some(id) => serde_json::json!({
                    "stored": null, "to": name, "error": error, "id": id.to_string()
                }),
                None => serde_json::json!({ "stored": false, "to": name, "error": error }),
            };
            println!("{out}");
        }
        Err(e)
    };
    let mut client = match connect(&a.conn).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let contact = match resolve(&mut client, &contacts, name).await {
        Ok(Recipient::Usable(c)) => c,
        Ok(Recipient::Changed(c)) => {
            return fail(anyhow::anyhow!(
                "NOT sent: the key of {name} in the server's directory changed (see the warning \
                 above; the key you accepted before is {}); nothing is sent until you accept the \
                 new one with `letterlock client contacts --accept {name} --key {}`, after \
                 checking its fingerprint with {name}",
                c.key.id(),
                c.offered
                    .as_ref()
                    .map_or_else(|| "KEY".to_owned(), |o| o.key.id().to_string())
            ));
        }
        Err(e) => return fail(e),
    };
    let resend = report_retry;
    let backoff = backoff(a.conn.timeout);
    let recipient_name = contact.name.clone();
    let recipient = contact.key.id();
    let record = contacts.clone();
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(None));
    let recorded_id = recorded.clone();
    let relayed = client
        .relay(input, opts, &contact.key, backoff, resend, move |sealed| {
            if let Ok(mut id) = recorded_id.lock() {
                *id = Some(sealed.header.message_id);
            }
            // Durable before the first byte is sent (PROTOCOL.md, "The client's mailbox").
            let m = SentMessage {
                id: sealed.header.message_id,
                recipient_name,
                recipient,
                ack_tag: sealed.ack_tag,
                mode: sealed.header.mode.to_byte(),
                bytes: sealed.plaintext_len,
                sent: envelope::unix_now(),
                stored: None,
                delivered: None,
            };
            tokio::task::block_in_place(|| record.record_sent(&m)).map_err(Into::into)
        })
        .await;
    // Refused outright (not "unavailable"): not stored, so no receipt will ever come; the
    // record made before sending is dropped. After any other failure the outcome is unknown
    // and the record stays, for `client receipts`.
    if let Err(letterlock::client::ClientError::Refused { code, .. }) = &relayed
        && *code != letterlock::wire::ErrorCode::Unavailable
        && let Some(id) = recorded.lock().ok().and_then(|id| *id)
    {
        on_contacts(&contacts, move |c| c.forget_sent(&id)).await?;
    }
    let relayed = match relayed {
        Ok(r) => r,
        Err(
            e @ letterlock::client::ClientError::Refused {
                code: letterlock::wire::ErrorCode::UnknownRecipient,
                ..
            },
        ) => {
            // One sentence: the server's own words add nothing to code 12 (in the debug log).
            tracing::debug!(error = %e, "relay refused");
            let e = anyhow::anyhow!(
                "NOT sent to {name}: the server does not trust {name}'s key {} as a client (code \
                 {}); if the key is right, the server's operator must trust it (`letterlock \
                 server trust`), and if the server lists another key for {name}, compare \
                 fingerprints with {name} before replacing yours",
                contact.key.id(),
                letterlock::wire::ErrorCode::UnknownRecipient,
            );
            return fail(e);
        }
        // No answer after all of it went out: it may well be waiting for NAME, so not "NOT
        // sent" (the record stays, and `client receipts` shows it once read).
        Err(e @ letterlock::client::ClientError::NoAck { .. }) => {
            return fail(anyhow::Error::new(e).context(format!("to {name}")));
        }
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!("NOT sent to {name}"));
            return fail(e);
        }
    };
    let id = relayed.id;
    on_contacts(&contacts, move |c| c.mark_stored(&id, envelope::unix_now())).await?;
    if !a.json {
        println!("message id {id}");
        println!(
            "stored for {name} on the server (not yet read): {}, {} mode, sealed to {}",
            ByteCount(relayed.plaintext_len),
            relayed.header.mode,
            contact.key.id()
        );
    }
    note_empty(relayed.plaintext_len);
    let mut read_at = None;
    // The message is stored whatever comes of waiting for its receipt: a failure to check is
    // said, and is not the command's failure (found by a review: exit 1 and "run the command
    // again" after "stored" would have sent it twice).
    let mut unchecked = None;
    if let Some(wait) = a.wait {
        let deadline = Deadline::after(wait);
        loop {
            let checks = match check_receipts(&mut client, &contacts, vec![id]).await {
                Ok((checks, _)) => checks,
                Err(e) => {
                    unchecked = Some(e);
                    break;
                }
            };
            read_at = checks.iter().find_map(|c| match c {
                ReceiptCheck::Read {
                    id: r, delivered, ..
                } if *r == id => Some(*delivered),
                _ => None,
            });
            if read_at.is_some() || deadline.passed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(e) = &unchecked {
            eprintln!(
                "letterlock: the message is stored for {name}, but its receipt could not be \
                 checked: {}; `letterlock client receipts` checks later (do not send it again)",
                letterlock::text::line(&format!("{e:#}"))
            );
        } else if !a.json {
            match read_at {
                Some(t) => println!("read by {name} at {}", super::offline::time_text(t)),
                None => println!(
                    "not read by {name} within {}; `letterlock client receipts` checks later",
                    TimeSpan(wait)
                ),
            }
        }
    }
    let _ = client.close().await;
    if a.json {
        let out = serde_json::json!({
            "id": id.to_string(),
            "bytes": relayed.plaintext_len,
            "mode": relayed.header.mode.to_string(),
            "to": name,
            "to_key": contact.key.id().to_string(),
            "stored": true,
            // null: the receipt could not be checked.
            "read": if unchecked.is_some() { None } else { Some(read_at.is_some()) },
        });
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Messages up to this size are sealed into memory ([`client_send`]) while the connection is
/// made (in hybrid mode its header and wrapped key go first); larger ones are streamed.
const SEAL_AHEAD_LIMIT: u64 = 1024 * 1024;

/// Messages known to be at most this long (TEXT, or a regular file) are read whole and sealed
/// in one call ([`envelope::seal_slice`]): [`envelope::seal`]'s 256 KiB working buffers, whose
/// wipe on drop faults in every page, would cost more than sealing a few bytes (issue 13).
const SEAL_WHOLE_LIMIT: u64 = 64 * 1024;

/// Seals `input` into `output` ahead of sending. With `whole_len` (the length the message had
/// when looked at, at most [`SEAL_WHOLE_LIMIT`]) it is read whole into a buffer sized once
/// (it never reallocates, so no unwiped copy is left behind; wiped when dropped) and sealed
/// with [`envelope::seal_slice`]; a file that grew meanwhile is sealed from what was read
/// followed by the rest, as [`envelope::seal`] does for a message of unknown length.
fn seal_ahead(
    identity: &dyn Identity,
    server: &letterlock::keys::PublicKey,
    opts: &SealOptions,
    mut input: Box<dyn Read + Send>,
    whole_len: Option<u64>,
    output: &mut impl Write,
) -> Result<envelope::Sealed, envelope::SealError> {
    let Some(len) = whole_len else {
        return envelope::seal(identity, server, opts, input, output);
    };
    // One byte of room more than the message had, to see whether it grew meanwhile.
    let room = len.saturating_add(1);
    let mut whole = zeroize::Zeroizing::new(Vec::with_capacity(
        usize::try_from(room.min(SEAL_WHOLE_LIMIT + 1)).unwrap_or(0),
    ));
    (&mut input).take(room).read_to_end(&mut whole)?;
    if (whole.len() as u64) < room {
        envelope::seal_slice(identity, server, opts, &whole, output)
    } else {
        envelope::seal(
            identity,
            server,
            opts,
            whole.as_slice().chain(input),
            output,
        )
    }
}

/// A message on its way: being sealed into memory, or still to be read and sealed as it is
/// sent.
enum Outgoing {
    Sealing(Sealing),
    Stream(Box<dyn Read + Send>),
}

/// The retries of `--timeout`: busy servers and "unavailable" answers are tried again with
/// jittered waits until then.
pub(super) fn backoff(timeout: Duration) -> letterlock::client::Backoff {
    letterlock::client::Backoff {
        deadline: timeout,
        ..letterlock::client::Backoff::default()
    }
}

/// Says on stderr why a send or relay is being tried again.
fn report_retry(r: &letterlock::client::Retry) {
    use letterlock::client::RetryCause;
    let when = if r.wait.is_zero() {
        "now".to_owned()
    } else {
        format!("waiting {}", TimeSpan(r.wait))
    };
    match r.cause {
        RetryCause::Unavailable { id } => status!(
            "letterlock: the server could not store message {id} now (it answered \
             \"unavailable\": its mailbox database may be down, or its disk full); resending \
             it: attempt {}, {}",
            r.attempt,
            when
        ),
        RetryCause::ConnectionLost { id } => status!(
            "letterlock: the connection to the server broke while sending message {id} (the \
             server stopped or restarted, or the network failed); sending it again, byte for \
             byte (a server that stored it already only acknowledges it): attempt {}, {}",
            r.attempt,
            when
        ),
        // Closed without a byte, or refused before the handshake as unavailable: a full
        // server does the first, one that cannot reach its mailbox database the second.
        RetryCause::Busy => status!(
            "letterlock: the server turned the connection away (busy, stopping, or its mailbox \
             database is unavailable; or a proxy in front of it found no server); retrying: \
             attempt {}, {}",
            r.attempt,
            when
        ),
        _ => {}
    }
}

/// The client's durable record of received messages ([`letterlock::received`]), beside its
/// keys: whatever the output mode, a message recorded there is never saved or shown again.
pub(super) fn seen_path(keys: &Path) -> PathBuf {
    keys.join(".letterlock-received")
}

/// The file `recv_msg` locks ([`FileLock`]) in the keys folder for as long as it fetches into
/// it, as `client_agent.lock` is the agent's.
pub(super) const RECV_LOCK_FILE: &str = "client_recv.lock";
/// How often a `recv_msg` waiting for another one on its keys folder tries the lock again.
const RECV_LOCK_POLL: Duration = Duration::from_millis(100);

/// Takes the keys folder `keys` for one `recv_msg`, from before it connects until it is done
/// (the lock is released when the returned value is dropped, or the process ends).
///
/// Why: a fetch reads the record of received messages once, decides "new" or "repeat" from
/// it, keeps each message in the mailbox, records it, and only then acknowledges it; a server
/// on SQLite delivers every waiting message to each fetch until one acknowledges it. Two
/// `recv_msg` on one folder at once therefore each showed every message as new, and all but
/// one then failed on the server's BadAck (found by a trial run). Holding the lock for the
/// whole exchange makes the record, the mailbox and the server's outbox agree: the second run
/// starts after the first one's messages were acknowledged and removed.
///
/// Why wait rather than refuse: a script (cron beside a hand-typed run, say) wants each
/// message once and an exit status it can trust, not an error to retry; once the first run is
/// done, the second finds nothing new or only what arrived meanwhile, and says so. It never
/// waits silently or for ever: it says on stderr once that it waits (unless --quiet), and
/// gives up after `timeout` (the command's --timeout; `--timeout 0` refuses at once) with an
/// error naming the lock file. A `recv_msg --wait` holds the folder while it waits.
async fn lock_keys_for_recv(keys: &Path, timeout: Duration) -> Result<FileLock> {
    let path = keys.join(RECV_LOCK_FILE);
    let cannot = || format!("cannot lock {} for recv_msg", path.display());
    let deadline = Deadline::after(timeout);
    let mut said = false;
    loop {
        if let Some(lock) = FileLock::try_acquire(&path).with_context(cannot)? {
            return Ok(lock);
        }
        if deadline.passed() {
            bail!(
                "another `letterlock client recv_msg` is still receiving into {} (it holds {}), \
                 after waiting {}: run this one again once it is done, or give a longer \
                 --timeout to wait for it",
                keys.display(),
                path.display(),
                TimeSpan(timeout)
            );
        }
        if !said {
            status!(
                "waiting for another `letterlock client recv_msg` on {} to finish (up to {}, \
                 --timeout)",
                keys.display(),
                TimeSpan(timeout)
            );
            said = true;
        }
        tokio::time::sleep(RECV_LOCK_POLL).await;
    }
}

/// Exit status of `recv_msg` when a delivered message was a repeat (recognised from the record,
/// acknowledged, not saved or shown again) and none was set aside or left unshown.
pub(super) const EXIT_REPEAT: u8 = 3;
/// Exit status of `recv_msg` when a message was set aside (stale, or could not be opened): it
/// stays on the server; the messages behind it were delivered.
pub(super) const EXIT_SET_ASIDE: u8 = 4;
/// Exit status of `recv_msg` when a message was received and kept in the mailbox but not
/// printed (binary content for a terminal, or over [`STDOUT_LIMIT`]), and none was set aside:
/// nothing is lost, `client read ID -o FILE` gets it.
pub(super) const EXIT_NOT_SHOWN: u8 = 5;

/// `recv_msg -o`'s DIR: not `-`, which is wrong usage (exit 2), as elsewhere (found by a trial
/// run: it was refused as a failure, exit 1).
fn output_dir(s: &str) -> std::result::Result<PathBuf, String> {
    if s == "-" {
        return Err(
            "recv_msg prints messages on stdout without -o; -o names a folder to save each \
             message in"
                .to_owned(),
        );
    }
    Ok(PathBuf::from(s))
}

/// Checks `recv_msg -o DIR` before anything is fetched: DIR must be a folder, and a missing one
/// is created (and said so), so `-o out.txt` never turns a file name into a folder unnoticed.
fn prepare_output_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "-o {} exists and is not a folder: recv_msg -o names a folder to save each message \
             in (as <id>.msg); to save one message as a file, use `letterlock client read ID \
             -o FILE`",
            dir.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use anyhow::Context as _;
            use std::os::unix::fs::DirBuilderExt;
            // Owner-only, as the plaintext files it will hold (found by a trial run: 0755).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the folder {}", dir.display()))?;
            status!("created folder {}", dir.display());
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("-o {}", dir.display()))),
    }
}

/// What `recv_msg` counted, beyond the fetch report: messages kept but not printed.
#[derive(Default)]
struct Shown {
    not_shown: usize,
    /// The unknown signing keys whose hint was printed: once per key and run, not once per
    /// message (a replaced server key leaves every message it signed behind it).
    hinted: std::collections::HashSet<letterlock::keys::KeyId>,
    /// The messages set aside and reported in this run: once each, although a fetch made after
    /// the server's delivery lease (60 s) offers one again.
    set_aside: std::collections::HashSet<envelope::MessageId>,
    /// Messages set aside whose header could not even be read: no id to tell them apart.
    unreadable: usize,
}

impl Shown {
    /// Messages set aside in this run, each counted once.
    fn set_aside(&self) -> usize {
        self.set_aside.len() + self.unreadable
    }
}

pub(super) async fn client_recv(a: RecvArgs) -> Result<ExitCode> {
    use letterlock::client::{FetchReport, Output};
    use letterlock::received::ReceivedRecord;
    if let Some(dir) = &a.output {
        prepare_output_dir(dir)?;
    }
    // The key first (a passphrase typed slowly holds nobody up), then the folder, then the
    // server: a run that waits for another one has no connection idling meanwhile.
    let keys = ClientKeys::load(&a.conn)?;
    // Ctrl-C and SIGTERM from here on (after the passphrase prompt, which they end the usual
    // way) stop the command with their exit status, 130 or 143, and "interrupted". Found by a
    // trial run: a `recv_msg --wait` started with `&` by a script (which ignores Ctrl-C in
    // it) waited out its time, said "no messages" and exited 0, as if nothing had been asked.
    let mut stop = std::pin::pin!(super::stop_signal_status()?);
    let waited = unless_stopped(stop.as_mut(), async {
        let folder = lock_keys_for_recv(&a.conn.keys, a.conn.timeout).await?;
        anyhow::Ok((folder, connect_with(&a.conn, keys).await?))
    })
    .await;
    let (_folder, mut client) = match waited {
        Ok(ready) => ready?,
        Err(status) => return Ok(interrupted(status)),
    };
    let output = match &a.output {
        Some(dir) => Output::Dir(dir.clone()),
        None => Output::Memory {
            limit: STDOUT_LIMIT,
        },
    };
    // An older client kept a list of printed ids at the same path: converted on first use.
    let server_key = peer_key(&a.conn.keys, "server")?.id().0;
    let mut record = ReceivedRecord::open_or_migrate(
        &seen_path(&a.conn.keys),
        envelope::unix_now(),
        server_key,
    )?;
    let mailbox = open_mailbox(&a.conn.keys, &a.conn.server).await?;
    let contacts: std::sync::Arc<dyn letterlock::client::Senders> =
        std::sync::Arc::new(super::contacts::open_contacts(&a.conn.keys)?);
    let read_cmd = read_command(&a.conn.keys);
    let deadline = Deadline::after(a.wait);
    let mut total = FetchReport::default();
    let mut news = 0;
    let mut shown = Shown::default();
    let fetching = async {
        loop {
            let got = client
                .fetch_from_contacts(&output, &mut record, &mailbox, contacts.clone(), |event| {
                    report_event(&event, a.json, &read_cmd, &a.conn, &mut shown)
                })
                .await;
            let got = match got {
                Ok(got) => got,
                Err(e) => break Err(e),
            };
            total.new += got.new;
            total.repeats += got.repeats;
            // A message an earlier recv_msg set aside is reported again, but it is not news:
            // the wait goes on past it (found by a trial run: a loop of `recv_msg --wait`
            // reconnected without a pause while one such message stayed on the server).
            news += got.new + got.repeats + got.set_aside - got.set_aside_again;
            if news > 0 || deadline.passed() {
                break Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    };
    let result = unless_stopped(stop.as_mut(), fetching).await;
    // Stopped part-way through a fetch, nothing is lost: each message shown was kept and
    // recorded first, and the server deletes only what was acknowledged (the next recv_msg
    // gets the rest, and acknowledges a recorded one as a repeat without showing it again).
    // Closing waits for a mailbox write in progress, so what is kept is kept whole.
    mailbox.close().await?;
    match result {
        Ok(fetched) => fetched?,
        Err(status) => return Ok(interrupted(status)),
    }
    let set_aside = shown.set_aside();
    if total.new + total.repeats + set_aside == 0 {
        status!("no messages");
    } else if set_aside > 0 {
        // After the set-aside reports, "no new messages" would read as "nothing happened".
        status!("{} new, {set_aside} set aside", total.new);
    } else if total.new == 0 {
        status!("no new messages");
    }
    Ok(if set_aside > 0 {
        ExitCode::from(EXIT_SET_ASIDE)
    } else if shown.not_shown > 0 {
        ExitCode::from(EXIT_NOT_SHOWN)
    } else if total.repeats > 0 {
        ExitCode::from(EXIT_REPEAT)
    } else {
        ExitCode::SUCCESS
    })
}

/// `work`, unless Ctrl-C or SIGTERM (`stop`, from [`super::stop_signal_status`]) comes first:
/// then `work` is dropped where it waits, and the signal's exit status is the error.
async fn unless_stopped<T>(
    stop: std::pin::Pin<&mut impl std::future::Future<Output = i32>>,
    work: impl std::future::Future<Output = T>,
) -> std::result::Result<T, i32> {
    tokio::select! {
        done = work => Ok(done),
        status = stop => Err(status),
    }
}

/// How `recv_msg` ends on Ctrl-C or SIGTERM: with the exit status a shell gives a command that
/// signal killed (`status`: 130, 143), as ssh and gpg do, once it says so (even with --quiet:
/// a script must not read the stop as "no messages"). A message file being written to -o's
/// folder under a temporary name is removed; the messages shown were kept.
fn interrupted(status: i32) -> ExitCode {
    letterlock::files::remove_unfinished();
    eprintln!(
        "letterlock: interrupted; the messages shown so far are kept in the mailbox \
         (`letterlock client inbox`), the others stay on the server for the next recv_msg"
    );
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// The `client read` command line that reads this key folder's mailbox, for the hints that
/// point to it: a hint copied as printed must find the message.
fn read_command(keys: &Path) -> String {
    if keys == Path::new(".") {
        "letterlock client read".to_owned()
    } else {
        format!("letterlock client read --keys {}", keys.display())
    }
}

/// Shows one fetch event: content on stdout, status on stderr (or one JSON line with
/// `--json`). Returns an error only when the content could not be shown where it should go
/// (then the message is not acknowledged: it is shown again next time).
fn report_event(
    event: &letterlock::client::FetchEvent<'_>,
    json: bool,
    read_cmd: &str,
    conn: &ClientConn,
    shown: &mut Shown,
) -> std::result::Result<(), letterlock::client::ClientError> {
    use letterlock::client::{ClientError, Content, FetchEvent, Sender};
    let keys = conn.keys.as_path();
    match event {
        FetchEvent::New(r) => {
            let id = r.header.message_id;
            let from = sender_text(&r.sender);
            let kept = if r.in_mailbox {
                ", kept in the mailbox"
            } else {
                ""
            };
            let binary_on_terminal = |text: &[u8]| {
                super::terminal::stdout_is_terminal() && std::str::from_utf8(text).is_err()
            };
            if json {
                let mut row = serde_json::json!({
                    "status": "new",
                    "id": id.to_string(),
                    "sender_key": r.header.sender.to_string(),
                    "sender": sender_name(&r.sender),
                    "sender_source": sender_source(&r.sender),
                    "created": r.header.created,
                    "mode": r.header.mode.to_string(),
                    "bytes": r.plaintext_len,
                    "in_mailbox": r.in_mailbox,
                });
                // As `client inbox --json` says it: "sender" is "server", whichever address.
                if matches!(r.sender, Sender::Server) {
                    row["server_address"] = conn.server.as_str().into();
                }
                match &r.content {
                    Content::Memory(text) => {
                        if let Ok(text) = std::str::from_utf8(text) {
                            row["text"] = text.into();
                        } else {
                            shown.not_shown += 1;
                        }
                    }
                    Content::File(path) => row["file"] = path.display().to_string().into(),
                    Content::OverLimit { .. } => shown.not_shown += 1,
                }
                return json_line(&row);
            }
            // What every line about this message starts with.
            let said = format!(
                "message {id} from {from} ({} mode, {}, signature verified{kept})",
                r.header.mode,
                ByteCount(r.plaintext_len)
            );
            match &r.content {
                Content::Memory(text) if binary_on_terminal(text) => {
                    shown.not_shown += 1;
                    // Not "pipe recv_msg's output" (found by a trial run): the message is
                    // received now, so recv_msg again says "no messages"; `client read` writes
                    // it to a pipe.
                    eprintln!(
                        "{said} is binary: not printed on a terminal; save it with `{read_cmd} \
                         {id} -o FILE`, or pipe `{read_cmd} {id}` to a program"
                    );
                }
                Content::Memory(text) => {
                    status!("{said}:");
                    // A pipe or file gets exactly the message's bytes.
                    write_stdout_unbuffered(text, false)?;
                }
                Content::File(path) => status!("{said} saved to {}", path.display()),
                Content::OverLimit { limit } => {
                    shown.not_shown += 1;
                    eprintln!(
                        "{said} is larger than the {} MiB recv_msg prints: save it with \
                         `{read_cmd} {id} -o FILE` (or receive with `recv_msg -o DIR`)",
                        limit >> 20
                    );
                }
            }
        }
        FetchEvent::Repeat { received, recorded } => {
            if json {
                return json_line(&serde_json::json!({
                    "status": "repeat",
                    "id": received.header.message_id.to_string(),
                    "recorded": recorded,
                }));
            }
            let when = recorded
                .map(|t| format!(" (recorded at unix time {t})"))
                .unwrap_or_default();
            status!(
                "message {}: already received{when}; repeat ignored, not saved or shown again",
                received.header.message_id
            );
        }
        FetchEvent::SetAside {
            id,
            sender,
            error,
            again,
        } => {
            match id {
                Some(id) if !shown.set_aside.insert(*id) => return Ok(()),
                Some(_) => {}
                None => shown.unreadable += 1,
            }
            let id = id.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
            // A message still waiting since an earlier run is told from a new one (found by a
            // trial run: two runs printed the same lines).
            let when = if *again {
                " again (an earlier recv_msg saw it too)"
            } else {
                ""
            };
            eprintln!(
                "letterlock: message {id} set aside{when}, NOT received: {error}; it stays on \
                 the server (not acknowledged)"
            );
            if let ClientError::UnknownKey { key, server, .. } = error
                && shown.hinted.insert(*key)
            {
                let kept = super::trust_server::kept_server_key(keys, key);
                super::hints::say_hint(&super::hints::unknown_key(key, server, kept.as_deref()));
            }
            if json {
                return json_line(&serde_json::json!({
                    "status": "set_aside",
                    "id": id,
                    "sender_key": sender.map(|k| k.to_string()),
                    "error": error.to_string(),
                    "again": again,
                }));
            }
        }
        FetchEvent::Directory { notes } => {
            for note in notes.iter() {
                eprintln!("letterlock: {note}");
            }
        }
    }
    Ok(())
}

/// Who sent a message, for the status line: "the server", "alice (pinned key)".
fn sender_text(s: &letterlock::client::Sender) -> String {
    use letterlock::client::Sender;
    match s {
        Sender::Server => "the server".to_owned(),
        Sender::Peer { name, pinned: true } => {
            format!("{} (pinned key)", letterlock::text::line(name))
        }
        Sender::Peer { name, .. } => format!(
            "{} (key from the server's directory)",
            letterlock::text::line(name)
        ),
    }
}

fn sender_name(s: &letterlock::client::Sender) -> &str {
    match s {
        letterlock::client::Sender::Peer { name, .. } => name,
        _ => "server",
    }
}

fn sender_source(s: &letterlock::client::Sender) -> &'static str {
    use letterlock::client::Sender;
    match s {
        Sender::Peer { pinned: true, .. } => "pinned",
        Sender::Peer { .. } => "directory",
        _ => "server",
    }
}

/// Writes one JSON object as one line on stdout (ASCII only, see [`ascii_json`]).
fn json_line(
    value: &serde_json::Value,
) -> std::result::Result<(), letterlock::client::ClientError> {
    use std::io::Write;
    let text = ascii_json(&value.to_string());
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id of a message that may have been stored is found under the context a command
    /// adds ("to NAME"), and only for a missing answer.
    #[test]
    fn an_unproven_id_is_found_through_context() {
        use letterlock::client::ClientError;
        let id = envelope::MessageId([7; 16]);
        let no_ack = ClientError::NoAck {
            id,
            why: Box::new(ClientError::Closed),
        };
        let e = anyhow::Error::new(no_ack).context("to bob");
        assert_eq!(unproven_id(e.as_ref()), Some(id));
        let e = anyhow::Error::new(ClientError::Closed).context("NOT sent to bob");
        assert_eq!(unproven_id(e.as_ref()), None);
    }
}
