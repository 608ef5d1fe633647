//! `letterlock server ...`: run the server, and the operator's commands on its mailbox and
//! trusted clients (send_msg, inbox, read, rm, trust, untrust, clients; migrate and copy-store
//! live in `store_admin.rs`). Every one takes `--store` as an SQLite file or a postgres:// URL
//! ([`AnyStore`]); with PostgreSQL, a command run against the database acts for every server
//! on it.
//!
//! The store is the truth about trusted clients (docs/PROTOCOL.md, "Trusted clients"). Keys of
//! the classroom layout (KEYS/client_public.pem as `client`, KEYS/clients/NAME.pem as NAME)
//! that the store has never seen are imported into it whenever a server command opens the
//! store, with a log line; after that the files are not read for that key again: removing one
//! by hand changes nothing (`server untrust NAME` does), and a key file the store already knows
//! as removed or replaced stays untrusted.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use tracing::{info, warn};

use letterlock::envelope::{self, OpenOptions, SealOptions};
use letterlock::files::WriteOptions;
use letterlock::keys::{self, Identity, KeyId, PublicKey};
use letterlock::store::{ClientKey, InboxSummary, Store, StoreError, TrustOutcome, TrustRequest};
use letterlock::text::ByteCount;

use super::client::MessageArgs;
use super::hints::{INBOX_IDS, OUTBOX_IDS, hinted};
use super::store_admin::AnyStore;
use super::{Deferred, PairArgs, STDOUT_LIMIT, own_key, time_text};

/// File name of the mailbox database, beside the server's keys by default (bodies over 64 KiB
/// live in the folder of the same name plus `.blobs`).
pub(super) const STORE_FILE: &str = "letterlock-server.db";
/// The shortest message id prefix `server rm` and `server outbox --remove` take.
const MIN_RM_PREFIX: usize = 4;
/// Hexadecimal digits in a whole message id: the longest prefix.
const ID_DIGITS: usize = 32;

/// How often a server with `--retention` looks for expired messages (besides at start).
const RETENTION_SWEEP: Duration = Duration::from_secs(3600);

/// Seconds in a day, for `--retention DAYS`.
const DAY: u64 = 24 * 60 * 60;

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Folder with server_private.pem (and the classroom's trusted client keys,
    /// client_public.pem and clients/NAME.pem, imported into the store at start).
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = super::listen_address)]
    pub(super) listen: String,
    /// The mailbox, which also holds the trusted clients: an SQLite file (bodies over 64 KiB
    /// live in a folder beside it), or postgres://USER[:PASSWORD]@HOST[:PORT]/DB for one
    /// PostgreSQL shared by several servers [default: KEYS/letterlock-server.db].
    #[arg(long, env = "LETTERLOCK_STORE", value_parser = super::home_path())]
    pub(super) store: Option<PathBuf>,
    /// Which modes to accept.
    #[arg(long, value_enum, default_value = "both")]
    pub(super) accept: AcceptArg,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    pub(super) max_connections: usize,
    /// Seconds a message's creation time may differ from the server's clock.
    #[arg(long, default_value_t = 600)]
    pub(super) time_window: u64,
    /// Largest hybrid message accepted, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub(super) max_message: u64,
    /// Largest asymmetric message accepted, in bytes.
    #[arg(long, default_value_t = envelope::DEFAULT_ASYMMETRIC_LIMIT)]
    pub(super) max_asymmetric: u64,
    /// Delete messages clients sent once they are older than DAYS (received more than DAYS
    /// ago): at start, then every hour. Off by default: messages are kept until `server rm`.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) retention: Option<u32>,
    /// Do not log the text of short messages; log only sender, size and id. The default when
    /// the log (stderr) is not a terminal: a service's journal or a log file.
    #[arg(long, conflicts_with = "log_text")]
    pub(super) no_log_text: bool,
    /// Log the text of short messages (up to 200 bytes), as the classroom server did. The
    /// default when the log (stderr) is a terminal.
    #[arg(long)]
    pub(super) log_text: bool,
    /// Refuse a client that cannot do the post-quantum key exchange X25519MLKEM768, instead of
    /// letting it fall back to X25519 (letterlock clients always offer it).
    #[arg(long, conflicts_with = "plain_v1")]
    pub(super) require_pq: bool,
    /// Serve the plain version 1 wire instead of TLS 1.3, to clients run with --plain-v1. It
    /// exists to show message-level protection on a bare wire in class: the messages stay
    /// sealed and signed, but the server is not authenticated before a client sends, frames
    /// travel in the clear, and a network attacker can fake deliveries and replay.
    #[arg(long)]
    pub(super) plain_v1: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum AcceptArg {
    Both,
    Hybrid,
    Asymmetric,
}

/// `server generate_key_pair`: the pair's arguments, and the mailbox whose queued messages a
/// replacement (--force) leaves signed by the old key.
#[derive(Args, Debug)]
pub(super) struct ServerPairArgs {
    #[command(flatten)]
    pub(super) pair: PairArgs,
    /// The server's mailbox (its --store), an SQLite file or a postgres:// URL: once a key is
    /// replaced, its messages queued for clients and signed by another key are counted (a
    /// missing mailbox is skipped) [default: KEYS/letterlock-server.db].
    #[arg(long, env = "LETTERLOCK_STORE", value_parser = super::home_path())]
    pub(super) store: Option<PathBuf>,
}

