//! `letterlock server ...`: run the server, and the operator's commands on its mailbox and
//! trusted clients (send_msg, inbox, read, trust).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use letterlock::envelope::{self, Mode, OpenOptions, SealOptions};
use letterlock::files::WriteOptions;
use letterlock::keys::{self, Identity};

use super::client::MessageArgs;
use super::offline::print_plaintext;
use super::store_admin::AnyStore;
use super::{PairArgs, STDOUT_LIMIT, own_key, time_text};

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Folder with server_private.pem and the trusted client keys (client_public.pem,
    /// clients/NAME.pem).
    #[arg(long, default_value = ".")]
    pub(super) keys: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub(super) listen: String,
    /// The mailbox: an SQLite file (bodies over 64 KiB live in a folder beside it), or
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB for one PostgreSQL shared by several servers.
    #[arg(long, default_value = "letterlock-server.db")]
    pub(super) store: PathBuf,
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
    /// Do not log the text of short messages (by default the server prints it, as the
    /// classroom server did); log only sender, size and id.
    #[arg(long)]
    pub(super) no_log_text: bool,
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

#[derive(Subcommand, Debug)]
pub(super) enum ServerCommand {
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
    /// Create the mailbox's schema, or bring it to this letterlock's version (servers do it
    /// when they start; run it once before starting several over one PostgreSQL).
    Migrate(super::store_admin::MigrateArgs),
    /// Copy an SQLite mailbox into a PostgreSQL one (run again, it copies only what is
    /// missing).
    CopyStore(super::store_admin::CopyStoreArgs),
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
pub(super) struct ServerSendArgs {
    /// The trusted client to send to (`client` for client_public.pem).
    #[arg(long)]
    pub(super) to: String,
    #[command(flatten)]
    pub(super) message: MessageArgs,
    /// Folder with server_private.pem and the trusted client keys.
    #[arg(long, default_value = ".")]
    pub(super) keys: PathBuf,
    /// The server's mailbox database (its --store).
    #[arg(long, default_value = "letterlock-server.db")]
    pub(super) store: PathBuf,
}

pub(super) async fn serve_cmd(a: ServeArgs) -> Result<ExitCode> {
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
    let store = Arc::new(create_store(&a.store).await?);
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
    for c in clients.iter() {
        println!("trusts client {:?} {}", c.name, c.key.id());
    }
    io::stdout().flush()?;
    let server = Server::new(Arc::new(identity), clients, store.clone(), config);
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
pub(super) async fn shutdown_signal() {
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

/// Opens an existing mailbox. Only the server creates one: a mistyped --store elsewhere must
/// not quietly answer from a new, empty mailbox.
pub(super) async fn open_store(path: &Path) -> Result<AnyStore> {
    if super::store_admin::postgres_url(path).is_none() && !path.exists() {
        bail!(
            "no mailbox at {}; pass --store PATH (the server's --store), or start \
             `letterlock server` once to create it",
            path.display()
        );
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

pub(super) async fn server_send(a: ServerSendArgs) -> Result<ExitCode> {
    let identity = own_key(&a.keys, "server")?;
    let clients = keys::TrustList::load_clients(&a.keys)?;
    let Some(to) = clients.by_name(&a.to).cloned() else {
        let names: Vec<_> = clients.iter().map(|c| c.name.clone()).collect();
        bail!(
            "no trusted client named {:?} (trusted: {names:?}); add one with `letterlock server trust`",
            a.to
        );
    };
    let store = open_store(&a.store).await?;
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

pub(super) async fn inbox(store_path: &Path, json: bool) -> Result<ExitCode> {
    use letterlock::store::Store;
    let store = open_store(store_path).await?;
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

pub(super) async fn read_inbox(
    id: &str,
    keys_dir: &Path,
    store_path: &Path,
    output: Option<&Path>,
) -> Result<ExitCode> {
    use letterlock::store::Store;
    let identity: Arc<dyn Identity> = Arc::new(own_key(keys_dir, "server")?);
    let clients = keys::TrustList::load_clients(keys_dir)?;
    let store = open_store(store_path).await?;
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
        opened.plaintext_len,
        letterlock::text::line(&msg.summary.sender_name),
        opened.header.sender,
        opened.header.mode
    );
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn trust(public_key: &Path, name: &str, keys_dir: &Path) -> Result<ExitCode> {
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