/// Where the server's keys and mailbox are: every command on the mailbox takes these.
#[derive(Args, Debug)]
pub(super) struct MailboxArgs {
    /// Folder with server_private.pem (and the classroom's client keys, imported into the
    /// store when first seen).
    #[arg(long, env = "LETTERLOCK_KEYS", default_value = ".", value_parser = super::home_path())]
    pub(super) keys: PathBuf,
    /// The server's mailbox (its --store): an SQLite file, or a postgres:// URL
    /// [default: KEYS/letterlock-server.db].
    #[arg(long, env = "LETTERLOCK_STORE", value_parser = super::home_path())]
    pub(super) store: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(super) enum ServerCommand {
    /// Generate the server's key pair: server_private.pem and server_public.pem.
    #[command(
        name = "generate_key_pair",
        visible_alias = "generate-key-pair",
        after_help = exit_status!()
    )]
    GenerateKeyPair(Deferred<ServerPairArgs>),
    /// Seal a message from the server to client NAME and queue it in the store; a running
    /// server delivers it at that client's next recv_msg.
    #[command(
        name = "send_msg",
        visible_alias = "send-msg",
        after_help = exit_status!()
    )]
    SendMsg(Deferred<ServerSendArgs>),
    /// List the messages clients sent.
    #[command(after_help = exit_status!())]
    Inbox {
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// Only messages from this client.
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// Only messages received at or after TIME: unix seconds, an RFC 3339 date or date and
        /// time (2026-11-28, 2026-11-28T09:30:00Z), or a span back from now (2h, 3days).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: Option<u64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the messages waiting for clients to fetch them: queued by this server (`server
    /// send_msg`) or relayed from one client to another; those queued for a key that is no
    /// longer trusted (replaced or removed) are marked stranded: nobody can fetch them, and
    /// --remove ID deletes one. Those this server signed with a key it has since replaced
    /// (generate_key_pair --force, which keeps the old key in the folder) are marked too:
    /// clients set them aside; send them again. Those signed by a server key this folder
    /// neither holds nor replaced (another server's, or the wrong --keys) are marked as such
    /// and count as waiting. Those a client relayed under a key no longer trusted (since
    /// removed or replaced) are marked too and count as waiting: a recipient that does not
    /// know the key already (pinned, or learnt from the directory before) sets them aside.
    #[command(after_help = exit_status!())]
    Outbox {
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// Machine-readable output: an array of {id, to, to_key, from ("server" or the sending
        /// client's name), mode, sealed_bytes, created (Unix seconds), stranded (bool),
        /// from_untrusted_key (bool: relayed under a client key no longer trusted),
        /// replaced_server_key (bool: signed by a key this folder replaced; null when it cannot
        /// be told), unknown_server_key (bool: signed by a server key this folder neither holds
        /// nor replaced; null when it cannot be told)}.
        #[arg(long)]
        json: bool,
        /// Delete the STRANDED message ID (or a unique prefix of it, at least 4 characters) and
        /// its body without delivering it: sealed to a key no longer trusted, nobody can fetch
        /// it; or one signed by a server key this folder replaced, which no client accepts
        /// (one signed by a key the folder does not know needs --force). Not undone; a relayed
        /// message deleted so never gets its receipt.
        #[arg(long, value_name = "ID", conflicts_with = "json")]
        remove: Option<String>,
        /// With --remove: the recipient, when messages for two clients share the id (ids are
        /// unique per recipient only).
        #[arg(long, value_name = "NAME", requires = "remove")]
        to: Option<String>,
        /// With --remove: delete a message that is still waiting (its client can fetch it), or
        /// one relayed under a key no longer trusted (a client that knows the key can still
        /// open it), not only a stranded one. If that client is fetching right now, it may
        /// still get it.
        #[arg(long, requires = "remove")]
        force: bool,
    },
    /// Open a received message again (it is kept sealed at rest).
    #[command(after_help = exit_status!())]
    Read {
        /// Message id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// The sender, when two clients' messages share the id (ids are unique per sender).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// Write the plaintext to FILE instead of stdout (it appears only once verified); `-`
        /// is stdout, where binary plaintext is shown escaped on a terminal instead of refused.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Delete a received message and its body file.
    #[command(after_help = exit_status!())]
    Rm {
        /// Message id, or a unique prefix of it (at least 4 characters).
        id: String,
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// The sender, when two clients' messages share the id.
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Create the mailbox's schema, or bring it to this letterlock's version (servers do it
    /// when they start; run it once before starting several over one PostgreSQL).
    #[command(after_help = exit_status!())]
    Migrate(Deferred<super::store_admin::MigrateArgs>),
    /// Copy an SQLite mailbox into a PostgreSQL one (run again, it copies only what is
    /// missing).
    #[command(
        name = "copy-store",
        visible_alias = "copy_store",
        after_help = exit_status!()
    )]
    CopyStore(Deferred<super::store_admin::CopyStoreArgs>),
    /// Trust a client's public key under NAME; a running server accepts it from its next
    /// connection. With --replace, rotate NAME to this key (the old key is refused from then
    /// on; the messages it sent the server stay readable, and those it relayed to other clients
    /// are set aside by recipients that did not pin the old key).
    #[command(after_help = exit_status!())]
    Trust {
        /// The client's public key file.
        public_key: PathBuf,
        /// The name the client is known by (logs, `server send_msg --to NAME`).
        #[arg(long)]
        name: String,
        /// Replace the key NAME has now (key rotation).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        mailbox: MailboxArgs,
    },
    /// Stop trusting client NAME; a running server refuses it from its next connection (on one
    /// already open, from its next message, within a second). Its stored messages are kept.
    #[command(after_help = exit_status!())]
    Untrust {
        /// The client's name (`letterlock server clients` lists them).
        name: String,
        #[command(flatten)]
        mailbox: MailboxArgs,
    },
    /// List the trusted clients: name, key id, trusted since, stored messages. One trusted under
    /// a name that reads as the server (`server`, from before such names were refused) is
    /// listed as refused: the server refuses it; the listing says how to trust it again under
    /// another name.
    #[command(after_help = exit_status!())]
    Clients {
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// Also list keys that were replaced or removed (kept to read their old messages).
        #[arg(long)]
        all: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub(super) struct ServerSendArgs {
    /// The trusted client to send to (`client` for client_public.pem).
    #[arg(long)]
    pub(super) to: String,
    #[command(flatten)]
    pub(super) message: MessageArgs,
    #[command(flatten)]
    pub(super) mailbox: MailboxArgs,
}

/// Runs a server subcommand.
pub(super) fn command(command: ServerCommand) -> Result<ExitCode> {
    match command {
        ServerCommand::GenerateKeyPair(Deferred(a)) => super::keygen(
            &a.pair.keys,
            "server",
            a.pair.bits,
            a.pair.force,
            a.store.as_deref(),
        ),
        ServerCommand::SendMsg(Deferred(a)) => super::runtime()?.block_on(server_send(a)),
        ServerCommand::Inbox {
            mailbox,
            from,
            since,
            json,
        } => super::runtime()?.block_on(inbox(&mailbox, from.as_deref(), since, json)),
        ServerCommand::Outbox {
            mailbox,
            json,
            remove,
            to,
            force,
        } => super::runtime()?.block_on(async {
            match remove {
                Some(id) => unqueue(&mailbox, &id, to.as_deref(), force).await,
                None => outbox(&mailbox, json).await,
            }
        }),
        ServerCommand::Read {
            id,
            mailbox,
            from,
            output,
            force,
        } => super::runtime()?.block_on(read_inbox(
            &id,
            &mailbox,
            from.as_deref(),
            output.as_deref(),
            force,
        )),
        ServerCommand::Rm { id, mailbox, from } => {
            super::runtime()?.block_on(remove(&id, &mailbox, from.as_deref()))
        }
        ServerCommand::Trust {
            public_key,
            name,
            replace,
            mailbox,
        } => super::runtime()?.block_on(trust(&public_key, &name, replace, &mailbox)),
        ServerCommand::Untrust { name, mailbox } => {
            super::runtime()?.block_on(untrust(&name, &mailbox))
        }
        ServerCommand::Clients { mailbox, all, json } => {
            super::runtime()?.block_on(clients(&mailbox, all, json))
        }
        ServerCommand::Migrate(Deferred(a)) => {
            super::runtime()?.block_on(super::store_admin::migrate(a))
        }
        ServerCommand::CopyStore(Deferred(a)) => {
            super::runtime()?.block_on(super::store_admin::copy_store(a))
        }
    }
}

pub(super) async fn serve_cmd(a: ServeArgs) -> Result<ExitCode> {
    use letterlock::server::{Accept, Server, ServerConfig};
    let identity = own_key(&a.keys, "server")?;
    // Listen first: a server that cannot bind leaves no mailbox behind.
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let store_path = store_path(&a.keys, a.store.as_deref())?;
    let _only_server = lock_sqlite_mailbox(&store_path)?;
    let store = Arc::new(create_store(&store_path).await?);
    import_key_files(store.as_ref(), &a.keys, None).await?;
    let trusted = store.trusted_clients().await?;
    if trusted.clients.is_empty() {
        // With this server's --store too, or the trust goes to another mailbox (found by a
        // trial run); a PostgreSQL URL is not repeated: it may hold a password.
        let store = match a.store.as_deref() {
            None => String::new(),
            Some(url) if super::store_admin::postgres_url(url).is_some() => {
                " --store URL (this server's)".to_owned()
            }
            Some(path) => format!(" --store {}", path.display()),
        };
        warn!(
            "no trusted clients yet: `letterlock server trust KEY.pem --name NAME --keys {}{store}` \
             adds one, and this server accepts it at once",
            a.keys.display()
        );
    }
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
        log_text: log_text(a.log_text, a.no_log_text),
        ..ServerConfig::default()
    };
    let retention = match a.retention {
        Some(days) => {
            let keep = Duration::from_secs(u64::from(days) * DAY);
            expire(store.as_ref(), keep).await?;
            let store = store.clone();
            Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(RETENTION_SWEEP);
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) = expire(store.as_ref(), keep).await {
                        warn!(error = %e, "could not delete expired messages; trying again later");
                    }
                }
            }))
        }
        None => None,
    };
    // Listened for before the server says it listens (see `stop_signals`).
    let stop = super::stop_signals()?;
    println!("letterlock server listening on {}", listener.local_addr()?);
    if a.plain_v1 {
        println!(
            "protocol version 1, plain wire (--plain-v1): messages sealed and signed, the \
             connection unprotected; for showing the bare wire only"
        );
    } else {
        println!(
            "protocol version 2: TLS 1.3, X25519MLKEM768 key exchange ({}), both keys pinned",
            if a.require_pq {
                "required"
            } else {
                "X25519 allowed for clients without it"
            }
        );
    }
    println!("server key {}", identity.public().id());
    println!("mailbox {}", store.describe(&store_path));
    // With this server's --keys and --store (found by a trial run: the log's hint without them
    // read another folder's mailbox, or failed for want of a key), as absolute paths.
    println!(
        "read a stored message with `letterlock server read{} ID`",
        super::server_key::absolute_command_args(&a.keys, a.store.as_deref())
    );
    let args = super::server_key::command_args(&a.keys, a.store.as_deref());
    for c in &trusted.clients {
        if keys::reserved_name(&c.name) {
            println!(
                "refuses client {:?} {} (its name reads as this server)",
                c.name,
                KeyId(c.key_id)
            );
            warn!(
                client = %letterlock::text::quoted(&c.name),
                "{}",
                reserved_client(&c.name, &KeyId(c.key_id), &args)
            );
        } else {
            println!("trusts client {:?} {}", c.name, KeyId(c.key_id));
        }
    }
    io::stdout().flush()?;
    // The trusted clients come from the store, followed while the server runs.
    let server = Server::new(
        Arc::new(identity),
        keys::TrustList::new(),
        store.clone(),
        config,
    )
    .trust_from_store();
    let server = if a.plain_v1 {
        server
    } else {
        server
            .with_tls(letterlock::tls::TlsOptions {
                require_pq: a.require_pq,
            })
            .context("cannot set up TLS")?
    };
    let server = Arc::new(server);
    let shutdown = async {
        stop.await;
        eprintln!(
            "letterlock: stopping: finishing messages in flight (interrupt again to stop now)"
        );
        // A second interrupt stops at once: everything acknowledged is already on disk.
        match super::stop_signals() {
            Ok(again) => {
                tokio::spawn(async {
                    again.await;
                    eprintln!("letterlock: stopped at once");
                    std::process::exit(130);
                });
            }
            Err(e) => warn!(error = %e, "cannot listen for a second interrupt"),
        }
    };
    server.run(listener, shutdown).await?;
    if let Some(task) = retention {
        task.abort();
        let _ = task.await;
    }
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await?;
    }
    println!("server stopped; store closed");
    Ok(ExitCode::SUCCESS)
}

/// Whether the server logs the text of short messages: as asked, or else only when its log
/// (stderr) is a terminal, so the classroom walk-through shows the text while a service's
/// journal or a redirected log never receives plaintext.
fn log_text(log_text: bool, no_log_text: bool) -> bool {
    log_text || (!no_log_text && io::stderr().is_terminal())
}

/// Deletes inbox messages received, and receipts of relayed messages delivered, more than
/// `keep` ago: receipts are kept as long as inbox messages.
async fn expire(store: &impl Store, keep: Duration) -> Result<()> {
    let cutoff = now().saturating_sub(keep.as_secs());
    let removed = store.expire_inbox(cutoff).await?;
    if removed > 0 {
        info!(
            removed,
            older_than = %time_text(cutoff),
            "deleted messages past the retention period"
        );
    }
    let receipts = store.expire_receipts(cutoff).await?;
    if receipts > 0 {
        info!(
            removed = receipts,
            older_than = %time_text(cutoff),
            "deleted receipts past the retention period"
        );
    }
    Ok(())
}

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `--since`: unix seconds, an RFC 3339 date or date and time, or a span back from now.
/// As the line is parsed, so that a wrong one is wrong usage (exit status 2).
fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("{text} is too large for unix seconds"));
    }
    let to_unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A date alone means its first second, UTC.
    let stamp = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(&stamp) {
        return Ok(to_unix(t));
    }
    if let Ok(span) = humantime::parse_duration(text) {
        return Ok(now().saturating_sub(span.as_secs()));
    }
    Err(
        "give unix seconds (1764320000), a date (2026-11-28), a date and time \
         (2026-11-28T09:30:00Z), or a span back from now (2h, 3days)"
            .into(),
    )
}

/// The mailbox `--store` names, or the one beside the keys. A mailbox in the working folder
/// (./letterlock-server.db) with none beside the keys is an error that says how to choose, not a
/// guess: it belongs to the server whose keys are in the working folder, if any, or was left at
/// the old default place by an older letterlock; using it could give a new server identity
/// another server's trusted clients and queued messages, and ignoring it would start an empty
/// mailbox in its place on an upgrade.
pub(super) fn store_path(keys_dir: &Path, store: Option<&Path>) -> Result<PathBuf> {
    if let Some(store) = store {
        // `postgres:/…` or `postgresql:/…` (one slash short) would otherwise be taken for a
        // file path and a folder named `postgres:`.
        if let Some(text) = store.to_str()
            && (text.starts_with("postgres:") || text.starts_with("postgresql:"))
            && super::store_admin::postgres_url(store).is_none()
        {
            bail!(
                "--store {text:?} looks like a PostgreSQL URL but does not start with \
                 postgres://; the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DB"
            );
        }
        return Ok(store.to_path_buf());
    }
    if !keys_dir.is_dir() {
        bail!(
            "no folder {} (--keys): give the folder that holds server_private.pem",
            keys_dir.display()
        );
    }
    let beside = default_store(keys_dir);
    let old = Path::new(STORE_FILE);
    let same = match (std::fs::canonicalize(old), std::fs::canonicalize(keys_dir)) {
        (Ok(old), Ok(dir)) => old.parent() == Some(dir.as_path()),
        _ => false,
    };
    if !beside.exists() && old.exists() && !same {
        // Server keys in the working folder: the mailbox is theirs, where `letterlock server`
        // run here without --keys keeps it today, not one left at the old default place: not
        // to be moved.
        let (here, _) = keys::pair_paths(Path::new("."), "server");
        if here.exists() {
            bail!(
                "there is a mailbox {STORE_FILE} in the working folder and none beside the keys \
                 in {dir}: it is the mailbox of the server whose keys are here ({here}, used \
                 when --keys is not given), not of the server whose keys are in {dir}. To work \
                 on the server here, drop --keys {dir}; for a new mailbox beside the keys in \
                 {dir}, pass --store {} once (it is the default from then on); to use this one \
                 with them anyway (only if both folders hold the same server key), pass \
                 --store {STORE_FILE}",
                beside.display(),
                dir = keys_dir.display(),
                here = here.display(),
            );
        }
        bail!(
            "there is a mailbox {STORE_FILE} in the working folder (the old default place) and \
             none beside the keys in {dir}; say which to use. If it is this server's mailbox, move \
             it while no server runs: `mv {STORE_FILE} {STORE_FILE}.blobs {dir}/` (and \
             {STORE_FILE}-wal, {STORE_FILE}-shm if present), or pass --store {STORE_FILE}; for a \
             new mailbox beside the keys, pass --store {}",
            beside.display(),
            dir = keys_dir.display(),
        );
    }
    Ok(beside)
}

/// Holds `MAILBOX.lock` for as long as the server runs, so a second `letterlock server` on the
/// same SQLite mailbox is refused: each server sweeps the body files it finds unfinished at
/// start, and would take another server's bodies in flight for leftovers. The operator's
/// commands (inbox, read, trust…) do not take it. A PostgreSQL mailbox is shared on purpose.
fn lock_sqlite_mailbox(path: &Path) -> Result<Option<std::fs::File>> {
    if super::store_admin::postgres_url(path).is_some() {
        return Ok(None);
    }
    // What the path is, and that this user may write it, before the lock is made beside it: a
    // file that is no mailbox, or a read-only one, must not get a lock file, nor a server that
    // says it listens and then fails every message.
    letterlock::store::SqliteStore::check_path(path)
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|dir| !dir.is_dir()) {
        return Ok(None); // create_store says what is wrong with the folder
    }
    let lock_path = server_lock_path(path);
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            let folder = lock_path.parent().unwrap_or(Path::new("."));
            let said = if e.kind() == io::ErrorKind::PermissionDenied {
                format!(
                    "cannot make the server's lock file {}: the folder {} is not writable for                      this user; the server keeps its lock, the database's write-ahead log and                      message bodies beside the mailbox, so make the folder writable for the                      user running the server, or give --store a file in a folder that is",
                    lock_path.display(),
                    folder.display()
                )
            } else {
                format!("cannot open {}", lock_path.display())
            };
            anyhow::Error::new(e).context(said)
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another letterlock server is already running on the mailbox {} (it holds {}); \
             stop it first, or give this one its own --keys/--store (several servers share one \
             mailbox only in PostgreSQL: --store postgres://…)",
            path.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", lock_path.display())))
        }
    }
}

/// `MAILBOX.lock`, the file a server holds locked while it runs on the SQLite mailbox at
/// `path`: beside the file itself, whatever link led to it, so that every path to one mailbox
/// names the same lock.
pub(super) fn server_lock_path(path: &Path) -> PathBuf {
    let mut name = letterlock::store::SqliteStore::real_path(path).into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Opens an existing mailbox. Only the server creates one: a mistyped --store elsewhere must
/// not quietly answer from a new, empty mailbox.
pub(super) async fn open_store(path: &Path) -> Result<AnyStore> {
    if super::store_admin::postgres_url(path).is_none() {
        let choose = format!(
            "pass --store PATH (the server's --store) or --keys DIR (the mailbox is \
             KEYS/{STORE_FILE} by default), or start `letterlock server` once to create it"
        );
        if let Ok(target) = std::fs::read_link(path)
            && !path.exists()
        {
            bail!(
                "no mailbox at {}: it is a symbolic link to {}, which does not exist; {choose}",
                path.display(),
                target.display()
            );
        }
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("no mailbox at {} yet; {choose}", path.display())
            }
            // The server makes an empty file first, then its schema: none here yet.
            Ok(meta) if meta.is_file() && meta.len() == 0 => bail!(
                "no mailbox at {} yet (the file is empty); {choose}",
                path.display()
            ),
            // Anything else is for the store's own checks to say.
            _ => {}
        }
    }
    create_store(path).await
}

/// Opens the mailbox, creating it if needed (the server), in a folder that must exist.
pub(super) async fn create_store(path: &Path) -> Result<AnyStore> {
    if let Some(url) = super::store_admin::postgres_url(path) {
        return super::store_admin::connect_postgres(url).await;
    }
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
        .map(AnyStore::Sqlite)
        .with_context(|| format!("cannot open the store {}", path.display()))
}

/// Opens the mailbox of `mailbox` and imports the classroom's client key files it does not
/// know yet. `create`: the server and `server trust` may create it; the other commands refuse a
/// missing one (a mistyped --store must not quietly answer from an empty mailbox).
async fn open_mailbox(mailbox: &MailboxArgs, create: bool) -> Result<AnyStore> {
    open_mailbox_except(mailbox, create, None).await
}

/// [`open_mailbox`], leaving the key `except` out of the import: `server trust` decides that
/// key's fate itself.
async fn open_mailbox_except(
    mailbox: &MailboxArgs,
    create: bool,
    except: Option<&KeyId>,
) -> Result<AnyStore> {
    let path = store_path(&mailbox.keys, mailbox.store.as_deref())?;
    // A new mailbox only where a server lives: `server trust` run in the wrong folder must not
    // start an empty mailbox that no running server reads, and say the server accepts the key.
    let new_file = super::store_admin::postgres_url(&path).is_none() && !path.exists();
    let (server_key, _) = keys::pair_paths(&mailbox.keys, "server");
    if create && new_file && !server_key.exists() {
        bail!(
            "no mailbox at {} and no server_private.pem in {}: is this the server's folder? Pass \
             --keys DIR (the folder `letterlock server` runs with) or --store PATH|URL",
            path.display(),
            mailbox.keys.display()
        );
    }
    let store = if create {
        create_store(&path).await?
    } else {
        open_store(&path).await?
    };
    import_key_files(&store, &mailbox.keys, except).await?;
    Ok(store)
}

/// Imports into the store every key of the classroom layout (KEYS/client_public.pem as
/// `client`, KEYS/clients/NAME.pem as NAME) whose key id it has never seen. A key the store
/// knows (trusted, replaced or removed) is left as the store has it: the store is the truth
/// once a key is in it. A file with a new key for a name that already has one is not imported
/// (that would be a rotation): a warning says how to rotate. A file holding the key `except`
/// is left alone: that is the key `server trust` is trusting, which decides what becomes of it
/// (a warning telling the user to run `server trust --replace` while it runs would mislead).
pub(super) async fn import_key_files(
    store: &impl Store,
    keys_dir: &Path,
    except: Option<&KeyId>,
) -> Result<()> {
    let files = keys::client_key_files(keys_dir)?;
    if files.is_empty() {
        return Ok(());
    }
    let known: std::collections::HashSet<[u8; 32]> = store
        .client_keys()
        .await?
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    for (name, path) in files {
        let key = keys::load_public(&path)?;
        if known.contains(&key.id().0) || except == Some(&key.id()) {
            continue;
        }
        if keys::reserved_name(&name) {
            warn!(
                file = %path.display(),
                "{} names a client {name:?}, which clients would show as this server; not \
                 imported. Rename the file (`clients/NAME.pem`) to import it",
                path.display()
            );
            continue;
        }
        match store
            .trust_client(trust_request(&name, &key, false))
            .await?
        {
            TrustOutcome::Trusted => info!(
                client = %name,
                key = %key.id(),
                file = %path.display(),
                "imported a client key file into the store's trusted clients"
            ),
            TrustOutcome::NameTaken { existing } => warn!(
                client = %name,
                file = %path.display(),
                "{} holds a new key for {name}, who is trusted with key {}; not imported. To \
                 rotate: `letterlock server trust {} --name {name} --replace`",
                path.display(),
                KeyId(existing),
                path.display()
            ),
            TrustOutcome::KeyTaken { name: other } => warn!(
                file = %path.display(),
                "{} holds the key of {other}; not imported under {name} as well",
                path.display()
            ),
            TrustOutcome::AlreadyTrusted | TrustOutcome::Replaced { .. } => {}
        }
    }
    Ok(())
}

fn trust_request(name: &str, key: &PublicKey, replace: bool) -> TrustRequest {
    TrustRequest {
        name: name.to_owned(),
        key_id: key.id().0,
        public_key: key.spki_der().to_vec(),
        replace,
        now: now(),
    }
}

/// What is said of the client `name` with key `key`, trusted under a name that reads as the
/// server ([`keys::reserved_name`]) before such names were refused: the server refuses its
/// connections (so nobody's messages reach clients as from "server"), and how to let it in
/// again under another name. `args` are [`super::server_key::command_args`].
fn reserved_client(name: &str, key: &KeyId, args: &str) -> String {
    let (quoted, name) = (letterlock::text::quoted(name), letterlock::text::line(name));
    format!(
        "the client {quoted} ({key}) was trusted under a name that reads as this server, from \
         before such names were refused: it is refused (its connections, and messages to it). \
         To let it in under another name: `letterlock server untrust {name}{args}`, then \
         `letterlock server trust ITS_PUBLIC_KEY.pem --name NEWNAME{args}` (check the file's \
         key id is {key} with `letterlock fingerprint ITS_PUBLIC_KEY.pem`)"
    )
}

pub(super) async fn server_send(a: ServerSendArgs) -> Result<ExitCode> {
    let identity = own_key(&a.mailbox.keys, "server")?;
    let store = open_mailbox(&a.mailbox, false).await?;
    let trusted = store.trusted_clients().await?.clients;
    let Some(to) = trusted.iter().find(|c| c.name == a.to) else {
        // Names as `server clients` shows them, not as a Rust list.
        let names: Vec<&str> = trusted.iter().map(|c| c.name.as_str()).collect();
        let names = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        bail!(
            "no trusted client named {} (trusted: {names}); add one with `letterlock server \
             trust`",
            letterlock::text::quoted(&a.to)
        );
    };
    if keys::reserved_name(&to.name) {
        let args = super::server_key::command_args(&a.mailbox.keys, a.mailbox.store.as_deref());
        bail!(reserved_client(&to.name, &KeyId(to.key_id), &args));
    }
    let to = keys::Trusted {
        name: to.name.clone(),
        key: PublicKey::from_der(&to.public_key).context("a stored client key is malformed")?,
    };
    let opts = SealOptions::mode(a.message.mode.into());
    a.message.note_text_naming_a_file();
    let input = a.message.input()?;
    let sealed =
        letterlock::server::queue_for_client(&store, Arc::new(identity), &to, input, &opts).await?;
    store.close().await?;
    println!(
        "queued message {} for {} ({}, {} mode); delivered at its next recv_msg",
        sealed.header.message_id,
        to.name,
        ByteCount(sealed.plaintext_len),
        sealed.header.mode
    );
    super::client::note_empty(sealed.plaintext_len);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn inbox(
    mailbox: &MailboxArgs,
    from: Option<&str>,
    since: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    let store = open_mailbox(mailbox, false).await?;
    let mut list = store.list_inbox().await?;
    let all = list.len();
    if let Some(name) = from {
        // A name no key ever had is a mistake to say, not an empty inbox.
        if !list.iter().any(|m| m.sender_name == name)
            && !store.client_keys().await?.iter().any(|k| k.name == name)
        {
            bail!(
                "no client named {}: `letterlock server clients --all` lists every name",
                letterlock::text::line(name)
            );
        }
        list.retain(|m| m.sender_name == name);
    }
    if let Some(since) = since {
        list.retain(|m| m.received >= since);
    }
    if json {
        println!("{}", super::mailbox::inbox_json(&list)?);
    } else if all == 0 {
        println!("inbox is empty");
    } else if list.is_empty() {
        println!("no message matches (the inbox holds {all})");
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
                super::mailbox::mode_name(m.mode),
                m.plaintext_len,
                time_text(m.created),
                KeyId(m.sender_key_id)
            );
        }
    }
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// The mailbox a server with its keys in `keys_dir` uses when no --store is given.
pub(super) fn default_store(keys_dir: &Path) -> PathBuf {
    keys_dir.join(STORE_FILE)
}

/// Every message waiting for a client, under each key any client ever had, oldest first per
/// key, and whether it is stranded (that key is no longer trusted).
pub(super) async fn waiting(
    store: &impl Store,
) -> Result<Vec<(letterlock::store::OutboxEntry, bool)>> {
    let mut rows = Vec::new();
    for key in &store.client_keys().await? {
        let stranded = key.ended.is_some();
        for m in store.pending_outbox(&key.key_id).await? {
            rows.push((m, stranded));
        }
    }
    Ok(rows)
}

/// Whether `m` was relayed under a client key that is no longer trusted, removed or replaced
/// (`trusted`: the key ids trusted now, [`trusted_now`]). The server's directory stops listing
/// that key, so a recipient that does not know it already (pinned, or learnt from the directory
/// before) sets the message aside at every fetch, and it stays here; one that knows it still
/// opens it (found by a trial run: `server outbox` showed such a message as merely waiting).
fn from_untrusted(
    m: &letterlock::store::OutboxEntry,
    trusted: &std::collections::HashSet<letterlock::store::KeyId>,
) -> bool {
    m.sender.as_ref().is_some_and(|(k, _)| !trusted.contains(k))
}

/// The key ids of the clients trusted now.
async fn trusted_now(
    store: &impl Store,
) -> Result<std::collections::HashSet<letterlock::store::KeyId>> {
    Ok(store
        .client_keys()
        .await?
        .into_iter()
        .filter(|k| k.ended.is_none())
        .map(|k| k.key_id)
        .collect())
}

/// `server outbox --remove ID`: deletes one stranded message (or, with `force`, one still
/// waiting), named by a unique id prefix, of the recipient `to` if given.
async fn unqueue(
    mailbox: &MailboxArgs,
    id: &str,
    to: Option<&str>,
    force: bool,
) -> Result<ExitCode> {
    use super::server_key::Signature;
    check_deletion_prefix(id, OUTBOX_IDS)?;
    let prefix = id.to_ascii_lowercase();
    let store = open_mailbox(mailbox, false).await?;
    let mut found: Vec<_> = waiting(&store)
        .await?
        .into_iter()
        .filter(|(m, _)| hex::encode(m.message_id).starts_with(&prefix))
        .filter(|(m, _)| to.is_none_or(|name| m.recipient_name == name))
        .collect();
    if found.len() > 1 {
        let mut text = format!("more than one waiting message matches {prefix}:");
        for (m, stranded) in &found {
            text.push_str(&format!(
                "\n  {}  for {}  queued {}{}",
                hex::encode(m.message_id),
                letterlock::text::line(&m.recipient_name),
                time_text(m.created),
                if *stranded { "  STRANDED" } else { "" }
            ));
        }
        let same_id = found
            .iter()
            .all(|(m, _)| m.message_id == found[0].0.message_id);
        let same_to = found
            .iter()
            .all(|(m, _)| m.recipient_name == found[0].0.recipient_name);
        text.push_str(&how_to_choose(same_id, same_to, "recipient", "--to"));
        bail!(text);
    }
    let Some((m, stranded)) = found.pop() else {
        return Err(hinted(
            format!(
                "no outbox message id starts with {prefix}{} (a delivered message is no longer \
                 in the outbox)",
                to.map(|name| format!(" for {}", letterlock::text::line(name)))
                    .unwrap_or_default()
            ),
            OUTBOX_IDS,
        ));
    };
    let to = letterlock::text::line(&m.recipient_name);
    // One the server signed with a key this folder replaced is refused by every client that
    // trusts the current one: as undeliverable as a stranded one, so no --force either. One
    // signed by a key the folder never had is another server's, or --keys is wrong: for all
    // this folder knows, its client accepts it, so it is waiting.
    let signature = if stranded {
        Signature::Current
    } else {
        let known = super::server_key::Known::read(&mailbox.keys);
        super::server_key::signature(&store, &m, &known).await?
    };
    let replaced = matches!(signature, Signature::Replaced(_));
    // One relayed under a key no longer trusted still needs --force: a recipient that learnt
    // the key before still opens it.
    if !stranded && !replaced && !force {
        let text = format!(
            "outbox message {} for {to} is waiting, not stranded: {to}'s client can still fetch \
             it",
            hex::encode(m.message_id)
        );
        return Err(match signature {
            Signature::Unknown(signer) => hinted(
                format!(
                    "{text} (it is signed by the server key {signer}, which {} neither holds nor \
                     replaced)",
                    mailbox.keys.display()
                ),
                "if it was queued by another server, or --keys is not this server's folder, run \
                 again with the --keys of the server that queued it; pass --force to delete it \
                 anyway",
            ),
            _ => hinted(text, "pass --force to delete it anyway"),
        });
    }
    if !store
        .remove_outbox(&m.recipient_key_id, &m.message_id)
        .await?
    {
        return Err(hinted(
            format!(
                "outbox message {} is no longer waiting, or is being delivered right now",
                hex::encode(m.message_id)
            ),
            OUTBOX_IDS,
        ));
    }
    store.close().await?;
    println!(
        "deleted outbox message {} (for {to}, {}, {} sealed bytes, queued {}): it will not be \
         delivered",
        hex::encode(m.message_id),
        if stranded {
            "stranded"
        } else if replaced {
            "signed by a replaced server key"
        } else {
            "waiting"
        },
        m.body_size,
        time_text(m.created)
    );
    Ok(ExitCode::SUCCESS)
}

/// `server outbox`: every message waiting for a client, under each key any client ever had,
/// oldest first per key; stranded when that key is no longer trusted; marked when the server
/// signed it with a key it replaced (every client that trusts the current one sets it aside),
/// or with a key the folder does not know; counted in a last line.
async fn outbox(mailbox: &MailboxArgs, json: bool) -> Result<ExitCode> {
    use super::server_key::Signature;
    let store = open_mailbox(mailbox, false).await?;
    let known = super::server_key::Known::read(&mailbox.keys);
    let trusted = trusted_now(&store).await?;
    // Each row: the entry, stranded, who signed it, relayed under a key no longer trusted.
    let mut rows = Vec::new();
    for (m, stranded) in waiting(&store).await? {
        let signature = super::server_key::signature(&store, &m, &known).await?;
        let untrusted = !stranded && from_untrusted(&m, &trusted);
        rows.push((m, stranded, signature, untrusted));
    }
    store.close().await?;
    if rows
        .iter()
        .any(|(_, _, signature, _)| *signature == Signature::Unchecked)
    {
        eprintln!(
            "letterlock: no server key readable in {} (server_private.pem without a \
             passphrase, or server_public.pem): messages signed by a replaced server key are \
             not marked; pass --keys DIR, the server's folder",
            mailbox.keys.display()
        );
    }
    let from = |m: &letterlock::store::OutboxEntry| match &m.sender {
        Some((_, name)) => letterlock::text::line(name).to_string(),
        None => "server".to_owned(),
    };
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(m, stranded, signature, untrusted)| {
                let (replaced, unknown) = match signature {
                    Signature::Current => (Some(false), Some(false)),
                    Signature::Replaced(_) => (Some(true), Some(false)),
                    Signature::Unknown(_) => (None, Some(true)),
                    Signature::Damaged | Signature::Unchecked => (None, None),
                };
                serde_json::json!({
                    "id": hex::encode(m.message_id),
                    "to": m.recipient_name,
                    "to_key": KeyId(m.recipient_key_id).to_string(),
                    "from": from(m),
                    "mode": super::mailbox::mode_name(m.mode),
                    "sealed_bytes": m.body_size,
                    "created": m.created,
                    "stranded": stranded,
                    "from_untrusted_key": untrusted,
                    "replaced_server_key": replaced,
                    "unknown_server_key": unknown,
                })
            })
            .collect();
        println!(
            "{}",
            super::mailbox::ascii_json(&serde_json::to_string_pretty(&list)?)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("outbox is empty: no message waits for a client");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32}  {:<12} {:<12} {:<10} {:>10}  {:<20}  state",
        "id", "to", "from", "mode", "sealed", "created (UTC)"
    );
    for (m, stranded, signature, untrusted) in &rows {
        println!(
            "{:<32}  {:<12} {:<12} {:<10} {:>10}  {:<20}  {}",
            hex::encode(m.message_id),
            letterlock::text::line(&m.recipient_name),
            from(m),
            super::mailbox::mode_name(m.mode),
            m.body_size,
            time_text(m.created),
            outbox_state(*stranded, *untrusted, signature)
        );
    }
    let stranded = rows.iter().filter(|(_, stranded, ..)| *stranded).count();
    let count = |which: fn(&Signature) -> bool| {
        rows.iter()
            .filter(|(_, stranded, s, _)| !stranded && which(s))
            .count()
    };
    let replaced = count(|s| matches!(s, Signature::Replaced(_)));
    let untrusted = rows.iter().filter(|(.., untrusted)| *untrusted).count();
    let unknown = count(|s| matches!(s, Signature::Unknown(_)));
    let mut summary = format!("{} message(s): {stranded} stranded", rows.len());
    if replaced > 0 {
        let args = super::server_key::command_args(&mailbox.keys, mailbox.store.as_deref());
        summary.push_str(&format!(
            ", {replaced} signed by a replaced server key (clients set them aside: send each \
             again with `letterlock server send_msg --to NAME{args}`, then `letterlock server \
             outbox --remove ID{args}`)"
        ));
    } else {
        summary.push_str(", 0 signed by a replaced server key");
    }
    if untrusted > 0 {
        let args = super::server_key::command_args(&mailbox.keys, mailbox.store.as_deref());
        summary.push_str(&format!(
            ", {untrusted} relayed under a client key no longer trusted (a recipient that does \
             not know the key already sets them aside; trust the key again, or delete each with \
             `letterlock server outbox --remove ID --force{args}`)"
        ));
    }
    if unknown > 0 {
        summary.push_str(&format!(
            ", {unknown} signed by a server key {} does not know (neither its key nor one it \
             replaced: is --keys the folder of the server that queued them?)",
            mailbox.keys.display()
        ));
    }
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// The state column of `server outbox`: a stranded message first (nobody can fetch it, whoever
/// signed it), then one no client will accept, then one relayed under a key no longer trusted,
/// then one this folder cannot vouch for either way.
fn outbox_state(
    stranded: bool,
    untrusted_sender: bool,
    signature: &super::server_key::Signature,
) -> &'static str {
    use super::server_key::Signature;
    match (stranded, signature) {
        (true, _) => "STRANDED: sealed to a key no longer trusted",
        (false, _) if untrusted_sender => {
            "FROM A KEY NO LONGER TRUSTED: set aside unless its recipient knows the key"
        }
        (false, Signature::Replaced(_)) => {
            "SIGNED BY A REPLACED SERVER KEY: clients will set it aside; send it again"
        }
        (false, Signature::Unknown(_)) => {
            "waiting, signed by a server key this folder does not know (another server's, or \
             the wrong --keys?)"
        }
        (false, Signature::Damaged) => "DAMAGED: its sealed header does not parse",
        (false, Signature::Current | Signature::Unchecked) => "waiting",
    }
}

/// The one inbox message `id` (a prefix) names, from `from` if given. Several: an error that
/// lists them (id, sender, date received) and says how to choose.
async fn pick(store: &impl Store, id: &str, from: Option<&str>) -> Result<InboxSummary> {
    let mut found = store.matching_inbox(id).await?;
    if let Some(name) = from {
        found.retain(|m| m.sender_name == name);
    }
    if found.len() > 1 {
        let mut text = format!("more than one inbox message matches {id}:");
        for m in &found {
            text.push_str(&format!(
                "\n  {}  from {}  received {}",
                hex::encode(m.message_id),
                letterlock::text::line(&m.sender_name),
                time_text(m.received)
            ));
        }
        let same_id = found.iter().all(|m| m.message_id == found[0].message_id);
        let same_from = found.iter().all(|m| m.sender_name == found[0].sender_name);
        text.push_str(&how_to_choose(same_id, same_from, "sender", "--from"));
        bail!(text);
    }
    if found.is_empty()
        && let Some(relayed) = relayed_match(store, id).await?
    {
        bail!(relayed);
    }
    match found.pop() {
        Some(m) => Ok(m),
        None => Err(StoreError::NotFound {
            prefix: match from {
                Some(name) => format!("{} from {name}", id.to_ascii_lowercase()),
                None => id.to_ascii_lowercase(),
            },
        }
        .into()),
    }
}

/// Checks the message id prefix of a deletion (`server rm`, `server outbox --remove`): 4 to 32
/// hexadecimal digits, one rule said the same way by both; `ids` is the hint that says where
/// the ids are listed. Stricter than the store's lookup (1 to 32 digits, as `server read`
/// takes), and checked before it, so that its words ("1 to 32") never describe a deletion: a
/// deletion is not undone, and a prefix of one to three digits names a message by chance more
/// often than by intent.
fn check_deletion_prefix(id: &str, ids: &str) -> Result<()> {
    if (MIN_RM_PREFIX..=ID_DIGITS).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(());
    }
    Err(hinted(
        format!(
            "{:?} is not a message id prefix to delete by: give {MIN_RM_PREFIX} to {ID_DIGITS} \
             hexadecimal digits of the id (at least {MIN_RM_PREFIX}, as a deletion is not undone)",
            letterlock::text::line(id)
        ),
        ids,
    ))
}

/// The last line of the error for an id prefix that matches several messages: more digits,
/// or `flag NAME` (the `party`: sender or recipient) where that tells the candidates apart.
fn how_to_choose(same_id: bool, same_party: bool, party: &str, flag: &str) -> String {
    match (same_id, same_party) {
        (true, _) => format!("\nids are unique per {party} only: add {flag} NAME"),
        (false, true) => "\ngive more hexadecimal digits of the id".to_owned(),
        (false, false) => format!("\ngive more hexadecimal digits of the id (or {flag} NAME)"),
    }
}

/// When no inbox message matches `id` but a message relayed between two clients and still
/// waiting does: says so, and why the server cannot open it (it is sealed for the recipient,
/// not for the server). Looked up in every outbox ([`waiting`]): a rare path, for a clear error.
async fn relayed_match(store: &impl Store, id: &str) -> Result<Option<String>> {
    let prefix = id.to_ascii_lowercase();
    let relayed = waiting(store)
        .await?
        .into_iter()
        .find_map(|(entry, stranded)| {
            let (_, sender) = entry.sender.as_ref()?;
            hex::encode(entry.message_id).starts_with(&prefix).then(|| {
                let id = hex::encode(entry.message_id);
                let to = letterlock::text::line(&entry.recipient_name);
                let fate = if stranded {
                    format!(
                        "it was sealed to a key of {to}'s that is no longer trusted, so nobody can \
                         fetch it: `letterlock server outbox --remove {id}` deletes it"
                    )
                } else {
                    format!(
                        "it waits in {to}'s outbox until {to}'s client (`letterlock client \
                         recv_msg`) fetches and acknowledges it"
                    )
                };
                format!(
                    "message {id} was relayed from {from} to {to}, not sent to the server: it is \
                     sealed for {to}, and this server cannot open it; {fate}",
                    from = letterlock::text::line(sender),
                )
            })
        });
    Ok(relayed)
}

pub(super) async fn read_inbox(
    id: &str,
    mailbox: &MailboxArgs,
    from: Option<&str>,
    output: Option<&Path>,
    force: bool,
) -> Result<ExitCode> {
    // `-o` as `open` and `client read` take it (found by a review: a link or a folder was told
    // it "exists", and /dev/null was refused).
    let mut output = super::offline::Output::of(output, force, "server read")?;
    let identity: Arc<dyn Identity> = Arc::new(own_key(&mailbox.keys, "server")?);
    let store = open_mailbox(mailbox, false).await?;
    let summary = pick(&store, id, from).await?;
    // The key this message was verified with when it arrived, trusted now or not any more
    // (replaced, removed): the store keeps every client key it ever trusted.
    let history = store.client_keys().await?;
    let sender = sender_key(&history, &summary)?;
    let msg = store
        .open_inbox(&summary.sender_key_id, &summary.message_id)
        .await?;
    let opts = OpenOptions::default();
    let body = msg.body;
    let opened = match &mut output {
        super::offline::Output::File(path) => {
            // Like `open` and `client read`: the file appears only once verified, and an
            // existing one is replaced only when asked.
            let file = WriteOptions {
                replace: force,
                ..WriteOptions::default()
            };
            envelope::open_to_file(identity, &sender, &opts, body, path, &file)
                .map_err(anyhow::Error::from)
        }
        // Stdout (`-o -` too), or a device or a pipe in its place: held until verified.
        to => {
            let opts = OpenOptions {
                max_plaintext: STDOUT_LIMIT,
                ..opts
            };
            envelope::open_to_vec(identity, &sender, &opts, body)
                .map_err(|e| super::offline::too_large_to_hold(e, to, &format!("server read {id}")))
                .and_then(|(plain, opened)| {
                    super::offline::write_verified(to, &plain)?;
                    Ok(opened)
                })
        }
    };
    let opened = opened.map_err(|e| {
        let (key, _) = keys::pair_paths(&mailbox.keys, "server");
        super::replaced::name_kept_key(e, &key, |_| {
            format!(
                "read it with a copy of the keys folder ({}) holding that key as \
                 server_private.pem: `letterlock server read {id} --keys COPY` (with the same \
                 --store, if you gave one)",
                mailbox.keys.display()
            )
        })
    })?;
    status!(
        "verified: {} from {} ({}), {} mode",
        ByteCount(opened.plaintext_len),
        letterlock::text::line(&msg.summary.sender_name),
        opened.header.sender,
        opened.header.mode
    );
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// The public key a stored message was verified with, from the store's key history.
fn sender_key(history: &[ClientKey], m: &InboxSummary) -> Result<PublicKey> {
    let Some(known) = history.iter().find(|k| k.key_id == m.sender_key_id) else {
        bail!(
            "message {} was sent by key {}, which this mailbox does not know (it was stored \
             before trusted clients were kept in the store, and its key file is gone); put the \
             sender's public key back as KEYS/clients/{}.pem and try again",
            hex::encode(m.message_id),
            KeyId(m.sender_key_id),
            m.sender_name
        );
    };
    PublicKey::from_der(&known.public_key).context("a stored client key is malformed")
}

async fn remove(id: &str, mailbox: &MailboxArgs, from: Option<&str>) -> Result<ExitCode> {
    check_deletion_prefix(id, INBOX_IDS)?;
    let store = open_mailbox(mailbox, false).await?;
    let m = pick(&store, id, from).await?;
    if !store.remove_inbox(&m.sender_key_id, &m.message_id).await? {
        // Deleted by someone else between the lookup and now.
        return Err(hinted(
            format!(
                "inbox message {} was already deleted",
                hex::encode(m.message_id)
            ),
            INBOX_IDS,
        ));
    }
    store.close().await?;
    println!(
        "deleted inbox message {} (from {}, {}, received {})",
        hex::encode(m.message_id),
        letterlock::text::line(&m.sender_name),
        ByteCount(m.plaintext_len),
        time_text(m.received)
    );
    Ok(ExitCode::SUCCESS)
}

async fn trust(
    public_key: &Path,
    name: &str,
    replace: bool,
    mailbox: &MailboxArgs,
) -> Result<ExitCode> {
    if !keys::valid_name(name) {
        bail!("client name {name:?} must be letters, digits, '-', '_' or '.', up to 64");
    }
    if keys::reserved_name(name) {
        bail!(
            "client name {name:?} is reserved: clients show this server's own messages as from \
             the server, and a client so named could pass its messages off as the server's; \
             choose another name"
        );
    }
    let key = super::peer_public_key_file(public_key, name)?;
    // The server's own key as a client would pass that client's relayed messages off as the
    // server's, as the reserved name would (found by a trial run: server_public.pem lies in
    // the folder client keys are dropped into).
    if super::server_key::Known::read(&mailbox.keys).is_servers(&key.id()) {
        bail!(
            "{} is this server's own key ({}), not a client's: clients show messages signed by \
             it as the server's. Give the client's public key (its client_public.pem)",
            public_key.display(),
            key.id()
        );
    }
    let store = open_mailbox_except(mailbox, true, Some(&key.id())).await?;
    let outcome = store
        .trust_client(trust_request(name, &key, replace))
        .await?;
    let stranded = match outcome {
        TrustOutcome::Replaced { old } => store.pending_outbox(&old).await?,
        _ => Vec::new(),
    };
    store.close().await?;
    report_stranded(name, &stranded, Ended::Replaced);
    match outcome {
        TrustOutcome::Trusted => println!(
            "trusting {name} {}; a running server accepts it from its next connection",
            key.id()
        ),
        TrustOutcome::Replaced { old } => println!(
            "{name} is now trusted with key {} instead of {}; a running server refuses the old \
             key from its next connection. The messages it sent the server stay readable \
             (`server read`); those it relayed to other clients with the old key, not fetched \
             yet, are set aside by every recipient that did not pin that key",
            key.id(),
            KeyId(old)
        ),
        TrustOutcome::AlreadyTrusted => println!("{name} is already trusted: {}", key.id()),
        TrustOutcome::NameTaken { existing } => bail!(
            "{name} is already trusted with another key ({}); to rotate {name} to {} pass \
             --replace, or choose another --name",
            KeyId(existing),
            key.id()
        ),
        TrustOutcome::KeyTaken { name: other } => bail!(
            "key {} is already trusted as {other}: one key, one name. To move it to {name}, run \
             `letterlock server untrust {other}` first",
            key.id()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// How a client's key stopped being trusted, for [`report_stranded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// `server trust --replace`: the client has a new key.
    Replaced,
    /// `server untrust`: the client has no key at all.
    Untrusted,
}

/// Says on stderr how many of the messages `stranded`, queued for a key of `name` that is no
/// longer trusted (`ended` says how), will never be delivered, and who can send them again.
/// They were sealed to that key, so no other key can open them and no client can fetch them:
/// the operator would otherwise learn of them only from `server outbox`. The server can send
/// its own again (to a new key: at once after a rotation, after an untrust only once the client
/// is trusted again); only their senders can resend those relayed from other clients, which
/// this server cannot read.
fn report_stranded(name: &str, stranded: &[letterlock::store::OutboxEntry], ended: Ended) {
    let (key, resend_when) = match ended {
        Ended::Replaced => ("old key", String::new()),
        Ended::Untrusted => (
            "key",
            format!(" once {name} is trusted again with a new key"),
        ),
    };
    let (relayed, own): (Vec<_>, Vec<_>) = stranded.iter().partition(|m| m.sender.is_some());
    if !own.is_empty() {
        eprintln!(
            "letterlock: {} message(s) this server queued for {name}'s {key} stay undelivered \
             (they were sealed to that key; `letterlock server outbox` lists them, and `--remove \
             ID` deletes one): send them again with `letterlock server send_msg --to \
             {name}`{resend_when}",
            own.len()
        );
    }
    if !relayed.is_empty() {
        let mut senders: Vec<&str> = relayed
            .iter()
            .filter_map(|m| m.sender.as_ref().map(|(_, who)| who.as_str()))
            .collect();
        senders.sort_unstable();
        senders.dedup();
        eprintln!(
            "letterlock: {} message(s) other clients relayed to {name}'s {key} stay undelivered \
             (sealed to that key, and unreadable here): only their senders can send them again \
             ({}); their `client receipts` show them as not read, and `letterlock server \
             outbox` lists them as stranded (`--remove ID` deletes one)",
            relayed.len(),
            letterlock::text::line(&senders.join(", "))
        );
    }
}

/// Says on stderr how many of the messages `name` relayed to other clients still wait for them,
/// now that its key is no longer trusted: the server's directory stops listing the key, so a
/// recipient that does not know it already sets them aside at every fetch, and they stay on
/// the server (found by a trial run: the untrust said nothing of them, and `server outbox`
/// showed them as merely waiting). The operator decides: trust the key again, or remove them.
fn report_sent_by_untrusted(name: &str, sent: &[letterlock::store::OutboxEntry]) {
    if sent.is_empty() {
        return;
    }
    let mut to: Vec<&str> = sent.iter().map(|m| m.recipient_name.as_str()).collect();
    to.sort_unstable();
    to.dedup();
    eprintln!(
        "letterlock: {} message(s) {name} relayed to other clients ({}) still wait for them, \
         signed by the key no longer trusted: the server's directory stops listing it, so a \
         client that does not know the key already (pinned, or learnt from the directory \
         before) sets them aside each time it fetches. `letterlock server outbox` lists them, \
         and `--remove ID --force` deletes one",
        sent.len(),
        letterlock::text::line(&to.join(", "))
    );
}

async fn untrust(name: &str, mailbox: &MailboxArgs) -> Result<ExitCode> {
    let store = open_mailbox(mailbox, false).await?;
    let Some(key_id) = store.untrust_client(name, now()).await? else {
        let trusted: Vec<_> = store
            .trusted_clients()
            .await?
            .clients
            .into_iter()
            .map(|c| c.name)
            .collect();
        store.close().await?;
        let trusted = if trusted.is_empty() {
            "none".to_owned()
        } else {
            trusted.join(", ")
        };
        bail!(
            "no trusted client named {name:?} (trusted now: {trusted}; see `letterlock server clients --all`)"
        );
    };
    let messages = store
        .inbox_counts()
        .await?
        .into_iter()
        .find(|(k, _)| *k == key_id)
        .map_or(0, |(_, n)| n);
    let stranded = store.pending_outbox(&key_id).await?;
    let sent: Vec<_> = waiting(&store)
        .await?
        .into_iter()
        .filter(|(m, stranded)| !stranded && m.sender.as_ref().is_some_and(|(k, _)| *k == key_id))
        .map(|(m, _)| m)
        .collect();
    store.close().await?;
    report_stranded(name, &stranded, Ended::Untrusted);
    report_sent_by_untrusted(name, &sent);
    println!(
        "{name} ({}) is no longer trusted: a running server refuses it from its next \
         connection, and on a connection already open from its next message, within a \
         second; its {messages} stored message(s) are kept (`letterlock server rm` deletes one)",
        KeyId(key_id)
    );
    let file = mailbox
        .keys
        .join(keys::CLIENTS_DIR)
        .join(format!("{name}.pem"));
    if file.exists() {
        println!(
            "{} is no longer read for this key; delete it if you like",
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn clients(mailbox: &MailboxArgs, all: bool, json: bool) -> Result<ExitCode> {
    // A listing: it makes no mailbox where there is none.
    let store = open_mailbox(mailbox, false).await?;
    let mut history = store.client_keys().await?;
    let counts: std::collections::HashMap<[u8; 32], u64> =
        store.inbox_counts().await?.into_iter().collect();
    store.close().await?;
    if !all {
        history.retain(|k| k.ended.is_none());
    }
    history.sort_by(|a, b| (&a.name, a.since).cmp(&(&b.name, b.since)));
    // Trusted under a name that reads as the server (stored before such names were refused):
    // the server refuses it.
    let refused = |k: &ClientKey| k.ended.is_none() && keys::reserved_name(&k.name);
    let status = |k: &ClientKey| match k.ended {
        Some((_, how)) => how.as_str(),
        None if refused(k) => "refused",
        None => "trusted",
    };
    if json {
        let rows: Vec<_> = history
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name,
                    "key": KeyId(k.key_id).to_string(),
                    "since": k.since,
                    "status": status(k),
                    "ended": k.ended.map(|(at, _)| at),
                    "messages": counts.get(&k.key_id).copied().unwrap_or(0),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if history.is_empty() {
        println!("no trusted clients; add one with `letterlock server trust KEY.pem --name NAME`");
    } else {
        println!(
            "{:<16} {:<9} {:<20}  {:>8}  key",
            "name", "status", "since (UTC)", "messages"
        );
        for k in &history {
            println!(
                "{:<16} {:<9} {:<20}  {:>8}  {}",
                k.name,
                status(k),
                time_text(k.since),
                counts.get(&k.key_id).copied().unwrap_or(0),
                KeyId(k.key_id)
            );
        }
    }
    let args = super::server_key::command_args(&mailbox.keys, mailbox.store.as_deref());
    for k in history.iter().filter(|k| refused(k)) {
        eprintln!(
            "letterlock: {}",
            reserved_client(&k.name, &KeyId(k.key_id), &args)
        );
    }
    Ok(ExitCode::SUCCESS)
}
